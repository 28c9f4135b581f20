#!/usr/bin/env bash
# Starts, stops or reports on a single-node Slurm cluster on localhost (tests, CI, local trials).
#
#   bash dev/slurm_local.sh start    # munged + slurmctld + slurmd; waits until the node is idle
#   bash dev/slurm_local.sh stop     # stops the three daemons (state is kept for the next start)
#   bash dev/slurm_local.sh stop slurmd slurmctld   # stops only the daemons named
#   bash dev/slurm_local.sh status   # daemons and node state; exit code 0 only if all are up
#   bash dev/slurm_local.sh env      # prints `export SLURM_CONF=...` for the Slurm client tools
#
# Slurm client tools (sbatch, squeue, ...) find this cluster through SLURM_CONF, e.g.
#   eval "$(bash dev/slurm_local.sh env)"
#
# Environment:
#   PAPLOSS_SLURM_DIR   folder for the config, munge key/socket, state and logs
#                       (default: .cache/slurm in the repository, which git ignores)
#   PAPLOSS_SLURM_PORT  slurmctld port (default 6817); slurmd uses the next port
#
# Idempotent: `start` leaves running daemons alone and only starts what is missing, and says which
# it started on a line `[slurm_local] started: munged slurmctld slurmd` (or `started: none`), so
# that a caller can stop exactly those again (the test fixture does); concurrent calls are
# serialised with a lock file. Needs root (daemons run as root on 127.0.0.1 only) and
# Debian's slurmctld, slurmd, slurm-client and munge packages:
#   bash tools/setup_env.sh --with-slurm
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${PAPLOSS_SLURM_DIR:-$ROOT/.cache/slurm}
PORT=${PAPLOSS_SLURM_PORT:-6817}
START_TIMEOUT_S=${PAPLOSS_SLURM_START_TIMEOUT:-60}

CONF_DIR=$DIR/etc
CONF=$CONF_DIR/slurm.conf
MUNGE_DIR=$DIR/munge
MUNGE_KEY=$MUNGE_DIR/munge.key
MUNGE_SOCKET=$MUNGE_DIR/munge.socket.2
MUNGE_PID=$MUNGE_DIR/munged.pid
LOG_DIR=$DIR/log
RUN_DIR=$DIR/run
STATE_DIR=$DIR/state
CTLD_PID=$RUN_DIR/slurmctld.pid
SLURMD_PID=$RUN_DIR/slurmd.pid
NODE=$(hostname -s)
PARTITION=debug
DAEMONS=(slurmd slurmctld munged)  # stop order
STARTED=()  # daemons this call started

say() { echo "[slurm_local] $*"; }
die() { echo "[slurm_local] error: $*" >&2; exit 1; }

usage() { sed -n '2,20p' "$0"; }

show_log() {
  # Prints the end of a daemon log to stderr, to explain a failed start.
  local log=$1
  if [ -s "$log" ]; then
    echo "----- last lines of $log -----" >&2
    tail -n 25 "$log" >&2
    echo "-----" >&2
  else
    echo "(no log written at $log)" >&2
  fi
}

require_slurm() {
  local missing=()
  for cmd in slurmctld slurmd sinfo scontrol sbatch munged munge; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    die "Slurm is not installed (missing: ${missing[*]}): install Slurm with" \
      "\`bash tools/setup_env.sh --with-slurm\`"
  fi
}

# pid_alive PIDFILE NAME: true if PIDFILE names a live process whose command is NAME.
pid_alive() {
  local pidfile=$1 name=$2 pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile" 2>/dev/null || true)
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$name" ]
}

# node_facts: prints "CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=..
# RealMemory=.." for this machine.
node_facts() {
  local line cpus mem
  line=$(slurmd -C 2>/dev/null | head -n1 || true)
  if [[ "$line" == NodeName=* ]] && [[ "$line" == *RealMemory=* ]]; then
    echo "$line" | tr ' ' '\n' \
      | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=' \
      | tr '\n' ' '
    return
  fi
  cpus=$(nproc)
  mem=$(free -m | awk '/^Mem:/ {print $2}')
  echo "CPUs=$cpus RealMemory=$mem"
}

write_conf() {
  local facts cpus mem def_mem
  facts=$(node_facts)
  cpus=$(echo "$facts" | tr ' ' '\n' | sed -n 's/^CPUs=//p')
  mem=$(echo "$facts" | tr ' ' '\n' | sed -n 's/^RealMemory=//p')
  [ -n "$cpus" ] && [ -n "$mem" ] || die "could not read this machine's CPUs/memory (slurmd -C)"
  # Without a default, a job that asks for no memory would be given the whole node.
  def_mem=$((mem / cpus))
  mkdir -p "$CONF_DIR"
  cat > "$CONF.tmp" <<EOF
# Single-node cluster on localhost, written by dev/slurm_local.sh (do not edit: rewritten on
# start while the daemons are stopped).
ClusterName=paploss
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=${PAPLOSS_SLURM_CRED_EXPIRE:-10}
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
DefMemPerCPU=$def_mem
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
InactiveLimit=0
KillWait=5
MinJobAge=600
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE $facts State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

munge_works() {
  munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1
}

start_munge() {
  if pid_alive "$MUNGE_PID" munged && munge_works; then
    return
  fi
  if [ ! -s "$MUNGE_KEY" ]; then
    mungekey --create --keyfile="$MUNGE_KEY" 2>/dev/null \
      || dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
  fi
  chmod 0600 "$MUNGE_KEY"
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  STARTED+=(munged)
  if ! munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" --pid-file="$MUNGE_PID" \
      --log-file="$LOG_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
      >>"$LOG_DIR/munged.log" 2>&1 9>&-; then
    # munged refuses some directory layouts (e.g. group-writable parents) unless forced.
    munged --force --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" --pid-file="$MUNGE_PID" \
      --log-file="$LOG_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
      >>"$LOG_DIR/munged.log" 2>&1 9>&- || { show_log "$LOG_DIR/munged.log"; die "munged failed to start"; }
  fi
  for _ in $(seq 50); do
    munge_works && return
    sleep 0.2
  done
  show_log "$LOG_DIR/munged.log"
  die "munged started but does not answer on $MUNGE_SOCKET"
}

# port_free PORT: true if nothing listens on 127.0.0.1:PORT.
port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

ctld_answers() { scontrol ping 2>/dev/null | grep -q "is UP"; }

start_slurmctld() {
  if ! pid_alive "$CTLD_PID" slurmctld; then
    port_free "$PORT" || die "port $PORT is taken by another program (a slurmctld not started" \
      "from $DIR?): stop it, or set PAPLOSS_SLURM_PORT"
    rm -f "$CTLD_PID"
    STARTED+=(slurmctld)
    slurmctld -f "$CONF" >>"$LOG_DIR/slurmctld.start.log" 2>&1 9>&- || {
      show_log "$LOG_DIR/slurmctld.start.log"; show_log "$LOG_DIR/slurmctld.log"
      die "slurmctld failed to start (config: $CONF)"
    }
  fi
  for i in $(seq $((START_TIMEOUT_S * 2))); do
    if pid_alive "$CTLD_PID" slurmctld; then
      ctld_answers && return
    elif [ "$i" -gt 10 ]; then
      show_log "$LOG_DIR/slurmctld.log"
      die "slurmctld exited during start-up (log: $LOG_DIR/slurmctld.log)"
    fi
    sleep 0.5
  done
  show_log "$LOG_DIR/slurmctld.log"
  die "slurmctld does not answer on 127.0.0.1:$PORT (log: $LOG_DIR/slurmctld.log)"
}

start_slurmd() {
  if pid_alive "$SLURMD_PID" slurmd; then
    return
  fi
  port_free $((PORT + 1)) || die "port $((PORT + 1)) is taken by another program (a slurmd not" \
    "started from $DIR?): stop it, or set PAPLOSS_SLURM_PORT"
  rm -f "$SLURMD_PID"
  STARTED+=(slurmd)
  slurmd -f "$CONF" -N "$NODE" >>"$LOG_DIR/slurmd.start.log" 2>&1 9>&- || {
    show_log "$LOG_DIR/slurmd.start.log"; show_log "$LOG_DIR/slurmd.log"
    die "slurmd failed to start (config: $CONF)"
  }
}

node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1; }

wait_node_ready() {
  local state="" resumed=0
  for _ in $(seq $((START_TIMEOUT_S * 2))); do
    state=$(node_state)
    case "$state" in
      idle|mixed|allocated|completing) return ;;
      *drain*|down*|fail*)
        # Left over from an earlier run (e.g. the machine was restarted under running jobs).
        if [ "$resumed" = 0 ]; then
          scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
          resumed=1
        fi ;;
    esac
    if ! pid_alive "$SLURMD_PID" slurmd; then
      show_log "$LOG_DIR/slurmd.log"
      die "slurmd exited during start-up (log: $LOG_DIR/slurmd.log)"
    fi
    sleep 0.5
  done
  scontrol show node "$NODE" >&2 || true
  show_log "$LOG_DIR/slurmd.log"
  die "node $NODE is '$state', not idle, after ${START_TIMEOUT_S}s" \
    "(logs: $LOG_DIR/slurmd.log, $LOG_DIR/slurmctld.log)"
}

cmd_start() {
  require_slurm
  [ "$(id -u)" = 0 ] || die "starting the local cluster needs root (the daemons run as root)"
  mkdir -p "$DIR" "$CONF_DIR" "$LOG_DIR" "$RUN_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
  # munged wants its socket folder searchable by all and its key readable by root only.
  mkdir -p "$MUNGE_DIR"
  chmod 0755 "$MUNGE_DIR"
  [ "${#MUNGE_SOCKET}" -lt 100 ] || die "munge socket path is too long for a Unix socket:" \
    "$MUNGE_SOCKET (set PAPLOSS_SLURM_DIR to a shorter folder)"

  exec 9>"$DIR/.lock"
  flock -w 120 9 || die "another start/stop holds $DIR/.lock"

  export SLURM_CONF=$CONF
  if ! pid_alive "$CTLD_PID" slurmctld && ! pid_alive "$SLURMD_PID" slurmd; then
    write_conf
  elif [ ! -f "$CONF" ]; then
    die "Slurm daemons run from $DIR but $CONF is missing: run \`$0 stop\` first"
  fi
  # Said also when the start fails half-way: the caller may stop what did start.
  trap 'say "started: ${STARTED[*]:-none}"' EXIT
  start_munge
  start_slurmctld
  start_slurmd
  wait_node_ready
  local summary
  summary=$(node_facts | tr ' ' '\n' | grep -E '^(CPUs|RealMemory)=' | paste -sd ' ')
  say "cluster up: node $NODE ($summary), partition '$PARTITION', logs in $LOG_DIR"
  say "use it with: export SLURM_CONF=$CONF"
}

stop_daemon() {
  local pidfile=$1 name=$2 pid
  pid_alive "$pidfile" "$name" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 40); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; say "stopped $name ($pid)"; return 0; }
    sleep 0.25
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  say "killed $name ($pid) after 10 s"
}

pidfile_of() {
  case "$1" in
    munged) echo "$MUNGE_PID" ;;
    slurmctld) echo "$CTLD_PID" ;;
    slurmd) echo "$SLURMD_PID" ;;
    *) die "unknown daemon '$1' (expected: ${DAEMONS[*]})" ;;
  esac
}

cmd_stop() {
  local wanted=("$@") name
  [ "${#wanted[@]}" -gt 0 ] || wanted=("${DAEMONS[@]}")
  for name in "${wanted[@]}"; do pidfile_of "$name" >/dev/null; done
  [ -d "$DIR" ] || { say "nothing to stop ($DIR does not exist)"; return 0; }
  exec 9>"$DIR/.lock"
  flock -w 120 9 || die "another start/stop holds $DIR/.lock"
  for name in "${DAEMONS[@]}"; do
    [[ " ${wanted[*]} " == *" $name "* ]] || continue
    stop_daemon "$(pidfile_of "$name")" "$name"
    if [ "$name" = munged ]; then rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"; fi
  done
}

cmd_status() {
  local ok=0
  export SLURM_CONF=$CONF
  for spec in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID" "slurmd:$SLURMD_PID"; do
    local name=${spec%%:*} pidfile=${spec#*:}
    if pid_alive "$pidfile" "$name"; then
      echo "$name: running (pid $(cat "$pidfile"))"
    else
      echo "$name: stopped"
      ok=3
    fi
  done
  if [ "$ok" = 0 ] && ctld_answers; then
    echo "node $NODE: $(node_state)"
    sinfo 2>/dev/null || true
  else
    ok=3
  fi
  echo "config: $CONF"
  echo "logs: $LOG_DIR"
  return "$ok"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) shift; cmd_stop "$@" ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
