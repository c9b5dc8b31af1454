"""What one attempt came to and what follows: delivered, rejected or retried (after a
jittered backoff, never before Retry-After), and the circuit breaker that holds an
endpoint's deliveries while it keeps failing."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from http import HTTPStatus

from agents.webhooks.config import Endpoint

# Outcomes of one attempt
DELIVERED, REJECTED, RETRY = "delivered", "rejected", "retry"

# What one attempt at one endpoint came to (the `result` label of
# detector_webhook_attempts_total, a closed set): delivered (2xx), rejected (another
# 4xx: the endpoint is alive), http_error (408, 429, 5xx, 3xx is `rejected`), timeout,
# network_error (connection refused or reset, TLS, DNS), address_refused (the address
# policy refused every address the endpoint's host resolved to), breaker_open (a due
# delivery held back by the endpoint's open circuit breaker: no request was made).
ATTEMPT_RESULTS = ("delivered", "rejected", "http_error", "timeout", "network_error", "address_refused",
                   "breaker_open")
# The circuit breaker's state (detector_webhook_breaker_state is the index).
BREAKER_STATES = ("closed", "half_open", "open")
ERROR_MAX_CHARS = 200  # an error string in a log line or an alerts-dlq record


def clip(text: str, limit: int = ERROR_MAX_CHARS) -> str:
    """One short printable line: control characters replaced, at most `limit` chars."""
    out = "".join(c if c.isprintable() else " " for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def status_line(status: int) -> str:
    """`HTTP <status> <standard reason>`: what of a response reaches logs and the
    alerts DLQ. Neither the body nor the receiver's own reason phrase is copied."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def attempt_result(status: int | None) -> str:
    """The ATTEMPT_RESULTS value of an answered attempt (None: use the error's kind)."""
    outcome = classify(status)
    if outcome == DELIVERED:
        return "delivered"
    if outcome == REJECTED:
        return "rejected"
    return "http_error"


def classify(status: int | None) -> str:
    """None is a network error or timeout. Retried: network errors, 408, 429 and 5xx;
    any other 4xx is the receiver refusing this payload, which a retry will not change."""
    if status is not None and 200 <= status < 300:
        return DELIVERED
    if status is None or status in (408, 429) or status >= 500:
        return RETRY
    return REJECTED


def retry_after_s(value: str | None, now: float) -> float | None:
    """`Retry-After` as delay-seconds or an HTTP date (RFC 9110 section 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None


def backoff_s(endpoint: Endpoint, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
    """Delay before attempt `attempt + 1` (attempt counts from 1): exponential with full
    jitter, so many failed deliveries do not retry in lockstep; never shorter than the
    receiver's Retry-After (capped at backoff_max_s)."""
    cap: float = min(endpoint.backoff_max_s, endpoint.backoff_s * 2 ** (attempt - 1))  # int ** int is Any to mypy
    delay = cap / 2 + rng.uniform(0, cap / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, endpoint.backoff_max_s))
    return delay


class CircuitBreaker:
    """Closed until `failures` consecutive failures; then open for `reset_s` (nothing is
    attempted: pending deliveries wait without spending attempts), then half-open: one
    probe, whose success closes it and whose failure opens it again."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic):
        self.failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self.consecutive = 0
        self.open_until = 0.0
        self.probing = False

    def wait_s(self) -> float:
        """0 when an attempt may start now (taking the probe when half-open), else how
        long to wait."""
        if self.consecutive < self.failures:
            return 0.0
        left = self.open_until - self.clock()
        if left > 0 or self.probing:
            return max(left, 0.05)
        self.probing = True  # half-open: one probe at a time
        return 0.0

    def record(self, ok: bool) -> None:
        self.probing = False
        if ok:
            self.consecutive = 0
            return
        self.consecutive += 1
        if self.consecutive >= self.failures:
            self.open_until = self.clock() + self.reset_s

    def abandon(self) -> None:
        """An attempt ended without saying whether the endpoint is alive (the address
        policy refused it, or it was dropped): a probe may be taken again."""
        self.probing = False

    def reset(self) -> None:
        """Forget the history (this worker no longer delivers to the endpoint)."""
        self.consecutive, self.open_until, self.probing = 0, 0.0, False

    @property
    def is_open(self) -> bool:
        return self.consecutive >= self.failures

    @property
    def state(self) -> str:
        """closed, half_open (a probe runs or the next attempt is one) or open."""
        if self.consecutive < self.failures:
            return "closed"
        if self.probing or self.clock() >= self.open_until:
            return "half_open"
        return "open"

    def open_for_s(self) -> float:
        """How long the circuit stays open (0 unless `state` is open)."""
        return max(0.0, self.open_until - self.clock()) if self.is_open else 0.0
