"""A client with the app's TLS exactly but the header order or HTTP/2 wrong."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from detector.devices import DeviceCatalogue
from detector.profile import ClientProfile
from detector.simulate.handsets import _draw_handset, _models, ua_string
from detector.simulate.kit import (
    GO_H2,
    OKHTTP_SETTINGS_GO_PSEUDO,
    _account_id,
    _action_call,
    _app_release,
    _app_stack,
    _AppHeaders,
    _browse_call,
    _check_evasion,
    _in_order,
    _real_device_attestation,
    _residential,
    _startup_call,
)
from detector.simulate.places import COUNTRIES
from detector.simulate.wire import (
    DEFAULT_START_TS,
    STARTUP_PATHS,
    _Builder,
    _hex,
    _uuid4,
)


def fingerprint_spoofing(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
                         evasion: int = 0, rate: float | None = None, *,
                         catalogue: DeviceCatalogue | None = None) -> Iterator[dict[str, Any]]:
    """A client that impersonates the app's TLS exactly (Go with uTLS replaying OkHttp's
    ClientHello: the app's JA4) with the current build's user agent, key and a real
    catalogue phone per account, from residential proxies, but gets the header order or
    the HTTP/2 fingerprint wrong. `evasion` 0: Go's HTTP/2 and Go's header order (a map:
    a new order on every request), no attestation; 1: Go's HTTP/2 and one fixed order
    copied from a capture with the user agent and encoding moved to the front, no
    attestation; 2: each client instance has one flaw left: OkHttp's SETTINGS copied but
    Go's pseudo-header order, or a perfect HTTP/2 writer with two of the app's headers
    swapped; Play Integrity tokens relayed from real phones."""
    _check_evasion(evasion)
    rng = random.Random(f"fingerprint_spoofing:{seed}")
    b = _Builder(profile, rng, "fingerprint_spoofing", True)
    if count <= 0:
        return
    rate = rate or 2.0
    models, weights = _models(catalogue)
    version, code, key_id = _app_release(profile, start_ts)
    hdrs = _AppHeaders(profile)
    span = count / rate
    n_clients = max(2, count // 60)
    country = rng.choice([c for c in COUNTRIES if c.code in ("US", "GB", "DE", "FR", "MX")])
    swap_at = [i for i, n in enumerate(hdrs.order[:-1]) if n in (hdrs.stamp, "accept-language")]
    clients = []
    for k in range(n_clients):
        flaw = "h2" if evasion < 2 or k % 2 == 0 else "order"
        h2 = GO_H2 if evasion < 2 else OKHTTP_SETTINGS_GO_PSEUDO if flaw == "h2" else None
        clients.append((_account_id(rng), f"android-{_hex(rng, 16)}",
                        _draw_handset(rng, rng.choices(models, weights=weights)[0]),
                        rng.choice(country.locales)[0], _app_stack(profile, version, h2), flaw))
    events: list[dict[str, Any]] = []
    while len(events) < count:
        account, device_id, device, locale, stack, flaw = rng.choice(clients)
        ts = start_ts + rng.uniform(0, span)
        ip, network = _residential(rng, country)
        ua = ua_string(b.app_token, version, code, device, locale)
        sid = _uuid4(rng)
        calls = [_startup_call(rng, s) for s in range(len(STARTUP_PATHS))]
        calls += [_browse_call(rng, p + 1) if rng.random() < 0.6 else _action_call(rng)
                  for p in range(rng.randint(2, 10))]
        token_ts = ts - rng.uniform(0.3, 2.0)
        for step, (method, path, query, body_size) in enumerate(calls):
            values = hdrs.values(device_id=device_id, session_id=sid, account=account, signed_at=ts, locale=locale,
                                 conn="WIFI", bandwidth=rng.uniform(8000, 60000) if step else None, ua=ua,
                                 body_size=body_size)
            headers = hdrs.ordered(values)
            if evasion == 0:
                rng.shuffle(headers)
                if [n for n, _ in headers] == [n for n, _ in hdrs.ordered(values)]:
                    headers.reverse()
            elif evasion == 1:
                front = [h for h in headers if h[0] in ("user-agent", "accept-encoding")]
                headers = front[::-1] + [h for h in headers if h[0] not in ("user-agent", "accept-encoding")]
            elif flaw == "order":
                names = [n for n, _ in headers]
                i = names.index(hdrs.order[swap_at[0]]) if swap_at and hdrs.order[swap_at[0]] in names else 0
                headers[i], headers[i + 1] = headers[i + 1], headers[i]
            att = _real_device_attestation(profile, rng, ts - token_ts) if evasion == 2 else None
            events.append(b.request(
                ts, ip=ip, method=method, path=path, query=query, headers=headers, key_id=key_id,
                body_size=body_size, http_version=stack.http_version, tls=dict(stack.tls), h2=stack.h2,
                network=network, attestation=att))
            ts += rng.uniform(0.02, 0.35) if step < len(STARTUP_PATHS) - 1 else rng.uniform(1.0, 12.0)
    yield from _in_order(events, count)
