"""Review queue exports and review imports: every format goes out, is filled as a reviewer would fill
it (a simulated reviewer: the tests write the answers a person or a review tool would), and comes back
as the same review rows; bad rows and bad files become rejected rows, never exceptions."""

from __future__ import annotations

import csv
import json
import os
import xml.etree.ElementTree as ET
from datetime import date, datetime

import pytest

from labeling_dagster.core.review_formats import (
    NONE_HINT,
    QueueRow,
    RejectedRow,
    ReviewRow,
    TierAnswer,
    export_paths,
    file_fingerprint,
    label_studio_config,
    read_reviews,
    review_files,
    run_key,
    write_atomic,
    write_exports,
    write_rejection_report,
)

LABELS = ["billing_issue", "card_lost", "other"]
DEFINITIONS = {"billing_issue": "A charge the customer disputes & wants explained", "card_lost": "Card lost or stolen"}
MONTH = "2026-09"


def queue() -> list[QueueRow]:
    nano = TierAnswer("first_pass", "openai", "gpt-5-nano", "billing_issue", 0.55, "mentions a charge")
    return [
        QueueRow(
            item_id="t-001",
            text='I was charged twice, "again"!\nPlease help, €40',
            candidate_label="billing_issue",
            confidence=0.62,
            reason="double charge",
            alternatives=[("card_lost", 0.3), ("other", 0.08)],
            label_definition=DEFINITIONS["billing_issue"],
            tier_answers=[nano, TierAnswer("qa", "anthropic", "claude-haiku-4-5", "card_lost", 0.6, "")],
            queue_reason="QA disagrees with the first pass",
            annotators_needed=3,
        ),
        QueueRow(
            item_id="t-002",
            text="Lost my card yesterday",
            candidate_label="card_lost",
            confidence=0.4,
            reason="",
            alternatives=[],
            label_definition=DEFINITIONS["card_lost"],
            tier_answers=[TierAnswer("first_pass", "local", "tfidf-lr", None, None, "no answer")],
            queue_reason="always_human_labels: card_lost",
        ),
        QueueRow("t-003", "What are your hours?", None, None, "", [], "", [], "below adjudicate_at"),
    ]


KNOWN = [row.item_id for row in queue()]


def test_export_paths_are_stable_and_per_month(tmp_path):
    paths = export_paths(tmp_path / "exports", MONTH)
    assert paths == export_paths(tmp_path / "exports", date(2026, 9, 1)) == export_paths(
        tmp_path / "exports", datetime(2026, 9, 1, 0, 0)
    )
    assert {name: path.relative_to(tmp_path).as_posix() for name, path in paths.items()} == {
        "csv": "exports/2026-09/review_queue.csv",
        "jsonl": "exports/2026-09/review_queue.jsonl",
        "label_studio_tasks": "exports/2026-09/label_studio_tasks.json",
        "label_studio_config": "exports/2026-09/label_studio_config.xml",
        "ground_truth_manifest": "exports/2026-09/ground_truth_manifest.jsonl",
        "ground_truth_label_categories": "exports/2026-09/ground_truth_label_categories.json",
        "review_choices": "exports/2026-09/review_choices.csv",
    }
    with pytest.raises(ValueError, match="YYYY-MM"):
        export_paths(tmp_path, "Sept 2026")


def test_write_exports_writes_every_file_and_leaves_no_temp_file(tmp_path):
    paths = write_exports(tmp_path, MONTH, queue(), LABELS, DEFINITIONS)
    assert all(path.exists() for path in paths.values())
    assert sorted(os.listdir(tmp_path / MONTH)) == sorted(path.name for path in paths.values())
    write_exports(tmp_path, MONTH, queue()[:1], LABELS, DEFINITIONS)  # a rerun replaces, never appends
    assert len(paths["jsonl"].read_text().splitlines()) == 1


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    target = write_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(TypeError):
        write_atomic(target, None)  # type: ignore[arg-type]
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_jsonl_export_round_trips_the_queue(tmp_path):
    paths = write_exports(tmp_path, MONTH, queue(), LABELS)
    back = [QueueRow.from_mapping(json.loads(line)) for line in paths["jsonl"].read_text().splitlines()]
    assert back == queue()


def test_queue_row_from_a_warehouse_row_with_json_strings_and_empty_cells():
    row = queue()[0]
    stored = {
        **row.to_json(),
        "alternatives": json.dumps(row.to_json()["alternatives"]),
        "tier_answers": json.dumps(row.to_json()["tier_answers"]),
    }
    assert QueueRow.from_mapping(stored) == row
    empty = QueueRow.from_mapping({"item_id": 7, "text": "x", "candidate_label": float("nan"),
                                   "confidence": float("nan"), "alternatives": None, "tier_answers": None})
    assert (empty.item_id, empty.candidate_label, empty.confidence, empty.alternatives) == ("7", None, None, [])


def fill_csv(queue_csv, out, annotator, answers, seconds):
    """Simulated reviewer: opens the exported queue in a spreadsheet, fills annotator_id, label and
    seconds on each row, saves a copy into the reviews folder."""
    with open(queue_csv, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows, columns = list(reader), reader.fieldnames
    for row in rows:
        row.update(annotator_id=annotator, label=answers[row["item_id"]], seconds=seconds[row["item_id"]])
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def test_csv_round_trip(tmp_path):
    paths = write_exports(tmp_path / "exports", MONTH, queue(), LABELS)
    reviews = tmp_path / "reviews" / MONTH
    reviews.mkdir(parents=True)
    answers = {"t-001": "billing_issue", "t-002": "card_lost", "t-003": "other"}
    fill_csv(paths["csv"], reviews / "alice.csv", "alice", answers, {"t-001": "12.5", "t-002": "", "t-003": "3"})
    good, rejected = read_reviews(reviews / "alice.csv", KNOWN, LABELS)
    assert rejected == []
    assert [(r.item_id, r.annotator_id, r.label, r.seconds, r.source_file) for r in good] == [
        ("t-001", "alice", "billing_issue", 12.5, "alice.csv"),
        ("t-002", "alice", "card_lost", None, "alice.csv"),
        ("t-003", "alice", "other", 3.0, "alice.csv"),
    ]
    # No submitted_at column: the file's modification time stands in, as naive UTC.
    assert all(r.submitted_at.tzinfo is None for r in good)


def test_label_studio_round_trip(tmp_path):
    paths = write_exports(tmp_path / "exports", MONTH, queue(), LABELS, DEFINITIONS)
    tasks = json.loads(paths["label_studio_tasks"].read_text())
    assert [task["data"]["item_id"] for task in tasks] == KNOWN
    first = tasks[0]
    assert first["data"]["text"] == queue()[0].text
    assert [(p["model_version"], p["score"], p["result"][0]["value"]["choices"]) for p in first["predictions"]] == [
        ("first_pass:openai:gpt-5-nano", 0.55, ["billing_issue"]),
        ("qa:anthropic:claude-haiku-4-5", 0.6, ["card_lost"]),
    ]
    assert tasks[1]["predictions"] == []  # the local tier gave no label: nothing to suggest

    # The config's names must match the predictions', and offer exactly the taxonomy.
    config = ET.fromstring(paths["label_studio_config"].read_text())
    choices = config.find("Choices")
    result = first["predictions"][0]["result"][0]
    assert (choices.get("name"), choices.get("toName")) == (result["from_name"], result["to_name"])
    assert config.find("Text").get("value") == "$" + result["to_name"]
    assert [c.get("value") for c in choices.findall("Choice")] == LABELS
    assert choices.findall("Choice")[0].get("hint") == DEFINITIONS["billing_issue"]

    # Simulated Label Studio export: two annotators, one given as a user id, one expanded with email.
    picks = {"t-001": ["billing_issue", "card_lost"], "t-002": ["card_lost", "card_lost"], "t-003": ["other", "other"]}
    export = []
    for task_id, task in enumerate(tasks, start=40):
        annotations = []
        for n, user in enumerate([7, {"id": 9, "email": "bo@example.com"}]):
            annotations.append({
                "id": task_id * 10 + n,
                "completed_by": user,
                "result": [{**result, "value": {"choices": [picks[task["data"]["item_id"]][n]]}}],
                "was_cancelled": False,
                "created_at": "2026-09-14T10:00:00.000000Z",
                "updated_at": f"2026-09-14T10:0{n}:30.123456Z",
                "lead_time": 8.5 + n,
            })
        export.append({"id": task_id, "data": task["data"], "annotations": annotations,
                       "predictions": task["predictions"]})
    path = tmp_path / "reviews" / "project-3-at-2026-09-14.json"
    path.parent.mkdir()
    path.write_text(json.dumps(export))
    good, rejected = read_reviews(path, KNOWN, LABELS)
    assert rejected == []
    assert [(r.item_id, r.annotator_id, r.label, r.seconds) for r in good] == [
        (item, user, picks[item][n], 8.5 + n) for item in KNOWN for n, user in enumerate(["7", "bo@example.com"])
    ]
    assert good[1].submitted_at == datetime(2026, 9, 14, 10, 1, 30, 123456)


def test_label_studio_config_escapes_labels():
    xml = label_studio_config(['a&b', 'say "hi"', "<x>"], {"a&b": "fish & chips"})
    choices = ET.fromstring(xml).find("Choices").findall("Choice")
    assert [c.get("value") for c in choices] == ['a&b', 'say "hi"', "<x>"]
    assert choices[0].get("hint") == "fish & chips"


def test_none_of_these_is_offered_by_every_export_that_lists_choices(tmp_path):
    paths = write_exports(tmp_path / "exports", MONTH, queue(), LABELS, DEFINITIONS, none_label="none_of_these")
    choices = ET.fromstring(paths["label_studio_config"].read_text()).find("Choices").findall("Choice")
    assert [c.get("value") for c in choices] == [*LABELS, "none_of_these"]
    assert choices[-1].get("hint") == NONE_HINT and choices[0].get("hint") == DEFINITIONS["billing_issue"]
    assert json.loads(paths["ground_truth_label_categories"].read_text()) == {
        "document-version": "2018-11-28", "labels": [{"label": label} for label in [*LABELS, "none_of_these"]]}
    with open(paths["review_choices"], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["label"], row["meaning"]) for row in rows] == [
        ("billing_issue", DEFINITIONS["billing_issue"]), ("card_lost", DEFINITIONS["card_lost"]), ("other", ""),
        ("none_of_these", NONE_HINT)]

    # Without a none_label the choices are exactly the taxonomy.
    plain = write_exports(tmp_path / "plain", MONTH, queue(), LABELS)
    assert [c.get("value") for c in ET.fromstring(plain["label_studio_config"].read_text()).iter("Choice")] == LABELS
    assert [entry["label"] for entry in json.loads(plain["ground_truth_label_categories"].read_text())["labels"]] == LABELS
    assert "none_of_these" not in plain["review_choices"].read_text()


def test_none_of_these_is_a_valid_answer_in_every_review_format_when_declared(tmp_path):
    paths = write_exports(tmp_path / "exports", MONTH, queue(), LABELS, none_label="none_of_these")
    answers = {"t-001": "billing_issue", "t-002": "none_of_these", "t-003": "none_of_these"}
    fill_csv(paths["csv"], tmp_path / "alice.csv", "alice", answers, {"t-001": "", "t-002": "", "t-003": ""})
    good, rejected = read_reviews(tmp_path / "alice.csv", KNOWN, LABELS, none_label="none_of_these")
    assert rejected == [] and [(r.item_id, r.label) for r in good] == list(answers.items())

    # The same file against a taxonomy without a none_label: those answers are outside it.
    good, rejected = read_reviews(tmp_path / "alice.csv", KNOWN, LABELS)
    assert [r.item_id for r in good] == ["t-001"] and [r.item_id for r in rejected] == ["t-002", "t-003"]
    assert "'none_of_these' is not in the taxonomy" in rejected[0].reason

    # Another made-up answer is still rejected, and the reason names the none-of-these answer too.
    (tmp_path / "bo.csv").write_text("item_id,annotator_id,label\nt-001,bo,none\n")
    good, rejected = read_reviews(tmp_path / "bo.csv", KNOWN, LABELS, none_label="none_of_these")
    assert good == [] and "nor its none-of-these answer 'none_of_these'" in rejected[0].reason

    # Label Studio and Ground Truth answers carry it as a chosen choice / class-name.
    studio = tmp_path / "ls.json"
    studio.write_text(json.dumps([{"id": 1, "data": {"item_id": "t-002"}, "annotations": [{"completed_by": 5, "result": [
        {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["none_of_these"]}}]}]}]))
    manifest = tmp_path / "out.manifest"
    manifest.write_text(json.dumps({"source": "x", "metadata": {"item_id": "t-003"}, "c": 3, "c-metadata": {
        "class-name": "none_of_these", "human-annotated": "yes", "job-name": "j"}}) + "\n")
    for path, item in ((studio, "t-002"), (manifest, "t-003")):
        good, rejected = read_reviews(path, KNOWN, LABELS, none_label="none_of_these")
        assert rejected == [] and [(r.item_id, r.label) for r in good] == [(item, "none_of_these")]


def test_ground_truth_round_trip(tmp_path):
    paths = write_exports(tmp_path / "exports", MONTH, queue(), LABELS)
    lines = [json.loads(line) for line in paths["ground_truth_manifest"].read_text().splitlines()]
    assert [line["source"] for line in lines] == [row.text for row in queue()]
    assert [line["metadata"]["item_id"] for line in lines] == KNOWN
    assert lines[0]["metadata"]["annotators_needed"] == 3

    # Simulated Ground Truth output manifest: the input line plus the label attribute (class index)
    # and its metadata; the last line was labeled by Ground Truth's own model, not a person.
    chosen = ["card_lost", "card_lost", "other"]
    output = []
    for n, (line, label) in enumerate(zip(lines, chosen)):
        output.append({**line, "ticket-intent": LABELS.index(label), "ticket-intent-metadata": {
            "class-name": label, "confidence": 0.91, "type": "groundtruth/text-classification",
            "job-name": "labeling-job/ticket-intent", "human-annotated": "yes" if n < 2 else "no",
            "creation-date": "2026-09-15T08:30:00.000001"}})
    path = tmp_path / "output.manifest"
    path.write_text("".join(json.dumps(line) + "\n" for line in output))
    good, rejected = read_reviews(path, KNOWN, LABELS)
    assert [(r.item_id, r.annotator_id, r.label, r.seconds) for r in good] == [
        ("t-001", "groundtruth:labeling-job/ticket-intent", "card_lost", None),
        ("t-002", "groundtruth:labeling-job/ticket-intent", "card_lost", None),
    ]
    assert good[0].submitted_at == datetime(2026, 9, 15, 8, 30, 0, 1)
    assert [(r.location, r.item_id) for r in rejected] == [("line 3", "t-003")]
    assert "automated labeling" in rejected[0].reason


def test_json_lines_reviews(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_text(
        '{"item_id": "t-001", "annotator_id": "cy", "label": "other", "seconds": 4, '
        '"submitted_at": "2026-09-16T12:00:00+02:00"}\n\n'
        '{"item_id": "t-002", "annotator_id": "cy", "label": "card_lost"}\n'
    )
    good, rejected = read_reviews(path, KNOWN, LABELS)
    assert rejected == []
    assert good[0] == ReviewRow("t-001", "cy", "other", 4.0, datetime(2026, 9, 16, 10, 0), "reviews.jsonl")
    assert good[1].label == "card_lost"


def test_bad_csv_rows_are_rejected_by_line_and_the_good_rows_kept(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "item_id,annotator_id,label,seconds\n"
        "t-001,alice,billing_issue,10\n"  # line 2: good
        "t-999,alice,other,5\n"  # line 3: not in the queue
        "t-002,alice,lost_card,5\n"  # line 4: not in the taxonomy
        "t-003,,other,5\n"  # line 5: no annotator
        "t-003,alice,other,soon\n"  # line 6: seconds not a number
        "t-003,alice\n"  # line 7: cells missing
        '"t-003","alice","other","4","extra"\n'  # line 8: a cell too many
        "t-001,alice,other,3\n"  # line 9: alice answered t-001 already
        "t-002,bob,card_lost,-1\n"  # line 10: negative seconds
        "t-002,bob,card_lost,\n"  # line 11: good, no seconds
    )
    good, rejected = read_reviews(path, KNOWN, LABELS)
    assert [(r.item_id, r.annotator_id, r.label, r.seconds) for r in good] == [
        ("t-001", "alice", "billing_issue", 10.0),
        ("t-002", "bob", "card_lost", None),
    ]
    reasons = {row.location: row.reason for row in rejected}
    assert list(reasons) == [f"line {n}" for n in (3, 4, 5, 6, 7, 8, 9, 10)]
    assert "not an item of this month" in reasons["line 3"]
    assert "'lost_card' is not in the taxonomy" in reasons["line 4"]
    assert "missing annotator_id" in reasons["line 5"]
    assert "'soon' is not a number" in reasons["line 6"]
    assert "number of cells" in reasons["line 7"] and "number of cells" in reasons["line 8"]
    assert "answered this item earlier" in reasons["line 9"]
    assert "zero or more" in reasons["line 10"]
    assert all(row.source_file == "bad.csv" for row in rejected)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe\x00\x01 binary", "cannot read the file"),
        (b"", "empty"),
        (b"id,who,answer\n1,a,b\n", "header lacks ['item_id', 'annotator_id', 'label']"),
        (b'[{"data": {"item_id": "t-001"}, "annotations": [', "not valid JSON"),
        (b'{"tasks": []}\n', "missing item_id, annotator_id, label"),
    ],
)
def test_an_unusable_file_gives_one_rejected_row(tmp_path, content, expected):
    path = tmp_path / "reviews.json"
    path.write_bytes(content)
    good, rejected = read_reviews(path, KNOWN, LABELS)
    assert good == [] and len(rejected) == 1
    assert expected in rejected[0].reason


def test_bad_label_studio_and_ground_truth_entries(tmp_path):
    base = {"from_name": "label", "to_name": "text", "type": "choices"}
    export = [
        {"id": 1, "data": {"item_id": "t-001"}, "annotations": [
            {"completed_by": 3, "was_cancelled": True, "result": []},
            {"completed_by": 3, "result": [{**base, "value": {"choices": ["other", "card_lost"]}}]},
            {"completed_by": 4, "result": [{**base, "value": {"choices": ["other"]}}], "lead_time": "n/a"},
            {"result": [{**base, "value": {"choices": ["other"]}}]},
        ]},
        {"id": 2, "data": {"text": "no id"}, "annotations": [{"completed_by": 3, "result": [
            {**base, "value": {"choices": ["other"]}}]}]},
        {"id": 3, "data": {"item_id": "t-002"}},
        "junk",
    ]
    path = tmp_path / "ls.json"
    path.write_text(json.dumps(export))
    good, rejected = read_reviews(path, KNOWN, LABELS)
    assert good == []
    assert [(r.location, r.item_id) for r in rejected] == [
        ("task 1 (id 1), annotation 1", "t-001"),
        ("task 1 (id 1), annotation 2", "t-001"),
        ("task 1 (id 1), annotation 3", "t-001"),
        ("task 1 (id 1), annotation 4", "t-001"),
        ("task 2 (id 2), annotation 1", None),
        ("task 3 (id 3)", "t-002"),
        ("task 4", None),
    ]
    assert "skipped" in rejected[0].reason and "found 2" in rejected[1].reason
    assert "'n/a' is not a number" in rejected[2].reason and "missing annotator_id" in rejected[3].reason

    manifest = tmp_path / "out.manifest"
    manifest.write_text(
        '{"source": "x", "metadata": {"item_id": "t-001"}, "c": 0, "c-metadata": {"class-name": "nope", '
        '"human-annotated": "yes", "job-name": "j"}}\n'
        '{"source": "x", "metadata": {"item_id": "t-002"}, "c-metadata": {"failure-reason": "ClientError: timeout"}}\n'
        "{not json\n"
    )
    good, rejected = read_reviews(manifest, KNOWN, LABELS)
    assert good == []
    assert [r.location for r in rejected] == ["line 1", "line 2", "line 3"]
    assert "'nope' is not in the taxonomy" in rejected[0].reason and "timeout" in rejected[1].reason


def test_rejection_report_lands_beside_the_file_and_is_not_a_review_file(tmp_path):
    review = tmp_path / "alice.csv"
    review.write_text("item_id,annotator_id,label\nt-999,alice,other\n")
    good, rejected = read_reviews(review, KNOWN, LABELS)
    report = write_rejection_report(review, rejected)
    assert report == tmp_path / "alice.csv.rejected.csv"
    with open(report, newline="") as handle:
        assert list(csv.DictReader(handle)) == [
            {"source_file": "alice.csv", "location": "line 2", "item_id": "t-999", "reason": rejected[0].reason}
        ]
    (tmp_path / ".alice.csv.x.tmp").write_text("partial")
    (tmp_path / "notes.txt").write_text("not reviews")
    assert review_files(tmp_path) == [review]
    assert review_files(tmp_path / "no-such-month") == []
    # Fixed and dropped again: nothing rejected, so the stale report goes.
    assert write_rejection_report(review, []) is None and not report.exists()


def test_fingerprint_and_run_key_follow_content_and_name(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("item_id,annotator_id,label\n")
    b.write_text("item_id,annotator_id,label\n")
    assert file_fingerprint(a) == file_fingerprint(b)
    assert run_key(a) != run_key(b) and run_key(a) == run_key(a)
    before = run_key(a)
    a.write_text("item_id,annotator_id,label\nt-001,alice,other\n")
    assert run_key(a) != before and run_key(a).startswith("a.csv:")


def test_rejected_rows_name_their_file(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("item_id,annotator_id,label\nt-001,alice,billing_issue\n")
    assert read_reviews(path, [], LABELS)[1] == [
        RejectedRow("r.csv", "line 2", "t-001",
                    "item 't-001' is not an item of this month; check the month folder")
    ]


def test_an_unclosed_quote_keeps_the_rows_before_it(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('item_id,annotator_id,label\nt-001,alice,other\nt-002,"alice,card_lost\n' + "x" * 200_000 + "\n")
    good, rejected = read_reviews(path, KNOWN, LABELS)
    assert [row.item_id for row in good] == ["t-001"]
    assert len(rejected) == 1 and "unreadable CSV from here on" in rejected[0].reason


def test_a_chained_ground_truth_job_is_read_by_its_newest_attribute(tmp_path):
    meta = {"human-annotated": "yes", "creation-date": "2026-09-15T08:30:00"}
    line = {"source": "x", "metadata": {"item_id": "t-001"},
            "first": 0, "first-metadata": {**meta, "class-name": "billing_issue", "job-name": "job-1"},
            "second": 2, "second-metadata": {**meta, "class-name": "other", "job-name": "job-2"}}
    path = tmp_path / "chained.manifest"
    path.write_text(json.dumps(line) + "\n")
    good, rejected = read_reviews(path, KNOWN, LABELS)
    assert rejected == [] and [(r.annotator_id, r.label) for r in good] == [("groundtruth:job-2", "other")]


def test_every_format_says_how_many_answers_an_item_has_and_needs(tmp_path):
    partly = QueueRow("t-004", "charged twice", "billing_issue", 0.5, "", [], "", [], "QA disagrees",
                      annotators_needed=3, reviews_so_far=2, reviews_still_needed=1)
    assert queue()[0].reviews_so_far == 0 and queue()[0].reviews_still_needed == 3  # defaults: none yet
    paths = write_exports(tmp_path, MONTH, [queue()[0], partly], LABELS)
    with open(paths["csv"], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["reviews_so_far"], r["reviews_still_needed"]) for r in rows] == [("0", "3"), ("2", "1")]
    jsonl = [json.loads(line) for line in paths["jsonl"].read_text().splitlines()]
    assert [(r["reviews_so_far"], r["reviews_still_needed"]) for r in jsonl] == [(0, 3), (2, 1)]
    assert QueueRow.from_mapping(jsonl[1]) == partly
    tasks = json.loads(paths["label_studio_tasks"].read_text())
    assert [(t["data"]["reviews_so_far"], t["data"]["reviews_still_needed"]) for t in tasks] == [(0, 3), (2, 1)]
    manifest = [json.loads(line)["metadata"] for line in paths["ground_truth_manifest"].read_text().splitlines()]
    assert [(m["reviews_so_far"], m["reviews_still_needed"]) for m in manifest] == [(0, 3), (2, 1)]
    # The filled CSV is still a review file: the new columns are ignored on the way back.
    rows[1].update(annotator_id="carol", label="billing_issue")
    with open(tmp_path / "carol.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    good, rejected = read_reviews(tmp_path / "carol.csv", ["t-001", "t-004"], LABELS)
    assert [(r.item_id, r.annotator_id) for r in good] == [("t-004", "carol")] and len(rejected) == 1


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_export_files_get_the_mode_open_would_give_them(tmp_path, umask):
    old = os.umask(umask)
    try:
        paths = write_exports(tmp_path / f"u{umask:o}", MONTH, queue(), LABELS, DEFINITIONS)
        report = write_rejection_report(tmp_path / f"u{umask:o}" / "r.csv", [RejectedRow("r.csv", "line 2", None, "x")])
        with open(tmp_path / f"plain{umask:o}", "w"):
            pass
        expected = os.stat(tmp_path / f"plain{umask:o}").st_mode & 0o777
    finally:
        os.umask(old)
    assert expected == 0o666 & ~umask
    # mkstemp alone would give 0600: a reviewer's account could not read the export.
    assert {kind: os.stat(path).st_mode & 0o777 for kind, path in paths.items()} == {kind: expected for kind in paths}
    assert os.stat(report).st_mode & 0o777 == expected
