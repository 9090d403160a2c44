#!/usr/bin/env bash
# The several-machines setup, tested for real on this one: PostgreSQL (Dagster storage) and Redis (celery
# broker) from Debian's packages on 127.0.0.1, the Dagster daemon with the queued run coordinator, two
# celery workers, one month of a generated project launched through the queue and run step by step by
# the workers, its warehouse a PostgreSQL database on the same server (DuckDB's postgres extension, the
# `warehouse-postgres` extra); then the warehouse tables and Dagster's run storage are checked, and
# tests/test_postgres_warehouse.py runs against the server. Everything it starts is stopped and its
# temporary folder removed on exit (KEEP=1 keeps the folder, for the logs).
#
# Run: scripts/deploy_check.sh   (or `make deploy-check`). Needs root for apt-get when PostgreSQL or Redis
# are missing. Settings: ITEMS (2000), PG_PORT (55432), REDIS_PORT (56379), DEPLOY_VENV (.venv-deploy),
# WAREHOUSE (postgres; duckdb: a DuckDB file the workers share instead), TIME_LIMIT_S (900: the whole
# check, install included, is stopped after that).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ITEMS="${ITEMS:-2000}"
MONTH="2026-09"
PG_PORT="${PG_PORT:-55432}"
REDIS_PORT="${REDIS_PORT:-56379}"
DEPLOY_VENV="${DEPLOY_VENV:-$REPO/.venv-deploy}"
TIME_LIMIT_S="${TIME_LIMIT_S:-900}"
WAREHOUSE="${WAREHOUSE:-postgres}"
case "$WAREHOUSE" in postgres|duckdb) ;; *) echo "WAREHOUSE must be postgres or duckdb, not '$WAREHOUSE'" >&2; exit 2;; esac
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
# The extras a deployment adds come from the `deploy` and `warehouse-postgres` extras of pyproject.toml
# (dagster 1.13.x pairs with 0.29.x; the second pins DuckDB to the release its postgres extension is built for).

WORK="$(mktemp -d "${TMPDIR:-/tmp}/labeling-deploy-check.XXXXXX")"
PIDS=()        # process group ids of what we started (workers, daemon, redis)
PG_STARTED=""

say() { printf '\n== %s\n' "$*"; }
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [ -n "${WATCHDOG:-}" ] && { kill -TERM -- "-$WATCHDOG" 2>/dev/null || true; }
    say "stopping what this check started"
    for pgid in "${PIDS[@]}"; do
        kill -TERM -- "-$pgid" 2>/dev/null || true
    done
    sleep 2
    for pgid in "${PIDS[@]}"; do
        kill -KILL -- "-$pgid" 2>/dev/null || true
    done
    [ "${#PIDS[@]}" -gt 0 ] && { wait "${PIDS[@]}" 2>/dev/null || true; }
    if [ -n "$PG_STARTED" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    if [ "$status" = 0 ]; then echo "deploy check: PASSED"; else echo "deploy check: FAILED (exit $status)"; fi
    exit "$status"
}
trap cleanup EXIT INT TERM

# The whole check is bounded: past TIME_LIMIT_S the watchdog signals this script and stops the command it
# is waiting on (bash runs the cleanup trap only once the foreground command has returned).
setsid bash -c "sleep $TIME_LIMIT_S; echo 'deploy check: over ${TIME_LIMIT_S}s, stopping' >&2; kill -TERM $$;
    for child in \$(pgrep -P $$); do [ \"\$child\" != \"\$BASHPID\" ] && kill -TERM \"\$child\"; done" &
WATCHDOG=$!

start_group() {  # start_group LOGFILE COMMAND...: run in its own process group, remember the group id
    local log="$1"; shift
    setsid "$@" >"$log" 2>&1 < /dev/null &
    PIDS+=("$!")
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds="$1" what="$2"; shift 2
    for _ in $(seq "$seconds"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    echo "timed out after ${seconds}s waiting for $what" >&2
    return 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

say "system packages: PostgreSQL and Redis"
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
if [ -z "$PG_BIN" ] || ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "PostgreSQL or Redis is missing: run 'apt-get install postgresql redis-server' as root, then again" >&2
        exit 1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql redis-server
    PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
fi
echo "PostgreSQL: $("$PG_BIN/postgres" --version)"
echo "Redis: $(redis-server --version)"
for port in "$PG_PORT" "$REDIS_PORT"; do
    port_free "$port" || { echo "port $port on 127.0.0.1 is taken; set PG_PORT / REDIS_PORT" >&2; exit 1; }
done

say "Python: the project with the deploy extras in $DEPLOY_VENV"
if [ ! -f "$DEPLOY_VENV/.deploy-installed" ] || [ "$REPO/pyproject.toml" -nt "$DEPLOY_VENV/.deploy-installed" ]; then
    "$PYTHON" -m venv "$DEPLOY_VENV"
    "$DEPLOY_VENV/bin/pip" install --quiet --upgrade pip
    "$DEPLOY_VENV/bin/pip" install --quiet -e "$REPO[deploy,warehouse-postgres,test]"
    touch "$DEPLOY_VENV/.deploy-installed"
fi
BIN="$DEPLOY_VENV/bin"
export PATH="$BIN:$PATH"  # dagster-celery starts `celery` from the PATH
"$BIN/python" -c "import dagster, dagster_celery, dagster_postgres, duckdb; print('dagster', dagster.__version__, '/ dagster-celery', dagster_celery.__version__, '/ dagster-postgres', dagster_postgres.__version__, '/ duckdb', duckdb.__version__)"

say "PostgreSQL on 127.0.0.1:$PG_PORT (a throwaway cluster in $WORK/pg)"
mkdir -p "$WORK/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK/pg" && chmod 755 "$WORK"
as_postgres "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth-local=trust --auth-host=scram-sha-256 >"$WORK/initdb.log"
as_postgres "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/server.log" -w -t 60 \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $WORK/pg" start >/dev/null
PG_STARTED=1
PG_PASSWORD="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
as_postgres "$PG_BIN/psql" -h "$WORK/pg" -p "$PG_PORT" -U postgres -q -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE dagster LOGIN CREATEDB PASSWORD '$PG_PASSWORD'" -c "CREATE DATABASE dagster OWNER dagster" \
    -c "CREATE DATABASE labeling OWNER dagster"

say "Redis on 127.0.0.1:$REDIS_PORT"
start_group "$WORK/redis.log" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
    --save "" --appendonly no --dir "$WORK"
wait_for 30 "redis" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping

say "a generated month: $ITEMS items for $MONTH"
cd "$REPO"
"$BIN/python" -m benchmarks.generate_inbox --items "$ITEMS" --month "$MONTH" --out "$WORK/project" >/dev/null
# Shards of 500 items: each model tier's month is several steps, which the two workers take at once.
printf 'scale: {shard_items: 500}\n' >> "$WORK/project/project.yaml"

export DAGSTER_HOME="$WORK/dagster_home"
export DAGSTER_PG_HOST=127.0.0.1 DAGSTER_PG_PORT="$PG_PORT" DAGSTER_PG_DB=dagster DAGSTER_PG_USER=dagster
export DAGSTER_PG_PASSWORD="$PG_PASSWORD"
export DAGSTER_CELERY_BROKER_URL="redis://127.0.0.1:$REDIS_PORT/0"
export DAGSTER_CELERY_BACKEND_URL="redis://127.0.0.1:$REDIS_PORT/1"
export LABELING_PROJECT="$WORK/project/project.yaml"
export PGPASSWORD="$PG_PASSWORD"  # libpq's: the warehouse URL carries no password
if [ "$WAREHOUSE" = postgres ]; then
    export LABELING_WAREHOUSE="postgresql://dagster@127.0.0.1:$PG_PORT/labeling"
else
    export LABELING_WAREHOUSE="$WORK/project/warehouse.duckdb"
fi
echo "warehouse: $LABELING_WAREHOUSE"
mkdir -p "$DAGSTER_HOME"
cp deploy/celery/dagster.yaml "$DAGSTER_HOME/dagster.yaml"

say "two celery workers"
for name in w1 w2; do
    start_group "$WORK/worker-$name.log" "$BIN/dagster-celery" worker start -A dagster_celery.app \
        -y deploy/celery/run_config.yaml -n "$name" -- --concurrency 1
done
wait_for 90 "both celery workers" bash -c \
    "grep -q 'ready' '$WORK/worker-w1.log' && grep -q 'ready' '$WORK/worker-w2.log'"

say "the Dagster daemon (queued run coordinator)"
start_group "$WORK/daemon.log" "$BIN/dagster-daemon" run -w deploy/celery/workspace.yaml
wait_for 90 "the daemon's run queue" grep -q "QueuedRunCoordinatorDaemon" "$WORK/daemon.log"

say "launch the month through the queue; the workers run its steps"
RUN_ID="$("$BIN/python" - <<'PY'
import json, os, subprocess, sys
# `dagster job launch` submits to the instance's run coordinator: the run waits in the queue until the
# daemon launches it, as a scheduled or UI-launched run would.
out = subprocess.run(
    [os.path.join(sys.prefix, "bin", "dagster"), "job", "launch", "-w", "deploy/celery/workspace.yaml",
     "-j", "monthly_labeling",
     "--tags", json.dumps({"dagster/partition": "2026-09-01", "labeling_pool/openai_compatible": "true"})],
    capture_output=True, text=True, check=False,
)
sys.stderr.write(out.stdout + out.stderr)
import dagster as dg
runs = dg.DagsterInstance.get().get_run_records(limit=1)
if out.returncode or not runs:
    sys.exit("dagster job launch did not create a run")
print(runs[0].dagster_run.run_id)
PY
)"
echo "run $RUN_ID"

say "wait for the run and check the tables"
"$BIN/python" - "$RUN_ID" "$ITEMS" <<'PY'
import os, sys, time
import dagster as dg

from benchmarks.generate_inbox import expected_rejections
from labeling_dagster.resources.warehouse import connect

run_id, items = sys.argv[1], int(sys.argv[2])
instance = dg.DagsterInstance.get()
deadline = time.time() + 600
while True:
    run = instance.get_run_by_id(run_id)
    if run.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
        break
    if time.time() > deadline:
        sys.exit(f"run {run_id} still {run.status.value} after 600 s")
    time.sleep(3)
problems = []
if run.status != dg.DagsterRunStatus.SUCCESS:
    failures = [e.dagster_event.event_specific_data.error.message.strip()
                for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]
    sys.exit(f"run {run_id} ended {run.status.value}: {failures or 'see the daemon and worker logs'}")

events = instance.all_logs(run_id)
steps = [e.step_key for e in events if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS]
by_celery = [e for e in events if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.ENGINE_EVENT
             and "celery" in (e.message or "").lower()]
print(f"run {run_id}: {run.status.value}, {len(steps)} steps succeeded, {len(by_celery)} celery engine events; "
      f"stored in {type(instance.run_storage).__name__}")
if type(instance.run_storage).__name__ != "PostgresRunStorage":
    problems.append(f"run storage is {type(instance.run_storage).__name__}, not Postgres")
core = {"raw_items", "first_pass_labels", "qa_labels", "adjudicated_labels", "review_queue", "human_reviews",
        "final_labels", "cost_ledger"}
done = {step.split(".")[0] for step in steps}  # a tier's steps are <asset>.<asset>_plan / _shard[key] / _collect
if core - done:
    problems.append(f"assets {sorted(core - done)} did not succeed")
shard_steps = [step for step in steps if "_shard[" in step]
print(f"shard steps: {len(shard_steps)}")
if len([step for step in shard_steps if step.startswith("first_pass_labels.")]) < 2:
    problems.append("the first pass did not run in several shards")
if not by_celery:
    problems.append("no celery engine event: the steps did not go through celery")
checks = [e.dagster_event.event_specific_data for e in events
          if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
failed = [c.check_name for c in checks if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR]
print(f"asset checks: {len(checks)} evaluated, blocking failures: {failed or 'none'}")
if len(checks) < 4 or failed:
    problems.append(f"asset checks: {len(checks)} evaluated (expected 4), blocking failures {failed}")

with connect(os.environ["LABELING_WAREHOUSE"], read_only=True) as conn:
    one = lambda sql: conn.execute(sql).fetchone()
    raw, = one("SELECT COUNT(*) FROM raw_items")
    rejected, = one("SELECT COUNT(*) FROM rejected_items")
    final, distinct, missing, extra = one("""
        SELECT COUNT(*), COUNT(DISTINCT f.item_id),
               (SELECT COUNT(*) FROM raw_items r ANTI JOIN final_labels f USING (item_id)),
               (SELECT COUNT(*) FROM final_labels f ANTI JOIN raw_items r USING (item_id))
        FROM final_labels f""")
    states = dict(conn.execute("SELECT status, COUNT(*) FROM final_labels GROUP BY ALL").fetchall())
    total, parts = one("""SELECT SUM(usd) FILTER (WHERE kind = 'total'), SUM(usd) FILTER (WHERE kind <> 'total')
                          FROM cost_ledger""")
    calls_total, calls_parts = one("""SELECT SUM(calls) FILTER (WHERE kind = 'total'),
                                             SUM(calls) FILTER (WHERE kind <> 'total') FROM cost_ledger""")
    queued, = one("SELECT COUNT(*) FROM review_queue")
print(f"raw_items {raw}, rejected {rejected}, final_labels {final} ({states}), review_queue {queued}, "
      f"ledger total ${total:.4f} = parts ${parts:.4f}, calls {calls_total} = {calls_parts}")
if raw != items:
    problems.append(f"raw_items has {raw} rows, the generator wrote {items} good rows")
if rejected != expected_rejections(items):
    problems.append(f"rejected_items has {rejected} rows, expected {expected_rejections(items)}")
if not (final == distinct == raw and missing == 0 and extra == 0):
    problems.append(f"final_labels is not one row per raw item: {final} rows, {distinct} ids, {missing} missing, {extra} extra")
if set(states) - {"labeled", "pending_human"}:
    problems.append(f"final_labels has statuses {sorted(states)}")
if states.get("pending_human", 0) != queued:
    problems.append(f"{states.get('pending_human', 0)} items pending people but {queued} in the review queue")
if abs(total - parts) > 1e-9 or calls_total != calls_parts:
    problems.append(f"the ledger's total row (${total}, {calls_total} calls) is not the sum of its parts (${parts}, {calls_parts})")
if problems:
    sys.exit("problems:\n  - " + "\n  - ".join(problems))
print("tables check out")
PY

say "which worker ran which step"
for name in w1 w2; do
    echo "worker $name: $(grep -o 'Executing steps [^ ]* in celery worker' "$WORK/worker-$name.log" | awk '{print $3}' | tr '\n' ' ')"
done
for name in w1 w2; do
    if ! grep -q 'Executing steps [^ ]*_shard\[[^ ]* in celery worker' "$WORK/worker-$name.log"; then
        echo "worker $name ran no shard step: the shards did not spread over the workers" >&2
        exit 1
    fi
done

if [ "$WAREHOUSE" = postgres ]; then
    say "the warehouse rows are PostgreSQL's: what any client of the database sees"
    final_rows="$("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U dagster -d labeling -X -A -t \
        -c "SELECT COUNT(*) FROM final_labels")"
    echo "psql: final_labels has $final_rows rows"
    if [ "$final_rows" != "$ITEMS" ]; then
        echo "final_labels in PostgreSQL has $final_rows rows, expected $ITEMS" >&2
        exit 1
    fi

    say "tests/test_postgres_warehouse.py against this server"
    env -u LABELING_WAREHOUSE -u LABELING_PROJECT PATH="$PG_BIN:$PATH" \
        LABELING_TEST_POSTGRES="postgresql://dagster@127.0.0.1:$PG_PORT/dagster" \
        "$BIN/python" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning tests/test_postgres_warehouse.py
fi
