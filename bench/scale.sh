#!/usr/bin/env bash
# bench/scale.sh - many sites: round time with and without secure aggregation, the
# coordinator's and the agents' peak memory, and the bytes each site moves per round, at 10, 20,
# 40 and 100 sites, in one run (issue 14; results in docs/performance.md, "Many sites").
#
# Usage: bench/scale.sh [BUILD_DIR] [ADMISSIONS] [ROUNDS]   (defaults: build 8000 6)
# Env:   SITES_LIST  site counts (default "10 20 40 100")
#        MODEL_ARGS  model options of both runs (default "--d-emb 16": the narrower model that
#                    keeps 100 agents within a 24 GiB machine)
#        SECAGG_K    --secagg-k of the secure runs (default auto: from the number of sites)
#        REPEAT      plain/secure pairs per site count, run alternately (default 1): plain_s and
#                    secure_s are then the medians over the pairs and ratio the median of the
#                    pairs' ratios, ratio_range their spread (on a shared or noisy machine one
#                    pair can be 15 % off); the other columns are from the last pair
#
# Every run is `moeh run` (real processes on loopback). The bench re-executes itself in a
# network namespace of its own (root; `unshare -n`), so the loopback byte counters count this
# federation only: bytes per site per round = (lo bytes of the run) / sites / rounds, both
# directions, CURVE and TCP framing included, the statistics phase and the handshakes spread
# over the rounds. Peak RSS through GNU time wrappers around the coordinator and every agent.
# Round time: median train+eval seconds of rounds 2.. from metrics.jsonl (each round's on stderr). CPU seconds per
# round through the same wrappers: unlike the round time they do not depend on the 100 agents
# sharing this machine's cores. Per-site CPU per round (site_ms): each agent's own cpu_seconds
# in local_metrics.jsonl, rounds 2..R-1, without start-up.
set -euo pipefail
# shellcheck source=bench/bench_lib.sh
. "$(dirname "$0")/bench_lib.sh"
[ -x /usr/bin/time ] || { echo "bench/scale.sh: needs GNU time: apt-get install time" >&2; exit 1; }
if [ -z "${MOEH_SCALE_NETNS:-}" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench/scale.sh: needs root for a network namespace of its own (clean byte counts)" >&2
        exit 1
    fi
    exec unshare -n env MOEH_SCALE_NETNS=1 bash -c 'ip link set lo up && exec bash "$0" "$@"' \
        "$0" "$@"
fi
build=${1:-build}; adm=${2:-8000}; rounds=${3:-6}
bin=$(cd "$build/bin" && pwd)
work=$(mktemp -d /tmp/moeh_bench_scale.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "# bench/scale.sh $(date -u +%Y-%m-%dT%H:%MZ); $(grep -m1 'model name' /proc/cpuinfo |
    cut -d: -f2 | sed 's/^ //'); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $adm admissions, $rounds rounds, model ${MODEL_ARGS---d-emb 16}, secure --secagg-k ${SECAGG_K:-auto}"
bench_cohort "$bin" "$work" "$adm"
# on loopback every byte is counted once sent and once received: the sent (tx) column
lo_bytes() { awk '$1 == "lo:" { printf "%.0f\n", $10 }' /proc/self/net/dev; }
printf "%5s %6s %9s %9s %6s %11s %9s %9s %9s %9s %10s %10s %8s %8s %8s %8s %6s %7s %8s %6s\n" sites k plain_s \
    secure_s ratio ratio_range coord_MB coord_sMB agent_MB agent_sMB KiB_site_rd sKiB_site_rd agent_cpu \
    agent_scpu coord_cpu coord_scpu cpu_ratio site_ms site_sms site_ratio
for n in ${SITES_LIST:-10 20 40 100}; do
    bench_sites "$bin" "$work" "$n"
    pairs=""
    for _ in $(seq 1 "${REPEAT:-1}"); do
    for mode in plain secure; do
        flag=--secagg=false
        [ "$mode" = secure ] && flag="--secagg --secagg-k ${SECAGG_K:-auto}"
        wrap="$work/bin-$mode-$n"
        rm -rf "$work/run-$mode-$n" "$work/rss-$mode-$n" # (the pair before)
        mkdir -p "$wrap" "$work/rss-$mode-$n"
        printf '#!/bin/sh\nexec /usr/bin/time -f "%%M %%U %%S" -o %s/coordinator "%s" "$@"\n' \
            "$work/rss-$mode-$n" "$bin/moeh-coordinator" > "$wrap/moeh-coordinator"
        printf '#!/bin/sh\nexec /usr/bin/time -f "%%M %%U %%S" -o %s/agent.$$ "%s" "$@"\n' \
            "$work/rss-$mode-$n" "$bin/moeh-site-agent" > "$wrap/moeh-site-agent"
        chmod +x "$wrap/moeh-coordinator" "$wrap/moeh-site-agent"
        b0=$(lo_bytes)
        # shellcheck disable=SC2086 # MODEL_ARGS and flag are lists of options
        if ! "$bin/moeh" run --data "$work/sites" --sites "$spec" --rounds "$rounds" \
            --min-sites "$n" $flag ${MODEL_ARGS---d-emb 16} --bin-dir "$wrap" \
            --out "$work/run-$mode-$n" > "$work/log-$mode-$n" 2>&1; then
            echo "bench/scale.sh: the $mode run at $n sites failed; its output:" >&2
            tail -n 20 "$work/log-$mode-$n" >&2
            exit 1
        fi
        b1=$(lo_bytes)
        eval "t_$mode=\$(bench_median_round $work/run-$mode-$n 2 '# $mode $n sites, rounds 2..:')"
        eval "c_$mode=\$(tail -n1 $work/rss-$mode-$n/coordinator | awk '{print int(\$1/1024)}')"
        eval "a_$mode=\$(tail -qn1 $work/rss-$mode-$n/agent.* | sort -n | tail -n1 | awk '{print int(\$1/1024)}')"
        # CPU seconds (user + system) per round: the coordinator's, and the mean agent's
        eval "cc_$mode=\$(tail -n1 $work/rss-$mode-$n/coordinator | awk -v r=$rounds '{printf \"%.3f\", (\$2+\$3)/r}')"
        eval "ac_$mode=\$(tail -qn1 $work/rss-$mode-$n/agent.* | awk -v r=$rounds '{s+=\$2+\$3; n++} END {printf \"%.3f\", s/n/r}')"
        eval "b_$mode=\$(( (b1 - b0) / n / rounds / 1024 ))"
        eval "sc_$mode=\$(bench_site_cpu_ms $work/run-$mode-$n)"
    done
    pairs="$pairs $t_plain:$t_secure"
    done
    # the medians over the pairs: plain, secure, ratio, and the ratios' range
    read -r t_plain t_secure ratio range < <(python3 -c '
import statistics, sys
p = [tuple(map(float, x.split(":"))) for x in sys.argv[1:]]
r = [s / q for q, s in p]
print(f"{statistics.median(q for q, _ in p):.2f} {statistics.median(s for _, s in p):.2f}",
      f"{statistics.median(r):.2f} {min(r):.2f}-{max(r):.2f}")' $pairs)
    k=$(grep -ho "SecAgg+ with k = [0-9]*" "$work/run-secure-$n/logs/"coordinator* | head -n1 |
        awk "{print \$NF}" || true)
    printf "%5d %6s %9s %9s %6s %11s %9s %9s %9s %9s %10s %10s %8s %8s %8s %8s %6s %7s %8s %6s\n" \
        "$n" "${k:-all}" \
        "$t_plain" "$t_secure" "$ratio" "$range" "$c_plain" \
        "$c_secure" "$a_plain" "$a_secure" "$b_plain" "$b_secure" "$ac_plain" "$ac_secure" \
        "$cc_plain" "$cc_secure" \
        "$(python3 -c "print(f'{($ac_secure+$cc_secure)/($ac_plain+$cc_plain):.2f}')")" \
        "$sc_plain" "$sc_secure" "$(python3 -c "print(f'{$sc_secure/$sc_plain:.2f}')")"
done
echo "# ratio: secure_s / plain_s (with REPEAT > 1 the median of the pairs' ratios, ratio_range their"
echo "# min-max); k: SecAgg+ neighbours of the secure run (all: every pair masks); *_MB: peak RSS (agent:"
echo "# the largest of the agents); KiB_site_rd: loopback bytes / sites / rounds (s: secure);"
echo "# agent_cpu / coord_cpu: CPU seconds (user + system) per round of the mean agent and of the"
echo "# coordinator, start-up and statistics phase included (s: secure); cpu_ratio: (agent + coordinator"
echo "# CPU per round) secure over plain: the round's compute when every site has its own host"
echo "# (network latency and the extra message exchanges of secure aggregation not included)"
echo "# site_ms / site_sms: CPU milliseconds one site spends per round (plain / secure; the sites'"
echo "# mean, median of rounds 2..R-1, from each agent's local_metrics.jsonl cpu_seconds: training,"
echo "# evaluation, masks, key agreement and CURVE, no start-up); site_ratio: secure over plain, what"
echo "# secure aggregation costs a site on its own host"
