# helper.bash - shared setup for tcpproxy's bats suite.
#
# Every server starts on port 0 and its port is read from its ready line
# ("listening on ADDR:PORT") with a bounded polling loop.  Every process
# a test starts is recorded and killed in teardown.  Per-test files live
# in BATS_TEST_TMPDIR.

TOP=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
TCPPROXY=$TOP/tcpproxy
BACKEND=$TOP/test/backend
CLIENT=$TOP/test/client
LIBTEST=$TOP/test/libtest
# How often the bounded polling loops below look again, in seconds;
# WAIT_INTERVAL overrides it for one wait_for where every millisecond
# counts (restart_backend).
POLL_INTERVAL=0.05
FAST_POLL_INTERVAL=0.005

setup() {
	local bin
	for bin in "$TCPPROXY" "$BACKEND" "$CLIENT"; do
		[ -x "$bin" ] || {
			echo "missing $bin: run 'make test'" >&2
			return 1
		}
	done
	T=$BATS_TEST_TMPDIR
	PIDS=$T/pids
	: >"$PIDS"
}

teardown() {
	local pid kind n f
	exec 4>&-
	# On failure, show what the processes said.
	if [ -z "${BATS_TEST_COMPLETED:-}" ] && [ -n "${T:-}" ]; then
		for f in "$T"/*.err; do
			[ -s "$f" ] || continue
			echo "--- ${f##*/} (last 20 lines)"
			tail -n 20 "$f"
		done
	fi
	if [ -f "${T:-}/scratch" ]; then
		while read -r f; do
			rm -rf -- "$f"
		done <"$T/scratch"
	fi
	[ -f "${PIDS:-}" ] || return 0
	# Backends lead a process group of their own (children included).
	while read -r kind pid; do
		if [ "$kind" = group ]; then
			kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" \
			    2>/dev/null || true
		else
			kill -TERM "$pid" 2>/dev/null || true
		fi
	done <"$PIDS"
	# Give them 5 s to go, then force it; wait reaps our own children.
	n=0
	while read -r kind pid; do
		while kill -0 "$pid" 2>/dev/null && [ "$n" -lt 100 ]; do
			sleep "$POLL_INTERVAL"
			n=$((n + 1))
		done
		if kill -0 "$pid" 2>/dev/null; then
			kill -KILL "$pid" 2>/dev/null || true
		fi
		if [ "$kind" = group ]; then
			kill -KILL -- "-$pid" 2>/dev/null || true
		fi
		wait "$pid" 2>/dev/null || true
	done <"$PIDS"
}

# scratch_dir: makes a directory every user may write to (mode 1777),
# outside BATS_TEST_TMPDIR, whose parents may be 0700; sets SCRATCH to
# it.  teardown removes it.
scratch_dir() {
	SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/tcpproxy-test.XXXXXX")
	echo "$SCRATCH" >>"$T/scratch"
	chmod 1777 "$SCRATCH"
}

# now_ms: prints the wall clock in milliseconds.
now_ms() {
	local t=${EPOCHREALTIME/[.,]/}
	echo $((t / 1000))
}

# wait_for SECS CMD...: runs CMD every 0.05 s until it succeeds; fails
# (status 1) if SECS pass first.
wait_for() {
	local deadline
	deadline=$(($(now_ms) + $(awk "BEGIN { print int($1 * 1000) }")))
	shift
	until "$@"; do
		if [ "$(now_ms)" -ge "$deadline" ]; then
			echo "wait_for: gave up on: $*" >&2
			return 1
		fi
		sleep "${WAIT_INTERVAL:-$POLL_INTERVAL}"
	done
}

# spawn KIND NAME CMD...: runs CMD in the background with stdout in
# $T/NAME.out and stderr in $T/NAME.err; sets SPAWNED to its pid.  KIND
# "group" marks a process that leads its own process group.  Its stdin
# is $SPAWN_STDIN, /dev/null by default.
spawn() {
	local kind=$1 name=$2
	shift 2
	"$@" >"$T/$name.out" 2>"$T/$name.err" <"${SPAWN_STDIN:-/dev/null}" \
	    3>&- 4>&- &
	SPAWNED=$!
	echo "$kind $SPAWNED" >>"$PIDS"
}

# ready_port FILE: waits up to 10 s for a "listening on" line in FILE and
# prints the port of the first one.
ready_port() {
	local file=$1
	wait_for 10 grep -q 'listening on ' "$file" || {
		echo "no ready line in $file:" >&2
		cat "$file" >&2
		return 1
	}
	sed -n 's/.*listening on .*:\([0-9][0-9]*\)$/\1/p' "$file" | head -n 1
}

# start_backend [-l HOST] MODE [N]: starts test/backend; sets BACKEND_PID,
# BACKEND_PORT, BACKEND_OUT (its report lines) and BACKEND_NAME.
BACKENDS=0
start_backend() {
	BACKENDS=$((BACKENDS + 1))
	BACKEND_NAME=backend$BACKENDS
	spawn group "$BACKEND_NAME" "$BACKEND" "$@"
	BACKEND_PID=$SPAWNED
	BACKEND_OUT=$T/$BACKEND_NAME.out
	BACKEND_PORT=$(ready_port "$T/$BACKEND_NAME.err")
	[ -n "$BACKEND_PORT" ]
}

# start_proxy ARGS...: starts ./tcpproxy ARGS; sets PROXY_PID, PROXY_PORT
# and PROXY_LOG (its stderr).
PROXIES=0
start_proxy() {
	PROXIES=$((PROXIES + 1))
	spawn single "proxy$PROXIES" "$TCPPROXY" "$@"
	PROXY_PID=$SPAWNED
	PROXY_LOG=$T/proxy$PROXIES.err
	PROXY_PORT=$(ready_port "$PROXY_LOG")
	[ -n "$PROXY_PORT" ]
}

# proxy_to_backend [PROXY OPTIONS...]: starts a proxy on 127.0.0.1 port
# 0 in front of the last backend.
proxy_to_backend() {
	start_proxy "$@" 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
}

# free_port: prints a port nothing listens on (bound, then released).
free_port() {
	"$BACKEND" freeport 2>&1 | sed -n 's/.*:\([0-9][0-9]*\)$/\1/p'
}

# has_line FILE REGEX: FILE has a line matching the extended REGEX.
has_line() {
	grep -Eq -- "$2" "$1"
}

# no_line FILE REGEX: FILE exists and has no line matching REGEX (grep
# says 1: an error, 2, fails too).  A bare "! has_line" would not fail a
# test: errexit ignores commands under "!".
no_line() {
	local rc=0
	grep -Eq -- "$2" "$1" || rc=$?
	[ "$rc" -eq 1 ]
}

# lines_in FILE: prints the number of lines in FILE (0 if missing).
lines_in() {
	if [ -f "$1" ]; then
		wc -l <"$1" | tr -d ' '
	else
		echo 0
	fi
}

# is_gone PID: PID has exited (or is a zombie).
is_gone() {
	! kill -0 "$1" 2>/dev/null ||
	    [ "$(sed 's/.*) \(.\).*/\1/' "/proc/$1/stat" 2>/dev/null)" = Z ]
}

# fd_count PID: prints how many descriptors PID has open.
fd_count() {
	ls "/proc/$1/fd" | wc -l | tr -d ' '
}

# cpu_ticks PID: prints utime + stime of PID in clock ticks.
cpu_ticks() {
	local rest
	rest=$(sed 's/.*) //' "/proc/$1/stat")
	set -- $rest
	# Fields 14 and 15 of stat; $rest starts at field 3.
	echo $((${12} + ${13}))
}

# rss_kb PID: prints the resident set size of PID in KiB.
rss_kb() {
	awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# need_proc: skips the test where /proc/PID is not Linux-like.
need_proc() {
	[ -r "/proc/$$/stat" ] && [ -d "/proc/$$/fd" ] &&
	    [ -r "/proc/$$/status" ] || skip "needs Linux /proc"
}

# need_ipv6: skips the test when ::1 cannot be bound.
need_ipv6() {
	"$BACKEND" -l ::1 freeport >/dev/null 2>&1 || skip "no ::1"
}

# field FILE WORD: prints the "N CKSUM" that follows WORD on the first
# line of FILE that starts with WORD.
field() {
	sed -n "s/^$2 \\([0-9]* [0-9a-f]*\\)\$/\\1/p" "$1" | head -n 1
}

# A wrongly accepted command line would start a proxy that never exits.
LIMIT=
if command -v timeout >/dev/null 2>&1; then
	LIMIT="timeout 20"
fi

# bad_usage WORD ARGS...: tcpproxy ARGS exits 2, its first line is a
# "tcpproxy: " message containing WORD, and a usage line follows.
bad_usage() {
	local word=$1
	shift
	run $LIMIT "$TCPPROXY" "$@"
	echo "$output"
	[ "$status" -eq 2 ]
	[[ ${lines[0]} == "tcpproxy: "* ]]
	[[ ${lines[0]} == *"$word"* ]]
	printf '%s\n' "${lines[@]}" | grep -q '^usage: tcpproxy'
}

# start_fails WORD ARGS...: tcpproxy ARGS exits 1 (a start-up failure)
# and its first line is a "tcpproxy: " message containing WORD.
start_fails() {
	local word=$1
	shift
	run $LIMIT "$TCPPROXY" "$@"
	echo "$output"
	[ "$status" -eq 1 ]
	[[ ${lines[0]} == "tcpproxy: "*"$word"* ]]
}

# observe_for SECS: lets SECS pass, bounded, while a test checks that
# something does NOT happen (a waiting client gets no bytes, an idle
# proxy uses no CPU).  Never used to wait for readiness: that is
# wait_for's job.
observe_for() {
	sleep "$1"
}

# ---- services, config files, reloads ----

# service_port FILE NAME: waits up to 10 s for the ready line of service
# NAME ("listening on ADDR:PORT service=NAME") in FILE and prints its
# port, from the last such line (a reload may bind it anew).
service_port() {
	local file=$1 name=$2
	wait_for 10 has_service_line "$file" "$name" || {
		echo "no ready line for service $name in $file:" >&2
		cat "$file" >&2
		return 1
	}
	awk -v want=" service=$name" '
	index($0, " listening on ") &&
	    substr($0, length($0) - length(want) + 1) == want {
		addr = substr($0, index($0, " listening on ") + 14)
		addr = substr(addr, 1, length(addr) - length(want))
		port = addr
		sub(/.*:/, "", port)
	}
	END { if (port == "") exit 1; print port }' "$file"
}

# has_service_line FILE NAME: FILE has the ready line of service NAME.
has_service_line() {
	awk -v want=" service=$2" '
	index($0, " listening on ") &&
	    substr($0, length($0) - length(want) + 1) == want { found = 1 }
	END { exit !found }' "$1"
}

# count_lines FILE REGEX: prints how many lines of FILE match the
# extended REGEX (0 when none, or when FILE is missing).
count_lines() {
	local n
	n=$(grep -Ec -- "$2" "$1" 2>/dev/null) || true
	echo "${n:-0}"
}

# closes_on FILE PORT: prints how many close lines in FILE name the
# backend 127.0.0.1:PORT.
closes_on() {
	count_lines "$1" " close id=.* backend=127\\.0\\.0\\.1:$2( |\$)"
}

# reload_proxy PID LOG: sends SIGHUP to PID and waits up to 10 s for one
# more "reloaded:" or "reload failed" line in LOG.
reload_proxy() {
	local want
	want=$(($(count_lines "$2" ' reload(ed:| failed)') + 1))
	kill -HUP "$1"
	wait_for 10 eval "[ \"\$(count_lines '$2' ' reload(ed:| failed)')\" -ge $want ]"
}

# start_config FILE [ARGS...]: starts ./tcpproxy -f FILE ARGS; sets
# PROXY_PID and PROXY_LOG, and waits for a ready line (PROXY_PORT is not
# set: with several services, use service_port).
start_config() {
	local file=$1
	shift
	PROXIES=$((PROXIES + 1))
	spawn single "proxy$PROXIES" "$TCPPROXY" -f "$file" "$@"
	PROXY_PID=$SPAWNED
	PROXY_LOG=$T/proxy$PROXIES.err
	wait_for 10 has_line "$PROXY_LOG" ' listening on ' || {
		echo "no ready line in $PROXY_LOG:" >&2
		cat "$PROXY_LOG" >&2
		return 1
	}
}

# restart_backend PID PORT MODE [N]: ends the backend PID and at once
# starts test/backend MODE on the port it had, leaving the port free for
# as short a while as can be (a free port is soon another's: any
# outgoing connect on the machine may take it).  Sets what start_backend
# sets.
restart_backend() {
	local pid=$1 port=$2
	shift 2
	kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null ||
	    true
	# Polled fast: the port is free from the moment the process is gone.
	WAIT_INTERVAL=$FAST_POLL_INTERVAL wait_for 10 is_gone "$pid"
	start_backend -p "$port" "$@"
}

# ---- networks (issue 10) ----

# need_cmd CMD...: skips the test unless every CMD is on PATH (.ci/run
# installs them from Debian's packages).
need_cmd() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 ||
		    skip "needs $c (not installed)"
	done
}

# is_listening PORT [NETNS]: something listens on TCP PORT (in the
# network namespace NETNS), by ss: a readiness check that makes no
# connection of its own, so no server logs one.
is_listening() {
	local in=
	[ -z "${2:-}" ] || in="ip netns exec $2"
	$in ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

# hex_bytes HEX...: writes the bytes spelled in hex (spaces ignored),
# NULs included.
hex_bytes() {
	local h out= i
	h=$(printf '%s' "$*" | tr -d ' \n')
	for ((i = 0; i < ${#h}; i += 2)); do
		out+="\\x${h:i:2}"
	done
	printf "$out"
}

# is_listening_unix PATH: something listens on the Unix socket PATH.
is_listening_unix() {
	ss -Hlx 2>/dev/null | awk -v p="$1" '$5 == p { f = 1 } END { exit !f }'
}

# start_server NAME GEN: starts a server that cannot be given port 0
# (haproxy, nginx, openssl s_server, python3 -m http.server).  GEN, a
# function, picks its ports with free_port, writes any config they go
# in, and sets SERVER_CMD (an array: the command line), SERVER_PORTS
# (the TCP ports it must listen on) and SERVER_SOCKETS (Unix socket
# paths, likewise).  The server runs like spawn's (NAME.out, NAME.err;
# in the network namespace NETNS if set); start_server waits until it
# listens on all of them and sets SERVER_PID.  A free port may be taken
# (as the local port of someone's outgoing connection) before the server
# binds it, so a server that exits first is started again with new
# ports, 5 times at most.
start_server() {
	local name=$1 gen=$2 try
	for try in 1 2 3 4 5; do
		SERVER_PORTS=() SERVER_SOCKETS=()
		"$gen"
		spawn single "$name" ${NETNS:+ip netns exec $NETNS} \
		    "${SERVER_CMD[@]}"
		SERVER_PID=$SPAWNED
		wait_for 10 server_up || break
		is_gone "$SERVER_PID" || return 0
		echo "start_server: $name exited (try $try):" >&2
		tail -n 3 "$T/$name.err" >&2
	done
	echo "start_server: $name did not start:" >&2
	cat "$T/$name.err" >&2
	return 1
}

# server_up: SERVER_PID has exited, or it listens on all of
# SERVER_PORTS and SERVER_SOCKETS.
server_up() {
	local port path
	is_gone "$SERVER_PID" && return 0
	for port in ${SERVER_PORTS[@]+"${SERVER_PORTS[@]}"}; do
		is_listening "$port" ${NETNS:-} || return 1
	done
	for path in ${SERVER_SOCKETS[@]+"${SERVER_SOCKETS[@]}"}; do
		is_listening_unix "$path" || return 1
	done
}

# start_haproxy GEN [NAME]: haproxy -db -f $T/NAME.cfg (NAME: haproxy),
# which GEN writes at HAPROXY_CFG (and sets SERVER_PORTS), by
# start_server.  Its stdout, the log when the config says "log stdout",
# is HAPROXY_OUT ($T/NAME.out).
start_haproxy() {
	local name=${2:-haproxy}
	HAPROXY_GEN=$1
	HAPROXY_CFG=$T/$name.cfg
	start_server "$name" haproxy_gen
	HAPROXY_OUT=$T/$name.out
}

haproxy_gen() {
	"$HAPROXY_GEN"
	SERVER_CMD=(haproxy -db -f "$HAPROXY_CFG")
}

# haproxy_head [MODE]: starts HAPROXY_CFG with a log to stdout and the
# timeouts every config here uses (and MODE, if given, for all
# proxies); the caller appends its frontends.
haproxy_head() {
	cat >"$HAPROXY_CFG" <<EOF
global
	log stdout format raw local0
defaults
	log global
	${1:+mode $1}
	timeout connect 5s
	timeout client 10s
	timeout server 10s
EOF
}

# NGINX_STREAM: the dynamic module of Debian's nginx for stream {}.
NGINX_STREAM=/usr/lib/nginx/modules/ngx_stream_module.so

# start_nginx GEN: nginx in the foreground with prefix $T/ngx and config
# $T/ngx/nginx.conf, which GEN writes (nginx_conf starts it) and sets
# SERVER_PORTS or SERVER_SOCKETS, by start_server.  Its error log is
# $T/ngx/error.log.
start_nginx() {
	NGINX_GEN=$1
	start_server nginx nginx_gen
}

nginx_gen() {
	"$NGINX_GEN"
	SERVER_CMD=(nginx -e "$T/ngx/error.log" -p "$T/ngx"
	    -c "$T/ngx/nginx.conf" -g "daemon off; pid $T/ngx/nginx.pid;")
}

# nginx_conf: starts $T/ngx/nginx.conf with what every config here
# needs (the stream module, the error log under $T/ngx); the caller
# appends its stream {} or http {} block.
nginx_conf() {
	mkdir -p "$T/ngx"
	cat >"$T/ngx/nginx.conf" <<NGX
load_module $NGINX_STREAM;
error_log $T/ngx/error.log;
events { worker_connections 64; }
NGX
}

# need_nginx_stream: skips unless nginx and its stream module are here.
need_nginx_stream() {
	need_cmd nginx
	[ -e "$NGINX_STREAM" ] ||
	    skip "needs nginx's stream module (libnginx-mod-stream)"
}

# start_recorder: a backend for one connection (socat) that writes every
# byte it gets to REC_FILE; sets REC_PORT and REC_LOG (socat's -d -d
# log, which says "accepting connection" when one came).
RECORDERS=0
start_recorder() {
	need_cmd socat
	RECORDERS=$((RECORDERS + 1))
	REC_FILE=$T/rec$RECORDERS.bin
	spawn single "rec$RECORDERS" socat -d -d -u \
	    TCP-LISTEN:0,bind=127.0.0.1 "CREATE:$REC_FILE"
	REC_LOG=$T/rec$RECORDERS.err
	REC_PORT=$(ready_port "$REC_LOG")
	[ -n "$REC_PORT" ]
}

# received HEX...: waits up to 10 s for REC_FILE to hold exactly these
# bytes; shows both (od -c) when it does not.
received() {
	hex_bytes "$@" >"$T/want.bin"
	wait_for 10 cmp -s "$T/want.bin" "$REC_FILE" || {
		echo "wanted:"
		od -An -c "$T/want.bin"
		echo "got:"
		od -An -c "$REC_FILE" 2>&1
		return 1
	}
}

# got_nothing: the recorder was never connected to and has no byte.
got_nothing() {
	no_line "$REC_LOG" 'accepting connection'
	[ ! -s "$REC_FILE" ]
}

# start_unix_proxy PATH ARGS...: tcpproxy ARGS, whose listener is the
# Unix socket PATH; waits for its ready line "listening on PATH".
start_unix_proxy() {
	local path=$1
	shift
	PROXIES=$((PROXIES + 1))
	spawn single "proxy$PROXIES" "$TCPPROXY" "$@"
	PROXY_PID=$SPAWNED
	PROXY_LOG=$T/proxy$PROXIES.err
	wait_for 10 has_line "$PROXY_LOG" "^tcpproxy: listening on (unix:)?$path\$" || {
		cat "$PROXY_LOG"
		return 1
	}
}

# ---- faults and the control socket (issue 11) ----

# SLACK: milliseconds a time's lower bound allows.  The proxy reads its
# clock once a loop round, so a chunk read late in a round is stamped a
# little early (seen under ASan: a 250 ms delay measured as 246 ms).
SLACK=10

# fault_proxy [ARGS...]: a proxy in front of the last backend with a
# control socket, $T/cN.sock for the Nth proxy (CTL), and ARGS; sets
# what start_proxy sets.
fault_proxy() {
	CTL=$T/c$((PROXIES + 1)).sock
	proxy_to_backend --control "$CTL" "$@"
}

# pctl ARGS...: tcpproxy ctl $CTL ARGS, stdout in $T/ctl.out, stderr in
# $T/ctl.err, the status in RC; prints both (for a failing test's log).
pctl() {
	RC=0
	$LIMIT "$TCPPROXY" ctl "$CTL" "$@" >"$T/ctl.out" 2>"$T/ctl.err" ||
	    RC=$?
	cat "$T/ctl.out" "$T/ctl.err"
}

# ctl_ok ARGS...: pctl ARGS, which must exit 0.
ctl_ok() {
	pctl "$@"
	[ "$RC" -eq 0 ]
}

# ctl_err TEXT ARGS...: pctl ARGS, which must exit 1 with one line on
# stderr, "error: ..." containing TEXT (a fixed string), and nothing on
# stdout.
ctl_err() {
	local text=$1
	shift
	pctl "$@"
	[ "$RC" -eq 1 ]
	[ ! -s "$T/ctl.out" ]
	[ "$(lines_in "$T/ctl.err")" -eq 1 ]
	grep -q '^error: ' "$T/ctl.err"
	grep -Fq -- "$text" "$T/ctl.err"
}

# ctl_wait EXPR [SECS]: the proxy's own wait (10 s unless SECS), which
# must hold in time.
ctl_wait() {
	ctl_ok wait "$1" "timeout=${2:-10}"
}

# pattern_run N CLIENT-OPTIONS...: test/client OPTIONS against a fresh
# test/backend "source N" of its own: the first N bytes of the test
# pattern (the programs' own code makes them; a loop in the shell would
# be slow under bats' traps).
PATTERNS=0
pattern_run() {
	local n=$1 pid port name
	shift
	# Unique in a $(...) too, whose count is lost.
	PATTERNS=$((PATTERNS + 1))
	name=pattern$BASHPID.$PATTERNS
	spawn group "$name" "$BACKEND" source "$n"
	pid=$SPAWNED
	port=$(ready_port "$T/$name.err")
	"$CLIENT" -a 20 "$@" 127.0.0.1 "$port" </dev/null
	kill -TERM -- "-$pid" 2>/dev/null || true
}

# pattern_sum N: prints "N CKSUM" for the first N bytes of the pattern,
# as the backend's and the client's report lines give it.
pattern_sum() {
	pattern_run "$1" -r | sed -n 's/^recv //p'
}

# pattern_file N FILE: writes the first N bytes of the pattern to FILE.
pattern_file() {
	pattern_run "$1" >"$2"
}

# size_of FILE: prints FILE's size in bytes (0 if missing).
size_of() {
	local n=0
	[ ! -f "$1" ] || n=$(wc -c <"$1")
	echo $((n))
}

# has_bytes FILE N: FILE holds at least N bytes.
has_bytes() {
	[ "$(size_of "$1")" -ge "$2" ]
}

# ms_since T0: prints the milliseconds since now_ms said T0.
ms_since() {
	echo $(($(now_ms) - $1))
}

# stream_open NAME PORT [CLIENT OPTIONS...]: starts test/client on
# 127.0.0.1 PORT with its stdin the fifo $T/NAME.in, held open for
# writing on descriptor 4 (which spawn closes in every other child and
# teardown closes), and its bytes received in $T/NAME.out; sets
# STREAM_PID, and STREAM_T0 to now_ms before it connected.  stream_send
# writes to it, stream_end closes it.
stream_open() {
	local name=$1 port=$2
	shift 2
	STREAM_T0=$(now_ms)
	rm -f "$T/$name.in"
	mkfifo "$T/$name.in"
	SPAWN_STDIN=$T/$name.in spawn single "$name" "$CLIENT" "$@" \
	    127.0.0.1 "$port"
	STREAM_PID=$SPAWNED
	exec 4>"$T/$name.in"
}

# stream_send TEXT: sends TEXT (printf's format) on the open stream.
stream_send() {
	printf "$1" >&4
}

# stream_end: closes the stream's input (the client's EOF on stdin).
stream_end() {
	exec 4>&-
}

# time_until SECS CMD...: polls CMD fast until it holds (failing after
# SECS) and sets TOOK to the milliseconds it took.
time_until() {
	local t0 secs=$1
	shift
	t0=$(now_ms)
	WAIT_INTERVAL=$FAST_POLL_INTERVAL wait_for "$secs" "$@"
	TOOK=$(ms_since "$t0")
	echo "took ${TOOK} ms: $*"
}

# fault_lines FILE NAME [ACTION]: prints how many "fault" log lines in
# FILE are of the fault called NAME.
fault_lines() {
	count_lines "$1" " fault id=[0-9]+ name=$2 action=${3:-[a-z-]+} "
}

# fault_ids FILE NAME: prints the bridge ids fault NAME acted on, in
# order, one a line, each once.
fault_ids() {
	sed -n "s/.* fault id=\\([0-9]*\\) name=$2 .*/\\1/p" "$1" | sort -n -u
}

# closes_with FILE REASON: prints how many close lines of FILE have
# reason=REASON.
closes_with() {
	count_lines "$1" " close id=.* reason=$2( |\$)"
}

# in_range LO V HI: LO <= V <= HI, saying so when not.
in_range() {
	if [ "$2" -lt "$1" ] || [ "$2" -gt "$3" ]; then
		echo "$2 is not within $1..$3" >&2
		return 1
	fi
}

# files_differ A B: files A and B both exist and differ (a bare "! cmp"
# would not fail a test).
files_differ() {
	[ -f "$1" ] && [ -f "$2" ] && ! cmp -s "$1" "$2"
}
