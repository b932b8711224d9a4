"""Choose the learned router's blend by cross-validation on the TRAIN split of each routing set.

The test split is never read here (``bench/eval_routing.py`` scores it, once). For each set,
5 stratified folds of the train split (seed 0); on each fold, fitted on the other four:

- baseline: TF-IDF word 1–2 + char_wb 3–5 and ``LinearSVC(C=0.5)``, the textbook classifier;
- concat: the previous plugin model, the same TF-IDF with the unit-norm sentence embedding as
  extra columns of one SVM (weight 1, balanced class weights);
- the plugin's three scorers (``plugins/learned_model.py``): the SVM on TF-IDF, the SVM on
  embeddings, the embedding neighbours; each alone, then blended as
  ``svm + a * embedding_svm + b * neighbours`` (each centred per row and divided by its spread
  over all cross-validated scores) over a grid of ``a`` and ``b``.

It prints each accuracy and its difference from the baseline in points, and the grid's rows
sorted by their worst set. The plugin's weights (a=1, b=0.25) were the row with the best
worst set when the embedding scorer was a logistic regression (+1.3, +1.5, +1.9); the SVM that
replaced it, 4-5 times faster to train, was checked at those weights only (+1.4, +1.4, +1.9).

    .venv/bin/python bench/cv_routing.py [--data DIR]...
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.eval_routing import DEFAULT_SETS, EVAL_ROOT, load
from plugins import learned_model

FOLDS = 5
HEAD_WEIGHTS = (0.0, 0.5, 0.75, 1.0, 1.5)
NEIGHBOUR_WEIGHTS = (0.0, 0.25, 0.5)


def cross_validate(folder: Path, embedder: learned_model.SentenceEmbedder) -> dict[str, Any]:
    """Out-of-fold scores of every candidate on this set's train split."""
    import numpy as np
    from scipy.sparse import csr_matrix, hstack
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import LinearSVC

    train, _ = load(folder)
    texts = [r.text for r in train]
    classes = sorted({r.label for r in train})
    labels = np.array([classes.index(r.label) for r in train], dtype=np.int64)
    embedder.embed(texts)  # Each text embedded once; the folds read the embedder's cache.
    n, k = len(texts), len(classes)
    baseline = np.zeros(n, dtype=np.int64)
    concat = np.zeros(n, dtype=np.int64)
    parts = [np.zeros((n, k)) for _ in range(3)]
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=0)
    for tr, te in folds.split(np.zeros(n), labels):
        features, sparse_tr, dense_tr = learned_model.Features.fit([texts[i] for i in tr], embedder)
        sparse_te, dense_te = features.transform([texts[i] for i in te])
        baseline[te] = LinearSVC(C=0.5).fit(sparse_tr, labels[tr]).predict(sparse_te)
        assert dense_tr is not None and dense_te is not None
        joined_tr = hstack([sparse_tr, csr_matrix(dense_tr)], format="csr")
        joined_te = hstack([sparse_te, csr_matrix(dense_te)], format="csr")
        svm = LinearSVC(C=0.5, class_weight="balanced").fit(joined_tr, labels[tr])
        concat[te] = svm.predict(joined_te)
        scorer = learned_model._fit_scorer(sparse_tr, dense_tr, labels[tr], np.ones(tr.size))
        for whole, part in zip(parts, scorer.parts(sparse_te, dense_te, k), strict=True):
            whole[te] = part
    return {"labels": labels, "baseline": baseline, "concat": concat, "parts": parts}


def main(argv: Sequence[str] | None = None) -> int:
    """Print the cross-validated table for each set, then the blend grid over all of them."""
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", type=Path, help="a routing set folder")
    args = parser.parse_args(argv)
    folders = args.data or [EVAL_ROOT / name for name in DEFAULT_SETS]
    embedder = learned_model.load_embedder(learned_model.DEFAULT_EMBEDDINGS)
    results = {}
    for folder in folders:
        started = time.perf_counter()
        result = cross_validate(folder, embedder)
        results[folder.name] = result
        gold = result["labels"]
        base = float((result["baseline"] == gold).mean())

        def line(name: str, acc: float, base: float = base) -> str:
            return f"  {name:36} {acc:.4f} ({100 * (acc - base):+.2f})"

        svm, head, neighbours = result["parts"]
        print(
            f"{folder.name}: train split only, {FOLDS}-fold CV over {gold.size} rows "
            f"({time.perf_counter() - started:.0f} s)\n"
            + "\n".join(
                [
                    line("baseline TF-IDF + LinearSVC(C=0.5)", base),
                    line("concat (previous model)", float((result["concat"] == gold).mean())),
                    line("svm on TF-IDF alone", float((svm.argmax(1) == gold).mean())),
                    line("svm on embeddings alone", float((head.argmax(1) == gold).mean())),
                    line("neighbours alone", float((neighbours.argmax(1) == gold).mean())),
                ]
            ),
            flush=True,
        )
    rows = []
    for a, b in itertools.product(HEAD_WEIGHTS, NEIGHBOUR_WEIGHTS):
        gains = []
        for result in results.values():
            gold = result["labels"]
            svm, head, neighbours = result["parts"]
            spread = [learned_model._spread(p) for p in result["parts"]]
            blended = svm / spread[0] + a * head / spread[1] + b * neighbours / spread[2]
            acc = float((blended.argmax(1) == gold).mean())
            gains.append(100 * (acc - float((result["baseline"] == gold).mean())))
        rows.append((min(gains), float(np.mean(gains)), a, b, gains))
    print("blend svm + a * embedding svm + b * neighbours, points over the baseline per set:")
    for worst, mean, a, b, gains in sorted(rows, reverse=True):
        shown = " ".join(f"{g:+.2f}" for g in gains)
        print(f"  a={a:<4} b={b:<4} worst {worst:+.2f} mean {mean:+.2f} | {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
