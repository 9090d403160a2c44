"""The auto-labeler and its first tier: the label model of each month (label_model, not partitioned,
trains the newest one; auto_labels resolves the one of its month) and, each month, the items it is
sure enough of (auto_labels), which never reach a paid tier.

A month M is labeled by the model trained on the seed set plus what people settled in the months
before M, never on M's own or later answers: rerunning March after April's reviews are in labels
March exactly as before. A model's version is a hash of its training rows and settings; a version
already stored (row in `label_models` and its file under <project>/.models/) is loaded, not trained
again."""

import hashlib
import json
import pickle
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd

from labeling_dagster.assets.common import WRITER_TAG, items_from, markdown_table, monthly_asset_args, months_in
from labeling_dagster.assets.drift import drift_metadata, recheck
from labeling_dagster.core import autolabel, routing
from labeling_dagster.core.autolabel import AutoLabeler, accept, build_auto_labeler
from labeling_dagster.project import Project
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import Warehouse, append, clear_window, iter_window, naive_utc

MODEL_GROUP = "models"
# Part of every version: bump it when training changes in a way the rows and settings do not show.
TRAINING_SCHEME = 2  # 2: the fixed-sequence threshold and the novelty floor
# build_auto_labeler's settings that the project file does not set, pinned so the version covers them.
FIXED_SETTINGS = {"folds": 5, "seed": 0,
                  "novelty_quantile": autolabel.NOVELTY_QUANTILE}

HUMAN_LABELS = """
    SELECT r.text, c.label FROM review_consensus c JOIN raw_items r USING (month, item_id)
    WHERE c.settled {before} ORDER BY c.month, c.item_id
"""
AGREED_LABELS = """
    SELECT r.text, q.label FROM qa_labels q JOIN raw_items r USING (month, item_id)
    WHERE q.next_step = 'accept' AND starts_with(q.route_reason, '{agrees}') {before}
    ORDER BY q.month, q.item_id
"""


def training_set(conn, project: Project, before: datetime | None = None) -> pd.DataFrame:
    """The human-verified labels known before the month `before` starts (None: every one to date): the
    seed set (drawn at random, so it also measures the threshold: held_out), people's settled consensus
    (training only: those items were routed to people for being hard), and optionally the items QA
    settled by agreeing with the first pass. In a fixed order (seed file, then month and item), so the
    same labels give the same model."""
    seed = project.seed_set
    frame = pd.read_csv(project.resolve(seed.path), dtype=str, keep_default_na=False)
    parts = [pd.DataFrame({"text": frame[seed.text_column], "label": frame[seed.label_column], "held_out": True})]
    where, params = ("", {}) if before is None else ("AND c.month < $before", {"before": naive_utc(before)})
    parts.append(conn.execute(HUMAN_LABELS.format(before=where), params).df().assign(held_out=False))
    if project.auto_label.include_agreed_model_labels:
        where = "" if before is None else "AND q.month < $before"
        agreed = AGREED_LABELS.format(before=where, agrees=routing.QA_AGREES)
        parts.append(conn.execute(agreed, params).df().assign(held_out=False))
    every = pd.concat(parts, ignore_index=True)
    every = every[every["label"].isin(project.taxonomy.names) & (every["text"].str.strip() != "")]
    return every.drop_duplicates("text", keep="first").reset_index(drop=True)


def labeler_settings(project: Project) -> dict:
    settings = project.auto_label
    return {"scheme": TRAINING_SCHEME, "features": settings.features,
            "target_accuracy": settings.target_accuracy or project.quality.target_accuracy,
            "level": 1 - project.quality.delta,  # the certificate's confidence, as every other stage's
            "min_training_size": settings.min_training_size, "min_count": settings.min_count, "C": autolabel.DEFAULT_C,
            "embedding_weight": autolabel.EMBEDDING_WEIGHT, **FIXED_SETTINGS}


def labeler_version(data: pd.DataFrame, settings: dict) -> str:
    """A hash of the training rows (text, label, held out; in order, which the folds depend on) and the
    settings: the same labels and settings give the same version, any change a new one."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for text, label, held_out in zip(data["text"], data["label"], data["held_out"]):
        digest.update(f"{label}\t{int(bool(held_out))}\t{text}\n".encode())
    return f"autolabel-{digest.hexdigest()[:16]}"


def model_path(project: Project, version: str) -> Path:
    return project.root / ".models" / f"label_model-{version}.pkl"


def stored_auto_labeler(conn, project: Project, version: str) -> AutoLabeler | None:
    """The model of `version` when it is stored: listed in label_models and its file on disk."""
    row = conn.execute("SELECT path FROM label_models WHERE version = ? LIMIT 1", [version]).fetchone()
    if row is None or not Path(row[0]).exists():
        return None
    with open(row[0], "rb") as handle:
        labeler = pickle.load(handle)
    return labeler if labeler.model.version == version else None


def ensure_auto_labeler(conn, project: Project, data: pd.DataFrame) -> tuple[AutoLabeler, dict]:
    """The auto-labeler trained on `data` (training_set): loaded when its version is stored, else
    trained, pickled under <project>/.models/ and listed in label_models. Also returns what happened:
    version, path, trained (False: reused), training rows."""
    settings = labeler_settings(project)
    version = labeler_version(data, settings)
    path = model_path(project, version)
    facts = {"version": version, "path": str(path), "human_labels": len(data),
             "held_out_labels": int(data["held_out"].sum())}
    stored = stored_auto_labeler(conn, project, version)
    if stored is not None:
        return stored, {**facts, "trained": False}
    labeler = build_auto_labeler(
        data["text"].tolist(), data["label"].tolist(), features=settings["features"],
        target_accuracy=settings["target_accuracy"], held_out=data["held_out"].tolist(),
        min_training_size=settings["min_training_size"], min_count=settings["min_count"], level=settings["level"],
        **FIXED_SETTINGS,
    )
    labeler.model.version = version  # one version everywhere: label_models, auto_labels rows, accept reasons
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as handle:
        pickle.dump(labeler, handle)
    temporary.replace(path)
    info = labeler.metadata()
    conn.execute("DELETE FROM label_models WHERE version = ?", [version])
    row = {**info, "novelty_floor": labeler.model.novelty_floor,
           "trained_at": datetime.now(timezone.utc).replace(tzinfo=None), "path": str(path),
           "held_out": facts["held_out_labels"], "curve": json.dumps([vars(p) for p in labeler.curve])}
    incoming = pd.DataFrame([row])  # noqa: F841 (read by name in the SQL below)
    conn.execute("INSERT INTO label_models BY NAME SELECT * FROM incoming")
    return labeler, {**facts, "trained": True}


def month_auto_labeler(conn, project: Project, month_start: datetime) -> tuple[AutoLabeler, dict]:
    """The auto-labeler of the month starting at `month_start`: trained on the seed set and the labels
    people settled in earlier months only (loaded when already stored, else trained now)."""
    return ensure_auto_labeler(conn, project, training_set(conn, project, before=month_start))


def auto_accepts(labeler: AutoLabeler, items: list, spec: Project, probabilities=None):
    """What the auto-labeler accepts of `items`, as production and the golden path both ask it: its
    certified threshold and novelty floor (core.autolabel.accept), minus the items a rule reserves for
    people (always_human_when: the first pass gives them a candidate label and routes them there) and
    the answers whose label always goes to people (always_human_labels). Returns accept()'s result,
    item id -> accepted answer, and item id -> why an item the model was sure of was passed on."""
    result = accept(labeler.model, labeler.choice.threshold, items, probabilities)
    taken = {answer.item_id: answer for answer in result.accepted}
    passed_on = {item.item_id: why for item in items
                 if (why := routing.forced_human(spec.routing, item.text, item.metadata))}
    for answer in result.accepted:
        if answer.label in spec.routing.always_human_labels:
            passed_on.setdefault(answer.item_id, f"label {answer.label} always goes to people: the first pass gives "
                                                 "a candidate and routes it there")
    for item_id in passed_on:
        taken.pop(item_id, None)
    return result, taken, passed_on


def _not_taken(labeler: AutoLabeler, result, item_id: str) -> str:
    """Why the auto-labeler passed an item on to the first pass."""
    novel = result.novel.get(item_id)
    if novel:
        return novel
    if labeler.choice.threshold is None:
        return f"auto-labeler off: {labeler.choice.reason}"
    return f"below the auto-label threshold {labeler.choice.threshold:.3f}"


def build_label_model() -> dg.AssetsDefinition:
    @dg.asset(group_name=MODEL_GROUP, pool="warehouse", op_tags={WRITER_TAG: "1"}, kinds={"scikitlearn", "duckdb"})
    def label_model(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """The newest auto-labeler: trained (cross-fitted) on the seed set and every human-verified label
        to date, which is the model of the next month to label, with the acceptance threshold chosen on
        held-out human labels so the accepted items meet auto_label.target_accuracy (default
        quality.target_accuracy) with probability 1 - quality.delta (a lower bound,
        not a raw probability), the coverage it gives, and its validation curve. Versioned by a hash of
        its training rows and settings; a version already stored is reused, not trained again
        (`trained: false`). Stored under <project>/.models/ and listed in `label_models`, the registry
        from which auto_labels takes each month's own version (training an earlier month's when a
        backfill needs it). Below auto_label.min_training_size it accepts nothing and says why."""
        spec = project.load()
        if not spec.auto_label.enabled:
            return dg.MaterializeResult(metadata={"enabled": False})
        with warehouse.session() as conn:
            labeler, facts = ensure_auto_labeler(conn, spec, training_set(conn, spec))
        if not facts["trained"]:
            context.log.info(f"label model {facts['version']} is already stored; reused, not trained again")
        info = labeler.metadata()
        curve = pd.DataFrame([vars(point) for point in labeler.curve])
        return dg.MaterializeResult(
            metadata={
                **{key: value.item() if hasattr(value, "item") else value for key, value in info.items() if value is not None},
                **facts,
                "validation_curve": markdown_table(curve.round(4) if len(curve) else curve),
            }
        )

    return label_model


def build_auto_labels(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(**monthly_asset_args(partitions), deps=["raw_items", "label_model", "certificates"], kinds={"duckdb"})
    def auto_labels(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """One row per item of the month when the auto-labeler is on: accepted (next_step accept) when
        its confidence reaches the month's label model's threshold, otherwise passed on to the first
        pass. Accepted items never reach a paid tier.
        The month's model is the one trained on the seed set plus the labels people settled (and, with
        include_agreed_model_labels, QA agreed) in months strictly before this partition: taken from the
        `label_models` registry that label_model fills when its version is stored, trained here when not
        (a backfill of an earlier month), so rerunning a month reproduces its labels whatever was
        learned since. Reading earlier months' review_consensus is the project's one exception to
        Dagster's no-cycle rule: human_reviews is downstream of auto_labels, so that dependency cannot
        be declared; it is pinned to months before the partition, never the partition itself (a
        backfill over several months reads the earlier months' reviews as last ingested).
        Metadata: the model version (and whether it was trained in this step), the share auto-labeled,
        its estimated accuracy, and the human reviews and dollars that share saves."""
        spec = project.load()
        if not spec.auto_label.enabled:
            return dg.MaterializeResult(metadata={"enabled": False})
        rows, items_total, versions, drifts = [], 0, {}, {}
        with warehouse.session() as conn:
            clear_window(conn, "auto_labels", context.partition_time_window)
            for month, window in months_in(context.partition_time_window):
                labeler, facts = month_auto_labeler(conn, spec, window.start)
                versions[month] = facts
                certified = conn.execute("SELECT prompt_version FROM certificates WHERE month = ? AND stage = 'auto_label'",
                                         [naive_utc(window.start)]).fetchone()
                if certified and certified[0] != facts["version"]:
                    # the tiers' certificates were measured on what this model's predecessor left them
                    raise dg.Failure(
                        f"{month}: the month's certificates were measured with auto-labeler {certified[0]}, but its "
                        f"auto-labeler is now {facts['version']} (reviews of earlier months came in since). "
                        "Materialize golden_labels (with certificates) for the month again first; stored calls are "
                        "reused.", allow_retries=False)
                context.log.info(f"{month}: label model {facts['version']} "
                                 f"({'trained now' if facts['trained'] else 'stored, reused'}) on {facts['human_labels']} labels")
                gate = routing.StageGate("auto_label", "certified", None, spec.quality.audit_share,
                                         spec.taxonomy.none_label)
                seen: tuple[list[float], list[str]] = ([], [])  # every item's top probability and label, for drift
                for page in iter_window(conn, "raw_items", window):
                    items = items_from(page)
                    probabilities = labeler.model.predict_proba([item.text for item in items])
                    result, taken, passed_on = auto_accepts(labeler, items, spec, probabilities)
                    seen[0].extend(float(p) for p in probabilities.max(axis=1))
                    seen[1].extend(labeler.model.classes[k] for k in probabilities.argmax(axis=1))
                    for item in items:
                        answer = taken.get(item.item_id)
                        route = gate.accept(item.item_id, answer.label, "auto-labeled") if answer else None
                        rows.append({
                            "month": naive_utc(window.start), "item_id": item.item_id, "tier": "auto_label",
                            "provider": "local", "model": "label_model", "prompt_version": labeler.model.version,
                            "label": answer.label if answer else None,
                            "confidence": answer.confidence if answer else None,
                            "raw_confidence": answer.confidence if answer else None,
                            "signal": answer.confidence if answer else None,
                            "reason": answer.reason if answer else None,
                            "alternatives": json.dumps(answer.alternatives) if answer else None,
                            "reused": False,
                            "next_step": route.next_step if route else "first_pass",
                            "audited": bool(route and route.audited),
                            "route_reason": route.reason if route else passed_on.get(item.item_id) or _not_taken(
                                labeler, result, item.item_id),
                        })
                    items_total += len(items)
                    append(conn, "auto_labels", pd.DataFrame(rows))
                    rows = []
                drifts[month] = recheck(conn, spec, "auto_label", "auto_labels", window, seen)
            accepted_total, audits = conn.execute(  # after the recheck, which may send accepted items to people
                "SELECT COUNT(*) FILTER (WHERE next_step = 'accept'), COUNT(*) FILTER (WHERE audited) FROM auto_labels "
                "WHERE month >= ? AND month < ?",
                [naive_utc(context.partition_time_window.start), naive_utc(context.partition_time_window.end)],
            ).fetchone()
        review = spec.human_review
        saved_reviews = accepted_total * review.annotators_per_item
        single = len(versions) == 1
        return dg.MaterializeResult(
            metadata={
                "model_version": labeler.model.version if single else json.dumps({m: f["version"] for m, f in versions.items()}),
                "model_trained": versions[month]["trained"] if single else json.dumps(
                    {m: f["trained"] for m, f in versions.items()}),
                "training_labels": versions[month]["human_labels"] if single else json.dumps(
                    {m: f["human_labels"] for m, f in versions.items()}),
                "threshold": float(labeler.choice.threshold) if labeler.choice.threshold is not None else "none",
                "items": items_total,
                "auto_labeled": accepted_total,
                "audited": audits,  # accepted, sent to people as the audit sample (quality.audit_share)
                "share_auto_labeled": round(accepted_total / items_total, 4) if items_total else 0.0,
                "estimated_accuracy": float(labeler.choice.estimated_accuracy or 0) or "n/a",
                "accuracy_lower_bound": float(labeler.choice.lower_bound or 0) or "n/a",
                "human_reviews_saved": saved_reviews,
                "human_usd_saved": round(saved_reviews * review.usd_per_review, 2),
                "reason": labeler.choice.reason,
                **drift_metadata(drifts),
            }
        )

    return auto_labels
