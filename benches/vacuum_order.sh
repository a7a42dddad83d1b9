#!/usr/bin/env bash
# benches/vacuum_order.sh [ROWS]: the shadow's VACUUM before its index builds against after
# them (issue 17; BENCHMARKS.md "VACUUM before the index builds"). A private PostgreSQL 15
# cluster in a temp dir (removed at exit; run as root, the server runs as 'postgres'). For each
# variant, twice in alternating order: ROWS rows (default 10,000,000, benches/orders_generate.sql)
# copied by INSERT .. SELECT into the ALTER's target shape (hint bits unset, as after doppel's
# copy), sync and CHECKPOINT, then
#   after:  primary key, 2 indexes, VACUUM (ANALYZE)   (doppel's order)
#   before: VACUUM, primary key, 2 indexes, ANALYZE
# with maintenance_work_mem 1GB; prints each statement's wall time (s) and the sum.
set -euo pipefail
ROWS=${1:-10000000}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${DOPPEL_PG_BINDIR:-/usr/lib/postgresql/15/bin}
D=$(mktemp -d /tmp/doppel-vo.XXXXXX)
chown postgres "$D"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
stop() { su postgres -c "$BIN/pg_ctl -D $D/data stop -m fast" >/dev/null 2>&1 || true; rm -rf "$D"; }
trap stop EXIT
su postgres -c "$BIN/initdb -D $D/data -A trust" >/dev/null
su postgres -c "$BIN/pg_ctl -D $D/data -o '-p $PORT -k $D -c shared_buffers=2GB -c max_wal_size=8GB -c autovacuum=off -c wal_level=logical' -l $D/log start" >/dev/null
P="psql -h $D -p $PORT -U postgres -X -q -A -t -v ON_ERROR_STOP=1"
export PGOPTIONS="-c client_min_messages=warning"
$P -v rows="$ROWS" -f "$HERE/orders_generate.sql" >/dev/null
$P -c "CREATE TABLE orders AS SELECT * FROM bench.orders_pristine"; $P -c "ALTER TABLE orders ADD PRIMARY KEY (id)"; $P -c "VACUUM ANALYZE orders"
secs() { local a b; a=$(date +%s.%N); $P -c "$1" >/dev/null; b=$(date +%s.%N); awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", b - a }'; }
fresh() {
  $P -c "DROP TABLE IF EXISTS c; CREATE TABLE c (id bigint NOT NULL, customer_id bigint NOT NULL, status text NOT NULL,
         amount numeric(12,2) NOT NULL, note text, created_at timestamptz NOT NULL) WITH (autovacuum_enabled = false)"
  $P -c "INSERT INTO c SELECT id, customer_id::bigint, status, amount, note, created_at FROM orders"
  sync; $P -c "CHECKPOINT"
}
M="SET maintenance_work_mem = '1GB';"
for round in 1 2; do
  for v in after before; do
    fresh
    if [[ $v == after ]]; then
      pk=$(secs "$M ALTER TABLE c ADD PRIMARY KEY (id)")
      i1=$(secs "$M CREATE INDEX c_cust ON c (customer_id)")
      i2=$(secs "$M CREATE INDEX c_created ON c (created_at)")
      va=$(secs "VACUUM (ANALYZE) c")
      echo "round $round vacuum after: pk $pk i1 $i1 i2 $i2 vacuum(analyze) $va total $(awk -v a=$pk -v b=$i1 -v c=$i2 -v d=$va 'BEGIN{printf "%.2f",a+b+c+d}')"
    else
      va=$(secs "VACUUM c")
      pk=$(secs "$M ALTER TABLE c ADD PRIMARY KEY (id)")
      i1=$(secs "$M CREATE INDEX c_cust ON c (customer_id)")
      i2=$(secs "$M CREATE INDEX c_created ON c (created_at)")
      an=$(secs "ANALYZE c")
      echo "round $round vacuum before: vacuum $va pk $pk i1 $i1 i2 $i2 analyze $an total $(awk -v a=$pk -v b=$i1 -v c=$i2 -v d=$va -v e=$an 'BEGIN{printf "%.2f",a+b+c+d+e}')"
    fi
    $P -c "CHECKPOINT"
  done
done
