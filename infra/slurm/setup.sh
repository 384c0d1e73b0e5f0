#!/usr/bin/env bash
# Start a single-node Slurm cluster (munged, slurmctld, slurmd) on this machine for the tests of
# the Slurm backend. Idempotent: installs the Debian packages when missing, writes the
# configuration, starts each daemon that is not running, and waits until the node is idle.
#
# The node is named after `hostname -s` and reached at 127.0.0.1. The configuration works in a
# container without systemd or cgroups: processes are tracked through /proc
# (proctrack/linuxproc), tasks are not confined (task/none) and there is no accounting database,
# so `sacct` does not work here. Finished jobs stay visible to `scontrol show job` for
# MinJobAge seconds, and the completion log (jobcomp/filetxt) records each finished job.
#
# Needs root. Stop everything with infra/slurm/stop.sh.
set -euo pipefail

readonly MARKER="# Written by bcratos infra/slurm/setup.sh"
readonly CONF_DIR=/etc/slurm
readonly STATE_DIR=/var/lib/bcratos-slurm
readonly LOG_DIR=/var/log/bcratos-slurm
readonly RUN_DIR=/run/bcratos-slurm
readonly READY_TIMEOUT_S=${BCRATOS_SLURM_READY_TIMEOUT_S:-60}

fail() {
    echo "infra/slurm/setup.sh: $*" >&2
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    fail "must run as root (it installs packages and starts munged, slurmctld and slurmd);" \
        "run it with sudo, or point the Slurm backend at an existing cluster"
fi

running() {
    local pid_file=$1
    [ -s "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return
    fi
    echo "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q slurm-wlm munge
}

write_config() {
    local node cpus memory_mb conf
    node=$(hostname -s)
    cpus=$(nproc)
    # Leave 1 GiB to the system; Slurm rejects jobs that ask for more than RealMemory.
    memory_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 - 1024 }' /proc/meminfo)
    conf="$CONF_DIR/slurm.conf"
    if [ -f "$conf" ] && ! head -n 1 "$conf" | grep -qxF "$MARKER"; then
        fail "$conf exists and was not written by this script; refusing to overwrite it"
    fi
    mkdir -p "$CONF_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" "$LOG_DIR" "$RUN_DIR"
    cat >"$conf.new" <<CONF
$MARKER
ClusterName=bcratos
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=512
ReturnToService=2
# Finished jobs stay in slurmctld's memory, and so in scontrol show job, for this many seconds.
MinJobAge=3600
# Seconds between SIGTERM and SIGKILL when a job is cancelled or reaches its time limit.
KillWait=5
InactiveLimit=0
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmdSpoolDir=$STATE_DIR/slurmd
StateSaveLocation=$STATE_DIR/slurmctld
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
    if cmp -s "$conf.new" "$conf"; then
        rm "$conf.new"
        return
    fi
    mv "$conf.new" "$conf"
    # Running daemons read the new configuration; the first start reads it anyway.
    if running "$RUN_DIR/slurmctld.pid"; then
        scontrol reconfigure || fail "scontrol reconfigure failed after $conf changed"
    fi
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if munge -n >/dev/null 2>&1; then
        return
    fi
    echo "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 1 20); do
        if munge -n >/dev/null 2>&1; then
            # stop.sh stops only a munged that this script started.
            cp /run/munge/munged.pid "$RUN_DIR/munged.pid"
            return
        fi
        sleep 0.5
    done
    fail "munged did not answer within 10 s; see /var/log/munge/munged.log"
}

start_slurm() {
    if ! running "$RUN_DIR/slurmctld.pid"; then
        echo "starting slurmctld"
        /usr/sbin/slurmctld || fail "slurmctld failed to start; see $LOG_DIR/slurmctld.log"
    fi
    if ! running "$RUN_DIR/slurmd.pid"; then
        echo "starting slurmd"
        /usr/sbin/slurmd || fail "slurmd failed to start; see $LOG_DIR/slurmd.log"
    fi
}

wait_until_idle() {
    local node state deadline
    node=$(hostname -s)
    deadline=$((SECONDS + READY_TIMEOUT_S))
    while [ "$SECONDS" -lt "$deadline" ]; do
        state=$(sinfo --noheader --nodes="$node" --format=%T 2>/dev/null || true)
        case "$state" in
            idle | mixed | allocated | completing)
                echo "Slurm node $node is $state"
                return
                ;;
            down* | drain*)
                scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
                ;;
        esac
        sleep 1
    done
    fail "node $node is not idle after $READY_TIMEOUT_S s (state: ${state:-unknown});" \
        "see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log"
}

install_packages
write_config
start_munge
start_slurm
wait_until_idle
