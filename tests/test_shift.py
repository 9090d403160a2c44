"""Shift between a month and its certificate's reference items: false alarms at about alpha when nothing
changed (over many seeded draws, not one), detection when confidences drop or a new label appears,
the rare-label pooling that keeps the chi-square test valid, and nothing tested on too few items."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from labeling_dagster.core.shift import drift

MIX = np.array([0.3, 0.2, 0.12, 0.1, 0.08, 0.06, 0.05, 0.03, 0.02, 0.02, 0.01, 0.01])


def sample(rng: np.random.Generator, n: int, a: float = 8.0, b: float = 2.0, mix=MIX) -> tuple[np.ndarray, list[str]]:
    """n items: a stage's confidence (Beta(a, b)) and its predicted label (drawn from `mix`)."""
    labels = [f"intent_{k}" for k in range(len(mix))]
    return rng.beta(a, b, n), list(rng.choice(labels, n, p=mix / mix.sum()))


def false_alarms(alpha: float, month: int, reference: int, mix=MIX, repetitions: int = 200) -> tuple[float, float, float]:
    """Shares of repetitions flagged (either test), flagged by KS and by chi-square, with both sides
    drawn from one distribution."""
    flagged = ks = chi = 0
    for seed in range(repetitions):
        rng = np.random.default_rng(seed)
        (signal, labels), (reference_signal, reference_labels) = sample(rng, month, mix=mix), sample(rng, reference, mix=mix)
        result = drift(signal, reference_signal, labels, reference_labels, alpha=alpha)
        flagged += result.shifted
        ks += result.confidence_p < alpha / 2
        chi += result.label_mix_p < alpha / 2
    return flagged / repetitions, ks / repetitions, chi / repetitions


def test_two_samples_of_one_distribution_raise_false_alarms_at_about_alpha():
    # 200 seeded months: each test alone fires at about alpha / 2 (Bonferroni), both together at
    # about alpha, never far above (the binomial standard error here is about 0.02).
    flagged, ks, chi = false_alarms(alpha=0.1, month=400, reference=1500)
    assert 0.02 <= ks <= 0.09 and 0.02 <= chi <= 0.09
    assert 0.05 <= flagged <= 0.15


def test_rare_labels_are_pooled_so_the_chi_square_test_keeps_its_level():
    # 60 labels on a Zipf-like mix over 60 month items: most expected counts are far below 5, where
    # the chi-square approximation fails. The same draws, unpooled, fire about 4 times too often.
    mix = 1 / np.arange(1, 61) ** 1.3
    flagged, _, chi = false_alarms(alpha=0.1, month=60, reference=3000, mix=mix)
    assert chi <= 0.09 and flagged <= 0.15
    unpooled = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        counts = [Counter(sample(rng, n, mix=mix)[1]) for n in (60, 3000)]
        labels = sorted(set(counts[0]) | set(counts[1]))
        table = [[count[label] for label in labels] for count in counts]
        unpooled += chi2_contingency(table, correction=False).pvalue < 0.05
    assert unpooled / 200 > 0.12


def test_no_drift_on_one_distribution_and_the_reason_says_so():
    rng = np.random.default_rng(0)
    month, reference = sample(rng, 500), sample(rng, 2000)
    result = drift(month[0], reference[0], month[1], reference[1], alpha=0.05)
    assert not result.shifted and (result.items, result.reference) == (500, 2000)
    assert result.confidence_p >= 0.025 and result.label_mix_p >= 0.025
    assert result.reason.startswith("no shift") and "Kolmogorov-Smirnov" in result.reason and "chi-square" in result.reason
    assert result.as_dict() == {"shifted": False, "confidence_p": result.confidence_p, "label_mix_p": result.label_mix_p,
                                "items": 500, "reference": 2000, "reason": result.reason}


def test_confidences_that_drop_are_detected_by_the_ks_test():
    rng = np.random.default_rng(1)
    signal, labels = sample(rng, 400, a=6.0, b=2.5)  # mean 0.71 instead of 0.80, same label mix
    reference_signal, reference_labels = sample(rng, 1500)
    result = drift(signal, reference_signal, labels, reference_labels, alpha=0.05)
    assert result.shifted and result.confidence_p < 1e-6
    assert result.label_mix_p >= 0.025  # the label mix did not move
    assert "Kolmogorov-Smirnov p = " in result.reason and "< 0.025" in result.reason
    assert "recheck" in result.reason


def test_higher_confidences_count_as_shift_too():
    # Two-sided on purpose: the calibration items no longer describe the month either way.
    rng = np.random.default_rng(2)
    signal, labels = sample(rng, 400, a=14.0, b=1.5)
    reference_signal, reference_labels = sample(rng, 1500)
    assert drift(signal, reference_signal, labels, reference_labels, alpha=0.05).shifted


def test_a_new_label_in_18_percent_of_the_month_is_detected_by_the_chi_square_test():
    rng = np.random.default_rng(3)
    signal, labels = sample(rng, 500)
    labels[: 90] = ["new_intent"] * 90  # 18% of the month; the confidences are drawn as before
    reference_signal, reference_labels = sample(rng, 1500)
    result = drift(signal, reference_signal, labels, reference_labels, alpha=0.05)
    assert result.shifted and result.label_mix_p < 1e-6 and result.confidence_p >= 0.025
    assert "'new_intent': 18.0% of the month vs 0.0% of the reference" in result.reason


def test_below_min_items_nothing_is_tested():
    rng = np.random.default_rng(5)
    signal, labels = sample(rng, 29)
    reference_signal, reference_labels = sample(rng, 1500)
    result = drift(signal - 0.5, reference_signal, labels, reference_labels, alpha=0.05, min_items=30)
    assert not result.shifted and result.confidence_p is None and result.label_mix_p is None
    assert "not tested" in result.reason and "min_items=30" in result.reason and "month" in result.reason
    few = drift(reference_signal, reference_signal[:10], reference_labels, reference_labels[:10], alpha=0.05)
    assert few.confidence_p is None and "reference" in few.reason


def test_items_without_a_signal_and_a_single_label():
    # Missing signal values are left out of the KS test; one label everywhere leaves nothing to compare.
    rng = np.random.default_rng(6)
    month = [None] * 50 + list(rng.beta(8, 2, 300))
    result = drift(month, rng.beta(8, 2, 1000), ["a"] * 350, ["a"] * 1000, alpha=0.05)
    assert result.confidence_p is not None and result.label_mix_p is None
    assert not result.shifted and "label mix not tested" in result.reason and result.items == 350


def test_inputs_that_do_not_describe_the_same_items_are_refused():
    with pytest.raises(ValueError, match="one signal value and one predicted label per item"):
        drift([0.9] * 40, [0.9] * 40, ["a"] * 39, ["a"] * 40, alpha=0.05)
    with pytest.raises(ValueError, match="alpha"):
        drift([0.9] * 40, [0.9] * 40, ["a"] * 40, ["a"] * 40, alpha=0)
