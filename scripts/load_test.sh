#!/usr/bin/env bash
# The load test of the service example: builds the service and the load
# driver in release mode, then drives the service with and without the pool.
set -euo pipefail
cd "$(dirname "$0")/.."
features="http-body,image,metrics"
cargo build --release --features "$features" --example service
cargo build --release -p tierpool-harness --bin load_test
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/load_test" --service "$target/release/examples/service" "$@"
