"""Model prices and what a call costs.

The built-in catalog is data (price_catalog.yaml beside this file); a project file may override
or add entries. Every USD figure in the ledger comes from `call_usd`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml
from pydantic import BaseModel, ConfigDict, Field


class ModelPrice(BaseModel):
    """USD per 1M tokens for one model."""

    model_config = ConfigDict(extra="forbid")

    provider: str = "unknown"
    input: float = Field(ge=0, description="USD per 1M input tokens")
    output: float = Field(ge=0, description="USD per 1M output tokens")
    cached_input: float | None = Field(
        default=None, ge=0, description="USD per 1M cache-read input tokens; None means no discount"
    )
    cache_write: float | None = Field(
        default=None, ge=0, description="USD per 1M cache-write input tokens (Anthropic, 5-minute lifetime); None means input price"
    )
    cache_write_1h: float | None = Field(
        default=None, ge=0,
        description="USD per 1M cache-write input tokens with a 1-hour lifetime; None: 2x input for Anthropic "
        "(its published multiplier), else cache_write",
    )
    batch_discount: float = Field(default=0.0, ge=0, lt=1, description="share off with the provider's batch API")
    context: int | None = None
    label: str | None = None


@dataclass(frozen=True)
class PriceCatalog:
    read_on: str
    models: dict[str, ModelPrice]

    def price(self, model: str) -> ModelPrice:
        try:
            return self.models[model]
        except KeyError:
            raise KeyError(
                f"no price for model {model!r}: add it under `prices:` in the project file "
                f"(known models: {', '.join(sorted(self.models))})"
            ) from None

    def with_overrides(self, overrides: dict[str, ModelPrice]) -> PriceCatalog:
        return PriceCatalog(read_on=self.read_on, models={**self.models, **overrides})


@lru_cache(maxsize=1)
def builtin_catalog() -> PriceCatalog:
    text = resources.files("labeling_dagster.core").joinpath("price_catalog.yaml").read_text()
    raw = yaml.safe_load(text)
    return PriceCatalog(
        read_on=str(raw["read_on"]),
        models={name: ModelPrice(**entry) for name, entry in raw["models"].items()},
    )


def call_usd(
    price: ModelPrice,
    *,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    batch: bool = False,
) -> float:
    """USD for one call. `input_tokens` counts every prompt token, cached ones included, as
    OpenAI reports it; cached and cache-write tokens are billed at their own prices, the cache writes
    with a 1-hour lifetime (a part of `cache_write_tokens`) at theirs."""
    fresh = max(input_tokens - cached_input_tokens - cache_write_tokens, 0)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    write_rate = price.input if price.cache_write is None else price.cache_write
    write_1h_rate = price.cache_write_1h
    if write_1h_rate is None:  # e.g. a project's `prices:` entry written before the 1-hour price existed
        write_1h_rate = 2 * price.input if price.provider == "anthropic" else write_rate
    hour = min(cache_write_1h_tokens, cache_write_tokens)
    usd = (
        fresh * price.input
        + cached_input_tokens * cached_rate
        + (cache_write_tokens - hour) * write_rate
        + hour * write_1h_rate
        + output_tokens * price.output
    ) / 1_000_000
    return usd * (1 - price.batch_discount) if batch else usd


def per_item_usd(price: ModelPrice, input_tokens: float, output_tokens: float) -> float:
    """The seed guide's formula: input/1M x input price + output/1M x output price."""
    return (input_tokens * price.input + output_tokens * price.output) / 1_000_000
