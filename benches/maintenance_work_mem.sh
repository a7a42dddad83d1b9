#!/usr/bin/env bash
# benches/maintenance_work_mem.sh [ROWS]: the shadow's index builds (primary key + the 2
# indexes of benches/orders_generate.sql) under maintenance_work_mem 64MB, 256MB and 1GB,
# twice in alternating order, on ROWS rows (10,000,000 by default) copied into the ALTER's
# target shape, after the copy's hint bits are set and a CHECKPOINT, so that no setting pays
# for what an earlier build did. A private cluster in a temp dir, removed at exit; run as root
# (the server runs as 'postgres'). Server binaries: DOPPEL_PG_BINDIR or PostgreSQL 15's.
set -euo pipefail
ROWS=${1:-10000000}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib/cluster.sh"
private_cluster mwm "-c shared_buffers=2GB -c max_wal_size=8GB -c autovacuum=off"
P="psql -h $D -p $PORT -U postgres -X -q -A -t -v ON_ERROR_STOP=1"
$P -v rows="$ROWS" -f "$HERE/orders_generate.sql" >/dev/null
$P -c "CREATE TABLE c (id bigint NOT NULL, customer_id bigint NOT NULL, status text NOT NULL,
         amount numeric(12,2) NOT NULL, note text, created_at timestamptz NOT NULL)
         WITH (autovacuum_enabled = false)"
$P -c "INSERT INTO c SELECT * FROM bench.orders_pristine"
$P -c "SELECT count(*) FROM c" >/dev/null
secs() { local a b; a=$(date +%s.%N); $P -c "$1" >/dev/null; b=$(date +%s.%N); awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", b - a }'; }
for round in 1 2; do
  for m in 64MB 256MB 1GB; do
    $P -c "ALTER TABLE c DROP CONSTRAINT IF EXISTS c_pkey; DROP INDEX IF EXISTS c_cust, c_created; CHECKPOINT" 2>/dev/null
    pk=$(secs "SET maintenance_work_mem = '$m'; ALTER TABLE c ADD PRIMARY KEY (id)")
    i1=$(secs "SET maintenance_work_mem = '$m'; CREATE INDEX c_cust ON c (customer_id)")
    i2=$(secs "SET maintenance_work_mem = '$m'; CREATE INDEX c_created ON c (created_at)")
    echo "round $round maintenance_work_mem $m: pk $pk + customer_id $i1 + created_at $i2 = $(awk -v a="$pk" -v b="$i1" -v c="$i2" 'BEGIN { printf "%.2f", a + b + c }') s"
  done
done
