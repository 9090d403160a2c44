"""A month's model tiers in shards: the same tables as in one piece, the same calls (so either run's
stored calls serve the other), per-shard retries, and a failed shard that is resumed without paying
again. Paid tiers run against the SIMULATED server of tests/fake_llm_server.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_llm_server import FakeLLMServer  # noqa: E402

from labeling_dagster.resources import shards as shards_module  # noqa: E402
from labeling_dagster.resources.shards import ShardSpec, page_rows, shard_dir, shard_size  # noqa: E402
from tests.test_pipeline import run_month, table  # noqa: E402

TIER_TABLES = ["first_pass_labels", "qa_labels", "adjudicated_labels"]


def with_scale(project: Path, scale: str) -> None:
    yaml = project / "project.yaml"
    yaml.write_text(yaml.read_text() + f"scale: {scale}\n")


def tier_rows(warehouse: Path) -> dict[str, list[tuple]]:
    rows = {name: table(warehouse, f"SELECT * EXCLUDE (reused) FROM {name} ORDER BY item_id") for name in TIER_TABLES}
    rows["final_labels"] = table(warehouse, "SELECT * FROM final_labels ORDER BY item_id")
    return rows


def shard_counts(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    counts = {}
    for event in result.get_asset_materialization_events():
        key = event.asset_key.to_user_string()
        if key in TIER_TABLES:
            counts[key] = event.materialization.metadata["shards"].value
    return counts


def test_shards_and_pages_are_whole_requests() -> None:
    assert shard_size(7, 5) == 10 and shard_size(10, 5) == 10 and shard_size(1, 20) == 20
    assert shard_size(120_000, 20) == 120_000 and shard_size(49_999, 7) == 50_001
    assert page_rows(20) == 50_000 and page_rows(7) == 49_994 and page_rows(3) == 49_998


def test_requests_are_the_same_in_shards_when_a_page_is_not_whole_requests(tiny_project: Path, tmp_path: Path,
                                                                           monkeypatch) -> None:
    # Pages of 4 items and 3 items a request: pages and shards must both be cut at whole requests.
    monkeypatch.setattr(shards_module, "CHUNK_ROWS", 4)
    yaml = tiny_project / "project.yaml"
    yaml.write_text(yaml.read_text().replace("items_per_request: 5", "items_per_request: 3"))
    whole = tmp_path / "whole.duckdb"
    assert run_month(tiny_project, whole).success
    with_scale(tiny_project, "{shard_items: 5}")  # 6 items a shard
    sharded = tmp_path / "sharded.duckdb"
    assert run_month(tiny_project, sharded).success
    calls = "SELECT call_id, item_count FROM model_calls ORDER BY call_id"
    assert table(sharded, calls) == table(whole, calls)
    assert {count for _, count in table(whole, calls)} <= {1, 3}


def test_a_sharded_month_equals_the_month_in_one_piece(tiny_project: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole.duckdb"
    result = run_month(tiny_project, whole)
    assert result.success and set(shard_counts(result).values()) <= {0, 1}

    with_scale(tiny_project, "{shard_items: 5}")
    sharded = tmp_path / "sharded.duckdb"
    result = run_month(tiny_project, sharded)
    assert result.success
    assert shard_counts(result)["first_pass_labels"] == 3  # 13 items, 5 a shard
    assert tier_rows(sharded) == tier_rows(whole)
    # The same requests: the stored calls of one run are the calls of the other.
    calls = "SELECT call_id, item_count FROM model_calls ORDER BY call_id"
    assert table(sharded, calls) == table(whole, calls)
    assert not list(shard_dir(str(sharded)).glob("*.duckdb")), "collected shard files are deleted"


@pytest.fixture
def serial_project(paid_project: Path) -> Path:
    """test_llm_pipeline's project of paid tiers, one call at a time, so which request fails is the same on every run."""
    yaml = paid_project / "project.yaml"
    yaml.write_text(yaml.read_text().replace("max_concurrency: 2", "max_concurrency: 1"))
    return paid_project


def first_pass_requests(server: FakeLLMServer) -> int:
    return sum(1 for request in server.calls("/v1/chat/completions") if request.body["model"] == "gpt-5-nano")


def refuse_card_lost(user: str) -> bool:
    # The month's card_lost items are the third shard of the first pass (4 items a shard, in id order).
    return "I lost my card 2026-08" in user


def test_a_failed_shard_is_resumed_without_paying_again(serial_project: Path, server: FakeLLMServer, tmp_path: Path) -> None:
    with_scale(serial_project, "{shard_items: 4, shard_retries: 0}")
    clean = tmp_path / "clean.duckdb"
    first = run_month(serial_project, clean)
    assert first.success
    clean_requests = first_pass_requests(server)
    golden_requests = table(clean, "SELECT COUNT(*) FROM model_calls WHERE tier = 'first_pass' AND first_item LIKE 'golden%'")[0][0]
    clean_usd = table(clean, "SELECT SUM(usd) FROM cost_ledger")[0][0]

    # The tier's provider counters add up over its four shards, each counted once.
    requests = {event.asset_key.to_user_string(): event.materialization.metadata["provider_requests"].value
                for event in first.get_asset_materialization_events()
                if event.asset_key.to_user_string() == "first_pass_labels"}
    assert requests == {"first_pass_labels": clean_requests - golden_requests}

    server.requests.clear()
    server.refuse = refuse_card_lost
    warehouse = tmp_path / "w.duckdb"
    failed = run_month(serial_project, warehouse, raise_on_error=False)
    assert not failed.success
    assert any("simulated refusal" in str(event.event_specific_data.error)
               for event in failed.all_events if event.is_step_failure)
    left = sorted(path.name for path in shard_dir(str(warehouse)).glob("*.duckdb"))
    assert left and all(name.startswith("first_pass_labels-2026-08-") for name in left)

    server.refuse = None
    assert run_month(serial_project, warehouse).success
    # Over both runs the first pass sent its requests once, plus the one refused (unbilled) request:
    # the calls the other shards made before the failure were kept and reused.
    assert first_pass_requests(server) == clean_requests + 1
    assert table(warehouse, "SELECT SUM(usd) FROM cost_ledger")[0][0] == pytest.approx(clean_usd)
    assert tier_rows(warehouse) == tier_rows(clean)
    assert not list(shard_dir(str(warehouse)).glob("*.duckdb"))


@pytest.mark.parametrize("shard_items, refused_text, shard", [
    (4, "I lost my card 2026-08", "s0003"),  # the shard's only request
    # Shard 1 is billing (its first request, which succeeds) then cancellation (its second, refused once):
    # the retry sends only the second again, the first comes from the shard's own stored calls.
    (8, "cancel my subscription 2026-08", "s0001"),
])
def test_a_shard_that_fails_once_is_retried_on_its_own(serial_project: Path, server: FakeLLMServer, tmp_path: Path,
                                                       shard_items: int, refused_text: str, shard: str) -> None:
    with_scale(serial_project, f"{{shard_items: {shard_items}, shard_retries: 1}}")
    clean = tmp_path / "clean.duckdb"
    assert run_month(serial_project, clean).success
    clean_requests = first_pass_requests(server)

    server.requests.clear()
    refused: list[str] = []

    def refuse_once(user: str) -> bool:
        if refused_text in user and not refused:
            refused.append(user)
            return True
        return False

    server.refuse = refuse_once
    warehouse = tmp_path / "w.duckdb"
    result = run_month(serial_project, warehouse)
    assert result.success and refused
    retried = [event.step_key for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert retried == [f"first_pass_labels.first_pass_labels_shard[m2026_08_{shard}]"]
    assert first_pass_requests(server) == clean_requests + 1
    assert tier_rows(warehouse) == tier_rows(clean)


def test_a_month_of_shards_shares_the_budget(serial_project: Path, server: FakeLLMServer, tmp_path: Path) -> None:
    # Shards may run at once, so each gets its share of what the month has left: together they never pass it.
    yaml = serial_project / "project.yaml"
    yaml.write_text(yaml.read_text().replace("monthly_usd: 5", "monthly_usd: 0.0004"))
    with_scale(serial_project, "{shard_items: 4}")
    warehouse = tmp_path / "w.duckdb"
    assert run_month(serial_project, warehouse).success
    spent = table(warehouse, "SELECT COALESCE(SUM(usd), 0) FROM model_calls")[0][0]
    assert 0 < spent <= 0.0004
    stopped = table(warehouse, "SELECT COUNT(*) FROM first_pass_labels WHERE failure LIKE 'budget reached%'")[0][0]
    assert stopped > 0


def test_shard_ranges_quote_item_ids() -> None:
    spec = ShardSpec("first_pass_labels", "2026-08", None, None, 0, 2, "x", "o'brien", "p", 3, False, 0.0, 1.0, "queue")
    assert spec.in_range() == "item_id >= 'o''brien' AND item_id < 'p'"
    assert spec.mapping_key == "m2026_08_s0001"


def test_parallel_shards_run_in_their_own_processes(tiny_project: Path, tmp_path: Path) -> None:
    import shutil

    from labeling_dagster.cli.common import execute_month

    whole = tmp_path / "whole.duckdb"
    assert run_month(tiny_project, whole).success
    parallel = tmp_path / "parallel.duckdb"
    shutil.copy(whole, parallel)
    # Only the first pass again, in shards, two at a time in step processes (Dagster's multiprocess executor).
    with_scale(tiny_project, "{shard_items: 5, parallel_shards: 2}")
    result = execute_month(str(tiny_project / "project.yaml"), parallel, "2026-08", selection=["first_pass_labels"])
    assert result.success
    shard_pids = {event.pid for event in result.all_events
                  if event.step_key and "_shard[" in event.step_key and event.event_type == dg.DagsterEventType.STEP_START}
    assert len(shard_pids) == 3 and os.getpid() not in shard_pids  # three shards, each in a process of its own
    first_pass = "SELECT * EXCLUDE (reused) FROM first_pass_labels ORDER BY item_id"
    assert table(parallel, first_pass) == table(whole, first_pass)
    assert table(parallel, "SELECT COUNT(*) FROM model_calls") == table(whole, "SELECT COUNT(*) FROM model_calls")


def test_reexecuting_from_failure_runs_only_the_failed_shard(serial_project: Path, server: FakeLLMServer,
                                                              tmp_path: Path) -> None:
    # What the UI's "Re-execute from failure" does: the plan's output and the finished shards' results are
    # read back from the failed run; only the failed shard and the steps after it run again.
    from labeling_dagster.cli.common import monthly_job_of

    with_scale(serial_project, "{shard_items: 4, shard_retries: 0}")
    clean = tmp_path / "clean.duckdb"
    assert monthly_job_of(str(serial_project), str(clean)).execute_in_process(
        partition_key="2026-08-01", instance=dg.DagsterInstance.ephemeral()).success

    warehouse = tmp_path / "w.duckdb"
    job = dg.build_reconstructable_job("labeling_dagster.cli.common", "monthly_job_of",
                                       reconstructable_args=(str(serial_project), str(warehouse)))
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        server.refuse = refuse_card_lost
        with dg.execute_job(job, instance, tags={"dagster/partition": "2026-08-01"}) as failed:
            assert not failed.success
        server.refuse = None
        server.requests.clear()
        # (the UI copies the parent run's partition tag; execute_job needs it given)
        with dg.execute_job(job, instance, tags={"dagster/partition": "2026-08-01"},
                            reexecution_options=dg.ReexecutionOptions.from_failure(failed.run_id, instance)) as again:
            assert again.success
            started = {event.step_key for event in again.all_events if event.event_type == dg.DagsterEventType.STEP_START}
    first_pass_steps = sorted(step for step in started if step.startswith("first_pass_labels."))
    assert first_pass_steps == ["first_pass_labels.first_pass_labels_collect",
                                "first_pass_labels.first_pass_labels_shard[m2026_08_s0003]"]
    assert first_pass_requests(server) == 1  # the failed shard's one request; the others were kept
    assert tier_rows(warehouse) == tier_rows(clean)


def test_a_backfill_of_two_months_in_shards_equals_the_months_one_by_one(tiny_project: Path, tmp_path: Path) -> None:
    # A single-run backfill: every month's shards are steps of the one run, keyed by month and shard.
    with_scale(tiny_project, "{shard_items: 5}")
    one_by_one = tmp_path / "one_by_one.duckdb"
    for month in ("2026-08", "2026-09"):
        assert run_month(tiny_project, one_by_one, month).success
    backfill = tmp_path / "backfill.duckdb"
    result = run_month(tiny_project, backfill, partition_key=None, tags={
        "dagster/asset_partition_range_start": "2026-08-01", "dagster/asset_partition_range_end": "2026-09-01"})
    assert result.success
    shard_steps = sorted(event.step_key for event in result.all_events
                         if event.event_type == dg.DagsterEventType.STEP_SUCCESS and "first_pass_labels_shard[" in event.step_key)
    assert [step.split("[")[1] for step in shard_steps] == [
        f"m2026_{month}_s000{index}]" for month in ("08", "09") for index in (1, 2, 3)]
    assert tier_rows(backfill) == tier_rows(one_by_one)
    ledger = "SELECT month, kind, tier, items, calls, usd FROM cost_ledger ORDER BY ALL"
    assert table(backfill, ledger) == table(one_by_one, ledger)


def _spec(folder: Path, plan_id: str = "0123456789ab") -> ShardSpec:
    from datetime import datetime

    return ShardSpec("first_pass_labels", "2026-08", datetime(2026, 8, 1), datetime(2026, 9, 1), 0, 1,
                     str(shards_module.shard_path(folder, "first_pass_labels", "2026-08", plan_id, 0, 1)),
                     "a", None, 1, False, 0.0, 1.0, "queue", plan_id=plan_id)


def test_collect_run_again_skips_what_it_merged_and_salvage_drops_unwritten_files(tmp_path: Path) -> None:
    import duckdb

    from labeling_dagster.resources.warehouse import ensure_tables

    folder = tmp_path / "w.duckdb.shards"
    spec = _spec(folder)
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        ensure_tables(conn)
        conn.execute("INSERT INTO raw_items (month, item_id, text) VALUES ('2026-08-01', 'a', 'hello')")
        shards_module.create(conn, spec, todo_sql="", earlier_tables=[], provider="local", model="m")
        with duckdb.connect(spec.path) as shard:
            shard.execute("INSERT INTO first_pass_labels (month, item_id, label) VALUES ('2026-08-01', 'a', 'x')")
            shard.execute("INSERT INTO model_calls (call_id, month, usd, status) VALUES ('c1', '2026-08-01', 0.5, 'ok')")
        assert shards_module.collect(conn, spec) == 1
        # The collect step failed later and runs again: this shard is merged already, its file gone.
        assert shards_module.collect(conn, spec) == 0
        assert conn.execute("SELECT COUNT(*), SUM(usd) FROM model_calls").fetchone() == (1, 0.5)
        assert conn.execute("SELECT COUNT(*) FROM first_pass_labels").fetchone() == (1,)
        # A shard of another plan whose file is gone is an error, not a silent skip.
        with pytest.raises(dg.Failure, match="is missing"):
            shards_module.collect(conn, _spec(folder, "ffffffffffff"))
        # A plan stopped before the file got its tables: nothing to keep, the file is removed.
        broken = Path(_spec(folder, "eeeeeeeeeeee").path)
        duckdb.connect(str(broken)).close()
        assert shards_module.salvage(conn, folder, "first_pass_labels", "2026-08") == 0 and not broken.exists()


def test_a_shard_changed_under_its_plan_is_seen(tmp_path: Path) -> None:
    import duckdb

    from labeling_dagster.resources.warehouse import ensure_tables

    spec = _spec(tmp_path)
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        ensure_tables(conn)
        conn.execute("INSERT INTO raw_items (month, item_id, text, content_hash) VALUES ('2026-08-01', 'a', 't', 'h')")
        conn.execute("INSERT INTO auto_labels (month, item_id, tier, label, next_step) "
                     "VALUES ('2026-08-01', 'a', 'auto', 'x', 'first_pass')")
        before = shards_module.fingerprint(conn, spec, todo_sql="", earlier_tables=["auto_labels"])
        assert shards_module.fingerprint(conn, spec, todo_sql="", earlier_tables=["auto_labels"]) == before
        conn.execute("UPDATE auto_labels SET label = 'y'")
        assert shards_module.fingerprint(conn, spec, todo_sql="", earlier_tables=["auto_labels"]) != before
