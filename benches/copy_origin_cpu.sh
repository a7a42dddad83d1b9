#!/usr/bin/env bash
# benches/copy_origin_cpu.sh [ROWS] [ROUNDS]: what the copy under replication origins saves the
# WAL sender (issue 17; BENCHMARKS.md "What `--copy-origin` saves"): benches/ab.sh with
# A = --no-copy-origin and B = the default (on PostgreSQL 16+, the copy under origins), idle
# table, ROWS rows (default 10,000,000), ROUNDS rounds (default 2).
# DOPPEL_PG_BINDIR must point at PostgreSQL 16+ binaries for the origin path. Prints per run the
# WAL sender's CPU time, the wall time and doppel's phases.
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/ab.sh" "${1:-10000000}" "${2:-2}" "--no-copy-origin" ""
