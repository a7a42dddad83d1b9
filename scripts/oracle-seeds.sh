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

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root" || exit 1

case "${1:-}" in
  -h | --help)
    sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  '') count="${DOPPEL_SEEDS:-50}" ;;
  *[!0-9]*)
    echo "usage: $0 [SEED_COUNT]   (not a number: $1)" >&2
    exit 64
    ;;
  *) count="$1" ;;
esac

profile=(--release)
[ "${DOPPEL_ORACLE_PROFILE:-release}" = debug ] && profile=()

target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
mkdir -p "$target_dir"
log="$target_dir/oracle-seeds.log"

echo "oracle-seeds: building the test (${profile[*]:-debug})" >&2
if ! cargo test "${profile[@]}" --no-run --quiet --test suite >"$log" 2>&1; then
  echo "oracle-seeds: the build failed; see $log" >&2
  tail -n 30 "$log" >&2
  exit 1
fi

start=$SECONDS
DOPPEL_SEEDS="$count" cargo test "${profile[@]}" --quiet --test suite -- \
  --ignored --exact randomized_oracle::many_seeds --nocapture --test-threads 1 2>&1 |
  tee "$log" |
  grep --line-buffered -E '^(randomized oracle:|seed [0-9]+: [0-9]+ rows, |seeds: |failed seeds:)'
rc=${PIPESTATUS[0]}

summary="$(grep -E '^seeds: [0-9]+, mismatched rows: [0-9]+$' "$log" | tail -n 1)"
echo "oracle-seeds: $((SECONDS - start)) s; full output in $log" >&2
if [ -z "$summary" ]; then
  echo "oracle-seeds: the run ended without a summary (cargo test exit $rc); see $log" >&2
  exit 1
fi
mismatched="${summary##*: }"
if [ "$rc" -ne 0 ] || [ "$mismatched" -ne 0 ]; then
  echo "oracle-seeds: FAILED (mismatched rows: $mismatched, cargo test exit $rc)" >&2
  exit 1
fi
exit 0
