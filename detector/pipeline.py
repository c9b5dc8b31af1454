"""The stateless scoring pipeline: attribute each request to a client profile, derive
what several checks need (parsed user agent, entity ids, fingerprints) once, run the
checks, and combine their signals into a Verdict.

`Pipeline.score_batch` is the core's entry point; what repeats across millions of
requests (user agents, header orders) is parsed once and cached.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from detector.body import parse_body
from detector.cache import MISSING, ByteCache, approx_size
from detector.checks.attestation import AttestationCheck
from detector.checks.base import Check, Derived, RequestContext, Stateless
from detector.checks.body import BodyCheck
from detector.checks.device import DeviceCheck
from detector.checks.headers import HeadersCheck
from detector.checks.identity import IdentityCheck
from detector.checks.network import NetworkCheck
from detector.checks.signature import SignatureCheck
from detector.checks.tls import TlsCheck
from detector.checks.transport import TransportCheck
from detector.checks.ua import UserAgentCheck
from detector.devices import DeviceCatalogue
from detector.edges import FULL, FULL_EDGE, EdgePolicy
from detector.entities import RequestFacts, account_number, ip_block, population_fingerprint
from detector.fingerprints.headers import names_fingerprint
from detector.fingerprints.known import KnownStacks
from detector.fingerprints.tls import ClientHelloError, fingerprints_from_b64
from detector.model import ClientRequest, Signal, Verdict
from detector.profile import ClientProfile
from detector.redact import Redactor, scrub_detail
from detector.scope import HostEvidence, host_evidence
from detector.scoring import ScoringPolicy

# Memory of the caches below, by bytes (approx_size): keys and values come from
# requests, so an entry count alone would let hostile variety hold gigabytes. An item
# larger than the per-item bound is not cached (it is computed each time).
_UA_CACHE_BYTES = 16 * 2**20
_NAMES_CACHE_BYTES = 8 * 2**20
_SHAPE_CACHE_BYTES = 32 * 2**20
_CACHE_ITEM_BYTES = 16 * 1024
_SCALARS = (str, int, float, bool, type(None))


def default_checks(
    catalogue: DeviceCatalogue | None = None,
    known: KnownStacks | None = None,
    releases: Mapping[int, tuple[str, ...]] | None = None,
) -> list[Check]:
    """Every stateless family, in the order their signals are listed in a verdict."""
    return [
        UserAgentCheck(),
        DeviceCheck(catalogue, releases or {}),
        HeadersCheck(),
        TlsCheck(known),
        TransportCheck(known),
        SignatureCheck(),
        BodyCheck(),
        AttestationCheck(),
        IdentityCheck(),
        NetworkCheck(),
    ]


class EntityFlags(Protocol):
    """The behavioural flags of flagged entities, as the pipeline reads them
    (detector.behaviour.flags.FlagMap): their signals join each verdict."""

    def __len__(self) -> int: ...

    def signals_for(self, entities: Mapping[str, str], ts: float, facts: RequestFacts | None = None) -> list[Signal]:
        """The signals of the flags in force at `ts` on these entities that admit `facts`."""
        ...


def _signing_time(raw: str | None) -> float | None:
    """The signing timestamp header as a number; None when absent or not a finite
    number ("nan", "inf" are no time at all)."""
    if raw is None:
        return None
    try:
        t = float(raw)
    except ValueError:
        return None
    return t if math.isfinite(t) else None


def _scalar(v: object) -> object:
    """A network fact as a shape-cache key part: decode admits only scalars there, and
    anything else (a caller building requests by hand) becomes its type name, so a
    shape key is always hashable."""
    return v if isinstance(v, _SCALARS) else f"<{type(v).__name__}>"


class Pipeline:
    def __init__(
        self,
        profiles: Mapping[str, ClientProfile],
        scoring: ScoringPolicy,
        *,
        default_profile: str | None = None,
        checks: Sequence[Check] | None = None,
        disabled_families: Iterable[str] = (),
        catalogue: DeviceCatalogue | None = None,
        known: KnownStacks | None = None,
        releases: Mapping[int, tuple[str, ...]] | None = None,
        redactor: Redactor | None = None,
        edges: EdgePolicy | None = None,
    ):
        if not profiles:
            raise ValueError("at least one client profile is needed")
        self.profiles = dict(profiles)
        self.default_profile = self.profiles[default_profile or next(iter(self.profiles))]
        self.scoring = scoring
        disabled = set(disabled_families)
        all_checks = checks if checks is not None else default_checks(catalogue, known, releases)
        self.checks = [c for c in all_checks if c.name not in disabled]
        self._disabled = disabled
        missing = scoring.missing(code for c in self.checks for code in c.codes)
        if missing:
            raise ValueError(f"no weight configured for signal codes: {', '.join(missing)}")
        self._ua_cache: ByteCache[tuple[str, str], dict[str, str] | None] = ByteCache(
            _UA_CACHE_BYTES, _CACHE_ITEM_BYTES)
        # Checks whose result depends only on the request's *shape* (profile, user
        # agent, TLS/HTTP fingerprints, network): their signals are computed once per
        # distinct shape and reused; shapes repeat across millions of requests.
        self._shape_checks = [c for c in self.checks if c.scope == "shape"]
        self._request_checks = [c for c in self.checks if c.scope != "shape"]
        self._shape_cache: ByteCache[tuple[Any, ...], tuple[Signal, ...]] = ByteCache(
            _SHAPE_CACHE_BYTES, _CACHE_ITEM_BYTES)
        self._names_cache: ByteCache[tuple[str, ...], tuple[tuple[str, ...], bool, str]] = ByteCache(
            _NAMES_CACHE_BYTES, _CACHE_ITEM_BYTES)
        self._profile_by_prefix = sorted(self.profiles.values(), key=lambda p: -len(p.ua_prefix))
        # with no scope anywhere every request is judged (and no scope work is done)
        self._scoped = any(p.scope is not None for p in self.profiles.values())
        # credential values never appear in a verdict's signal details
        self.redactor = redactor or Redactor.default()
        # the input's edge and the edges a record may name (docs/edges.md): the codes
        # whose facts the request's edge lost are not judged
        self.edges = edges or EdgePolicy({FULL: FULL_EDGE})

    @property
    def codes(self) -> dict[str, str]:
        return {code: meaning for c in self.checks for code, meaning in c.codes.items()}

    def profile_for(self, user_agent: str | None) -> ClientProfile:
        if user_agent:
            for p in self._profile_by_prefix:
                if user_agent.startswith(p.ua_prefix):
                    return p
        return self.default_profile

    def profile_in_scope(self, request: ClientRequest, evidence: HostEvidence | None = None) -> ClientProfile | None:
        """The profile that judges `request`: among the profiles whose scope holds it,
        the one its user agent claims, else the default profile, else the first in
        scope (in profile order); None when it is outside every profile's scope."""
        if evidence is None:
            evidence = host_evidence(request)
        path = request.path
        inside = [p for p in self.profiles.values() if p.scope is None or p.scope.admits(evidence, path)]
        if not inside:
            return None
        ua = request.header("user-agent")
        if ua:
            for p in self._profile_by_prefix:
                if p in inside and ua.startswith(p.ua_prefix):
                    return p
        return self.default_profile if self.default_profile in inside else inside[0]

    def _parse_ua(self, profile: ClientProfile, ua: str) -> dict[str, str] | None:
        key = (profile.name, ua)
        found = self._ua_cache.get(key, MISSING)
        if found is not MISSING:
            return found  # type: ignore[no-any-return]
        m = profile.user_agent.pattern.fullmatch(ua)
        parsed = m.groupdict() if m else None
        self._ua_cache.put(key, parsed, 2 * approx_size(ua) + 512)  # the groups are substrings of `ua`
        return parsed

    @staticmethod
    def _entity(request: ClientRequest, headers: dict[str, str], profile: ClientProfile, kind: str,
                given: str | None) -> str | None:
        if given:
            return given
        src = profile.ids.get(kind)
        if src is None:
            return None
        if src.header:
            v = headers.get(src.header)
            if v:
                return v
        if src.param and request.params:
            return request.params.get(src.param) or None
        return None

    def _names(self, names: tuple[str, ...]) -> tuple[tuple[str, ...], bool, str]:
        """Per header-name sequence: lower-cased names, whether a name repeats, and the
        header-order fingerprint (cached: a client stack sends few sequences)."""
        found: tuple[tuple[str, ...], bool, str] | None = self._names_cache.get(names)
        if found is None:
            lowered = tuple(n.lower() for n in names)
            found = (lowered, len(set(lowered)) != len(lowered), names_fingerprint(names))
            self._names_cache.put(names, found, 2 * approx_size(names) + 128)
        return found

    def derive(self, request: ClientRequest, profile: ClientProfile | None = None,
               evidence: HostEvidence | None = None) -> RequestContext:
        """What the checks need, derived once. `profile`: the one that judges the
        request (default: the one its user agent claims, see `profile_in_scope`)."""
        raw = request.headers
        names = tuple([n for n, _ in raw])
        lowered, repeats, header_fp = self._names(names)
        if repeats:  # the first value of a repeated name counts
            headers: dict[str, str] = {}
            for lname, (_, value) in zip(lowered, raw):
                headers.setdefault(lname, value)
        else:
            headers = dict(zip(lowered, [v for _, v in raw]))
        ua_raw = headers.get("user-agent")
        if profile is None:
            profile = self.profile_for(ua_raw)
        if evidence is None:
            evidence = host_evidence(request, headers.get("host"))
        sni, target = evidence.sni, evidence.request_host
        host_mismatch = (sni, target) if sni is not None and target is not None and sni != target else None
        ua = self._parse_ua(profile, ua_raw) if ua_raw else None
        entities: dict[str, str] = {"ip": request.client_ip}
        for kind, given in (("device", request.device_id), ("account", request.account_id),
                            ("session", request.session_id)):
            v = self._entity(request, headers, profile, kind, given)
            if v:
                entities[kind] = v
        signed_at = sign_age = None
        if profile.signing is not None:
            sig = headers.get(profile.signing.header)
            m = profile.signing.format.fullmatch(sig) if sig else None
            if m is not None:
                entities["signature"] = m["mac"]
            # parsed once: the signature check judges it, the behaviour records carry
            # the signing age (arrival minus signing time)
            signed_at = _signing_time(headers.get(profile.signing.timestamp_header))
            sign_age = request.ts - signed_at if signed_at is not None else None
        entities["ip_block"] = ip_block(request.client_ip)
        fps: dict[str, str] = {"headers": header_fp}
        tls_error = alpn = None
        tls = request.tls
        if tls:
            hello = tls.get("client_hello")
            computed = None
            if isinstance(hello, str):
                # The raw ClientHello wins over what the edge computed: we know our JA4.
                try:
                    computed = fingerprints_from_b64(hello)
                except ClientHelloError as exc:
                    tls_error = str(exc)
            if computed is not None:
                fps["ja4"], fps["ja3"] = computed.ja4, computed.ja3
                alpn = computed.alpn or ""
            else:
                for k in ("ja4", "ja3"):
                    v = tls.get(k)
                    if isinstance(v, str):
                        fps[k] = v
                offered = tls.get("alpn")
                if isinstance(offered, str):
                    alpn = offered
                elif isinstance(offered, list):  # the list offered: what is offered first counts
                    alpn = offered[0] if offered and isinstance(offered[0], str) else ""
        if request.h2 and isinstance(h2 := request.h2.get("fingerprint"), str):
            fps["h2"] = h2
        if ua is not None:
            fps["device"] = f"{ua.get('manufacturer', '')}/{ua.get('model', '')}/{ua.get('device', '')}"
            rules = profile.headers
            entities["fingerprint"] = population_fingerprint(ua, fps, rules.required if rules is not None else None,
                                                             names)
        body = (parse_body(request.body, headers.get("content-type"), profile.body.envelope)
                if request.body is not None and profile.body is not None else None)
        derived = Derived(ua_raw, names, ua, entities, fps, signed_at, sign_age, tls_error, alpn, host_mismatch,
                          body)
        return RequestContext(profile, self.scoring.weight_of, headers, derived)

    def _shape_key(self, request: ClientRequest, ctx: RequestContext) -> tuple[Any, ...]:
        d = ctx.derived
        fps = d.fingerprints
        net = request.network
        net_key = (tuple(_scalar(net.get(k)) for k in ("hosting", "asn", "as_org", "country"))
                   if net else None)
        return (ctx.profile.name, d.ua_raw, fps.get("ja4"), d.alpn, d.tls_error,
                request.http_version, fps.get("h2"), net_key, d.host_mismatch)

    def score_one(self, request: ClientRequest, flags: EntityFlags | None = None) -> Verdict:
        return self.assess(request, flags)[0]

    def assess(self, request: ClientRequest, flags: EntityFlags | None = None) -> tuple[Verdict, RequestContext]:
        """The verdict and what was derived on the way (the behaviour stage needs it).
        `flags`: the behavioural flags known for the request's entities. A request
        outside every profile's scope is not judged (`unassessed`)."""
        if self._scoped:
            evidence = host_evidence(request)
            profile = self.profile_in_scope(request, evidence)
            if profile is None:
                return self.unassessed(request)
            ctx = self.derive(request, profile, evidence)
        else:
            ctx = self.derive(request)
        key = self._shape_key(request, ctx)
        shaped = self._shape_cache.get(key)
        if shaped is None:
            found: list[Signal] = []
            for c in self._shape_checks:
                found.extend(c.check(request, ctx))
            shaped = tuple(found)
            self._shape_cache.put(key, shaped)
        signals = list(shaped)
        for c in self._request_checks:
            signals.extend(c.check(request, ctx))
        edge = self.edges.resolve(request)
        gated = edge.gated(ctx.profile)
        if gated:  # a check that needs a fact the edge lost does not fire
            signals = [s for s in signals if s.code not in gated]
            ctx.gated = gated
        if signals:
            secrets = self.redactor.secrets(ctx.headers, request.params,
                                            ctx.derived.body.fields if ctx.derived.body is not None else None)
            if secrets:
                signals = [Signal(s.code, s.weight, scrub_detail(s.detail, secrets))
                           if any(x[:16] in s.detail for x in secrets) else s for s in signals]
        # What the request shows on its own, before the behavioural flags of its
        # entities: the behaviour stage's records carry only this, so the state and
        # alerts never depend on how fast flags propagated.
        stateless_score = self.scoring.score(signals)
        ctx.stateless = Stateless(stateless_score, self.scoring.level(stateless_score), tuple(s.code for s in signals))
        derived = ctx.derived
        if flags is not None and len(flags):
            ents = derived.entities
            account = ents.get("account")
            number = account_number(account) if account is not None else None
            facts = RequestFacts(derived.sign_age, number, request.ts)
            signals.extend(flags.signals_for(ents, request.ts, facts))
        score = self.scoring.score(signals)
        return Verdict(
            request_id=request.request_id,
            ts=request.ts,
            score=score,
            verdict=self.scoring.level(score),
            profile=ctx.profile.name,
            entities=derived.entities,
            fingerprints=derived.fingerprints,
            signals=tuple(signals),
            app_version=ua["app_version"] if (ua := derived.ua) is not None else None,
            not_assessed=edge.not_assessed(ctx.profile) if gated else msgspec.UNSET,
        ), ctx

    def unassessed(self, request: ClientRequest) -> tuple[Verdict, RequestContext]:
        """The verdict of a request outside every profile's scope: not the app's
        traffic, so not judged as the app (clean, score 0, `assessed: false`, no
        profile, no signals, its client address as the only entity). Its context feeds
        no behaviour state (`records_for` makes no record of it)."""
        entities = {"ip": request.client_ip}
        derived = Derived(request.header("user-agent"), tuple(n for n, _ in request.headers), None, entities, {})
        ctx = RequestContext(self.default_profile, self.scoring.weight_of, {}, derived,
                             Stateless(0.0, "clean", ()))
        return Verdict(request_id=request.request_id, ts=request.ts, score=0.0, verdict="clean", profile=None,
                       entities=entities, fingerprints={}, signals=(), assessed=False), ctx

    def score_batch(self, requests: Sequence[ClientRequest], state: EntityFlags | None = None) -> list[Verdict]:
        """Score a batch in order. `state`: the flags of behaviour-flagged entities,
        whose signals join each verdict (see detector.behaviour)."""
        score_one = self.score_one
        return [score_one(r, state) for r in requests]
