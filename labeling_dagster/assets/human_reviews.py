"""Stage 6: what people answered. Completed review files of the month (Label Studio export, Ground
Truth output manifest, CSV) are ingested, bad rows reported beside each file, and the answers merged
into one label per item by consensus. A person may answer the taxonomy's none_label ("none of these"):
the item is out of scope, and that is a valid outcome like any label.

A review is kept when its item is an item of the month (in raw_items), whether or not the latest run
still queues that item: a rerun that routes differently (a new tier, other bands) never throws
people's answers, or their labor cost, away. Only answers naming no item of the month are rejected."""

from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from labeling_dagster.assets.common import LABEL_TABLES, MODEL_TIER_TABLES, markdown_table, monthly_asset_args, months_in
from labeling_dagster.core.consensus import consensus
from labeling_dagster.core.review_formats import (
    RejectedRow,
    file_fingerprint,
    read_reviews,
    review_files,
    write_rejection_report,
)
from labeling_dagster.project import Project
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import Warehouse, naive_utc, read_window, replace_window


def labor_usd(seconds: pd.Series, hourly_rate: float, usd_per_review: float) -> pd.Series:
    """A review costs its recorded seconds at the hourly rate, or the flat rate when no time was recorded."""
    return (pd.to_numeric(seconds, errors="coerce").astype(float) * hourly_rate / 3600).fillna(usd_per_review)


def still_needed(needed, have, again, settled):
    """Reviews an item still needs: the annotators it lacks, or one more after a tie or low agreement;
    none once settled. Works on scalars and on numpy arrays alike."""
    more = np.maximum(np.asarray(needed) - np.asarray(have), np.asarray(again, dtype=int))
    return np.where(np.asarray(settled, dtype=bool), 0, np.clip(more, 0, None))


def _bounds(window: dg.TimeWindow) -> dict:
    return {"start": naive_utc(window.start), "end": naive_utc(window.end)}


def month_item_ids(conn, window: dg.TimeWindow) -> set[str]:
    """The ids of the month's items: a review of any of them is kept, queued by the latest run or not."""
    ids = conn.execute("SELECT item_id FROM raw_items WHERE month >= $start AND month < $end", _bounds(window)).fetchnumpy()
    return set(ids["item_id"].tolist())


def annotators_needed(conn, window: dg.TimeWindow, item_ids, review) -> dict[str, int]:
    """How many annotators each item needs: `human_review.annotators_for` its best model answer (the
    last tier's label, what the review queue shows as candidate), for queued and no-longer-queued items
    alike, so the count does not depend on whether this month's queue was rebuilt first."""
    wanted = pd.DataFrame({"item_id": sorted(set(item_ids))})  # noqa: F841 (read by name in the SQL)
    union = " UNION ALL ".join(
        f"SELECT item_id, label, {stage} AS stage FROM {table} WHERE month >= $start AND month < $end "
        "AND label IS NOT NULL AND item_id IN (SELECT item_id FROM wanted)"
        for stage, table in enumerate(LABEL_TABLES)
    )
    best = dict(conn.execute(
        f"SELECT item_id, label FROM ({union}) QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY stage DESC) = 1",
        _bounds(window)).fetchall())
    return {item_id: review.annotators_for(best.get(item_id)) for item_id in set(item_ids)}


@dataclass
class MonthReviews:
    """One month's review files read: the answers kept, per file what was ingested, the rejected rows
    (by file, for the reports beside them), the consensus per reviewed item and per annotator."""

    reviews: list[dict] = field(default_factory=list)
    imports: list[dict] = field(default_factory=list)
    rejected: list[tuple[Path, list[RejectedRow]]] = field(default_factory=list)
    merged: list[dict] = field(default_factory=list)
    quality: list[dict] = field(default_factory=list)

    def by_item(self) -> dict[str, dict]:
        return {row["item_id"]: row for row in self.merged}


def read_month_reviews(conn, spec: Project, month: str, window: dg.TimeWindow) -> MonthReviews:
    """Read every review file of `month` and merge the answers per item. Writes nothing: human_reviews
    stores the result and the rejection reports; review_queue reads it to leave settled items out of
    the export and to say how many answers the others have."""
    review = spec.human_review
    stamp = naive_utc(window.start)
    out = MonthReviews()
    files = review_files(spec.reviews_path / month)
    if not files:
        return out
    known = month_item_ids(conn, window)
    seen: dict[str, str] = {}
    for path in files:
        fingerprint = file_fingerprint(path)
        if fingerprint in seen:
            out.imports.append({"month": stamp, "source_file": str(path), "file_hash": fingerprint,
                                "rows_ingested": 0, "rows_rejected": 0, "duplicate_of": seen[fingerprint]})
            continue
        seen[fingerprint] = str(path)
        good, bad = read_reviews(path, known, spec.taxonomy.names, spec.taxonomy.none_label)
        out.rejected.append((path, bad))
        out.reviews += [{**row.__dict__, "month": stamp, "file_hash": fingerprint} for row in good]
        out.imports.append({"month": stamp, "source_file": str(path), "file_hash": fingerprint,
                            "rows_ingested": len(good), "rows_rejected": len(bad)})
    if not out.reviews:
        return out
    frame = pd.DataFrame(out.reviews).sort_values("submitted_at", kind="stable")
    models = []
    if review.models_join_as_annotators:
        models = pd.concat([read_window(conn, t, window) for t in MODEL_TIER_TABLES], ignore_index=True)
        models = models[models["item_id"].isin(set(frame["item_id"]))].to_dict("records")
    # taxonomy.answers: the labels, then none_label (a person may say an item fits none), which also
    # orders the tie rule: a real label wins a tie with "none of these".
    result = consensus(frame.to_dict("records"), review.consensus, labels=spec.taxonomy.answers,
                       model_answers=models, min_agreement=review.min_agreement)
    cost = frame.assign(usd=labor_usd(frame["seconds"], review.hourly_rate_usd, review.usd_per_review))
    cost_by_item = cost.groupby("item_id")["usd"].sum()
    people = frame.groupby("item_id")["annotator_id"].nunique()
    needed = annotators_needed(conn, window, people.index, review)
    for item in result.items:
        have, need = int(people[item.item_id]), int(needed[item.item_id])
        out.merged.append({
            "month": stamp, "item_id": item.item_id, "label": item.label, "confidence": item.confidence,
            "agreement": item.agreement, "n_annotators": have, "annotators_needed": need,
            "tie": item.tie, "needs_another_review": item.needs_another_review,
            "settled": bool(have >= need and not item.needs_another_review),
            "labor_usd": float(cost_by_item[item.item_id]),
        })
    out.quality = [{"month": month, **annotator.__dict__} for annotator in result.annotators]
    return out


def build(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(**monthly_asset_args(partitions), deps=["raw_items", "review_queue", *LABEL_TABLES], kinds={"duckdb"})
    def human_reviews(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """One row per answer a person gave (item, annotator, label, seconds, submitted at, source file),
        from the files in `<reviews_dir>/<YYYY-MM>/`. Each file's content is ingested once (a copy under
        another name is skipped). An answer is kept when its item is an item of the month, whether or not
        the latest run still queues it (a rerun that routes differently keeps people's work and its
        labor cost); rows naming items outside the month or labels outside the taxonomy (its none_label,
        "none of these", is a valid answer: the item is out of scope) are left out and listed in
        `<file>.rejected.csv` beside it. Also writes `review_consensus`: per reviewed item, the
        merged label, agreement, ties, and whether it is settled or needs another review. Read by
        final_labels, where a settled item is people's whatever the models decided."""
        spec = project.load()
        reviews, imports, merged, quality = [], [], [], []
        with warehouse.session() as conn:
            for month, window in months_in(context.partition_time_window):
                found = read_month_reviews(conn, spec, month, window)
                reports = {}
                for path, bad in found.rejected:
                    reports[str(path)] = write_rejection_report(path, bad)
                    if bad:
                        context.log.warning(f"{path}: {len(bad)} rows rejected, see {reports[str(path)]}")
                for row in found.imports:
                    report = reports.get(row["source_file"])
                    row.setdefault("rejection_report", str(report) if report else None)
                reviews += found.reviews
                imports += found.imports
                merged += found.merged
                quality += found.quality
            window = context.partition_time_window
            replace_window(conn, "human_reviews", pd.DataFrame(reviews), window)
            replace_window(conn, "review_imports", pd.DataFrame(imports), window)
            replace_window(conn, "review_consensus", pd.DataFrame(merged), window)
        merged_frame = pd.DataFrame(merged)
        settled = int(merged_frame["settled"].sum()) if len(merged_frame) else 0
        return dg.MaterializeResult(
            metadata={
                "files": len(imports),
                "reviews": len(reviews),
                "rows_rejected": sum(row["rows_rejected"] for row in imports),
                "items_reviewed": len(merged),
                "items_settled": settled,
                "needs_another_review": int(merged_frame["needs_another_review"].sum()) if len(merged_frame) else 0,
                "ties": int(merged_frame["tie"].sum()) if len(merged_frame) else 0,
                "consensus": spec.human_review.consensus,
                "annotator_quality": markdown_table(pd.DataFrame(quality).round(3) if quality else pd.DataFrame()),
            }
        )

    return human_reviews
