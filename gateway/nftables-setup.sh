#!/bin/sh
# geogate gateway, nftables variant: send the LAN's web traffic through geogate in transparent mode.
#
#   LAN_IF=eth1 gateway/nftables-setup.sh up      install (idempotent: replaces its own table)
#   gateway/nftables-setup.sh down                remove
#   gateway/nftables-setup.sh show                print the rules
#
# Settings (environment):
#   LAN_IF       interface(s) the clients come in on, space separated (required for `up`)
#   PROXY_PORT   where geogate listens in transparent mode (default 8080)
#   TCP_PORTS    destination ports sent through geogate (default "80 443"; "1-65535" = all TCP)
#   BLOCK_QUIC   1 (default) rejects forwarded UDP to port 443, so browsers fall back to TCP,
#                which geogate sees; HTTP/3 would otherwise bypass the check
#   PROXY_USER   also redirect the gateway host's own traffic, except that of this user, which
#                must be the user geogate runs as (its upstream connections must not loop back)
#
# Everything lives in one table, `inet geogate`, for IPv4 and IPv6 alike. Only forwarded traffic
# passes the prerouting hook, so geogate's own upstream connections (made on the gateway itself)
# are never redirected. When geogate is not running, redirected connections are refused: the
# gateway fails closed for the ports it covers.
set -eu

PROXY_PORT=${PROXY_PORT:-8080}
TCP_PORTS=${TCP_PORTS:-80 443}
BLOCK_QUIC=${BLOCK_QUIC:-1}
PROXY_USER=${PROXY_USER:-}

die() { echo "nftables-setup.sh: $*" >&2; exit 2; }
command -v nft >/dev/null 2>&1 || die "nft is not installed (Debian/Ubuntu: apt-get install nftables)"

set_of() {  # "80 443" -> "80, 443"
    echo "$1" | tr -s ' ,' '\n' | grep -v '^$' | paste -sd, - | sed 's/,/, /g'
}

up() {
    [ -n "${LAN_IF:-}" ] || die "set LAN_IF to the interface the clients use, e.g. LAN_IF=eth1"
    ports=$(set_of "$TCP_PORTS")
    ifaces=$(set_of "$(for i in $LAN_IF; do printf '"%s" ' "$i"; done)")
    sysctl -qw net.ipv4.ip_forward=1
    sysctl -qw net.ipv6.conf.all.forwarding=1
    sysctl -qw net.ipv4.conf.all.send_redirects=0  # the gateway must stay on the path
    {
        echo "table inet geogate"
        echo "delete table inet geogate"
        echo "table inet geogate {"
        echo "  chain prerouting {"
        echo "    type nat hook prerouting priority dstnat; policy accept;"
        echo "    iifname { $ifaces } tcp dport { $ports } redirect to :$PROXY_PORT"
        echo "  }"
        if [ "$BLOCK_QUIC" = 1 ]; then
            echo "  chain forward {"
            echo "    type filter hook forward priority filter; policy accept;"
            echo "    iifname { $ifaces } udp dport 443 reject"
            echo "  }"
        fi
        if [ -n "$PROXY_USER" ]; then
            id -u "$PROXY_USER" >/dev/null 2>&1 || die "PROXY_USER $PROXY_USER does not exist"
            echo "  chain output {"
            echo "    type nat hook output priority -100; policy accept;"
            echo "    meta skuid \"$PROXY_USER\" return"
            echo "    oifname != \"lo\" tcp dport { $ports } redirect to :$PROXY_PORT"
            echo "  }"
        fi
        echo "}"
    } | nft -f -
    echo "geogate: nftables rules installed: TCP ports $ports from $LAN_IF -> :$PROXY_PORT (IPv4 and IPv6)"
}

case "${1:-}" in
    up) up ;;
    down) nft delete table inet geogate 2>/dev/null || true; echo "geogate: nftables rules removed" ;;
    show) nft list table inet geogate 2>/dev/null || echo "geogate: no nftables rules installed" ;;
    *) die "usage: LAN_IF=IFACE $0 up | $0 down | $0 show" ;;
esac
