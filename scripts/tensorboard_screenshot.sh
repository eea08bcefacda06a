#!/usr/bin/env bash
# Look at a run's curves as a user would: TensorBoard served on 127.0.0.1, its Scalars and HParams
# pages rendered by headless Chromium into PNGs.
#
#   scripts/tensorboard_screenshot.sh RUNS_DIR OUT_DIR [TAG_REGEX] [HEIGHT]
#
# Needs Debian's chromium (apt-get install chromium) and tensorboard (in the .venv).
set -euo pipefail
usage="usage: $0 RUNS_DIR OUT_DIR [TAG_REGEX] [HEIGHT]"
runs_dir=${1:?$usage}
out_dir=${2:?$usage}
tags=${3:-ppl|loss|lr}
height=${4:-1000}
tensorboard=${TENSORBOARD:-$(dirname "$0")/../.venv/bin/tensorboard}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$out_dir"

"$tensorboard" --logdir "$runs_dir" --host 127.0.0.1 --port "$port" >"$out_dir/tensorboard.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$port/" >/dev/null && break
  sleep 0.5
done

# No network but loopback here: the background-networking flags keep Chromium from trying.
shoot() {  # URL-fragment WIDTHxHEIGHT OUT.png
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$(mktemp -d)" --hide-scrollbars --window-size="$2" \
    --virtual-time-budget=15000 --screenshot="$3" "http://127.0.0.1:$port/#$1" 2>/dev/null
}
filter=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$tags")
shoot "scalars&tagFilter=$filter&_smoothingWeight=0" "1400,$height" "$out_dir/scalars.png"
shoot "hparams" 1400,700 "$out_dir/hparams.png"
ls -l "$out_dir"/*.png
