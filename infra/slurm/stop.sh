#!/usr/bin/env bash
# Stop the daemons that infra/slurm/setup.sh started: slurmd, slurmctld, and munged when setup.sh
# started it. Each is found by the pid file that it or setup.sh wrote; other processes are never
# signalled. Needs root.
set -euo pipefail

readonly RUN_DIR=/run/bcratos-slurm
readonly STOP_TIMEOUT_S=30

if [ "$(id -u)" -ne 0 ]; then
    echo "infra/slurm/stop.sh: must run as root to stop the Slurm daemons" >&2
    exit 1
fi

stop_daemon() {
    local name=$1 pid_file="$RUN_DIR/$1.pid" pid
    if [ ! -s "$pid_file" ]; then
        return
    fi
    pid=$(cat "$pid_file")
    if kill -0 "$pid" 2>/dev/null; then
        echo "stopping $name (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 1 "$STOP_TIMEOUT_S"); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$name (pid $pid) ignored SIGTERM for $STOP_TIMEOUT_S s; sending SIGKILL" >&2
            kill -KILL "$pid"
        fi
    fi
    rm -f "$pid_file"
}

stop_daemon slurmd
stop_daemon slurmctld
stop_daemon munged
