"""Quality figures on the golden set: each tier's accuracy, per-label precision and recall, the
confusions that matter, and how often two tiers (or a tier and people) give the same label.

Inputs are plain: labels as a mapping item_id -> label (a dict, or a pandas Series indexed by
item_id); outputs are small DataFrames the quality report shows as markdown tables.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score, precision_recall_fscore_support

Labels = Mapping[str, str] | pd.Series


def _labels(labels: Labels) -> dict[str, str]:
    """item_id -> label, without items that have no label (None, NaN, empty: no usable answer)."""
    return {
        str(item): str(label)
        for item, label in labels.items()
        if label is not None and not (isinstance(label, float) and np.isnan(label)) and str(label) != ""
    }


def _paired(predicted: Labels, gold: Labels) -> tuple[list[str], list[str]]:
    """(gold labels, predicted labels) for the golden items the tier labeled, in item order."""
    answers, truth = _labels(predicted), _labels(gold)
    items = sorted(set(answers) & set(truth))
    return [truth[item] for item in items], [answers[item] for item in items]


@dataclass(frozen=True)
class Accuracy:
    """`golden_items`: golden items the tier was asked about; `labeled`: those it gave a label for."""

    golden_items: int
    labeled: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labeled if self.labeled else None

    @property
    def coverage(self) -> float | None:
        return self.labeled / self.golden_items if self.golden_items else None


def accuracy(predicted: Labels, gold: Labels, asked: Sequence[str] | None = None) -> Accuracy:
    """Share of the tier's labels that equal the golden label. `asked` (default: every golden item)
    is the golden sample the tier was given; items it left unlabeled lower coverage, not accuracy."""
    truth = _labels(gold)
    asked_items = set(truth) if asked is None else {str(item) for item in asked} & set(truth)
    answers = {item: label for item, label in _labels(predicted).items() if item in asked_items}
    correct = sum(1 for item, label in answers.items() if truth[item] == label)
    return Accuracy(golden_items=len(asked_items), labeled=len(answers), correct=correct)


def tier_accuracy(
    labels_by_tier: Mapping[str, Labels], gold: Labels, asked: Mapping[str, Sequence[str]] | None = None
) -> pd.DataFrame:
    """One row per tier: golden_items, labeled, correct, accuracy, coverage (`asked`: per tier, the
    golden items it was given, when it did not see them all)."""
    rows = []
    for tier, predicted in labels_by_tier.items():
        score = accuracy(predicted, gold, None if asked is None else asked.get(tier))
        rows.append(
            {
                "tier": tier,
                "golden_items": score.golden_items,
                "labeled": score.labeled,
                "correct": score.correct,
                "accuracy": score.accuracy,
                "coverage": score.coverage,
            }
        )
    return pd.DataFrame(rows, columns=["tier", "golden_items", "labeled", "correct", "accuracy", "coverage"])


def label_scores(predicted: Labels, gold: Labels, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Per label: precision (of the items the tier called it, the share that are it), recall (of the
    items that are it, the share the tier found), f1, support (golden items with that label) and
    predicted (items the tier gave it). Undefined ratios (nothing predicted / no support) are NaN."""
    truth, answers = _paired(predicted, gold)
    names = list(labels) if labels is not None else sorted(set(truth) | set(answers))
    columns = ["label", "precision", "recall", "f1", "support", "predicted"]
    if not truth:
        return pd.DataFrame(columns=columns)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, answers, labels=names, zero_division=np.nan
    )
    counts = Counter(answers)
    return pd.DataFrame(
        {
            "label": names,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support.astype(int),
            "predicted": [counts[name] for name in names],
        },
        columns=columns,
    )


def confusion_pairs(predicted: Labels, gold: Labels, top: int = 5) -> pd.DataFrame:
    """The `top` most frequent mistakes as (gold, predicted) pairs, most frequent first (ties by name),
    with count and share_of_gold (the share of that gold label's items that went to `predicted`)."""
    truth, answers = _paired(predicted, gold)
    mistakes = Counter((g, p) for g, p in zip(truth, answers) if g != p)
    per_gold = Counter(truth)
    ordered = sorted(mistakes.items(), key=lambda pair: (-pair[1], pair[0]))[:top]
    return pd.DataFrame(
        [
            {"gold": g, "predicted": p, "count": count, "share_of_gold": count / per_gold[g]}
            for (g, p), count in ordered
        ],
        columns=["gold", "predicted", "count", "share_of_gold"],
    )


@dataclass(frozen=True)
class Agreement:
    """Over the items both sides labeled: how many got the same label, and Cohen's kappa (agreement
    beyond what the two label distributions give by chance; None when it is undefined)."""

    items: int
    agreed: int
    kappa: float | None

    @property
    def rate(self) -> float | None:
        return self.agreed / self.items if self.items else None


def _compare(left: list[str], right: list[str]) -> Agreement:
    kappa = None
    if left and len(set(left) | set(right)) > 1:
        value = float(cohen_kappa_score(left, right))
        kappa = None if np.isnan(value) else value
    return Agreement(items=len(left), agreed=sum(1 for x, y in zip(left, right) if x == y), kappa=kappa)


def agreement(first: Labels, second: Labels) -> Agreement:
    a, b = _labels(first), _labels(second)
    items = sorted(set(a) & set(b))
    return _compare([a[item] for item in items], [b[item] for item in items])


def review_agreement(labels: Labels, reviews: pd.DataFrame) -> Agreement:
    """A tier against people, one comparison per human review (`reviews` has item_id and label, one
    row per annotator's answer), so an item with three annotators counts three times."""
    missing = {"item_id", "label"} - set(reviews.columns)
    if missing:
        raise ValueError(
            f"reviews: column(s) {sorted(missing)} missing; expected one row per review with item_id, label"
        )
    answers = _labels(labels)
    paired = [
        (answers[str(item)], str(label))
        for item, label in zip(reviews["item_id"], reviews["label"])
        if str(item) in answers and isinstance(label, str) and label != ""
    ]
    return _compare([tier for tier, _ in paired], [person for _, person in paired])


def agreement_table(labels_by_tier: Mapping[str, Labels], people: Labels | None = None) -> pd.DataFrame:
    """Every pair of tiers, then each tier against people (their consensus label per item), as rows
    of first, second, items, agreed, rate, kappa."""
    sides: dict[str, Labels] = dict(labels_by_tier)
    pairs = list(combinations(sides, 2))
    if people is not None:
        pairs += [(tier, "people") for tier in labels_by_tier]
        sides["people"] = people
    rows = []
    for first, second in pairs:
        result = agreement(sides[first], sides[second])
        rows.append(
            {
                "first": first,
                "second": second,
                "items": result.items,
                "agreed": result.agreed,
                "rate": result.rate,
                "kappa": result.kappa,
            }
        )
    return pd.DataFrame(rows, columns=["first", "second", "items", "agreed", "rate", "kappa"])
