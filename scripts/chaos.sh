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

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root" || exit 1

case "${1:-}" in
  -h | --help)
    sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  '') count="${DOPPEL_SEEDS:-20}" ;;
  *[!0-9]*)
    echo "usage: $0 [SEED_COUNT]   (not a number: $1)" >&2
    exit 64
    ;;
  *) count="$1" ;;
esac

profile=(--release)
[ "${DOPPEL_CHAOS_PROFILE:-release}" = debug ] && profile=()

target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
mkdir -p "$target_dir"
log="$target_dir/chaos.log"

echo "chaos: building the test (${profile[*]:-debug})" >&2
if ! cargo test "${profile[@]}" --no-run --quiet --test suite >"$log" 2>&1; then
  echo "chaos: the build failed; see $log" >&2
  tail -n 30 "$log" >&2
  exit 1
fi

start=$SECONDS
DOPPEL_SEEDS="$count" cargo test "${profile[@]}" --quiet --test suite -- \
  --ignored --exact reconnect::chaos_long --nocapture --test-threads 1 2>&1 |
  tee "$log" |
  grep --line-buffered -E '^(chaos: seeds|chaos seed [0-9]+: |seeds: |failed seeds:)'
rc=${PIPESTATUS[0]}

summary="$(grep -E '^seeds: [0-9]+, kills: [0-9]+, mismatched rows: [0-9]+$' "$log" | tail -n 1)"
echo "chaos: $((SECONDS - start)) s; full output in $log" >&2
if [ -z "$summary" ]; then
  echo "chaos: the run ended without a summary (cargo test exit $rc); see $log" >&2
  exit 1
fi
mismatched="${summary##*: }"
if [ "$rc" -ne 0 ] || [ "$mismatched" -ne 0 ]; then
  echo "chaos: FAILED (mismatched rows: $mismatched, cargo test exit $rc)" >&2
  exit 1
fi
exit 0
