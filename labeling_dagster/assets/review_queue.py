"""Stage 5: the items no model settled, with everything a reviewer needs, exported as files."""

import json

import dagster as dg
import pandas as pd

from labeling_dagster.assets.common import monthly_asset_args, months_in
from labeling_dagster.core.review_formats import QueueRow, write_exports
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import Warehouse, naive_utc, read_window, replace_window

TIER_TABLES = ["first_pass_labels", "qa_labels", "adjudicated_labels"]


def latest_rows(conn, window: dg.TimeWindow) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every tier row of the window (in tier order) and, per item, the last tier's row, which holds
    the item's routing outcome."""
    frames = [read_window(conn, table, window).assign(stage=order) for order, table in enumerate(TIER_TABLES)]
    frames = [frame for frame in frames if len(frame)]
    if not frames:
        return pd.DataFrame(), pd.DataFrame()
    every = pd.concat(frames, ignore_index=True).sort_values(["item_id", "stage"])
    return every, every.groupby("item_id", sort=False).tail(1).set_index("item_id")


def build(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(**monthly_asset_args(partitions), deps=["raw_items", *TIER_TABLES], kinds={"duckdb", "csv"})
    def review_queue(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """One row per item routed to people: the best model answer so far (candidate label, confidence,
        reason, alternatives), the label's definition, what each tier answered, and why it is queued.
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
                month_rows = []
                for item_id, final in queued.iterrows():
                    history = every[every["item_id"] == item_id]
                    answered = history[history["label"].notna()]
                    best = answered.iloc[-1] if len(answered) else None
                    month_rows.append(QueueRow.from_mapping(dict(
                        item_id=item_id,
                        text=texts[item_id],
                        candidate_label=None if best is None else best["label"],
                        confidence=None if best is None else float(best["confidence"]),
                        reason="" if best is None else best["reason"],
                        alternatives=[] if best is None else best["alternatives"],
                        label_definition="" if best is None else definitions.get(best["label"], ""),
                        tier_answers=[
                            {"tier": r["tier"], "provider": r["provider"], "model": r["model"],
                             "label": None if pd.isna(r["label"]) else r["label"],
                             "confidence": None if pd.isna(r["confidence"]) else float(r["confidence"]),
                             "reason": (r["reason"] if pd.notna(r["label"]) else r["failure"]) or ""}
                            for r in history.to_dict("records")
                        ],
                        queue_reason=final["route_reason"],
                        annotators_needed=spec.human_review.annotators_for(None if best is None else best["label"]),
                    )))
                paths[month] = write_exports(spec.exports_path, month, month_rows, spec.taxonomy.names, definitions)
                stamp = naive_utc(window.start)
                rows += [{**row.to_json(), "month": stamp} for row in month_rows]
            frame = pd.DataFrame(rows)
            if len(frame):
                frame["alternatives"] = frame["alternatives"].map(json.dumps)
                frame["tier_answers"] = frame["tier_answers"].map(json.dumps)
            replace_window(conn, "review_queue", frame, context.partition_time_window)
        reasons = frame["queue_reason"].str.replace(r"[0-9.]+", "N", regex=True).value_counts() if len(frame) else {}
        return dg.MaterializeResult(
            metadata={
                "queued": len(frame),
                "exports": dg.MetadataValue.md(
                    "\n".join(f"- {month}: " + ", ".join(f"[{fmt}]({path})" for fmt, path in files.items())
                              for month, files in paths.items())
                ),
                "why_queued": dg.MetadataValue.md("\n".join(f"- {r}: {n}" for r, n in dict(reasons).items()) or "_none_"),
            }
        )

    return review_queue
