"""Decoding of ClientRequest messages in every form, and rejection of bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector import decode
from detector.decode import (DecodeLimits, InvalidRequest, decode_line, decode_message, dlq_reason_class, dlq_record,
                             fastpath, request_from_obj)

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "config" / "schema"


def req(i: int = 1, **over: object) -> dict:
    base = {"request_id": f"r-{i}", "ts": 1763805600.5, "client_ip": "203.0.113.7", "method": "GET",
            "path": "/api/v1/feed/timeline", "headers": [["user-agent", "x"], ["accept-encoding", "gzip"]]}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_single_object_decodes_to_typed_request():
    d = decode_message(orjson.dumps(req(account_id="a1", unknown_field={"x": 1})))
    assert d.form == "object" and not d.rejections
    (r,) = d.requests
    assert r.request_id == "r-1" and r.ts == 1763805600.5 and r.headers[0] == ("user-agent", "x")
    assert r.account_id == "a1" and r.extra == {"unknown_field": {"x": 1}}
    assert d.indices == [None]


def test_array_and_ndjson_forms_keep_order_and_indices():
    arr = decode_message(orjson.dumps([req(1), req(2), req(3)]))
    nd = decode_message(b"\n".join(orjson.dumps(req(i)) for i in (1, 2, 3)) + b"\n")
    for d, form in ((arr, "array"), (nd, "ndjson")):
        assert d.form == form
        assert [r.request_id for r in d.requests] == ["r-1", "r-2", "r-3"]
        assert d.indices == [0, 1, 2]


def test_bad_element_in_batch_is_rejected_and_siblings_survive():
    d = decode_message(orjson.dumps([req(1), req(2, path=None), req(3, ts="yesterday")]))
    assert [r.request_id for r in d.requests] == ["r-1"]
    assert [(x.index, x.reason.split(":")[0]) for x in d.rejections] == [
        (1, "missing required field 'path'"), (2, "field 'ts' is not an RFC 3339 timestamp with a time zone")]


def test_bad_line_in_ndjson_is_rejected_with_its_index():
    raw = orjson.dumps(req(1)) + b"\n{not json\n" + orjson.dumps(req(3))
    d = decode_message(raw)
    assert [r.request_id for r in d.requests] == ["r-1", "r-3"]
    assert d.rejections[0].index == 1 and d.rejections[0].reason.startswith("invalid JSON")


@pytest.mark.parametrize(
    "value, reason",
    [
        (b"{\"request_id\": ", "invalid JSON"),
        (b"\xff\xfe{}", "invalid UTF-8 at byte 0"),
        (b"", "empty message"),
        (b"42", "a ClientRequest must be a JSON object, got integer"),
    ],
)
def test_undecodable_messages_are_rejected_with_a_reason(value, reason):
    d = decode_message(value)
    assert not d.requests and d.rejections[0].index is None
    assert d.rejections[0].reason.startswith(reason)


@pytest.mark.parametrize(
    "override, reason",
    [
        ({"request_id": None}, "missing required field 'request_id'"),
        ({"headers": None}, "missing required field 'headers'"),
        ({"ts": True}, "field 'ts' must be epoch seconds"),
        ({"ts": -1}, "field 'ts' must be epoch seconds between 2000-01-01T00:00:00Z and 2200-01-01T00:00:00Z"),
        ({"ts": 1e29}, "field 'ts' must be epoch seconds between 2000-01-01T00:00:00Z and"),
        ({"ts": 253402300700}, "field 'ts' must be epoch seconds between 2000-01-01T00:00:00Z and"),
        ({"ts": "0001-01-01T00:00:00+14:00"}, "field 'ts' must be a time between 2000-01-01T00:00:00Z"),
        ({"ts": "2200-01-01T00:00:00Z"}, "field 'ts' must be a time between"),
        ({"network": {"asn": []}}, "field 'network.asn' must be an integer, got array"),
        ({"network": {"asn": True}}, "field 'network.asn' must be an integer, got boolean"),
        ({"network": {"asn": -1}}, "field 'network.asn' must be between 0 and 4294967295"),
        ({"network": {"asn": 2**32}}, "field 'network.asn' must be between 0 and 4294967295"),
        ({"network": {"as_org": ["x"]}}, "field 'network.as_org' must be a string, got array"),
        ({"network": {"country": {"a": 1}}}, "field 'network.country' must be a string, got object"),
        ({"network": {"country": "USA"}}, "field 'network.country' of 3 chars exceeds 2"),
        ({"network": {"hosting": []}}, "field 'network.hosting' must be a boolean, got array"),
        ({"network": {"hosting": 1}}, "field 'network.hosting' must be a boolean, got integer"),
        ({"attestation": {"provider": []}}, "field 'attestation.provider' must be a string, got array"),
        ({"attestation": {"app_recognition": {}}}, "field 'attestation.app_recognition' must be a string"),
        ({"attestation": {"device_recognition": "MEETS"}}, "field 'attestation.device_recognition' must be an array"),
        ({"attestation": {"device_recognition": [1]}}, "field 'attestation.device_recognition[0]' must be a string"),
        ({"attestation": {"request_hash_ok": "yes"}}, "field 'attestation.request_hash_ok' must be a boolean"),
        ({"attestation": {"token_age_s": True}}, "field 'attestation.token_age_s' must be a number, got boolean"),
        ({"tls": {"ja3": "abc"}}, "field 'tls.ja3' must be 32 hex characters"),
        ({"tls": {"ja4": ["t13d"]}}, "field 'tls.ja4' must be a string, got array"),
        ({"tls": {"alpn": [1]}}, "field 'tls.alpn[0]' must be a string"),
        ({"tls": {"alpn": ["h2"] * 33}}, "field 'tls.alpn' has 33 items, more than 32"),
        ({"tls": {"client_hello": "A" * 16385}}, "field 'tls.client_hello' of 16385 chars exceeds 16384"),
        ({"h2": {"fingerprint": 1}}, "field 'h2.fingerprint' must be a string, got integer"),
        ({"label": {"malicious": "no"}}, "field 'label.malicious' must be a boolean"),
        ({"label": {f"k{i}": 1 for i in range(65)}}, "field 'label' has 65 keys, more than 64"),
        ({"label": {"x": "y" * 9000}}, "the unknown keys of 'label' exceed 8192 bytes"),
        ({"params": {f"k{i}": "v" for i in range(257)}}, "field 'params' has 257 entries, more than 256"),
        ({"params": {"a": "v" * 8193}}, "params['a'] of 8193 chars exceeds limits.max_field_chars=8192"),
        ({"client_ip": "999.1.1.1"}, "field 'client_ip' is not an IPv4 or IPv6 address"),
        ({"client_ip": 7}, "field 'client_ip' must be a string, got integer"),
        ({"path": "feed"}, "field 'path' must start with '/'"),
        ({"path": "/a?b=1"}, "field 'path' must start with '/' and carry no query string"),
        ({"headers": {"a": "b"}}, "field 'headers' must be an array"),
        ({"headers": [["a"]]}, "headers[0] must be a [name, value] pair"),
        ({"headers": [["a", 1]]}, "headers[0] must be a [name, value] pair"),
        ({"http_version": "2.0"}, "field 'http_version' must be one of"),
        ({"body_size": "12"}, "field 'body_size' must be an integer, got string"),
        ({"body_sha256": "abc"}, "field 'body_sha256' must be 64 hex"),
        ({"params": {"a": 1}}, "params['a'] must be a string"),
        ({"tls": "t13d"}, "field 'tls' must be an object, got string"),
        ({"request_id": "x" * 129}, "field 'request_id' must have 1..128 chars"),
    ],
)
def test_invalid_fields_are_named_in_the_reason(override, reason):
    with pytest.raises(InvalidRequest) as exc:
        request_from_obj(req(**override))
    assert str(exc.value).startswith(reason)
    assert exc.value.code in decode.REJECTION_CODES and exc.value.code != "internal_error"


def test_rfc3339_timestamps_are_accepted():
    r = request_from_obj(req(ts="2026-11-22T10:00:00.250Z"))
    assert r.ts == pytest.approx(1795341600.25)
    assert request_from_obj(req(ts="2026-11-22T11:00:00.250+01:00")).ts == r.ts


def test_oversized_message_and_header_list_are_rejected():
    limits = DecodeLimits(max_message_bytes=2000, max_headers=4)
    big = orjson.dumps([req(i) for i in range(30)])
    assert decode_message(big, limits).rejections[0].reason.startswith("message of")
    many = req(headers=[["h", "v"]] * 5)
    d = decode_message(orjson.dumps(many), limits)
    assert d.rejections[0].reason == "5 headers exceed limits.max_headers=4"
    assert dlq_reason_class(d.rejections[0].reason) == "oversized"
    too_many = decode_message(orjson.dumps([req(i) for i in range(3)]), DecodeLimits(max_batch_elements=2))
    assert too_many.rejections[0].reason.startswith("batch of 3 elements exceeds")


def test_dlq_record_keeps_the_whole_original_and_validates():
    raw = orjson.dumps([req(1), req(2, method=None)])
    d = decode_message(raw)
    rec = dlq_record(raw, d.rejections, topic="client-requests", partition=2, offset=41)
    assert rec["message"].encode() == raw and not rec["truncated"] and rec["index"] == 1
    assert rec["source"] == {"topic": "client-requests", "partition": 2, "offset": 41}
    assert rec["sha256"] == hashlib.sha256(raw).hexdigest() and rec["size"] == len(raw)
    jsonschema.validate(rec, json.loads((SCHEMA_DIR / "dlq.schema.json").read_text()))


def test_dlq_record_truncates_oversized_originals_with_hash_and_size():
    raw = b"[" + b" " * 5000 + b"1]"
    rejections = decode_message(raw, DecodeLimits(max_message_bytes=1000)).rejections
    rec = dlq_record(raw, rejections, topic="t", partition=0, offset=0, limits=DecodeLimits(dlq_copy_bytes=100))
    assert rec["truncated"] and len(rec["message"]) == 100
    assert rec["size"] == len(raw) and rec["sha256"] == hashlib.sha256(raw).hexdigest()


def test_dlq_record_of_invalid_utf8_is_base64():
    raw = b"\xff\xfe\x00"
    rec = dlq_record(raw, decode_message(raw).rejections, topic="t", partition=0, offset=0)
    assert rec["message_encoding"] == "base64" and rec["reason"] == "invalid UTF-8 at byte 0"


def test_decode_line_reports_reason():
    with pytest.raises(InvalidRequest, match="invalid JSON"):
        decode_line(b"{oops")


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["request_id", "ts", "client_ip", "method", "path", "headers", "params", "tls",
                                        "http_version", "body_size"]), _json, max_size=8) | _json)
def test_decoder_never_raises_and_agrees_with_the_json_schema(obj):
    """Anything the decoder accepts is valid under the published schema."""
    schema = json.loads((SCHEMA_DIR / "client-request.schema.json").read_text())
    raw = orjson.dumps(obj)
    d = decode_message(raw)
    assert len(d.requests) + len(d.rejections) >= (0 if obj == [] else 1)  # an empty batch carries nothing
    for r, idx in zip(d.requests, d.indices):
        src = obj if idx is None else obj[idx]
        jsonschema.validate(src, schema)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_exceptions(raw):
    d = decode_message(raw)
    assert d.requests or d.rejections


# --- The fast path against the reference validator -------------------------------------
#
# `decode_message`/`decode_line` first try `fastpath._fast_path(limits)` (msgspec-typed
# conversion) and fall back to `request_from_obj`, the reference, when it returns None.
# The fast path must never accept what the reference rejects, must build the very same
# ClientRequest when it accepts, and may decline a valid object only in the documented
# conservative case (a header name or value beyond `fastpath._header_split(limits)`).


_text = st.text(max_size=6)
_id = st.text(min_size=1, max_size=6)
_long_id = st.text(alphabet="r", min_size=126, max_size=128)
_header = st.tuples(_id, st.text(max_size=9)).map(list)
_object = st.dictionaries(_text, _json, max_size=3)

# Values the reference accepts (under default limits) ...
_VALID = {
    "request_id": _id | _long_id,
    "ts": st.floats(decode.TS_MIN, decode.TS_MAX, exclude_max=True) | st.integers(int(decode.TS_MIN), int(decode.TS_MAX) - 1)
          | st.sampled_from([946684800, 946684800.0, 7258118399.999, "2026-11-22T10:00:00Z", "2026-11-22T11:00:00.250+01:00",
                             "2000-01-01T00:00:00Z", "2199-12-31T23:59:59.9Z"]),
    "client_ip": st.sampled_from(["203.0.113.7", "::1", "2001:db8::1", "fe80::1%eth0"]),
    "method": st.sampled_from(["GET", "POST"]) | _id,
    "path": st.sampled_from(["/", "/api/v1/feed"]) | _text.filter(lambda s: "?" not in s).map(lambda s: "/" + s),
    "headers": st.lists(_header, max_size=6),
    "query": _text,
    "http_version": st.sampled_from(["1.0", "1.1", "2", "3"]),
    "body_sha256": st.sampled_from(["a" * 64, "0123456789ABCDEF" * 4]),
    "body_size": st.integers(0, 2**63 - 1),
    "response_status": st.integers(0, 600),
    "params": st.dictionaries(_text, _text, max_size=3),
    "tls": st.fixed_dictionaries({}, optional={
        "ja3": st.sampled_from(["0123456789abcdef" * 2, "A" * 32]), "ja3_full": _text, "ja4": _text,
        "alpn": _text | st.lists(_text, max_size=3), "version": _text, "sni": _text, "client_hello": _text,
        "unknown": _json}),
    "h2": st.fixed_dictionaries({}, optional={"fingerprint": _text, "x": _json}),
    "network": st.fixed_dictionaries({}, optional={
        "asn": st.integers(0, 2**32 - 1) | st.none(), "as_org": _text, "country": st.sampled_from(["US", "DE", "ZZ"]),
        "hosting": st.booleans(), "extra_key": _json}),
    "attestation": st.fixed_dictionaries({}, optional={
        "provider": _text, "app_recognition": _text, "device_recognition": st.lists(_text, max_size=3),
        "request_hash_ok": st.booleans(), "token_age_s": st.floats(-1e300, 1e300) | st.integers(-10**6, 10**6)}),
    "label": st.fixed_dictionaries({}, optional={"scenario": _text, "malicious": st.booleans(), "role": _text}) | _object,
    **{name: _id for name in ("account_id", "device_id", "session_id")},
    **{name: _json for name in ("extra", "unknown_field", "Request_Id")},  # unknown fields, kept in `extra`
}
_REQUIRED = ("request_id", "ts", "client_ip", "method", "path", "headers")
# ... and values it rejects, or that sit just beyond a bound
_ODD_EXAMPLES: dict[str, list] = {
    "request_id": ["", "r" * 129, 7, None],
    "ts": [-1, -0.5, 253402300799.5, 253402300800, 253402300700, 1e29, True, False, "yesterday", "2026-11-22T10:00:00", "",
           None, [1], 0, 946684799.999, 7258118400, "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
           "2200-01-01T00:00:00Z", "1999-12-31T23:59:59Z", "2026-11-22T10:00:00+" + "0" * 80],
    "client_ip": ["999.1.1.1", "1.2.3", " 1.2.3.4", "", "203.0.113.7/24", 7, None],
    "method": ["", 1, None],
    "path": ["/a?b=1", "/?", "feed", "", "?/", None, ["/"]],
    "headers": [{"a": "b"}, "ab", None, [["", "v"]], [["a"]], [["a", "b", "c"]], [["a", 1]], [[None, "v"]], [{"a": "b"}], ["ab"],
                [["a", "b"], []]],
    "query": [1, True, [], {}],
    "http_version": ["2.0", "", "HTTP/2", "1", 2, 1.1],
    "body_sha256": ["a" * 63, "a" * 65, "g" * 64, "a" * 63 + "\n", "a" * 64 + "\n", "", 1],
    "body_size": [-1, 1.0, 0.5, True, "12"],
    "response_status": [-1, 200.0, False, "200"],
    "params": [{"a": 1}, {"a": None}, {"a": ["b"]}, [], "a=b"],
    **{name: [[], "t13d", True, 1, [{}], {f"k{i}": 1 for i in range(65)}, {"k": "v" * 9000}]
       for name in ("tls", "h2", "network", "attestation", "label")},
    "network": [{"asn": []}, {"asn": True}, {"asn": -1}, {"asn": 2**32}, {"asn": 1.0}, {"as_org": []}, {"as_org": {}},
                {"country": []}, {"country": "USA"}, {"country": "u1"}, {"country": "ÜS"}, {"country": "us"}, {"country": "Us"}, {"hosting": []}, {"hosting": 0},
                {"as_org": "o" * 8193}],
    "attestation": [{"provider": []}, {"provider": {}}, {"app_recognition": []}, {"app_recognition": {"a": 1}},
                    {"device_recognition": "x"}, {"device_recognition": [1]}, {"device_recognition": ["x"] * 33},
                    {"request_hash_ok": 1}, {"token_age_s": True}, {"token_age_s": "1"}, {"token_age_s": 1e308},
                    {"token_age_s": -1e308}],
    "tls": [{"ja3": "a" * 31}, {"ja3": "g" * 32}, {"ja3": 1}, {"ja4": []}, {"alpn": 1}, {"alpn": [1]}, {"alpn": ["h2"] * 33},
            {"client_hello": "A" * 16385}, {"client_hello": "A" * 16384}, {"sni": None}, {"version": 1.3}],
    "h2": [{"fingerprint": []}, {"fingerprint": None}, {"fingerprint": "f" * 8193}],
    "label": [{"malicious": 1}, {"scenario": []}, {"scenario": "s", "malicious": False, "role": "captured"}],
    **{name: ["", 1, []] for name in ("account_id", "device_id", "session_id")},
}
_ODD = {name: st.sampled_from(values) | _json for name, values in _ODD_EXAMPLES.items()}


@st.composite
def _requests(draw: st.DrawFn) -> dict:
    """A valid request with zero to two fields made odd (or any JSON, or removed)."""
    obj = draw(st.fixed_dictionaries({n: _VALID[n] for n in _REQUIRED},
                                     optional={n: v for n, v in _VALID.items() if n not in _REQUIRED}))
    for name in draw(st.lists(st.sampled_from(sorted(_ODD)), max_size=2, unique=True)):
        obj[name] = draw(_ODD[name])
    return obj


_limits = st.one_of(
    st.just(DecodeLimits()),
    st.builds(DecodeLimits,
              max_headers=st.integers(1, 6),
              max_header_bytes=st.integers(1, 20),
              max_field_chars=st.sampled_from([1, 3, 6, 10, 11, 12, 63, 64, 127, 128]) | st.integers(1, 140)),
)


def _outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return fn(*args)
    except InvalidRequest as exc:
        return str(exc)


def _field_types(r) -> list:  # type: ignore[no-untyped-def]
    return [type(v) for v in msgspec.structs.astuple(r)] + [type(p) for p in r.headers]


def _assert_agrees(obj, limits: DecodeLimits) -> None:  # type: ignore[no-untyped-def]
    obj = orjson.loads(orjson.dumps(obj))  # what the decoder sees: orjson output
    ref = _outcome(request_from_obj, obj, limits)
    fast = fastpath._fast_path(limits)(obj)
    if fast is not None:
        assert not isinstance(ref, str), f"fast path accepted what the reference rejects: {ref}"
        assert fast == ref and _field_types(fast) == _field_types(ref)
    elif not isinstance(ref, str):  # valid, declined: only the documented conservative case
        name_max, value_max = fastpath._header_split(limits)
        assert any(len(n) > name_max or len(v) > value_max for n, v in ref.headers), "fast path declined a valid request"
    # and the decoder as a whole answers exactly as the reference, reasons included
    assert _outcome(decode_line, orjson.dumps(obj), limits) == ref
    d = decode_message(orjson.dumps([obj]), limits)
    assert (d.requests, [r.reason for r in d.rejections]) == (([], [ref]) if isinstance(ref, str) else ([ref], []))


@settings(max_examples=600, deadline=None)
@given(st.one_of(_requests(), _requests(), _requests(), st.dictionaries(st.sampled_from(sorted(_VALID)), _json, max_size=6), _json), _limits)
@pytest.mark.slow
def test_fast_path_agrees_with_the_reference_validator(obj, limits):
    _assert_agrees(obj, limits)


def _at_the_bounds(limits: DecodeLimits) -> list[tuple[str, object]]:
    """(field, value) pairs at and one past each limit, for a request otherwise valid."""
    F, HB, NH = limits.max_field_chars, limits.max_header_bytes, limits.max_headers
    name_max, _ = fastpath._header_split(limits)
    out: list[tuple[str, object]] = []
    for n in (F, F + 1):
        out += [("request_id", "r" * min(n, 129)), ("method", "M" * n), ("path", "/" + "p" * (n - 1)), ("query", "q" * n),
                ("account_id", "a" * n), ("device_id", "d" * n), ("session_id", "s" * n), ("body_sha256", "a" * 64)]
        if n >= 9:
            out.append(("client_ip", "fe80::1%" + "e" * (n - 8)))  # an IPv6 address with a zone can be any length
    out += [("request_id", "r" * 128), ("request_id", "r" * 129), ("headers", [["n", "v"]] * NH), ("headers", [["n", "v"]] * (NH + 1))]
    for name_len in {1, name_max - 1, name_max, name_max + 1, HB - 1, HB, HB + 1}:
        for total in (HB, HB + 1):
            if 0 < name_len <= total:
                out.append(("headers", [["n" * name_len, "v" * (total - name_len)]]))
    out += [("headers", [["", "v"]]), ("ts", 253402300799), ("ts", 253402300800), ("ts", -0.0), ("ts", -1e-9),
            ("ts", decode.TS_MIN), ("ts", decode.TS_MIN - 1e-6), ("ts", decode.TS_MAX), ("ts", decode.TS_MAX - 1e-6),
            ("params", {f"k{i}": "v" for i in range(256)}), ("params", {f"k{i}": "v" for i in range(257)}),
            ("params", {"k" * 256: "v"}), ("params", {"k" * 257: "v"}), ("params", {"k": "v" * F}), ("params", {"k": "v" * (F + 1)})]
    for name in ("tls", "h2", "network", "attestation", "label"):
        out += [(name, {f"x{i}": 1 for i in range(64)}), (name, {f"x{i}": 1 for i in range(65)}),
                (name, {"x": "y" * 8185}), (name, {"x": "y" * 8186})]
    out += [("tls", {"ja4": "j" * n}) for n in (F, F + 1)] + [("network", {"as_org": "o" * n}) for n in (F, F + 1)]
    out += [("attestation", {"device_recognition": ["d" * n]}) for n in (F, F + 1)]
    return out


@pytest.mark.parametrize("limits", [
    DecodeLimits(),
    DecodeLimits(max_field_chars=10, max_headers=2, max_header_bytes=12),
    DecodeLimits(max_field_chars=64, max_headers=1, max_header_bytes=1),
    DecodeLimits(max_field_chars=63, max_headers=3, max_header_bytes=600),
])
def test_fast_path_agrees_at_the_limits(limits):
    base = {"request_id": "r1", "ts": 1763805600, "client_ip": "::1", "method": "GET", "path": "/a", "headers": []}
    for name, value in _at_the_bounds(limits) + [(n, v) for n, vs in _ODD_EXAMPLES.items() for v in vs]:
        _assert_agrees({**base, name: value}, limits)


def test_fast_path_takes_rfc3339_timestamps_and_unknown_fields():
    fast = fastpath._fast_path(DecodeLimits())
    for obj in (req(ts="2026-11-22T11:00:00.250+01:00"), req(unknown_field=[1], extra={"a": 1}), req(query="a=1", params={"k": "v"})):
        r = fast(obj)
        assert r is not None and r == request_from_obj(obj)
    assert fast(req(unknown_field=1)).extra == {"unknown_field": 1}


def test_header_beyond_the_fast_path_split_is_still_accepted():
    limits = DecodeLimits(max_header_bytes=600)
    name_max, _ = fastpath._header_split(limits)
    obj = req(headers=[["x" * (name_max + 1), "v"]])
    assert fastpath._fast_path(limits)(obj) is None  # declined, so the reference decides
    d = decode_message(orjson.dumps(obj), limits)
    assert not d.rejections and d.requests[0].headers == (("x" * (name_max + 1), "v"),)


def test_request_from_obj_stays_strict_about_python_values():
    """The reference is not bypassed for non-JSON values (msgspec would take tuples)."""
    with pytest.raises(InvalidRequest, match="field 'headers' must be an array"):
        request_from_obj(req(headers=(("a", "b"),)))
