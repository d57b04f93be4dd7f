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
