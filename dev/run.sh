#!/usr/bin/env bash
# `make run`: the worker, on KAFKA_BOOTSTRAP_SERVERS or on a local broker started here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN_DIR=dev/.run/kafka

if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  echo "KAFKA_BOOTSTRAP_SERVERS is not set: starting a local Apache Kafka broker…"
  "$PY" dev/kafka_local.py stop --dir "$RUN_DIR" >/dev/null 2>&1 || true
  KAFKA_BOOTSTRAP_SERVERS=$("$PY" dev/kafka_local.py start --dir "$RUN_DIR" --port "${KAFKA_PORT:-9092}" | tail -n 1)
  export KAFKA_BOOTSTRAP_SERVERS
  trap '"$PY" dev/kafka_local.py stop --dir "$RUN_DIR" >/dev/null 2>&1 || true' EXIT
  echo "broker ready at $KAFKA_BOOTSTRAP_SERVERS (log: $RUN_DIR)"
fi
echo "produce alerts to topic '${ALERTRELAY_TOPIC_ALERTS:-alerts}' and configs to '${ALERTRELAY_TOPIC_INTEGRATIONS:-integrations}' on $KAFKA_BOOTSTRAP_SERVERS"
"$PY" -m streams.cli worker &
WORKER=$!
trap 'kill -TERM $WORKER 2>/dev/null || true; wait $WORKER 2>/dev/null || true; "$PY" dev/kafka_local.py stop --dir "$RUN_DIR" >/dev/null 2>&1 || true' EXIT INT TERM
wait $WORKER
