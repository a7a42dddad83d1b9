#!/usr/bin/env bash
# benches/ab.sh [--load] ROWS ROUNDS "FLAGS A" "FLAGS B": two sets of doppel flags compared in
# alternating runs (A, B, A, B, ...), so that a machine whose speed drifts over the minutes
# (this one does) weighs on both alike. A private cluster in a temp dir (removed at exit; run as
# root, the server runs as 'postgres'; server binaries from DOPPEL_PG_BINDIR, default PostgreSQL
# 15's), configured as benches/run.sh's. ROWS rows (benches/orders_generate.sql), restored before
# each run; doppel (DOPPEL, default target/release/doppel, built beforehand) runs benches/run.sh's
# ALTER with the extra FLAGS (split on spaces; "" for none).
#
# With --load, benches/run.sh's writer runs through each migration (pgbench -R 1000 -c 8 -j 2,
# benches/writer.pgbench.sql; the server's pgbench, else PostgreSQL 15's), started 5 s before
# doppel and stopped when it ends.
#
# Prints per run: the WAL sender's CPU time (user + system, s, read from /proc every 0.5 s: the
# last sample before it exits), what its decoding spilled to disk (pg_stat_replication_slots,
# sampled likewise), the wall time and doppel's phases, and with --load the writer's
# transactions and p50 / p99 / max latency (ms, from the scheduled start) during the migration.
LOAD=0; [[ ${1:-} == --load ]] && { LOAD=1; shift; }
ROWS=${1:-10000000}; ROUNDS=${2:-2}; FLAGS_A=${3:-}; FLAGS_B=${4:-}
DOPPEL_BIN=${DOPPEL:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/doppel}
H=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$H/lib/cluster.sh"
# As benches/run.sh's (max_replication_slots and max_wal_senders keep their default, 10).
private_cluster ab "-c wal_level=logical -c shared_buffers=2GB -c max_wal_size=8GB"
export PGOPTIONS="-c client_min_messages=warning" PGHOST=$D PGPORT=$PORT PGUSER=postgres
psql -XAtq -d postgres -c "CREATE DATABASE bench"
P="psql -XAtq -v ON_ERROR_STOP=1 -d bench"
$P -v rows="$ROWS" -f $H/orders_generate.sql >/dev/null
now() { date +%s.%N; }
el() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
restore() { $P -f $H/orders_restore.sql >/dev/null; sync; }
DSN="host=127.0.0.1 port=$PORT user=postgres dbname=bench"
# The server's pgbench, else PostgreSQL 15's (a client of any server version).
PGBENCH=$BIN/pgbench; [[ -x $PGBENCH ]] || PGBENCH=/usr/lib/postgresql/15/bin/pgbench

# The writer's latency (ms) in its per-transaction logs between epoch seconds $1 and $2.
writer_latency() {
  cat "$D"/pgbench_log.* | awk -v a="$1" -v b="$2" '$5 + $6 / 1e6 >= a && $5 + $6 / 1e6 < b { print $3 / 1000 }' |
    sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) { print "no transactions"; exit }
      printf "%d tx, p50 %.2f, p99 %.2f, max %.2f ms", NR, v[int(NR * 0.5) + 1], v[int(NR * 0.99) + 1], v[NR] }'
}

run() {
  local tag=$1 t0 t1 sampler spiller writer; shift; restore
  rm -f "$D"/pgbench_log.*
  if ((LOAD)); then
    (cd "$D" && exec "$PGBENCH" -n -c 8 -j 2 -R 1000 -T 100000 -f "$H/writer.pgbench.sql" \
      -D rows="$ROWS" --log --log-prefix=pgbench_log bench >"$D/pgbench.out" 2>&1) &
    writer=$!
    sleep 5
  fi
  # This cluster's WAL senders only: children of its postmaster.
  ( while true; do for w in $(pgrep -P "$(head -n 1 "$D/data/postmaster.pid")" -f 'walsender'); do
      awk -v p=$w '{ print p, ($14 + $15) / 100 }' /proc/$w/stat 2>/dev/null; done; sleep 0.5; done ) >"$D/$tag.ws" &
  sampler=$!
  # What the slot's decoding spilled to disk (pg_stat_replication_slots, PostgreSQL 14+; the
  # stats go with the slot at the end of the run, so the last sample is kept).
  ( while true; do psql -XAtq -d bench -c "SELECT coalesce(sum(spill_txns), 0), coalesce(sum(spill_bytes), 0)
      FROM pg_stat_replication_slots" 2>/dev/null | awk -F'|' 'NF == 2 && $1 > 0 { print }'; sleep 0.5; done ) >"$D/$tag.spill" &
  spiller=$!
  t0=$(now)
  NO_COLOR=1 "$DOPPEL_BIN" run --dsn "$DSN" --table public.orders --alter "ALTER COLUMN customer_id TYPE bigint" --execute \
    --progress lines --status-interval 1 --work-dir "$D" --rollback-dir "$D" "$@" >"$D/$tag.out" 2>"$D/$tag.err" ||
    { tail -n 5 "$D/$tag.err"; echo "$tag: doppel failed"; }
  t1=$(now); kill $sampler $spiller
  if ((LOAD)); then
    # SIGINT, then SIGTERM: a script started without job control (nohup, cron) starts its
    # background jobs with SIGINT ignored.
    pkill -INT -P "$writer" pgbench 2>/dev/null; kill -INT "$writer" 2>/dev/null
    for _ in $(seq 20); do kill -0 "$writer" 2>/dev/null || break; sleep 0.1; done
    kill -TERM "$writer" 2>/dev/null; wait "$writer" 2>/dev/null
    echo "$tag: writer during the migration: $(writer_latency "$t0" "$t1")"
  fi
  echo "$tag: walsender CPU $(tail -n 1 "$D/$tag.ws" | awk '{ print $2 }') s"
  echo "$tag: decoding spilled $(tail -n 1 "$D/$tag.spill" | awk -F'|' '{ printf "%d transactions, %.1f MiB", $1, $2 / 1048576 } END { if (NR == 0) print "nothing" }')"
  echo "$tag: wall $(el $t0 $t1) s; $(sed -n 2,9p "$D/$tag.out" | tr -s ' ' | tr '\n' ';')"
}
echo "A: ${FLAGS_A:-(no extra flags)}; B: ${FLAGS_B:-(no extra flags)}; $ROWS rows, $ROUNDS rounds$( ((LOAD)) && echo ', under the writer')"
for r in $(seq 1 "$ROUNDS"); do
  # shellcheck disable=SC2086
  run "A$r" $FLAGS_A; run "B$r" $FLAGS_B
done
