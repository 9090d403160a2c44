"""Dagster resources: how the pipeline reaches the outside (model providers, storage)."""
