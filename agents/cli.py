"""The `detector` command line: run, broker, score, simulate, demo, topics, config check."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

import orjson

from agents.fileargs import check_readable, check_writable, command_name, output
from agents.version import VersionAction
from detector.config import ConfigError
from detector.config.schema import ROLES
from detector.engine import DetectionConfig


def _detection(args: argparse.Namespace) -> DetectionConfig:
    from agents.settings import load_detection

    return load_detection(args.config)


# --- detector score --------------------------------------------------------------
def cmd_score(args: argparse.Namespace) -> int:
    """Offline scoring with the stream's rules: stateless checks per request, and the
    behaviour detectors in event-time order (flags apply to the requests after the
    one that raised them). Verdicts come out in input order, for the lines that
    decoded; every other line gets exactly one stderr line
    `line N: rejected: <code>: <reason>` (and a JSONL record with --rejections). A
    line whose scoring fails is rejected with code internal_error; the run goes on."""
    from agents.tools.eval_cli import reference_time
    from detector.adapters import line_decoder
    from detector.behaviour.offline import OfflineScorer
    from detector.decode import InvalidRequest
    from detector.edges import EdgePolicy

    # Outputs are checked before any work; the input is opened once, below (a FIFO
    # cannot be opened twice): an OSError of either is main's one-line error.
    for out in (args.output, args.alerts, args.rejections):
        check_writable(out)
    cfg = _detection(args)
    decode_line = line_decoder(args.format)  # the native contract, or an edge's log lines
    ref = reference_time(args)  # the reference clock of event time, read once at start
    _tune_gc()
    # closed in the finally below (stdin excepted)
    src: IO[bytes] = sys.stdin.buffer if args.input in (None, "-") else open(args.input, "rb")  # noqa: SIM115
    rejections: list[tuple[int, str, str]] = []  # (line, code, reason)
    requests: list[Any] = []
    linenos: list[int] = []
    # offline, a record's `edge` field may name any shipped edge profile (docs/edges.md)
    edges = EdgePolicy.offline(cfg.edges, cfg.input_edge)
    try:
        for lineno, line in enumerate(src, 1):
            if not line.strip():
                continue
            try:
                request = decode_line(line, cfg.limits)
                refused = edges.refusal(request)
                if refused is not None:
                    rejections.append((lineno, refused.code, refused.reason))
                    continue
                requests.append(request)
                linenos.append(lineno)
            except InvalidRequest as exc:
                rejections.append((lineno, exc.code, str(exc)))
            except Exception as exc:  # a decoder bug must not stop the run either
                rejections.append((lineno, "internal_error", f"{type(exc).__name__} while decoding"))
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    if not requests and not rejections:
        print(f"detector score: 0 requests in {'stdin' if args.input in (None, '-') else args.input}", file=sys.stderr)

    scorers: list[OfflineScorer] = []

    def make_scorer() -> Any:
        scorers.append(OfflineScorer(cfg, reference_time=ref, edges=edges))
        return scorers[-1]

    verdicts, alerts, failed = _score_isolated(make_scorer, requests)
    if scorers and scorers[-1].future:
        print(f"detector score: {scorers[-1].future} request(s) dated more than {cfg.event_time.max_future_s:g} s "
              f"after the reference time {ref:.0f} were scored without behaviour state (--reference-time)",
              file=sys.stderr)
    for i, err in failed.items():
        rid = requests[i].request_id[:128]
        rejections.append((linenos[i], "internal_error", f"{type(err).__name__} while scoring request_id={rid!r}"))
    rejections.sort()
    for lineno, code, reason in rejections:
        print(f"line {lineno}: rejected: {code}: {reason}", file=sys.stderr)
    if args.rejections:
        with output(args.rejections) as f:
            f.write(b"".join(orjson.dumps({"line": n, "code": c, "reason": r}) + b"\n" for n, c, r in rejections))
    if cfg.verdicts_emit == "flagged":  # the stream's rule: no clean verdicts written
        verdicts = [v for v in verdicts if v.verdict != "clean"]
    with output(None if args.output in (None, "-") else args.output) as dst:
        for i in range(0, len(verdicts), 2000):
            dst.write(b"".join(v.to_json() + b"\n" for v in verdicts[i:i + 2000]))
    if args.alerts:
        with output(args.alerts) as f:
            f.write(b"".join(a.to_json() + b"\n" for a in alerts))
    return 1 if rejections else 0


def _score_isolated(make_scorer: Any, requests: list[Any]) -> tuple[list[Any], list[Any], dict[int, BaseException]]:
    """Score `requests` with one scorer; if that raises, score again with a new one,
    one request at a time in event-time order (what `score` itself does, so the
    results are the same), and set aside the requests whose scoring raises.
    Returns the verdicts of the others in input order, the alerts, and the failures
    by index."""
    try:
        all_verdicts, all_alerts = make_scorer().score(requests)
        return list(all_verdicts), list(all_alerts), {}
    except Exception:
        pass
    scorer = make_scorer()
    by_index: dict[int, Any] = {}
    alerts: list[Any] = []
    failed: dict[int, BaseException] = {}
    for i in sorted(range(len(requests)), key=lambda i: requests[i].ts):
        try:
            (verdict,), raised = scorer.score([requests[i]])
        except Exception as exc:
            failed[i] = exc
            continue
        by_index[i] = verdict
        alerts.extend(raised)
    return [by_index[i] for i in sorted(by_index)], alerts, failed


def _tune_gc() -> None:
    """Long-lived state (caches, behaviour state, config) would be re-scanned by every
    full collection; freeze what exists and collect the young generation less often."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


# --- detector simulate -------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    from detector.simulate import DEFAULT_START_TS, simulate

    if args.to == "file":
        check_writable(args.output)
    cfg = _detection(args)
    profile = cfg.profiles[cfg.default_profile]
    start = time.time() if args.start == "now" else (float(args.start) if args.start else DEFAULT_START_TS)
    try:
        events = simulate(args.scenario, profile, args.count, args.seed, start, rate=args.rate,
                          catalogue=cfg.catalogue, evasion=args.evasion)
    except ValueError as exc:
        print(f"detector simulate: {exc}", file=sys.stderr)
        return 2
    if args.to == "kafka":
        from agents.settings import load_settings
        from agents.tools.produce import produce_events

        settings = load_settings(args.config, **({"kafka_bootstrap": args.bootstrap} if args.bootstrap else {}))
        asyncio.run(produce_events(settings.kafka_bootstrap, events, rate=args.rate, batch=args.batch,
                                   security=settings.kafka))
        return 0
    with output(None if args.output in (None, "-") else args.output) as out:
        for e in events:
            out.write(orjson.dumps(e) + b"\n")
    return 0


# --- detector broker ---------------------------------------------------------------
def cmd_broker(args: argparse.Namespace) -> int:
    from agents.tools.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port).start()
    print(f"embedded broker (Tansu) listening on {broker.bootstrap}; Ctrl-C to stop", flush=True)
    stop = {"now": False}

    def _stop(*_: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop["now"] and broker.proc is not None and broker.proc.poll() is None:
            time.sleep(0.2)
    finally:
        broker.stop()
    print("embedded broker stopped", flush=True)
    return 0


# --- detector topics ---------------------------------------------------------------
def cmd_topics(args: argparse.Namespace) -> int:
    from agents.settings import load_settings
    from agents.topics import ALL_TOPICS, create_topics, existing_topics, partitions_of

    overrides: dict[str, Any] = {"kafka_bootstrap": args.bootstrap} if args.bootstrap else {}
    if args.replication_factor is not None:
        overrides["topic_replication"] = args.replication_factor
    settings = load_settings(args.config, **overrides)

    async def run() -> int:
        if args.create:
            created = await create_topics(settings.kafka_bootstrap, settings.topic_partitions,
                                          settings.topic_replication, security=settings.kafka)
            for name in created:
                print(f"created {name} (replication factor {settings.topic_replication})")
        have = await existing_topics(settings.kafka_bootstrap, settings.kafka)
        print(f"{'topic':24} {'partitions':>10} {'on cluster':>10}  retention  policy          purpose")
        for s in ALL_TOPICS:
            cfg = s.kafka_configs()
            days = int(cfg["retention.ms"]) / 86400000
            print(f"{s.name:24} {partitions_of(s, settings.topic_partitions):>10} {have.get(s.name, '-')!s:>10}  "
                  f"{days:>6.0f} d  {cfg['cleanup.policy']:14}  {s.purpose}")
        return 0

    return asyncio.run(run())


# --- detector run ------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from agents.app import build_app
    from agents.metrics import Metrics
    from agents.settings import load_detection, load_settings
    from agents.topics import check_layout, create_topics

    overrides: dict[str, Any] = {}
    if args.bootstrap:
        overrides["kafka_bootstrap"] = args.bootstrap
    if args.web_port is not None:
        overrides["web_port"] = args.web_port
    if args.role is not None:
        overrides["role"] = args.role
    settings = load_settings(args.config, **overrides)
    detection = load_detection(settings.config)
    from agents.kafkaclient import KafkaAuthError, check_credentials

    try:  # a refused password or certificate never heals: one readable error, not a retry loop
        asyncio.run(check_credentials(settings.kafka_bootstrap, settings.kafka))
    except KafkaAuthError as exc:
        logging.getLogger("detector.broker").error("%s; check the kafka_sasl_* / kafka_ssl_* settings "
                                                   "(docs/operations.md \"Production Kafka\")", exc)
        return 3
    if args.create_topics:
        asyncio.run(create_topics(settings.kafka_bootstrap, settings.topic_partitions, settings.topic_replication,
                                  security=settings.kafka))
    # the entity shards partition by topic_partitions: a topic with another count is a
    # configuration error (the ingest would write to partitions that do not exist)
    problems = asyncio.run(check_layout(settings.kafka_bootstrap, settings.topic_partitions, settings.app_id,
                                        settings.kafka))
    if problems:
        for problem in problems:
            logging.getLogger("detector.topics").error("%s", problem)
        return 2
    app = build_app(settings, detection, Metrics())
    _tune_gc()
    from agents.shutdown import StopDeadline

    deadline = StopDeadline(settings.shutdown_grace_s)
    worker = _deadline_worker(app, settings.log_level.upper(), deadline)
    try:
        worker.execute_from_commandline()
    finally:
        deadline.cancel()
    return 0


if TYPE_CHECKING:
    import faust

    from agents.shutdown import StopDeadline


def _deadline_worker(app: faust.App, loglevel: str, deadline: StopDeadline) -> faust.Worker:
    """Faust's worker, with a hard deadline on stopping: the first SIGTERM/SIGINT starts
    the graceful stop (stop consuming, persist shard state, commit what was processed)
    and arms `deadline` (shutdown_grace_s); a second one exits at once. Either way
    nothing is lost: uncommitted input is read again on restart (at-least-once)."""
    import faust

    def on_stop_signal(signum: int, frame: Any) -> None:
        # A Python-level handler runs even while the event loop is busy; the loop still
        # gets the signal through its wakeup fd and starts Faust's graceful stop.
        if not deadline.arm():
            deadline.force(f"second stop signal ({signal.Signals(signum).name})")

    class DeadlineWorker(faust.Worker):
        def install_signal_handlers(self) -> None:
            super().install_signal_handlers()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, on_stop_signal)

        async def on_shutdown(self) -> None:
            await super().on_shutdown()
            # The end of the worker's stop: every service stopped, offsets committed.
            # Nothing is left to do: skip mode's event-loop teardown (it gathers, waits
            # and sleeps for another 1-2 s) and exit now. After a crash, mode's own
            # teardown re-raises it (non-zero status).
            if self.crash_reason is None and deadline.armed:
                logging.getLogger("detector.shutdown").info("stopped: what was processed is committed")
                deadline.cancel()
                logging.shutdown()
                os._exit(0)

    return DeadlineWorker(app, loglevel=loglevel, quiet=True)


# --- detector config check -----------------------------------------------------------
def cmd_config_check(args: argparse.Namespace) -> int:
    from agents.settings import load_detection, load_settings, resolve_config

    path = resolve_config(args.dir or args.config)
    from agents.webhooks import load_endpoints

    check_readable(path)
    settings = load_settings(path)
    kafka = settings.kafka  # the Kafka secrets' and certificates' files read, the SSLContext built
    cfg = load_detection(path)
    endpoints = load_endpoints(path)
    n_versions = sum(len(p.versions) for p in cfg.profiles.values())
    print(f"{path}: ok: {len(cfg.profiles)} profile(s) ({', '.join(cfg.profiles)}), {n_versions} app versions, "
          f"{len(cfg.scoring.weights)} signal weights, {len(endpoints)} webhook(s); kafka {settings.kafka_bootstrap} "
          f"over {kafka.describe()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agents.tools.demo import run_demo

    return run_demo(duration=args.duration, as_json=args.json, rate=args.rate, web_port=args.web_port,
                    broker_port=args.broker_port, config=args.config, webhook=args.webhook,
                    webhook_secret=args.webhook_secret, log_dir=args.log_dir)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.offline:
        from agents.tools.offline_bench import run_offline_bench

        off = run_offline_bench(n=args.count, rounds=args.rounds, seed=args.seed)
        if args.json:
            print(orjson.dumps(off).decode())
        else:
            print(f"offline pipeline (decode + score + encode, one core), {off['requests']} simulator requests, "
                  f"median of {off['rounds']} rounds: {off['requests_per_s']:,} requests/s "
                  f"(decode {off['decode_us']} us, score {off['score_us']} us, "
                  f"encode {off['encode_us']} us per request)")
        return 0
    from agents.kafkaclient import PLAINTEXT
    from agents.tools.bench import run_bench

    security = PLAINTEXT
    if args.bootstrap:  # a dedicated cluster: the settings' SASL / TLS (the embedded broker has none)
        from agents.settings import load_settings

        security = load_settings(args.config).kafka
    result = run_bench(n=args.count, batch=args.batch, bootstrap=args.bootstrap, seed=args.seed,
                       latency_rate=args.latency_rate, latency_seconds=args.latency_seconds, log_dir=args.log_dir,
                       roles=args.roles, flood=args.flood_count if args.flood else 0, security=security)
    if args.json:
        print(orjson.dumps(result).decode())
        return 0
    r = result
    procs = ", ".join(f"{role} {mb:.0f} MB" for role, mb in r["rss_mb_per_process"].items())
    print(f"{r['requests']} requests in {r['messages']} messages ({r['batch']} per message), broker {r['broker']}, "
          f"roles {r['roles']}:\n"
          f"  raw aiokafka consume + orjson parse:      {r['baseline_events_per_s']:>9,} requests/s\n"
          f"  end to end (verdicts, behaviour applied): {r['events_per_s']:>9,} requests/s  (ratio {r['ratio']:.3f})\n"
          f"  the ingest alone (verdicts produced):     {r['ingest_events_per_s']:>9,} requests/s  "
          f"(ratio {r['ingest_ratio']:.3f})\n"
          f"  {r['late_records']} records dropped as late, {r['alerts']} alert revisions, shard lag max "
          f"{r['shard_lag_max_s']} s, event-loop stall max {r['loop_block_max_ms']} ms, peak RSS {procs}; "
          f"changelog {r['changelog_records']} records, {r['changelog_bytes'] / 1e6:.1f} MB\n"
          f"  end-to-end latency at {r['latency_offered_per_s']} requests/s achieved ({r['latency_rate']} asked): "
          f"p50 {r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms (request sent to verdict consumed; worker "
          f"histogram, ts to verdict acknowledged: p50 {r['worker_latency_p50_ms']} ms, "
          f"p99 {r['worker_latency_p99_ms']} ms)")
    if "flood_requests" in r:
        bots = ("yes (" + ", ".join(r["flood_bot_alerted_types"]) + ")") if r["flood_bot_alerted"] else "NO"
        print(f"  flood: {r['flood_requests']:,} new-entity requests ({r['flood_bot_requests']} of a bot network) "
              f"ingested in {r['flood_duration_s']} s; shard lag max {r['flood_shard_lag_max_s']} s, caught up "
              f"{r['shard_catchup_s']} s after the ingest's end; RSS after it "
              + ", ".join(f"{role} {mb:.0f} MB" for role, mb in r["flood_rss_mb"].items())
              + f"; bot network alerted: {bots}")
    return 0


def parser() -> argparse.ArgumentParser:
    from agents.tools.eval_cli import add_reference_time
    from detector.adapters import INPUT_FORMATS

    p = argparse.ArgumentParser(prog="detector", description="Find clients that pretend to be an official mobile app.")
    p.add_argument("--version", action=VersionAction, help="print the version, commit and engine, and exit")
    p.add_argument("--config", help=CONFIG_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="offline: ClientRequest JSONL in, Verdict JSONL out")
    s.add_argument("input", nargs="?", help="input JSONL (default stdin)")
    s.add_argument("-o", "--output", help="output JSONL (default stdout)")
    s.add_argument("--alerts", help="also write the alerts the stream would raise to this JSONL file")
    s.add_argument("--rejections", help="also write the rejected lines as JSONL ({line, code, reason}) to this file")
    s.add_argument("--format", choices=INPUT_FORMATS, default="native",
                   help="the input's format: native (ClientRequest JSONL, default) or an edge's log lines "
                        "(config/edges/<edge>/, docs/edges.md)")
    add_reference_time(s)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("simulate", help="labelled ClientRequest traffic")
    s.add_argument("--scenario", default="genuine",
                   help="genuine, private_api_library, emulator_farm, synthetic_devices, bot_network, replay, "
                        "low_and_slow, fingerprint_spoofing or mixed (docs/evaluation.md)")
    s.add_argument("--evasion", type=int, choices=[0, 1, 2],
                   help="how careful the attacker is (default 0; mixed: drawn per attack)")
    s.add_argument("--count", type=int, default=1000, help="requests to generate (default 1000)")
    s.add_argument("--seed", type=int, default=1, help="random seed: the same seed gives the same traffic (default 1)")
    s.add_argument("--rate", type=float, help="requests per second of event time (and of sending, with --to kafka)")
    s.add_argument("--start", help="event time of the first request: epoch seconds or 'now' (default a fixed origin)")
    s.add_argument("--to", default="file", choices=["file", "kafka"],
                   help="write JSONL (-o or stdout, the default) or produce to the client-requests topic")
    s.add_argument("--bootstrap", help="Kafka bootstrap for --to kafka")
    s.add_argument("--batch", type=int, default=50, help="requests per Kafka message (JSON array) for --to kafka")
    s.add_argument("-o", "--output", help="output JSONL (default stdout)")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu)")
    s.add_argument("--port", type=int, default=9092, help="port to listen on (default 9092)")
    s.set_defaults(func=cmd_broker)

    s = sub.add_parser("topics", help="list (or --create) the service's topics on the configured cluster")
    s.add_argument("--create", action="store_true", help="create the missing topics first")
    s.add_argument("--bootstrap", help="Kafka bootstrap servers (default: the settings' kafka_bootstrap)")
    s.add_argument("--replication-factor", type=int, metavar="N",
                   help="replicas of each topic --create makes (default: the settings' topic_replication, 1; "
                        "3 in production, docs/operations.md \"Topics\")")
    s.set_defaults(func=cmd_topics)

    s = sub.add_parser("run", help="the stream worker (Faust app) against the configured Kafka")
    s.add_argument("--bootstrap", help="Kafka bootstrap servers (default: the settings' kafka_bootstrap)")
    s.add_argument("--web-port", type=int,
                   help="port of /metrics, /healthz and /readyz (default: the settings' web_port)")
    s.add_argument("--create-topics", action="store_true", help="create missing topics before starting")
    s.add_argument("--role", choices=ROLES,
                   help="what this process runs: all (the default: ingest and entity shards), ingest "
                        "(client-requests to verdicts) or shards (entity records to flags and alerts); "
                        "default: the settings' role, $DETECTOR_ROLE (docs/operations.md \"Process roles\")")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("demo", help="embedded broker + worker + simulator, with a live view")
    s.add_argument("--duration", type=float, default=60.0, help="seconds of traffic to send (default 60)")
    s.add_argument("--json", action="store_true", help="print a final one-line JSON summary")
    s.add_argument("--rate", type=float, default=400.0, help="requests per second to send")
    s.add_argument("--web-port", type=int, default=6066, help="the worker's /metrics port (default 6066)")
    s.add_argument("--broker-port", type=int, default=None, help="the embedded broker's port (default: a free one)")
    s.add_argument("--webhook", metavar="URL",
                   help="also send every alert to this URL (generic format, docs/alerts.md)")
    s.add_argument("--webhook-secret", metavar="S", help="sign the webhook requests with this secret")
    s.add_argument("--log-dir", metavar="DIR", help="keep the broker's and worker's logs here (default: a temporary "
                                                    "directory, removed after a normal end, kept after a failure)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("bench", help="worker throughput through a broker beside the raw-consumer baseline")
    s.add_argument("--count", type=int, default=100_000, help="requests to produce")
    s.add_argument("--batch", type=int, default=1, help="requests per Kafka message (1 = one request per message)")
    s.add_argument("--bootstrap", help="a dedicated Kafka cluster instead of the embedded broker")
    s.add_argument("--seed", type=int, default=1, help="random seed of the simulated traffic (default 1)")
    s.add_argument("--json", action="store_true", help="print one final JSON line")
    s.add_argument("--offline", action="store_true", help="the offline pipeline alone (detector score minus file I/O)")
    s.add_argument("--rounds", type=int, default=5, help="rounds for --offline (the median is reported)")
    s.add_argument("--roles", choices=["split", "all"], default="split",
                   help="split (default): one ingest and one shards process, as a deployment runs; all: one process")
    s.add_argument("--latency-rate", type=float,
                   help="requests/s offered in the latency phase (default: half of the throughput this run measured)")
    s.add_argument("--latency-seconds", type=float, default=10.0, help="duration of the latency phase")
    s.add_argument("--flood", action="store_true",
                   help="then a flood of new device ids, accounts and IPs with a bot network inside it")
    s.add_argument("--flood-count", type=int, default=200_000, help="requests of the --flood phase (default 200000)")
    s.add_argument("--log-dir", metavar="DIR", help="keep the broker's and worker's logs here (default: a temporary "
                                                    "directory, removed after a completed run, kept after a failure)")
    s.set_defaults(func=cmd_bench)

    from agents.tools.eval_cli import add_parser as add_eval_parser

    add_eval_parser(sub)

    s = sub.add_parser("config", help="configuration tools")
    csub = s.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("check", help="validate settings and profiles; exit 2 on error")
    c.add_argument("dir", nargs="?", help="config directory or settings file")
    c.set_defaults(func=cmd_config_check)
    _config_after_subcommand(p)
    return p


CONFIG_HELP = ("settings file, or the directory holding detector.yaml, profiles/, ... "
               "(default config/detector.yaml or $DETECTOR_CONFIG)")


def _config_after_subcommand(p: argparse.ArgumentParser) -> None:
    """`--config` is accepted after the subcommand too (`detector score --config X`):
    each subcommand's parser takes it, leaving the top-level value alone when absent."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in dict.fromkeys(action.choices.values()):
                if not any("--config" in a.option_strings for a in sp._actions):
                    sp.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
                _config_after_subcommand(sp)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # The worker logs at INFO, one JSON object per line unless DETECTOR_LOG_FORMAT=text
    # (agents/logs.py; the Faust worker re-applies the same set-up when it starts); the
    # other commands print their own output.
    if args.command == "run":
        from agents import logs

        try:
            logs.configure(os.environ.get("DETECTOR_LOG_LEVEL") or "INFO")
        except ValueError as exc:
            print(f"detector: configuration error: {exc}", file=sys.stderr)
            return 2
    else:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"detector: configuration error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if exc.filename is None:  # not about a file argument (a port in use...)
            raise
        print(f"detector {command_name(args)}: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
