#!/usr/bin/env bash
# Checks that a doppel binary carries no test hook: no pause point and no deliberately broken
# ordering (the `pause-points` feature, src/testing/). A release build must pass; a build with
# the feature must fail, which shows the check can see them.
#
#   scripts/check-no-test-hooks.sh                       # builds and checks target/release/doppel
#   scripts/check-no-test-hooks.sh path/to/doppel        # checks that binary
#
# It looks for the pause points' names, the pause-directory variable and the broken
# ordering's session name among the binary's strings, and for the test-hook functions among
# its symbols (`nm -C`). Exit status 0: none found; 1: found (listed); 2: usage or build error.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

if [ $# -gt 0 ]; then
  bin="$1"
else
  cargo build --release --quiet --bin doppel || exit 2
  bin="${CARGO_TARGET_DIR:-target}/release/doppel"
fi
[ -x "$bin" ] || { echo "check-no-test-hooks: no executable at $bin" >&2; exit 2; }

found=0
for s in DOPPEL_PAUSE_DIR 'pause point' chunk-open visibility-wait cutover-locked cutover-attempt lock-granted shadow-built index-built \
  after-preflight apply-shares DOPPEL_TEST_BROKEN 'applier (during copy)' '_during_copy' 'waiting for the test'; do
  n=$(strings -a "$bin" | grep -cF -- "$s")
  if [ "$n" -gt 0 ]; then
    echo "string '$s' found $n time(s)"
    found=1
  fi
done
if command -v nm >/dev/null 2>&1; then
  syms=$(nm -C "$bin" 2>/dev/null | grep -E 'testing::scope|phases::broken|Probe::pause|Probe::armed|Probe::broken' | head -5)
  if [ -n "$syms" ]; then
    echo "test-hook symbols found:"
    echo "$syms"
    found=1
  fi
fi
if [ $found -eq 0 ]; then
  echo "check-no-test-hooks: $bin has no pause point and no broken ordering"
  exit 0
fi
echo "check-no-test-hooks: $bin carries test hooks" >&2
exit 1
