#!/usr/bin/env bash
# Rebuilds the bundled lab models (models/lab: seed 0 of `chatvec lab train`) from scratch and
# compares every file's sha256 with the committed ones. Exit 0 only if all files are identical.
#
#   scripts/rebuild-lab-models.sh [COMMIT]
#
# Without COMMIT it trains with this checkout's code (dev profile, one thread, the default
# recipe). With COMMIT it builds that commit in a temporary git worktree (sharing this
# checkout's target/ for the dependencies) and trains with it: the way to rebuild models that
# an older recipe made. Takes the three training stages' time (minutes), no network.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
commit=${1:-}
work=$(mktemp -d)
trap 'rm -rf "$work"; [ -n "$commit" ] && git worktree remove --force "$work/src" 2>/dev/null || true' EXIT

if [ -n "$commit" ]; then
    git worktree add --detach "$work/src" "$commit" >/dev/null
    src="$work/src"
else
    src="$root"
fi
(cd "$src" && CARGO_TARGET_DIR="$root/target" cargo build -q -p chatvec --bin chatvec)
chatvec="$root/target/debug/chatvec"

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
