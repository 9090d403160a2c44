"""Consensus on small literal review sets with known answers, models joining as annotators, and
(when the research data is present) the Snow 2008 RTE crowd labels against their gold."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from labeling_dagster.core.consensus import Vote, consensus, model_votes

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "snow2008_rte_crowd"


def reviews(*triples: tuple[str, str, str]) -> list[dict[str, str]]:
    return [{"item_id": item, "annotator_id": who, "label": label} for item, who, label in triples]


def flip(label: str) -> str:
    return "y" if label == "x" else "x"


def reliable_and_random_annotators() -> tuple[list[dict[str, str]], dict[str, str]]:
    """g1-g3 are always right on twelve items; b1 and b2 are right half the time (b1 on the first six,
    b2 on the odd ones). On `target`, g1 says x and both b's say y."""
    truth = {f"t{i:02d}": "xy"[i % 2] for i in range(1, 13)}
    triples = []
    for i, (item, label) in enumerate(sorted(truth.items()), start=1):
        triples += [(item, good, label) for good in ("g1", "g2", "g3")]
        triples.append((item, "b1", label if i <= 6 else flip(label)))
        triples.append((item, "b2", label if i % 2 else flip(label)))
    triples += [("target", "g1", "x"), ("target", "b1", "y"), ("target", "b2", "y")]
    return reviews(*triples), truth


def test_majority_labels_agreement_and_votes():
    result = consensus(
        reviews(("a", "ann1", "spam"), ("a", "ann2", "spam"), ("a", "ann3", "ham"), ("b", "ann1", "ham")),
        "majority",
        labels=["ham", "spam"],
    )
    a, b = result.by_item()["a"], result.by_item()["b"]
    assert (a.label, a.n_annotators, a.tie, a.votes) == ("spam", 3, False, {"ham": 1, "spam": 2})
    assert a.agreement == pytest.approx(2 / 3) and a.confidence == pytest.approx(2 / 3)
    assert not a.needs_another_review
    assert (b.label, b.agreement, b.n_annotators) == ("ham", 1.0, 1)
    quality = {q.annotator_id: q for q in result.annotators}
    assert quality["ann1"].accuracy == 1.0 and quality["ann1"].n_reviews == 2
    assert quality["ann3"].accuracy == 0.0


@pytest.mark.parametrize("method", ["majority", "dawid_skene"])
def test_tie_goes_to_the_first_taxonomy_label_and_is_sent_back(method):
    rows = reviews(("a", "p1", "spam"), ("a", "p2", "ham"))
    for order in (["ham", "spam"], ["spam", "ham"]):
        item = consensus(rows, method, labels=order).items[0]
        assert item.tie and item.needs_another_review
        assert item.label == order[0]
        assert item.agreement == 0.5


def test_a_tie_item_does_not_count_in_majority_annotator_accuracy():
    result = consensus(reviews(("a", "p1", "x"), ("a", "p2", "y"), ("b", "p1", "x"), ("b", "p3", "x")), "majority")
    quality = {q.annotator_id: q for q in result.annotators}
    assert quality["p1"].accuracy == 1.0  # only item b is settled
    assert quality["p2"].accuracy is None and quality["p2"].n_reviews == 1


def test_low_agreement_without_a_tie_is_sent_back():
    rows = reviews(("a", "p1", "x"), ("a", "p2", "x"), ("a", "p3", "y"), ("a", "p4", "z"))
    item = consensus(rows, "majority", min_agreement=0.6).items[0]
    assert (item.label, item.tie, item.agreement) == ("x", False, 0.5)
    assert item.needs_another_review
    assert not consensus(rows, "majority", min_agreement=0.5).items[0].needs_another_review


def test_dawid_skene_trusts_the_reliable_annotator_where_majority_follows_the_crowd():
    rows, truth = reliable_and_random_annotators()
    majority = consensus(rows, "majority", labels=["x", "y"]).by_item()
    skene = consensus(rows, "dawid_skene", labels=["x", "y"])
    assert majority["target"].label == "y"
    assert skene.by_item()["target"].label == "x"
    assert skene.by_item()["target"].agreement == pytest.approx(1 / 3)
    assert skene.by_item()["target"].needs_another_review  # the crowd disagrees with the result: visible
    assert all(skene.by_item()[item].label == label for item, label in truth.items())
    quality = {q.annotator_id: q.accuracy for q in skene.annotators}
    assert min(quality["g1"], quality["g2"], quality["g3"]) > 0.95
    assert max(quality["b1"], quality["b2"]) < 0.6


@pytest.mark.parametrize("method", ["majority", "dawid_skene"])
def test_input_order_does_not_change_the_result(method):
    rows, _ = reliable_and_random_annotators()
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    assert consensus(rows, method) == consensus(shuffled, method)


def test_an_annotators_later_answer_replaces_the_earlier():
    rows = reviews(("a", "p1", "x"), ("a", "p2", "y"), ("a", "p1", "y"))
    item = consensus(rows, "majority").items[0]
    assert (item.label, item.n_annotators, item.votes) == ("y", 2, {"y": 2})


def test_model_answers_join_as_annotators_on_reviewed_items_only():
    answers = [
        {"item_id": "a", "tier": "first_pass", "model": "gpt-5-nano", "label": "spam"},
        {"item_id": "unreviewed", "tier": "first_pass", "model": "gpt-5-nano", "label": "spam"},
        {"item_id": "a", "tier": "qa", "model": "haiku", "label": None},  # the tier failed on the item
    ]
    assert model_votes(answers) == [
        Vote("a", "model:first_pass:gpt-5-nano", "spam"),
        Vote("unreviewed", "model:first_pass:gpt-5-nano", "spam"),
    ]
    rows = reviews(("a", "p1", "spam"), ("a", "p2", "ham"))
    without = consensus(rows, "majority", labels=["ham", "spam"]).items[0]
    with_model = consensus(rows, "majority", labels=["ham", "spam"], model_answers=answers)
    assert without.tie and without.label == "ham"
    assert [item.item_id for item in with_model.items] == ["a"]
    item = with_model.items[0]
    assert (item.label, item.tie, item.n_annotators, item.n_models) == ("spam", False, 3, 1)
    model_quality = next(q for q in with_model.annotators if q.is_model)
    assert model_quality.annotator_id == "model:first_pass:gpt-5-nano" and model_quality.accuracy == 1.0


def test_bad_input_is_refused_with_the_offending_vote_named():
    with pytest.raises(ValueError, match="item 'a', annotator 'p1': label 'maybe'"):
        consensus(reviews(("a", "p1", "maybe")), "majority", labels=["x", "y"])
    with pytest.raises(ValueError, match="unknown"):
        consensus(reviews(("a", "p1", "x")), "mean")  # type: ignore[arg-type]
    assert consensus([], "dawid_skene").items == []


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    """The benchmark as a user runs it: python -m benchmarks.consensus from the project root."""
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.consensus", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(not (DATA / "rte.standardized.tsv").exists(), reason=f"research data absent: {DATA}")
def test_snow2008_rte_benchmark_meets_the_dawid_skene_target(tmp_path):
    out = tmp_path / "consensus.json"
    done = run_benchmark("--out", str(out), "--repeats", "1")
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["items"] == 800
    accuracy = {(row["method"], row["annotators"], row["model"]): row["accuracy"] for row in report["rows"]}
    assert accuracy[("dawid_skene", 10, None)] >= 0.925
    assert accuracy[("majority", 10, None)] < accuracy[("dawid_skene", 10, None)]
    assert accuracy[("dawid_skene", 3, None)] > accuracy[("dawid_skene", 1, None)]


def test_benchmark_skips_without_its_data(tmp_path):
    out = tmp_path / "consensus.json"
    done = run_benchmark("--out", str(out), "--data", str(tmp_path / "absent"))
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stdout and not out.exists()


def test_benchmark_writes_rows_on_a_tiny_crowd(tmp_path):
    """A made-up crowd of 10 items x 10 workers (not real data) in the benchmark's file layout."""
    data = tmp_path / "crowd"
    data.mkdir()
    rng = random.Random(3)
    crowd = ["!amt_annotation_ids\t!amt_worker_ids\torig_id\tresponse\tgold"]
    texts = ["id\tvalue\ttask\ttext\thypothesis"]
    for item in range(10):
        gold = str(item % 2)
        for worker in range(10):
            answer = gold if rng.random() < 0.8 else str(1 - int(gold))
            crowd.append(f"a{item}-{worker}\tw{worker}\t{item}\t{answer}\t{gold}")
        texts.append(f"{item}\t{'TRUE' if gold == '1' else 'FALSE'}\tQA\tThe cat {item} sat.\tA cat sat.")
    (data / "rte.standardized.tsv").write_text("\n".join(crowd) + "\n")
    (data / "rte1_texts.tsv").write_text("\n".join(texts) + "\n")
    out = tmp_path / "consensus.json"
    done = run_benchmark("--out", str(out), "--data", str(data), "--repeats", "2")
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    settings = {(row["method"], row["annotators"], row["model_included"], row["model"]) for row in report["rows"]}
    assert len(settings) == len(report["rows"]) == 2 * 4 * 3
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in report["rows"])
    assert "dawid_skene" in done.stdout
