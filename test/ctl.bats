#!/usr/bin/env bats
# tcpproxy ctl, the control socket's client: what it sends, how it reads
# the reply, and its exit status.  A small fake server (python3) stands
# in for the proxy's: it records each request and answers what the test
# put in $T/reply.

load helper

# start_fake: starts the fake server on $T/c.sock; each connection's
# request goes to $T/req.N (N from 1).  A reply with a status line waits
# for the client to close, and notes "closed" in $T/closed.N; one with no
# status line is followed by the server's own close.
start_fake() {
	command -v python3 >/dev/null || skip "needs python3"
	cat >"$T/fake.py" <<'PY'
import os, socket, sys

path, top = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(8)
open(top + "/fake.ready", "w").close()
n = 0
while True:
    c, _ = s.accept()
    n += 1
    data = b""
    while True:
        chunk = c.recv(4096)
        if not chunk:
            break
        data += chunk
        if data.startswith(b"begin\n"):
            if data.endswith(b"\nend\n"):
                break
        elif data.endswith(b"\n"):
            break
    open("%s/req.%d" % (top, n), "wb").write(data)
    reply = open(top + "/reply", "rb").read()
    c.sendall(reply)
    last = reply.rstrip(b"\n").split(b"\n")[-1]
    if last == b"ok" or last.startswith(b"ok ") or last.startswith(b"error"):
        rest = c.recv(4096)
        open("%s/closed.%d" % (top, n), "w").write(
            "closed\n" if rest == b"" else "sent more\n")
    c.close()
PY
	spawn single fake python3 "$T/fake.py" "$T/c.sock" "$T"
	wait_for 10 test -e "$T/fake.ready"
}

# ctl ARGS...: runs tcpproxy ctl ARGS with stdout in $T/out and stderr in
# $T/err; sets RC.
ctl() {
	RC=0
	$LIMIT "$TCPPROXY" ctl "$@" >"$T/out" 2>"$T/err" || RC=$?
	cat "$T/out" "$T/err"
}

@test "ctl sends the command as one line and prints the data lines; ok exits 0" {
	start_fake
	printf 'delay1 delay=1s dir=both\nclose1 close=10\nok\n' >"$T/reply"
	ctl "$T/c.sock" list
	[ "$RC" -eq 0 ]
	[ "$(cat "$T/req.1")" = list ]
	[ "$(od -An -c "$T/req.1" | tr -d ' ')" = 'list\n' ]
	[ "$(cat "$T/out")" = "$(printf 'delay1 delay=1s dir=both\nclose1 close=10')" ]
	[ ! -s "$T/err" ]
	# It closed after the status line.
	wait_for 10 test -s "$T/closed.1"
	[ "$(cat "$T/closed.1")" = closed ]
}

@test "ctl prints the text of 'ok TEXT', so a script can keep it" {
	start_fake
	printf 'ok name=delay2\n' >"$T/reply"
	ctl "$T/c.sock" add delay=1s
	[ "$RC" -eq 0 ]
	[ "$(cat "$T/req.1")" = "add delay=1s" ]
	[ "$(cat "$T/out")" = name=delay2 ]
}

@test "ctl exits 1 on 'error: ...', the line on stderr" {
	start_fake
	printf "error: unknown command 'frob'\n" >"$T/reply"
	ctl "$T/c.sock" frob 1
	[ "$RC" -eq 1 ]
	[ ! -s "$T/out" ]
	[ "$(cat "$T/err")" = "error: unknown command 'frob'" ]
	# Data lines before it still go to stdout.
	printf "half\nerror: no\n" >"$T/reply"
	ctl "$T/c.sock" x
	[ "$RC" -eq 1 ]
	[ "$(cat "$T/out")" = half ]
	[ "$(cat "$T/err")" = "error: no" ]
}

@test "ctl quotes a word with a blank or a quote, escaping \" and \\, and sends the rest as they are" {
	start_fake
	printf 'ok\n' >"$T/reply"
	ctl "$T/c.sock" add 'name=a b' 'say="hi"' 'back\slash' 'tab	x' \
	    'a\ b' '' 'p=0.5,dir=up'
	[ "$RC" -eq 0 ]
	[ "$(cat "$T/req.1")" = 'add "name=a b" "say=\"hi\"" back\slash "tab	x" "a\\ b" "" p=0.5,dir=up' ]
}

@test "ctl PATH - sends stdin's non-blank lines as one begin/end batch" {
	start_fake
	printf 'added 2\nok\n' >"$T/reply"
	printf 'add delay=1s\n\n   \ndel close1\r\nlist' >"$T/batch"
	RC=0
	$LIMIT "$TCPPROXY" ctl "$T/c.sock" - <"$T/batch" >"$T/out" || RC=$?
	[ "$RC" -eq 0 ]
	[ "$(cat "$T/req.1")" = "$(printf 'begin\nadd delay=1s\ndel close1\nlist\nend')" ]
	[ "$(cat "$T/out")" = "added 2" ]
	# An empty batch is still one.
	RC=0
	$LIMIT "$TCPPROXY" ctl "$T/c.sock" - </dev/null >"$T/out" || RC=$?
	[ "$RC" -eq 0 ]
	[ "$(cat "$T/req.2")" = "$(printf 'begin\nend')" ]
}

@test "ctl exits 2 when the socket cannot be reached, naming the path and the error" {
	ctl "$T/none.sock" list
	[ "$RC" -eq 2 ]
	[ "$(cat "$T/err")" = "tcpproxy: ctl: cannot connect to '$T/none.sock': No such file or directory" ]
	: >"$T/plain"
	ctl "$T/plain" list
	[ "$RC" -eq 2 ]
	[ "$(cat "$T/err")" = "tcpproxy: ctl: cannot connect to '$T/plain': Connection refused" ]
}

@test "ctl exits 2 when the server hangs up before its status line" {
	start_fake
	printf 'a data line\n' >"$T/reply"
	ctl "$T/c.sock" stats
	[ "$RC" -eq 2 ]
	[ "$(cat "$T/out")" = "a data line" ]
	[ "$(cat "$T/err")" = "tcpproxy: ctl: '$T/c.sock' hung up before the status line" ]
}

@test "ctl without a path or a command, or with a line break in a word, is a usage error" {
	run $LIMIT "$TCPPROXY" ctl
	[ "$status" -eq 2 ]
	[ "${lines[0]}" = "tcpproxy: ctl: needs the control socket's path" ]
	[ "${lines[1]}" = "usage: tcpproxy ctl path command [arg ...]" ]
	run $LIMIT "$TCPPROXY" ctl "$T/c.sock"
	[ "$status" -eq 2 ]
	[ "${lines[0]}" = "tcpproxy: ctl: needs a command, or - for a batch" ]
	run $LIMIT "$TCPPROXY" ctl "$T/c.sock" add "$(printf 'a\nb')"
	[ "$status" -eq 2 ]
	[ "${lines[0]}" = "tcpproxy: ctl: a word holds a line break" ]
}
