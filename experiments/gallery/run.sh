#!/usr/bin/env bash
# The write-up's gallery: its seven pairs, one multirun per content photo (and per painting that
# cannot be shipped), all into one sweep folder with a job folder per pair, then the report.
# Give the pictures you have; pairs whose pictures are not given are skipped:
#   BERKELEY=~/photos/berkeley.jpg BRIDGE=~/photos/bridge.jpg BRIDGE2=~/photos/bridge2.jpg \
#   PICASSO=~/art/figure.jpg INKWASH=~/art/journey_east.jpg experiments/gallery/run.sh [overrides...]
# Extra arguments are Hydra overrides for every job (e.g. image_size=768 logger=none).
# PYTHON (default .venv/bin/python) and SWEEP (default multirun/gallery/<date>_<time>) may be set.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
SWEEP=${SWEEP:-multirun/gallery/$(date +%Y-%m-%d_%H-%M-%S)}
ran=0 failed=0

# run PAIRS NEEDED_VARS... -- OVERRIDES...: one multirun, or a note naming what is missing.
run() {
    local pairs=$1; shift
    local missing=()
    while [[ $1 != -- ]]; do [[ -n ${!1:-} ]] || missing+=("$1"); shift; done
    shift
    if ((${#missing[@]})); then
        echo "gallery: skipping $pairs: set ${missing[*]}" >&2
        return
    fi
    ran=$((ran + 1))
    # a failed job makes the multirun exit 1: go on, the report shows what failed
    "$PYTHON" -m stylelab.run -m experiment=gallery "pair=$pairs" "$@" \
        "hydra.sweep.dir=$SWEEP" 'hydra.sweep.subdir=${pair.name}' "${EXTRA[@]}" || failed=1
}

EXTRA=("$@")
q() { printf "'%s'" "$1"; }  # a Hydra quoted value: paths may hold spaces or colons
run berkeley_starry,berkeley_scream,berkeley_sunrise BERKELEY -- "pair.content=$(q "${BERKELEY:-}")"
run berkeley_cubism BERKELEY PICASSO -- "pair.content=$(q "${BERKELEY:-}")" "pair.style=$(q "${PICASSO:-}")"
run berkeley_inkwash BERKELEY INKWASH -- "pair.content=$(q "${BERKELEY:-}")" "pair.style=$(q "${INKWASH:-}")"
run bridge_scream BRIDGE -- "pair.content=$(q "${BRIDGE:-}")"
run bridge2_haystacks BRIDGE2 -- "pair.content=$(q "${BRIDGE2:-}")"

if ((ran == 0)); then
    echo "gallery: no pictures given; set at least BERKELEY=/path/to/photo.jpg (see experiments/gallery/README.md)" >&2
    exit 2
fi
"$PYTHON" -m stylelab.report "$SWEEP" --title "The write-up's gallery"
exit "$failed"
