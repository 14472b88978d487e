#!/usr/bin/env bash
# The fair presets on seq-fmnist (issue 20, item 4; clbench/runs/presets.py, PRESET_GRIDS): each
# method's own knob, and masked ER's finite m, chosen from a three-point grid by the mean class-IL FAA
# on a validation split (10 % of each task's training data), 10 seeds, buffer 200. One `clbench tune`
# grid study per method; each writes its report to reports/presets/NAME/. Runs cached in the registry
# (--db, default results.db) are reused, so this resumes where it stopped.
#
#   bash reports/presets/run.sh [--db DB]
set -euo pipefail
cd "$(dirname "$0")/../.."
clbench=${CLBENCH:-.venv/bin/clbench}
grid() {
    local name=$1
    shift
    "$clbench" tune --dataset seq-fmnist --buffer 200 --seeds 10 --validation 0.1 \
        --study "presets-$name" --out "reports/presets/$name" --html "$@"
}
grid er --method er --param mask=-5,-2,0 "$@"
grid ss_il --method ss_il --param distill=0,0.5,1 "$@"
grid lode --method lode --param rho=0.01,0.1,0.5 "$@"
grid lode_derpp --method lode_derpp --param rho=0.01,0.1,0.5 "$@"
grid er_las --method er_las --param tau=0.5,1,2 "$@"
grid er_aml --method er_aml --param temperature=0.1,0.2,0.3 "$@"
grid bic --method bic --param temperature=1,2,4 "$@"
