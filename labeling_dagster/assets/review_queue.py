"""Stage 5: the items no model settled, with everything a reviewer needs, exported as files. An item
people have already settled is never exported again; one with some answers says how many it has and
how many more it needs."""

import json

import dagster as dg
import pandas as pd

from labeling_dagster.assets.common import LABEL_TABLES, monthly_asset_args, months_in
from labeling_dagster.assets.human_reviews import read_month_reviews, still_needed
from labeling_dagster.assets.label_model import stored_auto_labeler
from labeling_dagster.core.autolabel import plan_reviews
from labeling_dagster.core.labels import Item
from labeling_dagster.core.review_formats import ExportWriter, QueueRow
from labeling_dagster.resources import warehouse as storage
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import Warehouse, append, clear_window, naive_utc, read_window

TIER_ROW_COLUMNS = "item_id, tier, provider, model, label, confidence, reason, failure, alternatives, call_id, next_step, route_reason"


def _tier_rows_sql(columns: str, where: str = "") -> str:
    """Every tier row of the window in tier order (`stage`), optionally for some items only."""
    return " UNION ALL ".join(
        f"SELECT {columns}, {stage} AS stage FROM {table} WHERE month >= $start AND month < $end {where}"
        for stage, table in enumerate(LABEL_TABLES)
    )


def latest_rows(conn, window: dg.TimeWindow, columns: str = TIER_ROW_COLUMNS,
                item_range: tuple[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every tier row of the window (in tier order) and, per item, the last tier's row, which holds
    the item's routing outcome. `columns`: what the caller needs (item_id and next_step at least);
    `item_range`: only the items from the first id to the last, both included (a page of the month)."""
    where, params = "", _bounds(window)
    if item_range is not None:
        where, params = "AND item_id >= $first AND item_id <= $last", params | dict(zip(("first", "last"), item_range))
    every = conn.execute(f"SELECT * FROM ({_tier_rows_sql(columns, where)}) ORDER BY item_id, stage", params).df()
    if not len(every):
        return every, every
    return every, every.groupby("item_id", sort=False).tail(1).set_index("item_id")


def _bounds(window: dg.TimeWindow) -> dict:
    return {"start": naive_utc(window.start), "end": naive_utc(window.end)}


def queued_items(conn, window: dg.TimeWindow) -> pd.DataFrame:
    """The items whose last tier sent them to people, with why (indexed by item_id, in item order)."""
    return conn.execute(
        f"""SELECT item_id, route_reason FROM ({_tier_rows_sql("item_id, next_step, route_reason")})
            QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY stage DESC) = 1 AND next_step = 'human'
            ORDER BY item_id""",
        _bounds(window),
    ).df().set_index("item_id")


def queue_rows(every: pd.DataFrame, queued: pd.DataFrame, texts: pd.Series, definitions: dict[str, str],
               review, people: dict[str, dict] | None = None) -> list[QueueRow]:
    """One QueueRow per queued item, in one pass over the tier rows (not one scan per item). `people`:
    the month's consensus per reviewed item (human_reviews.read_month_reviews), for the answers each
    item already has and how many more it needs."""
    people = people or {}
    wanted = set(queued.index)
    history: dict[str, list[dict]] = {}
    best: dict[str, dict] = {}
    for row in every[every["item_id"].isin(wanted)].to_dict("records"):  # sorted by item, then tier order
        labeled = pd.notna(row["label"])
        history.setdefault(row["item_id"], []).append({
            "tier": row["tier"], "provider": row["provider"], "model": row["model"],
            "label": row["label"] if labeled else None,
            "confidence": float(row["confidence"]) if labeled and pd.notna(row["confidence"]) else None,
            "reason": (row["reason"] if labeled else row["failure"]) or "",
        })
        if labeled:
            best[row["item_id"]] = row
    rows = []
    for item_id, reason in zip(queued.index, queued["route_reason"]):
        top = best.get(item_id)
        label = None if top is None else top["label"]
        needed = review.annotators_for(label)
        answered = people.get(item_id)
        have = int(answered["n_annotators"]) if answered else 0
        more = needed if not answered else int(still_needed(
            needed, have, answered["needs_another_review"], answered["settled"]))
        rows.append(QueueRow.from_mapping({
            "item_id": item_id,
            "text": texts[item_id],
            "candidate_label": label,
            "confidence": None if top is None else top["confidence"],
            "reason": "" if top is None else top["reason"],
            "alternatives": [] if top is None else top["alternatives"],
            "label_definition": definitions.get(label, "") if label else "",
            "tier_answers": history.get(item_id, []),
            "queue_reason": reason,
            "annotators_needed": needed,
            "reviews_so_far": have,
            "reviews_still_needed": more,
        }))
    return rows


def _review_plan(conn, spec, window: dg.TimeWindow, queued: pd.DataFrame,
                 answered: list[str] = ()) -> dict[str, str] | None:
    """With a monthly review budget smaller than the queue: the items people get (active learning), or
    None when they can review the whole queue. The others wait in the queue, unexported. Items a rule
    reserves for people and the stages' audit samples (which check the certificates) come first. Items people
    already answered (`answered`, settled or not) spent budget first: they keep their place (marked
    `answered`), so a rerun after reviews came in does not hand out a fresh budget of new items."""
    budget = spec.human_review.monthly_review_budget
    if budget is None or len(queued) <= budget:
        return None
    # The month's own auto-labeler: the version auto_labels used (trained on what was known before the month).
    labeler = None
    if spec.auto_label.enabled:
        (version,) = conn.execute("SELECT any_value(prompt_version) FROM auto_labels WHERE month >= ? AND month < ?",
                                  [naive_utc(window.start), naive_utc(window.end)]).fetchone()
        labeler = stored_auto_labeler(conn, spec, version) if version else None
    queued_ids = set(queued.index)
    answered = [item_id for item_id in answered if item_id in queued_ids]
    spent = set(answered)
    required = answered + [item_id for item_id, reason in zip(queued.index, queued["route_reason"])
                           if item_id not in spent
                           and reason.startswith(("always to people", "label ", "audit of "))]
    texts = read_window(conn, "raw_items", window).set_index("item_id")["text"]
    pool = [Item(item_id, texts[item_id], "") for item_id in queued.index]
    plan = plan_reviews(pool, budget, required=required, model=labeler.model if labeler else None,
                        strategy=spec.human_review.review_selection, random_share=spec.human_review.random_share)
    return {item_id: "answered" if item_id in spent else why for item_id, why in plan.items()}


def build(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(**monthly_asset_args(partitions), deps=["raw_items", "label_model", *LABEL_TABLES], kinds={"duckdb", "csv"})
    def review_queue(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """One row per item routed to people: the best model answer so far (candidate label, confidence,
        reason, alternatives), the label's definition, what each tier answered, and why it is queued.
        With human_review.monthly_review_budget smaller than the queue, `selected_for_review` marks the
        items people get (rules first, a random share, then the ones that teach the auto-labeler most);
        the rest wait, marked `waiting`, and are not exported.
        People's answers so far are read from the month's review files (`<reviews_dir>/<YYYY-MM>/`, the
        files human_reviews ingests; read here, not from its table, which is downstream): an item they
        have settled stays in the table as `settled` but is never exported again; the others carry
        `reviews_so_far` and `reviews_still_needed` in every export format. Under a review budget, items
        already answered keep their place in it (`answered`), ahead of the rule-reserved ones.
        Also written per month as CSV, JSONL, Label Studio tasks and a Ground Truth manifest under the
        project's exports folder, which reviewers open and fill. A large queue moves a page at a time."""
        spec = project.load()
        definitions = {label.name: label.description for label in spec.taxonomy.labels}
        paths, reasons = {}, {}
        counts = {"queued": 0, "selected": 0, "settled": 0, "partly_reviewed": 0}
        with warehouse.session() as conn:
            clear_window(conn, "review_queue", context.partition_time_window)
            for month, window in months_in(context.partition_time_window):
                queued = queued_items(conn, window)
                people = read_month_reviews(conn, spec, month, window).by_item()
                done = {item_id for item_id, row in people.items() if row["settled"]}
                plan = _review_plan(conn, spec, window, queued, answered=sorted(people))
                stamp = naive_utc(window.start)
                with ExportWriter(spec.exports_path, month, spec.taxonomy.names, definitions,
                                  none_label=spec.taxonomy.none_label) as export:
                    for start in range(0, len(queued), storage.CHUNK_ROWS):
                        page = queued.iloc[start : start + storage.CHUNK_ROWS]
                        page_ids = pd.DataFrame({"item_id": page.index})  # noqa: F841 (read by name in the SQL)
                        every = conn.execute(
                            f"SELECT * FROM ({_tier_rows_sql(TIER_ROW_COLUMNS, 'AND item_id IN (SELECT item_id FROM page_ids)')}) "
                            "ORDER BY item_id, stage", _bounds(window)).df()
                        texts = conn.execute(
                            "SELECT item_id, text FROM raw_items WHERE month >= $start AND month < $end "
                            "AND item_id IN (SELECT item_id FROM page_ids)", _bounds(window)).df().set_index("item_id")["text"]
                        rows = queue_rows(every, page, texts, definitions, spec.human_review, people)
                        wanted = [row for row in rows
                                  if row.item_id not in done and (plan is None or row.item_id in plan)]
                        export.add(wanted)
                        counts["partly_reviewed"] += sum(1 for row in wanted if row.reviews_so_far)
                        counts["settled"] += sum(1 for row in rows if row.item_id in done)
                        table = pd.DataFrame([
                            {**row.to_json(), "month": stamp,
                             "selected_for_review": row.item_id not in done and (plan is None or row.item_id in plan),
                             "selection": "settled" if row.item_id in done else
                             "all" if plan is None else plan.get(row.item_id, "waiting")}
                            for row in rows
                        ])
                        if len(table):
                            table["alternatives"] = table["alternatives"].map(json.dumps)
                            table["tier_answers"] = table["tier_answers"].map(json.dumps)
                        append(conn, "review_queue", table)
                        counts["selected"] += int(table["selected_for_review"].sum()) if len(table) else 0
                paths[month] = export.paths
                counts["queued"] += len(queued)
                for reason, n in queued["route_reason"].str.replace(r"[0-9.]+", "N", regex=True).value_counts().items():
                    reasons[reason] = reasons.get(reason, 0) + int(n)
        return dg.MaterializeResult(
            metadata={
                "queued": counts["queued"],
                "selected_for_review": counts["selected"],
                "waiting_over_budget": counts["queued"] - counts["selected"] - counts["settled"],
                "settled_by_people_not_exported": counts["settled"],
                "exported_with_some_answers": counts["partly_reviewed"],
                "exports": dg.MetadataValue.md(
                    "\n".join(f"- {month}: " + ", ".join(f"[{fmt}]({path})" for fmt, path in files.items())
                               for month, files in paths.items())
                ),
                "why_queued": dg.MetadataValue.md("\n".join(f"- {r}: {n}" for r, n in reasons.items()) or "_none_"),
            }
        )

    return review_queue
