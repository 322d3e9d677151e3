#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md one after another (they must not share the two cores),
# writing each output to $OUT (default /tmp/twinedge-bench) with the load average before it.
# ONLY="gateway_50k thingsboard" runs just the named ones.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/twinedge-bench}
PY=.venv/bin/python
mkdir -p "$OUT"
run() {
    local name=$1
    shift
    if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then
        return
    fi
    { echo "## $name: $*"; echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"; date -u +%FT%TZ; } > "$OUT/$name.txt"
    "$@" >> "$OUT/$name.txt" 2>&1
    echo "exit: $?" >> "$OUT/$name.txt"
    echo "done $name"
}
run plant_step $PY bench/plant_step_bench.py
run opcua_startup $PY -m bench.opcua_bench --variables 10000
run opcua_subscription $PY bench/opcua_subscription_bench.py --seconds 30
run modbus_reference $PY bench/modbus_reference_bench.py --seconds 10
run modbus_python $PY bench/modbus_bench.py --seconds 10
run outbox $PY bench/outbox_bench.py --records 300000 --repeat 3
run gateway_50k $PY bench/gateway_bench.py --rate 50000 --duration 300 --warmup 30 --drain 180 --modbus-connections 4 --modbus-pipeline 32
run gateway_50k_log $PY bench/gateway_bench.py --rate 50000 --duration 300 --warmup 30 --drain 180 --modbus-connections 4 --modbus-pipeline 32 --outbox log
run gateway_opcua $PY bench/gateway_bench.py --protocol opcua --rate 25000 --duration 60 --warmup 20 --drain 120
run gateway_modbus $PY bench/gateway_bench.py --protocol modbus --rate 25000 --duration 60 --warmup 20 --drain 120 --modbus-connections 4 --modbus-pipeline 32
run gateway_modbus_serial $PY bench/gateway_bench.py --protocol modbus --rate 25000 --duration 60 --warmup 20 --drain 120 --modbus-connections 4
run gateway_sweep $PY bench/gateway_bench.py --sweep --duration 30 --warmup 10 --drain 120 --modbus-connections 4 --modbus-pipeline 32
run api_ws $PY bench/api_bench.py ws --clients 1000 --rate 50000 --seconds 30 --modbus-connections 4 --modbus-pipeline 16
run api_ws_10k $PY bench/api_bench.py ws --clients 1000 --rate 10000 --seconds 30 --modbus-connections 4 --modbus-pipeline 16
run api_ws_1k $PY bench/api_bench.py ws --clients 1000 --rate 1000 --seconds 30 --modbus-connections 4 --modbus-pipeline 16
run api_commands $PY bench/api_bench.py commands --count 100
run api_commands_poll $PY bench/api_bench.py commands --count 100 --opcua-mode poll
run thingsboard $PY bench/thingsboard_compare.py --window 40 --warmup 10 --repeat 1
