"""Where the line's time goes: per-process CPU and py-spy on the scorer while it drains a backlog.

    nice -n 10 .venv/bin/python -m benchmarks.profile_line [--seconds 20] [pipeline options...]

Runs ``benchmarks.pipeline`` (options after ours are passed on; by default a short run) and, once
its first measured throughput round's scorer is up, samples for ``--seconds``:

- CPU seconds of each process (``/proc/<pid>/stat``): the scorer, the Kafka broker (java), the
  benchmark's own process (camera simulator and the verdict reader) and everything else on the
  machine, as shares of the machine's CPU time in the window;
- ``py-spy record --format raw`` on the scorer (every thread, not idle ones), folded into stages by
  the innermost frame that names one (decoding, backbone, search, anomaly maps, serialisation, Kafka
  client, event loop, thread hand-offs).

Shares, not rates: run it on a quiet machine for figures that compare with the pipeline's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.harness import print_results

TICKS = os.sysconf("SC_CLK_TCK")
SHORT_RUN = ["--frames", "1600", "--rounds", "1", "--warmup-frames", "200", "--latency-seconds", "4"]

# (stage, substrings of a frame "function (file:line)"), first match from the innermost frame wins.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("decode", ("pixels.py", "images.py", "PIL/", "decode_record")),
    ("backbone", ("torch/", "openvino", "onnxruntime", "features.py", "backbones.py", "runtimes.py")),
    ("search", ("scorers/", "faiss")),
    ("anomaly map and regions", ("anomaly_map.py", "postprocess.py")),
    ("serialisation", ("codec.py", "msgpack", "schemas.py")),
    ("kafka client", ("aiokafka", "kafka/")),
    ("thread hand-off", ("concurrent/futures", "threading.py", "queue.py")),
    ("event loop", ("asyncio/", "selectors.py")),
]


def stage_of(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for stage, marks in STAGES:
            if any(mark in frame for mark in marks):
                return stage
    return "other python"


def fold(raw: Path) -> dict[str, float]:
    """Shares of the scorer's sampled (non-idle) stacks by stage."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[stage_of(stack)] += int(n)
    total = sum(counts.values()) or 1
    return {stage: round(n / total, 3) for stage, n in counts.most_common()}


def cpu_ticks() -> dict[int, tuple[str, int]]:
    """pid -> (command line, user + system ticks) for every process now."""
    out: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        out[int(entry.name)] = (cmd, int(fields[11]) + int(fields[12]))
    return out


def machine_ticks() -> int:
    return sum(int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8])


def find_scorer(parent: int) -> int | None:
    """The throughput round's scorer: a ``lineguard scorer`` descendant of the benchmark whose log
    is a measured round's (``scorer-tp0.log``)."""
    for pid, (cmd, _) in cpu_ticks().items():
        if " scorer --model" in cmd and descends_from(pid, parent):
            env = Path(f"/proc/{pid}/environ")
            try:
                if b"bench-tp0-" in env.read_bytes():
                    return pid
            except OSError:
                continue
    return None


def wait_until_serving(scorer: int, timeout_s: float = 600.0) -> None:
    """Until the scorer's log (its stderr) says it owns its partitions, and 2 s more: the window
    must hold the drain, not the start-up (imports and model load take tens of seconds when the
    machine is loaded)."""
    log = Path(os.readlink(f"/proc/{scorer}/fd/2"))
    deadline = time.monotonic() + timeout_s
    while b'"partitions_assigned"' not in log.read_bytes():
        if time.monotonic() > deadline:
            raise SystemExit("the scorer did not take its partitions")
        time.sleep(0.5)
    time.sleep(2.0)


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError):
            return False
    return False


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="sampling window")
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--stacks", type=Path, help="also keep py-spy's raw stacks here (for a flame graph)")
    args, passed_on = parser.parse_known_args()
    work = Path(tempfile.mkdtemp(prefix="lineguard-profile-"))
    bench = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.pipeline",
            *(passed_on or SHORT_RUN),
            "--json",
            str(work / "line.json"),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        scorer = None
        while scorer is None and bench.poll() is None:
            time.sleep(0.5)
            scorer = find_scorer(bench.pid)
        if scorer is None:
            raise SystemExit("the benchmark ended before its first throughput round")
        wait_until_serving(scorer)
        before, machine_before = cpu_ticks(), machine_ticks()
        raw = work / "scorer.raw"
        spy = subprocess.run(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(scorer),
                "--duration",
                str(int(args.seconds)),
                "--rate",
                str(args.rate),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(raw),
            ],
            capture_output=True,
            text=True,
        )
        after, machine_after = cpu_ticks(), machine_ticks()
    finally:
        bench.wait()
    window = max(machine_after - machine_before, 1)
    groups: Counter[str] = Counter()
    for pid, (cmd, ticks) in after.items():
        used = ticks - before.get(pid, (cmd, ticks))[1]
        if pid == scorer:
            groups["scorer"] += used
        elif "kafka.Kafka" in cmd and (descends_from(pid, bench.pid) or "lineguard-bench-" in cmd):
            groups["kafka broker (the benchmark's)"] += used
        elif pid == bench.pid:
            groups["benchmark: camera-sim + verdict reader"] += used
        elif pid != os.getpid():
            groups["everything else (other users of the machine)"] += used
    # /proc/stat counts every CPU's ticks: machine_ticks spans cores x seconds, idle included.
    results = {
        "window_s": args.seconds,
        "load_average_1min": os.getloadavg()[0],
        "cpu_share_of_machine": {k: round(v / window, 3) for k, v in groups.most_common()},
        "scorer_stages": fold(raw) if raw.exists() else {"py-spy failed": spy.stderr[-500:]},
        "line": json.loads((work / "line.json").read_text()) if (work / "line.json").exists() else None,
    }
    if args.stacks and raw.exists():
        args.stacks.write_bytes(raw.read_bytes())
    print_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
