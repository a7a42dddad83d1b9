#!/usr/bin/env bash
# The long randomized oracle run: many seeds of tests/suite/randomized_oracle.rs (a random
# workload mirrored into a twin while doppel migrates the table with a random ALTER; the
# result must equal the twin altered by PostgreSQL itself).
#
#   scripts/oracle-seeds.sh                      # 50 seeds, consecutive from a random first
#   scripts/oracle-seeds.sh 10                   # 10 seeds
#   DOPPEL_SEED=1000 scripts/oracle-seeds.sh     # seeds 1000..1049 (replayable)
#   DOPPEL_SEED=1017 scripts/oracle-seeds.sh 1   # replay one seed
#
# Prints one line per seed (rows, writer transactions, changes applied, doppel's phases and
# cutover attempts, the ALTER, the result) and finally `seeds: N, mismatched rows: M`.
# Exit status: 0 only if every seed migrated and M is 0.
#
# Environment: DOPPEL_ORACLE_PROFILE=debug uses the debug build (default: --release);
# DOPPEL_PG_BINDIR picks the server (see README, "Tests"); RUST_LOG=doppel=info adds doppel's
# log. The full output is kept in <target dir>/oracle-seeds.log.
set -uo pipefail

# shellcheck source=lib/seeded-run.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/seeded-run.sh"
seeded_run oracle-seeds 50 "${DOPPEL_ORACLE_PROFILE:-release}" randomized_oracle::many_seeds \
  '^(randomized oracle:|seed [0-9]+: [0-9]+ rows, |seeds: |failed seeds:)' \
  '^seeds: [0-9]+, mismatched rows: [0-9]+$' "${BASH_SOURCE[0]}" "${1:-}"
