#!/usr/bin/env bash
# Checks the local broker's lifecycle the way a developer uses it, and leaves it running:
# kafka-up twice (the second is a no-op, same process), kafka-down (no broker JVM left),
# kafka-up again (restarts on the existing data).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kafka=$here/kafka.sh
state=${KAFKA_STATE_DIR:-$(cd "$here/../.." && pwd)/.kafka}
fail() { echo "kafka lifecycle check: FAILED: $*" >&2; exit 1; }

"$kafka" up
first=$(cat "$state/kafka.pid")
second_output=$("$kafka" up)
echo "$second_output"
[[ $second_output == *"already running"* ]] || fail "second kafka-up was not a no-op"
[[ $(cat "$state/kafka.pid") == "$first" ]] || fail "second kafka-up started another broker"

start=$SECONDS
"$kafka" down
echo "kafka-down took $(( SECONDS - start )) s"
if pgrep -f "kafka\.Kafka $state/server.properties" >/dev/null; then fail "a broker JVM is left after kafka-down"; fi
if kill -0 "$first" 2>/dev/null && [[ $(ps -o stat= -p "$first") != Z* ]]; then fail "broker pid $first still runs"; fi

start=$SECONDS
"$kafka" up
echo "kafka-up (restart on existing data) took $(( SECONDS - start )) s"
echo "kafka lifecycle check: ok"
