"""Per-message triage cost on the labelled sets and on synthetic catalogues of growing size.

Run: python bench/triage.py [--sizes 40,1000,10000] [--repeat 5]
     python bench/triage.py --sizes 1000,10000,100000 --plot      # also draws bench/triage_scaling.png
     python bench/triage.py --sizes '' --compare 35594fc          # A/B against the triage at a git revision
     python bench/triage.py --sizes '' --compare HEAD --all-sets  # ... on every labelled set
The first row is always the real catalogue; a size at or below it adds nothing, so 40 means "the real one".
--plot needs matplotlib (the `bench` extra: pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import random
import re
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# E402 below: these imports need the repository put on sys.path first, above.
from bot.knowledge import Article, KnowledgeBase, Step, load_knowledge  # noqa: E402
from bot.triage import TriageIndex, message_language, triage  # noqa: E402

SETS = ("triage_public.jsonl", "triage_holdout.jsonl")


def messages(names: tuple[str, ...] = SETS) -> list[str]:
    out = []
    for name in names:
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
    # choices(weights=...) re-sums the weights on every call, which makes 100k articles take hours; the
    # cumulative form is what it computes internally, so the articles are the same, only made once.
    cum_weights = list(itertools.accumulate(weights))

    def phrase() -> str:
        return " ".join(rng.choices(vocab, cum_weights=cum_weights, k=rng.randint(2, 6)))

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
    # Everything else (links, scope, word lists, translations' languages) as the real knowledge has it.
    return base.model_copy(update={"articles": articles})


def one_pass_us(index: TriageIndex, texts: list[str], run: Callable[..., object] = triage) -> float:
    start = time.perf_counter()
    for text in texts:
        run(text, index)
    return (time.perf_counter() - start) / len(texts) * 1e6


def per_message_us(index: TriageIndex, texts: list[str], repeat: int) -> tuple[float, float, float]:
    """The first pass over a fresh index (nothing remembered yet), then the median and best of `repeat`
    further passes; microseconds per message."""
    first = one_pass_us(index, texts)
    runs = [one_pass_us(index, texts) for _ in range(repeat)]
    return first, statistics.median(runs), min(runs)


def _package(revision: str) -> str:
    return "bot_" + "".join(c if c.isalnum() else "_" for c in revision)


def module_at(revision: str) -> ModuleType:
    """The triage of a git revision (bot/triage.py or the bot/triage/ package), imported beside the current one.

    The revision's whole bot/ is unpacked as a package of its own name, its imports of `bot` pointed at it."""
    name = _package(revision)
    if name in sys.modules:
        return importlib.import_module(f"{name}.triage")
    folder = Path(tempfile.mkdtemp(prefix="triage-ab-"))
    archive = subprocess.run(["git", "archive", revision, "bot"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    (folder / "bot").rename(folder / name)
    for source in (folder / name).rglob("*.py"):
        text = source.read_text()
        source.write_text(re.sub(r"\b(from|import) bot\b", rf"\1 {name}", text))
    sys.path.insert(0, str(folder))
    return importlib.import_module(f"{name}.triage")


def knowledge_at(revision: str) -> Any:
    """knowledge/ as it was at a git revision, read by that revision's own loader (its files and its rules)."""
    folder = Path(tempfile.mkdtemp(prefix="knowledge-ab-"))
    archive = subprocess.run(
        ["git", "archive", revision, "knowledge"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    module_at(revision)  # puts the revision's bot/ on the path
    loader = importlib.import_module(f"{_package(revision)}.knowledge")
    return loader.load_knowledge(folder / "knowledge")


def compare(
    revision: str, base: KnowledgeBase, texts: list[str], rounds: int, old_base: KnowledgeBase | None = None
) -> None:
    """Interleaved passes of both versions on the real catalogue; the ratio is taken within each round.
    With `old_base`, the revision's side runs on its own knowledge files too (a release against a release)."""
    old = module_at(revision)
    new_index, old_index = TriageIndex.build(base), old.TriageIndex.build(old_base or base)
    differ = sum(triage(t, new_index).to_json() != old.triage(t, old_index).to_json() for t in texts)
    one_pass_us(new_index, texts), one_pass_us(old_index, texts, old.triage)  # warm both alike
    ratios, news, olds = [], [], []
    for _ in range(rounds):
        o = min(one_pass_us(old_index, texts, old.triage) for _ in range(3))
        n = min(one_pass_us(new_index, texts) for _ in range(3))
        olds.append(o)
        news.append(n)
        ratios.append(n / o)
    knowledge = f"{revision}'s knowledge on its side" if old_base else "the working tree's knowledge on both"
    print(
        f"{len(texts)} messages, real catalogue ({knowledge}), {rounds} rounds (best of 3 passes each), medians:"
    )
    print(
        f"  {revision}: {statistics.median(olds):.1f} us/msg   working tree: {statistics.median(news):.1f} us/msg"
    )
    print(
        f"  working tree / {revision} = {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})"
    )
    print(f"  results that differ: {differ} of {len(texts)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="synthetic catalogue sizes (articles)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--all-sets",
        action="store_true",
        help="every tests/data/triage_*.jsonl instead of the public and holdout sets",
    )
    parser.add_argument("--compare", metavar="REV", help="also A/B the real catalogue against REV's triage")
    parser.add_argument(
        "--compare-knowledge",
        action="store_true",
        help="with --compare: REV's side uses REV's knowledge/ too",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        nargs="?",
        const=ROOT / "bench" / "triage_scaling.png",
        help="also save a log-log plot of cost against catalogue size (default bench/triage_scaling.png)",
    )
    args = parser.parse_args()

    base = load_knowledge(ROOT / "knowledge")
    sets = (
        tuple(sorted(p.name for p in (ROOT / "tests" / "data").glob("triage_*.jsonl")))
        if args.all_sets
        else SETS
    )
    texts = messages(sets)
    if args.compare:
        compare(
            args.compare,
            base,
            texts,
            args.repeat,
            knowledge_at(args.compare) if args.compare_knowledge else None,
        )
    rows = []
    start = time.perf_counter()
    index = TriageIndex.build(base)
    build_ms = (time.perf_counter() - start) * 1e3
    first, med, best = per_message_us(index, texts, args.repeat)
    # The bar is stated on the public set alone: measure it on its own too, on the same warm index.
    public = messages(SETS[:1])
    public_runs = [one_pass_us(index, public) for _ in range(args.repeat)]
    # Long reports: the long-report set's messages, each made up to 2,000 characters with the next ones.
    pool = messages(("triage_long_dev.jsonl",))
    reports = [(" ".join(pool[i:] + pool[:i]))[:2000] for i in range(len(pool))] if pool else []
    report_runs = [one_pass_us(index, reports) for _ in range(max(1, args.repeat // 2))] if reports else [0.0]
    # Language detection, as the bot runs it before triage, on the five languages' messages.
    foreign = messages(tuple(f"triage_{lang}_dev.jsonl" for lang in ("de", "fr", "es", "pt", "it")))
    detect_runs = (
        [one_pass_us(index, foreign, message_language) for _ in range(args.repeat)] if foreign else [0.0]
    )
    rows.append(
        {
            "catalogue": len(base.articles),
            "build_ms": round(build_ms, 1),
            "first_pass_us": round(first, 1),
            "median_us": round(med, 1),
            "best_us": round(best, 1),
        }
    )
    for size in [int(s) for s in args.sizes.split(",") if s]:
        kb = synthetic(base, size)
        start = time.perf_counter()
        index = TriageIndex.build(kb)
        build_ms = (time.perf_counter() - start) * 1e3
        first, med, best = per_message_us(index, texts, max(1, args.repeat // 2))
        rows.append(
            {
                "catalogue": len(kb.articles),
                "build_ms": round(build_ms, 1),
                "first_pass_us": round(first, 1),
                "median_us": round(med, 1),
                "best_us": round(best, 1),
            }
        )
    print(f"{len(texts)} messages ({', '.join(sets)}), Python {sys.version.split()[0]}")
    print(
        f"public set alone ({len(public)} messages), real catalogue: median {statistics.median(public_runs):.1f} "
        f"us/msg, best {min(public_runs):.1f}"
    )
    print(
        f"2,000-character reports ({len(reports)}): median {statistics.median(report_runs):.1f} us/msg, "
        f"best {min(report_runs):.1f}"
    )
    print(
        f"language detection ({len(foreign)} de/fr/es/pt/it messages): median "
        f"{statistics.median(detect_runs):.1f} us/msg, best {min(detect_runs):.1f}"
    )
    print("first pass: a fresh index, nothing remembered yet; median/best: the passes after it")
    print(
        f"{'articles':>9} {'index build ms':>15} {'first pass us':>14} {'median us/msg':>14} {'best us/msg':>12}"
    )
    for r in rows:
        print(
            f"{r['catalogue']:>9} {r['build_ms']:>15} {r['first_pass_us']:>14} {r['median_us']:>14} {r['best_us']:>12}"
        )
    if args.json:
        rows[0]["public_set_median_us"] = round(statistics.median(public_runs), 1)
        rows[0]["report_2000_median_us"] = round(statistics.median(report_runs), 1)
        rows[0]["language_detection_median_us"] = round(statistics.median(detect_runs), 1)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.plot:
        plot(rows, len(texts), args.plot)


def plot(rows: list[dict[str, float]], n_messages: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    sizes = [r["catalogue"] for r in rows]
    fig, (cost, build) = plt.subplots(1, 2, figsize=(11, 4.2))
    cost.loglog(sizes, [r["first_pass_us"] for r in rows], "^-", label="first pass (fresh index)")
    cost.loglog(sizes, [r["median_us"] for r in rows], "o-", label="median of later passes")
    cost.loglog(sizes, [r["best_us"] for r in rows], "s--", alpha=0.6, label="best pass")
    for r in rows:
        cost.annotate(
            f"{r['median_us']:,.0f} us",
            (r["catalogue"], r["median_us"]),
            textcoords="offset points",
            xytext=(6, -12),
            fontsize=8,
        )
    # A slope-1 guide from the first point: what linear scaling would cost.
    linear = [rows[0]["median_us"] * s / sizes[0] for s in sizes]
    cost.loglog(sizes, linear, ":", color="grey", label="linear in articles")
    cost.set_ylim(top=max(max(r["median_us"], r["first_pass_us"]) for r in rows) * 20)
    cost.set(xlabel="articles in the catalogue", ylabel="microseconds per message", title="triage cost")
    cost.legend(fontsize=8)
    cost.grid(True, which="both", alpha=0.3)
    build.loglog(sizes, [r["build_ms"] for r in rows], "o-", color="tab:orange")
    build.set(xlabel="articles in the catalogue", ylabel="milliseconds", title="TriageIndex.build (once)")
    build.grid(True, which="both", alpha=0.3)
    fig.suptitle(
        f"{n_messages} labelled messages, Python {sys.version.split()[0]}, "
        f"{time.strftime('%Y-%m-%d')}; synthetic articles beyond the real catalogue",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
