"""The one configuration object, built once at start-up and handed down.

Sources, highest priority first: constructor arguments, ``GRISTMILL_*`` environment
variables, the YAML file named by ``GRISTMILL_CONFIG`` (or ``config_file=``), defaults.
Paths left unset are derived from ``data_dir``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

import policies

BackendName = Literal["embedded", "openai_upstream"]
PromptFamily = Literal["auto", "qwen", "starcoder", "codellama", "plain"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRISTMILL_", extra="forbid")

    config_file: Path | None = Field(
        default=None, description="Optional YAML file with any of these settings."
    )
    data_dir: Path = Field(
        default=Path(".gristmill"),
        description="Root for tokens, keys, the durable log, Parquet and models.",
    )
    host: str = Field(default="127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port the gateway listens on.")
    tokens_file: Path | None = Field(
        default=None,
        description="Bearer-token registry (SHA-256 only); default data_dir/tokens.json.",
    )
    key_file: Path | None = Field(
        default=None,
        description="Per-deployment secret for user-id HMACs; created on first start. "
        "Default data_dir/keys/deployment.key.",
    )
    policy_dir: Path | None = Field(
        default=None, description="Directory with redaction.yaml; default: the shipped policies."
    )
    # model backends
    backend: BackendName = Field(default="embedded", description="Which model backend serves.")
    model_dir: Path | None = Field(
        default=None,
        description="Hugging Face model directory for the embedded backend; "
        "default data_dir/models/bootstrap (built by `gristmill bootstrap-model`).",
    )
    model_name: str = Field(
        default="gristmill-base", description="Model id shown to clients and recorded."
    )
    prompt_family: PromptFamily = Field(
        default="auto", description="Prompt/FIM template; auto detects from the tokenizer."
    )
    device: str = Field(default="auto", description="torch device for the embedded backend.")
    max_context_tokens: int | None = Field(
        default=None, ge=16, description="Prompt+completion window; default: the model's own."
    )
    repetition_penalty: float = Field(
        default=1.0,
        ge=1.0,
        le=2.0,
        description="Penalty on tokens a choice already generated (tiny models loop; try 1.2).",
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads for the embedded model's matrix work (process-wide); "
        "default: half the cores. More threads than free cores makes small models slower: "
        "they fight the event loop and the redaction workers for the same cores.",
    )
    max_tokens_limit: int = Field(default=512, ge=1, description="Upper bound on max_tokens.")
    default_max_tokens: int = Field(default=64, ge=1, description="max_tokens when not given.")
    upstream_url: str | None = Field(
        default=None,
        description="Base URL of an OpenAI-compatible server, e.g. http://vllm:8000/v1.",
    )
    upstream_api_key: SecretStr | None = Field(default=None, description="Upstream bearer key.")
    upstream_model: str | None = Field(
        default=None, description="Model name sent upstream; default: model_name."
    )
    upstream_timeout_s: float = Field(default=60.0, gt=0, description="Upstream total timeout.")
    upstream_connect_timeout_s: float = Field(
        default=5.0, gt=0, description="Upstream connect timeout."
    )
    upstream_max_connections: int = Field(default=256, ge=1, description="Pooled connections.")
    # ingest
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Largest request body.")
    redaction_workers: int = Field(
        default_factory=lambda: max(1, min(4, (os.cpu_count() or 2) // 2)),
        ge=0,
        description="Redaction processes (default: half the cores, 1 to 4); 0 runs redaction "
        "in a thread of the gateway process, sharing its core with serving.",
    )
    redaction_timeout_s: float = Field(
        default=10.0, gt=0, description="Per-record redaction time limit."
    )
    policy_poll_s: float = Field(
        default=2.0,
        gt=0,
        description="How often a running gateway checks the policy store for a policy "
        "applied elsewhere (the CLI, another replica) and hot-reloads it.",
    )
    ingest_queue_size: int = Field(
        default=10_000, ge=1, description="Served suggestions waiting for redaction."
    )
    log_segment_bytes: int = Field(
        default=16 * 1024 * 1024, ge=4096, description="Log segment size."
    )
    land_interval_s: float = Field(
        default=5.0, gt=0, description="How often the log lands as Parquet."
    )
    compact_interval_s: float = Field(
        default=600.0, ge=0, description="How often small Parquet files are merged; 0 disables."
    )
    compact_grace_s: float = Field(
        default=300.0,
        ge=0,
        description="How long merged inputs stay on disk for queries that already listed them.",
    )
    bootstrap_steps: int = Field(
        default=800,
        ge=0,
        description="Pretraining steps when serve bootstraps a model (0: bootstrap_minutes "
        "decides). A step budget gives the same model whatever else shares the cores; 800 "
        "steps (~20 min on 2 cores) is the base the loop benchmark's targets are met on.",
    )
    bootstrap_minutes: float = Field(
        default=60.0,
        gt=0,
        description="Pretraining time cap when serve bootstraps a model (the budget when "
        "bootstrap_steps is 0). An interrupted build resumes from its checkpoint.",
    )
    # model versions (registry, canary)
    registry_poll_s: float = Field(
        default=2.0,
        gt=0,
        description="How often a running gateway checks the model registry for a promotion, "
        "rollback or retirement made elsewhere (the CLI, another replica) and switches models.",
    )
    canary_share: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Share of users (sticky by user hash) served the canary version.",
    )
    canary_confidence: float = Field(
        default=0.95,
        gt=0.5,
        lt=1.0,
        description="Confidence of the two-proportion test that promotes or rolls back a canary.",
    )
    canary_min_shown: int = Field(
        default=200,
        ge=1,
        description="Suggestions shown per arm (canary and active) before the canary is judged.",
    )
    canary_check_interval_s: float = Field(
        default=300.0,
        ge=0,
        description="How often the gateway judges the canary and acts on it; 0 turns the "
        "automatic check off (POST /v1/registry/canary/evaluate still runs it).",
    )
    upstream_adapter_dir: Path | None = Field(
        default=None,
        description="The model registry directory as the upstream model server (vLLM) sees it, "
        "for lora_path; default: the gateway's own path (a shared volume mounted alike).",
    )

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
        config_file = _config_file_from(init_settings, env_settings)
        if config_file is not None:
            if not config_file.is_file():
                raise ValueError(f"config_file: {config_file} does not exist")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.tokens_file is None:
            self.tokens_file = self.data_dir / "tokens.json"
        if self.key_file is None:
            self.key_file = self.data_dir / "keys" / "deployment.key"
        if self.policy_dir is None:
            self.policy_dir = Path(policies.__file__).parent
        if self.model_dir is None:
            self.model_dir = self.data_dir / "models" / "bootstrap"
        if self.backend == "openai_upstream" and not self.upstream_url:
            raise ValueError("upstream_url: required when backend is openai_upstream")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens: larger than max_tokens_limit")
        return self

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    @property
    def parquet_dir(self) -> Path:
        return self.data_dir / "parquet"

    @property
    def policy_store_dir(self) -> Path:
        """Every accepted redaction policy and the active pointer."""
        return self.data_dir / "policies"

    @property
    def audit_file(self) -> Path:
        """The hash-chained audit log."""
        return self.data_dir / "audit" / "audit.jsonl"

    @property
    def registry_dir(self) -> Path:
        """The model registry (versions, adapters, lineage)."""
        return self.data_dir / "models" / "registry"

    @property
    def policy_file(self) -> Path:
        assert self.policy_dir is not None
        return self.policy_dir / "redaction.yaml"


def _config_file_from(*sources: PydanticBaseSettingsSource) -> Path | None:
    for source in sources:
        value = source().get("config_file")
        if value:
            return Path(value)
    return None
