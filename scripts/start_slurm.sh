#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the `qamoe study --executor slurm` tests.
#
#   sudo bash scripts/start_slurm.sh
#
# Does nothing when `sinfo` already answers. Otherwise, as root: installs Debian's slurm-wlm
# and munge where missing (apt-get), writes a one-node /etc/slurm/slurm.conf (node
# `localhost` with this machine's CPUs and memory, proctrack/linuxproc, task/none,
# select/cons_tres, partition `debug`, jobs may run as root) unless one not written by this
# script is there, and starts munged, slurmctld and slurmd. Exits 0 once the node accepts
# jobs, else non-zero with the reason on stderr (log: /tmp/qamoe-slurm.log).
set -uo pipefail

LOG=/tmp/qamoe-slurm.log
CONF=/etc/slurm/slurm.conf
MARK="# written by qamoe scripts/start_slurm.sh"

fail() { echo "start_slurm: $*" >&2; exit 1; }
answers() { timeout 5 sinfo -h >/dev/null 2>&1; }

if command -v sinfo >/dev/null 2>&1 && answers; then
  echo "start_slurm: SLURM answers already"
  exit 0
fi
[ "$(id -u)" = 0 ] || fail "needs root to install and start SLURM (run with sudo)"

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || fail "slurm-wlm and munge are not installed and apt-get is absent"
  { apt-get install -y -q slurm-wlm munge || { apt-get update -q && apt-get install -y -q slurm-wlm munge; }; } \
    >>"$LOG" 2>&1 || fail "apt-get could not install slurm-wlm and munge (see $LOG)"
fi

# munge: the key, its folders, and the daemon (as user munge when it exists)
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null 2>&1; then
    mungekey --create --keyfile=/etc/munge/munge.key >>"$LOG" 2>&1
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
fi
owner=root
id munge >/dev/null 2>&1 && owner=munge
chown -R "$owner:$owner" /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null 2>&1; then
  if [ "$owner" = munge ]; then
    runuser -u munge -- /usr/sbin/munged >>"$LOG" 2>&1 || fail "munged did not start (see $LOG)"
  else
    /usr/sbin/munged --force >>"$LOG" 2>&1 || fail "munged did not start (see $LOG)"
  fi
fi

# slurm.conf: this machine as node `localhost`
if [ ! -f "$CONF" ] || head -n 1 "$CONF" | grep -qF "$MARK"; then
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p /etc/slurm
  cat >"$CONF" <<EOF
$MARK
ClusterName=qamoe
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
fi
mkdir -p /var/spool/slurmctld /var/spool/slurmd /run/slurm /var/log/slurm

pgrep -x slurmctld >/dev/null 2>&1 || slurmctld >>"$LOG" 2>&1 || fail "slurmctld did not start (see $LOG and /var/log/slurm/slurmctld.log)"
pgrep -x slurmd >/dev/null 2>&1 || slurmd -N localhost >>"$LOG" 2>&1 || fail "slurmd did not start (see $LOG and /var/log/slurm/slurmd.log)"

for _ in $(seq 1 30); do
  if answers; then
    state=$(sinfo -h -n localhost -o %t 2>/dev/null | head -n 1)
    case "$state" in
      idle* | mix* | alloc*) echo "start_slurm: node localhost is $state"; exit 0 ;;
      down* | drain* | drng*) scontrol update nodename=localhost state=resume >>"$LOG" 2>&1 ;;
    esac
  fi
  sleep 1
done
fail "SLURM did not become ready within 30 s (see /var/log/slurm/slurmctld.log and slurmd.log)"
