"""Stages 2-4: the model tiers. Each labels the items routed to it, through the call cache, and
decides with the routing bands where each item goes next (accepted, QA, adjudication, people)."""

import json
import re
from dataclasses import dataclass, replace

import dagster as dg
import pandas as pd

from labeling_dagster.assets.common import MODEL_TIER_TABLES, items_from, markdown_table, monthly_asset_args, months_in
from labeling_dagster.assets.golden_labels import calibrated, stored_calibrator
from labeling_dagster.core import routing
from labeling_dagster.core.labels import Answer, Item, PriorAnswer
from labeling_dagster.core.runner import run_tier
from labeling_dagster.project import Project, TierConfig
from labeling_dagster.resources.anthropic_provider import AnthropicProvider
from labeling_dagster.resources.local_model import LocalModelProvider
from labeling_dagster.resources.openai_provider import OpenAIProvider
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import (
    DuckDBCallCache,
    Warehouse,
    append,
    clear_window,
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
        ["raw_items", "golden_labels", "auto_labels"],
        """One row per item of the month the auto-labeler did not accept: the first-pass tier's label, calibrated and raw confidence, reason and
        alternatives (or why it gave none), the call that produced it, and where the item goes next
        (accept, qa, adjudication, human) with the reason. Read by qa_labels, review_queue, final_labels.""",
    ),
    Stage(
        "qa_labels",
        "qa",
        ["raw_items", "golden_labels", "first_pass_labels"],
        """One row per item the first pass sent to QA (QA band, random audit, first-pass failures):
        the QA tier's answer, given the first-pass answer, and where the item goes next.""",
    ),
    Stage(
        "adjudicated_labels",
        "adjudication",
        ["raw_items", "golden_labels", "first_pass_labels", "qa_labels"],
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


def _todo_chunks(stage: Stage, conn, window: dg.TimeWindow):
    """Chunks of (items, the earlier answers a prompt shows, the earlier answers routing compares),
    in item order, so a month of a million items never sits in memory at once."""
    for chunk in iter_window(conn, "raw_items", window, _todo_sql(stage, conn, window)):
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


def _route(stage: Stage, spec: Project, item: Item, answer, failure, earlier) -> routing.Route:
    has_qa, has_adjudication = spec.tier("qa") is not None, spec.tier("adjudication") is not None
    if stage.role == "first_pass":
        forced = routing.forced_human(spec.routing, item.text, item.metadata)
        return routing.after_first_pass(
            spec.routing, item.item_id, answer, failure,
            forced=forced, has_qa=has_qa, has_adjudication=has_adjudication,
        )
    if stage.role == "qa":
        first = next(iter(earlier.values()), None)
        return routing.after_qa(spec.routing, answer, failure, first, has_adjudication=has_adjudication)
    return routing.after_adjudication(spec.routing, answer, failure)


def build(partitions: dg.PartitionsDefinition, stage: Stage) -> dg.AssetsDefinition:
    @dg.asset(
        name=stage.asset,
        deps=stage.upstream,
        description=stage.doc,
        **monthly_asset_args(partitions),
        kinds={"duckdb"},
    )
    def tier_labels(
        context: dg.AssetExecutionContext,
        project: ProjectResource,
        warehouse: Warehouse,
        local_model: LocalModelProvider,
        openai: OpenAIProvider,
        anthropic: AnthropicProvider,
    ) -> dg.MaterializeResult:
        spec = project.load()
        tier = spec.tier(stage.role)
        providers = {"local": local_model, "openai": openai, "anthropic": anthropic}
        if tier is not None and tier.provider not in providers:
            raise dg.Failure(f"tier {tier.name}: provider {tier.provider!r} is not available in this deployment")
        if tier is not None and tier.provider != "local":
            providers[tier.provider].check_ready(tier)  # a missing key fails here, before any call
        failure_reasons: dict[str, int] = {}
        routes: dict[str, int] = {}
        totals = {"items": 0, "calls_made": 0, "calls_reused": 0, "usd_paid": 0.0, "failures": 0, "budget_stopped": 0}
        with warehouse.session() as conn:
            clear_window(conn, stage.asset, context.partition_time_window)
            tier = tier and _with_batch_default(tier, spec, _count_todo(stage, conn, context.partition_time_window))
            for month, window in months_in(context.partition_time_window):
                for todo, prior, earlier in _todo_chunks(stage, conn, window):
                    if tier is None:
                        if todo:
                            raise dg.Failure(f"{len(todo)} items were routed to {stage.role} but the project has no {stage.role} tier")
                        continue
                    cache = DuckDBCallCache(conn, window.start, context.run.run_id)
                    price = None if tier.provider == "local" else spec.price_catalog.price(tier.model)
                    result = run_tier(
                        providers[tier.provider], tier=tier, taxonomy=spec.taxonomy, items=todo, cache=cache,
                        price=price, budget=spec.budget, spent_before=cache.month_spend(), prior=prior,
                        on_progress=lambda done, total: context.log.debug(f"{month} {tier.name}: call {done}/{total}"),
                    )
                    calibrator = stored_calibrator(conn, window, tier.name, result.version)
                    rows = []
                    for item in todo:
                        raw = result.answers.get(item.item_id)
                        # The bands compare calibrated confidence: what the golden run says the raw number is worth.
                        answer = replace(raw, confidence=calibrated(calibrator, raw.confidence)) if raw else None
                        failure = None if answer else result.failures.get(item.item_id, "no answer")
                        if failure:
                            kind = re.sub(r"[\d.$']+|\(.*\)", "", failure.split(";")[0]).strip()
                            failure_reasons[kind] = failure_reasons.get(kind, 0) + 1
                        route = _route(stage, spec, item, answer, failure, earlier.get(item.item_id, {}))
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
                        })
                    append(conn, stage.asset, pd.DataFrame(rows))
                    totals["items"] += len(todo)
                    totals["calls_made"] += result.calls_made
                    totals["calls_reused"] += len(result.reused_calls)
                    totals["usd_paid"] += result.usd_paid
                    totals["failures"] += sum(1 for item in todo if item.item_id not in result.answers)
                    totals["budget_stopped"] += result.budget_stopped
                    context.log.info(f"{month} {stage.role}: {totals['items']} items so far, {result.calls_made} "
                                     f"calls made, {len(result.reused_calls)} reused, ${result.usd_paid:.4f} paid")
        routes_table = pd.DataFrame({"next_step": list(routes), "items": list(routes.values())})
        stats = providers[tier.provider].stats(tier.name).__dict__ if tier and tier.provider != "local" else {}
        return dg.MaterializeResult(
            metadata={
                "tier": tier.name if tier else "(none configured)",
                "model": f"{tier.provider}/{tier.model}" if tier else "",
                **totals,
                "usd_paid": dg.MetadataValue.float(round(totals["usd_paid"], 6)),
                "next_steps": markdown_table(routes_table),
                "failures_by_reason": dg.MetadataValue.md(
                    "\n".join(f"- {reason}: {count}" for reason, count in sorted(failure_reasons.items())) or "_none_"
                ),
                **{f"provider_{name}": value for name, value in stats.items()},
            }
        )

    return tier_labels


def build_all(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    return [build(partitions, stage) for stage in STAGES]
