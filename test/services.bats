#!/usr/bin/env bats
# Several backends behind one listener: the balancing policies, retry on
# a failed connect, passive and active health.

load helper
load options_helper

# ---- --balance ----

@test "roundrobin over three backends gives each of 30 serial clients' bridges to the next in turn" {
	local a b c i
	start_backend echo
	a=$BACKEND_PORT
	start_backend echo
	b=$BACKEND_PORT
	start_backend echo
	c=$BACKEND_PORT
	start_proxy 127.0.0.1 0 127.0.0.1 "$a" "127.0.0.1:$b" 127.0.0.1 "$c"
	for i in $(seq 30); do
		run "$CLIENT" -a 30 -n 1 -g 1k -s "$i" 127.0.0.1 "$PROXY_PORT"
		[ "$status" -eq 0 ]
		[ "$output" = "ok 1" ]
	done
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " close id=")" -eq 30 ]'
	echo "bridges: $(closes_on "$PROXY_LOG" "$a") $(closes_on "$PROXY_LOG" "$b") $(closes_on "$PROXY_LOG" "$c")"
	[ "$(closes_on "$PROXY_LOG" "$a")" -eq 10 ]
	[ "$(closes_on "$PROXY_LOG" "$b")" -eq 10 ]
	[ "$(closes_on "$PROXY_LOG" "$c")" -eq 10 ]
	# In turn: bridges 1, 4, 7... on the first, and so on.
	has_line "$PROXY_LOG" " close id=1 .* backend=127\\.0\\.0\\.1:$a\$"
	has_line "$PROXY_LOG" " close id=2 .* backend=127\\.0\\.0\\.1:$b\$"
	has_line "$PROXY_LOG" " close id=3 .* backend=127\\.0\\.0\\.1:$c\$"
	has_line "$PROXY_LOG" " close id=30 .* backend=127\\.0\\.0\\.1:$c\$"
	# Every bridge's bytes came back whole, the close lines say.
	[ "$(count_lines "$PROXY_LOG" " close id=.* up=1024 down=1024 ")" -eq 30 ]
}

@test "leastconn sends a new client to the backend with the fewest open bridges" {
	local a b held other i
	start_backend echo
	a=$BACKEND_PORT
	start_backend echo
	b=$BACKEND_PORT
	start_proxy --balance leastconn 127.0.0.1 0 127.0.0.1 "$a" 127.0.0.1 "$b"
	# One bridge held open on whichever backend it got.
	mkfifo "$T/in1"
	SPAWN_STDIN=$T/in1 spawn single held "$CLIENT" -w 127.0.0.1 "$PROXY_PORT"
	exec 4>"$T/in1"
	echo held >&4
	wait_for 10 grep -q held "$T/held.out"
	held=$(sed -n 's/.* open id=1 .* server=127\.0\.0\.1:\([0-9]*\)$/\1/p' \
	    "$PROXY_LOG")
	if [ "$held" = "$a" ]; then other=$b; else other=$a; fi
	[ "$held" = "$a" ] || [ "$held" = "$b" ]
	# Each next client finds the other backend with none open, again
	# and again (roundrobin would alternate).
	for i in 1 2 3 4; do
		run "$CLIENT" -a 30 -n 1 -g 1k -s "$i" 127.0.0.1 "$PROXY_PORT"
		[ "$output" = "ok 1" ]
		wait_for 10 has_line "$PROXY_LOG" " close id=$((i + 1)) "
	done
	[ "$(closes_on "$PROXY_LOG" "$other")" -eq 4 ]
	[ "$(closes_on "$PROXY_LOG" "$held")" -eq 0 ]
	# The held bridge still relays.
	echo still >&4
	wait_for 10 grep -q still "$T/held.out"
	exec 4>&-
	wait_for 10 has_line "$PROXY_LOG" " close id=1 .* backend=127\\.0\\.0\\.1:$held\$"
}

# backends_of FILE ADDR: prints the distinct backend ports of the close
# lines of clients from ADDR, one a line.
backends_of() {
	grep -E " close id=[0-9]+ client=${2//./\\.}:" "$1" |
	    sed 's/.* backend=127\.0\.0\.1:\([0-9]*\)$/\1/' | sort -u
}

@test "source keeps each client address on one backend" {
	local a b c i src n=0
	need_socat
	start_backend echo
	a=$BACKEND_PORT
	start_backend echo
	b=$BACKEND_PORT
	start_backend echo
	c=$BACKEND_PORT
	start_proxy -H --balance source 127.0.0.1 0 127.0.0.1 "$a" \
	    127.0.0.1 "$b" 127.0.0.1 "$c"
	for src in 127.0.0.1 127.0.0.2 127.0.0.3; do
		for i in 1 2 3 4 5 6; do
			run from "$src" "$PROXY_PORT" <<<"$src $i"
			[ "$output" = "$src $i" ]
			n=$((n + 1))
			wait_for 10 has_line "$PROXY_LOG" " close id=$n "
		done
	done
	for src in 127.0.0.1 127.0.0.2 127.0.0.3; do
		echo "$src: $(backends_of "$PROXY_LOG" "$src" | tr '\n' ' ')"
		[ "$(backends_of "$PROXY_LOG" "$src" | wc -l)" -eq 1 ]
		[ "$(count_lines "$PROXY_LOG" " close id=[0-9]+ client=${src//./\\.}:")" -eq 6 ]
	done
	# test/client connects from 127.0.0.1 too: the same backend.
	run "$CLIENT" -a 30 -n 4 -g 1k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 4" ]
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " close id=")" -eq 22 ]'
	[ "$(backends_of "$PROXY_LOG" 127.0.0.1 | wc -l)" -eq 1 ]
}

# client_on PORT: runs one echo check through the proxy and
# succeeds if its bridge was closed on backend 127.0.0.1:PORT.
client_on() {
	local n
	n=$(($(count_lines "$PROXY_LOG" " close id=") + 1))
	"$CLIENT" -a 30 -n 1 -g 1k 127.0.0.1 "$PROXY_PORT" >/dev/null || return 1
	wait_for 10 has_line "$PROXY_LOG" " close id=$n " || return 1
	has_line "$PROXY_LOG" " close id=$n .* backend=127\\.0\\.0\\.1:$1\$"
}

@test "first fails over in order and comes back to the first once it is healthy" {
	local one two pid1 i
	start_backend echo
	one=$BACKEND_PORT
	pid1=$BACKEND_PID
	start_backend echo
	two=$BACKEND_PORT
	start_proxy --balance first --down-time 1 127.0.0.1 0 \
	    127.0.0.1 "$one" 127.0.0.1 "$two"
	for i in 1 2 3; do
		client_on "$one"
	done
	# It dies (its port held, refusing, so that nothing else takes it).
	restart_backend "$pid1" "$one" closed
	# The first connect after that is refused and retried on two.
	for i in 1 2 3; do
		client_on "$two"
	done
	wait_for 10 has_line "$PROXY_LOG" "^tcpproxy: backend down backend=127\\.0\\.0\\.1:$one fails=1 error=\"Connection refused\"\$"
	# Back on its port: once its down time is over, a client probes it
	# and from then on the first backend takes them all again.
	restart_backend "$BACKEND_PID" "$one" echo
	wait_for 20 client_on "$one"
	has_line "$PROXY_LOG" "^tcpproxy: backend up backend=127\\.0\\.0\\.1:$one down_for=[0-9.]+\$"
	for i in 1 2 3; do
		client_on "$one"
	done
	[ "$(count_lines "$PROXY_LOG" ' backend down ')" -eq 1 ]
	[ "$(count_lines "$PROXY_LOG" ' backend up ')" -eq 1 ]
	no_line "$PROXY_LOG" 'reason=connect-'
}

# connects_to FILE PORT: prints how many -v connect lines in FILE go to
# backend 127.0.0.1:PORT.
connects_to() {
	count_lines "$1" "^tcpproxy: connect id=[0-9]+ server=127\\.0\\.0\\.1:$2 backend=127\\.0\\.0\\.1:$2( |\$)"
}

# probed PORT: runs one echo check through the proxy, which must
# succeed, then succeeds if the proxy has tried backend PORT twice.
probed() {
	"$CLIENT" -a 30 -n 1 -g 1k 127.0.0.1 "$PROXY_PORT" >/dev/null &&
	    [ "$(connects_to "$PROXY_LOG" "$1")" -ge 2 ]
}

@test "a backend that refuses is skipped without a client noticing, then probed after its down time" {
	local a bad c pidbad i
	start_backend echo
	a=$BACKEND_PORT
	start_backend closed
	bad=$BACKEND_PORT
	pidbad=$BACKEND_PID
	start_backend echo
	c=$BACKEND_PORT
	start_proxy -v --down-time 1 127.0.0.1 0 127.0.0.1 "$a" \
	    127.0.0.1 "$bad" 127.0.0.1 "$c"
	for i in $(seq 20); do
		run "$CLIENT" -a 30 -n 1 -g 4k -s "$i" 127.0.0.1 "$PROXY_PORT"
		[ "$status" -eq 0 ]
		[ "$output" = "ok 1" ]
	done
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " close id=")" -eq 20 ]'
	# The refused one's turns went to the next in line.
	[ "$(closes_on "$PROXY_LOG" "$a")" -ge 1 ]
	[ "$(closes_on "$PROXY_LOG" "$c")" -ge 1 ]
	[ $(($(closes_on "$PROXY_LOG" "$a") + $(closes_on "$PROXY_LOG" "$c"))) -eq 20 ]
	[ "$(closes_on "$PROXY_LOG" "$bad")" -eq 0 ]
	no_line "$PROXY_LOG" 'reason=connect-'
	[ "$(count_lines "$PROXY_LOG" ' backend down ')" -eq 1 ]
	has_line "$PROXY_LOG" "^tcpproxy: backend down backend=127\\.0\\.0\\.1:$bad fails=1 error=\"Connection refused\"\$"
	# After its down time a client is sent to it again (and, refused,
	# moves on: still no error, no second down line).
	wait_for 20 probed "$bad"
	[ "$(count_lines "$PROXY_LOG" ' backend down ')" -eq 1 ]
	no_line "$PROXY_LOG" 'reason=connect-'
	# It comes back: the next probe finds it and it is up again.
	restart_backend "$pidbad" "$bad" echo
	wait_for 20 eval '"$CLIENT" -a 30 -n 1 -g 1k 127.0.0.1 "$PROXY_PORT" \
	    >/dev/null && has_line "$PROXY_LOG" " backend up "'
	has_line "$PROXY_LOG" "^tcpproxy: backend up backend=127\\.0\\.0\\.1:$bad down_for=[0-9.]+\$"
	wait_for 10 eval '[ "$(closes_on "$PROXY_LOG" "$bad")" -ge 1 ]'
	no_line "$PROXY_LOG" 'reason=connect-'
}

@test "when every backend refuses, a client is closed at once with reason connect-refused" {
	local a b
	start_backend closed
	a=$BACKEND_PORT
	start_backend closed
	b=$BACKEND_PORT
	start_proxy -v 127.0.0.1 0 127.0.0.1 "$a" 127.0.0.1 "$b"
	run "$CLIENT" -a 10 -r -g 100 127.0.0.1 "$PROXY_PORT"
	[ "$status" -ne 124 ]
	[[ $output == *"recv 0 "* ]]
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: close id=1 .* reason=connect-refused error="Connection refused" backend=127\.0\.0\.1:[0-9]+$'
	[ "$(count_lines "$PROXY_LOG" ' backend down ')" -eq 2 ]
	# Both are down now; they are tried anyway, each once.
	run "$CLIENT" -a 10 -r -g 100 127.0.0.1 "$PROXY_PORT"
	[ "$status" -ne 124 ]
	[[ $output == *"recv 0 "* ]]
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: close id=2 .* reason=connect-refused '
	[ "$(count_lines "$PROXY_LOG" '^tcpproxy: connect id=2 server=[^ ]+ backend=')" -eq 2 ]
	[ "$(connects_to "$PROXY_LOG" "$a")" -eq 2 ]
	[ "$(connects_to "$PROXY_LOG" "$b")" -eq 2 ]
	[ "$(count_lines "$PROXY_LOG" ' backend down ')" -eq 2 ]
	kill -0 "$PROXY_PID"
}

@test "--health-check marks a dead backend down without client traffic, and up when it returns" {
	local a b pida
	start_backend echo
	a=$BACKEND_PORT
	pida=$BACKEND_PID
	start_backend echo
	b=$BACKEND_PORT
	start_proxy --health-check 0.2 --down-time 1 127.0.0.1 0 \
	    127.0.0.1 "$a" 127.0.0.1 "$b"
	restart_backend "$pida" "$a" closed
	wait_for 10 has_line "$PROXY_LOG" "^tcpproxy: backend down backend=127\\.0\\.0\\.1:$a fails=1 error=\"Connection refused\"\$"
	restart_backend "$BACKEND_PID" "$a" echo
	wait_for 10 has_line "$PROXY_LOG" "^tcpproxy: backend up backend=127\\.0\\.0\\.1:$a down_for=[0-9.]+\$"
	# No client came; the healthy one never went down.
	no_line "$PROXY_LOG" ' open id='
	no_line "$PROXY_LOG" "backend=127\\.0\\.0\\.1:$b "
	[ "$(count_lines "$PROXY_LOG" ' backend down ')" -eq 1 ]
	# It serves again.
	run "$CLIENT" -a 30 -n 2 -g 1k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 2" ]
}

@test "a client's early bytes arrive whole at the backend that answered after a failover" {
	local bad
	start_backend closed
	bad=$BACKEND_PORT
	start_backend sink
	start_proxy --balance first 127.0.0.1 0 127.0.0.1 "$bad" \
	    127.0.0.1 "$BACKEND_PORT"
	"$CLIENT" -a 30 -r -g 1m -w 127.0.0.1 "$PROXY_PORT" >"$T/c"
	wait_for 20 has_line "$BACKEND_OUT" '^recv '
	[ "$(field "$BACKEND_OUT" recv)" = "$(field "$T/c" sent)" ]
	[ "$(field "$BACKEND_OUT" recv | cut -d' ' -f1)" = 1048576 ]
	[ "$(count_lines "$BACKEND_OUT" '^recv ')" -eq 1 ]
	wait_for 10 has_line "$PROXY_LOG" " close id=1 .* up=1048576 down=0 .*backend=127\\.0\\.0\\.1:$BACKEND_PORT\$"
	has_line "$PROXY_LOG" "^tcpproxy: backend down backend=127\\.0\\.0\\.1:$bad "
}

@test "bytes sent while a connect times out arrive whole at the next backend" {
	local hole
	start_backend blackhole
	hole=$BACKEND_PORT
	start_backend sink
	start_proxy --balance first -t 0.5 127.0.0.1 0 127.0.0.1 "$hole" \
	    127.0.0.1 "$BACKEND_PORT"
	# The whole upload is written (into the proxy's buffers and the
	# sockets') before the blackhole's connect gives up.
	"$CLIENT" -a 30 -r -g 64k -w 127.0.0.1 "$PROXY_PORT" >"$T/c"
	wait_for 20 has_line "$BACKEND_OUT" '^recv '
	[ "$(field "$BACKEND_OUT" recv)" = "$(field "$T/c" sent)" ]
	[ "$(field "$BACKEND_OUT" recv | cut -d' ' -f1)" = 65536 ]
	wait_for 10 has_line "$PROXY_LOG" " close id=1 .* up=65536 down=0 .*backend=127\\.0\\.0\\.1:$BACKEND_PORT\$"
	# strerror(ETIMEDOUT): "Connection timed out" with glibc,
	# "Operation timed out" with musl and the BSDs.
	has_line "$PROXY_LOG" "^tcpproxy: backend down backend=127\\.0\\.0\\.1:$hole fails=1 error=\"[A-Za-z]+ timed out\"\$"
}
