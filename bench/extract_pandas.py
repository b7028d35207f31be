#!/usr/bin/env python3
"""extract_pandas.py - the reference for bench/extract: the same cohort and hourly binning
as `moeh extract` (chartevents + labevents, no notes or images), written the way one
would with pandas (Debian's python3-pandas): chunked read_csv, merge with the cohort,
vectorised hour binning, groupby sum/count.

usage: extract_pandas.py MIMIC_DIR VARIABLES_CSV [CHUNK_ROWS]
Prints one JSON line: rows, cells observed, sum of the hourly means (to compare with C)."""
import json
import os
import sys
import time

import numpy as np
import pandas as pd


def main():
    mimic, varfile = sys.argv[1], sys.argv[2]
    chunk = int(sys.argv[3]) if len(sys.argv) > 3 else 2_000_000
    t_start = time.time()
    vm = pd.read_csv(varfile, comment="#")
    names = list(dict.fromkeys(vm["name"]))
    vm["var"] = vm["name"].map({n: i for i, n in enumerate(names)})

    pats = pd.read_csv(os.path.join(mimic, "hosp", "patients.csv.gz"),
                       usecols=["subject_id", "anchor_age", "anchor_year"])
    adm = pd.read_csv(os.path.join(mimic, "hosp", "admissions.csv.gz"),
                      usecols=["subject_id", "hadm_id", "admittime", "dischtime", "deathtime"],
                      parse_dates=["admittime", "dischtime", "deathtime"])
    icu = pd.read_csv(os.path.join(mimic, "icu", "icustays.csv.gz"),
                      usecols=["hadm_id", "intime"], parse_dates=["intime"])
    t0 = icu.groupby("hadm_id")["intime"].min().rename("t0").reset_index()
    c = adm.merge(t0, on="hadm_id").merge(pats, on="subject_id")
    c = c[c["anchor_age"] + c["admittime"].dt.year - c["anchor_year"] >= 18]
    end = c["t0"] + pd.Timedelta(hours=48)
    c = c[(c["dischtime"] >= end) & (c["deathtime"].isna() | (c["deathtime"] >= end))]
    c = c.sort_values(["subject_id", "hadm_id"]).reset_index(drop=True)
    c["row"] = np.arange(len(c))
    cohort = c[["subject_id", "hadm_id", "t0", "row"]]

    acc = None
    rows = 0
    for table, sub in (("chartevents", "icu"), ("labevents", "hosp")):
        items = vm[vm["table"] == table][["itemid", "var", "mul", "add", "lo", "hi"]]
        path = os.path.join(mimic, sub, table + ".csv.gz")
        for df in pd.read_csv(path, usecols=["subject_id", "hadm_id", "itemid", "charttime",
                                             "valuenum"],
                              dtype={"subject_id": "int64", "hadm_id": "float64",
                                     "itemid": "int64", "valuenum": "float64"},
                              chunksize=chunk):
            rows += len(df)
            df = df.merge(items, on="itemid")
            df = df[df["valuenum"].notna()]
            with_h = df[df["hadm_id"].notna()].merge(cohort.drop(columns="subject_id"),
                                                     on="hadm_id")
            no_h = df[df["hadm_id"].isna()].drop(columns="hadm_id").merge(cohort,
                                                                           on="subject_id")
            df = pd.concat([with_h, no_h], ignore_index=True)
            if df.empty:
                continue
            t = pd.to_datetime(df["charttime"], format="%Y-%m-%d %H:%M:%S")
            sec = (t - df["t0"]).dt.total_seconds()
            df = df.assign(hour=np.floor(sec / 3600),
                           v=df["valuenum"] * df["mul"] + df["add"])
            df = df[(sec >= 0) & (sec < 48 * 3600) & (df["v"] >= df["lo"]) &
                    (df["v"] <= df["hi"])]
            g = df.groupby(["row", "hour", "var"])["v"].agg(["sum", "count"])
            acc = g if acc is None else acc.add(g, fill_value=0)
    means = acc["sum"] / acc["count"]
    out = {"rows": rows, "cohort": int(len(cohort)), "cells": int(len(means)),
           "sum_of_means": float(means.sum()), "seconds": time.time() - t_start}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
