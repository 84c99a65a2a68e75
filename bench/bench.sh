#!/usr/bin/env bash
# Loopback benchmark: zigtorrent vs libtorrent's leecher, each a fresh process finding a fresh
# libtorrent seeder through opentracker (see bench.py; `--mode quick` is the old warm shortcut).
#
#   bench/bench.sh [ZIGTORRENT_BINARY] [bench.py options: --rounds N --payload big,many,enc --mode user|quick ...]
#
# The binary defaults to $ZIGTORRENT_BIN, else ${CARGO_TARGET_DIR:-<repo>/target}/release/zigtorrent;
# build it first with `cargo build --release -p zigtorrent`. Payloads are cached in /tmp/zt-bench.
set -euo pipefail
# Loopback only: no public DHT routers, no LAN multicast.
export ZIGTORRENT_DHT=false ZIGTORRENT_LSD=false

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
bin="${ZIGTORRENT_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/zigtorrent}"
if [[ $# -gt 0 && "$1" != -* ]]; then
    bin="$1"
    shift
fi

py=/usr/bin/python3 # Debian's python3-libtorrent is built for the system interpreter only
"$py" -c 'import libtorrent' 2>/dev/null || {
    echo "bench.sh: $py cannot import libtorrent: apt-get install python3-libtorrent" >&2
    exit 2
}

driver=""
cleanup() {
    # bench.py stops what it started; this only makes sure bench.py itself is gone.
    if [[ -n "$driver" ]] && kill -0 "$driver" 2>/dev/null; then
        kill -TERM "$driver" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$driver" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$driver" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$py" -u "$here/bench.py" --bin "$bin" "$@" &
driver=$!
rc=0
wait "$driver" || rc=$?
driver=""
exit "$rc"
