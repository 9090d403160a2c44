"""A SIMULATED OpenAI + Anthropic HTTP server on 127.0.0.1 for offline provider tests and benchmarks.

It speaks the wire formats the official SDKs use (chat completions, files + batches, messages,
message batches), records every request for assertions, and answers like a well-behaved model
would unless a test queues a scripted reply (an error status, a malformed answer, a delay). Nothing
here is a real model: labels come from `answer` (by default the label whose words appear in the
text), token counts from a crude word/punctuation count, rate limits from its own token buckets, and,
with `difficulty`, sampling from a hash (see FakeLLMServer._sampled).
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import itertools
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_WORD = re.compile(r"\w+|[^\w\s]")
# a reason of typical length (the prompt allows 15 words), so output token counts are realistic
SIMULATED_REASON = "simulated: the text asks about this topic more than any other label"


def count_tokens(text: str) -> int:
    """SIMULATED tokenizer: words and punctuation marks. Close enough to a BPE count for limits."""
    return len(_WORD.findall(text))


def default_answer(text: str, labels: list[str]) -> str:
    """SIMULATED model: the label whose words all appear in the text, else the first label."""
    lowered = text.lower()
    for label in labels:
        if all(word in lowered for word in label.lower().split("_")):
            return label
    return labels[0]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # decoded JSON, or raw bytes for uploads
    status: int = 0
    response: Any = None  # what the server answered (decoded JSON, or bytes)


@dataclass
class Scripted:
    """A reply queued for the next request to `path`: either a whole HTTP response (status, body,
    headers) or, with `content`, a normal model answer whose content is replaced."""

    path: str
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    content: Any = None  # OpenAI: message content (str); Anthropic: tool input (dict) or text (str)
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class Faults:
    """SIMULATED provider faults (benchmarks/faults.py): each online chat/messages request draws one
    outcome from a hash of (seed, path, model, system prompt, user message, how many times this exact
    request was seen), so a run is deterministic whatever the thread interleaving. Shares of requests:
    `server_error` (500, Anthropic 529), `rate_limited` (429 with Retry-After), `slow` (answered after
    `slow_s`, beyond the tier's timeout: the client has gone, so it is not billed), and, answered 200
    and billed, `malformed` (JSON cut in half), `off_taxonomy` (one item's label not in the enum),
    `drop_items` (one item left out of the answer). Every request first waits up to `latency_s` (its
    share drawn from the same hash), so requests sent together come back one by one."""

    seed: int = 0
    latency_s: float = 0.0
    server_error: float = 0.0
    rate_limited: float = 0.0
    retry_after_s: float = 0.5
    slow: float = 0.0
    slow_s: float = 3.0
    malformed: float = 0.0
    off_taxonomy: float = 0.0
    drop_items: float = 0.0

    KINDS = ("server_error", "rate_limited", "slow", "malformed", "off_taxonomy", "drop_items")

    def draw(self, u: float) -> str | None:
        edge = 0.0
        for kind in self.KINDS:
            edge += getattr(self, kind)
            if u < edge:
                return kind
        return None


@dataclass
class Billed:
    """One request the SIMULATED server answered 200 with usage, i.e. billed: its USD (from the
    server's `price_usd`), normalised usage, the fault drawn (None: a clean answer), and per item of
    the request (item_key, whether the answer held a valid entry for it). `item_key` hashes the model,
    the system prompt and the item's line without its short id (its text and the earlier answers
    shown), so the same inputs in another grouping of items have the same key."""

    seq: int
    path: str
    model: str
    usd: float
    usage: dict[str, int]
    fault: str | None
    items: list[tuple[str, bool]]
    phase: str = ""
    at: float = 0.0


class _Bucket:
    def __init__(self, per_minute: float, burst_s: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate * burst_s, 1.0)
        self.level = self.capacity
        self.at = time.monotonic()

    def wait(self, amount: float) -> float:
        """Seconds until `amount` may be taken (0: now)."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now
        need = min(amount, self.capacity)
        return max(need - self.level, 0.0) / self.rate


class FakeLLMServer:
    """SIMULATED provider endpoints. Use as a context manager; `openai_base_url` / `anthropic_base_url`
    go to the SDK clients. `rpm` / `tpm` turn on limits answered with 429 + Retry-After."""

    def __init__(
        self,
        *,
        answer: Callable[[str, list[str]], str] = default_answer,
        confidence: float = 0.9,
        latency: Callable[[], float] | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        burst_s: float = 1.0,
        cache_min_tokens: int = 1024,
        batch_polls_before_done: int = 1,
        forget: bool = False,
        faults: Faults | None = None,
        confidence_of: Callable[[dict[str, Any], str], float] | None = None,
        price_usd: Callable[[str, dict[str, int]], float] | None = None,
        difficulty: Callable[[str], float] | None = None,
        logprobs: bool = True,
    ) -> None:
        self.answer = answer
        self.confidence = confidence
        # SIMULATED sampling (self-consistency tests): `difficulty(text)` is the share of an item's
        # samples that stray from `answer` at temperature 1 (0: an easy item every sample agrees on).
        # None: every request is answered as before, whatever it sends.
        self.difficulty = difficulty
        # False: a SIMULATED server that ignores a request for logprobs (as some OpenAI-compatible
        # servers do): a 200 whose choice has no logprobs, the silent case a logprobs tier must catch.
        self.logprobs = logprobs
        self._draws: dict[str, int] = {}
        self.latency = latency
        self.cache_min_tokens = cache_min_tokens
        self.batch_polls_before_done = batch_polls_before_done
        # A long benchmark's server (benchmarks/scale.py): no request history, and a batch's input file
        # dropped once the batch ran and its output once downloaded, so its memory is not the run's.
        self.forget = forget
        self.requests: list[Recorded] = []
        self.rate_limited = 0
        # SIMULATED refusal: a chat request whose user message this returns True for is answered 401,
        # as a revoked key would be (it stops the step: a way to fail one shard of a month).
        self.refuse: Callable[[str], bool] | None = None
        self._limits = {
            "requests": _Bucket(rpm, burst_s) if rpm else None,
            "tokens": _Bucket(tpm, burst_s) if tpm else None,
        }
        self._script: deque[Scripted] = deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._seen_prefixes: set[str] = set()
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        # Fault-injection mode (benchmarks/faults.py): with `faults` set, online requests draw faults and
        # every request answered 200 is recorded in `billed`. `confidence_of(item_row, user_message)`
        # replaces the fixed confidence (SIMULATED: a model whose confidence depends on the item and,
        # a little, on the other items of the request); `price_usd(model, usage)` prices a billed request.
        self.faults = faults
        self.confidence_of = confidence_of
        self.price_usd = price_usd
        self.billed: list[Billed] = []
        self.fault_counts: dict[str, int] = {}
        self.phase = ""  # a label the benchmark sets; copied into each Billed
        self.online_requests = 0  # online chat/messages requests received in fault mode
        self._seen_requests: dict[str, int] = {}
        self._open = threading.Event()
        self._open.set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    def enqueue(self, path: str, **reply: Any) -> None:
        self._script.append(Scripted(path=path, **reply))

    def calls(self, path: str, method: str = "POST") -> list[Recorded]:
        return [r for r in self.requests if r.path == path and r.method == method]

    # --- HTTP plumbing ---------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                return

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                ctype = self.headers.get("content-type", "")
                body: Any = raw
                if "application/json" in ctype and raw:
                    body = json.loads(raw)
                path = self.path.split("?")[0]
                headers = {k.lower(): v for k, v in self.headers.items()}
                recorded = Recorded(method, path, headers, body)
                if not server.forget:
                    with server._lock:
                        server.requests.append(recorded)
                status, payload, extra = server._route(method, path, body, ctype)
                recorded.status, recorded.response = status, payload
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for key, value in extra.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away: what a timeout test wants

        return Handler

    def _next_script(self, path: str) -> Scripted | None:
        with self._lock:
            for reply in self._script:
                if reply.path == path:
                    self._script.remove(reply)
                    return reply
        return None

    def _route(self, method: str, path: str, body: Any, ctype: str) -> tuple[int, Any, dict[str, str]]:
        scripted = self._next_script(path) if method == "POST" else None
        if scripted is not None:
            if scripted.delay_s:
                time.sleep(scripted.delay_s)
            if scripted.body is not None or scripted.status != 200:
                return scripted.status, scripted.body or {"error": {"message": "scripted failure"}}, scripted.headers
        too_long = getattr(self, "max_request_chars", None)  # SIMULATED context window: a longer request is refused
        if too_long and method == "POST" and path in ("/v1/chat/completions", "/v1/messages") and len(json.dumps(body)) > too_long:
            return 400, {"error": {"type": "invalid_request_error",
                                   "message": f"maximum context length exceeded ({len(json.dumps(body))} > {too_long} characters)"}}, {}
        if self.faults is not None and method == "POST" and path in ("/v1/chat/completions", "/v1/messages"):
            return self._with_faults(path, body, scripted)
        if method == "POST" and path == "/v1/chat/completions":
            return self._chat(body, scripted)
        if method == "POST" and path == "/v1/messages":
            return self._messages(body, scripted)
        if method == "POST" and path == "/v1/files":
            return self._upload(body, ctype)
        if method == "GET" and path.startswith("/v1/files/") and path.endswith("/content"):
            file_id = path.split("/")[3]
            content = self.files[file_id]["content"]
            if self.forget:
                del self.files[file_id]
            return 200, content, {}
        if method == "POST" and path == "/v1/batches":
            return self._openai_batch(body)
        if method == "GET" and path.startswith("/v1/batches/"):
            return self._openai_batch_status(path.split("/")[3])
        if method == "POST" and path == "/v1/messages/batches":
            return self._anthropic_batch(body)
        if method == "GET" and path.startswith("/v1/messages/batches/"):
            parts = path.split("/")
            if len(parts) == 6 and parts[5] == "results":
                return 200, self.batches[parts[4]]["results"], {}
            return self._anthropic_batch_status(parts[4])
        return 404, {"error": {"message": f"no route {method} {path}"}}, {}

    def _limited(self, tokens: int) -> tuple[int, Any, dict[str, str]] | None:
        """A 429 with Retry-After when the request does not fit the limits; else take its share."""
        asks = [(self._limits["requests"], 1), (self._limits["tokens"], tokens)]
        asks = [(bucket, amount) for bucket, amount in asks if bucket is not None]
        with self._lock:
            wait = max((bucket.wait(amount) for bucket, amount in asks), default=0.0)
            if wait <= 0:
                for bucket, amount in asks:
                    bucket.level -= amount
                return None
            self.rate_limited += 1
        headers = {"retry-after": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))}
        return 429, {"error": {"type": "rate_limit_error", "message": "Rate limit reached (simulated)"}}, headers

    # --- OpenAI ----------------------------------------------------------------------------
    def _chat(self, body: dict[str, Any], scripted: Scripted | None) -> tuple[int, Any, dict[str, str]]:
        messages = body["messages"]
        system = "\n".join(m["content"] for m in messages if m["role"] in ("system", "developer"))
        user = "\n".join(m["content"] for m in messages if m["role"] == "user")
        schema = body.get("response_format", {}).get("json_schema", {}).get("schema", {})
        labels = _enum_of(schema)
        prompt_tokens = count_tokens(system) + count_tokens(user) + count_tokens(json.dumps(schema))
        if self.refuse is not None and self.refuse(user):
            return 401, {"error": {"message": "simulated refusal", "type": "invalid_request_error"}}, {}
        content, logprobs = self._content(user, labels, scripted, body)
        completion_tokens = count_tokens(content)
        limited = self._limited(prompt_tokens + (body.get("max_completion_tokens") or completion_tokens))
        if limited:
            return limited
        if self.latency is not None:
            time.sleep(self.latency())
        cached = 0
        prefix_tokens = count_tokens(system)
        if prefix_tokens >= self.cache_min_tokens:
            key = hashlib.sha256((body["model"] + system).encode()).hexdigest()
            with self._lock:
                if key in self._seen_prefixes:
                    cached = prefix_tokens
                self._seen_prefixes.add(key)
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": content, "refusal": None},
            "logprobs": {"content": logprobs, "refusal": None} if body.get("logprobs") and self.logprobs else None,
        }
        return 200, {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }, {}

    def _content(self, user: str, labels: list[str], scripted: Scripted | None,
                 body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        if scripted is not None and scripted.content is not None:
            content = scripted.content if isinstance(scripted.content, str) else json.dumps(scripted.content)
            return content, scripted.logprobs or _plain_logprobs(content)
        # an OpenAI request samples anew when it sends a seed; without one it is answered as always
        content = json.dumps({"items": self._answers(user, labels, body.get("seed"), body.get("temperature"))})
        return content, _plain_logprobs(content)

    def _answers(self, user: str, labels: list[str], draw: int | None = None,
                 temperature: float | None = None) -> list[dict[str, Any]]:
        answers = []
        for row in _item_rows(user):
            label = self._sampled(row["text"], labels, draw, 1.0 if temperature is None else temperature)
            confidence = self.confidence if self.confidence_of is None else self.confidence_of(row, user)
            answers.append({"id": row["id"], "label": label, "confidence": confidence, "reason": SIMULATED_REASON})
        return answers

    def _sampled(self, text: str, labels: list[str], draw: int | None, temperature: float) -> str:
        """SIMULATED sampling: `answer`, except in a share difficulty(text) x min(temperature, 1) of the
        draws, which pick another label. Draw and text are hashed, so the same draw of the same item
        always gives the same label and a rerun is deterministic; temperature 0 never strays."""
        label = self.answer(text, labels)
        if self.difficulty is None or draw is None or len(labels) < 2:
            return label
        digest = hashlib.sha256(f"{draw}\n{text}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 >= self.difficulty(text) * min(temperature, 1.0):
            return label
        others = [name for name in labels if name != label]
        return others[digest[8] % len(others)]

    def _draw(self, body: dict[str, Any]) -> int | None:
        """SIMULATED sampling of a request without a seed (Anthropic has none): the number of identical
        requests answered before, so each repeat is a new draw and the order of draws is deterministic."""
        if self.difficulty is None:
            return None
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self._lock:
            seen = self._draws.get(key, 0)
            self._draws[key] = seen + 1
        return seen

    # --- fault-injection mode ----------------------------------------------------------------
    def hold(self) -> None:
        """Stop answering online requests: those not answered yet (arriving, or still in their latency)
        wait, unanswered and unbilled, until `release`, which fails them with 503 (benchmarks/faults.py
        holds the server before it kills a run, so nothing is billed that the run could not have received)."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def _with_faults(self, path: str, body: dict[str, Any], scripted: Scripted | None) -> tuple[int, Any, dict[str, str]]:
        assert self.faults is not None
        anthropic = path == "/v1/messages"
        system, user, labels = _request_parts(path, body)
        key = hashlib.sha256("\n".join([path, body.get("model", ""), system, user]).encode()).hexdigest()
        arrived_held = not self._open.is_set()  # sent while held: its client may be gone by the release
        with self._lock:
            seen = self._seen_requests.get(key, 0)
            self._seen_requests[key] = seen + 1
            self.online_requests += 1
        digest = hashlib.sha256(f"{self.faults.seed}\n{key}\n{seen}".encode()).digest()
        if self.faults.latency_s:
            time.sleep(self.faults.latency_s * digest[9] / 255)
        if arrived_held or not self._open.is_set():  # held (see `hold`): never answered, never billed
            self._open.wait()
            return 503, {"error": {"type": "overloaded_error", "message": "held (simulated)"}}, {}
        fault = self.faults.draw(int.from_bytes(digest[:8], "big") / 2**64) if scripted is None else None
        with self._lock:
            self.fault_counts[fault or "none"] = self.fault_counts.get(fault or "none", 0) + 1
        if fault == "server_error":
            return (529 if anthropic else 500), {"error": {"type": "api_error", "message": "simulated server error"}}, {}
        if fault == "rate_limited":
            wait = self.faults.retry_after_s
            return 429, {"error": {"type": "rate_limit_error", "message": "Rate limit reached (simulated)"}}, {
                "retry-after": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))}
        if fault == "slow":
            time.sleep(self.faults.slow_s)  # the client's timeout has passed: it is gone, nothing is billed
            return 504, {"error": {"type": "timeout", "message": "answered too late (simulated)"}}, {}
        if fault is not None:
            answers = self._answers(user, labels)
            pick = digest[8] % max(len(answers), 1)
            if fault == "malformed":
                text = json.dumps({"items": answers})
                content: Any = text[: len(text) // 2]
            elif fault == "off_taxonomy":
                if answers:
                    answers[pick] = {**answers[pick], "label": "not_a_label"}
                content = {"items": answers}
            else:  # drop_items
                content = {"items": [a for i, a in enumerate(answers) if i != pick]}
            scripted = Scripted(path=path, content=content)
        status, payload, headers = (self._messages if anthropic else self._chat)(body, scripted)
        if not self._open.is_set():  # held while its answer was made: held like the others, never billed
            self._open.wait()
            return 503, {"error": {"type": "overloaded_error", "message": "held (simulated)"}}, {}
        if status == 200:
            self._bill(path, body, system, user, labels, payload, fault)
        return status, payload, headers

    def _bill(self, path: str, body: dict[str, Any], system: str, user: str, labels: list[str],
              payload: dict[str, Any], fault: str | None) -> None:
        model = body.get("model", "")
        if path == "/v1/messages":
            u = payload["usage"]
            written = u.get("cache_creation_input_tokens") or 0
            usage = {"input_tokens": u["input_tokens"] + written + (u.get("cache_read_input_tokens") or 0),
                     "cached_input_tokens": u.get("cache_read_input_tokens") or 0, "cache_write_tokens": written,
                     "cache_write_1h_tokens": (u.get("cache_creation") or {}).get("ephemeral_1h_input_tokens") or 0,
                     "output_tokens": u["output_tokens"]}
            answer: Any = None
            for block in payload["content"]:
                if block["type"] == "tool_use":
                    answer = block["input"]
                elif block["type"] == "text":
                    answer = block["text"]
        else:
            u = payload["usage"]
            usage = {"input_tokens": u["prompt_tokens"],
                     "cached_input_tokens": (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
                     "cache_write_tokens": 0, "cache_write_1h_tokens": 0, "output_tokens": u["completion_tokens"]}
            answer = payload["choices"][0]["message"]["content"]
        if isinstance(answer, str):
            try:
                answer = json.loads(answer)
            except json.JSONDecodeError:
                answer = None
        entries = answer.get("items") if isinstance(answer, dict) else None
        by_id: dict[str, list[dict[str, Any]]] = {}
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict):
                by_id.setdefault(str(entry.get("id")), []).append(entry)
        items = []
        system_hash = hashlib.sha256(system.encode()).hexdigest()
        for row in _item_rows(user):
            given = by_id.get(str(row["id"]), [])
            confidence = given[0].get("confidence") if len(given) == 1 else None
            valid = (len(given) == 1 and given[0].get("label") in labels and isinstance(confidence, (int, float))
                     and not isinstance(confidence, bool) and 0 <= confidence <= 1)
            items.append((item_key(model, system_hash, row), valid))
        usd = self.price_usd(model, usage) if self.price_usd is not None else 0.0
        with self._lock:
            self.billed.append(Billed(len(self.billed) + 1, path, model, usd, usage, fault, items, self.phase, time.time()))

    def _upload(self, body: bytes, ctype: str) -> tuple[int, Any, dict[str, str]]:
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            f"content-type: {ctype}\r\n\r\n".encode() + body
        )
        fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        file_part = fields["file"]
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = {
            "content": file_part.get_payload(decode=True),
            "purpose": fields["purpose"].get_content().strip(),
            "filename": file_part.get_filename(),
        }
        return 200, self._file_object(file_id), {}

    def _file_object(self, file_id: str) -> dict[str, Any]:
        entry = self.files[file_id]
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(entry["content"]),
            "created_at": int(time.time()),
            "filename": entry["filename"] or "upload.jsonl",
            "purpose": entry["purpose"],
            "status": "processed",
        }

    def _openai_batch(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        batch_id = f"batch_{next(self._ids)}"
        self.batches[batch_id] = {"request": body, "polls": 0, "kind": "openai"}
        return 200, self._openai_batch_object(batch_id, "validating"), {}

    def _openai_batch_status(self, batch_id: str) -> tuple[int, Any, dict[str, str]]:
        batch = self.batches[batch_id]
        batch["polls"] += 1
        if batch["polls"] <= self.batch_polls_before_done:
            return 200, self._openai_batch_object(batch_id, "in_progress"), {}
        if "output_file_id" not in batch:
            self._run_openai_batch(batch_id)
        return 200, self._openai_batch_object(batch_id, "completed"), {}

    def _run_openai_batch(self, batch_id: str) -> None:
        batch = self.batches[batch_id]
        lines = self.files[batch["request"]["input_file_id"]]["content"].decode().splitlines()
        if self.forget:
            self.files[batch["request"]["input_file_id"]]["content"] = b""
        out, errors = [], []
        for line in lines:
            request = json.loads(line)
            scripted = self._next_script("batch:" + request["custom_id"]) or self._next_script("/v1/chat/completions")
            if scripted is not None and scripted.status != 200:
                errors.append({"id": f"r{next(self._ids)}", "custom_id": request["custom_id"], "response": None,
                               "error": {"code": "server_error", "message": "simulated failure"}})
                continue
            status, response, _ = self._chat(request["body"], scripted)
            out.append({"id": f"r{next(self._ids)}", "custom_id": request["custom_id"],
                        "response": {"status_code": status, "request_id": "req", "body": response}, "error": None})
        for key, rows in (("output_file_id", out), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{next(self._ids)}"
                self.files[file_id] = {"content": "".join(json.dumps(r) + "\n" for r in rows).encode(),
                                       "purpose": "batch_output", "filename": f"{batch_id}_{key}.jsonl"}
                batch[key] = file_id
            else:
                batch[key] = None

    def _openai_batch_object(self, batch_id: str, status: str) -> dict[str, Any]:
        batch = self.batches[batch_id]
        return {
            "id": batch_id,
            "object": "batch",
            "endpoint": batch["request"]["endpoint"],
            "completion_window": batch["request"]["completion_window"],
            "input_file_id": batch["request"]["input_file_id"],
            "status": status,
            "created_at": int(time.time()),
            "output_file_id": batch.get("output_file_id"),
            "error_file_id": batch.get("error_file_id"),
        }

    # --- Anthropic -------------------------------------------------------------------------
    def _messages(self, body: dict[str, Any], scripted: Scripted | None) -> tuple[int, Any, dict[str, str]]:
        system_blocks = body.get("system") or []
        if isinstance(system_blocks, str):
            system_blocks = [{"type": "text", "text": system_blocks}]
        system = "\n".join(block["text"] for block in system_blocks)
        user_content = body["messages"][-1]["content"]
        user = user_content if isinstance(user_content, str) else "\n".join(b.get("text", "") for b in user_content)
        tools = body.get("tools") or []
        schema = tools[0]["input_schema"] if tools else (body.get("output_config") or {}).get("format", {}).get("schema", {})
        labels = _enum_of(schema)
        prefix_tokens = count_tokens(json.dumps(tools)) + count_tokens(system)
        total_input = prefix_tokens + count_tokens(user)
        if scripted is not None and scripted.content is not None:
            result = scripted.content
        else:
            result = {"items": self._answers(user, labels, self._draw(body), body.get("temperature"))}
        output_text = result if isinstance(result, str) else json.dumps(result)
        limited = self._limited(total_input + body["max_tokens"])
        if limited:
            return limited
        if self.latency is not None:
            time.sleep(self.latency())
        cache_read = cache_write = 0
        one_hour = any((block.get("cache_control") or {}).get("ttl") == "1h" for block in system_blocks)
        if any(block.get("cache_control") for block in system_blocks) and prefix_tokens >= self.cache_min_tokens:
            key = hashlib.sha256((body["model"] + json.dumps(tools) + system).encode()).hexdigest()
            with self._lock:
                if key in self._seen_prefixes:
                    cache_read = prefix_tokens
                else:
                    cache_write = prefix_tokens
                self._seen_prefixes.add(key)
        if tools and not isinstance(result, str):
            content = [{"type": "tool_use", "id": f"toolu_{next(self._ids)}", "name": tools[0]["name"], "input": result}]
            stop_reason = "tool_use"
        else:
            content = [{"type": "text", "text": output_text}]
            stop_reason = "end_turn"
        return 200, {
            "id": f"msg_{next(self._ids)}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": total_input - cache_read - cache_write,
                "cache_creation_input_tokens": cache_write,
                "cache_creation": {"ephemeral_1h_input_tokens": cache_write if one_hour else 0,
                                   "ephemeral_5m_input_tokens": 0 if one_hour else cache_write},
                "cache_read_input_tokens": cache_read,
                "output_tokens": count_tokens(output_text),
            },
        }, {}

    def _anthropic_batch(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        batch_id = f"msgbatch_{next(self._ids)}"
        self.batches[batch_id] = {"request": body, "polls": 0, "kind": "anthropic"}
        return 200, self._anthropic_batch_object(batch_id, "in_progress"), {}

    def _anthropic_batch_status(self, batch_id: str) -> tuple[int, Any, dict[str, str]]:
        batch = self.batches[batch_id]
        batch["polls"] += 1
        if batch["polls"] <= self.batch_polls_before_done:
            return 200, self._anthropic_batch_object(batch_id, "in_progress"), {}
        if "results" not in batch:
            lines = []
            for request in batch["request"]["requests"]:
                scripted = self._next_script("batch:" + request["custom_id"]) or self._next_script("/v1/messages")
                if scripted is not None and scripted.status != 200:
                    result: dict[str, Any] = {"type": "errored", "error": {"type": "error", "error": {"type": "api_error", "message": "simulated failure"}}}
                else:
                    _, message, _ = self._messages(request["params"], scripted)
                    result = {"type": "succeeded", "message": message}
                lines.append(json.dumps({"custom_id": request["custom_id"], "result": result}) + "\n")
            batch["results"] = "".join(lines).encode()
        return 200, self._anthropic_batch_object(batch_id, "ended"), {}

    def _anthropic_batch_object(self, batch_id: str, status: str) -> dict[str, Any]:
        ended = status == "ended"
        n = len(self.batches[batch_id]["request"]["requests"])
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {"processing": 0 if ended else n, "succeeded": n if ended else 0,
                               "errored": 0, "canceled": 0, "expired": 0},
            "created_at": "2026-11-01T00:00:00Z",
            "expires_at": "2026-11-02T00:00:00Z",
            "ended_at": "2026-11-01T00:10:00Z" if ended else None,
            "results_url": f"{self.url}/v1/messages/batches/{batch_id}/results" if ended else None,
        }


def _request_parts(path: str, body: dict[str, Any]) -> tuple[str, str, list[str]]:
    """(system prompt, user message, label enum) of an online chat or messages request."""
    if path == "/v1/messages":
        blocks = body.get("system") or []
        system = blocks if isinstance(blocks, str) else "\n".join(block["text"] for block in blocks)
        content = body["messages"][-1]["content"]
        user = content if isinstance(content, str) else "\n".join(b.get("text", "") for b in content)
        tools = body.get("tools") or []
        schema = tools[0]["input_schema"] if tools else (body.get("output_config") or {}).get("format", {}).get("schema", {})
        return system, user, _enum_of(schema)
    messages = body["messages"]
    system = "\n".join(m["content"] for m in messages if m["role"] in ("system", "developer"))
    user = "\n".join(m["content"] for m in messages if m["role"] == "user")
    return system, user, _enum_of(body.get("response_format", {}).get("json_schema", {}).get("schema", {}))


def _item_rows(user: str) -> list[dict[str, Any]]:
    """The item lines of a user message (JSON objects with an id and a text)."""
    rows = []
    for line in user.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "id" in row and "text" in row:
            rows.append(row)
    return rows


def item_key(model: str, system_hash: str, row: dict[str, Any]) -> str:
    """An item's inputs as a request shows them: the model, the system prompt (its hash), and the
    item's line without its short id (text, earlier answers), whichever request carries it."""
    shown = json.dumps({k: v for k, v in row.items() if k != "id"}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(f"{model}\n{system_hash}\n{shown}".encode()).hexdigest()[:32]


def _enum_of(schema: dict[str, Any]) -> list[str]:
    """The taxonomy as the request's own schema states it (the label enum)."""
    try:
        return schema["properties"]["items"]["items"]["properties"]["label"]["enum"]
    except (KeyError, TypeError):
        return ["unknown"]


def _plain_logprobs(content: str) -> list[dict[str, Any]]:
    """SIMULATED token logprobs: the content cut into word/punctuation pieces, each certain."""
    pieces = re.findall(r"\w+|\s+|[^\w\s]", content)
    return [{"token": piece, "logprob": 0.0, "bytes": None, "top_logprobs": []} for piece in pieces]
