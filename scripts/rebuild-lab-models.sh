#!/usr/bin/env bash
# Rebuilds the bundled lab models (models/lab: seed 0 of `chatvec lab train`) from scratch and
# compares every file's sha256 with the committed ones. Exit 0 only if all files are identical.
#
#   scripts/rebuild-lab-models.sh [COMMIT]
#
# Without COMMIT it trains with this checkout's code (dev profile, one thread, the default
# recipe). With COMMIT it extracts that commit (`git archive`) under target/rebuild-lab/ and
# builds it there with its own target dir, seeded with hard links to target/debug so that the
# dependencies are not compiled again: the way to rebuild models an older recipe made. Takes the
# three training stages' time (minutes), no network.
#
# Code before the lab's fixed-chunk linear layers (commit 0597964 and the other older recipes)
# rounds its weight gradients as gemm blocks them, which depends on the host's L1 data cache
# (docs/lab/results.md, "Bundled models and their rebuild"). With COMMIT the training therefore
# runs under scripts/with-cpu-caches.sh as on a 32 KiB 8-way L1, the cache the bundled models
# were made with (needs root: a private mount namespace). LAB_REAL_CACHES=1 runs it on the
# host's own caches instead. lab.json is compared without its "seconds" (wall time) line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
commit=${1:-}
work="$root/target/rebuild-lab"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

if [ -n "$commit" ]; then
    mkdir -p "$work/src"
    git archive "$commit" | tar -x -C "$work/src"
    # Extracted files carry the commit's date, older than the seeded build outputs: touch them,
    # or cargo would take this checkout's compiled crates as up to date.
    find "$work/src" -type f -exec touch {} +
    [ -d "$root/target/debug" ] && cp -al "$root/target/debug" "$work/target-debug-seed" || true
    mkdir -p "$work/target"
    [ -d "$work/target-debug-seed" ] && mv "$work/target-debug-seed" "$work/target/debug"
    (cd "$work/src" && CARGO_TARGET_DIR="$work/target" cargo build -q -p chatvec --bin chatvec)
    src="$work/src"
    chatvec="$work/target/debug/chatvec"
else
    cargo build -q -p chatvec --bin chatvec
    src="$root"
    chatvec="$root/target/debug/chatvec"
fi

# The training reads data/lab, data/korean and the fixture tokenizer of the code's own tree.
wrap=()
if [ -n "$commit" ] && [ "${LAB_REAL_CACHES:-0}" != 1 ]; then
    wrap=("$root/scripts/with-cpu-caches.sh" --l1d 32K --ways 8 --)
fi
(cd "$src" && "${wrap[@]}" "$chatvec" lab train --seed 0 --threads 1 --out "$work/out")

status=0
for stage in base chat target; do
    for f in "$root/models/lab/$stage"/*; do
        name=$(basename "$f")
        if [ "$name" = lab.json ]; then
            want=$(grep -v '"seconds"' "$f" | sha256sum | cut -d' ' -f1)
            got=$(grep -v '"seconds"' "$work/out/$stage/$name" 2>/dev/null | sha256sum | cut -d' ' -f1)
            if [ -f "$work/out/$stage/$name" ] && [ "$want" = "$got" ]; then
                echo "same    $want  $stage/$name (without seconds)"
            else
                echo "DIFFERS $want $got  $stage/$name (without seconds)"
                status=1
            fi
            continue
        fi
        want=$(sha256sum < "$f" | cut -d' ' -f1)
        if [ ! -f "$work/out/$stage/$name" ]; then
            echo "MISSING $stage/$name"
            status=1
            continue
        fi
        got=$(sha256sum < "$work/out/$stage/$name" | cut -d' ' -f1)
        if [ "$want" = "$got" ]; then
            echo "same    $want  $stage/$name"
        else
            echo "DIFFERS $want $got  $stage/$name"
            status=1
        fi
    done
done
exit $status
