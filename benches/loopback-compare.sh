#!/usr/bin/env bash
# Loopback comparison (issue 9): atbus (`atbus bench`, release) next to quinn and raw
# sockets, measured in one run on this machine, printed as one Markdown table.
#
#   benches/loopback-compare.sh            # 3 runs of each, the median is shown
#   RUNS=5 BULK_MB=512 MSGS=2000000 benches/loopback-compare.sh
#
# Every figure is the median of $RUNS runs of the command printed under the table; the
# CPU column is the median user+sys CPU seconds of the whole process (both ends run in
# one process), which stays meaningful when other work shares the cores.
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
BULK_MB=${BULK_MB:-256}   # bulk transfers: MiB streamed
MSGS=${MSGS:-1000000}     # 64 B message-rate runs: messages sent
SIZE=64                   # bytes per small message
BULK_MSG=65536            # atbus UDP bulk: bytes per message
UDP_DGRAM=1200            # raw UDP blast: bytes per datagram (atbus's and quinn's MTU)

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
# measure LABEL NOTE FIELD UNIT SCALE COMMAND...: runs COMMAND $RUNS times, keeps the
# median of FIELD (divided by SCALE) and of the CPU seconds.
measure() {
    local label=$1 note=$2 key=$3 unit=$4 scale=$5
    shift 5
    local values=() cpus=()
    for _ in $(seq "$RUNS"); do
        /usr/bin/time -f '%U %S' -o "$TMP/time" "$@" >"$TMP/out" 2>"$TMP/err" || {
            echo "failed: $*" >&2
            cat "$TMP/err" >&2
            exit 1
        }
        values+=("$(field "$key" <"$TMP/out")")
        cpus+=("$(awk '{ print $1 + $2 }' "$TMP/time")")
    done
    local value cpu
    value=$(printf '%s\n' "${values[@]}" | median)
    cpu=$(printf '%s\n' "${cpus[@]}" | median)
    printf -v value '%.2f' "$(awk -v v="$value" -v s="$scale" 'BEGIN { print v / s }')"
    ROWS+=("| $label | $value $unit | $cpu | $note |")
    COMMANDS+=("$*")
    LAST=$value
    echo "measured: $label: $value $unit (runs: ${values[*]})" >&2
}

# Bulk throughput, MiB/s.
measure "atbus UDP bulk (${BULK_MSG} B messages)" "atbus encrypts nothing" mib_per_sec MiB/s 1 \
    "$ATBUS" bench --transport udp --size "$BULK_MSG" --messages "$BULK_MSGS" --json
ATBUS_UDP=$LAST
measure "quinn bulk, one stream (64 KiB writes)" "quinn: encrypted (TLS 1.3, rustls/ring)" mib_per_sec MiB/s 1 \
    "$QUINN" --bytes "$BULK_BYTES" --chunk 65536
QUINN_BULK=$LAST
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
ratio=$(awk -v a="$ATBUS_UDP" -v q="$QUINN_BULK" 'BEGIN { printf "%.2f", a / q }')
best=$(awk -v t="$ATBUS_TCP" -v u="$ATBUS_UNIX" 'BEGIN { print (t > u ? t : u) }')
verdict() { awk -v ok="$1" 'BEGIN { print (ok ? "met" : "MISSED") }'; }
echo "Goal: atbus UDP bulk >= 1.5 x quinn: ${ratio} x ($(verdict "$(awk -v r="$ratio" 'BEGIN { print (r >= 1.5) }')"); quinn encrypts, atbus does not)."
echo "Goal: >= 5 M msg/s of ${SIZE} B over TCP or Unix: ${best} M msg/s ($(verdict "$(awk -v b="$best" 'BEGIN { print (b >= 5) }')"))."
echo
echo "Commands (each run $RUNS times):"
printf '    %s\n' "${COMMANDS[@]}"
