#!/usr/bin/env bash
# Provides a ClickHouse server for tests and the demo and prints its native address.
#
#   hack/clickhouse.sh          start (or reuse) the private server; print host:port
#   hack/clickhouse.sh stop     stop the private server
#
# With CLICKHOUSE_ADDR set (host:port of the native protocol), that server is used as it is:
# it is only checked to answer. Otherwise a private server runs on 127.0.0.1 with its own
# config and data directory, started once and reused by later runs.
#
# Environment: CLICKHOUSE_ADDR, CLICKHOUSE_PORT (default 19000), CLICKHOUSE_HTTP_PORT
# (default 18123), CUSTOMERLOOP_STATE (default ${XDG_STATE_HOME:-$HOME/.local/state}/customerloop).
set -euo pipefail

log() { printf 'clickhouse: %s\n' "$*" >&2; }

answers() { # host port
  clickhouse-client --host "$1" --port "$2" --query 'SELECT 1' >/dev/null 2>&1
}

if [ -n "${CLICKHOUSE_ADDR:-}" ]; then
  host=${CLICKHOUSE_ADDR%:*}; port=${CLICKHOUSE_ADDR##*:}
  if command -v clickhouse-client >/dev/null 2>&1 && ! answers "$host" "$port"; then
    log "CLICKHOUSE_ADDR=$CLICKHOUSE_ADDR does not answer; unset it to use a private server"
    exit 1
  fi
  log "using $CLICKHOUSE_ADDR"
  echo "$CLICKHOUSE_ADDR"
  exit 0
fi

port=${CLICKHOUSE_PORT:-19000}
http_port=${CLICKHOUSE_HTTP_PORT:-18123}
state=${CUSTOMERLOOP_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/customerloop}
dir="$state/clickhouse-$port"

if [ "${1:-}" = stop ]; then
  pid=$(cat "$dir/server.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
    log "stopping the server on port $port"
    # Wait for the process itself, not only its port, so that a server started right
    # after finds the port and the data directory free.
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.5; done
    log "the server did not stop within 60 s"; exit 1
  fi
  log "no private server running on port $port"
  exit 0
fi

if ! command -v clickhouse-server >/dev/null 2>&1 || ! command -v clickhouse-client >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing clickhouse-server and clickhouse-client (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq clickhouse-server clickhouse-client >&2 \
      || { apt-get update -qq >&2 && apt-get install -y -qq clickhouse-server clickhouse-client >&2; }
  else
    log "ClickHouse is not installed. Install clickhouse-server and clickhouse-client with your"
    log "package manager (or start any ClickHouse and set CLICKHOUSE_ADDR=host:port), then run again."
    exit 1
  fi
fi

if answers 127.0.0.1 "$port"; then
  log "reusing the server on 127.0.0.1:$port"
  echo "127.0.0.1:$port"
  exit 0
fi

mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$dir/log"
cat > "$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$dir/log/server.log</log>
        <errorlog>$dir/log/server.err.log</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>$port</tcp_port>
    <http_port>$http_port</http_port>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>1073741824</uncompressed_cache_size>
    <mark_cache_size>536870912</mark_cache_size>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>$dir/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
</yandex>
XML
# The default user has no password and listens on loopback only; "customerloop" has one,
# so that credentials from a Secret can be exercised locally.
cat > "$dir/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <customerloop>
            <password>${CLICKHOUSE_DEV_PASSWORD:-customerloop-dev}</password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </customerloop>
    </users>
    <quotas><default></default></quotas>
</yandex>
XML

log "starting a private server on 127.0.0.1:$port (data in $dir)"
# ClickHouse writes no pid file unless it daemonizes itself, so record the pid here
# (setsid does not fork in a non-interactive shell: $! is the server).
setsid clickhouse-server --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 </dev/null &
echo $! > "$dir/server.pid"
for _ in $(seq 1 120); do
  if answers 127.0.0.1 "$port"; then
    log "ready"
    echo "127.0.0.1:$port"
    exit 0
  fi
  sleep 0.5
done
log "the server did not answer within 60 s; see $dir/log/"
tail -n 20 "$dir/log/server.err.log" "$dir/log/stdout.log" >&2 2>/dev/null || true
exit 1
