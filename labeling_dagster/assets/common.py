"""What every monthly asset shares: the partitions, the month windows inside a (possibly multi-month)
partition window, and turning stored rows back into items."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from datetime import datetime

import dagster as dg
import pandas as pd

from labeling_dagster.core.labels import Item
from labeling_dagster.project import Project

# Single-run backfills are the policy we want for rate-limited work; Dagster still marks the option beta.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")

GROUP = "labeling"
# The tier tables in the order an item moves through them; the last row of an item holds its routing outcome.
LABEL_TABLES = ["auto_labels", "first_pass_labels", "qa_labels", "adjudicated_labels"]
MODEL_TIER_TABLES = LABEL_TABLES[1:]  # the tiers that call a provider
WAREHOUSE_POOL = "warehouse"  # DuckDB allows one writer: every asset that writes it shares this pool
# The same rule inside one run, for the multiprocess executor (scale.parallel_shards > 1): steps with this
# tag run one at a time whatever the instance's pool settings; shard steps, which write their own files, don't.
WRITER_TAG = "labeling/writes_warehouse"


def monthly_partitions(project: Project) -> dg.MonthlyPartitionsDefinition:
    return dg.MonthlyPartitionsDefinition(start_date=f"{project.source.start_month}-01")


def monthly_asset_args(partitions: dg.PartitionsDefinition) -> dict:
    """Decorator arguments of every monthly asset. A single-run backfill labels a range of months in
    one run, so a rate-limited provider sees one orderly stream of calls instead of parallel runs."""
    return {
        "partitions_def": partitions,
        "backfill_policy": dg.BackfillPolicy.single_run(),
        "pool": WAREHOUSE_POOL,
        "op_tags": {WRITER_TAG: "1"},
        "group_name": GROUP,
    }


def _next_month(moment: datetime) -> datetime:
    return moment.replace(year=moment.year + moment.month // 12, month=moment.month % 12 + 1, day=1)


def months_in(window: dg.TimeWindow) -> Iterator[tuple[str, dg.TimeWindow]]:
    """Each month (YYYY-MM, its window) of a partition window; a backfill range holds several."""
    start = window.start
    while start < window.end:
        end = _next_month(start)
        yield start.strftime("%Y-%m"), dg.TimeWindow(start, end)
        start = end


def items_from(frame: pd.DataFrame) -> list[Item]:
    return [
        Item(row.item_id, row.text, row.content_hash, json.loads(row.metadata) if row.metadata else {})
        for row in frame.itertuples(index=False)
    ]


def markdown_table(frame: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.to_markdown(index=False) if len(frame) else "_no rows_")
