"""Running a tier through the call cache: a crash is resumed without paying twice, the budget stops
a tier, bad answers never pass. The provider here is SIMULATED (a keyword matcher that reports token
usage like an API would); real SDK providers are tested against a local fake server elsewhere."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pytest

from labeling_dagster.core.labels import Answer, CallOutcome, Item, LabelTask, Usage, content_hash
from labeling_dagster.core.pricing import ModelPrice
from labeling_dagster.core.runner import BudgetExceeded, run_tier
from labeling_dagster.project import Budget, LabelDef, Taxonomy, TierConfig
from labeling_dagster.resources.warehouse import TABLES, DuckDBCallCache

TAXONOMY = Taxonomy(labels=[LabelDef(name="billing"), LabelDef(name="cancellation")])
TIER = TierConfig(name="first_pass", role="first_pass", provider="openai", model="gpt-5-nano", items_per_request=2)
PRICE = ModelPrice(input=0.05, output=0.40)  # gpt-5-nano's list price
ITEMS = [Item(f"t{n}", text, content_hash(text)) for n, text in
         enumerate(["wrong bill", "cancel it", "bill again", "please cancel", "odd bill"])]


class KeywordProvider:
    """Simulated paid provider: 'cancel' -> cancellation, else billing; 700 input / 40 output tokens an item."""

    provider_name = "simulated"

    def __init__(self, crash_after: int | None = None, bad_label_for: str | None = None):
        self.calls = 0
        self.crash_after = crash_after
        self.bad_label_for = bad_label_for

    def version(self, task: LabelTask) -> str:
        return "prompt-v1"

    def label_batch(self, task: LabelTask) -> CallOutcome:
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise ConnectionError("simulated crash")
        self.calls += 1
        answers = [
            Answer(item.item_id, "made_up" if item.item_id == self.bad_label_for
                   else "cancellation" if "cancel" in item.text else "billing", 0.9)
            for item in task.items
        ]
        return CallOutcome(answers, usage=Usage(input_tokens=700 * len(task.items), output_tokens=40 * len(task.items)))


@pytest.fixture
def cache():
    conn = duckdb.connect(":memory:")
    for table, columns in TABLES.items():
        conn.execute(f"CREATE TABLE {table} ({columns})")
    return DuckDBCallCache(conn, datetime(2026, 8, 1), run_id="run-1")


def run(provider, cache, budget=Budget(monthly_usd=10)):
    return run_tier(provider, tier=TIER, taxonomy=TAXONOMY, items=ITEMS, cache=cache, price=PRICE,
                    budget=budget, spent_before=cache.month_spend())


def test_costs_follow_the_price_catalog(cache) -> None:
    result = run(KeywordProvider(), cache)
    assert result.calls_made == 3  # 5 items, 2 per request
    assert result.usd_paid == pytest.approx(5 * (700 * 0.05 + 40 * 0.40) / 1e6)
    assert {item_id: a.label for item_id, a in result.answers.items()} == {
        "t0": "billing", "t1": "cancellation", "t2": "billing", "t3": "cancellation", "t4": "billing"}


def test_crash_then_resume_pays_only_for_what_was_missing(cache) -> None:
    crashing = KeywordProvider(crash_after=2)
    with pytest.raises(ConnectionError):
        run(crashing, cache)
    paid_before = cache.month_spend()
    resumed = KeywordProvider()
    result = run(resumed, cache)
    assert resumed.calls == 1 and len(result.reused_calls) == 2
    assert cache.month_spend() == pytest.approx(paid_before + result.usd_paid)
    again = KeywordProvider()
    assert run(again, cache).calls_made == 0 and again.calls == 0


def test_budget_stops_the_tier_and_sends_the_rest_on(cache) -> None:
    # Projections come from the prompt that would be sent (instructions, 2 label definitions, items),
    # so a budget of a little over one projected call allows the first call and stops before the rest.
    from labeling_dagster.core.runner import _projected_usd

    task = LabelTask(TAXONOMY, TIER, ITEMS[:2])
    one_call = _projected_usd([("k", task)], PRICE, batch=False)
    result = run(KeywordProvider(), cache, Budget(monthly_usd=one_call * 1.5))
    assert result.calls_made == 1
    assert result.budget_stopped == 3
    assert result.failures["t4"].startswith("budget reached")
    assert result.usd_paid <= one_call * 1.5 + result.usd_paid / result.calls_made  # at most the call in flight
    assert set(result.answers) | set(result.failures) == {item.item_id for item in ITEMS}


def test_budget_can_fail_the_run(cache) -> None:
    with pytest.raises(BudgetExceeded, match="raise budget.monthly_usd"):
        run(KeywordProvider(), cache, Budget(monthly_usd=0, on_exceeded="fail"))


def test_off_taxonomy_answer_is_a_failure_not_a_label(cache) -> None:
    result = run(KeywordProvider(bad_label_for="t2"), cache)
    assert "t2" not in result.answers
    assert result.failures["t2"] == "label 'made_up' is not in the taxonomy"
