#!/usr/bin/env python3
"""paired_bootstrap.py - paired bootstrap 95% CI of the AUROC difference of two models scored
on the same test admissions (issue 15: MoE-Health minus the best fusion baseline, and each
ablation, per seed).

usage: paired_bootstrap.py A.csv B.csv [--resamples 1000] [--seed 1] [--level 0.95]
                           [--id-col hadm_id] [--label-col label] [--score-col score]
                           [--task NAME] [--json]

A.csv and B.csv hold one row per test admission with an id, the 0/1 label and the model's
score (extra columns are ignored; rows with an empty label are masked and left out).
`moeh train --predictions FILE` writes such a file with label_<task> and score_<task> per
task: --task mortality reads label_mortality and score_mortality. Both
files must hold the same ids with the same labels, in any order. Each resample draws n ids
with replacement (one random stream from --seed) and scores both models on the SAME drawn
rows; resamples holding one class only have no AUROC and are redrawn. Printed: AUROC(A),
AUROC(B), their difference d = A - B, and the percentile CI of d over the resamples; the
difference is "above 0" when the CI's lower end is > 0. Standard library only.
Exit status: 0 ok, 1 bad input, 2 usage error."""
import argparse
import csv
import json
import random
import sys


def auroc(labels, scores):
    """Mann-Whitney AUROC: P(score of a positive > score of a negative), ties count 1/2."""
    pairs = sorted(zip(scores, labels))
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum, i = 0.0, 0
    while i < len(pairs):  # average ranks over tied scores
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg = (i + 1 + j) / 2.0
        rank_sum += avg * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def read(path, id_col, label_col, score_col):
    out = {}
    with open(path, newline="") as f:
        rd = csv.DictReader(f)
        for c in (id_col, label_col, score_col):
            if c not in (rd.fieldnames or []):
                raise ValueError(f"{path}:1: no column '{c}' (columns: {rd.fieldnames})")
        for line, r in enumerate(rd, start=2):
            if r[label_col] in ("", "-1"):
                continue
            try:
                y, s = int(r[label_col]), float(r[score_col])
            except ValueError:
                raise ValueError(f"{path}:{line}: field {label_col}/{score_col}: expected a "
                                 f"0/1 label and a number, got {r[label_col]!r}/{r[score_col]!r}")
            if y not in (0, 1):
                raise ValueError(f"{path}:{line}: field {label_col}: expected 0 or 1, got {y}")
            if r[id_col] in out:
                raise ValueError(f"{path}:{line}: field {id_col}: id {r[id_col]} repeated")
            out[r[id_col]] = (y, s)
    return out


def paired_bootstrap(labels, a, b, resamples=1000, seed=1, level=0.95):
    """(auroc_a, auroc_b, diff, lo, hi, redrawn) with percentile bounds over `resamples`
    resamples of the row indices, the same indices for both models."""
    n = len(labels)
    fa, fb = auroc(labels, a), auroc(labels, b)
    if fa is None:
        raise ValueError("the test rows hold one class only: no AUROC")
    rng = random.Random(seed)
    diffs, redrawn = [], 0
    while len(diffs) < resamples:
        idx = [rng.randrange(n) for _ in range(n)]
        y = [labels[i] for i in idx]
        da = auroc(y, [a[i] for i in idx])
        if da is None:
            redrawn += 1
            if redrawn > 100 * resamples:
                raise ValueError("almost every resample holds one class: too few positives")
            continue
        diffs.append(da - auroc(y, [b[i] for i in idx]))
    diffs.sort()
    alpha = (1 - level) / 2
    # percentile bounds: the order statistics at floor(alpha R) and ceil((1 - alpha) R) - 1
    lo = diffs[int(alpha * resamples)]
    hi = diffs[min(resamples - 1, max(0, -int(-(1 - alpha) * resamples) - 1))]
    return fa, fb, fa - fb, lo, hi, redrawn


def weighted_auroc(order, labels, scores, w):
    """AUROC of the multiset holding row i w[i] times (a bootstrap resample given as counts),
    rows visited in `order` (indices sorted by score); ties count 1/2; None if a class is
    absent. Equal to auroc() of the resample's rows, in O(n) per call."""
    pos = neg = 0.0
    num, i, n = 0.0, 0, len(order)
    while i < n:
        j, gp, gn = i, 0.0, 0.0
        s = scores[order[i]]
        while j < n and scores[order[j]] == s:
            k = order[j]
            if labels[k]:
                gp += w[k]
            else:
                gn += w[k]
            j += 1
        num += gp * (neg + 0.5 * gn)
        pos += gp
        neg += gn
        i = j
    if pos == 0 or neg == 0:
        return None
    return num / (pos * neg)


def paired_bootstrap_tasks(labels, a, b, resamples=1000, seed=1, level=0.95):
    """The paired bootstrap over admissions for several tasks at once. labels[t][i] is 0, 1 or
    None (masked: row i has no label for task t), a[t][i] and b[t][i] the two models' scores.
    Each resample draws n admissions with replacement (the draws of paired_bootstrap() for
    the same seed) and scores both models on the same admissions for every task; a resample
    with one class only in some task is redrawn. Returns {task: (auroc_a, auroc_b, diff, lo,
    hi)} and under "mean" the same for the mean AUROC over the tasks, plus the redraw count."""
    tasks = list(labels)
    n = len(labels[tasks[0]])
    keep = {t: [i for i in range(n) if labels[t][i] is not None] for t in tasks}
    orders = {}
    for t in tasks:
        for name, sc in (("a", a[t]), ("b", b[t])):
            orders[t, name] = sorted(keep[t], key=lambda i, sc=sc: sc[i])
    full = [1] * n

    def scores(w):
        res = {}
        for t in tasks:
            fa = weighted_auroc(orders[t, "a"], labels[t], a[t], w)
            fb = weighted_auroc(orders[t, "b"], labels[t], b[t], w)
            if fa is None or fb is None:
                return None
            res[t] = (fa, fb)
        res["mean"] = (sum(res[t][0] for t in tasks) / len(tasks),
                       sum(res[t][1] for t in tasks) / len(tasks))
        return res

    point = scores(full)
    if point is None:
        raise ValueError("the test rows hold one class only in some task: no AUROC")
    rng = random.Random(seed)
    diffs = {k: [] for k in point}
    redrawn = 0
    while len(diffs["mean"]) < resamples:
        w = [0] * n
        for _ in range(n):
            w[rng.randrange(n)] += 1
        r = scores(w)
        if r is None:
            redrawn += 1
            if redrawn > 100 * resamples:
                raise ValueError("almost every resample holds one class: too few positives")
            continue
        for k, (fa, fb) in r.items():
            diffs[k].append(fa - fb)
    alpha = (1 - level) / 2
    out = {}
    for k, d in diffs.items():
        d.sort()
        lo = d[int(alpha * resamples)]
        hi = d[min(resamples - 1, max(0, -int(-(1 - alpha) * resamples) - 1))]
        out[k] = (point[k][0], point[k][1], point[k][0] - point[k][1], lo, hi)
    return out, redrawn


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("a", help="predictions of model A (CSV)")
    ap.add_argument("b", help="predictions of model B (CSV), the same ids")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--level", type=float, default=0.95)
    ap.add_argument("--id-col", default="hadm_id")
    ap.add_argument("--label-col", default="label")
    ap.add_argument("--score-col", default="score")
    ap.add_argument("--task", help="read label_TASK and score_TASK (moeh train --predictions)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    o = ap.parse_args(argv)
    if o.resamples < 10 or not 0 < o.level < 1:
        ap.error("--resamples >= 10 and 0 < --level < 1")
    if o.task:
        o.label_col, o.score_col = "label_" + o.task, "score_" + o.task
    try:
        ra = read(o.a, o.id_col, o.label_col, o.score_col)
        rb = read(o.b, o.id_col, o.label_col, o.score_col)
        if ra.keys() != rb.keys():
            only_a = sorted(ra.keys() - rb.keys())[:3]
            only_b = sorted(rb.keys() - ra.keys())[:3]
            raise ValueError(f"{o.a} and {o.b} hold different ids (only in A e.g. {only_a}, "
                             f"only in B e.g. {only_b}): a paired bootstrap needs the same rows")
        ids = sorted(ra)
        for i in ids:
            if ra[i][0] != rb[i][0]:
                raise ValueError(f"id {i}: label {ra[i][0]} in {o.a} but {rb[i][0]} in {o.b}")
        labels = [ra[i][0] for i in ids]
        fa, fb, d, lo, hi, redrawn = paired_bootstrap(
            labels, [ra[i][1] for i in ids], [rb[i][1] for i in ids], o.resamples, o.seed,
            o.level)
    except (OSError, ValueError) as e:
        print(f"paired_bootstrap.py: {e}", file=sys.stderr)
        return 1
    res = {"n": len(ids), "positives": sum(labels), "auroc_a": fa, "auroc_b": fb, "diff": d,
           "ci_low": lo, "ci_high": hi, "level": o.level, "resamples": o.resamples,
           "seed": o.seed, "redrawn": redrawn,
           "verdict": "above 0" if lo > 0 else "below 0" if hi < 0 else "tie (CI holds 0)"}
    if o.json:
        print(json.dumps(res))
    else:
        print(f"n {res['n']} ({res['positives']} positive): AUROC A {fa:.4f}, B {fb:.4f}, "
              f"A - B {d:+.4f}, {o.level:.0%} CI [{lo:+.4f}, {hi:+.4f}] over {o.resamples} "
              f"paired resamples (seed {o.seed}): {res['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
