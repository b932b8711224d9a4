"""bench/semantic_eval.py's ranker of several hybrids at once (eval_related.py prints it)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import semantic_eval as sem

from peerbot.core.semantic import MODELS, HybridIndex

CORPUS = [
    ("t1", "douleur thoracique et essoufflement à l'effort"),
    ("t2", "douleur abdominale après le repas"),
    ("t3", "essoufflement la nuit en position couchée"),
    ("t4", "éruption cutanée sous antibiotique"),
]


def _index(model: str, seed: int) -> tuple[HybridIndex, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(CORPUS), MODELS[model].dim)).astype(np.float32)
    index = HybridIndex(model)
    for (cid, text), vector in zip(CORPUS, vectors, strict=True):
        index.add(cid, text, room_id="!eval", vector=vector)
    return index, vectors


def test_fused_hybrids_adds_each_hybrids_weighted_scores() -> None:
    use, use_vectors = _index("use-m3-q6", 0)
    e5, e5_vectors = _index("e5-small-q4", 1)
    query = "essoufflement à l'effort"
    # The query's vector is t3's for USE and t4's for e5: the two hybrids disagree.
    qv = np.concatenate([use_vectors[2], e5_vectors[3]])
    alone = {
        name: {
            h.thread_id: h.score
            for h in index.search(query, query_vector=v, limit=4, min_score=0.0)
        }
        for name, index, v in (("use", use, use_vectors[2]), ("e5", e5, e5_vectors[3]))
    }
    for weight in (0.0, 0.3, 1.0):
        ranked = sem.fused_hybrids([use, e5], (1 - weight, weight), 4)(query, qv)
        total = {
            t: (1 - weight) * alone["use"].get(t, 0.0) + weight * alone["e5"].get(t, 0.0)
            for t in set(alone["use"]) | set(alone["e5"])
        }
        assert ranked == sorted(total, key=lambda t: (-total[t], t))
    assert sem.fused_hybrids([use, e5], (1.0, 0.0), 4)(query, qv)[0] == max(
        alone["use"], key=lambda t: alone["use"][t]
    )


def test_e5_prefixes_ranks_as_the_engine_does() -> None:
    """bench/e5_prefixes.py re-ranks fusion inputs itself for its grid: at the model's own
    settings its hit@1 / hit@3 / MRR must be the engine's search results' figures."""
    import e5_prefixes
    from eval_related import first_gold, metrics

    index, vectors = _index("e5-small-q4", 2)
    # Words shared by two threads, vectors near one of them: some gold first, some not.
    queries = [("q0", "douleur", {"t2"}), ("q1", "essoufflement", {"t3"}), ("q2", "repas", {"t2"})]
    qvecs = [vectors[0], vectors[2], vectors[3]]
    engine = metrics(
        [
            first_gold(
                [h.thread_id for h in index.search(q, query_vector=v, limit=50, min_score=0.0)],
                gold,
            )
            for (_, q, gold), v in zip(queries, qvecs, strict=True)
        ]
    )
    halves = e5_prefixes.hybrid_inputs(index, queries, [v / np.linalg.norm(v) for v in qvecs])
    assert e5_prefixes.hybrid(MODELS["e5-small-q4"], halves["A"] + halves["B"]) == engine
    assert 0 < engine[2] < 1  # Neither every query right nor every one wrong.
