"""Stage 1: a month's inbox files become items; unusable rows become rejected rows with a reason."""

import dagster as dg
import pandas as pd

from labeling_dagster.assets.common import monthly_asset_args, months_in
from labeling_dagster.core.sources import read_month
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import Warehouse, naive_utc, replace_window


def build(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(**monthly_asset_args(partitions), kinds={"duckdb"})
    def raw_items(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """One row per item of the month (item_id, text, metadata, content_hash), read from the files the
        project's `source.path` glob matches. Rows that cannot be items (empty text, missing or duplicate
        id, unreadable) go to `rejected_items` with the file, line and reason. Read by every tier."""
        spec = project.load()
        items, rejected, files = [], [], []
        for month, window in months_in(context.partition_time_window):
            read = read_month(spec, month)
            stamp = naive_utc(window.start)
            items += [{**row, "month": stamp} for row in read.items]
            rejected += [{**row, "month": stamp} for row in read.rejected]
            files += read.files
            context.log.info(f"{month}: {len(read.items)} items, {len(read.rejected)} rejected from {read.files}")
        with warehouse.session() as conn:
            replace_window(conn, "raw_items", pd.DataFrame(items), context.partition_time_window)
            replace_window(conn, "rejected_items", pd.DataFrame(rejected), context.partition_time_window)
        reasons = pd.Series([row["reason"].split(":")[0] for row in rejected], dtype=str).value_counts()
        return dg.MaterializeResult(
            metadata={
                "items": len(items),
                "rejected": len(rejected),
                "rows_read": len(items) + len(rejected),
                "files": ", ".join(files),
                "rejected_by_reason": dg.MetadataValue.md(
                    "\n".join(f"- {reason}: {count}" for reason, count in reasons.items()) or "_none_"
                ),
            }
        )

    return raw_items
