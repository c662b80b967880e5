#!/usr/bin/env bash
# A one-node SLURM on this machine, for the slow tests of cluster.kind slurm and for trying it out:
#   deployments/slurm-local.sh up     # munged, slurmctld, slurmd (as root; Debian's slurm-wlm and munge)
#   deployments/slurm-local.sh down   # cancel every job, stop the three daemons
# Two fake GPUs as GRES of two types, "small" (CUDA_VISIBLE_DEVICES=0) and "big" (=1): character
# devices cloned from /dev/null, so each job gets its own GPU index and trackset's fake GPUs
# (cluster.fake_gpus, by index) give them their memory. No systemd or cgroups (proctrack/linuxproc,
# task/none). Every listener is on 127.0.0.1: NoCtldInAddrAny matters, without it slurmctld binds
# 0.0.0.0. Two CPUs: the tests ask one per job (cluster.slurm.cpus_per_job), so both GPUs get a job.
# It writes /etc/slurm/slurm.conf and gres.conf: it refuses to replace a slurm.conf of another
# cluster than its own (ClusterName=localci).
# From ../shared/recipes/slurm-local-up.sh (PLATFORM-NOTES.md, "A real SLURM on this machine class").
set -euo pipefail

up() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null || {
    echo "slurm-wlm and munge are not installed: apt-get install -y --no-install-recommends slurm-wlm munge" >&2
    exit 1
  }
  if [ -s /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; then
    echo "slurmctld runs already (pid $(cat /run/slurmctld.pid)): deployments/slurm-local.sh down first" >&2
    exit 1
  fi
  if [ -e /etc/slurm/slurm.conf ] && ! grep -qx 'ClusterName=localci' /etc/slurm/slurm.conf; then
    echo "/etc/slurm/slurm.conf is another SLURM's (no ClusterName=localci): not overwriting it" >&2
    exit 1
  fi
  local node fake mem_mb
  node=$(hostname -s)
  fake=${FAKE_GPU_DIR:-/var/lib/slurm-fakegpu}
  mem_mb=$(($(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) - 2048))
  mkdir -p "$fake" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
  for i in 0 1; do [ -e "$fake/nvidia$i" ] || mknod "$fake/nvidia$i" c 1 3; done
  chown slurm:slurm /var/spool/slurmctld /var/log/slurm
  chown munge:munge /run/munge
  chmod 755 /run/munge
  [ -s /etc/munge/munge.key ] || { runuser -u munge -- /usr/sbin/mungekey 2>/dev/null || /usr/sbin/create-munge-key -f; }
  cat >/etc/slurm/slurm.conf <<CONF
ClusterName=localci
SlurmctldHost=localhost
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
GresTypes=gpu
ReturnToService=2
KillWait=5
MinJobAge=60
NodeName=$node NodeAddr=127.0.0.1 CPUs=2 RealMemory=$mem_mb Gres=gpu:small:1,gpu:big:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  cat >/etc/slurm/gres.conf <<CONF
AutoDetect=off
NodeName=$node Name=gpu Type=small File=$fake/nvidia0
NodeName=$node Name=gpu Type=big File=$fake/nvidia1
CONF
  runuser -u munge -- /usr/sbin/munged
  /usr/sbin/slurmctld
  /usr/sbin/slurmd
  for _ in $(seq 30); do
    timeout 5 sinfo -h -o %T 2>/dev/null | grep -qx idle && { sinfo; return 0; }
    sleep 1
  done
  echo "the node did not become idle in 30 s; see /var/log/slurm/" >&2
  sinfo >&2 || true
  exit 1
}

down() {
  scancel --full -u "$(id -un)" 2>/dev/null || true
  for pid_file in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
    if [ -s "$pid_file" ]; then
      pid=$(cat "$pid_file")
      if kill "$pid" 2>/dev/null; then
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
      fi
    fi
    rm -f "$pid_file"
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
