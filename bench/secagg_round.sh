#!/usr/bin/env bash
# bench/secagg_round.sh - round time and coordinator peak memory of a federated round with
# secure aggregation against the same round without it, at 5, 10 and 20 sites, in one run.
# Usage: bench/secagg_round.sh [BUILD_DIR] [ADMISSIONS] [ROUNDS]   (defaults: build 3000 4)
# Env: SITES_LIST (default "5 10 20"), SECAGG_K (SecAgg+ neighbours of the secure runs; 0 = all
# pairs, the default), UPLOAD_SLOTS (moeh run --upload-slots of both runs; unset: the
# coordinator's default; 0: every site pushes its update at once).
# Prints, per site count, the mean train+eval round time (rounds 2.., from metrics.jsonl)
# with and without --secagg, their ratio, and the coordinator's peak RSS (GNU time).
set -euo pipefail
# shellcheck source=bench/bench_lib.sh
. "$(dirname "$0")/bench_lib.sh"
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 1; }
build=${1:-build}; adm=${2:-3000}; rounds=${3:-4}
bin=$(cd "$build/bin" && pwd)
work=$(mktemp -d /tmp/moeh_bench_secagg.XXXXXX)
trap 'rm -rf "$work"' EXIT
bench_cohort "$bin" "$work" "$adm"
mean_round() { # metrics.jsonl -> mean "seconds" of the eval lines after round 1
    python3 -c '
import json, sys
s = [json.loads(l)["seconds"] for l in open(sys.argv[1]) if "\"eval\"" in l]
s = s[1:] or s
print(f"{sum(s) / len(s):.3f}")' "$1"
}
printf "%6s %12s %12s %7s %14s %14s\n" sites plain_s secagg_s ratio plain_rss_MB secagg_rss_MB
for n in ${SITES_LIST:-5 10 20}; do
    bench_sites "$bin" "$work" "$n"
    for mode in plain secagg; do
        flag=--secagg=false
        [ "$mode" = secagg ] && flag="--secagg --secagg-k ${SECAGG_K:-0}"
        [ -n "${UPLOAD_SLOTS:-}" ] && flag="$flag --upload-slots $UPLOAD_SLOTS"
        # peak RSS of the coordinator: moeh waits for it, so measure the coordinator alone
        # through a wrapper binary dir whose moeh-coordinator runs under GNU time
        wrap="$work/bin-$mode"; mkdir -p "$wrap"
        ln -sf "$bin/moeh-site-agent" "$wrap/moeh-site-agent"
        printf '#!/bin/sh\nexec /usr/bin/time -f "%%M" -o %s "%s" "$@"\n' \
            "$work/rss-$mode-$n" "$bin/moeh-coordinator" > "$wrap/moeh-coordinator"
        chmod +x "$wrap/moeh-coordinator"
        "$bin/moeh" run --data "$work/sites" --sites "$spec" --rounds "$rounds" \
            --min-sites "$n" $flag --bin-dir "$wrap" --out "$work/run-$mode-$n" > /dev/null 2>&1
        eval "t_$mode=\$(mean_round $work/run-$mode-$n/metrics.jsonl)"
        eval "m_$mode=\$(( \$(tail -n1 $work/rss-$mode-$n) / 1024 ))"
    done
    printf "%6d %12s %12s %7s %14s %14s\n" "$n" "$t_plain" "$t_secagg" \
        "$(python3 -c "print(f'{$t_secagg/$t_plain:.2f}')")" "$m_plain" "$m_secagg"
done
