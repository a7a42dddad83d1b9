#!/usr/bin/env bash
# scripts/driver-compat.sh: the driver compatibility matrix (README, "What the application sees
# at the cutover"), in one command on a fresh machine.
#
#   scripts/driver-compat.sh [--rows N] [--out FILE]
#
# Starts a private PostgreSQL cluster (DOPPEL_PG_BINDIR, default /usr/lib/postgresql/15/bin),
# builds doppel, creates a Python virtual environment with asyncpg, psycopg 3 and SQLAlchemy
# (target/driver-compat/venv, reused), and runs scripts/driver_compat.py: for an ADD COLUMN, a
# type change and an ADD CHECK, the drivers' typical statements run continuously from several
# workers across doppel's cutover and across the plain ALTER TABLE; it prints a markdown table
# of the errors per driver and statement, how each recovered, the worst latency and the
# writes lost (must be 0), and writes it to target/driver-compat/results.md (or --out).
# Not part of `cargo test`. Needs python3 with venv and pip access to PyPI; as root the cluster
# runs as the 'postgres' user. pgjdbc workers (scripts/DriverCompat.java, prepareThreshold=1)
# join when a JDK and Debian's libpostgresql-jdbc-java are installed.
set -euo pipefail

ROWS=20000
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
OUTDIR="$ROOT/target/driver-compat"
OUT="$OUTDIR/results.md"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rows) ROWS=${2:?--rows needs a value}; shift 2 ;;
    --out) OUT=${2:?--out needs a value}; shift 2 ;;
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
BINDIR=${DOPPEL_PG_BINDIR:-/usr/lib/postgresql/15/bin}
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }
as_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

[[ -x $BINDIR/initdb && -x $BINDIR/pg_ctl ]] || die "no PostgreSQL server binaries in $BINDIR (set DOPPEL_PG_BINDIR)"
command -v python3 >/dev/null || die "python3 is missing (apt-get install python3 python3-venv)"
mkdir -p "$OUTDIR"

log "building doppel (cargo build)"
(cd "$ROOT" && cargo build --quiet --bin doppel) || die "cargo build failed"
DOPPEL="${CARGO_TARGET_DIR:-$ROOT/target}/debug/doppel"
[[ -x $DOPPEL ]] || die "$DOPPEL was not built"

VENV="$OUTDIR/venv"
if [[ ! -x $VENV/bin/python ]]; then
  log "creating the virtual environment $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check asyncpg 'psycopg[binary]' sqlalchemy \
  || die "pip install asyncpg psycopg[binary] sqlalchemy failed"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/doppel-compat.XXXXXX")
chmod 755 "$WORK"
PGDATA="$WORK/data"
mkdir "$PGDATA" "$WORK/sock" "$WORK/run" "$WORK/log"
[[ $(id -u) -eq 0 ]] && chown postgres: "$PGDATA" "$WORK/sock" "$WORK/log"
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [[ -f $PGDATA/postmaster.pid ]]; then
    as_pg "$BINDIR/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null 2>&1
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT=""
for _ in $(seq 1 200); do
  p=$((20000 + RANDOM % 30000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then PORT=$p; break; fi
done
[[ -n $PORT ]] || die "no free port found"
as_pg "$BINDIR/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C >"$WORK/initdb.out" 2>&1 \
  || { cat "$WORK/initdb.out" >&2; die "initdb failed"; }
cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK/sock'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
max_connections = 100
CONF
as_pg "$BINDIR/pg_ctl" -D "$PGDATA" -l "$WORK/log/server.log" -w -t 120 start >/dev/null \
  || { tail -n 30 "$WORK/log/server.log" >&2; die "the cluster did not start"; }
log "PostgreSQL on 127.0.0.1:$PORT; running the matrix ($ROWS rows)"

JAR=""
if command -v java >/dev/null && [[ -f /usr/share/java/postgresql.jar ]]; then
  JAR=/usr/share/java/postgresql.jar
  log "pgjdbc: $(readlink -f "$JAR")"
else
  log "pgjdbc skipped: needs a JDK (java) and libpostgresql-jdbc-java"
fi
DC_JDBC_JAR="$JAR" DC_DSN="postgres://postgres@127.0.0.1:$PORT/postgres" DC_DOPPEL="$DOPPEL" DC_WORK="$WORK/run" \
  DC_OUT="$OUT" DC_ROWS="$ROWS" PGSSLMODE=disable "$VENV/bin/python" "$HERE/driver_compat.py"
log "results written to ${OUT#"$ROOT"/}"
