"""The stateless scoring pipeline: attribute each request to a client profile, derive
what several checks need (parsed user agent, entity ids, fingerprints) once, run the
checks, and combine their signals into a Verdict.

`Pipeline.score_batch` is the core's entry point; what repeats across millions of
requests (user agents, header orders) is parsed once and cached.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from detector.checks.base import Check, RequestContext
from detector.checks.signature import SignatureCheck
from detector.checks.ua import UserAgentCheck
from detector.fingerprints.headers import header_order_fingerprint
from detector.model import ClientRequest, Signal, Verdict
from detector.profile import ClientProfile
from detector.scoring import ScoringPolicy

_CACHE_LIMIT = 200_000


def default_checks() -> list[Check]:
    return [UserAgentCheck(), SignatureCheck()]


class Pipeline:
    def __init__(
        self,
        profiles: Mapping[str, ClientProfile],
        scoring: ScoringPolicy,
        *,
        default_profile: str | None = None,
        checks: Sequence[Check] | None = None,
        disabled_families: Iterable[str] = (),
    ):
        if not profiles:
            raise ValueError("at least one client profile is needed")
        self.profiles = dict(profiles)
        self.default_profile = self.profiles[default_profile or next(iter(self.profiles))]
        self.scoring = scoring
        disabled = set(disabled_families)
        self.checks = [c for c in (checks if checks is not None else default_checks()) if c.name not in disabled]
        self._disabled = disabled
        missing = scoring.missing(code for c in self.checks for code in c.codes)
        if missing:
            raise ValueError(f"no weight configured for signal codes: {', '.join(missing)}")
        self._ua_cache: dict[tuple[str, str], dict[str, str] | None] = {}
        self._profile_by_prefix = sorted(self.profiles.values(), key=lambda p: -len(p.ua_prefix))

    @property
    def codes(self) -> dict[str, str]:
        return {code: meaning for c in self.checks for code, meaning in c.codes.items()}

    def profile_for(self, user_agent: str | None) -> ClientProfile:
        if user_agent:
            for p in self._profile_by_prefix:
                if user_agent.startswith(p.ua_prefix):
                    return p
        return self.default_profile

    def _parse_ua(self, profile: ClientProfile, ua: str) -> dict[str, str] | None:
        key = (profile.name, ua)
        try:
            return self._ua_cache[key]
        except KeyError:
            pass
        m = profile.user_agent.pattern.fullmatch(ua)
        parsed = m.groupdict() if m else None
        if len(self._ua_cache) >= _CACHE_LIMIT:
            self._ua_cache.clear()
        self._ua_cache[key] = parsed
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

    def derive(self, request: ClientRequest) -> RequestContext:
        headers: dict[str, str] = {}
        for name, value in request.headers:
            lname = name.lower()
            if lname not in headers:
                headers[lname] = value
        ua_raw = headers.get("user-agent")
        profile = self.profile_for(ua_raw)
        ctx = RequestContext(profile=profile, weight_of=self.scoring.weight_of, headers=headers)
        d = ctx.derived
        d["ua_raw"] = ua_raw
        ua = self._parse_ua(profile, ua_raw) if ua_raw else None
        d["ua"] = ua
        entities: dict[str, str] = {"ip": request.client_ip}
        for kind, given in (("device", request.device_id), ("account", request.account_id), ("session", request.session_id)):
            v = self._entity(request, headers, profile, kind, given)
            if v:
                entities[kind] = v
        d["entities"] = entities
        fps: dict[str, str] = {"headers": header_order_fingerprint(request.headers)}
        tls = request.tls
        if tls:
            for k in ("ja4", "ja3"):
                v = tls.get(k)
                if isinstance(v, str):
                    fps[k] = v
        if request.h2 and isinstance(request.h2.get("fingerprint"), str):
            fps["h2"] = request.h2["fingerprint"]
        if ua is not None:
            fps["device"] = f"{ua.get('manufacturer', '')}/{ua.get('model', '')}/{ua.get('device', '')}"
        d["fingerprints"] = fps
        return ctx

    def score_one(self, request: ClientRequest) -> Verdict:
        ctx = self.derive(request)
        signals: list[Signal] = []
        for c in self.checks:
            signals.extend(c.check(request, ctx))
        score = self.scoring.score(signals)
        return Verdict(
            request_id=request.request_id,
            ts=request.ts,
            score=score,
            verdict=self.scoring.level(score),
            profile=ctx.profile.name,
            entities=ctx.derived["entities"],
            fingerprints=ctx.derived["fingerprints"],
            signals=tuple(signals),
        )

    def score_batch(self, requests: Sequence[ClientRequest], state: Any = None) -> list[Verdict]:
        """Score a batch in order. `state` is the behavioural state backend; the
        stateless pipeline ignores it (stateful detectors plug in here)."""
        score_one = self.score_one
        return [score_one(r) for r in requests]
