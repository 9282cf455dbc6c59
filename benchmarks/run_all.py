"""Run every benchmark in this folder and collect their JSON lines into ``benchmarks/results.jsonl``.

Each benchmark is a module printing one JSON line per result (see ``benchmarks/common.py``); with module names
as arguments only those run, and their lines replace the same-named ones (the rest of the file is kept);
they run one after another, in separate processes, so one's memory does not skew another's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = {"__init__", "common", "run_all", "soak"}  # soak: tens of minutes, run alone (it appends its line)


def main() -> int:
    modules = sorted(p.stem for p in HERE.glob("*.py") if p.stem not in SKIP)
    if len(sys.argv) > 1:
        modules = [m for m in modules if m in sys.argv[1:]]
    out = HERE / "results.jsonl"
    records, failed = [], []
    for mod in modules:
        t0 = time.perf_counter()
        print(f"== benchmarks.{mod}", file=sys.stderr, flush=True)
        res = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{mod}"], cwd=HERE.parent, capture_output=True, text=True
        )
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        for ln in lines:
            rec = json.loads(ln)
            rec.setdefault("wall_s", round(time.perf_counter() - t0, 1))
            records.append(rec)
            print(ln, flush=True)
        if res.returncode != 0 or not lines:
            failed.append(mod)
            print(res.stderr[-2000:], file=sys.stderr)
    if len(sys.argv) > 1 and out.is_file():
        # A partial run replaces only the lines of the benchmarks it ran; every other record stays.
        fresh = {r["name"] for r in records}
        kept = [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()]
        records = [r for r in kept if r.get("name") not in fresh] + records
    tmp = out.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(out)
    print(f"{len(records)} results -> {out}" + (f"; failed: {failed}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
