#!/usr/bin/env bash
# Checks the Helm chart (deploy/helm/jobctl) and the Dockerfile offline:
# helm lint --strict and helm template through Helm's own library, the
# rendered objects against Kubernetes' schemas, the restricted Pod Security
# Standard, and the chart's own promises. See deploy/helm/check.py.
#
#   ./scripts/helm-check.sh                       run every check
#   ./scripts/helm-check.sh --show all-features   also print that scenario's manifests
#
# With --server-bin PATH it also runs that jobctl-server against a private
# redis-server, once with the default values and once with the "secured"
# scenario's (TLS, Redis TLS, auth, OTLP), whose certificates it makes with
# the openssl CLI (installed with apt-get when missing and run as root).
#
# Needs python3 (3.10+) with venv; installs the pinned packages of
# deploy/helm/requirements.txt from PyPI into a venv under
# ${XDG_CACHE_HOME:-~/.cache}/jobctl-helm-venv on first use.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "error: helm-check needs python3" >&2; exit 1; }
venv="${JOBCTL_HELM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/jobctl-helm-venv}"
requirements=deploy/helm/requirements.txt
stamp="$venv/.requirements"

if ! cmp -s "$requirements" "$stamp" 2>/dev/null; then
    echo "installing $(grep -cv '^#' "$requirements") Python packages into $venv"
    rm -rf "$venv"
    if ! "$python" -m venv "$venv"; then
        echo "error: cannot create a venv (Debian/Ubuntu: apt-get install python3-venv)" >&2
        exit 1
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
fi

if [[ " $* " == *" --server-bin "* || " $* " == *" --server-bin="* ]] && ! command -v openssl >/dev/null; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        apt-get install -y --no-install-recommends openssl \
            || { apt-get update && apt-get install -y --no-install-recommends openssl; }
    else
        echo "error: helm-check --server-bin needs the openssl CLI (Debian/Ubuntu: apt-get install openssl)" >&2
        exit 1
    fi
fi

exec "$venv/bin/python" deploy/helm/check.py "$@"
