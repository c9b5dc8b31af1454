"""Genuine requests, each varied the way an imitator differs from the app, must be
flagged (>= 99% non-clean); the unvaried ones stay clean. The TLS variations use
real ClientHellos captured from stacks on this machine (tests/data/client_hellos.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from detector.decode import request_from_obj
from detector.simulate import genuine

HELLOS = json.loads((Path(__file__).resolve().parents[1] / "data" / "client_hellos.json").read_text())["hellos"]
N = 400


@pytest.fixture(scope="module")
def base(detection, profile) -> list[dict[str, Any]]:
    return list(genuine(profile, N, seed=77, catalogue=detection.catalogue))


@pytest.fixture(scope="module")
def pipeline(detection):
    return detection.pipeline()


def flagged_share(pipeline, events) -> tuple[float, list]:
    verdicts = pipeline.score_batch([request_from_obj(e) for e in events])
    clean = [v for v in verdicts if v.verdict == "clean"]
    return 1 - len(clean) / len(verdicts), clean[:2]


def set_header(e: dict, name: str, value: str | None) -> dict:
    hs = [h for h in e["headers"] if h[0].lower() != name]
    if value is not None:
        idx = next((i for i, h in enumerate(e["headers"]) if h[0].lower() == name), len(hs))
        hs.insert(idx, [name, value])
    return {**e, "headers": hs}


def ua(e: dict) -> str:
    return next(v for n, v in e["headers"] if n.lower() == "user-agent")


def with_ua_fields(e: dict, **fields: str) -> dict:
    """Rewrite named fields of the user agent (grammar order, `; `-separated)."""
    head, rest = ua(e).split(" (", 1)
    parts = rest[:-1].split("; ")
    names = ["sdk_release", "dpi", "size", "manufacturer", "model", "device", "hardware", "locale", "version_code"]
    for k, v in fields.items():
        parts[names.index(k)] = v
    return set_header(e, "user-agent", f"{head} ({'; '.join(parts)})")


def with_version(e: dict, version: str, code: int) -> dict:
    head, rest = ua(e).split(" (", 1)
    app, _, tail = head.split(" ", 2)
    new = f"{app} {version} {tail} ({rest.rsplit('; ', 1)[0]}; {code})"
    return set_header(e, "user-agent", new)


def library_headers(e: dict) -> dict:
    """python-requests style: its own defaults first, Title-Case names."""
    own = [["Accept-Encoding", "gzip, deflate"], ["Accept", "*/*"], ["Connection", "keep-alive"]]
    rest = [["-".join(p.capitalize() for p in n.split("-")), v] for n, v in e["headers"] if n != "accept-encoding"]
    return {**e, "headers": own + rest}


def test_unvaried_genuine_requests_are_clean(pipeline, base):
    share, sample = flagged_share(pipeline, base)
    assert share <= 0.001, sample


VARIATIONS: dict[str, Callable[[dict, Any], dict]] = {
    "browser_h2_fingerprint": lambda e, p: {**e, "h2": {"fingerprint": "1:65536;2:0;4:6291456;6:262144|15663105|0|m,a,s,p"}},
    "http_1_1": lambda e, p: {**{k: v for k, v in e.items() if k != "h2"}, "http_version": "1.1"},
    "android_emulator": lambda e, p: with_ua_fields(e, manufacturer="Google", model="sdk_gphone64_x86_64",
                                                    device="emu64xa", hardware="ranchu"),
    "genymotion": lambda e, p: with_ua_fields(e, manufacturer="Genymotion", model="Samsung Galaxy S10",
                                              device="vbox86p", hardware="vbox86"),
    "library_header_order_and_case": lambda e, p: library_headers(e),
    "retired_version": lambda e, p: with_version(e, "311.0.0", min(p.versions["311.0.0"].codes)),
    "unknown_version_older_than_table": lambda e, p: with_version(e, "290.0.0", 599000001),
    "version_code_of_another_version": lambda e, p: with_version(
        e, ua(e).split(" ")[1], next(c for v in p.versions.values() if v.version != ua(e).split(" ")[1] for c in v.codes)),
    "broken_signature": lambda e, p: set_header(
        e, "x-es-signature", next(v for n, v in e["headers"] if n == "x-es-signature")[:-6] + "000000"),
    "virtual_only_attestation": lambda e, p: {**e, "attestation": {**e["attestation"],
                                                                  "device_recognition": ["MEETS_VIRTUAL_INTEGRITY"]}},
    "missing_attestation": lambda e, p: {k: v for k, v in e.items() if k != "attestation"},
}


@pytest.mark.parametrize("name", sorted(VARIATIONS))
def test_variation_is_flagged(name, pipeline, base, profile):
    varied = [VARIATIONS[name](e, profile) for e in base]
    share, sample = flagged_share(pipeline, varied)
    assert share >= 0.99, (name, sample)


@pytest.mark.parametrize("hello", HELLOS, ids=[h["client"] for h in HELLOS])
def test_captured_client_hello_of_another_stack_is_flagged(hello, pipeline, base):
    varied = [{**e, "tls": {"client_hello": hello["client_hello_b64"]}} for e in base]
    share, sample = flagged_share(pipeline, varied)
    assert share >= 0.99, (hello["client"], sample)
    v = pipeline.score_one(request_from_obj(varied[0]))
    assert v.fingerprints["ja4"] == hello["ja4"]
    assert "tls.fingerprint_mismatch" in {s.code for s in v.signals}
