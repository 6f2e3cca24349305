#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try the cluster path of the sweeps
# (hydra/launcher=slurm) without a cluster:
#
#   sudo scripts/slurm-local.sh start    # install if needed, configure, start, wait until idle
#   scripts/slurm-local.sh status        # what runs, what sinfo says (exit 0 when usable)
#   sudo scripts/slurm-local.sh stop     # shut the daemons down
#
# Debian/Ubuntu only (apt-get installs slurm-wlm and munge when they are missing); start and stop
# need root. One node, this host, with the CPUs and memory `slurmd -C` reads now; one partition
# (`local`, the default); no cgroups (proctrack/linuxproc, task/none); memory limits enforced by
# polling (jobacct_gather/linux with OverMemoryKill). Job accounting (what `sacct` reads: submitit
# polls it to learn that a job died without a result) comes from slurmdbd on a private MariaDB
# server, both started here; without it a killed job would leave submitit waiting forever.
#
# Everything the cluster writes (state, spool, logs, pid files, the database) lives under
# $SLURM_LOCAL_DIR (default /var/tmp/slurm-local); /etc/slurm/slurm.conf and slurmdbd.conf are
# written with a marker line and never when a file without it is already there. Running start or
# stop twice is harmless: start reuses what already runs, stop only stops what runs.
# Exit status: 0 done (status: the cluster takes jobs), 1 failed, 2 usage, 3 this machine cannot
# host it (apt-get missing or failing, a SLURM configuration of its own).
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/var/tmp/slurm-local}
ETC=/etc/slurm
CONF=$ETC/slurm.conf
DBD_CONF=$ETC/slurmdbd.conf
MARKER="# Written by provable-ptq scripts/slurm-local.sh"
CLUSTER=local
PARTITION=local
START_TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}   # seconds to wait for the node to become idle
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)
DB_SOCKET=$DIR/db/mysqld.sock
DB_PORT=${SLURM_LOCAL_DB_PORT:-3316}  # the private MariaDB, 127.0.0.1 only

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }
# Exit status 3: this machine cannot host the cluster (no packages, a SLURM set-up of its own).
cannot() { echo "slurm-local: cannot start here: $*" >&2; exit 3; }

need_root() {
    [[ $(id -u) -eq 0 ]] \
        || die "'$1' needs root (it installs packages and starts daemons): sudo $0 $1"
}

pid_alive() {  # pid_alive FILE: the process named in FILE runs
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

ours() {  # ours FILE: absent, or written by this script
    [[ ! -e $1 ]] || grep -qxF "$MARKER" "$1"
}

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    command -v apt-get >/dev/null || cannot "apt-get not found: install ${missing[*]} yourself"
    say "installing ${missing[*]} (apt-get)"
    # The packages' own service start-up is not wanted: this script starts the daemons itself.
    local policy=/usr/sbin/policy-rc.d added=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >"$DIR/log/apt.log" 2>&1 || {
        apt-get update -q >>"$DIR/log/apt.log" 2>&1
        apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$DIR/log/apt.log" 2>&1
    } || { [[ -n $added ]] && rm -f "$policy"; cannot "apt-get failed, see $DIR/log/apt.log"; }
    [[ -n $added ]] && rm -f "$policy"
    return 0
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munged already answers"
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    touch "$DIR/run/munged.ours"  # stop stops it only if start started it
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "munged does not answer; see /var/log/munge/munged.log"
}

db() { mariadb --no-defaults --protocol=socket --socket="$DB_SOCKET" -uroot "$@"; }

start_database() {
    if [[ -S $DB_SOCKET ]] && db -e "select 1" >/dev/null 2>&1; then
        return
    fi
    if [[ ! -d $DIR/db/data/mysql ]]; then
        install -d -o mysql -g mysql "$DIR/db/data"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/db/data" \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$DIR/log/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed, see $DIR/log/mariadb-install.log"
    fi
    chown mysql:mysql "$DIR/db"
    # A private server: its own socket (for this script), TCP on 127.0.0.1:$DB_PORT only (for
    # slurmdbd), InnoDB settings slurmdbd asks for.
    mariadbd --no-defaults --user=mysql --datadir="$DIR/db/data" --socket="$DB_SOCKET" \
        --pid-file="$DIR/db/mysqld.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
        --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
        --log-error="$DIR/db/mariadb.log" >/dev/null 2>&1 &
    for _ in $(seq 100); do
        db -e "select 1" >/dev/null 2>&1 && break
        sleep 0.2
    done
    db -e "select 1" >/dev/null 2>&1 || die "MariaDB did not start; see $DIR/db/mariadb.log"
    if [[ ! -s $DIR/db/password ]]; then
        (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DIR/db/password")
    fi
    local pw
    pw=$(cat "$DIR/db/password")
    db <<EOF
create database if not exists slurm_acct_db;
create user if not exists 'slurm'@'127.0.0.1' identified by '$pw';
create user if not exists 'slurm'@'localhost' identified by '$pw';
grant all on slurm_acct_db.* to 'slurm'@'127.0.0.1';
grant all on slurm_acct_db.* to 'slurm'@'localhost';
EOF
}

write_conf() {
    ours "$CONF" || cannot "$CONF exists and was not written by this script; not touching it"
    ours "$DBD_CONF" \
        || cannot "$DBD_CONF exists and was not written by this script; not touching it"
    local host node
    host=$(hostname -s)
    # This host as slurmd sees it: CPUs, sockets, cores, threads, RealMemory (MB).
    node=$(slurmd -C | head -n1)
    [[ $node == NodeName=* ]] || die "slurmd -C did not describe this node: $node"
    install -d -m 0755 "$ETC"
    cat >"$CONF.tmp" <<EOF
$MARKER
# ($(date -u +%FT%TZ)) start rewrites this file each time.
# A one-node cluster on this host, without cgroups: see the script's header.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5
SelectType=select/cons_tres
# Cores and memory are consumable: a job asking for 4 GB holds 4 GB of the node.
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
# Memory limits without cgroups: each step's RSS is polled every 2 s and over-limit steps killed.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
# Short waits: killed jobs go quickly, the node is back quickly.
KillWait=5
MinJobAge=60
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    cat >"$DBD_CONF.tmp" <<EOF
$MARKER
# ($(date -u +%FT%TZ)) start rewrites this file each time.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$(cat "$DIR/db/password")
EOF
    chmod 0600 "$DBD_CONF.tmp"
    mv "$DBD_CONF.tmp" "$DBD_CONF"
}

wait_idle() {
    local t0=$SECONDS state
    while (( SECONDS - t0 < START_TIMEOUT )); do
        state=$(sinfo -h -N -o "%T" 2>/dev/null | head -n1 || true)
        if [[ $state == idle || $state == mixed || $state == allocated ]]; then
            say "up: node $(hostname -s) is $state" \
                "($(sinfo -h -N -o '%c CPUs, %m MB' | head -n1))," \
                "partition $PARTITION"
            return
        fi
        sleep 1
    done
    sinfo -N -l 2>&1 || true
    die "the node did not become idle within ${START_TIMEOUT}s" \
        "(last state: '${state:-no answer}');" \
        "see $DIR/log/slurmctld.log and $DIR/log/slurmd.log"
}

start() {
    need_root start
    install -d -m 0755 "$DIR" "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log" "$DIR/db"
    install_packages
    start_munge
    start_database
    write_conf
    if ! pid_alive "$DIR/run/slurmdbd.pid"; then
        slurmdbd
        for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
    fi
    sacctmgr -n list cluster format=cluster 2>/dev/null | grep -qw "$CLUSTER" \
        || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    pid_alive "$DIR/run/slurmctld.pid" || slurmctld
    pid_alive "$DIR/run/slurmd.pid" || slurmd
    wait_idle
}

stop_pids() {  # stop_pids NAME=FILE...: SIGTERM to all at once, then wait up to 30 s for each
    local item name file pid alive=()
    for item in "$@"; do
        name=${item%%=*} file=${item#*=}
        if pid_alive "$file"; then
            pid=$(cat "$file")  # read first: a daemon removes its pid file as it exits
            kill "$pid" 2>/dev/null || true
            alive+=("$name=$pid")
        fi
    done
    for item in "${alive[@]}"; do
        name=${item%%=*} pid=${item#*=}
        for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && die "$name (pid $pid) did not exit within 30 s"
        say "stopped $name"
    done
}

stop() {
    need_root stop
    if pid_alive "$DIR/run/slurmctld.pid"; then
        # A stopped test cluster keeps no work: cancel every job and wait until they are gone,
        # so that no job step outlives slurmd.
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            say "cancelling $(wc -w <<<"$jobs") job(s)"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 60); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break; sleep 0.5; done
        fi
    fi
    stop_pids slurmd="$DIR/run/slurmd.pid" slurmctld="$DIR/run/slurmctld.pid" \
        slurmdbd="$DIR/run/slurmdbd.pid" mariadbd="$DIR/db/mysqld.pid"
    if [[ -e $DIR/run/munged.ours ]]; then
        munged --stop >/dev/null 2>&1 && say "stopped munged"
        rm -f "$DIR/run/munged.ours"
    fi
    say "stopped"
}

status() {
    local up=0 d
    for d in slurmctld slurmd slurmdbd; do
        if pid_alive "$DIR/run/$d.pid"; then say "$d runs (pid $(cat "$DIR/run/$d.pid"))"
        else say "$d is not running"; up=1; fi
    done
    if command -v sinfo >/dev/null && sinfo -h >/dev/null 2>&1; then
        sinfo -h -N -o "%N %P %T %c %m" | while read -r n p t c m; do
            say "node $n, partition $p: $t, $c CPUs, $m MB"
        done
        squeue -h -o "%i %j %T %M" 2>/dev/null | sed 's/^/job /'
    else
        say "sinfo does not answer: the cluster is down (start it, as root: $0 start)"
        up=1
    fi
    return $up
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
