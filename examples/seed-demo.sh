#!/usr/bin/env bash
# The seed scenario, played by overlays on a host namespace of its own.
# It never touches the real machine's network: the "host" is a namespace made here.
set -euo pipefail

HOST="demo-host-$$"
STATE="$(mktemp -d /tmp/overlays-demo.XXXXXX)"
export OVERLAYS_HOST_NETNS="$HOST" OVERLAYS_STATE_DIR="$STATE"

bold=$'\e[1m'; dim=$'\e[2m'; reset=$'\e[0m'
[ -t 1 ] || { bold=""; dim=""; reset=""; }

say()  { printf '\n%s%s%s\n' "$bold" "$*" "$reset"; }
note() { printf '%s  %s%s\n' "$dim" "$*" "$reset"; }
run()  { printf '  $ %s\n' "$*"; "$@" 2>&1 | sed 's/^/    /'; }

OUTSIDE="demo-out-$$"

cleanup() {
  overlays rm -f a b web >/dev/null 2>&1 || true
  ip netns del "$OUTSIDE" 2>/dev/null || true
  overlays network rm -f demo >/dev/null 2>&1 || true
  ip netns del "$HOST" 2>/dev/null || true
  rm -rf "$STATE"
}
trap cleanup EXIT

say "0. A namespace plays the host, so the demo leaves your machine alone"
note "overlays can treat any network namespace as its host (--host-netns, here via OVERLAYS_HOST_NETNS)."
run ip netns add "$HOST"
run ip -n "$HOST" link set lo up

say "1. Two sandboxes with no network, like 'docker run --network none'"
note "Each sandbox is a network namespace of its own: only a loopback interface inside."
run overlays run --name a --network none
run overlays run --name b --network none
run overlays exec a -- ip -br addr

say "2. A network: a Linux bridge in the host, holding the gateway address"
run overlays network create demo --subnet 10.12.0.0/24
run ip -n "$HOST" -br addr show ovb-demo

say "3. Connect both sandboxes"
note "Each connect makes a veth pair: one end (eth0) inside the sandbox, the other a port of the bridge."
note "The sandbox gets an address from the network's pool and a default route via the gateway."
run overlays connect demo a
run overlays connect demo b --ip 10.12.0.10
run overlays exec a -- ip -br addr show eth0
run overlays exec a -- ip route

say "4. Ping each way"
run overlays exec a -- ping -c 2 -W 1 10.12.0.10
run overlays exec b -- ping -c 2 -W 1 10.12.0.2

say "5. What is running"
run overlays ps
run overlays network inspect demo

say "6. Publish a web server, like 'docker run -p 8080:80'"
note "Another machine plays the outside world: a namespace wired to the host by a veth (10.99.0.0/24)."
run ip netns add "$OUTSIDE"
run ip -n "$HOST" link add out0 type veth peer name eth0 netns "$OUTSIDE"
run ip -n "$HOST" addr add 10.99.0.1/24 dev out0
run ip -n "$HOST" link set out0 up
run ip -n "$OUTSIDE" addr add 10.99.0.2/24 dev eth0
run ip -n "$OUTSIDE" link set eth0 up
note "The published port is one element in an nftables map of overlays' own table (DNAT to the sandbox)."
run overlays run -d --name web --network demo -p 8080:80 -- python3 -m http.server 80
run overlays port web
printf '  $ ip netns exec %s nft list ruleset | grep -A3 "map publish_any_tcp"\n' "$HOST"
ip netns exec "$HOST" nft list ruleset | grep -A3 "map publish_any_tcp" | sed 's/^/    /'
note "From outside, fetch http://HOST:8080/ (curl retries until the server listens):"
printf '  $ ip netns exec %s curl -s http://10.99.0.1:8080/ | head -3\n' "$OUTSIDE"
ip netns exec "$OUTSIDE" curl -s --retry 20 --retry-connrefused --retry-delay 1 --max-time 5 http://10.99.0.1:8080/ \
  | head -3 | sed 's/^/    /'

say "7. Remove everything"
note "rm stops the process and deletes the sandbox's namespace; the kernel removes its veth with it,"
note "the address goes back to the pool, and its port leaves the map."
run overlays rm -f a b web
run overlays network rm demo
note "With the last network gone, overlays' nftables table is gone too:"
run ip netns exec "$HOST" nft list tables
run ip -n "$HOST" -br link
say "Done: only the veth we wired to the outside peer by hand is left; the host namespace goes too."
