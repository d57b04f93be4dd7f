#!/usr/bin/env bats
# Resources under stress: memory with a slow peer, descriptors running
# out, descriptors given back after resets.  These read /proc (Linux).

load helper

# max_rss_while PID SECS: prints the highest VmRSS (KiB) of PID seen over
# SECS seconds of sampling.
max_rss_while() {
	local pid=$1 n max=0 r
	n=$(awk "BEGIN { print int($2 * 20) }")
	while [ "$n" -gt 0 ]; do
		r=$(rss_kb "$pid")
		[ "${r:-0}" -gt "$max" ] && max=$r
		sleep "$POLL_INTERVAL"
		n=$((n - 1))
	done
	echo "$max"
}

@test "a client that does not read keeps the proxy's memory bounded" {
	local base max c1
	need_proc
	start_backend source 256m
	proxy_to_backend
	base=$(rss_kb "$PROXY_PID")
	spawn single c1 "$CLIENT" -r -g 0 -W 2000 127.0.0.1 "$PROXY_PORT"
	c1=$SPAWNED
	wait_for 10 has_line "$PROXY_LOG" ' open id=1 '
	max=$(max_rss_while "$PROXY_PID" 1.5)
	echo "VmRSS before $base KiB, at most $max KiB while stalled"
	[ "$max" -lt $((base + 20480)) ]
	# Then it reads: every byte arrives, memory still bounded.
	max=$(max_rss_while "$PROXY_PID" 1)
	[ "$max" -lt $((base + 20480)) ]
	wait_for 120 is_gone "$c1"
	[ "$(field "$T/c1.out" recv)" = "$(field "$BACKEND_OUT" sent)" ]
	[ "$(field "$T/c1.out" recv | cut -d' ' -f1)" = 268435456 ]
}

@test "a server that reads slowly keeps the proxy's memory bounded" {
	local base max
	need_proc
	start_backend -d 50 slow 1024
	proxy_to_backend
	base=$(rss_kb "$PROXY_PID")
	spawn single c1 "$CLIENT" -x -g 256m 127.0.0.1 "$PROXY_PORT"
	wait_for 10 has_line "$PROXY_LOG" ' open id=1 '
	max=$(max_rss_while "$PROXY_PID" 2)
	echo "VmRSS before $base KiB, at most $max KiB"
	[ "$max" -lt $((base + 20480)) ]
	kill -0 "$PROXY_PID"
}

@test "out of descriptors the proxy neither crashes nor spins, and serves again" {
	local pids=() i before after
	need_proc
	start_backend echo
	spawn single proxy bash -c 'ulimit -n 16 && exec "$@"' ulimit \
	    "$TCPPROXY" 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	PROXY_PID=$SPAWNED
	PROXY_LOG=$T/proxy.err
	PROXY_PORT=$(ready_port "$PROXY_LOG")
	for i in $(seq 20); do
		spawn single "hold$i" "$CLIENT" -g 0 -W 600000 127.0.0.1 "$PROXY_PORT"
		pids+=("$SPAWNED")
	done
	wait_for 10 has_line "$PROXY_LOG" 'out of file descriptors'
	kill -0 "$PROXY_PID"
	before=$(cpu_ticks "$PROXY_PID")
	# A bounded look for something that must not happen: a busy loop.
	observe_for 1
	after=$(cpu_ticks "$PROXY_PID")
	echo "cpu ticks over 1 s with clients stuck: $((after - before))"
	[ $((after - before)) -le 10 ]
	kill -TERM "${pids[@]}"
	for i in "${pids[@]}"; do
		wait_for 10 is_gone "$i"
	done
	printf 'again\n' >"$T/in"
	"$CLIENT" -a 30 -k 6 127.0.0.1 "$PROXY_PORT" <"$T/in" >"$T/out"
	[ "$(cat "$T/out")" = again ]
	kill -0 "$PROXY_PID"
}

# fd_limit_leaving PID N: prints the descriptor limit that leaves PID
# exactly N descriptors to open (new ones take the lowest free numbers
# below the limit; inherited ones above it do not count).
fd_limit_leaving() {
	local l=0 free=0
	while [ "$free" -lt "$2" ]; do
		[ -e "/proc/$1/fd/$l" ] || free=$((free + 1))
		l=$((l + 1))
	done
	echo "$l"
}

# Starts the proxy with -t SECS ($1) and room for two bridges and one
# descriptor more, then two clients that hold their bridges open (pids in
# HOLDERS): a third client is accepted, but its server connection cannot
# be made until a descriptor is freed.
proxy_at_fd_limit() {
	local i
	need_proc
	command -v prlimit >/dev/null || skip "needs prlimit (util-linux)"
	start_backend echo
	proxy_to_backend -t "$1"
	FD_BASE=$(fd_count "$PROXY_PID")
	prlimit --pid "$PROXY_PID" \
	    --nofile="$(fd_limit_leaving "$PROXY_PID" 5)"
	HOLDERS=()
	for i in 1 2; do
		spawn single "hold$i" "$CLIENT" -g 0 -W 600000 127.0.0.1 \
		    "$PROXY_PORT"
		HOLDERS+=("$SPAWNED")
	done
	wait_for 10 eval '[ "$(grep -c " open id=" "$PROXY_LOG")" -eq 2 ]'
}

@test "a client accepted at the descriptor limit waits for a descriptor, then is served" {
	proxy_at_fd_limit 30
	printf 'late\n' >"$T/in"
	SPAWN_STDIN=$T/in spawn single late "$CLIENT" -a 30 -k 5 127.0.0.1 \
	    "$PROXY_PORT"
	wait_for 10 has_line "$PROXY_LOG" 'out of file descriptors'
	wait_for 10 has_line "$PROXY_LOG" ' open id=3 '
	# Its client is in, its server connection is not: it waits.
	[ "$(fd_count "$PROXY_PID")" -eq $((FD_BASE + 5)) ]
	[ ! -s "$T/late.out" ]
	# One holder leaves: its descriptors go to the waiting bridge.
	kill -TERM "${HOLDERS[0]}"
	wait_for 10 eval '[ "$(cat "$T/late.out")" = late ]'
	wait_for 10 has_line "$PROXY_LOG" ' close id=3 .*reason=client-closed'
	kill -TERM "${HOLDERS[1]}"
	wait_for 10 eval '[ "$(fd_count "$PROXY_PID")" -eq "$FD_BASE" ]'
}

@test "a client waiting for a descriptor is closed after the connect timeout" {
	local t0 t1
	proxy_at_fd_limit 1
	t0=$(now_ms)
	run "$CLIENT" -a 30 -g 0 127.0.0.1 "$PROXY_PORT"
	t1=$(now_ms)
	echo "closed after $((t1 - t0)) ms"
	[ "$status" -eq 0 ]
	has_line "$PROXY_LOG" ' close id=3 .*reason=connect-failed error="[^"]+"'
	[ $((t1 - t0)) -ge 900 ]
	kill -0 "${HOLDERS[0]}" "${HOLDERS[1]}"
	no_line "$PROXY_LOG" ' close id=[12] '
}

@test "after a storm of resets and vanished clients the proxy's descriptors return to their count" {
	local before i pids=()
	need_proc
	start_backend source 16m
	proxy_to_backend
	before=$(fd_count "$PROXY_PID")
	# Clients that reset mid-transfer...
	for i in $(seq 30); do
		spawn single "reset$i" "$CLIENT" -R -k 100k 127.0.0.1 "$PROXY_PORT"
		pids+=("$SPAWNED")
	done
	# ...and clients killed while bytes wait for them.
	for i in $(seq 20); do
		spawn single "gone$i" "$CLIENT" -g 0 -W 600000 127.0.0.1 "$PROXY_PORT"
		pids+=("$SPAWNED")
	done
	wait_for 20 eval '[ "$(grep -c " open id=" "$PROXY_LOG")" -eq 50 ]'
	for i in $(seq 20); do
		kill -KILL "${pids[$((29 + i))]}"
	done
	for i in "${pids[@]}"; do
		wait_for 30 is_gone "$i"
	done
	wait_for 30 eval '[ "$(fd_count "$PROXY_PID")" -eq "$before" ]'
	wait_for 10 eval '[ "$(grep -c " close id=" "$PROXY_LOG")" -eq 50 ]'
	has_line "$PROXY_LOG" 'reason=client-reset'
	# And it still serves.
	"$CLIENT" -r -g 0 127.0.0.1 "$PROXY_PORT" >"$T/c"
	[ "$(field "$T/c" recv)" = "$(field "$BACKEND_OUT" sent)" ]
	[ "$(field "$T/c" recv | cut -d' ' -f1)" = 16777216 ]
}
