"""`labeling recommend` and `labeling estimate --project --month`: the bands that reach a target
accuracy or a budget (certified ones under quality.gate certified), and the month's bill under the
current and the recommended bands, from the golden run in the warehouse and the prompts built for the
month's real items. The held-out figure leads: it is what a new month can expect."""

from __future__ import annotations

import json

import click
import pandas as pd
from rich.table import Table

from labeling_dagster.cli.common import (
    WAREHOUSE_OPTION,
    console,
    fail,
    load,
    months_between,
    open_warehouse,
    warehouse_location,
)
from labeling_dagster.core.labels import Item, LabelTask, PriorAnswer
from labeling_dagster.core.prompts import build_prompt, estimated_output_tokens
from labeling_dagster.core.recommend import BandOutcome, Recommendation, recommend
from labeling_dagster.core.sources import read_month
from labeling_dagster.project import Project
from labeling_dagster.resources.warehouse import warehouse_exists

SAMPLE = 2000  # items whose prompts are built; per-item figures scale to the month


def _golden(project: Project, warehouse: str, month: str) -> pd.DataFrame:
    if not warehouse_exists(warehouse):
        fail(f"{warehouse} does not exist; run `labeling run --project ... --month {month}` first (it does the golden run)")
    with open_warehouse(warehouse) as conn:
        golden = conn.execute("SELECT * FROM golden_labels WHERE month = ?", [f"{month}-01"]).df()
    if not len(golden):
        fail(f"no golden run for {month} in {warehouse}: set golden_set and quality.golden_sample_size, then run the month")
    return golden


def prompt_tokens(project: Project, month: str, warehouse: str | None) -> pd.DataFrame:
    """Per tier: input and output tokens per item of the prompts built for the month's items (a sample
    of SAMPLE items), the approximation used, and the ratio the ledger observed for that tier."""
    items = [Item(row["item_id"], row["text"], row["content_hash"]) for row in read_month(project, month).items]
    sample = items[:SAMPLE]
    reported = {}
    if warehouse and warehouse_exists(warehouse):
        with open_warehouse(warehouse) as conn:
            reported = {
                tier: value for tier, value in conn.execute(
                    "SELECT tier, SUM(input_tokens) / SUM(item_count) FROM model_calls WHERE month = ? "
                    "AND status NOT IN ('error', 'rejected') AND input_tokens > 0 GROUP BY 1", [f"{month}-01"]).fetchall()
            }
    rows = []
    for tier in project.tiers:
        if tier.provider == "local" or not sample:
            continue
        # QA and adjudication prompts show earlier answers; a placeholder answer stands in for them here.
        prior = {} if tier.role == "first_pass" else {
            item.item_id: [PriorAnswer("earlier", project.taxonomy.names[0], 0.5, "placeholder")] for item in sample}
        inputs = 0
        for start in range(0, len(sample), tier.items_per_request):
            batch = sample[start : start + tier.items_per_request]
            prompt = build_prompt(LabelTask(project.taxonomy, tier, batch, {i.item_id: prior.get(i.item_id, []) for i in batch}))
            inputs += prompt.input_tokens()
        per_item = inputs / len(sample)
        observed = reported.get(tier.name)
        rows.append({
            "tier": tier.name, "role": tier.role, "model": tier.model, "items_sampled": len(sample),
            "input_tokens_per_item": round(per_item, 1),
            "output_tokens_per_item": round(
                estimated_output_tokens(tier.items_per_request, tier.prompt.with_reason) / tier.items_per_request, 1),
            # the estimate times the ratio the ledger observed is simply what the provider reported
            "ledger_ratio": round(observed / per_item, 3) if observed else None,
            "corrected_input_tokens_per_item": round(float(observed), 1) if observed else None,
        })
    return pd.DataFrame(rows)


def _token_sizes(tokens: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Per tier role: (input, output) tokens per item, the ledger's where it has them."""
    return {
        row["role"]: (int(round(row["corrected_input_tokens_per_item"] or row["input_tokens_per_item"])),
                      int(round(row["output_tokens_per_item"])))
        for row in tokens.to_dict("records")
    }


def _recommend(project: Project, golden: pd.DataFrame, sizes: dict, **goal) -> Recommendation:
    try:
        return recommend(project, golden, sizes, **goal)
    except ValueError as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits


def month_bill(project: Project, month: str, warehouse: str) -> dict:
    """The month's projected bill under the current and the recommended bands, both routed as the
    project's gate routes them (certified: with the certificates their bands get on the golden path)."""
    tokens = prompt_tokens(project, month, warehouse)
    items = len(read_month(project, month).items)
    recommendation = _recommend(project, _golden(project, warehouse, month), _token_sizes(tokens),
                                items_per_month=items)
    return {
        "project": project.name, "month": month, "items": items,
        "token_approximation": "UTF-8 bytes / 4 per token (core.estimate.estimate_tokens); ledger_ratio is the "
                               "provider-reported input tokens per item this month over that estimate",
        "tokens": tokens.to_dict("records"),
        "gate": recommendation.gate,
        "recommendation_summary": recommendation.summary(),
        "held_out": recommendation.held_out.as_json() if recommendation.held_out is not None else None,
        "current": recommendation.current.as_json(),
        "recommended": recommendation.outcome.as_json(),
        "recommendation_reached": recommendation.reached,
        "recommendation_reason": recommendation.reason,
    }


def _threshold(outcome: BandOutcome, role: str) -> str:
    certificate = outcome.certification.certificates.get(role) if outcome.certification is not None else None
    return "–" if certificate is None else "none" if not certificate.passed else f"{certificate.threshold:g}"


def _print_recommendation(recommendation: Recommendation) -> None:
    out = console()
    for line in recommendation.summary():  # held out first: what a new month can expect
        out.print(line, markup=False)
    table = Table(title="bands on the golden run, in-sample", title_justify="left")
    for column in ("", "current", "recommended"):
        table.add_column(column, justify="right" if column else "left")
    current, chosen = recommendation.current, recommendation.outcome
    for key, value in chosen.bands().items():
        table.add_row(key, f"{current.bands()[key]:g}", f"{value:g}")
    table.add_row("accuracy, people counted right", *[f"{o.expected_accuracy:.3f}" for o in (current, chosen)])
    table.add_row("accuracy of accepted labels", *[
        "–" if o.accepted_accuracy is None else f"{o.accepted_accuracy:.3f}" for o in (current, chosen)])
    for layer in chosen.settled:
        table.add_row(f"settled by {layer}", f"{current.settled[layer]:.1%}", f"{chosen.settled[layer]:.1%}")
    if chosen.certification is not None:
        for role in chosen.certification.certificates:
            table.add_row(f"{role} certified threshold", _threshold(current, role), _threshold(chosen, role))
    table.add_row("USD per item", f"{current.usd_per_item:.6f}", f"{chosen.usd_per_item:.6f}")
    if chosen.usd_per_month is not None:
        table.add_row("USD per month", f"{current.usd_per_month:,.2f}", f"{chosen.usd_per_month:,.2f}")
    out.print(table)
    out.print(recommendation.reason, markup=False)
    out.print("Paste into the project file to apply (nothing is changed automatically):\n")
    click.echo(recommendation.to_yaml_snippet())  # plain: a wrapped comment line would break the YAML


@click.command("recommend")
@click.option("--project", "project_path", required=True, type=click.Path(exists=True),
              help="Project folder (with project.yaml) or the project file itself.")
@click.option("--month", required=True, help="The month whose golden run to use, YYYY-MM.")
@click.option("--target", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Accuracy the final labels must reach (default: quality.target_accuracy).")
@click.option("--budget", type=click.FloatRange(min=0), default=None,
              help="Monthly USD to spend instead: the most accurate bands that fit it.")
@WAREHOUSE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def recommend_command(project_path: str, month: str, target: float | None, budget: float | None,
                      warehouse: str | None, as_json: bool) -> None:
    """Recommend routing bands from the month's golden run: the cheapest that reach a target accuracy,
    or the most accurate within a monthly budget; under quality.gate certified only bands whose
    accepting stages are certified on the golden path. Leads with the held-out figure (bands chosen on
    half of the golden items, measured on the other half), then the in-sample one; accuracy counts
    people's labels right, and the accepted labels' accuracy is shown beside it. Prints the `routing:`
    block to paste; never applies it."""
    if target is not None and budget is not None:
        fail("give --target or --budget, not both")
    project = load(project_path)
    months_between(project, month, None)
    path = warehouse_location(project, warehouse)
    golden = _golden(project, path, month)
    sizes = _token_sizes(prompt_tokens(project, month, path))
    items = len(read_month(project, month).items)
    result = _recommend(project, golden, sizes, target_accuracy=target, monthly_budget_usd=budget,
                        items_per_month=items)
    if as_json:
        click.echo(json.dumps({**result.as_json(), "routing_yaml": result.to_yaml_snippet()}, indent=2, default=str))
    else:
        _print_recommendation(result)
