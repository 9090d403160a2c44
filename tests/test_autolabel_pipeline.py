"""The auto-labeler in the pipeline: label_model trained on the human labels, auto_labels accepting
what it is sure of before any other tier, and the monthly review budget spent by active learning."""

from __future__ import annotations

import csv
from pathlib import Path

from click.testing import CliRunner

from labeling_dagster.cli import main
from tests.test_pipeline import table


def configure(project: Path, extra: str) -> None:
    yaml = project / "project.yaml"
    yaml.write_text(yaml.read_text() + extra)


def run(project: Path, warehouse: Path, *args: str):
    result = CliRunner().invoke(main, ["run", "--project", str(project), "--month", "2026-08",
                                       "--warehouse", str(warehouse), *args])
    assert result.exit_code == 0, result.output
    return result


def test_auto_labels_take_what_they_are_sure_of(tiny_project: Path, tmp_path: Path) -> None:
    configure(tiny_project, "auto_label: {enabled: true, target_accuracy: 0.9, min_training_size: 50}\n")
    warehouse = tmp_path / "w.duckdb"
    run(tiny_project, warehouse)
    model = table(warehouse, "SELECT training_size, held_out, threshold, reason FROM label_models")
    assert len(model) == 1 and model[0][0] == 72 and model[0][1] == 72 and model[0][2] is not None, model
    steps = dict(table(warehouse, "SELECT next_step, COUNT(*) FROM auto_labels GROUP BY 1"))
    assert sum(steps.values()) == 13 and steps.get("accept", 0) > 0
    # Accepted items never reach another tier; the rest go to the first pass.
    assert table(warehouse, """SELECT COUNT(*) FROM first_pass_labels f JOIN auto_labels a USING (month, item_id)
                               WHERE a.next_step = 'accept'""") == [(0,)]
    assert table(warehouse, "SELECT COUNT(*) FROM first_pass_labels") == [(steps.get("first_pass", 0),)]
    assert table(warehouse, "SELECT COUNT(*) FROM final_labels WHERE decided_by = 'auto_label'") == [(steps["accept"],)]
    assert table(warehouse, "SELECT COUNT(*), COUNT(DISTINCT item_id) FROM final_labels") == [(13, 13)]


def test_too_few_human_labels_accepts_nothing_and_says_why(tiny_project: Path, tmp_path: Path) -> None:
    configure(tiny_project, "auto_label: {enabled: true, min_training_size: 1000}\n")
    warehouse = tmp_path / "w.duckdb"
    run(tiny_project, warehouse)
    assert table(warehouse, "SELECT threshold FROM label_models") == [(None,)]
    assert "1000" in table(warehouse, "SELECT reason FROM label_models")[0][0]
    assert table(warehouse, "SELECT COUNT(*) FROM auto_labels WHERE next_step = 'accept'") == [(0,)]
    assert table(warehouse, "SELECT COUNT(*) FROM first_pass_labels") == [(13,)]


def test_review_budget_goes_to_required_then_active_choices(tiny_project: Path, tmp_path: Path) -> None:
    # Everything below 0.99 goes to people, so the queue is larger than the budget of 3.
    yaml = tiny_project / "project.yaml"
    yaml.write_text(yaml.read_text().replace("accept_at: 0.6", "accept_at: 0.99").replace(
        "qa_at: 0.3", "qa_at: 0.99").replace("adjudicate_at: 0.3", "adjudicate_at: 0.99").replace(
        "human_review: {hourly_rate_usd: 30, reviews_per_hour: 120}",
        "human_review: {hourly_rate_usd: 30, reviews_per_hour: 120, monthly_review_budget: 3, random_share: 0}"))
    # A target no threshold can prove: the model accepts nothing but still ranks the queue.
    configure(tiny_project, "auto_label: {enabled: true, min_training_size: 50, target_accuracy: 0.999}\n")
    warehouse = tmp_path / "w.duckdb"
    run(tiny_project, warehouse)
    queued = table(warehouse, "SELECT COUNT(*) FROM review_queue")[0][0]
    assert queued > 3
    selection = dict(table(warehouse, "SELECT selection, COUNT(*) FROM review_queue GROUP BY 1"))
    assert selection["required"] == 1  # the vip ticket: a rule reserves it for people
    assert selection["margin"] == 2 and selection["waiting"] == queued - 3
    with open(tiny_project / "exports" / "2026-08" / "review_queue.csv", newline="", encoding="utf-8") as handle:
        exported = [row["item_id"] for row in csv.DictReader(handle)]
    assert len(exported) == 3 and "2026-08-billing-3" in exported
