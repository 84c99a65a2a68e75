#!/usr/bin/env bash
# Interop suite: zigtorrent against libtorrent (python3-libtorrent) and opentracker, on 127.0.0.1.
#
#   tests/interop/run.sh [ZIGTORRENT_BINARY] [interop.py options...]
#
# The binary defaults to $ZIGTORRENT_BIN, else ${CARGO_TARGET_DIR:-<repo>/target}/release/zigtorrent.
# Options are passed on to interop.py: --lt-only (harness self-tests only), --only NAME,..., --keep.
# Needs: apt-get install python3-libtorrent opentracker (.ci/run does it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

bin="${ZIGTORRENT_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/zigtorrent}"
if [[ $# -gt 0 && "$1" != -* ]]; then
    bin="$1"
    shift
fi

py=/usr/bin/python3 # Debian's python3-libtorrent is built for the system interpreter only
if ! "$py" -c 'import libtorrent' 2>/dev/null; then
    echo "run.sh: $py cannot import libtorrent: apt-get install python3-libtorrent" >&2
    exit 2
fi
if ! command -v opentracker >/dev/null; then
    echo "run.sh: opentracker not found: apt-get install opentracker" >&2
    exit 2
fi

driver=""
cleanup() {
    # The driver kills what it started; this only makes sure the driver itself is gone.
    if [[ -n "$driver" ]] && kill -0 "$driver" 2>/dev/null; then
        kill -TERM "$driver" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$driver" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$driver" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$py" -u "$here/interop.py" --bin "$bin" "$@" &
driver=$!
rc=0
wait "$driver" || rc=$?
driver=""
exit "$rc"
