"""Evaluation on labelled traffic: each attack scenario is mixed into genuine traffic,
scored offline exactly as the stream worker scores it (`score_offline`: the pipeline,
then the alert policy), and measured per request (precision, recall, F1, genuine
false-positive rate) and per attacking entity (share alerted, time-to-detect).

Pure: events in, numbers out; no clock and no I/O. `agents/tools/eval_cli.py` is the
`detector eval` command around it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from detector.alerts import Alert
from detector.behaviour.engine import behaviour_codes
from detector.behaviour.offline import OfflineScorer
from detector.behaviour.records import entity_key
from detector.decode import request_from_obj
from detector.engine import DetectionConfig
from detector.entities import ip_block
from detector.model import ClientRequest, Verdict
from detector.simulate import simulate
from detector.simulate.attacks import ATTACKS, NEEDS_STATE, STATELESS_DETECTABLE
from detector.simulate.edges import at_risk, survives, through_edge
from detector.simulate.kit import EVASION_LEVELS
from detector.simulate.scenarios.genuine import genuine
from detector.simulate.wire import DEFAULT_START_TS

LEVEL_RANK = {"clean": 0, "suspicious": 1, "malicious": 2}
# Entity types whose share alerted is the per-entity recall (docs/contracts.md, Alert).
RECALL_ENTITY_TYPES = ("device", "account")


# --------------------------------------------------------------------------------------
# Scoring: the one place evaluation scores traffic


def score_offline(events: Iterable[Mapping[str, Any] | ClientRequest], cfg: DetectionConfig,
                  disabled_families: Iterable[str] = (), *,
                  reference_time: float | None = None) -> tuple[list[Verdict], list[Alert]]:
    """Verdicts (one per event, in order) and the alerts they raise, as the stream
    would produce them: the stateless checks and the behaviour detectors in event-time
    order (`detector.behaviour.offline.OfflineScorer`, the rules `detector score` and
    the stream apply). Fresh state on every call. `reference_time`: the reference
    clock of event time (detector.eventtime); None trusts the traffic's own times
    (simulated traffic: no event counts as dated ahead)."""
    requests = [e if isinstance(e, ClientRequest) else request_from_obj(e) for e in events]
    ref = math.inf if reference_time is None else reference_time
    return OfflineScorer(cfg, tuple(disabled_families), reference_time=ref).score(requests)


# --------------------------------------------------------------------------------------
# Metrics


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 6) if den else None


def request_metrics(malicious: Sequence[bool], verdicts: Sequence[Verdict],
                    level: str = "suspicious") -> dict[str, Any]:
    """Per-request confusion counts and rates; a request counts as flagged when its
    verdict is at `level` or worse. Undefined ratios (nothing to divide by) are None."""
    rank = LEVEL_RANK[level]
    tp = fp = fn = tn = 0
    for bad, v in zip(malicious, verdicts, strict=True):
        flagged = LEVEL_RANK[v.verdict] >= rank
        if bad:
            tp, fn = tp + flagged, fn + (not flagged)
        else:
            fp, tn = fp + flagged, tn + (not flagged)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = (round(2 * precision * recall / (precision + recall), 6)
          if precision is not None and recall is not None and precision + recall > 0 else None)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall, "f1": f1,
            "false_positive_rate": _ratio(fp, fp + tn)}


def alert_ts(alert: Alert) -> float:
    """When a revision was raised, in event time: its `updated_at` is the time of the
    request that completed it (the alert policy builds a revision when it happens)."""
    return datetime.strptime(alert.updated_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def entity_keys(request: ClientRequest, verdict: Verdict, signature_header: str | None = None) -> set[tuple[str, str]]:
    """Every (entity type, id) an alert could name for this request: the verdict's
    device, account and IP, the IP's block and ASN, its signature, its fingerprints."""
    keys = {(t, v) for t, v in verdict.entities.items() if t != "session"}
    ip = verdict.entities.get("ip")
    if ip:
        keys.add(("ip_block", ip_block(ip)))  # the engine's own block
    if request.network and request.network.get("asn") is not None:
        keys.add(("asn", f"AS{request.network['asn']}"))  # as the behaviour engine names it
    if signature_header:
        sig = request.header(signature_header)
        if sig:
            keys.add(("signature", sig))
    keys.update(("fingerprint", fp) for fp in verdict.fingerprints.values())
    # alerts name an entity by its bounded form (an id over 128 bytes by its digest)
    return {(t, entity_key(v)) for t, v in keys}


def entity_metrics(requests: Sequence[ClientRequest], malicious: Sequence[bool], verdicts: Sequence[Verdict],
                   alerts: Sequence[Alert], level: str = "suspicious",
                   signature_header: str | None = None) -> dict[str, Any]:
    """What the alerts say about the attack:

    - `entity_recall`: share of the attack's devices and accounts named by an alert;
    - `entity_recall_flagged`: share of them with at least one flagged verdict (what a
      policy acting on flagged verdicts would reach: a device or account flagged
      only through a fingerprint's scoped flag is never named by an alert);
    - `time_to_detect_s`: event-time seconds from the attack's first request to the
      first alert naming one of its entities (None: never alerted), and
      `requests_before_detection`, the attack requests sent before it;
    - `covered_after_detection`: share of attack requests sent at or after the first
      alert on one of their own entities (what blocking alerted entities would stop);
    - `recall_after_detection`: per-request recall over those requests only;
    - `alerted_entities`, `genuine_entities_alerted`: distinct entities alerted, and
      those the attack never used (false alerts).
    """
    rank = LEVEL_RANK[level]
    first_alert: dict[tuple[str, str], float] = {}
    for a in alerts:
        key = (a.entity.type, a.entity.id)
        t = alert_ts(a)
        if t < first_alert.get(key, float("inf")):
            first_alert[key] = t
    attack_keys: set[tuple[str, str]] = set()
    recall_keys: set[tuple[str, str]] = set()
    attack_ts: list[float] = []
    flagged_keys: set[tuple[str, str]] = set()
    covered = covered_flagged = 0
    for r, bad, v in zip(requests, malicious, verdicts, strict=True):
        if not bad:
            continue
        keys = entity_keys(r, v, signature_header)
        attack_keys |= keys
        own = [k for k in keys if k[0] in RECALL_ENTITY_TYPES]
        recall_keys.update(own)
        if LEVEL_RANK[v.verdict] >= rank:
            flagged_keys.update(own)
        attack_ts.append(r.ts)
        detected_at = min((first_alert[k] for k in keys if k in first_alert), default=None)
        if detected_at is not None and r.ts >= detected_at:
            covered += 1
            covered_flagged += LEVEL_RANK[v.verdict] >= rank
    n = len(attack_ts)
    hits = [t for k, t in first_alert.items() if k in attack_keys]
    start = min(attack_ts) if attack_ts else None
    first = min(hits) if hits else None
    return {
        "attack_entities": len(recall_keys),
        "entity_recall": _ratio(sum(k in first_alert for k in recall_keys), len(recall_keys)),
        "entity_recall_flagged": _ratio(len(flagged_keys), len(recall_keys)),
        "time_to_detect_s": round(max(0.0, first - start), 1) if first is not None and start is not None else None,
        "requests_before_detection": sum(t < first for t in attack_ts) if first is not None else n,
        "covered_after_detection": _ratio(covered, n),
        "recall_after_detection": _ratio(covered_flagged, covered),
        "alerted_entities": len(first_alert),
        "genuine_entities_alerted": sum(k not in attack_keys for k in first_alert),
    }


def pr_curve(scores: Sequence[float], malicious: Sequence[bool]) -> list[tuple[float, float | None, float | None]]:
    """(threshold, precision, recall) for flagging `score >= threshold`, at every
    distinct score, highest threshold first."""
    pairs = sorted(zip(scores, malicious), key=lambda p: -p[0])
    positives = sum(malicious)
    out: list[tuple[float, float | None, float | None]] = []
    tp = fp = 0
    i = 0
    while i < len(pairs):
        threshold = pairs[i][0]
        while i < len(pairs) and pairs[i][0] == threshold:
            tp += pairs[i][1]
            fp += not pairs[i][1]
            i += 1
        out.append((threshold, _ratio(tp, tp + fp), _ratio(tp, positives)))
    return out


# --------------------------------------------------------------------------------------
# Scenario runs


@dataclass(frozen=True, slots=True)
class EvalSettings:
    """The traffic every scenario is measured on: `genuine_count` genuine requests at
    `genuine_rate` per second of event time, and `attack_count` attack requests spread
    over its middle 80% (the `mixed` scenario: a day of its own, `mixed_factor` times
    the genuine count, about 1% attacks)."""

    seed: int = 1
    genuine_count: int = 20_000
    genuine_rate: float = 10.0
    attack_count: int = 1_500
    level: str = "suspicious"
    mixed_factor: float = 2.0
    start_ts: float = DEFAULT_START_TS
    # the reference clock of event time (`detector eval --reference-time`, the wall
    # clock by default); None: no event counts as dated ahead
    reference_time: float | None = None

    def __post_init__(self) -> None:
        if self.level not in ("suspicious", "malicious"):
            raise ValueError("level must be suspicious or malicious")
        if self.genuine_count <= 0 or self.attack_count <= 0 or self.genuine_rate <= 0:
            raise ValueError("counts and rate must be positive")


@dataclass(frozen=True, slots=True)
class Run:
    """One scored stream: its requests, labels, verdicts and alerts."""

    scenario: str
    evasion: int | None
    requests: list[ClientRequest]
    malicious: list[bool]
    verdicts: list[Verdict]
    alerts: list[Alert]


class Evaluation:
    """Runs scenarios against one configuration; the genuine background is built once
    and shared by every run (each run is still scored from scratch)."""

    def __init__(self, cfg: DetectionConfig, settings: EvalSettings = EvalSettings(), *, edge: str | None = None):
        """`edge`: put every request through that edge profile's losses
        (detector.simulate.edges) and score it as that edge's input topic does."""
        if edge is not None and edge not in cfg.edges:
            raise ValueError(f"unknown edge profile {edge!r}; known: {', '.join(sorted(cfg.edges))}")
        self.cfg = cfg if edge is None else replace(cfg, input_edge=edge, allowed_edges=frozenset())
        self.settings = settings
        self.profile = cfg.profiles[cfg.default_profile]
        self.edge = None if edge is None else cfg.edges[edge]
        self._background: list[tuple[float, ClientRequest, bool]] | None = None
        signing = self.profile.signing
        self.signature_header = signing.header if signing else None

    @property
    def background(self) -> list[tuple[float, ClientRequest, bool]]:
        if self._background is None:
            s = self.settings
            self._background = [
                (e["ts"], self._decode(e), bool(e["label"]["malicious"]))
                for e in genuine(self.profile, s.genuine_count, s.seed, s.start_ts, rate=s.genuine_rate,
                                 catalogue=self.cfg.catalogue)
            ]
        return self._background

    def _decode(self, event: Mapping[str, Any]) -> ClientRequest:
        """A simulated request as the edge reports it, decoded."""
        return request_from_obj(event if self.edge is None else through_edge(event, self.edge, self.profile))

    def events(self, scenario: str, evasion: int | None) -> list[tuple[float, ClientRequest, bool]]:
        """The labelled stream of a scenario run, in event-time order."""
        s = self.settings
        if scenario == "mixed":
            count = round(s.genuine_count * s.mixed_factor)
            evs = simulate("mixed", self.profile, count, s.seed, s.start_ts, rate=s.genuine_rate,
                           catalogue=self.cfg.catalogue, evasion=evasion)
            return [(e["ts"], self._decode(e), bool(e["label"]["malicious"])) for e in evs]
        if scenario not in ATTACKS:
            raise ValueError(f"unknown attack scenario {scenario!r}; known: {', '.join([*ATTACKS, 'mixed'])}")
        bg = self.background
        span = bg[-1][0] - bg[0][0] if len(bg) > 1 else 600.0
        start = s.start_ts + 0.1 * span
        attack = [(e["ts"], self._decode(e), bool(e["label"]["malicious"]))
                  for e in simulate(scenario, self.profile, s.attack_count, s.seed, start,
                                    rate=s.attack_count / (0.8 * span), catalogue=self.cfg.catalogue,
                                    evasion=evasion)]
        return sorted(bg + attack, key=lambda x: x[0])

    def run(self, scenario: str, evasion: int | None, disabled_families: Iterable[str] = ()) -> Run:
        stream = self.events(scenario, evasion)
        requests = [r for _, r, _ in stream]
        verdicts, alerts = score_offline(requests, self.cfg, disabled_families,
                                         reference_time=self.settings.reference_time)
        return Run(scenario, evasion, requests, [m for _, _, m in stream], verdicts, alerts)

    def metrics(self, run: Run) -> dict[str, Any]:
        level = self.settings.level
        req = request_metrics(run.malicious, run.verdicts, level)
        malicious_level = request_metrics(run.malicious, run.verdicts, "malicious")
        ent = entity_metrics(run.requests, run.malicious, run.verdicts, run.alerts, level, self.signature_header)
        n_attack = sum(run.malicious)
        return {
            "evasion": run.evasion,
            "requests": len(run.requests),
            "attack_requests": n_attack,
            "genuine_requests": len(run.requests) - n_attack,
            "precision": req["precision"],
            "recall": req["recall"],
            "f1": req["f1"],
            "false_positive_rate": req["false_positive_rate"],
            "recall_malicious": malicious_level["recall"],
            "false_positive_rate_malicious": malicious_level["false_positive_rate"],
            **ent,
            "alerts": len(run.alerts),
            "counts": {k: req[k] for k in ("tp", "fp", "fn", "tn")},
        }


def evaluate(cfg: DetectionConfig, scenarios: Sequence[str] = (), evasion: int | None = None,
             disabled_families: Iterable[str] = (), settings: EvalSettings = EvalSettings(),
             curves: bool = False) -> dict[str, Any]:
    """Every scenario (default: each attack, then `mixed`) at each evasion level (or
    only `evasion`). A scenario's top-level figures are those of its strongest level
    run; `by_evasion` holds each level's. `mixed` draws each attack's level from the
    seed unless `evasion` is given. With `curves`, each scenario also carries the
    precision-recall points of its strongest run over the score threshold."""
    names = list(scenarios) or [*ATTACKS, "mixed"]
    disabled = sorted(set(disabled_families))
    ev = Evaluation(cfg, settings)
    out: dict[str, Any] = {}
    genuine_fp = genuine_n = 0
    for name in names:
        levels: list[int | None] = [evasion] if evasion is not None else (
            [None] if name == "mixed" else list(EVASION_LEVELS))
        by: dict[str, Any] = {}
        last: Run | None = None
        for level in levels:
            run = ev.run(name, level, disabled)
            by["drawn" if level is None else str(level)] = ev.metrics(run)
            last = run
        assert last is not None
        top = dict(by["drawn" if levels[-1] is None else str(levels[-1])])
        top["by_evasion"] = by
        if curves:
            top["pr_curve"] = pr_curve([v.score for v in last.verdicts], last.malicious)
        # mixed holds both kinds: None
        top["needs_state"] = None if name == "mixed" else name in NEEDS_STATE
        out[name] = top
        genuine_fp += top["counts"]["fp"]
        genuine_n += top["genuine_requests"]
    return {
        "scenarios": out,
        "genuine": {"requests": genuine_n, "false_positives": genuine_fp,
                    "false_positive_rate": _ratio(genuine_fp, genuine_n)},
        "settings": {"seed": settings.seed, "genuine_count": settings.genuine_count,
                     "genuine_rate": settings.genuine_rate, "attack_count": settings.attack_count,
                     "level": settings.level, "evasion": evasion, "without": disabled},
    }


def edge_evaluate(cfg: DetectionConfig, edges: Sequence[str], scenarios: Sequence[str] = (),
                  evasion: int | None = None, settings: EvalSettings = EvalSettings()) -> dict[str, Any]:
    """Each scenario (default: every attack) at each evasion level put through each
    edge's losses: recall and genuine false-positive rate, and whether the giveaway
    survives: the share of attack requests whose full-edge stateless signals, less the
    codes the edge silences or may lose (`at_risk`), still flag the request, and the
    recall over those requests (`recall_where_survives`)."""
    names = list(scenarios) or list(ATTACKS)
    full = Evaluation(cfg, settings)
    profile = full.profile
    threshold = cfg.scoring.suspicious if settings.level == "suspicious" else cfg.scoring.malicious
    base: dict[tuple[str, int | None], Run] = {}
    out: dict[str, Any] = {}
    for edge_name in edges:
        ev = Evaluation(cfg, settings, edge=edge_name)
        edge = cfg.edges[edge_name]
        risk = at_risk(edge, profile)
        rows: dict[str, Any] = {}
        genuine_fp = genuine_n = 0
        for name in names:
            levels: list[int | None] = [evasion] if evasion is not None else (
                [None] if name == "mixed" else list(EVASION_LEVELS))
            by: dict[str, Any] = {}
            for level in levels:
                key = (name, level)
                if key not in base:
                    base[key] = full.run(name, level)
                ref, run = base[key], ev.run(name, level)
                if [r.request_id for r in ref.requests] != [r.request_id for r in run.requests]:
                    raise AssertionError("the edge's run is not the same stream")  # pragma: no cover
                req = request_metrics(run.malicious, run.verdicts, settings.level)
                kept = [i for i, (m, v) in enumerate(zip(ref.malicious, ref.verdicts))
                        if m and survives([(s.code, s.weight) for s in v.signals], risk, threshold)]
                rank = LEVEL_RANK[settings.level]
                caught = sum(1 for i in kept if LEVEL_RANK[run.verdicts[i].verdict] >= rank)
                n_attack = sum(run.malicious)
                by["drawn" if level is None else str(level)] = {
                    "attack_requests": n_attack,
                    "genuine_requests": len(run.requests) - n_attack,
                    "recall": req["recall"],
                    "recall_full_edge": request_metrics(ref.malicious, ref.verdicts, settings.level)["recall"],
                    "false_positive_rate": req["false_positive_rate"],
                    "giveaway_survives": _ratio(len(kept), n_attack),
                    "recall_where_survives": _ratio(caught, len(kept)),
                    "counts": {k: req[k] for k in ("tp", "fp", "fn", "tn")},
                }
                genuine_fp += req["fp"]
                genuine_n += len(run.requests) - n_attack
            rows[name] = {"stateless_detectable": name in STATELESS_DETECTABLE, "by_evasion": by}
        out[edge_name] = {
            "not_assessed": list(edge.not_assessed(profile)),
            "silenced_codes": sorted(edge.gated(profile)),
            "at_risk_codes": sorted(risk),
            "allowed_lateness_s": edge.allowed_lateness_s,
            "scenarios": rows,
            "genuine": {"requests": genuine_n, "false_positives": genuine_fp,
                        "false_positive_rate": _ratio(genuine_fp, genuine_n)},
        }
    return {"edges": out,
            "settings": {"seed": settings.seed, "genuine_count": settings.genuine_count,
                         "attack_count": settings.attack_count, "level": settings.level, "evasion": evasion}}


def ablation(cfg: DetectionConfig, families: Sequence[str], scenarios: Sequence[str] = (), evasion: int = 2,
             settings: EvalSettings = EvalSettings()) -> dict[str, dict[str, float | None]]:
    """Recall of each scenario with each family disabled in turn (`"none"`: all on), at
    one evasion level: which scenarios each signal family carries."""
    names = list(scenarios) or [*ATTACKS, "mixed"]
    ev = Evaluation(cfg, settings)
    table: dict[str, dict[str, float | None]] = {}
    for name in names:
        row: dict[str, float | None] = {}
        for family in ["none", *families]:
            run = ev.run(name, evasion, () if family == "none" else (family,))
            row[family] = request_metrics(run.malicious, run.verdicts, settings.level)["recall"]
        table[name] = row
    return table


def families(cfg: DetectionConfig) -> list[str]:
    """The signal families: the configured pipeline's checks in verdict order, then the
    behaviour engine's (the families of its codes)."""
    stateful = dict.fromkeys(code.split(".")[0] for code in behaviour_codes())
    return [c.name for c in cfg.pipeline().checks] + list(stateful)


__all__ = ["EvalSettings", "Evaluation", "Run", "ablation", "alert_ts", "edge_evaluate", "entity_keys",
           "entity_metrics", "evaluate",
           "families", "pr_curve", "request_metrics", "score_offline"]
