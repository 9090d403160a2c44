"""The one Definitions object: the monthly assets of the project named by LABELING_PROJECT
(default: the bundled example), their resources, checks, job and schedule."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from labeling_dagster.assets import build_assets
from labeling_dagster.assets.common import WRITER_TAG, monthly_partitions
from labeling_dagster.project import Project, load_project
from labeling_dagster.resources.anthropic_provider import AnthropicProvider
from labeling_dagster.resources.local_model import LocalModelProvider
from labeling_dagster.resources.openai_provider import OpenAIProvider
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import Warehouse, check_location
from labeling_dagster.schedules import (
    label_model_job,
    label_model_schedule,
    monthly_job,
    monthly_schedule,
)
from labeling_dagster.sensors import review_sensor

EXAMPLE_PROJECT = Path(__file__).resolve().parent.parent / "examples" / "support_tickets"


def _key(variable: str) -> dg.EnvVar | None:
    """A key is read from the environment at run time (dg.EnvVar), never stored; a project without
    paid tiers needs none, and a paid tier without its key fails before any call, naming the variable."""
    return dg.EnvVar(variable) if os.environ.get(variable) else None


def check_paid_tiers(project: Project) -> None:
    """Raise ProviderConfigError, naming the variable, if a paid tier cannot be called (no key)."""
    for tier in project.tiers:
        if tier.provider == "openai":
            OpenAIProvider(api_key=os.environ.get("OPENAI_API_KEY"), base_url=os.environ.get("OPENAI_BASE_URL")).check_ready(tier)
        elif tier.provider == "anthropic":
            AnthropicProvider(
                api_key=os.environ.get("ANTHROPIC_API_KEY"), base_url=os.environ.get("ANTHROPIC_BASE_URL")
            ).check_ready(tier)


def project_executor(project: Project) -> dg.ExecutorDefinition:
    """In process by default: DuckDB allows one writer, so the steps of a run go one after another.
    With scale.parallel_shards > 1, Dagster's multiprocess executor runs that many shard steps at once,
    while the steps that write the warehouse (tagged WRITER_TAG) still run one at a time."""
    if project.scale.parallel_shards <= 1:
        return dg.in_process_executor
    return dg.multiprocess_executor.configured({
        "max_concurrent": project.scale.parallel_shards,
        "tag_concurrency_limits": [{"key": WRITER_TAG, "value": "1", "limit": 1}],
    })


def build_definitions(
    project_file: str | Path,
    warehouse: str | Path | None = None,
    resource_overrides: dict[str, dg.ConfigurableResource] | None = None,
    executor: dg.ExecutorDefinition | None = None,
) -> dg.Definitions:
    """`resource_overrides` replaces resources by key, e.g. a benchmark's instant provider; `executor`
    replaces the in-process executor, e.g. celery or Kubernetes steps (deploy/)."""
    project = load_project(project_file)  # fails here, before anything runs, if the file is invalid
    partitions = monthly_partitions(project)
    journal = str(project.root / ".batches")  # open provider batch jobs, so a crashed run collects them
    location = str(warehouse or project.warehouse_location)  # a DuckDB file or a postgresql:// URL
    check_location(location)
    job, training = monthly_job(project), label_model_job()
    return dg.Definitions(
        assets=build_assets(partitions, project.scale),
        jobs=[job, training],
        schedules=[monthly_schedule(job), label_model_schedule(training)],
        sensors=[review_sensor(partitions)],
        resources={
            "project": ProjectResource(project_file=str(project_file)),
            "warehouse": Warehouse(database=location, shard_folder_path=project.shard_folder_for(location)),
            "local_model": LocalModelProvider(project_file=str(project_file)),
            "openai": OpenAIProvider(
                api_key=_key("OPENAI_API_KEY"), base_url=os.environ.get("OPENAI_BASE_URL"), batch_journal_dir=journal
            ),
            "anthropic": AnthropicProvider(
                api_key=_key("ANTHROPIC_API_KEY"), base_url=os.environ.get("ANTHROPIC_BASE_URL"), batch_journal_dir=journal
            ),
            **(resource_overrides or {}),
        },
        executor=executor or project_executor(project),
    )


def definitions_from_environment(executor: dg.ExecutorDefinition | None = None) -> dg.Definitions:
    """The Definitions of the project named by LABELING_PROJECT (default: the bundled example)."""
    return build_definitions(
        os.environ.get("LABELING_PROJECT", str(EXAMPLE_PROJECT)),
        os.environ.get("LABELING_WAREHOUSE") or None,
        executor=executor,
    )


defs = definitions_from_environment()
