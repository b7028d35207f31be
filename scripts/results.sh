#!/usr/bin/env bash
# results.sh - the accuracy results of DESIGN §7 on a synthetic MIMIC-IV, end to end, with the
# built binaries: synth -> extract -> split into 4 sites with different modalities and case
# mix, then
#   (a) federated MoE-Health                       moeh run --data SITES --arch 0
#   (b) centralised MoE-Health on the pooled data  moeh train --dataset S1,S2,S3,S4
#   (c) each site's local-only MoE-Health          moeh train --dataset Sk --eval-dataset S1,..,S4
#   (d) federated baselines: early (6), joint (4), late (5) fusion, unimodal EHR (1)
#   (e) the oracle AUROC (the generator's true risk) on the pooled test rows
# and writes docs/results.md with scripts/results_table.py.
#
# (b) and (c) keep the epoch with the best mean AUROC on their own validation split (moeh
# train --select best, early stopping); the federation reports its last round (the coordinator
# has no validation split).
#
# The pooled training data of (b) is the concatenation of the four site datasets (the same rows,
# modalities and train/val/test splits the federation sees), so the pooled test set of every
# model is the union of the sites' test splits.
#
# usage: scripts/results.sh [ADMISSIONS]       (default 30000; or env ADMISSIONS)
#        SEEDS="1 2 3" scripts/results.sh      (one pipeline per seed in OUT/seed-N, one report)
# env:   OUT (work dir, default /tmp/moeh-results), BUILD (default ./build), ROUNDS (= epochs of
#        the centralised and local models; default 8, moeh run's default), WARMUP (3), LR (2e-3), BATCH (32),
#        D_EMB (64), D_HIDDEN (64), BUCKETS (16384), ALPHA (0.5), SEED (1), SEEDS (SEED),
#        GATE_OPTS (extra options of the MoE-Health runs (a), (b), (c), e.g. "--lambda-lb 0.1"),
#        SITES (NAME:SHARE:MODS,... for moeh split), RESULTS (default docs/results.md; - for
#        none),
#        KEEP=1 keeps the work dir (default: the raw tables are deleted after extraction),
#        PROFILE (moeh synth --profile: homogeneous, the default, or heterogeneous;
#        docs/synthetic.md), SITES=hospitals (one site per generator hospital: moeh split
#        --hospitals truth.csv; for PROFILE=heterogeneous), ABLATIONS=1 (also the federated
#        ablations of MoE-Health: no warm-up, missing_zero, gate_no_avail, no load balancing,
#        top-1, top-2; the dense gate is the main run), FED_ONLY=1 (federations only: no
#        centralised (b) and local-only (c) models), FEDS="fed-moe fed-early ..." (run only
#        these federations; a queue can run them in its own order), PREDICT=1 (then score every
#        federated model per admission: scripts/fed_predict.py, for the issue-15 tables),
#        CENTRAL=1 (also the paper's centralised comparison: MoE-Health, early, joint and late
#        fusion, the unimodal models and the six MoE-Health ablations, each trained with moeh train on the pooled
#        site datasets, directories cen-*; with PREDICT=1 their section of the tables).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
ADMISSIONS=${1:-${ADMISSIONS:-30000}}
OUT=${OUT:-/tmp/moeh-results}
BUILD=${BUILD:-$here/build}
ROUNDS=${ROUNDS:-8}
WARMUP=${WARMUP:-3}
LR=${LR:-2e-3}
BATCH=${BATCH:-32}
D_EMB=${D_EMB:-64}
D_HIDDEN=${D_HIDDEN:-64}
BUCKETS=${BUCKETS:-16384}
ALPHA=${ALPHA:-0.5}
SEED=${SEED:-1}
SITES=${SITES:-site-1:0.3:ehr+notes+img,site-2:0.3:ehr+notes,site-3:0.2:ehr+img,site-4:0.2:ehr}
RESULTS=${RESULTS:-$here/docs/results.md}
SEEDS=${SEEDS:-$SEED}
PROFILE=${PROFILE:-homogeneous}
ABLATIONS=${ABLATIONS:-0}
FED_ONLY=${FED_ONLY:-0}
FEDS=${FEDS:-} # names of the federations to run (e.g. "fed-moe abl-top1"); empty: all
# SITES=hospitals: the heterogeneous generator's four hospitals (sim/synth_het.h HET_N_HOSP)
SITES_ARG=$SITES # as given (the per-seed runs below re-read it)
split_by=(--sites "$SITES" --alpha "$ALPHA")
if [[ $SITES == hospitals ]]; then
    SITES=hosp0:1,hosp1:1,hosp2:1,hosp3:1
    split_by=(--hospitals HOSPITALS_TRUTH)
fi
SIM=$BUILD/bin/moeh
GATE_OPTS=${GATE_OPTS:-}   # extra moeh run/train options of MoE-Health (e.g. --lambda-lb 0.1)

# the command that reproduces this report (the settings that differ from the defaults)
repro="ADMISSIONS=$ADMISSIONS ROUNDS=$ROUNDS ALPHA=$ALPHA"
[[ $PROFILE == homogeneous ]] || repro+=" PROFILE=$PROFILE"
[[ $SITES_ARG == site-1:0.3:ehr+notes+img,site-2:0.3:ehr+notes,site-3:0.2:ehr+img,site-4:0.2:ehr ]] ||
    repro+=" SITES=$SITES_ARG"
[[ $FED_ONLY != 1 ]] || repro+=" FED_ONLY=1"
[[ $ABLATIONS != 1 ]] || repro+=" ABLATIONS=1"
[[ ${PREDICT:-0} != 1 ]] || repro+=" PREDICT=1"
[[ ${CENTRAL:-0} != 1 ]] || repro+=" CENTRAL=1"
[[ -z $GATE_OPTS ]] || repro+=" GATE_OPTS=\"$GATE_OPTS\""
[[ -z $FEDS ]] || repro+=" FEDS=\"$FEDS\""

# several seeds: one pipeline per seed in OUT/seed-N, then one report (tables of the first
# seed, a table of every seed with the mean and spread of the gaps)
read -ra seed_list <<<"$SEEDS"
if (( ${#seed_list[@]} > 1 )); then
    t_all=$(date +%s)
    dirs=()
    for s in "${seed_list[@]}"; do
        [[ $s =~ ^[0-9]+$ ]] || { echo "results.sh: SEEDS must hold numbers, got '$s'" >&2; exit 2; }
        SEED=$s SEEDS=$s OUT=$OUT/seed-$s RESULTS=- SITES=$SITES_ARG \
            bash "$0" "$ADMISSIONS"
        dirs+=(--seed-dir "$s:$OUT/seed-$s")
    done
    names=()
    IFS=',' read -ra spec <<<"$SITES"
    for s in "${spec[@]}"; do names+=("${s%%:*}"); done
    fig_args=() # the robustness curves beside the report (PREDICT=1)
    [[ ${PREDICT:-0} != 1 || $RESULTS == - ]] || fig_args=(--figure "${RESULTS%.md}-robustness.svg")
    python3 "$here/scripts/results_table.py" --out-dir "$OUT/seed-${seed_list[0]}" \
        --sites "$(IFS=','; echo "${names[*]}")" "${dirs[@]}" \
        --command "$repro SEEDS=\"$SEEDS\" scripts/results.sh" \
        --admissions "$ADMISSIONS" --rounds "$ROUNDS" --warmup "$WARMUP" --alpha "$ALPHA" --site-spec "$SITES" \
        --seconds "$(( $(date +%s) - t_all ))" --profile "$PROFILE" --output "$RESULTS" \
        ${fig_args[@]+"${fig_args[@]}"}
    exit 0
fi

[[ -x $SIM ]] || { echo "results.sh: $SIM not found; build first (scripts/build.sh)" >&2; exit 2; }
[[ $ADMISSIONS =~ ^[0-9]+$ ]] || { echo "results.sh: ADMISSIONS must be a number, got '$ADMISSIONS'" >&2; exit 2; }
mkdir -p "$OUT/logs"
log() { echo "== $(date -u +%H:%M:%S) $*"; }
t_start=$(date +%s)

model=(--d-emb "$D_EMB" --d-hidden "$D_HIDDEN" --note-buckets "$BUCKETS")
train_opts=(--epochs "$ROUNDS" --warmup-epochs "$WARMUP" --lr "$LR" --batch-size "$BATCH"
            --seed "$SEED" --no-verify "${model[@]}")
names=()
IFS=',' read -ra spec <<<"$SITES"
for s in "${spec[@]}"; do names+=("${s%%:*}"); done
site_dirs=()
for n in "${names[@]}"; do site_dirs+=("$OUT/sites/$n"); done
pooled=$(IFS=','; echo "${site_dirs[*]}")

if [[ ! -f $OUT/sites/summary.tsv ]]; then
    log "synth $ADMISSIONS admissions -> $OUT/raw"
    nice -n 10 "$SIM" synth --admissions "$ADMISSIONS" --seed "$SEED" --profile "$PROFILE" \
        --out "$OUT/raw" >"$OUT/logs/synth.log" 2>&1
    log "extract -> $OUT/cohort"
    nice -n 10 "$SIM" extract --mimic "$OUT/raw/mimic" --note "$OUT/raw/note" \
        --cxr "$OUT/raw/cxr" --out "$OUT/cohort" >"$OUT/logs/extract.log" 2>&1
    cp "$OUT/raw/truth.csv" "$OUT/raw/truth.json" "$OUT/"
    [[ ${KEEP:-0} == 1 ]] || rm -rf "$OUT/raw"
    log "split into ${#names[@]} sites (${split_by[*]/HOSPITALS_TRUTH/truth.csv}) -> $OUT/sites"
    nice -n 10 "$SIM" split --dataset "$OUT/cohort" "${split_by[@]/HOSPITALS_TRUTH/$OUT/truth.csv}" \
        --seed "$SEED" --out "$OUT/sites" | tee "$OUT/logs/split.log"
    [[ ${KEEP:-0} == 1 ]] || rm -rf "$OUT/cohort"
fi

# (a) and (d): federations, one at a time (each uses both cores: one process per site)
fed() { # fed NAME ARCH
    if [[ -f $OUT/$1/done ]]; then return; fi
    if [[ -n $FEDS && " $FEDS " != *" $1 "* ]]; then return; fi # FEDS: only these
    log "federation $1 (arch $2, $ROUNDS rounds)"
    rm -rf "$OUT/$1"
    nice -n 10 "$SIM" run --data "$OUT/sites" --sites "$SITES" --arch "$2" --rounds "$ROUNDS" \
        --warmup-rounds "$WARMUP" --lr "$LR" --batch-size "$BATCH" --seed "$SEED" \
        --timeout-s 7200 "${model[@]}" "${@:3}" --out "$OUT/$1" >"$OUT/logs/$1.log" 2>&1
    touch "$OUT/$1/done"
}
# (b) and (c): single-process training, two at a time (one core each)
central() { # central NAME TRAIN_DIRS [more moeh train options]
    local name=$1 data=$2
    shift 2
    if [[ -f $OUT/$name/done ]]; then return; fi
    rm -rf "${OUT:?}/$name"
    OPENBLAS_NUM_THREADS=1 nice -n 10 "$SIM" train --dataset "$data" "${train_opts[@]}" "$@" \
        --out "$OUT/$name" >"$OUT/logs/$name.log" 2>&1
    touch "$OUT/$name/done"
}

fed fed-moe 0 $GATE_OPTS
if [[ $FED_ONLY != 1 ]]; then
    log "centralised MoE-Health and the local-only models (two at a time)"
    jobs_=()
    central central "$pooled" $GATE_OPTS &
    jobs_+=($!)
    for i in "${!names[@]}"; do
        if (( ${#jobs_[@]} >= 2 )); then wait "${jobs_[0]}"; jobs_=("${jobs_[@]:1}"); fi
        central "local-${names[$i]}" "${site_dirs[$i]}" --eval-dataset "$pooled" $GATE_OPTS &
        jobs_+=($!)
    done
    for j in "${jobs_[@]}"; do wait "$j"; done
fi
fed fed-early 6
fed fed-joint 4
fed fed-late 5
fed fed-ehr 1
fed fed-notes 2 # unimodal notes and image baselines (issue 15)
fed fed-img 3
if [[ $ABLATIONS == 1 ]]; then # MoE-Health without one component each (issue 15)
    fed abl-no-warmup 0 $GATE_OPTS --warmup-rounds 0
    fed abl-missing-zero 0 $GATE_OPTS --missing-zero 1
    fed abl-gate-no-avail 0 $GATE_OPTS --gate-no-avail 1
    fed abl-no-lb 0 $GATE_OPTS --lambda-lb 0
    fed abl-top1 0 $GATE_OPTS --top-k 1
    fed abl-top2 0 $GATE_OPTS --top-k 2
fi

# the paper's centralised comparison (issue 15): MoE-Health, the three fusion baselines, the
# three unimodal models and the six ablations trained on the pooled site datasets with moeh train (each keeps its epoch with
# the best validation AUROC); PREDICT=1 scores their model files like the federations'
cen() { # cen NAME ARCH WARMUP_EPOCHS [more moeh train options]
    local name=$1 arch=$2 w=$3
    shift 3
    if [[ -f $OUT/$name/done ]]; then return; fi
    if [[ -n $FEDS && " $FEDS " != *" $name "* ]]; then return; fi
    rm -rf "${OUT:?}/$name"
    OPENBLAS_NUM_THREADS=1 nice -n 10 "$SIM" train --dataset "$pooled" --epochs "$ROUNDS" \
        --warmup-epochs "$w" --lr "$LR" --batch-size "$BATCH" --seed "$SEED" --no-verify \
        "${model[@]}" --arch "$arch" "$@" --out "$OUT/$name" >"$OUT/logs/$name.log" 2>&1
    touch "$OUT/$name/done"
}
if [[ ${CENTRAL:-0} == 1 ]]; then
    log "centralised MoE-Health, fusion baselines and ablations (two at a time)"
    jobs_=()
    for spec in "cen-moe 0 $WARMUP $GATE_OPTS" "cen-early 6 $WARMUP" "cen-joint 4 $WARMUP" \
        "cen-late 5 $WARMUP" "cen-ehr 1 $WARMUP" "cen-notes 2 $WARMUP" "cen-img 3 $WARMUP" \
        "cen-no-warmup 0 0 $GATE_OPTS" \
        "cen-missing-zero 0 $WARMUP $GATE_OPTS --missing-zero 1" \
        "cen-gate-no-avail 0 $WARMUP $GATE_OPTS --gate-no-avail 1" \
        "cen-no-lb 0 $WARMUP $GATE_OPTS --lambda-lb 0" "cen-top1 0 $WARMUP $GATE_OPTS --top-k 1" \
        "cen-top2 0 $WARMUP $GATE_OPTS --top-k 2"; do
        if (( ${#jobs_[@]} >= 2 )); then wait "${jobs_[0]}"; jobs_=("${jobs_[@]:1}"); fi
        # shellcheck disable=SC2086 # spec: NAME ARCH WARMUP [options], words on purpose
        cen $spec &
        jobs_+=($!)
    done
    for j in "${jobs_[@]}"; do wait "$j"; done
fi

if [[ ${PREDICT:-0} == 1 ]]; then
    log "per-admission scores of every federated model -> $OUT/preds"
    nice -n 10 python3 "$here/scripts/fed_predict.py" --moeh "$SIM" "$OUT" \
        >"$OUT/logs/predict.log" 2>&1
fi
elapsed=$(( $(date +%s) - t_start ))
log "table -> $RESULTS (pipeline ${elapsed} s)"
if [[ $RESULTS == - ]]; then log "done (no table: RESULTS=-)"; exit 0; fi
cmd="$repro SEED=$SEED scripts/results.sh"
python3 "$here/scripts/results_table.py" --out-dir "$OUT" --sites "$(IFS=','; echo "${names[*]}")" \
    --command "$cmd" --admissions "$ADMISSIONS" --rounds "$ROUNDS" --warmup "$WARMUP" --alpha "$ALPHA" \
    --site-spec "$SITES" --seconds "$elapsed" --seed "$SEED" --profile "$PROFILE" --output "$RESULTS"
log "done"
