"""Hostile input (issue #11): whatever a message carries, decode either accepts it
as the contract says or rejects it with a closed code, nothing raises on the way
from decode through scoring to the records, and every output stays under its byte
limit with credentials redacted."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector import decode
from detector.behaviour.records import decode_envelope, encode_envelopes, records_for
from detector.cache import ByteCache, approx_size, bounded_cache
from detector.decode import (REJECTION_CODES, TS_MAX, TS_MIN, DecodeLimits, Rejection, contract, decode_message,
                             encode_dlq_record)
from detector.engine import DetectionConfig
from detector.model import VERDICT_MAX_BYTES, ClientRequest, Signal, Verdict
from detector.redact import MARK, Redactor, scrub_detail
from detector.simulate import mixed

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "config" / "schema"
# validators built once (jsonschema.validate checks the schema itself on every call)
SCHEMA = jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / "client-request.schema.json").read_text()))
DLQ_SCHEMA = jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / "dlq.schema.json").read_text()))
VERDICT_SCHEMA = jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / "verdict.schema.json").read_text()))
RECORD_MAX_BYTES = 900_000  # min(topic max.message.bytes, producer max_request_size) less 10%, with defaults
SECRET = "Bearer tok-9f8e7d6c5b4a3210-secret"
PASSWORD = "hunter2-correct-horse"
LIMITS = DecodeLimits()


def base(i: int = 0, **over: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"request_id": f"r-{i}", "ts": 1795860000, "client_ip": "1.2.3.4", "method": "GET",
                           "path": "/", "headers": []}
    obj.update(over)
    return obj


# --- the defects found, one by one ----------------------------------------------------

FOUND = [
    (base(network={"asn": []}), "invalid_type", "network.asn"),
    (base(network={"asn": True}), "invalid_type", "network.asn"),
    *[(base(**{obj: {key: bad}}), "invalid_type", f"{obj}.{key}")
      for obj, key in (("network", "as_org"), ("network", "country"), ("network", "hosting"),
                       ("attestation", "provider"), ("attestation", "app_recognition"))
      for bad in ([], {"a": 1})],
    (base(ts=253402300700), "out_of_range", "'ts'"),
    (base(ts="0001-01-01T00:00:00+14:00"), "out_of_range", "'ts'"),
    (base(tls={"ja4": "j" * 3_000_000}), "oversized", "tls.ja4"),
    (base(h2={"fingerprint": "f" * 3_000_000}), "oversized", "h2.fingerprint"),
    (base(network={"as_org": "o" * 3_000_000}), "oversized", "network.as_org"),
]


@pytest.mark.parametrize("obj, code, where", FOUND, ids=[f"{w}-{c}-{i}" for i, (_, c, w) in enumerate(FOUND)])
def test_found_case_is_rejected_with_its_code(obj: dict[str, Any], code: str, where: str) -> None:
    d = decode_message(orjson.dumps(obj), LIMITS)
    assert not d.requests
    (rej,) = d.rejections
    assert rej.code == code and where in rej.reason


@pytest.mark.parametrize("ts", [TS_MIN, TS_MAX - 1, "2100-01-01T00:00:00Z", 4102444800])
def test_far_future_events_still_decode(ts: object) -> None:
    """2100 is far ahead but valid: the event-time guard, not decode, judges it."""
    (r,) = decode_message(orjson.dumps(base(ts=ts)), LIMITS).requests
    assert TS_MIN <= r.ts < TS_MAX


def test_a_batch_keeps_its_good_elements_around_a_poison_pill() -> None:
    d = decode_message(orjson.dumps([base(1), base(2, network={"asn": []}), base(3)]), LIMITS)
    assert [r.request_id for r in d.requests] == ["r-1", "r-3"]
    assert [(r.index, r.code) for r in d.rejections] == [(1, "invalid_type")]


def test_rejection_codes_are_a_closed_set() -> None:
    with pytest.raises(ValueError, match="unknown rejection code"):
        Rejection(None, "x", "made_up")
    assert Rejection(None, "x", "internal_error").code in REJECTION_CODES


# --- checks and pipeline on hand-built requests (defence in depth) --------------------


def test_pipeline_survives_unhashable_and_mistyped_values_decode_would_refuse(detection: Any) -> None:
    pipeline = detection.pipeline()
    odd: list[Any] = [[], {"a": 1}, True, 1.5, None, "x" * 10_000]
    for v in odd:
        r = ClientRequest("r", 1795860000.0, "1.2.3.4", "GET", "/", (("user-agent", "x"),),
                          network={"asn": v, "as_org": v, "country": v, "hosting": v},
                          attestation={"provider": v, "app_recognition": v, "device_recognition": v,
                                       "request_hash_ok": v, "token_age_s": v},
                          tls={"ja4": v, "alpn": v, "client_hello": v}, h2={"fingerprint": v})
        verdict, ctx = pipeline.assess(r)
        assert len(verdict.to_json()) <= VERDICT_MAX_BYTES
        records_for(r, ctx, verdict)


def test_signal_details_never_carry_a_redacted_value(detection: Any) -> None:
    """The identity check quotes an invalid device id; when its header is configured as
    a credential, the verdict shows the mark instead (whole value and quoted prefix)."""
    from detector.pipeline import Pipeline

    device_id = "not-an-android-id-but-a-secret-value-0123456789"
    r = ClientRequest("r", 1795860000.0, "1.2.3.4", "GET", "/api/v1/config", (("X-ES-Device-Id", device_id),))
    plain = Pipeline(detection.profiles, detection.scoring, catalogue=detection.catalogue, known=detection.known)
    assert device_id[:30] in plain.score_one(r).to_json().decode()  # the control: it is quoted
    red = Pipeline(detection.profiles, detection.scoring, catalogue=detection.catalogue, known=detection.known,
                   redactor=Redactor(headers=frozenset({"x-es-device-id"})))
    details = [s.detail for s in red.score_one(r).signals]
    assert any(MARK in d for d in details)
    assert not any(device_id[:16] in d for d in details)


def test_scrub_detail_removes_whole_values_and_prefixes() -> None:
    s = "abcdefghijklmnopqrstuvwxyz"
    assert scrub_detail(f"value {s!r} and {s[:20]}...", [s]) == f"value '{MARK}' and {MARK}..."
    assert scrub_detail("nothing here", [s]) == "nothing here"


# --- DLQ records ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    b"\x01" * 180_000,  # JSON-escapes x6
    b"\xff" * 790_000,  # not UTF-8: base64 grows 4/3
    b'"' * 500_000, b"\\" * 500_000,  # escape x2
    "é".encode() * 500_000, "😀".encode() * 250_000,  # 1 MB of multi-byte characters
    orjson.dumps([base(i, request_id="x" * 200) for i in range(10_000)]),  # 10,000 rejections, one per element
])
def test_dlq_record_fits_its_topic_for_worst_case_originals(value: bytes) -> None:
    d = decode_message(value, LIMITS)
    assert d.rejections
    out = encode_dlq_record(value, d.rejections, topic="client-requests", partition=3, offset=7, limits=LIMITS,
                            max_bytes=RECORD_MAX_BYTES, redactor=Redactor.default())
    assert len(out) <= RECORD_MAX_BYTES
    rec = orjson.loads(out)
    DLQ_SCHEMA.validate(rec)
    assert rec["size"] == len(value) and rec["errors_total"] == len(d.rejections) and rec["code"] in REJECTION_CODES
    assert len(rec["errors"]) <= decode.DLQ_MAX_ERRORS
    assert rec["truncated"] and rec["message"]


def test_dlq_record_redacts_credentials_when_the_original_parses() -> None:
    obj = base(ts="soon", headers=[["Authorization", SECRET], ["Cookie", "sid=" + PASSWORD], ["x", "y"]],
               params={"password": PASSWORD, "user_id": "12345"})
    raw = orjson.dumps(obj)
    d = decode_message(raw, LIMITS)
    rec = orjson.loads(encode_dlq_record(raw, d.rejections, topic="t", partition=0, offset=0, limits=LIMITS,
                                         max_bytes=RECORD_MAX_BYTES, redactor=Redactor.default()))
    copy = orjson.loads(rec["message"])
    assert rec["redacted"] and not rec["truncated"]
    assert copy["headers"] == [["Authorization", MARK], ["Cookie", MARK], ["x", "y"]]
    assert copy["params"] == {"password": MARK, "user_id": "12345"}
    assert rec["size"] == len(raw)  # size and sha256 are the original's


@pytest.mark.parametrize("raw", [
    b'{"request_id":"a","headers":[["Authorization","' + SECRET.encode() + b'"],["x"',  # truncated JSON
    b'{"headers": {"authorization": "' + SECRET.encode() + b'"}, oops}',
    b"POST /login HTTP/1.1\r\nHost: x\r\nAuthorization: " + SECRET.encode() + b"\r\nCookie: sid=" + PASSWORD.encode(),
    b'{"h":"Authorization: ' + SECRET.encode() + b'\\r\\n"} trailing',
    b'\xff{"headers":[["Authorization","' + SECRET.encode() + b'"]]}',  # not UTF-8 either
])
def test_dlq_record_scrubs_credentials_from_originals_that_do_not_parse(raw: bytes) -> None:
    d = decode_message(raw, LIMITS)
    out = encode_dlq_record(raw, d.rejections, topic="t", partition=0, offset=0, limits=LIMITS,
                            max_bytes=RECORD_MAX_BYTES, redactor=Redactor.default())
    rec = orjson.loads(out)
    import base64

    text = base64.b64decode(rec["message"]) if rec["message_encoding"] == "base64" else rec["message"].encode()
    assert SECRET.split()[1].encode() not in text and PASSWORD.encode() not in text
    assert rec["redacted"]


def test_dlq_record_fits_even_a_small_limit() -> None:
    value = b"\x01" * 5000
    d = decode_message(value, LIMITS)
    for limit in (600, 1000, 4096):
        out = encode_dlq_record(value, d.rejections, topic="t", partition=0, offset=0, limits=LIMITS, max_bytes=limit,
                                redactor=Redactor.default())
        assert len(out) <= limit


# --- verdicts ----------------------------------------------------------------------------


def test_verdict_is_bounded_for_worst_case_strings() -> None:
    big = "\x01" * 8192
    v = Verdict("r" * 128, 1.0, 0.5, "clean", "p", {k: big for k in ("ip", "device", "account", "session", "ip_block",
                                                                       "signature", "fingerprint")},
                {k: big for k in ("ja4", "ja3", "h2", "headers", "device")},
                tuple(Signal(f"tls.code{i}", 0.5, big) for i in range(60)), app_version=big)
    out = v.to_json()
    assert len(out) <= VERDICT_MAX_BYTES
    back = orjson.loads(out)
    assert back["fingerprints"]["ja4"].endswith("...[truncated]") and len(back["signals"]) == 60


# --- the property test: every field of the contract, wrong types and extreme values -----

_CFG = DetectionConfig.load()
_events = mixed(_CFG.profiles[_CFG.default_profile], 60, 5, catalogue=_CFG.catalogue)
_big = st.builds(lambda ch, n: ch * n, st.sampled_from(["\x01", "é", "😀", "a", '"', "\\", "\u2028"]),
                 st.sampled_from([0, 1, 33, 64, 8191, 8192, 8193, 16385, 70_000]))
_int64 = st.integers(-2**63, 2**63 - 1)  # what JSON carries (orjson's range)
_hostile = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
    st.sampled_from([0, -1, 2**32 - 1, 2**32, 1e308, -1e308, 5e-324, 253402300700, TS_MIN, TS_MAX, TS_MIN - 1,
                     "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "nan", "US",
                     "MEETS_VIRTUAL_INTEGRITY", "h2", "/", "::1", "fe80::1%" + "e" * 8000]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12), _big,
    st.lists(st.one_of(_int64, st.text(max_size=4), _big), max_size=40),
    st.dictionaries(st.text(max_size=4), st.one_of(_int64, st.text(max_size=4), _big), max_size=70),
    st.lists(st.lists(st.text(max_size=4), max_size=3), max_size=3),
)
_TOP = sorted(contract._KNOWN_FIELDS) + ["unknown_field"]
_NESTED = [(obj, key) for obj, spec in contract._NESTED.items() for key in spec] + [(obj, "unknown") for obj in contract._NESTED]


@st.composite
def _messages(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    obj = orjson.loads(orjson.dumps(draw(st.sampled_from(_events))))
    obj["headers"] = obj["headers"] + [["Authorization", SECRET]]
    obj["params"] = {**(obj.get("params") or {}), "password": PASSWORD}
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "nested", "nested", "header", "param"]))
        value = draw(_hostile)
        if where == "top":
            obj[draw(st.sampled_from(_TOP))] = value
        elif where == "nested":
            name, key = draw(st.sampled_from(_NESTED))
            inner = obj.get(name) if isinstance(obj.get(name), dict) else {}
            obj[name] = {**inner, key: value}
        elif where == "header" and isinstance(obj.get("headers"), list):
            obj["headers"] = obj["headers"] + [[draw(st.sampled_from(["user-agent", "x-es-device-id", "x-es-timestamp",
                                                                      "x-es-signature", "Authorization"])),
                                                value if isinstance(value, str) else str(value)]]
        elif isinstance(obj.get("params"), dict):
            obj["params"] = {**obj["params"], draw(st.sampled_from(["user_id", "password", "x"])): value}
    form = draw(st.sampled_from(["object", "array", "ndjson"]))
    good = orjson.loads(orjson.dumps(_events[0]))
    if form == "object":
        raw = orjson.dumps(obj)
    elif form == "array":
        raw = orjson.dumps([good, obj])
    else:
        raw = orjson.dumps(good) + b"\n" + orjson.dumps(obj) + b"\n"
    return raw, obj


@pytest.fixture(scope="module")
def stages(detection: Any) -> Any:
    return detection.pipeline(), detection.limits


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                   HealthCheck.function_scoped_fixture])
@given(_messages())
@pytest.mark.slow
def test_decode_score_records_encode_never_raise_and_stay_bounded(stages: Any, message: tuple[bytes, dict[str, Any]]) -> None:
    pipeline, limits = stages
    raw, _ = message
    token = SECRET.split()[1].encode()
    d = decode_message(raw, limits)
    assert len(d.requests) + len(d.rejections) >= 1
    if d.rejections:
        assert all(r.code in REJECTION_CODES for r in d.rejections)
        out = encode_dlq_record(raw, d.rejections, topic="client-requests", partition=0, offset=1, limits=limits,
                                max_bytes=RECORD_MAX_BYTES, redactor=pipeline.redactor)
        assert len(out) <= RECORD_MAX_BYTES
        assert token not in out and PASSWORD.encode() not in out
        DLQ_SCHEMA.validate(orjson.loads(out))
    elements = (orjson.loads(raw) if raw[:1] == b"[" else [orjson.loads(x) for x in raw.splitlines()])
    for r, index in zip(d.requests, d.indices):
        SCHEMA.validate(elements[index or 0])  # decode accepts only what the published schema allows
        assert TS_MIN <= r.ts < TS_MAX
        verdict, ctx = pipeline.assess(r)
        vj = verdict.to_json()
        assert len(vj) <= VERDICT_MAX_BYTES
        assert token not in vj and PASSWORD.encode() not in vj
        VERDICT_SCHEMA.validate(orjson.loads(vj))
        records = records_for(r, ctx, verdict)
        envelopes = encode_envelopes(records, [(0, 1, 0)] * len(records), RECORD_MAX_BYTES)
        assert all(len(e) <= RECORD_MAX_BYTES for e in envelopes)
        # the shard can always read what the ingest wrote
        assert [x for e in envelopes for x in decode_envelope(e).records] == records


# --- caches bounded by bytes ----------------------------------------------------------


def test_byte_lru_holds_at_most_its_budget_of_attacker_sized_values() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache: ByteCache[str, str] = ByteCache(32 * 2**20, 4 * 2**20)
        for i in range(100):  # 100 values of 3 MB (the as_org of the issue) would be 300 MB
            cache.put(f"k{i}", chr(0x41 + i % 26) * 3_000_000 + str(i))
        held = tracemalloc.get_traced_memory()[0] - before
        assert cache.bytes <= 32 * 2**20 and len(cache) == 11  # 11 x 3 MB fit in 32 MiB
        assert held < 40 * 2**20
        small: ByteCache[str, str] = ByteCache(32 * 2**20, 16 * 1024)
        assert not small.put("k", "v" * 3_000_000) and len(small) == 0 and small.refused == 1  # over-long: not cached
    finally:
        tracemalloc.stop()
    assert cache.get("k99") is not None and cache.get("k0") is None  # the oldest went first


def test_bounded_cache_memoises_and_does_not_cache_errors() -> None:
    calls: list[str] = []

    @bounded_cache(1024, 512)
    def f(x: str) -> str:
        calls.append(x)
        if x == "bad":
            raise ValueError(x)
        return x.upper()

    assert f("a") == f("a") == "A" and calls == ["a"]
    for _ in range(2):
        with pytest.raises(ValueError):
            f("bad")
    assert calls == ["a", "bad", "bad"]
    f("x" * 600)  # over the item bound: computed, not kept
    assert ("x" * 600,) not in f.cache  # type: ignore[attr-defined]
    assert approx_size(("x" * 600,)) > 600


def test_pipeline_memory_stays_bounded_over_many_distinct_max_size_values(detection: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """2,000 requests, each with its own 2 KB user agent, as_org, ids, JA4 and header
    value: unbounded caches would keep ~40 MB of them; with every cache at 1 MB the
    pipeline keeps a few MB whatever the variety."""
    from detector import pipeline as pl
    from detector.checks import device, headers, identity

    mb = 2**20
    for mod, name in ((pl, "_UA_CACHE_BYTES"), (pl, "_NAMES_CACHE_BYTES"), (pl, "_SHAPE_CACHE_BYTES"),
                      (headers, "_NAMES_CACHE_BYTES"), (headers, "_VALUES_CACHE_BYTES"), (device, "_CACHE_BYTES"),
                      (identity, "_CACHE_BYTES")):
        monkeypatch.setattr(mod, name, mb)
    pipeline = detection.pipeline()
    template = orjson.loads(orjson.dumps(_events[0]))
    ua = dict(template["headers"])["user-agent"]

    def request(i: int) -> ClientRequest:
        tag = f"{i:06d}" * 340  # ~2 KB, distinct per request
        obj = {**template, "request_id": f"m-{i}",
               "headers": [[n, (ua + tag if n == "user-agent" else v + tag)] for n, v in template["headers"]],
               "network": {"asn": i, "as_org": tag, "country": "US", "hosting": True},
               "tls": {**(template.get("tls") or {}), "ja4": "t13d" + tag}}
        (r,) = decode_message(orjson.dumps(obj), LIMITS).requests
        return r

    for i in range(50):  # warm up what is allocated once
        pipeline.assess(request(i))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(50, 2050):
            pipeline.assess(request(i))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    caches = [pipeline._ua_cache, pipeline._names_cache, pipeline._shape_cache]
    caches += [c._names_cache for c in pipeline.checks if isinstance(c, headers.HeadersCheck)]
    caches += [c._value_ok for c in pipeline.checks if isinstance(c, headers.HeadersCheck)]
    caches += [c._cache for c in pipeline.checks if isinstance(c, (identity.IdentityCheck, device.DeviceCheck))]
    assert all(c.bytes <= c.max_bytes == mb for c in caches)
    assert sum(c.evictions for c in caches) > 0  # the budgets were reached
    assert grown < 20 * mb, f"{grown / mb:.1f} MB kept"


def test_alpn_as_a_list_counts_what_is_offered_first(detection: Any) -> None:
    pipeline = detection.pipeline()
    event = orjson.loads(orjson.dumps(_events[0]))
    as_string = decode_message(orjson.dumps(event), LIMITS).requests[0]
    event["tls"] = {**event["tls"], "alpn": [event["tls"]["alpn"], "http/1.1"]}
    as_list = decode_message(orjson.dumps(event), LIMITS).requests[0]
    codes = [[s.code for s in pipeline.score_one(r).signals] for r in (as_string, as_list)]
    assert codes[0] == codes[1]
    event["tls"]["alpn"] = ["http/1.1", "h2"]
    wrong_first = decode_message(orjson.dumps(event), LIMITS).requests[0]
    assert "tls.alpn_mismatch" in [s.code for s in pipeline.score_one(wrong_first).signals]


@pytest.mark.parametrize("section, problem", [
    ("redact:\n  headers: authorization\n", "redact.headers must be a list of names, got str"),
    ("redact:\n  headers: [authorization, 'bad name']\n", "redact.headers must be names (HTTP tokens), got 'bad name'"),
    ("redact:\n  header: [authorization]\n", "redact.header: unknown key (did you mean headers?)"),
    ("redact: [authorization]\n", "redact"),
])
def test_redact_config_errors_name_the_file_and_line(tmp_path: Path, section: str, problem: str) -> None:
    from detector.config import ConfigError

    root = Path(__file__).resolve().parents[2] / "config"
    for sub in ("profiles", "devices", "fingerprints", "geo", "edges"):
        (tmp_path / sub).symlink_to(root / sub)
    text = (root / "detector.yaml").read_text()
    start = text.index("\nredact:\n") + 1
    end = text.index("\n\n", start) + 1
    (tmp_path / "detector.yaml").write_text(text[:start] + section + text[end:])
    with pytest.raises(ConfigError) as exc:
        DetectionConfig.load(tmp_path / "detector.yaml")
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path / 'detector.yaml'}:") and problem in msg
    line = int(msg.split("detector.yaml:")[1].split(":")[0])
    assert any(w in (tmp_path / "detector.yaml").read_text().splitlines()[line - 1] for w in ("redact", "header"))


def test_redact_config_replaces_the_default_lists() -> None:
    r = Redactor.from_config({"headers": ["X-Secret"], "params": []})
    assert r.headers == frozenset({"x-secret"}) and r.params == frozenset()
    assert r.redact_json({"headers": [["authorization", "a"], ["X-SECRET", "b"]], "params": {"password": "p"}}) == (
        {"headers": [["authorization", "a"], ["X-SECRET", MARK]], "params": {"password": "p"}}, True)
    assert _CFG.redactor == Redactor.default()  # the shipped config lists the defaults
