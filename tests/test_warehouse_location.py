"""Where the warehouse is: a DuckDB file or a postgresql:// URL. What needs no server is tested here;
a real PostgreSQL warehouse is tested in test_postgres_warehouse.py (run by `make deploy-check`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from labeling_dagster.cli import main
from labeling_dagster.definitions import build_definitions
from labeling_dagster.project import ProjectFileError, load_project
from labeling_dagster.resources.warehouse import Warehouse, WarehouseError, connect, is_postgres

SECRET = "s3cret-not-to-be-shown"


def set_warehouse(project: Path, location: str) -> None:
    yaml = project / "project.yaml"
    yaml.write_text(yaml.read_text() + f"warehouse: {location}\n")


def test_a_password_in_the_project_file_is_refused_without_showing_it(tiny_project: Path) -> None:
    set_warehouse(tiny_project, f"postgresql://labeling:{SECRET}@db.internal:5432/labels")
    with pytest.raises(ProjectFileError) as error:
        load_project(tiny_project)
    message = str(error.value)
    assert "warehouse:" in message and "PGPASSWORD" in message
    assert SECRET not in message


@pytest.mark.parametrize("location", [
    f"postgresql://labeling:{SECRET}@db.internal/labels",
    f"postgres://db.internal/labels?sslmode=require&password={SECRET}",
    f"POSTGRESQL://labeling:{SECRET}@db.internal/labels",  # any case: never taken for a file name
    f" postgresql://labeling:{SECRET}@db.internal/labels",
    f"postgresql+psycopg2://labeling:{SECRET}@db.internal/labels",  # SQLAlchemy's form
    f"postgresql://labeling@db.internal/labels?sslpassword={SECRET}",  # libpq's client-key passphrase
])
def test_a_password_given_to_a_command_is_refused_without_showing_it(tiny_project: Path, location: str) -> None:
    result = CliRunner().invoke(main, ["summary", "--project", str(tiny_project), "--month", "2026-08",
                                       "--warehouse", location])
    assert result.exit_code == 2
    assert "PGPASSWORD" in result.output and SECRET not in "".join(result.output.split())  # however it wraps
    with pytest.raises(WarehouseError):
        build_definitions(tiny_project, location)


def test_a_postgres_warehouse_keeps_shard_files_in_the_project_folder_unless_told(tiny_project: Path,
                                                                                  tmp_path: Path) -> None:
    url = "postgresql://labeling@db.internal:5432/labels"
    assert is_postgres(url) and not is_postgres(tmp_path / "w.duckdb")
    resource = build_definitions(tiny_project, url).resources["warehouse"]
    assert resource.database == url
    assert resource.shard_folder() == (tiny_project / "warehouse.shards").resolve()

    set_warehouse(tiny_project, url)
    yaml = tiny_project / "project.yaml"
    yaml.write_text(yaml.read_text() + "scale: {shard_folder: /shared/labeling-shards}\n")
    project = load_project(tiny_project)
    assert project.warehouse_location == url
    assert build_definitions(tiny_project).resources["warehouse"].shard_folder() == Path("/shared/labeling-shards")

    # A DuckDB file keeps its shard files beside it; a resource built by hand for PostgreSQL must be told.
    assert Warehouse(database=str(tmp_path / "w.duckdb")).shard_folder() == tmp_path / "w.duckdb.shards"
    with pytest.raises(WarehouseError, match="scale.shard_folder"):
        Warehouse(database=url).shard_folder()


def test_a_postgres_warehouse_that_cannot_be_opened_says_what_to_do() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once (no network needed).
    with pytest.raises(WarehouseError) as error:
        connect("postgresql://labeling@127.0.0.1:1/labels")
    message = str(error.value)
    if importlib.util.find_spec("duckdb_extension_postgres_scanner"):  # the warehouse-postgres extra
        assert "cannot open the PostgreSQL warehouse postgresql://labeling@127.0.0.1:1/labels" in message
        assert "PGPASSWORD" in message
    else:  # the default install: DuckDB cannot attach PostgreSQL without the extension
        assert "pip install -e '.[warehouse-postgres]'" in message


@pytest.mark.parametrize("location, problem", [
    ("postgresql+psycopg2://labeling@db.internal/labels", "no driver suffix"),
    ("s3://bucket/warehouse.duckdb", "neither a DuckDB file nor a PostgreSQL URL"),
    ("postgresql://[::1/labels", "not a valid URL"),
])
def test_a_location_that_is_not_a_file_nor_postgres_is_refused(tiny_project: Path, location: str, problem: str) -> None:
    result = CliRunner().invoke(main, ["summary", "--project", str(tiny_project), "--month", "2026-08",
                                       "--warehouse", location])
    assert result.exit_code == 2 and problem in " ".join(result.output.split())


def test_an_empty_password_and_any_scheme_case_are_postgres(tiny_project: Path) -> None:
    for location in ("postgresql://labeling:@db.internal/labels", "Postgres://labeling@db.internal/labels"):
        assert is_postgres(location)
        assert build_definitions(tiny_project, location).resources["warehouse"].database == location


def test_reading_a_file_that_holds_no_tables_says_so(tiny_project: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.duckdb"
    connect(empty).close()
    result = CliRunner().invoke(main, ["summary", "--project", str(tiny_project), "--month", "2026-08",
                                       "--warehouse", str(empty)])
    assert result.exit_code == 2 and "holds no labeling tables yet" in " ".join(result.output.split())
