#!/usr/bin/env bats
# -w N: where SO_REUSEPORT balances (Linux), each worker accepts on a
# listening socket of its own that the parent keeps open, so no client
# the kernel queued on one is lost when its worker ends, drains or is
# replaced; elsewhere (and built with -DTCPPROXY_PORTABLE) the workers
# share one.  These read /proc (Linux).

load helper
load options_helper

# listen_inodes PORT: prints the inodes of the TCP sockets (IPv4 and
# IPv6) that listen on PORT, one a line, sorted as comm wants.
listen_inodes() {
	awk -v p="$(printf ':%04X' "$1")" '$4 == "0A" &&
	    substr($2, length($2) - 4) == p { print $10 }' \
	    /proc/net/tcp /proc/net/tcp6 2>/dev/null | sort
}

# socket_inodes PID: prints the inodes of the sockets PID holds, sorted.
socket_inodes() {
	local f
	for f in "/proc/$1/fd/"*; do
		readlink "$f" 2>/dev/null || true
	done | sed -n 's/^socket:\[\([0-9]*\)\]$/\1/p' | sort
}

# held PID PORT: prints the inodes of the sockets listening on PORT that
# PID holds.
held() {
	comm -12 <(socket_inodes "$1") <(listen_inodes "$2")
}

# workers_of PID: prints the children of PID, one a line; from the
# kernel's own list where it keeps one (children_of reads all of /proc).
workers_of() {
	if [ -r "/proc/$1/task/$1/children" ]; then
		tr ' ' '\n' <"/proc/$1/task/$1/children" | grep .
	else
		children_of "$1"
	fi
}

# own_sockets N PORT: the proxy has N workers and PORT N listening
# sockets; the parent holds them all and each worker exactly one, not
# another's.
own_sockets() {
	local n=$1 port=$2 k mine=
	[ "$(listen_inodes "$port" | wc -l)" -eq "$n" ] || return 1
	[ "$(held "$PROXY_PID" "$port" | wc -l)" -eq "$n" ] || return 1
	WORKERS=$(workers_of "$PROXY_PID")
	[ "$(wc -w <<<"$WORKERS")" -eq "$n" ] || return 1
	for k in $WORKERS; do
		[ "$(held "$k" "$port" | wc -l)" -eq 1 ] || return 1
		mine+="$(held "$k" "$port")"$'\n'
	done
	[ "$(sort -u <<<"$mine" | grep -c .)" -eq "$n" ]
}

# one_socket N PORT: the proxy has N workers, PORT one listening socket,
# and the parent and every worker hold it.
one_socket() {
	local n=$1 port=$2 k
	[ "$(listen_inodes "$port" | wc -l)" -eq 1 ] || return 1
	[ "$(held "$PROXY_PID" "$port" | wc -l)" -eq 1 ] || return 1
	WORKERS=$(workers_of "$PROXY_PID")
	[ "$(wc -w <<<"$WORKERS")" -eq "$n" ] || return 1
	for k in $WORKERS; do
		[ "$(held "$k" "$port" | wc -l)" -eq 1 ] || return 1
	done
}

# need_reuseport: skips unless the build gives each worker a socket of
# its own: Linux, and not a -DTCPPROXY_PORTABLE build (-V says which).
need_reuseport() {
	need_proc
	"$TCPPROXY" -V | grep -q '^platform:.* reuseport' ||
	    skip "this build's workers share one socket"
}

# closes_by FILE W: prints how many close lines of FILE worker W logged.
closes_by() {
	count_lines "$1" " close id=[0-9]+ worker=$2 "
}

# served_by_both FILE N SKIP: the close lines of FILE after its first
# SKIP lines number N, and each of the two workers logged at least a
# fifth of them (a hash spreads 200 clients far more evenly than that).
served_by_both() {
	local w1 w2
	wait_for 10 eval "[ \"\$(tail -n +$(($3 + 1)) '$1' |
	    grep -Ec ' close id=')\" -eq $2 ]"
	tail -n +"$(($3 + 1))" "$1" >"$T/since"
	w1=$(closes_by "$T/since" 1)
	w2=$(closes_by "$T/since" 2)
	echo "worker 1: $w1, worker 2: $w2 of $2"
	[ $((w1 + w2)) -eq "$2" ]
	[ "$w1" -ge $(($2 / 5)) ] && [ "$w2" -ge $(($2 / 5)) ]
}

@test "with -w 2 each worker accepts on a socket of its own, the parent keeps both, and 300 clients are served by both" {
	need_reuseport
	start_backend echo
	proxy_to_backend -w 2
	wait_for 10 own_sockets 2 "$PROXY_PORT"
	run "$CLIENT" -a 30 -n 300 -g 1k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 300" ]
	served_by_both "$PROXY_LOG" 300 0
}

@test "with -w 2 no client is lost across reloads: the new workers take the same sockets, and descriptors return to their count" {
	local sockets fds wfds k n i
	need_reuseport
	start_backend echo
	printf -- '127.0.0.1 0 127.0.0.1 %s\n' "$BACKEND_PORT" >"$T/run.conf"
	start_config "$T/run.conf" -w 2
	PROXY_PORT=$(ready_port "$PROXY_LOG")
	wait_for 10 own_sockets 2 "$PROXY_PORT"
	sockets=$(listen_inodes "$PROXY_PORT")
	fds=$(fd_count "$PROXY_PID")
	wfds=$(for k in $WORKERS; do fd_count "$k"; done)
	# Clients all along, while the parent reloads twice.
	spawn single load bash -c 'for i in $(seq 10); do
	    "$1" -a 30 -n 30 -g 1k 127.0.0.1 "$2" || exit 1; done' load \
	    "$CLIENT" "$PROXY_PORT"
	for i in 1 2; do
		wait_for 10 eval "[ \"\$(grep -c '^ok 30\$' '$T/load.out')\" -ge $((i * 3)) ]"
		reload_proxy "$PROXY_PID" "$PROXY_LOG"
		has_line "$PROXY_LOG" '^tcpproxy: reloaded: 1 services, 1 listeners$'
	done
	wait_for 30 is_gone "$SPAWNED"
	cat "$T/load.out"
	[ "$(grep -c '^ok 30$' "$T/load.out")" -eq 10 ]
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " close id=")" -eq 300 ]'
	# The old workers drained and went; the sockets are the same two.
	wait_for 10 own_sockets 2 "$PROXY_PORT"
	[ "$(listen_inodes "$PROXY_PORT")" = "$sockets" ]
	wait_for 10 eval '[ "$(fd_count "$PROXY_PID")" -eq "$fds" ]'
	[ "$(for k in $WORKERS; do fd_count "$k"; done)" = "$wfds" ]
	# And the new generation spreads the clients as the first did.
	n=$(lines_in "$PROXY_LOG")
	run "$CLIENT" -a 30 -n 200 -g 1k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 200" ]
	served_by_both "$PROXY_LOG" 200 "$n"
}

@test "with -w 2 a killed worker is started again on its socket, and the clients that queued on it meanwhile are served" {
	local k rc=0
	need_reuseport
	start_backend echo
	proxy_to_backend -w 2
	wait_for 10 own_sockets 2 "$PROXY_PORT"
	k=$(head -n 1 <<<"$WORKERS")
	kill -KILL "$k"
	# Half of these go to the dead worker's socket and wait there.
	run "$CLIENT" -a 30 -n 200 -g 1k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 200" ]
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: starting worker [12] again$'
	has_line "$PROXY_LOG" "^tcpproxy: worker $k ended with status 137$"
	wait_for 10 own_sockets 2 "$PROXY_PORT"
	served_by_both "$PROXY_LOG" 200 0
	# A worker ended badly: the exit status says so.
	kill -TERM "$PROXY_PID"
	wait_for 20 is_gone "$PROXY_PID"
	wait "$PROXY_PID" || rc=$?
	[ "$rc" -eq 1 ]
}

@test "with -w 2 every TCP address of every service gets a socket per worker, IPv6 too, and a Unix socket is shared" {
	local p4 p6 k pid
	need_reuseport
	need_ipv6
	start_backend echo
	cat >"$T/run.conf" <<EOF
--name four 127.0.0.1 0 127.0.0.1 $BACKEND_PORT
--name six ::1 0 127.0.0.1 $BACKEND_PORT
--name local -H $T/l.sock 127.0.0.1 $BACKEND_PORT
EOF
	start_config "$T/run.conf" -w 2
	p4=$(service_port "$PROXY_LOG" four)
	p6=$(service_port "$PROXY_LOG" six)
	wait_for 10 own_sockets 2 "$p4"
	own_sockets 2 "$p6"
	# One Unix socket, held by the parent and by both workers.
	k=$(awk -v p="$T/l.sock" '$8 == p { print $7 }' /proc/net/unix)
	[ "$(wc -w <<<"$k")" -eq 1 ]
	for pid in "$PROXY_PID" $WORKERS; do
		socket_inodes "$pid" | grep -qx "$k"
	done
	run "$CLIENT" -a 30 -n 100 -g 1k 127.0.0.1 "$p4"
	[ "$output" = "ok 100" ]
	run "$CLIENT" -a 30 -n 100 -g 1k ::1 "$p6"
	[ "$output" = "ok 100" ]
	served_by_both "$PROXY_LOG" 200 0
	if command -v socat >/dev/null; then
		run $LIMIT socat - "UNIX-CONNECT:$T/l.sock" <<<hello
		[ "$output" = hello ]
	fi
}

@test "with -w 2 a fixed port gets a socket per worker, and a port another proxy has fails the start as without -w" {
	local port
	need_reuseport
	start_backend echo
	port=$(free_port)
	start_proxy -w 2 127.0.0.1 "$port" 127.0.0.1 "$BACKEND_PORT"
	wait_for 10 own_sockets 2 "$port"
	# REUSEPORT alone would let it join the first one's sockets.
	start_fails "cannot listen on 127.0.0.1:$port: Address" -w 2 \
	    127.0.0.1 "$port" 127.0.0.1 "$BACKEND_PORT"
	own_sockets 2 "$port"
	run "$CLIENT" -a 30 -n 50 -g 1k 127.0.0.1 "$port"
	[ "$output" = "ok 50" ]
}

@test "with -w 8 and too few descriptors for a socket each, the workers share the sockets there are and serve" {
	local n
	need_reuseport
	start_backend echo
	spawn single proxy bash -c 'ulimit -n 12 && exec "$@"' ulimit \
	    "$TCPPROXY" -w 8 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	PROXY_PID=$SPAWNED
	PROXY_LOG=$T/proxy.err
	PROXY_PORT=$(ready_port "$PROXY_LOG")
	has_line "$PROXY_LOG" '^tcpproxy: 8 workers share [1-7] sockets on 127\.0\.0\.1:[0-9]+: (Too many open files|No file descriptors available)$'
	n=$(sed -n 's/.* 8 workers share \([0-9]\) sockets .*/\1/p' "$PROXY_LOG")
	wait_for 10 eval '[ "$(workers_of "$PROXY_PID" | wc -l)" -eq 8 ]'
	[ "$(listen_inodes "$PROXY_PORT" | wc -l)" -eq "$n" ]
	run "$CLIENT" -a 30 -n 8 -g 1k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 8" ]
	run "$CLIENT" -a 30 -n 8 -g 1k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 8" ]
}

@test "with -w 2 -u nobody a reload binds a socket per worker for a new service as that user" {
	local pa pb
	need_reuseport
	need_root
	id -u nobody >/dev/null 2>&1 || skip "no user nobody"
	scratch_dir
	start_backend echo
	printf -- '--name a 127.0.0.1 0 127.0.0.1 %s\n' "$BACKEND_PORT" \
	    >"$SCRATCH/run.conf"
	chmod 644 "$SCRATCH/run.conf"
	start_config "$SCRATCH/run.conf" -w 2 -u nobody
	pa=$(ready_port "$PROXY_LOG")
	wait_for 10 own_sockets 2 "$pa"
	printf -- '--name b 127.0.0.1 0 127.0.0.1 %s\n' "$BACKEND_PORT" \
	    >>"$SCRATCH/run.conf"
	reload_proxy "$PROXY_PID" "$PROXY_LOG"
	has_line "$PROXY_LOG" '^tcpproxy: reloaded: 2 services, 2 listeners$'
	pb=$(service_port "$PROXY_LOG" b)
	wait_for 10 own_sockets 2 "$pb"
	own_sockets 2 "$pa"
	run "$CLIENT" -a 30 -n 100 -g 1k 127.0.0.1 "$pb"
	[ "$output" = "ok 100" ]
	run "$CLIENT" -a 30 -n 100 -g 1k 127.0.0.1 "$pa"
	[ "$output" = "ok 100" ]
}

@test "built with -DTCPPROXY_PORTABLE, -w 2 workers share one listening socket and serve every client" {
	need_proc
	mkdir -p "$T/src"
	cp "$TOP/Makefile" "$TOP/tcpproxy.c" "$TOP/tcpproxy.h" "$T/src/"
	# -O0: the build is what is tested here, not its speed.
	(cd "$T/src" && make -s CFLAGS='-std=c99 -O0' \
	    CPPFLAGS='-D_POSIX_C_SOURCE=200809L -DTCPPROXY_PORTABLE' tcpproxy) \
	    >"$T/make.out" 2>&1 || { cat "$T/make.out"; return 1; }
	start_backend echo
	TCPPROXY=$T/src/tcpproxy proxy_to_backend -w 2
	wait_for 10 one_socket 2 "$PROXY_PORT"
	run "$CLIENT" -a 30 -n 300 -g 1k 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 300" ]
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " close id=")" -eq 300 ]'
	[ $(($(closes_by "$PROXY_LOG" 1) + $(closes_by "$PROXY_LOG" 2))) -eq 300 ]
}
