"""Captured requests of the real app re-sent later from other networks."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from detector.devices import DeviceCatalogue
from detector.profile import ClientProfile
from detector.simulate.kit import (
    HOSTING_NETWORKS,
    _check_evasion,
    _copy_request,
    _hosting,
    _in_order,
    _residential,
)
from detector.simulate.places import _COUNTRY, COUNTRIES, _ipv4
from detector.simulate.scenarios.genuine import genuine
from detector.simulate.wire import DEFAULT_START_TS, PYTHON_REQUESTS_JA4, TLS_SNI, _Builder, _hex


def replay(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
           evasion: int = 0, rate: float | None = None, *,
           catalogue: DeviceCatalogue | None = None) -> Iterator[dict[str, Any]]:
    """Captured requests re-sent later: the attacker runs the real app on a few phones
    of its own behind an intercepting proxy, keeps the signed requests (mostly likes and
    follows, some feed calls) and re-sends each of them several times from other
    addresses and networks, byte for byte where it is signed (same signature, signing
    timestamp, device id, body hash, attestation token). The captured originals are in
    the output too, labelled `{"scenario": "replay", "malicious": false, "role":
    "captured"}`: real app traffic, which a replay detector needs to have seen. `evasion`
    0: a Python script re-sends them 15-30 minutes later from datacenters; 1: the app's
    TLS (uTLS), residential proxies abroad, 7-25 minutes later (signing timestamps and
    tokens out of date); 2: the app's stack, residential proxies of the same country on
    other carriers, 20-250 s later: inside the signature's clock skew and the token's
    lifetime, so per request it is the original; only the reuse gives it away."""
    _check_evasion(evasion)
    rng = random.Random(f"replay:{seed}")
    b = _Builder(profile, rng, "replay", True)
    if count <= 0:
        return
    rate = rate or 3.0
    span = count / rate
    n_captured = max(1, count // 8)
    delays = ((900.0, 1800.0), (420.0, 1500.0), (20.0, 250.0))[evasion]
    # The capture phones: a small population of real users (the attacker's own phones).
    capture_span = max(60.0, 0.4 * span - delays[0] / 2)
    captured = list(genuine(profile, n_captured, seed=int(rng.getrandbits(31)), start_ts=start_ts,
                            rate=n_captured / capture_span, catalogue=catalogue))
    events: list[dict[str, Any]] = []
    for k, e in enumerate(captured):
        e["request_id"] = f"replay-captured-{k:08d}-{_hex(rng, 8)}"
        e["label"] = {"scenario": "replay", "malicious": False, "role": "captured"}
        events.append(e)
    worth = [e for e in captured if e["method"] == "POST" and "launcher" not in e["path"]] or captured
    feed = [e for e in captured if e["path"] == "/api/v1/feed/timeline"]
    n_replays = count - len(events)
    python_headers = [["accept", "*/*"], ["connection", "keep-alive"]]
    for _ in range(n_replays):
        orig = rng.choice(worth) if rng.random() < 0.85 or not feed else rng.choice(feed)
        delay = rng.uniform(*delays)
        ts = orig["ts"] + delay
        changes: dict[str, Any] = {"label": {"scenario": "replay", "malicious": True}}
        if evasion == 0:
            ip, network = _hosting(rng, rng.choice(HOSTING_NETWORKS))
            # requests over HTTP/1.1: http.client's Host first, its defaults, then the copy
            changes.update(http_version="1.1",
                           tls={"ja4": PYTHON_REQUESTS_JA4, "alpn": "http/1.1", "version": "1.3", "sni": TLS_SNI},
                           headers=[["Host", TLS_SNI], *python_headers, *[list(h) for h in orig["headers"]]])
            changes["h2"] = None
        else:
            home = _COUNTRY.get(orig["network"]["country"], _COUNTRY["US"])
            if evasion == 1:
                ip, network = _residential(rng, rng.choice([c for c in COUNTRIES if c.code != home.code]))
            else:  # the original's country, another carrier or ISP
                nets = [n for n in list(home.mobile) + list(home.wifi) if n[0] != orig["network"]["asn"]]
                asn, org = rng.choice(nets or list(home.mobile))
                ip, network = _ipv4(rng, asn), {"asn": asn, "as_org": org, "country": home.code, "hosting": False}
        changes.update(client_ip=ip, network=network)
        if "attestation" in orig:
            att = dict(orig["attestation"])
            att["token_age_s"] = round(att.get("token_age_s", 0.0) + delay, 1)
            changes["attestation"] = att
        copy = _copy_request(b, orig, ts, **changes)
        if copy.get("h2") is None:
            copy.pop("h2", None)
        events.append(copy)
    yield from _in_order(events, count)


def replay_once(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
                rate: float | None = None, delays: tuple[float, float] = (20.0, 250.0), *,
                catalogue: DeviceCatalogue | None = None) -> Iterator[dict[str, Any]]:
    """A capture-and-replay service: every signed request of a population of real
    users (`count` // 2 of them, labelled `{"scenario": "replay_once", "malicious":
    false, "role": "captured"}`) is re-sent exactly once, `delays` seconds later
    (inside the signing skew and the token's lifetime), byte for byte with the app's
    own TLS and HTTP/2 stack, from another network: half from a hosting network
    (often another country's), half from a residential or mobile proxy exit abroad
    or on another carrier of the same country. Each replay is labelled
    `{"scenario": "replay_once", "malicious": true, "role": "replay", "original": its
    request id}`. Per request a replay is its original; only the signature's reuse
    gives it away, and as each is replayed once, only the signature shard sees it."""
    rng = random.Random(f"replay_once:{seed}")
    b = _Builder(profile, rng, "replay_once", True)
    if count <= 0:
        return
    rate = rate or 3.0
    n_captured = max(1, count // 2)
    signing = profile.signing.header.lower() if profile.signing is not None else None
    captured = list(genuine(profile, n_captured, seed=int(rng.getrandbits(31)), start_ts=start_ts,
                            rate=rate / 2, catalogue=catalogue))
    events: list[dict[str, Any]] = []
    for k, e in enumerate(captured):
        e["request_id"] = f"replay_once-captured-{k:08d}-{_hex(rng, 8)}"
        e["label"] = {"scenario": "replay_once", "malicious": False, "role": "captured"}
        events.append(e)
    for orig in captured:
        if signing is None or not any(n.lower() == signing for n, _ in orig["headers"]):
            continue  # nothing signed: nothing a replay detector could tell
        delay = rng.uniform(*delays)
        home = _COUNTRY.get(orig["network"]["country"], _COUNTRY["US"])
        pick = rng.random()
        if pick < 0.5:
            ip, network = _hosting(rng, rng.choice(HOSTING_NETWORKS))
        elif pick < 0.75:
            ip, network = _residential(rng, rng.choice([c for c in COUNTRIES if c.code != home.code]))
        else:
            nets = [n for n in list(home.mobile) + list(home.wifi) if n[0] != orig["network"]["asn"]]
            asn, org = rng.choice(nets or list(home.mobile))
            ip, network = _ipv4(rng, asn), {"asn": asn, "as_org": org, "country": home.code, "hosting": False}
        changes: dict[str, Any] = {
            "label": {"scenario": "replay_once", "malicious": True, "role": "replay",
                      "original": orig["request_id"]},
            "client_ip": ip, "network": network,
        }
        if "attestation" in orig:
            att = dict(orig["attestation"])
            att["token_age_s"] = round(att.get("token_age_s", 0.0) + delay, 1)
            changes["attestation"] = att
        events.append(_copy_request(b, orig, orig["ts"] + delay, **changes))
    yield from _in_order(events, len(events))
