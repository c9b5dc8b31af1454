"""The schema of every config file, as pydantic models: which keys exist where and
what type each value has. A file is checked against its model before the loaders
build the frozen values the detection path uses; an unknown key is an error naming
file, line and key, with the closest known key ("did you mean"). Semantic checks
(regexes compile, thresholds ordered, ids unique) stay with the loaders."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, create_model, model_validator

from detector.behaviour.records import BehaviourSettings
from detector.config import ConfigError, YamlDocument, unknown_key


class Section(BaseModel):
    """A mapping in a config file: unknown keys are errors, values keep their YAML type
    (an integer where a number is asked is fine; a string or boolean is not)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# --- config/detector.yaml: runtime keys (read by agents/settings.py) -----------------
# What one worker process runs (docs/operations.md "Process roles"): everything, the
# ingest stage alone, or the entity shards alone.
Role = Literal["all", "ingest", "shards"]
ROLES: tuple[Role, ...] = typing.get_args(Role)
# How the Kafka clients connect (Kafka's own names for security.protocol and
# sasl.mechanism; docs/operations.md "Production Kafka").
KafkaProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

class RuntimeSettings(Section):
    """The worker's runtime keys at the top of the settings file. agents.settings
    builds its environment-aware `Settings` on these fields. Values are converted as
    pydantic-settings always did (`web_port: "6066"` is 6066)."""

    model_config = ConfigDict(extra="forbid", strict=False)

    kafka_bootstrap: str = "127.0.0.1:9092"
    app_id: str = "detector"
    role: Role = "all"
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=0, le=65535)
    web_enabled: bool = True
    rebalance_timeout_s: float = Field(30, gt=0)
    session_timeout_s: float = Field(45, gt=0)
    heartbeat_interval_s: float = Field(3, gt=0)
    ingest_max_records: int = Field(5000, gt=0)
    ingest_poll_timeout_ms: int = Field(100, ge=0)
    # Python's cyclic GC held off while the ingest stage decodes and scores a batch
    # (re-enabled after it; agents/ingest.py). false: the collector runs throughout.
    ingest_gc_hold: bool = True
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
    log_level: str = "info"
    # Production Kafka (docs/operations.md "Production Kafka"): every Kafka client of the
    # worker and the tools connects with these. SASL: PLAIN or SCRAM, the username and
    # password given as text (an environment variable, DETECTOR_KAFKA_SASL_PASSWORD) or
    # as a file holding it (`..._file`, a mounted secret). TLS: the CA bundle that signs
    # the brokers' certificates (else the system's), a client certificate and key for
    # mutual TLS, and the host name check (on unless turned off). Relative paths are
    # taken from the settings file's folder.
    kafka_security_protocol: KafkaProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_username_file: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: str | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    kafka_ssl_check_hostname: bool = True
    # The format of the input topic's (client-requests) messages: the native contract,
    # or an edge's log line turned into it by its adapter (detector/adapters/).
    input_format: Literal["native", "haproxy", "haproxy-3.1", "envoy", "cloudflare", "cloudfront",
                          "fastly", "nginx-njs"] = "native"

    @model_validator(mode="after")
    def _retry_bounds(self) -> RuntimeSettings:
        if self.produce_retry_initial_s > self.produce_retry_max_s:
            raise ValueError("produce_retry_initial_s must not exceed produce_retry_max_s")
        return self

    @model_validator(mode="after")
    def _kafka_security(self) -> RuntimeSettings:
        protocol = self.kafka_security_protocol
        sasl = protocol.startswith("SASL_")
        if sasl:
            if self.kafka_sasl_mechanism is None:
                raise ValueError(f"kafka_security_protocol {protocol} needs kafka_sasl_mechanism "
                                 f"({', '.join(typing.get_args(SaslMechanism))})")
            for what in ("username", "password"):
                given = [k for k in (f"kafka_sasl_{what}", f"kafka_sasl_{what}_file") if getattr(self, k) is not None]
                if len(given) != 1:
                    raise ValueError(f"kafka_security_protocol {protocol} needs exactly one of kafka_sasl_{what} "
                                     f"and kafka_sasl_{what}_file" + (" (both are set)" if given else ""))
        else:
            stray = [k for k in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_username_file",
                                 "kafka_sasl_password", "kafka_sasl_password_file") if getattr(self, k) is not None]
            if stray:
                raise ValueError(f"{', '.join(stray)} set but kafka_security_protocol is {protocol} "
                                 "(SASL_PLAINTEXT or SASL_SSL use them)")
        if not protocol.endswith("SSL"):
            stray = [k for k in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
                     if getattr(self, k) is not None]
            if stray:
                raise ValueError(f"{', '.join(stray)} set but kafka_security_protocol is {protocol} "
                                 "(SSL or SASL_SSL use them)")
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("kafka_ssl_certfile and kafka_ssl_keyfile go together (mutual TLS)")
        return self


# --- config/detector.yaml: detection sections (read by detector/engine.py) -----------
class LimitsSection(Section):
    max_message_bytes: int | None = None
    max_batch_elements: int | None = None
    max_headers: int | None = None
    max_header_bytes: int | None = None
    max_field_chars: int | None = None
    dlq_copy_bytes: int | None = None


class RedactSection(Section):
    headers: list[Any] | None = None
    params: list[Any] | None = None


class ScoringSection(Section):
    suspicious: float
    malicious: float
    weights: dict[str, float]


# The two alert settings the behaviour engine fixes: alerts are raised per device and
# per account, and a record later than behaviour.allowed_lateness_s is dropped.
ALERT_ENTITY_TYPES = ("device", "account")


class AlertsSection(Section):
    window_s: int | None = None
    min_level: str | None = None
    min_count: int | None = None
    suspicious_min_count: int | None = None
    escalate_at: list[int] | None = None
    severity_by_count: dict[int, str] | None = None
    # Accepted for compatibility, aliases of what runs (docs/alerts.md): entity_types
    # must name device and account; allowed_lateness_s is behaviour.allowed_lateness_s.
    entity_types: list[str] | None = None
    allowed_lateness_s: float | None = None
    max_open_windows: int | None = None
    samples: int | None = None
    severity_by_code: dict[str, str] | None = None
    allowlist: list[Any] | None = None
    suppress_codes: list[str] | None = None


class EventTimeSection(Section):
    max_future_s: int | float | None = None


class VerdictsSection(Section):
    # all: one verdict per request (default); flagged: only suspicious and malicious
    # ones are written (for consumers that act on flagged requests alone)
    emit: Literal["all", "flagged"] | None = None


class FanoutSection(Section):
    window_s: float
    threshold: int


def _behaviour_section() -> type[Section]:
    """The `behaviour` section: one optional key per BehaviourSettings field (the
    dataclass holds the defaults and docs/detections.md explains them)."""
    spec: dict[str, Any] = {}
    for f in fields(BehaviourSettings):
        if f.name == "centroids":
            continue
        default = getattr(BehaviourSettings, f.name, None)
        kind: Any
        if is_dataclass(default):
            kind = FanoutSection
        elif isinstance(default, tuple):
            kind = list[Any]
        elif isinstance(default, bool) or not isinstance(default, (int, float)):
            kind = Any
        else:
            kind = float  # checked positive (and made int where the default is) by from_dict
        spec[f.name] = (kind | None, None)
    model: type[Section] = create_model("BehaviourSection", __base__=Section, **spec)
    return model


BehaviourSection = _behaviour_section()


class InputSection(Section):
    """The input topic's edge (docs/edges.md): the edge profile its records come
    from, and the edges a message's own `edge` field may name instead."""

    edge: str | None = None
    allowed_edges: list[str] | None = None


class DetectionSettings(Section):
    profiles_dir: str
    edges_dir: str | None = None
    default_profile: str | None = None
    devices_dir: str | None = None
    known_stacks: str | None = None
    country_centroids: str | None = None
    limits: LimitsSection | None = None
    redact: RedactSection | None = None
    scoring: ScoringSection
    alerts: AlertsSection | None = None
    event_time: EventTimeSection | None = None
    verdicts: VerdictsSection | None = None
    input: InputSection | None = None
    behaviour: BehaviourSection | None = None  # type: ignore[valid-type]
    # agents/webhooks/config.py checks each endpoint against WebhookEndpoint
    webhooks: list[Any] | dict[str, Any] | None = None


class SettingsFile(RuntimeSettings, DetectionSettings):
    """config/detector.yaml: the runtime keys and the detection sections (each
    section a strict model of its own)."""

    model_config = ConfigDict(extra="forbid", strict=False)


class WebhookEndpoint(Section):
    """One entry of the `webhooks` section (agents/webhooks/config.py builds the Endpoint)."""

    name: str | None = None  # the key, when the section maps names to endpoints
    url: str
    secret: dict[str, Any] | None = None
    format: str | None = None
    min_severity: str | None = None
    codes: list[Any] | None = None
    entity_types: list[Any] | None = None
    timeout_s: float | None = None
    max_attempts: int | None = None
    concurrency: int | None = None
    backoff_s: float | None = None
    backoff_max_s: float | None = None
    breaker_failures: int | None = None
    breaker_reset_s: float | None = None
    repeat_interval_s: float | None = None
    allow_addresses: list[Any] | None = None
    deny_private: bool | None = None


# --- config/profiles/*.yaml (read by detector/profile.py) ---------------------------
class _Match(Section):
    user_agent_prefix: str


class _UserAgent(Section):
    pattern: str
    example: str | None = None


class _Version(Section):
    version: str | int | float
    codes: list[Any]
    status: str
    keys: list[Any] | None = None
    released: Any = None


class _Key(Section):
    id: str
    status: str | None = None
    secret: Any = None  # {env: NAME}, {file: PATH} or {demo: VALUE}


class _Signing(Section):
    header: str
    format: str
    timestamp_header: str
    canonical: list[Any]
    separator: str | None = None
    max_skew_s: float
    keys: list[_Key]


class _IdFormat(Section):
    regex: str | None = None
    uuid: Any = None


class _IdSource(Section):
    header: str | None = None
    param: str | None = None
    format: _IdFormat | None = None


class _ValueRule(Section):
    one_of: Any = None
    pattern: str | None = None
    deny: list[Any] | None = None  # constants hard-coded in known libraries


class _Consistency(Section):
    rule: str
    a: str
    b: str
    algorithm: str | None = None
    length: int | None = None
    prefix: str | None = None


class _When(Section):
    classes: list[Any] | None = None  # endpoint classes ("none": a path in no class)
    methods: list[Any] | None = None
    authenticated: bool | None = None


class _Presence(Section):
    when: _When | None = None
    required: list[Any] | None = None
    forbidden: list[Any] | None = None


class _BodyPresence(_Presence):
    encodings: list[Any] | None = None


class _Clock(Section):
    header: str
    unit: str | None = None
    max_skew_s: float


class _BodySignature(Section):
    marker: str | None = None
    hmac: bool | None = None


class _Body(Section):
    encodings: list[Any] | None = None
    envelope: str | None = None
    signature: _BodySignature | None = None
    fields: dict[str, _ValueRule] | None = None
    rules: list[_BodyPresence] | None = None


class _Headers(Section):
    order: list[Any]
    required: list[Any] | None = None
    forbidden: list[Any] | None = None
    ignore_prefixes: list[Any] | None = None
    name_case: str | None = None
    values: dict[str, _ValueRule] | None = None
    consistency: list[_Consistency] | None = None
    rules: list[_Presence] | None = None
    clock: list[_Clock] | None = None


class _Ja4(Section):
    value: str
    min_version: Any = None
    max_version: Any = None
    variant: str | None = None  # full, resumed or quic


class _Tls(Section):
    required: bool | None = None
    ja4: list[_Ja4]
    alpn_first: str | None = None


class _Transport(Section):
    http_versions: list[Any]
    h2_fingerprints: list[Any] | None = None


class _Attestation(Section):
    required: bool | None = None
    providers: list[Any] | None = None
    app_recognition: list[Any] | None = None
    device_recognition: str | None = None
    max_token_age_s: float | None = None


class _Network(Section):
    hosting: bool | None = None
    locale_country: bool | None = None


class _Scope(Section):
    hosts: list[Any] | None = None
    path_prefixes: list[Any] | None = None
    coalesce_hosts: list[Any] | None = None


class ProfileFile(Section):
    name: str
    app_name: str
    platform: str
    match: _Match
    user_agent: _UserAgent
    versions: list[_Version]
    signing: _Signing | None = None
    ids: dict[str, _IdSource] | None = None
    headers: _Headers | None = None
    tls: _Tls | None = None
    transport: _Transport | None = None
    attestation: _Attestation | None = None
    network: _Network | None = None
    endpoints: dict[str, Any] | None = None
    body: _Body | None = None
    scope: _Scope | None = None


# --- config/edges/*.yaml (read by detector/edges.py) ---------------------------------
class _EdgeHeaders(Section):
    order: bool  # names in the order received
    case: bool  # names in the case sent
    names: Literal["all", "some"]  # every name sent, or only those the edge's log format names


class _EdgeTls(Section):
    client_hello: bool  # the raw ClientHello (the detector computes JA3 and JA4)
    ja3: bool
    ja4: Literal["full", "partial", "none"]  # partial: docs/contracts.md "Partial JA4"


class EdgeFile(Section):
    name: str
    description: str
    versions: str
    headers: _EdgeHeaders
    tls: _EdgeTls
    h2_fingerprint: bool
    body: bool  # body_sha256 and body_size (what a signed body needs)
    body_text: bool = False  # the body itself, as the contract's `body` object (what body rules need)
    enrichment: list[Literal["asn", "hosting", "country", "attestation"]]
    allowed_lateness_s: float = Field(ge=0)
    notes: str | None = None


# --- config/devices/ (read by detector/devices/) -----------------------------------
class _SocVendor(Section):
    hardware: list[Any]
    soc: list[Any]
    arch: str | None = None


class _Plausibility(Section):
    dpi_low_factor: float | None = None
    dpi_high_factor: float | None = None


class ModelEntry(Section):
    model: str
    source: str
    manufacturer: str | None = None
    brand: str | None = None
    name: str | None = None
    device: list[Any] | None = None
    hardware: list[Any] | None = None
    soc: str | None = None
    abis: list[Any] | None = None
    dpi: list[Any] | None = None
    dpi_exhaustive: bool | None = None
    resolutions: list[Any] | None = None
    sdk_min: int | None = None
    sdk_max: int | None = None
    popularity: float | None = None
    note: str | None = None


class ModelsFile(Section):
    version: int
    manufacturer_aliases: dict[str, Any] | None = None
    soc_vendors: dict[str, _SocVendor]
    plausibility: _Plausibility | None = None
    models: list[ModelEntry]


class MarkerEntry(Section):
    id: str
    family: str
    field: str
    match: str
    values: list[Any]
    strength: str
    citation: str
    case_sensitive: bool | None = None
    requires_arm_only_model: bool | None = None
    suppress_if_model_fits: bool | None = None
    unless: dict[str, Any] | None = None
    note: str | None = None


class EmulatorsFile(Section):
    version: int
    markers: list[MarkerEntry]


# --- config/fingerprints/known-stacks.yaml (detector/fingerprints/known.py) ----------
class KnownStacksFile(Section):
    ja4: dict[str, str] | None = None
    h2: dict[str, str] | None = None


# --- checking a document -------------------------------------------------------------
@dataclass(frozen=True)
class Override:
    """One value set from outside the file (an environment variable, a flag):
    `key` is its path in the file, `origin` names where it came from for errors."""

    key: tuple[Any, ...]
    value: Any
    origin: str


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[Override]) -> dict[str, Any]:
    """A copy of `data` with each override set at its key path (mappings on the way
    are copied, missing ones created; the override replaces what was there)."""
    out: dict[str, Any] = dict(data)
    for o in overrides:
        node = out
        for part in o.key[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[o.key[-1]] = o.value
    return out


def check(doc: YamlDocument, model: type[Section], data: Any = None, *, at: Sequence[str | int] = (),
          overrides: Sequence[Override] = (), keys_only: bool = False) -> Any:
    """Validate `data` (default: the whole document) against `model`; `at` is where
    `data` sits in the document. The first problem (in file order) becomes a
    ConfigError naming file, line and key; a value from an override names its origin.
    `keys_only`: raise for unknown keys only (the loaders run this first, so a typo is
    reported as such, then their own checks, then the full schema) and return None."""
    data = doc.data if data is None else data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
    if keys_only:  # and the values set from outside the file (the loaders cannot name their origin)
        errors = [e for e in errors if e["type"] == "extra_forbidden" or _overridden(e["loc"], overrides)]
        if not errors:
            return None
    # an unknown key first (a misspelled key also makes the real one "required"), then file order
    problems = [(e["type"] != "extra_forbidden", _problem(doc, model, at, e, overrides)) for e in errors]
    raise min(problems, key=lambda p: (p[0], p[1].line is None, p[1].line or 0))[1]


def _problem(doc: YamlDocument, model: type[Section], at: Sequence[str | int], err: Any,
             overrides: Sequence[Override]) -> ConfigError:
    loc = [p for p in err["loc"] if not _is_union_tag(p)]
    key = [*at, *loc]
    if err["type"] == "extra_forbidden":
        reason = unknown_key(loc[-1], _keys_at(model, loc[:-1]))
    elif err["type"] == "missing":
        reason = "is required"
    else:
        reason = err["msg"][0].lower() + err["msg"][1:]
        if "input" in err and not isinstance(err["input"], (dict, list)):
            reason += f", got {err['input']!r}"
    name = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in key).lstrip(".")
    for o in overrides:
        if tuple(str(k) for k in key[:len(o.key)]) == tuple(str(k) for k in o.key):
            return ConfigError(doc.path, name, f"{reason} (from {o.origin})")
    return ConfigError(doc.path, name, reason, doc.line_of(key))


def _overridden(loc: Sequence[Any], overrides: Sequence[Override]) -> bool:
    key = tuple(str(p) for p in loc if not _is_union_tag(p))
    return any(key[:len(o.key)] == tuple(str(k) for k in o.key) for o in overrides)


def _is_union_tag(part: Any) -> bool:
    # pydantic names the union member it tried in the error location ("list[any]", "int")
    return isinstance(part, str) and ("[" in part or part in ("int", "float", "str", "bool", "dict", "list"))


def _keys_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys allowed at `loc` (mapping keys and list indices) below `model`."""
    kind: Any = model
    for part in loc:
        kind = _unwrap(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            field = kind.model_fields.get(str(part))
            if field is None:
                return []
            kind = field.annotation
        else:
            origin = typing.get_origin(kind)
            args = typing.get_args(kind)
            if origin is list and args:
                kind = args[0]
            elif origin is dict and len(args) == 2:
                kind = args[1]
            else:
                return []
    kind = _unwrap(kind)
    return list(kind.model_fields) if isinstance(kind, type) and issubclass(kind, BaseModel) else []


def _unwrap(kind: Any) -> Any:
    """`X | None` -> X (the first non-None member of a union)."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        members = [a for a in typing.get_args(kind) if a is not type(None)]
        return members[0] if members else kind
    return kind


def field_kind(model: type[BaseModel], key: Sequence[str]) -> tuple[Literal["field", "entry"], Any] | None:
    """What `key` (a path of lower-case names) addresses below `model`: a declared
    field ("field") or an entry of a free mapping ("entry"), with its annotation;
    None when there is no such key."""
    kind: Any = model
    how: Literal["field", "entry"] = "field"
    for part in key:
        kind = _unwrap(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            field = kind.model_fields.get(part)
            if field is None:
                return None
            kind, how = field.annotation, "field"
        elif typing.get_origin(kind) is dict and len(typing.get_args(kind)) == 2:
            kind, how = typing.get_args(kind)[1], "entry"
        else:
            return None
    return how, kind


def is_model(kind: Any) -> bool:
    kind = _unwrap(kind)
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def is_string(kind: Any) -> bool:
    return _unwrap(kind) is str


__all__ = ["SettingsFile", "RuntimeSettings", "DetectionSettings", "ProfileFile", "ModelsFile", "EmulatorsFile",
           "KnownStacksFile", "VerdictsSection", "EdgeFile", "InputSection",
           "WebhookEndpoint", "Override", "apply_overrides", "check",
           "ALERT_ENTITY_TYPES"]
