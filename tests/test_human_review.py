"""The human-review loop through Dagster: export, a SIMULATED reviewer fills the file, import, and the
final labels, the consensus and the ledger follow. Also bad files, the same file twice, a month with
no queue, and the review sensor."""

from __future__ import annotations

import csv
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from labeling_dagster.assets.human_reviews import read_month_reviews
from labeling_dagster.cli import main
from labeling_dagster.project import load_project
from labeling_dagster.resources.warehouse import connect
from labeling_dagster.sensors import pending_review_runs
from tests.conftest import paid_tiers, write_tiny_project
from tests.test_pipeline import run_month, table


def gold(item_id: str) -> str:
    """The simulated reviewer's answer: the tiny project's item ids carry their true label."""
    return next(label for label in ("billing", "cancellation", "card_lost") if f"-{label}-" in item_id)


def fill_csv(queue_csv: Path, out: Path, annotator: str, answer=gold, seconds: str = "36", skip=()) -> list[str]:
    """A simulated reviewer opens the exported CSV, fills annotator_id, label and seconds, saves a copy
    (leaving out the golden item and the items in `skip`)."""
    with open(queue_csv, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows, columns = list(reader), reader.fieldnames
    rows = [row for row in rows if row["item_id"].rsplit("-", 1)[0].count("-") >= 2]  # skip the golden one
    rows = [row for row in rows if row["item_id"] not in skip]
    for row in rows:
        row.update(annotator_id=annotator, label=answer(row["item_id"]), seconds=seconds)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return [row["item_id"] for row in rows]


def review_import(project: Path, warehouse: Path, *files: Path, month: str = "2026-08"):
    return CliRunner().invoke(main, ["review", "import", "--project", str(project), "--month", month,
                                     "--warehouse", str(warehouse), *map(str, files)])


@pytest.fixture
def labeled(tiny_project: Path, tmp_path: Path) -> tuple[Path, Path]:
    warehouse = tmp_path / "warehouse.duckdb"
    assert run_month(tiny_project, warehouse).success
    return tiny_project, warehouse


def test_csv_round_trip_settles_items_and_costs_labor(labeled, tmp_path) -> None:
    project, warehouse = labeled
    queued = table(warehouse, "SELECT COUNT(*) FROM review_queue")[0][0]
    filled = fill_csv(project / "exports" / "2026-08" / "review_queue.csv", tmp_path / "alice.csv", "alice")
    assert filled

    result = review_import(project, warehouse, tmp_path / "alice.csv")
    assert result.exit_code == 0, result.output
    assert (project / "reviews" / "2026-08" / "alice.csv").exists()
    assert table(warehouse, f"""SELECT COUNT(*) FROM final_labels WHERE decided_by = 'human'
                                AND item_id IN {tuple(filled) + ('',)}""") == [(len(filled),)]
    assert table(warehouse, "SELECT COUNT(*) FROM final_labels WHERE decided_by = 'human' AND label IS NULL") == [(0,)]
    # Conservation still holds: one row per item, pending shrank by what people settled.
    assert table(warehouse, "SELECT COUNT(*), COUNT(DISTINCT item_id) FROM final_labels") == [(13, 13)]
    assert table(warehouse, "SELECT COUNT(*) FROM final_labels WHERE status = 'pending_human'") == [(queued - len(filled),)]
    # Labor: 36 seconds at 30 $/h = 0.30 a review; the rest of the queue is still estimated at 0.25.
    ledger = dict(table(warehouse, "SELECT tier, usd FROM cost_ledger"))
    assert ledger["human_review"] == pytest.approx(0.30 * len(filled))
    assert ledger["human_review_pending"] == pytest.approx(0.25 * (queued - len(filled)))
    assert ledger["total"] == pytest.approx(sum(v for k, v in ledger.items() if k != "total"))
    assert "settled" in result.output


def test_label_studio_export_round_trip(labeled) -> None:
    project, warehouse = labeled
    tasks = json.loads((project / "exports" / "2026-08" / "label_studio_tasks.json").read_text())
    export = []  # SIMULATED Label Studio JSON export: two annotators agree with the gold label
    for number, task in enumerate(tasks):
        item_id = task["data"]["item_id"]
        if item_id.endswith("golden"):
            continue
        annotations = [{"id": number * 10 + n, "completed_by": user, "was_cancelled": False, "lead_time": 20,
                        "updated_at": "2026-09-03T10:00:00Z",
                        "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                    "value": {"choices": [gold(item_id)]}}]}
                       for n, user in enumerate([11, 12])]
        export.append({"id": number, "data": task["data"], "annotations": annotations})
    path = project / "ls-export.json"
    path.write_text(json.dumps(export))
    assert review_import(project, warehouse, path).exit_code == 0
    assert table(warehouse, "SELECT COUNT(DISTINCT annotator_id), COUNT(*) FROM human_reviews") == [(2, 2 * len(export))]
    wrong = table(warehouse, "SELECT item_id, label FROM final_labels WHERE decided_by = 'human'")
    assert len(wrong) == len(export) and all(label == gold(item_id) for item_id, label in wrong)


def test_ground_truth_output_manifest_round_trip(labeled) -> None:
    project, warehouse = labeled
    lines = [json.loads(line) for line in
             (project / "exports" / "2026-08" / "ground_truth_manifest.jsonl").read_text().splitlines()]
    output = [  # SIMULATED Ground Truth output manifest for the input manifest we exported
        {**line, "intent": 0, "intent-metadata": {"class-name": gold(line["metadata"]["item_id"]), "confidence": 0.9,
         "type": "groundtruth/text-classification", "job-name": "labeling-job/intent", "human-annotated": "yes",
         "creation-date": "2026-09-04T08:00:00.000000"}}
        for line in lines if not line["metadata"]["item_id"].endswith("golden")
    ]
    path = project / "output.manifest"
    path.write_text("".join(json.dumps(line) + "\n" for line in output))
    assert review_import(project, warehouse, path).exit_code == 0
    assert table(warehouse, "SELECT COUNT(*) FROM final_labels WHERE decided_by = 'human'") == [(len(output),)]


def test_bad_rows_are_reported_beside_the_file_and_good_rows_kept(labeled, tmp_path) -> None:
    project, warehouse = labeled
    filled = fill_csv(project / "exports" / "2026-08" / "review_queue.csv", tmp_path / "bob.csv", "bob")
    with open(tmp_path / "bob.csv", "a", encoding="utf-8") as handle:
        handle.write("no-such-item,,,,,,,,,bob,billing,3\n")
    text = (tmp_path / "bob.csv").read_text().replace(f"bob,{gold(filled[0])},", "bob,refund,", 1)
    (tmp_path / "bob.csv").write_text(text)
    result = review_import(project, warehouse, tmp_path / "bob.csv")
    assert result.exit_code == 0, result.output
    report = project / "reviews" / "2026-08" / "bob.csv.rejected.csv"
    rejected = report.read_text()
    assert "no-such-item" in rejected and "refund" in rejected
    assert table(warehouse, "SELECT rows_ingested, rows_rejected FROM review_imports") == [(len(filled) - 1, 2)]
    assert "2 rejected" in " ".join(result.output.split())  # rich wraps long lines


def test_the_same_file_twice_is_ingested_once(labeled, tmp_path) -> None:
    project, warehouse = labeled
    fill_csv(project / "exports" / "2026-08" / "review_queue.csv", tmp_path / "carol.csv", "carol")
    shutil.copy(tmp_path / "carol.csv", tmp_path / "carol-again.csv")
    assert review_import(project, warehouse, tmp_path / "carol.csv", tmp_path / "carol-again.csv").exit_code == 0
    reviews = table(warehouse, "SELECT COUNT(*) FROM human_reviews")[0][0]
    assert table(warehouse, "SELECT COUNT(DISTINCT source_file) FROM human_reviews") == [(1,)]
    assert table(warehouse, "SELECT COUNT(*) FROM review_imports WHERE duplicate_of IS NOT NULL") == [(1,)]
    assert review_import(project, warehouse, tmp_path / "carol.csv").exit_code == 0  # and again: no change
    assert table(warehouse, "SELECT COUNT(*) FROM human_reviews")[0][0] == reviews


def test_a_file_for_a_month_with_no_queue(labeled, tmp_path) -> None:
    project, warehouse = labeled
    fill_csv(project / "exports" / "2026-08" / "review_queue.csv", tmp_path / "dave.csv", "dave")
    assert run_month(project, warehouse, "2026-09").success
    # 2026-08's answers dropped into 2026-09: none of its items are in that month's queue.
    result = review_import(project, warehouse, tmp_path / "dave.csv", month="2026-09")
    assert result.exit_code == 0, result.output
    assert table(warehouse, "SELECT rows_ingested FROM review_imports WHERE month = '2026-09-01'") == [(0,)]
    assert "not an item of this month" in (project / "reviews" / "2026-09" / "dave.csv.rejected.csv").read_text()


def test_three_annotators_consensus_ties_and_sending_back(tmp_path) -> None:
    project = write_tiny_project(tmp_path / "p", extra_yaml="")
    yaml = project / "project.yaml"
    yaml.write_text(yaml.read_text().replace("human_review: {hourly_rate_usd: 30, reviews_per_hour: 120}",
                                             "human_review: {hourly_rate_usd: 30, reviews_per_hour: 120, annotators_per_item: 3}"))
    warehouse = tmp_path / "w.duckdb"
    assert run_month(project, warehouse).success
    queue_csv = project / "exports" / "2026-08" / "review_queue.csv"
    items = fill_csv(queue_csv, tmp_path / "a1.csv", "a1")
    fill_csv(queue_csv, tmp_path / "a2.csv", "a2", answer=lambda i: "card_lost" if gold(i) != "card_lost" else "billing")
    assert review_import(project, warehouse, tmp_path / "a1.csv", tmp_path / "a2.csv").exit_code == 0
    # Two of three reviews, one each way: a tie, nothing settled, still pending.
    assert table(warehouse, "SELECT COUNT(*) FROM review_consensus WHERE tie AND NOT settled") == [(len(items),)]
    assert table(warehouse, "SELECT COUNT(*) FROM final_labels WHERE decided_by = 'human'") == [(0,)]
    fill_csv(queue_csv, tmp_path / "a3.csv", "a3")
    assert review_import(project, warehouse, tmp_path / "a3.csv").exit_code == 0
    # Three reviews, two for the gold label: settled by majority, with agreement 2/3.
    assert table(warehouse, "SELECT COUNT(*), MIN(agreement) FROM review_consensus WHERE settled") == [
        (len(items), pytest.approx(2 / 3))]
    human = table(warehouse, "SELECT item_id, label FROM final_labels WHERE decided_by = 'human'")
    assert len(human) == len(items) and all(label == gold(item) for item, label in human)


def test_none_of_these_is_a_valid_answer_when_the_taxonomy_declares_it(tmp_path) -> None:
    # extra_yaml lands right after the taxonomy's labels, so this indentation puts it in `taxonomy`.
    project = write_tiny_project(tmp_path / "p", extra_yaml="  none_label: none_of_these\n")
    spec = load_project(project)
    assert spec.taxonomy.none_label == "none_of_these"
    warehouse = tmp_path / "w.duckdb"
    assert run_month(project, warehouse).success
    out_of_scope = lambda item_id: "none_of_these" if gold(item_id) == "card_lost" else gold(item_id)  # noqa: E731
    reviews = project / "reviews" / "2026-08" / "alice.csv"
    filled = fill_csv(project / "exports" / "2026-08" / "review_queue.csv", reviews, "alice", answer=out_of_scope)
    nones = sorted(item_id for item_id in filled if gold(item_id) == "card_lost")
    assert nones and len(nones) < len(filled)
    # Not the declared answer: still outside the taxonomy.
    (reviews.parent / "bo.csv").write_text(f"item_id,annotator_id,label\n{filled[0]},bo,none\n")
    window = dg.TimeWindow(datetime(2026, 8, 1, tzinfo=timezone.utc), datetime(2026, 9, 1, tzinfo=timezone.utc))
    with connect(warehouse, read_only=True) as conn:
        found = read_month_reviews(conn, spec, "2026-08", window)
    rejected = {path.name: rows for path, rows in found.rejected}
    assert rejected["alice.csv"] == [] and [row.item_id for row in rejected["bo.csv"]] == [filled[0]]
    assert "'none' is not in the taxonomy" in rejected["bo.csv"][0].reason
    assert len(found.reviews) == len(filled)
    # People's "none of these" is an outcome like any label: kept, merged and settled.
    merged = found.by_item()
    assert sorted(item_id for item_id, row in merged.items() if row["label"] == "none_of_these") == nones
    assert all(row["settled"] for row in merged.values()) and len(merged) == len(filled)


def test_review_sensor_requests_one_run_per_file_content(labeled, tmp_path) -> None:
    project_dir, _ = labeled
    project = load_project(project_dir)
    from labeling_dagster.definitions import build_definitions

    defs = build_definitions(project_dir, tmp_path / "w.duckdb")
    partitions = defs.resolve_assets_def("final_labels").partitions_def
    folder = project_dir / "reviews" / "2026-08"
    fill_csv(project_dir / "exports" / "2026-08" / "review_queue.csv", folder / "erin.csv", "erin")
    (project_dir / "reviews" / "notes").mkdir()
    (project_dir / "reviews" / "2031-01").mkdir()
    requests, notes = pending_review_runs(project, partitions)
    assert [(r.partition_key, r.run_key.split(":")[0]) for r in requests] == [("2026-08-01", "2026-08/erin.csv")]
    assert any("not a YYYY-MM folder" in note for note in notes) and any("2031-01" in note for note in notes)
    again, _ = pending_review_runs(project, partitions)
    assert again[0].run_key == requests[0].run_key
    with open(folder / "erin.csv", "a", encoding="utf-8") as handle:
        handle.write("\n")
    edited, _ = pending_review_runs(project, partitions)
    assert edited[0].run_key != requests[0].run_key

    sensor = defs.resolve_sensor_def("review_files_sensor")
    with dg.build_sensor_context(resources={"project": defs.resources["project"]}) as context:
        result = sensor(context)
    assert [request.run_key for request in result.run_requests] == [edited[0].run_key]


def exported(project: Path, month: str = "2026-08") -> dict[str, dict]:
    """The month's exports, per format: item id -> (reviews so far, reviews still needed)."""
    folder = project / "exports" / month
    with open(folder / "review_queue.csv", newline="", encoding="utf-8") as handle:
        csv_rows = {r["item_id"]: (int(r["reviews_so_far"]), int(r["reviews_still_needed"])) for r in csv.DictReader(handle)}
    jsonl = [json.loads(line) for line in (folder / "review_queue.jsonl").read_text().splitlines()]
    tasks = json.loads((folder / "label_studio_tasks.json").read_text())
    manifest = [json.loads(line)["metadata"] for line in (folder / "ground_truth_manifest.jsonl").read_text().splitlines()]
    return {
        "csv": csv_rows,
        "jsonl": {r["item_id"]: (r["reviews_so_far"], r["reviews_still_needed"]) for r in jsonl},
        "label_studio": {t["data"]["item_id"]: (t["data"]["reviews_so_far"], t["data"]["reviews_still_needed"]) for t in tasks},
        "ground_truth": {m["item_id"]: (m["reviews_so_far"], m["reviews_still_needed"]) for m in manifest},
    }


def test_a_rerun_that_queues_fewer_items_keeps_every_review(paid_project: Path, server, tmp_path: Path) -> None:
    """Issue 12: adding a QA tier and rerunning the month rejected the reviews of items it no longer
    queued and dropped their labor. Paid tiers on the SIMULATED server (every answer at 0.5)."""
    yaml = paid_project / "project.yaml"
    tiers = paid_tiers(server)
    lines = tiers.splitlines(keepends=True)
    at = next(n for n, line in enumerate(lines) if "name: qa" in line)
    without_qa = "".join(lines[:at] + lines[at + 2:])
    # quality.gate bands: three golden items cannot certify QA, and this test is about the reviews
    yaml.write_text(yaml.read_text().replace(tiers, without_qa).replace(
        "human_review: {hourly_rate_usd: 30, reviews_per_hour: 120}",
        "human_review: {hourly_rate_usd: 30, reviews_per_hour: 120, annotators_per_item: 2}\nquality: {gate: bands}"))
    warehouse = tmp_path / "w.duckdb"
    assert run_month(paid_project, warehouse).success
    assert table(warehouse, "SELECT COUNT(*) FROM review_queue") == [(13,)]  # adjudication settles nothing at 0.5

    # Two SIMULATED reviewers: alice answers every item, bob all but two, so ten items are settled
    # (two answers each) and two have one answer of the two they need.
    queue_csv = paid_project / "exports" / "2026-08" / "review_queue.csv"
    partly = ("2026-08-billing-3", "2026-08-cancellation-0")
    items = fill_csv(queue_csv, tmp_path / "alice.csv", "alice")
    fill_csv(queue_csv, tmp_path / "bob.csv", "bob", skip=partly)
    assert review_import(paid_project, warehouse, tmp_path / "alice.csv", tmp_path / "bob.csv").exit_code == 0
    settled = sorted(set(items) - set(partly))
    assert table(warehouse, "SELECT COUNT(*) FROM human_reviews") == [(len(items) + len(settled),)]
    assert table(warehouse, "SELECT COUNT(*) FROM review_consensus WHERE settled") == [(len(settled),)]
    reviews = table(warehouse, "SELECT item_id, annotator_id, label, seconds FROM human_reviews ORDER BY ALL")
    labor = table(warehouse, "SELECT usd FROM cost_ledger WHERE tier = 'human_review'")[0][0]
    assert labor == pytest.approx(0.30 * len(reviews))

    # The export again: settled items are not sent out twice; the others say what they have and lack.
    result = CliRunner().invoke(main, ["review", "export", "--project", str(paid_project), "--month", "2026-08",
                                       "--warehouse", str(warehouse)])
    assert result.exit_code == 0, result.output
    expected = {"2026-08-billing-3": (1, 1), "2026-08-cancellation-0": (1, 1), "2026-08-golden": (0, 2)}
    assert exported(paid_project) == {kind: expected for kind in ("csv", "jsonl", "label_studio", "ground_truth")}
    assert dict(table(warehouse, "SELECT selection, COUNT(*) FROM review_queue GROUP BY 1")) == {
        "settled": len(settled), "all": 3}

    # The project changes: a QA tier that settles what agrees with the first pass. The rerun queues
    # only the vip ticket (a rule reserves it for people); QA accepts the other items, mostly as billing.
    yaml.write_text(yaml.read_text().replace(without_qa, tiers).replace("qa_accept_at: 0.95", "qa_accept_at: 0.3"))
    rerun = run_month(paid_project, warehouse)
    assert rerun.success and all(check.passed for check in rerun.get_asset_check_evaluations())
    assert table(warehouse, "SELECT item_id FROM review_queue") == [("2026-08-billing-3",)]
    overruled = table(warehouse, f"""SELECT COUNT(*) FROM qa_labels WHERE next_step = 'accept'
                                     AND item_id IN {tuple(settled)} AND label <> split_part(item_id, '-', 3)""")[0][0]
    assert overruled > 0  # QA's accepted label differs from people's on these items

    # No review lost, none rejected, the labor still in the books.
    assert table(warehouse, "SELECT item_id, annotator_id, label, seconds FROM human_reviews ORDER BY ALL") == reviews
    assert table(warehouse, "SELECT SUM(rows_rejected) FROM review_imports") == [(0,)]
    assert not list((paid_project / "reviews" / "2026-08").glob("*.rejected.csv"))
    ledger = dict(table(warehouse, "SELECT tier, usd FROM cost_ledger"))
    assert ledger["human_review"] == pytest.approx(labor)
    assert ledger["human_review_pending"] == pytest.approx(0.25)  # the vip ticket's second review
    assert ledger["total"] == pytest.approx(sum(v for k, v in ledger.items() if k != "total"))
    # People's settled labels win over QA's accept; their labor stays in each item's cost.
    human = table(warehouse, "SELECT item_id, label, status FROM final_labels WHERE decided_by = 'human' ORDER BY 1")
    assert human == [(item, gold(item), "labeled") for item in settled]
    assert table(warehouse, f"SELECT MIN(cost_usd) FROM final_labels WHERE item_id IN {tuple(settled)}")[0][0] >= 0.60
    # One answer of two, and no longer queued: the model's decision stands, the answer is paid for.
    assert table(warehouse, "SELECT decided_by, cost_usd >= 0.30 FROM final_labels WHERE item_id = '2026-08-cancellation-0'") == [
        ("qa", True)]
    assert table(warehouse, "SELECT status FROM final_labels WHERE item_id = '2026-08-billing-3'") == [("pending_human",)]
    assert {kind: rows for kind, rows in exported(paid_project).items()} == {
        kind: {"2026-08-billing-3": (1, 1)} for kind in ("csv", "jsonl", "label_studio", "ground_truth")}
