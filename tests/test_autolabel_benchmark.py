"""benchmarks/autolabel.py's two threshold rules on literal out-of-fold answers (the benchmark itself
takes minutes: its figures come from its runs)."""

from __future__ import annotations

import numpy as np

from benchmarks.autolabel import threshold_choice


def test_an_early_failure_stops_the_fixed_sequence_where_the_old_scan_goes_on() -> None:
    # 120 answers at 0.99 with three wrong (lower bound 93.7%), then 500 right ones at 0.9.
    confidences = np.array([0.99] * 120 + [0.9] * 500)
    correct = np.array([False] * 3 + [True] * 617)
    fixed = threshold_choice("fixed_sequence", confidences, correct, 0.95, n=2000)
    assert fixed.threshold is None and "strictest testable threshold" in fixed.reason
    scan = threshold_choice("scan", confidences, correct, 0.95, n=2000)
    assert scan.threshold == 0.9 and scan.accepted == 620 and scan.lower_bound >= 0.95
    assert scan.estimated_accuracy == 617 / 620
    # Below the minimum training size neither rule accepts anything.
    for rule in ("fixed_sequence", "scan"):
        assert threshold_choice(rule, confidences, correct, 0.95, n=999).threshold is None


def test_fewer_strictest_items_than_min_count_are_not_tested_alone() -> None:
    # 59 answers at 0.99 with one wrong: under MIN_COUNT (100) they are tested only together with the
    # 500 right ones at 0.9, so one early error no longer ends the sequence.
    confidences = np.array([0.99] * 59 + [0.9] * 500)
    correct = np.array([False] + [True] * 558)
    fixed = threshold_choice("fixed_sequence", confidences, correct, 0.95, n=2000)
    assert fixed.threshold == 0.9 and fixed.accepted == 559
