#!/usr/bin/env bats
# The benchmark's tools: bench/plot, which runs without load, and
# bench/run --quick, as short as it goes (0.2 s per test, 20 held).

load helper

# Run bench/run once for the tests of this file that need it: direct,
# tcpproxy, tcpproxy-ns and haproxy and haproxy-splice where they can run;
# the results are in $Q.txt, the terminal's in $Q.out and $Q.err.
quick_run() {
	Q=$BATS_FILE_TMPDIR/quick
	[ -s "$Q.txt" ] && return 0
	TCPPROXY=$TCPPROXY "$TOP/bench/run" --quick -d 0.2 -n 20 \
	    -p "direct tcpproxy tcpproxy-ns haproxy haproxy-splice" \
	    -o "$Q.txt" >"$Q.out" 2>"$Q.err" || {
		tail -n 20 "$Q.err"
		return 1
	}
}

# Print the figure of proxy $2 for metric $1 in the table of $Q.txt.
cell() {
	awk -v m="$1" -v p="$2" '
	    /^metric / { for (i = 3; i <= NF; i++) if ($i == p) c = i }
	    c && $1 == m { print $c; exit }' "$Q.txt"
}

# Is there a haproxy that can splice?
have_haproxy_splice() {
	command -v haproxy >/dev/null 2>&1 || return 1
	haproxy -vv 2>/dev/null | grep -Eq '[+]LINUX_SPLICE|USE_LINUX_SPLICE=1'
}

@test "bench/plot draws a bar for each target of a results file, and the targets" {
	local svg
	run "$TOP/bench/plot" "$TOP/bench/results-20261125c.txt"
	[ "$status" -eq 0 ]
	svg=$output
	[[ $svg == '<svg '* ]]
	[[ $svg == *'</svg>' ]]
	# Ten targets with tcpproxy's bar; busy polling ran for four of them.
	[ "$(grep -c 'fill="#2b5d8a"/>$' <<<"$svg")" -eq 10 ]
	[ "$(grep -c 'fill="#9cc3e4"/>$' <<<"$svg")" -eq 4 ]
	# Bulk, 1 stream up: 1.88 times the best peer, drawn at 1.88 x 150.
	grep -q '<rect x="250" y="40" width="282.0" height="12"' <<<"$svg"
	grep -q '>1.88</text>' <<<"$svg"
	# Memory: the best peer needs 9.09 times as much per connection.
	grep -q '>9.09</text>' <<<"$svg"
	# A target mark on nine rows (CPU per connection has none), and one
	# in the legend.
	[ "$(grep -c 'stroke="#c0392b"' <<<"$svg")" -eq 10 ]
}

@test "bench/plot given several results files draws the median of their ratios" {
	local c=$TOP/bench/results-20261125c.txt d=$TOP/bench/results-20261125d.txt
	run "$TOP/bench/plot" "$c" "$d" "$c"
	[ "$status" -eq 0 ]
	grep -q '>median of 3 runs: ' <<<"$output"
	# Bulk, 1 stream up: 1.88, 1.45 and 1.88 give 1.88.
	grep -q '<rect x="250" y="40" width="282.0" height="12"' <<<"$output"
	run "$TOP/bench/plot" "$c" "$d"
	# Two: the mean of the middle two, (1.88 + 1.45) / 2.
	grep -q '>1.67</text>' <<<"$output"
}

@test "bench/plot without a readable results file is a usage error" {
	run "$TOP/bench/plot" "$T/none.txt"
	[ "$status" -eq 2 ]
	[[ $output == "usage: bench/plot"* ]]
}

@test "bench/run --quick gives CPU per GB of each bulk test, and a summary against the best peer" {
	local k v
	quick_run
	for k in up1 down1 up8 down8; do
		v=$(cell "${k}_cpu_s_per_GB" tcpproxy)
		[[ $v =~ ^[0-9.]+$ ]]
	done
	[[ $(cell cpu_s_per_GB tcpproxy) =~ ^[0-9.]+$ ]]
	# The summary block, also on the terminal: tcpproxy, the best
	# peer's figure and name, the ratio and which way is better.
	grep -q '^# summary: tcpproxy against the best peer' "$Q.txt"
	grep -q '^# summary: tcpproxy against the best peer' "$Q.out"
	grep -Eq '^CPU s/GB, 8 streams down +[0-9.]+ ' "$Q.txt"
	grep -Eq '^round trips/s, 64 conns +[0-9.]+ ' "$Q.txt"
	grep -Eq '^RSS kB/held conn, 20 held ' "$Q.txt"
	grep -Eq '^errors holding 20 +0 .* less$' "$Q.txt"
	# haproxy-splice does not run conn: the best is haproxy.
	if command -v haproxy >/dev/null 2>&1; then
		v='^connections/s +[0-9]+ +[0-9]+  haproxy +[0-9.]+  more$'
		grep -Eq "$v" "$Q.txt"
	fi
	# bench/plot still reads the results.
	grep -q 'tcpproxy / best peer' "$Q.svg"
}

@test "bench/run --quick runs haproxy-splice on the bulk tests only, as a peer" {
	have_haproxy_splice || skip "no haproxy built with splicing"
	quick_run
	[[ $(cell up1_MBps haproxy-splice) =~ ^[0-9.]+$ ]]
	[[ $(cell down8_cpu_s_per_GB haproxy-splice) =~ ^[0-9.]+$ ]]
	[ "$(cell rr1_rtps haproxy-splice)" = - ]
	[ "$(cell conn_cps haproxy-splice)" = - ]
	grep -q '^# medians .*best of haproxy haproxy-splice ' "$Q.txt"
	grep -q '^# tcpproxy-ns: .*haproxy-splice: splicing always' "$Q.txt"
	grep -q '^proxy=haproxy-splice rep=1 test=down streams=8 ' "$Q.txt"
	[ "$(grep -c '^proxy=haproxy-splice .*test=rr' "$Q.txt")" -eq 0 ]
}

@test "bench/run --quick runs tcpproxy-ns beside tcpproxy where it knows --no-splice, and says so where not" {
	quick_run
	if ! "$TCPPROXY" --no-splice --check-config 127.0.0.1 0 127.0.0.1 1 \
	    >/dev/null 2>&1; then
		grep -q 'tcpproxy-ns: no tcpproxy with --no-splice: skipped' \
		    "$Q.err"
		[ "$(grep -c '^metric .* tcpproxy-ns' "$Q.txt")" -eq 0 ]
		skip "tcpproxy has no --no-splice"
	fi
	[[ $(cell up1_MBps tcpproxy-ns) =~ ^[0-9.]+$ ]]
	[[ $(cell rr64_rtps tcpproxy-ns) =~ ^[0-9.]+$ ]]
	[ "$(cell hold20_rss_kB_per_conn tcpproxy-ns)" = - ]
	# Not a peer; a pair with tcpproxy, with its spread.
	[ "$(grep -c '^# medians .*best of.* tcpproxy-ns' "$Q.txt")" -eq 0 ]
	grep -Eq '^ratios .* tcpproxy/tcpproxy-ns$' "$Q.txt"
	v='^up1_cpu_s_per_GB +s/GB +less +.*[0-9.]+ \([0-9.]+\.\.[0-9.]+\)$'
	grep -Eq "$v" "$Q.txt"
}
