"""What triage returns: ranked matches and the outcome of the ladder."""

from __future__ import annotations

from typing import Literal, NamedTuple

Outcome = Literal["fix", "clarify", "none"]
# "broad": offered to a vague message because it is a common problem, not because the message says so.
Evidence = Literal["code", "name", "text", "number", "broad"]


# Named tuples rather than frozen dataclasses: as immutable, and made several times per message at a third of
# the cost (a frozen dataclass sets each field through object.__setattr__).
class Match(NamedTuple):
    id: str
    score: float
    evidence: Evidence
    # Other articles that the text cannot tell apart from this one (same error message, different code).
    related: tuple[str, ...] = ()


class TriageResult(NamedTuple):
    outcome: Outcome
    matches: tuple[Match, ...]
    codes: tuple[str, ...] = ()  # catalogue codes found in the text, in order
    unknown_codes: tuple[str, ...] = ()  # "1000:N" forms that the catalogue lacks
    out_of_scope: tuple[str, ...] = ()  # out-of-scope markers seen in the text

    @property
    def confident(self) -> bool:
        return self.outcome == "fix"

    @property
    def best(self) -> Match | None:
        return self.matches[0] if self.matches else None

    def to_json(self) -> dict[str, object]:
        return {
            "confident": self.confident,
            "outcome": self.outcome,
            "matches": [
                {"id": m.id, "score": round(m.score, 4), "evidence": m.evidence, "related": list(m.related)}
                for m in self.matches
            ],
            "codes": list(self.codes),
            "unknown_codes": list(self.unknown_codes),
        }
