#!/usr/bin/env bats
# The control socket (--control, issue 11) against the real program:
# add, del, list, down and up, reset, stats, conns, kill, wait, seed,
# reload, stop; each command's errors; the batch form.  The faults'
# actions are in faults.bats; tcpproxy ctl's own side in ctl.bats.

load helper

# hold NAME: a client of the proxy on PROXY_PORT that sends nothing and
# stays until the bridge ends (its output in $T/NAME.out); sets HELD.
hold() {
	spawn single "$1" "$CLIENT" -a 20 127.0.0.1 "$PROXY_PORT"
	HELD=$SPAWNED
}

# two_services_conf: $T/two.conf, services "a" and "b" in front of the
# last backend.
two_services_conf() {
	CTL=$T/c.sock
	cat >"$T/two.conf" <<EOF
--name a 127.0.0.1 0 127.0.0.1 $BACKEND_PORT
--name b 127.0.0.1 0 127.0.0.1 $BACKEND_PORT
EOF
}

# echo_ok PORT: one byte goes through the proxy on PORT and comes back.
echo_ok() {
	[ "$(printf z | "$CLIENT" -a 10 -k 1 127.0.0.1 "$1")" = z ]
}

# ---- add, del, list ----

@test "add replies ok NAME, list shows it; names are made unique; a name= in use is refused" {
	start_backend echo
	fault_proxy
	ctl_ok list
	[ ! -s "$T/ctl.out" ]
	ctl_ok add delay=20s,dir=down
	[ "$(cat "$T/ctl.out")" = delay ]
	ctl_ok add delay=1ms
	[ "$(cat "$T/ctl.out")" = 'delay#2' ]
	ctl_ok add stall,dir=up,name=my-stall.1
	[ "$(cat "$T/ctl.out")" = my-stall.1 ]
	ctl_err "fault name 'my-stall.1' is in use" add drop,name=my-stall.1
	ctl_ok list
	[ "$(lines_in "$T/ctl.out")" -eq 3 ]
	grep -Eqx 'fault service=[^ ]+ name=delay fired=0 spec=delay=20s,dir=down' "$T/ctl.out"
	grep -Eqx 'fault service=[^ ]+ name=delay#2 fired=0 spec=delay=1ms' "$T/ctl.out"
	grep -Eqx 'fault service=[^ ]+ name=my-stall\.1 fired=0 spec=stall,dir=up,name=my-stall\.1' "$T/ctl.out"
	# --fault's are listed too, and count their firings.
	fault_proxy --fault ttfb=1ms,dir=up
	echo_ok "$PROXY_PORT"
	ctl_wait fired:ttfb==1
	ctl_ok list
	grep -Eqx 'fault service=[^ ]+ name=ttfb fired=1 spec=ttfb=1ms,dir=up' "$T/ctl.out"
}

@test "add's errors name the word at fault and add nothing" {
	start_backend echo
	fault_proxy --fault drop,dir=up,conn=99
	ctl_err "unknown fault 'frob'" add frob
	ctl_err "invalid dir 'x' in fault 'delay'" add delay=1,dir=x
	ctl_err "invalid value 'soon' for fault 'delay'" add delay=soon
	ctl_err "fault 'delay' needs a value" add delay
	ctl_err "usage: add [SERVICE] SPEC" add
	ctl_err "usage: add [SERVICE] SPEC" add delay=1 extra
	ctl_err "fault name 'drop' is in use" add stall,name=drop
	ctl_ok list
	[ "$(lines_in "$T/ctl.out")" -eq 1 ]
	echo_ok "$PROXY_PORT"
}

@test "add applies to the bridges already open, from then on" {
	start_backend echo
	fault_proxy
	stream_open s "$PROXY_PORT"
	stream_send a
	time_until 5 has_bytes "$T/s.out" 1
	in_range 0 "$TOOK" 500
	ctl_ok add delay=600ms,dir=down
	stream_send b
	time_until 5 has_bytes "$T/s.out" 2
	in_range $((600 - SLACK)) "$TOOK" 4000
	has_line "$PROXY_LOG" ' fault id=1 name=delay action=delay dir=down offset=1$'
}

@test "del NAME lifts a delay from every bridge at once, releasing what it held" {
	start_backend echo
	fault_proxy --fault delay=30s,dir=down
	stream_open s "$PROXY_PORT"
	stream_send abc
	ctl_wait fired:delay==1
	observe_for 0.3
	[ "$(size_of "$T/s.out")" -eq 0 ]
	ctl_ok del delay
	[ ! -s "$T/ctl.out" ]
	time_until 5 has_bytes "$T/s.out" 3
	in_range 0 "$TOOK" 2000
	[ "$(cat "$T/s.out")" = abc ]
	ctl_ok list
	[ ! -s "$T/ctl.out" ]
	# New bytes pass at once too.
	stream_send d
	time_until 5 has_bytes "$T/s.out" 4
	in_range 0 "$TOOK" 1000
}

@test "del lifts a stall; del * deletes all; del of no such fault is an error" {
	start_backend echo
	fault_proxy --fault stall,dir=up --fault ttfb=1ms,dir=down
	stream_open s "$PROXY_PORT"
	stream_send xy
	ctl_wait fired:stall==1
	observe_for 0.3
	[ "$(size_of "$T/s.out")" -eq 0 ]
	ctl_err "no fault 'nope'" del nope
	ctl_err "usage: del [SERVICE] NAME|*" del
	ctl_err "usage: del [SERVICE] NAME|*" del stall extra
	ctl_ok list
	[ "$(lines_in "$T/ctl.out")" -eq 2 ]
	ctl_ok del stall
	time_until 5 has_bytes "$T/s.out" 2
	in_range 0 "$TOOK" 2000
	ctl_ok del '*'
	ctl_ok list
	[ ! -s "$T/ctl.out" ]
	# * with nothing left is fine.
	ctl_ok del '*'
}

# ---- down and up ----

@test "down refuse: connects are refused, the port stays held; up listens on it again" {
	start_backend echo
	fault_proxy
	echo_ok "$PROXY_PORT"
	ctl_ok down refuse
	has_line "$PROXY_LOG" '^tcpproxy: down refuse$'
	run "$CLIENT" -a 10 -x 127.0.0.1 "$PROXY_PORT" </dev/null
	echo "$output"
	[ "$status" -eq 1 ]
	[[ $output == *"Connection refused"* ]]
	# Nobody else may bind it meanwhile.
	run "$BACKEND" -p "$PROXY_PORT" closed
	echo "$output"
	[ "$status" -ne 0 ]
	# EADDRINUSE as each libc words it (musl: "Address in use").
	[[ $output == *"Address already in use"* ||
	    $output == *"Address in use"* ]]
	ctl_ok up
	has_line "$PROXY_LOG" '^tcpproxy: up$'
	echo_ok "$PROXY_PORT"
	ctl_wait accepted==2
}

@test "down refuse holds the port against a listener with SO_REUSEADDR too" {
	start_backend echo
	fault_proxy
	ctl_ok down refuse
	# test/backend's freeport binds with SO_REUSEADDR and listens.
	run "$BACKEND" -p "$PROXY_PORT" freeport
	echo "$output"
	[ "$status" -ne 0 ]
	ctl_ok up
	echo_ok "$PROXY_PORT"
}

@test "down hang: clients are accepted and hear nothing; the backend sees none; up heals" {
	start_backend sink
	fault_proxy
	ctl_ok down hang
	has_line "$PROXY_LOG" '^tcpproxy: down hang$'
	stream_open s "$PROXY_PORT" -a 20
	stream_send 'hello'
	ctl_wait open==1
	ctl_ok conns
	grep -Eq '^conn id=1 service=[^ ]+ client=127\.0\.0\.1:[0-9]+ backend=- ' "$T/ctl.out"
	observe_for 0.5
	[ "$(size_of "$T/s.out")" -eq 0 ]
	kill -0 "$STREAM_PID"
	no_line "$PROXY_LOG" ' open id=1 '
	ctl_ok up
	run "$CLIENT" -a 10 -r -g 1000 -x 127.0.0.1 "$PROXY_PORT"
	wait_for 10 has_line "$BACKEND_OUT" '^recv '
	# The hung client's bytes never reached the backend.
	[ "$(cat "$BACKEND_OUT")" = "recv $(pattern_sum 1000)" ]
}

@test "down reset: clients are accepted and reset at once, and it is logged" {
	start_backend echo
	fault_proxy
	ctl_ok down reset
	run "$CLIENT" -a 10 127.0.0.1 "$PROXY_PORT" </dev/null
	echo "$output"
	[ "$status" -eq 1 ]
	[[ $output == *"Connection reset by peer"* ]]
	wait_for 10 has_line "$PROXY_LOG" ' refuse id=1 client=127\.0\.0\.1:[0-9]+ reason=down-reset$'
	ctl_wait refused==1
	ctl_ok up
	echo_ok "$PROXY_PORT"
}

@test "down timeout: handshakes go unanswered until the client gives up; up accepts again" {
	local i n=0 rc
	start_backend echo
	fault_proxy
	ctl_ok down timeout
	has_line "$PROXY_LOG" '^tcpproxy: down timeout$'
	# With -x a client that connects exits at once, 0; one whose connect
	# hangs is ended by its alarm (124).
	for i in 1 2 3; do
		spawn single "c$i" "$CLIENT" -a 2 -x 127.0.0.1 "$PROXY_PORT"
		echo "$SPAWNED" >"$T/c$i.pid"
	done
	for i in 1 2 3; do
		rc=0
		wait "$(cat "$T/c$i.pid")" || rc=$?
		echo "client $i: $rc"
		[ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || return 1
		[ "$rc" -ne 124 ] || n=$((n + 1))
	done
	[ "$n" -ge 2 ]
	ctl_wait accepted==0
	ctl_ok up
	echo_ok "$PROXY_PORT"
}

@test "down MODE existing=keep leaves open bridges; existing=close closes them; existing=reset resets them" {
	start_backend echo
	fault_proxy
	stream_open s "$PROXY_PORT" -a 20
	stream_send a
	wait_for 5 has_bytes "$T/s.out" 1
	ctl_ok down refuse existing=keep
	stream_send b
	wait_for 5 has_bytes "$T/s.out" 2
	ctl_ok up
	ctl_ok down hang existing=close
	time_until 5 is_gone "$STREAM_PID"
	wait "$STREAM_PID"
	[ ! -s "$T/s.err" ]
	ctl_ok up
	hold h
	ctl_wait open==1
	ctl_ok down refuse existing=reset
	time_until 5 is_gone "$HELD"
	grep -q 'Connection reset by peer' "$T/h.err"
	ctl_wait open==0
	ctl_ok up
	echo_ok "$PROXY_PORT"
}

@test "down's and up's errors name the word at fault and change nothing" {
	start_backend echo
	fault_proxy
	ctl_err "unknown down mode 'sideways'" down sideways
	ctl_err "down needs a mode" down
	ctl_err "invalid 'existing=maybe'" down refuse existing=maybe
	ctl_err "extra word 'x'" down refuse existing=close x
	ctl_err "extra word 'x'" up x
	echo_ok "$PROXY_PORT"
	# up when up is fine.
	ctl_ok up
	no_line "$PROXY_LOG" ' down '
}

@test "with several services, add, del, down and up need the service's name" {
	start_backend echo
	two_services_conf
	start_config "$T/two.conf" --control "$CTL"
	pa=$(service_port "$PROXY_LOG" a)
	pb=$(service_port "$PROXY_LOG" b)
	ctl_err "several services: name one first" add delay=1ms
	ctl_err "several services: name one first" down refuse
	ctl_err "several services: name one first" up
	ctl_err "several services: name one first" del '*'
	ctl_ok add b ttfb=1ms,dir=up
	[ "$(cat "$T/ctl.out")" = ttfb ]
	ctl_ok list
	[ "$(cat "$T/ctl.out")" = "fault service=b name=ttfb fired=0 spec=ttfb=1ms,dir=up" ]
	ctl_ok down a refuse
	has_line "$PROXY_LOG" '^tcpproxy: down refuse service=a$'
	run "$CLIENT" -a 10 -x 127.0.0.1 "$pa" </dev/null
	[ "$status" -eq 1 ]
	echo_ok "$pb"
	ctl_wait b:accepted==1
	ctl_wait a:accepted==0
	ctl_wait fired:ttfb==1
	has_line "$PROXY_LOG" ' fault id=1 name=ttfb action=ttfb dir=up offset=0 service=b$'
	ctl_ok up a
	echo_ok "$pa"
	ctl_ok del b ttfb
	ctl_ok list
	[ ! -s "$T/ctl.out" ]
}

# ---- reset, stats, conns, kill ----

@test "reset deletes every fault and brings every service up" {
	start_backend echo
	fault_proxy --fault stall,dir=up
	ctl_ok add drop
	ctl_ok down refuse
	ctl_err "unknown command 'reset'" reset now
	ctl_ok list
	[ "$(lines_in "$T/ctl.out")" -eq 2 ]
	ctl_ok reset
	[ ! -s "$T/ctl.out" ]
	ctl_ok list
	[ ! -s "$T/ctl.out" ]
	echo_ok "$PROXY_PORT"
}

@test "stats gives the stats lines, then the fault lines" {
	start_backend echo
	fault_proxy --fault ttfb=1ms,dir=up
	echo_ok "$PROXY_PORT"
	ctl_wait closed==1
	ctl_ok stats
	grep -Eqx 'stats service=[^ ]+ open=0 total=1 refused=0 failed=0 up=1 down=1 spliced=0' "$T/ctl.out"
	grep -Eqx "stats service=[^ ]+ backend=127\\.0\\.0\\.1:$BACKEND_PORT state=up .* total=1 failed=0 up=1 down=1" "$T/ctl.out"
	[ "$(tail -n 1 "$T/ctl.out")" = "$(grep '^fault ' "$T/ctl.out")" ]
	grep -Eqx 'fault service=[^ ]+ name=ttfb fired=1 spec=ttfb=1ms,dir=up' "$T/ctl.out"
	ctl_err "unknown command 'stats'" stats x
}

@test "conns lists the open bridges with their bytes and age" {
	start_backend echo
	fault_proxy
	ctl_ok conns
	[ ! -s "$T/ctl.out" ]
	stream_open s "$PROXY_PORT"
	stream_send abcd
	wait_for 5 has_bytes "$T/s.out" 4
	hold h
	ctl_wait open==2
	ctl_ok conns
	[ "$(lines_in "$T/ctl.out")" -eq 2 ]
	grep -Eqx "conn id=1 service=[^ ]+ client=127\\.0\\.0\\.1:[0-9]+ backend=127\\.0\\.0\\.1:$BACKEND_PORT up=4 down=4 age=[0-9]+\\.[0-9]{3}" "$T/ctl.out"
	grep -Eqx "conn id=2 service=[^ ]+ client=127\\.0\\.0\\.1:[0-9]+ backend=127\\.0\\.0\\.1:$BACKEND_PORT up=0 down=0 age=[0-9]+\\.[0-9]{3}" "$T/ctl.out"
	ctl_err "unknown command 'conns'" conns x
}

@test "kill ID ends one bridge, kill all the rest, kill all reset resets; each says how many" {
	start_backend echo
	fault_proxy
	hold h1
	h1=$HELD
	ctl_wait open==1
	hold h2
	h2=$HELD
	ctl_wait open==2
	hold h3
	h3=$HELD
	ctl_wait open==3
	ctl_ok kill 1
	[ "$(cat "$T/ctl.out")" = 1 ]
	wait_for 5 is_gone "$h1"
	no_line "$T/h1.err" reset
	ctl_wait open==2
	ctl_ok kill 1
	[ "$(cat "$T/ctl.out")" = 0 ]
	ctl_ok kill 99
	[ "$(cat "$T/ctl.out")" = 0 ]
	ctl_ok kill 2 reset
	[ "$(cat "$T/ctl.out")" = 1 ]
	wait_for 5 is_gone "$h2"
	grep -q 'Connection reset by peer' "$T/h2.err"
	ctl_ok kill all
	[ "$(cat "$T/ctl.out")" = 1 ]
	wait_for 5 is_gone "$h3"
	[ ! -s "$T/h3.err" ]
	ctl_wait open==0
	ctl_ok kill all reset
	[ "$(cat "$T/ctl.out")" = 0 ]
	ctl_err "invalid bridge id 'x'" kill x
	ctl_err "invalid bridge id '0'" kill 0
	ctl_err "unknown command 'kill'" kill
	ctl_err "unknown command 'kill'" kill all now
}

@test "kill with a signed id is an error" {
	start_backend echo
	fault_proxy
	ctl_err "invalid bridge id '-1'" kill -1
	ctl_err "invalid bridge id '+1'" kill +1
}

# ---- wait ----

@test "wait returns as soon as its condition holds" {
	start_backend echo
	fault_proxy
	spawn single w "$TCPPROXY" ctl "$CTL" wait 'accepted>=3' timeout=20
	w=$SPAWNED
	hold h1
	hold h2
	# A second client of the socket while the wait waits.
	ctl_wait accepted==2
	kill -0 "$w"
	hold h3
	time_until 5 is_gone "$w"
	in_range 0 "$TOOK" 2000
	wait "$w"
	[ "$(cat "$T/w.out")" = 3 ]
}

@test "wait times out when it never holds: exit 1 with the value" {
	start_backend echo
	fault_proxy
	t0=$(now_ms)
	pctl wait 'accepted>=100' timeout=0.3
	took=$(ms_since "$t0")
	[ "$RC" -eq 1 ]
	[ "$(cat "$T/ctl.err")" = "error: timeout: accepted>=100 is 0" ]
	in_range $((300 - SLACK)) "$took" 3000
	t0=$(now_ms)
	pctl wait open==1 timeout=300ms
	[ "$RC" -eq 1 ]
	in_range $((300 - SLACK)) "$(ms_since "$t0")" 3000
}

@test "wait knows every counter and operator" {
	start_backend echo
	fault_proxy --fault ttfb=1ms,dir=up
	echo_ok "$PROXY_PORT"
	ctl_wait closed==1
	for expr in open==0 open=0 open!=1 open\<1 open\<=0 accepted\>0 \
	    accepted\>=1 closed==1 refused==0 failed==0 queued==0 \
	    fired:ttfb==1; do
		ctl_ok wait "$expr" timeout=1
	done
	ctl_ok wait accepted==1
	[ "$(cat "$T/ctl.out")" = 1 ]
	# Each that does not hold times out.
	for expr in open!=0 open\>0 accepted\<1 accepted\<=0 closed==2 \
	    fired:ttfb\>=2; do
		ctl_err "timeout: $expr is" wait "$expr" timeout=0.05
	done
}

@test "wait's errors name the word at fault" {
	start_backend echo
	fault_proxy
	ctl_err "unknown counter 'bogus'" wait bogus\>=1
	ctl_err "unknown counter 'fired:nope'" wait fired:nope\>=1
	ctl_err "invalid condition 'open'" wait open
	ctl_err "invalid condition '>=1'" wait '>=1'
	ctl_err "invalid number in 'open>=x'" wait open\>=x
	ctl_err "invalid number in 'open>='" wait open\>=
	ctl_err "invalid 'timeout=x'" wait open==0 timeout=x
	ctl_err "invalid 'soon'" wait open==0 soon
	ctl_err "unknown service in 'nosuch:open==0'" wait nosuch:open==0
	ctl_err "unknown command 'wait'" wait
}

# ---- seed ----

@test "seed N at run time makes the choices --seed N makes" {
	start_backend echo
	fault_proxy --seed 77 --fault ttfb=1ms,dir=up,p=0.5,name=half
	run "$CLIENT" -a 30 -n 30 -g 1 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 30" ]
	ctl_wait closed==30
	fault_ids "$PROXY_LOG" half >"$T/a"
	fault_proxy --seed 1 --fault ttfb=1ms,dir=up,p=0.5,name=half
	ctl_ok seed 77
	[ ! -s "$T/ctl.out" ]
	run "$CLIENT" -a 30 -n 30 -g 1 127.0.0.1 "$PROXY_PORT"
	[ "$output" = "ok 30" ]
	ctl_wait closed==30
	fault_ids "$PROXY_LOG" half >"$T/b"
	cat "$T/a"
	[ -s "$T/a" ]
	cmp "$T/a" "$T/b"
	ctl_err "invalid seed 'x'" seed x
	ctl_err "invalid seed '-1'" seed -1
	ctl_err "invalid seed '99999999999999999999'" seed 99999999999999999999
	ctl_err "unknown command 'seed'" seed
}

# ---- batches ----

@test "a batch is applied whole" {
	start_backend echo
	fault_proxy
	ctl_ok add drop,name=old
	printf 'add delay=1ms,name=a\nadd ttfb=1ms,dir=up,name=b\ndel old\ndown refuse\nup\nadd ttfb=1ms\nadd ttfb=1ms\n' >"$T/batch"
	ctl_ok - <"$T/batch"
	ctl_ok list
	[ "$(lines_in "$T/ctl.out")" -eq 4 ]
	[ "$(sed 's/.* name=\([^ ]*\) .*/\1/' "$T/ctl.out" | tr '\n' ' ')" = 'a b ttfb ttfb#2 ' ]
	echo_ok "$PROXY_PORT"
	# Data lines of a batch's commands come back too.
	hold h
	ctl_wait open==1
	printf 'list\nconns\n' | ctl_ok -
	[ "$(lines_in "$T/ctl.out")" -eq 5 ]
	[ "$(grep -c '^fault ' "$T/ctl.out")" -eq 4 ]
	grep -q '^conn id=2 ' "$T/ctl.out"
}

@test "a batch with a bad line applies none of its lines, naming that line" {
	start_backend echo
	fault_proxy
	printf 'add delay=1ms,name=a\ndown refuse\nadd frob\n' >"$T/batch"
	ctl_err "line 3: unknown fault 'frob'" - <"$T/batch"
	ctl_ok list
	[ ! -s "$T/ctl.out" ]
	echo_ok "$PROXY_PORT"
	printf 'add drop,name=x\nwait open==0\n' >"$T/batch"
	ctl_err "wait and reload cannot be in a batch" - <"$T/batch"
	printf 'add drop,name=x\nreload\n' >"$T/batch"
	ctl_err "wait and reload cannot be in a batch" - <"$T/batch"
	printf 'add drop,name=x\nfrob\n' >"$T/batch"
	ctl_err "line 2: unknown command 'frob'" - <"$T/batch"
	ctl_ok list
	[ ! -s "$T/ctl.out" ]
}

@test "a batch whose lines clash with each other applies none of them" {
	start_backend echo
	fault_proxy
	printf 'add drop,name=x\nadd stall,name=x\n' >"$T/batch"
	ctl_err "line 2: fault name 'x' is in use" - <"$T/batch"
	ctl_ok list
	[ ! -s "$T/ctl.out" ]
}

@test "a batch may delete a fault it added" {
	start_backend echo
	fault_proxy
	printf 'add drop,name=a\ndel a\n' >"$T/batch"
	ctl_ok - <"$T/batch"
	ctl_ok list
	[ ! -s "$T/ctl.out" ]
}

# ---- reload, stop, the socket ----

@test "reload re-reads the config file; a bad one is refused and the old one stays" {
	start_backend source 1000
	CTL=$T/c.sock
	printf '127.0.0.1 0 127.0.0.1 %s --fault close=10,dir=down\n' \
	    "$BACKEND_PORT" >"$T/r.conf"
	start_config "$T/r.conf" --control "$CTL"
	port=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$PROXY_LOG" | head -n 1)
	run "$CLIENT" -a 10 -r 127.0.0.1 "$port" </dev/null
	[ "${lines[1]}" = "recv $(pattern_sum 10)" ]
	# The same listener line keeps its port.
	printf '127.0.0.1 0 127.0.0.1 %s --fault close=20,dir=down\n' \
	    "$BACKEND_PORT" >"$T/r.conf"
	ctl_ok reload
	has_line "$PROXY_LOG" ' reloaded:'
	run "$CLIENT" -a 10 -r 127.0.0.1 "$port" </dev/null
	[ "${lines[1]}" = "recv $(pattern_sum 20)" ]
	ctl_ok list
	grep -q ' spec=close=20,dir=down$' "$T/ctl.out"
	printf '127.0.0.1 0 127.0.0.1 %s --fault close=soon\n' \
	    "$BACKEND_PORT" >"$T/r.conf"
	ctl_err "reload failed, the running configuration stays" reload
	grep -q "invalid value 'soon' for fault 'close'" "$T/ctl.err"
	run "$CLIENT" -a 10 -r 127.0.0.1 "$port" </dev/null
	[ "${lines[1]}" = "recv $(pattern_sum 20)" ]
	ctl_err "unknown command 'reload'" reload now
}

@test "stop ends the proxy cleanly and removes the socket; ctl then cannot reach it" {
	start_backend echo
	fault_proxy
	ctl_ok stop
	[ ! -s "$T/ctl.out" ]
	wait_for 10 is_gone "$PROXY_PID"
	wait "$PROXY_PID"
	[ ! -e "$CTL" ]
	pctl list
	[ "$RC" -eq 2 ]
}

@test "the control socket is mode 0600, speaks plain lines, and names an unknown command" {
	start_backend echo
	fault_proxy
	[ "$(stat -c %a "$CTL")" = 600 ]
	[ -S "$CTL" ]
	ctl_err "unknown command 'frob'" frob
	ctl_err "unknown command 'list'" list extra
	if command -v socat >/dev/null 2>&1; then
		printf 'add drop,name=d\nlist\nfrob\n' |
		    socat -t 5 - "UNIX-CONNECT:$CTL" >"$T/plain"
		cat "$T/plain"
		[ "$(sed -n 1p "$T/plain")" = "ok d" ]
		[ "$(sed -n 2p "$T/plain")" = "fault service=$(sed -n 's/^fault service=\([^ ]*\).*/\1/p' "$T/plain") name=d fired=0 spec=drop,name=d" ]
		[ "$(sed -n 3p "$T/plain")" = "ok" ]
		[[ $(sed -n 4p "$T/plain") == "error: unknown command 'frob'"* ]]
	fi
}

@test "--control needs -w 1, and an unusable path fails the start" {
	bad_usage "--control needs -w 1" -w 2 --control "$T/c.sock" \
	    127.0.0.1 0 127.0.0.1 9
	start_fails "control socket" --control "$T/no/such/dir/c.sock" \
	    127.0.0.1 0 127.0.0.1 9
}
