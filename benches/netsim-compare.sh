#!/usr/bin/env bash
# Runs the simulator comparison of docs/comparison.md: atbus, KCP (turbo) and quinn on
# identical links and seeds, scenarios (a)-(d), and prints each table with the
# command that produced it. Everything runs in-process, in virtual time; no network.
#
#   bash benches/netsim-compare.sh [SEEDS]      # default 10 seeds per scenario
#
# Also writes docs/comparison-a.svg (latency distributions of scenario (a)).
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:-10}"
cargo build --release -q -p atbus-benches --bin netsim-compare
bin=target/release/netsim-compare

run() {
    local title="$1"
    shift
    echo "### $title"
    echo
    echo '```sh'
    echo "netsim-compare --table --seeds $seeds $*"
    echo '```'
    echo
    "$bin" --table --seeds "$seeds" "$@"
    echo
}

a=(--path delay=30ms,jitter=32.5ms,loss=5% --messages 1000 --size 8 --interval 20ms --echo)
run "(a) KCP's own test: 8 B every 20 ms echoed, RTT 60-125 ms, 10 % round-trip loss" "${a[@]}"
run "(b) typical network: 0.2 % loss, RTT 50-90 ms" \
    --path delay=25ms,jitter=20ms,loss=0.2% --messages 5000 --size 100-1000 --interval 10ms
run "(b') typical network, echoed" \
    --path delay=25ms,jitter=20ms,loss=0.2% --messages 5000 --size 100-1000 --interval 10ms --echo
run "(c) bursty 2 % loss (mean burst 3 datagrams), RTT 50-90 ms" \
    --path delay=25ms,jitter=20ms,loss=2%,burst=3 --messages 5000 --size 100-1000 --interval 10ms
run "(c') bursty 2 % loss, echoed" \
    --path delay=25ms,jitter=20ms,loss=2%,burst=3 --messages 5000 --size 100-1000 --interval 10ms --echo
d=(--path delay=20ms,bw=20mbit,queue=64kb --messages 10000 --size 1000 --interval 0)
run "(d) 10 MB bulk over 20 mbit/s, 64 KiB queue, 20 ms one way" "${d[@]}"
run "(d) with KCP windows of 128 segments" "${d[@]}" --kcp-window 128
run "(d) with KCP windows of 32 segments (the KCP default send window)" "${d[@]}" --kcp-window 32

"$bin" --seeds "$seeds" "${a[@]}" --plot docs/comparison-a.svg
