# Shared by scripts/oracle-seeds.sh and scripts/chaos.sh (sourced, not run): builds the suite,
# runs one ignored seeded test for SEED_COUNT seeds, shows the lines that report seeds, and
# checks the final summary line.
#
#   seeded_run NAME DEFAULT_COUNT PROFILE_VALUE TEST LINES_RE SUMMARY_RE SCRIPT [ARG]
#
# NAME prefixes messages and names the log (<target dir>/NAME.log); PROFILE_VALUE is `debug`
# for the debug build, anything else for --release; TEST is the test's exact path in the suite;
# LINES_RE selects the output lines shown; SUMMARY_RE matches the summary line, whose last
# field is the mismatched-row count. Exits 0 only if cargo test passed and that count is 0.
seeded_run() {
  local name="$1" default_count="$2" profile_value="$3" test="$4" lines_re="$5"
  local summary_re="$6" script="$7" arg="${8:-}" count
  local repo_root
  repo_root="$(cd "$(dirname "$script")/.." && pwd)"
  cd "$repo_root" || exit 1
  case "$arg" in
    -h | --help)
      sed -n '2,/^set -uo/p' "$script" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    '') count="${DOPPEL_SEEDS:-$default_count}" ;;
    *[!0-9]*)
      echo "usage: $script [SEED_COUNT]   (not a number: $arg)" >&2
      exit 64
      ;;
    *) count="$arg" ;;
  esac

  local profile=(--release)
  [ "$profile_value" = debug ] && profile=()
  local target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
  mkdir -p "$target_dir"
  local log="$target_dir/$name.log"

  echo "$name: building the test (${profile[*]:-debug})" >&2
  if ! cargo test "${profile[@]}" --no-run --quiet --test suite >"$log" 2>&1; then
    echo "$name: the build failed; see $log" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi

  local start=$SECONDS rc
  DOPPEL_SEEDS="$count" cargo test "${profile[@]}" --quiet --test suite -- \
    --ignored --exact "$test" --nocapture --test-threads 1 2>&1 |
    tee "$log" |
    grep --line-buffered -E "$lines_re"
  rc=${PIPESTATUS[0]}

  local summary mismatched
  summary="$(grep -E "$summary_re" "$log" | tail -n 1)"
  echo "$name: $((SECONDS - start)) s; full output in $log" >&2
  if [ -z "$summary" ]; then
    echo "$name: the run ended without a summary (cargo test exit $rc); see $log" >&2
    exit 1
  fi
  mismatched="${summary##*: }"
  if [ "$rc" -ne 0 ] || [ "$mismatched" -ne 0 ]; then
    echo "$name: FAILED (mismatched rows: $mismatched, cargo test exit $rc)" >&2
    exit 1
  fi
  exit 0
}
