#!/usr/bin/env bash
# PostgreSQL commits per login and per refresh, with the idle rate taken off.
#
#   bench/commits.sh                           # release build, 200 logins, 400 refreshes
#   BENCH_PROFILE=debug bench/commits.sh       # the counts do not depend on the build
#   COMMITS_LOG=1 bench/commits.sh             # also: where each commit comes from
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

say "idle commit rate (${IDLE_SECONDS} s)"
c0=$(commits); t0=$(now)
sleep "$IDLE_SECONDS"
c1=$(commits); t1=$(now)
IDLE_RATE=$(awk -v c=$((c1 - c0)) -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", c / (b - a)}')
echo "idle: $((c1 - c0)) commits in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s = $IDLE_RATE/s" >&2

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
  c0=$(commits); t0=$(now)
  "$@"
  wait_caught_up
  sleep "$SETTLE"
  c1=$(commits); t1=$(now)
  offset1=$(log_offset)
  net=$(awk -v c=$((c1 - c0)) -v r="$IDLE_RATE" -v a="$t0" -v b="$t1" -v p="$POLLS" \
    'BEGIN {printf "%.0f", c - r * (b - a) - p}')
  local per
  per=$(awk -v n="$net" -v r="$requests" 'BEGIN {printf "%.2f", n / r}')
  echo "$name: $((c1 - c0)) commits in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s, $POLLS polls, idle rate $IDLE_RATE/s: $net net = $per per request (load $load)" >&2
  RESULTS+=("| $name | $requests | $((c1 - c0)) | $net | **$per** | $load |")
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
  echo "idle rate: $IDLE_RATE commits/s (taken off)"
  echo
  echo "| phase | requests | commits | net of idle and polls | per request | load average |"
  echo "|---|---:|---:|---:|---:|---|"
  printf '%s\n' "${RESULTS[@]}"
} | tee "$WORK/results.md"
