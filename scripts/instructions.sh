#!/usr/bin/env bash
# Instructions per operation, counted by callgrind (exact, whatever the
# machine's load), for tierpool and for plain Vec on glibc, jemalloc and
# mimalloc: one binary per global allocator, each run for two values of N;
# the difference divided by the difference of N is one operation's cost.
#
#   scripts/instructions.sh [--budget N]
#
# With --budget, exits non-zero if tierpool's get + drop costs more than N
# instructions (.ci/run enforces the project's budget this way).
set -euo pipefail
cd "$(dirname "$0")/.."

budget=""
if [ "${1:-}" = "--budget" ]; then budget="$2"; fi
N1=20000
N2=120000
export CARGO_TERM_COLOR=never

command -v valgrind >/dev/null || { echo "instructions: valgrind is not installed" >&2; exit 2; }

declare -A bin
for alloc in glibc jemalloc mimalloc; do
    features=""
    [ "$alloc" != glibc ] && features="--features $alloc"
    # shellcheck disable=SC2086
    cargo build --quiet --release -p tierpool-harness $features --target-dir "target/$alloc" --bin instructions
    bin[$alloc]="target/$alloc/release/instructions"
done

count() { # binary subject op n -> instructions
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" "$2" "$3" "$4" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

per_op() { # binary subject op -> instructions per operation
    local a b
    a=$(count "$1" "$2" "$3" "$N1")
    b=$(count "$1" "$2" "$3" "$N2")
    echo $(( (b - a) / (N2 - N1) ))
}

printf '%-14s %10s %14s %16s %16s\n' "op" "tierpool" "Vec (glibc)" "Vec (jemalloc)" "Vec (mimalloc)"
for op in get-drop get-drop-large freeze cross-thread; do
    tp=$(per_op "${bin[glibc]}" tierpool "$op")
    printf '%-14s %10s %14s %16s %16s\n' "$op" "$tp" \
        "$(per_op "${bin[glibc]}" vec "$op")" \
        "$(per_op "${bin[jemalloc]}" vec "$op")" \
        "$(per_op "${bin[mimalloc]}" vec "$op")"
    if [ "$op" = get-drop ]; then get_drop=$tp; fi
done
echo "instructions per operation (callgrind; N = $N1 and $N2; 4096-byte buffers, get-drop-large 1 MiB)"

if [ -n "$budget" ] && [ "$get_drop" -gt "$budget" ]; then
    echo "FAILED: tierpool's get + drop costs $get_drop instructions, over the budget of $budget" >&2
    exit 1
fi
