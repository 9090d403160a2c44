"""Calibration on synthetic scores whose miscalibration is known: the true accuracy at raw confidence
c is c**2 (an overconfident tier), drawn with a fixed seed."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression

from labeling_dagster.core.calibration import (
    MIN_GOLDEN_ANSWERS,
    Calibrator,
    calibrate_tier,
    expected_calibration_error,
    fit_calibrator,
    reliability_curve,
    reliability_markdown,
    reliability_svg,
)


def overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw confidence uniform on [0.3, 1]; an answer is right with probability confidence**2."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.3, 1.0, n)
    return confidence, rng.random(n) < confidence**2


def test_ece_and_reliability_curve_on_literals() -> None:
    confidence = [0.95, 0.85, 0.15, 0.15, 1.0]
    correct = [1, 0, 0, 0, 1]
    rows = reliability_curve(confidence, correct, bins=10)
    assert [(r.bin, r.count) for r in rows] == [(1, 2), (8, 1), (9, 2)]  # 1.0 falls in the last bin
    last = rows[-1]
    assert last.mean_confidence == pytest.approx(0.975) and last.accuracy == 1.0
    # |0 - 0.15| x 2 + |0 - 0.85| x 1 + |1 - 0.975| x 2, over 5 answers
    assert expected_calibration_error(confidence, correct, bins=10) == pytest.approx((0.3 + 0.85 + 0.05) / 5)


@pytest.mark.parametrize("method, ceiling", [("isotonic", 0.04), ("platt", 0.06)])
def test_calibration_removes_known_overconfidence(method: str, ceiling: float) -> None:
    train_conf, train_right = overconfident(3000, seed=1)
    test_conf, test_right = overconfident(3000, seed=2)  # measured on answers the calibrator never saw
    calibrator = fit_calibrator(train_conf, train_right, method=method, tier="first_pass")
    assert calibrator.method == method
    before = expected_calibration_error(test_conf, test_right)
    after = expected_calibration_error(calibrator.apply(test_conf), test_right)
    assert before > 0.15  # mean of c - c**2 over [0.3, 1] is about 0.19
    assert after < ceiling
    # The calibrated confidence tracks c**2, the accuracy the data were drawn with.
    grid = np.array([0.4, 0.6, 0.8, 0.95])
    assert np.abs(calibrator.apply(grid) - grid**2).max() < 0.1


def test_calibrate_tier_reports_out_of_fold_error() -> None:
    confidence, right = overconfident(1500, seed=3)
    result = calibrate_tier(confidence, right, tier="first_pass", model="gpt-5-nano", prompt_version="p-1")
    assert result.calibrator.tier == "first_pass" and result.calibrator.golden_answers == 1500
    assert result.ece_raw > 0.15 and result.ece_calibrated < result.ece_raw / 3
    assert sum(row.count for row in result.curve_calibrated) == 1500
    json.dumps(result.as_json())  # the report stores it as JSON


def test_platt_recovers_a_logistic_truth() -> None:
    rng = np.random.default_rng(4)
    confidence = rng.uniform(0, 1, 6000)
    right = rng.random(6000) < expit(4 * confidence - 2)
    calibrator = fit_calibrator(confidence, right, method="platt")
    assert calibrator.params["a"] == pytest.approx(4, abs=0.4)
    assert calibrator.params["b"] == pytest.approx(-2, abs=0.25)


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_json_round_trip_keeps_version_and_mapping(method: str) -> None:
    confidence, right = overconfident(400, seed=5)
    calibrator = fit_calibrator(confidence, right, method=method, tier="qa", model="claude-haiku-4-5", prompt_version="v3")
    stored = calibrator.to_json()
    restored = Calibrator.from_json(stored)
    assert restored == calibrator and restored.version == calibrator.version
    probe = np.linspace(0, 1, 101)
    assert np.array_equal(restored.apply(probe), calibrator.apply(probe))
    assert json.loads(stored)["version"] == calibrator.version


def test_isotonic_breakpoints_reproduce_scikit_learn() -> None:
    confidence, right = overconfident(500, seed=6)
    calibrator = fit_calibrator(confidence, right)
    fitted = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(confidence, right)
    probe = np.linspace(0, 1, 201)  # beyond the golden range too: flat at the ends
    assert np.allclose(calibrator.apply(probe), fitted.predict(probe))


def test_version_changes_with_parameters_and_edits_are_caught() -> None:
    a = fit_calibrator(*overconfident(300, seed=7))
    b = fit_calibrator(*overconfident(300, seed=8))
    assert a.version != b.version
    edited = json.loads(a.to_json())
    edited["params"]["y"][0] = 0.5
    with pytest.raises(ValueError, match="does not match its parameters"):
        Calibrator.from_dict(edited)
    with pytest.raises(ValueError, match="not a stored calibrator"):
        Calibrator.from_dict({"method": "platt", "params": {"a": 1.0}})


def test_identity_below_the_minimum_and_when_nothing_is_wrong() -> None:
    confidence, right = overconfident(MIN_GOLDEN_ANSWERS - 1, seed=9)
    few = fit_calibrator(confidence, right, tier="first_pass")
    assert few.method == "identity" and few.golden_answers == MIN_GOLDEN_ANSWERS - 1
    assert f"only {MIN_GOLDEN_ANSWERS - 1} golden answers, {MIN_GOLDEN_ANSWERS} needed" in few.reason
    assert np.array_equal(few.apply(confidence), confidence)
    enough = fit_calibrator(*overconfident(MIN_GOLDEN_ANSWERS, seed=9))
    assert enough.method == "isotonic"
    perfect = fit_calibrator(np.linspace(0.5, 1, 80), np.ones(80))
    assert perfect.method == "identity" and "all 80 golden answers are right" in perfect.reason
    tier = calibrate_tier(confidence, right, tier="first_pass")
    assert tier.ece_calibrated == tier.ece_raw  # nothing fitted, nothing changed


def test_bad_input_names_the_answer() -> None:
    with pytest.raises(ValueError, match="answer #1 has 1.2"):
        fit_calibrator([0.5, 1.2], [1, 0])
    with pytest.raises(ValueError, match="2 confidences but 3 correct flags"):
        expected_calibration_error([0.5, 0.6], [1, 0, 1])


def test_reliability_plot_is_svg_embedded_as_a_data_uri() -> None:
    result = calibrate_tier(*overconfident(600, seed=10), tier="first_pass", model="gpt-5-nano")
    svg = reliability_svg({"raw": result.curve_raw, "calibrated": result.curve_calibrated}, title="a <b> & c")
    root = ET.fromstring(svg)  # well-formed, titles escaped
    circles = root.findall("{http://www.w3.org/2000/svg}circle")
    assert len(circles) == len(result.curve_raw) + len(result.curve_calibrated)
    markdown = reliability_markdown(result)
    encoded = markdown.split("(data:image/svg+xml;base64,", 1)[1].split(")", 1)[0]
    assert ET.fromstring(base64.b64decode(encoded).decode("utf-8")).tag == "{http://www.w3.org/2000/svg}svg"
    assert f"{result.ece_raw:.3f} raw" in markdown and result.calibrator.version in markdown
    assert "| [0.9, 1] |" in markdown
