#!/usr/bin/env bash
# The Python SDK's check, run by scripts/test.sh: builds the sdist, then the
# wheel from the sdist (so the sdist is proven self-contained: it carries
# its copy of proto/), installs the wheel into a fresh venv, type-checks the
# package as shipped plus the tests, examples and benchmark with
# mypy --strict, and runs pytest against the jobctl-server binary on both
# stores.
#
# The dependencies (requirements-dev.txt, pinned) live in a cached venv,
# rebuilt when that file changes; the fresh venv sees them through a .pth
# file and holds nothing but the wheel.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
deps="${XDG_CACHE_HOME:-$HOME/.cache}/jobctl-pysdk-deps"
pins="$here/requirements-dev.txt"

if ! cmp -s "$pins" "$deps/requirements.txt"; then
    rm -rf "$deps"
    "$python" -m venv "$deps" \
        && "$deps/bin/pip" install --quiet --disable-pip-version-check -r "$pins" \
        && cp "$pins" "$deps/requirements.txt" \
        || { echo "could not set up the Python SDK's venv in $deps" >&2; exit 1; }
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/jobctl-pysdk.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# sdist, then the wheel built from it, with the cached venv's build backend.
(cd "$here" && "$deps/bin/python" -m hatchling build -t sdist -d "$work/dist" >/dev/null 2>&1)
sdist="$(ls "$work"/dist/jobctl-*.tar.gz)"
"$deps/bin/pip" wheel --quiet --disable-pip-version-check --no-build-isolation --no-deps \
    -w "$work/dist" "$sdist"
wheel="$(ls "$work"/dist/jobctl-*.whl)"

# A fresh venv with the wheel alone; the dependencies through a .pth file.
"$python" -m venv --without-pip "$work/venv"
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
"$deps/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))' >"$site/jobctl-test-deps.pth"
"$deps/bin/pip" --python "$work/venv/bin/python" install --quiet --disable-pip-version-check \
    --no-deps --no-index "$wheel"
"$deps/bin/pip" --python "$work/venv/bin/python" check --disable-pip-version-check >/dev/null

# mypy --strict over the package as the wheel ships it (generated stubs
# included), and over the code that uses it.
"$deps/bin/python" -m zipfile -e "$wheel" "$work/unpacked"
(cd "$here" && "$deps/bin/mypy" --strict --config-file "$here/pyproject.toml" \
    --cache-dir "$work/mypy-cache" "$work/unpacked/jobctl" tests examples bench)

code=0
(cd "$here" && "$work/venv/bin/python" -m pytest -p no:cacheprovider -q "$@") || code=$?
# Exit code 5 means pytest collected no tests: a broken setup, not a pass.
if ((code == 5)); then
    echo "pytest found no tests in sdk/python/tests" >&2
fi
exit "$code"
