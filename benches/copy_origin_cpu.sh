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
NEW=${DOPPEL:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/doppel}
BIN=${DOPPEL_PG_BINDIR:-/usr/lib/postgresql/15/bin}; export PATH=$BIN:$PATH
H=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
D=$(mktemp -d /tmp/doppel-origin.XXXXXX); chown postgres "$D"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
stop() { su postgres -c "$BIN/pg_ctl -D $D/data stop -m fast" >/dev/null 2>&1 || true; rm -rf "$D"; }
trap stop EXIT
su postgres -c "$BIN/initdb -D $D/data -U postgres --auth=trust -E UTF8 --locale=C" >/dev/null
cat >>"$D/data/postgresql.conf" <<CONF
wal_level = logical
shared_buffers = 2GB
max_wal_size = 8GB
max_replication_slots = 10
max_wal_senders = 10
CONF
su postgres -c "$BIN/pg_ctl -D $D/data -o '-p $PORT -k $D' -l $D/log start" >/dev/null
export PGOPTIONS="-c client_min_messages=warning" PGHOST=$D PGPORT=$PORT PGUSER=postgres
psql -XAtq -d postgres -c "CREATE DATABASE bench"
P="psql -XAtq -v ON_ERROR_STOP=1 -d bench"
$P -v rows="$ROWS" -f $H/orders_generate.sql >/dev/null
now() { date +%s.%N; }
el() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
restore() { $P -f $H/orders_restore.sql >/dev/null; sync; }
DSN="host=127.0.0.1 port=$PORT user=postgres dbname=bench"
run() {
  local bin=$1 tag=$2 t0 t1 sp; shift 2; restore
  # This cluster's WAL senders only: children of its postmaster.
  ( while true; do for w in $(pgrep -P "$(head -n 1 "$D/data/postmaster.pid")" -f 'walsender'); do
      awk -v p=$w '{ print p, ($14 + $15) / 100 }' /proc/$w/stat 2>/dev/null; done; sleep 0.5; done ) >"$D/$tag.ws" &
  sp=$!
  t0=$(now)
  NO_COLOR=1 $bin run --dsn "$DSN" --table public.orders --alter "ALTER COLUMN customer_id TYPE bigint" --execute \
    --progress lines --status-interval 1 --work-dir "$D" --rollback-dir "$D" "$@" >"$D/$tag.out" 2>"$D/$tag.err"
  t1=$(now); kill $sp
  echo "$tag: walsender CPU $(tail -n 1 "$D/$tag.ws" | awk '{ print $2 }') s"
  echo "$tag: wall $(el $t0 $t1) s; $(sed -n 2,9p "$D/$tag.out" | tr -s ' ' | tr '\n' ';')"
}
for r in $(seq 1 "$ROUNDS"); do
  run "$NEW" "without$r"; run "$NEW" "origin$r" --copy-origin
done
