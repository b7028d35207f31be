# bench/bench_lib.sh - sourced by the benchmarks that run whole federations (secagg_round.sh,
# scale.sh): the cohort they share and its split into equal sites.
# Run under `set -euo pipefail` (a failing step stops the benchmark).

# bench_cohort BIN WORK ADMISSIONS: a synthetic MIMIC-IV (seed 1) in WORK/raw, extracted into
# WORK/cohort.
bench_cohort() {
    "$1/moeh" synth --admissions "$3" --seed 1 --out "$2/raw" > /dev/null
    "$1/moeh" extract --mimic "$2/raw/mimic" --note "$2/raw/note" --cxr "$2/raw/cxr" \
        --out "$2/cohort" > /dev/null 2>&1
}

# bench_sites BIN WORK N: WORK/cohort split anew into WORK/sites, N equal sites s1..sN with
# every modality; sets spec to their --sites.
bench_sites() {
    local k
    spec=""
    for k in $(seq 1 "$3"); do spec="${spec:+$spec,}s$k:1:ehr+notes+img"; done
    rm -rf "$2/sites"
    "$1/moeh" split --dataset "$2/cohort" --sites "$spec" --out "$2/sites" > /dev/null
}

# bench_site_cpu_ms RUN [DECIMALS]: the median over rounds 2..R-1 of the sites' mean CPU of the
# round in milliseconds (each agent's local_metrics.jsonl cpu_seconds: the process's CPU from one
# round's RoundStart to the next's, every thread; the first round has the start-up, the last the
# final model), with DECIMALS decimals (default 0).
bench_site_cpu_ms() {
    python3 -c '
import glob, json, statistics, sys
per = {}
for f in glob.glob(sys.argv[1] + "/site-out/*/local_metrics.jsonl"):
    for line in open(f):
        j = json.loads(line)
        if j.get("cpu_seconds") is not None:
            per.setdefault(j["round"], []).append(j["cpu_seconds"])
rs = sorted(per)[1:-1] or sorted(per)
print(f"{1000 * statistics.median(statistics.mean(per[r]) for r in rs):.{int(sys.argv[2])}f}")' \
        "$1" "${2:-0}"
}

# bench_median_round RUN [DECIMALS [LABEL]]: the median "seconds" of RUN/metrics.jsonl's eval lines
# after round 1 (a median: 100 agents on 2 cores make single rounds 30 % slower at random), with
# DECIMALS decimals (default 3); with LABEL, the rounds' times go to stderr after it.
bench_median_round() {
    python3 -c '
import json, statistics, sys
s = [json.loads(l)["seconds"] for l in open(sys.argv[1] + "/metrics.jsonl") if "\"eval\"" in l]
s = s[1:] or s
if sys.argv[3]:
    print(sys.argv[3], " ".join(f"{x:.2f}" for x in s), file=sys.stderr)
print(f"{statistics.median(s):.{int(sys.argv[2])}f}")' "$1" "${2:-3}" "${3:-}"
}
