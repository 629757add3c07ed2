#!/usr/bin/env bash
# Ingest benchmark: reconciled against three peers on the same HTTP stack, alternately, under
# the same closed-loop load of Stripe-signed events (a new event id on every request):
#   baseline  hyper answering 200, nothing else (the ceiling of the machine and HTTP stack)
#   verify    hyper + signature check + JSON parse, stores nothing (the ceiling of a durable server)
#   naive     verify + SQLite WAL, synchronous=FULL, group commit of up to 256 rows per fsync
# See bench/ingest/README.md. Every step is bounded in time; exits non-zero if a check fails.
#
#   bench/ingest/run.sh                      # 2 rounds x CONNS="64", 15 s per run
#   CONNS="16 64" bench/ingest/run.sh
#   PEERS=naive bench/ingest/run.sh          # reconciled against the naive peer only
#   PREFILL=1000000 bench/ingest/run.sh      # reconciled on an inbox with 1M rows already in it
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CONNS=${CONNS:-64}                 # space-separated list of connection counts
DURATION=${DURATION:-15}           # measured seconds per run (long enough to cross a WAL restart)
WARMUP=${WARMUP:-1}                # seconds before measuring (answers still count for the inbox)
ROUNDS=${ROUNDS:-2}                # the target order rotates every round
THREADS=${THREADS:-2}              # load generator worker threads
REQUESTS=${REQUESTS:-600000}       # pre-signed requests per reconciled or naive run (must exceed what it takes)
BASE_REQUESTS=${BASE_REQUESTS:-200000}  # baseline and verify store nothing: their set may wrap
PREFILL=${PREFILL:-0}              # rows put in reconciled's inbox before its runs
PREFILL_MAX_SECS=${PREFILL_MAX_SECS:-1800}
PEERS=${PEERS-"baseline verify naive"}  # the peers reconciled is compared with; "" for none
TARGETS=${TARGETS:-"$PEERS reconciled"}   # every server run, in round 1's order (overrides PEERS)
WORK=${WORK:-/tmp/bench-ingest}    # stores, logs, samples (deleted at start)
BASE_PORT=${BASE_PORT:-18181}
RECON_PORT=${RECON_PORT:-18182}
VERIFY_PORT=${VERIFY_PORT:-18183}
NAIVE_PORT=${NAIVE_PORT:-18184}
IDS=${IDS:-random}                 # event ids: random (like Stripe's) or sequential (diagnostic)
PERF=${PERF:-0}                    # seconds of `perf record` on reconciled during its first run
SKIP_BUILD=${SKIP_BUILD:-0}
STORE_EXTRA=${STORE_EXTRA:-}       # extra lines for the bench config's [store] table, e.g. "max_batch = 512"
REUSE_STORE=${REUSE_STORE:-0}      # 1: keep $WORK/store from an earlier PREFILL run instead of prefilling again
SECRET=whsec_test_bench

# Where cargo puts the binaries: both projects share CARGO_TARGET_DIR (absolute) when it is set;
# BENCH_TARGET_DIR (absolute) builds this project's tools elsewhere.
# RECONCILED_BIN runs another build of the daemon (an A/B against an older commit, say).
RECONCILED=${RECONCILED_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/reconciled}
BENCH_TARGET_DIR=${BENCH_TARGET_DIR:-${CARGO_TARGET_DIR:-$HERE/target}}
BIN=$BENCH_TARGET_DIR/release
FAILED=0
fail() { echo "CHECK FAILED: $*" >&2; FAILED=1; }
die() { echo "error: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

read -r -a TARGET_LIST <<<"$TARGETS"
[ "${#TARGET_LIST[@]}" -gt 0 ] || die "no targets: TARGETS and PEERS are empty"
for target in "${TARGET_LIST[@]}"; do
    case $target in
        baseline | verify | naive | reconciled) ;;
        *) die "unknown target '$target' (known: baseline verify naive reconciled)" ;;
    esac
done

# --- build -------------------------------------------------------------------------------
if [ "$SKIP_BUILD" != 1 ]; then
    log "building reconciled (release)"
    (cd "$ROOT" && timeout 1800 cargo build --release --quiet)
    log "building the bench tools (release)"
    (cd "$HERE" && CARGO_TARGET_DIR=$BENCH_TARGET_DIR timeout 1800 cargo build --release --quiet)
fi
for bin in "$RECONCILED" "$BIN/loadgen" "$BIN/inbox" "$BIN/baseline" "$BIN/verify" "$BIN/naive"; do
    [ -x "$bin" ] || die "$bin is missing; run without SKIP_BUILD=1"
done

if [ "$REUSE_STORE" = 1 ]; then
    [ "$PREFILL" -gt 0 ] && [ -f "$WORK/store/reconciled.db" ] || die "REUSE_STORE=1 needs PREFILL and an existing $WORK/store"
    find "$WORK" -mindepth 1 -maxdepth 1 ! -name store ! -name prefill.txt -exec rm -rf {} +
else
    rm -rf "$WORK"
fi
mkdir -p "$WORK"
STORE=$WORK/store
NAIVE_DB=$WORK/naive/inbox.db
RESULTS=$WORK/results.tsv
printf 'round\ttarget\tconns\t2xx_per_s\tp50_ms\tp99_ms\tmax_ms\tnon2xx\terrors\tpeak_rss_mb\tserver_cpu_pct\tclient_cpu_pct\tother_cpu_pct\tok_total\tinbox_check\n' >"$RESULTS"

write_config() {
    mkdir -p "$STORE"
    cat >"$STORE/bench.toml" <<EOF
[server]
listen = "127.0.0.1:$RECON_PORT"

[store]
path = "reconciled.db"
$STORE_EXTRA

[[endpoint]]
name = "stripe"
provider = "stripe"
secrets = ["$SECRET"]
EOF
}

# --- processes ---------------------------------------------------------------------------
SERVER_PID=
stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 300); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        fail "server $SERVER_PID did not stop within 30 s of SIGTERM; killing it"
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}
trap stop_server EXIT

wait_ready() { # url
    for _ in $(seq 100); do
        if curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; then return 0; fi
        kill -0 "$SERVER_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

start_target() { # target
    case $1 in
        baseline)
            "$BIN/baseline" --listen "127.0.0.1:$BASE_PORT" 2>"$WORK/baseline.log" &
            SERVER_PID=$!
            wait_ready "http://127.0.0.1:$BASE_PORT/" || die "baseline did not start (see $WORK/baseline.log)"
            ;;
        verify)
            "$BIN/verify" --listen "127.0.0.1:$VERIFY_PORT" --secret "$SECRET" 2>>"$WORK/verify.log" &
            SERVER_PID=$!
            wait_ready "http://127.0.0.1:$VERIFY_PORT/readyz" || die "verify did not start (see $WORK/verify.log)"
            ;;
        naive)
            "$BIN/naive" --listen "127.0.0.1:$NAIVE_PORT" --secret "$SECRET" --db "$NAIVE_DB" \
                2>>"$WORK/naive.log" &
            SERVER_PID=$!
            wait_ready "http://127.0.0.1:$NAIVE_PORT/readyz" || die "naive did not start (see $WORK/naive.log)"
            ;;
        reconciled)
            RECONCILED_LOG=${RECONCILED_LOG:-warn} "$RECONCILED" serve --config "$STORE/bench.toml" \
                2>>"$WORK/reconciled.log" &
            SERVER_PID=$!
            wait_ready "http://127.0.0.1:$RECON_PORT/readyz" || die "reconciled did not start (see $WORK/reconciled.log)"
            ;;
    esac
}

# busy and total jiffies of the whole machine (all cores)
machine_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat; }
cpu_ticks() { awk '{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }
vm_hwm_mb() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
kv() { # key line
    tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"
}

# --- the request set is what reconciled expects ------------------------------------------
log "checking sample requests against 'reconciled sign stripe'"
"$BIN/loadgen" --secret "$SECRET" --ids "$IDS" --requests 1000 --dump "$WORK/samples" --samples 8 --dry-run 2>/dev/null
TS=$(cat "$WORK/samples/timestamp")
for body in "$WORK"/samples/*.body; do
    want=$("$RECONCILED" sign stripe --secret "$SECRET" --timestamp "$TS" --body "$body")
    want=${want#Stripe-Signature: }
    got=$(cat "${body%.body}.sig")
    [ "$want" = "$got" ] || fail "signature of $body: loadgen $got, reconciled $want"
done
[ "$FAILED" = 0 ] && log "8 sample signatures match"
[ "$FAILED" = 0 ] || exit 1

[ "$REUSE_STORE" = 1 ] || write_config
"$RECONCILED" check-config --config "$STORE/bench.toml" >"$WORK/check-config.txt" 2>&1 \
    || { cat "$WORK/check-config.txt" >&2; die "check-config refused the bench config"; }

# --- prefill -----------------------------------------------------------------------------
LABEL=reconciled
if [ "$PREFILL" -gt 0 ] && [ "$REUSE_STORE" = 1 ]; then
    LABEL="reconciled+${PREFILL}rows"
    log "reusing the prefilled store $STORE ($(timeout 600 "$BIN/inbox" count "$STORE/reconciled.db" --after-id 9223372036854775807))"
elif [ "$PREFILL" -gt 0 ]; then
    LABEL="reconciled+${PREFILL}rows"
    avail_kb=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
    need_kb=$(( PREFILL * 6 + 2 * 1024 * 1024 ))     # ~4.3 KB/row measured, plus headroom
    [ "$avail_kb" -gt "$need_kb" ] || die "prefill of $PREFILL rows needs ~$((need_kb / 1048576)) GB, $((avail_kb / 1048576)) GB free"
    log "creating the store (one start/stop), then prefilling $PREFILL rows"
    start_target reconciled
    stop_server
    "$BIN/inbox" prefill "$STORE/reconciled.db" --rows "$PREFILL" --max-secs "$PREFILL_MAX_SECS" \
        | tee "$WORK/prefill.txt" || die "prefill failed"
fi

# --- one measured run --------------------------------------------------------------------
run_one() { # round target conns
    local round=$1 target=$2 conns=$3 port addr path=/webhooks/stripe requests wrap=() label=$2
    case $target in
        # These store nothing: their request set may wrap around.
        baseline) port=$BASE_PORT requests=$BASE_REQUESTS wrap=(--wrap) ;;
        verify) port=$VERIFY_PORT requests=$BASE_REQUESTS wrap=(--wrap) ;;
        # These store every event: a wrapped request would be a dedup hit, not a new event.
        naive)
            port=$NAIVE_PORT requests=$REQUESTS
            rm -rf "${NAIVE_DB%/*}"
            mkdir -p "${NAIVE_DB%/*}"
            ;;
        reconciled)
            port=$RECON_PORT requests=$REQUESTS label=$LABEL
            if [ "$PREFILL" -eq 0 ]; then rm -rf "$STORE"; write_config; fi
            ;;
    esac
    addr=127.0.0.1:$port
    start_target "$target"
    local before_id=0
    if [ "$target" = reconciled ]; then
        before_id=$(kv max_id "$(timeout 600 "$BIN/inbox" count "$STORE/reconciled.db" --after-id 9223372036854775807)")
    fi
    local t0 m0 c0 perf_pid=
    t0=$(cpu_ticks "$SERVER_PID")
    m0=$(machine_ticks)
    c0=$(date +%s.%N)
    if [ "$target" = reconciled ] && [ "$PERF" != 0 ] && [ ! -e "$WORK/perf.data" ]; then
        (sleep "$WARMUP"; timeout $((PERF + 30)) perf record -F 499 --call-graph dwarf,32768 -o "$WORK/perf.data" \
            -p "$SERVER_PID" -- sleep "$PERF" >"$WORK/perf-record.log" 2>&1) &
        perf_pid=$!
    fi
    log "round $round: $label, $conns connections, ${DURATION}s"
    local out
    out=$(timeout $((DURATION + WARMUP + 90)) "$BIN/loadgen" --addr "$addr" --path "$path" \
        --conns "$conns" --duration "$DURATION" --warmup "$WARMUP" --threads "$THREADS" \
        --requests "$requests" --ids "$IDS" --secret "$SECRET" "${wrap[@]}" 2>>"$WORK/loadgen.log" | grep '^RESULT') \
        || { fail "$label: load generator failed (see $WORK/loadgen.log)"; out="RESULT"; }
    [ -z "$perf_pid" ] || wait "$perf_pid" || true
    local t1 m1 c1 rss
    t1=$(cpu_ticks "$SERVER_PID")
    m1=$(machine_ticks)
    c1=$(date +%s.%N)
    rss=$(vm_hwm_mb "$SERVER_PID")
    stop_server
    # CPU %, 100 = one core, over the whole load generator run (signing, warm-up, drain
    # included); other = the machine's busy time minus server and load generator.
    local server_cpu other_cpu
    server_cpu=$(awk -v a="$t0" -v b="$t1" -v s="$c0" -v e="$c1" 'BEGIN { printf "%.0f", (b - a) / (e - s) }')
    other_cpu=$(awk -v m0="$m0" -v m1="$m1" -v a="$t0" -v b="$t1" -v s="$c0" -v e="$c1" -v c="$(kv client_cpu_pct "$out")" \
        'BEGIN { split(m0, x, " "); split(m1, y, " "); v = (y[1] - x[1] - (b - a)) / (e - s) - c; printf "%.0f", v < 0 ? 0 : v }')

    local non2xx errors stuck exhausted ok_total check=n/a
    non2xx=$(kv non2xx "$out"); errors=$(kv errors "$out"); stuck=$(kv stuck "$out")
    exhausted=$(kv exhausted "$out"); ok_total=$(kv ok_total "$out")
    [ "${non2xx:-x}" = 0 ] || fail "$label c=$conns: $non2xx non-2xx answers ($(kv statuses "$out")); see $WORK/loadgen.log"
    [ "${errors:-x}" = 0 ] || fail "$label c=$conns: $errors connection/protocol errors; see $WORK/loadgen.log"
    [ "${stuck:-x}" = 0 ] || fail "$label c=$conns: $stuck connections stuck at the end"
    if [ "${#wrap[@]}" = 0 ]; then
        [ "${exhausted:-x}" = 0 ] || fail "$label c=$conns: ran out of the $requests pre-signed requests; raise REQUESTS"
        if [ "${exhausted:-x}" = 0 ] && [ $(( ${ok_total:-0} * 10 )) -gt $(( requests * 8 )) ]; then
            log "warning: $label c=$conns took $ok_total of the $requests pre-signed requests; raise REQUESTS to keep room"
        fi
    fi
    if [ "$target" = naive ]; then
        # The naive peer's inbox starts empty each run: it must hold exactly the acknowledged count.
        local rows
        rows=$(kv rows "$(timeout 600 "$BIN/inbox" rows "$NAIVE_DB")")
        check="$rows/${ok_total:-?}"
        if [ "${rows:-y}" = "${ok_total:-x}" ]; then
            check="ok:$check"
        else
            fail "$label c=$conns: its inbox holds ${rows:-?} rows, ${ok_total:-?} requests were acknowledged"
            check="MISMATCH:$check"
        fi
    fi
    if [ "$target" = reconciled ]; then
        # Rows after the pre-run max id are this run's (ids only grow); none may be a redelivery.
        local after new_rows redelivered
        after=$(timeout 600 "$BIN/inbox" count "$STORE/reconciled.db" --after-id "$before_id")
        new_rows=$(kv new_rows "$after")
        redelivered=$(kv redelivered "$after")
        check="$new_rows/${ok_total:-?}"
        if [ "${new_rows:-y}" = "${ok_total:-x}" ] && [ "$redelivered" = 0 ]; then
            check="ok:$check"
        else
            fail "$label c=$conns: inbox grew by $new_rows rows, $ok_total requests were acknowledged, $redelivered redelivered"
            check="MISMATCH:$check"
        fi
        echo "$after" >"$WORK/store-size.txt"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$label" "$conns" \
        "$(kv rps "$out")" "$(kv p50_ms "$out")" "$(kv p99_ms "$out")" "$(kv max_ms "$out")" \
        "$non2xx" "$errors" "$rss" "$server_cpu" "$(kv client_cpu_pct "$out")" "$other_cpu" "$ok_total" "$check" >>"$RESULTS"
    tail -n 1 "$RESULTS" | tr '\t' ' ' >&2
}

# Round r starts r-1 places further along the list, so no server always goes first (or last).
for round in $(seq "$ROUNDS"); do
    rot=$(( (round - 1) % ${#TARGET_LIST[@]} ))
    order=("${TARGET_LIST[@]:rot}" "${TARGET_LIST[@]:0:rot}")
    for conns in $CONNS; do
        for target in "${order[@]}"; do run_one "$round" "$target" "$conns"; done
    done
done

# --- report ------------------------------------------------------------------------------
echo
echo "## Runs ($RESULTS; x_PEER = reconciled's 2xx/s over PEER's in the same round and at the same connection count)"
awk -F'\t' -v OFS='\t' '
    NR == FNR { if (FNR > 1) ok[$1 SUBSEP $2 SUBSEP $3] = $4; next }
    FNR == 1 { print $0, "x_baseline", "x_verify", "x_naive"; next }
    { line = $0
      split("baseline verify naive", peers, " ")
      for (j = 1; j <= 3; j++) { b = $1 SUBSEP peers[j] SUBSEP $3
        line = line OFS (($2 ~ /^reconciled/ && (b in ok) && ok[b] > 0) ? sprintf("%.2f", $4 / ok[b]) : "-") }
      print line }' "$RESULTS" "$RESULTS" | column -t -s $'\t'
echo
echo "## Summary: mean over $ROUNDS rounds (min-max); request body $(wc -c <"$WORK/samples/0.body") B"
awk -F'\t' '
    NR == 1 { next }
    { k = $2 SUBSEP $3; if (!(k in n)) { order[++m] = k }
      n[k]++; rps[k] += $4; p50[k] += $5; p99[k] += $6; non[k] += $8
      if (!(k in lo) || $4 < lo[k]) lo[k] = $4; if ($4 > hi[k]) hi[k] = $4
      if ($10 > rss[k]) rss[k] = $10; cpu[k] += $11; ccpu[k] += $12; ocpu[k] += $13
      if ($15 != "n/a") counted[k] = 1
      chk[k] = chk[k] ($15 ~ /^ok/ ? "" : ($15 == "n/a" ? "" : " " $15)) }
    END {
      split("baseline verify naive", peers, " ")
      printf "| target | conns | 2xx/s | min-max | x baseline | x verify | x naive | p50 ms | p99 ms | peak RSS MB | server CPU %% | client CPU %% | other CPU %% | non-2xx | inbox check |\n"
      printf "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
      for (i = 1; i <= m; i++) { k = order[i]; split(k, p, SUBSEP)
        ratios = ""
        for (j = 1; j <= 3; j++) { b = peers[j] SUBSEP p[2]
          ratios = ratios " " ((p[1] ~ /^reconciled/ && (b in n) && rps[b] > 0) ? sprintf("%.2f", (rps[k] / n[k]) / (rps[b] / n[b])) : "-") " |" }
        check = !(k in counted) ? "-" : (chk[k] == "" ? "ok" : "FAIL" chk[k])
        printf "| %s | %s | %.0f | %d-%d |%s %.2f | %.2f | %.1f | %.0f | %.0f | %.0f | %d | %s |\n", p[1], p[2], rps[k] / n[k], lo[k], hi[k], ratios,
          p50[k] / n[k], p99[k] / n[k], rss[k], cpu[k] / n[k], ccpu[k] / n[k], ocpu[k] / n[k], non[k], check } }' "$RESULTS"
echo
echo "For comparison, the project's aims (printed, not checked): reconciled at least 1.5 x naive and"
echo "0.6 x verify in 2xx/s, p99 <= 15 ms at 64 connections, peak RSS <= 64 MB."
if [ -f "$WORK/prefill.txt" ]; then
    echo
    echo "## Prefill"
    grep '^PREFILL' "$WORK/prefill.txt"
    echo "store after the runs: $(cat "$WORK/store-size.txt")"
fi
if [ -e "$WORK/perf.data" ]; then
    echo
    echo "perf profile: $WORK/perf.data (perf report -i $WORK/perf.data --no-children)"
fi
if [ "$FAILED" != 0 ]; then
    echo "SOME CHECKS FAILED (see above)" >&2
    exit 1
fi
echo "All checks passed."
