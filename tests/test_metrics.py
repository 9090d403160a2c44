"""Quality figures on small literal golden sets, each figure counted by hand in a comment."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from labeling_dagster.core import metrics

GOLD = {"t1": "billing", "t2": "billing", "t3": "billing", "t4": "refund", "t5": "refund", "t6": "cancel"}
# first pass: t2 billing->refund, t5 refund->billing, t6 cancel->refund; no answer for t3
FIRST = {"t1": "billing", "t2": "refund", "t3": None, "t4": "refund", "t5": "billing", "t6": "refund"}
QA = pd.Series({"t1": "billing", "t2": "billing", "t3": "billing", "t4": "refund", "t5": "refund", "t6": "refund"})


def test_tier_accuracy_separates_accuracy_from_coverage() -> None:
    table = metrics.tier_accuracy({"first_pass": FIRST, "qa": QA}, GOLD).set_index("tier")
    # first pass: 5 labeled of 6, right on t1 and t4
    assert table.loc["first_pass", ["golden_items", "labeled", "correct"]].tolist() == [6, 5, 2]
    assert table.loc["first_pass", "accuracy"] == pytest.approx(2 / 5)
    assert table.loc["first_pass", "coverage"] == pytest.approx(5 / 6)
    assert table.loc["qa", "accuracy"] == pytest.approx(5 / 6)
    # A tier asked about only part of the golden set is scored on that part.
    sampled = metrics.accuracy(FIRST, GOLD, asked=["t1", "t2"])
    assert (sampled.golden_items, sampled.labeled, sampled.correct) == (2, 2, 1)
    assert metrics.accuracy({}, GOLD).accuracy is None


def test_precision_and_recall_per_label() -> None:
    table = metrics.label_scores(FIRST, GOLD, labels=["billing", "refund", "cancel"]).set_index("label")
    # billing: predicted for t1, t5 (t1 right) -> precision 1/2; gold t1, t2 labeled (t3 unanswered) -> recall 1/2
    assert table.loc["billing", ["precision", "recall"]].tolist() == pytest.approx([0.5, 0.5])
    # refund: predicted t2, t4, t6 (t4 right) -> 1/3; gold t4, t5 -> recall 1/2
    assert table.loc["refund", ["precision", "recall"]].tolist() == pytest.approx([1 / 3, 0.5])
    assert table.loc["refund", "support"] == 2 and table.loc["refund", "predicted"] == 3
    # cancel: never predicted -> precision undefined (NaN), recall 0
    assert math.isnan(table.loc["cancel", "precision"]) and table.loc["cancel", "recall"] == 0


def test_confusion_pairs_most_frequent_first() -> None:
    gold = {f"i{n}": label for n, label in enumerate(["a"] * 4 + ["b"] * 3 + ["c"] * 2)}
    predicted = {f"i{n}": label for n, label in enumerate(["b", "b", "b", "a", "a", "b", "c", "a", "c"])}
    pairs = metrics.confusion_pairs(predicted, gold, top=2)
    # a->b three times (of 4 a's), then b->a and b->c and c->a once each: b->a wins the tie by name
    assert pairs.to_dict("records") == [
        {"gold": "a", "predicted": "b", "count": 3, "share_of_gold": 0.75},
        {"gold": "b", "predicted": "a", "count": 1, "share_of_gold": pytest.approx(1 / 3)},
    ]
    assert metrics.confusion_pairs(GOLD, GOLD).empty


def test_agreement_between_tiers_and_with_people() -> None:
    # first pass and QA both answered t1, t2, t4, t5, t6 and agree on t1, t4, t6
    result = metrics.agreement(FIRST, QA)
    assert (result.items, result.agreed, result.rate) == (5, 3, 0.6)
    # Cohen's kappa by hand: p_o = 0.6; first pass billing 2/5, refund 3/5; QA billing 2/5, refund 3/5
    # p_e = 0.4*0.4 + 0.6*0.6 = 0.52; kappa = (0.6 - 0.52) / 0.48
    assert result.kappa == pytest.approx(0.08 / 0.48)
    table = metrics.agreement_table({"first_pass": FIRST, "qa": QA}, people=GOLD)
    assert table[["first", "second"]].values.tolist() == [["first_pass", "qa"], ["first_pass", "people"], ["qa", "people"]]
    assert table["rate"].tolist() == pytest.approx([0.6, 0.4, 5 / 6])


def test_review_agreement_counts_each_annotator() -> None:
    reviews = pd.DataFrame(
        {"item_id": ["t1", "t1", "t1", "t2", "t3", "t9"], "label": ["billing", "billing", "refund", "refund", "billing", "refund"]}
    )
    # t1: 2 of 3 reviews agree with the first pass; t2 agrees; t3 has no first-pass label; t9 unknown
    result = metrics.review_agreement(FIRST, reviews)
    assert (result.items, result.agreed) == (4, 3)
    with pytest.raises(ValueError, match=r"column\(s\) \['label'\] missing"):
        metrics.review_agreement(FIRST, reviews[["item_id"]])


def test_one_label_everywhere_has_no_kappa() -> None:
    result = metrics.agreement({"a": "x", "b": "x"}, {"a": "x", "b": "x"})
    assert result.rate == 1.0 and result.kappa is None
