"""Asset checks. They run in the same step as the asset they guard (check_specs +
MaterializeResult(check_results=...)), so a blocking failure stops bad data before anything reads it."""

from __future__ import annotations

import dagster as dg
import pandas as pd

TERMINAL = "every_item_in_one_terminal_state"
IN_TAXONOMY = "labels_in_taxonomy"
LEDGER_SUMS = "ledger_total_equals_sum_of_parts"
LEDGER_MATCHES_CALLS = "ledger_matches_model_calls"
WITHIN_BUDGET = "month_spend_within_budget"


def final_label_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(TERMINAL, asset=asset, blocking=True,
                          description="Each raw item of the month has exactly one final row, labeled or pending human; rejected rows are counted apart."),
        dg.AssetCheckSpec(IN_TAXONOMY, asset=asset, blocking=True,
                          description="Every final label is one of the taxonomy's labels (or its none_label, answered by people)."),
    ]


def ledger_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(LEDGER_SUMS, asset=asset, blocking=True,
                          description="Each month's total row equals the sum of its model and human rows."),
        dg.AssetCheckSpec(LEDGER_MATCHES_CALLS, asset=asset, blocking=True,
                          description="Each month's model rows add up to every attempt stored in model_calls for that "
                                      "month (calls and USD): no billed call falls out of the books."),
        dg.AssetCheckSpec(WITHIN_BUDGET, asset=asset,
                          description="Each month's model spend is within the project's monthly budget."),
    ]


def terminal_state(conn, window: dg.TimeWindow, rejected: int) -> dg.AssetCheckResult:
    """Checked on the stored table (in SQL, so a month of any size fits): raw items without a final row,
    with several, final rows of no raw item, and rows neither labeled nor pending people."""
    from labeling_dagster.resources.warehouse import naive_utc

    params = {"start": naive_utc(window.start), "end": naive_utc(window.end)}
    raw = "(SELECT item_id FROM raw_items WHERE month >= $start AND month < $end)"
    final = "(SELECT item_id, status FROM final_labels WHERE month >= $start AND month < $end)"

    def ids(sql: str) -> tuple[int, list[str]]:
        count = conn.execute(f"SELECT COUNT(*) FROM ({sql})", params).fetchone()[0]
        return count, [row[0] for row in conn.execute(f"SELECT * FROM ({sql}) ORDER BY 1 LIMIT 5", params).fetchall()]

    missing = ids(f"SELECT r.item_id FROM {raw} r ANTI JOIN {final} f USING (item_id)")
    doubled = ids(f"SELECT item_id FROM {final} GROUP BY item_id HAVING COUNT(*) > 1")
    unknown = ids(f"SELECT f.item_id FROM {final} f ANTI JOIN {raw} r USING (item_id)")
    bad_state = ids(f"SELECT item_id FROM {final} WHERE status IS NULL OR status NOT IN ('labeled', 'pending_human')")
    (raw_items,) = conn.execute(f"SELECT COUNT(DISTINCT item_id) FROM {raw}", params).fetchone()
    states = dict(conn.execute(f"SELECT status, COUNT(*) FROM {final} GROUP BY ALL", params).fetchall())
    problems = [missing, doubled, unknown, bad_state]
    return dg.AssetCheckResult(
        check_name=TERMINAL,
        passed=not any(count for count, _ in problems),
        metadata={
            "raw_items": raw_items,
            "labeled": states.get("labeled", 0),
            "pending_human": states.get("pending_human", 0),
            "rejected": rejected,
            "missing": missing[0],
            "doubled": doubled[0],
            "unknown": unknown[0],
            "not_terminal": bad_state[0],
            "examples": ", ".join([item for _, examples in problems for item in examples][:5]),
        },
    )


def labels_in_taxonomy(conn, window: dg.TimeWindow, names: list[str]) -> dg.AssetCheckResult:
    from labeling_dagster.resources.warehouse import naive_utc

    params = [naive_utc(window.start), naive_utc(window.end), names]
    labeled = "FROM final_labels WHERE month >= ? AND month < ? AND label IS NOT NULL"
    (checked,) = conn.execute(f"SELECT COUNT(*) {labeled}", params[:2]).fetchone()
    outside_sql = f"{labeled} AND NOT list_contains(?, label)"
    (outside,) = conn.execute(f"SELECT COUNT(*) {outside_sql}", params).fetchone()
    examples = conn.execute(f"SELECT item_id, label {outside_sql} ORDER BY item_id LIMIT 5", params).fetchall()
    return dg.AssetCheckResult(
        check_name=IN_TAXONOMY,
        passed=outside == 0,
        metadata={"labels_checked": checked, "outside": outside,
                  "examples": ", ".join(f"{item}={label}" for item, label in examples)},
    )


def ledger_sums(ledger: pd.DataFrame) -> dg.AssetCheckResult:
    problems = []
    for month, rows in ledger.groupby("month"):
        parts = rows[rows["kind"] != "total"]["usd"].sum()
        total = rows[rows["kind"] == "total"]["usd"]
        if len(total) != 1 or abs(float(total.iloc[0]) - float(parts)) > 1e-9:
            problems.append(f"{month:%Y-%m}: total {list(total)} vs parts {parts}")
    return dg.AssetCheckResult(check_name=LEDGER_SUMS, passed=not problems,
                               metadata={"months": int(ledger["month"].nunique()) if len(ledger) else 0,
                                         "problems": "; ".join(problems) or "none"})


def billed_by_month(conn, window: dg.TimeWindow) -> pd.DataFrame:
    """What model_calls holds per month of the window: attempts and USD, every one once."""
    from labeling_dagster.resources.warehouse import naive_utc

    return conn.execute(
        "SELECT month, COUNT(*) AS calls, SUM(usd) AS usd FROM model_calls WHERE month >= ? AND month < ? GROUP BY month",
        [naive_utc(window.start), naive_utc(window.end)],
    ).df()


def ledger_matches_calls(billed: pd.DataFrame, ledger: pd.DataFrame) -> dg.AssetCheckResult:
    """The ledger's model rows against model_calls, month by month (to a millionth of a cent)."""
    model = ledger[ledger["kind"] == "model"].groupby("month")[["calls", "usd"]].sum() if len(ledger) else None
    problems = []
    for month in sorted(set(billed["month"]) | (set(model.index) if model is not None else set())):
        calls = billed[billed["month"] == month]
        want_calls, want_usd = (int(calls["calls"].sum()), float(calls["usd"].sum())) if len(calls) else (0, 0.0)
        have_calls, have_usd = ((int(model.loc[month, "calls"]), float(model.loc[month, "usd"]))
                                if model is not None and month in model.index else (0, 0.0))
        if have_calls != want_calls or not abs(have_usd - want_usd) <= 1e-8:  # a NaN on either side fails too
            problems.append(f"{month:%Y-%m}: ledger {have_calls} calls ${have_usd:.6f}, "
                            f"model_calls {want_calls} calls ${want_usd:.6f}")
    return dg.AssetCheckResult(
        check_name=LEDGER_MATCHES_CALLS, passed=not problems,
        metadata={"billed_usd": float(billed["usd"].sum()) if len(billed) else 0.0,
                  "billed_calls": int(billed["calls"].sum()) if len(billed) else 0,
                  "problems": "; ".join(problems) or "none"},
    )


def within_budget(ledger: pd.DataFrame, budget_usd: float) -> dg.AssetCheckResult:
    model = ledger[ledger["kind"] == "model"].groupby("month")["usd"].sum() if len(ledger) else pd.Series(dtype=float)
    over = {f"{month:%Y-%m}": round(float(usd), 4) for month, usd in model.items() if usd > budget_usd + 1e-9}
    return dg.AssetCheckResult(
        check_name=WITHIN_BUDGET,
        passed=not over,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"budget_usd": budget_usd, "max_month_usd": float(model.max()) if len(model) else 0.0,
                  "over_budget": ", ".join(f"{m}: ${u}" for m, u in over.items()) or "none"},
    )


MEETS_TARGET = "accepted_labels_meet_target"


def quality_report_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(MEETS_TARGET, asset=asset, blocking=False,
                          description="Each stage's accepted labels reach quality.target_accuracy where they were checked: "
                                      "on its audit sample (people's settled answers) and on the golden held-out items it "
                                      "accepted; and no stage whose month drifted still waits for its recheck. A warning: "
                                      "the labels are kept, the month is flagged."),
    ]


def accepted_labels_meet_target(findings: list, months: int) -> dg.AssetCheckResult:
    """`findings`: core.report.Finding of the window's months (stage below target, recheck pending)."""
    missed = [finding for finding in findings if finding.kind == "missed"]
    return dg.AssetCheckResult(
        check_name=MEETS_TARGET,
        passed=not findings,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"months": months, "stages_below_target": len(missed),
                  "rechecks_pending": len(findings) - len(missed),
                  "problems": "; ".join(finding.text for finding in findings) or "none"},
    )


CONFIDENCE_SIGNAL = "confidence_signal_present"


def confidence_signal_spec(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(CONFIDENCE_SIGNAL, asset=asset, blocking=False,
                             description="Every answer of a tier whose confidence.signal is logprobs came with token "
                                         "logprobs. One without failed and went on to the next tier: the tier's "
                                         "threshold is certified on logprobs and never falls back to the written number.")


def confidence_signal_present(conn, window: dg.TimeWindow, table: str) -> dg.AssetCheckResult:
    """Checked on the stored label rows of `table` (a model tier's, or golden_labels) for the window."""
    from labeling_dagster.core.confidence import MISSING_LOGPROBS
    from labeling_dagster.resources.warehouse import naive_utc

    params = [naive_utc(window.start), naive_utc(window.end), MISSING_LOGPROBS]
    missing_sql = f"FROM {table} WHERE month >= ? AND month < ? AND contains(failure, ?)"
    (missing,) = conn.execute(f"SELECT COUNT(*) {missing_sql}", params).fetchone()
    examples = conn.execute(f"SELECT item_id {missing_sql} ORDER BY item_id LIMIT 5", params).fetchall()
    return dg.AssetCheckResult(
        asset_key=table,  # the table is the asset's own (a model tier's, or golden_labels)
        check_name=CONFIDENCE_SIGNAL,
        passed=missing == 0,
        metadata={"missing_logprobs": missing, "examples": ", ".join(item for (item,) in examples) or "none"},
    )
