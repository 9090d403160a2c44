"""The threshold recommender on golden sets where the right bands are known by construction, and
against a brute-force search through core/routing.py on a random one."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import yaml

from labeling_dagster.core.recommend import (
    GoldenAnswers,
    TierCosts,
    evaluate_bands,
    recommend_bands,
    tier_costs,
)
from labeling_dagster.project import Project, Routing

COSTS = TierCosts(first_pass_usd=0.0001, qa_usd=0.001, adjudication_usd=0.01, human_usd=0.1)


def known_golden_set() -> pd.DataFrame:
    """21 golden items (gold label `a`) built so that one set of bands is the cheapest at 100%:

    - 8 items at first-pass confidence 0.92-0.99, all right: accept them (accept_at in (0.88, 0.92]);
    - 6 items at 0.72-0.88, half right: QA (0.001) agrees with the right ones and corrects the wrong
      ones, which then go to adjudication (right at 0.95). The lowest (0.72) and the highest (0.88)
      are right and wrong, so neither QA nor accepting can move: qa_at in (0.68, 0.72];
    - 5 items at 0.55-0.68, all wrong, and QA agrees with them (so QA must not see them); the
      adjudicator is right at 0.9 on four and wrong at 0.85 on the one in the middle (0.62): the
      adjudication band is [0.55, 0.72) and adjudication_accept_at in (0.85, 0.9];
    - 2 items at 0.3 and 0.45, wrong everywhere (adjudicator 0.85): straight to people, adjudicate_at
      in (0.45, 0.55].
    """
    rows = []

    def add(confidence: float, first_right: bool, qa_agrees: bool, adjudication: tuple[bool, float]) -> None:
        first = "a" if first_right else "b"
        rows.append(
            {
                "item_id": f"g{len(rows):02d}",
                "gold": "a",
                "first_pass_label": first,
                "first_pass_confidence": confidence,
                "qa_label": first if qa_agrees else ("a" if first != "a" else "c"),
                "qa_confidence": 0.9,
                "adjudication_label": "a" if adjudication[0] else "b",
                "adjudication_confidence": adjudication[1],
            }
        )

    for confidence in (0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99):
        add(confidence, True, True, (True, 0.95))
    for confidence, right in ((0.72, True), (0.75, False), (0.78, True), (0.81, False), (0.84, True), (0.88, False)):
        add(confidence, right, right, (True, 0.95))
    for confidence, adjudicator_right in ((0.55, True), (0.6, True), (0.62, False), (0.65, True), (0.68, True)):
        add(confidence, False, True, (adjudicator_right, 0.9 if adjudicator_right else 0.85))
    for confidence in (0.3, 0.45):
        add(confidence, False, True, (False, 0.85))
    return pd.DataFrame(rows)


# Hand count for the known bands: every item gets a first pass, QA sees 6, adjudication 3 + 5, and
# people 1 + 2; first pass settles 8, QA 3, adjudication 3 + 4.
KNOWN_USD = (21 * 0.0001 + 6 * 0.001 + 8 * 0.01 + 3 * 0.1) / 21


def test_known_bands_reach_the_target_at_the_least_cost() -> None:
    golden = GoldenAnswers.from_frame(known_golden_set())
    result = recommend_bands(golden, COSTS, target_accuracy=1.0, items_per_month=1_000_000)
    assert result.reached
    bands = result.outcome.bands()
    assert 0.88 < bands["accept_at"] <= 0.92 and 0.68 < bands["qa_at"] <= 0.72 and 0.45 < bands["adjudicate_at"] <= 0.55
    assert 0.85 < bands["adjudication_accept_at"] <= 0.9 and bands["qa_accept_at"] <= 0.9
    # Within each of those ranges the current (default) value is kept where it lies in it, else the
    # shortest decimal: 0.9 / 0.7 / 0.5, QA accept 0.8 (the default), adjudication accept 0.9.
    assert bands == {"accept_at": 0.9, "qa_at": 0.7, "adjudicate_at": 0.5, "qa_accept_at": 0.8, "adjudication_accept_at": 0.9}
    outcome = result.outcome
    assert outcome.expected_accuracy == 1.0 and outcome.model_accuracy == 1.0
    assert outcome.usd_per_item == pytest.approx(KNOWN_USD)
    assert outcome.usd_per_month == pytest.approx(KNOWN_USD * 1_000_000)
    assert outcome.settled == pytest.approx({"first_pass": 8 / 21, "qa": 3 / 21, "adjudication": 7 / 21, "human": 3 / 21})
    assert outcome.seen == pytest.approx({"first_pass": 1.0, "qa": 6 / 21, "adjudication": 8 / 21, "human": 3 / 21})
    # The default bands (0.9 / 0.75 / 0.5, adjudication accept 0.7) send the 0.72 item to adjudication
    # and accept the adjudicator's wrong 0.85 answer: QA sees 5, adjudication 1 + 3 + 5, people 2.
    assert result.current.expected_accuracy == pytest.approx(20 / 21)
    assert result.current.usd_per_item == pytest.approx((21 * 0.0001 + 5 * 0.001 + 9 * 0.01 + 2 * 0.1) / 21)


def test_yaml_snippet_is_a_routing_block_that_keeps_the_rules() -> None:
    golden = GoldenAnswers.from_frame(known_golden_set())
    current = Routing(always_human_labels=["c"], audit_rate=0.0, qa_accept_at=0.85)
    result = recommend_bands(golden, COSTS, target_accuracy=1.0, routing=current, items_per_month=1_000_000)
    snippet = result.to_yaml_snippet()
    assert snippet.startswith("# Recommended bands for target accuracy 1, from 21 golden items")
    assert "$18,480.95 a month for 1,000,000 items" in snippet
    parsed = Routing.model_validate(yaml.safe_load(snippet)["routing"])
    assert parsed.always_human_labels == ["c"]
    assert {key: getattr(parsed, key) for key in result.outcome.bands()} == result.outcome.bands()
    # QA accept 0.85 lies in the range the golden set cannot tell apart, so it stays.
    assert parsed.qa_accept_at == 0.85


def test_unreachable_target_says_so_and_gives_the_closest_bands() -> None:
    golden = GoldenAnswers.from_frame(known_golden_set())
    capped = recommend_bands(golden, COSTS, target_accuracy=1.0, max_human_share=0.10)
    assert not capped.reached
    # With people capped at 10% (2 of 21 items) one wrong label must be accepted: 20/21 at best.
    assert capped.outcome.expected_accuracy == pytest.approx(20 / 21)
    assert capped.outcome.settled["human"] <= 0.10
    assert capped.reason.startswith("No bands reach 1 with at most 10% to people: the best reach 0.952")
    assert capped.to_yaml_snippet().startswith("# NOT reaching the goal; closest bands")
    # People who are right half the time cap what any bands can reach: (18 + 3 x 0.5) / 21.
    sloppy = recommend_bands(golden, COSTS, target_accuracy=0.99, human_accuracy=0.5)
    assert not sloppy.reached and sloppy.outcome.expected_accuracy == pytest.approx(19.5 / 21)


def test_budget_mode_buys_the_best_accuracy_it_can() -> None:
    golden = GoldenAnswers.from_frame(known_golden_set())
    month = 1_000_000
    enough = recommend_bands(golden, COSTS, monthly_budget_usd=KNOWN_USD * month + 0.01, items_per_month=month)
    assert enough.reached and enough.outcome.expected_accuracy == 1.0
    assert enough.outcome.usd_per_item == pytest.approx(KNOWN_USD)
    tight = recommend_bands(golden, COSTS, monthly_budget_usd=18_000, items_per_month=month)
    assert tight.reached and tight.outcome.usd_per_month <= 18_000
    # $18,000 cannot pay for the third item to people (0.1 x 1M / 21 = $4,762 more than the 0.62 item
    # accepted from adjudication), so exactly one label is wrong.
    assert tight.outcome.expected_accuracy == pytest.approx(20 / 21)
    broke = recommend_bands(golden, COSTS, monthly_budget_usd=50, items_per_month=month)
    assert not broke.reached
    assert broke.outcome.usd_per_month == pytest.approx(100.0)  # the first pass alone: 0.0001 x 1M
    assert broke.reason.startswith("No bands fit $50.00 a month: the cheapest cost $0.000100 per item")


def test_arguments_are_checked() -> None:
    golden = GoldenAnswers.from_frame(known_golden_set())
    with pytest.raises(ValueError, match="exactly one of target_accuracy"):
        recommend_bands(golden, COSTS)
    with pytest.raises(ValueError, match="budget mode needs"):
        recommend_bands(golden, COSTS, monthly_budget_usd=100)
    no_qa = known_golden_set().drop(columns=["qa_label", "qa_confidence"])
    with pytest.raises(ValueError, match="project has a qa tier but the frame has no qa_label column"):
        recommend_bands(GoldenAnswers.from_frame(no_qa), COSTS, target_accuracy=0.9)
    twice = pd.concat([known_golden_set().head(2), known_golden_set().head(1)])
    with pytest.raises(ValueError, match="item 'g00' appears twice"):
        GoldenAnswers.from_frame(twice)
    bad = known_golden_set()
    bad.loc[3, "qa_confidence"] = 1.5
    with pytest.raises(ValueError, match="item 'g03': qa_confidence is 1.5"):
        GoldenAnswers.from_frame(bad)


def random_golden_set(seed: int, n: int = 10) -> pd.DataFrame:
    """Random answers with every routing case in it: a risky label (`r`), an item forced to people,
    tiers that give no answer, and confidences from a few values so that ties occur."""
    rng = np.random.default_rng(seed)
    labels = ["a", "b", "r"]
    gold = rng.choice(["a", "b"], n)

    def answers(right_share: float) -> list[str | None]:
        out: list[str | None] = [g if rng.random() < right_share else str(rng.choice(labels)) for g in gold]
        out[int(rng.integers(n))] = None
        return out

    return pd.DataFrame(
        {
            "item_id": [f"r{seed}-{k}" for k in range(n)],
            "gold": gold,
            "first_pass_label": answers(0.6),
            "first_pass_confidence": rng.choice([0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], n),
            "qa_label": answers(0.8),
            "qa_confidence": rng.choice([0.6, 0.8, 0.95], n),
            "adjudication_label": answers(0.9),
            "adjudication_confidence": rng.choice([0.6, 0.8, 0.95], n),
            "forced_human": [k == 0 for k in range(n)],
        }
    )


def brute_force(golden: GoldenAnswers, costs: TierCosts, routing: Routing, frame: pd.DataFrame) -> list:
    """Every split of the golden confidences, each routed item by item through core/routing.py."""

    def splits(column: str) -> list[float]:
        values = sorted(set(frame[column].dropna()))
        return [0.0] + [(lo + hi) / 2 for lo, hi in zip(values, values[1:])] + [min(values[-1] + 0.01, 1.0)]

    outcomes = []
    first = splits("first_pass_confidence")
    for accept, qa, adjudicate in itertools.product(first, repeat=3):
        if not adjudicate <= qa <= accept:
            continue
        for qa_accept, adjudication_accept in itertools.product(splits("qa_confidence"), splits("adjudication_confidence")):
            bands = routing.model_copy(update={"accept_at": accept, "qa_at": qa, "adjudicate_at": adjudicate,
                                               "qa_accept_at": qa_accept, "adjudication_accept_at": adjudication_accept})
            outcomes.append(evaluate_bands(golden, costs, bands))
    return outcomes


@pytest.mark.parametrize("seed", [11, 12, 43, 44])
def test_search_matches_brute_force_through_the_routing_functions(seed: int) -> None:
    frame = random_golden_set(seed)
    golden = GoldenAnswers.from_frame(frame)
    routing = Routing(always_human_labels=["r"], audit_rate=0.3)
    every = brute_force(golden, COSTS, routing, frame)
    for target in (0.7, 0.9):
        result = recommend_bands(golden, COSTS, target_accuracy=target, routing=routing)
        reaching = [o for o in every if o.expected_accuracy >= target - 1e-12]
        assert result.reached == bool(reaching)
        if reaching:
            assert result.outcome.usd_per_item == pytest.approx(min(o.usd_per_item for o in reaching), abs=1e-12)
            assert result.outcome.expected_accuracy >= target - 1e-12
        else:
            assert result.outcome.expected_accuracy == pytest.approx(max(o.expected_accuracy for o in every))
    cheapest = min(o.usd_per_item for o in every)
    budget = (cheapest + 0.02) * 1000
    result = recommend_bands(golden, COSTS, monthly_budget_usd=budget, items_per_month=1000, routing=routing)
    affordable = [o for o in every if o.usd_per_item * 1000 <= budget + 1e-9]
    assert result.reached and result.outcome.usd_per_month <= budget + 1e-9
    assert result.outcome.expected_accuracy == pytest.approx(max(o.expected_accuracy for o in affordable))


def test_without_qa_or_adjudication_tiers_their_bands_stay_empty() -> None:
    frame = known_golden_set().drop(columns=["qa_label", "qa_confidence", "adjudication_label", "adjudication_confidence"])
    costs = TierCosts(first_pass_usd=0.0001, human_usd=0.1)
    result = recommend_bands(GoldenAnswers.from_frame(frame), costs, target_accuracy=1.0)
    bands = result.outcome.bands()
    # Only the 8 right first-pass answers (>= 0.92) can be accepted; everything else goes to people.
    assert bands["accept_at"] == bands["qa_at"] == bands["adjudicate_at"] == 0.9
    assert result.outcome.settled == pytest.approx({"first_pass": 8 / 21, "qa": 0, "adjudication": 0, "human": 13 / 21})
    assert result.outcome.usd_per_item == pytest.approx(0.0001 + 13 / 21 * 0.1)


def test_tier_costs_price_the_project_tiers() -> None:
    project = Project.model_validate(
        {
            "name": "costs",
            "taxonomy": {"labels": [{"name": "a"}, {"name": "b"}]},
            "source": {"path": "inbox/{month}.csv", "start_month": "2026-08"},
            "tiers": [
                {"name": "nano", "role": "first_pass", "provider": "openai", "model": "gpt-5-nano"},
                {"name": "haiku", "role": "qa", "provider": "anthropic", "model": "claude-haiku-4-5"},
                {"name": "premium", "role": "adjudication", "provider": "openai", "model": "gpt-5.2"},
            ],
            "human_review": {"hourly_rate_usd": 25, "reviews_per_hour": 300, "annotators_per_item": 2},
            "budget": {"monthly_usd": 100},
        }
    )
    # The seed's routed pipeline sizes: 700/40 on GPT-5 nano is $51 per 1M items, Haiku 1200/120 is
    # $0.0018 an item, GPT-5.2 1600/200 is $0.0056; people $25/h at 300/h, two annotators.
    costs = tier_costs(project, {"first_pass": (700, 40), "qa": (1200, 120), "adjudication": (1600, 200)})
    assert costs.first_pass_usd == pytest.approx(51 / 1_000_000)
    assert costs.qa_usd == pytest.approx(0.0018) and costs.adjudication_usd == pytest.approx(0.0056)
    assert costs.human_usd == pytest.approx(2 * 25 / 300)
    with pytest.raises(ValueError, match="no \\(input, output\\) tokens per item for tier 'premium'"):
        tier_costs(project, {"first_pass": (700, 40), "qa": (1200, 120)})
    # Batch API: half of each; 600 of the 700 nano input tokens from the cache ($0.005 per 1M).
    batched = tier_costs(project, {"first_pass": (700, 40, 600), "qa": (1200, 120), "adjudication": (1600, 200)},
                         batch=True)
    assert batched.first_pass_usd == pytest.approx((100 * 0.05 + 600 * 0.005 + 40 * 0.40) / 1_000_000 / 2)
    local = project.model_copy(update={"tiers": [project.tiers[0].model_copy(update={"provider": "local", "model": "words"})]})
    assert tier_costs(local, {}).first_pass_usd == 0.0


def test_held_out_half_measures_bands_chosen_on_the_other_half() -> None:
    frame = random_golden_set(7, n=240)
    golden = GoldenAnswers.from_frame(frame)
    result = recommend_bands(golden, COSTS, target_accuracy=0.9, items_per_month=1000)
    check = result.held_out
    assert check is not None and check.chosen_on + check.measured_on == 240 and min(check.chosen_on, check.measured_on) > 90
    # The same thing by hand: search one half, route the other half item by item with those bands.
    choose_on, measure_on = golden.halves()
    assert set(choose_on.item_id) | set(measure_on.item_id) == set(golden.item_id) and not set(choose_on.item_id) & set(measure_on.item_id)
    half = recommend_bands(choose_on, COSTS, target_accuracy=0.9, items_per_month=1000, check_held_out=False)
    assert half.held_out is None
    measured = evaluate_bands(measure_on, COSTS, half.outcome.routing, items_per_month=1000)
    assert check.accuracy_where_chosen == pytest.approx(half.outcome.expected_accuracy)
    assert check.accuracy_held_out == pytest.approx(measured.expected_accuracy)
    assert "# held out: bands chosen on" in result.to_yaml_snippet()
    assert result.as_json()["held_out"]["measured_on"] == check.measured_on
    # Too few golden items to halve: no check, said by its absence.
    assert recommend_bands(GoldenAnswers.from_frame(known_golden_set()), COSTS, target_accuracy=1.0).held_out is None
