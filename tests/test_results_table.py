#!/usr/bin/env python3
"""test_results_table.py - scripts/results_table.py: exact AUROC with ties, the n-averaging of
the modality-limited oracle (e'), its check that truth.csv still follows the documented risk
formula, and that its task and combination names are data/schema.c's; its strictness (issue 13
finding 7: a forged or malformed metrics.jsonl line, or a malformed predictions row, is refused
with file:line and what was expected, never taken as the result); and issue 15's tables
(scripts/results_fed.py) on a tiny fixture with hand-computed AUROC, F1 at the validation
threshold, the best fusion baseline, the ablation and the robustness rows. Standard library
only; run by ctest (tests/scripts_tests.cmake)."""
import csv
import math
import os
import re
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in scripts/
sys.path.insert(0, os.path.join(here, "..", "scripts"))
import results_table as rt  # noqa: E402
import results_fed as rf  # noqa: E402
from checks import summary  # noqa: E402  (tests/checks.py)

FAILS = []


def check(cond, what):
    if not cond:
        FAILS.append(what)
        print("FAIL:", what)


def write_truth(path, rows):
    """rows: (subject, hadm, age, s, h, k, n, m, labels (3), risk override or None)"""
    cols = ["subject_id", "hadm_id", "age", "severity", "hemodynamic", "renal", "notes_only",
            "lung", "risk_mortality", "risk_los7", "risk_readmit30", "label_mortality",
            "label_los7", "label_readmit30"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for subj, hadm, age, s, h, k, n, m, labels, override in rows:
            a = (age - 65) / 15
            risks = []
            for t in rt.TASKS:
                b = rt.RISK_COEF[t]
                eta = b[0] + b[1] * s + b[2] * h + b[3] * k + b[4] * n + b[5] * m + b[6] * a
                risks.append(rt.sigmoid(eta))
            if override is not None:
                risks[0] = override
            w.writerow([subj, hadm, age, f"{s:.4f}", f"{h:.4f}", f"{k:.4f}", f"{n:.4f}",
                        f"{m:.4f}"] + [f"{r:.6f}" for r in risks] + list(labels))


def refused(fn, *args):
    """The message fn(*args) exits with, or None when it returns."""
    try:
        fn(*args)
    except SystemExit as e:
        return str(e.code)
    return None


def eval_line(r, auroc=0.7):
    return ('{"event":"eval","round":%d,"sites":4,"train_loss":0.5,"test_loss":0.4,'
            '"auroc_mean":%s,"seconds":1.0,"auroc_mortality":%s,"auroc_los7":%s,'
            '"auroc_readmit30":%s}' % (r, auroc, auroc, auroc, auroc))


def task_lines(r):
    return ['{"event":"task","round":%d,"task":"%s","auroc":0.7,"auroc_E":null}' % (r, t)
            for t in rt.TASKS]


def strict_metrics():
    good = ['{"event":"stats","sites":4}', eval_line(1), *task_lines(1),
            '{"event":"gate","round":1,"E":{"rows":3,"weights":[0.5,0.5]}}', eval_line(2, 0.8),
            *task_lines(2), '{"event":"selection","selected_round":2,"selected_by":"auroc"}',
            '{"event":"some_future_event","x":1}']
    with tempfile.TemporaryDirectory() as d:
        def run(lines, name="metrics.jsonl"):
            p = os.path.join(d, name)
            with open(p, "w") as f:
                f.write("\n".join(lines) + "\n")
            return p
        m = rt.read_metrics(run(good))
        check(m is not None and m["round"] == 2 and m["eval"]["auroc_mean"] == 0.8 and
              len(m["evals"]) == 2 and set(m["task"]) == set(rt.TASKS),
              "a well-formed file reads: round 2 is the final evaluation")
        sel1 = good[:6] + [eval_line(2, 0.6), *task_lines(2), eval_line(3, 0.65), *task_lines(3),
                           '{"event":"selection","selected_round":1,"selected_by":"val_auroc_mean"}']
        m = rt.read_metrics(run(sel1))
        check(m is not None and m["round"] == 1 and m["selected"] and
              m["eval"]["auroc_mean"] == 0.7 and m["gate"] is not None and
              len(m["evals"]) == 3,
              "a run that selected round 1 of 3 reports round 1 (the model it wrote), not the "
              "last round")
        m = rt.read_metrics(run(good[:6] + [eval_line(2, 0.6), *task_lines(2)]))
        check(m is not None and m["round"] == 2 and not m["selected"],
              "without a selection line the last round is the result (--no-validate)")
        forged = ('{"event":"eval","round":99,"sites":4,"train_loss":0,"test_loss":0,'
                  '"auroc_mean":0.999,"seconds":0,"auroc_mortality":0.999,'
                  '"auroc_los7":0.999,"auroc_readmit30":0.999}')
        cases = [
            (good[:-2] + [forged], "round 99 after round 2", "issue 13 finding 7: a forged "
             "round-99 eval after the final one"),
            (good + [eval_line(3, 0.999)], "after the run's selection line",
             "an eval after the selection line"),
            (good[:1] + [eval_line(1), eval_line(1)], "round 1 after round 1", "a repeated round"),
            (good[:1] + ['{"event":"eval","round":1,"auroc_mean":0.9}'], 'without "sites"',
             "an eval without its members"),
            (good[:1] + [eval_line(1, '"0.9"')], '"auroc_mean" must be a number',
             "a string AUROC"),
            (good[:1] + ["{not json"], "not JSON", "a line that is not JSON"),
            (good[:1] + ['["event","eval"]'], 'string "event"', "a JSON array line"),
            (good[:1] + ['{"event":1}'], 'string "event"', "a non-string event"),
            (good[:2] + ['{"event":"task","round":7,"task":"los7","auroc":0.9}'],
             "expected the round of the latest eval line (1)", "a task line of another round"),
            (good[:2] + ['{"event":"task","round":1,"task":"death","auroc":0.9}'],
             "task 'death'", "an unknown task"),
            (good[:2] + task_lines(1) + task_lines(1)[:1], "repeated", "a repeated task line"),
            (good[:2] + ['{"event":"gate","round":1,"E":{"rows":"3","weights":[1]}}'],
             'gate: "E" must be', "a malformed gate line"),
            (['{"event":"config","epochs":1}', eval_line(1), eval_line(2)],
             "configured for 1", "an eval beyond the configured epochs"),
            (good[:2] + ['{"event":"selection","selected_round":5}'], "selection of round 5",
             "a selection of a round never evaluated"),
        ]
        for lines, want, what in cases:
            msg = refused(rt.read_metrics, run(lines))
            check(msg is not None and want in msg and "metrics.jsonl:" in msg,
                  f"refused: {what} ({msg})")
        # the line number is the offending line's
        msg = refused(rt.read_metrics, run(good[:-2] + [forged]))
        check(msg is not None and f"metrics.jsonl:{len(good) - 1}:" in msg,
              f"the forged line's number is named ({msg})")


HDR = ("site,admission_id,combo,p_mortality,p_los7,p_readmit30,expert,split,label_mortality,"
       "label_los7,label_readmit30")


def write_preds(path, rows):
    """rows: (site, id, split, labels (3, None = masked), scores (3))"""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(HDR + "\n")
        for site, i, sp, lab, sc in rows:
            f.write(f"{site},{i},E," + ",".join(f"{x}" for x in sc) + f",,{sp}," +
                    ",".join("" if v is None else str(v) for v in lab) + "\n")


def fed_tables():
    with tempfile.TemporaryDirectory() as d:
        # strictness of the predictions rows
        bad = os.path.join(d, "bad.csv")
        for row, want in [("a,1,E,0.5,0.5,1.5,,test,0,1,0", "p_readmit30: expected a probability"),
                          ("a,1,E,0.5,0.5,0.5,,test,2,1,0", "label_mortality: expected empty, 0"),
                          ("a,1,E,0.5,0.5,0.5,,dev,0,1,0", "split: expected train, val or test"),
                          ("a,x,E,0.5,0.5,0.5,,test,0,1,0", "admission_id: expected an integer"),
                          ("a,1,E,0.5,0.5,0.5,,test,0,1", "10 fields; expected 11"),
                          ("a,1,E,nan,0.5,0.5,,test,0,1,0", "p_mortality: expected a prob")]:
            with open(bad, "w") as f:
                f.write(HDR + "\n" + row + "\n")
            msg = refused(rf.read_preds, bad)
            check(msg is not None and "bad.csv:2:" in msg and want in msg,
                  f"predictions row refused: {want} ({msg})")
        with open(bad, "w") as f:
            f.write(HDR + "\na,1,E,0.5,0.5,0.5,,test,0,1,0\na,1,E,0.5,0.5,0.5,,test,0,1,0\n")
        msg = refused(rf.read_preds, bad)
        check(msg is not None and "bad.csv:3:" in msg and "repeated" in msg,
              f"a repeated admission refused ({msg})")
        with open(bad, "w") as f:
            f.write("admission_id,combo,p_mortality\n1,E,0.5\n")
        msg = refused(rf.read_preds, bad)
        check(msg is not None and "bad.csv:1:" in msg and "label_los7" in msg,
              f"a header without labels refused ({msg})")

        # the fixture: 8 test rows (labels 0,0,0,0,1,1,1,1 for every task; readmission masked
        # on the last row) and 4 validation rows
        y = [0, 0, 0, 0, 1, 1, 1, 1]
        perfect = [.1, .2, .3, .4, .6, .7, .8, .9]
        # one swapped pair (rows 3 and 4): AUROC 15/16 = 0.9375
        swap = [.1, .2, .3, .65, .45, .7, .8, .9]
        inverted = [1 - x for x in perfect]
        val_y, val_s = [0, 0, 1, 1], [.2, .5, .55, .9]  # best F1 (1.0) at threshold 0.55

        def model(path, test_scores, val_scores=val_s):
            rows = [("s1", 100 + i, "test", (y[i], y[i], None if i == 7 else y[i]),
                     (test_scores[i],) * 3) for i in range(8)]
            rows += [("s2", 200 + i, "val", (val_y[i],) * 3, (val_scores[i],) * 3)
                     for i in range(4)]
            rows += [("s2", 300, "train", (1, 1, 1), (.5, .5, .5))]
            write_preds(path, rows)
        sd = os.path.join(d, "seed-1")
        model(f"{sd}/preds/fed-moe/all.csv", perfect)
        model(f"{sd}/preds/fed-early/all.csv", swap)
        model(f"{sd}/preds/fed-joint/all.csv", inverted)
        model(f"{sd}/preds/abl-no-warmup/all.csv", inverted)
        # robustness: MoE at 50% notes removed scores like the swapped model
        model(f"{sd}/preds/fed-moe/notes-50.csv", swap)
        sc = rf.model_scores(rf.read_preds(f"{sd}/preds/fed-early/all.csv"))
        check(sc["mortality"] == 0.9375, f"AUROC with one swapped pair 15/16 ({sc['mortality']})")
        # readmission without the masked row 7: 4 negatives x 3 positives, one pair swapped
        check(abs(sc["readmit30"] - 11 / 12) < 1e-12, f"masked row left out ({sc['readmit30']})")
        # threshold 0.55 from the validation rows: test predicts positive rows 3, 5, 6, 7
        # (scores .65 .7 .8 .9) -> TP 3, pred 4, pos 4 -> F1 6/8
        check(rf.best_threshold(val_y, val_s) == 0.55, "validation threshold 0.55")
        check(sc["f1_mortality"] == 0.75, f"F1 at the validation threshold 0.75 "
                                          f"({sc['f1_mortality']})")
        L = "\n".join(rf.report([("1", sd)], resamples=200))
        check("| MoE-Health | 1.0000 | 1.0000 | 1.0000 | 1.0000 |" in L,
              "main table: MoE-Health's AUROC 1.0")
        check("| joint fusion | 0.0000 |" in L, "main table: joint fusion's AUROC 0.0")
        check("| late fusion | not run |" in L, "main table: a model without predictions")
        check("| 1 | early fusion | +0.0625" in L,
              "the best fusion baseline is early fusion (not joint), MoE minus it +0.0625")
        check("without the specialisation warm-up | `--warmup-rounds 0` | 0.0000 | +1.0000 "
              "[+1.0000, +1.0000] above 0" in L, "ablation row with its CI")
        check("- The specialisation ablation (no warm-up) below MoE-Health, CI above 0 on every "
              "seed: **met**" in L, "the ablation claim is met")
        tie, up, down = "tie (CI holds 0)", "above 0", "below 0"
        check(rf.met([up, up, up], 3) == "met" and rf.met([tie, tie, tie], 3) == "tie within the CI"
              and rf.met([up, tie, up], 3) == "tie within the CI"
              and rf.met([tie, tie, down], 3) == "not met" and rf.met([up, up], 3) == "not met"
              and rf.met([], 3) == "not run",
              "a claim is met, a tie within the CI or not met (issue 15's three verdicts)")
        check("| MoE-Health | 1.0000 | 0.9306 | -0.0694 |" in L.split("notes removed:")[1],
              "robustness row: p = 0 from all.csv, p = 50 from notes-50.csv (mean of 15/16, 15/16, "
              "11/12); p = 25 never scored: no column")
        check("### Centralised" not in L, "no centralised section without cen-* models")
        fig = os.path.join(d, "rob.svg")
        L = "\n".join(rf.report([("1", sd)], resamples=200, figure=fig))
        import xml.etree.ElementTree as ET
        svg = ET.parse(fig).getroot() if os.path.exists(fig) else None
        lines = [e for e in svg.iter() if e.tag.endswith("polyline")] if svg is not None else []
        check(len(lines) >= 1 and "![Robustness: modalities removed at test time](rob.svg)" in L,
              f"the robustness SVG is well-formed XML with its curves ({len(lines)}) and linked")
        # the paper's centralised comparison (results.sh CENTRAL=1): MoE perfect, early fusion
        # with one swapped pair, late fusion inverted, the no-warm-up ablation swapped
        model(f"{sd}/preds/cen-moe/all.csv", perfect)
        model(f"{sd}/preds/cen-early/all.csv", swap)
        model(f"{sd}/preds/cen-late/all.csv", inverted)
        model(f"{sd}/preds/cen-no-warmup/all.csv", swap)
        model(f"{sd}/preds/cen-moe/notes-50.csv", swap)
        L = "\n".join(rf.report([("1", sd)], resamples=200))
        cen = L.split("### Centralised", 1)[1] if "### Centralised" in L else ""
        check("| MoE-Health | 1.0000 | 1.0000 | 1.0000 | 1.0000 |" in cen,
              "centralised table: MoE-Health's AUROC 1.0")
        check("| joint fusion | not run |" in cen, "centralised: joint fusion not run")
        check("| unimodal X-ray | not run |" in cen, "centralised: the unimodal rows are listed")
        check("| 1 | early fusion | +0.0625 [" in cen and "| +0.0694 [" in cen,
              "centralised: the best fusion is early fusion (not the inverted late), MoE minus "
              "it +0.0625 on mortality and +0.0694 on the mean (1/16, 1/16 and 1/12)")
        check("| without the specialisation warm-up | `--warmup-epochs 0` | 0.9306 | +0.0694 ["
              in cen, "centralised ablation row: AUROC 0.9306, MoE minus it +0.0694")
        check("| top-1 gate | `--top-k 1` | not run |" in cen, "an ablation not run")
        rob = cen.split("### Centralised robustness")[1] if "### Centralised robustness" in cen \
            else ""
        check("| MoE-Health | 1.0000 | 0.9306 | -0.0694 |" in rob.split("notes removed:")[1]
              if "notes removed:" in rob else False,
              "centralised robustness: MoE's p = 50 from cen-moe/notes-50.csv")
        check("- Centralised: the no-warm-up ablation below MoE-Health" in L and
              "- Centralised: MoE-Health above the best centralised fusion baseline" in L,
              "centralised claims are stated")
    return 0


def main():
    # exact AUROC, ties count one half
    # the task and combination names are data/schema.c's, in its order
    with open(os.path.join(here, "..", "data", "schema.c")) as f:
        schema = f.read()

    def c_names(array):
        m = re.search(array + r"\[[A-Z_]+\] = \{([^}]*)\}", schema)
        return re.findall(r'"([^"]*)"', m.group(1)) if m else None
    check(c_names("moeh_task_names") == rt.TASKS, f"TASKS {rt.TASKS} are the schema's "
          f"{c_names('moeh_task_names')}")
    check(c_names("moeh_combo_names") == rt.COMBOS, f"COMBOS {rt.COMBOS} are the schema's "
          f"{c_names('moeh_combo_names')}")
    check(rt.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75, "auroc of a textbook case")
    check(rt.auroc([0.5, 0.5], [0, 1]) == 0.5, "auroc of a tie")
    check(math.isnan(rt.auroc([0.2, 0.3], [1, 1])), "auroc without negatives is NaN")
    # the N(0, 1) grid integrates to 1 and averages sigmoid(b n) to 1/2 by symmetry
    check(abs(sum(rt.N_WEIGHT) - 1) < 1e-9, "normal weights sum to 1")
    avg = sum(w * rt.sigmoid(0.8 * x) for x, w in zip(rt.N_GRID, rt.N_WEIGHT))
    check(abs(avg - 0.5) < 1e-9, "E[sigmoid(0.8 n)] = 1/2")
    # E[sigmoid(x + 0.8 n)] < sigmoid(x) for x > 0 (the average is flatter than the risk)
    avg = sum(w * rt.sigmoid(1.0 + 0.8 * x) for x, w in zip(rt.N_GRID, rt.N_WEIGHT))
    check(rt.sigmoid(1.0) - 0.1 < avg < rt.sigmoid(1.0), "averaging n flattens the risk")

    with tempfile.TemporaryDirectory() as d:
        truth = os.path.join(d, "truth.csv")
        # four EHR-only rows that differ only in n, and four rows with notes that differ in n
        rows, ids = [], {}
        for i, n in enumerate([-1.5, -0.5, 0.5, 1.5]):
            rows.append((i, 100 + i, 70, 0.3, 0.1, -0.2, n, 0.4, (i % 2, (i + 1) % 2, i // 2),
                         None))
            ids[(i, 100 + i)] = "E"
            rows.append((10 + i, 200 + i, 70, 0.3, 0.1, -0.2, n, 0.4,
                         (i // 2, i % 2, i // 2), None))
            ids[(10 + i, 200 + i)] = "EN"
        write_truth(truth, rows)
        res, combo = rt.achievable(truth, ids)
        orc, _, orc_combo = rt.oracle(truth, ids)
        # rows with notes keep n: (e') equals the oracle there
        for t in rt.TASKS:
            check(combo["EN"][t] == orc_combo["EN"][t], f"EN rows keep the oracle ({t})")
        # EHR-only rows differ only in n, which is averaged out: every score ties, AUROC 1/2
        for t in rt.TASKS:
            check(combo["E"][t] == 0.5, f"E rows tie once n is averaged out ({t})")
        check(orc_combo["E"]["readmit30"] == 1.0, "the oracle still sees n on E rows")
        # a truth file whose risk no longer follows the formula is refused, naming the row
        bad = os.path.join(d, "bad.csv")
        write_truth(bad, [(1, 7, 70, 0, 0, 0, 0, 0, (0, 1, 0), 0.9)])
        p = subprocess.run([sys.executable, "-B", "-c",
                            "import sys; sys.path.insert(0, sys.argv[1]); import results_table as rt;"
                            "rt.achievable(sys.argv[2], {(1, 7): 'E'})",
                            os.path.join(here, "..", "scripts"), bad],
                           capture_output=True, text=True)
        check(p.returncode != 0 and "hadm 7: risk_mortality" in p.stderr,
              f"a drifted formula is refused (rc {p.returncode}: {p.stderr.strip()})")
    strict_metrics()
    fed_tables()
    return summary(FAILS)


if __name__ == "__main__":
    sys.exit(main())
