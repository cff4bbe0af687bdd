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

# MMGPT_SLURM_NODES=2: two nodes on this machine (n1, n2: the CPUs and memory shared out), each slurmd in its own
# network and UTS namespace (Debian's slurmd is built without --enable-multiple-slurmd), on a bridge with the
# controller at $NET.1; munged's socket and the files are shared (no mount namespace). Run with
# tests/cli/test_slurm.py's 2-node x 1-task DDP test (docs/distributed.md, SLURM).
NODES=${MMGPT_SLURM_NODES:-1}
NET=10.77.0                    # their network (a bridge, mmgptbr0, on this machine at $NET.1)
sinfo_nodes() { if [ "$NODES" = 1 ]; then echo "$HOST"; else echo "n[1-$NODES]"; fi; }

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
if [ "$NODES" = 1 ]; then mkdir -p "$STATE/spool/$HOST"; else for i in $(seq "$NODES"); do mkdir -p "$STATE/spool/n$i"; done; fi
chmod 755 "$STATE"

if [ "$NODES" != 1 ]; then  # a bridge on this machine, a veth into each node's network namespace, names in /etc/hosts
    command -v ip >/dev/null || { echo "slurm_up.sh: MMGPT_SLURM_NODES needs iproute2 (ip)" >&2; exit 1; }
    ip link show mmgptbr0 >/dev/null 2>&1 || {
        ip link add mmgptbr0 type bridge && ip addr add "$NET.1/24" dev mmgptbr0 && ip link set mmgptbr0 up; }
    for i in $(seq "$NODES"); do
        ip netns list | grep -q "^mmgpt-n$i\b" || {
            ip netns add "mmgpt-n$i"
            ip link add "mmgpt-v$i" type veth peer name eth0 netns "mmgpt-n$i"
            ip link set "mmgpt-v$i" master mmgptbr0 up
            ip -n "mmgpt-n$i" addr add "$NET.$(( i + 1 ))/24" dev eth0
            ip -n "mmgpt-n$i" link set eth0 up && ip -n "mmgpt-n$i" link set lo up; }
        grep -q " n$i\$" /etc/hosts || echo "$NET.$(( i + 1 )) n$i" >> /etc/hosts
    done
fi

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
# (an `if`, not `running ... || mariadbd ... &`: that backgrounds a subshell which keeps the script's stdout open,
# and `bash scripts/slurm_up.sh | tail` never ends)
if ! running "$STATE/mysql/mariadb.pid"; then
    mariadbd --user=mysql --datadir="$STATE/mysql" --socket=/run/mysqld/mysqld.sock --pid-file="$STATE/mysql/mariadb.pid" \
        --skip-networking --log-error="$STATE/mysql/mariadb.err" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
fi
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
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Jobs are requeueable by default (pre-emption, scontrol requeue, submitit's requeue on time-out).
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
EOF
if [ "$NODES" = 1 ]; then
    cat >> "$ETC/slurm.conf" <<EOF
SlurmctldHost=$HOST
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
EOF
else  # the machine's CPUs and memory shared out between the nodes, each slurmd in its own network namespace
    cat >> "$ETC/slurm.conf" <<EOF
SlurmctldHost=$HOST($NET.1)
NodeName=DEFAULT CPUs=$(( CPUS / NODES )) RealMemory=$(( MEM_MB / NODES )) State=UNKNOWN
EOF
    for i in $(seq "$NODES"); do echo "NodeName=n$i NodeAddr=$NET.$(( i + 1 ))" >> "$ETC/slurm.conf"; done
fi
NODELIST=$(sinfo_nodes)
cat >> "$ETC/slurm.conf" <<EOF
PartitionName=cpu Nodes=$NODELIST Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=$NODELIST MaxTime=INFINITE State=UP PriorityTier=10
EOF

slurmdbd
for _ in $(seq 60); do sacctmgr -i -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
sacctmgr -i add cluster mmgpt >/dev/null 2>&1 || true
slurmctld
if [ "$NODES" = 1 ]; then
    slurmd
else
    # slurmd takes its node name from the host name: its own UTS namespace. nsenter, not `ip netns exec`: that
    # also mounts a fresh /sys for the namespace, without /sys/fs/cgroup, and slurmd stops ("No filesystem
    # mounted on /sys/fs/cgroup ... Unable to initialize cgroup plugin").
    for i in $(seq "$NODES"); do
        nsenter --net="/run/netns/mmgpt-n$i" unshare --uts sh -c "hostname n$i && exec slurmd"
    done
fi
for _ in $(seq 60); do
    [ "$(sinfo -h -N -p cpu -o %T 2>/dev/null | grep -c -E '^(idle|mixed|allocated)')" = "$NODES" ] && break
    scontrol update nodename="$NODELIST" state=resume >/dev/null 2>&1 || true
    sleep 0.5
done
sinfo -o "%P %a %l %D %c %m %T %N"
echo "SLURM is up (state in $STATE); scripts/slurm_down.sh stops it"
