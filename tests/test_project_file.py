"""The project file: a bad one fails before anything runs, naming the file, the key and why."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from labeling_dagster.project import ProjectFileError, load_project


def _break(project: Path, old: str, new: str) -> None:
    path = project / "project.yaml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_valid_project_loads(tiny_project: Path) -> None:
    project = load_project(tiny_project)
    assert project.taxonomy.names == ["billing", "cancellation", "card_lost"]
    assert project.tier("qa").model == "chars"
    assert project.tier("adjudication") is None
    assert project.root == tiny_project.resolve()
    assert project.human_review.usd_per_review == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("old", "new", "key", "why"),
    [
        ("accept_at: 0.6", "accept_at: 1.6", "routing.accept_at", "less than or equal to 1"),
        ("accept_at: 0.6", "accept_at: 0.2", "routing", "adjudicate_at <= qa_at <= accept_at"),
        ('path: "inbox/{month}*.csv"', 'path: "inbox/all.csv"', "source.path", "must contain {month}"),
        ('start_month: "2026-08"', 'start_month: "August"', "source.start_month", "write YYYY-MM"),
        ("budget: {monthly_usd: 5}", "budget: {monthly_usd: -1}", "budget.monthly_usd", "greater than or equal to 0"),
        ("provider: local, model: chars", "provider: openai, model: no-such-model", "tiers", "no price for 'no-such-model'"),
        ("role: qa", "role: first_pass", "tiers", "roles must be distinct"),
        ("{column: tier, equals: vip}", "{column: region, equals: eu}", "routing.always_human_when", "column 'region'"),
        ("human_review: {", "human_review: {colour: blue, ", "human_review.colour", "Extra inputs are not permitted"),
    ],
)
def test_invalid_project_names_key_and_reason(tiny_project: Path, old: str, new: str, key: str, why: str) -> None:
    _break(tiny_project, old, new)
    with pytest.raises(ProjectFileError) as error:
        load_project(tiny_project)
    message = str(error.value)
    assert str(tiny_project / "project.yaml") in message
    assert re.search(rf"- {re.escape(key)}[.:]", message), message
    assert why in message


def test_missing_seed_file_is_named(tiny_project: Path) -> None:
    (tiny_project / "seed.csv").unlink()
    with pytest.raises(ProjectFileError, match=r"seed_set.path: file .*seed.csv does not exist"):
        load_project(tiny_project)


def test_not_yaml_and_no_file(tmp_path: Path) -> None:
    with pytest.raises(ProjectFileError, match="no such project file"):
        load_project(tmp_path)
    (tmp_path / "project.yaml").write_text("name: [unclosed")
    with pytest.raises(ProjectFileError, match="not valid YAML"):
        load_project(tmp_path)


def test_price_overrides_add_models(tiny_project: Path) -> None:
    _break(tiny_project, "provider: local, model: chars", "provider: openai, model: my-finetune")
    path = tiny_project / "project.yaml"
    path.write_text(path.read_text() + "prices:\n  my-finetune: {input: 0.3, output: 1.2}\n")
    project = load_project(tiny_project)
    assert project.price_catalog.price("my-finetune").output == 1.2
    assert project.price_catalog.price("gpt-5.2").input == 1.75  # built-in entries stay
