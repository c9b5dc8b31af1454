"""Runtime settings of the worker: one frozen model read from `config/detector.yaml`
(or `--config`), overridden by `DETECTOR_*` environment variables (12-factor).
The detection sections of the same file are read by `detector.engine`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from detector.config import ConfigError
from detector.engine import DEFAULT_CONFIG

CONFIG_ENV = "DETECTOR_CONFIG"


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the runtime keys from the settings YAML (detection sections are ignored)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path):
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(self.path, "", f"cannot read settings file: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(self.path, "", f"invalid YAML: {exc}") from None
        return {k: v for k, v in data.items() if k in self.settings_cls.model_fields}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DETECTOR_", frozen=True, extra="ignore")

    config: Path = DEFAULT_CONFIG
    kafka_bootstrap: str = "127.0.0.1:9092"
    app_id: str = "detector"
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=0, le=65535)
    web_enabled: bool = True
    rebalance_timeout_s: float = Field(30, gt=0)
    session_timeout_s: float = Field(45, gt=0)
    heartbeat_interval_s: float = Field(3, gt=0)
    ingest_max_records: int = Field(5000, gt=0)
    ingest_poll_timeout_ms: int = Field(100, ge=0)
    topic_partitions: int = Field(4, gt=0)
    state_flush_interval_s: float = Field(2.0, gt=0)  # behaviour state snapshot cadence
    # SIGTERM/SIGINT: the graceful stop gets this long, then the process exits anyway
    shutdown_grace_s: float = Field(10.0, gt=0, le=600)
    topic_replication: int = Field(1, gt=0)
    # Broker faults (docs/operations.md): the ingest stage probes the broker (metadata)
    # every broker_check_interval_s, is not ready after broker_unready_failures
    # consecutive failures, and retries a failed produce with exponential backoff from
    # produce_retry_initial_s up to produce_retry_max_s (with jitter), without end.
    broker_check_interval_s: float = Field(1.0, gt=0, le=60)
    broker_unready_failures: int = Field(2, ge=1, le=100)
    produce_retry_initial_s: float = Field(0.2, gt=0, le=60)
    produce_retry_max_s: float = Field(10.0, gt=0, le=600)

    @model_validator(mode="after")
    def _retry_bounds(self) -> Settings:
        if self.produce_retry_initial_s > self.produce_retry_max_s:
            raise ValueError("produce_retry_initial_s must not exceed produce_retry_max_s")
        return self
    log_level: str = "info"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
        init = getattr(init_settings, "init_kwargs", {})
        if init.get("config"):
            path = Path(init["config"])
        return (init_settings, env_settings, _YamlSource(settings_cls, path))

    def masked(self) -> dict[str, Any]:
        """For logs: every value (no secrets live here; keys live in profiles)."""
        return {k: str(v) for k, v in self.model_dump().items()}


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    kwargs = dict(overrides)
    if config is not None:
        kwargs["config"] = Path(config)
    try:
        return Settings(**kwargs)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        path = Path(kwargs.get("config") or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
        env = f"DETECTOR_{key.upper()}"
        if key in kwargs or env in os.environ:  # an override, not the file's value
            raise ConfigError(path, key, f"{err['msg']} (from {'the command line' if key in kwargs else env})") from None
        raise ConfigError(path, key, err["msg"], line=_yaml_line(path, key)) from None


def _yaml_line(path: Path, key: str) -> int | None:
    from detector.config import node_line

    try:
        return node_line(yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader), [key])
    except (OSError, yaml.YAMLError):
        return None
