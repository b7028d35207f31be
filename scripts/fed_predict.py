#!/usr/bin/env python3
"""fed_predict.py - per-admission scores of every federated model of a results.sh run
(issue 15), for the paired bootstrap, the validation threshold of F1 and the robustness curves.

usage: fed_predict.py --moeh BUILD/bin/moeh SEED_DIR [SEED_DIR...] [--jobs 2]
                      [--robust fed-moe,fed-early,fed-joint,fed-late] [--drop-seed N]

A SEED_DIR is one seed's results.sh work directory: its site datasets in SEED_DIR/sites/<site>
(a directory with meta.json) and one directory per model with model.safetensors (the model
file the federation wrote). For every such model it runs `moeh predict --with-labels` on each
site's dataset and writes SEED_DIR/preds/<model>/all.csv: moeh predict's columns with a first
column `site`, every split (the validation rows choose the F1 threshold, the test rows are the
pooled test set). For the models of --robust it also scores the test rows with notes, X-ray or
both removed from p% of them (moeh predict --drop MODS:p, p of --pcts, default 25, 50, 75,
100; the rows drawn
from --drop-seed, default the seed of the directory name seed-N, else 1, the same rows for every
model) into SEED_DIR/preds/<model>/<notes|img|notes+img>-<p>.csv. Existing outputs are kept
(the script resumes); each file is written to a temporary name and renamed when complete.
Standard library only. Exit status: 0 ok, 1 a moeh predict failed, 2 usage error."""
import argparse
import concurrent.futures
import csv
import os
import re
import subprocess
import sys

DROP_MODS = ["notes", "img", "notes+img"]


def sites_of(seed_dir):
    d = os.path.join(seed_dir, "sites")
    if not os.path.isdir(d):
        raise ValueError(f"{d}: no site datasets (run scripts/results.sh first)")
    names = sorted(n for n in os.listdir(d) if os.path.exists(os.path.join(d, n, "meta.json")))
    if not names:
        raise ValueError(f"{d}: no dataset directory (with meta.json)")
    return names


def models_of(seed_dir):
    return sorted(n for n in os.listdir(seed_dir)
                  if os.path.exists(os.path.join(seed_dir, n, "model.safetensors"))
                  and os.path.exists(os.path.join(seed_dir, n, "done")))


def predict_one(moeh, model, sites_dir, sites, out, extra):
    """Runs moeh predict on every site and concatenates the CSVs with a site column."""
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    parts = []
    for s in sites:
        part = f"{out}.{s}.part"
        cmd = [moeh, "predict", "--model", model, "--dataset", os.path.join(sites_dir, s),
               "--out", part, "--with-labels", "--batch-size", "8", "--no-verify"] + extra
        r = subprocess.run(cmd, capture_output=True, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"))
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
        parts.append((s, part))
    tmp = out + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        header = None
        for s, part in parts:
            with open(part, newline="") as p:
                rd = csv.reader(p)
                h = next(rd)
                if header is None:
                    header = h
                    w.writerow(["site"] + h)
                elif h != header:
                    raise RuntimeError(f"{part}: header {h} differs from {header}")
                for row in rd:
                    w.writerow([s] + row)
            os.unlink(part)
    os.replace(tmp, out)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("seed_dirs", nargs="+", metavar="SEED_DIR")
    ap.add_argument("--moeh", required=True, help="the moeh binary")
    ap.add_argument("--jobs", type=int, default=2, help="moeh predict processes at a time")
    ap.add_argument("--robust",
                    default="fed-moe,fed-early,fed-joint,fed-late,cen-moe,cen-early,cen-joint,"
                            "cen-late",
                    help="models scored with modalities removed (comma-separated)")
    ap.add_argument("--drop-seed", type=int, help="seed of the removed rows")
    ap.add_argument("--pcts", default="25,50,75,100",
                    help="the percentages of rows with a modality removed (comma-separated)")
    o = ap.parse_args(argv)
    if not os.access(o.moeh, os.X_OK):
        ap.error(f"--moeh {o.moeh}: not an executable")
    robust = [m for m in o.robust.split(",") if m]
    try:
        pcts = [int(p) for p in o.pcts.split(",") if p]
    except ValueError:
        ap.error(f"--pcts {o.pcts}: expected integers 1..100, comma-separated")
    if any(not 0 < p <= 100 for p in pcts):
        ap.error(f"--pcts {o.pcts}: expected integers 1..100")
    jobs = []
    try:
        for sd in o.seed_dirs:
            sites = sites_of(sd)
            m = re.search(r"seed-(\d+)$", os.path.normpath(sd))
            seed = o.drop_seed if o.drop_seed is not None else int(m.group(1)) if m else 1
            for model in models_of(sd):
                mf = os.path.join(sd, model, "model.safetensors")
                base = os.path.join(sd, "preds", model)
                jobs.append((mf, sd, sites, os.path.join(base, "all.csv"), []))
                if model in robust:
                    for mods in DROP_MODS:
                        for p in pcts:
                            jobs.append((mf, sd, sites, os.path.join(base, f"{mods}-{p}.csv"),
                                         ["--split", "test", "--drop", f"{mods}:{p}",
                                          "--drop-seed", str(seed)]))
    except (OSError, ValueError) as e:
        print(f"fed_predict.py: {e}", file=sys.stderr)
        return 2
    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max(1, o.jobs)) as ex:
        futs = [ex.submit(predict_one, o.moeh, mf, os.path.join(sd, "sites"), sites, out, extra)
                for mf, sd, sites, out, extra in jobs]
        for fu in futs:
            try:
                fu.result()
            except (OSError, RuntimeError) as e:
                print(f"fed_predict.py: {e}", file=sys.stderr)
                failed += 1
    print(f"fed_predict.py: {len(jobs) - failed} of {len(jobs)} prediction files present")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
