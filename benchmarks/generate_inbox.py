"""A realistic month of support tickets for scale runs: banking77 texts from the example's seed set,
dressed as tickets (greetings, account references, typos, signatures, quoted threads) with metadata
and a few bad rows, written in streaming chunks beside a project.yaml that labels them.

Run: python -m benchmarks.generate_inbox --items 100000 --month 2026-09 --out DIR [--format csv|parquet|jsonl] [--seed 7]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "support_tickets"
COLUMNS = ["ticket_id", "text", "channel", "customer_tier"]
CHUNK = 20_000  # rows held in memory at once, whatever the month's size
BAD_EVERY = 20_000  # one bad row of each kind per this many items (a small month still gets two of each)

CHANNELS = [("email", 0.45), ("chat", 0.30), ("app", 0.15), ("phone_transcript", 0.07), ("social", 0.03)]
TIERS = [("standard", 0.80), ("premium", 0.15), ("business", 0.04), ("vip", 0.01)]
GREETINGS = ["", "", "", "Hi,", "Hello,", "Hi there,", "Good morning,", "Dear support team,", "hey", "Hello team,"]
SIGN_OFFS = ["", "", "", "Thanks", "Thank you!", "Regards, Sam", "Cheers", "Kind regards,\nA. Customer",
             "Sent from my iPhone", "thx", "Many thanks in advance."]
CONTEXT = ["My account number is {acct}.", "Reference: case #{case}.", "This is the second time I write about this.",
           "I have been a customer for {years} years.", "I'm travelling in {country} at the moment.",
           "It happened on {day} around {hour}:{minute:02d}.", "The amount was £{amount}.", "Order {case} if that helps.",
           "Please reply soon, it's urgent.", "I already tried restarting the app."]
COUNTRIES = ["Spain", "France", "Portugal", "Germany", "the US", "Japan", "Poland", "Brazil", "Italy", "Greece"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
KEPT_KEYS = ["name", "source", "seed_set", "golden_set", "tiers", "routing", "human_review", "budget", "prices", "taxonomy"]
QUOTE_HEADER = "\n\n-----Original Message-----\nFrom: support@bank.example\nSubject: Re: your request\n\n"


@dataclass(frozen=True)
class Written:
    items: int
    rejected_expected: int
    files: list[str]
    project_file: str
    seconds: float


def _pick(rng: random.Random, weighted: list[tuple[str, float]]) -> str:
    return rng.choices([value for value, _ in weighted], weights=[weight for _, weight in weighted])[0]


def _typo(rng: random.Random, text: str) -> str:
    """One swapped pair of letters: customers type fast."""
    if len(text) < 8:
        return text
    at = rng.randrange(1, len(text) - 2)
    return text[:at] + text[at + 1] + text[at] + text[at + 2 :]


def _context(rng: random.Random) -> str:
    return rng.choice(CONTEXT).format(
        acct=rng.randrange(10**7, 10**8), case=rng.randrange(10**5, 10**6), years=rng.randrange(1, 15),
        country=rng.choice(COUNTRIES), day=rng.choice(DAYS), hour=rng.randrange(24), minute=rng.randrange(60),
        amount=f"{rng.uniform(2, 900):.2f}",
    )


def ticket_text(rng: random.Random, seed_texts: list[str], golden_texts: list[str]) -> str:
    """A ticket of varied length: mostly one request with some context; some terse, some long threads.
    One in a hundred is a golden text verbatim, so the month's golden accuracy can be measured."""
    if golden_texts and rng.random() < 0.01:
        return rng.choice(golden_texts)
    core = rng.choice(seed_texts)
    shape = rng.random()
    if shape < 0.25:  # terse chat message
        text = core.lower().rstrip("?.!")
    else:
        parts = [rng.choice(GREETINGS)]
        parts += [_context(rng) for _ in range(rng.choice([0, 0, 1, 1, 2, 3]))]
        parts.insert(rng.randrange(1, len(parts) + 1), core)
        if rng.random() < 0.15:  # a second, related request in the same ticket
            second = rng.choice(seed_texts)
            parts.append("Also, " + second[0].lower() + second[1:])
        parts.append(rng.choice(SIGN_OFFS))
        text = " ".join(part for part in parts if part)
        if shape > 0.97:  # a reply that quotes the whole earlier thread
            text += QUOTE_HEADER + " ".join(rng.choice(seed_texts) for _ in range(rng.randrange(5, 25)))
    return _typo(rng, text) if rng.random() < 0.2 else text


def bad_every(items: int) -> int:
    return min(BAD_EVERY, max(3, items // 2))


def _rows(rng: random.Random, items: int, month: str, seed_texts: list[str], golden_texts: list[str]) -> Iterator[dict]:
    """`items` good rows, with a few bad ones mixed in at fixed positions: an empty text, an id seen
    before, and a malformed row (written by the format writer), one of each per `bad_every(items)`."""
    every = bad_every(items)
    empty_at, duplicate_at, malformed_at = _bad_offsets(every)
    width = len(str(items))
    for n in range(items):
        yield {
            "ticket_id": f"{month}-{n:0{width}d}",
            "text": ticket_text(rng, seed_texts, golden_texts),
            "channel": _pick(rng, CHANNELS),
            "customer_tier": _pick(rng, TIERS),
        }
        if n % every == empty_at:
            yield {"ticket_id": f"{month}-empty-{n}", "text": "   ", "channel": "email", "customer_tier": "standard"}
        if n % every == duplicate_at:
            yield {"ticket_id": f"{month}-{n // 2:0{width}d}", "text": "resent: " + rng.choice(seed_texts),
                   "channel": "email", "customer_tier": "standard"}
        if n % every == malformed_at:
            yield {"malformed": True, "ticket_id": f"{month}-broken-{n}"}


def expected_rejections(items: int) -> int:
    """How many bad rows _rows mixes into `items` good ones: one per position n < items at each offset."""
    every = bad_every(items)
    return sum((items - 1 - offset) // every + 1 for offset in _bad_offsets(every) if offset < items)


def _bad_offsets(bad_every: int) -> tuple[int, int, int]:
    return bad_every // 3, bad_every // 2, 2 * bad_every // 3


class _CsvWriter:
    def __init__(self, path: Path):
        self.handle = open(path, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.handle)
        self.writer.writerow(COLUMNS)

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            if row.get("malformed"):
                self.writer.writerow([row["ticket_id"], "a row cut short"])  # too few fields
            else:
                self.writer.writerow([row[column] for column in COLUMNS])

    def close(self) -> None:
        self.handle.close()


class _JsonlWriter:
    def __init__(self, path: Path):
        self.handle = open(path, "w", encoding="utf-8")

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            if row.get("malformed"):
                self.handle.write('{"ticket_id": "' + row["ticket_id"] + '", "text": "unterminated\n')
            else:
                self.handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.handle.close()


class _ParquetWriter:
    """Parquet has no malformed row: the bad row is a null id instead."""

    schema = pa.schema([(column, pa.string()) for column in COLUMNS])

    def __init__(self, path: Path):
        self.writer = pq.ParquetWriter(path, self.schema)

    def write(self, rows: list[dict]) -> None:
        clean = [{**row, "ticket_id": None, "text": "no id"} if row.get("malformed") else row for row in rows]
        self.writer.write_table(pa.Table.from_pylist(clean, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


WRITERS = {"csv": _CsvWriter, "jsonl": _JsonlWriter, "parquet": _ParquetWriter}


def _labeled_texts(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def write_project(out: Path, month: str, fmt: str, example: Path = EXAMPLE) -> Path:
    """The example's project file (taxonomy, local tiers, routing, review, budget) reading this inbox; the
    seed and golden sets stay the example's files, by absolute path. Optional features (auto_label, ...)
    are left out: a generated month measures the tiers' path, and needs nothing materialized first."""
    example_spec = yaml.safe_load((example / "project.yaml").read_text(encoding="utf-8"))
    spec = {key: example_spec[key] for key in KEPT_KEYS if key in example_spec}
    spec["name"] = f"scale_{out.name}"
    spec["source"] = {**spec["source"], "path": f"inbox/{{month}}*.{fmt}", "start_month": month}
    for key in ("seed_set", "golden_set"):
        spec[key] = {**spec[key], "path": str((example / spec[key]["path"]).resolve())}
    spec["warehouse"] = "warehouse.duckdb"
    target = out / "project.yaml"
    header = "# Written by benchmarks.generate_inbox: the example's taxonomy and tiers over a generated inbox.\n"
    target.write_text(header + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return target


def generate(items: int, month: str, out: Path, fmt: str = "csv", seed: int = 7, rows_per_file: int = 250_000) -> Written:
    """Write `items` good rows (plus the bad ones) for `month` under out/inbox/, and out/project.yaml."""
    started = time.perf_counter()
    rng = random.Random(seed)
    seed_texts = _labeled_texts(EXAMPLE / "seed.csv")
    golden_texts = _labeled_texts(EXAMPLE / "golden.csv")
    inbox = out / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    for old in inbox.glob(f"{month}*"):
        old.unlink()
    files: list[str] = []
    writer, in_file, chunk = None, 0, []

    def flush() -> None:
        nonlocal writer, in_file
        if writer is None:
            path = inbox / f"{month}-part{len(files):03d}.{fmt}"
            files.append(str(path))
            writer = WRITERS[fmt](path)
        writer.write(chunk)
        in_file += len(chunk)
        chunk.clear()
        if in_file >= rows_per_file:
            writer.close()
            writer, in_file = None, 0

    for row in _rows(rng, items, month, seed_texts, golden_texts):
        chunk.append(row)
        if len(chunk) >= CHUNK:
            flush()
    if chunk:
        flush()
    if writer is not None:
        writer.close()
    project_file = write_project(out, month, fmt)
    return Written(items, expected_rejections(items), files, str(project_file), time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, required=True, help="good rows to write (the bad rows come on top)")
    parser.add_argument("--month", required=True, help="YYYY-MM")
    parser.add_argument("--out", required=True, help="project folder to write (project.yaml, inbox/)")
    parser.add_argument("--format", choices=sorted(WRITERS), default="csv")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rows-per-file", type=int, default=250_000)
    args = parser.parse_args()
    written = generate(args.items, args.month, Path(args.out), args.format, args.seed, args.rows_per_file)
    print(json.dumps(asdict(written), indent=2))


if __name__ == "__main__":
    main()
