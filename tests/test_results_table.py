#!/usr/bin/env python3
"""test_results_table.py - scripts/results_table.py: exact AUROC with ties, the n-averaging of
the modality-limited oracle (e'), its check that truth.csv still follows the documented risk
formula, and that its task and combination names are data/schema.c's. Standard library only;
run by ctest (tests/scripts_tests.cmake)."""
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
    if FAILS:
        print(f"{len(FAILS)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
