"""Accuracy against the golden set: items whose text is a golden item's text are scored against its label."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from labeling_dagster.core.labels import content_hash
from labeling_dagster.core.metrics import Accuracy
from labeling_dagster.project import Project


def golden_items(project: Project) -> dict[str, tuple[str, str]]:
    """content hash -> (text, gold label) of the golden set; empty when the project has none."""
    golden = project.golden_set
    if golden is None:
        return {}
    path: Path = project.resolve(golden.path)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in (golden.text_column, golden.label_column):
        if column not in frame.columns:
            raise ValueError(f"{path}: column {column!r} is missing (golden_set.{column})")
    return {
        content_hash(text.strip()): (text.strip(), label)
        for text, label in zip(frame[golden.text_column], frame[golden.label_column])
    }


def golden_answers(project: Project) -> dict[str, str]:
    """content hash -> gold label."""
    return {digest: label for digest, (_, label) in golden_items(project).items()}


def held_out_answers(project: Project) -> dict[str, str]:
    """The golden answers minus the golden run's sample (the items the tiers are calibrated on), so
    accuracy is not measured on what tuned the confidence."""
    answers = golden_answers(project)
    sample = set(sorted(answers)[: project.quality.golden_sample_size])
    return {digest: label for digest, label in answers.items() if digest not in sample}


def golden_score(final: pd.DataFrame, answers: dict[str, str]) -> Accuracy:
    """`final` has content_hash, label and status columns; pending items count as golden but not labeled."""
    if not answers or not len(final):
        return Accuracy(0, 0, 0)
    gold = final["content_hash"].map(answers)
    known = final[gold.notna()]
    labeled = known[known["status"] == "labeled"]
    correct = int((labeled["label"] == gold[labeled.index]).sum())
    return Accuracy(len(known), len(labeled), correct)
