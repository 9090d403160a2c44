"""Shift: has a month moved away from the data its stage's certificate was measured on?

A certificate's bound holds for items exchangeable with its calibration items. Two cheap symptoms
that they are not: the stage's confidence signal is distributed differently this month, or it
predicts another mix of labels (a new intent, a grown out-of-scope share). Either sends the month to
a recheck before it is accepted. Pure numpy/scipy, no Dagster.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import chi2_contingency, ks_2samp

# Cochran's rule for the chi-square approximation: every expected count at least 5.
MIN_EXPECTED = 5.0
TESTS = 2
NO_LABEL = "(no label)"


@dataclass(frozen=True)
class Drift:
    """The outcome of `drift`: shifted or not, each test's p-value (None: not tested) and why."""

    shifted: bool
    confidence_p: float | None
    label_mix_p: float | None
    items: int
    reference: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def drift(
    month_signal: Sequence[float],
    reference_signal: Sequence[float],
    month_labels: Sequence[str | None],
    reference_labels: Sequence[str | None],
    *,
    alpha: float,
    min_items: int = 30,
) -> Drift:
    """Compare a month's items with the reference (calibration) items of one stage: the confidence
    signal by a two-sample Kolmogorov-Smirnov test, the predicted-label counts by a chi-square test
    of homogeneity. Shifted when either p-value is below alpha / 2: Bonferroni over the two tests, so
    two distributions that did not change raise a false alarm at most alpha of the months (alpha / 2
    stays the level when one test cannot run, so it never depends on the data).

    Two-sided on purpose: a month whose confidences are lower is the dangerous one (more errors
    near the threshold), but higher ones also mean the calibration items no longer describe the
    month, and the certificate's bound was measured on those. Labels seen rarely are pooled into one
    "other" cell until every expected count is at least 5, so the chi-square approximation holds; a
    label new this month keeps its own cell once it is frequent enough to count. Non-finite signal
    values (an item with no signal) are left out of the KS test; a label None counts as its own
    label. Fewer than `min_items` on either side: nothing is tested and the month is not shifted.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    month_signal, reference_signal = _signal(month_signal), _signal(reference_signal)
    if len(month_signal) != len(month_labels) or len(reference_signal) != len(reference_labels):
        raise ValueError(
            f"one signal value and one predicted label per item: the month has {len(month_signal)} signal "
            f"values and {len(month_labels)} labels, the reference {len(reference_signal)} and {len(reference_labels)}"
        )
    items, reference = len(month_labels), len(reference_labels)
    level = alpha / TESTS
    if min(items, reference) < max(min_items, 1):
        side = "the month" if items < min_items else "the reference"
        return Drift(False, None, None, items, reference,
                     f"shift not tested: {items} month items and {reference} reference items, fewer than "
                     f"min_items={min_items} on {side}'s side")
    found, notes = [], []

    def report(p: float, text: str) -> None:
        (found if p < level else notes).append(f"{text} p = {p:.3g} {'<' if p < level else '>='} {level:g}")

    month_finite = month_signal[np.isfinite(month_signal)]
    reference_finite = reference_signal[np.isfinite(reference_signal)]
    confidence_p = None
    if min(len(month_finite), len(reference_finite)) >= min_items:
        confidence_p = float(ks_2samp(month_finite, reference_finite).pvalue)
        report(confidence_p, f"confidence signal (median {np.median(month_finite):.3f} this month vs "
               f"{np.median(reference_finite):.3f} in the reference): Kolmogorov-Smirnov")
    else:
        notes.append(f"confidence not tested (fewer than {min_items} items with a signal value)")

    label_mix_p, cells, change = _label_mix(month_labels, reference_labels)
    if label_mix_p is not None:
        report(label_mix_p, f"predicted-label mix ({change}; {cells} cells): chi-square")
    else:
        notes.append("label mix not tested (fewer than two label cells after pooling the rare ones)")

    rule = f"alpha {alpha:g} split over {TESTS} tests"
    if found:
        reason = f"shifted from the certificate's {reference} items: {'; '.join(found)} ({rule})"
        if notes:
            reason += f"; not shifted: {'; '.join(notes)}"
        reason += "; recheck before accepting"
    else:
        reason = f"no shift from the certificate's {reference} items: {'; '.join(notes)} ({rule})"
    return Drift(bool(found), confidence_p, label_mix_p, items, reference, reason)


def _signal(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=float).ravel()  # None becomes NaN


def _label_mix(month: Sequence[str | None], reference: Sequence[str | None]) -> tuple[float | None, int, str]:
    """The chi-square p-value on the 2 x labels table after pooling, the cells tested, and the label
    whose share moved most (for the reason)."""
    month_counts, reference_counts = Counter(map(_name, month)), Counter(map(_name, reference))
    labels = sorted(set(month_counts) | set(reference_counts))
    table = np.array([[month_counts[label] for label in labels], [reference_counts[label] for label in labels]], float)
    rows = table.sum(axis=1)
    share = table / rows[:, None]
    moved = int(np.argmax(np.abs(share[0] - share[1])))
    change = (f"largest change {labels[moved]!r}: {share[0, moved]:.1%} of the month vs "
              f"{share[1, moved]:.1%} of the reference")
    # The smallest expected count of a label's column is (smaller row total) * column total / N.
    needed = MIN_EXPECTED * rows.sum() / rows.min()
    totals = table.sum(axis=0)
    order = np.argsort(totals, kind="stable")
    pooled, kept = [], list(order)
    while kept and totals[kept[0]] < needed:
        pooled.append(kept.pop(0))
    # The pooled cell must pass the rule too: fold the next smallest label into it until it does.
    while pooled and kept and totals[pooled].sum() < needed:
        pooled.append(kept.pop(0))
    columns = [table[:, kept]] + ([table[:, pooled].sum(axis=1, keepdims=True)] if pooled else [])
    tested = np.hstack(columns)
    if tested.shape[1] < 2:
        return None, tested.shape[1], change
    # No Yates correction: on a 2 x 2 table it makes the test conservative, and alpha is the level wanted.
    return float(chi2_contingency(tested, correction=False).pvalue), tested.shape[1], change


def _name(label: str | None) -> str:
    return NO_LABEL if label is None else str(label)
