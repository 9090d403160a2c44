"""The paid tiers through Dagster, end to end, against the SIMULATED OpenAI/Anthropic server of
tests/fake_llm_server.py (the real SDKs over HTTP on 127.0.0.1): USD in the ledger, a rerun that
sends no request, the budget stop, and the missing-key message."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from fake_llm_server import FakeLLMServer  # noqa: E402

from labeling_dagster.cli import main  # noqa: E402
from tests.test_pipeline import run_month, table  # noqa: E402

# The `server` and `paid_project` fixtures (paid tiers on the simulated server) are in conftest.py.


def test_paid_tiers_cost_what_the_provider_reported(paid_project: Path, server: FakeLLMServer, tmp_path: Path) -> None:
    warehouse = tmp_path / "w.duckdb"
    assert run_month(paid_project, warehouse).success
    requests = len(server.requests)
    assert len(server.calls("/v1/chat/completions")) > 0 and len(server.calls("/v1/messages")) > 0

    calls = dict(table(warehouse, "SELECT tier, SUM(usd) FROM model_calls GROUP BY 1"))
    assert set(calls) == {"first_pass", "qa", "adjudication"} and all(usd > 0 for usd in calls.values())
    ledger = dict(table(warehouse, "SELECT tier, usd FROM cost_ledger WHERE kind = 'model'"))
    # The golden run (3 golden items through every tier) is costed on its own rows.
    assert {tier for tier in ledger if tier.startswith("golden_run:")} == {"golden_run:" + t for t in calls}
    assert sum(ledger.values()) == pytest.approx(sum(calls.values()))
    tokens = table(warehouse, "SELECT SUM(input_tokens), SUM(output_tokens) FROM model_calls WHERE tier = 'first_pass'")[0]
    assert tokens[0] > 0 and tokens[1] > 0
    assert table(warehouse, "SELECT COUNT(*) FROM adjudicated_labels") == [(13 - 1,)]  # all but the vip item
    assert table(warehouse, "SELECT COUNT(*), COUNT(DISTINCT item_id) FROM final_labels") == [(13, 13)]

    # A rerun sends nothing: every call is served from model_calls; the ledger shows it as reused.
    assert run_month(paid_project, warehouse).success
    assert len(server.requests) == requests
    reused = table(warehouse, "SELECT SUM(calls), SUM(calls_reused), SUM(usd), SUM(usd_reused) FROM cost_ledger WHERE kind = 'model'")[0]
    assert reused[0] == reused[1] and reused[2] == pytest.approx(sum(calls.values())) and reused[3] == pytest.approx(reused[2])


def test_budget_stop_sends_the_rest_to_people(paid_project: Path, server: FakeLLMServer, tmp_path: Path) -> None:
    yaml = paid_project / "project.yaml"
    yaml.write_text(yaml.read_text().replace("budget: {monthly_usd: 5}", "budget: {monthly_usd: 0.00001}"))
    warehouse = tmp_path / "w.duckdb"
    assert run_month(paid_project, warehouse).success
    assert server.requests == []  # the first projected call is already over budget
    reasons = table(warehouse, "SELECT COUNT(*) FROM review_queue WHERE queue_reason LIKE '%budget reached%'")
    assert reasons == [(12,)]
    assert table(warehouse, "SELECT COUNT(*) FROM final_labels WHERE status = 'pending_human'") == [(13,)]


def test_llm_profile_without_keys_fails_at_once(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    example = Path(__file__).resolve().parent.parent / "examples" / "support_tickets_llm"
    result = CliRunner().invoke(main, ["run", "--project", str(example), "--month", "2026-08"])
    assert result.exit_code == 2
    assert "OPENAI_API_KEY is not set" in result.output


def test_batch_mode_tiers_are_priced_at_the_discount_and_not_resubmitted(paid_project: Path, server: FakeLLMServer,
                                                                          tmp_path: Path) -> None:
    yaml = paid_project / "project.yaml"
    yaml.write_text(yaml.read_text()
                    .replace("max_concurrency: 2}", "max_concurrency: 2, mode: batch, poll_interval_s: 0.01}")
                    .replace('api_key_env: TEST_ANTHROPIC_KEY}', 'api_key_env: TEST_ANTHROPIC_KEY, mode: batch, poll_interval_s: 0.01}'))
    warehouse = tmp_path / "w.duckdb"
    assert run_month(paid_project, warehouse).success
    assert server.calls("/v1/batches") and server.calls("/v1/messages/batches")
    batched = table(warehouse, "SELECT tier, BOOL_AND(batch), COUNT(*) FROM model_calls GROUP BY 1 ORDER BY 1")
    assert [(tier, flag) for tier, flag, _ in batched] == [("adjudication", False), ("first_pass", True), ("qa", True)]
    # Priced at half the list price: gpt-5-nano's batch discount is 0.5.
    usd, tokens_in, tokens_out = table(warehouse, """SELECT SUM(usd), SUM(input_tokens), SUM(output_tokens)
                                                      FROM model_calls WHERE tier = 'first_pass'""")[0]
    assert usd == pytest.approx((tokens_in * 0.05 + tokens_out * 0.40) / 1e6 * 0.5)
    requests = len(server.requests)
    assert run_month(paid_project, warehouse).success
    assert len(server.requests) == requests  # a rerun submits no batch again


def test_paid_months_carry_provider_pool_tags(paid_project: Path, tmp_path: Path) -> None:
    from labeling_dagster.definitions import build_definitions

    job = build_definitions(paid_project, tmp_path / "w.duckdb").resolve_job_def("monthly_labeling")
    # Both OpenAI tiers point at a base_url (the simulated server): an OpenAI-compatible account.
    assert job.tags == {"labeling_pool/anthropic": "1", "labeling_pool/openai_compatible": "1"}


def test_large_runs_default_to_the_batch_api(paid_project: Path, server: FakeLLMServer, tmp_path: Path) -> None:
    # No tier sets options.mode. With batch_over_items 5 the month's tiers (12-13 items each) go through
    # the batch APIs at half price; the golden run (3 items) stays online.
    yaml = paid_project / "project.yaml"
    text = yaml.read_text().replace("max_concurrency: 2}", "max_concurrency: 2, poll_interval_s: 0.01}")
    text = text.replace("api_key_env: TEST_ANTHROPIC_KEY}", "api_key_env: TEST_ANTHROPIC_KEY, poll_interval_s: 0.01}")
    text = text.replace(f'base_url: "{server.openai_base_url}"}}}}', f'base_url: "{server.openai_base_url}", poll_interval_s: 0.01}}}}')
    yaml.write_text(text + "batch_over_items: 5\n")
    warehouse = tmp_path / "w.duckdb"
    assert run_month(paid_project, warehouse).success
    assert server.calls("/v1/batches") and server.calls("/v1/messages/batches")
    golden = "SELECT call_id FROM golden_labels WHERE call_id IS NOT NULL"
    assert table(warehouse, f"SELECT DISTINCT batch FROM model_calls WHERE call_id NOT IN ({golden})") == [(True,)]
    assert table(warehouse, f"SELECT DISTINCT batch FROM model_calls WHERE call_id IN ({golden})") == [(False,)]
