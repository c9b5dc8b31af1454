"""Settings, read one way: the settings file (`config/detector.yaml`, `--config`,
`$DETECTOR_CONFIG`; a file or the directory holding it) checked against
`detector.config.schema.SettingsFile`, with `DETECTOR_*` environment variables over it
(12-factor). `load_settings` gives the worker's runtime settings, `load_detection`
the detection config; both apply the same overrides, and the shell resolves the
profiles' secrets here so the core reads no environment."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from agents.kafkaclient import KafkaSecurity, build_security
from detector.config import ConfigError, YamlDocument
from detector.config.schema import (
    Override,
    RuntimeSettings,
    SettingsFile,
    apply_overrides,
    check,
    field_kind,
    is_model,
    is_string,
)
from detector.engine import DEFAULT_CONFIG, DetectionConfig

CONFIG_ENV = "DETECTOR_CONFIG"
ENV_PREFIX = "DETECTOR_"

# DETECTOR_* variables that are not settings: read by tools, tests, the image or the
# log set-up. They are never warned about (docs/operations.md "Settings" lists them).
RESERVED_ENV = {
    "DETECTOR_CONFIG": "the settings file or directory (like --config)",
    "DETECTOR_LOG_FORMAT": "json (default) or text log lines (agents/logs.py)",
    "DETECTOR_BUILD_COMMIT": "the commit shown by detector_build_info (set in the image)",
    "DETECTOR_IMAGE_TAG": "the image tag docker-compose runs",
    "DETECTOR_TEST_TIERS": "the test tiers tests/ run (tests/conftest.py)",
    "DETECTOR_DEMO_WEBHOOK_SECRET": "the demo's webhook signing secret (agents/tools/demo.py)",
}

# sections of the settings file no variable overrides (their readers take the file's
# text: webhooks with their secrets, see agents/webhooks/config.py)
NOT_OVERRIDABLE = frozenset({"webhooks"})

log = logging.getLogger("detector.config")
_warned: set[str] = set()


def resolve_config(config: Path | str | None = None) -> Path:
    """The settings file: `config` (a file, or a directory holding detector.yaml),
    else $DETECTOR_CONFIG, else config/detector.yaml."""
    path = Path(config) if config else Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    return path / "detector.yaml" if path.is_dir() else path


class _YamlSource(PydanticBaseSettingsSource):
    """The runtime keys of the settings file, after the whole file passed its schema."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path):
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data = read_settings_file(self.path)
        return {k: v for k, v in data.items() if k in self.settings_cls.model_fields}


class Settings(BaseSettings, RuntimeSettings):
    """The runtime keys (declared in RuntimeSettings, with the file's schema), each
    overridable by DETECTOR_<KEY>."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore", strict=False)

    config: Path = DEFAULT_CONFIG

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init = getattr(init_settings, "init_kwargs", {})
        path = resolve_config(init.get("config"))
        return (init_settings, env_settings, _YamlSource(settings_cls, path))

    def masked(self) -> dict[str, Any]:
        """For logs: every value, the Kafka password as `**********` (a SecretStr)."""
        return {k: str(v) for k, v in self.model_dump().items()}

    @cached_property
    def kafka(self) -> KafkaSecurity:
        """How the Kafka clients connect (agents/kafkaclient.py), resolved once: the
        secrets read from their files, one SSLContext. A ConfigError names the key."""
        return build_security(self)


def read_settings_file(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings file's data after its keys passed the schema (a misspelled key, or
    a wrong value set by a variable, stops here). Values are checked where they are
    read: the runtime keys by `Settings`, the detection sections by DetectionConfig."""
    doc = YamlDocument(path)
    if not isinstance(doc.data, dict):
        raise doc.error([], "the settings file must be a mapping")
    overrides = env_overrides(doc.data, environ)
    check(doc, SettingsFile, apply_overrides(doc.data, overrides), overrides=overrides, keys_only=True)
    return dict(doc.data)


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    kwargs = dict(overrides)
    path = resolve_config(config)
    kwargs["config"] = path
    try:
        return Settings(**kwargs)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if not key:  # a check across keys (a model validator): named by the first key its message names
            msg = str(err["msg"]).removeprefix("Value error, ")
            key = next((w for w in msg.replace(",", " ").split() if w in Settings.model_fields), "")
            env = f"{ENV_PREFIX}{key.upper()}"
            if key in overrides or env in os.environ or not key:
                source = "the command line" if key in overrides else env if key else "the settings"
                raise ConfigError(path, key, f"{msg} (from {source})") from None
            doc = YamlDocument(path)
            raise doc.error([key], msg) from None
        env = f"{ENV_PREFIX}{key.upper()}"
        if key in overrides or env in os.environ:  # an override, not the file's value
            source = "the command line" if key in overrides else env
            raise ConfigError(path, key, f"{err['msg']} (from {source})") from None
        doc = YamlDocument(path)
        raise doc.error([key], err["msg"]) from None


def load_detection(config: Path | str | None = None) -> DetectionConfig:
    """The detection config of the settings file, with the DETECTOR_<SECTION>__<KEY>
    overrides and the profiles' `{env: NAME}` secrets from this process's environment."""
    path = resolve_config(config)
    doc = YamlDocument(path)
    data = doc.data if isinstance(doc.data, dict) else {}
    return DetectionConfig.load(path, env_overrides(data), secrets=os.environ.get)


def env_overrides(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> list[Override]:
    """The DETECTOR_* variables that set keys of the settings file: DETECTOR_<KEY> for a
    top-level key, DETECTOR_<SECTION>__<KEY> below (one `__` per level; a key of a free
    mapping such as scoring.weights is matched with its dots written as `_`). Values
    are read as YAML (`0.9`, `true`, `[device, account]`); a string key takes the text
    as it is. The runtime keys are read by `Settings` itself; a variable that names
    no key (and is not reserved, nor a secret the file names) is warned about once,
    in one line."""
    environ = os.environ if environ is None else environ
    secrets = _secret_names(data)
    out: list[Override] = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV or name in secrets:
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if len(parts) == 1 and parts[0] in Settings.model_fields:
            continue  # a runtime key: pydantic-settings reads it
        key = _resolve(parts, data)
        if key is not None and str(key[0]) in NOT_OVERRIDABLE:
            if name not in _warned:
                _warned.add(name)
                log.warning("ignoring environment variable %s: %s is read from the file only (docs/operations.md "
                            "\"Settings\")", name, key[0])
            continue
        if key is None:
            if name not in _warned:
                _warned.add(name)
                log.warning("ignoring environment variable %s: it names no setting (docs/operations.md \"Settings\")",
                            name)
            continue
        found = field_kind(SettingsFile, [str(k) for k in key])
        kind = found[1] if found is not None else None
        value: Any = raw if is_string(kind) and not is_model(kind) else _yaml_value(raw)
        out.append(Override(tuple(key), value, name))
    return out


def _secret_names(node: Any) -> set[str]:
    """The variables the file names as secrets (`{env: NAME}`): not settings either."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {str(node["env"])}
        return set().union(*(_secret_names(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_secret_names(v) for v in node)) if node else set()
    return set()


def _resolve(parts: list[str], data: Any) -> list[Any] | None:
    """The file key path a variable's parts name, or None. A part below a free
    mapping (scoring.weights, alerts.severity_by_code) must name a key the file
    has, its dots written as `_` (`ua_missing` is `ua.missing`)."""
    key: list[Any] = []
    node: Any = data
    for part in parts:
        found = field_kind(SettingsFile, [*key, part])
        if found is None:
            return None
        entry: Any = part
        if found[0] == "entry":
            existing = {str(k).lower().replace(".", "_"): k for k in node} if isinstance(node, dict) else {}
            if part not in existing:
                return None
            entry = existing[part]
        key.append(entry)
        node = node.get(entry) if isinstance(node, dict) else None
    return key or None


def _yaml_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
