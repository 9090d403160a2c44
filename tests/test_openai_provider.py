"""Contract tests of the OpenAI provider: the real `openai` SDK against a SIMULATED local server
(tests/fake_llm_server.py). They assert the requests it sends and what it makes of the answers."""

import json
import math
import sys
from pathlib import Path

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer  # noqa: E402

from labeling_dagster.core.labels import Item, LabelTask, content_hash, validate_outcome  # noqa: E402
from labeling_dagster.project import LabelDef, Taxonomy, TierConfig  # noqa: E402
from labeling_dagster.resources.llm import BatchNotFinished, ProviderConfigError  # noqa: E402
from labeling_dagster.resources.openai_provider import OpenAIProvider  # noqa: E402

TAXONOMY = Taxonomy(labels=[LabelDef(name=n) for n in ("card_arrival", "exchange_rate", "lost_card", "refund")])
TEXTS = ["my card arrival is late", "what exchange rate do you use", "I lost my card", "card arrival please", "refund me"]
FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05, "poll_interval_s": 0.01}


def tier(server, **options):
    return TierConfig(
        name="first_pass", role="first_pass", provider="openai", model="gpt-5-nano",
        options={"base_url": server.openai_base_url, **FAST, **options},
    )


def task(t, texts=TEXTS, start=0):
    items = [Item(f"t{start + i}", text, content_hash(text)) for i, text in enumerate(texts)]
    return LabelTask(taxonomy=TAXONOMY, tier=t, items=items)


def labels(outcome):
    return {a.item_id: a.label for a in outcome.answers}


@pytest.fixture
def server():
    with FakeLLMServer() as fake:
        yield fake


def test_request_has_strict_schema_enum_and_items_with_ids(server):
    outcome = OpenAIProvider().label_batch(task(tier(server)))
    assert outcome.status == "ok" and outcome.failures == {}
    assert labels(outcome) == {"t0": "card_arrival", "t1": "exchange_rate", "t2": "lost_card", "t3": "card_arrival", "t4": "refund"}
    (call,) = server.calls("/v1/chat/completions")
    body = call.body
    assert body["model"] == "gpt-5-nano"
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    entry = fmt["json_schema"]["schema"]["properties"]["items"]["items"]
    assert entry["properties"]["label"]["enum"] == ["card_arrival", "exchange_rate", "lost_card", "refund"]
    assert entry["additionalProperties"] is False
    system, user = body["messages"]
    assert system["role"] == "system" and "- refund" in system["content"]
    assert [json.loads(line)["id"] for line in user["content"].splitlines()] == ["1", "2", "3", "4", "5"]
    assert "prompt_cache_key" not in body  # not sent to other servers unless asked
    assert call.headers["authorization"] == "Bearer no-key"


def test_usage_as_reported_with_cached_prefix():
    with FakeLLMServer(cache_min_tokens=50) as server:
        provider = OpenAIProvider()
        first = provider.label_batch(task(tier(server)))
        second = provider.label_batch(task(tier(server), TEXTS[:2]))
    assert first.usage.cached_input_tokens == 0
    assert second.usage.cached_input_tokens > 0
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0


def test_many_requests_run_concurrently_and_keep_their_order(server):
    t = tier(server, max_concurrency=4)
    tasks = [task(t, TEXTS[i : i + 1], start=i) for i in range(5)]
    outcomes = OpenAIProvider().label_batches(tasks)
    assert [list(labels(o)) for o in outcomes] == [["t0"], ["t1"], ["t2"], ["t3"], ["t4"]]
    assert len(server.calls("/v1/chat/completions")) == 5


def test_429_is_retried_after_retry_after(server):
    server.enqueue("/v1/chat/completions", status=429, headers={"retry-after-ms": "30"}, body={"error": {"message": "slow down"}})
    provider = OpenAIProvider()
    outcome = provider.label_batch(task(tier(server)))
    assert outcome.status == "ok"
    assert len(server.calls("/v1/chat/completions")) == 2
    stats = provider.stats("first_pass")
    assert (stats.retries, stats.rate_limited) == (1, 1)
    assert outcome.latency_s >= 0.03


def test_500_is_retried_then_the_items_fail_when_retries_run_out(server):
    for _ in range(3):
        server.enqueue("/v1/chat/completions", status=500, body={"error": {"message": "boom"}})
    provider = OpenAIProvider()
    outcome = provider.label_batch(task(tier(server, max_retries=2)))
    assert outcome.status == "error" and outcome.answers == []
    assert set(outcome.failures) == {"t0", "t1", "t2", "t3", "t4"}
    assert "gave up after 3 attempts" in outcome.error
    assert len(server.calls("/v1/chat/completions")) == 3
    # one more 500 then success: the retry recovers
    server.enqueue("/v1/chat/completions", status=503, body={"error": {"message": "busy"}})
    assert provider.label_batch(task(tier(server))).status == "ok"


def test_timeout_is_retried(server):
    server.enqueue("/v1/chat/completions", delay_s=2.0)
    provider = OpenAIProvider()
    outcome = provider.label_batch(task(tier(server, timeout_s=0.5)))
    assert outcome.status == "ok"
    assert provider.stats("first_pass").retries == 1


def test_malformed_json_is_repaired_once(server):
    server.enqueue("/v1/chat/completions", content='{"items": [{"id": "1", "label": "card_arr')
    outcome = OpenAIProvider().label_batch(task(tier(server)))
    assert outcome.status == "ok" and len(outcome.answers) == 5
    first, repair = server.calls("/v1/chat/completions")
    assert len(repair.body["messages"][1]["content"].splitlines()) == 5
    assert outcome.usage.input_tokens > 0


def test_off_taxonomy_twice_fails_that_item_with_both_reasons(server):
    bad = {"items": [
        {"id": "1", "label": "card_arrival", "confidence": 0.9, "reason": ""},
        {"id": "2", "label": "crypto", "confidence": 0.9, "reason": ""},
        {"id": "3", "label": "lost_card", "confidence": 1.5, "reason": ""},
    ]}
    server.enqueue("/v1/chat/completions", content=json.dumps(bad))
    server.enqueue("/v1/chat/completions", content=json.dumps({"items": [
        {"id": "1", "label": "crypto", "confidence": 0.9, "reason": ""},
        {"id": "2", "label": "lost_card", "confidence": 0.8, "reason": ""},
    ]}))
    t = task(tier(server), TEXTS[:3])
    outcome = validate_outcome(OpenAIProvider().label_batch(t), t)
    assert labels(outcome) == {"t0": "card_arrival", "t2": "lost_card"}
    assert outcome.failures == {"t1": "label 'crypto' is not in the taxonomy; after one repair attempt: label 'crypto' is not in the taxonomy"}
    assert outcome.status == "partial"
    repair = server.calls("/v1/chat/completions")[1]
    assert [json.loads(line)["text"] for line in repair.body["messages"][1]["content"].splitlines()] == TEXTS[1:3]


def test_missing_key_fails_at_once_naming_the_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    t = TierConfig(name="first_pass", role="first_pass", provider="openai", model="gpt-5-nano")
    with pytest.raises(ProviderConfigError, match="OPENAI_API_KEY is not set"):
        OpenAIProvider().label_batch(task(t))
    t = TierConfig(name="first_pass", role="first_pass", provider="openai", model="deepseek-v4-flash",
                   options={"base_url": "http://127.0.0.1:9/v1", "api_key_env": "DEEPSEEK_KEY_FOR_TEST"})
    with pytest.raises(ProviderConfigError, match="DEEPSEEK_KEY_FOR_TEST"):
        OpenAIProvider().label_batch(task(t))


def test_dagster_env_var_names_the_missing_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(Exception, match="OPENAI_API_KEY"):
        with dg.build_resources({"llm": OpenAIProvider(api_key=dg.EnvVar("OPENAI_API_KEY"))}):
            pass


def test_runs_as_a_dagster_resource_with_the_key_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    t = TierConfig(name="first_pass", role="first_pass", provider="openai", model="gpt-5-nano", options=FAST)

    @dg.asset
    def first_pass_labels(llm: OpenAIProvider) -> list[str]:
        return [a.label for a in llm.label_batches([task(t, TEXTS[:2])])[0].answers]

    result = dg.materialize([first_pass_labels], resources={"llm": OpenAIProvider(api_key=dg.EnvVar("OPENAI_API_KEY"), base_url=server.openai_base_url)})
    assert result.output_for_node("first_pass_labels") == ["card_arrival", "exchange_rate"]
    assert server.calls("/v1/chat/completions")[0].headers["authorization"] == "Bearer sk-from-env"


def test_bad_key_stops_the_run_and_bad_request_fails_the_call(server):
    server.enqueue("/v1/chat/completions", status=401, body={"error": {"message": "Incorrect API key"}})
    with pytest.raises(ProviderConfigError, match="HTTP 401: Incorrect API key.*OPENAI_API_KEY"):
        OpenAIProvider(api_key="sk-wrong", base_url=server.openai_base_url).label_batch(task(tier(server)))
    # a tier with an endpoint of its own was sent no key at all: the message says how to give one
    server.enqueue("/v1/chat/completions", status=401, body={"error": {"message": "Missing API key"}})
    with pytest.raises(ProviderConfigError, match="HTTP 401: Missing API key.*options.api_key_env"):
        OpenAIProvider(api_key="sk-openai").label_batch(task(tier(server)))
    server.enqueue("/v1/chat/completions", status=400, body={"error": {"message": "context too long"}})
    outcome = OpenAIProvider().label_batch(task(tier(server), TEXTS[:1]))
    assert outcome.status == "rejected" and "context too long" in outcome.failures["t0"]
    assert len(server.calls("/v1/chat/completions")) == 3  # no retry of a 400
    # a refused request of several items is split (tests/test_integrity.py); refused again whole, all fail
    for _ in range(3):
        server.enqueue("/v1/chat/completions", status=400, body={"error": {"message": "invalid schema"}})
    outcome = OpenAIProvider().label_batch(task(tier(server)))
    assert outcome.status == "rejected" and all("invalid schema" in why for why in outcome.failures.values())
    assert len(server.calls("/v1/chat/completions")) == 6  # the request, then its two halves, both refused


def test_unknown_option_is_refused(server):
    with pytest.raises(ProviderConfigError, match="unknown key"):
        OpenAIProvider().label_batch(task(tier(server, temprature=0)))


def test_logprobs_give_confidence_and_alternatives(server):
    content = '{"items":[{"id":"1","label":"card_arrival","confidence":0.99,"reason":"x"}]}'
    head, tail = content.split("card_arrival")
    logprobs = [
        {"token": head, "logprob": 0.0, "top_logprobs": []},
        {"token": "card", "logprob": -0.1, "top_logprobs": [{"token": "card", "logprob": -0.1}, {"token": "lost", "logprob": -2.5}]},
        {"token": "_arrival", "logprob": -0.05, "top_logprobs": [{"token": "_arrival", "logprob": -0.05}]},
        {"token": tail, "logprob": 0.0, "top_logprobs": []},
    ]
    server.enqueue("/v1/chat/completions", content=content, logprobs=logprobs)
    provider = OpenAIProvider()
    t = tier(server, logprobs=True, top_logprobs=3)
    outcome = provider.label_batch(task(t, TEXTS[:1]))
    body = server.calls("/v1/chat/completions")[0].body
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    (answer,) = outcome.answers
    p_chosen = math.exp(-0.15)
    p_lost = math.exp(-2.5)
    assert answer.confidence == pytest.approx(p_chosen / (p_chosen + p_lost))
    assert answer.alternatives[0][0] == "lost_card"
    assert provider.version(task(t)) != provider.version(task(tier(server)))
    assert provider.version(task(tier(server, rpm=10))) == provider.version(task(tier(server)))


def test_batch_mode_uploads_jsonl_and_prices_as_batch(server):
    t = tier(server, mode="batch")
    tasks = [task(t, TEXTS[:3]), task(t, TEXTS[3:], start=3)]
    outcomes = OpenAIProvider().label_batches(tasks)
    assert all(o.batch and o.status == "ok" for o in outcomes)
    assert labels(outcomes[1]) == {"t3": "card_arrival", "t4": "refund"}
    (upload,) = [f for f in server.files.values() if f["purpose"] == "batch"]
    lines = [json.loads(line) for line in upload["content"].decode().splitlines()]
    assert [line["url"] for line in lines] == ["/v1/chat/completions"] * 2
    assert lines[0]["method"] == "POST" and lines[0]["custom_id"] != lines[1]["custom_id"]
    assert lines[0]["body"]["response_format"]["json_schema"]["strict"] is True
    assert len(lines[1]["body"]["messages"][1]["content"].splitlines()) == 2
    (create,) = server.calls("/v1/batches")
    assert create.body["endpoint"] == "/v1/chat/completions" and create.body["completion_window"] == "24h"
    assert outcomes[0].usage.input_tokens > 0


def test_batch_mode_repairs_in_a_second_batch(server):
    t = tier(server, mode="batch")
    tasks = [task(t, TEXTS[:2])]
    # the fake server answers batch lines in order; script the first line's answer as off-taxonomy
    server.enqueue("/v1/chat/completions", content=json.dumps({"items": [
        {"id": "1", "label": "card_arrival", "confidence": 0.9, "reason": ""},
        {"id": "2", "label": "stocks", "confidence": 0.9, "reason": ""},
    ]}))
    (outcome,) = OpenAIProvider().label_batches(tasks)
    assert outcome.status == "ok" and labels(outcome) == {"t0": "card_arrival", "t1": "exchange_rate"}
    assert len(server.calls("/v1/batches")) == 2
    repair_file = [f for f in server.files.values() if f["purpose"] == "batch"][1]
    (line,) = repair_file["content"].decode().splitlines()
    assert json.loads(line)["body"]["messages"][1]["content"] == json.dumps({"id": "1", "text": TEXTS[1]})


def test_openai_key_is_not_sent_to_another_server(server, monkeypatch):
    OpenAIProvider(api_key="sk-openai").label_batch(task(tier(server), TEXTS[:1]))
    assert server.calls("/v1/chat/completions")[0].headers["authorization"] == "Bearer no-key"
    monkeypatch.setenv("OTHER_PROVIDER_KEY", "other-key")
    OpenAIProvider(api_key="sk-openai").label_batch(task(tier(server, api_key_env="OTHER_PROVIDER_KEY"), TEXTS[:1]))
    assert server.calls("/v1/chat/completions")[1].headers["authorization"] == "Bearer other-key"


def test_batch_request_errors_fail_their_items_without_repair(server):
    t = tier(server, mode="batch")
    server.enqueue("/v1/chat/completions", status=500)  # the first line of the batch errors
    first, second = OpenAIProvider().label_batches([task(t, TEXTS[:2]), task(t, TEXTS[2:3], start=2)])
    assert first.status == "error" and first.failures["t0"] == "batch request failed: simulated failure"
    assert second.status == "ok" and second.batch
    assert len(server.calls("/v1/batches")) == 1


def test_batch_resumes_from_the_journal_without_paying_twice(tmp_path):
    with FakeLLMServer(batch_polls_before_done=3) as server:
        t = tier(server, mode="batch", batch_timeout_s=0.0)
        tasks = [task(t, TEXTS[:2])]
        with pytest.raises(BatchNotFinished, match="journal"):
            OpenAIProvider(batch_journal_dir=str(tmp_path)).label_batches(tasks)
        assert len(server.calls("/v1/batches")) == 1
        # a new process (fresh resource) after the crash: same requests, so the same journal entry
        t = tier(server, mode="batch")
        provider = OpenAIProvider(batch_journal_dir=str(tmp_path))
        (outcome,) = provider.label_batches([task(t, TEXTS[:2])])
        assert outcome.status == "ok" and outcome.batch
        assert len(server.calls("/v1/batches")) == 1
        assert provider.stats("first_pass").batches_resumed == 1
