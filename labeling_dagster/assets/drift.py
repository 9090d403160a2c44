"""The recheck: when a stage's month no longer looks like the golden items its certificate was measured
on, a larger share of what it accepted goes to people before it counts.

Run by each stage's own step once the month's labels are in (auto_labels; a model tier's collect
step): its signal values and predicted labels are compared with the certificate's reference
(core/shift.drift, at quality.shift_alpha). On a shift the audit share of the month rises to
quality.recheck_audit_share: accepted items whose audit bucket falls under it (core/routing; the
first audit_share of them were already audited) are sent to people, and the certificate row records
the test, the recheck and the new share. Deterministic by item id, so a rerun rechecks the same items.
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
        f"SELECT item_id, label, signal, next_step FROM {table} WHERE month = ? AND label IS NOT NULL", [month]).df()
    signal, labels = month_items or (rows["signal"].astype(float).tolist(), rows["label"].tolist())
    found = drift(signal, reference["signal"], labels, reference["labels"],
                  alpha=spec.quality.shift_alpha, min_items=spec.quality.min_certify_items)
    share = spec.quality.recheck_audit_share if found.shifted else spec.quality.audit_share
    gate = StageGate(stage, audit_share=share)
    taken = rows[(rows["next_step"] == "accept") & rows["item_id"].map(gate.audits)]
    with transaction(conn):
        if found.shifted and len(taken):
            chosen = pd.DataFrame({"item_id": taken["item_id"]})  # noqa: F841 (read by name in the SQL below)
            conn.execute(
                f"""UPDATE {table} SET next_step = 'human', audited = TRUE,
                    route_reason = 'audit of {stage} (recheck: the month drifted from its calibration data): it '
                                   || 'accepted ' || label || '; people check it'
                    WHERE month = ? AND item_id IN (SELECT item_id FROM chosen)""", [month])
        conn.execute(
            "UPDATE certificates SET drift = ?, recheck = ?, audit_share = ? WHERE month = ? AND stage = ?",
            [json.dumps(found.as_dict()), found.shifted, share, month, stage])
    return found


def drift_metadata(found: dict[str, Drift | None]) -> dict:
    """Per month: shifted or not and why (`found`: month -> the recheck's test, None: not tested)."""
    lines = [f"- {month}: " + ("not tested (no certificate row to compare with)" if test is None else
                               ("**SHIFTED**: " if test.shifted else "") + test.reason)
             for month, test in found.items()]
    return {
        "drift_shifted_months": sum(1 for test in found.values() if test is not None and test.shifted),
        "drift": dg.MetadataValue.md("\n".join(lines) or "_no months_"),
    }
