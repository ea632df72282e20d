#!/usr/bin/env bash
# Start or stop a real single-node SLURM (Debian slurm-wlm + munge) on this
# machine, for the dask-jobqueue test. Needs root (installs packages).
#
#   eval "$(bash scripts/slurm_single_node.sh start DIR)"   # exports SLURM_CONF
#   bash scripts/slurm_single_node.sh stop DIR
#
# Everything SLURM writes (state, spool, logs, pid files) lives under DIR. `stop`
# also stops munged if `start` started it.
set -euo pipefail
cmd=${1:?start|stop}
dir=$(realpath -m "${2:?state directory}")
host=$(hostname -s)

install() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >&2
  fi
}

start_munge() {
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 400 /etc/munge/munge.key
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged >&2
    # started here, so stopped by `stop` (a munged that was already running is left alone)
    mkdir -p "$dir" && touch "$dir/munged.started"
    sleep 1
  fi
  munge -n | unmunge >/dev/null
}

start() {
  install
  start_munge
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  # not nproc: it follows OMP_NUM_THREADS, which a test process may have set to 1
  cpus=$(getconf _NPROCESSORS_ONLN)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
  cat > "$dir/slurm.conf" <<CONF
ClusterName=mrisafety
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$((6817 + RANDOM % 100 * 2))
SlurmdPort=$((7817 + RANDOM % 100 * 2))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AuthType=auth/munge
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
SchedulerType=sched/builtin
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -c -f "$SLURM_CONF" >&2
  slurmd -f "$SLURM_CONF" >&2
  for _ in $(seq 1 30); do
    if sinfo -h -o %t 2>/dev/null | grep -q idle; then
      echo "export SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 1
  done
  echo "slurm did not become idle; slurmctld log:" >&2
  tail -n 20 "$dir/log/slurmctld.log" >&2 || true
  tail -n 20 "$dir/log/slurmd.log" >&2 || true
  return 1
}

stop() {
  # cancel this cluster's jobs first: a job step left running outlives slurmd
  if [ -s "$dir/slurm.conf" ]; then
    SLURM_CONF="$dir/slurm.conf" scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    sleep 2
  fi
  for f in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    if [ -s "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
  done
  if [ -e "$dir/munged.started" ]; then
    runuser -u munge -- munged --stop >&2 || true
    rm -f "$dir/munged.started"
  fi
  sleep 1
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
