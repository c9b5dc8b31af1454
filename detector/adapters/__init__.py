"""Input adapters: what an edge writes, as the native ClientRequest contract
(docs/contracts.md). The format is chosen per input topic (setting `input_format`)
and by `detector score --format`; `native` is the contract itself. Pure: bytes in,
requests and rejections out, nothing raised for bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from detector.adapters import cloudflare, cloudfront, envoy, fastly, haproxy, nginx_njs
from detector.decode import Decoded, DecodeLimits, decode_line, decode_message
from detector.model import ClientRequest

InputFormat = Literal["native", "haproxy", "haproxy-3.1", "envoy", "cloudflare", "cloudfront", "fastly", "nginx-njs"]
INPUT_FORMATS: tuple[InputFormat, ...] = ("native", "haproxy", "haproxy-3.1", "envoy", "cloudflare", "cloudfront",
                                          "fastly", "nginx-njs")

MessageDecoder = Callable[[bytes | None, DecodeLimits], Decoded]
LineDecoder = Callable[[bytes | str, DecodeLimits], ClientRequest]

_MESSAGE: dict[str, MessageDecoder] = {"native": decode_message, "haproxy": haproxy.decode_message,
                                       "haproxy-3.1": haproxy.decode_message_31,
                                       "envoy": envoy.decode_message, "cloudflare": cloudflare.decode_message}
_MESSAGE.update(cloudfront=cloudfront.decode_message, fastly=fastly.decode_message)
_MESSAGE.update({"nginx-njs": nginx_njs.decode_message})
_LINE: dict[str, LineDecoder] = {"native": decode_line, "haproxy": haproxy.decode_line,
                                 "haproxy-3.1": haproxy.decode_line_31,
                                 "envoy": envoy.decode_line, "cloudflare": cloudflare.decode_line}
_LINE.update(cloudfront=cloudfront.decode_line, fastly=fastly.decode_line)
_LINE.update({"nginx-njs": nginx_njs.decode_line})
# the edge profile an adapter marks its records with (docs/edges.md): set by the
# adapter from the format, never read from the line, so the input topic admits it
# (one edge per format: HAProxy 2.6 and 3.1 are two formats, a line cannot pick)
_EDGE: dict[str, str | None] = {"native": None, "haproxy": haproxy.EDGE, "haproxy-3.1": haproxy.EDGE_31,
                                "envoy": envoy.EDGE, "cloudflare": cloudflare.EDGE}
_EDGE.update(cloudfront=cloudfront.EDGE, fastly=fastly.EDGE)
_EDGE.update({"nginx-njs": nginx_njs.EDGE})


def format_edge(fmt: str) -> str | None:
    """The edge profile the records of input format `fmt` come from (None: native,
    a record's own `edge` field is judged by the topic's allowed_edges)."""
    return _EDGE.get(fmt)


def message_decoder(fmt: str) -> MessageDecoder:
    """The decoder of a Kafka message value in `fmt` (one of INPUT_FORMATS)."""
    try:
        return _MESSAGE[fmt]
    except KeyError:
        raise ValueError(f"unknown input format {fmt!r} (one of {', '.join(INPUT_FORMATS)})") from None


def line_decoder(fmt: str) -> LineDecoder:
    """The decoder of one line of `detector score`'s input in `fmt`; it raises
    InvalidRequest (reason, code) for a line it rejects."""
    try:
        return _LINE[fmt]
    except KeyError:
        raise ValueError(f"unknown input format {fmt!r} (one of {', '.join(INPUT_FORMATS)})") from None


__all__ = ["INPUT_FORMATS", "InputFormat", "LineDecoder", "MessageDecoder", "format_edge", "line_decoder",
           "message_decoder"]
