#!/usr/bin/env bats
# The library interface, through test/libtest.c.

load helper

@test "the library test program passes every check" {
	[ -x "$LIBTEST" ]
	run "$LIBTEST"
	echo "$output"
	[ "$status" -eq 0 ]
	[[ $output == *"1.."* ]]
	[[ $output != *"not ok"* ]]
}
