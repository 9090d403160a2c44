"""Stage 9: how good each tier is this month, measured on the golden run, and the bands that would
reach the project's target accuracy at the least cost (shown, never applied); each stage's
certificate, what its accepted labels turned out to be worth (audit, golden held-out items), and each
label's prevalence corrected by the audit. Its check warns when a stage's accepted labels miss the target."""

from datetime import datetime

import dagster as dg
import pandas as pd

from labeling_dagster import checks
from labeling_dagster.assets.common import LABEL_TABLES, markdown_table, monthly_asset_args, months_in
from labeling_dagster.core.calibration import calibrate_tier, reliability_markdown
from labeling_dagster.core.quality import held_out_answers
from labeling_dagster.core.report import STAGES, MonthEvidence, audit_report, build_report
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


STAGE_ROWS = " UNION ALL ".join(
    f"SELECT '{stage}' AS stage, item_id, label, next_step, COALESCE(audited, FALSE) AS audited FROM {table} "
    "WHERE month >= $start AND month < $end" for stage, table in zip(STAGES, LABEL_TABLES))
# What each stage accepted: the accepts that stand (no person's label replaced them) and its audit
# sample, which went to people with the label the stage accepted.
ACCEPTED = f"""WITH accepted AS (
    SELECT r.stage, r.item_id, r.label, r.audited FROM ({STAGE_ROWS}) r
    LEFT JOIN (SELECT item_id, status, decided_by FROM final_labels WHERE month >= $start AND month < $end) f USING (item_id)
    WHERE r.audited OR (r.next_step = 'accept' AND f.status = 'labeled' AND f.decided_by <> 'human'))
"""
CERTIFICATE_COLUMNS = ("stage, tier, signal, threshold, items, accepted, correct, bound, target, delta, passed, reason, "
                       "audit_share, drift, recheck")  # not the reference values behind it
AUDITED = "(SELECT item_id FROM accepted WHERE audited)"
FINAL = "FROM final_labels WHERE month >= $start AND month < $end"


def month_evidence(conn, start: datetime, end: datetime, held_out: dict[str, str]) -> MonthEvidence:
    """The month's certificates, accepted-label counts, audited items with people's settled answers and
    accepted golden held-out items, read in SQL so that only counts and samples leave the warehouse."""
    bounds = {"start": start, "end": end}
    certificates = conn.execute(f"SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE month >= $start AND month < $end",
                                bounds).df()
    certificates = certificates.sort_values("stage", key=lambda stage: stage.map(STAGES.index), ignore_index=True)
    stage_labels = conn.execute(f"{ACCEPTED} SELECT stage, label, COUNT(*) AS items FROM accepted GROUP BY ALL", bounds).df()
    people = conn.execute(f"{ACCEPTED} SELECT label, COUNT(*) {FINAL} AND status = 'labeled' AND decided_by = 'human' "
                          f"AND item_id NOT IN {AUDITED} GROUP BY label", bounds).fetchall()
    (pending,) = conn.execute(f"{ACCEPTED} SELECT COUNT(*) {FINAL} AND status <> 'labeled' AND item_id NOT IN {AUDITED}",
                              bounds).fetchone()
    audit = conn.execute(
        f"""{ACCEPTED} SELECT a.stage, a.item_id, a.label, c.label AS truth FROM accepted a LEFT JOIN
            (SELECT item_id, label FROM review_consensus WHERE month >= $start AND month < $end AND settled) c
            USING (item_id) WHERE a.audited ORDER BY a.item_id""", bounds).df()
    golden = pd.DataFrame(columns=["stage", "label", "truth"])
    if held_out:
        answers = pd.DataFrame({"content_hash": list(held_out), "truth": list(held_out.values())})  # noqa: F841 (read by name in the SQL)
        golden = conn.execute(
            f"""{ACCEPTED} SELECT a.stage, a.label, g.truth FROM accepted a
                JOIN (SELECT item_id, content_hash FROM raw_items WHERE month >= $start AND month < $end) r USING (item_id)
                JOIN answers g USING (content_hash)""", bounds).df()
    return MonthEvidence(certificates, stage_labels, {label: int(n) for label, n in people}, int(pending), audit, golden)


def build(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        **monthly_asset_args(partitions),
        deps=["golden_labels", "certificates", *LABEL_TABLES, "human_reviews", "final_labels"],
        check_specs=checks.quality_report_specs("quality_report"),
        kinds={"duckdb"},
    )
    def quality_report(context: dg.AssetExecutionContext, project: ProjectResource, warehouse: Warehouse) -> dg.MaterializeResult:
        """Rows of (section, tier, name, value, detail) per month: accuracy of each tier on the golden
        run, calibration error before and after, recall per label, the confusion pairs that matter,
        agreement between tiers (golden run) and with people (this month's reviewed items), and the
        recommended routing bands for quality.target_accuracy with their expected accuracy and cost
        next to the current ones. Then the month's own evidence: each stage's certificate (section
        certificate), the realized accuracy of what each stage accepted on its audit sample and on the
        golden held-out items (audit), and each label's share with a 95% interval corrected by the
        audit (prevalence). The metadata shows it all, the reliability plots and the `routing:` block to
        paste into the project file; nothing is changed automatically."""
        spec = project.load()
        held_out = held_out_answers(spec)
        rows, sections, findings = [], [], []
        months = list(months_in(context.partition_time_window))
        with warehouse.session() as conn:
            sizes = token_sizes(conn, spec)
            for month, window in months:
                bounds = [naive_utc(window.start), naive_utc(window.end)]
                audit = audit_report(month, month_evidence(conn, *bounds, held_out), spec.taxonomy.answers,
                                     target=spec.quality.target_accuracy, delta=spec.quality.delta)
                rows += [{**row, "month": bounds[0]} for row in audit.rows]
                findings += audit.findings
                golden = read_window(conn, "golden_labels", window)
                if not len(golden):
                    sections.append("\n\n".join([f"## {month}", *audit.markdown,
                                                  "_no golden run: set golden_set and quality.golden_sample_size_"]))
                    continue
                calibrations = read_window(conn, "calibrations", window)
                consensus = read_window(conn, "review_consensus", window)
                people = dict(zip(consensus["item_id"], consensus["label"])) if len(consensus) else None
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
                rows += [{**row, "month": bounds[0]} for row in report.rows]
                plots = []
                for tier, part in golden.groupby("tier", sort=False):
                    answered = part[part["label"].notna()]
                    if spec.quality.calibration != "none" and len(answered):
                        fitted = calibrate_tier(answered["raw_confidence"], answered["correct"].astype(bool), tier=tier,
                                                model=answered["model"].iloc[0], method=spec.quality.calibration)
                        plots.append(reliability_markdown(fitted))
                snippet = report.recommendation.to_yaml_snippet() if report.recommendation else report.recommendation_note
                sections.append("\n\n".join([
                    f"## {month}", *audit.markdown,
                    "### Accuracy on the golden run", report.accuracy.round(4).to_markdown(index=False),
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
                "months_below_target": ", ".join(sorted({f.month for f in findings if f.kind == "missed"})) or "none",
                "report": dg.MetadataValue.md("\n\n".join(sections)),
            },
            check_results=[checks.accepted_labels_meet_target(findings, len(months))],
        )

    return quality_report
