/*
 * client.c - a test client for tcpproxy's suite.
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * One connection (the default): connect to HOST PORT, send stdin (or -g N
 * pattern bytes), and at the same time copy what arrives to stdout until
 * EOF.  Options change how the connection ends:
 *
 *   -w     shutdown(SHUT_WR) once the input is sent
 *   -x     close once the input is sent, reading nothing
 *   -k N   close after receiving N bytes
 *   -R     make any close of ours a reset (SO_LINGER 0)
 *   -W ms  read nothing for the first ms milliseconds
 *   -P ms  with -g, send one byte at a time, ms milliseconds apart
 *   -r     print "sent N CKSUM" and "recv N CKSUM" instead of the data
 *
 * Parallel echo check (-n K): open K connections, send -g N pattern bytes
 * on each (seed -s plus the connection's index), check that exactly those
 * bytes come back, byte for byte, then close; prints "ok K".  With -W ms
 * the connections sit idle that long, once all are open, before sending.
 *
 * Exit status: 0 fine, 1 connect or I/O error, 3 wrong bytes, 124 when
 * the alarm() guard (-a secs) fires.  CKSUM and the pattern are those of
 * backend.c, from common.h.
 */
/* common.h brings the system headers. */
#define PROG "client"
#define COMMON_WANT_CLOCK
#define COMMON_WANT_STREAM
#include "common.h"

/* One connection of the parallel echo check. */
struct conn {
	int fd;
	struct pattern tx, rx;
	unsigned long long sent, got;
	unsigned char pend[BUFSZ];
	size_t off, len;
};

static void on_alarm(int);
static int dial(const char *, const char *);
static void end_conn(int);
static int run_one(const char *, const char *);
static int run_many(const char *, const char *, int);
static void usage(void);

static unsigned long long gen = 0;
static int use_gen;
static unsigned long seed = 1;
static int opt_shut, opt_close, opt_reset, opt_report;
static unsigned long long opt_keep;
static int use_keep;
static long opt_wait;
static long opt_pace;

/* A hung test must end with a status of its own, not hang the suite. */
static void
on_alarm(int sig)
{
	static const char msg[] = PROG ": timed out\n";

	(void)sig;
	(void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
	_exit(124);
}

/* Returns a connected blocking socket, or dies saying why. */
static int
dial(const char *host, const char *port)
{
	struct addrinfo *res, *ai;
	int fd = -1, rc, saved = 0;

	res = resolve(host, port, 0);
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		if (fd == -1) {
			saved = errno;
			continue;
		}
		while ((rc = connect(fd, ai->ai_addr, ai->ai_addrlen)) == -1 &&
		    errno == EINTR)
			;
		if (rc == 0)
			break;
		saved = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd == -1) {
		errno = saved;
		die("connect %s %s:", host, port);
	}
	return fd;
}

/* Closes fd, as a reset when -R asks for one. */
static void
end_conn(int fd)
{
	struct linger lg;

	if (opt_reset) {
		lg.l_onoff = 1;
		lg.l_linger = 0;
		(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	close(fd);
}

/*
 * Runs the single connection: a poll() loop that moves input to the
 * socket and the socket to stdout.  Returns the exit status.
 */
static int
run_one(const char *host, const char *port)
{
	static unsigned char out[BUFSZ], in[BUFSZ];
	struct pollfd pfd[2];
	struct pattern pat;
	struct sum tx, rx;
	size_t off = 0, len = 0, want;
	ssize_t n;
	long start, left, next_send = 0;
	int fd, input_done = 0, shut = 0, failed = 0, timeout, rc;
	const char *note = NULL;

	fd = dial(host, port);
	start = now_ms();
	set_nonblock(fd);
	if (!use_gen)
		set_nonblock(STDIN_FILENO);
	pattern_init(&pat, seed);
	sum_init(&tx);
	sum_init(&rx);
	for (;;) {
		/* Refill the send buffer from stdin or the pattern. */
		if (len == 0 && !input_done && use_gen &&
		    (opt_pace == 0 || now_ms() >= next_send)) {
			want = gen - tx.n < BUFSZ ? (size_t)(gen - tx.n) :
			    BUFSZ;
			if (opt_pace > 0) {
				if (want > 1)
					want = 1;
				next_send = now_ms() + opt_pace;
			}
			pattern_fill(&pat, out, want);
			off = 0;
			len = want;
			if (want == 0)
				input_done = 1;
		}
		if (len == 0 && input_done && !shut && !failed) {
			if (opt_close) {
				end_conn(fd);
				if (opt_report)
					report("sent", &tx, NULL);
				return 0;
			}
			if (opt_shut)
				(void)shutdown(fd, SHUT_WR);
			shut = 1;
		}
		pfd[0].fd = -1;
		pfd[0].events = POLLIN;
		if (!use_gen && !input_done && len == 0)
			pfd[0].fd = STDIN_FILENO;
		pfd[1].fd = fd;
		pfd[1].events = 0;
		if (len > 0 && !failed)
			pfd[1].events |= POLLOUT;
		timeout = -1;
		left = opt_wait - (now_ms() - start);
		if (left > 0 && !opt_close)
			timeout = (int)left;
		else if (!opt_close)
			pfd[1].events |= POLLIN;
		if (len == 0 && !input_done && use_gen && opt_pace > 0) {
			left = next_send - now_ms();
			if (left < 0)
				left = 0;
			if (timeout == -1 || left < timeout)
				timeout = (int)left;
		}
		if (pfd[0].fd == -1 && pfd[1].events == 0 && timeout == -1)
			break;
		rc = poll(pfd, 2, timeout);
		if (rc == -1 && errno == EINTR)
			continue;
		if (rc == -1)
			die("poll:");
		if (pfd[0].revents) {
			n = read(STDIN_FILENO, out, sizeof(out));
			if (n > 0) {
				off = 0;
				len = (size_t)n;
			} else if (n == 0 || errno != EAGAIN) {
				input_done = 1;
			}
		}
		if (pfd[1].revents & (POLLOUT | POLLERR | POLLHUP) &&
		    len > 0 && !failed) {
			n = write(fd, out + off, len);
			if (n > 0) {
				sum_add(&tx, out + off, (size_t)n);
				off += (size_t)n;
				len -= (size_t)n;
			} else if (n == -1 && errno != EAGAIN &&
			    errno != EINTR) {
				fprintf(stderr, "client: write: %s\n",
				    strerror(errno));
				failed = 1;
				len = 0;
				input_done = 1;
			}
		}
		if (!(pfd[1].events & POLLIN) ||
		    !(pfd[1].revents & (POLLIN | POLLERR | POLLHUP)))
			continue;
		want = sizeof(in);
		if (use_keep && opt_keep - rx.n < want)
			want = (size_t)(opt_keep - rx.n);
		n = read(fd, in, want);
		if (n == -1 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n == -1) {
			fprintf(stderr, "client: read: %s\n", strerror(errno));
			note = "error";
			failed = 1;
			break;
		}
		if (n == 0)
			break;
		sum_add(&rx, in, (size_t)n);
		/* Flushed at once: a test may be watching the file. */
		if (!opt_report) {
			fwrite(in, 1, (size_t)n, stdout);
			fflush(stdout);
		}
		if (use_keep && rx.n >= opt_keep)
			break;
	}
	end_conn(fd);
	if (opt_report) {
		report("sent", &tx, NULL);
		report("recv", &rx, note);
	}
	fflush(stdout);
	return failed ? 1 : 0;
}

/*
 * Runs the parallel echo check over k connections.  Returns the exit
 * status: 0 when every connection got exactly its own bytes back.
 */
static int
run_many(const char *host, const char *port, int k)
{
	static unsigned char in[BUFSZ], expect[BUFSZ];
	struct conn *c;
	struct pollfd *pfd;
	ssize_t n;
	size_t want, j;
	int i, open_conns = k, rc;

	c = calloc((size_t)k, sizeof(*c));
	pfd = calloc((size_t)k, sizeof(*pfd));
	if (c == NULL || pfd == NULL)
		die("calloc:");
	/* Connect them all first, so the bridges are open at once. */
	for (i = 0; i < k; i++) {
		c[i].fd = dial(host, port);
		set_nonblock(c[i].fd);
		pattern_init(&c[i].tx, seed + (unsigned long)i);
		pattern_init(&c[i].rx, seed + (unsigned long)i);
	}
	if (opt_wait > 0)
		pause_ms(opt_wait);
	while (open_conns > 0) {
		for (i = 0; i < k; i++) {
			pfd[i].fd = c[i].fd;
			pfd[i].events = POLLIN;
			if (c[i].len == 0 && c[i].sent < gen) {
				want = gen - c[i].sent < BUFSZ ?
				    (size_t)(gen - c[i].sent) : BUFSZ;
				pattern_fill(&c[i].tx, c[i].pend, want);
				c[i].off = 0;
				c[i].len = want;
			}
			if (c[i].len > 0)
				pfd[i].events |= POLLOUT;
		}
		rc = poll(pfd, (nfds_t)k, -1);
		if (rc == -1 && errno == EINTR)
			continue;
		if (rc == -1)
			die("poll:");
		for (i = 0; i < k; i++) {
			if (c[i].fd == -1 || pfd[i].revents == 0)
				continue;
			if (c[i].len > 0) {
				n = write(c[i].fd, c[i].pend + c[i].off,
				    c[i].len);
				if (n > 0) {
					c[i].off += (size_t)n;
					c[i].len -= (size_t)n;
					c[i].sent += (unsigned long long)n;
				} else if (n == -1 && errno != EAGAIN &&
				    errno != EINTR) {
					die("conn %d: write after %llu "
					    "bytes:", i, c[i].sent);
				}
			}
			n = read(c[i].fd, in, sizeof(in));
			if (n == -1 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (n == -1)
				die("conn %d: read after %llu bytes:", i,
				    c[i].got);
			if (n == 0)
				die("conn %d: EOF after %llu of %llu bytes",
				    i, c[i].got, gen);
			if (c[i].got + (unsigned long long)n > gen) {
				fprintf(stderr, "client: conn %d: %llu bytes "
				    "more than sent\n", i,
				    c[i].got + (unsigned long long)n - gen);
				return 3;
			}
			pattern_fill(&c[i].rx, expect, (size_t)n);
			for (j = 0; j < (size_t)n; j++) {
				if (in[j] != expect[j]) {
					fprintf(stderr, "client: conn %d: "
					    "wrong byte at offset %llu\n", i,
					    c[i].got + j);
					return 3;
				}
			}
			c[i].got += (unsigned long long)n;
			if (c[i].got == gen) {
				close(c[i].fd);
				c[i].fd = -1;
				open_conns--;
			}
		}
	}
	free(c);
	free(pfd);
	printf("ok %d\n", k);
	return 0;
}

static void
usage(void)
{
	fputs("usage: client [-rRwx] [-a secs] [-g bytes] [-k bytes] "
	    "[-n conns] [-P ms] [-s seed] [-W ms] host port\n", stderr);
	exit(2);
}

int
main(int argc, char *argv[])
{
	unsigned int guard = 120;
	int c, k = 0;

	while ((c = getopt(argc, argv, "a:g:k:n:P:rRs:wW:x")) != -1) {
		switch (c) {
		case 'a':
			guard = (unsigned int)strtoul(optarg, NULL, 10);
			break;
		case 'g':
			gen = parse_size(optarg);
			use_gen = 1;
			break;
		case 'k':
			opt_keep = parse_size(optarg);
			use_keep = 1;
			break;
		case 'n':
			k = atoi(optarg);
			break;
		case 'P':
			opt_pace = strtol(optarg, NULL, 10);
			break;
		case 'r':
			opt_report = 1;
			break;
		case 'R':
			opt_reset = 1;
			break;
		case 's':
			seed = strtoul(optarg, NULL, 10);
			break;
		case 'w':
			opt_shut = 1;
			break;
		case 'W':
			opt_wait = strtol(optarg, NULL, 10);
			break;
		case 'x':
			opt_close = 1;
			break;
		default:
			usage();
		}
	}
	if (argc - optind != 2)
		usage();
	signal(SIGALRM, on_alarm);
	start_guard(guard);
	if (k > 0) {
		if (!use_gen || gen == 0)
			usage();
		return run_many(argv[optind], argv[optind + 1], k);
	}
	return run_one(argv[optind], argv[optind + 1]);
}
