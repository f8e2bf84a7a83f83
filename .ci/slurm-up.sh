#!/usr/bin/env bash
# Bring up a single-node Slurm cluster on this machine (Debian's slurmctld/slurmd + munge),
# without systemd (the daemons are started directly), for tests that submit real jobs.
#
#   .ci/slurm-up.sh          install if missing, write /etc/slurm/slurm.conf, start munged,
#                            slurmctld and slurmd, wait until the node is idle. Idempotent:
#                            exits 0 at once when Slurm is already up with the same config.
#   .ci/slurm-up.sh --down   stop slurmd, slurmctld and munged (those started by this script).
#
# On failure it prints one line starting "slurm-up: FAILED:" and exits 1.
# Needs root. No slurmdbd: there is no accounting, so `sacct` does not work; job states come
# from squeue, and `scontrol show job ID` keeps finished jobs for MinJobAge (600 s) seconds.
set -uo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
APT_LOG=/tmp/slurm-up-apt.log
WAIT_S=${SLURM_UP_WAIT_S:-60}

fail() { echo "slurm-up: FAILED: $*" >&2; exit 1; }
log() { [ -n "${SLURM_UP_QUIET:-}" ] || echo "slurm-up: $*"; }

pid_alive() { # pidfile -> 0 when the process named in it runs and is the daemon it names
  local p
  [ -s "$1" ] || return 1
  p=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
  grep -qx "$(basename "$1" .pid)" "/proc/$p/comm" 2>/dev/null  # not a reused pid
}

stop_pidfile() { # pidfile name: TERM, wait up to 10 s, then KILL
  local p i
  pid_alive "$1" || { rm -f "$1"; return 0; }
  p=$(cat "$1")
  kill -TERM "$p" 2>/dev/null
  for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
  rm -f "$1"
  log "stopped $2 (pid $p)"
}

down() {
  stop_pidfile "$SLURMD_PID" slurmd
  stop_pidfile "$CTLD_PID" slurmctld
  stop_pidfile "$MUNGE_PID" munged
}

if [ "${1:-}" = "--down" ]; then
  down
  exit 0
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--down]" >&2
  exit 2
fi

[ "$(id -u)" = 0 ] || fail "must run as root (installs packages and starts daemons)"

NODE=$(hostname -s) || fail "hostname -s failed"
[ -n "$NODE" ] || fail "empty hostname"

# ---------------------------------------------------------------- install (once)
need_install=0
for b in munged slurmctld slurmd sinfo; do
  command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || need_install=1
done
if [ "$need_install" = 1 ]; then
  command -v apt-get >/dev/null 2>&1 || fail "slurm is not installed and there is no apt-get"
  log "installing slurmctld slurmd slurm-client munge (log: $APT_LOG)"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
         --no-install-recommends slurmctld slurmd slurm-client munge; } >"$APT_LOG" 2>&1; then
    fail "apt-get install of slurm/munge failed: $(tail -n 1 "$APT_LOG")"
  fi
fi
export PATH=$PATH:/usr/sbin:/sbin

# ---------------------------------------------------------------- slurm.conf
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS (tests set 1)
MEM_MB=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
[ -n "$MEM_MB" ] && [ "$MEM_MB" -gt 512 ] || fail "cannot read MemTotal from /proc/meminfo"
REAL_MEM=$(( MEM_MB * 90 / 100 ))     # a bit under the real one, else slurmd drains the node
DEF_MEM=$(( REAL_MEM / CPUS ))        # a job without --mem gets this per CPU (not all the node)

NEW_CONF=$(cat <<EOF
# Written by .ci/slurm-up.sh: single-node test cluster, no accounting, no cgroups.
ClusterName=ci
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
# cred_expire also delays a requeued job's restart (default 120 s): keep requeue tests short
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5,sched_interval=5
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
KillWait=5
JobRequeue=1
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
DefMemPerCPU=$DEF_MEM
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)

node_state() { timeout 5 sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }

conf_same=0
[ -f "$CONF" ] && [ "$(cat "$CONF")" = "$NEW_CONF" ] && conf_same=1

# Already up with this config? Then nothing to do.
if [ "$conf_same" = 1 ] && pid_alive "$MUNGE_PID" && pid_alive "$CTLD_PID" && pid_alive "$SLURMD_PID"; then
  case "$(node_state)" in
    idle|mixed|allocated|completing)
      log "already up (node $NODE $(node_state))"; exit 0 ;;
  esac
fi

if [ "$conf_same" = 0 ]; then
  # A changed config (or a first one) needs fresh daemons: stop ours before rewriting.
  if pid_alive "$CTLD_PID" || pid_alive "$SLURMD_PID"; then
    log "config changed: restarting slurmctld and slurmd"
    stop_pidfile "$SLURMD_PID" slurmd
    stop_pidfile "$CTLD_PID" slurmctld
  fi
  mkdir -p "$CONF_DIR" || fail "cannot create $CONF_DIR"
  printf '%s\n' "$NEW_CONF" >"$CONF" || fail "cannot write $CONF"
  chmod 644 "$CONF"
fi
mkdir -p "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR" || fail "cannot create slurm directories"

# ---------------------------------------------------------------- munge
if ! pid_alive "$MUNGE_PID"; then
  id munge >/dev/null 2>&1 || fail "user munge missing (munge package broken?)"
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null 2>&1; then
      mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 \
        || fail "mungekey could not create /etc/munge/munge.key"
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none \
        || fail "cannot create /etc/munge/munge.key"
    fi
  fi
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
  chmod 0700 /etc/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  chmod 0400 /etc/munge/munge.key
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock "$MUNGE_PID"
  runuser -u munge -- munged --pid-file="$MUNGE_PID" >/dev/null 2>&1 \
    || fail "munged did not start (see /var/log/munge/munged.log: $(tail -n 1 /var/log/munge/munged.log 2>/dev/null))"
fi
for i in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || fail "munge does not work (munge -n | unmunge fails)"

# ---------------------------------------------------------------- slurmctld, slurmd
last_log() { tail -n 1 "$LOG_DIR/$1.log" 2>/dev/null; }
if ! pid_alive "$CTLD_PID"; then
  rm -f "$CTLD_PID"
  slurmctld >>"$LOG_DIR/slurmctld.start.log" 2>&1 \
    || fail "slurmctld did not start: $(last_log slurmctld)"
fi
started=$(date +%s)
until timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; do
  now=$(date +%s)
  if [ $(( now - started )) -ge 2 ] && ! pid_alive "$CTLD_PID"; then
    fail "slurmctld exited (see $LOG_DIR/slurmctld.log: $(last_log slurmctld))"
  fi
  [ $(( now - started )) -lt 30 ] \
    || fail "slurmctld is not answering scontrol ping after 30s (see $LOG_DIR/slurmctld.log: $(last_log slurmctld))"
  sleep 0.3
done

if ! pid_alive "$SLURMD_PID"; then
  rm -f "$SLURMD_PID"
  slurmd >>"$LOG_DIR/slurmd.start.log" 2>&1 \
    || fail "slurmd did not start: $(last_log slurmd)"
fi
started=$(date +%s)

# ---------------------------------------------------------------- wait for the node
deadline=$(( $(date +%s) + WAIT_S ))
resumed=0
while :; do
  st=$(node_state)
  case "$st" in
    idle|mixed|allocated|completing) break ;;
    down*|drain*|drained*|fail*)
      if [ "$resumed" = 0 ]; then
        log "node $NODE is $st: resuming it"
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        resumed=1
      fi ;;
  esac
  if [ $(( $(date +%s) - started )) -ge 2 ] && ! pid_alive "$SLURMD_PID"; then
    fail "slurmd exited (see $LOG_DIR/slurmd.log: $(last_log slurmd))"
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    reason=$(sinfo -h -N -n "$NODE" -o '%E' 2>/dev/null | head -n 1)
    fail "node $NODE not idle after ${WAIT_S}s (state '${st:-none}'${reason:+, reason: $reason}; see $LOG_DIR/slurmd.log: $(last_log slurmd))"
  fi
  sleep 0.5
done
log "up: node $NODE $st, partition debug ($CPUS CPUs, ${REAL_MEM} MB)"
exit 0
