"""The warehouse: one table per asset, each partitioned by a TIMESTAMP `month` column, and
`model_calls`, the call cache that every rerun and backfill reads before paying for a call.

Writes are idempotent per month: delete the window's rows, then insert, in one transaction.

The warehouse is a DuckDB file by default. A `postgresql://` location keeps the same tables in a
PostgreSQL database instead: an in-memory DuckDB attaches it with DuckDB's postgres extension, so every
query of the project (DuckDB's SQL) runs unchanged, while the rows live in PostgreSQL, which every
machine of a deployment reaches over the network and where several processes may write at once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
from dagster_duckdb import DuckDBResource
from pydantic import Field

from labeling_dagster.core.labels import CallOutcome, answer_from_dict
from labeling_dagster.core.runner import CallRecord, ItemRecord

LABEL_COLUMNS = """
    month TIMESTAMP, item_id VARCHAR, tier VARCHAR, provider VARCHAR, model VARCHAR, prompt_version VARCHAR,
    label VARCHAR, confidence DOUBLE, raw_confidence DOUBLE, calibration_version VARCHAR, reason VARCHAR,
    alternatives VARCHAR, failure VARCHAR, call_id VARCHAR, reused BOOLEAN, next_step VARCHAR, route_reason VARCHAR,
    signal DOUBLE, audited BOOLEAN
"""
# signal: the number the stage's certificate compares (core/gate.signal_of); audited: the stage would
# accept the item, and it went to people as the stage's audit sample (label is what the stage accepted)

TABLES = {
    "raw_items": """month TIMESTAMP, item_id VARCHAR, text VARCHAR, metadata VARCHAR, content_hash VARCHAR,
        source_file VARCHAR, source_line INTEGER""",
    "rejected_items": "month TIMESTAMP, item_id VARCHAR, source_file VARCHAR, source_line INTEGER, reason VARCHAR",
    "auto_labels": LABEL_COLUMNS,
    "first_pass_labels": LABEL_COLUMNS,
    "qa_labels": LABEL_COLUMNS,
    "adjudicated_labels": LABEL_COLUMNS,
    "golden_set": """item_id VARCHAR, text VARCHAR, label VARCHAR, content_hash VARCHAR, in_golden_sample BOOLEAN""",
    "golden_labels": """month TIMESTAMP, item_id VARCHAR, tier VARCHAR, role VARCHAR, provider VARCHAR,
        model VARCHAR, prompt_version VARCHAR, gold VARCHAR, label VARCHAR, raw_confidence DOUBLE,
        confidence DOUBLE, correct BOOLEAN, failure VARCHAR, forced_human BOOLEAN, call_id VARCHAR, reused BOOLEAN,
        signal DOUBLE, reached BOOLEAN, outcome VARCHAR""",
    # per month and stage, the certified accept threshold and the evidence behind it (core/certify.py);
    # reference: the signal values and labels of the calibration items behind it (for the drift tests)
    "certificates": """month TIMESTAMP, stage VARCHAR, tier VARCHAR, model VARCHAR, prompt_version VARCHAR,
        signal VARCHAR, threshold DOUBLE, items INTEGER, accepted INTEGER, correct INTEGER, bound DOUBLE,
        target DOUBLE, delta DOUBLE, passed BOOLEAN, gate VARCHAR, reason VARCHAR, audit_share DOUBLE,
        drift VARCHAR, recheck BOOLEAN, reference VARCHAR""",
    "calibrations": """month TIMESTAMP, tier VARCHAR, model VARCHAR, prompt_version VARCHAR, method VARCHAR,
        version VARCHAR, calibrator VARCHAR, golden_answers INTEGER, ece_raw DOUBLE, ece_calibrated DOUBLE""",
    "quality_report": """month TIMESTAMP, section VARCHAR, tier VARCHAR, name VARCHAR, value DOUBLE, detail VARCHAR""",
    "review_queue": """month TIMESTAMP, item_id VARCHAR, text VARCHAR, candidate_label VARCHAR, confidence DOUBLE,
        reason VARCHAR, alternatives VARCHAR, label_definition VARCHAR, tier_answers VARCHAR, queue_reason VARCHAR,
        annotators_needed INTEGER, selected_for_review BOOLEAN, selection VARCHAR, reviews_so_far INTEGER,
        reviews_still_needed INTEGER""",
    "label_models": """version VARCHAR, trained_at TIMESTAMP, features VARCHAR, training_size INTEGER, held_out INTEGER,
        classes INTEGER, threshold DOUBLE, estimated_coverage DOUBLE, estimated_accuracy DOUBLE,
        accuracy_lower_bound DOUBLE, reason VARCHAR, curve VARCHAR, path VARCHAR, novelty_floor DOUBLE""",
    "human_reviews": """month TIMESTAMP, item_id VARCHAR, annotator_id VARCHAR, label VARCHAR, seconds DOUBLE,
        submitted_at TIMESTAMP, source_file VARCHAR, file_hash VARCHAR""",
    "review_imports": """month TIMESTAMP, source_file VARCHAR, file_hash VARCHAR, rows_ingested INTEGER,
        rows_rejected INTEGER, duplicate_of VARCHAR, rejection_report VARCHAR""",
    "review_consensus": """month TIMESTAMP, item_id VARCHAR, label VARCHAR, confidence DOUBLE, agreement DOUBLE,
        n_annotators INTEGER, annotators_needed INTEGER, tie BOOLEAN, needs_another_review BOOLEAN,
        settled BOOLEAN, labor_usd DOUBLE""",
    "final_labels": """month TIMESTAMP, item_id VARCHAR, label VARCHAR, status VARCHAR, decided_by VARCHAR,
        confidence DOUBLE, cost_usd DOUBLE""",
    "cost_ledger": """month TIMESTAMP, kind VARCHAR, tier VARCHAR, provider VARCHAR, model VARCHAR, items BIGINT,
        calls BIGINT, calls_reused BIGINT, input_tokens BIGINT, cached_input_tokens BIGINT, output_tokens BIGINT,
        compute_s DOUBLE, usd DOUBLE, usd_reused DOUBLE, budget_usd DOUBLE""",
    "model_calls": """call_id VARCHAR PRIMARY KEY, month TIMESTAMP, tier VARCHAR, provider VARCHAR, model VARCHAR,
        prompt_version VARCHAR, item_count INTEGER, input_tokens BIGINT, cached_input_tokens BIGINT,
        cache_write_tokens BIGINT, output_tokens BIGINT, usd DOUBLE, latency_s DOUBLE, compute_s DOUBLE,
        batch BOOLEAN, status VARCHAR, error VARCHAR, run_id VARCHAR, created_at TIMESTAMP, response VARCHAR,
        first_item VARCHAR, request_key VARCHAR, attempt VARCHAR, stage VARCHAR""",
    # per item, the result a stored call gave for identical inputs (core.runner.item_key): what a rerun
    # reuses, whichever other items reach the tier; `call_id` is the model_calls row that paid for it
    "item_answers": """item_key VARCHAR, month TIMESTAMP, item_id VARCHAR, tier VARCHAR, provider VARCHAR, model VARCHAR,
        prompt_version VARCHAR, answer VARCHAR, failure VARCHAR, call_id VARCHAR""",
    # the shards each plan step's collect step has merged (resources/shards.py), so a collect step that
    # failed halfway and is run again skips what it already merged
    "merged_shards": "plan_id VARCHAR, path VARCHAR, asset VARCHAR, merged_at TIMESTAMP",
}


CALL_COLUMNS = ", ".join(column.split()[0] for column in TABLES["model_calls"].split(","))


def naive_utc(moment: datetime) -> datetime:
    """DuckDB TIMESTAMP columns hold naive UTC; Dagster's partition windows are tz-aware."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


POSTGRES_EXTRA = "pip install -e '.[warehouse-postgres]'"


class WarehouseError(Exception):
    """A warehouse location that cannot be used as given; the message says what to change."""


def _scheme(location: str | Path) -> str:
    text = str(location).strip()
    return text.split("://", 1)[0].lower() if "://" in text else ""


def is_postgres(location: str | Path) -> bool:
    return _scheme(location) in ("postgresql", "postgres")


def warehouse_exists(location: str | Path) -> bool:
    """Whether there is a warehouse to read: the DuckDB file exists (a server is asked when connecting)."""
    return is_postgres(location) or Path(location).exists()


def check_location(location: str | Path) -> None:
    """A location with a scheme must be a PostgreSQL URL, and no URL may carry a password (nor
    sslpassword): the resource's configuration, which holds the location, is shown in the Dagster UI and
    stored with every run. Messages never repeat what follows the host."""
    scheme = _scheme(location)
    if not scheme:
        return
    from urllib.parse import parse_qs, urlsplit

    try:
        parts = urlsplit(str(location).strip())
        host = parts.hostname or ""
        secret = bool(parts.password) or any(key.lower().endswith("password") for key in parse_qs(parts.query))
    except ValueError:
        raise WarehouseError(
            f"the warehouse location ({scheme}://...) is not a valid URL; write "
            "postgresql://user@host:port/dbname"
        ) from None
    if secret:
        raise WarehouseError(
            f"the warehouse location {scheme}://{host}{parts.path} carries a password. Remove it from the "
            "location and give it in the environment instead (PGPASSWORD, or a ~/.pgpass file): the location "
            "is shown in the Dagster UI and stored with every run."
        )
    if not is_postgres(location):
        raise WarehouseError(
            f"the warehouse location {scheme}://{host}{parts.path} is neither a DuckDB file nor a PostgreSQL "
            "URL: write postgresql://user@host:port/dbname (no driver suffix such as +psycopg2), or a file path"
        )


def _load_postgres_extension(conn: duckdb.DuckDBPyConnection) -> None:
    """DuckDB's postgres extension: from the `duckdb-extension-postgres-scanner` package (PyPI, for the
    DuckDB release the `warehouse-postgres` extra pins), else one DuckDB installed itself."""
    try:
        import duckdb_extension_postgres_scanner as packaged
    except ImportError:
        packaged = None
    files = sorted(Path(packaged.__file__).parent.glob("extensions/*/postgres_scanner.duckdb_extension")) if packaged else []
    files = [path for path in files if path.parent.name == f"v{duckdb.__version__}"] or files[-1:]
    try:
        conn.execute("SET autoinstall_known_extensions = false")  # never a download at run time
        conn.execute(f"LOAD {_literal(str(files[-1]))}" if files else "LOAD postgres_scanner")
    except duckdb.Error as exc:
        built_for = files[-1].parent.name if files else None
        why = (f"the packaged extension is built for DuckDB {built_for}, this is DuckDB {duckdb.__version__}"
               if built_for and built_for != f"v{duckdb.__version__}" else str(exc).splitlines()[0])
        raise WarehouseError(
            f"a PostgreSQL warehouse needs DuckDB's postgres extension, which cannot be loaded ({why}). Install "
            f"the project's warehouse-postgres extra, which pins DuckDB and the extension together: {POSTGRES_EXTRA}"
        ) from exc


def connect(location: str | Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose default catalog is the warehouse at `location`: a DuckDB file, or a
    PostgreSQL database (a `postgresql://user@host:port/dbname` URL; libpq takes the password and any
    other setting not in the URL from the environment: PGPASSWORD, PGSSLMODE, ~/.pgpass ...)."""
    check_location(location)
    if not is_postgres(location):
        return duckdb.connect(str(location), read_only=read_only)
    location = _normalized(location)
    conn = duckdb.connect()
    try:
        _load_postgres_extension(conn)
        conn.execute(f"ATTACH {_literal(location)} AS warehouse (TYPE postgres{', READ_ONLY' if read_only else ''})")
        conn.execute("USE warehouse")
    except duckdb.Error as exc:
        conn.close()
        why = str(exc).splitlines()[0].replace(location, _without_query(location))
        raise WarehouseError(
            f"cannot open the PostgreSQL warehouse {_without_query(location)}: {why}. Check "
            "that the server runs and the database exists, and that PGPASSWORD (or ~/.pgpass) holds the password."
        ) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _without_query(location: str | Path) -> str:
    return str(location).split("?")[0]


def _normalized(location: str | Path) -> str:
    """libpq's form: the scheme in lower case (POSTGRESQL:// is read as a URL here, but not by libpq)."""
    text = str(location).strip()
    scheme, rest = text.split("://", 1)
    return f"{scheme.lower()}://{rest}"


class Warehouse(DuckDBResource):
    """dagster-duckdb's resource, plus the month-window reads and writes the assets share. `database` is a
    DuckDB file or a `postgresql://` URL (without its password: see `connect`)."""

    shard_folder_path: str | None = Field(
        default=None,
        description="folder of the model tiers' shard files (default: <DuckDB file>.shards beside the file); "
        "required for a PostgreSQL warehouse, and shared by every machine that runs shard steps",
    )

    @contextmanager
    def session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if is_postgres(self.database):
            conn = connect(self.database)
            try:
                ensure_tables(conn)
                yield conn
            finally:
                conn.close()
            return
        with self.get_connection() as conn:
            ensure_tables(conn)
            yield conn

    def shard_folder(self) -> Path:
        """Where a tier's shard files live between its plan and collect steps (resources/shards.py)."""
        from labeling_dagster.resources.shards import shard_dir

        if self.shard_folder_path:
            return Path(self.shard_folder_path).expanduser().resolve()
        if is_postgres(self.database):
            raise WarehouseError(
                "a PostgreSQL warehouse has no folder of its own for shard files: set scale.shard_folder in the "
                "project file (a folder every machine that runs shard steps shares)"
            )
        return shard_dir(self.database)


def ensure_tables(conn: duckdb.DuckDBPyConnection) -> None:
    for table, columns in TABLES.items():
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
        _add_new_columns(conn, table, columns)


def _add_new_columns(conn: duckdb.DuckDBPyConnection, table: str, columns: str) -> None:
    """A warehouse written by an earlier version gets the columns added since (NULL in old rows)."""
    have = {row[0] for row in conn.execute(f"DESCRIBE {table}").fetchall()}
    for column in columns.split(","):
        name, kind = column.split()[:2]
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def read_window(conn: duckdb.DuckDBPyConnection, table: str, window: dg.TimeWindow) -> pd.DataFrame:
    return conn.execute(
        f"SELECT * FROM {table} WHERE month >= ? AND month < ? ORDER BY month"
        + (", item_id" if " item_id " in TABLES[table] else ""),
        [naive_utc(window.start), naive_utc(window.end)],
    ).df()


def read_columns(conn: duckdb.DuckDBPyConnection, table: str, window: dg.TimeWindow, columns: str) -> pd.DataFrame:
    """Only `columns` of the window's rows: what a later asset needs of a large table (not its texts)."""
    return conn.execute(
        f"SELECT {columns} FROM {table} WHERE month >= ? AND month < ?", [naive_utc(window.start), naive_utc(window.end)]
    ).df()


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Everything in the block commits together, or (on any exception, a kill included) not at all."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def replace_window(conn: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame, window: dg.TimeWindow) -> int:
    """Replace the window's rows of `table` with `frame` (whose columns are a subset of the table's)."""
    with transaction(conn):
        conn.execute(
            f"DELETE FROM {table} WHERE month >= ? AND month < ?", [naive_utc(window.start), naive_utc(window.end)]
        )
        if len(frame):
            incoming = frame  # noqa: F841 (DuckDB reads the local DataFrame by its name)
            conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
    return len(frame)


CHUNK_ROWS = 50_000  # rows a large month moves at a time: memory stays bounded by the chunk, not the month


def clear_window(conn: duckdb.DuckDBPyConnection, table: str, window: dg.TimeWindow) -> None:
    conn.execute(f"DELETE FROM {table} WHERE month >= ? AND month < ?", [naive_utc(window.start), naive_utc(window.end)])


def append(conn: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    """Insert a chunk. Each chunk commits on its own, so the model calls stored between chunks survive
    a crash; the rerun clears the window and the call cache makes the repeated calls free."""
    if len(frame):
        incoming = frame  # noqa: F841 (DuckDB reads the local DataFrame by its name)
        conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")


def iter_window(
    conn: duckdb.DuckDBPyConnection, table: str, window: dg.TimeWindow, where: str = "", rows: int | None = None
) -> Iterator[pd.DataFrame]:
    """The window's rows of `table` in (month, item_id) order, a page at a time. Each page is a
    complete query (keyset pagination), so `conn` stays free for the call cache between pages."""
    rows = rows or CHUNK_ROWS
    last_month, last_item = None, None
    while True:
        after = "" if last_month is None else "AND (month > $after_month OR (month = $after_month AND item_id > $after_item))"
        params = {"start": naive_utc(window.start), "end": naive_utc(window.end)}
        if last_month is not None:
            params |= {"after_month": last_month, "after_item": last_item}
        page = conn.execute(
            f"SELECT * FROM {table} WHERE month >= $start AND month < $end {where} {after} "
            f"ORDER BY month, item_id LIMIT {int(rows)}",
            params,
        ).df()
        if not len(page):
            return
        yield page
        last_month, last_item = page["month"].iloc[-1].to_pydatetime(), page["item_id"].iloc[-1]
        if len(page) < rows:
            return


ITEM_COLUMNS = ", ".join(column.split()[0] for column in TABLES["item_answers"].split(","))


class DuckDBCallCache:
    """core.runner.CallCache over `model_calls` (one row per request the provider answered or refused:
    every billed attempt, never replaced) and `item_answers` (per item, the result for identical
    inputs that a rerun reuses). `stage` is the asset that pays (golden_labels, first_pass_labels, ...),
    so the ledger can tell the golden run's calls from the month's."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, month: datetime, run_id: str, stage: str | None = None):
        self.conn, self.month, self.run_id, self.stage = conn, naive_utc(month), run_id, stage

    def items(self, item_keys: list[str]) -> dict[str, ItemRecord]:
        if not item_keys:
            return {}
        wanted = pd.DataFrame({"item_key": item_keys})  # noqa: F841 (read by name in the SQL below)
        rows = self.conn.execute(
            """SELECT item_key, item_id, answer, failure, call_id FROM item_answers
               WHERE item_key IN (SELECT item_key FROM wanted)
               QUALIFY row_number() OVER (PARTITION BY item_key ORDER BY answer IS NULL, call_id) = 1"""
        ).fetchall()
        return {key: ItemRecord(key, item_id, answer_from_dict(json.loads(answer)) if answer else None, failure, call_id)
                for key, item_id, answer, failure, call_id in rows}

    def get(self, call_id: str) -> CallRecord | None:
        row = self.conn.execute(
            """SELECT tier, provider, model, prompt_version, item_count, usd, response FROM model_calls
               WHERE call_id = ? AND status IN ('ok', 'partial')""",
            [call_id],
        ).fetchone()
        if row is None:
            return None
        tier, provider, model, version, count, usd, response = row
        return CallRecord(call_id, tier, provider, model, version, count, CallOutcome.from_json(response), usd)

    def put(self, record: CallRecord, items: list[ItemRecord]) -> str:
        """Store the attempt under its request key, or, when that key is taken (the same request asked
        again after an error, a 5xx or a crash), under a key of its own: no billed attempt is replaced."""
        call_id = record.call_id
        if self.conn.execute("SELECT 1 FROM model_calls WHERE call_id = ?", [call_id]).fetchone():
            call_id = f"{record.call_id}-{uuid.uuid4().hex[:8]}"
        outcome, usage = record.outcome, record.outcome.usage
        with transaction(self.conn):
            self.conn.execute(
                f"INSERT INTO model_calls ({CALL_COLUMNS}) VALUES ({', '.join('?' * len(CALL_COLUMNS.split(',')))})",
                [
                    call_id, self.month, record.tier, record.provider, record.model, record.version,
                    record.item_count, usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens,
                    usage.output_tokens, record.usd, outcome.latency_s, outcome.compute_s, outcome.batch,
                    outcome.status, outcome.error, self.run_id, datetime.now(timezone.utc).replace(tzinfo=None),
                    outcome.to_json(), record.first_item, record.call_id, record.attempt,
                    self.stage,
                ],
            )
            self._put_items(call_id, record, items)
        return call_id

    def adopt(self, call_id: str, record: CallRecord, items: list[ItemRecord]) -> None:
        self._put_items(call_id, record, items)

    def _put_items(self, call_id: str, record: CallRecord, items: list[ItemRecord]) -> None:
        if not items:
            return
        incoming = pd.DataFrame([{
            "item_key": item.item_key, "month": self.month, "item_id": item.item_id, "tier": record.tier,
            "provider": record.provider, "model": record.model, "prompt_version": record.version,
            "answer": json.dumps(asdict(item.answer)) if item.answer else None,
            "failure": item.failure, "call_id": call_id,
        } for item in items])  # noqa: F841 (read by name in the SQL below)
        self.conn.execute(f"INSERT INTO item_answers ({ITEM_COLUMNS}) SELECT {ITEM_COLUMNS} FROM incoming")

    def month_spend(self) -> float:
        (usd,) = self.conn.execute(
            "SELECT COALESCE(SUM(usd), 0) FROM model_calls WHERE month = ?", [self.month]
        ).fetchone()
        return float(usd)

