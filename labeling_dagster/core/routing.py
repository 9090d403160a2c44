"""The confidence gate: after each tier, where an item goes next (accepted, QA, adjudication, people).

Pure functions over one item's answer, the project's routing bands and the stage's certificate
(core/certify.py, as a StageGate): a stage accepts an item only when its calibrated confidence
reaches the band (a floor the project may set) and its signal reaches the certified threshold. An
item the stage may not accept goes up with the reason. The reason string says why, and ends up in
the label row, the review queue and the UI.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from labeling_dagster.core.certify import Certificate
from labeling_dagster.core.labels import Answer
from labeling_dagster.project import MetadataRule, Routing

Step = Literal["accept", "qa", "adjudication", "human"]


@dataclass(frozen=True)
class Route:
    next_step: Step
    reason: str
    audited: bool = False  # the stage would accept the item; it goes to people as the stage's audit sample


def bucket(item_id: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by the item id (and salt): deterministic, so a rerun picks the same items."""
    return int(hashlib.sha256(f"{salt}{item_id}".encode("utf-8")).hexdigest()[:8], 16) / 0x1_0000_0000


def audited(item_id: str, rate: float) -> bool:
    """routing.audit_rate: accepted first-pass items sent to QA anyway. Deterministic by item id."""
    return rate > 0 and bucket(item_id) < rate


@dataclass(frozen=True)
class StageGate:
    """What one stage may accept this month.

    mode certified: only with a passed certificate, at or above its threshold (no certificate: nothing).
    mode bands: the routing bands alone (quality.gate: bands), not certified; said in every reason.
    `audit_share` of what the stage accepts goes to people instead, drawn by item id (salted by the
    stage, so it is independent of routing.audit_rate's sample); `none_label` is never accepted."""

    stage: str
    mode: Literal["certified", "bands"] = "bands"
    certificate: Certificate | None = None
    audit_share: float = 0.0
    none_label: str | None = None

    def refusal(self, signal: float | None) -> str | None:
        """Why the stage may not accept an answer with this signal, or None when it may."""
        if self.mode == "bands":
            return None
        if self.certificate is None:
            return f"{self.stage} has no certificate this month (no golden run): it accepts nothing"
        if not self.certificate.passed:
            return self.certificate.refusal()
        if signal is None or signal < self.certificate.threshold:
            shown = "none" if signal is None else f"{signal:.3f}"
            return (f"{self.stage} {self.certificate.signal} {shown} < certified threshold "
                    f"{self.certificate.threshold:g}")
        return None

    def audits(self, item_id: str) -> bool:
        return self.audit_share > 0 and bucket(item_id, f"audit:{self.stage}:") < self.audit_share

    def accept(self, item_id: str, label: str, why: str) -> Route:
        """An accepted answer: accepted, or sent to people as the audit sample."""
        if self.audits(item_id):
            return Route("human", f"audit of {self.stage}: it accepted {label} ({why}); people check it", audited=True)
        suffix = "" if self.mode == "certified" else " (bands only: not certified)"
        return Route("accept", why + suffix)


UNCERTIFIED = {stage: StageGate(stage) for stage in ("first_pass", "qa", "adjudication")}


def rule_matches(rule: MetadataRule, text: str, metadata: dict[str, Any]) -> bool:
    value = text if rule.column == "text" else metadata.get(rule.column)
    value = "" if value is None else str(value)
    if rule.equals is not None:
        return value == rule.equals
    if rule.one_of is not None:
        return value in rule.one_of
    return rule.contains.lower() in value.lower()


def _describe(rule: MetadataRule) -> str:
    test = (
        f"= {rule.equals}" if rule.equals is not None
        else f"in {rule.one_of}" if rule.one_of is not None
        else f"contains {rule.contains!r}"
    )
    return f"{rule.column} {test}"


def forced_human(routing: Routing, text: str, metadata: dict[str, Any]) -> str | None:
    """The reason an item must go to people whatever a model says, or None."""
    for rule in routing.always_human_when:
        if rule_matches(rule, text, metadata):
            return f"always to people: {_describe(rule)}"
    return None


def _escalate(available: list[Step], reason: str) -> Route:
    return Route(available[0] if available else "human", reason)


def after_first_pass(
    routing: Routing,
    item_id: str,
    answer: Answer | None,
    failure: str | None,
    *,
    forced: str | None,
    has_qa: bool,
    has_adjudication: bool,
    gate: StageGate = UNCERTIFIED["first_pass"],
    signal: float | None = None,
) -> Route:
    """`answer.confidence` is the calibrated confidence the bands compare; `signal` the number the
    certificate compares (None: the answer's confidence)."""
    upward: list[Step] = (["qa"] if has_qa else []) + (["adjudication"] if has_adjudication else [])
    if forced:
        return Route("human", forced)
    if answer is None:
        return _escalate(upward, f"first pass gave no usable answer: {failure}")
    if answer.label in routing.always_human_labels:
        return Route("human", f"label {answer.label} always goes to people")
    if gate.none_label is not None and answer.label == gate.none_label:
        return _escalate(upward, f"first pass answered {answer.label}: no label of the taxonomy fits")
    confidence = answer.confidence
    if confidence >= routing.accept_at:
        refused = gate.refusal(answer.confidence if signal is None else signal)
        if refused:
            return _escalate(upward, refused)
        if has_qa and audited(item_id, routing.audit_rate):
            return Route("qa", "random audit sample")
        return gate.accept(item_id, answer.label, f"confidence {confidence:.2f} >= accept_at {routing.accept_at}")
    if confidence >= routing.qa_at:
        return _escalate(upward, f"confidence {confidence:.2f} in the QA band")
    if confidence >= routing.adjudicate_at and has_adjudication:
        return Route("adjudication", f"confidence {confidence:.2f} in the adjudication band")
    return Route("human", f"confidence {confidence:.2f} below the model bands")


QA_AGREES = "QA agrees with the first pass"


def after_qa(
    routing: Routing, answer: Answer | None, failure: str | None, earlier: Answer | None, *, has_adjudication: bool,
    item_id: str = "", gate: StageGate = UNCERTIFIED["qa"], signal: float | None = None,
) -> Route:
    upward: list[Step] = ["adjudication"] if has_adjudication else []
    if answer is None:
        return _escalate(upward, f"QA gave no usable answer: {failure}")
    if answer.label in routing.always_human_labels:
        return Route("human", f"label {answer.label} always goes to people")
    if gate.none_label is not None and answer.label == gate.none_label:
        return _escalate(upward, f"QA answered {answer.label}: no label of the taxonomy fits")
    if earlier is not None and answer.label != earlier.label:
        return _escalate(upward, f"QA disagrees: first pass {earlier.label}, QA {answer.label}")
    if answer.confidence < routing.qa_accept_at:
        return _escalate(upward, f"QA confidence {answer.confidence:.2f} < qa_accept_at {routing.qa_accept_at}")
    refused = gate.refusal(answer.confidence if signal is None else signal)
    if refused:
        return _escalate(upward, refused)
    return gate.accept(item_id, answer.label, QA_AGREES)


def after_adjudication(
    routing: Routing, answer: Answer | None, failure: str | None, *,
    item_id: str = "", gate: StageGate = UNCERTIFIED["adjudication"], signal: float | None = None,
) -> Route:
    if answer is None:
        return Route("human", f"adjudication gave no usable answer: {failure}")
    if answer.label in routing.always_human_labels:
        return Route("human", f"label {answer.label} always goes to people")
    if gate.none_label is not None and answer.label == gate.none_label:
        return Route("human", f"adjudication answered {answer.label}: no label of the taxonomy fits")
    if answer.confidence < routing.adjudication_accept_at:
        return Route(
            "human",
            f"adjudication confidence {answer.confidence:.2f} < adjudication_accept_at {routing.adjudication_accept_at}",
        )
    refused = gate.refusal(answer.confidence if signal is None else signal)
    if refused:
        return Route("human", refused)
    return gate.accept(item_id, answer.label, "adjudicated")
