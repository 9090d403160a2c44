"""The scale benchmark's inbox generator: every bad row it writes is rejected with a reason, every good
row becomes an item, in CSV and Parquet alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.generate_inbox import expected_rejections, generate
from labeling_dagster.core.sources import read_month
from labeling_dagster.project import load_project


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_generated_month_reads_back_exactly(tmp_path: Path, fmt: str) -> None:
    generate(3000, "2026-09", tmp_path, fmt=fmt, rows_per_file=1000)
    read = read_month(load_project(tmp_path), "2026-09")
    assert len(read.items) == 3000
    assert len(read.rejected) == expected_rejections(3000) > 0
    assert all(row["reason"] for row in read.rejected)
    assert len({item["item_id"] for item in read.items}) == 3000
