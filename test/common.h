/*
 * common.h - code shared by the C helper programs of tcpproxy's suite.
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * Everything here is static: each program includes the header and gets
 * a copy of its own.  Before the #include a program defines PROG, its
 * name for messages, and one macro for each section it uses; a section
 * it does not ask for is left out, so that no static function is left
 * unused (which gcc and clang would warn about):
 *
 *   (always)              die(), set_nonblock(), start_guard()
 *   COMMON_WANT_CLOCK     now_ms()
 *   COMMON_WANT_SEND      send_all()
 *   COMMON_WANT_STREAM    backend.c and client.c: the pattern, the
 *                         checksum, report(), parse_size(), pause_ms(),
 *                         resolve()
 *   COMMON_WANT_HARNESS   hooktest.c and libtest.c (implies CLOCK): the
 *                         checks, WAIT_UNTIL(), sockets on 127.0.0.1,
 *                         the configuration of a proxy in front of one
 *                         and the hooks' edits; CHECK_NUMBERED 1 numbers
 *                         the "ok" lines
 */
#ifndef COMMON_H
#define COMMON_H

#ifndef PROG
#error "define PROG, the program's name, before including common.h"
#endif

#include <sys/socket.h>
#include <sys/types.h>

#include <netinet/in.h>
#include <arpa/inet.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Prints "PROG: MSG" and exits 1; a format ending in ':' adds errno. */
static void
die(const char *fmt, ...)
{
	va_list ap;
	int saved = errno;

	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (fmt[0] != '\0' && fmt[strlen(fmt) - 1] == ':')
		fprintf(stderr, " %s", strerror(saved));
	fputc('\n', stderr);
	exit(1);
}

/* Makes fd nonblocking, or dies saying why. */
static void
set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl == -1 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1)
		die("fcntl:");
}

/*
 * Ignores SIGPIPE (a peer that leaves early must not kill us; write()
 * tells) and arms the alarm() guard: a hung run ends after secs seconds,
 * by SIGALRM's default action unless the program set a handler.
 */
static void
start_guard(unsigned int secs)
{
	signal(SIGPIPE, SIG_IGN);
	alarm(secs);
}

#ifdef COMMON_WANT_HARNESS
#ifndef COMMON_WANT_CLOCK
#define COMMON_WANT_CLOCK
#endif
#endif

#ifdef COMMON_WANT_CLOCK
/* Returns a monotonic time in milliseconds. */
static long
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
#endif /* COMMON_WANT_CLOCK */

#ifdef COMMON_WANT_SEND
/*
 * Writes all len bytes of buf to fd, waiting while a nonblocking fd is
 * full.  Returns 0 once all is written, -1 on an error.
 */
static int
send_all(int fd, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	struct pollfd pfd;
	ssize_t n;

	while (len > 0) {
		n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			pfd.fd = fd;
			pfd.events = POLLOUT;
			(void)poll(&pfd, 1, 100);
			continue;
		}
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}
#endif /* COMMON_WANT_SEND */

#ifdef COMMON_WANT_STREAM
#define BUFSZ		65536
#define FNV_OFFSET	UINT64_C(0xcbf29ce484222325)
#define FNV_PRIME	UINT64_C(0x100000001b3)

/* The test pattern: the xorshift32 stream of a seed, one byte a step. */
struct pattern {
	uint32_t state;
};

/* A byte count and its FNV-1a 64 checksum. */
struct sum {
	unsigned long long n;
	uint64_t h;
};

/* Starts the pattern of a seed; a zero state would stay zero forever. */
static void
pattern_init(struct pattern *p, unsigned long s)
{
	p->state = (uint32_t)(s * 2654435761UL) ^ UINT32_C(0x9e3779b9);
	if (p->state == 0)
		p->state = 1;
}

/* Writes the next len bytes of the pattern to buf. */
static void
pattern_fill(struct pattern *p, unsigned char *buf, size_t len)
{
	uint32_t x = p->state;
	size_t i;

	for (i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		buf[i] = (unsigned char)(x >> 24);
	}
	p->state = x;
}

static void
sum_init(struct sum *s)
{
	s->n = 0;
	s->h = FNV_OFFSET;
}

static void
sum_add(struct sum *s, const unsigned char *buf, size_t len)
{
	uint64_t h = s->h;
	size_t i;

	for (i = 0; i < len; i++) {
		h ^= buf[i];
		h *= FNV_PRIME;
	}
	s->h = h;
	s->n += len;
}

/*
 * Prints "WHAT N CKSUM[ NOTE]" on stdout with one write(), so that the
 * lines of processes sharing the file never mix.
 */
static void
report(const char *what, const struct sum *s, const char *note)
{
	char line[128];
	int n;

	n = snprintf(line, sizeof(line), "%s %llu %016llx%s%s\n", what, s->n,
	    (unsigned long long)s->h, note ? " " : "", note ? note : "");
	/* Whatever stdio holds for stdout goes first. */
	fflush(stdout);
	if (n > 0 && (size_t)n < sizeof(line))
		(void)!write(STDOUT_FILENO, line, (size_t)n);
}

/* Parses "N", "Nk" or "Nm" (binary units); dies on anything else. */
static unsigned long long
parse_size(const char *s)
{
	unsigned long long v;
	char *end;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || end == s || s[0] == '-')
		die("bad size '%s'", s);
	if (*end == 'k' || *end == 'K') {
		v *= 1024;
		end++;
	} else if (*end == 'm' || *end == 'M') {
		v *= 1024 * 1024;
		end++;
	}
	if (*end != '\0')
		die("bad size '%s'", s);
	return v;
}

/* Sleeps ms milliseconds, signals or not. */
static void
pause_ms(long ms)
{
	struct timespec ts;

	ts.tv_sec = ms / 1000;
	ts.tv_nsec = (ms % 1000) * 1000000L;
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/*
 * Returns the addresses of a numeric port on host for a TCP socket,
 * getaddrinfo() flags added; dies saying why there are none.
 */
static struct addrinfo *
resolve(const char *host, const char *port, int flags)
{
	struct addrinfo hints, *res;
	int rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV | flags;
	if ((rc = getaddrinfo(host, port, &hints, &res)) != 0)
		die("%s: %s", host, gai_strerror(rc));
	return res;
}
#endif /* COMMON_WANT_STREAM */

#ifdef COMMON_WANT_HARNESS
#include "tcpproxy.h"

#ifndef CHECK_NUMBERED
#define CHECK_NUMBERED	0
#endif

/*
 * Runs step until cond holds; after ms milliseconds fails a check named
 * "in time: " what instead.  what is a string literal, the caller's
 * #cond: stringized here, cond would show its macros expanded.
 */
#define WAIT_UNTIL(ms, step, cond, what) do {				\
	long until_ = now_ms() + (ms);					\
	while (!(cond)) {						\
		if (now_ms() > until_) {				\
			check(0, "in time: " what, __LINE__);		\
			break;						\
		}							\
		step;							\
	}								\
} while (0)

static int checks, failures;

/* Prints one TAP result line and counts a failure. */
static void
check(int ok, const char *what, int line)
{
	char num[24] = "";

	checks++;
	if (!ok)
		failures++;
	if (CHECK_NUMBERED)
		snprintf(num, sizeof(num), " %d", checks);
	printf("%sok%s - %s (line %d)\n", ok ? "" : "not ", num, what, line);
	fflush(stdout);
}

/* Prints the TAP plan and the failures' count; returns the exit status. */
static int
check_done(void)
{
	printf("1..%d\n", checks);
	if (failures > 0)
		printf("# %d of %d checks failed\n", failures, checks);
	return failures > 0;
}

/* Sets sin to 127.0.0.1 port. */
static void
loopback_addr(struct sockaddr_in *sin, int port)
{
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_port = htons((unsigned short)port);
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

/* Returns a nonblocking socket connected to 127.0.0.1:port, or -1. */
static int
loopback_dial(int port)
{
	struct sockaddr_in sin;
	int fd;

	loopback_addr(&sin, port);
	if ((fd = socket(AF_INET, SOCK_STREAM, 0)) == -1)
		return -1;
	/* The kernel completes the handshake before the proxy accepts. */
	if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1) {
		close(fd);
		return -1;
	}
	set_nonblock(fd);
	return fd;
}

/*
 * Returns a nonblocking socket on 127.0.0.1 port 0 and sets *port.  With
 * backlog >= 0 it listens; with backlog < 0 it is only bound: connects to
 * the port are refused, and no one else (a proxy asking for port 0, say)
 * can be given it while the socket holds it.  Returns -1 on failure,
 * errno saying why.
 */
static int
loopback_listen(int backlog, int *port)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	int fd, saved;

	loopback_addr(&sin, 0);
	if ((fd = socket(AF_INET, SOCK_STREAM, 0)) == -1)
		return -1;
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1 ||
	    (backlog >= 0 && listen(fd, backlog) == -1) ||
	    getsockname(fd, (struct sockaddr *)&sin, &len) == -1) {
		saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	set_nonblock(fd);
	*port = ntohs(sin.sin_port);
	return fd;
}

/* Returns a pending connection of listener lfd, nonblocking, or -1. */
static int
accept_nonblock(int lfd)
{
	int fd = accept(lfd, NULL, NULL);

	if (fd != -1)
		set_nonblock(fd);
	return fd;
}

/*
 * Sets cfg up for a proxy on 127.0.0.1 port 0 in front of 127.0.0.1
 * port bport; the port's text goes to port[portlen], which must outlive
 * cfg.
 */
static void
loopback_config(struct tcpproxy_config *cfg, char *port, size_t portlen,
    int bport)
{
	snprintf(port, portlen, "%d", bport);
	tcpproxy_config_init(cfg);
	cfg->local_host = "127.0.0.1";
	cfg->local_port = "0";
	cfg->remote_host = "127.0.0.1";
	cfg->remote_port = port;
}
/* A hook's edit: upper-cases the ASCII letters of data[len] in place. */
static void
edit_upper(char *data, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++) {
		if (data[i] >= 'a' && data[i] <= 'z')
			data[i] = (char)(data[i] - 'a' + 'A');
	}
}

/*
 * A hook's edit: writes every byte of data[*len] twice, in place, and
 * doubles *len; the caller has checked that cap allows it.
 */
static void
edit_double(char *data, size_t *len)
{
	size_t i;

	for (i = *len; i-- > 0; ) {
		data[2 * i] = data[i];
		data[2 * i + 1] = data[i];
	}
	*len *= 2;
}
#endif /* COMMON_WANT_HARNESS */

#endif /* COMMON_H */
