"""Builds examples/support_tickets from banking77 (../shared/data/banking77, CC BY 4.0).

The train split becomes a labeled seed set plus three monthly inbox files; the test split is the golden
set, and a third of it is mixed into each month as known-answer items. A few bad rows are written on
purpose so the rejected table has something to show. Deterministic: run it again, get the same files.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "banking77"
TARGET = ROOT / "examples" / "support_tickets"
MONTHS = ["2026-08", "2026-09", "2026-10"]
SEED_SIZE = 3000


def read(name: str) -> list[dict[str, str]]:
    with open(SOURCE / name, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def main() -> None:
    rng = random.Random(77)
    train, test = read("train.csv"), read("test.csv")
    rng.shuffle(train)
    rng.shuffle(test)
    seed, stream = train[:SEED_SIZE], train[SEED_SIZE:]
    (TARGET / "inbox").mkdir(parents=True, exist_ok=True)

    with open(TARGET / "seed.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([row["text"], row["category"]] for row in seed)
    with open(TARGET / "golden.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([row["text"], row["category"]] for row in test)

    for index, month in enumerate(MONTHS):
        rows = stream[index :: len(MONTHS)] + test[index :: len(MONTHS)]
        rng.shuffle(rows)
        path = TARGET / "inbox" / f"{month}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ticket_id", "text", "channel", "customer_tier"])
            for number, row in enumerate(rows, start=1):
                tier = rng.choices(["standard", "premium", "vip"], weights=[80, 17, 3])[0]
                channel = rng.choice(["email", "chat", "phone"])
                writer.writerow([f"T{month.replace('-', '')}-{number:05d}", row["text"], channel, tier])
            # Bad rows on purpose: an empty text, a repeated ticket id, a row with too many fields.
            writer.writerow([f"T{month.replace('-', '')}-90001", "", "email", "standard"])
            writer.writerow([f"T{month.replace('-', '')}-00001", "Duplicate of the first ticket id", "chat", "standard"])
            handle.write(f"T{month.replace('-', '')}-90002,too,many,fields,in,this,row\n")

    names = json.loads((SOURCE / "categories.json").read_text())
    print(f"seed {len(seed)}, golden {len(test)}, stream {len(stream)} over {MONTHS}, {len(names)} labels")


if __name__ == "__main__":
    main()
