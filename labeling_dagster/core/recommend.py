"""The threshold recommender: the routing bands that reach a target accuracy at the least cost per
item, or the best accuracy a monthly budget buys, measured on the golden set's answers from every
tier and priced from the catalog. It proposes a `routing:` block; it never edits the project file.

Every golden item is routed exactly as production routes it (core/routing.py) under each candidate
set of bands. A bulk search ranks the candidates on the bands alone, with prefix sums. Under
quality.gate: certified the best of them are then certified as the golden run would certify them
(core/gate.py: each stage calibrated and certified on the golden items that reach it under those
bands) and routed item by item through those certificates, and only bands whose accepting stages
all hold one are recommended. The figure to read first is held out: bands chosen on one half of the
golden items, measured on the other.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml

from labeling_dagster.core.calibration import MIN_GOLDEN_ANSWERS, Calibrator
from labeling_dagster.core.certify import Certificate
from labeling_dagster.core.estimate import human_usd_per_review, usd_per_item
from labeling_dagster.core.gate import TierAnswers, certify_golden_path, signal_of
from labeling_dagster.core.labels import Answer
from labeling_dagster.core.routing import (
    UNCERTIFIED,
    StageGate,
    after_adjudication,
    after_first_pass,
    after_qa,
    audited,
)
from labeling_dagster.project import Project, Routing

BAND_KEYS = ("accept_at", "qa_at", "adjudicate_at", "qa_accept_at", "adjudication_accept_at")
LAYERS = ("first_pass", "qa", "adjudication", "human")
TIER_ROLES = ("first_pass", "qa", "adjudication")
# The band at or above which each stage may accept; at 1.0 it is closed as far as bands can close it.
ACCEPT_BAND = {"first_pass": "accept_at", "qa": "qa_accept_at", "adjudication": "adjudication_accept_at"}
CLOSED = 1.0
# Candidate band sets certified on the golden path per search (each costs a calibration and a
# certificate per stage; the held-out check's search has as many): the best by the bands alone first,
# in rounds (see _certified_search).
MAX_VERIFIED = 48


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class TierCosts:
    """USD per item for each tier (None: the project has no such tier) and for people (per item,
    all its annotators together)."""

    first_pass_usd: float
    human_usd: float
    qa_usd: float | None = None
    adjudication_usd: float | None = None

    @property
    def has_qa(self) -> bool:
        return self.qa_usd is not None

    @property
    def has_adjudication(self) -> bool:
        return self.adjudication_usd is not None


def tier_costs(
    project: Project, token_sizes: Mapping[str, tuple[int, ...]], *, batch: bool = False
) -> TierCosts:
    """Per-item USD of the project's tiers, priced with the project's catalog through
    core.estimate.usd_per_item, from token sizes per item for each tier role: (input, output) or
    (input, output, cached input), e.g. the ledger's averages over the golden run or
    core.estimate.estimate_tokens of the prompts; `batch` applies the batch-API discount. People
    from human_review. A local tier with no catalog price costs nothing per token."""
    usd: dict[str, float | None] = {}
    for role in TIER_ROLES:
        tier = project.tier(role)
        if tier is None:
            usd[role] = None
            continue
        price = project.price_catalog.models.get(tier.model)
        if price is None and tier.provider == "local":
            usd[role] = 0.0
            continue
        if role not in token_sizes:
            raise ValueError(
                f"token_sizes: no (input, output) tokens per item for tier {tier.name!r} (role {role}); "
                f"give one for each of {[t.role for t in project.tiers]}"
            )
        input_tokens, output_tokens, *cached = (int(n) for n in token_sizes[role])
        usd[role] = float(
            usd_per_item(
                project.price_catalog.price(tier.model),
                input_tokens,
                output_tokens,
                cached_input_tokens=cached[0] if cached else 0,
                batch=batch,
            )
        )
    review = project.human_review
    human = human_usd_per_review(review.hourly_rate_usd, review.reviews_per_hour) * review.annotators_per_item
    first_pass = usd["first_pass"]
    assert first_pass is not None  # the project file requires a first_pass tier
    return TierCosts(
        first_pass_usd=first_pass, human_usd=float(human), qa_usd=usd["qa"], adjudication_usd=usd["adjudication"]
    )


@dataclass(frozen=True)
class GoldenAnswers:
    """Every tier's answer on each golden item, with CALIBRATED confidence (what the bands compare).

    Built from a DataFrame (see from_frame) or a month's golden_labels rows (from_golden_labels); a
    missing label means the tier gave no usable answer. The QA answers must come from QA shown the
    first pass's answer, as in production. `raw`: role -> the tier's own confidence, which the
    certified gate recalibrates on each candidate's path (empty when the frame has none); `signals`:
    role -> the number its certificate compares (set by Certification.answers)."""

    item_id: np.ndarray
    gold: np.ndarray
    first_pass_label: np.ndarray
    first_pass_confidence: np.ndarray
    qa_label: np.ndarray
    qa_confidence: np.ndarray
    adjudication_label: np.ndarray
    adjudication_confidence: np.ndarray
    forced_human: np.ndarray
    has_qa_answers: bool
    has_adjudication_answers: bool
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    signals: dict[str, np.ndarray] = field(default_factory=dict)
    auto_accepted_items: int = 0  # golden items the auto-labeler settles: left out, the bands never see them

    def __len__(self) -> int:
        return len(self.item_id)

    def labels(self, role: str) -> np.ndarray:
        return getattr(self, f"{role}_label")

    def subset(self, keep: np.ndarray) -> GoldenAnswers:
        """The golden items where `keep` is True."""
        arrays = {name: getattr(self, name)[keep] for name in (
            "item_id", "gold", "first_pass_label", "first_pass_confidence", "qa_label", "qa_confidence",
            "adjudication_label", "adjudication_confidence", "forced_human")}
        return replace(self, **arrays, raw={role: values[keep] for role, values in self.raw.items()},
                       signals={role: values[keep] for role, values in self.signals.items()})

    def halves(self) -> tuple[GoldenAnswers, GoldenAnswers]:
        """Two halves by a hash of the item id: the same split on every run and machine."""
        first = np.array([int(hashlib.sha256(item.encode()).hexdigest()[:8], 16) % 2 == 0 for item in self.item_id],
                         dtype=bool)
        return self.subset(first), self.subset(~first)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> GoldenAnswers:
        """Columns: item_id, gold, first_pass_label, first_pass_confidence; optional qa_label,
        qa_confidence, adjudication_label, adjudication_confidence, <role>_raw_confidence (what the
        certified gate needs), forced_human (True where an always_human_when rule matches the item:
        routing.forced_human) and auto_accepted (True where the auto-labeler settles the item: such
        rows are left out, since no tier and no band ever sees them)."""
        required = ["item_id", "gold", "first_pass_label", "first_pass_confidence"]
        missing = [column for column in required if column not in frame.columns]
        if missing:
            raise ValueError(
                f"golden answers: column(s) {missing} missing; expected {required} and optional tier columns"
            )
        if frame["item_id"].duplicated().any():
            duplicate = frame.loc[frame["item_id"].duplicated(), "item_id"].iloc[0]
            raise ValueError(f"golden answers: item {duplicate!r} appears twice; give one row per golden item")
        if len(frame) == 0:
            raise ValueError("golden answers: no rows; label the golden set with each tier first")
        auto_accepted = 0
        if "auto_accepted" in frame.columns:
            auto = frame["auto_accepted"].fillna(False).astype(bool).to_numpy()
            if auto.all():
                raise ValueError("golden answers: the auto-labeler settles every golden item; none reaches a tier, "
                                 "so there are no bands to recommend")
            auto_accepted, frame = int(auto.sum()), frame[~auto].reset_index(drop=True)

        def labels(column: str) -> np.ndarray:
            if column not in frame.columns:
                return np.full(len(frame), None, dtype=object)
            return np.array([None if _blank(v) else str(v) for v in frame[column]], dtype=object)

        def confidences(label_column: str, column: str) -> np.ndarray:
            present = labels(label_column)
            values = frame[column].to_numpy(dtype=float) if column in frame.columns else np.full(len(frame), np.nan)
            for row, (label, value) in enumerate(zip(present, values)):
                if label is not None and not (0 <= value <= 1):
                    raise ValueError(
                        f"golden answers: item {frame['item_id'].iloc[row]!r}: {column} is {float(value)!r}; "
                        "a labeled answer needs a confidence between 0 and 1"
                    )
            return np.where([label is None for label in present], np.nan, values)

        gold = labels("gold")
        if any(g is None for g in gold):
            row = next(n for n, g in enumerate(gold) if g is None)
            raise ValueError(f"golden answers: item {frame['item_id'].iloc[row]!r} has no gold label")
        forced = (
            frame["forced_human"].fillna(False).astype(bool).to_numpy()
            if "forced_human" in frame.columns
            else np.zeros(len(frame), dtype=bool)
        )
        return cls(
            item_id=np.array([str(v) for v in frame["item_id"]], dtype=object),
            gold=gold,
            first_pass_label=labels("first_pass_label"),
            first_pass_confidence=confidences("first_pass_label", "first_pass_confidence"),
            qa_label=labels("qa_label"),
            qa_confidence=confidences("qa_label", "qa_confidence"),
            adjudication_label=labels("adjudication_label"),
            adjudication_confidence=confidences("adjudication_label", "adjudication_confidence"),
            forced_human=forced,
            has_qa_answers="qa_label" in frame.columns,
            has_adjudication_answers="adjudication_label" in frame.columns,
            raw={role: confidences(f"{role}_label", f"{role}_raw_confidence") for role in TIER_ROLES
                 if f"{role}_raw_confidence" in frame.columns},
            auto_accepted_items=auto_accepted,
        )

    @classmethod
    def from_golden_labels(cls, rows: pd.DataFrame) -> GoldenAnswers:
        """One month's golden_labels rows (one per item and tier): each tier's label, calibrated and raw
        confidence; items whose golden path ends at the auto-labeler (outcome auto_label) are left out."""
        if not len(rows):
            raise ValueError("golden answers: no golden_labels rows; run the month's golden run first")
        items = rows.drop_duplicates("item_id").set_index("item_id")
        wide = items[["gold", "forced_human"]].copy()
        if "outcome" in items.columns:
            wide["auto_accepted"] = items["outcome"] == "auto_label"
        for role in TIER_ROLES:
            part = rows[rows["role"] == role].set_index("item_id")
            if len(part):
                wide[f"{role}_label"] = part["label"]
                wide[f"{role}_confidence"] = part["confidence"]
                wide[f"{role}_raw_confidence"] = part["raw_confidence"]
        return cls.from_frame(wide.reset_index())


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or str(value) == ""


def _check_inputs(golden: GoldenAnswers, costs: TierCosts) -> None:
    for role, has_tier, has_answers in (
        ("qa", costs.has_qa, golden.has_qa_answers),
        ("adjudication", costs.has_adjudication, golden.has_adjudication_answers),
    ):
        if has_tier and not has_answers:
            raise ValueError(
                f"golden answers: the project has a {role} tier but the frame has no {role}_label column; "
                f"label the golden set with the {role} tier first (or price it as absent: {role}_usd=None)"
            )


def _check_certifiable(golden: GoldenAnswers, costs: TierCosts, project: Project) -> None:
    """The certified gate recalibrates every tier from its raw confidence; the costs and the project must
    name the same tiers."""
    for role, priced in (("first_pass", True), ("qa", costs.has_qa), ("adjudication", costs.has_adjudication)):
        if (project.tier(role) is not None) != priced:
            raise ValueError(
                f"the project {'has' if project.tier(role) else 'has no'} {role} tier but the costs "
                f"{'do not price one' if project.tier(role) else 'price one'}; build them with tier_costs(project, ...)"
            )
        if priced and role not in golden.raw:
            raise ValueError(
                f"golden answers: quality.gate certified calibrates and certifies each tier on the path of each "
                f"candidate set of bands and needs its raw confidences: column {role}_raw_confidence missing "
                "(golden_labels rows carry it as raw_confidence)"
            )


# --------------------------------------------------------------------------- the certified gate


@dataclass(frozen=True)
class Certification:
    """What the golden run would certify under one set of bands (core/gate.py): per stage, the
    calibrator and the certificate fitted on the golden items that reach it by the production route.
    `project` is the project with those bands."""

    project: Project
    calibrators: dict[str, Calibrator | None]
    certificates: dict[str, Certificate]

    def gates(self, mode: Literal["certified", "bands"] = "certified") -> dict[str, StageGate]:
        """Each stage's gate as production builds it (assets/tiers.stage_gate), audit share included;
        `mode` bands: the same stages judged by the bands alone."""
        quality, none_label = self.project.quality, self.project.taxonomy.none_label
        share = quality.audit_share if mode == "certified" else 0.0
        return {role: StageGate(role, mode, self.certificates.get(role), share, none_label) for role in TIER_ROLES}

    def answers(self, golden: GoldenAnswers) -> GoldenAnswers:
        """`golden` as these stages read it: each tier's raw confidence through this calibrator, and the
        signal its certificate compares. On other golden items than the ones certified on, this is
        what a new month's items get."""
        updates: dict[str, np.ndarray] = {}
        signals: dict[str, np.ndarray] = {}
        earlier: list[np.ndarray] = []
        for role in TIER_ROLES:
            tier = self.project.tier(role)
            if tier is None:
                continue
            labels, raw = golden.labels(role), golden.raw[role]
            calibrator = self.calibrators.get(role)
            answered = np.array([label is not None for label in labels], dtype=bool)
            values = np.nan_to_num(raw, nan=0.0)
            calibrated = calibrator.apply(values) if calibrator is not None else values
            updates[f"{role}_confidence"] = np.where(answered, calibrated, np.nan)
            signal = [signal_of(tier, labels[n], None if not answered[n] else float(raw[n]), [e[n] for e in earlier])
                      for n in range(len(golden))]
            signals[role] = np.array([np.nan if s is None else s for s in signal], dtype=float)
            earlier.append(labels)
        return replace(golden, **updates, signals=signals)

    def describe(self) -> str:
        """Per stage: what it may accept under these bands, or why it accepts nothing."""
        parts = []
        for role, certificate in self.certificates.items():
            if certificate.passed:
                parts.append(
                    f"{role} certified at {certificate.signal} >= {certificate.threshold:g} (accuracy lower bound "
                    f"{certificate.bound:.1%} on the {certificate.accepted} of {certificate.items} golden items "
                    f"reaching it that it accepts)"
                )
            elif getattr(self.project.routing, ACCEPT_BAND[role]) >= CLOSED:
                parts.append(f"{role} accepts nothing: its accept band is closed (1.0) and it holds no certificate")
            else:
                parts.append(f"{role} not certified, accepts nothing: {certificate.reason}")
        return "; ".join(parts)


def certify_bands(golden: GoldenAnswers, project: Project, routing: Routing) -> Certification:
    """Send the golden items down the cascade with `routing`'s bands, as the golden run does
    (core/gate.certify_golden_path), and keep each stage's calibrator and certificate."""
    candidate = project.model_copy(update={"routing": routing})
    answers = {
        role: TierAnswers(tier, list(golden.labels(role)),
                          [None if math.isnan(v) else float(v) for v in golden.raw[role]])
        for role in TIER_ROLES if (tier := candidate.tier(role)) is not None
    }
    path = certify_golden_path(
        candidate, list(golden.gold), answers, auto_accepted=[False] * len(golden),  # left out already
        forced=[bool(f) for f in golden.forced_human], item_ids=list(golden.item_id),
    )
    return Certification(candidate, {role: stage.calibrator for role, stage in path.stages.items()},
                         {role: stage.certificate for role, stage in path.stages.items()})


# --------------------------------------------------------------------------- outcome of one set of bands


@dataclass(frozen=True)
class BandOutcome:
    """What a set of bands does to the golden items that reach the tiers, as shares of them.

    settled: which layer gave each item its final label (sums to 1); seen: the share of items each
    layer is asked about (the rates of a `labeling estimate --mix` file). expected_accuracy is the
    accuracy of all final labels with people's counted at human_accuracy (1: counted right; shown as
    expected_accuracy_people_counted_right); accepted_accuracy is that of the labels the models
    accepted (None: none), which is what quality.target_accuracy and the certificates are about.
    certification: under quality.gate certified, the stages' calibrators and certificates under these
    bands, which the routing obeyed (None: the bands alone decided)."""

    routing: Routing
    golden_items: int
    expected_accuracy: float
    accepted_accuracy: float | None
    settled: dict[str, float]
    seen: dict[str, float]
    usd_per_item_by_layer: dict[str, float]
    items_per_month: int | None
    human_accuracy: float = 1.0
    certification: Certification | None = None

    @property
    def usd_per_item(self) -> float:
        return sum(self.usd_per_item_by_layer.values())

    @property
    def usd_per_month(self) -> float | None:
        return None if self.items_per_month is None else self.usd_per_item * self.items_per_month

    def bands(self) -> dict[str, float]:
        return {key: getattr(self.routing, key) for key in BAND_KEYS}

    def accuracy_text(self) -> str:
        """E.g. "accuracy 0.990 counting people's labels right, accepted labels 0.978"."""
        return _accuracy_text(self.expected_accuracy, self.accepted_accuracy, self.human_accuracy)

    def as_json(self) -> dict[str, Any]:
        return {
            "bands": self.bands(),
            "gate": "certified" if self.certification is not None else "bands",
            "golden_items": self.golden_items,
            "expected_accuracy_people_counted_right": self.expected_accuracy,
            "human_accuracy": self.human_accuracy,
            "accepted_accuracy": self.accepted_accuracy,
            "certificates": (
                {role: c.as_dict() for role, c in self.certification.certificates.items()}
                if self.certification is not None else None
            ),
            "settled": self.settled,
            "seen": self.seen,
            "usd_per_item": self.usd_per_item,
            "usd_per_item_by_layer": self.usd_per_item_by_layer,
            "items_per_month": self.items_per_month,
            "usd_per_month": self.usd_per_month,
        }


def _answer(item: str, label: str | None, confidence: float) -> Answer | None:
    return None if label is None else Answer(item, label, float(confidence))


def evaluate_bands(
    golden: GoldenAnswers,
    costs: TierCosts,
    routing: Routing,
    *,
    certification: Certification | None = None,
    human_accuracy: float = 1.0,
    items_per_month: int | None = None,
) -> BandOutcome:
    """Route every golden item through core/routing.py under `routing` and add up who settled it,
    whether its label is right, and what it cost. With `certification` (certify_bands under these
    bands, on these or other golden items) each stage reads its confidence through its calibrator and
    accepts only what its certificate allows, audit share included: what production does under
    quality.gate certified."""
    if certification is None:
        return _route_all(golden, costs, routing, UNCERTIFIED, human_accuracy, items_per_month)
    outcome = _route_all(certification.answers(golden), costs, routing, certification.gates(), human_accuracy,
                         items_per_month)
    return replace(outcome, certification=certification)


def _route_all(
    golden: GoldenAnswers, costs: TierCosts, routing: Routing, gates: Mapping[str, StageGate], human_accuracy: float,
    items_per_month: int | None,
) -> BandOutcome:
    _check_inputs(golden, costs)
    has_qa, has_adj = costs.has_qa, costs.has_adjudication
    per_layer_usd = {"first_pass": costs.first_pass_usd, "qa": costs.qa_usd or 0.0,
                     "adjudication": costs.adjudication_usd or 0.0, "human": costs.human_usd}
    seen = dict.fromkeys(LAYERS, 0)
    settled = dict.fromkeys(LAYERS, 0)
    expected_right = 0.0
    model_right = 0

    def signal(role: str, n: int) -> float | None:
        values = golden.signals.get(role)
        return None if values is None or math.isnan(values[n]) else float(values[n])

    for n in range(len(golden)):
        item = golden.item_id[n]
        first = _answer(item, golden.first_pass_label[n], golden.first_pass_confidence[n])
        seen["first_pass"] += 1
        step = after_first_pass(
            routing, item, first, "no usable answer", forced="forced" if golden.forced_human[n] else None,
            has_qa=has_qa, has_adjudication=has_adj, gate=gates["first_pass"], signal=signal("first_pass", n),
        ).next_step
        final = first
        if step == "qa":
            seen["qa"] += 1
            qa = _answer(item, golden.qa_label[n], golden.qa_confidence[n])
            step = after_qa(routing, qa, "no usable answer", first, has_adjudication=has_adj, item_id=item,
                            gate=gates["qa"], signal=signal("qa", n)).next_step
            layer, final = "qa", qa
        else:
            layer = "first_pass"
        if step == "adjudication":
            seen["adjudication"] += 1
            adjudicated = _answer(item, golden.adjudication_label[n], golden.adjudication_confidence[n])
            step = after_adjudication(routing, adjudicated, "no usable answer", item_id=item,
                                      gate=gates["adjudication"], signal=signal("adjudication", n)).next_step
            layer, final = "adjudication", adjudicated
        if step == "human":
            seen["human"] += 1
            settled["human"] += 1
            expected_right += human_accuracy
            continue
        assert final is not None  # routing accepts only an answer it was given
        settled[layer] += 1
        right = final.label == golden.gold[n]
        expected_right += right
        model_right += right
    total = len(golden)
    models = total - settled["human"]
    return BandOutcome(
        routing=routing,
        golden_items=total,
        expected_accuracy=expected_right / total,
        accepted_accuracy=model_right / models if models else None,
        settled={layer: settled[layer] / total for layer in LAYERS},
        seen={layer: seen[layer] / total for layer in LAYERS},
        usd_per_item_by_layer={layer: seen[layer] * per_layer_usd[layer] / total for layer in LAYERS},
        items_per_month=items_per_month,
        human_accuracy=human_accuracy,
    )


# --------------------------------------------------------------------------- candidate thresholds


def _cut(above: float | None, at: float | None) -> float:
    """The shortest decimal t with above < t <= at (above None: any t >= 0): a threshold that
    splits the golden confidences exactly there and reads well in the project file."""
    at = 1.0 if at is None else at
    at_d = Decimal(repr(at))
    for digits in range(1, 17):
        t = at_d.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_FLOOR)
        if above is None or t > Decimal(repr(above)):
            return float(t)
    return at


def _cuts(values: np.ndarray, limit: int, keep: tuple[float, ...] = ()) -> list[float]:
    """Candidate thresholds over some confidences, highest first, plus the `keep` values (the current
    thresholds, so the current bands are always a candidate).

    With the distinct values d0 > d1 > ... there is one way to split them per gap: above d0 (when
    d0 < 1), (d1, d0], ..., [0, d_last]. Up to `limit` gaps are taken evenly, both ends kept; when
    thinned, each candidate may sit anywhere in the gaps around it, which leaves room for a short
    decimal (0.92, not 0.9173)."""
    distinct = sorted({float(v) for v in values if not math.isnan(v)}, reverse=True)
    first = 0 if distinct and distinct[0] < 1 else 1
    gaps = range(first, len(distinct) + 1) if distinct else range(0)
    if len(gaps) > limit:
        chosen = [int(j) for j in np.unique(np.round(np.linspace(gaps[0], gaps[-1], limit)))]
        half = int((len(gaps) / limit - 1) // 2)
    else:
        chosen, half = list(gaps), 0

    def value(index: int) -> float | None:
        return 1.0 if index < 0 else None if index >= len(distinct) else distinct[index]

    cuts = {_cut(value(j + half), value(j - half - 1)) for j in chosen}
    return sorted(cuts | set(keep), reverse=True)


# --------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class _Scored:
    """Figures of candidate bands, one entry per candidate: USD per item, expected accuracy, share
    to people, and the bands (columns in BAND_KEYS order)."""

    usd: np.ndarray
    right: np.ndarray
    human: np.ndarray
    bands: np.ndarray

    def take(self, rows: list[int]) -> _Scored:
        return _Scored(self.usd[rows], self.right[rows], self.human[rows], self.bands[rows])

    @staticmethod
    def of(outcomes: list[BandOutcome]) -> _Scored:
        return _Scored(np.array([o.usd_per_item for o in outcomes]), np.array([o.expected_accuracy for o in outcomes]),
                       np.array([o.settled["human"] for o in outcomes]),
                       np.array([[o.bands()[key] for key in BAND_KEYS] for o in outcomes]))

    @staticmethod
    def concat(parts: list[_Scored]) -> _Scored:
        names = ("usd", "right", "human", "bands")
        return _Scored(*(np.concatenate([getattr(part, name) for part in parts]) for name in names))


@dataclass(frozen=True)
class _Goal:
    target_accuracy: float | None
    usd_per_item_budget: float | None
    max_human_share: float
    current_bands: np.ndarray

    def order(self, scored: _Scored) -> tuple[np.ndarray, np.ndarray]:
        """(the candidates reaching the goal, best first; every candidate, closest to the goal first).
        Closest: the most accurate (target) or the cheapest (budget), within the people cap when any is."""
        # Rounded so that float noise in sums never decides between equal candidates.
        usd, right, human = (np.round(a, 12) for a in (scored.usd, scored.right, scored.human))
        within_people = human <= self.max_human_share + 1e-12
        # Equal figures (a threshold no golden item lies near, the accept threshold of an empty
        # band): the thresholds closest to the current file, key by key, then the higher ones.
        distance = np.round(np.abs(scored.bands - self.current_bands), 12)
        columns = list(reversed(range(len(BAND_KEYS))))
        ties = [-scored.bands[:, c] for c in columns] + [distance[:, c] for c in columns]
        # np.lexsort sorts by its last key first.
        if self.target_accuracy is not None:
            goal = within_people & (right >= self.target_accuracy - 1e-12)
            ranked, closest = np.lexsort([*ties, human, -right, usd]), np.lexsort([*ties, human, usd, -right])
        else:
            assert self.usd_per_item_budget is not None
            goal = within_people & (usd <= self.usd_per_item_budget + 1e-12)
            ranked, closest = np.lexsort([*ties, human, usd, -right]), np.lexsort([*ties, human, -right, usd])
        pool = within_people if within_people.any() else np.ones(len(usd), dtype=bool)
        return ranked[goal[ranked]], np.concatenate([closest[pool[closest]], closest[~pool[closest]]])

    def pick(self, scored: _Scored) -> tuple[int | None, int]:
        """(best candidate reaching the goal or None, closest candidate otherwise)."""
        reaching, closest = self.order(scored)
        return (int(reaching[0]) if len(reaching) else None), int(closest[0])

    def reaches(self, outcome: BandOutcome) -> bool:
        return self.pick(_Scored.of([outcome]))[0] is not None


class _Paths:
    """Per golden item, what happens after the first pass sends it to accept / qa / adjudication /
    human: rows (extra USD beyond the first pass, expected right, to people), shape (3, items) each.
    Mirrors core/routing.py; the label comparisons are made once, only the accept thresholds vary."""

    def __init__(self, golden: GoldenAnswers, costs: TierCosts, routing: Routing, human_accuracy: float) -> None:
        n = len(golden)
        risky = set(routing.always_human_labels)

        def right(labels: np.ndarray) -> np.ndarray:
            return np.array([lab is not None and lab == g for lab, g in zip(labels, golden.gold)], dtype=float)

        self.costs = costs
        self.human = np.array([np.full(n, costs.human_usd), np.full(n, human_accuracy), np.ones(n)])
        self.adjudication_ok = np.array([lab is not None and lab not in risky for lab in golden.adjudication_label])
        self.adjudication_conf = np.nan_to_num(golden.adjudication_confidence, nan=-1.0)
        self.adjudication_right = right(golden.adjudication_label)
        self.qa_usable = np.array([lab is not None for lab in golden.qa_label])
        self.qa_risky = np.array([lab in risky for lab in golden.qa_label])
        self.qa_agrees = np.array([f is None or lab == f for lab, f in zip(golden.qa_label, golden.first_pass_label)])
        self.qa_conf = np.nan_to_num(golden.qa_confidence, nan=-1.0)
        self.qa_right = right(golden.qa_label)
        self.accept = np.array([np.zeros(n), right(golden.first_pass_label), np.zeros(n)])
        self.audited = (
            np.array([audited(item, routing.audit_rate) for item in golden.item_id])
            if costs.has_qa and routing.audit_rate > 0
            else np.zeros(n, dtype=bool)
        )
        self.zeros = np.zeros(n)

    def values(self, qa_accept_at: float, adjudication_accept_at: float) -> dict[str, np.ndarray]:
        costs = self.costs
        if costs.has_adjudication:
            settles = self.adjudication_ok & (self.adjudication_conf >= adjudication_accept_at)
            adjudication = np.where(settles, np.array([self.zeros, self.adjudication_right, self.zeros]), self.human)
            adjudication[0] += costs.adjudication_usd
        else:
            adjudication = self.human
        if costs.has_qa:
            settles = self.qa_usable & ~self.qa_risky & self.qa_agrees & (self.qa_conf >= qa_accept_at)
            unsettled = np.where(self.qa_usable & self.qa_risky, self.human, adjudication)
            qa = np.where(settles, np.array([self.zeros, self.qa_right, self.zeros]), unsettled)
            qa[0] += costs.qa_usd
        else:
            qa = adjudication
        accept = np.where(self.audited, qa, self.accept)
        return {"accept": accept, "qa": qa, "adjudication": adjudication, "human": self.human}


def _search(
    golden: GoldenAnswers, costs: TierCosts, routing: Routing, human_accuracy: float, goal: _Goal,
    max_cuts: int, max_accept_cuts: int, *, per_chunk: int = 1, closed: frozenset[str] = frozenset(),
) -> tuple[_Scored, int]:
    """Score every candidate set of bands on the bands alone; returns the per-chunk winners (the
    `per_chunk` best reaching the goal and the `per_chunk` closest; goal.order runs once more on them)
    and how many candidates were scored. Candidates are scored a chunk at a time (one pair of QA /
    adjudication accept thresholds) to keep memory small. The stages in `closed` keep their accept
    band at 1.0."""
    first_label, first_conf = golden.first_pass_label, golden.first_pass_confidence
    risky = set(routing.always_human_labels)
    # Items whose route does not depend on the first-pass bands: forced to people, a risky label,
    # or no usable first-pass answer (escalated to the next tier up, as routing.after_first_pass does).
    no_answer = np.array([lab is None for lab in first_label])
    fixed_human = golden.forced_human | (~no_answer & np.array([lab in risky for lab in first_label]))
    escalated = no_answer & ~golden.forced_human
    banded = ~no_answer & ~fixed_human
    order = np.flatnonzero(banded)[np.argsort(-first_conf[banded], kind="stable")]
    conf_sorted = first_conf[order]

    band_cuts = np.array(
        _cuts(conf_sorted, max_cuts, (routing.accept_at, routing.qa_at, routing.adjudicate_at, CLOSED))
    )
    above = np.array([int(np.sum(conf_sorted >= t)) for t in band_cuts])  # items at or above each cut
    qa_cuts = (
        [CLOSED] if "qa" in closed
        else _cuts(golden.qa_confidence, max_accept_cuts, (routing.qa_accept_at,)) if costs.has_qa
        else [routing.qa_accept_at]
    )
    adj_cuts = (
        [CLOSED] if "adjudication" in closed
        else _cuts(golden.adjudication_confidence, max_accept_cuts, (routing.adjudication_accept_at,))
        if costs.has_adjudication
        else [routing.adjudication_accept_at]
    )

    k = len(band_cuts)
    ia, iq, id_ = np.meshgrid(np.arange(k), np.arange(k), np.arange(k), indexing="ij")
    # Cuts are sorted high to low, so adjudicate_at <= qa_at <= accept_at is ia <= iq <= id_. Without
    # a QA tier its band stays empty, without an adjudication tier so does the adjudication band
    # (their items would go up anyway, and an empty band reads truthfully in the file).
    keep = (ia <= iq) & (iq <= id_)
    if not costs.has_qa:
        keep &= iq == ia
    if not costs.has_adjudication:
        keep &= id_ == iq
    if "first_pass" in closed:
        keep &= band_cuts[ia] == CLOSED
    ia, iq, id_ = ia[keep], iq[keep], id_[keep]
    ka, kq, kd = above[ia], above[iq], above[id_]

    paths = _Paths(golden, costs, routing, human_accuracy)
    n = len(golden)
    winners: list[_Scored] = []
    for qa_cut in qa_cuts:
        for adj_cut in adj_cuts:
            values = paths.values(qa_cut, adj_cut)
            fixed = values["human"][:, fixed_human].sum(axis=1) + values["qa"][:, escalated].sum(axis=1)
            prefix = {
                name: np.concatenate([np.zeros((3, 1)), np.cumsum(values[name][:, order], axis=1)], axis=1)
                for name in ("accept", "qa", "adjudication", "human")
            }
            total = (
                prefix["accept"][:, ka]
                + prefix["qa"][:, kq] - prefix["qa"][:, ka]
                + prefix["adjudication"][:, kd] - prefix["adjudication"][:, kq]
                + prefix["human"][:, -1:] - prefix["human"][:, kd]
                + fixed[:, None]
            )
            chunk = _Scored(
                usd=(total[0] + costs.first_pass_usd * n) / n,
                right=total[1] / n,
                human=total[2] / n,
                bands=np.column_stack(
                    [band_cuts[ia], band_cuts[iq], band_cuts[id_], np.full(len(ia), qa_cut), np.full(len(ia), adj_cut)]
                ),
            )
            reaching, closest = goal.order(chunk)
            winners.append(chunk.take([*reaching[:per_chunk], *closest[:per_chunk]]))
    return _Scored.concat(winners), len(ia) * len(qa_cuts) * len(adj_cuts)


# --------------------------------------------------------------------------- the recommendation


def _accuracy_text(expected: float, accepted: float | None, human_accuracy: float) -> str:
    people = "right" if human_accuracy == 1 else f"{human_accuracy:.0%} right"
    shown = "no label accepted by a model" if accepted is None else f"accepted labels {accepted:.3f}"
    return f"accuracy {expected:.3f} counting people's labels {people}, {shown}"


@dataclass(frozen=True)
class HeldOut:
    """Bands chosen on one half of the golden items by the same search (certified on that half) and
    measured on the other half (routed through that half's calibrators and certificates, as a new
    month's items are). The figure to read first: the in-sample ones are measured on the items the
    bands were chosen on, so they lean optimistic; this says by how much."""

    chosen_on: int
    measured_on: int
    accuracy_where_chosen: float
    accuracy_held_out: float
    human_share_held_out: float
    usd_per_item_held_out: float
    accepted_accuracy_where_chosen: float | None = None
    accepted_accuracy_held_out: float | None = None
    human_accuracy: float = 1.0

    @classmethod
    def measure(cls, chosen: BandOutcome, measured: BandOutcome) -> HeldOut:
        return cls(chosen.golden_items, measured.golden_items, chosen.expected_accuracy, measured.expected_accuracy,
                   measured.settled["human"], measured.usd_per_item, chosen.accepted_accuracy,
                   measured.accepted_accuracy, measured.human_accuracy)

    def describe(self) -> str:
        small = min(self.chosen_on, self.measured_on) < MIN_GOLDEN_ANSWERS
        return (
            f"held out: bands chosen the same way on {self.chosen_on} golden items, measured on the other "
            f"{self.measured_on}: "
            f"{_accuracy_text(self.accuracy_held_out, self.accepted_accuracy_held_out, self.human_accuracy)}, "
            f"{self.human_share_held_out:.1%} to people, ${self.usd_per_item_held_out:.6f} per item "
            f"(on the half they were chosen on: {self.accuracy_where_chosen:.3f})"
            + (f"; under {MIN_GOLDEN_ANSWERS} items a half, read with care" if small else "")
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "chosen_on": self.chosen_on,
            "measured_on": self.measured_on,
            "held_out": {
                "expected_accuracy_people_counted_right": self.accuracy_held_out,
                "accepted_accuracy": self.accepted_accuracy_held_out,
                "to_people": self.human_share_held_out,
                "usd_per_item": self.usd_per_item_held_out,
            },
            "where_chosen": {
                "expected_accuracy_people_counted_right": self.accuracy_where_chosen,
                "accepted_accuracy": self.accepted_accuracy_where_chosen,
            },
            "human_accuracy": self.human_accuracy,
        }


@dataclass(frozen=True)
class Recommendation:
    """The bands the recommender proposes (or, when nothing reaches the goal, the closest ones), with
    their figures on the golden set, and the current bands' figures for comparison. Under the certified
    gate `verified` candidates were certified on the golden path, and the stages in `closed` could not
    be, so the search kept their accept band at 1.0."""

    mode: Literal["target", "budget"]
    reached: bool
    reason: str
    outcome: BandOutcome
    current: BandOutcome
    target_accuracy: float | None
    monthly_budget_usd: float | None
    human_accuracy: float
    max_human_share: float
    candidates: int
    held_out: HeldOut | None = None
    held_out_note: str = ""  # why there is no held-out figure
    verified: int = 0
    closed: tuple[str, ...] = ()
    auto_accepted_items: int = 0

    @property
    def gate(self) -> str:
        return "certified" if self.outcome.certification is not None else "bands"

    def summary(self) -> list[str]:
        """What the recommended bands do: held out first (what a new month can expect), then in-sample,
        then what each stage may accept."""
        chosen = self.outcome
        reaching = " that reach the tiers (the auto-labeler settles the rest)" if self.auto_accepted_items else ""
        month = (
            f", ${chosen.usd_per_month:,.2f} a month for {chosen.items_per_month:,} items{reaching}"
            if chosen.items_per_month else ""
        )
        return [
            self.held_out.describe() if self.held_out is not None else f"held out: none ({self.held_out_note})",
            f"in-sample (chosen and measured on the same {chosen.golden_items} golden items): "
            f"{chosen.accuracy_text()}, {chosen.settled['human']:.1%} to people, ${chosen.usd_per_item:.6f} per item"
            f"{month}",
            f"certified on the golden path: {chosen.certification.describe()}" if chosen.certification is not None
            else "gate: the bands alone decide (quality.gate bands); no stage is certified",
        ]

    def to_yaml_snippet(self) -> str:
        """The `routing:` block to paste into the project file: the recommended bands, with the
        current file's rules (always_human_labels, always_human_when, audit_rate) kept as they are."""
        chosen = self.outcome
        current = self.current.routing.model_dump(mode="json", exclude_defaults=True)
        block = {**chosen.bands(), **{key: value for key, value in current.items() if key not in BAND_KEYS}}
        goal = (
            f"target accuracy {self.target_accuracy:g}" if self.mode == "target"
            else f"monthly budget ${self.monthly_budget_usd:,.2f}"
        )
        left_out = (
            f" ({self.auto_accepted_items} more that the auto-labeler settles left out)" if self.auto_accepted_items
            else ""
        )
        header = [
            f"# {'Recommended' if self.reached else 'NOT reaching the goal; closest'} "
            f"{'certified ' if self.gate == 'certified' else ''}bands for {goal}, "
            f"from {chosen.golden_items} golden items{left_out}:",
            *[f"# {line}" for line in self.summary()],
        ]
        if not self.reached:
            header.append(f"# {self.reason}")
        return "\n".join(header) + "\n" + yaml.safe_dump({"routing": block}, sort_keys=False, default_flow_style=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reached": self.reached,
            "reason": self.reason,
            "gate": self.gate,
            "held_out": self.held_out.as_json() if self.held_out is not None else None,
            "held_out_note": self.held_out_note,
            "target_accuracy": self.target_accuracy,
            "monthly_budget_usd": self.monthly_budget_usd,
            "human_accuracy": self.human_accuracy,
            "max_human_share": self.max_human_share,
            "candidates": self.candidates,
            "verified": self.verified,
            "closed": list(self.closed),
            "auto_accepted_items": self.auto_accepted_items,
            "recommended": self.outcome.as_json(),
            "current": self.current.as_json(),
        }


def recommend_bands(
    golden: GoldenAnswers,
    costs: TierCosts,
    *,
    target_accuracy: float | None = None,
    monthly_budget_usd: float | None = None,
    items_per_month: int | None = None,
    routing: Routing | None = None,
    human_accuracy: float = 1.0,
    max_human_share: float = 1.0,
    max_cuts: int = 40,
    max_accept_cuts: int = 12,
    check_held_out: bool = True,
    project: Project | None = None,
    max_verified: int = MAX_VERIFIED,
) -> Recommendation:
    """Choose accept_at, qa_at, adjudicate_at, qa_accept_at and adjudication_accept_at.

    Target mode (`target_accuracy`): the least expected USD per item whose expected accuracy of all
    final labels (people's counted at `human_accuracy`) reaches the target. Budget mode
    (`monthly_budget_usd` and `items_per_month`): the highest expected accuracy whose monthly cost
    fits the budget. Both keep the share sent to people at or under `max_human_share`. Ties go to
    higher accuracy / lower cost, then fewer items to people, then the thresholds closest to the
    current ones (so a threshold the golden set cannot tell apart stays as it is).

    `routing` (default: the project's) is the current routing: its rules (risky labels, audit rate)
    apply to every candidate and its bands are evaluated as `current`. Candidate thresholds come from
    the golden confidences (at most `max_cuts` per band, `max_accept_cuts` for the QA and adjudication
    accept thresholds); the search is exhaustive over them on the bands alone, and deterministic.

    With a `project` whose quality.gate is certified (it needs the raw confidences), bands are
    searched only among certified ones: the best candidates on the bands alone, at most
    `max_verified` of them, are certified on the golden path and routed with their certificates, and
    the first whose figures still reach the goal and whose accepting stages all hold a passed
    certificate is recommended (_certified_search). Its figures and the current bands' are then
    certified ones. Without a project, or with quality.gate bands, the bands alone decide.

    With `check_held_out` and at least twice MIN_GOLDEN_ANSWERS golden items, the same search also
    runs on one half of the golden items and its bands are measured on the other half (`held_out`)."""
    if (target_accuracy is None) == (monthly_budget_usd is None):
        raise ValueError("give exactly one of target_accuracy (e.g. 0.95) or monthly_budget_usd")
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy}")
    if monthly_budget_usd is not None and (items_per_month is None or items_per_month <= 0 or monthly_budget_usd < 0):
        raise ValueError("budget mode needs monthly_budget_usd >= 0 and items_per_month > 0")
    if not 0 <= human_accuracy <= 1 or not 0 <= max_human_share <= 1:
        raise ValueError("human_accuracy and max_human_share must be between 0 and 1")
    _check_inputs(golden, costs)
    if items_per_month and golden.auto_accepted_items:
        # the auto-labeler settles its share of the month (locally, for nothing) before any band sees it:
        # the month's bill is for the items that reach the tiers, in the golden sample's proportion
        items_per_month = round(items_per_month * len(golden) / (len(golden) + golden.auto_accepted_items))
    routing = routing or (project.routing if project is not None else Routing())
    certified = project is not None and project.quality.gate == "certified"
    if certified:
        _check_certifiable(golden, costs, project)

    goal = _Goal(
        target_accuracy=target_accuracy,
        usd_per_item_budget=None if monthly_budget_usd is None else monthly_budget_usd / items_per_month,
        max_human_share=max_human_share,
        current_bands=np.array([getattr(routing, key) for key in BAND_KEYS]),
    )
    verified, closed = 0, ()
    if certified:
        certification = certify_bands(golden, project, routing)
        current = evaluate_bands(golden, costs, routing, certification=certification, human_accuracy=human_accuracy,
                                 items_per_month=items_per_month)
        # The search ranks on the confidences the current bands' path calibrates (what the golden run
        # stored): exact for the first pass, whose calibration no band changes; near for the tiers after it.
        outcome, reached, candidates, verified, closed = _certified_search(
            certification.answers(golden), costs, routing, project, goal, human_accuracy, items_per_month, max_cuts,
            max_accept_cuts, max_verified,
        )
        within_people_cap = outcome.settled["human"] <= max_human_share + 1e-12
    else:
        winners, candidates = _search(golden, costs, routing, human_accuracy, goal, max_cuts, max_accept_cuts)
        best, closest = goal.pick(winners)
        reached = best is not None
        chosen = best if best is not None else closest
        within_people_cap = bool(winners.human[chosen] <= max_human_share + 1e-12)
        outcome = evaluate_bands(golden, costs, _routing_with(routing, winners.bands[chosen]),
                                 human_accuracy=human_accuracy, items_per_month=items_per_month)
        if not (math.isclose(outcome.usd_per_item, winners.usd[chosen], rel_tol=1e-9, abs_tol=1e-12)
                and math.isclose(outcome.expected_accuracy, winners.right[chosen], rel_tol=1e-9, abs_tol=1e-12)):
            raise RuntimeError(
                "recommender: the bulk search and core/routing.py disagree on the chosen bands "
                f"({outcome.usd_per_item} vs {winners.usd[chosen]} USD, "
                f"{outcome.expected_accuracy} vs {winners.right[chosen]} accuracy); "
                "the search no longer mirrors the routing rules, fix _Paths"
            )
        current = evaluate_bands(golden, costs, routing, human_accuracy=human_accuracy, items_per_month=items_per_month)
    reason = _reason(reached, outcome, target_accuracy, monthly_budget_usd, max_human_share, within_people_cap)
    if certified:
        reason += (
            f" Searched among certified bands: {candidates:,} candidates ranked on the bands alone, of which the best "
            f"{verified} went through the golden run's certification and were routed with their certificates (at "
            f"most {max_verified} do)"
            + (f"; {' and '.join(closed)} could not be certified, so the search closed its accept band (1.0)"
               if closed else "")
            + "."
        )
    if len(golden) < MIN_GOLDEN_ANSWERS:
        reason += (
            f" Only {len(golden)} golden items: every figure moves by 1/{len(golden)} per item; "
            f"label at least {MIN_GOLDEN_ANSWERS} before trusting these bands."
        )
    held_out, note = None, ""
    if not check_held_out:
        note = "not asked for"
    elif len(golden) < 2 * MIN_GOLDEN_ANSWERS:
        note = (f"{len(golden)} golden items; {2 * MIN_GOLDEN_ANSWERS} are needed to choose on one half and measure "
                "on the other")
    else:
        choose_on, measure_on = golden.halves()
        try:
            half = recommend_bands(
                choose_on, costs, target_accuracy=target_accuracy, monthly_budget_usd=monthly_budget_usd,
                items_per_month=items_per_month, routing=routing, human_accuracy=human_accuracy,
                max_human_share=max_human_share, max_cuts=max_cuts, max_accept_cuts=max_accept_cuts,
                check_held_out=False, project=project, max_verified=max_verified,
            )
            measured = evaluate_bands(measure_on, costs, half.outcome.routing, certification=half.outcome.certification,
                                      human_accuracy=human_accuracy, items_per_month=items_per_month)
            held_out = HeldOut.measure(half.outcome, measured)
        except Exception as exc:  # advisory: a half the search cannot use never costs the recommendation itself
            note = f"the search failed on half of the golden items: {exc}"
    return Recommendation(
        mode="target" if target_accuracy is not None else "budget",
        reached=reached,
        reason=reason,
        outcome=outcome,
        current=current,
        target_accuracy=target_accuracy,
        monthly_budget_usd=monthly_budget_usd,
        human_accuracy=human_accuracy,
        max_human_share=max_human_share,
        candidates=candidates,
        held_out=held_out,
        held_out_note=note,
        verified=verified,
        closed=closed,
        auto_accepted_items=golden.auto_accepted_items,
    )


def _routing_with(routing: Routing, bands: np.ndarray) -> Routing:
    chosen = routing.model_copy(update=dict(zip(BAND_KEYS, (float(v) for v in bands))))
    Routing.model_validate(chosen.model_dump())  # the bands keep their order; fail here, not in the file
    return chosen


def _verify(
    golden: GoldenAnswers, costs: TierCosts, routing: Routing, project: Project, human_accuracy: float,
    items_per_month: int | None,
) -> tuple[BandOutcome, list[str]]:
    """One candidate under the certified gate: its figures as production routes with its certificates,
    and the stages its bands open that hold no passed certificate. A band opens a stage when it is below
    1.0 and, the bands alone deciding, the stage accepts golden items; a band at 1.0 is as closed as
    bands can make it (its stage, if not certified, accepts nothing, which the figures already say)."""
    certification = certify_bands(golden, project, routing)
    outcome = evaluate_bands(golden, costs, routing, certification=certification, human_accuracy=human_accuracy,
                             items_per_month=items_per_month)
    by_bands = _route_all(certification.answers(golden), costs, routing, certification.gates("bands"),
                          human_accuracy, None)
    blocking = [
        role for role, certificate in certification.certificates.items()
        if not certificate.passed and getattr(routing, ACCEPT_BAND[role]) < CLOSED and by_bands.settled[role] > 0
    ]
    return outcome, blocking


def _certified_search(
    golden: GoldenAnswers, costs: TierCosts, routing: Routing, project: Project, goal: _Goal, human_accuracy: float,
    items_per_month: int | None, max_cuts: int, max_accept_cuts: int, max_verified: int,
) -> tuple[BandOutcome, bool, int, int, tuple[str, ...]]:
    """Bands searched only among certified ones. The bulk search ranks the candidates on the bands alone
    (a fast pre-filter: it knows no certificate); the best are verified one by one (_verify) until one
    passes: no stage it opens lacks a certificate, and its certified figures reach the goal.

    At most `max_verified` candidates are verified, in rounds of an equal share (one round per tier,
    plus one). A stage that cannot be certified turns down every candidate that opens it, and the next
    cheapest ones nearly always do; so when a round passes nothing, the stage that turned down the most
    of its candidates is closed (accept band 1.0) and the search runs again. In the last round every
    stage is closed, so its candidates hold up. When none reaches the goal, the closest of those that
    hold up. Returns (outcome, reached, candidates scored, candidates verified, stages closed)."""
    roles = [role for role in TIER_ROLES if project.tier(role) is not None]
    if max_verified < len(roles) + 1:
        raise ValueError(f"max_verified must be at least {len(roles) + 1} (a round per tier, plus one), "
                         f"got {max_verified}")
    per_round = max_verified // (len(roles) + 1)
    closed: list[str] = []
    verdicts: dict[tuple[float, ...], tuple[BandOutcome, list[str]]] = {}
    scored = 0
    while True:
        winners, count = _search(golden, costs, routing, human_accuracy, goal, max_cuts, max_accept_cuts,
                                 per_chunk=per_round, closed=frozenset(closed))
        scored += count
        reaching, closest = goal.order(winners)
        blocked: Counter[str] = Counter()
        tried = 0
        for index in reaching if len(reaching) else closest:
            bands = tuple(float(v) for v in winners.bands[index])
            if bands not in verdicts:
                if tried == per_round or len(verdicts) == max_verified:
                    break
                tried += 1
                verdicts[bands] = _verify(golden, costs, _routing_with(routing, winners.bands[index]), project,
                                          human_accuracy, items_per_month)
            outcome, blocking = verdicts[bands]
            if not blocking and goal.reaches(outcome):
                return outcome, True, scored, len(verdicts), tuple(closed)
            blocked.update(blocking)
        still_open = [role for role in roles if blocked[role] and role not in closed]
        if not still_open or len(verdicts) >= max_verified:
            break
        closed.append(max(still_open, key=lambda role: blocked[role]))  # ties: the earliest stage
    sound = [outcome for outcome, blocking in verdicts.values() if not blocking]
    assert sound, "the last round, every stage closed, verifies a candidate that holds up"
    _, closest_index = goal.pick(_Scored.of(sound))
    return sound[closest_index], False, scored, len(verdicts), tuple(closed)


def recommend(
    project: Project,
    golden: pd.DataFrame,
    token_sizes: Mapping[str, tuple[int, ...]],
    *,
    target_accuracy: float | None = None,
    monthly_budget_usd: float | None = None,
    items_per_month: int | None = None,
) -> Recommendation:
    """Bands for a target accuracy (default: quality.target_accuracy) or a monthly budget, from one
    month's golden_labels rows, under the project's quality.gate: what `labeling recommend`,
    `labeling estimate --project` and the quality report show."""
    if monthly_budget_usd is None and target_accuracy is None:
        target_accuracy = project.quality.target_accuracy
    return recommend_bands(
        GoldenAnswers.from_golden_labels(golden),
        tier_costs(project, token_sizes),
        target_accuracy=target_accuracy,
        monthly_budget_usd=monthly_budget_usd,
        items_per_month=items_per_month,
        routing=project.routing,
        project=project,
    )


def _reason(
    reached: bool,
    outcome: BandOutcome,
    target_accuracy: float | None,
    monthly_budget_usd: float | None,
    max_human_share: float,
    people_cap_met: bool,
) -> str:
    cost = f"${outcome.usd_per_item:.6f} per item" + (
        f" (${outcome.usd_per_month:,.2f} a month)" if outcome.usd_per_month is not None else ""
    )
    people = f"{outcome.settled['human']:.1%} to people"
    cap = f" with at most {max_human_share:.0%} to people" if max_human_share < 1 else ""
    bands = "certified bands" if outcome.certification is not None else "bands"
    figures = outcome.accuracy_text()
    if not people_cap_met:
        return (
            f"No {bands} keep people at or under {max_human_share:.0%}: the golden items forced to people or with "
            f"no model able to settle them already exceed it; closest: {people}, {cost}."
        )
    if target_accuracy is not None:
        if reached:
            return f"Cheapest {bands} reaching {target_accuracy:g}{cap}: {figures}, {people}, {cost}."
        return (
            f"No {bands} reach {target_accuracy:g}{cap}: the best reach {figures} ({people}, {cost}). "
            "Lower the target, allow more to people, or improve the tiers."
        )
    if reached:
        return f"Most accurate {bands} within ${monthly_budget_usd:,.2f} a month{cap}: {figures}, {people}, {cost}."
    return (
        f"No {bands} fit ${monthly_budget_usd:,.2f} a month{cap}: the cheapest cost {cost}, {figures}. "
        "Raise the budget or use cheaper tiers."
    )
