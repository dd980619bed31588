"""Settings: one object built once at start-up (file + OFFERDESK_* environment), passed down.

Nothing below the CLI reads the environment. Secrets are read from files under the data
directory (created on first start) or from the environment, and are never logged.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretBytes, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.tls import ClientTls, ServerTls

DEFAULT_DATA_DIR = Path("var")


class Secrets(BaseModel):
    """Keys for keyed hashes. Losing them breaks holdout stability and ticket-hash lookups."""

    model_config = {"frozen": True}

    #: keys ticket ids, request keys and billing transaction ids (HMAC-SHA256, domain separated)
    hash_key: SecretBytes
    #: keys the holdout bucket of a customer; kept apart so it can be rotated on its own
    holdout_key: SecretBytes

    @field_validator("hash_key", "holdout_key")
    @classmethod
    def _long_enough(cls, v: SecretBytes) -> SecretBytes:
        if len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 bytes (32 hex characters)")
        return v


class DirectoryPublication(BaseModel):
    """Copy each signed checkpoint into a directory (mount one that is not on this host)."""

    model_config = {"extra": "forbid", "frozen": True}
    kind: Literal["directory"]
    path: Path


class GitPublication(BaseModel):
    """Commit each signed checkpoint to a git work tree, and push it if a remote is named."""

    model_config = {"extra": "forbid", "frozen": True}
    kind: Literal["git"]
    repo: Path
    remote: str | None = None


class WebhookPublication(BaseModel):
    """POST each signed checkpoint to a URL, HMAC-signed when a secret is given."""

    model_config = {"extra": "forbid", "frozen": True}
    kind: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    #: hex secret for the X-Offerdesk-Signature header; never logged
    secret: SecretStr | None = None
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)


Publication = Annotated[
    DirectoryPublication | GitPublication | WebhookPublication, Field(discriminator="kind")
]


class AuditSettings(BaseModel):
    """Signed checkpoints, where they are published, and the live audit API."""

    model_config = {"extra": "forbid", "frozen": True}

    #: sign a checkpoint once this many records have been added since the last one ...
    checkpoint_every_records: int = Field(default=1000, ge=1)
    #: ... or once this many seconds have passed with any new record (and at clean shutdown)
    checkpoint_every_seconds: float = Field(default=60.0, gt=0)
    #: the log's identity in every checkpoint (C2SP origin: no spaces); default: a random
    #: `offerdesk.local/log/<hex>` chosen when the first signing key is made
    origin: str | None = Field(default=None, pattern=r"^[!-~]{1,200}$")
    #: Ed25519 signing keys; default data_dir/secrets/signing. Keep them apart from the
    #: database: on another volume, or better, readable only by the service's user.
    signing_key_dir: Path | None = None
    #: the append-only checkpoint file; default data_dir/checkpoints.jsonl
    checkpoint_path: Path | None = None
    #: publication points off this host, so the key holder alone cannot re-sign history
    publish: list[Publication] = Field(default_factory=list)
    #: bearer token of the read-only audit API (hex or any 32+ characters); when unset it is
    #: read from (or created in) data_dir/secrets/audit-api.token
    api_token: SecretStr | None = None
    #: bearer token of the audit admin API (erasure, retention cuts); when unset it is read
    #: from (or created in) data_dir/secrets/audit-admin.token. Never the same as api_token.
    admin_token: SecretStr | None = None
    #: days each kind of record is kept before a retention cut removes its content (its
    #: place in the chain stays); a kind not listed is kept for good (the default: all).
    #: deployment, erasure, consent and retention records are never cut; decision and
    #: outcome must outlive the contact policy's longest window (checked at each cut).
    #: See docs/compliance.md#retention.
    retention_days: dict[str, int] = Field(default_factory=dict)
    #: how often the running service applies retention_days (when any is set)
    retention_every_hours: float = Field(default=24.0, gt=0)

    @field_validator("retention_days")
    @classmethod
    def _retention(cls, v: dict[str, int]) -> dict[str, int]:
        from audit.records import check_kind
        from audit.retention import check_days

        for kind in v:
            check_kind(kind)
        check_days(v)
        return v


class PromotionSettings(BaseModel):
    """What `offerdesk promote` asks of a candidate model (docs/retraining.md#the-gate)."""

    model_config = ConfigDict(extra="forbid")

    #: the candidate may be at most this share worse than the live model, at the 95% lower
    #: bound of the doubly robust estimate of their difference
    max_regression: float = Field(default=0.05, ge=0, le=1)
    #: the evidence must come from at least this many logged treated decisions
    min_decisions: int = Field(default=1000, ge=1)
    #: at most this share of the candidate's choices may be actions the logging policy never took
    max_unsupported: float = Field(default=0.10, ge=0, le=1)
    #: latency budget of one decision's model work, measured on logged decisions: scoring
    #: every candidate with both models, and exact SHAP of the chosen one (p99, ms)
    score_p99_ms: float = Field(default=6.0, gt=0)
    explain_p99_ms: float = Field(default=1.0, gt=0)


class TelemetrySettings(BaseModel):
    """Where metrics and traces go: nowhere unless named (docs/operations.md#telemetry)."""

    model_config = ConfigDict(extra="forbid")

    exporter: Literal["none", "prometheus", "otlp"] = "none"
    #: HOST:PORT of the Prometheus scrape endpoint (/metrics); loopback unless changed
    prometheus_listen: str = "127.0.0.1:9464"
    #: OTLP/HTTP collector base URL; /v1/metrics and /v1/traces are appended
    otlp_endpoint: str = "http://127.0.0.1:4318"
    export_interval_seconds: float = Field(default=15.0, gt=0)
    service_name: str = "offerdesk"

    @field_validator("prometheus_listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9464")
        return v


class Settings(BaseSettings):
    """Everything the service, CLI and demo are configured by."""

    model_config = SettingsConfigDict(
        env_prefix="OFFERDESK_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = DEFAULT_DATA_DIR
    #: gRPC listen address: loopback only unless an operator says otherwise
    listen: str = "127.0.0.1:50051"
    #: worker threads of the gRPC server
    workers: int = Field(default=8, ge=1, le=256)
    #: load shedding: calls in flight (running or waiting for a worker) beyond this are
    #: answered RESOURCE_EXHAUSTED at once, so accepted calls keep their latency
    max_concurrent_rpcs: int = Field(default=64, ge=1, le=10_000)
    #: how often the in-memory profile copy is refreshed from the profile source
    profile_refresh_seconds: float = Field(default=60.0, gt=0)
    #: a load of the profile source (at start or a refresh) that takes longer fails: the start
    #: stops with a clear message, a refresh keeps the previous copy
    profile_timeout_seconds: float = Field(default=60.0, gt=0)
    #: how often the server checks whether the active model or catalog changed
    reload_poll_seconds: float = Field(default=2.0, gt=0)
    #: profile source: a file DuckDB reads by path (Parquet by default) for each table;
    #: default: the simulator's Parquet files under data_dir/profiles
    profiles_path: Path | None = None
    identities_path: Path | None = None
    #: hex keys; when unset they are read from (or created in) data_dir/secrets
    hash_key: SecretStr | None = None
    holdout_key: SecretStr | None = None
    audit: AuditSettings = Field(default_factory=AuditSettings)
    promotion: PromotionSettings = Field(default_factory=PromotionSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    #: TLS (and with client_ca_file, mTLS) for the gRPC port; plaintext when unset
    tls: ServerTls | None = None
    #: how offerdesk's own commands reach a running service that speaks TLS
    client_tls: ClientTls | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:50051")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)

    # -- derived paths (one place that names every file the service owns) -----------------
    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.duckdb"

    @property
    def vault_path(self) -> Path:
        return self.data_dir / "vault.sqlite"

    @property
    def registry_dir(self) -> Path:
        return self.data_dir / "registry"

    @property
    def signing_key_dir(self) -> Path:
        return self.audit.signing_key_dir or self.secrets_dir / "signing"

    @property
    def checkpoint_path(self) -> Path:
        return self.audit.checkpoint_path or self.data_dir / "checkpoints.jsonl"

    @property
    def export_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def profile_dir(self) -> Path:
        return self.data_dir / "profiles"

    @property
    def profiles_source(self) -> Path:
        return self.profiles_path or self.profile_dir / "customers.parquet"

    @property
    def identities_source(self) -> Path:
        return self.identities_path or self.profile_dir / "identities.parquet"

    def load_secrets(self) -> Secrets:
        """The hash keys: from settings (OFFERDESK_HASH_KEY, ...) or files created once."""
        return Secrets(
            hash_key=SecretBytes(_secret(self.secrets_dir / "hash.key", self.hash_key)),
            holdout_key=SecretBytes(_secret(self.secrets_dir / "holdout.key", self.holdout_key)),
        )

    def audit_api_token(self) -> bytes:
        """The audit API's bearer token: from settings or a file created once (0600)."""
        return self._token("api_token", self.audit.api_token, "audit-api.token")

    def audit_admin_token(self) -> bytes:
        """The audit admin API's bearer token (erasure), never the read-only one."""
        token = self._token("admin_token", self.audit.admin_token, "audit-admin.token")
        if token == self.audit_api_token():
            raise ValueError("audit.admin_token must differ from audit.api_token")
        return token

    def _token(self, name: str, given: SecretStr | None, file: str) -> bytes:
        if given is not None:
            token = given.get_secret_value().encode()
        else:
            token = _secret(self.secrets_dir / file, None).hex().encode()
        if len(token) < 32:
            raise ValueError(f"audit.{name} must be at least 32 characters")
        return token


def _secret(path: Path, given: SecretStr | None) -> bytes:
    if given is not None:
        return bytes.fromhex(given.get_secret_value())
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: explicit overrides > OFFERDESK_* environment > YAML file > defaults."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        loaded = yaml.safe_load(config_file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: settings file must be a mapping")
        file_values = loaded
    env = Settings()  # environment and defaults
    merged = {**file_values, **env.model_dump(exclude_unset=True), **overrides}
    return Settings(**merged)
