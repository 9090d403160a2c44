"""The per-month summary printed after a run: items, what each tier settled, what went to people,
accuracy on the golden items, the audit's answers, whether the accepted labels met the target, and
USD by tier."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb
import pandas as pd

from labeling_dagster.assets.quality_report import month_evidence
from labeling_dagster.core.quality import golden_score, held_out_answers
from labeling_dagster.core.report import AUDIT, StageAccuracy, audit_report
from labeling_dagster.project import Project


@dataclass
class MonthSummary:
    month: str
    items: int = 0
    rejected: int = 0
    accepted_by: dict[str, int] = field(default_factory=dict)
    sent_to_qa: int = 0
    adjudicated: int = 0
    queued_for_people: int = 0
    golden_items: int = 0
    golden_labeled: int = 0
    golden_accuracy: float | None = None
    audited: int = 0
    audit_answered: int = 0
    audit_correct: int = 0
    target: float = 0.0
    checked: bool = False  # some accepted label was checked (an audit answer, a golden held-out item)
    misses: list[StageAccuracy] = field(default_factory=list)  # a stage's audit or golden held-out accuracy < target
    usd_by_tier: dict[str, float] = field(default_factory=dict)
    total_usd: float = 0.0
    calls_reused: int = 0


def _usd_row(tier: str) -> str:
    if tier.startswith("golden_run:"):
        return "golden run"
    return {"human_review": "people", "human_review_pending": "people pending (est.)"}.get(tier, tier)


def _count(conn, sql: str, month: datetime) -> int:
    return int(conn.execute(sql, [month]).fetchone()[0])


def month_summary(conn: duckdb.DuckDBPyConnection, project: Project, month: str) -> MonthSummary:
    stamp = datetime.strptime(month, "%Y-%m")
    summary = MonthSummary(month)
    summary.items = _count(conn, "SELECT COUNT(*) FROM raw_items WHERE month = ?", stamp)
    summary.rejected = _count(conn, "SELECT COUNT(*) FROM rejected_items WHERE month = ?", stamp)
    summary.sent_to_qa = _count(conn, "SELECT COUNT(*) FROM qa_labels WHERE month = ?", stamp)
    summary.adjudicated = _count(conn, "SELECT COUNT(*) FROM adjudicated_labels WHERE month = ?", stamp)
    summary.queued_for_people = _count(conn, "SELECT COUNT(*) FROM review_queue WHERE month = ?", stamp)
    accepted = conn.execute(
        "SELECT decided_by, COUNT(*) FROM final_labels WHERE month = ? AND status = 'labeled' GROUP BY 1 ORDER BY 1",
        [stamp],
    ).fetchall()
    summary.accepted_by = {tier: int(n) for tier, n in accepted}
    final = conn.execute(
        """SELECT f.item_id, f.label, f.status, r.content_hash FROM final_labels f
           JOIN raw_items r USING (month, item_id) WHERE f.month = ?""",
        [stamp],
    ).df()
    held_out = held_out_answers(project)
    score = golden_score(final, held_out)
    summary.golden_items, summary.golden_labeled, summary.golden_accuracy = score.golden_items, score.labeled, score.accuracy
    evidence = month_evidence(conn, stamp, (stamp + timedelta(days=32)).replace(day=1), held_out)
    audit = audit_report(month, evidence, project.taxonomy.answers, target=project.quality.target_accuracy,
                         delta=project.quality.delta)
    audits = [a for a in audit.accuracy if a.source == AUDIT]
    summary.audited, summary.audit_answered = sum(a.sampled for a in audits), sum(a.checked for a in audits)
    summary.audit_correct = sum(a.correct for a in audits)
    summary.target, summary.checked = project.quality.target_accuracy, any(a.checked for a in audit.accuracy)
    summary.misses = [a for a in audit.accuracy if a.status == "missed"]
    ledger = conn.execute("SELECT kind, tier, usd, calls_reused FROM cost_ledger WHERE month = ?", [stamp]).df()
    parts = ledger[ledger["kind"] != "total"]
    for row in parts.itertuples():
        name = _usd_row(row.tier)
        summary.usd_by_tier[name] = summary.usd_by_tier.get(name, 0.0) + float(row.usd)
    summary.total_usd = float(ledger[ledger["kind"] == "total"]["usd"].sum())
    summary.calls_reused = int(parts["calls_reused"].fillna(0).sum())
    return summary


def summary_frame(summaries: list[MonthSummary]) -> pd.DataFrame:
    """One column per month, one row per figure: easy to read in a terminal and to diff."""
    tiers = sorted({tier for s in summaries for tier in s.accepted_by})
    usd_tiers = list(dict.fromkeys(tier for s in summaries for tier in s.usd_by_tier))
    rows: dict[str, list] = {"items": [], "rejected rows": []}
    for tier in tiers:
        rows[f"accepted by {tier}"] = []
    rows.update({"sent to QA": [], "adjudicated": [], "queued for people": [], "golden accuracy": [],
                 "audit answers": [], "accepted labels vs target": []})
    for tier in usd_tiers:
        rows[f"USD {tier}"] = []
    rows["USD total"] = []
    rows["calls reused from cache"] = []
    for s in summaries:
        rows["items"].append(s.items)
        rows["rejected rows"].append(s.rejected)
        for tier in tiers:
            rows[f"accepted by {tier}"].append(s.accepted_by.get(tier, 0))
        rows["sent to QA"].append(s.sent_to_qa)
        rows["adjudicated"].append(s.adjudicated)
        rows["queued for people"].append(s.queued_for_people)
        rows["golden accuracy"].append(
            "n/a" if s.golden_accuracy is None else f"{s.golden_accuracy:.3f} ({s.golden_labeled}/{s.golden_items})"
        )
        rows["audit answers"].append(
            f"{s.audit_correct}/{s.audit_answered} right, {s.audited - s.audit_answered} pending" if s.audited else "none")
        rows["accepted labels vs target"].append(
            "MISSED: " + ", ".join(dict.fromkeys(a.stage for a in s.misses)) if s.misses
            else f"met ({s.target:.1%})" if s.checked else "not checked yet")
        for tier in usd_tiers:
            rows[f"USD {tier}"].append(f"{s.usd_by_tier.get(tier, 0.0):.2f}")
        rows["USD total"].append(f"{s.total_usd:.2f}")
        rows["calls reused from cache"].append(s.calls_reused)
    return pd.DataFrame(rows, index=[s.month for s in summaries]).T


def closing_lines(summaries: list[MonthSummary]) -> list[str]:
    """What to print under the table: a line per month whose accepted labels missed the target, or one
    saying they met it in the months where some were checked."""
    missed = [f"{s.month}: accepted labels MISSED the target {s.target:.1%}: "
              + "; ".join(a.describe() for a in s.misses) for s in summaries if s.misses]
    checked = [s.month for s in summaries if s.checked]
    if missed or not checked:
        return missed
    return [f"Accepted labels met the target {summaries[0].target:.1%} in {', '.join(checked)} (audit answers and "
            "golden held-out items)."]
