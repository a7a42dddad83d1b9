#!/usr/bin/env bash
# benches/copy_origin_cpu.sh [ROWS] [ROUNDS]: what --copy-origin saves the WAL sender (issue 17;
# BENCHMARKS.md "The WAL sender's CPU with and without --copy-origin"). A private cluster in a
# temp dir (removed at exit; run as root, the server runs as 'postgres'; server binaries from
# DOPPEL_PG_BINDIR, which must be PostgreSQL 16+ for the origin path, else PostgreSQL 15's),
# configured as benches/run.sh's. ROWS rows (default 10,000,000, benches/orders_generate.sql);
# for each of ROUNDS rounds (default 2), doppel (DOPPEL, default target/release/doppel, built
# beforehand) runs benches/run.sh's ALTER on the idle table, restored before each run, without
# and then with --copy-origin. Prints per run the WAL sender's CPU time (user + system, s, read
# from /proc every 0.5 s: the last sample before it exits), the wall time and doppel's phases.
ROWS=${1:-10000000}; ROUNDS=${2:-2}
DOPPEL_BIN=${DOPPEL:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/doppel}
H=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$H/lib/cluster.sh"
# As benches/run.sh's (max_replication_slots and max_wal_senders keep their default, 10).
private_cluster origin "-c wal_level=logical -c shared_buffers=2GB -c max_wal_size=8GB"
export PGOPTIONS="-c client_min_messages=warning" PGHOST=$D PGPORT=$PORT PGUSER=postgres
psql -XAtq -d postgres -c "CREATE DATABASE bench"
P="psql -XAtq -v ON_ERROR_STOP=1 -d bench"
$P -v rows="$ROWS" -f $H/orders_generate.sql >/dev/null
now() { date +%s.%N; }
el() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
restore() { $P -f $H/orders_restore.sql >/dev/null; sync; }
DSN="host=127.0.0.1 port=$PORT user=postgres dbname=bench"
run() {
  local tag=$1 t0 t1 sp; shift; restore
  # This cluster's WAL senders only: children of its postmaster.
  ( while true; do for w in $(pgrep -P "$(head -n 1 "$D/data/postmaster.pid")" -f 'walsender'); do
      awk -v p=$w '{ print p, ($14 + $15) / 100 }' /proc/$w/stat 2>/dev/null; done; sleep 0.5; done ) >"$D/$tag.ws" &
  sp=$!
  t0=$(now)
  NO_COLOR=1 "$DOPPEL_BIN" run --dsn "$DSN" --table public.orders --alter "ALTER COLUMN customer_id TYPE bigint" --execute \
    --progress lines --status-interval 1 --work-dir "$D" --rollback-dir "$D" "$@" >"$D/$tag.out" 2>"$D/$tag.err"
  t1=$(now); kill $sp
  echo "$tag: walsender CPU $(tail -n 1 "$D/$tag.ws" | awk '{ print $2 }') s"
  echo "$tag: wall $(el $t0 $t1) s; $(sed -n 2,9p "$D/$tag.out" | tr -s ' ' | tr '\n' ';')"
}
for r in $(seq 1 "$ROUNDS"); do
  run "without$r"; run "origin$r" --copy-origin
done
