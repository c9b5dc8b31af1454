"""Edge profiles (config/edges/*.yaml, docs/edges.md): what the proxy or CDN in front
of the API keeps of a request (header order, case and names, the TLS ClientHello or
which fingerprints of it, the HTTP/2 fingerprint, the body's hash, enrichment) and how
late its records arrive. A check that needs a fact the edge lost does not fire
(`EdgeProfile.gated`), and the verdict names the families not assessed.

The edge is a property of the input topic (config `input.edge`); a message's own
`edge` field is honoured only when `input.allowed_edges` lists it (`EdgePolicy`), so
one message cannot switch checks off."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from detector.config import ConfigError, YamlDocument
from detector.config.schema import EdgeFile, check
from detector.model import ClientRequest
from detector.profile import ClientProfile

FULL = "full"  # the edge the contract assumes: every fact kept (today's behaviour)
# what an enrichment step adds on the way to Kafka (no proxy measures these itself):
# network facts by the client address, and the app's integrity verdict (the token
# verified by the back end or an edge function: the contract's `attestation`)
Enrichment = Literal["asn", "hosting", "country", "attestation"]
ENRICHMENT: tuple[Enrichment, ...] = ("asn", "hosting", "country", "attestation")

# The codes each lost fact silences (docs/edges.md "What each lost fact costs").
ORDER_CODES = frozenset({"headers.order_mismatch"})
CASE_CODES = frozenset({"headers.name_case"})
NAMES_CODES = frozenset({"headers.missing_required"})  # absence cannot be judged on a partial set
TLS_CODES = frozenset({"tls.missing", "tls.fingerprint_mismatch", "tls.known_automation_stack", "tls.alpn_mismatch",
                       "tls.client_hello_invalid"})
H2_CODES = frozenset({"transport.h2_fingerprint_mismatch", "transport.known_browser_h2"})
BODY_CODES = frozenset({"signature.invalid"})  # the canonical string needs the body's SHA-256
# the profile's body rules judge the body's text (the contract's `body`), which only an
# edge that keeps bodies passes on (fact `body_text`)
BODY_TEXT_CODES = frozenset({"body.missing_required", "body.forbidden", "body.value_invalid", "body.denylisted_value",
                             "body.unexpected_encoding", "body.content_type_mismatch", "body.unparseable",
                             "body.signature_stale", "body.signature_invalid"})
HOSTING_CODES = frozenset({"network.hosting"})
# behaviour that needs the hosting fact: ASN fan-outs count hosting networks only, and
# impossible travel leaves VPN exits (hosting) out, so without it a VPN user travels
HOSTING_STATE_CODES = frozenset({"behaviour.impossible_travel", "behaviour.hosting_asn_account_fanout",
                                 "behaviour.hosting_asn_device_fanout"})
COUNTRY_CODES = frozenset({"network.locale_country_mismatch"})
# a record without the integrity verdict cannot be judged as missing one; the other
# attestation codes judge a verdict that is there, so they never fire without it
ATTESTATION_CODES = frozenset({"attestation.missing"})


@dataclass(frozen=True, slots=True)
class EdgeProfile:
    """What one edge keeps. `gated(profile)` is the set of signal codes that cannot be
    judged on its records for that client profile."""

    name: str
    description: str = ""
    versions: str = ""
    header_order: bool = True
    header_case: bool = True
    header_names: Literal["all", "some"] = "all"
    client_hello: bool = True
    ja3: bool = True
    ja4: Literal["full", "partial", "none"] = "full"
    h2_fingerprint: bool = True
    body: bool = True
    body_text: bool = True  # the body itself (its first characters), for the body rules
    enrichment: frozenset[str] = frozenset(ENRICHMENT)
    allowed_lateness_s: float = 30.0
    notes: str = ""
    source: str = ""
    _gated: dict[str, frozenset[str]] = field(default_factory=dict, compare=False, repr=False)
    _families: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def has_tls(self) -> bool:
        return self.client_hello or self.ja4 != "none"

    def lost_codes(self) -> frozenset[str]:
        """Every code a lost fact of this edge silences, whatever the client profile."""
        out: set[str] = set()
        if not self.header_order:
            out |= ORDER_CODES
        if not self.header_case:
            out |= CASE_CODES
        if self.header_names != "all":
            out |= NAMES_CODES
        if not self.has_tls:
            out |= TLS_CODES
        if not self.h2_fingerprint:
            out |= H2_CODES
        if not self.body:
            out |= BODY_CODES
        if not self.body_text:
            out |= BODY_TEXT_CODES
        if "hosting" not in self.enrichment:
            out |= HOSTING_CODES | HOSTING_STATE_CODES
        if "country" not in self.enrichment:
            out |= COUNTRY_CODES
        if "attestation" not in self.enrichment:
            out |= ATTESTATION_CODES
        return frozenset(out)

    def gated(self, profile: ClientProfile) -> frozenset[str]:
        """The codes not judged on this edge's records for `profile`: those of a lost
        fact the profile would otherwise judge (a profile without TLS rules loses
        nothing when the edge has no TLS facts). Cached per profile."""
        found = self._gated.get(profile.name)
        if found is None:
            lost = self.lost_codes()
            judged: set[str] = set(HOSTING_STATE_CODES)  # behaviour runs for every profile
            if profile.headers is not None:
                judged |= ORDER_CODES | NAMES_CODES
                if profile.headers.name_case == "lower":
                    judged |= CASE_CODES
            if profile.tls is not None:
                judged |= TLS_CODES
            if profile.transport is not None and profile.transport.h2_fingerprints:
                judged |= H2_CODES
            if profile.signing is not None and "body_sha256" in profile.signing.canonical:
                judged |= BODY_CODES
            if profile.body is not None:
                judged |= BODY_TEXT_CODES
            if profile.network.hosting:
                judged |= HOSTING_CODES
            if profile.network.locale_country:
                judged |= COUNTRY_CODES
            if profile.attestation is not None and profile.attestation.required:
                judged |= ATTESTATION_CODES
            found = lost & frozenset(judged)
            self._gated[profile.name] = found
        return found

    def not_assessed(self, profile: ClientProfile) -> tuple[str, ...]:
        """The signal families (sorted) with a code this edge's losses silence for
        `profile`: the verdict's `not_assessed`."""
        found = self._families.get(profile.name)
        if found is None:
            found = tuple(sorted({c.split(".", 1)[0] for c in self.gated(profile)}))
            self._families[profile.name] = found
        return found


FULL_EDGE = EdgeProfile(FULL, "every fact the contract describes (the default)", "any")


def edge_from_file(doc: YamlDocument) -> EdgeProfile:
    if not isinstance(doc.data, dict):
        raise doc.error([], "an edge profile must be a mapping")
    f: EdgeFile = check(doc, EdgeFile, doc.data)
    if f.name != doc.path.stem:
        raise doc.error(["name"], f"must be the file's name without .yaml ({doc.path.stem!r}), got {f.name!r}")
    if len(set(f.enrichment)) != len(f.enrichment):
        raise doc.error(["enrichment"], "lists a fact twice")
    return EdgeProfile(
        name=f.name, description=f.description, versions=f.versions, header_order=f.headers.order,
        header_case=f.headers.case, header_names=f.headers.names, client_hello=f.tls.client_hello, ja3=f.tls.ja3,
        ja4=f.tls.ja4, h2_fingerprint=f.h2_fingerprint, body=f.body, body_text=f.body_text,
        enrichment=frozenset(f.enrichment),
        allowed_lateness_s=float(f.allowed_lateness_s), notes=f.notes or "", source=str(doc.path))


def load_edges(directory: Path | None) -> dict[str, EdgeProfile]:
    """The edge profiles of `directory` (one `<name>.yaml` each) by name; `full` is
    always known (the file may describe it, with the same facts)."""
    edges: dict[str, EdgeProfile] = {FULL: FULL_EDGE}
    if directory is None:
        return edges
    if not directory.is_dir():
        raise ConfigError(directory, "edges_dir", "is not a directory")
    for path in sorted(directory.glob("*.yaml")):
        doc = YamlDocument(path)
        edge = edge_from_file(doc)
        if edge.name == FULL and edge.lost_codes():
            raise doc.error(["name"], "the full edge keeps every fact (it is the contract's default)")
        edges[edge.name] = edge
    return edges


@dataclass(frozen=True, slots=True)
class EdgeRefusal:
    """Why a message's `edge` field is refused: `code` is a rejection code."""

    code: Literal["unknown_edge", "edge_not_allowed"]
    reason: str


@dataclass(frozen=True, slots=True)
class EdgePolicy:
    """The input topic's edge and the edges a message may name instead (config `input`).
    `resolve` never switches to an edge the topic does not allow."""

    edges: Mapping[str, EdgeProfile]
    default: str = FULL
    allowed: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = sorted({self.default, *self.allowed} - set(self.edges))
        if unknown:
            raise ValueError(f"no edge profile named {', '.join(unknown)} (have: {', '.join(sorted(self.edges))})")

    @classmethod
    def offline(cls, edges: Mapping[str, EdgeProfile], default: str = FULL) -> EdgePolicy:
        """`detector score`: a record may name any shipped edge."""
        return cls(edges, default, frozenset(edges))

    def with_default(self, name: str) -> EdgePolicy:
        return EdgePolicy(self.edges, name, self.allowed)

    def admitting(self, name: str | None) -> EdgePolicy:
        """This policy, also honouring records marked `name` (an input adapter's edge:
        the adapter sets it, the line cannot)."""
        if name is None or name in self.allowed:
            return self
        return EdgePolicy(self.edges, self.default, self.allowed | {name})

    @property
    def topic_edge(self) -> EdgeProfile:
        return self.edges[self.default]

    def refusal(self, request: ClientRequest) -> EdgeRefusal | None:
        """None when the request's `edge` field (if any) may be honoured."""
        name = request.edge
        if name is None or name == self.default:
            return None
        shown = name[:64]
        if name not in self.edges:
            return EdgeRefusal("unknown_edge", f"field 'edge' names no edge profile: {shown!r} "
                                               f"(known: {', '.join(sorted(self.edges))})")
        if name not in self.allowed:
            allowed = ", ".join(sorted(self.allowed)) or "none"
            return EdgeRefusal("edge_not_allowed", f"field 'edge' {shown!r} is not among the input topic's "
                                                   f"allowed_edges ({allowed}); its edge is {self.default!r}")
        return None

    def resolve(self, request: ClientRequest) -> EdgeProfile:
        """The edge whose facts judge `request`: its own when allowed, else the topic's."""
        name = request.edge
        if name is not None and name in self.allowed:
            edge = self.edges.get(name)
            if edge is not None:
                return edge
        return self.edges[self.default]

    def names(self) -> Iterable[str]:
        return sorted(self.edges)


__all__ = ["EdgePolicy", "EdgeProfile", "EdgeRefusal", "FULL", "FULL_EDGE", "load_edges"]
