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
. "$HERE/lib/cluster.sh"
private_cluster vo "-c shared_buffers=2GB -c max_wal_size=8GB -c autovacuum=off -c wal_level=logical"
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
# Times each labelled statement ("label=SQL" arguments) in turn; prints them and their sum.
steps() {
  local line="" total=0 t
  for step in "$@"; do
    t=$(secs "${step#*=}")
    line+=" ${step%%=*} $t"
    total=$(awk -v a="$total" -v b="$t" 'BEGIN { printf "%.2f", a + b }')
  done
  echo "$line total $total"
}
builds=("pk=$M ALTER TABLE c ADD PRIMARY KEY (id)" "i1=$M CREATE INDEX c_cust ON c (customer_id)"
        "i2=$M CREATE INDEX c_created ON c (created_at)")
for round in 1 2; do
  fresh; echo "round $round vacuum after:$(steps "${builds[@]}" "vacuum(analyze)=VACUUM (ANALYZE) c")"
  $P -c "CHECKPOINT"
  fresh; echo "round $round vacuum before:$(steps "vacuum=VACUUM c" "${builds[@]}" "analyze=ANALYZE c")"
  $P -c "CHECKPOINT"
done
