"""Measure the patient-data guard and the urgent-wording plugin; prints figures.

Section 1, the guard, side by side with the guard as it was before issue 11 (read from git, so
nothing old is kept in the tree):

* recall per kind on three labelled sets (``bench/GUARD_SETS.md`` says how each was written):
  ``guard_testset.jsonl`` (the first set, "v1"), ``guard_tune.jsonl`` (read while tuning) and
  ``guard_heldout.jsonl`` (scored at the end; its disagreements are printed only with
  ``--show-heldout``); micro recall over the kinds the first guard promised and over the new ones;
  precision; holds of negative texts;
* the false-hold rate: the share of every question text in ``../shared/eval`` (corpus, queries
  and routing rows of every set) on which the guard finds anything. These are public texts
  about no patient present in the room, so every hit is a hold nobody wants. The texts are
  split in two halves by a hash: hits were read only in half A while tuning; half B is only
  counted;
* the time per text, and what the ``phonenumbers`` library buys over a hand-written pattern for
  foreign numbers.

Section 2: how often the urgent-wording plugin fires on the same shared texts, with a sample.

Usage: ``python bench/eval_guard.py [--before REV] [--sample N] [--show-heldout] [--eval-dir DIR]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import statistics
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plugins import patient_data_guard as guard  # noqa: E402
from plugins.urgent_wording import assess_urgency  # noqa: E402

EVAL_DIR = ROOT.parent / "shared" / "eval"
SETS = (
    ("v1", ROOT / "bench" / "guard_testset.jsonl"),
    ("tune", ROOT / "bench" / "guard_tune.jsonl"),
    ("held-out", ROOT / "bench" / "guard_heldout.jsonl"),
)
# The last commit before issue 11's detectors: the "before" column.
BEFORE_REV = "918e8ab"
PROMISED = ("nir", "ins", "phone", "email", "birthdate", "name")
NEW = tuple(k for k in guard.KINDS if k not in PROMISED)

# Shapes the guard has to judge, so that a low false-hold rate means something.
TRIGGERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "title + word",
        re.compile(
            r"\b(?:(?i:mme|mlle|madame|monsieur|mrs?|ms|miss|pte?|patiente?)\.?|M\.)\s*[^\W\d]"
        ),
    ),
    ("run of 9+ digits", re.compile(r"(?:\d[ .\-]?){8,}\d")),
    ("+ or 00 and digits", re.compile(r"(?:\+|\b00)\s?\d")),
    ("birth cue", re.compile(r"\b(?i:n[ée]e?s?|born|DOB|DDN|DN|date de naissance)\b")),
    (
        "number + street word",
        re.compile(
            r"\b\d+,?\s+(?i:rue|av|avenue|bd|boulevard|place|all[ée]e|chemin|route|quai|cours|voie|impasse)\b"
        ),
    ),
    ("5-digit number + capital", re.compile(r"\b\d{5}\s+[A-Z]")),
    ("record cue", re.compile(r"\b(?i:ipp|nda|mrn|dossier|record|chart)\b")),
    ("@", re.compile(r"@")),
)
Detector = Callable[[str], set[str]]
Row = tuple[str, set[str]]

# What one would write without the library: an international prefix and enough digits.
HAND_FOREIGN_RE = re.compile(
    r"(?<![\w+])(?:\+|00[ ]?)(?!33)[1-9]\d{0,2}(?:[ .\-]?\(?\d+\)?){2,7}(?![\w])"
)


def load_rows(path: Path) -> list[Row]:
    """The labelled rows of one set: (text, kinds)."""
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(str(r["text"]), set(r["kinds"])) for r in rows]


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


def half(text: str) -> str:
    """The half a shared text falls in: "A" (hits read while tuning) or "B" (only counted)."""
    return "A" if zlib.crc32(text.encode("utf-8")) % 2 == 0 else "B"


def load_before(rev: str) -> ModuleType | None:
    """The guard module as it was at ``rev``, or None when git cannot show it."""
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:plugins/patient_data_guard.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("patient_data_guard_before", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    exec(compile(source, f"{rev}:plugins/patient_data_guard.py", "exec"), module.__dict__)
    return module


def detector(module: ModuleType, kinds: Collection[str] | None = None) -> Detector:
    """A function from a text to the set of kinds a guard module finds in it."""
    chosen = tuple(module.KINDS) if kinds is None else tuple(kinds)

    def detect(text: str) -> set[str]:
        return {d.kind for d in module.find_patient_data(text, chosen)}

    return detect


def _r(a: int, b: int) -> str:
    return f"{a / b:.3f}" if b else "  -  "


class Score:
    """Counts of one detector on one labelled set."""

    def __init__(self, rows: list[Row], detect: Detector) -> None:
        self.tp: Counter[str] = Counter()
        self.fp: Counter[str] = Counter()
        self.fn: Counter[str] = Counter()
        self.neg_holds = 0
        self.negatives = 0
        self.errors: list[str] = []
        for text, gold in rows:
            pred = detect(text)
            for k in gold | pred:
                self.tp[k] += k in gold and k in pred
                self.fp[k] += k in pred and k not in gold
                self.fn[k] += k in gold and k not in pred
            if not gold:
                self.negatives += 1
                self.neg_holds += bool(pred)
            if gold != pred:
                self.errors.append(f"    gold={sorted(gold)} pred={sorted(pred)}: {text}")

    def recall(self, kinds: Collection[str]) -> str:
        tp = sum(self.tp[k] for k in kinds)
        return _r(tp, tp + sum(self.fn[k] for k in kinds))

    def support(self, kinds: Collection[str]) -> int:
        return sum(self.tp[k] + self.fn[k] for k in kinds)

    def precision(self) -> str:
        tp = sum(self.tp.values())
        return _r(tp, tp + sum(self.fp.values()))


def section_labelled(
    sets: list[tuple[str, list[Row]]], before: Detector | None, show_heldout: bool
) -> None:
    """Per-kind recall, before and now, on each labelled set; precision; negative holds."""
    now = detector(guard)
    scores = [
        (name, Score(rows, now), Score(rows, before) if before else None) for name, rows in sets
    ]
    head = "".join(f" | {name + f' ({len(rows)})':<21}" for name, rows in sets)
    print(f"  {'':<22}{head}")
    print(f"  {'kind':<22}" + " | {:>4} {:>7} {:>7}".format("n", "before", "now") * len(sets))

    def line(label: str, kinds: Collection[str]) -> None:
        cells = ""
        for _, s, b in scores:
            cells += f" | {s.support(kinds):>4} {b.recall(kinds) if b else '  -  ':>7} "
            cells += f"{s.recall(kinds):>7}"
        print(f"  {label:<22}{cells}")

    for k in guard.KINDS:
        line(f"{k}{'' if k in PROMISED else ' (new)'}", [k])
    line("recall, promised kinds", PROMISED)
    line("recall, new kinds", NEW)
    line("recall, all kinds", guard.KINDS)
    cells = ""
    for _, s, b in scores:
        cells += f" | {'':>4} {b.precision() if b else '  -  ':>7} {s.precision():>7}"
    print(f"  {'precision (micro)':<22}{cells}")
    cells = ""
    for _, s, b in scores:
        before_holds = f"{b.neg_holds}/{b.negatives}" if b else "-"
        cells += f" | {s.negatives:>4} {before_holds:>7} {s.neg_holds:>7}"
    print(f"  {'negatives held':<22}{cells}")
    for name, s, _ in scores:
        if name == "held-out" and not show_heldout:
            print(f"  {name}: {len(s.errors)} disagreements (not shown: --show-heldout)")
            continue
        print(f"  {name}: {len(s.errors)} disagreements")
        for err in s.errors:
            print(err)


def section_shared(texts: list[tuple[str, str]], before: Detector | None, sample: int) -> None:
    """False holds over every shared eval text, before and now, per source and per half."""
    holds: list[tuple[str, str, list[str]]] = []
    per_kind: Counter[str] = Counter()
    per_source: Counter[str] = Counter()
    sources: Counter[str] = Counter(s for s, _ in texts)
    halves: Counter[str] = Counter(half(t) for _, t in texts)
    held_halves: Counter[str] = Counter()
    durations: list[float] = []
    cpu: list[float] = []
    for source, text in texts:
        started, started_cpu = time.perf_counter(), time.thread_time()
        found = guard.find_patient_data(text)
        cpu.append(time.thread_time() - started_cpu)
        durations.append(time.perf_counter() - started)
        kinds = {d.kind for d in found}
        if kinds:
            spans = ", ".join(f"{d.kind}: {text[d.start : d.end]!r}" for d in found)
            holds.append((source, text, [spans]))
            per_kind.update(kinds)
            per_source[source] += 1
            held_halves[half(text)] += 1
    before_holds = sum(1 for _, t in texts if before(t)) if before else None
    n = len(texts)
    print(f"  {n} texts; held now: {len(holds)} ({100 * len(holds) / n:.2f} %)", end="")
    if before_holds is not None:
        print(f"; before: {before_holds} ({100 * before_holds / n:.2f} %)")
    else:
        print()
    for h in ("A", "B"):
        print(
            f"  half {h} ({'read while tuning' if h == 'A' else 'only counted'}): "
            f"{held_halves[h]}/{halves[h]} ({100 * held_halves[h] / halves[h]:.2f} %)"
        )
    print("  per kind: " + ", ".join(f"{k} {per_kind[k]}" for k in guard.KINDS))
    print(
        "  texts with a shape the guard had to judge: "
        + ", ".join(f"{name} {sum(1 for _, t in texts if rx.search(t))}" for name, rx in TRIGGERS)
    )
    for source, total in sorted(sources.items()):
        print(f"  {source:<50} {per_source[source]:>4}/{total:<5}")
    for label, values in (("CPU", cpu), ("wall", durations)):
        ms = sorted(d * 1000 for d in values)
        print(
            f"  time per text ({label}): mean {statistics.fmean(ms):.3f} ms, "
            f"p50 {ms[len(ms) // 2]:.3f}, p99 {ms[int(len(ms) * 0.99)]:.3f}, max {ms[-1]:.2f} ms"
        )
    print(
        f"  (mean length {statistics.fmean(len(t) for _, t in texts):.0f} characters; wall time"
        " includes other processes on the machine, CPU time does not)"
    )
    shown = [h for h in holds if half(h[1]) == "A"]
    rng = random.Random(0)
    print(f"  a sample of holds in half A ({min(sample, len(shown))} of {len(shown)}):")
    for source, text, kinds in rng.sample(shown, min(sample, len(shown))):
        print(f"    [{kinds[0]}] {source}: {text[:160]}")


def section_phonenumbers(sets: list[tuple[str, list[Row]]], texts: list[tuple[str, str]]) -> None:
    """Foreign numbers found with the library and with a hand-written pattern."""
    lib = detector(guard, ["foreign_phone"])

    def hand(text: str) -> set[str]:
        return {"foreign_phone"} if HAND_FOREIGN_RE.search(text) else set()

    for label, detect in (("phonenumbers", lib), ("hand pattern", hand)):
        cells = []
        for name, rows in sets:
            if name == "v1":
                continue
            pos = [t for t, g in rows if "foreign_phone" in g]
            neg = [t for t, g in rows if "foreign_phone" not in g]
            found = sum(1 for t in pos if detect(t))
            wrong = sum(1 for t in neg if detect(t))
            cells.append(f"{name}: recall {found}/{len(pos)}, wrong on {wrong}/{len(neg)} others")
        shared = sum(1 for _, t in texts if detect(t))
        print(f"  {label:<13} " + "; ".join(cells) + f"; shared texts hit {shared}")


COLD_CALL = """
import sys, time
sys.path.insert(0, sys.argv[1])
started = time.perf_counter()
from plugins.patient_data_guard import find_patient_data
imported = time.perf_counter()
find_patient_data("sa fille au +44 7911 123456")
first = time.perf_counter()
find_patient_data("sa fille au +44 7911 123457")
second = time.perf_counter()
ms = [(imported - started) * 1000, (first - imported) * 1000, (second - first) * 1000]
print(f"{ms[0]:.0f} {ms[1]:.1f} {ms[2]:.2f}")
"""


def section_cold_start() -> None:
    """What a fresh process pays: importing the guard, the first foreign number, the next one."""
    out = subprocess.run(
        [sys.executable, "-c", COLD_CALL, str(ROOT)], capture_output=True, text=True, check=True
    ).stdout.split()
    print(
        f"  fresh process: import {out[0]} ms; first foreign number {out[1]} ms (the library "
        f"loads that country's metadata once); the next one {out[2]} ms"
    )


def section_urgent(texts: list[tuple[str, str]], sample: int) -> None:
    """How often the urgent-wording plugin fires on the shared texts."""
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
    rng = random.Random(0)
    for source, text, category in rng.sample(fired, min(sample, len(fired))):
        print(f"  [{category}] {source}: {text[:220]}")


def main() -> None:
    """Run every section and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=15, help="hits to print per section")
    parser.add_argument("--before", default=BEFORE_REV, help="git revision of the old guard")
    parser.add_argument("--show-heldout", action="store_true", help="print held-out errors")
    parser.add_argument(
        "--tuning", action="store_true", help="leave the held-out set out entirely (while tuning)"
    )
    parser.add_argument("--eval-dir", type=Path, default=EVAL_DIR)
    args = parser.parse_args()

    old = load_before(args.before)
    before = detector(old) if old is not None else None
    if old is None:
        print(f"(no 'before' column: git cannot show {args.before})")
    sets = [
        (name, load_rows(path)) for name, path in SETS if not (args.tuning and name == "held-out")
    ]
    print("== 1. Patient-data guard ==")
    print(f"\n-- labelled sets: recall per kind, before ({args.before}) and now")
    section_labelled(sets, before, args.show_heldout)

    texts = list(shared_texts(args.eval_dir))
    if not texts:
        print(f"\nno shared evaluation texts under {args.eval_dir}")
        return
    print("\n-- false holds over every question text in the shared eval sets")
    section_shared(texts, before, args.sample)
    print("\n-- foreign phone numbers: phonenumbers vs a hand-written pattern")
    section_phonenumbers(sets, texts)
    section_cold_start()
    print("\n== 2. Urgent wording ==")
    section_urgent(texts, args.sample)


if __name__ == "__main__":
    main()
