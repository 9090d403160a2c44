"""Running one tier over a month's items: batching, the call cache, the budget guard, costing.

Provider-agnostic. Every call is keyed (core.labels.call_key) and stored as soon as it returns, so a
rerun, a backfill or a resume after a crash reuses stored answers and pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from labeling_dagster.core.labels import (
    Answer,
    CallOutcome,
    Item,
    LabelTask,
    PriorAnswer,
    Provider,
    call_key,
    validate_outcome,
)
from labeling_dagster.core.pricing import ModelPrice, call_usd
from labeling_dagster.core.prompts import build_prompt, estimated_output_tokens
from labeling_dagster.project import Budget, Taxonomy, TierConfig


class BudgetExceeded(RuntimeError):
    """The month's budget is spent and the project file says `budget.on_exceeded: fail`."""


@dataclass(frozen=True)
class CallRecord:
    call_id: str
    tier: str
    provider: str
    model: str
    version: str
    item_count: int
    outcome: CallOutcome
    usd: float
    first_item: str | None = None  # the request's first item id: a shard finds the calls of its item range by it


class CallCache(Protocol):
    def get(self, call_id: str) -> CallRecord | None:
        """A stored successful call, or None."""
        ...

    def put(self, record: CallRecord) -> None: ...


@dataclass
class TierResult:
    answers: dict[str, Answer] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    call_of: dict[str, str] = field(default_factory=dict)
    reused_calls: set[str] = field(default_factory=set)
    version: str = ""
    calls_made: int = 0
    usd_paid: float = 0.0
    budget_stopped: int = 0


def _chunks(items: list[Item], size: int) -> Iterable[list[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_tier(
    provider: Provider,
    *,
    tier: TierConfig,
    taxonomy: Taxonomy,
    items: list[Item],
    cache: CallCache,
    price: ModelPrice | None,
    budget: Budget,
    spent_before: float,
    prior: dict[str, list[PriorAnswer]] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> TierResult:
    """Label `items` with one tier. `price` is None for a free (local) provider; `spent_before` is
    what the month has already spent, so the budget guard sees the whole month."""
    prior = prior or {}
    result = TierResult()
    ordered = sorted(items, key=lambda item: item.item_id)  # stable batches, stable cache keys
    tasks = [
        LabelTask(taxonomy, tier, batch, {item.item_id: prior.get(item.item_id, []) for item in batch})
        for batch in _chunks(ordered, tier.items_per_request)
    ]
    pending: list[tuple[str, LabelTask]] = []
    for task in tasks:
        version = provider.version(task)
        result.version = version
        key = call_key(provider.provider_name, tier.model, version, task)
        stored = cache.get(key)
        if stored is not None:
            _absorb(result, key, task, stored.outcome)
            result.reused_calls.add(key)
        else:
            pending.append((key, task))

    label_many = getattr(provider, "label_batches", None)
    spent = spent_before
    done = len(tasks) - len(pending)
    for group in _waves(pending, tier, concurrent=label_many is not None):
        projected = spent + (_projected_usd(group, price, batch=tier.options.get("mode") == "batch") if price else 0.0)
        if price is not None and (spent >= budget.monthly_usd or projected > budget.monthly_usd):
            if budget.on_exceeded == "fail":
                raise BudgetExceeded(
                    f"tier {tier.name}: the month has spent ${spent:.4f} of its ${budget.monthly_usd:.2f} budget "
                    f"and the next calls would bring it to about ${projected:.4f}; raise budget.monthly_usd or set "
                    f"budget.on_exceeded: queue"
                )
            stopped = pending[pending.index(group[0]):]
            for _, task in stopped:
                for item in task.items:
                    result.failures[item.item_id] = f"budget reached (${spent:.4f} of ${budget.monthly_usd:.2f})"
                    result.budget_stopped += 1
            break
        outcomes = label_many([task for _, task in group]) if label_many else [provider.label_batch(group[0][1])]
        for (key, task), outcome in zip(group, outcomes, strict=True):
            outcome = validate_outcome(outcome, task)
            usd = 0.0
            if price is not None:
                usage = outcome.usage
                usd = call_usd(
                    price,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cached_input_tokens=usage.cached_input_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                    cache_write_1h_tokens=usage.cache_write_1h_tokens,
                    batch=outcome.batch,
                )
            cache.put(
                CallRecord(key, tier.name, provider.provider_name, tier.model, result.version, len(task.items), outcome, usd,
                           first_item=task.items[0].item_id)
            )
            spent += usd
            result.usd_paid += usd
            result.calls_made += 1
            _absorb(result, key, task, outcome)
            done += 1
            if on_progress:
                on_progress(done, len(tasks))
    return result


def _waves(pending: list[tuple[str, LabelTask]], tier: TierConfig, *, concurrent: bool) -> Iterable[list]:
    """Groups of calls sent together: the budget is checked before each group, so spend can pass the
    budget by at most one group (the calls in flight). A batch-mode tier sends one provider batch job."""
    if tier.options.get("mode") == "batch":
        size = max(1, int(tier.options.get("max_batch_requests", len(pending) or 1)))
    else:
        size = max(1, int(tier.options.get("max_concurrency", 8))) if concurrent else 1
    for start in range(0, len(pending), size):
        yield pending[start : start + size]


def _projected_usd(group: list[tuple[str, LabelTask]], price: ModelPrice, *, batch: bool) -> float:
    """What a group of calls is expected to cost, from the prompts that will be sent."""
    usd = 0.0
    for _, task in group:
        prompt = build_prompt(task)
        usd += call_usd(
            price,
            input_tokens=prompt.estimated_input_tokens,
            output_tokens=estimated_output_tokens(len(task.items), task.tier.prompt.with_reason),
            batch=batch,
        )
    return usd


def _absorb(result: TierResult, key: str, task: LabelTask, outcome: CallOutcome) -> None:
    for answer in outcome.answers:
        result.answers[answer.item_id] = answer
    for item_id, reason in outcome.failures.items():
        result.failures[item_id] = reason
    for item in task.items:
        result.call_of[item.item_id] = key
