#!/usr/bin/env bats
# The command line: usage errors, help, version, start-up failures, the
# ready line, signals.

load helper

@test "no arguments is a usage error" {
	bad_usage missing
}

@test "three arguments is a usage error" {
	bad_usage missing 127.0.0.1 0 127.0.0.1
}

@test "a fifth argument is a usage error naming it" {
	bad_usage "'x'" 127.0.0.1 0 127.0.0.1 80 x
}

@test "an unknown long option is a usage error naming it" {
	bad_usage "'--frob'" --frob 127.0.0.1 0 127.0.0.1 80
}

@test "an unknown short option is a usage error naming it" {
	bad_usage "-Z" -Z 127.0.0.1 0 127.0.0.1 80
}

@test "a local port that is not a number is a usage error naming it" {
	bad_usage "'abc'" 127.0.0.1 abc 127.0.0.1 80
}

@test "a negative local port is a usage error naming it" {
	bad_usage "'-1'" 127.0.0.1 -1 127.0.0.1 80
}

@test "port 65536 is a usage error naming it" {
	bad_usage "'65536'" 127.0.0.1 0 127.0.0.1 65536
}

@test "a port with trailing junk is a usage error naming it" {
	bad_usage "'1x'" 127.0.0.1 1x 127.0.0.1 80
}

@test "a remote port that is not a number is a usage error naming it" {
	bad_usage "'abc'" 127.0.0.1 0 127.0.0.1 abc
}

@test "a negative -c is a usage error naming it" {
	bad_usage "'-3'" -c -3 127.0.0.1 0 127.0.0.1 80
}

@test "a non-numeric -c is a usage error naming it" {
	bad_usage "'abc'" -c abc 127.0.0.1 0 127.0.0.1 80
}

@test "-c 0 is a usage error naming it" {
	bad_usage "'0'" -c 0 127.0.0.1 0 127.0.0.1 80
}

@test "a negative -t is a usage error naming it" {
	bad_usage "'-1'" -t -1 127.0.0.1 0 127.0.0.1 80
}

@test "a non-numeric -t is a usage error naming it" {
	bad_usage "'x'" -t x 127.0.0.1 0 127.0.0.1 80
}

@test "-i nan is a usage error naming it" {
	bad_usage "'nan'" -i nan 127.0.0.1 0 127.0.0.1 80
}

@test "a negative -i is a usage error naming it" {
	bad_usage "'-2'" -i -2 127.0.0.1 0 127.0.0.1 80
}

@test "-h prints the usage on stdout and exits 0" {
	run $LIMIT "$TCPPROXY" -h
	[ "$status" -eq 0 ]
	$LIMIT "$TCPPROXY" -h 2>/dev/null | grep -q '^usage: tcpproxy'
	$LIMIT "$TCPPROXY" --help 2>/dev/null | grep -q '^usage: tcpproxy'
}

@test "-V prints the version and exits 0" {
	local version
	version=$(sed -n 's/^#define TCPPROXY_VERSION "\(.*\)"$/\1/p' "$TOP/tcpproxy.h")
	[ -n "$version" ]
	run $LIMIT "$TCPPROXY" -V
	[ "$status" -eq 0 ]
	[[ $output == *"$version"* ]]
	run $LIMIT "$TCPPROXY" --version
	[ "$status" -eq 0 ]
	[[ $output == *"$version"* ]]
}

@test "port 0 picks a free port, announced in the ready line" {
	start_backend echo
	proxy_to_backend
	[ "$PROXY_PORT" -gt 0 ]
	[ "$PROXY_PORT" -ne "$BACKEND_PORT" ]
	has_line "$PROXY_LOG" "^tcpproxy: listening on 127\\.0\\.0\\.1:$PROXY_PORT\$"
	[ "$(grep -c 'listening on' "$PROXY_LOG")" -eq 1 ]
	run "$CLIENT" -n 1 -g 1k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 1" ]
}

@test "-q keeps the ready line but drops the per-bridge lines" {
	start_backend echo
	proxy_to_backend -q
	run "$CLIENT" -n 3 -g 1k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 3" ]
	# Once stopped, the proxy has logged all it will.
	kill -TERM "$PROXY_PID"
	wait_for 10 is_gone "$PROXY_PID"
	has_line "$PROXY_LOG" '^tcpproxy: listening on '
	no_line "$PROXY_LOG" ' (open|close) id='
}

@test "a local address in use is a start-up failure with status 1" {
	start_backend echo
	run $LIMIT "$TCPPROXY" 127.0.0.1 "$BACKEND_PORT" 127.0.0.1 80
	[ "$status" -eq 1 ]
	[[ ${lines[0]} == "tcpproxy: "* ]]
}

@test "an unresolvable remote host is a start-up failure with status 1" {
	run $LIMIT "$TCPPROXY" 127.0.0.1 0 nonexistent.invalid 80
	[ "$status" -eq 1 ]
	[[ ${lines[0]} == "tcpproxy: "* ]]
	[[ $output == *nonexistent.invalid* ]]
}

@test "a remote address that is the proxy's own listener is refused at start-up" {
	local port
	port=$(free_port)
	[ -n "$port" ]
	run $LIMIT "$TCPPROXY" 127.0.0.1 "$port" 127.0.0.1 "$port"
	[ "$status" -eq 1 ]
	[[ ${lines[0]} == "tcpproxy: remote address 127.0.0.1:$port is the proxy's own listening address" ]]
}

@test "an unresolvable local host is a start-up failure with status 1" {
	run $LIMIT "$TCPPROXY" nonexistent.invalid 0 127.0.0.1 80
	[ "$status" -eq 1 ]
	[[ ${lines[0]} == "tcpproxy: "* ]]
}

@test "SIGTERM stops an idle proxy with status 0" {
	local rc=0
	start_backend echo
	proxy_to_backend
	kill -TERM "$PROXY_PID"
	wait_for 10 is_gone "$PROXY_PID"
	wait "$PROXY_PID" || rc=$?
	[ "$rc" -eq 0 ]
}

@test "SIGINT stops an idle proxy with status 0" {
	local rc=0
	start_backend echo
	proxy_to_backend
	kill -INT "$PROXY_PID"
	wait_for 10 is_gone "$PROXY_PID"
	wait "$PROXY_PID" || rc=$?
	[ "$rc" -eq 0 ]
}

@test "after SIGTERM an open bridge may finish within the grace period, then status 0" {
	local c1 rc=0
	start_backend echo
	proxy_to_backend --grace 60
	mkfifo "$T/in1"
	SPAWN_STDIN=$T/in1 spawn single c1 "$CLIENT" -w 127.0.0.1 "$PROXY_PORT"
	c1=$SPAWNED
	exec 4>"$T/in1"
	echo before >&4
	wait_for 10 grep -q before "$T/c1.out"
	kill -TERM "$PROXY_PID"
	# New clients are no longer accepted...
	wait_for 10 eval '! "$CLIENT" -a 5 -x -g 0 127.0.0.1 "$PROXY_PORT" 2>/dev/null'
	# ...but the open bridge still relays.
	echo after >&4
	wait_for 10 grep -q after "$T/c1.out"
	kill -0 "$PROXY_PID"
	exec 4>&-
	# Well before the 60 s grace: the proxy ends when the bridge does.
	wait_for 20 is_gone "$PROXY_PID"
	wait "$PROXY_PID" || rc=$?
	[ "$rc" -eq 0 ]
	[ "$(cat "$T/c1.out")" = "before
after" ]
}

@test "a bridge still open when the grace period ends is closed with reason shutdown" {
	local c1 rc=0
	start_backend echo
	proxy_to_backend --grace 0.5
	mkfifo "$T/in1"
	SPAWN_STDIN=$T/in1 spawn single c1 "$CLIENT" -w 127.0.0.1 "$PROXY_PORT"
	c1=$SPAWNED
	exec 4>"$T/in1"
	echo hello >&4
	wait_for 10 grep -q hello "$T/c1.out"
	kill -TERM "$PROXY_PID"
	wait_for 20 is_gone "$PROXY_PID"
	wait "$PROXY_PID" || rc=$?
	[ "$rc" -eq 0 ]
	has_line "$PROXY_LOG" ' close id=1 .*reason=shutdown'
	wait_for 10 is_gone "$c1"
}

# ---- --log-time, --syslog ----

@test "--log-time starts every line with an RFC 3339 UTC time to the millisecond" {
	local t0 stamp
	start_backend echo
	t0=$(date -u +%s)
	proxy_to_backend --log-time
	printf 'ping' | "$CLIENT" -a 30 -k 4 127.0.0.1 "$PROXY_PORT" >/dev/null
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	cat "$PROXY_LOG"
	# Every line: the ready line, the warning and the bridge lines.
	[ "$(count_lines "$PROXY_LOG" '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z tcpproxy: ')" -eq "$(lines_in "$PROXY_LOG")" ]
	# The time is now, in UTC.
	stamp=$(sed -n 's/^\([^ .]*\)\..*listening on.*/\1/p' "$PROXY_LOG")
	[ $(($(date -u -d "${stamp/T/ }" +%s) - t0)) -le 5 ]
	[ $(($(date -u -d "${stamp/T/ }" +%s) - t0)) -ge -1 ]
}

@test "--syslog sends the log to /dev/log with ident tcpproxy, facility daemon" {
	local p
	[ "$(id -u)" -eq 0 ] || skip "needs root (a private mount of /dev/log)"
	command -v python3 >/dev/null || skip "needs python3"
	unshare -m true 2>/dev/null || skip "needs unshare -m"
	# A syslog stand-in: one datagram per line, for at most 60 s.
	spawn single syslogd python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(60)
sys.stderr.write("ready\n")
sys.stderr.flush()
while True:
    d = s.recv(4096)
    sys.stdout.write(d.decode("utf-8", "replace").rstrip("\n") + "\n")
    sys.stdout.flush()
' "$T/log.sock"
	wait_for 10 grep -q ready "$T/syslogd.err"
	start_backend echo
	# /dev/log, in a mount namespace of its own: nothing of the host's
	# /dev changes, and the mount goes with the process.
	spawn single proxy unshare -m sh -c 'mount -t tmpfs tmpfs /dev &&
	    : >/dev/log && mount --bind "$1" /dev/log && shift &&
	    exec "$@"' sh "$T/log.sock" "$TCPPROXY" --syslog 127.0.0.1 0 \
	    127.0.0.1 "$BACKEND_PORT"
	wait_for 10 grep -q 'listening on' "$T/syslogd.out"
	cat "$T/syslogd.out"
	# <29>: facility daemon (3 * 8) + notice (5).
	has_line "$T/syslogd.out" '^<29>.*tcpproxy\[[0-9]+\]: listening on 127\.0\.0\.1:[0-9]+$'
	p=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' \
	    "$T/syslogd.out")
	printf 'ping' | "$CLIENT" -a 30 -k 4 127.0.0.1 "$p" >/dev/null
	# <30>: daemon + info.
	wait_for 10 has_line "$T/syslogd.out" '^<30>.*tcpproxy\[[0-9]+\]: close id=1 .*reason=client-closed'
	no_line "$T/proxy.err" 'tcpproxy'
}

# ---- the grammar a newcomer types first ----

@test "'*' listens on every address, IPv4 and IPv6, and both are served" {
	need_ipv6
	start_backend echo
	start_proxy '*' 0 127.0.0.1 "$BACKEND_PORT"
	has_line "$PROXY_LOG" "^tcpproxy: listening on 0\\.0\\.0\\.0:$PROXY_PORT\$"
	wait_for 10 has_line "$PROXY_LOG" "^tcpproxy: listening on \\[::\\]:$PROXY_PORT\$"
	[ "$(printf 'four' | "$CLIENT" -a 30 -k 4 127.0.0.1 "$PROXY_PORT")" = four ]
	[ "$(printf 'six' | "$CLIENT" -a 30 -k 3 ::1 "$PROXY_PORT")" = six ]
}

@test "an endpoint may be one word, HOST:PORT or [V6]:PORT" {
	start_backend echo
	start_proxy "127.0.0.1:0" "127.0.0.1:$BACKEND_PORT"
	[ "$(printf 'four' | "$CLIENT" -a 30 -k 4 127.0.0.1 "$PROXY_PORT")" = four ]
	need_ipv6
	start_backend -l ::1 echo
	start_proxy "[::1]:0" "[::1]:$BACKEND_PORT"
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: listening on \[::1\]:[0-9]+$'
	[ "$(printf 'six' | "$CLIENT" -a 30 -k 3 ::1 "$PROXY_PORT")" = six ]
}

@test "a value given to a flag names the long option, not its letter" {
	bad_usage "option '--hexdump' takes no value" --hexdump=1 127.0.0.1 0 \
	    127.0.0.1 80
	bad_usage "option '--half-close' takes no value" --half-close=yes \
	    127.0.0.1 0 127.0.0.1 80
}

@test "an ambiguous prefix is an error listing the candidates" {
	bad_usage "ambiguous option '--max': --max-bytes, --max-clients, --max-per-source" \
	    --max 1m 127.0.0.1 0 127.0.0.1 80
}

@test "SIGHUP and SIGUSR1 to a command-line proxy are logged and it keeps serving" {
	start_backend echo
	proxy_to_backend
	kill -HUP "$PROXY_PID"
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: reloaded'
	kill -USR1 "$PROXY_PID"
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: stats '
	kill -0 "$PROXY_PID"
	[ "$(printf 'four' | "$CLIENT" -a 30 -k 4 127.0.0.1 "$PROXY_PORT")" = four ]
}
