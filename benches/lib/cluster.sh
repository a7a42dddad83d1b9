# Sourced by the benches' single-purpose scripts (not run): a private PostgreSQL cluster in a
# temp dir for the script's lifetime. Run as root: the server runs as 'postgres'.
#
#   private_cluster NAME [SERVER_OPTIONS]
#
# Sets BIN (DOPPEL_PG_BINDIR, default PostgreSQL 15's), D (the temp dir /tmp/doppel-NAME.*,
# data in $D/data, socket in $D, log in $D/log) and PORT (a free loopback port); runs initdb
# (trust, UTF8, locale C, as benches/run.sh does) and starts the server with SERVER_OPTIONS
# (`-c name=value ...`). The server is stopped and $D removed when the script exits.
private_cluster() {
  BIN=${DOPPEL_PG_BINDIR:-/usr/lib/postgresql/15/bin}
  D=$(mktemp -d "/tmp/doppel-$1.XXXXXX")
  chown postgres "$D"
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  trap stop_private_cluster EXIT
  su postgres -c "$BIN/initdb -D $D/data -U postgres -A trust -E UTF8 --locale=C" >/dev/null
  su postgres -c "$BIN/pg_ctl -D $D/data -l $D/log -o '-p $PORT -k $D ${2:-}' start" >/dev/null
}

stop_private_cluster() {
  su postgres -c "$BIN/pg_ctl -D $D/data stop -m fast" >/dev/null 2>&1 || true
  rm -rf "$D"
}
