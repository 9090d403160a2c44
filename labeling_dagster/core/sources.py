"""Reading a month's inbox files into items, and every row that cannot be an item into a rejection.

Rows are never dropped or changed silently: each physical row of a source file becomes an item or a
rejected row naming the file, the line and the reason, and for every file `physical rows = items +
rejections` is checked (a mismatch is a bug of this module: AccountingError fails the run). A file's
physical rows are:

- CSV: the records after the header. A record is one line, or several when a quoted field holds line
  breaks; blank lines (only spaces, tabs, line breaks) between records are not rows. A record whose
  quoting is broken (text after a closing quote, or a quote that is never closed) has no trustworthy
  boundaries: each of its lines is a row, rejected on its own, so nothing it swallowed goes unreported.
- JSONL: the lines that are not blank.
- Parquet: the rows the file's metadata counts.

Ids and texts must be strings; an integer id (JSONL, Parquet) is taken as its decimal digits, as a CSV
would hold it. Memory stays bounded: files are streamed, and a row is held only up to
`source.max_row_chars`.
"""

from __future__ import annotations

import csv
import glob
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from labeling_dagster.core.labels import content_hash
from labeling_dagster.project import Project, Source


class SourceError(ValueError):
    """The month's source cannot be read at all (no file, a file of unknown format, not Parquet)."""


class AccountingError(RuntimeError):
    """A file's physical rows differ from its items + rejections: a bug here, never bad input."""


@dataclass
class FileTally:
    """What became of one source file's physical rows."""

    file: str
    format: str
    physical_rows: int = 0
    items: int = 0
    rejected: int = 0


@dataclass
class MonthRead:
    items: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    tallies: list[FileTally] = field(default_factory=list)

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


# Each reader yields (line number, row dict or None, error or None), one per physical row, and counts the
# file's physical rows in its FileTally as it finds them.
Row = tuple[int, dict[str, Any] | None, str | None]
Reader = Callable[[Path, Source, FileTally], Iterator[Row]]

_INVALID_UTF8 = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of bytes that are not UTF-8
_SURROGATE = re.compile("[\ud800-\udfff]")  # also what a JSON "\ud800" escape gives: not text a warehouse can hold


def _blank(line: str) -> bool:
    return not line.strip(" \t\r\n")


def _required(source: Source) -> list[str]:
    return list(dict.fromkeys([source.id_column, source.text_column, *source.metadata_columns]))


def _missing_columns(path: Path, missing: list[str], present: list[str], source: Source) -> str:
    settings = [
        "source.id_column" if column == source.id_column
        else "source.text_column" if column == source.text_column
        else "source.metadata_columns"
        for column in missing
    ]
    return (
        f"missing column {', '.join(map(repr, missing))} in {path.name}: the file's columns are {present}, so none "
        f"of its rows can be read; rename the column in the file, or set {' / '.join(dict.fromkeys(settings))} in "
        f"the project file, then rerun the month"
    )


# --- CSV ---------------------------------------------------------------------------------------------
# Python's csv module, when a field is over its field_size_limit, gives up in the middle of a record and
# starts the next one inside the field (rows made of a text's lines), and without strict mode it reads an
# unclosed quote to the end of the file as one field. So records are found here, with the states of the
# csv module's parser (default dialect), and split into fields by the same rules.

_FIELD_START, _UNQUOTED, _QUOTED, _CLOSED = range(4)  # _CLOSED: just after a quoted field's closing quote
_UNQUOTED_END = re.compile(r"[,\r\n]")
_QUOTED_FIELD = re.compile(r'"([^"]*+(?:""[^"]*+)*+)"')
_FIELD = r'(?:"[^"]*+(?:""[^"]*+)*+"|[^",\r\n][^,\r\n]*+|)'
_WELL_FORMED_LINE = re.compile(rf"{_FIELD}(?:,{_FIELD})*+(?:\r\n|\n|\r)?")  # a whole record on one line: the usual row


@dataclass
class _Scan:
    state: int = _FIELD_START
    opened_line: int = 0  # line of the quote that opened the current quoted field
    junk_line: int = 0  # first line where text follows a closing quote (0: none)


def _scan(scan: _Scan, piece: str, line: int) -> None:
    """Advance the parser over a piece of line `line`: the whole line with its line break, or a part of
    a line longer than the row limit. After a whole line the record ends unless the state is _QUOTED."""
    state = scan.state
    if '"' not in piece and state != _CLOSED:
        if state != _QUOTED:
            scan.state = _FIELD_START if piece[-1] in ",\r\n" else _UNQUOTED
        return
    i, n = 0, len(piece)
    while i < n:
        if state == _QUOTED:
            j = piece.find('"', i)
            if j < 0:
                break
            state, i = _CLOSED, j + 1
        elif state == _UNQUOTED:
            found = _UNQUOTED_END.search(piece, i)
            if found is None:
                break
            state, i = _FIELD_START, found.end()
            if found.group() != ",":
                break  # the line break ends the record
        else:
            char = piece[i]
            if char == '"':  # an opening quote, or after a closing one a doubled quote ("") inside the field
                if state == _FIELD_START:
                    scan.opened_line = line
                state = _QUOTED
            elif char == ",":
                state = _FIELD_START
            elif char in "\r\n":
                state = _FIELD_START
                break
            else:
                if state == _CLOSED and not scan.junk_line:
                    scan.junk_line = line
                state = _UNQUOTED
            i += 1
    scan.state = state


@dataclass
class _Record:
    first: int  # its first and last line
    last: int
    text: str | None  # None: longer than the row limit, not kept
    junk_line: int  # text after a closing quote on this line (0: none)
    unclosed_from: int  # the file ends inside a quoted field opened on this line (0: it does not)


def _line_pieces(handle, size: int) -> Iterator[tuple[str, bool]]:
    """The lines of a file opened with newline="", a line longer than `size` cut into pieces of `size`
    characters: (piece, whether it ends its line). A "\r\n" that a cut splits is put together again."""

    def read() -> tuple[str, bool]:
        text = handle.readline(size)
        return text, len(text) == size  # full: readline stopped at the size, maybe inside the line

    text, full = read()
    while text:
        following = None
        if full and text[-1] == "\r":
            following = read()
            if following[0][:1] == "\n":
                text += "\n"
                following = (following[0][1:], following[1]) if len(following[0]) > 1 else None
        yield text, not full or text[-1] in "\r\n"
        text, full = following if following is not None else read()


def _csv_records(handle, limit: int) -> Iterator[_Record]:
    """The file's records, blank lines between them skipped, each held up to `limit` characters."""
    line = 0
    parts: list[str] | None = None
    scan: _Scan | None = None
    first = size = 0
    whole = True
    for piece, whole in _line_pieces(handle, limit + 1):
        if scan is None:
            if whole and _blank(piece):
                line += 1
                continue
            if whole and len(piece) <= limit and _WELL_FORMED_LINE.fullmatch(piece):
                line += 1
                yield _Record(line, line, piece, 0, 0)
                continue
            scan, parts, first, size = _Scan(), [], line + 1, 0
        size += len(piece)
        if parts is not None and size > limit:
            parts = None
        elif parts is not None:
            parts.append(piece)
        _scan(scan, piece, line + 1)
        if not whole:
            continue
        line += 1
        if scan.state != _QUOTED:
            yield _Record(first, line, None if parts is None else "".join(parts), scan.junk_line, 0)
            scan = None
    if scan is not None:  # the file ends inside a record
        line += 0 if whole else 1
        unclosed = scan.opened_line if scan.state == _QUOTED else 0
        yield _Record(first, line, None if parts is None else "".join(parts), scan.junk_line, unclosed)


class _Parser:
    """Fields of well-formed records, by the csv module (which gets a whole record at a time, so a field
    over its field_size_limit costs it no more than that record), else by _fields."""

    def __init__(self) -> None:
        self.record: str | None = None
        self.reader = csv.reader(self)

    def __iter__(self) -> _Parser:
        return self

    def __next__(self) -> str:
        record, self.record = self.record, None
        if record is None:
            raise StopIteration
        return record

    def fields(self, record: str) -> list[str]:
        self.record = record
        try:
            return next(self.reader)
        except csv.Error:  # a field over csv.field_size_limit()
            self.record = None
            return _fields(record)


def _fields(record: str) -> list[str]:
    """The fields of a well-formed record (every closing quote followed by a comma or the line break)."""
    body = record[:-2] if record.endswith("\r\n") else record[:-1] if record[-1] in "\r\n" else record
    if '"' not in body:
        return body.split(",")
    fields: list[str] = []
    pos, n = 0, len(body)
    while True:
        if body.startswith('"', pos):
            quoted = _QUOTED_FIELD.match(body, pos)
            if quoted is None or (quoted.end() < n and body[quoted.end()] != ","):
                raise AssertionError(f"not a well-formed CSV record: {record[:200]!r}")
            fields.append(quoted.group(1).replace('""', '"'))
            pos = quoted.end()
        else:
            end = body.find(",", pos)
            end = n if end < 0 else end
            fields.append(body[pos:end])
            pos = end
        if pos >= n:
            return fields
        pos += 1  # the comma


def _broken_quoting(record: _Record, header: bool) -> str:
    """Why a record's quoting is broken, and what to do."""
    span = f"line {record.first}" if record.first == record.last else f"lines {record.first}–{record.last}"
    if record.unclosed_from:
        why = (
            f"the quote opened on line {record.unclosed_from} is never closed, so {span} (to the end of the file) "
            f"would be one field; close the quote (a quote inside a quoted field is doubled: \"\") and rerun the month"
        )
    else:
        why = (
            f"text follows a closing quote on line {record.junk_line}: a quote inside a quoted field must be doubled "
            f"(\"\"), or a quote opened earlier is not closed; fix the row ({span}) and rerun the month"
        )
    return f"broken CSV quoting: the header row is broken: {why}" if header else f"broken CSV quoting: {why}"


def _broken_rows(record: _Record, why: str, header: bool) -> Iterator[Row]:
    """Each line of a record whose quoting is broken, rejected (the header's own line is no row)."""
    for number in range(record.first + (1 if header else 0), record.last + 1):
        if number == record.first:
            yield number, None, why
        else:
            inside = f"line {number} is inside the broken row of line {record.first}"
            yield number, None, f"broken CSV quoting: {inside}: {why.removeprefix('broken CSV quoting: ')}"


def _csv_rows(path: Path, source: Source, tally: FileTally) -> Iterator[Row]:
    limit = source.max_row_chars
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        records, parser = _csv_records(handle, limit), _Parser()
        head = next(records, None)
        if head is None:
            return
        header: list[str] = []
        if head.junk_line or head.unclosed_from:
            header_problem = _broken_quoting(head, header=True)
            tally.physical_rows += head.last - head.first
            yield from _broken_rows(head, header_problem, header=True)
        elif head.text is None:
            header_problem = (
                f"row too long: the header row of {path.name} is over {limit:,} characters, more than "
                f"source.max_row_chars; fix the header or raise source.max_row_chars"
            )
        elif _INVALID_UTF8.search(head.text):
            header_problem = f"not valid UTF-8: the header row of {path.name} is not; re-save the file as UTF-8"
        else:
            header = parser.fields(head.text)
            missing = [column for column in _required(source) if column not in header]
            header_problem = _missing_columns(path, missing, header, source) if missing else None
        for record in records:
            if record.junk_line or record.unclosed_from:
                tally.physical_rows += record.last - record.first + 1
                yield from _broken_rows(record, _broken_quoting(record, header=False), header=False)
                continue
            tally.physical_rows += 1
            span = "" if record.first == record.last else f" (the row spans lines {record.first}–{record.last})"
            if record.text is None:
                yield record.first, None, (
                    f"row too long: over {limit:,} characters{span}, more than source.max_row_chars; shorten "
                    f"the row or raise source.max_row_chars"
                )
            elif header_problem:
                yield record.first, None, header_problem
            elif _INVALID_UTF8.search(record.text):
                yield record.first, None, f"not valid UTF-8{span}; re-save the file as UTF-8"
            else:
                fields = parser.fields(record.text)
                if len(fields) != len(header):
                    yield record.first, None, f"has {len(fields)} fields, the header has {len(header)}{span}"
                else:
                    yield record.first, dict(zip(header, fields)), None


# --- JSONL -------------------------------------------------------------------------------------------


def _jsonl_rows(path: Path, source: Source, tally: FileTally) -> Iterator[Row]:
    limit = source.max_row_chars
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as handle:
        number = 0
        while line := handle.readline(limit + 1):
            number += 1
            if len(line) > limit and not line.endswith("\n"):  # longer than the limit: skip the rest of it
                while (rest := handle.readline(limit + 1)) and not rest.endswith("\n"):
                    pass
                tally.physical_rows += 1
                yield number, None, (
                    f"line too long: over {limit:,} characters, more than source.max_row_chars; shorten the "
                    f"line or raise source.max_row_chars"
                )
                continue
            if _blank(line):
                continue
            tally.physical_rows += 1
            if _INVALID_UTF8.search(line):
                yield number, None, "not valid UTF-8; re-save the file as UTF-8"
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


# --- Parquet -----------------------------------------------------------------------------------------


def _parquet_rows(path: Path, source: Source, tally: FileTally) -> Iterator[Row]:
    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"{path}: not a readable Parquet file ({exc}); write it again or take it out of the inbox") from exc
    tally.physical_rows = total = table.metadata.num_rows
    required = _required(source)
    names = table.schema_arrow.names
    missing = [column for column in required if column not in names]
    if missing:
        reason = _missing_columns(path, missing, names, source)
        for number in range(1, total + 1):
            yield number, None, reason
        return
    number = 0
    for batch in table.iter_batches(batch_size=50_000, columns=required):
        for row in batch.to_pylist():
            number += 1
            yield number, row, None


READERS: dict[str, Reader] = {"csv": _csv_rows, "jsonl": _jsonl_rows, "parquet": _parquet_rows}


# --- items -------------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, list):
        return f"a list of {len(value)} values"
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    return f"a {type(value).__name__} value"


def _item_id(row: dict[str, Any], column: str) -> tuple[str | None, str | None]:
    """(id, None) or (None, why not). An integer id is read as its digits, as a CSV holds it."""
    if column not in row:
        return None, f"missing {column}: the row has no {column!r} field"
    value = row[column]
    if value is None:
        return None, f"missing {column}: it is null"
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None, f"{column} is not a string: it is {_kind(value)}; write the id as a string (or an integer)"
    item_id = str(value).strip()
    if not item_id:
        return None, f"missing {column}"
    if _SURROGATE.search(item_id):
        return None, f"{column} is not valid Unicode: it holds a lone surrogate; write the id as text"
    return item_id, None


def _item_text(row: dict[str, Any], column: str, limit: int) -> tuple[str | None, str | None]:
    """(text, None) or (None, why not): a string, trimmed, not empty, at most `limit` characters."""
    if column not in row:
        return None, f"missing {column}: the row has no {column!r} field"
    value = row[column]
    if value is None:
        return None, f"empty {column}: it is null"
    if not isinstance(value, str):
        return None, f"{column} is not a string: it is {_kind(value)}; only text is labeled, write it as a string"
    text = value.strip()
    if not text:
        return None, f"empty {column}"
    if len(text) > limit:
        return None, (
            f"{column} too long: {len(text):,} characters, over source.max_text_chars ({limit:,}); shorten or "
            f"split the item, or raise source.max_text_chars"
        )
    if _SURROGATE.search(text):
        return None, f"{column} is not valid Unicode: it holds a lone surrogate (a JSON \\ud800-\\udfff escape); write it as text"
    return text, None


def month_rows(
    project: Project, month: str, tallies: list[FileTally] | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Stream one month (YYYY-MM) from the files its source glob matches: ("item", row) or
    ("rejected", row) per physical source row, in file order, without holding the month in memory.
    Each file's FileTally is appended to `tallies` once the file is read and its accounting checked."""
    files = month_files(project, month)
    if not files:
        raise SourceError(
            f"no file matches {project.resolve(project.source.path.replace('{month}', month))} for {month}; "
            f"put the month's inbox file there or change source.path"
        )
    source = project.source
    formats = [_format(project, path) for path in files]  # an unknown format stops the month before any row
    first_seen: dict[str, tuple[int, int]] = {}  # item id -> (file index, line): compact for a million ids
    for index, (path, fmt) in enumerate(zip(files, formats)):
        tally = FileTally(str(path), fmt)
        for line, row, error in READERS[fmt](path, source, tally):
            where = {"source_file": str(path), "source_line": line}
            if error is not None:
                tally.rejected += 1
                yield "rejected", {**where, "item_id": None, "reason": error}
                continue
            item_id, reason = _item_id(row, source.id_column)
            text = None
            if reason is None:
                text, reason = _item_text(row, source.text_column, source.max_text_chars)
            if reason is None and item_id in first_seen:
                seen_file, seen_line = first_seen[item_id]
                reason = f"duplicate {source.id_column}: first seen at {files[seen_file].name}:{seen_line}"
            if reason is not None:
                tally.rejected += 1
                yield "rejected", {**where, "item_id": item_id, "reason": reason}
                continue
            first_seen[item_id] = (index, line)
            metadata = {column: row.get(column) for column in source.metadata_columns}
            tally.items += 1
            yield "item", {
                **where,
                "item_id": item_id,
                "text": text,
                "metadata": json.dumps(metadata, default=str, sort_keys=True),
                "content_hash": content_hash(text),
            }
        if tally.items + tally.rejected != tally.physical_rows:
            raise AccountingError(
                f"{path}: {tally.physical_rows} physical rows, but {tally.items} items + {tally.rejected} rejected "
                f"rows were made of them; this is a bug in labeling_dagster.core.sources, report it with the file"
            )
        if tallies is not None:
            tallies.append(tally)


def read_month(project: Project, month: str) -> MonthRead:
    """All items of one month (YYYY-MM) in memory; month_rows streams them."""
    result = MonthRead(files=[str(path) for path in month_files(project, month)])
    for kind, row in month_rows(project, month, result.tallies):
        (result.items if kind == "item" else result.rejected).append(row)
    return result
