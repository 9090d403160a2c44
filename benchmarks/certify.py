"""Does the certified gate keep its promise? Twelve SIMULATED months of banking77 through the cascade
(the real local auto-labeler, then SIMULATED first-pass, QA and adjudication tiers), each stage
certified every month on the golden items that reach it (core/gate.certify_golden_path), against
today's calibration (each tier calibrated on the whole golden sample, fixed bands, the auto-labeler's
old threshold scan).

Data (../shared/data/banking77): per seed, SEED_LABELS items of train.csv drawn at random are the
auto-labeler's human labels (cross-fit, threshold by core/autolabel.choose_threshold); the rest of
train.csv, shuffled, cut into 12 months, is the stream; test.csv is the golden set, of which a fixed
sample (500 and 1,000 items, one per seed) is labeled by every tier every month. The realized accuracy
of what a stage accepts is measured on the stream's own gold labels.

SIMULATED tiers (no model is called): each item has a latent difficulty d in [0, 1], 0.25 x (1 - the
local model's top-two probability margin) + 0.75 x a uniform draw, so the tiers find harder what the
auto-labeler is unsure of (the items that reach them are harder than the golden sample as a whole).
A tier answers right with probability best - slope x d^2 (SIM_TIERS), else with the local model's
most probable wrong label (60%) or any other label; a wrong QA or adjudication repeats a wrong first
pass half the time (they are shown it); 1% of answers are unusable. The stated confidence is
overconfident: (best - slope x d^2 + N(0, 0.02)) ** 0.3, to 3 decimals. In months 7-12 the accuracy
drifts down by `drop` on a third of the labels (drawn per seed) while the stated confidence does not
change; the golden sample is answered afresh every month by the same drifted tiers, so the
certificates see it.

Scenario 2 (out of scope): texts from ../shared/data/sms_spam_collection (deduplicated), gold label
`none_of_these`, make up 1% of months 1-6 and 18% of months 7-12 (added to the banking77 items). A
SIMULATED tier answers none_of_these for `says_none` of them, else the local model's top label with
the stated confidence of an item of difficulty U(0.2, 1). The golden set has none of them. The
auto-labeler is the real model (and its novelty check, when core/autolabel has one).

Reported per seed, month, stage and gate: threshold, items reached and accepted, realized accuracy
(core/certify.realized) on the month's items and on the stage's population (every in-scope stream
item, answered afresh by that month's tiers and routed with that month's certificates: a stage
accepts tens of a month's items, too few to tell a certificate that misses from noise), out-of-scope
items accepted under an in-scope label, the certificate's golden evidence, and (certified gate)
core/shift.drift of each stage's month against its certificate's reference (the auto-labeler's: its
out-of-fold answers). The run fails (exit 1) when more than delta of the certified gate's (stage,
month) certificates accept below target on their population, when a month's out-of-scope items
accepted under an in-scope label exceed its error budget ((1 - target) x items accepted that month),
or when the model tiers' drift test does not first fire in month 7 of scenario 2.

Run: python -m benchmarks.certify [--quick] [--seeds N] [--jobs 2] [--out benchmarks/results/certify.json]
--quick: 1 seed, golden sample 500, 3 folds; default 6 seeds, golden samples 500 and 1,000, 5 folds.
--seed-labels and --stream-items make it smaller still (the test runs 1,200 and 2,400).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labeling_dagster.core import routing
from labeling_dagster.core.autolabel import accept, accuracy_lower_bound, choose_threshold, cross_fit
from labeling_dagster.core.calibration import fit_calibrator
from labeling_dagster.core.certify import certify, realized
from labeling_dagster.core.gate import ROLES, TierAnswers, certify_golden_path, signal_of
from labeling_dagster.core.labels import Answer, Item, content_hash
from labeling_dagster.project import Project

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "certify.json"
TARGET, DELTA = 0.95, 0.05  # the project defaults (quality.target_accuracy, quality.delta)
MONTHS, DRIFT_MONTH = 12, 7
NONE = "none_of_these"
SEED_LABELS = 2000
OUT_OF_SCOPE_SHARE = (0.01, 0.18)  # of months 1-6, of months 7-12
STAGES = ("auto_label", *ROLES)
GATES = ("certified", "certified_min100", "today")
GATE_TEXT = {
    "certified": "core/gate.certify_golden_path each month (quality.min_certify_items 30), routed with its "
    "certificates",
    "certified_min100": "the same with quality.min_certify_items 100 (auto-labeler: choose_threshold min_count 100): "
    "an alternative for the lead to weigh, not the default",
    "today": "each tier calibrated (isotonic) on the whole golden sample, routing bands alone (quality.gate bands: "
    "first pass calibrated >= accept_at 0.9, QA agrees at >= 0.8, adjudication >= 0.7), auto-labeler by the old "
    "threshold scan (scan_threshold)",
}
# The auto-labeler's threshold on its out-of-fold answers under other rules (coverage there and on the stream).
COARSE_GRID = (0.99, 0.98, 0.97, 0.96, 0.95, *(round(0.9 - 0.05 * i, 2) for i in range(18)))


@dataclass(frozen=True)
class SimTier:
    """A SIMULATED tier: P(right) = best - slope x difficulty (minus drop on drifted labels in months 7-12)."""

    role: str
    name: str
    provider: str
    model: str
    best: float
    slope: float
    drop: float
    says_none: float  # share of out-of-scope items it answers none_of_these


SIM_TIERS = (
    SimTier("first_pass", "nano", "openai", "gpt-5-nano", best=0.995, slope=0.45, drop=0.10, says_none=0.6),
    SimTier("qa", "haiku", "anthropic", "claude-haiku-4-5", best=0.995, slope=0.4, drop=0.08, says_none=0.7),
    SimTier("adjudication", "gpt52", "openai", "gpt-5.2", best=0.997, slope=0.3, drop=0.06, says_none=0.8),
)
OVERCONFIDENCE = 0.3  # stated = perceived ** 0.3: 0.80 is said as 0.935, 0.60 as 0.858
NOISE, UNUSABLE, CONFUSED, ANCHORED = 0.02, 0.01, 0.6, 0.5
DRIFTED_LABELS = 1 / 3
LOCAL_WEIGHT = 0.25  # difficulty = LOCAL_WEIGHT x (1 - local margin) + (1 - LOCAL_WEIGHT) x U(0, 1)


@dataclass(frozen=True)
class Settings:
    seeds: tuple[int, ...]
    golden_sizes: tuple[int, ...]
    folds: int
    seed_labels: int = SEED_LABELS
    stream_items: int | None = None  # None: all of train.csv but the seed labels
    quick: bool = False


def scan_threshold(confidences: Sequence[float], correct: Sequence[bool], target: float, level: float = 0.95,
                   min_count: int = 50) -> float | None:
    """BASELINE, the auto-labeler's rule before issue 13: scan every threshold (each run of equal
    confidences) and keep the lowest whose accepted held-out items have a one-sided Clopper-Pearson
    lower bound >= target (at least `min_count` of them). It tests every candidate at once."""
    conf, right = np.asarray(confidences, float), np.asarray(correct, bool)
    order = np.argsort(-conf, kind="stable")
    ranked, hits = conf[order], np.cumsum(right[order])
    chosen = None
    for position in np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True)):
        total = position + 1
        if total >= min_count and accuracy_lower_bound(int(hits[position]), total, level) >= target:
            chosen = float(ranked[position])
    return chosen


def project_for(categories: list[str], golden_size: int, min_items: int = 30) -> Project:
    return Project.model_validate({
        "name": "certify-benchmark",
        "taxonomy": {"labels": [{"name": c} for c in categories], "none_label": NONE},
        "source": {"path": "inbox/{month}.csv", "start_month": "2026-01"},
        "tiers": [{"name": t.name, "role": t.role, "provider": t.provider, "model": t.model} for t in SIM_TIERS],
        "budget": {"monthly_usd": 1000},
        "quality": {"golden_sample_size": golden_size, "target_accuracy": TARGET, "delta": DELTA,
                    "min_certify_items": min_items, "audit_share": 0.0},
    })


def load(data: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str]]:
    banking = data / "banking77"
    train, test = (pd.read_csv(banking / f"{split}.csv") for split in ("train", "test"))
    categories = json.loads((banking / "categories.json").read_text(encoding="utf-8"))
    spam = pd.read_csv(data / "sms_spam_collection" / "sms_spam.csv").text.astype(str)
    banking_texts = set(train.text) | set(test.text)
    outside = [text for text in dict.fromkeys(spam) if text not in banking_texts]
    return train, test, categories, outside


# --------------------------------------------------------------------------- the local auto-labeler


@dataclass
class Local:
    """The auto-labeler's answers on one set of items: top label, its probability, the most probable
    label other than gold, the top-two margin; `novel`: items accept() refused as far from the training
    data (never auto-accepted)."""

    label: np.ndarray
    confidence: np.ndarray
    wrong: np.ndarray
    margin: np.ndarray
    novel: np.ndarray


def local_answers(model, texts: list[str], gold: Sequence[str]) -> Local:
    """One pass of core/autolabel.accept at threshold 0 gives every item's top three labels; the
    threshold is applied afterwards (accept's rule: confidence >= threshold). Items it leaves in
    `rest` at threshold 0 are the ones its novelty check refuses."""
    items = [Item(str(i), text, content_hash(text)) for i, text in enumerate(texts)]
    result = accept(model, 0.0, items)
    n = len(texts)
    label, wrong = np.empty(n, dtype=object), np.empty(n, dtype=object)
    confidence, margin, novel = np.zeros(n), np.zeros(n), np.ones(n, bool)
    for answer in result.accepted:
        i = int(answer.item_id)
        ranked = [(answer.label, answer.confidence), *answer.alternatives]
        label[i], confidence[i], novel[i] = answer.label, answer.confidence, False
        margin[i] = answer.confidence - (ranked[1][1] if len(ranked) > 1 else 0.0)
        wrong[i] = next((lab for lab, _ in ranked if lab != gold[i]), ranked[-1][0])
    rest = np.flatnonzero(novel)
    if len(rest):
        probabilities = model.predict_proba([texts[i] for i in rest])
        for row, i in zip(probabilities, rest, strict=True):
            order = np.argsort(-row)
            label[i], confidence[i] = model.classes[order[0]], row[order[0]]
            margin[i] = row[order[0]] - row[order[1]]
            wrong[i] = next(model.classes[k] for k in order if model.classes[k] != gold[i])
    return Local(label, confidence, wrong, margin, novel)


def auto_accepted(local: Local, threshold: float | None) -> np.ndarray:
    if threshold is None:
        return np.zeros(len(local.label), bool)
    return (local.confidence >= threshold) & ~local.novel


# --------------------------------------------------------------------------- the SIMULATED tiers


@dataclass
class Answers:
    """One SIMULATED tier's answers on a set of items (label None: unusable)."""

    label: list[str | None]
    raw: list[float | None]


def simulate(tiers: Sequence[SimTier], gold: Sequence[str], outside: np.ndarray, difficulty: np.ndarray,
             local: Local, categories: list[str], drifted: set[str], month: int, rng: np.random.Generator
             ) -> dict[str, Answers]:
    """Each tier's answers for one month (see the module docstring for the model)."""
    n, labels = len(gold), np.asarray(categories, dtype=object)
    out: dict[str, Answers] = {}
    first: list[str | None] = [None] * n
    for tier in tiers:
        outside_d = rng.uniform(0.2, 1.0, n)
        d = np.where(outside, outside_d, difficulty)
        perceived = np.clip(tier.best - tier.slope * d**2 + rng.normal(0, NOISE, n), 0.01, 1.0)
        stated = np.round(perceived ** OVERCONFIDENCE, 3)
        p_right = tier.best - tier.slope * difficulty**2
        if month >= DRIFT_MONTH:
            p_right = p_right - tier.drop * np.array([g in drifted for g in gold])
        right = rng.random(n) < p_right
        says_none = rng.random(n) < tier.says_none
        confused, anchored = rng.random(n) < CONFUSED, rng.random(n) < ANCHORED
        other = labels[rng.integers(0, len(labels), n)]
        unusable = rng.random(n) < UNUSABLE
        answer: list[str | None] = []
        for i in range(n):
            if unusable[i]:
                answer.append(None)
            elif outside[i]:
                answer.append(NONE if says_none[i] else local.label[i])
            elif right[i]:
                answer.append(gold[i])
            elif tier.role != "first_pass" and anchored[i] and first[i] not in (None, gold[i]):
                answer.append(first[i])
            elif confused[i]:
                answer.append(local.wrong[i])
            else:
                answer.append(other[i] if other[i] != gold[i] else local.wrong[i])
        out[tier.role] = Answers(answer, [None if a is None else float(s) for a, s in zip(answer, stated)])
        if tier.role == "first_pass":
            first = answer
    return out


# --------------------------------------------------------------------------- routing a month


def route_month(project: Project, answers: dict[str, Answers], calibrators: dict, gates: dict[str, routing.StageGate],
                taken: np.ndarray) -> tuple[list[str], dict[str, np.ndarray]]:
    """Where each of the month's items ends: the stage that accepted it, or "human"; and which items
    reached each stage. The same routing calls as the tiers' (assets/tiers.py) and the golden path's."""
    n = len(taken)
    ids = [f"m{i}" for i in range(n)]
    outcome = ["auto_label" if t else "human" for t in taken]
    step = ["done" if t else "first_pass" for t in taken]
    reached: dict[str, np.ndarray] = {}
    tiers = {tier.role: tier for tier in project.tiers}
    for role in ROLES:
        reached[role] = np.array([s == role for s in step])
        labels, raw = answers[role].label, answers[role].raw
        calibrator, gate = calibrators.get(role), gates[role]
        index = np.flatnonzero(reached[role])
        answered = [i for i in index if labels[i] is not None]
        values = np.array([raw[i] for i in answered], dtype=float)
        calibrated = dict(zip(answered, calibrator.apply(values) if calibrator and answered else values))
        for i in index:
            answer = None if labels[i] is None else Answer(ids[i], labels[i], float(calibrated[i]))
            signal = signal_of(tiers[role], labels[i], raw[i], [answers[r].label[i] for r in ROLES[:ROLES.index(role)]])
            failure = None if answer else "no usable answer"
            if role == "first_pass":
                route = routing.after_first_pass(project.routing, ids[i], answer, failure, forced=None, has_qa=True,
                                                 has_adjudication=True, gate=gate, signal=signal)
            elif role == "qa":
                first = answers["first_pass"].label[i]
                route = routing.after_qa(project.routing, answer, failure,
                                         None if first is None else Answer(ids[i], first, 0.0), has_adjudication=True,
                                         item_id=ids[i], gate=gate, signal=signal)
            else:
                route = routing.after_adjudication(project.routing, answer, failure, item_id=ids[i], gate=gate,
                                                   signal=signal)
            if route.next_step == "accept":
                step[i], outcome[i] = "done", role
            elif route.next_step == "human":
                step[i] = "done"
            else:
                step[i] = route.next_step
    return outcome, reached


def drift_test():
    """core/shift.drift, or None while that module does not exist yet."""
    try:
        from labeling_dagster.core.shift import drift
    except ImportError:
        return None
    return drift


# --------------------------------------------------------------------------- one seed


def _tally(outcome: list[str], labels: dict[str, list[str | None]], gold: np.ndarray, outside: np.ndarray,
           reached: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per stage, over the items in `keep`: reached, accepted, right, out-of-scope accepted."""
    out = {}
    for stage in STAGES:
        took = np.array([o == stage for o in outcome]) & keep
        chosen = np.asarray(labels[stage], dtype=object)[took]
        right = chosen == gold[took]
        out[stage] = {
            "reached": int(keep.sum() if stage == "auto_label" else (reached[stage] & keep).sum()),
            "accepted": int(took.sum()),
            "correct": int(right.sum()),
            "outside_accepted": int((took & outside).sum()),
            **{k: v for k, v in realized(right, target=TARGET, delta=DELTA).items() if k in ("accuracy", "below_target",
                                                                                          "proved_below_target")},
        }
    return out


def run_seed(seed: int, settings: Settings, data: str) -> dict[str, Any]:
    started = time.perf_counter()
    train, test, categories, outside_texts = load(Path(data))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    seed_rows = order[: settings.seed_labels]
    stream_rows = order[settings.seed_labels:][: settings.stream_items]
    seed_texts, seed_gold = train.text.iloc[seed_rows].tolist(), train.category.iloc[seed_rows].tolist()

    # The real auto-labeler: cross-fit on the seed labels, the production threshold rule and the baselines.
    fit = cross_fit(seed_texts, seed_gold, "tfidf", seed, settings.folds)
    trained = time.perf_counter() - started
    thresholds = {
        "certified": choose_threshold(fit.confidences, fit.correct, TARGET, training_size=len(seed_texts)),
        "certified_min100": choose_threshold(fit.confidences, fit.correct, TARGET, min_count=100,
                                             training_size=len(seed_texts)),
    }
    auto_threshold = {gate: choice.threshold for gate, choice in thresholds.items()}
    auto_threshold["today"] = scan_threshold(fit.confidences, fit.correct, TARGET)
    # Other rules for the lead to weigh, measured on the same out-of-fold answers.
    auto_rules = {gate: (choice.threshold, choice.reason) for gate, choice in thresholds.items()}
    auto_rules["today"] = (auto_threshold["today"], "scan_threshold (the rule before issue 13)")
    for name, grid, min_items in (("coarse_grid", COARSE_GRID, 30), ("min_items_200", None, 200)):
        cert = certify(fit.confidences, fit.correct, target=TARGET, delta=DELTA, stage="auto_label",
                       min_items=min_items, signal="probability", **({"grid": grid} if grid else {}))
        auto_rules[name] = (cert.threshold, cert.reason)

    # Items: the stream cut into months, the golden sample, the out-of-scope texts.
    months = np.array_split(stream_rows, MONTHS)
    stream_texts, stream_gold = train.text.to_numpy(object), train.category.to_numpy(object)
    test_order = rng.permutation(len(test))
    outside_order = rng.permutation(len(outside_texts))
    drifted = set(rng.choice(categories, round(len(categories) * DRIFTED_LABELS), replace=False).tolist())
    share = [OUT_OF_SCOPE_SHARE[m >= DRIFT_MONTH] for m in range(1, MONTHS + 1)]
    n_outside = [round(len(rows) * s / (1 - s)) for rows, s in zip(months, share)]
    month_sets, cursor = [], 0
    for rows, k in zip(months, n_outside):
        picks = outside_order[cursor: cursor + k]
        cursor += k
        texts = [*stream_texts[rows], *(outside_texts[j] for j in picks)]
        gold = np.array([*stream_gold[rows], *([NONE] * k)], dtype=object)
        month_sets.append((texts, gold, np.array([False] * len(rows) + [True] * k)))
    golden_rows = test_order[: max(settings.golden_sizes)]
    golden_texts = test.text.iloc[golden_rows].tolist()
    golden_gold = test.category.iloc[golden_rows].to_numpy(object)

    all_texts = golden_texts + [t for texts, _, _ in month_sets for t in texts]
    all_gold = list(golden_gold) + [g for _, gold, _ in month_sets for g in gold]
    local_all = local_answers(fit.model, all_texts, all_gold)
    answer_seconds = time.perf_counter() - started - trained
    noise = rng.random(len(all_texts))
    difficulty_all = np.clip(LOCAL_WEIGHT * (1 - local_all.margin) + (1 - LOCAL_WEIGHT) * noise, 0, 1)

    def part(lo: int, hi: int) -> tuple[Local, np.ndarray]:
        return Local(*(getattr(local_all, f.name)[lo:hi] for f in fields(Local))), difficulty_all[lo:hi]

    golden_local, golden_difficulty = part(0, len(golden_texts))
    offsets = np.cumsum([len(golden_texts), *(len(t) for t, _, _ in month_sets)])
    stream_local = [part(offsets[m], offsets[m + 1]) for m in range(MONTHS)]
    in_scope = [(stream_local[m][0], month_sets[m][1], ~month_sets[m][2]) for m in range(MONTHS)]

    def measured(threshold: float | None, reason: str) -> dict[str, Any]:
        took = [(auto_accepted(local, threshold) & keep, local, gold) for local, gold, keep in in_scope]
        accepted = sum(int(t.sum()) for t, _, _ in took)
        right = sum(int((local.label[t] == gold[t]).sum()) for t, local, gold in took)
        return {"threshold": threshold, "reason": reason,
                "held_out_coverage": 0.0 if threshold is None
                else round(float(np.mean(fit.confidences >= threshold)), 4),
                "stream_coverage": round(accepted / sum(int(keep.sum()) for _, _, keep in in_scope), 4),
                "stream_accuracy": round(right / accepted, 4) if accepted else None}

    auto_rules = {name: measured(*rule) for name, rule in auto_rules.items()}

    # The population a (stage, month) certificate is judged on: every in-scope stream item, answered
    # afresh by that month's (drifted) tiers and routed with that month's gates; the month itself is a
    # sample of it, too small (a stage accepts tens of items) to tell a miss from noise.
    population_local = Local(*(np.concatenate([getattr(local, f.name)[keep] for local, _, keep in in_scope])
                               for f in fields(Local)))
    population_difficulty = np.concatenate([stream_local[m][1][keep] for m, (_, _, keep) in enumerate(in_scope)])
    population_gold = np.concatenate([gold[keep] for _, gold, keep in in_scope])
    population_outside = np.zeros(len(population_gold), bool)

    drift = drift_test()
    projects = {size: {gate: project_for(categories, size, 100 if gate == "certified_min100" else 30)
                       for gate in GATES} for size in settings.golden_sizes}
    rows, drifts = [], []
    for month in range(1, MONTHS + 1):
        texts, gold, outside = month_sets[month - 1]
        local, difficulty = stream_local[month - 1]
        month_answers = simulate(SIM_TIERS, gold, outside, difficulty, local, categories, drifted, month,
                                 np.random.default_rng([seed, month, 1]))
        labels_by_stage = {"auto_label": list(local.label), **{r: month_answers[r].label for r in ROLES}}
        golden_answers_all = simulate(SIM_TIERS, golden_gold, np.zeros(len(golden_gold), bool), golden_difficulty,
                                      golden_local, categories, drifted, month, np.random.default_rng([seed, month, 2]))
        population_answers = simulate(SIM_TIERS, population_gold, population_outside, population_difficulty,
                                      population_local, categories, drifted, month,
                                      np.random.default_rng([seed, month, 3]))
        population_labels = {"auto_label": list(population_local.label),
                             **{r: population_answers[r].label for r in ROLES}}
        for size in settings.golden_sizes:
            golden = {r: Answers(a.label[:size], a.raw[:size]) for r, a in golden_answers_all.items()}
            g_gold, g_local = golden_gold[:size], Local(*(getattr(golden_local, f.name)[:size] for f in fields(Local)))
            for gate_name in GATES:
                project = projects[size][gate_name]
                tiers = {tier.role: tier for tier in project.tiers}
                threshold = auto_threshold[gate_name]
                certificates: dict[str, Any] = {}
                if gate_name == "today":
                    calibrators = {}
                    for role in ROLES:
                        answered = [i for i, a in enumerate(golden[role].label) if a is not None]
                        calibrators[role] = fit_calibrator([golden[role].raw[i] for i in answered],
                                                           [golden[role].label[i] == g_gold[i] for i in answered],
                                                           method="isotonic", tier=tiers[role].name)
                    gates = {role: routing.StageGate(role, "bands", None, 0.0, NONE) for role in ROLES}
                else:
                    path = certify_golden_path(
                        project, list(g_gold),
                        {role: TierAnswers(tiers[role], golden[role].label, golden[role].raw) for role in ROLES},
                        auto_accepted=list(auto_accepted(g_local, threshold)), forced=[False] * size,
                        item_ids=[f"g{i}" for i in range(size)])
                    calibrators = {role: path.stages[role].calibrator for role in ROLES}
                    gates = {role: routing.StageGate(role, "certified", path.stages[role].certificate, 0.0, NONE)
                             for role in ROLES}
                    certificates = {role: path.stages[role].certificate for role in ROLES}
                taken = auto_accepted(local, threshold)
                outcome, reached = route_month(project, month_answers, calibrators, gates, taken)
                scenarios = {"in_scope": _tally(outcome, labels_by_stage, gold, outside, reached, ~outside),
                             "with_out_of_scope": _tally(outcome, labels_by_stage, gold, outside, reached,
                                                         np.ones(len(gold), bool))}
                population, population_reached = route_month(project, population_answers, calibrators, gates,
                                                             auto_accepted(population_local, threshold))
                scenarios["population"] = _tally(population, population_labels, population_gold, population_outside,
                                                 population_reached, ~population_outside)
                for stage in STAGES:
                    cert = certificates.get(stage)
                    rows.append({
                        "seed": seed, "golden": size, "gate": gate_name, "month": month, "stage": stage,
                        "items": int((~outside).sum()), "items_with_out_of_scope": len(gold),
                        "threshold": threshold if stage == "auto_label" else (cert.threshold if cert else None),
                        "golden_reached": cert.items if cert else None,
                        "golden_accepted": cert.accepted if cert else None,
                        "golden_bound": None if cert is None or cert.bound is None else round(cert.bound, 4),
                        **{f"{scenario}.{k}": v for scenario, tally in scenarios.items()
                           for k, v in tally[stage].items()},
                    })
                if drift is None or gate_name != "certified":
                    continue
                for scenario, keep in (("in_scope", ~outside), ("with_out_of_scope", np.ones(len(gold), bool))):
                    for stage in STAGES:
                        if stage == "auto_label":
                            idx = np.flatnonzero(keep & ~local.novel)
                            month_signal, month_labels = local.confidence[idx], local.label[idx]
                            reference = (list(fit.confidences), list(seed_gold))
                        else:
                            idx = [i for i in np.flatnonzero(reached[stage] & keep)
                                   if month_answers[stage].label[i] is not None]
                            month_signal = [month_answers[stage].raw[i] for i in idx]
                            month_labels = [month_answers[stage].label[i] for i in idx]
                            reference = path.stages[stage].reference()
                        result = drift(list(month_signal), reference[0], list(month_labels), reference[1],
                                       alpha=project.quality.shift_alpha)
                        drifts.append({"seed": seed, "golden": size, "month": month, "stage": stage,
                                       "scenario": scenario, **result.as_dict()})
    return {
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "auto_labeler_seconds": round(trained, 1),
        "auto_labeler_answer_seconds": round(answer_seconds, 1),
        "drifted_labels": sorted(drifted),
        "out_of_scope_items": n_outside,
        "month_items": [len(month_rows) for month_rows in months],
        "auto_labeler": {"seed_labels": len(seed_texts), "folds": settings.folds, "rules": auto_rules,
                         "novel_refused_stream": int(sum(stream_local[m][0].novel.sum() for m in range(MONTHS)))},
        "rows": rows,
        "drift": drifts,
    }


# --------------------------------------------------------------------------- summary


def summarize(results: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    rows = [row for result in results for row in result["rows"]]
    summary: dict[str, Any] = {"miss": {}, "coverage": {}, "out_of_scope": {}, "drift": {}}
    for size in settings.golden_sizes:
        for gate in GATES:
            mine = [r for r in rows if r["golden"] == size and r["gate"] == gate]
            key = f"golden {size} / {gate}"
            pairs = [r for r in mine if r["in_scope.accepted"] > 0]
            by_stage = {}
            for stage in STAGES:
                stage_pairs = [r for r in pairs if r["stage"] == stage]
                stage_rows = [r for r in mine if r["stage"] == stage]
                judged = [r for r in stage_rows if r["population.accepted"] > 0]
                by_stage[stage] = {
                    "population_pairs": len(judged),
                    "population_below_target": sum(r["population.below_target"] for r in judged),
                    "population_accuracy_min": min((r["population.accuracy"] for r in judged), default=None),
                    "pairs": len(stage_pairs),
                    "below_target": sum(r["in_scope.below_target"] for r in stage_pairs),
                    "proved_below_target": sum(r["in_scope.proved_below_target"] for r in stage_pairs),
                    "coverage": _share(stage_rows),
                    "accuracy": _pooled(stage_rows, "in_scope"),
                    "coverage_months_1_6": _share([r for r in stage_rows if r["month"] < DRIFT_MONTH]),
                    "coverage_months_7_12": _share([r for r in stage_rows if r["month"] >= DRIFT_MONTH]),
                    "below_target_months_7_12": sum(r["in_scope.below_target"] for r in stage_pairs
                                                    if r["month"] >= DRIFT_MONTH),
                }
            below = sum(s["below_target"] for s in by_stage.values())
            judged = sum(s["population_pairs"] for s in by_stage.values())
            population_below = sum(s["population_below_target"] for s in by_stage.values())
            summary["miss"][key] = {
                "population_pairs": judged,
                "population_below_target": population_below,
                "population_share": round(population_below / judged, 4) if judged else 0.0,
                "pairs_with_accepted_items": len(pairs),
                "pairs_without": len(mine) - len(pairs),
                "below_target": below,
                "share": round(below / len(pairs), 4) if pairs else 0.0,
                "proved_below_target": sum(s["proved_below_target"] for s in by_stage.values()),
                "by_stage": by_stage,
            }
            summary["coverage"][key] = {
                "machine": _share(mine),
                "machine_accuracy": _pooled(mine, "in_scope"),
                **{stage: by_stage[stage]["coverage"] for stage in STAGES},
            }
            # Scenario 2: per seed and month, out-of-scope items accepted under an in-scope label by any stage.
            months = defaultdict(lambda: {"accepted": 0, "outside_accepted": 0})
            for r in mine:
                cell = months[(r["seed"], r["month"])]
                cell["accepted"] += r["with_out_of_scope.accepted"]
                cell["outside_accepted"] += r["with_out_of_scope.outside_accepted"]
            per_month = []
            for month in range(1, MONTHS + 1):
                cells = [months[(result["seed"], month)] for result in results]
                budgets = [(1 - TARGET) * c["accepted"] for c in cells]
                per_month.append({
                    "month": month,
                    "out_of_scope_items": sum(result["out_of_scope_items"][month - 1] for result in results),
                    "accepted": sum(c["accepted"] for c in cells),
                    "outside_accepted": sum(c["outside_accepted"] for c in cells),
                    "budget": round(sum(budgets), 1),
                    "worst_outside_accepted": max(c["outside_accepted"] for c in cells),
                    "over_budget_seeds": sum(c["outside_accepted"] > b for c, b in zip(cells, budgets)),
                })
            summary["out_of_scope"][key] = {
                "months": per_month,
                "over_budget_months": sum(m["over_budget_seeds"] for m in per_month),
                "outside_accepted": sum(m["outside_accepted"] for m in per_month),
            }
        drifts = [d for result in results for d in result["drift"] if d["golden"] == size]
        if drifts:
            report = {}
            for scenario in ("in_scope", "with_out_of_scope"):
                per_seed = {}
                for result in results:
                    fired = [d for d in drifts if d["seed"] == result["seed"] and d["scenario"] == scenario
                             and d["shifted"]]
                    tiers = [d for d in fired if d["stage"] in ROLES]
                    per_seed[result["seed"]] = {
                        "first_month": min((d["month"] for d in tiers), default=None),
                        "first_month_any_stage": min((d["month"] for d in fired), default=None),
                        "tier_months": sorted({d["month"] for d in tiers}),
                        "auto_label_months": sorted({d["month"] for d in fired if d["stage"] == "auto_label"}),
                        "fired": sorted([d["month"], d["stage"]] for d in fired),
                    }
                tested = [d for d in drifts if d["scenario"] == scenario and d["month"] < DRIFT_MONTH]
                report[scenario] = {
                    "seeds": per_seed,
                    "false_alarms_months_1_6": {
                        stage: {"fired": sum(d["shifted"] for d in tested if d["stage"] == stage),
                                "tests": sum(d["confidence_p"] is not None or d["label_mix_p"] is not None
                                             for d in tested if d["stage"] == stage)}
                        for stage in STAGES},
                    "fired_months_7_12": {
                        stage: sum(d["shifted"] for d in drifts if d["scenario"] == scenario and d["stage"] == stage
                                   and d["month"] >= DRIFT_MONTH)
                        for stage in STAGES},
                }
            summary["drift"][f"golden {size}"] = report
    return summary


def _share(rows: list[dict[str, Any]]) -> float:
    """Accepted in-scope items over the months' in-scope items (each month counted once)."""
    items = sum(r["items"] for r in rows if r["stage"] == "auto_label") or sum(r["items"] for r in rows)
    return round(sum(r["in_scope.accepted"] for r in rows) / items, 4) if items else 0.0


def _pooled(rows: list[dict[str, Any]], scenario: str) -> float | None:
    accepted = sum(r[f"{scenario}.accepted"] for r in rows)
    return round(sum(r[f"{scenario}.correct"] for r in rows) / accepted, 4) if accepted else None


def failures(summary: dict[str, Any], settings: Settings) -> list[str]:
    out = []
    for size in settings.golden_sizes:
        key = f"golden {size} / certified"
        miss = summary["miss"][key]
        if miss["population_share"] > DELTA:
            out.append(f"{key}: {miss['population_below_target']} of {miss['population_pairs']} (stage, month) "
                       f"certificates accept below target on their population ({miss['population_share']:.1%} > "
                       f"delta {DELTA:.0%})")
        over = summary["out_of_scope"][key]["over_budget_months"]
        if over:
            out.append(f"{key}: {over} (seed, month) pairs accepted more out-of-scope items than the error budget")
        drift = summary["drift"].get(f"golden {size}")
        if drift is None:
            out.append("core/shift.py is missing: the drift was not tested")
            continue
        for seed, seen in drift["with_out_of_scope"]["seeds"].items():
            if seen["first_month"] != DRIFT_MONTH:
                out.append(f"golden {size}, seed {seed}: the model tiers first reported the out-of-scope shift in "
                           f"month {seen['first_month']}, not {DRIFT_MONTH} (fired: {seen['fired'][:6]})")
    return out


def table(summary: dict[str, Any], settings: Settings) -> str:
    lines = [f"{'golden / gate':<30}{'miss pop':>10}{'miss month':>12}" + "".join(f"{s:>20}" for s in STAGES)
             + f"{'machine':>9}{'acc':>7}{'oos>budget':>11}"]
    lines.append("-" * len(lines[0]))
    for size in settings.golden_sizes:
        for gate in GATES:
            key = f"golden {size} / {gate}"
            miss, cov = summary["miss"][key], summary["coverage"][key]
            cells = ""
            for stage in STAGES:
                st = miss["by_stage"][stage]
                cells += (f"{cov[stage]:>8.1%} {st['population_below_target']:>3}/{st['population_pairs']:<3}"
                          f"{st['below_target']:>3}/{st['pairs']:<3}")
            acc = cov["machine_accuracy"]
            over = summary["out_of_scope"][key]["over_budget_months"]
            lines.append(f"{key:<30}{miss['population_share']:>10.1%}{miss['share']:>12.1%}{cells}"
                         f"{cov['machine']:>9.1%}{'-' if acc is None else f'{acc:.3f}':>7}{over:>11}")
    lines.append("miss pop: share of (stage, month) certificates whose accepted items are below target on the "
                 "population (all in-scope stream items, answered by that month's tiers); miss month: the same on "
                 "the month's own items. Stage cells: coverage of the month's in-scope items, pairs below target / "
                 "pairs with accepted items (population, then month)")
    key = f"golden {settings.golden_sizes[0]} / certified"
    lines.append(f"\nout of scope ({key}), summed over seeds: month, out-of-scope items, accepted under an in-scope "
                 "label, error budget (5% of all accepted)")
    for m in summary["out_of_scope"][key]["months"]:
        lines.append(f"  {m['month']:>2} {m['out_of_scope_items']:>6} {m['outside_accepted']:>6} {m['budget']:>8.1f}")
    for size, report in summary["drift"].items():
        for scenario, seen in report.items():
            first = {seed: s["first_month"] for seed, s in seen["seeds"].items()}
            auto = {seed: s["auto_label_months"] for seed, s in seen["seeds"].items()}
            alarms = {stage: f"{a['fired']}/{a['tests']}" for stage, a in seen["false_alarms_months_1_6"].items()}
            lines.append(f"drift ({size}, {scenario}): first month a model tier reports it, by seed {first}; "
                         f"months 1-6 fired/tested {alarms}; auto-labeler fired in months {auto}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.certify", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, golden sample 500, 3 folds: about a minute")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 6, --quick 1)")
    parser.add_argument("--golden", help="golden sample sizes, comma-separated (default 500,1000; --quick 500)")
    parser.add_argument("--folds", type=int, help="the auto-labeler's cross-fit folds (default 5, --quick 3)")
    parser.add_argument("--seed-labels", type=int, default=SEED_LABELS, help="the auto-labeler's human labels")
    parser.add_argument("--stream-items", type=int,
                        help="stream items over the 12 months (default: the rest of train.csv)")
    parser.add_argument("--jobs", type=int, default=2, help="seeds run at once, each in its own process")
    parser.add_argument("--data", type=Path, default=DATA, help="folder with banking77/ and sms_spam_collection/")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not (args.data / "banking77" / "train.csv").exists():
        raise SystemExit(f"{args.data / 'banking77'}: train.csv not found; --data needs banking77/ and "
                         "sms_spam_collection/")
    sizes = tuple(int(s) for s in (args.golden or ("500" if args.quick else "500,1000")).split(","))
    settings = Settings(seeds=tuple(range(args.seeds or (1 if args.quick else 6))), golden_sizes=sizes,
                        folds=args.folds or (3 if args.quick else 5), seed_labels=args.seed_labels,
                        stream_items=args.stream_items, quick=args.quick)
    print(f"SIMULATED first-pass, QA and adjudication tiers (no model is called), real auto-labeler, banking77: "
          f"{len(settings.seeds)} seed(s), golden samples {sizes}, auto-labeler on {settings.seed_labels} labels, "
          f"{settings.folds} folds", file=sys.stderr)
    started = time.perf_counter()
    if args.jobs > 1 and len(settings.seeds) > 1:
        with ProcessPoolExecutor(min(args.jobs, len(settings.seeds))) as pool:
            results = list(pool.map(run_seed, settings.seeds, [settings] * len(settings.seeds),
                                    [str(args.data)] * len(settings.seeds)))
    else:
        results = [run_seed(seed, settings, str(args.data)) for seed in settings.seeds]
    summary = summarize(results, settings)
    failed = failures(summary, settings)
    report = {
        "benchmark": "certify",
        "simulated": "the first-pass, QA and adjudication tiers are SIMULATED (see `simulation`); the auto-labeler is "
                     "the real local model (TF-IDF); labels and texts are real (banking77, SMS Spam Collection)",
        "simulation": {
            "tiers": [asdict(t) for t in SIM_TIERS],
            "difficulty": f"{LOCAL_WEIGHT} x (1 - local model's top-two margin) + {1 - LOCAL_WEIGHT} x U(0, 1)",
            "right": "P = best - slope x difficulty^2; months 7-12: minus drop on the drifted labels "
                     f"({DRIFTED_LABELS:.0%} of the labels, drawn per seed)",
            "stated_confidence": f"(best - slope x difficulty^2 + N(0, {NOISE})) ** {OVERCONFIDENCE}, 3 decimals; "
                                 "does not drift",
            "wrong_label": f"local model's most probable wrong label ({CONFUSED:.0%}) or any other; QA and "
                           f"adjudication repeat a wrong first pass {ANCHORED:.0%} of the time",
            "unusable": UNUSABLE,
            "out_of_scope": f"SMS Spam Collection texts, gold {NONE}; {OUT_OF_SCOPE_SHARE[0]:.0%} of months 1-6, "
                            f"{OUT_OF_SCOPE_SHARE[1]:.0%} of months 7-12; a tier answers {NONE} for says_none of them, "
                            "else the local model's top label with the stated confidence of difficulty U(0.2, 1)",
            "golden": "a fixed sample of test.csv per seed, answered afresh each month by the same (drifted) tiers; "
                      "no out-of-scope items",
            "audit_share": "0 (no accepted item is diverted to people as an audit sample)",
            "auto_labeler": "the real TF-IDF model, cross-fit once per seed on its seed labels (not retrained monthly)",
            "population": "per month: every in-scope stream item answered afresh by that month's tiers, routed with "
                          "that month's gates; population.* fields",
            "drift_reference": "model tiers: Stage.reference() of the month's golden path; auto-labeler: its "
                               "out-of-fold confidences on the seed labels and their gold labels",
        },
        "target_accuracy": TARGET,
        "delta": DELTA,
        "gates": GATE_TEXT,
        "settings": asdict(settings),
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary,
        "failures": failed,
        "seeds": results,
    }
    print(table(summary, settings))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=_plain) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({report['seconds']:.0f}s)")
    for line in failed:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if failed else 0


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


if __name__ == "__main__":
    raise SystemExit(main())
