#!/usr/bin/env bash
# The seeded chaos runner: many seeds of reconnect::chaos_long (tests/suite/reconnect.rs). Each
# seed starts a resumable doppel run on a 30,000-row table under a writer mirrored into a twin
# table, kills doppel with SIGKILL 3 to 5 times at seeded moments (a random delay after the
# start, or a random pause point: after preflight, shadow built, mid-copy, a chunk's open
# transaction, an index built, catch-up, verifying, inside the cutover transaction, after the
# cutover committed), resumes it with --resume each time, lets the last run complete, and
# compares the new table with the twin.
#
#   scripts/chaos.sh                      # 20 seeds, consecutive from a random first
#   scripts/chaos.sh 50                   # 50 seeds
#   DOPPEL_SEED=1000 scripts/chaos.sh     # seeds 1000..1019 (the moments replay; where a
#                                         # delay lands still depends on the machine's speed)
#   DOPPEL_SEED=1017 scripts/chaos.sh 1   # replay one seed
#
# Prints one line per seed (the kills: where each struck, a pause point or a delay with the
# phase the run's checkpoint had reached; the writer's transactions; the result) and finally
# `seeds: N, kills: K, mismatched rows: M`. Exit status: 0 only if every seed completed and M
# is 0.
#
# Environment: DOPPEL_CHAOS_PROFILE=debug uses the debug build (default: --release);
# DOPPEL_PG_BINDIR picks the server (see README, "Tests"). The full output is kept in
# <target dir>/chaos.log.
set -uo pipefail

# shellcheck source=lib/seeded-run.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/seeded-run.sh"
seeded_run chaos 20 "${DOPPEL_CHAOS_PROFILE:-release}" reconnect::chaos_long \
  '^(chaos: seeds|chaos seed [0-9]+: |seeds: |failed seeds:)' \
  '^seeds: [0-9]+, kills: [0-9]+, mismatched rows: [0-9]+$' "${BASH_SOURCE[0]}" "${1:-}"
