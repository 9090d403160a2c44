"""The monthly quality report. From the golden run: per-tier accuracy, per-label recall, confusion
pairs, agreement between tiers and with people, calibration error, and the bands the recommender
proposes (shared by the quality_report asset and `labeling recommend`). From the month itself: each
stage's certificate, what its accepted labels turned out to be worth (its audit sample checked by
people, the golden held-out items it accepted), and each label's prevalence corrected by the audit
(shared by the quality_report asset, its check and `labeling summary`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from labeling_dagster.core.certify import realized
from labeling_dagster.core.metrics import agreement_table, confusion_pairs, label_scores, tier_accuracy
from labeling_dagster.core.prevalence import Prevalence, prevalence
from labeling_dagster.core.recommend import Recommendation, recommend
from labeling_dagster.project import Project

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
        held = recommendation.held_out
        if held is not None:  # first: what a new month can expect
            for name, value in (("held_out_accuracy_people_counted_right", held.accuracy_held_out),
                                ("held_out_accepted_accuracy", held.accepted_accuracy_held_out)):
                rows.append({"section": "recommended", "tier": "", "name": name, "value": value,
                             "detail": json.dumps(held.as_json())})
        for label, outcome in (("recommended", recommendation.outcome), ("current", recommendation.current)):
            for name, value in (("expected_accuracy_people_counted_right", outcome.expected_accuracy),
                                ("accepted_accuracy", outcome.accepted_accuracy)):
                rows.append({"section": label, "tier": "", "name": name, "value": value,
                             "detail": json.dumps(outcome.as_json(), default=str)})
        note = recommendation.reason
    confusion = [frame for frame in confusion if len(frame)]  # a tier with no golden answer adds no cell
    return QualityReport(rows, accuracy, pd.concat(confusion, ignore_index=True) if confusion else pd.DataFrame(),
                         agreement, recommendation, note)


# The stages that accept labels, in the order an item meets them (the tier tables' order).
STAGES = ("auto_label", "first_pass", "qa", "adjudication")
AUDIT, GOLDEN_HELD_OUT = "audit", "golden_held_out"


@dataclass(frozen=True)
class StageAccuracy:
    """What one stage's accepted labels turned out to be worth this month, with the exact 95% interval.
    `source` audit: its audit sample (a uniform draw of what it accepted) against people's settled
    answers, `sampled` audited and `checked` answered; golden_held_out: the golden items outside the
    golden run's sample that it accepted. `proved_below`: even the upper bound at 1 - delta is below
    the target."""

    stage: str
    source: str
    sampled: int
    checked: int
    correct: int
    accuracy: float | None
    low: float | None
    high: float | None
    target: float
    proved_below: bool

    @property
    def status(self) -> str:
        """met / missed (the realized accuracy is below the target) / pending (nothing checked yet)."""
        if not self.checked:
            return "pending"
        return "missed" if self.accuracy < self.target else "met"

    def describe(self) -> str:
        """E.g. "first_pass audit: 80.0% right [44.4%, 97.5%] (10 of 12 audited items answered), target 95.0%"."""
        what = f"{self.stage} {'audit' if self.source == AUDIT else 'golden held-out items'}"
        seen = (f"{self.checked} of {self.sampled} audited items answered" if self.source == AUDIT
                else f"{self.checked} item{'s' * (self.checked != 1)}")
        if not self.checked:
            return f"{what}: nothing checked yet ({seen})"
        proved = "; below even at the upper bound (1 - delta)" if self.proved_below else ""
        return (f"{what}: {self.accuracy:.1%} right [{self.low:.1%}, {self.high:.1%}] ({seen}), "
                f"target {self.target:.1%}{proved}")

    def as_json(self) -> dict:
        return {"source": self.source, "sampled": self.sampled, "checked": self.checked, "correct": self.correct,
                "low": self.low, "high": self.high, "target": self.target, "status": self.status,
                "proved_below": self.proved_below}


def stage_accuracy(checked: pd.DataFrame, stages: Sequence[str], *, source: str, targets: Mapping[str, float],
                   delta: float) -> list[StageAccuracy]:
    """Per stage of `stages` (those seen in `checked` added), from one row per item with `stage`,
    `label` (what the stage accepted) and `truth` (people's or the golden label; missing: no answer yet)."""
    seen = set(checked["stage"]) if len(checked) else set()
    out = []
    for stage in [s for s in STAGES if s in seen or s in stages]:
        part = checked[checked["stage"] == stage] if len(checked) else checked
        answered = part[part["truth"].notna()] if len(part) else part
        found = realized(list(answered["label"] == answered["truth"]) if len(answered) else [],
                         target=targets[stage], delta=delta)
        out.append(StageAccuracy(stage, source, len(part), found["checked"], found["correct"], found["accuracy"],
                                 found["low"], found["high"], targets[stage], found["proved_below_target"]))
    return out


@dataclass
class MonthEvidence:
    """What a month's audit report reads (small: counts, the audited items, the golden ones).
    `certificates`: rows of the certificates table; `stage_labels`: stage, label, items accepted (its
    audited ones included); `people_labels`: label -> items people decided that no stage accepted;
    `pending`: items still waiting for people (no label); `audit`: stage, item_id, label, truth (people's
    settled answer, missing while unanswered) of the audited items; `golden`: stage, label, truth of the
    accepted golden held-out items."""

    certificates: pd.DataFrame
    stage_labels: pd.DataFrame
    people_labels: Mapping[str, int]
    pending: int
    audit: pd.DataFrame
    golden: pd.DataFrame

    def accepted(self) -> dict[str, int]:
        if not len(self.stage_labels):
            return {}
        return {stage: int(n) for stage, n in self.stage_labels.groupby("stage")["items"].sum().items()}


@dataclass(frozen=True)
class Finding:
    """A reason the month's check warns: a stage's accepted labels below target (`kind` missed), or a
    stage whose month drifted and whose recheck has not come back (recheck_pending)."""

    month: str
    stage: str
    kind: str
    text: str


@dataclass
class AuditReport:
    rows: list[dict]
    accuracy: list[StageAccuracy]
    prevalence: list[Prevalence]
    findings: list[Finding] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)


def _drift(raw) -> dict | None:
    return json.loads(raw) if isinstance(raw, str) and raw else None


def _pct(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.1%}"


def _findings(month: str, accuracy: list[StageAccuracy], certificates: pd.DataFrame,
              accepted: Mapping[str, int]) -> list[Finding]:
    """Stages below target; then stages whose month drifted, that accepted items, and whose recheck
    (the raised audit share) has not been answered in full."""
    found = [Finding(month, a.stage, "missed", f"{month} {a.describe()}") for a in accuracy if a.status == "missed"]
    audits = {a.stage: a for a in accuracy if a.source == AUDIT}
    for cert in certificates.to_dict("records"):
        if not cert.get("recheck") or not accepted.get(cert["stage"]):
            continue
        audit = audits.get(cert["stage"])
        sampled, answered = (audit.sampled, audit.checked) if audit else (0, 0)
        if sampled and answered == sampled:
            continue
        why = (_drift(cert.get("drift")) or {}).get("reason") or "drift detected"
        waiting = f"{answered} of {sampled} audited items answered" if sampled else "no item drawn for it yet"
        found.append(Finding(month, cert["stage"], "recheck_pending", f"{month} {cert['stage']} drifted from its "
                             f"calibration data ({why}); recheck pending: {waiting}"))
    return found


def _drift_cell(cert: Mapping, drift: dict | None) -> str:
    if drift is None:
        return "not tested"
    if not drift.get("shifted"):
        return "no"
    return "yes, recheck" if cert.get("recheck") else "yes"


def _certificates_markdown(certificates: pd.DataFrame) -> list[str]:
    """The certificates as a markdown table, then a sentence per stage whose month drifted."""
    if not len(certificates):
        return ["_no certificates this month (no golden run, or quality.gate: bands)_"]
    rows, notes = [], []
    for cert in certificates.to_dict("records"):
        drift = _drift(cert.get("drift"))
        rows.append({
            "stage": cert["stage"], "tier": cert.get("tier"), "signal": cert.get("signal"),
            "threshold": "none" if pd.isna(cert.get("threshold")) else f"{cert['threshold']:g}",
            "items": cert.get("items"), "accepted": cert.get("accepted"), "bound": _pct(cert.get("bound")),
            "target": _pct(cert.get("target")), "passed": "yes" if cert.get("passed") else "no",
            "audit share": _pct(cert.get("audit_share")), "drift": _drift_cell(cert, drift), "reason": cert.get("reason"),
        })
        if drift and drift.get("shifted"):
            notes.append(f"**{cert['stage']} drifted this month** from its calibration data: {drift.get('reason')}. "
                         f"Its audit share is {_pct(cert.get('audit_share'))}"
                         + (" (raised for the recheck)." if cert.get("recheck") else "."))
    return [pd.DataFrame(rows).to_markdown(index=False), *notes]


def _audit_markdown(accuracy: list[StageAccuracy], findings: list[Finding]) -> list[str]:
    """The month's verdict, the rechecks still waiting, and the table of realized accuracies."""
    missed = [f"- {f.text}" for f in findings if f.kind == "missed"]
    if missed:
        verdict = "**MISSED: accepted labels below target this month**\n\n" + "\n".join(missed)
    elif any(a.checked for a in accuracy):
        verdict = "Accepted labels meet the target where checked."
    else:
        verdict = "_Nothing checked yet: no answered audit, no golden held-out item accepted._"
    table = pd.DataFrame([{
        "stage": a.stage, "source": a.source.replace("_", " "), "sampled": a.sampled, "answered": a.checked,
        "accuracy": _pct(a.accuracy), "95% interval": f"[{_pct(a.low)}, {_pct(a.high)}]" if a.checked else "–",
        "target": _pct(a.target), "status": a.status} for a in accuracy])
    return [verdict, *[f"- {f.text}" for f in findings if f.kind == "recheck_pending"],
            table.to_markdown(index=False) if len(table) else "_no stage accepted anything_"]


def _prevalence_markdown(shares: list[Prevalence], pending: int) -> list[str]:
    if not shares:
        return ["_no labeled items_"]
    table = pd.DataFrame([{
        "label": p.label, "share": _pct(p.share), "95% interval": f"[{_pct(p.low)}, {_pct(p.high)}]",
        "model labels as they are": _pct(p.naive), "corrected": "yes" if p.corrected else "no"} for p in shares])
    notes = [shares[0].note] if shares[0].note else []  # the same for every label
    if pending:
        notes.append(f"{pending} items still with people carry no label and are not counted.")
    return [table.to_markdown(index=False), *notes]


def _rows(certificates: pd.DataFrame, accuracy: list[StageAccuracy], shares: list[Prevalence], pending: int) -> list[dict]:
    rows = []
    for cert in certificates.to_dict("records"):
        detail = {key: cert.get(key) for key in ("tier", "signal", "items", "accepted", "correct", "bound", "target",
                                                 "delta", "passed", "reason", "audit_share", "recheck")}
        rows.append({"section": "certificate", "tier": cert["stage"], "name": "threshold", "value": cert.get("threshold"),
                     "detail": json.dumps(detail | {"drift": _drift(cert.get("drift"))}, default=str)})
    rows += [{"section": "audit", "tier": a.stage, "name": a.source, "value": a.accuracy,
              "detail": json.dumps(a.as_json())} for a in accuracy]
    rows += [{"section": "prevalence", "tier": "", "name": p.label, "value": p.share,
              "detail": json.dumps({"low": p.low, "high": p.high, "naive": p.naive, "corrected": p.corrected,
                                    "items": p.items, "answers": p.answers, "pending": pending, "note": p.note})}
             for p in shares]
    return rows


def audit_report(month: str, evidence: MonthEvidence, labels: Sequence[str], *, target: float,
                 delta: float) -> AuditReport:
    """The Certificates, Audit and Prevalence sections of one month, their report rows, and the
    findings the accepted_labels_meet_target check warns about. A stage's target is its certificate's
    (the auto-labeler has its own), else `target`."""
    certificates = evidence.certificates
    targets = {stage: target for stage in STAGES}
    targets |= {c["stage"]: float(c["target"]) for c in certificates.to_dict("records") if pd.notna(c.get("target"))}
    accepted = evidence.accepted()
    accuracy = [*stage_accuracy(evidence.audit, list(accepted), source=AUDIT, targets=targets, delta=delta),
                *stage_accuracy(evidence.golden, [], source=GOLDEN_HELD_OUT, targets=targets, delta=delta)]
    counts = dict(evidence.people_labels)
    for row in evidence.stage_labels.to_dict("records"):
        counts[row["label"]] = counts.get(row["label"], 0) + int(row["items"])
    shares = prevalence(labels, counts, accepted, evidence.audit)
    findings = _findings(month, accuracy, certificates, accepted)
    markdown = ["### Certificates", *_certificates_markdown(certificates),
                "### Audit", *_audit_markdown(accuracy, findings),
                "### Prevalence (prediction-powered, corrected by the audit)", *_prevalence_markdown(shares, evidence.pending)]
    return AuditReport(_rows(certificates, accuracy, shares, evidence.pending), accuracy, shares, findings, markdown)
