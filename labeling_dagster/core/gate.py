"""Path-conditional certification: each tier calibrated and certified on the golden items that reach
it by the route production items take.

A tier after the first only ever sees what the earlier stages did not settle: the harder items. Its
confidence measured on the whole golden sample is optimistic exactly where it is used. So the golden
sample is sent down the cascade as a month's items are: items the auto-labeler accepts and items a
rule reserves for people never reach the first pass; the first pass is calibrated on the rest, its
threshold certified (core/certify.py), and each item routed by core/routing with that certificate;
QA is calibrated and certified on the items routed to it, and so on. The routes come from the same
functions the tiers use, so the golden path and the production path cannot drift apart.

Pure: golden answers in, per stage the calibrator, the certificate and the calibration items behind
it (the reference a month's items are compared with for drift, core/shift.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from labeling_dagster.core import routing
from labeling_dagster.core.calibration import Calibrator, fit_calibrator
from labeling_dagster.core.certify import Certificate, certify
from labeling_dagster.core.confidence import agreement
from labeling_dagster.core.labels import Answer
from labeling_dagster.project import Project, TierConfig

ROLES = ("first_pass", "qa", "adjudication")


@dataclass(frozen=True)
class TierAnswers:
    """One tier's answers on the golden sample, aligned with it: label None where it gave no usable
    answer, `raw` the tier's own confidence (self-consistency: the share of samples that agree)."""

    tier: TierConfig
    label: Sequence[str | None]
    raw: Sequence[float | None]


@dataclass
class Stage:
    """One stage on the golden path: the items that reached it, its calibrator, the signal its
    certificate compares, and the certificate."""

    role: str
    tier: str
    reached: np.ndarray
    labels: list[str | None]
    calibrated: list[float | None]
    signal: list[float | None]
    calibrator: Calibrator | None
    certificate: Certificate

    def reference(self) -> tuple[list[float], list[str]]:
        """Signal values and labels of the answered calibration items that reached the stage."""
        keep = [i for i in np.flatnonzero(self.reached) if self.labels[i] is not None and self.signal[i] is not None]
        return [float(self.signal[i]) for i in keep], [str(self.labels[i]) for i in keep]


@dataclass
class GoldenPath:
    stages: dict[str, Stage] = field(default_factory=dict)
    outcome: list[str] = field(default_factory=list)  # per golden item: the stage that accepted it, or "human"


def signal_of(tier: TierConfig, label: str | None, raw: float | None, earlier: Sequence[str | None]) -> float | None:
    """The number a tier's certificate compares: its own confidence, or for confidence.signal
    agreement the share of the earlier tiers' answers that agree with its label."""
    if label is None or raw is None:
        return None
    if tier.confidence.signal == "agreement":
        return agreement(label, [e for e in earlier if e is not None])
    return float(raw)


def _calibrate(project: Project, tier: TierConfig, raw: list[float | None], right: list[bool], reached: np.ndarray):
    answered = [i for i in np.flatnonzero(reached) if raw[i] is not None]
    if project.quality.calibration == "none" or not answered:
        return None
    return fit_calibrator([raw[i] for i in answered], [right[i] for i in answered], method=project.quality.calibration,
                          tier=tier.name, model=tier.model)


def _eligible(role: str, project: Project, labels, calibrated, first_labels) -> list[bool]:
    """Whether the stage could accept each answer at some threshold: answered, not a label for people,
    not 'none of these', at or above the stage's band (and, for QA, agreeing with the first pass)."""
    bands = project.routing
    floor = {"first_pass": bands.accept_at, "qa": bands.qa_accept_at, "adjudication": bands.adjudication_accept_at}[role]
    out = []
    for i, label in enumerate(labels):
        ok = (label is not None and calibrated[i] is not None and calibrated[i] >= floor
              and label not in bands.always_human_labels and label != project.taxonomy.none_label)
        if role == "qa" and ok and first_labels is not None and first_labels[i] is not None:
            ok = label == first_labels[i]
        out.append(ok)
    return out


def certify_golden_path(
    project: Project,
    gold: Sequence[str],
    answers: dict[str, TierAnswers],
    *,
    auto_accepted: Sequence[bool],
    forced: Sequence[bool],
    item_ids: Sequence[str],
) -> GoldenPath:
    """Send the golden sample down the cascade and certify each stage on the items that reach it.
    `answers`: role -> the tier's answers (QA shown the first pass, adjudication both, as in
    production); `auto_accepted`: the month's auto-labeler accepts the item; `forced`: an
    always_human_when rule sends it to people. Roles are certified in cascade order as far as
    `answers` goes: the golden run certifies the first pass and QA before it asks adjudication,
    whose prompts show QA's answer only for the items that went through QA (`Stage.reached`)."""
    n = len(gold)
    quality = project.quality
    has = {role: project.tier(role) is not None for role in ROLES}
    path = GoldenPath(outcome=["human"] * n)
    step = ["first_pass"] * n
    for i in range(n):
        if forced[i]:  # a rule reserves it for people, whatever the auto-labeler says (as auto_labels does)
            step[i] = "done"
        elif auto_accepted[i]:
            step[i], path.outcome[i] = "done", "auto_label"
    earlier: dict[str, list[str | None]] = {}
    for role in ROLES:
        if not has[role]:
            continue
        if role not in answers:  # not labeled yet: the golden run certifies as it goes
            break
        tier_answers = answers[role]
        tier = tier_answers.tier
        labels = list(tier_answers.label)
        raw = [None if labels[i] is None else tier_answers.raw[i] for i in range(n)]
        right = [labels[i] is not None and labels[i] == gold[i] for i in range(n)]
        reached = np.array([s == role for s in step], dtype=bool)
        calibrator = _calibrate(project, tier, raw, right, reached)
        calibrated = [None if r is None else (calibrator.apply_one(r) if calibrator else float(r)) for r in raw]
        signal = [signal_of(tier, labels[i], raw[i], [earlier[r][i] for r in earlier if path.stages[r].reached[i]])
                  for i in range(n)]  # only the tiers the item went through, as its production row shows
        eligible = _eligible(role, project, labels, calibrated, earlier.get("first_pass"))
        index = np.flatnonzero(reached)
        certificate = certify(
            [signal[i] for i in index], [right[i] for i in index], target=quality.target_accuracy, delta=quality.delta,
            stage=role, eligible=[eligible[i] for i in index], min_items=quality.min_certify_items,
            signal=tier.confidence.signal if tier.confidence.signal != "default" else "confidence",
        )
        path.stages[role] = Stage(role, tier.name, reached, labels, calibrated, signal, calibrator, certificate)
        gate = routing.StageGate(role, "certified", certificate, 0.0, project.taxonomy.none_label)
        for i in index:
            answer = None if labels[i] is None else Answer(item_ids[i], labels[i], calibrated[i])
            failure = None if answer else "no usable answer"
            if role == "first_pass":
                route = routing.after_first_pass(
                    project.routing, item_ids[i], answer, failure, forced=None, has_qa=has["qa"],
                    has_adjudication=has["adjudication"], gate=gate, signal=signal[i])
            elif role == "qa":
                first = earlier.get("first_pass", [None] * n)[i]
                route = routing.after_qa(
                    project.routing, answer, failure, None if first is None else Answer(item_ids[i], first, 0.0),
                    has_adjudication=has["adjudication"], item_id=item_ids[i], gate=gate, signal=signal[i])
            else:
                route = routing.after_adjudication(project.routing, answer, failure, item_id=item_ids[i], gate=gate,
                                                   signal=signal[i])
            if route.next_step == "accept":
                step[i], path.outcome[i] = "done", role
            elif route.next_step == "human":
                step[i] = "done"
            else:
                step[i] = route.next_step
        earlier[role] = labels
    return path
