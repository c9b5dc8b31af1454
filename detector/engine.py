"""The detection engine as configured: profiles, scoring, decode limits and alert
policy read from `config/detector.yaml` (detection sections), validated at load.

Both the offline `detector score` and the stream worker build one of these, so the
two apply exactly the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from detector.alerts import AlertSettings
from detector.behaviour.engine import behaviour_codes
from detector.behaviour.records import BehaviourSettings
from detector.config import ConfigError, YamlDocument, require
from detector.config.schema import (
    ALERT_ENTITY_TYPES,
    AlertsSection,
    EventTimeSection,
    InputSection,
    LimitsSection,
    Override,
    ScoringSection,
    Section,
    SettingsFile,
    VerdictsSection,
    apply_overrides,
    check,
)
from detector.decode import DecodeLimits
from detector.devices import CatalogueError, DeviceCatalogue
from detector.edges import FULL, FULL_EDGE, EdgePolicy, EdgeProfile, load_edges
from detector.eventtime import EventTimeGuard
from detector.fingerprints.known import KnownStacks
from detector.pipeline import Pipeline
from detector.profile import ClientProfile, SecretResolver, load_profiles, no_secrets
from detector.redact import Redactor
from detector.scoring import ScoringPolicy

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "detector.yaml"


@dataclass(frozen=True)
class DetectionConfig:
    path: Path
    profiles: Mapping[str, ClientProfile]
    default_profile: str
    scoring: ScoringPolicy
    limits: DecodeLimits
    alerts: AlertSettings
    catalogue: DeviceCatalogue | None = None
    known: KnownStacks | None = None
    releases: Mapping[int, tuple[str, ...]] | None = None
    behaviour: BehaviourSettings = BehaviourSettings()
    redactor: Redactor = Redactor()  # config `redact`: credential headers and params
    event_time: EventTimeGuard = EventTimeGuard()  # config `event_time`: tolerance for events dated ahead
    # config `verdicts.emit`: "all" writes every request's verdict, "flagged" only the
    # suspicious and malicious ones (scoring, behaviour and metrics see every request)
    verdicts_emit: Literal["all", "flagged"] = "all"
    # config/edges/ and config `input` (docs/edges.md): the edge profiles, the input
    # topic's edge and the edges a record's own `edge` field may name
    edges: Mapping[str, EdgeProfile] = field(default_factory=lambda: {FULL: FULL_EDGE})
    input_edge: str = FULL
    allowed_edges: frozenset[str] = frozenset()

    @classmethod
    def load(cls, path: Path = DEFAULT_CONFIG, overrides: Sequence[Override] = (),
             secrets: SecretResolver = no_secrets) -> DetectionConfig:
        """Read and check the settings file at `path` (every section against
        `detector.config.schema.SettingsFile`, then each file it names). `overrides`
        are values set from outside the file (the shell's DETECTOR_* variables);
        `secrets` resolves a profile's `{env: NAME}` signing keys (the core reads no
        environment)."""
        doc = YamlDocument(path)
        if not isinstance(doc.data, dict):
            raise doc.error([], "the settings file must be a mapping")
        data = apply_overrides(doc.data, overrides)
        check(doc, SettingsFile, data, overrides=overrides, keys_only=True)
        pdir = Path(require(doc, data, ["profiles_dir"], str))
        pdir = pdir if pdir.is_absolute() else path.parent / pdir
        profiles = load_profiles(pdir, secrets)
        default = require(doc, data, ["default_profile"], str, optional=True, default=next(iter(profiles)))
        if default not in profiles:
            raise doc.error(["default_profile"],
                            f"no profile named {default!r} in {pdir} (have: {', '.join(profiles)})")

        def section(model: type[Section], name: str, *, optional: bool = True) -> Any:
            """The checked model of section `name` (None when an optional one is absent)."""
            raw = require(doc, data, [name], dict, optional=optional)
            return None if raw is None else check(doc, model, raw, at=[name], overrides=overrides)

        sc: ScoringSection = section(ScoringSection, "scoring", optional=False)
        try:
            scoring = ScoringPolicy(weights=dict(sc.weights), suspicious=sc.suspicious, malicious=sc.malicious)
        except (TypeError, ValueError) as exc:
            raise doc.error(["scoring"], str(exc)) from None

        lim: LimitsSection | None = section(LimitsSection, "limits")
        try:
            limits = DecodeLimits(**(lim.model_dump(exclude_none=True) if lim else {}))
        except ValueError as exc:
            raise doc.error(["limits"], str(exc)) from None

        al: AlertsSection | None = section(AlertsSection, "alerts")
        aliases = {"entity_types", "allowed_lateness_s", "max_open_windows"}  # _check_alias_settings
        kw = al.model_dump(exclude_none=True, exclude=aliases) if al else {}
        if "escalate_at" in kw:
            kw["escalate_at"] = tuple(kw["escalate_at"])
        try:
            alerts = AlertSettings(**kw)
        except ValueError as exc:
            raise doc.error(["alerts"], str(exc)) from None

        catalogue, releases = None, None
        ddir = require(doc, data, ["devices_dir"], str, optional=True)
        if ddir is not None:
            dpath = Path(ddir) if Path(ddir).is_absolute() else path.parent / ddir
            try:
                catalogue = DeviceCatalogue.load(dpath)
            except CatalogueError as exc:
                raise ConfigError(exc.file, exc.where, exc.problem, exc.line) from None
            rdoc = YamlDocument(dpath / "android_releases.yaml")
            if not isinstance(rdoc.data, dict):
                raise rdoc.error([], "must map API levels to release prefixes")
            releases = {int(k): tuple(str(x) for x in v) for k, v in rdoc.data.items()}
        known = None
        kfile = require(doc, data, ["known_stacks"], str, optional=True)
        if kfile is not None:
            known = KnownStacks.load(Path(kfile) if Path(kfile).is_absolute() else path.parent / kfile)

        centroids: dict[str, tuple[float, float]] = {}
        gfile = require(doc, data, ["country_centroids"], str, optional=True)
        if gfile is not None:
            gdoc = YamlDocument(Path(gfile) if Path(gfile).is_absolute() else path.parent / gfile)
            if not isinstance(gdoc.data, dict):
                raise gdoc.error([], "must map ISO country codes to [latitude, longitude]")
            for code, ll in gdoc.data.items():
                if not (isinstance(ll, list) and len(ll) == 2 and all(isinstance(x, (int, float)) for x in ll)):
                    raise gdoc.error([code], "must be [latitude, longitude]")
                centroids[str(code)] = (float(ll[0]), float(ll[1]))
        beh = require(doc, data, ["behaviour"], dict, optional=True, default={})
        try:
            behaviour = BehaviourSettings.from_dict(beh, centroids)
        except (KeyError, TypeError, ValueError) as exc:
            raise doc.error(["behaviour"], str(exc)) from None
        missing = scoring.missing(behaviour_codes())
        if missing:
            raise doc.error(["scoring", "weights"], f"no weight configured for signal codes: {', '.join(missing)}")

        red = require(doc, data, ["redact"], dict, optional=True, default={})
        try:
            redactor = Redactor.from_config(red)
        except ValueError as exc:
            raise doc.error(["redact"], str(exc)) from None

        et: EventTimeSection | None = section(EventTimeSection, "event_time")
        try:
            event_time = EventTimeGuard() if et is None or et.max_future_s is None else EventTimeGuard(et.max_future_s)
        except ValueError as exc:
            raise doc.error(["event_time", "max_future_s"], str(exc)) from None

        ve: VerdictsSection | None = section(VerdictsSection, "verdicts")
        verdicts_emit: Literal["all", "flagged"] = "all" if ve is None or ve.emit is None else ve.emit

        edir = require(doc, data, ["edges_dir"], str, optional=True)
        edges = load_edges(None if edir is None else (Path(edir) if Path(edir).is_absolute() else path.parent / edir))
        inp: InputSection | None = section(InputSection, "input")
        input_edge = (inp.edge if inp is not None else None) or FULL
        allowed = tuple(inp.allowed_edges or ()) if inp is not None else ()
        named: list[tuple[list[str | int], str]] = [(["input", "edge"], input_edge)]
        named += [(["input", "allowed_edges", i], n) for i, n in enumerate(allowed)]
        for key, name in named:
            if name not in edges:
                reason = f"no edge profile named {name!r} (have: {', '.join(sorted(edges))})"
                origin = next((o.origin for o in overrides if tuple(o.key) == tuple(key[:len(o.key)])), None)
                if origin is not None:  # set by a variable, not the file
                    raise ConfigError(path, ".".join(str(k) for k in key), f"{reason} (from {origin})")
                raise doc.error(key, reason)

        checked: SettingsFile = check(doc, SettingsFile, data, overrides=overrides)  # what is left: types
        _check_alias_settings(doc, checked, behaviour)
        # records of a late edge (CDN log paths) are still applied within its lateness
        lateness = max([edges[n].allowed_lateness_s for n in (input_edge, *allowed)])
        if lateness > behaviour.allowed_lateness_s:
            behaviour = replace(behaviour, allowed_lateness_s=lateness)
        cfg = cls(path, profiles, default, scoring, limits, alerts, catalogue, known, releases, behaviour,
                  redactor=redactor, event_time=event_time, verdicts_emit=verdicts_emit, edges=edges,
                  input_edge=input_edge, allowed_edges=frozenset(allowed))
        try:
            cfg.pipeline()
        except ValueError as exc:
            raise doc.error(["scoring", "weights"], str(exc)) from None
        return cfg

    def edge_policy(self) -> EdgePolicy:
        """The input topic's edge policy (config `input`)."""
        return EdgePolicy(self.edges, self.input_edge, self.allowed_edges)

    def pipeline(self, disabled_families: Iterable[str] = (), edges: EdgePolicy | None = None) -> Pipeline:
        """`edges`: the edge policy (default: the input topic's, `edge_policy()`)."""
        return Pipeline(self.profiles, self.scoring, default_profile=self.default_profile,
                        disabled_families=disabled_families, catalogue=self.catalogue, known=self.known,
                        releases=self.releases, redactor=self.redactor,
                        edges=edges if edges is not None else self.edge_policy())


def _check_alias_settings(doc: YamlDocument, checked: SettingsFile, behaviour: BehaviourSettings) -> None:
    """`alerts.entity_types`, `alerts.allowed_lateness_s` and `alerts.max_open_windows`
    are kept as keys, but the alerts come from the behaviour engine, which raises them
    per device and per account, drops records later than `behaviour.allowed_lateness_s`
    and keeps alert windows in the state of at most `behaviour.max_entities` entities:
    the keys may only say that."""
    alerts = checked.alerts
    if alerts is None:
        return
    if alerts.entity_types is not None and sorted(set(alerts.entity_types)) != sorted(ALERT_ENTITY_TYPES):
        raise doc.error(["alerts", "entity_types"],
                        f"must be [{', '.join(ALERT_ENTITY_TYPES)}] (alerts are raised per device and per account; "
                        f"got {alerts.entity_types!r})")
    if alerts.allowed_lateness_s is not None and alerts.allowed_lateness_s != behaviour.allowed_lateness_s:
        raise doc.error(["alerts", "allowed_lateness_s"],
                        f"is behaviour.allowed_lateness_s ({behaviour.allowed_lateness_s:g}), got "
                        f"{alerts.allowed_lateness_s:g}: set behaviour.allowed_lateness_s instead")
    if alerts.max_open_windows is not None and alerts.max_open_windows != behaviour.max_entities:
        raise doc.error(["alerts", "max_open_windows"],
                        f"is behaviour.max_entities ({behaviour.max_entities}: alert windows live in the entities' "
                        f"state), got {alerts.max_open_windows}: set behaviour.max_entities instead")


__all__ = ["DetectionConfig", "ConfigError", "DEFAULT_CONFIG"]
