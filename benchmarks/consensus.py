"""Consensus accuracy against gold on real crowd labels: Snow et al. 2008, RTE-1 (800 items, 10
Mechanical Turk workers each), for majority vote and Dawid-Skene with 1, 3, 5 and 10 annotators per
item, without and with a model's answer as one more annotator.

The data is research data that the project may not ship: it is read from ../shared/data and the run
is skipped when it is absent. Run: python -m benchmarks.consensus --out FILE.json [--data DIR]
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from labeling_dagster.core.consensus import METHODS, Vote, consensus

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "snow2008_rte_crowd"  # ../shared/data, never copied in
LABELS = ["0", "1"]  # 0 = not entailed, 1 = entailed; on a tie the rule picks "0"
ANNOTATOR_COUNTS = (1, 3, 5, 10)
NEGATIONS = {"not", "no", "never", "nobody", "none", "nothing", "neither", "nor"}


def load_crowd(data_dir: Path) -> tuple[dict[str, list[Vote]], dict[str, str]]:
    """Votes by item and gold by item from rte.standardized.tsv (columns: !amt_annotation_ids,
    !amt_worker_ids, orig_id, response, gold)."""
    votes: dict[str, list[Vote]] = defaultdict(list)
    gold: dict[str, str] = {}
    with open(data_dir / "rte.standardized.tsv", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            votes[row["orig_id"]].append(Vote(row["orig_id"], row["!amt_worker_ids"], row["response"]))
            gold[row["orig_id"]] = row["gold"]
    return dict(votes), gold


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", html.unescape(text).lower())


def _bigrams(words: list[str]) -> set[tuple[str, str]]:
    return set(zip(words, words[1:]))


def _pair_features(text: str, hypothesis: str, task: str, tasks: list[str]) -> list[float]:
    premise, claim = _words(text), _words(hypothesis)
    coverage = len(set(claim) & set(premise)) / max(1, len(set(claim)))
    bigram_coverage = len(_bigrams(claim) & _bigrams(premise)) / max(1, len(_bigrams(claim)))
    negation_mismatch = float(bool(NEGATIONS & set(claim)) != bool(NEGATIONS & set(premise)))
    new_numbers = float(bool({w for w in claim if w.isdigit()} - set(premise)))
    task_onehot = [float(task == name) for name in tasks]
    return [coverage, bigram_coverage, len(claim) / max(1, len(premise)), len(set(claim) - set(premise)),
            negation_mismatch, new_numbers, len(premise), *task_onehot, *(coverage * t for t in task_onehot)]


def local_model_answers(data_dir: Path, seed: int) -> dict[str, str]:
    """A real but weak local model: logistic regression on lexical-overlap features of (text,
    hypothesis) from rte1_texts.tsv, each item's answer predicted out-of-fold (5-fold), so no item is
    labeled by a model that saw its gold."""
    with open(data_dir / "rte1_texts.tsv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    tasks = sorted({row["task"] for row in rows})
    features = np.array([_pair_features(row["text"], row["hypothesis"], row["task"], tasks) for row in rows])
    truth = np.array([row["value"] == "TRUE" for row in rows], dtype=int)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    predicted = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression()), features, truth, cv=folds)
    return {row["id"]: str(label) for row, label in zip(rows, predicted)}


def simulated_model_answers(gold: dict[str, str], accuracy: float, rng: np.random.Generator) -> dict[str, str]:
    """SIMULATED, not a model: the gold label with probability `accuracy`, else the other label,
    independently per item. It stands in for an LLM tier of that accuracy (an assumption)."""
    return {item: label if rng.random() < accuracy else LABELS[1 - LABELS.index(label)]
            for item, label in sorted(gold.items())}


def _sample(votes: dict[str, list[Vote]], k: int, rng: np.random.Generator) -> list[Vote]:
    picked = []
    for item in sorted(votes):
        item_votes = votes[item]
        picked += [item_votes[i] for i in sorted(rng.choice(len(item_votes), size=k, replace=False))]
    return picked


def run(data_dir: Path, repeats: int, seed: int, simulated_accuracy: float) -> dict:
    votes, gold = load_crowd(data_dir)
    local = local_model_answers(data_dir, seed)
    local_accuracy = float(np.mean([local[item] == gold[item] for item in gold]))
    simulated = f"simulated_{simulated_accuracy:g}"
    # Each model gives its answers for one repeat; None is "no model joins".
    models = {
        None: lambda rng: {},
        "local_overlap_lr": lambda rng: local,
        simulated: lambda rng: simulated_model_answers(gold, simulated_accuracy, rng),
    }
    rows = []
    for method in METHODS:
        for k in ANNOTATOR_COUNTS:
            # All 10 workers of an item are the same sample every time: one repeat says it all.
            runs = 1 if k == max(len(v) for v in votes.values()) else repeats
            for model_name, answers_for in models.items():
                # Seeded per k, apart from the model's draws: every method and model sees the same workers.
                worker_rng, model_rng = np.random.default_rng([seed, k]), np.random.default_rng([seed, k, 1])
                accuracy, review_share = [], []
                for _ in range(runs):
                    sample = _sample(votes, k, worker_rng)
                    model_votes = [Vote(item, f"model:{model_name}", label)
                                   for item, label in answers_for(model_rng).items()]
                    result = consensus(sample, method, labels=LABELS, model_answers=model_votes)
                    accuracy.append(np.mean([item.label == gold[item.item_id] for item in result.items]))
                    review_share.append(np.mean([item.needs_another_review for item in result.items]))
                rows.append({
                    "method": method,
                    "annotators": k,
                    "model_included": model_name is not None,
                    "model": model_name,
                    "accuracy": round(float(np.mean(accuracy)), 4),
                    "accuracy_std": round(float(np.std(accuracy)), 4),
                    "needs_another_review": round(float(np.mean(review_share)), 4),
                    "repeats": runs,
                })
    return {
        "dataset": "Snow et al. 2008 RTE-1 crowd labels (800 items x 10 Mechanical Turk workers), gold from RTE-1",
        "data_dir": str(data_dir),
        "items": len(gold),
        "seed": seed,
        "tie_rule": "a tie goes to the first label in taxonomy order: '0' (not entailed)",
        "models": {
            "local_overlap_lr": {"kind": "real, out-of-fold logistic regression on lexical overlap features",
                                 "accuracy": round(local_accuracy, 4)},
            simulated: {"kind": "SIMULATED from gold, independent errors (nominal accuracy)",
                        "accuracy": simulated_accuracy},
        },
        "rows": rows,
    }


def _table(report: dict) -> str:
    lines = [f"{'method':<12} {'annot.':>6} {'model':<18} {'accuracy':>8} {'± std':>7} {'re-review':>9}"]
    for row in report["rows"]:
        lines.append(f"{row['method']:<12} {row['annotators']:>6} {row['model'] or '-':<18} "
                     f"{row['accuracy']:>8.4f} {row['accuracy_std']:>7.4f} {row['needs_another_review']:>9.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.consensus", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"default {DEFAULT_DATA}")
    parser.add_argument("--repeats", type=int, default=20, help="worker samples averaged per setting")
    parser.add_argument("--seed", type=int, default=2008)
    parser.add_argument("--simulated-accuracy", type=float, default=0.85)
    args = parser.parse_args(argv)
    if not (args.data / "rte.standardized.tsv").exists() or not (args.data / "rte1_texts.tsv").exists():
        print(f"skipped: Snow 2008 RTE crowd data not found in {args.data} (it is not shipped; pass --data DIR)")
        return 0
    report = run(args.data, args.repeats, args.seed, args.simulated_accuracy)
    print(_table(report))
    for name, model in report["models"].items():
        print(f"{name}: {model['kind']}, accuracy {model['accuracy']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
