#!/usr/bin/env bash
# Keyledger load benchmark against the real PostgreSQL and NATS on this machine.
#
#   bench/run.sh                      # everything, 20 s per scenario
#   BENCH_DURATION=5 bench/run.sh     # a quick trial
#
# What it does, in order (see BENCHMARKS.md for the why):
#   1. checks its tools (installs nothing) and builds the release binary and the
#      argon2_rate example;
#   2. measures the raw Argon2id verification rate on all cores (server not running);
#   3. drops and creates the database $BENCH_DB, deletes the NATS stream
#      $BENCH_NATS_STREAM, starts the server with production defaults except: rate
#      limit off, its own database, NATS stream and subject prefix, a temp key file;
#   4. measures idle RSS, seeds accounts and sessions (bench/seed.py);
#   5. runs wrk per scenario (validate, refresh at each thread count, login), sampling
#      the server's RSS and CPU, then waits for the projector and NATS relay to catch up;
#   6. prints a summary table (also written to $WORK/results.md), stops the server,
#      drops the database and the stream (trap, also on failure or Ctrl-C).
#
# Knobs (environment):
#   BENCH_DURATION=20            seconds per wrk scenario
#   BENCH_SCENARIOS="validate authorize refresh login"   (also: validate-mix, many tokens in
#                                turn; health, GET /health)
#   VALIDATE_TOKENS=2000         live access tokens validate-mix cycles through
#   BENCH_USERS=200              accounts seeded (login cycles through them)
#   VALIDATE_WRK="-t2 -c16"      wrk threads/connections for validate
#   AUTHORIZE_WRK="-t2 -c16"     wrk threads/connections for authorize
#   REFRESH_THREADS="4 8"        one refresh run per value, -tN -cN (one connection per thread)
#   LOGIN_WRK="-t2 -c8"          wrk threads/connections for login
#   ARGON2_SECONDS=10            duration of the raw Argon2id measurement (0 skips it)
#   BENCH_BIND=127.0.0.1:18080   where the benchmarked server listens
#   BENCH_CEILING_BIND=127.0.0.1:18090   where the HTTP ceiling (examples/http_ceiling:
#                                actix-web's bare "hello") listens; measured after the
#                                scenarios, with validate's wrk options, when it is built
#   BENCH_DB=keyledger_bench     database (dropped at start and end; name must contain "bench")
#   BENCH_PG_URL=postgres://postgres@127.0.0.1:5432
#   NATS_URL=nats://127.0.0.1:4222
#   BENCH_NATS_STREAM=BENCH_EVENTS  BENCH_NATS_PREFIX=bench.auth.events
#   BENCH_SERVER_ENV=""          extra VAR=value settings for the server (printed), e.g.
#                                "KEYLEDGER_WORKERS=4"; empty means production defaults
#   BENCH_CATCHUP_TIMEOUT=120    seconds to wait for the read models / relay after a run
#   BENCH_KEEP_DB=0              1 keeps the database and stream for inspection
#   BENCH_BUILD=1                0 skips `cargo build` and uses the binaries in target/release
#   BENCH_STORAGE=postgres       or sqlite: the embedded store in $WORK/bench-data (no
#                                DATABASE_URL; NATS stays on so only storage differs;
#                                "PG commits/req" is then not measured)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=$ROOT/bench
DURATION=${BENCH_DURATION:-20}
SCENARIOS=${BENCH_SCENARIOS:-validate authorize refresh login}
USERS=${BENCH_USERS:-200}
VALIDATE_TOKENS=${VALIDATE_TOKENS:-2000}
VALIDATE_WRK=${VALIDATE_WRK:--t2 -c16}
AUTHORIZE_WRK=${AUTHORIZE_WRK:--t2 -c16}
REFRESH_THREADS=${REFRESH_THREADS:-4 8}
LOGIN_WRK=${LOGIN_WRK:--t2 -c8}
ARGON2_SECONDS=${ARGON2_SECONDS:-10}
BIND=${BENCH_BIND:-127.0.0.1:18080}
CEILING_BIND=${BENCH_CEILING_BIND:-127.0.0.1:18090}
DB=${BENCH_DB:-keyledger_bench}
PG_URL=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
NATS=${NATS_URL:-nats://127.0.0.1:4222}
STREAM=${BENCH_NATS_STREAM:-BENCH_EVENTS}
PREFIX=${BENCH_NATS_PREFIX:-bench.auth.events}
CATCHUP_TIMEOUT=${BENCH_CATCHUP_TIMEOUT:-120}
STORAGE=${BENCH_STORAGE:-postgres}
[[ $STORAGE == postgres || $STORAGE == sqlite ]] || { echo "bench: BENCH_STORAGE is postgres or sqlite" >&2; exit 1; }
SPARE_SESSIONS=2 # extra sessions per refresh thread, used if its chain breaks
BASE=http://$BIND
export BENCH_PASSWORD="bench-Quartz-lantern-9-orbit-Mosaic"

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }
# All-core CPU ticks since boot: "total idle" (idle includes iowait).
machine_ticks() { awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat; }

# ---- 1. tools -----------------------------------------------------------------
missing=()
tools=(wrk curl python3 cargo awk)
[[ $STORAGE == postgres ]] && tools+=(psql)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  for tool in "${missing[@]}"; do
    case $tool in
      wrk) echo "bench: wrk is not installed. Install it with:  apt-get update && apt-get install -y wrk" >&2 ;;
      psql) echo "bench: psql is not installed (Debian: apt-get install -y postgresql-client)" >&2 ;;
      *) echo "bench: $tool is not installed" >&2 ;;
    esac
  done
  exit 1
fi
[[ $DB == *bench* ]] || die "BENCH_DB=$DB: the name must contain 'bench' (this script drops it)"
[[ $DB =~ ^[a-z0-9_]+$ ]] || die "BENCH_DB=$DB: use lower-case letters, digits and _ only"
[[ $DURATION =~ ^[0-9]+$ && $DURATION -gt 0 ]] || die "BENCH_DURATION must be a positive integer"

PSQL=(psql "$PG_URL/postgres" -X -q -v ON_ERROR_STOP=1 -At)
if [[ $STORAGE == postgres ]]; then
  "${PSQL[@]}" -c 'SELECT 1' >/dev/null || die "PostgreSQL is not reachable at $(sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$PG_URL") (see README.md)"
fi
nats_host=${NATS#*://}; nats_host=${nats_host%%/*}
(exec 3<>"/dev/tcp/${nats_host%:*}/${nats_host##*:}") 2>/dev/null ||
  die "NATS is not reachable at $NATS (see README.md)"
if (exec 3<>"/dev/tcp/${BIND%:*}/${BIND##*:}") 2>/dev/null; then
  die "something already listens on $BIND; set BENCH_BIND"
fi

WORK=$(mktemp -d /tmp/keyledger-bench.XXXXXX)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
echo "bench: work directory $WORK" >&2

SERVER_BIN=$TARGET_DIR/release/keyledger
ARGON2_BIN=$TARGET_DIR/release/examples/argon2_rate
CEILING_BIN=$TARGET_DIR/release/examples/http_ceiling
if [[ ${BENCH_BUILD:-1} == 1 ]]; then
  say "building (release)"
  (cd "$ROOT" && cargo build --release --bin keyledger &&
    cargo build --release -p keyledger-commands --example argon2_rate &&
    cargo build --release -p keyledger-api --example http_ceiling) >&2
else
  for bin in "$SERVER_BIN" "$ARGON2_BIN"; do
    [[ -x $bin ]] || die "BENCH_BUILD=0 but $bin is not built"
  done
  echo "bench: BENCH_BUILD=0: using the binaries already built ($(date -r "$SERVER_BIN" '+%F %T'))" >&2
fi

# ---- machine facts -------------------------------------------------------------
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem_total=$(free -h | awk '/^Mem:/ {print $2}')
{
  echo "machine: $(nproc) cores ($cpu_model), $mem_total RAM, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  if [[ $STORAGE == postgres ]]; then
    echo "tools: $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), $("${PSQL[@]}" -c 'SHOW server_version'), PostgreSQL and NATS on this machine"
  else
    echo "tools: $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), embedded SQLite in $WORK/bench-data, NATS on this machine"
  fi
} | tee "$WORK/machine.txt" >&2

# ---- cleanup ---------------------------------------------------------------------
SERVER_PID=
WRK_PID=
CEILING_PID=
PROBE_PID=
cleanup() {
  local status=$?
  set +e
  touch "$WORK/probe.stop"
  for pid in $WRK_PID $PROBE_PID $CEILING_PID; do kill "$pid" 2>/dev/null; done
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    for _ in $(seq 1 40); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$SERVER_PID" 2>/dev/null && kill -KILL "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null
  fi
  if [[ ${BENCH_KEEP_DB:-0} != 1 ]]; then
    if [[ $STORAGE == postgres ]]; then
      "${PSQL[@]}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
    else
      rm -rf "$WORK/bench-data"
    fi
    python3 "$BENCH_DIR/nats_stream.py" "$NATS" "$STREAM" >/dev/null 2>&1
  else
    echo "bench: kept database $DB and NATS stream $STREAM" >&2
  fi
  rm -f "$WORK/signing-key.paserk" "$WORK"/*.tokens "$WORK"/access.token "$WORK"/authz.txt
  echo "bench: logs and results kept in $WORK" >&2
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 2. raw Argon2id rate --------------------------------------------------------
ARGON2_RATE=
ARGON2_LOAD=
ARGON2_BUSY=
ARGON2_CPU_MS=
LOGIN_CPU_MS=
if [[ $ARGON2_SECONDS != 0 ]]; then
  say "raw Argon2id verification rate (${ARGON2_SECONDS} s, all cores, server not running)"
  # How busy the machine is right before (1 s sample of /proc/stat), since other
  # work on the cores lowers the rate and makes the login ratio meaningless.
  read -r -a b0 < <(machine_ticks); sleep 1; read -r -a b1 < <(machine_ticks)
  ARGON2_BUSY=$(awk -v all=$((b1[0] - b0[0])) -v idle=$((b1[1] - b0[1])) \
    'BEGIN {printf "%.0f", all ? 100 * (all - idle) / all : 0}')
  ARGON2_LOAD=$(cut -d' ' -f1 /proc/loadavg)
  echo "machine busy before: ${ARGON2_BUSY}% of all cores (1-min load average $ARGON2_LOAD)" >&2
  "$ARGON2_BIN" "$ARGON2_SECONDS" | tee "$WORK/argon2.txt" >&2
  ARGON2_RATE=$(awk -F= '/^verifications_per_second=/ {print $2}' "$WORK/argon2.txt")
  ARGON2_CPU_MS=$(awk -F= '/^cpu_ms_per_verification=/ {print $2}' "$WORK/argon2.txt")
fi

# ---- 3. fresh database and stream, start the server ------------------------------
if [[ $STORAGE == postgres ]]; then
  say "fresh database $DB and NATS stream $STREAM"
  "${PSQL[@]}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
  storage_env=(DATABASE_URL="$PG_URL/$DB")
else
  say "fresh data directory $WORK/bench-data and NATS stream $STREAM"
  rm -rf "$WORK/bench-data"
  storage_env=(KEYLEDGER_DATA_DIR="$WORK/bench-data")
fi
python3 "$BENCH_DIR/nats_stream.py" "$NATS" "$STREAM" >&2

say "starting the server on $BIND"
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^KEYLEDGER_' || true)
server_env=(
  KEYLEDGER_BIND="$BIND"
  "${storage_env[@]}"
  NATS_URL="$NATS"
  KEYLEDGER_NATS_STREAM="$STREAM"
  KEYLEDGER_NATS_SUBJECT_PREFIX="$PREFIX"
  KEYLEDGER_SIGNING_KEY_FILE="$WORK/signing-key.paserk"
  KEYLEDGER_AUDIT_KEY_FILE="$WORK/audit-key.paserk"
  KEYLEDGER_EMAIL_INDEX_KEY_FILE="$WORK/email-index.key"
  KEYLEDGER_DATA_KEY_WRAPPING_KEY_FILE="$WORK/data-key-wrapping.key"
  # Every load comes from 127.0.0.1 and stands for many clients: no per-address or
  # per-account budget, and the whole hashing pool for it.
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
printf 'server env: %s\n' "${server_env[*]}" | tee "$WORK/server-env.txt" >&2
# PostgreSQL mode wants a configured signing key (only the embedded store makes one).
KEYLEDGER_SIGNING_KEY_FILE="$WORK/signing-key.paserk" "$SERVER_BIN" keys generate >/dev/null
env "${server_env[@]}" "$SERVER_BIN" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for i in $(seq 1 120); do
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$WORK/server.log" >&2; die "the server exited"; }
  curl -fsS "$BASE/health" >"$WORK/health.json" 2>/dev/null && break
  ((i == 120)) && die "no healthy answer from $BASE/health in 60 s"
  sleep 0.5
done
echo "health: $(cat "$WORK/health.json")" >&2
grep -q '"nats":"up"' "$WORK/health.json" || echo "bench: WARNING: NATS is not up for the server" >&2

# ---- measuring helpers ------------------------------------------------------------
status_kb() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$SERVER_PID/status"; }
mb() { awk -v kb="$1" 'BEGIN {printf "%.1f", kb / 1024}'; }
cpu_ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$SERVER_PID/stat"; }
# CPU ticks of the PostgreSQL backends connected to the benchmark database (the
# server's pool and its listeners; the shared WAL writer and checkpointer are not
# counted). A backend that exits during a run takes its ticks with it, which the
# pool's long-lived connections do not do. 0 on the embedded store.
pg_cpu_ticks() {
  [[ $STORAGE == postgres ]] || { echo 0; return; }
  local total=0 pid args
  for pid in $(pgrep -f "^postgres: .* $DB " || true); do
    args=$(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + ${args:-0}))
  done
  echo "$total"
}
TICKS=$(getconf CLK_TCK)

# Events not yet passed by each checkpoint (read models, NATS relay), in feed order.
# Transactions committed in the benchmark database (all clients: the server's
# handlers, projector, relay and revocation follower).
# One query against the benchmarked store, rows as space-separated fields.
store_query() { # postgres SQL, sqlite SQL
  if [[ $STORAGE == postgres ]]; then
    psql "$PG_URL/$DB" -X -At -F' ' -c "$1"
  else
    python3 - "$WORK/bench-data/keyledger.db" "$2" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=30)
for row in db.execute(sys.argv[2]):
    print(" ".join(str(v) for v in row))
PY
  fi
}
pg_commits() { # 0 on the embedded store (not measured there)
  if [[ $STORAGE == postgres ]]; then
    psql "$PG_URL/$DB" -X -At -c "SELECT pg_stat_force_next_flush()" >/dev/null 2>&1 || true
    psql "$PG_URL/$DB" -X -At -c "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
  else
    echo 0
  fi
}
count_events() { store_query 'SELECT count(*) FROM events' 'SELECT count(*) FROM events'; }
backlog() {
  store_query "
    SELECT c.name, (SELECT count(*) FROM events e
                     WHERE (e.tx_id, e.global_position) > (c.tx_id::text::xid8, c.global_position))
      FROM projection_checkpoints c ORDER BY c.name" "
    SELECT c.name, (SELECT count(*) FROM events e WHERE e.global_position > c.global_position)
      FROM projection_checkpoints c ORDER BY c.name" 2>/dev/null
}
wait_caught_up() { # prints seconds waited, or "timeout"
  local start=$SECONDS
  while ((SECONDS - start < CATCHUP_TIMEOUT)); do
    if ! backlog | awk '$2 > 0 {behind = 1} END {exit !behind}'; then
      echo $((SECONDS - start)); return
    fi
    sleep 0.5
  done
  echo timeout
}

# While a refresh run goes on: one login every 2 s with curl, answering "how long
# does a login take while refreshes keep the event log busy?". A login waits until
# the read models have caught up with its own events (read-your-writes, at most 5 s).
probe_logins() { # until $WORK/probe.stop exists
  local i=0 email
  while [[ ! -e $WORK/probe.stop ]]; do
    email=$(sed -n "$((i % USERS + 1))p" "$WORK/users.txt")
    curl -s -o /dev/null --max-time 15 -w '%{http_code} %{time_total}\n' \
      -H 'Content-Type: application/json' \
      -d "{\"email\":\"$email\",\"password\":\"$BENCH_PASSWORD\"}" "$BASE/v1/auth/login" || true
    i=$((i + 1))
    sleep 2
  done
}

ROWS=()
LOGIN_RPS=
VALIDATE_RPS=
VALIDATE_MIX_RPS=
HEALTH_RPS=
HELLO_RPS=
AUTHORIZE_RPS=
AUTHORIZE_P99=
REFRESH_BEST=
# run NAME "WRK ARGS" SCRIPT PATH [SCRIPT ARGS...]
run_scenario() {
  local name=$1 wrk_args=$2 script=$3 path=$4
  shift 4
  say "scenario $name: wrk $wrk_args -d${DURATION}s"
  echo 5 >"/proc/$SERVER_PID/clear_refs" 2>/dev/null || echo "bench: cannot reset VmHWM; peak RSS is since start" >&2
  local events_before cpu0 m0 sampled_max=0 rss
  events_before=$(count_events)
  local commits_before load_before
  commits_before=$(pg_commits)
  load_before=$(cut -d' ' -f1 /proc/loadavg)
  cpu0=$(cpu_ticks); read -r -a m0 < <(machine_ticks)
  local pg0
  pg0=$(pg_cpu_ticks)
  local probe_pid=
  if [[ $name == refresh* ]]; then
    rm -f "$WORK/probe.stop"
    probe_logins >"$WORK/$name.probe.txt" &
    probe_pid=$!
    PROBE_PID=$probe_pid
  fi
  # shellcheck disable=SC2086 # wrk_args is a list of options
  wrk --latency --timeout 10s -d"${DURATION}s" $wrk_args -s "$BENCH_DIR/$script" "$BASE$path" -- "$@" \
    >"$WORK/$name.wrk.txt" 2>&1 &
  local wrk_pid=$!
  WRK_PID=$wrk_pid
  while kill -0 "$wrk_pid" 2>/dev/null; do
    rss=$(status_kb VmRSS); ((rss > sampled_max)) && sampled_max=$rss
    sleep 0.25
  done
  wait "$wrk_pid" || { cat "$WORK/$name.wrk.txt" >&2; die "wrk failed in $name"; }
  local cpu1 m1 hwm rss_end
  cpu1=$(cpu_ticks); read -r -a m1 < <(machine_ticks)
  local pg1
  pg1=$(pg_cpu_ticks)
  hwm=$(status_kb VmHWM); rss_end=$(status_kb VmRSS)
  local probe="–"
  if [[ -n $probe_pid ]]; then
    touch "$WORK/probe.stop" # the login in flight (if any) still completes
    wait "$probe_pid" 2>/dev/null || true
    local failed
    failed=$(awk '$1 != 200' "$WORK/$name.probe.txt" | wc -l)
    probe=$(awk '{print $2}' "$WORK/$name.probe.txt" | sort -n | awk -v bad="$failed" '{t[NR] = $1}
      END {if (NR) printf "%.2f / %.2f s (n=%d%s)", t[int((NR + 1) / 2)], t[NR], NR, bad ? ", " bad " failed" : ""; else print "–"}')
  fi
  ((hwm > sampled_max)) && sampled_max=$hwm
  cat "$WORK/$name.wrk.txt" >&2
  local result
  result=$(grep '^BENCH_RESULT' "$WORK/$name.wrk.txt") || die "no result line from wrk in $name"
  field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" ${result#BENCH_RESULT}"; }
  local rps p50 p99 non2xx sockerr secs server_cpu machine_cpu
  rps=$(field rps); p50=$(field p50_us); p99=$(field p99_us); non2xx=$(field non2xx)
  sockerr=$(($(field connect) + $(field read) + $(field write) + $(field timeout)))
  secs=$(awk -v us="$(field duration_us)" 'BEGIN {print us / 1e6}')
  server_cpu=$(awk -v t=$((cpu1 - cpu0)) -v hz="$TICKS" -v s="$secs" 'BEGIN {printf "%.0f%%", 100 * t / hz / s}')
  machine_cpu=$(awk -v all=$((m1[0] - m0[0])) -v idle=$((m1[1] - m0[1])) \
    'BEGIN {printf "%.0f%%", all ? 100 * (all - idle) / all : 0}')
  local backlog_end catchup rss_after events_after
  backlog_end=$(backlog | awk '{printf "%s%s=%s", sep, $1, $2; sep=", "}')
  catchup=$(wait_caught_up)
  sleep 2
  rss_after=$(status_kb VmRSS)
  events_after=$(count_events)
  local commits requests
  commits=$(($(pg_commits) - commits_before))
  requests=$(field requests)
  echo "backlog at end of run: ${backlog_end:-none}; caught up after ${catchup} s; events written: $((events_after - events_before)); PostgreSQL commits: $commits ($(awk -v c="$commits" -v r="$requests" 'BEGIN {printf "%.1f", r ? c / r : 0}') per request, until caught up); server threads: $(status_kb Threads); 1-min load average before: $load_before" \
    | tee -a "$WORK/$name.wrk.txt" >&2
  ms() { awk -v us="$1" 'BEGIN {printf (us < 10000 ? "%.2f ms" : "%.0f ms"), us / 1000}'; }
  ROWS+=("| $name | \`$wrk_args\` | $(printf '%.0f' "$rps") | $(ms "$p50") | $(ms "$p99") | $non2xx | $sockerr | $(mb "$sampled_max") MB | $(mb "$rss_end") MB | $(mb "$rss_after") MB | $server_cpu | $machine_cpu | $(awk -v t=$((cpu1 - cpu0)) -v hz="$TICKS" -v r="$requests" 'BEGIN {printf "%.2f ms", r ? 1000 * t / hz / r : 0}') | $probe | ${catchup} s | $(awk -v c="$commits" -v r="$requests" 'BEGIN {printf "%.1f", r ? c / r : 0}') | $(awk -v t=$((pg1 - pg0)) -v hz="$TICKS" -v r="$requests" 'BEGIN {printf "%.2f ms", r ? 1000 * t / hz / r : 0}') |")
  case $name in
    validate) VALIDATE_RPS=$rps ;;
    validate-mix) VALIDATE_MIX_RPS=$rps ;;
    health) HEALTH_RPS=$rps ;;
    authorize) AUTHORIZE_RPS=$rps; AUTHORIZE_P99=$p99 ;;
    login)
      LOGIN_RPS=$rps
      LOGIN_CPU_MS=$(awk -v t=$((cpu1 - cpu0)) -v hz="$TICKS" -v r="$requests" 'BEGIN {printf "%.3f", r ? 1000 * t / hz / r : 0}')
      ;;
    refresh*) REFRESH_BEST=$(awk -v a="${REFRESH_BEST:-0}" -v b="$rps" 'BEGIN {print (b > a ? b : a)}') ;;
  esac
}

# ---- 4. idle RSS, seeding ----------------------------------------------------------
sleep 2
IDLE_RSS=$(status_kb VmRSS)
echo "idle RSS after start: $(mb "$IDLE_RSS") MB" >&2

say "seeding $USERS accounts"
t0=$SECONDS
python3 "$BENCH_DIR/seed.py" "$BASE" register "$USERS" "$WORK/users.txt"
echo "registered $USERS accounts in $((SECONDS - t0)) s" >&2
for t in $REFRESH_THREADS; do
  [[ $SCENARIOS == *refresh* ]] || break
  [[ $t =~ ^[1-9][0-9]*$ ]] || die "REFRESH_THREADS: $t is not a positive integer"
  python3 "$BENCH_DIR/seed.py" "$BASE" login $((t * (1 + SPARE_SESSIONS))) "$WORK/users.txt" "$WORK/refresh-t$t.tokens"
done
SEEDED_RSS=$(status_kb VmRSS)
wait_caught_up >/dev/null

# ---- 5. scenarios ---------------------------------------------------------------------
for scenario in $SCENARIOS; do
  case $scenario in
    validate)
      python3 "$BENCH_DIR/seed.py" "$BASE" access "$WORK/users.txt" "$WORK/access.token"
      python3 "$BENCH_DIR/seed.py" "$BASE" active "$WORK/access.token"
      run_scenario validate "$VALIDATE_WRK" validate.lua /v1/auth/validate "$WORK/access.token"
      python3 "$BENCH_DIR/seed.py" "$BASE" active "$WORK/access.token" ||
        die "the access token no longer validates as active after the run"
      ;;
    health)
      run_scenario health "$VALIDATE_WRK" health.lua /health
      ;;
    validate-mix)
      python3 "$BENCH_DIR/seed.py" "$BASE" accesses "$VALIDATE_TOKENS" "$WORK/users.txt" "$WORK/access-mix.tokens"
      run_scenario validate-mix "$VALIDATE_WRK" validate_mix.lua /v1/auth/validate "$WORK/access-mix.tokens"
      head -1 "$WORK/access-mix.tokens" >"$WORK/access-mix.first"
      python3 "$BENCH_DIR/seed.py" "$BASE" active "$WORK/access-mix.first" ||
        die "the first access token no longer validates as active after the run"
      ;;
    authorize)
      python3 "$BENCH_DIR/seed.py" "$BASE" authz "$WORK/users.txt" "$WORK/authz.txt"
      python3 "$BENCH_DIR/seed.py" "$BASE" allowed "$WORK/authz.txt"
      run_scenario authorize "$AUTHORIZE_WRK" authorize.lua /v1/auth/authorize "$WORK/authz.txt"
      python3 "$BENCH_DIR/seed.py" "$BASE" allowed "$WORK/authz.txt" ||
        die "authorize no longer says allowed after the run"
      ;;
    refresh)
      for t in $REFRESH_THREADS; do
        run_scenario "refresh-t$t" "-t$t -c$t" refresh.lua /v1/auth/refresh "$WORK/refresh-t$t.tokens" "$t"
      done
      ;;
    login)
      threads=$(sed -n 's/.*-t *\([0-9]*\).*/\1/p' <<<"$LOGIN_WRK")
      run_scenario login "$LOGIN_WRK" login.lua /v1/auth/login "$WORK/users.txt" "$BENCH_PASSWORD" "${threads:-1}"
      ;;
    *) die "unknown scenario $scenario (BENCH_SCENARIOS: validate validate-mix health authorize refresh login)" ;;
  esac
done

sleep 3
AFTER_RSS=$(status_kb VmRSS)
EVENTS=$(count_events)

# ---- the HTTP ceiling: actix-web's bare "hello" from this workspace, same wrk as validate
if [[ -x $CEILING_BIN ]]; then
  say "HTTP ceiling: GET /hello on $CEILING_BIND (the server idles)"
  "$CEILING_BIN" "$CEILING_BIND" >"$WORK/ceiling.log" 2>&1 &
  CEILING_PID=$!
  for i in $(seq 1 50); do
    curl -fsS "http://$CEILING_BIND/hello" >/dev/null 2>&1 && break
    ((i == 50)) && die "the HTTP ceiling did not start"
    sleep 0.1
  done
  # shellcheck disable=SC2086 # VALIDATE_WRK is a list of options
  wrk --latency --timeout 10s -d"${DURATION}s" $VALIDATE_WRK -s "$BENCH_DIR/health.lua" \
    "http://$CEILING_BIND/hello" >"$WORK/ceiling.wrk.txt" 2>&1
  kill "$CEILING_PID" 2>/dev/null; wait "$CEILING_PID" 2>/dev/null || true
  HELLO_RPS=$(sed -n 's/^BENCH_RESULT.* rps=\([^ ]*\).*/\1/p' "$WORK/ceiling.wrk.txt")
  echo "hello: ${HELLO_RPS:-?}/s" >&2
else
  echo "bench: $CEILING_BIN not built: no HTTP ceiling, no ratios" >&2
fi

# ---- 6. summary -----------------------------------------------------------------------
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0f %%", 100 * a / b}'; }
verdict() { awk -v v="$1" -v t="$2" 'BEGIN {print (v >= t ? "met" : "MISSED")}'; }
{
  echo "### Results ($(date -u '+%Y-%m-%d %H:%M UTC'), ${DURATION} s per scenario)"
  echo
  sed 's/^/    /' "$WORK/machine.txt"
  echo
  echo "| scenario | wrk | requests/s | p50 | p99 | non-2xx | socket errors | RSS peak | RSS end | RSS after | server CPU | machine CPU | server CPU/req | login during run (median / max) | catch-up | PG commits/req | PG CPU/req |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "- RSS idle after start: $(mb "$IDLE_RSS") MB; after seeding: $(mb "$SEEDED_RSS") MB; idle after all runs: $(mb "$AFTER_RSS") MB ($EVENTS events in the store)"
  [[ -n $ARGON2_RATE ]] && echo "- raw Argon2id verification rate (m=19456 KiB, t=2, p=1, $(nproc) threads, server stopped): $(printf '%.1f' "$ARGON2_RATE")/s (machine ${ARGON2_BUSY}% busy just before, 1-min load average $ARGON2_LOAD)"
  if [[ -n $ARGON2_CPU_MS && -n $LOGIN_CPU_MS ]]; then
    echo "- CPU per login in the server: $LOGIN_CPU_MS ms; CPU per raw Argon2id verification: $ARGON2_CPU_MS ms, so $(pct "$ARGON2_CPU_MS" "$LOGIN_CPU_MS") of the server's login CPU is the password check. This ratio is what login/s could reach as a share of the raw rate if the server had every core to itself (no PostgreSQL, NATS or wrk beside it); CPU time, unlike the rates, barely depends on what else runs."
  fi
  if [[ -n $ARGON2_BUSY ]] && ((ARGON2_BUSY > 10)); then
    echo "- **WARNING: the machine was busy (${ARGON2_BUSY}%) when the Argon2id rate was measured; the login ratio below is not meaningful.**"
  fi
  echo
  echo "| target | measured | verdict |"
  echo "|---|---|---|"
  [[ -n $VALIDATE_RPS ]] && echo "| validate ≥ 20,000/s | $(printf '%.0f' "$VALIDATE_RPS")/s | $(verdict "$VALIDATE_RPS" 20000) |"
  if [[ -n $HELLO_RPS ]]; then
    for pair in "validate:$VALIDATE_RPS" "validate-mix:$VALIDATE_MIX_RPS" "authorize:$AUTHORIZE_RPS" "health:$HEALTH_RPS"; do
      [[ -n ${pair#*:} ]] || continue
      echo "| ${pair%%:*} ≥ 0.5 × actix-web hello ($(printf '%.0f' "$HELLO_RPS")/s, same run) | $(printf '%.0f' "${pair#*:}")/s = $(awk -v a="${pair#*:}" -v b="$HELLO_RPS" 'BEGIN {printf "%.2f", a / b}') × | $(verdict "$(awk -v a="${pair#*:}" -v b="$HELLO_RPS" 'BEGIN {print a / b}')" 0.5) |"
    done
  fi
  [[ -n $AUTHORIZE_RPS ]] && echo "| authorize ≥ 20,000/s, p99 ≤ 5 ms | $(printf '%.0f' "$AUTHORIZE_RPS")/s, p99 $(awk -v us="$AUTHORIZE_P99" 'BEGIN {printf "%.2f", us / 1000}') ms | $(verdict "$(awk -v r="$AUTHORIZE_RPS" -v p="$AUTHORIZE_P99" 'BEGIN {print (r >= 20000 && p <= 5000) ? 1 : 0}')" 1) |"
  [[ -n $REFRESH_BEST ]] && echo "| refresh ≥ 1,000/s | $(printf '%.0f' "$REFRESH_BEST")/s (best run) | $(verdict "$REFRESH_BEST" 1000) |"
  if [[ -n $LOGIN_RPS && -n $ARGON2_RATE ]]; then
    cpu_note=
    [[ -n $ARGON2_CPU_MS && -n $LOGIN_CPU_MS ]] && cpu_note=" (CPU-time bound: $(pct "$ARGON2_CPU_MS" "$LOGIN_CPU_MS"))"
    echo "| login ≥ 90 % of raw Argon2id | $(printf '%.1f' "$LOGIN_RPS")/s = $(pct "$LOGIN_RPS" "$ARGON2_RATE") of $(printf '%.1f' "$ARGON2_RATE")/s$cpu_note | $(verdict "$(awk -v a="$LOGIN_RPS" -v b="$ARGON2_RATE" 'BEGIN {print a / b}')" 0.9) |"
  fi
  rss_idle_max=$((IDLE_RSS > AFTER_RSS ? IDLE_RSS : AFTER_RSS))
  echo "| RSS ≤ 100 MB idle | $(mb "$IDLE_RSS") MB after start, $(mb "$AFTER_RSS") MB idle after load | $(verdict $((102400 - rss_idle_max)) 0) |"
  echo
  sed 's/\x1b\[[0-9;]*m//g' "$WORK/server.log" >"$WORK/server.plain.log"
  warnings=$(grep -c -E ' (WARN|ERROR) ' "$WORK/server.plain.log" || true)
  echo "- server log: $warnings WARN/ERROR lines ($WORK/server.log)"
  if ((warnings > 0)); then
    grep -E ' (WARN|ERROR) ' "$WORK/server.plain.log" |
      sed -E 's/^[^ ]+ +//; s/request_id=[^ },]+//g; s/elapsed_ms=[0-9]+//g; s/session_id=[^ },]+//g' |
      sort | uniq -c | sort -rn | head -8 | sed 's/^/    /'
  fi
  true
} | tee "$WORK/results.md"
