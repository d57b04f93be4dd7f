# options_helper.bash - what test/options.bats needs beyond helper.bash.

# need_socat: skips the test without socat, which can bind a client to
# a chosen source address (test/client cannot).
need_socat() {
	command -v socat >/dev/null 2>&1 || skip "needs socat"
}

# need_root: skips the test unless it runs as root.
need_root() {
	[ "$(id -u)" -eq 0 ] || skip "needs root"
}

# from SRC PORT [HOST]: sends stdin from source address SRC to HOST
# (127.0.0.1) PORT, shuts the write side, prints what comes back.
from() {
	timeout 30 socat -t 20 - "TCP:${3:-127.0.0.1}:$2,bind=$1"
}

# dump_hex FILE DIR: prints, as one line of hex digits, the bytes of
# every DIR ('>' or '<') chunk of the hex dump in FILE, in order.  It
# also checks that each line's offset follows on from the last one's and
# that each chunk holds the length its header says; it fails if not.
dump_hex() {
	# No {n} in the regular expressions: mawk lacks them.
	awk -v want="$2" '
	/^id=[0-9]+ [<>] offset=[0-9]+ length=[0-9]+$/ {
		if (left != 0) { print "short chunk" > "/dev/stderr"; exit 1 }
		split($3, o, "="); split($4, l, "=")
		cur = $2; left = l[2] + 0; pos = o[2] + 0
		if (cur == want && pos != total) {
			print "offset " pos " != " total > "/dev/stderr"; exit 1
		}
		next
	}
	/^[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]  / {
		if (substr($0, 1, 8) != sprintf("%08x", pos)) {
			print "bad line offset: " $0 > "/dev/stderr"; exit 1
		}
		hex = substr($0, 11, 49)
		gsub(/ /, "", hex)
		n = length(hex) / 2
		left -= n
		pos += n
		if (cur == want) {
			printf "%s", hex
			total += n
		}
	}
	END { if (left != 0) exit 1; print "" }' "$1"
}

# file_hex FILE: prints the bytes of FILE as one line of hex digits.
file_hex() {
	od -An -v -tx1 "$1" | tr -d ' \n'
	echo
}

# children_of PID: prints the pids whose parent is PID, one a line.
children_of() {
	local parent=$1 f line rest
	for f in /proc/[0-9]*/stat; do
		line=$(cat "$f" 2>/dev/null) || continue
		rest=${line##*) }
		set -- $rest
		# $rest starts at field 3 of stat; the parent is field 4.
		[ "$2" = "$parent" ] && echo "${line%% *}"
	done
	return 0
}
