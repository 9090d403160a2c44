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


# --- giving back the reservation of a request the provider did not count (issue 12, 7b) ---


def test_release_gives_back_a_failed_requests_tokens_but_not_its_request():
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, tpm=6000, burst_s=1.0, clock=clock, sleep=clock.sleep)  # 1 request, 100 tokens a second
    limiter.acquire(tokens=60_000)  # ten minutes' worth of tokens: the bucket is in debt
    assert limiter.delay(1) == pytest.approx(600.0, rel=0.01)
    limiter.release(60_000)  # the provider refused it (a 400): it counted none of them
    assert limiter.delay(1) == pytest.approx(1.0)  # only the request's own slot is still taken
    clock.now += 1.0
    assert limiter.delay(100) == 0.0  # the token bucket is full again, not past its capacity
    limiter.acquire(100)
    assert limiter.delay(1) > 0


def test_a_waiting_caller_goes_as_soon_as_a_reservation_is_released():
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=6000, burst_s=1.0, clock=clock, sleep=lambda s: (clock.sleep(s), limiter.release(60_000)))
    limiter.acquire(tokens=60_000)  # another caller's request, in flight
    # This caller computes a wait of ten minutes; the first request fails and gives its tokens back
    # while it sleeps, so it looks again after one short nap and goes.
    waited = limiter.acquire(tokens=10)
    assert waited == pytest.approx(1.0)
    assert clock.now == pytest.approx(1.0)


def test_sdk_timeouts_may_have_run_other_transient_errors_did_not():
    import anthropic
    import httpx2 as httpx  # the HTTP client both SDKs are built on
    import openai

    from labeling_dagster.core.ratelimit import sdk_error_classifier

    request = httpx.Request("POST", "http://127.0.0.1/v1/messages")
    for sdk in (openai, anthropic):
        classify = sdk_error_classifier(sdk.APIStatusError, sdk.APIConnectionError)
        assert classify(sdk.APITimeoutError(request=request)).may_have_run is True
        assert classify(sdk.APIConnectionError(request=request)).may_have_run is False
        limited = sdk.RateLimitError("slow", response=httpx.Response(429, request=request), body=None)
        assert classify(limited) == Transient("HTTP 429", None, may_have_run=False)


def test_a_rejected_request_with_a_huge_estimate_does_not_delay_the_next_one():
    """At the HTTP boundary: the real OpenAI SDK against the SIMULATED server (tests/fake_llm_server.py)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_llm_server import FakeLLMServer

    from labeling_dagster.core.labels import Item, LabelTask, content_hash
    from labeling_dagster.project import LabelDef, Taxonomy, TierConfig
    from labeling_dagster.resources.openai_provider import OpenAIProvider

    taxonomy = Taxonomy(labels=[LabelDef(name=n) for n in ("card_arrival", "refund")])
    tier = TierConfig(name="first_pass", role="first_pass", provider="openai", model="gpt-5-nano", options={
        "tpm": 6000, "max_retries": 1, "backoff_s": 0.01, "max_backoff_s": 0.02, "timeout_s": 0.3})

    def one(text: str, on: TierConfig = tier) -> LabelTask:
        return LabelTask(taxonomy=taxonomy, tier=on, items=[Item("t0", text, content_hash(text))])

    huge = one("please refund the card " * 1500)  # about 7,500 estimated tokens: 75 s of a 6,000 TPM bucket
    with FakeLLMServer() as server:
        tier.options["base_url"] = server.openai_base_url
        provider = OpenAIProvider()
        limiter = provider._limiter(tier)

        server.enqueue("/v1/chat/completions", status=400, body={"error": {"message": "context too long", "type": "invalid_request_error"}})
        rejected = provider.label_batch(huge)
        assert rejected.status == "rejected" and "context too long" in rejected.error
        assert limiter.delay(100) == 0.0  # a full bucket: the next request goes at once

        for _ in range(2):  # retries run out on 500s: neither attempt was counted
            server.enqueue("/v1/chat/completions", status=500)
        exhausted = provider.label_batch(huge)
        assert "gave up after 2 attempts" in exhausted.error
        assert limiter.delay(100) == 0.0

        assert provider.label_batch(one("refund me")).status == "ok"  # a real answer: adjusted to its usage
        assert len(server.calls("/v1/chat/completions")) == 4

        # A timeout may have run on the provider's side: its reservation stands (a tier of its own,
        # without retries, so that no retry waits for it).
        slow = tier.model_copy(update={"name": "slow", "options": {**tier.options, "max_retries": 0}})
        server.enqueue("/v1/chat/completions", delay_s=0.6)
        late = provider.label_batch(one(huge.items[0].text, slow))
        assert "gave up after 1 attempts: Request timed out" in late.error
        assert provider._limiter(slow).delay(100) > 30.0
