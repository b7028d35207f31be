#!/usr/bin/env bash
# Builds the .deb, installs it with apt-get (as root or with sudo), and runs the README's
# deployment commands with the installed binaries from PATH on 127.0.0.1: keys, registry, a
# hospital's cohort (from a small synthetic MIMIC-IV), the coordinator and one site agent
# through two rounds. Also checks the systemd units with `systemd-analyze verify` and the man
# pages. Purges the package again at the end, whatever happened. CI runs this (.ci/run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
pkg=$(bash "$root/scripts/package.sh")
work=$(mktemp -d)
coord_pid=""
cleanup() {
    [ -n "$coord_pid" ] && kill "$coord_pid" 2>/dev/null || true
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq moeh >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "test-install: FAIL: $*" >&2; exit 1; }

echo "== install $pkg"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
for bin in moeh-coordinator moeh-site-agent moeh-keygen moeh; do
    [ "$(command -v $bin)" = "/usr/bin/$bin" ] || fail "$bin is not on PATH from the package"
    man -w "$bin" >/dev/null 2>&1 || fail "no man page for $bin"
    "$bin" --version >/dev/null || fail "$bin --version"
done
getent passwd moeh >/dev/null || fail "the package did not create the moeh user"
[ -d /etc/moeh ] || fail "the package did not create /etc/moeh"
[ -f /usr/share/moeh/examples/coordinator.ini ] || fail "example configs missing"

echo "== systemd-analyze verify"
units="$work/units"
mkdir -p "$units"
cp /lib/systemd/system/moeh-coordinator.service "$units/"
cp /lib/systemd/system/moeh-site-agent@.service "$units/moeh-site-agent@st-marys.service"
# the units' credentials and configs are read at start, not by verify; verify checks syntax,
# directives and that every ExecStart binary exists
out=$(systemd-analyze verify "$units/moeh-coordinator.service" \
    "$units/moeh-site-agent@st-marys.service" 2>&1) || { echo "$out"; fail "systemd-analyze verify"; }
if echo "$out" | grep -v 'Failed to add dependency' | grep -qi 'unknown\|invalid\|fail'; then
    echo "$out"
    fail "systemd-analyze verify reported problems"
fi

echo "== the README's deployment, with the installed binaries"
cd "$work"
moeh-keygen coordinator >/dev/null
sites="st-marys st-judes st-olafs"
printf '[sites]\n' > registry.ini
for s in $sites; do moeh-keygen --site "$s" "$s" | grep "^$s = " >> registry.ini; done
moeh synth --out synth --admissions 600 --image-px 64 >/dev/null
moeh extract --mimic synth/mimic --note synth/note --cxr synth/cxr \
    --out cohort >/dev/null 2>extract.log || { cat extract.log; fail "extract"; }
moeh split --dataset cohort --out hospitals \
    --sites st-marys:1:ehr+notes+img,st-judes:1:ehr+notes,st-olafs:1:ehr+img >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# the README's defaults: secure aggregation, a quorum of 3, a 6 h join window, --out
timeout 600 moeh-coordinator --registry registry.ini --key coordinator.key \
    --bind "tcp://127.0.0.1:$port" --rounds 2 --out run >coord.out 2>coord.log &
coord_pid=$!
agent_pids=""
for s in $sites; do
    timeout 600 moeh-site-agent --connect "tcp://127.0.0.1:$port" --site-id "$s" \
        --dataset "hospitals/$s" --key "$s.key" --server-key coordinator.pub \
        --out "site-$s" --give-up-ms 60000 2>"agent-$s.log" &
    agent_pids="$agent_pids $!"
done
for p in $agent_pids; do
    wait "$p" || { tail -20 agent-*.log coord.log; fail "a site agent"; }
done
wait "$coord_pid" || { tail -20 coord.log; fail "the coordinator"; }
coord_pid=""
# every site holds the run's model, byte for byte the coordinator's, and its own metrics
for s in $sites; do
    cmp "site-$s/model.safetensors" run/model.safetensors || fail "site $s's final model"
    [ "$(wc -l <"site-$s/local_metrics.jsonl")" -eq 2 ] || fail "site $s's local_metrics.jsonl"
done
python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["secagg"] is True else 1)' \
    run/config.json || fail "the default run was not securely aggregated"
# started again on the finished run's directory, the coordinator refuses (exit 2), nothing lost
set +e
moeh-coordinator --registry registry.ini --key coordinator.key --bind "tcp://127.0.0.1:$port" \
    --rounds 2 --out run >/dev/null 2>again.log
rc=$?
set -e
[ "$rc" -eq 2 ] && grep -q -- "--new-run" again.log || fail "a second run on run/ was not refused"
rounds=$(python3 -c 'import json, sys
print(len({r["round"] for r in map(json.loads, open(sys.argv[1])) if r.get("event") == "eval"}))' \
    run/metrics.jsonl)
[ "$rounds" -eq 2 ] || fail "expected an evaluation of rounds 1 and 2 in metrics.jsonl, found $rounds"
# a second start on the same directory is refused and loses nothing
lines=$(wc -l < run/metrics.jsonl)
st=0
moeh-coordinator --registry registry.ini --key coordinator.key --bind "tcp://127.0.0.1:$port" \
    --rounds 2 --out run 2>again.log || st=$?
[ "$st" -eq 2 ] && grep -q -- "--new-run" again.log || { cat again.log; fail "second start"; }
[ "$(wc -l < run/metrics.jsonl)" -eq "$lines" ] || fail "metrics.jsonl changed"
[ -s run/model.npy ] || fail "no model.npy"
echo "test-install: 1 passed, 0 failed"
