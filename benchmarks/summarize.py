"""Turn benchmark results into a short markdown table.

Usage::

    python benchmarks/summarize.py RESULTS... [-o table.md]

RESULTS are pytest-benchmark ``--benchmark-json`` files and/or the JSON-lines log the suite
appends to when ``ONE_FAST_BENCH_LOG`` is set (a run cut short leaves only the latter). A case
found in several inputs is taken from the last one. Figures come from each case's
``extra_info`` (see BENCHMARKS.md): the median of record (CUDA events on CUDA, wall clock on
the CPU); for the loss GB/s, the fraction of the measured copy bandwidth and the speed-up over
the eager reference; for the training step images/s and the speed-up over the authors' step.
Speed-ups compare cases of the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def load_records(paths: list[Path]) -> list[dict[str, Any]]:
    """Benchmark records from pytest-benchmark JSON files and JSON-lines logs, in order."""
    by_name: dict[str, dict[str, Any]] = {}
    for path in paths:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text).get("benchmarks", [])
        for record in records:
            by_name[record.get("fullname") or record["name"]] = record
    return list(by_name.values())


def median_s(record: dict[str, Any]) -> float:
    """The median of record in seconds (extra_info's, else pytest-benchmark's)."""
    info = record.get("extra_info", {})
    if "median_ms" in info:
        return info["median_ms"] / 1e3
    return record["stats"]["median"]


def fmt_time(seconds: float) -> str:
    """A duration with a readable unit."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def header(records: list[dict[str, Any]]) -> list[str]:
    """What ran where: platform, device, versions, commit, copy bandwidth, load."""
    info = records[0].get("extra_info", {})
    env = info.get("env", {})
    platform = info.get("platform", "?")
    lines = [f"## {platform} results: {env.get('device_name', '?')}", ""]
    facts = [
        f"commit `{env.get('commit', '?')}`",
        f"torch {env.get('torch', '?')}, triton {env.get('triton') or 'absent'}, "
        f"Python {env.get('python', '?')}",
        f"CPU: {env.get('cpu_model', '?')}, {env.get('cpu_count', '?')} cores, "
        f"torch threads: {env.get('torch_threads', '?')}",
    ]
    gpu = next((r["extra_info"]["gpu"] for r in records if r.get("extra_info", {}).get("gpu")),
               None)
    if gpu:
        facts.append("GPU (NVML, after a case): " + ", ".join(f"{k} {v}" for k, v in gpu.items()))
    copy = next((r["extra_info"] for r in records if "copy_gbps" in r.get("extra_info", {})),
                None)
    if copy:
        facts.append(f"copy bandwidth {copy['copy_gbps']:.1f} GB/s ({copy['copy_method']})")
    loads = [r["extra_info"]["load_avg_1m"] for r in records
             if r.get("extra_info", {}).get("load_avg_1m") is not None]
    if loads:
        facts.append(f"1-minute load average before the cases: {min(loads):.2f} to "
                     f"{max(loads):.2f}")
    timer = {r.get("extra_info", {}).get("timer") for r in records} - {None}
    if timer:
        facts.append("median of record: " + ", ".join(sorted(timer)))
    return lines + [f"- {fact}" for fact in facts] + [""]


# Row order: implementations of one case side by side, the reference first.
IMPL_ORDER = ("reference", "reference-compiled", "triton", "native")
DTYPE_ORDER = ("float32", "bfloat16")
PASS_ORDER = ("fwd_bwd", "fwd")


def _rank(order: tuple[str, ...], value: str) -> int:
    return order.index(value) if value in order else len(order)


def _loss_order(record: dict[str, Any]) -> tuple:
    e = record["extra_info"]
    return (e["n"] * e["m"] * e["c"], _rank(DTYPE_ORDER, e["dtype"]),
            _rank(PASS_ORDER, e["pass_"]), _rank(IMPL_ORDER, e["impl"]), e["impl"])


def _case_key(record: dict[str, Any]) -> tuple:
    e = record["extra_info"]
    return e["shape"], e["dtype"], e["pass_"]


def loss_table(records: list[dict[str, Any]]) -> list[str]:
    """One row per loss case: shape, dtype, pass, implementation, median, GB/s, of copy."""
    rows = [r for r in records if r.get("extra_info", {}).get("kind") == "loss"]
    if not rows:
        return []
    rows.sort(key=_loss_order)
    reference = {_case_key(r): r for r in rows if r["extra_info"]["impl"] == "reference"}
    lines = ["### ONE loss", "",
             "| shape (N, m, C) | dtype | pass | implementation | median | GB/s | of copy BW "
             "| × reference |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        e = r["extra_info"]
        gbps = f"{e['gbps']:.2f}" if "gbps" in e else "–"
        frac = f"{100 * e['fraction_of_copy']:.1f}%" if "fraction_of_copy" in e else "–"
        ref = reference.get(_case_key(r))
        speedup = f"{median_s(ref) / median_s(r):.2f}" if ref is not None else "–"
        lines.append(f"| {e['shape']} ({e['n']}, {e['m']}, {e['c']}) | {e['dtype']} | "
                     f"{e['pass_'].replace('_', '+')} | {e['impl']} | {fmt_time(median_s(r))} | "
                     f"{gbps} | {frac} | {speedup} |")
    return lines + [""]


def step_table(records: list[dict[str, Any]]) -> list[str]:
    """One row per training-step variant: median step, images/s, speed-up over the authors'."""
    rows = [r for r in records if r.get("extra_info", {}).get("kind") == "step"]
    if not rows:
        return []
    authors = next((r for r in rows if r["extra_info"]["variant"] == "authors"), None)
    e0 = rows[0]["extra_info"]
    lines = [f"### Training step: ONE ResNet-{e0['depth']}, m = {e0['branches']}, "
             f"batch {e0['batch']}", "",
             "| variant | loss | amp | channels_last | compile | CUDA graphs | batched | "
             "median step | images/s | × authors |",
             "|---|---|---|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        e = r["extra_info"]
        ips = e.get("images_per_s")
        speedup = (f"{median_s(authors) / median_s(r):.2f}" if authors is not None else "–")
        lines.append(
            f"| {e['variant']} | {e['loss_backend']} | {e['amp'].replace('torch.', '')} | "
            f"{e['channels_last']} | {e['compile']} | {e['cuda_graphs']} | {e['batched']} | "
            f"{fmt_time(median_s(r))} | {f'{ips:.1f}' if ips else '–'} | {speedup} |")
    return lines + [""]


def summarize(paths: list[Path]) -> str:
    """The markdown summary of the results in ``paths``."""
    records = load_records(paths)
    if not records:
        return "No benchmark results were recorded.\n"
    platforms: dict[str, list[dict[str, Any]]] = {}
    for record in records:  # never one table mixing CPU and GPU figures
        platforms.setdefault(record.get("extra_info", {}).get("platform", "?"), []).append(record)
    lines: list[str] = []
    for group in platforms.values():
        lines += header(group) + loss_table(group) + step_table(group)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path,
                        help="pytest-benchmark JSON files and/or ONE_FAST_BENCH_LOG .jsonl logs")
    parser.add_argument("-o", "--output", type=Path, help="write the table here (else stdout)")
    args = parser.parse_args(argv)
    existing = [p for p in args.results if p.is_file()]
    text = summarize(existing)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
