"""Stage 5: the items no model settled, with everything a reviewer needs, exported as files."""

import json

import dagster as dg
import pandas as pd

from labeling_dagster.assets.common import LABEL_TABLES, monthly_asset_args, months_in
from labeling_dagster.assets.label_model import latest_auto_labeler
from labeling_dagster.core.autolabel import plan_reviews
from labeling_dagster.core.labels import Item
from labeling_dagster.core.review_formats import QueueRow, write_exports
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import Warehouse, naive_utc, read_window, replace_window


def latest_rows(conn, window: dg.TimeWindow) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every tier row of the window (in tier order) and, per item, the last tier's row, which holds
    the item's routing outcome."""
    frames = [read_window(conn, table, window).assign(stage=order) for order, table in enumerate(LABEL_TABLES)]
    frames = [frame for frame in frames if len(frame)]
    if not frames:
        return pd.DataFrame(), pd.DataFrame()
    every = pd.concat(frames, ignore_index=True).sort_values(["item_id", "stage"])
    return every, every.groupby("item_id", sort=False).tail(1).set_index("item_id")


def queue_rows(every: pd.DataFrame, queued: pd.DataFrame, texts: pd.Series, definitions: dict[str, str],
               review) -> list[QueueRow]:
    """One QueueRow per queued item, in one pass over the tier rows (not one scan per item)."""
    wanted = set(queued.index)
    history: dict[str, list[dict]] = {}
    best: dict[str, dict] = {}
    for row in every[every["item_id"].isin(wanted)].to_dict("records"):  # sorted by item, then tier order
        labeled = pd.notna(row["label"])
        history.setdefault(row["item_id"], []).append({
            "tier": row["tier"], "provider": row["provider"], "model": row["model"],
            "label": row["label"] if labeled else None,
            "confidence": float(row["confidence"]) if labeled and pd.notna(row["confidence"]) else None,
            "reason": (row["reason"] if labeled else row["failure"]) or "",
        })
        if labeled:
            best[row["item_id"]] = row
    rows = []
    for item_id, reason in zip(queued.index, queued["route_reason"]):
        top = best.get(item_id)
        label = None if top is None else top["label"]
        rows.append(QueueRow.from_mapping({
            "item_id": item_id,
            "text": texts[item_id],
            "candidate_label": label,
            "confidence": None if top is None else top["confidence"],
            "reason": "" if top is None else top["reason"],
            "alternatives": [] if top is None else top["alternatives"],
            "label_definition": definitions.get(label, "") if label else "",
            "tier_answers": history.get(item_id, []),
            "queue_reason": reason,
            "annotators_needed": review.annotators_for(label),
        }))
    return rows


def _review_plan(conn, spec, month_rows: list[QueueRow], queued: pd.DataFrame) -> dict[str, str] | None:
    """With a monthly review budget smaller than the queue: the items people get (active learning), or
    None when they can review the whole queue. The others wait in the queue, unexported."""
    budget = spec.human_review.monthly_review_budget
    if budget is None or len(month_rows) <= budget:
        return None
    labeler = latest_auto_labeler(conn, spec)
    required = [item_id for item_id, reason in zip(queued.index, queued["route_reason"])
                if reason.startswith("always to people") or reason.startswith("label ")]
    pool = [Item(row.item_id, row.text, "") for row in month_rows]
    return plan_reviews(pool, budget, required=required, model=labeler.model if labeler else None,
                        strategy=spec.human_review.review_selection, random_share=spec.human_review.random_share)


def build(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(**monthly_asset_args(partitions), deps=["raw_items", *LABEL_TABLES], kinds={"duckdb", "csv"})
    def review_queue(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """One row per item routed to people: the best model answer so far (candidate label, confidence,
        reason, alternatives), the label's definition, what each tier answered, and why it is queued.
        With human_review.monthly_review_budget smaller than the queue, `selected_for_review` marks the
        items people get (rules first, a random share, then the ones that teach the auto-labeler most);
        the rest wait, marked `waiting`, and are not exported.
        Also written per month as CSV, JSONL, Label Studio tasks and a Ground Truth manifest under the
        project's exports folder, which reviewers open and fill."""
        spec = project.load()
        definitions = {label.name: label.description for label in spec.taxonomy.labels}
        rows, paths = [], {}
        with warehouse.session() as conn:
            for month, window in months_in(context.partition_time_window):
                every, last = latest_rows(conn, window)
                texts = read_window(conn, "raw_items", window).set_index("item_id")["text"]
                queued = last[last["next_step"] == "human"] if len(last) else last
                month_rows = queue_rows(every, queued, texts, definitions, spec.human_review)
                plan = _review_plan(conn, spec, month_rows, queued)
                chosen = [row for row in month_rows if plan is None or row.item_id in plan]
                paths[month] = write_exports(spec.exports_path, month, chosen, spec.taxonomy.names, definitions)
                stamp = naive_utc(window.start)
                rows += [{**row.to_json(), "month": stamp, "selected_for_review": plan is None or row.item_id in plan,
                          "selection": "all" if plan is None else plan.get(row.item_id, "waiting")}
                         for row in month_rows]
            frame = pd.DataFrame(rows)
            if len(frame):
                frame["alternatives"] = frame["alternatives"].map(json.dumps)
                frame["tier_answers"] = frame["tier_answers"].map(json.dumps)
            replace_window(conn, "review_queue", frame, context.partition_time_window)
        reasons = frame["queue_reason"].str.replace(r"[0-9.]+", "N", regex=True).value_counts() if len(frame) else {}
        return dg.MaterializeResult(
            metadata={
                "queued": len(frame),
                "selected_for_review": int(frame["selected_for_review"].sum()) if len(frame) else 0,
                "waiting_over_budget": int((~frame["selected_for_review"].astype(bool)).sum()) if len(frame) else 0,
                "exports": dg.MetadataValue.md(
                    "\n".join(f"- {month}: " + ", ".join(f"[{fmt}]({path})" for fmt, path in files.items())
                              for month, files in paths.items())
                ),
                "why_queued": dg.MetadataValue.md("\n".join(f"- {r}: {n}" for r, n in dict(reasons).items()) or "_none_"),
            }
        )

    return review_queue
