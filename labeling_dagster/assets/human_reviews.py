"""Stage 6: what people answered. Completed review files of the month (Label Studio export, Ground
Truth output manifest, CSV) are ingested, bad rows reported beside each file, and the answers merged
into one label per item by consensus."""

import dagster as dg
import pandas as pd

from labeling_dagster.assets.common import MODEL_TIER_TABLES, markdown_table, monthly_asset_args, months_in
from labeling_dagster.core.consensus import consensus
from labeling_dagster.core.review_formats import file_fingerprint, read_reviews, review_files, write_rejection_report
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import Warehouse, naive_utc, read_columns, read_window, replace_window


def labor_usd(seconds: pd.Series, hourly_rate: float, usd_per_review: float) -> pd.Series:
    """A review costs its recorded seconds at the hourly rate, or the flat rate when no time was recorded."""
    return (pd.to_numeric(seconds, errors="coerce").astype(float) * hourly_rate / 3600).fillna(usd_per_review)


def build(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(**monthly_asset_args(partitions), deps=["review_queue", *MODEL_TIER_TABLES], kinds={"duckdb"})
    def human_reviews(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """One row per answer a person gave (item, annotator, label, seconds, submitted at, source file),
        from the files in `<reviews_dir>/<YYYY-MM>/`. Each file's content is ingested once (a copy under
        another name is skipped); rows naming unknown items or labels are left out and listed in
        `<file>.rejected.csv` beside it. Also writes `review_consensus`: per reviewed item, the merged
        label, agreement, ties, and whether it is settled or needs another review. Read by final_labels."""
        spec = project.load()
        review = spec.human_review
        reviews, imports, merged, quality = [], [], [], []
        with warehouse.session() as conn:
            for month, window in months_in(context.partition_time_window):
                stamp = naive_utc(window.start)
                queue = read_columns(conn, "review_queue", window, "item_id, annotators_needed")
                needed = dict(zip(queue["item_id"], queue["annotators_needed"])) if len(queue) else {}
                seen: dict[str, str] = {}
                month_rows = []
                for path in review_files(spec.reviews_path / month):
                    fingerprint = file_fingerprint(path)
                    if fingerprint in seen:
                        imports.append({"month": stamp, "source_file": str(path), "file_hash": fingerprint,
                                        "rows_ingested": 0, "rows_rejected": 0, "duplicate_of": seen[fingerprint]})
                        continue
                    seen[fingerprint] = str(path)
                    good, bad = read_reviews(path, set(needed), spec.taxonomy.names)
                    report = write_rejection_report(path, bad)
                    month_rows += [{**row.__dict__, "month": stamp, "file_hash": fingerprint} for row in good]
                    imports.append({"month": stamp, "source_file": str(path), "file_hash": fingerprint,
                                    "rows_ingested": len(good), "rows_rejected": len(bad),
                                    "rejection_report": str(report) if report else None})
                    if bad:
                        context.log.warning(f"{path}: {len(bad)} rows rejected, see {report}")
                reviews += month_rows
                if not month_rows:
                    continue
                frame = pd.DataFrame(month_rows).sort_values("submitted_at", kind="stable")
                models = []
                if review.models_join_as_annotators:
                    models = pd.concat([read_window(conn, t, window) for t in MODEL_TIER_TABLES], ignore_index=True)
                    models = models[models["item_id"].isin(set(frame["item_id"]))].to_dict("records")
                result = consensus(frame.to_dict("records"), review.consensus, labels=spec.taxonomy.names,
                                   model_answers=models, min_agreement=review.min_agreement)
                cost = frame.assign(usd=labor_usd(frame["seconds"], review.hourly_rate_usd, review.usd_per_review))
                cost_by_item = cost.groupby("item_id")["usd"].sum()
                people = frame.groupby("item_id")["annotator_id"].nunique()
                for item in result.items:
                    enough = people[item.item_id] >= needed.get(item.item_id, review.annotators_per_item)
                    merged.append({
                        "month": stamp, "item_id": item.item_id, "label": item.label, "confidence": item.confidence,
                        "agreement": item.agreement, "n_annotators": int(people[item.item_id]),
                        "annotators_needed": int(needed.get(item.item_id, review.annotators_per_item)),
                        "tie": item.tie, "needs_another_review": item.needs_another_review,
                        "settled": bool(enough and not item.needs_another_review),
                        "labor_usd": float(cost_by_item[item.item_id]),
                    })
                quality += [{"month": month, **annotator.__dict__} for annotator in result.annotators]
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
                "consensus": review.consensus,
                "annotator_quality": markdown_table(pd.DataFrame(quality).round(3) if quality else pd.DataFrame()),
            }
        )

    return human_reviews
