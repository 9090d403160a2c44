"""The certified gate: which accept threshold a stage may use, with a stated guarantee.

A stage (the auto-labeler, the first pass, QA, adjudication) accepts an item when its confidence
signal reaches a threshold. The threshold is chosen on calibration items that reached the stage by
the same route as production items, by fixed-sequence testing (Jung, Brahman & Choi, "Trust or
Escalate", ICLR 2025): candidate thresholds are tested from the strictest to the loosest; at each,
the items the stage would accept get an exact one-sided (Clopper-Pearson) lower bound on their
accuracy at level 1 - delta; the first threshold whose bound is below the target stops the
sequence, and the loosest threshold before it is kept. Because the tests come in a fixed order and
stop at the first failure, no correction for the number of thresholds is needed:

    P(accuracy of the items accepted at the chosen threshold >= target) >= 1 - delta

for production items exchangeable with the calibration items. A candidate at which fewer than
`min_items` calibration items are accepted is not tested (not counted as a failure): which
candidates are skipped depends on the confidences only, never on which answers are right (one
caveat: in the cascade an answer is eligible only at or above its stage's band, compared on the
calibrated confidence, and the calibrator is fitted on the same golden items; a band is a floor,
usually far below the certified threshold, and in simulation it moved the chance of certifying a
95%-target stage whose true accuracy is 94.5% from 3.35% to 3.6%). For the
same reason a candidate is skipped while it accepts too few items for even a perfect record to
reach the target (59 items for 0.95 at delta 0.05): testing it could only fail and stop the sequence.
The kept threshold is then tightened to the lowest confidence among the calibration items it
accepts (the same calibration items, a stricter rule for new ones).

Pure numpy/scipy; no Dagster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import beta

# Trust or Escalate's code abstains below about 30 calibration points per threshold.
MIN_ITEMS = 30
# Candidate thresholds, strictest first: fixed before any answer is seen, fine near 1 where
# probabilities crowd, every hundredth below.
GRID: tuple[float, ...] = (1.0, 0.9999, 0.999, 0.998, 0.995, *(round(0.99 - 0.01 * i, 2) for i in range(100)))


def accuracy_lower_bound(correct: int, total: int, delta: float) -> float:
    """One-sided Clopper-Pearson lower bound on an accuracy seen as correct/total: the true accuracy is
    at least this with probability 1 - delta. 0 when nothing was seen or nothing was right."""
    if total <= 0 or correct <= 0:
        return 0.0
    return float(beta.ppf(delta, correct, total - correct + 1))


def accuracy_upper_bound(correct: int, total: int, delta: float) -> float:
    """One-sided Clopper-Pearson upper bound (1 when nothing was seen or everything was right)."""
    if total <= 0 or correct >= total:
        return 1.0
    return float(beta.ppf(1 - delta, correct + 1, total - correct))


def accuracy_interval(correct: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided exact (Clopper-Pearson) interval at `level`."""
    tail = (1 - level) / 2
    return accuracy_lower_bound(correct, total, tail), accuracy_upper_bound(correct, total, tail)


def perfect_record_needs(target: float, delta: float) -> int:
    """The fewest accepted items whose lower bound can reach `target` at all (every one of them right):
    the smallest n with (delta ** (1 / n)) >= target."""
    if target >= 1:
        return 2**31
    return int(np.ceil(np.log(delta) / np.log(target) - 1e-9))


@dataclass(frozen=True)
class Certificate:
    """One stage's accept threshold for one month, and the evidence behind it.

    `threshold` None: no candidate passed, the stage accepts nothing (`reason` says why).
    `items`: calibration items that reached the stage; `accepted`/`correct`: those it accepts at the
    threshold and how many of them are right; `bound`: their accuracy's lower bound at 1 - delta.
    `tested`: candidates tested (the last one failed unless the grid ran out)."""

    stage: str
    threshold: float | None
    items: int
    accepted: int
    correct: int
    bound: float | None
    target: float
    delta: float
    tested: int
    reason: str
    signal: str = "confidence"

    @property
    def passed(self) -> bool:
        return self.threshold is not None

    @property
    def coverage(self) -> float:
        return self.accepted / self.items if self.items else 0.0

    def accepts(self, confidence: float | None) -> bool:
        return self.threshold is not None and confidence is not None and confidence >= self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "coverage": self.coverage}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Certificate:
        names = cls.__dataclass_fields__
        return cls(**{key: value for key, value in raw.items() if key in names})

    def refusal(self) -> str:
        """Why an item the stage would otherwise accept goes up: the stage has no certificate."""
        return f"{self.stage} has no certified threshold this month: {self.reason}"


def certify(
    confidences: Sequence[float | None],
    correct: Sequence[bool],
    *,
    target: float,
    delta: float,
    stage: str = "",
    eligible: Sequence[bool] | None = None,
    min_items: int = MIN_ITEMS,
    grid: Sequence[float] = GRID,
    signal: str = "confidence",
) -> Certificate:
    """The loosest threshold of `grid` (tested strictest first, stopping at the first failure) at which
    the accepted calibration items' accuracy has a lower bound >= `target` at level 1 - `delta`.

    `confidences`: the stage's signal per calibration item (None: no usable answer, never accepted);
    `correct`: whether its label is the gold label; `eligible`: False for items the stage would not
    accept whatever the signal (a label that always goes to people, a band floor)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be between 0 and 1, got {delta}")
    if not 0 < target <= 1:
        raise ValueError(f"target accuracy must be in (0, 1], got {target}")
    conf = np.array([np.nan if c is None else float(c) for c in confidences], dtype=float)
    right = np.asarray(correct, dtype=bool).reshape(-1)
    if len(right) != len(conf):
        raise ValueError(f"{len(conf)} confidences but {len(right)} correct flags")
    usable = ~np.isnan(conf)
    if eligible is not None:
        usable &= np.asarray(eligible, dtype=bool)
    n = len(conf)
    candidates = sorted(set(float(t) for t in grid), reverse=True)
    chosen: tuple[float, int, int, float] | None = None
    last_failed: tuple[float, int, int, float] | None = None
    tested = 0
    needed = max(min_items, perfect_record_needs(target, delta))
    signal_values = np.nan_to_num(conf, nan=-1.0)
    for threshold in candidates:
        accepted = usable & (signal_values >= threshold)
        total = int(accepted.sum())
        if total < needed:
            continue
        tested += 1
        hits = int(right[accepted].sum())
        bound = accuracy_lower_bound(hits, total, delta)
        if bound < target:
            last_failed = (threshold, total, hits, bound)
            break
        chosen = (float(signal_values[accepted].min()), total, hits, bound)
    common = dict(stage=stage, items=n, target=target, delta=delta, tested=tested, signal=signal)
    if chosen is None:
        if last_failed is not None:
            threshold, total, hits, bound = last_failed
            remedy = (
                "more calibration items that reach this stage would tighten the bound" if hits / total >= target
                else "even its surest answers miss the target there: a better model or confidence signal is needed"
            )
            reason = (
                f"the strictest testable threshold ({signal} >= {threshold:g}) accepts {total} of {n} calibration "
                f"items at {hits / total:.1%}, lower bound {bound:.1%} < target {target:.1%} (delta {delta:g}); "
                f"{remedy}"
            )
            return Certificate(threshold=None, accepted=0, correct=0, bound=bound, reason=reason, **common)
        reason = (
            f"only {int(usable.sum())} of {n} calibration items could be accepted, fewer than the {needed} a "
            f"threshold needs to be tested at target {target:.1%} and delta {delta:g}: label more golden items "
            "that reach this stage"
        )
        return Certificate(threshold=None, accepted=0, correct=0, bound=None, reason=reason, **common)
    threshold, total, hits, bound = chosen
    stop = (
        f"; the next threshold {last_failed[0]:g} failed (lower bound {last_failed[3]:.1%})" if last_failed
        else "; every looser threshold passed too"
    )
    reason = (
        f"accept {signal} >= {threshold:g}: {total} of {n} calibration items, {hits / total:.1%} right, "
        f"lower bound {bound:.1%} >= target {target:.1%} at delta {delta:g}{stop}"
    )
    return Certificate(threshold=threshold, accepted=total, correct=hits, bound=bound, reason=reason, **common)


def realized(correct: Sequence[bool], *, target: float, delta: float) -> dict[str, Any]:
    """What an audit found: accuracy of the checked accepted items, its exact 95% interval, and whether
    the target is missed (the point estimate below target) or proved missed (the upper bound at
    1 - delta below target)."""
    right = np.asarray(correct, dtype=bool)
    total, hits = len(right), int(right.sum())
    low, high = accuracy_interval(hits, total)
    return {
        "checked": total,
        "correct": hits,
        "accuracy": hits / total if total else None,
        "low": low if total else None,
        "high": high if total else None,
        "below_target": bool(total and hits / total < target),
        "proved_below_target": bool(total and accuracy_upper_bound(hits, total, delta) < target),
    }
