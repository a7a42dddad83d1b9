#!/usr/bin/env bash
# benches/verify_parallel.sh: what parallel query workers in doppel's verification cost the
# application (issue 17; docs/design.md §1.6, --verify-parallel-workers).
#
#   benches/verify_parallel.sh DSN [ROWS] [SECONDS]
#
# DSN names a server you own for the test (it creates and drops public.vp_a, public.vp_b and
# public.vp_w). ROWS (default 2,000,000) rows are generated like benches/orders_generate.sql.
# For each setting of max_parallel_workers_per_gather (2, the server's default, then 0, twice
# each), two sessions compare the two tables with the verification's chunk statement
# (count and bit_xor of hash_record_extended over 250,000-key ranges, in a loop) for SECONDS
# (default 20) while pgbench writes 300 tx/s with 4 clients into a third table; prints the
# writer's p50, p99 and max latency (pgbench's, schedule lag included) per setting.
set -euo pipefail
DSN=${1:?usage: benches/verify_parallel.sh DSN [ROWS] [SECONDS]}
ROWS=${2:-2000000}
SECS=${3:-20}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
q() { psql "$DSN" -qXAt -v ON_ERROR_STOP=1 -c "$1"; }

q "DROP TABLE IF EXISTS vp_a, vp_b, vp_w"
q "CREATE TABLE vp_a AS SELECT i AS id, (random()*100000)::int AS customer_id,
     (ARRAY['pending','paid','shipped','refunded'])[1+(i%4)] AS status,
     (random()*1000)::numeric(12,2) AS amount, md5(i::text) || md5((i*7)::text) AS note,
     now() - (i || ' seconds')::interval AS created_at
   FROM generate_series(1, $ROWS) i"
q "ALTER TABLE vp_a ADD PRIMARY KEY (id)"
q "CREATE TABLE vp_b AS SELECT * FROM vp_a"
q "ALTER TABLE vp_b ADD PRIMARY KEY (id)"
q "CREATE TABLE vp_w (id bigserial PRIMARY KEY, customer_id int NOT NULL, status text NOT NULL,
     amount numeric(12,2) NOT NULL, note text, created_at timestamptz NOT NULL DEFAULT now())"
q "INSERT INTO vp_w (customer_id, status, amount, note)
   SELECT i, 'pending', 1, md5(i::text) FROM generate_series(1, 100000) i"
q "ANALYZE vp_a; ANALYZE vp_b; ANALYZE vp_w"
sed 's/\borders\b/vp_w/g' "$HERE/writer.pgbench.sql" >"$WORK/writer.sql"

# Compares `table` ($1) chunk by chunk with `workers` ($2) parallel workers per query until
# the deadline ($3, epoch seconds).
compare_loop() {
  local table=$1 workers=$2 deadline=$3 sql lo
  while (( $(date +%s) < deadline )); do
    sql="SET max_parallel_workers_per_gather = $workers;"
    for (( lo = 0; lo < ROWS; lo += 250000 )); do
      sql+=" SELECT count(*), coalesce(bit_xor(hash_record_extended(ROW(s.id, s.customer_id::bigint,
               s.status, s.amount, s.note, s.created_at), 0)), 0)
             FROM $table s WHERE s.id > $lo AND s.id <= $lo + 250000;"
    done
    psql "$DSN" -qX -c "$sql" >/dev/null
  done
}

for workers in 2 0 2 0; do
  deadline=$(( $(date +%s) + SECS ))
  compare_loop vp_a "$workers" "$deadline" &
  compare_loop vp_b "$workers" "$deadline" &
  pgbench "$DSN" -n -c 4 -j 2 -R 300 -T $(( SECS - 2 )) -D rows=100000 \
    -f "$WORK/writer.sql" -l --log-prefix="$WORK/w$workers" >/dev/null 2>&1
  wait
  cat "$WORK"/w"$workers".* | awk -v w="$workers" '{ print $3 / 1000 }' | sort -n | awk -v w="$workers" '
    { v[NR] = $1 }
    END { printf "max_parallel_workers_per_gather=%s: %d transactions, p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
                 w, NR, v[int(NR / 2) + 1], v[int(NR * 0.99) + 1], v[NR] }'
  rm -f "$WORK"/w"$workers".*
done
q "DROP TABLE vp_a, vp_b, vp_w"
