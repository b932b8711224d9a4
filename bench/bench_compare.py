"""Two commits' load benchmarks side by side: PeerBot at a base commit and at HEAD, alternately.

Each round runs ``bench/bench_load.py`` on the base commit's code (a detached worktree in a
temporary folder, its own code on ``PYTHONPATH``, this tree's ``bench_load.py`` copied in) and
then on this tree's, with the same arguments, and reads back each run's table. Every run has
its own bare nio bot, so each PeerBot figure comes with the bare bot's of the same minutes: on a
shared machine compare the ratios, not only the raw p50.

    .venv/bin/python bench/bench_compare.py --base 6b39ab2^ --rounds 2 --questions 300 --seconds 60
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_ROW = re.compile(
    r"^(?P<name>.+?)\s+(?P<lost>\d+)\s+(?P<dup>\d+)\s+(?P<p50>\d+|-)\s+(?P<p95>\d+|-)"
)


def parse_table(output: str) -> dict[str, tuple[int, int, float | None]]:
    """``{row name: (lost, duplicated, p50 ms)}`` from bench_load's printed table."""
    rows: dict[str, tuple[int, int, float | None]] = {}
    in_table = False
    for line in output.splitlines():
        if "p50 ms" in line and "lost" in line:
            in_table = True
            continue
        if not in_table:
            continue
        m = _ROW.match(line.strip())
        if m is None:
            if rows:
                break
            continue
        p50 = None if m["p50"] == "-" else float(m["p50"])
        rows[m["name"].strip()] = (int(m["lost"]), int(m["dup"]), p50)
    return rows


_CPU = re.compile(
    r"PeerBot (?P<pb>[\d.]+) ms \((?P<loop>[\d.]+) in its event loop.*bare echo (?P<bare>[\d.]+) ms"
)


def parse_cpu(output: str) -> tuple[float, float, float] | None:
    """PeerBot's, its event loop's and the bare bot's CPU ms per question, from bench_load."""
    m = _CPU.search(output)
    return None if m is None else (float(m["pb"]), float(m["loop"]), float(m["bare"]))


def run_one(
    tree: Path, args: list[str], keep: Path | None = None, label: str = ""
) -> tuple[dict[str, tuple[int, int, float | None]], tuple[float, float, float] | None]:
    """One bench_load run of the code in ``tree``: its table and its CPU per question."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run(
        [sys.executable, str(tree / "bench" / "bench_load.py"), *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"{label}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    rows = parse_table(proc.stdout)
    if not rows:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"bench_load in {tree} printed no table (exit {proc.returncode})")
    return rows, parse_cpu(proc.stdout)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare with (git rev)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--profile", action="store_true", help="pass --profile to bench_load")
    parser.add_argument("--keep", type=Path, help="write each run's whole output in this folder")
    parser.add_argument(
        "--shared", action="store_true", help="pass --shared to bench_load (one homeserver)"
    )
    args = parser.parse_args(argv)
    bench_args = ["--questions", str(args.questions), "--seconds", str(args.seconds)]
    if args.profile:
        bench_args.append("--profile")
    if args.shared:
        bench_args.append("--shared")
    base = subprocess.run(
        ["git", "rev-parse", "--short", args.base], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    if not base:
        raise SystemExit(f"--base: unknown commit {args.base!r}")
    results: dict[str, list[tuple[float, float]]] = {base: [], head: []}
    cpu_runs: dict[str, list[float]] = {base: [], head: []}
    with tempfile.TemporaryDirectory(prefix="peerbot-compare-") as tmp:
        old_tree = Path(tmp) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(old_tree), base],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        # The base's code, this tree's benchmark: the two runs differ by the code alone.
        script = "bench/bench_load.py"
        (old_tree / script).write_bytes((REPO / script).read_bytes())
        try:
            print(
                f"{'round':<7}{'commit':<10}{'PeerBot p50':>12}{'bare p50':>10}{'ratio':>7}"
                f"{'lost':>6}{'dup':>5}{'CPU/q':>7}{'loop':>6}{'bare':>6}  load before -> after"
            )
            for r in range(1, args.rounds + 1):
                for name, tree in ((base, old_tree), (head, REPO)):
                    load_before = _loadavg()
                    rows, cpu = run_one(tree, bench_args, args.keep, f"round{r}-{name}")
                    names = list(rows)
                    fwd = rows[names[0]]
                    bare = rows[names[-1]]
                    if fwd[2] is None or bare[2] is None:
                        raise SystemExit(f"{name}: no p50 ({rows})")
                    results[name].append((fwd[2], bare[2]))
                    if cpu is not None:
                        cpu_runs[name].append(cpu[0])
                    cpus = "".join(
                        f"{c:>{w}.1f}" for c, w in zip(cpu or (), (7, 6, 6), strict=False)
                    )
                    print(
                        f"{r:<7}{name:<10}{fwd[2]:>12.0f}{bare[2]:>10.0f}{fwd[2] / bare[2]:>7.2f}"
                        f"{fwd[0]:>6}{fwd[1]:>5}{cpus or '      -':<19}  "
                        f"{load_before} -> {_loadavg()}",
                        flush=True,
                    )
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(old_tree)],
                cwd=REPO,
                capture_output=True,
                check=False,
            )
    print()
    for name, runs in results.items():
        p50 = statistics.median(p for p, _ in runs)
        ratio = statistics.median(p / b for p, b in runs)
        cpu = f", CPU per question median {statistics.median(cpu_runs[name]):.1f} ms"
        print(
            f"{name}: PeerBot p50 median {p50:.0f} ms, ratio to the bare bot median {ratio:.2f}"
            + (cpu if cpu_runs[name] else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
