#!/usr/bin/env bats
# The README's first example for real (issue 10): a host between two
# networks, built from three network namespaces that each test creates
# and removes:
#
#   client 192.168.20.10/24 --- 192.168.20.200/24 proxy host 192.168.0.1/24
#                                                  --- 192.168.0.100/24 server
#
# with no route from one side to the other, so the client reaches the
# server only through tcpproxy on the proxy host.  Then a PROXY protocol
# chain across it: haproxy send-proxy-v2 -> tcpproxy --accept-proxy
# --send-proxy v1 -> nginx listen ... proxy_protocol.  Needs root and
# ip netns; skips where either is missing.

load helper

eval "$(declare -f setup | sed '1s/^setup/base_setup/')"
eval "$(declare -f teardown | sed '1s/^teardown/base_teardown/')"

setup() {
	base_setup
	NETNS_LIST=$T/netns
	: >"$NETNS_LIST"
}

# The processes go first (the helper's teardown), then the namespaces,
# whatever the test did.
teardown() {
	local rc=0 ns
	base_teardown || rc=$?
	if [ -f "${NETNS_LIST:-}" ]; then
		while read -r ns; do
			ip netns del "$ns" 2>/dev/null || true
		done <"$NETNS_LIST"
	fi
	return "$rc"
}

# in_ns NS CMD...: runs CMD in the network namespace NS (spawn takes
# "ip netns exec NS" itself, so that the pid it records is CMD's).
in_ns() {
	local ns=$1
	shift
	ip netns exec "$ns" "$@"
}

# link_up NS DEV: DEV in NS has its carrier (both veth ends are up).
link_up() {
	in_ns "$1" ip -br link show dev "$2" | grep -q ' UP '
}

# two_networks: builds the example's three namespaces; sets NS_C
# (client), NS_P (proxy host) and NS_S (server).  Skips, saying why,
# where namespaces cannot be made.
two_networks() {
	local base=tp$$-$BATS_TEST_NUMBER
	[ "$(id -u)" -eq 0 ] || skip "needs root to create network namespaces"
	command -v ip >/dev/null 2>&1 || skip "needs ip (iproute2)"
	command -v ss >/dev/null 2>&1 || skip "needs ss (iproute2)"
	NS_C=$base-client NS_P=$base-proxy NS_S=$base-server
	if ! ip netns add "$NS_C" 2>"$T/netns.err"; then
		skip "ip netns add failed: $(cat "$T/netns.err")"
	fi
	echo "$NS_C" >>"$NETNS_LIST"
	ip netns add "$NS_P"
	echo "$NS_P" >>"$NETNS_LIST"
	ip netns add "$NS_S"
	echo "$NS_S" >>"$NETNS_LIST"
	# Each veth pair is made with its ends already in their namespaces.
	ip link add eth0 netns "$NS_C" type veth peer name lan20 netns "$NS_P"
	ip link add eth0 netns "$NS_S" type veth peer name lan0 netns "$NS_P"
	in_ns "$NS_C" ip addr add 192.168.20.10/24 dev eth0
	in_ns "$NS_P" ip addr add 192.168.20.200/24 dev lan20
	in_ns "$NS_P" ip addr add 192.168.0.1/24 dev lan0
	in_ns "$NS_S" ip addr add 192.168.0.100/24 dev eth0
	# The proxy host does not route: only a proxy joins the networks.
	in_ns "$NS_P" sysctl -qw net.ipv4.ip_forward=0
	in_ns "$NS_C" ip link set lo up
	in_ns "$NS_P" ip link set lo up
	in_ns "$NS_S" ip link set lo up
	in_ns "$NS_C" ip link set eth0 up
	in_ns "$NS_P" ip link set lan20 up
	in_ns "$NS_P" ip link set lan0 up
	in_ns "$NS_S" ip link set eth0 up
	wait_for 10 link_up "$NS_C" eth0
	wait_for 10 link_up "$NS_P" lan20
	wait_for 10 link_up "$NS_P" lan0
	wait_for 10 link_up "$NS_S" eth0
	# Neither end has a route toward the other network.
	if in_ns "$NS_C" ip route get 192.168.0.100 >/dev/null 2>&1 ||
	    in_ns "$NS_S" ip route get 192.168.20.10 >/dev/null 2>&1; then
		echo "a route joins the two networks" >&2
		return 1
	fi
}

# server MODE [N]: test/backend MODE on 192.168.0.100:20000 in the
# server's namespace; sets BACKEND_OUT.
server() {
	spawn group server ip netns exec "$NS_S" "$BACKEND" -l 192.168.0.100 -p 20000 "$@"
	BACKEND_OUT=$T/server.out
	[ "$(ready_port "$T/server.err")" = 20000 ]
}

# proxy_host ARGS...: tcpproxy ARGS on the proxy host; sets PROXY_LOG.
proxy_host() {
	spawn single proxy ip netns exec "$NS_P" "$TCPPROXY" "$@"
	PROXY_PID=$SPAWNED
	PROXY_LOG=$T/proxy.err
	[ -n "$(ready_port "$PROXY_LOG")" ]
}

@test "the client on 192.168.20.x cannot reach 192.168.0.100:20000 by itself, and reaches it through tcpproxy 192.168.20.200 8080 192.168.0.100 20000, 1 MiB byte for byte" {
	two_networks
	server echo
	# The server is up: the proxy host reaches it...
	run in_ns "$NS_P" "$CLIENT" -a 10 -n 1 -g 1k 192.168.0.100 20000
	[ "$output" = "ok 1" ]
	# ...the client does not.
	run in_ns "$NS_C" "$CLIENT" -a 10 192.168.0.100 20000 </dev/null
	echo "$output"
	[ "$status" -eq 1 ]
	[[ $output == *unreachable* ]]
	# The README's command line, on the proxy host.
	proxy_host 192.168.20.200 8080 192.168.0.100 20000
	has_line "$PROXY_LOG" 'listening on 192\.168\.20\.200:8080$'
	run in_ns "$NS_C" "$CLIENT" -a 30 -n 1 -g 1m 192.168.20.200 8080
	echo "$output"
	[ "$status" -eq 0 ]
	[ "$output" = "ok 1" ]
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	has_line "$PROXY_LOG" ' open id=1 client=192\.168\.20\.10:[0-9]+ server=192\.168\.0\.100:20000'
	has_line "$PROXY_LOG" ' close id=1 .* up=1048576 down=1048576 '
	# Still no way around it.
	run in_ns "$NS_C" "$CLIENT" -a 10 192.168.0.100 20000 </dev/null
	[ "$status" -eq 1 ]
}

@test "through the two-network proxy: 1 MiB up and another 1 MiB down, checksummed at both ends" {
	local up down
	two_networks
	server -s 99 reply 1m
	proxy_host -H 192.168.20.200 8080 192.168.0.100 20000
	run in_ns "$NS_C" "$CLIENT" -a 30 -r -w -g 1m -s 7 192.168.20.200 8080
	echo "$output"
	[ "$status" -eq 0 ]
	up=$(printf '%s\n' "$output" | sed -n 's/^sent //p')
	down=$(printf '%s\n' "$output" | sed -n 's/^recv //p')
	[ "${up%% *}" = 1048576 ]
	[ "${down%% *}" = 1048576 ]
	[ "$up" != "$down" ]
	wait_for 10 grep -q '^sent ' "$BACKEND_OUT"
	cat "$BACKEND_OUT"
	[ "$(field "$BACKEND_OUT" recv)" = "$up" ]
	[ "$(field "$BACKEND_OUT" sent)" = "$down" ]
}

chain_nginx() {
	nginx_conf
	cat >>"$T/ngx/nginx.conf" <<EOF
stream {
	server {
		listen 192.168.0.100:20000 proxy_protocol;
		return "\$proxy_protocol_addr:\$proxy_protocol_port from \$remote_addr\n";
	}
}
EOF
	SERVER_PORTS=(20000)
}

chain_haproxy() {
	haproxy_head tcp
	cat >>"$HAPROXY_CFG" <<EOF
listen lb
	bind 192.168.20.200:80
	log-format "lb %ci:%cp via %bi:%bp"
	server tcpproxy 192.168.20.200:8080 send-proxy-v2
EOF
	SERVER_PORTS=(80)
}

@test "a PROXY chain across the two networks: haproxy send-proxy-v2, tcpproxy --accept-proxy --send-proxy v1, nginx proxy_protocol all see 192.168.20.10" {
	local out cport via
	need_cmd haproxy
	need_nginx_stream
	two_networks
	# nginx on the server reports the address of the header it got and
	# the real peer it came from.
	NETNS=$NS_S start_nginx chain_nginx
	# tcpproxy on the proxy host believes headers from its own haproxy
	# only.
	proxy_host --accept-proxy --proxy-from 192.168.20.200/32 \
	    --send-proxy v1 192.168.20.200 8080 192.168.0.100 20000
	# haproxy, the load balancer on the proxy host, in front of it.
	NETNS=$NS_P start_haproxy chain_haproxy
	out=$(in_ns "$NS_C" timeout 10 socat -u TCP:192.168.20.200:80 -)
	echo "nginx: $out"
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	cat "$PROXY_LOG"
	cport=$(sed -n 's/.* open id=1 client=192\.168\.20\.10:\([0-9]*\) .*/\1/p' "$PROXY_LOG")
	[ -n "$cport" ]
	# nginx saw the client, by way of the proxy host's 192.168.0.1.
	[ "$out" = "192.168.20.10:$cport from 192.168.0.1" ]
	# haproxy logged the same client and the address it came to
	# tcpproxy from, which tcpproxy logged as via=.
	wait_for 10 has_line "$HAPROXY_OUT" "^lb 192\\.168\\.20\\.10:$cport via "
	via=$(sed -n 's/^lb .* via \(.*\)$/\1/p' "$HAPROXY_OUT")
	echo "haproxy: $(cat "$HAPROXY_OUT")"
	[[ $via == 192.168.20.200:* ]]
	has_line "$PROXY_LOG" " open id=1 client=192\\.168\\.20\\.10:$cport via=${via//./\\.} server=192\\.168\\.0\\.100:20000"
	# A client that forges a header straight to tcpproxy is refused:
	# only haproxy may say who the client is.
	printf 'PROXY TCP4 203.0.113.9 192.168.20.200 1111 8080\r\n' |
	    in_ns "$NS_C" socat -u - TCP:192.168.20.200:8080
	wait_for 10 has_line "$PROXY_LOG" ' refuse id=2 client=192\.168\.20\.10:[0-9]+ reason=proxy-untrusted'
	no_line "$PROXY_LOG" '203\.0\.113\.9'
}
