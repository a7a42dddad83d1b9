#!/usr/bin/env bash
# benches/run.sh: the side-by-side benchmark of issue 5, in one run on a fresh private cluster.
#
#   benches/run.sh [--rows N] [options]          (10,000,000 rows by default; see --help)
#
# On the benchmark table (benches/orders_generate.sql: orders, 10M rows, bigserial PK, indexes on
# customer_id and created_at) it times, each on a freshly restored table:
#   a. the locking ALTER TABLE orders ALTER COLUMN customer_id TYPE bigint
#   b. pg_repack -t orders (Debian package postgresql-<major>-repack, installed if missing)
#   c. the physical floor: CREATE TABLE AS SELECT * + ADD PRIMARY KEY + 2 x CREATE INDEX
#   d. doppel run --execute (same ALTER), with its per-phase times
#   e. the same doppel run under a steady pgbench write load (fixed rate): wall time, changes
#      applied, apply rate, lag, lock hold, writer p50/p99/max before vs during, writer
#      errors, doppel's peak RSS
#   d2. with --resumable-cost: the same doppel run with --resumable (permanent slot, durable
#      checkpoint of every chunk and applied batch), on a freshly restored idle table: the
#      checkpoint's overhead
#   e2. with --pacing: the probe write of --max-write-latency timed by pgbench while only the
#      writer runs (idle probe p50/p99), then the run of e again with --max-write-latency set
#      to 2x the idle probe's p99: writer p50/p99/max per phase and run time, paced vs unpaced
#   f. prints the ratios and writes them to BENCHMARKS.md (one section per --rows value),
#      plus one line listing doppel's peak RSS for every --rows section in the file.
# With --means, also what each means of doppel's bulk path buys, on the idle table:
#   m1. plain SQL, one session, the same chunks both ways: copying into a table that already
#       has its PK + 2 indexes vs copying into a bare table and building them after (doppel)
#   m2. doppel run --execute --copy-workers 1 vs the default 2 (parallel chunk workers)
#   m3. --chunk-time 500 and 2000 vs the default 100 (chunks sized by time)
#   m4. during every doppel run: the WAL doppel's slot retains at its peak (sampled every
#       second) vs the peak size of the spool file doppel writes instead, and the WAL written
#       during the run (what the slot would hold if nothing consumed it until the end)
#   m5. the PK + 2 index builds of m1 again without parallel maintenance workers (as a paced
#       run builds) and with maintenance_work_mem 64MB instead of doppel's 1GB
#   m6. the whole table by INSERT .. SELECT vs COPY TO STDOUT piped into COPY FROM STDIN
#       (binary, two sessions)
#   m8. the m1 chunks by TID range (TID Range Scan, heap order) vs by primary-key range, and
#       doppel run --chunk-by tid vs the default --chunk-by key
#   m9. the whole table into an UNLOGGED table then SET LOGGED vs into a logged one (time, WAL)
#   m10. the 2 secondary index builds and a verification-shaped hash pass over both tables,
#       one after the other vs at the same time in two sessions
#   m7. on PostgreSQL 16+: doppel run --no-copy-origin (the WAL sender decodes the copied rows
#       and discards them) vs the default (copy sessions under replication origins, stream
#       origin 'none')
# With --apply-workers "1 2 4", also the parallel apply side by side (issue 17): one run under
# the writer per value of --apply-workers, each on a freshly restored table with its own
# baseline; doppel is held (--throttle-flag-file) for --apply-hold seconds at its start so the
# stream piles up a backlog the catch-up then applies (the copy of a 1M-3M row table alone
# leaves too small a backlog to time).
# With --partitioned, only the partitioned case instead (benches/partitioned.sh): the locking
# ALTER on a partitioned table of N rows in 24 monthly partitions vs doppel on the same tree.
# The cluster lives in a temp dir and is stopped and removed on any exit. Logs of the run are
# kept in target/bench-results/<date>-<rows>/.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: benches/run.sh [options]
  --rows N            rows in the generated orders table (default 10000000)
  --rate R            pgbench fixed rate, transactions/s, for the load run (default 1000)
  --clients C         pgbench clients (default 8; 4 cannot sustain 1000 tx/s here: ~4 ms commits)
  --jobs J            pgbench threads (default 2)
  --baseline-secs S   seconds of load measured before doppel starts (default 20)
  --port P            cluster port (default: a free 127.0.0.1 port)
  --no-repack         skip pg_repack
  --no-load           skip the run under load (e)
  --means             also measure what each means of the bulk path buys (build indexes
                      after the copy, parallel copy workers, chunk time, spooling instead
                      of retaining WAL): 3 more doppel runs and 2 SQL copies
  --resumable-cost    also run doppel with --resumable on the idle table (checkpoint overhead)
  --pacing            also measure doppel's probe write while only the writer runs, then run
                      doppel under the writer with --max-write-latency = 2x the idle probe's
                      p99: writer latency per phase and run time, paced vs unpaced
  --apply-workers "N.."  also run doppel under the writer once per listed --apply-workers
                      value, each held --apply-hold s at its start to build a backlog, and
                      compare the catch-up apply rates
  --apply-hold S      seconds doppel is throttled at its start in those runs (default 20)
  --partitioned       only the partitioned case (benches/partitioned.sh): N rows in 24
                      monthly partitions, the locking ALTER on the parent vs doppel
  --no-write          do not update BENCHMARKS.md
  --out FILE          the markdown file to update (default BENCHMARKS.md at the repo root)
  --doppel-args "A.." more arguments for every doppel run (e.g. "--chunk-by tid"); use with
                      --no-write or --out, as the section replaces the default path's
Environment: DOPPEL_PG_BINDIR (server binaries; default /usr/lib/postgresql/15/bin).
Must run as root or as a user that can run initdb (as root, the cluster runs as 'postgres').
EOF
}

ROWS=10000000
RATE=1000
CLIENTS=8
JOBS=2
BASELINE_SECS=20
WARMUP_SECS=5
TAIL_SECS=5
PORT=""
DO_REPACK=1
DO_LOAD=1
DO_WRITE=1
DO_MEANS=0
DO_RESUMABLE=0
DO_PACING=0
APPLY_WORKERS_LIST=""
APPLY_HOLD=20
DO_PARTITIONED=0
DOPPEL_ARGS=""
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
OUT_MD="$ROOT/BENCHMARKS.md"
INVOCATION="benches/run.sh${*:+ $*}"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --rows) ROWS=${2:?--rows needs a value}; shift 2 ;;
    --rate) RATE=${2:?--rate needs a value}; shift 2 ;;
    --clients) CLIENTS=${2:?--clients needs a value}; shift 2 ;;
    --jobs) JOBS=${2:?--jobs needs a value}; shift 2 ;;
    --baseline-secs) BASELINE_SECS=${2:?--baseline-secs needs a value}; shift 2 ;;
    --port) PORT=${2:?--port needs a value}; shift 2 ;;
    --no-repack) DO_REPACK=0; shift ;;
    --no-load) DO_LOAD=0; shift ;;
    --no-write) DO_WRITE=0; shift ;;
    --means) DO_MEANS=1; shift ;;
    --resumable-cost) DO_RESUMABLE=1; shift ;;
    --pacing) DO_PACING=1; shift ;;
    --apply-workers) APPLY_WORKERS_LIST=${2:?--apply-workers needs a list, e.g. "1 2 4"}; shift 2 ;;
    --apply-hold) APPLY_HOLD=${2:?--apply-hold needs a value}; shift 2 ;;
    --partitioned) DO_PARTITIONED=1; shift ;;
    --out) OUT_MD=${2:?--out needs a value}; shift 2 ;;
    --doppel-args) DOPPEL_ARGS=${2?--doppel-args needs a value}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[[ $DO_PACING -eq 1 || -n $APPLY_WORKERS_LIST ]] && DO_LOAD=1
for n in $APPLY_WORKERS_LIST; do
  [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || { echo "run.sh: --apply-workers takes positive integers: '$n'" >&2; exit 2; }
done
for v in ROWS RATE CLIENTS JOBS BASELINE_SECS APPLY_HOLD; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || { echo "run.sh: --${v,,} must be a positive integer" >&2; exit 2; }
done
[[ -z $PORT || $PORT =~ ^[0-9]+$ ]] || { echo "run.sh: --port must be a number" >&2; exit 2; }

BINDIR=${DOPPEL_PG_BINDIR:-/usr/lib/postgresql/15/bin}
PSQL="$BINDIR/psql"
PGBENCH="$BINDIR/pgbench"
DOPPEL="${CARGO_TARGET_DIR:-$ROOT/target}/release/doppel"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
RESULTS="$ROOT/target/bench-results/$STAMP-$ROWS"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }
now() { date +%s.%N; }
# secs between two `now` values, 3 decimals
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# a / b with 2 decimals, "n/a" when either is missing or b is 0
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

# ---------------------------------------------------------------- cleanup (always runs)
WORK=""
PGDATA=""
PGBENCH_PID=""
SAMPLER_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # stdout may be a pipe whose reader is gone (`run.sh | tee` after Ctrl-C): never die of it here.
  trap '' PIPE
  set +e
  if [[ -n $PGBENCH_PID ]] && kill -0 "$PGBENCH_PID" 2>/dev/null; then
    kill -TERM "$PGBENCH_PID" 2>/dev/null
    wait "$PGBENCH_PID" 2>/dev/null
  fi
  if [[ -n $SAMPLER_PID ]] && kill -0 "$SAMPLER_PID" 2>/dev/null; then
    kill -TERM "$SAMPLER_PID" 2>/dev/null
    wait "$SAMPLER_PID" 2>/dev/null
  fi
  if [[ -n $PGDATA && -f $PGDATA/postmaster.pid ]]; then
    log "stopping the cluster"
    if ! as_pg "$BINDIR/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null 2>&1; then
      local pid
      pid=$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null)
      if [[ $pid =~ ^[0-9]+$ ]]; then
        log "fast shutdown failed: killing postmaster $pid"
        kill -QUIT "$pid" 2>/dev/null
        sleep 2
        kill -KILL "$pid" 2>/dev/null
      fi
    fi
  fi
  if [[ -n $WORK && -d $WORK ]]; then
    mkdir -p "$RESULTS"
    cp "$WORK"/*.out "$WORK"/*.err "$WORK"/*.time "$WORK"/*.txt "$RESULTS"/ 2>/dev/null
    # pgbench's per-transaction logs, for reading the latency apart from the schedule lag.
    compgen -G "$WORK/pgbench_*log.*" >/dev/null &&
      (cd "$WORK" && tar -czf "$RESULTS/pgbench_logs.tar.gz" pgbench_*log.* 2>/dev/null)
    [[ -f $WORK/pglog/server.log ]] && tail -n 300 "$WORK/pglog/server.log" >"$RESULTS/server.log.tail"
    rm -rf "$WORK"
    log "logs kept in ${RESULTS#"$ROOT"/}"
  fi
  if [[ $rc -ne 0 ]]; then
    echo "run.sh: FAILED (exit $rc); the cluster was stopped and removed" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'trap "" PIPE; echo "run.sh: interrupted" >&2; exit 130' INT TERM

# Runs a server binary as the cluster's owner ('postgres' when we are root).
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# ---------------------------------------------------------------- prerequisites
[[ -x $BINDIR/initdb && -x $BINDIR/pg_ctl && -x $BINDIR/postgres ]] \
  || die "no PostgreSQL server binaries in $BINDIR (set DOPPEL_PG_BINDIR)"
[[ -x $PSQL ]] || PSQL=$(command -v psql) || die "psql not found"
[[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench) || die "pgbench not found"
if [[ $(id -u) -eq 0 ]]; then
  id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user for initdb"
fi
PG_MAJOR=$("$BINDIR/postgres" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)?.*/\1/')
APT_UPDATED=0
apt_install() { # package: installs with apt-get when we are root; returns non-zero if impossible
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null || return 1
  if [[ $APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
    APT_UPDATED=1
  fi
  log "apt-get install $1"
  # One retry: a concurrent apt run (another process on the machine) can make the first fail.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null \
    || { sleep 5; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null; }
}
if [[ ! -x /usr/bin/time ]]; then
  apt_install time || die "/usr/bin/time (GNU time) is missing and could not be installed: apt-get install time"
fi
find_repack() {
  local p
  for p in "$BINDIR/pg_repack" /usr/lib/postgresql/"$PG_MAJOR"/bin/pg_repack "$(command -v pg_repack || true)"; do
    [[ -n $p && -x $p ]] && { echo "$p"; return 0; }
  done
  return 1
}
REPACK=""
REPACK_NOTE=""
if [[ $DO_REPACK -eq 1 ]]; then
  if ! REPACK=$(find_repack); then
    apt_install "postgresql-$PG_MAJOR-repack" || true
    REPACK=$(find_repack) || REPACK=""
  fi
  [[ -n $REPACK ]] || REPACK_NOTE="pg_repack skipped: postgresql-$PG_MAJOR-repack is not installed and could not be installed"
else
  REPACK_NOTE="pg_repack skipped (--no-repack)"
fi

log "building doppel (cargo build --release)"
(cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
[[ -x $DOPPEL ]] || die "$DOPPEL was not built"

# ---------------------------------------------------------------- the cluster
WORK=$(mktemp -d "${TMPDIR:-/tmp}/doppel-bench.XXXXXX")
chmod 755 "$WORK"
PGDATA="$WORK/data"
mkdir "$PGDATA" "$WORK/sock" "$WORK/pglog"
[[ $(id -u) -eq 0 ]] && chown postgres: "$PGDATA" "$WORK/sock" "$WORK/pglog"
SERVER_LOG="$WORK/pglog/server.log"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [[ -z $PORT ]]; then
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 30000))
    if port_free "$p"; then PORT=$p; break; fi
  done
  [[ -n $PORT ]] || die "no free port found"
else
  port_free "$PORT" || die "port $PORT is in use"
fi

log "initdb into $PGDATA (port $PORT)"
as_pg "$BINDIR/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C >"$WORK/initdb.out" 2>&1 \
  || { cat "$WORK/initdb.out" >&2; die "initdb failed"; }
cat >>"$PGDATA/postgresql.conf" <<EOF

# benches/run.sh (shared_buffers=2GB, max_wal_size=8GB, fsync on)
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK/sock'
wal_level = logical
shared_buffers = 2GB
max_wal_size = 8GB
fsync = on
max_replication_slots = 10
max_wal_senders = 10
EOF
as_pg "$BINDIR/pg_ctl" -D "$PGDATA" -l "$SERVER_LOG" -w -t 120 start >/dev/null \
  || { tail -n 30 "$SERVER_LOG" >&2; die "the cluster did not start"; }

export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres PGDATABASE=bench
export PGOPTIONS="-c client_min_messages=warning"
DSN="postgres://postgres@127.0.0.1:$PORT/bench"
"$PSQL" -X -q -d postgres -c "CREATE DATABASE bench" >/dev/null
q() { "$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 -c "$1"; }
PG_VERSION=$(q "SHOW server_version")
log "PostgreSQL $PG_VERSION on 127.0.0.1:$PORT"

# Times one SQL statement (wall, psql round trip included); prints the seconds.
time_sql() {
  local t0 t1
  t0=$(now)
  "$PSQL" -X -q -v ON_ERROR_STOP=1 -c "$1" >>"$WORK/sql.out" 2>&1 || { tail -n 5 "$WORK/sql.out" >&2; die "failed: $1"; }
  t1=$(now)
  elapsed "$t0" "$t1"
}
# Times one SQL file (psql -f: each statement its own transaction); prints the seconds.
time_sql_file() {
  local t0 t1
  t0=$(now)
  "$PSQL" -X -q -v ON_ERROR_STOP=1 -f "$1" >>"$WORK/sql.out" 2>&1 || { tail -n 5 "$WORK/sql.out" >&2; die "failed: $1"; }
  t1=$(now)
  elapsed "$t0" "$t1"
}
# Bytes in a readable unit; "n/a" when empty.
fmt_bytes() {
  awk -v b="$1" 'BEGIN {
    if (b == "" || b == "n/a") print "n/a"
    else if (b >= 1073741824) printf "%.2f GiB", b / 1073741824
    else if (b >= 1048576) printf "%.1f MiB", b / 1048576
    else if (b >= 1024) printf "%.1f KiB", b / 1024
    else printf "%d B", b }'
}
# $OUT_MD with the lines from the line $1 to the line $2 replaced by the file $3 (which
# holds both marker lines itself), on stdout.
replaced_section() {
  awk -v b="$1" -v e="$2" -v f="$3" '
    $0 == b { while ((getline line < f) > 0) print line; skip = 1; next }
    $0 == e { skip = 0; next }
    !skip { print }' "$OUT_MD"
}
# a + b (+ c ..) with 3 decimals
sum() { awk 'BEGIN { s = 0; for (i = 1; i < ARGC; i++) s += ARGV[i]; printf "%.3f", s }' "$@"; }

# --means (m4): samples, every second while doppel runs, the WAL its slot retains
# (current - restart_lsn), the WAL not yet confirmed (current - confirmed_flush_lsn) and the
# size of its spool file in --work-dir, into $WORK/wal_<tag>.txt: "time retained unconfirmed spool".
start_sampler() {
  local file="$WORK/wal_$1.txt"
  (
    set +e
    trap - EXIT INT TERM
    while :; do
      s=$("$PSQL" -X -q -A -t -F ' ' -c "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), 0)::bigint,
                 coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)), 0)::bigint
            FROM pg_replication_slots" 2>/dev/null)
      sp=$(stat -c %s "$WORK"/doppel-*.spool 2>/dev/null | sort -n | tail -n 1)
      echo "$(now) ${s:-0 0} ${sp:-0}"
      sleep 1
    done
  ) >"$file" &
  SAMPLER_PID=$!
}
stop_sampler() {
  if [[ -n $SAMPLER_PID ]]; then
    kill -TERM "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
  fi
}

if [[ $DO_PARTITIONED -eq 1 ]]; then
  # shellcheck source=benches/partitioned.sh
  source "$HERE/partitioned.sh"
  exit 0
fi

# ---------------------------------------------------------------- the table
declare -A R
log "generating $ROWS rows (bench.orders_pristine)"
t0=$(now)
"$PSQL" -X -q -v rows="$ROWS" -f "$HERE/orders_generate.sql" >>"$WORK/sql.out" 2>&1 \
  || { tail -n 5 "$WORK/sql.out" >&2; die "generating the table failed"; }
R[generate]=$(elapsed "$t0" "$(now)")
restore() {
  local t0
  t0=$(now)
  "$PSQL" -X -q -f "$HERE/orders_restore.sql" >>"$WORK/sql.out" 2>&1 \
    || { tail -n 5 "$WORK/sql.out" >&2; die "restoring public.orders failed"; }
  log "  public.orders restored ($(elapsed "$t0" "$(now)") s)"
  # The restore leaves GBs of dirty buffers: flushed now, not by a checkpoint in the middle of
  # the next measurement (a 10M run's idle probe once read p99 286 ms against 2 ms for that).
  q "CHECKPOINT" >/dev/null
}
restore
R[heap]=$(q "SELECT pg_size_pretty(pg_relation_size('public.orders'))")
R[total_size]=$(q "SELECT pg_size_pretty(pg_total_relation_size('public.orders'))")
log "table: $ROWS rows, heap ${R[heap]}, with indexes ${R[total_size]} (generated in ${R[generate]} s)"

# ---------------------------------------------------------------- c. physical floor
log "c. physical floor: CREATE TABLE AS + ADD PRIMARY KEY + 2 x CREATE INDEX"
R[floor_ctas]=$(time_sql "CREATE TABLE public.floor_copy AS SELECT * FROM public.orders")
R[floor_pk]=$(time_sql "ALTER TABLE public.floor_copy ADD PRIMARY KEY (id)")
R[floor_idx1]=$(time_sql "CREATE INDEX floor_customer_idx ON public.floor_copy(customer_id)")
R[floor_idx2]=$(time_sql "CREATE INDEX floor_created_idx ON public.floor_copy(created_at)")
R[floor_idx]=$(awk -v a="${R[floor_idx1]}" -v b="${R[floor_idx2]}" 'BEGIN { printf "%.3f", a + b }')
R[floor]=$(awk -v a="${R[floor_ctas]}" -v b="${R[floor_pk]}" -v c="${R[floor_idx]}" 'BEGIN { printf "%.3f", a + b + c }')
log "   CTAS ${R[floor_ctas]} s + PK ${R[floor_pk]} s + indexes ${R[floor_idx]} s = ${R[floor]} s"
q "DROP TABLE public.floor_copy" >/dev/null
q "CHECKPOINT" >/dev/null

# ---------------------------------------------------------------- m1. indexes before or after the copy
# Plain SQL on the still pristine table, one session, the ALTER's target shape (customer_id
# bigint; autovacuum off, as on doppel's shadow). Both ways copy the same id ranges, each range
# its own INSERT .. SELECT and transaction, sized to about 500 ms into the bare table at the
# CTAS rate above (doppel's default --chunk-time): (1) into a table that already has its PK
# + 2 indexes; (2) into the bare table, then PK + 2 indexes built with maintenance_work_mem
# 1GB, as doppel builds them.
if [[ $DO_MEANS -eq 1 ]]; then
  log "m1. copy into a table with its PK + 2 indexes vs copy, then build them (plain SQL, one session)"
  R[m_chunk_rows]=$(awk -v n="$ROWS" -v t="${R[floor_ctas]}" 'BEGIN {
    c = (t > 0) ? int(n / t * 0.5) : n; if (c < 10000) c = 10000; if (c > n) c = n; print c }')
  awk -v n="$ROWS" -v c="${R[m_chunk_rows]}" 'BEGIN {
    for (lo = 0; lo < n; lo += c) { hi = lo + c; if (hi > n) hi = n
      printf "INSERT INTO public.means_copy SELECT * FROM ONLY public.orders WHERE id > %d AND id <= %d;\n", lo, hi } }' \
    >"$WORK/means_chunks.sql"
  R[m_chunks]=$(wc -l <"$WORK/means_chunks.sql")
  means_table="CREATE TABLE public.means_copy (id bigint NOT NULL, customer_id bigint NOT NULL, status text NOT NULL,
    amount numeric(12,2) NOT NULL, note text, created_at timestamptz NOT NULL)
    WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false)"
  q "$means_table" >/dev/null
  q "ALTER TABLE public.means_copy ADD PRIMARY KEY (id)" >/dev/null
  q "CREATE INDEX means_customer_idx ON public.means_copy(customer_id)" >/dev/null
  q "CREATE INDEX means_created_idx ON public.means_copy(created_at)" >/dev/null
  R[m_indexed_copy]=$(time_sql_file "$WORK/means_chunks.sql")
  q "DROP TABLE public.means_copy" >/dev/null
  q "CHECKPOINT" >/dev/null
  q "$means_table" >/dev/null
  R[m_bare_copy]=$(time_sql_file "$WORK/means_chunks.sql")
  R[m_build_pk]=$(time_sql "SET maintenance_work_mem = '1GB'; ALTER TABLE public.means_copy ADD PRIMARY KEY (id)")
  R[m_build_idx1]=$(time_sql "SET maintenance_work_mem = '1GB'; CREATE INDEX means_customer_idx ON public.means_copy(customer_id)")
  R[m_build_idx2]=$(time_sql "SET maintenance_work_mem = '1GB'; CREATE INDEX means_created_idx ON public.means_copy(created_at)")
  R[m_build]=$(sum "${R[m_build_pk]}" "${R[m_build_idx1]}" "${R[m_build_idx2]}")
  R[m_bare_total]=$(sum "${R[m_bare_copy]}" "${R[m_build]}")
  # m5. the same three builds on the same table with other settings: without parallel
  # maintenance workers (what a paced run uses), and with the server's default
  # maintenance_work_mem (64MB) instead of doppel's 1GB.
  build3() { # $1 = settings; prints the seconds of PK + 2 indexes, dropping them first
    q "ALTER TABLE public.means_copy DROP CONSTRAINT IF EXISTS means_copy_pkey; DROP INDEX IF EXISTS public.means_customer_idx, public.means_created_idx" >/dev/null
    sum "$(time_sql "$1; ALTER TABLE public.means_copy ADD PRIMARY KEY (id)")" \
      "$(time_sql "$1; CREATE INDEX means_customer_idx ON public.means_copy(customer_id)")" \
      "$(time_sql "$1; CREATE INDEX means_created_idx ON public.means_copy(created_at)")"
  }
  R[m_mpmw]=$(q "SHOW max_parallel_maintenance_workers")
  R[m_build_serial]=$(build3 "SET maintenance_work_mem = '1GB'; SET max_parallel_maintenance_workers = 0")
  R[m_build_mwm64]=$(build3 "SET maintenance_work_mem = '64MB'")
  log "   index builds: ${R[m_build]} s (1GB, ${R[m_mpmw]} parallel workers); ${R[m_build_serial]} s without parallel workers; ${R[m_build_mwm64]} s with maintenance_work_mem 64MB"
  # m6. INSERT .. SELECT on the server vs COPY out of one session into another (binary), the
  # whole table in one statement each, into the bare table.
  q "DROP TABLE public.means_copy" >/dev/null
  q "$means_table" >/dev/null
  # (binary COPY needs the target's types: customer_id is cast to bigint on both paths)
  # (m9 reads this copy's WAL: pg_current_wal_insert_lsn() before and after)
  wal_now() { q "SELECT pg_current_wal_insert_lsn()"; }
  wal_diff() { q "SELECT pg_wal_lsn_diff('$2', '$1')::bigint"; }
  w0=$(wal_now)
  R[m_insert_all]=$(time_sql "INSERT INTO public.means_copy SELECT id, customer_id::bigint, status, amount, note, created_at FROM ONLY public.orders")
  R[m_insert_wal]=$(wal_diff "$w0" "$(wal_now)")
  q "DROP TABLE public.means_copy" >/dev/null
  q "$means_table" >/dev/null
  t0=$(now)
  "$PSQL" -X -q -v ON_ERROR_STOP=1 -c "COPY (SELECT id, customer_id::bigint, status, amount, note, created_at FROM ONLY public.orders) TO STDOUT (FORMAT binary)" \
    | "$PSQL" -X -q -v ON_ERROR_STOP=1 -c "COPY public.means_copy FROM STDIN (FORMAT binary)" >>"$WORK/sql.out" 2>&1 \
    || die "COPY between two sessions failed"
  R[m_copy_all]=$(elapsed "$t0" "$(now)")
  log "   whole table: INSERT .. SELECT ${R[m_insert_all]} s; COPY TO STDOUT | COPY FROM STDIN (binary) ${R[m_copy_all]} s"
  q "DROP TABLE public.means_copy" >/dev/null
  q "CHECKPOINT" >/dev/null
  # m8. the same number of chunks by TID range (ctid >= '(lo,0)' AND ctid < '(hi,0)': a TID
  # Range Scan, PostgreSQL 14+, reading the heap in physical order) vs by primary-key range
  # (m1's bare copy: an index range scan per chunk), one session, into the bare table.
  R[m_pages]=$(q "SELECT (pg_relation_size('public.orders') / current_setting('block_size')::int)::bigint")
  awk -v p="${R[m_pages]}" -v n="${R[m_chunks]}" 'BEGIN {
    c = int((p + n - 1) / n); if (c < 1) c = 1
    for (lo = 0; lo < p; lo += c) { hi = lo + c
      printf "INSERT INTO public.means_copy SELECT * FROM ONLY public.orders WHERE ctid >= %s AND ctid < %s;\n", "'"'"'(" lo ",0)'"'"'", "'"'"'(" hi ",0)'"'"'" } }' \
    >"$WORK/means_tid_chunks.sql"
  R[m_tid_plan]=$(q "EXPLAIN SELECT * FROM ONLY public.orders WHERE ctid >= '(0,0)' AND ctid < '(100,0)'" | head -n 1 | sed -E 's/ +\(cost.*//; s/^ +//')
  q "$means_table" >/dev/null
  R[m_tid_copy]=$(time_sql_file "$WORK/means_tid_chunks.sql")
  R[m_tid_rows]=$(q "SELECT count(*) FROM public.means_copy")
  q "DROP TABLE public.means_copy" >/dev/null
  q "CHECKPOINT" >/dev/null
  log "   ${R[m_chunks]} chunks by TID range (${R[m_tid_plan]}): ${R[m_tid_copy]} s (${R[m_tid_rows]} rows); by key range ${R[m_bare_copy]} s"
  # m9. an UNLOGGED copy then SET LOGGED (a second full write of the table, into the WAL) vs
  # the logged copy of m6: time and WAL bytes of each (pg_current_wal_insert_lsn() before and after).
  q "${means_table/CREATE TABLE/CREATE UNLOGGED TABLE}" >/dev/null
  w0=$(wal_now)
  R[m_unlogged_copy]=$(time_sql "INSERT INTO public.means_copy SELECT id, customer_id::bigint, status, amount, note, created_at FROM ONLY public.orders")
  w1=$(wal_now)
  R[m_set_logged]=$(time_sql "ALTER TABLE public.means_copy SET LOGGED")
  R[m_unlogged_wal]=$(wal_diff "$w0" "$w1")
  R[m_set_logged_wal]=$(wal_diff "$w1" "$(wal_now)")
  R[m_unlogged_total]=$(sum "${R[m_unlogged_copy]}" "${R[m_set_logged]}")
  log "   whole table logged: ${R[m_insert_all]} s, WAL $(fmt_bytes "${R[m_insert_wal]}"); UNLOGGED ${R[m_unlogged_copy]} s (WAL $(fmt_bytes "${R[m_unlogged_wal]}")) + SET LOGGED ${R[m_set_logged]} s (WAL $(fmt_bytes "${R[m_set_logged_wal]}"))"
  # m10. verification overlapped with the secondary index builds: on the copy of m9 (logged
  # now), PK built first (the verification reads both tables by key), then the 2 indexes
  # and a verification-shaped pass (count and bit_xor of hash_record_extended of every row,
  # original and copy) one after the other vs at the same time in two sessions.
  hash_pass="SELECT (SELECT count(*) FROM ONLY public.orders o), (SELECT bit_xor(hash_record_extended(ROW(o.id, o.customer_id::bigint, o.status, o.amount, o.note, o.created_at), 0)) FROM ONLY public.orders o),
    (SELECT count(*) FROM public.means_copy c), (SELECT bit_xor(hash_record_extended(ROW(c.id, c.customer_id, c.status, c.amount, c.note, c.created_at), 0)) FROM public.means_copy c)"
  two_indexes="SET maintenance_work_mem = '1GB'; CREATE INDEX means_customer_idx ON public.means_copy(customer_id); CREATE INDEX means_created_idx ON public.means_copy(created_at)"
  R[m_ov_pk]=$(time_sql "SET maintenance_work_mem = '1GB'; ALTER TABLE public.means_copy ADD PRIMARY KEY (id)")
  R[m_ov_idx]=$(time_sql "$two_indexes")
  R[m_ov_hash]=$(time_sql "$hash_pass")
  R[m_ov_serial]=$(sum "${R[m_ov_idx]}" "${R[m_ov_hash]}")
  q "DROP INDEX public.means_customer_idx, public.means_created_idx" >/dev/null
  t0=$(now)
  time_sql "$two_indexes" >"$WORK/m10_idx.txt" &
  m10_pid=$!
  R[m_ov_hash_concurrent]=$(time_sql "$hash_pass")
  wait "$m10_pid" || die "m10: the concurrent index builds failed"
  R[m_ov_overlap]=$(elapsed "$t0" "$(now)")
  R[m_ov_idx_concurrent]=$(cat "$WORK/m10_idx.txt")
  log "   2 indexes ${R[m_ov_idx]} s then the hash pass ${R[m_ov_hash]} s = ${R[m_ov_serial]} s; at once ${R[m_ov_overlap]} s (indexes ${R[m_ov_idx_concurrent]} s, hash ${R[m_ov_hash_concurrent]} s)"
  q "DROP TABLE public.means_copy" >/dev/null
  q "CHECKPOINT" >/dev/null
  log "   ${R[m_chunks]} chunk(s) of ${R[m_chunk_rows]} rows: into the indexed table ${R[m_indexed_copy]} s;" \
    "bare ${R[m_bare_copy]} s + PK ${R[m_build_pk]} s + indexes $(sum "${R[m_build_idx1]}" "${R[m_build_idx2]}") s = ${R[m_bare_total]} s" \
    "($(ratio "${R[m_indexed_copy]}" "${R[m_bare_total]}")x)"
fi

# ---------------------------------------------------------------- a. locking ALTER
log "a. ALTER TABLE orders ALTER COLUMN customer_id TYPE bigint (locking)"
R[alter]=$(time_sql "ALTER TABLE public.orders ALTER COLUMN customer_id TYPE bigint")
log "   ${R[alter]} s"

# ---------------------------------------------------------------- b. pg_repack
if [[ -n $REPACK ]]; then
  restore
  if q "CREATE EXTENSION IF NOT EXISTS pg_repack" >>"$WORK/sql.out" 2>&1; then
    log "b. pg_repack -t public.orders"
    t0=$(now)
    if "$REPACK" -h 127.0.0.1 -p "$PORT" -U postgres -d bench -t public.orders >"$WORK/pg_repack.out" 2>"$WORK/pg_repack.err"; then
      R[repack]=$(elapsed "$t0" "$(now)")
      log "   ${R[repack]} s"
    else
      REPACK_NOTE="pg_repack failed: $(tail -n 2 "$WORK/pg_repack.err" | tr '\n' ' ')"
      log "   $REPACK_NOTE"
    fi
  else
    REPACK_NOTE="pg_repack skipped: CREATE EXTENSION pg_repack failed (extension not installed for this server?)"
  fi
fi
[[ -n $REPACK_NOTE ]] && log "b. $REPACK_NOTE"

# ---------------------------------------------------------------- doppel
# Runs doppel on public.orders under /usr/bin/time -v; $1 = tag, further arguments go to
# doppel run. Fills R[<tag>_*]. With --means, samples slot-retained WAL and the spool (m4).
run_doppel() {
  local tag=$1 t0 t1 out="$WORK/doppel_$1.out" err="$WORK/doppel_$1.err" lsn0=""
  shift
  if [[ $DO_MEANS -eq 1 ]]; then
    lsn0=$(q "SELECT pg_current_wal_lsn()")
    start_sampler "$tag"
  fi
  t0=$(now)
  R[${tag}_start]=$t0
  if ! NO_COLOR=1 /usr/bin/time -v -o "$WORK/doppel_$tag.time" \
      "$DOPPEL" run --dsn "$DSN" --table public.orders \
      --alter "ALTER COLUMN customer_id TYPE bigint" --execute \
      --progress lines --status-interval 1 --work-dir "$WORK" --rollback-dir "$WORK" \
      ${DOPPEL_ARGS:+$DOPPEL_ARGS} "$@" \
      >"$out" 2>"$err"; then
    echo "----- doppel stdout" >&2; tail -n 20 "$out" >&2
    echo "----- doppel stderr" >&2; tail -n 20 "$err" >&2
    die "doppel run ($tag) failed"
  fi
  t1=$(now)
  R[${tag}_end]=$t1
  R[${tag}_wall]=$(elapsed "$t0" "$t1")
  if [[ $DO_MEANS -eq 1 ]]; then
    stop_sampler
    R[${tag}_wal_written]=$(q "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')::bigint")
    read -r "R[${tag}_peak_retained]" "R[${tag}_peak_unconfirmed]" "R[${tag}_peak_spool]" "R[${tag}_samples]" < <(awk '
      { if ($2 > r) r = $2; if ($3 > u) u = $3; if ($4 > s) s = $4; n++ }
      END { printf "%d %d %d %d\n", r, u, s, n }' "$WORK/wal_$tag.txt")
  fi
  sed -i 's/\x1b\[[0-9;]*m//g' "$err"
  R[${tag}_total]=$(sed -nE 's/^cutover: lock held .*; total ([0-9.]+) s$/\1/p' "$out")
  R[${tag}_lock_ms]=$(sed -nE 's/^cutover: lock held ([0-9.]+) ms.*/\1/p' "$out")
  R[${tag}_attempts]=$(sed -nE 's/^cutover: lock held .* after ([0-9]+) attempt.*/\1/p' "$out")
  R[${tag}_applied]=$(sed -nE 's/^migrated .*, ([0-9]+) changes applied.*/\1/p' "$out")
  R[${tag}_copied]=$(sed -nE 's/^migrated .*: ([0-9]+) rows copied.*/\1/p' "$out")
  R[${tag}_rss_kb]=$(sed -nE 's/^[[:space:]]*Maximum resident set size \(kbytes\): ([0-9]+)/\1/p' "$WORK/doppel_$tag.time")
  # per-phase lines: "  <phase><padding><secs> s"
  sed -nE 's/^  ([a-z][a-z +-]*[a-z]) +([0-9.]+) s$/\1|\2/p' "$out" >"$WORK/doppel_${tag}_phases.txt"
  R[${tag}_copy]=$(awk -F'|' '$1 == "copy" { print $2 }' "$WORK/doppel_${tag}_phases.txt")
  R[${tag}_chunks]=$(sed -nE 's/.*backfill complete rows=[0-9]+ chunks=([0-9]+).*/\1/p' "$err" | head -n 1)
  # status lines: time of day, Applied, Lag, State -> apply rate and the lag before cutover
  # (a run under a second prints no status line: grep finds nothing, which is not an error)
  { grep -E 'Copy: .*Applied: ' "$err" || true; } | awk '
    {
      if (match($0, /[0-9][0-9]:[0-9][0-9]:[0-9][0-9](\.[0-9]+)?/) == 0) next
      split(substr($0, RSTART, RLENGTH), hms, ":")
      t = hms[1] * 3600 + hms[2] * 60 + hms[3]
      if (n > 0 && t < prev_t) t += 86400
      match($0, /Applied: [0-9]+/); applied = substr($0, RSTART + 9, RLENGTH - 9) + 0
      match($0, /Lag: [^;]*/); lag = substr($0, RSTART + 5, RLENGTH - 5)
      match($0, /State: [^;]*/); state = substr($0, RSTART + 7, RLENGTH - 7)
      # "verifying 500000/752865 rows", "copying (throttled: ..)": the phase alone
      sub(/ \(throttled: .*$/, "", state); sub(/ [0-9]+\/[0-9]+ rows$/, "", state)
      if (n > 0 && state == "catching up" && prev_state == "catching up" && t > prev_t) {
        r = (applied - prev_applied) / (t - prev_t)
        if (r > peak) peak = r
      }
      if (state == "catching up" || state == "verifying" || state == "cutover") last_lag = lag
      # the applier is paused while the secondary indexes build: the first such line holds
      # what the first catch-up applied
      if (state == "building indexes" && first_idx == "") first_idx = applied
      prev_t = t; prev_applied = applied; prev_state = state; n++
    }
    END { printf "%s|%s|%s\n", (peak > 0 ? sprintf("%.0f", peak) : "n/a"), (last_lag == "" ? "n/a" : last_lag), (first_idx == "" ? "n/a" : first_idx) }
  ' >"$WORK/doppel_${tag}_status.txt"
  IFS="|" read -r "R[${tag}_peak_apply]" "R[${tag}_last_lag]" "R[${tag}_catchup_applied]" <"$WORK/doppel_${tag}_status.txt"
  local cu
  cu=$(awk -F'|' '$1 == "catch-up" { print $2 }' "$WORK/doppel_${tag}_phases.txt")
  R[${tag}_catchup_secs]=${cu:-n/a}
  R[${tag}_catchup_rate]=$(awk -v n="${R[${tag}_catchup_applied]}" -v t="${cu:-0}" 'BEGIN { if (n == "n/a" || t + 0 < 0.5) print "n/a"; else printf "%.0f", n / t }')
  local t
  t=$(q "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.orders'::regclass AND attname = 'customer_id'")
  [[ $t == bigint ]] || die "after doppel ($tag) customer_id is '$t', not bigint"
}
print_doppel() {
  local tag=$1
  log "   wall ${R[${tag}_wall]} s (doppel total ${R[${tag}_total]:-?} s), lock held ${R[${tag}_lock_ms]:-?} ms, ${R[${tag}_applied]:-?} changes applied, peak RSS $(( ${R[${tag}_rss_kb]:-0} / 1024 )) MiB"
  while IFS='|' read -r phase secs; do
    printf '      %-24s %8s s\n' "$phase" "$secs"
  done <"$WORK/doppel_${tag}_phases.txt"
  if [[ $DO_MEANS -eq 1 ]]; then
    log "   copy in ${R[${tag}_chunks]:-?} chunks; WAL written during the run $(fmt_bytes "${R[${tag}_wal_written]}"), slot-retained WAL at its peak $(fmt_bytes "${R[${tag}_peak_retained]}"), spool file at its peak $(fmt_bytes "${R[${tag}_peak_spool]}") (${R[${tag}_samples]} samples 1 s apart)"
  fi
}

log "d. doppel run --execute (idle table)"
restore
run_doppel idle
[[ $(q "SELECT count(*) FROM public.orders") -eq $ROWS ]] || die "after doppel (idle) public.orders does not have $ROWS rows"
print_doppel idle

# ---------------------------------------------------------------- d2. --resumable
if [[ $DO_RESUMABLE -eq 1 ]]; then
  log "d2. doppel run --execute --resumable (idle table)"
  restore
  run_doppel res --resumable
  [[ $(q "SELECT count(*) FROM public.orders") -eq $ROWS ]] || die "after doppel (resumable) public.orders does not have $ROWS rows"
  print_doppel res
  log "   checkpoint overhead: --resumable ${R[res_wall]} s vs ${R[idle_wall]} s = $(ratio "${R[res_wall]}" "${R[idle_wall]}")x (copy ${R[res_copy]} s vs ${R[idle_copy]} s)"
fi

# ---------------------------------------------------------------- m2, m3. copy workers, chunk time
# Three more doppel runs on the idle table, each freshly restored, one setting changed from
# the defaults of the run above (--copy-workers 2, --chunk-time 100).
MEANS_RUNS=("w1|--copy-workers 1" "ct500|--chunk-time 500" "ct2000|--chunk-time 2000" "tid|--chunk-by tid")
# m7. on PostgreSQL 16+: --no-copy-origin, the WAL sender decoding the copied rows and
# discarding them (the default there: the copy sessions under replication origins and the
# stream with origin 'none').
[[ $PG_MAJOR -ge 16 ]] && MEANS_RUNS+=("decoded|--no-copy-origin")
if [[ $DO_MEANS -eq 1 ]]; then
  for spec in "${MEANS_RUNS[@]}"; do
    tag=${spec%%|*}
    read -r -a args <<<"${spec#*|}"
    log "m2/m3. doppel run --execute ${args[*]} (idle table)"
    restore
    run_doppel "$tag" "${args[@]}"
    [[ $(q "SELECT count(*) FROM public.orders") -eq $ROWS ]] || die "after doppel ($tag) public.orders does not have $ROWS rows"
    print_doppel "$tag"
  done
fi

# ---------------------------------------------------------------- e. doppel under load
# Latency per window from pgbench's per-transaction logs (--log with -R: field 3 is the
# latency in us measured from the scheduled start, so schedule lag is included; field 7 is
# that lag, the wait before the transaction could start; fields 5-6 are the completion time).
# Prints "count p50_ms p99_ms max_ms failed p99_without_lag_ms": the last is the p99 of
# latency minus lag, the part spent once the transaction had started.
window_stats() {
  local from=$1 to=$2 prefix=${3:-pgbench_log}
  cat "$WORK"/"$prefix".* 2>/dev/null | awk -v a="$from" -v b="$to" '
    { ts = $5 + $6 / 1e6; if (ts < a || ts > b) next
      if ($3 ~ /^[0-9]+$/) print $3, $3 - $7; else failed++ }
    END { if (failed > 0) print "failed", failed }' >"$WORK/window.txt"
  local failed started
  failed=$(awk '$1 == "failed" { print $2 }' "$WORK/window.txt")
  started=$({ grep -v '^failed' "$WORK/window.txt" || true; } | awk '{ print $2 }' | sort -n | awk '
    { v[NR] = $1 }
    END { if (NR == 0) print "n/a"; else { i = int(NR * 0.99); if (i < NR * 0.99) i++; if (i < 1) i = 1; printf "%.2f\n", v[i] / 1000 } }')
  grep -v '^failed' "$WORK/window.txt" | awk '{ print $1 }' | sort -n | awk -v failed="${failed:-0}" -v started="$started" '
    function q(p,  i) { i = int(NR * p); if (i < NR * p) i++; if (i < 1) i = 1; return v[i] / 1000 }
    { v[NR] = $1 }
    END { if (NR == 0) print 0, "n/a", "n/a", "n/a", failed, started
          else printf "%d %.2f %.2f %.2f %d %s\n", NR, q(0.5), q(0.99), v[NR] / 1000, failed, started }'
}

# One doppel run under the writer, on a freshly restored table: the writer starts
# WARMUP+BASELINE s before doppel and stops TAIL s after it. $1 = tag (R[<tag>_*] as in
# run_doppel, and R[<tag>_base_*], R[<tag>_during_*] for the writer before and during,
# $WORK/writer_phases_<tag>.txt per doppel phase); further arguments go to doppel run. With
# PROBE_BASELINE=1, the probe script (benches/probe.pgbench.sql, one client at 10/s, as
# doppel's probe) runs during the baseline too: R[probe_*].
load_run() {
  local tag=$1 prefix="pgbench_$1_log" base_from ph_t ph_end nph i phase secs n p50 p99 mx
  shift
  restore
  (cd "$WORK" && exec "$PGBENCH" -n -c "$CLIENTS" -j "$JOBS" -R "$RATE" -T 7200 -P 5 \
      -f "$HERE/writer.pgbench.sql" -D rows="$ROWS" --log --log-prefix="$prefix" bench \
      >"$WORK/pgbench_$tag.out" 2>"$WORK/pgbench_$tag.err") &
  PGBENCH_PID=$!
  local load_t0
  load_t0=$(now)
  sleep "$WARMUP_SECS"
  if [[ ${PROBE_BASELINE:-0} -eq 1 ]]; then
    (cd "$WORK" && "$PGBENCH" -n -c 1 -j 1 -R 10 -T "$BASELINE_SECS" -f "$HERE/probe.pgbench.sql" \
        --log --log-prefix=probe_log bench >"$WORK/probe.out" 2>"$WORK/probe.err") \
      || { tail -n 5 "$WORK/probe.err" >&2; die "the probe baseline failed"; }
    read -r "R[probe_n]" "R[probe_p50]" "R[probe_p99]" "R[probe_max]" _ < <(window_stats 0 9999999999 probe_log)
  else
    sleep "$BASELINE_SECS"
  fi
  kill -0 "$PGBENCH_PID" 2>/dev/null || { tail -n 20 "$WORK/pgbench_$tag.err" >&2; die "pgbench stopped before the migration"; }
  if [[ -n ${HOLD_FILE:-} ]]; then
    # doppel starts throttled; the flag goes after HOLD_SECS (the stream is consumed meanwhile)
    touch "$HOLD_FILE"
    (sleep "$HOLD_SECS"; rm -f "$HOLD_FILE") &
  fi
  run_doppel "$tag" "$@"
  sleep "$TAIL_SECS"
  kill -0 "$PGBENCH_PID" 2>/dev/null || { tail -n 20 "$WORK/pgbench_$tag.err" >&2; die "pgbench stopped during the migration"; }
  kill -TERM "$PGBENCH_PID" 2>/dev/null || true
  wait "$PGBENCH_PID" 2>/dev/null || true
  PGBENCH_PID=""
  base_from=$(awk -v a="$load_t0" -v w="$WARMUP_SECS" 'BEGIN { printf "%.6f", a + w }')
  read -r "R[${tag}_base_n]" "R[${tag}_base_p50]" "R[${tag}_base_p99]" "R[${tag}_base_max]" "R[${tag}_base_failed]" "R[${tag}_base_p99_started]" \
    < <(window_stats "$base_from" "${R[${tag}_start]}" "$prefix")
  read -r "R[${tag}_during_n]" "R[${tag}_during_p50]" "R[${tag}_during_p99]" "R[${tag}_during_max]" "R[${tag}_during_failed]" "R[${tag}_during_p99_started]" \
    < <(window_stats "${R[${tag}_start]}" "${R[${tag}_end]}" "$prefix")
  # Writer latency per doppel phase: windows laid from doppel's start by its phase durations
  # (the unlisted preflight and cleanup are a fraction of a second); the last one ends with doppel.
  : >"$WORK/writer_phases_$tag.txt"
  ph_t=${R[${tag}_start]}
  nph=$(wc -l <"$WORK/doppel_${tag}_phases.txt")
  i=0
  while IFS='|' read -r phase secs; do
    i=$((i + 1))
    if [[ $i -eq $nph ]]; then ph_end=${R[${tag}_end]}; else ph_end=$(awk -v a="$ph_t" -v d="$secs" 'BEGIN { printf "%.6f", a + d }'); fi
    read -r n p50 p99 mx _ < <(window_stats "$ph_t" "$ph_end" "$prefix")
    echo "$phase|$secs|$n|$p50|$p99|$mx" >>"$WORK/writer_phases_$tag.txt"
    ph_t=$ph_end
  done <"$WORK/doppel_${tag}_phases.txt"
  R[${tag}_base_tps]=$(awk -v n="${R[${tag}_base_n]}" -v a="$base_from" -v b="${R[${tag}_start]}" 'BEGIN { printf "%.0f", n / (b - a) }')
  R[${tag}_during_tps]=$(awk -v n="${R[${tag}_during_n]}" -v a="${R[${tag}_start]}" -v b="${R[${tag}_end]}" 'BEGIN { printf "%.0f", n / (b - a) }')
  # Errors: failed transactions in the log, plus clients aborted by an error (pgbench stops
  # a client on any error other than a serialization failure or deadlock).
  R[${tag}_aborted]=$(grep -ciE 'aborted|error' "$WORK/pgbench_$tag.err" || true)
  R[${tag}_writer_errors]=$(( ${R[${tag}_base_failed]:-0} + ${R[${tag}_during_failed]:-0} + ${R[${tag}_aborted]:-0} ))
  R[${tag}_avg_apply]=$(awk -v n="${R[${tag}_applied]:-0}" -v t="${R[${tag}_wall]}" 'BEGIN { printf "%.0f", n / t }')
  print_doppel "$tag"
  log "   writer before: ${R[${tag}_base_tps]} tx/s, p50 ${R[${tag}_base_p50]} ms, p99 ${R[${tag}_base_p99]} ms, max ${R[${tag}_base_max]} ms"
  log "   writer during: ${R[${tag}_during_tps]} tx/s, p50 ${R[${tag}_during_p50]} ms, p99 ${R[${tag}_during_p99]} ms, max ${R[${tag}_during_max]} ms"
  log "   writer p99 once started (without pgbench's schedule lag): before ${R[${tag}_base_p99_started]} ms, during ${R[${tag}_during_p99_started]} ms"
  while IFS='|' read -r phase secs n p50 p99 mx; do
    printf '      writer during %-24s %6s tx  p50 %8s  p99 %8s  max %8s ms\n' "$phase" "$n" "$p50" "$p99" "$mx"
  done <"$WORK/writer_phases_$tag.txt"
  log "   writer errors: ${R[${tag}_writer_errors]} (failed ${R[${tag}_base_failed]}+${R[${tag}_during_failed]}, aborted-client/error lines ${R[${tag}_aborted]})"
  log "   apply: backlog ${R[${tag}_catchup_rate]} changes/s (${R[${tag}_catchup_applied]} changes in the ${R[${tag}_catchup_secs]} s catch-up), peak ${R[${tag}_peak_apply]} changes/s (1 s status lines while catching up), average over the run ${R[${tag}_avg_apply]} changes/s; last status Lag before cutover ${R[${tag}_last_lag]}"
}

if [[ $DO_LOAD -eq 1 ]]; then
  q "CREATE TABLE IF NOT EXISTS public.bench_probe (table_oid oid PRIMARY KEY, probes bigint NOT NULL DEFAULT 0,
       at timestamptz NOT NULL DEFAULT now()) WITH (fillfactor = 20);
     INSERT INTO public.bench_probe (table_oid) VALUES (1) ON CONFLICT DO NOTHING" >/dev/null
  log "e. doppel run --execute under pgbench -R $RATE -c $CLIENTS -j $JOBS ($BASELINE_SECS s baseline first$( [[ $DO_PACING -eq 1 ]] && echo ", with the probe"))"
  PROBE_BASELINE=$DO_PACING load_run load
  # The report's names for the unpaced run under load.
  for k in base_n base_p50 base_p99 base_max base_failed base_tps during_n during_p50 during_p99 during_max during_failed during_tps writer_errors aborted base_p99_started during_p99_started; do
    R[$k]=${R[load_$k]}
  done
  cp "$WORK/writer_phases_load.txt" "$WORK/writer_phases.txt"
  R[load_avg_apply]=${R[load_avg_apply]}
fi

# ---------------------------------------------------------------- e2. paced under load
# --pacing: the same run with --max-write-latency set to 2x the idle probe's p99 (measured
# above while only the writer ran), at least 1 ms.
if [[ $DO_PACING -eq 1 ]]; then
  R[pace_target]=$(awk -v p="${R[probe_p99]}" 'BEGIN { t = 2 * p; if (t < 1) t = 1; printf "%.1f", t }')
  log "   idle probe: ${R[probe_n]} probes, p50 ${R[probe_p50]} ms, p99 ${R[probe_p99]} ms, max ${R[probe_max]} ms: --max-write-latency ${R[pace_target]}"
  log "e2. doppel run --execute --max-write-latency ${R[pace_target]} under the same writer"
  load_run paced --max-write-latency "${R[pace_target]}"
  # The pacing as the 1 s status lines showed it: "Probe: 2.1 ms (max ..); Pace: 35% back off".
  sed -nE 's/.*Probe: ([0-9.]+) ms .*Pace: ([0-9]+)% ([a-z ]+).*/\1 \2 \3/p' "$WORK/doppel_paced.err" >"$WORK/pacing_lines.txt"
  read -r "R[pace_lines]" "R[pace_level_mean]" "R[pace_level_min]" "R[pace_backoff]" < <(awk '
    { n++; s += $2; if (min == "" || $2 + 0 < min + 0) min = $2; if ($3 == "back") b++ }
    END { if (n == 0) print 0, "n/a", "n/a", 0; else printf "%d %.0f %d %d\n", n, s / n, min, b }' "$WORK/pacing_lines.txt")
  R[pace_probe_p50]=$(awk '{ print $1 }' "$WORK/pacing_lines.txt" | sort -n | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "n/a") }')
  log "   paced: ${R[paced_wall]} s vs ${R[load_wall]} s unpaced ($(ratio "${R[paced_wall]}" "${R[load_wall]}")x); writer p99 ${R[paced_during_p99]} ms vs ${R[paced_base_p99]} ms before ($(ratio "${R[paced_during_p99]}" "${R[paced_base_p99]}")x); level mean ${R[pace_level_mean]}%, min ${R[pace_level_min]}%, ${R[pace_backoff]}/${R[pace_lines]} status lines backing off"
fi

# ---------------------------------------------------------------- e3. parallel apply
# --apply-workers "1 2 4": one run under the writer per value, held APPLY_HOLD s at the start.
if [[ -n $APPLY_WORKERS_LIST ]]; then
  for n in $APPLY_WORKERS_LIST; do
    log "e3. doppel run --execute --apply-workers $n under the same writer, held ${APPLY_HOLD} s at the start"
    HOLD_FILE="$WORK/hold_aw$n" HOLD_SECS=$APPLY_HOLD load_run "aw$n" --apply-workers "$n" \
      --throttle-flag-file "$WORK/hold_aw$n"
  done
fi

# ---------------------------------------------------------------- f. report
NPROC=$(nproc)
MEM=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(cd "$ROOT" && git status --porcelain -- src 2>/dev/null) ]]; then COMMIT="$COMMIT + uncommitted changes in src/"; fi
fmt_rows=$(echo "$ROWS" | sed -E ':a; s/([0-9])([0-9]{3})($|,)/\1,\2\3/; ta')
dw=${R[idle_wall]}

MD="$WORK/section.md"
{
  echo "<!-- run.sh rows=$ROWS begin -->"
  echo "## $fmt_rows rows ($DATE)"
  echo
  echo "Command: \`$INVOCATION\` (doppel $COMMIT). Machine: $NPROC cores ($CPU), $MEM memory."
  echo "PostgreSQL $PG_VERSION, wal_level=logical, shared_buffers=2GB, max_wal_size=8GB, fsync on."
  echo "Table \`orders\` (benches/orders_generate.sql): heap ${R[heap]}, ${R[total_size]} with its PK and 2 indexes."
  echo "ALTER under test: \`ALTER COLUMN customer_id TYPE bigint\`. Each figure is one run, each on a freshly restored table."
  echo "Load average (1/5/15 min) at the start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine makes figures noisy)."
  echo
  echo "| operation | wall (s) |"
  echo "|---|---:|"
  echo "| locking \`ALTER TABLE\` (ACCESS EXCLUSIVE throughout) | ${R[alter]} |"
  echo "| \`pg_repack -t orders\` (online, same schema) | ${R[repack]:-n/a} |"
  echo "| physical floor: CTAS ${R[floor_ctas]} + PK ${R[floor_pk]} + 2 indexes ${R[floor_idx]} | ${R[floor]} |"
  echo "| doppel run --execute, idle table | $dw |"
  [[ $DO_LOAD -eq 1 ]] && echo "| doppel run --execute, under $RATE tx/s | ${R[load_wall]} |"
  [[ $DO_RESUMABLE -eq 1 ]] && echo "| doppel run --execute --resumable, idle table | ${R[res_wall]} (copy ${R[res_copy]}; $(ratio "${R[res_wall]}" "$dw")x the run without checkpoints) |"
  echo
  if [[ $DO_LOAD -eq 1 ]]; then
    echo "| ratio | doppel idle | doppel under load |"
    echo "|---|---:|---:|"
    echo "| doppel / locking ALTER | **$(ratio "$dw" "${R[alter]}")** | $(ratio "${R[load_wall]}" "${R[alter]}") |"
    echo "| doppel / pg_repack | **$(ratio "$dw" "${R[repack]:-}")** | $(ratio "${R[load_wall]}" "${R[repack]:-}") |"
    echo "| doppel / physical floor | **$(ratio "$dw" "${R[floor]}")** | $(ratio "${R[load_wall]}" "${R[floor]}") |"
  else
    echo "| ratio | doppel idle |"
    echo "|---|---:|"
    echo "| doppel / locking ALTER | **$(ratio "$dw" "${R[alter]}")** |"
    echo "| doppel / pg_repack | **$(ratio "$dw" "${R[repack]:-}")** |"
    echo "| doppel / physical floor | **$(ratio "$dw" "${R[floor]}")** |"
  fi
  [[ -n $REPACK_NOTE ]] && { echo; echo "$REPACK_NOTE."; }
  echo
  echo "doppel by phase (s):"
  echo
  phases=$(cut -d'|' -f1 "$WORK/doppel_idle_phases.txt")
  if [[ $DO_LOAD -eq 1 ]]; then
    echo "| phase | idle | under load |"
    echo "|---|---:|---:|"
  else
    echo "| phase | idle |"
    echo "|---|---:|"
  fi
  while IFS= read -r ph; do
    [[ -n $ph ]] || continue
    a=$(awk -F'|' -v p="$ph" '$1 == p { print $2 }' "$WORK/doppel_idle_phases.txt")
    if [[ $DO_LOAD -eq 1 ]]; then
      b=$(awk -F'|' -v p="$ph" '$1 == p { print $2 }' "$WORK/doppel_load_phases.txt")
      echo "| $ph | $a | ${b:-n/a} |"
    else
      echo "| $ph | $a |"
    fi
  done <<<"$phases"
  if [[ $DO_LOAD -eq 1 ]]; then
    echo "| total (doppel's own clock) | ${R[idle_total]} | ${R[load_total]} |"
  else
    echo "| total (doppel's own clock) | ${R[idle_total]} |"
  fi
  echo
  echo "| doppel | idle | under load |"
  echo "|---|---:|---:|"
  echo "| lock hold (ms) | ${R[idle_lock_ms]} | ${R[load_lock_ms]:-n/a} |"
  echo "| cutover attempts | ${R[idle_attempts]} | ${R[load_attempts]:-n/a} |"
  echo "| changes applied | ${R[idle_applied]} | ${R[load_applied]:-n/a} |"
  echo "| peak RSS (MiB) | $(( ${R[idle_rss_kb]:-0} / 1024 )) | $( [[ -n ${R[load_rss_kb]:-} ]] && echo $(( R[load_rss_kb] / 1024 )) || echo n/a) |"
  if [[ $DO_LOAD -eq 1 ]]; then
    echo
    echo "Under load: \`pgbench -n -c $CLIENTS -j $JOBS -R $RATE -f benches/writer.pgbench.sql\` (per transaction: UPDATE by PK + INSERT, DELETE in 1 of 10),"
    echo "started $((WARMUP_SECS + BASELINE_SECS)) s before doppel (the first $WARMUP_SECS s are not measured), stopped $TAIL_SECS s after it."
    echo "Latency is pgbench's per-transaction latency from the scheduled start (schedule lag included)."
    echo
    echo "| writer | before ($BASELINE_SECS s idle baseline) | during the migration |"
    echo "|---|---:|---:|"
    echo "| transactions (tx/s) | ${R[base_n]} (${R[base_tps]}) | ${R[during_n]} (${R[during_tps]}) |"
    echo "| p50 latency (ms) | ${R[base_p50]} | ${R[during_p50]} |"
    echo "| p99 latency (ms) | ${R[base_p99]} | ${R[during_p99]} ($(ratio "${R[during_p99]}" "${R[base_p99]}")x) |"
    echo "| p99 once started, without pgbench's schedule lag (ms) | ${R[base_p99_started]} | ${R[during_p99_started]} |"
    echo "| max latency (ms) | ${R[base_max]} | ${R[during_max]} |"
    echo "| failed transactions | ${R[base_failed]} | ${R[during_failed]} |"
    echo
    echo "Writer latency by doppel phase (windows laid from doppel's start by its phase durations):"
    echo
    echo "| phase | s | transactions | p50 (ms) | p99 (ms) | max (ms) |"
    echo "|---|---:|---:|---:|---:|---:|"
    while IFS='|' read -r phase secs n p50 p99 mx; do
      echo "| $phase | $secs | $n | $p50 | $p99 | $mx |"
    done <"$WORK/writer_phases.txt"
    echo
    echo "Writer errors in total (failed transactions + aborted clients): **${R[writer_errors]}**."
    echo "Apply rate: the backlog spooled during the copy was applied at **${R[load_catchup_rate]} changes/s** (${R[load_catchup_applied]} changes in the ${R[load_catchup_secs]} s catch-up phase;"
    echo "n/a when it was under 0.5 s); peak ${R[load_peak_apply]} changes/s between two 1 s status lines while catching up; ${R[load_avg_apply]} changes/s"
    echo "averaged over the whole run (bounded by the writer's rate). Stream lag in the last status line before the cutover: ${R[load_last_lag]} (WAL bytes)."
  fi
  if [[ $DO_PACING -eq 1 ]]; then
    echo
    echo "### Latency-targeted pacing (\`--pacing\`)"
    echo
    echo "doppel's probe write (benches/probe.pgbench.sql, the one-row UPDATE of \`--max-write-latency\`), timed by pgbench at 10/s"
    echo "while only the writer ran: ${R[probe_n]} probes, p50 ${R[probe_p50]} ms, p99 ${R[probe_p99]} ms, max ${R[probe_max]} ms. The paced run:"
    echo "\`--max-write-latency ${R[pace_target]}\` (2x the idle probe's p99), on a freshly restored table under the same writer, with its own baseline."
    echo
    echo "| under $RATE tx/s | unpaced | paced |"
    echo "|---|---:|---:|"
    echo "| doppel wall (s) | ${R[load_wall]} | ${R[paced_wall]} (**$(ratio "${R[paced_wall]}" "${R[load_wall]}")x** unpaced; target <= 4x) |"
    echo "| writer p50 before / during (ms) | ${R[load_base_p50]} / ${R[load_during_p50]} | ${R[paced_base_p50]} / ${R[paced_during_p50]} |"
    echo "| writer p99 before / during (ms) | ${R[load_base_p99]} / ${R[load_during_p99]} ($(ratio "${R[load_during_p99]}" "${R[load_base_p99]}")x) | ${R[paced_base_p99]} / ${R[paced_during_p99]} (**$(ratio "${R[paced_during_p99]}" "${R[paced_base_p99]}")x**; target <= 2x) |"
    echo "| writer p99 once started, without pgbench's schedule lag, before / during (ms) | ${R[load_base_p99_started]} / ${R[load_during_p99_started]} | ${R[paced_base_p99_started]} / ${R[paced_during_p99_started]} |"
    echo "| writer max before / during (ms) | ${R[load_base_max]} / ${R[load_during_max]} | ${R[paced_base_max]} / ${R[paced_during_max]} |"
    echo "| writer errors | ${R[load_writer_errors]} | ${R[paced_writer_errors]} |"
    echo "| changes applied | ${R[load_applied]} | ${R[paced_applied]} |"
    echo
    echo "Writer latency by doppel phase, unpaced vs paced (s, then p50 / p99 / max in ms):"
    echo
    echo "| phase | unpaced s | unpaced p50 / p99 / max | paced s | paced p50 / p99 / max |"
    echo "|---|---:|---:|---:|---:|"
    while IFS='|' read -r phase secs n p50 p99 mx; do
      other=$(awk -F'|' -v p="$phase" '$1 == p { printf "%s|%s / %s / %s", $2, $4, $5, $6 }' "$WORK/writer_phases_paced.txt")
      echo "| $phase | $secs | $p50 / $p99 / $mx | ${other%%|*} | ${other#*|} |"
    done <"$WORK/writer_phases_load.txt"
    echo
    echo "The pacing as doppel's 1 s status lines showed it: ${R[pace_lines]} lines, level mean ${R[pace_level_mean]}%, lowest ${R[pace_level_min]}%,"
    echo "${R[pace_backoff]} lines deciding *back off*; doppel's probe p50 ${R[pace_probe_p50]} ms over those lines."
  fi
  if [[ -n $APPLY_WORKERS_LIST ]]; then
    echo
    echo "### Parallel apply (\`--apply-workers\`)"
    echo
    echo "Under the same writer ($RATE tx/s), one run per value, each on a freshly restored table with its own baseline; doppel held"
    echo "(\`--throttle-flag-file\`) for ${APPLY_HOLD} s at its start so that the catch-up has a backlog to apply. The machine has $NPROC cores,"
    echo "shared by the server, pgbench and doppel (and, here, other work): parallel sessions compete for the same cores."
    echo
    echo "| \`--apply-workers\` | backlog applied | catch-up (s) | catch-up rate (changes/s) | peak (1 s status lines) | wall (s) | writer p99 during (ms) |"
    echo "|---:|---:|---:|---:|---:|---:|---:|"
    for n in $APPLY_WORKERS_LIST; do
      echo "| $n | ${R[aw${n}_catchup_applied]} | ${R[aw${n}_catchup_secs]} | **${R[aw${n}_catchup_rate]}** | ${R[aw${n}_peak_apply]} | ${R[aw${n}_wall]} | ${R[aw${n}_during_p99]} |"
    done
  fi
  if [[ $DO_MEANS -eq 1 ]]; then
    mib() { [[ -n ${1:-} ]] && echo $(( $1 / 1024 )) || echo n/a; }
    echo
    echo "### What each means bought (\`--means\`)"
    echo
    echo "Idle table, one run each, each on a freshly restored table. *Bought* = the alternative's figure / doppel's"
    echo "(above 1: doppel's way is faster, or holds less)."
    echo
    echo "| means | doppel's way | alternative | bought |"
    echo "|---|---|---|---:|"
    echo "| PK + 2 indexes built after the copy (plain SQL, 1 session, ${R[m_chunks]} chunk(s) of ${R[m_chunk_rows]} rows) | copy ${R[m_bare_copy]} s + build ${R[m_build]} s = ${R[m_bare_total]} s | copy into a table that has them: ${R[m_indexed_copy]} s | **$(ratio "${R[m_indexed_copy]}" "${R[m_bare_total]}")** |"
    echo "| 2 parallel chunk workers (default \`--copy-workers 2\`) | copy ${R[idle_copy]} s (run $dw s) | \`--copy-workers 1\`: copy ${R[w1_copy]} s (run ${R[w1_wall]} s) | **$(ratio "${R[w1_copy]}" "${R[idle_copy]}")** (run $(ratio "${R[w1_wall]}" "$dw")) |"
    echo "| chunks sized by time (default \`--chunk-time 100\`) | copy ${R[idle_copy]} s in ${R[idle_chunks]} chunks | \`--chunk-time 500\`: copy ${R[ct500_copy]} s in ${R[ct500_chunks]} chunks | **$(ratio "${R[ct500_copy]}" "${R[idle_copy]}")** |"
    echo "| chunks sized by time (default \`--chunk-time 100\`) | copy ${R[idle_copy]} s in ${R[idle_chunks]} chunks | \`--chunk-time 2000\`: copy ${R[ct2000_copy]} s in ${R[ct2000_chunks]} chunks | **$(ratio "${R[ct2000_copy]}" "${R[idle_copy]}")** |"
    echo "| index builds: PK + 2 indexes (plain SQL, on the bare copy) | ${R[m_build]} s (maintenance_work_mem 1GB, max_parallel_maintenance_workers ${R[m_mpmw]}) | without parallel workers: ${R[m_build_serial]} s | **$(ratio "${R[m_build_serial]}" "${R[m_build]}")** |"
    echo "| index builds: maintenance_work_mem 1GB | ${R[m_build]} s | 64MB (the server's default): ${R[m_build_mwm64]} s | **$(ratio "${R[m_build_mwm64]}" "${R[m_build]}")** |"
    echo "| the whole table in one statement: \`INSERT .. SELECT\` on the server | ${R[m_insert_all]} s | \`COPY .. TO STDOUT\` piped into \`COPY .. FROM STDIN\` (binary, two sessions): ${R[m_copy_all]} s | **$(ratio "${R[m_copy_all]}" "${R[m_insert_all]}")** |"
    echo "| chunks by primary-key range (plain SQL, 1 session, ${R[m_chunks]} chunks: an index range scan each) | ${R[m_bare_copy]} s | the same number of chunks by TID range (${R[m_tid_plan]}, physical order): ${R[m_tid_copy]} s | **$(ratio "${R[m_tid_copy]}" "${R[m_bare_copy]}")** |"
    echo "| doppel's chunks by primary-key range (default \`--chunk-by key\`) | copy ${R[idle_copy]} s (run $dw s) | \`--chunk-by tid\` (TID ranges; keys changed during the copy removed and replayed): copy ${R[tid_copy]} s (run ${R[tid_wall]} s) | **$(ratio "${R[tid_copy]}" "${R[idle_copy]}")** (run $(ratio "${R[tid_wall]}" "$dw")) |"
    echo "| the shadow logged throughout (whole table, \`INSERT .. SELECT\`) | ${R[m_insert_all]} s, WAL $(fmt_bytes "${R[m_insert_wal]}") | \`UNLOGGED\` copy ${R[m_unlogged_copy]} s (WAL $(fmt_bytes "${R[m_unlogged_wal]}")) + \`SET LOGGED\` ${R[m_set_logged]} s (WAL $(fmt_bytes "${R[m_set_logged_wal]}")) = ${R[m_unlogged_total]} s | **$(ratio "${R[m_unlogged_total]}" "${R[m_insert_all]}")** |"
    echo "| the 2 secondary indexes, then verification (after the PK, plain SQL: a hash pass over both tables) | ${R[m_ov_idx]} s + ${R[m_ov_hash]} s = ${R[m_ov_serial]} s | both at once in two sessions: ${R[m_ov_overlap]} s (indexes ${R[m_ov_idx_concurrent]} s, hash ${R[m_ov_hash_concurrent]} s) | **$(ratio "${R[m_ov_overlap]}" "${R[m_ov_serial]}")** |"
    if [[ $PG_MAJOR -ge 16 ]]; then
      echo "| copy sessions under replication origins, stream \`origin 'none'\` (default on PostgreSQL 16+) | copy ${R[idle_copy]} s (run $dw s) | \`--no-copy-origin\` (copied rows decoded by the WAL sender and discarded): copy ${R[decoded_copy]} s (run ${R[decoded_wall]} s) | **$(ratio "${R[decoded_copy]}" "${R[idle_copy]}")** (run $(ratio "${R[decoded_wall]}" "$dw")) |"
    fi
    echo "| changes spooled on doppel's side, idle | slot-retained WAL at its peak $(fmt_bytes "${R[idle_peak_retained]}"); spool file at its peak $(fmt_bytes "${R[idle_peak_spool]}") | a slot nobody reads until the end retains the run's WAL: $(fmt_bytes "${R[idle_wal_written]}") | **$(ratio "${R[idle_wal_written]}" "${R[idle_peak_retained]}")** |"
    if [[ $DO_LOAD -eq 1 ]]; then
      echo "| changes spooled on doppel's side, under $RATE tx/s | slot-retained WAL at its peak $(fmt_bytes "${R[load_peak_retained]}"); spool file at its peak $(fmt_bytes "${R[load_peak_spool]}") | a slot nobody reads until the end retains the run's WAL: $(fmt_bytes "${R[load_wal_written]}") | **$(ratio "${R[load_wal_written]}" "${R[load_peak_retained]}")** |"
    fi
    echo
    echo "| doppel run, idle table | copy (s) | chunks | wall (s) | peak RSS (MiB) |"
    echo "|---|---:|---:|---:|---:|"
    echo "| defaults (\`--copy-workers 2 --chunk-time 100\`) | ${R[idle_copy]} | ${R[idle_chunks]} | $dw | $(mib "${R[idle_rss_kb]:-}") |"
    for spec in "${MEANS_RUNS[@]}"; do
      tag=${spec%%|*}
      echo "| \`${spec#*|}\` | ${R[${tag}_copy]} | ${R[${tag}_chunks]} | ${R[${tag}_wall]} | $(mib "${R[${tag}_rss_kb]:-}") |"
    done
    echo
    echo "Plain SQL copy: \`INSERT INTO copy SELECT * FROM ONLY orders WHERE id > lo AND id <= hi\`, one statement and transaction per chunk"
    echo "(chunk rows: 500 ms at the CTAS rate), into the ALTER's target shape with autovacuum off; PK ${R[m_build_pk]} s and"
    echo "indexes $(sum "${R[m_build_idx1]}" "${R[m_build_idx2]}") s built with maintenance_work_mem 1GB, as doppel builds them."
    echo "Slot-retained WAL is \`pg_current_wal_lsn() - restart_lsn\` of doppel's slot, sampled every second with the spool file's size"
    echo "(${R[idle_samples]} samples idle$( [[ $DO_LOAD -eq 1 ]] && echo ", ${R[load_samples]} under load")); restart_lsn advances only at the server's running-transactions records"
    echo "(logged every 15 s while there is activity, and at checkpoints), so a run of a few seconds retains nearly all of its WAL whatever doppel confirms. WAL not yet"
    echo "confirmed by doppel (\`- confirmed_flush_lsn\`) peaked at $(fmt_bytes "${R[idle_peak_unconfirmed]}") idle$( [[ $DO_LOAD -eq 1 ]] && echo " and $(fmt_bytes "${R[load_peak_unconfirmed]}") under load")."
    echo "The WAL written during the run bounds what the slot would retain if nothing read it before the end (a tool that"
    echo "decodes only after its copy and index builds retains most of it)."
  fi
  echo "<!-- run.sh rows=$ROWS end -->"
} >"$MD"

echo
echo "================ ratios ($fmt_rows rows, PostgreSQL $PG_VERSION, $NPROC cores, $MEM)"
printf '  %-28s %10s s\n' "locking ALTER" "${R[alter]}" "pg_repack" "${R[repack]:-n/a}" "physical floor" "${R[floor]}" "doppel (idle)" "$dw"
[[ $DO_LOAD -eq 1 ]] && printf '  %-28s %10s s\n' "doppel (under $RATE tx/s)" "${R[load_wall]}"
printf '  %-28s %10s\n' "doppel / ALTER" "$(ratio "$dw" "${R[alter]}")" "doppel / pg_repack" "$(ratio "$dw" "${R[repack]:-}")" "doppel / floor" "$(ratio "$dw" "${R[floor]}")"
if [[ $DO_LOAD -eq 1 ]]; then
  printf '  %-28s %10s\n' "lock hold idle / load (ms)" "${R[idle_lock_ms]} / ${R[load_lock_ms]}" \
    "writer p99 before / during" "${R[base_p99]} / ${R[during_p99]} ms" \
    "writer max before / during" "${R[base_max]} / ${R[during_max]} ms" \
    "writer errors" "${R[writer_errors]}" \
    "changes applied (load)" "${R[load_applied]}" \
    "peak RSS idle / load" "$(( ${R[idle_rss_kb]:-0} / 1024 )) / $(( ${R[load_rss_kb]:-0} / 1024 )) MiB"
fi
if [[ $DO_MEANS -eq 1 ]]; then
  printf '  %-28s %10s\n' "means: indexed copy / copy+build" "${R[m_indexed_copy]} / ${R[m_bare_total]} s ($(ratio "${R[m_indexed_copy]}" "${R[m_bare_total]}")x)" \
    "means: copy, 1 / 2 workers" "${R[w1_copy]} / ${R[idle_copy]} s ($(ratio "${R[w1_copy]}" "${R[idle_copy]}")x)" \
    "means: copy, chunk 100/500/2000" "${R[idle_copy]} / ${R[ct500_copy]} / ${R[ct2000_copy]} s (${R[idle_chunks]} / ${R[ct500_chunks]} / ${R[ct2000_chunks]} chunks)" \
    "means: idle WAL run/retained/spool" "$(fmt_bytes "${R[idle_wal_written]}") / $(fmt_bytes "${R[idle_peak_retained]}") / $(fmt_bytes "${R[idle_peak_spool]}")"
  [[ $DO_LOAD -eq 1 ]] && printf '  %-28s %10s\n' "means: load WAL run/retained/spool" "$(fmt_bytes "${R[load_wal_written]}") / $(fmt_bytes "${R[load_peak_retained]}") / $(fmt_bytes "${R[load_peak_spool]}")"
fi
for n in $APPLY_WORKERS_LIST; do
  printf '  %-28s %10s\n' "apply workers $n: catch-up" "${R[aw${n}_catchup_rate]} changes/s (${R[aw${n}_catchup_applied]} in ${R[aw${n}_catchup_secs]} s; peak ${R[aw${n}_peak_apply]})"
done
[[ -n $REPACK_NOTE ]] && echo "  note: $REPACK_NOTE"
cp "$MD" "$WORK/section.txt"

if [[ $DO_WRITE -eq 1 ]]; then
  if [[ ! -f $OUT_MD ]]; then
    cat >"$OUT_MD" <<'EOF'
# Benchmarks

Same-run comparisons of doppel with the locking `ALTER TABLE`, `pg_repack` and the physical
floor of a rewrite (issue 5), written by `benches/run.sh` (one section per table size; a new
run replaces the section of its size). Reproduce with `benches/run.sh --rows N` from a clean
checkout (needs the PostgreSQL 15 server binaries, root or a user that can run initdb).
Micro-benchmarks: `cargo bench -p pglogrepl --bench pgoutput_decode`, `cargo bench --bench apply_batching`.

EOF
  fi
  begin="<!-- run.sh rows=$ROWS begin -->"
  end="<!-- run.sh rows=$ROWS end -->"
  if grep -qF "$begin" "$OUT_MD"; then
    # replace this size's section
    replaced_section "$begin" "$end" "$MD" >"$WORK/bench.md.new"
  else
    # insert before the first section of a smaller table (largest first), else append
    awk -v rows="$ROWS" -v f="$MD" '
      function emit() { while ((getline line < f) > 0) print line; print ""; done = 1 }
      !done && match($0, /^<!-- run\.sh rows=[0-9]+ begin -->$/) {
        n = $0; gsub(/[^0-9]/, "", n); if (n + 0 < rows + 0) emit()
      }
      { print }
      END { if (!done) { print ""; while ((getline line < f) > 0) print line } }' "$OUT_MD" >"$WORK/bench.md.new"
  fi
  cat "$WORK/bench.md.new" >"$OUT_MD"
  # One line listing doppel's peak RSS (idle / under load) in every --rows section of the
  # file, largest table first, between its own markers before the first section.
  rss=$(awk '
    function commas(n,  s) { s = n; while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s); return s }
    match($0, /^<!-- run\.sh rows=[0-9]+ begin -->$/) { rows = $0; gsub(/[^0-9]/, "", rows); next }
    /^<!-- run\.sh rows=[0-9]+ end -->$/ { rows = ""; next }
    rows != "" && !(rows in seen) && /^\| peak RSS \(MiB\) \|/ {
      split($0, f, "|"); gsub(/ /, "", f[3]); gsub(/ /, "", f[4])
      seen[rows] = 1; out = out (out == "" ? "" : "; ") commas(rows) " rows: " f[3] " / " f[4] " MiB"
    }
    END { print out }' "$OUT_MD")
  awk -v line="Peak RSS of doppel by table size (idle / under load), from the sections below: $rss." '
    $0 == "<!-- run.sh rss begin -->" { skip = 1; next }
    skip { if ($0 == "<!-- run.sh rss end -->") { skip = 0; drop_blank = 1 }; next }
    drop_blank && $0 == "" { drop_blank = 0; next }
    { drop_blank = 0 }
    !done && /^<!-- run\.sh rows=[0-9]+ begin -->$/ {
      print "<!-- run.sh rss begin -->"; print line; print "<!-- run.sh rss end -->"; print ""; done = 1
    }
    { print }' "$OUT_MD" >"$WORK/bench.md.rss"
  cat "$WORK/bench.md.rss" >"$OUT_MD"
  log "wrote ${OUT_MD#"$ROOT"/} (section rows=$ROWS)"
fi
log "done"
