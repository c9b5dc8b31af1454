"""Fan-out: too many distinct accounts or devices around one entity within a sliding
window: one device identity used by many accounts (a library's default device,
credential harvesting), one account on many devices (account hopping), many accounts
or devices behind one IP block or one hosting ASN (farms and proxies)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from detector.behaviour.base import Finding
from detector.behaviour.records import BehaviourSettings, EntityRecord, Fanout
from detector.behaviour.state import count_since, touch

DEVICE_ACCOUNTS = "behaviour.device_account_fanout"
ACCOUNT_DEVICES = "behaviour.account_device_fanout"
IP_BLOCK_ACCOUNTS = "behaviour.ip_block_account_fanout"
IP_BLOCK_DEVICES = "behaviour.ip_block_device_fanout"
HOSTING_ASN_ACCOUNTS = "behaviour.hosting_asn_account_fanout"
HOSTING_ASN_DEVICES = "behaviour.hosting_asn_device_fanout"


def _fanout(st: dict[str, Any], name: str, member: str | None, r: EntityRecord, f: Fanout, cap: int) -> int:
    seen = st.setdefault(name, {})
    if member:
        touch(seen, member, r.ts, cap)
    return count_since(seen, r.ts - f.window_s)


def _window(f: Fanout) -> str:
    return f"{f.window_s / 3600:g} h" if f.window_s >= 3600 else f"{f.window_s / 60:g} min"


class DeviceFanout:
    state_key: ClassVar[str] = "DeviceFanout"  # stored state's key: never change it
    state_version: ClassVar[int] = 1
    etype: ClassVar[str] = "device"
    codes: ClassVar[Mapping[str, str]] = {DEVICE_ACCOUNTS: "one device identity used by too many accounts"}

    def observe(self, st: dict[str, Any], r: EntityRecord, s: BehaviourSettings) -> list[Finding]:
        n = _fanout(st, "acc", r.account, r, s.device_accounts, s.max_distinct)
        if n >= s.device_accounts.threshold:
            return [Finding(DEVICE_ACCOUNTS,
                            f"device {r.key} used by {n} accounts within {_window(s.device_accounts)}")]
        return []


class AccountFanout:
    state_key: ClassVar[str] = "AccountFanout"  # stored state's key: never change it
    state_version: ClassVar[int] = 1
    etype: ClassVar[str] = "account"
    codes: ClassVar[Mapping[str, str]] = {ACCOUNT_DEVICES: "one account used from too many devices"}

    def observe(self, st: dict[str, Any], r: EntityRecord, s: BehaviourSettings) -> list[Finding]:
        n = _fanout(st, "dev", r.device, r, s.account_devices, s.max_distinct)
        if n >= s.account_devices.threshold:
            return [Finding(ACCOUNT_DEVICES,
                            f"account {r.key} used from {n} devices within {_window(s.account_devices)}")]
        return []


def _accounts_and_devices(st: dict[str, Any], r: EntityRecord, s: BehaviourSettings, where: str,
                          accounts: tuple[str, Fanout], devices: tuple[str, Fanout]) -> list[Finding]:
    """Distinct accounts and distinct devices behind one network entity, each against
    its own window and threshold."""
    out = []
    for (code, f), name, member in ((accounts, "acc", r.account), (devices, "dev", r.device)):
        n = _fanout(st, name, member, r, f, s.max_distinct)
        if n >= f.threshold:
            out.append(Finding(code, f"{n} {'accounts' if name == 'acc' else 'devices'} {where} within {_window(f)}"))
    return out


class IpBlockFanout:
    state_key: ClassVar[str] = "IpBlockFanout"  # stored state's key: never change it
    state_version: ClassVar[int] = 1
    etype: ClassVar[str] = "ip_block"
    codes: ClassVar[Mapping[str, str]] = {
        IP_BLOCK_ACCOUNTS: "too many accounts behind one IP block",
        IP_BLOCK_DEVICES: "too many devices behind one IP block",
    }

    def observe(self, st: dict[str, Any], r: EntityRecord, s: BehaviourSettings) -> list[Finding]:
        return _accounts_and_devices(st, r, s, f"behind {r.key}", (IP_BLOCK_ACCOUNTS, s.ip_block_accounts),
                                     (IP_BLOCK_DEVICES, s.ip_block_devices))


class HostingAsnFanout:
    """Only hosting ASNs: a mobile carrier's ASN carries millions of accounts."""

    state_key: ClassVar[str] = "HostingAsnFanout"  # stored state's key: never change it
    state_version: ClassVar[int] = 1
    etype: ClassVar[str] = "asn"
    codes: ClassVar[Mapping[str, str]] = {
        HOSTING_ASN_ACCOUNTS: "too many accounts from one hosting network",
        HOSTING_ASN_DEVICES: "too many devices from one hosting network",
    }

    def observe(self, st: dict[str, Any], r: EntityRecord, s: BehaviourSettings) -> list[Finding]:
        if not r.hosting:
            return []
        return _accounts_and_devices(st, r, s, f"from hosting network {r.key}",
                                     (HOSTING_ASN_ACCOUNTS, s.hosting_asn_accounts),
                                     (HOSTING_ASN_DEVICES, s.hosting_asn_devices))
