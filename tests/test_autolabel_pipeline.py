"""The auto-labeler in the pipeline: label_model trained on the human labels, auto_labels accepting
what it is sure of before any other tier, and the monthly review budget spent by active learning."""

from __future__ import annotations

import csv
from pathlib import Path

from click.testing import CliRunner

from labeling_dagster.cli import main
from labeling_dagster.cli.common import train_label_model
from tests.test_human_review import fill_csv, review_import
from tests.test_pipeline import run_month, table


def configure(project: Path, extra: str) -> None:
    yaml = project / "project.yaml"
    yaml.write_text(yaml.read_text() + extra)


def run(project: Path, warehouse: Path, *args: str, month: str = "2026-08"):
    result = CliRunner().invoke(main, ["run", "--project", str(project), "--month", month,
                                       "--warehouse", str(warehouse), *args])
    assert result.exit_code == 0, result.output
    return result


def test_auto_labels_take_what_they_are_sure_of(tiny_project: Path, tmp_path: Path) -> None:
    configure(tiny_project, "auto_label: {enabled: true, target_accuracy: 0.9, min_training_size: 50, min_count: 50}\n")
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
    # the vip ticket (always_human_when: tier = vip) goes to people whatever the auto-labeler says
    vip = "2026-08-billing-3"
    assert table(warehouse, f"SELECT next_step, route_reason FROM auto_labels WHERE item_id = '{vip}'") == [
        ("first_pass", "always to people: tier = vip")]
    assert table(warehouse, f"SELECT status FROM final_labels WHERE item_id = '{vip}'") == [("pending_human",)]


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
    configure(tiny_project, "auto_label: {enabled: true, min_training_size: 50, min_count: 50, target_accuracy: 0.999}\n")
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

    # People answer the three; the import re-exports the month: the budget they spent is not handed out
    # again as three new items, and what they settled is not sent back to them.
    reviewed = review_month(tiny_project, warehouse, "2026-08", tmp_path)
    assert sorted(reviewed) == sorted(item for item in exported if not item.endswith("golden"))
    selection = dict(table(warehouse, "SELECT selection, COUNT(*) FROM review_queue GROUP BY 1"))
    assert selection["settled"] == len(reviewed) and selection["waiting"] == queued - 3
    with open(tiny_project / "exports" / "2026-08" / "review_queue.csv", newline="", encoding="utf-8") as handle:
        again = [row["item_id"] for row in csv.DictReader(handle)]
    assert again == [item for item in exported if item not in reviewed]


AUTO_LABELS = "SELECT item_id, label, confidence, next_step, route_reason, prompt_version FROM auto_labels WHERE month = '{}' ORDER BY 1"


def review_month(project: Path, warehouse: Path, month: str, tmp_path: Path) -> list[str]:
    """A SIMULATED reviewer answers the month's exported queue with the true labels; the import ingests it."""
    items = fill_csv(project / "exports" / month / "review_queue.csv", tmp_path / f"ann-{month}.csv", "ann")
    assert review_import(project, warehouse, tmp_path / f"ann-{month}.csv", month=month).exit_code == 0
    return items


def test_a_month_is_labeled_by_the_model_of_what_was_known_before_it(tiny_project: Path, tmp_path: Path) -> None:
    """Issue 12: re-running August after September's training labeled August with a model that had seen
    August's answers. Each month's model is trained on the seed set and earlier months' reviews only."""
    yaml = tiny_project / "project.yaml"  # what the auto-labeler leaves goes to people
    yaml.write_text(yaml.read_text().replace("accept_at: 0.6", "accept_at: 0.99").replace(
        "qa_at: 0.3", "qa_at: 0.99").replace("adjudicate_at: 0.3", "adjudicate_at: 0.99"))
    unlike_the_seed = {  # tickets the auto-labeler is not sure of, so people get them
        "2026-08": ["a question about last month", "what happens to the rest of my year", "it is not in my wallet anymore"],
        "2026-09": ["numbers look odd this time", "no longer need any of this", "gone since the weekend"],
    }
    for month, texts in unlike_the_seed.items():
        with open(tiny_project / "inbox" / f"{month}.csv", "a", encoding="utf-8") as handle:
            for label, text in zip(("billing", "cancellation", "card_lost"), texts):
                handle.write(f"{month}-{label}-7,{text},email,standard\n")
    configure(tiny_project, "auto_label: {enabled: true, target_accuracy: 0.9, min_training_size: 50, min_count: 50}\n")
    warehouse = tmp_path / "w.duckdb"
    run(tiny_project, warehouse)
    august = table(warehouse, AUTO_LABELS.format("2026-08-01"))
    (seed_only,) = {row[-1] for row in august}
    models = dict(table(warehouse, "SELECT version, path FROM label_models"))
    assert list(models) == [seed_only]
    seed_model = Path(models[seed_only])
    stamp = seed_model.stat().st_mtime_ns

    reviewed = review_month(tiny_project, warehouse, "2026-08", tmp_path)
    assert reviewed
    run(tiny_project, warehouse, month="2026-09")
    september = table(warehouse, AUTO_LABELS.format("2026-09-01"))
    (with_august,) = {row[-1] for row in september}
    assert with_august != seed_only  # September's model learned from August's reviews
    sizes = dict(table(warehouse, "SELECT version, training_size FROM label_models"))
    assert sizes[with_august] == sizes[seed_only] + len(reviewed)
    assert review_month(tiny_project, warehouse, "2026-09", tmp_path)

    # August again, after September's reviews are in and the newest model has seen both months: its
    # labels are what they were, from the same stored model, which is not trained again.
    run(tiny_project, warehouse)
    assert table(warehouse, AUTO_LABELS.format("2026-08-01")) == august
    assert seed_model.stat().st_mtime_ns == stamp
    assert len(table(warehouse, "SELECT * FROM label_models")) == 3  # seed; + August; + August and September
    # ...and the month's reviews survived the rerun: people's labels still decide the reviewed items.
    assert table(warehouse, f"""SELECT COUNT(*) FROM final_labels WHERE decided_by = 'human'
                                AND item_id IN {tuple(reviewed) + ('',)}""") == [(len(reviewed),)]


def test_an_unchanged_rerun_trains_nothing(tiny_project: Path, tmp_path: Path) -> None:
    configure(tiny_project, "auto_label: {enabled: true, target_accuracy: 0.9, min_training_size: 50, min_count: 50}\n")
    warehouse = tmp_path / "w.duckdb"
    first = train_label_model(str(tiny_project), str(warehouse))
    assert first.success and first.asset_materializations_for_node("label_model")[0].metadata["trained"].value is True
    trained = table(warehouse, "SELECT version, trained_at FROM label_models")
    assert len(trained) == 1
    month = run_month(tiny_project, warehouse)
    assert month.success
    assert month.asset_materializations_for_node("auto_labels")[0].metadata["model_trained"].value is False
    again = train_label_model(str(tiny_project), str(warehouse))
    assert again.success and again.asset_materializations_for_node("label_model")[0].metadata["trained"].value is False
    assert run_month(tiny_project, warehouse).asset_materializations_for_node("auto_labels")[0].metadata[
        "model_trained"].value is False
    assert table(warehouse, "SELECT version, trained_at FROM label_models") == trained

    # A setting that changes the model (the target moves the threshold) is a new version, trained once.
    yaml = tiny_project / "project.yaml"
    yaml.write_text(yaml.read_text().replace("target_accuracy: 0.9", "target_accuracy: 0.85"))
    assert train_label_model(str(tiny_project), str(warehouse)).asset_materializations_for_node(
        "label_model")[0].metadata["trained"].value is True
    assert len(table(warehouse, "SELECT * FROM label_models")) == 2


def test_auto_labels_refuse_certificates_measured_with_another_auto_labeler(tiny_project: Path, tmp_path: Path) -> None:
    """A rerun after something changed: reviews of earlier months came in after the golden run, so the
    month's auto-labeler is no longer the one its certificates sent the golden items past."""
    import dagster as dg

    from labeling_dagster.definitions import build_definitions
    from labeling_dagster.resources.warehouse import connect

    configure(tiny_project, "auto_label: {enabled: true, target_accuracy: 0.9, min_training_size: 50, min_count: 50}\n")
    warehouse = tmp_path / "w.duckdb"
    run(tiny_project, warehouse)
    with connect(warehouse) as conn:  # as if the certificates were measured with an earlier model
        conn.execute("UPDATE certificates SET prompt_version = 'autolabel-earlier' WHERE stage = 'auto_label'")
    job = build_definitions(tiny_project, warehouse).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), partition_key="2026-08-01",
                                    asset_selection=[dg.AssetKey("auto_labels")], raise_on_error=False)
    assert not result.success
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert "measured with auto-labeler autolabel-earlier" in message and "Materialize golden_labels" in message
