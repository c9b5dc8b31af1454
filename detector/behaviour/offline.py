"""The stream's rules applied offline, in event-time order: each request is scored
with the flags known before it, then its entity records update the behaviour state,
and the flags they raise apply to the requests after it (the zero-delay limit of the
stream's broadcast). `detector score` and `detector eval` use this. A finding
about a request's own verdict (a reused signature: the replaying request) replaces
that request's verdict by its final revision (detector/behaviour/revision.py), as the
stream's shard revises it.

Event time is judged against `reference_time` (detector.eventtime): a request dated
more than `event_time.max_future_s` after it is scored statelessly (with the flags in
force at the reference), updates no behaviour state and is counted in `future`. The
caller supplies the reference (the CLI: the wall clock at start, or
`--reference-time`); the core reads no clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from detector.alerts import Alert
from detector.behaviour.engine import BehaviourEngine
from detector.behaviour.flags import FlagMap
from detector.behaviour.records import records_for
from detector.behaviour.revision import merged_verdict
from detector.model import ClientRequest, Verdict

if TYPE_CHECKING:
    from detector.edges import EdgePolicy
    from detector.engine import DetectionConfig


class OfflineScorer:
    def __init__(self, cfg: DetectionConfig, disabled_families: Sequence[str] = (), *, reference_time: float,
                 edges: EdgePolicy | None = None):
        """`edges`: the edge policy (default: the configured input topic's)."""
        self.cfg = cfg
        self.pipeline = cfg.pipeline(disabled_families, edges)
        self.engine = BehaviourEngine(cfg.behaviour, cfg.alerts, cfg.scoring.weight_of, disabled_families)
        self.flags = FlagMap(cfg.scoring.weight_of)
        self.guard = cfg.event_time
        self.reference_time = float(reference_time)
        self.future = 0  # requests dated beyond the tolerance: scored without behaviour state
        self.late = 0  # entity records older than the allowed lateness: dropped from state
        self.revisions = 0  # verdicts revised by later evidence about the request (a reused signature)
        # request id -> the verdict (revision 0) a revision replaced: what the stream's
        # ingest stage writes for it
        self.ingest: dict[str, Verdict] = {}
        self._seq = 0

    def score(self, requests: Sequence[ClientRequest]) -> tuple[list[Verdict], list[Alert]]:
        """Verdicts in input order (each its final revision); alerts in the order they
        were raised. Requests are applied in event-time order (stable for equal times)."""
        order = sorted(range(len(requests)), key=lambda i: requests[i].ts)
        verdicts: list[Verdict | None] = [None] * len(requests)
        alerts: list[Alert] = []
        ref = self.reference_time
        scored: dict[str, int] = {}  # a scored request's id (as its entity records name it) -> its index
        for i in order:
            r = requests[i]
            if self.guard.is_future(r.ts, ref):
                # judged on its own, with the flags in force at the reference: its own
                # date can neither move event time nor let it outrun a flag
                verdicts[i] = self.pipeline.assess(r, self.flags.as_of(ref))[0]
                self.future += 1
                continue
            verdict, ctx = self.pipeline.assess(r, self.flags)
            verdicts[i] = verdict
            records = records_for(r, ctx, verdict)
            if records:
                scored[records[0].request_id] = i
            self._seq += 1
            out = self.engine.observe(records, sources=[(0, self._seq, 0)] * len(records), reference=ref)
            self.late += out.late
            if out.flags:
                self.flags.apply(out.flags)
            for rev in out.revisions:
                # the final revision of an earlier request's verdict (the replaying
                # request of a reused signature), as the stream's shard revises it
                j = scored.get(rev.record.request_id)
                old = verdicts[j] if j is not None else None
                if old is not None:
                    self.ingest.setdefault(old.request_id, old)
                    verdicts[j] = merged_verdict(old, rev, self.cfg.scoring)  # type: ignore[index]
                    self.revisions += 1
            alerts.extend(out.alerts)
        return [v for v in verdicts if v is not None], alerts
