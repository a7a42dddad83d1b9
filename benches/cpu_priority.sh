#!/usr/bin/env bash
# benches/cpu_priority.sh [ROWS] [SECONDS]: does lowering the CPU priority of the sessions that
# do doppel's reading spare the application's writer? (issue 17, pacing; BENCHMARKS.md
# "CPU priority of doppel's sessions").
#
# A private PostgreSQL 15 cluster in a temp dir (removed at exit; run as root, the server runs
# as 'postgres'; parallel query off, as doppel's verification runs by default). Two tables of
# ROWS rows (default 2,000,000) of benches/orders_generate.sql; two sessions compare them with
# verification's chunk statement (count and bit_xor of hash_record_extended over 250,000-key
# ranges) in a loop for SECONDS (default 20) while pgbench writes 1,000 tx/s with 8 clients
# (benches/writer.pgbench.sql) into a third table. The comparing sessions run, in turn:
#   none    not at all (the writer alone);
#   normal  at the server's priority;
#   nice19  at nice 19, set by the session itself through the prioritize extension
#           (set_backend_priority(pg_backend_pid(), 19); Debian postgresql-15-prioritize,
#           installed if missing);
#   idle    under the SCHED_IDLE policy (chrt -i, run by the session itself through
#           COPY .. TO PROGRAM), which the kernel preempts as soon as any other task wakes.
# Prints the writer's transactions, p50, p99 and max latency (ms, pgbench's, schedule lag
# included) per round.
set -euo pipefail
ROWS=${1:-2000000}
SECS=${2:-20}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ ! -f /usr/share/postgresql/15/extension/prioritize.control ]]; then
  apt-get install -y -q postgresql-15-prioritize >/dev/null
fi
. "$HERE/lib/cluster.sh"
OPTS="-c shared_buffers=2GB -c max_wal_size=8GB -c wal_level=logical"
private_cluster prio "$OPTS -c max_parallel_workers_per_gather=0"
DSN="host=$D port=$PORT user=postgres dbname=postgres"
export PGOPTIONS="-c client_min_messages=warning"
q() { psql "$DSN" -qXAt -v ON_ERROR_STOP=1 -c "$1" >/dev/null; }

q "CREATE EXTENSION prioritize"
psql "$DSN" -qXAt -v ON_ERROR_STOP=1 -v rows="$ROWS" -f "$HERE/orders_generate.sql" >/dev/null
q "CREATE TABLE cp_a AS SELECT * FROM bench.orders_pristine"
q "ALTER TABLE cp_a ADD PRIMARY KEY (id)"
q "CREATE TABLE cp_b AS SELECT * FROM cp_a"
q "ALTER TABLE cp_b ADD PRIMARY KEY (id)"
q "CREATE TABLE cp_w (id bigserial PRIMARY KEY, customer_id int NOT NULL, status text NOT NULL,
     amount numeric(12,2) NOT NULL, note text, created_at timestamptz NOT NULL DEFAULT now())"
q "INSERT INTO cp_w (customer_id, status, amount, note)
   SELECT i, 'pending', 1, md5(i::text) FROM generate_series(1, 100000) i"
for t in cp_a cp_b cp_w; do q "VACUUM ANALYZE $t"; done
q "CHECKPOINT"
sed 's/\borders\b/cp_w/g' "$HERE/writer.pgbench.sql" >"$D/writer.sql"

# The statement a comparing session runs first in each connection to take its priority.
lower() {
  case $1 in
    nice19) echo "SELECT set_backend_priority(pg_backend_pid(), 19);" ;;
    idle) echo "DO \$\$ BEGIN EXECUTE format('COPY (SELECT 1) TO PROGRAM %L',
            'cat >/dev/null; chrt -i -p 0 ' || pg_backend_pid()); END \$\$;" ;;
    *) echo "" ;;
  esac
}

# Compares `table` ($1) chunk by chunk at priority `mode` ($2) until the deadline ($3, epoch s).
compare_loop() {
  local table=$1 mode=$2 deadline=$3 sql lo
  while (( $(date +%s) < deadline )); do
    sql=$(lower "$mode")
    for (( lo = 0; lo < ROWS; lo += 250000 )); do
      sql+=" SELECT count(*), coalesce(bit_xor(hash_record_extended(ROW(s.id, s.customer_id::bigint,
               s.status, s.amount, s.note, s.created_at), 0)), 0)
             FROM $table s WHERE s.id > $lo AND s.id <= $lo + 250000;"
    done
    psql "$DSN" -qX -v ON_ERROR_STOP=1 -c "$sql" >/dev/null
  done
}

for mode in none normal nice19 idle normal nice19 idle none; do
  deadline=$(( $(date +%s) + SECS ))
  if [[ $mode != none ]]; then
    compare_loop cp_a "$mode" "$deadline" &
    compare_loop cp_b "$mode" "$deadline" &
  fi
  pgbench "$DSN" -n -c 8 -j 2 -R 1000 -T $(( SECS - 2 )) -D rows=100000 \
    -f "$D/writer.sql" -l --log-prefix="$D/w" >/dev/null 2>&1
  wait
  cat "$D"/w.* | awk '{ print $3 / 1000 }' | sort -n | awk -v m="$mode" '
    { v[NR] = $1 }
    END { printf "comparing sessions %-6s: %d transactions, p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
                 m, NR, v[int(NR / 2) + 1], v[int(NR * 0.99) + 1], v[NR] }'
  rm -f "$D"/w.*
done
