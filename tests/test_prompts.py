"""Prompts and answer parsing for the LLM tiers: what a request says, and what a bad answer becomes."""

import json
import math

from labeling_dagster.core.labels import Item, LabelTask, PriorAnswer, content_hash
from labeling_dagster.core.prompts import (
    TokenLogprob,
    answer_schema,
    build_prompt,
    label_distributions,
    parse_answers,
    prompt_version,
)
from labeling_dagster.project import LabelDef, PromptOptions, Taxonomy, TierConfig

TAXONOMY = Taxonomy(
    labels=[
        LabelDef(name="card_arrival", description="the card has not arrived", examples=["Where is my card?", "Card still not here"]),
        LabelDef(name="card_linking", description="linking a card to the app", examples=["How do I link my card?"]),
        LabelDef(name="exchange_rate", description="questions about exchange rates"),
    ]
)


def tier(role="first_pass", **prompt):
    return TierConfig(name=role, role=role, provider="openai", model="gpt-5-nano", prompt=PromptOptions(**prompt))


def task(texts, role="first_pass", prior=None, **prompt):
    items = [Item(f"ticket-{i}", text, content_hash(text)) for i, text in enumerate(texts)]
    return LabelTask(taxonomy=TAXONOMY, tier=tier(role, **prompt), items=items, prior=prior or {})


def test_static_prefix_then_items_with_short_ids():
    prompt = build_prompt(task(["Where is my new card?", 'He said "hi"\nthen left']))
    assert "- card_arrival: the card has not arrived" in prompt.system
    assert "Where is my new card?" not in prompt.system
    rows = [json.loads(line) for line in prompt.user.splitlines()]
    assert rows == [{"id": "1", "text": "Where is my new card?"}, {"id": "2", "text": 'He said "hi"\nthen left'}]
    assert prompt.ids == {"1": "ticket-0", "2": "ticket-1"}


def test_the_prefix_does_not_depend_on_the_items():
    assert build_prompt(task(["a"])).system == build_prompt(task(["b", "c"])).system


def test_few_shot_examples_per_label():
    prompt = build_prompt(task(["x"], few_shot_per_label=1))
    assert '{"text": "Where is my card?", "label": "card_arrival"}' in prompt.system
    assert "Card still not here" not in prompt.system
    assert "Examples:" not in build_prompt(task(["x"])).system


def test_qa_prompt_shows_the_earlier_answer():
    prior = {"ticket-0": [PriorAnswer(tier="first_pass", label="card_linking", confidence=0.7712, reason="mentions card")]}
    prompt = build_prompt(task(["Card never came"], role="qa", prior=prior))
    row = json.loads(prompt.user)
    assert row["earlier_answers"] == [{"tier": "first_pass", "label": "card_linking", "confidence": 0.771, "reason": "mentions card"}]
    assert "earlier, cheaper labeler" in prompt.system


def test_adjudication_prompt_shows_the_disagreement():
    prior = {
        "ticket-0": [
            PriorAnswer(tier="first_pass", label="card_linking", confidence=0.6),
            PriorAnswer(tier="qa", label="card_arrival", confidence=0.8, reason="never arrived"),
        ]
    }
    prompt = build_prompt(task(["Card never came"], role="adjudication", prior=prior))
    labels = [a["label"] for a in json.loads(prompt.user)["earlier_answers"]]
    assert labels == ["card_linking", "card_arrival"]
    assert "disagreed" in prompt.system


def test_schema_is_strict_mode_compatible():
    schema = answer_schema(TAXONOMY, with_reason=True)

    def check(node):
        if node.get("type") == "object":
            assert node["additionalProperties"] is False
            assert set(node["required"]) == set(node["properties"])
            for child in node["properties"].values():
                check(child)
        if node.get("type") == "array":
            check(node["items"])

    check(schema)
    entry = schema["properties"]["items"]["items"]
    assert entry["properties"]["label"]["enum"] == ["card_arrival", "card_linking", "exchange_rate"]
    assert "reason" not in answer_schema(TAXONOMY, with_reason=False)["properties"]["items"]["items"]["properties"]


def test_version_changes_with_the_static_content_only():
    base = prompt_version(TAXONOMY, tier(), {"temperature": 0})
    assert base == prompt_version(TAXONOMY, tier(), {"temperature": 0})
    assert base != prompt_version(TAXONOMY, tier(instructions="Be brief."), {"temperature": 0})
    assert base != prompt_version(TAXONOMY, tier(), {"temperature": 1})
    other = Taxonomy(labels=[*TAXONOMY.labels, LabelDef(name="refund")])
    assert base != prompt_version(other, tier(), {"temperature": 0})


def test_parse_maps_short_ids_back():
    prompt = build_prompt(task(["a", "b"]))
    answer = {"items": [{"id": "2", "label": "exchange_rate", "confidence": 0.8, "reason": "rates"},
                        {"id": "1", "label": "card_arrival", "confidence": 1, "reason": ""}]}
    parsed = parse_answers(json.dumps(answer), prompt, TAXONOMY)
    assert parsed.failures == {}
    assert {(a.item_id, a.label, a.confidence) for a in parsed.answers} == {("ticket-1", "exchange_rate", 0.8), ("ticket-0", "card_arrival", 1.0)}


def test_parse_turns_every_bad_answer_into_a_reason():
    prompt = build_prompt(task(["a", "b", "c", "d", "e"]))
    answer = {"items": [
        {"id": "1", "label": "refund", "confidence": 0.9, "reason": ""},
        {"id": "2", "label": "card_arrival", "confidence": 1.7, "reason": ""},
        {"id": "3", "label": "card_arrival", "confidence": "high", "reason": ""},
        {"id": "4", "label": "card_arrival", "confidence": 0.5, "reason": ""},
        {"id": "4", "label": "card_linking", "confidence": 0.5, "reason": ""},
        {"id": "99", "label": "card_arrival", "confidence": 0.5, "reason": ""},
    ]}
    parsed = parse_answers(answer, prompt, TAXONOMY)
    assert parsed.answers == []
    assert parsed.failures["ticket-0"] == "label 'refund' is not in the taxonomy"
    assert "1.7" in parsed.failures["ticket-1"] and "[0, 1]" in parsed.failures["ticket-1"]
    assert "'high'" in parsed.failures["ticket-2"]
    assert parsed.failures["ticket-3"] == "answered twice in one response"
    assert parsed.failures["ticket-4"].startswith("no answer for this item")
    assert "'99'" in parsed.failures["ticket-4"]


def test_parse_malformed_json_fails_every_item():
    prompt = build_prompt(task(["a", "b"]))
    parsed = parse_answers('{"items": [{"id": "1", "label": "card_arr', prompt, TAXONOMY)
    assert parsed.answers == []
    assert set(parsed.failures) == {"ticket-0", "ticket-1"}
    assert parsed.failures["ticket-0"].startswith("malformed JSON")
    assert parse_answers({"labels": []}, prompt, TAXONOMY).failures["ticket-1"] == 'the response has no "items" list'


def _tokens(pieces):
    return [TokenLogprob(text, lp, tuple(top)) for text, lp, top in pieces]


def test_label_distribution_from_token_logprobs():
    # the label card_arrival is spelled "card" + "_arrival"; at "card" the model also considered
    # "exchange" (-> exchange_rate); at "_arrival" it considered "_linking" (-> card_linking)
    content = '{"items":[{"id":"1","label":"card_arrival","confidence":0.9}]}'
    pieces = [
        ('{"items":[{"id":"1","label":"', 0.0, []),
        ("card", math.log(0.8), [("card", math.log(0.8)), ("exchange", math.log(0.15)), ("zzz", math.log(0.05))]),
        ("_arrival", math.log(0.75), [("_arrival", math.log(0.75)), ("_linking", math.log(0.25))]),
        ('","confidence":0.9}]}', 0.0, []),
    ]
    prompt = build_prompt(task(["my card"]))
    dist = label_distributions(content, _tokens(pieces), TAXONOMY)["1"]
    # masses: card_arrival 0.8*0.75=0.6, exchange_rate 0.15, card_linking 0.8*0.25=0.2; "zzz" starts no label
    assert math.isclose(dist["card_arrival"], 0.6 / 0.95)
    assert math.isclose(dist["exchange_rate"], 0.15 / 0.95)
    assert math.isclose(dist["card_linking"], 0.2 / 0.95)
    parsed = parse_answers(content, prompt, TAXONOMY, {"1": dist})
    answer = parsed.answers[0]
    assert math.isclose(answer.confidence, 0.6 / 0.95)
    assert [name for name, _ in answer.alternatives] == ["card_linking", "exchange_rate"]


def test_label_distribution_needs_tokens_that_spell_the_content():
    content = '{"items":[{"id":"1","label":"card_arrival","confidence":0.9}]}'
    assert label_distributions(content, _tokens([("{", 0.0, [])]), TAXONOMY) == {}


NONE_TAXONOMY = Taxonomy(labels=TAXONOMY.labels, none_label="none_of_these")


def test_the_none_of_these_answer_is_listed_enumerated_and_parsed():
    items = [Item("ticket-0", "Do you sell gift vouchers?", content_hash("Do you sell gift vouchers?"))]
    prompt = build_prompt(LabelTask(taxonomy=NONE_TAXONOMY, tier=tier(), items=items))
    assert "- exchange_rate: questions about exchange rates\n- none_of_these: none of the labels above fits" in prompt.system
    assert "Answer none_of_these only when no other label fits." in prompt.system
    enum = prompt.schema["properties"]["items"]["items"]["properties"]["label"]["enum"]
    assert enum == ["card_arrival", "card_linking", "exchange_rate", "none_of_these"]
    answer = {"items": [{"id": "1", "label": "none_of_these", "confidence": 0.8, "reason": "vouchers"}]}
    assert [a.label for a in parse_answers(answer, prompt, NONE_TAXONOMY).answers] == ["none_of_these"]
    assert parse_answers(answer, prompt, TAXONOMY).failures == {"ticket-0": "label 'none_of_these' is not in the taxonomy"}


def test_only_a_taxonomy_with_a_none_label_changes_its_prompts():
    # the versions the prompts had before the none label existed: the answers stored under them stay reusable
    assert prompt_version(TAXONOMY, tier(), {}) == "pbe372081e19f48b"
    assert prompt_version(TAXONOMY, tier("qa", few_shot_per_label=1), {"temperature": 0}) == "p1c528fed7c05876"
    assert "none of the labels" not in build_prompt(task(["x"])).system
    assert prompt_version(TAXONOMY, tier(), {}) != prompt_version(NONE_TAXONOMY, tier(), {})


def test_label_distribution_covers_the_none_label():
    content = '{"items":[{"id":"1","label":"card_arrival","confidence":0.9}]}'
    pieces = [
        ('{"items":[{"id":"1","label":"', 0.0, []),
        ("card_arrival", math.log(0.7), [("card_arrival", math.log(0.7)), ("none", math.log(0.3))]),
        ('","confidence":0.9}]}', 0.0, []),
    ]
    dist = label_distributions(content, _tokens(pieces), NONE_TAXONOMY)["1"]
    assert math.isclose(dist["none_of_these"], 0.3) and math.isclose(dist["card_arrival"], 0.7)
    assert "none_of_these" not in label_distributions(content, _tokens(pieces), TAXONOMY)["1"]
