#!/usr/bin/env bash
# `bench skaben` (100 devices) against a server with the SKABEN preset loaded (level green) and
# without rules, alternating, each run on a fresh server and data directory
# (docs/benchmarks.md, "The game layer"). Run from the repository's root, under the build lock:
#     flock /tmp/cargo.lock crates/gatehouse/benches/skaben-rules.sh
# BIN (default target/release/gatehouse), ROUNDS (default 2), ORDER (default "without with
# with without": each round runs ORDER once, so a drift of the machine weighs on both alike).
set -euo pipefail
BIN=${BIN:-target/release/gatehouse}
ROUNDS=${ROUNDS:-2}
ORDER=${ORDER:-"without with with without"}
HTTP=127.0.0.1:18080
MQTT=127.0.0.1:1883

run() {
    local mode=$1 dir pid token
    dir=$(mktemp -d "${TMPDIR:-/tmp}/gh-bench-rules.XXXXXX")
    "$BIN" serve --data-dir "$dir" --acon-listen 127.0.0.1:0 --http-listen "$HTTP" \
        --mqtt-listen "$MQTT" --mqtt-auth off --acon-max-new-boards-per-min 0 \
        --acon-max-messages-per-sec 0 --skaben-max-packets-per-sec 0 --log warn \
        > "$dir.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        [ -s "$dir/admin-token" ] && curl -s -o /dev/null "http://$HTTP/api/state" && break
        sleep 0.1
    done
    token=$(cat "$dir/admin-token")
    if [ "$mode" = with ]; then
        "$BIN" rules import presets/skaben.toml --url "http://$HTTP" --token "$token" > /dev/null
        curl -sf -X PUT "http://$HTTP/api/state/level" -H "authorization: Bearer $token" \
            -H 'content-type: application/json' -d '{"level":"green"}' > /dev/null
    fi
    echo "== $mode: $(curl -s -H "authorization: Bearer $token" "http://$HTTP/api/state" |
        python3 -c 'import json,sys; s=json.load(sys.stdin); print("level", s["level"], "rules", s["rules"], "counter", s["counter"])')"
    "$BIN" bench skaben --mqtt "$MQTT" --devices 100 --duration 10
    echo "   after: $(curl -s -H "authorization: Bearer $token" "http://$HTTP/api/stats" |
        python3 -c 'import json,sys; s=json.load(sys.stdin); print({k: v for k, v in s.items() if "rule" in k or k in ("events", "store_failures")})')"
    kill "$pid"
    wait "$pid" || true
    rm -rf "$dir" "$dir.log"
}

for _ in $(seq "$ROUNDS"); do
    for mode in $ORDER; do
        run "$mode"
    done
done
