"""Stage 6: one final row per raw item, labeled by the tier that settled it or pending people."""

import dagster as dg
import pandas as pd

from labeling_dagster import checks
from labeling_dagster.assets.common import LABEL_TABLES, monthly_asset_args, months_in
from labeling_dagster.assets.human_reviews import still_needed
from labeling_dagster.assets.review_queue import latest_rows
from labeling_dagster.core.metrics import Accuracy
from labeling_dagster.core.quality import golden_score, held_out_answers
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import (
    Warehouse,
    append,
    clear_window,
    iter_window,
    naive_utc,
    transaction,
)

CALL_SHARES = """
    SELECT call_id, usd / NULLIF(item_count, 0) AS usd_per_item FROM model_calls
    WHERE call_id IN (SELECT call_id FROM incoming_calls)
"""


def human_outcome(conn, window: dg.TimeWindow, item_ids: pd.Series, usd_per_review: float,
                  item_range: tuple[str, str] | None = None) -> pd.DataFrame:
    """Per item (aligned with `item_ids`): whether people settled it, their label and confidence, and its
    human cost: the labor of the reviews it received (whether or not the latest run still queues it) plus,
    while it is queued and unsettled, the reviews it still needs at the flat rate.
    `item_range` (first and last id, included) limits the reads to a page of the month."""
    bounds = [naive_utc(window.start), naive_utc(window.end)]
    where = "WHERE month >= ? AND month < ?"
    if item_range is not None:
        where, bounds = where + " AND item_id >= ? AND item_id <= ?", [*bounds, *item_range]
    queue = conn.execute(f"SELECT item_id, annotators_needed FROM review_queue {where}", bounds).df().set_index("item_id")
    merged = conn.execute(f"SELECT * FROM review_consensus {where}", bounds).df().set_index("item_id")
    queued = item_ids.isin(queue.index).to_numpy()
    needed = queue["annotators_needed"].reindex(item_ids).fillna(0).to_numpy()
    have = merged["n_annotators"].reindex(item_ids).fillna(0).to_numpy()
    settled = merged["settled"].reindex(item_ids).eq(True).to_numpy()
    again = merged["needs_another_review"].reindex(item_ids).eq(True).to_numpy()
    remaining = still_needed(needed, have, again, settled | ~queued)
    labor = merged["labor_usd"].reindex(item_ids).fillna(0.0).to_numpy()
    return pd.DataFrame({
        "settled": settled,
        "label": merged["label"].reindex(item_ids).to_numpy(),
        "confidence": merged["confidence"].reindex(item_ids).to_numpy(),
        "remaining_reviews": remaining.astype(int),
        "human_usd": labor + remaining * usd_per_review,
    }, index=item_ids.index)


def final_page(conn, window: dg.TimeWindow, raw: pd.DataFrame, usd_per_review: float) -> pd.DataFrame:
    """The final rows of a page of the month's raw items (item_id, content_hash; in id order). An item
    people settled is theirs (`decided_by = human`) whatever route the latest run gave it: a model's
    accept never overrides a person's settled label."""
    item_range = (raw["item_id"].iloc[0], raw["item_id"].iloc[-1])
    every, last = latest_rows(conn, window, "item_id, tier, label, confidence, call_id, next_step", item_range)
    final = raw[["item_id", "content_hash"]].reset_index(drop=True)
    final["month"] = naive_utc(window.start)
    if not len(last):
        return final.assign(status="unrouted", label=None, confidence=None, decided_by=None, cost_usd=0.0)
    outcome = last.reindex(final["item_id"])
    settled = (outcome["next_step"] == "accept").to_numpy()
    queued = (outcome["next_step"] == "human").to_numpy()
    final["status"] = ["labeled" if s else "pending_human" if q else "unrouted" for s, q in zip(settled, queued)]
    final["label"] = outcome["label"].where(settled).to_numpy()
    final["confidence"] = outcome["confidence"].where(settled).to_numpy()
    final["decided_by"] = outcome["tier"].where(settled).to_numpy()
    incoming_calls = every[["call_id"]].dropna()  # noqa: F841 (read by name in CALL_SHARES)
    shares = conn.execute(CALL_SHARES).df().set_index("call_id")["usd_per_item"]
    model_cost = every.assign(usd=every["call_id"].map(shares).fillna(0.0)).groupby("item_id")["usd"].sum()
    people = human_outcome(conn, window, final["item_id"], usd_per_review, item_range)
    by_people = people["settled"].to_numpy()
    final["status"] = final["status"].mask(by_people, "labeled")
    final["label"] = final["label"].mask(by_people, people["label"])
    final["confidence"] = final["confidence"].mask(by_people, people["confidence"])
    final["decided_by"] = final["decided_by"].mask(by_people, "human")
    final["cost_usd"] = final["item_id"].map(model_cost).fillna(0.0) + people["human_usd"].to_numpy()
    return final


def _write_final_labels(conn, window: dg.TimeWindow, per_review: float, answers: dict[str, str], spec):
    """Replace the window's final rows, a page of raw items at a time; then read back what the metadata
    and the checks report from the stored table."""
    score = Accuracy(0, 0, 0)
    clear_window(conn, "final_labels", window)
    for _, month_window in months_in(window):
        for raw in iter_window(conn, "raw_items", month_window):
            final = final_page(conn, month_window, raw[["item_id", "content_hash"]], per_review)
            page = golden_score(final, answers)
            score = Accuracy(score.golden_items + page.golden_items, score.labeled + page.labeled,
                             score.correct + page.correct)
            append(conn, "final_labels", final.drop(columns=["content_hash"]))
    bounds = [naive_utc(window.start), naive_utc(window.end)]
    statuses = dict(conn.execute(
        "SELECT status, COUNT(*) FROM final_labels WHERE month >= ? AND month < ? GROUP BY ALL", bounds).fetchall())
    by_tier = conn.execute(
        """SELECT decided_by, COUNT(*) FROM final_labels WHERE month >= ? AND month < ? AND status = 'labeled'
           GROUP BY ALL ORDER BY 2 DESC, 1""", bounds).fetchall()
    (cost_usd,) = conn.execute(
        "SELECT COALESCE(SUM(cost_usd), 0) FROM final_labels WHERE month >= ? AND month < ?", bounds).fetchone()
    (rejected,) = conn.execute("SELECT COUNT(*) FROM rejected_items WHERE month >= ? AND month < ?", bounds).fetchone()
    check_results = [checks.terminal_state(conn, window, rejected),
                     checks.labels_in_taxonomy(conn, window, spec.taxonomy.answers)]
    return score, (statuses, by_tier, cost_usd, rejected, check_results)


def build(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        **monthly_asset_args(partitions),
        deps=["raw_items", *LABEL_TABLES, "review_queue", "human_reviews"],
        check_specs=checks.final_label_specs("final_labels"),
        kinds={"duckdb"},
    )
    def final_labels(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """Exactly one row per raw item of the month: the label and who decided it (`decided_by`: a
        tier's name, or `human` when people's consensus settled it, which wins over any model decision
        whatever route the latest run gave the item), or status pending_human with no label while people
        have not; `cost_usd` is the item's share of its model calls plus the labor of its reviews (kept
        when a rerun no longer queues the item) and, while pending, the reviews it still needs. This is
        the table downstream users read."""
        spec = project.load()
        per_review = spec.human_review.usd_per_review
        answers = held_out_answers(spec)
        with warehouse.session() as conn:
            # A page of raw items at a time, so memory follows the page, not the month; in one
            # transaction, so readers never see a month half written.
            with transaction(conn):
                score, summary = _write_final_labels(conn, context.partition_time_window, per_review, answers, spec)
        statuses, by_tier, cost_usd, rejected, check_results = summary
        return dg.MaterializeResult(
            metadata={
                "items": sum(statuses.values()),
                "labeled": statuses.get("labeled", 0),
                "pending_human": statuses.get("pending_human", 0),
                "rejected": rejected,
                "decided_by": dg.MetadataValue.md("\n".join(f"- {t}: {n}" for t, n in by_tier) or "_none_"),
                "golden_items": score.golden_items,
                "golden_accuracy": dg.MetadataValue.float(round(score.accuracy, 4)) if score.accuracy is not None else dg.MetadataValue.text("n/a"),
                "cost_usd": dg.MetadataValue.float(round(float(cost_usd), 6)),
            },
            check_results=check_results,
        )

    return final_labels
