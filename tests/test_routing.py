"""The confidence gate on small literal inputs."""

from __future__ import annotations

from labeling_dagster.core import routing
from labeling_dagster.core.labels import Answer
from labeling_dagster.project import MetadataRule, Routing

BANDS = Routing(accept_at=0.9, qa_at=0.75, adjudicate_at=0.5, qa_accept_at=0.8, adjudication_accept_at=0.7,
                always_human_labels=["legal_threat"])


def first(confidence: float, label: str = "billing", *, item_id: str = "t1", has_qa=True, has_adjudication=True,
          bands: Routing = BANDS, forced: str | None = None) -> routing.Route:
    return routing.after_first_pass(bands, item_id, Answer(item_id, label, confidence), None, forced=forced,
                                    has_qa=has_qa, has_adjudication=has_adjudication)


def test_first_pass_bands_follow_the_seed_table() -> None:
    assert first(0.95).next_step == "accept"
    assert first(0.90).next_step == "accept"
    assert first(0.80).next_step == "qa"
    assert first(0.60).next_step == "adjudication"
    assert first(0.40).next_step == "human"


def test_missing_tiers_escalate_to_the_next_one_that_exists() -> None:
    assert first(0.80, has_qa=False).next_step == "adjudication"
    assert first(0.80, has_qa=False, has_adjudication=False).next_step == "human"
    assert first(0.60, has_adjudication=False).next_step == "human"


def test_risky_labels_rules_and_failures() -> None:
    assert first(0.99, "legal_threat").next_step == "human"
    assert first(0.99, forced="always to people: tier = vip") == routing.Route("human", "always to people: tier = vip")
    failed = routing.after_first_pass(BANDS, "t1", None, "malformed JSON", forced=None, has_qa=True, has_adjudication=True)
    assert failed.next_step == "qa" and "malformed JSON" in failed.reason


def test_audit_is_deterministic_and_near_its_rate() -> None:
    audited = [routing.audited(f"item-{n}", 0.1) for n in range(5000)]
    assert audited == [routing.audited(f"item-{n}", 0.1) for n in range(5000)]
    assert 0.08 < sum(audited) / 5000 < 0.12
    bands = BANDS.model_copy(update={"audit_rate": 1.0})
    assert first(0.99, bands=bands) == routing.Route("qa", "random audit sample")
    assert first(0.99, bands=bands, has_qa=False).next_step == "accept"


def test_qa_and_adjudication() -> None:
    earlier = Answer("t1", "billing", 0.8)
    assert routing.after_qa(BANDS, Answer("t1", "billing", 0.85), None, earlier, has_adjudication=True).next_step == "accept"
    disagree = routing.after_qa(BANDS, Answer("t1", "refund", 0.99), None, earlier, has_adjudication=True)
    assert disagree.next_step == "adjudication" and "disagrees" in disagree.reason
    assert routing.after_qa(BANDS, Answer("t1", "billing", 0.7), None, earlier, has_adjudication=False).next_step == "human"
    assert routing.after_adjudication(BANDS, Answer("t1", "billing", 0.7), None).next_step == "accept"
    assert routing.after_adjudication(BANDS, Answer("t1", "billing", 0.69), None).next_step == "human"
    assert routing.after_adjudication(BANDS, None, "timeout").next_step == "human"


def test_metadata_rules() -> None:
    rules = Routing(always_human_when=[MetadataRule(column="tier", equals="vip"),
                                       MetadataRule(column="text", contains="Lawyer"),
                                       MetadataRule(column="channel", one_of=["legal", "press"])])
    assert routing.forced_human(rules, "hello", {"tier": "vip"}) == "always to people: tier = vip"
    assert "contains" in routing.forced_human(rules, "my lawyer will call", {"tier": "standard"})
    assert routing.forced_human(rules, "hi", {"channel": "press"}) is not None
    assert routing.forced_human(rules, "hi", {"tier": "standard", "channel": "email"}) is None
