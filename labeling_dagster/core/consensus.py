"""Consensus: several people's (and optionally the models') answers for an item merged into one label,
with how far they agree and how reliable each annotator looks.

The aggregation itself is crowd-kit's (MajorityVote, DawidSkene); this module adds what the pipeline
needs around it: a deterministic tie rule, agreement, the "send it back" flag and annotator quality.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from crowdkit.aggregation import DawidSkene, MajorityVote

Method = Literal["majority", "dawid_skene"]
METHODS: tuple[str, ...] = ("majority", "dawid_skene")
MODEL_PREFIX = "model:"
# Probabilities closer than this are the same number: crowd-kit's arithmetic differs in the last bits
# depending on row order, and a tie must not depend on that.
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Vote:
    """One annotator's label for one item; a model's annotator_id starts with `model:`."""

    item_id: str
    annotator_id: str
    label: str


@dataclass(frozen=True)
class ItemConsensus:
    """The merged answer for one item.

    confidence: majority, the share of votes for the label; Dawid-Skene, its posterior probability.
    agreement: the share of the item's annotators (models included) whose label is the result.
    tie: two or more labels were equally best; the label then follows the tie rule of `consensus`.
    needs_another_review: a tie, or agreement below `min_agreement`: send the item back to people.
    """

    item_id: str
    label: str
    confidence: float
    agreement: float
    n_annotators: int
    n_models: int
    tie: bool
    needs_another_review: bool
    votes: dict[str, int]


@dataclass(frozen=True)
class AnnotatorQuality:
    """How reliable one annotator looks this month.

    accuracy: majority, the share of their answers equal to the consensus on items without a tie;
    Dawid-Skene, the accuracy its confusion matrix implies, sum over labels of prior(label) *
    P(answers label | true label). None when there is nothing to measure it on.
    agreement_with_consensus: the share of their answers equal to the consensus (ties excluded),
    for either method, so the two can be compared.
    """

    annotator_id: str
    is_model: bool
    n_reviews: int
    accuracy: float | None
    agreement_with_consensus: float | None


@dataclass(frozen=True)
class ConsensusResult:
    method: str
    items: list[ItemConsensus]
    annotators: list[AnnotatorQuality]

    def by_item(self) -> dict[str, ItemConsensus]:
        return {item.item_id: item for item in self.items}


def model_votes(answers: Iterable[Any]) -> list[Vote]:
    """Model answers as votes. Each answer (a mapping or an object, e.g. a tier label row) has
    item_id, tier, model and label; the annotator is `model:<tier>:<model>`; answers without a label
    (the tier failed on the item) are left out."""
    votes = []
    for answer in answers:
        label = _field(answer, "label")
        if label is None or label == "":
            continue
        annotator = f"{MODEL_PREFIX}{_field(answer, 'tier')}:{_field(answer, 'model')}"
        votes.append(Vote(str(_field(answer, "item_id")), annotator, str(label)))
    return votes


def consensus(
    reviews: Iterable[Any],
    method: Method = "majority",
    *,
    labels: Sequence[str] | None = None,
    model_answers: Iterable[Any] = (),
    min_agreement: float = 0.6,
) -> ConsensusResult:
    """Merge review rows (anything with item_id, annotator_id, label: `ReviewRow`, `Vote`, dicts) into
    one label per reviewed item.

    - An annotator answering an item twice counts once, with their last answer in input order
      (pass rows sorted by submitted_at so a corrected review replaces the first).
    - `model_answers` (see `model_votes`; `Vote`s are taken as they are) join as extra annotators,
      only on items people reviewed: a model alone never settles an item here.
    - Tie rule (deterministic): among equally best labels, the first in `labels` (the taxonomy
      order) wins, then labels outside it in sorted order. A tie is always flagged for another review.
    - `labels`, when given, must contain every voted label (ValueError naming the vote otherwise).
    """
    if method not in METHODS:
        raise ValueError(f"consensus method {method!r} is unknown; use one of {list(METHODS)}")
    votes = _dedupe([_as_vote(row) for row in reviews])
    reviewed = {vote.item_id for vote in votes}
    models = _model_vote_list(model_answers)
    votes += _dedupe([vote for vote in models if vote.item_id in reviewed])
    if not votes:
        return ConsensusResult(method, [], [])
    order = _label_order(votes, labels)

    data = pd.DataFrame(
        [(vote.item_id, vote.annotator_id, vote.label) for vote in votes], columns=["task", "worker", "label"]
    ).sort_values(["task", "worker"], kind="stable", ignore_index=True)
    if method == "majority":
        probas = MajorityVote().fit_predict_proba(data)
        errors = priors = None
    else:
        model = DawidSkene(n_iter=100)
        probas = model.fit_predict_proba(data)
        errors, priors = model.errors_, model.priors_

    by_item: dict[str, list[Vote]] = defaultdict(list)
    for vote in votes:
        by_item[vote.item_id].append(vote)
    items = []
    for item_id in sorted(by_item):
        row = probas.loc[item_id]
        best = float(row.max())
        tied = sorted((str(label) for label, p in row.items() if best - float(p) <= TIE_TOLERANCE), key=order.index)
        label = tied[0]
        item_votes = by_item[item_id]
        counts = Counter(vote.label for vote in item_votes)
        agreement = counts[label] / len(item_votes)
        tie = len(tied) > 1
        items.append(
            ItemConsensus(
                item_id=item_id,
                label=label,
                confidence=float(row[label]),
                agreement=agreement,
                n_annotators=len(item_votes),
                n_models=sum(vote.annotator_id.startswith(MODEL_PREFIX) for vote in item_votes),
                tie=tie,
                needs_another_review=tie or agreement < min_agreement,
                votes={name: counts[name] for name in sorted(counts, key=order.index)},
            )
        )
    return ConsensusResult(method, items, _annotator_quality(votes, items, errors, priors))


def _annotator_quality(
    votes: list[Vote], items: list[ItemConsensus], errors: pd.DataFrame | None, priors: pd.Series | None
) -> list[AnnotatorQuality]:
    settled = {item.item_id: item.label for item in items if not item.tie}
    answered: dict[str, list[Vote]] = defaultdict(list)
    for vote in votes:
        answered[vote.annotator_id].append(vote)
    out = []
    for annotator_id in sorted(answered):
        mine = answered[annotator_id]
        judged = [vote.label == settled[vote.item_id] for vote in mine if vote.item_id in settled]
        agreement = sum(judged) / len(judged) if judged else None
        if errors is None:
            accuracy = agreement
        else:
            # errors_ rows are (worker, answered label), columns the true label; a label the worker never
            # answered has no row, i.e. probability 0 of answering it.
            matrix = errors.xs(annotator_id, level="worker")
            accuracy = float(sum(priors[true] * matrix.at[true, true] for true in priors.index if true in matrix.index))
        out.append(
            AnnotatorQuality(
                annotator_id=annotator_id,
                is_model=annotator_id.startswith(MODEL_PREFIX),
                n_reviews=len(mine),
                accuracy=accuracy,
                agreement_with_consensus=agreement,
            )
        )
    return out


def _label_order(votes: list[Vote], labels: Sequence[str] | None) -> list[str]:
    known = list(labels or [])
    if labels is not None:
        allowed = set(known)
        for vote in votes:
            if vote.label not in allowed:
                raise ValueError(
                    f"item {vote.item_id!r}, annotator {vote.annotator_id!r}: label {vote.label!r} is not in "
                    f"the taxonomy {known}; reject the review before consensus"
                )
    return known + sorted({vote.label for vote in votes} - set(known))


def _dedupe(votes: list[Vote]) -> list[Vote]:
    last: dict[tuple[str, str], Vote] = {}
    for vote in votes:
        last.pop((vote.item_id, vote.annotator_id), None)
        last[(vote.item_id, vote.annotator_id)] = vote
    return list(last.values())


def _model_vote_list(model_answers: Iterable[Any]) -> list[Any]:
    answers = list(model_answers)
    ready = [answer for answer in answers if isinstance(answer, Vote)]
    return ready + model_votes(answer for answer in answers if not isinstance(answer, Vote))


def _as_vote(row: Any) -> Vote:
    if isinstance(row, Vote):
        return row
    values = [_field(row, name) for name in ("item_id", "annotator_id", "label")]
    if any(value is None or value == "" for value in values):
        raise ValueError(f"review {row!r} lacks item_id, annotator_id or label; import it through read_reviews")
    return Vote(*(str(value) for value in values))


def _field(row: Any, name: str) -> Any:
    return row.get(name) if isinstance(row, Mapping) else getattr(row, name, None)
