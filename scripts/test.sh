#!/usr/bin/env bash
# The project's one test command: checks formatting, lints (Rust and proto)
# and runs every test, including the end-to-end suite against real
# redis-server processes.
#
#   ./scripts/test.sh            everything
#   ./scripts/test.sh <filter>   the same, with the tests narrowed to <filter>
#                                (passed to cargo nextest / cargo test)
#
# Needs: redis-server and libfaketime (installed with apt-get when run as root
# on Debian/Ubuntu), Node's npx for buf, and cargo-nextest (installed if
# missing; otherwise falls back to cargo test).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# --- system packages -------------------------------------------------------

have_libfaketime() {
    [[ -n "${JOBCTL_TEST_LIBFAKETIME:-}" && -e "${JOBCTL_TEST_LIBFAKETIME}" ]] && return 0
    compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null \
        || [[ -e /usr/lib/faketime/libfaketime.so.1 ]] \
        || [[ -e /usr/lib64/faketime/libfaketime.so.1 ]] \
        || [[ -e /usr/local/lib/faketime/libfaketime.so.1 ]]
}

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
have_libfaketime || missing+=(faketime)

if ((${#missing[@]})); then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        step "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends "${missing[@]}" \
            || { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
    else
        die "the tests need: ${missing[*]}
  Debian/Ubuntu: sudo apt-get install -y ${missing[*]}
  Fedora:        sudo dnf install -y redis libfaketime
  macOS:         brew install redis libfaketime (then set JOBCTL_TEST_LIBFAKETIME)"
    fi
fi
command -v redis-server >/dev/null || die "redis-server is still missing"
have_libfaketime || die "libfaketime is still missing (apt-get install faketime)"

# --- cargo-nextest ---------------------------------------------------------

runner=nextest
if ! cargo nextest --version >/dev/null 2>&1; then
    step "installing cargo-nextest"
    if ! cargo install cargo-nextest --locked; then
        echo "warning: could not install cargo-nextest; running the tests with cargo test" >&2
        runner=test
    fi
fi

# --- checks ----------------------------------------------------------------

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "buf lint proto"
if command -v buf >/dev/null; then
    buf lint proto
elif command -v npx >/dev/null; then
    npx --yes @bufbuild/buf@1 lint proto
elif command -v npm >/dev/null; then
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/jobctl-buf"
    [[ -x "$cache/node_modules/.bin/buf" ]] \
        || npm install --prefix "$cache" --no-save --no-audit --no-fund @bufbuild/buf@1
    "$cache/node_modules/.bin/buf" lint proto
else
    die "buf lint needs buf, or Node.js (npx) to fetch it: https://buf.build/docs/installation"
fi

# --- tests -----------------------------------------------------------------

# The end-to-end tests also run the jobctl-server binary as a process.
step "cargo build --workspace --bins"
cargo build --workspace --bins

# The end-to-end tests mostly wait on timers and processes, not the CPU, so
# they run several per core (JOBCTL_TEST_THREADS to change).
threads="${JOBCTL_TEST_THREADS:-8}"
if [[ "$runner" == nextest ]]; then
    step "cargo nextest run --workspace --test-threads $threads"
    cargo nextest run --workspace --no-fail-fast --test-threads "$threads" "$@"
    # nextest does not run doctests.
    step "cargo test --workspace --doc"
    cargo test --workspace --doc "$@"
else
    step "cargo test --workspace"
    cargo test --workspace --no-fail-fast "$@" -- --test-threads "$threads"
fi

step "all checks passed"
