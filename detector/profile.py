"""Client profiles: what the official app *is* (user-agent grammar, version table,
signing scheme, where its ids live), loaded from YAML under `config/profiles/` and
validated into frozen values. Checks compare requests against these facts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from detector.config import ConfigError, YamlDocument, require
from detector.config.schema import ProfileFile, check
from detector.scope import Scope, normalise_host, normalise_path

# A profile's `{env: NAME}` signing secret is resolved by the shell (agents/ passes
# the process environment's look-up): NAME -> value, or None when it is not set.
SecretResolver = Callable[[str], str | None]


def no_secrets(name: str) -> str | None:
    """The resolver of a caller that provides no environment: every NAME is unset."""
    return None

VersionStatus = Literal["current", "supported", "retired"]
_STATUSES = ("current", "supported", "retired")


@dataclass(frozen=True, slots=True)
class UserAgentGrammar:
    pattern: re.Pattern[str]
    example: str | None
    # Named groups the checks rely on; a profile's grammar must define them.
    REQUIRED_FIELDS = ("app_version", "version_code")

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.pattern.groupindex)


@dataclass(frozen=True, slots=True)
class AppVersion:
    version: str
    codes: frozenset[int]
    status: VersionStatus
    keys: frozenset[str]  # signing key ids this build carries
    released: str | None = None

    @property
    def sort_key(self) -> tuple[int, ...]:
        return version_key(self.version)


def signing_key_for(profile: ClientProfile, version: AppVersion) -> str | None:
    """The key a genuine build of `version` signs with: its newest active key."""
    if profile.signing is None:
        return None
    active = sorted(k for k in version.keys if profile.signing.keys[k].status == "active")
    return active[-1] if active else (sorted(version.keys)[-1] if version.keys else None)


def version_key(version: str) -> tuple[int, ...]:
    """Numeric ordering of dotted versions; non-numeric parts sort as 0."""
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


@dataclass(frozen=True, slots=True)
class SigningKey:
    key_id: str
    secret: bytes = field(repr=False)
    status: Literal["active", "retired"]
    demo: bool  # the secret is the profile's published demo key, not a real secret


@dataclass(frozen=True, slots=True)
class SigningScheme:
    """Where the request signature lives and how the app computes it:
    HMAC-SHA256 over the canonical string made of `canonical` parts joined by
    `separator`. Parts: method, path, query, body_sha256, header:<name>, param:<name>."""

    header: str
    format: re.Pattern[str]  # named groups key_id and mac
    timestamp_header: str
    canonical: tuple[str, ...]
    separator: str
    max_skew_s: float
    keys: Mapping[str, SigningKey]


@dataclass(frozen=True, slots=True)
class IdSource:
    header: str | None = None
    param: str | None = None
    regex: re.Pattern[str] | None = None  # the format the app gives this id
    uuid_version: int | None = None


@dataclass(frozen=True, slots=True)
class ValueRule:
    one_of: frozenset[str] | None = None
    pattern: re.Pattern[str] | None = None
    # constants hard-coded in known libraries: a value here is its own signal
    # (headers.denylisted_value, body.denylisted_value), whatever one_of/pattern say
    deny: frozenset[str] = frozenset()

    def denied(self, value: str) -> bool:
        return value in self.deny

    def accepts(self, value: str) -> bool:
        if self.one_of is not None and value not in self.one_of:
            return False
        return self.pattern is None or self.pattern.fullmatch(value) is not None

    def describe(self) -> str:
        if self.one_of is not None:
            return "one of " + ", ".join(sorted(self.one_of))
        return f"matching {self.pattern.pattern if self.pattern else ''}"


@dataclass(frozen=True, slots=True)
class ConsistencyRule:
    """Two fields that must agree when both are present. Fields are addressed as
    header:<name>, param:<name>, ua:<grammar field> or request:<field>."""

    rule: Literal["equal", "locale", "checksum"]
    a: str
    b: str
    algorithm: str | None = None  # checksum: a hashlib name, or "charsum"
    length: int | None = None  # checksum: leading hex digits
    prefix: str = ""  # checksum: the literal the value starts with

    def expected(self, b: str) -> str:
        """The checksum of `b` as the app writes it: `prefix` + the leading `length`
        hex digits of its digest, or (`charsum`) + the decimal sum of its characters'
        code points."""
        if self.algorithm == "charsum":
            return self.prefix + str(sum(map(ord, b)))
        import hashlib

        return self.prefix + hashlib.new(self.algorithm or "sha256", b.encode()).hexdigest()[: self.length or None]


@dataclass(frozen=True, slots=True)
class Condition:
    """Where a conditional rule applies: the request's endpoint class is one of
    `classes` (profile `endpoints`; "none": a path in no class), its method one of
    `methods`, and it is authenticated (carries an account id) or not. A part that is
    None holds always."""

    classes: frozenset[str] | None = None
    methods: frozenset[str] | None = None
    authenticated: bool | None = None

    def holds(self, endpoint_class: str | None, method: str, authenticated: bool) -> bool:
        return ((self.classes is None or (endpoint_class or "none") in self.classes)
                and (self.methods is None or method.upper() in self.methods)
                and (self.authenticated is None or self.authenticated == authenticated))

    def describe(self) -> str:
        parts = []
        if self.classes is not None:
            parts.append("on " + "/".join(sorted(self.classes)) + " endpoints")
        if self.methods is not None:
            parts.append("for " + "/".join(sorted(self.methods)))
        if self.authenticated is not None:
            parts.append("when authenticated" if self.authenticated else "when not authenticated")
        return " ".join(parts) or "always"


@dataclass(frozen=True, slots=True)
class PresenceRule:
    """Names required or forbidden where `when` holds; `encodings` (body rules only):
    the body shapes allowed there (empty: the section's)."""

    when: Condition
    required: frozenset[str] = frozenset()
    forbidden: frozenset[str] = frozenset()
    encodings: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ClockHeader:
    """A header carrying the client's clock (epoch seconds or milliseconds): it must lie
    within `max_skew_s` of the request's event time (freshness where the app does not
    sign, so no signature binds the time)."""

    header: str
    unit: Literal["s", "ms"]
    max_skew_s: float


@dataclass(frozen=True, slots=True)
class BodySignature:
    """What the envelope's `<signature>` part is. `marker`: the literal the app sends
    since it stopped signing bodies (an HMAC there is a stale script's); `hmac`: a hex
    HMAC-SHA256 of the envelope's JSON with a signing key the claimed build carries."""

    marker: str | None = None
    hmac: bool = False
    stale: re.Pattern[str] = re.compile(r"[0-9a-f]{40,128}")  # what an HMAC looks like


@dataclass(frozen=True, slots=True)
class BodyRules:
    """The profile's `body:` section (docs/profiles.md)."""

    encodings: frozenset[str]  # form, json, signed_body, empty, other
    envelope: str
    signature: BodySignature | None
    fields: Mapping[str, ValueRule]
    rules: tuple[PresenceRule, ...]


@dataclass(frozen=True, slots=True)
class HeaderRules:
    order: tuple[str, ...]
    required: frozenset[str]
    forbidden: frozenset[str]
    ignore_prefixes: tuple[str, ...]
    name_case: Literal["lower", "any"]
    values: Mapping[str, ValueRule]
    consistency: tuple[ConsistencyRule, ...]
    rules: tuple[PresenceRule, ...] = ()  # required/forbidden where a condition holds
    clock: tuple[ClockHeader, ...] = ()

    @property
    def known(self) -> frozenset[str]:
        return frozenset(self.order)


Ja4Variant = Literal["full", "resumed", "quic"]
JA4_VARIANTS: tuple[Ja4Variant, ...] = ("full", "resumed", "quic")


@dataclass(frozen=True, slots=True)
class Ja4Rule:
    """One allowed JA4 of the app's stack. `variant`: the handshake it is: `full`, a
    `resumed` one (a TLS 1.3 PSK resumption or early data adds extensions, so the
    app's own stack has another JA4 there: listing it accepts the app's resumed hello
    and no other), or `quic` (HTTP/3: a JA4 starting with q, allowed only where
    transport.http_versions has 3)."""

    value: str
    min_version: tuple[int, ...] | None = None
    max_version: tuple[int, ...] | None = None
    variant: Ja4Variant = "full"

    def covers(self, version: str | None) -> bool:
        if version is None:
            return True
        key = version_key(version)
        return ((self.min_version is None or key >= self.min_version)
                and (self.max_version is None or key <= self.max_version))


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    required: bool
    ja4: tuple[Ja4Rule, ...]
    alpn_first: str | None


@dataclass(frozen=True, slots=True)
class TransportPolicy:
    http_versions: frozenset[str]
    h2_fingerprints: frozenset[str]


@dataclass(frozen=True, slots=True)
class AttestationPolicy:
    required: bool
    providers: frozenset[str]
    app_recognition: frozenset[str]
    device_recognition: str | None
    max_token_age_s: float | None


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    hosting: bool = False
    locale_country: bool = False


@dataclass(frozen=True, slots=True)
class ClientProfile:
    name: str
    app_name: str
    platform: str
    ua_prefix: str  # requests whose user agent starts with this claim to be this app
    user_agent: UserAgentGrammar
    versions: Mapping[str, AppVersion]
    signing: SigningScheme | None
    ids: Mapping[str, IdSource]  # entity type (device, account, session) -> where it lives
    headers: HeaderRules | None = None
    tls: TlsPolicy | None = None
    transport: TransportPolicy | None = None
    attestation: AttestationPolicy | None = None
    network: NetworkPolicy = NetworkPolicy()
    endpoints: Mapping[str, tuple[re.Pattern[str], ...]] = field(default_factory=dict)
    body: BodyRules | None = None
    source: str = ""
    # The API surface this profile judges (detector/scope.py); None: every request.
    scope: Scope | None = None

    def endpoint_class(self, path: str) -> str | None:
        for name, patterns in self.endpoints.items():
            for p in patterns:
                if p.match(path):
                    return name
        return None

    @property
    def newest_version(self) -> AppVersion:
        return max(self.versions.values(), key=lambda v: v.sort_key)

    @property
    def oldest_version(self) -> AppVersion:
        return min(self.versions.values(), key=lambda v: v.sort_key)


def _compile(doc: YamlDocument, key: list[str | int], pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise doc.error(key, f"invalid regular expression: {exc}") from None


def _secret(doc: YamlDocument, key: list[str | int], spec: Any, base: Path,
            secrets: SecretResolver) -> tuple[bytes, bool]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise doc.error(key, "must be one of {env: NAME}, {file: PATH} or {demo: VALUE}")
    ((kind, value),) = spec.items()
    if kind == "env":
        secret = secrets(str(value))
        if not secret:
            raise doc.error(key, f"environment variable {value} is not set")
        return secret.encode(), False
    if kind == "file":
        path = Path(str(value))
        path = path if path.is_absolute() else base / path
        try:
            return path.read_bytes().strip(), False
        except OSError as exc:
            raise doc.error(key, f"cannot read secret file {path}: {exc.strerror}") from None
    if kind == "demo":
        return str(value).encode(), True
    raise doc.error(key, f"unknown secret source {kind!r} (env, file or demo)")


def load_profile(path: Path, secrets: SecretResolver = no_secrets) -> ClientProfile:
    doc = YamlDocument(path)
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error([], "a profile must be a mapping")
    check(doc, ProfileFile, keys_only=True)
    profile = _build_profile(doc, path, data, secrets)
    check(doc, ProfileFile)  # what the builder leaves: value types
    return profile


def _build_profile(doc: YamlDocument, path: Path, data: dict[str, Any], secrets: SecretResolver) -> ClientProfile:
    name = require(doc, data, ["name"], str)
    ua = require(doc, data, ["user_agent"], dict)
    grammar = UserAgentGrammar(
        pattern=_compile(doc, ["user_agent", "pattern"], require(doc, ua, ["user_agent", "pattern"], str)),
        example=require(doc, ua, ["user_agent", "example"], str, optional=True),
    )
    for f in UserAgentGrammar.REQUIRED_FIELDS:
        if f not in grammar.pattern.groupindex:
            raise doc.error(["user_agent", "pattern"], f"must define the named group (?P<{f}>...)")
    if grammar.example is not None and not grammar.pattern.fullmatch(grammar.example):
        raise doc.error(["user_agent", "example"], "does not match user_agent.pattern")

    versions: dict[str, AppVersion] = {}
    vlist = require(doc, data, ["versions"], list)
    if not vlist:
        raise doc.error(["versions"], "must list at least one version")
    for i, v in enumerate(vlist):
        k: list[str | int] = ["versions", i]
        ver = str(require(doc, v, k + ["version"], (str, int, float)))
        codes = require(doc, v, k + ["codes"], list)
        if not codes or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
            raise doc.error(k + ["codes"], "must be a non-empty list of integer version codes")
        status = require(doc, v, k + ["status"], str)
        if status not in _STATUSES:
            raise doc.error(k + ["status"], f"must be one of {', '.join(_STATUSES)}, got {status!r}")
        key_ids = require(doc, v, k + ["keys"], list, optional=True, default=[])
        if ver in versions:
            raise doc.error(k + ["version"], f"version {ver} is listed twice")
        versions[ver] = AppVersion(ver, frozenset(codes), status, frozenset(map(str, key_ids)), v.get("released"))

    signing = None
    sg = require(doc, data, ["signing"], dict, optional=True)
    if sg is not None:
        keys_spec = require(doc, sg, ["signing", "keys"], list)
        keys: dict[str, SigningKey] = {}
        for i, ks in enumerate(keys_spec):
            k = ["signing", "keys", i]
            kid = require(doc, ks, k + ["id"], str)
            kstatus = require(doc, ks, k + ["status"], str, optional=True, default="active")
            if kstatus not in ("active", "retired"):
                raise doc.error(k + ["status"], "must be active or retired")
            secret, demo = _secret(doc, k + ["secret"], ks.get("secret"), path.parent, secrets)
            keys[kid] = SigningKey(kid, secret, kstatus, demo)
        fmt = _compile(doc, ["signing", "format"], require(doc, sg, ["signing", "format"], str))
        for g in ("key_id", "mac"):
            if g not in fmt.groupindex:
                raise doc.error(["signing", "format"], f"must define the named group (?P<{g}>...)")
        canonical = tuple(require(doc, sg, ["signing", "canonical"], list))
        for i, part in enumerate(canonical):
            if not (part in ("method", "path", "query", "body_sha256") or str(part).startswith(("header:", "param:"))):
                raise doc.error(["signing", "canonical", i], f"unknown canonical part {part!r}")
        signing = SigningScheme(
            header=require(doc, sg, ["signing", "header"], str).lower(),
            format=fmt,
            timestamp_header=require(doc, sg, ["signing", "timestamp_header"], str).lower(),
            canonical=canonical,
            separator=require(doc, sg, ["signing", "separator"], str, optional=True, default="\n"),
            max_skew_s=float(require(doc, sg, ["signing", "max_skew_s"], (int, float))),
            keys=keys,
        )
        for i, app in enumerate(versions.values()):
            unknown = app.keys - keys.keys()
            if unknown:
                raise doc.error(["versions", i, "keys"], f"unknown signing key ids: {', '.join(sorted(unknown))}")
            if app.status != "retired" and not any(keys[kid].status == "active" for kid in app.keys):
                raise doc.error(["versions", i, "keys"],
                                f"version {app.version} is {app.status} but carries no active key")

    ids: dict[str, IdSource] = {}
    for ent, spec in (require(doc, data, ["ids"], dict, optional=True, default={}) or {}).items():
        if not isinstance(spec, dict):
            raise doc.error(["ids", ent], "must be a mapping with header and/or param")
        id_fmt = spec.get("format") or {}
        if not isinstance(id_fmt, dict):
            raise doc.error(["ids", ent, "format"], "must be {regex: ...} or {uuid: VERSION}")
        regex = _compile(doc, ["ids", ent, "format", "regex"], id_fmt["regex"]) if "regex" in id_fmt else None
        uuid_version = id_fmt.get("uuid")
        if uuid_version is not None and (not isinstance(uuid_version, int) or not 1 <= uuid_version <= 8):
            raise doc.error(["ids", ent, "format", "uuid"], "must be a UUID version 1..8")
        ids[str(ent)] = IdSource(header=(spec.get("header") or "").lower() or None, param=spec.get("param"),
                                 regex=regex, uuid_version=uuid_version)

    headers = _header_rules(doc, data)
    if headers is not None and data.get("body") is None:
        for i, r in enumerate(headers.consistency):
            if r.a.startswith("body:") or r.b.startswith("body:"):
                raise doc.error(["headers", "consistency", i], "a body: field needs the profile's body: section")
    return ClientProfile(
        name=name,
        app_name=require(doc, data, ["app_name"], str),
        platform=require(doc, data, ["platform"], str),
        ua_prefix=require(doc, require(doc, data, ["match"], dict), ["match", "user_agent_prefix"], str),
        user_agent=grammar,
        versions=versions,
        signing=signing,
        ids=ids,
        headers=headers,
        tls=_tls_policy(doc, data),
        transport=_transport_policy(doc, data),
        attestation=_attestation_policy(doc, data),
        network=_network_policy(doc, data),
        endpoints=_endpoints(doc, data),
        body=_body_rules(doc, data, signing),
        source=str(path),
        scope=_scope(doc, data),
    )


def _names(doc: YamlDocument, obj: dict[str, Any], key: list[str | int], *, optional: bool = True) -> list[str]:
    items = require(doc, obj, key, list, optional=optional, default=[])
    for i, n in enumerate(items):
        if not isinstance(n, str) or not n:
            raise doc.error(key + [i], "must be a non-empty string")
    return [n.lower() for n in items]


_FIELD_KINDS = ("header:", "param:", "ua:", "request:", "body:")


def _header_rules(doc: YamlDocument, data: dict[str, Any]) -> HeaderRules | None:
    h = require(doc, data, ["headers"], dict, optional=True)
    if h is None:
        return None
    order = _names(doc, h, ["headers", "order"], optional=False)
    if len(set(order)) != len(order):
        raise doc.error(["headers", "order"], "lists a header twice")
    required = _names(doc, h, ["headers", "required"])
    for i, n in enumerate(required):
        if n not in order:
            raise doc.error(["headers", "required", i], f"{n} is required but not in headers.order")
    forbidden = _names(doc, h, ["headers", "forbidden"])
    for i, n in enumerate(forbidden):
        if n in order:
            raise doc.error(["headers", "forbidden", i], f"{n} is both forbidden and in headers.order")
    case = require(doc, h, ["headers", "name_case"], str, optional=True, default="any")
    if case not in ("lower", "any"):
        raise doc.error(["headers", "name_case"], "must be lower or any")
    values = _value_rules(doc, h, ["headers", "values"], lower=True)
    rules = []
    for i, spec in enumerate(require(doc, h, ["headers", "consistency"], list, optional=True, default=[])):
        k: list[str | int] = ["headers", "consistency", i]
        kind = require(doc, spec, k + ["rule"], str)
        if kind not in ("equal", "locale", "checksum"):
            raise doc.error(k + ["rule"], "must be equal, locale or checksum")
        a = require(doc, spec, k + ["a"], str)
        b = require(doc, spec, k + ["b"], str)
        for side, f in (("a", a), ("b", b)):
            if not f.startswith(_FIELD_KINDS):
                raise doc.error(k + [side], f"must start with one of {', '.join(_FIELD_KINDS)}")
        algorithm = spec.get("algorithm")
        if kind == "checksum":
            import hashlib

            if algorithm != "charsum" and algorithm not in hashlib.algorithms_guaranteed:
                raise doc.error(k + ["algorithm"],
                                f"must be a hashlib algorithm (e.g. sha256) or charsum, got {algorithm!r}")
        prefix = spec.get("prefix") or ""
        if (prefix or spec.get("length") is not None) and kind != "checksum":
            raise doc.error(k, "prefix and length belong to checksum rules")
        if algorithm == "charsum" and spec.get("length") is not None:
            raise doc.error(k + ["length"], "a charsum checksum has no length (it is a decimal sum)")
        rules.append(ConsistencyRule(kind, _lower_header(a), _lower_header(b), algorithm, spec.get("length"), prefix))
    prefixes = tuple(_names(doc, h, ["headers", "ignore_prefixes"]))
    presence = _presence_rules(doc, data, h, ["headers", "rules"], lower=True)
    clock = []
    for i, spec in enumerate(require(doc, h, ["headers", "clock"], list, optional=True, default=[])):
        k = ["headers", "clock", i]
        unit = require(doc, spec, k + ["unit"], str, optional=True, default="s")
        if unit not in ("s", "ms"):
            raise doc.error(k + ["unit"], f"must be s or ms, got {unit!r}")
        skew = float(require(doc, spec, k + ["max_skew_s"], (int, float)))
        if skew <= 0:
            raise doc.error(k + ["max_skew_s"], "must be positive")
        clock.append(ClockHeader(require(doc, spec, k + ["header"], str).lower(), unit, skew))
    return HeaderRules(tuple(order), frozenset(required), frozenset(forbidden), prefixes, case, values, tuple(rules),
                       presence, tuple(clock))


def _value_rules(doc: YamlDocument, parent: dict[str, Any], key: list[str | int], *,
                 lower: bool) -> dict[str, ValueRule]:
    values: dict[str, ValueRule] = {}
    for name, spec in (require(doc, parent, key, dict, optional=True, default={}) or {}).items():
        k: list[str | int] = key + [name]
        if not isinstance(spec, dict) or not ({"one_of", "pattern", "deny"} & spec.keys()):
            raise doc.error(k, "must be {one_of: [...]}, {pattern: REGEX} and/or {deny: [...]}")
        lists: dict[str, frozenset[str] | None] = {}
        for part in ("one_of", "deny"):
            items = spec.get(part)
            if items is not None and (not isinstance(items, list) or not all(isinstance(x, str) for x in items)):
                raise doc.error(k + [part], "must be a list of strings")
            lists[part] = frozenset(items) if items is not None else None
        pattern = _compile(doc, k + ["pattern"], spec["pattern"]) if "pattern" in spec else None
        values[str(name).lower() if lower else str(name)] = ValueRule(lists["one_of"], pattern,
                                                                      lists["deny"] or frozenset())
    return values


def _condition(doc: YamlDocument, data: dict[str, Any], spec: Any, key: list[str | int]) -> Condition:
    if spec is None:
        return Condition()
    if not isinstance(spec, dict):
        raise doc.error(key, "must be a mapping of classes, methods and/or authenticated")
    classes = require(doc, spec, key + ["classes"], list, optional=True)
    if classes is not None:
        known = set(map(str, (data.get("endpoints") or {}))) | {"none"}
        for i, c in enumerate(classes):
            if c not in known:
                raise doc.error(key + ["classes", i],
                                f"{c!r} is not an endpoint class (endpoints: {', '.join(sorted(known))})")
    methods = require(doc, spec, key + ["methods"], list, optional=True)
    if methods is not None and not all(isinstance(m, str) and m for m in methods):
        raise doc.error(key + ["methods"], "must be a list of HTTP methods")
    auth = require(doc, spec, key + ["authenticated"], bool, optional=True)
    return Condition(frozenset(map(str, classes)) if classes is not None else None,
                     frozenset(m.upper() for m in methods) if methods is not None else None, auth)


def _presence_rules(doc: YamlDocument, data: dict[str, Any], parent: dict[str, Any], key: list[str | int], *,
                    lower: bool, encodings: bool = False) -> tuple[PresenceRule, ...]:
    out = []
    for i, spec in enumerate(require(doc, parent, key, list, optional=True, default=[])):
        k: list[str | int] = key + [i]
        if not isinstance(spec, dict):
            raise doc.error(k, "must be a mapping {when: ..., required: [...], forbidden: [...]}")
        when = _condition(doc, data, spec.get("when"), k + ["when"])
        names: dict[str, frozenset[str]] = {}
        for part in ("required", "forbidden"):
            items = require(doc, spec, k + [part], list, optional=True, default=[])
            for j, n in enumerate(items):
                if not isinstance(n, str) or not n:
                    raise doc.error(k + [part, j], "must be a non-empty string")
            names[part] = frozenset(n.lower() if lower else n for n in items)
        both = names["required"] & names["forbidden"]
        if both:
            raise doc.error(k, f"{', '.join(sorted(both))} both required and forbidden")
        encs = _encodings(doc, spec, k + ["encodings"]) if encodings else frozenset()
        if not (names["required"] or names["forbidden"] or encs):
            raise doc.error(k, "must name required or forbidden fields" + (" or encodings" if encodings else ""))
        out.append(PresenceRule(when, names["required"], names["forbidden"], encs))
    return tuple(out)


_BODY_ENCODINGS = ("form", "json", "signed_body", "empty", "other")


def _encodings(doc: YamlDocument, parent: dict[str, Any], key: list[str | int]) -> frozenset[str]:
    items = require(doc, parent, key, list, optional=True, default=[])
    for i, e in enumerate(items):
        if e not in _BODY_ENCODINGS:
            raise doc.error(key + [i], f"must be one of {', '.join(_BODY_ENCODINGS)}, got {e!r}")
    return frozenset(items)


def _body_rules(doc: YamlDocument, data: dict[str, Any], signing: SigningScheme | None) -> BodyRules | None:
    """`body:` (docs/profiles.md): the request body's encodings, fields and rules."""
    b = require(doc, data, ["body"], dict, optional=True)
    if b is None:
        return None
    encodings = _encodings(doc, b, ["body", "encodings"])
    envelope = require(doc, b, ["body", "envelope"], str, optional=True, default="signed_body")
    signature = None
    sg = require(doc, b, ["body", "signature"], dict, optional=True)
    if sg is not None:
        marker = require(doc, sg, ["body", "signature", "marker"], str, optional=True)
        use_hmac = require(doc, sg, ["body", "signature", "hmac"], bool, optional=True, default=False)
        if (marker is None) == (not use_hmac):
            raise doc.error(["body", "signature"], "must give exactly one of marker: TEXT or hmac: true")
        if use_hmac and signing is None:
            raise doc.error(["body", "signature", "hmac"], "needs the profile's signing keys (signing:)")
        if marker is not None and not marker:
            raise doc.error(["body", "signature", "marker"], "must be a non-empty string")
        signature = BodySignature(marker=marker, hmac=bool(use_hmac))
    rules = _presence_rules(doc, data, b, ["body", "rules"], lower=False, encodings=True)
    return BodyRules(encodings, envelope, signature, _value_rules(doc, b, ["body", "fields"], lower=False), rules)


def _lower_header(field_ref: str) -> str:
    return field_ref.lower() if field_ref.startswith("header:") else field_ref


def _tls_policy(doc: YamlDocument, data: dict[str, Any]) -> TlsPolicy | None:
    t = require(doc, data, ["tls"], dict, optional=True)
    if t is None:
        return None
    rules = []
    for i, r in enumerate(require(doc, t, ["tls", "ja4"], list)):
        k: list[str | int] = ["tls", "ja4", i]
        value = require(doc, r, k + ["value"], str)
        if not re.fullmatch(r"[tqd]\d\d[di]\d{4}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}", value):
            raise doc.error(k + ["value"], f"is not a JA4 fingerprint: {value!r}")
        lo, hi = r.get("min_version"), r.get("max_version")
        variant = require(doc, r, k + ["variant"], str, optional=True, default="quic" if value[0] == "q" else "full")
        if variant not in JA4_VARIANTS:
            raise doc.error(k + ["variant"], f"must be one of {', '.join(JA4_VARIANTS)}, got {variant!r}")
        if (variant == "quic") != (value[0] == "q"):
            raise doc.error(k + ["variant"], "a QUIC JA4 starts with q, and only a quic variant does")
        tr = data.get("transport")
        if variant == "quic" and isinstance(tr, dict) and "3" not in [str(v) for v in tr.get("http_versions") or []]:
            raise doc.error(k + ["value"], "a QUIC (q) JA4 needs transport.http_versions to allow 3")
        rules.append(Ja4Rule(value, version_key(str(lo)) if lo else None, version_key(str(hi)) if hi else None,
                             variant))
    return TlsPolicy(bool(t.get("required", False)), tuple(rules), t.get("alpn_first"))


def _transport_policy(doc: YamlDocument, data: dict[str, Any]) -> TransportPolicy | None:
    t = require(doc, data, ["transport"], dict, optional=True)
    if t is None:
        return None
    versions = [str(v) for v in require(doc, t, ["transport", "http_versions"], list)]
    for i, v in enumerate(versions):
        if v not in ("1.0", "1.1", "2", "3"):
            raise doc.error(["transport", "http_versions", i], f"must be 1.0, 1.1, 2 or 3, got {v!r}")
    fps = require(doc, t, ["transport", "h2_fingerprints"], list, optional=True, default=[])
    return TransportPolicy(frozenset(versions), frozenset(map(str, fps)))


def _attestation_policy(doc: YamlDocument, data: dict[str, Any]) -> AttestationPolicy | None:
    a = require(doc, data, ["attestation"], dict, optional=True)
    if a is None:
        return None
    age = require(doc, a, ["attestation", "max_token_age_s"], (int, float), optional=True)
    return AttestationPolicy(
        required=bool(a.get("required", False)),
        providers=frozenset(map(str, a.get("providers") or [])),
        app_recognition=frozenset(map(str, a.get("app_recognition") or [])),
        device_recognition=a.get("device_recognition"),
        max_token_age_s=float(age) if age is not None else None,
    )


def _network_policy(doc: YamlDocument, data: dict[str, Any]) -> NetworkPolicy:
    n = require(doc, data, ["network"], dict, optional=True, default={})
    return NetworkPolicy(hosting=bool(n.get("hosting", False)), locale_country=bool(n.get("locale_country", False)))


def _endpoints(doc: YamlDocument, data: dict[str, Any]) -> dict[str, tuple[re.Pattern[str], ...]]:
    e = require(doc, data, ["endpoints"], dict, optional=True, default={})
    out = {}
    for name, patterns in e.items():
        if not isinstance(patterns, list):
            raise doc.error(["endpoints", name], "must be a list of path regular expressions")
        out[str(name)] = tuple(_compile(doc, ["endpoints", name, i], p) for i, p in enumerate(patterns))
    return out


_HOST_NAME = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def _hosts(doc: YamlDocument, sc: dict[str, Any], name: str) -> tuple[str, ...]:
    key: list[str | int] = ["scope", name]
    out: list[str] = []
    for i, h in enumerate(require(doc, sc, key, list, optional=True, default=[])):
        norm = normalise_host(h) if isinstance(h, str) else None
        if norm is None or not _HOST_NAME.fullmatch(norm) or len(norm) > 253:
            raise doc.error(key + [i], f"must be a DNS name (or *.name for every name below it), got {h!r}")
        if norm != h.strip().lower().rstrip("."):
            raise doc.error(key + [i], f"names a host without a port: {h!r}")
        out.append(norm)
    return tuple(dict.fromkeys(out))


def _scope(doc: YamlDocument, data: dict[str, Any]) -> Scope | None:
    """`scope: {hosts: [...], path_prefixes: [...], coalesce_hosts: [...]}`: the API
    surface the profile judges (docs/contracts.md, Scope)."""
    sc = require(doc, data, ["scope"], dict, optional=True)
    if sc is None:
        return None
    hosts = _hosts(doc, sc, "hosts")
    coalesce = _hosts(doc, sc, "coalesce_hosts")
    prefixes: list[str] = []
    for i, p in enumerate(require(doc, sc, ["scope", "path_prefixes"], list, optional=True, default=[])):
        if not isinstance(p, str) or not p.startswith("/") or "?" in p:
            raise doc.error(["scope", "path_prefixes", i], f"must be a path prefix starting with /, got {p!r}")
        if normalise_path(p) != p:
            raise doc.error(["scope", "path_prefixes", i],
                            f"must be a normalised path (no //, dot segments or encoded letters), got {p!r}")
        prefixes.append(p)
    if not hosts and not prefixes:
        raise doc.error(["scope"], "must name hosts or path_prefixes (a profile without a scope judges every request)")
    if coalesce and not hosts:
        raise doc.error(["scope", "coalesce_hosts"], "needs scope.hosts")
    return Scope(hosts, tuple(prefixes), coalesce)


def load_profiles(directory: Path, secrets: SecretResolver = no_secrets) -> dict[str, ClientProfile]:
    if not directory.is_dir():
        raise ConfigError(directory, "profiles_dir", "is not a directory")
    profiles: dict[str, ClientProfile] = {}
    for path in sorted(directory.glob("*.yaml")):
        p = load_profile(path, secrets)
        if p.name in profiles:
            raise ConfigError(path, "name", f"profile {p.name!r} is also defined in {profiles[p.name].source}")
        profiles[p.name] = p
    if not profiles:
        raise ConfigError(directory, "profiles_dir", "holds no *.yaml profile")
    return profiles
