#!/usr/bin/env bash
# Cached reads through the whole service on one Redis server against a Redis
# Cluster of one and of three masters, in one run, with the same wrk load:
#
#   crates/bench/wrk/cluster_vs_standalone.sh [DURATION]      (default 20s)
#
# For each deployment the service (target/release/trading, built if missing;
# embedded SQLite seeded with 1,000 users) is measured twice over a hot set of
# 1,000 portfolios: as configured (L1 hits) and with the portfolio family's L1
# off (every read an L2 hit: the cluster routing is on every request). Each
# deployment gets Redis servers of its own on ports 7390-7395, torn down at
# the end. Prints one Markdown row per run (the table in docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/../../.."

duration=${1:-20s}
bin=${LARDER_TRADING_BIN:-target/release/trading}
[ -x "$bin" ] || cargo build --release -j2 -p trading
command -v wrk >/dev/null || apt-get install -y wrk
command -v redis-server >/dev/null || apt-get install -y redis-server

run=$(mktemp -d /tmp/larder-cluster-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT

token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export LARDER_SERVICE_TOKEN=$token

redis() { # port [cluster]
  local port=$1 extra=()
  [ "${2:-}" = cluster ] && extra=(--cluster-enabled yes --cluster-config-file "$run/nodes-$port.conf")
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$run" "${extra[@]}" >"$run/redis-$port.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "redis on $port did not start" >&2
  exit 1
}

cluster_ok() { # port...
  for p in "$@"; do
    redis-cli -p "$p" cluster info | grep -q "cluster_state:ok" || return 1
  done
}

wait_cluster() { # port...
  for _ in $(seq 200); do
    cluster_ok "$@" && return 0
    sleep 0.05
  done
  echo "cluster on $* not ok" >&2
  exit 1
}

# The service's policies with the portfolio family's L1 off.
sed '/^\[families.portfolio\]/a l1 = false' crates/trading/cache.toml >"$run/l2-only.toml"
grep -q '^l1 = false' "$run/l2-only.toml"

measure() { # label, env...
  local label=$1
  shift
  local port=18190
  env -u REDIS_URL -u REDIS_CLUSTER_URLS -u REDIS_SENTINEL_URLS -u DATABASE_URL "$@" LARDER_ADDR="127.0.0.1:$port" LARDER_RATE_LIMIT_IP=0 LARDER_RATE_LIMIT_SESSION=0 \
    LARDER_SEED_USERS=1000 LARDER_SQLITE_PATH="$run/$label.db" RUST_LOG=warn \
    "$bin" serve >"$run/$label.log" 2>&1 &
  local svc=$!
  for _ in $(seq 600); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 "$svc" 2>/dev/null || { cat "$run/$label.log" >&2; exit 1; }
    sleep 0.1
  done
  wrk -t2 -c16 -d5s -s crates/bench/wrk/hot_set.lua "http://127.0.0.1:$port" >/dev/null
  local out
  out=$(wrk -t2 -c64 -d"$duration" --latency -s crates/bench/wrk/hot_set.lua "http://127.0.0.1:$port")
  kill "$svc"
  wait "$svc" 2>/dev/null || true
  local rps p50 p99 errors
  rps=$(awk '/^Requests\/sec/ {printf "%d", $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  printf '| %s | %s | %s | %s | %s |\n' "$label" "$rps" "$p50" "$p99" "${errors:-0}"
}

# Both ways on one deployment: as configured (L1 hits), then L1 off.
l1_on_and_off() { # label, the Redis setting
  measure "$1-l1-on" "$2"
  measure "$1-l1-off" "$2" LARDER_CACHE_CONFIG="$run/l2-only.toml"
}

printf '| run | requests/s | p50 | p99 | non-2xx |\n|---|---:|---:|---:|---:|\n'

redis 7390
l1_on_and_off standalone REDIS_URL=redis://127.0.0.1:7390

redis 7391 cluster
redis-cli -p 7391 cluster addslotsrange 0 16383 >/dev/null
wait_cluster 7391
l1_on_and_off cluster1 REDIS_CLUSTER_URLS=redis://127.0.0.1:7391

for p in 7393 7394 7395; do redis "$p" cluster; done
redis-cli --cluster create 127.0.0.1:7393 127.0.0.1:7394 127.0.0.1:7395 --cluster-yes >/dev/null
wait_cluster 7393 7394 7395
l1_on_and_off cluster3 REDIS_CLUSTER_URLS=redis://127.0.0.1:7393,redis://127.0.0.1:7394
