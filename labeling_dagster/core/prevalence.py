"""The share of each label in a month, with a 95% interval that corrects the model labels with the
audited human ones: prediction-powered inference (Angelopoulos, Bates, Fannjiang, Jordan & Zrnic,
"Prediction-powered inference", Science 2023), mean estimation, one stratum per stage.

A stage's accepted labels are biased the way its model is (a model that leans toward one label
inflates it); its audit sample, drawn uniformly from what it accepted, measures that bias. For label l:

    theta = (1/N) * sum over the month's items of f(x)
            + sum over stages s of (N_s / N) * (1/n_s) * sum over s's answered audits of (1[human = l] - 1[model = l])

where f(x) = 1[label = l] with people's label for the items people decided and the stage's label for
the N_s items stage s accepted (its audited items included), and n_s of those audited items have a
settled human answer. The variance is the two parts' (var f / N plus, per stage, (N_s/N)^2 var d / n_s),
the interval normal and clipped to [0, 1]. It is the prevalence of the process the month's items come
from (for the month's own items it is a little conservative). The paper's ppi-python package computes
the same with one stratum; it pulls numba, statsmodels and gdown, so the dozen lines are here.

A stage with fewer than MIN_ANSWERS answered audits gives no correction (a normal interval on a
handful of differences would be overconfident): its labels count as they are and the result says it is
uncorrected. Pure numpy; no Dagster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

MIN_ANSWERS = 10


@dataclass(frozen=True)
class Prevalence:
    """One label's share of the month's labeled items. `naive`: the share of the labels as they are
    (a model's where a model decided); `corrected`: every stage that accepted items had enough answered
    audits to correct its labels (with none, the interval is the naive one); `note` names the stages
    that had not."""

    label: str
    share: float
    low: float
    high: float
    naive: float
    corrected: bool
    items: int
    answers: int
    note: str


def _normal(center: float, variance: float, level: float) -> tuple[float, float]:
    half = float(norm.ppf(0.5 + level / 2)) * float(np.sqrt(max(variance, 0.0)))
    return max(0.0, center - half), min(1.0, center + half)


def prevalence(
    labels: Sequence[str],
    label_counts: Mapping[str, int],
    stage_items: Mapping[str, int],
    audit: pd.DataFrame,
    *,
    level: float = 0.95,
    min_answers: int = MIN_ANSWERS,
) -> list[Prevalence]:
    """`label_counts`: label -> items carrying it (people's label where people decided, else the
    accepting stage's); `stage_items`: stage -> items it accepted (its audited ones included); `audit`:
    the answered audit items, one row each with `stage`, `label` (what the stage accepted) and `truth`
    (people's settled label). Items still waiting for people carry no label and are not counted."""
    total = int(sum(label_counts.values()))
    if total == 0:
        return []
    audit = audit[audit["truth"].notna()] if len(audit) else audit
    by_stage = ({stage: (part["label"].to_numpy(), part["truth"].to_numpy()) for stage, part in audit.groupby("stage")}
                if len(audit) else {})
    answered = {stage: len(given) for stage, (given, _) in by_stage.items()}
    used = [s for s, count in stage_items.items() if count and answered.get(s, 0) >= min_answers]
    short = [f"{s} ({answered.get(s, 0)} answered audits)" for s, count in stage_items.items() if count and s not in used]
    note = "" if not short else f"model labels not corrected for {', '.join(short)}: a stage needs {min_answers}"
    results = []
    for label in labels:
        naive = label_counts.get(label, 0) / total
        share, variance = naive, naive * (1 - naive) / max(total - 1, 1)  # var f / N, f being 0/1
        for stage in used:
            given, truth = by_stage[stage]
            diff = (truth == label).astype(float) - (given == label).astype(float)
            weight = stage_items[stage] / total
            share += weight * float(diff.mean())
            variance += weight**2 * float(diff.var(ddof=1)) / len(diff)
        low, high = _normal(share, variance, level)
        results.append(Prevalence(label, min(1.0, max(0.0, share)), low, high, naive, corrected=not short, items=total,
                                  answers=sum(answered[s] for s in used), note=note))
    return results
