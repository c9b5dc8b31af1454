"""`detector demo`: the embedded broker, a real worker process and the traffic
simulator on one machine, with a live view of verdicts, alerts and dead letters read
back from the output topics."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from agents.settings import load_detection, resolve_config
from agents.shutdown import ChildProcesses, die_with_parent
from agents.tools.broker import EmbeddedBroker, port_open
from agents.topics import ALERTS, CLIENT_REQUESTS_DLQ, VERDICTS, create_topics
from detector.simulate import mixed

log = logging.getLogger("detector.demo")
T = TypeVar("T")

# Settings that suit the embedded broker (architecture.md): it holds a group join for
# the whole rebalance timeout, so short timeouts make the first event arrive in ~5 s.
EMBEDDED_WORKER_ENV = {
    "DETECTOR_REBALANCE_TIMEOUT_S": "5",
    "DETECTOR_SESSION_TIMEOUT_S": "6",
    "DETECTOR_HEARTBEAT_INTERVAL_S": "1",
}

# A few malformed messages, sent during the demo so the dead-letter path shows.
BAD_MESSAGES = (
    b'{"request_id": "bad-1", "ts": ',
    b'\xff\xfe not utf-8',
    b'[{"request_id": "bad-3", "ts": 1, "client_ip": "10.0.0.1", "method": "GET", "headers": []}]',
)


def start_worker(bootstrap: str, web_port: int, log_path: Path, config: str | None = None,
                 extra_env: dict[str, str] | None = None, role: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, **EMBEDDED_WORKER_ENV, "DETECTOR_KAFKA_BOOTSTRAP": bootstrap,
           "DETECTOR_WEB_PORT": str(web_port), **(extra_env or {})}
    if config:
        env["DETECTOR_CONFIG"] = str(config)
    # Faust's data directory (its APP_DATADIR, default ./detector-data) beside the log,
    # not in the current directory
    env.setdefault("APP_DATADIR", str(log_path.parent / f"{log_path.stem}-data"))
    # Its own session: a terminal's Ctrl-C reaches only the parent, which stops it in
    # order; SIGTERM when the parent dies (Linux), so it never outlives the parent.
    with open(log_path, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "agents.cli", "run", *(["--role", role] if role else [])],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=die_with_parent())


def stop_process(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class DemoView:
    def __init__(self) -> None:
        self.levels: Counter[str] = Counter()
        self.alerts = 0
        self.alert_ids: set[str] = set()
        self.severities: Counter[str] = Counter()
        self.dlq = 0
        self.latest: deque[dict[str, Any]] = deque(maxlen=8)
        self.first_verdict_at: float | None = None
        self.first_alert_at: float | None = None

    @property
    def verdicts(self) -> int:
        return sum(self.levels.values())

    def take(self, topic: str, value: bytes) -> None:
        doc = orjson.loads(value)
        now = time.monotonic()
        if topic == VERDICTS.name:
            self.levels[doc["verdict"]] += 1
            self.first_verdict_at = self.first_verdict_at or now
        elif topic == ALERTS.name:
            self.alerts += 1
            self.alert_ids.add(doc["alert_id"])
            self.severities[doc["severity"]] += 1
            self.latest.appendleft(doc)
            self.first_alert_at = self.first_alert_at or now
        elif topic == CLIENT_REQUESTS_DLQ.name:
            self.dlq += 1

    def render(self, elapsed: float, sent: int, duration: float) -> Any:
        from rich.console import Group
        from rich.table import Table

        head = Table.grid(padding=(0, 2))
        head.add_row(f"[b]detector demo[/b]  {elapsed:5.1f}/{duration:.0f} s", f"sent {sent}",
                     f"verdicts {self.verdicts}", f"[green]clean {self.levels['clean']}[/]",
                     f"[yellow]suspicious {self.levels['suspicious']}[/]",
                     f"[red]malicious {self.levels['malicious']}[/]",
                     f"alerts {self.alerts} ({len(self.alert_ids)} ids)", f"dlq {self.dlq}")
        table = Table(title="latest alerts", expand=True)
        table.add_column("sev", width=8)
        table.add_column("rev", width=4)
        table.add_column("entity", width=34)
        table.add_column("summary")
        for a in self.latest:
            table.add_row(a["severity"], str(a["revision"]), f"{a['entity']['type']} {a['entity']['id']}", a["summary"])
        return Group(head, table)


class DemoError(Exception):
    """The demo cannot go on (a port in use, the worker exited)."""


# Ctrl-C (or SIGTERM/SIGHUP) to every child stopped: within this, then the summary.
# The demo's worker gets a shorter grace than production's (its broker is memory-only:
# nothing it leaves uncommitted matters after the demo).
DEMO_STOP_S = 3.0
DEMO_WORKER_GRACE_S = 2.0


@dataclass
class _Progress:
    started: float
    view: DemoView = field(default_factory=DemoView)
    sent: int = 0
    workdir: Path | None = None
    webhook_outcomes: dict[str, int] | None = None


async def _run(duration: float, rate: float, web_port: int, as_json: bool, broker_port: int | None,
               config: str | None, webhook: str | None = None, webhook_secret: str | None = None,
               children: ChildProcesses | None = None, workdir: Path | None = None) -> dict[str, Any]:
    """The demo, stoppable at any moment: the first Ctrl-C (SIGINT, SIGTERM or SIGHUP)
    cancels it and stops the worker, then the broker, within DEMO_STOP_S; a second one
    kills every child at once. The summary covers what happened until then. The logs
    go to `workdir` (default: a new temporary directory)."""
    children = children if children is not None else ChildProcesses()
    progress = _Progress(started=time.monotonic(),
                         workdir=workdir or Path(tempfile.mkdtemp(prefix="detector-demo-")))
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()

    def on_signal() -> None:
        if interrupted.is_set():
            children.kill(wait=False)  # a second Ctrl-C: no graceful stop, nothing left behind
        else:
            interrupted.set()

    signals = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    body = asyncio.create_task(_demo(duration, rate, web_port, as_json, broker_port, config, webhook,
                                     webhook_secret, children, progress))
    waiter = asyncio.create_task(interrupted.wait())
    stop_by = time.monotonic() + DEMO_STOP_S
    try:
        await asyncio.wait({body, waiter}, return_when=asyncio.FIRST_COMPLETED)
        stop_by = time.monotonic() + DEMO_STOP_S
        if not body.done():
            body.cancel()
            await asyncio.wait({body}, timeout=0.6)
        elif body.exception() is not None:
            raise body.exception()  # type: ignore[misc]
    finally:
        waiter.cancel()
        # the worker first (it commits what it processed), then the broker it uses
        # (the broker is memory-only: nothing to lose when it is killed)
        await children.stop("worker", max(0.5, stop_by - 0.4 - time.monotonic()))
        await children.stop("broker", min(0.3, max(0.1, stop_by - time.monotonic())))
        for sig in signals:
            loop.remove_signal_handler(sig)
            # removing restores Python's handler, whose KeyboardInterrupt can strike
            # anywhere in the teardown (seen: inside a weakref callback, a traceback on
            # stderr): from now on a Ctrl-C only kills what is left of the children
            signal.signal(sig, lambda _sig, _frame: children.kill(wait=False))
    view, started = progress.view, progress.started
    return {
        "verdicts": view.verdicts,
        "alerts": view.alerts,
        "alert_ids": len(view.alert_ids),
        "dlq": view.dlq,
        "sent": progress.sent,
        "by_level": dict(view.levels),
        "alerts_by_severity": dict(view.severities),
        "first_verdict_s": round(view.first_verdict_at - started, 2) if view.first_verdict_at else None,
        "first_alert_s": round(view.first_alert_at - started, 2) if view.first_alert_at else None,
        "duration_s": round(time.monotonic() - started, 1),
        "interrupted": interrupted.is_set(),
        "logs": str(progress.workdir),
        **({"webhook": progress.webhook_outcomes or {}} if webhook else {}),
    }


async def _demo(duration: float, rate: float, web_port: int, as_json: bool, broker_port: int | None,
                config: str | None, webhook: str | None, webhook_secret: str | None,
                children: ChildProcesses, progress: _Progress) -> None:
    if port_open("127.0.0.1", web_port):
        raise DemoError(f"port {web_port} is in use (choose another with --web-port)")
    assert progress.workdir is not None
    workdir = progress.workdir
    count = int(rate * duration)
    # The traffic (seconds of CPU) is generated beside the start-up of broker and
    # worker, off the event loop, so a Ctrl-C is handled at once meanwhile.
    traffic = _in_daemon_thread(lambda: _demo_traffic(config, count, rate))
    broker = EmbeddedBroker(port=broker_port, log_path=workdir / "broker.log").start()
    assert broker.proc is not None
    children.add("broker", broker.proc)
    await create_topics(broker.bootstrap, partitions=4)
    worker_env = {"DETECTOR_SHUTDOWN_GRACE_S": str(DEMO_WORKER_GRACE_S)}
    if webhook:  # the worker sends every alert to this URL (docs/alerts.md)
        config, webhook_env = demo_webhook_config(config, webhook, webhook_secret, workdir)
        worker_env.update(webhook_env)
    started = progress.started = time.monotonic()
    worker = children.add("worker", start_worker(broker.bootstrap, web_port, workdir / "worker.log", config,
                                                 extra_env=worker_env))
    view = progress.view
    stop = asyncio.Event()  # stops the producer
    done = asyncio.Event()  # stops the view, once the outputs are drained
    consumer = AIOKafkaConsumer(VERDICTS.name, ALERTS.name, CLIENT_REQUESTS_DLQ.name,
                                bootstrap_servers=broker.bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        events = await traffic
    except BaseException:
        await asyncio.wait_for(consumer.stop(), 0.25)
        raise

    async def produce() -> None:
        # Paced in batches of 1/20 s, as a batching edge sends them; a malformed
        # message now and then shows the dead-letter path.
        it = iter(events)
        batch = max(1, int(rate // 20))
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        try:
            await producer.start()
            t0 = time.monotonic()
            bad = list(BAD_MESSAGES)
            while not stop.is_set():
                chunk = [e for _, e in zip(range(batch), it)]
                if not chunk:
                    break
                await producer.send_and_wait("client-requests", orjson.dumps(chunk))
                progress.sent += len(chunk)
                if bad and progress.sent > (len(BAD_MESSAGES) - len(bad) + 1) * count / 4:
                    await producer.send_and_wait("client-requests", bad.pop(0))
                ahead = progress.sent / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        finally:
            await producer.stop()

    async def consume() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for tp, msgs in batches.items():
                for m in msgs:
                    view.take(tp.topic, m.value)
            if done.is_set() and not batches:
                return

    producer_task = asyncio.create_task(produce())
    consumer_task = asyncio.create_task(consume())
    live = None
    if not as_json and sys.stdout.isatty():
        from rich.live import Live

        live = Live(view.render(0, 0, duration), refresh_per_second=4)
        live.start()
    cancelled = False
    try:
        while time.monotonic() - started < duration:
            await asyncio.sleep(0.25)
            if worker.poll() is not None:
                raise DemoError(f"the worker exited early; see {workdir / 'worker.log'}")
            if live is not None:
                live.update(view.render(time.monotonic() - started, progress.sent, duration))
            elif not as_json and int((time.monotonic() - started) * 4) % 20 == 0:
                print(f"{time.monotonic() - started:5.1f}s sent={progress.sent} verdicts={view.verdicts} "
                      f"malicious={view.levels['malicious']} alerts={view.alerts} dlq={view.dlq}", flush=True)
        stop.set()
        await producer_task
        drain_until = time.monotonic() + 15
        while view.verdicts < progress.sent and time.monotonic() < drain_until:
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.0)
        if webhook:
            progress.webhook_outcomes = await wait_for_webhooks(web_port, view, worker)
    except asyncio.CancelledError:
        cancelled = True  # Ctrl-C: no drain, the caller stops the processes
        raise
    finally:
        stop.set()
        done.set()
        if live is not None:
            live.stop()
        if cancelled:
            producer_task.cancel()
            consumer_task.cancel()
        # bounded: the clients close while the broker is still up
        await asyncio.wait({producer_task, consumer_task}, timeout=0.25 if cancelled else 10)
        consumer_task.cancel()
        try:
            await asyncio.wait_for(consumer.stop(), 0.25 if cancelled else 5)
        except (TimeoutError, KafkaError) as exc:
            log.warning("demo consumer did not close cleanly: %r", exc)


def _demo_traffic(config: str | None, count: int, rate: float) -> list[dict[str, Any]]:
    detection = load_detection(config)
    return mixed(detection.profiles[detection.default_profile], count, seed=int(time.time()),
                 start_ts=time.time() + 1, rate=rate, catalogue=detection.catalogue)


def _in_daemon_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """`fn()` in a daemon thread, its outcome in the returned future: unlike the loop's
    executor, an abandoned call (the demo was interrupted) never delays the exit."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, exc = fn(), None
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            result, exc = None, e
        try:
            loop.call_soon_threadsafe(settle, result, exc)
        except RuntimeError:  # the loop has closed: nobody waits any more
            pass

    threading.Thread(target=run, name="demo-traffic", daemon=True).start()
    return fut


def demo_webhook_config(config: str | None, url: str, secret: str | None, workdir: Path) -> tuple[str, dict[str, str]]:
    """A settings copy with one endpoint `demo` (generic format) and the worker's env.
    Generous retries: a receiver may be down for minutes and still get every alert."""
    from agents.webhooks import write_config_with_webhooks

    ep: dict[str, Any] = {"name": "demo", "url": url, "format": "generic", "max_attempts": 30, "backoff_max_s": 30}
    env = {}
    if secret:
        ep["secret"] = {"env": "DETECTOR_DEMO_WEBHOOK_SECRET"}
        env["DETECTOR_DEMO_WEBHOOK_SECRET"] = secret
    path = write_config_with_webhooks(resolve_config(config), [ep], workdir / "detector.yaml")
    return str(path), env


async def wait_for_webhooks(web_port: int, view: DemoView, worker: subprocess.Popen[bytes],
                            timeout: float = 300.0) -> dict[str, int]:
    """Keep the worker (and the in-memory broker) up until every alert revision has a
    final webhook outcome, so a receiver that was down still gets them all."""
    import re
    import urllib.request

    pattern = re.compile(r'detector_webhook_deliveries_total\{endpoint="demo",outcome="(\w+)"\} ([0-9.e+]+)')
    outcomes: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=5) as r:
                text = r.read().decode()
            outcomes = {m.group(1): int(float(m.group(2))) for m in pattern.finditer(text)}
        except OSError:
            pass
        if sum(outcomes.values()) >= view.alerts:
            break
        await asyncio.sleep(1.0)
    return outcomes


def run_demo(duration: float = 60.0, as_json: bool = False, rate: float = 400.0, web_port: int = 6066,
             broker_port: int | None = None, config: str | None = None, webhook: str | None = None,
             webhook_secret: str | None = None, log_dir: str | None = None) -> int:
    """Exit status 0 with verdicts and alerts, 1 without, 130 when interrupted (the
    summary is printed in every case). The logs go to `log_dir`, else to a temporary
    directory that is removed after status 0 or 130 (agents/tools/rundir.py); their place is
    printed (stderr) at the start and the end."""
    from agents.tools.rundir import RunDir

    run_dir = RunDir("demo", log_dir)
    print(f"detector demo: logs in {run_dir.path}", file=sys.stderr, flush=True)
    children = ChildProcesses()
    atexit.register(children.kill)  # and every child dies with this process (die_with_parent)
    summary: dict[str, Any] | None = None
    try:
        summary = asyncio.run(_run(duration, rate, web_port, as_json, broker_port, config, webhook, webhook_secret,
                                   children, run_dir.path))
    except DemoError as exc:
        raise SystemExit(f"detector demo: {exc}") from None
    finally:
        children.kill()
        atexit.unregister(children.kill)
        # every child is gone: a further Ctrl-C has nothing left to stop. Ignored, not
        # handled: Python's finalization resets a handled signal to its default action,
        # and a Ctrl-C then would kill the process by SIGINT (status -2, no summary)
        for sig in (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])):
            signal.signal(sig, signal.SIG_IGN)
        if summary is None:  # failed: the logs say why
            print(f"detector demo: {run_dir.finish(ok=False)}", file=sys.stderr, flush=True)
    assert summary is not None
    status = 130 if summary["interrupted"] else 0 if summary["verdicts"] and summary["alerts"] else 1
    logs_line = run_dir.finish(ok=status != 1)
    if as_json:
        print(orjson.dumps(summary).decode(), flush=True)
    else:
        print(f"\n{'interrupted: ' if summary['interrupted'] else ''}"
              f"sent {summary['sent']} requests: {summary['verdicts']} verdicts {summary['by_level']}, "
              f"{summary['alerts']} alert revisions ({summary['alert_ids']} alerts), {summary['dlq']} dead letters; "
              f"first verdict after {summary['first_verdict_s']} s, first alert after {summary['first_alert_s']} s. "
              f"Logs: {summary['logs']}", flush=True)
        if webhook:
            print(f"webhook {webhook}: {summary['webhook']} (alerts-dlq holds any not delivered)", flush=True)
    print(f"detector demo: {logs_line}", file=sys.stderr, flush=True)
    return status
