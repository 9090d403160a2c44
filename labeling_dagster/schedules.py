"""The monthly job and its schedule: on the first of each month, label the month that just ended."""

from __future__ import annotations

import dagster as dg

MONTHLY_JOB = "monthly_labeling"
LABEL_MODEL_JOB = "label_model_training"


def monthly_job() -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        MONTHLY_JOB,
        selection=dg.AssetSelection.groups("labeling"),
        description="Every monthly asset of the labeling pipeline, for one month or a range of months.",
    )


def monthly_schedule(job: dg.UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    # Stopped by default: a data engineer turns it on once the project's first months look right.
    return dg.build_schedule_from_partitioned_job(
        job, hour_of_day=2, default_status=dg.DefaultScheduleStatus.STOPPED
    )


def label_model_job() -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        LABEL_MODEL_JOB,
        selection=dg.AssetSelection.groups("models"),
        description="Reload the golden set and retrain the auto-labeler on every human-verified label to date.",
    )


def label_model_schedule(job: dg.UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    # An hour before the monthly run, so the month is auto-labeled by a model that learned from last
    # month's reviews. Stopped by default, like the monthly schedule.
    return dg.ScheduleDefinition(
        job=job, cron_schedule="0 1 1 * *", default_status=dg.DefaultScheduleStatus.STOPPED,
        execution_timezone="UTC",
    )
