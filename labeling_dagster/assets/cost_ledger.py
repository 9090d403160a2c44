"""Stage 7: what the month cost, by tier and model, with human review, against the budget."""

import dagster as dg
import pandas as pd

from labeling_dagster import checks
from labeling_dagster.assets.common import LABEL_TABLES, monthly_asset_args, months_in
from labeling_dagster.assets.final_labels import human_outcome
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import Warehouse, naive_utc, read_columns, read_window, replace_window

# Money: every attempt stored in model_calls is counted once, in the month that paid it (a superseded
# call, a repair, an error's retry included), by the stage that paid it (the golden run or the tier).
# Items and reuse come from the current label rows: a call first paid in another month (the same golden
# item seen again) costs this month nothing and shows only as reused.
MODEL_ROWS = """
    WITH golden_calls AS (
        SELECT DISTINCT call_id FROM incoming_labels WHERE starts_with(tier, 'golden_run:') AND call_id IS NOT NULL
    ), paid AS (
        SELECT CASE WHEN stage = 'golden_labels' OR (stage IS NULL AND call_id IN (SELECT call_id FROM golden_calls))
                    THEN 'golden_run:' || tier ELSE tier END AS tier,
               provider, model, COUNT(*) AS calls,
               SUM(input_tokens) AS input_tokens, SUM(cached_input_tokens) AS cached_input_tokens,
               SUM(output_tokens) AS output_tokens, SUM(compute_s) AS compute_s, SUM(usd) AS usd
        FROM model_calls WHERE month = $month GROUP BY ALL
    ), used AS (
        SELECT tier, provider, model, COUNT(DISTINCT item_id) AS items,
               COUNT(DISTINCT call_id) FILTER (WHERE reused) AS calls_reused
        FROM incoming_labels GROUP BY ALL
    ), reused AS (
        SELECT u.tier, u.provider, u.model, SUM(c.usd) AS usd_reused
        FROM (SELECT DISTINCT tier, provider, model, call_id FROM incoming_labels WHERE reused) u
        JOIN model_calls c ON c.call_id = u.call_id AND c.month = $month GROUP BY ALL
    )
    SELECT tier, provider, model, COALESCE(u.items, 0) AS items, COALESCE(p.calls, 0) AS calls,
           COALESCE(u.calls_reused, 0) AS calls_reused, COALESCE(p.input_tokens, 0) AS input_tokens,
           COALESCE(p.cached_input_tokens, 0) AS cached_input_tokens, COALESCE(p.output_tokens, 0) AS output_tokens,
           COALESCE(p.compute_s, 0) AS compute_s, COALESCE(p.usd, 0) AS usd, COALESCE(r.usd_reused, 0) AS usd_reused
    FROM paid p FULL OUTER JOIN used u USING (tier, provider, model) LEFT JOIN reused r USING (tier, provider, model)
    ORDER BY tier, provider, model
"""


def build(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        **monthly_asset_args(partitions),
        deps=["golden_labels", *LABEL_TABLES, "review_queue", "human_reviews", "final_labels"],
        check_specs=checks.ledger_specs("cost_ledger"),
        kinds={"duckdb"},
    )
    def cost_ledger(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """Per month: one `model` row per tier and model, and per tier of the golden run
        (`golden_run:<tier>`) (items, calls, calls served from the call cache,
        tokens as the provider reported them, compute seconds, USD, and the USD of reused calls, which
        the latest run did not pay again); a `human_review` row (reviews received: their recorded
        seconds at the hourly rate, or hourly rate / reviews per hour each); a `human_review_pending`
        row (the reviews the queue still needs, estimated at the flat rate); and a `total` row. Each row
        carries the month's budget."""
        spec = project.load()
        review = spec.human_review
        rows = []
        with warehouse.session() as conn:
            for month, window in months_in(context.partition_time_window):
                stamp = naive_utc(window.start)
                labels = conn.execute(" UNION ALL ".join(
                    f"SELECT item_id, {tier} AS tier, provider, model, call_id, reused FROM {table} "
                    "WHERE month >= $start AND month < $end"
                    for table, tier in [*((t, "tier") for t in LABEL_TABLES), ("golden_labels", "'golden_run:' || tier")]
                ), {"start": stamp, "end": naive_utc(window.end)}).df()
                incoming_labels = labels  # noqa: F841 (read by name in MODEL_ROWS)
                model = conn.execute(MODEL_ROWS, {"month": stamp}).df().assign(kind="model")
                queue = read_columns(conn, "review_queue", window, "item_id")
                done = read_window(conn, "review_consensus", window)
                pending = human_outcome(conn, window, queue["item_id"], review.usd_per_review) if len(queue) else None
                rate = f"${review.hourly_rate_usd:g}/h at {review.reviews_per_hour:g} reviews/h"
                human = pd.DataFrame([
                    {"kind": "human", "tier": "human_review", "provider": "people", "model": rate,
                     "items": len(done), "calls": len(read_columns(conn, "human_reviews", window, "item_id")),
                     "usd": float(done["labor_usd"].sum()) if len(done) else 0.0},
                    {"kind": "human", "tier": "human_review_pending", "provider": "people", "model": f"estimate, {rate}",
                     "items": int((~pending["settled"]).sum()) if pending is not None else 0,
                     "calls": int(pending["remaining_reviews"].sum()) if pending is not None else 0,
                     "usd": float(pending["remaining_reviews"].sum()) * review.usd_per_review if pending is not None else 0.0},
                ])
                parts = pd.concat([model, human], ignore_index=True)
                total = {"kind": "total", "tier": "total", "provider": "", "model": "", "items": None,
                         **{c: parts[c].fillna(0).sum() for c in ("calls", "calls_reused", "input_tokens",
                            "cached_input_tokens", "output_tokens", "compute_s", "usd", "usd_reused")}}
                month_rows = pd.concat([parts, pd.DataFrame([total])], ignore_index=True)
                month_rows["month"] = stamp
                month_rows["budget_usd"] = spec.budget.monthly_usd
                rows.append(month_rows)
            ledger = pd.concat(rows, ignore_index=True)
            for column in ("calls_reused", "input_tokens", "cached_input_tokens", "output_tokens"):
                ledger[column] = ledger[column].fillna(0).astype("int64")
            ledger[["compute_s", "usd_reused"]] = ledger[["compute_s", "usd_reused"]].fillna(0.0)
            replace_window(conn, "cost_ledger", ledger, context.partition_time_window)
            conn_totals = checks.billed_by_month(conn, context.partition_time_window)
        shown = ledger[["month", "kind", "tier", "model", "items", "calls", "calls_reused", "usd"]].assign(
            month=ledger["month"].dt.strftime("%Y-%m"), usd=ledger["usd"].round(4))
        totals = ledger[ledger["kind"] == "total"]
        return dg.MaterializeResult(
            metadata={
                "total_usd": dg.MetadataValue.float(round(float(totals["usd"].sum()), 6)),
                "model_usd": dg.MetadataValue.float(round(float(ledger[ledger["kind"] == "model"]["usd"].sum()), 6)),
                "human_usd": dg.MetadataValue.float(round(float(ledger[ledger["kind"] == "human"]["usd"].sum()), 6)),
                "budget_usd": spec.budget.monthly_usd,
                "ledger": dg.MetadataValue.md(shown.to_markdown(index=False)),
            },
            check_results=[checks.ledger_sums(ledger), checks.ledger_matches_calls(conn_totals, ledger),
                           checks.within_budget(ledger, spec.budget.monthly_usd)],
        )

    return cost_ledger
