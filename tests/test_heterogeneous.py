#!/usr/bin/env python3
"""test_heterogeneous / test_homogeneous_unchanged: `moeh synth` profiles (docs/synthetic.md).

usage: test_heterogeneous.py MOEH_BINARY {heterogeneous|homogeneous}

heterogeneous: generates 3,000 cohort admissions and checks, on the generated files, every
effect docs/synthetic.md states: X-ray availability rises with the lung latent m, a report
without an X-ray with the report-only latent n, reports come mostly with imaging; the kinds'
logistic weights on m, k and h (fitted by IRLS on the drawn mortality labels) are largest for
R, S and C respectively; each hospital's case mix; creatinine at hospital 1 in umol/L, about
88 times the other sites; vitals charted less often at hospital 1 and more at hospital 2.
homogeneous: the default profile's files hash to the value recorded before the
heterogeneous profile existed (a change of the default generator fails here)."""
import csv
import gzip
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

# sha256 over "sha256  ./path\n" lines of every file (sorted), as `find . -type f | sort |
# xargs sha256sum | sha256sum` prints it, of: moeh synth --admissions 300 --seed 5
# --image-px 32, with every .json file hashed as its canonical JSON (sorted keys, no spaces).
# Recorded at main 1142327, before --profile existed, as the raw bytes (7962a24f...8068); since
# truth.json is written with cJSON (issue 12, its layout changed, not its content) the JSON
# files are compared canonically: 601e065's output hashes to 7962a24f... raw and to this value
# canonically, and so does today's (checked 2026-12-06).
HOMOGENEOUS_TREE = "2cb53b296b692e4dc42360615fc358fe5a1cf6b5de5f50cc898229bbfb3265ca"

from checks import check, status  # noqa: E402  (tests/checks.py)


def tree_hash(root):
    files = []
    for d, _, names in os.walk(root):
        for n in names:
            files.append("./" + os.path.relpath(os.path.join(d, n), root))
    lines = []
    for f in sorted(files):
        with open(os.path.join(root, f[2:]), "rb") as fh:
            data = fh.read()
        if f.endswith(".json"):  # its content, not its layout
            data = json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {f}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def solve(a, b):
    """Gaussian elimination with partial pivoting (a is n x n, small)."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        for r in range(n):
            if r != c:
                f = m[r][c] / m[c][c]
                for j in range(c, n + 1):
                    m[r][j] -= f * m[c][j]
    return [m[i][n] / m[i][i] for i in range(n)]


def logistic(xs, ys, iters=25):
    """Maximum-likelihood logistic regression by IRLS; returns [bias, w...]."""
    k = len(xs[0]) + 1
    w = [0.0] * k
    for _ in range(iters):
        h = [[0.0] * k for _ in range(k)]
        g = [0.0] * k
        for x, y in zip(xs, ys):
            v = [1.0] + x
            p = 1 / (1 + math.exp(-sum(a * b for a, b in zip(w, v))))
            for i in range(k):
                g[i] += (y - p) * v[i]
                for j in range(k):
                    h[i][j] += p * (1 - p) * v[i] * v[j]
        step = solve(h, g)
        w = [a + b for a, b in zip(w, step)]
    return w


def rate(rows, cond, event):
    sel = [r for r in rows if cond(r)]
    return sum(1 for r in sel if event(r)) / max(1, len(sel)), len(sel)


def heterogeneous(moeh, tmp):
    out = os.path.join(tmp, "het")
    subprocess.run([moeh, "synth", "--profile", "heterogeneous", "--admissions", "3000",
                    "--seed", "11", "--no-images", "--out", out], check=True,
                   stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "truth.csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f)]
    coh = [r for r in rows if r["in_cohort"] == "1"]
    check(len(coh) == 3000, f"3000 cohort rows in truth.csv ({len(coh)})")
    for c in ("hospital", "kind", "risk_limited_mortality", "risk_limited_los7",
              "risk_limited_readmit30"):
        check(c in rows[0], f"truth.csv has column {c}")
    fl = lambda r, c: float(r[c])
    cxr = lambda r: r["has_cxr"] == "1"
    notes = lambda r: r["has_notes"] == "1"
    # 1. informative availability
    hi, n_hi = rate(coh, lambda r: fl(r, "lung") > 0.5, cxr)
    lo, n_lo = rate(coh, lambda r: fl(r, "lung") < -0.5, cxr)
    check(hi - lo > 0.3, f"P(X-ray | m > 0.5) = {hi:.3f} (n={n_hi}) exceeds P(X-ray | m < -0.5) "
          f"= {lo:.3f} (n={n_lo}) by > 0.3")
    nocxr = [r for r in coh if not cxr(r)]
    hi, n_hi = rate(nocxr, lambda r: fl(r, "notes_only") > 1, notes)
    lo, n_lo = rate(nocxr, lambda r: fl(r, "notes_only") < 0, notes)
    check(hi > 2.5 * lo and hi > 0.2, f"without an X-ray, P(report | n > 1) = {hi:.3f} (n={n_hi}) "
          f"> 2.5 x P(report | n < 0) = {lo:.3f} (n={n_lo})")
    pc, _ = rate(coh, cxr, notes)
    check(pc > 0.8, f"P(report | X-ray) = {pc:.3f} > 0.8 (reports come with imaging)")
    byk = {k: rate(coh, lambda r, k=k: r["kind"] == k, cxr)[0] for k in "RSC"}
    check(byk["R"] > byk["C"] > byk["S"], f"P(X-ray) by kind R {byk['R']:.3f} > C {byk['C']:.3f} "
          f"> S {byk['S']:.3f}")
    # 2. the kinds' outcome weights differ (fitted on the drawn labels, not the risks)
    lat = ("severity", "hemodynamic", "renal", "notes_only", "lung")
    w = {}
    for k in "RSC":
        sel = [r for r in coh if r["kind"] == k]
        xs = [[fl(r, c) for c in lat] + [(fl(r, "age") - 65) / 15] for r in sel]
        ys = [int(r["label_mortality"]) for r in sel]
        w[k] = dict(zip(("bias",) + lat + ("age",), logistic(xs, ys)))
        print(f"     kind {k} (n={len(sel)}): " +
              ", ".join(f"{c} {v:+.2f}" for c, v in w[k].items()))
    check(w["R"]["lung"] > w["S"]["lung"] + 0.8 and w["R"]["lung"] > w["C"]["lung"] + 0.8,
          "mortality weight on m: R > S, C by > 0.8")
    check(w["S"]["renal"] > w["R"]["renal"] + 0.8 and w["S"]["renal"] > w["C"]["renal"] + 0.8,
          "mortality weight on k: S > R, C by > 0.8")
    check(w["C"]["hemodynamic"] > w["R"]["hemodynamic"] + 0.8 and
          w["C"]["hemodynamic"] > w["S"]["hemodynamic"] + 0.8,
          "mortality weight on h: C > R, S by > 0.8")
    # 3. site shift: case mix
    for h, k in (("1", "S"), ("2", "C"), ("3", "R")):
        share, n = rate(coh, lambda r, h=h: r["hospital"] == h, lambda r, k=k: r["kind"] == k)
        check(share > 0.5, f"hospital {h}: share of kind {k} {share:.3f} > 0.5 (n={n})")
    share, n = rate(coh, lambda r: r["hospital"] == "0", lambda r: r["kind"] == "R")
    check(share < 0.5, f"hospital 0: share of kind R {share:.3f} < 0.5 (n={n})")
    subj_h = {r["subject_id"]: r["hospital"] for r in rows}
    check(all(subj_h[r["subject_id"]] == r["hospital"] for r in rows),
          "every admission of a subject is at one hospital")
    # creatinine units at hospital 1
    creat = {"1": [], "other": []}
    uoms = {"1": set(), "other": set()}
    with gzip.open(os.path.join(out, "mimic/hosp/labevents.csv.gz"), "rt", newline="") as f:
        for r in csv.DictReader(f):
            if r["itemid"] != "50912":
                continue
            h = "1" if subj_h[r["subject_id"]] == "1" else "other"
            creat[h].append(float(r["valuenum"]))
            uoms[h].add(r["valueuom"])
    med = {h: sorted(v)[len(v) // 2] for h, v in creat.items()}
    check(uoms["1"] == {"umol/L"} and uoms["other"] == {"mg/dL"},
          f"creatinine uom at hospital 1 {uoms['1']}, elsewhere {uoms['other']}")
    ratio = med["1"] / med["other"]
    check(50 < ratio < 150, f"median creatinine hospital 1 / others = {ratio:.1f} (about 88)")
    # charting frequency: heart-rate rows per cohort admission, by hospital
    hadm_h = {r["hadm_id"]: r["hospital"] for r in coh}
    hr = {h: 0 for h in "0123"}
    with gzip.open(os.path.join(out, "mimic/icu/chartevents.csv.gz"), "rt", newline="") as f:
        for r in csv.DictReader(f):
            if r["itemid"] == "220045" and r["hadm_id"] in hadm_h:
                hr[hadm_h[r["hadm_id"]]] += 1
    cnt = {h: sum(1 for r in coh if r["hospital"] == h) for h in "0123"}
    per = {h: hr[h] / cnt[h] for h in "0123"}
    check(per["1"] < 0.85 * per["0"] and per["0"] < 0.85 * per["2"],
          f"heart-rate rows per admission: hospital 1 {per['1']:.1f} < 0 {per['0']:.1f} "
          f"< 2 {per['2']:.1f} (each by > 15%)")
    # the modality-limited oracle never sees more than the oracle: equal where both exist
    both = [r for r in coh if cxr(r) and notes(r)]
    check(all(abs(fl(r, "risk_mortality") - fl(r, "risk_limited_mortality")) < 2e-6
              for r in both), f"limited oracle = oracle where both modalities exist ({len(both)})")


def npy_u8(path):
    """(shape, bytes) of a little .npy of dtype u1 (the dataset's avail and images arrays)."""
    with open(path, "rb") as f:
        b = f.read()
    hl = int.from_bytes(b[8:10], "little")
    hdr = b[10:10 + hl].decode()
    assert "'|u1'" in hdr, f"{path}: {hdr}"
    shape = tuple(int(x) for x in hdr.split("(")[1].split(")")[0].split(",") if x.strip())
    return shape, b[10 + hl:]


def split_by_hospital(moeh, tmp):
    """moeh split --hospitals: one site per generator hospital; the X-ray acquisition differs
    at hospital 2 (gain 0.55-0.65: less contrast; offset +35..+45: a lighter
    background) in the extracted images."""
    out = os.path.join(tmp, "hs")
    subprocess.run([moeh, "synth", "--profile", "heterogeneous", "--admissions", "500",
                    "--seed", "3", "--image-px", "64", "--out", out], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([moeh, "extract", "--mimic", out + "/mimic", "--note", out + "/note",
                    "--cxr", out + "/cxr", "--out", out + "/ds"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([moeh, "split", "--dataset", out + "/ds", "--hospitals", out + "/truth.csv",
                    "--out", out + "/sites"], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "truth.csv"), newline="") as f:
        coh = [r for r in csv.DictReader(f) if r["in_cohort"] == "1"]
    with open(os.path.join(out, "sites/summary.tsv")) as f:
        summ = {r["site"]: r for r in csv.DictReader(f, delimiter="\t")}
    for h in "0123":
        want = sum(1 for r in coh if r["hospital"] == h)
        got = int(summ.get("hosp" + h, {}).get("admissions", -1))
        check(got == want, f"site hosp{h}: {got} admissions == the truth's {want}")
    sd, bg = {}, {}
    for h in "0123":
        (n, px, _), img = npy_u8(os.path.join(out, f"sites/hosp{h}/images.npy"))
        _, av = npy_u8(os.path.join(out, f"sites/hosp{h}/avail.npy"))
        rows = [i for i in range(n) if av[3 * i + 2]]
        sd[h] = statistics.mean(statistics.pstdev(img[i * px * px:(i + 1) * px * px])
                                for i in rows)
        bg[h] = statistics.mean(img[i * px * px + y * px + x] for i in rows for y in range(3)
                                for x in range(3))
    others = "013"
    check(sd["2"] < 0.8 * min(sd[h] for h in others),
          f"X-ray contrast (mean pixel sd) at hospital 2 {sd['2']:.1f} < 0.8 x the others' "
          f"({', '.join(f'{sd[h]:.1f}' for h in others)})")
    check(bg["2"] > max(bg[h] for h in others) + 15,
          f"X-ray background (corner) at hospital 2 {bg['2']:.1f} > the others' "
          f"({', '.join(f'{bg[h]:.1f}' for h in others)}) + 15")
    r = subprocess.run([moeh, "split", "--dataset", out + "/ds", "--hospitals",
                        out + "/mimic/hosp/d_labitems.csv.gz", "--out", out + "/bad"],
                       capture_output=True, text=True)
    check(r.returncode == 2 and "no subject_id column" in r.stderr,
          f"--hospitals on a file without the columns: exit {r.returncode}, names the column")


def homogeneous(moeh, tmp):
    out = os.path.join(tmp, "hom")
    subprocess.run([moeh, "synth", "--admissions", "300", "--seed", "5", "--image-px", "32",
                    "--out", out], check=True, stdout=subprocess.DEVNULL)
    h = tree_hash(out)
    check(h == HOMOGENEOUS_TREE, f"homogeneous tree hash {h} == recorded {HOMOGENEOUS_TREE}")
    out2 = os.path.join(tmp, "hom2")
    subprocess.run([moeh, "synth", "--profile", "homogeneous", "--admissions", "300", "--seed",
                    "5", "--image-px", "32", "--out", out2], check=True, stdout=subprocess.DEVNULL)
    check(tree_hash(out2) == h, "--profile homogeneous gives the default's bytes")
    r = subprocess.run([moeh, "synth", "--profile", "mixed", "--out", out2],
                       capture_output=True, text=True)
    check(r.returncode == 2 and "--profile mixed" in r.stderr,
          f"unknown profile: exit {r.returncode}, says which option")


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in ("heterogeneous", "homogeneous"):
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory(prefix="moeh-synthprof-") as tmp:
        if sys.argv[2] == "heterogeneous":
            heterogeneous(sys.argv[1], tmp)
            split_by_hospital(sys.argv[1], tmp)
        else:
            homogeneous(sys.argv[1], tmp)
    return status()


if __name__ == "__main__":
    sys.exit(main())
