"""The genuine scenario: real users of the app, in event-time order."""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from typing import Any

from detector.devices import DeviceCatalogue
from detector.profile import ClientProfile
from detector.simulate.handsets import ua_string
from detector.simulate.population import SESSION_PAUSE_S, _Population
from detector.simulate.wire import (
    _FORM,
    DEFAULT_START_TS,
    OKHTTP_H2,
    OKHTTP_JA4,
    TLS_SNI,
    _Builder,
    app_body,
    device_checksum,
)


def genuine(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
            rate: float | None = None, *, catalogue: DeviceCatalogue | None = None) -> Iterator[dict[str, Any]]:
    """Real users of the app: about one handset per 18 requests, drawn from the device
    catalogue's models by popularity (a small built-in list without a catalogue); app
    versions spread over the releases that are not retired, the newest most common and
    growing with event time (staged roll-outs and users' update lag); mobile and Wi-Fi
    networks of the users' countries, a few travellers, expats and VPN users; sessions
    that open with the app's start-up burst and then browse with the occasional
    action, more of them in the users' evening than at night; family devices shared by
    two accounts and reinstalls that change the device id. `rate` (requests per second
    of event time) sets the time span; without it, 20 per second."""
    rng = random.Random(f"genuine:{seed}")
    if count <= 0:
        return
    span = count / rate if rate else max(600.0, count / 20.0)
    pop = _Population(profile, rng, catalogue, count, start_ts, span)
    b = _Builder(profile, rng, "genuine", False)
    scheme = profile.signing
    tls_policy, transport, att = profile.tls, profile.transport, profile.attestation
    http_version = sorted(transport.http_versions)[0] if transport and transport.http_versions else "2"
    h2_fps = sorted(transport.h2_fingerprints) if transport and transport.h2_fingerprints else [OKHTTP_H2]
    alpn = tls_policy.alpn_first if tls_policy and tls_policy.alpn_first else "h2"
    provider = sorted(att.providers)[0] if att and att.providers else "play_integrity"
    app_verdict = sorted(att.app_recognition)[0] if att and att.app_recognition else "PLAY_RECOGNIZED"
    device_verdict = att.device_recognition if att and att.device_recognition else "MEETS_DEVICE_INTEGRITY"
    max_age = min(att.max_token_age_s or 600.0, 600.0) if att else 600.0
    sig_header = scheme.header if scheme else None
    ts_header = scheme.timestamp_header if scheme else "x-es-timestamp"
    order = profile.headers.order if profile.headers else (
        "x-es-device-id", "x-es-device-checksum", "x-es-session-id", "x-es-user-id", ts_header, sig_header or "",
        "accept-language", "x-es-connection-type", "x-es-bandwidth-kbps", "content-type", "content-length",
        "accept-encoding", "user-agent")
    dev_h = _id_header(profile, "device", "x-es-device-id")
    acct_h = _id_header(profile, "account", "x-es-user-id")
    sess_h = _id_header(profile, "session", "x-es-session-id")

    def ja4_for(version: str) -> str:
        if tls_policy:
            for rule in tls_policy.ja4:
                if rule.covers(version):
                    return rule.value
        return OKHTTP_JA4

    # The stream opens with a session starting at `start_ts`; every other user's first
    # session comes when their own rhythm brings it.
    heap: list[tuple[float, int]] = [(start_ts, 0)]
    for i, u in enumerate(pop.users[1:], start=1):
        heap.append((pop.next_session(u, start_ts), i))
    heapq.heapify(heap)
    pending: dict[int, tuple[str, str, str | None, int | None]] = {}
    emitted = 0
    while emitted < count and heap:
        ts, i = heapq.heappop(heap)
        u = pop.users[i]
        if u.session is None:
            u.session = pop.start_session(u, ts)
            pending[i] = pop.next_call(u.session, ts)
        s = u.session
        method, path, query, body_size = pending.pop(i)
        sec = int(ts - u.clock_s)  # the second the phone signs with
        if sec != u.sec:
            u.sec, u.sec_keys = sec, set()
        u.sec_keys.add((method, path, query))
        d = u.handset
        # Play Integrity tokens are requested at session start and renewed before they
        # age out.
        age = ts - s.token_ts
        if age > max_age * 0.5:
            s.token_ts, age = ts - rng.uniform(0.3, 2.0), rng.uniform(0.3, 2.0)
        lang = u.locale.replace("_", "-")
        s.bandwidth = min(999999.0, max(20.0, s.bandwidth * rng.lognormvariate(0, 0.08)))
        values: dict[str, str | None] = {
            dev_h: u.device_id,
            "x-es-device-checksum": device_checksum(profile, u.device_id),
            sess_h: s.sid,
            ts_header: str(int(ts - u.clock_s)),
            "accept-language": lang,
            "x-es-connection-type": s.conn,
            "accept-encoding": "gzip",
            "user-agent": ua_string(b.app_token, s.release.version.version, s.code, d, u.locale),
        }
        if sig_header:
            values[sig_header] = None
        if s.account is not None:
            values[acct_h] = s.account
        if s.step > 0:  # the first call of a session leaves before any bandwidth sample
            values["x-es-bandwidth-kbps"] = str(int(s.bandwidth))
        text = None
        if body_size is not None:
            text = app_body(path, device_id=u.device_id, account=s.account, conn=s.conn, session_id=s.sid)
            body_size = len(text.encode())
            values["content-type"] = _FORM
            values["content-length"] = str(body_size)
        headers = [(n, values[n]) for n in order if n in values]
        strong = ["MEETS_STRONG_INTEGRITY"] if u.strong_integrity and d.sdk_int >= 31 else []
        yield b.request(
            ts, ip=s.ip, method=method, path=path, query=query, headers=headers, key_id=s.release.key_id,
            body_size=body_size, body=text, http_version=http_version,
            tls={"ja4": ja4_for(s.release.version.version), "alpn": alpn, "version": "1.3", "sni": TLS_SNI},
            h2=h2_fps[i % len(h2_fps)], network=s.network,
            attestation={"provider": provider, "app_recognition": app_verdict,
                         "device_recognition": ["MEETS_BASIC_INTEGRITY", device_verdict, *strong],
                         "request_hash_ok": True, "token_age_s": round(age, 1)},
        )
        emitted += 1
        s.step += 1
        if s.step < s.length:
            nxt = pop.next_call(s, ts)
            t = ts + pop.gap(s.step, nxt[1])
            # The signature covers method, path, query, the second and the device: the
            # app never sends the same call twice in one second.
            if int(t - u.clock_s) == u.sec and nxt[:3] in u.sec_keys:
                t = u.sec + 1 + u.clock_s + rng.uniform(0.01, 0.5)
            pending[i] = nxt
            heapq.heappush(heap, (t, i))
        else:
            u.session = None
            heapq.heappush(heap, (pop.next_session(u, ts + SESSION_PAUSE_S), i))


def _id_header(profile: ClientProfile, kind: str, default: str) -> str:
    """The header that carries the profile's `kind` id, or `default` when it names none."""
    src = profile.ids.get(kind)
    return (src.header if src is not None else None) or default


def genuine_request(profile: ClientProfile, seed: int, catalogue: DeviceCatalogue | None = None) -> dict[str, Any]:
    """One signed genuine request (a session's first call, a POST with a body), for tests
    that derive variations of it (see `resign` to re-sign after changing a signed field)."""
    return next(genuine(profile, 1, seed, catalogue=catalogue))
