"""Render BENCHMARKS.md from a benchmark JSON (python -m cupy_dwconv.bench --json FILE).

    python benchmarks/report.py benchmarks/results/h200.json > BENCHMARKS.md

The table and summary lines are the benchmark's own formatting; this script only adds
the header (GPU, versions, commit, command, ceilings) and lists the rows that miss
their target, so the document is regenerated from data, never edited by hand.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cupy_dwconv import bench  # noqa: E402


def render(doc, json_path):
    rows = doc["rows"]
    v = doc.get("versions", {})
    command = doc.get("command") or ""
    if isinstance(command, list):
        command = " ".join(command)
    out = [
        "# Benchmarks",
        "",
        f"Depthwise conv2d on {doc.get('gpu')}, produced by `{command}` "
        f"at commit `{doc.get('commit')}` on {doc.get('date')}; raw data in `{json_path}`, roofline chart beside it.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None) + ".",
        "",
        "Method (see `cupy_dwconv/bench.py`): CUDA-event timings, median of "
        f"{doc.get('settings', {}).get('repeats', '?')} calls after warm-up, inputs rotated past the L2 cache, "
        "PyTorch (cuDNN autotuned, NCHW and channels_last) and JAX timed in the same process. "
        "floor = max(bytes / copy bandwidth, FLOPs / FMA rate), both ceilings measured in the same run: "
        + bench.ceilings_line(doc["ceilings"]) + ". Efficiency = floor / time. "
        "Targets: forward <= 1.25 x floor + 5 us and no slower than the best anchor; backward (grad x + "
        "weight + bias) <= floor / 0.6 + 10 us and >= 3x faster than PyTorch's backward.",
        "",
        "```",
        bench.format_table(rows),
        "```",
        "",
    ]
    out += [f"- {line}" for line in bench.summary_lines(rows, doc.get("dispatch_us"))]
    misses = [r for r in rows if r["pass"] in ("forward", "backward") and r.get("meets_target") is not True]
    if misses:
        out += ["", "## Rows that miss their target", ""]
        for r in misses:
            eff = r.get("efficiency")
            out.append(
                f"- {r['case']} {r['dtype']} {r['pass']}: {r['ms']:.4g} ms against a {r['floor_ms']:.4g} ms floor"
                + (f" ({100 * eff:.0f} % efficiency)" if eff else "")
                + (f", {r['speedup']:.2f}x the best anchor" if r.get("speedup") else "")
            )
    return "\n".join(out) + "\n"


def main(argv):
    path = argv[0] if argv else "benchmarks/results/h200.json"
    with open(path) as f:
        doc = json.load(f)
    sys.stdout.write(render(doc, path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
