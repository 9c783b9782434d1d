"""Per-message triage cost on the labelled sets and on synthetic catalogues of growing size.

Run: python bench/triage.py [--sizes 40,1000,10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.knowledge import Article, KnowledgeBase, Step, load_knowledge  # noqa: E402
from bot.triage import TriageIndex, triage  # noqa: E402


def messages() -> list[str]:
    out = []
    for name in ("triage_public.jsonl", "triage_holdout.jsonl"):
        path = ROOT / "tests" / "data" / name
        if path.exists():
            out += [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    return out


def synthetic(base: KnowledgeBase, size: int, seed: int = 7) -> KnowledgeBase:
    """The real catalogue plus generated articles whose phrases mix real and made-up words (Zipf-like)."""
    rng = random.Random(seed)
    real_words = sorted(
        {
            w
            for a in base.articles.values()
            for p in (a.title, *a.aliases, *a.phrases)
            for w in p.lower().split()
        }
    )
    fake_words = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 10))) for _ in range(max(200, size // 2))
    ]
    vocab = real_words + fake_words
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(vocab))]
    rng.shuffle(weights)

    def phrase() -> str:
        return " ".join(rng.choices(vocab, weights=weights, k=rng.randint(2, 6)))

    articles = dict(base.articles)
    for n in range(max(0, size - len(articles))):
        aid = f"synthetic-{n}"
        articles[aid] = Article(
            id=aid,
            kind="symptom",
            title=phrase(),
            category="general",
            admin_needed=False,
            summary="synthetic",
            steps=(Step(text="synthetic step"),),
            aliases=tuple(phrase() for _ in range(2)),
            phrases=tuple(phrase() for _ in range(4)),
        )
    return KnowledgeBase(articles=articles, links=base.links, out_of_scope=base.out_of_scope)


def per_message_us(index: TriageIndex, texts: list[str], repeat: int) -> tuple[float, float]:
    """Median and best of `repeat` passes, microseconds per message."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for text in texts:
            triage(text, index)
        runs.append((time.perf_counter() - start) / len(texts) * 1e6)
    return statistics.median(runs), min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="synthetic catalogue sizes (articles)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()

    base = load_knowledge(ROOT / "knowledge")
    texts = messages()
    rows = []
    start = time.perf_counter()
    index = TriageIndex.build(base)
    build_ms = (time.perf_counter() - start) * 1e3
    med, best = per_message_us(index, texts, args.repeat)
    rows.append(
        {
            "catalogue": len(base.articles),
            "build_ms": round(build_ms, 1),
            "median_us": round(med, 1),
            "best_us": round(best, 1),
        }
    )
    for size in [int(s) for s in args.sizes.split(",") if s]:
        kb = synthetic(base, size)
        start = time.perf_counter()
        index = TriageIndex.build(kb)
        build_ms = (time.perf_counter() - start) * 1e3
        med, best = per_message_us(index, texts, max(1, args.repeat // 2))
        rows.append(
            {
                "catalogue": len(kb.articles),
                "build_ms": round(build_ms, 1),
                "median_us": round(med, 1),
                "best_us": round(best, 1),
            }
        )
    print(f"{len(texts)} messages (public + holdout sets), Python {sys.version.split()[0]}")
    print(f"{'articles':>9} {'index build ms':>15} {'median us/msg':>14} {'best us/msg':>12}")
    for r in rows:
        print(f"{r['catalogue']:>9} {r['build_ms']:>15} {r['median_us']:>14} {r['best_us']:>12}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
