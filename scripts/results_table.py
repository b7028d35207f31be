#!/usr/bin/env python3
"""results_table.py - docs/results.md from the outputs of scripts/results.sh.

Reads OUT/<run>/metrics.jsonl (the coordinator's and `moeh train`'s format: the last
"eval" line and the "task" lines of the same round), the generator's truth (OUT/truth.csv)
and the site datasets' ids.npy/split.npy (OUT/sites/<site>/) for the oracle AUROC on the pooled
test rows, and writes a Markdown report with the accuracy targets of DESIGN section 7.
Where a run directory has per-admission scores (OUT/preds, scripts/fed_predict.py; results.sh
PREDICT=1) it adds issue 15's tables (scripts/results_fed.py: main table with AUROC and F1 at
the validation threshold, ablations, paired bootstrap CIs, robustness).
Strict: every metrics.jsonl line and predictions row it reads must be well-formed
(read_metrics, results_fed.read_preds); otherwise it stops naming file:line and what was
expected. Python 3 standard library only.
"""
import argparse
import ast
import csv
import json
import math
import os
import struct
import sys

import results_fed

# data/schema.c's task and combination names (metrics.jsonl, truth.csv, meta.json); the test
# (tests/test_results_table.py) checks that they agree
TASKS = ["mortality", "los7", "readmit30"]
COMBOS = ["E", "N", "EN", "I", "EI", "NI", "ENI"]


def _num(v):
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _bad(path, n, what):
    sys.exit(f"{path}:{n}: {what}")


# the members every evaluation line has (coordinator/report.c and sim/cmd_train.c), with their
# types: numbers may be null (NaN is written as null)
EVAL_KEYS = [("round", "int"), ("sites", "int"), ("train_loss", "num"), ("test_loss", "num"),
             ("auroc_mean", "num"), ("seconds", "num")] + [("auroc_" + t, "num") for t in TASKS]


def read_metrics(path):
    """The final evaluation of a metrics.jsonl: {"eval": {...}, "task": {task: {...}},
    "gate": {...}, "round": N, "evals": [every eval line], "epochs": [...]}; None when the file
    is missing or has no eval line.

    Strict (issue 13, finding 7: a forged line must not become the result): every non-blank
    line must be a JSON object with a string "event"; an "eval" line has every member of
    EVAL_KEYS with its type, and its round follows the previous eval's by exactly 1 and is
    at most the configured rounds/epochs (a "config" line) when there is one; no eval line
    after the run's "selection" line; a "task" line names a task of TASKS once per round, for
    the round of the latest eval, with a numeric "auroc"; a "gate" line is for the latest
    eval's round and holds per combination {"rows": int, "weights": [numbers]}; an "epoch"
    line has an integer "epoch". Anything else stops the script with file:line and what was
    expected."""
    if not os.path.exists(path):
        return None
    evals, tasks, gates, epochs, all_evals = {}, {}, {}, [], []
    last, limit, selected = None, None, None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                j = json.loads(line)
            except json.JSONDecodeError as e:
                _bad(path, n, f"not JSON: {e}")
            if not isinstance(j, dict) or not isinstance(j.get("event"), str):
                _bad(path, n, 'expected a JSON object with a string "event"')
            ev = j["event"]
            if ev == "config":
                for k in ("rounds", "epochs"):
                    if k in j:
                        if not _int(j[k]) or j[k] < 1:
                            _bad(path, n, f'config: "{k}" must be a positive integer, got '
                                          f'{j[k]!r}')
                        limit = j[k]
            elif ev == "eval":
                for k, ty in EVAL_KEYS:
                    if k not in j:
                        _bad(path, n, f'eval line without "{k}" (expected the members '
                                      f'{", ".join(k for k, _ in EVAL_KEYS)})')
                    if not (_int(j[k]) if ty == "int" else _num(j[k])):
                        _bad(path, n, f'eval: "{k}" must be '
                                      f'{"an integer" if ty == "int" else "a number or null"}, '
                                      f'got {j[k]!r}')
                r = j["round"]
                if selected is not None:
                    _bad(path, n, f"eval of round {r} after the run's selection line (the "
                                  "selection is the run's last evaluation event)")
                if last is None and r < 1:
                    _bad(path, n, f"eval round {r}: expected a round >= 1")
                if last is not None and r != last + 1:
                    _bad(path, n, f"eval round {r} after round {last}: expected round "
                                  f"{last + 1} (rounds are consecutive)")
                if limit is not None and r > limit:
                    _bad(path, n, f"eval round {r}: the run was configured for {limit}")
                if "epoch" in j and not _int(j["epoch"]):
                    _bad(path, n, f'eval: "epoch" must be an integer, got {j["epoch"]!r}')
                last = r
                evals[r] = j
                all_evals.append(j)
            elif ev == "task":
                if last is None or j.get("round") != last:
                    _bad(path, n, f"task line for round {j.get('round')!r}: expected the "
                                  f"round of the latest eval line ({last})")
                t = j.get("task")
                if t not in TASKS:
                    _bad(path, n, f"task {t!r}: expected one of {', '.join(TASKS)}")
                if t in tasks.get(last, {}):
                    _bad(path, n, f"task {t} of round {last} repeated")
                if not _num(j.get("auroc", "missing")):
                    _bad(path, n, f'task: "auroc" must be a number or null, got '
                                  f'{j.get("auroc", "nothing")!r}')
                for k, v in j.items():
                    if k.startswith(("auroc", "auprc", "f1")) and not _num(v):
                        _bad(path, n, f'task: "{k}" must be a number or null, got {v!r}')
                tasks.setdefault(last, {})[t] = j
            elif ev == "gate":
                if last is None or j.get("round") != last:
                    _bad(path, n, f"gate line for round {j.get('round')!r}: expected the "
                                  f"round of the latest eval line ({last})")
                for c in COMBOS:
                    g = j.get(c)
                    if g is None:
                        continue
                    if (not isinstance(g, dict) or not _int(g.get("rows"))
                            or not isinstance(g.get("weights"), list)
                            or not all(_num(w) and w is not None for w in g["weights"])):
                        _bad(path, n, f'gate: "{c}" must be {{"rows": integer, "weights": '
                                      f'[numbers]}}, got {g!r}')
                gates[last] = j
            elif ev == "epoch":
                if not _int(j.get("epoch")):
                    _bad(path, n, f'epoch line: "epoch" must be an integer, got '
                                  f'{j.get("epoch")!r}')
                epochs.append(j)
            elif ev == "selection":
                if not _int(j.get("selected_round")) or j["selected_round"] not in evals:
                    _bad(path, n, f"selection of round {j.get('selected_round')!r}: expected "
                                  "the round of an earlier eval line")
                selected = j["selected_round"]
    if not evals:
        return None
    use = selected if selected is not None else last  # the model the run wrote
    return {"eval": evals[use], "task": tasks.get(use, {}), "gate": gates.get(use),
            "round": use, "selected": selected is not None, "evals": all_evals,
            "epochs": epochs}


def read_npy(path):
    """(shape, dtype descr, raw bytes) of a little-endian C-order .npy file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        sys.exit(f"{path}: not a .npy file")
    major = data[6]
    if major == 1:
        hlen, off = struct.unpack("<H", data[8:10])[0], 10
    else:
        hlen, off = struct.unpack("<I", data[8:12])[0], 12
    header = ast.literal_eval(data[off:off + hlen].decode("latin1"))
    if header.get("fortran_order"):
        sys.exit(f"{path}: Fortran order is not supported")
    return tuple(header["shape"]), header["descr"], data[off + hlen:]


def pooled_test_ids(sites_dir, names):
    """{(subject_id, hadm_id): combination name} of every test row of the given site
    datasets (the combination of modalities the row has at its site, from avail.npy)."""
    ids = {}
    for name in names:
        d = os.path.join(sites_dir, name)
        shape, descr, raw = read_npy(os.path.join(d, "ids.npy"))
        if descr != "<i8" or len(shape) != 2 or shape[1] != 2:
            sys.exit(f"{d}/ids.npy: expected <i8 (N,2), got {descr} {shape}")
        sshape, sdescr, sraw = read_npy(os.path.join(d, "split.npy"))
        if sdescr != "|u1" or sshape != (shape[0],):
            sys.exit(f"{d}/split.npy: expected |u1 ({shape[0]},), got {sdescr} {sshape}")
        ashape, adescr, araw = read_npy(os.path.join(d, "avail.npy"))
        if adescr != "|u1" or ashape != (shape[0], 3):
            sys.exit(f"{d}/avail.npy: expected |u1 ({shape[0]},3), got {adescr} {ashape}")
        vals = struct.unpack("<%dq" % (2 * shape[0]), raw[:16 * shape[0]])
        for i in range(shape[0]):
            if sraw[i] == 2:
                c = (araw[3 * i] != 0) + 2 * (araw[3 * i + 1] != 0) + 4 * (araw[3 * i + 2] != 0)
                ids[(vals[2 * i], vals[2 * i + 1])] = COMBOS[c - 1] if c else "none"
    return ids


def auroc(scores, labels):
    """Exact AUROC (ties count 1/2); NaN if a class is absent."""
    pairs = sorted(zip(scores, labels))
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + 1 + j) / 2.0
        rank_sum += avg_rank * sum(lab for _, lab in pairs[i:j])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


class Pooled:
    """Scores and labels per task, over all rows and per modality combination. row(c) starts a
    row of combination c (listed even when none of its labels counts); add() files a score."""

    def __init__(self):
        self.all = ({t: [] for t in TASKS}, {t: [] for t in TASKS})
        self.by_combo = {}
        self.bc = None

    def row(self, c):
        self.bc = self.by_combo.setdefault(c, ({t: [] for t in TASKS}, {t: [] for t in TASKS}))

    def add(self, t, score, label):
        for sc, lb in (self.all, self.bc):
            sc[t].append(score)
            lb[t].append(label)

    def aurocs(self):
        """({task: AUROC}, {combination: {task: AUROC}})."""
        return ({t: auroc(self.all[0][t], self.all[1][t]) for t in TASKS},
                {c: {t: auroc(sc[t], lb[t]) for t in TASKS}
                 for c, (sc, lb) in self.by_combo.items()})


def oracle(truth_csv, test_ids):
    """Oracle AUROC per task (true risk as the score) on the given rows, the row count, and
    {combination: {task: AUROC}} on the rows of each modality combination."""
    pooled = Pooled()
    found = 0
    with open(truth_csv, newline="") as f:
        for row in csv.DictReader(f):
            key = (int(row["subject_id"]), int(row["hadm_id"]))
            if key not in test_ids:
                continue
            found += 1
            pooled.row(test_ids[key])
            for t in TASKS:
                lab = row["label_" + t]
                if lab in ("", "-1"):
                    continue
                pooled.add(t, float(row["risk_" + t]), int(lab))
    res, combo = pooled.aurocs()
    return res, found, combo


# The generator's true risks (docs/synthetic.md "Labels", sim/synth.c true_risk): intercept and
# coefficients of the latents s, h, k, n, m and of a = (age - 65) / 15, per task.
RISK_COEF = {"mortality": (-2.4, 0.9, 0.7, 0.6, 0.7, 0.7, 0.3),
             "los7": (-0.3, 0.7, 0.4, 0.7, 0.3, 0.6, 0.0),
             "readmit30": (-1.8, 0.3, 0.0, 0.3, 0.8, 0.3, 0.0)}
# n ~ N(0, 1) on a grid (trapezoid rule; error far below the AUROC's 1e-4 printing)
N_GRID = [-8.0 + 16.0 * i / 800 for i in range(801)]
N_WEIGHT = [math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi) * 16.0 / 800 *
            (0.5 if i in (0, 800) else 1.0) for i, x in enumerate(N_GRID)]


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def achievable(truth_csv, test_ids):
    """The modality-limited oracle: each test row scored with its true risk after averaging
    out the latent n where the row has no notes. n (a condition only the report text states)
    reaches no other modality, so no model can use it on such rows; the other latents are kept,
    which makes this an upper bound (the EHR and the image show them only through noise). For
    readmission, which is labelled only for survivors, n is averaged over its distribution
    given survival (the Bayes score given the other latents and the label's existence).
    Returns ({task: AUROC}, {combination: {task: AUROC}}); exits if the formula above no longer
    reproduces truth.csv's risk columns (the generator changed)."""
    pooled = Pooled()
    with open(truth_csv, newline="") as f:
        rd = csv.DictReader(f)
        if "risk_limited_mortality" in (rd.fieldnames or []):
            # the heterogeneous profile writes its own modality-limited risk (docs/synthetic.md)
            return limited_from_truth(rd, truth_csv, test_ids)
        for row in rd:
            key = (int(row["subject_id"]), int(row["hadm_id"]))
            if key not in test_ids:
                continue
            c = test_ids[key]
            lat = [float(row[x]) for x in ("severity", "hemodynamic", "renal", "notes_only",
                                          "lung")]
            a = (float(row["age"]) - 65.0) / 15.0
            pooled.row(c)
            for t in TASKS:
                b = RISK_COEF[t]
                eta = b[0] + sum(bi * z for bi, z in zip(b[1:6], lat)) + b[6] * a
                if abs(sigmoid(eta) - float(row["risk_" + t])) > 2e-4:  # latents printed to 4 d.p.
                    sys.exit(f"{truth_csv}: hadm {key[1]}: risk_{t} {row['risk_' + t]} is not "
                             f"the documented formula's {sigmoid(eta):.6f}; update RISK_COEF")
                lab = row["label_" + t]
                if lab in ("", "-1"):
                    continue
                if "N" in c:
                    r = sigmoid(eta)
                elif t != "readmit30":
                    eta0 = eta - b[4] * lat[3]
                    r = sum(w * sigmoid(eta0 + b[4] * x) for x, w in zip(N_GRID, N_WEIGHT))
                else:
                    # readmission is labelled only for survivors, and survival depends on n:
                    # average over p(n | latents, survived) ~ N(0,1)(n) (1 - mortality risk(n))
                    eta0 = eta - b[4] * lat[3]
                    bm = RISK_COEF["mortality"]
                    em0 = (bm[0] + sum(bi * z for bi, z in zip(bm[1:6], lat)) + bm[6] * a
                           - bm[4] * lat[3])
                    ws = [w * (1.0 - sigmoid(em0 + bm[4] * x)) for x, w in zip(N_GRID, N_WEIGHT)]
                    r = (sum(w * sigmoid(eta0 + b[4] * x) for x, w in zip(N_GRID, ws))
                         / sum(ws))
                pooled.add(t, r, int(lab))
    res, combo = pooled.aurocs()
    return res, combo


def limited_from_truth(rd, truth_csv, test_ids):
    """(e') from truth.csv's risk_limited_<task> columns (the heterogeneous profile): the
    generator's risk given what the row's modalities can show. Same return as achievable()."""
    pooled = Pooled()
    for n, row in enumerate(rd, 2):
        try:
            key = (int(row["subject_id"]), int(row["hadm_id"]))
        except (TypeError, ValueError):
            sys.exit(f"{truth_csv}:{n}: subject_id/hadm_id: expected integers")
        if key not in test_ids:
            continue
        pooled.row(test_ids[key])
        for t in TASKS:
            lab = row["label_" + t]
            if lab in ("", "-1"):
                continue
            try:
                r, y = float(row["risk_limited_" + t]), int(lab)
            except (TypeError, ValueError):
                sys.exit(f"{truth_csv}:{n}: risk_limited_{t}/label_{t}: expected a number and "
                         f"0/1, got {row['risk_limited_' + t]!r}/{lab!r}")
            pooled.add(t, r, y)
    res, combo = pooled.aurocs()
    return res, combo


def fmt(x, nd=4):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def fmt_gap(x):
    """A signed gap, or "–" where a model was not run."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.4f}"


def mean(vals):
    v = [x for x in vals if x is not None and not math.isnan(x)]
    return sum(v) / len(v) if v else math.nan


def task_aurocs(m):
    """AUROC per task and their mean from a read_metrics() result (None if missing)."""
    if m is None:
        return None
    a = {t: m["task"].get(t, {}).get("auroc") for t in TASKS}
    a = {t: (math.nan if v is None else v) for t, v in a.items()}
    a["mean"] = mean([a[t] for t in TASKS])
    return a


def seed_summary(names, seed_dirs):
    """Lines of the every-seed table: the mean AUROC over tasks of each model and the gaps
    of (a), with the mean over seeds and a count of the seeds on which each target is met."""
    cols = [("(b)", "central"), ("best (c)", None), ("early", "fed-early"),
            ("joint", "fed-joint"), ("late", "fed-late"), ("EHR", "fed-ehr")]
    L = ["| seed | (a) | " + " | ".join(c for c, _ in cols) + " | (e) | (e') | "
         "a−b | a−best(c) | a−early | a−joint | a−late | a−EHR | a−(e) | a−(e') |",
         "|---|" + "---|" * (len(cols) + 11)]
    gaps_all = []
    for seed, d in seed_dirs:
        vals = {}
        for dname in ["fed-moe", "central", "fed-early", "fed-joint", "fed-late", "fed-ehr"] + \
                ["local-" + n for n in names]:
            a = task_aurocs(read_metrics(os.path.join(d, dname, "metrics.jsonl")))
            vals[dname] = a["mean"] if a else math.nan
        ids = pooled_test_ids(os.path.join(d, "sites"), names)
        orc = oracle(os.path.join(d, "truth.csv"), ids)[0]
        ach = achievable(os.path.join(d, "truth.csv"), ids)[0]
        vals["oracle"] = mean([orc[t] for t in TASKS])
        vals["ach"] = mean([ach[t] for t in TASKS])
        vals["best-c"] = max(vals["local-" + n] for n in names)
        a = vals["fed-moe"]
        gaps = [a - vals["central"], a - vals["best-c"], a - vals["fed-early"],
                a - vals["fed-joint"], a - vals["fed-late"], a - vals["fed-ehr"],
                a - vals["oracle"], a - vals["ach"]]
        gaps_all.append(gaps)
        shown = [vals["central"], vals["best-c"], vals["fed-early"], vals["fed-joint"],
                 vals["fed-late"], vals["fed-ehr"], vals["oracle"], vals["ach"]]
        L.append(f"| {seed} | {fmt(a)} | " + " | ".join(fmt(v) for v in shown) + " | "
                 + " | ".join(fmt_gap(g) for g in gaps) + " |")
    n = len(gaps_all)
    means = [mean([g[i] for g in gaps_all]) for i in range(8)]
    L.append("| mean | | " + " | ".join("" for _ in range(len(cols) + 2)) + " | "
             + " | ".join(fmt_gap(m) for m in means) + " |")
    ok = [lambda g: g >= -0.01, lambda g: g > 0, lambda g: g > 0, lambda g: g > 0,
          lambda g: g > 0, lambda g: g > 0, lambda g: g >= -0.03, lambda g: g >= -0.03]
    L.append("| target met on | | " + " | ".join("" for _ in range(len(cols) + 2)) + " | "
             + " | ".join("not run" if all(math.isnan(g[i]) for g in gaps_all) else
                          f"{sum(1 for g in gaps_all if ok[i](g[i]))} of {n}" for i in range(8))
             + " |")
    return L


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", required=True, help="the work directory of results.sh")
    ap.add_argument("--sites", required=True, help="site names, comma-separated")
    ap.add_argument("--output", required=True, help="the Markdown file to write")
    ap.add_argument("--command", default="scripts/results.sh")
    ap.add_argument("--admissions", default="?")
    ap.add_argument("--rounds", default="?")
    ap.add_argument("--warmup", default="?")
    ap.add_argument("--alpha", default="?")
    ap.add_argument("--site-spec", default="")
    ap.add_argument("--seconds", type=float, default=math.nan)
    ap.add_argument("--seed", help="the seed of --out-dir (issue-15 tables of one seed)")
    ap.add_argument("--resamples", type=int, default=1000,
                    help="paired bootstrap resamples of the issue-15 CIs")
    ap.add_argument("--figure", help="also draw the robustness curves into this SVG "
                                     "(FILE.svg; the centralised ones into "
                                     "FILE-centralised.svg)")
    ap.add_argument("--profile", default="homogeneous",
                    help="the generator profile of the runs (moeh synth --profile), for the text")
    ap.add_argument("--seed-dir", action="append", default=[], metavar="SEED:DIR",
                    help="results.sh work directory of one seed (repeat); adds the table of "
                         "every seed")
    args = ap.parse_args()
    if args.figure and not args.figure.endswith(".svg"):
        ap.error(f"--figure {args.figure}: expected a file name ending in .svg")
    out = args.out_dir
    names = [s for s in args.sites.split(",") if s]

    runs = [("a", "fed-moe", "(a) federated MoE-Health"),
            ("b", "central", "(b) centralised MoE-Health (pooled data)")]
    runs += [("c", "local-" + n, f"(c) local-only MoE-Health, {n}") for n in names]
    runs += [("d", "fed-early", "(d) federated early fusion"),
             ("d", "fed-joint", "(d) federated joint fusion"),
             ("d", "fed-late", "(d) federated late fusion"),
             ("d", "fed-ehr", "(d) federated unimodal EHR")]
    metrics = {d: read_metrics(os.path.join(out, d, "metrics.jsonl")) for _, d, _ in runs}
    aur = {d: task_aurocs(m) for d, m in metrics.items()}
    test_ids = pooled_test_ids(os.path.join(out, "sites"), names)
    orc, orc_rows, orc_combo = oracle(os.path.join(out, "truth.csv"), test_ids)
    orc["mean"] = mean([orc[t] for t in TASKS])
    ach, ach_combo = achievable(os.path.join(out, "truth.csv"), test_ids)
    ach["mean"] = mean([ach[t] for t in TASKS])

    L = []
    L.append("# Results: federated MoE-Health on a synthetic MIMIC-IV\n")
    L.append("Produced by (from the repository root, after building):\n")
    L.append("```\n" + args.command + "\n```\n")
    L.append(f"Synthetic MIMIC-IV with {args.admissions} cohort admissions (`moeh synth "
             f"--profile {args.profile}`, truth known), extracted with `moeh extract`, "
             + (f"split with `moeh split --hospitals truth.csv` into one site per generator "
                f"hospital (`{args.site_spec}`)." if args.site_spec.startswith("hosp0") else
                f"split with `moeh split --alpha {args.alpha}` (case-mix skew by mortality) "
                f"into {len(names)} sites `{args.site_spec}`.")
             + f" Every model trains for {args.rounds} rounds/epochs "
             f"(the first {args.warmup} expert warm-up), the model and optimiser settings of "
             f"`moeh run`; "
             f"the centralised and local-only models keep their epoch with the best mean "
             f"validation AUROC on their own validation split (`--select best`, early "
             f"stopping); the federated models report the round the coordinator selected on "
             f"the sites' validation splits (best mean validation AUROC, `moeh run "
             f"--select-by auroc`; the model file it wrote), or their last round in a run "
             f"without validation (`--no-validate`)."
             + ("" if math.isnan(args.seconds) else
                f" Pipeline wall time {fmt(args.seconds / 60, 1)} min on this 2-core machine.")
             + "\n")
    L.append("**Test set.** Every number is on the *pooled test set*: the union of the four "
             "sites' test splits "
             f"({len(test_ids)} admissions). The centralised model (b) trains on the "
             "concatenation of the four site datasets (`moeh train --dataset "
             "S1,S2,S3,S4`: the same rows, modalities and train/val/test splits the "
             "federation sees); each local-only model (c) trains on its own site and is tested "
             "with `--eval-dataset S1,S2,S3,S4`. AUROC is computed from 1000-bin score "
             "histograms (the federation's method) for every model; the oracle (e) scores each "
             "admission with the generator's true risk (exact AUROC on the same rows, "
             f"{orc_rows} found in truth.csv). The oracle sees latents that some rows' "
             "modalities do not carry: the latent n (a condition only the report text states, "
             "[synthetic.md](synthetic.md)) weighs 0.8 in the readmission risk and reaches no "
             "other modality, and most test rows have no notes. So the table also gives (e') "
             "the *modality-limited oracle*: the true risk with n averaged out on the rows "
             "without notes (over its N(0, 1) prior; for readmission, which is labelled only "
             "for survivors, over its distribution given survival), the other latents kept: "
             "an upper bound, in expectation, on what any model can reach from the modalities "
             "each row has (on a few hundred rows a model can exceed it by chance).\n")
    summ = os.path.join(out, "sites", "summary.tsv")
    if os.path.exists(summ):
        with open(summ) as f:
            rows = [r.rstrip("\n").split("\t") for r in f if r.strip()]
        L.append("## Sites\n")
        L.append("| " + " | ".join(rows[0]) + " |")
        L.append("|" + "---|" * len(rows[0]))
        for r in rows[1:]:
            L.append("| " + " | ".join(r) + " |")
        L.append("")

    L.append("## AUROC per task (pooled test set)\n")
    L.append("| model | mortality | LOS > 7 d | readmission 30 d | mean | round / epoch |")
    L.append("|---|---|---|---|---|---|")
    for _, d, label in runs:
        a = aur[d]
        if a is None:
            L.append(f"| {label} | not run | | | | |")
            continue
        ev = metrics[d]["eval"]
        used = (f"epoch {ev['epoch']} of {ev['round']}" if "epoch" in ev
                else f"round {ev['round']}"
                + (" (selected)" if metrics[d].get("selected") else ""))
        L.append(f"| {label} | " + " | ".join(fmt(a[t]) for t in TASKS + ["mean"])
                 + f" | {used} |")
    L.append("| (e) oracle (true risk) | " + " | ".join(fmt(orc[t]) for t in TASKS + ["mean"])
             + " | |")
    L.append("| (e') modality-limited oracle | "
             + " | ".join(fmt(ach[t]) for t in TASKS + ["mean"]) + " | |")
    L.append("")

    L.append("## AUPRC and F1 (models trained with `moeh train`)\n")
    L.append("The federation evaluates with summed histograms and reports AUROC only; the "
             "centralised and local-only models also report exact AUPRC and F1 (threshold 0.5 "
             "and the best threshold) on the same pooled test set.\n")
    L.append("| model | task | exact AUROC | AUPRC | F1 @ 0.5 | best F1 |")
    L.append("|---|---|---|---|---|---|")
    for _, d, label in runs:
        m = metrics[d]
        if m is None or d.startswith("fed-"):
            continue
        for t in TASKS:
            j = m["task"].get(t, {})
            L.append(f"| {label} | {t} | {fmt(j.get('auroc_exact'))} | {fmt(j.get('auprc'))} "
                     f"| {fmt(j.get('f1'))} | {fmt(j.get('f1_best'))} |")
    L.append("")

    L.append("## AUROC per modality combination\n")
    L.append("E = EHR, N = notes, I = chest X-ray; rows = pooled test admissions with that "
             "combination (the synthetic cohort always has EHR). (a) is the model of the "
             "targets; (b) and the fusion baselines are shown for comparison.\n")
    gate = metrics["fed-moe"]["gate"] if metrics["fed-moe"] else None
    L.append("| model | combination | rows | mortality | LOS > 7 d | readmission 30 d | mean |")
    L.append("|---|---|---|---|---|---|---|")
    for d, label in [("fed-moe", "(a) federated MoE-Health"), ("central", "(b) centralised"),
                     ("fed-early", "(d) early fusion"), ("fed-late", "(d) late fusion"),
                     ("fed-joint", "(d) joint fusion")]:
        m = metrics[d]
        if m is None:
            continue
        g = m["gate"] or gate or {}
        for c in COMBOS:
            vals = [m["task"].get(t, {}).get("auroc_" + c) for t in TASKS]
            if all(v is None for v in vals):
                continue
            rows = g.get(c, {}).get("rows", "?")
            vals = [math.nan if v is None else v for v in vals]
            L.append(f"| {label} | {c} | {rows} | " + " | ".join(fmt(v) for v in vals)
                     + f" | {fmt(mean(vals))} |")
    for label, by_combo in (("(e) oracle (true risk)", orc_combo),
                            ("(e') modality-limited oracle", ach_combo)):
        for c in COMBOS:
            if c in by_combo:
                vals = [by_combo[c][t] for t in TASKS]
                n = sum(1 for v in test_ids.values() if v == c)
                L.append(f"| {label} | {c} | {n} | "
                         + " | ".join(fmt(v) for v in vals) + f" | {fmt(mean(vals))} |")
    L.append("")
    if gate:
        L.append("Mean gate weight per expert (expert k = combination k+1: E, N, EN, I, EI, NI, "
                 "ENI) for each combination, federated MoE-Health:\n")
        L.append("| combination | rows | " + " | ".join("w_" + c for c in COMBOS) + " |")
        L.append("|---|---|" + "---|" * len(COMBOS))
        for c in COMBOS:
            g = gate.get(c)
            if not g or not g.get("rows"):
                continue
            L.append(f"| {c} | {g['rows']} | " + " | ".join(f"{w:.3f}" for w in g["weights"])
                     + " |")
        L.append("")

    # targets
    L.append("## Targets (DESIGN §7)\n")
    L.append("Gap = (a) minus the reference, per task and on the mean over tasks; a target is "
             "met on a column when the gap satisfies it.\n")
    a = aur["fed-moe"]
    cols = TASKS + ["mean"]
    L.append("| target | reference | " + " | ".join(cols) + " | verdict |")
    L.append("|---|---|" + "---|" * len(cols) + "---|")
    summary = []

    def row(target, ref_label, ref, ok):
        if a is None or ref is None:
            L.append(f"| {target} | {ref_label} | " + " | ".join("–" for _ in cols)
                     + " | not run |")
            summary.append((target, ref_label, None))
            return
        cells, all_ok = [], True
        for t in cols:
            gap = a[t] - ref[t]
            good = ok(gap)
            all_ok &= good
            cells.append(f"{gap:+.4f} {'met' if good else 'MISSED'}")
        verdict = "met" if all_ok else ("met on the mean only" if ok(a["mean"] - ref["mean"])
                                        else "MISSED")
        L.append(f"| {target} | {ref_label} | " + " | ".join(cells) + f" | {verdict} |")
        summary.append((target, ref_label, a["mean"] - ref["mean"], verdict))

    row("(a) within 0.01 of (b)", "(b) centralised", aur["central"], lambda g: g >= -0.01)
    for _, d, label in runs:
        if d.startswith("local-") or d in ("fed-early", "fed-joint", "fed-late", "fed-ehr"):
            row("(a) above", label, aur[d], lambda g: g > 0)
    row("(a) within 0.03 of (e)", "(e) oracle", orc, lambda g: g >= -0.03)
    row("(a) within 0.03 of (e')", "(e') modality-limited oracle", ach, lambda g: g >= -0.03)
    L.append("")
    # DESIGN §7 also asks for (a) above early/late fusion on each modality combination
    L.append("Per modality combination, (a) minus the reference (mean AUROC over tasks on the "
             "pooled test rows of that combination; met = above, for (b) = within 0.01):\n")
    L.append("| reference | " + " | ".join(COMBOS) + " |")
    L.append("|---|" + "---|" * len(COMBOS))
    for d, label in [("fed-early", "(d) early fusion"), ("fed-late", "(d) late fusion"),
                     ("fed-joint", "(d) joint fusion"), ("central", "(b) centralised")]:
        if metrics["fed-moe"] is None or metrics[d] is None:
            continue
        cells = []
        for c in COMBOS:
            va = [metrics["fed-moe"]["task"].get(t, {}).get("auroc_" + c) for t in TASKS]
            vb = [metrics[d]["task"].get(t, {}).get("auroc_" + c) for t in TASKS]
            if any(v is None for v in va + vb):
                cells.append("–")
                continue
            gap = mean(va) - mean(vb)
            ok = gap > 0 if d != "central" else gap >= -0.01
            cells.append(f"{gap:+.4f} {'met' if ok else 'MISSED'}")
        L.append(f"| {label} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("Summary on the mean AUROC over tasks:\n")
    for s in summary:
        if s[2] is None:
            L.append(f"- {s[0]}, reference {s[1]}: not run")
        else:
            L.append(f"- {s[0]}, reference {s[1]}: gap {s[2]:+.4f} — {s[3]}")
    L.append("")

    seed_dirs = []
    if args.seed_dir:
        for sd in args.seed_dir:
            seed, _, d = sd.partition(":")
            if not d:
                sys.exit(f"--seed-dir {sd}: expected SEED:DIR")
            seed_dirs.append((seed, d))
        L.append("## Every seed\n")
        L.append(f"The whole pipeline once per seed ({', '.join(s for s, _ in seed_dirs)}: new "
                 "synthetic data, split and initialisation each time; the tables above are "
                 f"seed {seed_dirs[0][0]}'s). Mean AUROC over the three tasks on each seed's "
                 "pooled test set; gaps are (a) minus the model, met as in the targets above "
                 "(within 0.01 of (b), above (c) and (d), within 0.03 of (e) and (e')).\n")
        L.extend(seed_summary(names, seed_dirs))
        L.append("")
    # issue 15: the paper's experiments, from per-admission scores (scripts/fed_predict.py)
    fed_dirs = seed_dirs if args.seed_dir else [(args.seed or "1", out)]
    if any(os.path.isdir(os.path.join(d, "preds")) for _, d in fed_dirs):
        L.append("## The paper's experiments: main table, ablations, paired CIs, robustness\n")
        L.extend(results_fed.report(fed_dirs, args.resamples, args.figure))

    a_m = metrics["fed-moe"]
    if a_m:
        L.append("## Learning curve of (a)\n")
        L.append("Federated rounds (test AUROC per round, pooled test set):\n")
        L.append("| round | train loss | mortality | LOS > 7 d | readmission 30 d | mean |")
        L.append("|---|---|---|---|---|---|")
        for j in a_m["evals"]:
            L.append(f"| {j['round']} | {fmt(j.get('train_loss'))} | "
                     + " | ".join(fmt(j.get('auroc_' + t)) for t in TASKS)
                     + f" | {fmt(j.get('auroc_mean'))} |")
        L.append("")
    # hand-written notes below the marker survive a regeneration
    marker = "<!-- notes below are kept by scripts/results_table.py -->"
    notes = ""
    if os.path.exists(args.output):
        with open(args.output) as f:
            old = f.read()
        if marker in old:
            notes = old[old.index(marker):]
    with open(args.output, "w") as f:
        f.write("\n".join(L) + "\n")
        if notes:
            f.write("\n" + notes)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
