"""The one interface every behaviour detector implements, and what it reports.

A detector keeps its own part of an entity's state (a plain dict, so a bucket
serialises in one go), updates it with each entity record in event time and returns
its findings. It declares the codes it can raise, the key its part of the state is
stored under (stable: renaming the class must not orphan stored state) and the
version of that part's layout and meaning (bump it when either changes: the engine's
state version follows, so state written before is never read with the new meaning).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

import msgspec

from detector.behaviour.flags import Scope
from detector.behaviour.records import BehaviourSettings, EntityRecord


class Finding(msgspec.Struct, frozen=True, gc=False):
    """What a detector saw: a code, one sentence of evidence and, when the flag should
    apply only to some of the entity's requests, its scope. `revise`: the request
    (its record) whose own verdict this is evidence about, when that verdict was made
    before the evidence existed (a signature's reuse): the shard emits a revision of
    that verdict (detector/behaviour/revision.py)."""

    code: str
    detail: str
    scope: Scope | None = None
    revise: EntityRecord | None = None


class BehaviourDetector(Protocol):
    """`observe(state, record, settings) -> findings` for one entity type."""

    state_key: ClassVar[str]  # the key of its part of an entity's state
    state_version: ClassVar[int]  # from 1; bump when its state's layout or meaning changes
    codes: ClassVar[Mapping[str, str]]  # code -> one-line meaning

    def observe(self, st: dict[str, Any], r: EntityRecord, s: BehaviourSettings) -> Sequence[Finding]: ...


def state_version(settings: BehaviourSettings, detectors: Sequence[BehaviourDetector]) -> int:
    """The version every stored bucket and entity carries: the configured
    `behaviour.state_version` (the engine's own layout) plus every detector's bumps
    (each starts at 1, each class counted once), so bumping any of them changes it,
    and it only ever grows."""
    versions = {type(d): d.state_version for d in detectors}
    return settings.state_version + sum(v - 1 for v in versions.values())
