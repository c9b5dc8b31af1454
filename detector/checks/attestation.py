"""Attestation checks: the platform's verdict on the app and the device (Play
Integrity on Android) that the edge or back end attached. Emulators fail device
integrity and at best meet virtual integrity; repackaged apps are not recognised;
a token bound to another request, or an old one, is being replayed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

from detector.checks.base import CheckScope, RequestContext
from detector.model import ClientRequest, Signal

MISSING = "attestation.missing"
UNKNOWN_PROVIDER = "attestation.unknown_provider"
APP_UNRECOGNIZED = "attestation.app_unrecognized"
DEVICE_INTEGRITY_FAILED = "attestation.device_integrity_failed"
VIRTUAL_ONLY = "attestation.virtual_only"
REQUEST_HASH_MISMATCH = "attestation.request_hash_mismatch"
STALE_TOKEN = "attestation.stale_token"

VIRTUAL = "MEETS_VIRTUAL_INTEGRITY"


class AttestationCheck:
    name: ClassVar[str] = "attestation"
    scope: ClassVar[CheckScope] = "request"
    codes: ClassVar[Mapping[str, str]] = {
        MISSING: "no attestation although the profile requires it",
        UNKNOWN_PROVIDER: "attestation from a provider the profile does not use",
        APP_UNRECOGNIZED: "the attestation does not recognise the app (repackaged, sideloaded or unknown build)",
        DEVICE_INTEGRITY_FAILED: "the device does not meet the required integrity",
        VIRTUAL_ONLY: "only virtual integrity (an emulator), not device integrity",
        REQUEST_HASH_MISMATCH: "the attestation token is bound to another request",
        STALE_TOKEN: "the attestation token is older than the profile allows",
    }

    def check(self, request: ClientRequest, ctx: RequestContext) -> Iterable[Signal]:
        profile = ctx.profile
        policy = profile.attestation
        if policy is None:
            return
        a = request.attestation
        if not a:
            if policy.required:
                yield ctx.signal(MISSING, f"no attestation although {profile.name} requires it on every request")
            return
        # decode admits only strings here; anything else (a request built by hand) is
        # judged as an unknown value, never looked up in a set (it may be unhashable)
        provider = a.get("provider")
        if policy.providers and (not isinstance(provider, str) or provider not in policy.providers):
            yield ctx.signal(UNKNOWN_PROVIDER, f"attestation provider {str(provider)[:30]!r} is not one of "
                                               f"{', '.join(sorted(policy.providers))}")
            return
        app = a.get("app_recognition")
        if (policy.app_recognition and app is not None
                and (not isinstance(app, str) or app not in policy.app_recognition)):
            yield ctx.signal(APP_UNRECOGNIZED, f"app recognition verdict is {str(app)[:40]}, not "
                                               f"{' or '.join(sorted(policy.app_recognition))}")
        device = a.get("device_recognition")
        labels = [str(x)[:64] for x in device[:32]] if isinstance(device, list) else []
        if policy.device_recognition and isinstance(device, list) and policy.device_recognition not in labels:
            if VIRTUAL in labels:
                yield ctx.signal(VIRTUAL_ONLY, f"device recognition is {', '.join(labels)[:80]}: a virtual device, "
                                               f"without {policy.device_recognition}")
            else:
                shown = ", ".join(labels)[:80] or "empty"
                yield ctx.signal(DEVICE_INTEGRITY_FAILED, f"device recognition is {shown}, without "
                                                          f"{policy.device_recognition}")
        if a.get("request_hash_ok") is False:
            yield ctx.signal(REQUEST_HASH_MISMATCH, "the attestation token's request hash does not match this request")
        age = a.get("token_age_s")
        if (policy.max_token_age_s is not None and isinstance(age, (int, float)) and not isinstance(age, bool)
                and age > policy.max_token_age_s):
            yield ctx.signal(STALE_TOKEN,
                             f"attestation token is {age:.0f} s old (allowed {policy.max_token_age_s:.0f} s)")
