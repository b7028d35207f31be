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
