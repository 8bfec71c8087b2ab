#!/usr/bin/env bash
# Provides a ClickHouse server that speaks TLS on its native port, for the tests of TLS to
# ClickHouse, and prints its secure native address.
#
#   hack/clickhouse-tls.sh          start (or reuse) the server; print 127.0.0.1:<secure port>
#   hack/clickhouse-tls.sh certs    make the certificates if needed; print their directory
#   hack/clickhouse-tls.sh stop     stop the server
#
# It is a server of its own beside hack/clickhouse.sh's (own ports, config and data), so
# that starting, stopping or reconfiguring it never disturbs the plain server other tests
# share. Its users are those of hack/clickhouse.sh: default (no password, loopback) and
# customerloop (password CLICKHOUSE_DEV_PASSWORD).
#
# The certificates are throwaway ones made with openssl once per state directory, in
# <state>/clickhouse-tls-certs, and remade when they are about to expire:
#   ca.crt                    the CA that signs the others
#   server.crt, server.key    for 127.0.0.1, localhost and clickhouse.customerloop.test
#   client.crt, client.key    a client certificate (CN customerloop-worker)
# The server asks every client for a certificate and refuses one that ca.crt does not
# sign. With CLICKHOUSE_TLS_CLIENT_CERT=require it also refuses clients that present none
# (verificationMode strict).
#
# Environment: CLICKHOUSE_TLS_PORT (secure native port, default 19440),
# CLICKHOUSE_TLS_PLAIN_PORT (plain native port on loopback, for the readiness check,
# default 19430), CLICKHOUSE_TLS_CLIENT_CERT (optional or require, default optional),
# CLICKHOUSE_DEV_PASSWORD (default customerloop-dev), CUSTOMERLOOP_STATE (default
# ${XDG_STATE_HOME:-$HOME/.local/state}/customerloop).
set -euo pipefail

log() { printf 'clickhouse-tls: %s\n' "$*" >&2; }

port=${CLICKHOUSE_TLS_PORT:-19440}
plain_port=${CLICKHOUSE_TLS_PLAIN_PORT:-19430}
client_cert=${CLICKHOUSE_TLS_CLIENT_CERT:-optional}
state=${CUSTOMERLOOP_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/customerloop}
certs="$state/clickhouse-tls-certs"
dir="$state/clickhouse-tls-$port"

case "$client_cert" in
  optional) mode=relaxed ;;
  require) mode=strict ;;
  *) log "CLICKHOUSE_TLS_CLIENT_CERT=$client_cert: want optional or require"; exit 1 ;;
esac

answers() { # port
  clickhouse-client --host 127.0.0.1 --port "$1" --query 'SELECT 1' >/dev/null 2>&1
}

# ours: the pid in the pid file when that process is alive and is this server (a pid file
# left by a kill -9 may name a pid reused by something else).
ours() {
  local pid
  pid=$(cat "$dir/server.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/config.xml" || return 1
  echo "$pid"
}

install() { # package...
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing $* (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "$@" >&2 || { apt-get update -qq >&2 && apt-get install -y -qq "$@" >&2; }
  else
    log "$* not installed: install it with your package manager, then run again"
    exit 1
  fi
}

# make_certs writes a fresh CA, server and client certificate into a new directory and
# moves it into place, so that a reader never sees half of them.
make_certs() {
  command -v openssl >/dev/null 2>&1 || install openssl
  local tmp
  tmp=$(mktemp -d "$state/.clickhouse-tls-certs.XXXXXX")
  (
    cd "$tmp"
    umask 077
    key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    key ca.key
    openssl req -x509 -new -key ca.key -out ca.crt -days 825 -subj "/CN=CustomerLoop test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    leaf() { # name subject extensions
      key "$1.key"
      openssl req -new -key "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
        -days 825 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    leaf server "/CN=clickhouse.customerloop.test" "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:clickhouse.customerloop.test
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature"
    leaf client "/CN=customerloop-worker" "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature"
    rm -f ca.key
    chmod 644 ca.crt server.crt client.crt
  )
  rm -rf "$certs"
  mv "$tmp" "$certs"
  log "made a throwaway CA, server and client certificate in $certs"
}

certs_fresh() {
  local f
  for f in ca.crt server.crt server.key client.crt client.key; do [ -s "$certs/$f" ] || return 1; done
  for f in ca.crt server.crt client.crt; do
    openssl x509 -in "$certs/$f" -noout -checkend 86400 >/dev/null 2>&1 || return 1
  done
}

mkdir -p "$state"
# One run at a time per state directory: two tests provisioning at once must not make two
# sets of certificates or start two servers on one port.
exec 9>"$state/.clickhouse-tls.lock"
flock 9

if [ "${1:-}" = stop ]; then
  if pid=$(ours); then
    log "stopping the TLS server on port $port"
    kill "$pid" 2>/dev/null || true
    # Wait for the process itself, so that a server started right after finds the ports
    # and the data directory free.
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || { rm -f "$dir/server.pid"; exit 0; }; sleep 0.5; done
    log "the server did not stop within 60 s"; exit 1
  fi
  log "no TLS server running on port $port"
  exit 0
fi

command -v openssl >/dev/null 2>&1 || install openssl
certs_fresh || make_certs
if [ "${1:-}" = certs ]; then
  echo "$certs"
  exit 0
fi

if ! command -v clickhouse-server >/dev/null 2>&1 || ! command -v clickhouse-client >/dev/null 2>&1; then
  install clickhouse-server clickhouse-client
fi

# The config names the certificates and the client-certificate mode; a running server
# whose config differs (new certificates, another mode) is restarted.
mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$dir/log"
cat > "$dir/config.xml.new" <<XML
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
    <tcp_port>$plain_port</tcp_port>
    <tcp_port_secure>$port</tcp_port_secure>
    <openSSL>
        <server>
            <certificateFile>$certs/server.crt</certificateFile>
            <privateKeyFile>$certs/server.key</privateKeyFile>
            <caConfig>$certs/ca.crt</caConfig>
            <verificationMode>$mode</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
            <invalidCertificateHandler><name>RejectCertificateHandler</name></invalidCertificateHandler>
        </server>
    </openSSL>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
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
cat > "$dir/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
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

secure_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

if pid=$(ours); then
  if cmp -s "$dir/config.xml" "$dir/config.xml.new" && answers "$plain_port" && secure_open; then
    rm -f "$dir/config.xml.new"
    log "reusing the TLS server on 127.0.0.1:$port"
    echo "127.0.0.1:$port"
    exit 0
  fi
  log "restarting the TLS server on port $port: its config changed or it does not answer"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
fi
mv "$dir/config.xml.new" "$dir/config.xml"
if answers "$plain_port" || secure_open; then
  log "port $plain_port or $port is taken by another process; set CLICKHOUSE_TLS_PORT and CLICKHOUSE_TLS_PLAIN_PORT"
  exit 1
fi

log "starting a TLS server on 127.0.0.1:$port (client certificates $client_cert; data in $dir)"
# setsid does not fork in a non-interactive shell: $! is the server. The lock's descriptor
# is not passed on, so that the next run does not wait for the server to exit.
setsid clickhouse-server --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 </dev/null 9>&- &
echo $! > "$dir/server.pid"
for _ in $(seq 1 120); do
  if answers "$plain_port" && secure_open; then
    log "ready"
    echo "127.0.0.1:$port"
    exit 0
  fi
  sleep 0.5
done
log "the server did not answer within 60 s; see $dir/log/"
tail -n 20 "$dir/log/server.err.log" "$dir/log/stdout.log" >&2 2>/dev/null || true
exit 1
