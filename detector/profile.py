"""Client profiles: what the official app *is* (user-agent grammar, version table,
signing scheme, where its ids live), loaded from YAML under `config/profiles/` and
validated into frozen values. Checks compare requests against these facts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from detector.config import ConfigError, YamlDocument, require

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


def signing_key_for(profile: "ClientProfile", version: AppVersion) -> str | None:
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
    source: str = ""

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


def _secret(doc: YamlDocument, key: list[str | int], spec: Any, base: Path) -> tuple[bytes, bool]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise doc.error(key, "must be one of {env: NAME}, {file: PATH} or {demo: VALUE}")
    ((kind, value),) = spec.items()
    if kind == "env":
        secret = os.environ.get(str(value))
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


def load_profile(path: Path) -> ClientProfile:
    doc = YamlDocument(path)
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error([], "a profile must be a mapping")
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
        keys = require(doc, v, k + ["keys"], list, optional=True, default=[])
        if ver in versions:
            raise doc.error(k + ["version"], f"version {ver} is listed twice")
        versions[ver] = AppVersion(ver, frozenset(codes), status, frozenset(map(str, keys)), v.get("released"))

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
            secret, demo = _secret(doc, k + ["secret"], ks.get("secret"), path.parent)
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
        for i, ver in enumerate(versions.values()):
            unknown = ver.keys - keys.keys()
            if unknown:
                raise doc.error(["versions", i, "keys"], f"unknown signing key ids: {', '.join(sorted(unknown))}")
            if ver.status != "retired" and not any(keys[k].status == "active" for k in ver.keys):
                raise doc.error(["versions", i, "keys"], f"version {ver.version} is {ver.status} but carries no active key")

    ids: dict[str, IdSource] = {}
    for ent, spec in (require(doc, data, ["ids"], dict, optional=True, default={}) or {}).items():
        if not isinstance(spec, dict):
            raise doc.error(["ids", ent], "must be a mapping with header and/or param")
        ids[str(ent)] = IdSource(header=(spec.get("header") or "").lower() or None, param=spec.get("param"))

    return ClientProfile(
        name=name,
        app_name=require(doc, data, ["app_name"], str),
        platform=require(doc, data, ["platform"], str),
        ua_prefix=require(doc, require(doc, data, ["match"], dict), ["match", "user_agent_prefix"], str),
        user_agent=grammar,
        versions=versions,
        signing=signing,
        ids=ids,
        source=str(path),
    )


def load_profiles(directory: Path) -> dict[str, ClientProfile]:
    if not directory.is_dir():
        raise ConfigError(directory, "profiles_dir", "is not a directory")
    profiles: dict[str, ClientProfile] = {}
    for path in sorted(directory.glob("*.yaml")):
        p = load_profile(path)
        if p.name in profiles:
            raise ConfigError(path, "name", f"profile {p.name!r} is also defined in {profiles[p.name].source}")
        profiles[p.name] = p
    if not profiles:
        raise ConfigError(directory, "profiles_dir", "holds no *.yaml profile")
    return profiles
