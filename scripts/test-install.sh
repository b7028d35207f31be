#!/usr/bin/env bash
# Runs docs/deployment.md: builds the .deb, installs it with apt-get (as root or with sudo), and
# runs the doc's command blocks marked "<!-- ci: NAME -->", extracted from the doc and run as
# written, with the installed binaries from PATH on 127.0.0.1: keys, registry, datasets, the
# configuration files, the coordinator and three site agents through two rounds, status, a
# refused second start, a backup. Only the steps a person does by hand are the script's own:
# the edits of the configuration files (sed), MIMIC-IV (a small synthetic one, split into three
# hospitals) and systemd (the units are checked with `systemd-analyze verify`). Purges the
# package again at the end, whatever happened. CI runs this (.ci/run).
#
# --check-doc only checks, without root, that the doc and this script agree: every block this
# script runs is in the doc and every marked block is run, and the blocks use no variable
# beyond the doc's "settings" block, whose names are the ones this script sets; also that the
# units treat exit 130 as success and that the packages of the tools this script runs are in
# scripts/debian-packages.txt (ctest test_deployment_doc).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
doc="$root/docs/deployment.md"
fail() { echo "test-install: FAIL: $*" >&2; exit 1; }

# the blocks run below, in order, and the variables the doc's blocks may use
blocks="install coordinator-keys site-keys registry dataset coordinator-config site-config
start-coordinator start-agent status backup"
variables="ETC SITE MIMIC DATA RUN SITE_OUT"

# block NAME: the ```sh block right after "<!-- ci: NAME -->" in the doc
block() {
    local text
    text=$(awk -v name="$1" '
        $0 == "<!-- ci: " name " -->" { want = 1; next }
        want == 1 && /^```sh$/ { want = 2; next }
        want == 1 && NF { exit }
        want == 2 && /^```$/ { exit }
        want == 2 { print }' "$doc")
    [ -n "$text" ] || fail "docs/deployment.md has no \`\`\`sh block marked <!-- ci: $1 -->"
    printf '%s\n' "$text"
}

check_doc() {
    local marked name need
    # the tools this script needs beyond the build's come from packages that install-deps.sh
    # (through package.sh and build.sh) installs: they are in scripts/debian-packages.txt
    for need in systemd-analyze:systemd man:man-db; do
        grep -q "^${need#*:}\([[:space:]#]\|$\)" "$root/scripts/debian-packages.txt" ||
            fail "this script runs ${need%%:*}, but its package ${need#*:} is not in" \
                "scripts/debian-packages.txt"
    done
    # the daemons exit 130 on SIGTERM (paused, stopped): systemctl stop must not fail the units
    for name in "$root"/packaging/systemd/*.service; do
        grep -q '^SuccessExitStatus=130$' "$name" ||
            fail "$(basename "$name") lacks SuccessExitStatus=130 (the daemons exit 130 on SIGTERM)"
    done
    marked=$(sed -n 's/^<!-- ci: \([a-z-]*\) -->$/\1/p' "$doc" | sort)
    [ "$marked" = "$(printf '%s\n' settings $blocks | sort)" ] ||
        fail "the blocks marked in docs/deployment.md ($(echo $marked)) are not the ones" \
            "this script runs (settings $(echo $blocks))"
    [ "$(block settings | sed -n 's/^\([A-Z_]*\)=.*/\1/p' | sort | tr '\n' ' ')" = \
        "$(printf '%s\n' $variables | sort | tr '\n' ' ')" ] ||
        fail "the doc's settings block does not set exactly: $variables"
    for name in $blocks; do
        [ -n "$(block "$name")" ] || fail "docs/deployment.md: no block $name"
        for v in $(block "$name" | grep -o '\$[{(]\{0,1\}[A-Z_][A-Z_]*' | tr -d '${(' | sort -u); do
            case " $variables " in
            *" $v "*) ;;
            *) fail "block $name uses \$$v, which the settings block does not set" ;;
            esac
        done
    done
}

check_doc
if [ "${1:-}" = "--check-doc" ]; then
    echo "test-install: docs/deployment.md and this script agree ($(echo $blocks | wc -w) blocks)"
    exit 0
fi

# run NAME: runs the doc's block NAME with bash -e in the current directory
run() { bash -euo pipefail -c "$(block "$1")"; }

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
pkg=$(bash "$root/scripts/package.sh")
work=$(mktemp -d)
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq moeh >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== 1. install $pkg"
mkdir "$work/deb"
cp "$pkg" "$work/deb/"
(cd "$work/deb" && $sudo env DEBIAN_FRONTEND=noninteractive bash -euo pipefail \
    -c "$(block install)" >/dev/null)
for bin in moeh-coordinator moeh-site-agent moeh-keygen moeh; do
    [ "$(command -v $bin)" = "/usr/bin/$bin" ] || fail "$bin is not on PATH from the package"
    man -w "$bin" >/dev/null 2>&1 || fail "no man page for $bin"
    "$bin" --version >/dev/null || fail "$bin --version"
done
getent passwd moeh >/dev/null || fail "the package did not create the moeh user"
[ -d /etc/moeh ] || fail "the package did not create /etc/moeh"
for f in coordinator.ini site-agent.ini registry.ini; do
    [ -f "/usr/share/moeh/examples/$f" ] || fail "example config $f missing"
done

echo "== 7. the units: systemd-analyze verify"
units="$work/units"
mkdir -p "$units"
cp /lib/systemd/system/moeh-coordinator.service "$units/"
cp /lib/systemd/system/moeh-site-agent@.service "$units/moeh-site-agent@st-marys.service"
grep -q '^ExecReload=/bin/kill -HUP \$MAINPID$' "$units/moeh-coordinator.service" ||
    fail "the coordinator's unit does not reload (SIGHUP) the registry"
# verify checks syntax, directives and that every ExecStart binary exists (the credentials and
# configs are read at start)
out=$(systemd-analyze verify "$units/moeh-coordinator.service" \
    "$units/moeh-site-agent@st-marys.service" 2>&1) || { echo "$out"; fail "systemd-analyze verify"; }
if echo "$out" | grep -v 'Failed to add dependency' | grep -qi 'unknown\|invalid\|fail'; then
    echo "$out"
    fail "systemd-analyze verify reported problems"
fi

# the doc's names, in a scratch directory
export ETC="$work/etc" MIMIC="$work/physionet" DATA="$work/data" RUN="$work/trial/run"
export SITE_OUT="$work/trial/site"
sites="st-marys st-judes st-olafs"
mkdir -p "$ETC" "$MIMIC" "$work/trial"
cd "$work"

echo "== 2. keys, 3. registry"
run coordinator-keys >/dev/null
for s in $sites; do
    line=$(SITE=$s run site-keys)
    grep -q "^$s = " <<<"$line" || fail "moeh-keygen printed no registry line for $s: $line"
done
run registry
[ "$(grep -c '^[a-z-]* = ' "$ETC/registry.ini")" -eq 3 ] || fail "registry.ini: $(cat "$ETC/registry.ini")"

echo "== 4. datasets (from a synthetic MIMIC-IV, split into the three hospitals)"
moeh synth --out synth --admissions 600 --image-px 64 >/dev/null
ln -s "$work/synth/mimic" "$MIMIC/mimic-iv"
ln -s "$work/synth/note" "$MIMIC/mimic-iv-note"
ln -s "$work/synth/cxr" "$MIMIC/mimic-cxr-jpg"
DATA="$work/pooled" SITE=all run dataset >/dev/null 2>extract.log || { cat extract.log; fail "extract"; }
moeh split --dataset "$work/pooled/all" --out "$DATA" \
    --sites st-marys:1:ehr+notes+img,st-judes:1:ehr+notes,st-olafs:1:ehr+img >/dev/null

echo "== 5. configuration files (the hand edits: sed)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run coordinator-config
sed -i -e "s|^bind = .*|bind = tcp://127.0.0.1:$port|" -e "s|^rounds = .*|rounds = 2|" \
    -e "s|^registry = .*|registry = $ETC/registry.ini|" "$ETC/coordinator.ini"
for s in $sites; do
    SITE=$s run site-config
    sed -i -e "s|^connect = .*|connect = tcp://127.0.0.1:$port|" \
        -e "s|^dataset = .*|dataset = $DATA/$s|" \
        -e "s|^server-key = .*|server-key = $ETC/coordinator.pub|" "$ETC/site-$s.ini"
done

echo "== 6. a first run by hand: the coordinator and three agents, two rounds"
timeout 600 bash -euo pipefail -c "$(block start-coordinator)" >coord.out 2>coord.log &
coord_pid=$!
pids="$coord_pid"
agent_pids=""
for s in $sites; do
    SITE=$s timeout 600 bash -euo pipefail -c "$(block start-agent)" 2>"agent-$s.log" &
    agent_pids="$agent_pids $!"
done
pids="$pids $agent_pids"
for p in $agent_pids; do
    wait "$p" || { tail -20 agent-*.log coord.log; fail "a site agent did not exit 0"; }
done
wait "$coord_pid" || { tail -20 coord.log; fail "the coordinator did not exit 0"; }
pids=""
# every site holds the run's model, byte for byte the coordinator's, and its own metrics
for s in $sites; do
    cmp "$SITE_OUT-$s/model.safetensors" "$RUN/model.safetensors" || fail "site $s's final model"
    [ "$(wc -l <"$SITE_OUT-$s/local_metrics.jsonl")" -eq 2 ] || fail "site $s's local_metrics.jsonl"
done
python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["secagg"] is True else 1)' \
    "$RUN/config.json" || fail "the default run was not securely aggregated"
rounds=$(python3 -c 'import json, sys
print(len({r["round"] for r in map(json.loads, open(sys.argv[1])) if r.get("event") == "eval"}))' \
    "$RUN/metrics.jsonl")
[ "$rounds" -eq 2 ] || fail "expected an evaluation of rounds 1 and 2 in metrics.jsonl, found $rounds"
[ -s "$RUN/model.npy" ] || fail "no model.npy"
run status >status.out || { cat status.out; fail "moeh status"; }
grep -q "finished" status.out || { cat status.out; fail "moeh status does not say finished"; }

# started again on the finished run's directory, the coordinator refuses (exit 2), loses nothing
lines=$(wc -l <"$RUN/metrics.jsonl")
st=0
run start-coordinator >/dev/null 2>again.log || st=$?
[ "$st" -eq 2 ] && grep -q -- "--new-run" again.log || { cat again.log; fail "second start: exit $st"; }
[ "$(wc -l <"$RUN/metrics.jsonl")" -eq "$lines" ] || fail "metrics.jsonl changed"

echo "== 11. backup"
run backup
backup=$(ls "$RUN"-*.tar.gz)
listing=$(tar -tzf "$backup")
for f in checkpoint.moeh metrics.jsonl config.json model.safetensors; do
    grep -qx "run/$f" <<<"$listing" || fail "the backup $backup has no run/$f: $listing"
done
echo "test-install: 1 passed, 0 failed"
