#!/usr/bin/env bash
# Wall time of tierpool against plain Vec on glibc, jemalloc and mimalloc
# (one binary per global allocator) and against an oracle that reuses
# pre-faulted buffers: the mixed steady state and read_to_end in steady
# state, as ratios to the oracle, from one command; then the fast path
# (get(4096) + drop) in nanoseconds, tierpool and Vec in each binary.
#
#   scripts/peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

declare -A bin
for alloc in glibc jemalloc mimalloc globalpool; do
    features=""
    [ "$alloc" != glibc ] && features="--features $alloc"
    # shellcheck disable=SC2086
    cargo build --quiet --release -p tierpool-harness $features --target-dir "target/$alloc" --bin peers
    bin[$alloc]="target/$alloc/release/peers"
done

run() { "${bin[$1]}" "$2"; }
declare -A t
while read -r w v rest; do t[oracle,$w]=$v; done < <(run glibc oracle)
while read -r w v rest; do t[pool,$w]=$v; t[misses,$w]=${rest#misses_per_read=}; done < <(run glibc tierpool)
for alloc in glibc jemalloc mimalloc globalpool; do
    while read -r w v rest; do t[$alloc,$w]=$v; done < <(run "$alloc" vec)
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
printf '%-14s %10s %9s %9s %12s %13s %13s %15s\n' \
    "workload" "oracle µs" "tierpool" "misses" "Vec glibc" "Vec jemalloc" "Vec mimalloc" "Vec GlobalPool"
for w in mixed-1t mixed-2t read-300000 read-3145728 read-5000000 read-9000000 read-12000000 read-17000000 read-25000000 read-67108864; do
    o=${t[oracle,$w]}
    printf '%-14s %10s %8sx %9s %11sx %12sx %12sx %14sx\n' "$w" "$o" \
        "$(ratio "${t[pool,$w]}" "$o")" "${t[misses,$w]:--}" \
        "$(ratio "${t[glibc,$w]}" "$o")" "$(ratio "${t[jemalloc,$w]}" "$o")" \
        "$(ratio "${t[mimalloc,$w]}" "$o")" "$(ratio "${t[globalpool,$w]}" "$o")"
done
echo "time as a multiple of the oracle's (medians of 7 rounds; mixed: 400 jobs a thread; read: per read; misses: the pool's per read/job)"

declare -A f
for alloc in glibc jemalloc mimalloc globalpool; do
    while read -r w v; do f[$alloc,$w]=$v; done < <(run "$alloc" fast)
done
echo
printf '%-26s %12s %13s %13s\n' "fast path (ns per op)" "glibc" "jemalloc" "mimalloc"
for w in fast-tierpool fast-vec; do
    printf '%-26s %12s %13s %13s\n' "${w#fast-} get(4096) + drop" \
        "${f[glibc,$w]}" "${f[jemalloc,$w]}" "${f[mimalloc,$w]}"
done
for w in large-tierpool large-vec; do
    printf '%-26s %12s %13s %13s\n' "${w#large-} get(1 MiB) + drop" \
        "${f[glibc,$w]}" "${f[jemalloc,$w]}" "${f[mimalloc,$w]}"
done
for w in 4096 1048576; do
    printf '%-26s %12s %13s %13s\n' "tierpool cross-thread $w" \
        "${f[glibc,cross-tierpool-$w]}" "${f[jemalloc,cross-tierpool-$w]}" "${f[mimalloc,cross-tierpool-$w]}"
    printf '%-26s %12s %13s %13s\n' "Vec cross-thread $w" \
        "${f[glibc,cross-vec-$w]}" "${f[jemalloc,cross-vec-$w]}" "${f[mimalloc,cross-vec-$w]}"
done
echo "wall time, medians of 7 rounds: 10 million get + drop pairs, nothing written; cross-thread: buffers filled on one thread, dropped on another in batches of 256; each column is one binary with that global allocator"

echo
printf '%-30s %10s %10s %10s %12s %9s\n' "plain code" "glibc" "jemalloc" "mimalloc" "GlobalPool" "GP/glibc"
for w in small-box small-vec grow-64mib cross-vec-1048576; do
    printf '%-30s %10s %10s %10s %12s %8sx\n' "$w" "${f[glibc,$w]}" "${f[jemalloc,$w]}" \
        "${f[mimalloc,$w]}" "${f[globalpool,$w]}" "$(ratio "${f[globalpool,$w]}" "${f[glibc,$w]}")"
done
echo "ns per 48-byte box / per short Vec<u32> / µs per Vec grown to 64 MiB by 64 KiB appends / ns per 1 MiB Vec dropped on another thread; GlobalPool's inner allocator is glibc"

# The mixed workload copies 16 KiB rows; how fast depends on where the
# rows' source sits against the destination (see harness/src/workload.rs):
# tierpool and both oracles at four source offsets, in the glibc binary.
echo
printf '%-18s %11s %11s %13s %10s %12s\n' "mixed, row at" "tierpool µs" "oracle µs" "page-aligned" "x oracle" "x paged"
for off in 0 16 32 48; do
    declare -A m=()
    while read -r subject w v rest; do m[$subject,$w]=$v; done < \
        <(TIERPOOL_ROW_OFFSET=$off "${bin[glibc]}" tierpool,oracle,oracle-paged 2>/dev/null)
    for th in 1 2; do
        w="mixed-${th}t"
        printf '%-18s %11s %11s %13s %9sx %11sx\n' "$off mod 64, ${th}t" "${m[tierpool,$w]}" \
            "${m[oracle,$w]}" "${m[oracle-paged,$w]}" \
            "$(ratio "${m[tierpool,$w]}" "${m[oracle,$w]}")" "$(ratio "${m[tierpool,$w]}" "${m[oracle-paged,$w]}")"
    done
done
echo "oracle: pre-faulted Vecs from glibc (16 bytes into their pages); page-aligned: the same, page-aligned like the pool's blocks"

# The mixed workload once more, each allocator's binary in one process
# with the subjects' rounds in turn (a change in the machine's load falls
# on all of them alike): tierpool and plain Vec against the oracle (that
# binary's pre-faulted Vecs), and tierpool against Vec. In the GlobalPool
# binary, plain Vec is GlobalPool's and so are the oracle's buffers.
echo
printf '%-22s %11s %11s %11s %10s %10s %13s\n' "mixed, rounds in turn" "tierpool µs" "Vec µs" "oracle µs" \
    "tierpool x" "Vec x" "tierpool/Vec"
for alloc in glibc jemalloc mimalloc globalpool; do
    declare -A m=()
    while read -r subject w v rest; do m[$subject,$w]=$v; done < <("${bin[$alloc]}" tierpool,vec,oracle 2>/dev/null)
    for th in 1 2; do
        w="mixed-${th}t"
        printf '%-22s %11s %11s %11s %9sx %9sx %12sx\n' "$alloc, ${th}t" "${m[tierpool,$w]}" "${m[vec,$w]}" \
            "${m[oracle,$w]}" "$(ratio "${m[tierpool,$w]}" "${m[oracle,$w]}")" \
            "$(ratio "${m[vec,$w]}" "${m[oracle,$w]}")" "$(ratio "${m[tierpool,$w]}" "${m[vec,$w]}")"
    done
done
echo "medians of 7 rounds, 400 jobs a thread; the rows' source 16 bytes into a cache line (TIERPOOL_ROW_OFFSET)"

# Steady read_to_end the same way: tierpool, plain Vec::read_to_end and the
# oracle (one pre-faulted Vec, cleared) in one process, rounds in turn.
echo
printf '%-24s %11s %9s %9s %10s %10s %13s\n' "read_to_end, in turn" "tierpool µs" "Vec µs" "oracle µs" \
    "tierpool x" "Vec x" "Vec/tierpool"
for alloc in glibc jemalloc mimalloc; do
    declare -A r=()
    while read -r subject w v rest; do r[$subject,$w]=$v; done < <("${bin[$alloc]}" tierpool,vec,oracle reads 2>/dev/null)
    for w in read-300000 read-3145728 read-5000000 read-9000000 read-12000000 read-17000000 read-25000000 read-67108864; do
        printf '%-24s %11s %9s %9s %9sx %9sx %12sx\n' "$alloc, ${w#read-}" "${r[tierpool,$w]}" "${r[vec,$w]}" \
            "${r[oracle,$w]}" "$(ratio "${r[tierpool,$w]}" "${r[oracle,$w]}")" \
            "$(ratio "${r[vec,$w]}" "${r[oracle,$w]}")" "$(ratio "${r[vec,$w]}" "${r[tierpool,$w]}")"
    done
done
echo "medians of 7 rounds of 256 MiB each, per read; the stream gives at most 64 KiB a call"
