#!/usr/bin/env bash
# A one-node SLURM cluster on 127.0.0.1, for trying sweeps on a workstation and for the test suite.
#
#   sudo slurm/local_cluster.sh start     # install (Debian/Ubuntu packages) if needed, configure, start
#   slurm/local_cluster.sh status         # sinfo / squeue
#   sudo slurm/local_cluster.sh stop
#
# It runs munged, slurmctld and slurmd as root with a minimal slurm.conf (no accounting database, no
# cgroups) describing this machine's CPUs and memory in one partition `debug`. Not for production clusters.
set -euo pipefail

CONF_DIR=${SLURM_CONF_DIR:-/etc/slurm}
STATE_DIR=${SLURM_STATE_DIR:-/var/spool/slurm-aum}
LOG_DIR=${SLURM_LOG_DIR:-/var/log/slurm-aum}
NODE=$(hostname -s)

need_root() { [ "$(id -u)" -eq 0 ] || { echo "run as root (sudo $0 $*)" >&2; exit 1; }; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p "$CONF_DIR" "$STATE_DIR/ctld" "$STATE_DIR/d" "$LOG_DIR"
  cat > "$CONF_DIR/slurm.conf" <<CONF
ClusterName=aum-local
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
SlurmdTimeout=60
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
CONF
  echo "wrote $CONF_DIR/slurm.conf (${cpus} CPUs, ${mem} MB)"
}

start() {
  need_root start
  install_packages
  write_conf
  if ! pgrep -x munged >/dev/null; then
    [ -s /etc/munge/munge.key ] || (command -v mungekey >/dev/null && mungekey --create --force) \
      || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged || /usr/sbin/munged --force
  fi
  pgrep -x slurmctld >/dev/null || slurmctld -i
  pgrep -x slurmd >/dev/null || slurmd
  for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      sinfo; return 0
    fi
    sleep 0.5
  done
  echo "SLURM did not come up; see $LOG_DIR" >&2
  tail -n 20 "$LOG_DIR"/*.log >&2 || true
  exit 1
}

stop() {
  need_root stop
  pkill -x slurmd || true
  pkill -x slurmctld || true
  echo "stopped slurmd and slurmctld (munged left running)"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) sinfo; squeue ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
