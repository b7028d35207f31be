#!/usr/bin/python3
"""report.py - one self-contained HTML report of a finished federation (docs/report.md).

Reads RUN_DIR/metrics.jsonl and RUN_DIR/config.json as `moeh run` (the coordinator)
writes them and writes RUN_DIR/report.html (or --out FILE): learning curves (overall and per
task), AUROC per modality combination, ROC curves and calibration per task (test and
validation), the gate's mean weight per expert and combination, which sites reported in each
phase and which dropped out, failed phase attempts (retries), DP epsilon per round and the
run's configuration. The figures are drawn with matplotlib (Debian's python3-matplotlib, hence
/usr/bin/python3 above) and embedded as data: URIs of
SVG images; the page loads nothing (a Content-Security-Policy forbids it) and runs no script.

Every string read from the files is HTML-escaped before it reaches the page and is drawn by
matplotlib with mathtext off (a site id or a Bye reason comes from a site and may be hostile).

Exit status: 0 report written; 1 an unexpected failure (Python's exit status for an uncaught
exception: a bug); 2 bad input (no run directory, no metrics.jsonl, a line that is not a JSON
object, a field of the wrong type), with file:line in the message; 3 matplotlib is missing or
older than 3.5. `moeh report` (sim/cmd_report.c) passes this status on, and exits 1 itself
when it cannot find or start this script.
"""
import argparse
import base64
import io
import json
import math
import os
import sys

# the run as read from its files (report_data.py, beside this script)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report_data import (  # noqa: E402
    COMBOS,
    SPLITS,
    InputError,
    esc,
    combo_label,
    read_metrics,
    read_config,
)

# figure ids, in page order (tests/test_report.py looks for each)
FIG_LOSS, FIG_AUROC, FIG_TASKS = "fig-loss", "fig-auroc", "fig-task-curves"
FIG_COMBO, FIG_GATE, FIG_GATE_ROUNDS = "fig-combo-auroc", "fig-gate-heatmap", "fig-gate-rounds"
FIG_PART, FIG_DP, FIG_CALIB = "fig-participation", "fig-dp-epsilon", "fig-calibration"
FIG_ROC, FIG_TASK_LEARN = "fig-roc", "fig-task-learning"

# ---------------------------------------------------------------- figures (matplotlib)

def setup_matplotlib():
    try:
        import matplotlib
    except ImportError:
        print(f"report.py: matplotlib is missing for {sys.executable}: install Debian's "
              "python3-matplotlib (scripts/install-deps.sh)", file=sys.stderr)
        sys.exit(3)
    if "text.parse_math" not in matplotlib.rcParams:  # 3.5+; strings must never be mathtext
        print(f"report.py: matplotlib {matplotlib.__version__} is too old (3.5 or newer: Debian "
              "12's python3-matplotlib is 3.6)", file=sys.stderr)
        sys.exit(3)
    matplotlib.use("Agg")
    matplotlib.rcParams.update({
        "svg.fonttype": "path",     # glyphs as paths: no font needed where the page is opened
        "svg.hashsalt": "moeh",     # stable ids: the same run gives the same file
        "text.parse_math": False,   # strings from the files are text, never mathtext
        "font.size": 9,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "figure.dpi": 100,
    })
    import matplotlib.pyplot as plt
    return plt


def svg_uri(plt, fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure_html(fig_id, uri, caption, alt):
    return (f'<figure id="{esc(fig_id)}"><img src="{uri}" alt="{esc(alt)}">'
            f"<figcaption>{caption}</figcaption></figure>\n")


def series(rounds, get):
    xs, ys = [], []
    for r in rounds:
        v = get(r)
        if v is not None and math.isfinite(v):
            xs.append(r)
            ys.append(v)
    return xs, ys


def int_rounds(ax):
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def legend(ax, **kw):
    """A legend when something is labelled (matplotlib warns otherwise)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def mark_round(ax, mark, label):
    ax.axvline(mark, color="0.35", linestyle="--", linewidth=1, label=label)
    int_rounds(ax)


def maybe_log(ax, values):
    pos = [v for v in values if v is not None and v > 0]
    if pos and min(pos) > 0 and max(pos) / min(pos) > 1e3:
        ax.set_yscale("log")
        return True
    return False


def fig_loss(plt, run, rounds, mark, mark_label):
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    allv = []
    for key, label, style in (("train_loss", "training objective (sum over tasks + gate terms)",
                               "-o"),
                              ("val_loss", "validation loss (per label)", "-^"),
                              ("test_loss", "test loss (per label)", "-s")):
        xs, ys = series(rounds, lambda r: run.evals[r].num(key))
        if xs:
            ax.plot(xs, ys, style, markersize=3, label=label)
            allv += ys
    logy = maybe_log(ax, allv)
    mark_round(ax, mark, mark_label)
    ax.set_xlabel("round")
    ax.set_ylabel("loss" + (", log scale" if logy else ""))
    legend(ax, loc="best", fontsize=8)
    return svg_uri(plt, fig), logy


def fig_auroc(plt, run, rounds, tasks, mark, mark_label):
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for t in tasks:
        xs, ys = series(rounds, lambda r: run.evals[r].num("auroc_" + t))
        if xs:
            ax.plot(xs, ys, "-o", markersize=3, label=f"{t} (test)")
        xs, ys = series(rounds, lambda r: run.evals[r].num("val_auroc_" + t))
        if xs:
            ax.plot(xs, ys, ":", label=f"{t} (validation)")
    xs, ys = series(rounds, lambda r: run.evals[r].num("auroc_mean"))
    if xs:
        ax.plot(xs, ys, "-", color="black", linewidth=2, label="mean of tasks (test)")
    mark_round(ax, mark, mark_label)
    ax.set_xlabel("round")
    ax.set_ylabel("AUROC")
    legend(ax, loc="best", fontsize=8)
    return svg_uri(plt, fig)


def has_task_loss(run, rounds, tasks):
    return any(run.evals[r].num(p + t) is not None for r in rounds for t in tasks
               for p in ("test_loss_", "val_loss_"))


def fig_task_learning(plt, run, rounds, tasks, mark, mark_label):
    """Per task (a column each): loss per round (validation and test, from the summed
    histograms) above AUROC per round (validation and test). The sites report no per-task
    training loss."""
    n = max(1, len(tasks))
    fig, axes = plt.subplots(2, n, figsize=(3.3 * n, 5.6), sharex=True, squeeze=False)
    for i, t in enumerate(tasks):
        top, bottom = axes[0][i], axes[1][i]
        for key, name, style, colour in (("val_loss_", "validation", ":^", "C1"),
                                         ("test_loss_", "test", "-o", "C0")):
            xs, ys = series(rounds, lambda r: run.evals[r].num(key + t))
            if xs:
                top.plot(xs, ys, style, color=colour, markersize=3, label=name)
        for key, name, style, colour in (("val_auroc_", "validation", ":^", "C1"),
                                         ("auroc_", "test", "-o", "C0")):
            xs, ys = series(rounds, lambda r: run.evals[r].num(key + t))
            if xs:
                bottom.plot(xs, ys, style, color=colour, markersize=3, label=name)
        mark_round(top, mark, mark_label)
        mark_round(bottom, mark, mark_label)
        top.set_title(t)
        bottom.set_xlabel("round")
    axes[0][0].set_ylabel("loss (BCE per label)")
    axes[1][0].set_ylabel("AUROC")
    legend(axes[0][-1], loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    legend(axes[1][-1], loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    return svg_uri(plt, fig)


def fig_task_curves(plt, run, rounds, tasks, mark, mark_label):
    n = max(1, len(tasks))
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.2), sharey=True, squeeze=False)
    for ax, t in zip(axes[0], tasks):
        xs, ys = series(rounds, lambda r: run.tasks.get(r, {}).get(t, {}).get("auroc"))
        ax.plot(xs, ys, "-", color="black", linewidth=2, label="all test rows")
        for c in COMBOS:
            xs, ys = series(rounds, lambda r: run.tasks.get(r, {}).get(t, {}).get(c))
            if xs:
                ax.plot(xs, ys, "-o", markersize=2.5, linewidth=1, label=combo_label(c))
        mark_round(ax, mark, mark_label)
        ax.set_title(t)
        ax.set_xlabel("round")
    axes[0][0].set_ylabel("test AUROC")
    legend(axes[0][-1], loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    return svg_uri(plt, fig)


def fig_combo(plt, run, tasks, mark):
    row = run.tasks.get(mark, {})
    combos = [c for c in COMBOS if any(row.get(t, {}).get(c) is not None for t in tasks)]
    groups = ["all"] + combos
    fig, ax = plt.subplots(figsize=(7.0, 3.4))
    width = 0.8 / max(1, len(tasks))
    lowest = 0.3
    for i, t in enumerate(tasks):
        xs, ys = [], []
        for j, c in enumerate(groups):
            v = row.get(t, {}).get("auroc" if c == "all" else c)
            if v is not None and math.isfinite(v):
                xs.append(j + (i - (len(tasks) - 1) / 2) * width)
                ys.append(v)
        ax.bar(xs, ys, width=width * 0.95, label=t)
        lowest = min([lowest] + [y - 0.05 for y in ys])
    gate = run.gates.get(mark, {})
    labels = []
    for c in groups:
        lab = "all" if c == "all" else combo_label(c)
        if c != "all" and c in gate:
            lab += f"\nn={gate[c][0]}"
        labels.append(lab)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.axhline(0.5, color="0.5", linewidth=0.8)
    ax.set_ylim(max(0.0, lowest), 1.0)
    ax.set_ylabel("test AUROC")
    legend(ax, loc="upper right", fontsize=8, ncol=max(1, len(tasks)))
    return svg_uri(plt, fig), groups


def fig_calibration(plt, calib, tasks):
    """Reliability diagram per task: observed fraction of positives against the mean predicted
    probability of each bin (marker area ~ rows), the test split's (filled, solid) and the
    validation split's (hollow, dotted); the diagonal is perfect calibration."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.0 * len(tasks), 3.1), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, linestyle="--")
        for split, name, style, face in SPLITS:
            c = calib.get(split, {}).get(t)
            pts = [(b[3], b[4], b[2]) for b in (c[2] if c else [])
                   if b[2] and b[3] is not None and b[4] is not None]
            if not pts:
                continue
            most = max(p[2] for p in pts)
            brier = "" if c[0] is None else f", Brier {c[0]:.4f}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=face, linewidth=1,
                    label=f"{name}{brier}")
            ax.scatter([p[0] for p in pts], [p[1] for p in pts],
                       s=[12 + 120 * p[2] / most for p in pts], zorder=3,
                       color=face if split == "test" else "none", edgecolors=face)
        ax.set_title(t, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted probability", fontsize=8)
        legend(ax, loc="upper left", fontsize=7)
    axes[0][0].set_ylabel("observed fraction positive", fontsize=8)
    return svg_uri(plt, fig)


def fig_roc(plt, roc, tasks):
    """ROC curve per task: the test split's (solid) and the validation split's (dashed) at the
    marked round, the chance diagonal, the AUROC of each curve in the legend."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.0 * len(tasks), 3.2), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, linestyle="--", label="chance")
        for split, name, style, _ in SPLITS:
            c = roc.get(split, {}).get(t)
            if not c or len(c[1]) < 2:
                continue
            auc = "" if c[0] is None else f", AUROC {c[0]:.3f}"
            ax.plot(c[1], c[2], style, linewidth=1.5, label=f"{name}{auc}")
        ax.set_title(t, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate", fontsize=8)
        legend(ax, loc="lower right", fontsize=7)
    axes[0][0].set_ylabel("true positive rate", fontsize=8)
    return svg_uri(plt, fig)


def expert_labels(n):
    if n == len(COMBOS):
        return [f"{k}: {c}" for k, c in enumerate(COMBOS)]
    return [str(k) for k in range(n)]


def fig_gate(plt, gate):
    combos = [c for c in gate if gate[c][0] > 0]
    n_exp = max((len(gate[c][1]) for c in combos), default=0)
    mat = [gate[c][1] + [0.0] * (n_exp - len(gate[c][1])) for c in combos]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n_exp, 0.8 + 0.5 * len(combos)))
    im = ax.imshow(mat, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.grid(False)
    for i, rowv in enumerate(mat):
        for j, v in enumerate(rowv):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 else "black")
    ax.set_xticks(range(n_exp))
    ax.set_xticklabels(expert_labels(n_exp), fontsize=8)
    ax.set_yticks(range(len(combos)))
    ax.set_yticklabels([f"{combo_label(c)} (n={gate[c][0]})" for c in combos], fontsize=8)
    ax.set_xlabel("expert (index: the combination it specialises in)")
    ax.set_ylabel("test rows' modality combination")
    fig.colorbar(im, ax=ax, label="mean gate weight")
    return svg_uri(plt, fig)


def fig_gate_rounds(plt, run, rounds, mark, mark_label):
    combos = [c for c in COMBOS if any(run.gates.get(r, {}).get(c, (0, []))[0] > 0 for r in rounds)]
    combos += [c for r in rounds for c in run.gates.get(r, {})
               if c not in COMBOS and c not in combos and run.gates[r][c][0] > 0]
    n_exp = max((len(g[c][1]) for g in run.gates.values() for c in g), default=0)
    labels = expert_labels(n_exp)
    ncol = min(4, max(1, len(combos)))
    nrow = (len(combos) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.0 * ncol, 2.6 * nrow), sharey=True,
                             squeeze=False)
    for i, c in enumerate(combos):
        ax = axes[i // ncol][i % ncol]
        xs = [r for r in rounds if run.gates.get(r, {}).get(c, (0, []))[0] > 0]
        ys = []
        for k in range(n_exp):
            ys.append([(run.gates[r][c][1] + [0.0] * n_exp)[k] for r in xs])
        if xs:
            ax.stackplot(xs, ys, labels=labels)
        mark_round(ax, mark, mark_label)
        ax.set_title(combo_label(c), fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlabel("round")
    for i in range(len(combos), nrow * ncol):
        axes[i // ncol][i % ncol].axis("off")
    axes[0][0].set_ylabel("mean gate weight")
    handles, labs = axes[0][0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles[::-1], labs[::-1], loc="center left", bbox_to_anchor=(1.0, 0.5),
               fontsize=7, title="expert")
    return svg_uri(plt, fig)


def phase_sites(run, r):
    """[(phase, ids)] of round r: the sites whose reply is in each phase's sum ("contributors"
    of the "train" line, "val_contributors" and "test_contributors" of the "eval" line; without
    them the per-site "site_update" / "site_eval" lines), ids None when the metrics do not say.
    The validation phase only where the run validated."""
    tr, ev = run.trains.get(r), run.evals.get(r)
    train = tr.ids("contributors") if tr else None
    if train is None and r in run.site_update:
        train = sorted(run.site_update[r])
    val = ev.ids("val_contributors") if ev else None
    test = ev.ids("test_contributors") if ev else None
    if test is None and r in run.site_eval:
        test = sorted(run.site_eval[r])
    out = [("train", train)]
    if val is not None or (ev is not None and ev.num("val_loss") is not None):
        out.append(("validation", val))
    return out + [("test", test)]


class Participation:
    """Who reported in each phase of each round, and who dropped out: a site is in the run
    from the first phase whose sum holds its reply (the statistics phase included) or its first
    "site_gone" line; from then on, a phase whose sum lacks it is a dropout of that phase."""

    def __init__(self, run, rounds):
        self.sites = []  # in the order they entered the run
        known = set()

        def enter(ids):
            for x in ids:
                if x not in known:
                    known.add(x)
                    self.sites.append(x)
        if run.stats is not None:
            enter(run.stats.ids("contributors") or [])
        self.phases = {}  # round -> [(phase, reported ids or None, dropped ids or None)]
        self.state = {}  # (site, round) -> 2 every phase, 1 some, 0 none, absent: not in yet
        self.recorded = False  # some phase names its sites
        gone = {}
        for r, x, _ in run.site_gone:
            gone.setdefault(r, []).append(x)
        for r in rounds:
            rows, asked, got = [], {}, {}
            for ph, ids in phase_sites(run, r):
                if ids is None:
                    rows.append((ph, None, None))
                    continue
                self.recorded = True
                here = set(ids)
                rows.append((ph, list(ids), [x for x in self.sites if x not in here]))
                enter(ids)
                for x in self.sites:
                    asked[x] = asked.get(x, 0) + 1
                    got[x] = got.get(x, 0) + (x in here)
            enter(gone.get(r, []))
            self.phases[r] = rows
            for x, n in asked.items():
                self.state[(x, r)] = 2 if got[x] == n else 1 if got[x] else 0


def fig_participation(plt, run, rounds, part):
    from matplotlib.ticker import MaxNLocator
    sites = sorted(part.sites) if part.recorded else []
    if sites:
        # one row per site, one column per round: 2 in every phase's sum, 1 in some, 0 in none,
        # -1 not in the run yet; bounded size: every round and site up to ~25 / 40 labels, then
        # every k-th
        nr, ns = len(rounds), len(sites)
        fig, ax = plt.subplots(figsize=(min(11.0, max(4.0, 0.45 * nr + 2.0)),
                                        min(14.0, 1.0 + 0.35 * ns)))
        mat = [[part.state.get((x, r), -1) for r in rounds] for x in sites]
        from matplotlib.colors import ListedColormap
        ax.imshow(mat, cmap=ListedColormap(["#dddddd", "#d62728", "#ffbf3f", "#2ca02c"]),
                  vmin=-1, vmax=2, aspect="auto", interpolation="nearest")
        ax.grid(False)
        col = {r: j for j, r in enumerate(rounds)}
        row = {x: i for i, x in enumerate(sites)}
        gone = sorted({(row[x], col[r]) for r, x, _ in run.site_gone if r in col and x in row})
        if nr <= 40 and ns <= 60:
            for i, j in gone:
                ax.text(j, i, "gone", ha="center", va="center", fontsize=7, color="white")
        elif gone:
            ax.plot([j for _, j in gone], [i for i, _ in gone], "kx", markersize=4)
        retried = sorted({col[x[0]] for x in run.retries if x[0] in col})
        if retried:  # a triangle above the column of a round with a failed phase attempt
            ax.plot(retried, [-0.85] * len(retried), "v", color="black", markersize=6,
                    clip_on=False)
        ax.set_ylim(ns - 0.5, -1.3 if retried else -0.5)
        kx, ky = -(-nr // 25), -(-ns // 40)
        ax.set_xticks(range(0, nr, kx))
        ax.set_xticklabels([str(r) for r in rounds[::kx]], fontsize=8)
        ax.set_yticks(range(0, ns, ky))
        ax.set_yticklabels(sites[::ky], fontsize=8)
        if nr <= 60 and ns <= 60:
            ax.set_xticks([j - 0.5 for j in range(1, nr)], minor=True)
            ax.set_yticks([i - 0.5 for i in range(1, ns)], minor=True)
            ax.grid(True, which="minor", color="white", linewidth=1.5)
            ax.tick_params(which="minor", length=0)
        ax.set_xlabel("round")
        from matplotlib.patches import Patch
        from matplotlib.lines import Line2D
        handles = [Patch(color="#2ca02c", label="reported in every phase"),
                   Patch(color="#ffbf3f", label="in some phases (dropped out of others)"),
                   Patch(color="#d62728", label="in no phase (dropped out)")]
        if any(v == -1 for row in mat for v in row):
            handles.append(Patch(color="#dddddd", label="not in the run yet"))
        if gone and not (nr <= 40 and ns <= 60):
            handles.append(Line2D([], [], color="black", marker="x", linestyle="none",
                                  label="the site left (site_gone)"))
        if retried:
            handles.append(Line2D([], [], color="black", marker="v", linestyle="none",
                                  label="a phase attempt failed (retry line)"))
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
        return svg_uri(plt, fig)
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    xs, asked = series(rounds, lambda r: run.trains[r].num("participants") if r in run.trains
                       else None)
    if xs:
        ax.bar(xs, asked, width=0.8, color="0.8", label="sites asked to train (participants)")
    xs, tr = series(rounds, lambda r: run.trains[r].num("sites") if r in run.trains else None)
    if xs:
        ax.plot(xs, tr, "o-", label="sites whose update was aggregated")
    xs, ev = series(rounds, lambda r: run.evals[r].num("sites"))
    if xs:
        ax.plot(xs, ev, "s--", label="sites that evaluated")
    ax.set_xlabel("round")
    ax.set_ylabel("sites")
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    int_rounds(ax)
    legend(ax, loc="lower right", fontsize=8)
    return svg_uri(plt, fig)


def fig_dp(plt, run, rounds):
    fig, ax = plt.subplots(figsize=(6.4, 3.0))

    def get(key):
        return series(rounds, lambda r: (run.trains.get(r) or run.evals[r]).num(key))
    xs, ys = get("dp_epsilon")
    ax.plot(xs, ys, "o-", label="epsilon of the released sums (dp_epsilon)")
    xs2, ys2 = get("dp_epsilon_coordinator")
    if xs2 and (xs2, ys2) != (xs, ys):
        ax.plot(xs2, ys2, "s--", label="epsilon against the coordinator (dp_epsilon_coordinator)")
    int_rounds(ax)
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative epsilon")
    ax.set_ylim(bottom=0)
    legend(ax, loc="upper left", fontsize=8)
    return svg_uri(plt, fig)


# ---------------------------------------------------------------- page

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em;line-height:1.4}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:0.5em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;height:auto}
figcaption{font-size:0.85em;color:#555;max-width:900px}
.note{background:#fff8e0;border-left:4px solid #e0b000;padding:4px 10px}
code{background:#f3f3f3;padding:0 3px}
"""


def fmt(v, digits=4):
    if v is None:
        return "&ndash;"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "&ndash;"
        if v == int(v) and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.{digits}f}" if 1e-3 <= abs(v) < 1e6 else f"{v:.4g}"
    return esc(v)


def fmt_config(v):
    if isinstance(v, float):
        return esc(format(v, ".7g"))  # float32 options shown as given (0.01, not 0.0099999998)
    if isinstance(v, (dict, list)):
        return "<code>" + esc(json.dumps(v)) + "</code>"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return esc(v)


def id_list(ids, most=12):
    """Already-escaped site ids, comma-separated, at most `most` of them."""
    if len(ids) <= most:
        return ", ".join(ids)
    return ", ".join(ids[:most]) + f" and {len(ids) - most} more"


OUTCOME = {"retry": "opened again", "wait": "waited for sites (outage, no retry counted)",
           "failed": "out of retries: the run failed"}


def retry_html(run):
    """The "retry" lines: every failed phase attempt and what the coordinator did."""
    if not run.retries:
        new = any("test_contributors" in e.obj for e in run.evals.values())
        return ("<p>No phase attempt failed: no \"retry\" line.</p>\n" if new else
                "<p class=note>No \"retry\" line: this run's metrics come from a coordinator "
                "that did not record failed phase attempts (its log does: \"retry N of M\").</p>"
                "\n")
    rows = []
    for r, ph, outcome, att, most, conn, need, why in run.retries:
        rows.append([str(r), esc(ph), esc(OUTCOME.get(outcome, outcome)),
                     f"{fmt(att)} of {fmt(most)}", f"{fmt(conn)} / {fmt(need)}", esc(why)])
    n = sum(1 for x in run.retries if x[2] == "retry")
    return (f"<p>Failed phase attempts (\"retry\" lines): {len(run.retries)}, of which {n} "
            "retried (round 0 is the statistics phase):</p>\n" +
            table(["round", "phase", "what the coordinator did", "retries counted",
                   "sites connected / needed", "why"], rows, left=3))


def table(head, rows, left=1):
    """head: escaped header cells; rows: lists of already-formatted cells."""
    out = ["<table><tr>"]
    out += [f'<th{" class=l" if i < left else ""}>{h}</th>' for i, h in enumerate(head)]
    out.append("</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f'<td{" class=l" if i < left else ""}>{c}</td>'
                                    for i, c in enumerate(row)) + "</tr>")
    out.append("</table>\n")
    return "".join(out)


def render(run, config, run_dir, metrics_path):
    plt = setup_matplotlib()
    rounds = sorted(run.evals)
    tasks = run.task_names or sorted(k[6:] for k in run.evals[rounds[-1]].obj
                                     if k.startswith("auroc_") and k != "auroc_mean")
    notes = []
    if run.selected and run.selected[0] in run.evals:
        mark = run.selected[0]
        mark_label = f"selected round {mark}"
        why = run.selected[2]
        mark_text = (f"the <b>selected round {mark}</b>" +
                     (f" ({esc(why)})" if why else "") +
                     f" (<code>selected_round</code> in {esc(run.selected[1])})")
    else:
        mark = rounds[-1]
        mark_label = f"last round {mark}"
        mark_text = (f"the <b>last round {mark}</b> (the metrics name no selected round: the model "
                     "the run wrote is the last round's)")
        if run.selected:
            notes.append(f"{esc(run.selected[1])}: selected_round {run.selected[0]} has no "
                         "\"eval\" line; the last round is shown instead.")
    ev = run.evals[mark]
    if run.repeated:
        notes.append("Round(s) " + ", ".join(str(r) for r in sorted(run.repeated)) +
                     " have more than one \"eval\" line (a resumed or repeated round?); the "
                     "last line of each round is shown.")

    parts = []
    title = f"moeh run report: {os.path.basename(os.path.abspath(run_dir))}"
    parts.append(f"<h1>{esc(title)}</h1>\n")
    summary = [f"{len(rounds)} evaluated rounds ({rounds[0]}&ndash;{rounds[-1]})",
               f"tasks: {esc(', '.join(tasks))}"]
    if config:
        strat = config.get("strategy")
        if strat is not None:
            summary.append(f"strategy {esc(strat)}")
        if "secagg" in config:
            summary.append("secure aggregation " + ("on" if config["secagg"] is True else "off"))
        if isinstance(config.get("dp_noise"), (int, float)) and config.get("dp_noise"):
            summary.append(f"DP-FedAvg (noise multiplier {fmt_config(config['dp_noise'])}, clip "
                           f"{fmt_config(config.get('dp_clip'))})")
    if run.stats:
        summary.append(f"normalisation statistics from {fmt(run.stats.int('sites'))} sites over "
                       f"{fmt(run.stats.int('features'))} features")
    parts.append(f"<p>From <code>{esc(metrics_path)}</code>: " + "; ".join(summary) + ".</p>\n")
    parts.append(f"<p>Marked in every per-round figure and used for the final-round figures: "
                 f"{mark_text}.</p>\n")

    # headline table at the marked round
    head = ["round", "test loss", "mean AUROC"] + [f"AUROC {esc(t)}" for t in tasks]
    cells = [str(mark), fmt(ev.num("test_loss")), fmt(ev.num("auroc_mean"))]
    cells += [fmt(ev.num("auroc_" + t)) for t in tasks]
    parts.append(table(head, [cells], left=0))
    cal = run.calib.get(mark, {})
    rows = []
    for t in tasks:
        c = {split: cal.get(split, {}).get(t) for split in ("test", "val")}
        rows.append([esc(t), fmt(ev.num("auroc_" + t)), fmt(ev.num("val_auroc_" + t)),
                     fmt(ev.num("test_loss_" + t)), fmt(ev.num("val_loss_" + t)),
                     fmt(c["test"] and c["test"][0]), fmt(c["val"] and c["val"][0])])
    parts.append("<p>Per task at the marked round (loss: mean BCE per label from the summed "
                 "score histograms; &ndash;: not in these metrics):</p>\n")
    parts.append(table(["task", "test AUROC", "validation AUROC", "test loss", "validation loss",
                        "test Brier", "validation Brier"], rows))

    # learning curves
    parts.append("<h2>Learning curves</h2>\n")
    uri, logy = fig_loss(plt, run, rounds, mark, mark_label)
    cap = ("Loss per round, over all tasks. The training loss (\"train_loss\" of the "
           "\"eval\" lines) is the sample-weighted mean of the sites' local training "
           "objective: the masked BCE summed over the tasks (each a mean over its labels, with "
           "any positive-class weight) plus the gate's terms (gate supervision in the warm-up "
           "rounds, load balancing after), so it is on a larger scale than the other two. The "
           "validation and test losses (\"val_loss\", \"test_loss\") are the mean BCE per "
           "label over all labels of all sites' validation or test rows, exact, from the "
           "summed evaluation.")
    if all(run.evals[r].num("train_loss") is None for r in rounds):
        cap += " No training loss was reported (under DP the sites keep it)."
    if logy:
        cap += " Log scale: the values span more than three orders of magnitude."
    parts.append(figure_html(FIG_LOSS, uri, cap, "train and test loss per round"))
    parts.append(figure_html(
        FIG_AUROC, fig_auroc(plt, run, rounds, tasks, mark, mark_label),
        "Test AUROC per task and round, from the summed score histograms of every site's test "
        "split (\"auroc_&lt;task&gt;\" of the \"eval\" lines), and their mean.",
        "test AUROC per task per round"))
    cap = ("Learning curves per task, the marked round dashed. Top: the task's loss per round "
           "on the validation and test rows (\"val_loss_&lt;task&gt;\", "
           "\"test_loss_&lt;task&gt;\" of the \"eval\" lines: the mean BCE per label "
           "computed from the summed score histograms with each row at its bin's centre, an "
           "estimate whose label-weighted mean over the tasks came within 1e-4 of the exact "
           "loss above in our runs). Bottom: the task's validation and test AUROC "
           "(\"val_auroc_&lt;task&gt;\", \"auroc_&lt;task&gt;\"). There is no training "
           "curve per task: the sites report only their training objective over all tasks "
           "(the figure above).")
    if not has_task_loss(run, rounds, tasks):
        cap += (" These metrics carry no per-task loss (a run from before it was recorded): "
                "only the training loss over all tasks is drawn.")
    parts.append(figure_html(FIG_TASK_LEARN,
                             fig_task_learning(plt, run, rounds, tasks, mark, mark_label), cap,
                             "loss and AUROC per round, validation and test, one column per "
                             "task"))
    parts.append(figure_html(
        FIG_TASKS, fig_task_curves(plt, run, rounds, tasks, mark, mark_label),
        "Per task: test AUROC per round on all test rows and on the rows of each modality "
        "combination (\"task\" lines). A combination absent from every site has no curve.",
        "test AUROC per round per modality combination, one panel per task"))

    # per-combination AUROC
    parts.append(f"<h2>AUROC per modality combination ({esc(mark_label)})</h2>\n")
    uri, groups = fig_combo(plt, run, tasks, mark)
    parts.append(figure_html(
        FIG_COMBO, uri,
        "Test AUROC per task on all test rows and on the rows of each modality combination "
        "(E = EHR, N = notes, I = chest X-ray), from the \"task\" lines of that round; n is the "
        "number of test rows of the combination (\"gate\" line). Small n means a wide uncertainty.",
        "test AUROC per modality combination and task"))
    row = run.tasks.get(mark, {})
    gate = run.gates.get(mark, {})
    rows = []
    for c in groups:
        n = "" if c == "all" or c not in gate else str(gate[c][0])
        rows.append([esc("all" if c == "all" else f"{c} ({combo_label(c)})"), n] +
                    [fmt(row.get(t, {}).get("auroc" if c == "all" else c)) for t in tasks])
    parts.append(table(["combination", "test rows"] + [esc(t) for t in tasks], rows))

    # ROC curves
    parts.append(f"<h2>ROC curves ({esc(mark_label)})</h2>\n")
    roc = run.roc.get(mark, {})
    if roc:
        rtasks = [t for t in tasks if any(t in v for v in roc.values())]
        rtasks += sorted({t for v in roc.values() for t in v if t not in rtasks})
        parts.append(figure_html(
            FIG_ROC, fig_roc(plt, roc, rtasks),
            "ROC curve per task on all test rows (solid) and validation rows (dotted) of that "
            "round (\"roc\" lines): one point per threshold at the edges of the summed score "
            "histogram's bins, so no site revealed a prediction; the area under the points is the "
            "AUROC in the legend (ties within a bin are the straight segments). The dashed "
            "diagonal is chance.", "ROC curves per task, test and validation"))
        rows = []
        for t in rtasks:
            for split, name, _, _ in SPLITS:
                c = roc.get(split, {}).get(t)
                if c:
                    rows.append([esc(t), name, fmt(c[0]), fmt(c[3]), fmt(c[4]), str(len(c[1]))])
        parts.append(table(["task", "split", "AUROC", "positives", "negatives", "points"], rows,
                           left=2))
    else:
        parts.append("<p class=note>No \"roc\" line for this round (a run from before ROC "
                     "curves were reported).</p>\n")

    # calibration
    parts.append(f"<h2>Calibration ({esc(mark_label)})</h2>\n")
    calib = run.calib.get(mark, {})
    if calib:
        ctasks = [t for t in tasks if any(t in v for v in calib.values())]
        ctasks += sorted({t for v in calib.values() for t in v if t not in ctasks})
        parts.append(figure_html(
            FIG_CALIB, fig_calibration(plt, calib, ctasks),
            "Reliability per task on all test rows (filled markers, solid line) and all "
            "validation rows (hollow markers, dotted line) of that round (\"calibration\" lines "
            "and their \"split\", from the summed score histograms): each point is a tenth of "
            "the probability range, at the mean predicted probability of its rows against the "
            "fraction of them that were positive; the dashed diagonal is perfect calibration; "
            "marker area grows with the rows in the bin.",
            "reliability diagram per task, test and validation"))
        rows = []
        for t in ctasks:
            for split, name, _, _ in SPLITS:
                c = calib.get(split, {}).get(t)
                if c:
                    rows.append([esc(t), name, fmt(c[0]), fmt(c[1]),
                                 str(sum(b[2] for b in c[2]))])
        parts.append(table(["task", "split", "Brier score", "ECE", "rows"], rows, left=2))
    else:
        parts.append("<p class=note>No \"calibration\" line for this round (a run from before "
                     "calibration was reported).</p>\n")

    # gate
    parts.append("<h2>The gate: mean weight per expert and modality combination</h2>\n")
    if gate and any(v[0] > 0 for v in gate.values()):
        parts.append(figure_html(
            FIG_GATE, fig_gate(plt, gate),
            f"{esc(mark_label.capitalize())}: the gate's softmax weight of each expert, averaged "
            "over the test rows of each modality combination (\"gate\" line: summed over all "
            "sites' "
            "test rows, divided by the row count). Expert k was warmed up on combination k, so a "
            "specialised gate puts its weight near the diagonal.",
            "heatmap of mean gate weight per expert per modality combination"))
        parts.append(figure_html(
            FIG_GATE_ROUNDS, fig_gate_rounds(plt, run, rounds, mark, mark_label),
            "The same mean gate weights per round, stacked (they sum to 1), one panel per "
            "combination that has test rows.",
            "mean gate weight per expert over rounds, one panel per modality combination"))
    else:
        parts.append("<p class=note>No \"gate\" line with test rows for this round.</p>\n")

    # participation
    parts.append("<h2>Sites per round</h2>\n")
    all_rounds = sorted(set(rounds) | set(run.trains))
    part = Participation(run, all_rounds)
    if part.recorded:
        cap = ("One row per site, one column per round: whether the site's reply is in the sum "
               "of every phase of the round (training update, validation and test evaluation; "
               "\"contributors\" of the \"train\" lines, \"val_contributors\" and "
               "\"test_contributors\" of the \"eval\" lines, or the per-site \"site_update\" "
               "and \"site_eval\" lines), of some of them, or of none: a site that took part "
               "in an earlier phase of the run and is missing from a sum dropped out of that "
               "phase. \"gone\" (or a cross, on a large grid) marks a round in which the site "
               "left (\"site_gone\"); a triangle above a round, a failed phase attempt "
               "(\"retry\" lines, below).")
    else:
        cap = ("Counts per round from the \"train\" lines (participants asked, updates "
               "aggregated) and the \"eval\" lines (sites that evaluated); these metrics name "
               "no site.")
    parts.append(figure_html(FIG_PART, fig_participation(plt, run, rounds, part), cap,
                             "which sites reported each round"))
    if run.site_metrics:
        whys = sorted(set(run.site_metrics.values()))
        parts.append("<p class=note>Per-site metrics (loss, own AUROC) are not in the metrics "
                     f"of {len(run.site_metrics)} round(s): " +
                     "; ".join(esc(w) for w in whys) + ".</p>\n")
    if part.recorded:
        rows = []
        gone = {(r, x): w for r, x, w in run.site_gone}
        for r in all_rounds:
            for ph, got, dropped in part.phases[r]:
                if got is None:
                    rows.append([str(r), ph, "not recorded", "&ndash;"])
                    continue
                drop = [esc(x) + (f" (left: {esc(gone[(r, x)])})" if (r, x) in gone else "")
                        for x in dropped]
                rows.append([str(r), ph, f"{len(got)}: " + id_list([esc(x) for x in got]),
                             id_list(drop) if drop else "none"])
        parts.append("<p>Which sites reported in each phase, and which sites of the run dropped "
                     "out of it:</p>\n")
        parts.append(table(["round", "phase", "reported (in the sum)", "dropped out"], rows,
                           left=4))
    head = ["round", "participants", "updates aggregated", "sites evaluated", "samples",
            "steps", "upload slots", "upload grants expired"]
    rows = []
    for r in sorted(set(rounds) | set(run.trains)):
        tr, up, e = run.trains.get(r), run.uploads.get(r), run.evals.get(r)
        rows.append([str(r), fmt(tr and tr.int("participants")), fmt(tr and tr.int("sites")),
                     fmt(e and e.int("sites")), fmt(tr and tr.num("samples")),
                     fmt(tr and tr.num("steps")), fmt(up and up.int("slots")),
                     fmt(up and up.int("expired"))])
    parts.append(table(head, rows, left=0))
    if part.recorded:
        own = any(run.site_eval.values())  # per-site lines: the site's own test AUROC
        rows = []
        for x in sorted(part.sites):
            n = {ph: 0 for ph in ("train", "validation", "test")}
            for r in all_rounds:
                for ph, got, _ in part.phases[r]:
                    n[ph] += got is not None and x in got
            last = run.site_eval.get(mark, {}).get(x)
            rows.append([esc(x), str(sum(1 for r in all_rounds if (x, r) in part.state)),
                         str(n["train"]), str(n["validation"]), str(n["test"])] +
                        ([fmt(last and last.num("auroc_" + t)) for t in tasks] if own else []))
        parts.append("<p>Per site: the rounds it was in the run and the sums its reply entered"
                     + (f" ({esc(mark_label)} for the site's own test AUROC)" if own else "") +
                     ":</p>\n")
        parts.append(table(["site", "rounds in the run", "training updates",
                            "validation evaluations", "test evaluations"] +
                           ([f"own AUROC {esc(t)}" for t in tasks] if own else []), rows))
    if run.site_gone:
        parts.append("<p>Sites that left (dropouts):</p>\n")
        parts.append(table(["round", "site", "why"],
                           [[str(r), esc(s), esc(w)] for r, s, w in run.site_gone], left=3))
    else:
        parts.append("<p>No site left during the run (no \"site_gone\" line).</p>\n")
    parts.append(retry_html(run))

    # DP
    parts.append("<h2>Differential privacy</h2>\n")
    has_dp = any(ln.obj.get("dp_rounds") is not None or "dp_epsilon" in ln.obj
                 for d in (run.trains, run.evals) for ln in d.values())
    if has_dp:
        src = run.trains.get(mark) or ev
        eps = src.num("dp_epsilon")
        parts.append(figure_html(
            FIG_DP, fig_dp(plt, run, rounds),
            "Cumulative epsilon (at the run's delta) of DP-FedAvg after each round, from the "
            "coordinator's RDP accountant (\"dp_epsilon\" of the \"train\" lines, and "
            "\"dp_epsilon_coordinator\" where it differs: the guarantee against the coordinator "
            "itself, weaker without secure aggregation; docs/security.md). null, i.e. unbounded "
            "(noise 0), is not drawn.", "DP epsilon per round"))
        epc = src.num("dp_epsilon_coordinator")
        parts.append(table(
            ["round", "epsilon", "epsilon against the coordinator", "delta", "noise multiplier",
             "clip", "calibrated to sites", "released rounds"],
            [[str(mark), fmt(eps) if eps is not None else "unbounded (null)",
              fmt(epc) if epc is not None else "unbounded (null)",
              fmt(src.num("dp_delta"), 7), fmt(src.num("dp_noise")), fmt(src.num("dp_clip")),
              fmt(src.int("dp_sites")), fmt(src.int("dp_rounds"))]], left=0))
    else:
        parts.append("<p>DP-FedAvg was off: no \"dp_epsilon\" in the metrics.</p>\n")

    # per-round numbers
    parts.append("<h2>Per round</h2>\n")
    head = ["round", "sites", "train loss", "test loss", "mean AUROC"] + \
        [f"AUROC {esc(t)}" for t in tasks] + ["seconds"]
    rows = []
    for r in rounds:
        e = run.evals[r]
        rows.append([("<b>%d</b>" % r) if r == mark else str(r), fmt(e.int("sites")),
                     fmt(e.num("train_loss")), fmt(e.num("test_loss")), fmt(e.num("auroc_mean"))]
                    + [fmt(e.num("auroc_" + t)) for t in tasks] + [fmt(e.num("seconds"), 2)])
    parts.append(table(head, rows, left=0))

    # configuration
    parts.append("<h2>Configuration</h2>\n")
    if config is None:
        parts.append(f"<p class=note>No <code>{esc(os.path.join(run_dir, 'config.json'))}</code>: "
                     "the configuration is unknown.</p>\n")
    else:
        parts.append(f"<p>The effective configuration the coordinator stored "
                     f"(<code>{esc(os.path.join(run_dir, 'config.json'))}</code>).</p>\n")
        parts.append(table(["option", "value"],
                           [[esc(k), fmt_config(v)] for k, v in config.items()], left=2))
    if run.other:
        parts.append("<h2>Other events</h2>\n<p>Lines of kinds this report does not draw:</p>\n")
        parts.append(table(["event", "lines"],
                           [[esc(k), str(v)] for k, v in sorted(run.other.items())]))
    if notes:
        parts.insert(1, "".join(f"<p class=note>{n}</p>\n" for n in notes))

    return ("<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "img-src data:; style-src 'unsafe-inline'\">\n"
            "<meta name=viewport content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n" +
            "".join(parts) +
            "<p style=\"color:#888;font-size:0.8em\">Written by scripts/report.py "
            "(docs/report.md).</p>\n</body>\n</html>\n")


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="report.py",
        description="Writes one self-contained HTML report (figures inline, opens offline) of a "
                    "moeh run directory: learning curves, AUROC per modality combination, ROC "
                    "curves, calibration, gate weights, site participation, DP epsilon, "
                    "configuration. Reads RUN_DIR/metrics.jsonl and RUN_DIR/config.json (moeh run).",
        epilog="Exit status: 0 written, 1 unexpected failure (a bug), 2 bad input (the message "
               "names file:line), 3 matplotlib missing or older than 3.5 (Debian: "
               "python3-matplotlib). See docs/report.md.")
    ap.add_argument("run_dir", metavar="RUN_DIR", help="directory of a run (moeh run --out)")
    ap.add_argument("--out", metavar="FILE",
                    help="where to write the report (default: RUN_DIR/report.html)")
    a = ap.parse_args(argv)
    run_dir = a.run_dir
    try:
        if not os.path.isdir(run_dir):
            raise InputError(f"{run_dir}: no such run directory")
        if not os.listdir(run_dir):
            raise InputError(f"{run_dir}: empty run directory (no metrics.jsonl, config.json)")
        metrics_path = os.path.join(run_dir, "metrics.jsonl")
        if not os.path.exists(metrics_path):
            raise InputError(f"{metrics_path}: missing: not a run directory (moeh run "
                             "--out DIR writes DIR/metrics.jsonl)")
        run = read_metrics(metrics_path)
        config = read_config(os.path.join(run_dir, "config.json"))
    except InputError as e:
        print(f"report.py: {e}", file=sys.stderr)
        return 2
    page = render(run, config, run_dir, metrics_path)
    out = a.out or os.path.join(run_dir, "report.html")
    tmp = out + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, out)
    except OSError as e:
        print(f"report.py: {out}: cannot write: {e.strerror}", file=sys.stderr)
        return 2
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
