#!/usr/bin/env bash
# bench/join_rss.sh - the coordinator's resident memory per admitted site before any round: a
# coordinator waiting for one more site than will come (so no round starts) is joined by N real
# agents over CURVE; its VmRSS is read once `moeh status` shows N admitted. The slope between
# two N is what one connected, admitted, heartbeating site costs the coordinator at rest
# (libzmq's per-connection pipes and engine, CURVE, the site table entry), to set against the
# growth per site over whole rounds in bench/scale.sh (issue 14: "coordinator RSS flat").
#
# Usage: bench/join_rss.sh [BUILD_DIR] [N...]   (defaults: build 0 10 50 100)
set -euo pipefail
build=${1:-build}
shift || true
counts=${*:-0 10 50 100}
bin=$(cd "$build/bin" && pwd)
work=$(mktemp -d /tmp/moeh_bench_join_rss.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    wait 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
echo "# bench/join_rss.sh $(date -u +%Y-%m-%dT%H:%MZ); $(grep -m1 'model name' /proc/cpuinfo |
    cut -d: -f2 | sed 's/^ //'); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin/moeh" synth --admissions 300 --seed 1 --out "$work/raw" > /dev/null 2>&1
"$bin/moeh" extract --mimic "$work/raw/mimic" --note "$work/raw/note" --cxr "$work/raw/cxr" \
    --out "$work/cohort" > /dev/null 2>&1
max=0
for n in $counts; do [ "$n" -gt "$max" ] && max=$n; done
(cd "$work" && "$bin/moeh-keygen" coordinator > /dev/null)
{
    echo "[sites]"
    for i in $(seq 1 $((max + 1))); do
        (cd "$work" && "$bin/moeh-keygen" --site "s$i" "s$i" > /dev/null)
        echo "s$i = $(sed -n 's/^public-key = //p' "$work/s$i.pub")"
    done
} > "$work/registry.ini"
port=$((20000 + RANDOM % 20000))
printf "%6s %12s %16s\n" sites coord_rss_kB kB_per_site
base=""
for n in $counts; do
    pids=()
    rm -rf "$work/run" "$work/agents"
    # every registered site must join before the run starts: max + 1 never do
    "$bin/moeh-coordinator" --bind "tcp://127.0.0.1:$port" --key "$work/coordinator.key" \
        --registry "$work/registry.ini" --out "$work/run" --rounds 1 --log-level warn \
        2> "$work/coordinator.log" &
    cpid=$!
    pids+=("$cpid")
    for i in $(seq 1 "$n"); do
        mkdir -p "$work/agents/s$i"
        "$bin/moeh-site-agent" --connect "tcp://127.0.0.1:$port" --site-id "s$i" \
            --dataset "$work/cohort" --out "$work/agents/s$i" --key "$work/s$i.key" \
            --server-key "$work/coordinator.pub" --log-level warn 2> "$work/agents/s$i.log" &
        pids+=("$!")
    done
    admitted=-1
    for _ in $(seq 1 600); do
        admitted=$("$bin/moeh" status "$work/run" --json 2> /dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(s.get("sites_admitted", s.get("admitted", -1)))' 2> /dev/null || echo -1)
        [ "$admitted" -ge "$n" ] && break
        sleep 0.5
    done
    if [ "$admitted" -lt "$n" ]; then
        echo "bench/join_rss.sh: only $admitted of $n sites admitted within 300 s" >&2
        tail -n 5 "$work/coordinator.log" >&2
        exit 1
    fi
    sleep 3 # a few heartbeats: the connections' buffers in use
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$cpid/status")
    [ -z "$base" ] && base_n=$n && base=$rss
    per="-"
    [ "$n" -gt "$base_n" ] && per=$(( (rss - base) / (n - base_n) ))
    printf "%6d %12d %16s\n" "$n" "$rss" "$per"
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    wait 2> /dev/null || true
    port=$((port + 1))
done
echo "# coord_rss_kB: the coordinator's VmRSS with that many sites admitted and heartbeating, no"
echo "# round started; kB_per_site: (RSS - RSS at the first count) / (sites - first count)"
