#!/usr/bin/env bash
# Single-node SLURM cluster on localhost from Debian packages, without systemd, as root:
# munged + MariaDB + slurmdbd + slurmctld + slurmd, with real accounting (sacct works).
#   cluster.sh start   install what is missing, start everything, wait until ready (no-op if up)
#   cluster.sh stop    cancel all jobs, stop the daemons this script started (recorded PIDs)
#   cluster.sh status  daemons, sinfo, squeue, sacct
#   cluster.sh env     print `export SLURM_CONF=...`
# State (configs, PIDs, logs, MariaDB datadir, slurmctld state) is in $SLURM_STATE_DIR
# (default /tmp/stylelab-slurm). /etc/slurm/slurm.conf is symlinked to its slurm.conf
# unless a real file is there, so plain sbatch/squeue/sacct work without SLURM_CONF.
set -euo pipefail

STATE=${SLURM_STATE_DIR:-/tmp/stylelab-slurm}
CLUSTER=${SLURM_CLUSTER_NAME:-stylelab}
DB_PORT=${SLURM_DB_PORT:-13306}
ETC=$STATE/etc RUN=$STATE/run LOG=$STATE/log DBDIR=$STATE/mysql
HOST=$(hostname -s)
export SLURM_CONF=$ETC/slurm.conf
PKGS=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd) # start order; stop goes in reverse

log() { printf '[slurm-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# wait_for SECONDS WHAT CMD...: poll CMD every 0.2 s until it succeeds, else die.
wait_for() {
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "timed out after ${secs}s waiting for $what (logs: $LOG)"
}

# PID bookkeeping: $RUN/<name>.pid holds the PID of each daemon this script started.
record() { [[ $2 =~ ^[0-9]+$ ]] || die "$1 wrote no PID (logs: $LOG)"; echo "$2" >"$RUN/$1.pid"; }
recorded_pid() { cat "$RUN/$1.pid" 2>/dev/null; }
# alive PID: exists and is not a zombie (PID 1 on these machines reaps orphans late).
alive() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) && s=${s##*) } && [[ ${s:0:1} != Z ]]; }
# ours NAME: the recorded PID is alive and still runs that program (no PID-reuse accidents).
ours() { local p; p=$(recorded_pid "$1") && [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == "$1" ]] && alive "$p"; }
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
# A munged that was already running when we started is used but never stopped.
external_munge() { [[ -e $RUN/munged.external ]] && munge_ok; }
all_running() {
  local d
  for d in "${DAEMONS[@]}"; do
    ours "$d" || { [[ $d == munged ]] && external_munge; } || return 1
  done
}
# pidfile_pid FILE: the PID a daemon wrote to its own pid file, once it is there.
pidfile_pid() { wait_for 30 "$1" test -s "$1" && tr -dc '0-9' <"$1"; }

install_packages() {
  local p t0 missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  t0=$(now)
  log "installing ${missing[*]} (log: $STATE/apt.log)"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${missing[@]}"; } >"$STATE/apt.log" 2>&1 ||
    { tail -n 20 "$STATE/apt.log" >&2; die "apt-get failed"; }
  log "installed in $(since "$t0")s"
}

write_configs() {
  mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/ctld" "$STATE/spool"
  [[ -s $ETC/dbpass ]] || (umask 077 && od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$ETC/dbpass")
  local cpus real
  cpus=$(nproc)
  real=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.95 }' /proc/meminfo) # under the total
  cat >"$ETC/slurm.conf" <<EOF
# Written by scripts/slurm/cluster.sh on every start; edit the script, not this file.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$RUN/slurmctld.own.pid
SlurmdPidFile=$RUN/slurmd.own.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# No cgroups: /proc-based process tracking and accounting, no CPU binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((real / cpus))
# Reject jobs that can never fit (more CPUs/memory/nodes than exist) at sbatch time.
EnforcePartLimits=ALL
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=10
SlurmdTimeout=10
MinJobAge=300
KillWait=5
InactiveLimit=0
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  (umask 077 && cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$RUN/slurmdbd.own.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$ETC/dbpass")
StorageLoc=slurm_acct_db
EOF
  )
  chown root:root "$ETC/slurmdbd.conf" # slurmdbd insists: owned by SlurmUser, mode 600
  chmod 600 "$ETC/slurmdbd.conf"
  mkdir -p /etc/slurm
  if [[ ! -e /etc/slurm/slurm.conf || -L /etc/slurm/slurm.conf ]]; then
    ln -sfn "$ETC/slurm.conf" /etc/slurm/slurm.conf
  fi
}

start_munged() {
  install -d -o munge -g munge -m 0755 /run/munge
  [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
  if munge_ok; then
    log "using the munged that is already running"
    touch "$RUN/munged.external"
    return 0
  fi
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged || die "munged failed (see /var/log/munge/munged.log)"
  record munged "$(pidfile_pid /run/munge/munged.pid)"
  wait_for 10 munged munge_ok
}

mysql_root() { mariadb --no-defaults --socket="$DBDIR/mysqld.sock" -uroot "$@"; }

start_mariadbd() {
  if [[ ! -d $DBDIR/mysql ]]; then
    mariadb-install-db --no-defaults --user=mysql --datadir="$DBDIR" --skip-test-db \
      --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1
  fi
  chmod 755 "$STATE" # mysql must reach its datadir
  chown -R mysql:mysql "$DBDIR"
  rm -f "$DBDIR/mariadbd.pid"
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DBDIR" \
    --socket="$DBDIR/mysqld.sock" --pid-file="$DBDIR/mariadbd.pid" --log-error="$LOG/mariadb.log" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --innodb-buffer-pool-size=512M --innodb-lock-wait-timeout=900 \
    </dev/null >>"$LOG/mariadb.log" 2>&1 &
  record mariadbd "$(pidfile_pid "$DBDIR/mariadbd.pid")"
  wait_for 30 MariaDB mysql_root -e 'SELECT 1'
  local h pass sql="CREATE DATABASE IF NOT EXISTS slurm_acct_db;"
  pass=$(cat "$ETC/dbpass")
  for h in localhost 127.0.0.1; do
    sql+="CREATE USER IF NOT EXISTS 'slurm'@'$h'; ALTER USER 'slurm'@'$h' IDENTIFIED BY '$pass';"
    sql+="GRANT ALL ON slurm_acct_db.* TO 'slurm'@'$h';"
  done
  mysql_root -e "$sql"
}

# start_slurm NAME READY-CMD...: slurm daemons fork and write <name>.own.pid themselves.
start_slurm() {
  local name=$1
  shift
  rm -f "$RUN/$name.own.pid"
  "/usr/sbin/$name" </dev/null >>"$LOG/$name.out" 2>&1 || die "$name failed (see $LOG/$name.log)"
  record "$name" "$(pidfile_pid "$RUN/$name.own.pid")"
  wait_for 60 "$name" "$@"
}

register_cluster() {
  # `add cluster` also creates account `root` with user root, so root's jobs are accepted.
  sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" ||
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  sacctmgr -n -P list assoc cluster="$CLUSTER" user=root format=user | grep -q root ||
    sacctmgr -i add user root account=root cluster="$CLUSTER" >/dev/null
}

node_idle() { [[ "$(sinfo -h -n "$HOST" -o %t)" == idle ]]; }

cmd_start() {
  [[ $EUID -eq 0 ]] || die "must run as root"
  if all_running; then log "already running (state: $STATE)"; return 0; fi
  cmd_stop >/dev/null 2>&1 || true # clear whatever a half-started cluster left
  mkdir -p "$STATE"
  install_packages
  local t0
  t0=$(now)
  write_configs
  start_munged
  start_mariadbd
  start_slurm slurmdbd sacctmgr -n list cluster
  register_cluster
  start_slurm slurmctld scontrol ping
  start_slurm slurmd node_idle
  wait_for 30 sacct sacct -n -X -S now-1hours
  log "started in $(since "$t0")s: partition debug, $(nproc) CPUs; state in $STATE"
}

# stop_pid NAME: TERM the recorded daemon, wait up to 15 s, then KILL.
stop_pid() {
  local name=$1 pid i
  if ours "$name"; then
    pid=$(recorded_pid "$name")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 75; i++)); do alive "$pid" || break; sleep 0.2; done
    if alive "$pid"; then
      log "$name ($pid) ignored TERM; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    STOPPED+=("$pid")
  fi
  rm -f "$RUN/$name.pid"
}

cmd_stop() {
  local t0 i pid STOPPED=()
  t0=$(now)
  if ours slurmctld && ours slurmd; then
    # Cancel all jobs so that no slurmstepd (per-job daemon) outlives the cluster.
    squeue -h -o %A | xargs -r scancel 2>/dev/null || true
    for ((i = 0; i < 75; i++)); do
      compgen -G "$STATE/spool/${HOST}_*" >/dev/null || break
      sleep 0.2
    done
  fi
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop_pid "${DAEMONS[i]}"; done
  rm -f "$RUN/munged.external"
  # The dead daemons are orphans: give PID 1 a moment to reap them, so `ps` is clean.
  for pid in "${STOPPED[@]}"; do
    for ((i = 0; i < 25; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  done
  if [[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" == "$ETC/slurm.conf" ]]; then
    rm -f /etc/slurm/slurm.conf
  fi
  log "stopped in $(since "$t0")s"
}

cmd_status() {
  local d
  for d in "${DAEMONS[@]}"; do
    if ours "$d"; then
      echo "$d: running (pid $(recorded_pid "$d"))"
    elif [[ $d == munged ]] && external_munge; then
      echo "munged: running (not started by this script)"
    else
      echo "$d: not running"
    fi
  done
  all_running || return 1
  sinfo
  squeue
  sacct -X -S now-1days -o JobID,JobName%20,Partition,Account,State,ExitCode
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  *) echo "usage: $0 start|stop|status|env  (state: \${SLURM_STATE_DIR:-/tmp/stylelab-slurm})" >&2; exit 2 ;;
esac
