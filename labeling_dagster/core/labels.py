"""What flows between the tiers: items, answers, and one provider call's outcome.

A provider (local model, OpenAI, Anthropic) implements `Provider.label_batch`; everything around it
(the call cache, answer validation, routing, the ledger) is shared and provider-agnostic.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from labeling_dagster.project import Taxonomy, TierConfig


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class Item:
    item_id: str
    text: str
    content_hash: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PriorAnswer:
    """An earlier tier's answer, shown to QA and adjudication."""

    tier: str
    label: str | None
    confidence: float | None
    reason: str = ""


@dataclass(frozen=True)
class Answer:
    item_id: str
    label: str
    confidence: float
    reason: str = ""
    alternatives: list[tuple[str, float]] = field(default_factory=list)


def answer_from_dict(raw: dict[str, Any]) -> Answer:
    """An Answer from its stored form (dataclasses.asdict, JSON-decoded: alternatives are lists)."""
    return Answer(**{**raw, "alternatives": [tuple(alt) for alt in raw["alternatives"]]})


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    cache_write_1h_tokens: int = 0  # of cache_write_tokens, those written with a 1-hour lifetime (Anthropic)


_USAGE_FIELDS = set(Usage.__dataclass_fields__)


@dataclass(frozen=True)
class LabelTask:
    taxonomy: Taxonomy
    tier: TierConfig
    items: list[Item]
    prior: dict[str, list[PriorAnswer]] = field(default_factory=dict)


@dataclass
class CallOutcome:
    """One provider call: the answers it gave, the items it could not answer (with why), usage."""

    answers: list[Answer]
    failures: dict[str, str] = field(default_factory=dict)
    usage: Usage = Usage()
    latency_s: float = 0.0
    compute_s: float = 0.0
    batch: bool = False
    status: str = "ok"
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "answers": [asdict(answer) for answer in self.answers],
                "failures": self.failures,
                "usage": asdict(self.usage),
                "latency_s": self.latency_s,
                "compute_s": self.compute_s,
                "batch": self.batch,
                "status": self.status,
                "error": self.error,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> CallOutcome:
        raw = json.loads(text)
        return cls(
            answers=[answer_from_dict(answer) for answer in raw["answers"]],
            failures=raw["failures"],
            # fields a newer version added are left out, so an older one can still read its rows
            usage=Usage(**{key: value for key, value in raw["usage"].items() if key in _USAGE_FIELDS}),
            latency_s=raw["latency_s"],
            compute_s=raw["compute_s"],
            batch=raw["batch"],
            status=raw["status"],
            error=raw["error"],
        )


class Provider(Protocol):
    """Labels a batch of items for one tier."""

    provider_name: str

    def version(self, task: LabelTask) -> str:
        """What, besides the items, decides the answer: prompt text, model weights, options."""
        ...

    def label_batch(self, task: LabelTask) -> CallOutcome: ...


def call_key(provider: str, model: str, version: str, task: LabelTask) -> str:
    """The call cache key: the same provider, model, prompt version and item contents (and the
    earlier answers a QA or adjudication prompt shows) always give the same key."""
    parts = [provider, model, version]
    for item in task.items:
        prior = [(p.tier, p.label, p.confidence) for p in task.prior.get(item.item_id, [])]
        parts.append(f"{item.item_id}:{item.content_hash}:{json.dumps(prior)}")
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:40]


def validate_outcome(outcome: CallOutcome, task: LabelTask) -> CallOutcome:
    """Keep only well-formed answers for items that were asked; every other item of the task ends up
    in `failures` with its reason, so no item is dropped and nothing invalid is accepted."""
    asked = {item.item_id for item in task.items}
    labels = set(task.taxonomy.answers)  # the labels, and 'none of these' where the taxonomy declares it
    failures = dict(outcome.failures)
    good: dict[str, Answer] = {}
    for answer in outcome.answers:
        if answer.item_id not in asked:
            continue  # an id we never sent: nothing to attach it to; the asked item fails below
        if answer.item_id in good:
            failures[answer.item_id] = "answered twice in one response"
            continue
        if answer.label not in labels:
            failures[answer.item_id] = f"label {answer.label!r} is not in the taxonomy"
        elif not 0.0 <= answer.confidence <= 1.0:
            failures[answer.item_id] = f"confidence {answer.confidence} is outside [0, 1]"
        else:
            good[answer.item_id] = answer
    for item_id in list(good):
        if item_id in failures:
            del good[item_id]
    for item_id in asked:
        if item_id not in good and item_id not in failures:
            failures[item_id] = outcome.error or "no answer for this item in the response"
    return CallOutcome(
        answers=list(good.values()),
        failures=failures,
        usage=outcome.usage,
        latency_s=outcome.latency_s,
        compute_s=outcome.compute_s,
        batch=outcome.batch,
        status=outcome.status,
        error=outcome.error,
    )
