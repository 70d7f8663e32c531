#!/usr/bin/env bash
# The official postgres image's start-up contract, reimplemented for the stand-in:
# initialise $PGDATA once, run /docker-entrypoint-initdb.d/, then exec the server as PID 1.
set -Eeuo pipefail

die() { echo "error: $*" >&2; exit 1; }

# VAR or VAR_FILE (a Docker or Kubernetes secret), never both.
file_env() {
  local var=$1 default=${2:-} file_var="${1}_FILE"
  [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ] && die "both $var and $file_var are set (but are exclusive)"
  local value=$default
  if [ -n "${!var:-}" ]; then value=${!var}
  elif [ -n "${!file_var:-}" ]; then value=$(< "${!file_var}")
  fi
  export "$var"="$value"
  unset "$file_var"
}

prepare_dirs() {
  mkdir -p "$PGDATA" /var/run/postgresql
  chmod 00700 "$PGDATA" 2>/dev/null || :
  chmod 03775 /var/run/postgresql 2>/dev/null || :
  if [ "$(id -u)" = 0 ]; then
    find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres: {} +
  fi
}

# initdb needs a user name for the current uid; an arbitrary uid (Kubernetes, --user) has no passwd entry.
with_passwd_entry() {
  if getent passwd "$(id -u)" >/dev/null; then "$@"; return; fi
  local passwd group
  passwd=$(mktemp) group=$(mktemp)
  printf 'postgres:x:%s:%s:PostgreSQL:%s:/bin/false\n' "$(id -u)" "$(id -g)" "$PGDATA" > "$passwd"
  printf 'postgres:x:%s:\n' "$(id -g)" > "$group"
  LD_PRELOAD=libnss_wrapper.so NSS_WRAPPER_PASSWD=$passwd NSS_WRAPPER_GROUP=$group "$@"
  rm -f "$passwd" "$group"
}

init_database() {
  file_env POSTGRES_PASSWORD
  file_env POSTGRES_USER postgres
  file_env POSTGRES_DB "$POSTGRES_USER"
  file_env POSTGRES_INITDB_ARGS
  local auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  if [ -z "$POSTGRES_PASSWORD" ] && [ "$auth" != trust ]; then
    die "Database is uninitialized and superuser password is not specified. Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) to a non-empty value, or POSTGRES_HOST_AUTH_METHOD=trust to allow connections without a password (never do that beyond a local test)."
  fi

  # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of flags, as in the official image.
  with_passwd_entry initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
    --encoding=UTF8 --auth-local=trust --auth-host="$auth" $POSTGRES_INITDB_ARGS
  printf '\nhost all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"

  # A socket-only server, so nothing can connect over TCP before initialisation is over.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
  local psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
  if [ "$POSTGRES_DB" != postgres ]; then
    "${psql[@]}" --dbname postgres -v db="$POSTGRES_DB" <<< 'CREATE DATABASE :"db";'
  fi
  local f
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) echo "running $f"; if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
      *.sql) echo "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
      *) if [ -e "$f" ]; then echo "ignoring $f"; fi ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop
  unset POSTGRES_PASSWORD
  echo "PostgreSQL init process complete; ready for start up."
}

if [ "${1:0:1}" = - ]; then set -- postgres "$@"; fi

if [ "$1" = postgres ]; then
  prepare_dirs
  if [ "$(id -u)" = 0 ]; then
    exec gosu postgres "$BASH_SOURCE" "$@"
  fi
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    init_database
  else
    echo "PostgreSQL Database directory appears to contain a database; skipping initialization"
  fi
fi

exec "$@"
