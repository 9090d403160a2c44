"""Stage 9: how good each tier is this month, measured on the golden run, and the bands that would
reach the project's target accuracy at the least cost (shown, never applied)."""

import dagster as dg
import pandas as pd

from labeling_dagster.assets.common import LABEL_TABLES, markdown_table, monthly_asset_args, months_in
from labeling_dagster.core.calibration import calibrate_tier, reliability_markdown
from labeling_dagster.core.report import build_report
from labeling_dagster.project import Project
from labeling_dagster.resources.project import ProjectResource
from labeling_dagster.resources.warehouse import Warehouse, naive_utc, read_window, replace_window

TOKENS_PER_ITEM = """
    SELECT SUM(input_tokens) / SUM(item_count), SUM(output_tokens) / SUM(item_count),
           SUM(cached_input_tokens) / SUM(item_count)
    FROM model_calls WHERE tier = ? AND model = ? AND status NOT IN ('error', 'rejected') AND item_count > 0
"""


def token_sizes(conn, project: Project) -> dict[str, tuple[int, int, int]]:
    """Each paid tier's tokens per item as the providers reported them (all months' calls)."""
    sizes = {}
    for tier in project.tiers:
        if tier.provider == "local":
            continue
        row = conn.execute(TOKENS_PER_ITEM, [tier.name, tier.model]).fetchone()
        if row and row[0] is not None:
            sizes[tier.role] = tuple(int(round(value or 0)) for value in row)
    return sizes


def build(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(**monthly_asset_args(partitions), deps=["golden_labels", *LABEL_TABLES, "human_reviews"], kinds={"duckdb"})
    def quality_report(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """Rows of (section, tier, name, value, detail) per month: accuracy of each tier on the golden
        run, calibration error before and after, recall per label, the confusion pairs that matter,
        agreement between tiers (golden run) and with people (this month's reviewed items), and the
        recommended routing bands for quality.target_accuracy with their expected accuracy and cost
        next to the current ones. The metadata shows the reliability plots and the `routing:` block
        to paste into the project file; nothing is changed automatically."""
        spec = project.load()
        rows, sections = [], []
        with warehouse.session() as conn:
            sizes = token_sizes(conn, spec)
            for month, window in months_in(context.partition_time_window):
                golden = read_window(conn, "golden_labels", window)
                if not len(golden):
                    sections.append(f"## {month}\n\n_no golden run: set golden_set and quality.golden_sample_size_")
                    continue
                calibrations = read_window(conn, "calibrations", window)
                consensus = read_window(conn, "review_consensus", window)
                people = dict(zip(consensus["item_id"], consensus["label"])) if len(consensus) else None
                bounds = [naive_utc(window.start), naive_utc(window.end)]
                month_labels = {}
                if people:  # agreement with people is measured on the items they reviewed
                    reviewed = consensus[["item_id"]]  # noqa: F841 (read by name in the SQL below)
                    for table in LABEL_TABLES:
                        labels = conn.execute(
                            f"SELECT item_id, tier, label FROM {table} WHERE month >= ? AND month < ? "
                            "AND label IS NOT NULL AND item_id IN (SELECT item_id FROM reviewed)", bounds).df()
                        for tier, part in labels.groupby("tier"):
                            month_labels[tier] = dict(zip(part["item_id"], part["label"]))
                items = conn.execute("SELECT COUNT(*) FROM raw_items WHERE month >= ? AND month < ?", bounds).fetchall()[0][0]
                report = build_report(spec, golden, calibrations, sizes, people, month_labels, items_per_month=items)
                rows += [{**row, "month": naive_utc(window.start)} for row in report.rows]
                plots = []
                for tier, part in golden.groupby("tier", sort=False):
                    answered = part[part["label"].notna()]
                    if spec.quality.calibration != "none" and len(answered):
                        fitted = calibrate_tier(answered["raw_confidence"], answered["correct"].astype(bool), tier=tier,
                                                model=answered["model"].iloc[0], method=spec.quality.calibration)
                        plots.append(reliability_markdown(fitted))
                snippet = report.recommendation.to_yaml_snippet() if report.recommendation else report.recommendation_note
                sections.append("\n\n".join([
                    f"## {month}", "### Accuracy on the golden run", report.accuracy.round(4).to_markdown(index=False),
                    "### Confusion pairs", report.confusion.round(3).to_markdown(index=False) if len(report.confusion) else "_none_",
                    "### Agreement", report.agreement.round(3).to_markdown(index=False) if len(report.agreement) else "_none_",
                    "### Recommended bands (paste into the project file to apply)", f"```yaml\n{snippet}\n```",
                    "### Calibration", *plots,
                ]))
            replace_window(conn, "quality_report", pd.DataFrame(rows), context.partition_time_window)
        frame = pd.DataFrame(rows)
        accuracy = frame[frame["section"] == "accuracy"][["tier", "value"]] if len(frame) else frame
        return dg.MaterializeResult(
            metadata={
                "accuracy": markdown_table(accuracy.rename(columns={"value": "accuracy"}).round(4) if len(accuracy) else accuracy),
                "report": dg.MetadataValue.md("\n\n".join(sections)),
            }
        )

    return quality_report
