"""The OpenAI provider: chat completions with a strict JSON schema whose label is an enum of the
taxonomy, through the official `openai` SDK, against OpenAI or any OpenAI-compatible server
(`base_url`: vLLM, Ollama, llama.cpp, DeepSeek, Mistral, Gemini's compatible endpoint).
Online calls run concurrently under the tier's limits; `options.mode: batch` uses the Batch API.

Tier options read (besides the common ones documented in docs/llm_tiers.md):
  base_url        an OpenAI-compatible server for this tier (overrides the resource's base_url)
  api_key_env     the environment variable holding this tier's key (e.g. DEEPSEEK_API_KEY); a tier
                  with its own base_url and no api_key_env sends no key (local servers)
  temperature     sent when set (reasoning models accept only the default)
  reasoning_effort  sent when set (e.g. minimal for gpt-5-nano: fewer billed output tokens)
  max_output_tokens sent as max_completion_tokens when set
  logprobs        true: the label token's log-probability, renormalised over the taxonomy, becomes
                  the confidence and gives the alternatives (non-reasoning models only)
  top_logprobs    alternatives per token position when logprobs is on (default 5, at most 20)
  prompt_cache_key  true/false: send the prompt version as prompt_cache_key (default: true on
                  api.openai.com, false on other servers, which may reject unknown fields)

The tier's confidence.signal (project.Confidence):
  logprobs          logprobs are asked for whatever options.logprobs says; an answer that comes back
                    without them fails (core.confidence.MISSING_LOGPROBS), never the written number
  self_consistency  each sample is its own request with the sample index as `seed`, at the tier's
                    temperature, or at 1.0 when options sets none (servers that default lower, as
                    some OpenAI-compatible ones do, would give the same answer k times)
  stated            the written number is the confidence; with options.logprobs on, the token
                    distribution still fills the alternatives
"""

from __future__ import annotations

import io
import json
from typing import Any, ClassVar

import openai
from openai.types.chat import ChatCompletion
from pydantic import PrivateAttr

from labeling_dagster.core.confidence import sample_index
from labeling_dagster.core.labels import LabelTask, Usage
from labeling_dagster.core.prompts import SCHEMA_NAME, Prompt, Reply, TokenLogprob, label_distributions
from labeling_dagster.core.ratelimit import Transient, sdk_error_classifier
from labeling_dagster.project import TierConfig
from labeling_dagster.resources.llm import LLMProvider, ProviderConfigError

_classify = sdk_error_classifier(openai.APIStatusError, openai.APIConnectionError)
_BATCH_TERMINAL = {"completed": "ended", "expired": "ended", "failed": "failed", "cancelled": "failed"}


class OpenAIProvider(LLMProvider):
    """Labels items with an OpenAI (or OpenAI-compatible) chat model.

    Bind it with `OpenAIProvider(api_key=dg.EnvVar("OPENAI_API_KEY"))`. A tier whose options name a
    `base_url` of a local server needs no key; anything else without one fails before any call
    with a message naming OPENAI_API_KEY.
    """

    api_key: str | None = None

    provider_name: ClassVar[str] = "openai"
    key_env: ClassVar[str] = "OPENAI_API_KEY"
    provider_options: ClassVar[set[str]] = {
        "base_url", "api_key_env", "temperature", "reasoning_effort", "max_output_tokens",
        "logprobs", "top_logprobs", "prompt_cache_key",
    }
    batch_max_requests: ClassVar[int] = 50_000
    batch_max_bytes: ClassVar[int] = 190 * 1024 * 1024  # the API allows 200 MB per input file

    _clients: dict[tuple[str | None, str], openai.OpenAI] = PrivateAttr(default_factory=dict)

    # --- client -----------------------------------------------------------------------------
    def _base_url(self, tier: TierConfig) -> str | None:
        return self.option(tier, "base_url", self.base_url)

    def _key(self, tier: TierConfig) -> str:
        """The tier's key. The resource's key (OPENAI_API_KEY) goes only to the resource's own
        server: a tier pointing elsewhere names its key in options.api_key_env, so an OpenAI key is
        never sent to another provider."""
        key = self.named_key(tier, self._base_url(tier) or "OpenAI")
        if key is not None:
            return key
        if self._base_url(tier) != self.base_url:
            return "no-key"  # a local OpenAI-compatible server (vLLM, Ollama, ...) ignores it
        if self.api_key:
            return self.api_key
        if self.base_url:
            return "no-key"
        raise ProviderConfigError(
            f"tiers.{tier.name}: OPENAI_API_KEY is not set; export OPENAI_API_KEY to call OpenAI model "
            f"{tier.model!r}, or set options.base_url to an OpenAI-compatible server"
        )

    def check_ready(self, tier: TierConfig) -> None:
        self._client(tier)

    def _client(self, tier: TierConfig) -> openai.OpenAI:
        key = self._key(tier)
        slot = (self._base_url(tier), self.option(tier, "api_key_env", ""))
        with self._lock:
            if slot not in self._clients:
                # retries are ours (they share the tier's limiter), so the SDK makes none
                self._clients[slot] = openai.OpenAI(api_key=key, base_url=slot[0], max_retries=0)
            return self._clients[slot]

    # --- requests ---------------------------------------------------------------------------
    def settings(self, tier: TierConfig) -> dict[str, Any]:
        return {
            "provider": self.provider_name,
            "base_url": self._base_url(tier),
            **{key: tier.options[key] for key in ("temperature", "reasoning_effort", "max_output_tokens", "logprobs", "top_logprobs") if key in tier.options},
        }

    def request_body(self, task: LabelTask, prompt: Prompt) -> dict[str, Any]:
        tier = task.tier
        body: dict[str, Any] = {
            "model": tier.model,
            "messages": [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": prompt.schema},
            },
        }
        for option, field in (("temperature", "temperature"), ("reasoning_effort", "reasoning_effort"), ("max_output_tokens", "max_completion_tokens")):
            if self.option(tier, option) is not None:
                body[field] = tier.options[option]
        sample = sample_index(tier)
        if sample is not None:
            body["seed"] = sample
            body.setdefault("temperature", 1.0)
        if self.option(tier, "logprobs", False) or tier.confidence.signal == "logprobs":
            body["logprobs"] = True
            body["top_logprobs"] = int(self.option(tier, "top_logprobs", 5))
        if self.option(tier, "prompt_cache_key", self._base_url(tier) is None):
            body["prompt_cache_key"] = self.version(task)
        return body

    def send(self, task: LabelTask, body: dict[str, Any]) -> Reply:
        client = self._client(task.tier)
        try:
            completion = client.chat.completions.create(**body, timeout=self.timeout_s(task.tier))
        except openai.APIStatusError as exc:
            raise self.rejected(task.tier, self._base_url(task.tier) or "OpenAI", exc) if _classify(exc) is None else exc
        return self._reply(completion, task)

    def classify(self, exc: BaseException) -> Transient | None:
        return _classify(exc)

    def _reply(self, completion: ChatCompletion, task: LabelTask) -> Reply:
        usage = completion.usage
        details = usage.prompt_tokens_details if usage is not None else None
        reported = Usage(
            input_tokens=usage.prompt_tokens if usage else 0,
            cached_input_tokens=(details.cached_tokens or 0) if details else 0,
            output_tokens=usage.completion_tokens if usage else 0,
        )
        if not completion.choices:
            return Reply(payload=None, usage=reported, note="the response has no choices")
        choice = completion.choices[0]
        message = choice.message
        if message.refusal:
            return Reply(payload=None, usage=reported, note=f"the model refused: {message.refusal}")
        note = "the answer was cut at the output token limit" if choice.finish_reason == "length" else None
        distributions = None
        if choice.logprobs is not None and choice.logprobs.content and message.content:
            tokens = [
                TokenLogprob(t.token, t.logprob, tuple((alt.token, alt.logprob) for alt in t.top_logprobs or []))
                for t in choice.logprobs.content
            ]
            distributions = label_distributions(message.content, tokens, task.taxonomy)
        return Reply(payload=message.content, usage=reported, distributions=distributions, note=note)

    # --- Batch API --------------------------------------------------------------------------
    def submit_batch(self, tier: TierConfig, requests: list[tuple[str, dict[str, Any]]]) -> str:
        """Write the requests as JSONL (one chat completion each), upload it, create the batch."""
        lines = "".join(
            json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n"
            for cid, body in requests
        )
        client = self._client(tier)
        upload = client.files.create(
            file=(f"{tier.name}-labels.jsonl", io.BytesIO(lines.encode("utf-8")), "application/jsonl"), purpose="batch"
        )
        batch = client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"tier": tier.name, "model": tier.model},
        )
        return batch.id

    def batch_state(self, tier: TierConfig, batch_id: str) -> str:
        batch = self._client(tier).batches.retrieve(batch_id)
        state = _BATCH_TERMINAL.get(batch.status, "running")
        if state == "failed":
            errors = "; ".join(e.message or "" for e in (batch.errors.data if batch.errors and batch.errors.data else []))
            return f"failed: status {batch.status}{': ' + errors if errors else ''}"
        return state

    def batch_results(
        self, tier: TierConfig, batch_id: str, prompts: dict[str, Prompt], task_of: dict[str, LabelTask]
    ) -> dict[str, Reply | str]:
        """Read the output file (answers) and the error file (requests that failed). An expired
        batch has both for what ran; the rest is missing and fails in the caller."""
        client = self._client(tier)
        batch = client.batches.retrieve(batch_id)
        results: dict[str, Reply | str] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for line in client.files.content(file_id).text.splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                cid = row.get("custom_id")
                if cid not in prompts:
                    continue
                response = row.get("response") or {}
                if row.get("error") or response.get("status_code") != 200:
                    error = row.get("error") or (response.get("body") or {}).get("error") or {}
                    results[cid] = f"batch request failed: {error.get('message') or error or response.get('status_code')}"
                    continue
                completion = ChatCompletion.model_validate(response["body"])
                results[cid] = self._reply(completion, task_of[cid])
        return results

