#!/usr/bin/env bats
# Faults (--fault, issue 11), against the real program: each action in
# both directions, with exact byte counts where it promises them, times
# within a lower bound that must hold and a generous upper one; the
# fault log lines; p= and conn= and the seed; the grammar's errors.
# The control socket's commands are in control.bats.

load helper

# cmp_lines A B: prints cmp -l's lines for files A and B (one per byte
# that differs: offset from 1, then both bytes in octal).
cmp_lines() {
	cmp -l "$1" "$2" 2>/dev/null || true
}

# one_bit_flip LINE: LINE of cmp -l says the two bytes differ in bit
# 0x01 only.
one_bit_flip() {
	local a b
	set -- $1
	a=$((8#$2)) b=$((8#$3))
	[ $((a ^ b)) -eq 1 ]
}

# ---- delay, ttfb ----

@test "delay=T,dir=down holds each chunk at least T, and logs once per direction" {
	start_backend echo
	fault_proxy --fault delay=300ms,dir=down
	stream_open s "$PROXY_PORT"
	stream_send a
	time_until 5 has_bytes "$T/s.out" 1
	in_range $((300 - SLACK)) "$TOOK" 3000
	# Every chunk, not only the first.
	stream_send b
	time_until 5 has_bytes "$T/s.out" 2
	in_range $((300 - SLACK)) "$TOOK" 3000
	[ "$(cat "$T/s.out")" = ab ]
	[ "$(fault_lines "$PROXY_LOG" delay)" -eq 1 ]
	has_line "$PROXY_LOG" '^tcpproxy: fault id=1 name=delay action=delay dir=down offset=0$'
}

@test "delay=T,dir=up holds the client's bytes; dir=both (the default) pays it twice" {
	start_backend echo
	fault_proxy --fault delay=250ms,dir=up
	stream_open s "$PROXY_PORT"
	stream_send a
	time_until 5 has_bytes "$T/s.out" 1
	in_range $((250 - SLACK)) "$TOOK" 3000
	has_line "$PROXY_LOG" ' fault id=1 name=delay action=delay dir=up offset=0$'
	stream_end
	fault_proxy --fault delay=250ms
	stream_open t "$PROXY_PORT"
	stream_send a
	time_until 5 has_bytes "$T/t.out" 1
	in_range $((500 - SLACK)) "$TOOK" 4000
	[ "$(fault_lines "$PROXY_LOG" delay)" -eq 2 ]
	has_line "$PROXY_LOG" ' fault id=1 name=delay action=delay dir=up offset=0$'
	has_line "$PROXY_LOG" ' fault id=1 name=delay action=delay dir=down offset=0$'
}

@test "delay with jitter keeps the order of the bytes" {
	start_backend echo
	fault_proxy --seed 3 --fault delay=30ms,jitter=25ms
	# 200 bytes, one a write, 2 ms apart: each its own chunk, each drawn
	# its own delay in 5..55 ms.
	run "$CLIENT" -a 20 -r -g 200 -P 2 -k 200 127.0.0.1 "$PROXY_PORT"
	echo "$output"
	[ "$status" -eq 0 ]
	[ "${lines[1]}" = "recv $(pattern_sum 200)" ]
}

# ttfb_check DIR: with ttfb=600ms,dir=DIR, the stream's first byte is
# held, the next ones are not.
ttfb_check() {
	fault_proxy --fault "ttfb=600ms,dir=$1"
	stream_open "s$1" "$PROXY_PORT"
	stream_send a
	time_until 5 has_bytes "$T/s$1.out" 1
	in_range $((600 - SLACK)) "$TOOK" 4000
	stream_send b
	time_until 5 has_bytes "$T/s$1.out" 2
	in_range 0 "$TOOK" 500
	stream_send c
	time_until 5 has_bytes "$T/s$1.out" 3
	in_range 0 "$TOOK" 500
	[ "$(cat "$T/s$1.out")" = abc ]
	has_line "$PROXY_LOG" " fault id=1 name=ttfb action=ttfb dir=$1 offset=0\$"
	[ "$(fault_lines "$PROXY_LOG" ttfb)" -eq 1 ]
	stream_end
}

@test "ttfb=T delays only the first chunk of a direction, either one" {
	start_backend echo
	ttfb_check down
	ttfb_check up
}

# download N: the client reads the proxy on PROXY_PORT (sending
# nothing) until EOF, which must bring exactly the N pattern bytes of
# the backend; sets TOOK to the milliseconds it took.
download() {
	local t0
	t0=$(now_ms)
	run "$CLIENT" -a 20 -r 127.0.0.1 "$PROXY_PORT" </dev/null
	TOOK=$(ms_since "$t0")
	echo "$output; took $TOOK ms"
	[ "$status" -eq 0 ]
	[ "${lines[1]}" = "recv $(pattern_sum "$1")" ]
}

# upload N: the client sends N pattern bytes and its EOF through the
# proxy on PROXY_PORT to a sink backend, which must get exactly them;
# sets TOOK to the milliseconds until the backend said so.
upload() {
	local t0
	t0=$(now_ms)
	run "$CLIENT" -a 20 -r -g "$1" -w 127.0.0.1 "$PROXY_PORT"
	echo "$output"
	[ "$status" -eq 0 ]
	wait_for 10 has_line "$BACKEND_OUT" '^recv '
	TOOK=$(ms_since "$t0")
	echo "took $TOOK ms"
	[ "$(cat "$BACKEND_OUT")" = "recv $(pattern_sum "$1")" ]
}

# ---- rate, slice ----

@test "rate=BYTES,dir=down meters the server's bytes, which arrive whole" {
	start_backend source 10240
	fault_proxy --fault rate=10k,dir=down
	download 10240
	# 10 KiB at 10 KiB/s, less a burst of 1/20 s.
	in_range $((850 - SLACK)) "$TOOK" 6000
	has_line "$PROXY_LOG" ' fault id=1 name=rate action=rate dir=down offset=0$'
}

@test "rate=BYTES,dir=up meters the client's bytes, which arrive whole" {
	start_backend sink
	fault_proxy -H --fault rate=10k,dir=up
	upload 10240
	in_range $((850 - SLACK)) "$TOOK" 6000
	has_line "$PROXY_LOG" ' fault id=1 name=rate action=rate dir=up offset=0$'
}

@test "slice=N,gap=T writes at most N bytes at a time, T apart, in both directions" {
	start_backend source 1000
	fault_proxy --fault slice=100,gap=100ms,dir=down
	download 1000
	# Ten slices: nine gaps at least.
	in_range $((900 - SLACK)) "$TOOK" 6000
	has_line "$PROXY_LOG" ' fault id=1 name=slice action=slice dir=down offset=0$'
	start_backend sink
	fault_proxy -H --fault slice=100,gap=100ms,dir=up
	upload 1000
	in_range $((900 - SLACK)) "$TOOK" 6000
	has_line "$PROXY_LOG" ' fault id=1 name=slice action=slice dir=up offset=0$'
}

@test "slice=1 with no gap still relays byte for byte" {
	start_backend echo
	fault_proxy --fault slice=1
	run "$CLIENT" -a 20 -n 3 -g 20k 127.0.0.1 "$PROXY_PORT"
	echo "$output"
	[ "$output" = "ok 3" ]
	[ "$(fault_lines "$PROXY_LOG" slice)" -eq 6 ]
}

@test "delay and slice compose on one direction" {
	start_backend source 400
	fault_proxy --fault delay=300ms,dir=down --fault slice=100,gap=100ms,dir=down
	download 400
	in_range $((600 - SLACK)) "$TOOK" 6000
	[ "$(fault_lines "$PROXY_LOG" delay)" -eq 1 ]
	[ "$(fault_lines "$PROXY_LOG" slice)" -eq 1 ]
}

# ---- close, halfclose ----

@test "close=N,dir=down delivers exactly N of the server's bytes, then closes with reason fault" {
	start_backend source 1000
	fault_proxy --fault close=100,dir=down
	"$CLIENT" -a 20 127.0.0.1 "$PROXY_PORT" </dev/null >"$T/got"
	pattern_file 100 "$T/want"
	cmp "$T/want" "$T/got"
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	has_line "$PROXY_LOG" ' fault id=1 name=close action=close dir=down offset=100$'
	has_line "$PROXY_LOG" ' close id=1 .* up=0 down=100 .*reason=fault'
	# A bigger stream, read by the proxy in big chunks: still exactly N.
	start_backend source 3m
	fault_proxy --fault close=100001,dir=down
	run "$CLIENT" -a 20 -r 127.0.0.1 "$PROXY_PORT" </dev/null
	[ "${lines[1]}" = "recv $(pattern_sum 100001)" ]
}

@test "close=N,dir=up delivers exactly N of the client's bytes to the server" {
	start_backend sink
	fault_proxy --fault close=1000,dir=up
	run "$CLIENT" -a 20 -r -g 50000 127.0.0.1 "$PROXY_PORT"
	echo "$output"
	wait_for 10 has_line "$BACKEND_OUT" '^recv '
	[ "$(cat "$BACKEND_OUT")" = "recv $(pattern_sum 1000)" ]
	has_line "$PROXY_LOG" ' fault id=1 name=close action=close dir=up offset=1000$'
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 .*reason=fault'
}

@test "close=N does not act on a stream shorter than N" {
	start_backend source 50
	fault_proxy --fault close=100,dir=down
	run "$CLIENT" -a 20 -r 127.0.0.1 "$PROXY_PORT" </dev/null
	[ "${lines[1]}" = "recv $(pattern_sum 50)" ]
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	[ "$(fault_lines "$PROXY_LOG" close)" -eq 0 ]
	no_line "$PROXY_LOG" 'reason=fault'
}

@test "halfclose=N,dir=up shuts the server's input after N bytes; the server's answer still comes back" {
	start_backend reply 5000
	fault_proxy --fault halfclose=100,dir=up
	# The client sends 100 bytes and no EOF of its own: the server's EOF
	# is the fault's.  (More unread bytes would make the proxy's close a
	# reset: see the next test.)
	run "$CLIENT" -a 20 -r -g 100 127.0.0.1 "$PROXY_PORT"
	echo "$output"
	[ "$status" -eq 0 ]
	# The server saw exactly 100 bytes and an EOF, and then answered.
	wait_for 10 has_line "$BACKEND_OUT" '^sent '
	[ "$(sed -n 1p "$BACKEND_OUT")" = "recv $(pattern_sum 100)" ]
	[ "${lines[1]}" = "recv $(pattern_sum 5000)" ]
	has_line "$PROXY_LOG" ' fault id=1 name=halfclose action=halfclose dir=up offset=100$'
}

@test "halfclose=N,dir=down gives the client N bytes and an EOF; its own bytes still go up" {
	need_cmd socat
	start_backend echo
	fault_proxy --fault halfclose=5,dir=down
	# socat keeps sending for -t seconds after the socket's EOF.
	rm -f "$T/s.in"
	mkfifo "$T/s.in"
	SPAWN_STDIN=$T/s.in spawn single s socat -t 10 - \
	    "TCP:127.0.0.1:$PROXY_PORT"
	exec 4>"$T/s.in"
	stream_send 'hello world'
	wait_for 10 has_bytes "$T/s.out" 5
	wait_for 10 has_line "$PROXY_LOG" ' fault id=1 name=halfclose '
	[ "$(cat "$T/s.out")" = hello ]
	has_line "$PROXY_LOG" ' fault id=1 name=halfclose action=halfclose dir=down offset=5$'
	# The up direction still works: the server gets what follows.
	stream_send 'more bytes'
	wait_for 10 conn_has 'up=21 '
	[ "$(cat "$T/s.out")" = hello ]
	no_line "$PROXY_LOG" ' close id=1 '
}

# conn_has TEXT: the first line of the proxy's conns holds TEXT.
conn_has() {
	pctl conns >/dev/null
	grep -Fq -- "$1" "$T/ctl.out"
}

# ---- reset, timeout ----

@test "reset resets both sides at once: the client and the server read ECONNRESET" {
	start_backend sink
	fault_proxy --fault reset
	run "$CLIENT" -a 20 127.0.0.1 "$PROXY_PORT" </dev/null
	echo "$output"
	[ "$status" -eq 1 ]
	[[ $output == *"read: Connection reset by peer"* ]]
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	has_line "$PROXY_LOG" ' fault id=1 name=reset action=reset dir=both offset=0$'
	has_line "$PROXY_LOG" ' close id=1 .*reason=fault'
}

@test "reset=T resets T after accept" {
	start_backend sink
	fault_proxy --fault reset=400ms
	stream_open s "$PROXY_PORT" -a 20
	time_until 5 is_gone "$STREAM_PID"
	# From before the connect: the reset counts from accept.
	in_range $((400 - SLACK)) "$(ms_since "$STREAM_T0")" 4000
	grep -q 'read: Connection reset by peer' "$T/s.err"
	# The server side was reset too.
	wait_for 10 has_line "$BACKEND_OUT" '^recv '
	[ "$(cat "$BACKEND_OUT")" = "recv 0 cbf29ce484222325 error" ]
}

@test "reset,after=BYTES,dir=down resets once that many bytes went down" {
	start_backend source 1m
	fault_proxy --fault reset,after=100k,dir=down
	run "$CLIENT" -a 20 -r 127.0.0.1 "$PROXY_PORT" </dev/null
	echo "$output"
	[ "$status" -eq 1 ]
	[[ $output == *"read: Connection reset by peer"* ]]
	offset=$(sed -n 's/.* fault id=1 name=reset action=reset dir=both offset=\([0-9]*\)$/\1/p' "$PROXY_LOG")
	in_range 102400 "$offset" 1048575
}

@test "timeout=T closes T after accept, whatever flows" {
	start_backend echo
	fault_proxy --fault timeout=400ms
	stream_open s "$PROXY_PORT" -a 20
	stream_send a
	wait_for 5 has_bytes "$T/s.out" 1
	time_until 5 is_gone "$STREAM_PID"
	in_range 0 "$TOOK" 4000
	wait "$STREAM_PID"
	# A close, not a reset: the client read an EOF.
	[ ! -s "$T/s.err" ]
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	dur=$(sed -n 's/.* close id=1 .* duration=\([0-9.]*\) .*/\1/p' "$PROXY_LOG")
	in_range $((400 - SLACK)) "$(awk "BEGIN { print int($dur * 1000) }")" 4000
	has_line "$PROXY_LOG" ' fault id=1 name=timeout action=timeout dir=both offset=2$'
	has_line "$PROXY_LOG" ' close id=1 .*reason=fault'
}

# ---- stall, drop ----

@test "stall,dir=up stops reading the client; for=T lifts it" {
	start_backend echo
	fault_proxy --fault stall,dir=up,for=600ms
	stream_open s "$PROXY_PORT"
	stream_send abc
	time_until 5 has_bytes "$T/s.out" 3
	in_range $((600 - SLACK)) "$(ms_since "$STREAM_T0")" 4000
	[ "$(cat "$T/s.out")" = abc ]
	has_line "$PROXY_LOG" ' fault id=1 name=stall action=stall dir=up offset=0$'
	# Lifted for good: the next bytes pass at once.
	stream_send d
	time_until 5 has_bytes "$T/s.out" 4
	in_range 0 "$TOOK" 500
}

@test "stall,dir=down stops reading the server: the client gets nothing" {
	start_backend source 64m
	fault_proxy --fault stall,dir=down
	stream_open s "$PROXY_PORT"
	wait_for 10 has_line "$PROXY_LOG" ' fault id=1 name=stall action=stall dir=down offset=0$'
	observe_for 0.5
	[ "$(size_of "$T/s.out")" -eq 0 ]
	# The server backs up: its report line never comes.
	[ ! -s "$BACKEND_OUT" ]
	ctl_ok conns
	grep -q ' up=0 down=0 ' "$T/ctl.out"
}

@test "drop,dir=up reads the client's bytes and discards them" {
	start_backend sink
	fault_proxy -H --fault drop,dir=up
	run "$CLIENT" -a 20 -r -g 100k -w 127.0.0.1 "$PROXY_PORT"
	echo "$output"
	[ "$status" -eq 0 ]
	[ "${lines[0]}" = "sent $(pattern_sum 102400)" ]
	wait_for 10 has_line "$BACKEND_OUT" '^recv '
	[ "$(cat "$BACKEND_OUT")" = "recv 0 cbf29ce484222325" ]
	has_line "$PROXY_LOG" ' fault id=1 name=drop action=drop dir=up offset=0$'
}

@test "drop,dir=down: the client gets no byte of the server's" {
	start_backend source 100k
	fault_proxy --fault drop,dir=down
	run "$CLIENT" -a 20 -r 127.0.0.1 "$PROXY_PORT" </dev/null
	echo "$output"
	[ "${lines[1]}" = "recv 0 cbf29ce484222325" ]
	has_line "$PROXY_LOG" ' fault id=1 name=drop action=drop dir=down offset=0$'
}

@test "drop,after=BYTES,dir=up passes that many bytes first" {
	start_backend echo
	fault_proxy -H --fault drop,after=5,dir=up
	# One byte a chunk, 50 ms apart.
	"$CLIENT" -a 20 -g 10 -P 50 -w 127.0.0.1 "$PROXY_PORT" >"$T/got"
	pattern_file 5 "$T/want"
	cmp "$T/want" "$T/got"
	has_line "$PROXY_LOG" ' fault id=1 name=drop action=drop dir=up offset=5$'
}

@test "drop,after=TIME,dir=up acts that long after accept" {
	start_backend echo
	fault_proxy -H --fault drop,after=500ms,dir=up
	# A byte every 100 ms: about five pass, the rest are dropped.
	"$CLIENT" -a 20 -g 15 -P 100 -w 127.0.0.1 "$PROXY_PORT" >"$T/got"
	n=$(size_of "$T/got")
	in_range 2 "$n" 9
	pattern_file "$n" "$T/want"
	cmp "$T/want" "$T/got"
	has_line "$PROXY_LOG" " fault id=1 name=drop action=drop dir=up offset=$n\$"
}

# ---- corrupt ----

# one_flip N K FILE: FILE is the first N pattern bytes with bit 0x01 of
# byte K (from 0) flipped, and no other change.
one_flip() {
	pattern_file "$1" "$T/want"
	[ "$(size_of "$3")" -eq "$1" ]
	cmp_lines "$T/want" "$3" >"$T/diff"
	cat "$T/diff"
	[ "$(lines_in "$T/diff")" -eq 1 ]
	[ "$(awk '{ print $1 }' "$T/diff")" -eq $(($2 + 1)) ]
	one_bit_flip "$(cat "$T/diff")"
}

@test "corrupt=K,dir=down flips bit 0x01 of byte K of the server's stream, and only it" {
	start_backend source 100k
	fault_proxy --fault corrupt=70000,dir=down
	"$CLIENT" -a 20 127.0.0.1 "$PROXY_PORT" </dev/null >"$T/got"
	one_flip 102400 70000 "$T/got"
	has_line "$PROXY_LOG" ' fault id=1 name=corrupt action=corrupt dir=down offset=70000$'
	[ "$(fault_lines "$PROXY_LOG" corrupt)" -eq 1 ]
}

@test "corrupt=K,dir=up flips byte K of the client's stream, and only it" {
	start_backend echo
	fault_proxy --fault corrupt=0,dir=up
	"$CLIENT" -a 20 -g 5000 -k 5000 127.0.0.1 "$PROXY_PORT" >"$T/got"
	one_flip 5000 0 "$T/got"
	has_line "$PROXY_LOG" ' fault id=1 name=corrupt action=corrupt dir=up offset=0$'
}

@test "corrupt=p=P flips about P of the bytes, the same ones for the same seed" {
	local n k
	start_backend source 20000
	pattern_file 20000 "$T/want"
	for k in 1 2; do
		fault_proxy --seed 11 --fault corrupt=p=0.01,dir=down
		"$CLIENT" -a 20 127.0.0.1 "$PROXY_PORT" </dev/null >"$T/got$k"
		[ "$(size_of "$T/got$k")" -eq 20000 ]
		cmp_lines "$T/want" "$T/got$k" >"$T/diff$k"
	done
	n=$(lines_in "$T/diff1")
	# 200 expected; binomial sd 14.
	in_range 130 "$n" 270
	cmp "$T/diff1" "$T/diff2"
	[ "$(fault_lines "$PROXY_LOG" corrupt)" -eq "$n" ]
	# Another seed, other bytes.
	fault_proxy --seed 12 --fault corrupt=p=0.01,dir=down
	"$CLIENT" -a 20 127.0.0.1 "$PROXY_PORT" </dev/null >"$T/got3"
	cmp_lines "$T/want" "$T/got3" >"$T/diff3"
	files_differ "$T/diff1" "$T/diff3"
}

# ---- slowclose, connect-delay ----

@test "slowclose=T,dir=down holds the server's EOF for T, not its bytes" {
	start_backend source 100
	fault_proxy --fault slowclose=700ms,dir=down
	stream_open s "$PROXY_PORT" -a 20
	time_until 5 has_bytes "$T/s.out" 100
	in_range 0 "$TOOK" 600
	wait_for 10 has_line "$PROXY_LOG" ' fault id=1 name=slowclose '
	time_until 5 is_gone "$STREAM_PID"
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	dur=$(sed -n 's/.* close id=1 .* duration=\([0-9.]*\) .*/\1/p' "$PROXY_LOG")
	in_range $((700 - SLACK)) "$(awk "BEGIN { print int($dur * 1000) }")" 5000
	has_line "$PROXY_LOG" ' fault id=1 name=slowclose action=slowclose dir=down offset=100$'
}

@test "slowclose=T,dir=up holds the client's EOF for T" {
	local t0
	start_backend reply 10
	fault_proxy -H --fault slowclose=700ms,dir=up
	t0=$(now_ms)
	run "$CLIENT" -a 20 -r -g 3 -w 127.0.0.1 "$PROXY_PORT"
	took=$(ms_since "$t0")
	echo "$output; took $took"
	[ "${lines[1]}" = "recv $(pattern_sum 10)" ]
	in_range $((700 - SLACK)) "$took" 5000
	has_line "$PROXY_LOG" ' fault id=1 name=slowclose action=slowclose dir=up offset=3$'
}

@test "connect-delay=T waits T before connecting to the backend" {
	start_backend echo
	fault_proxy --fault connect-delay=500ms
	stream_open s "$PROXY_PORT"
	stream_send a
	ctl_ok conns
	grep -q ' up=0 down=0 ' "$T/ctl.out"
	time_until 5 has_bytes "$T/s.out" 1
	in_range $((500 - SLACK)) "$(ms_since "$STREAM_T0")" 4000
	has_line "$PROXY_LOG" ' fault id=1 name=connect-delay action=connect-delay dir=both offset=0$'
	[ "$(fault_lines "$PROXY_LOG" connect-delay)" -eq 1 ]
}

# ---- which bridges: conn=, p=, the seed ----

# serial_clients N: N clients one after another, one byte each through
# the echo proxy on PROXY_PORT.
serial_clients() {
	local i
	for ((i = 0; i < $1; i++)); do
		printf x | "$CLIENT" -a 20 -k 1 127.0.0.1 "$PROXY_PORT" \
		    >/dev/null || return 1
	done
}

@test "conn=2-3 acts on exactly bridges 2 and 3; conn=4+ from the 4th; conn=1 the first" {
	start_backend echo
	fault_proxy --fault ttfb=1ms,dir=up,conn=2-3,name=mid \
	    --fault ttfb=1ms,dir=up,conn=4+,name=late \
	    --fault ttfb=1ms,dir=up,conn=1,name=first
	serial_clients 6
	ctl_wait closed==6
	[ "$(fault_ids "$PROXY_LOG" mid | tr '\n' ' ')" = "2 3 " ]
	[ "$(fault_ids "$PROXY_LOG" late | tr '\n' ' ')" = "4 5 6 " ]
	[ "$(fault_ids "$PROXY_LOG" first | tr '\n' ' ')" = "1 " ]
}

# p_run SEED N FILE: a proxy with p=0.5 and --seed SEED; N bridges in
# parallel; the ids the fault acted on go to FILE.
p_run() {
	fault_proxy --seed "$1" --fault ttfb=1ms,dir=up,p=0.5,name=half
	run "$CLIENT" -a 30 -n "$2" -g 1 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok $2" ]
	ctl_wait "closed==$2"
	fault_ids "$PROXY_LOG" half >"$3"
}

@test "p= with the same seed twice affects the same bridges; another seed others" {
	start_backend echo
	p_run 42 30 "$T/a"
	p_run 42 30 "$T/b"
	p_run 43 30 "$T/c"
	cat "$T/a"
	[ -s "$T/a" ]
	cmp "$T/a" "$T/b"
	files_differ "$T/a" "$T/c"
	# --seed is logged as given.
	has_line "$PROXY_LOG" '^tcpproxy: seed 43$'
}

@test "p=0.5 over 200 bridges lands within a binomial bound" {
	start_backend echo
	p_run 2024 200 "$T/a"
	n=$(lines_in "$T/a")
	# Mean 100, sd about 7: 70..130 is over four sd.
	in_range 70 "$n" 130
	# And p=0, p=1.
	fault_proxy --fault ttfb=1ms,dir=up,p=0,name=never \
	    --fault ttfb=1ms,dir=up,p=1,name=always
	run "$CLIENT" -a 30 -n 20 -g 1 127.0.0.1 "$PROXY_PORT"
	ctl_wait closed==20
	[ "$(fault_lines "$PROXY_LOG" never)" -eq 0 ]
	[ "$(fault_lines "$PROXY_LOG" always)" -eq 20 ]
}

# ---- the seed, the log, names ----

@test "without --seed, a random seed is logged with how to repeat it; with neither --fault nor --control, none" {
	start_backend echo
	proxy_to_backend --fault delay=1ms
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: seed '
	has_line "$PROXY_LOG" '^tcpproxy: seed [0-9]+ \(chosen at random: --seed repeats it\)$'
	s1=$(sed -n 's/^tcpproxy: seed \([0-9]*\) .*/\1/p' "$PROXY_LOG")
	fault_proxy
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: seed '
	s2=$(sed -n 's/^tcpproxy: seed \([0-9]*\) .*/\1/p' "$PROXY_LOG")
	[ "$s1" != "$s2" ]
	proxy_to_backend --seed 99
	run "$CLIENT" -a 20 -n 1 -g 10 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 1" ]
	no_line "$PROXY_LOG" 'seed'
	fault_proxy --seed 18446744073709551615
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: seed 18446744073709551615$'
}

@test "two faults of one action get unique names, and each logs under its own" {
	start_backend echo
	fault_proxy --fault ttfb=1ms,dir=up --fault ttfb=1ms,dir=down \
	    --fault delay=1ms,dir=up,name=mine
	serial_clients 1
	ctl_wait closed==1
	has_line "$PROXY_LOG" ' fault id=1 name=ttfb action=ttfb dir=up offset=0$'
	has_line "$PROXY_LOG" ' fault id=1 name=ttfb#2 action=ttfb dir=down offset=0$'
	has_line "$PROXY_LOG" ' fault id=1 name=mine action=delay dir=up offset=0$'
}

@test "a proxy with --control and no fault relays byte for byte" {
	start_backend echo
	fault_proxy
	run "$CLIENT" -a 60 -n 10 -g 300k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 10" ]
	start_backend source 2m
	fault_proxy
	run "$CLIENT" -a 60 -r 127.0.0.1 "$PROXY_PORT" </dev/null
	[ "${lines[1]}" = "recv $(field "$BACKEND_OUT" sent)" ]
	start_backend sink
	fault_proxy -H
	run "$CLIENT" -a 60 -r -g 2m -w 127.0.0.1 "$PROXY_PORT"
	wait_for 10 has_line "$BACKEND_OUT" '^recv '
	[ "$(field "$BACKEND_OUT" recv)" = "$(sed -n 's/^sent //p' <<<"$output")" ]
	no_line "$PROXY_LOG" ' fault '
}

@test "--fault lines in a config file apply to their service, whose tag the fault lines carry" {
	local pa pb
	start_backend source 1000
	cat >"$T/f.conf" <<EOF
--name cut --fault close=10,dir=down 127.0.0.1 0 127.0.0.1 $BACKEND_PORT
--name clean 127.0.0.1 0 127.0.0.1 $BACKEND_PORT
EOF
	start_config "$T/f.conf" --seed 5
	pa=$(service_port "$PROXY_LOG" cut)
	pb=$(service_port "$PROXY_LOG" clean)
	run "$CLIENT" -a 20 -r 127.0.0.1 "$pa" </dev/null
	[ "${lines[1]}" = "recv $(pattern_sum 10)" ]
	run "$CLIENT" -a 20 -r 127.0.0.1 "$pb" </dev/null
	[ "${lines[1]}" = "recv $(pattern_sum 1000)" ]
	has_line "$PROXY_LOG" ' fault id=1 name=close action=close dir=down offset=10 service=cut$'
	[ "$(count_lines "$PROXY_LOG" ' fault ')" -eq 1 ]
	has_line "$PROXY_LOG" '^tcpproxy: seed 5$'
}

# ---- the grammar ----

@test "a bad --fault is a usage error naming the word at fault" {
	bad_usage "unknown fault 'frob'" --fault frob 127.0.0.1 0 127.0.0.1 9
	bad_usage "'delay' needs a value" --fault delay 127.0.0.1 0 127.0.0.1 9
	bad_usage "invalid value 'x' for fault 'delay'" --fault delay=x 127.0.0.1 0 127.0.0.1 9
	bad_usage "invalid value '1' for fault 'stall'" --fault stall=1 127.0.0.1 0 127.0.0.1 9
	bad_usage "invalid value '0' for fault 'slice'" --fault slice=0 127.0.0.1 0 127.0.0.1 9
	bad_usage "invalid value '0' for fault 'rate'" --fault rate=0 127.0.0.1 0 127.0.0.1 9
	bad_usage "invalid value 'p=0' for fault 'corrupt'" --fault corrupt=p=0 127.0.0.1 0 127.0.0.1 9
	bad_usage "invalid value 'p=2' for fault 'corrupt'" --fault corrupt=p=2 127.0.0.1 0 127.0.0.1 9
	bad_usage "invalid dir 'sideways' in fault 'drop'" --fault drop,dir=sideways 127.0.0.1 0 127.0.0.1 9
	bad_usage "invalid p '1.5' in fault 'drop'" --fault drop,p=1.5 127.0.0.1 0 127.0.0.1 9
	bad_usage "invalid conn '0' in fault 'drop'" --fault drop,conn=0 127.0.0.1 0 127.0.0.1 9
	bad_usage "invalid conn '3-2' in fault 'drop'" --fault drop,conn=3-2 127.0.0.1 0 127.0.0.1 9
	bad_usage "invalid after '5x' in fault 'drop'" --fault drop,after=5x 127.0.0.1 0 127.0.0.1 9
	bad_usage "invalid for '0' in fault 'drop'" --fault drop,for=0 127.0.0.1 0 127.0.0.1 9
	bad_usage "invalid name 'a b' in fault 'drop'" --fault 'drop,name=a b' 127.0.0.1 0 127.0.0.1 9
	bad_usage "unknown key 'jitter' for fault 'ttfb'" --fault ttfb=1,jitter=1 127.0.0.1 0 127.0.0.1 9
	bad_usage "unknown key 'gap' for fault 'delay'" --fault delay=1,gap=1 127.0.0.1 0 127.0.0.1 9
	bad_usage "'up' in fault 'drop' is not KEY=VALUE" --fault drop,up 127.0.0.1 0 127.0.0.1 9
	bad_usage "--seed 'x'" --seed x 127.0.0.1 0 127.0.0.1 9
	bad_usage "--seed '-1'" --seed -1 127.0.0.1 0 127.0.0.1 9
}

@test "two faults with one name= are refused" {
	run $LIMIT "$TCPPROXY" --fault drop,name=x --fault stall,name=x \
	    127.0.0.1 0 127.0.0.1 9
	echo "$output"
	[ "$status" -ne 0 ]
	[[ ${lines[0]} == "tcpproxy: "*"'x'"* ]]
}

@test "a fault in a config file that does not parse names its line" {
	printf '127.0.0.1 0 127.0.0.1 9 --fault delay=soon\n' >"$T/bad.conf"
	run $LIMIT "$TCPPROXY" -f "$T/bad.conf"
	echo "$output"
	[ "$status" -eq 2 ]
	[[ ${lines[0]} == "tcpproxy: $T/bad.conf:1: "*"invalid value 'soon' for fault 'delay'"* ]]
}
