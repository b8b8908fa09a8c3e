#!/usr/bin/env bash
# Mail-route timing: do forgot-password and registration (verification on) take
# longer for an address with an account than for one without? Starts a server of its
# own, runs bench/email_timing.py against it (which prints both pairs of latency
# distributions side by side) and stops it again.
#
#   bench/email_timing.sh                            # PostgreSQL, release build
#   BENCH_STORAGE=sqlite bench/email_timing.sh       # the embedded store
#   BENCH_BASE=http://host:port bench/email_timing.sh     # a server already running
#                                                    # (verification on, rate limits
#                                                    # off); nothing started
#
# Knobs (environment; the sample knobs are read by email_timing.py):
#   SAMPLES=400 WARMUP=30        measured and warm-up requests of each kind
#   BENCH_STORAGE=postgres       or sqlite (a temporary data directory)
#   BENCH_PROFILE=release        or debug: which build of the server to run
#   BENCH_BUILD=1                0 uses the binary already built
#   BENCH_SERVER_BIN=            run this binary instead (e.g. a copy of an older build,
#                                for a before/after comparison); implies BENCH_BUILD=0
#   BENCH_BIND=127.0.0.1:18082   where the server listens
#   BENCH_DB=keyledger_bench_email   (dropped at start and end; must contain "bench")
#   BENCH_PG_URL=postgres://postgres@127.0.0.1:5432
#   BENCH_SERVER_ENV=""          extra VAR=value settings for the server
#
# The server runs with production defaults except: its own database, no NATS (the
# relay publishes after commit, off the response path), rate limits off,
# KEYLEDGER_EMAIL_VERIFICATION=optional, and no SMTP server: mails are .eml files in
# a temporary data directory (deleted at the end; their count is printed). See
# BENCHMARKS.md ("Mail-route timing") for the figures and how to read them.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=$ROOT/bench
STORAGE=${BENCH_STORAGE:-postgres}
PROFILE=${BENCH_PROFILE:-release}
BIND=${BENCH_BIND:-127.0.0.1:18082}
DB=${BENCH_DB:-keyledger_bench_email}
PG_URL=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}

die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

if [[ -n ${BENCH_BASE:-} ]]; then
  exec python3 "$BENCH_DIR/email_timing.py" "$BENCH_BASE"
fi

[[ $STORAGE == postgres || $STORAGE == sqlite ]] || die "BENCH_STORAGE is postgres or sqlite"
[[ $PROFILE == release || $PROFILE == debug ]] || die "BENCH_PROFILE is release or debug"
[[ $DB == *bench* && $DB =~ ^[a-z0-9_]+$ ]] || die "BENCH_DB=$DB: lower-case, digits, _, and containing 'bench'"
for tool in python3 curl cargo; do command -v "$tool" >/dev/null || die "$tool is not installed"; done
[[ $STORAGE == postgres ]] && { command -v psql >/dev/null || die "psql is not installed"; }
if (exec 3<>"/dev/tcp/${BIND%:*}/${BIND##*:}") 2>/dev/null; then
  die "something already listens on $BIND; set BENCH_BIND"
fi

WORK=$(mktemp -d /tmp/keyledger-bench-email.XXXXXX)
SERVER_BIN=${BENCH_SERVER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/keyledger}
if [[ -z ${BENCH_SERVER_BIN:-} && ${BENCH_BUILD:-1} == 1 ]]; then
  profile_flag=(); [[ $PROFILE == release ]] && profile_flag=(--release)
  (cd "$ROOT" && cargo build "${profile_flag[@]}" --bin keyledger) >&2
fi
[[ -x $SERVER_BIN ]] || die "$SERVER_BIN is not built"

PSQL=(psql "$PG_URL/postgres" -X -q -v ON_ERROR_STOP=1 -At)
SERVER_PID=
cleanup() {
  local status=$?
  set +e
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null
  fi
  [[ $STORAGE == postgres ]] && "${PSQL[@]}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  rm -rf "$WORK/data" "$WORK"/*.paserk "$WORK"/*.key
  echo "bench: server log kept in $WORK/server.log" >&2
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

server_env=(
  KEYLEDGER_BIND="$BIND"
  KEYLEDGER_SIGNING_KEY_FILE="$WORK/signing-key.paserk"
  KEYLEDGER_AUDIT_KEY_FILE="$WORK/audit-key.paserk"
  KEYLEDGER_EMAIL_INDEX_KEY_FILE="$WORK/email-index.key"
  KEYLEDGER_DATA_KEY_WRAPPING_KEY_FILE="$WORK/data-key-wrapping.key"
  # Registration answers 202 for a new and a taken address only with verification on.
  KEYLEDGER_EMAIL_VERIFICATION=optional
  # The per-client limit and each address's request budget would refuse the run.
  KEYLEDGER_RATE_LIMIT_PER_SECOND=0
  KEYLEDGER_RATE_LIMIT_ACCOUNT_PER_MINUTE=0
  # Registration hashes after its answer, so one client's requests one at a time still
  # queue hashes: the per-client hashing share (1 on 2 cores) and the queue would
  # refuse that work (logged, after a 202 all the same).
  KEYLEDGER_HASH_CONCURRENCY_PER_CLIENT=4096
  KEYLEDGER_HASH_QUEUE=4096
  # No KEYLEDGER_SMTP_URL: the mails are files in $WORK/data/outbox.
  KEYLEDGER_DATA_DIR="$WORK/data"
)
if [[ $STORAGE == postgres ]]; then
  "${PSQL[@]}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
  server_env+=(DATABASE_URL="$PG_URL/$DB")
fi
# shellcheck disable=SC2206 # word splitting of VAR=value pairs is intended
[[ -n ${BENCH_SERVER_ENV:-} ]] && server_env+=($BENCH_SERVER_ENV)

while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep -E '^(KEYLEDGER_|DATABASE_URL$|NATS_URL$)' || true)
KEYLEDGER_SIGNING_KEY_FILE="$WORK/signing-key.paserk" "$SERVER_BIN" keys generate >/dev/null
env "${server_env[@]}" "$SERVER_BIN" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for i in $(seq 1 120); do
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$WORK/server.log" >&2; die "the server exited"; }
  curl -fsS "http://$BIND/health" >/dev/null 2>&1 && break
  ((i == 120)) && die "no healthy answer from http://$BIND/health in 60 s"
  sleep 0.5
done

echo "machine: $(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "server: $SERVER_BIN ($STORAGE)"
BENCH_OUTBOX="$WORK/data/outbox" python3 "$BENCH_DIR/email_timing.py" "http://$BIND"
sleep 2  # the last mails leave the queue
echo "mails written: $(find "$WORK/data/outbox" -name '*.eml' 2>/dev/null | wc -l)"
