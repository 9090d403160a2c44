"""The labeling Definitions with each step in its own Kubernetes pod (dagster-k8s's k8s_job_executor).
NOT TESTED HERE. Only for a warehouse that every pod reaches (a PostgreSQL warehouse,
LABELING_WAREHOUSE=postgresql://...): with a DuckDB file keep the default in-process executor and the
K8sRunLauncher (deploy/k8s/values.yaml)."""

from dagster_k8s import k8s_job_executor

from labeling_dagster.definitions import definitions_from_environment

defs = definitions_from_environment(executor=k8s_job_executor)
