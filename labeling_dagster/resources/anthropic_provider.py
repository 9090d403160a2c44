"""The Anthropic provider: Claude models through the official `anthropic` SDK, the answer forced
through a strict tool whose label is an enum of the taxonomy (or `output_config.format`), the
static prefix marked for prompt caching. `options.mode: batch` uses Message Batches.

Tier options read (besides the common ones documented in docs/llm_tiers.md):
  base_url          another endpoint for this tier (a proxy or gateway speaking the Messages API)
  api_key_env       the environment variable holding this tier's key (e.g. GATEWAY_API_KEY); a tier
                    with its own base_url and no api_key_env sends no key (a placeholder), so
                    ANTHROPIC_API_KEY goes only to the resource's own endpoint, as in the OpenAI provider
  structured        tool (default: a forced strict tool call) or output_format (output_config JSON schema)
  strict            false to send the tool without strict mode (models without structured outputs)
  temperature       sent when set, as an extra body field: SDK 2.15's messages.create has no such
                    argument (Claude models from Opus 4.7 reject it with a 400)
  max_output_tokens max_tokens of each request (default: enough for the items of the request)
  cache_ttl         5m (default) or 1h: the prompt cache lifetime of the static prefix

The tier's confidence.signal (project.Confidence): logprobs is refused before any call (Anthropic
returns none). self_consistency sends each sample as its own request, identical to the others: the
API has no seed, and samples at its default temperature 1.0 (or options.temperature), so each
request is an independent draw.
"""

from __future__ import annotations

from typing import Any, ClassVar

import anthropic
from anthropic.types import Message
from pydantic import PrivateAttr

from labeling_dagster.core.labels import LabelTask, Usage
from labeling_dagster.core.prompts import SCHEMA_NAME, Prompt, Reply, estimated_output_tokens
from labeling_dagster.core.ratelimit import Transient, sdk_error_classifier
from labeling_dagster.project import TierConfig
from labeling_dagster.resources.llm import LLMProvider, ProviderConfigError

_classify = sdk_error_classifier(anthropic.APIStatusError, anthropic.APIConnectionError)
NO_KEY = "no-key"  # sent to a tier's own base_url when it names no api_key_env


class AnthropicProvider(LLMProvider):
    """Labels items with a Claude model. Bind it with
    `AnthropicProvider(api_key=dg.EnvVar("ANTHROPIC_API_KEY"))`; without a key every call to the
    resource's endpoint fails before it is sent, with a message naming ANTHROPIC_API_KEY. A tier
    with its own `options.base_url` never gets that key: it sends its `options.api_key_env` key, or none."""

    api_key: str | None = None

    provider_name: ClassVar[str] = "anthropic"
    key_env: ClassVar[str] = "ANTHROPIC_API_KEY"
    provider_options: ClassVar[set[str]] = {
        "base_url", "api_key_env", "structured", "strict", "temperature", "max_output_tokens", "cache_ttl",
    }
    batch_max_requests: ClassVar[int] = 100_000
    batch_max_bytes: ClassVar[int] = 250 * 1024 * 1024  # the API allows 256 MB per batch

    _clients: dict[tuple[str | None, str], anthropic.Anthropic] = PrivateAttr(default_factory=dict)

    # --- client -----------------------------------------------------------------------------
    def _base_url(self, tier: TierConfig) -> str | None:
        return self.option(tier, "base_url", self.base_url)

    def _key(self, tier: TierConfig) -> str:
        """The tier's key. The resource's key (ANTHROPIC_API_KEY) goes only to the resource's own
        endpoint: a tier pointing elsewhere names its key in options.api_key_env, or sends none.

        No key means the placeholder NO_KEY, never None: given None, the SDK looks for
        ANTHROPIC_API_KEY, ANTHROPIC_AUTH_TOKEN or a credentials profile in the environment itself,
        which would hand the resource's key to the other endpoint after all (and with none found it
        refuses to send: "Could not resolve authentication method")."""
        key = self.named_key(tier, self._base_url(tier) or "Anthropic")
        if key is not None:
            return key
        if self._base_url(tier) != self.base_url:
            return NO_KEY  # a gateway or proxy that authenticates otherwise (or not at all)
        if not self.api_key:
            raise ProviderConfigError(
                f"tiers.{tier.name}: ANTHROPIC_API_KEY is not set; export it to call Anthropic model "
                f"{tier.model!r}, or set options.base_url (and options.api_key_env) for a gateway"
            )
        return self.api_key

    def check_ready(self, tier: TierConfig) -> None:
        self._client(tier)
        if self.option(tier, "structured", "tool") not in ("tool", "output_format"):
            raise ProviderConfigError(f"tiers.{tier.name}.options.structured: use tool or output_format")
        if self.option(tier, "cache_ttl", "5m") not in ("5m", "1h"):
            raise ProviderConfigError(f"tiers.{tier.name}.options.cache_ttl: use 5m or 1h")
        if tier.confidence.signal == "logprobs":
            raise ProviderConfigError(
                f"tiers.{tier.name}.confidence.signal: logprobs, but Anthropic returns no token logprobs; use "
                "self_consistency, stated, or agreement (QA and adjudication)"
            )

    def _client(self, tier: TierConfig) -> anthropic.Anthropic:
        key = self._key(tier)
        slot = (self._base_url(tier), self.option(tier, "api_key_env", ""))
        with self._lock:
            if slot not in self._clients:
                # retries are ours (they share the tier's limiter), so the SDK makes none
                self._clients[slot] = anthropic.Anthropic(api_key=key, base_url=slot[0], max_retries=0)
            return self._clients[slot]

    # --- requests ---------------------------------------------------------------------------
    def settings(self, tier: TierConfig) -> dict[str, Any]:
        return {
            "provider": self.provider_name,
            "base_url": self._base_url(tier),
            "structured": self.option(tier, "structured", "tool"),
            "strict": self.option(tier, "strict", True),
            **{key: tier.options[key] for key in ("temperature", "max_output_tokens") if key in tier.options},
        }

    def request_body(self, task: LabelTask, prompt: Prompt) -> dict[str, Any]:
        tier = task.tier
        cache_control: dict[str, Any] = {"type": "ephemeral"}
        if self.option(tier, "cache_ttl", "5m") == "1h":
            cache_control["ttl"] = "1h"
        body: dict[str, Any] = {
            "model": tier.model,
            "max_tokens": int(
                self.option(tier, "max_output_tokens", 2 * estimated_output_tokens(len(task.items), tier.prompt.with_reason) + 256)
            ),
            # tools, then system, form the cached prefix; the breakpoint on the system block covers both
            "system": [{"type": "text", "text": prompt.system, "cache_control": cache_control}],
            "messages": [{"role": "user", "content": prompt.user}],
        }
        if self.option(tier, "structured", "tool") == "tool":
            tool: dict[str, Any] = {
                "name": SCHEMA_NAME,
                "description": "Record one label per item id.",
                "input_schema": prompt.schema,
            }
            if self.option(tier, "strict", True):
                tool["strict"] = True
            body["tools"] = [tool]
            body["tool_choice"] = {"type": "tool", "name": SCHEMA_NAME}
        else:
            body["output_config"] = {"format": {"type": "json_schema", "schema": prompt.schema}}
        if self.option(tier, "temperature") is not None:
            body["temperature"] = tier.options["temperature"]
        return body

    def send(self, task: LabelTask, body: dict[str, Any]) -> Reply:
        client = self._client(task.tier)
        params = dict(body)
        extra = {"temperature": params.pop("temperature")} if "temperature" in params else None
        try:
            message = client.messages.create(**params, extra_body=extra, timeout=self.timeout_s(task.tier))
        except anthropic.APIStatusError as exc:
            raise self.rejected(task.tier, "Anthropic", exc) if _classify(exc) is None else exc
        return _reply(message)

    def classify(self, exc: BaseException) -> Transient | None:
        return _classify(exc)

    # --- Message Batches --------------------------------------------------------------------
    def submit_batch(self, tier: TierConfig, requests: list[tuple[str, dict[str, Any]]]) -> str:
        batch = self._client(tier).messages.batches.create(
            requests=[{"custom_id": cid, "params": body} for cid, body in requests]
        )
        return batch.id

    def batch_state(self, tier: TierConfig, batch_id: str) -> str:
        batch = self._client(tier).messages.batches.retrieve(batch_id)
        return "ended" if batch.processing_status == "ended" else "running"

    def batch_results(
        self, tier: TierConfig, batch_id: str, prompts: dict[str, Prompt], task_of: dict[str, LabelTask]
    ) -> dict[str, Reply | str]:
        results: dict[str, Reply | str] = {}
        for row in self._client(tier).messages.batches.results(batch_id):
            if row.custom_id not in prompts:
                continue
            result = row.result
            if result.type == "succeeded":
                results[row.custom_id] = _reply(result.message)
            elif result.type == "errored":
                results[row.custom_id] = f"batch request failed: {result.error.error.message}"
            else:
                results[row.custom_id] = f"batch request {result.type} before it ran"
        return results


def _reply(message: Message) -> Reply:
    """Usage mapped so that input_tokens includes cached and cache-write tokens, as
    core.pricing.call_usd expects (Anthropic reports the three apart)."""
    usage = message.usage
    cache_read = usage.cache_read_input_tokens or 0
    # The split by lifetime, when the API reports it: 1-hour writes cost more than 5-minute ones. A
    # gateway that reports only the split still has its writes counted.
    written_1h = (usage.cache_creation.ephemeral_1h_input_tokens or 0) if usage.cache_creation else 0
    written_5m = (usage.cache_creation.ephemeral_5m_input_tokens or 0) if usage.cache_creation else 0
    cache_write = max(usage.cache_creation_input_tokens or 0, written_1h + written_5m)
    reported = Usage(
        input_tokens=usage.input_tokens + cache_read + cache_write,
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=usage.output_tokens,
        cache_write_1h_tokens=written_1h,
    )
    note = {
        "max_tokens": "the answer was cut at the output token limit (options.max_output_tokens)",
        "refusal": "the model refused",
    }.get(message.stop_reason or "")
    for block in message.content:
        if block.type == "tool_use" and block.name == SCHEMA_NAME:
            return Reply(payload=block.input, usage=reported, note=note)
    text = "".join(block.text for block in message.content if block.type == "text")
    return Reply(payload=text or None, usage=reported, note=note)

