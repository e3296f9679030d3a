"""Preprocessing a log larger than memory: wall time and peak RSS of data.streaming against the in-memory path.

Writes synthetic Parquet logs chunk by chunk (never whole in memory): users in blocks with geometric lengths, item
ids Zipf-distributed over 10M items, unix-second timestamps (some tied), 2% exact duplicates, rows shuffled within
each chunk and user ids scrambled so neither file order nor id order is time order. Each measurement is one fresh
process (`preprocess_lazy`, or `read_interactions` + `preprocess`) with dedupe and a 5-core; its wall time and peak
RSS (wait4's ru_maxrss) are reported, and a run whose RSS passes --limit-gb is killed and reported as such. On the
smaller log both paths run and their SequenceData are compared array by array.

    python benchmarks/streaming_preprocess.py --events 200000000 --compare-events 20000000 --commit abc1234 \\
        --out benchmarks/results/streaming_preprocess
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

NUM_ITEMS = 10_000_000
MEAN_LENGTH = 40
CHUNK = 5_000_000
OPTIONS = {"dedupe": True, "min_user_count": 5, "min_item_count": 5}


def write_log(path: Path, events: int, seed: int = 0) -> None:
    """A synthetic log of about `events` rows (whole users), written one CHUNK-sized row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.int64())])
    first_user, written = 0, 0
    with pq.ParquetWriter(path, schema) as writer:
        while written < events:
            lengths = rng.geometric(1 / MEAN_LENGTH, CHUNK // MEAN_LENGTH)  # [B] events per user of this block
            lengths = lengths[: np.searchsorted(np.cumsum(lengths), events - written, side="right") + 1]
            local = np.repeat(np.arange(len(lengths)), lengths)  # [C] user of each event within the block
            users = ((first_user + local) * 2654435761) % (1 << 40)  # [C] scrambled raw ids, distinct per user
            items = (rng.zipf(1.3, len(local)) - 1) % NUM_ITEMS  # [C]
            starts = rng.integers(1_500_000_000, 1_700_000_000, len(lengths))  # [B] each user's first second
            times = starts[local] + rng.integers(0, 600, len(local)) // 60 * 60  # [C] minutes: ties happen
            repeat = np.flatnonzero(rng.random(len(local)) < 0.02)  # [R] rows that copy another of their user
            repeat = repeat[repeat > 0]
            same_user = local[repeat - 1] == local[repeat]
            source, target = repeat[same_user] - 1, repeat[same_user]
            items[target], times[target] = items[source], times[source]
            order = rng.permutation(len(local))  # [C] shuffle rows within the chunk
            writer.write_table(pa.table({"user_id": users[order], "item_id": items[order], "timestamp": times[order]}))
            first_user += len(lengths)
            written += len(local)


def worker(path: str, mode: str, save: str | None) -> None:
    """One preprocessing run in this process; prints its seconds, optionally saves the arrays."""
    start = time.perf_counter()
    if mode == "streaming":
        from cutrec.data.streaming import preprocess_lazy

        data = preprocess_lazy(path, **OPTIONS)
    else:
        from cutrec.data import preprocess, read_interactions

        data = preprocess(read_interactions(path), **OPTIONS)
    seconds = time.perf_counter() - start
    if save:
        np.savez(save, offsets=data.offsets, items=data.items, timestamps=data.timestamps, item_ids=data.item_ids,
                 user_ids=data.user_ids)
    print(json.dumps({"seconds": seconds, "events": len(data.items), "users": data.num_users,
                      "items": data.num_items}))


def measure(path: Path, mode: str, limit_gb: float, save: Path | None = None) -> dict:
    """Run `worker` in a fresh process: its result, wall seconds and peak RSS, killed past limit_gb."""
    command = [sys.executable, __file__, "--worker", str(path), "--mode", mode]
    if save:
        command += ["--save", str(save)]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    killed = False
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        try:
            with open(f"/proc/{process.pid}/status") as file:
                rss_kb = int(next(line for line in file if line.startswith("VmRSS")).split()[1])
        except (OSError, StopIteration):
            rss_kb = 0
        if rss_kb > limit_gb * 2**20 and not killed:
            os.kill(process.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.1)
    wall = time.perf_counter() - start
    output = process.stdout.read()
    row = {"mode": mode, "wall_seconds": round(wall, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2)}
    if killed:
        row["result"] = f"killed: RSS passed {limit_gb} GB"
    elif os.WEXITSTATUS(status) != 0:
        row["result"] = f"failed with exit status {os.WEXITSTATUS(status)}"
    else:
        row.update(json.loads(output.strip().splitlines()[-1]))
        row["seconds"] = round(row["seconds"], 1)
    print(row, file=sys.stderr)
    return row


def same(first: Path, second: Path) -> bool:
    a, b = np.load(first, allow_pickle=True), np.load(second, allow_pickle=True)
    return all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a.files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000_000)
    parser.add_argument("--compare-events", type=int, default=20_000_000)
    parser.add_argument("--in-memory-large", action="store_true", help="also run the in-memory path on --events")
    parser.add_argument("--limit-gb", type=float, default=14.0, help="kill a run whose RSS passes this")
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="where the Parquet logs go (deleted after)")
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", help="writes OUT.json and OUT.md (required)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.mode, args.save)
    if not args.out:
        parser.error("--out is required")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as work:
        for events, modes in [(args.compare_events, ["in-memory", "streaming"]),
                              (args.events, ["streaming"] + (["in-memory"] if args.in_memory_large else []))]:
            path = Path(work) / f"log{events}.parquet"
            start = time.perf_counter()
            write_log(path, events)
            header = {"log_events": events, "parquet_gb": round(path.stat().st_size / 2**30, 2),
                      "write_seconds": round(time.perf_counter() - start, 1)}
            print(header, file=sys.stderr)
            saves = {mode: Path(work) / f"{mode}{events}.npz" for mode in modes} if len(modes) == 2 else {}
            group = [{**header, **measure(path, mode, args.limit_gb, saves.get(mode))} for mode in modes]
            if saves and all(save.exists() for save in saves.values()):
                identical = same(*saves.values())
                for row in group:
                    row["identical_to_other_path"] = identical
            for save in saves.values():
                save.unlink(missing_ok=True)
            rows += group
            path.unlink()
    memory_gb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {memory_gb:.0f} GB"
    import polars

    command = "python benchmarks/streaming_preprocess.py " + " ".join(sys.argv[1:])
    header = {"machine": machine, "date": str(date.today()), "commit": args.commit, "polars": polars.__version__,
              "command": command, "options": OPTIONS, "rows": rows}
    Path(f"{args.out}.json").write_text(json.dumps(header, indent=2) + "\n")
    lines = [
        "# Streaming preprocessing (data.streaming) against the in-memory path",
        "",
        f"Machine: {machine}; date: {header['date']}; commit: {args.commit}; polars {polars.__version__}.",
        f"Command: `{command}`; preprocessing: dedupe, min_user_count=5, min_item_count=5.",
        "",
        "| log events | parquet GB | path | wall s | preprocess s | peak RSS GB | events kept | users | items "
        "| same result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['log_events']:,} | {r['parquet_gb']} | {r['mode']} | {r['wall_seconds']} | "
            f"{r.get('seconds', r.get('result'))} | {r['peak_rss_gb']} | {r.get('events', 0):,} | "
            f"{r.get('users', 0):,} | {r.get('items', 0):,} | {r.get('identical_to_other_path', '')} |"
        )
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
