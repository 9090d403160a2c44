"""The labeling Definitions with each step run by a celery worker (dagster-celery) instead of in the
run's own process: the same assets, resources, job, schedule and sensor as labeling_dagster.definitions,
the project again from LABELING_PROJECT / LABELING_WAREHOUSE. Load it with `-f deploy/celery/definitions.py`."""

from dagster_celery import celery_executor

from labeling_dagster.definitions import definitions_from_environment

# The steps that write the warehouse sit in the `warehouse` pool (limit 1 in dagster.yaml), so the
# workers take them one at a time: DuckDB keeps its single writer. A model tier's shard steps write only
# their own shard files (resources/shards.py), so the workers run them at once: a large month's first
# pass is spread over every worker that shares the warehouse's folder, the broker and the Dagster storage.
# Broker and backend come from the environment, so scheduled and UI-launched runs need no run config;
# the workers read the same URLs through run_config.yaml.
defs = definitions_from_environment(
    executor=celery_executor.configured(
        {"broker": {"env": "DAGSTER_CELERY_BROKER_URL"}, "backend": {"env": "DAGSTER_CELERY_BACKEND_URL"},
         "config_source": {"worker_prefetch_multiplier": 1, "task_acks_late": True}},
        name="celery",
    )
)
