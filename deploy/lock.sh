#!/bin/sh
# Refresh deploy/requirements.lock, the pinned and hashed dependencies deploy/Dockerfile installs.
#
#   deploy/lock.sh            # re-resolve from pyproject.toml (newest versions its ranges allow)
#   deploy/lock.sh --check    # only verify: every pin has a wheel for linux/arm64 and linux/amd64
#
# Inputs: [project].dependencies of pyproject.toml without amqtt (the embedded broker of
# `renogy-proxy run`; compose runs Mosquitto), plus [build-system].requires (the image builds the
# project's wheel offline). pip-compile resolves for the image's Python (PYTHON, default python3.11)
# against PyPI only: this machine's pip configuration (mirrors, find-links) is ignored, so the hashes
# are PyPI's and cover every file of each release (amd64 and arm64 wheels alike).
set -eu

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
INDEX=${LOCK_INDEX_URL:-https://pypi.org/simple}
PIP_TOOLS=pip-tools==7.6.2
PY_VERSION=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

# Only the CA bundle of the host's pip set-up is kept (a TLS-intercepting proxy needs it).
cert=${PIP_CERT:-$("$PYTHON" -m pip config get global.cert 2>/dev/null || true)}
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT PIP_NO_INDEX
[ -n "$cert" ] && export PIP_CERT="$cert"

"$PYTHON" -m venv "$work/venv"

if [ "${1:-}" != "--check" ]; then
    "$work/venv/bin/pip" install --quiet --index-url "$INDEX" "$PIP_TOOLS"
    "$work/venv/bin/python" - > "$work/requirements.in" <<'EOF'
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

project = tomllib.loads(Path("pyproject.toml").read_text())
print("# [project].dependencies of pyproject.toml without amqtt")
for text in project["project"]["dependencies"]:
    if Requirement(text).name.lower() != "amqtt":
        print(text)
print("# [build-system].requires: the image builds the project's wheel without build isolation")
for text in project["build-system"]["requires"]:
    print(text)
EOF
    (cd "$work" && CUSTOM_COMPILE_COMMAND=deploy/lock.sh "$work/venv/bin/pip-compile" --quiet \
        --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --index-url "$INDEX" \
        --output-file requirements.lock requirements.in)
    # pip-compile names the input by its path; keep the lock free of this run's scratch directory.
    sed -e "s|-r requirements.in|pyproject.toml|" "$work/requirements.lock" > deploy/requirements.lock
    echo "deploy/requirements.lock: $(grep -c '==' deploy/requirements.lock) pins (Python $PY_VERSION)"
fi

# Every pin must install from a binary wheel on the Pi (linux/arm64) and on a PC (linux/amd64), with
# Debian bookworm's glibc 2.36 (pip takes --platform literally: list every manylinux tag it may use).
abi="cp$(echo "$PY_VERSION" | tr -d .)"
for arch in aarch64 x86_64; do
    platforms="--platform manylinux2014_$arch"
    for minor in $(seq 17 36); do platforms="$platforms --platform manylinux_2_${minor}_$arch"; done
    # shellcheck disable=SC2086 # one word per option
    "$work/venv/bin/pip" download --quiet --no-deps --require-hashes --only-binary=:all: \
        --index-url "$INDEX" $platforms --python-version "$PY_VERSION" \
        --implementation cp --abi "$abi" --dest "$work/$arch" -r deploy/requirements.lock
    echo "linux/$arch, $abi: a wheel for every pin:"
    ls "$work/$arch" | sed 's/^/    /'
done
