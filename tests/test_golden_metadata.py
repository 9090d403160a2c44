"""The golden run's provider counters (requests, retries, 429s, repairs) in its metadata, against the
SIMULATED OpenAI/Anthropic server of tests/fake_llm_server.py (the real SDKs over HTTP on 127.0.0.1)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fake_llm_server import FakeLLMServer  # noqa: E402

from tests.test_pipeline import run_month  # noqa: E402

# The `server` and `paid_project` fixtures (paid tiers on the simulated server) are in conftest.py.


def golden_stats(result) -> dict:
    (materialization,) = [m for m in result.asset_materializations_for_node("golden_labels")
                          if m.asset_key.to_user_string() == "golden_labels"]  # the step also writes certificates
    return materialization.metadata["provider_stats"].value


def test_golden_run_reports_its_retries_and_429s(paid_project: Path, server: FakeLLMServer, tmp_path: Path) -> None:
    yaml = paid_project / "project.yaml"
    yaml.write_text(yaml.read_text().replace("max_concurrency: 2}", "max_concurrency: 2, backoff_s: 0.01, max_backoff_s: 0.02}"))
    # The golden run goes before the month's tiers (they read its calibrations), and its first request
    # is the first pass's one request for the 3 golden items: a 429, then a 500, then the answer.
    server.enqueue("/v1/chat/completions", status=429, headers={"retry-after-ms": "10"},
                   body={"error": {"type": "rate_limit_error", "message": "Rate limit reached (simulated)"}})
    server.enqueue("/v1/chat/completions", status=500)
    # The QA tier's golden answer leaves out one item: one repair request.
    server.enqueue("/v1/messages", content={"items": []})
    warehouse = tmp_path / "w.duckdb"
    result = run_month(paid_project, warehouse)
    assert result.success
    stats = golden_stats(result)
    assert stats == {
        "first_pass": {"requests": 3, "retries": 2, "rate_limited": 1, "repairs": 0},
        "qa": {"requests": 2, "retries": 0, "rate_limited": 0, "repairs": 1},
        "adjudication": {"requests": 1, "retries": 0, "rate_limited": 0, "repairs": 0},
    }
    # The month's own tiers made requests of their own, not counted here.
    assert len(server.calls("/v1/chat/completions")) > 4

    # A rerun reuses every stored golden call: nothing sent, nothing counted.
    again = golden_stats(run_month(paid_project, warehouse))
    assert again == {tier: {"requests": 0, "retries": 0, "rate_limited": 0, "repairs": 0} for tier in stats}
