"""The golden run: every tier labels a fixed sample of the golden set each month, as in production
(QA shown the first pass, adjudication shown both), and each tier is calibrated on its answers."""

import dagster as dg
import pandas as pd

from labeling_dagster.assets.common import WRITER_TAG, monthly_asset_args, months_in
from labeling_dagster.core import routing
from labeling_dagster.core.calibration import Calibrator, calibrate_tier, reliability_markdown
from labeling_dagster.core.labels import Item, PriorAnswer
from labeling_dagster.core.quality import golden_items
from labeling_dagster.core.runner import run_tier
from labeling_dagster.project import Budget, Project
from labeling_dagster.resources.anthropic_provider import AnthropicProvider
from labeling_dagster.resources.local_model import LocalModelProvider
from labeling_dagster.resources.openai_provider import OpenAIProvider
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import DuckDBCallCache, Warehouse, naive_utc, replace_window


def golden_sample(project: Project) -> tuple[list[Item], dict[str, str]]:
    """The same golden items every month (the smallest content hashes), so their calls are paid once."""
    golden = golden_items(project)
    chosen = sorted(golden)[: project.quality.golden_sample_size]
    items = [Item(f"golden-{digest[:16]}", golden[digest][0], digest) for digest in chosen]
    return items, {item.item_id: golden[item.content_hash][1] for item in items}


def build_golden_set() -> dg.AssetsDefinition:
    @dg.asset(group_name="models", pool="warehouse", op_tags={WRITER_TAG: "1"}, kinds={"duckdb"})
    def golden_set(project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """The project's human-verified items (golden_set in the project file), one row each: text,
        gold label, content hash, and whether it is in the golden run's sample (the items every tier
        labels each month and is calibrated on; the rest only score the pipeline's own labels)."""
        spec = project.load()
        if spec.golden_set is None:
            frame = pd.DataFrame()
        else:
            golden = golden_items(spec)
            sample = set(sorted(golden)[: spec.quality.golden_sample_size])
            frame = pd.DataFrame(
                [{"item_id": f"golden-{digest[:16]}", "text": text, "label": label, "content_hash": digest,
                  "in_golden_sample": digest in sample} for digest, (text, label) in golden.items()]
            )
        with warehouse.session() as conn:
            conn.execute("DELETE FROM golden_set")
            if len(frame):
                incoming = frame  # noqa: F841 (read by name in the SQL below)
                conn.execute("INSERT INTO golden_set BY NAME SELECT * FROM incoming")
        return dg.MaterializeResult(metadata={
            "items": len(frame),
            "in_golden_sample": int(frame["in_golden_sample"].sum()) if len(frame) else 0,
            "labels": int(frame["label"].nunique()) if len(frame) else 0,
            "source": str(spec.resolve(spec.golden_set.path)) if spec.golden_set else "none",
        })

    return golden_set


def stored_calibrator(conn, window: dg.TimeWindow, tier: str, prompt_version: str) -> Calibrator | None:
    """The calibrator fitted this month for the tier's current prompt version, or None."""
    row = conn.execute(
        "SELECT calibrator FROM calibrations WHERE month = ? AND tier = ? AND prompt_version = ?",
        [naive_utc(window.start), tier, prompt_version],
    ).fetchone()
    return Calibrator.from_json(row[0]) if row else None


def calibrated(calibrator: Calibrator | None, confidence: float) -> float:
    return calibrator.apply_one(confidence) if calibrator else confidence


GOLDEN_STATS = ("requests", "retries", "rate_limited", "repairs")


def _provider_counts(provider, tier) -> dict[str, int] | None:
    """The provider's counters for the tier (TierStats), None for a local tier (it counts nothing)."""
    if tier.provider == "local":
        return None
    stats = provider.stats(tier.name)
    return {name: getattr(stats, name) for name in GOLDEN_STATS}


def build(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(**monthly_asset_args(partitions), deps=["golden_set"], kinds={"duckdb"})
    def golden_labels(
        context: dg.AssetExecutionContext,
        project: ProjectResource,
        warehouse: Warehouse,
        local_model: LocalModelProvider,
        openai: OpenAIProvider,
        anthropic: AnthropicProvider,
    ) -> dg.MaterializeResult:
        """One row per golden sample item and tier: the tier's label, raw and calibrated confidence,
        and whether it matches the gold label. Also writes `calibrations`: per tier and prompt
        version, the calibrator fitted on these answers (isotonic or Platt, versioned), with the
        calibration error before and after. The tiers apply it before their routing bands; the
        quality report and the band recommender read both tables. Its calls are costed like any other
        (capped by quality.max_usd) and cached, so months after the first reuse them."""
        spec = project.load()
        providers = {"local": local_model, "openai": openai, "anthropic": anthropic}
        rows, calibrations, plots = [], [], []
        provider_stats: dict[str, dict[str, int]] = {}  # per paid tier, summed over the months
        items, gold = golden_sample(spec) if spec.golden_set and spec.quality.golden_sample_size else ([], {})
        with warehouse.session() as conn:
            for month, window in months_in(context.partition_time_window):
                if not items:
                    break
                cache = DuckDBCallCache(conn, window.start, context.run.run_id, stage="golden_labels")
                spent = conn.execute(
                    # every attempt the golden run paid this month, kept or superseded (older rows: by their labels)
                    "SELECT COALESCE(SUM(usd), 0) FROM model_calls WHERE month = ? AND (stage = 'golden_labels' OR "
                    "(stage IS NULL AND call_id IN (SELECT call_id FROM golden_labels WHERE month = ?)))",
                    [naive_utc(window.start)] * 2,
                ).fetchone()[0]
                prior: dict[str, list[PriorAnswer]] = {}
                for tier in spec.tiers:
                    if tier.provider != "local":
                        providers[tier.provider].check_ready(tier)
                    price = None if tier.provider == "local" else spec.price_catalog.price(tier.model)
                    # Two caps: the golden run's own (quality.max_usd) and what is left of the month's budget.
                    left = min(spec.quality.max_usd - spent, spec.budget.monthly_usd - cache.month_spend())
                    before = _provider_counts(providers[tier.provider], tier)
                    result = run_tier(
                        providers[tier.provider], tier=tier, taxonomy=spec.taxonomy, items=items, cache=cache,
                        price=price, budget=Budget(monthly_usd=max(left, 0.0)), spent_before=0.0,
                        prior=prior if tier.role != "first_pass" else None,
                    )
                    spent += result.usd_paid
                    if before is not None:
                        # A provider resource outlives the step (and serves the tier's shards too): the difference is ours.
                        counts = provider_stats.setdefault(tier.name, dict.fromkeys(GOLDEN_STATS, 0))
                        for name, value in _provider_counts(providers[tier.provider], tier).items():
                            counts[name] += value - before[name]
                    answered = [item for item in items if item.item_id in result.answers]
                    raw = [result.answers[item.item_id].confidence for item in answered]
                    right = [result.answers[item.item_id].label == gold[item.item_id] for item in answered]
                    calibrator = None
                    if spec.quality.calibration != "none" and answered:
                        fitted = calibrate_tier(raw, right, tier=tier.name, model=tier.model,
                                                prompt_version=result.version, method=spec.quality.calibration)
                        calibrator = fitted.calibrator
                        plots.append(f"### {month} {tier.name}\n\n" + reliability_markdown(fitted))
                        calibrations.append({
                            "month": naive_utc(window.start), "tier": tier.name, "model": tier.model,
                            "prompt_version": result.version, "method": calibrator.method,
                            "version": calibrator.version, "calibrator": calibrator.to_json(),
                            "golden_answers": len(answered), "ece_raw": fitted.ece_raw,
                            "ece_calibrated": fitted.ece_calibrated,
                        })
                    for item in items:
                        answer = result.answers.get(item.item_id)
                        rows.append({
                            "month": naive_utc(window.start), "item_id": item.item_id, "tier": tier.name,
                            "role": tier.role, "provider": tier.provider, "model": tier.model,
                            "prompt_version": result.version, "gold": gold[item.item_id],
                            "label": answer.label if answer else None,
                            "raw_confidence": answer.confidence if answer else None,
                            "confidence": calibrated(calibrator, answer.confidence) if answer else None,
                            "correct": (answer.label == gold[item.item_id]) if answer else None,
                            "failure": None if answer else result.failures.get(item.item_id),
                            "forced_human": routing.forced_human(spec.routing, item.text, item.metadata) is not None,
                            "call_id": result.call_of.get(item.item_id),
                            "reused": result.call_of.get(item.item_id) in result.reused_calls,
                        })
                        if answer:
                            prior.setdefault(item.item_id, []).append(
                                PriorAnswer(tier.name, answer.label, answer.confidence, answer.reason))
                    context.log.info(f"{month} golden {tier.name}: {len(answered)}/{len(items)} answered, "
                                     f"accuracy {sum(right) / max(len(right), 1):.3f}, ${result.usd_paid:.4f} paid")
            frame = pd.DataFrame(rows)
            replace_window(conn, "golden_labels", frame, context.partition_time_window)
            replace_window(conn, "calibrations", pd.DataFrame(calibrations), context.partition_time_window)
        scored = frame[frame["correct"].notna()] if len(frame) else frame
        accuracy = scored.assign(correct=scored["correct"].astype(float)).groupby("tier")["correct"].mean().round(4).to_dict() if len(scored) else {}
        return dg.MaterializeResult(
            metadata={
                "golden_items": len(items),
                "accuracy_by_tier": dg.MetadataValue.json(accuracy),
                "calibration": dg.MetadataValue.json(
                    {c["tier"]: {"method": c["method"], "version": c["version"], "ece_raw": round(c["ece_raw"], 4),
                                 "ece_calibrated": round(c["ece_calibrated"], 4)} for c in calibrations}),
                # requests, retries, 429s and repairs of each paid tier's golden calls (stored calls reused: 0)
                "provider_stats": dg.MetadataValue.json(provider_stats),
                "reliability": dg.MetadataValue.md("\n\n".join(plots) or "_no golden set or sample size 0_"),
            }
        )

    return golden_labels

