#!/usr/bin/env bash
# A throw-away one-node Slurm on localhost, for the launch tests and CI.
#
#   slurm_localhost.sh up   STATE_DIR   # install if absent, write slurm.conf, start munged/slurmctld/slurmd
#   slurm_localhost.sh down STATE_DIR   # stop the daemons this script started (by their pid files)
#
# After `up`, export SLURM_CONF=STATE_DIR/slurm.conf to use sbatch/scontrol.
# Needs root (it runs the daemons as root and may apt-get install slurm-wlm munge).
# Accounting is off on purpose (no slurmdbd/MySQL): job states come from
# `scontrol show job` and from the jobcomp/filetxt file STATE_DIR/jobcomp.txt.
set -euo pipefail

action=${1:?usage: slurm_localhost.sh up|down STATE_DIR}
state=${2:?usage: slurm_localhost.sh up|down STATE_DIR}

install_if_absent() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null; then
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
}

start_munge() {
  # Slurm authenticates every RPC through munge's socket; reuse a running munged.
  if [[ -S /run/munge/munge.socket.2 ]] && munge -n >/dev/null 2>&1; then
    return
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  runuser -u munge -- munged --pid-file="/run/munge/munged.pid"
  cp /run/munge/munged.pid "$state/munged.pid"
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && return; sleep 0.1; done
  echo "munged did not start; see /var/log/munge/munged.log" >&2
  exit 1
}

write_conf() {
  local node cpus memory
  node=$(hostname -s)
  # The node's CPUs and memory must match what slurmd detects, or Slurm marks it invalid.
  cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -1)
  memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
  mkdir -p "$state/spool/ctld" "$state/spool/d"
  cat >"$state/slurm.conf" <<CONF
ClusterName=bwtflocal
SlurmctldHost=${node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$state/spool/ctld
SlurmdSpoolDir=$state/spool/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
SlurmctldPort=${BWTF_SLURMCTLD_PORT:-16817}
SlurmdPort=${BWTF_SLURMD_PORT:-16818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$state/jobcomp.txt
JobRequeue=1
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=60
KillWait=30
NodeName=${node} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${memory} State=UNKNOWN
PartitionName=debug Nodes=${node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
}

wait_node_idle() {
  for _ in $(seq 100); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then return; fi
    sleep 0.2
  done
  echo "the Slurm node did not become idle:" >&2
  sinfo -N -l >&2 || true
  tail -20 "$state/slurmctld.log" "$state/slurmd.log" >&2 || true
  exit 1
}

stop_pidfile() {
  local file=$1
  [[ -s $file ]] || return 0
  local pid
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$file"
}

case $action in
  up)
    [[ $(id -u) == 0 ]] || { echo "slurm_localhost.sh needs root" >&2; exit 2; }
    mkdir -p "$state"
    state=$(cd "$state" && pwd)
    install_if_absent
    start_munge
    write_conf
    export SLURM_CONF=$state/slurm.conf
    slurmctld -i
    slurmd
    wait_node_idle
    echo "$state/slurm.conf"
    ;;
  down)
    state=$(cd "$state" && pwd)
    export SLURM_CONF=$state/slurm.conf
    scancel --full --quiet --state=RUNNING --user=root 2>/dev/null || true
    stop_pidfile "$state/slurmd.pid"
    stop_pidfile "$state/slurmctld.pid"
    stop_pidfile "$state/munged.pid"
    ;;
  *) echo "unknown action '$action'; expected up or down" >&2; exit 2 ;;
esac
