"""The related-threads index: add, update, remove and search past questions (pure).

Two stages. Candidates come from an inverted index of normalised tokens scored like BM25
(binary term frequency, IDF-weighted), summed with numpy over compact ``array('i')`` postings.
The best few are then re-scored into a number in [0, 1] that means the same thing for every
query: an IDF-weighted overlap of the two token sets blended with rapidfuzz ``token_set_ratio``
over the normalised texts (never ``WRatio``).

Typos: a query word that no indexed thread contains is mapped to the closest indexed words within
one or two edits (OSA distance, so swapped letters count once). Accents and case are folded.

Privacy: the index keeps no text, only token ids, and a word leaves the vocabulary when the last
thread using it is removed. Thread texts never go through ``textnorm.fold``, whose LRU cache would
keep them after a redaction.

long: one index and its compact data structures; splitting them would spread the invariants
(slots, postings, vocabulary recycling) over several files.
"""

from __future__ import annotations

import math
import re
import unicodedata
from array import array
from bisect import bisect_left
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np
from rapidfuzz import fuzz, process
from rapidfuzz.distance import OSA

from peerbot.core.textnorm import STOPWORDS

__all__ = ["DEFAULT_MIN_SCORE", "Hit", "RelatedIndex", "normalise"]

DEFAULT_MIN_SCORE: float = 0.45
"""Below this, results are mostly unrelated (calibration: bench/RESULTS-related.md)."""

# Tunables, measured by bench/eval_related.py (see bench/RESULTS-related.md); module-level so
# the benchmark can vary them.
K1 = 1.2
B = 0.75
CANDIDATES = 24
"""How many BM25 candidates are re-scored."""
BLEND = 0.7
"""Weight of the IDF overlap in the final score; the rest is token_set_ratio."""
DOC_SIDE = 0.3
"""Overlap = (matched/query mass)^(1-DOC_SIDE) * (matched/thread mass)^DOC_SIDE."""
SOLVED_BONUS = 0.02
"""Added to a solved thread's ranking key only: it wins near ties and never passes min_score."""
FUZZY_PENALTY = 0.8
"""A typo-corrected query word weighs this much of the word it was mapped to."""
FUZZY_MIN_LEN = 4
STEM = 2
"""0: none; 1: plurals; 2: plurals and -ing/-ed/-e endings."""
ABBREVIATIONS = False
"""Measured neutral on the eval sets, so off; folding already makes ECG and ÉCG one word."""
EXTRA_STOPWORDS = True

# Letters that NFKD does not decompose into a base letter plus accents (as in textnorm).
_SPECIAL = (("œ", "oe"), ("æ", "ae"), ("ß", "ss"), ("ø", "o"), ("đ", "d"), ("ł", "l"), ("ı", "i"))
_WORD = re.compile(r"[0-9a-z]+")
_COMBINING = re.compile("[\u0300-\u036f\u00ad]+")  # accents, and soft hyphens

# Words that carry no topic in questions people ask peers (both languages); IDF would mostly
# discount them anyway, but they inflate token_set_ratio.
_EXTRA_STOPWORDS = frozenset(
    """
    also anyone anything get got ive im dont doesnt know please thanks thank would like want
    may might must need one us use used using way well yes ok okay hi hello dear doctor doc
    bonjour merci svp stp quelqu quelquun avez peux pouvez sais savez ete etait
    """.split()
)
_STOP_ALL = STOPWORDS | _EXTRA_STOPWORDS

# Abbreviations common in French and English medical chat, mapped to one canonical token so
# "ECG", "EKG" and "electrocardiogram" meet. Kept small on purpose: only unambiguous ones (no
# "MI", "PE", "FA", "DM", which mean other things too). Off by default: see ABBREVIATIONS.
_ABBREVIATIONS: dict[str, str] = {
    "ecg": "electrocardiogram",
    "ekg": "electrocardiogram",
    "electrocardiogramme": "electrocardiogram",
    "eeg": "electroencephalogram",
    "electroencephalogramme": "electroencephalogram",
    "irm": "mri",
    "tdm": "ct",
    "htn": "hypertension",
    "hta": "hypertension",
    "avc": "stroke",
    "cva": "stroke",
    "idm": "infarction",
    "infarctus": "infarction",
    "bpco": "copd",
    "dvt": "thrombosis",
    "tvp": "thrombosis",
    "thrombose": "thrombosis",
    "embolie": "embolism",
    "afib": "fibrillation",
    "acfa": "fibrillation",
    "sida": "aids",
    "vih": "hiv",
    "abx": "antibiotic",
    "antibiotique": "antibiotic",
    "tb": "tuberculosis",
    "tuberculose": "tuberculosis",
    "dt2": "diabetes",
    "t2dm": "diabetes",
}


def _words(text: str) -> list[str]:
    """Lower-cased, accent-free ASCII words of a text (textnorm.tokens, uncached and faster)."""
    text = text.lower()
    if not text.isascii():
        for char, repl in _SPECIAL:
            if char in text:
                text = text.replace(char, repl)
        # Other non-ASCII characters (other scripts, dashes) then separate words, as in textnorm.
        text = _COMBINING.sub("", unicodedata.normalize("NFKD", text))
    return _WORD.findall(text)


_STEMMABLE = frozenset("sxgdey")
"""Last letters of the words _stem may change."""


def _stem(word: str) -> str:
    """Light stemming shared by French and English: plurals, then (STEM=2) a few endings."""
    n = len(word)
    if n < 4:
        return word
    last = word[-1]
    if last == "s":
        if n >= 5 and word.endswith("ies"):
            word = word[:-2]  # allergies -> allergi, like allergy and allergie
        elif word[-2] not in "sui":
            word = word[:-1]  # douleurs -> douleur; keeps -ss, -us, -is
    elif last == "y":
        word = word[:-1] + "i"  # allergy -> allergi
    elif last == "x" and n >= 6:
        if word.endswith("aux") and word[-4] != "e":
            word = word[:-3] + "al"  # hopitaux -> hopital
        elif word.endswith("eux") or word.endswith("eaux"):
            word = word[:-1]  # reseaux -> reseau; yeux is too short
    if STEM < 2:
        return word
    n = len(word)
    if n >= 6 and word.endswith("ing"):
        word = word[:-3]  # bleeding -> bleed
        n -= 3
    if n >= 5 and word.endswith("ed") and word[-3] != "e":
        word = word[:-2]  # infected -> infect; keeps -eed
        n -= 2
    if n >= 5 and word[-1] == "e":
        word = word[:-1]  # cardiaque -> cardiaqu like cardiaques, house -> hous like housed
    return word


def normalise(text: str) -> list[str]:
    """Folded, stop-word-free, lightly stemmed tokens of a text, in order (French and English)."""
    stop = _STOP_ALL if EXTRA_STOPWORDS else STOPWORDS
    if ABBREVIATIONS:
        words = [_ABBREVIATIONS.get(w, w) for w in _words(text) if w not in stop]
    elif STEM:
        # The common path in one comprehension: it is most of the cost of indexing a thread.
        stemmable = _STEMMABLE
        return [_stem(w) if w[-1] in stemmable else w for w in _words(text) if w not in stop]
    else:
        return [w for w in _words(text) if w not in stop]
    if STEM:
        words = [_stem(w) for w in words]
        words = [_ABBREVIATIONS.get(w, w) for w in words]
    return words


@dataclass(frozen=True)
class Hit:
    """A related thread: its id, its room and a relevance score in [0, 1]."""

    thread_id: str
    room_id: str
    score: float


class _Vocabulary:
    """The indexed words: ids, postings (document slots), and letter bigrams for fuzzy lookup."""

    def __init__(self) -> None:
        # Vocabulary: word <-> id, with document frequency; ids are recycled when a word's last
        # thread goes, so no removed text survives as a vocabulary entry.
        self._word_id: dict[str, int] = {}
        self._words: list[str | None] = []
        self._postings: list[array[int]] = []  # word id -> sorted doc slots; len() is the df
        self._free_words: list[int] = []
        # Letter bigrams of the vocabulary ("#w", "wo", "or", "rd", "d#") -> sorted word ids, to
        # find the indexed words near a misspelt query word without scanning the vocabulary.
        self._grams: dict[str, array[int]] = {}

    def _new_word(self, word: str) -> int:
        if self._free_words:
            wid = self._free_words.pop()
            self._words[wid] = word
        else:
            wid = len(self._words)
            self._words.append(word)
            self._postings.append(array("i"))
        self._word_id[word] = wid
        if not word.isdigit():
            grams = self._grams
            padded = f"#{word}#"
            for i in range(len(padded) - 1):
                gram = padded[i : i + 2]
                post = grams.get(gram)
                if post is None:
                    grams[gram] = array("i", (wid,))
                elif post[-1] < wid:
                    post.append(wid)
                elif post[-1] != wid:  # a recycled id; a repeated bigram is stored once
                    at = bisect_left(post, wid)
                    if at == len(post) or post[at] != wid:
                        post.insert(at, wid)
        return wid

    def _drop_word(self, wid: int) -> None:
        word = self._words[wid]
        assert word is not None
        del self._word_id[word]
        self._words[wid] = None
        self._postings[wid] = array("i")
        self._free_words.append(wid)
        if not word.isdigit():
            for gram in _bigrams(word):
                post = self._grams[gram]
                del post[bisect_left(post, wid)]
                if not post:
                    del self._grams[gram]

    def _close_words(self, word: str) -> list[int]:
        """Indexed words within one edit (two for long words) of an unknown query word."""
        if len(word) < FUZZY_MIN_LEN or word.isdigit():
            return []
        max_dist = 1 if len(word) < 8 else 2
        grams = _bigrams(word)
        posts = [self._grams[g] for g in grams if g in self._grams]
        if not posts:
            return []
        # An edit changes at most three distinct bigrams (a swap), so a close word shares the rest.
        need = max(1, len(grams) - 3 * max_dist)
        ids = np.concatenate([np.frombuffer(p, dtype=np.int32) for p in posts])
        counts = np.bincount(ids)
        cands = np.flatnonzero(counts >= need)
        words = self._words
        choices = [words[int(w)] for w in cands]
        found = process.extract(
            word, choices, scorer=OSA.distance, score_cutoff=max_dist, limit=None
        )
        if not found:
            return []
        best = min(dist for _, dist, _ in found)
        close = [int(cands[i]) for _, dist, i in found if dist == best]
        # Among equally close words, the most used is the likeliest intended spelling.
        close.sort(key=lambda wid: (-len(self._postings[wid]), wid))
        return close[:3]


class RelatedIndex(_Vocabulary):
    """An incremental fuzzy index of question threads."""

    def __init__(self) -> None:
        super().__init__()
        # Documents live in slots; slot-indexed parallel arrays keep them compact.
        self._slot_of: dict[str, int] = {}
        self._thread: list[str | None] = []
        self._toks: list[array[int] | None] = []  # distinct token ids, in first-seen order
        self._room = array("i")
        self._solved = bytearray()
        self._dlen = array("f")  # distinct tokens per doc; 0 for free slots
        self._free_slots: list[int] = []
        self._total_len = 0
        self._room_id: dict[str, int] = {}
        self._room_names: list[str] = []
        self._room_live: list[int] = []  # room id -> live threads

    # -- maintenance ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, thread_id: object) -> bool:
        return thread_id in self._slot_of

    def rooms(self) -> set[str]:
        """The rooms that have at least one indexed thread."""
        return {name for name, n in zip(self._room_names, self._room_live, strict=True) if n}

    def add(self, thread_id: str, text: str, *, room_id: str, solved: bool = False) -> None:
        """Index a thread's question, replacing any earlier version of the same thread."""
        if thread_id in self._slot_of:
            self.remove(thread_id)
        room = self._room_id.get(room_id)
        if room is None:
            room = self._room_id[room_id] = len(self._room_names)
            self._room_names.append(room_id)
            self._room_live.append(0)
        self._room_live[room] += 1
        if self._free_slots:
            slot = self._free_slots.pop()
            self._thread[slot] = thread_id
            self._room[slot] = room
            self._solved[slot] = solved
        else:
            slot = len(self._thread)
            self._thread.append(thread_id)
            self._toks.append(None)
            self._room.append(room)
            self._solved.append(solved)
            self._dlen.append(0.0)
        self._slot_of[thread_id] = slot
        self._index_text(slot, text)

    def update_text(self, thread_id: str, text: str) -> None:
        """Replace the indexed text of a thread (an edit); unknown threads are ignored."""
        slot = self._slot_of.get(thread_id)
        if slot is None:
            return
        self._unindex_text(slot)
        self._index_text(slot, text)

    def set_solved(self, thread_id: str, solved: bool) -> None:
        """Mark a thread solved or not; unknown threads are ignored."""
        slot = self._slot_of.get(thread_id)
        if slot is not None:
            self._solved[slot] = solved

    def remove(self, thread_id: str) -> None:
        """Forget a thread and every word only it used (a redaction); unknown ids are ignored."""
        slot = self._slot_of.pop(thread_id, None)
        if slot is None:
            return
        self._unindex_text(slot)
        self._room_live[self._room[slot]] -= 1
        self._thread[slot] = None
        self._room[slot] = -1
        self._solved[slot] = 0
        self._free_slots.append(slot)

    def _index_text(self, slot: int, text: str) -> None:
        words = list(dict.fromkeys(normalise(text)))
        get = self._word_id.get
        ids = array("i", [get(w, -1) for w in words])
        if -1 in ids:
            for i, word in enumerate(words):
                if ids[i] == -1:
                    ids[i] = self._new_word(word)
        postings = self._postings
        if slot == len(self._thread) - 1:
            # The newest slot: every posting holds smaller slots only, so appending keeps order.
            for wid in ids:
                postings[wid].append(slot)
        else:
            for wid in ids:
                post = postings[wid]
                post.insert(bisect_left(post, slot), slot)
        self._toks[slot] = ids
        self._dlen[slot] = float(len(ids))
        self._total_len += len(ids)

    def _unindex_text(self, slot: int) -> None:
        ids = self._toks[slot]
        if ids is None:
            return
        for wid in ids:
            post = self._postings[wid]
            del post[bisect_left(post, slot)]
            if not post:
                self._drop_word(wid)
        self._total_len -= len(ids)
        self._dlen[slot] = 0.0
        self._toks[slot] = None

    # -- search -----------------------------------------------------------------------------

    def _in_rooms(self, rooms: Iterable[str]) -> np.ndarray:
        """Per slot: is the slot's thread in one of these rooms (free slots: no)."""
        allowed = np.zeros(len(self._room_names) + 1, dtype=bool)
        for name in rooms:
            rid = self._room_id.get(name)
            if rid is not None:
                allowed[rid] = True
        result: np.ndarray = allowed[np.frombuffer(self._room, dtype=np.int32)]
        return result

    def _idf(self, wid: int) -> float:
        n = len(self._slot_of)
        df = len(self._postings[wid])
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def _query_terms(self, words: list[str]) -> tuple[dict[int, float], float, list[str]]:
        """Query word ids with weights, the weight of words found nowhere, the corrected words."""
        terms: dict[int, float] = {}
        missing = 0.0
        corrected: list[str] = []
        unknown_idf = math.log(1.0 + (len(self._slot_of) + 0.5) / 0.5)
        for word in dict.fromkeys(words):
            wid = self._word_id.get(word)
            if wid is not None:
                terms[wid] = max(terms.get(wid, 0.0), self._idf(wid))
                corrected.append(word)
                continue
            matches = self._close_words(word)
            if not matches:
                missing += unknown_idf
                corrected.append(word)
                continue
            weights = [FUZZY_PENALTY * self._idf(wid) for wid in matches]
            for wid, weight in zip(matches, weights, strict=True):
                terms[wid] = max(terms.get(wid, 0.0), weight)
            # The misspelt word counts once in the query's mass, at its best match's full weight.
            missing += max(weights) / FUZZY_PENALTY - sum(weights)
            corrected.append(self._words[matches[0]] or word)
        return terms, missing, corrected

    def search(
        self,
        query: str,
        *,
        limit: int = 3,
        min_score: float = DEFAULT_MIN_SCORE,
        rooms: Collection[str] | None = None,
        exclude: Collection[str] = (),
    ) -> list[Hit]:
        """The threads most related to a query, best first, each scoring at least min_score."""
        if limit <= 0 or not self._slot_of:
            return []
        terms, missing, qwords = self._query_terms(normalise(query))
        if not terms:
            return []
        slots = self._candidates(terms, rooms, exclude, max(CANDIDATES, limit))
        if not slots:
            return []
        overlap, scores = self._lexical_scores(terms, missing, qwords, slots)
        return self._ranked(slots, scores, overlap, limit, min_score)

    def _lexical_scores(
        self, terms: dict[int, float], missing: float, qwords: list[str], slots: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """IDF overlap and final lexical score in [0, 1] of each slot (for hybrid rankers too)."""
        overlap, set_ratio = self._features(terms, missing, " ".join(qwords), slots)
        scores = np.clip(BLEND * overlap + (1.0 - BLEND) * set_ratio, 0.0, 1.0)
        return overlap, scores

    def _ranked(
        self,
        slots: list[int],
        scores: np.ndarray,
        overlap: np.ndarray,
        limit: int,
        min_score: float,
    ) -> list[Hit]:
        """Hits for the slots scoring at least min_score, best first, solved threads nudged up.

        ``overlap`` is the second sort key (the IDF overlap here; the hybrid passes its own)."""
        ranked: list[tuple[float, float, str, int, float]] = []
        for i, slot in enumerate(slots):
            score = float(scores[i])
            if score < min_score:
                continue
            thread = self._thread[slot]
            assert thread is not None
            key = score + (SOLVED_BONUS if self._solved[slot] else 0.0)
            # Ties: the larger IDF overlap, then the thread id, so results never depend on order.
            ranked.append((-key, -float(overlap[i]), thread, slot, score))
        ranked.sort()
        return [
            Hit(thread, self._room_names[self._room[slot]], round(score, 4))
            for _, _, thread, slot, score in ranked[:limit]
        ]

    def _features(
        self, terms: dict[int, float], missing: float, qtext: str, slots: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """IDF overlap and token_set_ratio (both in [0, 1]) of the query with each slot."""
        toks = [self._toks[s] or array("i") for s in slots]
        lens = np.fromiter((len(t) for t in toks), dtype=np.intp, count=len(toks))
        ids = np.concatenate([np.frombuffer(t, dtype=np.int32) for t in toks])
        starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
        postings = self._postings
        df = np.fromiter((len(postings[w]) for w in ids.tolist()), dtype=np.float64, count=ids.size)
        idf = np.log1p((len(self._slot_of) - df + 0.5) / (df + 0.5))
        # A slot without tokens (the hybrid's vector stage finds such threads) sums to 0: the
        # appended 0 keeps reduceat in bounds, the mask zeroes what it gives empty slices.
        dmass = np.add.reduceat(np.append(idf, 0.0), starts) * (lens > 0)
        qids = np.fromiter(sorted(terms), dtype=np.int32, count=len(terms))
        qw = np.array([terms[int(w)] for w in qids])
        pos = np.minimum(np.searchsorted(qids, ids), len(qids) - 1)
        hit = np.append(np.where(qids[pos] == ids, qw[pos], 0.0), 0.0)
        matched = np.add.reduceat(hit, starts) * (lens > 0)
        qmass = float(qw.sum()) + missing
        with np.errstate(divide="ignore", invalid="ignore"):
            overlap = (matched / qmass) ** (1.0 - DOC_SIDE) * (matched / dmass) ** DOC_SIDE
        overlap = np.nan_to_num(overlap, nan=0.0, posinf=0.0)
        words = self._words
        texts = [" ".join([words[w] or "" for w in t]) for t in toks]
        ratio = process.cdist([qtext], texts, scorer=fuzz.token_set_ratio, dtype=np.float32)[0]
        return overlap, ratio.astype(np.float64) / 100.0

    def _candidates(
        self,
        terms: dict[int, float],
        rooms: Collection[str] | None,
        exclude: Collection[str],
        k: int,
    ) -> list[int]:
        """The k slots with the best binary-tf BM25 score for the query terms."""
        live = len(self._slot_of)
        avg = self._total_len / live if live else 1.0
        scores = np.zeros(len(self._thread), dtype=np.float32)
        for wid, weight in terms.items():
            post = np.frombuffer(self._postings[wid], dtype=np.int32)
            if post.size:
                scores[post] += weight
        for thread_id in exclude:
            slot = self._slot_of.get(thread_id)
            if slot is not None:
                scores[slot] = 0.0
        hit = np.flatnonzero(scores)
        if rooms is not None:
            hit = hit[self._in_rooms(rooms)[hit]]
        if not hit.size:
            return []
        dlen = np.frombuffer(self._dlen, dtype=np.float32)[hit]
        bm25 = scores[hit] * (K1 + 1.0) / (dlen * (K1 * B / avg) + (K1 * (1.0 - B) + 1.0))
        if hit.size > k:
            top = np.argpartition(-bm25, k - 1)[:k]
            hit, bm25 = hit[top], bm25[top]
        order = np.lexsort((hit, -bm25))
        return [int(s) for s in hit[order]]


def _bigrams(word: str) -> set[str]:
    padded = f"#{word}#"
    return {padded[i : i + 2] for i in range(len(padded) - 1)}
