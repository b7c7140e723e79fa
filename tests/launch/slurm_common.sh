# Functions shared by slurm_localhost.sh and virtual_cluster.sh (sourced, not run).
#
#   slurm_install_if_absent   apt-get install slurm-wlm and munge when a command is missing
#   slurm_start_munge STATE   start munged unless one answers (its pid file goes to STATE)
#   slurm_stop_pidfile FILE   TERM (then KILL) the process named by FILE, then remove FILE
#   slurm_detect NAME         CPUs or RealMemory as slurmd detects them on this machine
#   slurm_conf_common         the slurm.conf lines both clusters share (root daemons, munge, ports,
#                             scheduling, requeue, job completion file); each adds its own names,
#                             paths, nodes and timeouts

slurm_install_if_absent() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null; then
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
}

slurm_start_munge() {
  local state=$1
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

slurm_stop_pidfile() {
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

slurm_detect() {
  # The node's CPUs and memory must match what slurmd detects, or Slurm marks it invalid.
  slurmd -C | sed -n "s/.*$1=\([0-9]*\).*/\1/p" | head -1
}

slurm_conf_common() {
  cat <<CONF
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
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
JobRequeue=1
MinJobAge=3600
ReturnToService=2
KillWait=30
CONF
}
