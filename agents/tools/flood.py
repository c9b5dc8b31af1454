"""The bench's flood (`detector bench --flood`): requests that each come from a new
device id, account, IP and /24 (or /48), derived from simulator genuine requests with
fresh ids and signed again (valid requests: only their ids are new), with a bot network
interleaved in event time; and the entities of that network, to find its alerts."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Any

from detector.devices import DeviceCatalogue
from detector.entities import ip_block
from detector.profile import ClientProfile
from detector.simulate import bot_network, device_checksum, genuine, resign

# genuine requests the fresh-id copies are derived from (each used count/TEMPLATES times)
TEMPLATES = 5_000
ALERTED_TYPES = ("device", "account", "ip", "ip_block")


def fresh_ip(template: str, i: int) -> str:
    """A new address, in a /24 (IPv4) or /48 (IPv6) of its own for every i < 2^22,
    near the template's (its first octet or its first 16 bits: the same carrier's
    neighbourhood in spirit; the edge's `network` field is kept)."""
    addr = ipaddress.ip_address(template)
    if addr.version == 4:
        first = int(template.split(".", 1)[0])
        first = first if first + (i >> 16) <= 223 else 1
        return f"{first + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.{1 + i % 253}"
    head = template.split(":", 1)[0]
    return f"{head}:{(i >> 16) & 0xffff:x}:{i & 0xffff:x}::{1 + i % 0xfffe:x}"


def _set_header(headers: list[list[str]], name: str, value: str) -> None:
    for h in headers:
        if h[0].lower() == name:
            h[1] = value


def flood_requests(profile: ClientProfile, count: int, seed: int, rate: float, start_ts: float, *,
                   catalogue: DeviceCatalogue | None = None, bots: int = 0) -> list[dict[str, Any]]:
    """`count` genuine-looking requests at `rate` per second of event time from
    `start_ts`, each with a new device id (and checksum), account, session and IP,
    plus `bots` requests of the bot_network scenario over the same span, in `ts` order."""
    span = count / rate
    base = list(genuine(profile, min(count, TEMPLATES), seed, start_ts, catalogue=catalogue))
    if not base:
        return []
    signing = profile.signing
    ts_header = signing.timestamp_header if signing else "x-es-timestamp"
    dev_h = (profile.ids["device"].header if "device" in profile.ids else None) or "x-es-device-id"
    acct_h = (profile.ids["account"].header if "account" in profile.ids else None) or "x-es-user-id"
    out: list[dict[str, Any]] = []
    for i in range(count):
        tpl = base[i % len(base)]
        ts = round(start_ts + span * i / count, 3)
        digest = hashlib.sha256(f"flood:{seed}:{i}".encode()).hexdigest()
        device_id = f"android-{digest[:16]}"
        headers = [list(h) for h in tpl["headers"]]
        _set_header(headers, dev_h, device_id)
        _set_header(headers, "x-es-device-checksum", device_checksum(profile, device_id))
        _set_header(headers, acct_h, str(10**9 + int(digest[16:26], 16) % (9 * 10**9)))
        _set_header(headers, "x-es-session-id",
                    f"{digest[26:34]}-{digest[34:38]}-4{digest[39:42]}-a{digest[43:46]}-{digest[46:58]}")
        # the signing time keeps the template's offset from its ts (the phone's clock skew)
        for h in headers:
            if h[0].lower() == ts_header:
                h[1] = str(int(h[1]) + round(ts - tpl["ts"]))
        req = {**tpl, "request_id": f"flood-{i:08d}-{digest[58:64]}", "ts": ts,
               "client_ip": fresh_ip(tpl["client_ip"], i), "headers": headers,
               "label": {"scenario": "flood", "malicious": False}}
        out.append(resign(profile, req) if signing else req)
    if bots > 0:
        out.extend(bot_network(profile, bots, seed, start_ts, rate=bots / span, catalogue=catalogue))
    out.sort(key=lambda e: e["ts"])
    return out


def bot_entities(events: Iterable[dict[str, Any]], profile: ClientProfile) -> set[tuple[str, str]]:
    """(type, id) of the bot network's devices, accounts, IPs and IP blocks."""
    dev_h = (profile.ids["device"].header if "device" in profile.ids else None) or "x-es-device-id"
    acct_h = (profile.ids["account"].header if "account" in profile.ids else None) or "x-es-user-id"
    out: set[tuple[str, str]] = set()
    for e in events:
        if e.get("label", {}).get("scenario") != "bot_network":
            continue
        out.add(("ip", e["client_ip"]))
        out.add(("ip_block", ip_block(e["client_ip"])))
        for name, value in e["headers"]:
            if name.lower() == dev_h:
                out.add(("device", value))
            elif name.lower() == acct_h:
                out.add(("account", value))
    return out
