#!/usr/bin/env bats
# The benchmark's tools that run without load: bench/plot.

load helper

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
