"""The offline provider: a scikit-learn classifier (TF-IDF features + logistic regression) trained on
the project's seed set. Confidence is the predicted probability of the chosen label. It costs no USD;
its compute seconds are recorded like any other call's usage. It learns only the taxonomy's labels,
so it never answers the none-of-these outcome.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import ClassVar

import dagster as dg
import joblib
import pandas as pd
import sklearn
from pydantic import PrivateAttr
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from labeling_dagster.core.confidence import version_settings
from labeling_dagster.core.labels import Answer, CallOutcome, LabelTask
from labeling_dagster.project import TierConfig, load_project

FEATURES = ("words", "words+chars")


def build_classifier(features: str, c: float) -> Pipeline:
    if features not in FEATURES:
        raise ValueError(f"options.features must be one of {FEATURES}, got {features!r}")
    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=True)
    vectorizer = (
        words
        if features == "words"
        else FeatureUnion(
            [("words", words), ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))]
        )
    )
    return Pipeline([("features", vectorizer), ("classifier", LogisticRegression(C=c, max_iter=2000))])


class LocalModelProvider(dg.ConfigurableResource):
    """Trains (once per seed set and settings, cached on disk) and applies the local tiers' models."""

    project_file: str
    models_dir: str | None = None

    provider_name: ClassVar[str] = "local"
    _models: dict[str, Pipeline] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _seed_digest: str | None = PrivateAttr(default=None)

    def _settings(self, tier: TierConfig) -> tuple[str, float]:
        return str(tier.options.get("features", "words")), float(tier.options.get("C", 10.0))

    def _seed(self) -> tuple[Path, pd.DataFrame, str, str]:
        project = load_project(self.project_file)
        seed = project.seed_set
        if seed is None:
            raise ValueError(f"{self.project_file}: seed_set is required for local tiers")
        path = project.resolve(seed.path)
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        for column in (seed.text_column, seed.label_column):
            if column not in frame.columns:
                raise ValueError(f"{path}: column {column!r} is missing (seed_set.{column})")
        return path, frame, seed.text_column, seed.label_column

    def version(self, task: LabelTask) -> str:
        features, c = self._settings(task.tier)
        if self._seed_digest is None:
            path, _, _, _ = self._seed()
            self._seed_digest = hashlib.sha256(path.read_bytes()).hexdigest()
        digest = hashlib.sha256(self._seed_digest.encode())
        digest.update(f"{features}|{c}|{sklearn.__version__}|{','.join(task.taxonomy.names)}".encode())
        signal = version_settings(task.tier)
        if signal is not None:  # default and agreement add nothing, so stored answers stay reusable
            digest.update(json.dumps(signal, sort_keys=True).encode())
        return f"local-{digest.hexdigest()[:16]}"

    def check_ready(self, tier: TierConfig) -> None:
        """A local model has one number, its probability: every other signal would silently be that one."""
        if tier.confidence.signal not in ("default", "agreement"):
            raise ValueError(
                f"tiers.{tier.name}.confidence.signal: {tier.confidence.signal} on a local model, which gives the same "
                "answer every time and writes no number or token logprobs: use signal default (or agreement on QA "
                "and adjudication)"
            )

    def _model(self, task: LabelTask) -> Pipeline:
        version = self.version(task)
        with self._lock:
            if version in self._models:
                return self._models[version]
            folder = Path(self.models_dir) if self.models_dir else load_project(self.project_file).root / ".models"
            stored = folder / f"{version}.joblib"
            if stored.exists():
                model = joblib.load(stored)
            else:
                path, frame, text_column, label_column = self._seed()
                unknown = sorted(set(frame[label_column]) - set(task.taxonomy.names))
                if unknown:
                    raise ValueError(f"{path}: labels {unknown[:5]} are not in the taxonomy; fix the seed set or the taxonomy")
                model = build_classifier(*self._settings(task.tier))
                model.fit(frame[text_column].tolist(), frame[label_column].tolist())
                folder.mkdir(parents=True, exist_ok=True)
                temporary = stored.with_suffix(".tmp")
                joblib.dump(model, temporary)
                temporary.replace(stored)
            self._models[version] = model
            return model

    def label_batch(self, task: LabelTask) -> CallOutcome:
        self.check_ready(task.tier)
        started = time.perf_counter()
        model = self._model(task)
        probabilities = model.predict_proba([item.text for item in task.items])
        classes = list(model.classes_)
        answers = []
        for item, row in zip(task.items, probabilities, strict=True):
            ranked = sorted(zip(classes, row), key=lambda pair: -pair[1])[:3]
            label, confidence = ranked[0]
            answers.append(
                Answer(
                    item_id=item.item_id,
                    label=str(label),
                    confidence=round(float(confidence), 6),
                    reason=f"local {task.tier.model}: top probability",
                    alternatives=[(str(name), round(float(score), 6)) for name, score in ranked[1:]],
                )
            )
        elapsed = time.perf_counter() - started
        return CallOutcome(answers=answers, compute_s=elapsed, latency_s=elapsed)
