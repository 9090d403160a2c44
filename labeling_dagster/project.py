"""The project file: one YAML holding the taxonomy, source, tiers, routing, people, budget and prices.

It is validated with pydantic before anything runs; an invalid file raises ProjectFileError naming
the file, the key and why. Nothing else in the code hard-codes a model, a price or a threshold.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from labeling_dagster.core.pricing import ModelPrice, PriceCatalog, builtin_catalog

MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class ProjectFileError(ValueError):
    """The project file cannot be used; the message names the file, the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelDef(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    examples: list[str] = []


class Taxonomy(_Strict):
    labels: list[LabelDef] = Field(min_length=2)
    none_label: str | None = Field(
        default=None, pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
        description="a 'none of these' outcome (e.g. none_of_these) models and people may answer for an item "
        "outside the taxonomy; never auto-accepted, always sent to people to confirm",
    )

    @model_validator(mode="after")
    def _none_label_is_not_a_label(self) -> Taxonomy:
        if self.none_label is not None and self.none_label in self.names:
            raise ValueError(f"taxonomy.none_label {self.none_label!r} is also one of the labels; give it its own name")
        return self

    @property
    def answers(self) -> list[str]:
        """What a model or a person may answer: the labels, and the none-of-these outcome if declared."""
        return [*self.names, *([self.none_label] if self.none_label else [])]

    @field_validator("labels")
    @classmethod
    def _unique(cls, labels: list[LabelDef]) -> list[LabelDef]:
        seen: set[str] = set()
        for label in labels:
            if label.name in seen:
                raise ValueError(f"label {label.name!r} is listed twice")
            seen.add(label.name)
        return labels

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    def definition(self, name: str) -> str:
        for label in self.labels:
            if label.name == name:
                return label.description
        return ""


class Source(_Strict):
    """Where a month's items come from: `path` is a glob relative to the project folder in which
    `{month}` stands for YYYY-MM, e.g. `inbox/{month}*.csv`."""

    path: str
    format: Literal["auto", "csv", "jsonl", "parquet"] = "auto"
    id_column: str = "id"
    text_column: str = "text"
    metadata_columns: list[str] = []
    start_month: str = Field(description="first monthly partition, YYYY-MM")
    max_text_chars: int = Field(
        default=100_000, ge=1,
        description="longest item text (characters, after trimming); a longer one is rejected at intake",
    )
    max_row_chars: int = Field(
        default=1_000_000, ge=1,
        description="longest source row read (characters of a CSV row, however many lines it spans, or of a JSONL "
        "line); a longer one is rejected without being parsed, which keeps memory bounded",
    )

    @field_validator("path")
    @classmethod
    def _has_month(cls, path: str) -> str:
        if "{month}" not in path:
            raise ValueError("must contain {month}, e.g. inbox/{month}*.csv, so each month finds its own files")
        return path

    @field_validator("start_month")
    @classmethod
    def _month(cls, value: str) -> str:
        if not MONTH_RE.match(value):
            raise ValueError(f"{value!r} is not a month; write YYYY-MM, e.g. 2026-08")
        return value

    @model_validator(mode="after")
    def _row_fits_text(self) -> Source:
        if self.max_row_chars < self.max_text_chars:
            raise ValueError(
                f"max_row_chars ({self.max_row_chars}) must be at least max_text_chars ({self.max_text_chars}): "
                "a row holds its text"
            )
        return self


class LabeledFile(_Strict):
    """A CSV of human-verified labels (the seed set the local models learn from, or the golden set)."""

    path: str
    text_column: str = "text"
    label_column: str = "label"


class PromptOptions(_Strict):
    instructions: str = "Label each item with exactly one label from the taxonomy."
    few_shot_per_label: int = Field(default=0, ge=0, le=10)
    with_reason: bool = True


class Confidence(_Strict):
    """The number a tier's accept threshold is certified on.

    default: the local model's probability; OpenAI: the label's token probability when
    options.logprobs is on, else the number the model writes; Anthropic: the number it writes.
    logprobs: token probabilities required; an answer that comes back without them is a failure
    (the item goes up and the tier's check fails), never a silent fallback to the written number.
    self_consistency: `samples` answers per item (sampled at the tier's temperature); the share that
    agree with the most common label. Costs `samples` times the calls.
    agreement: QA and adjudication only; the share of the earlier tiers' answers that agree with this
    tier's label (1.0 or 0.0 with one earlier tier).
    stated: the number the model writes, whatever else the provider offers (the weakest signal)."""

    signal: Literal["default", "logprobs", "self_consistency", "agreement", "stated"] = "default"
    samples: int = Field(default=5, ge=2, le=20, description="answers per item for self_consistency")


class TierConfig(_Strict):
    """One tier: who answers, with which model and prompt, how many items per call."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    role: Literal["first_pass", "qa", "adjudication"]
    provider: Literal["local", "openai", "anthropic"]
    model: str
    items_per_request: int = Field(default=10, ge=1, le=200)
    prompt: PromptOptions = PromptOptions()
    options: dict[str, Any] = Field(default_factory=dict, description="provider-specific settings")
    confidence: Confidence = Confidence()

    @model_validator(mode="after")
    def _signal_fits_role(self) -> TierConfig:
        signal = self.confidence.signal
        if signal == "agreement" and self.role == "first_pass":
            raise ValueError(f"tier {self.name}: confidence.signal agreement needs earlier tiers; a first pass has none")
        if self.provider == "local" and signal not in ("default", "agreement"):
            raise ValueError(f"tier {self.name}: confidence.signal {signal} on a local model, which gives the same "
                             "answer every time and has no logprobs: use default (its probability) or agreement")
        if self.provider == "anthropic" and signal == "logprobs":
            raise ValueError(f"tier {self.name}: Anthropic returns no logprobs; use self_consistency, agreement or stated")
        return self


class MetadataRule(_Strict):
    """Items matching the rule always go to people: `column` is a metadata column or `text`."""

    column: str
    equals: str | None = None
    one_of: list[str] | None = None
    contains: str | None = None

    @model_validator(mode="after")
    def _one_test(self) -> MetadataRule:
        given = [x for x in (self.equals, self.one_of, self.contains) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of equals, one_of, contains")
        return self


class Routing(_Strict):
    """Confidence bands of the first pass, and what QA and adjudication must reach to settle an item.

    first-pass confidence >= accept_at: accepted; >= qa_at: QA; >= adjudicate_at: adjudication;
    below: people. QA settles an item when it agrees with the first pass at qa_accept_at or more;
    adjudication settles it at adjudication_accept_at or more. Anything unsettled goes to people.
    """

    accept_at: float = Field(default=0.90, ge=0, le=1)
    qa_at: float = Field(default=0.75, ge=0, le=1)
    adjudicate_at: float = Field(default=0.50, ge=0, le=1)
    qa_accept_at: float = Field(default=0.80, ge=0, le=1)
    adjudication_accept_at: float = Field(default=0.70, ge=0, le=1)
    always_human_labels: list[str] = []
    always_human_when: list[MetadataRule] = []
    audit_rate: float = Field(default=0.0, ge=0, le=1, description="share of accepted items sent to QA anyway")

    @model_validator(mode="after")
    def _ordered(self) -> Routing:
        if not self.adjudicate_at <= self.qa_at <= self.accept_at:
            raise ValueError(
                f"bands must satisfy adjudicate_at <= qa_at <= accept_at, got "
                f"{self.adjudicate_at} / {self.qa_at} / {self.accept_at}"
            )
        return self


class HumanReview(_Strict):
    """People: what a review costs, how many reviews an item needs, how their answers are merged."""

    hourly_rate_usd: float = Field(default=25.0, ge=0)
    reviews_per_hour: float = Field(default=300.0, gt=0)
    annotators_per_item: int = Field(default=1, ge=1, le=5)
    annotators_for_labels: dict[str, int] = Field(
        default_factory=dict, description="more annotators for risky candidate labels, e.g. {compromised_card: 3}"
    )
    consensus: Literal["majority", "dawid_skene"] = "majority"
    min_agreement: float = Field(default=0.6, ge=0, le=1, description="below it an item is sent back for another review")
    models_join_as_annotators: bool = False
    reviews_dir: str = Field(default="reviews", description="completed review files go in <reviews_dir>/<YYYY-MM>/")
    monthly_review_budget: int | None = Field(
        default=None, ge=0, description="items people can review a month; None: the whole queue"
    )
    review_selection: Literal["margin", "uncertainty", "random"] = Field(
        default="margin", description="how the budget's items are chosen when the queue is larger (active learning)"
    )
    random_share: float = Field(
        default=0.2, ge=0, le=1, description="share of the budget drawn at random, which keeps accuracy estimates honest"
    )

    @field_validator("annotators_for_labels")
    @classmethod
    def _counts(cls, counts: dict[str, int]) -> dict[str, int]:
        for label, count in counts.items():
            if not 1 <= count <= 5:
                raise ValueError(f"{label}: {count} annotators; use 1 to 5")
        return counts

    def annotators_for(self, candidate_label: str | None) -> int:
        return max(self.annotators_per_item, self.annotators_for_labels.get(candidate_label or "", 0))

    @property
    def usd_per_review(self) -> float:
        return self.hourly_rate_usd / self.reviews_per_hour


class AutoLabel(_Strict):
    """The auto-labeler: a local model trained on every human-verified label to date, which labels the
    items it is sure of before any paid tier. Its threshold is chosen on held-out human labels."""

    enabled: bool = False
    features: Literal["tfidf", "embeddings", "tfidf+embeddings"] = "tfidf"
    target_accuracy: float | None = Field(
        default=None, gt=0, le=1, description="the auto-labeler's own target; default quality.target_accuracy"
    )
    min_training_size: int = Field(default=1000, ge=1)
    min_count: int = Field(
        default=100, ge=1,
        description="fewest held-out labels a threshold must accept to be tested (the fixed sequence starts there)",
    )
    include_agreed_model_labels: bool = Field(
        default=False, description="also train on items QA settled by agreeing with the first pass"
    )


class Quality(_Strict):
    """The golden run: each tier labels a fixed sample of the golden set every month (stored calls make
    later months free), its answers calibrate the tier and feed the quality report and the recommender."""

    golden_sample_size: int = Field(default=500, ge=0, description="golden items each tier labels; 0 turns it off")
    max_usd: float = Field(default=1.0, ge=0, description="spend cap of the golden run per month")
    calibration: Literal["isotonic", "platt", "none"] = "isotonic"
    target_accuracy: float = Field(
        default=0.95, gt=0, le=1,
        description="accuracy every stage's accepted labels must reach (certified per stage and month)",
    )
    gate: Literal["certified", "bands"] = Field(
        default="certified",
        description="certified: a stage accepts only at a certified threshold (no certificate: nothing); "
        "bands: the routing bands alone, not certified (prototypes, projects without a golden set)",
    )
    delta: float = Field(
        default=0.05, gt=0, lt=0.5,
        description="risk of a certificate being wrong: P(accepted accuracy >= target_accuracy) >= 1 - delta",
    )
    min_certify_items: int = Field(
        default=30, ge=1, description="fewest calibration items a threshold must accept to be tested"
    )
    audit_share: float = Field(
        default=0.02, ge=0, le=1,
        description="share of each stage's accepted items sent to people each month (by item id) to check the certificate",
    )
    recheck_audit_share: float = Field(
        default=0.10, ge=0, le=1,
        description="audit share of a stage whose month drifted from its calibration data (the recheck)",
    )
    shift_alpha: float = Field(
        default=0.01, gt=0, lt=1,
        description="level of the drift tests (confidence distribution, predicted-label mix) against calibration data",
    )


class Scale(_Strict):
    """How a large month is split: each model tier labels its items in shards (contiguous ranges of the
    month's items in id order), each in its own step with its own retries, merged into the month's tables."""

    shard_items: int = Field(
        default=200_000, ge=1,
        description="items per shard of a model tier; rounded so that shards never split a provider request",
    )
    parallel_shards: int = Field(
        default=1, ge=1, le=64,
        description="shards labeled at once, each in its own process (Dagster's multiprocess executor); 1: in process",
    )
    shard_retries: int = Field(default=2, ge=0, le=10, description="automatic retries of a failed shard step")
    shard_folder: str | None = Field(
        default=None,
        description="folder of the shard files between a tier's plan and collect steps, relative to the project "
        "folder; every machine that runs shard steps must share it (default: <warehouse file>.shards, or "
        "warehouse.shards in the project folder when the warehouse is PostgreSQL)",
    )


class Budget(_Strict):
    monthly_usd: float = Field(ge=0)
    on_exceeded: Literal["queue", "fail"] = "queue"


class Project(_Strict):
    name: str
    taxonomy: Taxonomy
    source: Source
    seed_set: LabeledFile | None = None
    golden_set: LabeledFile | None = None
    tiers: list[TierConfig] = Field(min_length=1)
    routing: Routing = Routing()
    human_review: HumanReview = HumanReview()
    budget: Budget
    quality: Quality = Quality()
    auto_label: AutoLabel = AutoLabel()
    prices: dict[str, ModelPrice] = {}
    batch_over_items: int | None = Field(
        default=100_000, ge=1,
        description="a paid tier without options.mode uses its provider's batch API (50% off, slower) when one run "
        "gives it more items than this, e.g. a backfill; None: always online",
    )
    scale: Scale = Scale()
    warehouse: str = Field(
        default="warehouse.duckdb",
        description="DuckDB file, relative to the project folder, or a postgresql://user@host:port/dbname URL "
        "(its password from PGPASSWORD or ~/.pgpass, never in the file)",
    )
    exports_dir: str = "exports"

    _root: Path = PrivateAttr(default=Path("."))

    @model_validator(mode="after")
    def _consistent(self) -> Project:
        roles = [tier.role for tier in self.tiers]
        order = ["first_pass", "qa", "adjudication"]
        if roles[0] != "first_pass":
            raise ValueError("tiers: the first tier must have role first_pass")
        if len(set(roles)) != len(roles) or roles != sorted(roles, key=order.index):
            raise ValueError(f"tiers: roles must be distinct and in the order {order}, got {roles}")
        if len({tier.name for tier in self.tiers}) != len(self.tiers):
            raise ValueError("tiers: each tier needs its own name")
        names = set(self.taxonomy.names)
        for key, listed in (
            ("routing.always_human_labels", self.routing.always_human_labels),
            ("human_review.annotators_for_labels", list(self.human_review.annotators_for_labels)),
        ):
            unknown = [label for label in listed if label not in names]
            if unknown:
                raise ValueError(f"{key}: {unknown} are not in the taxonomy")
        columns = {"text", *self.source.metadata_columns}
        for rule in self.routing.always_human_when:
            if rule.column not in columns:
                raise ValueError(
                    f"routing.always_human_when: column {rule.column!r} is not `text` or one of "
                    f"source.metadata_columns {self.source.metadata_columns}"
                )
        catalog = self.price_catalog
        for tier in self.tiers:
            if tier.provider != "local" and tier.model not in catalog.models:
                raise ValueError(
                    f"tiers.{tier.name}.model: no price for {tier.model!r}; add it under `prices:`"
                )
        if any(tier.provider == "local" for tier in self.tiers) and self.seed_set is None:
            raise ValueError("seed_set: a local tier needs a labeled seed set to learn from")
        if self.auto_label.enabled and self.seed_set is None:
            raise ValueError("seed_set: the auto-labeler starts from a labeled seed set; add one or set auto_label.enabled: false")
        return self

    @property
    def root(self) -> Path:
        return self._root

    @cached_property
    def price_catalog(self) -> PriceCatalog:
        return builtin_catalog().with_overrides(self.prices)

    def tier(self, role: str) -> TierConfig | None:
        return next((tier for tier in self.tiers if tier.role == role), None)

    def resolve(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else self._root / path

    @field_validator("warehouse")
    @classmethod
    def _no_password(cls, value: str) -> str:
        from labeling_dagster.resources.warehouse import WarehouseError, check_location

        try:
            check_location(value)
        except WarehouseError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def warehouse_location(self) -> str:
        """The DuckDB file (resolved against the project folder) or the PostgreSQL URL, as given."""
        from labeling_dagster.resources.warehouse import is_postgres

        return self.warehouse if is_postgres(self.warehouse) else str(self.resolve(self.warehouse))

    def shard_folder_for(self, warehouse: str | Path) -> str | None:
        """scale.shard_folder resolved; for a PostgreSQL warehouse without one, warehouse.shards here."""
        from labeling_dagster.resources.warehouse import is_postgres

        if self.scale.shard_folder:
            return str(self.resolve(self.scale.shard_folder))
        return str(self.resolve("warehouse.shards")) if is_postgres(warehouse) else None

    @property
    def exports_path(self) -> Path:
        return self.resolve(self.exports_dir)

    @property
    def reviews_path(self) -> Path:
        return self.resolve(self.human_review.reviews_dir)


def format_validation_errors(source: str, what: str, error: ValidationError, hint=None) -> str:
    """One line per problem, each naming its key; `hint(item)` may add advice to an error's message.
    Whole-file rules name their key at the start of their message, which becomes the key here."""
    lines = [f"{source}: invalid {what} ({error.error_count()} problem(s)):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if not key:
            named = re.match(r"^([a-z_]+(?:\.[a-z_0-9]+)*): (.*)$", message, re.DOTALL)
            key, message = (named.group(1), named.group(2)) if named else ("(top level)", message)
        lines.append(f"  - {key}: {message}{hint(item) if hint else ''}")
    return "\n".join(lines)


def read_yaml_mapping(path: Path, what: str, keys_hint: str, error: type[Exception]) -> dict[str, Any]:
    """A YAML file that must hold a mapping; `error` names the file and what is wrong."""
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping of keys ({keys_hint})")
    return raw


def load_project(path: str | Path) -> Project:
    """Read and validate a project file (or a folder holding project.yaml)."""
    path = Path(path)
    if path.is_dir():
        path = path / "project.yaml"
    if not path.exists():
        raise ProjectFileError(f"{path}: no such project file; pass a folder with project.yaml or the file itself")
    raw = read_yaml_mapping(path, "project file", "name, taxonomy, source, tiers, ...", ProjectFileError)
    try:
        project = Project.model_validate(raw)
    except ValidationError as exc:
        raise ProjectFileError(format_validation_errors(str(path), "project file", exc)) from None
    project._root = path.parent.resolve()
    for key, labeled in (("seed_set", project.seed_set), ("golden_set", project.golden_set)):
        if labeled is not None and not project.resolve(labeled.path).exists():
            raise ProjectFileError(f"{path}: {key}.path: file {project.resolve(labeled.path)} does not exist")
    return project
