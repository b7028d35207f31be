#!/usr/bin/env python3
"""check_layers.py - the include graph between top-level folders runs one way (DESIGN section 2).

Reads every #include "..." of the hand-written .c/.h files (git ls-files, new files not yet
added included; a walk of the tree when git is not there), maps each included header to the folder that holds it, and fails (exit
1, naming the edge and the file:line) on an edge to a higher floor, on a cycle between folders,
and on an include or a folder it cannot place. A folder may use its own floor's other folders
(sideways) and every lower floor. The floors are LAYERS below, the one table of the allowed
order; edges being removed right now are in KNOWN_EDGES, printed on every run but not failed.
Python 3 standard library only.

usage: check_layers.py [--root DIR] [--graph]
  --root DIR   the source tree (default: this script's ../)
  --graph      also print every folder edge with the number of includes behind it
"""
import argparse
import os
import re
import subprocess
import sys

# The allowed order, highest floor first: a file may include headers of its own folder, of
# another folder on its own floor (as long as no cycle forms), and of any lower floor.
LAYERS = [
    ("tests", "bench"),                      # test and benchmark programs: may use anything
    ("coordinator", "site-agent", "sim"),    # the daemons and moeh, with their main.c
    ("train", "proto"),                      # local training; wire, transport, keys, ZAP
    ("fed",),                                # quantisation, secure sums, masks, DP, RDP
    ("model", "data"),                       # tensors, layers, MoE-Health; the dataset format
    ("common",),                             # errors, logging, files, npy, options
]

# Edges that run upward or close a cycle today and are being removed in the redesign (issue
# 10). Each is printed on every run; remove the entry once the edge is gone, so that it cannot
# come back.
KNOWN_EDGES = {}

# Headers made by the build (not in the tree), by the folder whose sources they come from.
GENERATED = {
    "moeh.pb-c.h": "proto",  # protoc-c from proto/moeh.proto
}

INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def rank_of():
    rank = {}
    for i, floor in enumerate(LAYERS):
        for folder in floor:
            rank[folder] = len(LAYERS) - i
    return rank


def source_files(root):
    """The hand-written .c/.h files, as paths relative to root."""
    try:
        out = subprocess.run(["git", "-C", root, "ls-files", "--cached", "--others",
                              "--exclude-standard", "*.c", "*.h"], check=True,
                             capture_output=True, text=True).stdout
        files = [f for f in out.splitlines() if f and os.path.isfile(os.path.join(root, f))]
        if files:
            return files
    except (OSError, subprocess.CalledProcessError):
        pass
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if not x.startswith(".") and not x.startswith("build")]
        for n in names:
            if n.endswith((".c", ".h")):
                files.append(os.path.relpath(os.path.join(d, n), root))
    return sorted(files)


def resolve(inc, src, files, by_suffix):
    """The tree file an include names: relative to the including file first, then the one
    file whose path ends with it (the libraries' include directories are their folders)."""
    rel = os.path.normpath(os.path.join(os.path.dirname(src), inc))
    if rel in files:
        return rel
    hits = by_suffix.get(os.path.basename(inc), [])
    hits = [h for h in hits if h == inc or h.endswith("/" + inc)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:  # prefer the including file's own folder
        own = [h for h in hits if h.split("/")[0] == src.split("/")[0]]
        return own[0] if len(own) == 1 else None
    return None


def find_cycle(graph):
    """One cycle of folders in graph {a: {b, ...}} as a list [a, b, ..., a], or None."""
    state = {}

    def visit(a, path):
        state[a] = 1
        path.append(a)
        for b in sorted(graph.get(a, ())):
            if state.get(b) == 1:
                return path[path.index(b):] + [b]
            if not state.get(b):
                c = visit(b, path)
                if c:
                    return c
        path.pop()
        state[a] = 2
        return None

    for a in sorted(graph):
        if not state.get(a):
            c = visit(a, [])
            if c:
                return c
    return None


def check(root, show_graph=False, out=sys.stdout):
    """Prints the findings; returns the exit status (0 ok, 1 violations)."""
    rank = rank_of()
    files = source_files(root)
    fileset = set(files)
    by_suffix = {}
    for f in files:
        by_suffix.setdefault(os.path.basename(f), []).append(f)
    problems = []
    edges = {}  # (a, b) -> [file:line, ...]
    for src in files:
        a = src.split("/")[0] if "/" in src else ""
        if a not in rank:
            problems.append(f"{src}: folder '{a or '.'}' is not in LAYERS (say which floor it is on)")
            continue
        with open(os.path.join(root, src), encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                m = INCLUDE_RE.match(line)
                if not m:
                    continue
                inc = m.group(1)
                hit = resolve(inc, src, fileset, by_suffix)
                if hit is not None:
                    b = hit.split("/")[0] if "/" in hit else ""
                elif os.path.basename(inc) in GENERATED:
                    b = GENERATED[os.path.basename(inc)]
                else:
                    problems.append(f"{src}:{n}: #include \"{inc}\" names no file of the tree")
                    continue
                if b != a:
                    edges.setdefault((a, b), []).append(f"{src}:{n} ({inc})")
    graph = {}
    for (a, b), where in sorted(edges.items()):
        known = (a, b) in KNOWN_EDGES
        if b not in rank:
            problems.append(f"{where[0]}: includes from folder '{b}', which is not in LAYERS")
        elif rank[b] > rank[a]:
            if known:
                print(f"known upward edge {a} -> {b}: {', '.join(where)} -- "
                      f"{KNOWN_EDGES[(a, b)]}", file=out)
            else:
                problems.append(f"upward edge {a} -> {b}: {', '.join(where)}")
        if not known:
            graph.setdefault(a, set()).add(b)
        elif rank.get(b, 0) <= rank[a]:
            print(f"known edge {a} -> {b}: {', '.join(where)} -- {KNOWN_EDGES[(a, b)]}", file=out)
    cycle = find_cycle(graph)
    if cycle:
        steps = []
        for a, b in zip(cycle, cycle[1:]):
            steps.append(f"{a} -> {b} ({edges[(a, b)][0]})")
        problems.append("cycle between folders: " + ", ".join(steps))
    for (a, b) in sorted(KNOWN_EDGES):
        if (a, b) not in edges:
            print(f"note: known edge {a} -> {b} is gone: remove it from KNOWN_EDGES", file=out)
    if show_graph:
        for (a, b), where in sorted(edges.items()):
            print(f"{a} -> {b}: {len(where)} include(s)", file=out)
    for p in problems:
        print("FAIL:", p, file=out)
    if problems:
        order = " -> ".join("/".join(floor) for floor in LAYERS)
        print(f"check_layers: {len(problems)} problem(s); allowed order (arrows point down): "
              f"{order}", file=out)
        return 1
    print(f"check_layers: {len(files)} files, {len(edges)} folder edges, none upward, no cycle",
          file=out)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   ".."))
    ap.add_argument("--graph", action="store_true")
    args = ap.parse_args()
    return check(os.path.abspath(args.root), args.graph)


if __name__ == "__main__":
    sys.exit(main())
