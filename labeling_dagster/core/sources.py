"""Reading a month's inbox files into items, and every row that cannot be an item into a rejection.

Rows are never dropped silently: each source row ends as an item or as a rejected row naming the file,
the line and the reason (empty text, missing id, duplicate id, unreadable row).
"""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from labeling_dagster.core.labels import content_hash
from labeling_dagster.project import Project


class SourceError(ValueError):
    """The month's source cannot be read at all (no file, missing columns)."""


@dataclass
class MonthRead:
    items: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def rows_read(self) -> int:
        return len(self.items) + len(self.rejected)


def month_files(project: Project, month: str) -> list[Path]:
    pattern = str(project.resolve(project.source.path.replace("{month}", month)))
    return [Path(path) for path in sorted(glob.glob(pattern))]


def _format(project: Project, path: Path) -> str:
    if project.source.format != "auto":
        return project.source.format
    suffix = path.suffix.lower()
    formats = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
    if suffix not in formats:
        raise SourceError(f"{path}: cannot tell the format from {suffix!r}; set source.format to csv, jsonl or parquet")
    return formats[suffix]


# Each reader yields (line number, row dict or None, error or None).
Row = tuple[int, dict[str, Any] | None, str | None]


def _csv_rows(path: Path, required: list[str]) -> Iterator[Row]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        missing = [column for column in required if column not in header]
        if missing:
            raise SourceError(f"{path}: columns {missing} are missing (header has {header}); fix source.* in the project file")
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, None, f"unreadable CSV row: {exc}"
                continue
            if not fields:
                continue
            if len(fields) != len(header):
                yield reader.line_num, None, f"has {len(fields)} fields, the header has {len(header)}"
                continue
            if any("\udc80" <= ch <= "\udcff" for value in fields for ch in value):
                yield reader.line_num, None, "not valid UTF-8; re-save the file as UTF-8"
                continue
            yield reader.line_num, dict(zip(header, fields)), None


def _jsonl_rows(path: Path, required: list[str]) -> Iterator[Row]:
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, None, f"not valid JSON: {exc.msg}"
                continue
            if not isinstance(row, dict):
                yield number, None, "not a JSON object"
                continue
            yield number, row, None


def _parquet_rows(path: Path, required: list[str]) -> Iterator[Row]:
    table = pq.ParquetFile(path)
    missing = [column for column in required if column not in table.schema_arrow.names]
    if missing:
        raise SourceError(f"{path}: columns {missing} are missing; fix source.* in the project file")
    number = 0
    for batch in table.iter_batches(batch_size=50_000):
        for row in batch.to_pylist():
            number += 1
            yield number, row, None


READERS = {"csv": _csv_rows, "jsonl": _jsonl_rows, "parquet": _parquet_rows}


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def month_rows(project: Project, month: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Stream one month (YYYY-MM) from the files its source glob matches: ("item", row) or
    ("rejected", row) per source row, in file order, without holding the month in memory."""
    files = month_files(project, month)
    if not files:
        raise SourceError(
            f"no file matches {project.resolve(project.source.path.replace('{month}', month))} for {month}; "
            f"put the month's inbox file there or change source.path"
        )
    source = project.source
    required = [source.id_column, source.text_column, *source.metadata_columns]
    first_seen: dict[str, tuple[int, int]] = {}  # item id -> (file index, line): compact for a million ids
    for index, path in enumerate(files):
        for line, row, error in READERS[_format(project, path)](path, required):
            where = {"source_file": str(path), "source_line": line}
            if error is not None:
                yield "rejected", {**where, "item_id": None, "reason": error}
                continue
            item_id, text = _text(row.get(source.id_column)), _text(row.get(source.text_column))
            if not item_id:
                reason = f"missing {source.id_column}"
            elif not text:
                reason = f"empty {source.text_column}"
            elif item_id in first_seen:
                seen_file, seen_line = first_seen[item_id]
                reason = f"duplicate {source.id_column}: first seen at {files[seen_file].name}:{seen_line}"
            else:
                reason = None
            if reason:
                yield "rejected", {**where, "item_id": item_id or None, "reason": reason}
                continue
            first_seen[item_id] = (index, line)
            metadata = {column: row.get(column) for column in source.metadata_columns}
            yield "item", {
                **where,
                "item_id": item_id,
                "text": text,
                "metadata": json.dumps(metadata, default=str, sort_keys=True),
                "content_hash": content_hash(text),
            }


def read_month(project: Project, month: str) -> MonthRead:
    """All items of one month (YYYY-MM) in memory; month_rows streams them."""
    result = MonthRead(files=[str(path) for path in month_files(project, month)])
    for kind, row in month_rows(project, month):
        (result.items if kind == "item" else result.rejected).append(row)
    return result
