"""Combining signals into a score and a verdict level.

The rule is noisy-OR: each signal is read as an independent piece of evidence that
the client is not the official app with probability `weight`, so
`score = 1 - prod(1 - w_i)`. It stays in [0, 1], never decreases when a signal is
added (monotone), one strong signal is enough on its own, and several weak ones add
up without any of them dominating. A code counts once per verdict, at its highest
weight: two instances of one finding (on the device and on the account, say) are one
piece of evidence, not two. Weights and thresholds come from config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from detector.model import Signal, VerdictLevel


def code_weights(signals: Iterable[Signal]) -> dict[str, float]:
    """Each code's highest weight among `signals`."""
    best: dict[str, float] = {}
    for s in signals:
        if s.weight > best.get(s.code, 0.0):
            best[s.code] = s.weight
    return best


def noisy_or(signals: Iterable[Signal]) -> float:
    """1 - prod(1 - w) over each code's highest weight, rounded to 4 places."""
    keep = 1.0
    for w in code_weights(signals).values():
        keep *= 1.0 - w
    return round(1.0 - keep, 4)


@dataclass(frozen=True, slots=True)
class ScoringPolicy:
    weights: Mapping[str, float]
    suspicious: float = 0.5
    malicious: float = 0.8

    def __post_init__(self) -> None:
        if not 0 < self.suspicious < self.malicious <= 1:
            raise ValueError(
                f"thresholds must satisfy 0 < suspicious < malicious <= 1, got {self.suspicious}, {self.malicious}"
            )
        for code, w in self.weights.items():
            if not 0 < w <= 1:
                raise ValueError(f"weight of {code} must be in (0, 1], got {w}")

    def weight_of(self, code: str) -> float:
        try:
            return self.weights[code]
        except KeyError:
            raise KeyError(f"no weight configured for signal code {code}") from None

    def missing(self, codes: Iterable[str]) -> list[str]:
        return sorted(c for c in codes if c not in self.weights)

    def score(self, signals: Iterable[Signal]) -> float:
        """Noisy-OR over the signals' codes: a code counts once, at its highest weight
        (the same finding on a device and on its account, or a check that fires twice,
        is one piece of evidence); every instance stays in the verdict with its detail."""
        return noisy_or(signals)

    def level(self, score: float) -> VerdictLevel:
        if score >= self.malicious:
            return "malicious"
        if score >= self.suspicious:
            return "suspicious"
        return "clean"
