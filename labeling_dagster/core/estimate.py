"""What labeling will cost before anything is spent: every catalog model at a given prompt size, a
routing mix's monthly bill by layer, Ground Truth's human labeling prices for comparison, and the
offline token approximation with its correction from observed usage.

Pure arithmetic in exact decimals (prices enter through str(), so 0.075 stays 0.075), rounded to the
cent only when shown, so every figure of the seed price tables reproduces to the cent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from labeling_dagster.core.pricing import ModelPrice, PriceCatalog
from labeling_dagster.project import format_validation_errors, read_yaml_mapping

MILLION = Decimal(1_000_000)
CENT = Decimal("0.01")

# The layer names are the tier roles of the project file (project.TierConfig.role), plus people.
LAYER_NAMES = ("first_pass", "qa", "adjudication")
HUMAN_LAYER = "human"


class EstimateFileError(ValueError):
    """A mix file or price file cannot be used; the message names the file, the key and the fix."""


def dec(value: float | str | Decimal) -> Decimal:
    """Exact decimal of a price or rate: via str() so the float 0.075 becomes Decimal('0.075')."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def cents(usd: Decimal) -> Decimal:
    """Round half up to the cent, as a price table prints it ($0.645 shows as $0.65)."""
    return usd.quantize(CENT, rounding=ROUND_HALF_UP)


def _whole(count: Decimal) -> int:
    """Items are whole: a share of a month's items rounds half up to an item count."""
    return int(count.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _money(usd: Decimal) -> float:
    return float(cents(usd))


# --------------------------------------------------------------------------- per-item price


def token_usd_per_item(
    price: ModelPrice,
    input_tokens: int,
    output_tokens: int,
    *,
    cached_input_tokens: int = 0,
    batch: bool = False,
) -> tuple[Decimal, Decimal]:
    """(input USD, output USD) for one item, exact. `input_tokens` counts every prompt token and
    `cached_input_tokens` the part of them read from the provider's prompt cache (billed at the
    cached price where the catalog has one); cache writes are left out, as they are paid once per
    cache lifetime, not per item. `batch` takes the model's batch-API discount off both."""
    if not 0 <= cached_input_tokens <= input_tokens:
        raise ValueError(
            f"cached_input_tokens must be between 0 and input_tokens ({input_tokens}), got {cached_input_tokens}"
        )
    cached_rate = dec(price.input if price.cached_input is None else price.cached_input)
    input_usd = ((input_tokens - cached_input_tokens) * dec(price.input) + cached_input_tokens * cached_rate) / MILLION
    output_usd = output_tokens * dec(price.output) / MILLION
    if batch:
        keep = 1 - dec(price.batch_discount)
        input_usd, output_usd = input_usd * keep, output_usd * keep
    return input_usd, output_usd


def usd_per_item(
    price: ModelPrice,
    input_tokens: int,
    output_tokens: int,
    *,
    cached_input_tokens: int = 0,
    batch: bool = False,
) -> Decimal:
    """The seed guide's formula, exact: input/1M x input price + output/1M x output price."""
    input_usd, output_usd = token_usd_per_item(
        price, input_tokens, output_tokens, cached_input_tokens=cached_input_tokens, batch=batch
    )
    return input_usd + output_usd


# --------------------------------------------------------------------------- every model, one prompt size


@dataclass(frozen=True)
class ModelEstimate:
    """One row of the per-model table: what `items` items cost on `model` at the given sizes."""

    model: str
    label: str
    provider: str
    price: ModelPrice
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    batch: bool
    items: int
    input_usd_per_item: Decimal
    output_usd_per_item: Decimal

    @property
    def usd_per_item(self) -> Decimal:
        return self.input_usd_per_item + self.output_usd_per_item

    @property
    def usd_per_10k(self) -> Decimal:
        return self.usd_per_item * 10_000

    @property
    def usd_per_1m(self) -> Decimal:
        return self.usd_per_item * 1_000_000

    @property
    def usd_for_items(self) -> Decimal:
        return self.usd_per_item * self.items

    @property
    def batch_discount(self) -> float:
        """The discount actually applied: 0 without --batch, and 0 where the catalog knows none."""
        return self.price.batch_discount if self.batch else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "label": self.label,
            "provider": self.provider,
            "input_usd_per_1m_tokens": self.price.input,
            "output_usd_per_1m_tokens": self.price.output,
            "context": self.price.context,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "batch": self.batch,
            "batch_discount": self.batch_discount,
            "usd_per_item": float(self.usd_per_item),
            "usd_per_10k": _money(self.usd_per_10k),
            "usd_per_1m": _money(self.usd_per_1m),
            "items": self.items,
            "input_usd_for_items": _money(self.input_usd_per_item * self.items),
            "output_usd_for_items": _money(self.output_usd_per_item * self.items),
            "usd_for_items": _money(self.usd_for_items),
        }


def model_table(
    catalog: PriceCatalog,
    *,
    input_tokens: int,
    output_tokens: int,
    items: int,
    cached_input_tokens: int = 0,
    batch: bool = False,
) -> list[ModelEstimate]:
    """Every model of the catalog at one prompt size, cheapest first."""
    rows = []
    for model, price in catalog.models.items():
        input_usd, output_usd = token_usd_per_item(
            price, input_tokens, output_tokens, cached_input_tokens=cached_input_tokens, batch=batch
        )
        rows.append(
            ModelEstimate(
                model=model,
                label=price.label or model,
                provider=price.provider,
                price=price,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cached_input_tokens=cached_input_tokens,
                batch=batch,
                items=items,
                input_usd_per_item=input_usd,
                output_usd_per_item=output_usd,
            )
        )
    return sorted(rows, key=lambda row: (row.usd_per_item, row.model))


# --------------------------------------------------------------------------- routing mix


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MixLayer(_Strict):
    """One model layer: which model sees what share of the month's items, at which prompt size."""

    model: str = Field(min_length=1)
    rate: float = Field(gt=0, le=1, description="share of all the month's items this layer sees")
    input_tokens: int = Field(ge=0, description="prompt tokens per item, instructions and taxonomy included")
    output_tokens: int = Field(ge=0)
    cached_input_tokens: int = Field(default=0, ge=0, description="part of input_tokens read from the prompt cache")
    batch: bool = Field(default=False, description="sent through the provider's batch API")


class FirstPassLayer(MixLayer):
    rate: float = Field(default=1.0, gt=0, le=1, description="1.0, or the share the local auto-labeler did not accept")


class MixLayers(_Strict):
    first_pass: FirstPassLayer
    qa: MixLayer | None = None
    adjudication: MixLayer | None = None


class HumanLayer(_Strict):
    """People: the share of the month's items they review, and what a review costs in labor
    (same keys as the project file's human_review)."""

    share: float = Field(default=0.0, ge=0, le=1)
    hourly_rate_usd: float = Field(default=25.0, ge=0)
    reviews_per_hour: float = Field(default=300.0, gt=0)
    annotators_per_item: int = Field(default=1, ge=1, le=5)


class RoutingMix(_Strict):
    """A month of routed labeling, as a mix file states it (see examples/mixes/)."""

    name: str = ""
    description: str = ""
    items_per_month: int = Field(gt=0)
    layers: MixLayers
    human: HumanLayer = HumanLayer()
    prices: dict[str, ModelPrice] = Field(default_factory=dict, description="extra or overriding catalog entries")

    _source: str = PrivateAttr(default="<mix>")

    @property
    def source(self) -> str:
        return self._source


@dataclass(frozen=True)
class LayerCost:
    """One layer of a month's bill; `detail` carries what the layer was priced from."""

    name: str
    model: str
    items: int
    usd_per_item: Decimal
    usd: Decimal
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "items": self.items,
            "usd_per_item": float(self.usd_per_item),
            "usd": _money(self.usd),
            **self.detail,
        }


@dataclass(frozen=True)
class MixEstimate:
    """A month's bill by layer. Totals are summed exactly and rounded once, so a total can differ
    by a cent from the sum of the rounded layer figures."""

    name: str
    items_per_month: int
    layers: list[LayerCost]

    @property
    def llm_usd(self) -> Decimal:
        return sum((layer.usd for layer in self.layers if layer.name != HUMAN_LAYER), Decimal(0))

    @property
    def human_usd(self) -> Decimal:
        return sum((layer.usd for layer in self.layers if layer.name == HUMAN_LAYER), Decimal(0))

    @property
    def total_usd(self) -> Decimal:
        return self.llm_usd + self.human_usd

    @property
    def usd_per_1m_items(self) -> Decimal:
        return self.total_usd * MILLION / self.items_per_month

    def layer(self, name: str) -> LayerCost:
        return next(layer for layer in self.layers if layer.name == name)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "items_per_month": self.items_per_month,
            "layers": [layer.as_json() for layer in self.layers],
            "llm_usd": _money(self.llm_usd),
            "human_usd": _money(self.human_usd),
            "total_usd": _money(self.total_usd),
            "usd_per_1m_items": _money(self.usd_per_1m_items),
        }


def _layer_hint(item: dict) -> str:
    if item["type"] == "extra_forbidden" and len(item["loc"]) == 2 and item["loc"][0] == "layers":
        return f"; the layers are {', '.join(LAYER_NAMES)} (the premium model is `adjudication`)"
    return ""


def _format_errors(source: str, what: str, error: ValidationError) -> str:
    return format_validation_errors(source, what, error, _layer_hint)


def _read_yaml_mapping(path: Path, what: str, keys_hint: str) -> dict[str, Any]:
    return read_yaml_mapping(path, what, keys_hint, EstimateFileError)


def parse_mix(raw: dict[str, Any], source: str = "<mix>") -> RoutingMix:
    try:
        mix = RoutingMix.model_validate(raw)
    except ValidationError as exc:
        raise EstimateFileError(_format_errors(source, "mix file", exc)) from None
    mix._source = source
    return mix


def load_mix(path: str | Path) -> RoutingMix:
    """Read and validate a mix file; errors name the file and the key."""
    path = Path(path)
    raw = _read_yaml_mapping(path, "mix file", "items_per_month, layers (first_pass, qa, adjudication), human, prices")
    return parse_mix(raw, source=str(path))


def load_price_file(path: str | Path) -> dict[str, ModelPrice]:
    """Extra price entries in the built-in catalog's schema: `models: {name: {input, output, ...}}`."""
    path = Path(path)
    raw = _read_yaml_mapping(path, "price file", "read_on (optional) and models")
    models = raw.get("models")
    if not isinstance(models, dict) or not models:
        raise EstimateFileError(
            f"{path}: models: expected a mapping of model name to {{input: USD per 1M, output: USD per 1M}}, "
            f"as in labeling_dagster/core/price_catalog.yaml"
        )
    prices = {}
    for name, entry in models.items():
        try:
            prices[str(name)] = ModelPrice.model_validate(entry)
        except ValidationError as exc:
            raise EstimateFileError(_format_errors(f"{path}: models.{name}", "price entry", exc)) from None
    return prices


def human_usd_per_review(hourly_rate_usd: float, reviews_per_hour: float) -> Decimal:
    """Labor per review, e.g. $25/h at 300 reviews/h = $0.0833."""
    return dec(hourly_rate_usd) / dec(reviews_per_hour)


def estimate_mix(
    mix: RoutingMix,
    catalog: PriceCatalog,
    *,
    items_per_month: int | None = None,
    batch: bool = False,
) -> MixEstimate:
    """The month's bill: each layer's items are the month's items times its rate; people cost
    items x annotators x hourly rate / reviews per hour. `items_per_month` replaces the file's
    count (to price the same mix at another volume); `batch` sends every layer through the batch API."""
    items = mix.items_per_month if items_per_month is None else items_per_month
    if items <= 0:
        raise ValueError(f"items_per_month must be positive, got {items}")
    catalog = catalog.with_overrides(dict(mix.prices))
    layers: list[LayerCost] = []
    for name in LAYER_NAMES:
        layer: MixLayer | None = getattr(mix.layers, name)
        if layer is None:
            continue
        if layer.model not in catalog.models:
            raise EstimateFileError(
                f"{mix.source}: layers.{name}.model: no price for {layer.model!r}; add it under `prices:` "
                f"in the mix file or pass --prices FILE (known models: {', '.join(sorted(catalog.models))})"
            )
        if layer.cached_input_tokens > layer.input_tokens:
            raise EstimateFileError(
                f"{mix.source}: layers.{name}.cached_input_tokens ({layer.cached_input_tokens}) exceeds "
                f"input_tokens ({layer.input_tokens}); the cached part is counted inside input_tokens"
            )
        layer_items = _whole(items * dec(layer.rate))
        in_usd, out_usd = token_usd_per_item(
            catalog.models[layer.model],
            layer.input_tokens,
            layer.output_tokens,
            cached_input_tokens=layer.cached_input_tokens,
            batch=batch or layer.batch,
        )
        layers.append(
            LayerCost(
                name=name,
                model=layer.model,
                items=layer_items,
                usd_per_item=in_usd + out_usd,
                usd=(in_usd + out_usd) * layer_items,
                detail={
                    "rate": layer.rate,
                    "input_tokens": layer.input_tokens,
                    "output_tokens": layer.output_tokens,
                    "cached_input_tokens": layer.cached_input_tokens,
                    "batch": batch or layer.batch,
                    "input_usd": _money(in_usd * layer_items),
                    "output_usd": _money(out_usd * layer_items),
                },
            )
        )
    human = mix.human
    if human.share > 0:
        human_items = _whole(items * dec(human.share))
        per_item = human_usd_per_review(human.hourly_rate_usd, human.reviews_per_hour) * human.annotators_per_item
        layers.append(
            LayerCost(
                name=HUMAN_LAYER,
                model="people",
                items=human_items,
                usd_per_item=per_item,
                usd=per_item * human_items,
                detail={
                    "rate": human.share,
                    "reviews": human_items * human.annotators_per_item,
                    "hourly_rate_usd": human.hourly_rate_usd,
                    "reviews_per_hour": human.reviews_per_hour,
                    "annotators_per_item": human.annotators_per_item,
                },
            )
        )
    return MixEstimate(name=mix.name, items_per_month=items, layers=layers)


# --------------------------------------------------------------------------- Ground Truth comparison


class GroundTruthTask(_Strict):
    usd_per_object: float = Field(ge=0)
    unit: str
    active_learning: bool
    label: str


@dataclass(frozen=True)
class GroundTruthPrices:
    read_on: str
    auto_share: float
    compute_usd_per_10k: float
    tasks: dict[str, GroundTruthTask]

    def task(self, task_type: str) -> GroundTruthTask:
        try:
            return self.tasks[task_type]
        except KeyError:
            raise ValueError(
                f"no Ground Truth price for task type {task_type!r}; known: {', '.join(sorted(self.tasks))}"
            ) from None


@lru_cache(maxsize=1)
def ground_truth_prices() -> GroundTruthPrices:
    """The Ground Truth price list shipped beside this module (ground_truth_prices.yaml)."""
    raw = yaml.safe_load(resources.files("labeling_dagster.core").joinpath("ground_truth_prices.yaml").read_text())
    return GroundTruthPrices(
        read_on=str(raw["read_on"]),
        auto_share=float(raw["active_learning"]["auto_share"]),
        compute_usd_per_10k=float(raw["active_learning"]["compute_usd_per_10k"]),
        tasks={name: GroundTruthTask(**entry) for name, entry in raw["tasks"].items()},
    )


@dataclass(frozen=True)
class GroundTruthEstimate:
    """What `items` objects cost on Ground Truth with Mechanical Turk workers, all labeled by people,
    and with automated labeling (active learning) where the task type offers it."""

    task_type: str
    label: str
    unit: str
    items: int
    usd_per_object: Decimal
    workers_per_object: int
    fee_per_object: Decimal
    human_usd: Decimal
    auto_share: Decimal | None
    human_items_with_active_learning: int | None
    compute_usd: Decimal | None
    active_learning_usd: Decimal | None

    @property
    def active_learning_saving_share(self) -> Decimal | None:
        if self.active_learning_usd is None or self.human_usd == 0:
            return None
        return 1 - self.active_learning_usd / self.human_usd

    def as_json(self, pipeline_usd: Decimal | None = None) -> dict[str, Any]:
        saving = self.active_learning_saving_share
        out: dict[str, Any] = {
            "task_type": self.task_type,
            "label": self.label,
            "unit": self.unit,
            "items": self.items,
            "usd_per_object": float(self.usd_per_object),
            "workers_per_object": self.workers_per_object,
            "fee_per_object": float(self.fee_per_object),
            "human_usd": _money(self.human_usd),
            "active_learning": self.active_learning_usd is not None,
            "auto_share": None if self.auto_share is None else float(self.auto_share),
            "human_items_with_active_learning": self.human_items_with_active_learning,
            "compute_usd": None if self.compute_usd is None else _money(self.compute_usd),
            "active_learning_usd": None if self.active_learning_usd is None else _money(self.active_learning_usd),
            "active_learning_saving_share": None if saving is None else round(float(saving), 4),
        }
        if pipeline_usd is not None:
            out["pipeline_usd"] = _money(pipeline_usd)
            out["pipeline_saving_vs_human_usd"] = _money(self.human_usd - pipeline_usd)
            if self.active_learning_usd is not None:
                out["pipeline_saving_vs_active_learning_usd"] = _money(self.active_learning_usd - pipeline_usd)
        return out


def ground_truth_estimate(
    task_type: str,
    items: int,
    *,
    workers_per_object: int = 1,
    fee_per_object: float = 0.0,
    auto_share: float | None = None,
    compute_usd_per_10k: float | None = None,
    prices: GroundTruthPrices | None = None,
) -> GroundTruthEstimate:
    """Ground Truth's bill for `items` objects of `task_type`.

    All by people: items x workers_per_object x price + items x fee_per_object. The defaults
    (one worker, no fee) are the guide's arithmetic ($0.012 x 100k = $1,200); AWS pays the price to
    each worker per task and labels a text item with 3 workers by default, and charges its own fee per
    labeled object, so pass workers_per_object=3 and the fee for the full AWS bill.
    With active learning: people label the (1 - auto_share) part, the fee still applies to every
    object, and the auto-labeling model's compute is added per 10k objects.
    """
    prices = prices or ground_truth_prices()
    task = prices.task(task_type)
    if items < 0 or workers_per_object < 1:
        raise ValueError(f"need items >= 0 and workers_per_object >= 1, got {items} and {workers_per_object}")
    price, fee = dec(task.usd_per_object), dec(fee_per_object)
    human_usd = items * workers_per_object * price + items * fee
    share = compute = al_usd = None
    human_items = None
    if task.active_learning:
        share = dec(prices.auto_share if auto_share is None else auto_share)
        if not 0 <= share <= 1:
            raise ValueError(f"auto_share must be between 0 and 1, got {share}")
        human_items = _whole(items * (1 - share))
        per_10k = dec(prices.compute_usd_per_10k if compute_usd_per_10k is None else compute_usd_per_10k)
        compute = items * per_10k / 10_000
        al_usd = human_items * workers_per_object * price + items * fee + compute
    return GroundTruthEstimate(
        task_type=task_type,
        label=task.label,
        unit=task.unit,
        items=items,
        usd_per_object=price,
        workers_per_object=workers_per_object,
        fee_per_object=fee,
        human_usd=human_usd,
        auto_share=share,
        human_items_with_active_learning=human_items,
        compute_usd=compute,
        active_learning_usd=al_usd,
    )


# --------------------------------------------------------------------------- tokens, offline

# tiktoken fetches its BPE files from the network on first use, which fails offline, and the
# Anthropic and Gemini tokenizers are not published at all. So an estimate counts UTF-8 bytes / 4:
# OpenAI's rule of thumb of ~4 characters per token for English, and for non-Latin scripts (2-3
# bytes a character) it counts more tokens per character, as real tokenizers do. The ledger's
# provider-reported counts then correct it per model through `observed_ratio`.
BYTES_PER_TOKEN = 4


def estimate_tokens(text: str, bytes_per_token: float = BYTES_PER_TOKEN) -> int:
    """Approximate token count of `text`: ceil(UTF-8 bytes / 4). Not a tokenizer; correct it
    with `corrected_tokens` once the provider has reported real counts for similar prompts. The rate
    limiter passes a smaller `bytes_per_token` to lean high (core.prompts)."""
    return math.ceil(len(text.encode("utf-8")) / bytes_per_token)


def observed_ratio(reported_tokens: Iterable[int], estimated_tokens: Iterable[int]) -> float:
    """Actual / estimated over the same calls: the provider-reported input tokens from the ledger
    against `estimate_tokens` of the prompts those calls sent. Sums, not a mean of ratios, so long
    prompts weigh what they cost."""
    reported, estimated = sum(reported_tokens), sum(estimated_tokens)
    if estimated <= 0:
        raise ValueError("no estimated tokens to compare with; the ratio needs at least one estimated prompt")
    return reported / estimated


def corrected_tokens(estimate: float, ratio: float) -> int:
    """The approximation scaled by the ratio observed in the ledger, rounded up to a whole token."""
    if ratio <= 0:
        raise ValueError(f"observed ratio must be positive, got {ratio}")
    return math.ceil(estimate * ratio)
