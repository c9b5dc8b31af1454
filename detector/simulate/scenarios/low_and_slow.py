"""Engagement bots that stay under every rate threshold."""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from typing import Any

from detector.devices import DeviceCatalogue
from detector.profile import ClientProfile
from detector.simulate.handsets import _draw_handset, _models, ua_string
from detector.simulate.kit import (
    GO_H2,
    PYTHON_STACK,
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
from detector.simulate.places import _COUNTRY, COUNTRIES
from detector.simulate.wire import (
    DEFAULT_START_TS,
    STARTUP_PATHS,
    _Builder,
    _hex,
    _uuid4,
)


def low_and_slow(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
                 evasion: int = 0, rate: float | None = None, *,
                 catalogue: DeviceCatalogue | None = None) -> Iterator[dict[str, Any]]:
    """Engagement bots that stay under every rate threshold: hundreds of accounts
    registered in bulk (neighbouring account ids), one device id each, and one short
    session per account every 30-60 minutes (a like or a follow, nothing more), each
    from a fresh residential address. Every account runs the same cloned phone image:
    one device tuple, one app build, one locale across the fleet. Nothing is fast; what
    gives it away is the fingerprint. `evasion` 0: Python requests beneath (desktop TLS,
    HTTP/1.1, its header order and case); 1: uTLS with OkHttp's ClientHello but Go's
    HTTP/2; 2: OkHttp with Conscrypt, relayed Play Integrity tokens and full app
    sessions (start-up burst, a look at the feed, then the action): per request it is
    the app, and only population signals (one device fingerprint on hundreds of new
    device ids and accounts) can see it."""
    _check_evasion(evasion)
    rng = random.Random(f"low_and_slow:{seed}")
    b = _Builder(profile, rng, "low_and_slow", True)
    if count <= 0:
        return
    rate = rate or 1.0
    models, weights = _models(catalogue)
    version, code, key_id = _app_release(profile, start_ts)
    stack = PYTHON_STACK if evasion == 0 else _app_stack(profile, version, GO_H2 if evasion == 1 else None)
    hdrs = _AppHeaders(profile)
    session_len = len(STARTUP_PATHS) + 2 if evasion == 2 else 2
    interval = (1800.0, 3600.0)  # between two sessions of one account
    # Enough accounts that the fleet's total is `rate` while each stays slow.
    n_accounts = max(3, round(rate * sum(interval) / 2 / session_len))
    device = _draw_handset(rng, rng.choices(models, weights=weights)[0])
    country = _COUNTRY["US"]
    locale = "en_US"
    ua = ua_string(b.app_token, version, code, device, locale)
    base = rng.randint(10**10, 5 * 10**10)
    accounts = []
    heap: list[tuple[float, int]] = []
    for k in range(n_accounts):
        base += rng.randint(1, 60)  # registered in one batch: ids close together
        accounts.append((str(base), f"android-{_hex(rng, 16)}"))
        heap.append((start_ts + rng.uniform(0, interval[1]), k))
    heapq.heapify(heap)
    exits = [c for c in COUNTRIES if c.code in ("US", "GB", "DE", "BR", "IN")] if evasion == 0 else [country]
    events: list[dict[str, Any]] = []
    while len(events) < count:
        ts, k = heapq.heappop(heap)
        account, device_id = accounts[k]
        ip, network = _residential(rng, rng.choice(exits))
        sid = _uuid4(rng)
        conn = rng.choice(("WIFI", "MOBILE.LTE"))
        bandwidth = rng.uniform(3000, 40000)
        if evasion == 2:
            calls = [_startup_call(rng, s) for s in range(len(STARTUP_PATHS))]
            calls += [_browse_call(rng, 1), _action_call(rng)]
        else:
            calls = [("GET", "/api/v1/feed/timeline", None, None), _action_call(rng)]
        token_ts = ts - rng.uniform(0.3, 2.0)
        t = ts
        for step, (method, path, query, body_size) in enumerate(calls):
            values = hdrs.values(device_id=device_id, session_id=sid, account=account, signed_at=t, locale=locale,
                                 conn=conn, bandwidth=bandwidth if step else None, ua=ua, body_size=body_size)
            if evasion == 0:
                values["accept-encoding"] = "gzip, deflate"
                headers = [("accept", "*/*"), ("connection", "keep-alive")] + hdrs.ordered(values)
            else:
                headers = hdrs.ordered(values)
            events.append(b.request(
                t, ip=ip, method=method, path=path, query=query, headers=headers, key_id=key_id,
                body_size=body_size, title_case=evasion == 0, http_version=stack.http_version,
                tls=dict(stack.tls), h2=stack.h2, network=network,
                attestation=_real_device_attestation(profile, rng, t - token_ts) if evasion == 2 else None))
            t += rng.uniform(0.05, 0.3) if step < len(calls) - 2 else rng.uniform(3.0, 20.0)
        heapq.heappush(heap, (ts + rng.uniform(*interval), k))
    yield from _in_order(events, count)
