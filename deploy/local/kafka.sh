#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft) on 127.0.0.1:9092 for development and tests, from jars
# resolved by Maven (see pom.xml). State lives in $KAFKA_STATE_DIR (default <repo>/.kafka,
# git-ignored): lib/ (jars), data/ (log dirs), logs/server.log, kafka.pid.
#
#   kafka.sh up      start if not running (idempotent), wait until it answers, create topics
#   kafka.sh down    stop it; no Java process of ours is left behind
#   kafka.sh reset   stop it and wipe its data (jars are kept)
#   kafka.sh status  say whether it runs
#   kafka.sh topics SUFFIX   create the default topics with SUFFIX appended (make demo's runs)
#
# Environment: KAFKA_PARTITIONS (default 6) for the default topics, KAFKA_HEAP (default 512m),
# KAFKA_PORT (default 9092; the controller listens on KAFKA_PORT+1) with KAFKA_STATE_DIR for a
# second, independent broker (the chaos runs stop and start their own).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${KAFKA_STATE_DIR:-$repo/.kafka}
partitions=${KAFKA_PARTITIONS:-6}
heap=${KAFKA_HEAP:-512m}
port=${KAFKA_PORT:-9092}
controller_port=$((port + 1))
export KAFKA_BROKERS=127.0.0.1:$port
pidfile=$state/kafka.pid
props=$state/server.properties

say() { echo "kafka: $*"; }
die() { echo "kafka: error: $*" >&2; exit 1; }

pid_alive() { [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
port_open() { (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; }
# Every broker JVM started from this state dir, whether or not the pid file still knows it.
our_jvms() { pgrep -f "kafka\.Kafka $props" || true; }
admin() { java -cp "$state/lib/*" "$here/LocalKafkaAdmin.java" "$@"; }

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

up() {
  if pid_alive; then
    say "already running (pid $(cat "$pidfile")); nothing to do"
    return
  fi
  if port_open; then
    die "127.0.0.1:$port is taken by a process not started by kafka.sh; stop it, or use it by setting KAFKA_BROKERS and skipping kafka-up"
  fi
  command -v java >/dev/null || die "java not found: install a Java 17 runtime (Debian: openjdk-17-jre-headless)"
  mkdir -p "$state/data" "$state/logs"
  ensure_jars
  { sed -e "s/127.0.0.1:9093/127.0.0.1:$controller_port/g" -e "s/127.0.0.1:9092/127.0.0.1:$port/g" \
    "$here/server.properties"; echo "log.dirs=$state/data"; } >"$props"

  if [[ ! -f $state/data/meta.properties ]]; then
    local cluster_id
    cluster_id=$(java -cp "$state/lib/*" kafka.tools.StorageTool random-uuid)
    say "formatting storage (cluster id $cluster_id)"
    java -cp "$state/lib/*" kafka.tools.StorageTool format -t "$cluster_id" -c "$props" \
      >"$state/logs/format.log" 2>&1 || { cat "$state/logs/format.log"; die "formatting failed"; }
  fi

  say "starting broker (heap $heap, log $state/logs/server.log)"
  # setsid: the broker outlives the shell and make, and ignores a Ctrl-C meant for tests.
  setsid java -Xms128m "-Xmx$heap" -XX:+UseG1GC -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$here/log4j2.properties" "-Dkafka.logs.dir=$state/logs" \
    -cp "$state/lib/*" kafka.Kafka "$props" </dev/null >"$state/logs/stdout.log" 2>&1 &
  echo $! >"$pidfile"

  local started=$SECONDS
  until port_open; do
    if ! pid_alive; then
      tail -n 30 "$state/logs/server.log" "$state/logs/stdout.log" 2>/dev/null || true
      rm -f "$pidfile"
      die "the broker exited during start-up (logs above)"
    fi
    (( SECONDS - started < 90 )) || die "the broker did not open 127.0.0.1:$port within 90 s; see $state/logs/server.log"
    sleep 0.2
  done
  admin wait 60 || die "the broker did not answer metadata requests within 60 s; see $state/logs/server.log"
  say "ready after $(( SECONDS - started )) s"
  admin create-topics "$partitions"
}

down() {
  local pids
  pids="$( { [[ -f $pidfile ]] && cat "$pidfile"; our_jvms; } | sort -u | tr '\n' ' ')"
  if [[ -z ${pids// /} ]]; then
    say "not running"
    rm -f "$pidfile"
    return
  fi
  say "stopping broker (pid $pids)"
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 150); do
    [[ -z $(our_jvms) ]] && break
    sleep 0.2
  done
  if [[ -n $(our_jvms) ]]; then
    say "broker did not stop within 30 s; killing it"
    # shellcheck disable=SC2046
    kill -KILL $(our_jvms) 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$pidfile"
  [[ -z $(our_jvms) ]] || die "a broker JVM is still running: $(our_jvms)"
  say "stopped"
}

reset() {
  down
  rm -rf "$state/data" "$state/logs" "$props"
  say "data wiped"
}

status() {
  if pid_alive; then say "running (pid $(cat "$pidfile"))"; else say "not running"; return 1; fi
}

topics() {
  pid_alive || die "not running: make kafka-up first"
  admin create-topics "$partitions" "${1:?suffix}"
}

case "${1:-}" in
  up | down | reset | status) "$1" ;;
  topics) topics "${2:-}" ;;
  *) echo "usage: $0 up|down|reset|status|topics SUFFIX" >&2; exit 2 ;;
esac
