"""Stage 1: a month's inbox files become items; unusable rows become rejected rows with a reason."""

import dagster as dg
import pandas as pd

from labeling_dagster.assets.common import monthly_asset_args, months_in
from labeling_dagster.core.sources import month_files, month_rows
from labeling_dagster.resources import warehouse as storage
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import Warehouse, append, clear_window, naive_utc


def build(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(**monthly_asset_args(partitions), kinds={"duckdb"})
    def raw_items(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """One row per item of the month (item_id, text, metadata, content_hash), read from the files the
        project's `source.path` glob matches. Rows that cannot be items (empty text, missing or duplicate
        id, unreadable) go to `rejected_items` with the file, line and reason. Read by every tier."""
        spec = project.load()
        files, reasons = [], {}
        counts = {"item": 0, "rejected": 0}
        with warehouse.session() as conn:
            for table in ("raw_items", "rejected_items"):
                clear_window(conn, table, context.partition_time_window)
            for month, window in months_in(context.partition_time_window):
                files += [str(path) for path in month_files(spec, month)]
                stamp = naive_utc(window.start)
                chunk: dict[str, list] = {"item": [], "rejected": []}
                for kind, row in month_rows(spec, month):
                    chunk[kind].append({**row, "month": stamp})
                    counts[kind] += 1
                    if kind == "rejected":
                        reason = row["reason"].split(":")[0]
                        reasons[reason] = reasons.get(reason, 0) + 1
                    if len(chunk["item"]) >= storage.CHUNK_ROWS:
                        append(conn, "raw_items", pd.DataFrame(chunk["item"]))
                        chunk["item"] = []
                append(conn, "raw_items", pd.DataFrame(chunk["item"]))
                append(conn, "rejected_items", pd.DataFrame(chunk["rejected"]))
                context.log.info(f"{month}: {counts['item']} items, {counts['rejected']} rejected so far")
        items, rejected = counts["item"], counts["rejected"]
        return dg.MaterializeResult(
            metadata={
                "items": items,
                "rejected": rejected,
                "rows_read": items + rejected,
                "files": ", ".join(files),
                "rejected_by_reason": dg.MetadataValue.md(
                    "\n".join(f"- {reason}: {count}" for reason, count in reasons.items()) or "_none_"
                ),
            }
        )

    return raw_items
