"""The golden run, calibration before the bands, the quality report and the recommender, through
Dagster and the CLI, on a tiny project with a golden set large enough to calibrate (60 items)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from labeling_dagster.cli import main
from tests.conftest import LABELS
from tests.test_pipeline import run_month, table


@pytest.fixture
def calibrated_project(tiny_project: Path) -> Path:
    rows = [[f"{text} {suffix}", label] for label, texts in LABELS.items() for text in texts
            for suffix in ("today", "again please", "asap")]
    # Hard items: two intents in one ticket, gold being the second one, so the tiers get some wrong
    # and their confidence has something to be calibrated against.
    names = list(LABELS)
    rows += [[f"{LABELS[a][n]} and also {LABELS[b][n]}", b] for a in names for b in names if a != b for n in range(4)]
    assert len(rows) >= 60
    with open(tiny_project / "golden.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return tiny_project


def test_golden_run_calibrates_the_tiers_and_the_report_recommends(calibrated_project: Path, tmp_path: Path) -> None:
    warehouse = tmp_path / "w.duckdb"
    result = run_month(calibrated_project, warehouse)
    assert result.success
    golden_items = table(warehouse, "SELECT COUNT(DISTINCT item_id) FROM golden_labels")[0][0]
    assert golden_items >= 60
    assert table(warehouse, "SELECT tier, COUNT(*) FROM golden_labels GROUP BY 1 ORDER BY 1") == [
        ("first_pass", golden_items), ("qa", golden_items)]
    calibrations = table(warehouse, "SELECT tier, method, golden_answers FROM calibrations ORDER BY 1")
    assert [(tier, method) for tier, method, _ in calibrations] == [("first_pass", "isotonic"), ("qa", "isotonic")]

    # Every first-pass row carries its raw and its calibrated confidence and the calibrator's version,
    # and the calibrated one is what the bands compared.
    rows = table(warehouse, """SELECT f.raw_confidence, f.confidence, f.calibration_version, c.version
                               FROM first_pass_labels f JOIN calibrations c ON c.tier = f.tier""")
    assert rows and all(raw is not None and version == fitted for raw, _, version, fitted in rows)
    assert any(abs(raw - calibrated) > 1e-6 for raw, calibrated, _, _ in rows)

    sections = dict(table(warehouse, "SELECT section, COUNT(*) FROM quality_report GROUP BY 1"))
    assert sections["accuracy"] == 2 and sections["calibration"] == 4 and sections["recommended_bands"] == 5
    assert sections["agreement"] >= 1 and sections["label_recall"] >= 3
    # The month's own evidence: a certificate per stage, the share of each label, and the check on them.
    assert sections["certificate"] == table(warehouse, "SELECT COUNT(*) FROM certificates")[0][0] > 0
    labeled = table(warehouse, "SELECT COUNT(*) FROM final_labels WHERE status = 'labeled'")[0][0]
    assert sections.get("prevalence", 0) == (3 if labeled else 0)  # shares of the labeled items only
    (check,) = [c for c in result.get_asset_check_evaluations() if c.asset_key == dg.AssetKey("quality_report")]
    assert check.check_name == "accepted_labels_meet_target" and check.passed  # no audit answer, no held-out item yet
    # The golden run's calls are costed in the ledger (zero USD for local tiers) on their own rows.
    assert {tier for (tier,) in table(warehouse, "SELECT tier FROM cost_ledger WHERE tier LIKE 'golden_run:%'")} == {
        "golden_run:first_pass", "golden_run:qa"}


def test_recommend_and_project_estimate_commands(calibrated_project: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["run", "--project", str(calibrated_project), "--month", "2026-08"]).exit_code == 0
    golden = table(calibrated_project / "warehouse.duckdb", "SELECT COUNT(*), SUM(in_golden_sample::INT) FROM golden_set")
    assert golden[0][0] >= 60 and golden[0][1] == golden[0][0]  # fewer than 500: all of them are in the sample
    result = runner.invoke(main, ["recommend", "--project", str(calibrated_project), "--month", "2026-08",
                                  "--target", "0.9", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["mode"] == "target" and set(answer["recommended"]["bands"]) == {
        "accept_at", "qa_at", "adjudicate_at", "qa_accept_at", "adjudication_accept_at"}
    assert answer["routing_yaml"].count("routing:") == 1

    both = runner.invoke(main, ["recommend", "--project", str(calibrated_project), "--month", "2026-08",
                                "--target", "0.9", "--budget", "5"])
    assert both.exit_code == 2 and "not both" in both.output

    bill = runner.invoke(main, ["estimate", "--project", str(calibrated_project), "--month", "2026-08", "--json"])
    assert bill.exit_code == 0, bill.output
    bill = json.loads(bill.output)
    assert bill["items"] == 13 and bill["tokens"] == []  # local tiers only: no paid prompt to count
    assert bill["current"]["usd_per_month"] == pytest.approx(bill["current"]["usd_per_item"] * 13)
    assert set(bill["recommended"]["settled"]) == {"first_pass", "qa", "adjudication", "human"}

    missing = runner.invoke(main, ["recommend", "--project", str(calibrated_project), "--month", "2026-09"])
    assert missing.exit_code == 2 and "no golden run for 2026-09" in missing.output
