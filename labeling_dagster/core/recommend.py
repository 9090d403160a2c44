"""The threshold recommender: the routing bands that reach a target accuracy at the least cost per
item, or the best accuracy a monthly budget buys, measured on the golden set's answers from every
tier and priced from the catalog. It proposes a `routing:` block; it never edits the project file.

Every golden item is routed exactly as production routes it (core/routing.py) under each candidate
set of bands; the search evaluates the candidates in bulk with prefix sums, and the chosen bands'
figures are recomputed item by item through the routing functions themselves.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml

from labeling_dagster.core import routing as gate
from labeling_dagster.core.calibration import MIN_GOLDEN_ANSWERS
from labeling_dagster.core.estimate import human_usd_per_review, usd_per_item
from labeling_dagster.core.labels import Answer
from labeling_dagster.project import Project, Routing

BAND_KEYS = ("accept_at", "qa_at", "adjudicate_at", "qa_accept_at", "adjudication_accept_at")
LAYERS = ("first_pass", "qa", "adjudication", "human")
TIER_ROLES = ("first_pass", "qa", "adjudication")


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

    Built from a DataFrame (see from_frame); a missing label means the tier gave no usable answer.
    The QA answers must come from QA shown the first pass's answer, as in production."""

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

    def __len__(self) -> int:
        return len(self.item_id)

    def subset(self, keep: np.ndarray) -> GoldenAnswers:
        """The golden items where `keep` is True."""
        arrays = {name: getattr(self, name)[keep] for name in (
            "item_id", "gold", "first_pass_label", "first_pass_confidence", "qa_label", "qa_confidence",
            "adjudication_label", "adjudication_confidence", "forced_human")}
        return replace(self, **arrays)

    def halves(self) -> tuple[GoldenAnswers, GoldenAnswers]:
        """Two halves by a hash of the item id: the same split on every run and machine."""
        first = np.array([int(hashlib.sha256(item.encode()).hexdigest()[:8], 16) % 2 == 0 for item in self.item_id],
                         dtype=bool)
        return self.subset(first), self.subset(~first)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> GoldenAnswers:
        """Columns: item_id, gold, first_pass_label, first_pass_confidence; optional qa_label,
        qa_confidence, adjudication_label, adjudication_confidence, and forced_human (True where an
        always_human_when rule matches the item: routing.forced_human)."""
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
                        "a labeled answer needs a calibrated confidence between 0 and 1"
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
        )


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


# --------------------------------------------------------------------------- outcome of one set of bands


@dataclass(frozen=True)
class BandOutcome:
    """What a set of bands does to the golden items, as shares of all items.

    settled: which layer gave each item its final label (sums to 1); seen: the share of items each
    layer is asked about (the rates of a `labeling estimate --mix` file). expected_accuracy counts
    people's labels at human_accuracy; model_accuracy is the accuracy of the labels models settled."""

    routing: Routing
    golden_items: int
    expected_accuracy: float
    model_accuracy: float | None
    settled: dict[str, float]
    seen: dict[str, float]
    usd_per_item_by_layer: dict[str, float]
    items_per_month: int | None

    @property
    def usd_per_item(self) -> float:
        return sum(self.usd_per_item_by_layer.values())

    @property
    def usd_per_month(self) -> float | None:
        return None if self.items_per_month is None else self.usd_per_item * self.items_per_month

    def bands(self) -> dict[str, float]:
        return {key: getattr(self.routing, key) for key in BAND_KEYS}

    def as_json(self) -> dict[str, Any]:
        return {
            "bands": self.bands(),
            "golden_items": self.golden_items,
            "expected_accuracy": self.expected_accuracy,
            "model_accuracy": self.model_accuracy,
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
    human_accuracy: float = 1.0,
    items_per_month: int | None = None,
) -> BandOutcome:
    """Route every golden item through core/routing.py under `routing` and add up who settled it,
    whether its label is right, and what it cost."""
    _check_inputs(golden, costs)
    has_qa, has_adj = costs.has_qa, costs.has_adjudication
    per_layer_usd = {"first_pass": costs.first_pass_usd, "qa": costs.qa_usd or 0.0,
                     "adjudication": costs.adjudication_usd or 0.0, "human": costs.human_usd}
    seen = dict.fromkeys(LAYERS, 0)
    settled = dict.fromkeys(LAYERS, 0)
    expected_right = 0.0
    model_right = 0
    for n in range(len(golden)):
        item = golden.item_id[n]
        first = _answer(item, golden.first_pass_label[n], golden.first_pass_confidence[n])
        seen["first_pass"] += 1
        step = gate.after_first_pass(
            routing, item, first, "no usable answer", forced="forced" if golden.forced_human[n] else None,
            has_qa=has_qa, has_adjudication=has_adj,
        ).next_step
        final = first
        if step == "qa":
            seen["qa"] += 1
            qa = _answer(item, golden.qa_label[n], golden.qa_confidence[n])
            step = gate.after_qa(routing, qa, "no usable answer", first, has_adjudication=has_adj).next_step
            layer, final = "qa", qa
        else:
            layer = "first_pass"
        if step == "adjudication":
            seen["adjudication"] += 1
            adjudicated = _answer(item, golden.adjudication_label[n], golden.adjudication_confidence[n])
            step = gate.after_adjudication(routing, adjudicated, "no usable answer").next_step
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
        model_accuracy=model_right / models if models else None,
        settled={layer: settled[layer] / total for layer in LAYERS},
        seen={layer: seen[layer] / total for layer in LAYERS},
        usd_per_item_by_layer={layer: seen[layer] * per_layer_usd[layer] / total for layer in LAYERS},
        items_per_month=items_per_month,
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
    def concat(parts: list[_Scored]) -> _Scored:
        names = ("usd", "right", "human", "bands")
        return _Scored(*(np.concatenate([getattr(part, name) for part in parts]) for name in names))


@dataclass(frozen=True)
class _Goal:
    target_accuracy: float | None
    usd_per_item_budget: float | None
    max_human_share: float
    current_bands: np.ndarray

    def pick(self, scored: _Scored) -> tuple[int | None, int]:
        """(best candidate reaching the goal or None, closest candidate otherwise). Closest: the
        most accurate (target) or the cheapest (budget), within the people cap when any is."""
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
        best = int(ranked[goal[ranked]][0]) if goal.any() else None
        pool = within_people if within_people.any() else np.ones(len(usd), dtype=bool)
        return best, int(closest[pool[closest]][0])


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
            np.array([gate.audited(item, routing.audit_rate) for item in golden.item_id])
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
    max_cuts: int, max_accept_cuts: int,
) -> tuple[_Scored, int]:
    """Score every candidate set of bands; returns the per-chunk winners (goal.pick runs once more
    on them) and how many candidates were scored. Candidates are scored a chunk at a time (one pair
    of QA / adjudication accept thresholds) to keep memory small."""
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

    band_cuts = np.array(_cuts(conf_sorted, max_cuts, (routing.accept_at, routing.qa_at, routing.adjudicate_at)))
    above = np.array([int(np.sum(conf_sorted >= t)) for t in band_cuts])  # items at or above each cut
    qa_cuts = (
        _cuts(golden.qa_confidence, max_accept_cuts, (routing.qa_accept_at,)) if costs.has_qa
        else [routing.qa_accept_at]
    )
    adj_cuts = (
        _cuts(golden.adjudication_confidence, max_accept_cuts, (routing.adjudication_accept_at,))
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
            best, closest = goal.pick(chunk)
            winners.append(chunk.take([closest] if best is None else [best, closest]))
    return _Scored.concat(winners), len(ia) * len(qa_cuts) * len(adj_cuts)


# --------------------------------------------------------------------------- the recommendation


@dataclass(frozen=True)
class HeldOut:
    """How bands chosen on one half of the golden items do on the other half: the recommender's figures
    are measured on the items it chose the bands on, so they lean optimistic; this says by how much."""

    chosen_on: int
    measured_on: int
    accuracy_where_chosen: float
    accuracy_held_out: float
    human_share_held_out: float
    usd_per_item_held_out: float

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Recommendation:
    """The bands the recommender proposes (or, when nothing reaches the goal, the closest ones), with
    their figures on the golden set, and the current bands' figures for comparison."""

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
    held_out: HeldOut | None = None  # None when the golden set is too small to halve

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
        header = [
            f"# {'Recommended' if self.reached else 'NOT reaching the goal; closest'} bands for {goal}, "
            f"from {chosen.golden_items} golden items:",
            f"# expected accuracy {chosen.expected_accuracy:.3f}, to people {chosen.settled['human']:.1%}, "
            f"${chosen.usd_per_item:.6f} per item"
            + (
                f", ${chosen.usd_per_month:,.2f} a month for {chosen.items_per_month:,} items."
                if chosen.items_per_month
                else "."
            ),
        ]
        if self.held_out is not None:
            check = self.held_out
            header.append(
                f"# held out: bands chosen on {check.chosen_on} golden items the same way reach "
                f"{check.accuracy_where_chosen:.3f} there and {check.accuracy_held_out:.3f} on the other "
                f"{check.measured_on} (to people {check.human_share_held_out:.1%})"
                + (f"; under {MIN_GOLDEN_ANSWERS} items a half, read with care." if min(check.chosen_on, check.measured_on)
                   < MIN_GOLDEN_ANSWERS else ".")
            )
        if not self.reached:
            header.append(f"# {self.reason}")
        return "\n".join(header) + "\n" + yaml.safe_dump({"routing": block}, sort_keys=False, default_flow_style=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reached": self.reached,
            "reason": self.reason,
            "target_accuracy": self.target_accuracy,
            "monthly_budget_usd": self.monthly_budget_usd,
            "human_accuracy": self.human_accuracy,
            "max_human_share": self.max_human_share,
            "candidates": self.candidates,
            "recommended": self.outcome.as_json(),
            "current": self.current.as_json(),
            "held_out": self.held_out.as_json() if self.held_out is not None else None,
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
) -> Recommendation:
    """Choose accept_at, qa_at, adjudicate_at, qa_accept_at and adjudication_accept_at.

    Target mode (`target_accuracy`): the least expected USD per item whose expected accuracy of all
    final labels (people's counted at `human_accuracy`) reaches the target. Budget mode
    (`monthly_budget_usd` and `items_per_month`): the highest expected accuracy whose monthly cost
    fits the budget. Both keep the share sent to people at or under `max_human_share`. Ties go to
    higher accuracy / lower cost, then fewer items to people, then the thresholds closest to the
    current ones (so a threshold the golden set cannot tell apart stays as it is).

    `routing` is the project's current routing: its rules (risky labels, audit rate) apply to every
    candidate and its bands are evaluated as `current`. Candidate thresholds come from the golden
    confidences (at most `max_cuts` per band, `max_accept_cuts` for the QA and adjudication accept
    thresholds); the search is exhaustive over them and deterministic.

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
    routing = routing or Routing()

    goal = _Goal(
        target_accuracy=target_accuracy,
        usd_per_item_budget=None if monthly_budget_usd is None else monthly_budget_usd / items_per_month,
        max_human_share=max_human_share,
        current_bands=np.array([getattr(routing, key) for key in BAND_KEYS]),
    )
    winners, candidates = _search(golden, costs, routing, human_accuracy, goal, max_cuts, max_accept_cuts)
    best, closest = goal.pick(winners)
    reached = best is not None
    chosen = best if best is not None else closest
    within_people_cap = bool(winners.human[chosen] <= max_human_share + 1e-12)

    chosen_routing = routing.model_copy(update=dict(zip(BAND_KEYS, (float(v) for v in winners.bands[chosen]))))
    Routing.model_validate(chosen_routing.model_dump())  # the bands keep their order; fail here, not in the file
    outcome = evaluate_bands(
        golden, costs, chosen_routing, human_accuracy=human_accuracy, items_per_month=items_per_month
    )
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
    if len(golden) < MIN_GOLDEN_ANSWERS:
        reason += (
            f" Only {len(golden)} golden items: every figure moves by 1/{len(golden)} per item; "
            f"label at least {MIN_GOLDEN_ANSWERS} before trusting these bands."
        )
    held_out = None
    if check_held_out and len(golden) >= 2 * MIN_GOLDEN_ANSWERS:
        choose_on, measure_on = golden.halves()
        try:
            half = recommend_bands(
                choose_on, costs, target_accuracy=target_accuracy, monthly_budget_usd=monthly_budget_usd,
                items_per_month=items_per_month, routing=routing, human_accuracy=human_accuracy,
                max_human_share=max_human_share, max_cuts=max_cuts, max_accept_cuts=max_accept_cuts,
                check_held_out=False,
            )
            measured = evaluate_bands(measure_on, costs, half.outcome.routing, human_accuracy=human_accuracy,
                                      items_per_month=items_per_month)
            held_out = HeldOut(len(choose_on), len(measure_on), half.outcome.expected_accuracy,
                               measured.expected_accuracy, measured.settled["human"], measured.usd_per_item)
        except Exception:  # advisory: a half the search cannot use never costs the recommendation itself
            held_out = None
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
    if not people_cap_met:
        return (
            f"No bands keep people at or under {max_human_share:.0%}: the golden items forced to people or with "
            f"no model able to settle them already exceed it; closest: {people}, {cost}."
        )
    if target_accuracy is not None:
        if reached:
            return (
                f"Cheapest bands reaching {target_accuracy:g}{cap}: expected accuracy "
                f"{outcome.expected_accuracy:.3f}, {people}, {cost}."
            )
        return (
            f"No bands reach {target_accuracy:g}{cap}: the best reach {outcome.expected_accuracy:.3f} "
            f"({people}, {cost}). Lower the target, allow more to people, or improve the tiers."
        )
    if reached:
        return (
            f"Most accurate bands within ${monthly_budget_usd:,.2f} a month{cap}: expected accuracy "
            f"{outcome.expected_accuracy:.3f}, {people}, {cost}."
        )
    return (
        f"No bands fit ${monthly_budget_usd:,.2f} a month{cap}: the cheapest cost {cost}, "
        f"expected accuracy {outcome.expected_accuracy:.3f}. Raise the budget or use cheaper tiers."
    )
