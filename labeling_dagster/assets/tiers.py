"""Stages 2-4: the model tiers. Each labels the items routed to it, through the call cache, and
decides with the routing bands where each item goes next (accepted, QA, adjudication, people)."""

import json
import re
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd

from labeling_dagster import checks
from labeling_dagster.assets.common import (
    GROUP,
    MODEL_TIER_TABLES,
    WAREHOUSE_POOL,
    WRITER_TAG,
    items_from,
    markdown_table,
    months_in,
)
from labeling_dagster.assets.drift import drift_metadata, recheck
from labeling_dagster.assets.golden_labels import calibrated, stored_calibrator, stored_certificate
from labeling_dagster.core import routing
from labeling_dagster.core.gate import signal_of
from labeling_dagster.core.labels import Answer, Item, PriorAnswer
from labeling_dagster.core.runner import BudgetExceeded, run_tier
from labeling_dagster.project import Budget, Project, Scale, TierConfig
from labeling_dagster.resources import shards
from labeling_dagster.resources.anthropic_provider import AnthropicProvider
from labeling_dagster.resources.local_model import LocalModelProvider
from labeling_dagster.resources.openai_provider import OpenAIProvider
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import (
    DuckDBCallCache,
    Warehouse,
    append,
    clear_window,
    ensure_tables,
    iter_window,
    naive_utc,
)


@dataclass(frozen=True)
class Stage:
    asset: str
    role: str
    upstream: list[str]
    doc: str


STAGES = [
    Stage(
        "first_pass_labels",
        "first_pass",
        ["raw_items", "certificates", "auto_labels"],
        """One row per item of the month the auto-labeler did not accept: the first-pass tier's label, calibrated and raw confidence, reason and
        alternatives (or why it gave none), the call that produced it, and where the item goes next
        (accept, qa, adjudication, human) with the reason. Read by qa_labels, review_queue, final_labels.""",
    ),
    Stage(
        "qa_labels",
        "qa",
        ["raw_items", "certificates", "first_pass_labels"],
        """One row per item the first pass sent to QA (QA band, random audit, first-pass failures):
        the QA tier's answer, given the first-pass answer, and where the item goes next.""",
    ),
    Stage(
        "adjudicated_labels",
        "adjudication",
        ["raw_items", "certificates", "first_pass_labels", "qa_labels"],
        """One row per item sent to the premium adjudicator (its band, QA disagreements): its answer,
        given the earlier answers, and whether it settles the item or sends it to people.""",
    ),
]


def _answer(row) -> Answer | None:
    if row is None or pd.isna(row["label"]):
        return None
    return Answer(row["item_id"], row["label"], float(row["confidence"]), row["reason"] or "")


def _earlier_tables(stage: Stage) -> list[str]:
    return [name for name in stage.upstream if name in MODEL_TIER_TABLES]


def _todo_sql(stage: Stage, conn, window: dg.TimeWindow) -> str:
    """The filter on raw_items that selects the items this stage labels."""
    if stage.role == "first_pass":
        has_auto = conn.execute(
            "SELECT COUNT(*) FROM auto_labels WHERE month >= ? AND month < ?",
            [naive_utc(window.start), naive_utc(window.end)],
        ).fetchone()[0]
        if not has_auto:  # auto-labeler off: the first pass labels every item
            return ""
        routed = "SELECT item_id FROM auto_labels WHERE month = raw_items.month AND next_step = 'first_pass'"
    else:
        routed = " UNION ".join(
            f"SELECT item_id FROM {table} WHERE month = raw_items.month AND next_step = '{stage.role}'"
            for table in _earlier_tables(stage)
        )
    return f"AND item_id IN ({routed})"


def _count_todo(stage: Stage, conn, window: dg.TimeWindow) -> int:
    return sum(
        conn.execute(
            f"SELECT COUNT(*) FROM raw_items WHERE month >= ? AND month < ? {_todo_sql(stage, conn, month_window)}",
            [naive_utc(month_window.start), naive_utc(month_window.end)],
        ).fetchall()[0][0]
        for _, month_window in months_in(window)
    )


def _with_batch_default(tier: TierConfig, spec: Project, items: int) -> TierConfig:
    """A paid tier with no options.mode goes through the provider's batch API when the run is large (a
    backfill): half price, and the prompt version (so the call cache) does not depend on the mode."""
    if tier.provider == "local" or "mode" in tier.options or spec.batch_over_items is None:
        return tier
    if items <= spec.batch_over_items:
        return tier
    return tier.model_copy(update={"options": {**tier.options, "mode": "batch"}})


def _todo_chunks(stage: Stage, conn, window: dg.TimeWindow, rows: int):
    """Chunks of `rows` items (whole requests: shards.page_rows) with the earlier answers a prompt shows
    and those routing compares, in item order, so a month of a million items never sits in memory at once."""
    for chunk in iter_window(conn, "raw_items", window, _todo_sql(stage, conn, window), rows=rows):
        items = items_from(chunk)
        prior: dict[str, list[PriorAnswer]] = {}
        answers: dict[str, dict[str, Answer | None]] = {}
        if stage.role != "first_pass" and items:
            chunk_ids = pd.DataFrame({"item_id": [item.item_id for item in items]})  # noqa: F841 (read by name in the SQL below)
            for table in _earlier_tables(stage):
                rows = conn.execute(
                    f"SELECT * FROM {table} WHERE month >= ? AND month < ? AND item_id IN (SELECT item_id FROM chunk_ids) "
                    "ORDER BY item_id", [naive_utc(window.start), naive_utc(window.end)],
                ).df()
                for row in rows.to_dict("records"):
                    # the earlier tier's own number (raw), as the model said it: prompts do not change with calibration
                    prior.setdefault(row["item_id"], []).append(PriorAnswer(
                        row["tier"], None if pd.isna(row["label"]) else row["label"],
                        None if pd.isna(row["raw_confidence"]) else row["raw_confidence"],
                        row["reason"] or row["failure"] or ""))
                    answers.setdefault(row["item_id"], {})[row["tier"]] = _answer(row)
        yield items, prior, answers


def stage_gate(spec: Project, conn, window: dg.TimeWindow, role: str) -> routing.StageGate:
    """What the stage may accept this month: its certificate (quality.gate certified) or the bands."""
    return routing.StageGate(role, spec.quality.gate, stored_certificate(conn, window, role), spec.quality.audit_share,
                             spec.taxonomy.none_label)


def _route(stage: Stage, spec: Project, item: Item, answer, failure, earlier, gate: routing.StageGate,
           signal: float | None) -> routing.Route:
    has_qa, has_adjudication = spec.tier("qa") is not None, spec.tier("adjudication") is not None
    if stage.role == "first_pass":
        forced = routing.forced_human(spec.routing, item.text, item.metadata)
        return routing.after_first_pass(
            spec.routing, item.item_id, answer, failure,
            forced=forced, has_qa=has_qa, has_adjudication=has_adjudication, gate=gate, signal=signal,
        )
    if stage.role == "qa":
        first = next(iter(earlier.values()), None)
        return routing.after_qa(spec.routing, answer, failure, first, has_adjudication=has_adjudication,
                                item_id=item.item_id, gate=gate, signal=signal)
    return routing.after_adjudication(spec.routing, answer, failure, item_id=item.item_id, gate=gate, signal=signal)


def _providers(local_model, openai, anthropic, tier: TierConfig | None) -> dict:
    providers = {"local": local_model, "openai": openai, "anthropic": anthropic}
    if tier is not None and tier.provider not in providers:
        raise dg.Failure(f"tier {tier.name}: provider {tier.provider!r} is not available in this deployment")
    if tier is not None and tier.provider != "local":
        providers[tier.provider].check_ready(tier)  # a missing key fails here, before any call
    return providers


def _failure_kind(failure: str) -> str:
    return re.sub(r"[\d.$']+|\(.*\)", "", failure.split(";")[0]).strip()


def _plan(stage: Stage, spec: Project, conn, partition_window: dg.TimeWindow, folder, log) -> list[shards.ShardSpec]:
    """Clear the window's rows, keep the calls of shard files an unfinished run left, and cut each
    month's items for this tier into shards; each shard file gets what its shard needs."""
    tier = spec.tier(stage.role)
    tier = tier and _with_batch_default(tier, spec, _count_todo(stage, conn, partition_window))
    clear_window(conn, stage.asset, partition_window)
    planned: list[shards.ShardSpec] = []
    for month, window in months_in(partition_window):
        kept = shards.salvage(conn, folder, stage.asset, month)
        if kept:
            log.info(f"{month} {stage.role}: kept {kept} calls an unfinished run's shards had made")
        todo_sql = _todo_sql(stage, conn, window)
        bounds = [naive_utc(window.start), naive_utc(window.end)]
        (total,) = conn.execute(
            f"SELECT COUNT(*) FROM raw_items WHERE month >= ? AND month < ? {todo_sql}", bounds
        ).fetchone()
        if not total:
            continue
        if tier is None:
            raise dg.Failure(f"{month}: {total} items were routed to {stage.role} but the project has no {stage.role} tier")
        size = shards.shard_size(spec.scale.shard_items, tier.items_per_request)
        plan_id = uuid.uuid4().hex[:12]
        firsts = [row[0] for row in conn.execute(
            f"""SELECT item_id FROM (
                    SELECT item_id, row_number() OVER (ORDER BY item_id) - 1 AS position
                    FROM raw_items WHERE month >= ? AND month < ? {todo_sql})
                WHERE position % {size} = 0 ORDER BY item_id""", bounds,
        ).fetchall()]
        (spent,) = conn.execute("SELECT COALESCE(SUM(usd), 0) FROM model_calls WHERE month = ?", [bounds[0]]).fetchone()
        remaining = max(0.0, spec.budget.monthly_usd - float(spent))
        for index, first in enumerate(firsts):
            items = min(size, total - index * size)
            shard = shards.ShardSpec(
                asset=stage.asset, month=month, start=window.start, end=window.end, index=index, count=len(firsts),
                path=str(shards.shard_path(folder, stage.asset, month, plan_id, index, len(firsts))),
                first_item=first, end_item=firsts[index + 1] if index + 1 < len(firsts) else None, items=items,
                batch=tier.options.get("mode") == "batch", spent_before=float(spent),
                # Shards run at once, so each may spend only its share of what the month has left.
                budget_cap_usd=float(spent) + remaining * items / total, on_exceeded=spec.budget.on_exceeded,
                plan_id=plan_id,
            )
            shard = replace(shard, fingerprint=shards.fingerprint(
                conn, shard, todo_sql=todo_sql, earlier_tables=_copied_tables(stage)))
            shards.create(conn, shard, todo_sql=todo_sql, earlier_tables=_copied_tables(stage),
                          provider=tier.provider, model=tier.model)
            planned.append(shard)
        log.info(f"{month} {stage.role}: {total} items in {len(firsts)} shard(s) of up to {size}")
    return planned


def _copied_tables(stage: Stage) -> list[str]:
    """The earlier tables a shard reads: routing (auto_labels) and the earlier answers prompts show."""
    return ["auto_labels", *_earlier_tables(stage)] if stage.role == "first_pass" else _earlier_tables(stage)


def _label_shard(stage: Stage, spec: Project, shard: shards.ShardSpec, providers: dict, run_id: str, log) -> dict:
    """Label one shard in its own file, storing each call as it returns. A retry starts the shard's
    rows again; its stored calls are reused, so nothing is paid twice."""
    tier = spec.tier(stage.role)
    if shard.batch:
        tier = tier.model_copy(update={"options": {**tier.options, "mode": "batch"}})
    budget = Budget(monthly_usd=shard.budget_cap_usd, on_exceeded=shard.on_exceeded)
    totals = {"items": 0, "items_reused": 0, "calls_made": 0, "calls_reused": 0, "usd_paid": 0.0, "failures": 0,
              "budget_stopped": 0}
    routes: dict[str, int] = {}
    failure_reasons: dict[str, int] = {}
    window = shard.window
    if not Path(shard.path).exists():
        raise dg.Failure(
            f"shard file {shard.path} is missing: a newer run of {shard.month} took over its calls, or this step runs "
            "on a machine that does not share the folder. Run the month again; stored calls are reused.",
            allow_retries=False,
        )
    stats_before = providers[tier.provider].stats(tier.name).__dict__ if tier.provider != "local" else {}
    made_here = ("SELECT COALESCE(SUM(usd), 0) FROM model_calls WHERE month = ? "
                 "AND call_id NOT IN (SELECT call_id FROM copied_calls)")
    with duckdb.connect(shard.path) as conn:
        ensure_tables(conn)  # a file an earlier version planned gets the tables added since
        conn.execute(f"DELETE FROM {stage.asset}")
        price = None if tier.provider == "local" else spec.price_catalog.price(tier.model)
        gate = stage_gate(spec, conn, window, stage.role)  # the month's certificate, the same for every chunk
        for todo, prior, earlier in _todo_chunks(stage, conn, window, shards.page_rows(tier.items_per_request)):
            cache = DuckDBCallCache(conn, window.start, run_id, stage=stage.asset)
            (spent_here,) = conn.execute(made_here, [naive_utc(window.start)]).fetchone()
            try:
                result = run_tier(
                    providers[tier.provider], tier=tier, taxonomy=spec.taxonomy, items=todo, cache=cache,
                    price=price, budget=budget, spent_before=shard.spent_before + float(spent_here), prior=prior,
                    on_progress=lambda done, total: log.debug(f"{shard.month} {tier.name} shard {shard.index + 1}: call {done}/{total}"),
                )
            except BudgetExceeded as exc:  # budget.on_exceeded: fail; a retry would fail the same way
                raise dg.Failure(f"{shard.month} shard {shard.index + 1}/{shard.count}: {exc}", allow_retries=False) from exc
            calibrator = stored_calibrator(conn, window, tier.name, result.version)
            rows = []
            for item in todo:
                raw = result.answers.get(item.item_id)
                # The bands compare calibrated confidence: what the golden run says the raw number is worth.
                answer = replace(raw, confidence=calibrated(calibrator, raw.confidence)) if raw else None
                failure = None if answer else result.failures.get(item.item_id, "no answer")
                if failure:
                    kind = _failure_kind(failure)
                    failure_reasons[kind] = failure_reasons.get(kind, 0) + 1
                before = earlier.get(item.item_id, {})
                signal = signal_of(tier, raw.label if raw else None, raw.confidence if raw else None,
                                   [a.label if a else None for a in before.values()])
                route = _route(stage, spec, item, answer, failure, before, gate, signal)
                routes[route.next_step] = routes.get(route.next_step, 0) + 1
                call_id = result.call_of.get(item.item_id)
                rows.append({
                    "month": naive_utc(window.start), "item_id": item.item_id, "tier": tier.name,
                    "provider": tier.provider, "model": tier.model, "prompt_version": result.version,
                    "label": answer.label if answer else None,
                    "confidence": answer.confidence if answer else None,
                    "raw_confidence": raw.confidence if raw else None,
                    "calibration_version": calibrator.version if calibrator else None,
                    "reason": answer.reason if answer else None,
                    "alternatives": json.dumps(answer.alternatives) if answer else None,
                    "failure": failure, "call_id": call_id, "reused": call_id in result.reused_calls,
                    "next_step": route.next_step, "route_reason": route.reason,
                    "signal": signal, "audited": route.audited,
                })
            append(conn, stage.asset, pd.DataFrame(rows))
            totals["items"] += len(todo)
            totals["calls_made"] += result.calls_made
            totals["calls_reused"] += len(result.reused_calls)
            totals["items_reused"] += result.reused_items
            totals["usd_paid"] += result.usd_paid
            totals["failures"] += sum(1 for item in todo if item.item_id not in result.answers)
            totals["budget_stopped"] += result.budget_stopped
            log.info(f"{shard.month} {stage.role} shard {shard.index + 1}/{shard.count}: {totals['items']}/{shard.items} "
                     f"items, {result.calls_made} calls made, {result.reused_items} items' answers reused, ${result.usd_paid:.4f} paid")
    after = providers[tier.provider].stats(tier.name).__dict__ if tier.provider != "local" else {}
    # A provider resource lives as long as its process: in process, its counts add up over the shards.
    stats = {name: value - stats_before.get(name, 0) for name, value in after.items()}
    return {"shard": shard, **totals, "routes": routes, "failure_reasons": failure_reasons, "stats": stats}


def _summed(results: list[dict], key: str) -> dict:
    out: dict = {}
    for result in results:
        for name, value in result[key].items():
            out[name] = out.get(name, 0) + value
    return out


def build(partitions: dg.PartitionsDefinition, stage: Stage, scale: Scale) -> dg.AssetsDefinition:
    """The tier as a graph of three steps: plan (cut the month into shards), shard (one step per shard,
    retried on its own, run at once by a multiprocess, celery or Kubernetes executor), collect (merge)."""
    ins = {name: dg.In(dg.Nothing) for name in stage.upstream}

    @dg.op(name=f"{stage.asset}_plan", ins=ins, out=dg.DynamicOut(shards.ShardSpec), pool=WAREHOUSE_POOL,
           tags={WRITER_TAG: "1"})
    def plan(context: dg.OpExecutionContext, project: ProjectResource, warehouse: Warehouse, local_model: LocalModelProvider,
             openai: OpenAIProvider, anthropic: AnthropicProvider):
        spec = project.load()
        _providers(local_model, openai, anthropic, spec.tier(stage.role))
        with warehouse.session() as conn:
            planned = _plan(stage, spec, conn, context.partition_time_window, warehouse.shard_folder(), context.log)
        for shard in planned:
            yield dg.DynamicOutput(shard, mapping_key=shard.mapping_key)

    @dg.op(name=f"{stage.asset}_shard", retry_policy=dg.RetryPolicy(max_retries=scale.shard_retries, delay=2,
                                                                      backoff=dg.Backoff.EXPONENTIAL))
    def label_shard(context: dg.OpExecutionContext, shard: shards.ShardSpec, project: ProjectResource,
                    local_model: LocalModelProvider, openai: OpenAIProvider, anthropic: AnthropicProvider) -> dict:
        spec = project.load()
        providers = _providers(local_model, openai, anthropic, spec.tier(stage.role))
        return _label_shard(stage, spec, shard, providers, context.run.run_id, context.log)

    @dg.op(name=f"{stage.asset}_collect", out={"result": dg.Out(dg.Nothing), "signal_check": dg.Out(dg.Nothing)},
           pool=WAREHOUSE_POOL, tags={WRITER_TAG: "1"})
    def collect(context: dg.OpExecutionContext, results: list[dict], project: ProjectResource, warehouse: Warehouse):
        spec = project.load()
        tier = spec.tier(stage.role)
        with warehouse.session() as conn:
            for result in sorted(results, key=lambda result: (result["shard"].month, result["shard"].index)):
                shard = result["shard"]
                now = shards.fingerprint(conn, shard, todo_sql=_todo_sql(stage, conn, shard.window),
                                         earlier_tables=_copied_tables(stage))
                if now != shard.fingerprint:
                    raise dg.Failure(
                        f"{shard.month} {stage.role}: the items or earlier answers of shard {shard.index + 1} changed "
                        "since its run planned it (an earlier tier was materialized again?). Its labels are not "
                        "merged; run the month again: stored calls are reused."
                    )
                shards.collect(conn, shard)
            # once the whole month is in: does it still look like the golden items its certificate was measured on?
            drifts = {month: recheck(conn, spec, stage.role, stage.asset, window)
                      for month, window in months_in(context.partition_time_window)}
            yield dg.Output(None, "result", metadata={**_metadata(tier, results), **drift_metadata(drifts)})
            yield checks.confidence_signal_present(conn, context.partition_time_window, stage.asset)

    @dg.graph_asset(name=stage.asset, description=stage.doc, ins={name: dg.AssetIn(dagster_type=dg.Nothing) for name in stage.upstream},
                    partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP,
                    kinds={"duckdb"}, check_specs=[checks.confidence_signal_spec(stage.asset)])
    def tier_labels(**upstream):
        result, check = collect(plan(**upstream).map(label_shard).collect())
        return {"result": result, f"{stage.asset}_{checks.CONFIDENCE_SIGNAL}": check}

    return tier_labels


def _metadata(tier: TierConfig | None, results: list[dict]) -> dict:
    totals = {name: sum((result[name] for result in results), 0.0 if name == "usd_paid" else 0)
              for name in ("items", "items_reused", "calls_made", "calls_reused", "usd_paid", "failures", "budget_stopped")}
    routes = _summed(results, "routes")
    routes_table = pd.DataFrame({"next_step": list(routes), "items": list(routes.values())})
    failure_reasons = _summed(results, "failure_reasons")
    return {
        "tier": tier.name if tier else "(none configured)",
        "model": f"{tier.provider}/{tier.model}" if tier else "",
        **totals,
        "shards": len(results),
        "usd_paid": dg.MetadataValue.float(round(totals["usd_paid"], 6)),
        "next_steps": markdown_table(routes_table),
        "failures_by_reason": dg.MetadataValue.md(
            "\n".join(f"- {reason}: {count}" for reason, count in sorted(failure_reasons.items())) or "_none_"
        ),
        **{f"provider_{name}": value for name, value in _summed(results, "stats").items()},
    }


def build_all(partitions: dg.PartitionsDefinition, scale: Scale) -> list[dg.AssetsDefinition]:
    return [build(partitions, stage, scale) for stage in STAGES]
