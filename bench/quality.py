"""Triage quality per labelled set: in-scope top-1 and top-3, confident answers on out-of-scope lines, language.

Run: python bench/quality.py                      # every tests/data/triage_*.jsonl except the sealed sets
     python bench/quality.py --sealed             # the sealed sets too (measure them once, at the end)
     python bench/quality.py --revision REV       # the same with REV's triage and knowledge (before/after tables)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# E402 below: these imports need the repository put on sys.path first, above.
from triage import knowledge_at, module_at  # noqa: E402

from bot.knowledge import load_knowledge  # noqa: E402

DATA = ROOT / "tests" / "data"


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure(path: Path, run: Any, detect: Any) -> dict[str, Any]:
    labelled = rows(path)
    inside = [r for r in labelled if r["expect"]]
    outside = [r for r in labelled if not r["expect"]]
    top1 = top3 = confident_out = 0
    for r in inside:
        result = run(r["text"])
        ids = [m.id for m in result.matches]
        top1 += bool(result.confident and ids and ids[0] in r["expect"])
        top3 += bool(set(ids[:3]) & set(r["expect"]))
    for r in outside:
        confident_out += bool(run(r["text"]).confident)
    foreign = [r for r in labelled if r.get("lang", "en") != "en"]
    lang_right = sum(detect(r["text"]) == r["lang"] for r in foreign) if detect and foreign else None
    return {
        "set": path.stem.removeprefix("triage_"),
        "in": len(inside),
        "out": len(outside),
        "top1": round(top1 / max(1, len(inside)), 3),
        "top3": round(top3 / max(1, len(inside)), 3),
        "confident_out": round(confident_out / max(1, len(outside)), 3),
        "lang": None if lang_right is None else round(lang_right / len(foreign), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sealed", action="store_true", help="include the sealed sets")
    parser.add_argument("--revision", help="measure a git revision's triage on its own knowledge")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    detect: Any = None
    if args.revision:
        module = module_at(args.revision)
        index = module.TriageIndex.build(knowledge_at(args.revision))

        def run(text: str) -> Any:
            return module.triage(text, index)

    else:
        # As the bot does it: the message's language, then that language's index.
        from bot.context import Knowledge
        from bot.triage import message_language, triage

        knowledge = Knowledge.build(load_knowledge(ROOT / "knowledge"))

        def detect(text: str) -> str:
            return message_language(text, knowledge.index) or "en"

        def run(text: str) -> Any:
            return triage(text, knowledge.index_for(detect(text)))

    paths = [p for p in sorted(DATA.glob("triage_*.jsonl")) if args.sealed or "sealed" not in p.name]
    out = [measure(p, run, detect) for p in paths]
    print(f"{'set':<14}{'in':>5}{'out':>5}{'top-1':>8}{'top-3':>8}{'conf-out':>10}{'lang':>7}")
    for r in out:
        lang = "" if r["lang"] is None else f"{r['lang']:.3f}"
        print(
            f"{r['set']:<14}{r['in']:>5}{r['out']:>5}{r['top1']:>8.3f}{r['top3']:>8.3f}{r['confident_out']:>10.3f}{lang:>7}"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
