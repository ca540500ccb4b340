#!/usr/bin/env bash
# Makes this machine ready to run tl-engine locally. Idempotent; quiet unless it fails.
#
# Usage: infra/local/prepare.sh [fleet|test|all|test-cleanup]
#        (or PREPARE_MODE=...; default all)
#
#   both modes  PostgreSQL, Redis and RabbitMQ running on loopback (started if stopped),
#               the RabbitMQ management plugin answering on http://127.0.0.1:15672,
#               the local S3 server (s3s-fs, installed with cargo once) on 127.0.0.1:9100
#               with buckets tl-engine and tl-engine-test, databases tl_engine and
#               tl_engine_test present
#   fleet       vhost `demo`, .run/engine.toml (kept once written), release binaries,
#               migrations applied to tl_engine, demo API key in .run/demo.key (kept while valid)
#   test        debug binaries, migrations applied to the test database
#               ($TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/tl_engine_test),
#               PgBouncer installed from Debian's packages (tests start their own, in
#               transaction mode; nothing is started here), leftover test vhosts deleted
#   test-cleanup  only deletes the test vhosts (bin/test runs it after the tests)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RUN_DIR="$ROOT/.run"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac

MODE="${1:-${PREPARE_MODE:-all}}"
case "$MODE" in
  fleet|test|all|test-cleanup) ;;
  -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) printf 'prepare: unknown mode %q (expected fleet, test, all or test-cleanup)\n' "$MODE" >&2; exit 2 ;;
esac

PG_HOST=127.0.0.1
PG_PORT=5432
PG_USER=postgres
DEMO_DB=tl_engine
TEST_DB=tl_engine_test
DEMO_DATABASE_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$DEMO_DB"
TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://$PG_USER@$PG_HOST:$PG_PORT/$TEST_DB}"
AMQP_URL_LOCAL="amqp://guest:guest@127.0.0.1:5672/%2f"
TEST_AMQP_URL="${TEST_AMQP_URL:-$AMQP_URL_LOCAL}"
MANAGEMENT_URL="http://127.0.0.1:15672"
DEMO_NAMESPACE=demo
DEMO_VHOST=demo
# The local S3-compatible server (s3s-fs, built from crates.io: no prebuilt binary can be
# downloaded here). Its data lives outside the repository, so clones share it.
S3_VERSION=0.14.1
S3_PORT="${TL_ENGINE_S3_PORT:-9100}"
S3_DIR="${TL_ENGINE_S3_DIR:-$HOME/.local/share/tl-engine/s3}"
S3_ACCESS_KEY=tl-engine-local
S3_SECRET_KEY=tl-engine-local-secret
S3_BUCKETS=(tl-engine tl-engine-test)

die() {
  printf 'prepare: %s\n' "$*" >&2
  exit 1
}

# need COMMAND WHAT-IT-IS-FOR: fail clearly when a command is not installed.
need() {
  command -v "$1" >/dev/null 2>&1 || die "required command '$1' is missing ($2); install it and run again"
}

# quietly DESCRIPTION COMMAND...: runs COMMAND; its output is shown only if it fails.
quietly() {
  local description="$1" output status
  shift
  status=0
  output="$("$@" 2>&1)" || status=$?
  if ((status != 0)); then
    printf 'prepare: %s failed (exit %d):\n%s\n' "$description" "$status" "$output" >&2
    exit 1
  fi
}

# wait_until SECONDS DESCRIPTION COMMAND...: retries COMMAND until it succeeds or time runs out.
wait_until() {
  local seconds="$1" description="$2"
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${seconds}s waiting for $description"
    sleep 1
  done
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

psql_admin() {
  psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -X -q -A -t -v ON_ERROR_STOP=1 "$@"
}

# --- services ---------------------------------------------------------------------------

ensure_postgres() {
  need psql "the PostgreSQL client"
  need pg_isready "the PostgreSQL client"
  if pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; then
    return
  fi
  need pg_ctlcluster "PostgreSQL server tools, to start the stopped server"
  [[ -d /etc/postgresql ]] || die "PostgreSQL is not answering on $PG_HOST:$PG_PORT and no server is installed (/etc/postgresql is missing)"
  quietly "starting PostgreSQL" pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  wait_until 30 "PostgreSQL on $PG_HOST:$PG_PORT" pg_isready -q -h "$PG_HOST" -p "$PG_PORT"
}

redis_answers() {
  [[ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" == PONG ]]
}

ensure_redis() {
  need redis-cli "the Redis client"
  if redis_answers; then
    return
  fi
  need redis-server "the Redis server, to start it"
  quietly "starting Redis" redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_until 15 "Redis on 127.0.0.1:6379" redis_answers
}

rabbitmq_ready() {
  port_open 5672 && timeout 15 rabbitmqctl -q await_startup
}

ensure_rabbitmq() {
  need rabbitmqctl "RabbitMQ's admin tool"
  need rabbitmq-plugins "RabbitMQ's plugin tool"
  if port_open 5672; then
    return
  fi
  # The port is closed: start the node unless it is already up and still booting.
  if ! timeout 15 rabbitmqctl -q status >/dev/null 2>&1; then
    need rabbitmq-server "the RabbitMQ server, to start it"
    quietly "starting RabbitMQ" rabbitmq-server -detached
  fi
  wait_until 120 "RabbitMQ on 127.0.0.1:5672 (rabbitmqctl await_startup)" rabbitmq_ready
}

management_answers() {
  curl -fsS --max-time 3 -u guest:guest "$MANAGEMENT_URL/api/overview" -o /dev/null
}

ensure_management() {
  need curl "to reach RabbitMQ's management API"
  if management_answers; then
    return
  fi
  quietly "enabling the RabbitMQ management plugin" rabbitmq-plugins enable rabbitmq_management
  wait_until 90 "the RabbitMQ management API at $MANAGEMENT_URL (guest/guest)" management_answers
}

s3s_binary() {
  command -v s3s-fs 2>/dev/null || { [[ -x "$HOME/.cargo/bin/s3s-fs" ]] && echo "$HOME/.cargo/bin/s3s-fs"; }
}

ensure_s3() {
  local binary
  binary="$(s3s_binary || true)"
  if [[ -z "$binary" ]] || ! cargo install --list 2>/dev/null | grep -qx "s3s-fs v$S3_VERSION:"; then
    need cargo "the Rust toolchain, to install the local S3 server (s3s-fs)"
    quietly "installing s3s-fs $S3_VERSION (cargo install; about 3 minutes, once)" \
      cargo install "s3s-fs@$S3_VERSION" --features binary --locked --quiet
    binary="$(s3s_binary)" || die "s3s-fs was installed but is not on PATH nor in ~/.cargo/bin"
  fi
  local bucket
  for bucket in "${S3_BUCKETS[@]}"; do
    mkdir -p "$S3_DIR/$bucket" # s3s-fs serves each folder of its root as a bucket
  done
  if port_open "$S3_PORT"; then
    if s3_server_healthy; then
      return
    fi
    # Our own server, but broken: started from a folder that was deleted since (a CI clone),
    # it fails every request. Restart it; never touch anything else on that port.
    local stale
    stale="$(pgrep -f "s3s-fs --host 127.0.0.1 --port $S3_PORT " || true)"
    [[ -n "$stale" ]] || die "port $S3_PORT is taken by something other than the local S3 server (set TL_ENGINE_S3_PORT)"
    kill $stale 2>/dev/null || true
    wait_until 15 "the stale S3 server to stop" port_closed "$S3_PORT"
  fi
  # Started from / so that deleting the folder this script ran in (a CI clone) cannot break
  # it, and in a session of its own (setsid) so that a caller that kills its whole process
  # group on exit (a CI step, a terminal closing) does not take the server with it. (The
  # background subshell is not a group leader, so setsid runs in place and $! is the server.)
  (cd / && exec setsid nohup "$binary" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_ACCESS_KEY" \
    --secret-key "$S3_SECRET_KEY" "$S3_DIR" >"$S3_DIR.log" 2>&1 </dev/null) &
  echo $! >"$S3_DIR.pid"
  wait_until 30 "the local S3 server on 127.0.0.1:$S3_PORT (log: $S3_DIR.log)" port_open "$S3_PORT"
}

port_closed() {
  ! port_open "$1"
}

# s3_server_healthy: the server this script started is alive and its working folder exists.
s3_server_healthy() {
  local pid
  pid="$(cat "$S3_DIR.pid" 2>/dev/null)" || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" != *"(deleted)" ]]
}

# --- PostgreSQL databases -----------------------------------------------------------------

ensure_database() {
  local name="$1"
  if [[ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$name'")" ]]; then
    # A concurrent run may have created it meanwhile: check again before failing.
    psql_admin -c "CREATE DATABASE \"$name\"" >/dev/null 2>&1 ||
      [[ -n "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$name'")" ]] ||
      die "could not create database $name on $PG_HOST:$PG_PORT"
  fi
}

# --- the demo fleet ---------------------------------------------------------------------

ensure_demo_vhost() {
  local vhosts
  vhosts="$(rabbitmqctl -q list_vhosts name 2>&1)" || die "rabbitmqctl list_vhosts failed: $vhosts"
  if ! grep -qx "$DEMO_VHOST" <<<"$vhosts"; then
    quietly "creating vhost $DEMO_VHOST" rabbitmqctl -q add_vhost "$DEMO_VHOST"
    quietly "granting guest access to vhost $DEMO_VHOST" \
      rabbitmqctl -q set_permissions -p "$DEMO_VHOST" guest ".*" ".*" ".*"
  fi
  # Dead jobs are redriven from PostgreSQL, so their parked messages are only a record:
  # keep them 14 days. Idempotent (set_policy replaces a policy of the same name).
  quietly "setting the dead-queue retention policy on vhost $DEMO_VHOST" \
    rabbitmqctl -q set_policy -p "$DEMO_VHOST" dead-retention '^jobs\.dead$' \
    '{"message-ttl":1209600000}' --apply-to queues
}

random_hex() {
  od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
}

# The local S3 server's storage settings; also appended to demo settings written before
# storage existed (each table only if the file has none).
demo_storage_settings() {
  local config="$1"
  grep -q '^\[storage\]' "$config" 2>/dev/null || cat <<EOF

# The local S3-compatible server (attempt logs, artifacts, archives, backups).
[storage]
endpoint_url = "http://127.0.0.1:$S3_PORT"
access_key_id = "$S3_ACCESS_KEY"
secret_access_key = "$S3_SECRET_KEY"
bucket = "${S3_BUCKETS[0]}"
force_path_style = true
EOF
  grep -q '^\[backup\]' "$config" 2>/dev/null || cat <<EOF

# The demo namespace's keys may submit db.backup.
[backup]
namespace = "$DEMO_NAMESPACE"
EOF
}

ensure_demo_config() {
  local config="$RUN_DIR/engine.toml"
  if [[ -s "$config" ]]; then
    demo_storage_settings "$config" >>"$config"
    return
  fi
  mkdir -p "$RUN_DIR"
  (
    umask 077
    cat >"$config.tmp" <<EOF
# Settings of the local demo fleet (bin/fleet), written once by infra/local/prepare.sh.
# Delete this file to have a new one written (with a new webhook signing secret).
# Environment variables (ENGINE__SECTION__KEY, DATABASE_URL, AMQP_URL) override it.

[database]
url = "$DEMO_DATABASE_URL"
migrate_on_start = false

[amqp]
url = "$AMQP_URL_LOCAL"

[namespaces.$DEMO_NAMESPACE]
vhost = "$DEMO_VHOST"
webhook_signing_secret = "$(random_hex)"
EOF
    demo_storage_settings "$config.tmp" >>"$config.tmp"
    mv "$config.tmp" "$config"
  )
}

# Settings for the admin commands come from the demo file alone, not from the caller's env.
demo_api() {
  env -u DATABASE_URL -u AMQP_URL -u ENGINE_CONFIG \
    "$TARGET_DIR/release/engine-api" --config "$RUN_DIR/engine.toml" "$@"
}

# The stored key still names an active key (the database may have been recreated, or the
# key revoked). Keys are stored as SHA-256 hashes.
demo_key_valid() {
  local key
  key="$(<"$RUN_DIR/demo.key")"
  [[ -n "$key" ]] || return 1
  [[ -n "$(psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$DEMO_DB" -X -q -A -t \
    -v ON_ERROR_STOP=1 -v key="$key" 2>/dev/null <<'SQL'
SELECT 1 FROM api_keys
 WHERE key_hash = sha256(convert_to(:'key', 'UTF8')) AND revoked_at IS NULL AND namespace = 'demo';
SQL
  )" ]]
}

ensure_demo_key() {
  local key_file="$RUN_DIR/demo.key" key note status=0
  if [[ -s "$key_file" ]] && demo_key_valid; then
    return
  fi
  note="$(mktemp)"
  key="$(demo_api keys create --namespace "$DEMO_NAMESPACE" --label "local demo (bin/fleet)" 2>"$note")" || status=$?
  if ((status != 0)) || [[ -z "$key" ]]; then
    printf 'prepare: creating the demo API key failed:\n%s\n' "$(<"$note")" >&2
    rm -f "$note"
    exit 1
  fi
  (
    umask 077
    printf '%s\n' "$key" >"$key_file.tmp"
    mv "$key_file.tmp" "$key_file"
    # "API key <id> for namespace demo ...": keep the id for `engine-api keys revoke <id>`.
    sed -n 's/^API key \([0-9a-f-]*\) for namespace.*/\1/p' "$note" >"$RUN_DIR/demo.key.id"
  )
  chmod 600 "$key_file"
  rm -f "$note"
}

prepare_fleet() {
  need cargo "the Rust toolchain, to build the binaries"
  ensure_demo_vhost
  ensure_demo_config
  (cd "$ROOT" && cargo build --quiet --release --bins) || die "cargo build --release --bins failed"
  quietly "migrating $DEMO_DB (engine-api migrate)" demo_api migrate
  ensure_demo_key
}

# The tests run the fleet through a PgBouncer of their own in transaction mode (Neon's pooler
# is one). Installed, never started or configured here.
ensure_pgbouncer() {
  command -v pgbouncer >/dev/null 2>&1 && return
  need apt-get "Debian's package manager, to install PgBouncer (or install pgbouncer yourself)"
  local sudo=()
  if ((EUID != 0)); then
    need sudo "root rights, to install PgBouncer with apt-get (or install pgbouncer yourself)"
    sudo=(sudo -n)
  fi
  # policy-rc.d may refuse to start the package's own service: that is fine, it is not used.
  # A stale package index is refreshed once before giving up.
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >/dev/null 2>&1; then
    quietly "refreshing the package index (apt-get update)" "${sudo[@]}" apt-get update -q
    quietly "installing PgBouncer (apt-get install pgbouncer)" \
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer
  fi
  command -v pgbouncer >/dev/null 2>&1 || die "pgbouncer was installed but is not on PATH"
}

# RabbitMQ 3.10's dead-letter supervisor (rabbit_fifo_dlx_sup) can die when a vhost is deleted
# while one of its quorum queues is being declared; from then on the broker refuses every
# quorum queue with INTERNAL_ERROR until it is restarted. The tests delete their vhosts
# seconds after they end (tests/src/services.rs, delete_vhost_later); this cleanup deletes
# what is left, before and after a run (when nothing declares anything), one vhost at a
# time, and then brings the supervisor back if anything killed it. A fault of that broker version (CloudAMQP runs newer ones).
clean_test_broker() {
  local vhost
  while read -r vhost; do
    [[ "$vhost" =~ ^t-[0-9a-f]{10}$ ]] || continue
    # A vhost with connections belongs to a test suite running right now: not leftover.
    [[ "$(curl -fsS -u guest:guest "$MANAGEMENT_URL/api/vhosts/$vhost/connections" 2>/dev/null)" == "[]" ]] ||
      continue
    # 404: a test's own delayed deletion got there first.
    local status
    status="$(curl -sS -o /dev/null -w '%{http_code}' -u guest:guest -X DELETE "$MANAGEMENT_URL/api/vhosts/$vhost")" ||
      die "deleting leftover test vhost $vhost failed"
    [[ "$status" == 204 || "$status" == 404 ]] || die "deleting leftover test vhost $vhost: HTTP $status"
  done < <(rabbitmqctl -q list_vhosts name 2>/dev/null)
  local alive
  alive="$(rabbitmqctl -q eval 'is_pid(whereis(rabbit_fifo_dlx_sup)).' 2>&1)" ||
    die "asking RabbitMQ about its dead-letter supervisor failed: $alive"
  if [[ "$alive" != "true" ]]; then
    quietly "restarting RabbitMQ's dead-letter supervisor (rabbit_fifo_dlx_sup)" \
      rabbitmqctl -q eval '{ok, _} = supervisor:restart_child(rabbit_sup, rabbit_fifo_dlx_sup), ok.'
  fi
}

prepare_test() {
  need cargo "the Rust toolchain, to build the binaries"
  ensure_pgbouncer
  clean_test_broker
  (cd "$ROOT" && cargo build --quiet --workspace --bins) || die "cargo build --workspace --bins failed"
  quietly "migrating the test database (engine-api migrate)" \
    env -u ENGINE_CONFIG DATABASE_URL="$TEST_DATABASE_URL" AMQP_URL="$TEST_AMQP_URL" \
    "$TARGET_DIR/debug/engine-api" migrate
}

if [[ "$MODE" == test-cleanup ]]; then
  ensure_rabbitmq
  ensure_management
  clean_test_broker
  exit 0
fi

ensure_postgres
ensure_redis
ensure_rabbitmq
ensure_management
ensure_s3
ensure_database "$DEMO_DB"
ensure_database "$TEST_DB"
case "$MODE" in
  fleet) prepare_fleet ;;
  test) prepare_test ;;
  all)
    prepare_fleet
    prepare_test
    ;;
esac
