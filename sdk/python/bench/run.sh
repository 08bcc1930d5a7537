#!/usr/bin/env bash
# Runs the drain benchmark (drain.py) in a venv of its own: the jobctl wheel
# built from this checkout, Celery and RQ (requirements.txt). Arguments go
# to drain.py; the jobctl server is target/release/jobctl-server unless
# --server-bin says otherwise (cargo build --release -p jobctl-server).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/jobctl-pysdk-bench"
if ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
    rm -rf "$venv"
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" \
        hatchling grpcio-tools mypy-protobuf
    cp "$here/requirements.txt" "$venv/requirements.txt"
fi
dist="$(mktemp -d)"
trap 'rm -rf "$dist"' EXIT
"$venv/bin/pip" wheel --quiet --disable-pip-version-check --no-build-isolation --no-deps -w "$dist" "$here/.."
"$venv/bin/pip" install --quiet --disable-pip-version-check "$dist"/jobctl-*.whl
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$dist"/jobctl-*.whl
exec "$venv/bin/python" "$here/drain.py" "$@"
