#!/usr/bin/env python3
"""test_embed_e2e.py - the paper's encoders through embeddings the site computes, end to end
(docs/data.md 5.1): scripts/cxr_embed.py with a randomly initialised torchvision DenseNet-121 on
the synthetic MIMIC-CXR JPEGs (keyed by dicom_id) and on the shipped NIH X-ray sample; synthetic
note vectors keyed by note_id; `moeh extract --note-embeddings --cxr-embeddings`; the dataset's
note_vec / img_vec checked against an independent computation of each admission's mean (window
rules re-derived here from the raw tables); `moeh train` for a few steps on them; `moeh predict`
with the trained model, and refusing a dataset whose vector width differs (both widths named);
the CLI's errors for a missing vector and an unused one under --strict.

A missing python3-torchvision (or numpy, PIL) is a FAILURE, not a skip: run with Debian's
/usr/bin/python3. Usage: test_embed_e2e.py --bin-dir BUILD/bin --script scripts/cxr_embed.py
"""
import argparse
import csv
import datetime as dt
import gzip
import json
import os
import subprocess
import sys
import tempfile

import numpy as np  # noqa: F401  (ImportError = failure)
import torch
import torchvision  # noqa: F401  (the reference script needs it: its absence fails the test)

FAILS = []


def check(cond, what):
    print(("ok     " if cond else "FAIL   ") + what)
    if not cond:
        FAILS.append(what)


def run(cmd, expect=0, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != expect:
        print("command:", " ".join(cmd), "\nstdout:", p.stdout[-3000:], "\nstderr:",
              p.stderr[-3000:])
    check(p.returncode == expect, f"exit {expect}: {' '.join(os.path.basename(c) for c in cmd[:2])}"
          f" {' '.join(cmd[2:4])}")
    return p


def ts(s):
    return dt.datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc).timestamp()


def read_gz(path):
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def cohort_windows(mimic, ids):
    """t0 per cohort hadm (earliest ICU intime) and the cohort rows per subject, in row order."""
    t0 = {}
    for r in read_gz(os.path.join(mimic, "icu/icustays.csv.gz")):
        h = int(r["hadm_id"])
        t0[h] = min(t0.get(h, float("inf")), ts(r["intime"]))
    rows_of = {}
    for i, (s, h) in enumerate(ids):
        rows_of.setdefault(int(s), []).append(i)
    return t0, rows_of


def find_row(ids, t0, rows_of, subj, hadm, t):
    """The cohort row of an event, as docs/data.md states it: by hadm_id (its window), else the
    subject's first admission whose 48 h window contains t."""
    cand = rows_of.get(subj, [])
    if hadm is not None:
        cand = [i for i in cand if int(ids[i][1]) == hadm]
    for i in cand:
        d = t - t0[int(ids[i][1])]
        if 0 <= d < 48 * 3600:
            return i
    return -1


def write_vecs(base, ids, vec, desc=None):
    np.save(base + ".npy", np.asarray(vec, dtype=np.float32))
    with open(base + ".ids.txt", "w") as f:
        f.write("".join(k + "\n" for k in ids))
    if desc is not None:
        with open(base + ".json", "w") as f:
            json.dump(desc, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--script", required=True)
    ap.add_argument("--sample", default=os.environ.get("MOEH_CXR_SAMPLE_DIR",
                                                       "/work/shared/data/cxr-sample"))
    a = ap.parse_args()
    moeh = os.path.join(a.bin_dir, "moeh")
    py = sys.executable
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    with tempfile.TemporaryDirectory(prefix="moeh-embed-") as d:
        syn = os.path.join(d, "syn")
        run([moeh, "synth", "--admissions", "150", "--seed", "3", "--image-px", "64", "--out", syn])

        # 1. X-ray vectors: random-init DenseNet-121 over the synthetic MIMIC-CXR-JPG (dicom_id)
        cxr = os.path.join(d, "cxr")
        run([py, a.script, "--cxr", syn + "/cxr", "--random-init", "--size", "64", "--out",
             cxr + ".npy"], env=env)
        cv = np.load(cxr + ".npy")
        cids = open(cxr + ".ids.txt").read().split()
        cdesc = json.load(open(cxr + ".json"))
        check(cv.dtype == np.float32 and cv.shape == (len(cids), 1024) and len(cids) > 20,
              f"cxr_embed.py: {cv.shape} float32 vectors, one per AP/PA image")
        check(np.isfinite(cv).all() and cv.std() > 0, "cxr_embed.py: finite, not constant")
        check("densenet121" in cdesc["model"] and cdesc["dim"] == 1024, "cxr_embed.py: OUT.json")

        # 2. the shipped NIH sample; weights from a file equal the same seed's random init, also
        # with torchvision's old layer names (norm.1 ...) and a "state_dict" wrapper
        if os.path.isdir(os.path.join(a.sample, "images_256")):
            torch.manual_seed(7)
            sd = torchvision.models.densenet121(weights=None).state_dict()
            old = {k.replace("norm1", "norm.1").replace("conv1", "conv.1")
                   .replace("norm2", "norm.2").replace("conv2", "conv.2"): v
                   for k, v in sd.items()}
            wpath = os.path.join(d, "densenet121.pth")
            torch.save({"state_dict": old}, wpath)
            outs = []
            for w in (["--weights", wpath], ["--random-init", "--seed", "7"]):
                o = os.path.join(d, f"nih{len(outs)}.npy")
                run([py, a.script, "--images", a.sample + "/images_256", "--size", "64",
                     "--out", o] + w, env=env)
                outs.append(np.load(o))
            check(outs[0].shape == (14, 1024) and np.isfinite(outs[0]).all(),
                  "cxr_embed.py on the NIH sample: 14 x 1024 finite vectors")
            check(np.array_equal(outs[0], outs[1]), "--weights FILE loads every features.* tensor")
            bad = os.path.join(d, "bad.pth")
            torch.save({"classifier.weight": torch.zeros(3)}, bad)
            p = run([py, a.script, "--images", a.sample + "/images_256", "--weights", bad,
                     "--out", os.path.join(d, "x.npy")], expect=1, env=env)
            check("not a DenseNet-121" in p.stderr, "a weights file of another model is refused")
        else:
            check(False, f"the NIH X-ray sample {a.sample}/images_256 is missing")

        # 3. synthetic note vectors keyed by note_id: keyword counts (signal) + noise
        notes = read_gz(os.path.join(syn, "note/note/radiology.csv.gz"))
        words = ["effusion", "edema", "consolidation", "pneumothorax", "cardiomegaly", "normal",
                 "clear", "tube"]
        rng = np.random.default_rng(5)
        nv = np.array([[n["text"].lower().count(w) for w in words] for n in notes], np.float32)
        nv = np.hstack([nv, rng.normal(0, 0.1, (len(notes), 8)).astype(np.float32)])
        nids = [n["note_id"] for n in notes]
        nb = os.path.join(d, "notes")
        write_vecs(nb, nids, nv, {"model": "synthetic keyword counts + noise (test)"})

        # 4. extract with both
        ds = os.path.join(d, "ds")
        ext = [moeh, "extract", "--mimic", syn + "/mimic", "--note", syn + "/note", "--cxr",
               syn + "/cxr"]
        p = run(ext + ["--note-embeddings", nb + ".npy", "--cxr-embeddings", cxr + ".npy",
                       "--out", ds])
        check("note vectors" in p.stdout and "x-ray vectors" in p.stdout, "extract reports them")
        meta = json.load(open(os.path.join(ds, "meta.json")))
        ids = np.load(os.path.join(ds, "ids.npy"))
        avail = np.load(os.path.join(ds, "avail.npy"))
        dn = np.load(os.path.join(ds, "note_vec.npy"))
        di = np.load(os.path.join(ds, "img_vec.npy"))
        emb = meta.get("embeddings", {})
        check(dn.shape == (len(ids), 16) and di.shape == (len(ids), 1024),
              f"note_vec {dn.shape}, img_vec {di.shape}")
        check(emb.get("notes", {}).get("dim") == 16 and emb.get("img", {}).get("dim") == 1024 and
              "synthetic keyword" in emb["notes"].get("model", "") and
              "densenet121" in emb["img"].get("model", ""),
              "meta.json embeddings: widths and the models' descriptions")
        check("note_vec" in meta["arrays"] and len(meta["arrays"]["img_vec"]["xxh64"]) == 16,
              "meta.json arrays: note_vec and img_vec with checksums")

        # independent means per admission
        t0, rows_of = cohort_windows(syn + "/mimic", ids)
        n_sum, n_cnt = np.zeros_like(dn, dtype=np.float64), np.zeros(len(ids))
        matched = []  # notes in a cohort window
        for k, n in enumerate(notes):
            h = int(n["hadm_id"]) if n["hadm_id"] else None
            i = find_row(ids, t0, rows_of, int(n["subject_id"]), h, ts(n["charttime"]))
            if i >= 0:
                n_sum[i] += nv[k]
                n_cnt[i] += 1
                matched.append(k)
        check(0 < len(matched) < len(notes), f"{len(matched)} of {len(notes)} notes in windows")
        crow = {k: r for r, k in enumerate(cids)}
        i_sum, i_cnt = np.zeros_like(di, dtype=np.float64), np.zeros(len(ids))
        for m in read_gz(syn + "/cxr/mimic-cxr-2.0.0-metadata.csv.gz"):
            if m["ViewPosition"] not in ("AP", "PA"):
                continue
            hh = int(float(m["StudyTime"]))
            t = ts(f"{m['StudyDate'][:4]}-{m['StudyDate'][4:6]}-{m['StudyDate'][6:]} "
                   f"{hh // 10000:02d}:{hh // 100 % 100:02d}:{hh % 100:02d}")
            i = find_row(ids, t0, rows_of, int(m["subject_id"]), None, t)
            if i >= 0:
                i_sum[i] += cv[crow[m["dicom_id"]]]
                i_cnt[i] += 1
        several = int((n_cnt > 1).sum() + (i_cnt > 1).sum())
        check(several > 0, f"{several} admissions average several notes / images")
        check(np.array_equal(avail[:, 1] == 1, n_cnt > 0) and
              np.array_equal(avail[:, 2] == 1, i_cnt > 0),
              f"avail: notes {int(avail[:, 1].sum())}, img {int(avail[:, 2].sum())} = the rows "
              f"with a vector")
        want_n = n_sum / np.maximum(n_cnt, 1)[:, None]
        want_i = i_sum / np.maximum(i_cnt, 1)[:, None]
        check(np.allclose(dn, want_n, rtol=1e-5, atol=1e-5), "note_vec = mean of the notes' "
              "vectors in each window (0 elsewhere)")
        check(np.allclose(di, want_i, rtol=1e-5, atol=1e-5), "img_vec = mean of the AP/PA "
              "images' vectors in each window (0 elsewhere)")

        # 5. moeh train on the vectors, then predict
        tr = os.path.join(d, "train")
        p = run([moeh, "train", "--dataset", ds, "--epochs", "2", "--batch-size", "16",
                 "--d-emb", "16", "--d-hidden", "16", "--out", tr], env=env)
        cfg = [json.loads(x) for x in open(os.path.join(tr, "metrics.jsonl"))
               if '"config"' in x][0]
        check(cfg["note_dim"] == 16 and cfg["img_dim"] == 1024 and cfg["note_buckets"] == 0,
              "moeh train configures note_buckets = 0, note_dim 16, img_dim 1024")
        model = os.path.join(tr, "model.safetensors")
        p = run([moeh, "predict", "--model", model, "--dataset", ds, "--out",
                 os.path.join(d, "p.csv")], env=env)
        rows = list(csv.DictReader(open(os.path.join(d, "p.csv"))))
        check(len(rows) == len(ids) and all(0 < float(r["p_mortality"]) < 1 for r in rows),
              "moeh predict scores every admission from the vectors")

        # a dataset with note vectors of another width: refused, both widths named
        write_vecs(nb + "8", nids, nv[:, :8])
        ds8 = os.path.join(d, "ds8")
        run(ext + ["--note-embeddings", nb + "8.npy", "--cxr-embeddings", cxr + ".npy",
                   "--out", ds8])
        p = run([moeh, "predict", "--model", model, "--dataset", ds8, "--out",
                 os.path.join(d, "p8.csv")], expect=1, env=env)
        check("width 16" in p.stderr and "width 8" in p.stderr,
              "predict refuses note vectors of width 8 for a model of width 16: " +
              p.stderr.strip()[-160:])

        # 6. CLI errors: a note without a vector (named), an unused vector under --strict
        drop = matched[len(matched) // 2]
        keep = [i for i in matched if i != drop]
        write_vecs(nb + "m", [nids[i] for i in keep], nv[keep])
        p = run(ext + ["--note-embeddings", nb + "m.npy", "--out", d + "/dsm"], expect=1)
        check(f"note_id '{nids[drop]}'" in p.stderr and "no vector" in p.stderr,
              "a cohort note without a vector is an error naming it: " + p.stderr.strip()[-200:])
        write_vecs(nb + "x", [nids[i] for i in matched] + ["99999999-RR-1"],
                   np.vstack([nv[matched], nv[:1]]))
        p = run(ext + ["--note-embeddings", nb + "x.npy", "--out", d + "/dsx"])
        check(f"1 of {len(matched) + 1} vectors" in p.stderr and "99999999-RR-1" in p.stderr,
              "an id outside the cohort: a warning with the count")
        p = run(ext + ["--note-embeddings", nb + "x.npy", "--strict", "--out", d + "/dsy"],
                expect=1)
        check(f"x.ids.txt:{len(matched) + 1}:" in p.stderr, "--strict refuses it at file:line: " +
              p.stderr.strip()[-160:])
    print("FAILED: %d check(s)" % len(FAILS) if FAILS else "all checks passed")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
