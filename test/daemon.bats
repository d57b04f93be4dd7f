#!/usr/bin/env bats
# What a test script needs to start a proxy and forget it: --ready-fd,
# --port-file, -D with $(...), --log-file, --exit-with-parent, --lifetime.

load helper

# two_services: writes $T/two.conf, a TCP service on port 0 and a Unix
# socket service, both in front of the last backend.
two_services() {
	printf '127.0.0.1 0 127.0.0.1 %s\n%s 127.0.0.1 %s\n' \
	    "$BACKEND_PORT" "$T/s.sock" "$BACKEND_PORT" >"$T/two.conf"
}

# listening_names FILE: prints the addresses of FILE's "listening on"
# lines, one a line, without the service tag.
listening_names() {
	sed -n 's/.* listening on \([^ ]*\).*/\1/p' "$1"
}

# ---- --ready-fd, --port-file ----

@test "--ready-fd writes one ADDR:PORT line per listener, then closes it" {
	start_backend echo
	two_services
	# The reader ends when every writer closed the pipe: the proxy too.
	mkfifo "$T/fifo"
	(cat <"$T/fifo" >"$T/ready" && : >"$T/eof") 3>&- &
	echo "single $!" >>"$PIDS"
	spawn single proxy "$TCPPROXY" -f "$T/two.conf" --ready-fd 5 \
	    5>"$T/fifo"
	wait_for 10 test -e "$T/eof"
	kill -0 "$SPAWNED"
	cat "$T/ready"
	[ "$(lines_in "$T/ready")" -eq 2 ]
	[ "$(listening_names "$T/proxy.err")" = "$(cat "$T/ready")" ]
	grep -Eqx '127\.0\.0\.1:[1-9][0-9]*' "$T/ready"
	grep -Fqx "$T/s.sock" "$T/ready"
	# The port it names is the proxy's.
	run "$CLIENT" -n 1 -g 100 127.0.0.1 "$(sed -n 's/.*://p;q' "$T/ready")"
	[ "$status" -eq 0 ]
}

@test "--port-file holds the same lines, and goes at a clean exit" {
	start_backend echo
	two_services
	spawn single proxy "$TCPPROXY" -f "$T/two.conf" --port-file "$T/ports"
	wait_for 10 test -s "$T/ports"
	[ "$(listening_names "$T/proxy.err")" = "$(cat "$T/ports")" ]
	# Written whole under its name: no temporary file is left.
	[ "$(ls "$T" | grep -c '^ports')" -eq 1 ]
	kill -TERM "$SPAWNED"
	wait_for 10 is_gone "$SPAWNED"
	[ ! -e "$T/ports" ]
}

@test "a --ready-fd that is not open fails the start, naming it" {
	run $LIMIT "$TCPPROXY" --ready-fd 99 127.0.0.1 0 127.0.0.1 9 99>&-
	echo "$output"
	[ "$status" -eq 1 ]
	[ "${lines[-1]}" = "tcpproxy: cannot write to --ready-fd 99: Bad file descriptor" ]
}

@test "--ready-fd takes a descriptor number, --port-file a name" {
	bad_usage "--ready-fd" --ready-fd x 127.0.0.1 0 127.0.0.1 9
	bad_usage "--ready-fd" --ready-fd 0 127.0.0.1 0 127.0.0.1 9
	bad_usage "--port-file" --port-file '' 127.0.0.1 0 127.0.0.1 9
}

@test "a --port-file that cannot be written fails the start, naming it" {
	run $LIMIT "$TCPPROXY" --port-file "$T/no/ports" 127.0.0.1 0 \
	    127.0.0.1 9
	echo "$output"
	[ "$status" -eq 1 ]
	[ "${lines[-1]}" = "tcpproxy: cannot write port file '$T/no/ports': No such file or directory" ]
}

# ---- -D, --log-file ----

# daemon ARGS...: runs tcpproxy -D --pid-file $T/pid ARGS as $(...) would,
# with stdout in $OUT and stderr in $T/daemon.err, its status in $RC; the
# daemon's pid, once there is one, is killed in teardown.
daemon() {
	RC=0
	OUT=$($LIMIT "$TCPPROXY" -D --lifetime 60 --pid-file "$T/pid" "$@" 2>"$T/daemon.err") ||
	    RC=$?
	if [ -s "$T/pid" ]; then
		echo "single $(cat "$T/pid")" >>"$PIDS"
	fi
}

@test "-D prints the ADDR:PORT line and leaves the proxy running, so \$(...) returns at once" {
	local pid
	start_backend echo
	daemon 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	echo "status $RC, out '$OUT'"
	[ "$RC" -eq 0 ]
	[[ $OUT =~ ^127\.0\.0\.1:[1-9][0-9]*$ ]]
	[ ! -s "$T/daemon.err" ]
	pid=$(cat "$T/pid")
	kill -0 "$pid"
	run "$CLIENT" -n 1 -g 1k 127.0.0.1 "${OUT##*:}"
	[ "$status" -eq 0 ]
	[ "$output" = "ok 1" ]
	# Its own session; stdout and stderr let go (/dev/null, no --log-file).
	if [ -d "/proc/$pid/fd" ]; then
		[ "$(readlink "/proc/$pid/fd/1")" = /dev/null ]
		[ "$(readlink "/proc/$pid/fd/2")" = /dev/null ]
		[ "$(ps -o sid= -p "$pid" | tr -d ' ')" -eq "$pid" ]
	fi
	kill -TERM "$pid"
	wait_for 10 is_gone "$pid"
	[ ! -e "$T/pid" ]
}

@test "-D holds neither stdout nor stderr of the \$(...) that ran it" {
	start_backend echo
	# 2>&1 inside $(...): the daemon must not keep that pipe either.
	OUT=$($LIMIT "$TCPPROXY" -D --lifetime 60 --pid-file "$T/pid" 127.0.0.1 0 \
	    127.0.0.1 "$BACKEND_PORT" 2>&1)
	echo "single $(cat "$T/pid")" >>"$PIDS"
	[[ $OUT =~ ^127\.0\.0\.1:[1-9][0-9]*$ ]]
}

@test "-D prints one line per listener, as --ready-fd does" {
	start_backend echo
	two_services
	daemon -f "$T/two.conf"
	[ "$RC" -eq 0 ]
	printf '%s\n' "$OUT"
	[ "$(printf '%s\n' "$OUT" | wc -l)" -eq 2 ]
	printf '%s\n' "$OUT" | grep -Fqx "$T/s.sock"
}

@test "-D that cannot start exits 1 with the proxy's own error on stderr, nothing on stdout" {
	start_backend echo
	daemon 127.0.0.1 "$BACKEND_PORT" 127.0.0.1 9
	cat "$T/daemon.err"
	[ "$RC" -eq 1 ]
	[ -z "$OUT" ]
	[ "$(lines_in "$T/daemon.err")" -eq 1 ]
	has_line "$T/daemon.err" "^tcpproxy: .*127\\.0\\.0\\.1:$BACKEND_PORT.*in use"
	[ ! -e "$T/pid" ]
	# An error before binding comes back the same way.
	daemon -u nosuchuser 127.0.0.1 0 127.0.0.1 9
	[ "$RC" -eq 1 ]
	[ "$(cat "$T/daemon.err")" = "tcpproxy: cannot drop privileges: unknown user 'nosuchuser'" ]
}

@test "-D with --log-file appends the daemon's log lines to the file" {
	start_backend echo
	echo "an earlier line" >"$T/log"
	daemon -v --log-file "$T/log" 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	[ "$RC" -eq 0 ]
	[ "$(head -n 1 "$T/log")" = "an earlier line" ]
	has_line "$T/log" "^tcpproxy: listening on $OUT\$"
	run "$CLIENT" -n 1 -g 100 127.0.0.1 "${OUT##*:}"
	[ "$status" -eq 0 ]
	wait_for 10 has_line "$T/log" ' close id=1 '
}

@test "--log-file without -D takes the lines that went to stderr" {
	start_backend echo
	spawn single proxy "$TCPPROXY" --log-file "$T/log" --port-file \
	    "$T/ports" 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	wait_for 10 test -s "$T/ports"
	has_line "$T/log" "^tcpproxy: listening on $(cat "$T/ports")\$"
	[ ! -s "$T/proxy.err" ]
}

@test "a --log-file that cannot be opened fails the start, naming it, also with -D" {
	start_fails "cannot open --log-file '$T/no/log': No such file" \
	    --log-file "$T/no/log" 127.0.0.1 0 127.0.0.1 9
	daemon --log-file "$T/no/log" 127.0.0.1 0 127.0.0.1 9
	[ "$RC" -eq 1 ]
	has_line "$T/daemon.err" "^tcpproxy: cannot open --log-file '$T/no/log': No such file"
}

# ---- --exit-with-parent, --lifetime ----

# parent_of_proxy ARGS...: starts a shell (PARENT) that starts tcpproxy
# ARGS --port-file $T/ports in the background (PROXY, stderr in
# $T/child.err) and then stays, as a test script would; waits until the
# proxy is up.
parent_of_proxy() {
	spawn single parent sh -c '"$@" 2>"$0.err" 3>&- & echo $! >"$0.pid";
	    exec sleep 1000' "$T/child" "$TCPPROXY" "$@" --port-file "$T/ports"
	PARENT=$SPAWNED
	wait_for 10 test -s "$T/ports"
	PROXY=$(cat "$T/child.pid")
	echo "single $PROXY" >>"$PIDS"
}

@test "--exit-with-parent: the proxy stops when the process that started it is killed" {
	start_backend echo
	parent_of_proxy --exit-with-parent 127.0.0.1 0 127.0.0.1 \
	    "$BACKEND_PORT"
	kill -0 "$PROXY"
	kill -KILL "$PARENT"
	wait_for 10 is_gone "$PROXY"
	has_line "$T/child.err" '^tcpproxy: stopping: the parent process exited$'
	# Like SIGTERM: a clean exit, its port file removed.
	[ ! -e "$T/ports" ]
}

@test "without --exit-with-parent the proxy outlives its parent" {
	start_backend echo
	parent_of_proxy 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	kill -KILL "$PARENT"
	wait "$PARENT" || true
	observe_for 0.5
	kill -0 "$PROXY"
}

@test "-D --exit-with-parent outlives the -D process and stops with the shell that ran it" {
	start_backend echo
	spawn single parent sh -c '"$@" >"$0.out"; exec sleep 1000' "$T/sh" \
	    "$TCPPROXY" -D --lifetime 60 --exit-with-parent --pid-file "$T/pid" \
	    --log-file "$T/log" 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	PARENT=$SPAWNED
	wait_for 10 test -s "$T/sh.out"
	PROXY=$(cat "$T/pid")
	echo "single $PROXY" >>"$PIDS"
	# The -D process is gone by now; the shell is not: the proxy stays.
	observe_for 0.5
	kill -0 "$PROXY"
	no_line "$T/log" 'stopping'
	kill -KILL "$PARENT"
	wait "$PARENT" || true
	wait_for 10 is_gone "$PROXY"
	has_line "$T/log" '^tcpproxy: stopping: the parent process exited$'
}

# lifetime_over: the last proxy ends by itself (in 10 s), with status 0,
# and says why.
lifetime_over() {
	local rc=0
	wait_for 10 is_gone "$PROXY_PID"
	wait "$PROXY_PID" || rc=$?
	[ "$rc" -eq 0 ]
	has_line "$PROXY_LOG" '^tcpproxy: stopping: the --lifetime is over$'
}

@test "--lifetime SECS: the proxy stops by itself, with status 0" {
	start_backend echo
	start_proxy --lifetime 0.3 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	lifetime_over
}

@test "--lifetime gives open bridges the grace period, as SIGTERM does" {
	start_backend echo
	# Long enough for the client below to be let in first.
	start_proxy --lifetime 3 --grace 0.2 127.0.0.1 0 127.0.0.1 \
	    "$BACKEND_PORT"
	# A client that would sit idle for 30 s: the grace ends it.
	spawn single client "$CLIENT" -a 60 -n 1 -g 1k -W 30000 127.0.0.1 \
	    "$PROXY_PORT"
	wait_for 10 has_line "$PROXY_LOG" ' open id=1 '
	lifetime_over
	has_line "$PROXY_LOG" ' close id=1 .*reason=shutdown'
}

@test "--lifetime and --exit-with-parent work with -w 2 too" {
	start_backend echo
	start_proxy -w 2 --lifetime 0.3 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	lifetime_over
	parent_of_proxy -w 2 --exit-with-parent 127.0.0.1 0 127.0.0.1 \
	    "$BACKEND_PORT"
	kill -KILL "$PARENT"
	wait_for 10 is_gone "$PROXY"
	has_line "$T/child.err" '^tcpproxy: stopping: the parent process exited$'
}

@test "--lifetime takes seconds; the new options are for the command line only" {
	bad_usage "--lifetime" --lifetime soon 127.0.0.1 0 127.0.0.1 9
	printf -- '--lifetime 1\n127.0.0.1 0 127.0.0.1 9\n' >"$T/c.conf"
	run $LIMIT "$TCPPROXY" -f "$T/c.conf"
	[ "$status" -eq 2 ]
	[[ $output == *"option '--lifetime' is for the command line only"* ]]
}
