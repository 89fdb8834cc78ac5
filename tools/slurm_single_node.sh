#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, to try `reproduce.py --launcher slurm` (and to
# test it): munged, slurmctld and slurmd with every file in one folder.
#
#   sudo tools/slurm_single_node.sh start [DIR]    # installs slurm-wlm + munge (Debian/Ubuntu)
#   export SLURM_CONF=DIR/slurm.conf                # (printed by start) then sinfo, sbatch, ...
#   sudo tools/slurm_single_node.sh stop [DIR]
#
# DIR defaults to /tmp/splitlora-slurm. The node offers this machine's CPUs and most of its
# memory (no GPUs), in one partition `debug`; accounting is off (squeue works, sacct does not).
set -euo pipefail
cmd=${1:-}
dir=$(realpath -m "${2:-/tmp/splitlora-slurm}")
conf="$dir/slurm.conf"

stop() {
  for name in slurmd slurmctld munged; do
    if [ -f "$dir/$name.pid" ]; then
      kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
      rm -f "$dir/$name.pid"
    fi
  done
}

case "$cmd" in
  start)
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
      [ "$(id -u)" = 0 ] || { echo "error: slurm-wlm and munge are not installed; run this as root to install them" >&2; exit 2; }
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >&2
    fi
    stop
    mkdir -p "$dir/munge" "$dir/state" "$dir/spool"
    chmod 700 "$dir/munge"
    [ -f "$dir/munge/munge.key" ] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
      --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/seed"
    host=$(hostname -s)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    cat > "$conf" <<EOF
ClusterName=splitlora
SlurmctldHost=$host
SlurmUser=$(id -un)
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
CredType=cred/munge
SlurmctldPort=${SLURM_CTLD_PORT:-6817}
SlurmdPort=${SLURM_D_PORT:-6818}
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmdSpoolDir=$dir/spool
StateSaveLocation=$dir/state
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MpiDefault=none
SchedulerParameters=sched_interval=1
NodeName=$host CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$conf"
    slurmctld -i
    slurmd
    for _ in $(seq 60); do
      sinfo -h -o %T 2>/dev/null | grep -q idle && { echo "export SLURM_CONF=$conf"; exit 0; }
      sleep 0.5
    done
    echo "error: the cluster did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
    exit 1
    ;;
  stop)
    stop
    ;;
  *)
    echo "usage: $0 start|stop [DIR]" >&2
    exit 2
    ;;
esac
