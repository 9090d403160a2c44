"""Shard files: how a model tier labels one month in several independent steps.

DuckDB takes one writer at a time, so a shard does not write the warehouse. The plan step copies
what a shard needs (its items, their earlier answers, the month's calibrations and the stored calls
of its item range) into a DuckDB file of its own; the shard step labels there, storing each call as
it returns; the collect step merges every shard file into the warehouse and deletes it. Shard steps
can then run at once, in several processes or on several machines that share the folder, and a
failed shard is retried from its own file without paying again for the calls it already made.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb

from labeling_dagster.resources.warehouse import (
    CALL_COLUMNS,
    CHUNK_ROWS,
    ITEM_COLUMNS,
    ensure_tables,
    naive_utc,
    transaction,
)


@dataclass(frozen=True)
class ShardSpec:
    """One shard of one tier in one month: the items from `first_item` up to (not including) `end_item`
    (None: to the end of the month), in item id order, as the month's todo list sorts them."""

    asset: str
    month: str
    start: datetime
    end: datetime
    index: int
    count: int
    path: str
    first_item: str
    end_item: str | None
    items: int
    batch: bool  # the plan step's decision: this run is large enough for the provider's batch API
    spent_before: float  # the month's spend when the shards were planned
    budget_cap_usd: float  # the month's spend this shard may bring it to: its share of what remained
    on_exceeded: str
    plan_id: str = ""  # one per plan step: its shard files, and the shards its collect step merged
    fingerprint: str = ""  # the shard's inputs when planned (its items, their earlier answers)

    @property
    def window(self) -> dg.TimeWindow:
        return dg.TimeWindow(self.start, self.end)

    @property
    def mapping_key(self) -> str:
        return f"m{self.month.replace('-', '_')}_s{self.index + 1:04d}"

    def in_range(self, column: str = "item_id") -> str:
        """SQL: the shard's item range (ids are compared as strings, as the month's order sorts them)."""
        end = "" if self.end_item is None else f" AND {column} < {_quote(self.end_item)}"
        return f"{column} >= {_quote(self.first_item)}{end}"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def shard_size(shard_items: int, items_per_request: int) -> int:
    """Items per shard: a multiple of the tier's items per request, as the pages a shard reads are
    (page_rows), so every request starts a multiple of items_per_request into the month's items. A
    sharded month then sends the requests of the same month in one piece, and either one's stored calls
    serve the other."""
    return max(1, math.ceil(shard_items / items_per_request)) * items_per_request


def page_rows(items_per_request: int) -> int:
    """Items a shard reads and labels at a time: about CHUNK_ROWS, a whole number of requests."""
    return max(1, CHUNK_ROWS // items_per_request) * items_per_request


def shard_dir(database: str) -> Path:
    path = Path(database).expanduser().resolve()
    return path.parent / f"{path.name}.shards"


def shard_path(folder: Path, asset: str, month: str, plan_id: str, index: int, count: int) -> Path:
    return folder / f"{asset}-{month}-{plan_id}-{index + 1:04d}of{count:04d}.duckdb"


def leftover_files(folder: Path, asset: str, month: str) -> list[Path]:
    pattern = re.compile(rf"{re.escape(asset)}-{re.escape(month)}-[0-9a-f]+-\d{{4}}of\d{{4}}\.duckdb")
    return sorted(path for path in folder.glob(f"{asset}-{month}-*.duckdb") if pattern.fullmatch(path.name))


def remove(path: Path) -> None:
    for leftover in (path, path.with_name(path.name + ".wal")):
        leftover.unlink(missing_ok=True)


def _attach(conn: duckdb.DuckDBPyConnection, path: Path, *, read_only: bool) -> None:
    try:
        conn.execute(f"ATTACH {_quote(str(path))} AS shard{' (READ_ONLY)' if read_only else ''}")
    except duckdb.Error as exc:
        if "lock" in str(exc).lower():
            raise dg.Failure(
                f"shard file {path} is open in another process: a shard step of another run of this month "
                "is still labeling. Let that run finish (or stop it), then run the month again."
            ) from exc
        raise dg.Failure(
            f"shard file {path} cannot be opened ({exc}). It holds model calls a shard made; if it is "
            "damaged, move it out of the folder and run the month again (its calls will be made again)."
        ) from exc


def _complete(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether the attached shard file got its tables (a plan stopped while writing it leaves one without)."""
    (tables,) = conn.execute(
        "SELECT COUNT(*) FROM duckdb_tables() WHERE database_name = 'shard' AND table_name IN ('model_calls', 'copied_calls')"
    ).fetchone()
    return tables == 2


def _merge_attached_calls(conn: duckdb.DuckDBPyConnection) -> int:
    """Copy the calls the attached shard made (not those the plan copied into it), and the item results
    they settled, into the warehouse. Stored calls are never replaced: a call id the warehouse has
    already is the same attempt merged before."""
    new = ("FROM shard.model_calls WHERE call_id NOT IN (SELECT call_id FROM shard.copied_calls) "
           "AND call_id NOT IN (SELECT call_id FROM model_calls)")
    (count,) = conn.execute(f"SELECT COUNT(*) {new}").fetchone()
    conn.execute(f"INSERT INTO model_calls ({CALL_COLUMNS}) SELECT {CALL_COLUMNS} {new}")
    # the item results the shard stored (of its new calls, and older calls' answers it adopted per item)
    conn.execute(
        f"INSERT INTO item_answers ({ITEM_COLUMNS}) SELECT {ITEM_COLUMNS} FROM shard.item_answers s "
        "WHERE NOT EXISTS (SELECT 1 FROM item_answers w WHERE w.item_key = s.item_key AND w.call_id = s.call_id)"
    )
    return int(count)


def upgrade(path: Path) -> None:
    """Give a shard file an earlier version wrote the tables and columns added since (its calls stay)."""
    try:
        with duckdb.connect(str(path)) as shard:
            if shard.execute("SELECT COUNT(*) FROM duckdb_tables() WHERE table_name = 'copied_calls'").fetchone()[0]:
                ensure_tables(shard)
    except duckdb.Error:
        return  # open elsewhere or damaged: _attach says so


def salvage(conn: duckdb.DuckDBPyConnection, folder: Path, asset: str, month: str) -> int:
    """Keep the calls of shard files an earlier, unfinished run left behind, then delete the files.
    Returns the number of calls kept: they are served from the call cache, never paid again."""
    kept = 0
    for path in leftover_files(folder, asset, month):
        upgrade(path)
        _attach(conn, path, read_only=True)
        try:
            if _complete(conn):  # an incomplete file was never labeled in: no call to keep
                with transaction(conn):
                    kept += _merge_attached_calls(conn)
        finally:
            conn.execute("DETACH shard")
        remove(path)
    return kept


def create(conn: duckdb.DuckDBPyConnection, spec: ShardSpec, *, todo_sql: str, earlier_tables: list[str],
           provider: str, model: str) -> None:
    """Write the shard file: the shard's items, their earlier answers, the month's calibrations and
    certificates, and the
    stored calls of the tier's provider and model whose first item falls in the shard's range, whatever
    their month or tier name (the call cache's key has neither): those the shard may reuse."""
    path = Path(spec.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove(path)
    with duckdb.connect(str(path)) as shard:
        ensure_tables(shard)
        shard.execute("CREATE TABLE copied_calls (call_id VARCHAR)")
    window = [naive_utc(spec.start), naive_utc(spec.end)]
    _attach(conn, path, read_only=False)
    try:
        conn.execute(
            f"INSERT INTO shard.raw_items SELECT * FROM raw_items WHERE month >= ? AND month < ? AND {spec.in_range()} "
            f"{todo_sql}", window,
        )
        for table in earlier_tables:
            conn.execute(
                f"INSERT INTO shard.{table} BY NAME SELECT * FROM {table} WHERE month >= ? AND month < ? "
                f"AND {spec.in_range()} AND item_id IN (SELECT item_id FROM shard.raw_items)", window,
            )
        for table in ("calibrations", "certificates"):
            conn.execute(f"INSERT INTO shard.{table} BY NAME SELECT * FROM {table} WHERE month >= ? AND month < ?", window)
        # Calls stored before first_item was recorded have none: every shard may reuse them. Calls that
        # answered nothing come too, so that a new attempt at the same request gets a call id of its own.
        conn.execute(
            "INSERT INTO shard.model_calls BY NAME SELECT * FROM model_calls WHERE provider = ? AND model = ? "
            f"AND ({spec.in_range('first_item')} OR first_item IS NULL)",
            [provider, model],
        )
        # the stored results of the shard's items: reused per item, whatever request paid for them
        conn.execute(
            "INSERT INTO shard.item_answers BY NAME SELECT * FROM item_answers WHERE provider = ? AND model = ? "
            "AND item_id IN (SELECT item_id FROM shard.raw_items)",
            [provider, model],
        )
        conn.execute("INSERT INTO shard.copied_calls SELECT call_id FROM shard.model_calls")
    finally:
        conn.execute("DETACH shard")


def fingerprint(conn: duckdb.DuckDBPyConnection, spec: ShardSpec, *, todo_sql: str, earlier_tables: list[str]) -> str:
    """What the shard's labels depend on in the warehouse: its items, their earlier tiers' answers and
    the month's certificates and calibrators.
    The collect step compares it with the plan's, so a re-execution never merges labels of inputs that
    changed in between (e.g. the first pass rematerialized before a failed QA run is re-executed)."""
    window = [naive_utc(spec.start), naive_utc(spec.end)]
    parts = [conn.execute(
        f"SELECT COUNT(*), COALESCE(bit_xor(hash(item_id, content_hash)), 0) FROM raw_items "
        f"WHERE month >= ? AND month < ? AND {spec.in_range()} {todo_sql}", window).fetchone()]
    for table in earlier_tables:
        parts.append(conn.execute(
            f"SELECT COUNT(*), COALESCE(bit_xor(hash(item_id, tier, label, raw_confidence, reason, next_step)), 0) "
            f"FROM {table} WHERE month >= ? AND month < ? AND {spec.in_range()}", window).fetchone())
    parts.append(conn.execute(  # the thresholds and calibrators the shard routes by
        "SELECT COUNT(*), COALESCE(bit_xor(hash(stage, threshold, passed, gate)), 0) FROM certificates "
        "WHERE month >= ? AND month < ?", window).fetchone())
    parts.append(conn.execute(
        "SELECT COUNT(*), COALESCE(bit_xor(hash(tier, prompt_version, version)), 0) FROM calibrations "
        "WHERE month >= ? AND month < ?", window).fetchone())
    return ";".join(f"{count}:{digest}" for count, digest in parts)


def collect(conn: duckdb.DuckDBPyConnection, spec: ShardSpec) -> int:
    """Merge a finished shard into the warehouse (its rows of the tier table and the calls it made), in
    one transaction, then delete its file. Returns the rows merged."""
    path = Path(spec.path)
    (merged,) = conn.execute("SELECT COUNT(*) FROM merged_shards WHERE plan_id = ? AND path = ?",
                             [spec.plan_id, spec.path]).fetchone()
    if merged:  # a collect step that failed after merging this shard, run again
        remove(path)
        return 0
    if not path.exists():
        raise dg.Failure(
            f"shard file {path} is missing: the shard step ran on a machine that does not share this folder, "
            "or a newer run of the month took over its calls. Run the month again; stored calls are reused."
        )
    window = [naive_utc(spec.start), naive_utc(spec.end)]

    def merge() -> int:
        conn.execute(f"DELETE FROM {spec.asset} WHERE month >= ? AND month < ? AND {spec.in_range()}", window)
        (rows,) = conn.execute(f"SELECT COUNT(*) FROM shard.{spec.asset}").fetchone()
        conn.execute(f"INSERT INTO {spec.asset} BY NAME SELECT * FROM shard.{spec.asset}")
        _merge_attached_calls(conn)
        conn.execute("INSERT INTO merged_shards VALUES (?, ?, ?, now()::TIMESTAMP)", [spec.plan_id, spec.path, spec.asset])
        return int(rows)

    _attach(conn, path, read_only=True)
    try:
        with transaction(conn):
            rows = merge()
    finally:
        conn.execute("DETACH shard")
    remove(path)
    return rows
