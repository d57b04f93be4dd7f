#!/usr/bin/env bats
# Command line options that change what the proxy does: dumps, access
# lists, byte and rate limits, per-source limits, privileges, workers.

load helper
load options_helper

# ---- --hexdump, --dump-file, --dump-dir ----

@test "--dump-file writes each chunk as a header and hexdump -C lines" {
	start_backend echo
	proxy_to_backend --dump-file "$T/dump"
	printf 'Hello, tcpproxy!\n\tbytes: \001\377~' >"$T/in"
	"$CLIENT" -a 30 -k 28 127.0.0.1 "$PROXY_PORT" <"$T/in" >"$T/out"
	cmp "$T/in" "$T/out"
	wait_for 20 grep -q '^id=1 < ' "$T/dump"
	cat >"$T/want" <<'EOF'
id=1 > offset=0 length=28
00000000  48 65 6c 6c 6f 2c 20 74  63 70 70 72 6f 78 79 21  |Hello, tcpproxy!|
00000010  0a 09 62 79 74 65 73 3a  20 01 ff 7e              |..bytes: ..~|
id=1 < offset=0 length=28
00000000  48 65 6c 6c 6f 2c 20 74  63 70 70 72 6f 78 79 21  |Hello, tcpproxy!|
00000010  0a 09 62 79 74 65 73 3a  20 01 ff 7e              |..bytes: ..~|
EOF
	diff "$T/want" "$T/dump"
}

@test "-x dumps 300 KiB each way to stderr, byte for byte" {
	start_backend echo
	proxy_to_backend -x
	head -c 307200 /dev/urandom >"$T/in"
	"$CLIENT" -a 60 -k 307200 127.0.0.1 "$PROXY_PORT" <"$T/in" >"$T/out"
	cmp "$T/in" "$T/out"
	wait_for 20 has_line "$PROXY_LOG" ' close id=1 '
	file_hex "$T/in" >"$T/want"
	dump_hex "$PROXY_LOG" '>' >"$T/up"
	dump_hex "$PROXY_LOG" '<' >"$T/down"
	cmp "$T/want" "$T/up"
	cmp "$T/want" "$T/down"
	# Each chunk is one header line; more than one chunk each way.
	[ "$(grep -c '^id=1 > offset=' "$PROXY_LOG")" -gt 1 ]
	[ "$(grep -c '^id=1 < offset=' "$PROXY_LOG")" -gt 1 ]
}

@test "--hexdump is the long name of -x" {
	start_backend echo
	proxy_to_backend --hexdump
	printf 'ping' >"$T/in"
	"$CLIENT" -a 30 -k 4 127.0.0.1 "$PROXY_PORT" <"$T/in" >"$T/out"
	wait_for 20 has_line "$PROXY_LOG" '^id=1 < offset=0 length=4$'
	has_line "$PROXY_LOG" '^id=1 > offset=0 length=4$'
	has_line "$PROXY_LOG" '^00000000  70 69 6e 67 {39}\|ping\|$'
}

@test "--dump-dir saves each bridge's raw bytes in ID_HOST_PORT.up and .down" {
	local cport
	start_backend echo
	proxy_to_backend --dump-dir "$T/dd"
	head -c 200000 /dev/urandom >"$T/in"
	"$CLIENT" -a 60 -k 200000 127.0.0.1 "$PROXY_PORT" <"$T/in" >"$T/out"
	cmp "$T/in" "$T/out"
	wait_for 20 has_line "$PROXY_LOG" ' close id=1 '
	cport=$(sed -n 's/.* open id=1 client=127\.0\.0\.1:\([0-9]*\) .*/\1/p' \
	    "$PROXY_LOG")
	[ -n "$cport" ]
	cmp "$T/in" "$T/dd/1_127.0.0.1_$cport.up"
	cmp "$T/in" "$T/dd/1_127.0.0.1_$cport.down"
	[ "$(ls "$T/dd" | wc -l)" -eq 2 ]
}

@test "--dump-dir names IPv6 files without brackets" {
	local cport
	need_ipv6
	start_backend -l ::1 echo
	start_proxy --dump-dir "$T/dd" ::1 0 ::1 "$BACKEND_PORT"
	printf 'six' >"$T/in"
	"$CLIENT" -a 30 -k 3 ::1 "$PROXY_PORT" <"$T/in" >"$T/out"
	wait_for 20 has_line "$PROXY_LOG" ' close id=1 '
	cport=$(sed -n 's/.* open id=1 client=\[::1\]:\([0-9]*\) .*/\1/p' \
	    "$PROXY_LOG")
	[ -n "$cport" ]
	cmp "$T/in" "$T/dd/1_::1_$cport.up"
	cmp "$T/in" "$T/dd/1_::1_$cport.down"
}

@test "a --dump-dir under a regular file is a start-up failure with status 1" {
	: >"$T/file"
	run $LIMIT "$TCPPROXY" --dump-dir "$T/file/sub" 127.0.0.1 0 127.0.0.1 80
	echo "$output"
	[ "$status" -eq 1 ]
	[[ ${lines[0]} == "tcpproxy: "*"$T/file/sub"* ]]
	run $LIMIT "$TCPPROXY" --dump-dir "$T/file" 127.0.0.1 0 127.0.0.1 80
	echo "$output"
	[ "$status" -eq 1 ]
	[[ ${lines[0]} == "tcpproxy: "*"$T/file"* ]]
}

@test "a --dump-dir in /proc is a start-up failure with status 1" {
	need_proc
	run $LIMIT "$TCPPROXY" --dump-dir /proc/tcpproxy-dump 127.0.0.1 0 \
	    127.0.0.1 80
	echo "$output"
	[ "$status" -eq 1 ]
	[[ ${lines[0]} == "tcpproxy: "*/proc/tcpproxy-dump* ]]
}

@test "a --dump-file in a missing directory is a start-up failure with status 1" {
	run $LIMIT "$TCPPROXY" --dump-file "$T/none/dump" 127.0.0.1 0 \
	    127.0.0.1 80
	echo "$output"
	[ "$status" -eq 1 ]
	[[ ${lines[0]} == "tcpproxy: "*"$T/none/dump"* ]]
}

@test "a --dump-dir that vanished names the file a capture could not create" {
	start_backend echo
	proxy_to_backend --dump-dir "$T/dd"
	rmdir "$T/dd"
	printf 'ping' | "$CLIENT" -a 30 -k 4 127.0.0.1 "$PROXY_PORT" >"$T/out"
	[ "$(cat "$T/out")" = ping ]
	wait_for 10 has_line "$PROXY_LOG" "^tcpproxy: dump id=1: cannot create '$T/dd/1_127\.0\.0\.1_[0-9]+\.(up|down)': "
}

@test "with -u a --dump-dir is made by that user and captures" {
	local cport
	need_root
	id -u nobody >/dev/null 2>&1 || skip "no user nobody"
	scratch_dir
	start_backend echo
	proxy_to_backend -u nobody --dump-dir "$SCRATCH/dd"
	printf 'ping' | "$CLIENT" -a 30 -k 4 127.0.0.1 "$PROXY_PORT" >"$T/out"
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	cport=$(sed -n 's/.* open id=1 client=127\.0\.0\.1:\([0-9]*\) .*/\1/p' \
	    "$PROXY_LOG")
	[ "$(cat "$SCRATCH/dd/1_127.0.0.1_$cport.up")" = ping ]
	[ "$(ls -ld "$SCRATCH/dd" | awk '{ print $3 }')" = nobody ]
	no_line "$PROXY_LOG" 'dump id='
}

@test "with -u a dump path that user cannot write is a start-up failure naming it" {
	need_root
	id -u nobody >/dev/null 2>&1 || skip "no user nobody"
	mkdir -m 0700 "$T/priv"
	start_fails "'$T/priv/dd' as user 'nobody'" -u nobody \
	    --dump-dir "$T/priv/dd" 127.0.0.1 0 127.0.0.1 80
	[ ! -e "$T/priv/dd" ]
	start_fails "'$T/priv/hex' as user 'nobody'" -u nobody \
	    --dump-file "$T/priv/hex" 127.0.0.1 0 127.0.0.1 80
	# A directory root made, not writable by the user, is refused too.
	mkdir -m 0755 "$T/rootdir"
	start_fails "'$T/rootdir' as user 'nobody'" -u nobody \
	    --dump-dir "$T/rootdir" 127.0.0.1 0 127.0.0.1 80
	printf 'logfile %s\n127.0.0.1 0 127.0.0.1 80\n' "$T/priv/log" \
	    >"$T/log.conf"
	start_fails "'$T/priv/log' as user 'nobody'" -u nobody -f "$T/log.conf"
}

# ---- --allow, --deny ----

@test "with -a only clients in the block are served; others are refused at once" {
	need_socat
	start_backend sink
	proxy_to_backend -H -a 127.0.0.1/32
	run from 127.0.0.2 "$PROXY_PORT" <<<"refused"
	[ "$status" -ne 124 ]
	[ -z "$output" ]
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: refuse id=1 client=127\.0\.0\.2:[0-9]+ reason=not-allowed$'
	printf 'served' | from 127.0.0.1 "$PROXY_PORT"
	wait_for 20 has_line "$BACKEND_OUT" '^recv '
	[ "$(field "$BACKEND_OUT" recv | cut -d' ' -f1)" = 6 ]
	wait_for 10 has_line "$PROXY_LOG" ' close id=2 '
	# The refused client never got as far as the server.
	no_line "$PROXY_LOG" ' open id=1 '
	[ "$(grep -c '^recv ' "$BACKEND_OUT")" -eq 1 ]
}

@test "with -d a client in the block is refused and the rest are served" {
	need_socat
	start_backend echo
	proxy_to_backend -H -d 127.0.0.2
	run from 127.0.0.2 "$PROXY_PORT" <<<"refused"
	[ -z "$output" ]
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: refuse id=1 client=127\.0\.0\.2:'
	run from 127.0.0.3 "$PROXY_PORT" <<<"three"
	[ "$output" = three ]
	run from 127.0.0.1 "$PROXY_PORT" <<<"one"
	[ "$output" = one ]
	[ "$(grep -c ' refuse id=' "$PROXY_LOG")" -eq 1 ]
}

@test "a deny wins over an allow, and both repeat" {
	need_socat
	start_backend echo
	proxy_to_backend -H -a 10.0.0.0/8 -a 127.0.0.0/8 -d 127.0.0.2/32 \
	    --deny 127.0.0.4/31 --allow 192.168.0.0/16
	run from 127.0.0.1 "$PROXY_PORT" <<<"one"
	[ "$output" = one ]
	run from 127.0.0.2 "$PROXY_PORT" <<<"two"
	[ -z "$output" ]
	run from 127.0.0.3 "$PROXY_PORT" <<<"three"
	[ "$output" = three ]
	run from 127.0.0.5 "$PROXY_PORT" <<<"five"
	[ -z "$output" ]
	wait_for 10 eval '[ "$(grep -c " refuse id=" "$PROXY_LOG")" -eq 2 ]'
	has_line "$PROXY_LOG" ' refuse id=2 client=127\.0\.0\.2:'
	has_line "$PROXY_LOG" ' refuse id=4 client=127\.0\.0\.5:'
}

@test "IPv6 clients are matched against IPv6 blocks" {
	need_ipv6
	start_backend -l ::1 echo
	start_proxy -a ::1/128 ::1 0 ::1 "$BACKEND_PORT"
	run "$CLIENT" -a 30 -n 2 -g 10k ::1 "$PROXY_PORT"
	[ "$output" = "ok 2" ]
	start_proxy -d ::1 ::1 0 ::1 "$BACKEND_PORT"
	run "$CLIENT" -a 30 -r -g 10k ::1 "$PROXY_PORT"
	[ "$status" -ne 124 ]
	[[ $output != *"recv 10240 "* ]]
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: refuse id=1 client=\[::1\]:[0-9]+ reason=denied$'
	# An IPv4-only allow list admits no IPv6 client.
	start_proxy -a 127.0.0.0/8 ::1 0 ::1 "$BACKEND_PORT"
	run "$CLIENT" -a 30 -r -g 10k ::1 "$PROXY_PORT"
	[[ $output != *"recv 10240 "* ]]
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: refuse id=1 '
	no_line "$PROXY_LOG" ' open id='
}

@test "malformed CIDR blocks are usage errors naming them" {
	local bad
	for bad in 10.0.0.0/33 1.2.3/8 ::1/129 abc 10.0.0.0/ /8 \
	    10.0.0.0/8x 10.0.0.0/-1; do
		echo "-a $bad"
		bad_usage "'$bad'" -a "$bad" 127.0.0.1 0 127.0.0.1 80
		echo "-d $bad"
		bad_usage "'$bad'" -d "$bad" 127.0.0.1 0 127.0.0.1 80
	done
}

# ---- --max-bytes ----

@test "--max-bytes lets exactly that many upstream bytes through" {
	local want
	start_backend sink
	# What the first 100 KiB of the client's pattern sum to.
	"$CLIENT" -a 30 -r -g 100k -w 127.0.0.1 "$BACKEND_PORT" >"$T/first"
	wait_for 20 has_line "$BACKEND_OUT" '^recv '
	want=$(field "$T/first" sent)
	[ "$(field "$BACKEND_OUT" recv)" = "$want" ]
	start_backend sink
	proxy_to_backend --max-bytes 100k
	"$CLIENT" -a 30 -r -g 1m 127.0.0.1 "$PROXY_PORT" >"$T/c" || true
	wait_for 20 has_line "$BACKEND_OUT" '^recv '
	[ "$(field "$BACKEND_OUT" recv)" = "$want" ]
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 .* up=102400 .*reason=max-bytes'
}

@test "--max-bytes takes a plain number and the m suffix" {
	start_backend sink
	proxy_to_backend --max-bytes 1000
	"$CLIENT" -a 30 -r -g 5000 127.0.0.1 "$PROXY_PORT" >/dev/null || true
	wait_for 20 has_line "$BACKEND_OUT" '^recv 1000 '
	start_backend sink
	proxy_to_backend --max-bytes 1m
	"$CLIENT" -a 60 -r -g 3m 127.0.0.1 "$PROXY_PORT" >/dev/null || true
	wait_for 30 has_line "$BACKEND_OUT" '^recv 1048576 '
	wait_for 10 has_line "$PROXY_LOG" 'up=1048576 .*reason=max-bytes'
}

@test "bad --max-bytes values are usage errors" {
	bad_usage "'0'" --max-bytes 0 127.0.0.1 0 127.0.0.1 80
	bad_usage "'-1'" --max-bytes -1 127.0.0.1 0 127.0.0.1 80
	bad_usage "'10q'" --max-bytes 10q 127.0.0.1 0 127.0.0.1 80
}

# ---- --rate ----

@test "--rate slows a download down but delivers every byte" {
	local t0 t1
	start_backend source 256k
	proxy_to_backend --rate 256k
	t0=$(now_ms)
	"$CLIENT" -a 60 -r -g 0 127.0.0.1 "$PROXY_PORT" >"$T/c"
	t1=$(now_ms)
	echo "256 KiB at 256 KiB/s took $((t1 - t0)) ms"
	[ "$(field "$T/c" recv)" = "$(field "$BACKEND_OUT" sent)" ]
	[ "$(field "$T/c" recv | cut -d' ' -f1)" = 262144 ]
	# A bucket of 1/20 s lets at most 5% through at once.
	[ $((t1 - t0)) -ge 800 ]
}

@test "--rate slows an upload down but delivers every byte" {
	local t0 t1
	start_backend sink
	proxy_to_backend --rate 128k
	t0=$(now_ms)
	"$CLIENT" -a 60 -r -g 128k -w 127.0.0.1 "$PROXY_PORT" >"$T/c"
	wait_for 30 has_line "$BACKEND_OUT" '^recv '
	t1=$(now_ms)
	echo "128 KiB at 128 KiB/s took $((t1 - t0)) ms"
	[ "$(field "$BACKEND_OUT" recv)" = "$(field "$T/c" sent)" ]
	[ $((t1 - t0)) -ge 800 ]
}

@test "bad --rate values are usage errors naming them" {
	bad_usage "'0'" --rate 0 127.0.0.1 0 127.0.0.1 80
	bad_usage "'-5'" --rate -5 127.0.0.1 0 127.0.0.1 80
	bad_usage "'x'" --rate x 127.0.0.1 0 127.0.0.1 80
}

# ---- --busy-poll ----

# Sends a byte every 10 ms for a second through the proxy (the client
# paces them), with its sent and received counts in $T/trickle; prints
# the proxy's CPU ticks meanwhile.
trickle_ticks() {
	local before after
	before=$(cpu_ticks "$PROXY_PID")
	"$CLIENT" -a 30 -r -w -g 100 -P 10 127.0.0.1 "$PROXY_PORT" \
	    >"$T/trickle"
	after=$(cpu_ticks "$PROXY_PID")
	echo $((after - before))
}

# The trickle came back whole: 100 bytes, the ones sent.
trickle_whole() {
	[ "$(field "$T/trickle" recv)" = "$(field "$T/trickle" sent)" ]
	[ "$(field "$T/trickle" recv | cut -d' ' -f1)" = 100 ]
}

@test "--busy-poll keeps a core polling while traffic flows, and sleeps once it stops" {
	local busy quiet lazy before after
	need_proc
	start_backend echo
	# -H: the echo of the last byte must not race the client's EOF.
	proxy_to_backend -H --busy-poll 50000
	busy=$(trickle_ticks)
	trickle_whole
	wait_for 10 has_line "$PROXY_LOG" " close id=1 "
	before=$(cpu_ticks "$PROXY_PID")
	# A bounded look for something that must not happen: a busy loop.
	observe_for 1
	after=$(cpu_ticks "$PROXY_PID")
	quiet=$((after - before))
	# The same traffic through a proxy without it.
	proxy_to_backend -H
	lazy=$(trickle_ticks)
	trickle_whole
	echo "cpu ticks: busy-poll $busy, then idle $quiet, without $lazy"
	[ "$busy" -ge 25 ]
	[ "$quiet" -le 10 ]
	[ "$lazy" -le 10 ]
}

@test "--busy-poll sleeps as usual with more than 8 bridges to poll" {
	local ticks
	need_proc
	start_backend echo
	proxy_to_backend -H --busy-poll 50000
	spawn single idle "$CLIENT" -a 900 -n 10 -W 600000 -g 1 127.0.0.1 \
	    "$PROXY_PORT"
	wait_for 10 eval '[ "$(grep -c " open id=" "$PROXY_LOG")" -eq 10 ]'
	ticks=$(trickle_ticks)
	trickle_whole
	echo "cpu ticks with 11 bridges: $ticks"
	[ "$ticks" -le 10 ]
}

@test "with --busy-poll 200 concurrent clients each get their own bytes back" {
	start_backend echo
	proxy_to_backend --busy-poll 1000
	run "$CLIENT" -a 60 -n 200 -g 64k -s 5 127.0.0.1 "$PROXY_PORT"
	[ "$status" -eq 0 ]
	[ "$output" = "ok 200" ]
}

@test "bad --busy-poll values are usage errors naming them" {
	bad_usage "'0'" --busy-poll 0 127.0.0.1 0 127.0.0.1 80
	bad_usage "'1000001'" --busy-poll 1000001 127.0.0.1 0 127.0.0.1 80
	bad_usage "'-5'" --busy-poll -5 127.0.0.1 0 127.0.0.1 80
	bad_usage "'x'" --busy-poll x 127.0.0.1 0 127.0.0.1 80
	bad_usage "'1k'" --busy-poll 1k 127.0.0.1 0 127.0.0.1 80
}

# ---- --max-per-source ----

@test "--max-per-source refuses one bridge too many from an address, not from others" {
	local h1 h2
	need_socat
	start_backend echo
	proxy_to_backend -H --max-per-source 2
	printf 'one\n' >"$T/in1"
	printf 'two\n' >"$T/in2"
	# Two holders: each gets its echo, then waits for bytes that never come.
	SPAWN_STDIN=$T/in1 spawn single h1 "$CLIENT" -a 60 -k 1000 127.0.0.1 \
	    "$PROXY_PORT"
	h1=$SPAWNED
	wait_for 20 grep -q one "$T/h1.out"
	SPAWN_STDIN=$T/in2 spawn single h2 "$CLIENT" -a 60 -k 1000 127.0.0.1 \
	    "$PROXY_PORT"
	h2=$SPAWNED
	wait_for 20 grep -q two "$T/h2.out"
	# A third from 127.0.0.1 is closed at once, logged as refused...
	run "$CLIENT" -a 30 -r -g 0 127.0.0.1 "$PROXY_PORT"
	[ "$status" -ne 124 ]
	[[ $output == *"recv 0 "* ]]
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: refuse id=3 client=127\.0\.0\.1:[0-9]+ reason=max-per-source$'
	# ...while another address is still served.
	run from 127.0.0.2 "$PROXY_PORT" <<<"other"
	[ "$output" = other ]
	# One holder leaves: 127.0.0.1 has a slot again.
	kill -TERM "$h1"
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	printf 'again\n' >"$T/in3"
	run "$CLIENT" -a 30 -k 6 127.0.0.1 "$PROXY_PORT" <"$T/in3"
	[ "$status" -eq 0 ]
	[ "$output" = again ]
	[ "$(grep -c ' refuse id=' "$PROXY_LOG")" -eq 1 ]
	kill -0 "$h2"
}

@test "bad --max-per-source values are usage errors naming them" {
	bad_usage "'0'" --max-per-source 0 127.0.0.1 0 127.0.0.1 80
	bad_usage "'x'" --max-per-source x 127.0.0.1 0 127.0.0.1 80
}

# ---- --user ----

@test "-u nobody drops to nobody's uid, gid and groups and still serves" {
	local uid gid
	need_root
	need_proc
	uid=$(id -u nobody) || skip "no user nobody"
	gid=$(id -g nobody)
	start_backend echo
	proxy_to_backend -u nobody
	run "$CLIENT" -a 30 -n 3 -g 10k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 3" ]
	grep '^\(Uid\|Gid\|Groups\):' "/proc/$PROXY_PID/status"
	has_line "/proc/$PROXY_PID/status" "^Uid:[[:space:]]+$uid[[:space:]]+$uid[[:space:]]+$uid[[:space:]]+$uid\$"
	has_line "/proc/$PROXY_PID/status" "^Gid:[[:space:]]+$gid[[:space:]]+$gid[[:space:]]+$gid[[:space:]]+$gid\$"
	has_line "/proc/$PROXY_PID/status" "^Groups:[[:space:]]*$gid[[:space:]]*\$"
	no_line "$PROXY_LOG" 'running as root'
}

@test "--user takes a group after a colon" {
	local uid gid
	need_root
	need_proc
	uid=$(id -u nobody) || skip "no user nobody"
	gid=$(getent group daemon | cut -d: -f3)
	[ -n "$gid" ] || skip "no group daemon"
	start_backend echo
	proxy_to_backend --user nobody:daemon
	run "$CLIENT" -a 30 -n 1 -g 1k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 1" ]
	has_line "/proc/$PROXY_PID/status" "^Gid:[[:space:]]+$gid[[:space:]]+$gid[[:space:]]+$gid[[:space:]]+$gid\$"
	has_line "/proc/$PROXY_PID/status" "^Groups:[[:space:]]*$gid[[:space:]]*\$"
}

@test "an unknown user or group is a start-up failure with status 1" {
	need_root
	run $LIMIT "$TCPPROXY" -u nosuchuser 127.0.0.1 0 127.0.0.1 80
	echo "$output"
	[ "$status" -eq 1 ]
	[[ $output == *"tcpproxy: "*nosuchuser* ]]
	run $LIMIT "$TCPPROXY" -u nobody:nosuchgroup 127.0.0.1 0 127.0.0.1 80
	echo "$output"
	[ "$status" -eq 1 ]
	[[ $output == *"tcpproxy: "*nosuchgroup* ]]
}

@test "running as root without -u logs a warning" {
	need_root
	start_backend echo
	proxy_to_backend
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: warning: .*running as root'
}

# ---- --workers ----

@test "with -w 2 two workers serve clients and SIGTERM ends them all with status 0" {
	local kids rc=0 n=0 k
	need_proc
	start_backend echo
	proxy_to_backend -w 2
	wait_for 10 eval '[ "$(children_of "$PROXY_PID" | wc -l)" -eq 2 ]'
	kids=$(children_of "$PROXY_PID")
	echo "workers: $kids"
	# Until both workers have served someone (the kernel picks).
	until has_line "$PROXY_LOG" ' open id=[0-9]+ worker=1 ' &&
	    has_line "$PROXY_LOG" ' open id=[0-9]+ worker=2 '; do
		run "$CLIENT" -a 30 -n 20 -g 16k -s "$n" 127.0.0.1 "$PROXY_PORT"
		[ "$output" = "ok 20" ]
		n=$((n + 1))
		[ "$n" -lt 20 ]
	done
	# Every bridge line says which worker ran it.
	[ -z "$(grep -E ' (open|close) id=' "$PROXY_LOG" |
	    grep -Ev ' worker=[12] ')" ]
	kill -TERM "$PROXY_PID"
	wait_for 20 is_gone "$PROXY_PID"
	wait "$PROXY_PID" || rc=$?
	[ "$rc" -eq 0 ]
	for k in $kids; do
		wait_for 10 is_gone "$k"
	done
}

@test "bad --workers values are usage errors naming them" {
	bad_usage "'0'" -w 0 127.0.0.1 0 127.0.0.1 80
	bad_usage "'two'" --workers two 127.0.0.1 0 127.0.0.1 80
}
