#!/usr/bin/env bash
# Loopback comparison (issue 9): atbus (`atbus bench`, release) next to quinn and raw
# sockets, measured in one run on this machine, printed as one Markdown table.
#
#   benches/loopback-compare.sh            # 3 runs of each, the median is shown
#   RUNS=5 BULK_MB=512 MSGS=2000000 benches/loopback-compare.sh
#
# Every figure is the median of $RUNS runs of the command printed under the table (the
# three UDP bulk commands run interleaved, round by round); the
# CPU column is the median user+sys CPU seconds of the whole process (both ends run in
# one process), which stays meaningful when other work shares the cores.
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
BULK_MB=${BULK_MB:-256}   # bulk transfers: MiB streamed
MSGS=${MSGS:-1000000}     # 64 B message-rate runs: messages sent
SIZE=64                   # bytes per small message
BULK_MSG=65536            # atbus UDP bulk: bytes per message
UDP_DGRAM=1200            # raw UDP blast: bytes per datagram

# Built one package at a time: together, cargo would unify their features and
# rebuild both.
cargo build --release --quiet -p atbus-cli
cargo build --release --quiet -p atbus-benches --bins
BIN=target/release
ATBUS=$BIN/atbus
QUINN=$BIN/loopback-quinn
RAW=$BIN/loopback-raw
BULK_BYTES=$((BULK_MB * 1024 * 1024))
BULK_MSGS=$((BULK_BYTES / BULK_MSG))
UDP_COUNT=$((BULK_BYTES / UDP_DGRAM))

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# field NAME: the number after "NAME": in a line of JSON on stdin.
field() { grep -o "\"$1\":[-0-9.e+]*" | head -n 1 | cut -d: -f2; }

ROWS=()
COMMANDS=()
declare -A VALUES CPUS
# run_once KEY FIELD COMMAND...: runs COMMAND once, appends FIELD of its JSON output
# to VALUES[KEY] and its user+sys CPU seconds to CPUS[KEY].
run_once() {
    local key=$1 field_name=$2
    shift 2
    /usr/bin/time -f '%U %S' -o "$TMP/time" "$@" >"$TMP/out" 2>"$TMP/err" || {
        echo "failed: $*" >&2
        cat "$TMP/err" >&2
        exit 1
    }
    VALUES[$key]+="$(field "$field_name" <"$TMP/out") "
    cp "$TMP/out" "$TMP/out.$key"
    CPUS[$key]+="$(awk '{ print $1 + $2 }' "$TMP/time") "
}
# row KEY LABEL NOTE UNIT SCALE COMMAND...: the table row of KEY's medians (the value
# divided by SCALE); sets LAST and LAST_CPU.
row() {
    local key=$1 label=$2 note=$3 unit=$4 scale=$5
    shift 5
    local value cpu
    value=$(printf '%s\n' ${VALUES[$key]} | median)
    cpu=$(printf '%s\n' ${CPUS[$key]} | median)
    printf -v value '%.2f' "$(awk -v v="$value" -v s="$scale" 'BEGIN { print v / s }')"
    ROWS+=("| $label | $value $unit | $cpu | $note |")
    COMMANDS+=("$*")
    LAST=$value
    LAST_CPU=$cpu
    echo "measured: $label: $value $unit, $cpu CPU s (runs: ${VALUES[$key]}; CPU ${CPUS[$key]})" >&2
}
# measure LABEL NOTE FIELD UNIT SCALE COMMAND...: runs COMMAND $RUNS times in a row
# and adds the row of its medians.
measure() {
    local label=$1 note=$2 key=$3 unit=$4 scale=$5
    shift 5
    for _ in $(seq "$RUNS"); do
        run_once "$label" "$key" "$@"
    done
    row "$label" "$label" "$note" "$unit" "$scale" "$@"
}

# Bulk throughput, MiB/s: atbus at quinn's datagram size, atbus at its default
# (path-following) ceiling, and quinn, interleaved round by round so that a change
# in the machine's load falls on all three alike.
ATBUS_CAPPED=("$ATBUS" bench --transport udp --size "$BULK_MSG" --messages "$BULK_MSGS" --udp-mtu-cap 1452 --json)
ATBUS_ROUTE=("$ATBUS" bench --transport udp --size "$BULK_MSG" --messages "$BULK_MSGS" --json)
QUINN_CMD=("$QUINN" --bytes "$BULK_BYTES" --chunk 65536)
for _ in $(seq "$RUNS"); do
    run_once capped mib_per_sec "${ATBUS_CAPPED[@]}"
    run_once route mib_per_sec "${ATBUS_ROUTE[@]}"
    run_once quinn mib_per_sec "${QUINN_CMD[@]}"
done
# The datagram size atbus's path reached (`mtu` of the last run): on IPv4 loopback
# lo's MTU 65536, which IPv4 reports as 65535, less 28 bytes of headers.
ROUTE_DGRAM=$(field mtu <"$TMP/out.route")
row capped "atbus UDP bulk, 1452 B datagrams (${BULK_MSG} B messages)" \
    "quinn's datagram size; atbus encrypts nothing" MiB/s 1 "${ATBUS_CAPPED[@]}"
CAPPED=$LAST CAPPED_CPU=$LAST_CPU
row route "atbus UDP bulk, route-following ceiling (${ROUTE_DGRAM} B datagrams)" \
    "the default: PMTUD up to the route's MTU" MiB/s 1 "${ATBUS_ROUTE[@]}"
ROUTE=$LAST ROUTE_CPU=$LAST_CPU
row quinn "quinn bulk, one stream (64 KiB writes, 1452 B datagrams)" \
    "quinn: encrypted (TLS 1.3, rustls/ring)" MiB/s 1 "${QUINN_CMD[@]}"
QUINN_BULK=$LAST QUINN_CPU=$LAST_CPU
measure "raw UDP blast (${UDP_DGRAM} B datagrams, send)" "received count; no reliability" mib_per_sec MiB/s 1 \
    "$RAW" udp --size "$UDP_DGRAM" --messages "$UDP_COUNT"
measure "raw TCP bulk (64 KiB writes)" "baseline" mib_per_sec MiB/s 1 \
    "$RAW" stream --transport tcp --count "$BULK_BYTES"
measure "raw Unix stream bulk (64 KiB writes)" "baseline" mib_per_sec MiB/s 1 \
    "$RAW" stream --transport unix --count "$BULK_BYTES"

# Message rate of 64 B messages, millions of messages per second.
measure "atbus ${SIZE} B messages, TCP" "batched send_many" msgs_per_sec "M msg/s" 1e6 \
    "$ATBUS" bench --transport tcp --size "$SIZE" --messages "$MSGS" --json
ATBUS_TCP=$LAST
measure "atbus ${SIZE} B messages, Unix stream" "batched send_many" msgs_per_sec "M msg/s" 1e6 \
    "$ATBUS" bench --transport unix --size "$SIZE" --messages "$MSGS" --json
ATBUS_UNIX=$LAST
measure "atbus ${SIZE} B messages, UDP" "batched send_many" msgs_per_sec "M msg/s" 1e6 \
    "$ATBUS" bench --transport udp --size "$SIZE" --messages "$MSGS" --json
measure "raw TCP ${SIZE} B length-prefixed messages" "BufWriter / BufReader, baseline" msgs_per_sec "M msg/s" 1e6 \
    "$RAW" stream --transport tcp --size "$SIZE" --count "$((MSGS * 10))"
measure "raw Unix ${SIZE} B length-prefixed messages" "BufWriter / BufReader, baseline" msgs_per_sec "M msg/s" 1e6 \
    "$RAW" stream --transport unix --size "$SIZE" --count "$((MSGS * 10))"

echo
echo "Loopback, $(nproc) cores, median of $RUNS runs; CPU = user+sys seconds of the process."
echo
echo "| measurement | median | CPU s | note |"
echo "|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
# ratio A B: A / B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
verdict() { awk -v r="$1" 'BEGIN { print (r >= 1.5 ? "met" : "MISSED") }'; }
for which in capped route; do
    if [ "$which" = capped ]; then
        name="at 1452 B datagrams (quinn's size)" wall=$CAPPED cpu=$CAPPED_CPU
    else
        name="at its default route-following ceiling" wall=$ROUTE cpu=$ROUTE_CPU
    fi
    by_wall=$(ratio "$wall" "$QUINN_BULK")
    by_cpu=$(ratio "$QUINN_CPU" "$cpu") # the same bytes: bytes per CPU second
    echo "Goal: atbus UDP bulk >= 1.5 x quinn, $name: ${by_wall} x by wall clock ($(verdict "$by_wall")), ${by_cpu} x by CPU per byte ($(verdict "$by_cpu")); quinn encrypts, atbus does not."
done
best=$(awk -v t="$ATBUS_TCP" -v u="$ATBUS_UNIX" 'BEGIN { print (t > u ? t : u) }')
echo "Goal: >= 5 M msg/s of ${SIZE} B over TCP or Unix: ${best} M msg/s ($(awk -v b="$best" 'BEGIN { print (b >= 5 ? "met" : "MISSED") }'))."
echo
echo "Commands (each run $RUNS times):"
printf '    %s\n' "${COMMANDS[@]}"
