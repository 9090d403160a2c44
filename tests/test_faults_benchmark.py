"""The fault-injection mode of the SIMULATED server (tests/fake_llm_server.py) that benchmarks/faults.py
drives: faults drawn deterministically per request, a billing ledger keyed by item inputs whatever the
grouping, and holding requests before a kill. No Dagster run here (the benchmark itself is not a test)."""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fake_llm_server import Billed, FakeLLMServer, Faults  # noqa: E402

LABELS = ["billing", "card_lost"]
SCHEMA = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object", "properties": {
    "id": {"type": "string"}, "label": {"type": "string", "enum": LABELS}, "confidence": {"type": "number"}}}}}}


def _chat(server: FakeLLMServer, texts: list[str], model: str = "gpt-5-nano") -> tuple[int, dict, dict]:
    user = "\n".join(json.dumps({"id": str(i), "text": text}) for i, text in enumerate(texts, start=1))
    body = {"model": model, "messages": [{"role": "system", "content": "Label each item."}, {"role": "user", "content": user}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "item_labels", "schema": SCHEMA}}}
    request = urllib.request.Request(server.openai_base_url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def test_faults_are_deterministic_per_request_and_refusals_are_not_billed() -> None:
    outcomes = []
    for _ in range(2):
        with FakeLLMServer(faults=Faults(seed=3, server_error=0.3, rate_limited=0.3)) as server:
            outcomes.append([_chat(server, [f"my billing is wrong {n}"])[0] for n in range(12)])
            billed = len(server.billed)
            assert billed == outcomes[-1].count(200)
    assert outcomes[0] == outcomes[1] and {500, 429, 200} <= set(outcomes[0])
    with FakeLLMServer(faults=Faults(rate_limited=1.0, retry_after_s=0.5)) as server:
        status, _, headers = _chat(server, ["x"])
        assert status == 429 and {k.lower(): v for k, v in headers.items()}["retry-after-ms"] == "500"
        assert server.billed == []


def test_billing_ledger_marks_bad_answers_and_keys_items_by_their_inputs() -> None:
    with FakeLLMServer(faults=Faults(), price_usd=lambda model, usage: usage["input_tokens"] * 1e-6) as server:
        assert _chat(server, ["my billing is wrong", "I lost my card"])[0] == 200
        assert _chat(server, ["I lost my card", "another billing question"])[0] == 200  # same item, other position
        first, second = server.billed
        assert all(valid for _, valid in first.items + second.items) and first.usd > 0
        assert first.items[1][0] == second.items[0][0]  # "I lost my card": one key in both groupings
        assert _chat(server, ["I lost my card"], model="gpt-5.2")[0] == 200
        assert server.billed[2].items[0][0] != first.items[1][0]  # another model: other inputs
    for fault, valid in (("malformed", [False, False]), ("off_taxonomy", None), ("drop_items", None)):
        with FakeLLMServer(faults=Faults(**{fault: 1.0})) as server:
            assert _chat(server, ["my billing is wrong", "I lost my card"])[0] == 200
            (bill,) = server.billed
            assert bill.fault == fault
            flags = [v for _, v in bill.items]
            assert flags == valid if valid else sorted(flags) == [False, True]


def test_held_requests_wait_then_fail_unbilled() -> None:
    with FakeLLMServer(faults=Faults()) as server:
        server.hold()
        result: list = []
        worker = threading.Thread(target=lambda: result.append(_chat(server, ["my billing is wrong"])[0]))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and result == []
        server.release()
        worker.join(5)
        assert result == [503] and server.billed == []


def test_paid_twice_counts_valid_answers_billed_again() -> None:
    from benchmarks.faults import paid_twice

    server = FakeLLMServer()
    server.billed = [Billed(1, "/v1/chat/completions", "m", 0.1, {}, "malformed", [("a", False), ("b", False)], "run"),
                     Billed(2, "/v1/chat/completions", "m", 0.1, {}, None, [("a", True), ("b", True)], "run"),
                     Billed(3, "/v1/chat/completions", "m", 0.1, {}, None, [("b", True), ("c", True)], "rerun")]
    assert paid_twice(server) == (1, {"rerun": 1}, {"m": 1})
