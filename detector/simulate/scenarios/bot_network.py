"""A credential-harvesting network running the accounts its users handed over."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

from detector.devices import DeviceCatalogue
from detector.profile import ClientProfile
from detector.simulate.handsets import _draw_handset, _models, ua_string
from detector.simulate.kit import (
    HOSTING_NETWORKS,
    _account_id,
    _action_call,
    _app_release,
    _app_stack,
    _AppHeaders,
    _carrier_blocks,
    _check_evasion,
    _in_order,
    _real_device_attestation,
)
from detector.simulate.places import COUNTRIES, _prefixes
from detector.simulate.wire import DEFAULT_START_TS, _Builder, _hex, _uuid4


def bot_network(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
                evasion: int = 0, rate: float | None = None, *,
                catalogue: DeviceCatalogue | None = None) -> Iterator[dict[str, Any]]:
    """A credential-harvesting network: its users handed over their logins, and it runs
    their accounts (likes, follows, comments sold as engagement). Many accounts per device
    identity (a pool of about one identity per 25 accounts, each session of an account on
    whichever identity is free: accounts hop between devices) and per IP block (the few
    /24 blocks the network exits from), sessions of actions only, with none of the
    start-up and browsing calls of a real session. Devices are real catalogue phones and
    requests carry the current build's headers, TLS, HTTP/2 and a valid signature at
    every level. `evasion` 0: OkHttp on servers in datacenters, no attestation, a fixed
    3 s between actions; 1: residential proxies, Play Integrity tokens reused long after
    they were issued, 2-6 s between actions; 2: a phone farm behind mobile proxies:
    fresh tokens, human-like pauses, a config call before the actions. Per request it is
    then the app; only behaviour gives it away."""
    _check_evasion(evasion)
    rng = random.Random(f"bot_network:{seed}")
    b = _Builder(profile, rng, "bot_network", True)
    if count <= 0:
        return
    rate = rate or 3.0
    models, weights = _models(catalogue)
    version, code, key_id = _app_release(profile, start_ts)
    stack = _app_stack(profile, version)
    hdrs = _AppHeaders(profile)
    span = count / rate
    n_accounts = max(10, count // 12)
    n_identities = max(2, n_accounts // 25)
    country = rng.choice([c for c in COUNTRIES if c.code in ("IN", "BR", "ID", "TR", "US")])
    locales = [loc for loc, _ in country.locales]
    identities = [(f"android-{_hex(rng, 16)}", _draw_handset(rng, rng.choices(models, weights=weights)[0]),
                   rng.choice(locales)) for _ in range(n_identities)]
    accounts = [_account_id(rng) for _ in range(n_accounts)]
    if evasion == 0:
        dcs = rng.sample(HOSTING_NETWORKS, 2)
        blocks = []
        for dc in dcs:
            for _ in range(2):
                a, bb = rng.choice(_prefixes(dc[0]))
                blocks.append((f"{a}.{bb}.{rng.randint(0, 255)}",
                               {"asn": dc[0], "as_org": dc[1], "country": dc[2], "hosting": True}))
    else:
        blocks = _carrier_blocks(rng, country, 6 if evasion == 1 else 10)
    events: list[dict[str, Any]] = []
    while len(events) < count:
        ts = start_ts + rng.uniform(0, span)
        account = rng.choice(accounts)
        device_id, device, locale = rng.choice(identities)
        block, network = rng.choice(blocks)
        ip = f"{block}.{rng.randint(2, 254)}"
        ua = ua_string(b.app_token, version, code, device, locale)
        sid = _uuid4(rng)
        conn = "WIFI" if evasion == 0 else rng.choice(("MOBILE.LTE", "MOBILE.LTE", "WIFI"))
        bandwidth = rng.uniform(3000, 40000)
        calls: list[tuple[str, str, str | None, int | None]] = (
            [("GET", "/api/v1/config", None, None)] if evasion == 2 else [])
        calls += [_action_call(rng) for _ in range(rng.randint(3, 8))]
        token_ts = ts - (rng.uniform(900, 3600) if evasion == 1 else rng.uniform(0.3, 2.0))
        for step, (method, path, query, body_size) in enumerate(calls):
            values = hdrs.values(device_id=device_id, session_id=sid, account=account, signed_at=ts, locale=locale,
                                 conn=conn, bandwidth=bandwidth if step else None, ua=ua, body_size=body_size)
            att = None if evasion == 0 else _real_device_attestation(profile, rng, ts - token_ts)
            events.append(b.request(
                ts, ip=ip, method=method, path=path, query=query, headers=hdrs.ordered(values), key_id=key_id,
                body_size=body_size, http_version=stack.http_version, tls=dict(stack.tls), h2=stack.h2,
                network=network, attestation=att))
            ts += 3.0 if evasion == 0 else rng.uniform(2.0, 6.0) if evasion == 1 else min(
                60.0, rng.lognormvariate(math.log(5.0), 0.6))
    yield from _in_order(events, count)
