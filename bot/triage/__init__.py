"""Pure triage: message text in, ranked knowledge matches out (no I/O)."""

from bot.triage.codes import MAX_CODES
from bot.triage.index import MAX_CORRECTIONS, TriageIndex
from bot.triage.language import LANGS, Lang, asked_language, detect_language
from bot.triage.normalise import MAX_CODE_SCAN_CHARS, MAX_TOKENS, Lexicon, normalize, split_name
from bot.triage.rank import CONFIDENT_AT, triage
from bot.triage.results import Evidence, Match, Outcome, TriageResult


def message_language(text: str, index: TriageIndex) -> Lang | None:
    """The supported language a message is written in, not counting the English error texts pasted into it."""
    return detect_language(text, index.english_messages, index.function_words, index.english_runs)


__all__ = [
    "CONFIDENT_AT",
    "LANGS",
    "MAX_CODES",
    "MAX_CODE_SCAN_CHARS",
    "MAX_CORRECTIONS",
    "MAX_TOKENS",
    "Evidence",
    "Lang",
    "Lexicon",
    "Match",
    "Outcome",
    "TriageIndex",
    "TriageResult",
    "asked_language",
    "detect_language",
    "message_language",
    "normalize",
    "split_name",
    "triage",
]
