"""Review files: one month's review queue written for people and their review tools, and their
completed reviews read back (Label Studio JSON export, Ground Truth output manifest, CSV).

Writing is atomic with stable names, so a review tool never sees half a file; reading never raises on
a bad row: each bad row becomes a `RejectedRow` naming the file, the row and what to fix.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from labeling_dagster.project import MONTH_RE

# Label Studio ties a prediction/annotation to the config by these names; the config below uses them.
LS_FROM_NAME = "label"
LS_TO_NAME = "text"

QUEUE_CSV_COLUMNS = [
    "item_id",
    "text",
    "candidate_label",
    "confidence",
    "reason",
    "alternatives",
    "label_definition",
    "tier_answers",
    "queue_reason",
    "annotators_needed",
    # Answers already received for the item, and how many more it needs (an item people settled is not exported).
    "reviews_so_far",
    "reviews_still_needed",
    # Left blank for the reviewer: a filled copy of this file is itself a valid CSV review file.
    "annotator_id",
    "label",
    "seconds",
]
REVIEW_CSV_REQUIRED = ("item_id", "annotator_id", "label")
# The hint beside the taxonomy's "none of these" answer (taxonomy.none_label) wherever choices are offered.
NONE_HINT = "None of these: the item is outside the taxonomy"
# Ground Truth's label category configuration format (the version its documentation names).
GT_DOCUMENT_VERSION = "2018-11-28"
REJECTION_SUFFIX = ".rejected.csv"
REVIEW_FILE_SUFFIXES = (".csv", ".json", ".jsonl", ".manifest")


@dataclass(frozen=True)
class TierAnswer:
    """What one tier answered for a queued item (label None: the tier gave no usable answer)."""

    tier: str
    provider: str
    model: str
    label: str | None
    confidence: float | None
    reason: str = ""


@dataclass(frozen=True)
class QueueRow:
    """One item waiting for people: the best model answer so far, why it is queued, and how many
    people must review it (`annotators_needed`, from the project file's human_review settings).
    `reviews_so_far`: distinct annotators whose answers are already in; `reviews_still_needed`: how many
    more answers it needs (default: annotators_needed - reviews_so_far; one more after a tie or low
    agreement)."""

    item_id: str
    text: str
    candidate_label: str | None
    confidence: float | None
    reason: str
    alternatives: list[tuple[str, float]]
    label_definition: str
    tier_answers: list[TierAnswer]
    queue_reason: str
    annotators_needed: int = 1
    reviews_so_far: int = 0
    reviews_still_needed: int | None = None

    def __post_init__(self) -> None:
        if self.reviews_still_needed is None:
            object.__setattr__(self, "reviews_still_needed", max(self.annotators_needed - self.reviews_so_far, 0))

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> QueueRow:
        """Build from a dict or a warehouse row, where `alternatives` and `tier_answers` may be stored
        as JSON strings."""
        # Explicit None tests: a warehouse may hand these over as arrays, which have no truth value.
        alternatives = _maybe_json(row.get("alternatives"))
        tier_answers = _maybe_json(row.get("tier_answers"))
        alternatives = [] if alternatives is None else alternatives
        tier_answers = [] if tier_answers is None else tier_answers
        return cls(
            item_id=str(row["item_id"]),
            text=str(row["text"]),
            candidate_label=_none_if_blank(row.get("candidate_label")),
            confidence=_float_or_none(row.get("confidence")),
            reason=str(row.get("reason") or ""),
            alternatives=[(str(label), float(score)) for label, score in alternatives],
            label_definition=str(row.get("label_definition") or ""),
            tier_answers=[
                answer if isinstance(answer, TierAnswer) else TierAnswer(**answer) for answer in tier_answers
            ],
            queue_reason=str(row.get("queue_reason") or ""),
            annotators_needed=int(row.get("annotators_needed") or 1),
            reviews_so_far=int(_float_or_none(row.get("reviews_so_far")) or 0),
            reviews_still_needed=_int_or_none(row.get("reviews_still_needed")),
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["alternatives"] = [[label, score] for label, score in self.alternatives]
        return out


@dataclass(frozen=True)
class ReviewRow:
    """One person's answer for one item. `submitted_at` is naive UTC (a DuckDB TIMESTAMP); `seconds`
    is the time the person spent, when the tool recorded it."""

    item_id: str
    annotator_id: str
    label: str
    seconds: float | None
    submitted_at: datetime
    source_file: str


@dataclass(frozen=True)
class RejectedRow:
    """A row of a review file that was not ingested; `location` is e.g. "line 7" or "task 3 (id 12),
    annotation 1", `reason` says what is wrong and what to do."""

    source_file: str
    location: str
    item_id: str | None
    reason: str


# ---------------------------------------------------------------------------------------- export


def export_paths(exports_dir: str | Path, month: str | date) -> dict[str, Path]:
    """The stable file names of one month's review queue export, by format."""
    folder = Path(exports_dir) / month_key(month)
    return {
        "csv": folder / "review_queue.csv",
        "jsonl": folder / "review_queue.jsonl",
        "label_studio_tasks": folder / "label_studio_tasks.json",
        "label_studio_config": folder / "label_studio_config.xml",
        "ground_truth_manifest": folder / "ground_truth_manifest.jsonl",
        "ground_truth_label_categories": folder / "ground_truth_label_categories.json",
        "review_choices": folder / "review_choices.csv",
    }


def write_exports(
    exports_dir: str | Path,
    month: str | date,
    rows: Sequence[QueueRow],
    taxonomy_labels: Sequence[str],
    definitions: Mapping[str, str] | None = None,
    none_label: str | None = None,
) -> dict[str, Path]:
    """Write every export format of one month's queue; returns `export_paths`."""
    with ExportWriter(exports_dir, month, taxonomy_labels, definitions, none_label=none_label) as export:
        export.add(rows)
    return export.paths


class ExportWriter:
    """Every export file of one month, written a chunk of rows at a time (a large queue never sits in
    memory as one string). Each file grows as a temp file beside its final name and is renamed into
    place when the writer closes without error, so a review tool never reads half a file.
    `none_label` (taxonomy.none_label) is offered as one more answer wherever the choices are listed:
    the Label Studio config, Ground Truth's label categories and the CSV's review_choices.csv."""

    def __init__(
        self,
        exports_dir: str | Path,
        month: str | date,
        taxonomy_labels: Sequence[str],
        definitions: Mapping[str, str] | None = None,
        *,
        none_label: str | None = None,
    ) -> None:
        self.paths = export_paths(exports_dir, month)
        self._choices = {
            "label_studio_config": label_studio_config(taxonomy_labels, definitions, none_label),
            "ground_truth_label_categories": ground_truth_label_categories(taxonomy_labels, none_label),
            "review_choices": review_choices_csv(taxonomy_labels, definitions, none_label),
        }
        self._temps: dict[str, Path] = {}
        self._files: dict[str, Any] = {}
        self._tasks = 0

    def __enter__(self) -> ExportWriter:
        for kind in ("csv", "jsonl", "label_studio_tasks", "ground_truth_manifest"):
            path = self.paths[kind]
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            self._temps[kind] = Path(name)
            _as_open_would(handle)
            self._files[kind] = os.fdopen(handle, "w", encoding="utf-8", newline="")
        self._csv = csv.DictWriter(self._files["csv"], fieldnames=QUEUE_CSV_COLUMNS, lineterminator="\n")
        self._csv.writeheader()
        self._files["label_studio_tasks"].write("[")
        return self

    def add(self, rows: Sequence[QueueRow]) -> None:
        for row in rows:
            self._csv.writerow(_csv_record(row))
            self._files["jsonl"].write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
            separator = "\n" if self._tasks == 0 else ",\n"
            self._files["label_studio_tasks"].write(separator + json.dumps(_ls_task(row), ensure_ascii=False))
            self._tasks += 1
            self._files["ground_truth_manifest"].write(json.dumps(_gt_record(row), ensure_ascii=False) + "\n")

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if error is None:
            self._files["label_studio_tasks"].write("\n]\n")
        for handle in self._files.values():
            handle.close()
        if error is not None:
            for temp in self._temps.values():
                temp.unlink(missing_ok=True)
            return
        for name, temp in self._temps.items():
            os.replace(temp, self.paths[name])
        for name, text in self._choices.items():
            write_atomic(self.paths[name], text)


def _csv_record(row: QueueRow) -> dict[str, Any]:
    record = row.to_json()
    record["alternatives"] = json.dumps(record["alternatives"])
    record["tier_answers"] = json.dumps(record["tier_answers"])
    record.update(annotator_id="", label="", seconds="")
    return {key: "" if value is None else value for key, value in record.items()}


def _ls_task(row: QueueRow) -> dict[str, Any]:
    predictions = [
        {
            "model_version": f"{answer.tier}:{answer.provider}:{answer.model}",
            "score": answer.confidence,
            "result": [_ls_choice(answer.label)],
        }
        for answer in row.tier_answers
        if answer.label is not None
    ]
    return {
        "data": {
            "text": row.text,
            "item_id": row.item_id,
            "candidate_label": row.candidate_label or "",
            "queue_reason": row.queue_reason,
            "label_definition": row.label_definition,
            "annotators_needed": row.annotators_needed,
            "reviews_so_far": row.reviews_so_far,
            "reviews_still_needed": row.reviews_still_needed,
        },
        "predictions": predictions,
    }


def _gt_record(row: QueueRow) -> dict[str, Any]:
    return {
        "source": row.text,
        "metadata": {
            "item_id": row.item_id,
            "candidate_label": row.candidate_label,
            "queue_reason": row.queue_reason,
            "annotators_needed": row.annotators_needed,
            "reviews_so_far": row.reviews_so_far,
            "reviews_still_needed": row.reviews_still_needed,
        },
    }


def write_csv(path: str | Path, rows: Sequence[QueueRow]) -> Path:
    """The queue as CSV; `alternatives` and `tier_answers` are JSON in their cells, and the last three
    columns (annotator_id, label, seconds) are blank for the reviewer to fill."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=QUEUE_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_csv_record(row) for row in rows)
    return write_atomic(path, buffer.getvalue())


def write_jsonl(path: str | Path, rows: Sequence[QueueRow]) -> Path:
    """The queue as JSON lines, one `QueueRow.to_json()` object a line."""
    return write_atomic(path, "".join(json.dumps(row.to_json(), ensure_ascii=False) + "\n" for row in rows))


def write_label_studio(path: str | Path, rows: Sequence[QueueRow]) -> Path:
    """Label Studio tasks: `data` holds the text, the item id and the queue context; one prediction per
    tier that answered, so reviewers see each model's label and score."""
    return write_atomic(path, json.dumps([_ls_task(row) for row in rows], ensure_ascii=False, indent=1))


def answer_choices(
    taxonomy_labels: Sequence[str], definitions: Mapping[str, str] | None = None, none_label: str | None = None
) -> list[tuple[str, str]]:
    """What a reviewer may answer, in order, with each answer's hint: the taxonomy labels, then the
    none-of-these answer when the taxonomy declares one (a person may say an item fits no label)."""
    definitions = definitions or {}
    choices = [(label, definitions.get(label) or "") for label in taxonomy_labels]
    if none_label and none_label not in taxonomy_labels:
        choices.append((none_label, NONE_HINT))
    return choices


def label_studio_config(
    taxonomy_labels: Sequence[str], definitions: Mapping[str, str] | None = None, none_label: str | None = None
) -> str:
    """The Label Studio labeling config for the taxonomy: the text, why it was queued, one required
    single choice per label (its definition as the hint), and the none-of-these answer if declared."""
    choices = "\n".join(
        f"    <Choice value={quoteattr(label)}" + (f" hint={quoteattr(hint)}" if hint else "") + "/>"
        for label, hint in answer_choices(taxonomy_labels, definitions, none_label)
    )
    return (
        "<View>\n"
        f'  <Text name="{LS_TO_NAME}" value="${LS_TO_NAME}"/>\n'
        '  <Header value="Queued because: $queue_reason"/>\n'
        f'  <Choices name="{LS_FROM_NAME}" toName="{LS_TO_NAME}" choice="single" required="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def ground_truth_label_categories(taxonomy_labels: Sequence[str], none_label: str | None = None) -> str:
    """Ground Truth's label category configuration file for a text classification job (its
    LabelCategoryConfigS3Uri): the choices workers see, so `class-name` in the output manifest is
    one of them."""
    labels = [{"label": label} for label, _ in answer_choices(taxonomy_labels, None, none_label)]
    return json.dumps({"document-version": GT_DOCUMENT_VERSION, "labels": labels}, ensure_ascii=False, indent=1) + "\n"


def review_choices_csv(
    taxonomy_labels: Sequence[str], definitions: Mapping[str, str] | None = None, none_label: str | None = None
) -> str:
    """The answers a spreadsheet reviewer may write in review_queue.csv's `label` column, one a row
    with what it means: a CSV cannot offer choices itself."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label", "meaning"])
    writer.writerows(answer_choices(taxonomy_labels, definitions, none_label))
    return buffer.getvalue()


def write_ground_truth_manifest(path: str | Path, rows: Sequence[QueueRow]) -> Path:
    """A SageMaker Ground Truth input manifest: `source` is the text; `metadata` carries the item id
    (Ground Truth copies it into the output manifest, which is how reviews find their item)."""
    return write_atomic(path, "".join(json.dumps(_gt_record(row), ensure_ascii=False) + "\n" for row in rows))


def write_atomic(path: str | Path, text: str) -> Path:
    """Write through a temp file in the same folder and rename it, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _as_open_would(handle)
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(text)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status): setting
    and restoring it (the portable way) races with other threads creating files."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_open_would(handle: int) -> None:
    """mkstemp creates its file 0600; give it the mode open() would (0666 less the umask), so whoever
    may read the folder's other files (a reviewer's account, a review tool) can read the export."""
    if hasattr(os, "fchmod"):
        os.fchmod(handle, 0o666 & ~current_umask())


def month_key(month: str | date) -> str:
    """YYYY-MM from a month string, a date or a datetime (the partition's start)."""
    if isinstance(month, date):
        return f"{month.year:04d}-{month.month:02d}"
    text = str(month)[:7]
    if not MONTH_RE.match(text):
        raise ValueError(f"{month!r} is not a month; write YYYY-MM, e.g. 2026-09")
    return text


def _ls_choice(label: str) -> dict[str, Any]:
    return {"from_name": LS_FROM_NAME, "to_name": LS_TO_NAME, "type": "choices", "value": {"choices": [label]}}


# ---------------------------------------------------------------------------------------- import


def review_files(folder: str | Path) -> list[Path]:
    """The files of a reviews folder that may hold reviews, sorted by name: not our rejection reports,
    not hidden or temporary files (a tool still writing one)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file()
        and not path.name.startswith((".", "~"))
        and not path.name.endswith(REJECTION_SUFFIX)
        and path.suffix.lower() in REVIEW_FILE_SUFFIXES
    )


def file_fingerprint(path: str | Path) -> str:
    """Content hash of a file: the same bytes give the same fingerprint whatever the name or mtime."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:32]


def run_key(path: str | Path) -> str:
    """Ingest each review file once: a new name or new content is a new run, a rerun of the same
    bytes is not."""
    return f"{Path(path).name}:{file_fingerprint(path)}"


def read_reviews(
    path: str | Path, known_item_ids: Iterable[str], taxonomy_labels: Iterable[str], none_label: str | None = None
) -> tuple[list[ReviewRow], list[RejectedRow]]:
    """Read a completed review file, whatever tool wrote it, into good rows and rejected rows.

    The format is detected from the content: a JSON list is a Label Studio export; JSON lines with a
    `<attribute>-metadata` key are a Ground Truth output manifest; other JSON lines and CSV need
    `item_id`, `annotator_id`, `label` (and optionally `seconds`, `submitted_at`). Rows for items not
    in `known_item_ids` (the month's items, queued now or not), with labels outside the taxonomy, missing
    fields, or unparsable, are rejected with their row number and reason. `none_label` (the taxonomy's
    none-of-these answer, if it declares one) is a valid answer: the person says the item fits no
    label. An annotator answering the same item twice in one file keeps the first answer. This
    function does not raise on bad content; an unreadable file gives one rejected row.
    """
    path = Path(path)
    known = known_item_ids if isinstance(known_item_ids, (set, frozenset)) else set(map(str, known_item_ids))
    reader = _Reader(path, known, set(map(str, taxonomy_labels)), none_label)
    try:
        text = path.read_bytes().decode("utf-8-sig")
        reader.file_time = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).replace(tzinfo=None)
    except (OSError, UnicodeDecodeError) as exc:
        reader.reject("file", None, f"cannot read the file ({exc}); save it as UTF-8 text and drop it again")
        return reader.good, reader.rejected
    stripped = text.lstrip()
    if not stripped:
        reader.reject("file", None, "the file is empty; export the completed reviews again")
    elif stripped.startswith("["):
        reader.read_label_studio(text)
    elif stripped.startswith("{"):
        reader.read_json_lines(text)
    else:
        reader.read_csv(text)
    return reader.good, reader.rejected


def write_rejection_report(path: str | Path, rejected: Sequence[RejectedRow]) -> Path | None:
    """Write `<file>.rejected.csv` beside the review file, one line per rejected row; with nothing
    rejected, remove a stale report instead. Returns the report's path, or None."""
    path = Path(path)
    report = path.with_name(path.name + REJECTION_SUFFIX)
    if not rejected:
        report.unlink(missing_ok=True)
        return None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source_file", "location", "item_id", "reason"])
    for row in rejected:
        writer.writerow([row.source_file, row.location, row.item_id or "", row.reason])
    return write_atomic(report, buffer.getvalue())


@dataclass
class _Reader:
    """Holds one file's good and rejected rows while one of the format readers walks it."""

    path: Path
    known_items: set[str]
    labels: set[str]
    none_label: str | None = None
    file_time: datetime = field(default_factory=lambda: datetime.now(timezone.utc).replace(tzinfo=None))
    good: list[ReviewRow] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    _seen: set[tuple[str, str]] = field(default_factory=set)

    def reject(self, location: str, item_id: Any, reason: str) -> None:
        self.rejected.append(RejectedRow(self.path.name, location, _none_if_blank(item_id), reason))

    def accept(
        self, location: str, item_id: Any, annotator_id: Any, label: Any, seconds: Any, submitted_at: Any
    ) -> None:
        item = _none_if_blank(item_id)
        annotator = _none_if_blank(annotator_id)
        answer = _none_if_blank(label)
        missing = [name for name, value in (("item_id", item), ("annotator_id", annotator), ("label", answer))
                   if value is None]
        if missing:
            self.reject(location, item, f"missing {', '.join(missing)}; fill it in or delete the row")
            return
        if item not in self.known_items:
            self.reject(location, item, f"item {item!r} is not an item of this month; check the month folder")
            return
        if answer not in self.labels and answer != self.none_label:
            also = f", nor its none-of-these answer {self.none_label!r}" if self.none_label else ""
            self.reject(location, item, f"label {answer!r} is not in the taxonomy {sorted(self.labels)}{also}")
            return
        try:
            spent = _seconds(seconds)
            when = _timestamp(submitted_at) or self.file_time
        except ValueError as exc:
            self.reject(location, item, str(exc))
            return
        if (item, annotator) in self._seen:
            self.reject(location, item, f"annotator {annotator!r} answered this item earlier in the file; "
                        "the first answer is kept")
            return
        self._seen.add((item, annotator))
        self.good.append(ReviewRow(item, annotator, answer, spent, when, self.path.name))

    def read_csv(self, text: str) -> None:
        rows = csv.DictReader(io.StringIO(text, newline=""))
        header = [name.strip() for name in rows.fieldnames or []]
        missing = [name for name in REVIEW_CSV_REQUIRED if name not in header]
        if missing:
            self.reject("line 1", None, f"not a review file: the header lacks {missing}; a review CSV needs "
                        f"columns {list(REVIEW_CSV_REQUIRED)} (seconds and submitted_at optional)")
            return
        rows.fieldnames = header
        try:
            for row in rows:
                location = f"line {rows.line_num}"
                if None in row or any(value is None for key, value in row.items() if key in REVIEW_CSV_REQUIRED):
                    self.reject(location, row.get("item_id"), "wrong number of cells; check the quoting of this row")
                    continue
                self.accept(location, row["item_id"], row["annotator_id"], row["label"],
                            row.get("seconds"), row.get("submitted_at"))
        except csv.Error as exc:
            # e.g. an unclosed quote that swallows the rest of a large file past the csv cell size limit;
            # the csv module cannot resynchronise after it, so the rest of the file is unread.
            self.reject(f"line {rows.line_num}", None, f"unreadable CSV from here on ({exc}); the rows before "
                        "it were read; fix the file and drop it again")

    def read_json_lines(self, text: str) -> None:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            location = f"line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                self.reject(location, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(record, dict):
                self.reject(location, None, "expected a JSON object on this line")
                continue
            # A chained Ground Truth job appends its attribute after the earlier jobs': the last is newest.
            attributes = [key[: -len("-metadata")] for key in record if key.endswith("-metadata")]
            if not attributes:
                self.accept(location, record.get("item_id"), record.get("annotator_id"), record.get("label"),
                            record.get("seconds"), record.get("submitted_at"))
            else:
                self._ground_truth_line(location, record, attributes[-1])

    def _ground_truth_line(self, location: str, record: dict[str, Any], attribute: str) -> None:
        metadata = record.get(f"{attribute}-metadata")
        given = record.get("metadata")
        item_id = given.get("item_id") if isinstance(given, dict) else record.get("item_id")
        if not isinstance(metadata, dict):
            self.reject(location, item_id, f"{attribute}-metadata is not an object")
            return
        if metadata.get("failure-reason"):
            self.reject(location, item_id, f"Ground Truth gave no label: {metadata['failure-reason']}")
            return
        if str(metadata.get("human-annotated", "yes")).lower() != "yes":
            self.reject(location, item_id, "labeled by Ground Truth's automated labeling (human-annotated: no), "
                        "not by a person; send it to people or drop the line")
            return
        # Ground Truth stores the class index under the attribute; the name is in class-name.
        label = metadata.get("class-name")
        if label is None and isinstance(record.get(attribute), str):
            label = record[attribute]
        # Ground Truth consolidates its workers itself, so the job is the annotator we see.
        annotator = f"groundtruth:{metadata.get('job-name') or attribute}"
        self.accept(location, item_id, annotator, label, None, metadata.get("creation-date"))

    def read_label_studio(self, text: str) -> None:
        try:
            tasks = json.loads(text)
        except json.JSONDecodeError as exc:
            self.reject("file", None, f"not valid JSON ({exc.msg} at line {exc.lineno}); export the project "
                        "from Label Studio again in JSON format")
            return
        if not isinstance(tasks, list):
            self.reject("file", None, "expected a Label Studio JSON export (a list of tasks)")
            return
        for number, task in enumerate(tasks, start=1):
            if not isinstance(task, dict):
                self.reject(f"task {number}", None, "not a task object")
                continue
            where = f"task {number} (id {task.get('id')})" if task.get("id") is not None else f"task {number}"
            data = task.get("data")
            item_id = data.get("item_id") if isinstance(data, dict) else None
            annotations = task.get("annotations")
            if not isinstance(annotations, list):
                self.reject(where, item_id, "no annotations list; export the project in Label Studio's JSON format "
                            "(not JSON-MIN or CSV)")
                continue
            for index, annotation in enumerate(annotations, start=1):
                self._label_studio_annotation(f"{where}, annotation {index}", item_id, annotation)

    def _label_studio_annotation(self, location: str, item_id: Any, annotation: Any) -> None:
        if not isinstance(annotation, dict):
            self.reject(location, item_id, "annotation is not an object")
            return
        if annotation.get("was_cancelled"):
            self.reject(location, item_id, "the annotator skipped this task; it needs another review")
            return
        choices = [
            choice
            for result in annotation.get("result") or []
            if isinstance(result, dict) and result.get("type") == "choices" and isinstance(result.get("value"), dict)
            for choice in result["value"].get("choices") or []
        ]
        if len(choices) != 1:
            self.reject(location, item_id, f"expected exactly one chosen label, found {len(choices)}")
            return
        user = annotation.get("completed_by")
        # The JSON export gives a user id; some exports expand it to an object with the email.
        if isinstance(user, dict):
            user = user.get("email") or user.get("id")
        submitted = annotation.get("updated_at") or annotation.get("created_at")
        self.accept(location, item_id, user, choices[0], annotation.get("lead_time"), submitted)


def _seconds(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"seconds {value!r} is not a number; write e.g. 42 or leave it blank") from None
    if not seconds >= 0:
        raise ValueError(f"seconds {value!r} must be zero or more")
    return seconds


def _timestamp(value: Any) -> datetime | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"submitted_at {value!r} is not an ISO date-time such as 2026-09-14T10:30:00Z") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def _maybe_json(value: Any) -> Any:
    if _missing(value):
        return None
    return json.loads(value) if isinstance(value, str) and value.strip() else value


def _none_if_blank(value: Any) -> str | None:
    if _missing(value):
        return None
    text = str(value).strip()
    return text or None


def _float_or_none(value: Any) -> float | None:
    return None if _missing(value) or value == "" else float(value)


def _int_or_none(value: Any) -> int | None:
    number = _float_or_none(value)
    return None if number is None else int(number)


def _missing(value: Any) -> bool:
    """None, or a float NaN as pandas gives for an empty cell of a warehouse row."""
    return value is None or (isinstance(value, float) and value != value)
