#!/usr/bin/env bash
# Read-side benchmark: a big realistic event log, then the auditor's tools on it.
#
#   bench/replay.sh                         # 1,000,000 events
#   BENCH_EVENTS=100000 bench/replay.sh     # a quick trial
#   BENCH_STORAGE=sqlite bench/replay.sh    # the embedded store instead
#
# What it does, in order (see BENCHMARKS.md, "Replay tools", for the why):
#   1. builds the release binaries keyledger and keyledger-replay (BENCH_BUILD=0 skips);
#   2. drops and creates $BENCH_REPLAY_DB, migrates it by starting the server once
#      (NATS off, its own port and key file) until /health answers, then stops it
#      (BENCH_STORAGE=sqlite: a fresh data directory in the work directory, which
#      the seed creates and migrates itself);
#   3. seeds BENCH_EVENTS events with `keyledger-replay seed`;
#   4. times, each under /usr/bin/time -v (wall time and peak RSS of the tool):
#      rebuild --switch (builds the live read models from nothing), rebuild
#      (compare mode: replays everything again in one transaction and compares),
#      export of the audit trail and of the events, as JSON lines and as CSV, into
#      a file (size reported, file removed), and verify if this build has it;
#   5. prints a Markdown table (also in $WORK/results.md) and drops the database
#      (or removes the data directory).
#
# Knobs (environment):
#   BENCH_STORAGE=postgres        or sqlite (the embedded store; no psql needed)
#   BENCH_EVENTS=1000000          events to seed
#   BENCH_USERS=                  accounts (default: one per 20 events)
#   BENCH_REPLAY_DB=keyledger_replay_bench   (dropped at start and end; must contain "bench")
#   BENCH_PG_URL=postgres://postgres@127.0.0.1:5432
#   BENCH_BIND=127.0.0.1:18081    where the migrating server listens
#   BENCH_STEPS="seed switch compare export verify"
#   BENCH_KEEP_DB=0               1 keeps the database for inspection
#   BENCH_BUILD=1                 0 uses the binaries already in target/release
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EVENTS=${BENCH_EVENTS:-1000000}
DB=${BENCH_REPLAY_DB:-keyledger_replay_bench}
PG_URL=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
BIND=${BENCH_BIND:-127.0.0.1:18081}
STEPS=${BENCH_STEPS:-seed switch compare export verify}
STORAGE=${BENCH_STORAGE:-postgres}
[[ $STORAGE == postgres || $STORAGE == sqlite ]] || { echo "bench: BENCH_STORAGE must be postgres or sqlite" >&2; exit 1; }

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

tools=(cargo awk)
[[ $STORAGE == postgres ]] && tools+=(psql curl)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
[[ $DB == *bench* ]] || die "BENCH_REPLAY_DB=$DB: the name must contain 'bench' (this script drops it)"
[[ $DB =~ ^[a-z0-9_]+$ ]] || die "BENCH_REPLAY_DB=$DB: use lower-case letters, digits and _ only"
[[ $EVENTS =~ ^[0-9]+$ && $EVENTS -gt 0 ]] || die "BENCH_EVENTS must be a positive integer"
TIME_BIN=
[[ -x /usr/bin/time ]] && /usr/bin/time -v true 2>/dev/null && TIME_BIN=/usr/bin/time

PSQL=(psql "$PG_URL/postgres" -X -q -v ON_ERROR_STOP=1 -At)
if [[ $STORAGE == postgres ]]; then
  "${PSQL[@]}" -c 'SELECT 1' >/dev/null || die "PostgreSQL is not reachable at $(sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$PG_URL") (see README.md)"
fi

WORK=$(mktemp -d /tmp/keyledger-replay-bench.XXXXXX)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER_BIN=$TARGET_DIR/release/keyledger
REPLAY_BIN=$TARGET_DIR/release/keyledger-replay
echo "bench: work directory $WORK" >&2
# The embedded store needs no server to migrate it (the seed does).
packages=(-p keyledger-replay-tools)
needed=("$REPLAY_BIN")
if [[ $STORAGE == postgres ]]; then
  packages+=(-p keyledger-api)
  needed+=("$SERVER_BIN")
fi
if [[ ${BENCH_BUILD:-1} == 1 ]]; then
  say "building (release)"
  (cd "$ROOT" && cargo build --release "${packages[@]}" &&
    cargo build --release -p keyledger-replay-tools --example sign_checkpoint) >&2
else
  for bin in "${needed[@]}"; do
    [[ -x $bin ]] || die "BENCH_BUILD=0 but $bin is not built"
  done
fi
# A private copy: a shared target directory may get another checkout's binaries
# while this runs.
mkdir -p "$WORK/bin"
SIGN_BIN=$TARGET_DIR/release/examples/sign_checkpoint
cp "${needed[@]}" "$WORK/bin/"
[[ -x $SIGN_BIN ]] && cp "$SIGN_BIN" "$WORK/bin/"
SERVER_BIN=$WORK/bin/keyledger
REPLAY_BIN=$WORK/bin/keyledger-replay
SIGN_BIN=$WORK/bin/sign_checkpoint
for sub in seed export; do
  "$REPLAY_BIN" help "$sub" >/dev/null 2>&1 || die "$REPLAY_BIN has no '$sub' subcommand (built from another checkout?)"
done

cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
{
  echo "machine: $(nproc) cores ($cpu_model), $(free -h | awk '/^Mem:/ {print $2}') RAM, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  if [[ $STORAGE == postgres ]]; then
    echo "PostgreSQL $("${PSQL[@]}" -c 'SHOW server_version') on this machine; commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
  else
    echo "embedded SQLite store on $(df -h "$WORK" | awk 'NR == 2 {print $1}'); commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
  fi
} | tee "$WORK/machine.txt" >&2

SERVER_PID=
cleanup() {
  local status=$?
  set +e
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null
  fi
  if [[ ${BENCH_KEEP_DB:-0} != 1 ]]; then
    if [[ $STORAGE == postgres ]]; then
      "${PSQL[@]}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
    else
      rm -rf "$DATA_DIR"
    fi
  else
    echo "bench: kept ${DATA_DIR:-database $DB}" >&2
  fi
  rm -rf "$WORK"/export.* "$WORK/signing-key.paserk" "$WORK/bin"
  echo "bench: logs and results kept in $WORK" >&2
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

DATA_DIR=
if [[ $STORAGE == sqlite ]]; then
  # The seed refuses a data directory whose name lacks "bench".
  DATA_DIR=$WORK/bench-data
  unset DATABASE_URL
  export KEYLEDGER_DATA_DIR=$DATA_DIR
else
  export DATABASE_URL="$PG_URL/$DB"
fi

# ---- 2. fresh, migrated database ---------------------------------------------------
if [[ $STORAGE == postgres ]]; then
say "fresh database $DB, migrated by the server"
"${PSQL[@]}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^KEYLEDGER_' || true)
# PostgreSQL mode wants a configured signing key.
KEYLEDGER_SIGNING_KEY_FILE="$WORK/signing-key.paserk" "$SERVER_BIN" keys generate >/dev/null
env KEYLEDGER_BIND="$BIND" NATS_URL= KEYLEDGER_SIGNING_KEY_FILE="$WORK/signing-key.paserk" \
  "$SERVER_BIN" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for i in $(seq 1 120); do
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$WORK/server.log" >&2; die "the server exited"; }
  curl -fsS "http://$BIND/health" >/dev/null 2>&1 && break
  ((i == 120)) && die "no healthy answer from http://$BIND/health in 60 s"
  sleep 0.5
done
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=
fi

# ---- measuring ----------------------------------------------------------------------
# run NAME ARGS...: runs keyledger-replay ARGS, keeps its stdout/stderr, and records
# wall seconds and peak RSS (MB) in $WORK/NAME.{wall,rss}.
run() {
  local name=$1; shift
  say "$name: keyledger-replay $*"
  echo "keyledger-replay $*" >"$WORK/$name.cmd"
  local start end status=0
  start=$(date +%s.%N)
  if [[ -n $TIME_BIN ]]; then
    "$TIME_BIN" -v -o "$WORK/$name.time" "$REPLAY_BIN" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || status=$?
    awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2 / 1024}' "$WORK/$name.time" >"$WORK/$name.rss"
  else
    "$REPLAY_BIN" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    local pid=$! hwm=0
    while kill -0 "$pid" 2>/dev/null; do
      hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo "$hwm")
      sleep 0.2
    done
    wait "$pid" || status=$?
    awk -v kb="$hwm" 'BEGIN {printf "%.1f", kb / 1024}' >"$WORK/$name.rss"
  fi
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN {printf "%.2f", b - a}' >"$WORK/$name.wall"
  tail -3 "$WORK/$name.err" >&2
  tail -12 "$WORK/$name.out" >&2
  echo "$name: exit $status, $(cat "$WORK/$name.wall") s, peak RSS $(cat "$WORK/$name.rss") MB" >&2
  return "$status"
}

rows=()
row() { rows+=("| $1 | \`$(sed "s|$WORK/||" "$WORK/$2.cmd")\` | $(cat "$WORK/$2.wall") | $3 | $4 | $(cat "$WORK/$2.rss") |"); }
rate() { awk -v n="$1" -v s="$2" 'BEGIN {printf "%.0f", (s > 0 ? n / s : 0)}'; }

step() { [[ " $STEPS " == *" $1 "* ]]; }

# ---- 3. seed ----------------------------------------------------------------------------
if step seed; then
  # The seed's new email index key goes into the work directory, not /tmp.
  seed_args=(seed --events "$EVENTS" --email-index-key-file "$WORK/email-index.key")
  [[ -n ${BENCH_USERS:-} ]] && seed_args+=(--users "$BENCH_USERS")
  run seed "${seed_args[@]}"
  n=$(awk '/^seeded/ {print $2}' "$WORK/seed.out")
  row seed seed "$n events" "$(awk '/^seeded/ {gsub(/[();]/, ""); print $(NF-4)}' "$WORK/seed.out") events/s (writing; then $(awk '/^seeded/ {print $NF}' "$WORK/seed.out") of VACUUM ANALYZE)"
fi
if [[ $STORAGE == postgres ]]; then
  total=$(psql "$DATABASE_URL" -X -At -c 'SELECT count(*) FROM events')
elif command -v sqlite3 >/dev/null; then
  total=$(sqlite3 -readonly "$DATA_DIR/keyledger.db" 'SELECT count(*) FROM events')
else
  total=$(awk '/^seeded/ {print $2}' "$WORK/seed.out" 2>/dev/null || echo '?')
fi
echo "events in the log: $total" >&2

# ---- 4. rebuilds --------------------------------------------------------------------------
if step switch; then
  run switch rebuild --switch
  n=$(awk '/^rebuilt/ {print $2}' "$WORK/switch.out")
  row "rebuild --switch (from nothing)" switch "$n events" \
    "$(awk '/^rebuilt/ {gsub(/[()]/, ""); print $(NF-1)}' "$WORK/switch.out") events/s (replay); $(rate "$n" "$(cat "$WORK/switch.wall")")/s wall"
fi
if step compare; then
  run compare rebuild || echo "bench: the compare rebuild reported a difference (exit 1)" >&2
  n=$(awk '/^replayed/ {print $2}' "$WORK/compare.out")
  row "rebuild (compare)" compare "$n events" \
    "$(awk '/^replayed/ {gsub(/[()]/, ""); print $(NF-1)}' "$WORK/compare.out") events/s (replay); $(rate "$n" "$(cat "$WORK/compare.wall")")/s wall; $(grep -o 'EQUAL\|DIFFERENT' "$WORK/compare.out" | head -1)"
fi

# ---- 5. exports -----------------------------------------------------------------------------
if step export; then
  for source in audit events; do
    for format in jsonl csv; do
      name=export-$source-$format
      args=(export --format "$format" --output "$WORK/export.$format")
      [[ $source == events ]] && args+=(--events)
      run "$name" "${args[@]}"
      n=$(awk '/^exported/ {print $2}' "$WORK/$name.err")
      size=$(du -m "$WORK/export.$format" | cut -f1)
      row "export $source $format" "$name" "$n rows, $size MB" \
        "$(awk '/^exported/ {gsub(/[()]/, ""); print $(NF-1)}' "$WORK/$name.err") rows/s"
      rm -f "$WORK/export.$format"
    done
  done
fi

# ---- 6. verify --------------------------------------------------------------------------------
if step verify; then
  if "$REPLAY_BIN" help verify >/dev/null 2>&1 && [[ -x $SIGN_BIN ]]; then
    # A signed checkpoint over the whole seeded log, with a key kept in the work
    # directory (as the server's signer would make one), then verify with it.
    "$SIGN_BIN" "$WORK/audit.paserk" >&2
    run verify verify --audit-key-file "$WORK/audit.paserk" || die "verify exited non-zero"
    grep -q '^verified' "$WORK/verify.out" || die "verify did not report success"
    row verify verify "$total events" "$(rate "$total" "$(cat "$WORK/verify.wall")") events/s wall"
  else
    echo "bench: this keyledger-replay has no verify subcommand; skipped" >&2
    rows+=("| verify | \`keyledger-replay verify\` | – | – | not in this build | – |")
  fi
fi

{
  echo
  cat "$WORK/machine.txt"
  echo "log: $total events (seeded with \`keyledger-replay seed --events $EVENTS\`)"
  echo
  echo "| step | command | wall s | size | throughput | peak RSS MB |"
  echo "|---|---|---:|---|---|---:|"
  printf '%s\n' "${rows[@]}"
} | tee "$WORK/results.md"
