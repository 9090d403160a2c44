"""Never pay twice, lose nothing (issue 12, defects 1-3 and 7): the real OpenAI SDK against the
SIMULATED server of tests/fake_llm_server.py, the call cache in a DuckDB file, and a kill -9 of the
process that runs a tier."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_llm_server import FakeLLMServer  # noqa: E402

from labeling_dagster.core.labels import Item, PriorAnswer, content_hash  # noqa: E402
from labeling_dagster.core.pricing import ModelPrice  # noqa: E402
from labeling_dagster.core.runner import run_tier  # noqa: E402
from labeling_dagster.project import Budget, LabelDef, Taxonomy, TierConfig  # noqa: E402
from labeling_dagster.resources.openai_provider import OpenAIProvider  # noqa: E402
from labeling_dagster.resources.warehouse import DuckDBCallCache, ensure_tables  # noqa: E402
from tests.test_pipeline import run_month, table  # noqa: E402

TAXONOMY = Taxonomy(labels=[LabelDef(name="billing"), LabelDef(name="cancellation"), LabelDef(name="card_lost")])
PRICE = ModelPrice(input=0.05, output=0.40)
MONTH = datetime(2026, 8, 1)
TEXTS = ["wrong billing amount", "please cancel", "my card is lost", "billing twice", "cancel the plan",
         "lost card again", "billing question", "cancel now", "card lost abroad", "billing error", "cancel it",
         "card lost today"]


def items(texts: list[str] = TEXTS, prefix: str = "t") -> list[Item]:
    return [Item(f"{prefix}{n:02d}", text, content_hash(text)) for n, text in enumerate(texts)]


def tier(server: FakeLLMServer, items_per_request: int = 3, **options) -> TierConfig:
    return TierConfig(name="first_pass", role="first_pass", provider="openai", model="gpt-5-nano",
                      items_per_request=items_per_request,
                      options={"base_url": server.openai_base_url, "max_concurrency": 4, **options})


def label(server: FakeLLMServer, warehouse: Path, todo: list[Item], *, prior=None, run_id: str = "run",
          role: str = "first_pass", **options):
    with duckdb.connect(str(warehouse)) as conn:
        ensure_tables(conn)
        cache = DuckDBCallCache(conn, MONTH, run_id, stage="first_pass_labels")
        task_tier = tier(server, **options).model_copy(update={"role": role, "name": role})
        return run_tier(OpenAIProvider(), tier=task_tier, taxonomy=TAXONOMY, items=todo, cache=cache,
                        price=PRICE, budget=Budget(monthly_usd=10), spent_before=0.0, prior=prior)


def sent_items(server: FakeLLMServer, since: int = 0) -> list[str]:
    """The item texts the server was asked about (each line of a request's item list), in order."""
    asked = []
    for request in server.calls("/v1/chat/completions")[since:]:
        user = request.body["messages"][1]["content"]
        asked += [text for text in TEXTS + EXTRA if f'"{text}"' in user]
    return asked


EXTRA = ["a brand new billing text", "changed: cancel my plan please"]


def _label_in_child(base_url: str, warehouse: str) -> None:
    server = FakeLLMServer.__new__(FakeLLMServer)  # only its URL is needed in the child
    conn = duckdb.connect(warehouse)
    ensure_tables(conn)
    cache = DuckDBCallCache(conn, MONTH, "crashing-run", stage="first_pass_labels")
    task_tier = TierConfig(name="first_pass", role="first_pass", provider="openai", model="gpt-5-nano",
                           items_per_request=3, options={"base_url": base_url, "max_concurrency": 4})
    del server
    run_tier(OpenAIProvider(), tier=task_tier, taxonomy=TAXONOMY, items=items(), cache=cache, price=PRICE,
             budget=Budget(monthly_usd=10), spent_before=0.0)


def test_a_kill_during_a_wave_keeps_every_answer_already_received(tmp_path: Path) -> None:
    """Defect 1: 4 requests go out at once; one is held by the server. The process is killed (-9)
    while it waits: the 3 answers it had received are stored, and the resume sends only the 4th."""
    warehouse = tmp_path / "w.duckdb"
    with FakeLLMServer() as server:
        server.enqueue("/v1/chat/completions", delay_s=30)  # the first request to arrive is held
        child = multiprocessing.get_context("spawn").Process(target=_label_in_child, args=(server.openai_base_url, str(warehouse)))
        child.start()
        deadline = time.monotonic() + 60
        while sum(1 for r in server.calls("/v1/chat/completions") if r.status == 200) < 3:
            assert time.monotonic() < deadline and child.is_alive(), "the child never got 3 answers"
            time.sleep(0.05)
        time.sleep(2.0)  # the child stores each answer as it arrives; give it a moment for the third
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        assert table(warehouse, "SELECT COUNT(*) FROM model_calls") == [(3,)]
        assert table(warehouse, "SELECT COUNT(*) FROM item_answers WHERE answer IS NOT NULL") == [(9,)]

        before = len(server.calls("/v1/chat/completions"))
        result = label(server, warehouse, items())
        assert len(server.calls("/v1/chat/completions")) - before == 1  # only the request that never came back
        assert set(result.answers) == {item.item_id for item in items()} and result.reused_items == 9
    assert table(warehouse, "SELECT COUNT(*) FROM model_calls") == [(4,)]


def test_a_rerun_sends_only_items_without_a_stored_answer(tmp_path: Path) -> None:
    """Defect 2: one item added in front and one text changed shift every request boundary; only
    those two items are sent again (in one request), not the 12 whose inputs are unchanged."""
    warehouse = tmp_path / "w.duckdb"
    with FakeLLMServer() as server:
        first = label(server, warehouse, items())
        assert first.calls_made == 4 and first.reused_items == 0
        changed = items()
        changed[5] = Item(changed[5].item_id, EXTRA[1], content_hash(EXTRA[1]))
        before = len(server.calls("/v1/chat/completions"))
        again = label(server, warehouse, [Item("a00", EXTRA[0], content_hash(EXTRA[0])), *changed])
        assert sorted(sent_items(server, before)) == sorted(EXTRA)
        assert again.calls_made == 1 and again.reused_items == 11
        assert len(again.answers) == 13
        # an unchanged rerun sends nothing at all
        before = len(server.calls("/v1/chat/completions"))
        assert label(server, warehouse, [Item("a00", EXTRA[0], content_hash(EXTRA[0])), *changed]).calls_made == 0
        assert len(server.calls("/v1/chat/completions")) == before


def test_calls_stored_before_per_item_results_are_still_reused(tmp_path: Path) -> None:
    """A warehouse of an earlier version has whole requests only: they are reused while the requests
    are the same, and adopted per item then, so a later shift of the boundaries pays nothing again."""
    warehouse = tmp_path / "w.duckdb"
    with FakeLLMServer() as server:
        label(server, warehouse, items())
        with duckdb.connect(str(warehouse)) as conn:
            conn.execute("DELETE FROM item_answers")  # what an earlier version left: model_calls only
        before = len(server.calls("/v1/chat/completions"))
        assert label(server, warehouse, items()).calls_made == 0
        shifted = label(server, warehouse, [Item("a00", EXTRA[0], content_hash(EXTRA[0])), *items()])
        assert sent_items(server, before) == [EXTRA[0]] and shifted.reused_items == 12


def test_a_changed_earlier_answer_re_pays_only_its_item(tmp_path: Path) -> None:
    """Defect 2, as the issue met it: one earlier tier's answer changes; the tier that is shown it
    pays for that item only, whatever the position of the item in the month."""
    warehouse = tmp_path / "w.duckdb"
    prior = {item.item_id: [PriorAnswer("qa", "billing", 0.5, "r")] for item in items()}
    with FakeLLMServer() as server:
        label(server, warehouse, items(), prior=prior, role="adjudication")
        prior["t01"] = [PriorAnswer("qa", "cancellation", 0.8, "r")]
        before = len(server.calls("/v1/chat/completions"))
        again = label(server, warehouse, items(), prior=prior, role="adjudication")
        assert sent_items(server, before) == [TEXTS[1]] and again.reused_items == 11


def test_every_billed_attempt_stays_in_model_calls(tmp_path: Path) -> None:
    """Defect 3: a request answered with garbage (billed) whose repair gets only 5xx is asked again on
    the rerun; its first, billed attempt keeps its row, so model_calls holds all that was billed."""
    warehouse = tmp_path / "w.duckdb"
    with FakeLLMServer() as server:
        server.enqueue("/v1/chat/completions", content="not json")
        for _ in range(3):
            server.enqueue("/v1/chat/completions", status=500)
        first = label(server, warehouse, items()[:3], max_concurrency=1, max_retries=2, backoff_s=0.01)
        assert first.answers == {} and first.calls_made == 2
        again = label(server, warehouse, items()[:3], max_concurrency=1)
        assert len(again.answers) == 3
        billed = [r for r in server.calls("/v1/chat/completions") if r.status == 200]
        assert len(billed) == 2
        tokens = sorted(r.response["usage"]["prompt_tokens"] for r in billed)
    rows = table(warehouse, "SELECT call_id, attempt, input_tokens, usd, status FROM model_calls ORDER BY created_at")
    assert [(row[1], row[4]) for row in rows] == [("call", "error"), ("repair", "error"), ("call", "ok")]
    assert len({row[0] for row in rows}) == 3
    assert sorted(row[2] for row in rows if row[3] > 0) == tokens  # both billed replies, the first one too
    # garbage twice (call and repair, both billed) is those inputs' result: not paid a third time
    with FakeLLMServer() as server:
        server.enqueue("/v1/chat/completions", content="not json")
        server.enqueue("/v1/chat/completions", content="still not json")
        paid = label(server, tmp_path / "w2.duckdb", items()[:3], max_concurrency=1)
        assert paid.calls_made == 2 and "after one repair attempt" in paid.failures["t00"]
        rerun = label(server, tmp_path / "w2.duckdb", items()[:3], max_concurrency=1)
        assert rerun.calls_made == 0 and rerun.reused_items == 3 and rerun.answers == {}
        # the same reasons as the run that paid: the next tier's prompt shows them, so it is not paid again
        assert rerun.failures == paid.failures


def test_an_oversized_item_fails_alone(tmp_path: Path) -> None:
    """Defect 7: a request the provider refuses (HTTP 400, context length) is halved until the item
    that causes it is alone: the innocent items are answered, only the long one fails."""
    warehouse = tmp_path / "w.duckdb"
    huge = "billing " * 3000
    todo = [*items()[:2], Item("t99", huge, content_hash(huge))]
    with FakeLLMServer() as server:
        server.max_request_chars = 12_000
        result = label(server, warehouse, todo, max_concurrency=1)
        statuses = [r.status for r in server.calls("/v1/chat/completions")]
        assert statuses == [400, 200, 400, 200, 400]  # [t00 t01 t99], [t00], [t01 t99], [t01], [t99]
        assert set(result.answers) == {"t00", "t01"}
        assert "maximum context length" in result.failures["t99"]
        # the refusals cost nothing and are kept; a rerun asks only about the long item (refused, free)
        assert table(warehouse, "SELECT COUNT(*), SUM(usd) FILTER (WHERE status = 'rejected') FROM model_calls") == [(5, 0.0)]
        label(server, warehouse, todo, max_concurrency=1)
        assert [r.status for r in server.calls("/v1/chat/completions")][5:] == [400]


def test_two_offending_items_in_one_half_fail_alone(tmp_path: Path) -> None:
    huge = "billing " * 3000
    todo = [*items()[:4], Item("t98", huge, content_hash(huge)), Item("t99", huge + "x", content_hash(huge + "x"))]
    with FakeLLMServer() as server:
        server.max_request_chars = 12_000
        result = label(server, tmp_path / "w.duckdb", todo, max_concurrency=1, items_per_request=6)
    assert set(result.answers) == {"t00", "t01", "t02", "t03"} and set(result.failures) == {"t98", "t99"}


def test_a_request_refused_whatever_it_holds_fails_after_two_more_refusals(tmp_path: Path) -> None:
    with FakeLLMServer() as server:
        server.max_request_chars = 10  # every request is too long
        result = label(server, tmp_path / "w.duckdb", items()[:3], max_concurrency=1)
        assert len(server.calls("/v1/chat/completions")) == 3
    assert result.answers == {} and len(result.failures) == 3


def test_the_reconciling_check_fails_when_the_ledger_misses_a_call() -> None:
    import pandas as pd

    from labeling_dagster import checks

    month = pd.Timestamp("2026-08-01")
    billed = pd.DataFrame({"month": [month], "calls": [3], "usd": [0.5]})
    ledger = pd.DataFrame({"month": [month] * 2, "kind": ["model"] * 2, "calls": [2, 1], "usd": [0.2, 0.3]})
    assert checks.ledger_matches_calls(billed, ledger).passed
    assert not checks.ledger_matches_calls(billed, ledger.iloc[:1]).passed
    assert not checks.ledger_matches_calls(billed, ledger.assign(usd=[0.2, float("nan")])).passed


def test_the_ledger_counts_superseded_calls(paid_project: Path, server: FakeLLMServer, tmp_path: Path) -> None:
    """Defect 3 through Dagster: a rerun after the QA tier answers differently re-pays adjudication for
    the items whose earlier answers changed; the calls it replaced stay in the month's ledger, which
    the blocking check reconciles with model_calls."""
    warehouse = tmp_path / "w.duckdb"
    assert run_month(paid_project, warehouse).success
    paid_before = table(warehouse, "SELECT SUM(usd), COUNT(*) FROM model_calls")[0]
    yaml = paid_project / "project.yaml"  # QA's model changes, so QA is asked again and answers otherwise
    yaml.write_text(yaml.read_text().replace("model: claude-haiku-4-5", "model: claude-sonnet-4-6"))
    server.confidence = 0.55
    result = run_month(paid_project, warehouse)
    assert result.success
    assert all(check.passed for check in result.get_asset_check_evaluations())
    total = table(warehouse, "SELECT SUM(usd), COUNT(*) FROM model_calls")[0]
    assert total[1] > paid_before[1]  # new calls were made ...
    ledger = table(warehouse, "SELECT SUM(usd), SUM(calls) FROM cost_ledger WHERE kind = 'model'")[0]
    assert ledger[0] == pytest.approx(total[0]) and ledger[1] == total[1]  # ... and the old ones are still counted
    referenced = table(warehouse, """SELECT COALESCE(SUM(usd), 0) FROM model_calls WHERE call_id IN (
        SELECT call_id FROM first_pass_labels UNION SELECT call_id FROM qa_labels
        UNION SELECT call_id FROM adjudicated_labels UNION SELECT call_id FROM golden_labels)""")[0][0]
    assert ledger[0] > referenced  # what the old ledger showed: only calls the current labels point to
