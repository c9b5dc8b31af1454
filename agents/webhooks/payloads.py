"""The request an endpoint gets for an alert: its body in the endpoint's format (generic,
Slack, Alertmanager) and its headers, signed with HMAC-SHA256 when the endpoint has a
secret (docs/contracts.md, Webhook delivery)."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from agents.webhooks.config import Endpoint
from detector.alerts import Alert

_SLACK_ICON = {"low": ":information_source:", "medium": ":warning:", "high": ":rotating_light:", "critical": ":fire:"}


def _parse_iso(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def alert_closed(alert: Alert, now: float) -> bool:
    """An alert is open until the end of its window (wall clock)."""
    try:
        return now >= _parse_iso(alert.window.end)
    except ValueError:
        return False


def render(endpoint: Endpoint, alert: Alert, now: float | None = None) -> bytes:
    """The request body for this endpoint. Generic and Slack bodies are a pure function
    of the alert (a re-sent revision has identical content); an Alertmanager body also
    depends on whether the alert's window has closed at `now` (`endsAt`)."""
    if endpoint.format == "slack":
        return orjson.dumps(slack_message(alert))
    if endpoint.format == "alertmanager":
        return orjson.dumps([alertmanager_alert(alert, time.time() if now is None else now)])
    return alert.to_json()


def slack_message(alert: Alert) -> dict[str, Any]:
    sev = alert.severity
    ent = alert.entity
    title = f"{_SLACK_ICON.get(sev, '')} {sev.upper()} alert: {ent.type} {ent.id} (rev {alert.revision})"
    samples = ", ".join(f"`{r}`" for r in alert.sample_request_ids) or "none"
    details = (f"*codes*: {', '.join(alert.codes)}\n*requests*: {alert.count}  *score*: "
               f"{alert.score}\n*window*: {alert.window.start} to "
               f"{alert.window.end}\n*sample requests*: {samples}\n*alert id*: `{alert.alert_id}`")
    flags = alert.evidence.flag_details()
    if flags:
        details += "\n*behaviour*:" + "".join(f"\n- `{c}`: {d}" for c, d in flags.items())
    return {
        "text": f"{title}: {alert.summary}",  # the notification text and the fallback
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*\n{alert.summary}"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": details}},
        ],
    }


def alertmanager_alert(alert: Alert, now: float) -> dict[str, Any]:
    """One alert of Alertmanager's `POST /api/v2/alerts` body. Labels identify the alert
    (Alertmanager groups and de-duplicates by them), annotations carry the rest."""
    ent = alert.entity
    out: dict[str, Any] = {
        "labels": {
            "alertname": "ImpersonatingClient",
            "alert_id": alert.alert_id,
            "severity": alert.severity,
            "entity_type": ent.type,
            "entity_id": ent.id,
            "rule": alert.rule or "",
            "service": "app-impersonation-detector",
        },
        "annotations": {
            "summary": alert.summary,
            "revision": str(alert.revision),
            "count": str(alert.count),
            "score": str(alert.score),
            "codes": ",".join(alert.codes),
            "sample_request_ids": ",".join(alert.sample_request_ids),
            **({"behaviour": "; ".join(f"{c}: {d}" for c, d in flags.items())}
               if (flags := alert.evidence.flag_details()) else {}),
        },
        "startsAt": alert.created_at,
    }
    if alert_closed(alert, now):
        out["endsAt"] = alert.window.end
    return out


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` (docs/contracts.md, Webhook delivery)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def headers(endpoint: Endpoint, alert: Alert, body: bytes, timestamp: int) -> dict[str, str]:
    h = {"Content-Type": "application/json", "User-Agent": "app-impersonation-detector",
         "Idempotency-Key": f"{alert.alert_id}:{alert.revision}", "X-Detector-Timestamp": str(timestamp)}
    if endpoint.secret:
        h["X-Detector-Signature"] = sign(endpoint.secret, timestamp, body)
    return h
