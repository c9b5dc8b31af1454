"""Revisions of a request's verdict: evidence about a request that exists only after
its verdict was made.

The ingest stage judges a request when it arrives, with the flags known then. A
request that re-uses a signature is the signature's *second* use: the signature shard
is the only place that sees both uses, and it sees them after both verdicts were
written, so the replaying request's own verdict (revision 0) cannot carry it. The
shard emits a revision of that verdict instead (docs/contracts.md "Verdict
revisions"): the same request id and verdicts key, `revision` 1 (`supersedes` 0),
the request's own stateless signals (its entity record's codes) and the replay
signal with its detail; consumers keep the highest revision per request id.

Pure and deterministic: the same record and finding give the same bytes, so an
envelope processed again re-emits an identical revision.
"""

from __future__ import annotations

import msgspec

from detector.behaviour.records import EntityRecord
from detector.entities import ip_block
from detector.model import Signal, Verdict
from detector.scoring import ScoringPolicy

REPLAY_REVISION = 1  # the revision a signature's reuse makes of the replaying request's verdict
# the detail of a revision's stateless signals: the entity record carries their codes
# (and the score they make); their sentences are in revision 0
STATED_IN_REVISION_0 = "as stated in this request's ingest verdict (revision 0)"


class Revision(msgspec.Struct, frozen=True, gc=False):
    """A behaviour finding about one request's own verdict (BehaviourEngine output):
    the request as its entity record knows it, and the signal to add."""

    record: EntityRecord
    code: str
    detail: str


def verdict_key(r: EntityRecord) -> bytes:
    """The verdicts topic key of the request's verdict, as the ingest stage keys it
    (its device id, else its request id), so a revision lands on the same partition
    as the verdict it replaces (ids over 128 bytes: their digest form, see
    records.bounded_id)."""
    return (r.device or r.request_id).encode("utf-8", "surrogatepass")


def revised_verdict(rev: Revision, scoring: ScoringPolicy) -> Verdict:
    """The revision of a request's verdict that the stream's shard emits, from what its
    entity record carries: request id, event time, profile, entities (ip, ip_block,
    device, account, session, signature), its stateless signals (codes) and the new
    signal. No fingerprints ({}: they are in revision 0) and no behavioural flags of
    other entities (ingest's verdict had those; the new signal alone makes it
    malicious at the default weights)."""
    r = rev.record
    # (a code this process has no weight for, from an ingest process of another
    # configuration during a rolling change, is left out: the revision stays writable)
    signals = [Signal(c, scoring.weights[c], STATED_IN_REVISION_0) for c in r.codes
               if c != rev.code and c in scoring.weights]
    signals.append(Signal(rev.code, scoring.weight_of(rev.code), rev.detail))
    entities = {"ip": r.ip}
    for kind, value in (("device", r.device), ("account", r.account), ("session", r.session)):
        if value:
            entities[kind] = value
    if r.etype == "signature":
        entities["signature"] = r.key
    entities["ip_block"] = ip_block(r.ip)
    score = scoring.score(signals)
    return Verdict(request_id=r.request_id, ts=r.ts, score=score, verdict=scoring.level(score), profile=r.profile,
                   entities=entities, fingerprints={}, signals=tuple(signals), revision=REPLAY_REVISION,
                   supersedes=0)


def merged_verdict(verdict: Verdict, rev: Revision, scoring: ScoringPolicy) -> Verdict:
    """The final revision offline (`detector score`), where the request's whole
    verdict is at hand: the verdict with the new signal added (an instance of the same
    code replaced), scored again, its revision one more than the verdict's."""
    previous = verdict.revision if isinstance(verdict.revision, int) else 0
    signals = [s for s in verdict.signals if s.code != rev.code]
    signals.append(Signal(rev.code, scoring.weight_of(rev.code), rev.detail))
    score = scoring.score(signals)
    return msgspec.structs.replace(verdict, score=score, verdict=scoring.level(score), signals=tuple(signals),
                                   revision=max(previous + 1, REPLAY_REVISION), supersedes=previous)
