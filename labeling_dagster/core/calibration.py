"""Calibration: turn a tier's raw confidence into the share of its answers that are right, fitted per
tier (model + prompt version) on the golden set, versioned, and measured (ECE, reliability curve).

Pure numpy/scikit-learn; a Calibrator is plain JSON (isotonic breakpoints or Platt's two numbers), so
it can be stored in DuckDB beside the label rows and applied without scikit-learn.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression

# Below this many golden answers a fitted curve follows the noise of a few items more than the
# model's behaviour (isotonic steps of 2-3 items), so the tier keeps its raw confidence.
MIN_GOLDEN_ANSWERS = 50
DEFAULT_BINS = 10

Method = Literal["isotonic", "platt", "identity"]


def _as_arrays(confidences: Sequence[float], correct: Sequence[bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidences, dtype=float).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(conf) | (conf < 0) | (conf > 1))
    if len(bad):
        raise ValueError(
            f"confidence must be a number between 0 and 1; answer #{bad[0]} has {float(conf[bad[0]])!r} "
            f"({len(bad)} such answers): fix the tier's output or drop those answers"
        )
    if correct is None:
        return conf, np.zeros(0)
    right = np.asarray(correct).reshape(-1)
    if len(right) != len(conf):
        raise ValueError(f"{len(conf)} confidences but {len(right)} correct flags: give one flag per golden answer")
    if not np.isin(right, (0, 1)).all():
        raise ValueError("correct flags must be 0/1 or booleans (is the answer's label the golden label?)")
    return conf, right.astype(float)


@dataclass(frozen=True)
class Calibrator:
    """Maps one tier's raw confidence to a calibrated one.

    `params`: isotonic {"x": [...], "y": [...]} (breakpoints, linear in between, flat beyond the ends);
    platt {"a": a, "b": b} (calibrated = 1 / (1 + exp(-(a * raw + b)))); identity {}.
    `reason` says how it was fitted, or why it is the identity.
    """

    method: Method
    params: dict[str, Any] = field(default_factory=dict)
    tier: str = ""
    model: str = ""
    prompt_version: str = ""
    golden_answers: int = 0
    reason: str = ""

    @property
    def version(self) -> str:
        """Hash of the method and parameters: equal versions map every confidence the same way."""
        canonical = json.dumps({"method": self.method, "params": self.params}, sort_keys=True)
        return f"{self.method}-{hashlib.sha256(canonical.encode('utf-8')).hexdigest()[:12]}"

    def apply(self, confidences: Sequence[float] | np.ndarray) -> np.ndarray:
        conf, _ = _as_arrays(confidences)
        if self.method == "isotonic":
            return np.interp(conf, self.params["x"], self.params["y"])
        if self.method == "platt":
            return expit(self.params["a"] * conf + self.params["b"])
        return conf.copy()

    def apply_one(self, confidence: float) -> float:
        return float(self.apply([confidence])[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": self.params,
            "version": self.version,
            "tier": self.tier,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "golden_answers": self.golden_answers,
            "reason": self.reason,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Calibrator:
        method = raw.get("method")
        params = dict(raw.get("params") or {})
        expected = {"isotonic": {"x", "y"}, "platt": {"a", "b"}, "identity": set()}
        if method not in expected or set(params) != expected[method]:
            raise ValueError(
                f"not a stored calibrator: method {method!r} with params {sorted(params)}; expected one of "
                f"{ {name: sorted(keys) for name, keys in expected.items()} }"
            )
        if method == "isotonic":
            x, y = params["x"], params["y"]
            if not x or len(x) != len(y) or any(b < a for a, b in zip(x, x[1:])):
                raise ValueError("isotonic calibrator: x and y must be equally long, non-empty, x ascending")
        calibrator = cls(
            method=method,
            params=params,
            tier=str(raw.get("tier", "")),
            model=str(raw.get("model", "")),
            prompt_version=str(raw.get("prompt_version", "")),
            golden_answers=int(raw.get("golden_answers", 0)),
            reason=str(raw.get("reason", "")),
        )
        stored = raw.get("version")
        if stored is not None and stored != calibrator.version:
            raise ValueError(
                f"calibrator for tier {calibrator.tier!r}: stored version {stored} does not match its parameters "
                f"({calibrator.version}); the row was edited or truncated, refit it"
            )
        return calibrator

    @classmethod
    def from_json(cls, text: str) -> Calibrator:
        return cls.from_dict(json.loads(text))


def _fit_isotonic(conf: np.ndarray, right: np.ndarray) -> dict[str, Any]:
    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(conf, right)
    return {"x": [float(v) for v in model.X_thresholds_], "y": [float(v) for v in model.y_thresholds_]}


def _fit_platt(conf: np.ndarray, right: np.ndarray) -> dict[str, Any]:
    """Platt scaling by Newton's method with his smoothed targets ((n+1)/(n+2) and 1/(n+2)), so a
    golden set with few wrong answers is not pushed to certainty (Lin, Lin & Weng 2007)."""
    positives = right.sum()
    negatives = len(right) - positives
    target = np.where(right == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    a, b = 0.0, float(np.log((positives + 1) / (negatives + 1)))

    def loss(a: float, b: float) -> float:
        z = a * conf + b
        return float(np.sum(np.logaddexp(0.0, z) - target * z))

    current = loss(a, b)
    for _ in range(100):
        p = expit(a * conf + b)
        gradient = np.array([np.sum((p - target) * conf), np.sum(p - target)])
        if np.max(np.abs(gradient)) < 1e-9:
            break
        w = p * (1 - p)
        hessian = np.array([[np.sum(w * conf * conf), np.sum(w * conf)], [np.sum(w * conf), np.sum(w)]])
        step = np.linalg.solve(hessian + 1e-12 * np.eye(2), gradient)
        scale = 1.0
        while True:
            new_a, new_b = a - scale * step[0], b - scale * step[1]
            trial = loss(new_a, new_b)
            if trial <= current - 1e-4 * scale * float(gradient @ step) or scale < 1e-10:
                break
            scale /= 2
        if trial >= current:
            break
        a, b, current = new_a, new_b, trial
    return {"a": float(a), "b": float(b)}


def fit_calibrator(
    confidences: Sequence[float],
    correct: Sequence[bool],
    *,
    method: Literal["isotonic", "platt"] = "isotonic",
    tier: str = "",
    model: str = "",
    prompt_version: str = "",
    min_answers: int = MIN_GOLDEN_ANSWERS,
) -> Calibrator:
    """Fit one tier's calibrator on its golden answers (raw confidence, answer correct).

    Isotonic (default) assumes only that higher raw confidence is not less often right; Platt fits a
    logistic curve on the raw score, smoother and safer on a few hundred answers. With fewer than
    `min_answers` answers, or when every answer is right (or every one wrong), there is nothing to
    map and the identity is returned with the reason."""
    if method not in ("isotonic", "platt"):
        raise ValueError(f"calibration method must be isotonic or platt, got {method!r}")
    conf, right = _as_arrays(confidences, correct)
    who = dict(tier=tier, model=model, prompt_version=prompt_version, golden_answers=len(conf))
    n_right = int(right.sum())
    if len(conf) < min_answers:
        return Calibrator(
            "identity",
            {},
            reason=f"only {len(conf)} golden answers, {min_answers} needed to fit {method}: raw confidence kept; "
            "label more golden items with this tier",
            **who,
        )
    if n_right in (0, len(conf)):
        return Calibrator(
            "identity",
            {},
            reason=f"all {len(conf)} golden answers are {'right' if n_right else 'wrong'}: nothing to calibrate "
            "against; raw confidence kept",
            **who,
        )
    params = _fit_isotonic(conf, right) if method == "isotonic" else _fit_platt(conf, right)
    return Calibrator(method, params, reason=f"{method} on {len(conf)} golden answers ({n_right} right)", **who)


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = DEFAULT_BINS
) -> float:
    """ECE: over equal-width confidence bins, |accuracy - mean confidence| weighted by the bin's share."""
    rows = reliability_curve(confidences, correct, bins)
    total = sum(row.count for row in rows)
    if total == 0:
        raise ValueError("no answers to measure calibration on")
    return float(sum(row.count * abs(row.accuracy - row.mean_confidence) for row in rows) / total)


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability curve: answers with confidence in [lower, upper) (the last bin includes 1)."""

    bin: int
    lower: float
    upper: float
    mean_confidence: float
    accuracy: float
    count: int


def reliability_curve(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = DEFAULT_BINS
) -> list[ReliabilityBin]:
    """The non-empty equal-width bins, lowest first."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    conf, right = _as_arrays(confidences, correct)
    index = np.minimum((conf * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if count:
            rows.append(
                ReliabilityBin(
                    bin=b,
                    lower=b / bins,
                    upper=(b + 1) / bins,
                    mean_confidence=float(conf[members].mean()),
                    accuracy=float(right[members].mean()),
                    count=count,
                )
            )
    return rows


def out_of_fold_confidences(
    confidences: Sequence[float],
    correct: Sequence[bool],
    *,
    method: Literal["isotonic", "platt"] = "isotonic",
    folds: int = 5,
    min_answers: int = MIN_GOLDEN_ANSWERS,
) -> np.ndarray:
    """Each answer calibrated by a calibrator fitted on the other folds, so the error measured on them
    is what new items will see (isotonic scores its own fitting data almost perfectly). Folds are
    every k-th answer in confidence order: deterministic, and each fold spans the whole range."""
    conf, right = _as_arrays(confidences, correct)
    out = np.empty_like(conf)
    fold_of = np.empty(len(conf), dtype=int)
    fold_of[np.argsort(conf, kind="stable")] = np.arange(len(conf)) % folds
    for fold in range(folds):
        held = fold_of == fold
        if held.any():
            calibrator = fit_calibrator(conf[~held], right[~held], method=method, min_answers=min_answers)
            out[held] = calibrator.apply(conf[held])
    return out


@dataclass(frozen=True)
class TierCalibration:
    """A tier's calibrator with its error before and after (after: out-of-fold, see out_of_fold_confidences)."""

    calibrator: Calibrator
    ece_raw: float
    ece_calibrated: float
    curve_raw: list[ReliabilityBin]
    curve_calibrated: list[ReliabilityBin]

    def as_json(self) -> dict[str, Any]:
        return {
            "calibrator": self.calibrator.to_dict(),
            "ece_raw": self.ece_raw,
            "ece_calibrated": self.ece_calibrated,
            "curve_raw": [vars(row) for row in self.curve_raw],
            "curve_calibrated": [vars(row) for row in self.curve_calibrated],
        }


def calibrate_tier(
    confidences: Sequence[float],
    correct: Sequence[bool],
    *,
    tier: str,
    model: str = "",
    prompt_version: str = "",
    method: Literal["isotonic", "platt"] = "isotonic",
    bins: int = DEFAULT_BINS,
    folds: int = 5,
    min_answers: int = MIN_GOLDEN_ANSWERS,
) -> TierCalibration:
    """What the quality report needs for one tier: the calibrator fitted on all its golden answers,
    and the calibration error and reliability curve of the raw and the calibrated confidence."""
    conf, right = _as_arrays(confidences, correct)
    calibrator = fit_calibrator(
        conf, right, method=method, tier=tier, model=model, prompt_version=prompt_version, min_answers=min_answers
    )
    calibrated = (
        conf if calibrator.method == "identity"
        else out_of_fold_confidences(conf, right, method=method, folds=folds, min_answers=min_answers)
    )
    return TierCalibration(
        calibrator=calibrator,
        ece_raw=expected_calibration_error(conf, right, bins),
        ece_calibrated=expected_calibration_error(calibrated, right, bins),
        curve_raw=reliability_curve(conf, right, bins),
        curve_calibrated=reliability_curve(calibrated, right, bins),
    )


# --------------------------------------------------------------------------- the reliability plot

# matplotlib is not a dependency, so the plot is an SVG written here. The Dagster UI's markdown
# sanitizer drops <svg> elements but allows `data:` image sources (dagster-webserver adds "data" to
# the allowed src protocols), so the markdown embeds the SVG as a base64 data-URI image.
_SIZE, _MARGIN = 320, 44
_COLOURS = ("#c0392b", "#2471a3", "#1e8449", "#7d3c98")


def reliability_svg(curves: Mapping[str, Sequence[ReliabilityBin]], *, title: str = "") -> str:
    """A reliability diagram as a standalone SVG document: the diagonal (perfect calibration), and per
    curve a line through the bins' (mean confidence, accuracy) with dots sized by the bin's count."""
    plot = _SIZE - 2 * _MARGIN

    def px(value: float) -> float:
        return round(_MARGIN + value * plot, 1)

    def py(value: float) -> float:
        return round(_SIZE - _MARGIN - value * plot, 1)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_SIZE}" height="{_SIZE}" viewBox="0 0 {_SIZE} {_SIZE}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{_SIZE}" height="{_SIZE}" fill="white"/>',
        f'<rect x="{_MARGIN}" y="{_MARGIN}" width="{plot}" height="{plot}" fill="none" stroke="#999"/>',
        f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(1)}" y2="{py(1)}" stroke="#999" stroke-dasharray="4 3"/>',
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<text x="{px(tick)}" y="{_SIZE - _MARGIN + 14}" text-anchor="middle">{tick:g}</text>')
        parts.append(f'<text x="{_MARGIN - 6}" y="{py(tick) + 4}" text-anchor="end">{tick:g}</text>')
    parts.append(f'<text x="{_SIZE / 2}" y="{_SIZE - 8}" text-anchor="middle">confidence</text>')
    parts.append(
        f'<text x="12" y="{_SIZE / 2}" text-anchor="middle" transform="rotate(-90 12 {_SIZE / 2})">accuracy</text>'
    )
    if title:
        parts.append(f'<text x="{_SIZE / 2}" y="18" text-anchor="middle" font-size="13">{html.escape(title)}</text>')
    total = max((sum(row.count for row in rows) for rows in curves.values()), default=1) or 1
    for n, (name, rows) in enumerate(curves.items()):
        colour = _COLOURS[n % len(_COLOURS)]
        points = " ".join(f"{px(row.mean_confidence)},{py(row.accuracy)}" for row in rows)
        if points:
            parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for row in rows:
            radius = round(2 + 6 * (row.count / total) ** 0.5, 1)
            parts.append(
                f'<circle cx="{px(row.mean_confidence)}" cy="{py(row.accuracy)}" r="{radius}" fill="{colour}" '
                f'fill-opacity="0.7"><title>{html.escape(name)}: {row.count} answers, confidence '
                f"{row.mean_confidence:.2f}, accuracy {row.accuracy:.2f}</title></circle>"
            )
        legend_y = _MARGIN + 14 + 14 * n
        parts.append(f'<rect x="{_MARGIN + 8}" y="{legend_y - 8}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{_MARGIN + 22}" y="{legend_y + 1}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def svg_data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def reliability_markdown(calibration: TierCalibration) -> str:
    """Markdown for the Dagster UI: the reliability plot (raw against calibrated) and its table."""
    calibrator = calibration.calibrator
    name = calibrator.tier or "tier"
    svg = reliability_svg(
        {"raw": calibration.curve_raw, f"calibrated ({calibrator.method})": calibration.curve_calibrated},
        title=f"{name}: reliability",
    )
    who = " ".join(part for part in (f"**{name}**", calibrator.model, calibrator.prompt_version) if part)
    lines = [
        f"{who}: ECE {calibration.ece_raw:.3f} raw, "
        f"{calibration.ece_calibrated:.3f} calibrated (out-of-fold); calibrator {calibrator.version}: "
        f"{calibrator.reason}",
        "",
        f"![reliability of {name}]({svg_data_uri(svg)})",
        "",
        "| bin | raw: mean confidence | raw: accuracy | raw: answers | calibrated: mean confidence "
        "| calibrated: accuracy | calibrated: answers |",
        "|---|---|---|---|---|---|---|",
    ]
    raw = {row.bin: row for row in calibration.curve_raw}
    calibrated = {row.bin: row for row in calibration.curve_calibrated}
    for b in sorted(set(raw) | set(calibrated)):
        edges = raw.get(b) or calibrated[b]
        cells = [f"[{edges.lower:g}, {edges.upper:g}{']' if edges.upper >= 1 else ')'}"]
        for row in (raw.get(b), calibrated.get(b)):
            if row is None:
                cells += ["", "", "0"]
            else:
                cells += [f"{row.mean_confidence:.3f}", f"{row.accuracy:.3f}", str(row.count)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
