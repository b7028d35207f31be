#!/bin/bash
# bench/secure_ab.sh - two builds' secure rounds against each other, and against plain rounds, in
# the same period: the way to see a change of a few percent on a machine whose single runs vary
# by 10-15 %.
#
# Usage: bash bench/secure_ab.sh OLD_BIN NEW_BIN [SITES] [REPEAT] [ROUNDS] [ADMISSIONS]
#   OLD_BIN, NEW_BIN  bin/ directories of two builds (each runs its own coordinator and agents:
#                     they may speak different protocol versions)
#   SITES             sites (default 100), equal, every modality, on one synthetic cohort
#   REPEAT            triples (default 6): secure with NEW_BIN, secure with OLD_BIN, plain with
#                     NEW_BIN, run one after the other, REPEAT times
#   ROUNDS            rounds per run (default 10); ADMISSIONS the cohort's (default 8000)
#   SECAGG_K          --secagg-k of the secure runs (default auto); MODEL_ARGS (default
#                     --d-emb 16) as in bench/scale.sh
# Prints each run (median round time after round 1, from metrics.jsonl; each site's CPU per
# round, the sites' mean, median of rounds 2..R-1, from local_metrics.jsonl) and, at the end,
# the medians of the per-triple ratios new/plain, old/plain and new/old with their ranges.
set -euo pipefail
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
    usage
    exit 0
fi
if [ $# -lt 2 ]; then
    usage >&2
    exit 2
fi
old=$(cd "$1" && pwd)
new=$(cd "$2" && pwd)
sites=${3:-100}
repeat=${4:-6}
rounds=${5:-10}
adm=${6:-8000}
for b in "$old" "$new"; do
    if [ ! -x "$b/moeh" ] || [ ! -x "$b/moeh-coordinator" ] || [ ! -x "$b/moeh-site-agent" ]; then
        echo "bench/secure_ab.sh: $b has no moeh, moeh-coordinator and moeh-site-agent" >&2
        exit 2
    fi
done
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/bench_lib.sh
source "$here/bench_lib.sh" # bench_cohort, bench_sites (sets spec), bench_*_round/_ms
spec=""
work=$(mktemp -d /tmp/moeh-secure-ab.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "# bench/secure_ab.sh $(date -u +%Y-%m-%dT%H:%MZ); $(grep -m1 'model name' /proc/cpuinfo |
    cut -d: -f2 | sed 's/^ *//'); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# old $old, new $new; $sites sites, $adm admissions, $rounds rounds, $repeat triples"
bench_cohort "$new" "$work" "$adm"
bench_sites "$new" "$work" "$sites"
stats() { echo "$(bench_median_round "$1") $(bench_site_cpu_ms "$1" 1)"; } # round_s site_ms
triples=""
for rep in $(seq 1 "$repeat"); do
    line=""
    for v in new old plain; do
        bin=$new
        flag="--secagg --secagg-k ${SECAGG_K:-auto}"
        [ $v = old ] && bin=$old
        [ $v = plain ] && flag=--secagg=false
        rm -rf "$work/run"
        # shellcheck disable=SC2086 # MODEL_ARGS and flag are lists of options
        if ! "$bin/moeh" run --data "$work/sites" --sites "$spec" --rounds "$rounds" \
            --min-sites "$sites" $flag ${MODEL_ARGS---d-emb 16} --bin-dir "$bin" \
            --out "$work/run" > "$work/log" 2>&1; then
            echo "bench/secure_ab.sh: the $v run failed; its output:" >&2
            tail -n 20 "$work/log" >&2
            exit 1
        fi
        read -r t c < <(stats "$work/run")
        echo "$(date -u +%H:%M:%S) triple $rep $v: round $t s, site CPU $c ms a round"
        line="$line $t"
    done
    triples="$triples $(echo "$line" | tr -s ' ' ':' | sed 's/^://')"
done
# shellcheck disable=SC2086 # one argument per triple
python3 -c '
import statistics, sys
t = [tuple(map(float, x.split(":"))) for x in sys.argv[1:]]
for name, r in (("new/plain", [n / p for n, o, p in t]), ("old/plain", [o / p for n, o, p in t]),
                ("new/old", [n / o for n, o, p in t])):
    print(f"{name}: median {statistics.median(r):.3f}, range {min(r):.3f}-{max(r):.3f}",
          "(" + " ".join(f"{x:.2f}" for x in r) + ")")' $triples
