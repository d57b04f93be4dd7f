# tcpproxy - a small, fast, portable TCP proxy.
# POSIX make: works with GNU make and BSD make alike.
.POSIX:
.SUFFIXES:

VERSION = 0.1.0
PREFIX = /usr/local
MANPREFIX = $(PREFIX)/share/man

CC = cc
CFLAGS = -std=c99 -O2 -Wall -Wextra -pedantic
CPPFLAGS = -D_POSIX_C_SOURCE=200809L
LDFLAGS =
LDLIBS =
BATS = bats

TESTBIN = test/backend test/client test/libtest test/hooktest
EXAMPLES = examples/subst examples/reqlog

all: tcpproxy

tcpproxy: tcpproxy.c tcpproxy.h
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o tcpproxy tcpproxy.c $(LDLIBS)

test/backend: test/backend.c test/common.h
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o test/backend test/backend.c $(LDLIBS)

test/client: test/client.c test/common.h
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o test/client test/client.c $(LDLIBS)

test/libtest: test/libtest.c test/common.h tcpproxy.c tcpproxy.h
	$(CC) $(CPPFLAGS) -DTCPPROXY_NO_MAIN -I. $(CFLAGS) $(LDFLAGS) \
	    -o test/libtest test/libtest.c tcpproxy.c $(LDLIBS)

test/hooktest: test/hooktest.c test/common.h tcpproxy.c tcpproxy.h
	$(CC) $(CPPFLAGS) -DTCPPROXY_NO_MAIN -I. $(CFLAGS) $(LDFLAGS) \
	    -o test/hooktest test/hooktest.c tcpproxy.c $(LDLIBS)

examples: $(EXAMPLES)

examples/subst: examples/subst.c tcpproxy.c tcpproxy.h
	$(CC) $(CPPFLAGS) -DTCPPROXY_NO_MAIN -I. $(CFLAGS) $(LDFLAGS) \
	    -o examples/subst examples/subst.c tcpproxy.c $(LDLIBS)

examples/reqlog: examples/reqlog.c tcpproxy.c tcpproxy.h
	$(CC) $(CPPFLAGS) -DTCPPROXY_NO_MAIN -I. $(CFLAGS) $(LDFLAGS) \
	    -o examples/reqlog examples/reqlog.c tcpproxy.c $(LDLIBS)

test: tcpproxy $(TESTBIN) $(EXAMPLES)
	@command -v $(BATS) >/dev/null 2>&1 || { \
	    echo 'make test needs bats (Bash Automated Testing System):'; \
	    echo '  Debian/Ubuntu: apt-get install bats'; \
	    echo '  macOS: brew install bats-core; FreeBSD: pkg install bats-core'; \
	    exit 1; }
	BATS_TEST_TIMEOUT=$${BATS_TEST_TIMEOUT:-180} $(BATS) test

bench/loadgen: bench/loadgen.c
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o bench/loadgen bench/loadgen.c $(LDLIBS)

bench: tcpproxy bench/loadgen
	./bench/run

bench-quick: tcpproxy bench/loadgen
	./bench/run --quick

# A small static binary for minimal images.
MUSLCC = musl-gcc
static: tcpproxy.c tcpproxy.h
	$(MUSLCC) $(CPPFLAGS) -std=c99 -Os -Wall -Wextra -pedantic -static -s \
	    -ffunction-sections -fdata-sections -Wl,--gc-sections \
	    -o tcpproxy-static tcpproxy.c
	@ls -l tcpproxy-static

# Fuzzing with libFuzzer (clang); each harness includes tcpproxy.c itself.
FUZZCC = clang
FUZZFLAGS = -g -O1 -fsanitize=fuzzer,address,undefined
FUZZTIME = 60
fuzz/fuzz_args: fuzz/fuzz_args.c tcpproxy.c tcpproxy.h
	$(FUZZCC) $(CPPFLAGS) -I. $(FUZZFLAGS) -o fuzz/fuzz_args fuzz/fuzz_args.c

fuzz/fuzz_relay: fuzz/fuzz_relay.c tcpproxy.c tcpproxy.h
	$(FUZZCC) $(CPPFLAGS) -I. $(FUZZFLAGS) -o fuzz/fuzz_relay \
	    fuzz/fuzz_relay.c

fuzz/fuzz_preamble: fuzz/fuzz_preamble.c tcpproxy.c tcpproxy.h
	$(FUZZCC) $(CPPFLAGS) -I. $(FUZZFLAGS) -o fuzz/fuzz_preamble \
	    fuzz/fuzz_preamble.c

fuzz: fuzz/fuzz_args fuzz/fuzz_relay fuzz/fuzz_preamble
	./fuzz/run $(FUZZTIME)

soak: tcpproxy test/backend test/client
	./soak/run

# install copies the binary as built; install-strip strips it (GNU
# convention); install-static installs the musl static one (make static).
STRIP = strip
install: tcpproxy
	$(MAKE) BIN=tcpproxy install-bin

install-strip: tcpproxy
	$(MAKE) BIN=tcpproxy install-bin
	$(STRIP) $(DESTDIR)$(PREFIX)/bin/tcpproxy

install-static: static
	$(MAKE) BIN=tcpproxy-static install-bin

BIN = tcpproxy
install-bin:
	mkdir -p $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(MANPREFIX)/man1
	cp -f $(BIN) $(DESTDIR)$(PREFIX)/bin/tcpproxy
	chmod 755 $(DESTDIR)$(PREFIX)/bin/tcpproxy
	cp -f tcpproxy.1 $(DESTDIR)$(MANPREFIX)/man1/tcpproxy.1
	chmod 644 $(DESTDIR)$(MANPREFIX)/man1/tcpproxy.1

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/tcpproxy $(DESTDIR)$(MANPREFIX)/man1/tcpproxy.1

clean:
	rm -f tcpproxy tcpproxy-static $(TESTBIN) $(EXAMPLES) bench/loadgen \
	    fuzz/fuzz_args fuzz/fuzz_relay fuzz/fuzz_preamble

.PHONY: all examples test bench bench-quick static fuzz soak install \
	install-strip install-static install-bin uninstall clean
