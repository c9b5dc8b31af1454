"""The genuine population: users with their handsets, places, habits and app releases
(staged roll-outs), and the sessions they run, sized to a count and a rate."""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from detector.devices import DeviceCatalogue
from detector.profile import AppVersion, ClientProfile, signing_key_for
from detector.simulate.handsets import DeviceSpec, _draw_handset, _models
from detector.simulate.places import (
    COUNTRIES,
    VPN_EXITS,
    VPN_NETWORKS,
    Country,
    _diurnal,
    _ip,
    _ipv4,
)
from detector.simulate.wire import BADGE_PATH, STARTUP_PATHS, _hex, _uuid4

# The genuine population


def _release_ts(v: AppVersion) -> float | None:
    if not v.released:
        return None
    try:
        return datetime.strptime(str(v.released), "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


@dataclass(slots=True)
class _Release:
    version: AppVersion
    ts: float  # when its staged roll-out started
    codes: tuple[int, ...]
    key_id: str | None


def _releases(profile: ClientProfile, start_ts: float) -> list[_Release]:
    """The versions a genuine user can run (not retired), newest first, with their
    roll-out start; a version without a `released` date is put two weeks before the
    next newer one (or two weeks before the simulation for the newest)."""
    live = sorted((v for v in profile.versions.values() if v.status != "retired"), key=lambda v: v.sort_key,
                  reverse=True)
    if not live:
        raise ValueError(f"profile {profile.name} has no version that is not retired")
    out: list[_Release] = []
    newer_ts = start_ts
    for v in live:
        ts = _release_ts(v)
        ts = newer_ts - 14 * 86400 if ts is None else ts
        newer_ts = min(newer_ts, ts)
        out.append(_Release(v, ts, tuple(sorted(v.codes)), signing_key_for(profile, v)))
    return out


ROLLOUT_S = 7 * 86400.0  # a staged roll-out reaches every user within a week


@dataclass(slots=True)
class _Session:
    sid: str
    account: str | None
    ip: str
    network: dict[str, Any]
    conn: str
    bandwidth: float
    release: _Release
    code: int
    length: int
    token_ts: float
    step: int = 0
    cursor: int = 0
    last_badge: float = 0.0
    media: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _User:
    handset: DeviceSpec
    country: Country
    locale: str
    utc_offset: float  # hours, with the user's own rhythm folded in
    device_id: str
    accounts: list[str]  # empty: not logged in
    home: tuple[int, str, str]  # home ISP (asn, org) and the household's address
    carrier: tuple[int, str]
    activity: float  # sessions per second at the evening peak
    lag_s: float  # how long after a roll-out reaches the user the update is installed
    rollout_u: float  # the user's place in staged roll-outs
    split: float  # which per-ABI/density build of a version the device gets
    strong_integrity: bool
    abroad: Country | None = None  # travelling: Wi-Fi sessions from this country's networks
    clock_s: float = 0.0  # how far the phone's clock runs behind (negative: ahead), seconds
    vpn: bool = False
    reinstall_at: float | None = None
    session: _Session | None = None
    sec: int = -1  # the current second of event time, and what was requested in it
    sec_keys: set[tuple[str, str, str | None]] = field(default_factory=set)


class _Population:
    """Users, their handsets, places and habits, and the sessions they run."""

    # Shares of devices, drawn as exact counts (rounded down) so that small samples
    # are plain and large ones carry every kind of user.
    TRAVELLERS = 0.015
    EXPATS = 0.01
    VPN = 0.008
    SHARED = 0.03
    REINSTALLS = 0.02
    LOGGED_OUT = 0.02
    ACTION_SHARE = 0.10

    def __init__(self, profile: ClientProfile, rng: random.Random, catalogue: DeviceCatalogue | None,
                 count: int, start_ts: float, span: float):
        self.profile = profile
        self.rng = rng
        self.start_ts = start_ts
        self.span = span
        self.releases = _releases(profile, start_ts)
        self.models, self.model_weights = _models(catalogue)
        self.account_ids: set[str] = set()
        mean_len, mean_dur, mean_gap = _session_shape()
        # About one handset per 15 requests; more when the rate is so high that a device
        # could not send its share within the span (half its capacity at most).
        busy = mean_dur + SESSION_PAUSE_S
        capacity = mean_len * span / busy if span > busy else max(1.0, span / mean_gap)
        n = max(1, min(count, max(5, round(count / 15), math.ceil(2 * count / capacity))))
        self.users = self._households(n)
        self._special(n)
        self._calibrate(count)

    # ---------------------------------------------------------------- who

    def _account(self) -> str:
        while True:
            # Older accounts have shorter ids; the profile's format is 5..20 digits.
            digits = self.rng.choices((8, 9, 10, 11), weights=(1, 3, 4, 2))[0]
            a = str(self.rng.randint(10 ** (digits - 1), 10**digits - 1))
            if a not in self.account_ids:
                self.account_ids.add(a)
                return a

    def _households(self, n: int) -> list[_User]:
        rng = self.rng
        users: list[_User] = []
        weights = [c.weight for c in COUNTRIES]
        while len(users) < n:
            country = rng.choices(COUNTRIES, weights=weights)[0]
            home_isp = rng.choice(country.wifi)
            home = (home_isp[0], home_isp[1], _ipv4(rng, home_isp[0]))
            offset = rng.choice(country.utc_offsets)
            size = rng.choices((1, 2, 3, 4), weights=(60, 25, 10, 5))[0]
            for _ in range(min(size, n - len(users))):
                locales = [loc for loc, _ in country.locales]
                locale = rng.choices(locales, weights=[w for _, w in country.locales])[0]
                users.append(_User(
                    handset=_draw_handset(rng, rng.choices(self.models, weights=self.model_weights)[0]),
                    country=country, locale=locale, utc_offset=offset + rng.gauss(0, 1.0),
                    device_id=f"android-{_hex(rng, 16)}", accounts=[self._account()], home=home,
                    carrier=rng.choice(country.mobile), activity=rng.lognormvariate(0, 0.6),
                    lag_s=rng.lognormvariate(math.log(7 * 86400), 1.4), rollout_u=rng.random(), split=rng.random(),
                    strong_integrity=rng.random() < 0.4,
                ))
                users[-1].clock_s = _clock_offset(users[-1].device_id)
        return users

    def _special(self, n: int) -> None:
        rng, users = self.rng, self.users

        def pick(share: float) -> list[_User]:
            return rng.sample(users, int(share * n))

        for u in pick(self.TRAVELLERS):
            u.abroad = rng.choice([c for c in COUNTRIES if c.code != u.country.code])
        for u in pick(self.EXPATS):  # living abroad, phone still set to the home language
            origin = rng.choice([c for c in COUNTRIES if c.code != u.country.code])
            u.locale = origin.locales[0][0]
        for u in pick(self.VPN):
            u.vpn = True
        for u in pick(self.SHARED):  # a family device: a second account logs in on it
            u.accounts.append(self._account())
        for u in pick(self.REINSTALLS):
            u.reinstall_at = self.start_ts + rng.uniform(0.1, 0.9) * self.span
        for u in pick(self.LOGGED_OUT):
            u.accounts = []

    # ---------------------------------------------------------------- when

    def _calibrate(self, count: int) -> None:
        """Scale every user's session rate so the expected number of requests over the
        span is `count`: a user starts sessions at rate k * activity * rhythm while idle
        and is busy for a session's duration and pause after each, so the expected
        sessions over the span are span / (1 / (k * activity * rhythm) + busy)."""
        mean_len, mean_dur, _ = _session_shape()
        busy = mean_dur + SESSION_PAUSE_S
        steps = 24
        base = []
        for u in self.users:
            avg = sum(self._rhythm(u, self.start_ts + self.span * i / steps) for i in range(steps + 1)) / (steps + 1)
            base.append(u.activity * avg)

        def expected(k: float) -> float:
            return sum(self.span * mean_len / (1.0 / (k * b) + busy) for b in base)

        lo, hi = 1e-12, 1.0
        while expected(hi) < count and hi < 1e6:
            hi *= 10
        for _ in range(60):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if expected(mid) < count else (lo, mid)
        for u in self.users:
            u.activity *= hi

    @staticmethod
    def _rhythm(u: _User, ts: float) -> float:
        return _diurnal(ts / 3600.0 + u.utc_offset)

    def next_session(self, u: _User, after: float) -> float:
        """The next session start after `after`: a Poisson process thinned by the
        user's local time of day (fewer sessions at night)."""
        rng = self.rng
        t = after
        while True:
            t += rng.expovariate(u.activity)
            if rng.random() < self._rhythm(u, t):
                return t

    # ---------------------------------------------------------------- what

    def release_at(self, u: _User, ts: float) -> _Release:
        delay = u.rollout_u * ROLLOUT_S
        for r in self.releases:
            if r.ts + delay + u.lag_s <= ts:
                return r
        # Retired versions force an update: the newest the roll-out has reached.
        for r in self.releases:
            if r.ts + delay <= ts:
                return r
        return self.releases[-1]

    def start_session(self, u: _User, ts: float) -> _Session:
        rng = self.rng
        if u.reinstall_at is not None and ts >= u.reinstall_at:
            # Reinstalled: a new ANDROID_ID, the newest build from the store, same login.
            u.device_id = f"android-{_hex(rng, 16)}"
            u.reinstall_at, u.lag_s = None, 0.0
        release = self.release_at(u, ts)
        code = release.codes[min(len(release.codes) - 1, int(u.split * len(release.codes)))]
        account = None
        if u.accounts:
            account = u.accounts[0] if len(u.accounts) == 1 or rng.random() < 0.65 else rng.choice(u.accounts[1:])
        local = (ts / 3600.0 + u.utc_offset) % 24
        daytime = 8 <= local < 22
        c = u.country
        mobile = rng.random() < min(0.95, c.mobile_share * (1.15 if daytime else 0.6))
        if mobile:
            r = rng.random()
            if r < c.legacy_share:
                conn = rng.choices(("MOBILE.HSPA", "MOBILE.UMTS", "MOBILE.EDGE"), weights=(6, 3, 1))[0]
            elif r < c.legacy_share + c.nr_share:
                conn = "MOBILE.NR"
            else:
                conn = "MOBILE.LTE"
            asn, org = u.carrier  # roaming is routed through the home carrier
            net_country, ip = c.code, _ip(rng, asn)
        else:
            conn = "WIFI"
            if u.abroad is not None:  # hotel or café Wi-Fi
                asn, org = rng.choice(u.abroad.wifi)
                net_country, ip = u.abroad.code, _ipv4(rng, asn)
            else:
                asn, org, ip = u.home
                net_country = c.code
        network: dict[str, Any] = {"asn": asn, "as_org": org, "country": net_country, "hosting": False}
        if u.vpn and rng.random() < 0.6:
            asn, org = rng.choice(VPN_NETWORKS)
            exit_country = c.code if rng.random() < 0.5 else rng.choice(VPN_EXITS)
            network = {"asn": asn, "as_org": org, "country": exit_country, "hosting": True}
            ip = _ipv4(rng, asn)
        median_kbps = {"WIFI": 30000, "MOBILE.NR": 60000, "MOBILE.LTE": 12000, "MOBILE.HSPA": 2500,
                       "MOBILE.UMTS": 800, "MOBILE.EDGE": 150}[conn]
        # A quick look (the start-up calls and a little more) or a real visit.
        length = _session_length(rng)
        return _Session(sid=_uuid4(rng), account=account, ip=ip, network=network, conn=conn,
                        bandwidth=median_kbps * rng.lognormvariate(0, 0.5), release=release, code=code,
                        length=length, token_ts=ts - rng.uniform(0.3, 2.0), last_badge=ts)

    def next_call(self, s: _Session, ts: float) -> tuple[str, str, str | None, int | None]:
        """(method, path, query, body size) of the session's next request."""
        rng = self.rng
        step = s.step
        if step < len(STARTUP_PATHS):
            path = STARTUP_PATHS[step]
            if step == 0:
                return "POST", path, None, rng.randint(180, 900)
            return "GET", path, None, None
        if ts - s.last_badge > 120:
            s.last_badge = ts
            return "GET", BADGE_PATH, None, None
        if s.account is not None and rng.random() < self.ACTION_SHARE:
            kind = rng.choices(("like", "follow", "comment"), weights=(70, 18, 12))[0]
            # Users act on what they just looked at, once.
            if kind == "follow":
                uid = s.users.pop(rng.randrange(len(s.users))) if s.users else str(rng.randint(10**8, 10**10))
                return "POST", f"/api/v1/friendships/{uid}/follow", None, rng.randint(40, 120)
            mid = s.media.pop(rng.randrange(len(s.media))) if s.media else str(rng.randint(10**17, 10**18))
            size = rng.randint(50, 110) if kind == "like" else rng.randint(80, 700)
            return "POST", f"/api/v1/media/{mid}/{kind}", None, size
        r = rng.random()
        if r < 0.35:
            s.cursor += 1
            return "GET", "/api/v1/feed/timeline", f"max_id={rng.randint(10**17, 10**18)}&page={s.cursor}", None
        if r < 0.7:
            mid = str(rng.randint(10**17, 10**18))
            s.media = (s.media + [mid])[-20:]
            return "GET", f"/api/v1/media/{mid}/info", None, None
        if r < 0.85:
            uid = str(rng.randint(10**8, 10**10))
            s.users = (s.users + [uid])[-20:]
            return "GET", f"/api/v1/users/{uid}/info", None, None
        return "GET", "/api/v1/explore", None, None

    def gap(self, step: int, path: str) -> float:
        kind = "like" if "/like" in path or "/follow" in path else "comment" if "/comment" in path else "browse"
        return _gap(self.rng, step, kind)


def _clock_offset(device_id: str) -> float:
    """How far a phone's clock is off: most follow network time within a second or
    two, some drift by up to a minute, a few were set by hand minutes off (still
    within the signing skew). Drawn from the device id, so adding it moved no other
    draw of the population."""
    r = random.Random(f"clock:{device_id}")
    u = r.random()
    if u < 0.9:
        return r.gauss(0.0, 1.0)
    return r.choice((-1, 1)) * (r.uniform(3.0, 60.0) if u < 0.98 else r.uniform(60.0, 240.0))


def _session_length(rng: random.Random) -> int:
    """Requests in a session: a quick look (the start-up calls and a little more) or a
    real visit."""
    if rng.random() < 0.15:
        return len(STARTUP_PATHS) + rng.randint(0, 3)
    return len(STARTUP_PATHS) + min(150, int(rng.lognormvariate(math.log(12), 0.8)))


def _gap(rng: random.Random, step: int, kind: str) -> float:
    """Seconds until request `step` of a session: the start-up calls leave together
    (OkHttp multiplexes them on one connection), then a user reads and scrolls."""
    if step < len(STARTUP_PATHS):
        return rng.uniform(0.02, 0.35)
    if kind == "like":
        return rng.uniform(0.8, 8.0)
    if kind == "comment":
        return rng.uniform(6.0, 45.0)
    return min(120.0, max(0.3, rng.lognormvariate(math.log(4.0), 0.9)))


SESSION_PAUSE_S = 30.0  # the least time between two sessions of one device


@functools.lru_cache(maxsize=1)
def _session_shape() -> tuple[float, float, float]:
    """(mean requests, mean duration in seconds, mean gap) of a session, by sampling
    the same distributions with a fixed generator of its own (no effect on a seed's
    traffic): what the population needs to size itself to a count and a rate."""
    rng = random.Random("session-shape")
    n, total_len, total_dur, gaps = 4000, 0, 0.0, 0
    for _ in range(n):
        length = _session_length(rng)
        total_len += length
        for step in range(1, length):
            r = rng.random()
            kind = "browse" if r >= _Population.ACTION_SHARE else "comment" if r < 0.012 else "like"
            total_dur += _gap(rng, step, kind)
            gaps += 1
    return total_len / n, total_dur / n, total_dur / max(gaps, 1)
