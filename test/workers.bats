#!/usr/bin/env bats
# -w N: the workers, their listening sockets, and the parent that keeps
# N of them serving.  These read /proc (Linux).

load helper
load options_helper

@test "with -w 2 a killed worker is started again, and every client is served" {
	local k rc=0
	need_proc
	start_backend echo
	proxy_to_backend -w 2
	wait_for 10 eval '[ "$(children_of "$PROXY_PID" | wc -l)" -eq 2 ]'
	k=$(children_of "$PROXY_PID" | head -n 1)
	kill -KILL "$k"
	run "$CLIENT" -a 30 -n 200 -g 1k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 200" ]
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: starting worker [12] again$'
	has_line "$PROXY_LOG" "^tcpproxy: worker $k ended with status 137$"
	wait_for 10 eval '[ "$(children_of "$PROXY_PID" | wc -l)" -eq 2 ]'
	# A worker ended badly: the exit status says so.
	kill -TERM "$PROXY_PID"
	wait_for 20 is_gone "$PROXY_PID"
	wait "$PROXY_PID" || rc=$?
	[ "$rc" -eq 1 ]
}
