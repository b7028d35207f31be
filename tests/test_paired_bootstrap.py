#!/usr/bin/env python3
"""test_paired_bootstrap: scripts/paired_bootstrap.py against hand-computed cases.

- AUROC by hand: labels 0,0,1,1 with scores .1,.6,.5,.9 -> 3 of 4 pairs ordered = 0.75;
  with a tie (labels 0,1,0,1, scores .5,.5,.2,.9) -> (0.5 + 1 + 2) / 4 = 0.875.
- A ranks perfectly, B inverts every pair: every resample with both classes has d = 1 - 0,
  so the CI is exactly [1, 1] and the verdict "above 0".
- A perfect, B = .1,.6,.5,.9 (labels 0,0,1,1): only the pair (row 1, row 2) is misordered by
  B, so in a resample d = c1 c2 / (n_pos n_neg) (c = how often rows 1 and 2 were drawn);
  d = 0 whenever row 1 or row 2 is not drawn, P >= (3/4)^4 = 0.32 > 2.5%, so the CI's lower
  end is exactly 0 and the verdict a tie (the formula is checked on all 4^4 resamples); with six
  rows (B misorders one pair, d = 1/9) the upper end lies between the 95% and 99.5% quantiles
  of the exact bootstrap distribution (all 6^6 resamples enumerated).
- paired_bootstrap_tasks (several tasks on the same resampled admissions, through
  weighted_auroc on resample counts): weighted_auroc equals auroc() of the expanded multiset on
  random cases with ties and zero counts; on one task the result is paired_bootstrap()'s (the
  same draws and redraws for the same seed); with a second task where B = A (the same labels)
  the mean-over-tasks difference and its CI are half of the first task's; masked rows (None)
  are left out of a task only.
- With the moeh binary: moeh train --predictions end to end, and moeh predict --with-labels
  --split test --drop (the same rows and scores; notes removed from nested, model-independent
  rows; --drop-seed; a bad --drop refused).
- The command line: the same result through files in another row order, masked rows left
  out, different ids or labels refused with exit 1 and a message naming them."""
import csv
import itertools
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "scripts", "paired_bootstrap.py")
sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
import paired_bootstrap as pb  # noqa: E402

from checks import check, status  # noqa: E402  (tests/checks.py)


def end_to_end(moeh):
    """moeh train --predictions on a small synthetic cohort, two models, then the script with
    --task: the file has one row per test admission, its AUROC is the one moeh train reports
    (exact, metrics.jsonl), and A vs A gives d = 0 with the CI [0, 0]."""
    with tempfile.TemporaryDirectory(prefix="moeh-pb-e2e-") as tmp:
        run = lambda *a: subprocess.run([moeh, *a], check=True, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        run("synth", "--admissions", "400", "--seed", "3", "--no-images", "--out", tmp + "/raw")
        run("extract", "--mimic", tmp + "/raw/mimic", "--note", tmp + "/raw/note", "--out",
            tmp + "/ds")
        preds = {}
        for arch in ("0", "4"):
            run("train", "--dataset", tmp + "/ds", "--arch", arch, "--epochs", "2",
                "--warmup-epochs", "1", "--d-emb", "16", "--d-hidden", "16", "--note-buckets",
                "1024", "--out", f"{tmp}/m{arch}", "--predictions", f"{tmp}/p{arch}.csv")
            preds[arch] = f"{tmp}/p{arch}.csv"
            with open(preds[arch], newline="") as f:
                rows = list(csv.DictReader(f))
            with open(f"{tmp}/m{arch}/metrics.jsonl") as f:
                lines = [json.loads(x) for x in f]
            task = [j for j in lines if j.get("event") == "task" and j.get("task") == "mortality"]
            y = [int(r["label_mortality"]) for r in rows if r["label_mortality"] != ""]
            sc = [float(r["score_mortality"]) for r in rows if r["label_mortality"] != ""]
            mine = pb.auroc(y, sc)
            theirs = task[-1].get("auroc_exact") \
                if task else None
            check(len(rows) > 20 and theirs is not None and abs(mine - theirs) < 1e-6,
                  f"arch {arch}: {len(rows)} test rows; AUROC from the file {mine:.6f} == "
                  f"moeh train's exact {theirs}")
        r = subprocess.run([sys.executable, SCRIPT, preds["0"], preds["4"], "--task", "mortality",
                            "--json"], capture_output=True, text=True)
        check(r.returncode == 0 and "ci_low" in r.stdout, f"MoE vs joint: {r.stdout.strip()}")
        r = subprocess.run([sys.executable, SCRIPT, preds["0"], preds["0"], "--task", "los7",
                            "--json"], capture_output=True, text=True)
        res = json.loads(r.stdout) if r.returncode == 0 else {}
        check(res.get("diff") == 0 and res.get("ci_low") == 0 and res.get("ci_high") == 0,
              f"A vs A: d = 0, CI [0, 0]: {r.stdout.strip()}")
        predict_drop(moeh, tmp, f"{tmp}/m0/model.safetensors", preds["0"])


def predict_drop(moeh, tmp, model, train_preds):
    """moeh predict --with-labels --split test --drop (issue 15): the test rows and labels of
    moeh train --predictions with the same scores; notes:100 leaves no row with notes;
    the rows losing notes at 50% are among those at 75% (nested) and the same for another
    model; another --drop-seed draws other rows; a bad --drop is a usage error (exit 2)."""
    def pred(out, *extra, m=model):
        r = subprocess.run([moeh, "predict", "--model", m, "--dataset", tmp + "/ds", "--out",
                            out, "--with-labels", "--split", "test", *extra],
                           capture_output=True, text=True)
        if r.returncode != 0:
            check(False, f"moeh predict {' '.join(extra)}: {r.stderr.strip()}")
            return []
        with open(out, newline="") as f:
            return list(csv.DictReader(f))
    base = pred(tmp + "/p.csv")
    with open(train_preds, newline="") as f:
        ref = {r["hadm_id"]: r for r in csv.DictReader(f)}
    check(len(base) == len(ref) and all(r["split"] == "test" for r in base),
          f"--split test: {len(base)} rows, moeh train --predictions has {len(ref)}")
    same = all(r["admission_id"] in ref and
               r["label_mortality"] == ref[r["admission_id"]]["label_mortality"] and
               abs(float(r["p_mortality"]) - float(ref[r["admission_id"]]["score_mortality"]))
               < 1e-5 for r in base)
    check(same, "--with-labels: the labels and scores of moeh train --predictions")
    had = {r["admission_id"] for r in base if "N" in r["combo"]}
    gone = {}
    for p in (50, 75, 100):
        rows = pred(f"{tmp}/n{p}.csv", "--drop", f"notes:{p}", "--drop-seed", "4")
        gone[p] = had - {r["admission_id"] for r in rows if "N" in r["combo"]}
        check(all("N" not in r["combo"] or r["admission_id"] in had for r in rows),
              f"notes:{p}: no row gains notes")
    check(not (had - gone[100]), f"notes:100 removes the notes of all {len(had)} rows")
    check(gone[50] <= gone[75] and 0 < len(gone[50]) < len(had),
          f"nested: the {len(gone[50])} rows at 50% are among the {len(gone[75])} at 75% "
          f"(of {len(had)} with notes)")
    other = pred(tmp + "/j50.csv", "--drop", "notes:50", "--drop-seed", "4",
                 m=f"{tmp}/m4/model.safetensors")
    check(had - {r["admission_id"] for r in other if "N" in r["combo"]} == gone[50],
          "the same rows lose notes for another model (joint fusion)")
    seed5 = pred(tmp + "/s5.csv", "--drop", "notes:50", "--drop-seed", "5")
    check(had - {r["admission_id"] for r in seed5 if "N" in r["combo"]} != gone[50],
          "another --drop-seed draws other rows")
    changed = sum(1 for a, b in zip(base, pred(tmp + "/n100b.csv", "--drop", "notes:100"))
                  if a["admission_id"] in had and a["p_mortality"] != b["p_mortality"])
    check(changed > 0, f"removing notes changes the scores of {changed} rows that had notes")
    r = subprocess.run([moeh, "predict", "--model", model, "--dataset", tmp + "/ds", "--out",
                        tmp + "/x.csv", "--drop", "ehr:10"], capture_output=True, text=True)
    check(r.returncode == 2 and "expected notes, img or notes+img" in r.stderr,
          f"--drop ehr:10 refused: {r.stderr.strip()}")


def tasks_cases(lo4, hi4):
    import random
    rng = random.Random(5)
    bad = 0
    for _ in range(300):
        n = rng.randrange(2, 9)
        y = [rng.randrange(2) for _ in range(n)]
        sc = [rng.choice([.1, .2, .3, .4]) for _ in range(n)]  # many ties
        w = [rng.randrange(3) for _ in range(n)]
        order = sorted(range(n), key=lambda i: sc[i])
        ey = [y[i] for i in range(n) for _ in range(w[i])]
        es = [sc[i] for i in range(n) for _ in range(w[i])]
        if pb.weighted_auroc(order, y, sc, w) != pb.auroc(ey, es) and \
                abs(pb.weighted_auroc(order, y, sc, w) - pb.auroc(ey, es)) > 1e-12:
            bad += 1
    check(bad == 0, f"weighted_auroc == auroc of the expanded resample on 300 random cases "
                    f"({bad} differ)")
    y, a, b = [0, 0, 1, 1], [.1, .2, .8, .9], [.1, .6, .5, .9]
    res, redrawn = pb.paired_bootstrap_tasks({"t": y}, {"t": a}, {"t": b}, 1000, 1)
    one = pb.paired_bootstrap(y, a, b, 1000, 1)
    check(res["t"] == one[:5] and res["mean"] == one[:5] and redrawn == one[5],
          f"one task == paired_bootstrap: {res['t']} vs {one[:5]}")
    check((res["t"][3], res["t"][4]) == (lo4, hi4), "the same CI as the 4-row case above")
    y6, a6, b6 = [0, 0, 0, 1, 1, 1], [.1, .2, .3, .7, .8, .9], [.1, .2, .6, .5, .8, .9]
    res, _ = pb.paired_bootstrap_tasks({"t": y6, "u": y6}, {"t": a6, "u": b6},
                                       {"t": b6, "u": b6}, 1000, 2)
    t, m = res["t"], res["mean"]
    check(res["u"][2:] == (0.0, 0.0, 0.0) and abs(m[2] - t[2] / 2) < 1e-12 and
          abs(m[3] - t[3] / 2) < 1e-12 and abs(m[4] - t[4] / 2) < 1e-12,
          f"second task with B = A: mean difference {m[2]:.4f} and CI [{m[3]:.4f}, {m[4]:.4f}] "
          f"are half of the first's ({t[2]:.4f}, [{t[3]:.4f}, {t[4]:.4f}])")
    ym = [0, 0, 1, 1, None, None]
    res, _ = pb.paired_bootstrap_tasks({"t": ym}, {"t": [.1, .2, .8, .9, .0, .9]},
                                       {"t": [.1, .6, .5, .9, .9, .0]}, 200, 1)
    check(res["t"][0] == 1.0 and res["t"][1] == 0.75, f"masked rows left out: {res['t'][:2]}")


def main():
    check(pb.auroc([0, 0, 1, 1], [.1, .6, .5, .9]) == 0.75, "AUROC 0.75 by hand")
    check(pb.auroc([0, 1, 0, 1], [.5, .5, .2, .9]) == 0.875, "AUROC with a tie 0.875 by hand")
    check(pb.auroc([1, 1], [.1, .2]) is None, "one class: no AUROC")

    y = [0, 0, 0, 1, 1, 1]
    a = [.1, .2, .3, .7, .8, .9]
    b = [.9, .8, .7, .3, .2, .1]
    fa, fb, d, lo, hi, _ = pb.paired_bootstrap(y, a, b, 1000, 7)
    check((fa, fb, d, lo, hi) == (1.0, 0.0, 1.0, 1.0, 1.0), f"perfect vs inverted: CI [{lo}, {hi}]")

    y = [0, 0, 1, 1]
    a = [.1, .2, .8, .9]
    b = [.1, .6, .5, .9]
    fa, fb, d, lo, hi, redrawn = pb.paired_bootstrap(y, a, b, 1000, 1)
    check(d == 0.25, f"point difference 1 - 0.75 = 0.25 ({d})")
    exact = []
    for idx in itertools.product(range(4), repeat=4):
        yy = [y[i] for i in idx]
        if 0 < sum(yy) < 4:
            p, n = sum(yy), 4 - sum(yy)
            c1, c2 = idx.count(1), idx.count(2)
            hand = c1 * c2 / (p * n)
            got = pb.auroc(yy, [a[i] for i in idx]) - pb.auroc(yy, [b[i] for i in idx])
            if abs(hand - got) > 1e-12:
                check(False, f"resample {idx}: d {got} != c1 c2 / (n_pos n_neg) = {hand}")
            exact.append(hand)
    exact.sort()
    q = lambda f: exact[min(len(exact) - 1, int(f * len(exact)))]
    check(lo == 0.0, f"CI lower end 0 (P(d = 0) = {exact.count(0.0) / len(exact):.3f})")
    lo4, hi4 = lo, hi
    check(redrawn > 0, f"one-class resamples are redrawn ({redrawn})")
    # six rows, the same structure (B misorders rows 2 and 3 only): the exact distribution of
    # d = c2 c3 / (n_pos n_neg) over all 6^6 resamples, by the formula checked above
    y6, a6, b6 = [0, 0, 0, 1, 1, 1], [.1, .2, .3, .7, .8, .9], [.1, .2, .6, .5, .8, .9]
    exact = sorted(idx.count(2) * idx.count(3) / (sum(y6[i] for i in idx) *
                                                   (6 - sum(y6[i] for i in idx)))
                   for idx in itertools.product(range(6), repeat=6)
                   if 0 < sum(y6[i] for i in idx) < 6)
    q = lambda f: exact[min(len(exact) - 1, int(f * len(exact)))]
    for seed in (1, 2, 3):
        fa, fb, d, lo, hi, _ = pb.paired_bootstrap(y6, a6, b6, 1000, seed)
        check(abs(d - 1 / 9) < 1e-12 and lo == 0.0 and q(0.95) <= hi <= q(0.995),
              f"six rows, seed {seed}: d {d:.4f} = 1/9, CI [{lo}, {hi:.4f}]; upper end within "
              f"the exact 95%-99.5% quantiles [{q(0.95):.4f}, {q(0.995):.4f}] "
              f"({len(exact)} two-class resamples)")

    tasks_cases(lo4, hi4)

    with tempfile.TemporaryDirectory(prefix="moeh-pb-") as tmp:
        def write(name, rows):
            p = os.path.join(tmp, name)
            with open(p, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["hadm_id", "label", "score"])
                w.writerows(rows)
            return p
        pa = write("a.csv", [(10 + i, y[i], a[i]) for i in range(4)] + [(99, "", .5)])
        pbf = write("b.csv", [(10 + i, y[i], b[i]) for i in reversed(range(4))] + [(99, "", .1)])
        r = subprocess.run([sys.executable, SCRIPT, pa, pbf, "--json"], capture_output=True,
                           text=True)
        res = json.loads(r.stdout) if r.returncode == 0 else {}
        check(r.returncode == 0 and res.get("n") == 4 and res.get("diff") == 0.25 and
              res.get("ci_low") == lo4 and res.get("ci_high") == hi4 and
              res.get("verdict", "").startswith("tie"),
              f"CLI (other row order, a masked row): {r.stdout.strip()} {r.stderr.strip()}")
        pc = write("c.csv", [(10 + i, y[i], b[i]) for i in range(3)] + [(77, 1, .5)])
        r = subprocess.run([sys.executable, SCRIPT, pa, pc], capture_output=True, text=True)
        check(r.returncode == 1 and "different ids" in r.stderr and "'13'" in r.stderr,
              f"different ids refused: {r.stderr.strip()}")
        pd = write("d.csv", [(10 + i, 1 - y[i] if i == 0 else y[i], b[i]) for i in range(4)])
        r = subprocess.run([sys.executable, SCRIPT, pa, pd], capture_output=True, text=True)
        check(r.returncode == 1 and "id 10: label 0" in r.stderr,
              f"different labels refused: {r.stderr.strip()}")
        r = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True)
        check(r.returncode == 0 and "paired" in r.stdout, "--help")
    if len(sys.argv) > 1:  # the path of the moeh binary: also the end-to-end case
        end_to_end(sys.argv[1])
    return status()


if __name__ == "__main__":
    sys.exit(main())
