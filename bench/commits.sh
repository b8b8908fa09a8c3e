#!/usr/bin/env bash
# PostgreSQL commits and CPU time per login and per refresh, with the idle rates
# taken off.
#
#   bench/commits.sh                           # release build, 200 logins, 400 refreshes
#   BENCH_PROFILE=debug bench/commits.sh       # the counts do not depend on the build
#   COMMITS_LOG=1 bench/commits.sh             # also: where each commit comes from
#
# CPU time, unlike a rate, barely depends on what else runs on the machine, so it is
# the figure to compare builds by on a busy machine. Per request it reports the
# CPU (utime + stime from /proc/PID/stat) of: the server; the PostgreSQL backends
# connected to the benchmark's database (its pool, followers and relay; polls by
# this script run in backends that are gone by the end reading, so they are not
# counted); PostgreSQL's background processes (WAL writer, checkpointer, ...:
# shared with every database of the cluster, so noisy when others use it); and
# nats-server (shared too). "outside the hash" is their sum minus the CPU of one
# Argon2id verification at the server's parameters, measured first with the
# argon2_rate example (release build; COMMITS_ARGON2_SECONDS=0 skips it). To see the
# bookkeeping beside a cheap hash: BENCH_SERVER_ENV="KEYLEDGER_ARGON2_MEMORY_KIB=1024
# KEYLEDGER_ARGON2_ITERATIONS=1" (accounts are registered at the same parameters).
#
# What it does, in order:
#   1. builds the server (like bench/run.sh), drops and creates $BENCH_DB, deletes
#      the NATS stream $BENCH_NATS_STREAM and starts the server as in production
#      (NATS relay on), rate limit off, its own database, stream and key files;
#   2. registers $COMMITS_USERS accounts, waits until the read models and the relay
#      have caught up, and measures the idle commit rate over $COMMITS_IDLE_SECONDS;
#   3. logs in $COMMITS_LOGINS times, waits for the followers to catch up, and
#      counts the commits of the whole phase minus the idle rate over its duration;
#   4. the same for $COMMITS_REFRESH_ROUNDS refreshes of each session of step 3.
#
# `pg_stat_database.xact_commit` counts every transaction of the database: the
# server's handlers, its followers (read models, relay, access and revocation
# views, chain signer), and the script's own queries (taken off too). A standalone
# SELECT is a transaction of its own in PostgreSQL, so polls and look-ups count.
# An idle backend reports its counters up to 10 s late, so every reading waits
# $COMMITS_SETTLE_SECONDS after the last activity of a phase.
#
# Knobs (environment):
#   COMMITS_USERS=50  COMMITS_LOGINS=200  COMMITS_REFRESH_ROUNDS=2
#   COMMITS_IDLE_SECONDS=30  COMMITS_SETTLE_SECONDS=12
#   COMMITS_ARGON2_SECONDS=5     length of the Argon2id CPU measurement (0 skips it)
#   BENCH_SEED_WORKERS=4         concurrent requests of bench/seed.py (a fixed concurrency)
#   COMMITS_LOG=0                1: `ALTER DATABASE ... SET log_statement = 'all'` and
#                                print the commits of each phase by source, read from
#                                $COMMITS_PG_LOG (needs read access; the statements of
#                                the script's own database only)
#   COMMITS_PG_LOG=/var/log/postgresql/postgresql-15-main.log
#   BENCH_PROFILE=release        or debug: which build of the server to run
#   BENCH_BUILD=1                0 uses the binary already built
#   BENCH_SERVER_BIN=            run this binary instead (implies BENCH_BUILD=0)
#   BENCH_BIND=127.0.0.1:18082   BENCH_DB=keyledger_bench_commits
#   BENCH_PG_URL=postgres://postgres@127.0.0.1:5432   NATS_URL=nats://127.0.0.1:4222
#   BENCH_NATS_STREAM=BENCH_COMMITS_EVENTS  BENCH_NATS_PREFIX=bench.commits.events
#   BENCH_SERVER_ENV=""          extra VAR=value settings for the server
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=$ROOT/bench
USERS=${COMMITS_USERS:-50}
LOGINS=${COMMITS_LOGINS:-200}
ROUNDS=${COMMITS_REFRESH_ROUNDS:-2}
IDLE_SECONDS=${COMMITS_IDLE_SECONDS:-30}
SETTLE=${COMMITS_SETTLE_SECONDS:-12}
ARGON2_SECONDS=${COMMITS_ARGON2_SECONDS:-5}
LOG_STATEMENTS=${COMMITS_LOG:-0}
PG_LOG=${COMMITS_PG_LOG:-/var/log/postgresql/postgresql-15-main.log}
PROFILE=${BENCH_PROFILE:-release}
BIND=${BENCH_BIND:-127.0.0.1:18082}
DB=${BENCH_DB:-keyledger_bench_commits}
PG_URL=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
NATS=${NATS_URL:-nats://127.0.0.1:4222}
STREAM=${BENCH_NATS_STREAM:-BENCH_COMMITS_EVENTS}
PREFIX=${BENCH_NATS_PREFIX:-bench.commits.events}
BASE=http://$BIND
export BENCH_PASSWORD="bench-Quartz-lantern-9-orbit-Mosaic"

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

for tool in curl python3 psql awk; do command -v "$tool" >/dev/null || die "$tool is not installed"; done
[[ $PROFILE == release || $PROFILE == debug ]] || die "BENCH_PROFILE is release or debug"
[[ $DB == *bench* && $DB =~ ^[a-z0-9_]+$ ]] || die "BENCH_DB=$DB: lower-case, digits, _, and containing 'bench'"
for n in "$USERS" "$LOGINS" "$ROUNDS" "$IDLE_SECONDS" "$SETTLE"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "the COMMITS_* counts are positive integers"
done
if [[ $LOG_STATEMENTS == 1 ]]; then
  [[ -r $PG_LOG ]] || die "COMMITS_LOG=1 but $PG_LOG cannot be read (set COMMITS_PG_LOG)"
fi
PSQL=(psql "$PG_URL/postgres" -X -q -v ON_ERROR_STOP=1 -At)
"${PSQL[@]}" -c 'SELECT 1' >/dev/null || die "PostgreSQL is not reachable"
nats_host=${NATS#*://}; nats_host=${nats_host%%/*}
(exec 3<>"/dev/tcp/${nats_host%:*}/${nats_host##*:}") 2>/dev/null || die "NATS is not reachable at $NATS"
if (exec 3<>"/dev/tcp/${BIND%:*}/${BIND##*:}") 2>/dev/null; then
  die "something already listens on $BIND; set BENCH_BIND"
fi

WORK=$(mktemp -d /tmp/keyledger-bench-commits.XXXXXX)
echo "bench: work directory $WORK" >&2
SERVER_BIN=${BENCH_SERVER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/keyledger}
if [[ -z ${BENCH_SERVER_BIN:-} && ${BENCH_BUILD:-1} == 1 ]]; then
  say "building ($PROFILE)"
  profile_flag=(); [[ $PROFILE == release ]] && profile_flag=(--release)
  (cd "$ROOT" && cargo build "${profile_flag[@]}" --bin keyledger) >&2
fi
[[ -x $SERVER_BIN ]] || die "$SERVER_BIN is not built"
HASH_MS=
ARGON2_BIN=$(dirname "$SERVER_BIN")/examples/argon2_rate
if [[ $ARGON2_SECONDS != 0 ]]; then
  if [[ -z ${BENCH_SERVER_BIN:-} && ${BENCH_BUILD:-1} == 1 && $PROFILE == release ]]; then
    (cd "$ROOT" && cargo build --release -p keyledger-commands --example argon2_rate) >&2
  fi
  if [[ -x $ARGON2_BIN ]]; then
    say "CPU time of one Argon2id verification (${ARGON2_SECONDS} s)"
    # At the server's parameters, including any KEYLEDGER_ARGON2_* in BENCH_SERVER_ENV.
    # shellcheck disable=SC2046 # one VAR=value per word
    HASH_MS=$(env $(tr ' ' '\n' <<<"${BENCH_SERVER_ENV:-}" | grep '^KEYLEDGER_ARGON2_') \
      "$ARGON2_BIN" "$ARGON2_SECONDS" | tee /dev/stderr | awk -F= '/^cpu_ms_per_verification=/ {print $2}')
  else
    echo "bench: $ARGON2_BIN is not built: no CPU figure outside the hash" >&2
  fi
fi

SERVER_PID=
cleanup() {
  local status=$?
  set +e
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    for _ in $(seq 1 40); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$SERVER_PID" 2>/dev/null && kill -KILL "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null
  fi
  "${PSQL[@]}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  python3 "$BENCH_DIR/nats_stream.py" "$NATS" "$STREAM" >/dev/null 2>&1
  rm -f "$WORK"/*.paserk "$WORK"/*.key "$WORK"/*.tokens
  echo "bench: logs kept in $WORK" >&2
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "fresh database $DB and NATS stream $STREAM"
"${PSQL[@]}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
if [[ $LOG_STATEMENTS == 1 ]]; then
  "${PSQL[@]}" -c "ALTER DATABASE $DB SET log_statement = 'all'" >/dev/null
fi
python3 "$BENCH_DIR/nats_stream.py" "$NATS" "$STREAM" >&2

say "starting the server on $BIND"
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^KEYLEDGER_' || true)
server_env=(
  KEYLEDGER_BIND="$BIND"
  DATABASE_URL="$PG_URL/$DB"
  NATS_URL="$NATS"
  KEYLEDGER_NATS_STREAM="$STREAM"
  KEYLEDGER_NATS_SUBJECT_PREFIX="$PREFIX"
  KEYLEDGER_SIGNING_KEY_FILE="$WORK/signing-key.paserk"
  KEYLEDGER_AUDIT_KEY_FILE="$WORK/audit-key.paserk"
  KEYLEDGER_EMAIL_INDEX_KEY_FILE="$WORK/email-index.key"
  KEYLEDGER_DATA_KEY_WRAPPING_KEY_FILE="$WORK/data-key-wrapping.key"
  # One address stands for many clients: no per-address or per-account budget.
  # The seed takes the new account from the answer (201), as with verification off.
  KEYLEDGER_EMAIL_VERIFICATION=off
  KEYLEDGER_RATE_LIMIT_PER_SECOND=0
  KEYLEDGER_RATE_LIMIT_TOKEN_CHECKS_PER_SECOND=0
  KEYLEDGER_RATE_LIMIT_MANAGEMENT_PER_SECOND=0
  KEYLEDGER_RATE_LIMIT_ACCOUNT_PER_MINUTE=0
  KEYLEDGER_HASH_CONCURRENCY_PER_CLIENT=64
)
# shellcheck disable=SC2206 # word splitting of VAR=value pairs is intended
[[ -n ${BENCH_SERVER_ENV:-} ]] && server_env+=($BENCH_SERVER_ENV)
printf 'server env: %s\n' "${server_env[*]}" >&2
KEYLEDGER_SIGNING_KEY_FILE="$WORK/signing-key.paserk" "$SERVER_BIN" keys generate >/dev/null
env "${server_env[@]}" "$SERVER_BIN" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for i in $(seq 1 240); do
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$WORK/server.log" >&2; die "the server exited"; }
  curl -fsS "$BASE/health" >"$WORK/health.json" 2>/dev/null && break
  ((i == 240)) && die "no healthy answer from $BASE/health in 120 s"
  sleep 0.5
done
grep -q '"nats":"up"' "$WORK/health.json" || echo "bench: WARNING: NATS is not up for the server" >&2

# ---- measuring helpers ------------------------------------------------------------
DB_PSQL=(psql "$PG_URL/$DB" -X -At)
commits() {
  "${DB_PSQL[@]}" -c "SELECT pg_stat_force_next_flush()" >/dev/null 2>&1 || true
  "${DB_PSQL[@]}" -c "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
}
now() { date +%s.%N; }
log_offset() { if [[ $LOG_STATEMENTS == 1 ]]; then stat -c %s "$PG_LOG"; else echo 0; fi; }
# Events not yet passed by the slowest checkpoint (read models, NATS relay).
behind() {
  "${DB_PSQL[@]}" -c "
    SELECT coalesce(max((SELECT count(*) FROM events e
                          WHERE (e.tx_id, e.global_position) > (c.tx_id::text::xid8, c.global_position))), 0)
      FROM projection_checkpoints c"
}
TICKS=$(getconf CLK_TCK)
# CPU ticks (utime + stime) of one process; nothing for one that is gone.
ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null || true; }
backend_pids() {
  "${DB_PSQL[@]}" -c "SELECT pid FROM pg_stat_activity
                       WHERE datname = current_database() AND pid <> pg_backend_pid()"
}
background_pids() { # PostgreSQL's own processes: no client address in their title
  ps -C postgres -o pid=,args= | awk '$0 !~ /\(|\[local\]/ {print $1}'
}
# "PID:TICKS ..." of every process measured, by group: server, PG backends of the
# database, PG background processes, nats-server.
cpu_snapshot() {
  local group pid out=()
  for group in server backends background nats; do
    local pids
    case $group in
      server) pids=$SERVER_PID ;;
      backends) pids=$(backend_pids) ;;
      background) pids=$(background_pids) ;;
      nats) pids=$(pgrep -x nats-server || true) ;;
    esac
    local entry=$group
    for pid in $pids; do entry+=" $pid:$(ticks "$pid")"; done
    out+=("$entry")
  done
  printf '%s\n' "${out[@]}"
}
# Milliseconds of CPU per group between two snapshots: a process of the second
# that was in the first counts its difference, a new one all of its time.
cpu_ms() { # BEFORE AFTER -> "server backends background nats"
  awk -v hz="$TICKS" '
    NR == FNR { for (i = 2; i <= NF; i++) { split($i, p, ":"); before[$1, p[1]] = p[2] } next }
    { ms = 0
      for (i = 2; i <= NF; i++) { split($i, p, ":"); if (p[2] == "") continue
        ms += (p[2] - ((($1, p[1]) in before) ? before[$1, p[1]] : 0)) * 1000 / hz }
      out = out (out == "" ? "" : " ") ms }
    END { print out }' <(echo "$1") <(echo "$2")
}
POLLS=0 # each poll is one commit of its own, taken off
wait_caught_up() {
  local start=$SECONDS
  while ((SECONDS - start < 120)); do
    POLLS=$((POLLS + 1))
    [[ $(behind) == 0 ]] && return
    sleep 0.5
  done
  die "the followers did not catch up in 120 s"
}

say "registering $USERS accounts"
python3 "$BENCH_DIR/seed.py" "$BASE" register "$USERS" "$WORK/users.txt"
wait_caught_up
sleep "$SETTLE"

say "idle commit and CPU rates (${IDLE_SECONDS} s)"
c0=$(commits); t0=$(now); u0=$(cpu_snapshot)
sleep "$IDLE_SECONDS"
c1=$(commits); t1=$(now); u1=$(cpu_snapshot)
IDLE_RATE=$(awk -v c=$((c1 - c0)) -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", c / (b - a)}')
# CPU ms per second of each group while idle (server backends background nats).
IDLE_CPU=$(cpu_ms "$u0" "$u1" | awk -v a="$t0" -v b="$t1" '{for (i = 1; i <= NF; i++) printf "%s%.3f", (i > 1 ? " " : ""), $i / (b - a); print ""}')
echo "idle: $((c1 - c0)) commits in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s = $IDLE_RATE/s; CPU ms/s (server, PG backends, PG background, NATS): $IDLE_CPU" >&2

# phase NAME REQUESTS COMMAND...: the commits of COMMAND and of the followers'
# catching up with it, per request, the idle rate and the script's polls taken off.
RESULTS=()
phase() {
  local name=$1 requests=$2
  shift 2
  say "$name: $requests requests"
  local c0 t0 c1 t1 offset0 offset1 net load
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  POLLS=0
  offset0=$(log_offset)
  local u0 u1
  c0=$(commits); t0=$(now); u0=$(cpu_snapshot)
  "$@"
  wait_caught_up
  sleep "$SETTLE"
  c1=$(commits); t1=$(now); u1=$(cpu_snapshot)
  offset1=$(log_offset)
  net=$(awk -v c=$((c1 - c0)) -v r="$IDLE_RATE" -v a="$t0" -v b="$t1" -v p="$POLLS" \
    'BEGIN {printf "%.0f", c - r * (b - a) - p}')
  local per
  per=$(awk -v n="$net" -v r="$requests" 'BEGIN {printf "%.2f", n / r}')
  echo "$name: $((c1 - c0)) commits in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s, $POLLS polls, idle rate $IDLE_RATE/s: $net net = $per per request (load $load)" >&2
  # CPU ms per request of each group, its idle rate over the phase taken off.
  local cpu
  cpu=$(awk -v used="$(cpu_ms "$u0" "$u1")" -v idle="$IDLE_CPU" -v secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
    -v r="$requests" -v hash="$([[ $name == login ]] && echo "${HASH_MS:-}")" 'BEGIN {
      n = split(used, u, " "); split(idle, d, " "); total = 0
      for (i = 1; i <= n; i++) { v = (u[i] - d[i] * secs) / r; total += v; printf "%.2f | ", v }
      printf "%.2f | %s", total, (hash == "" ? "–" : sprintf("**%.2f**", total - hash)) }')
  echo "$name: CPU ms per request (server | PG backends | PG background | NATS | total | outside the hash): $cpu" >&2
  RESULTS+=("| $name | $requests | $((c1 - c0)) | $net | **$per** | $cpu | $load |")
  if [[ $LOG_STATEMENTS == 1 ]]; then
    echo "$name, by source (from the PostgreSQL log; includes the idle commits and the script's polls):" >&2
    python3 "$BENCH_DIR/commits_log.py" "$PG_LOG" "$offset0" "$offset1" "$DB" "$requests" |
      tee "$WORK/$name.sources.txt" >&2
  fi
}

phase login "$LOGINS" python3 "$BENCH_DIR/seed.py" "$BASE" login "$LOGINS" "$WORK/users.txt" "$WORK/sessions.tokens"
phase refresh $((LOGINS * ROUNDS)) python3 "$BENCH_DIR/seed.py" "$BASE" refresh "$ROUNDS" "$WORK/sessions.tokens"

{
  echo "### PostgreSQL commits per request ($(date -u '+%Y-%m-%d %H:%M UTC'), $(basename "$(dirname "$SERVER_BIN")") build)"
  echo
  echo "idle rates (taken off): $IDLE_RATE commits/s; CPU ms/s of the server, PG backends, PG background, NATS: $IDLE_CPU"
  [[ -n $HASH_MS ]] && echo "one Argon2id verification: $HASH_MS ms of CPU (taken off a login for \"outside the hash\")"
  echo
  echo "| phase | requests | commits | net of idle and polls | commits per request | CPU ms/req: server | PG backends | PG background | NATS | total | outside the hash | load average |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  printf '%s\n' "${RESULTS[@]}"
} | tee "$WORK/results.md"
