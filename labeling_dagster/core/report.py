"""The monthly quality report from the golden run: per-tier accuracy, per-label recall, confusion pairs,
agreement between tiers and with people, calibration error, and the bands the recommender proposes.
Shared by the quality_report asset and `labeling recommend`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from labeling_dagster.core.metrics import agreement_table, confusion_pairs, label_scores, tier_accuracy
from labeling_dagster.core.recommend import GoldenAnswers, Recommendation, recommend_bands, tier_costs
from labeling_dagster.project import Project

ROLES = ("first_pass", "qa", "adjudication")


def golden_answers_frame(golden: pd.DataFrame) -> pd.DataFrame:
    """golden_labels rows (one per item and tier) -> one row per golden item, as GoldenAnswers reads it."""
    wide = golden.drop_duplicates("item_id")[["item_id", "gold", "forced_human"]].set_index("item_id")
    for role in ROLES:
        part = golden[golden["role"] == role].set_index("item_id")
        if len(part):
            wide[f"{role}_label"] = part["label"]
            wide[f"{role}_confidence"] = part["confidence"]
    return wide.reset_index()


def recommend(
    project: Project,
    golden: pd.DataFrame,
    token_sizes: Mapping[str, tuple[int, ...]],
    *,
    target_accuracy: float | None = None,
    monthly_budget_usd: float | None = None,
    items_per_month: int | None = None,
) -> Recommendation:
    """Bands for a target accuracy (default: quality.target_accuracy) or a monthly budget."""
    if monthly_budget_usd is None and target_accuracy is None:
        target_accuracy = project.quality.target_accuracy
    return recommend_bands(
        GoldenAnswers.from_frame(golden_answers_frame(golden)),
        tier_costs(project, token_sizes),
        target_accuracy=target_accuracy,
        monthly_budget_usd=monthly_budget_usd,
        items_per_month=items_per_month,
        routing=project.routing,
    )


@dataclass
class QualityReport:
    rows: list[dict]
    accuracy: pd.DataFrame
    confusion: pd.DataFrame
    agreement: pd.DataFrame
    recommendation: Recommendation | None
    recommendation_note: str


def build_report(
    project: Project,
    golden: pd.DataFrame,
    calibrations: pd.DataFrame,
    token_sizes: Mapping[str, tuple[int, ...]],
    people: Mapping[str, str] | None = None,
    month_labels: Mapping[str, Mapping[str, str]] | None = None,
    items_per_month: int | None = None,
) -> QualityReport:
    """`golden`: golden_labels rows of one month; `people`: item -> consensus label of this month's
    reviews; `month_labels`: tier -> {item: label} of this month's items (for agreement with people)."""
    rows: list[dict] = []
    gold = dict(zip(golden["item_id"], golden["gold"]))
    by_tier = {
        tier: dict(zip(part.loc[part["label"].notna(), "item_id"], part.loc[part["label"].notna(), "label"]))
        for tier, part in golden.groupby("tier", sort=False)
    }
    accuracy = tier_accuracy(by_tier, gold)
    for row in accuracy.to_dict("records"):
        rows.append({"section": "accuracy", "tier": row["tier"], "name": "accuracy", "value": row["accuracy"],
                     "detail": json.dumps({k: row[k] for k in ("golden_items", "labeled", "correct", "coverage")})})
    for row in calibrations.to_dict("records"):
        for name in ("ece_raw", "ece_calibrated"):
            rows.append({"section": "calibration", "tier": row["tier"], "name": name, "value": row[name],
                         "detail": json.dumps({"method": row["method"], "version": row["version"]})})
    confusion = []
    for tier, labels in by_tier.items():
        scores = label_scores(labels, gold, project.taxonomy.names)
        for score in scores.to_dict("records"):
            if score["support"]:
                rows.append({"section": "label_recall", "tier": tier, "name": str(score["label"]), "value": score["recall"],
                             "detail": json.dumps({"precision": score["precision"], "support": int(score["support"])})})
        pairs = confusion_pairs(labels, gold, top=5).assign(tier=tier)
        confusion.append(pairs)
        for pair in pairs.to_dict("records"):
            rows.append({"section": "confusion", "tier": tier, "name": f"{pair['gold']} -> {pair['predicted']}",
                         "value": pair["count"], "detail": json.dumps({"share_of_gold": pair["share_of_gold"]})})
    agreement = agreement_table(by_tier).assign(on="golden")
    if people:
        with_people = agreement_table(dict(month_labels or {}), people=people)
        with_people = with_people[with_people["second"] == "people"].assign(on="reviewed items")
        agreement = pd.concat([agreement, with_people], ignore_index=True)
    for pair in agreement.to_dict("records"):
        rows.append({"section": "agreement", "tier": pair["first"], "name": f"{pair['second']} ({pair['on']})",
                     "value": pair["rate"], "detail": json.dumps({"items": pair["items"], "kappa": pair["kappa"]})})
    recommendation, note = None, ""
    try:
        recommendation = recommend(project, golden, token_sizes, items_per_month=items_per_month)
    except ValueError as exc:
        note = f"no recommendation: {exc}"
    if recommendation is not None:
        for name, value in recommendation.outcome.bands().items():
            rows.append({"section": "recommended_bands", "tier": "", "name": name, "value": value,
                         "detail": json.dumps({"current": getattr(project.routing, name)})})
        for label, outcome in (("recommended", recommendation.outcome), ("current", recommendation.current)):
            rows.append({"section": label, "tier": "", "name": "expected_accuracy", "value": outcome.expected_accuracy,
                         "detail": json.dumps(outcome.as_json(), default=str)})
        if recommendation.held_out is not None:
            rows.append({"section": "recommended", "tier": "", "name": "held_out_accuracy",
                         "value": recommendation.held_out.accuracy_held_out,
                         "detail": json.dumps(recommendation.held_out.as_json())})
        note = recommendation.reason
    confusion = [frame for frame in confusion if len(frame)]  # a tier with no golden answer adds no cell
    return QualityReport(rows, accuracy, pd.concat(confusion, ignore_index=True) if confusion else pd.DataFrame(),
                         agreement, recommendation, note)
