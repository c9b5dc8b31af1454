"""What every input adapter shares (detector/adapters/_lines.py): one message-into-lines
loop, one JSON-line reader, one fast-path-else-validator. The same kind of bad line
gets the same code through every adapter; no adapter keeps its own copy."""

from __future__ import annotations

import inspect
from pathlib import Path

import orjson
import pytest

from detector.adapters import INPUT_FORMATS, message_decoder
from detector.decode import DecodeLimits

ROOT = Path(__file__).resolve().parents[2]
EDGES = ROOT / "tests" / "fixtures" / "edges"
FIXTURES = {"haproxy": "haproxy-2.6.log", "envoy": "envoy-1.35.jsonl", "cloudflare": "cloudflare-logpush.ndjson",
            "cloudfront": "cloudfront-realtime.log", "fastly": "fastly-compute.jsonl", "nginx-njs": "nginx-njs.log"}
JSON_FORMATS = ("haproxy", "envoy", "cloudflare", "fastly", "nginx-njs")


def first_line(fmt: str) -> bytes:
    return next(ln for ln in (EDGES / FIXTURES[fmt]).read_bytes().split(b"\n") if ln.strip()).strip()


@pytest.mark.parametrize("fmt", sorted(FIXTURES))
def test_every_adapter_judges_a_message_of_lines_alike(fmt):
    decode = message_decoder(fmt)
    good = first_line(fmt)
    out = decode(b"\r\n".join([good, good[:len(good) // 2], good]) + b"\r\n", DecodeLimits())
    assert out.form == "ndjson" and out.indices == [0, 2]
    assert [(r.index, r.code) for r in out.rejections] == [(1, "truncated")]
    assert decode(None, DecodeLimits()).rejections[0].code == "empty_message"
    assert decode(b" \n \n", DecodeLimits()).rejections[0].code == "empty_message"
    few = DecodeLimits(max_batch_elements=2)
    assert [r.code for r in decode(b"\n".join([good] * 3), few).rejections] == ["too_many"]


@pytest.mark.parametrize("fmt", JSON_FORMATS)
def test_every_json_adapter_tells_a_cut_from_bad_bytes_alike(fmt):
    decode = message_decoder(fmt)
    good = first_line(fmt)
    at = good.index(b"{")
    obj = orjson.loads(good[at:])
    text = good[:at] + orjson.dumps({**obj, "zz": "/é€"})  # an unknown key: kept and ignored, or dropped
    cut = text[:text.index("€".encode()) + 1]
    codes = {name: [r.code for r in decode(v, DecodeLimits()).rejections]
             for name, v in (("cut in a character", cut), ("cut", text[:-5]), ("bad byte", text + b"\xe2"),
                             ("not json", good[:at] + b"{]"))}
    assert codes == {"cut in a character": ["truncated"], "cut": ["truncated"], "bad byte": ["invalid_utf8"],
                     "not json": ["invalid_json"]}


def test_no_adapter_keeps_its_own_copy_of_the_shared_parts():
    from detector.adapters import cloudflare, cloudfront, envoy, fastly, haproxy, nginx_njs

    assert set(FIXTURES) == set(INPUT_FORMATS) - {"native", "haproxy-3.1"}
    for module in (cloudflare, cloudfront, envoy, fastly, haproxy, nginx_njs):
        source = inspect.getsource(module)
        for own in ("max_batch_elements", "orjson.loads", "_fast_path", "request_from_obj"):
            assert own not in source, (module.__name__, own)
    assert not (ROOT / "detector" / "adapters" / "_jsonlog.py").exists()
    assert not (ROOT / "detector" / "adapters" / "_textlines.py").exists()
