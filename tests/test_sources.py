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
    assert read.rows_read == 13 + 2 + 2


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
    with pytest.raises(SourceError, match=r"2026-08.csv: columns \['body'\] are missing"):
        read_month(project, "2026-08")
