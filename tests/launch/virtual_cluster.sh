#!/usr/bin/env bash
# A virtual multi-node cluster on one Linux machine, for the multi-node tests and by hand.
#
#   virtual_cluster.sh up    STATE_DIR [NODES [LOCAL_NODES]]  # e.g. up /tmp/vc 3 node3
#   virtual_cluster.sh slurm STATE_DIR   # slurmctld here + one slurmd per node (after up)
#   virtual_cluster.sh run   STATE_DIR NODE COMMAND...        # COMMAND on NODE, in the current directory
#   virtual_cluster.sh down  STATE_DIR   # stop everything, remove every namespace, link and mount
#
# Each node nodeK (K = 1..NODES, default 3) is a network namespace with its own
# address 10.<a>.<b>.(10+K)/24 on a private bridge (a /24 no interface of this
# machine uses), a UTS namespace (hostname nodeK) and a mount namespace in which
# STATE_DIR/hosts (every node's name and address) replaces /etc/hosts.
# STATE_DIR/lustre plays the shared filesystem: on every node it shows
# STATE_DIR/shared, except on the LOCAL_NODES (comma-separated, default none),
# where it shows the node's own STATE_DIR/local/nodeK instead: the Blue Waters
# situation of a task that writes to "Lustre" and reaches only its node's disk.
# Everything else (the repository, the data, /tmp) is the same on every node.
#
# The bridge carries no route and no forwarding: traffic stays between the
# namespaces (and the bridge address 10.<a>.<b>.1, where slurmctld listens).
# `slurm` writes STATE_DIR/slurm/slurm.conf (export SLURM_CONF to use it) with
# NodeName=nodeK NodeAddr=<its address>, two stand-in GPUs per node declared as
# GRES (STATE_DIR/dev/nodeK-gpu0..1, character devices like /dev/null), and
# starts slurmd in each node with nsenter (not `ip netns exec`, which remounts
# /sys, where slurmd needs the cgroup tree). STATE_DIR/cluster.env records the
# names, so `down` (safe to repeat) undoes exactly what `up` did.
# STATE_DIR/rsh_agent NODE COMMAND runs a shell command on a node, as ssh would
# (for mpiexec: OMPI_MCA_plm_rsh_agent=STATE_DIR/rsh_agent). Needs root,
# iproute2 and util-linux; `slurm` installs slurm-wlm and munge when absent.
set -euo pipefail

usage="usage: virtual_cluster.sh up|slurm|run|down STATE_DIR [...]"
action=${1:?$usage}
state=${2:?$usage}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/launch/slurm_common.sh
source "$here/slurm_common.sh"

die() { echo "virtual_cluster.sh: $*" >&2; exit 2; }

free_subnet() {
  # A 10.x.y.0/24 that no address or route of this machine overlaps.
  local used a b
  used=$(ip -4 addr show; ip -4 route show)
  for _ in $(seq 200); do
    a=$((200 + RANDOM % 50)); b=$((RANDOM % 250 + 1))
    if ! grep -q "10\.$a\.$b\." <<<"$used" && ! grep -qE "10\.0\.0\.0/8|10\.$a\.0\.0/16" <<<"$used"; then
      echo "10.$a.$b"; return
    fi
  done
  die "found no free 10.x.y.0/24 for the bridge"
}

node_names() { seq -f "node%g" 1 "$NODES"; }

enter() {  # enter NODE COMMAND...: run COMMAND in NODE's network, UTS and mount namespaces
  local node=$1; shift
  nsenter --net="/run/netns/$ID-$node" --uts="$state/ns/$node.uts" --mount="$state/ns/$node.mnt" -- "$@"
}

make_node() {
  local node=$1 k=${1#node} lustre_source
  local netns=$ID-$node host_if=v$ID$k
  ip netns add "$netns"
  ip link add "$host_if" type veth peer name eth0 netns "$netns"
  ip link set "$host_if" master "$BRIDGE" up
  ip -n "$netns" addr add "$SUBNET.$((10 + k))/24" dev eth0
  ip -n "$netns" link set eth0 up
  ip -n "$netns" link set lo up
  lustre_source=$state/shared
  if [[ ,$LOCAL_NODES, == *,$node,* ]]; then
    lustre_source=$state/local/$node
  fi
  mkdir -p "$lustre_source"
  touch "$state/ns/$node.uts" "$state/ns/$node.mnt"
  # The namespaces outlive this unshare through the bind mounts on the two files.
  unshare --uts="$state/ns/$node.uts" --mount="$state/ns/$node.mnt" --propagation=private \
    sh -ec "hostname $node; mount --bind '$state/hosts' /etc/hosts; mount --bind '$lustre_source' '$state/lustre'"
  # A process that lives as long as the node: other nodes enter this one through
  # its /proc/PID/ns (the namespace files are not mounted in their mount namespaces).
  setsid nsenter --net="/run/netns/$netns" --uts="$state/ns/$node.uts" --mount="$state/ns/$node.mnt" \
    -- sleep infinity </dev/null >/dev/null 2>&1 &
  echo $! >"$state/ns/$node.anchor"
}

write_rsh_agent() {
  # What ssh is to mpiexec on a real cluster: `rsh_agent NODE COMMAND...` runs
  # COMMAND (one shell string, as ssh passes it) on NODE.
  cat >"$state/rsh_agent" <<AGENT
#!/bin/bash
while [[ \${1:-} == -* ]]; do shift; done
node=\${1:?usage: rsh_agent NODE COMMAND...}; shift
anchor=\$(cat "$state/ns/\$node.anchor") || exit 255
exec nsenter --target="\$anchor" --net --uts --mount -- /bin/sh -c "\$*"
AGENT
  chmod +x "$state/rsh_agent"
}

up() {
  [[ $(id -u) == 0 ]] || die "needs root (network, UTS and mount namespaces)"
  [[ ! -e $state/cluster.env ]] || die "$state already holds a virtual cluster; run down first"
  NODES=${3:-3}
  LOCAL_NODES=${4:-}
  [[ $NODES =~ ^[1-9][0-9]?$ ]] || die "NODES must be 1-99; found '$NODES'"
  mkdir -p "$state"
  state=$(cd "$state" && pwd)
  ID=bw$(printf '%04x' $((RANDOM % 65536)))
  SUBNET=$(free_subnet)
  BRIDGE=$ID-br
  cat >"$state/cluster.env" <<ENV
ID=$ID
NODES=$NODES
LOCAL_NODES=$LOCAL_NODES
SUBNET=$SUBNET
BRIDGE=$BRIDGE
ENV
  trap 'echo "virtual_cluster.sh: up failed; undoing it" >&2; down' EXIT
  mkdir -p "$state/ns" "$state/lustre" "$state/shared" "$state/local"
  {
    echo "127.0.0.1 localhost"
    echo "$SUBNET.1 $(hostname -s)"
    for node in $(node_names); do echo "$SUBNET.$((10 + ${node#node})) $node"; done
  } >"$state/hosts"
  # A private mount point holds the namespace files (unshare refuses shared propagation).
  mount --bind "$state/ns" "$state/ns"
  mount --make-private "$state/ns"
  ip link add "$BRIDGE" type bridge
  ip addr add "$SUBNET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for node in $(node_names); do make_node "$node"; done
  write_rsh_agent
  trap - EXIT
  echo "$state/cluster.env"
}

write_slurm_conf() {
  local dir=$1 cpus memory node k
  cpus=$(slurm_detect CPUs)
  memory=$(slurm_detect RealMemory)
  mkdir -p "$dir/ctld" "$state/dev"
  : >"$dir/gres.conf"
  for node in $(node_names); do
    mkdir -p "$dir/$node"
    for k in 0 1; do
      # Stand-in GPUs: Slurm only needs a device file per GPU to hand out.
      [[ -e $state/dev/$node-gpu$k ]] || mknod -m 0666 "$state/dev/$node-gpu$k" c 1 3
    done
    echo "NodeName=$node Name=gpu File=$state/dev/$node-gpu[0-1]" >>"$dir/gres.conf"
  done
  cat >"$dir/slurm.conf" <<CONF
ClusterName=bwtfvirtual
SlurmctldHost=$(hostname -s)($SUBNET.1)
$(slurm_conf_common)
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/%n/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/%n/slurmd.log
GresTypes=gpu
JobCompLoc=$dir/jobcomp.txt
SlurmdTimeout=${BWTF_SLURMD_TIMEOUT:-20}
NodeName=DEFAULT CPUs=$cpus RealMemory=$((memory / NODES)) Gres=gpu:2 State=UNKNOWN
CONF
  for node in $(node_names); do
    echo "NodeName=$node NodeAddr=$SUBNET.$((10 + ${node#node}))" >>"$dir/slurm.conf"
  done
  echo "PartitionName=virtual Nodes=node[1-$NODES] Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4" \
    >>"$dir/slurm.conf"
}

slurm_up() {
  local dir=$state/slurm
  slurm_install_if_absent
  mkdir -p "$dir"
  slurm_start_munge "$dir"
  write_slurm_conf "$dir"
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -i
  for node in $(node_names); do enter "$node" slurmd -N "$node"; done
  for _ in $(seq 150); do
    if [[ $(sinfo -h -N -o %t 2>/dev/null | grep -cE '^(idle|mix|alloc)$') == "$NODES" ]]; then
      echo "$dir/slurm.conf"; return
    fi
    sleep 0.2
  done
  echo "the virtual Slurm nodes did not all become idle:" >&2
  sinfo -N -l >&2 || true
  tail -n 20 "$dir/slurmctld.log" "$dir"/node*/slurmd.log >&2 || true
  exit 1
}

slurm_down() {
  local dir=$state/slurm
  [[ -e $dir/slurm.conf ]] || return 0
  export SLURM_CONF=$dir/slurm.conf
  scancel --full --quiet --state=RUNNING --user=root 2>/dev/null || true
  for node in $(node_names); do slurm_stop_pidfile "$dir/$node/slurmd.pid"; done
  slurm_stop_pidfile "$dir/slurmctld.pid"
  slurm_stop_pidfile "$dir/munged.pid"
}

down() {
  [[ -e $state/cluster.env ]] || return 0
  slurm_down
  local node pids
  for node in $(node_names); do
    # Whatever still runs on the node (tasks, slurmstepd) ends with it.
    pids=$(ip netns pids "$ID-$node" 2>/dev/null || true)
    [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
    rm -f "$state/ns/$node.anchor"
  done
  for node in $(node_names); do
    umount "$state/ns/$node.mnt" 2>/dev/null || true
    umount "$state/ns/$node.uts" 2>/dev/null || true
    # Deleting the host end removes the pair at once, even while a dying process
    # still holds the namespace.
    ip link delete "v$ID${node#node}" 2>/dev/null || true
    ip netns delete "$ID-$node" 2>/dev/null || true
  done
  ip link delete "$BRIDGE" 2>/dev/null || true
  umount "$state/ns" 2>/dev/null || true
  rm -f "$state/cluster.env"
}

case $action in
  up) up "$@" ;;
  slurm|run|down)
    [[ -d $state ]] || die "no state directory $state"
    state=$(cd "$state" && pwd)
    if [[ ! -e $state/cluster.env ]]; then
      [[ $action == down ]] && exit 0
      die "$state holds no virtual cluster; run up first"
    fi
    # shellcheck source=/dev/null
    source "$state/cluster.env"
    case $action in
      slurm) slurm_up ;;
      run)
        node=${3:?usage: virtual_cluster.sh run STATE_DIR NODE COMMAND...}
        [[ -e $state/ns/$node.mnt ]] || die "no node '$node'; the nodes are $(node_names | xargs)"
        enter "$node" env -C "$PWD" "${@:4}"
        ;;
      down) down ;;
    esac
    ;;
  *) die "unknown action '$action'; $usage" ;;
esac
