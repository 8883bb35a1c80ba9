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
(cd "$src" && "$chatvec" lab train --seed 0 --threads 1 --out "$work/out")

status=0
for stage in base chat target; do
    for f in "$root/models/lab/$stage"/*; do
        name=$(basename "$f")
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
