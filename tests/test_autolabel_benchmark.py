"""benchmarks/autolabel.py's two threshold rules on literal out-of-fold answers (the benchmark itself
takes minutes: its figures come from its runs)."""

from __future__ import annotations

import numpy as np

from benchmarks.autolabel import threshold_choice


def test_one_early_error_stops_the_fixed_sequence_where_the_old_scan_goes_on() -> None:
    # 59 answers at 0.99 with one wrong, then 500 right ones at 0.9.
    confidences = np.array([0.99] * 59 + [0.9] * 500)
    correct = np.array([False] + [True] * 558)
    fixed = threshold_choice("fixed_sequence", confidences, correct, 0.95, n=2000)
    assert fixed.threshold is None and "strictest testable threshold" in fixed.reason
    scan = threshold_choice("scan", confidences, correct, 0.95, n=2000)
    assert scan.threshold == 0.9 and scan.accepted == 559 and scan.lower_bound >= 0.95
    assert scan.estimated_accuracy == 558 / 559
    # Below the minimum training size neither rule accepts anything.
    for rule in ("fixed_sequence", "scan"):
        assert threshold_choice(rule, confidences, correct, 0.95, n=999).threshold is None
