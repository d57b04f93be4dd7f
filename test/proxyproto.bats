#!/usr/bin/env bats
# The PROXY protocol byte for byte (issue 10): every vector and reject
# of ../shared/reference/proxy-protocol.md sent to --accept-proxy, and
# the exact header --send-proxy v1|v2 writes to a backend that records
# what it got.  Headers are written with printf's \x escapes (NULs
# included) into socat.

load helper

# The v2 signature and a payload that follows every accepted header.
SIG=0d0a0d0a000d0a515549540a
PAYLOAD=7061796c6f61640a # "payload\n"

# zeros N: N zero bytes in hex.
zeros() {
	local i out=
	for ((i = 0; i < $1; i++)); do
		out+=00
	done
	printf '%s' "$out"
}

# ascii TEXT: TEXT in hex.
ascii() {
	printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n'
}

# port_hex PORT: PORT as two bytes in network order, in hex.
port_hex() {
	printf '%04x' "$1"
}

# send_hex PORT HEX...: one connection from 127.0.0.1 that sends the
# bytes and closes.  A refusal may close it before all are written: how
# socat fared is not the test's business (the logs and the recorder
# are).
send_hex() {
	local port=$1
	shift
	hex_bytes "$@" | socat -u - "TCP:127.0.0.1:$port" || true
}

# accepted HEADER_HEX CLIENT_REGEX: a fresh recorder and proxy with
# --accept-proxy (and PROXY_OPTS); one client sends the header and the
# payload; the payload alone reaches the backend and the open and close
# lines name CLIENT_REGEX as client=, with via= the real peer.  An empty
# CLIENT_REGEX: the header said LOCAL (or UNKNOWN): the real peer, no
# via=.
accepted() {
	local header=$1 client=$2
	start_recorder
	# shellcheck disable=SC2086
	start_proxy --accept-proxy ${PROXY_OPTS:-} 127.0.0.1 0 127.0.0.1 \
	    "$REC_PORT"
	send_hex "$PROXY_PORT" "$header" "$PAYLOAD"
	received "$PAYLOAD"
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	cat "$PROXY_LOG"
	if [ -n "$client" ]; then
		has_line "$PROXY_LOG" " open id=1 client=$client via=127\\.0\\.0\\.1:[0-9]+ server="
		has_line "$PROXY_LOG" " close id=1 client=$client via=127\\.0\\.0\\.1:[0-9]+ "
	else
		has_line "$PROXY_LOG" ' open id=1 client=127\.0\.0\.1:[0-9]+ server='
		no_line "$PROXY_LOG" ' via='
	fi
	no_line "$PROXY_LOG" ' refuse '
}

# proxy_for_rejects [OPTS...]: a recorder and a proxy with
# --accept-proxy OPTS in front of it, for refused() to send to.
proxy_for_rejects() {
	start_recorder
	start_proxy --accept-proxy "$@" 127.0.0.1 0 127.0.0.1 "$REC_PORT"
}

# refused REASON HEX...: one more connection sends the bytes; one more
# refuse line follows, from the real peer, with reason=REASON.
refused() {
	local reason=$1 want
	shift
	want=$(($(count_lines "$PROXY_LOG" ' refuse ') + 1))
	send_hex "$PROXY_PORT" "$@"
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " refuse ")" -ge $want ]' || {
		cat "$PROXY_LOG"
		return 1
	}
	grep ' refuse ' "$PROXY_LOG" | tail -n 1 >"$T/last"
	cat "$T/last"
	has_line "$T/last" " refuse id=[0-9]+ client=127\\.0\\.0\\.1:[0-9]+ reason=$reason( |\$)"
}

# no_bridge: after rejects, no bridge was opened and the backend got
# nothing.
no_bridge() {
	no_line "$PROXY_LOG" ' open id='
	got_nothing
}

# ---- --accept-proxy: the reference's vectors ----

@test "v1 TCP4 127.0.0.1:1234 -> 127.0.0.2:80 is accepted: client=127.0.0.1:1234, the payload after it relayed" {
	accepted "$(ascii $'PROXY TCP4 127.0.0.1 127.0.0.2 1234 80\r\n')" \
	    '127\.0\.0\.1:1234'
}

@test "v1 TCP6 [::1]:1234 -> [::2]:80 is accepted: client=[::1]:1234" {
	accepted "$(ascii $'PROXY TCP6 ::1 ::2 1234 80\r\n')" '\[::1\]:1234'
}

@test "v1 UNKNOWN, bare or with addresses after it, means the real peer and no via=" {
	accepted "$(ascii $'PROXY UNKNOWN\r\n')" ''
	accepted "$(ascii $'PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n')" ''
}

@test "a v1 line of exactly 107 bytes is accepted" {
	local line
	line="PROXY UNKNOWN $(printf 'x%.0s' $(seq 91))"$'\r\n'
	[ "${#line}" -eq 107 ]
	accepted "$(ascii "$line")" ''
}

@test "v2 TCP4 127.0.0.1:1234 -> 127.0.0.2:80 is accepted: client=127.0.0.1:1234" {
	accepted "$SIG 21 11 00 0c 7f000001 7f000002 04d2 0050" \
	    '127\.0\.0\.1:1234'
}

@test "v2 TCP4 with a CRC32C TLV that verifies is accepted" {
	accepted "$SIG 21 11 00 13 7f000001 7f000002 04d2 0050 03 0004 7226e9cd" \
	    '127\.0\.0\.1:1234'
}

@test "v2 TCP6 [::1]:1234 -> [::2]:80 is accepted: client=[::1]:1234" {
	accepted "$SIG 21 21 00 24 $(zeros 15)01 $(zeros 15)02 04d2 0050" \
	    '\[::1\]:1234'
}

@test "v2 LOCAL without addresses means the real peer and no via=" {
	accepted "$SIG 20 00 00 00" ''
}

@test "v2 TCP4 192.0.2.1:123 -> 192.0.2.2:5678 is accepted: client=192.0.2.1:123" {
	accepted "$SIG 21 11 00 0c c0000201 c0000202 007b 162e" \
	    '192\.0\.2\.1:123'
}

@test "v2 LOCAL with family 11 and only TLVs (a cloud health check, 100 bytes) is accepted with the real peer" {
	accepted "$SIG 20 11 00 54 03 0004 bce5951f 04 004a $(zeros 74)" ''
}

@test "v2 TCP4 with an AUTHORITY TLV is accepted: client=127.0.0.1:42" {
	accepted "$SIG 21 11 00 14 7f000001 7f000001 002a 0539 02 0005 $(ascii 12345)" \
	    '127\.0\.0\.1:42'
}

@test "8 bytes after the AUTHORITY header's 16 + len are payload: they reach the backend" {
	local header extra
	header="$SIG 21 11 00 14 7f000001 7f000001 002a 0539 02 0005 $(ascii 12345)"
	extra="02 0005 $(ascii 54321)"
	start_recorder
	start_proxy --accept-proxy 127.0.0.1 0 127.0.0.1 "$REC_PORT"
	send_hex "$PROXY_PORT" "$header" "$extra"
	received "$extra"
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 .* up=8 '
	has_line "$PROXY_LOG" ' open id=1 client=127\.0\.0\.1:42 via=127\.0\.0\.1:[0-9]+ '
}

@test "a v2 header followed at once by 1 MiB of payload: all of it, and only it, reaches the backend" {
	start_recorder
	start_proxy --accept-proxy 127.0.0.1 0 127.0.0.1 "$REC_PORT"
	head -c 1048576 /dev/urandom >"$T/big"
	{
		hex_bytes "$SIG 21 11 00 0c c0000201 c0000202 007b 162e"
		cat "$T/big"
	} | socat -u - "TCP:127.0.0.1:$PROXY_PORT"
	wait_for 10 cmp -s "$T/big" "$REC_FILE"
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 .* up=1048576 '
}

# ---- --accept-proxy: the reference's rejects, and more ----

@test "v2 version nibbles other than 2 are refused with reason=proxy-version" {
	proxy_for_rejects
	refused proxy-version "$SIG 13 11 00 0c c0000201 c0000202 007b 162e"
	refused proxy-version "$SIG 11 11 00 0c c0000201 c0000202 007b 162e"
	refused proxy-version "$SIG 31 11 00 0c c0000201 c0000202 007b 162e"
	no_bridge
}

@test "v2 command 3 is refused with reason=proxy-command" {
	proxy_for_rejects
	refused proxy-command "$SIG 23 11 00 0c c0000201 c0000202 007b 162e"
	no_bridge
}

@test "v2 family 41 is refused with reason=proxy-family" {
	proxy_for_rejects
	refused proxy-family "$SIG 21 41 00 0c c0000201 c0000202 007b 162e"
	no_bridge
}

@test "v2 PROXY with len shorter than the address block is refused with reason=proxy-length" {
	proxy_for_rejects
	refused proxy-length "$SIG 21 12 00 00"
	refused proxy-length "$SIG 21 11 00 08 c0000201 c0000202"
	refused proxy-length "$SIG 21 21 00 0c c0000201 c0000202 007b 162e"
	no_bridge
}

@test "a v2 TLV whose length runs past 16 + len is refused with reason=proxy-tlv" {
	proxy_for_rejects
	refused proxy-tlv "$SIG 21 11 00 0f c0000201 c0000202 007b 162e 04 0005"
	no_bridge
}

@test "v2 TLVs that end one byte short of 16 + len are refused with reason=proxy-tlv" {
	proxy_for_rejects
	refused proxy-tlv "$SIG 21 11 00 10 c0000201 c0000202 007b 162e 04 0000 04"
	no_bridge
}

@test "a v2 CRC32C that does not verify is refused with reason=proxy-crc" {
	proxy_for_rejects
	refused proxy-crc "$SIG 21 11 00 13 7f000001 7f000002 04d2 0050 03 0004 7226e9ce"
	# A CRC32C TLV must be 4 bytes.
	refused 'proxy-(tlv|crc)' "$SIG 21 11 00 12 7f000001 7f000002 04d2 0050 03 0003 7226e9"
	no_bridge
}

@test "neither 'PROXY ' nor the v2 signature is refused with reason=proxy-signature" {
	proxy_for_rejects
	refused proxy-signature "$(ascii $'GET / HTTP/1.0\r\n\r\n')"
	refused proxy-signature "$(ascii $'PROXZ TCP4 127.0.0.1 127.0.0.2 1234 80\r\n')"
	refused proxy-signature "0d0a0d0a000d0a515549540b 21 11 00 0c c0000201 c0000202 007b 162e"
	no_bridge
}

@test "malformed v1 lines are refused with reason=proxy-syntax" {
	proxy_for_rejects
	refused proxy-syntax "$(ascii $'PROXY TCP4 127.0.0.1 127.0.0.2 1234\r\n')"
	# A lone LF.
	refused proxy-syntax "$(ascii $'PROXY TCP4 127.0.0.1 127.0.0.2 1234 80\n')"
	refused proxy-syntax "$(ascii $'PROXY TCP4 127.0.0.1 127.0.0.2 1234 65536\r\n')"
	refused proxy-syntax "$(ascii $'PROXY TCP4 ::1 ::2 1234 80\r\n')"
	refused proxy-syntax "$(ascii $'PROXY TCP4 127.0.0.1 127.0.0.256 1234 80\r\n')"
	refused proxy-syntax "$(ascii $'PROXY TCP6 127.0.0.1 127.0.0.2 1234 80\r\n')"
	refused proxy-syntax "$(ascii $'PROXY  TCP4 127.0.0.1 127.0.0.2 1234 80\r\n')"
	no_bridge
}

@test "a v1 line with no CRLF within 107 bytes is refused with reason=proxy-too-long" {
	local line
	proxy_for_rejects
	line="PROXY UNKNOWN $(printf 'x%.0s' $(seq 92))"$'\r\n'
	[ "${#line}" -eq 108 ]
	refused proxy-too-long "$(ascii "$line")"
	refused proxy-too-long "$(ascii "PROXY $(printf 'x%.0s' $(seq 200))")"
	no_bridge
}

@test "a v2 header bigger than the buffer is refused with reason=proxy-too-long" {
	proxy_for_rejects
	refused proxy-too-long "$SIG 21 11 ff ff c0000201 c0000202 007b 162e"
	no_bridge
}

@test "with -b 1k, a v2 header of 16 + 2048 bytes is bigger than the buffer: reason=proxy-too-long; the default buffer takes it" {
	local header
	header="$SIG 21 11 08 00 c0000201 c0000202 007b 162e 04 07f1 $(zeros 2033)"
	proxy_for_rejects -b 1k
	refused proxy-too-long "$header"
	no_bridge
	accepted "$header" '192\.0\.2\.1:123'
}

@test "without --accept-proxy a PROXY header is nobody's business: it reaches the backend as payload" {
	start_recorder
	start_proxy 127.0.0.1 0 127.0.0.1 "$REC_PORT"
	send_hex "$PROXY_PORT" "$SIG 21 11 00 0c c0000201 c0000202 007b 162e" "$PAYLOAD"
	received "$SIG 21 11 00 0c c0000201 c0000202 007b 162e" "$PAYLOAD"
	wait_for 10 has_line "$PROXY_LOG" ' open id=1 client=127\.0\.0\.1:[0-9]+ server='
	no_line "$PROXY_LOG" '192\.0\.2\.1'
}

# ---- --accept-proxy: timing, trust, access ----

@test "a header split over four writes with pauses is accepted, and nothing reaches the backend before it is whole" {
	local part
	start_recorder
	start_proxy --accept-proxy 127.0.0.1 0 127.0.0.1 "$REC_PORT"
	mkfifo "$T/in"
	SPAWN_STDIN=$T/in spawn single slow socat -u - \
	    "TCP:127.0.0.1:$PROXY_PORT"
	exec 4>"$T/in"
	for part in "$SIG" "21 11 00" "0c c0000201 c000" "0202 007b"; do
		hex_bytes "$part" >&4
		observe_for 0.2
		no_line "$PROXY_LOG" ' open id='
		got_nothing
	done
	hex_bytes "162e $PAYLOAD" >&4
	exec 4>&-
	received "$PAYLOAD"
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	has_line "$PROXY_LOG" ' open id=1 client=192\.0\.2\.1:123 via=127\.0\.0\.1:[0-9]+ '
}

@test "an incomplete header is closed after --proxy-timeout 0.5 with reason=proxy-timeout" {
	local start elapsed
	start_recorder
	start_proxy --accept-proxy --proxy-timeout 0.5 127.0.0.1 0 127.0.0.1 \
	    "$REC_PORT"
	mkfifo "$T/in"
	start=$(now_ms)
	SPAWN_STDIN=$T/in spawn single slow socat - "TCP:127.0.0.1:$PROXY_PORT"
	exec 4>"$T/in"
	printf 'PROXY TCP4 127.0.0.1 ' >&4
	wait_for 5 has_line "$PROXY_LOG" ' refuse id=1 client=127\.0\.0\.1:[0-9]+ reason=proxy-timeout'
	elapsed=$(($(now_ms) - start))
	echo "refused after $elapsed ms"
	[ "$elapsed" -ge 400 ]
	[ "$elapsed" -lt 3000 ]
	# The proxy closed the client: socat saw EOF and ended.
	wait_for 5 is_gone "$SPAWNED"
	got_nothing
}

@test "a v2 header that stops after its fixed part times out too" {
	start_recorder
	start_proxy --accept-proxy --proxy-timeout 0.5 127.0.0.1 0 127.0.0.1 \
	    "$REC_PORT"
	mkfifo "$T/in"
	SPAWN_STDIN=$T/in spawn single slow socat - "TCP:127.0.0.1:$PROXY_PORT"
	exec 4>"$T/in"
	hex_bytes "$SIG 21 11 00 0c c0000201" >&4
	wait_for 5 has_line "$PROXY_LOG" ' refuse id=1 client=127\.0\.0\.1:[0-9]+ reason=proxy-timeout'
	got_nothing
}

@test "--proxy-from 10.0.0.0/8 refuses a header from loopback with reason=proxy-untrusted; 127.0.0.0/8 trusts it" {
	proxy_for_rejects --proxy-from 10.0.0.0/8
	refused proxy-untrusted "$SIG 21 11 00 0c c0000201 c0000202 007b 162e" "$PAYLOAD"
	no_bridge
	PROXY_OPTS="--proxy-from 10.0.0.0/8 --proxy-from 127.0.0.0/8" \
	    accepted "$SIG 21 11 00 0c c0000201 c0000202 007b 162e" \
	    '192\.0\.2\.1:123'
}

@test "an empty connection (connect, close) logs no refuse or close line and leaves no descriptor behind" {
	local fds
	need_proc
	start_recorder
	start_proxy --accept-proxy 127.0.0.1 0 127.0.0.1 "$REC_PORT"
	fds=$(fd_count "$PROXY_PID")
	socat -u /dev/null "TCP:127.0.0.1:$PROXY_PORT"
	# Closed at the EOF, long before the 5 s header timeout.
	wait_for 3 eval '[ "$(fd_count "$PROXY_PID")" -le "$fds" ]'
	send_hex "$PROXY_PORT" "$SIG 21 11 00 0c c0000201 c0000202 007b 162e" "$PAYLOAD"
	received "$PAYLOAD"
	wait_for 10 has_line "$PROXY_LOG" ' close id=[0-9]+ client=192\.0\.2\.1:123 '
	cat "$PROXY_LOG"
	no_line "$PROXY_LOG" ' refuse '
	no_line "$PROXY_LOG" 'error'
	[ "$(count_lines "$PROXY_LOG" ' close id=')" -eq 1 ]
	[ "$(count_lines "$PROXY_LOG" ' open id=')" -eq 1 ]
}

@test "-d applies to the header's address: reason=denied for 192.0.2.1, while loopback peers get through" {
	proxy_for_rejects -d 192.0.2.0/24
	send_hex "$PROXY_PORT" "$SIG 21 11 00 0c c0000201 c0000202 007b 162e" "$PAYLOAD"
	wait_for 10 has_line "$PROXY_LOG" ' refuse id=1 client=192\.0\.2\.1:123 (via=[^ ]+ )?reason=denied'
	no_bridge
	# The same proxy admits another address from the same real peer.
	send_hex "$PROXY_PORT" "$(ascii $'PROXY TCP4 198.51.100.7 192.0.2.2 4000 80\r\n')" "$PAYLOAD"
	received "$PAYLOAD"
	wait_for 10 has_line "$PROXY_LOG" ' open id=2 client=198\.51\.100\.7:4000 via=127\.0\.0\.1:'
}

@test "-a applies to the header's address: a loopback peer carrying 192.0.2.1 is admitted, one carrying 198.51.100.7 is not" {
	proxy_for_rejects -a 192.0.2.0/24
	send_hex "$PROXY_PORT" "$(ascii $'PROXY TCP4 198.51.100.7 192.0.2.2 4000 80\r\n')" "$PAYLOAD"
	wait_for 10 has_line "$PROXY_LOG" ' refuse id=1 client=198\.51\.100\.7:4000 (via=[^ ]+ )?reason=not-allowed'
	no_bridge
	send_hex "$PROXY_PORT" "$SIG 21 11 00 0c c0000201 c0000202 007b 162e" "$PAYLOAD"
	received "$PAYLOAD"
	wait_for 10 has_line "$PROXY_LOG" ' open id=2 client=192\.0\.2\.1:123 via=127\.0\.0\.1:'
}

@test "--max-per-source counts the header's address, not the real peer" {
	start_backend echo
	start_proxy --accept-proxy --max-per-source 1 127.0.0.1 0 127.0.0.1 \
	    "$BACKEND_PORT"
	# One bridge for 192.0.2.1, held open.
	mkfifo "$T/in"
	SPAWN_STDIN=$T/in spawn single held socat - "TCP:127.0.0.1:$PROXY_PORT"
	exec 4>"$T/in"
	hex_bytes "$SIG 21 11 00 0c c0000201 c0000202 007b 162e $PAYLOAD" >&4
	wait_for 10 grep -q payload "$T/held.out"
	# A second for 192.0.2.1 from the same peer: one too many.
	send_hex "$PROXY_PORT" "$SIG 21 11 00 0c c0000201 c0000202 007c 162e" "$PAYLOAD"
	wait_for 10 has_line "$PROXY_LOG" ' refuse id=2 client=192\.0\.2\.1:124 (via=[^ ]+ )?reason=max-per-source'
	# One for 192.0.2.9 from the same peer: its first.
	send_hex "$PROXY_PORT" "$(ascii $'PROXY TCP4 192.0.2.9 192.0.2.2 999 80\r\n')" "$PAYLOAD"
	wait_for 10 has_line "$PROXY_LOG" ' open id=3 client=192\.0\.2\.9:999 via=127\.0\.0\.1:'
	[ "$(count_lines "$PROXY_LOG" ' refuse ')" -eq 1 ]
}

# ---- --send-proxy ----

# client_port: the client's port in the open line of bridge 1.
client_port() {
	sed -n 's/.* open id=1 client=[^ ]*:\([0-9][0-9]*\) .*/\1/p' "$PROXY_LOG"
}

# send_proxy_to_recorder VERSION HOST ADDRESS: a recorder behind
# tcpproxy --send-proxy VERSION listening on HOST port 0; one client
# (socat to ADDRESS, in which PORT stands for the proxy's) sends
# "payload\n".  Sets CPORT from the open line.
send_proxy_to_recorder() {
	local addr=$3
	start_recorder
	start_proxy --send-proxy "$1" "$2" 0 127.0.0.1 "$REC_PORT"
	printf 'payload\n' | socat -u - "${addr/PORT/$PROXY_PORT}"
	wait_for 10 has_line "$PROXY_LOG" ' open id=1 client='
	CPORT=$(client_port)
	[ -n "$CPORT" ]
}

@test "--send-proxy v1: 'PROXY TCP4 client proxy cport pport' then the payload, byte for byte" {
	send_proxy_to_recorder v1 127.0.0.1 TCP:127.0.0.1:PORT,bind=127.0.0.5
	has_line "$PROXY_LOG" ' open id=1 client=127\.0\.0\.5:[0-9]+ '
	received "$(ascii "PROXY TCP4 127.0.0.5 127.0.0.1 $CPORT $PROXY_PORT"$'\r\n')" "$PAYLOAD"
}

@test "--send-proxy v2: signature, 21 11 00 0c, addresses, ports, then the payload, byte for byte" {
	send_proxy_to_recorder v2 127.0.0.1 TCP:127.0.0.1:PORT,bind=127.0.0.5
	has_line "$PROXY_LOG" ' open id=1 client=127\.0\.0\.5:[0-9]+ '
	received "$SIG 21 11 00 0c 7f000005 7f000001 $(port_hex "$CPORT") $(port_hex "$PROXY_PORT")" "$PAYLOAD"
}

@test "--send-proxy v1 and v2 for an IPv6 client: TCP6 and 21 21 00 24" {
	need_ipv6
	send_proxy_to_recorder v1 ::1 'TCP6:[::1]:PORT'
	has_line "$PROXY_LOG" ' open id=1 client=\[::1\]:[0-9]+ '
	received "$(ascii "PROXY TCP6 ::1 ::1 $CPORT $PROXY_PORT"$'\r\n')" "$PAYLOAD"
	send_proxy_to_recorder v2 ::1 'TCP6:[::1]:PORT'
	has_line "$PROXY_LOG" ' open id=1 client=\[::1\]:[0-9]+ '
	received "$SIG 21 21 00 24 $(zeros 15)01 $(zeros 15)01 $(port_hex "$CPORT") $(port_hex "$PROXY_PORT")" "$PAYLOAD"
}

@test "--send-proxy v1 from a Unix socket listener: 'PROXY UNKNOWN', then the payload" {
	start_recorder
	start_unix_proxy "$T/l.sock" --send-proxy v1 "$T/l.sock" 127.0.0.1 \
	    "$REC_PORT"
	printf 'payload\n' | socat -u - "UNIX-CONNECT:$T/l.sock"
	received "$(ascii $'PROXY UNKNOWN\r\n')" "$PAYLOAD"
}

@test "--send-proxy v2 from a Unix socket listener: a well-formed v2 header (16 + len bytes), then the payload" {
	local len
	start_recorder
	start_unix_proxy "$T/l.sock" --send-proxy v2 "$T/l.sock" 127.0.0.1 \
	    "$REC_PORT"
	printf 'payload\n' | socat -u - "UNIX-CONNECT:$T/l.sock"
	wait_for 10 eval 'tail -c 8 "$REC_FILE" 2>/dev/null | grep -q payload'
	od -An -v -tx1 "$REC_FILE"
	[ "$(head -c 12 "$REC_FILE" | od -An -v -tx1 | tr -d ' \n')" = "$SIG" ]
	# Version 2; LOCAL, or PROXY with family UNSPEC or UNIX.
	[[ $(head -c 14 "$REC_FILE" | tail -c 2 | od -An -tx1 | tr -d ' \n') =~ ^(20..|2100|213[12])$ ]]
	len=$((16#$(head -c 16 "$REC_FILE" | tail -c 2 | od -An -tx1 | tr -d ' \n')))
	[ "$(wc -c <"$REC_FILE")" -eq $((16 + len + 8)) ]
}

@test "a retry to a second backend after a refused connect sends it one whole header" {
	local closed cport
	start_backend closed
	closed=$BACKEND_PORT
	start_recorder
	start_proxy --send-proxy v1 127.0.0.1 0 127.0.0.1 "$closed" 127.0.0.1 \
	    "$REC_PORT"
	printf 'payload\n' | socat -u - "TCP:127.0.0.1:$PROXY_PORT,bind=127.0.0.5"
	wait_for 10 has_line "$PROXY_LOG" " close id=1 .*backend=127\\.0\\.0\\.1:$REC_PORT( |\$)"
	cport=$(client_port)
	[ -n "$cport" ]
	received "$(ascii "PROXY TCP4 127.0.0.5 127.0.0.1 $cport $PROXY_PORT"$'\r\n')" "$PAYLOAD"
}

@test "--accept-proxy with --send-proxy v1 passes the header's client on" {
	start_recorder
	start_proxy --accept-proxy --send-proxy v1 127.0.0.1 0 127.0.0.1 \
	    "$REC_PORT"
	send_hex "$PROXY_PORT" "$SIG 21 11 00 0c c0000201 c0000202 007b 162e" "$PAYLOAD"
	wait_for 10 eval 'grep -q payload "$REC_FILE"'
	od -c "$REC_FILE"
	head -n 1 "$REC_FILE" >"$T/line"
	# The destination: the header's own, or the proxy's listener.
	has_line "$T/line" "^PROXY TCP4 192\\.0\\.2\\.1 (192\\.0\\.2\\.2 123 5678|127\\.0\\.0\\.1 123 $PROXY_PORT)"$'\r$'
	[ "$(sed -n 2p "$REC_FILE")" = payload ]
	[ "$(wc -l <"$REC_FILE")" -eq 2 ]
}

@test "--accept-proxy with --send-proxy v2: a LOCAL header in sends the real peer on" {
	local cport
	start_recorder
	start_proxy --accept-proxy --send-proxy v2 127.0.0.1 0 127.0.0.1 \
	    "$REC_PORT"
	hex_bytes "$SIG 20 00 00 00" "$PAYLOAD" |
	    socat -u - "TCP:127.0.0.1:$PROXY_PORT,bind=127.0.0.5"
	wait_for 10 has_line "$PROXY_LOG" ' open id=1 client=127\.0\.0\.5:[0-9]+ server='
	cport=$(client_port)
	received "$SIG 21 11 00 0c 7f000005 7f000001 $(port_hex "$cport") $(port_hex "$PROXY_PORT")" "$PAYLOAD"
}

@test "a health check with --send-proxy v2 sends the LOCAL header" {
	start_recorder
	start_proxy --send-proxy v2 --health-check 0.2 127.0.0.1 0 127.0.0.1 \
	    "$REC_PORT"
	received "0d0a0d0a000d0a515549540a20000000"
}

@test "a health check with --send-proxy v1 sends 'PROXY UNKNOWN'" {
	start_recorder
	start_proxy --send-proxy v1 --health-check 0.2 127.0.0.1 0 127.0.0.1 \
	    "$REC_PORT"
	received "$(ascii $'PROXY UNKNOWN\r\n')"
}

@test "bad --send-proxy, --proxy-timeout and --proxy-from values are usage errors naming them" {
	bad_usage "'v3'" --send-proxy v3 127.0.0.1 0 127.0.0.1 80
	bad_usage "'x'" --proxy-timeout x --accept-proxy 127.0.0.1 0 127.0.0.1 80
	bad_usage "'10.0.0.0/33'" --proxy-from 10.0.0.0/33 --accept-proxy 127.0.0.1 0 127.0.0.1 80
}
