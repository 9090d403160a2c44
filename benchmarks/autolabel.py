"""Auto-labeling coverage at a target accuracy, with human labels chosen at random or by active learning.

The stream (train.csv) is labeled by a SIMULATED annotator that answers with the gold label; the
auto-labeler trained on those labels is then measured on test.csv: each row says whether its accepted
items met the target there (`target_met`), and the report counts the rows that did not. `--rule scan`
chooses thresholds by the rule before issue 13 (benchmarks.certify.scan_threshold) for comparison. Run:
python -m benchmarks.autolabel --out FILE.json [--data DIR] [--quick] [--rule fixed_sequence|scan]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.certify import scan_threshold
from labeling_dagster.core.autolabel import (
    FEATURES,
    MIN_TRAINING_SIZE,
    ThresholdChoice,
    accuracy_lower_bound,
    choose_threshold,
    cross_fit,
    embeddings_available,
    select_for_review,
    train,
)
from labeling_dagster.core.estimate import ground_truth_prices, human_usd_per_review
from labeling_dagster.core.labels import Item, content_hash

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "banking77"
CHECKPOINTS = (1000, 2000, 3000)
TARGETS = (0.97, 0.95)
SEED_BATCH = 500  # the first human labels of an active run, drawn at random: no model exists yet
ROUND = 250  # labels per active-learning round; the model is retrained between rounds
AUDIT_SHARE = 0.2  # of each round drawn at random, like Ground Truth's random validation split
HOURLY_RATE_USD, REVIEWS_PER_HOUR = 25.0, 300.0  # in-house reviewers, shared/seeds/000
RULES = {
    "fixed_sequence": "core.autolabel.choose_threshold: fixed-sequence testing (core.certify.certify), strictest "
    "threshold first, one-sided 95% Clopper-Pearson lower bound >= target, stop at the first failure",
    "scan": "BASELINE, the rule before issue 13 (benchmarks.certify.scan_threshold): the lowest threshold whose "
    "out-of-fold held-out accuracy has a one-sided 95% Clopper-Pearson lower bound >= target, with at least 50 "
    "accepted held-out items, every threshold tested at once",
}


def threshold_choice(
    rule: str, confidences: np.ndarray, correct: np.ndarray, target: float, n: int
) -> ThresholdChoice:
    """The threshold by `rule` on the out-of-fold answers (both refuse below MIN_TRAINING_SIZE labels)."""
    choice = choose_threshold(confidences, correct, target, training_size=n)
    if rule == "fixed_sequence" or n < MIN_TRAINING_SIZE:
        return choice
    threshold = scan_threshold(confidences, correct, target)
    if threshold is None:
        return ThresholdChoice(None, 0.0, None, None, 0, len(confidences), target, 0.95, "scan: no threshold passes")
    accepted = confidences >= threshold
    hits, total = int(correct[accepted].sum()), int(accepted.sum())
    return ThresholdChoice(threshold, total / len(confidences), hits / total, accuracy_lower_bound(hits, total, 0.95),
                           total, len(confidences), target, 0.95, f"scan: accept confidence >= {threshold:.4f}")


def load_split(data_dir: Path, name: str) -> pd.DataFrame:
    path = data_dir / name
    if not path.exists():
        raise SystemExit(f"{path} not found: --data needs a folder with train.csv and test.csv (columns text, category)")
    frame = pd.read_csv(path)
    missing = {"text", "category"} - set(frame.columns)
    if missing:
        raise SystemExit(f"{path}: missing column(s) {sorted(missing)}; expected columns text, category")
    frame = frame.dropna(subset=["text", "category"])
    return frame.assign(text=frame.text.astype(str), category=frame.category.astype(str)).reset_index(drop=True)


def human_label_orders(
    stream: pd.DataFrame, features: str, checkpoints: tuple[int, ...], seed: int
) -> dict[str, tuple[list[int], set[int]]]:
    """For each selection: the order in which people label stream rows, and which rows were drawn
    at random (the only ones the threshold is estimated on).

    Active learning: a random seed batch, then rounds of ROUND items, AUDIT_SHARE of them at random
    and the rest by margin sampling with class balance. The simulated annotator answers each chosen
    row with its gold category.
    """
    items = [Item(str(i), text, content_hash(text)) for i, text in enumerate(stream.text)]
    texts, gold = stream.text.tolist(), stream.category.tolist()
    rng = np.random.default_rng(seed)
    random_order = [int(i) for i in rng.permutation(len(stream))[: max(checkpoints)]]
    orders = {"random": (random_order, set(random_order))}

    labeled = random_order[:SEED_BATCH]
    audited = set(labeled)
    round_number = 0
    while len(labeled) < max(checkpoints):
        model = train([texts[i] for i in labeled], [gold[i] for i in labeled], features, seed)
        round_number += 1
        taken = set(labeled)
        pool = [item for item in items if int(item.item_id) not in taken]
        size = min(ROUND, max(checkpoints) - len(labeled))
        audit = select_for_review(None, pool, int(size * AUDIT_SHARE), "random", seed=seed + round_number)
        audit_ids = set(audit)
        rest = [item for item in pool if item.item_id not in audit_ids]
        chosen = select_for_review(model, rest, size - len(audit), "margin", class_balance=True, seed=seed)
        labeled += [int(i) for i in audit + chosen]
        audited |= {int(i) for i in audit}
    orders["active"] = (labeled, audited)
    return orders


def evaluate(
    stream: pd.DataFrame,
    test: pd.DataFrame,
    features: str,
    checkpoints: tuple[int, ...],
    seed: int,
    folds: int,
    workers: int,
    rule: str = "fixed_sequence",
) -> list[dict[str, Any]]:
    texts, gold = stream.text.tolist(), np.asarray(stream.category.tolist(), dtype=object)
    truth = np.asarray(test.category.tolist(), dtype=object)
    gt_usd = ground_truth_prices().task("text_classification").usd_per_object * workers
    inhouse_usd = float(human_usd_per_review(HOURLY_RATE_USD, REVIEWS_PER_HOUR))
    rows = []
    for selection, (order, audited) in human_label_orders(stream, features, checkpoints, seed).items():
        for n in checkpoints:
            started = time.perf_counter()
            labeled = order[:n]
            held_out = [i in audited for i in labeled]
            fit = cross_fit([texts[i] for i in labeled], gold[labeled], features, seed, folds, held_out)
            model = fit.model
            predicted, test_conf = model.predict(test.text.tolist())
            test_right = np.asarray(predicted, dtype=object) == truth
            unlabeled = np.setdiff1d(np.arange(len(stream)), labeled)
            stream_pred, stream_conf = model.predict([texts[i] for i in unlabeled])
            stream_right = np.asarray(stream_pred, dtype=object) == gold[unlabeled]
            for target in TARGETS:
                choice = threshold_choice(rule, fit.confidences, fit.correct, target, n)
                auto = test_conf >= choice.threshold if choice.threshold is not None else np.zeros(len(test), bool)
                coverage = float(auto.mean())
                accuracy_auto = float(test_right[auto].mean()) if auto.any() else None
                stream_auto = (
                    stream_conf >= choice.threshold if choice.threshold is not None else np.zeros(len(unlabeled), bool)
                )
                rows.append(
                    {
                        "human_labels": n,
                        "selection": selection,
                        "features": features,
                        "target_accuracy": target,
                        "rule": rule,
                        "threshold": None if choice.threshold is None else round(choice.threshold, 4),
                        "coverage": round(coverage, 4),
                        "accuracy_auto": None if accuracy_auto is None else round(accuracy_auto, 4),
                        # People are assumed to answer every item the model did not take correctly.
                        "accuracy_overall": round(coverage * (accuracy_auto or 0.0) + (1 - coverage), 4),
                        "target_met": accuracy_auto is None or accuracy_auto >= target,
                        "model_accuracy_all_test": round(float(test_right.mean()), 4),
                        "held_out_labels": int(sum(held_out)),
                        "estimated_accuracy": choice.estimated_accuracy and round(choice.estimated_accuracy, 4),
                        "accuracy_lower_bound": choice.lower_bound and round(choice.lower_bound, 4),
                        "estimated_coverage": round(choice.coverage, 4),
                        "reason": choice.reason,
                        "stream_rest_items": int(len(unlabeled)),
                        "stream_rest_coverage": round(float(stream_auto.mean()), 4),
                        "stream_rest_accuracy_auto": (
                            round(float(stream_right[stream_auto].mean()), 4) if stream_auto.any() else None
                        ),
                        "test_items": int(len(test)),
                        "auto_labeled_items": int(auto.sum()),
                        "human_usd_saved_per_10k_gt": round(coverage * 10_000 * gt_usd, 2),
                        "human_usd_saved_per_10k_inhouse": round(coverage * 10_000 * inhouse_usd, 2),
                        "training_labels_usd_gt": round(n * gt_usd, 2),
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                )
            print(f"  {features} {selection} {n}: done in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'features':<17}{'selection':<10}{'labels':>7}{'target':>7}{'thresh':>8}{'coverage':>9}"
        f"{'acc_auto':>9}{'acc_all':>8}{'met':>5}{'saved/10k GT':>13}{'saved/10k $25h':>15}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        threshold = "-" if r["threshold"] is None else f"{r['threshold']:.3f}"
        accuracy = "-" if r["accuracy_auto"] is None else f"{r['accuracy_auto']:.3f}"
        lines.append(
            f"{r['features']:<17}{r['selection']:<10}{r['human_labels']:>7}{r['target_accuracy']:>7.2f}{threshold:>8}"
            f"{r['coverage']:>9.3f}{accuracy:>9}{r['accuracy_overall']:>8.3f}{'yes' if r['target_met'] else 'no':>5}"
            f"{r['human_usd_saved_per_10k_gt']:>13.2f}{r['human_usd_saved_per_10k_inhouse']:>15.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.autolabel", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train.csv and test.csv")
    parser.add_argument("--quick", action="store_true", help="TF-IDF, 1,000 labels, 3 folds: under a minute")
    parser.add_argument("--features", help=f"comma-separated, from {FEATURES}; default: all that are installed")
    parser.add_argument("--workers", type=int, default=3, help="Ground Truth workers per item (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rule", choices=sorted(RULES), default="fixed_sequence",
                        help="threshold rule: fixed_sequence (production) or scan (the rule before issue 13)")
    args = parser.parse_args(argv)

    stream, test = load_split(args.data, "train.csv"), load_split(args.data, "test.csv")
    if args.features:
        features = [f.strip() for f in args.features.split(",")]
        unknown = sorted(set(features) - set(FEATURES))
        if unknown:
            parser.error(f"--features: unknown {unknown}; choose from {FEATURES}")
    elif args.quick or not embeddings_available():
        features = ["tfidf"]
    else:
        features = list(FEATURES)
    checkpoints = (1000,) if args.quick else CHECKPOINTS
    checkpoints = tuple(n for n in checkpoints if n < len(stream))
    if not checkpoints:
        raise SystemExit(f"{args.data / 'train.csv'}: {len(stream)} rows, fewer than the 1,000 human labels to simulate")
    folds = 3 if args.quick else 5
    print(
        f"{args.data.name}: stream {len(stream)} items, test {len(test)}; SIMULATED annotator (gold label); "
        f"features {features}",
        file=sys.stderr,
    )
    rows = [row for f in features
            for row in evaluate(stream, test, f, checkpoints, args.seed, folds, args.workers, args.rule)]
    missed = [row for row in rows if not row["target_met"]]
    gt_price = ground_truth_prices().task("text_classification").usd_per_object
    report = {
        "dataset": str(args.data),
        "stream_items": len(stream),
        "test_items": len(test),
        "annotator": "simulated: every human label is the gold category of the stream item",
        "overall_accuracy_assumes": "people label every item the model did not accept, correctly",
        "threshold_rule": args.rule,
        "threshold_rule_text": RULES[args.rule],
        "target_met": "accuracy on test.csv of the items accepted there >= the row's target (a row that accepts "
        "nothing meets it: people label every item)",
        "rows_missing_target": len(missed),
        "rows_accepting": sum(row["threshold"] is not None for row in rows),
        "rows_missing": [f"{r['features']} {r['selection']} {r['human_labels']} labels, target {r['target_accuracy']}: "
                         f"{r['accuracy_auto']} on {r['coverage']:.1%}" for r in missed],
        "active_learning": f"random seed batch of {SEED_BATCH}, then rounds of {ROUND}: {AUDIT_SHARE:.0%} random "
        "(the held-out audit), the rest margin sampling with class balance",
        "cost_basis": {
            "ground_truth_usd_per_item": gt_price * args.workers,
            "ground_truth": f"${gt_price}/unit text classification (Mechanical Turk) x {args.workers} workers",
            "inhouse_usd_per_item": round(float(human_usd_per_review(HOURLY_RATE_USD, REVIEWS_PER_HOUR)), 5),
            "inhouse": f"${HOURLY_RATE_USD:.0f}/h at {REVIEWS_PER_HOUR:.0f} reviews/h, one reviewer per item",
            "saved": "coverage x 10,000 items x price per item: the human labels the auto-labeler replaces",
        },
        "seed": args.seed,
        "quick": args.quick,
        "rows": rows,
    }
    print(_table(rows))
    print(f"rule {args.rule}: {len(missed)} of {len(rows)} rows miss their target on test.csv "
          f"({report['rows_accepting']} accept anything)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
