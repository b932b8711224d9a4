"""Speed and memory of the related-threads index at 10k, 100k and 1M threads.

Synthetic threads are made from the texts in ../shared/eval (English and French): sentences of two
different questions glued together, words swapped for synonyms or random corpus words, a few typos
and numbers added, all from a fixed seed. Each size runs in a fresh single-threaded subprocess
(optionally pinned with --pin) so RSS figures are that process's own; the thread texts are
streamed from a temporary file, never held, while the index is built and its RSS taken. Then, in
the same subprocess, the same queries go through brute-force rapidfuzz token_set_ratio (fewer
queries) and SQLite FTS5 BM25 for the ratios. Build rate counts the add() calls only.

    .venv/bin/python bench/bench_related.py [--sizes 10000,100000,1000000] [--queries 1000]

With ``--semantic MODEL`` (e5-small-q4 or use-m3-q6, from peerbot[semantic]) it measures the
hybrid index instead, at ``--sizes`` (default 100000): per query, the query embedding plus
HybridIndex.search, and the lexical stage alone on the same index; the indexing rate including
the embedding (on a sample of the synthetic texts, one at a time and in batches of 32); RSS before
the model, with the model, and with the index. Wall time and the thread's CPU time are both
printed, since the machine is shared. Embedding 100k synthetic threads with e5 would take over
half an hour, so the index's vectors are the cached real vectors of the eval texts
(bench/semantic_eval.VectorCache) with a little noise, one per thread: the search cost does not
depend on what the vectors say, only on how many there are.

    .venv/bin/python bench/bench_related.py --semantic e5-small-q4 [--sizes 100000] [--queries 300]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EVAL_ROOT = REPO.parent / "shared/eval"
sys.path.insert(0, str(REPO))

_SENT = re.compile(r"(?<=[.?!])\s+")
_SYNONYMS = [
    ("pain", "ache"),
    ("doctor", "physician"),
    ("medicine", "medication"),
    ("child", "kid"),
    ("stomach", "belly"),
    ("heart", "cardiac"),
    ("douleur", "mal"),
    ("médecin", "docteur"),
    ("enfant", "gamin"),
    ("fever", "temperature"),
    ("fièvre", "température"),
    ("big", "large"),
]


def _rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def source_texts() -> tuple[list[str], list[str]]:
    """Eval corpus texts (to vary into threads) and held-apart queries."""
    texts: list[str] = []
    queries: list[str] = []
    for name in ("mqp_curai", "rqe_clinical_doctor_questions"):
        folder = EVAL_ROOT / name
        for line in (folder / "corpus.jsonl").open(encoding="utf-8"):
            texts.append(json.loads(line)["text"])
        for line in (folder / "related_eval.jsonl").open(encoding="utf-8"):
            queries.append(json.loads(line)["query"])
    for name in ("mtsamples_specialty", "labforsims2_fr_question_category", "morfitt_fr_specialty"):
        for line in (EVAL_ROOT / name / "routing_eval.jsonl").open(encoding="utf-8"):
            texts.append(json.loads(line)["text"][:300])
    return texts, queries


def make_corpus(n: int, texts: list[str], path: Path, seed: int = 1) -> None:
    """Write n varied synthetic threads, one JSON string per line."""
    rng = random.Random(seed)
    sents = [s for t in texts for s in _SENT.split(t) if len(s) > 10]
    words = [w for t in texts[:3000] for w in t.split()]
    syn = {a: b for a, b in _SYNONYMS} | {b: a for a, b in _SYNONYMS}
    with path.open("w", encoding="utf-8") as out:
        for _ in range(n):
            parts = [rng.choice(texts)]
            if rng.random() < 0.6:
                parts.append(rng.choice(sents))
            ws = " ".join(parts).split()
            for i, w in enumerate(ws):
                r = rng.random()
                if w.lower() in syn and r < 0.5:
                    ws[i] = syn[w.lower()]
                elif r < 0.06:
                    ws[i] = rng.choice(words)
                elif r < 0.08 and len(w) > 5:
                    j = rng.randrange(1, len(w) - 1)
                    ws[i] = w[:j] + rng.choice("aeioulnrst") + w[j + 1 :]
            if rng.random() < 0.3:
                ws.insert(rng.randrange(len(ws) + 1), str(rng.randrange(1, 1000)))
            out.write(json.dumps(" ".join(ws), ensure_ascii=False) + "\n")


def _tid(i: int) -> str:
    """A thread id as long as a real Matrix event id ($ and 43 characters)."""
    return f"${i:043d}"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def worker(
    path: Path, n: int, queries: list[str], brute_n: int, fts_n: int, nio: bool
) -> dict[str, Any]:
    """Runs in a fresh process: build, query, compare; returns the figures."""
    if nio:
        import nio as _nio  # noqa: F401  (the bot's own footprint, for the absolute RSS)
    import numpy as np
    from rapidfuzz import fuzz, process, utils

    from peerbot.core.related import DEFAULT_MIN_SCORE, RelatedIndex
    from peerbot.core.textnorm import content_tokens

    gc.collect()
    rss0 = _rss_kb()
    index = RelatedIndex()
    rooms = [f"!room{i}:example.org" for i in range(20)]
    build_s = 0.0
    clock = time.perf_counter
    t_all = clock()
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            text = json.loads(line)
            t0 = clock()
            index.add(_tid(i), text, room_id=rooms[i % 20], solved=i % 7 == 0)
            build_s += clock() - t0
    build_all_s = clock() - t_all
    gc.collect()
    rss1 = _rss_kb()
    vocab = len(index._word_id)

    lat: list[float] = []
    lat_rooms: list[float] = []
    hits = 0
    allowed = set(rooms[:5])
    for q in queries:
        t = time.perf_counter()
        res = index.search(q, limit=3, min_score=DEFAULT_MIN_SCORE)
        lat.append(time.perf_counter() - t)
        hits += bool(res)
        t = time.perf_counter()
        index.search(q, limit=3, rooms=allowed, exclude=(_tid(1),))
        lat_rooms.append(time.perf_counter() - t)

    # Incremental maintenance on the built index: edit, remove and re-add existing threads.
    rng = random.Random(3)
    picks = [rng.randrange(n) for _ in range(500)]
    texts_for = [queries[i % len(queries)] for i in range(500)]
    t = time.perf_counter()
    for i, text in zip(picks, texts_for, strict=True):
        index.update_text(_tid(i), text)
    upd_us = (time.perf_counter() - t) / 500 * 1e6
    t = time.perf_counter()
    for i in picks:
        index.remove(_tid(i))
    rm_us = (time.perf_counter() - t) / 500 * 1e6
    t = time.perf_counter()
    for i, text in zip(picks, texts_for, strict=True):
        index.add(_tid(i), text, room_id=rooms[0])
    add_us = (time.perf_counter() - t) / 500 * 1e6
    peak_index = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # Baselines, with the texts now loaded (after the index's RSS was taken).
    with path.open(encoding="utf-8") as f:
        texts = [json.loads(line) for line in f]
    proc = [utils.default_process(t) for t in texts]
    brute: list[float] = []
    for q in queries[:brute_n]:
        t = time.perf_counter()
        process.extract(
            utils.default_process(q), proc, scorer=fuzz.token_set_ratio, processor=None, limit=3
        )
        brute.append(time.perf_counter() - t)
    del proc
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(body, tokenize='unicode61 remove_diacritics 2')")
    db.executemany("INSERT INTO t(body) VALUES (?)", ((t,) for t in texts))
    del texts
    fts: list[float] = []
    for q in queries[:fts_n]:
        words = dict.fromkeys(content_tokens(q))
        match = " OR ".join(f'"{w}"' for w in words) or '""'
        t = time.perf_counter()
        db.execute(
            "SELECT rowid FROM t WHERE t MATCH ? ORDER BY bm25(t) LIMIT 50", (match,)
        ).fetchall()
        fts.append(time.perf_counter() - t)
    del np
    return {
        "n": n,
        "vocab": vocab,
        "build_per_s": n / build_s,
        "build_all_per_s": n / build_all_s,
        "p50": statistics.median(lat) * 1e3,
        "p99": pct(lat, 0.99),
        "rooms_p50": statistics.median(lat_rooms) * 1e3,
        "rooms_p99": pct(lat_rooms, 0.99) * 1e3,
        "answered": hits / len(queries),
        "rss_before_mb": rss0 / 1024,
        "rss_index_mb": rss1 / 1024,
        "index_share_mb": (rss1 - rss0) / 1024,
        "peak_during_index_mb": peak_index / 1024,
        "update_us": upd_us,
        "remove_us": rm_us,
        "add_us": add_us,
        "brute_n": len(brute),
        "brute_p50": statistics.median(brute) * 1e3,
        "brute_p99": pct(brute, 0.99) * 1e3,
        "fts_n": len(fts),
        "fts_p50": statistics.median(fts) * 1e3,
        "fts_p99": pct(fts, 0.99) * 1e3,
    }


def semantic_worker(
    path: Path, n: int, queries: list[str], model: str, cache_dir: Path, nio: bool
) -> dict[str, Any]:
    """Runs in a fresh process: the hybrid index at n threads, query embedding included."""
    if nio:
        import nio as _nio  # noqa: F401  (the bot's own footprint, for the absolute RSS)
    import numpy as np

    sys.path.insert(0, str(REPO / "bench"))
    from semantic_eval import VectorCache

    from peerbot.core.semantic import HybridIndex, load_embedder

    cache = VectorCache(model, cache_dir)
    pool = np.stack(list(cache.vecs.values())).astype(np.float32)
    del cache
    gc.collect()
    rss0 = _rss_kb()
    embedder, reason = load_embedder(model)
    if embedder is None:
        raise SystemExit(reason)
    embedder.warm()
    embedder.embed(["warm up"])
    rss_model = _rss_kb()

    # Indexing rate including the embedding, on the first synthetic texts.
    with path.open(encoding="utf-8") as f:
        sample = [json.loads(line) for _, line in zip(range(256), f, strict=False)]
    one_cpu = one_wall = 0.0
    for text in sample[:96]:
        w, c = time.perf_counter(), time.thread_time()
        embedder.embed([text])
        one_wall += time.perf_counter() - w
        one_cpu += time.thread_time() - c
    w, c = time.perf_counter(), time.thread_time()
    for i in range(0, len(sample), 32):
        embedder.embed(sample[i : i + 32])
    batch_wall = time.perf_counter() - w
    batch_cpu = time.thread_time() - c

    rng = np.random.default_rng(1)
    index = HybridIndex(model)
    rooms = [f"!room{i}:example.org" for i in range(20)]
    add_s = 0.0
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            text = json.loads(line)
            v = pool[i % len(pool)] + rng.standard_normal(pool.shape[1]).astype(np.float32) * 0.01
            t0 = time.perf_counter()
            index.add(_tid(i), text, room_id=rooms[i % 20], solved=i % 7 == 0, vector=v)
            add_s += time.perf_counter() - t0
    del pool
    gc.collect()
    rss_index = _rss_kb()

    total_w: list[float] = []
    total_c: list[float] = []
    embed_w: list[float] = []
    lex_w: list[float] = []
    lex_c: list[float] = []
    answered = 0
    for q in queries:
        w, c = time.perf_counter(), time.thread_time()
        qv = embedder.embed([q])[0]
        we = time.perf_counter()
        hits = index.search(q, query_vector=qv, limit=3)
        total_w.append(time.perf_counter() - w)
        total_c.append(time.thread_time() - c)
        embed_w.append(we - w)
        answered += bool(hits)
        w, c = time.perf_counter(), time.thread_time()
        index.search(q, limit=3)
        lex_w.append(time.perf_counter() - w)
        lex_c.append(time.thread_time() - c)
    ms = 1e3
    return {
        "n": n,
        "model": model,
        "vectors": index.vector_count,
        "add_per_s_vector_given": n / add_s,
        "embed_one_per_s_cpu": 96 / one_cpu,
        "embed_one_per_s_wall": 96 / one_wall,
        "embed_batch32_per_s_cpu": len(sample) / batch_cpu,
        "embed_batch32_per_s_wall": len(sample) / batch_wall,
        "p50_wall": statistics.median(total_w) * ms,
        "p99_wall": pct(total_w, 0.99) * ms,
        "p50_cpu": statistics.median(total_c) * ms,
        "p99_cpu": pct(total_c, 0.99) * ms,
        "embed_p50_wall": statistics.median(embed_w) * ms,
        "lex_p50_wall": statistics.median(lex_w) * ms,
        "lex_p99_wall": pct(lex_w, 0.99) * ms,
        "lex_p50_cpu": statistics.median(lex_c) * ms,
        "lex_p99_cpu": pct(lex_c, 0.99) * ms,
        "answered": answered / len(queries),
        "rss_before_mb": rss0 / 1024,
        "rss_model_mb": rss_model / 1024,
        "rss_index_mb": rss_index / 1024,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main_semantic(args: argparse.Namespace) -> int:
    texts, pool = source_texts()
    rng = random.Random(11)
    queries = rng.sample(pool, args.queries)
    tmp = Path(tempfile.mkdtemp(prefix="bench_related_"))
    qpath = tmp / "queries.json"
    qpath.write_text(json.dumps(queries), encoding="utf-8")
    pin = ["taskset", "-c", args.pin] if args.pin and shutil.which("taskset") else []
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    rows = []
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            path = tmp / f"corpus_{n}.jsonl"
            make_corpus(n, texts, path)
            cmd = [*pin, sys.executable, __file__, "--semantic-worker", str(path), str(n)]
            cmd += [str(qpath), args.semantic, str(args.cache)]
            if args.no_nio:
                cmd.append("--no-nio")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            path.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"hybrid {args.semantic}: {len(queries)} queries, one thread, pinned: {args.pin or 'no'};"
        " ms are wall / thread CPU"
    )
    head = (
        "threads",
        "query+embed p50",
        "query+embed p99",
        "embed p50 (wall)",
        "lexical alone p50",
        "lexical alone p99",
        "answered",
        "embed texts/s (1 at a time)",
        "embed texts/s (batches of 32)",
        "add/s, vector given",
        "RSS base / +model / +index MB",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = (
            f"{r['n']:,}",
            f"{r['p50_wall']:.1f} / {r['p50_cpu']:.1f}",
            f"{r['p99_wall']:.1f} / {r['p99_cpu']:.1f}",
            f"{r['embed_p50_wall']:.1f}",
            f"{r['lex_p50_wall']:.2f} / {r['lex_p50_cpu']:.2f}",
            f"{r['lex_p99_wall']:.2f} / {r['lex_p99_cpu']:.2f}",
            f"{r['answered']:.2f}",
            f"{r['embed_one_per_s_wall']:.0f} / {r['embed_one_per_s_cpu']:.0f}",
            f"{r['embed_batch32_per_s_wall']:.0f} / {r['embed_batch32_per_s_cpu']:.0f}",
            f"{r['add_per_s_vector_given']:,.0f}",
            f"{r['rss_before_mb']:.0f} / {r['rss_model_mb']:.0f} / {r['rss_index_mb']:.0f}",
        )
        print("| " + " | ".join(cells) + " |")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--pin", help="run the workers under taskset -c PIN (e.g. 1)")
    ap.add_argument("--no-nio", action="store_true", help="do not import nio in the worker")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--semantic", metavar="MODEL", help="measure the hybrid index with MODEL")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/peerbot-emb"), help="vector cache")
    ap.add_argument("--semantic-worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.semantic_worker:
        path, n, qpath, model, cache = args.semantic_worker
        queries = json.loads(Path(qpath).read_text(encoding="utf-8"))
        res = semantic_worker(Path(path), int(n), queries, model, Path(cache), not args.no_nio)
        print(json.dumps(res))
        return 0
    if args.semantic:
        if args.sizes == "10000,100000,1000000":
            args.sizes = "100000"
        return main_semantic(args)
    if args.worker:
        path, n, qpath, brute_n, fts_n = args.worker
        queries = json.loads(Path(qpath).read_text(encoding="utf-8"))
        res = worker(Path(path), int(n), queries, int(brute_n), int(fts_n), not args.no_nio)
        res["p99"] *= 1e3
        print(json.dumps(res))
        return 0

    texts, pool = source_texts()
    rng = random.Random(11)
    queries = rng.sample(pool, args.queries)
    tmp = Path(tempfile.mkdtemp(prefix="bench_related_"))
    qpath = tmp / "queries.json"
    qpath.write_text(json.dumps(queries), encoding="utf-8")
    pin = ["taskset", "-c", args.pin] if args.pin and shutil.which("taskset") else []
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    rows = []
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            path = tmp / f"corpus_{n}.jsonl"
            make_corpus(n, texts, path)
            brute_n = 200 if n <= 10_000 else 50 if n <= 100_000 else 10
            fts_n = len(queries) if n <= 100_000 else 300
            cmd = [
                *pin,
                sys.executable,
                __file__,
                "--worker",
                str(path),
                str(n),
                str(qpath),
                str(brute_n),
                str(fts_n),
            ]
            if args.no_nio:
                cmd.append("--no-nio")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            path.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"queries: {len(queries)} (engine, FTS5 up to 300 at 1M), brute force 200/50/10;"
        f" one thread; pinned: {args.pin or 'no'}; nio imported: {not args.no_nio}"
    )
    head = (
        "threads",
        "vocab",
        "add/s",
        "build/s incl. read",
        "p50 ms",
        "p99 ms",
        "rooms p50",
        "rooms p99",
        "answered",
        "RSS base MB",
        "RSS w/ index MB",
        "index MB",
        "upd us",
        "rm us",
        "add us",
        "brute p50",
        "fts p50",
        "fts p99",
        "x brute p50",
        "x fts p99",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = (
            f"{r['n']:,}",
            f"{r['vocab']:,}",
            f"{r['build_per_s']:,.0f}",
            f"{r['build_all_per_s']:,.0f}",
            f"{r['p50']:.2f}",
            f"{r['p99']:.2f}",
            f"{r['rooms_p50']:.2f}",
            f"{r['rooms_p99']:.2f}",
            f"{r['answered']:.2f}",
            f"{r['rss_before_mb']:.0f}",
            f"{r['rss_index_mb']:.0f}",
            f"{r['index_share_mb']:.0f}",
            f"{r['update_us']:.0f}",
            f"{r['remove_us']:.0f}",
            f"{r['add_us']:.0f}",
            f"{r['brute_p50']:.1f}",
            f"{r['fts_p50']:.2f}",
            f"{r['fts_p99']:.2f}",
            f"{r['brute_p50'] / r['p50']:.0f}x",
            f"{r['fts_p99'] / r['p99']:.1f}x",
        )
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
