"""Stage 6: one final row per raw item, labeled by the tier that settled it or pending people."""

import dagster as dg
import pandas as pd

from labeling_dagster import checks
from labeling_dagster.assets.common import monthly_asset_args, months_in
from labeling_dagster.assets.review_queue import TIER_TABLES, latest_rows
from labeling_dagster.core.quality import golden_answers, golden_score
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import Warehouse, naive_utc, read_window, replace_window

CALL_SHARES = """
    SELECT call_id, usd / NULLIF(item_count, 0) AS usd_per_item FROM model_calls
    WHERE call_id IN (SELECT call_id FROM incoming_calls)
"""


def build(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        **monthly_asset_args(partitions),
        deps=["raw_items", *TIER_TABLES, "review_queue"],
        check_specs=checks.final_label_specs("final_labels"),
        kinds={"duckdb"},
    )
    def final_labels(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """Exactly one row per raw item of the month: the label and the tier that decided it
        (`decided_by`), or status pending_human with no label while people have not answered;
        `cost_usd` is the item's share of its model calls plus, while pending, its estimated review
        cost. This is the table downstream users read."""
        spec = project.load()
        per_review = spec.human_review.usd_per_review * spec.human_review.annotators_per_item
        answers = golden_answers(spec)
        frames, raws, rejected = [], [], 0
        with warehouse.session() as conn:
            for month, window in months_in(context.partition_time_window):
                raw = read_window(conn, "raw_items", window)
                every, last = latest_rows(conn, window)
                rejected += len(read_window(conn, "rejected_items", window))
                final = raw[["item_id", "content_hash"]].copy()
                final["month"] = naive_utc(window.start)
                if len(last):
                    outcome = last.reindex(final["item_id"])
                    settled = (outcome["next_step"] == "accept").to_numpy()
                    queued = (outcome["next_step"] == "human").to_numpy()
                    final["status"] = ["labeled" if s else "pending_human" if q else "unrouted" for s, q in zip(settled, queued)]
                    final["label"] = outcome["label"].where(settled).to_numpy()
                    final["confidence"] = outcome["confidence"].where(settled).to_numpy()
                    final["decided_by"] = outcome["tier"].where(settled).to_numpy()
                    conn.register("incoming_calls", every[["call_id"]].dropna())
                    shares = conn.execute(CALL_SHARES).df().set_index("call_id")["usd_per_item"]
                    conn.unregister("incoming_calls")
                    model_cost = every.assign(usd=every["call_id"].map(shares).fillna(0.0)).groupby("item_id")["usd"].sum()
                    final["cost_usd"] = final["item_id"].map(model_cost).fillna(0.0) + queued * per_review
                else:
                    final = final.assign(status="unrouted", label=None, confidence=None, decided_by=None, cost_usd=0.0)
                frames.append(final)
                raws.append(raw)
            result = pd.concat(frames, ignore_index=True)
            replace_window(conn, "final_labels", result.drop(columns=["content_hash"]), context.partition_time_window)
        raw_all = pd.concat(raws, ignore_index=True)
        score = golden_score(result, answers)
        by_tier = result[result["status"] == "labeled"]["decided_by"].value_counts()
        return dg.MaterializeResult(
            metadata={
                "items": len(result),
                "labeled": int((result["status"] == "labeled").sum()),
                "pending_human": int((result["status"] == "pending_human").sum()),
                "rejected": rejected,
                "decided_by": dg.MetadataValue.md("\n".join(f"- {t}: {n}" for t, n in by_tier.items()) or "_none_"),
                "golden_items": score.golden_items,
                "golden_accuracy": dg.MetadataValue.float(round(score.accuracy, 4)) if score.accuracy is not None else dg.MetadataValue.text("n/a"),
                "cost_usd": dg.MetadataValue.float(round(float(result["cost_usd"].sum()), 6)),
            },
            check_results=[
                checks.terminal_state(raw_all, result, rejected),
                checks.labels_in_taxonomy(result, spec.taxonomy.names),
            ],
        )

    return final_labels
