#!/usr/bin/env bash
# Single-node SLURM cluster on localhost (Debian packages, no systemd, as root):
# munged + MariaDB + slurmdbd + slurmctld + slurmd, with real accounting (sacct).
#
#   bash scripts/slurm/cluster.sh start    # install if missing, start, wait until ready
#   bash scripts/slurm/cluster.sh stop     # cancel jobs, stop what `start` started (recorded PIDs)
#   bash scripts/slurm/cluster.sh status   # sinfo / squeue / sacct
#   bash scripts/slurm/cluster.sh env      # prints: export SLURM_CONF=...
#
# State (configs, PIDs, logs, MariaDB datadir, slurmctld state) lives in
# ${SLURM_STATE_DIR:-/tmp/stylelab-slurm}; /etc/slurm/slurm.conf is symlinked to it
# (unless a real file is there) so plain `sbatch`/`sacct` work without SLURM_CONF.
set -euo pipefail

STATE=${SLURM_STATE_DIR:-/tmp/stylelab-slurm}
CLUSTER=${SLURM_CLUSTER_NAME:-stylelab}
DB_PORT=${SLURM_DB_PORT:-13306}
ETC=$STATE/etc
RUN=$STATE/run
LOG=$STATE/log
DBDIR=$STATE/mysql
HOST=$(hostname -s)
export SLURM_CONF=$ETC/slurm.conf
PKGS=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd) # start order; stop is the reverse

log() { printf '[slurm-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.2 s until it succeeds.
wait_for() {
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "timed out after ${secs}s waiting for $what (logs: $LOG)"
}

# PID bookkeeping: $RUN/<name>.pid holds the PID of every daemon this script started.
record() { [[ $2 =~ ^[0-9]+$ ]] || die "$1 wrote no PID (logs: $LOG)"; echo "$2" >"$RUN/$1.pid"; }
recorded_pid() { cat "$RUN/$1.pid" 2>/dev/null; }
# alive PID: running and not a zombie (PID 1 here may reap orphans late).
alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $st != Z* ]]; }
# ours NAME: the recorded PID is alive and still is that program (guards against PID reuse).
ours() {
  local pid
  pid=$(recorded_pid "$1") || return 1
  [[ -n $pid && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]] && alive "$pid"
}
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
# A munged that was already running (not ours) is used, never stopped.
external_munge() { [[ -e $RUN/munged.external ]] && munge_ok; }
all_running() {
  local d
  for d in "${DAEMONS[@]}"; do
    ours "$d" || { [[ $d == munged ]] && external_munge; } || return 1
  done
}
# pidfile_pid FILE: PID read from a daemon's own pid file, once it exists.
pidfile_pid() {
  wait_for 30 "$1" test -s "$1"
  tr -dc '0-9' <"$1"
}

install_packages() {
  local p missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  local t0
  t0=$(now)
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  log "installed in $(since "$t0")s"
}

write_configs() {
  mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/ctld" "$STATE/spool"
  chmod 755 "$STATE" # mysql must reach its datadir
  [[ -s $ETC/dbpass ]] || (umask 077 && od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$ETC/dbpass")
  local cpus mem_mb real
  cpus=$(nproc)
  mem_mb=$(($(awk '/^MemTotal:/ { print $2 }' /proc/meminfo) / 1024))
  real=$((mem_mb * 95 / 100)) # a bit under the total, else slurmd drains the node
  cat >"$ETC/slurm.conf" <<EOF
# Written by scripts/slurm/cluster.sh; edits are overwritten on start.
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
# No cgroups: plain /proc process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((real / cpus))
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=10
SlurmdTimeout=10
MessageTimeout=10
MinJobAge=300
KillWait=5
InactiveLimit=0
JobRequeue=1
EnforcePartLimits=ALL
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
  chown root:root "$ETC/slurmdbd.conf" # owned by SlurmUser, mode 600
  chmod 600 "$ETC/slurmdbd.conf"
  local link=/etc/slurm/slurm.conf
  mkdir -p /etc/slurm
  if [[ ! -e $link || -L $link ]]; then ln -sfn "$ETC/slurm.conf" "$link"; fi
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
    mariadb-install-db --no-defaults --user=mysql --datadir="$DBDIR" \
      --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1
  fi
  chown -R mysql:mysql "$DBDIR"
  rm -f "$DBDIR/mariadbd.pid"
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DBDIR" \
    --socket="$DBDIR/mysqld.sock" --pid-file="$DBDIR/mariadbd.pid" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --innodb-buffer-pool-size=512M --innodb-lock-wait-timeout=900 --log-error="$LOG/mariadb.log" \
    </dev/null >>"$LOG/mariadb.log" 2>&1 &
  record mariadbd "$(pidfile_pid "$DBDIR/mariadbd.pid")"
  wait_for 30 MariaDB mysql_root -e 'SELECT 1'
  local pass h sql="CREATE DATABASE IF NOT EXISTS slurm_acct_db;"
  pass=$(cat "$ETC/dbpass")
  for h in localhost 127.0.0.1; do
    sql+="CREATE USER IF NOT EXISTS 'slurm'@'$h'; ALTER USER 'slurm'@'$h' IDENTIFIED BY '$pass';"
    sql+="GRANT ALL ON slurm_acct_db.* TO 'slurm'@'$h';"
  done
  mysql_root -e "$sql"
}

# start_slurm NAME READY-CMD...: the slurm daemons fork and write <name>.own.pid themselves.
start_slurm() {
  local name=$1
  shift
  rm -f "$RUN/$name.own.pid"
  "/usr/sbin/$name" </dev/null >>"$LOG/$name.out" 2>&1 || die "$name failed (see $LOG/$name.log)"
  record "$name" "$(pidfile_pid "$RUN/$name.own.pid")"
  wait_for 60 "$name" "$@"
}

register_cluster() {
  sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" ||
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  # `add cluster` also creates account root with user root; jobs run by root land there.
  sacctmgr -n -P list assoc cluster="$CLUSTER" user=root format=user | grep -q root ||
    sacctmgr -i add user root account=root cluster="$CLUSTER" >/dev/null
}

node_idle() { [[ "$(sinfo -h -n "$HOST" -o %t)" == idle ]]; }

cmd_start() {
  [[ $EUID -eq 0 ]] || die "must run as root"
  if all_running; then
    log "already running (state: $STATE)"
    return 0
  fi
  cmd_stop >/dev/null 2>&1 || true # clear a half-started cluster
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
  log "started in $(since "$t0")s; partition 'debug', $(nproc) CPUs, state: $STATE"
}

# stop_pid NAME: TERM the recorded daemon, wait up to 15 s, then KILL.
stop_pid() {
  local name=$1 pid i
  ours "$name" || { rm -f "$RUN/$name.pid"; return 0; }
  pid=$(recorded_pid "$name")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 75; i++)); do
    alive "$pid" || break
    sleep 0.2
  done
  if alive "$pid"; then
    log "$name ($pid) ignored TERM; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN/$name.pid"
  STOPPED+=("$pid")
}

cmd_stop() {
  local t0 i pid STOPPED=()
  t0=$(now)
  if ours slurmctld && ours slurmd; then
    # Cancel all jobs so that no slurmstepd (job step daemon) outlives the cluster.
    squeue -h -o %A | xargs -r scancel 2>/dev/null || true
    for ((i = 0; i < 75; i++)); do
      compgen -G "$STATE/spool/${HOST}_*" >/dev/null || break
      sleep 0.2
    done
  fi
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop_pid "${DAEMONS[i]}"; done
  rm -f "$RUN/munged.external"
  # Dead daemons are orphans; give PID 1 a moment to reap them so `ps` is clean.
  for pid in "${STOPPED[@]}"; do
    for ((i = 0; i < 25; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  done
  if [[ -L /etc/slurm/slurm.conf && "$(readlink /etc/slurm/slurm.conf)" == "$ETC/slurm.conf" ]]; then
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
  sacct -X -S now-1days -o JobID,JobName,Partition,Account,State,ExitCode
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  *)
    echo "usage: $0 start|stop|status|env   (state: \$SLURM_STATE_DIR, default /tmp/stylelab-slurm)" >&2
    exit 2
    ;;
esac
