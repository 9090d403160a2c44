"""Reading inbox files: every row becomes an item or a rejected row with file, line and reason."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from labeling_dagster.core.sources import SourceError, read_month
from labeling_dagster.project import load_project


def test_csv_rows_and_rejections(tiny_project: Path) -> None:
    read = read_month(load_project(tiny_project), "2026-08")
    assert len(read.items) == 13
    reasons = {row["reason"].split(":")[0] for row in read.rejected}
    assert reasons == {"empty body", "duplicate id"}
    duplicate = next(row for row in read.rejected if row["reason"].startswith("duplicate"))
    assert duplicate["item_id"] == "2026-08-billing-0"
    assert duplicate["reason"] == "duplicate id: first seen at 2026-08.csv:2"
    assert duplicate["source_line"] == 16
    assert json.loads(read.items[0]["metadata"]) == {"channel": "email", "tier": "standard"}


def test_broken_csv_row_is_rejected_not_dropped(tiny_project: Path) -> None:
    path = tiny_project / "inbox" / "2026-08.csv"
    path.write_text(path.read_text() + "x1,too,many,fields,here\n" + 'x2,"never closed\n')
    read = read_month(load_project(tiny_project), "2026-08")
    by_line = {row["source_line"]: row["reason"] for row in read.rejected}
    assert by_line[17] == "has 5 fields, the header has 4"
    assert by_line[18].startswith("broken CSV quoting: the quote opened on line 18 is never closed")
    assert read.rows_read == 13 + 2 + 2
    assert [(t.physical_rows, t.items, t.rejected) for t in read.tallies] == [(17, 13, 4)]


def test_jsonl_and_parquet(tiny_project: Path) -> None:
    yaml = tiny_project / "project.yaml"
    yaml.write_text(yaml.read_text().replace('inbox/{month}*.csv', 'inbox/{month}*.*'))
    (tiny_project / "inbox" / "2026-08.csv").unlink()
    (tiny_project / "inbox" / "2026-08.jsonl").write_text(
        '{"id": "a", "body": "cancel please", "channel": "x", "tier": "y"}\nnot json\n[1]\n{"id": "b", "body": "  "}\n'
    )
    pd.DataFrame({"id": ["c"], "body": ["lost card"], "channel": ["x"], "tier": ["y"]}).to_parquet(
        tiny_project / "inbox" / "2026-08-extra.parquet"
    )
    read = read_month(load_project(tiny_project), "2026-08")
    assert sorted(item["item_id"] for item in read.items) == ["a", "c"]
    assert sorted(row["reason"].split(":")[0] for row in read.rejected) == ["empty body", "not a JSON object", "not valid JSON"]


def test_missing_file_and_missing_column(tiny_project: Path) -> None:
    project = load_project(tiny_project)
    with pytest.raises(SourceError, match="no file matches .*2026-11.*put the month's inbox file there"):
        read_month(project, "2026-11")
    path = tiny_project / "inbox" / "2026-08.csv"
    path.write_text(path.read_text().replace("body", "content", 1))
    read = read_month(project, "2026-08")  # the file's rows are rejected, the month is not stopped
    assert read.items == [] and len(read.rejected) == 15
    assert {row["reason"].split(":")[0] for row in read.rejected} == {"missing column 'body' in 2026-08.csv"}
    (tiny_project / "inbox" / "2026-08.txt").write_text("id,body\n")
    yaml = tiny_project / "project.yaml"
    yaml.write_text(yaml.read_text().replace('inbox/{month}*.csv', 'inbox/{month}*.*'))
    with pytest.raises(SourceError, match=r"2026-08.txt: cannot tell the format from '.txt'; set source.format"):
        read_month(load_project(tiny_project), "2026-08")


# --- issue 12, defect 6: bad files -------------------------------------------------------------------

HEADER = "id,body,channel,tier\n"


def _month(tiny_project: Path, *, glob: str = "inbox/{month}*.*", source_yaml: str = "") -> Path:
    """The tiny project reading every file of inbox/ for its month, with no file there yet."""
    yaml = tiny_project / "project.yaml"
    text = yaml.read_text().replace('"inbox/{month}*.csv"', f'"{glob}"')
    if source_yaml:
        text = text.replace("  start_month:", f"  {source_yaml}\n  start_month:", 1)
    yaml.write_text(text)
    for path in (tiny_project / "inbox").iterdir():
        path.unlink()
    return tiny_project / "inbox"


def _good_rows(prefix: str, count: int) -> str:
    return "".join(f"{prefix}-{n},lost my card {n},email,standard\n" for n in range(count))


def _read(tiny_project: Path):
    read = read_month(load_project(tiny_project), "2026-08")
    for tally in read.tallies:  # the rule, on every read of these tests
        assert tally.items + tally.rejected == tally.physical_rows
    return read


def _by_line(read) -> dict[int, str]:
    return {row["source_line"]: row["reason"] for row in read.rejected}


def test_invalid_utf8_byte_rejects_only_its_jsonl_line(tiny_project: Path) -> None:
    inbox = _month(tiny_project)
    (inbox / "2026-08.jsonl").write_bytes(
        b'{"id": "a", "body": "cancel please"}\n'
        b'{"id": "b", "body": "caf\xe9 card lost"}\n'  # Latin-1, not UTF-8
        b'{"id": "c", "body": "lost card"}\n'
        b'{"id": "d", "body": "lone \\ud800 surrogate"}\n'  # valid JSON, but not text a warehouse can hold
    )
    read = _read(tiny_project)
    assert [item["item_id"] for item in read.items] == ["a", "c"]
    assert _by_line(read) == {
        2: "not valid UTF-8; re-save the file as UTF-8",
        4: "body is not valid Unicode: it holds a lone surrogate (a JSON \\ud800-\\udfff escape); write it as text",
    }


def test_utf8_bom_does_not_hide_the_id_column(tiny_project: Path) -> None:
    inbox = _month(tiny_project)
    (inbox / "2026-08.csv").write_bytes(b"\xef\xbb\xbf" + (HEADER + _good_rows("csv", 2)).encode())  # Excel's CSV UTF-8
    (inbox / "2026-08.jsonl").write_bytes(b'\xef\xbb\xbf{"id": "j-0", "body": "stop my plan"}\n')
    read = _read(tiny_project)
    assert [item["item_id"] for item in read.items] == ["csv-0", "csv-1", "j-0"]
    assert read.rejected == []
    assert [(t.format, t.physical_rows) for t in read.tallies] == [("csv", 2), ("jsonl", 1)]


def test_csv_field_over_the_csv_modules_limit_rejects_that_row_only(tiny_project: Path) -> None:
    import csv
    import io

    inbox = _month(tiny_project)
    # a long text whose lines look like rows: csv.reader gave up inside it and made items of them
    text = "".join(f"fake-{n},quoted line {n},chat,vip\n" for n in range(8000))
    assert len(text) > csv.field_size_limit()
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["id", "body", "channel", "tier"])
    writer.writerow(["first", "lost card", "email", "standard"])
    writer.writerow(["long", text, "email", "standard"])
    for n in range(5):
        writer.writerow([f"after-{n}", "cancel my plan", "email", "standard"])
    (inbox / "2026-08.csv").write_text(buffer.getvalue(), newline="")
    read = _read(tiny_project)
    assert [item["item_id"] for item in read.items] == ["first"] + [f"after-{n}" for n in range(5)]
    assert len(read.rejected) == 1
    assert read.rejected[0]["item_id"] == "long" and read.rejected[0]["source_line"] == 3
    assert read.rejected[0]["reason"].startswith(
        f"body too long: {len(text.strip()):,} characters, over source.max_text_chars (100,000)"
    )
    assert [item["source_line"] for item in read.items] == [2] + [8004 + n for n in range(5)]  # the text: lines 3-8003
    assert read.tallies[0].physical_rows == 7


def test_csv_row_over_max_row_chars_is_rejected_unread_and_the_rest_read(tiny_project: Path) -> None:
    inbox = _month(tiny_project, source_yaml="max_text_chars: 100\n  max_row_chars: 1000")
    lines = 'big,"' + "x,\n" * 2000 + '",email,standard\n'  # 6,000 characters over 2,001 lines
    (inbox / "2026-08.csv").write_text(HEADER + _good_rows("a", 1) + lines + _good_rows("b", 2) + "c," + "y" * 2000 + ",chat,vip\n")
    read = _read(tiny_project)
    assert [item["item_id"] for item in read.items] == ["a-0", "b-0", "b-1"]
    assert _by_line(read) == {
        3: "row too long: over 1,000 characters (the row spans lines 3–2003), more than source.max_row_chars; "
           "shorten the row or raise source.max_row_chars",
        2006: "row too long: over 1,000 characters, more than source.max_row_chars; shorten the row or raise "
              "source.max_row_chars",
    }


def test_unclosed_quote_rejects_every_line_it_swallows(tiny_project: Path) -> None:
    inbox = _month(tiny_project)
    (inbox / "2026-08.csv").write_text(HEADER + _good_rows("a", 2) + 'x2,"never closed,chat,standard\n' + _good_rows("b", 3))
    read = _read(tiny_project)
    assert [item["item_id"] for item in read.items] == ["a-0", "a-1"]
    by_line = _by_line(read)
    assert sorted(by_line) == [4, 5, 6, 7]  # the broken row and each row after it: none lost without a reason
    assert by_line[4] == (
        'broken CSV quoting: the quote opened on line 4 is never closed, so lines 4–7 (to the end of the file) '
        'would be one field; close the quote (a quote inside a quoted field is doubled: "") and rerun the month'
    )
    assert by_line[6].startswith("broken CSV quoting: line 6 is inside the broken row of line 4: the quote opened on line 4")
    assert read.tallies[0].physical_rows == 6  # 2 rows, then 4 lines that are no trustworthy rows


def test_quote_closed_by_a_later_rows_quote_rejects_the_lines_between(tiny_project: Path) -> None:
    inbox = _month(tiny_project)
    (inbox / "2026-08.csv").write_text(
        HEADER
        + 'x2,"never closed,chat,standard\n'  # its quote is taken as closed by the next row's opening quote
        + 'x3,"hello, world",email,standard\n'
        + _good_rows("b", 1)
        + 'x5,"my 5" screen",email,standard\n'  # csv would read 'my 5 screen"': a silent change
        + 'x6,"a ""quoted"" word, and a\nsecond line",email,standard\n'  # well-formed: one item over two lines
    )
    read = _read(tiny_project)
    assert [(item["item_id"], item["source_line"]) for item in read.items] == [("b-0", 4), ("x6", 6)]
    assert read.items[1]["text"] == 'a "quoted" word, and a\nsecond line'
    by_line = _by_line(read)
    assert sorted(by_line) == [2, 3, 5]
    assert by_line[2].startswith("broken CSV quoting: text follows a closing quote on line 3")
    assert by_line[3].startswith("broken CSV quoting: line 3 is inside the broken row of line 2")
    assert by_line[5].startswith("broken CSV quoting: text follows a closing quote on line 5")
    assert read.tallies[0].physical_rows == 5  # lines 2 and 3, then the rows of lines 4, 5 and 6-7


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"id": "n", "body": 42}', "body is not a string: it is a number (42); only text is labeled, write it as a string"),
        ('{"id": "f", "body": 1.5}', "body is not a string: it is a number (1.5); only text is labeled, write it as a string"),
        ('{"id": "l", "body": ["lost", "card"]}', "body is not a string: it is a list of 2 values; only text is labeled, write it as a string"),
        ('{"id": "o", "body": {"text": "lost card"}}', "body is not a string: it is an object with 1 keys; only text is labeled, write it as a string"),
        ('{"id": "b", "body": true}', "body is not a string: it is a boolean (true); only text is labeled, write it as a string"),
        ('{"id": "z", "body": null}', "empty body: it is null"),
        ('{"id": "m"}', "missing body: the row has no 'body' field"),
        ('{"id": 1.5, "body": "lost card"}', "id is not a string: it is a number (1.5); write the id as a string (or an integer)"),
        ('{"id": ["a"], "body": "lost card"}', "id is not a string: it is a list of 1 values; write the id as a string (or an integer)"),
        ('{"id": false, "body": "lost card"}', "id is not a string: it is a boolean (false); write the id as a string (or an integer)"),
        ('{"id": null, "body": "lost card"}', "missing id: it is null"),
    ],
)
def test_jsonl_values_that_are_not_strings_are_rejected(tiny_project: Path, line: str, reason: str) -> None:
    inbox = _month(tiny_project)
    (inbox / "2026-08.jsonl").write_text('{"id": 7, "body": "cancel please"}\n' + line + "\n")
    read = _read(tiny_project)
    assert [item["item_id"] for item in read.items] == ["7"]  # an integer id is its digits, as in a CSV
    assert [(row["source_line"], row["reason"]) for row in read.rejected] == [(2, reason)]


def test_parquet_values_that_are_not_strings_are_rejected(tiny_project: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    inbox = _month(tiny_project)
    pq.write_table(pa.table({"id": [1, 2], "body": [10, 20], "channel": ["x", "x"], "tier": ["y", "y"]}), inbox / "2026-08-a.parquet")
    pq.write_table(
        pa.table({"id": ["l", "s", "n"], "body": [["lost"], ["cancel my plan"], None], "channel": ["x"] * 3, "tier": ["y"] * 3}),
        inbox / "2026-08-b.parquet",
    )
    pq.write_table(pa.table({"id": [3, None], "body": ["lost card", "stop"], "channel": ["x"] * 2, "tier": ["y"] * 2}), inbox / "2026-08-c.parquet")
    read = _read(tiny_project)
    assert [item["item_id"] for item in read.items] == ["3"]
    assert [(Path(row["source_file"]).name, row["source_line"], row["reason"]) for row in read.rejected] == [
        ("2026-08-a.parquet", 1, "body is not a string: it is a number (10); only text is labeled, write it as a string"),
        ("2026-08-a.parquet", 2, "body is not a string: it is a number (20); only text is labeled, write it as a string"),
        ("2026-08-b.parquet", 1, "body is not a string: it is a list of 1 values; only text is labeled, write it as a string"),
        ("2026-08-b.parquet", 2, "body is not a string: it is a list of 1 values; only text is labeled, write it as a string"),
        ("2026-08-b.parquet", 3, "empty body: it is null"),
        ("2026-08-c.parquet", 2, "missing id: it is null"),
    ]
    assert [t.physical_rows for t in read.tallies] == [2, 3, 2]


def test_text_over_max_text_chars_is_rejected(tiny_project: Path) -> None:
    inbox = _month(tiny_project, source_yaml="max_text_chars: 20")
    (inbox / "2026-08.csv").write_text(HEADER + "ok,  " + "a" * 20 + "  ,email,standard\n" + "long," + "b" * 21 + ",email,standard\n")
    (inbox / "2026-08.jsonl").write_text(json.dumps({"id": "j", "body": "c" * 21}) + "\n")
    read = _read(tiny_project)
    assert [item["item_id"] for item in read.items] == ["ok"]  # 20 characters once trimmed
    reason = "body too long: 21 characters, over source.max_text_chars (20); shorten or split the item, or raise source.max_text_chars"
    assert [(row["item_id"], row["reason"]) for row in read.rejected] == [("long", reason), ("j", reason)]


def test_max_text_chars_defaults_and_must_fit_in_a_row(tiny_project: Path) -> None:
    from labeling_dagster.project import ProjectFileError

    assert load_project(tiny_project).source.max_text_chars == 100_000
    assert load_project(tiny_project).source.max_row_chars == 1_000_000
    _month(tiny_project, source_yaml="max_text_chars: 2000\n  max_row_chars: 1000")
    with pytest.raises(ProjectFileError, match=r"max_row_chars \(1000\) must be at least max_text_chars \(2000\)"):
        load_project(tiny_project)


def test_jsonl_line_over_max_row_chars_is_rejected_and_the_next_read(tiny_project: Path) -> None:
    inbox = _month(tiny_project, source_yaml="max_text_chars: 100\n  max_row_chars: 1000")
    (inbox / "2026-08.jsonl").write_text(
        json.dumps({"id": "big", "body": "x" * 5000}) + "\n\n" + json.dumps({"id": "next", "body": "lost card"}) + "\n"
    )
    read = _read(tiny_project)
    assert [(item["item_id"], item["source_line"]) for item in read.items] == [("next", 3)]
    assert _by_line(read) == {
        1: "line too long: over 1,000 characters, more than source.max_row_chars; shorten the line or raise source.max_row_chars"
    }
    assert read.tallies[0].physical_rows == 2  # the blank line is no row


def test_a_file_without_the_text_column_is_rejected_and_the_others_read(tiny_project: Path) -> None:
    import pandas as pd

    path = tiny_project / "inbox" / "2026-08.csv"
    (tiny_project / "inbox" / "2026-08-late.csv").write_text("id,content,channel,tier\n" + _good_rows("late", 3))
    pd.DataFrame({"id": ["p"], "channel": ["x"], "tier": ["y"]}).to_parquet(tiny_project / "inbox" / "2026-08-p.parquet")
    yaml = tiny_project / "project.yaml"
    yaml.write_text(yaml.read_text().replace('inbox/{month}*.csv', 'inbox/{month}*.*'))
    read = _read(tiny_project)
    assert len(read.items) == 13 and all(Path(item["source_file"]) == path for item in read.items)
    late = [row for row in read.rejected if row["source_file"].endswith("late.csv")]
    assert [row["source_line"] for row in late] == [2, 3, 4]
    assert late[0]["reason"] == (
        "missing column 'body' in 2026-08-late.csv: the file's columns are ['id', 'content', 'channel', 'tier'], so "
        "none of its rows can be read; rename the column in the file, or set source.text_column in the project file, "
        "then rerun the month"
    )
    parquet = [row for row in read.rejected if row["source_file"].endswith(".parquet")]
    assert [row["reason"].split(":")[0] for row in parquet] == ["missing column 'body' in 2026-08-p.parquet"]
    assert [(Path(t.file).name, t.physical_rows, t.items, t.rejected) for t in read.tallies] == [
        ("2026-08-late.csv", 3, 0, 3), ("2026-08-p.parquet", 1, 0, 1), ("2026-08.csv", 15, 13, 2)
    ]


def test_accounting_mismatch_fails_loudly(tiny_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labeling_dagster.core import sources

    real = sources.READERS["csv"]

    def loses_a_row(path, source, tally):
        rows = list(real(path, source, tally))
        yield from rows[:-1]

    monkeypatch.setitem(sources.READERS, "csv", loses_a_row)
    with pytest.raises(sources.AccountingError, match=r"2026-08.csv: 15 physical rows, but 13 items \+ 1 rejected"):
        read_month(load_project(tiny_project), "2026-08")


def test_csv_records_match_the_csv_module() -> None:
    """Random texts over the characters that matter: record boundaries and fields as Python's csv module
    reads them; broken quoting flagged exactly where its strict mode fails; any row limit, same boundaries."""
    import csv
    import io
    import random

    from labeling_dagster.core.sources import _csv_records, _fields, _Parser

    def strict_error(record: str) -> str | None:
        try:
            list(csv.reader(io.StringIO(record, newline=""), strict=True))
        except csv.Error as exc:
            return str(exc)
        return None

    rng, parser = random.Random(12), _Parser()
    alphabet = ["a", "b", ",", '"', '"', "\n", "\r\n", "\r", "é"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        reader, spans, rows = csv.reader(io.StringIO(text, newline="")), [], []
        for row in reader:
            spans.append(reader.line_num)
            rows.append(row)
        expected = [(before + 1, last, row) for before, last, row in zip([0, *spans], spans, rows) if row]
        for limit in (10_000, 3):
            records = list(_csv_records(io.StringIO(text, newline=""), limit))
            assert [(r.first, r.last) for r in records] == [(first, last) for first, last, _ in expected], text
            for record, (_, _, row) in zip(records, expected):
                if record.text is None:
                    assert limit == 3
                    continue
                error = strict_error(record.text)
                if record.junk_line:
                    assert error and "expected after" in error, text
                elif record.unclosed_from:
                    assert error == "unexpected end of data", text
                else:
                    assert error is None and parser.fields(record.text) == row == _fields(record.text), text


def test_raw_items_writes_rejections_and_counts_per_file(tiny_project: Path, tmp_path: Path) -> None:
    import dagster as dg

    from labeling_dagster.definitions import build_definitions
    from labeling_dagster.resources.warehouse import connect

    (tiny_project / "inbox" / "2026-08-b.csv").write_bytes((HEADER + "b-0,ok,email,standard\n").encode() + b"b-1,caf\xe9,email,standard\n")
    warehouse = tmp_path / "warehouse.duckdb"
    defs = build_definitions(tiny_project, warehouse)
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), partition_key="2026-08-01", asset_selection=[dg.AssetKey("raw_items")]
    )
    assert result.success
    (materialization,) = result.asset_materializations_for_node("raw_items")
    metadata = materialization.metadata
    assert (metadata["items"].value, metadata["rejected"].value, metadata["physical_rows"].value) == (14, 3, 17)
    assert metadata["rows_by_file_json"].value == [
        {"file": str(tiny_project / "inbox" / "2026-08-b.csv"), "format": "csv", "physical_rows": 2, "items": 1, "rejected": 1},
        {"file": str(tiny_project / "inbox" / "2026-08.csv"), "format": "csv", "physical_rows": 15, "items": 13, "rejected": 2},
    ]
    assert "| 2026-08-b.csv | csv | 2 | 1 | 1 |" in metadata["rows_by_file"].value
    with connect(warehouse, read_only=True) as conn:
        rows = conn.execute("SELECT source_line, reason FROM rejected_items WHERE source_file LIKE '%b.csv'").fetchall()
    assert rows == [(3, "not valid UTF-8; re-save the file as UTF-8")]


def test_a_broken_header_rejects_the_rows_it_swallowed_and_the_rest(tiny_project: Path) -> None:
    inbox = _month(tiny_project)
    (inbox / "2026-08.csv").write_text('id,"body,channel,tier\n' + _good_rows("a", 2))
    read = _read(tiny_project)
    assert read.items == [] and sorted(_by_line(read)) == [2, 3]
    assert _by_line(read)[2].startswith(
        "broken CSV quoting: line 2 is inside the broken row of line 1: the header row is broken: the quote opened on line 1"
    )
    (inbox / "2026-08.csv").write_text('id,"body"x,channel,tier\n' + _good_rows("a", 2))
    read = _read(tiny_project)
    assert read.items == [] and sorted(_by_line(read)) == [2, 3]
    assert set(_by_line(read).values()) == {
        "broken CSV quoting: the header row is broken: text follows a closing quote on line 1: a quote inside a quoted "
        'field must be doubled (""), or a quote opened earlier is not closed; fix the row (line 1) and rerun the month'
    }


def test_an_unreadable_parquet_file_stops_the_month_naming_it(tiny_project: Path) -> None:
    inbox = _month(tiny_project)
    (inbox / "2026-08.parquet").write_text("id,body\n")
    with pytest.raises(SourceError, match=r"2026-08.parquet: not a readable Parquet file .*take it out of the inbox"):
        read_month(load_project(tiny_project), "2026-08")


def test_a_header_that_is_not_utf8_rejects_the_files_rows(tiny_project: Path) -> None:
    inbox = _month(tiny_project)
    (inbox / "2026-08.csv").write_bytes(b"id,b\xf6dy,channel,tier\n" + _good_rows("a", 2).encode())
    read = _read(tiny_project)
    assert read.items == []
    assert set(_by_line(read).values()) == {"not valid UTF-8: the header row of 2026-08.csv is not; re-save the file as UTF-8"}
