"""Staying inside a provider's limits: a thread-safe limiter that reserves requests and estimated
tokens per minute before a call is sent, and a retry loop with exponential backoff and jitter that
honours Retry-After on 429, 5xx and timeouts. Pure: clock, sleep and randomness are injectable.

Threads, not asyncio: the Dagster assets that call providers are synchronous, and the SDK clients'
sync API over a small thread pool reaches the rate limits of any tier we meet.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


_NAP_S = 1.0  # the longest a waiting caller sleeps before it looks at the buckets again


class RateLimiter:
    """Two token buckets, one for requests and one for tokens, each refilled continuously at its
    per-minute limit. A bucket holds `burst_s` seconds' worth: providers enforce per-minute limits
    over shorter periods too (60,000 RPM may mean 1,000 per second), so a full minute's burst at
    start would earn 429s. A request larger than a bucket goes once the bucket is full and leaves
    it in debt, so any request can pass and the average rate still holds.

    `None` for a limit means unlimited. `pause(seconds)` holds every caller back, e.g. after a 429.

    A reservation stands until the call's fate is known: `adjust` once the provider reports what a
    call counted, `release` when it counted nothing (the request failed before the provider ran
    it). A waiting caller looks again at least every `_NAP_S` seconds, so a released reservation
    lets it go at once instead of after the wait it computed while the bucket was in debt.
    """

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        *,
        burst_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if (rpm is not None and rpm <= 0) or (tpm is not None and tpm <= 0):
            raise ValueError(f"rate limits must be positive: rpm={rpm}, tpm={tpm}")
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        now = clock()
        self._buckets = {
            name: _Bucket.full(limit / 60.0, burst_s, now)
            for name, limit in (("requests", rpm), ("tokens", tpm))
            if limit is not None
        }
        self._paused_until = now

    def delay(self, tokens: int) -> float:
        """Seconds to wait before a request of `tokens` estimated tokens may go (0: now)."""
        with self._lock:
            return self._delay(tokens, self._clock())

    def acquire(self, tokens: int) -> float:
        """Block until a request of `tokens` estimated tokens may go, then reserve it. Returns the
        seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                wait = self._delay(tokens, now)
                if wait <= 0:
                    for name, bucket in self._buckets.items():
                        bucket.level -= 1 if name == "requests" else tokens
                    return waited
            nap = min(wait, _NAP_S)
            self._sleep(nap)
            waited += nap

    def adjust(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Correct the token bucket once the provider reports what a call really counted."""
        with self._lock:
            bucket = self._buckets.get("tokens")
            if bucket is not None:
                bucket.refill(self._clock())
                bucket.level = min(bucket.capacity, bucket.level + estimated_tokens - actual_tokens)

    def release(self, estimated_tokens: int) -> None:
        """Give back the tokens reserved for a request the provider did not count: it refused it
        (HTTP 400, 401, ...; a 429 or 5xx too) or it never reached the provider (a connection error).
        Otherwise a failed request with a large estimate would leave the bucket in debt and hold the
        next requests back for minutes. The request itself stays counted (it may have reached the
        server), and a 429's wait is the `pause`, not the bucket's business."""
        self.adjust(estimated_tokens, 0)

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def _delay(self, tokens: int, now: float) -> float:
        wait = max(self._paused_until - now, 0.0)
        for name, bucket in self._buckets.items():
            bucket.refill(now)
            need = 1 if name == "requests" else min(tokens, bucket.capacity)
            if bucket.level < need:
                wait = max(wait, (need - bucket.level) / bucket.rate)
        return wait


@dataclass
class _Bucket:
    rate: float  # units per second
    capacity: float
    level: float
    at: float

    @classmethod
    def full(cls, rate: float, burst_s: float, now: float) -> _Bucket:
        capacity = max(rate * burst_s, 1.0)
        return cls(rate=rate, capacity=capacity, level=capacity, at=now)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_s: float = 1.0  # the first backoff; doubles each retry
    max_backoff_s: float = 60.0


@dataclass(frozen=True)
class Transient:
    """A failure worth retrying, and how long the provider asked us to wait (None: not said).

    `may_have_run`: the request may have reached the provider and been counted against its limits
    (a timeout: the answer was late, not necessarily refused), so its reservation is kept. Any other
    transient failure (429, 408, 409, 5xx, a connection error) was not counted: its reservation goes
    back (RateLimiter.release). For a 429 that is right too: the Retry-After pause holds every caller
    back for as long as the provider asks, and keeping the reservation as well would make the retry
    wait once for the pause and again for its own tokens, reserved a second time when it is sent."""

    reason: str
    retry_after_s: float | None = None
    may_have_run: bool = False


class RetriesExhausted(Exception):
    def __init__(self, attempts: int, last: BaseException) -> None:
        super().__init__(f"gave up after {attempts} attempts: {last}")
        self.attempts = attempts
        self.last = last


def backoff_delay(policy: RetryPolicy, retry: int, retry_after_s: float | None, rng: random.Random) -> float:
    """Exponential backoff with jitter: half the step fixed, half random, so that callers that failed
    together do not retry together. A Retry-After from the provider is a floor, plus up to 10%."""
    step = min(policy.max_backoff_s, policy.backoff_s * 2**retry)
    delay = step / 2 + rng.uniform(0, step / 2)
    if retry_after_s is not None:
        return retry_after_s * (1 + rng.uniform(0, 0.1))
    return delay


def call_with_retries(
    send: Callable[[], T],
    classify: Callable[[BaseException], Transient | None],
    policy: RetryPolicy,
    *,
    limiter: RateLimiter | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[Transient, float], None] | None = None,
) -> T:
    """Call `send` until it returns or fails with a non-transient error (raised as is) or the retries
    run out (RetriesExhausted). On a 429 the limiter pauses every caller for the wait, not only this
    one: the provider is telling all of them to slow down."""
    rng = rng or random.Random()
    for retry in range(policy.max_retries + 1):
        try:
            return send()
        except Exception as exc:
            transient = classify(exc)
            if transient is None:
                raise
            if retry == policy.max_retries:
                raise RetriesExhausted(retry + 1, exc) from exc
            delay = backoff_delay(policy, retry, transient.retry_after_s, rng)
            if on_retry is not None:
                on_retry(transient, delay)
            if limiter is not None and transient.retry_after_s is not None:
                limiter.pause(delay)
            sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")


def retry_after_seconds(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """The wait a response asks for: `retry-after-ms` (OpenAI, Anthropic), else `Retry-After` in
    seconds or as an HTTP date. None when absent or unreadable."""
    lowered = {key.lower(): value for key, value in headers.items()}
    if "retry-after-ms" in lowered:
        try:
            return max(float(lowered["retry-after-ms"]) / 1000, 0.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(email.utils.parsedate_to_datetime(value).timestamp() - now(), 0.0)
    except (TypeError, ValueError):
        return None


def sdk_error_classifier(
    status_error: type[BaseException], connection_error: type[BaseException]
) -> Callable[[BaseException], Transient | None]:
    """A classifier for an official SDK's exceptions (OpenAI and Anthropic share the shape):
    429, 408, 409 and 5xx (Anthropic's 529 "overloaded" included) and connection errors and
    timeouts are transient; any other status (400 bad request, 401 bad key, ...) is not. A timeout
    (both SDKs' APITimeoutError, a subclass of their connection error) may have run."""

    def classify(exc: BaseException) -> Transient | None:
        if isinstance(exc, status_error):
            status = getattr(exc, "status_code", 0)
            if status in (408, 409, 429) or status >= 500:
                response = getattr(exc, "response", None)
                headers = response.headers if response is not None else {}
                return Transient(f"HTTP {status}", retry_after_seconds(headers))
            return None
        if isinstance(exc, connection_error):
            return Transient(type(exc).__name__, may_have_run="Timeout" in type(exc).__name__)
        return None

    return classify
