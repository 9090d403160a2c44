"""The confidence gate: after each tier, where an item goes next (accepted, QA, adjudication, people).

Pure functions over one item's answer and the project's routing bands; the reason string says why,
and ends up in the label row, the review queue and the UI.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from labeling_dagster.core.labels import Answer
from labeling_dagster.project import MetadataRule, Routing

Step = Literal["accept", "qa", "adjudication", "human"]


@dataclass(frozen=True)
class Route:
    next_step: Step
    reason: str


def audited(item_id: str, rate: float) -> bool:
    """Deterministic by item id, so a rerun audits the same items."""
    if rate <= 0:
        return False
    bucket = int(hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:8], 16) / 0x1_0000_0000
    return bucket < rate


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
) -> Route:
    upward: list[Step] = (["qa"] if has_qa else []) + (["adjudication"] if has_adjudication else [])
    if forced:
        return Route("human", forced)
    if answer is None:
        return _escalate(upward, f"first pass gave no usable answer: {failure}")
    if answer.label in routing.always_human_labels:
        return Route("human", f"label {answer.label} always goes to people")
    confidence = answer.confidence
    if confidence >= routing.accept_at:
        if has_qa and audited(item_id, routing.audit_rate):
            return Route("qa", "random audit sample")
        return Route("accept", f"confidence {confidence:.2f} >= accept_at {routing.accept_at}")
    if confidence >= routing.qa_at:
        return _escalate(upward, f"confidence {confidence:.2f} in the QA band")
    if confidence >= routing.adjudicate_at and has_adjudication:
        return Route("adjudication", f"confidence {confidence:.2f} in the adjudication band")
    return Route("human", f"confidence {confidence:.2f} below the model bands")


def after_qa(
    routing: Routing, answer: Answer | None, failure: str | None, earlier: Answer | None, *, has_adjudication: bool
) -> Route:
    upward: list[Step] = ["adjudication"] if has_adjudication else []
    if answer is None:
        return _escalate(upward, f"QA gave no usable answer: {failure}")
    if answer.label in routing.always_human_labels:
        return Route("human", f"label {answer.label} always goes to people")
    if earlier is not None and answer.label != earlier.label:
        return _escalate(upward, f"QA disagrees: first pass {earlier.label}, QA {answer.label}")
    if answer.confidence < routing.qa_accept_at:
        return _escalate(upward, f"QA confidence {answer.confidence:.2f} < qa_accept_at {routing.qa_accept_at}")
    return Route("accept", "QA agrees with the first pass")


def after_adjudication(routing: Routing, answer: Answer | None, failure: str | None) -> Route:
    if answer is None:
        return Route("human", f"adjudication gave no usable answer: {failure}")
    if answer.label in routing.always_human_labels:
        return Route("human", f"label {answer.label} always goes to people")
    if answer.confidence < routing.adjudication_accept_at:
        return Route(
            "human",
            f"adjudication confidence {answer.confidence:.2f} < adjudication_accept_at {routing.adjudication_accept_at}",
        )
    return Route("accept", "adjudicated")
