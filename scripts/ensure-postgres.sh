#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 for the tests, starting the
# machine's cluster (or installing Debian's server) when it does not, and creates the
# incidentlab_test database. The tests that need it are marked `postgres`: with CI=true
# a skip of one of them is a failure, so this must succeed in CI.
set -euo pipefail

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-postgres: PostgreSQL is not answering on 127.0.0.1:5432 and this is not root" >&2
    exit 0
  fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "ensure-postgres: installing Debian's postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

psql_as() { if [ "$(id -u)" -eq 0 ] && id postgres >/dev/null 2>&1; then su postgres -c "psql -qtA $*"; else psql -qtA -h 127.0.0.1 -U postgres "$@"; fi; }
if ! psql_as "-c \"SELECT 1 FROM pg_database WHERE datname = 'incidentlab_test'\"" | grep -q 1; then
  psql_as "-c \"CREATE DATABASE incidentlab_test\""
fi
