"""The certified gate: fixed-sequence certificates keep their guarantee where the old scan did not,
each tier is certified on the golden items that reach it, a month that drifted is rechecked, and a
month through Dagster accepts only what its certificates allow.

The models here are simulated (a confidence drawn at random, right with a probability that rises with
it), so the true accuracy of every accepted set is known exactly."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from scipy.stats import beta
from conftest import LABELS, write_tiny_project
from test_pipeline import run_month, table

from labeling_dagster.assets.drift import recheck
from labeling_dagster.core import certify as gate
from labeling_dagster.core.certify import certify
from labeling_dagster.core.gate import TierAnswers, certify_golden_path
from labeling_dagster.core.routing import StageGate, bucket
from labeling_dagster.project import Project
from labeling_dagster.resources.warehouse import connect, ensure_tables


def _true_accuracy(threshold: float) -> float:
    """P(right | confidence c) = 0.8 + 0.2 c with c uniform on [0, 1]: the accuracy of `c >= threshold`."""
    return 0.8 + 0.1 * (1 + threshold)


def _draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    confidence = rng.random(n)
    return confidence, rng.random(n) < 0.8 + 0.2 * confidence


def _old_scan(confidence: np.ndarray, right: np.ndarray, target: float, min_count: int = 50) -> float | None:
    """choose_threshold before the fixed sequence: the lowest threshold whose bound passes, any order."""
    order = np.argsort(-confidence)
    hits = np.cumsum(right[order])
    totals = np.arange(1, len(order) + 1)
    bounds = beta.ppf(0.05, np.maximum(hits, 1), totals - hits + 1)
    passing = np.flatnonzero((bounds >= target) & (totals >= min_count) & (hits > 0))
    return float(confidence[order][passing[-1]]) if len(passing) else None


def test_the_fixed_sequence_keeps_its_guarantee_where_the_old_scan_did_not():
    target, delta, repetitions = 0.95, 0.05, 300
    missed_new = missed_old = certified = 0
    for seed in range(repetitions):
        confidence, right = _draw(np.random.default_rng(seed), 1500)
        certificate = certify(confidence, right, target=target, delta=delta)
        if certificate.passed:
            certified += 1
            missed_new += _true_accuracy(certificate.threshold) < target
        old = _old_scan(confidence, right, target)
        missed_old += old is not None and _true_accuracy(old) < target
    assert certified > repetitions * 0.7  # the test has power: most draws certify something
    # P(miss) <= delta; 300 repetitions: allow two standard errors of noise above 5%.
    assert missed_new / repetitions <= delta + 2 * np.sqrt(delta * (1 - delta) / repetitions)
    assert missed_old > missed_new  # scanning every threshold spends the error budget many times


def test_a_stage_too_small_to_prove_the_target_accepts_nothing_and_says_why():
    certificate = certify([0.99] * 40, [True] * 40, target=0.95, delta=0.05, stage="qa")
    assert not certificate.passed and certificate.threshold is None
    assert "59" in certificate.reason  # 40 right answers cannot show 95% at delta 0.05: 59 would
    assert gate.perfect_record_needs(0.95, 0.05) == 59
    refusal = StageGate("qa", "certified", certificate).refusal(0.99)
    assert refusal.startswith("qa has no certified threshold this month")
    assert StageGate("qa", "certified", None).refusal(0.99).endswith("it accepts nothing")
    assert StageGate("qa", "bands", None).refusal(0.1) is None  # quality.gate bands: not certified


def _project(**routing) -> Project:
    return Project.model_validate({
        "name": "sim", "taxonomy": {"labels": [{"name": n} for n in ("a", "b", "c")]},
        "source": {"path": "x/{month}.csv", "start_month": "2026-01"},
        "tiers": [{"name": "fp", "role": "first_pass", "provider": "openai", "model": "gpt-5-nano"},
                  {"name": "qa", "role": "qa", "provider": "openai", "model": "gpt-5-mini"}],
        "routing": {"accept_at": 0.0, "qa_at": 0.0, "adjudicate_at": 0.0, "qa_accept_at": 0.0, **routing},
        "budget": {"monthly_usd": 1}, "quality": {"calibration": "none"},
    })


def test_each_tier_is_certified_on_the_golden_items_that_reach_it():
    """Simulated: a first pass 99% right on easy items (which the auto-labeler takes) and 80% on hard
    ones, at the same confidence. On the whole sample it would pass; on its own residue it must not."""
    rng = np.random.default_rng(7)
    n = 1200
    easy = rng.random(n) < 0.9
    gold = rng.choice(["a", "b", "c"], n)
    confidence = 0.9 + 0.1 * rng.random(n)
    right = np.where(easy, rng.random(n) < 0.99, rng.random(n) < 0.80)
    wrong = {"a": "b", "b": "c", "c": "a"}
    labels = [g if r else wrong[g] for g, r in zip(gold, right)]
    project = _project()
    qa = TierAnswers(project.tiers[1], list(gold), [0.99] * n)  # QA always right, sure of itself
    answers = {"first_pass": TierAnswers(project.tiers[0], labels, list(confidence)), "qa": qa}
    ids = [f"g{i}" for i in range(n)]

    whole = certify(confidence, right, target=0.95, delta=0.05, grid=(0.9,))
    assert whole.passed  # measured on every golden item (97% right), accepting all of them looks safe

    path = certify_golden_path(project, list(gold), answers, auto_accepted=list(easy), forced=[False] * n, item_ids=ids)
    first = path.stages["first_pass"]
    assert first.certificate.items == int((~easy).sum())  # only the residue reaches it
    assert not first.certificate.passed  # and on the residue it is 80% right: nothing accepted
    assert first.reached.sum() == (~easy).sum()
    # everything the first pass could not accept went to QA, which is certified on exactly those items
    assert path.stages["qa"].certificate.items == int((~easy).sum()) and path.stages["qa"].certificate.passed
    outcome = np.array(path.outcome)
    assert set(outcome[easy]) == {"auto_label"} and "first_pass" not in outcome


def _recheck_warehouse(tmp_path: Path, month_signal: np.ndarray) -> tuple[Path, Project]:
    """A warehouse with a first-pass certificate whose reference is uniform on [0.5, 1], and a month of
    accepted first-pass rows with `month_signal`."""
    project = _project()
    rng = np.random.default_rng(3)
    reference = {"signal": list(0.5 + 0.5 * rng.random(400)), "labels": list(rng.choice(["a", "b", "c"], 400))}
    path = tmp_path / "warehouse.duckdb"
    with connect(path) as conn:
        ensure_tables(conn)
        conn.execute("INSERT INTO certificates (month, stage, threshold, passed, audit_share, reference) VALUES "
                     "('2026-03-01', 'first_pass', 0.5, TRUE, 0.02, ?)", [json.dumps(reference)])
        for i, value in enumerate(month_signal):
            conn.execute("INSERT INTO first_pass_labels (month, item_id, tier, label, signal, next_step, route_reason, "
                         "audited) VALUES ('2026-03-01', ?, 'fp', ?, ?, 'accept', 'confidence', FALSE)",
                         [f"m{i:04d}", "abc"[i % 3], float(value)])
    return path, project


@pytest.mark.parametrize("shifted", [False, True])
def test_a_month_that_drifted_from_its_calibration_data_is_rechecked(tmp_path: Path, shifted: bool):
    rng = np.random.default_rng(11)
    signal = 0.5 + (0.2 if shifted else 0.5) * rng.random(600)  # shifted: confidences crowd at the low end
    path, project = _recheck_warehouse(tmp_path, signal)
    window = dg.TimeWindow(datetime(2026, 3, 1), datetime(2026, 4, 1))
    with connect(path) as conn:
        found = recheck(conn, project, "first_pass", "first_pass_labels", window)
        once = conn.execute("SELECT * FROM first_pass_labels ORDER BY item_id").fetchall()
        stored_once = conn.execute("SELECT drift FROM certificates").fetchone()[0]
        # a collect step re-executed after its recheck committed (a crash before the step ended): the same state
        recheck(conn, project, "first_pass", "first_pass_labels", window)
        assert conn.execute("SELECT * FROM first_pass_labels ORDER BY item_id").fetchall() == once
        assert conn.execute("SELECT drift FROM certificates").fetchone()[0] == stored_once
        audited = conn.execute("SELECT item_id, route_reason FROM first_pass_labels WHERE audited").fetchall()
        recheck_flag, share, stored = conn.execute(
            "SELECT recheck, audit_share, drift FROM certificates WHERE stage = 'first_pass'").fetchone()
    assert found.shifted is shifted and json.loads(stored)["shifted"] is shifted
    expected = {f"m{i:04d}" for i in range(600)
                if bucket(f"m{i:04d}", "audit:first_pass:") < project.quality.recheck_audit_share}
    with connect(path) as conn:
        steps = dict(conn.execute("SELECT next_step, COUNT(*) FROM first_pass_labels GROUP BY 1").fetchall())
        reasons = {r for (r,) in conn.execute("SELECT route_reason FROM first_pass_labels WHERE next_step = 'qa'").fetchall()}
    if shifted:
        assert recheck_flag and share == project.quality.recheck_audit_share
        assert {item for item, _ in audited} == expected and 30 < len(expected) < 90  # ~10% of 600
        assert all(reason.startswith("audit of first_pass (recheck") for _, reason in audited)
        assert "Kolmogorov-Smirnov" in found.reason
        # the stage accepts nothing more until the recheck is answered: the rest goes up to QA
        assert steps == {"human": len(expected), "qa": 600 - len(expected)}
        assert all(reason.startswith("held: first_pass accepted") for reason in reasons)
        assert json.loads(stored)["held"] == 600 - len(expected)
    else:
        assert not recheck_flag and share == project.quality.audit_share and audited == []
        assert steps == {"accept": 600}


def test_a_recheck_people_confirmed_lets_the_stage_accept_again(tmp_path: Path):
    rng = np.random.default_rng(11)
    path, project = _recheck_warehouse(tmp_path, 0.5 + 0.2 * rng.random(600))
    window = dg.TimeWindow(datetime(2026, 3, 1), datetime(2026, 4, 1))
    sample = [f"m{i:04d}" for i in range(600)
              if bucket(f"m{i:04d}", "audit:first_pass:") < project.quality.recheck_audit_share]
    with connect(path) as conn:  # people settled the recheck sample, agreeing with the first pass
        for item in sample:
            conn.execute("INSERT INTO review_consensus (month, item_id, label, settled) VALUES ('2026-03-01', ?, ?, TRUE)",
                         [item, "abc"[int(item[1:]) % 3]])
        found = recheck(conn, project, "first_pass", "first_pass_labels", window)
        steps = dict(conn.execute("SELECT next_step, COUNT(*) FROM first_pass_labels GROUP BY 1").fetchall())
        stored = json.loads(conn.execute("SELECT drift FROM certificates").fetchone()[0])
    assert found.shifted and stored["recheck_confirmed"] and stored["held"] == 0
    assert steps == {"human": len(sample), "accept": 600 - len(sample)}  # the sample stays with people


# --------------------------------------------------------------------------- through Dagster


def _with_large_golden_set(root: Path, extra_yaml: str = "") -> Path:
    """The tiny project with 240 golden items (80 per label, variations of its texts), enough for the
    local first pass to earn a certificate at 95%."""
    write_tiny_project(root, extra_yaml=extra_yaml)
    with open(root / "golden.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for label, texts in LABELS.items():
            for n in range(80):
                writer.writerow([f"{texts[n % len(texts)]} ref {n}", label])
    return root


def test_a_month_accepts_only_what_its_certificates_allow(tmp_path: Path):
    project = _with_large_golden_set(tmp_path / "p", "quality: {audit_share: 0.3}\n")
    warehouse = tmp_path / "warehouse.duckdb"
    assert run_month(project, warehouse).success
    rows = dict((stage, (threshold, items, passed)) for stage, threshold, items, passed in table(
        warehouse, "SELECT stage, threshold, items, passed FROM certificates"))
    threshold, items, passed = rows["first_pass"]
    assert passed and items == 240  # no auto-labeler, no rule matches a golden text: every golden item reaches it
    accepted = table(warehouse, "SELECT signal FROM first_pass_labels WHERE next_step = 'accept'")
    assert accepted and all(signal >= threshold for (signal,) in accepted)
    # the audit: about 30% of what the first pass accepted went to people instead, flagged and queued
    audited = table(warehouse, "SELECT item_id, route_reason FROM first_pass_labels WHERE audited")
    assert audited and all(reason.startswith("audit of first_pass") for _, reason in audited)
    queued = dict(table(warehouse, "SELECT item_id, queue_reason FROM review_queue"))
    assert all(queued[item].startswith("audit of first_pass") for item, _ in audited)
    assert table(warehouse, f"SELECT DISTINCT status FROM final_labels WHERE item_id IN "
                            f"({', '.join(repr(item) for item, _ in audited)})") == [("pending_human",)]


def test_without_a_certifiable_golden_set_no_model_accepts_anything(tiny_project: Path, tmp_path: Path):
    warehouse = tmp_path / "warehouse.duckdb"
    assert run_month(tiny_project, warehouse).success
    # three golden items cannot prove 95%: both tiers accept nothing and say why
    assert table(warehouse, "SELECT stage, passed FROM certificates ORDER BY stage") == [
        ("first_pass", False), ("qa", False)]
    assert table(warehouse, "SELECT COUNT(*) FROM final_labels WHERE status = 'labeled'") == [(0,)]
    reasons = [reason for (reason,) in table(warehouse, "SELECT route_reason FROM first_pass_labels")]
    assert any("first_pass has no certified threshold this month" in reason for reason in reasons)


def test_adjudication_is_certified_on_what_its_production_prompt_shows():
    """An item in the adjudication band goes from the first pass straight to adjudication: its
    agreement signal counts the first pass only, as its production row does, not QA's answer."""
    project = Project.model_validate({
        "name": "sim", "taxonomy": {"labels": [{"name": n} for n in ("a", "b")]},
        "source": {"path": "x/{month}.csv", "start_month": "2026-01"},
        "tiers": [{"name": "fp", "role": "first_pass", "provider": "openai", "model": "gpt-5-nano"},
                  {"name": "qa", "role": "qa", "provider": "openai", "model": "gpt-5-mini"},
                  {"name": "adj", "role": "adjudication", "provider": "openai", "model": "gpt-5.2",
                   "confidence": {"signal": "agreement"}}],
        "routing": {"accept_at": 0.9, "qa_at": 0.6, "adjudicate_at": 0.1, "qa_accept_at": 0.0},
        "budget": {"monthly_usd": 1}, "quality": {"calibration": "none"},
    })
    n = 100
    fp_conf = [0.7] * 50 + [0.3] * 50  # the first half goes to QA, the second straight to adjudication
    answers = {
        "first_pass": TierAnswers(project.tiers[0], ["a"] * n, fp_conf),
        "qa": TierAnswers(project.tiers[1], ["b"] * n, [0.9] * n),  # QA disagrees with the first pass
        "adjudication": TierAnswers(project.tiers[2], ["a"] * n, [0.9] * n),
    }
    path = certify_golden_path(project, ["a"] * n, answers, auto_accepted=[False] * n, forced=[False] * n,
                               item_ids=[f"g{i}" for i in range(n)])
    adjudication = path.stages["adjudication"]
    assert adjudication.reached.all()  # QA's disagreements and the adjudication band
    assert path.stages["qa"].reached[:50].all() and not path.stages["qa"].reached[50:].any()
    assert adjudication.signal[:50] == [0.5] * 50  # agrees with the first pass, not with QA
    assert adjudication.signal[50:] == [1.0] * 50  # only the first pass is shown: full agreement


def test_the_auto_labeler_never_accepts_a_label_reserved_for_people():
    from labeling_dagster.assets.label_model import auto_accepts
    from labeling_dagster.core.autolabel import build_auto_labeler
    from labeling_dagster.core.labels import Item, content_hash

    texts = [f"{text} please {n}" for texts in LABELS.values() for text in texts for n in range(8)]
    labels = [label for label, texts in LABELS.items() for _ in texts for _ in range(8)]
    labeler = build_auto_labeler(texts, labels, target_accuracy=0.9, min_training_size=10, min_count=10,
                                 novelty_quantile=None)
    assert labeler.choice.threshold is not None
    every_text = [text for texts in LABELS.values() for text in texts]
    items = [Item(f"i{n}", f"{text} please 1", content_hash(text)) for n, text in enumerate(every_text)]
    spec = Project.model_validate({
        "name": "x", "taxonomy": {"labels": [{"name": label} for label in LABELS]},
        "source": {"path": "x/{month}.csv", "start_month": "2026-01"},
        "tiers": [{"name": "fp", "role": "first_pass", "provider": "openai", "model": "gpt-5-nano"}],
        "routing": {"always_human_labels": ["card_lost"]}, "budget": {"monthly_usd": 1},
    })
    result, taken, passed_on = auto_accepts(labeler, items, spec)
    sure_of_card_lost = [a.item_id for a in result.accepted if a.label == "card_lost"]
    assert sure_of_card_lost and not any(answer.label == "card_lost" for answer in taken.values())
    assert all(passed_on[item].startswith("label card_lost always goes to people") for item in sure_of_card_lost)


def test_a_project_without_qa_certifies_its_adjudication():
    project = Project.model_validate({
        "name": "sim", "taxonomy": {"labels": [{"name": n} for n in ("a", "b")]},
        "source": {"path": "x/{month}.csv", "start_month": "2026-01"},
        "tiers": [{"name": "fp", "role": "first_pass", "provider": "openai", "model": "gpt-5-nano"},
                  {"name": "adj", "role": "adjudication", "provider": "openai", "model": "gpt-5.2"}],
        "routing": {"accept_at": 0.9, "qa_at": 0.6, "adjudicate_at": 0.1, "adjudication_accept_at": 0.0},
        "budget": {"monthly_usd": 1}, "quality": {"calibration": "none"},
    })
    n = 100
    answers = {"first_pass": TierAnswers(project.tiers[0], ["b"] * n, [0.3] * n),
               "adjudication": TierAnswers(project.tiers[1], ["a"] * n, [0.99] * n)}
    path = certify_golden_path(project, ["a"] * n, answers, auto_accepted=[False] * n, forced=[False] * n,
                               item_ids=[f"g{i}" for i in range(n)])
    assert set(path.stages) == {"first_pass", "adjudication"} and path.stages["adjudication"].reached.all()
    assert path.stages["adjudication"].certificate.passed and set(path.outcome) == {"adjudication"}
