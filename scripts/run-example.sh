#!/usr/bin/env bash
# `make run`: bring the five services up, run the example plan, print the report,
# stop the stack, and exit non-zero unless the run completed.
set -uo pipefail
cd "$(dirname "$0")/.."
plan=${1:-examples/plan.yaml}
export AUTOPACK_REPLAY_DIR=${AUTOPACK_REPLAY_DIR:-$PWD/examples/recordings}
autopack=.venv/bin/autopack

if ! "$autopack" up; then
  "$autopack" down
  exit 1
fi
"$autopack" run "$plan" --unique
status=$?
"$autopack" down
exit "$status"
