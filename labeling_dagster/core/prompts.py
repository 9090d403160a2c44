"""Prompts for the LLM tiers: a static prefix (instructions, label definitions, few-shot examples)
followed by the items of one request under short ids, the JSON schema the answer must follow, and
the parsing of that answer into `Answer`s and per-item failures. Pure: no SDK, no Dagster.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from labeling_dagster.core.confidence import MISSING_LOGPROBS, version_settings
from labeling_dagster.core.estimate import BYTES_PER_TOKEN, estimate_tokens
from labeling_dagster.core.labels import Answer, CallOutcome, LabelTask, PriorAnswer, Usage
from labeling_dagster.project import Taxonomy, TierConfig

# Bump when the way prompts are rendered or parsed changes meaning: it is part of every version,
# so stored answers from the old prompts are not reused for the new ones.
PROMPT_FORMAT = 1

SCHEMA_NAME = "item_labels"

_ROLE_TEXT = {
    "first_pass": "",
    "qa": (
        "You are reviewing the answers of an earlier, cheaper labeler. Each item shows its earlier "
        "answer. Keep that label when it is right; otherwise give the right label. Your confidence "
        "is about your own label."
    ),
    "adjudication": (
        "Earlier labelers disagreed on these items or were unsure. Each item shows their answers "
        "with reasons. Decide the right label yourself; do not side with the majority by default."
    ),
}


@dataclass(frozen=True)
class Prompt:
    """One request's prompt. `system` is identical for every request of a tier (so provider prompt
    caching applies to it); `user` carries the items under the short ids in `ids`."""

    system: str
    user: str
    schema: dict[str, Any]
    ids: dict[str, str]  # short id shown to the model -> item_id

    def input_tokens(self, bytes_per_token: float = BYTES_PER_TOKEN) -> int:
        """The prompt's approximate size (core.estimate.estimate_tokens over system, user and schema)."""
        return sum(
            estimate_tokens(part, bytes_per_token) for part in (self.system, self.user, json.dumps(self.schema))
        )

    @property
    def estimated_input_tokens(self) -> int:
        """What the rate limiter and the budget guard reserve before sending: BPE tokenizers average
        about 4 bytes a token on English text and JSON; 3.5 leans high on purpose, since under-counting
        is what earns 429s."""
        return self.input_tokens(LIMITER_BYTES_PER_TOKEN)


LIMITER_BYTES_PER_TOKEN = 3.5


def estimated_output_tokens(n_items: int, with_reason: bool) -> int:
    """What one request's answer is expected to cost in output tokens, for the limiter."""
    per_item = 45 if with_reason else 22
    return 20 + per_item * n_items


def answer_schema(taxonomy: Taxonomy, with_reason: bool) -> dict[str, Any]:
    """The JSON schema of an answer. Strict-mode compatible (OpenAI: every property required,
    additionalProperties false). The item id is a plain string, not an enum of the batch's ids: an
    enum would make the schema differ per request, which defeats prompt caching of the prefix and
    makes the provider compile a new grammar for every call; ids are checked when parsing instead.
    No minimum/maximum on confidence either (not every provider accepts them); checked when parsing.
    The enum holds the taxonomy's none-of-these answer too, when it declares one."""
    properties: dict[str, Any] = {
        "id": {"type": "string"},
        "label": {"type": "string", "enum": list(taxonomy.answers)},
        "confidence": {"type": "number", "description": "probability in [0, 1] that the label is right"},
    }
    if with_reason:
        properties["reason"] = {"type": "string", "description": "at most 15 words"}
    return {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": properties,
                    "required": list(properties),
                    "additionalProperties": False,
                },
            }
        },
        "required": ["items"],
        "additionalProperties": False,
    }


def static_prefix(taxonomy: Taxonomy, tier: TierConfig) -> str:
    """Everything that does not depend on the items: identical across the tier's requests."""
    options = tier.prompt
    lines = [options.instructions.strip()]
    role_text = _ROLE_TEXT[tier.role]
    if role_text:
        lines += ["", role_text]
    lines += ["", "Labels:"]
    for label in taxonomy.labels:
        lines.append(f"- {label.name}: {label.description}" if label.description else f"- {label.name}")
    if taxonomy.none_label:
        lines += [f"- {taxonomy.none_label}: none of the labels above fits the item",
                  f"Answer {taxonomy.none_label} only when no other label fits."]
    if options.few_shot_per_label:
        examples = [
            (label.name, text) for label in taxonomy.labels for text in label.examples[: options.few_shot_per_label]
        ]
        if examples:
            lines += ["", "Examples:"]
            lines += [json.dumps({"text": text, "label": name}, ensure_ascii=False) for name, text in examples]
    fields = "id, label, confidence" + (", reason" if options.with_reason else "")
    lines += [
        "",
        "The items come one JSON object per line, each with an id. Answer with JSON: "
        f'{{"items": [...]}} holding exactly one entry per id with {fields}. '
        "The label must be one of the labels above, spelled exactly. Confidence is the probability, "
        "between 0 and 1, that your label is right."
        + (" The reason has at most 15 words." if options.with_reason else ""),
    ]
    return "\n".join(lines)


def build_prompt(task: LabelTask) -> Prompt:
    """The prompt for one request. Items get short ids ("1", "2", ...): fewer tokens than real item
    ids, and no item id can be mistaken for text. QA and adjudication items carry the earlier tiers'
    answers (`task.prior`)."""
    ids: dict[str, str] = {}
    lines = []
    for position, item in enumerate(task.items, start=1):
        short = str(position)
        ids[short] = item.item_id
        row: dict[str, Any] = {"id": short, "text": item.text}
        prior = task.prior.get(item.item_id, [])
        shown = earlier_answers_shown(task.tier, prior)
        if shown:
            row["earlier_answers"] = shown
        lines.append(json.dumps(row, ensure_ascii=False))
    return Prompt(
        system=static_prefix(task.taxonomy, task.tier),
        user="\n".join(lines),
        schema=answer_schema(task.taxonomy, task.tier.prompt.with_reason),
        ids=ids,
    )


def earlier_answers_shown(tier: TierConfig, prior: list[PriorAnswer]) -> list[dict[str, Any]]:
    """The earlier tiers' answers exactly as an item's line of the prompt shows them (none to a first pass)."""
    if tier.role == "first_pass":
        return []
    return [
        {
            "tier": p.tier,
            "label": p.label,
            "confidence": None if p.confidence is None else round(p.confidence, 3),
            **({"reason": p.reason} if p.reason else {}),
        }
        for p in prior
    ]


def prompt_version(taxonomy: Taxonomy, tier: TierConfig, settings: dict[str, Any]) -> str:
    """A hash of what decides the answer besides the items: the static prefix, the schema, the
    model, the model settings a provider passes (temperature, logprobs, ...) and the confidence
    signal unless it is the default (core.confidence.version_settings). Rate limits and timeouts do
    not belong in `settings`: they change how fast, not what is answered."""
    parts: dict[str, Any] = {
        "format": PROMPT_FORMAT,
        "prefix": static_prefix(taxonomy, tier),
        "schema": answer_schema(taxonomy, tier.prompt.with_reason),
        "model": tier.model,
        "settings": settings,
    }
    signal = version_settings(tier)
    if signal is not None:
        parts["confidence"] = signal
    content = json.dumps(parts, sort_keys=True, ensure_ascii=False)
    return "p" + hashlib.sha256(content.encode("utf-8")).hexdigest()[:15]


@dataclass
class ParsedAnswers:
    answers: list[Answer]
    failures: dict[str, str] = field(default_factory=dict)  # item_id -> why it has no answer


def parse_answers(
    payload: str | dict[str, Any] | None,
    prompt: Prompt,
    taxonomy: Taxonomy,
    distributions: dict[str, dict[str, float]] | None = None,
    signal: str = "default",
) -> ParsedAnswers:
    """Turn the model's JSON into answers; every asked item without a usable answer gets a reason.

    `payload` is the JSON text (or an already decoded object, as a tool call gives it).
    `distributions` (short id -> label -> probability, from token logprobs) fill `alternatives` and
    replace the verbalized confidence where given. `signal` is the tier's confidence.signal: with
    `logprobs` an answer without a distribution for its label fails (never the written number in its
    place); with `stated` the written number stays the confidence and the distribution only fills
    `alternatives`."""
    asked = prompt.ids
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError as exc:
            return _all_failed(asked, f"malformed JSON in the response: {exc.msg} at char {exc.pos}")
    if payload is None:
        return _all_failed(asked, "empty response")
    entries = payload.get("items") if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        return _all_failed(asked, 'the response has no "items" list')

    labels = set(taxonomy.answers)
    answers: dict[str, Answer] = {}
    failures: dict[str, str] = {}
    unknown_ids: list[str] = []
    for entry in entries:
        short = entry.get("id") if isinstance(entry, dict) else None
        short = str(short) if isinstance(short, (str, int)) and not isinstance(short, bool) else None
        if short not in asked:
            unknown_ids.append(repr(short))
            continue
        item_id = asked[short]
        if item_id in answers or item_id in failures:
            failures[item_id] = "answered twice in one response"
            answers.pop(item_id, None)
            continue
        label = entry.get("label")
        confidence = entry.get("confidence")
        if label not in labels:
            failures[item_id] = f"label {label!r} is not in the taxonomy"
            continue
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 <= confidence <= 1:
            failures[item_id] = f"confidence {confidence!r} is not a number in [0, 1]"
            continue
        reason = entry.get("reason")
        alternatives: list[tuple[str, float]] = []
        distribution = (distributions or {}).get(short)
        if signal == "logprobs" and not (distribution and label in distribution):
            failures[item_id] = MISSING_LOGPROBS
            continue
        if distribution and label in distribution:
            if signal != "stated":
                confidence = distribution[label]
            alternatives = sorted(
                ((name, p) for name, p in distribution.items() if name != label), key=lambda pair: -pair[1]
            )[:3]
        answers[item_id] = Answer(
            item_id=item_id,
            label=label,
            confidence=float(confidence),
            reason=reason if isinstance(reason, str) else "",
            alternatives=alternatives,
        )
    missing = "no answer for this item in the response"
    if unknown_ids:
        missing += f" (it answered unknown id(s) {', '.join(unknown_ids[:5])})"
    for item_id in asked.values():
        if item_id not in answers and item_id not in failures:
            failures[item_id] = missing
    return ParsedAnswers(answers=list(answers.values()), failures=failures)


def _all_failed(asked: dict[str, str], reason: str) -> ParsedAnswers:
    return ParsedAnswers(answers=[], failures={item_id: reason for item_id in asked.values()})


@dataclass(frozen=True)
class Reply:
    """What one provider request returned, before parsing: the JSON answer (text, or the decoded
    object a tool call gives), usage as the provider reported it, label distributions from token
    logprobs where asked, and a note that explains a bad answer (refusal, output cut at the limit)."""

    payload: str | dict[str, Any] | None
    usage: Usage
    distributions: dict[str, dict[str, float]] | None = None
    note: str | None = None


def outcome_from_reply(prompt: Prompt, taxonomy: Taxonomy, reply: Reply, signal: str = "default") -> CallOutcome:
    parsed = parse_answers(reply.payload, prompt, taxonomy, reply.distributions, signal)
    failures = parsed.failures
    if reply.note:
        failures = {item_id: f"{reply.note}; {reason}" for item_id, reason in failures.items()}
    return CallOutcome(
        answers=parsed.answers,
        failures=failures,
        usage=reply.usage,
        status=outcome_status(parsed.answers, failures),
    )


def failed_outcome(task: LabelTask, error: str, usage: Usage = Usage(), *, status: str = "error") -> CallOutcome:
    """A call that produced nothing usable (the provider refused the request, retries ran out):
    every item fails with the call's error, and goes on to the next tier. `status` is "rejected" when
    the provider refused the request itself (an HTTP 400: something in it, perhaps one item, is wrong)."""
    return CallOutcome(
        answers=[],
        failures={item.item_id: error for item in task.items},
        usage=usage,
        status=status,
        error=error,
    )


def part_of(task: LabelTask, items: list) -> LabelTask:
    """The same task for some of its items."""
    wanted = {item.item_id for item in items}
    return LabelTask(
        taxonomy=task.taxonomy,
        tier=task.tier,
        items=list(items),
        prior={key: answers for key, answers in task.prior.items() if key in wanted},
    )


def combine_outcomes(parts: list[CallOutcome]) -> CallOutcome:
    """One outcome for a request that was sent in parts (split after the provider rejected it whole)."""
    answers = [answer for part in parts for answer in part.answers]
    failures = {item_id: reason for part in parts for item_id, reason in part.failures.items()}
    usage = Usage()
    for part in parts:
        usage = add_usage(usage, part.usage)
    errors = [part.error for part in parts if part.error]
    return CallOutcome(
        answers=answers,
        failures=failures,
        usage=usage,
        latency_s=sum(part.latency_s for part in parts),
        compute_s=sum(part.compute_s for part in parts),
        batch=parts[0].batch,
        status=outcome_status(answers, failures),
        error=None if answers or not errors else errors[0],
    )


def repair_task(task: LabelTask, failed: dict[str, str]) -> LabelTask:
    """The same task restricted to the items whose answer was unusable: asked once more."""
    return LabelTask(
        taxonomy=task.taxonomy,
        tier=task.tier,
        items=[item for item in task.items if item.item_id in failed],
        prior={item_id: answers for item_id, answers in task.prior.items() if item_id in failed},
    )


def add_usage(a: Usage, b: Usage) -> Usage:
    return Usage(
        input_tokens=a.input_tokens + b.input_tokens,
        cached_input_tokens=a.cached_input_tokens + b.cached_input_tokens,
        cache_write_tokens=a.cache_write_tokens + b.cache_write_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        cache_write_1h_tokens=a.cache_write_1h_tokens + b.cache_write_1h_tokens,
    )


def outcome_status(answers: list[Answer], failures: dict[str, str]) -> str:
    """"ok": every item answered; "partial": some failed; "error": none answered."""
    return "ok" if not failures else ("partial" if answers else "error")


def merge_repair(first: CallOutcome, repair: CallOutcome) -> CallOutcome:
    """One outcome for a call and its repair attempt: the answers of both, the failures that the
    repair did not fix (with both reasons), usage and latency added up."""
    failures = {
        item_id: f"{first.failures[item_id]}; after one repair attempt: {reason}"
        for item_id, reason in repair.failures.items()
    }
    answers = first.answers + repair.answers
    return CallOutcome(
        answers=answers,
        failures=failures,
        usage=add_usage(first.usage, repair.usage),
        latency_s=first.latency_s + repair.latency_s,
        compute_s=first.compute_s + repair.compute_s,
        batch=first.batch,
        status=outcome_status(answers, failures),
        error=None if answers or not failures else repair.error or first.error,
    )


# --- token log-probabilities ---------------------------------------------------------------

_LABEL_VALUE = re.compile(r'"label"\s*:\s*"')


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # the alternatives the provider returned at this position


def label_distributions(
    content: str, tokens: list[TokenLogprob], taxonomy: Taxonomy
) -> dict[str, dict[str, float]]:
    """Per short id, a probability for each taxonomy answer (the labels and the none-of-these answer)
    the model considered, from the token log-probabilities of the label value in the JSON answer,
    renormalised over the taxonomy.

    The chosen label gets the probability of its whole token path. An alternative token at some
    position of that path gives its branch probability to the labels that start with the text so
    far plus that token (shared evenly when several labels share the prefix: the provider does not
    say how the branch would continue). Branches that start no label are dropped, then the
    probabilities are renormalised to sum to 1."""
    if "".join(t.token for t in tokens) != content:
        return {}  # the tokens do not spell the content: cannot locate the labels, so no signal
    try:
        entries = json.loads(content).get("items", [])
    except (json.JSONDecodeError, AttributeError):
        return {}
    starts = [match.end() for match in _LABEL_VALUE.finditer(content)]
    if len(starts) != len(entries):
        return {}
    offsets = []
    position = 0
    for token in tokens:
        offsets.append(position)
        position += len(token.token)
    names = list(taxonomy.answers)
    result: dict[str, dict[str, float]] = {}
    for entry, start in zip(entries, starts):
        if not isinstance(entry, dict) or entry.get("label") not in names:
            continue
        label = entry["label"]
        end = start + len(label)
        path = [i for i, offset in enumerate(offsets) if offset < end and offset + len(tokens[i].token) > start]
        if not path:
            continue
        mass: dict[str, float] = {}
        prefix_logprob = 0.0
        for i in path:
            token = tokens[i]
            # the label text already written before this token, or, for a token that straddles the
            # opening quote, the characters it carries before the label (an alternative must share them)
            written = content[start : offsets[i]] if offsets[i] >= start else ""
            lead = content[offsets[i] : start] if offsets[i] < start else ""
            for alt_token, alt_logprob in token.top:
                if alt_token == token.token or not alt_token.startswith(lead):
                    continue
                text = written + alt_token[len(lead) :]
                candidates = [name for name in names if name != label and _starts(name, text)]
                for name in candidates:
                    mass[name] = mass.get(name, 0.0) + math.exp(prefix_logprob + alt_logprob) / len(candidates)
            prefix_logprob += token.logprob
        mass[label] = math.exp(prefix_logprob)
        total = sum(mass.values())
        result[str(entry.get("id"))] = {name: p / total for name, p in mass.items()}
    return result


def _starts(name: str, text: str) -> bool:
    """Whether a label can begin with `text` (which may run past the label's closing quote)."""
    if not text:
        return False
    quoted = name + '"'
    return quoted.startswith(text) or text.startswith(quoted)
