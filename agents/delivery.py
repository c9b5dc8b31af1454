"""The webhook delivery stage of the worker: reads `alerts` with its own consumer group
(delivery never slows detection), queues one pending delivery per matching endpoint on
the retry topic, and delivers them per endpoint with its own concurrency limit, backoff
and circuit breaker, so a dead endpoint never delays the others. Policy (formats,
signing, what is retried, which addresses may be connected to) lives in
`agents/webhooks/`; each endpoint has its own HTTP session whose connector applies
the endpoint's address policy to every resolution, at connect time.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from mode import Service

from agents.metrics import Metrics
from agents.settings import Settings
from agents.topics import ALERTS, ALERTS_DLQ, WEBHOOK_RETRY
from agents.webhooks import (
    BREAKER_STATES,
    DELIVERED,
    REJECTED,
    AddressPolicy,
    AddressRefused,
    Endpoint,
    EndpointQueue,
    OffsetTracker,
    Pending,
    alert_closed,
    attempt_result,
    backoff_s,
    classify,
    clip,
    delivery_seq,
    dlq_record,
    headers,
    pending_record,
    render,
    retry_after_s,
    status_line,
)
from detector.alerts import Alert, alert_from_obj, decode_alert

log = logging.getLogger("detector.webhooks")

MAX_IN_MEMORY = 20_000  # pending deliveries held per worker before reading the retry topic pauses
DRAIN_MAX_BYTES = 64 * 1024  # of a response body read (and dropped) so the connection can be reused


class GuardedConnector(aiohttp.TCPConnector):
    """A TCP connector that connects only to the addresses its `AddressPolicy`
    allows. The filter sits where aiohttp turns a host into addresses (an IP literal,
    the DNS cache, or a fresh resolution), right before connecting: a DNS answer
    that changes after start-up (rebinding) cannot reach a refused address."""

    def __init__(self, policy: AddressPolicy, **kwargs: Any):
        super().__init__(**kwargs)
        self.policy = policy

    async def _resolve_host(self, host: str, port: int, traces: Sequence[Any] | None = None) -> list[Any]:
        hosts = await super()._resolve_host(host, port, traces=traces)
        allowed, refused = [], []
        for h in hosts:
            why = self.policy.refusal(str(h["host"]))
            if why is None:
                allowed.append(h)
            else:
                refused.append((str(h["host"]), why))
        if refused:
            log.warning("webhook host %s: refused address(es) %s", host, ", ".join(f"{a} ({w})" for a, w in refused))
        if not allowed:
            raise AddressRefused(host, refused)
        return allowed


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one request came to: the HTTP status (None: no answer), its result (one
    of ATTEMPT_RESULTS), a short error line (status line or error kind, never the
    response body) and the receiver's Retry-After."""

    status: int | None
    result: str
    error: str
    retry_after: float | None = None


def refused_address(exc: BaseException) -> AddressRefused | None:
    """The AddressRefused behind a connection error (aiohttp wraps it)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, AddressRefused):
            return seen
        os_error = getattr(seen, "os_error", None)
        if isinstance(os_error, AddressRefused):
            return os_error
        seen = seen.__cause__
    return None


async def post(session: aiohttp.ClientSession, e: Endpoint, alert: Alert) -> Attempt:
    """One signed POST of `alert` to `e`. The response body is read only to drain the
    connection (at most DRAIN_MAX_BYTES) and dropped."""
    body = render(e, alert)
    ts = int(time.time())
    try:
        async with session.post(e.url, data=body, headers=headers(e, alert, body, ts),
                                timeout=aiohttp.ClientTimeout(total=e.timeout_s), allow_redirects=False) as resp:
            try:
                await resp.content.read(DRAIN_MAX_BYTES)
            except (TimeoutError, aiohttp.ClientError):
                pass  # the status decides; a broken or slow body only costs the connection
            return Attempt(resp.status, attempt_result(resp.status), status_line(resp.status),
                           retry_after_s(resp.headers.get("Retry-After"), time.time()))
    except TimeoutError:
        return Attempt(None, "timeout", f"timeout after {e.timeout_s:g} s")
    except aiohttp.ClientError as exc:
        refused = refused_address(exc)
        if refused is not None:
            return Attempt(None, "address_refused", clip(str(refused)))
        return Attempt(None, "network_error", clip(f"{type(exc).__name__}: {exc}"))


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped (Any)
    def __init__(self, stage: DeliveryStage):
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.stage.release({tp.partition for tp in revoked if tp.topic == WEBHOOK_RETRY.name})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("webhook retry partitions assigned: %s", sorted(str(tp) for tp in assigned))


class DeliveryStage(Service):
    def __init__(self, settings: Settings, endpoints: tuple[Endpoint, ...], metrics: Metrics, **kwargs: Any):
        super().__init__(**kwargs)
        self.settings = settings
        self.endpoints = {e.name: e for e in endpoints}
        self.metrics = metrics
        self.queues = {e.name: EndpointQueue(e) for e in endpoints}
        self.tracker = OffsetTracker()
        self.generation: dict[int, int] = {}
        self.inflight: set[asyncio.Task[None]] = set()
        self.rng = random.Random()
        # alertmanager endpoints: alert_id -> [alert, next push (monotonic)] while open
        self.open_alerts: dict[str, dict[str, list[Any]]] = {
            e.name: {} for e in endpoints if e.format == "alertmanager"}
        self.producer: AIOKafkaProducer | None = None
        self.alerts_consumer: AIOKafkaConsumer | None = None
        self.retry_consumer: AIOKafkaConsumer | None = None
        self.http: dict[str, aiohttp.ClientSession] = {}
        self._paused = False

    # --- lifecycle ---------------------------------------------------------------------
    async def on_start(self) -> None:
        s = self.settings
        common = dict(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                      rebalance_timeout_ms=int(s.rebalance_timeout_s * 1000),
                      session_timeout_ms=int(s.session_timeout_s * 1000),
                      heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000), fetch_max_wait_ms=200,
                      **s.kafka.client_kwargs())
        self.producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, client_id=f"{s.app_id}-webhooks",
                                         acks="all", linger_ms=5, **s.kafka.client_kwargs())
        await self.producer.start()
        self.alerts_consumer = AIOKafkaConsumer(group_id=f"{s.app_id}-webhooks", client_id=f"{s.app_id}-webhooks",
                                                **common)
        self.alerts_consumer.subscribe([ALERTS.name])
        await self.alerts_consumer.start()
        self.retry_consumer = AIOKafkaConsumer(group_id=f"{s.app_id}-webhook-retry",
                                               client_id=f"{s.app_id}-webhook-retry", **common)
        self.retry_consumer.subscribe([WEBHOOK_RETRY.name], listener=_Revocations(self))
        await self.retry_consumer.start()
        for e in self.endpoints.values():
            # One session per endpoint: its connector applies the endpoint's address policy.
            self.http[e.name] = aiohttp.ClientSession(connector=GuardedConnector(e.address_policy))
        for q in self.queues.values():
            self._track(q)
            self.add_future(self._drive(q))
        log.info("webhook delivery started: %d endpoint(s): %s", len(self.endpoints), ", ".join(self.endpoints))

    def _track(self, q: EndpointQueue) -> None:
        """Export the queue's size and breaker state, read at scrape time."""
        self.metrics.track_webhook_endpoint(q.endpoint.name, pending=lambda: q.pending,
                                            breaker_state=lambda: BREAKER_STATES.index(q.breaker.state))

    async def on_stop(self) -> None:
        for t in list(self.inflight):
            t.cancel()
        await self._commit_retry()
        for c in (self.alerts_consumer, self.retry_consumer):
            if c is not None:
                await c.stop()
        if self.producer is not None:
            await self.producer.stop()
        for session in self.http.values():
            await session.close()
        log.info("webhook delivery stopped")

    # --- alerts -> pending deliveries ----------------------------------------------------
    @Service.task
    async def _fan_out(self) -> None:
        consumer, producer = self.alerts_consumer, self.producer
        assert consumer is not None and producer is not None
        while not self.should_stop:
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            except KafkaError as exc:
                log.warning("alerts poll failed, retrying: %s", exc)
                await asyncio.sleep(1)
                continue
            if not batches:
                continue
            futures = []
            now = time.time()
            for tp, msgs in batches.items():
                for m in msgs:
                    try:
                        alert = decode_alert(m.value)
                    except Exception as exc:  # noqa: BLE001 - a malformed alert must not stop delivery
                        log.error("skipping malformed alert %s[%d]@%d: %s", tp.topic, tp.partition, m.offset, exc)
                        continue
                    for e in self.endpoints.values():
                        if e.accepts(alert):
                            futures.append(await producer.send(WEBHOOK_RETRY.name,
                                                               pending_record(e.name, alert, 1, now),
                                                               key=e.name.encode()))
            await asyncio.gather(*futures)  # queued durably before the alerts are committed
            try:
                await consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in batches.items()})
            except CommitFailedError as exc:
                log.warning("alerts commit failed after a rebalance; alerts will be queued again: %s", exc)

    # --- retry topic -> endpoint queues --------------------------------------------------------
    @Service.task
    async def _read_pending(self) -> None:
        consumer = self.retry_consumer
        assert consumer is not None
        while not self.should_stop:
            held = sum(len(q) for q in self.queues.values()) + len(self.inflight)
            if held > MAX_IN_MEMORY and not self._paused:
                consumer.pause(*consumer.assignment())
                self._paused = True
            elif held < MAX_IN_MEMORY // 2 and self._paused:
                consumer.resume(*consumer.assignment())
                self._paused = False
            try:
                batches = await consumer.getmany(timeout_ms=300, max_records=2000)
            except KafkaError as exc:
                log.warning("webhook retry poll failed, retrying: %s", exc)
                await asyncio.sleep(1)
                continue
            for tp, msgs in batches.items():
                gen = self.generation.setdefault(tp.partition, 0)
                for m in msgs:
                    self.tracker.add(tp.partition, m.offset)
                    try:
                        rec = orjson.loads(m.value)
                        name, alert = rec["endpoint"], alert_from_obj(rec["alert"])
                        attempt, due = int(rec["attempt"]), float(rec["due"])
                    except Exception as exc:  # noqa: BLE001
                        log.error("skipping malformed pending delivery %s[%d]@%d: %s", tp.topic, tp.partition,
                                  m.offset, exc)
                        self.tracker.done(tp.partition, m.offset)
                        continue
                    q = self.queues.get(name)
                    if q is None:  # the endpoint was removed from the configuration
                        await self._dead(name, alert, "failed", f"endpoint {name!r} is no longer configured",
                                         attempt - 1)
                        self.tracker.done(tp.partition, m.offset)
                        continue
                    q.push(Pending(due, next(delivery_seq), tp.partition, m.offset, gen, attempt, alert))

    @Service.timer(1.0)
    async def _commit_timer(self) -> None:
        await self._commit_retry()

    async def _commit_retry(self) -> None:
        consumer = self.retry_consumer
        if consumer is None:
            return
        assigned = {tp.partition for tp in consumer.assignment()}
        offsets = {TopicPartition(WEBHOOK_RETRY.name, p): o for p, o in self.tracker.committable().items()
                   if p in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("webhook retry commit failed (deliveries since the last commit may repeat): %s", exc)

    async def release(self, partitions: set[int]) -> None:
        """A rebalance takes these retry partitions away: commit what is resolved and
        drop the rest from memory (the new owner reads it again)."""
        await self._commit_retry()
        for p in partitions:
            self.generation[p] = self.generation.get(p, 0) + 1
        for q in self.queues.values():
            q.heap = [x for x in q.heap if x.partition not in partitions]
            heapq.heapify(q.heap)
            if not q.pending:  # another worker delivers to it now: its breaker is not ours to report
                q.breaker.reset()
        self.tracker.forget(partitions)

    # --- delivery ---------------------------------------------------------------------------------
    async def _drive(self, q: EndpointQueue) -> None:
        """Start the due deliveries of one endpoint, at most `concurrency` at a time.
        While its circuit is open, due deliveries are held back (counted as
        `breaker_open` attempts) until the next probe."""
        label = self.metrics.webhook_endpoint(q.endpoint.name)
        while not self.should_stop:
            if not q.heap:
                q.changed.clear()
                await q.changed.wait()
                continue
            wait = q.heap[0].due - q.clock()
            if wait > 0:
                await self._wait_change(q, wait)
                continue
            held = q.hold_back()
            if held:
                self.metrics.webhook_attempts.labels(label, "breaker_open").inc(held)
                log.warning("webhook %s: circuit open, %d due deliveries held for %.1f s", q.endpoint.name, held,
                            q.breaker.open_for_s())
                continue
            if q.breaker.is_open and q.breaker.probing:  # a probe is running: its result decides
                await self._wait_change(q, 1.0)
                continue
            await q.slots.acquire()
            if not q.heap or q.heap[0].due > q.clock() or q.breaker.wait_s() > 0:
                q.slots.release()  # changed while waiting for a slot
                continue
            p = heapq.heappop(q.heap)
            q.inflight += 1
            task = asyncio.create_task(self._attempt(q, p))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)

    @staticmethod
    async def _wait_change(q: EndpointQueue, timeout: float) -> None:
        q.changed.clear()
        try:
            await asyncio.wait_for(q.changed.wait(), timeout=min(timeout, 1.0))
        except TimeoutError:
            pass

    async def _attempt(self, q: EndpointQueue, p: Pending) -> None:
        e = q.endpoint
        try:
            assert self.producer is not None
            a = await post(self.http[e.name], e, p.alert)
            label = self.metrics.webhook_endpoint(e.name)
            self.metrics.webhook_attempts.labels(label, a.result).inc()
            if a.result == "address_refused":
                q.breaker.abandon()  # says nothing about the endpoint being alive
            else:
                q.breaker.record(a.status is not None and a.status < 500)  # a 4xx answer: the endpoint is alive
            if self.generation.get(p.partition, 0) != p.generation:
                return  # the partition was revoked meanwhile: its new owner delivers again
            ident = f"{p.alert.alert_id}:{p.alert.revision}"
            outcome = classify(a.status)
            if a.result == "address_refused":
                # The policy refuses where the endpoint's name points: not retried (it is
                # configuration or hostile DNS, not a passing fault).
                self.metrics.webhook_deliveries.labels(label, "rejected").inc()
                log.error("webhook %s: %s not sent, %s: sent to %s", e.name, ident, a.error, ALERTS_DLQ.name)
                await self._dead(e.name, p.alert, "rejected", a.error, p.attempt)
            elif outcome == DELIVERED:
                self.metrics.webhook_deliveries.labels(label, "delivered").inc()
                log.info("webhook %s: delivered %s (attempt %d)", e.name, ident, p.attempt)
                if e.name in self.open_alerts:
                    self._track_open(e, p.alert)
            elif outcome == REJECTED:
                self.metrics.webhook_deliveries.labels(label, "rejected").inc()
                log.error("webhook %s: %s rejected with %s (not retried): sent to %s", e.name, ident, a.error,
                          ALERTS_DLQ.name)
                await self._dead(e.name, p.alert, "rejected", a.error, p.attempt)
            elif p.attempt >= e.max_attempts:
                self.metrics.webhook_deliveries.labels(label, "failed").inc()
                log.error("webhook %s: %s failed after %d attempts (%s): sent to %s", e.name, ident, p.attempt,
                          a.error, ALERTS_DLQ.name)
                await self._dead(e.name, p.alert, "failed", f"{p.attempt} attempts, last: {a.error}", p.attempt)
            else:
                now = time.time()
                due = now + backoff_s(e, p.attempt, self.rng, a.retry_after)
                log.warning("webhook %s: %s attempt %d failed (%s); next in %.1f s", e.name, ident, p.attempt, a.error,
                            due - now)
                await self.producer.send_and_wait(WEBHOOK_RETRY.name,
                                                  pending_record(e.name, p.alert, p.attempt + 1, due, a.error),
                                                  key=e.name.encode())
            self.tracker.done(p.partition, p.offset)
        except asyncio.CancelledError:
            q.breaker.abandon()
            raise
        except Exception:  # noqa: BLE001 - keep the pending record uncommitted and try it again later
            q.breaker.abandon()
            log.exception("webhook %s: delivery of %s:%s crashed", e.name, p.alert.alert_id, p.alert.revision)
            q.push(Pending(time.time() + e.backoff_max_s, next(delivery_seq), p.partition, p.offset, p.generation,
                           p.attempt, p.alert))
        finally:
            q.inflight -= 1
            q.slots.release()
            q.changed.set()

    async def _dead(self, endpoint: str, alert: Alert, outcome: str, reason: str, attempts: int) -> None:
        assert self.producer is not None
        await self.producer.send_and_wait(ALERTS_DLQ.name, dlq_record(endpoint, alert, outcome, reason, attempts,
                                                                      time.time()),
                                          key=alert.alert_id.encode())

    # --- alertmanager: repeat while open, endsAt when closed -------------------------------------------
    def _track_open(self, e: Endpoint, alert: Alert) -> None:
        opened = self.open_alerts[e.name]
        prev = opened.get(alert.alert_id)
        if prev is not None and prev[0].revision > alert.revision:
            return
        if alert_closed(alert, time.time()):
            opened.pop(alert.alert_id, None)  # the push already carried endsAt
            return
        opened[alert.alert_id] = [alert, time.monotonic() + e.repeat_interval_s]

    @Service.timer(1.0)
    async def _repeat_open_alerts(self) -> None:
        now, mono = time.time(), time.monotonic()
        for name, opened in self.open_alerts.items():
            e = self.endpoints[name]
            for aid, entry in list(opened.items()):
                alert, next_at = entry
                closed = alert_closed(alert, now)
                if not closed and mono < next_at:
                    continue
                a = await post(self.http[name], e, alert)  # best effort: Alertmanager re-pushes are idempotent
                if classify(a.status) != DELIVERED:
                    log.warning("webhook %s: re-push of %s failed: %s", name, aid, a.error)
                    entry[1] = mono + min(e.repeat_interval_s, 10.0)
                    continue
                if closed:
                    del opened[aid]
                else:
                    entry[1] = mono + e.repeat_interval_s
