"""The project file as a Dagster resource, so every asset reads the same validated project."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import dagster as dg

from labeling_dagster.project import Project, load_project


@lru_cache(maxsize=8)
def _load(path: str, modified: float) -> Project:
    return load_project(path)


class ProjectResource(dg.ConfigurableResource):
    """Points at the project file (or its folder); `load()` validates it once per version of the file."""

    project_file: str

    def load(self) -> Project:
        path = Path(self.project_file)
        target = path / "project.yaml" if path.is_dir() else path
        return _load(str(path), target.stat().st_mtime if target.exists() else 0.0)
