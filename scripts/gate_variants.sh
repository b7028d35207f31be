#!/usr/bin/env bash
# gate_variants.sh - federated MoE-Health on one results.sh seed's site datasets with several
# gate settings, to see what the gate learns and what it costs (docs/results.md, "The gate").
#
# usage: scripts/gate_variants.sh SEED_DIR [VARIANT...]
#   SEED_DIR: a results.sh work directory (SEED_DIR/sites from moeh split), e.g.
#             /tmp/moeh-results/seed-1 after SEEDS="1 2 3" scripts/results.sh
#   VARIANT:  NAME=OPTIONS pairs (default: the set below); OPTIONS are moeh run options
# env: BUILD (default ./build), SITES (the results.sh default), ROUNDS (8), SEED (1)
# Prints one line per variant: the final round's test AUROC per task and mean, the round the
# coordinator selected on the validation split with its mean validation AUROC and mean test
# AUROC (choose among variants by the validation column, not by test), and for each modality
# combination the expert with the largest mean gate weight and that weight.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[[ $# -ge 1 ]] || { sed -n '2,12p' "$0" >&2; exit 2; }
dir=$1
shift
BUILD=${BUILD:-$here/build}
SITES=${SITES:-site-1:0.3:ehr+notes+img,site-2:0.3:ehr+notes,site-3:0.2:ehr+img,site-4:0.2:ehr}
ROUNDS=${ROUNDS:-8}
SEED=${SEED:-1}
SIM=$BUILD/bin/moeh
[[ -x $SIM ]] || { echo "gate_variants.sh: $SIM not found; build first" >&2; exit 2; }
[[ -d $dir/sites ]] || { echo "gate_variants.sh: $dir/sites not found (run results.sh)" >&2; exit 2; }
variants=("$@")
if (( ${#variants[@]} == 0 )); then
    variants=("default=" "warmup-1=--warmup-rounds 1" "warmup-1-no-balance=--warmup-rounds 1 --lambda-lb 0"
              "no-balance=--lambda-lb 0" "balance-0.001=--lambda-lb 0.001" "balance-0.1=--lambda-lb 0.1"
              "sup-joint-0.1=--gate-sup-joint 0.1" "sup-joint-1=--gate-sup-joint 1"
              "top-2=--top-k 2" "top-2-balance-0.1=--top-k 2 --lambda-lb 0.1")
fi
out=$dir/gate-variants
mkdir -p "$out"
printf "%-20s %-36s %9s %9s %9s %9s %4s %8s %8s  %s\n" variant options mortality los7 readmit30 \
    mean sel val_sel test_sel "top expert per combination (mean gate weight)"
for v in "${variants[@]}"; do
    name=${v%%=*}
    opts=${v#*=}
    [[ -f $out/$name/done ]] || {
        rm -rf "${out:?}/$name"
        # shellcheck disable=SC2086 # opts are words on purpose
        "$SIM" run --data "$dir/sites" --sites "$SITES" --arch 0 --rounds "$ROUNDS" \
            --seed "$SEED" --timeout-s 7200 $opts --out "$out/$name" >"$out/$name.log" 2>&1
        touch "$out/$name/done"
    }
    python3 - "$out/$name/metrics.jsonl" "$name" "$opts" <<'EOF'
import json, sys
path, name, opts = sys.argv[1:4]
ev, gate, sel = None, None, {}
for line in open(path):
    j = json.loads(line)
    if j.get("event") == "eval":
        ev = j
    elif j.get("event") == "gate":
        gate = j
    elif j.get("event") == "selection":
        sel = j
combos = ["E", "N", "EN", "I", "EI", "NI", "ENI"]
tops = []
for c in combos:
    g = (gate or {}).get(c)
    if g and g.get("rows"):
        k = max(range(len(g["weights"])), key=lambda i: g["weights"][i])
        tops.append(f"{c}->{combos[k]} {g['weights'][k]:.2f}")
a = [ev["auroc_" + t] for t in ("mortality", "los7", "readmit30")]
print(f"{name:<20} {opts or '(defaults)':<36} " + " ".join(f"{x:9.4f}" for x in a)
      + f" {ev['auroc_mean']:9.4f}"
      + (f" {sel['selected_round']:4d} {sel['value']:8.4f} {sel['test_auroc_mean']:8.4f}  "
         if sel.get("selected_by") == "val_auroc_mean" else f" {'-':>4} {'-':>8} {'-':>8}  ")
      + ", ".join(tops))
EOF
done
