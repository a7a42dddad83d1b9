#!/usr/bin/env bash
# Runs the test suite once per PostgreSQL major and prints a summary table.
#
#   scripts/test-all-versions.sh                      # 14 15 16 17 18
#   scripts/test-all-versions.sh 17 18                # only these majors
#   scripts/test-all-versions.sh 18 -- --test suite preflight_refusals::   # arguments for cargo test
#
# Each major's server comes from /usr/lib/postgresql/<N>/bin when Debian installed it (15
# here), else from the cache of scripts/fetch-postgres.sh (fetched on first use; see that
# script for DOPPEL_PG_CACHE). The suite runs as `cargo test --no-fail-fast` with
# DOPPEL_PG_BINDIR=<bin dir>, which the cluster harness (crates/doppel-testkit/src/cluster.rs)
# honours. The npm builds ship only initdb, pg_ctl and postgres: the harness runs psql and
# pgbench from Debian's 15 client instead (pg_basebackup 15 refuses servers newer than 15).
#
# Logs: <target dir>/pg-versions/<major>.log. Exit status 0 only if every major passed.
# DOPPEL_TEST_TIMEOUT=<seconds> bounds each major's run (default: no bound).
set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root" || exit 1

majors=()
cargo_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --)
      shift
      cargo_args=("$@")
      break
      ;;
    [0-9][0-9]) majors+=("$1") ;;
    -h | --help)
      sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "usage: $0 [MAJOR...] [-- CARGO_TEST_ARGS...]   (unknown argument: $1)" >&2
      exit 64
      ;;
  esac
  shift
done
[ ${#majors[@]} -gt 0 ] || majors=(14 15 16 17 18)

target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
log_dir="$target_dir/pg-versions"
mkdir -p "$log_dir"

# Bin dir of each major.
declare -A bindir
need_fetch=()
for m in "${majors[@]}"; do
  if [ -x "/usr/lib/postgresql/$m/bin/postgres" ]; then
    bindir[$m]="/usr/lib/postgresql/$m/bin"
  else
    need_fetch+=("$m")
  fi
done
if [ ${#need_fetch[@]} -gt 0 ]; then
  fetched="$("$repo_root/scripts/fetch-postgres.sh" "${need_fetch[@]}")" || {
    echo "test-all-versions: fetching PostgreSQL ${need_fetch[*]} failed" >&2
    exit 1
  }
  while read -r m dir; do
    [ -n "$m" ] && bindir[$m]="$dir"
  done <<<"$fetched"
fi

echo "test-all-versions: building the tests once" >&2
if ! cargo test --no-run --quiet "${cargo_args[@]}" >"$log_dir/build.log" 2>&1; then
  echo "test-all-versions: the build failed; see $log_dir/build.log" >&2
  tail -n 30 "$log_dir/build.log" >&2
  exit 1
fi

run() {
  if [ -n "${DOPPEL_TEST_TIMEOUT:-}" ]; then
    timeout "$DOPPEL_TEST_TIMEOUT" "$@"
  else
    "$@"
  fi
}

declare -A result version counts failing seconds
overall=0
for m in "${majors[@]}"; do
  dir="${bindir[$m]:-}"
  if [ -z "$dir" ] || [ ! -x "$dir/postgres" ]; then
    result[$m]="no server"
    overall=1
    continue
  fi
  version[$m]="$("$dir/postgres" --version 2>/dev/null | awk '{print $3}')"
  log="$log_dir/$m.log"
  echo "test-all-versions: PostgreSQL ${version[$m]} ($dir), log $log" >&2
  start=$SECONDS
  DOPPEL_PG_BINDIR="$dir" run cargo test --no-fail-fast "${cargo_args[@]}" >"$log" 2>&1
  rc=$?
  seconds[$m]=$((SECONDS - start))
  # "test result: FAILED. 3 passed; 1 failed; 0 ignored; ..." of every test binary, added up.
  counts[$m]="$(awk '/^test result:/ {
      for (i = 2; i < NF; i++) {
        if ($(i + 1) ~ /^passed/) p += $i
        if ($(i + 1) ~ /^failed/) f += $i
        if ($(i + 1) ~ /^ignored/) g += $i
      }
    } END { printf "%d/%d/%d", p, f, g }' "$log")"
  failing[$m]="$(grep -E '^test .* \.\.\. FAILED$' "$log" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/' | sort -u | paste -sd' ')"
  if [ $rc -eq 0 ]; then
    result[$m]=pass
  elif [ $rc -eq 124 ] && [ -n "${DOPPEL_TEST_TIMEOUT:-}" ]; then
    result[$m]="FAIL (timeout)"
    overall=1
  else
    result[$m]=FAIL
    overall=1
  fi
done

echo
printf '%-6s %-9s %-15s %-17s %-6s %s\n' major version result "passed/failed/ign" secs "failing tests"
for m in "${majors[@]}"; do
  printf '%-6s %-9s %-15s %-17s %-6s %s\n' "$m" "${version[$m]:--}" "${result[$m]}" \
    "${counts[$m]:--}" "${seconds[$m]:--}" "${failing[$m]:-}"
done
echo "logs: $log_dir/<major>.log"
exit $overall
