"""Running one tier over a month's items: per-item reuse of stored answers, batching, the budget
guard, costing.

Provider-agnostic. Reuse is per item: an item whose identical inputs (provider, model, prompt
version, item id and text, the earlier answers its prompt shows) already have a stored answer is
never sent again, whatever other items reach the tier this time; only the others are cut into
requests. Every request the provider answers (the call, its repair, the parts of a split request)
is stored the moment it returns, so a crash, a rerun, a backfill or a resume pays nothing twice.

A self-consistency tier asks each item `confidence.samples` times. Sample s is a copy of the tier
whose prompt version carries s (core.confidence.sample_tier), so its item and call keys are its own:
each sample is stored, reused and paid like the requests of any tier, and a rerun asks only the
samples it has no answer for.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from labeling_dagster.core.confidence import sample_tier, self_consistency
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
from labeling_dagster.core.prompts import build_prompt, earlier_answers_shown, estimated_output_tokens
from labeling_dagster.project import Budget, Taxonomy, TierConfig


class BudgetExceeded(RuntimeError):
    """The month's budget is spent and the project file says `budget.on_exceeded: fail`."""


@dataclass(frozen=True)
class CallRecord:
    """One request the provider answered or refused, as stored: every billed attempt is one record."""

    call_id: str  # the request's key (core.labels.call_key); stored as request_key, and as call_id unless taken
    tier: str
    provider: str
    model: str
    version: str
    item_count: int
    outcome: CallOutcome
    usd: float
    first_item: str | None = None  # the request's first item id: a shard finds the calls of its item range by it
    attempt: str = "call"  # call, repair (the items whose answer was unusable, asked again) or split (after a 400)


@dataclass(frozen=True)
class ItemRecord:
    """One item's stored result for identical inputs: its valid answer, or the failure it ended with
    after the provider was asked twice (call and repair) and billed both times."""

    item_key: str
    item_id: str
    answer: Answer | None
    failure: str | None
    call_id: str


class CallCache(Protocol):
    def items(self, item_keys: list[str]) -> dict[str, ItemRecord]:
        """The stored results of these item keys (those that have one)."""
        ...

    def get(self, call_id: str) -> CallRecord | None:
        """A stored call that answered (ok or partial) under this key: a warehouse written before
        results were stored per item is still reused."""
        ...

    def put(self, record: CallRecord, items: list[ItemRecord]) -> str:
        """Store one attempt and the item results it settled; returns the call id it was stored under."""
        ...

    def adopt(self, call_id: str, record: CallRecord, items: list[ItemRecord]) -> None:
        """Store per item the answers of a call stored before results were stored per item."""
        ...


def item_key(provider: str, model: str, version: str, tier: TierConfig, item: Item, prior: list[PriorAnswer]) -> str:
    """What decides one item's answer: the same provider, model, prompt version, item id and text, and
    earlier answers exactly as the prompt shows them, always give the same key."""
    shown = json.dumps(earlier_answers_shown(tier, prior), ensure_ascii=False, sort_keys=True)
    text = "\n".join([provider, model, version, f"{item.item_id}:{item.content_hash}:{shown}"])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


@dataclass
class TierResult:
    answers: dict[str, Answer] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    call_of: dict[str, str] = field(default_factory=dict)
    reused_calls: set[str] = field(default_factory=set)
    reused_items: int = 0
    version: str = ""
    calls_made: int = 0
    usd_paid: float = 0.0
    stopped: set[str] = field(default_factory=set)  # items the budget stopped before they were asked

    @property
    def budget_stopped(self) -> int:
        return len(self.stopped)


def _chunks(items: list[Item], size: int) -> Iterable[list[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Recorder:
    """Stores each attempt as the provider reports it (from any of its threads) and keeps the running spend."""

    def __init__(self, provider: Provider, tier: TierConfig, cache: CallCache, price: ModelPrice | None,
                 result: TierResult, spent: float, keys: dict[str, str]):
        self.provider, self.tier, self.cache, self.price = provider, tier, cache, price
        self.result, self.spent, self.keys = result, spent, keys
        self.lock = threading.Lock()
        self.answered_by: dict[str, str] = {}

    def __call__(self, task: LabelTask, outcome: CallOutcome, *, attempt: str = "call", final: bool = True) -> None:
        outcome = validate_outcome(outcome, task)
        usd = 0.0
        if self.price is not None:
            usage = outcome.usage
            usd = call_usd(
                self.price,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached_input_tokens=usage.cached_input_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                cache_write_1h_tokens=usage.cache_write_1h_tokens,
                batch=outcome.batch,
            )
        version = self.result.version  # the prompt version does not depend on the items
        key = call_key(self.provider.provider_name, self.tier.model, version, task)
        if attempt != "call":
            key = hashlib.sha256(f"{key}:{attempt}".encode()).hexdigest()[:40]
        replied = outcome.error is None and (outcome.usage.input_tokens > 0 or outcome.usage.output_tokens > 0
                                             or self.price is None)
        items = [ItemRecord(self.keys[answer.item_id], answer.item_id, answer, None, "") for answer in outcome.answers]
        if final and replied:
            # A reply came, was billed, and (for an LLM) this was already the second asking: its failures
            # are these inputs' result. A call that got no reply (retries ran out, a timeout, a 400) is not.
            items += [ItemRecord(self.keys[item_id], item_id, None, reason, "") for item_id, reason in outcome.failures.items()]
        record = CallRecord(key, self.tier.name, self.provider.provider_name, self.tier.model, version, len(task.items),
                            outcome, usd, first_item=task.items[0].item_id, attempt=attempt)
        with self.lock:
            call_id = self.cache.put(record, items)
            self.spent += usd
            self.result.usd_paid += usd
            self.result.calls_made += 1
            for answer in outcome.answers:
                self.answered_by[answer.item_id] = call_id
            for item_id in outcome.failures:
                self.answered_by.setdefault(item_id, call_id)


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
    what the month has already spent, so the budget guard sees the whole month. A self-consistency
    tier's answers are its samples' aggregates: their confidence is the share of the samples that
    agree (core.confidence.self_consistency)."""
    run = _run_samples if tier.confidence.signal == "self_consistency" else _run_once
    return run(provider, tier=tier, taxonomy=taxonomy, items=items, cache=cache, price=price, budget=budget,
               spent_before=spent_before, prior=prior or {}, on_progress=on_progress)


def _run_samples(provider: Provider, *, tier: TierConfig, taxonomy: Taxonomy, items: list[Item],
                 spent_before: float, **args) -> TierResult:
    """Each sample labels the items as a tier of its own, then each item's samples are aggregated. The
    result carries the tier's own prompt version, the one its label rows and calibrators are kept
    under. An item the budget kept from one of its samples fails with the budget's reason, not a
    share of fewer samples; its stored samples are reused once the budget allows the rest."""
    result = TierResult()
    if not items:
        return result
    result.version = provider.version(LabelTask(taxonomy, tier, sorted(items, key=lambda item: item.item_id)[:1]))
    runs = []
    for sample in range(tier.confidence.samples):
        run = _run_once(provider, tier=sample_tier(tier, sample), taxonomy=taxonomy, items=items,
                        spent_before=spent_before + result.usd_paid, **args)
        result.calls_made += run.calls_made
        result.usd_paid += run.usd_paid
        result.reused_calls |= run.reused_calls
        runs.append(run)
    for item in items:
        item_id = item.item_id
        stopped = next((run for run in runs if item_id in run.stopped), None)
        if stopped is not None:
            result.failures[item_id] = stopped.failures[item_id]
            result.stopped.add(item_id)
            continue
        answer = self_consistency([run.answers.get(item_id) for run in runs])
        if answer is None:
            source = runs[0]
            result.failures[item_id] = f"{source.failures.get(item_id, 'no answer')} (no sample of {len(runs)} answered)"
        else:
            result.answers[item_id] = answer
            # the call of the sample whose reason the answer gives
            source = next(run for run in runs if item_id in run.answers and run.answers[item_id].label == answer.label)
        if item_id in source.call_of:
            result.call_of[item_id] = source.call_of[item_id]
        result.reused_items += all(run.call_of.get(item_id) in run.reused_calls for run in runs)
    return result


def _run_once(
    provider: Provider,
    *,
    tier: TierConfig,
    taxonomy: Taxonomy,
    items: list[Item],
    cache: CallCache,
    price: ModelPrice | None,
    budget: Budget,
    spent_before: float,
    prior: dict[str, list[PriorAnswer]],
    on_progress: Callable[[int, int], None] | None,
) -> TierResult:
    """One pass of the tier over the items: stored answers reused per item, the rest asked."""
    result = TierResult()
    ordered = sorted(items, key=lambda item: item.item_id)  # stable batches
    if not ordered:
        return result
    result.version = provider.version(LabelTask(taxonomy, tier, ordered[:1]))
    keys = {item.item_id: item_key(provider.provider_name, tier.model, result.version, tier, item, prior.get(item.item_id, []))
            for item in ordered}
    stored = cache.items(list(keys.values()))
    todo = []
    for item in ordered:
        found = stored.get(keys[item.item_id])
        if found is None:
            todo.append(item)
            continue
        if found.answer is not None:
            result.answers[item.item_id] = found.answer
        else:
            result.failures[item.item_id] = found.failure or "no answer"
        result.call_of[item.item_id] = found.call_id
        result.reused_calls.add(found.call_id)
        result.reused_items += 1
    tasks = [
        LabelTask(taxonomy, tier, batch, {item.item_id: prior.get(item.item_id, []) for item in batch})
        for batch in _chunks(todo, tier.items_per_request)
    ]
    pending: list[tuple[str, LabelTask]] = []
    for task in tasks:
        key = call_key(provider.provider_name, tier.model, result.version, task)
        legacy = cache.get(key)  # a call stored before results were stored per item, for these very items
        if legacy is not None:
            outcome = validate_outcome(legacy.outcome, task)
            _absorb(result, {item.item_id: key for item in task.items}, outcome)
            # from now on its answers are reused per item, however the requests are cut next time
            cache.adopt(key, legacy, [ItemRecord(keys[a.item_id], a.item_id, a, None, key) for a in outcome.answers])
            result.reused_calls.add(key)
            result.reused_items += len(task.items)
        else:
            pending.append((key, task))

    label_many = getattr(provider, "label_batches", None)
    record = _Recorder(provider, tier, cache, price, result, spent_before, keys)
    done = len(tasks) - len(pending)
    for group in _waves(pending, tier, concurrent=label_many is not None):
        spent = record.spent
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
                    result.stopped.add(item.item_id)
            break
        if label_many:
            outcomes = label_many([task for _, task in group], on_call=record)
        else:
            outcomes = [provider.label_batch(group[0][1])]
            record(group[0][1], outcomes[0])
        for (_, task), outcome in zip(group, outcomes, strict=True):
            _absorb(result, record.answered_by, validate_outcome(outcome, task))
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


def _absorb(result: TierResult, call_of: dict[str, str], outcome: CallOutcome) -> None:
    for answer in outcome.answers:
        result.answers[answer.item_id] = answer
        result.call_of[answer.item_id] = call_of.get(answer.item_id, "")
    for item_id, reason in outcome.failures.items():
        result.failures[item_id] = reason
        if item_id in call_of:
            result.call_of[item_id] = call_of[item_id]
