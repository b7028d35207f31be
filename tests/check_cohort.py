#!/usr/bin/env python3
"""check_cohort.py - independent check of `moeh extract` (standard library only).

usage: check_cohort.py MIMIC_DIR DATASET_DIR [VARIABLES_CSV]

Recomputes from the raw MIMIC-IV tables, without sharing code with the C extractor:
  - the cohort of docs/data.md (ICU admission, adult, in hospital and alive at t0 + 48 h),
  - its three labels and label masks,
  - the hourly means and masks of every labevents variable in the variable map,
    (a lab row without hadm_id goes to the subject's admission whose window contains it),
  - the same for every chartevents variable (all unobserved when the table is absent),
and compares them with ids.npy, labels.npy, label_mask.npy, ts_value.npy and ts_mask.npy.
Prints the cohort counts; exits 1 on any difference."""
import ast
import csv
import datetime as dt
import gzip
import json
import os
import struct
import sys


def rows(path):
    with gzip.open(path, "rt", newline="") as f:
        yield from csv.DictReader(f)


def ts(s):
    return dt.datetime.strptime(s[:19], "%Y-%m-%d %H:%M:%S" if len(s) > 10 else "%Y-%m-%d")


def load_npy(path):
    with open(path, "rb") as f:
        raw = f.read()
    assert raw[:6] == b"\x93NUMPY", path
    if raw[6] == 1:
        hlen, off = struct.unpack("<H", raw[8:10])[0], 10
    else:
        hlen, off = struct.unpack("<I", raw[8:12])[0], 12
    hdr = ast.literal_eval(raw[off:off + hlen].decode("latin1"))  # a dict literal by the format
    shape, descr = hdr["shape"], hdr["descr"]
    code = {"<f4": "f", "|u1": "B", "<i4": "i", "<i8": "q"}[descr]
    n = 1
    for d in shape:
        n *= d
    data = struct.unpack("<%d%s" % (n, code), raw[off + hlen:])
    return shape, data


def main():
    mimic, ds = sys.argv[1], sys.argv[2]
    here = os.path.dirname(os.path.abspath(__file__))
    varfile = sys.argv[3] if len(sys.argv) > 3 else os.path.join(here, "..", "sim", "variables.csv")
    H48 = dt.timedelta(hours=48)

    pats = {r["subject_id"]: r for r in rows(os.path.join(mimic, "hosp", "patients.csv.gz"))}
    adms = list(rows(os.path.join(mimic, "hosp", "admissions.csv.gz")))
    first_icu = {}
    for r in rows(os.path.join(mimic, "icu", "icustays.csv.gz")):
        t = ts(r["intime"])
        if r["hadm_id"] not in first_icu or t < first_icu[r["hadm_id"]]:
            first_icu[r["hadm_id"]] = t

    by_subject = {}
    for a in adms:
        by_subject.setdefault(a["subject_id"], []).append(a)
    n_icu = n_adult = 0
    cohort = {}
    for a in adms:
        h = a["hadm_id"]
        if h not in first_icu:
            continue
        n_icu += 1
        p = pats.get(a["subject_id"])
        if p is None:
            continue
        admit = ts(a["admittime"])
        age = int(p["anchor_age"]) + admit.year - int(p["anchor_year"])
        if age < 18:
            continue
        n_adult += 1
        t0 = first_icu[h]
        disch = ts(a["dischtime"])
        death = ts(a["deathtime"]) if a["deathtime"] else None
        if disch < t0 + H48 or (death is not None and death < t0 + H48):
            continue
        mort = int(a["hospital_expire_flag"])
        los = 1 if (disch - admit) > dt.timedelta(days=7) else 0
        later = sorted((ts(b["admittime"]), int(b["hadm_id"])) for b in by_subject[a["subject_id"]]
                       if (ts(b["admittime"]), int(b["hadm_id"])) > (admit, int(h)))
        if mort:
            readm, rmask = 0, 0
        else:
            readm = 1 if later and (later[0][0] - disch) <= dt.timedelta(days=30) else 0
            rmask = 1
        cohort[(int(a["subject_id"]), int(h))] = (t0, [mort, los, readm], [1, 1, rmask])

    keys = sorted(cohort)
    fails = []
    shape, ids = load_npy(os.path.join(ds, "ids.npy"))
    got = [(ids[2 * i], ids[2 * i + 1]) for i in range(shape[0])]
    if got != keys:
        fails.append("cohort ids differ: C has %d, Python %d; first differences %s" % (
            len(got), len(keys), sorted(set(got) ^ set(keys))[:5]))
    _, lab = load_npy(os.path.join(ds, "labels.npy"))
    _, lm = load_npy(os.path.join(ds, "label_mask.npy"))
    if not fails:
        for i, k in enumerate(keys):
            want_l, want_m = cohort[k][1], cohort[k][2]
            if [int(x) for x in lab[3 * i:3 * i + 3]] != want_l or list(lm[3 * i:3 * i + 3]) != want_m:
                fails.append("labels of %s: C %s/%s, Python %s/%s" % (
                    k, lab[3 * i:3 * i + 3], lm[3 * i:3 * i + 3], want_l, want_m))

    # the time series of the lab variables
    with open(os.path.join(ds, "meta.json")) as f:
        meta = json.load(f)
    names = [v["name"] for v in meta["ts_features"]]
    F = len(names)
    items = {"labevents": {}, "chartevents": {}}
    with open(varfile, newline="") as f:
        for r in csv.DictReader(x for x in f if not x.startswith("#")):
            items[r["table"]][r["itemid"]] = (names.index(r["name"]), float(r["mul"]),
                                              float(r["add"]), float(r["lo"]), float(r["hi"]))
    idx = {k: i for i, k in enumerate(keys)}
    by_subj_rows = {}
    for k in keys:
        by_subj_rows.setdefault(k[0], []).append(k)
    acc = {}
    present = {}
    for table, sub in (("labevents", "hosp"), ("chartevents", "icu")):
        path = os.path.join(mimic, sub, table + ".csv.gz")
        present[table] = os.path.exists(path)
        if not present[table]:
            continue
        for r in rows(path):
            it = items[table].get(r["itemid"])
            if it is None or r["valuenum"] == "":
                continue
            t = ts(r["charttime"])
            cands = [(int(r["subject_id"]), int(r["hadm_id"]))] if r["hadm_id"] else \
                by_subj_rows.get(int(r["subject_id"]), [])
            for k in cands:
                if k not in cohort:
                    continue
                d = (t - cohort[k][0]).total_seconds()
                if 0 <= d < 48 * 3600:
                    v = float(r["valuenum"]) * it[1] + it[2]
                    if it[3] <= v <= it[4]:
                        s = acc.setdefault((idx[k], int(d // 3600), it[0]), [0.0, 0])
                        s[0] += v
                        s[1] += 1
                    break
    _, val = load_npy(os.path.join(ds, "ts_value.npy"))
    _, msk = load_npy(os.path.join(ds, "ts_mask.npy"))
    n_obs = {"labevents": 0, "chartevents": 0}
    if not fails:
        for table in ("labevents", "chartevents"):
            tvars = {v[0] for v in items[table].values()}
            for i in range(len(keys)):
                for h in range(48):
                    for v in tvars:
                        c = (i * 48 + h) * F + v
                        want = acc.get((i, h, v))
                        if (msk[c] == 1.0) != (want is not None):
                            fails.append("%s: mask of %s hour %d %s: C %g, Python %s" % (
                                table, keys[i], h, names[v], msk[c], want))
                        elif want is not None:
                            n_obs[table] += 1
                            m = want[0] / want[1]
                            if abs(val[c] - m) > 1e-4 * max(1.0, abs(m)):
                                fails.append("%s: value of %s hour %d %s: C %g, Python %g" % (
                                    table, keys[i], h, names[v], val[c], m))
    n_obs_lab, n_obs_chart = n_obs["labevents"], n_obs["chartevents"]

    pos = [sum(cohort[k][1][t] for k in keys) for t in range(3)]
    lab_n = [sum(cohort[k][2][t] for k in keys) for t in range(3)]
    print("admissions %d, with ICU stay %d, adult %d, cohort %d (%d subjects)" % (
        len(adms), n_icu, n_adult, len(keys), len({k[0] for k in keys})))
    print("mortality %d/%d, los7 %d/%d, readmit30 %d/%d (positive/labelled)" % (
        pos[0], lab_n[0], pos[1], lab_n[1], pos[2], lab_n[2]))
    print("hourly cells observed and compared value by value: labs %d, vitals %d%s" % (
        n_obs_lab, n_obs_chart, "" if present["chartevents"] else " (no chartevents: all unobserved, checked)"))
    for f_ in fails[:20]:
        print("MISMATCH:", f_)
    if fails:
        print("%d mismatches" % len(fails))
        return 1
    print("OK: the C extraction matches the independent computation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
