#!/usr/bin/env bash
# Sweeps atbus, KCP (turbo) and quinn over a grid of simulated links and workloads
# that are not the scenarios of issue 9 (docs/comparison.md, "Sweep"), and prints one
# Markdown row per cell with each transport's pooled p99 / max (ms) and wire bytes per
# payload byte, then the cells where atbus's p99, max or wire bytes are not below
# both peers' (wire bytes: below KCP's). Everything runs in-process, in virtual time.
#
#   bash benches/netsim-sweep.sh [SEEDS] [MESSAGES]   # defaults: 5 seeds, 1000 messages
#   NETSIM_COMPARE=/tmp/netsim-compare bash benches/netsim-sweep.sh   # another build
#
# The grid:
# - links: one-way delay 5 / 40 / 150 ms x jitter 0 / 10 / 50 % of the delay x loss
#   0.5 / 2 / 5 / 10 / 20 % x mean burst 1 / 3 / 6 datagrams (135 links), with
#   100-1000 B messages every 10 ms, one way;
# - workloads, on six of those links: 8 B and 4 KB messages, intervals 1 and 50 ms
#   (2 x and 0.5 x MESSAGES), echo of 100-1000 B and of 8 B messages every 20 ms;
# - a bandwidth-limited link with a small queue (1 mbit/s, 16 KB; and 5 mbit/s,
#   8 KB at 1 ms intervals), without and with 1 % loss.
#
# A cell counts as met when atbus delivered everything and its pooled p99 and max are
# below those of each peer that delivered everything (a peer that lost messages has
# no comparable tail, as in `netsim-compare --table`), and its wire bytes below KCP's.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:-5}"
messages="${2:-1000}"
# NETSIM_COMPARE=path runs another build (e.g. a copy of an earlier one) instead.
if [[ -n "${NETSIM_COMPARE:-}" ]]; then
    bin="$NETSIM_COMPARE"
else
    cargo build --release -q -p atbus-benches --bin netsim-compare
    bin=target/release/netsim-compare
fi

cells=0
failed=()
echo "netsim-sweep: $seeds seeds, $messages messages per cell (one way unless 'echo')"
echo
echo "| link | workload | atbus p99 / max / wire | kcp p99 / max / wire | quinn p99 / max / wire | not below both |"
echo "|---|---|---|---|---|---|"

# cell LINK WORKLOAD-LABEL FLAGS...
cell() {
    local link="$1" label="$2"
    shift 2
    local out
    out=$("$bin" --table --seeds "$seeds" --path "$link" "$@")
    local row
    row=$(awk -F'|' -v link="$link" -v label="$label" '
        function trim(s) { gsub(/^ +| +$/, "", s); return s }
        /^\| (atbus|kcp|quinn) \|/ {
            t = trim($2); split(trim($3), d, "/"); split(d[2], dd, " ")
            complete[t] = (d[1] + 0 == dd[1] + 0)
            p99[t] = trim($5) + 0; mx[t] = trim($6) + 0; wire[t] = trim($7) + 0
            text[t] = sprintf("%s / %s / %s%s", trim($5), trim($6), trim($7), complete[t] ? "" : " (undelivered)")
        }
        END {
            miss = ""
            if (!complete["atbus"]) miss = miss " undelivered"
            for (i = 1; i <= 2; i++) {
                peer = (i == 1) ? "kcp" : "quinn"
                if (!complete[peer]) continue
                if (p99["atbus"] >= p99[peer]) miss = miss " p99<" peer
                if (mx["atbus"] >= mx[peer]) miss = miss " max<" peer
            }
            if (wire["atbus"] >= wire["kcp"]) miss = miss " wire<kcp"
            if (miss == "") miss = "-"; else miss = substr(miss, 2)
            printf "| %s | %s | %s | %s | %s | %s |\n", link, label, text["atbus"], text["kcp"], text["quinn"], miss
        }' <<<"$out")
    echo "$row"
    cells=$((cells + 1))
    if [[ "$row" != *"| - |" ]]; then
        failed+=("$row")
    fi
}

base=(--messages "$messages" --size 100-1000 --interval 10ms)

# Links: delay x jitter x loss x burst.
for delay in 5 40 150; do
    for jitter_pct in 0 10 50; do
        jitter=$(awk -v d="$delay" -v p="$jitter_pct" 'BEGIN { printf "%g", d * p / 100 }')
        for loss in 0.5 2 5 10 20; do
            for burst in 1 3 6; do
                link="delay=${delay}ms,jitter=${jitter}ms,loss=${loss}%"
                [[ $burst -gt 1 ]] && link="$link,burst=$burst"
                cell "$link" "100-1000 B / 10 ms" "${base[@]}"
            done
        done
    done
done

# Workloads, on six links.
for link in delay=40ms,jitter=4ms,loss=2% delay=40ms,jitter=4ms,loss=10%,burst=3 \
    delay=5ms,jitter=2.5ms,loss=5% delay=150ms,jitter=15ms,loss=2%,burst=3 \
    delay=40ms,jitter=20ms,loss=0.5% delay=40ms,jitter=4ms,loss=20%,burst=6; do
    cell "$link" "8 B / 10 ms" --messages "$messages" --size 8 --interval 10ms
    cell "$link" "4 KB / 10 ms" --messages "$messages" --size 4096 --interval 10ms
    cell "$link" "100-1000 B / 1 ms" --messages "$((messages * 2))" --size 100-1000 --interval 1ms
    cell "$link" "100-1000 B / 50 ms" --messages "$((messages / 2))" --size 100-1000 --interval 50ms
    cell "$link" "100-1000 B / 10 ms echo" "${base[@]}" --echo
    cell "$link" "8 B / 20 ms echo" --messages "$messages" --size 8 --interval 20ms --echo
done

# A bandwidth-limited link with a small queue.
for loss in 0 1; do
    cell "delay=20ms,bw=1mbit,queue=16kb,loss=${loss}%" "100-1000 B / 10 ms" "${base[@]}"
    cell "delay=20ms,bw=5mbit,queue=8kb,loss=${loss}%" "100-1000 B / 1 ms" \
        --messages "$((messages * 2))" --size 100-1000 --interval 1ms
done

echo
echo "${#failed[@]} of $cells cells not met:"
echo
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "| link | workload | atbus p99 / max / wire | kcp p99 / max / wire | quinn p99 / max / wire | not below both |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${failed[@]}"
fi
