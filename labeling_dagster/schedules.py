"""The monthly job and its schedule: on the first of each month, label the month that just ended."""

from __future__ import annotations

import dagster as dg

from labeling_dagster.project import Project

MONTHLY_JOB = "monthly_labeling"
LABEL_MODEL_JOB = "label_model_training"


def provider_pools(project: Project) -> dict[str, str]:
    """Run tags naming the provider accounts a month calls, so the run queue can cap how many runs share
    one account's rate limits (deploy/*/dagster.yaml: tag_concurrency_limits on labeling_pool/<pool>)."""
    pools = set()
    for tier in project.tiers:
        if tier.provider == "local":
            continue
        compatible = tier.provider == "openai" and "base_url" in tier.options
        pools.add("openai_compatible" if compatible else tier.provider)
    return {f"labeling_pool/{pool}": "1" for pool in sorted(pools)}


def monthly_job(project: Project) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        MONTHLY_JOB,
        selection=dg.AssetSelection.groups("labeling"),
        tags=provider_pools(project),
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
