#!/usr/bin/env python3
"""results_fed.py - issue 15's tables from per-admission predictions of federated models
(scripts/fed_predict.py writes SEED_DIR/preds/<model>/all.csv and the robustness files):

- the main table: MoE-Health, the fusion baselines and the unimodal baselines, exact AUROC and
  F1 (threshold chosen on the validation rows) per task, mean and sd over the seeds;
- MoE-Health minus the best fusion baseline of each seed, with a paired bootstrap 95% CI over
  the pooled test admissions (scripts/paired_bootstrap.py, the same resampled rows for both);
- the ablations: each one's AUROC and MoE-Health minus it with its CI, per seed;
- robustness: AUROC with notes and/or X-ray removed from p% of the test rows.
- with results.sh CENTRAL=1, the paper's centralised setting: MoE-Health, the fusion and
  unimodal baselines and the six ablations trained on the pooled datasets, with the same CIs and robustness.

Used by scripts/results_table.py (section "The paper's experiments"); run alone it prints the
section: results_fed.py SEED_DIR [SEED_DIR...] [--resamples 1000]. Every CSV row is checked
(columns, types, ranges); a malformed row stops it with file:line and what was expected.
Standard library only."""
import argparse
import csv
import math
import os
import sys

import paired_bootstrap as pb

TASKS = ["mortality", "los7", "readmit30"]
SPLITS = ("train", "val", "test")
MAIN = [("fed-moe", "MoE-Health"), ("fed-early", "early fusion"), ("fed-joint", "joint fusion"),
        ("fed-late", "late fusion"), ("fed-ehr", "unimodal EHR"), ("fed-notes", "unimodal notes"),
        ("fed-img", "unimodal X-ray")]
FUSION = ["fed-early", "fed-joint", "fed-late"]
ABLATIONS = [("abl-no-warmup", "without the specialisation warm-up", "--warmup-rounds 0"),
             ("abl-missing-zero", "missingness embeddings replaced by zeros",
              "--missing-zero 1"),
             ("abl-gate-no-avail", "gate without the availability input", "--gate-no-avail 1"),
             ("abl-no-lb", "without load balancing", "--lambda-lb 0"),
             ("abl-top1", "top-1 gate", "--top-k 1"),
             ("abl-top2", "top-2 gate", "--top-k 2")]
DROP_MODS = [("notes", "notes removed"), ("img", "X-ray removed"),
             ("notes+img", "notes and X-ray removed")]
DROP_PCTS = [0, 25, 50, 75, 100]
ROBUST = ["fed-moe", "fed-early", "fed-joint", "fed-late"]
# the paper's centralised comparison (results.sh CENTRAL=1: moeh train on the pooled datasets)
CENTRAL = [("cen-moe", "MoE-Health"), ("cen-early", "early fusion"),
           ("cen-joint", "joint fusion"), ("cen-late", "late fusion"),
           ("cen-ehr", "unimodal EHR"), ("cen-notes", "unimodal notes"),
           ("cen-img", "unimodal X-ray")]
CEN_ABLATIONS = [("cen-no-warmup", "without the specialisation warm-up", "--warmup-epochs 0"),
                 ("cen-missing-zero", "missingness embeddings replaced by zeros",
                  "--missing-zero 1"),
                 ("cen-gate-no-avail", "gate without the availability input",
                  "--gate-no-avail 1"),
                 ("cen-no-lb", "without load balancing", "--lambda-lb 0"),
                 ("cen-top1", "top-1 gate", "--top-k 1"),
                 ("cen-top2", "top-2 gate", "--top-k 2")]
CEN_ROBUST = ["cen-moe", "cen-early", "cen-joint", "cen-late"]
CEN_FUSION = ["cen-early", "cen-joint", "cen-late"]


def fail(msg):
    sys.exit(f"results_fed.py: {msg}")


def read_preds(path):
    """A fed_predict.py CSV: {"key": [(site, admission_id)], "split": [...], "combo": [...],
    "label": {task: [0, 1 or None]}, "score": {task: [float]}}. Refuses (exits naming
    file:line and the field) a row with another column count, a non-integer id, a probability
    outside [0, 1], an unknown split or a label other than empty, 0 or 1, and a repeated id."""
    need = ["site", "admission_id", "combo"] + ["p_" + t for t in TASKS] + ["split"] + \
        ["label_" + t for t in TASKS]
    out = {"key": [], "split": [], "combo": [], "label": {t: [] for t in TASKS},
           "score": {t: [] for t in TASKS}}
    seen = set()
    with open(path, newline="") as f:
        rd = csv.reader(f)
        header = next(rd, None)
        if header is None:
            fail(f"{path}:1: empty file; expected a header with {', '.join(need)}")
        missing = [c for c in need if c not in header]
        if missing:
            fail(f"{path}:1: header lacks {', '.join(missing)} (moeh predict --with-labels "
                 f"through scripts/fed_predict.py)")
        col = {c: header.index(c) for c in need}
        for n, row in enumerate(rd, 2):
            if len(row) != len(header):
                fail(f"{path}:{n}: {len(row)} fields; expected {len(header)} (the header's)")
            try:
                aid = int(row[col["admission_id"]])
            except ValueError:
                fail(f"{path}:{n}: field admission_id: expected an integer, got "
                     f"{row[col['admission_id']]!r}")
            key = (row[col["site"]], aid)
            if key in seen:
                fail(f"{path}:{n}: admission {aid} of site {key[0]} repeated")
            seen.add(key)
            sp = row[col["split"]]
            if sp not in SPLITS:
                fail(f"{path}:{n}: field split: expected train, val or test, got {sp!r}")
            out["key"].append(key)
            out["split"].append(sp)
            out["combo"].append(row[col["combo"]])
            for t in TASKS:
                v = row[col["p_" + t]]
                try:
                    p = float(v)
                except ValueError:
                    p = math.nan
                if not 0.0 <= p <= 1.0:
                    fail(f"{path}:{n}: field p_{t}: expected a probability in [0, 1], got {v!r}")
                lab = row[col["label_" + t]]
                if lab not in ("", "0", "1"):
                    fail(f"{path}:{n}: field label_{t}: expected empty, 0 or 1, got {lab!r}")
                out["score"][t].append(p)
                out["label"][t].append(None if lab == "" else int(lab))
    if not out["key"]:
        fail(f"{path}: no rows")
    return out


def subset(pred, split):
    """The rows of one split, sorted by (site, admission_id) so that models align."""
    idx = sorted((i for i, s in enumerate(pred["split"]) if s == split),
                 key=lambda i: pred["key"][i])
    return {"key": [pred["key"][i] for i in idx], "combo": [pred["combo"][i] for i in idx],
            "label": {t: [pred["label"][t][i] for i in idx] for t in TASKS},
            "score": {t: [pred["score"][t][i] for i in idx] for t in TASKS}}


def same_rows(a, b, what):
    if a["key"] != b["key"]:
        fail(f"{what}: the test rows differ from MoE-Health's ({len(a['key'])} vs "
             f"{len(b['key'])}): a paired comparison needs the same admissions")
    for t in TASKS:
        if a["label"][t] != b["label"][t]:
            fail(f"{what}: labels of {t} differ from MoE-Health's on the same admissions")


def auroc_of(rows, t):
    y = [v for v in rows["label"][t] if v is not None]
    s = [sc for sc, v in zip(rows["score"][t], rows["label"][t]) if v is not None]
    r = pb.auroc(y, s)
    return math.nan if r is None else r


def best_threshold(labels, scores):
    """The threshold with the largest F1 on these rows (positive when score >= threshold);
    0.5 when there is no positive."""
    pairs = sorted(((s, y) for s, y in zip(scores, labels) if y is not None), reverse=True)
    n_pos = sum(y for _, y in pairs)
    if n_pos == 0:
        return 0.5
    best, best_t, tp, k = -1.0, 0.5, 0, 0
    while k < len(pairs):
        j = k
        while j < len(pairs) and pairs[j][0] == pairs[k][0]:
            tp += pairs[j][1]
            j += 1
        f1 = 2.0 * tp / (j + n_pos)  # predicted positives j, F1 = 2 TP / (pred + actual)
        if f1 > best:
            best, best_t = f1, pairs[k][0]
        k = j
    return best_t


def f1_at(labels, scores, thr):
    tp = sum(1 for s, y in zip(scores, labels) if y == 1 and s >= thr)
    pred = sum(1 for s, y in zip(scores, labels) if y is not None and s >= thr)
    pos = sum(1 for y in labels if y == 1)
    return 2.0 * tp / (pred + pos) if pred + pos else math.nan


def model_scores(pred):
    """{task: AUROC, "mean": ..., "f1_"+task: F1 at the validation threshold, "f1_mean"}."""
    test, val = subset(pred, "test"), subset(pred, "val")
    r = {}
    for t in TASKS:
        r[t] = auroc_of(test, t)
        thr = best_threshold(val["label"][t], val["score"][t])
        r["f1_" + t] = f1_at(test["label"][t], test["score"][t], thr)
    r["mean"] = sum(r[t] for t in TASKS) / len(TASKS)
    r["f1_mean"] = sum(r["f1_" + t] for t in TASKS) / len(TASKS)
    return r


def msd(vals):
    v = [x for x in vals if x is not None and not math.isnan(x)]
    if not v:
        return "–"
    m = sum(v) / len(v)
    if len(v) < 2:
        return f"{m:.4f}"
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    return f"{m:.4f} ± {sd:.4f}"


def verdict(lo, hi):
    return "above 0" if lo > 0 else "below 0" if hi < 0 else "tie (CI holds 0)"


def load_seed(d):
    """{model: predictions} of one seed directory (only the models with an all.csv)."""
    res = {}
    base = os.path.join(d, "preds")
    for name, *_ in MAIN + ABLATIONS + CENTRAL + CEN_ABLATIONS:
        p = os.path.join(base, name, "all.csv")
        if os.path.exists(p):
            res[name] = read_preds(p)
    return res


def ci(a_test, b_test, resamples, seed):
    lab = a_test["label"]
    r, _ = pb.paired_bootstrap_tasks(lab, a_test["score"], b_test["score"], resamples, seed)
    return r


TABLE_HEAD = ["| model | AUROC mortality | AUROC LOS > 7 d | AUROC readmission | AUROC mean | "
              "F1 mortality | F1 LOS > 7 d | F1 readmission | F1 mean |",
              "|---|---|---|---|---|---|---|---|---|"]


def model_table(per_seed, models):
    """Rows of a main table: each model's AUROC and F1 per task and mean, mean ± sd over seeds."""
    L = list(TABLE_HEAD)
    for m, label in models:
        vals = [x[4].get(m) for x in per_seed]
        if all(v is None for v in vals):
            L.append(f"| {label} | not run | | | | | | | |")
            continue
        cells = [msd([v[k] for v in vals if v]) for k in
                 TASKS + ["mean"] + ["f1_" + t for t in TASKS] + ["f1_mean"]]
        L.append(f"| {label} | " + " | ".join(cells) + " |")
    L.append("")
    return L


def seed_of(seed):
    return int(seed) if seed.isdigit() else 1


def fusion_rows(per_seed, moe, fusion, labels, resamples):
    """The table of moe minus the best of the fusion models of each seed, with its paired CI
    per task and over tasks. (lines, [verdict per seed that has both])."""
    L = ["| seed | best fusion | mortality | LOS > 7 d | readmission | mean over tasks | "
         "verdict (mean) |", "|---|---|---|---|---|---|---|"]
    verdicts = []
    for seed, d, preds, tests, scores in per_seed:
        cands = [m for m in fusion if m in scores]
        if moe not in tests or not cands:
            L.append(f"| {seed} | not run | | | | | |")
            continue
        best = max(cands, key=lambda m: scores[m]["mean"])
        r = ci(tests[moe], tests[best], resamples, seed_of(seed))
        cells = [f"{r[k][2]:+.4f} [{r[k][3]:+.4f}, {r[k][4]:+.4f}]" for k in TASKS + ["mean"]]
        v = verdict(r["mean"][3], r["mean"][4])
        verdicts.append(v)
        L.append(f"| {seed} | {labels[best]} | " + " | ".join(cells) + f" | {v} |")
    L.append("")
    return L, verdicts


def ablation_rows(per_seed, moe, ablations, resamples):
    """Rows of an ablation table: each ablation's AUROC mean (mean ± sd over seeds) and, per
    seed, moe minus it with its paired CI. (lines, {ablation: [(difference, verdict)]})."""
    L, claims = [], {}
    n_seeds = len(per_seed)
    for m, label, opt in ablations:
        if all(m not in x[4] or moe not in x[3] for x in per_seed):
            L.append(f"| {label} | `{opt}` | not run |" + " |" * n_seeds)
            continue
        cells = []
        for seed, d, preds, tests, scores in per_seed:
            if m not in tests or moe not in tests:
                cells.append("not run")
                continue
            r = ci(tests[moe], tests[m], resamples, seed_of(seed))
            v = verdict(r["mean"][3], r["mean"][4])
            claims.setdefault(m, []).append((r["mean"][2], v))
            cells.append(f"{r['mean'][2]:+.4f} [{r['mean'][3]:+.4f}, {r['mean'][4]:+.4f}] {v}")
        L.append(f"| {label} | `{opt}` | {msd([x[4][m]['mean'] for x in per_seed if m in x[4]])}"
                 f" | " + " | ".join(cells) + " |")
    L.append("")
    return L, claims


def ablation_head(per_seed):
    return ["| ablation | option | AUROC mean | " +
            " | ".join(f"seed {s}: MoE − ablation [CI]" for s, *_ in per_seed) + " |",
            "|---|---|---|" + "---|" * len(per_seed)]


def report(seed_dirs, resamples=1000, figure=None):
    """Markdown lines of the section; seed_dirs = [(seed, dir)]."""
    L = []
    per_seed = []
    for seed, d in seed_dirs:
        preds = load_seed(d)
        if "fed-moe" not in preds:
            L.append(f"Seed {seed}: no predictions of MoE-Health in {d}/preds "
                     "(scripts/fed_predict.py not run): no table.\n")
            continue
        tests = {m: subset(p, "test") for m, p in preds.items()}
        for m, t in tests.items():
            same_rows(tests["fed-moe"], t, f"{d}/preds/{m}/all.csv")
        scores = {m: model_scores(p) for m, p in preds.items()}
        per_seed.append((seed, d, preds, tests, scores))
    if not per_seed:
        return L
    n_seeds = len(per_seed)
    n_test = ", ".join(f"{len(x[3]['fed-moe']['key'])}" for x in per_seed)
    L.append(f"Every number below is computed from the per-admission scores of the model file "
             f"each federation wrote (`moeh predict` on every site's rows, "
             f"`scripts/fed_predict.py`), on the pooled test set (test rows per seed: "
             f"{n_test}); exact AUROC; F1 at the threshold with the best F1 on the pooled "
             f"validation rows of the same model. Mean ± sd over {n_seeds} seed(s) "
             f"({', '.join(s for s, *_ in per_seed)}).\n")
    L.append("### Main table (federated)\n")
    L.extend(model_table(per_seed, MAIN))
    # MoE-Health minus the best fusion baseline, per seed
    L.append("### MoE-Health minus the best fusion baseline (paired bootstrap, per seed)\n")
    L.append(f"The best fusion baseline of a seed is the one of early, joint and late fusion "
             f"with the largest mean test AUROC on that seed (the strongest competitor). "
             f"Difference of AUROC, MoE-Health minus it, with the 95% CI of "
             f"{resamples} paired resamples of the test admissions (the same rows for both "
             f"models; `paired_bootstrap.paired_bootstrap_tasks`, seed = the run's seed).\n")
    rows, fus = fusion_rows(per_seed, "fed-moe", FUSION, dict(MAIN), resamples)
    L.extend(rows)
    L.append("### Ablations (federated MoE-Health without one component)\n")
    L.append("AUROC mean over tasks (mean ± sd over seeds), and per seed MoE-Health minus the "
             "ablation with its paired 95% CI (positive: the component helps).\n")
    L.extend(ablation_head(per_seed))
    L.append(f"| (none: MoE-Health, dense gate) | | "
             f"{msd([x[4]['fed-moe']['mean'] for x in per_seed])} | "
             + " | ".join("" for _ in per_seed) + " |")
    rows, abl = ablation_rows(per_seed, "fed-moe", ABLATIONS, resamples)
    L.extend(rows)
    L.extend(robustness(per_seed, figure))
    cen = central(per_seed, resamples, figure)
    L.extend(cen["lines"])
    L.append("### Claims\n")

    L.append(f"- MoE-Health above the best federated fusion baseline with the CI above 0 on "
             f"every seed: **{met(fus, n_seeds)}** (per seed: {', '.join(fus) or 'not run'}).")
    nw = abl.get("abl-no-warmup", [])
    L.append(f"- The specialisation ablation (no warm-up) below MoE-Health, CI above 0 on every "
             f"seed: **{met([v for _, v in nw], n_seeds)}** "
             f"(MoE − ablation per seed: "
             f"{', '.join(f'{x:+.4f} {v}' for x, v in nw) or 'not run'}).")
    if cen["fusion"]:
        L.append(f"- Centralised: MoE-Health above the best centralised fusion baseline with the "
                 f"CI above 0 on every seed: **{met(cen['fusion'], n_seeds)}** (per seed: "
                 f"{', '.join(cen['fusion'])}).")
    if cen["warmup"]:
        L.append(f"- Centralised: the no-warm-up ablation below MoE-Health, CI above 0 on every "
                 f"seed: **{met([v for _, v in cen['warmup']], n_seeds)}** (MoE − ablation per "
                 f"seed: {', '.join(f'{x:+.4f} {v}' for x, v in cen['warmup'])}).")
    for m, label, _ in ABLATIONS[1:]:
        c = abl.get(m, [])
        if c:
            L.append(f"- {label}: MoE − ablation per seed "
                     f"{', '.join(f'{x:+.4f} ({v})' for x, v in c)}.")
    L.append("")
    return L


def met(verdicts, n_seeds):
    """A claim's verdict from its per-seed CI verdicts ("above 0", "tie (CI holds 0)",
    "below 0"): "met" when every seed ran and is above 0, "not met" when a seed is below 0 or
    did not run, else "tie within the CI" (no seed below, at least one tie)."""
    if not verdicts:
        return "not run"
    if len(verdicts) == n_seeds and all(v == "above 0" for v in verdicts):
        return "met"
    if len(verdicts) < n_seeds or any(v == "below 0" for v in verdicts):
        return "not met"
    return "tie within the CI"


def central(per_seed, resamples, figure=None):
    """The centralised section (the paper's setting) when results.sh CENTRAL=1 ran: the models'
    AUROC and F1, centralised MoE-Health minus the best centralised fusion baseline and minus
    each centralised ablation with its paired CI per seed, and the robustness tables.
    {"lines", "fusion": [verdict], "warmup": [(difference, verdict)]}; no lines if no cen-*
    model was scored."""
    out = {"lines": [], "fusion": [], "warmup": []}
    if not any(m in x[4] for x in per_seed for m, _ in CENTRAL):
        return out
    L = out["lines"]
    L.append("### Centralised (the paper's setting)\n")
    L.append("Each model trained with `moeh train` on the pooled site datasets (the same rows, "
             "modalities and splits as the federation; the epoch with the best validation "
             "AUROC), scored like the federated ones on the pooled test set.\n")
    L.extend(model_table(per_seed, CENTRAL))
    L.append("Centralised MoE-Health minus the best centralised fusion baseline of each seed "
             "(paired 95% CI):\n")
    rows, out["fusion"] = fusion_rows(per_seed, "cen-moe", CEN_FUSION, dict(CENTRAL), resamples)
    L.extend(rows)
    L.append("Centralised ablations: AUROC mean over tasks (mean ± sd over seeds), and per seed "
             "centralised MoE-Health minus the ablation with its paired 95% CI.\n")
    L.extend(ablation_head(per_seed))
    rows, abl = ablation_rows(per_seed, "cen-moe", CEN_ABLATIONS, resamples)
    L.extend(rows)
    out["warmup"] = abl.get("cen-no-warmup", [])
    if any(m in x[4] for x in per_seed for m in CEN_ROBUST):
        fig = figure[:-len(".svg")] + "-centralised.svg" if figure else None
        L.extend(robustness(per_seed, fig, CEN_ROBUST, dict(CENTRAL),
                            "### Centralised robustness: modalities removed at test time\n"))
    return out


COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def write_svg(path, pcts, curves, models, labels):
    """The robustness curves as an SVG of three panels (notes, X-ray, both removed): mean AUROC
    over tasks against p, one line per model. Standard library only; written atomically."""
    pw, ph, ml, mt, mb = 300, 220, 72, 30, 44  # panel size, left/top/bottom margins
    vals = [v for k, row in curves.items() for v in row if not math.isnan(v)]
    if not vals or len(pcts) < 2:
        return
    lo, hi = min(vals), max(vals)
    pad = max(0.005, (hi - lo) * 0.1)
    lo, hi = lo - pad, hi + pad
    width, height = 3 * pw + ml + 160, ph + mt + mb

    def x(i, p):
        return ml + i * pw + 10 + (pw - 30) * p / 100

    def y(v):
        return mt + (ph - 10) * (hi - v) / (hi - lo)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    for i, (mods, what) in enumerate(DROP_MODS):
        x0, x1 = x(i, 0), x(i, 100)
        out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{mt - 10}" text-anchor="middle" '
                   f'font-size="12">{html_escape(what)}</text>')
        out.append(f'<rect x="{x0 - 8:.1f}" y="{mt}" width="{x1 - x0 + 16:.1f}" '
                   f'height="{ph - 10}" fill="none" stroke="#999"/>')
        for p in pcts:
            out.append(f'<text x="{x(i, p):.1f}" y="{mt + ph + 6}" text-anchor="middle">'
                       f'{p}</text>')
        out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{mt + ph + 24}" text-anchor="middle">'
                   f'test rows affected (%)</text>')
        for k, m in enumerate(m for m in models if (mods, m) in curves):
            pts = [(x(i, p), y(v)) for p, v in zip(pcts, curves[mods, m]) if not math.isnan(v)]
            c = COLOURS[k % len(COLOURS)]
            out.append('<polyline fill="none" stroke="%s" stroke-width="1.6" points="%s"/>' % (
                c, " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)))
            out.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{c}"/>' for a, b in pts)
    for t in range(5):  # the AUROC axis of the first panel
        v = lo + (hi - lo) * t / 4
        out.append(f'<text x="{ml - 14}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3f}</text>')
    out.append(f'<text x="12" y="{mt + ph / 2:.1f}" transform="rotate(-90 12 {mt + ph / 2:.1f})" '
               f'text-anchor="middle">mean AUROC over tasks</text>')
    for k, m in enumerate(m for m in models if any((mods, m) in curves for mods, _ in DROP_MODS)):
        yy = mt + 14 + 16 * k
        c = COLOURS[k % len(COLOURS)]
        out.append(f'<line x1="{3 * pw + ml + 10}" y1="{yy}" x2="{3 * pw + ml + 30}" y2="{yy}" '
                   f'stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{3 * pw + ml + 36}" y="{yy + 4}">{html_escape(labels[m])}</text>')
    out.append("</svg>\n")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(out))
    os.replace(tmp, path)


def html_escape(t):
    return t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def robustness(per_seed, figure, models=None, labels=None,
               title="### Robustness: modalities removed at test time\n"):
    models = ROBUST if models is None else models
    labels = dict(MAIN) if labels is None else labels
    L = [title,
         "Mean AUROC over tasks on the pooled test rows (mean over seeds) when notes, the "
         "X-ray or both are removed from p% of the test rows (`moeh predict --drop MODS:p "
         "--drop-seed SEED`: the modality marked absent, its note emptied, its image zeroed; "
         "the same rows for every model; p = 0 is the unchanged test set). Rows that never had "
         "the modality are unchanged.\n"]
    curves = {}
    # the percentages scored (fed_predict.py --pcts): those with a file for some model and seed
    pcts = [0] + [p for p in DROP_PCTS[1:] if any(
        os.path.exists(os.path.join(d, "preds", m, f"{mods}-{p}.csv"))
        for _, d, *_ in per_seed for m in models for mods, _ in DROP_MODS)]
    for mods, what in DROP_MODS:
        L.append(f"{what}:\n")
        L.append("| model | " + " | ".join(f"p = {p}%" for p in pcts) + " | last − first |")
        L.append("|---|" + "---|" * (len(pcts) + 1))
        for m in models:
            if all(m not in x[3] for x in per_seed):
                continue
            row = []
            for p in pcts:
                vals = []
                for seed, d, preds, tests, scores in per_seed:
                    if p == 0:
                        if m in tests:
                            vals.append(sum(auroc_of(tests[m], t) for t in TASKS) / 3)
                        continue
                    f = os.path.join(d, "preds", m, f"{mods}-{p}.csv")
                    if os.path.exists(f):
                        r = subset(read_preds(f), "test")
                        if m in tests and r["key"] != tests[m]["key"]:
                            fail(f"{f}: not the test rows of {d}/preds/{m}/all.csv")
                        vals.append(sum(auroc_of(r, t) for t in TASKS) / 3)
                row.append(sum(vals) / len(vals) if len(vals) == len(per_seed) else math.nan)
            curves[mods, m] = row
            drop = row[-1] - row[0]
            L.append(f"| {labels[m]} | " + " | ".join("–" if math.isnan(v) else f"{v:.4f}"
                                                          for v in row)
                     + f" | {'–' if math.isnan(drop) else f'{drop:+.4f}'} |")
        L.append("")
    if figure:
        write_svg(figure, pcts, curves, models, labels)
        L.append(f"![{title.strip('# ').strip()}]({os.path.basename(figure)})\n")
    return L


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("seed_dirs", nargs="+", metavar="[SEED:]DIR")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--figure", help="also draw the robustness curves into this PNG")
    o = ap.parse_args(argv)
    sd = []
    for x in o.seed_dirs:
        s, sep, d = x.partition(":")
        sd.append((s, d) if sep else (os.path.basename(x).replace("seed-", ""), x))
    print("\n".join(report(sd, o.resamples, o.figure)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
