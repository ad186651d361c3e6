#!/usr/bin/env bash
# `make run`: the worker, on KAFKA_BOOTSTRAP_SERVERS or on a local broker started here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN_DIR=dev/.run/kafka
KEY_FILE=dev/.run/secret-keys

if [[ -z "${ALERTRELAY_SECRET_KEYS:-}" && -z "${ALERTRELAY_SECRET_KEYS_FILE:-}" ]]; then
  if [[ ! -s "$KEY_FILE" ]]; then
    mkdir -p "$(dirname "$KEY_FILE")"
    (umask 077 && "$PY" -m streams.cli keys generate > "$KEY_FILE")
    echo "created a local development secret key in $KEY_FILE (set ALERTRELAY_SECRET_KEYS in production)"
  fi
  export ALERTRELAY_SECRET_KEYS_FILE="$KEY_FILE"
fi

if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  echo "KAFKA_BOOTSTRAP_SERVERS is not set: starting a local Apache Kafka broker…"
  "$PY" dev/kafka_local.py stop --dir "$RUN_DIR" >/dev/null 2>&1 || true
  KAFKA_BOOTSTRAP_SERVERS=$("$PY" dev/kafka_local.py start --dir "$RUN_DIR" --port "${KAFKA_PORT:-9092}" | tail -n 1)
  export KAFKA_BOOTSTRAP_SERVERS
  STARTED_BROKER=1
  echo "broker ready at $KAFKA_BOOTSTRAP_SERVERS (log: $RUN_DIR)"
fi
cleanup() {
  [[ -n "${WORKER:-}" ]] && kill -TERM "$WORKER" 2>/dev/null && wait "$WORKER" 2>/dev/null
  [[ -n "${STARTED_BROKER:-}" ]] && "$PY" dev/kafka_local.py stop --dir "$RUN_DIR" >/dev/null 2>&1
  return 0
}
trap cleanup EXIT INT TERM
echo "produce alerts to topic '${ALERTRELAY_TOPIC_ALERTS:-alerts}' and configs to '${ALERTRELAY_TOPIC_INTEGRATIONS:-integrations}' on $KAFKA_BOOTSTRAP_SERVERS"
"$PY" -m streams.cli worker &
WORKER=$!
wait "$WORKER"
