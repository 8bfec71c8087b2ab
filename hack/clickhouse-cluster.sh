#!/usr/bin/env bash
# Provides a three-node ClickHouse cluster with ZooKeeper for tests and the demo, and prints
# the nodes' native addresses.
#
#   hack/clickhouse-cluster.sh                start (or reuse) ZooKeeper and the three nodes;
#                                             print host:port of node1,node2,node3
#   hack/clickhouse-cluster.sh stop           stop the nodes, then ZooKeeper
#   hack/clickhouse-cluster.sh stop-node N    stop node N (1..3) and wait for it to exit
#   hack/clickhouse-cluster.sh start-node N   start node N (and ZooKeeper) and wait until it answers
#   hack/clickhouse-cluster.sh wipe           stop everything and remove its state
#
# The cluster is named "customerloop" and sets internal_replication: node1 (127.0.0.1:19101)
# and node2 (:19102) are the two replicas of shard 01, node3 (:19103) is shard 02. Each node
# has the macros {shard} and {replica} (its node name, unique in the cluster) and runs
# distributed DDL from /clickhouse/task_queue/ddl. Users are those of hack/clickhouse.sh:
# default (no password, loopback) and customerloop (password CLICKHOUSE_DEV_PASSWORD).
#
# Everything runs as plain processes on 127.0.0.1 with config and data under the state
# directory; a later run reuses what is running and restarts what is not (after a kill -9
# too).
#
# Environment: CLUSTER_ZK_PORT (default 12181), CLUSTER_PORT_OFFSET (default 0, added to every
# node port: a second cluster beside the first), CLICKHOUSE_DEV_PASSWORD (default
# customerloop-dev), CUSTOMERLOOP_STATE (default ${XDG_STATE_HOME:-$HOME/.local/state}/customerloop).
set -euo pipefail

log() { printf 'clickhouse-cluster: %s\n' "$*" >&2; }

cluster=customerloop
zk_port=${CLUSTER_ZK_PORT:-12181}
state=${CUSTOMERLOOP_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/customerloop}
offset=${CLUSTER_PORT_OFFSET:-0}
root="$state/clickhouse-cluster"
[ "$offset" = 0 ] || root="$root-$offset"
zkdir="$root/zookeeper"
nodes=(1 2 3)

tcp_port() { echo $((19100 + offset + $1)); }
http_port() { echo $((18200 + offset + $1)); }
interserver_port() { echo $((19200 + offset + $1)); }
shard_of() { if [ "$1" = 3 ]; then echo 02; else echo 01; fi; }
node_dir() { echo "$root/node$1"; }

addrs() {
  local out="" n
  for n in "${nodes[@]}"; do out="$out${out:+,}127.0.0.1:$(tcp_port "$n")"; done
  echo "$out"
}

# ours pidfile marker: the pid in pidfile when that process is alive and its command line
# names marker (a pid file left by a kill -9 may name a pid reused by something else).
ours() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2" || return 1
  echo "$pid"
}

# launch pidfile out command...: start command in a session of its own, its output appended
# to out, and return once pidfile holds its pid. The pid is written by the child itself just
# before it execs the command, so that ours() never sees the shell between fork and exec (a
# check right after "cmd &" can, on a slow first start, and then takes a starting server for
# a dead one) and the pid is right even where setsid forks.
launch() {
  local pidfile=$1 out=$2
  shift 2
  rm -f "$pidfile"
  setsid bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" \
    >>"$out" 2>&1 </dev/null 9>&- &
  for _ in $(seq 1 200); do
    [ -s "$pidfile" ] && return 0
    sleep 0.05
  done
  log "$1 did not start within 10 s"
  return 1
}

# stop_process name pidfile marker: TERM, wait for the process itself to exit (so that a
# restart finds its ports and data free), KILL after 60 s.
stop_process() {
  local pid
  pid=$(ours "$2" "$3") || { log "$1 is not running"; rm -f "$2"; return 0; }
  log "stopping $1 (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$2"; return 0; }
    sleep 0.5
  done
  log "$1 did not stop within 60 s; killing it"
  kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$2"; return 0; }
    sleep 0.5
  done
  log "$1 (pid $pid) survived kill -9"
  return 1
}

install_missing() {
  local missing=() p
  command -v clickhouse-server >/dev/null 2>&1 || missing+=(clickhouse-server)
  command -v clickhouse-client >/dev/null 2>&1 || missing+=(clickhouse-client)
  [ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null 2>&1 || missing+=(zookeeper)
  [ ${#missing[@]} = 0 ] && return 0
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing ${missing[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >&2 \
      || { apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >&2; }
  else
    for p in "${missing[@]}"; do log "$p is not installed"; done
    log "install them with your package manager (Debian: clickhouse-server clickhouse-client"
    log "zookeeper), then run again."
    exit 1
  fi
}

# ZooKeeper answers "imok" to ruok once it serves clients.
zk_answers() {
  [ "$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$zk_port && printf ruok >&3 && cat <&3" 2>/dev/null)" = imok ]
}

start_zk() {
  if zk_answers; then
    log "reusing ZooKeeper on 127.0.0.1:$zk_port"
    return 0
  fi
  mkdir -p "$zkdir/data" "$zkdir/log"
  if ! ours "$zkdir/zookeeper.pid" "$zkdir/zoo.cfg" >/dev/null; then
    # Standalone ZooKeeper for tests: no admin server, no fsync per write (a killed process
    # loses nothing; only a machine crash would), small preallocated logs.
    cat >"$zkdir/zoo.cfg" <<CFG
tickTime=2000
dataDir=$zkdir/data
clientPortAddress=127.0.0.1
clientPort=$zk_port
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,mntr
forceSync=no
preAllocSize=4096
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
CFG
    # The package's wrapper scripts read /etc/zookeeper; run the server class directly.
    # zookeeper.jar's manifest lists its dependencies; slf4j-simple sends warnings to the log.
    local cp=/usr/share/java/zookeeper.jar
    [ -f /usr/share/java/slf4j-simple.jar ] && cp="$cp:/usr/share/java/slf4j-simple.jar"
    log "starting ZooKeeper on 127.0.0.1:$zk_port (data in $zkdir)"
    # The log of earlier starts is kept one generation back, so that a failure below shows
    # this start's lines and not the end of an older run.
    [ -f "$zkdir/log/zookeeper.log" ] && mv -f "$zkdir/log/zookeeper.log" "$zkdir/log/zookeeper.log.1"
    launch "$zkdir/zookeeper.pid" "$zkdir/log/zookeeper.log" \
      java -Xms32m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -Dzookeeper.admin.enableServer=false \
      -cp "$cp" org.apache.zookeeper.server.ZooKeeperServerMain "$zkdir/zoo.cfg" || exit 1
  fi
  local why="did not answer within 30 s"
  for _ in $(seq 1 120); do
    zk_answers && return 0
    ours "$zkdir/zookeeper.pid" "$zkdir/zoo.cfg" >/dev/null || { why="exited while starting"; break; }
    sleep 0.25
  done
  log "ZooKeeper on 127.0.0.1:$zk_port $why; its log ($zkdir/log/zookeeper.log) ends:"
  tail -n 20 "$zkdir/log/zookeeper.log" >&2 2>/dev/null || true
  exit 1
}

write_node_config() { # n
  local n=$1 dir
  dir=$(node_dir "$n")
  mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$dir/log"
  local replicas="" shard
  for shard in 01 02; do
    local r="" m
    for m in "${nodes[@]}"; do
      [ "$(shard_of "$m")" = "$shard" ] || continue
      r="$r
                <replica><host>127.0.0.1</host><port>$(tcp_port "$m")</port><user>default</user></replica>"
    done
    replicas="$replicas
            <shard>
                <internal_replication>true</internal_replication>$r
            </shard>"
  done
  cat >"$dir/config.xml" <<XML
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
    <tcp_port>$(tcp_port "$n")</tcp_port>
    <http_port>$(http_port "$n")</http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <interserver_http_port>$(interserver_port "$n")</interserver_http_port>
    <max_connections>1024</max_connections>
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
    <remote_servers>
        <$cluster>$replicas
        </$cluster>
    </remote_servers>
    <macros>
        <cluster>$cluster</cluster>
        <shard>$(shard_of "$n")</shard>
        <replica>node$n</replica>
    </macros>
    <zookeeper>
        <node><host>127.0.0.1</host><port>$zk_port</port></node>
        <session_timeout_ms>30000</session_timeout_ms>
    </zookeeper>
    <distributed_ddl>
        <path>/clickhouse/task_queue/ddl</path>
    </distributed_ddl>
</yandex>
XML
  # As hack/clickhouse.sh; the cluster's replicas connect to each other as "default".
  # distributed_ddl_task_timeout: an ON CLUSTER statement waits this long for every node
  # (180 s by default) before it fails, while the task stays queued for a node that is down.
  cat >"$dir/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <distributed_ddl_task_timeout>60</distributed_ddl_task_timeout>
            <background_pool_size>4</background_pool_size>
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
}

query() { # n sql
  clickhouse-client --host 127.0.0.1 --port "$(tcp_port "$1")" --query "$2" 2>/dev/null
}

# node_ready n: the node answers, knows the whole cluster, talks to ZooKeeper, and none of
# its Replicated tables is read-only (as they are until a node renews a ZooKeeper session
# lost when ZooKeeper restarted).
node_ready() {
  [ "$(query "$1" "SELECT count() FROM system.clusters WHERE cluster='$cluster'")" = 3 ] &&
    [ "$(query "$1" "SELECT count() > 0 FROM system.zookeeper WHERE path='/'")" = 1 ] &&
    [ "$(query "$1" "SELECT count() FROM system.replicas WHERE is_readonly OR is_session_expired")" = 0 ]
}

# spawn_node n: start node n unless it answers or is still starting.
spawn_node() {
  local n=$1 dir
  dir=$(node_dir "$n")
  if query "$n" 'SELECT 1' >/dev/null; then
    log "reusing node$n on 127.0.0.1:$(tcp_port "$n")"
    return 0
  fi
  ours "$dir/server.pid" "$dir/config.xml" >/dev/null && return 0
  write_node_config "$n"
  log "starting node$n on 127.0.0.1:$(tcp_port "$n") (data in $dir)"
  : >"$dir/log/stdout.log"
  launch "$dir/server.pid" "$dir/log/stdout.log" clickhouse-server --config-file="$dir/config.xml" || exit 1
}

# wait_node n: wait until node n is ready. 18.16 sometimes aborts while it loads its tables
# right after ZooKeeper itself restarted ("Caught exception while loading metadata ...
# Invalid argument"); a second start succeeds, so a node that died is started again.
wait_node() { # n
  local n=$1 dir tries=0
  dir=$(node_dir "$n")
  for _ in $(seq 1 240); do
    node_ready "$n" && return 0
    if ! ours "$dir/server.pid" "$dir/config.xml" >/dev/null && ! query "$n" 'SELECT 1' >/dev/null; then
      tries=$((tries + 1))
      [ "$tries" -le 2 ] || break
      log "node$n exited while starting; starting it again"
      spawn_node "$n"
    fi
    sleep 0.25
  done
  log "node$n is not ready after 60 s; see $dir/log/"
  tail -n 20 "$dir/log/server.err.log" "$dir/log/stdout.log" >&2 2>/dev/null || true
  exit 1
}

check_node_arg() {
  case "${1:-}" in
    1 | 2 | 3) ;;
    *) log "usage: $0 stop-node|start-node N (N = 1..3)"; exit 2 ;;
  esac
}

stop_node() {
  stop_process "node$1" "$(node_dir "$1")/server.pid" "$(node_dir "$1")/config.xml"
  # A node started from another state directory has no pid file here: saying "stopped"
  # while it still answers would let a test believe a replica is down.
  if clickhouse-client --host 127.0.0.1 --port "$(tcp_port "$1")" --query 'SELECT 1' >/dev/null 2>&1; then
    log "node$1 still answers on port $(tcp_port "$1"): it was not started from $root (set CUSTOMERLOOP_STATE to the state directory that started it)"
    return 1
  fi
}
stop_all() {
  local n pids=()
  for n in "${nodes[@]}"; do stop_node "$n" & pids+=($!); done
  for n in "${pids[@]}"; do wait "$n"; done
  stop_process ZooKeeper "$zkdir/zookeeper.pid" "$zkdir/zoo.cfg"
}

case "${1:-start}" in
  start)
    # A test that stops a node on purpose holds this lock (testkit.LockCluster). A start
    # from another checkout waits for it instead of bringing the node back under the
    # test; the tests themselves only stop and start single nodes. The servers started
    # below do not inherit the lock (9>&-).
    if command -v flock >/dev/null 2>&1; then
      exec 9>"${TMPDIR:-/tmp}/customerloop-test-cluster.lock"
      flock -n 9 || { log "waiting for a test that holds the cluster"; flock 9; }
    fi
    install_missing
    start_zk
    for n in "${nodes[@]}"; do spawn_node "$n"; done
    for n in "${nodes[@]}"; do wait_node "$n"; done
    log "ready: cluster $cluster"
    addrs
    ;;
  stop)
    stop_all
    ;;
  stop-node)
    check_node_arg "${2:-}"
    stop_node "$2"
    ;;
  start-node)
    check_node_arg "${2:-}"
    install_missing
    start_zk
    spawn_node "$2"
    wait_node "$2"
    ;;
  wipe)
    stop_all
    log "removing $root"
    rm -rf "$root"
    ;;
  *)
    log "usage: $0 [start|stop|stop-node N|start-node N|wipe]"
    exit 2
    ;;
esac
