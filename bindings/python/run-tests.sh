#!/usr/bin/env bash
# Builds and installs the blobcache Python package into a virtualenv, then
# runs its pytest suite and requests-cache 1.3.3's own backend suites
# against blobcache.requests_cache. Idempotent; quiet unless something fails.
#
#   bindings/python/run-tests.sh            (from anywhere in the checkout)
#
# VENV (default target/python-venv) and PYTHON (default python3) can be set.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${VENV:-$root/target/python-venv}"
work="$root/target/python-tests"
rc_version=1.3.3

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install -q --disable-pip-version-check -r "$here/requirements-test.txt"
"$py" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$here"

# The CLI binary the process tests drive.
cargo build -q --bin blobcache
export BLOBCACHE_BIN="$root/target/debug/blobcache"

# pytest exits 5 when it collected no test: that is a failure here too.
run_pytest() {
    local code=0
    "$py" -m pytest -q -p no:cacheprovider "$@" || code=$?
    if [ "$code" -eq 5 ]; then
        echo "pytest collected no tests in $*" >&2
    fi
    return "$code"
}

echo "== blobcache Python tests"
(cd "$here" && run_pytest tests)

echo "== requests-cache $rc_version backend suites against blobcache.requests_cache"
mkdir -p "$work/tmp"
sdist="$work/requests_cache-$rc_version"
if [ ! -d "$sdist/tests/integration" ]; then
    "$py" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
        "requests-cache==$rc_version" -d "$work"
    tar -xzf "$work/requests_cache-$rc_version.tar.gz" -C "$work"
fi
cp "$here/requests_cache_suite/test_blobcache.py" "$sdist/tests/integration/test_blobcache.py"
(cd "$sdist" && USE_PYTEST_HTTPBIN=true TMPDIR="$work/tmp" \
    run_pytest tests/integration/test_blobcache.py)
