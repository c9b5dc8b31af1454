"""The stream's rules applied offline, in event-time order: each request is scored
with the flags known before it, then its entity records update the behaviour state,
and the flags they raise apply to the requests after it (the zero-delay limit of the
stream's broadcast). `detector score` and `detector eval` use this."""

from __future__ import annotations

from typing import Any, Sequence

from detector.behaviour.engine import BehaviourEngine
from detector.behaviour.flags import FlagMap
from detector.behaviour.records import records_for
from detector.model import ClientRequest, Verdict


class OfflineScorer:
    def __init__(self, cfg: Any, disabled_families: Sequence[str] = ()):
        self.cfg = cfg
        self.pipeline = cfg.pipeline(disabled_families)
        self.engine = BehaviourEngine(cfg.behaviour, cfg.alerts, cfg.scoring.weight_of, disabled_families)
        self.flags = FlagMap(cfg.scoring.weight_of)
        self._seq = 0

    def score(self, requests: Sequence[ClientRequest]) -> tuple[list[Verdict], list[dict[str, Any]]]:
        """Verdicts in input order; alerts in the order they were raised. Requests are
        applied in event-time order (stable for equal times)."""
        order = sorted(range(len(requests)), key=lambda i: requests[i].ts)
        verdicts: list[Verdict | None] = [None] * len(requests)
        alerts: list[dict[str, Any]] = []
        for i in order:
            r = requests[i]
            verdict, ctx = self.pipeline.assess(r, self.flags)
            verdicts[i] = verdict
            records = records_for(r, ctx, verdict)
            self._seq += 1
            out = self.engine.observe(records, sources=[(0, self._seq, 0)] * len(records))
            if out.flags:
                self.flags.apply(out.flags)
            alerts.extend(out.alerts)
        return [v for v in verdicts if v is not None], alerts
