#!/usr/bin/env bash
# Stop the SLURM that scripts/slurm_up.sh started, by the PIDs it recorded: slurmd, slurmctld, slurmdbd, MariaDB,
# munged (in that order). Jobs still running are cancelled first. The state directory is kept (remove it to start
# from an empty cluster: rm -rf ${MMGPT_SLURM_DIR:-/tmp/mmgpt-slurm}).
set -uo pipefail

STATE=${MMGPT_SLURM_DIR:-/tmp/mmgpt-slurm}
[ -d "$STATE/run" ] || { echo "slurm_down.sh: no SLURM state in $STATE"; exit 0; }
scancel --full --user="$(id -un)" 2>/dev/null && sleep 1

stop() {  # stop <name> <pid file>: SIGTERM, then wait up to 30 s, then SIGKILL
    local name=$1 pidfile=$2 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        echo "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

for pidfile in "$STATE"/run/slurmd-*.pid; do stop "slurmd $(basename "$pidfile" .pid | cut -d- -f2)" "$pidfile"; done
stop slurmctld "$STATE/run/slurmctld.pid"
stop slurmdbd "$STATE/run/slurmdbd.pid"
stop mariadb "$STATE/mysql/mariadb.pid"
stop munged "$STATE/munge/munged.pid"

# the two-node set-up (MMGPT_SLURM_NODES=2): the nodes' network namespaces, the bridge and their /etc/hosts lines
for ns in $(ip netns list 2>/dev/null | grep -o '^mmgpt-n[0-9]*'); do ip netns del "$ns" && echo "removed $ns"; done
ip link show mmgptbr0 >/dev/null 2>&1 && ip link del mmgptbr0
sed -i '/^10\.77\.0\.[0-9]* n[0-9]*$/d' /etc/hosts 2>/dev/null || true
