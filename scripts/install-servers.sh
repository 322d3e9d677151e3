#!/usr/bin/env bash
# Installs the servers the test suite starts on free loopback ports: mosquitto (and its clients: the
# gateway bench subscribes with mosquitto_sub), InfluxDB 1.x (influxd), VictoriaMetrics (the InfluxDB
# v2 write API) and PostgreSQL (the edge API storage tests
# run initdb/postgres from /usr/lib/postgresql/*/bin in a temp dir), and Node.js with npm for the
# OPC UA interop test (an independent node-opcua client), and mbpoll for the Modbus interop test (an
# independent Modbus client). Debian/Ubuntu package names.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v mbpoll >/dev/null 2>&1 || need+=(mbpoll)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    echo "installing ${need[*]} with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    # The Debian packages start their services (postgresql: the system cluster on port 5432); the
    # tests start their own on free ports instead, so stop the services of what was just installed.
    for pkg in "${need[@]}"; do
        case "$pkg" in
            influxdb | victoria-metrics | postgresql) service "$pkg" stop >/dev/null 2>&1 || true ;;
        esac
    done
else
    echo "The test suite needs: ${need[*]}. Install them with:" >&2
    echo "    sudo apt-get install -y ${need[*]}" >&2
    exit 1
fi
