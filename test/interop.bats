#!/usr/bin/env bats
# tcpproxy among real programs on loopback (issue 10): haproxy and nginx
# on both sides of the PROXY protocol, TLS routing by server name with
# openssl s_server/s_client and curl, Unix sockets with curl, python3's
# http.server and nginx, and keepalive as ss sees it.  .ci/run installs
# the programs; a test skips, saying which, where one is missing.

load helper

# ---- haproxy ----

# web_haproxy: an HTTP frontend on WEB_PORT (fresh) that answers every
# request with "SRC:SPORT DST:DPORT" as it saw them and logs
# "web SRC:SPORT -> DST:DPORT"; WEB_BIND is added to its bind line
# (accept-proxy).
web_haproxy() {
	WEB_PORT=$(free_port)
	haproxy_head
	cat >>"$HAPROXY_CFG" <<EOF
frontend web
	mode http
	bind 127.0.0.1:$WEB_PORT ${WEB_BIND:-}
	log-format "web %ci:%cp -> %fi:%fp"
	http-request return status 200 content-type text/plain lf-string "%[src]:%[src_port] %[dst]:%[dst_port]\n"
EOF
	SERVER_PORTS=("$WEB_PORT")
}

# lb_haproxy: a TCP frontend on LB_PORT (fresh) in front of
# 127.0.0.1:LB_TO with LB_SEND (send-proxy, send-proxy-v2) on its
# server line, logging "lb SRC:SPORT via BACKEND_SRC:BACKEND_SPORT".
lb_haproxy() {
	LB_PORT=$(free_port)
	haproxy_head tcp
	cat >>"$HAPROXY_CFG" <<EOF
listen lb
	bind 127.0.0.1:$LB_PORT
	log-format "lb %ci:%cp via %bi:%bp"
	server tcpproxy 127.0.0.1:$LB_TO $LB_SEND
EOF
	SERVER_PORTS=("$LB_PORT")
}

# curl_from_5 PORT: GETs http://127.0.0.1:PORT/ from 127.0.0.5; sets
# BODY and LPORT (curl's local port).
curl_from_5() {
	run curl -sS --max-time 10 --interface 127.0.0.5 \
	    -w '\nlport=%{local_port}\n' "http://127.0.0.1:$1/"
	echo "$output"
	[ "$status" -eq 0 ]
	BODY=${lines[0]}
	LPORT=${lines[1]#lport=}
	[ -n "$LPORT" ]
}

# behind_tcpproxy VERSION: haproxy accept-proxy behind tcpproxy
# --send-proxy VERSION sees curl's own address and port, and the address
# curl connected to; tcpproxy logs the same client.
behind_tcpproxy() {
	need_cmd haproxy curl
	WEB_BIND=accept-proxy start_haproxy web_haproxy web
	start_proxy --send-proxy "$1" 127.0.0.1 0 127.0.0.1 "$WEB_PORT"
	curl_from_5 "$PROXY_PORT"
	[ "$BODY" = "127.0.0.5:$LPORT 127.0.0.1:$PROXY_PORT" ]
	wait_for 10 has_line "$HAPROXY_OUT" '^web '
	cat "$HAPROXY_OUT"
	has_line "$HAPROXY_OUT" "^web 127\\.0\\.0\\.5:$LPORT -> 127\\.0\\.0\\.1:$PROXY_PORT\$"
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	has_line "$PROXY_LOG" " open id=1 client=127\\.0\\.0\\.5:$LPORT server=127\\.0\\.0\\.1:$WEB_PORT"
}

@test "haproxy accept-proxy behind tcpproxy --send-proxy v1 sees and logs the client's own address" {
	behind_tcpproxy v1
}

@test "haproxy accept-proxy behind tcpproxy --send-proxy v2 sees and logs the client's own address" {
	behind_tcpproxy v2
}

# in_front_of_tcpproxy SEND [TCPPROXY OPTIONS...]: haproxy SEND in
# front of tcpproxy --accept-proxy OPTIONS in front of web_haproxy (with
# WEB_BIND); tcpproxy logs curl's address as client=, and haproxy's own
# (the one haproxy logs) as via=.
in_front_of_tcpproxy() {
	local send=$1 via
	shift
	need_cmd haproxy curl
	start_haproxy web_haproxy web
	start_proxy --accept-proxy "$@" 127.0.0.1 0 127.0.0.1 "$WEB_PORT"
	LB_TO=$PROXY_PORT LB_SEND=$send start_haproxy lb_haproxy lb
	curl_from_5 "$LB_PORT"
	wait_for 10 has_line "$T/lb.out" '^lb '
	cat "$T/lb.out" "$T/web.out"
	has_line "$T/lb.out" "^lb 127\\.0\\.0\\.5:$LPORT via 127\\.0\\.0\\.1:[0-9]+\$"
	via=$(sed -n 's/^lb .* via //p' "$T/lb.out")
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	cat "$PROXY_LOG"
	has_line "$PROXY_LOG" " open id=1 client=127\\.0\\.0\\.5:$LPORT via=${via//./\\.} server=127\\.0\\.0\\.1:$WEB_PORT"
	has_line "$PROXY_LOG" " close id=1 client=127\\.0\\.0\\.5:$LPORT via=${via//./\\.} "
}

@test "haproxy send-proxy in front of tcpproxy --accept-proxy: tcpproxy logs the client's address, via= haproxy's" {
	in_front_of_tcpproxy send-proxy
	# Without --send-proxy the server behind sees tcpproxy.
	[[ $BODY == "127.0.0.1:"*" 127.0.0.1:$WEB_PORT" ]]
}

@test "haproxy send-proxy-v2 in front of tcpproxy --accept-proxy: tcpproxy logs the client's address, via= haproxy's" {
	in_front_of_tcpproxy send-proxy-v2
}

@test "haproxy send-proxy-v2, tcpproxy --accept-proxy --send-proxy v1, haproxy accept-proxy: the last one sees the client" {
	WEB_BIND=accept-proxy in_front_of_tcpproxy send-proxy-v2 --send-proxy v1
	[[ $BODY == "127.0.0.5:$LPORT "* ]]
	has_line "$T/web.out" "^web 127\\.0\\.0\\.5:$LPORT -> "
}

@test "haproxy's health checks with send-proxy-v2 (LOCAL headers) pass through tcpproxy --accept-proxy without a refusal" {
	need_cmd haproxy
	start_backend echo
	start_proxy --accept-proxy 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	LB_TO=$PROXY_PORT LB_SEND="send-proxy-v2 check inter 100ms" \
	    start_haproxy lb_haproxy lb
	# LOCAL: the real peer, haproxy's checking connection, no via=.
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " close id=")" -ge 3 ]'
	cat "$PROXY_LOG"
	has_line "$PROXY_LOG" ' open id=1 client=127\.0\.0\.1:[0-9]+ server='
	no_line "$PROXY_LOG" ' via='
	no_line "$PROXY_LOG" ' refuse '
	no_line "$T/lb.err" 'is DOWN'
}

@test "curl --haproxy-protocol to tcpproxy --accept-proxy: its v1 header is taken, the request relayed" {
	web_files
	start_proxy --accept-proxy 127.0.0.1 0 127.0.0.1 "$HTTP_PORT"
	run curl -sS --max-time 10 --haproxy-protocol --interface 127.0.0.5 \
	    -w '\nlport=%{local_port}\n' "http://127.0.0.1:$PROXY_PORT/hello.txt"
	echo "$output"
	[ "$status" -eq 0 ]
	[ "${lines[0]}" = "hello from python over tcp" ]
	LPORT=${lines[1]#lport=}
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	has_line "$PROXY_LOG" " open id=1 client=127\\.0\\.0\\.5:$LPORT via=127\\.0\\.0\\.5:$LPORT server="
}

# ---- nginx ----

# stream_nginx: nginx on NGX_PORT (fresh) with proxy_protocol answers
# "ADDR:PORT SERVER_ADDR:SERVER_PORT" from the header it got.
stream_nginx() {
	NGX_PORT=$(free_port)
	nginx_conf
	cat >>"$T/ngx/nginx.conf" <<EOF
stream {
	server {
		listen 127.0.0.1:$NGX_PORT proxy_protocol;
		return "\$proxy_protocol_addr:\$proxy_protocol_port \$proxy_protocol_server_addr:\$proxy_protocol_server_port\n";
	}
}
EOF
	SERVER_PORTS=("$NGX_PORT")
}

# nginx_behind VERSION: nginx stream proxy_protocol behind tcpproxy
# --send-proxy VERSION reports the client (from 127.0.0.5) and the
# address it connected to.
nginx_behind() {
	local out cport
	need_nginx_stream
	need_cmd socat
	start_nginx stream_nginx
	start_proxy --send-proxy "$1" 127.0.0.1 0 127.0.0.1 "$NGX_PORT"
	out=$(timeout 10 socat -u "TCP:127.0.0.1:$PROXY_PORT,bind=127.0.0.5" -)
	echo "nginx: $out"
	wait_for 10 has_line "$PROXY_LOG" ' open id=1 '
	cport=$(sed -n 's/.* open id=1 client=127\.0\.0\.5:\([0-9]*\) .*/\1/p' \
	    "$PROXY_LOG")
	[ -n "$cport" ]
	[ "$out" = "127.0.0.5:$cport 127.0.0.1:$PROXY_PORT" ]
	no_line "$T/ngx/error.log" 'broken header'
}

@test "nginx stream listen proxy_protocol behind tcpproxy --send-proxy v1 reports the client's address" {
	nginx_behind v1
}

@test "nginx stream listen proxy_protocol behind tcpproxy --send-proxy v2 reports the client's address" {
	nginx_behind v2
}

# ---- --sni ----

# make_cert CN: a self-signed certificate $T/CN.pem with key $T/CN.key.
make_cert() {
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
	    -nodes -subj "/CN=$1" -days 1 -keyout "$T/$1.key" \
	    -out "$T/$1.pem" 2>"$T/req.err" || {
		cat "$T/req.err"
		return 1
	}
}

# tls_server: openssl s_server -www with the certificate of TLS_CN, on a
# fresh port, TLS_PORT.
tls_server() {
	TLS_PORT=$(free_port)
	SERVER_CMD=(openssl s_server -accept "127.0.0.1:$TLS_PORT"
	    -cert "$T/$TLS_CN.pem" -key "$T/$TLS_CN.key" -www -quiet)
	SERVER_PORTS=("$TLS_PORT")
}

# tls_backend CN: a certificate for CN and an s_server with it; sets
# TLS_PORT.
tls_backend() {
	make_cert "$1"
	TLS_CN=$1 start_server "tls-$1" tls_server
}

# cert_via_proxy NAME: prints the CN of the certificate s_client gets
# through the proxy when it asks for NAME ("": no server_name at all).
cert_via_proxy() {
	local sni=(-servername "$1")
	[ -n "$1" ] || sni=(-noservername)
	timeout 10 openssl s_client -connect "127.0.0.1:$PROXY_PORT" \
	    "${sni[@]}" </dev/null 2>/dev/null |
	    sed -n 's/^subject=.*CN *= *//p'
}

# sni_proxy: s_servers for a.test, b.test and default.test, and a proxy
# routing a.test and *.b.test to the first two; the default backend is
# the third.
sni_proxy() {
	local a b
	need_cmd openssl
	tls_backend a.test
	a=$TLS_PORT
	tls_backend b.test
	b=$TLS_PORT
	tls_backend default.test
	start_proxy --sni "a.test=127.0.0.1:$a" --sni "*.b.test=127.0.0.1:$b" \
	    127.0.0.1 0 127.0.0.1 "$TLS_PORT"
}

@test "--sni: s_client -servername a.test gets a.test's certificate, x.b.test gets b.test's by *.b.test; the open lines say sni=" {
	sni_proxy
	[ "$(cert_via_proxy a.test)" = a.test ]
	wait_for 10 has_line "$PROXY_LOG" ' open id=1 .* sni=a\.test( |$)'
	[ "$(cert_via_proxy x.b.test)" = b.test ]
	wait_for 10 has_line "$PROXY_LOG" ' open id=2 .* sni=x\.b\.test( |$)'
	[ "$(cert_via_proxy deep.x.b.test)" = b.test ]
	cat "$PROXY_LOG"
}

@test "--sni: no match, the bare domain of a wildcard, and no server_name at all go to the service's own backend" {
	sni_proxy
	[ "$(cert_via_proxy c.test)" = default.test ]
	wait_for 10 has_line "$PROXY_LOG" ' open id=1 .* sni=c\.test( |$)'
	[ "$(cert_via_proxy b.test)" = default.test ]
	[ "$(cert_via_proxy '')" = default.test ]
	wait_for 10 has_line "$PROXY_LOG" ' open id=3 '
	cat "$PROXY_LOG"
	grep ' open id=3 ' "$PROXY_LOG" >"$T/open3"
	no_line "$T/open3" ' sni='
}

@test "--sni: curl https://a.test and https://y.b.test through the proxy get each its certificate and a 200" {
	need_cmd curl
	sni_proxy
	run curl -skv --max-time 10 -o "$T/a.html" -w '%{http_code}\n' \
	    --resolve "a.test:$PROXY_PORT:127.0.0.1" "https://a.test:$PROXY_PORT/"
	printf '%s\n' "$output" | grep -E 'subject:|^200'
	[ "$status" -eq 0 ]
	[ "${lines[${#lines[@]} - 1]}" = 200 ]
	printf '%s\n' "$output" | grep -Eq '^\*  subject: CN ?= ?a\.test$'
	grep -q 's_server' "$T/a.html"
	run curl -skv --max-time 10 -o /dev/null -w '%{http_code}\n' \
	    --resolve "y.b.test:$PROXY_PORT:127.0.0.1" "https://y.b.test:$PROXY_PORT/"
	[ "$status" -eq 0 ]
	[ "${lines[${#lines[@]} - 1]}" = 200 ]
	printf '%s\n' "$output" | grep -Eq '^\*  subject: CN ?= ?b\.test$'
	wait_for 10 has_line "$PROXY_LOG" ' open id=2 .* sni=y\.b\.test( |$)'
	has_line "$PROXY_LOG" ' open id=1 .* sni=a\.test( |$)'
}

# unix_to_tls: socat on the Unix socket $T/u.sock in front of the
# s_server on UNIX_TO (OpenSSL 3.0's s_server -unix fails in
# getnameinfo).
unix_to_tls() {
	SERVER_CMD=(socat "UNIX-LISTEN:$T/u.sock,fork" "TCP:127.0.0.1:$UNIX_TO")
	SERVER_SOCKETS=("$T/u.sock")
}

@test "--sni routes a name to a Unix socket" {
	local default
	need_cmd openssl socat
	tls_backend default.test
	default=$TLS_PORT
	tls_backend u.test
	UNIX_TO=$TLS_PORT start_server unix-tls unix_to_tls
	start_proxy --sni "u.test=$T/u.sock" 127.0.0.1 0 127.0.0.1 "$default"
	[ "$(cert_via_proxy u.test)" = u.test ]
	[ "$(cert_via_proxy a.test)" = default.test ]
	wait_for 10 has_line "$PROXY_LOG" " close id=1 .*backend=(unix:)?$T/u\.sock( |\$)"
}

# hello_whole FILE: FILE holds at least one whole TLS record (5 bytes of
# header, then as many as its length says).
hello_whole() {
	local n len
	n=$(wc -c <"$1" 2>/dev/null) || return 1
	[ "$n" -ge 5 ] || return 1
	len=$((16#$(head -c 5 "$1" | tail -c 2 | od -An -tx1 | tr -d ' \n')))
	[ "$n" -ge $((5 + len)) ]
}

# capture_hello NAME: s_client's ClientHello for NAME, as a recorder
# got it, in $T/hello.bin.
capture_hello() {
	need_cmd openssl
	start_recorder
	mkfifo "$T/tls-in"
	SPAWN_STDIN=$T/tls-in spawn single s_client openssl s_client \
	    -connect "127.0.0.1:$REC_PORT" -servername "$1"
	exec 4>"$T/tls-in"
	wait_for 10 hello_whole "$REC_FILE"
	exec 4>&-
	kill -TERM "$SPAWNED"
	cp "$REC_FILE" "$T/hello.bin"
}

@test "--sni: s_client's ClientHello, replayed in three writes with pauses, is routed by its name and relayed byte for byte" {
	local a d
	capture_hello a.test
	# A recorder for a.test, one for the rest.
	start_recorder
	a=$RECORDERS
	start_recorder
	d=$RECORDERS
	start_proxy --sni "a.test=127.0.0.1:$(ready_port "$T/rec$a.err")" \
	    127.0.0.1 0 127.0.0.1 "$REC_PORT"
	mkfifo "$T/in"
	SPAWN_STDIN=$T/in spawn single replay socat -u - \
	    "TCP:127.0.0.1:$PROXY_PORT"
	exec 4>"$T/in"
	head -c 3 "$T/hello.bin" >&4
	observe_for 0.2
	tail -c +4 "$T/hello.bin" | head -c 60 >&4
	observe_for 0.2
	# No route yet: nothing connected anywhere.
	no_line "$PROXY_LOG" ' open id='
	no_line "$T/rec$a.err" 'accepting connection'
	no_line "$T/rec$d.err" 'accepting connection'
	tail -c +64 "$T/hello.bin" >&4
	exec 4>&-
	wait_for 10 cmp -s "$T/hello.bin" "$T/rec$a.bin"
	wait_for 10 has_line "$PROXY_LOG" ' open id=1 .* sni=a\.test( |$)'
	no_line "$T/rec$d.err" 'accepting connection'
}

@test "--sni with --send-proxy v1: the routed backend gets the header, then the ClientHello unchanged" {
	local cport
	capture_hello x.b.test
	start_recorder
	start_proxy --send-proxy v1 --sni "*.b.test=127.0.0.1:$REC_PORT" \
	    127.0.0.1 0 127.0.0.1 1
	socat -u "OPEN:$T/hello.bin" "TCP:127.0.0.1:$PROXY_PORT"
	wait_for 10 has_line "$PROXY_LOG" ' open id=1 .* sni=x\.b\.test( |$)'
	cport=$(sed -n 's/.* open id=1 client=127\.0\.0\.1:\([0-9]*\) .*/\1/p' \
	    "$PROXY_LOG")
	{
		printf 'PROXY TCP4 127.0.0.1 127.0.0.1 %s %s\r\n' "$cport" \
		    "$PROXY_PORT"
		cat "$T/hello.bin"
	} >"$T/want.bin"
	wait_for 10 cmp -s "$T/want.bin" "$REC_FILE"
}

@test "haproxy send-proxy-v2 in front of tcpproxy --accept-proxy --sni: the header, then the ClientHello, routed by name" {
	local a
	need_cmd haproxy openssl
	tls_backend a.test
	a=$TLS_PORT
	tls_backend default.test
	start_proxy --accept-proxy --sni "a.test=127.0.0.1:$a" 127.0.0.1 0 \
	    127.0.0.1 "$TLS_PORT"
	LB_TO=$PROXY_PORT LB_SEND=send-proxy-v2 start_haproxy lb_haproxy lb
	run timeout 10 openssl s_client -connect "127.0.0.1:$LB_PORT" \
	    -servername a.test </dev/null
	printf '%s\n' "$output" | grep '^subject='
	printf '%s\n' "$output" | grep -Eq '^subject=.*CN ?= ?a\.test$'
	wait_for 10 has_line "$T/lb.out" '^lb '
	has_line "$PROXY_LOG" ' open id=1 client=127\.0\.0\.1:[0-9]+ via=127\.0\.0\.1:[0-9]+ .*sni=a\.test( |$)'
	# client= is the port haproxy logged for the client.
	has_line "$PROXY_LOG" " open id=1 client=$(sed -n 's/^lb \([^ ]*\) via .*/\1/p' "$T/lb.out" | sed 's/\./\\./g') via="
}

@test "--sni: a client that does not speak TLS goes to the service's own backend, its bytes unchanged" {
	start_backend echo
	start_proxy --sni "a.test=127.0.0.1:1" 127.0.0.1 0 127.0.0.1 \
	    "$BACKEND_PORT"
	run "$CLIENT" -a 30 -n 1 -g 64k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 1" ]
	# A handshake record whose message is not a ClientHello.
	printf '\026\003\001\000\005hello' | socat -u - "TCP:127.0.0.1:$PROXY_PORT"
	wait_for 10 has_line "$PROXY_LOG" ' close id=2 .* up=10 '
	no_line "$PROXY_LOG" 'sni='
	no_line "$PROXY_LOG" '127\.0\.0\.1:1( |$)'
}

@test "--sni: a client that waits for the server is sent to the own backend after --proxy-timeout" {
	local start elapsed
	start_backend source 1k
	start_proxy --sni "a.test=127.0.0.1:1" --proxy-timeout 0.5 127.0.0.1 0 \
	    127.0.0.1 "$BACKEND_PORT"
	start=$(now_ms)
	run "$CLIENT" -a 30 -r 127.0.0.1 "$PROXY_PORT" </dev/null
	elapsed=$(($(now_ms) - start))
	echo "$output; after $elapsed ms"
	[ "$status" -eq 0 ]
	[ "$(printf '%s\n' "$output" | sed -n 's/^recv //p')" = "$(field "$BACKEND_OUT" sent)" ]
	[ "$elapsed" -ge 400 ]
}

# ---- Unix sockets ----

# http_python: python3 -m http.server on HTTP_PORT (fresh) serving
# $T/www.
http_python() {
	HTTP_PORT=$(free_port)
	SERVER_CMD=(python3 -m http.server --bind 127.0.0.1 --directory
	    "$T/www" "$HTTP_PORT")
	SERVER_PORTS=("$HTTP_PORT")
}

# web_files: $T/www/hello.txt and python's http.server for it.
web_files() {
	need_cmd curl python3
	mkdir -p "$T/www"
	echo "hello from python over tcp" >"$T/www/hello.txt"
	start_server http http_python
}

# curl_unix PATH: GETs /hello.txt over the Unix socket PATH.
curl_unix() {
	curl -sS --max-time 10 --unix-socket "$1" http://x/hello.txt
}

@test "curl --unix-socket through tcpproxy L.sock 127.0.0.1 PORT reaches python's http.server" {
	web_files
	start_unix_proxy "$T/l.sock" "$T/l.sock" 127.0.0.1 "$HTTP_PORT"
	[ -S "$T/l.sock" ]
	run curl_unix "$T/l.sock"
	echo "$output"
	[ "$output" = "hello from python over tcp" ]
	wait_for 10 has_line "$T/http.err" '"GET /hello.txt HTTP/1.1" 200'
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
}

@test "the unix: form of a listening socket path works too" {
	web_files
	start_unix_proxy "$T/l.sock" "unix:$T/l.sock" 127.0.0.1 "$HTTP_PORT"
	run curl_unix "$T/l.sock"
	[ "$output" = "hello from python over tcp" ]
}

# unix_nginx: nginx's http server on the Unix socket $T/s.sock.
unix_nginx() {
	nginx_conf
	cat >>"$T/ngx/nginx.conf" <<EOF
http {
	access_log off;
	server {
		listen unix:$T/s.sock;
		location / { return 200 "hello from nginx over unix\n"; }
	}
}
EOF
	SERVER_SOCKETS=("$T/s.sock")
}

@test "tcpproxy 127.0.0.1 0 S.sock in front of nginx on a Unix socket: curl over TCP gets its page, both spellings" {
	need_cmd nginx curl
	start_nginx unix_nginx
	start_proxy 127.0.0.1 0 "$T/s.sock"
	run curl -sS --max-time 10 "http://127.0.0.1:$PROXY_PORT/"
	[ "$output" = "hello from nginx over unix" ]
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 '
	start_proxy 127.0.0.1 0 "unix:$T/s.sock"
	run curl -sS --max-time 10 "http://127.0.0.1:$PROXY_PORT/"
	[ "$output" = "hello from nginx over unix" ]
}

@test "a Unix socket two hops: curl --unix-socket -> tcpproxy -> TCP -> tcpproxy -> nginx's Unix socket" {
	need_cmd nginx curl
	start_nginx unix_nginx
	start_proxy 127.0.0.1 0 "$T/s.sock"
	start_unix_proxy "$T/l.sock" "$T/l.sock" 127.0.0.1 "$PROXY_PORT"
	run curl -sS --max-time 10 --unix-socket "$T/l.sock" http://x/
	[ "$output" = "hello from nginx over unix" ]
}

@test "the listening socket file is removed when tcpproxy ends on SIGTERM" {
	web_files
	start_unix_proxy "$T/l.sock" "$T/l.sock" 127.0.0.1 "$HTTP_PORT"
	[ -S "$T/l.sock" ]
	kill -TERM "$PROXY_PID"
	wait_for 10 is_gone "$PROXY_PID"
	[ ! -e "$T/l.sock" ]
}

@test "a stale socket file left by a killed tcpproxy is replaced on start" {
	web_files
	start_unix_proxy "$T/l.sock" "$T/l.sock" 127.0.0.1 "$HTTP_PORT"
	kill -KILL "$PROXY_PID"
	wait_for 10 is_gone "$PROXY_PID"
	# Left behind, and nothing listens on it.
	[ -S "$T/l.sock" ]
	run curl_unix "$T/l.sock"
	[ "$status" -ne 0 ]
	start_unix_proxy "$T/l.sock" "$T/l.sock" 127.0.0.1 "$HTTP_PORT"
	run curl_unix "$T/l.sock"
	[ "$output" = "hello from python over tcp" ]
}

@test "a socket path another process listens on makes a second tcpproxy fail with exit 1, leaving the first one's socket alone" {
	web_files
	start_unix_proxy "$T/l.sock" "$T/l.sock" 127.0.0.1 "$HTTP_PORT"
	run $LIMIT "$TCPPROXY" "$T/l.sock" 127.0.0.1 "$HTTP_PORT"
	echo "$output"
	[ "$status" -eq 1 ]
	[[ $output == *"$T/l.sock"* ]]
	[ -S "$T/l.sock" ]
	run curl_unix "$T/l.sock"
	[ "$output" = "hello from python over tcp" ]
}

@test "a regular file where the socket should be is left alone: tcpproxy fails with exit 1" {
	echo "precious" >"$T/l.sock"
	run $LIMIT "$TCPPROXY" "$T/l.sock" 127.0.0.1 80
	echo "$output"
	[ "$status" -eq 1 ]
	[[ $output == *"$T/l.sock"* ]]
	[ -f "$T/l.sock" ]
	[ "$(cat "$T/l.sock")" = precious ]
}

@test "a config file's services may listen on a Unix socket and take PROXY headers" {
	web_files
	cat >"$T/unix.conf" <<EOF
--name sock $T/l.sock 127.0.0.1 $HTTP_PORT
--name pp --accept-proxy 127.0.0.1 0 127.0.0.1 $HTTP_PORT
EOF
	start_config "$T/unix.conf"
	wait_for 10 has_line "$PROXY_LOG" "listening on (unix:)?$T/l\\.sock service=sock\$"
	run curl_unix "$T/l.sock"
	[ "$output" = "hello from python over tcp" ]
	run curl -sS --max-time 10 --haproxy-protocol \
	    "http://127.0.0.1:$(service_port "$PROXY_LOG" pp)/hello.txt"
	[ "$output" = "hello from python over tcp" ]
	wait_for 10 has_line "$PROXY_LOG" ' open id=[0-9]+ client=127\.0\.0\.1:[0-9]+ via=127\.0\.0\.1:[0-9]+ .*service=pp$'
}

@test "a Unix socket service survives an unchanged reload and its file goes when a reload removes the service" {
	web_files
	echo "--name sock $T/l.sock 127.0.0.1 $HTTP_PORT" >"$T/r.conf"
	start_config "$T/r.conf"
	reload_proxy "$PROXY_PID" "$PROXY_LOG"
	has_line "$PROXY_LOG" 'reloaded:'
	[ -S "$T/l.sock" ]
	run curl_unix "$T/l.sock"
	[ "$output" = "hello from python over tcp" ]
	echo "--name tcp 127.0.0.1 0 127.0.0.1 $HTTP_PORT" >"$T/r.conf"
	reload_proxy "$PROXY_PID" "$PROXY_LOG"
	wait_for 10 eval '[ ! -e "$T/l.sock" ]'
}

@test "-w 2 workers share a Unix socket listener; the file goes at SIGTERM" {
	local i
	web_files
	start_unix_proxy "$T/l.sock" -w 2 "$T/l.sock" 127.0.0.1 "$HTTP_PORT"
	for i in 1 2 3 4 5 6; do
		run curl_unix "$T/l.sock"
		[ "$output" = "hello from python over tcp" ]
	done
	kill -TERM "$PROXY_PID"
	wait_for 10 is_gone "$PROXY_PID"
	[ ! -e "$T/l.sock" ]
}

@test "--socket-mode sets the listening socket's mode: 0660, 0600" {
	web_files
	start_unix_proxy "$T/a.sock" --socket-mode 0660 "$T/a.sock" 127.0.0.1 \
	    "$HTTP_PORT"
	[ "$(stat -c %a "$T/a.sock")" = 660 ]
	start_unix_proxy "$T/b.sock" --socket-mode 0600 "$T/b.sock" 127.0.0.1 \
	    "$HTTP_PORT"
	[ "$(stat -c %a "$T/b.sock")" = 600 ]
	run curl_unix "$T/a.sock"
	[ "$output" = "hello from python over tcp" ]
}

@test "a socket path longer than sun_path is a clear error, listening or connecting" {
	local long
	long=$T/$(printf 'd%.0s' $(seq 120)).sock
	run $LIMIT "$TCPPROXY" "$long" 127.0.0.1 80
	echo "$output"
	[ "$status" -eq 1 ] || [ "$status" -eq 2 ]
	printf '%s\n' "$output" | grep -q '^tcpproxy: .*[Ll]ong'
	[ ! -e "$long" ]
	run $LIMIT "$TCPPROXY" 127.0.0.1 0 "$long"
	echo "$output"
	[ "$status" -eq 1 ] || [ "$status" -eq 2 ]
	printf '%s\n' "$output" | grep -q '^tcpproxy: .*[Ll]ong'
}

# ---- --keepalive ----

# keepalive_timers PROXY_OPTS...: a bridge held open through tcpproxy
# PROXY_OPTS to an echo backend; sets TIMERS to ss's timer fields
# ("none" where there is none) of the proxy's socket toward the client,
# the proxy's toward the backend, and the client's own.
keepalive_timers() {
	local f
	start_backend echo
	proxy_to_backend "$@"
	mkfifo "$T/in$PROXIES"
	SPAWN_STDIN=$T/in$PROXIES spawn single "held$PROXIES" "$CLIENT" \
	    127.0.0.1 "$PROXY_PORT"
	exec 4>"$T/in$PROXIES"
	echo held >&4
	wait_for 10 grep -q held "$T/held$PROXIES.out"
	ss -Htnoe state established "( sport = :$PROXY_PORT )" >"$T/ss.front"
	ss -Htnoe state established "( dport = :$BACKEND_PORT )" >"$T/ss.back"
	ss -Htnoe state established "( dport = :$PROXY_PORT )" >"$T/ss.client"
	cat "$T/ss.front" "$T/ss.back" "$T/ss.client"
	[ "$(wc -l <"$T/ss.front")" -eq 1 ]
	[ "$(wc -l <"$T/ss.back")" -eq 1 ]
	[ "$(wc -l <"$T/ss.client")" -eq 1 ]
	TIMERS=()
	for f in front back client; do
		TIMERS+=("$(grep -o 'timer:([^)]*)' "$T/ss.$f" || echo none)")
	done
	echo "timers: ${TIMERS[*]}"
	exec 4>&-
}

@test "--keepalive=30: both of the proxy's sockets have a keepalive timer of at most 30 s, the client's none" {
	need_cmd ss
	keepalive_timers --keepalive=30
	if ! "$TCPPROXY" -V | grep -q '^platform:.* keepalive-idle'; then
		# Built without the knobs (-DTCPPROXY_PORTABLE): SO_KEEPALIVE
		# alone, with the system's idle time.
		[[ ${TIMERS[0]} == timer:\(keepalive,* ]]
		[[ ${TIMERS[1]} == timer:\(keepalive,* ]]
		[ "${TIMERS[2]}" = none ]
		return
	fi
	[[ ${TIMERS[0]} =~ ^timer:\(keepalive,([0-9.]+)sec, ]]
	[ "${BASH_REMATCH[1]%.*}" -le 30 ]
	[[ ${TIMERS[1]} =~ ^timer:\(keepalive,([0-9.]+)sec, ]]
	[ "${BASH_REMATCH[1]%.*}" -le 30 ]
	[ "${TIMERS[2]}" = none ]
}

@test "--keepalive without a value sets keepalive too; without it there is none" {
	need_cmd ss
	keepalive_timers --keepalive
	[[ ${TIMERS[0]} == timer:\(keepalive,* ]]
	[[ ${TIMERS[1]} == timer:\(keepalive,* ]]
	keepalive_timers
	[[ ${TIMERS[0]} != timer:\(keepalive,* ]]
	[[ ${TIMERS[1]} != timer:\(keepalive,* ]]
}
