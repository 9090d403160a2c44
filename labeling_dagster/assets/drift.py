"""The recheck: when a stage's month no longer looks like the golden items its certificate was measured
on, it accepts nothing more until people have checked a larger sample of what it accepted.

Run by each stage's own step once the month's labels are in (auto_labels; a model tier's collect
step): its signal values and predicted labels are compared with the certificate's reference
(core/shift.drift, at quality.shift_alpha). On a shift the month's audit share rises to
quality.recheck_audit_share: accepted items whose audit bucket falls under it (core/routing; the
first audit_share of them were already audited) go to people, and the stage's other accepts are held:
they go up to the next stage (or people) as if the stage had no certificate. Once people have settled
at least quality.min_certify_items of the recheck sample at the target or better, a run of the month
again keeps the stage's accepts. The certificate row records the test, the recheck, the new share and
what was held. Deterministic by item id, so a rerun rechecks and holds the same items.
"""

from __future__ import annotations

import json

import dagster as dg
import pandas as pd

from labeling_dagster.core.routing import StageGate
from labeling_dagster.core.shift import Drift, drift
from labeling_dagster.project import Project
from labeling_dagster.resources.warehouse import naive_utc, transaction


def recheck(conn, spec: Project, stage: str, table: str, window: dg.TimeWindow,
            month_items: tuple[list[float], list[str]] | None = None) -> Drift | None:
    """Test the stage's month for drift and, on a shift, send the recheck sample to people. None when
    the month has no certificate row (no golden run) to compare with. `month_items`: the signal values
    and predicted labels of every item that reached the stage, when the table does not hold them (the
    auto-labeler stores a label only for what it accepts); default: the table's answered rows."""
    month = naive_utc(window.start)
    row = conn.execute("SELECT reference FROM certificates WHERE month = ? AND stage = ?", [month, stage]).fetchone()
    if row is None or row[0] is None:
        return None
    reference = json.loads(row[0])
    rows = conn.execute(
        f"SELECT item_id, label, signal, next_step, COALESCE(audited, FALSE) AS audited FROM {table} "
        "WHERE month = ? AND label IS NOT NULL", [month]).df()
    signal, labels = month_items or (rows["signal"].astype(float).tolist(), rows["label"].tolist())
    found = drift(signal, reference["signal"], labels, reference["labels"],
                  alpha=spec.quality.shift_alpha, min_items=spec.quality.min_certify_items)
    share = spec.quality.recheck_audit_share if found.shifted else spec.quality.audit_share
    gate = StageGate(stage, audit_share=share)
    accepted = (rows["next_step"] == "accept") | rows["audited"]  # what the stage accepted, audited or not
    sample = rows["item_id"].map(gate.audits) & accepted
    taken = rows[(rows["next_step"] == "accept") & sample]
    held = rows[(rows["next_step"] == "accept") & ~sample]
    confirmed = _recheck_answered(conn, spec, month, rows[sample]) if found.shifted else None
    with transaction(conn):
        if found.shifted and len(taken):
            _set(conn, table, month, taken, "human", True,
                 f"'audit of {stage} (recheck: the month drifted from its calibration data): it accepted ' || label "
                 "|| '; people check it'")
        if found.shifted and not confirmed and len(held):
            up = upward(spec, stage)
            _set(conn, table, month, held, up, False,
                 f"'held: {stage} accepted ' || label || ' but its month drifted from its calibration data; it "
                 f"accepts again once its recheck audit is answered (then run the month again); goes to {up}'")
        (held_now,) = conn.execute(  # counted in the table, so a collect step run again reports the same
            f"SELECT COUNT(*) FROM {table} WHERE month = ? AND starts_with(route_reason, 'held: ')", [month]).fetchone()
        conn.execute(
            "UPDATE certificates SET drift = ?, recheck = ?, audit_share = ? WHERE month = ? AND stage = ?",
            [json.dumps({**found.as_dict(), "held": held_now, "recheck_confirmed": confirmed}), found.shifted, share,
             month, stage])
    return found


def upward(spec: Project, stage: str) -> str:
    """Where an item the stage may not accept goes: the next stage the project has, else people."""
    later = {"auto_label": ["first_pass", "qa", "adjudication"], "first_pass": ["qa", "adjudication"],
             "qa": ["adjudication"], "adjudication": []}[stage]
    return next((role for role in later if spec.tier(role) is not None), "human")


def _recheck_answered(conn, spec: Project, month, sample: pd.DataFrame) -> bool:
    """Whether people's settled answers on the recheck sample confirm the stage this month: at least
    quality.min_certify_items of them, right at the target or better."""
    chosen = sample[["item_id", "label"]]  # noqa: F841 (read by name in the SQL below)
    answered, right = conn.execute(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE c.label = s.label) FROM chosen s JOIN review_consensus c "
        "ON c.item_id = s.item_id AND c.month = ? AND c.settled", [month]).fetchone()
    return answered >= spec.quality.min_certify_items and right / answered >= spec.quality.target_accuracy


def _set(conn, table: str, month, rows: pd.DataFrame, step: str, audited: bool, reason_sql: str) -> None:
    chosen = pd.DataFrame({"item_id": rows["item_id"]})  # noqa: F841 (read by name in the SQL below)
    conn.execute(
        f"UPDATE {table} SET next_step = ?, audited = ?, route_reason = {reason_sql} "
        "WHERE month = ? AND item_id IN (SELECT item_id FROM chosen)", [step, audited, month])


def drift_metadata(found: dict[str, Drift | None]) -> dict:
    """Per month: shifted or not and why (`found`: month -> the recheck's test, None: not tested)."""
    lines = [f"- {month}: " + ("not tested (no certificate row to compare with)" if test is None else
                               ("**SHIFTED**: " if test.shifted else "") + test.reason)
             for month, test in found.items()]
    return {
        "drift_shifted_months": sum(1 for test in found.values() if test is not None and test.shifted),
        "drift": dg.MetadataValue.md("\n".join(lines) or "_no months_"),
    }
