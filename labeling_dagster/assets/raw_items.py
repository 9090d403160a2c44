"""Stage 1: a month's inbox files become items; unusable rows become rejected rows with a reason."""

from pathlib import Path

import dagster as dg
import pandas as pd

from labeling_dagster.assets.common import monthly_asset_args, months_in
from labeling_dagster.core.sources import FileTally, month_rows
from labeling_dagster.resources import warehouse as storage
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import Warehouse, append, clear_window, naive_utc


def _files_table(tallies: list[FileTally]) -> str:
    lines = ["| file | format | physical rows | items | rejected |", "|---|---|---:|---:|---:|"]
    lines += [
        f"| {Path(t.file).name} | {t.format} | {t.physical_rows} | {t.items} | {t.rejected} |" for t in tallies
    ]
    return "\n".join(lines)


def build(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(**monthly_asset_args(partitions), kinds={"duckdb"})
    def raw_items(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """One row per item of the month (item_id, text, metadata, content_hash), read from the files the
        project's `source.path` glob matches. Rows that cannot be items (empty, non-string or too long text,
        missing or duplicate id, broken quoting, invalid UTF-8 or JSON, a file without a required column) go
        to `rejected_items` with the file, line and reason; per file, physical rows = items + rejections is
        checked. Read by every tier."""
        spec = project.load()
        tallies: list[FileTally] = []
        reasons: dict[str, int] = {}
        with warehouse.session() as conn:
            for table in ("raw_items", "rejected_items"):
                clear_window(conn, table, context.partition_time_window)
            for month, window in months_in(context.partition_time_window):
                stamp = naive_utc(window.start)
                chunk: dict[str, list] = {"item": [], "rejected": []}
                read_before = len(tallies)
                for kind, row in month_rows(spec, month, tallies):
                    chunk[kind].append({**row, "month": stamp})
                    if kind == "rejected":
                        reason = row["reason"].split(":")[0]
                        reasons[reason] = reasons.get(reason, 0) + 1
                    if len(chunk[kind]) >= storage.CHUNK_ROWS:
                        append(conn, "raw_items" if kind == "item" else "rejected_items", pd.DataFrame(chunk[kind]))
                        chunk[kind] = []
                append(conn, "raw_items", pd.DataFrame(chunk["item"]))
                append(conn, "rejected_items", pd.DataFrame(chunk["rejected"]))
                for tally in tallies[read_before:]:
                    context.log.info(
                        f"{month}: {tally.file}: {tally.physical_rows} physical rows = {tally.items} items + "
                        f"{tally.rejected} rejected"
                    )
                    if tally.rejected and not tally.items:
                        context.log.warning(f"{month}: {tally.file}: every row was rejected; see rejected_items")
        # each file's physical rows = items + rejections is checked as it is read (core/sources.py)
        items, rejected = sum(t.items for t in tallies), sum(t.rejected for t in tallies)
        physical = sum(t.physical_rows for t in tallies)
        return dg.MaterializeResult(
            metadata={
                "items": items,
                "rejected": rejected,
                "rows_read": items + rejected,
                "physical_rows": physical,
                "files": ", ".join(tally.file for tally in tallies),
                "rows_by_file": dg.MetadataValue.md(_files_table(tallies)),
                "rows_by_file_json": dg.MetadataValue.json(
                    [{"file": t.file, "format": t.format, "physical_rows": t.physical_rows, "items": t.items,
                      "rejected": t.rejected} for t in tallies]
                ),
                "rejected_by_reason": dg.MetadataValue.md(
                    "\n".join(f"- {reason}: {count}" for reason, count in reasons.items()) or "_none_"
                ),
            }
        )

    return raw_items
