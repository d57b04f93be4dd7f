#!/usr/bin/env bats
# The hook API: test/hooktest.c in process, and the two example programs
# built on it, examples/subst and examples/reqlog.

load helper

HOOKTEST=$TOP/test/hooktest
SUBST=$TOP/examples/subst
REQLOG=$TOP/examples/reqlog

# start_example NAME ARGS...: starts an example program; sets PROXY_PID,
# PROXY_PORT, PROXY_LOG (its stderr) and PROXY_OUT (its stdout).
start_example() {
	local name=$1
	shift
	[ -x "$TOP/examples/$name" ] || {
		echo "missing examples/$name: run 'make examples'" >&2
		return 1
	}
	spawn single "$name" "$TOP/examples/$name" "$@"
	PROXY_PID=$SPAWNED
	PROXY_LOG=$T/$name.err
	PROXY_OUT=$T/$name.out
	PROXY_PORT=$(ready_port "$PROXY_LOG")
	[ -n "$PROXY_PORT" ]
}

@test "the hook test program passes every check" {
	[ -x "$HOOKTEST" ]
	run "$HOOKTEST"
	echo "$output"
	[ "$status" -eq 0 ]
	[[ $output == *"ok - "* ]]
	[[ $output != *"not ok"* ]]
}

@test "subst rewrites every FROM in what the server sends" {
	start_backend echo
	start_example subst foo BARBAZ 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	has_line "$PROXY_LOG" "^tcpproxy: listening on 127\\.0\\.0\\.1:$PROXY_PORT\$"
	printf 'a foo b foofoo ffoo fofoo end\n' >"$T/in"
	printf 'a BARBAZ b BARBAZBARBAZ fBARBAZ foBARBAZ end\n' >"$T/want"
	"$CLIENT" -a 30 -k "$(wc -c <"$T/want")" 127.0.0.1 "$PROXY_PORT" \
	    <"$T/in" >"$T/out"
	cmp "$T/want" "$T/out"
}

@test "subst finds a match split across two reads" {
	start_backend echo
	start_example subst foo X 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	mkfifo "$T/in1"
	SPAWN_STDIN=$T/in1 spawn single c1 "$CLIENT" -a 30 -k 9 127.0.0.1 \
	    "$PROXY_PORT"
	exec 4>"$T/in1"
	printf 'abcfo' >&4
	# "abc" is back, so "fo" came in that read: the rest is a new one.
	wait_for 20 grep -q abc "$T/c1.out"
	printf 'o end\n' >&4
	exec 4>&-
	wait_for 20 is_gone "$SPAWNED"
	printf 'abcX end\n' >"$T/want"
	cmp "$T/want" "$T/c1.out"
}

@test "subst leaves what the client sends alone" {
	start_backend sink
	start_example subst foo X 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	printf 'foo foo' >"$T/in"
	"$CLIENT" -a 30 -x 127.0.0.1 "$PROXY_PORT" <"$T/in"
	wait_for 20 has_line "$BACKEND_OUT" '^recv '
	[ "$(field "$BACKEND_OUT" recv | cut -d' ' -f1)" = 7 ]
}

# TO is shorter than FROM here: a rewrite that grows a full chunk past
# cap has to wait for the next chunk (see examples/subst.c).
@test "subst keeps a large stream intact apart from the rewrites" {
	start_backend echo
	start_example subst needle pin 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	awk 'BEGIN { for (i = 1; i <= 40000; i++)
	    printf "line %d needle%d\n", i, i % 7 }' >"$T/in"
	sed 's/needle/pin/g' "$T/in" >"$T/want"
	"$CLIENT" -a 60 -k "$(wc -c <"$T/want")" 127.0.0.1 "$PROXY_PORT" \
	    <"$T/in" >"$T/out"
	cmp "$T/want" "$T/out"
}

@test "subst with a TO longer than cap allows keeps a large stream intact" {
	local to=NEEDLE-BECOMES-A-MUCH-LONGER-STRING-THAN-BEFORE
	start_backend echo
	start_example subst needle "$to" 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	awk 'BEGIN { for (i = 1; i <= 40000; i++)
	    printf "needle%d needle needle\n", i % 7 }' >"$T/in"
	sed "s/needle/$to/g" "$T/in" >"$T/want"
	"$CLIENT" -a 60 -k "$(wc -c <"$T/want")" 127.0.0.1 "$PROXY_PORT" \
	    <"$T/in" >"$T/out"
	cmp "$T/want" "$T/out"
}

@test "subst delivers a held partial match when the stream ends" {
	start_backend echo
	start_example subst foo X 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	mkfifo "$T/in1"
	SPAWN_STDIN=$T/in1 spawn single c1 "$CLIENT" -a 30 -w 127.0.0.1 \
	    "$PROXY_PORT"
	exec 4>"$T/in1"
	printf 'abc fo' >&4
	# "abc " is back and "fo" is held: it may yet become "foo".
	wait_for 20 grep -q 'abc ' "$T/c1.out"
	# The client's EOF ends the bridge: the last call lets "fo" go.
	exec 4>&-
	wait_for 20 is_gone "$SPAWNED"
	printf 'abc fo' >"$T/want"
	cmp "$T/want" "$T/c1.out"
}

@test "subst without enough arguments prints its usage and exits 2" {
	run "$SUBST" foo bar 127.0.0.1 0
	[ "$status" -eq 2 ]
	[[ $output == "usage: subst "* ]]
}

@test "reqlog logs one line per HTTP request, headers and bodies skipped" {
	start_backend echo
	start_example reqlog 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	printf 'GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\nGET /no HTTP/1.1\r\n\r\nPOST /b?q=1 HTTP/1.1\r\ncontent-length: 0\r\n\r\nHEAD / HTTP/1.0\r\n\r\n' >"$T/in"
	"$CLIENT" -a 30 -k "$(wc -c <"$T/in")" 127.0.0.1 "$PROXY_PORT" \
	    <"$T/in" >"$T/out"
	cmp "$T/in" "$T/out"
	wait_for 20 eval '[ "$(lines_in "$PROXY_OUT")" -ge 3 ]'
	printf 'id=1 GET /a HTTP/1.1\nid=1 POST /b?q=1 HTTP/1.1\nid=1 HEAD / HTTP/1.0\n' >"$T/want"
	cmp "$T/want" "$PROXY_OUT"
}

@test "reqlog joins a request line split across reads and tells bridges apart" {
	start_backend echo
	start_example reqlog 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	mkfifo "$T/in1"
	SPAWN_STDIN=$T/in1 spawn single c1 "$CLIENT" -a 30 -k 36 127.0.0.1 \
	    "$PROXY_PORT"
	exec 4>"$T/in1"
	printf 'GET /spl' >&4
	wait_for 20 grep -q spl "$T/c1.out"
	printf 'it HTTP/1.1\r\n' >&4
	wait_for 20 grep -q 'it HTTP' "$T/c1.out"
	printf 'Host: y\r\n\r\n' >&4
	printf 'PUT /second HTTP/1.1\r\n\r\n' >"$T/in2"
	"$CLIENT" -a 30 -k 24 127.0.0.1 "$PROXY_PORT" <"$T/in2" >/dev/null
	exec 4>&-
	wait_for 20 eval '[ "$(lines_in "$PROXY_OUT")" -ge 2 ]'
	grep -qx 'id=1 GET /split HTTP/1.1' "$PROXY_OUT"
	grep -qx 'id=2 PUT /second HTTP/1.1' "$PROXY_OUT"
	[ "$(lines_in "$PROXY_OUT")" -eq 2 ]
}

@test "reqlog cuts an overlong request line short and says so" {
	local long
	start_backend echo
	start_example reqlog 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	long=$(head -c 3000 /dev/zero | tr '\0' a)
	printf 'GET /%s HTTP/1.1\r\n\r\nGET /next\001 HTTP/1.1\r\n\r\n' "$long" \
	    >"$T/in"
	"$CLIENT" -a 30 -k "$(wc -c <"$T/in")" 127.0.0.1 "$PROXY_PORT" \
	    <"$T/in" >"$T/out"
	wait_for 20 eval '[ "$(lines_in "$PROXY_OUT")" -ge 2 ]'
	sed -n 1p "$PROXY_OUT" | grep -Eqx 'id=1 GET /a{1019} \[truncated\]'
	sed -n 2p "$PROXY_OUT" | grep -qx 'id=1 GET /next\. HTTP/1\.1'
}
