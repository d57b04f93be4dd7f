#!/usr/bin/env bats
# SIGHUP re-reads the config file and switches to it; SIGUSR1 logs the
# counters.

load helper
load options_helper

# echo_rounds PORT OUT STOP: runs 50 parallel echo checks through PORT
# again and again, a line "ok 50" each in OUT, until the file STOP
# appears; at most 1000 rounds.  Fails at the first round that does.
echo_rounds() {
	local i
	for ((i = 0; i < 1000; i++)); do
		[ -e "$3" ] && return 0
		"$CLIENT" -a 60 -n 50 -g 8k -s "$i" 127.0.0.1 "$1" >>"$2" ||
		    return 1
	done
	return 1
}

@test "50 clients looping through an unchanged service see no failure while the proxy gets 20 SIGHUPs" {
	local loop i rc=0 rounds pa
	start_backend echo
	printf -- '--name a 127.0.0.1 0 127.0.0.1 %s\n' "$BACKEND_PORT" \
	    >"$T/a.conf"
	cp "$T/a.conf" "$T/run.conf"
	printf -- '--name b 127.0.0.1 0 127.0.0.1 %s\n' "$BACKEND_PORT" \
	    >>"$T/run.conf"
	start_config "$T/run.conf"
	pa=$(service_port "$PROXY_LOG" a)
	spawn single loop bash -c "$(declare -f echo_rounds); CLIENT=$CLIENT; \
	    echo_rounds $pa $T/rounds $T/stop"
	loop=$SPAWNED
	wait_for 30 eval '[ "$(lines_in "$T/rounds")" -ge 1 ]'
	for i in $(seq 20); do
		# Service b comes and goes; a stays as it was.
		if [ $((i % 2)) -eq 1 ]; then
			cp "$T/a.conf" "$T/run.conf.new"
		else
			cp "$T/a.conf" "$T/run.conf.new"
			printf -- '--name b 127.0.0.1 0 127.0.0.1 %s\n' \
			    "$BACKEND_PORT" >>"$T/run.conf.new"
		fi
		mv "$T/run.conf.new" "$T/run.conf"
		rounds=$(lines_in "$T/rounds")
		reload_proxy "$PROXY_PID" "$PROXY_LOG"
		# Clients pass through the switch, not just between them.
		wait_for 30 eval '[ "$(lines_in "$T/rounds")" -gt "$rounds" ] ||
		    is_gone "$loop"'
	done
	touch "$T/stop"
	wait_for 60 is_gone "$loop"
	wait "$loop" || rc=$?
	cat "$T/rounds" | sort | uniq -c
	[ "$rc" -eq 0 ]
	[ -z "$(grep -v '^ok 50$' "$T/rounds")" ]
	[ "$(lines_in "$T/rounds")" -ge 21 ]
	[ "$(count_lines "$PROXY_LOG" '^tcpproxy: reloaded: ')" -eq 20 ]
	no_line "$PROXY_LOG" 'reload failed'
	# a kept its listener: no ready line for it after the first.
	[ "$(count_lines "$PROXY_LOG" ' listening on .* service=a$')" -eq 1 ]
	has_line "$PROXY_LOG" '^tcpproxy: reloaded: 1 services, 1 listeners$'
	has_line "$PROXY_LOG" '^tcpproxy: reloaded: 2 services, 2 listeners$'
	no_line "$PROXY_LOG" ' close id=.*reason=(connect-|shutdown)'
	kill -0 "$PROXY_PID"
}

@test "a service added by a reload serves" {
	local a b pa pb
	start_backend echo
	a=$BACKEND_PORT
	start_backend sink
	b=$BACKEND_PORT
	printf -- '--name a 127.0.0.1 0 127.0.0.1 %s\n' "$a" >"$T/run.conf"
	start_config "$T/run.conf"
	pa=$(ready_port "$PROXY_LOG")
	printf -- '--name b 127.0.0.1 0 127.0.0.1 %s\n' "$b" >>"$T/run.conf"
	reload_proxy "$PROXY_PID" "$PROXY_LOG"
	has_line "$PROXY_LOG" '^tcpproxy: reloaded: 2 services, 2 listeners$'
	pb=$(service_port "$PROXY_LOG" b)
	"$CLIENT" -a 30 -r -g 200k -w 127.0.0.1 "$pb" >"$T/up"
	wait_for 20 has_line "$BACKEND_OUT" '^recv '
	[ "$(field "$BACKEND_OUT" recv)" = "$(field "$T/up" sent)" ]
	# a still answers on the port it had.
	run "$CLIENT" -a 30 -n 3 -g 10k 127.0.0.1 "$pa"
	[ "$output" = "ok 3" ]
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " close id=")" -eq 4 ]'
	has_line "$PROXY_LOG" ' close id=.* up=204800 down=0 .* service=b$'
	[ "$(count_lines "$PROXY_LOG" ' close id=.* service=a$')" -eq 3 ]
}

@test "a removed service's open bridge finishes with its bytes intact, and its port is then refused" {
	local pa pb c1 rc=0
	start_backend echo
	cat >"$T/run.conf" <<EOF
--name a 127.0.0.1 0 127.0.0.1 $BACKEND_PORT
--name b --half-close 127.0.0.1 0 127.0.0.1 $BACKEND_PORT
EOF
	start_config "$T/run.conf"
	pa=$(service_port "$PROXY_LOG" a)
	pb=$(service_port "$PROXY_LOG" b)
	# b half-closes: the client's EOF goes on, and all the echo comes
	# back after it, if the bridge keeps b's settings.
	mkfifo "$T/in1"
	SPAWN_STDIN=$T/in1 spawn single c1 "$CLIENT" -a 60 -w 127.0.0.1 "$pb"
	c1=$SPAWNED
	exec 4>"$T/in1"
	printf 'before\n' | tee "$T/sent" >&4
	wait_for 10 grep -q before "$T/c1.out"
	# b goes.
	printf -- '--name a 127.0.0.1 0 127.0.0.1 %s\n' "$BACKEND_PORT" \
	    >"$T/run.conf"
	reload_proxy "$PROXY_PID" "$PROXY_LOG"
	has_line "$PROXY_LOG" '^tcpproxy: reloaded: 1 services, 1 listeners$'
	# Its port refuses at once...
	run "$CLIENT" -a 10 -r -g 10 127.0.0.1 "$pb"
	echo "$output"
	[ "$status" -eq 1 ]
	[[ $output == *"refused"* ]]
	# ...while the bridge it had still relays, 1 MiB more, whole.
	head -c 1048576 /dev/urandom >"$T/more"
	cat "$T/more" >>"$T/sent"
	cat "$T/more" >&4
	exec 4>&-
	wait_for 30 is_gone "$c1"
	wait "$c1" || rc=$?
	[ "$rc" -eq 0 ]
	cmp "$T/sent" "$T/c1.out"
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 .* up=1048583 down=1048583 .* service=b$'
	run "$CLIENT" -a 10 -r -g 10 127.0.0.1 "$pb"
	[ "$status" -eq 1 ]
	# a never noticed.
	run "$CLIENT" -a 30 -n 2 -g 10k 127.0.0.1 "$pa"
	[ "$output" = "ok 2" ]
}

@test "a broken config on reload leaves the running one serving and logs why" {
	local pa
	start_backend echo
	printf -- '--name a 127.0.0.1 0 127.0.0.1 %s\n' "$BACKEND_PORT" \
	    >"$T/run.conf"
	start_config "$T/run.conf"
	pa=$(ready_port "$PROXY_LOG")
	# A new service with a mistake on its line.
	printf -- '--name b 127.0.0.1 0 127.0.0.1 %s --bogus\n' \
	    "$BACKEND_PORT" >>"$T/run.conf"
	reload_proxy "$PROXY_PID" "$PROXY_LOG"
	has_line "$PROXY_LOG" "^tcpproxy: reload failed, the running configuration stays: $T/run\\.conf:2: unknown option '--bogus'\$"
	run "$CLIENT" -a 30 -n 3 -g 10k 127.0.0.1 "$pa"
	[ "$output" = "ok 3" ]
	no_line "$PROXY_LOG" 'service=b'
	# A new service whose port is taken: nothing of it is kept either.
	start_backend echo
	printf -- '--name a 127.0.0.1 0 127.0.0.1 %s\n--name c 127.0.0.1 %s 127.0.0.1 9\n' \
	    "$BACKEND_PORT" "$BACKEND_PORT" >"$T/run.conf"
	reload_proxy "$PROXY_PID" "$PROXY_LOG"
	has_line "$PROXY_LOG" "^tcpproxy: reload failed, the running configuration stays: .*127\\.0\\.0\\.1:$BACKEND_PORT"
	# The file gone.
	rm "$T/run.conf"
	reload_proxy "$PROXY_PID" "$PROXY_LOG"
	has_line "$PROXY_LOG" "^tcpproxy: reload failed, the running configuration stays: .*$T/run\\.conf"
	[ "$(count_lines "$PROXY_LOG" ' reload failed')" -eq 3 ]
	no_line "$PROXY_LOG" ' reloaded: '
	run "$CLIENT" -a 30 -n 3 -g 10k 127.0.0.1 "$pa"
	[ "$output" = "ok 3" ]
	# Fixed, it takes.
	printf -- '--name a 127.0.0.1 0 127.0.0.1 %s\n' "$BACKEND_PORT" \
	    >"$T/run.conf"
	reload_proxy "$PROXY_PID" "$PROXY_LOG"
	has_line "$PROXY_LOG" '^tcpproxy: reloaded: 1 services, 1 listeners$'
	run "$CLIENT" -a 30 -n 3 -g 10k 127.0.0.1 "$pa"
	[ "$output" = "ok 3" ]
}

@test "the proxy has as many descriptors after 100 reloads as before" {
	local before after i
	need_proc
	start_backend echo
	cat >"$T/two.conf" <<EOF
--name a 127.0.0.1 0 127.0.0.1 $BACKEND_PORT
--name b 127.0.0.1 0 127.0.0.1 $BACKEND_PORT --health-check 5
EOF
	cp "$T/two.conf" "$T/three.conf"
	printf -- '--name c 127.0.0.1 0 127.0.0.1 %s\n' "$BACKEND_PORT" \
	    >>"$T/three.conf"
	cp "$T/two.conf" "$T/run.conf"
	start_config "$T/run.conf"
	run "$CLIENT" -a 30 -n 5 -g 10k 127.0.0.1 "$(service_port "$PROXY_LOG" a)"
	[ "$output" = "ok 5" ]
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " close id=")" -eq 5 ]'
	before=$(fd_count "$PROXY_PID")
	# Half of them add service c (a new listener), half take it away.
	for i in $(seq 100); do
		if [ $((i % 2)) -eq 1 ]; then
			cp "$T/three.conf" "$T/run.conf"
		else
			cp "$T/two.conf" "$T/run.conf"
		fi
		reload_proxy "$PROXY_PID" "$PROXY_LOG"
	done
	[ "$(count_lines "$PROXY_LOG" '^tcpproxy: reloaded: ')" -eq 100 ]
	run "$CLIENT" -a 30 -n 5 -g 10k 127.0.0.1 "$(service_port "$PROXY_LOG" b)"
	[ "$output" = "ok 5" ]
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " close id=")" -eq 10 ]'
	after=$(fd_count "$PROXY_PID")
	echo "descriptors: $before before, $after after"
	ls -l "/proc/$PROXY_PID/fd"
	[ "$after" -eq "$before" ]
}

# stats_line FILE SERVICE [BACKEND]: the last stats line of FILE for
# SERVICE (or for its BACKEND), without its down_for=... (a time).
stats_line() {
	if [ $# -eq 3 ]; then
		grep -F "tcpproxy: stats service=$2 backend=$3 " "$1"
	else
		grep -F "tcpproxy: stats service=$2 open=" "$1"
	fi | tail -n 1 | sed 's/ down_for=[0-9.]*//'
}

@test "SIGUSR1 logs per service and per backend counters that match the traffic" {
	local s1 s2 src dead
	need_socat
	start_backend sink
	s1=$BACKEND_PORT
	start_backend sink
	s2=$BACKEND_PORT
	start_backend source 5000
	src=$BACKEND_PORT
	start_backend closed
	dead=$BACKEND_PORT
	cat >"$T/run.conf" <<EOF
--name up 127.0.0.1 0 127.0.0.1 $s1 127.0.0.1 $s2
--name down -d 127.0.0.2 127.0.0.1 0 127.0.0.1 $src
--name dead 127.0.0.1 0 127.0.0.1 $dead
EOF
	start_config "$T/run.conf"
	# Three uploads, taken in turn: 1000 and 3000 bytes to the first
	# sink, 2000 to the second.
	"$CLIENT" -a 30 -r -g 1000 -w 127.0.0.1 "$(service_port "$PROXY_LOG" up)" >/dev/null
	"$CLIENT" -a 30 -r -g 2000 -w 127.0.0.1 "$(service_port "$PROXY_LOG" up)" >/dev/null
	"$CLIENT" -a 30 -r -g 3000 -w 127.0.0.1 "$(service_port "$PROXY_LOG" up)" >/dev/null
	# One download, one refused client, one that no backend takes.
	"$CLIENT" -a 30 -r -g 0 127.0.0.1 "$(service_port "$PROXY_LOG" down)"
	printf 'x' | from 127.0.0.2 "$(service_port "$PROXY_LOG" down)"
	"$CLIENT" -a 30 -r -g 0 127.0.0.1 "$(service_port "$PROXY_LOG" dead)"
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " (close|refuse) id=")" -eq 6 ]'
	kill -USR1 "$PROXY_PID"
	wait_for 10 has_line "$PROXY_LOG" '^tcpproxy: stats service=dead backend='
	grep ' stats ' "$PROXY_LOG"
	[ "$(stats_line "$PROXY_LOG" up)" = "tcpproxy: stats service=up open=0 total=3 refused=0 failed=0 up=6000 down=0 spliced=0" ]
	[ "$(stats_line "$PROXY_LOG" up "127.0.0.1:$s1")" = "tcpproxy: stats service=up backend=127.0.0.1:$s1 state=up open=0 total=2 failed=0 up=4000 down=0" ]
	[ "$(stats_line "$PROXY_LOG" up "127.0.0.1:$s2")" = "tcpproxy: stats service=up backend=127.0.0.1:$s2 state=up open=0 total=1 failed=0 up=2000 down=0" ]
	[ "$(stats_line "$PROXY_LOG" down)" = "tcpproxy: stats service=down open=0 total=1 refused=1 failed=0 up=0 down=5000 spliced=0" ]
	[ "$(stats_line "$PROXY_LOG" down "127.0.0.1:$src")" = "tcpproxy: stats service=down backend=127.0.0.1:$src state=up open=0 total=1 failed=0 up=0 down=5000" ]
	[[ "$(stats_line "$PROXY_LOG" dead)" =~ ^"tcpproxy: stats service=dead open=0 total="[01]" refused=0 failed=1 up=0 down=0 spliced=0"$ ]]
	[ "$(stats_line "$PROXY_LOG" dead "127.0.0.1:$dead")" = "tcpproxy: stats service=dead backend=127.0.0.1:$dead state=down open=0 total=0 failed=1 up=0 down=0" ]
	has_line "$PROXY_LOG" "^tcpproxy: stats service=dead backend=127\\.0\\.0\\.1:$dead state=down down_for=[0-9]+\\.[0-9]+ "
	[ "$(count_lines "$PROXY_LOG" ' stats service=')" -eq 7 ]
	# A bridge still open counts as open; the counters carry on.
	mkfifo "$T/in1"
	SPAWN_STDIN=$T/in1 spawn single c1 "$CLIENT" -a 60 -r -w 127.0.0.1 \
	    "$(service_port "$PROXY_LOG" up)"
	exec 4>"$T/in1"
	printf '12345' >&4
	wait_for 10 has_line "$PROXY_LOG" ' open id=7 '
	kill -USR1 "$PROXY_PID"
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " stats service=")" -eq 14 ]'
	[[ "$(stats_line "$PROXY_LOG" up)" =~ ^"tcpproxy: stats service=up open=1 total=4 refused=0 failed=0 up="600[05]" down=0 spliced=0"$ ]]
	exec 4>&-
	wait_for 10 has_line "$PROXY_LOG" ' close id=7 '
	kill -USR1 "$PROXY_PID"
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " stats service=")" -eq 21 ]'
	[ "$(stats_line "$PROXY_LOG" up)" = "tcpproxy: stats service=up open=0 total=4 refused=0 failed=0 up=6005 down=0 spliced=0" ]
}

@test "with -w 2 a reload serves a new service, old bridges finish, and SIGTERM still ends everything with status 0" {
	local a b pa pb c1 kids k rc=0
	need_proc
	start_backend echo
	a=$BACKEND_PORT
	start_backend echo
	b=$BACKEND_PORT
	printf -- '--name a 127.0.0.1 0 127.0.0.1 %s\n' "$a" >"$T/run.conf"
	start_config "$T/run.conf" -w 2
	pa=$(ready_port "$PROXY_LOG")
	wait_for 10 eval '[ "$(children_of "$PROXY_PID" | wc -l)" -eq 2 ]'
	# A bridge open across the reload, on an old worker.
	mkfifo "$T/in1"
	SPAWN_STDIN=$T/in1 spawn single c1 "$CLIENT" -a 60 -w 127.0.0.1 "$pa"
	c1=$SPAWNED
	exec 4>"$T/in1"
	echo before >&4
	wait_for 10 grep -q before "$T/c1.out"
	printf -- '--name b 127.0.0.1 0 127.0.0.1 %s\n' "$b" >>"$T/run.conf"
	reload_proxy "$PROXY_PID" "$PROXY_LOG"
	has_line "$PROXY_LOG" '^tcpproxy: reloaded: 2 services, 2 listeners$'
	pb=$(service_port "$PROXY_LOG" b)
	run "$CLIENT" -a 30 -n 20 -g 10k 127.0.0.1 "$pb"
	[ "$output" = "ok 20" ]
	run "$CLIENT" -a 30 -n 20 -g 10k 127.0.0.1 "$pa"
	[ "$output" = "ok 20" ]
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " close id=.* service=b\$")" -eq 20 ]'
	# The old bridge still relays, then ends.
	echo after >&4
	wait_for 10 grep -q after "$T/c1.out"
	exec 4>&-
	wait_for 10 is_gone "$c1"
	[ "$(cat "$T/c1.out")" = "before
after" ]
	kids=$(children_of "$PROXY_PID")
	echo "workers: $kids"
	[ -n "$kids" ]
	kill -TERM "$PROXY_PID"
	wait_for 20 is_gone "$PROXY_PID"
	wait "$PROXY_PID" || rc=$?
	[ "$rc" -eq 0 ]
	for k in $kids; do
		wait_for 10 is_gone "$k"
	done
}
