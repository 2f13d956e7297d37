#!/usr/bin/env bash
# Stops the control plane start.sh started in DIR (its processes by PID).
set -uo pipefail
DIR=${1:?usage: stop.sh DIR}
[ -f "$DIR/pids" ] || exit 0
while read -r pid _; do kill "$pid" 2>/dev/null; done <"$DIR/pids"
for _ in $(seq 1 50); do
  alive=
  while read -r pid _; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$DIR/pids"
  [ -z "$alive" ] && break
  sleep 0.1
done
while read -r pid _; do kill -9 "$pid" 2>/dev/null; done <"$DIR/pids"
: >"$DIR/pids"
