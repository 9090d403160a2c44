"""How a month's size moves wall time and memory: N generated tickets run through the real Definitions
(the monthly job, in process, as `labeling run` does) with the SIMULATED instant provider, so what is
measured is orchestration and storage, not a model; or (`--provider server`) with the first pass sent
to the throughput benchmark's SIMULATED rate-limited server; or (`--provider server-batch`) with the first
pass through the SIMULATED server's batch API (files + batches), as a month over `batch_over_items` goes
by default. Each size runs in its own process (peak RSS per size).

With --parallel-shards N (N > 1) the month runs as `labeling run` runs it then: on Dagster's multiprocess
executor, each step in its own process and N shard steps of a tier at once (--shard-items per shard).

Run: python -m benchmarks.scale --out FILE.json --items 100000[,1000000] [--provider instant|server|server-batch]
     [--shard-items 200000] [--parallel-shards 1] [--timeout-s 1500]
Per size a JSON row: items, provider, shard_items, parallel_shards, wall_s, items_per_s, peak_rss_mb (the
largest resident set of the run's whole process tree: the benchmark's child and every step process it
started), db_mb, per_asset_s (per step), and per step the peak RSS seen while it ran; a size that hits
--timeout-s is reported with the steps it finished.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MONTH = "2026-09"
# instant: every tier answered in process by the SIMULATED InstantProvider.
# server: the first pass through OpenAIProvider against the throughput benchmark's SIMULATED rate-limited
# OpenAI-compatible server on 127.0.0.1 (its limits below, its latency model); QA stays instant.
# server-batch: the first pass through OpenAIProvider's batch mode against the SIMULATED server (tests/
# fake_llm_server.py, keeping no request history), which answers a batch at its second poll, with no latency or rate limit (those
# apply to online requests; a real batch takes up to 24 hours): what is measured is the batch path's own
# cost (JSONL files of up to 50,000 requests up and down, polls, ingestion). QA stays instant.
PROVIDERS = ["instant", "server", "server-batch"]
BATCH_POLL_S = 1.0
SERVER_LIMITS = {"rpm": 600, "tpm": 1_000_000}
SAMPLE_S = 0.5
NO_TELEMETRY = {"telemetry": {"enabled": False}}


def _inbox(workdir: Path, items: int, fmt: str, seed: int) -> tuple[Path, float, int]:
    """The generated project for this size: the inbox is reused when its manifest matches, the project
    file is written again (it follows the example's)."""
    from benchmarks.generate_inbox import expected_rejections, generate, write_project

    folder = workdir / f"items_{items}_{fmt}"
    manifest = folder / "manifest.json"
    wanted = {"items": items, "format": fmt, "seed": seed, "month": MONTH}
    if manifest.exists() and json.loads(manifest.read_text()) == wanted:
        return write_project(folder, MONTH, fmt), 0.0, expected_rejections(items)
    written = generate(items, MONTH, folder, fmt, seed)
    manifest.write_text(json.dumps(wanted))
    return Path(written.project_file), written.seconds, written.rejected_expected


def _step_times(instance, run_id: str) -> dict[str, dict]:
    """Per step: start and end (unix seconds) from the run's event log; no end if it never finished."""
    import dagster as dg

    steps: dict[str, dict] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            steps[event.step_key] = {"start": entry.timestamp, "end": None, "status": "running"}
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            steps.setdefault(event.step_key, {"start": entry.timestamp})
            steps[event.step_key].update(end=entry.timestamp, status=event.event_type.value.lower())
    return steps


def bench_job(project_file: str, warehouse: str):
    """The monthly job with the SIMULATED instant provider; module-level so step processes rebuild it."""
    from benchmarks.instant_provider import InstantProvider
    from labeling_dagster.definitions import build_definitions
    from labeling_dagster.schedules import MONTHLY_JOB

    return build_definitions(project_file, warehouse, {"local_model": InstantProvider()}).resolve_job_def(MONTHLY_JOB)


def _per_asset(steps: dict[str, dict]) -> dict[str, dict]:
    """A sharded tier's steps (asset.asset_plan, asset.asset_shard[key]..., asset.asset_collect) as one
    asset: from its first start to its last end; unfinished while any of its steps is."""
    assets: dict[str, dict] = {}
    for step, times in steps.items():
        asset = step.split(".")[0]
        seen = assets.setdefault(asset, {"start": times["start"], "end": times.get("end"), "open": False})
        seen["start"] = min(seen["start"], times["start"])
        seen["open"] = seen["open"] or times.get("end") is None
        if times.get("end") is not None:
            seen["end"] = max(seen["end"] or times["end"], times["end"])
    return {asset: {"start": t["start"], "end": None if t["open"] else t["end"]} for asset, t in assets.items()}


def _bench_project(project_file: Path, base_url: str | None, shard_items: int, parallel_shards: int,
                   batch: bool = False) -> Path:
    """The generated project as the benchmark runs it. The simulated providers' labels carry no
    information, so calibrating them on the golden set would send every item to people: confidences
    stay raw (quality.calibration: none) and the routing bands split the month as designed. With a
    server, the first pass goes to it: gpt-5-nano's prices, 20 items per request, online calls (or its
    batch API with `batch`)."""
    import yaml

    spec = yaml.safe_load(project_file.read_text(encoding="utf-8"))
    spec["quality"] = {**spec.get("quality", {}), "calibration": "none"}
    spec["scale"] = {"shard_items": shard_items, "parallel_shards": parallel_shards}
    if base_url:
        first = next(tier for tier in spec["tiers"] if tier["role"] == "first_pass")
        options = ({"base_url": base_url, "mode": "batch", "poll_interval_s": BATCH_POLL_S, "timeout_s": 120} if batch
                   else {"base_url": base_url, "mode": "online", "max_concurrency": 32, "timeout_s": 30, **SERVER_LIMITS})
        first.update(provider="openai", model="gpt-5-nano", items_per_request=20, options=options)
    target = project_file.with_name("project_bench.yaml")
    target.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return target


def _db_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + ".wal")) if p.exists()) / 2**20


def run_one(items: int, provider: str, workdir: Path, fmt: str, seed: int, row_file: Path,
            shard_items: int, parallel_shards: int) -> None:
    """The child: one month of `items` through the monthly job; writes its row to row_file (the parent adds
    the per-step times from the run's event log, which outlives this process if it is stopped)."""
    import dagster as dg
    import duckdb

    from labeling_dagster.project import load_project

    project_file, gen_s, rejected_expected = _inbox(workdir, items, fmt, seed)
    project = load_project(project_file)
    warehouse = Path(project.warehouse_location)
    for stale in (warehouse, warehouse.with_name(warehouse.name + ".wal")):
        stale.unlink(missing_ok=True)
    shutil.rmtree(project.exports_path, ignore_errors=True)
    dagster_home = workdir / f"dagster_home_{items}_{provider}_{parallel_shards}"
    shutil.rmtree(dagster_home, ignore_errors=True)
    dagster_home.mkdir(parents=True)
    row_file.write_text(json.dumps({"dagster_home": str(dagster_home), "gen_s": gen_s, "warehouse": str(warehouse)}))

    instance = dg.DagsterInstance.local_temp(tempdir=str(dagster_home), overrides=NO_TELEMETRY)
    with contextlib.ExitStack() as stack:
        base_url = None
        if provider == "server":
            from benchmarks.throughput import Latency, LatencyServer

            server = stack.enter_context(LatencyServer(Latency(0.25, 0.5, 0.04, seed), burst_s=1.0, **SERVER_LIMITS))
            base_url = server.openai_base_url
        elif provider == "server-batch":
            from tests.fake_llm_server import FakeLLMServer

            base_url = stack.enter_context(FakeLLMServer(forget=True)).openai_base_url
        project_file = _bench_project(project_file, base_url, shard_items, parallel_shards, provider == "server-batch")
        run_config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        started = time.perf_counter()
        if parallel_shards > 1:
            job = dg.build_reconstructable_job("benchmarks.scale", "bench_job",
                                               reconstructable_args=(str(project_file), str(warehouse)))
            with dg.execute_job(job, instance=instance, run_config=run_config, raise_on_error=False,
                                tags={"dagster/partition": f"{MONTH}-01"}) as result:
                pass
        else:
            result = bench_job(str(project_file), str(warehouse)).execute_in_process(
                partition_key=f"{MONTH}-01", instance=instance, raise_on_error=False, run_config=run_config,
            )
        wall_s = time.perf_counter() - started
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; the parent adds the steps
    counts = None
    if result.success:  # a failed or interrupted run may leave the warehouse resource's connection open
        with duckdb.connect(str(warehouse), read_only=True) as conn:
            counts = {
                table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("raw_items", "rejected_items", "first_pass_labels", "qa_labels", "review_queue", "final_labels")
            }
            counts["model_calls"], counts["model_usd"] = conn.execute(
                "SELECT COUNT(*), ROUND(COALESCE(SUM(usd), 0), 4) FROM model_calls").fetchone()
    row = {
        "items": items, "provider": provider, "shard_items": shard_items, "parallel_shards": parallel_shards,
        "status": "ok" if result.success else "failed",
        "wall_s": round(wall_s, 2), "items_per_s": round(items / wall_s, 1),
        "peak_rss_mb": round(peak_rss_mb, 1), "db_mb": round(_db_mb(warehouse), 1),
        "gen_s": round(gen_s, 1), "rows": counts, "rejected_expected": rejected_expected,
        # the month came out whole: one final row per good input row, every bad row rejected
        "tables_ok": bool(counts) and counts["raw_items"] == counts["final_labels"] == items
        and counts["rejected_items"] == rejected_expected,
        "run_id": result.run_id, "dagster_home": str(dagster_home),
    }
    row_file.write_text(json.dumps(row))


def _rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set of a live process, from /proc (Linux)."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def _descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            for task in Path(f"/proc/{current}/task").iterdir():
                children = [int(child) for child in (task / "children").read_text().split()]
                found += children
                pending += children
    return found


def _tree_rss_mb(pid: int) -> float:
    """The resident set of a process and all its descendants (step processes of a multiprocess run)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            total += _rss_mb(current)[0]
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total


def measure(items: int, provider: str, workdir: Path, fmt: str, seed: int, timeout_s: float,
            shard_items: int, parallel_shards: int) -> dict:
    """Run one size in a child process, sampling its memory; stop it at `timeout_s`."""
    import dagster as dg

    row_file = workdir / f"row_{items}_{provider}_{parallel_shards}.json"
    row_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.scale", "--child", "--items", str(items), "--provider", provider,
               "--workdir", str(workdir), "--format", fmt, "--seed", str(seed), "--out", str(row_file),
               "--shard-items", str(shard_items), "--parallel-shards", str(parallel_shards)]
    child = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent)
    samples: list[tuple[float, float]] = []
    peak, started, timed_out = 0.0, time.time(), False
    while child.poll() is None:
        try:
            own_rss, own_peak = _rss_mb(child.pid)
            rss = max(own_rss, _tree_rss_mb(child.pid))
            peak = max(peak, own_peak, rss)
            samples.append((time.time(), rss))
        except (FileNotFoundError, ProcessLookupError):
            pass
        if time.time() - started > timeout_s:
            for pid in _descendants(child.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            child.kill()
            child.wait()
            timed_out = True
            break
        time.sleep(SAMPLE_S)
    state = json.loads(row_file.read_text()) if row_file.exists() else {}
    if "items" in state:
        row = state
        row["peak_rss_mb"] = round(max(row["peak_rss_mb"], peak), 1)  # with step processes, the whole tree
    else:  # stopped (or crashed) before the child wrote its row: rebuild what we can from its event log
        warehouse = Path(state.get("warehouse", ""))
        row = {"items": items, "provider": provider, "status": "timeout" if timed_out else f"exit {child.returncode}",
               "wall_s": None, "items_per_s": None, "peak_rss_mb": round(peak, 1),
               "db_mb": round(_db_mb(warehouse), 1) if state else None, "gen_s": state.get("gen_s"),
               "dagster_home": state.get("dagster_home")}
    per_asset_s, per_asset_rss, unfinished = {}, {}, []
    if row.get("dagster_home"):
        instance = dg.DagsterInstance.local_temp(tempdir=row["dagster_home"], overrides=NO_TELEMETRY)
        runs = instance.get_runs()
        steps = _per_asset(_step_times(instance, runs[0].run_id)) if runs else {}
        now = time.time()
        for step, times in steps.items():
            end = times.get("end") or now
            per_asset_s[step] = round(end - times["start"], 2)
            during = [rss for moment, rss in samples if times["start"] <= moment <= end]
            if during:
                per_asset_rss[step] = round(max(during), 1)
            if times.get("end") is None:
                unfinished.append(step)
        if row["wall_s"] is None and steps:
            row["wall_s_until_stop"] = round(now - min(t["start"] for t in steps.values()), 2)
    row["per_asset_s"] = per_asset_s
    row["per_asset_peak_rss_mb"] = per_asset_rss
    if unfinished:
        row["unfinished_steps"] = unfinished
    return row


def _table(rows: list[dict]) -> str:
    order = ["raw_items", "first_pass_labels", "qa_labels", "adjudicated_labels", "review_queue", "human_reviews",
             "final_labels", "cost_ledger"]
    seen = {step for row in rows for step in row["per_asset_s"]}
    steps = [s for s in order if s in seen] + sorted(seen - set(order))
    header = ["", *[f"{row['items']:,} {row['provider']}" + (f" x{row['parallel_shards']}" if row.get("parallel_shards", 1) > 1 else "")
                    for row in rows]]
    lines = [
        ["status", *[row["status"] for row in rows]],
        ["wall s", *[str(row["wall_s"] if row["wall_s"] is not None else f">{row.get('wall_s_until_stop')}") for row in rows]],
        ["items/s", *[str(row["items_per_s"]) for row in rows]],
        ["peak RSS MiB", *[str(row["peak_rss_mb"]) for row in rows]],
        ["DuckDB MiB", *[str(row["db_mb"]) for row in rows]],
        *[[f"  {step} s (peak MiB)", *[
            f"{row['per_asset_s'][step]} ({row['per_asset_peak_rss_mb'].get(step, '-')})"
            + ("*" if step in row.get("unfinished_steps", []) else "") if step in row["per_asset_s"] else "-"
            for row in rows]] for step in steps],
    ]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]

    def render(line: list) -> str:
        return "  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))

    note = "\n(* still running when stopped)" if any(row.get("unfinished_steps") for row in rows) else ""
    return "\n".join([render(header), *map(render, lines)]) + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file: rows of this run are added, replacing the same size and provider")
    parser.add_argument("--items", required=True, help="items per month, or several sizes separated by commas")
    parser.add_argument("--provider", choices=PROVIDERS, default="instant")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "labeling_scale"),
                        help="generated inboxes (reused between runs), warehouses and Dagster run storage")
    parser.add_argument("--format", choices=["csv", "jsonl", "parquet"], default="csv")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--shard-items", type=int, default=200_000, help="scale.shard_items of the benchmark project")
    parser.add_argument("--parallel-shards", type=int, default=1,
                        help="scale.parallel_shards: above 1, the multiprocess executor runs that many shards at once")
    parser.add_argument("--timeout-s", type=float, default=1500, help="stop a size after this many seconds")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        run_one(int(args.items), args.provider, workdir, args.format, args.seed, Path(args.out),
                args.shard_items, args.parallel_shards)
        return
    rows = [measure(int(n), args.provider, workdir, args.format, args.seed, args.timeout_s,
                    args.shard_items, args.parallel_shards) for n in args.items.split(",")]
    out = Path(args.out)

    def identity(row: dict) -> tuple:
        return row["items"], row["provider"], row.get("parallel_shards", 1)

    kept = [r for r in (json.loads(out.read_text()) if out.exists() else []) if identity(r) not in set(map(identity, rows))]
    everything = sorted(kept + rows, key=lambda r: (r["provider"], r.get("parallel_shards", 1), r["items"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(everything, indent=2))
    print(_table(everything))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
