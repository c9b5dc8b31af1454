"""Simulated requests as an edge reports them (`detector eval --edge NAME`): each edge
profile's losses (config/edges/, docs/edges.md) applied to the simulator's requests,
and which signal codes an edge puts at risk, so an evaluation can say for which
requests the giveaway survives the edge.

The losses: names lower-cased (case lost), names sorted (order lost: the edge writes
them in an order of its own, the same for every request), only the profile's own
header names kept (a partial set: an access log holds the headers it names, and the
deployment names the app's), no ClientHello or JA3, a partial JA4 (HAProxy 2.6's:
counts, ALPN, SNI flag and cipher hash), no TLS fingerprint at all (the SNI stays),
no HTTP/2 fingerprint (the `:authority` stays),
no body hash or size (and no body params), enrichment (network facts, the
attestation verdict) reduced to what the edge provides."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detector.checks.attestation import AttestationCheck
from detector.edges import EdgeProfile
from detector.fingerprints.ja4 import haproxy_26_partial
from detector.profile import ClientProfile

# Codes whose evidence an edge can remove without silencing the check: names outside
# a partial set, a partial JA4 that also fits an allowed one, the body's length.
_SOME_NAMES_RISK = frozenset({"headers.forbidden", "headers.unexpected"})
_PARTIAL_JA4_RISK = frozenset({"tls.fingerprint_mismatch", "tls.known_automation_stack"})
_NO_BODY_RISK = frozenset({"headers.inconsistent"})
# without the attestation step a record has no integrity verdict: every code judging one
_NO_ATTESTATION_RISK = frozenset(AttestationCheck.codes)
# behaviour state reads fingerprints, header orders and networks the edge may change:
# its codes are not counted as a giveaway that survives (NEEDS_STATE scenarios)
STATEFUL_FAMILIES = ("replay", "behaviour", "population")
_NETWORK_KEYS: Mapping[str, tuple[str, ...]] = {"asn": ("asn", "as_org"), "hosting": ("hosting",),
                                                "country": ("country",)}


def at_risk(edge: EdgeProfile, profile: ClientProfile) -> frozenset[str]:
    """The codes that may not fire on this edge's records although they fire on the
    full request: those the edge silences, and those whose evidence it may drop."""
    out = set(edge.gated(profile))
    if edge.header_names != "all":
        out |= _SOME_NAMES_RISK
    if edge.ja4 == "partial" and not edge.client_hello:
        out |= _PARTIAL_JA4_RISK
    if not edge.body:
        out |= _NO_BODY_RISK
    if "attestation" not in edge.enrichment:
        out |= _NO_ATTESTATION_RISK
    return frozenset(out)


def survives(codes: Mapping[str, float] | list[tuple[str, float]], risk: frozenset[str], threshold: float) -> bool:
    """Whether the stateless signals (code, weight) of a request's full verdict that
    the edge keeps still reach `threshold` (noisy-OR, as scoring does)."""
    items = codes.items() if isinstance(codes, Mapping) else codes
    best: dict[str, float] = {}
    for code, weight in items:
        if code in risk or code.split(".", 1)[0] in STATEFUL_FAMILIES:
            continue
        best[code] = max(weight, best.get(code, 0.0))  # a code counts once, as in scoring
    keep = 1.0
    for weight in best.values():
        keep *= 1.0 - weight
    return 1.0 - keep >= threshold


def through_edge(request: Mapping[str, Any], edge: EdgeProfile, profile: ClientProfile) -> dict[str, Any]:
    """A copy of a simulated request (its JSON object) with what `edge` loses removed."""
    out = dict(request)
    headers = [(str(n), str(v)) for n, v in request.get("headers") or ()]
    if not edge.header_case:
        headers = [(n.lower(), v) for n, v in headers]
    if edge.header_names != "all":
        kept = profile.headers.known if profile.headers is not None else frozenset()
        headers = [(n, v) for n, v in headers if n.lower() in kept]
    if not edge.header_order:
        headers = sorted(headers, key=lambda h: h[0].lower())
    out["headers"] = [list(h) for h in headers]
    tls = request.get("tls")
    if isinstance(tls, Mapping):
        if not edge.has_tls:  # no fingerprint, but every TLS-terminating edge knows the SNI
            sni = tls.get("sni")
            if isinstance(sni, str):
                out["tls"] = {"sni": sni}
            else:
                out.pop("tls", None)
        else:
            t = dict(tls)
            if not edge.client_hello:
                t.pop("client_hello", None)
            if not edge.ja3:
                t.pop("ja3", None)
                t.pop("ja3_full", None)
            if edge.ja4 == "partial" and not edge.client_hello and isinstance(t.get("ja4"), str):
                t["ja4"] = haproxy_26_partial(t["ja4"])
            elif edge.ja4 == "none" and not edge.client_hello:
                t.pop("ja4", None)
            out["tls"] = t
    h2 = request.get("h2")
    if not edge.h2_fingerprint and isinstance(h2, Mapping):
        rest = {k: v for k, v in h2.items() if k != "fingerprint"}  # :authority is a header every edge sees
        if rest:
            out["h2"] = rest
        else:
            out.pop("h2", None)
    if not edge.body:
        for k in ("body_sha256", "body_size", "params"):
            out.pop(k, None)
    if not edge.body_text:
        out.pop("body", None)
    if "attestation" not in edge.enrichment:
        out.pop("attestation", None)
    net = request.get("network")
    if isinstance(net, Mapping):
        keys = {k for fact in edge.enrichment for k in _NETWORK_KEYS.get(fact, ())}
        kept_net = {k: v for k, v in net.items() if k in keys}
        if kept_net:
            out["network"] = kept_net
        else:
            out.pop("network", None)
    return out


__all__ = ["STATEFUL_FAMILIES", "at_risk", "survives", "through_edge"]
