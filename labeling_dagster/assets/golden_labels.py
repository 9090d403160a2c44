"""The golden run and the certificates: every tier labels a fixed sample of the golden set each month,
as in production (QA shown the first pass, adjudication shown both); the sample is then sent down the
cascade as the month's items are (core/gate.py), so each tier is calibrated and its accept threshold
certified on the golden items that reach it, not on the whole sample."""

import json
from dataclasses import replace

import dagster as dg
import pandas as pd

from labeling_dagster import checks
from labeling_dagster.assets.common import GROUP, WAREHOUSE_POOL, WRITER_TAG, markdown_table, months_in
from labeling_dagster.assets.label_model import auto_accepts, month_auto_labeler
from labeling_dagster.core import routing
from labeling_dagster.core.calibration import Calibrator, calibrate_tier, reliability_markdown
from labeling_dagster.core.certify import Certificate
from labeling_dagster.core.gate import GoldenPath, TierAnswers, certify_golden_path
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


def _auto_accepted(conn, spec: Project, window: dg.TimeWindow, items: list[Item]) -> tuple[dict | set, dict | None]:
    """The golden items the month's auto-labeler accepts (they never reach the first pass), and its
    certificate row: the fixed-sequence threshold chosen on its out-of-fold held-out labels."""
    if not spec.auto_label.enabled:
        return set(), None
    labeler, facts = month_auto_labeler(conn, spec, window.start)
    probabilities = labeler.model.predict_proba([item.text for item in items])  # once: accepts and the reference
    _, taken, _ = auto_accepts(labeler, items, spec, probabilities)
    choice = labeler.choice
    reference = {"signal": [round(float(p), 6) for p in probabilities.max(axis=1)],
                 "labels": [labeler.model.classes[k] for k in probabilities.argmax(axis=1)]}
    row = {
        "stage": "auto_label", "tier": "auto_label", "model": "label_model", "prompt_version": facts["version"],
        "signal": "probability", "threshold": choice.threshold, "items": choice.held_out, "accepted": choice.accepted,
        "correct": round((choice.estimated_accuracy or 0) * choice.accepted), "bound": choice.lower_bound,
        "target": choice.target_accuracy, "delta": round(1 - choice.level, 6), "passed": choice.threshold is not None,
        "reason": choice.reason, "reference": json.dumps(reference),
    }
    return taken, row


def _certificate_rows(spec: Project, month_start, path: GoldenPath, versions: dict[str, str], auto_row: dict | None):
    quality = spec.quality
    rows = [auto_row] if auto_row else []
    for role, stage in path.stages.items():
        certificate = stage.certificate
        tier = spec.tier(role)
        signals, labels = stage.reference()
        rows.append({
            "stage": role, "tier": tier.name, "model": tier.model, "prompt_version": versions.get(role),
            "signal": certificate.signal, "threshold": certificate.threshold, "items": certificate.items,
            "accepted": certificate.accepted, "correct": certificate.correct, "bound": certificate.bound,
            "target": certificate.target, "delta": certificate.delta, "passed": certificate.passed,
            "reason": certificate.reason,
            "reference": json.dumps({"signal": [round(v, 6) for v in signals], "labels": labels}),
        })
    for row in rows:
        row.update(month=naive_utc(month_start), gate=quality.gate, audit_share=quality.audit_share, drift=None,
                   recheck=False)
    return rows


def _unless_budget_stopped(path: GoldenPath, results: dict, spec: Project) -> GoldenPath:
    """A golden run the budget stopped leaves items unanswered, which then go up a tier as if the tier
    had failed on them: the later tiers' calibration items are no longer the production route's. The
    tier the budget stopped and every tier after it are not certified that month."""
    stopped = None
    for role, stage in path.stages.items():
        stopped = stopped or (role if results[role].budget_stopped else None)
        if stopped:
            why = (f"the golden run's budget (quality.max_usd, or the month's budget) stopped the {stopped} tier before "
                   f"every golden item was answered ({results[stopped].budget_stopped} left): raise quality.max_usd")
            stage.certificate = replace(stage.certificate, threshold=None, accepted=0, correct=0, bound=None, reason=why)
    return path


def stored_certificate(conn, window: dg.TimeWindow, stage: str) -> Certificate | None:
    """The stage's certificate of the month, or None when the golden run made none."""
    row = conn.execute(
        "SELECT stage, threshold, items, accepted, correct, bound, target, delta, reason, signal FROM certificates "
        "WHERE month = ? AND stage = ?", [naive_utc(window.start), stage],
    ).fetchone()
    if row is None:
        return None
    names = ("stage", "threshold", "items", "accepted", "correct", "bound", "target", "delta", "reason", "signal")
    raw = dict(zip(names, row))
    return Certificate(tested=0, **{k: (None if isinstance(v, float) and v != v else v) for k, v in raw.items()})


def build(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.multi_asset(
        specs=[
            dg.AssetSpec("golden_labels", deps=["golden_set", "label_model"], kinds={"duckdb"},
                         description=GOLDEN_DOC, group_name=GROUP),
            dg.AssetSpec("certificates", deps=["golden_set", "label_model"], kinds={"duckdb"},
                         description=CERTIFICATES_DOC, group_name=GROUP),
        ],
        partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run(), pool=WAREHOUSE_POOL,
        op_tags={WRITER_TAG: "1"}, name="golden_labels", check_specs=[checks.confidence_signal_spec("golden_labels")],
    )
    def golden_labels(
        context: dg.AssetExecutionContext,
        project: ProjectResource,
        warehouse: Warehouse,
        local_model: LocalModelProvider,
        openai: OpenAIProvider,
        anthropic: AnthropicProvider,
    ):
        spec = project.load()
        providers = {"local": local_model, "openai": openai, "anthropic": anthropic}
        rows, calibrations, plots, certificates = [], [], [], []
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
                results, answers = {}, {}
                forced = [routing.forced_human(spec.routing, item.text, item.metadata) is not None for item in items]
                auto_taken, auto_row = _auto_accepted(conn, spec, window, items)

                def golden_path() -> GoldenPath:
                    return certify_golden_path(
                        spec, [gold[item.item_id] for item in items], answers,
                        auto_accepted=[item.item_id in auto_taken for item in items], forced=forced,
                        item_ids=[item.item_id for item in items],
                    )

                for tier in spec.tiers:
                    shown = prior
                    if tier.role == "adjudication" and "qa" in answers:
                        # as in production: QA's answer is shown only to items that went through QA
                        went = golden_path().stages["qa"].reached
                        qa_name = spec.tier("qa").name
                        shown = {item.item_id: [p for p in prior.get(item.item_id, []) if p.tier != qa_name or went[n]]
                                 for n, item in enumerate(items)}

                    if tier.provider != "local":
                        providers[tier.provider].check_ready(tier)
                    price = None if tier.provider == "local" else spec.price_catalog.price(tier.model)
                    # Two caps: the golden run's own (quality.max_usd) and what is left of the month's budget.
                    left = min(spec.quality.max_usd - spent, spec.budget.monthly_usd - cache.month_spend())
                    before = _provider_counts(providers[tier.provider], tier)
                    result = run_tier(
                        providers[tier.provider], tier=tier, taxonomy=spec.taxonomy, items=items, cache=cache,
                        price=price, budget=Budget(monthly_usd=max(left, 0.0)), spent_before=0.0,
                        prior=shown if tier.role != "first_pass" else None,
                    )
                    spent += result.usd_paid
                    if before is not None:
                        # A provider resource outlives the step (and serves the tier's shards too): the difference is ours.
                        counts = provider_stats.setdefault(tier.name, dict.fromkeys(GOLDEN_STATS, 0))
                        for name, value in _provider_counts(providers[tier.provider], tier).items():
                            counts[name] += value - before[name]
                    results[tier.role] = result
                    answers[tier.role] = TierAnswers(
                        tier,
                        [result.answers[i.item_id].label if i.item_id in result.answers else None for i in items],
                        [result.answers[i.item_id].confidence if i.item_id in result.answers else None for i in items],
                    )
                    for item in items:
                        answer = result.answers.get(item.item_id)
                        if answer:
                            prior.setdefault(item.item_id, []).append(
                                PriorAnswer(tier.name, answer.label, answer.confidence, answer.reason))
                path = _unless_budget_stopped(golden_path(), results, spec)
                certificates += _certificate_rows(spec, window.start, path,
                                                  {role: r.version for role, r in results.items()}, auto_row)
                for tier in spec.tiers:
                    result, stage = results[tier.role], path.stages[tier.role]
                    right = [a == gold[item.item_id] for item, a in zip(items, stage.labels)]
                    reached = [i for i in range(len(items)) if stage.reached[i] and stage.labels[i] is not None]
                    if stage.calibrator is not None and reached:
                        fitted = calibrate_tier([answers[tier.role].raw[i] for i in reached], [right[i] for i in reached],
                                                tier=tier.name, model=tier.model, prompt_version=result.version,
                                                method=spec.quality.calibration)
                        plots.append(f"### {month} {tier.name} (the {len(reached)} golden items that reach it)\n\n"
                                     + reliability_markdown(fitted))
                        calibrations.append({
                            "month": naive_utc(window.start), "tier": tier.name, "model": tier.model,
                            "prompt_version": result.version, "method": stage.calibrator.method,
                            "version": stage.calibrator.version, "calibrator": stage.calibrator.to_json(),
                            "golden_answers": len(reached), "ece_raw": fitted.ece_raw,
                            "ece_calibrated": fitted.ece_calibrated,
                        })
                    for n, item in enumerate(items):
                        answer = result.answers.get(item.item_id)
                        rows.append({
                            "month": naive_utc(window.start), "item_id": item.item_id, "tier": tier.name,
                            "role": tier.role, "provider": tier.provider, "model": tier.model,
                            "prompt_version": result.version, "gold": gold[item.item_id],
                            "label": answer.label if answer else None,
                            "raw_confidence": answer.confidence if answer else None,
                            "confidence": stage.calibrated[n],
                            "signal": stage.signal[n],
                            "correct": (answer.label == gold[item.item_id]) if answer else None,
                            "failure": None if answer else result.failures.get(item.item_id),
                            "forced_human": forced[n],
                            "call_id": result.call_of.get(item.item_id),
                            "reused": result.call_of.get(item.item_id) in result.reused_calls,
                            "reached": bool(stage.reached[n]),
                            "outcome": path.outcome[n],
                        })
                    scored = [r for r, a in zip(right, stage.labels) if a is not None]
                    context.log.info(f"{month} golden {tier.name}: {len(scored)}/{len(items)} answered, "
                                     f"accuracy {sum(scored) / max(len(scored), 1):.3f}, ${result.usd_paid:.4f} paid; "
                                     f"certificate: {stage.certificate.reason}")
            frame = pd.DataFrame(rows)
            replace_window(conn, "golden_labels", frame, context.partition_time_window)
            replace_window(conn, "calibrations", pd.DataFrame(calibrations), context.partition_time_window)
            replace_window(conn, "certificates", pd.DataFrame(certificates), context.partition_time_window)
            # a golden answer without the logprobs its tier requires shrinks the calibration set: say so
            signal_check = checks.confidence_signal_present(conn, context.partition_time_window, "golden_labels")
        scored = frame[frame["correct"].notna()] if len(frame) else frame
        accuracy = scored.assign(correct=scored["correct"].astype(float)).groupby("tier")["correct"].mean().round(4).to_dict() if len(scored) else {}
        yield dg.MaterializeResult(
            asset_key="golden_labels",
            metadata={
                "golden_items": len(items),
                "accuracy_by_tier": dg.MetadataValue.json(accuracy),
                "calibration": dg.MetadataValue.json(
                    {c["tier"]: {"method": c["method"], "version": c["version"], "ece_raw": round(c["ece_raw"], 4),
                                 "ece_calibrated": round(c["ece_calibrated"], 4)} for c in calibrations}),
                # requests, retries, 429s and repairs of each paid tier's golden calls (stored calls reused: 0)
                "provider_stats": dg.MetadataValue.json(provider_stats),
                "reliability": dg.MetadataValue.md("\n\n".join(plots) or "_no golden set or sample size 0_"),
            },
        )
        yield dg.MaterializeResult(asset_key="certificates", metadata=certificate_metadata(certificates, spec))
        yield signal_check

    return golden_labels


def certificate_metadata(rows: list[dict], spec: Project) -> dict:
    table = pd.DataFrame([{
        "month": row["month"].strftime("%Y-%m"), "stage": row["stage"], "tier": row["tier"],
        "threshold": "none" if row["threshold"] is None else f"{row['threshold']:.4g}",
        "items behind it": row["items"], "accepted": row["accepted"],
        "lower bound": "" if row["bound"] is None else f"{row['bound']:.3f}",
        "passed": "yes" if row["passed"] else "NO: accepts nothing",
    } for row in rows])
    failed = [f"{row['month']:%Y-%m} {row['stage']}: {row['reason']}" for row in rows if not row["passed"]]
    return {
        "gate": spec.quality.gate,
        "target_accuracy": spec.quality.target_accuracy,
        "delta": spec.quality.delta,
        "stages_certified": int(sum(bool(row["passed"]) for row in rows)),
        "stages_not_certified": len(failed),
        "certificates": markdown_table(table),
        "why_not_certified": dg.MetadataValue.md("\n".join(f"- {line}" for line in failed) or "_every stage certified_"),
    }


GOLDEN_DOC = """One row per golden sample item and tier: the tier's label, raw and calibrated confidence, the
signal its certificate compares, whether the item reaches that tier on the production route (after
the auto-labeler and the earlier tiers) and which stage accepted it there (`outcome`). Also writes
`calibrations`: per tier and prompt version, the calibrator fitted on the golden items that reach it.
Its calls are costed like any other (capped by quality.max_usd) and cached, so months after the first
reuse them."""

CERTIFICATES_DOC = """Per month and stage (auto_label, first_pass, qa, adjudication): the certified accept
threshold (fixed-sequence Clopper-Pearson test on the golden items that reach the stage; the auto-labeler
on its out-of-fold held-out labels), the calibration items behind it, how many it accepts, their
accuracy's lower bound, passed or not and why, and the reference distribution the month's items are
compared with for drift. A stage whose certificate did not pass accepts nothing that month
(quality.gate: certified). Written in the golden run's step."""
