"""`labeling review export|import|status`: the human-review loop from a terminal, doing what the
review_queue asset and the review sensor do in Dagster."""

from __future__ import annotations

import shutil
from pathlib import Path

import click
from rich.table import Table

from labeling_dagster.cli.common import (
    WAREHOUSE_OPTION,
    EXIT_RUN_FAILED,
    console,
    execute_month,
    fail,
    load,
    months_between,
    open_warehouse,
    run_problem,
    warehouse_location,
)
from labeling_dagster.core.review_formats import export_paths
from labeling_dagster.sensors import REVIEW_ASSETS

_project = click.option("--project", "project_path", required=True, type=click.Path(exists=True),
                        help="Project folder (with project.yaml) or the project file itself.")
_month = click.option("--month", required=True, help="The month, YYYY-MM.")


@click.group()
def review() -> None:
    """Export a month's review queue, import completed reviews, and see where review stands.

    Reviewers open the export in Label Studio, SageMaker Ground Truth or a spreadsheet; completed
    files go in <reviews_dir>/<YYYY-MM>/ (the review sensor ingests them when the Dagster daemon
    runs) or through `labeling review import`.
    """


def _warehouse_path(project, warehouse: str | None) -> str:
    return warehouse_location(project, warehouse, must_exist=True)


def _run(project_path: str, path: Path, month: str, selection: list[str]) -> None:
    problem = run_problem(month, execute_month(project_path, path, month, selection=selection))
    if problem:
        fail(problem, EXIT_RUN_FAILED)


@review.command("export")
@_project
@_month
@WAREHOUSE_OPTION
def export(project_path: str, month: str, warehouse: str | None) -> None:
    """Write the month's review queue files again (CSV, JSONL, Label Studio tasks and config, Ground
    Truth manifest and label categories, the list of answers a reviewer may give, with the taxonomy's
    none_label when it declares one) from the labels already in the warehouse; no model is called.
    Items people have settled are left out; the others say how many answers they have and how many
    more they need."""
    project = load(project_path)
    months_between(project, month, None)
    path = _warehouse_path(project, warehouse)
    _run(project_path, path, month, ["review_queue"])
    for kind, file in export_paths(project.exports_path, month).items():
        console().print(f"{kind:>22}: {file}")


@review.command("import")
@_project
@_month
@WAREHOUSE_OPTION
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def import_(project_path: str, month: str, warehouse: str | None, files: tuple[str, ...]) -> None:
    """Copy completed review FILES into <reviews_dir>/<month>/ and ingest them: the export (settled items
    leave it), human reviews, consensus, final labels and the ledger are updated. Bad rows are skipped
    and listed in <file>.rejected.csv."""
    project = load(project_path)
    months_between(project, month, None)
    path = _warehouse_path(project, warehouse)
    folder = project.reviews_path / month
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        source = Path(file).resolve()
        if source.parent != folder.resolve():
            shutil.copy2(source, folder / source.name)
    _run(project_path, path, month, REVIEW_ASSETS)
    _print_status(project, path, month)


@review.command("status")
@_project
@_month
@WAREHOUSE_OPTION
def status(project_path: str, month: str, warehouse: str | None) -> None:
    """How many queued items people have settled, which need another review, and each file's rejected rows."""
    project = load(project_path)
    _print_status(project, _warehouse_path(project, warehouse), month)


STATUS_SQL = """
    SELECT
      (SELECT COUNT(*) FROM review_queue WHERE month = $m) AS queued,
      (SELECT COUNT(*) FROM review_consensus WHERE month = $m) AS reviewed,
      (SELECT COUNT(*) FROM review_consensus WHERE month = $m AND settled) AS settled,
      (SELECT COUNT(*) FROM review_consensus WHERE month = $m AND needs_another_review) AS needs_another_review,
      (SELECT COUNT(*) FROM review_consensus WHERE month = $m AND tie) AS ties,
      (SELECT COUNT(*) FROM human_reviews WHERE month = $m) AS reviews,
      (SELECT COUNT(*) FROM final_labels WHERE month = $m AND status = 'pending_human') AS still_pending
"""


def _print_status(project, path: str, month: str) -> None:
    stamp = f"{month}-01"
    with open_warehouse(path) as conn:
        figures = conn.execute(STATUS_SQL, {"m": stamp}).df().iloc[0]
        files = conn.execute(
            "SELECT source_file, rows_ingested, rows_rejected, duplicate_of, rejection_report FROM review_imports "
            "WHERE month = $m ORDER BY source_file", {"m": stamp}).fetchall()
    out = console()
    table = Table(title=f"{project.name} {month}: human review", title_justify="left")
    table.add_column("")
    table.add_column("count", justify="right")
    for name, value in figures.items():
        table.add_row(name.replace("_", " "), str(int(value)))
    out.print(table)
    for source, ingested, rejected, duplicate, report in files:
        note = f"duplicate of {duplicate}, skipped" if duplicate else f"{ingested} rows ingested, {rejected} rejected"
        out.print(f"{source}: {note}" + (f" (see {report})" if report else ""))
