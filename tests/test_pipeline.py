"""End to end: build a tiny project, run months through Dagster, look at the tables."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest
from click.testing import CliRunner

from labeling_dagster.cli import main
from labeling_dagster.definitions import build_definitions
from labeling_dagster.resources.warehouse import connect
from labeling_dagster.schedules import MONTHLY_JOB


def run_month(project: Path, warehouse: Path, month: str = "2026-08", **kwargs) -> dg.ExecuteInProcessResult:
    job = build_definitions(project, warehouse).resolve_job_def(MONTHLY_JOB)
    return job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), **({"partition_key": f"{month}-01"} | kwargs))


def table(warehouse: Path | str, sql: str) -> list[tuple]:
    """Rows of a query on the warehouse: a DuckDB file, or a postgresql:// URL (test_postgres_warehouse)."""
    with connect(warehouse, read_only=True) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


def test_a_month_end_to_end(tiny_project: Path, warehouse: Path) -> None:
    result = run_month(tiny_project, warehouse)
    assert result.success
    assert all(check.passed for check in result.get_asset_check_evaluations())

    # Conservation: 15 source rows = 13 items + 2 rejected; one final row per item, one terminal state.
    assert table(warehouse, "SELECT COUNT(*) FROM raw_items") == [(13,)]
    assert sorted(table(warehouse, "SELECT item_id, reason FROM rejected_items")) == [
        ("2026-08-billing-0", "duplicate id: first seen at 2026-08.csv:2"),
        ("2026-08-empty", "empty body"),
    ]
    assert table(warehouse, """SELECT COUNT(*), COUNT(DISTINCT item_id) FROM final_labels
                               WHERE item_id IN (SELECT item_id FROM raw_items)""") == [(13, 13)]
    statuses = dict(table(warehouse, "SELECT status, COUNT(*) FROM final_labels GROUP BY 1"))
    assert set(statuses) <= {"labeled", "pending_human"} and sum(statuses.values()) == 13
    assert table(warehouse, """SELECT COUNT(*) FROM final_labels WHERE status = 'labeled'
                               AND label NOT IN ('billing', 'cancellation', 'card_lost')""") == [(0,)]

    # The vip ticket went to people with the rule as its reason, and is pending with no label.
    assert table(warehouse, "SELECT queue_reason FROM review_queue WHERE item_id = '2026-08-billing-3'") == [
        ("always to people: tier = vip",)
    ]
    assert table(warehouse, "SELECT status, label FROM final_labels WHERE item_id = '2026-08-billing-3'") == [
        ("pending_human", None)
    ]
    queued = table(warehouse, "SELECT COUNT(*) FROM review_queue")[0][0]
    assert queued == statuses.get("pending_human", 0)

    # Ledger: local tiers cost nothing; no review yet, so people's cost is the estimate for the queue
    # at 30 $/h / 120 reviews/h = 0.25 per review; total = parts.
    ledger = {row[0]: row[1:] for row in table(warehouse, "SELECT tier, usd, items, calls FROM cost_ledger")}
    assert ledger["first_pass"][:2] == (0.0, 13)
    assert ledger["first_pass"][2] == 3  # 13 items at 5 per call
    assert ledger["human_review"] == (0.0, 0, 0)
    assert ledger["human_review_pending"] == (pytest.approx(0.25 * queued), queued, queued)
    assert ledger["total"][0] == pytest.approx(sum(row[0] for tier, row in ledger.items() if tier != "total"))

    exports = tiny_project / "exports" / "2026-08"
    assert (exports / "review_queue.csv").read_text().count("2026-08-billing-3") == 1
    assert len((exports / "review_queue.jsonl").read_text().splitlines()) == queued


def test_rerun_replaces_the_month_and_pays_nothing_again(tiny_project: Path, warehouse: Path) -> None:
    assert run_month(tiny_project, warehouse).success
    assert run_month(tiny_project, warehouse, "2026-09").success
    counts = "SELECT (SELECT COUNT(*) FROM raw_items), (SELECT COUNT(*) FROM final_labels), (SELECT COUNT(*) FROM model_calls)"
    before = table(warehouse, counts)
    first_calls = table(warehouse, "SELECT call_id, run_id FROM model_calls ORDER BY 1")

    assert run_month(tiny_project, warehouse).success
    assert table(warehouse, counts) == before
    assert table(warehouse, "SELECT call_id, run_id FROM model_calls ORDER BY 1") == first_calls  # nothing re-called
    reused = table(warehouse, """SELECT tier, calls, calls_reused FROM cost_ledger
                                 WHERE kind = 'model' AND month = '2026-08-01' ORDER BY 1""")
    assert reused and all(calls == calls_reused for _, calls, calls_reused in reused)
    # The other month was not touched by the rerun.
    assert table(warehouse, "SELECT COUNT(*) FROM final_labels WHERE month = '2026-09-01'") == [(13,)]


def test_a_range_of_months_in_one_run(tiny_project: Path, warehouse: Path) -> None:
    result = run_month(
        tiny_project, warehouse, partition_key=None,
        tags={"dagster/asset_partition_range_start": "2026-08-01", "dagster/asset_partition_range_end": "2026-09-01"},
    )
    assert result.success
    assert table(warehouse, "SELECT strftime(month, '%Y-%m'), COUNT(*) FROM final_labels GROUP BY 1 ORDER BY 1") == [
        ("2026-08", 13), ("2026-09", 13)
    ]
    assert table(warehouse, "SELECT COUNT(*) FROM cost_ledger WHERE kind = 'total'") == [(2,)]


def test_cli_run_summary_and_errors(tiny_project: Path, warehouse: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--project", str(tiny_project), "--month", "2026-08", "--to", "2026-09",
                                  "--warehouse", str(warehouse)])
    assert result.exit_code == 0, result.output
    assert "2026-08" in result.output and "2026-09" in result.output and "queued for people" in result.output

    bad_month = runner.invoke(main, ["run", "--project", str(tiny_project), "--month", "Sept"])
    assert bad_month.exit_code == 2 and "write YYYY-MM" in bad_month.output
    not_over = runner.invoke(main, ["run", "--project", str(tiny_project), "--month", "2099-01"])
    assert not_over.exit_code == 2 and "has not ended" in not_over.output

    missing = runner.invoke(main, ["run", "--project", str(tiny_project), "--month", "2026-10",
                                   "--warehouse", str(warehouse)])
    assert missing.exit_code == 1 and "no file matches" in missing.output

    yaml = tiny_project / "project.yaml"
    yaml.write_text(yaml.read_text().replace("qa_at: 0.3", "qa_at: 3"))
    invalid = runner.invoke(main, ["run", "--project", str(tiny_project), "--month", "2026-08"])
    assert invalid.exit_code == 2 and "routing.qa_at" in invalid.output


def test_a_kept_dagster_home_that_does_not_exist_yet_is_created_and_records_the_run(
        tiny_project: Path, warehouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What `make demo` on a fresh clone does: DAGSTER_HOME points at a folder nobody has made yet.
    home = tmp_path / "not-yet" / ".dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    result = CliRunner().invoke(main, ["run", "--project", str(tiny_project), "--month", "2026-08",
                                       "--warehouse", str(warehouse)])
    assert result.exit_code == 0, result.output
    assert home.is_dir()
    with dg.DagsterInstance.from_config(str(home)) as kept:
        assert kept.get_runs_count() >= 1


def test_definitions_load_the_example() -> None:
    from labeling_dagster.definitions import defs

    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == {
        "raw_items", "golden_set", "golden_labels", "certificates", "label_model", "auto_labels", "first_pass_labels", "qa_labels",
        "adjudicated_labels", "review_queue", "human_reviews", "final_labels", "cost_ledger", "quality_report"
    }
    schedule = defs.resolve_schedule_def("monthly_labeling_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert {check.name for check in graph.asset_check_keys} >= {
        "every_item_in_one_terminal_state", "labels_in_taxonomy", "ledger_total_equals_sum_of_parts"
    }


def test_small_chunks_give_the_same_tables(tiny_project: Path, tmp_path: Path, monkeypatch) -> None:
    """A large month moves in chunks; with chunks of 4 items the tables must be what one chunk gives."""
    import labeling_dagster.resources.warehouse as storage

    whole = tmp_path / "whole.duckdb"
    assert run_month(tiny_project, whole).success
    monkeypatch.setattr(storage, "CHUNK_ROWS", 4)
    chunked = tmp_path / "chunked.duckdb"
    assert run_month(tiny_project, chunked).success
    for sql in ("SELECT item_id, text FROM raw_items ORDER BY 1",
                "SELECT item_id, label, next_step FROM first_pass_labels ORDER BY 1",
                "SELECT item_id, label, next_step FROM qa_labels ORDER BY 1",
                "SELECT item_id, candidate_label, queue_reason, tier_answers FROM review_queue ORDER BY 1",
                "SELECT item_id, status, label, decided_by FROM final_labels ORDER BY 1"):
        assert table(chunked, sql) == table(whole, sql), sql


def test_final_label_checks_catch_missing_doubled_unknown_and_outside_labels(tiny_project: Path, warehouse: Path) -> None:
    from datetime import datetime

    from labeling_dagster import checks

    assert run_month(tiny_project, warehouse).success
    window = dg.TimeWindow(datetime(2026, 8, 1), datetime(2026, 9, 1))
    with duckdb.connect(str(warehouse)) as conn:
        good = checks.terminal_state(conn, window, 2)
        assert good.passed and good.metadata["raw_items"].value == 13
        assert checks.labels_in_taxonomy(conn, window, ["billing", "cancellation", "card_lost"]).passed
        first, second = [row[0] for row in conn.execute("SELECT item_id FROM final_labels ORDER BY item_id LIMIT 2").fetchall()]
        conn.execute("DELETE FROM final_labels WHERE item_id = ?", [first])
        conn.execute("INSERT INTO final_labels SELECT * FROM final_labels WHERE item_id = ?", [second])
        conn.execute("INSERT INTO final_labels (month, item_id, status) VALUES ('2026-08-01', 'nobody', 'unrouted')")
        conn.execute("UPDATE final_labels SET label = 'refund', status = 'labeled' WHERE item_id = ?", [second])
        bad = checks.terminal_state(conn, window, 2)
        outside = checks.labels_in_taxonomy(conn, window, ["billing", "cancellation", "card_lost"])
    found = {name: bad.metadata[name].value for name in ("missing", "doubled", "unknown", "not_terminal")}
    assert not bad.passed and found == {"missing": 1, "doubled": 1, "unknown": 1, "not_terminal": 1}
    assert first in bad.metadata["examples"].value
    assert not outside.passed and outside.metadata["outside"].value == 2  # the doubled row, twice
