#!/usr/bin/env bash
# The seed scenario, played by overlays on a host namespace of its own.
# It never touches the real machine's network: the "host" is a namespace made here.
# Each overlays step runs with --explain: the tool itself prints the ip, bridge, sysctl and
# nft commands that do the same by hand, as it makes each change (its own messages as # comments).
set -euo pipefail

HOST="demo-host-$$"
STATE="$(mktemp -d /tmp/overlays-demo.XXXXXX)"
export OVERLAYS_HOST_NETNS="$HOST" OVERLAYS_STATE_DIR="$STATE"

bold=$'\e[1m'; dim=$'\e[2m'; reset=$'\e[0m'
[ -t 1 ] || { bold=""; dim=""; reset=""; }

say()  { printf '\n%s%s%s\n' "$bold" "$*" "$reset"; }
note() { printf '%s  %s%s\n' "$dim" "$*" "$reset"; }
run()  { printf '  $ %s\n' "$*"; "$@" 2>&1 | sed 's/^/    /'; }
# An overlays step and, indented under it, what it did in the kernel (from --explain).
step() { printf '  $ overlays %s\n' "$*"; overlays --explain "$@" 2>&1 | sed "s/^/    /; s/^    \(# .*\)/    $dim\1$reset/"; }

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
step run --name a --network none
step run --name b --network none
run overlays exec a -- ip -br addr

say "2. A network: a Linux bridge in the host, holding the gateway address"
note "The bridge, its address, forwarding on, and overlays' own nftables table (egress masquerade, isolation)."
step network create demo --subnet 10.12.0.0/24
run ip -n "$HOST" -br addr show ovb-demo

say "3. Connect both sandboxes"
note "Each connect is a veth pair (eth0 inside, a bridge port outside), an address and a default route."
step connect demo a
step connect demo b --ip 10.12.0.10
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
note "The published port is one element of an nftables map of overlays' own table (DNAT to the sandbox)."
step run -d --name web --network demo -p 8080:80 -- python3 -m http.server 80
run overlays port web
note "From outside, fetch http://HOST:8080/ (curl retries until the server listens):"
printf '  $ ip netns exec %s curl -s http://10.99.0.1:8080/ | head -3\n' "$OUTSIDE"
ip netns exec "$OUTSIDE" curl -s --retry 20 --retry-connrefused --retry-delay 1 --max-time 5 http://10.99.0.1:8080/ \
  | head -3 | sed 's/^/    /'

say "7. Remove everything"
note "rm stops the process and deletes the sandbox's namespace (the kernel removes its veth with it);"
note "the address goes back to the pool. With the last network, overlays' nftables table goes too."
step rm -f a b web
step network rm demo
run ip netns exec "$HOST" nft list tables
run ip -n "$HOST" -br link
say "Done: only the veth we wired to the outside peer by hand is left; the host namespace goes too."
