#!/usr/bin/env bats
# make install, install-strip and install-static, with GNU make and bmake
# alike, into a DESTDIR under the test's directory; what .gitignore hides.

load helper

# copy_tree: copies what the Makefile needs into $T/src.
copy_tree() {
	mkdir -p "$T/src"
	cp "$TOP/Makefile" "$TOP/tcpproxy.c" "$TOP/tcpproxy.h" \
	    "$TOP/tcpproxy.1" "$T/src/"
}

# symbols FILE: prints how many symbols nm lists in FILE (0: stripped).
symbols() {
	nm "$1" 2>/dev/null | wc -l | tr -d ' '
}

# installs MAKE TARGET: runs MAKE TARGET in $T/src into a fresh DESTDIR
# with PREFIX /opt/tp; checks the binary runs and the man page is there.
installs() {
	rm -rf "$T/dest"
	(cd "$T/src" && "$1" -s DESTDIR="$T/dest" PREFIX=/opt/tp "$2") \
	    >"$T/make.out" 2>&1 || { cat "$T/make.out"; return 1; }
	[ -x "$T/dest/opt/tp/bin/tcpproxy" ]
	[ -f "$T/dest/opt/tp/share/man/man1/tcpproxy.1" ]
	"$T/dest/opt/tp/bin/tcpproxy" -V | grep -q '^tcpproxy '
}

@test "make install copies the binary as built and install-strip strips it, with each make" {
	local mk n=0
	command -v nm >/dev/null || skip "needs nm (binutils)"
	copy_tree
	# With the system's cc: a suite run with CC=tcc passes it down in
	# MAKEFLAGS, and tcc's binaries have no symbols for nm to count.
	unset MAKEFLAGS MAKEOVERRIDES MFLAGS
	export CC=cc
	for mk in make bmake; do
		command -v "$mk" >/dev/null || continue
		n=$((n + 1))
		installs "$mk" install
		[ "$(symbols "$T/dest/opt/tp/bin/tcpproxy")" -gt 0 ]
		installs "$mk" install-strip
		[ "$(symbols "$T/dest/opt/tp/bin/tcpproxy")" -eq 0 ]
		(cd "$T/src" && "$mk" -s DESTDIR="$T/dest" PREFIX=/opt/tp \
		    uninstall)
		[ ! -e "$T/dest/opt/tp/bin/tcpproxy" ]
		(cd "$T/src" && "$mk" -s clean)
	done
	[ "$n" -gt 0 ]
}

@test "make install-static installs the static musl binary" {
	command -v musl-gcc >/dev/null || skip "needs musl-gcc (musl-tools)"
	copy_tree
	installs make install-static
	cmp "$T/src/tcpproxy-static" "$T/dest/opt/tp/bin/tcpproxy"
}

@test ".gitignore hides the README example's upper.c and build leftovers" {
	command -v git >/dev/null || skip "needs git"
	git -C "$TOP" rev-parse --git-dir >/dev/null 2>&1 || skip "not a git tree"
	git -C "$TOP" check-ignore -q upper.c
	git -C "$TOP" check-ignore -q upper
	git -C "$TOP" check-ignore -q tcpproxy-static
	git -C "$TOP" check-ignore -q dumps/1_127.0.0.1_5000.up
}
