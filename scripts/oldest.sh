#!/usr/bin/env bash
# The test suite against the oldest releases pyproject.toml admits: `make oldest`.
#
# Every `name>=X` among the package's dependencies (and pytest's, from the dev extra) is
# installed as `name==X` in a venv of its own (.venv-oldest); what those leave open (click, rich,
# protobuf, ...) comes as pip resolves it today, the newest, which is where old releases break.
# Not part of CI: PyPI's torch for Linux is a CUDA build, several GB with its NVIDIA libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${OLDEST_VENV:-.venv-oldest}  # not VENV: make exports its own (.venv) where one is set

pins=$("$PYTHON" - <<'PY'
import re
import sys

if sys.version_info >= (3, 12):  # numpy 1.24 and PyYAML 6.0 have no wheels for it, nor build
    raise SystemExit("oldest.sh: run it with Python 3.10 or 3.11 (PYTHON=python3.11 make oldest)")
text = open("pyproject.toml").read()
# The [project] dependencies, one a line, the list closed by a `]` alone on its line.
needs = re.findall(r'"([^"]+)"', re.search(r"^dependencies = \[$(.*?)^\]$", text, re.S | re.M)[1])
needs.append(re.search(r'"(pytest>=[^"]*)"', text)[1])
for need in needs:
    bound = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", need)
    if bound is None:
        raise SystemExit(f"oldest.sh: {need!r} in pyproject.toml is not name>=X")
    print(f"{bound[1]}=={bound[2]}")
PY
)
echo "oldest:" $pins
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# shellcheck disable=SC2086  # one argument per pin
"$VENV/bin/pip" install --quiet $pins
"$VENV/bin/pip" install --quiet --no-deps -e .
"$VENV/bin/python" -m ptblm info | sed -n 1p  # reads it all: no SIGPIPE under pipefail
"$VENV/bin/pytest" -q "$@"
