#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for CI and for developers trying the Slurm launcher.
#
#   tools/slurm_ci.sh start   install slurm-wlm + munge with apt if missing (needs root), write a
#                             slurm.conf for this machine, start munged, slurmctld and slurmd
#   tools/slurm_ci.sh stop    stop the daemons this script started (by their pid files)
#   tools/slurm_ci.sh status  sinfo
#
# Everything it writes lives under $SLURM_CI_DIR (default /tmp/one_fast-slurm): the config,
# the daemons' state, logs and pid files. The config is ProctrackType=proctrack/linuxproc and
# TaskPlugin=task/none (no cgroups needed, so it runs in containers), SelectType=
# select/cons_tres, one node with this machine's CPUs and memory, one partition "debug".
# Export SLURM_CONF="$SLURM_CI_DIR/slurm.conf" before using sbatch/squeue (start prints it).
set -euo pipefail

dir="${SLURM_CI_DIR:-/tmp/one_fast-slurm}"
conf="$dir/slurm.conf"
daemons=(slurmd slurmctld munged)

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
            && command -v munged >/dev/null; then
        return
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "error: Slurm is not installed and installing it needs root: apt-get install slurm-wlm munge" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q slurm-wlm munge >/dev/null; }
}

write_conf() {
    local host cpus mem_mb
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/munge"
    cat > "$conf" <<CONF
ClusterName=one_fast_ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=5
MinJobAge=300
InactiveLimit=0
OverTimeLimit=0
DefMemPerCPU=$(( mem_mb / cpus ))
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
}

start() {
    install
    write_conf
    export SLURM_CONF="$conf"
    # munge: the key and the daemon's sockets/pid under $dir, so nothing system-wide changes.
    if [ ! -s "$dir/munge/munge.key" ]; then
        dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
        chmod 600 "$dir/munge/munge.key"
    fi
    mkdir -p /run/munge
    munged --force --key-file "$dir/munge/munge.key" --pid-file "$dir/munged.pid" \
        --log-file "$dir/log/munged.log" --seed-file "$dir/munge/munged.seed" \
        --socket /run/munge/munge.socket.2
    slurmctld -f "$conf"
    slurmd -f "$conf"
    for _ in $(seq 60); do
        if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "slurm is up: export SLURM_CONF=$conf"
            return
        fi
        sleep 0.5
    done
    echo "error: the node did not come up; logs in $dir/log" >&2
    sinfo >&2 || true
    exit 1
}

stop() {
    local name pid
    # Jobs first: with proctrack/linuxproc a job's slurmstepd and trainer outlive slurmd.
    if [ -s "$dir/slurmctld.pid" ]; then
        SLURM_CONF="$conf" scancel --full --partition=debug 2>/dev/null || true
    fi
    for name in "${daemons[@]}"; do
        if [ -s "$dir/$name.pid" ]; then
            pid="$(cat "$dir/$name.pid")"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -9 "$pid" 2>/dev/null || true  # never leave a daemon holding the ports
            rm -f "$dir/$name.pid"
        fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) SLURM_CONF="$conf" sinfo ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
