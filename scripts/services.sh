#!/usr/bin/env bash
# Throwaway PostgreSQL + pgvector for the RAG store tests.
#   eval "$(bash scripts/services.sh)"      # installs if missing, starts, exports LLMLAB_PG_DSN
#   bash scripts/services.sh stop DATADIR   # stops a server started earlier
#   bash scripts/services.sh install        # only installs (scripts/setup.sh dev runs this)
# Only the `export ...` lines go to stdout, so the eval above is safe; logs go to stderr.
set -euo pipefail
PGVER=${PGVER:-15}
BIN=/usr/lib/postgresql/$PGVER/bin
log() { echo "services.sh: $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root (or sudo) to run: $*"; exit 1; fi
}

install_if_missing() {
  local pkgs=()
  [ -x "$BIN/initdb" ] || pkgs+=("postgresql-$PGVER")
  [ -f "/usr/share/postgresql/$PGVER/extension/vector.control" ] || pkgs+=("postgresql-$PGVER-pgvector")
  [ ${#pkgs[@]} -gt 0 ] || return 0
  log "installing ${pkgs[*]}"
  as_root apt-get update -qq >&2
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >&2; then
    # Debian 12 main has no pgvector binary (only PGDG does): build Debian's own source
    # package (from trixie) against bookworm's server headers.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      "postgresql-$PGVER" "postgresql-server-dev-$PGVER" gcc make >&2
    build_pgvector
  fi
}

build_pgvector() {
  local tmp; tmp=$(mktemp -d)
  mkdir -p "$tmp/lists/partial"
  echo "deb-src http://deb.debian.org/debian trixie main" > "$tmp/sources.list"
  local o=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
           -o "Dir::State::Lists=$tmp/lists")
  as_root apt-get "${o[@]}" update -qq >&2
  (cd "$tmp" && as_root apt-get "${o[@]}" source --download-only pgvector >&2 2>/dev/null)
  tar xzf "$tmp"/pgvector_*.orig.tar.gz -C "$tmp"
  local pgc=$BIN/pg_config
  # OPTFLAGS="": no -march=native, so the build runs on any x86-64 CI machine.
  make -C "$tmp"/pgvector-*/ -j2 PG_CONFIG="$pgc" OPTFLAGS="" >&2
  as_root make -C "$tmp"/pgvector-*/ install PG_CONFIG="$pgc" >&2
  as_root rm -rf "$tmp"
}

if [ "${1:-}" = "stop" ]; then
  dir=${2:?usage: services.sh stop DATADIR}
  owner=$(stat -c %U "$dir")
  if [ "$(id -u)" = 0 ] && [ "$owner" != root ]; then
    runuser -u "$owner" -- "$BIN/pg_ctl" -D "$dir" -m fast stop >&2
  else
    "$BIN/pg_ctl" -D "$dir" -m fast stop >&2
  fi
  rm -rf "$dir"
  exit 0
fi

install_if_missing
if [ "${1:-}" = "install" ]; then exit 0; fi

# initdb refuses to run as root: use the packaged `postgres` account then.
run=()
user=$(id -un)
if [ "$(id -u)" = 0 ]; then
  user=postgres
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  run=(runuser -u postgres --)
fi
data=$(mktemp -d "${TMPDIR:-/tmp}/llmlab-pg.XXXXXX")
chown "$user" "$data" 2>/dev/null || true
chmod 700 "$data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${run[@]}" "$BIN/initdb" -D "$data" -U "$user" --auth=trust -E UTF8 >/dev/null
"${run[@]}" "$BIN/pg_ctl" -D "$data" -w -l "$data/server.log" \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c fsync=off" start >&2
dsn="postgresql://$user@127.0.0.1:$port/postgres"
"${run[@]}" "$BIN/psql" -q -d "$dsn" -c "CREATE EXTENSION IF NOT EXISTS vector" >&2
log "server up in $data (stop: bash scripts/services.sh stop $data)"
echo "export LLMLAB_PG_DSN='$dsn'"
echo "export LLMLAB_PG_DATA='$data'"
