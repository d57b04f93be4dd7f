/*
 * loadgen.c - the backend and the load generator of tcpproxy's benchmark.
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * One program, several modes:
 *
 *	loadgen serve [-p port] [host]		  the backend
 *	loadgen port [host]			  print a free port
 *	loadgen up|down [-c n] [-d s] host port	  bulk throughput
 *	loadgen rr [-c n] [-d s] [-s n] host port round trips
 *	loadgen connrate [-c n] [-d s] host port  connections per second
 *	loadgen hold [-n n] [-d s] host port	  hold idle connections
 *
 * The backend chooses what to do with a connection from its first byte,
 * so one backend port serves every test through any proxy:
 *
 *	'E'  echo everything (the first byte included);
 *	'C'  echo 16 bytes, then close: the server closes first, so the
 *	     TIME_WAIT states pile up on the server side and the client's
 *	     ephemeral ports last through a long connection-rate test;
 *	'H'  echo, then "park" the connection: it leaves the poll set and is
 *	     looked at once a second, so thousands of held connections cost
 *	     the backend nothing while a round-trip test runs beside them;
 *	'S'  sink: discard bytes; when a 0xff byte arrives answer "A", so the
 *	     client knows that every byte went through without needing the
 *	     proxy to relay a half-close;
 *	'R'  source: send bytes until the peer goes away.
 *
 * The backend is one poll() loop over the connections it is not parking;
 * the clients are poll() loops too (no threads).  Every client mode is
 * bounded by its duration and by an alarm() guard.  Results go to stdout
 * as one line of key=value pairs per result; the backend prints
 * "loadgen: listening on HOST:PORT" on stderr.  Only loopback addresses
 * are accepted, so a typo can never send load to another machine.
 */

#include <sys/types.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Tunables. */
#ifndef BUFSZ
#define BUFSZ (64 * 1024)	/* bulk read and write size */
#endif
#ifndef HIST_NS
#define HIST_NS 100		/* latency histogram bucket, ns */
#endif
#ifndef HIST_N
#define HIST_N 1000000		/* buckets: 100 ms at 100 ns */
#endif
#ifndef HOLD_BATCH
#define HOLD_BATCH 256		/* connects in flight when holding */
#endif
#ifndef IO_TIMEOUT
#define IO_TIMEOUT 10.0		/* seconds one exchange may take */
#endif
#define CRATE_LEN 16		/* bytes of a connection-rate echo */
#define HOLD_LEN 8		/* bytes of a hold check */
#define PARK_SWEEP 1.0		/* seconds between parked sweeps */

/* A backend connection. */
struct conn {
	int fd;
	int mode;		/* 0 until the first byte, then 'E'... */
	int parked;		/* an 'H' connection out of the poll set */
	int closing;		/* close once pend is written */
	char *pend;		/* echo bytes the socket did not take */
	size_t plen;
	size_t poff;
	size_t seen;		/* bytes read, for 'C' */
};

/* A client connection of the rr, connrate and hold modes. */
struct cli {
	int fd;
	int state;		/* CS_* */
	size_t got;
	unsigned long long t0;	/* ns: request sent or connect started */
};

enum { CS_IDLE, CS_CONNECTING, CS_READING, CS_HELD, CS_DONE };

static void die(const char *, ...);
static void warn(const char *, ...);

static volatile sig_atomic_t stop_flag;
static struct sockaddr_storage target;
static socklen_t target_len;
static char scratch[BUFSZ];
static unsigned int hist[HIST_N];

/* Print a message, with strerror(errno) if it ends in ':', and exit 1. */
static void
die(const char *fmt, ...)
{
	va_list ap;
	int e = errno;

	fputs("loadgen: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (fmt[0] != '\0' && fmt[strlen(fmt) - 1] == ':')
		fprintf(stderr, " %s", strerror(e));
	fputc('\n', stderr);
	exit(1);
}

/* Like die(), but return. */
static void
warn(const char *fmt, ...)
{
	va_list ap;
	int e = errno;

	fputs("loadgen: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (fmt[0] != '\0' && fmt[strlen(fmt) - 1] == ':')
		fprintf(stderr, " %s", strerror(e));
	fputc('\n', stderr);
}

/* Print the usage and exit 2. */
static void
usage(void)
{
	fputs("usage: loadgen serve [-p port] [host]\n"
	    "       loadgen port [host]\n"
	    "       loadgen up|down [-c streams] [-d secs] host port\n"
	    "       loadgen rr [-c conns] [-d secs] [-s size] host port\n"
	    "       loadgen connrate [-c parallel] [-d secs] host port\n"
	    "       loadgen hold [-n conns] [-d secs] host port\n", stderr);
	exit(2);
}

/* Return the monotonic clock in nanoseconds. */
static unsigned long long
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ULL +
	    (unsigned long long)ts.tv_nsec;
}

/* Return the monotonic clock in seconds. */
static double
now(void)
{
	return (double)now_ns() / 1e9;
}

/* Ask the hold mode to stop holding. */
static void
on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
}

/* The guard: a mode that overran its time exits 3. */
static void
on_alarm(int sig)
{
	static const char msg[] = "loadgen: alarm: mode overran its time\n";

	(void)sig;
	(void)!write(2, msg, sizeof(msg) - 1);
	_exit(3);
}

/* Make fd nonblocking and close-on-exec; return 0, or -1 on error. */
static int
set_flags(int fd)
{
	int fl;

	if ((fl = fcntl(fd, F_GETFL)) == -1 ||
	    fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1)
		return -1;
	if ((fl = fcntl(fd, F_GETFD)) == -1 ||
	    fcntl(fd, F_SETFD, fl | FD_CLOEXEC) == -1)
		return -1;
	return 0;
}

/* Best effort: small messages must not wait for Nagle. */
static void
set_nodelay(int fd)
{
	int one = 1;

	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Resolve a numeric loopback host and port into target; die otherwise. */
static void
resolve(const char *host, const char *port)
{
	struct addrinfo hints, *res;
	int e;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
	if ((e = getaddrinfo(host, port, &hints, &res)) != 0)
		die("%s:%s: %s", host, port, gai_strerror(e));
	if (res->ai_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)res->ai_addr;

		if ((ntohl(sin->sin_addr.s_addr) >> 24) != 127)
			die("%s: not a loopback address", host);
	} else if (res->ai_family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)res->ai_addr;

		if (!IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr))
			die("%s: not a loopback address", host);
	} else
		die("%s: unknown address family", host);
	memcpy(&target, res->ai_addr, res->ai_addrlen);
	target_len = res->ai_addrlen;
	freeaddrinfo(res);
}

/* Close fd keeping errno; return -1 for the caller's convenience. */
static int
close_keep(int fd)
{
	int e = errno;

	close(fd);
	errno = e;
	return -1;
}

/* Start a nonblocking connect to target; return the fd, or -1. */
static int
connect_start(void)
{
	int fd;

	if ((fd = socket(target.ss_family, SOCK_STREAM, 0)) == -1)
		return -1;
	if (set_flags(fd) == -1)
		return close_keep(fd);
	set_nodelay(fd);
	if (connect(fd, (struct sockaddr *)&target, target_len) == -1 &&
	    errno != EINPROGRESS)
		return close_keep(fd);
	return fd;
}

/* Return 0 if the connect on fd succeeded, or -1 with errno set. */
static int
connect_result(int fd)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
		return -1;
	if (err != 0) {
		errno = err;
		return -1;
	}
	return 0;
}

/* Wait up to secs for events on fd; return revents, 0 on timeout, -1. */
static int
wait_fd(int fd, short events, double secs)
{
	struct pollfd p;
	int r;

	p.fd = fd;
	p.events = events;
	p.revents = 0;
	do
		r = poll(&p, 1, (int)(secs * 1000));
	while (r == -1 && errno == EINTR);
	if (r <= 0)
		return r;
	return p.revents;
}

/* Connect to target and wait for it; return the fd, or -1. */
static int
connect_wait(void)
{
	int fd, r;

	if ((fd = connect_start()) == -1)
		return -1;
	if ((r = wait_fd(fd, POLLOUT, IO_TIMEOUT)) <= 0) {
		if (r == 0)
			errno = ETIMEDOUT;
		return close_keep(fd);
	}
	if (connect_result(fd) == -1)
		return close_keep(fd);
	return fd;
}

/* Write all of buf to the nonblocking fd; return 0, or -1 on error. */
static int
send_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	ssize_t n;
	int r;

	while (len > 0) {
		n = write(fd, p, len);
		if (n > 0) {
			p += n;
			len -= (size_t)n;
			continue;
		}
		if (n == -1 && errno != EAGAIN && errno != EINTR)
			return -1;
		if ((r = wait_fd(fd, POLLOUT, IO_TIMEOUT)) <= 0) {
			if (r == 0)
				errno = ETIMEDOUT;
			return -1;
		}
	}
	return 0;
}

/* Raise the soft descriptor limit to the hard one; best effort. */
static void
raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* Append c to the vector *v of *n pointers; die when out of memory. */
static void
push(struct conn ***v, size_t *n, size_t *cap, struct conn *c)
{
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 64;
		if ((*v = realloc(*v, *cap * sizeof(**v))) == NULL)
			die("realloc:");
	}
	(*v)[(*n)++] = c;
}

/* Return the poll events backend connection c wants. */
static short
want(const struct conn *c)
{
	if (c->plen > 0)
		return POLLOUT;
	if (c->mode == 'R')
		return POLLIN | POLLOUT;
	return POLLIN;
}

/*
 * Echo n bytes of scratch on c, keeping what the socket does not take.
 * Return 0 to keep c polled, 1 to park it, -1 to close it.
 */
static int
echo(struct conn *c, size_t n)
{
	ssize_t w;

	w = write(c->fd, scratch, n);
	if (w == -1) {
		if (errno != EAGAIN && errno != EINTR)
			return -1;
		w = 0;
	}
	if ((size_t)w < n) {
		c->plen = n - (size_t)w;
		c->poff = 0;
		if ((c->pend = malloc(c->plen)) == NULL)
			return -1;
		memcpy(c->pend, scratch + w, c->plen);
		return 0;
	}
	if (c->closing)
		return -1;
	return c->mode == 'H';
}

/*
 * Serve one ready backend connection: POLLHUP and POLLERR count as
 * readable and read() tells.  Return 0 to keep c polled, 1 to park it,
 * -1 to close it.
 */
static int
conn_io(struct conn *c, short rev)
{
	ssize_t n;
	size_t off = 0;

	if (rev & (POLLHUP | POLLERR))
		rev |= POLLIN;
	if (c->plen > 0) {
		n = write(c->fd, c->pend + c->poff, c->plen - c->poff);
		if (n == -1)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		c->poff += (size_t)n;
		if (c->poff < c->plen)
			return 0;
		free(c->pend);
		c->pend = NULL;
		c->plen = c->poff = 0;
		if (c->closing)
			return -1;
		return c->mode == 'H';
	}
	if (c->mode == 'R' && (rev & POLLOUT)) {
		n = write(c->fd, scratch, sizeof(scratch));
		if (n == -1 && errno != EAGAIN && errno != EINTR)
			return -1;
	}
	if (!(rev & POLLIN))
		return 0;
	n = read(c->fd, scratch, sizeof(scratch));
	if (n == 0)
		return -1;
	if (n == -1)
		return errno == EAGAIN || errno == EINTR ? 0 : -1;
	if (c->mode == 0) {
		c->mode = (unsigned char)scratch[0];
		if (strchr("ECHSR", c->mode) == NULL)
			return -1;
		off = 1;
	}
	switch (c->mode) {
	case 'S':
		if (memchr(scratch + off, 0xff, (size_t)n - off) != NULL &&
		    send_all(c->fd, "A", 1) == -1)
			return -1;
		return 0;
	case 'R':
		return 0;
	case 'C':
		c->seen += (size_t)n;
		if (c->seen >= CRATE_LEN)
			c->closing = 1;
		return echo(c, (size_t)n);
	default:
		return echo(c, (size_t)n);
	}
}

/* Move parked connections with something to read back to act. */
static void
sweep(struct conn ***park, size_t *npark, struct conn ***act, size_t *nact,
    size_t *capact)
{
	struct pollfd *p;
	size_t i, j;

	if (*npark == 0)
		return;
	if ((p = malloc(*npark * sizeof(*p))) == NULL)
		return;	/* try again at the next sweep */
	for (i = 0; i < *npark; i++) {
		p[i].fd = (*park)[i]->fd;
		p[i].events = POLLIN;
		p[i].revents = 0;
	}
	if (poll(p, (nfds_t)*npark, 0) > 0) {
		for (i = j = 0; i < *npark; i++) {
			if (p[i].revents) {
				(*park)[i]->parked = 0;
				push(act, nact, capact, (*park)[i]);
			} else
				(*park)[j++] = (*park)[i];
		}
		*npark = j;
	}
	free(p);
}

/* Run the backend on host:port forever. */
static void
serve(const char *host, const char *port)
{
	struct conn **act = NULL, **park = NULL, *c;
	struct pollfd *pfd = NULL;
	size_t nact = 0, capact = 0, npark = 0, cappark = 0, npfd = 0;
	size_t i, j, m;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char name[INET6_ADDRSTRLEN];
	double next_sweep = now() + PARK_SWEEP, pause_until = 0, t;
	int lfd, fd, one = 1, r, timeout;

	resolve(host, port);
	if ((lfd = socket(target.ss_family, SOCK_STREAM, 0)) == -1)
		die("socket:");
	(void)setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&target, target_len) == -1)
		die("bind %s:%s:", host, port);
	if (listen(lfd, 4096) == -1 || set_flags(lfd) == -1)
		die("listen:");
	if (getsockname(lfd, (struct sockaddr *)&ss, &sl) == -1)
		die("getsockname:");
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &s6->sin6_addr, name, sizeof(name));
		fprintf(stderr, "loadgen: listening on [%s]:%u\n", name,
		    ntohs(s6->sin6_port));
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &sin->sin_addr, name, sizeof(name));
		fprintf(stderr, "loadgen: listening on %s:%u\n", name,
		    ntohs(sin->sin_port));
	}
	fflush(stderr);

	for (;;) {
		if (npfd < nact + 1) {
			npfd = (nact + 1) * 2;
			if ((pfd = realloc(pfd, npfd * sizeof(*pfd))) == NULL)
				die("realloc:");
		}
		t = now();
		pfd[0].fd = t >= pause_until ? lfd : -1;
		pfd[0].events = POLLIN;
		pfd[0].revents = 0;
		for (i = 0; i < nact; i++) {
			pfd[i + 1].fd = act[i]->fd;
			pfd[i + 1].events = want(act[i]);
			pfd[i + 1].revents = 0;
		}
		timeout = -1;
		if (npark > 0)
			timeout = next_sweep > t ?
			    (int)((next_sweep - t) * 1000) + 1 : 0;
		if (pfd[0].fd == -1)
			timeout = 100;
		if (poll(pfd, (nfds_t)(nact + 1), timeout) == -1 &&
		    errno != EINTR)
			die("poll:");

		/* Serve the connections; compact act in the same pass. */
		m = nact;
		for (i = j = 0; i < m; i++) {
			c = act[i];
			r = pfd[i + 1].revents ? conn_io(c, pfd[i + 1].revents)
			    : 0;
			if (r == -1) {
				close(c->fd);
				free(c->pend);
				free(c);
			} else if (r == 1) {
				c->parked = 1;
				push(&park, &npark, &cappark, c);
			} else
				act[j++] = c;
		}
		nact = j;

		/* Accepting never spins: until EAGAIN, at most 256. */
		for (i = 0; (pfd[0].revents & POLLIN) && i < 256; i++) {
			if ((fd = accept(lfd, NULL, NULL)) == -1) {
				if (errno == EMFILE || errno == ENFILE) {
					warn("accept:");
					pause_until = now() + 0.1;
				}
				break;
			}
			if (set_flags(fd) == -1 ||
			    (c = calloc(1, sizeof(*c))) == NULL) {
				close(fd);
				continue;
			}
			set_nodelay(fd);
			c->fd = fd;
			push(&act, &nact, &capact, c);
		}

		if (npark > 0 && now() >= next_sweep) {
			sweep(&park, &npark, &act, &nact, &capact);
			next_sweep = now() + PARK_SWEEP;
		}
	}
}

/* Print a free port on host (bound and released: a small race). */
static void
free_port(const char *host)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int fd;

	resolve(host, "0");
	if ((fd = socket(target.ss_family, SOCK_STREAM, 0)) == -1)
		die("socket:");
	if (bind(fd, (struct sockaddr *)&target, target_len) == -1 ||
	    getsockname(fd, (struct sockaddr *)&ss, &sl) == -1)
		die("bind:");
	if (ss.ss_family == AF_INET6)
		printf("%u\n", ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
	else
		printf("%u\n", ntohs(((struct sockaddr_in *)&ss)->sin_port));
	close(fd);
}

/* Bulk throughput: upload to the sink or download from the source. */
static void
bulk(int up, int streams, double dur)
{
	struct pollfd *p;
	unsigned long long bytes = 0;
	double t0, t1, deadline;
	int i, live, acked = 0, errors = 0, dead;
	char mode = up ? 'S' : 'R', end = (char)0xff;
	ssize_t n;

	if ((p = calloc((size_t)streams, sizeof(*p))) == NULL)
		die("calloc:");
	for (i = 0; i < streams; i++) {
		if ((p[i].fd = connect_wait()) == -1)
			die("connect:");
		if (send_all(p[i].fd, &mode, 1) == -1)
			die("write:");
		p[i].events = up ? POLLOUT : POLLIN;
	}
	memset(scratch, 0, sizeof(scratch));
	live = streams;
	t0 = now();
	deadline = t0 + dur;
	while (live > 0 && now() < deadline) {
		if (poll(p, (nfds_t)streams, 100) == -1 && errno != EINTR)
			die("poll:");
		for (i = 0; i < streams; i++) {
			if (p[i].fd == -1 || p[i].revents == 0)
				continue;
			if (up)
				n = write(p[i].fd, scratch, sizeof(scratch));
			else
				n = read(p[i].fd, scratch, sizeof(scratch));
			if (n > 0) {
				bytes += (unsigned long long)n;
			} else if (n == 0 ||
			    (errno != EAGAIN && errno != EINTR)) {
				errors++;
				close(p[i].fd);
				p[i].fd = -1;
				live--;
			}
		}
	}
	t1 = now();
	if (up) {
		/* Every byte counts only once the sink has seen it. */
		for (i = 0; i < streams; i++) {
			if (p[i].fd == -1)
				continue;
			if (send_all(p[i].fd, &end, 1) == -1) {
				errors++;
				close(p[i].fd);
				p[i].fd = -1;
				live--;
			}
			p[i].events = POLLIN;
		}
		while (acked < live && now() < deadline + IO_TIMEOUT) {
			if (poll(p, (nfds_t)streams, 100) == -1 &&
			    errno != EINTR)
				die("poll:");
			for (i = 0; i < streams; i++) {
				if (p[i].fd == -1 || p[i].revents == 0)
					continue;
				n = read(p[i].fd, scratch, 1);
				dead = n == 0 || (n == -1 &&
				    errno != EAGAIN && errno != EINTR);
				if (n == 1 && scratch[0] == 'A')
					acked++;
				else if (n > 0 || dead)
					errors++;
				else
					continue;
				close(p[i].fd);
				p[i].fd = -1;
			}
		}
		errors += live - acked;
		t1 = now();
	}
	for (i = 0; i < streams; i++)
		if (p[i].fd != -1)
			close(p[i].fd);
	free(p);
	printf("test=%s streams=%d bytes=%llu secs=%.3f MBps=%.1f "
	    "Gbps=%.3f errors=%d\n", up ? "up" : "down", streams, bytes,
	    t1 - t0, (double)bytes / (t1 - t0) / 1e6,
	    (double)bytes * 8 / (t1 - t0) / 1e9, errors);
}

/* Return the latency in microseconds at quantile q of the histogram. */
static double
quantile(unsigned long long count, double q)
{
	unsigned long long want_n, sum = 0;
	size_t i;

	if (count == 0)
		return 0;
	want_n = (unsigned long long)(q * (double)count);
	if (want_n == 0)
		want_n = 1;
	for (i = 0; i < HIST_N; i++) {
		sum += hist[i];
		if (sum >= want_n)
			break;
	}
	return ((double)i + 0.5) * HIST_NS / 1000.0;
}

/* Round trips of size bytes over conns connections for dur seconds. */
static void
rr(int conns, double dur, size_t size)
{
	struct cli *cl;
	struct pollfd *p;
	char *req;
	unsigned long long count = 0, t, d;
	double t0, tlast, deadline;
	int i, outstanding = 0, errors = 0;
	ssize_t n;
	size_t k;

	cl = calloc((size_t)conns, sizeof(*cl));
	p = calloc((size_t)conns, sizeof(*p));
	req = malloc(size);
	if (cl == NULL || p == NULL || req == NULL)
		die("calloc:");
	memset(req, 'E', size);
	for (i = 0; i < conns; i++)
		if ((cl[i].fd = connect_wait()) == -1)
			die("connect:");
	t0 = tlast = now();
	deadline = t0 + dur;
	for (i = 0; i < conns; i++) {
		cl[i].t0 = now_ns();
		if (send_all(cl[i].fd, req, size) == -1)
			die("write:");
		cl[i].state = CS_READING;
		outstanding++;
	}
	while (outstanding > 0 && now() < deadline + IO_TIMEOUT) {
		for (i = 0; i < conns; i++) {
			p[i].fd = cl[i].state == CS_READING ? cl[i].fd : -1;
			p[i].events = POLLIN;
			p[i].revents = 0;
		}
		if (poll(p, (nfds_t)conns, 100) == -1 && errno != EINTR)
			die("poll:");
		for (i = 0; i < conns; i++) {
			if (p[i].fd == -1 || p[i].revents == 0)
				continue;
			n = read(cl[i].fd, scratch, size - cl[i].got);
			if (n == -1 && (errno == EAGAIN || errno == EINTR))
				continue;
			for (k = 0; n > 0 && k < (size_t)n; k++)
				if (scratch[k] != 'E')
					n = 0;
			if (n <= 0) {
				errors++;
				outstanding--;
				cl[i].state = CS_DONE;
				continue;
			}
			if ((cl[i].got += (size_t)n) < size)
				continue;
			t = now_ns();
			d = (t - cl[i].t0) / HIST_NS;
			hist[d < HIST_N ? d : HIST_N - 1]++;
			count++;
			tlast = now();
			cl[i].got = 0;
			if (tlast >= deadline) {
				cl[i].state = CS_DONE;
				outstanding--;
				continue;
			}
			cl[i].t0 = t;
			if (send_all(cl[i].fd, req, size) == -1) {
				errors++;
				cl[i].state = CS_DONE;
				outstanding--;
			}
		}
	}
	errors += outstanding;
	for (i = 0; i < conns; i++)
		close(cl[i].fd);
	printf("test=rr conns=%d size=%zu rt=%llu secs=%.3f rtps=%.0f "
	    "p50_us=%.1f p99_us=%.1f p999_us=%.1f errors=%d\n", conns, size,
	    count, tlast - t0, count / (tlast - t0), quantile(count, 0.5),
	    quantile(count, 0.99), quantile(count, 0.999), errors);
	free(cl);
	free(p);
	free(req);
}

/* Connections per second: connect, 16-byte echo, close, par at once. */
static void
connrate(int par, double dur)
{
	struct cli *cl;
	struct pollfd *p;
	char msg[CRATE_LEN];
	unsigned long long ok = 0;
	unsigned long e_conn = 0, e_reset = 0, e_short = 0, e_time = 0;
	double t0, deadline, t;
	int i, idle;
	ssize_t n, k;

	cl = calloc((size_t)par, sizeof(*cl));
	p = calloc((size_t)par, sizeof(*p));
	if (cl == NULL || p == NULL)
		die("calloc:");
	memset(msg, 'C', sizeof(msg));
	for (i = 0; i < par; i++)
		cl[i].fd = -1;
	t0 = now();
	deadline = t0 + dur;
	while ((t = now()) < deadline) {
		idle = 0;
		for (i = 0; i < par; i++) {
			if (cl[i].state == CS_IDLE) {
				cl[i].t0 = now_ns();
				if ((cl[i].fd = connect_start()) == -1) {
					e_conn++;
					idle = 1;
				} else {
					cl[i].state = CS_CONNECTING;
					cl[i].got = 0;
				}
			} else if (t - (double)cl[i].t0 / 1e9 > IO_TIMEOUT) {
				e_time++;
				close(cl[i].fd);
				cl[i].state = CS_IDLE;
				idle = 1;
			}
			p[i].fd = cl[i].state == CS_IDLE ? -1 : cl[i].fd;
			p[i].events = cl[i].state == CS_CONNECTING ? POLLOUT
			    : POLLIN;
			p[i].revents = 0;
		}
		if (poll(p, (nfds_t)par, idle ? 10 : 100) == -1 &&
		    errno != EINTR)
			die("poll:");
		for (i = 0; i < par; i++) {
			if (p[i].fd == -1 || p[i].revents == 0)
				continue;
			if (cl[i].state == CS_CONNECTING) {
				if (connect_result(cl[i].fd) == -1 ||
				    write(cl[i].fd, msg, sizeof(msg)) !=
				    (ssize_t)sizeof(msg)) {
					e_conn++;
					close(cl[i].fd);
					cl[i].state = CS_IDLE;
				} else
					cl[i].state = CS_READING;
				continue;
			}
			n = read(cl[i].fd, scratch, sizeof(scratch));
			if (n == -1 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (n > 0) {
				for (k = 0; k < n; k++)
					if (scratch[k] != 'C')
						break;
				cl[i].got += (size_t)n;
				if (k == n && cl[i].got <= CRATE_LEN)
					continue;
				e_short++;
			} else if (n == -1)
				e_reset++;
			else if (cl[i].got == CRATE_LEN)
				ok++;
			else
				e_short++;
			close(cl[i].fd);
			cl[i].state = CS_IDLE;
		}
	}
	t = now();
	for (i = 0; i < par; i++)
		if (cl[i].state != CS_IDLE)
			close(cl[i].fd);
	printf("test=connrate parallel=%d conns=%llu secs=%.3f cps=%.0f "
	    "errors=%lu err_connect=%lu err_reset=%lu err_short=%lu "
	    "err_timeout=%lu\n", par, ok, t - t0, ok / (t - t0),
	    e_conn + e_reset + e_short + e_time, e_conn, e_reset, e_short,
	    e_time);
	free(cl);
	free(p);
}

/*
 * Take the n slots of cl through one 8-byte echo each: connecting first
 * when connect is set, else on the connection already held.  A slot ends
 * CS_HELD on success, CS_DONE (closed) on failure.  Return the number
 * held.
 */
static int
hold_pass(struct cli *cl, int n, int connect, double limit)
{
	struct pollfd *p;
	int *fl, nfl = 0, next = 0, held = 0, i, j, s, batch;
	char msg[HOLD_LEN];
	double start = now();
	unsigned long long t;
	ssize_t r;

	/*
	 * Connects go HOLD_BATCH at a time, not to overflow listen queues;
	 * checks go all at once, for the backend looks at parked
	 * connections only once a second.
	 */
	batch = connect ? HOLD_BATCH : n;
	p = calloc((size_t)batch, sizeof(*p));
	fl = calloc((size_t)batch, sizeof(*fl));
	if (p == NULL || fl == NULL)
		die("calloc:");
	memset(msg, 'H', sizeof(msg));
	while (next < n || nfl > 0) {
		/* Fill the batch; past the time limit, start nothing. */
		while (nfl < batch && next < n && now() - start < limit) {
			s = next++;
			if (!connect && cl[s].state != CS_HELD)
				continue;
			cl[s].t0 = now_ns();
			cl[s].got = 0;
			if (connect) {
				if ((cl[s].fd = connect_start()) == -1) {
					cl[s].state = CS_DONE;
					continue;
				}
				cl[s].state = CS_CONNECTING;
			} else if (write(cl[s].fd, msg, sizeof(msg)) !=
			    (ssize_t)sizeof(msg)) {
				close(cl[s].fd);
				cl[s].state = CS_DONE;
				continue;
			} else
				cl[s].state = CS_READING;
			fl[nfl++] = s;
		}
		if (nfl == 0) {
			/* Out of time: what was not started fails. */
			for (; next < n; next++) {
				if (!connect && cl[next].state == CS_HELD)
					close(cl[next].fd);
				cl[next].state = CS_DONE;
			}
			break;
		}
		for (i = 0; i < nfl; i++) {
			p[i].fd = cl[fl[i]].fd;
			p[i].events = cl[fl[i]].state == CS_CONNECTING ?
			    POLLOUT : POLLIN;
			p[i].revents = 0;
		}
		if (poll(p, (nfds_t)nfl, 100) == -1 && errno != EINTR)
			die("poll:");
		t = now_ns();
		for (i = 0; i < nfl; i++) {
			s = fl[i];
			if (p[i].revents == 0) {
				if ((double)(t - cl[s].t0) / 1e9 > IO_TIMEOUT)
					goto fail;
				continue;
			}
			if (cl[s].state == CS_CONNECTING) {
				if (connect_result(cl[s].fd) == -1 ||
				    write(cl[s].fd, msg, sizeof(msg)) !=
				    (ssize_t)sizeof(msg))
					goto fail;
				cl[s].state = CS_READING;
				continue;
			}
			r = read(cl[s].fd, scratch, sizeof(msg) - cl[s].got);
			if (r == -1 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (r <= 0 || memcmp(scratch, msg, (size_t)r) != 0)
				goto fail;
			if ((cl[s].got += (size_t)r) < sizeof(msg))
				continue;
			cl[s].state = CS_HELD;
			held++;
			fl[i] = -1;
			continue;
fail:
			close(cl[s].fd);
			cl[s].state = CS_DONE;
			fl[i] = -1;
		}
		for (i = j = 0; i < nfl; i++)
			if (fl[i] != -1)
				fl[j++] = fl[i];
		nfl = j;
	}
	free(p);
	free(fl);
	return held;
}

/*
 * Open n connections, check each with an echo, hold them until dur runs
 * out or SIGUSR1/SIGTERM comes, then check each again.
 */
static void
hold(int n, double dur)
{
	struct cli *cl;
	struct sigaction sa;
	double t0, t1, until;
	int ok, alive, i;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	if ((cl = calloc((size_t)n, sizeof(*cl))) == NULL)
		die("calloc:");
	t0 = now();
	ok = hold_pass(cl, n, 1, 120);
	t1 = now();
	printf("test=hold phase=open conns=%d ok=%d errors=%d secs=%.3f "
	    "cps=%.0f\n", n, ok, n - ok, t1 - t0, ok / (t1 - t0));
	fflush(stdout);
	until = t1 + dur;
	while (!stop_flag && now() < until)
		poll(NULL, 0, 50);
	t0 = now();
	alive = hold_pass(cl, n, 0, 120);
	t1 = now();
	printf("test=hold phase=verify conns=%d alive=%d lost=%d secs=%.3f\n",
	    ok, alive, ok - alive, t1 - t0);
	for (i = 0; i < n; i++)
		if (cl[i].state == CS_HELD)
			close(cl[i].fd);
	free(cl);
}

/* Return the positive number in s, or die naming opt. */
static double
number(const char *s, int opt)
{
	char *end;
	double d;

	d = strtod(s, &end);
	if (*end != '\0' || d <= 0)
		die("-%c %s: not a positive number", opt, s);
	return d;
}

/* Run one mode; exit 0, 1 on a failure, 2 on a usage error. */
int
main(int argc, char *argv[])
{
	const char *mode, *port = "0";
	double dur = 3;
	int c, conns = 1, nhold = 1000;
	size_t size = 64;

	if (argc < 2)
		usage();
	mode = argv[1];
	signal(SIGPIPE, SIG_IGN);
	signal(SIGALRM, on_alarm);
	raise_nofile();
	argc--;
	argv++;
	while ((c = getopt(argc, argv, "c:d:n:p:s:")) != -1) {
		switch (c) {
		case 'c':
			conns = (int)number(optarg, c);
			break;
		case 'd':
			dur = number(optarg, c);
			break;
		case 'n':
			nhold = (int)number(optarg, c);
			break;
		case 'p':
			port = optarg;
			break;
		case 's':
			size = (size_t)number(optarg, c);
			if (size > BUFSZ)
				die("-s %s: at most %d", optarg, BUFSZ);
			break;
		default:
			usage();
		}
	}
	argc -= optind;
	argv += optind;

	if (strcmp(mode, "serve") == 0) {
		serve(argc > 0 ? argv[0] : "127.0.0.1", port);
		return 0;
	}
	if (strcmp(mode, "port") == 0) {
		free_port(argc > 0 ? argv[0] : "127.0.0.1");
		return 0;
	}
	if (argc != 2)
		usage();
	resolve(argv[0], argv[1]);
	alarm((unsigned int)dur + 60);
	if (strcmp(mode, "up") == 0 || strcmp(mode, "down") == 0)
		bulk(mode[0] == 'u', conns, dur);
	else if (strcmp(mode, "rr") == 0)
		rr(conns, dur, size);
	else if (strcmp(mode, "connrate") == 0)
		connrate(conns, dur);
	else if (strcmp(mode, "hold") == 0) {
		alarm((unsigned int)dur + 300);
		hold(nhold, dur);
	} else
		usage();
	return 0;
}
