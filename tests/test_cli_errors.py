"""`labeling run` when a month fails: the cause in one line, no traceback, Dagster's log only with
--verbose, the run still recorded in DAGSTER_HOME. The paid tiers talk to the SIMULATED server of
tests/fake_llm_server.py (the real SDKs over HTTP on 127.0.0.1)."""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner
from dagster._core.execution.plan.objects import StepFailureData
from dagster._utils.error import SerializableErrorInfo

sys.path.insert(0, str(Path(__file__).parent))

from fake_llm_server import FakeLLMServer  # noqa: E402

from labeling_dagster.cli import main  # noqa: E402
from labeling_dagster.cli.common import step_failure_cause  # noqa: E402

# The `server` and `paid_project` fixtures (paid tiers on the simulated server) are in conftest.py.

BUDGET_MESSAGE = "raise budget.monthly_usd or set budget.on_exceeded: queue"
DAGSTER_LOG = ("Stack Trace", "Traceback", "DagsterExecutionStepExecutionError", "dagster - ERROR", "STEP_FAILURE")


def over_budget(project: Path) -> Path:
    """A month that fails for sure: the first pass's first call is over a budget that says fail."""
    yaml = project / "project.yaml"
    yaml.write_text(yaml.read_text().replace("budget: {monthly_usd: 5}", "budget: {monthly_usd: 0.0000001, on_exceeded: fail}"))
    return project


def labeling_run(project: Path, tmp_path: Path, *extra: str):
    return CliRunner().invoke(main, ["run", "--project", str(project), "--month", "2026-08",
                                     "--warehouse", str(tmp_path / "w.duckdb"), *extra])


def error_line(output: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith("error:")]
    return line


def test_a_failed_run_prints_its_cause_in_one_line_and_is_recorded(
        paid_project: Path, server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # no first-use banner on screen
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    result = labeling_run(over_budget(paid_project), tmp_path)
    assert result.exit_code == 1, result.output
    line = error_line(result.output)
    # the step (with its partition key, not eaten as markup), then the project's own message, whole
    assert line.startswith("error: 2026-08: first_pass_labels.first_pass_labels_shard[m2026_08_s0001]: 2026-08 shard 1/1: ")
    assert line.endswith(BUDGET_MESSAGE) and "Failure" not in line
    assert not any(marker in result.output for marker in DAGSTER_LOG), result.output
    assert len(result.output.strip().splitlines()) <= 4, result.output  # progress, the cause, the hint
    # Nothing on screen, everything on the instance: the failed run and its step failure.
    with dg.DagsterInstance.from_config(str(home)) as kept:
        (run,) = [r for r in kept.get_runs() if r.job_name == "monthly_labeling"]
        assert run.status == dg.DagsterRunStatus.FAILURE
        failures = kept.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        assert BUDGET_MESSAGE in failures[0].dagster_event.step_failure_data.error.message


def test_verbose_shows_dagsters_log_and_still_the_cause(paid_project: Path, server: FakeLLMServer, tmp_path: Path) -> None:
    result = labeling_run(over_budget(paid_project), tmp_path, "--verbose")
    assert result.exit_code == 1
    assert "dagster - INFO" in result.output and "STEP_FAILURE" in result.output and "Stack Trace" in result.output
    assert error_line(result.output).endswith(BUDGET_MESSAGE)


def test_an_exception_raised_in_a_step_is_shown_without_dagsters_wrapper(
        paid_project: Path, server: FakeLLMServer, tmp_path: Path) -> None:
    # A revoked key: the provider answers 401 to the golden run's first call, which raises
    # ProviderConfigError (Dagster wraps it in DagsterExecutionStepExecutionError: "Error occurred ...").
    server.refuse = lambda user: True
    result = labeling_run(paid_project, tmp_path)
    assert result.exit_code == 1
    line = error_line(result.output)
    assert line.startswith("error: 2026-08: golden_labels: tiers.first_pass: ")
    assert "answered HTTP 401: simulated refusal" in line
    assert "ProviderConfigError" not in line and "Error occurred while executing" not in line
    assert not any(marker in result.output for marker in DAGSTER_LOG), result.output


def test_other_exceptions_keep_their_class_name_and_lines_are_joined() -> None:
    def error(cls_name: str, message: str, cause=None) -> SerializableErrorInfo:
        return SerializableErrorInfo(message=message, stack=[], cls_name=cls_name, cause=cause)

    wrapped = error("DagsterExecutionStepExecutionError",
                    'dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred while executing op "raw_items":\n',
                    cause=error("KeyError", "KeyError: 'body'\n"))
    assert step_failure_cause(StepFailureData(wrapped, None)) == "KeyError: 'body'"
    ours = error("ProjectFileError", "labeling_dagster.project.ProjectFileError: source.path: no file\nmatches inbox/*.csv\n",
                 cause=error("FileNotFoundError", "FileNotFoundError: inbox\n"))
    assert step_failure_cause(StepFailureData(ours, None)) == "source.path: no file matches inbox/*.csv"
