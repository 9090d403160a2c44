"""Items per second through our OpenAI provider against a plain sequential loop, under rate limits.

A SIMULATED OpenAI-compatible server (tests/fake_llm_server.py) answers with a lognormal latency
that grows with the output tokens, and refuses with 429 + Retry-After beyond its RPM / TPM limits.
We label N banking77 items through OpenAIProvider.label_batches (20 items per request, concurrent
under the limiter), then a naive loop with the openai SDK, one item per request (on a subset: its
rate does not depend on N). The ceiling is what the limits allow for the requests we actually sent.
Run: python -m benchmarks.throughput --out throughput.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from pathlib import Path

import openai

from benchmarks.tokens import load_banking77
from labeling_dagster.core.labels import LabelTask
from labeling_dagster.core.prompts import build_prompt
from labeling_dagster.project import TierConfig
from labeling_dagster.resources.openai_provider import OpenAIProvider
from tests.fake_llm_server import FakeLLMServer


class Latency:
    """SIMULATED response time: a lognormal time to first token plus a time per output token.
    The server asks for a sample per request; the output size is known only after answering, so
    the per-token part uses the request's item count, read by the server hook below."""

    def __init__(self, median_s: float, sigma: float, per_item_s: float, seed: int) -> None:
        self.median_s, self.sigma, self.per_item_s = median_s, sigma, per_item_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.local = threading.local()

    def __call__(self) -> float:
        with self.lock:
            base = self.median_s * self.rng.lognormvariate(0, self.sigma)
        return base + self.per_item_s * getattr(self.local, "items", 1)


class LatencyServer(FakeLLMServer):
    """The SIMULATED server, told how many items each chat request carries (for its latency)."""

    def __init__(self, latency: Latency, **kwargs) -> None:
        super().__init__(latency=latency, **kwargs)
        self._latency_model = latency

    def _chat(self, body, scripted):
        self._latency_model.local.items = max(1, len(body["messages"][-1]["content"].splitlines()))
        return super()._chat(body, scripted)


def run(n_items: int, naive_items: int, per_request: int, rpm: float, tpm: float, seed: int) -> dict:
    taxonomy, items = load_banking77(n_items)
    latency = Latency(median_s=0.25, sigma=0.5, per_item_s=0.04, seed=seed)
    with LatencyServer(latency, rpm=rpm, tpm=tpm, burst_s=1.0) as server:
        tier = TierConfig(
            name="first_pass", role="first_pass", provider="openai", model="gpt-5-nano", items_per_request=per_request,
            options={"base_url": server.openai_base_url, "rpm": rpm, "tpm": tpm, "max_concurrency": 32, "timeout_s": 30},
        )
        tasks = [LabelTask(taxonomy=taxonomy, tier=tier, items=items[i : i + per_request]) for i in range(0, len(items), per_request)]
        provider = OpenAIProvider()
        started = time.perf_counter()
        outcomes = provider.label_batches(tasks)
        ours_s = time.perf_counter() - started
        answered = {a.item_id for o in outcomes for a in o.answers}
        failed = {item_id for o in outcomes for item_id in o.failures}
        lost = [item.item_id for item in items if item.item_id not in answered and item.item_id not in failed]
        ok_calls = [r for r in server.requests if r.path == "/v1/chat/completions" and r.status == 200]
        # what the server counted per request against its token limit (prompt + completion)
        tokens_per_request = sum(r.response["usage"]["total_tokens"] for r in ok_calls) / len(ok_calls)
        ours_retries = provider.stats("first_pass").retries
        ours_429 = server.rate_limited

        client = openai.OpenAI(api_key="no-key", base_url=server.openai_base_url)  # SDK defaults: 2 retries
        naive_lost = 0
        started = time.perf_counter()
        for item in items[:naive_items]:
            one = LabelTask(taxonomy=taxonomy, tier=tier, items=[item])
            body = provider.request_body(one, build_prompt(one))
            try:
                client.chat.completions.create(**body)
            except openai.APIError:
                naive_lost += 1
        naive_s = time.perf_counter() - started

    requests_per_s = min(rpm / 60, tpm / 60 / tokens_per_request)
    ceiling = requests_per_s * len(items) / len(tasks)
    ours = len(items) / ours_s
    return {
        "items": len(items),
        "items_per_request": per_request,
        "limits": {"rpm": rpm, "tpm": tpm},
        "tokens_per_request": round(tokens_per_request, 1),
        "ours_items_per_s": round(ours, 2),
        "naive_items_per_s": round(naive_items / naive_s, 2),
        "naive_items": naive_items,
        "naive_items_lost": naive_lost,
        "ceiling_items_per_s": round(ceiling, 2),
        "ratio_to_ceiling": round(ours / ceiling, 3),
        "items_lost": len(lost),
        "items_failed": len(failed - answered),
        "retries": ours_retries,
        "server_429s_ours": ours_429,
        "ours_seconds": round(ours_s, 2),
        "simulated": "local fake server (tests/fake_llm_server.py): latency = lognormal(median 0.25 s, sigma 0.5) "
        "+ 0.04 s per item; limits as token buckets holding 1 s of the per-minute rate",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where to write the JSON result")
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.quick:
        result = run(n_items=2000, naive_items=60, per_request=20, rpm=600, tpm=1_000_000, seed=args.seed)
    else:
        result = run(n_items=10000, naive_items=300, per_request=20, rpm=600, tpm=1_000_000, seed=args.seed)
    print(f"throughput, {result['items']} items, {result['items_per_request']} per request, limits {result['limits']}")
    print(f"{'':>24} {'items/s':>9}")
    for key in ("ours_items_per_s", "naive_items_per_s", "ceiling_items_per_s"):
        print(f"{key:>24} {result[key]:>9}")
    print(f"ratio to ceiling {result['ratio_to_ceiling']} (target >= 0.9), items lost {result['items_lost']}, "
          f"retries {result['retries']}, 429s {result['server_429s_ours']}")
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
