"""benchmarks/certify.py on a small stream (1 seed, 1,200 auto-labeler labels, 2,400 stream items, golden
sample 500): the JSON has what the README quotes, and the certified gate keeps its promises on it
(no certificate below target on its population, out-of-scope items within the error budget, the
shift reported in month 7). The tiers are SIMULATED; the benchmark's figures come from its full run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import certify as bench

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

pytestmark = pytest.mark.skipif(
    not (DATA / "banking77" / "train.csv").exists() or not (DATA / "sms_spam_collection" / "sms_spam.csv").exists(),
    reason=f"banking77 or sms_spam_collection absent under {DATA}",
)


def test_scan_threshold_is_the_old_rule() -> None:
    # 60 right answers at 0.99, then 40 at 0.8 of which 10 wrong: at 0.99 the bound of 60/60 is 95.1%;
    # at 0.8, 90/100 is not; the scan keeps 0.99. Add 400 right at 0.7 and 0.7 passes (490/500, lower bound 96.6%).
    confidences = np.array([0.99] * 60 + [0.8] * 40)
    correct = np.array([True] * 60 + [True] * 30 + [False] * 10)
    assert bench.scan_threshold(confidences, correct, 0.95) == 0.99
    more = np.append(confidences, [0.7] * 400), np.append(correct, [True] * 400)
    assert bench.scan_threshold(*more, 0.95) == 0.7
    assert bench.scan_threshold(confidences[:40], correct[:40], 0.95) is None  # fewer than 50 items


def test_small_run_writes_every_figure_and_keeps_the_promises(tmp_path: Path) -> None:
    out = tmp_path / "certify.json"
    code = bench.main(["--seeds", "1", "--golden", "500", "--folds", "2", "--seed-labels", "1200",
                       "--stream-items", "2400", "--jobs", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert "SIMULATED" in report["simulated"] and report["simulation"]["tiers"]
    assert report["target_accuracy"] == 0.95 and report["delta"] == 0.05
    seed = report["seeds"][0]
    assert len(seed["month_items"]) == 12 and sum(seed["month_items"]) == 2400
    # 1% of months 1-6, 18% of months 7-12 are out of scope
    assert seed["out_of_scope_items"][0] == 2 and seed["out_of_scope_items"][6] == 44
    rows = seed["rows"]
    assert {r["gate"] for r in rows} == set(bench.GATES) and {r["stage"] for r in rows} == set(bench.STAGES)
    assert len(rows) == 12 * len(bench.GATES) * len(bench.STAGES)
    for row in rows:
        assert {"threshold", "in_scope.accepted", "in_scope.accuracy", "population.accuracy",
                "with_out_of_scope.outside_accepted"} <= set(row)
    summary = report["summary"]
    certified = summary["miss"]["golden 500 / certified"]
    assert set(certified["by_stage"]) == set(bench.STAGES)
    assert certified["population_share"] <= report["delta"]
    assert set(summary["coverage"]["golden 500 / today"]) >= {"machine", *bench.STAGES}
    budget = summary["out_of_scope"]["golden 500 / certified"]
    assert len(budget["months"]) == 12 and budget["over_budget_months"] == 0
    drift = summary["drift"]["golden 500"]["with_out_of_scope"]["seeds"]
    assert drift[next(iter(drift))]["first_month"] == bench.DRIFT_MONTH
    assert report["failures"] == [] and code == 0
