"""The warehouse in PostgreSQL: a real server, attached by DuckDB's postgres extension (the
`warehouse-postgres` extra). Paid tiers run against the SIMULATED server of tests/fake_llm_server.py.

These tests need a PostgreSQL server they may create databases on, named by LABELING_TEST_POSTGRES
(`postgresql://user@host:port/dbname`, the password in PGPASSWORD), and `psql`. `make deploy-check`
(scripts/deploy_check.sh) starts a throwaway server on loopback and runs them in its venv, which has
the extra; the default test run has neither and skips them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from fake_llm_server import FakeLLMServer  # noqa: E402

from labeling_dagster.cli import main  # noqa: E402
from tests.test_pipeline import run_month, table  # noqa: E402
from tests.test_shards import first_pass_requests, refuse_card_lost, tier_rows, with_scale  # noqa: E402

ADMIN = os.environ.get("LABELING_TEST_POSTGRES", "")
# Skipped only when no server is named: named, a missing psql or server fails the tests.
pytestmark = pytest.mark.skipif(
    not ADMIN,
    reason="needs a PostgreSQL server (LABELING_TEST_POSTGRES=postgresql://user@host:port/db) and psql; "
    "`make deploy-check` starts one and runs these tests",
)

# Rows that differ between any two runs whatever the warehouse: run ids, clocks, latencies.
COMPARED = {
    "raw_items": "SELECT * FROM raw_items ORDER BY item_id",
    "rejected_items": "SELECT * FROM rejected_items ORDER BY source_line",
    "review_queue": "SELECT * FROM review_queue ORDER BY item_id",
    "cost_ledger": "SELECT * FROM cost_ledger ORDER BY kind, tier, provider, model",
    "model_calls": "SELECT call_id, tier, provider, model, item_count, input_tokens, cached_input_tokens, "
                   "output_tokens, usd, status, first_item FROM model_calls ORDER BY call_id",
    "calibrations": "SELECT * FROM calibrations ORDER BY tier",
}


def psql(url: str, sql: str) -> str:
    done = subprocess.run(["psql", url, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def pg_warehouse() -> str:
    """A new, empty database on the server, dropped afterwards."""
    name = f"labeling_test_{uuid.uuid4().hex[:12]}"
    psql(ADMIN, f"CREATE DATABASE {name}")
    yield urlunsplit(urlsplit(ADMIN)._replace(path=f"/{name}"))
    psql(ADMIN, f"DROP DATABASE {name} WITH (FORCE)")


def rounded(rows: list[tuple]) -> list[tuple]:
    """Floats to 12 places: a sum of dollars adds in the order the rows are scanned, which may differ."""
    return [tuple(round(value, 12) if isinstance(value, float) else value for value in row) for row in rows]


def all_rows(warehouse) -> dict[str, list[tuple]]:
    rows = tier_rows(warehouse) | {name: table(warehouse, sql) for name, sql in COMPARED.items()}
    return {name: rounded(found) for name, found in rows.items()}


def test_a_month_in_postgres_equals_the_month_in_a_duckdb_file(paid_project: Path, server: FakeLLMServer,
                                                               tmp_path: Path, pg_warehouse: str) -> None:
    with_scale(paid_project, "{shard_items: 4}")  # the tiers' shard files merge into PostgreSQL
    in_file = tmp_path / "warehouse.duckdb"
    assert run_month(paid_project, in_file).success
    file_requests = len(server.requests)

    server.requests.clear()
    result = run_month(paid_project, pg_warehouse)
    assert result.success
    assert all(check.passed for check in result.get_asset_check_evaluations())
    assert len(server.requests) == file_requests  # a new warehouse has no stored calls: the same requests
    assert all_rows(pg_warehouse) == all_rows(in_file)
    # The rows are PostgreSQL's own, as any client of the database sees them.
    assert psql(pg_warehouse, "SELECT COUNT(*) FROM final_labels") == "13"
    assert psql(pg_warehouse, "SELECT data_type FROM information_schema.columns WHERE table_name = 'final_labels' "
                              "AND column_name = 'month'") == "timestamp without time zone"
    # With no scale.shard_folder, shard files went to warehouse.shards in the project folder, and were removed.
    assert (paid_project / "warehouse.shards").is_dir()
    assert not list((paid_project / "warehouse.shards").glob("*.duckdb"))

    # Run again: every call comes from the call cache in PostgreSQL, nothing is paid twice.
    server.requests.clear()
    spent = "SELECT kind, tier, calls, usd FROM cost_ledger ORDER BY kind, tier"
    ledger = rounded(table(pg_warehouse, spent))
    assert run_month(paid_project, pg_warehouse).success
    assert len(server.requests) == 0
    assert rounded(table(pg_warehouse, spent)) == ledger
    assert table(pg_warehouse, "SELECT COUNT(*) FROM cost_ledger WHERE kind = 'model' AND calls_reused <> calls") == [(0,)]


def test_a_failed_shard_resumes_on_postgres_without_paying_again(paid_project: Path, server: FakeLLMServer,
                                                                  tmp_path: Path, pg_warehouse: str) -> None:
    yaml = paid_project / "project.yaml"
    yaml.write_text(yaml.read_text().replace("max_concurrency: 2", "max_concurrency: 1"))
    with_scale(paid_project, f"{{shard_items: 4, shard_retries: 0, shard_folder: {tmp_path / 'shards'}}}")
    clean = tmp_path / "clean.duckdb"
    assert run_month(paid_project, clean).success
    clean_requests = first_pass_requests(server)

    server.requests.clear()
    server.refuse = refuse_card_lost
    assert not run_month(paid_project, pg_warehouse, raise_on_error=False).success
    assert list((tmp_path / "shards").glob("first_pass_labels-2026-08-*.duckdb")), "the failed shard's file is kept"
    server.refuse = None
    assert run_month(paid_project, pg_warehouse).success
    assert first_pass_requests(server) == clean_requests + 1  # only the refused request went again
    assert tier_rows(pg_warehouse) == tier_rows(clean)
    total = "SELECT SUM(usd) FROM cost_ledger"
    assert table(pg_warehouse, total)[0][0] == pytest.approx(table(clean, total)[0][0])
    assert not list((tmp_path / "shards").glob("*.duckdb"))


def test_the_cli_labels_and_reads_a_postgres_warehouse(tiny_project: Path, pg_warehouse: str, monkeypatch) -> None:
    monkeypatch.setenv("LABELING_WAREHOUSE", pg_warehouse)  # as `dagster dev` and every command read it
    runner = CliRunner()
    ran = runner.invoke(main, ["run", "--project", str(tiny_project), "--month", "2026-08"])
    assert ran.exit_code == 0, ran.output
    assert not (tiny_project / "warehouse.duckdb").exists()
    summary = runner.invoke(main, ["summary", "--project", str(tiny_project), "--month", "2026-08"])
    assert summary.exit_code == 0, summary.output
    assert "items" in summary.output and "13" in summary.output
    status = runner.invoke(main, ["review", "status", "--project", str(tiny_project), "--month", "2026-08"])
    assert status.exit_code == 0, status.output
    assert psql(pg_warehouse, "SELECT COUNT(*) FROM raw_items") == "13"


def test_a_wrong_server_is_a_clear_error(tiny_project: Path, pg_warehouse: str) -> None:
    missing = urlunsplit(urlsplit(pg_warehouse)._replace(path="/no_such_database"))
    summary = CliRunner().invoke(main, ["summary", "--project", str(tiny_project), "--month", "2026-08",
                                        "--warehouse", missing])
    assert summary.exit_code == 2
    assert "cannot open the PostgreSQL warehouse" in summary.output and "no_such_database" in summary.output



def test_a_database_not_yet_labeled_into_says_so(tiny_project: Path, pg_warehouse: str) -> None:
    summary = CliRunner().invoke(main, ["summary", "--project", str(tiny_project), "--month", "2026-08",
                                        "--warehouse", pg_warehouse])
    assert summary.exit_code == 2
    assert "holds no labeling tables yet" in " ".join(summary.output.split())
