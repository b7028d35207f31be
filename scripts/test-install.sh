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
line=$(moeh-keygen --site st-marys st-marys | grep '^st-marys = ')
printf '[sites]\n%s\n' "$line" > registry.ini
moeh synth --out synth --admissions 400 --image-px 64 >/dev/null
moeh extract --mimic synth/mimic --note synth/note --cxr synth/cxr \
    --out st-marys-data >/dev/null 2>extract.log || { cat extract.log; fail "extract"; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moeh-coordinator --registry registry.ini --key coordinator.key --bind "tcp://127.0.0.1:$port" \
    --rounds 2 --out run >coord.out 2>coord.log &
coord_pid=$!
moeh-site-agent --connect "tcp://127.0.0.1:$port" --site-id st-marys \
    --dataset st-marys-data --key st-marys.key --server-key coordinator.pub \
    --give-up-ms 60000 2>agent.log || { tail -20 agent.log coord.log; fail "the site agent"; }
wait "$coord_pid" || { tail -20 coord.log; fail "the coordinator"; }
coord_pid=""
rounds=$(python3 -c 'import json, sys
print(len({r["round"] for r in map(json.loads, open(sys.argv[1])) if r.get("event") == "eval"}))' \
    run/metrics.jsonl)
[ "$rounds" -eq 2 ] || fail "expected an evaluation of rounds 1 and 2 in metrics.jsonl, found $rounds"
[ -s run/model.npy ] || fail "no model.npy"
echo "test-install: 1 passed, 0 failed"
