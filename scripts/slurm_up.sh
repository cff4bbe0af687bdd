#!/usr/bin/env bash
# Bring up a real one-node SLURM on this machine from Debian's packages, started by hand (no systemd):
# munged, MariaDB (for accounting), slurmdbd, slurmctld and slurmd. `scripts/slurm_down.sh` stops them by PID.
#
#   apt-get install slurm-wlm munge slurmdbd mariadb-server     # once (Debian 12: SLURM 22.05)
#   bash scripts/slurm_up.sh                                     # as root; prints the partition when ready
#
# The node is described honestly (the machine's CPUs and memory, no GPU), in two partitions on it: `cpu` (the
# default) and `urgent`, whose jobs pre-empt (requeue) `cpu`'s (preempt/partition_prio). Jobs are requeueable (JobRequeue=1) and accounted (sacct works), which is what
# submitit needs to follow jobs. State, logs and PID files live in $MMGPT_SLURM_DIR (default /tmp/mmgpt-slurm);
# the configuration is written to /etc/slurm, where every SLURM command looks for it.
set -euo pipefail

STATE=${MMGPT_SLURM_DIR:-/tmp/mmgpt-slurm}
ETC=/etc/slurm
HOST=$(hostname -s)
CPUS=${MMGPT_SLURM_CPUS:-$(nproc)}
MEM_MB=${MMGPT_SLURM_MEM_MB:-$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))}  # minus the OS'

[ "$(id -u)" = 0 ] || { echo "slurm_up.sh: run as root (it starts munged, MariaDB and the SLURM daemons)" >&2; exit 1; }
for bin in munged mariadbd slurmdbd slurmctld slurmd sbatch; do
    command -v "$bin" >/dev/null || {
        echo "slurm_up.sh: $bin not found: apt-get install slurm-wlm munge slurmdbd mariadb-server" >&2; exit 1; }
done
if [ -f "$STATE/run/slurmctld.pid" ] && kill -0 "$(cat "$STATE/run/slurmctld.pid")" 2>/dev/null; then
    echo "slurm_up.sh: SLURM is already up ($STATE); scripts/slurm_down.sh stops it"; exit 0
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }  # running <pid file>

mkdir -p "$STATE"/{log,spool,ctld,mysql,run} "$ETC" /run/munge /run/mysqld
chmod 755 "$STATE"

# munge: one key, shared by every daemon and client of this one-machine cluster.
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
mkdir -p "$STATE/munge"
chown munge:munge /etc/munge/munge.key /run/munge "$STATE/munge" && chmod 600 /etc/munge/munge.key
running "$STATE/munge/munged.pid" || runuser -u munge -- munged --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" --force

# MariaDB on its own data directory, for slurmdbd only, without TCP: "localhost" is the default socket.
chown mysql:mysql "$STATE/mysql" /run/mysqld
if [ ! -d "$STATE/mysql/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
        > "$STATE/log/mariadb-install.log" 2>&1
fi
running "$STATE/mysql/mariadb.pid" || mariadbd --user=mysql --datadir="$STATE/mysql" --socket=/run/mysqld/mysqld.sock --pid-file="$STATE/mysql/mariadb.pid" \
    --skip-networking --log-error="$STATE/mysql/mariadb.err" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
for _ in $(seq 120); do mariadb-admin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1 && break; sleep 0.5; done
mariadb --socket=/run/mysqld/mysqld.sock -u root -e "
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmdb';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

cat > "$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmdb
EOF
chmod 600 "$ETC/slurmdbd.conf"

cat > "$ETC/slurm.conf" <<EOF
ClusterName=mmgpt
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Jobs are requeueable by default (pre-emption, `scontrol requeue`, submitit's requeue on time-out).
JobRequeue=1
SchedulerParameters=nohold_on_prolog_fail
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
KillWait=30
MinJobAge=300
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
SchedulerType=sched/backfill
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=$HOST MaxTime=INFINITE State=UP PriorityTier=10
EOF

slurmdbd
for _ in $(seq 60); do sacctmgr -i -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
sacctmgr -i add cluster mmgpt >/dev/null 2>&1 || true
slurmctld
slurmd
for _ in $(seq 60); do
    sinfo -h -o %T 2>/dev/null | grep -q -E '^(idle|mixed|allocated)' && break
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 0.5
done
sinfo -o "%P %a %l %D %c %m %T %N"
echo "SLURM is up (state in $STATE); scripts/slurm_down.sh stops it"
