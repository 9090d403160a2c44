"""SIMULATED provider for the scale benchmark: answers instantly, in process, from a hash of each item's
text, so a run measures the pipeline's orchestration and storage, not a model. Not a labeler: its labels
are arbitrary (though stable: the same text always gets the same label and confidence)."""

from __future__ import annotations

import hashlib
from typing import ClassVar

import dagster as dg

from labeling_dagster.core.labels import Answer, CallOutcome, LabelTask


class InstantProvider(dg.ConfigurableResource):
    """The Provider protocol of core/labels.py for the `local` tiers. The label comes from the item's
    content hash, so every tier gives the same label (QA agrees with the first pass); the confidence comes
    from the hash and the tier's name, uniform on [0, 1), so the routing bands split the month as they
    would with a real model whose confidences spread evenly."""

    provider_name: ClassVar[str] = "local"

    def version(self, task: LabelTask) -> str:
        names = ",".join(task.taxonomy.names)
        return "instant-" + hashlib.sha256(f"{task.tier.name}|{names}".encode()).hexdigest()[:16]

    def label_batch(self, task: LabelTask) -> CallOutcome:
        names = task.taxonomy.names
        answers = []
        for item in task.items:
            label = names[int(item.content_hash[:8], 16) % len(names)]
            spread = hashlib.blake2b(f"{task.tier.name}|{item.content_hash}".encode(), digest_size=4).digest()
            answers.append(
                Answer(item.item_id, label, round(int.from_bytes(spread, "big") / 2**32, 6), "instant (simulated)")
            )
        return CallOutcome(answers=answers)
