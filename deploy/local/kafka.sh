#!/usr/bin/env bash
# A local Apache Kafka (KRaft) for development and tests, from jars resolved by Maven (see
# pom.xml): one node by default, or a cluster of KAFKA_NODES nodes (`make kafka-up BROKERS=3`).
#
# One node (the default for make test and make demo): broker on 127.0.0.1:9092, controller on
# 9093, state in $KAFKA_STATE_DIR (default <repo>/.kafka, git-ignored): lib/ (jars), data/,
# logs/server.log, kafka.pid.
#
# A cluster (KAFKA_NODES=3): every node is broker and controller ("combined" KRaft mode), the
# controller quorum is all of them (three voters: a majority survives any one node), node i
# listens on KAFKA_PORT + 2(i-1) and its controller on the port after, KAFKA_PORT defaults to
# 19092 (so it runs beside the single node), state in <repo>/.kafka-cluster/node-<i>/. Every
# topic and the internal ones (consumer offsets, transaction state) get 3 replicas and
# min.insync.replicas=2: with one node down, writes go on; with two down, acks=all writes fail.
#
#   kafka.sh up            start every node not running (idempotent), wait until the cluster has
#                          all of them and answers, create the default topics
#   kafka.sh down          stop every node; no Java process of ours is left behind
#   kafka.sh reset         stop and wipe the data (jars are kept)
#   kafka.sh status        say which nodes run (exit 1 if none)
#   kafka.sh brokers       print the bootstrap list (KAFKA_BROKERS for the services)
#   kafka.sh topics SUFFIX create the default topics with SUFFIX appended (make demo's runs)
#   kafka.sh node-up I     start node I (1-based) and wait until the cluster has it again
#   kafka.sh node-down I   stop node I gracefully (SIGTERM: controlled shutdown)
#   kafka.sh node-pid I    print node I's process id (for kill -9, SIGSTOP: the chaos runs)
#
# Environment: KAFKA_NODES (default 1), KAFKA_PARTITIONS (default 6) for the default topics,
# KAFKA_HEAP (default 512m, per node), KAFKA_PORT, KAFKA_STATE_DIR (the chaos runs use ports
# and state of their own, to stop and start their brokers freely).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
nodes=${KAFKA_NODES:-1}
[[ $nodes =~ ^[1-9]$ ]] || { echo "kafka: error: KAFKA_NODES (BROKERS) must be 1 to 9, got '$nodes'" >&2; exit 2; }
if ((nodes == 1)); then
  state=${KAFKA_STATE_DIR:-$repo/.kafka}
  port=${KAFKA_PORT:-9092}
else
  state=${KAFKA_STATE_DIR:-$repo/.kafka-cluster}
  port=${KAFKA_PORT:-19092}
fi
partitions=${KAFKA_PARTITIONS:-6}
heap=${KAFKA_HEAP:-512m}
# Three replicas where there are three nodes; writes need two of them (acks=all).
replicas=$((nodes < 3 ? nodes : 3))
min_isr=$((replicas > 1 ? replicas - 1 : 1))

node_port() { echo $((port + 2 * ($1 - 1))); }
# One node keeps the layout it always had; a cluster's nodes each get a directory.
node_dir() { if ((nodes == 1)); then echo "$state"; else echo "$state/node-$1"; fi; }
brokers=$(for i in $(seq 1 "$nodes"); do printf '127.0.0.1:%s,' "$(node_port "$i")"; done)
export KAFKA_BROKERS=${brokers%,}

say() { echo "kafka: $*"; }
die() { echo "kafka: error: $*" >&2; exit 1; }

pidfile() { echo "$(node_dir "$1")/kafka.pid"; }
props() { echo "$(node_dir "$1")/server.properties"; }
node_alive() { [[ -f $(pidfile "$1") ]] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Every broker JVM started for node I, whether or not the pid file still knows it.
node_jvms() { pgrep -f "kafka\.Kafka $(props "$1")" || true; }
all_jvms() { for i in $(seq 1 "$nodes"); do node_jvms "$i"; done; }
admin() { java -cp "$state/lib/*" "$here/LocalKafkaAdmin.java" "$@"; }
check_node() { [[ $1 =~ ^[1-9]$ ]] && (($1 <= nodes)) || die "node must be 1 to $nodes, got '$1'"; }

ensure_jars() {
  local want have=""
  want=$(sha256sum "$here/pom.xml" | cut -d' ' -f1)
  [[ -f $state/lib/.pom.sha256 ]] && have=$(cat "$state/lib/.pom.sha256")
  [[ $want == "$have" ]] && return
  say "resolving broker jars with Maven (first run only)…"
  rm -rf "$state/lib"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$state/lib" \
    || die "Maven could not resolve the broker jars (see output above)"
  echo "$want" >"$state/lib/.pom.sha256"
}

# server.properties of node I: the single-node file, with the cluster's settings after it
# (a later key wins when Java reads the file).
write_props() {
  local i=$1 dir p c voters=""
  dir=$(node_dir "$i")
  p=$(node_port "$i")
  c=$((p + 1))
  for j in $(seq 1 "$nodes"); do voters+="$j@127.0.0.1:$(($(node_port "$j") + 1)),"; done
  {
    sed -e "s/127.0.0.1:9093/127.0.0.1:$c/g" -e "s/127.0.0.1:9092/127.0.0.1:$p/g" "$here/server.properties"
    if ((nodes > 1)); then
      echo
      echo "# A cluster of $nodes nodes (kafka.sh, KAFKA_NODES=$nodes): node $i of them."
      echo "node.id=$i"
      echo "controller.quorum.voters=${voters%,}"
      for key in offsets.topic.replication.factor transaction.state.log.replication.factor \
        share.coordinator.state.topic.replication.factor default.replication.factor; do
        echo "$key=$replicas"
      done
      for key in transaction.state.log.min.isr share.coordinator.state.topic.min.isr min.insync.replicas; do
        echo "$key=$min_isr"
      done
    fi
    echo "log.dirs=$dir/data"
  } >"$(props "$i")"
}

# Starts node I's JVM (its storage formatted with CLUSTER_ID if new) without waiting.
start_node() {
  local i=$1 cluster_id=$2 dir
  dir=$(node_dir "$i")
  mkdir -p "$dir/data" "$dir/logs"
  write_props "$i"
  if [[ ! -f $dir/data/meta.properties ]]; then
    say "formatting storage of node $i (cluster id $cluster_id)"
    java -cp "$state/lib/*" kafka.tools.StorageTool format -t "$cluster_id" -c "$(props "$i")" \
      >"$dir/logs/format.log" 2>&1 || { cat "$dir/logs/format.log"; die "formatting node $i failed"; }
  fi
  say "starting node $i on 127.0.0.1:$(node_port "$i") (heap $heap, log $dir/logs/server.log)"
  # setsid: the broker outlives the shell and make, and ignores a Ctrl-C meant for tests.
  setsid java -Xms128m "-Xmx$heap" -XX:+UseG1GC -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$here/log4j2.properties" "-Dkafka.logs.dir=$dir/logs" \
    -cp "$state/lib/*" kafka.Kafka "$(props "$i")" </dev/null >"$dir/logs/stdout.log" 2>&1 &
  echo $! >"$(pidfile "$i")"
}

# The cluster id every node shares: the one on disk, else a new one.
cluster_id() {
  local meta
  for i in $(seq 1 "$nodes"); do
    meta=$(node_dir "$i")/data/meta.properties
    [[ -f $meta ]] && { sed -n 's/^cluster.id=//p' "$meta"; return; }
  done
  java -cp "$state/lib/*" kafka.tools.StorageTool random-uuid
}

# Waits until node I opens its port (fails if it exits), then until the cluster lists every node.
wait_nodes() {
  local started=$SECONDS
  for i in "$@"; do
    until port_open "$(node_port "$i")"; do
      if ! node_alive "$i"; then
        tail -n 30 "$(node_dir "$i")/logs/server.log" "$(node_dir "$i")/logs/stdout.log" 2>/dev/null || true
        rm -f "$(pidfile "$i")"
        die "node $i exited during start-up (logs above)"
      fi
      ((SECONDS - started < 90)) || die "node $i did not open 127.0.0.1:$(node_port "$i") within 90 s; see $(node_dir "$i")/logs/server.log"
      sleep 0.2
    done
  done
  admin wait 90 "$nodes" || die "the cluster did not list its $nodes node(s) within 90 s; see $state/*/logs/server.log"
  say "ready after $((SECONDS - started)) s"
}

up() {
  local todo=() id
  for i in $(seq 1 "$nodes"); do
    if node_alive "$i"; then continue; fi
    port_open "$(node_port "$i")" \
      && die "127.0.0.1:$(node_port "$i") is taken by a process not started by kafka.sh; stop it, or use it by setting KAFKA_BROKERS and skipping kafka-up"
    todo+=("$i")
  done
  if ((${#todo[@]} == 0)); then
    if ((nodes == 1)); then say "already running (pid $(cat "$(pidfile 1)")); nothing to do"; else say "already running ($nodes nodes); nothing to do"; fi
    return
  fi
  command -v java >/dev/null || die "java not found: install a Java 17 runtime (Debian: openjdk-17-jre-headless)"
  mkdir -p "$state"
  ensure_jars
  id=$(cluster_id)
  for i in "${todo[@]}"; do start_node "$i" "$id"; done
  wait_nodes "${todo[@]}"
  KAFKA_REPLICATION=$replicas admin create-topics "$partitions"
}

# stop_nodes SECONDS I…: SIGTERM (a controlled shutdown hands leadership over), SIGKILL after
# SECONDS.
stop_nodes() {
  local pids="" wait_for=$1
  shift
  for i in "$@"; do
    pids+="$( { [[ -f $(pidfile "$i") ]] && cat "$(pidfile "$i")"; node_jvms "$i"; } | sort -u | tr '\n' ' ')"
  done
  if [[ -z ${pids// /} ]]; then
    say "not running"
    for i in "$@"; do rm -f "$(pidfile "$i")"; done
    return
  fi
  say "stopping node(s) $* (pid $pids)"
  # shellcheck disable=SC2086
  kill -CONT $pids 2>/dev/null || true # a stopped (SIGSTOP) JVM cannot handle SIGTERM
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  local left
  for _ in $(seq 1 $((wait_for * 5))); do
    left=$(for i in "$@"; do node_jvms "$i"; done)
    [[ -z $left ]] && break
    sleep 0.2
  done
  if [[ -n $left ]]; then
    say "node(s) did not stop within $wait_for s; killing them"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    sleep 0.5
  fi
  for i in "$@"; do rm -f "$(pidfile "$i")"; done
  left=$(for i in "$@"; do node_jvms "$i"; done)
  [[ -z $left ]] || die "a broker JVM is still running: $left"
  say "stopped"
}

down() {
  if ((nodes == 1)); then
    stop_nodes 30 1
    return
  fi
  # One at a time, while a majority of the controller quorum is left to accept each controlled
  # shutdown (2-3 s each); the last node has no quorum to shut down with, so it gets 5 s and
  # is killed (nothing is lost: with one node left no acks=all write was accepted).
  for i in $(seq "$nodes" -1 2); do stop_nodes 60 "$i"; done
  say "node 1 is the last: without a controller quorum it cannot shut down cleanly; 5 s, then SIGKILL"
  stop_nodes 5 1
}

reset() {
  down
  for i in $(seq 1 "$nodes"); do
    rm -rf "$(node_dir "$i")/data" "$(node_dir "$i")/logs" "$(props "$i")"
  done
  say "data wiped"
}

status() {
  local running=0
  for i in $(seq 1 "$nodes"); do
    if node_alive "$i"; then
      say "node $i running on 127.0.0.1:$(node_port "$i") (pid $(cat "$(pidfile "$i")"))"
      running=$((running + 1))
    else
      say "node $i not running"
    fi
  done
  ((running > 0))
}

topics() {
  node_alive 1 || die "not running: make kafka-up first"
  KAFKA_REPLICATION=$replicas admin create-topics "$partitions" "${1:?suffix}"
}

node_up() {
  check_node "$1"
  node_alive "$1" && { say "node $1 already running"; return; }
  ensure_jars
  start_node "$1" "$(cluster_id)"
  wait_nodes "$1"
}

node_pid() {
  check_node "$1"
  node_alive "$1" || die "node $1 is not running"
  cat "$(pidfile "$1")"
}

case "${1:-}" in
  up | down | reset | status) "$1" ;;
  brokers) echo "$KAFKA_BROKERS" ;;
  topics) topics "${2:-}" ;;
  node-up) node_up "${2:-}" ;;
  node-down) check_node "${2:-}" && stop_nodes 60 "$2" ;;
  node-pid) node_pid "${2:-}" ;;
  *) echo "usage: $0 up|down|reset|status|brokers|topics SUFFIX|node-up I|node-down I|node-pid I" >&2; exit 2 ;;
esac
