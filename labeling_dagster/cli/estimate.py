"""`labeling estimate`: what a month of labeling costs before anything is spent.

Either every catalog model at one prompt size (--input-tokens/--output-tokens), or a routing mix
file's bill by layer (--mix); optionally beside Ground Truth's human labeling prices. The
arithmetic lives in core/estimate.py; this module parses options and prints.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from labeling_dagster.cli.common import WAREHOUSE_OPTION
from labeling_dagster.core.estimate import (
    EstimateFileError,
    GroundTruthEstimate,
    MixEstimate,
    ModelEstimate,
    cents,
    estimate_mix,
    ground_truth_estimate,
    ground_truth_prices,
    load_mix,
    load_price_file,
    model_table,
)
from labeling_dagster.core.pricing import PriceCatalog, builtin_catalog

DEFAULT_ITEMS = 1_000_000


def _usd(value: Decimal) -> str:
    return f"${cents(value):,.2f}"


def _per_item(value: Decimal) -> str:
    # Per-item prices are fractions of a cent: seven decimals keep $0.0000645 whole.
    return f"${value.quantize(Decimal('0.0000001')).normalize():f}"


def _console() -> Console:
    # Rich falls back to 80 columns when piped; the tables need about 100.
    console = Console()
    return console if console.is_terminal else Console(width=120)


def _catalog(prices_path: Path | None) -> PriceCatalog:
    catalog = builtin_catalog()
    return catalog if prices_path is None else catalog.with_overrides(load_price_file(prices_path))


def _print_models(console: Console, rows: list[ModelEstimate], catalog: PriceCatalog) -> None:
    first = rows[0]
    sizes = f"{first.input_tokens:,} input / {first.output_tokens:,} output tokens per item"
    if first.cached_input_tokens:
        sizes += f" ({first.cached_input_tokens:,} input from the prompt cache)"
    if first.batch:
        sizes += ", batch API"
    table = Table(title=sizes, caption=f"list prices read on {catalog.read_on}; USD rounded half up to the cent")
    table.add_column("Model")
    table.add_column("In / out $ per 1M tokens", justify="right")
    if first.batch:
        table.add_column("Batch", justify="right")
    table.add_column("Per 10k items", justify="right")
    table.add_column("Per 1M items", justify="right")
    table.add_column(f"{first.items:,} items", justify="right")
    for row in rows:
        cells = [row.label, f"${row.price.input:g} / ${row.price.output:g}"]
        if first.batch:
            cells.append(f"-{row.batch_discount:.0%}" if row.batch_discount else "no batch price")
        cells += [_usd(row.usd_per_10k), _usd(row.usd_per_1m), _usd(row.usd_for_items)]
        table.add_row(*cells)
    console.print(table)


def _print_mix(console: Console, estimate: MixEstimate, source: str) -> None:
    title = f"{estimate.name or source}: {estimate.items_per_month:,} items a month"
    table = Table(title=title, caption="USD rounded half up to the cent; totals summed before rounding")
    for column, justify in (
        ("Layer", "left"),
        ("Model", "left"),
        ("Rate", "right"),
        ("Items", "right"),
        ("Tokens in / out", "right"),
        ("Per item", "right"),
        ("USD", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for layer in estimate.layers:
        detail = layer.detail
        tokens = (
            f"{detail['input_tokens']:,} / {detail['output_tokens']:,}"
            if "input_tokens" in detail
            else f"${detail['hourly_rate_usd']:g}/h, {detail['reviews_per_hour']:g}/h"
        )
        if detail.get("batch"):
            tokens += " batch"
        table.add_row(
            layer.name,
            layer.model,
            f"{detail['rate']:.1%}",
            f"{layer.items:,}",
            tokens,
            _per_item(layer.usd_per_item),
            _usd(layer.usd),
        )
    table.add_section()
    table.add_row("models", "", "", "", "", "", _usd(estimate.llm_usd))
    if estimate.human_usd:
        table.add_row("people", "", "", "", "", "", _usd(estimate.human_usd))
    table.add_row("total", "", "", "", "", "", _usd(estimate.total_usd))
    table.add_row("per 1M items", "", "", "", "", "", _usd(estimate.usd_per_1m_items))
    console.print(table)


def _print_ground_truth(console: Console, gt: GroundTruthEstimate, pipeline_usd: Decimal | None) -> None:
    workers = f"{gt.workers_per_object} worker{'s' if gt.workers_per_object > 1 else ''} per {gt.unit}"
    table = Table(
        title=f"Ground Truth, Mechanical Turk: {gt.label}, {gt.items:,} {gt.unit}s",
        caption=f"${float(gt.usd_per_object):g} per {gt.unit}, {workers}, ${float(gt.fee_per_object):g} fee per object",
    )
    table.add_column("Who labels")
    table.add_column("USD", justify="right")
    table.add_row("people, every object", _usd(gt.human_usd))
    if gt.active_learning_usd is not None and gt.compute_usd is not None:
        table.add_row(
            f"active learning, {gt.auto_share:.0%} auto-labeled (compute {_usd(gt.compute_usd)})",
            _usd(gt.active_learning_usd),
        )
    else:
        table.add_row("active learning", "not offered for this task type")
    if pipeline_usd is not None:
        table.add_row("this pipeline (the mix above)", _usd(pipeline_usd))
    console.print(table)


def _project_estimate(project_path: str | None, month: str | None, warehouse: str | None, as_json: bool) -> None:
    from labeling_dagster.cli.common import load, months_between, warehouse_location
    from labeling_dagster.cli.recommend import month_bill

    if not (project_path and month):
        raise click.UsageError("--project and --month go together")
    project = load(project_path)
    months_between(project, month, None)
    bill = month_bill(project, month, warehouse_location(project, warehouse))
    if as_json:
        click.echo(json.dumps(bill, indent=2, default=str))
        return
    console = _console()
    tokens = Table(title=f"{bill['project']} {month}: tokens per item of the real prompts", title_justify="left")
    for column in ("tier", "model", "input_tokens_per_item", "output_tokens_per_item", "ledger_ratio",
                   "corrected_input_tokens_per_item"):
        tokens.add_column(column)
    for row in bill["tokens"]:
        tokens.add_row(*[str(row[c]) for c in ("tier", "model", "input_tokens_per_item", "output_tokens_per_item",
                                               "ledger_ratio", "corrected_input_tokens_per_item")])
    console.print(tokens if bill["tokens"] else "no paid tier: every tier is local (USD 0 per call)")
    console.print(bill["token_approximation"])
    console.print(f"recommended bands ({bill['gate']} gate):", markup=False)
    for line in bill["recommendation_summary"]:  # held out first, as `labeling recommend` prints it
        console.print(f"  {line}", markup=False)
    table = Table(title=f"{bill['items']:,} items: the month's bill by band set", title_justify="left")
    for column in ("", "current", "recommended"):
        table.add_column(column, justify="right" if column else "left")
    current, chosen = bill["current"], bill["recommended"]
    table.add_row("in-sample accuracy, people counted right", *[
        f"{o['expected_accuracy_people_counted_right']:.3f}" for o in (current, chosen)])
    table.add_row("in-sample accuracy of accepted labels", *[
        "–" if o["accepted_accuracy"] is None else f"{o['accepted_accuracy']:.3f}" for o in (current, chosen)])
    for layer, usd in current["usd_per_item_by_layer"].items():
        table.add_row(f"USD {layer}", f"{usd * bill['items']:,.2f}", f"{chosen['usd_per_item_by_layer'][layer] * bill['items']:,.2f}")
    table.add_row("USD total", f"{current['usd_per_month']:,.2f}", f"{chosen['usd_per_month']:,.2f}")
    console.print(table)


@click.command("estimate")
@click.option(
    "--items",
    type=click.IntRange(min=1),
    default=None,
    help=f"Items to price: the table's last column (default {DEFAULT_ITEMS:,}), or replaces a mix's items_per_month.",
)
@click.option("--input-tokens", type=click.IntRange(min=0), default=None, help="Prompt tokens per item.")
@click.option("--output-tokens", type=click.IntRange(min=0), default=None, help="Output tokens per item.")
@click.option(
    "--cached-input-tokens",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Part of the input tokens read from the provider's prompt cache.",
)
@click.option(
    "--mix",
    "mix_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A routing mix file (YAML, see examples/mixes/): the month's bill by layer.",
)
@click.option("--batch", is_flag=True, help="Apply each model's batch-API discount (to every layer of a mix).")
@click.option(
    "--prices",
    "prices_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Extra or overriding price entries, in the built-in catalog's schema (models: ...).",
)
@click.option(
    "--ground-truth",
    "task_type",
    type=click.Choice(sorted(ground_truth_prices().tasks)),
    default=None,
    metavar="TASK_TYPE",
    help="Add SageMaker Ground Truth's price for this task type (e.g. text_classification), "
    "with and without active learning.",
)
@click.option(
    "--gt-workers",
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="Ground Truth workers per object (AWS's default for text is 3; the guide's figures assume 1).",
)
@click.option(
    "--gt-fee-per-object",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Ground Truth's own fee per labeled object, left out of the guide's figures.",
)
@click.option("--project", "project_path", type=click.Path(exists=True), default=None,
              help="With --month: token counts of the real prompts for the month's items, and the month's "
              "bill under the current and the recommended bands, routed as the project's quality.gate routes "
              "them (needs the month's golden run).")
@click.option("--month", default=None, help="The month, YYYY-MM, with --project.")
@WAREHOUSE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def estimate(
    items: int | None,
    input_tokens: int | None,
    output_tokens: int | None,
    cached_input_tokens: int,
    mix_path: Path | None,
    batch: bool,
    prices_path: Path | None,
    task_type: str | None,
    gt_workers: int,
    gt_fee_per_object: float,
    project_path: str | None,
    month: str | None,
    warehouse: str | None,
    as_json: bool,
) -> None:
    """Estimate labeling cost: every model at one prompt size, or a routing mix's monthly bill.

    \b
    labeling estimate --items 1000000 --input-tokens 700 --output-tokens 40
    labeling estimate --mix examples/mixes/routed_pipeline.yaml --ground-truth text_classification
    """
    if project_path is not None or month is not None:
        _project_estimate(project_path, month, warehouse, as_json)
        return
    try:
        catalog = _catalog(prices_path)
        if mix_path is not None:
            if input_tokens is not None or output_tokens is not None or cached_input_tokens:
                raise click.UsageError(
                    "--mix takes its token sizes from the mix file; drop --input-tokens/--output-tokens"
                )
            mix = load_mix(mix_path)
            bill = estimate_mix(mix, catalog, items_per_month=items, batch=batch)
            gt = _ground_truth(task_type, bill.items_per_month, gt_workers, gt_fee_per_object)
            if as_json:
                out = bill.as_json()
                if gt is not None:
                    out["ground_truth"] = gt.as_json(pipeline_usd=bill.total_usd)
                click.echo(json.dumps(out, indent=2))
                return
            console = _console()
            _print_mix(console, bill, str(mix_path))
            if gt is not None:
                _print_ground_truth(console, gt, bill.total_usd)
            return

        if input_tokens is None or output_tokens is None:
            raise click.UsageError("give --input-tokens and --output-tokens (tokens per item), or --mix FILE")
        if cached_input_tokens > input_tokens:
            raise click.UsageError(
                f"--cached-input-tokens ({cached_input_tokens}) is part of --input-tokens ({input_tokens}) "
                "and cannot exceed it"
            )
        count = DEFAULT_ITEMS if items is None else items
        rows = model_table(
            catalog,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            items=count,
            cached_input_tokens=cached_input_tokens,
            batch=batch,
        )
        gt = _ground_truth(task_type, count, gt_workers, gt_fee_per_object)
        if as_json:
            models = [row.as_json() for row in rows]
            # The plain answer stays a list; --ground-truth wraps it so the comparison has a place.
            click.echo(json.dumps(models if gt is None else {"models": models, "ground_truth": gt.as_json()}, indent=2))
            return
        console = _console()
        _print_models(console, rows, catalog)
        if gt is not None:
            _print_ground_truth(console, gt, None)
    except EstimateFileError as exc:
        raise click.ClickException(str(exc)) from None


def _ground_truth(task_type: str | None, items: int, workers: int, fee: float) -> GroundTruthEstimate | None:
    if task_type is None:
        return None
    return ground_truth_estimate(task_type, items, workers_per_object=workers, fee_per_object=fee)
