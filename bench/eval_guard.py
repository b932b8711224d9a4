"""Measure the patient-data guard and the urgent-wording plugin; prints figures.

Section 1: precision and recall per kind on ``bench/guard_testset.jsonl`` (split ``dev``, used
while tuning, and ``heldout``, written at the same time but not used for tuning), then the share
of question texts in ``../shared/eval`` on which the guard finds anything (these are public,
de-identified questions: every hit there is a false positive or a leak worth reading), with counts
per kind and a sample of hits.

Section 2: how often the urgent-wording plugin fires on the same shared texts, with a sample.

Usage: ``python bench/eval_guard.py [--sample N] [--testset PATH] [--eval-dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plugins.patient_data_guard import KINDS, find_patient_data  # noqa: E402
from plugins.urgent_wording import assess_urgency  # noqa: E402

TRIGGERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "title+capitalised word",
        re.compile(r"\b(?:Mme|M\.|Mr|Mrs|Ms|Madame|Monsieur|[Pp]atiente?)\s+[A-Z]"),
    ),
    ("run of 9+ digits", re.compile(r"(?:\d[ .\-]?){8,}\d")),
    (
        "birth cue",
        re.compile(
            r"\b(?:née?s? le|born|DOB|DDN|date de naissance|date of birth)\b", re.IGNORECASE
        ),
    ),
    ("@", re.compile(r"@")),
)
EVAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "eval"
TESTSET = ROOT / "bench" / "guard_testset.jsonl"


def load_testset(path: Path) -> list[dict[str, object]]:
    """The labelled rows: text, kinds, split."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def shared_texts(eval_dir: Path) -> Iterator[tuple[str, str]]:
    """(source, text) for every question text in the shared evaluation sets."""
    fields = {"corpus.jsonl": "text", "related_eval.jsonl": "query", "routing_eval.jsonl": "text"}
    for path in sorted(eval_dir.glob("*/*.jsonl")):
        field = fields.get(path.name)
        if field is None:
            continue
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield f"{path.parent.name}/{path.name}", str(json.loads(line)[field])


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.3f}" if b else "  -  "


def score(rows: list[dict[str, object]]) -> None:
    """Print precision/recall per kind, micro-averaged, and per text (any finding)."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    text_tp = text_fp = text_fn = 0
    errors: list[str] = []
    for row in rows:
        gold = set(row["kinds"])  # type: ignore[call-overload]
        pred = {d.kind for d in find_patient_data(str(row["text"]))}
        for k in KINDS:
            tp[k] += k in gold and k in pred
            fp[k] += k in pred and k not in gold
            fn[k] += k in gold and k not in pred
        text_tp += bool(gold) and bool(pred)
        text_fp += bool(pred) and not gold
        text_fn += bool(gold) and not pred
        if gold != pred:
            errors.append(f"    gold={sorted(gold)} pred={sorted(pred)}: {row['text']}")
    print(f"  {'kind':<10} {'support':>7} {'TP':>4} {'FP':>4} {'FN':>4} {'prec':>6} {'recall':>6}")
    for k in KINDS:
        sup = tp[k] + fn[k]
        p, r = _ratio(tp[k], tp[k] + fp[k]), _ratio(tp[k], sup)
        print(f"  {k:<10} {sup:>7} {tp[k]:>4} {fp[k]:>4} {fn[k]:>4} {p:>6} {r:>6}")
    t, f_, n = sum(tp.values()), sum(fp.values()), sum(fn.values())
    p, r = _ratio(t, t + f_), _ratio(t, t + n)
    print(f"  {'micro':<10} {t + n:>7} {t:>4} {f_:>4} {n:>4} {p:>6} {r:>6}")
    negatives = sum(1 for r in rows if not r["kinds"])
    print(
        f"  any-finding (hold decision): precision {_ratio(text_tp, text_tp + text_fp)}, "
        f"recall {_ratio(text_tp, text_tp + text_fn)}, "
        f"false holds {text_fp}/{negatives} negative texts"
    )
    if errors:
        print("  disagreements:")
        print("\n".join(errors))


def main() -> None:
    """Run both sections and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=15, help="hits to print per section")
    parser.add_argument("--testset", type=Path, default=TESTSET)
    parser.add_argument("--eval-dir", type=Path, default=EVAL_DIR)
    args = parser.parse_args()

    rows = load_testset(args.testset)
    print("== 1. Patient-data guard ==")
    for split in ("dev", "heldout"):
        part = [r for r in rows if r.get("split", "dev") == split]
        n_pos = sum(1 for r in part if r["kinds"])
        print(f"\n-- {split}: {len(part)} texts ({n_pos} with patient data)")
        score(part)

    texts = list(shared_texts(args.eval_dir))
    if not texts:
        print(f"\nno shared evaluation texts under {args.eval_dir}")
        return
    hits: list[tuple[str, str, list[str]]] = []
    per_kind: Counter[str] = Counter()
    per_source: Counter[str] = Counter()
    for source, text in texts:
        kinds = sorted({d.kind for d in find_patient_data(text)})
        if kinds:
            hits.append((source, text, kinds))
            per_kind.update(kinds)
            per_source[source] += 1
    print(
        f"\n-- shared eval texts: {len(texts)} texts, {len(hits)} with a finding "
        f"(false-positive rate {len(hits) / len(texts):.4f})"
    )
    print("  per kind: " + ", ".join(f"{k} {per_kind[k]}" for k in KINDS))
    # How many texts gave the guard something to reject, so that a zero means something.
    print(
        "  texts with a trigger the guard had to judge: "
        + ", ".join(f"{name} {sum(1 for _, t in texts if rx.search(t))}" for name, rx in TRIGGERS)
    )
    for source, count in per_source.most_common():
        print(f"  {source}: {count}")
    rng = random.Random(0)
    for source, text, kinds in rng.sample(hits, min(args.sample, len(hits))):
        print(f"  [{','.join(kinds)}] {source}: {text[:220]}")

    print("\n== 2. Urgent wording ==")
    fired: list[tuple[str, str, str]] = []
    for source, text in texts:
        result = assess_urgency(text)
        if result is not None:
            fired.append((source, text, result.category))
    print(f"  fires on {len(fired)}/{len(texts)} shared eval texts ({len(fired) / len(texts):.4f})")
    print(
        "  per category: "
        + ", ".join(f"{c} {n}" for c, n in Counter(c for _, _, c in fired).most_common())
    )
    for source, text, category in rng.sample(fired, min(args.sample, len(fired))):
        print(f"  [{category}] {source}: {text[:220]}")


if __name__ == "__main__":
    main()
