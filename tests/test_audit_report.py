"""The audit that checks the certificates, and prevalence with an interval: a small warehouse written
by hand to the tables' contract (what each stage accepted, its audit sample, people's answers, the
certificates), then the quality report, its check and the summary read it."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from labeling_dagster import checks
from labeling_dagster.assets import quality_report
from labeling_dagster.assets.common import LABEL_TABLES, monthly_partitions
from labeling_dagster.cli.summary import closing_lines, month_summary, summary_frame
from labeling_dagster.core.certify import accuracy_interval
from labeling_dagster.core.labels import content_hash
from labeling_dagster.core.prevalence import MIN_ANSWERS, prevalence
from labeling_dagster.core.quality import golden_items, held_out_answers
from labeling_dagster.core.report import audit_report
from labeling_dagster.project import load_project
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import Warehouse, ensure_tables
from tests.conftest import write_tiny_project

BAD, GOOD = "2026-08", "2026-09"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    # One golden item in the golden run's sample, two held out: those score the labels of the stream.
    return write_tiny_project(tmp_path / "tiny", extra_yaml="quality: {golden_sample_size: 1}\n")


def _month(conn, project, month: str, *, bad: bool) -> None:
    """A month as the pipeline leaves it. The first pass accepts 40 items (billing) and audits 12, of
    which people answered 10 (2 wrong in the bad month); QA accepts 5 (card_lost); people label 3 items
    themselves and 2 wait for them; two items are golden held-out ones (first pass right, QA wrong in the
    bad month). In the bad month QA drifted: its recheck audits 2 items, one answered."""
    stamp = datetime.strptime(month, "%Y-%m")
    texts = golden_items(project)
    held = sorted(held_out_answers(project))
    raw, tiers, final, people = [], {table: [] for table in LABEL_TABLES}, [], []

    def item(item_id, text=None):
        text = text or f"ticket {item_id}"
        raw.append({"month": stamp, "item_id": item_id, "text": text, "content_hash": content_hash(text)})

    def row(table, item_id, label, next_step, audited=False):
        tiers[table].append({"month": stamp, "item_id": item_id, "tier": table.removesuffix("_labels"), "label": label,
                             "confidence": 0.97, "signal": 0.97, "next_step": next_step, "audited": audited,
                             "route_reason": "audit of the stage" if audited else next_step})

    def decided(item_id, label, status, by):
        final.append({"month": stamp, "item_id": item_id, "label": label, "status": status, "decided_by": by})

    def answer(item_id, label):
        people.append({"month": stamp, "item_id": item_id, "label": label, "settled": True})

    for n in range(40):
        item(f"fp{n:02}")
        row("first_pass_labels", f"fp{n:02}", "billing", "accept")
        decided(f"fp{n:02}", "billing", "labeled", "first_pass")
    for n in range(12):  # the first pass's audit sample
        item(f"au{n:02}")
        row("first_pass_labels", f"au{n:02}", "billing", "human", audited=True)
        if n < 10:
            truth = "cancellation" if bad and n < 2 else "billing"
            answer(f"au{n:02}", truth)
            decided(f"au{n:02}", truth, "labeled", "human")
        else:
            decided(f"au{n:02}", None, "pending_human", None)
    qa_items = [f"qa{n}" for n in range(5)] + (["qx0", "qx1"] if bad else [])
    for item_id in qa_items:
        item(item_id)
        row("first_pass_labels", item_id, "card_lost", "qa")
        audited = item_id.startswith("qx")
        row("qa_labels", item_id, "card_lost", "human" if audited else "accept", audited=audited)
        if item_id == "qx0":
            answer(item_id, "card_lost")
        decided(item_id, "card_lost" if not audited or item_id == "qx0" else None,
                "labeled" if not audited or item_id == "qx0" else "pending_human",
                "qa" if not audited else "human" if item_id == "qx0" else None)
    for n in range(5):  # people's own items: three settled, two waiting
        item(f"hu{n}")
        row("first_pass_labels", f"hu{n}", "cancellation", "human")
        if n < 3:
            answer(f"hu{n}", "cancellation")
        decided(f"hu{n}", "cancellation" if n < 3 else None, "labeled" if n < 3 else "pending_human",
                "human" if n < 3 else None)
    gold0, gold1 = (texts[digest] for digest in held)
    item("g0", gold0[0])
    row("first_pass_labels", "g0", gold0[1], "accept")
    decided("g0", gold0[1], "labeled", "first_pass")
    wrong = next(label for label in ("billing", "cancellation") if label != gold1[1])
    item("g1", gold1[0])
    row("first_pass_labels", "g1", gold1[1], "qa")
    row("qa_labels", "g1", wrong if bad else gold1[1], "accept")
    decided("g1", wrong if bad else gold1[1], "labeled", "qa")

    drift = {"shifted": bad, "confidence_p": 0.001 if bad else 0.4, "label_mix_p": 0.2,
             "reason": "QA's confidence distribution moved (p = 0.001)" if bad else "no shift"}
    certificates = [
        {"month": stamp, "stage": "first_pass", "tier": "first_pass", "signal": "confidence", "threshold": 0.9,
         "items": 300, "accepted": 200, "correct": 198, "bound": 0.968, "target": 0.95, "delta": 0.05, "passed": True,
         "reason": "accept confidence >= 0.9", "audit_share": 0.02,
         "drift": json.dumps({"shifted": False, "confidence_p": 0.5, "label_mix_p": 0.6, "reason": "no shift"}),
         "recheck": False},
        {"month": stamp, "stage": "qa", "tier": "qa", "signal": "confidence", "threshold": 0.8, "items": 120,
         "accepted": 90, "correct": 89, "bound": 0.951, "target": 0.95, "delta": 0.05, "passed": True,
         "reason": "accept confidence >= 0.8", "audit_share": 0.10 if bad else 0.02, "drift": json.dumps(drift),
         "recheck": bad},
    ]
    for name, rows in [("raw_items", raw), ("final_labels", final), ("review_consensus", people),
                       ("certificates", certificates), *tiers.items()]:
        frame = pd.DataFrame(rows)  # noqa: F841 (read by name in the SQL)
        if len(frame):
            conn.execute(f"INSERT INTO {name} BY NAME SELECT * FROM frame")


@pytest.fixture
def warehouse(tmp_path: Path, project: Path) -> Path:
    path = tmp_path / "w.duckdb"
    spec = load_project(project)
    with duckdb.connect(str(path)) as conn:
        ensure_tables(conn)
        # The contract of the certified gate, whether or not this warehouse version has it yet.
        for table in LABEL_TABLES:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS signal DOUBLE")
            conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS audited BOOLEAN")
        conn.execute("""CREATE TABLE IF NOT EXISTS certificates (month TIMESTAMP, stage VARCHAR, tier VARCHAR,
            signal VARCHAR, threshold DOUBLE, items INTEGER, accepted INTEGER, correct INTEGER, bound DOUBLE,
            target DOUBLE, delta DOUBLE, passed BOOLEAN, reason VARCHAR, audit_share DOUBLE, drift VARCHAR,
            recheck BOOLEAN)""")
        _month(conn, spec, BAD, bad=True)
        _month(conn, spec, GOOD, bad=False)
    return path


def _report(warehouse: Path, project: Path, month: str):
    spec = load_project(project)
    start = datetime.strptime(month, "%Y-%m")
    end = start.replace(month=start.month + 1)
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        evidence = quality_report.month_evidence(conn, start, end, held_out_answers(spec))
    return evidence, audit_report(month, evidence, spec.taxonomy.answers, target=0.95, delta=0.05)


def test_realized_accuracy_per_stage_from_the_audit_and_the_golden_held_out_items(warehouse: Path, project: Path) -> None:
    evidence, report = _report(warehouse, project, BAD)
    found = {(a.stage, a.source): a for a in report.accuracy}
    audit = found["first_pass", "audit"]
    # 12 audited, 10 answered, 8 of them right: 80%, with the exact interval, below the 95% target.
    assert (audit.sampled, audit.checked, audit.correct, audit.accuracy) == (12, 10, 8, 0.8)
    assert (audit.low, audit.high) == pytest.approx(accuracy_interval(8, 10))
    assert audit.status == "missed" and not audit.proved_below  # 10 answers cannot prove it at delta 0.05
    assert (found["qa", "audit"].checked, found["qa", "audit"].status) == (1, "met")
    # The golden held-out items score what the stage that accepted them said.
    assert found["first_pass", "golden_held_out"].status == "met"
    assert (found["qa", "golden_held_out"].checked, found["qa", "golden_held_out"].status) == (1, "missed")
    assert {(f.stage, f.kind) for f in report.findings} == {
        ("first_pass", "missed"), ("qa", "missed"), ("qa", "recheck_pending")}
    recheck = next(f.text for f in report.findings if f.kind == "recheck_pending")
    assert "QA's confidence distribution moved" in recheck and "1 of 2 audited items answered" in recheck

    # What each stage accepted counts its audit sample; people's own items and the pending ones apart.
    assert evidence.accepted() == {"first_pass": 53, "qa": 8}
    assert evidence.people_labels == {"cancellation": 3} and evidence.pending == 2

    _, good = _report(warehouse, project, GOOD)
    assert good.findings == []
    assert {(a.stage, a.source): a.status for a in good.accuracy} == {
        ("first_pass", "audit"): "met", ("qa", "audit"): "pending",
        ("first_pass", "golden_held_out"): "met", ("qa", "golden_held_out"): "met"}


def test_prevalence_from_the_warehouse_corrects_the_stage_with_enough_answers(warehouse: Path, project: Path) -> None:
    evidence, report = _report(warehouse, project, BAD)
    shares = {p.label: p for p in report.prevalence}
    assert set(shares) == {"billing", "cancellation", "card_lost"}
    total = 53 + 8 + 3
    # The first pass's 10 answers move 2 of 10 of its billing items to cancellation; QA (1 answer) is not corrected.
    naive = (3 + sum(evidence.stage_labels.query("label == 'cancellation'")["items"])) / total
    assert shares["cancellation"].naive == pytest.approx(naive)
    assert shares["cancellation"].share == pytest.approx(naive + 53 / total * 2 / 10)
    assert not shares["cancellation"].corrected and "qa (1 answered audits)" in shares["cancellation"].note


def test_the_quality_report_shows_the_sections_and_its_check_warns_on_the_bad_month(warehouse: Path, project: Path) -> None:
    spec = load_project(project)
    resources = {"project": ProjectResource(project_file=str(project)), "warehouse": Warehouse(database=str(warehouse))}
    asset = quality_report.build(monthly_partitions(spec))
    bad = dg.materialize([asset], partition_key=f"{BAD}-01", resources=resources, raise_on_error=True)
    (check,) = bad.get_asset_check_evaluations()
    assert check.check_name == checks.MEETS_TARGET and not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    problems = check.metadata["problems"].value
    assert ("2026-08 first_pass audit: 80.0% right [44.4%, 97.5%] (10 of 12 audited items answered), target 95.0%"
            in problems)
    assert "2026-08 qa golden held-out items: 0.0% right [0.0%, 97.5%] (1 item)" in problems
    assert "2026-08 qa drifted" in problems and "recheck pending" in problems
    markdown = bad.asset_materializations_for_node("quality_report")[0].metadata["report"].value
    for heading in ("### Certificates", "### Audit", "### Prevalence", "MISSED", "**qa drifted this month**"):
        assert heading in markdown

    good = dg.materialize([asset], partition_key=f"{GOOD}-01", resources=resources, raise_on_error=True)
    assert all(check.passed for check in good.get_asset_check_evaluations())
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        sections = dict(conn.execute("SELECT section, COUNT(*) FROM quality_report GROUP BY 1").fetchall())
        recheck = conn.execute("""SELECT detail FROM quality_report WHERE section = 'certificate' AND tier = 'qa'
                                  AND month = '2026-08-01'""").fetchone()[0]
    assert sections == {"certificate": 4, "audit": 8, "prevalence": 6}
    assert json.loads(recheck)["recheck"] is True and json.loads(recheck)["drift"]["shifted"] is True


def test_the_summary_flags_the_month_whose_accepted_labels_miss_the_target(warehouse: Path, project: Path) -> None:
    spec = load_project(project)
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        summaries = [month_summary(conn, spec, month) for month in (BAD, GOOD)]
    frame = summary_frame(summaries)
    assert frame.loc["accepted labels vs target", BAD] == "MISSED: first_pass, qa"
    assert frame.loc["accepted labels vs target", GOOD] == "met (95.0%)"
    assert frame.loc["audit answers", BAD] == "9/11 right, 3 pending"
    assert frame.loc["golden accuracy", GOOD] == "1.000 (2/2)"  # the figure it showed before stays
    (line,) = closing_lines(summaries)
    assert line.startswith("2026-08: accepted labels MISSED the target 95.0%: first_pass audit: 80.0% right")
    assert closing_lines(summaries[1:]) == ["Accepted labels met the target 95.0% in 2026-09 (audit answers and golden "
                                            "held-out items)."]


LABELS = ["a", "b", "c"]
TRUE_SHARES = np.array([0.5, 0.3, 0.2])


def _simulated_month(seed: int, items: int = 1000) -> tuple[list, list]:
    """Items drawn from TRUE_SHARES; a model that calls a quarter of the b and c items a; 100 items
    labeled by people; the rest accepted by two stages, audited at 10% and 30%."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(3, size=items, p=TRUE_SHARES)
    model = np.where((truth > 0) & (rng.random(items) < 0.25), 0, truth)
    stage = np.where(np.arange(items) < 100, "", np.where(rng.random(items) < 0.7, "first_pass", "qa"))
    audited = rng.random(items) < np.select([stage == "first_pass", stage == "qa"], [0.1, 0.3], 0.0)
    shown = np.where(stage == "", truth, model)
    counts = {label: int((shown == n).sum()) for n, label in enumerate(LABELS)}
    stage_items = {s: int((stage == s).sum()) for s in ("first_pass", "qa")}
    names = np.array(LABELS)
    audit = pd.DataFrame({"stage": stage[audited], "label": names[model[audited]], "truth": names[truth[audited]]})
    return prevalence(LABELS, counts, stage_items, audit), prevalence(LABELS, counts, stage_items, audit.iloc[:0])


def test_prediction_powered_prevalence_covers_the_true_share_where_the_model_labels_do_not() -> None:
    repeats = 300
    covered, naive_covered = np.zeros(3), np.zeros(3)
    for seed in range(repeats):
        corrected, naive = _simulated_month(seed)
        assert all(p.corrected for p in corrected) and not any(p.corrected for p in naive)
        covered += [p.low <= share <= p.high for p, share in zip(corrected, TRUE_SHARES)]
        naive_covered += [p.low <= share <= p.high for p, share in zip(naive, TRUE_SHARES)]
    assert np.all((covered / repeats > 0.92) & (covered / repeats < 0.98))
    assert np.all(naive_covered / repeats < 0.05)  # the model's bias toward a, with a narrow interval around it


def test_without_answered_audits_the_interval_is_the_naive_one_and_says_so() -> None:
    audit = pd.DataFrame({"stage": ["first_pass"] * 3, "label": ["a", "a", "b"], "truth": ["a", "b", None]})
    (a, b) = prevalence(["a", "b"], {"a": 60, "b": 40}, {"first_pass": 100}, audit)
    assert (a.share, a.naive, b.share) == (0.6, 0.6, 0.4)
    half = 1.959964 * np.sqrt(0.6 * 0.4 / 99)
    assert (a.low, a.high) == pytest.approx((0.6 - half, 0.6 + half), abs=1e-6)
    assert not a.corrected and a.note == f"model labels not corrected for first_pass (2 answered audits): a stage needs {MIN_ANSWERS}"
    # Items only people labeled need no correction: exact labels, corrected by definition.
    (only_people,) = prevalence(["a"], {"a": 10, "b": 10}, {}, audit.iloc[:0])
    assert only_people.corrected and only_people.share == 0.5
