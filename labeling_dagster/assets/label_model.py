"""The auto-labeler and its first tier: a model trained on every human-verified label to date
(label_model, not partitioned) and, each month, the items it is sure enough of (auto_labels), which
never reach a paid tier."""

import json
import pickle
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd

from labeling_dagster.assets.common import WRITER_TAG, items_from, markdown_table, monthly_asset_args, months_in
from labeling_dagster.core.autolabel import AutoLabeler, accept, build_auto_labeler
from labeling_dagster.project import Project
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import Warehouse, append, clear_window, iter_window, naive_utc

MODEL_GROUP = "models"

HUMAN_LABELS = """
    SELECT r.text, c.label FROM review_consensus c JOIN raw_items r USING (month, item_id) WHERE c.settled
"""
AGREED_LABELS = """
    SELECT r.text, q.label FROM qa_labels q JOIN raw_items r USING (month, item_id)
    WHERE q.next_step = 'accept' AND q.route_reason = 'QA agrees with the first pass'
"""


def training_set(conn, project: Project) -> pd.DataFrame:
    """Every human-verified label to date: the seed set (drawn at random, so it also measures the
    threshold: held_out), people's settled consensus (training only: those items were routed to people
    for being hard), and optionally the items QA settled by agreeing with the first pass."""
    seed = project.seed_set
    frame = pd.read_csv(project.resolve(seed.path), dtype=str, keep_default_na=False)
    parts = [pd.DataFrame({"text": frame[seed.text_column], "label": frame[seed.label_column], "held_out": True})]
    parts.append(conn.execute(HUMAN_LABELS).df().assign(held_out=False))
    if project.auto_label.include_agreed_model_labels:
        parts.append(conn.execute(AGREED_LABELS).df().assign(held_out=False))
    every = pd.concat(parts, ignore_index=True)
    every = every[every["label"].isin(project.taxonomy.names) & (every["text"].str.strip() != "")]
    return every.drop_duplicates("text", keep="first").reset_index(drop=True)


def latest_auto_labeler(conn, project: Project) -> AutoLabeler | None:
    row = conn.execute("SELECT path FROM label_models ORDER BY trained_at DESC LIMIT 1").fetchone()
    if row is None or not Path(row[0]).exists():
        return None
    with open(row[0], "rb") as handle:
        return pickle.load(handle)


def build_label_model() -> dg.AssetsDefinition:
    @dg.asset(group_name=MODEL_GROUP, pool="warehouse", op_tags={WRITER_TAG: "1"}, kinds={"scikitlearn", "duckdb"})
    def label_model(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """The auto-labeler, versioned by its training data and settings: trained (cross-fitted) on every
        human-verified label to date, with the acceptance threshold chosen on held-out human labels so
        the accepted items meet auto_label.target_accuracy (a 95% lower bound, not a raw probability),
        the coverage it gives, and its validation curve. Stored under <project>/.models/ and listed in
        `label_models`. Below auto_label.min_training_size it accepts nothing and says why."""
        spec = project.load()
        settings = spec.auto_label
        if not settings.enabled:
            return dg.MaterializeResult(metadata={"enabled": False})
        with warehouse.session() as conn:
            data = training_set(conn, spec)
            labeler = build_auto_labeler(
                data["text"].tolist(), data["label"].tolist(), features=settings.features,
                target_accuracy=settings.target_accuracy, held_out=data["held_out"].tolist(),
                min_training_size=settings.min_training_size,
            )
            info = labeler.metadata()
            path = spec.root / ".models" / f"label_model-{info['version']}.pkl"
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            with open(temporary, "wb") as handle:
                pickle.dump(labeler, handle)
            temporary.replace(path)
            conn.execute("DELETE FROM label_models WHERE version = ?", [info["version"]])
            row = {**info, "trained_at": datetime.now(timezone.utc).replace(tzinfo=None), "path": str(path),
                   "held_out": int(data["held_out"].sum()), "curve": json.dumps([vars(p) for p in labeler.curve])}
            incoming = pd.DataFrame([row])  # noqa: F841 (read by name in the SQL below)
            conn.execute("INSERT INTO label_models BY NAME SELECT * FROM incoming")
        curve = pd.DataFrame([vars(point) for point in labeler.curve])
        return dg.MaterializeResult(
            metadata={
                **{key: value.item() if hasattr(value, "item") else value for key, value in info.items() if value is not None},
                "human_labels": len(data),
                "held_out_labels": int(data["held_out"].sum()),
                "path": str(path),
                "validation_curve": markdown_table(curve.round(4) if len(curve) else curve),
            }
        )

    return label_model


def build_auto_labels(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(**monthly_asset_args(partitions), deps=["raw_items", "label_model"], kinds={"duckdb"})
    def auto_labels(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """One row per item of the month when the auto-labeler is on: accepted (next_step accept) when
        its confidence reaches the label model's threshold, otherwise passed on to the first pass. Accepted items never reach a paid tier. Metadata: the share auto-labeled, its
        estimated accuracy, and the human reviews and dollars that share saves."""
        spec = project.load()
        if not spec.auto_label.enabled:
            return dg.MaterializeResult(metadata={"enabled": False})
        rows, accepted_total, items_total = [], 0, 0
        with warehouse.session() as conn:
            labeler = latest_auto_labeler(conn, spec)
            if labeler is None:
                raise dg.Failure("auto_label.enabled is set but no label model is stored; materialize `label_model` first")
            pages = ((month, window, page) for month, window in months_in(context.partition_time_window)
                     for page in iter_window(conn, "raw_items", window))
            clear_window(conn, "auto_labels", context.partition_time_window)
            for month, window, page in pages:
                items = items_from(page)
                result = accept(labeler.model, labeler.choice.threshold, items)
                taken = {answer.item_id: answer for answer in result.accepted}
                for item in items:
                    answer = taken.get(item.item_id)
                    rows.append({
                        "month": naive_utc(window.start), "item_id": item.item_id, "tier": "auto_label",
                        "provider": "local", "model": "label_model", "prompt_version": labeler.model.version,
                        "label": answer.label if answer else None,
                        "confidence": answer.confidence if answer else None,
                        "raw_confidence": answer.confidence if answer else None,
                        "reason": answer.reason if answer else None,
                        "alternatives": json.dumps(answer.alternatives) if answer else None,
                        "reused": False,
                        "next_step": "accept" if answer else "first_pass",
                        "route_reason": "auto-labeled" if answer else (
                            f"below the auto-label threshold {labeler.choice.threshold:.3f}"
                            if labeler.choice.threshold is not None else f"auto-labeler off: {labeler.choice.reason}"),
                    })
                accepted_total += len(taken)
                items_total += len(items)
                append(conn, "auto_labels", pd.DataFrame(rows))
                rows = []
        review = spec.human_review
        saved_reviews = accepted_total * review.annotators_per_item
        return dg.MaterializeResult(
            metadata={
                "model_version": labeler.model.version,
                "threshold": float(labeler.choice.threshold) if labeler.choice.threshold is not None else "none",
                "items": items_total,
                "auto_labeled": accepted_total,
                "share_auto_labeled": round(accepted_total / items_total, 4) if items_total else 0.0,
                "estimated_accuracy": float(labeler.choice.estimated_accuracy or 0) or "n/a",
                "accuracy_lower_bound": float(labeler.choice.lower_bound or 0) or "n/a",
                "human_reviews_saved": saved_reviews,
                "human_usd_saved": round(saved_reviews * review.usd_per_review, 2),
                "reason": labeler.choice.reason,
            }
        )

    return auto_labels

