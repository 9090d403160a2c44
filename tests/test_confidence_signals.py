"""Confidence where there are no logprobs (issue 13, item 4): self-consistency, agreement (the function
core/gate.py applies; a tier's requests and answers do not change with it), and a logprobs tier whose
answers come back without them. Providers are the real openai and anthropic SDKs against the SIMULATED
server of tests/fake_llm_server.py, whose `difficulty` makes hard items scatter across samples; the
call cache is a DuckDB file, as in test_integrity."""

from __future__ import annotations

import json
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from conftest import write_tiny_project  # noqa: E402
from fake_llm_server import FakeLLMServer  # noqa: E402

from labeling_dagster import checks  # noqa: E402
from labeling_dagster.core.confidence import (  # noqa: E402
    MISSING_LOGPROBS,
    agreement,
    sample_tier,
    self_consistency,
)
from labeling_dagster.core.labels import Answer, Item, LabelTask, content_hash  # noqa: E402
from labeling_dagster.core.pricing import ModelPrice  # noqa: E402
from labeling_dagster.core.prompts import prompt_version  # noqa: E402
from labeling_dagster.core.runner import run_tier  # noqa: E402
from labeling_dagster.project import Budget, Confidence, LabelDef, Taxonomy, TierConfig  # noqa: E402
from labeling_dagster.resources.anthropic_provider import AnthropicProvider  # noqa: E402
from labeling_dagster.resources.llm import ProviderConfigError  # noqa: E402
from labeling_dagster.resources.local_model import LocalModelProvider  # noqa: E402
from labeling_dagster.resources.openai_provider import OpenAIProvider  # noqa: E402
from labeling_dagster.resources.warehouse import DuckDBCallCache, append, ensure_tables  # noqa: E402

TAXONOMY = Taxonomy(labels=[LabelDef(name="billing"), LabelDef(name="cancellation"), LabelDef(name="card_lost")])
PRICE = ModelPrice(input=0.05, output=0.40)
MONTH = datetime(2026, 8, 1)
EASY = ["wrong billing amount", "cancellation please", "my card is lost"]
HARD = ["maybe billing maybe not", "maybe a cancellation, maybe not", "maybe my card is lost"]
EASY_IDS, HARD_IDS = ["t0", "t1", "t2"], ["t3", "t4", "t5"]  # items(): the easy texts, then the hard ones
FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05}


def hard(text: str) -> float:
    """SIMULATED difficulty: most samples of a 'maybe' item stray, none of an easy one."""
    return 0.6 if "maybe" in text else 0.0


def items(texts: list[str] = EASY + HARD) -> list[Item]:
    return [Item(f"t{n}", text, content_hash(text)) for n, text in enumerate(texts)]


def tier(provider: str, base_url: str, *, signal: str = "self_consistency", samples: int = 5, **options) -> TierConfig:
    return TierConfig(name="first_pass", role="first_pass", provider=provider,
                      model="gpt-5-nano" if provider == "openai" else "claude-haiku-4-5", items_per_request=3,
                      options={"base_url": base_url, **FAST, **options},
                      confidence=Confidence(signal=signal, samples=samples))


def label(provider, warehouse: Path, task_tier: TierConfig, budget_usd: float = 10.0):
    with duckdb.connect(str(warehouse)) as conn:
        ensure_tables(conn)
        cache = DuckDBCallCache(conn, MONTH, "run", stage="first_pass_labels")
        return run_tier(provider, tier=task_tier, taxonomy=TAXONOMY, items=items(), cache=cache, price=PRICE,
                        budget=Budget(monthly_usd=budget_usd), spent_before=0.0)


def table(warehouse: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(warehouse)) as conn:
        return conn.execute(sql).fetchall()


def sampled_labels(server: FakeLLMServer, path: str) -> dict[str, list[str]]:
    """Per item text, the labels the server answered it with, request by request."""
    seen: dict[str, list[str]] = {}
    for call in (call for call in server.calls(path) if call.status == 200):
        if path == "/v1/messages":
            user, answer = call.body["messages"][-1]["content"], call.response["content"][0]["input"]
        else:
            user, answer = call.body["messages"][1]["content"], json.loads(call.response["choices"][0]["message"]["content"])
        texts = {row["id"]: row["text"] for row in map(json.loads, user.splitlines())}
        for entry in answer["items"]:
            seen.setdefault(texts[entry["id"]], []).append(entry["label"])
    return seen


def assert_shares(result, seen: dict[str, list[str]], k: int) -> None:
    """Each item's answer is its most common sample label, at the share of the k samples that gave it."""
    for item in items():
        counts = Counter(seen[item.text])
        assert sum(counts.values()) == k
        answer = result.answers[item.item_id]
        assert counts[answer.label] == max(counts.values())
        assert answer.confidence == pytest.approx(counts[answer.label] / k)
        assert dict(answer.alternatives) == {name: n / k for name, n in counts.items() if name != answer.label}


# --- the two signals, on literals -------------------------------------------------------------

def test_agreement_is_the_share_of_earlier_labels_that_agree() -> None:
    assert agreement("billing", ["billing"]) == 1.0
    assert agreement("billing", ["card_lost"]) == 0.0
    assert agreement("billing", ["billing", "card_lost"]) == 0.5
    assert agreement("billing", []) == 0.0  # nothing corroborates it


def test_self_consistency_takes_the_most_common_label_at_its_share() -> None:
    def a(label: str, confidence: float = 0.9, reason: str = "") -> Answer:
        return Answer("t1", label, confidence, reason)

    answer = self_consistency([a("cancellation", reason="first"), a("billing", reason="b"), None,
                               a("billing", reason="second"), a("billing")])
    assert (answer.label, answer.confidence, answer.reason) == ("billing", 3 / 5, "b")
    assert answer.alternatives == [("cancellation", 1 / 5)]  # the failed sample counts against every label
    # a tie goes to the label written with more confidence in sum, then to the first by name
    assert self_consistency([a("cancellation", 0.6), a("billing", 0.5), a("billing", 0.5), a("cancellation", 0.6)]).label == "cancellation"
    assert self_consistency([a("cancellation"), a("billing")]).label == "billing"
    assert self_consistency([None, None]) is None


def test_the_signal_is_part_of_the_version_unless_it_is_the_default() -> None:
    base = TierConfig(name="first_pass", role="first_pass", provider="openai", model="gpt-5-nano")

    def version(t: TierConfig) -> str:
        return prompt_version(TAXONOMY, t, {})

    signals = {signal: version(base.model_copy(update={"confidence": Confidence(signal=signal)}))
               for signal in ("default", "logprobs", "self_consistency", "stated")}
    assert signals["default"] == version(base) and len(set(signals.values())) == 4
    # agreement asks and answers as the default does; only what the certificate compares differs
    qa = base.model_copy(update={"role": "qa", "name": "qa"})
    assert version(qa.model_copy(update={"confidence": Confidence(signal="agreement")})) == version(qa)
    five, seven = (base.model_copy(update={"confidence": Confidence(signal="self_consistency", samples=n)}) for n in (5, 7))
    assert version(five) != version(seven)  # the tier's own version: a share of 5 is not a share of 7
    assert version(sample_tier(five, 0)) == version(sample_tier(seven, 0))  # its samples: reused when k grows
    assert len({version(sample_tier(five, s)) for s in range(5)} | {version(five)}) == 6


# --- self-consistency through the SDKs -------------------------------------------------------

def test_self_consistency_through_the_openai_sdk(tmp_path: Path) -> None:
    warehouse = tmp_path / "w.duckdb"
    with FakeLLMServer(difficulty=hard) as server:
        t = tier("openai", server.openai_base_url)
        result = label(OpenAIProvider(), warehouse, t)
        calls = server.calls("/v1/chat/completions")
        assert len(calls) == 5 * 2  # 6 items, 3 a request: 2 requests for each of 5 samples
        assert sorted(Counter(call.body["seed"] for call in calls).items()) == [(s, 2) for s in range(5)]
        assert {call.body["temperature"] for call in calls} == {1.0}  # the default of self-consistency
        assert_shares(result, sampled_labels(server, "/v1/chat/completions"), 5)
        assert all(result.answers[item_id].confidence == 1.0 for item_id in EASY_IDS)
        assert min(result.answers[item_id].confidence for item_id in HARD_IDS) < 1.0
        # the label rows carry the tier's own version; each sample's calls carry their own
        assert result.version == OpenAIProvider().version(LabelTask(TAXONOMY, t, items()[:1]))
        versions = table(warehouse, "SELECT prompt_version, COUNT(*) FROM model_calls GROUP BY ALL")
        assert len(versions) == 5 and {n for _, n in versions} == {2} and result.version not in dict(versions)
        assert result.calls_made == 10 and set(result.call_of.values()) <= {row[0] for row in table(warehouse, "SELECT call_id FROM model_calls")}

        again = label(OpenAIProvider(), warehouse, t)
        assert len(server.calls("/v1/chat/completions")) == 10  # a rerun sends nothing
        assert again.calls_made == 0 and again.reused_items == 6 and again.answers == result.answers


def test_more_samples_ask_only_for_the_new_ones(tmp_path: Path) -> None:
    warehouse = tmp_path / "w.duckdb"
    with FakeLLMServer(difficulty=hard) as server:
        label(OpenAIProvider(), warehouse, tier("openai", server.openai_base_url, samples=3))
        five = label(OpenAIProvider(), warehouse, tier("openai", server.openai_base_url, samples=5))
        calls = server.calls("/v1/chat/completions")
        assert [call.body["seed"] for call in calls[6:]].count(3) == 2 and {call.body["seed"] for call in calls[6:]} == {3, 4}
        assert five.calls_made == 4 and five.reused_items == 0  # every item had samples to ask for
        assert_shares(five, sampled_labels(server, "/v1/chat/completions"), 5)


def test_a_sample_that_got_no_reply_is_asked_again_alone(tmp_path: Path) -> None:
    with FakeLLMServer(difficulty=hard) as server:
        clean = label(OpenAIProvider(), tmp_path / "clean.duckdb", tier("openai", server.openai_base_url))
        server.requests.clear()
        server.enqueue("/v1/chat/completions", status=500)  # sample 0's first request: no reply, not billed
        t = tier("openai", server.openai_base_url, max_retries=0, max_concurrency=1)
        broken = label(OpenAIProvider(), tmp_path / "w.duckdb", t)
        # its three items have 4 samples of 5: a missing sample counts against their label
        assert all(broken.answers[f"t{n}"].confidence <= 0.8 for n in range(3))
        assert all(broken.answers[f"t{n}"] == clean.answers[f"t{n}"] for n in range(3, 6))
        before = len(server.calls("/v1/chat/completions"))
        resumed = label(OpenAIProvider(), tmp_path / "w.duckdb", t)
        (asked,) = server.calls("/v1/chat/completions")[before:]
        assert asked.body["seed"] == 0 and resumed.calls_made == 1
        assert resumed.answers == clean.answers


def test_an_item_the_budget_kept_from_a_sample_fails_until_the_budget_allows_it(tmp_path: Path) -> None:
    warehouse = tmp_path / "w.duckdb"
    with FakeLLMServer(difficulty=hard) as server:
        label(OpenAIProvider(), warehouse, tier("openai", server.openai_base_url, samples=2))
        broke = label(OpenAIProvider(), warehouse, tier("openai", server.openai_base_url), budget_usd=0.0)
        assert len(server.calls("/v1/chat/completions")) == 4  # samples 0 and 1 reused, none asked
        assert broke.answers == {} and broke.budget_stopped == 6
        assert all(failure.startswith("budget reached") for failure in broke.failures.values())
        paid = label(OpenAIProvider(), warehouse, tier("openai", server.openai_base_url))
        assert {call.body["seed"] for call in server.calls("/v1/chat/completions")[4:]} == {2, 3, 4}
        assert paid.calls_made == 6 and len(paid.answers) == 6
        assert_shares(paid, sampled_labels(server, "/v1/chat/completions"), 5)


def test_self_consistency_through_the_anthropic_sdk(tmp_path: Path) -> None:
    """Anthropic has no seed: the samples are identical requests, each a new draw at the API's default
    temperature (the SIMULATED server draws by how often it has seen the request)."""
    with FakeLLMServer(difficulty=hard) as server:
        result = label(AnthropicProvider(), tmp_path / "w.duckdb", tier("anthropic", server.anthropic_base_url, samples=3))
        calls = server.calls("/v1/messages")
        assert len(calls) == 3 * 2
        assert all("temperature" not in call.body and "seed" not in call.body for call in calls)
        assert len({json.dumps(call.body, sort_keys=True) for call in calls}) == 2  # the same 2 requests, 3 times
        assert_shares(result, sampled_labels(server, "/v1/messages"), 3)
        assert min(result.answers[item_id].confidence for item_id in HARD_IDS) < 1.0
        assert all(result.answers[item_id].confidence == 1.0 for item_id in EASY_IDS)


def test_an_anthropic_temperature_is_sent_although_the_sdk_has_no_argument_for_it(tmp_path: Path) -> None:
    """SDK 2.15's messages.create takes no `temperature`; it goes as an extra body field."""
    with FakeLLMServer(difficulty=hard) as server:
        t = tier("anthropic", server.anthropic_base_url, samples=3, temperature=0)
        result = label(AnthropicProvider(), tmp_path / "w.duckdb", t)
        assert {call.body["temperature"] for call in server.calls("/v1/messages")} == {0}
    assert {answer.confidence for answer in result.answers.values()} == {1.0}  # at temperature 0 no sample strays


def test_a_local_tier_refuses_every_signal_but_its_probability(tmp_path: Path) -> None:
    project = write_tiny_project(tmp_path / "tiny")
    with pytest.raises(ValueError, match="self_consistency on a local model, which gives the same answer every time"):
        TierConfig(name="first_pass", role="first_pass", provider="local", model="words",
                   confidence=Confidence(signal="self_consistency"))  # the project file is refused at load
    local = TierConfig(name="first_pass", role="first_pass", provider="local", model="words")
    LocalModelProvider(project_file=str(project)).check_ready(local)
    # and the provider refuses it too, should a tier reach it unvalidated (model_copy does not validate)
    unchecked = local.model_copy(update={"confidence": Confidence(signal="self_consistency")})
    with pytest.raises(ValueError, match="self_consistency on a local model, which gives the same answer every time"):
        label(LocalModelProvider(project_file=str(project)), tmp_path / "w.duckdb", unchecked)


# --- logprobs and stated -----------------------------------------------------------

def test_answers_without_logprobs_fail_and_so_does_the_check(tmp_path: Path) -> None:
    warehouse = tmp_path / "w.duckdb"
    window = dg.TimeWindow(MONTH, datetime(2026, 9, 1))
    with FakeLLMServer(logprobs=False) as server:  # a 200 whose choices carry no logprobs
        result = label(OpenAIProvider(), warehouse, tier("openai", server.openai_base_url, signal="logprobs"))
        assert all(call.body["logprobs"] is True for call in server.calls("/v1/chat/completions"))
    assert result.answers == {} and len(result.failures) == 6
    assert all(MISSING_LOGPROBS in failure for failure in result.failures.values())
    rows = pd.DataFrame({"month": MONTH, "item_id": list(result.failures), "failure": list(result.failures.values())})
    with duckdb.connect(str(warehouse)) as conn:
        append(conn, "first_pass_labels", rows)
        check = checks.confidence_signal_present(conn, window, "first_pass_labels")
    assert not check.passed and not checks.confidence_signal_spec("first_pass_labels").blocking
    assert check.metadata["missing_logprobs"].value == 6
    assert check.metadata["examples"].value == "t0, t1, t2, t3, t4"

    with FakeLLMServer() as server:  # the same tier where logprobs come back: the token probability
        result = label(OpenAIProvider(), tmp_path / "ok.duckdb", tier("openai", server.openai_base_url, signal="logprobs"))
    assert {answer.confidence for answer in result.answers.values()} == {1.0}
    rows = pd.DataFrame({"month": MONTH, "item_id": list(result.answers), "label": [a.label for a in result.answers.values()]})
    with duckdb.connect(str(tmp_path / "ok.duckdb")) as conn:
        append(conn, "first_pass_labels", rows)
        assert checks.confidence_signal_present(conn, window, "first_pass_labels").passed


def test_anthropic_refuses_logprobs_before_any_call(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Anthropic returns no logprobs"):  # at load
        tier("anthropic", "http://127.0.0.1:9", signal="logprobs")
    with FakeLLMServer() as server:  # and before any call, should a tier reach it unvalidated
        t = tier("anthropic", server.anthropic_base_url)
        t = t.model_copy(update={"confidence": t.confidence.model_copy(update={"signal": "logprobs"})})
        with pytest.raises(ProviderConfigError, match="Anthropic returns no token logprobs"):
            label(AnthropicProvider(), tmp_path / "w.duckdb", t)
        assert server.requests == []


def test_stated_keeps_the_written_number_whatever_the_logprobs_say(tmp_path: Path) -> None:
    with FakeLLMServer(confidence=0.7) as server:
        by_logprobs = label(OpenAIProvider(), tmp_path / "a.duckdb", tier("openai", server.openai_base_url, signal="default", logprobs=True))
        stated = label(OpenAIProvider(), tmp_path / "b.duckdb", tier("openai", server.openai_base_url, signal="stated", logprobs=True))
        assert all(call.body["logprobs"] for call in server.calls("/v1/chat/completions"))
    assert {a.confidence for a in by_logprobs.answers.values()} == {1.0}  # the simulated tokens are certain
    assert {a.confidence for a in stated.answers.values()} == {0.7}
