#!/usr/bin/env bash
# Server memory around password hashing: starts `chatpool serve` on an
# embedded PostgreSQL in a temporary directory, then prints the server's
# VmRSS at start, after 100 registrations (16 at a time), after 200 logins
# (16 at a time) and 5 s later. All traffic is to 127.0.0.1.
#
#   cargo build --release && benches/registrations.sh target/release/chatpool 18090
#   EXTRA=MALLOC_ARENA_MAX=1 benches/registrations.sh target/release/chatpool 18090
set -euo pipefail
BIN=$1
PORT=${2:-18090}
DIR=$(mktemp -d)
# As root the cluster runs as `postgres`, which must be able to enter it.
chmod 755 "$DIR"
LOG=$DIR/server.log
# shellcheck disable=SC2086
env CHATPOOL_DATA_DIR="$DIR/data" ${EXTRA:-} "$BIN" serve --listen "127.0.0.1:$PORT" >"$LOG" 2>&1 &
PID=$!
trap 'kill -INT $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 1 120); do grep -q "listening on" "$LOG" && break; sleep 0.5; done
rss() { awk '/VmRSS/{print $2}' "/proc/$PID/status"; }
url=http://127.0.0.1:$PORT
echo "start_kib $(rss)"
seq 1 100 | xargs -P16 -I{} curl -s -o /dev/null -H 'content-type: application/json' \
    -d '{"username":"user{}","password":"correct horse battery"}' "$url/api/auth/register"
echo "after_100_registrations_kib $(rss)"
seq 0 199 | xargs -P16 -I{} sh -c 'curl -s -o /dev/null -H "content-type: application/json" \
    -d "{\"username\":\"user$(( {} % 100 + 1 ))\",\"password\":\"correct horse battery\"}" '"$url"'/api/auth/login'
echo "after_200_logins_kib $(rss)"
sleep 5
echo "after_5s_idle_kib $(rss)"
