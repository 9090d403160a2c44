"""Shared fixtures: a tiny project folder written from literals, small enough for a Dagster run in seconds."""

from __future__ import annotations

import csv
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_llm_server import FakeLLMServer  # noqa: E402

LABELS = {
    "billing": ["my invoice is wrong", "charged twice on my bill", "refund the extra charge", "billing amount incorrect",
                "why was I billed again", "the invoice total is too high"],
    "cancellation": ["cancel my subscription", "I want to close my account", "stop my plan now", "please cancel the service",
                     "end my membership", "terminate my contract today"],
    "card_lost": ["I lost my card", "my card was stolen", "cannot find my bank card", "card missing after trip",
                  "someone took my card", "block my lost card"],
}


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_tiny_project(root: Path, *, extra_yaml: str = "", months: tuple[str, ...] = ("2026-08", "2026-09")) -> Path:
    seed = [[f"{text} please {n}", label] for label, texts in LABELS.items() for text in texts for n in range(4)]
    _write_csv(root / "seed.csv", ["text", "label"], seed)
    golden = [[f"{texts[0]} asap", label] for label, texts in LABELS.items()]
    _write_csv(root / "golden.csv", ["text", "label"], golden)
    for index, month in enumerate(months):
        rows = []
        for label, texts in LABELS.items():
            for n, text in enumerate(texts[:4]):
                rows.append([f"{month}-{label}-{n}", f"{text} {month}", "email", "vip" if n == 3 and label == "billing" else "standard"])
        rows.append([f"{month}-golden", golden[index % len(golden)][0], "chat", "standard"])
        rows.append([f"{month}-empty", "", "chat", "standard"])
        rows.append([f"{month}-billing-0", "a repeated id", "chat", "standard"])
        _write_csv(root / "inbox" / f"{month}.csv", ["id", "body", "channel", "tier"], rows)
    taxonomy = "\n".join(f"    - name: {label}\n      description: {label} tickets" for label in LABELS)
    (root / "project.yaml").write_text(
        textwrap.dedent(
            """\
            name: tiny
            source:
              path: "inbox/{month}*.csv"
              id_column: id
              text_column: body
              metadata_columns: [channel, tier]
              start_month: "2026-08"
            seed_set: {path: seed.csv}
            golden_set: {path: golden.csv}
            tiers:
              - {name: first_pass, role: first_pass, provider: local, model: words, items_per_request: 5, options: {features: words, C: 5}}
              - {name: qa, role: qa, provider: local, model: chars, items_per_request: 5, options: {features: words+chars, C: 5}}
            routing:
              accept_at: 0.6
              qa_at: 0.3
              adjudicate_at: 0.3
              qa_accept_at: 0.4
              always_human_when:
                - {column: tier, equals: vip}
            human_review: {hourly_rate_usd: 30, reviews_per_hour: 120}
            budget: {monthly_usd: 5}
            """
        )
        + "taxonomy:\n  labels:\n"
        + taxonomy
        + "\n"
        + extra_yaml
    )
    return root


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    return write_tiny_project(tmp_path / "tiny")


@pytest.fixture(autouse=True)
def _no_kept_dagster_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run on a throwaway Dagster instance, whatever DAGSTER_HOME the shell (or `make`) exports.

    The Makefile exports DAGSTER_HOME for `make demo` and `make ui`; tests must neither depend on that
    folder existing nor fill its run history. The one test of a kept DAGSTER_HOME sets it itself.
    """
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    # Every `labeling` command reads these: a test must never write to the shell's project or warehouse.
    monkeypatch.delenv("LABELING_WAREHOUSE", raising=False)
    monkeypatch.delenv("LABELING_PROJECT", raising=False)


# --- paid tiers on the SIMULATED provider server (tests/fake_llm_server.py): test_llm_pipeline, test_shards ---

LOCAL_TIERS = """tiers:
  - {name: first_pass, role: first_pass, provider: local, model: words, items_per_request: 5, options: {features: words, C: 5}}
  - {name: qa, role: qa, provider: local, model: chars, items_per_request: 5, options: {features: words+chars, C: 5}}
"""


def paid_tiers(server: FakeLLMServer) -> str:
    return f"""tiers:
  - {{name: first_pass, role: first_pass, provider: openai, model: gpt-5-nano, items_per_request: 4,
      options: {{base_url: "{server.openai_base_url}", max_concurrency: 2}}}}
  - {{name: qa, role: qa, provider: anthropic, model: claude-haiku-4-5, items_per_request: 4,
      options: {{base_url: "{server.anthropic_base_url}", api_key_env: TEST_ANTHROPIC_KEY}}}}
  - {{name: adjudication, role: adjudication, provider: openai, model: gpt-5.2, items_per_request: 4,
      options: {{base_url: "{server.openai_base_url}"}}}}
"""


@pytest.fixture
def server():
    # Every answer at confidence 0.5: the first pass sends everything to QA, QA (qa_accept_at 0.95)
    # sends it on to adjudication, which (adjudication_accept_at 0.7) sends it to people.
    with FakeLLMServer(confidence=0.5) as fake:
        yield fake


@pytest.fixture
def paid_project(tiny_project: Path, server: FakeLLMServer, monkeypatch) -> Path:
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "test-key-for-the-simulated-server")
    yaml = tiny_project / "project.yaml"
    text = yaml.read_text().replace(LOCAL_TIERS, paid_tiers(server)).replace("qa_accept_at: 0.4", "qa_accept_at: 0.95")
    assert "gpt-5-nano" in text
    yaml.write_text(text)
    return tiny_project
