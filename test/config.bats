#!/usr/bin/env bats
# Config files (-f): several services from one file, rinetd.conf's
# forms, rinetd's log files, the file's syntax, its errors, and
# --check-config, --pid-file.

load helper
load options_helper

# bad_config LINE WORD: tcpproxy -f $T/bad.conf (written from stdin
# first) exits 2 and its first line is "tcpproxy: FILE:LINE: " naming
# WORD; --check-config says the same and exits 2 too.  (That no usage
# follows is the test "an error in a config file is one line...".)
bad_config() {
	local line=$1 word=$2
	cat >"$T/bad.conf"
	run $LIMIT "$TCPPROXY" -f "$T/bad.conf"
	echo "$output"
	[ "$status" -eq 2 ]
	[[ ${lines[0]} == "tcpproxy: $T/bad.conf:$line: "*"$word"* ]]
	[ "$(grep -c '^tcpproxy: ' <<<"$output")" -eq 1 ]
	run $LIMIT "$TCPPROXY" --check-config -f "$T/bad.conf"
	echo "$output"
	[ "$status" -eq 2 ]
	[[ ${lines[0]} == "tcpproxy: $T/bad.conf:$line: "*"$word"* ]]
	[[ $output != *"configuration ok"* ]]
}

# port_free PORT: a server can bind PORT on 127.0.0.1 (and then lets go).
port_free() {
	"$BACKEND" -p "$1" freeport >/dev/null 2>&1
}

# ---- several services ----

@test "three services from one config file each relay byte for byte" {
	local echo_port sink_out source_out pe ps pd
	start_backend echo
	echo_port=$BACKEND_PORT
	start_backend sink
	sink_out=$BACKEND_OUT
	ps=$BACKEND_PORT
	start_backend source 3m
	source_out=$BACKEND_OUT
	pd=$BACKEND_PORT
	cat >"$T/three.conf" <<EOF
--name echo 127.0.0.1 0 127.0.0.1 $echo_port
--name upload 127.0.0.1:0 127.0.0.1:$ps
--name download 127.0.0.1 0 127.0.0.1 $pd
EOF
	start_config "$T/three.conf"
	pe=$(service_port "$PROXY_LOG" echo)
	ps=$(service_port "$PROXY_LOG" upload)
	pd=$(service_port "$PROXY_LOG" download)
	[ "$pe" != "$ps" ] && [ "$ps" != "$pd" ] && [ "$pe" != "$pd" ]
	run "$CLIENT" -a 60 -n 5 -g 1m 127.0.0.1 "$pe"
	[ "$output" = "ok 5" ]
	"$CLIENT" -a 60 -r -g 2m -w 127.0.0.1 "$ps" >"$T/up"
	wait_for 20 has_line "$sink_out" '^recv '
	[ "$(field "$sink_out" recv)" = "$(field "$T/up" sent)" ]
	"$CLIENT" -a 60 -r -g 0 127.0.0.1 "$pd" >"$T/down"
	[ "$(field "$T/down" recv)" = "$(field "$source_out" sent)" ]
	[ "$(field "$T/down" recv | cut -d' ' -f1)" = 3145728 ]
	# Each service's lines carry its name, at the very end.
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " close id=")" -eq 7 ]'
	[ "$(count_lines "$PROXY_LOG" " close id=.* up=1048576 down=1048576 .*backend=127\\.0\\.0\\.1:$echo_port service=echo\$")" -eq 5 ]
	has_line "$PROXY_LOG" ' close id=.* up=2097152 down=0 .* service=upload$'
	has_line "$PROXY_LOG" ' close id=.* up=0 down=3145728 .* service=download$'
	[ "$(count_lines "$PROXY_LOG" ' open id=.* service=echo$')" -eq 5 ]
}

@test "the command line's own rule is one more service beside the file's" {
	local a b pa
	start_backend echo
	a=$BACKEND_PORT
	start_backend echo
	b=$BACKEND_PORT
	printf -- '--name filed 127.0.0.1 0 127.0.0.1 %s\n' "$a" >"$T/one.conf"
	run $LIMIT "$TCPPROXY" --check-config -f "$T/one.conf" \
	    --name typed 127.0.0.1 0 127.0.0.1 "$b"
	echo "$output"
	[ "$status" -eq 0 ]
	[ "$output" = "tcpproxy: configuration ok: 2 services" ]
	start_config "$T/one.conf" --name typed 127.0.0.1 0 127.0.0.1 "$b"
	pa=$(service_port "$PROXY_LOG" filed)
	run "$CLIENT" -a 30 -n 2 -g 10k 127.0.0.1 "$pa"
	[ "$output" = "ok 2" ]
	run "$CLIENT" -a 30 -n 3 -g 10k 127.0.0.1 \
	    "$(service_port "$PROXY_LOG" typed)"
	[ "$output" = "ok 3" ]
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " close id=")" -eq 5 ]'
	[ "$(count_lines "$PROXY_LOG" " backend=127\\.0\\.0\\.1:$a service=filed\$")" -eq 2 ]
	[ "$(count_lines "$PROXY_LOG" " backend=127\\.0\\.0\\.1:$b service=typed\$")" -eq 3 ]
}

# ---- rinetd.conf ----

@test "a rinetd.conf's allow and deny lines and [src=ADDR] work as in rinetd" {
	local one relay sink1 p1 p2
	need_socat
	start_backend sink
	one=$BACKEND_OUT
	sink1=$BACKEND_PORT
	# The second rule's server is another proxy, whose open lines show
	# the address the first one connected from.
	start_backend sink
	relay=$BACKEND_OUT
	start_proxy 127.0.0.1 0 127.0.0.1 "$BACKEND_PORT"
	cat >"$T/rinetd.conf" <<EOF
# global: only 127.0.0.*, never 127.0.0.4
allow 127.0.0.*
deny 127.0.0.4
127.0.0.1 0 127.0.0.1 $sink1
# for the rule above only
deny 127.0.0.3
127.0.0.2 0 127.0.0.1 $PROXY_PORT [src=127.0.0.5]
EOF
	run $LIMIT "$TCPPROXY" --check-config -f "$T/rinetd.conf"
	echo "$output"
	[ "$status" -eq 0 ]
	[ "$output" = "tcpproxy: configuration ok: 2 services" ]
	start_config "$T/rinetd.conf"
	p1=$(service_port "$PROXY_LOG" 127.0.0.1:0)
	p2=$(service_port "$PROXY_LOG" 127.0.0.2:0)
	has_line "$PROXY_LOG" "^tcpproxy: listening on 127\\.0\\.0\\.2:$p2 service=127\\.0\\.0\\.2:0\$"
	printf 'one' | from 127.0.0.1 "$p1"
	printf 'two' | from 127.0.0.1 "$p2" 127.0.0.2
	printf 'three' | from 127.0.0.3 "$p2" 127.0.0.2
	# Refused: 127.0.0.3 by the first rule's deny, 127.0.0.4 by the
	# global deny, 127.0.1.1 by the global allow.
	printf 'x' | from 127.0.0.3 "$p1"
	printf 'x' | from 127.0.0.4 "$p1"
	printf 'x' | from 127.0.0.4 "$p2" 127.0.0.2
	printf 'x' | from 127.0.1.1 "$p1"
	printf 'x' | from 127.0.1.1 "$p2" 127.0.0.2
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " (close|refuse) id=")" -eq 8 ]'
	has_line "$PROXY_LOG" ' refuse id=4 client=127\.0\.0\.3:[0-9]+ reason=denied service=127\.0\.0\.1:0$'
	has_line "$PROXY_LOG" ' refuse id=5 client=127\.0\.0\.4:[0-9]+ reason=denied service=127\.0\.0\.1:0$'
	has_line "$PROXY_LOG" ' refuse id=6 client=127\.0\.0\.4:[0-9]+ reason=denied service=127\.0\.0\.2:0$'
	has_line "$PROXY_LOG" ' refuse id=7 client=127\.0\.1\.1:[0-9]+ reason=not-allowed service=127\.0\.0\.1:0$'
	has_line "$PROXY_LOG" ' refuse id=8 client=127\.0\.1\.1:[0-9]+ reason=not-allowed service=127\.0\.0\.2:0$'
	[ "$(count_lines "$PROXY_LOG" ' refuse id=')" -eq 5 ]
	# What was served arrived; the relayed ones came from 127.0.0.5.
	wait_for 10 has_line "$one" '^recv 3 '
	wait_for 10 eval '[ "$(count_lines "$relay" "^recv ")" -eq 2 ]'
	[ "$(count_lines "$one" '^recv ')" -eq 1 ]
	has_line "$relay" '^recv 3 '
	has_line "$relay" '^recv 5 '
	[ "$(count_lines "$T/proxy1.err" ' open id=[0-9]+ client=127\.0\.0\.5:')" -eq 2 ]
	[ "$(count_lines "$T/proxy1.err" ' open id=')" -eq 2 ]
}

@test "rinetd's own sample rinetd.conf, with forwarding rules filled in, works" {
	local e s pe ps
	start_backend echo
	e=$BACKEND_PORT
	start_backend sink
	s=$BACKEND_PORT
	# rinetd's rinetd.conf as Debian ships it, tabs and all.
	cat >"$T/rinetd.conf" <<EOF
#
# this is the configuration file for rinetd, the internet redirection server
#
# you may specify global allow and deny rules here
# only ip addresses are matched, hostnames cannot be specified here
# the wildcards you may use are * and ?
#
allow 127.0.0.*
# deny 192.168.2.1?


#
# forwarding rules come here
#
# you may specify allow and deny rules after a specific forwarding rule
# to apply to only that forwarding rule
#
# bindadress    bindport  connectaddress  connectport
127.0.0.1	0	127.0.0.1	$e
127.0.0.2 0     127.0.0.1 $s
#127.0.0.1 4000/udp 127.0.0.1 22

# logging information
logfile $T/rinetd.log

# uncomment the following line if you want web-server style logfile format
# logcommon
EOF
	run $LIMIT "$TCPPROXY" --check-config -f "$T/rinetd.conf"
	echo "$output"
	[ "$status" -eq 0 ]
	[ "$output" = "tcpproxy: configuration ok: 2 services" ]
	start_config "$T/rinetd.conf"
	pe=$(service_port "$PROXY_LOG" 127.0.0.1:0)
	ps=$(service_port "$PROXY_LOG" 127.0.0.2:0)
	printf 'hello\n' >"$T/in"
	"$CLIENT" -a 30 -k 6 127.0.0.1 "$pe" <"$T/in" >"$T/out"
	[ "$(cat "$T/out")" = hello ]
	"$CLIENT" -a 30 -r -g 100k -w 127.0.0.2 "$ps" >"$T/up"
	wait_for 20 has_line "$BACKEND_OUT" '^recv '
	[ "$(field "$BACKEND_OUT" recv)" = "$(field "$T/up" sent)" ]
	wait_for 10 eval '[ "$(lines_in "$T/rinetd.log")" -eq 2 ]'
}

# rinetd_fields FILE N: prints fields 2 to 9 of line N of rinetd's tab
# separated log FILE, space separated, after checking that the line has
# nine fields and starts with a date such as 01/Dec/2025:13:14:15.
rinetd_fields() {
	awk -F '\t' -v n="$2" 'NR == n {
		if (NF != 9) { print "fields: " NF > "/dev/stderr"; exit 1 }
		if ($1 !~ /^[0-3][0-9]\/[A-Z][a-z][a-z]\/[0-9][0-9][0-9][0-9]:[0-2][0-9]:[0-5][0-9]:[0-6][0-9]/) {
			print "date: " $1 > "/dev/stderr"; exit 1
		}
		print $2, $3, $4, $5, $6, $7, $8, $9
	}' "$1"
}

@test "logfile and logcommon lines have rinetd's fields" {
	local s d conf ps pd
	start_backend sink
	s=$BACKEND_PORT
	start_backend source 5000
	d=$BACKEND_PORT
	for conf in tab common; do
		{
			echo "logfile $T/$conf.log"
			[ "$conf" = tab ] || echo logcommon
			echo "127.0.0.1 0 127.0.0.1 $s"
			echo "127.0.0.2 0 127.0.0.1 $d"
		} >"$T/$conf.conf"
		start_config "$T/$conf.conf"
		ps=$(service_port "$PROXY_LOG" 127.0.0.1:0)
		pd=$(service_port "$PROXY_LOG" 127.0.0.2:0)
		"$CLIENT" -a 30 -r -g 3000 -w 127.0.0.1 "$ps" >/dev/null
		wait_for 10 eval '[ "$(lines_in "$T/$conf.log")" -eq 1 ]'
		"$CLIENT" -a 30 -r -g 0 127.0.0.2 "$pd" >/dev/null
		wait_for 10 eval '[ "$(lines_in "$T/$conf.log")" -eq 2 ]'
		cat "$T/$conf.log"
	done
	# date, client, bindaddress, bindport, connectaddress, connectport,
	# bytes in (from the client), bytes out (to it), result.
	[[ "$(rinetd_fields "$T/tab.log" 1)" =~ ^"127.0.0.1 127.0.0.1 0 127.0.0.1 $s 3000 0 done-"(local|remote)"-closed"$ ]]
	[[ "$(rinetd_fields "$T/tab.log" 2)" =~ ^"127.0.0.1 127.0.0.2 0 127.0.0.1 $d 0 5000 done-"(local|remote)"-closed"$ ]]
	# A web server's common log: the bytes out where a response's size
	# goes, the bytes in last.
	has_line "$T/common.log" "^127\\.0\\.0\\.1 - - \\[[0-3][0-9]/[A-Z][a-z]{2}/[0-9]{4}:[0-9]{2}:[0-9]{2}:[0-9]{2} [-+][0-9]{4}\\] \"GET /rinetd-services/127\\.0\\.0\\.1/0/127\\.0\\.0\\.1/$s/done-(local|remote)-closed HTTP/1\\.0\" 200 0 - - - 3000\$"
	has_line "$T/common.log" "^127\\.0\\.0\\.1 - - \\[[^]]+\\] \"GET /rinetd-services/127\\.0\\.0\\.2/0/127\\.0\\.0\\.1/$d/done-(local|remote)-closed HTTP/1\\.0\" 200 5000 - - - 0\$"
	[ "$(lines_in "$T/common.log")" -eq 2 ]
}

# In rinetd the "local" side is the server it connects to and the
# "remote" side the client: a bridge the client ends is
# done-remote-closed, one the server ends done-local-closed.
@test "the logfile's result says which side closed first, in rinetd's words" {
	local e b pe pb
	start_backend echo
	e=$BACKEND_PORT
	start_backend burst 1000
	b=$BACKEND_PORT
	cat >"$T/r.conf" <<EOF
logfile $T/r.log
127.0.0.1 0 127.0.0.1 $e
127.0.0.2 0 127.0.0.1 $b
EOF
	start_config "$T/r.conf"
	pe=$(service_port "$PROXY_LOG" 127.0.0.1:0)
	pb=$(service_port "$PROXY_LOG" 127.0.0.2:0)
	# The client closes once its 4 bytes are back.
	printf 'ping' | "$CLIENT" -a 30 -k 4 127.0.0.1 "$pe" >/dev/null
	wait_for 10 has_line "$PROXY_LOG" ' close id=1 .*reason=client-closed'
	wait_for 10 eval '[ "$(lines_in "$T/r.log")" -eq 1 ]'
	# The server sends 1000 bytes and closes.
	"$CLIENT" -a 30 -r -g 0 127.0.0.2 "$pb" >/dev/null
	wait_for 10 has_line "$PROXY_LOG" ' close id=2 .*reason=server-closed'
	wait_for 10 eval '[ "$(lines_in "$T/r.log")" -eq 2 ]'
	cat "$T/r.log"
	[ "$(rinetd_fields "$T/r.log" 1)" = "127.0.0.1 127.0.0.1 0 127.0.0.1 $e 4 4 done-remote-closed" ]
	[ "$(rinetd_fields "$T/r.log" 2)" = "127.0.0.1 127.0.0.2 0 127.0.0.1 $b 0 1000 done-local-closed" ]
}

@test "a client that a rinetd allow or deny refuses gets a logfile line, as in rinetd" {
	local p
	need_socat
	start_backend echo
	cat >"$T/r.conf" <<EOF
logfile $T/r.log
deny 127.0.0.2
allow 127.0.0.?
127.0.0.1 0 127.0.0.1 $BACKEND_PORT
EOF
	start_config "$T/r.conf"
	p=$(ready_port "$PROXY_LOG")
	printf 'x' | from 127.0.0.2 "$p"
	printf 'x' | from 127.0.0.10 "$p"
	wait_for 10 eval '[ "$(count_lines "$PROXY_LOG" " refuse id=")" -eq 2 ]'
	has_line "$PROXY_LOG" ' refuse id=1 client=127\.0\.0\.2:[0-9]+ reason=denied$'
	has_line "$PROXY_LOG" ' refuse id=2 client=127\.0\.0\.10:[0-9]+ reason=not-allowed$'
	wait_for 10 eval '[ "$(lines_in "$T/r.log")" -eq 2 ]'
	[ "$(rinetd_fields "$T/r.log" 1)" = "127.0.0.2 127.0.0.1 0 127.0.0.1 $BACKEND_PORT 0 0 denied" ]
	[ "$(rinetd_fields "$T/r.log" 2)" = "127.0.0.10 127.0.0.1 0 127.0.0.1 $BACKEND_PORT 0 0 not-allowed" ]
}

# ---- syntax ----

@test "comments, continuations, quotes and default lines are read as documented" {
	local pa pb
	need_socat
	start_backend echo
	cat >"$T/syntax.conf" <<EOF
# a comment line
   # an indented one

--half-close	# a default for the rules below
--name "web #1" \\
    127.0.0.1 0 \\
    127.0.0.1 $BACKEND_PORT     # after a rule
--name plain#2 "127.0.0.1:0" "127.0.0.1" $BACKEND_PORT
EOF
	cat "$T/syntax.conf"
	run $LIMIT "$TCPPROXY" --check-config -f "$T/syntax.conf"
	echo "$output"
	[ "$status" -eq 0 ]
	[ "$output" = "tcpproxy: configuration ok: 2 services" ]
	start_config "$T/syntax.conf"
	pa=$(service_port "$PROXY_LOG" 'web #1')
	pb=$(service_port "$PROXY_LOG" 'plain#2')
	# The --half-close default holds for both rules: socat's EOF comes
	# first, and the echo still comes back.
	run from 127.0.0.1 "$pa" <<<"first"
	[ "$output" = first ]
	run from 127.0.0.1 "$pb" <<<"second"
	[ "$output" = second ]
	wait_for 10 has_line "$PROXY_LOG" ' close id=.* service=web #1$'
	wait_for 10 has_line "$PROXY_LOG" ' close id=.* service=plain#2$'
}

# ---- errors ----

@test "an unknown option in a config file is an error naming its file, line and word" {
	printf '# first\n127.0.0.1 0 127.0.0.1 9 --bogus\n' |
	    bad_config 2 "unknown option '--bogus'"
	printf -- '--nonsense\n127.0.0.1 0 127.0.0.1 9\n' |
	    bad_config 1 "'--nonsense'"
	printf -- '-Z 127.0.0.1 0 127.0.0.1 9\n' | bad_config 1 "'-Z'"
}

@test "a bad or missing port in a config file is an error naming its file, line and word" {
	printf '127.0.0.1 0 127.0.0.1 9\n\n127.0.0.1 0 127.0.0.1 99999\n' |
	    bad_config 3 "'99999'"
	printf '127.0.0.1 http-nonsense 127.0.0.1 9\n' |
	    bad_config 1 "'http-nonsense'"
	printf '127.0.0.1 0 127.0.0.1 80x\n' | bad_config 1 "'80x'"
	printf '127.0.0.1 0 127.0.0.1\n' | bad_config 1 "missing remote port"
	printf -- '--name x 127.0.0.1 0 127.0.0.1 9 127.0.0.2\n' |
	    bad_config 1 "'127.0.0.2'"
}

@test "a /udp port in a config file is an error naming its line" {
	printf '# rinetd can, TCP cannot\n127.0.0.1 4000/udp 127.0.0.1 22\n' |
	    bad_config 2 "'4000/udp'"
	printf '127.0.0.1 4000 127.0.0.1 3000/udp\n' | bad_config 1 "'3000/udp'"
}

@test "a process-wide option on a rule line is an error naming it as written" {
	local opt
	for opt in --verbose --quiet '--workers 2' '--grace 1' \
	    "--pid-file $T/p" "--dump-file $T/d" "--dump-dir $T/dd" \
	    '--busy-poll 10' '--hexdump' '--user nobody'; do
		echo "$opt"
		printf '%s 127.0.0.1 0 127.0.0.1 9\n' "$opt" |
		    bad_config 1 "option '${opt%% *}' applies to the whole process"
	done
	# The same options are fine on a line of their own before the rules.
	printf -- '--quiet\n--grace 1\n127.0.0.1 0 127.0.0.1 9\n' >"$T/ok.conf"
	run $LIMIT "$TCPPROXY" --check-config -f "$T/ok.conf"
	[ "$status" -eq 0 ]
	# A short option is named as written too.
	for opt in -v -q '-w 2' -x '-u nobody'; do
		echo "$opt"
		printf '%s 127.0.0.1 0 127.0.0.1 9\n' "$opt" |
		    bad_config 1 "option '${opt%% *}' applies to the whole process"
	done
}

@test "a service name used twice in a config file is an error naming it" {
	printf -- '--name web 127.0.0.1 0 127.0.0.1 9\n--name web 127.0.0.1 0 127.0.0.1 10\n' |
	    bad_config 2 "'web'"
}

@test "rules that share a default name (port 0 twice) are told apart by #2" {
	printf '127.0.0.1 0 127.0.0.1 9\n# two\n127.0.0.1 0 127.0.0.1 10\n' \
	    >"$T/two.conf"
	start_config "$T/two.conf"
	wait_for 10 has_line "$PROXY_LOG" ' service=127\.0\.0\.1:0#2$'
	has_line "$PROXY_LOG" ' service=127\.0\.0\.1:0$'
}

@test "an unterminated quote in a config file is an error naming its line" {
	printf -- '--name "web 127.0.0.1 0 127.0.0.1 9\n' | bad_config 1 quote
	printf '127.0.0.1 0 127.0.0.1 9\n--name ok 127.0.0.1 0 "127.0.0.1 9\n' |
	    bad_config 2 quote
}

@test "an error in a config file is one line naming it, without the usage" {
	printf '127.0.0.1 0 127.0.0.1 9 --bogus\n' >"$T/bad.conf"
	run $LIMIT "$TCPPROXY" -f "$T/bad.conf"
	echo "$output"
	[ "$status" -eq 2 ]
	[ "${#lines[@]}" -eq 1 ]
	[ "${lines[0]}" = "tcpproxy: $T/bad.conf:1: option '--bogus' after the addresses" ] ||
	    [ "${lines[0]}" = "tcpproxy: $T/bad.conf:1: unknown option '--bogus'" ]
}

# ---- --check-config ----

@test "--check-config finds a name that does not resolve and a listen address used twice, binding nothing" {
	local p q
	p=$(free_port)
	q=$(free_port)
	cat >"$T/check.conf" <<EOF
--name a 127.0.0.1 $p 127.0.0.1 9
--name b 127.0.0.1:$p 127.0.0.1 10
--name c 127.0.0.1 $q no-such-host.invalid 9
EOF
	run $LIMIT "$TCPPROXY" --check-config -f "$T/check.conf"
	echo "$output"
	[ "$status" -eq 2 ]
	[[ $output == *"tcpproxy: $T/check.conf:2: "*"127.0.0.1:$p"* ]]
	[[ $output == *"tcpproxy: $T/check.conf:3: "*"'no-such-host.invalid'"* ]]
	[ "$(grep -c '^tcpproxy: ' <<<"$output")" -eq 2 ]
	[[ $output != *"configuration ok"* ]]
	# It bound nothing: both ports are free.
	port_free "$p"
	port_free "$q"
	# A listen address may not be given twice across services either
	# when one comes from the command line.
	printf -- '--name a 127.0.0.1 %s 127.0.0.1 9\n' "$p" >"$T/one.conf"
	run $LIMIT "$TCPPROXY" --check-config -f "$T/one.conf" 127.0.0.1 "$p" \
	    127.0.0.1 10
	echo "$output"
	[ "$status" -eq 2 ]
	[[ ${lines[0]} == "tcpproxy: "*"127.0.0.1:$p"* ]]
	port_free "$p"
}

@test "--check-config on a good file says how many services and binds nothing" {
	local p q
	p=$(free_port)
	q=$(free_port)
	cat >"$T/good.conf" <<EOF
--quiet
--balance first --fails 2
--name a 127.0.0.1 $p 127.0.0.1 9 127.0.0.1 10
--name b 127.0.0.1 $q 127.0.0.1 11
allow 127.0.0.*
EOF
	run $LIMIT "$TCPPROXY" --check-config -f "$T/good.conf"
	echo "$output"
	[ "$status" -eq 0 ]
	[ "$output" = "tcpproxy: configuration ok: 2 services" ]
	port_free "$p"
	port_free "$q"
}

# ---- --pid-file ----

@test "--pid-file is written once the proxy listens and removed when it ends" {
	local rc=0
	printf -- '--pid-file %s\n127.0.0.1 0 127.0.0.1 9\n' "$T/conf.pid" \
	    >"$T/pid.conf"
	start_config "$T/pid.conf"
	[ "$(cat "$T/conf.pid")" = "$PROXY_PID" ]
	kill -TERM "$PROXY_PID"
	wait_for 10 is_gone "$PROXY_PID"
	wait "$PROXY_PID" || rc=$?
	[ "$rc" -eq 0 ]
	[ ! -e "$T/conf.pid" ]
	# On the command line, ended by SIGINT.
	start_proxy --pid-file "$T/cli.pid" 127.0.0.1 0 127.0.0.1 9
	[ "$(cat "$T/cli.pid")" = "$PROXY_PID" ]
	kill -INT "$PROXY_PID"
	wait_for 10 is_gone "$PROXY_PID"
	wait "$PROXY_PID" || rc=$?
	[ "$rc" -eq 0 ]
	[ ! -e "$T/cli.pid" ]
	# rinetd's pidlogfile is the same.
	printf 'pidlogfile %s\n127.0.0.1 0 127.0.0.1 9\n' "$T/rinetd.pid" \
	    >"$T/rinetd.conf"
	start_config "$T/rinetd.conf"
	[ "$(cat "$T/rinetd.pid")" = "$PROXY_PID" ]
	kill -TERM "$PROXY_PID"
	wait_for 10 is_gone "$PROXY_PID"
	wait "$PROXY_PID" || rc=$?
	[ "$rc" -eq 0 ]
	[ ! -e "$T/rinetd.pid" ]
}
