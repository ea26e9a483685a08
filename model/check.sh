#!/usr/bin/env bash
# make model-check: exhaustively checks model/stepwise.pml with spin for each configuration below
# (no bitstate hashing: -DSAFETY -DCOLLAPSE, full state storage), then checks that each old
# variant still produces a counterexample, so the model demonstrably catches those bugs.
#
#   model/check.sh               fixed model (must pass) + old variants (must fail); exit 1 otherwise
#   model/check.sh --fixed       only the fixed model
#   model/check.sh --old         only the old variants, each with the trail spin found
#   model/check.sh --old NAME    one variant (e.g. OLD_TOKENS) with its trail
#
# Per configuration it prints the states stored, transitions and the time pan took.
set -euo pipefail
cd "$(dirname "$0")"
model=${MODEL_FILE:-$PWD/stepwise.pml}

if ! command -v spin >/dev/null; then
    echo "model-check: spin is not installed (Debian/Ubuntu: apt-get install -y spin)" >&2
    exit 2
fi

# name | spin -D flags. Defaults in stepwise.pml: 2 sessions, workers A and B with one slot
# each, NJ=3 jobs, CRASHES=1, HBLOSS=1, every other fault 0.
configs=(
    "core|-DNJ=3"
    "lost-replies|-DNJ=2 -DLOSTFETCH=1 -DLOSTREPLY=1"
    "cancel-expire|-DNJ=2 -DCANCELS=1 -DEXPIRES=1"
    "retry-release|-DNJ=2 -DRETRIES=1 -DRELEASES=1"
    "two-slots|-DNJ=2 -DSLOTS_A=2 -DDEADS=1"
    "same-id|-DNJ=3 -DSAME_ID -DSELF_REAP"
)
# variant | configuration flags it runs with. Each must fail. With -DNOINV the auxiliary
# invariants (e)/(f) are left out, so an end-to-end property (a)-(d) has to break; OLD_JOBIDS
# and OLD_ORPHAN_HOLDER break only (e) single dispatch (a duplicate entry, i.e. a double run).
variants=(
    "OLD_UNFENCED_CLAIM -DNOINV|-DNJ=3"
    "OLD_TOKENS -DNOINV|-DNJ=2 -DSLOTS_A=2 -DDEADS=1"
    "OLD_JOBIDS|-DNJ=2 -DCANCELS=1 -DEXPIRES=1"
    "OLD_ORPHAN_HOLDER|-DNJ=2 -DLOSTFETCH=1 -DLOSTREPLY=1"
    "OLD_REAP_UNREGISTERS -DNOINV|-DNJ=3"
    "NO_KEEP_OWN -DNOINV|-DNJ=2 -DSLOTS_A=2 -DDEADS=1"
    "SAME_ID -DNOINV|-DNJ=3"
)

work=$(mktemp -d /tmp/stepwise-model.XXXXXX)
trap 'kill $(jobs -rp) 2>/dev/null || true; wait; rm -rf "$work"' EXIT

# build NAME OPT FLAGS...: generates and compiles pan in $work/NAME, runs it; pan.out holds its report.
build() {
    local name=$1 opt=$2; shift 2
    local dir=$work/$name
    mkdir -p "$dir"
    cp "$model" "$dir/stepwise.pml"
    (
        cd "$dir"
        spin -a "$@" stepwise.pml >spin.out 2>&1 || { echo "spin -a failed" >pan.out; cat spin.out >>pan.out; exit 0; }
        gcc -w "$opt" -DSAFETY -DCOLLAPSE -DMEMLIM=4096 -o pan pan.c >gcc.out 2>&1 || { echo "gcc failed" >pan.out; cat gcc.out >>pan.out; exit 0; }
        ./pan -m100000 >pan.out 2>&1 || true
    )
}

# Runs up to $jobs builds at once (the box has 2 cores).
jobs=${MODEL_JOBS:-2}
start() {
    while (( $(jobs -rp | wc -l) >= jobs )); do wait -n || true; done
    build "$@" &
}

# result NAME: sets states, trans, secs, errors, verdict from $work/NAME/pan.out.
result() {
    local out=$work/$1/pan.out
    states=$(awk '/states, stored/ {print $1; exit}' "$out")
    trans=$(awk '/transitions \(= stored\+matched\)/ {print $1; exit}' "$out")
    secs=$(awk '/pan: elapsed time/ {print $4; exit}' "$out")
    errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$out" | head -1)
    verdict=$(grep -m1 -E 'assertion violated|invalid end state|acceptance cycle|failed' "$out" | sed 's/^pan:[0-9]*: *//' || true)
    : "${errors:=1}"
    if [[ -z $states ]]; then   # spin or gcc failed, or pan did not finish
        verdict="no pan report: $(head -3 "$out" | tr '\n' ' ')"
        errors=$((errors + 1000))
    fi
    # An exhaustive search must not have been cut short.
    if grep -qE 'max search depth too small|out of memory|aborting' "$out"; then
        verdict="search incomplete: $(grep -m1 -E 'max search depth too small|out of memory|aborting' "$out")"
        errors=$((errors + 1000))
    fi
}

trail() {
    local name=$1; shift
    (cd "$work/$name" && spin -t "$@" stepwise.pml 2>&1 | grep -E '^ *MODEL|assertion violated|text of failed' | sed -e 's/^ *MODEL /    /' -e 's/^spin: /    ==> /') || true
}

failed=0
mode=${1:-all}
one=${2:-}
t0=$SECONDS

# Start every build first (at most $jobs at a time), then report in order.
if [[ $mode == all || $mode == --fixed ]]; then
    for c in "${configs[@]}"; do
        # shellcheck disable=SC2086
        start "${c%%|*}" -O1 ${c#*|}
    done
fi
if [[ $mode == all || $mode == --old ]]; then
    for v in "${variants[@]}"; do
        vflags=${v%%|*}; flags=${v#*|}
        if [[ -n $one && ${vflags%% *} != "$one" ]]; then continue; fi
        name=v_$(echo "$vflags" | tr -c 'A-Za-z0-9_\n' _)
        # shellcheck disable=SC2086
        start "$name" -O0 -D$vflags $flags
    done
fi
wait

if [[ $mode == all || $mode == --fixed ]]; then
    echo "fixed model: every configuration must pass (exhaustive: -DSAFETY -DCOLLAPSE, no bitstate)"
    printf '  %-14s %10s %12s %7s  %s\n' config states transitions "pan s" "flags"
    total=0
    for c in "${configs[@]}"; do
        name=${c%%|*}; flags=${c#*|}
        result "$name"
        printf '  %-14s %10s %12s %7s  %s\n' "$name" "$states" "$trans" "$secs" "$flags"
        total=$(awk -v a="$total" -v b="${secs:-0}" 'BEGIN {print a + b}')
        if [[ $errors != 0 ]]; then
            echo "  FAIL $name: ${verdict:-errors: $errors}"
            # shellcheck disable=SC2086
            trail "$name" $flags
            failed=1
        fi
    done
    echo "  pan time in total: ${total} s"
fi

if [[ $mode == all || $mode == --old ]]; then
    echo "old variants: each must produce a counterexample"
    for v in "${variants[@]}"; do
        vflags=${v%%|*}; flags=${v#*|}
        if [[ -n $one && ${vflags%% *} != "$one" ]]; then continue; fi
        name=v_$(echo "$vflags" | tr -c 'A-Za-z0-9_\n' _)
        result "$name"
        if [[ $errors == 0 ]]; then
            printf '  %-28s NOT CAUGHT (%s states): the model no longer shows this bug\n' "$vflags" "$states"
            failed=1
        elif [[ $errors -ge 1000 ]]; then
            printf '  %-28s ERROR: %s\n' "$vflags" "$verdict"
            failed=1
        else
            printf '  %-28s caught: %s states, %s s: %s\n' "$vflags" "$states" "$secs" "$verdict"
            if [[ $mode == --old ]]; then
                # shellcheck disable=SC2086
                trail "$name" -D$vflags $flags
            fi
        fi
    done
fi

echo "wall time: $((SECONDS - t0)) s"
if [[ $failed != 0 ]]; then
    echo "model-check: FAILED"
    exit 1
fi
echo "model-check: ok"
