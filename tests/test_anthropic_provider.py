"""Contract tests of the Anthropic provider: the real `anthropic` SDK against a SIMULATED local
server (tests/fake_llm_server.py). They assert the requests it sends and what it makes of the answers."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer  # noqa: E402

from labeling_dagster.core.labels import Item, LabelTask, PriorAnswer, content_hash  # noqa: E402
from labeling_dagster.core.pricing import builtin_catalog, call_usd  # noqa: E402
from labeling_dagster.project import LabelDef, Taxonomy, TierConfig  # noqa: E402
from labeling_dagster.resources.anthropic_provider import AnthropicProvider  # noqa: E402
from labeling_dagster.resources.llm import ProviderConfigError  # noqa: E402

TAXONOMY = Taxonomy(labels=[LabelDef(name=n, description=f"about {n}") for n in ("card_arrival", "exchange_rate", "lost_card", "refund")])
TEXTS = ["my card arrival is late", "what exchange rate do you use", "I lost my card"]
FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05, "poll_interval_s": 0.01}


def tier(server, role="qa", **options):
    return TierConfig(
        name=role, role=role, provider="anthropic", model="claude-haiku-4-5",
        options={"base_url": server.anthropic_base_url, **FAST, **options},
    )


def task(t, texts=TEXTS, prior=None, start=0):
    items = [Item(f"t{start + i}", text, content_hash(text)) for i, text in enumerate(texts)]
    return LabelTask(taxonomy=TAXONOMY, tier=t, items=items, prior=prior or {})


def labels(outcome):
    return {a.item_id: a.label for a in outcome.answers}


@pytest.fixture
def server():
    with FakeLLMServer(cache_min_tokens=20) as fake:
        yield fake


def test_request_forces_a_strict_tool_and_marks_the_prefix_for_caching(server):
    prior = {"t0": [PriorAnswer(tier="first_pass", label="lost_card", confidence=0.6)]}
    # the resource's own endpoint (the tier's base_url is the resource's), so the resource's key goes there
    provider = AnthropicProvider(api_key="test-key", base_url=server.anthropic_base_url)
    outcome = provider.label_batch(task(tier(server), prior=prior))
    assert labels(outcome) == {"t0": "card_arrival", "t1": "exchange_rate", "t2": "lost_card"}
    (call,) = server.calls("/v1/messages")
    body = call.body
    assert call.headers["authorization"] == "Bearer test-key"  # how SDK 2.x sends an API key
    assert body["model"] == "claude-haiku-4-5" and body["max_tokens"] > 0
    (system,) = body["system"]
    assert system["cache_control"] == {"type": "ephemeral"}
    assert "- refund: about refund" in system["text"] and "earlier, cheaper labeler" in system["text"]
    (tool,) = body["tools"]
    assert tool["strict"] is True
    assert tool["input_schema"]["properties"]["items"]["items"]["properties"]["label"]["enum"] == list(TAXONOMY.names)
    assert body["tool_choice"] == {"type": "tool", "name": tool["name"]}
    rows = [json.loads(line) for line in body["messages"][0]["content"].splitlines()]
    assert [row["id"] for row in rows] == ["1", "2", "3"]
    assert rows[0]["earlier_answers"][0]["label"] == "lost_card"


def test_usage_adds_cache_reads_and_writes_into_input_tokens(server):
    provider = AnthropicProvider(api_key="k")
    first = provider.label_batch(task(tier(server)))
    second = provider.label_batch(task(tier(server), TEXTS[:1]))
    assert first.usage.cache_write_tokens > 0 and first.usage.cached_input_tokens == 0
    assert second.usage.cached_input_tokens == first.usage.cache_write_tokens and second.usage.cache_write_tokens == 0
    assert second.usage.input_tokens > second.usage.cached_input_tokens
    price = builtin_catalog().price("claude-haiku-4-5")
    usd = call_usd(price, input_tokens=second.usage.input_tokens, output_tokens=second.usage.output_tokens,
                   cached_input_tokens=second.usage.cached_input_tokens)
    fresh = second.usage.input_tokens - second.usage.cached_input_tokens
    assert usd == pytest.approx((fresh * 1.0 + second.usage.cached_input_tokens * 0.10 + second.usage.output_tokens * 5.0) / 1e6)


def test_one_hour_cache_writes_are_priced_at_their_own_rate(server):
    provider = AnthropicProvider(api_key="k")
    five = provider.label_batch(task(tier(server)))
    server._seen_prefixes.clear()  # the simulated cache forgets, so the next call writes again
    hour = provider.label_batch(task(tier(server, cache_ttl="1h")))
    assert five.usage.cache_write_tokens > 0 and five.usage.cache_write_1h_tokens == 0
    assert hour.usage.cache_write_1h_tokens == hour.usage.cache_write_tokens > 0
    price = builtin_catalog().price("claude-haiku-4-5")  # writes: 1.25 (5 minutes), 2.00 (1 hour) per 1M

    def usd(usage) -> float:
        return call_usd(price, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                        cached_input_tokens=usage.cached_input_tokens, cache_write_tokens=usage.cache_write_tokens,
                        cache_write_1h_tokens=usage.cache_write_1h_tokens)

    written = hour.usage.cache_write_tokens
    assert usd(hour.usage) - usd(five.usage) == pytest.approx(written * (2.00 - 1.25) / 1e6)


def test_one_hour_cache_and_output_format_mode(server):
    AnthropicProvider(api_key="k").label_batch(task(tier(server, cache_ttl="1h", structured="output_format")))
    body = server.calls("/v1/messages")[0].body
    assert body["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert "tools" not in body
    assert body["output_config"]["format"]["type"] == "json_schema"


def test_output_format_answer_is_parsed_from_text(server):
    outcome = AnthropicProvider(api_key="k").label_batch(task(tier(server, structured="output_format")))
    assert labels(outcome) == {"t0": "card_arrival", "t1": "exchange_rate", "t2": "lost_card"}


def test_overloaded_and_429_are_retried(server):
    server.enqueue("/v1/messages", status=529, body={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    server.enqueue("/v1/messages", status=429, headers={"retry-after": "0.02"}, body={"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}})
    provider = AnthropicProvider(api_key="k")
    outcome = provider.label_batch(task(tier(server)))
    assert outcome.status == "ok"
    stats = provider.stats("qa")
    assert (stats.retries, stats.rate_limited, stats.requests) == (2, 1, 3)


def test_bad_tool_input_is_repaired_then_reported(server):
    server.enqueue("/v1/messages", content={"items": [{"id": "1", "label": "card_arrival", "confidence": 0.8, "reason": ""},
                                                     {"id": "7", "label": "refund", "confidence": 0.8, "reason": ""}]})
    server.enqueue("/v1/messages", content={"items": []})
    outcome = AnthropicProvider(api_key="k").label_batch(task(tier(server)))
    assert labels(outcome) == {"t0": "card_arrival"}
    assert outcome.failures["t1"] == (
        "no answer for this item in the response (it answered unknown id(s) '7'); "
        "after one repair attempt: no answer for this item in the response"
    )
    assert outcome.status == "partial"
    assert len(server.calls("/v1/messages")) == 2


def test_missing_key_fails_at_once_naming_the_variable(server, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ProviderConfigError, match="ANTHROPIC_API_KEY is not set"):
        AnthropicProvider(base_url=server.anthropic_base_url).label_batch(task(tier(server)))
    with pytest.raises(ProviderConfigError, match="GATEWAY_KEY .options.api_key_env. is not set"):
        AnthropicProvider(api_key="k").label_batch(task(tier(server, api_key_env="GATEWAY_KEY")))
    assert server.requests == []


def _credentials(call) -> list[str]:
    """Every header that can carry a key (SDK 2.x sends it as a bearer token, older ones as x-api-key)."""
    return [value for name, value in call.headers.items() if name in ("authorization", "x-api-key")]


def test_anthropic_key_is_not_sent_to_another_base_url(server, monkeypatch):
    # Also in the environment, where the SDK would look for a key it is not given.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-resource")
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    resource = AnthropicProvider(api_key="sk-ant-resource")  # bound to api.anthropic.com
    assert resource.label_batch(task(tier(server), TEXTS[:1])).status == "ok"
    (call,) = server.calls("/v1/messages")
    assert _credentials(call) == ["Bearer no-key"]
    monkeypatch.setenv("GATEWAY_KEY", "gateway-key")
    resource.label_batch(task(tier(server, api_key_env="GATEWAY_KEY"), TEXTS[1:2]))
    assert _credentials(server.calls("/v1/messages")[1]) == ["Bearer gateway-key"]
    # The resource's own endpoint (a tier without base_url) gets the resource's key.
    own = AnthropicProvider(api_key="sk-ant-resource", base_url=server.anthropic_base_url)
    own.label_batch(task(TierConfig(name="qa", role="qa", provider="anthropic", model="claude-haiku-4-5",
                                    options=FAST), TEXTS[2:]))
    assert _credentials(server.calls("/v1/messages")[2]) == ["Bearer sk-ant-resource"]
    assert not any("sk-ant-resource" in value for call in server.requests[:2] for value in call.headers.values())


def test_message_batches_submit_poll_and_ingest(server):
    t = tier(server, mode="batch")
    tasks = [task(t, TEXTS[:2]), task(t, TEXTS[2:], start=2)]
    server.enqueue("/v1/messages", content={"items": [{"id": "1", "label": "card_arrival", "confidence": 2, "reason": ""},
                                                     {"id": "2", "label": "exchange_rate", "confidence": 0.7, "reason": ""}]})
    outcomes = AnthropicProvider(api_key="k").label_batches(tasks)
    assert [o.batch for o in outcomes] == [True, True]
    assert labels(outcomes[0]) == {"t0": "card_arrival", "t1": "exchange_rate"}  # t0 came back in the repair batch
    assert labels(outcomes[1]) == {"t2": "lost_card"}
    first, repair = server.calls("/v1/messages/batches")
    requests = first.body["requests"]
    assert len(requests) == 2 and all(set(r) == {"custom_id", "params"} for r in requests)
    assert requests[0]["params"]["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert len(repair.body["requests"]) == 1
    assert json.loads(repair.body["requests"][0]["params"]["messages"][0]["content"])["text"] == TEXTS[0]
    assert outcomes[0].usage.input_tokens > 0


def test_errored_batch_requests_fail_their_items(server):
    t = tier(server, mode="batch")
    server.enqueue("/v1/messages", status=500)  # the first request of the batch errors
    first, second = AnthropicProvider(api_key="k").label_batches([task(t, TEXTS[:1]), task(t, TEXTS[1:2], start=1)])
    assert first.status == "error" and first.failures == {"t0": "batch request failed: simulated failure"}
    assert labels(second) == {"t1": "exchange_rate"} and second.batch
    assert len(server.calls("/v1/messages/batches")) == 1


def test_one_hour_writes_without_a_one_hour_price_and_usage_from_a_gateway() -> None:
    from anthropic.types import Message

    from labeling_dagster.core.labels import CallOutcome, Usage
    from labeling_dagster.core.pricing import ModelPrice
    from labeling_dagster.resources.anthropic_provider import _reply

    # A project's `prices:` entry from before the 1-hour price: Anthropic's 2x input, not the 5-minute 1.25x.
    old_entry = ModelPrice(provider="anthropic", input=1.0, output=5.0, cached_input=0.1, cache_write=1.25)
    assert call_usd(old_entry, input_tokens=1_000_000, output_tokens=0, cache_write_tokens=1_000_000,
                    cache_write_1h_tokens=1_000_000) == pytest.approx(2.0)
    other = ModelPrice(provider="someone", input=1.0, output=5.0, cache_write=1.5)
    assert call_usd(other, input_tokens=1_000_000, output_tokens=0, cache_write_tokens=1_000_000,
                    cache_write_1h_tokens=1_000_000) == pytest.approx(1.5)
    # A gateway that reports only the split by lifetime: the writes still count.
    message = Message.model_validate({
        "id": "m", "type": "message", "role": "assistant", "model": "claude-haiku-4-5", "stop_reason": "end_turn",
        "stop_sequence": None, "content": [{"type": "text", "text": "{}"}],
        "usage": {"input_tokens": 10, "output_tokens": 3, "cache_creation_input_tokens": None, "cache_read_input_tokens": 0,
                  "cache_creation": {"ephemeral_1h_input_tokens": 400, "ephemeral_5m_input_tokens": 100}},
    })
    usage = _reply(message).usage
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens, usage.input_tokens) == (500, 400, 510)
    # A stored call read by a version that does not know a newer usage field still loads.
    stored = CallOutcome(answers=[], usage=Usage(input_tokens=5)).to_json().replace('"input_tokens": 5', '"input_tokens": 5, "newer": 1')
    assert '"newer": 1' in stored and CallOutcome.from_json(stored).usage.input_tokens == 5
