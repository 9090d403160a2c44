"""Asset checks. They run in the same step as the asset they guard (check_specs +
MaterializeResult(check_results=...)), so a blocking failure stops bad data before anything reads it."""

from __future__ import annotations

import dagster as dg
import pandas as pd

TERMINAL = "every_item_in_one_terminal_state"
IN_TAXONOMY = "labels_in_taxonomy"
LEDGER_SUMS = "ledger_total_equals_sum_of_parts"
WITHIN_BUDGET = "month_spend_within_budget"


def final_label_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(TERMINAL, asset=asset, blocking=True,
                          description="Each raw item of the month has exactly one final row, labeled or pending human; rejected rows are counted apart."),
        dg.AssetCheckSpec(IN_TAXONOMY, asset=asset, blocking=True,
                          description="Every final label is one of the taxonomy's labels."),
    ]


def ledger_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(LEDGER_SUMS, asset=asset, blocking=True,
                          description="Each month's total row equals the sum of its model and human rows."),
        dg.AssetCheckSpec(WITHIN_BUDGET, asset=asset,
                          description="Each month's model spend is within the project's monthly budget."),
    ]


def terminal_state(raw: pd.DataFrame, final: pd.DataFrame, rejected: int) -> dg.AssetCheckResult:
    counts = final["item_id"].value_counts() if len(final) else pd.Series(dtype=int)
    raw_ids = set(raw["item_id"]) if len(raw) else set()
    missing = sorted(raw_ids - set(counts.index))
    doubled = sorted(counts[counts > 1].index)
    unknown = sorted(set(counts.index) - raw_ids)
    bad_state = final[~final["status"].isin(["labeled", "pending_human"])] if len(final) else final
    passed = not (missing or doubled or unknown or len(bad_state))
    return dg.AssetCheckResult(
        check_name=TERMINAL,
        passed=passed,
        metadata={
            "raw_items": len(raw_ids),
            "labeled": int((final["status"] == "labeled").sum()) if len(final) else 0,
            "pending_human": int((final["status"] == "pending_human").sum()) if len(final) else 0,
            "rejected": rejected,
            "missing": len(missing),
            "doubled": len(doubled),
            "unknown": len(unknown),
            "not_terminal": len(bad_state),
            "examples": ", ".join((missing + doubled + unknown + list(bad_state["item_id"]) if len(bad_state) else missing + doubled + unknown)[:5]),
        },
    )


def labels_in_taxonomy(final: pd.DataFrame, names: list[str]) -> dg.AssetCheckResult:
    labeled = final[final["label"].notna()] if len(final) else final
    outside = labeled[~labeled["label"].isin(names)] if len(labeled) else labeled
    return dg.AssetCheckResult(
        check_name=IN_TAXONOMY,
        passed=len(outside) == 0,
        metadata={"labels_checked": len(labeled), "outside": len(outside),
                  "examples": ", ".join(f"{r.item_id}={r.label}" for r in outside.head(5).itertuples())},
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
