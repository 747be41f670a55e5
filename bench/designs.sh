#!/usr/bin/env bash
# The learning issue's design screens on CartPole-v1, seeds 0-7, each with and without evolution
# (docs/learning.md, "The designs measured"). Each names every setting that differs from the
# previous defaults (10 copies, no correction, PBT over the learning rate), so it reproduces
# its row whatever the defaults are now. About 4 minutes a design on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
previous=(--set SWARM_ENVS=10 --set SWARM_CORRECTION=none --set SWARM_EVOLVED=learning-rate)
run() {
    name=$1; shift
    .venv/bin/python bench/study.py --seeds 0-7 --arms swarm swarm-no-evolution --jobs 2 "${previous[@]}" "$@" \
        --out "docs/study/designs/$name" > "docs/study/designs/$name.out"
}
mkdir -p docs/study/designs
run vtrace --set SWARM_CORRECTION=vtrace
run vtrace-greedy --set SWARM_CORRECTION=vtrace --set SWARM_TRAINING_ACTIONS=greedy-leader
run vtrace-greedy-all --set SWARM_CORRECTION=vtrace --set SWARM_TRAINING_ACTIONS=greedy-leader --set SWARM_EVOLVED=all
run vtrace-all --set SWARM_CORRECTION=vtrace --set SWARM_EVOLVED=all
run all --set SWARM_EVOLVED=all
run leader-envs4 --set SWARM_ENVS=4
run vtrace-greedy-envs4 --set SWARM_CORRECTION=vtrace --set SWARM_TRAINING_ACTIONS=greedy-leader --set SWARM_ENVS=4
run vtrace-all-envs4 --set SWARM_CORRECTION=vtrace --set SWARM_EVOLVED=all --set SWARM_ENVS=4
# The defaults since (4 copies, V-trace, PBT over all) with the advantage fitness
run advantage --set SWARM_CORRECTION=vtrace --set SWARM_EVOLVED=all --set SWARM_ENVS=4 --set SWARM_FITNESS=advantage
run tournament --set SWARM_CORRECTION=vtrace --set SWARM_EVOLVED=all --set SWARM_ENVS=4 --set SWARM_FITNESS=advantage \
    --set SWARM_TRAINING_ACTIONS=tournament-leader
run models5 --set SWARM_CORRECTION=vtrace --set SWARM_EVOLVED=all --set SWARM_ENVS=4 --set SWARM_MODELS=5
