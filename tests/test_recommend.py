"""The threshold recommender on golden sets where the right bands are known by construction, against
a brute-force search through core/routing.py on a random one, and under the certified gate: bands
whose accepting stages cannot be certified on the golden path are never recommended."""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from labeling_dagster.cli import main
from labeling_dagster.core.gate import TierAnswers, certify_golden_path
from labeling_dagster.core.recommend import (
    GoldenAnswers,
    TierCosts,
    certify_bands,
    evaluate_bands,
    recommend_bands,
    tier_costs,
)
from labeling_dagster.project import Project, Routing
from labeling_dagster.resources.warehouse import ensure_tables
from tests.conftest import write_tiny_project

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
    assert outcome.expected_accuracy == 1.0 and outcome.accepted_accuracy == 1.0
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
    assert capped.reason.startswith(
        "No bands reach 1 with at most 10% to people: the best reach accuracy 0.952 counting people's labels right")
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


def test_the_months_bill_counts_only_the_items_that_reach_the_tiers() -> None:
    # 21 golden items reach the tiers and 21 more are settled by the auto-labeler: half a month's
    # items reach a paid tier, so the month's bill is the per-item cost times half the month.
    frame = known_golden_set()
    auto = frame.assign(item_id=frame["item_id"] + "-auto", auto_accepted=True)
    golden = GoldenAnswers.from_frame(pd.concat([frame.assign(auto_accepted=False), auto], ignore_index=True))
    assert len(golden) == 21 and golden.auto_accepted_items == 21
    chosen = recommend_bands(golden, COSTS, target_accuracy=1.0, items_per_month=1_000_000).outcome
    assert chosen.items_per_month == 500_000
    assert chosen.usd_per_month == pytest.approx(KNOWN_USD * 500_000)


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
    # The held-out figure is the first line under the title, the in-sample one the second.
    lines = result.to_yaml_snippet().splitlines()
    assert lines[1].startswith(f"# held out: bands chosen the same way on {check.chosen_on} golden items")
    assert f"accuracy {check.accuracy_held_out:.3f} counting people's labels right" in lines[1]
    assert lines[2].startswith("# in-sample (chosen and measured on the same 240 golden items)")
    assert result.as_json()["held_out"]["measured_on"] == check.measured_on
    assert result.as_json()["held_out"]["held_out"]["expected_accuracy_people_counted_right"] == check.accuracy_held_out
    # Too few golden items to halve: no check, and the snippet says why where the figure would be.
    small = recommend_bands(GoldenAnswers.from_frame(known_golden_set()), COSTS, target_accuracy=1.0)
    assert small.held_out is None
    assert small.to_yaml_snippet().splitlines()[1] == (
        "# held out: none (21 golden items; 100 are needed to choose on one half and measure on the other)")


# --------------------------------------------------------------------------- the certified gate

ALL_TIERS = ("first_pass", "qa", "adjudication")
TWO_TIERS = TierCosts(first_pass_usd=0.0001, qa_usd=0.001, human_usd=0.1)


def certified_project(*, gate: str = "certified", roles: tuple[str, ...] = ("first_pass", "qa"), **quality) -> Project:
    """Tiers priced by the TierCosts above, raw confidence kept as it is (calibration none) so that the
    figures can be counted by hand. A certificate at 90% with delta 0.1 needs 22 accepted items."""
    return Project.model_validate(
        {
            "name": "certified",
            "taxonomy": {"labels": [{"name": name} for name in ("a", "b", "c", "r")]},
            "source": {"path": "inbox/{month}.csv", "start_month": "2026-08"},
            "tiers": [{"name": role, "role": role, "provider": "openai", "model": "gpt-5-nano"} for role in roles],
            "human_review": {"hourly_rate_usd": 30, "reviews_per_hour": 300},
            "budget": {"monthly_usd": 100},
            "quality": {"gate": gate, "target_accuracy": 0.9, "delta": 0.1, "min_certify_items": 10,
                        "calibration": "none", "audit_share": 0.0, **quality},
        }
    )


def with_raw(frame: pd.DataFrame) -> pd.DataFrame:
    """The golden frame with each tier's raw confidence (equal to the calibrated one: calibration none)."""
    return frame.assign(**{f"{role}_raw_confidence": frame[f"{role}_confidence"] for role in ALL_TIERS
                           if f"{role}_confidence" in frame.columns})


def uncertifiable_first_pass() -> pd.DataFrame:
    """65 golden items (gold `a`) whose cheapest bands, on the bands alone, accept a first-pass slice
    too small to certify:

    - 15 at first-pass 0.99, all right: accepting them is cheapest, but 15 items cannot certify 90%
      at delta 0.1 (22 are needed), and a band low enough to take more takes the items below;
    - 40 at 0.7, half right; QA (0.95) gives the gold label, so it agrees with the right half;
    - 10 at 0.3, wrong; QA answers c.
    With the first pass closed QA sees the 55 upper items and agrees on 35, all right: certified.
    """
    rows = []
    for first, first_label, qa_label, count in ((0.99, "a", "a", 15), (0.7, "a", "a", 20), (0.7, "b", "a", 20),
                                                (0.3, "b", "c", 10)):
        for _ in range(count):
            rows.append({"item_id": f"u{len(rows):02d}", "gold": "a", "first_pass_label": first_label,
                         "first_pass_confidence": first, "qa_label": qa_label, "qa_confidence": 0.95})
    return with_raw(pd.DataFrame(rows))


def test_a_first_pass_that_cannot_be_certified_is_not_recommended_even_if_cheaper() -> None:
    golden = GoldenAnswers.from_frame(uncertifiable_first_pass())
    # quality.gate bands keeps the search on the bands alone: the first pass accepts its 15 items ...
    by_bands = recommend_bands(golden, TWO_TIERS, target_accuracy=1.0, project=certified_project(gate="bands"))
    assert by_bands.gate == "bands" and by_bands.outcome.certification is None
    assert by_bands.outcome.bands() == recommend_bands(golden, TWO_TIERS, target_accuracy=1.0).outcome.bands()
    assert by_bands.outcome.settled["first_pass"] == pytest.approx(15 / 65)
    assert by_bands.outcome.usd_per_item == pytest.approx((65 * 0.0001 + 40 * 0.001 + 30 * 0.1) / 65)
    # ... which the golden path cannot certify.
    assert not certify_bands(golden, certified_project(), by_bands.outcome.routing).certificates["first_pass"].passed

    result = recommend_bands(golden, TWO_TIERS, target_accuracy=1.0, project=certified_project())
    outcome = result.outcome
    assert result.reached and result.gate == "certified" and result.verified >= 2
    # The first pass's accept band is closed; QA sees the 55 upper items, accepts the 35 it agrees on.
    assert outcome.bands()["accept_at"] == 1.0 and 0.3 < outcome.bands()["qa_at"] <= 0.7
    assert outcome.settled == pytest.approx({"first_pass": 0, "qa": 35 / 65, "adjudication": 0, "human": 30 / 65})
    assert outcome.usd_per_item == pytest.approx((65 * 0.0001 + 55 * 0.001 + 30 * 0.1) / 65)
    assert outcome.usd_per_item > by_bands.outcome.usd_per_item
    certificates = outcome.certification.certificates
    assert not certificates["first_pass"].passed
    assert certificates["qa"].passed and (certificates["qa"].accepted, certificates["qa"].correct) == (35, 35)
    # Every stage that accepts items holds a passed certificate.
    assert [role for role in ALL_TIERS if outcome.settled[role] > 0] == ["qa"]
    assert outcome.expected_accuracy == 1.0 and outcome.accepted_accuracy == 1.0
    assert result.reason.startswith("Cheapest certified bands reaching 1: accuracy 1.000 counting people's labels "
                                    "right, accepted labels 1.000, 46.2% to people")
    assert "went through the golden run's certification" in result.reason and "(at most 48 do)" in result.reason
    # The current bands are routed with their own certificates too.
    assert result.current.certification is not None and result.current.settled["first_pass"] == 0


def test_a_stage_that_cannot_be_certified_is_closed_when_its_candidates_run_out() -> None:
    golden = GoldenAnswers.from_frame(uncertifiable_first_pass())
    # One candidate a round: the cheapest opens the first pass, which cannot be certified, so the
    # next round keeps accept_at at 1.0, and its best candidate passes.
    result = recommend_bands(golden, TWO_TIERS, target_accuracy=1.0, project=certified_project(), max_verified=3)
    assert result.reached and result.closed == ("first_pass",) and result.verified == 2
    assert result.outcome.bands()["accept_at"] == 1.0 and result.outcome.certification.certificates["qa"].passed
    assert "first_pass could not be certified, so the search closed its accept band (1.0)" in result.reason
    with pytest.raises(ValueError, match="max_verified must be at least 3 \\(a round per tier, plus one\\)"):
        recommend_bands(golden, TWO_TIERS, target_accuracy=1.0, project=certified_project(), max_verified=2)
    # Nothing that can be certified: every accept band closed, every item to people.
    tiny = GoldenAnswers.from_frame(uncertifiable_first_pass().head(15))
    alone = recommend_bands(tiny, TWO_TIERS, target_accuracy=1.0, project=certified_project(), max_verified=3)
    assert alone.reached and alone.outcome.settled["human"] == 1.0
    assert alone.outcome.bands()["accept_at"] == alone.outcome.bands()["qa_accept_at"] == 1.0


def test_certified_routing_follows_the_golden_path_and_audits_what_it_accepts() -> None:
    golden = GoldenAnswers.from_frame(with_raw(random_golden_set(7, n=240)))
    project = certified_project(roles=ALL_TIERS, target_accuracy=0.8)
    routing = Routing(always_human_labels=["r"], accept_at=0.7, qa_at=0.6, adjudicate_at=0.3, qa_accept_at=0.6,
                      adjudication_accept_at=0.6)
    certification = certify_bands(golden, project, routing)
    # At 80% the first pass is certified only from 0.95, stricter than its band: it accepts less.
    first_pass = certification.certificates["first_pass"]
    assert first_pass.passed and first_pass.threshold == 0.95 > routing.accept_at
    outcome = evaluate_bands(golden, COSTS, routing, certification=certification)
    assert outcome.settled["first_pass"] == pytest.approx(first_pass.accepted / len(golden))
    assert outcome.settled["first_pass"] < evaluate_bands(golden, COSTS, routing).settled["first_pass"]
    # Item by item, the same routes as the golden run's own path certification.
    path = certify_golden_path(
        project.model_copy(update={"routing": routing}), list(golden.gold),
        {role: TierAnswers(project.tier(role), list(golden.labels(role)), list(golden.raw[role])) for role in ALL_TIERS},
        auto_accepted=[False] * len(golden), forced=list(golden.forced_human), item_ids=list(golden.item_id),
    )
    shares = {layer: path.outcome.count(layer) / len(golden) for layer in ("first_pass", "qa", "adjudication", "human")}
    assert outcome.settled == pytest.approx(shares)
    # quality.audit_share: that share of what the stages accept goes to people instead, as in production.
    audited = evaluate_bands(golden, COSTS, routing, certification=replace_quality(certification, audit_share=0.5))
    accepted = 1 - outcome.settled["human"]
    moved = audited.settled["human"] - outcome.settled["human"]
    assert 0.3 * accepted < moved < 0.7 * accepted
    assert audited.usd_per_item > outcome.usd_per_item


def replace_quality(certification, **quality):
    project = certification.project
    return type(certification)(project.model_copy(update={"quality": project.quality.model_copy(update=quality)}),
                               certification.calibrators, certification.certificates)


def test_certified_held_out_routes_the_other_half_with_the_chosen_halfs_certificates() -> None:
    golden = GoldenAnswers.from_frame(with_raw(random_golden_set(7, n=240)))
    project = certified_project(roles=ALL_TIERS, target_accuracy=0.8)
    routing = Routing(always_human_labels=["r"])
    result = recommend_bands(golden, COSTS, target_accuracy=0.9, routing=routing, project=project, items_per_month=1000)
    check = result.held_out
    assert check is not None and result.gate == "certified"
    choose_on, measure_on = golden.halves()
    half = recommend_bands(choose_on, COSTS, target_accuracy=0.9, routing=routing, project=project,
                           items_per_month=1000, check_held_out=False)
    # The other half is read through the chosen half's calibrators and routed by its certificates.
    measured = evaluate_bands(measure_on, COSTS, half.outcome.routing, certification=half.outcome.certification)
    assert check.accuracy_where_chosen == pytest.approx(half.outcome.expected_accuracy)
    assert check.accuracy_held_out == pytest.approx(measured.expected_accuracy)
    assert check.accepted_accuracy_held_out == pytest.approx(measured.accepted_accuracy)
    assert check.usd_per_item_held_out == pytest.approx(measured.usd_per_item)
    assert all(c.passed for role, c in result.outcome.certification.certificates.items()
               if result.outcome.settled[role] > 0)


def test_figures_say_that_people_are_counted_right() -> None:
    golden = GoldenAnswers.from_frame(uncertifiable_first_pass())
    result = recommend_bands(golden, TWO_TIERS, target_accuracy=1.0, project=certified_project(), items_per_month=1000)
    shown = result.as_json()["recommended"]
    assert "expected_accuracy" not in shown and "model_accuracy" not in shown
    assert shown["expected_accuracy_people_counted_right"] == 1.0 and shown["accepted_accuracy"] == 1.0
    assert shown["gate"] == "certified" and shown["certificates"]["qa"]["passed"]
    snippet = result.to_yaml_snippet()
    assert snippet.startswith("# Recommended certified bands for target accuracy 1, from 65 golden items:")
    assert "expected accuracy" not in snippet
    assert "accuracy 1.000 counting people's labels right, accepted labels 1.000" in snippet
    assert "# certified on the golden path: first_pass accepts nothing: its accept band is closed (1.0)" in snippet
    assert "qa certified at confidence >= 0.95 (accuracy lower bound 93.6% on the 35 of 55 golden items" in snippet
    # People right half the time: the figure says how they were counted.
    sloppy = recommend_bands(golden, TWO_TIERS, target_accuracy=0.5, human_accuracy=0.5)
    assert "counting people's labels 50% right" in sloppy.to_yaml_snippet()


# --------------------------------------------------------------------------- from the warehouse, through the CLI


def golden_rows(frame: pd.DataFrame, month: str = "2026-08") -> pd.DataFrame:
    """golden_labels rows (one per item and tier of the tiny project) for a wide golden frame, as the
    golden run writes them; `outcome` auto_label where the frame says so."""
    rows = []
    for record in frame.to_dict("records"):
        for role in ("first_pass", "qa"):
            rows.append({
                "month": pd.Timestamp(f"{month}-01"), "item_id": record["item_id"], "tier": role, "role": role,
                "provider": "local", "gold": record["gold"], "label": record[f"{role}_label"],
                "raw_confidence": record.get(f"{role}_raw_confidence", record[f"{role}_confidence"]),
                "confidence": record[f"{role}_confidence"], "forced_human": False,
                "outcome": "auto_label" if record.get("auto_accepted") else "human",
            })
    return pd.DataFrame(rows)


def write_golden_run(project_dir: Path, frame: pd.DataFrame, month: str = "2026-08") -> Path:
    """The project's warehouse holding one golden run and nothing else."""
    path = project_dir / "warehouse.duckdb"
    with duckdb.connect(str(path)) as conn:
        ensure_tables(conn)
        rows = golden_rows(frame, month)  # noqa: F841 (read by name in the SQL below)
        conn.execute("INSERT INTO golden_labels BY NAME SELECT * FROM rows")
    return path


def cli_golden_set() -> pd.DataFrame:
    """120 golden items of the tiny project (gold billing): 60 the first pass gets right at 0.95 (enough
    to certify it), 50 at 0.6 half right where QA agrees with the right half, 10 wrong everywhere."""
    rows = []
    for first, first_label, qa_label, count in ((0.95, "billing", "billing", 60), (0.6, "billing", "billing", 25),
                                                (0.6, "cancellation", "billing", 25), (0.2, "card_lost", "cancellation", 10)):
        for _ in range(count):
            rows.append({"item_id": f"golden-{len(rows):03d}", "gold": "billing", "first_pass_label": first_label,
                         "first_pass_confidence": first, "qa_label": qa_label, "qa_confidence": 0.9})
    return pd.DataFrame(rows)


CLI_QUALITY = textwrap.dedent("""\
    quality: {target_accuracy: 0.9, delta: 0.1, min_certify_items: 10, calibration: none, audit_share: 0.0}
    """)


def test_golden_labels_rows_feed_the_certified_gate(tmp_path: Path) -> None:
    frame = cli_golden_set().head(4).assign(first_pass_raw_confidence=[0.5, 0.6, 0.7, 0.8],
                                            auto_accepted=[False, True, False, False])
    golden = GoldenAnswers.from_golden_labels(golden_rows(frame))
    # The item the auto-labeler settles never reaches a tier or a band: it is left out, and counted.
    assert list(golden.item_id) == ["golden-000", "golden-002", "golden-003"] and golden.auto_accepted_items == 1
    assert list(golden.raw["first_pass"]) == [0.5, 0.7, 0.8] and list(golden.first_pass_confidence) == [0.95] * 3
    # Without raw confidences the certified gate cannot recalibrate a candidate's path, and says so.
    with pytest.raises(ValueError, match="needs its raw confidences: column first_pass_raw_confidence missing"):
        recommend_bands(GoldenAnswers.from_frame(known_golden_set()), COSTS, target_accuracy=1.0,
                        project=certified_project(roles=ALL_TIERS))


def test_recommend_command_leads_with_the_held_out_figure(tmp_path: Path) -> None:
    root = write_tiny_project(tmp_path / "tiny", extra_yaml=CLI_QUALITY)
    write_golden_run(root, cli_golden_set())
    runner = CliRunner()
    shown = runner.invoke(main, ["recommend", "--project", str(root), "--month", "2026-08", "--target", "0.95"])
    assert shown.exit_code == 0, shown.output
    lines = [line for line in shown.output.splitlines() if line.strip()]
    assert lines[0].startswith("held out: bands chosen the same way on")
    assert shown.output.index("held out: bands chosen") < shown.output.index("in-sample (chosen and measured")
    assert "accuracy, people counted right" in shown.output and "expected accuracy" not in shown.output
    assert "first_pass certified threshold" in shown.output

    answer = json.loads(runner.invoke(main, ["recommend", "--project", str(root), "--month", "2026-08",
                                             "--target", "0.95", "--json"]).output)
    assert answer["gate"] == "certified" and answer["reached"]
    recommended = answer["recommended"]
    assert recommended["certificates"]["first_pass"]["passed"] and recommended["settled"]["first_pass"] == 0.5
    assert all(recommended["certificates"][role]["passed"] for role, share in recommended["settled"].items()
               if role != "human" and share > 0)
    assert answer["held_out"]["held_out"]["expected_accuracy_people_counted_right"] is not None
    assert answer["routing_yaml"].splitlines()[1].startswith("# held out: bands chosen the same way on")
