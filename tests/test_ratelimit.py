"""The limiter and the retry loop, on a fake clock: no test sleeps for real."""

import random
import threading

import pytest

from labeling_dagster.core.ratelimit import (
    RateLimiter,
    RetriesExhausted,
    RetryPolicy,
    Transient,
    backoff_delay,
    call_with_retries,
    retry_after_seconds,
)


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_requests_per_minute_are_spread_over_the_minute():
    clock = FakeClock()
    limiter = RateLimiter(rpm=120, tpm=None, burst_s=1.0, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        limiter.acquire(tokens=100)
    # 2 per second, a burst of 2 at start: 10 requests need 4 more seconds
    assert clock.now == pytest.approx(4.0)


def test_tokens_are_counted_before_sending():
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=6000, burst_s=1.0, clock=clock, sleep=clock.sleep)  # 100 tokens/s
    limiter.acquire(tokens=100)
    assert limiter.delay(50) == pytest.approx(0.5)
    limiter.acquire(tokens=50)
    assert clock.now == pytest.approx(0.5)


def test_a_request_larger_than_the_bucket_still_goes_and_leaves_a_debt():
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=6000, burst_s=1.0, clock=clock, sleep=clock.sleep)
    limiter.acquire(tokens=1000)  # 10 seconds' worth
    assert clock.now == 0.0
    limiter.acquire(tokens=100)
    assert clock.now == pytest.approx(10.0)


def test_adjust_gives_back_what_was_over_estimated():
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=6000, burst_s=1.0, clock=clock, sleep=clock.sleep)
    limiter.acquire(tokens=100)
    limiter.adjust(estimated_tokens=100, actual_tokens=40)
    assert limiter.delay(60) == 0.0
    assert limiter.delay(61) > 0


def test_pause_holds_everyone_back():
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=None, clock=clock, sleep=clock.sleep)
    limiter.pause(3.0)
    limiter.acquire(tokens=1)
    assert clock.now == pytest.approx(3.0)


def test_limiter_never_admits_more_than_the_rate_across_threads():
    clock = FakeClock()
    lock = threading.Lock()

    def sleep(seconds):
        with lock:
            clock.now += seconds

    limiter = RateLimiter(rpm=60, tpm=None, burst_s=1.0, clock=clock, sleep=sleep)  # 1 a second, a bucket of 1
    admitted = []

    def worker():
        for _ in range(5):
            limiter.acquire(tokens=1)
            with lock:
                admitted.append(clock.now)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 20
    # the k-th admission (from 0) cannot come before k seconds: one at start, then one per second
    assert all(at >= k - 1e-9 for k, at in enumerate(sorted(admitted)))


def test_retry_after_headers():
    assert retry_after_seconds({"Retry-After": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    assert retry_after_seconds({"Retry-After": "Wed, 21 Oct 2026 07:28:05 GMT"}, now=lambda: 1792567680.0) == pytest.approx(5.0)
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_backoff_grows_and_honours_retry_after():
    policy = RetryPolicy(max_retries=5, backoff_s=1.0, max_backoff_s=8.0)
    rng = random.Random(0)
    delays = [backoff_delay(policy, retry, None, rng) for retry in range(5)]
    for retry, delay in enumerate(delays):
        step = min(8.0, 2**retry)
        assert step / 2 <= delay <= step
    assert 7.0 <= backoff_delay(policy, 0, 7.0, rng) <= 7.7


def test_retries_transient_errors_then_succeeds():
    clock = FakeClock()
    attempts = []

    def send():
        attempts.append(clock.now)
        if len(attempts) < 3:
            raise TimeoutError("slow")
        return "answer"

    seen = []
    result = call_with_retries(
        send,
        lambda exc: Transient("timeout") if isinstance(exc, TimeoutError) else None,
        RetryPolicy(max_retries=3, backoff_s=1.0),
        sleep=clock.sleep,
        rng=random.Random(1),
        on_retry=lambda transient, delay: seen.append(transient.reason),
    )
    assert result == "answer"
    assert seen == ["timeout", "timeout"]
    assert len(clock.slept) == 2


def test_gives_up_after_max_retries_and_raises_other_errors_at_once():
    clock = FakeClock()
    with pytest.raises(RetriesExhausted) as info:
        call_with_retries(lambda: (_ for _ in ()).throw(TimeoutError("x")), lambda exc: Transient("t"), RetryPolicy(max_retries=2), sleep=clock.sleep)
    assert info.value.attempts == 3
    calls = []

    def bad_request():
        calls.append(1)
        raise ValueError("400")

    with pytest.raises(ValueError):
        call_with_retries(bad_request, lambda exc: None, RetryPolicy(max_retries=5), sleep=clock.sleep)
    assert calls == [1]


def test_a_429_pauses_the_limiter_for_everyone():
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=None, clock=clock, sleep=clock.sleep)
    calls = []

    def send():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("429")
        return "ok"

    call_with_retries(send, lambda exc: Transient("HTTP 429", 2.0), RetryPolicy(), limiter=limiter, sleep=lambda s: None, rng=random.Random(0))
    assert limiter.delay(1) >= 2.0
