#!/usr/bin/env bash
# The test command: unit tests, the ledger's conformance suite against SQLite and PostgreSQL
# (started here if it is down), database tables as sources (PostgreSQL, and MariaDB, also
# started here if it is down), then the end-to-end suite against independent S3 servers —
# s3s-fs in process, and a moto server this script installs (if needed) and starts — then the
# format and lint gates. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v moto_server >/dev/null 2>&1; then
  echo "installing moto (the second S3 server of the suite) from PyPI"
  python3 -m pip install --quiet 'moto[server]>=5,<6'
fi

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp -t godwit-moto.XXXXXX)
moto_server -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" 2>/dev/null; then
    break
  fi
  sleep 0.2
done
python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" \
  || { echo "moto did not start:"; cat "$log"; exit 1; }

export GODWIT_TEST_MOTO_ENDPOINT="http://127.0.0.1:$port"

# PostgreSQL, for the shared ledger: the machine runs one (127.0.0.1:5432, trust auth, database
# test). Start it if it is down; say plainly why not if it cannot be.
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! pg_up; then
  echo "PostgreSQL is not answering on 127.0.0.1:5432; starting it"
  if command -v pg_ctlcluster >/dev/null 2>&1 && ls /etc/postgresql >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
fi
if ! pg_up; then
  echo "PostgreSQL cannot be reached on 127.0.0.1:5432 and could not be started (pg_ctlcluster: $(command -v pg_ctlcluster || echo missing)); the ledger tests need it"
  exit 1
fi
export GODWIT_TEST_POSTGRES="postgres://${GODWIT_TEST_POSTGRES_USER:-$(id -un)}@127.0.0.1:5432/test"
# MariaDB, for content-store tables as a source: the machine runs one (127.0.0.1:3306, user root
# without a password, database test). Start it if it is down; say plainly why not if it cannot be.
mysql_up() { mariadb-admin ping -h 127.0.0.1 -P 3306 -u root --silent >/dev/null 2>&1; }
if ! mysql_up; then
  echo "MariaDB is not answering on 127.0.0.1:3306; starting it"
  if [ -x /etc/init.d/mariadb ]; then
    /etc/init.d/mariadb start >/dev/null 2>&1 || true
  elif command -v mysqld_safe >/dev/null 2>&1; then
    (mysqld_safe >/dev/null 2>&1 &)
  fi
  for _ in $(seq 1 100); do mysql_up && break; sleep 0.2; done
fi
if ! mysql_up; then
  echo "MariaDB cannot be reached on 127.0.0.1:3306 and could not be started (/etc/init.d/mariadb: $( [ -x /etc/init.d/mariadb ] && echo present || echo missing), mariadb-admin: $(command -v mariadb-admin || echo missing)); the database-source tests need it"
  exit 1
fi
mysql -h 127.0.0.1 -P 3306 -u root -e 'CREATE DATABASE IF NOT EXISTS test' >/dev/null
export GODWIT_TEST_MYSQL="mysql://root@127.0.0.1:3306/test"
# schemathesis checks the running server against its OpenAPI document.
if ! command -v schemathesis >/dev/null 2>&1; then
  echo "installing schemathesis (the API's OpenAPI check) from PyPI"
  python3 -m pip install --quiet 'schemathesis>=4,<5'
fi
# The dashboard's browser test: Debian's Chromium, and playwright-core (npm, pinned in
# crates/godwit/tests/browser/package-lock.json) to drive it.
if [ ! -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium (the dashboard's browser test)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
    || { echo "chromium could not be installed with apt-get; the browser test needs it"; exit 1; }
fi
if [ ! -d crates/godwit/tests/browser/node_modules/playwright-core ]; then
  command -v npm >/dev/null 2>&1 || { echo "npm is missing; the browser test needs Node.js and npm"; exit 1; }
  (cd crates/godwit/tests/browser && npm ci --no-audit --no-fund --silent) \
    || { echo "npm ci failed in crates/godwit/tests/browser; the browser test needs playwright-core"; exit 1; }
fi
# Never let an SDK look for instance metadata: this machine has no network beyond loopback.
export AWS_EC2_METADATA_DISABLED=true

cargo test --workspace --locked "$@"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
