#!/usr/bin/env bats
# Bridges that cannot start or must end early: refused and hanging
# connects, the client limit, idle bridges.

load helper

@test "a refused connect closes the client, is logged, and the proxy keeps serving" {
	local port
	# A port held bound but not listening: refused, and not the proxy's.
	start_backend closed
	port=$BACKEND_PORT
	start_proxy 127.0.0.1 0 127.0.0.1 "$port"
	run "$CLIENT" -a 20 -r -g 0 127.0.0.1 "$PROXY_PORT"
	[ "$status" -ne 124 ]
	[[ $output == *"recv 0 "* ]]
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: close id=1 .*reason=connect-refused'
	# Now something listens there: the same proxy serves the next client.
	kill "$BACKEND_PID"
	wait "$BACKEND_PID" 2>/dev/null || true
	start_backend -p "$port" echo
	run "$CLIENT" -a 20 -n 2 -g 10k 127.0.0.1 "$PROXY_PORT"
	[ "$status" -eq 0 ]
	[ "$output" = "ok 2" ]
}

@test "a connect that hangs ends with connect-timeout after -t and closes the client" {
	start_backend blackhole
	proxy_to_backend -t 0.5
	run "$CLIENT" -a 30 -r -g 0 127.0.0.1 "$PROXY_PORT"
	[ "$status" -ne 124 ]
	[[ $output == *"recv 0 "* ]]
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: close id=1 .*reason=connect-timeout'
	kill -0 "$PROXY_PID"
}

@test "with -c 1 a second client waits until the first one leaves" {
	local c1 c2 rc=0
	start_backend echo
	proxy_to_backend -c 1
	mkfifo "$T/in1"
	SPAWN_STDIN=$T/in1 spawn single c1 "$CLIENT" -w 127.0.0.1 "$PROXY_PORT"
	c1=$SPAWNED
	exec 4>"$T/in1"
	echo first >&4
	wait_for 10 grep -q first "$T/c1.out"
	printf 'second\n' >"$T/in2"
	SPAWN_STDIN=$T/in2 spawn single c2 "$CLIENT" -k 7 127.0.0.1 "$PROXY_PORT"
	c2=$SPAWNED
	wait_for 10 has_line "$PROXY_LOG" 'max-clients'
	# A bounded look for something that must not happen: no bytes for c2.
	observe_for 1
	[ ! -s "$T/c2.out" ]
	kill -0 "$c2"
	[ "$(grep -c ' open id=' "$PROXY_LOG")" -eq 1 ]
	# The first client leaves; the second is served.
	exec 4>&-
	wait_for 10 is_gone "$c1"
	wait_for 10 is_gone "$c2"
	wait "$c2" || rc=$?
	[ "$rc" -eq 0 ]
	[ "$(cat "$T/c2.out")" = second ]
	[ "$(grep -c 'max-clients' "$PROXY_LOG")" -eq 1 ]
}

# hold_one ARGS...: starts a proxy with ARGS in front of an echo backend
# and one client that holds its place (fd 4 feeds it); sets C1.
hold_one() {
	start_backend echo
	proxy_to_backend "$@"
	mkfifo "$T/hold$PROXIES"
	SPAWN_STDIN=$T/hold$PROXIES spawn single "hold$PROXIES" "$CLIENT" -w \
	    127.0.0.1 "$PROXY_PORT"
	C1=$SPAWNED
	exec 4>"$T/hold$PROXIES"
	echo first >&4
	wait_for 10 grep -q first "$T/hold$PROXIES.out"
}

@test "with -c 1 a client held longer than --queue-timeout is closed with reason queue-timeout" {
	local c2 rc=0
	hold_one -c 1 --queue-timeout 0.3
	printf 'second\n' >"$T/in2"
	SPAWN_STDIN=$T/in2 spawn single c2 "$CLIENT" -a 30 127.0.0.1 \
	    "$PROXY_PORT"
	c2=$SPAWNED
	wait_for 10 is_gone "$c2"
	wait "$c2" || rc=$?
	[ "$rc" -eq 0 ]
	[ ! -s "$T/c2.out" ]
	has_line "$PROXY_LOG" '^tcpproxy: close id=2 client=127\.0\.0\.1:[0-9]+ server=- up=0 down=0 duration=(0\.[3-9]|[1-9])[0-9.]* reason=queue-timeout backend=-$'
	[ "$(grep -c ' open id=' "$PROXY_LOG")" -eq 1 ]
	# The first one was not disturbed; a third client still waits its turn.
	echo again >&4
	wait_for 10 grep -q again "$T/hold1.out"
	printf 'third\n' >"$T/in3"
	SPAWN_STDIN=$T/in3 spawn single c3 "$CLIENT" -a 30 -k 6 127.0.0.1 \
	    "$PROXY_PORT"
	exec 4>&-
	wait_for 10 is_gone "$SPAWNED"
	[ "$(cat "$T/c3.out")" = third ]
}

@test "the queue timeout defaults to the connect timeout; --queue-timeout 0 waits" {
	local c2
	hold_one -c 1 -t 0.3
	spawn single c2 "$CLIENT" -a 30 -g 0 127.0.0.1 "$PROXY_PORT"
	c2=$SPAWNED
	wait_for 10 has_line "$PROXY_LOG" ' close id=2 .*reason=queue-timeout'
	wait_for 10 is_gone "$c2"
	# With 0 the client waits in the listen queue until a place is free.
	hold_one -c 1 -t 0.3 --queue-timeout 0
	printf 'second\n' >"$T/in2"
	SPAWN_STDIN=$T/in2 spawn single c2 "$CLIENT" -a 30 -k 7 127.0.0.1 \
	    "$PROXY_PORT"
	c2=$SPAWNED
	wait_for 10 has_line "$PROXY_LOG" 'max-clients'
	observe_for 1
	kill -0 "$c2"
	no_line "$PROXY_LOG" 'reason=queue-timeout'
	exec 4>&-
	wait_for 10 is_gone "$c2"
	[ "$(cat "$T/c2.out")" = second ]
}

@test "held clients are served in the order they came" {
	local k
	hold_one -v -c 1
	for k in 2 3 4; do
		printf 'client%s\n' "$k" >"$T/in$k"
		SPAWN_STDIN=$T/in$k spawn single "c$k" "$CLIENT" -a 30 -k 8 \
		    127.0.0.1 "$PROXY_PORT"
		# Each is accepted (and queued) before the next connects.
		WAIT_INTERVAL=$FAST_POLL_INTERVAL wait_for 10 \
		    grep -q "queue id=$k " "$PROXY_LOG"
	done
	exec 4>&-
	for k in 2 3 4; do
		wait_for 10 grep -q "client$k" "$T/c$k.out"
	done
	[ "$(sed -n 's/.* open id=\([0-9]*\) .*/\1/p' "$PROXY_LOG" | tr '\n' ' ')" = "1 2 3 4 " ]
}

@test "after SIGTERM a held client is closed at once, an open bridge gets its grace" {
	local c2
	hold_one -c 1 --grace 30
	spawn single c2 "$CLIENT" -a 30 -g 0 127.0.0.1 "$PROXY_PORT"
	c2=$SPAWNED
	wait_for 10 has_line "$PROXY_LOG" 'max-clients'
	kill -TERM "$PROXY_PID"
	wait_for 10 has_line "$PROXY_LOG" ' close id=2 .*server=- .*reason=shutdown'
	wait_for 10 is_gone "$c2"
	no_line "$PROXY_LOG" ' close id=1 '
	echo still >&4
	wait_for 10 grep -q still "$T/hold1.out"
}

@test "bad --queue-timeout values are usage errors naming them" {
	bad_usage "'x'" --queue-timeout x 127.0.0.1 0 127.0.0.1 80
	bad_usage "'-1'" --queue-timeout -1 127.0.0.1 0 127.0.0.1 80
}

@test "--max-clients is the long name of -c" {
	local c1
	start_backend echo
	proxy_to_backend --max-clients 1
	mkfifo "$T/in1"
	SPAWN_STDIN=$T/in1 spawn single c1 "$CLIENT" -w 127.0.0.1 "$PROXY_PORT"
	c1=$SPAWNED
	exec 4>"$T/in1"
	echo first >&4
	wait_for 10 grep -q first "$T/c1.out"
	spawn single c2 "$CLIENT" -g 0 127.0.0.1 "$PROXY_PORT"
	wait_for 10 has_line "$PROXY_LOG" 'max-clients'
}

@test "an idle bridge is closed after -i with reason idle-timeout" {
	start_backend echo
	proxy_to_backend -i 0.5
	printf 'hi\n' >"$T/in"
	run "$CLIENT" -a 30 127.0.0.1 "$PROXY_PORT" <"$T/in"
	[ "$status" -eq 0 ]
	[ "$output" = hi ]
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: close id=1 .* up=3 down=3 .*reason=idle-timeout'
}

@test "a bridge with steady traffic is not closed by the idle timeout" {
	local c1 i
	start_backend echo
	proxy_to_backend --idle-timeout 1
	mkfifo "$T/in1"
	SPAWN_STDIN=$T/in1 spawn single c1 "$CLIENT" -w 127.0.0.1 "$PROXY_PORT"
	c1=$SPAWNED
	exec 4>"$T/in1"
	# Pacing, not waiting: a line every 0.2 s for over 2 s.
	for i in 1 2 3 4 5 6 7 8 9 10 11 12; do
		echo "line $i at $(now_ms) ms"
		echo "line$i" >&4
		wait_for 10 grep -q "^line$i\$" "$T/c1.out"
		observe_for 0.2	# pacing: the bridge must stay open meanwhile
	done
	exec 4>&-
	wait_for 10 is_gone "$c1"
	[ "$(wc -l <"$T/c1.out")" -eq 12 ]
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 .*reason=client-closed'
	no_line "$PROXY_LOG" 'idle-timeout'
}
