#!/usr/bin/env bats
# The README and the manual page say what the program does now.

load helper

@test "the manual page renders -u as user[:group], --user user[:group]" {
	command -v mandoc >/dev/null || skip "needs mandoc"
	mandoc -Tutf8 "$TOP/tcpproxy.1" | col -b >"$T/man.txt"
	has_line "$T/man.txt" '^ +-u user\[:group\], --user user\[:group\]$'
}

@test "the README's -u nosuchuser example is what the program prints" {
	sed -n '/^    \$ tcpproxy -u nosuchuser /,/^$/p' "$TOP/README.md" |
	    sed -n 's/^    \(tcpproxy: .*\)/\1/p' >"$T/want"
	[ -s "$T/want" ]
	run $LIMIT "$TCPPROXY" -u nosuchuser 127.0.0.1 0 127.0.0.1 8000
	[ "$status" -eq 1 ]
	[ "$output" = "$(cat "$T/want")" ]
}

@test "the README's usage block is the program's usage" {
	"$TCPPROXY" -h | sed -n '/^usage:/,/\.\.\.\]$/p' >"$T/usage"
	awk '/^    usage: tcpproxy/ { on = 1 } on && /^ *$/ { exit }
	    on { sub(/^    /, ""); print }' "$TOP/README.md" >"$T/readme"
	diff "$T/usage" "$T/readme"
}

@test "the README's first screens answer run, echo | nc, every address, testing, in order" {
	local run nc every tst
	run=$(grep -n '^## Quick start' "$TOP/README.md" | cut -d: -f1)
	nc=$(grep -n '^### Why did `echo hi | nc host port` get nothing' \
	    "$TOP/README.md" | cut -d: -f1)
	every=$(grep -n '^### Listening on every address' "$TOP/README.md" |
	    cut -d: -f1)
	tst=$(grep -n '^### Testing it' "$TOP/README.md" | cut -d: -f1)
	[ -n "$run" ] && [ -n "$nc" ] && [ -n "$every" ] && [ -n "$tst" ]
	[ "$run" -lt "$nc" ] && [ "$nc" -lt "$every" ] && [ "$every" -lt "$tst" ]
	# Within the first screens, with -H and '*' shown.
	[ "$tst" -lt 120 ]
	sed -n "${nc},${every}p" "$TOP/README.md" | grep -q -- '-H 127'
	sed -n "${every},${tst}p" "$TOP/README.md" | grep -q "'\\*' 8080"
}

@test "the README's library example starts the web server it uses, and make static names musl-tools" {
	sed -n '/^Build and try it in the source directory/,/^The API/p' \
	    "$TOP/README.md" >"$T/lib"
	grep -q 'python3 -m http.server 8000' "$T/lib"
	no_line "$T/lib" "quick start's web"
	grep -A3 '^`make static`' "$TOP/README.md" | grep -q musl-tools
}
