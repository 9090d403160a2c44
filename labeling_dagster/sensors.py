"""The review sensor: a completed review file dropped in `<reviews_dir>/<YYYY-MM>/` updates that
month's review queue export (items people settled leave it; the others show their answers so far),
human reviews, final labels and ledger. Each file content is one run (run key = month, file
name and content hash), so the same file is never ingested twice and an edited file is ingested again."""

import re

import dagster as dg

from labeling_dagster.core.review_formats import review_files, run_key
from labeling_dagster.project import Project
from labeling_dagster.resources.project import ProjectResource

REVIEW_ASSETS = ["review_queue", "human_reviews", "final_labels", "cost_ledger"]
MONTH_FOLDER = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def pending_review_runs(project: Project, partitions: dg.PartitionsDefinition) -> tuple[list[dg.RunRequest], list[str]]:
    """Run requests for every review file, and notes on folders or files that cannot be used. Never raises
    on a bad file: reading its rows is the asset's job, which reports bad rows beside the file."""
    requests, notes = [], []
    root = project.reviews_path
    if not root.is_dir():
        return [], [f"{root} does not exist yet"]
    keys = set(partitions.get_partition_keys())
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        if not MONTH_FOLDER.match(folder.name):
            notes.append(f"{folder}: not a YYYY-MM folder, skipped")
            continue
        partition = f"{folder.name}-01"
        if partition not in keys:
            notes.append(f"{folder}: {folder.name} is not a month of this project (yet), skipped")
            continue
        for path in review_files(folder):
            try:
                key = f"{folder.name}/{run_key(path)}"
            except OSError as exc:
                notes.append(f"{path}: cannot be read ({exc}), skipped")
                continue
            requests.append(dg.RunRequest(run_key=key, partition_key=partition, asset_selection=[dg.AssetKey(a) for a in REVIEW_ASSETS]))
    return requests, notes


def review_sensor(partitions: dg.PartitionsDefinition) -> dg.SensorDefinition:
    @dg.sensor(
        name="review_files_sensor",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=REVIEW_ASSETS,
        description="Ingests completed review files from <reviews_dir>/<YYYY-MM>/ (Label Studio JSON export, "
        "Ground Truth output manifest, CSV), once per file content.",
    )
    def review_files_sensor(context: dg.SensorEvaluationContext, project: ProjectResource) -> dg.SensorResult:
        requests, notes = pending_review_runs(project.load(), partitions)
        for note in notes:
            context.log.info(note)
        return dg.SensorResult(run_requests=requests, skip_reason=None if requests else "no review files yet")

    return review_files_sensor
