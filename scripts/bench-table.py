#!/usr/bin/env python3
"""Prints the README's benchmark table from criterion's saved estimates.

Run after `cargo bench -p tierpool-harness --bench pool`; reads target/criterion/*/*/new/estimates.json
and shows each benchmark's median time and its ratio to tierpool in the same
group (above 1.00x: tierpool is that many times faster).
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")


def median_ns(path):
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"]


def fmt(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


rows = {}
for est in sorted(root.glob("*/*/new/estimates.json")) + sorted(root.glob("*/*/*/new/estimates.json")):
    parts = est.relative_to(root).parts[:-2]
    group, name = parts[0], "/".join(parts[1:])
    rows.setdefault(group, {})[name] = median_ns(est)

print("| benchmark | variant | median | tierpool is faster by |")
print("|---|---|---:|---:|")
for group, variants in rows.items():
    for name, ns in sorted(variants.items()):
        threads = name.split("/")[1] if "/" in name else None
        base = variants.get("tierpool" + (f"/{threads}" if threads else ""))
        ratio = f"{ns / base:.2f}x" if base and not name.startswith("tierpool") else ""
        print(f"| {group} | {name} | {fmt(ns)} | {ratio} |")
