"""The monthly flow, one module per stage, in the order the data moves."""

from __future__ import annotations

import dagster as dg

from labeling_dagster.project import Scale

from labeling_dagster.assets import (
    cost_ledger,
    final_labels,
    golden_labels,
    human_reviews,
    label_model,
    quality_report,
    raw_items,
    review_queue,
    tiers,
)


def build_assets(partitions: dg.PartitionsDefinition, scale: Scale) -> list[dg.AssetsDefinition]:
    return [
        raw_items.build(partitions),
        golden_labels.build_golden_set(),
        golden_labels.build(partitions),
        label_model.build_label_model(),
        label_model.build_auto_labels(partitions),
        *tiers.build_all(partitions, scale),  # first_pass_labels, qa_labels, adjudicated_labels
        review_queue.build(partitions),
        human_reviews.build(partitions),
        final_labels.build(partitions),
        cost_ledger.build(partitions),
        quality_report.build(partitions),
    ]
