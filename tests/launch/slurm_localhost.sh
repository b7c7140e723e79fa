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
# shellcheck source=tests/launch/slurm_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_common.sh"

write_conf() {
  local node cpus memory
  node=$(hostname -s)
  cpus=$(slurm_detect CPUs)
  memory=$(slurm_detect RealMemory)
  mkdir -p "$state/spool/ctld" "$state/spool/d"
  cat >"$state/slurm.conf" <<CONF
ClusterName=bwtflocal
SlurmctldHost=${node}(127.0.0.1)
$(slurm_conf_common)
StateSaveLocation=$state/spool/ctld
SlurmdSpoolDir=$state/spool/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
JobCompLoc=$state/jobcomp.txt
SlurmdTimeout=60
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

case $action in
  up)
    [[ $(id -u) == 0 ]] || { echo "slurm_localhost.sh needs root" >&2; exit 2; }
    mkdir -p "$state"
    state=$(cd "$state" && pwd)
    slurm_install_if_absent
    slurm_start_munge "$state"
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
    slurm_stop_pidfile "$state/slurmd.pid"
    slurm_stop_pidfile "$state/slurmctld.pid"
    slurm_stop_pidfile "$state/munged.pid"
    ;;
  *) echo "unknown action '$action'; expected up or down" >&2; exit 2 ;;
esac
