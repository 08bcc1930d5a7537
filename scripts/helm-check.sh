#!/usr/bin/env bash
# Checks the Helm chart (deploy/helm/jobctl) and the Dockerfile offline:
# helm lint --strict and helm template through Helm's own library, the
# rendered objects against Kubernetes' schemas, the restricted Pod Security
# Standard, and the chart's own promises. See deploy/helm/check.py.
#
#   ./scripts/helm-check.sh                       run every check
#   ./scripts/helm-check.sh --show all-features   also print that scenario's manifests
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

exec "$venv/bin/python" deploy/helm/check.py "$@"
