"""The map of flagged entities that every worker holds: only entities with an active
behavioural flag travel (so it stays small), each flag with the event time until
which it holds. Verdicts read it to carry the behavioural signals of their entities.

In the stream a flag reaches the ingest stage after the shard raised it (the
broadcast delay), so a verdict can lag a flag; offline the map is updated right after
each request, which is the zero-delay limit of the same rule: a flag applies to the
requests after the one that raised it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from detector.behaviour.records import KEY_MAX_BYTES, entity_key
from detector.entities import RequestFacts
from detector.model import Signal


class Scope(msgspec.Struct, array_like=True, frozen=True, gc=False, omit_defaults=True):
    """Which of a flagged entity's requests a flag applies to, when not all of them:

    - `sign_age_over`: only requests signed more than this many seconds before they
      arrived (a device whose signed requests are replayed: its own requests carry its
      usual signing age, a replay carries the original's signing time);
    - `account_ids`: only requests whose numeric account id lies in [lo, hi] (a
      fingerprint surging with accounts registered in one batch: the real users of the
      same phone have account ids from anywhere in the id space);
    - `after_ts`: only requests dated after this event time (a reused signature: its
      first use, scored after the flag reached the ingest stage, is not its replay).
    Every given condition must hold. (A worker older than `after_ts` ignores it: the
    flag then applies to every request of the entity, as before.)"""

    sign_age_over: float | None = None
    account_ids: tuple[int, int] | None = None
    after_ts: float | None = None

    def admits(self, facts: RequestFacts | None) -> bool:
        if facts is None:
            return False
        if self.sign_age_over is not None and (facts.sign_age is None or facts.sign_age <= self.sign_age_over):
            return False
        if self.account_ids is not None:
            n = facts.account_number
            if n is None or not self.account_ids[0] <= n <= self.account_ids[1]:
                return False
        return self.after_ts is None or (facts.ts is not None and facts.ts > self.after_ts)

    def describe(self) -> str:
        parts = []
        if self.sign_age_over is not None:
            parts.append(f"requests signed over {self.sign_age_over:.0f} s before arrival")
        if self.account_ids is not None:
            parts.append(f"account ids {self.account_ids[0]}-{self.account_ids[1]}")
        if self.after_ts is not None:
            parts.append(f"requests after its first use at {self.after_ts:.3f}")
        return " and ".join(parts)


class Flag(msgspec.Struct, array_like=True, frozen=True, gc=False):
    code: str
    detail: str
    until: float  # event time
    scope: Scope | None = None  # None: every request of the entity


class FlagUpdate(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The complete current flags of one entity (empty: the entity is clear)."""

    etype: str
    key: str
    flags: tuple[Flag, ...]
    raised_at: float  # event time of the record that caused the update


FLAG_MAX_BYTES = 16 * 1024  # an encoded flag update never exceeds this
FLAG_DETAIL_MAX = 1024  # chars of a flag's evidence sentence (the engine clips it)
MAX_FLAGS = 16  # flags of one entity in one update (its detectors have a handful of codes)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(FlagUpdate).decode


def encode_update(u: FlagUpdate) -> bytes:
    """The update as JSON, at most `FLAG_MAX_BYTES`: the engine's updates are bounded
    by construction (keys by `entity_key`, sentences by FLAG_DETAIL_MAX); an update
    that is still larger (escaped control characters) goes out with its sentences cut
    shorter and at most MAX_FLAGS flags, the codes, expiry and scopes intact."""
    raw = _encode(u)
    if len(raw) <= FLAG_MAX_BYTES:
        return raw
    key = entity_key(u.key)
    # worst case escaped (x6): key, etype and framing 1536 bytes; per flag its code,
    # expiry, scope and framing 512 bytes, plus 6 per character of its sentence
    n = max(1, min(len(u.flags), MAX_FLAGS))
    budget = max(0, ((FLAG_MAX_BYTES - 1536) // n - 512) // 6)
    flags = tuple(msgspec.structs.replace(f, code=f.code[:64], detail=_clip(f.detail, budget))
                  for f in u.flags[:MAX_FLAGS])
    return _encode(FlagUpdate(u.etype[:64], key, flags, u.raised_at))


def decode_update(value: bytes) -> FlagUpdate:
    return _decode(value)


class FlagMap:
    def __init__(self, weight_of: Callable[[str], float]):
        self.weight_of = weight_of
        self._flags: dict[tuple[str, str], tuple[Flag, ...]] = {}
        self._signals: dict[tuple[str, str], tuple[Signal, ...]] = {}
        self._at: float | None = None  # see as_of

    def as_of(self, at: float) -> FlagMap:
        """A read-only view of the same flags that judges them at event time `at` at
        the latest: a request dated ahead of the reference clock (detector.eventtime)
        carries the flags in force at the reference, so its own date cannot outrun them."""
        view = FlagMap(self.weight_of)
        view._flags, view._signals, view._at = self._flags, self._signals, at
        return view

    def __len__(self) -> int:
        return len(self._flags)

    def apply(self, updates: Iterable[FlagUpdate]) -> None:
        if self._at is not None:
            raise TypeError("a FlagMap view (as_of) is read-only")
        for u in updates:
            key = (u.etype, u.key)
            if u.flags:
                self._flags[key] = u.flags
                self._signals[key] = tuple(
                    Signal(f.code, self.weight_of(f.code), f"{u.etype} {_short(u.key)}: {f.detail}"
                           + (f" (applies to {f.scope.describe()})" if f.scope is not None else ""))
                    for f in u.flags)
            else:
                self._flags.pop(key, None)
                self._signals.pop(key, None)

    def signals_for(self, entities: Mapping[str, str], ts: float, facts: RequestFacts | None = None) -> list[Signal]:
        """The signals of the request's flagged entities: flags still in force at `ts`
        whose scope (if any) admits the request's `facts`."""
        if not self._flags:
            return []
        if self._at is not None and ts > self._at:
            ts = self._at
        out: list[Signal] = []
        for etype, key in entities.items():
            k = (etype, key if len(key) <= KEY_MAX_BYTES and key.isascii() else entity_key(key))  # as records name it
            flags = self._flags.get(k)
            if flags is None:
                continue
            for f, sig in zip(flags, self._signals[k]):
                if f.until >= ts and (f.scope is None or f.scope.admits(facts)):
                    out.append(sig)
        return out

    def expire(self, watermark: float) -> None:
        """Drop entities whose every flag ended before `watermark` (event time)."""
        stale = [k for k, fl in self._flags.items() if all(f.until < watermark for f in fl)]
        for k in stale:
            del self._flags[k]
            self._signals.pop(k, None)

    def current(self) -> dict[tuple[str, str], tuple[Flag, ...]]:
        """Every flagged entity's flags, as last updated (expired ones included until
        `expire` drops them)."""
        return dict(self._flags)

    def snapshot(self) -> dict[str, Any]:
        return {f"{e}|{k}": [f.code for f in fl] for (e, k), fl in self._flags.items()}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:max(0, limit - 3)] + "..."[:limit]


def _short(key: str) -> str:
    return key if len(key) <= 40 else key[:37] + "..."
