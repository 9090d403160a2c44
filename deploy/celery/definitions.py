"""The labeling Definitions with each step run by a celery worker (dagster-celery) instead of in the
run's own process: the same assets, resources, job, schedule and sensor as labeling_dagster.definitions,
the project again from LABELING_PROJECT / LABELING_WAREHOUSE. Load it with `-f deploy/celery/definitions.py`."""

from dagster_celery import celery_executor

from labeling_dagster.definitions import definitions_from_environment

# The steps of a month are a chain (each asset reads the one before) and all sit in the `warehouse`
# pool, so the workers take them one at a time: DuckDB keeps its single writer. What celery adds is
# where a step runs: any worker that can reach the broker, the Dagster storage and the warehouse.
# Broker and backend come from the environment, so scheduled and UI-launched runs need no run config;
# the workers read the same URLs through run_config.yaml.
defs = definitions_from_environment(
    executor=celery_executor.configured(
        {"broker": {"env": "DAGSTER_CELERY_BROKER_URL"}, "backend": {"env": "DAGSTER_CELERY_BACKEND_URL"},
         "config_source": {"worker_prefetch_multiplier": 1, "task_acks_late": True}},
        name="celery",
    )
)
