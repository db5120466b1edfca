#!/usr/bin/env bash
# Envoy's xds-protos package ships an old copy of OpenTelemetry's protos
# (opentelemetry/proto/...), which overwrites opentelemetry-proto's own files when pip happens
# to install it later; the OTLP exporters then fail to import (InstrumentationScope). This
# reinstalls opentelemetry-proto, at the lock's version and hashes, so its files win.
#   usage: scripts/proto-overlap.sh PYTHON LOCKFILE
set -euo pipefail
python=$1
lock=$2
pinned=$(mktemp)
trap 'rm -f "$pinned"' EXIT
awk '/^opentelemetry-proto==/{f=1; print; next} f && /^ +--hash/{print; next} {f=0}' "$lock" >"$pinned"
grep -q '^opentelemetry-proto==' "$pinned" || { echo "proto-overlap: no opentelemetry-proto in $lock" >&2; exit 1; }
"$python" -m pip install -q --no-cache-dir --force-reinstall --no-deps --require-hashes -r "$pinned"
