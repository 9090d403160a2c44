"""Confidence where a model gives no token logprobs (Anthropic, OpenAI reasoning models): the share of
k samples of one tier that agree (self-consistency), or the share of the earlier tiers that agree with
a tier's label. Pure: no SDK, no Dagster.

Either share is the number a tier's accept threshold is certified on (core/certify.py, through
core/gate.signal_of), never the number a model wrote next to its label. A self-consistency share is
the tier's confidence itself, so the golden run calibrates it too.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import Field

from labeling_dagster.core.labels import Answer
from labeling_dagster.project import Confidence, TierConfig

MISSING_LOGPROBS = (
    "confidence.signal is logprobs but the answer came without token logprobs "
    "(a reasoning model? logprobs need reasoning_effort none on GPT-5.1+)"
)


class SampleConfidence(Confidence):
    """The confidence setting of one self-consistency sample's copy of a tier. Its index is part of the
    sample's prompt version, so each sample has its own item and call keys (stored and reused on its
    own), and OpenAI gets it as the seed. Set by the runner only: a project file cannot write it."""

    sample: int = Field(ge=0)


def sample_tier(tier: TierConfig, sample: int) -> TierConfig:
    return tier.model_copy(update={"confidence": SampleConfidence(
        signal="self_consistency", samples=tier.confidence.samples, sample=sample)})


def sample_index(tier: TierConfig) -> int | None:
    """The sample a copy of a tier asks for (None: the tier itself, not one of its samples)."""
    return tier.confidence.sample if isinstance(tier.confidence, SampleConfidence) else None


def version_settings(tier: TierConfig) -> dict[str, Any] | None:
    """What the confidence signal adds to a tier's prompt version. Nothing for `default`, so tiers that
    never set it keep their versions and stored answers, nor for `agreement`, which changes what the
    certificate compares (core/gate.signal_of), not the request or the answer. A sample's version
    holds its index but not the sample count, so raising `samples` reuses the samples already stored;
    the tier's own version (the one its label rows and calibrators carry) holds the count, since a
    share of 5 is calibrated apart from a share of 7."""
    signal = tier.confidence.signal
    if signal in ("default", "agreement"):
        return None
    if signal != "self_consistency":
        return {"signal": signal}
    sample = sample_index(tier)
    return {"signal": signal, **({"samples": tier.confidence.samples} if sample is None else {"sample": sample})}


def agreement(label: str, earlier_labels: list[str]) -> float:
    """The share of the earlier tiers' labels equal to `label`: 1.0 or 0.0 behind one earlier tier.
    With no earlier label (every earlier tier failed on the item) it is 0.0: nothing corroborates the
    label, so the item is not settled on it."""
    if not earlier_labels:
        return 0.0
    return sum(1 for earlier in earlier_labels if earlier == label) / len(earlier_labels)


def self_consistency(samples: list[Answer | None]) -> Answer | None:
    """One answer from the k samples of one item (None: a sample that gave no answer).

    The label is the most common one; a tie goes to the label whose samples wrote the higher confidence
    in sum, then to the first label by name, so the same samples always give the same answer. The
    confidence is the share of all k samples that gave it: a failed sample counts against the label,
    so an item is never surer for having fewer answers. This share is what the tier's certificate
    thresholds. `alternatives` are the other labels with their shares; the reason is that of the first
    sample that gave the label. None when no sample answered."""
    answered = [answer for answer in samples if answer is not None]
    if not answered:
        return None
    counts = Counter(answer.label for answer in answered)
    written: dict[str, float] = {}
    for answer in answered:
        written[answer.label] = written.get(answer.label, 0.0) + answer.confidence
    ranked = sorted(counts, key=lambda label: (-counts[label], -written[label], label))
    label = ranked[0]
    first = next(answer for answer in answered if answer.label == label)
    k = len(samples)
    return Answer(
        item_id=first.item_id,
        label=label,
        confidence=counts[label] / k,
        reason=first.reason,
        alternatives=[(other, counts[other] / k) for other in ranked[1:]],
    )
