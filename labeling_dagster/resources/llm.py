"""What the OpenAI and Anthropic providers share: per-tier rate limits and retries, the one repair
attempt for bad answers, concurrency over a tier's requests, and batch mode (submit, poll, ingest,
one repair round) with a journal so that a crash while a batch runs does not pay for it twice.

A subclass says how to talk to its provider: the request body, one online call, and the three
batch operations. Everything about items, prompts and parsing is in core/prompts.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import dagster as dg
from pydantic import PrivateAttr

from labeling_dagster.core.labels import CallOutcome, LabelTask
from labeling_dagster.core.prompts import (
    Prompt,
    Reply,
    build_prompt,
    combine_outcomes,
    estimated_output_tokens,
    failed_outcome,
    merge_repair,
    outcome_from_reply,
    part_of,
    prompt_version,
    repair_task,
)
from labeling_dagster.core.ratelimit import (
    RateLimiter,
    RetriesExhausted,
    RetryPolicy,
    Transient,
    call_with_retries,
)
from labeling_dagster.project import TierConfig


class OnCall(Protocol):
    """What label_batches reports for each request the provider answered or refused."""

    def __call__(self, task: LabelTask, outcome: CallOutcome, *, attempt: str, final: bool) -> None: ...


def _ignore_call(task: LabelTask, outcome: CallOutcome, *, attempt: str, final: bool) -> None:
    return None


class ProviderConfigError(RuntimeError):
    """The provider cannot be used as configured (missing key, unknown model, bad option): stop
    before anything is spent, with a message that says what to set."""


class BatchNotFinished(RuntimeError):
    """A provider batch job outlived options.batch_timeout_s; with a batch journal, the next run
    picks the same job up instead of paying for it again."""


class CallFailed(RuntimeError):
    """One request failed for good (retries ran out, or the provider rejected the request): its
    items fail with this message and go on to the next tier."""


@dataclass
class TierStats:
    """Counters for one tier, for run metadata and the throughput benchmark."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    repairs: int = 0
    batches_submitted: int = 0
    batches_resumed: int = 0


_COMMON_OPTIONS = {
    "mode", "rpm", "tpm", "burst_s", "max_concurrency", "timeout_s", "max_retries", "backoff_s",
    "max_backoff_s", "poll_interval_s", "batch_timeout_s", "max_batch_requests",
}


class LLMProvider(dg.ConfigurableResource):
    """Shared machinery of the LLM providers; see OpenAIProvider and AnthropicProvider."""

    batch_journal_dir: str | None = None
    base_url: str | None = None  # the resource's own endpoint (None: the provider's); a tier may name another

    provider_name: ClassVar[str]
    key_env: ClassVar[str]  # where the resource's key comes from, for messages
    provider_options: ClassVar[set[str]]  # tier options this provider reads besides the common ones
    batch_max_requests: ClassVar[int]
    batch_max_bytes: ClassVar[int]

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _limiters: dict[str, RateLimiter] = PrivateAttr(default_factory=dict)
    _stats: dict[str, TierStats] = PrivateAttr(default_factory=dict)

    # --- what a subclass provides -----------------------------------------------------------
    def check_ready(self, tier: TierConfig) -> None:
        """Raise ProviderConfigError when the tier cannot be called (missing key, ...)."""
        raise NotImplementedError

    def settings(self, tier: TierConfig) -> dict[str, Any]:
        """The model settings that change answers; part of the prompt version."""
        raise NotImplementedError

    def request_body(self, task: LabelTask, prompt: Prompt) -> dict[str, Any]:
        raise NotImplementedError

    def send(self, task: LabelTask, body: dict[str, Any]) -> Reply:
        """One online request, no retry: raises the SDK's error on failure."""
        raise NotImplementedError

    def classify(self, exc: BaseException) -> Transient | None:
        raise NotImplementedError

    def submit_batch(self, tier: TierConfig, requests: list[tuple[str, dict[str, Any]]]) -> str:
        raise NotImplementedError

    def batch_state(self, tier: TierConfig, batch_id: str) -> str:
        """"running", "ended", or "failed: <why>"."""
        raise NotImplementedError

    def batch_results(self, tier: TierConfig, batch_id: str, prompts: dict[str, Prompt], task_of: dict[str, LabelTask]) -> dict[str, Reply | str]:
        """custom_id -> the reply, or why that request produced none."""
        raise NotImplementedError

    # --- the Provider protocol ---------------------------------------------------------------
    def version(self, task: LabelTask) -> str:
        return prompt_version(task.taxonomy, task.tier, self.settings(task.tier))

    def label_batch(self, task: LabelTask) -> CallOutcome:
        """Label one request's items: call, repair the bad answers once, report usage and latency."""
        return self.label_batches([task])[0]

    def label_batches(self, tasks: list[LabelTask], on_call: OnCall | None = None) -> list[CallOutcome]:
        """Label many requests of one tier: concurrently under the tier's limits (online), or as one
        provider batch job (options.mode: batch). Outcomes come back in the order of `tasks`.

        `on_call(task, outcome, attempt=..., final=...)` is called once for every request the provider
        answered or refused (the call, its repair, the parts of a split request), the moment it
        returns and from the thread that sent it, so the caller can store what was paid before the
        next response arrives: a crash then loses no billed answer. `final` is False when the
        provider is asked again about the attempt's failed items (a repair or a split follows)."""
        if not tasks:
            return []
        tier = tasks[0].tier
        if any(task.tier != tier for task in tasks):
            raise ValueError("label_batches: all tasks must belong to one tier")
        self._check_options(tier)
        self.check_ready(tier)
        on_call = on_call or _ignore_call
        if self.option(tier, "mode", "online") == "batch":
            return self._label_in_batch(tasks, on_call)
        workers = min(int(self.option(tier, "max_concurrency", 8)), len(tasks))
        if workers <= 1:
            return [self._label_online(task, on_call) for task in tasks]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{tier.name}-llm") as pool:
            return list(pool.map(lambda task: self._label_online(task, on_call), tasks))

    def stats(self, tier_name: str) -> TierStats:
        with self._lock:
            return replace(self._stats.setdefault(tier_name, TierStats()))

    def _count(self, tier: TierConfig, **increments: int) -> None:
        with self._lock:
            stats = self._stats.setdefault(tier.name, TierStats())
            for name, amount in increments.items():
                setattr(stats, name, getattr(stats, name) + amount)

    def rejected(self, tier: TierConfig, where: str, exc: Any) -> Exception:
        """A refusal no retry fixes (an SDK status error). Key, permission or model problems stop
        the run, since every other call would fail the same way; a bad request fails this call's
        items only."""
        message = f"{where} answered HTTP {exc.status_code}: {_error_message(exc)}"
        if exc.status_code in (401, 403):
            if self.option(tier, "api_key_env") is None and self.option(tier, "base_url") not in (None, self.base_url):
                # the resource's key never goes to a tier's own endpoint (see _key): none was sent
                return ProviderConfigError(
                    f"tiers.{tier.name}: {message}; no key is sent to options.base_url unless options.api_key_env "
                    "names the environment variable that holds it"
                )
            key = self.option(tier, "api_key_env", self.key_env)
            return ProviderConfigError(f"tiers.{tier.name}: {message}; check the key in {key}")
        if exc.status_code == 404:
            return ProviderConfigError(f"tiers.{tier.name}: {message}; check the model name {tier.model!r}")
        return CallFailed(f"request rejected: {message}")

    def named_key(self, tier: TierConfig, where: str) -> str | None:
        """The key in the variable options.api_key_env names (None when the tier names none); a named
        variable that is not set stops the tier before any call. `where`: whose key it is, for the message."""
        env = self.option(tier, "api_key_env")
        if env is None:
            return None
        key = os.environ.get(env)
        if not key:
            raise ProviderConfigError(
                f"tiers.{tier.name}: the environment variable {env} (options.api_key_env) is not set; "
                f"export it with the key for {where}"
            )
        return key

    # --- options ----------------------------------------------------------------------------
    @staticmethod
    def option(tier: TierConfig, key: str, default: Any = None) -> Any:
        value = tier.options.get(key)
        return default if value is None else value

    def _check_options(self, tier: TierConfig) -> None:
        unknown = set(tier.options) - _COMMON_OPTIONS - self.provider_options
        if unknown:
            known = ", ".join(sorted(_COMMON_OPTIONS | self.provider_options))
            raise ProviderConfigError(
                f"tiers.{tier.name}.options: unknown key(s) {sorted(unknown)} for provider "
                f"{self.provider_name}; known keys: {known}"
            )
        mode = self.option(tier, "mode", "online")
        if mode not in ("online", "batch"):
            raise ProviderConfigError(f"tiers.{tier.name}.options.mode: {mode!r}; use online or batch")

    def _limiter(self, tier: TierConfig) -> RateLimiter:
        with self._lock:
            if tier.name not in self._limiters:
                self._limiters[tier.name] = RateLimiter(
                    self.option(tier, "rpm"), self.option(tier, "tpm"), burst_s=float(self.option(tier, "burst_s", 1.0))
                )
            return self._limiters[tier.name]

    def _retry_policy(self, tier: TierConfig) -> RetryPolicy:
        return RetryPolicy(
            max_retries=int(self.option(tier, "max_retries", 5)),
            backoff_s=float(self.option(tier, "backoff_s", 1.0)),
            max_backoff_s=float(self.option(tier, "max_backoff_s", 60.0)),
        )

    def timeout_s(self, tier: TierConfig) -> float:
        return float(self.option(tier, "timeout_s", 60.0))

    # --- online -----------------------------------------------------------------------------
    def _label_online(self, task: LabelTask, on_call: OnCall, *, attempt: str = "call") -> CallOutcome:
        started = time.monotonic()
        outcome = self._ask(task)
        if outcome.status == "rejected" and len(task.items) > 1 and attempt == "call":
            on_call(task, outcome, attempt=attempt, final=False)
            outcome = self._split(task, outcome, on_call)
        else:
            repair = bool(outcome.failures) and outcome.error is None
            on_call(task, outcome, attempt=attempt, final=not repair)
            if repair:
                self._count(task.tier, repairs=1)
                fix = repair_task(task, outcome.failures)
                fixed = self._ask(fix)
                merged = merge_repair(outcome, fixed)
                on_call(fix, _with_reasons_of(fixed, merged), attempt="repair", final=True)
                outcome = merged
        outcome.latency_s = time.monotonic() - started
        return outcome

    def _split(self, task: LabelTask, rejected: CallOutcome, on_call: OnCall) -> CallOutcome:
        """The provider refused a request of several items (an HTTP 400: too long, a policy, ...). Often
        one item is the cause, so the request is halved and each half sent; a half refused again is
        halved again, down to the single items that cause it, so the innocent items get their answers.
        When both halves of a request are refused, the cause is not an item (or two offending items
        sit in both halves): every item of that request fails, at the cost of two more refusals."""
        half = len(task.items) // 2
        parts = [part_of(task, task.items[:half]), part_of(task, task.items[half:])]
        outcomes = [self._label_online(part, on_call, attempt="split") for part in parts]
        if all(outcome.status == "rejected" for outcome in outcomes):
            return failed_outcome(task, rejected.error or "request rejected", status="rejected")
        return combine_outcomes([
            self._split(part, outcome, on_call) if outcome.status == "rejected" and len(part.items) > 1 else outcome
            for part, outcome in zip(parts, outcomes)
        ])

    def _ask(self, task: LabelTask) -> CallOutcome:
        tier = task.tier
        prompt = build_prompt(task)
        body = self.request_body(task, prompt)
        estimate = prompt.estimated_input_tokens + estimated_output_tokens(len(task.items), tier.prompt.with_reason)
        limiter = self._limiter(tier)

        def attempt() -> Reply:
            limiter.acquire(estimate)
            self._count(tier, requests=1)
            try:
                return self.send(task, body)
            except Exception as exc:
                # An attempt the provider did not count gives its tokens back, so a rejected request
                # with a huge estimate does not hold the next ones back: a refusal (CallFailed: 400;
                # ProviderConfigError: 401/403/404), a 429 or 5xx, a connection error; the last one
                # of a RetriesExhausted too. Kept: a timeout (it may have run; Transient.may_have_run)
                # and anything unclassified (e.g. an answer that failed to parse was counted).
                transient = self.classify(exc)
                if isinstance(exc, (CallFailed, ProviderConfigError)) or (transient is not None and not transient.may_have_run):
                    limiter.release(estimate)
                raise

        def on_retry(transient: Transient, delay: float) -> None:
            self._count(tier, retries=1, rate_limited=int(transient.reason == "HTTP 429"))

        try:
            reply = call_with_retries(attempt, self.classify, self._retry_policy(tier), limiter=limiter, on_retry=on_retry)
        except RetriesExhausted as exc:
            return failed_outcome(task, f"{self.provider_name} call failed: {exc}")
        except CallFailed as exc:
            return failed_outcome(task, str(exc), status="rejected")
        limiter.adjust(estimate, reply.usage.input_tokens + reply.usage.output_tokens)
        return outcome_from_reply(prompt, task.taxonomy, reply, tier.confidence.signal)

    # --- batch mode -------------------------------------------------------------------------
    def _label_in_batch(self, tasks: list[LabelTask], on_call: OnCall) -> list[CallOutcome]:
        started = time.monotonic()
        tier = tasks[0].tier
        outcomes = [replace(outcome, batch=True) for outcome in self._batch_round(tasks)]
        to_repair = [i for i, outcome in enumerate(outcomes) if outcome.failures and outcome.error is None]
        for i, (task, outcome) in enumerate(zip(tasks, outcomes)):
            on_call(task, outcome, attempt="call", final=i not in to_repair)
        if to_repair:
            self._count(tier, repairs=len(to_repair))
            fixes = [repair_task(tasks[i], outcomes[i].failures) for i in to_repair]
            repaired = [replace(outcome, batch=True) for outcome in self._batch_round(fixes)]
            for i, fix, repair in zip(to_repair, fixes, repaired):
                merged = merge_repair(outcomes[i], repair)
                on_call(fix, _with_reasons_of(repair, merged), attempt="repair", final=True)
                outcomes[i] = merged
        latency = time.monotonic() - started
        return [replace(outcome, batch=True, latency_s=latency) for outcome in outcomes]

    def _batch_round(self, tasks: list[LabelTask]) -> list[CallOutcome]:
        tier = tasks[0].tier
        prompts = [build_prompt(task) for task in tasks]
        version = self.version(tasks[0])
        # the custom id is the request's content hash, so a resumed journal matches only itself
        custom_ids = [
            f"r{i}-" + hashlib.sha256(f"{version}\n{p.user}".encode()).hexdigest()[:20] for i, p in enumerate(prompts)
        ]
        by_id = dict(zip(custom_ids, prompts))
        task_of = dict(zip(custom_ids, tasks))
        journal = self._journal(tier, custom_ids)
        batch_ids = self._read_journal(journal)
        if batch_ids:
            self._count(tier, batches_resumed=len(batch_ids))
        else:
            requests = [(cid, self.request_body(task, prompt)) for cid, task, prompt in zip(custom_ids, tasks, prompts)]
            for chunk in self._chunks(tier, requests):
                batch_ids.append(self.submit_batch(tier, chunk))
                self._count(tier, batches_submitted=1)
                self._write_journal(journal, batch_ids)
        states = self._wait_for(tier, batch_ids, journal)
        replies: dict[str, Reply | str] = {}
        for batch_id in batch_ids:
            if states[batch_id] == "ended":
                replies.update(self.batch_results(tier, batch_id, by_id, task_of))
            else:
                replies.update({cid: f"{self.provider_name} batch {batch_id} {states[batch_id]}" for cid in custom_ids})
        outcomes = []
        for cid, task, prompt in zip(custom_ids, tasks, prompts):
            reply = replies.get(cid, f"{self.provider_name} batch ended without running this request (expired or cancelled)")
            outcomes.append(
                failed_outcome(task, reply) if isinstance(reply, str)
                else outcome_from_reply(prompt, task.taxonomy, reply, tier.confidence.signal)
            )
        return outcomes

    def _chunks(self, tier: TierConfig, requests: list[tuple[str, dict[str, Any]]]) -> list[list[tuple[str, dict[str, Any]]]]:
        """Split into jobs within the provider's per-batch request count and size limits."""
        max_requests = min(int(self.option(tier, "max_batch_requests", self.batch_max_requests)), self.batch_max_requests)
        chunks: list[list[tuple[str, dict[str, Any]]]] = [[]]
        size = 0
        for request in requests:
            line = len(json.dumps(request[1]).encode()) + 200  # the envelope around the body
            if chunks[-1] and (len(chunks[-1]) >= max_requests or size + line > self.batch_max_bytes):
                chunks.append([])
                size = 0
            chunks[-1].append(request)
            size += line
        return chunks

    def _wait_for(self, tier: TierConfig, batch_ids: list[str], journal: Path | None) -> dict[str, str]:
        interval = float(self.option(tier, "poll_interval_s", 30.0))
        deadline = time.monotonic() + float(self.option(tier, "batch_timeout_s", 26 * 3600))
        states = {batch_id: "running" for batch_id in batch_ids}
        while True:
            for batch_id in batch_ids:
                if states[batch_id] == "running":
                    states[batch_id] = self.batch_state(tier, batch_id)
            if all(state != "running" for state in states.values()):
                break
            if time.monotonic() > deadline:
                where = f"; the journal {journal} lets a rerun collect them" if journal else ""
                raise BatchNotFinished(
                    f"tiers.{tier.name}: {self.provider_name} batch(es) {batch_ids} still running after "
                    f"options.batch_timeout_s{where}"
                )
            time.sleep(interval)
        if journal is not None and any(state.startswith("failed") for state in states.values()):
            journal.unlink(missing_ok=True)  # a failed job must be submitted anew on the next run
        return states

    def _journal(self, tier: TierConfig, custom_ids: list[str]) -> Path | None:
        if self.batch_journal_dir is None:
            return None
        key = hashlib.sha256("\n".join(custom_ids).encode()).hexdigest()[:24]
        return Path(self.batch_journal_dir) / f"{self.provider_name}-{tier.name}-{key}.json"

    @staticmethod
    def _read_journal(journal: Path | None) -> list[str]:
        if journal is None or not journal.exists():
            return []
        return list(json.loads(journal.read_text())["batch_ids"])

    @staticmethod
    def _write_journal(journal: Path | None, batch_ids: list[str]) -> None:
        if journal is None:
            return
        journal.parent.mkdir(parents=True, exist_ok=True)
        journal.write_text(json.dumps({"batch_ids": batch_ids}))


def _with_reasons_of(repair: CallOutcome, merged: CallOutcome) -> CallOutcome:
    """The repair attempt as stored: its own usage, and the failure reasons the call and its repair give
    together (what the label rows and the next tier's prompt show), so a rerun that reuses the stored
    failure shows the next tier the very same text."""
    return replace(repair, failures={item_id: merged.failures.get(item_id, reason) for item_id, reason in repair.failures.items()})


def _error_message(exc: Any) -> str:
    """The provider's own error message from an SDK status error (both SDKs keep the JSON body)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(getattr(exc, "message", exc))
