#!/usr/bin/env bash
# Start a throwaway one-node SLURM cluster for the SLURM executor tests and export SLURM_CONF.
#
#   eval "$(bash .ci/slurm.sh)"     # start; sets SLURM_CONF and CLBENCH_TEST_SLURM_DIR
#   bash .ci/slurm.sh --stop        # stop the cluster started above and delete its folder
#
# Needs Debian's slurm-wlm, munge, slurmdbd and mariadb-server (apt-get install -y slurm-wlm munge
# slurmdbd mariadb-server) and root (slurmd starts jobs as their user; SlurmUser=root). Everything
# lives in a new temporary folder: a munge key and its own munged socket, a MariaDB data folder
# (its own socket and port) for slurmdbd, whose accounting `sacct` reads (submitit reads job states
# with sacct), and slurmctld + slurmd listening on 127.0.0.1 on free unprivileged ports. One node,
# named after this host, with this machine's CPUs and memory; partition `debug`. It is for tests:
# no cgroups (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none), fsync off in MariaDB.
# Logs go to the folder (and a failed start prints them to stderr); stdout carries only the
# `export` lines, so `eval "$(...)"` is all a caller needs. Sourcing the script works too.

_clbench_slurm_free_port() {
    local candidate
    for _ in $(seq 1 50); do
        candidate=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

_clbench_slurm_wait() {  # _clbench_slurm_wait SECONDS WHAT COMMAND...: until COMMAND succeeds
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq 1 $((seconds * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "slurm.sh: $what did not come up within ${seconds}s" >&2
    return 1
}

_clbench_slurm_stop() {
    local dir=${CLBENCH_TEST_SLURM_DIR:-}
    if [ -z "$dir" ] || [ ! -f "$dir/slurm.conf" ]; then
        echo "slurm.sh: CLBENCH_TEST_SLURM_DIR does not name a running test cluster" >&2
        return 1
    fi
    local pidfile
    for pidfile in slurmd.pid slurmctld.pid slurmdbd.pid mariadb.pid munged.pid; do
        if [ -f "$dir/$pidfile" ]; then
            kill "$(cat "$dir/$pidfile")" 2>/dev/null || true
        fi
    done
    sleep 1
    for pidfile in slurmd.pid slurmctld.pid slurmdbd.pid mariadb.pid munged.pid; do
        if [ -f "$dir/$pidfile" ]; then
            kill -9 "$(cat "$dir/$pidfile")" 2>/dev/null || true
        fi
    done
    rm -rf "$dir"
}

_clbench_slurm_logs() {
    local f
    for f in "$1"/*.log; do
        [ -f "$f" ] && { echo "== $f" >&2; tail -n 20 "$f" >&2; }
    done
    return 1
}

_clbench_slurm_main() {
    if [ "${1:-}" = "--stop" ]; then
        _clbench_slurm_stop
        return $?
    fi
    local tool
    for tool in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sinfo sacct; do
        if ! PATH="$PATH:/usr/sbin:/usr/bin" command -v "$tool" >/dev/null; then
            echo "slurm.sh: $tool not found; install it with: apt-get install -y slurm-wlm munge slurmdbd mariadb-server" >&2
            return 1
        fi
    done
    if [ "$(id -u)" != 0 ]; then
        echo "slurm.sh: the test cluster runs as root (SlurmUser=root); run it as root" >&2
        return 1
    fi
    export PATH="$PATH:/usr/sbin"
    local dir node cpus mem ctld_port slurmd_port dbd_port db_port
    dir=$(mktemp -d /tmp/clbench-slurm.XXXXXX) || return 1
    chmod 755 "$dir"
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge" "$dir/mysql"
    node=$(hostname -s)
    cpus=$(nproc --all)
    mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512))
    ctld_port=$(_clbench_slurm_free_port) && slurmd_port=$(_clbench_slurm_free_port) \
        && dbd_port=$(_clbench_slurm_free_port) && db_port=$(_clbench_slurm_free_port) || {
        echo "slurm.sh: found no free port" >&2
        return 1
    }

    # munge: a fresh key and a private socket (AuthInfo, and AccountingStoragePass for slurmdbd's
    # clients, tell every SLURM program where it is).
    mkdir -p "$dir/munge-key" && chmod 700 "$dir/munge-key"
    dd if=/dev/urandom of="$dir/munge-key/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge-key/munge.key"
    munged --force --socket="$dir/munge/munge.sock" --key-file="$dir/munge-key/munge.key" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge-key/munge.seed" \
        >&2 || { _clbench_slurm_logs "$dir"; return 1; }

    # MariaDB for slurmdbd: its own data folder, socket and TCP port on 127.0.0.1.
    mariadb-install-db --user=root --datadir="$dir/mysql" --auth-root-authentication-method=socket \
        --skip-test-db >"$dir/mariadb-install.log" 2>&1 || { cat "$dir/mariadb-install.log" >&2; return 1; }
    mariadbd --no-defaults --user=root --datadir="$dir/mysql" --socket="$dir/mysql.sock" \
        --bind-address=127.0.0.1 --port="$db_port" --pid-file="$dir/mariadb.pid" --log-error="$dir/mariadb.log" \
        --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --skip-name-resolve >/dev/null 2>&1 &
    _clbench_slurm_wait 60 MariaDB mariadb --no-defaults -S "$dir/mysql.sock" -u root -e "SELECT 1" \
        || { _clbench_slurm_logs "$dir"; return 1; }
    mariadb --no-defaults -S "$dir/mysql.sock" -u root -e \
        "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; GRANT ALL ON *.* TO 'slurm'@'127.0.0.1';" \
        || { _clbench_slurm_logs "$dir"; return 1; }

    cat >"$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.sock
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
PidFile=$dir/slurmdbd.pid
LogFile=$dir/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$dir/slurmdbd.conf"  # slurmdbd reads it from beside SLURM_CONF

    cat >"$dir/slurm.conf" <<EOF
ClusterName=clbench
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.sock
CryptoType=crypto/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MpiDefault=none
ReturnToService=2
JobRequeue=0
MinJobAge=300
KillWait=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
AccountingStoragePass=$dir/munge/munge.sock
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"

    slurmdbd >&2 || { _clbench_slurm_logs "$dir"; return 1; }
    _clbench_slurm_wait 30 slurmdbd sacctmgr -i show cluster || { _clbench_slurm_logs "$dir"; return 1; }
    sacctmgr -i add cluster clbench >/dev/null 2>&1 || true
    slurmctld -f "$dir/slurm.conf" >&2 || { _clbench_slurm_logs "$dir"; return 1; }
    slurmd -f "$dir/slurm.conf" >&2 || { _clbench_slurm_logs "$dir"; return 1; }
    _clbench_slurm_wait 60 "the node $node" bash -c "sinfo -h -n '$node' -o %t | grep -qx idle" \
        || { _clbench_slurm_logs "$dir"; return 1; }

    export CLBENCH_TEST_SLURM_DIR="$dir"
    echo "slurm.sh: SLURM $(sinfo -V | cut -d' ' -f2) on 127.0.0.1:$ctld_port, node $node ($cpus CPUs, $mem MB), state in $dir" >&2
    echo "export SLURM_CONF='$dir/slurm.conf'"
    echo "export CLBENCH_TEST_SLURM_DIR='$dir'"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    _clbench_slurm_main "$@"
    exit $?
else
    _clbench_slurm_main "$@" >/dev/null
fi
