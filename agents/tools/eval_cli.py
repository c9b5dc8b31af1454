"""`detector eval`: runs the simulator's scenarios through the offline pipeline
(`detector.simulate.evaluate`) and prints per-scenario precision, recall, false-positive rate and
time-to-detect as Markdown tables (`--json`: one final JSON line), optionally with an
ablation table (`--ablation`) and a precision-recall plot (`--plot FILE`, PNG)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson


def add_parser(sub: Any) -> argparse.ArgumentParser:
    s: argparse.ArgumentParser = sub.add_parser(
        "eval", help="precision, recall and time-to-detect per attack scenario, on simulated labelled traffic")
    s.add_argument("--scenario", action="append", default=[], metavar="NAME",
                   help="an attack scenario or mixed (repeatable; default: every attack, then mixed)")
    s.add_argument("--evasion", type=int, choices=[0, 1, 2],
                   help="only this evasion level (default: each level; top-level figures are the strongest)")
    s.add_argument("--without", action="append", default=[], metavar="FAMILY",
                   help="disable a signal family (repeatable), e.g. --without tls --without transport")
    s.add_argument("--ablation", action="store_true",
                   help="also the recall of each scenario with each family disabled in turn (at --evasion, default 2)")
    s.add_argument("--json", action="store_true", help="print one final JSON line")
    s.add_argument("--plot", metavar="FILE", help="write precision-recall curves over the score threshold (PNG)")
    s.add_argument("--seed", type=int, default=1, help="random seed of the simulated traffic (default 1)")
    s.add_argument("--genuine", type=int, default=20_000, help="genuine requests each attack is mixed into")
    s.add_argument("--count", type=int, default=1_500, help="attack requests per scenario run")
    s.add_argument("--level", choices=["suspicious", "malicious"], default="suspicious",
                   help="the verdict level from which a request counts as flagged")
    s.add_argument("--edge", action="append", default=[], metavar="NAME",
                   help="put the traffic through an edge profile's losses (config/edges/NAME.yaml; repeatable, 'all': "
                        "every one) and print recall and false-positive rate per scenario, and where the attack's "
                        "giveaway survives the edge (docs/edges.md); default scenarios: every attack")
    add_reference_time(s)
    s.set_defaults(func=cmd_eval)
    return s


def epoch(value: str) -> float:
    """An argparse type: seconds since the epoch (UTC), finite."""
    try:
        t = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds since the epoch: {value!r}") from None
    if not math.isfinite(t) or t < 0:
        raise argparse.ArgumentTypeError(f"not a time: {value!r}")
    return t


def add_reference_time(s: argparse.ArgumentParser) -> None:
    """`--reference-time EPOCH` (detector score, detector eval): the reference clock of
    event time (docs/architecture.md "Event time"); requests dated more than
    event_time.max_future_s after it are scored without behaviour state."""
    s.add_argument("--reference-time", type=epoch, metavar="EPOCH",
                   help="reference clock for event time, seconds since the epoch (default: the wall clock at start; "
                        "give the end of a replayed history); requests dated more than event_time.max_future_s "
                        "after it update no behaviour state")


def reference_time(args: argparse.Namespace) -> float:
    """The run's reference clock: `--reference-time`, else the wall clock now (read
    once, at start, here in the shell: the core reads no clock)."""
    ref: float | None = getattr(args, "reference_time", None)
    return time.time() if ref is None else ref


_STATE = {True: "yes", False: "no", None: "partly"}


# the figures of one evasion level in the table by scenario and evasion
_EVASION_FIGURES = ("recall", "recall_malicious", "entity_recall", "time_to_detect_s")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render(report: dict[str, Any], ablation: dict[str, dict[str, float | None]] | None = None,
           ablation_evasion: int = 2) -> str:
    """The report as Markdown: one row per scenario (its strongest evasion run), one per
    scenario and level, and the ablation table."""
    sc = report["scenarios"]
    st = report["settings"]
    out = [f"Flagged = verdict `{st['level']}` or worse. Each attack run: {st['attack_count']} attack requests mixed "
           f"into {st['genuine_count']} genuine requests (seed {st['seed']})"
           + (f"; families disabled: {', '.join(st['without'])}" if st["without"] else "") + ".", ""]
    out.append(_table(
        ["scenario", "evasion", "needs state", "attack / all requests", "precision", "recall", "F1", "genuine FPR",
         "recall (malicious)", "entity recall (alerted / flagged)", "time to detect (s)", "covered after detection"],
        [[name, "drawn" if m["evasion"] is None else m["evasion"], _STATE[m["needs_state"]],
          f"{m['attack_requests']} / {m['requests']}", m["precision"], m["recall"], m["f1"],
          _fmt(m["false_positive_rate"], 5), m["recall_malicious"],
          f"{_fmt(m['entity_recall'])} / {_fmt(m['entity_recall_flagged'])}", m["time_to_detect_s"],
          m["covered_after_detection"]] for name, m in sc.items()]))
    if any(len(m["by_evasion"]) > 1 for m in sc.values()):
        out += ["", "By evasion level (recall / recall at malicious / entity recall / time to detect in s):", ""]
        levels = sorted({lv for m in sc.values() for lv in m["by_evasion"]})
        out.append(_table(["scenario", *[f"evasion {lv}" for lv in levels]], [
            [name, *[(" / ".join(_fmt(b[k]) for k in _EVASION_FIGURES)
                      if (b := m["by_evasion"].get(lv)) else "") for lv in levels]]
            for name, m in sc.items()]))
    g = report["genuine"]
    out += ["", f"Genuine traffic over all runs: {g['requests']} requests, {g['false_positives']} flagged "
                f"(false-positive rate {_fmt(g['false_positive_rate'], 5)})."]
    if ablation:
        fams = list(next(iter(ablation.values())))
        out += ["", f"Ablation at evasion {ablation_evasion}: recall with one family disabled ('none': all enabled):",
                ""]
        out.append(_table(["scenario", *fams], [[name, *[row[f] for f in fams]] for name, row in ablation.items()]))
    return "\n".join(out)


def render_edges(report: dict[str, Any]) -> str:
    """`eval --edge`: per edge, what it silences, then one row per scenario and level."""
    st = report["settings"]
    out = [f"Flagged = verdict `{st['level']}` or worse. Each attack run: {st['attack_count']} attack requests mixed "
           f"into {st['genuine_count']} genuine requests (seed {st['seed']}), put through the edge's losses. "
           "'giveaway survives': the share of attack requests still flagged, through the full edge, by the "
           "stateless signals this edge keeps; 'recall where it survives': the recall over those requests."]
    for name, e in report["edges"].items():
        g = e["genuine"]
        out += ["", f"### Edge `{name}`", "",
                f"Not assessed: {', '.join(e['not_assessed']) or 'nothing'} (codes silenced: "
                f"{', '.join(e['silenced_codes']) or 'none'}). Genuine: {g['requests']} requests, "
                f"{g['false_positives']} flagged (false-positive rate {_fmt(g['false_positive_rate'], 5)}).", ""]
        rows = []
        for sc, m in e["scenarios"].items():
            for lv, b in m["by_evasion"].items():
                rows.append([sc, lv, "yes" if m["stateless_detectable"] else "no", b["recall"], b["recall_full_edge"],
                             _fmt(b["false_positive_rate"], 5), b["giveaway_survives"], b["recall_where_survives"]])
        out.append(_table(["scenario", "evasion", "stateless", "recall", "recall (full edge)", "genuine FPR",
                           "giveaway survives", "recall where it survives"], rows))
    return "\n".join(out)


def plot(report: dict[str, Any], path: str) -> None:
    """Precision against recall as the score threshold falls, one line per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6), dpi=110)
    for name, m in report["scenarios"].items():
        pts = [(r, p) for _, p, r in m.get("pr_curve", ()) if p is not None and r is not None]
        if not pts:
            continue
        ax.plot([0.0, *[r for r, _ in pts]], [pts[0][1], *[p for _, p in pts]], drawstyle="steps-post",
                marker=".", label=f"{name} (evasion {'drawn' if m['evasion'] is None else m['evasion']})")
    ax.set_xlabel("recall (attack requests at or above the score threshold)")
    ax.set_ylabel("precision")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title("detector eval: precision-recall over the score threshold")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def json_line(report: dict[str, Any], ablation: dict[str, dict[str, float | None]] | None) -> bytes:
    scenarios = {name: {k: v for k, v in m.items() if k != "pr_curve"} for name, m in report["scenarios"].items()}
    doc: dict[str, Any] = {"scenarios": scenarios, "genuine": report["genuine"], "settings": report["settings"]}
    if ablation is not None:
        doc["ablation"] = ablation
    return orjson.dumps(doc)


def cmd_eval(args: argparse.Namespace) -> int:
    from agents.fileargs import check_writable
    from agents.settings import load_detection
    from detector.simulate import ATTACKS
    from detector.simulate.evaluate import EvalSettings, ablation, edge_evaluate, evaluate, families

    check_writable(args.plot, make_parents=True)  # before minutes of work
    cfg = load_detection(args.config)
    known = families(cfg)
    unknown = [f for f in args.without if f not in known]
    if unknown:
        print(f"detector eval: unknown signal family {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    bad = [s for s in args.scenario if s not in ATTACKS and s != "mixed"]
    if bad:
        print(f"detector eval: unknown scenario {', '.join(bad)}; known: {', '.join([*ATTACKS, 'mixed'])}",
              file=sys.stderr)
        return 2
    try:
        settings = EvalSettings(seed=args.seed, genuine_count=args.genuine, attack_count=args.count, level=args.level,
                                reference_time=reference_time(args))
    except ValueError as exc:
        print(f"detector eval: {exc}", file=sys.stderr)
        return 2
    if args.edge:
        names = sorted(cfg.edges) if "all" in args.edge else list(dict.fromkeys(args.edge))
        missing = [n for n in names if n not in cfg.edges]
        if missing:
            print(f"detector eval: unknown edge profile {', '.join(missing)}; known: {', '.join(sorted(cfg.edges))}",
                  file=sys.stderr)
            return 2
        if args.without or args.ablation or args.plot:
            print("detector eval: --edge does not combine with --without, --ablation or --plot", file=sys.stderr)
            return 2
        edge_report = edge_evaluate(cfg, names, args.scenario, args.evasion, settings)
        print(orjson.dumps(edge_report).decode() if args.json else render_edges(edge_report))
        return 0
    report = evaluate(cfg, args.scenario, args.evasion, args.without, settings, curves=bool(args.plot))
    table = None
    ablation_level = 2 if args.evasion is None else args.evasion
    if args.ablation:
        fams = [f for f in known if f not in args.without]
        table = ablation(cfg, fams, args.scenario, ablation_level, settings)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(report, args.plot)
    if not args.json:
        print(render(report, table, ablation_level))
        if args.plot:
            print(f"\nprecision-recall plot: {args.plot}")
    if args.json:
        print(json_line(report, table).decode())
    return 0
