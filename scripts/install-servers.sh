#!/usr/bin/env bash
# Installs the servers the test suite starts on free loopback ports: mosquitto, InfluxDB 1.x
# (influxd) and VictoriaMetrics (the InfluxDB v2 write API). Debian/Ubuntu package names.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    echo "installing ${need[*]} with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    # The Debian packages start their services; the tests start their own on free ports instead.
    for svc in influxdb victoria-metrics; do
        service "$svc" stop >/dev/null 2>&1 || true
    done
else
    echo "The test suite needs: ${need[*]}. Install them with:" >&2
    echo "    sudo apt-get install -y ${need[*]}" >&2
    exit 1
fi
