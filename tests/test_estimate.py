"""Cost estimates against the public figures they must reproduce: the labeling-cost guide's per-model
table, routed pipeline and four scenarios (shared/seeds/000), and the Ground Truth price guide's
tables (shared/seeds/004). Plus the `labeling estimate` command's JSON shape and its errors, and the
month's bill of a project under its certified bands."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from labeling_dagster.cli.estimate import estimate
from labeling_dagster.core.estimate import (
    EstimateFileError,
    cents,
    corrected_tokens,
    estimate_mix,
    estimate_tokens,
    ground_truth_estimate,
    human_usd_per_review,
    load_mix,
    model_table,
    observed_ratio,
    parse_mix,
    usd_per_item,
)
from labeling_dagster.core.pricing import ModelPrice, builtin_catalog, call_usd
from tests.conftest import write_tiny_project
from tests.test_recommend import CLI_QUALITY, cli_golden_set, write_golden_run

MIXES = Path(__file__).resolve().parents[1] / "examples" / "mixes"
D = Decimal

# The guide's table at 700 input / 40 output tokens per item: (model, per 10k, per 1M).
SEED_TABLE = [
    ("gpt-5-nano", "0.51", "51"),
    ("gemini-2.0-flash-lite", "0.65", "64.50"),
    ("mistral-small-3.2", "0.82", "82"),
    ("deepseek-v4-flash", "1.09", "109.20"),
    ("gpt-4o-mini", "1.29", "129"),
    ("gpt-5-mini", "2.55", "255"),
    ("gemini-3-flash", "4.70", "470"),
    ("claude-haiku-4-5", "9.00", "900"),
    ("gpt-5", "12.75", "1275"),
    ("claude-sonnet-4-6", "27.00", "2700"),
    ("claude-opus-4-7", "45.00", "4500"),
    ("gpt-5.2-pro", "214.20", "21420"),
]


def _rows(**kwargs):
    return {row.model: row for row in model_table(builtin_catalog(), **kwargs)}


def _bill(name: str, **kwargs):
    return estimate_mix(load_mix(MIXES / name), builtin_catalog(), **kwargs)


def _layer_usd(bill, name: str) -> Decimal:
    return cents(bill.layer(name).usd)


# --------------------------------------------------------------------------- per-model table


@pytest.mark.parametrize(("model", "per_10k", "per_1m"), SEED_TABLE)
def test_seed_table_reproduces_to_the_cent(model, per_10k, per_1m):
    row = _rows(input_tokens=700, output_tokens=40, items=1_000_000)[model]
    assert cents(row.usd_per_10k) == D(per_10k)
    assert cents(row.usd_per_1m) == D(per_1m)
    assert cents(row.usd_for_items) == D(per_1m)


def test_per_10k_rounds_half_up_like_the_table():
    # Flash-Lite is $0.645 per 10k exactly; the table prints $0.65 (banker's rounding would give $0.64).
    row = _rows(input_tokens=700, output_tokens=40, items=10_000)["gemini-2.0-flash-lite"]
    assert row.usd_per_10k == D("0.645")
    assert row.as_json()["usd_per_10k"] == 0.65


def test_ten_thousand_items_on_nano_split_into_input_and_output():
    # The guide's FAQ: $0.35 for input plus $0.16 for output, $0.51 in all.
    row = _rows(input_tokens=700, output_tokens=40, items=10_000)["gpt-5-nano"].as_json()
    assert (row["input_usd_for_items"], row["output_usd_for_items"], row["usd_for_items"]) == (0.35, 0.16, 0.51)


def test_table_is_cheapest_first_and_covers_the_whole_catalog():
    rows = model_table(builtin_catalog(), input_tokens=700, output_tokens=40, items=1)
    assert {row.model for row in rows} == set(builtin_catalog().models)
    assert [row.usd_per_item for row in rows] == sorted(row.usd_per_item for row in rows)
    assert rows[0].model == "gpt-5-nano" and rows[-1].model == "gpt-5.2-pro"


def test_batch_halves_where_the_catalog_has_a_batch_price_and_only_there():
    plain = _rows(input_tokens=700, output_tokens=40, items=1_000_000)
    batch = _rows(input_tokens=700, output_tokens=40, items=1_000_000, batch=True)
    assert cents(batch["gpt-5-nano"].usd_per_1m) == D("25.50")
    assert batch["gpt-5-nano"].batch_discount == 0.5
    assert batch["gemini-2.0-flash-lite"].usd_per_1m == plain["gemini-2.0-flash-lite"].usd_per_1m
    assert batch["gemini-2.0-flash-lite"].batch_discount == 0.0


@pytest.mark.parametrize(
    ("model", "inp", "cached", "out", "batch"),
    [
        ("gpt-5-nano", 700, 0, 40, False),
        ("gpt-5-nano", 1500, 1024, 40, True),
        ("claude-haiku-4-5", 1200, 900, 120, False),
        ("gemini-2.0-flash-lite", 700, 300, 40, True),
        ("gpt-5.2-pro", 2000, 0, 250, True),
    ],
)
def test_exact_per_item_price_agrees_with_the_ledger_formula(model, inp, cached, out, batch):
    price = builtin_catalog().price(model)
    exact = usd_per_item(price, inp, out, cached_input_tokens=cached, batch=batch)
    ledger = call_usd(price, input_tokens=inp, output_tokens=out, cached_input_tokens=cached, batch=batch)
    assert float(exact) == pytest.approx(ledger, rel=1e-12)


def test_cached_tokens_beyond_the_prompt_are_refused():
    with pytest.raises(ValueError, match="cached_input_tokens"):
        usd_per_item(builtin_catalog().price("gpt-5-nano"), 100, 10, cached_input_tokens=200)


# --------------------------------------------------------------------------- routed pipeline and scenarios


def test_routed_pipeline_comes_to_433_per_million_items():
    bill = _bill("routed_pipeline.yaml")
    layers = {layer.name: layer.as_json() for layer in bill.layers}
    # The guide's arithmetic, layer by layer: items, then input and output dollars.
    assert (layers["first_pass"]["items"], layers["first_pass"]["input_usd"], layers["first_pass"]["output_usd"]) == (
        1_000_000,
        35.0,
        16.0,
    )
    assert (layers["qa"]["items"], layers["qa"]["input_usd"], layers["qa"]["output_usd"]) == (150_000, 180.0, 90.0)
    assert (
        layers["adjudication"]["items"],
        layers["adjudication"]["input_usd"],
        layers["adjudication"]["output_usd"],
    ) == (20_000, 56.0, 56.0)
    assert [cents(layer.usd) for layer in bill.layers] == [D("51"), D("270"), D("112")]
    assert cents(bill.total_usd) == D("433") == cents(bill.usd_per_1m_items)
    assert bill.human_usd == 0


def test_routed_pipeline_against_single_pass_premium():
    routed = _bill("routed_pipeline.yaml").total_usd
    per_1m = _rows(input_tokens=700, output_tokens=40, items=1_000_000)
    sonnet, pro = per_1m["claude-sonnet-4-6"].usd_for_items, per_1m["gpt-5.2-pro"].usd_for_items
    # "84% cheaper" than Sonnet on everything; a premium single pass "can cost 6x to 49x more".
    assert round(1 - routed / sonnet, 2) == D("0.84")
    assert (int(sonnet / routed), int(pro / routed)) == (6, 49)


def test_qa_on_150k_items_with_haiku_costs_270():
    price = builtin_catalog().price("claude-haiku-4-5")
    assert usd_per_item(price, 1200, 120) == D("0.0018")
    assert usd_per_item(price, 1200, 120) * 150_000 == D("270")


@pytest.mark.parametrize(
    ("mix_file", "layer_usd", "total"),
    [
        ("scenario_support_tickets.yaml", {"first_pass": "15.30", "qa": "2.97"}, "18.27"),
        ("scenario_marketplace.yaml", {"first_pass": "218.40", "qa": "200", "adjudication": "405"}, "823.40"),
        ("scenario_training_data.yaml", {"first_pass": "645", "qa": "2160", "adjudication": "12600"}, "15405"),
        ("scenario_regulated.yaml", {"first_pass": "675", "qa": "2700", "adjudication": "1062.50"}, "4437.50"),
    ],
)
def test_scenarios_come_to_the_guides_monthly_bill(mix_file, layer_usd, total):
    bill = _bill(mix_file)
    assert {layer.name: cents(layer.usd) for layer in bill.layers} == {k: D(v) for k, v in layer_usd.items()}
    assert cents(bill.total_usd) == D(total)


@pytest.mark.parametrize(
    ("model", "inp", "out", "per_item"),
    [
        ("gemini-2.0-flash-lite", 1000, 80, "0.000099"),  # scenario 1 QA
        ("gpt-5-mini", 1200, 100, "0.0005"),  # scenario 2 QA
        ("claude-sonnet-4-6", 1500, 150, "0.00675"),  # scenario 2 premium
        ("claude-haiku-4-5", 1200, 120, "0.0018"),  # scenario 3 QA
        ("gpt-5.2-pro", 2000, 250, "0.084"),  # scenario 3 premium
        ("gpt-5-mini", 3000, 300, "0.00135"),  # scenario 4 first pass
        ("claude-sonnet-4-6", 3500, 500, "0.018"),  # scenario 4 QA
        ("claude-opus-4-7", 5000, 700, "0.0425"),  # scenario 4 premium
    ],
)
def test_scenario_per_item_prices(model, inp, out, per_item):
    assert usd_per_item(builtin_catalog().price(model), inp, out) == D(per_item)


def test_scenario_3_guide_prints_15005_but_its_parts_add_up_to_15405():
    # The guide's scenario 3 states $645 + $2,160 + $12,600 and then prints "Monthly LLM cost: $15,005".
    # The parts are right (each one checks against the price table), so the printed total is a slip:
    # the parts add up to $15,405, and that is the figure we reproduce.
    bill = _bill("scenario_training_data.yaml")
    parts = [cents(layer.usd) for layer in bill.layers]
    assert parts == [D("645"), D("2160"), D("12600")]
    assert sum(parts) == D("15405") == cents(bill.total_usd)
    assert cents(bill.total_usd) != D("15005")
    assert cents(bill.total_usd) - D("15005") == D("400")


def test_scenario_3_cutting_premium_from_1_5_to_0_5_percent_saves_8400():
    raw = load_mix(MIXES / "scenario_training_data.yaml").model_dump()
    raw["layers"]["adjudication"]["rate"] = 0.005
    cheaper = estimate_mix(parse_mix(raw), builtin_catalog())
    assert cents(_bill("scenario_training_data.yaml").total_usd - cheaper.total_usd) == D("8400")


def test_items_override_scales_every_layer():
    bill = _bill("routed_pipeline.yaml", items_per_month=10_000)
    assert [layer.items for layer in bill.layers] == [10_000, 1_500, 200]
    assert cents(bill.total_usd) == D("4.33")


def test_batch_flag_halves_a_mix_of_batchable_models():
    assert cents(_bill("routed_pipeline.yaml", batch=True).total_usd) == D("216.50")


# --------------------------------------------------------------------------- people


def test_human_review_at_25_an_hour_and_300_reviews_an_hour():
    per_review = human_usd_per_review(25, 300)
    assert round(per_review, 4) == D("0.0833")
    # "Reviewing 20,000 items costs about $1,667 in labor."
    assert cents(per_review * 20_000) == D("1666.67")


def test_human_share_adds_a_people_layer_to_the_bill():
    raw = load_mix(MIXES / "routed_pipeline.yaml").model_dump()
    raw["human"] = {"share": 0.02, "hourly_rate_usd": 25, "reviews_per_hour": 300, "annotators_per_item": 1}
    bill = estimate_mix(parse_mix(raw), builtin_catalog())
    human = bill.layer("human")
    assert (human.items, cents(human.usd)) == (20_000, D("1666.67"))
    assert cents(bill.llm_usd) == D("433")
    assert cents(bill.total_usd) == D("2099.67")
    raw["human"]["annotators_per_item"] = 3
    assert cents(estimate_mix(parse_mix(raw), builtin_catalog()).human_usd) == D("5000")


# --------------------------------------------------------------------------- Ground Truth


@pytest.mark.parametrize(
    ("task_type", "per_10k", "per_100k"),
    [
        ("image_classification", "120", "1200"),
        ("multi_label_image_classification", "120", "1200"),
        ("bounding_box", "360", "3600"),
        ("semantic_segmentation", "700", "7000"),
        ("instance_segmentation", "840", "8400"),
        ("polyline", "360", "3600"),
        ("text_classification", "120", "1200"),
        ("named_entity_recognition", "120", "1200"),
        ("multi_label_text_classification", "120", "1200"),
    ],
)
def test_ground_truth_price_table(task_type, per_10k, per_100k):
    assert ground_truth_estimate(task_type, 10_000).human_usd == D(per_10k)
    assert ground_truth_estimate(task_type, 100_000).human_usd == D(per_100k)


@pytest.mark.parametrize(
    ("task_type", "unit_price"),
    [
        ("video_object_detection", "0.036"),
        ("video_object_tracking", "0.048"),
        ("point_cloud_object_detection", "0.30"),
        ("point_cloud_segmentation", "0.468"),
    ],
)
def test_ground_truth_per_frame_prices(task_type, unit_price):
    gt = ground_truth_estimate(task_type, 1)
    assert (gt.usd_per_object, gt.unit, gt.active_learning_usd) == (D(unit_price), "frame", None)


@pytest.mark.parametrize(
    ("task_type", "items", "compute_per_10k", "without", "human_part", "compute", "with_al", "saving"),
    [
        # The guide's active-learning table; its 10k row charges $4 of compute, the others $3 per 10k.
        ("image_classification", 10_000, 4, "120", "36", "4", "40", "0.67"),
        ("image_classification", 50_000, None, "600", "180", "15", "195", "0.68"),
        ("image_classification", 100_000, None, "1200", "360", "30", "390", "0.68"),
        ("bounding_box", 100_000, None, "3600", "1080", "30", "1110", "0.69"),
        ("text_classification", 100_000, None, "1200", "360", "30", "390", "0.68"),
        ("semantic_segmentation", 100_000, None, "7000", "2100", "30", "2130", "0.70"),  # the guide's FAQ
    ],
)
def test_ground_truth_active_learning(task_type, items, compute_per_10k, without, human_part, compute, with_al, saving):
    gt = ground_truth_estimate(task_type, items, compute_usd_per_10k=compute_per_10k)
    assert gt.human_usd == D(without)
    assert gt.human_items_with_active_learning * gt.usd_per_object == D(human_part)
    assert gt.compute_usd == D(compute)
    assert gt.active_learning_usd == D(with_al)
    assert gt.active_learning_saving_share.quantize(D("0.01"), rounding="ROUND_HALF_UP") == D(saving)


def test_ground_truth_real_world_rows():
    assert ground_truth_estimate("bounding_box", 20_000).human_usd == D("720")  # CV startup, initial labeling
    assert ground_truth_estimate("bounding_box", 5_000).human_usd == D("180")  # CV startup, quality review
    assert ground_truth_estimate("text_classification", 50_000).human_usd == D("600")  # NLP team


def test_ground_truth_workers_and_fee():
    # AWS pays the task price to each worker, 3 per text item by default, and adds a fee per object
    # that applies to auto-labeled objects too.
    gt = ground_truth_estimate("text_classification", 100_000, workers_per_object=3, fee_per_object=0.08)
    assert gt.human_usd == D("3600") + D("8000")
    assert gt.active_learning_usd == D("1080") + D("8000") + D("30")


def test_ground_truth_without_active_learning_for_types_that_lack_it():
    gt = ground_truth_estimate("named_entity_recognition", 100_000)
    assert (gt.active_learning_usd, gt.compute_usd, gt.active_learning_saving_share) == (None, None, None)


def test_ground_truth_unknown_task_type_lists_the_known_ones():
    with pytest.raises(ValueError, match="text_classification"):
        ground_truth_estimate("sentiment", 10)


def test_pipeline_against_ground_truth():
    bill = _bill("routed_pipeline.yaml")
    out = ground_truth_estimate("text_classification", bill.items_per_month).as_json(pipeline_usd=bill.total_usd)
    assert (out["human_usd"], out["active_learning_usd"], out["pipeline_usd"]) == (12_000.0, 3_900.0, 433.0)
    assert out["pipeline_saving_vs_human_usd"] == 11_567.0
    assert out["pipeline_saving_vs_active_learning_usd"] == 3_467.0


# --------------------------------------------------------------------------- tokens


def test_token_approximation_is_four_bytes_a_token():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd" * 10) == 10
    assert estimate_tokens("abcde") == 2  # rounds up
    # Non-Latin scripts take 2-3 bytes a character, so they count more tokens per character.
    assert estimate_tokens("日本語のテキスト") == 6  # 8 characters, 24 bytes


def test_observed_ratio_corrects_the_approximation():
    ratio = observed_ratio(reported_tokens=[130, 270], estimated_tokens=[100, 220])
    assert ratio == pytest.approx(400 / 320)
    assert corrected_tokens(700, ratio) == 875
    assert corrected_tokens(701, 1.0) == 701
    with pytest.raises(ValueError):
        observed_ratio([10], [0])
    with pytest.raises(ValueError):
        corrected_tokens(700, 0)


# --------------------------------------------------------------------------- the command


def _run(*args: str):
    return CliRunner().invoke(estimate, list(args))


def test_cli_json_table_shape_and_figures():
    result = _run("--items", "1000000", "--input-tokens", "700", "--output-tokens", "40", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert isinstance(rows, list) and len(rows) == len(builtin_catalog().models)
    assert all({"model", "usd_per_10k", "usd_per_1m"} <= row.keys() for row in rows)
    by_model = {row["model"]: row for row in rows}
    for model, per_10k, per_1m in SEED_TABLE:
        assert (by_model[model]["usd_per_10k"], by_model[model]["usd_per_1m"]) == (float(per_10k), float(per_1m))


def test_cli_json_mix_shape_and_total():
    result = _run("--mix", str(MIXES / "routed_pipeline.yaml"), "--json")
    assert result.exit_code == 0, result.output
    bill = json.loads(result.output)
    assert bill["total_usd"] == 433.0
    assert [(layer["name"], layer["model"], layer["items"], layer["usd"]) for layer in bill["layers"]] == [
        ("first_pass", "gpt-5-nano", 1_000_000, 51.0),
        ("qa", "claude-haiku-4-5", 150_000, 270.0),
        ("adjudication", "gpt-5.2", 20_000, 112.0),
    ]


def test_cli_ground_truth_comparison_in_json():
    result = _run(
        "--mix", str(MIXES / "scenario_support_tickets.yaml"), "--ground-truth", "text_classification", "--json"
    )
    assert result.exit_code == 0, result.output
    gt = json.loads(result.output)["ground_truth"]
    assert (gt["items"], gt["human_usd"], gt["active_learning_usd"], gt["pipeline_usd"]) == (
        300_000,
        3600.0,
        1170.0,
        18.27,
    )
    table = _run("--input-tokens", "700", "--output-tokens", "40", "--ground-truth", "bounding_box", "--json")
    wrapped = json.loads(table.output)
    assert wrapped["ground_truth"]["human_usd"] == 36_000.0 and len(wrapped["models"]) == len(builtin_catalog().models)


def test_cli_readable_tables():
    result = _run("--input-tokens", "700", "--output-tokens", "40")
    assert result.exit_code == 0, result.output
    assert "GPT-5 nano" in result.output and "$51.00" in result.output and "$21,420.00" in result.output
    mix = _run("--mix", str(MIXES / "scenario_regulated.yaml"), "--ground-truth", "text_classification")
    assert mix.exit_code == 0, mix.output
    assert "$4,437.50" in mix.output and "Ground Truth" in mix.output


def test_cli_extra_prices_file(tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  my-local-vllm: {provider: openai, input: 0.02, output: 0.02, label: My vLLM}\n")
    result = _run("--input-tokens", "700", "--output-tokens", "40", "--prices", str(prices), "--json")
    assert result.exit_code == 0, result.output
    rows = {row["model"]: row for row in json.loads(result.output)}
    assert rows["my-local-vllm"]["usd_per_1m"] == 14.8 and "gpt-5-nano" in rows


def test_cli_bad_price_file_names_file_and_key(tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  cheap: {input: 0.02, outptu: 0.02}\n")
    result = _run("--input-tokens", "700", "--output-tokens", "40", "--prices", str(prices))
    assert result.exit_code == 1
    assert str(prices) in result.output and "models.cheap" in result.output and "outptu" in result.output


def test_cli_bad_mix_file_names_file_and_key(tmp_path):
    mix = tmp_path / "mix.yaml"
    mix.write_text(
        "items_per_month: 1000\n"
        "layers:\n"
        "  first_pass: {model: gpt-5-nano, input_tokens: 700, output_tokens: 40}\n"
        "  qa: {model: claude-haiku-4-5, rat: 0.1, input_tokens: 1200, output_tokens: 120}\n"
        "  premium: {model: gpt-5.2, rate: 0.02, input_tokens: 1600, output_tokens: 200}\n"
    )
    result = _run("--mix", str(mix), "--json")
    assert result.exit_code == 1
    assert str(mix) in result.output
    assert "layers.qa.rate" in result.output and "layers.qa.rat" in result.output
    # The guide calls the top layer "premium"; the mix file uses the project file's tier role.
    assert "layers.premium" in result.output and "the premium model is `adjudication`" in result.output


def test_cli_mix_with_unpriced_model_names_the_key(tmp_path):
    mix = tmp_path / "mix.yaml"
    mix.write_text(
        "items_per_month: 1000\n"
        "layers:\n"
        "  first_pass: {model: gpt-5-nano, input_tokens: 700, output_tokens: 40}\n"
        "  adjudication: {model: gpt-9, rate: 0.02, input_tokens: 1600, output_tokens: 200}\n"
    )
    result = _run("--mix", str(mix))
    assert result.exit_code == 1
    assert str(mix) in result.output and "layers.adjudication.model" in result.output and "gpt-9" in result.output
    # The same model priced in the mix file itself is accepted.
    mix.write_text(mix.read_text() + "prices:\n  gpt-9: {input: 2, output: 16}\n")
    assert json.loads(_run("--mix", str(mix), "--json").output)["layers"][1]["usd"] == 0.13  # 20 items x $0.0064


def test_cli_missing_or_unreadable_mix_file(tmp_path):
    missing = _run("--mix", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 1 and "nope.yaml: no such mix file" in missing.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("layers: [first_pass\n")
    result = _run("--mix", str(broken))
    assert result.exit_code == 1 and "broken.yaml: not valid YAML" in result.output


def test_cli_usage_errors():
    assert _run("--json").exit_code == 2
    both = _run("--mix", str(MIXES / "routed_pipeline.yaml"), "--input-tokens", "700")
    assert both.exit_code == 2 and "--mix takes its token sizes" in both.output
    assert _run("--input-tokens", "10", "--output-tokens", "1", "--cached-input-tokens", "20").exit_code == 2


def test_mix_file_error_is_an_estimate_file_error(tmp_path):
    bad = tmp_path / "mix.yaml"
    bad.write_text("items_per_month: 0\nlayers: {first_pass: {model: gpt-5-nano, input_tokens: 1, output_tokens: 1}}\n")
    with pytest.raises(EstimateFileError, match="items_per_month"):
        load_mix(bad)


def test_a_price_override_in_the_mix_replaces_the_catalog_entry():
    raw = load_mix(MIXES / "routed_pipeline.yaml").model_dump()
    raw["prices"] = {"gpt-5-nano": ModelPrice(input=0.10, output=0.80).model_dump()}
    assert cents(estimate_mix(parse_mix(raw), builtin_catalog()).layer("first_pass").usd) == D("102")


def test_project_estimate_bills_the_certified_bands_and_leads_with_the_held_out_figure(tmp_path):
    root = write_tiny_project(tmp_path / "tiny", extra_yaml=CLI_QUALITY)
    write_golden_run(root, cli_golden_set())
    bill = json.loads(_run("--project", str(root), "--month", "2026-08", "--json").output)
    # Both band sets are routed with the certificates their bands get on the golden path.
    assert bill["gate"] == "certified"
    for side in ("current", "recommended"):
        assert bill[side]["gate"] == "certified" and bill[side]["certificates"]["first_pass"]["passed"]
        assert "expected_accuracy" not in bill[side]
        assert bill[side]["expected_accuracy_people_counted_right"] == 1.0 and bill[side]["accepted_accuracy"] == 1.0
    assert bill["recommendation_summary"][0].startswith("held out: bands chosen the same way on")
    assert bill["held_out"]["held_out"]["accepted_accuracy"] == 1.0

    shown = _run("--project", str(root), "--month", "2026-08")
    assert shown.exit_code == 0, shown.output
    assert shown.output.index("held out: bands chosen") < shown.output.index("in-sample accuracy, people counted right")
    assert "expected accuracy" not in shown.output
