"""Pure triage: message text in, ranked knowledge matches out (no I/O)."""

from bot.triage.codes import MAX_CODES
from bot.triage.index import MAX_CORRECTIONS, TriageIndex
from bot.triage.normalise import MAX_CODE_SCAN_CHARS, MAX_TOKENS, Lexicon, normalize, split_name
from bot.triage.rank import CONFIDENT_AT, triage
from bot.triage.results import Evidence, Match, Outcome, TriageResult

__all__ = [
    "CONFIDENT_AT",
    "MAX_CODES",
    "MAX_CODE_SCAN_CHARS",
    "MAX_CORRECTIONS",
    "MAX_TOKENS",
    "Evidence",
    "Lexicon",
    "Match",
    "Outcome",
    "TriageIndex",
    "TriageResult",
    "normalize",
    "split_name",
    "triage",
]
