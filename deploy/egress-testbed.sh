#!/usr/bin/env bash
# A stand-in for "the outside network" on a development or CI host, for the
# webapp_egress startup check: a test host in a network namespace of our own,
# 10.213.0.2, reachable from this host over a veth pair. The check passes only
# if the app user cannot reach it (deploy/provision.sh CODEJAIL_BLOCK_APP_EGRESS=1);
# without that rule the connect is refused by the test host and the check fails.
# Usage (root): egress-testbed.sh up|down. Prints the check target (host:port) on `up`.
set -euo pipefail
ns=codejail-outside
case "${1:-up}" in
up)
    if ! ip netns list | grep -qw "$ns"; then
        ip netns add "$ns"
        ip link add cjout0 type veth peer name cjout1
        ip link set cjout1 netns "$ns"
        ip addr add 10.213.0.1/30 dev cjout0
        ip link set cjout0 up
        ip -n "$ns" addr add 10.213.0.2/30 dev cjout1
        ip -n "$ns" link set cjout1 up
        ip -n "$ns" link set lo up
    fi
    echo "10.213.0.2:80"
    ;;
down)
    ip link del cjout0 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
