#!/usr/bin/env bats
# The zero-copy path: bulk flows go through kernel pipes with splice()
# (Linux), under the same close rules and byte counts as the copying
# relay; what turns it off; the pipe pool and its descriptors.

load helper

BULK_SIZE=16m
BULK_BYTES=16777216

# need_splice: skips where tcpproxy has no splice() path: not Linux, or
# a binary whose symbols show it was built without one (-DTCPPROXY_PORTABLE
# leaves no reference to splice()).  A binary nm cannot read (stripped)
# is taken to have it, so that a broken splice path fails these tests
# instead of skipping them.
need_splice() {
	local syms
	[ "$(uname -s)" = Linux ] || skip "splice() is Linux's"
	command -v nm >/dev/null 2>&1 || return 0
	syms=$(nm -D "$TCPPROXY" 2>/dev/null) || true
	[ -n "$syms" ] || syms=$(nm "$TCPPROXY" 2>/dev/null) || true
	[ -z "$syms" ] || grep -qw splice <<<"$syms" ||
	    skip "tcpproxy was built without splice() (-DTCPPROXY_PORTABLE)"
}

# spliced [SERVICE]: prints the spliced= count of SERVICE (the only one
# by default) from the stats of the proxy at $CTL.
spliced() {
	$LIMIT "$TCPPROXY" ctl "$CTL" stats | sed -n \
	    "s/^stats service=${1:-[^ ]*} open=.* spliced=\\([0-9]*\\)\$/\\1/p"
}

# close_bytes ID: prints "up=N down=N" of bridge ID's close line in
# PROXY_LOG, once it is there.
close_bytes() {
	wait_for 20 has_line "$PROXY_LOG" " close id=$1 " &&
	    sed -n "s/.* close id=$1 .* \\(up=[0-9]* down=[0-9]*\\) .*/\\1/p" \
	    "$PROXY_LOG"
}

# closes_of UP DOWN: prints how many close lines of PROXY_LOG count
# up=UP down=DOWN.
closes_of() {
	count_lines "$PROXY_LOG" " close id=.* up=$1 down=$2 "
}

# pipes_of PID: prints how many pipe descriptors PID has open.
pipes_of() {
	ls -l "/proc/$1/fd" 2>/dev/null | grep -c ' -> pipe:' || true
}

# most_pipes PID CPID...: samples PID's pipe descriptors until every
# CPID has exited (each bounded by its own alarm); sets MOST to the most
# seen at once.
most_pipes() {
	local pid=$1 c n
	shift
	MOST=0
	for c in "$@"; do
		until is_gone "$c"; do
			n=$(pipes_of "$pid")
			[ "$n" -le "$MOST" ] || MOST=$n
		done
	done
}

# downloads K PORT: K clients at once take what PORT sends (the proxy
# PROXY_PID in front of the last backend, a source), each reading nothing
# for its first 500 ms, while the proxy's flow to it fills; sets MOST
# (see most_pipes) meanwhile.  Each download must arrive whole.
DOWNLOADS=0
downloads() {
	local k=$1 port=$2 i n0 pids=() want
	DOWNLOADS=$((DOWNLOADS + 1))
	n0=$(count_lines "$BACKEND_OUT" '^sent ')
	for ((i = 1; i <= k; i++)); do
		spawn single "down$DOWNLOADS-$i" "$CLIENT" -a 60 -r -g 0 \
		    -W 500 127.0.0.1 "$port"
		pids+=("$SPAWNED")
	done
	most_pipes "$PROXY_PID" "${pids[@]}"
	echo "downloads $DOWNLOADS: at most $MOST pipe descriptors"
	wait_for 30 eval \
	    '[ "$(count_lines "$BACKEND_OUT" "^sent ")" -ge $((n0 + k)) ]'
	want=$(tail -n +$((n0 + 1)) "$BACKEND_OUT" | sort -u)
	[[ $want =~ ^sent\ [0-9]+\ [0-9a-f]+$ ]]
	for ((i = 1; i <= k; i++)); do
		[ "$(grep '^recv ' "$T/down$DOWNLOADS-$i.out")" = \
		    "recv ${want#sent }" ]
	done
}

# bulk MODE [PROXY OPTIONS...]: a new backend and a proxy with OPTIONS
# and a control socket in front of it carry BULK_SIZE bytes: MODE sink
# is an upload, source a download, echo both ways at once; the bytes are
# checked end to end.  Sets BULK to the close line's "up=N down=N" and
# SPLICED to the stats' spliced= count.
bulk() {
	local mode=$1
	shift
	if [ "$mode" = source ]; then
		start_backend source "$BULK_SIZE"
	else
		start_backend "$mode"
	fi
	fault_proxy "$@"
	case $mode in
	sink)
		"$CLIENT" -a 60 -r -g "$BULK_SIZE" -w 127.0.0.1 "$PROXY_PORT" \
		    >"$T/bulk.c"
		wait_for 30 has_line "$BACKEND_OUT" '^recv '
		[ "$(field "$BACKEND_OUT" recv)" = "$(field "$T/bulk.c" sent)" ]
		;;
	source)
		"$CLIENT" -a 60 -r -g 0 127.0.0.1 "$PROXY_PORT" >"$T/bulk.c"
		[ "$(field "$T/bulk.c" recv)" = "$(field "$BACKEND_OUT" sent)" ]
		;;
	echo)
		run "$CLIENT" -a 60 -n 1 -g "$BULK_SIZE" 127.0.0.1 "$PROXY_PORT"
		[ "$output" = "ok 1" ]
		;;
	esac
	BULK=$(close_bytes 1)
	SPLICED=$(spliced)
	echo "$mode $*: $BULK spliced=$SPLICED"
}

# both_ways [PROXY OPTIONS...]: a BYTES upload through one new proxy with
# OPTIONS, a BYTES download through another; sets UP and DOWN to the
# bytes each spliced.  The close lines must count BYTES exactly.
both_ways() {
	start_backend sink
	fault_proxy "$@"
	"$CLIENT" -a 60 -r -g "$BYTES" -w 127.0.0.1 "$PROXY_PORT" >"$T/up.c"
	wait_for 30 has_line "$BACKEND_OUT" '^recv '
	[ "$(field "$BACKEND_OUT" recv)" = "$(field "$T/up.c" sent)" ]
	[ "$(close_bytes 1)" = "up=$BYTES down=0" ]
	UP=$(spliced)
	start_backend source "$BYTES"
	fault_proxy "$@"
	"$CLIENT" -a 60 -r -g 0 127.0.0.1 "$PROXY_PORT" >"$T/down.c"
	[ "$(field "$T/down.c" recv)" = "$(field "$BACKEND_OUT" sent)" ]
	[ "$(close_bytes 1)" = "up=0 down=$BYTES" ]
	DOWN=$(spliced)
	echo "$*: spliced up=$UP down=$DOWN"
}

# start_proxy_nofile N ARGS...: start_proxy ARGS, the proxy with its
# descriptor limit (ulimit -n) lowered to N.
start_proxy_nofile() {
	local n=$1
	shift
	printf '#!/bin/sh\nulimit -n %s || exit 1\nexec "%s" "$@"\n' "$n" \
	    "$TOP/tcpproxy" >"$T/nofile"
	chmod +x "$T/nofile"
	TCPPROXY=$T/nofile start_proxy "$@"
}

# ---- what goes through pipes ----

@test "bulk uploads, downloads and echoes go through pipes; --no-splice counts the same bytes" {
	local mode with without
	need_splice
	for mode in sink source echo; do
		bulk "$mode"
		with=$BULK
		# Most of it, not a stray read: all but what came before the
		# flow showed it is bulk.
		[ "$SPLICED" -gt 0 ]
		case $mode in
		sink) [ "$with" = "up=$BULK_BYTES down=0" ]
		    [ "$SPLICED" -gt $((BULK_BYTES / 2)) ] ;;
		source) [ "$with" = "up=0 down=$BULK_BYTES" ]
		    [ "$SPLICED" -gt $((BULK_BYTES / 2)) ] ;;
		echo) [ "$with" = "up=$BULK_BYTES down=$BULK_BYTES" ]
		    [ "$SPLICED" -gt "$BULK_BYTES" ] ;;
		esac
		[ "$SPLICED" -le $((2 * BULK_BYTES)) ]
		bulk "$mode" --no-splice
		without=$BULK
		[ "$SPLICED" -eq 0 ]
		[ "$with" = "$without" ]
	done
}

@test "small and interactive traffic is copied, not spliced" {
	local i
	need_splice
	start_backend echo
	fault_proxy
	stream_open talk "$PROXY_PORT" -w
	for i in 1 2 3 4 5 6 7 8 9 10; do
		stream_send "line $i\n"
		wait_for 10 grep -q "^line $i\$" "$T/talk.out"
	done
	stream_end
	wait_for 10 is_gone "$STREAM_PID"
	# Below a buffer's worth (64 KiB) no read can show a bulk flow.
	run "$CLIENT" -a 60 -n 8 -g 60k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 8" ]
	ctl_wait closed==9
	[ "$(spliced)" -eq 0 ]
}

@test "a dump (-x, --dump-dir) turns splicing off both ways" {
	need_splice
	BYTES=524288
	both_ways -b 16k
	[ "$UP" -gt 0 ] && [ "$DOWN" -gt 0 ]
	both_ways -b 16k -x
	[ "$UP" -eq 0 ] && [ "$DOWN" -eq 0 ]
	both_ways -b 16k --dump-dir "$T/dd"
	[ "$UP" -eq 0 ] && [ "$DOWN" -eq 0 ]
	# And the dump has every byte.
	[ "$(cat "$T"/dd/*.up | wc -c)" -eq "$BYTES" ]
	[ "$(cat "$T"/dd/*.down | wc -c)" -eq "$BYTES" ]
}

@test "--rate and a --fault turn splicing off both ways, --max-bytes only upstream" {
	need_splice
	BYTES=524288
	both_ways -b 16k --rate 16m
	[ "$UP" -eq 0 ] && [ "$DOWN" -eq 0 ]
	# A fault on one direction is a stage the bridge's bytes pass.
	both_ways -b 16k --fault ttfb=1ms,dir=up
	[ "$UP" -eq 0 ] && [ "$DOWN" -eq 0 ]
	# The cap counts the client's bytes; the server's may still splice.
	both_ways -b 16k --max-bytes 100m
	[ "$UP" -eq 0 ] && [ "$DOWN" -gt 0 ]
}

@test "a fault added while bytes sit in a pipe lets them go first, then copies" {
	local before
	need_splice
	start_backend -d 2 slow 32768
	fault_proxy
	spawn single up "$CLIENT" -a 60 -r -g 4m -w 127.0.0.1 "$PROXY_PORT"
	# The server reads slowly: the flow's pipe is full.
	wait_for 10 eval '[ "$(spliced)" -gt 0 ]'
	ctl_ok add corrupt=0,dir=down
	before=$(spliced)
	wait_for 30 is_gone "$SPAWNED"
	wait_for 30 has_line "$BACKEND_OUT" '^recv '
	[ "$(field "$BACKEND_OUT" recv)" = "$(field "$T/up.out" sent)" ]
	[ "$(close_bytes 1)" = "up=4194304 down=0" ]
	# What the pipe held went on; nothing more was spliced after that.
	[ "$(spliced)" -le $((before + 65536)) ]
}

# ---- the close rules with bytes in a pipe ----

@test "-H: the client's EOF is passed on after every byte, and the reply still flows" {
	need_splice
	start_backend reply "$BULK_SIZE"
	fault_proxy -H
	"$CLIENT" -a 60 -r -g "$BULK_SIZE" -w 127.0.0.1 "$PROXY_PORT" >"$T/c"
	# The server saw EOF only after all of it: its count is at EOF.
	wait_for 30 has_line "$BACKEND_OUT" '^sent '
	[ "$(field "$BACKEND_OUT" recv)" = "$(field "$T/c" sent)" ]
	[ "$(field "$T/c" recv)" = "$(field "$BACKEND_OUT" sent)" ]
	[ "$(close_bytes 1)" = "up=$BULK_BYTES down=$BULK_BYTES" ]
	[ "$(spliced)" -gt "$BULK_BYTES" ]
	# A slow server: when the EOF comes, the pipe is full.
	start_backend -d 2 slow 32768
	fault_proxy -H
	"$CLIENT" -a 60 -r -g 8m -w 127.0.0.1 "$PROXY_PORT" >"$T/c"
	wait_for 30 has_line "$BACKEND_OUT" '^recv '
	[ "$(field "$BACKEND_OUT" recv)" = "$(field "$T/c" sent)" ]
	[ "$(field "$T/c" sent | cut -d' ' -f1)" = 8388608 ]
	[ "$(close_bytes 1)" = "up=8388608 down=0" ]
	[ "$(spliced)" -gt 0 ]
}

@test "symmetric close: bytes in a pipe reach a slow reader before the bridge closes" {
	need_splice
	# Upstream: the client's EOF comes while the slow server's pipe is
	# full.
	start_backend -d 2 slow 32768
	fault_proxy
	"$CLIENT" -a 60 -r -g 8m -w 127.0.0.1 "$PROXY_PORT" >"$T/c"
	wait_for 30 has_line "$BACKEND_OUT" '^recv '
	[ "$(field "$BACKEND_OUT" recv)" = "$(field "$T/c" sent)" ]
	[ "$(field "$T/c" sent | cut -d' ' -f1)" = 8388608 ]
	[ "$(close_bytes 1)" = "up=8388608 down=0" ]
	has_line "$PROXY_LOG" ' close id=1 .* reason=client-closed '
	[ "$(spliced)" -gt 0 ]
	# Downstream: the server sends and closes at once, to a client that
	# reads nothing for a while.
	start_backend burst 8m
	fault_proxy
	"$CLIENT" -a 60 -r -g 0 -W 500 127.0.0.1 "$PROXY_PORT" >"$T/c"
	[ "$(field "$T/c" recv)" = "$(field "$BACKEND_OUT" sent)" ]
	[ "$(field "$T/c" recv | cut -d' ' -f1)" = 8388608 ]
	[ "$(close_bytes 1)" = "up=0 down=8388608" ]
	has_line "$PROXY_LOG" ' close id=1 .* reason=server-closed '
	[ "$(spliced)" -gt 0 ]
}

@test "a server reset while bytes sit in a pipe ends the bridge with server-reset and leaks nothing" {
	local base pipes
	need_splice
	need_proc
	start_backend -d 100 slow 4096
	fault_proxy
	base=$(fd_count "$PROXY_PID")
	pipes=$(pipes_of "$PROXY_PID")
	spawn single up "$CLIENT" -a 60 -r -g 64m 127.0.0.1 "$PROXY_PORT"
	# The server hardly reads: a pipe fills, and stays full.
	wait_for 10 eval '[ "$(pipes_of "$PROXY_PID")" -gt "$pipes" ]'
	wait_for 10 eval '[ "$(spliced)" -gt 0 ]'
	# Killed with bytes unread, its socket resets.
	kill -KILL -- "-$BACKEND_PID"
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 .* reason=server-reset '
	wait_for 10 is_gone "$SPAWNED"
	wait_for 10 eval '[ "$(fd_count "$PROXY_PID")" -eq "$base" ]'
}

@test "a client reset while bytes sit in a pipe ends with client-reset; that pipe is closed, not reused" {
	local src echo pd pe base
	need_splice
	need_proc
	start_backend echo
	echo=$BACKEND_PORT
	start_backend source 64m
	src=$BACKEND_PORT
	CTL=$T/c.sock
	printf -- '--name %s 127.0.0.1 0 127.0.0.1 %s\n' down "$src" echo \
	    "$echo" >"$T/two.conf"
	start_config "$T/two.conf" --control "$CTL"
	pd=$(service_port "$PROXY_LOG" down)
	pe=$(service_port "$PROXY_LOG" echo)
	base=$(fd_count "$PROXY_PID")
	# A bridge that stays open, so that the pool is not trimmed.
	stream_open keep "$pe" -w
	stream_send 'hi\n'
	wait_for 10 grep -q '^hi$' "$T/keep.out"
	# The client reads 1 MiB of the 64, then resets: the path to it,
	# the pipe included, is full of bytes that can go nowhere.
	run "$CLIENT" -a 60 -R -W 300 -k 1m -r -g 0 127.0.0.1 "$pd"
	echo "$output"
	[[ $output == *"recv 1048576 "* ]]
	wait_for 10 has_line "$PROXY_LOG" ' close id=2 .* reason=client-reset '
	[ "$(spliced down)" -gt 0 ]
	# Pipes taken now hold only their own bytes.
	"$CLIENT" -a 60 -r -g 0 127.0.0.1 "$pd" >"$T/again"
	[ "$(field "$T/again" recv)" = "$(field "$BACKEND_OUT" sent)" ]
	[ "$(field "$T/again" recv | cut -d' ' -f1)" = 67108864 ]
	run "$CLIENT" -a 60 -n 4 -g 4m 127.0.0.1 "$pe"
	[ "$output" = "ok 4" ]
	[ "$(spliced echo)" -gt 0 ]
	stream_end
	wait_for 10 is_gone "$STREAM_PID"
	wait_for 10 eval '[ "$(fd_count "$PROXY_PID")" -eq "$base" ]'
}

# ---- the pool and descriptors ----

@test "the proxy's descriptors return to their baseline after bulk bridges, one or many at once" {
	local base
	need_splice
	need_proc
	start_backend echo
	fault_proxy
	base=$(fd_count "$PROXY_PID")
	run "$CLIENT" -a 60 -n 1 -g 16m 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 1" ]
	ctl_wait closed==1
	wait_for 10 eval '[ "$(fd_count "$PROXY_PID")" -eq "$base" ]'
	run "$CLIENT" -a 60 -n 8 -g 8m 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 8" ]
	ctl_wait closed==9
	[ "$(spliced)" -gt 0 ]
	wait_for 10 eval '[ "$(fd_count "$PROXY_PID")" -eq "$base" ]'
	[ "$(closes_of 8388608 8388608)" -eq 8 ]
}

@test "--max-pipes 1: parallel bulk bridges share one pipe, the others are copied, all byte for byte" {
	local pipes
	need_splice
	need_proc
	start_backend echo
	fault_proxy --max-pipes 1
	pipes=$(pipes_of "$PROXY_PID")
	spawn single many "$CLIENT" -a 60 -n 6 -g 8m 127.0.0.1 "$PROXY_PORT"
	most_pipes "$PROXY_PID" "$SPAWNED"
	echo "pipe descriptors: $pipes at rest, at most $MOST"
	[ "$(cat "$T/many.out")" = "ok 6" ]
	[ "$MOST" -le $((pipes + 2)) ]
	ctl_wait closed==6
	[ "$(closes_of 8388608 8388608)" -eq 6 ]
	[ "$(spliced)" -gt 0 ]
	# Slow readers: every flow would hold a full pipe, if it could.
	start_backend source 8m
	fault_proxy --max-pipes 1
	pipes=$(pipes_of "$PROXY_PID")
	downloads 6 "$PROXY_PORT"
	[ "$MOST" -le $((pipes + 2)) ]
	ctl_wait closed==6
	[ "$(closes_of 0 8388608)" -eq 6 ]
	[ "$(spliced)" -gt 0 ]
	[ "$(pipes_of "$PROXY_PID")" -eq "$pipes" ]
}

@test "with a low descriptor limit, parallel bulk bridges all complete and nothing runs out" {
	local base
	need_splice
	need_proc
	start_backend echo
	CTL=$T/c.sock
	# 12 bridges take 24 of 40: pipes may have what is left of 3/4.
	start_proxy_nofile 40 --control "$CTL" 127.0.0.1 0 127.0.0.1 \
	    "$BACKEND_PORT"
	grep -Eq '^Max open files +40 ' "/proc/$PROXY_PID/limits"
	base=$(fd_count "$PROXY_PID")
	run "$CLIENT" -a 60 -n 12 -g 4m 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 12" ]
	run "$CLIENT" -a 60 -n 12 -g 4m -s 100 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 12" ]
	run "$CLIENT" -a 60 -n 1 -g 16m 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 1" ]
	ctl_wait closed==25
	[ "$(spliced)" -gt 0 ]
	no_line "$PROXY_LOG" 'out of file descriptors|error'
	wait_for 10 eval '[ "$(fd_count "$PROXY_PID")" -eq "$base" ]'
}

# ---- options ----

@test "bad --max-pipes values and a valued --no-splice are usage errors naming them" {
	bad_usage "'0'" --max-pipes 0 127.0.0.1 0 127.0.0.1 80
	[ "$(grep -c '^tcpproxy: ' <<<"$output")" -eq 1 ]
	bad_usage "'x'" --max-pipes x 127.0.0.1 0 127.0.0.1 80
	[ "$(grep -c '^tcpproxy: ' <<<"$output")" -eq 1 ]
	bad_usage "'1000001'" --max-pipes 1000001 127.0.0.1 0 127.0.0.1 80
	bad_usage "option '--no-splice' takes no value" --no-splice=1 \
	    127.0.0.1 0 127.0.0.1 80
	# In a config file: one line naming the file, the line and the word.
	printf -- '--max-pipes x\n127.0.0.1 0 127.0.0.1 9\n' >"$T/bad.conf"
	run $LIMIT "$TCPPROXY" -f "$T/bad.conf"
	echo "$output"
	[ "$status" -eq 2 ]
	[[ ${lines[0]} == "tcpproxy: $T/bad.conf:1: "*"'x'"* ]]
	[ "${#lines[@]}" -eq 1 ]
}

# conf OPTION-LINES...: writes $T/run.conf: the lines, then the rule of
# service bulk to the last backend.
conf() {
	{
		[ $# -eq 0 ] || printf '%s\n' "$@"
		printf -- '--name bulk 127.0.0.1 0 127.0.0.1 %s\n' \
		    "$BACKEND_PORT"
	} >"$T/run.conf"
}

@test "--no-splice and --max-pipes work in a config file and change with a reload" {
	local port pipes before
	need_splice
	need_proc
	start_backend source 8m
	CTL=$T/c.sock
	conf --no-splice
	start_config "$T/run.conf" --control "$CTL"
	port=$(ready_port "$PROXY_LOG")
	pipes=$(pipes_of "$PROXY_PID")
	downloads 2 "$port"
	[ "$MOST" -eq "$pipes" ]
	[ "$(spliced bulk)" -eq 0 ]
	# Splicing on, as many pipes as it likes: the pool grows.
	conf
	reload_proxy "$PROXY_PID" "$PROXY_LOG"
	downloads 6 "$port"
	[ "$MOST" -gt $((pipes + 2)) ]
	[ "$(spliced bulk)" -gt 0 ]
	# Then one pipe at most, however big the pool has grown.
	conf '--max-pipes 1'
	reload_proxy "$PROXY_PID" "$PROXY_LOG"
	before=$(spliced bulk)
	downloads 6 "$port"
	[ "$MOST" -le $((pipes + 2)) ]
	[ "$(spliced bulk)" -gt "$before" ]
	# And off again: the count stands still.
	conf --no-splice '--max-pipes 8'
	reload_proxy "$PROXY_PID" "$PROXY_LOG"
	ctl_wait closed==14
	before=$(spliced bulk)
	downloads 2 "$port"
	ctl_wait closed==16
	[ "$(spliced bulk)" -eq "$before" ]
	no_line "$PROXY_LOG" 'reload failed'
	[ "$(closes_of 0 8388608)" -eq 16 ]
	[ "$(pipes_of "$PROXY_PID")" -eq "$pipes" ]
}
