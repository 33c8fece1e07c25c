#!/bin/sh
# geogate gateway, iptables variant (iptables + ip6tables): the same as nftables-setup.sh.
#
#   LAN_IF=eth1 gateway/iptables-setup.sh up      install (idempotent: rebuilds its own chains)
#   gateway/iptables-setup.sh down                remove
#   gateway/iptables-setup.sh show                print the rules
#
# Settings (environment): LAN_IF, PROXY_PORT (8080), TCP_PORTS ("80 443"; "1:65535" = all TCP),
# BLOCK_QUIC (1), PROXY_USER; see nftables-setup.sh for what each one does.
#
# The rules live in chains of their own (GEOGATE in nat, GEOGATE_FWD in filter, GEOGATE_OUT in
# nat) for IPv4 and IPv6. Only forwarded traffic passes PREROUTING, so geogate's own upstream
# connections are never redirected; with geogate stopped, redirected connections are refused.
set -eu

PROXY_PORT=${PROXY_PORT:-8080}
TCP_PORTS=${TCP_PORTS:-80 443}
BLOCK_QUIC=${BLOCK_QUIC:-1}
PROXY_USER=${PROXY_USER:-}

die() { echo "iptables-setup.sh: $*" >&2; exit 2; }
command -v iptables >/dev/null 2>&1 || die "iptables is not installed (Debian/Ubuntu: apt-get install iptables)"
command -v ip6tables >/dev/null 2>&1 || die "ip6tables is not installed (it comes with the iptables package)"

ports=$(echo "$TCP_PORTS" | tr -s ' ,' '\n' | grep -v '^$' | paste -sd, -)

remove() {
    ipt=$1
    for i in ${LAN_IF:-}; do
        while $ipt -t nat -D PREROUTING -i "$i" -j GEOGATE 2>/dev/null; do :; done
        while $ipt -D FORWARD -i "$i" -j GEOGATE_FWD 2>/dev/null; do :; done
    done
    # rules added for other interfaces earlier: find them by their target
    $ipt -t nat -S PREROUTING 2>/dev/null | grep -- '-j GEOGATE$' | sed 's/^-A/-D/' | while read -r rule; do
        eval "$ipt -t nat $rule"; done
    $ipt -S FORWARD 2>/dev/null | grep -- '-j GEOGATE_FWD$' | sed 's/^-A/-D/' | while read -r rule; do
        eval "$ipt $rule"; done
    while $ipt -t nat -D OUTPUT -j GEOGATE_OUT 2>/dev/null; do :; done
    for chain in GEOGATE GEOGATE_OUT; do
        $ipt -t nat -F $chain 2>/dev/null && $ipt -t nat -X $chain
    done
    $ipt -F GEOGATE_FWD 2>/dev/null && $ipt -X GEOGATE_FWD
    return 0
}

install() {
    ipt=$1
    remove "$ipt"
    $ipt -t nat -N GEOGATE
    $ipt -t nat -A GEOGATE -p tcp -m multiport --dports "$ports" -j REDIRECT --to-ports "$PROXY_PORT"
    for i in $LAN_IF; do
        $ipt -t nat -A PREROUTING -i "$i" -j GEOGATE
    done
    if [ "$BLOCK_QUIC" = 1 ]; then
        $ipt -N GEOGATE_FWD
        $ipt -A GEOGATE_FWD -p udp --dport 443 -j REJECT
        for i in $LAN_IF; do
            $ipt -I FORWARD 1 -i "$i" -j GEOGATE_FWD
        done
    fi
    if [ -n "$PROXY_USER" ]; then
        $ipt -t nat -N GEOGATE_OUT
        $ipt -t nat -A GEOGATE_OUT -m owner --uid-owner "$PROXY_USER" -j RETURN
        $ipt -t nat -A GEOGATE_OUT ! -o lo -p tcp -m multiport --dports "$ports" -j REDIRECT --to-ports "$PROXY_PORT"
        $ipt -t nat -A OUTPUT -j GEOGATE_OUT
    fi
}

case "${1:-}" in
    up)
        [ -n "${LAN_IF:-}" ] || die "set LAN_IF to the interface the clients use, e.g. LAN_IF=eth1"
        [ -z "$PROXY_USER" ] || id -u "$PROXY_USER" >/dev/null 2>&1 || die "PROXY_USER $PROXY_USER does not exist"
        sysctl -qw net.ipv4.ip_forward=1
        sysctl -qw net.ipv6.conf.all.forwarding=1
        sysctl -qw net.ipv4.conf.all.send_redirects=0
        install iptables
        install ip6tables
        echo "geogate: iptables rules installed: TCP ports $ports from $LAN_IF -> :$PROXY_PORT (IPv4 and IPv6)"
        ;;
    down)
        remove iptables
        remove ip6tables
        echo "geogate: iptables rules removed"
        ;;
    show)
        for ipt in iptables ip6tables; do
            echo "# $ipt"
            $ipt -t nat -S 2>/dev/null | grep GEOGATE || true
            $ipt -S 2>/dev/null | grep GEOGATE || true
        done
        ;;
    *) die "usage: LAN_IF=IFACE $0 up | $0 down | $0 show" ;;
esac
