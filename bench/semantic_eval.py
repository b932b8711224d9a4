"""The semantic part of bench/eval_related.py: embedding cache, rankers, tuning, cross-language.

Imported by eval_related.py (``--semantic``, on by default when the models are installed).
Vectors of the eval texts are computed once per model with peerbot.core.semantic.Embedder and
kept in ``--cache`` (default /tmp/peerbot-emb/<model>.npz, keyed by a hash of the text), since
the e5 model embeds about 10 texts/s on one core of this machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerbot.core import semantic
from peerbot.core.related import Hit
from peerbot.core.semantic import MODELS, HybridIndex, ModelSpec, load_embedder

HERE = Path(__file__).resolve().parent
CROSSLANG = HERE / "crosslang.jsonl"
FRENCH_DISTRACTORS = "labforsims2_fr_question_category"
N_FRENCH_DISTRACTORS = 600
"""Its first 600 rows (real French questions) join the cross-language index as distractors."""
Query = tuple[str, str, set[str]]


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class VectorCache:
    """Vectors of texts for one model, computed on demand and kept in an .npz file."""

    def __init__(self, model: str, folder: Path) -> None:
        self.model = model
        self.path = folder / f"{model}.npz"
        self.vecs: dict[str, np.ndarray] = {}
        # <model>.npz, and any <model>.part*.npz left by a parallel precomputation.
        for path in [*sorted(folder.glob(f"{model}.part*.npz")), self.path]:
            if path.exists():
                with np.load(path) as z:
                    self.vecs.update(zip(z["keys"].tolist(), z["vecs"], strict=True))
        self.dirty = False

    def get(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if _key(t) not in self.vecs))
        if missing:
            embedder, reason = load_embedder(self.model)
            if embedder is None:
                raise SystemExit(reason)
            t0 = time.perf_counter()
            for i in range(0, len(missing), 32):
                batch = missing[i : i + 32]
                for text, vec in zip(batch, embedder.embed(batch), strict=True):
                    self.vecs[_key(text)] = vec
            print(
                f"  ({self.model}: embedded {len(missing)} texts in"
                f" {time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            self.dirty = True
            self.save()
        spec = MODELS[self.model]
        if not texts:
            return np.zeros((0, spec.dim), dtype=np.float32)
        return np.stack([self.vecs[_key(t)] for t in texts]).astype(np.float32)

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.vecs)
        np.savez(self.path, keys=np.array(keys), vecs=np.stack([self.vecs[k] for k in keys]))
        self.dirty = False


def part(qid: str) -> str:
    """A fixed half of each set: "A" (tuning) or "B" (held out), from a hash of the query id."""
    return "A" if int(hashlib.sha256(qid.encode()).hexdigest()[:8], 16) % 2 == 0 else "B"


def build(
    model: str, corpus: Sequence[tuple[str, str]], vectors: np.ndarray
) -> tuple[HybridIndex, float]:
    index = HybridIndex(model)
    t0 = time.perf_counter()
    for (cid, text), vec in zip(corpus, vectors, strict=True):
        index.add(cid, text, room_id="!eval", vector=vec)
    return index, time.perf_counter() - t0


def dense_ranker(
    corpus: Sequence[tuple[str, str]], vectors: np.ndarray, depth: int
) -> Callable[[np.ndarray], list[str]]:
    """The embedding model alone: exact float32 cosine over the whole corpus."""
    ids = [cid for cid, _ in corpus]

    def rank(q: np.ndarray) -> list[str]:
        cos = vectors @ q
        top = np.argpartition(-cos, min(depth, len(ids) - 1))[:depth]
        top = top[np.lexsort((top, -cos[top]))]
        return [ids[i] for i in top]

    return rank


def run(
    rank: Callable[[str, np.ndarray], list[str]],
    queries: Sequence[Query],
    qvecs: np.ndarray,
    first_gold: Callable[[Sequence[str], set[str]], int | None],
) -> tuple[list[int | None], list[float]]:
    ranks: list[int | None] = []
    times: list[float] = []
    for (_, q, gold), qv in zip(queries, qvecs, strict=True):
        t0 = time.perf_counter()
        ranked = rank(q, qv)
        times.append(time.perf_counter() - t0)
        ranks.append(first_gold(ranked, gold))
    return ranks, times


def rankers(
    model: str, corpus: Sequence[tuple[str, str]], cvecs: np.ndarray, depth: int
) -> tuple[HybridIndex, dict[str, Callable[[str, np.ndarray], list[str]]]]:
    index, _ = build(model, corpus, cvecs)
    dense = dense_ranker(corpus, cvecs, depth)

    def lexical(q: str, _qv: np.ndarray) -> list[str]:
        return [h.thread_id for h in index.search(q, limit=depth, min_score=0.0)]

    def alone(_q: str, qv: np.ndarray) -> list[str]:
        return dense(qv)

    def hybrid(q: str, qv: np.ndarray) -> list[str]:
        return [h.thread_id for h in index.search(q, query_vector=qv, limit=depth, min_score=0.0)]

    return index, {"lexical": lexical, f"{model} alone": alone, f"hybrid {model}": hybrid}


def fused_hybrids(
    indexes: Sequence[HybridIndex], weights: Sequence[float], depth: int
) -> Callable[[str, np.ndarray], list[str]]:
    """Several hybrids at once (one per model): a thread scores the weighted sum of its hybrid
    scores (0 from a hybrid whose best ``depth`` lack it). The query vector is every model's
    vector side by side, in ``indexes`` order."""
    dims = [index.spec.dim for index in indexes]

    def rank(q: str, qv: np.ndarray) -> list[str]:
        total: dict[str, float] = {}
        start = 0
        for index, dim, weight in zip(indexes, dims, weights, strict=True):
            vector = qv[start : start + dim]
            start += dim
            for hit in index.search(q, query_vector=vector, limit=depth, min_score=0.0):
                total[hit.thread_id] = total.get(hit.thread_id, 0.0) + weight * hit.score
        return sorted(total, key=lambda t: (-total[t], t))[:depth]

    return rank


def split_rows(
    label: str,
    set_name: str,
    queries: Sequence[Query],
    ranks: Sequence[int | None],
    times: Sequence[float],
    fmt: Callable[..., str],
) -> list[str]:
    """The whole set, then its tuning half A and held-out half B."""
    rows = [fmt(label, set_name, ranks, times)]
    for p in ("A", "B"):
        sel = [i for i, (qid, _, _) in enumerate(queries) if part(qid) == p]
        rows.append(fmt(f"  half {p}", set_name, [ranks[i] for i in sel], [times[i] for i in sel]))
    return rows


# -- tuning on half A --------------------------------------------------------------------------


def fusion_rows(
    index: HybridIndex, queries: Sequence[Query], qvecs: np.ndarray, depth: int
) -> list[Any]:
    """Per query, its candidates' fusion inputs with their gold flags first (None: no
    candidate), computed once so that many fusion settings can be scored (:func:`fused_ranks`)."""
    rows: list[Any] = []
    for (_, q, gold), qv in zip(queries, qvecs, strict=True):
        found: Any = index._fusion_inputs(q, qv, None, (), depth)
        if found is not None:
            is_gold = np.array([index._thread[s] in gold for s in found[0]])
            found = (is_gold, *found[2:])
        rows.append(found)
    return rows


def fused_ranks(spec: ModelSpec, rows: Sequence[Any], depth: int) -> list[int | None]:
    """Each query's gold rank among its candidates fused with ``spec``, as HybridIndex._ranked
    sorts them (but for thread-id ties); None when not in the best ``depth``."""
    ranks: list[int | None] = []
    for found in rows:
        if found is None or not found[0].any():
            ranks.append(None)
            continue
        scores, raw = HybridIndex._fuse(found[1], found[2], found[3], found[4], spec)
        scores = np.round(scores, 4)
        g = np.flatnonzero(found[0])
        best = g[np.lexsort((-raw[g], -scores[g]))[0]]
        above = (scores > scores[best]) | ((scores == scores[best]) & (raw > raw[best]))
        rank = 1 + int(above.sum())
        ranks.append(rank if rank <= depth else None)
    return ranks


def tune(
    model: str,
    loaded: dict[str, Any],
    cache: VectorCache,
    first_gold: Callable[[Sequence[str], set[str]], int | None],
    metrics: Callable[[Sequence[int | None]], tuple[float, float, float]],
    depth: int,
) -> None:
    """Grid over (weight, cos_floor, cos_ceiling) on half A of every set; prints the best."""
    inputs: dict[str, list[Any]] = {}
    for name, (corpus, queries) in loaded.items():
        cvecs = cache.get([t for _, t in corpus])
        index, _ = build(model, corpus, cvecs)
        qa = [q for q in queries if part(q[0]) == "A"]
        inputs[name] = fusion_rows(index, qa, cache.get([q for _, q, _ in qa]), depth)
    base = MODELS[model]
    results = []
    floors = np.round(np.arange(base.cos_floor - 0.1, base.cos_floor + 0.051, 0.025), 3)
    ceilings = (0.95, 0.975, 1.0) if model.startswith("e5") else (0.8, 0.9, 1.0)
    for w, lo, hi in itertools.product((0.3, 0.4, 0.5, 0.6, 0.7, 0.8), floors, ceilings):
        if hi <= lo:
            continue
        spec = dataclasses.replace(base, weight=float(w), cos_floor=float(lo), cos_ceiling=hi)
        per = {n: metrics(fused_ranks(spec, inputs[n], depth)) for n in loaded}
        mean_mrr = statistics.mean(m[2] for m in per.values())
        results.append((mean_mrr, w, lo, hi, per))
    results.sort(key=lambda r: -r[0])
    print(f"tuning {model} on half A (mean MRR over the sets), best 10 of {len(results)}:")
    for mean_mrr, w, lo, hi, per in results[:10]:
        cells = "  ".join(f"{n[:4]} {m[0]:.3f}/{m[1]:.3f}/{m[2]:.3f}" for n, m in per.items())
        print(f"  weight {w:.1f} floor {lo:.2f} ceiling {hi:.2f}: mean MRR {mean_mrr:.4f}  {cells}")
    now = (base.weight, base.cos_floor, base.cos_ceiling)
    shipped = [r for r in results if (r[1], r[2], r[3]) == now]
    if shipped:
        print(
            f"  shipped ({base.weight}, {base.cos_floor}, {base.cos_ceiling}): rank"
            f" {results.index(shipped[0]) + 1}, mean MRR {shipped[0][0]:.4f}"
        )


# -- cross-language check ----------------------------------------------------------------------


def crosslang(
    models: Sequence[str],
    eval_root: Path,
    caches: dict[str, VectorCache],
    load: Callable[[Path], Any],
    fmt: Callable[..., str],
    first_gold: Callable[[Sequence[str], set[str]], int | None],
    depth: int,
    calibrate: bool = False,
) -> None:
    """French queries for English threads and the reverse, in one mixed index (bench/crosslang);
    with ``calibrate``, the cross-language min_score table (:func:`calibrate_crosslang`)."""
    rows = [json.loads(line) for line in CROSSLANG.open(encoding="utf-8")]
    replaced = {r["replaces"] for r in rows if r["direction"] == "en->fr"}
    corpus: list[tuple[str, str]] = []
    english: dict[str, list[Query]] = {}
    for name in sorted({r["set"] for r in rows} | {"mqp_curai", "rqe_clinical_doctor_questions"}):
        c, english[name] = load(eval_root / name)
        corpus.extend((cid, text) for cid, text in c if cid not in replaced)
    with (eval_root / FRENCH_DISTRACTORS / "routing_eval.jsonl").open(encoding="utf-8") as f:
        french = [json.loads(line) for line in itertools.islice(f, N_FRENCH_DISTRACTORS + 1000)]
    corpus.extend((row["id"], row["text"]) for row in french[:N_FRENCH_DISTRACTORS])
    english_text = {qid: q for qs in english.values() for qid, q, _ in qs}
    for r in rows:
        if r["direction"] == "en->fr":
            corpus.append((f"xl-fr-{r['replaces']}", r["thread"]))
    queries: dict[str, list[Query]] = {"fr->en": [], "en->fr": []}
    for r in rows:
        text = r["query"] if r["direction"] == "fr->en" else english_text[r["source_qid"]]
        queries[r["direction"]].append((r["id"], text, set(r["gold"])))
    french_ids = {cid for cid, _ in corpus if cid.startswith(("lfs-", "xl-fr-"))}
    n_fr = len(french_ids)
    print(
        f"crosslang: {sum(map(len, queries.values()))} queries in {CROSSLANG.name}; index of"
        f" {len(corpus)} threads ({len(corpus) - n_fr} English, {n_fr} French)"
    )
    if calibrate:
        # Unrelated questions: French ones not in the index (the interns' questions after the
        # distractors) for the English threads, English ones whose answer was not translated
        # for the French threads; each searched among the other language's threads only.
        foreign = {"fr->en": [row["text"] for row in french[N_FRENCH_DISTRACTORS:]], "en->fr": []}
        for name in ("mqp_curai", "rqe_clinical_doctor_questions"):
            kept = [q for _, q, gold in english[name] if not gold & replaced]
            foreign["en->fr"].extend(random.Random(0).sample(kept, 500))
        other_side = {"fr->en": french_ids, "en->fr": {c for c, _ in corpus} - french_ids}
    for model in models:
        cache = caches[model]
        cvecs = cache.get([t for _, t in corpus])
        hindex, ranks = rankers(model, corpus, cvecs, depth)
        if calibrate:
            calibrate_crosslang(hindex, foreign, other_side, cache, CROSS_THRESHOLDS)
        for direction, qs in queries.items():
            qvecs = cache.get([q for _, q, _ in qs])
            for label, rank in ranks.items():
                if label == "lexical" and model != models[0]:
                    continue
                print(fmt(label, f"crosslang {direction}", *run(rank, qs, qvecs, first_gold)))

            def shown(q: str, qv: np.ndarray, index: HybridIndex = hindex) -> list[str]:
                return [h.thread_id for h in index.search(q, query_vector=qv, limit=3)]

            label = f"hybrid {model}, min_score default"
            print(fmt(label, f"crosslang {direction}", *run(shown, qs, qvecs, first_gold)))
        sys.stdout.flush()


CROSS_THRESHOLDS = (0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55)
LEXICAL_FOREIGN = (0.038 + 0.194) / 2
"""The lexical engine's foreign-answered rate at its 0.45, averaged over mqp and rqe: the rule's
bound for the hybrid's min_score, and for its cross-language min_score."""


def calibrate_crosslang(
    index: HybridIndex,
    foreign: dict[str, list[str]],
    same_side: dict[str, set[str]],
    cache: VectorCache,
    thresholds: Sequence[float],
) -> float | None:
    """The cross-language min_score by the hybrid's own rule: per threshold, how often a
    question gets an answer from the threads of the other language when none answers it
    (``foreign[direction]``, searched with the threads of its own language excluded), and the
    lowest threshold whose rate, averaged over the two directions, is at most LEXICAL_FOREIGN.
    The cross-language check's own pairs are not used."""
    tops: dict[str, np.ndarray] = {}
    for direction, texts in foreign.items():
        vectors = cache.get(texts)
        scores = []
        for text, vector in zip(texts, vectors, strict=True):
            hits = index.search(
                text, query_vector=vector, limit=1, min_score=0.0, exclude=same_side[direction]
            )
            scores.append(hits[0].score if hits else 0.0)
        tops[direction] = np.asarray(scores)
    sizes = ", ".join(f"{d} {len(t)}" for d, t in foreign.items())
    print(f"crosslang min_score ({index.spec.name}; unrelated questions: {sizes}):")
    chosen = None
    for t in thresholds:
        rates = {d: float((top >= t).mean()) for d, top in tops.items()}
        mean = statistics.mean(rates.values())
        if chosen is None and mean <= LEXICAL_FOREIGN:
            chosen = t
        cells = "  ".join(f"{d} answered {r:.3f}" for d, r in rates.items())
        print(f"  {t:.2f}: {cells}  mean {mean:.3f}{'  <- rule' if chosen == t else ''}")
    print(f"  rule: the lowest threshold with mean <= {LEXICAL_FOREIGN:.3f}: {chosen}")
    return chosen


def calibrate_hybrid(
    index: HybridIndex,
    queries: Sequence[Query],
    qvecs: np.ndarray,
    foreign: Sequence[str],
    fvecs: np.ndarray,
    set_name: str,
    thresholds: Iterable[float],
) -> None:
    """The min_score table of eval_related.calibrate, for the hybrid score."""
    top: list[tuple[float, bool]] = []
    top3: list[tuple[float, bool]] = []
    for (_, q, gold), qv in zip(queries, qvecs, strict=True):
        hits: list[Hit] = index.search(q, query_vector=qv, limit=3, min_score=0.0)
        if hits:
            top.append((hits[0].score, hits[0].thread_id in gold))
        top3.extend((h.score, h.thread_id in gold) for h in hits)
    far = [
        index.search(q, query_vector=v, limit=1, min_score=0.0)
        for q, v in zip(foreign, fvecs, strict=True)
    ]
    far_scores = [h[0].score if h else 0.0 for h in far]
    print(f"  hybrid {index.spec.name} min_score calibration, {set_name}:")
    for th in thresholds:
        kept = [g for s, g in top if s >= th]
        kept3 = [g for s, g in top3 if s >= th]
        prec = sum(kept) / len(kept) if kept else 0.0
        prec3 = sum(kept3) / len(kept3) if kept3 else 0.0
        far_rate = sum(1 for s in far_scores if s >= th) / max(1, len(far_scores))
        print(
            f"    >= {th:.2f}: top-1 precision {prec:.3f}, answered {len(kept) / len(queries):.3f};"
            f" top-3 gold share {prec3:.3f}; foreign answered {far_rate:.3f}"
        )


def models_available(wanted: Sequence[str]) -> list[str]:
    found = []
    for model in wanted:
        embedder, reason = load_embedder(model)
        if embedder is None:
            print(f"skipping {model}: {reason}")
        else:
            found.append(model)
    return found


__all__ = ["semantic"]
