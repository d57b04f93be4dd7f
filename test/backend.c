/*
 * backend.c - a test server for tcpproxy's suite.
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * It listens on -l HOST (127.0.0.1) port -p PORT (0: any), prints
 * "listening on ADDR:PORT" on stderr once it accepts, and serves every
 * client in a child process of its own, in one of these modes:
 *
 *   echo        send back every byte read, close after EOF
 *   sink        read until EOF, print "recv N CKSUM"
 *   source N    send N pattern bytes, print "sent N CKSUM", shut the write
 *               side, read until EOF, close
 *   burst N     send N pattern bytes, print "sent N CKSUM", close at once
 *   reply N     read until EOF, print "recv ...", then send N pattern
 *               bytes and print "sent ..." (the half-close case)
 *   slow N      read N bytes at a time with a pause of -d ms, print
 *               "recv ..." at EOF
 *   blackhole   never complete a handshake: listen with a backlog of 0,
 *               fill the accept queue ourselves so that further SYNs are
 *               dropped, and never accept
 *   freeport    print the line and exit; the port is then free
 *   closed      bind a port without listening and hold it until killed:
 *               connects to it are refused, and nothing else (a proxy
 *               asking for port 0, say) can be given it meanwhile
 *
 * Report lines go to stdout, one write() each, so that children sharing
 * the file do not interleave.  CKSUM is FNV-1a 64 in hex.  The pattern is
 * the xorshift32 stream of seed -s; both come from common.h, shared with
 * client.c.  The process makes itself a process group leader so that a
 * test can kill it and all its children at once.  An alarm() ends
 * everything after -a seconds.
 */
/* common.h brings the system headers. */
#define PROG "backend"
#define COMMON_WANT_SEND
#define COMMON_WANT_STREAM
#include "common.h"

#define HOSTLEN		256	/* NI_MAXHOST is not POSIX */

static int send_pattern(int, unsigned long long, struct sum *);
static int recv_all(int, size_t, long, struct sum *);
static int listen_on(const char *, const char *, int, char *, size_t);
static void blackhole(int, const char *);
static void serve(int);
static void usage(void);

static const char *mode;
static unsigned long long count;
static unsigned long seed = 1;
static long delay_ms = 10;

/* Sends total pattern bytes, summing what was written; 0 or -1. */
static int
send_pattern(int fd, unsigned long long total, struct sum *s)
{
	static unsigned char buf[BUFSZ];
	struct pattern p;
	size_t chunk;

	pattern_init(&p, seed);
	sum_init(s);
	while (s->n < total) {
		chunk = total - s->n < BUFSZ ? (size_t)(total - s->n) : BUFSZ;
		pattern_fill(&p, buf, chunk);
		if (send_all(fd, buf, chunk) == -1)
			return -1;
		sum_add(s, buf, chunk);
	}
	return 0;
}

/*
 * Reads until EOF, at most step bytes per read() with a pause of pause
 * ms between reads, and optionally echoes.  Returns 0 at EOF, -1 on error.
 */
static int
recv_all(int fd, size_t step, long pause, struct sum *s)
{
	static unsigned char buf[BUFSZ];
	ssize_t n;
	int echo = strcmp(mode, "echo") == 0;

	sum_init(s);
	if (step == 0 || step > BUFSZ)
		step = BUFSZ;
	for (;;) {
		n = read(fd, buf, step);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			return 0;
		sum_add(s, buf, (size_t)n);
		if (echo && send_all(fd, buf, (size_t)n) == -1)
			return -1;
		if (pause > 0)
			pause_ms(pause);
	}
}

/*
 * Binds host:port and listens with the given backlog.  Returns the
 * socket and writes "ADDR:PORT" to name.
 */
static int
listen_on(const char *host, const char *port, int backlog, char *name,
    size_t namelen)
{
	struct addrinfo *res;
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	char h[HOSTLEN], p[16];
	int fd, on = 1, rc;

	res = resolve(host, port, AI_PASSIVE | AI_NUMERICHOST);
	fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
	if (fd == -1)
		die("socket:");
	/* A held port (backlog < 0) must not be shared with anyone. */
	if (backlog >= 0)
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on,
		    sizeof(on));
	if (bind(fd, res->ai_addr, res->ai_addrlen) == -1)
		die("bind %s:", host);
	freeaddrinfo(res);
	if (backlog >= 0 && listen(fd, backlog) == -1)
		die("listen:");
	if (getsockname(fd, (struct sockaddr *)&ss, &sslen) == -1)
		die("getsockname:");
	if ((rc = getnameinfo((struct sockaddr *)&ss, sslen, h, sizeof(h), p,
	    sizeof(p), NI_NUMERICHOST | NI_NUMERICSERV)) != 0)
		die("getnameinfo: %s", gai_strerror(rc));
	snprintf(name, namelen, ss.ss_family == AF_INET6 ? "[%s]:%s" :
	    "%s:%s", h, p);
	return fd;
}

/*
 * Fills the accept queue of lfd (listening with backlog 0) with our own
 * connections, then checks that one more connect does not complete.  On
 * Linux a full accept queue makes the kernel drop SYNs, so a proxy's
 * connect just hangs.  Dies if the queue cannot be filled.
 */
static void
blackhole(int lfd, const char *host)
{
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	struct pollfd pfd;
	int fd, i, done;

	if (getsockname(lfd, (struct sockaddr *)&ss, &sslen) == -1)
		die("getsockname:");
	for (i = 0; i < 64; i++) {
		fd = socket(ss.ss_family, SOCK_STREAM, 0);
		if (fd == -1)
			die("socket:");
		set_nonblock(fd);
		done = connect(fd, (struct sockaddr *)&ss, sslen) == 0;
		if (!done && errno != EINPROGRESS)
			die("connect %s:", host);
		if (!done) {
			pfd.fd = fd;
			pfd.events = POLLOUT;
			done = poll(&pfd, 1, 300) == 1;
		}
		/* Keep fd open: it holds its place in the queue. */
		if (!done)
			return;
	}
	die("blackhole: accept queue never filled");
}

/* Serves one client in the current mode, then exits the child. */
static void
serve(int fd)
{
	struct sum s;
	int rc = 0;

	if (strcmp(mode, "echo") == 0) {
		rc = recv_all(fd, 0, 0, &s);
	} else if (strcmp(mode, "sink") == 0) {
		rc = recv_all(fd, 0, 0, &s);
		report("recv", &s, rc ? "error" : NULL);
	} else if (strcmp(mode, "slow") == 0) {
		rc = recv_all(fd, (size_t)count, delay_ms, &s);
		report("recv", &s, rc ? "error" : NULL);
	} else if (strcmp(mode, "source") == 0) {
		rc = send_pattern(fd, count, &s);
		report("sent", &s, rc ? "error" : NULL);
		(void)shutdown(fd, SHUT_WR);
		if (rc == 0)
			rc = recv_all(fd, 0, 0, &s);
	} else if (strcmp(mode, "burst") == 0) {
		rc = send_pattern(fd, count, &s);
		report("sent", &s, rc ? "error" : NULL);
	} else if (strcmp(mode, "reply") == 0) {
		rc = recv_all(fd, 0, 0, &s);
		report("recv", &s, rc ? "error" : NULL);
		if (rc == 0) {
			rc = send_pattern(fd, count, &s);
			report("sent", &s, rc ? "error" : NULL);
		}
	}
	close(fd);
	_exit(rc ? 1 : 0);
}

static void
usage(void)
{
	fputs("usage: backend [-a secs] [-d ms] [-l host] [-p port] [-s seed] "
	    "mode [N]\n"
	    "modes: echo sink source N burst N reply N slow N blackhole "
	    "freeport closed\n", stderr);
	exit(2);
}

int
main(int argc, char *argv[])
{
	const char *host = "127.0.0.1", *port = "0";
	char name[HOSTLEN + 16];
	unsigned int guard = 120;
	int c, lfd, fd, needs_count;
	pid_t pid;

	while ((c = getopt(argc, argv, "a:d:l:p:s:")) != -1) {
		switch (c) {
		case 'a':
			guard = (unsigned int)strtoul(optarg, NULL, 10);
			break;
		case 'd':
			delay_ms = strtol(optarg, NULL, 10);
			break;
		case 'l':
			host = optarg;
			break;
		case 'p':
			port = optarg;
			break;
		case 's':
			seed = strtoul(optarg, NULL, 10);
			break;
		default:
			usage();
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1)
		usage();
	mode = argv[0];
	needs_count = strcmp(mode, "source") == 0 ||
	    strcmp(mode, "burst") == 0 || strcmp(mode, "reply") == 0 ||
	    strcmp(mode, "slow") == 0;
	if (argc != 1 + needs_count)
		usage();
	if (needs_count)
		count = parse_size(argv[1]);
	if (!needs_count && strcmp(mode, "echo") != 0 &&
	    strcmp(mode, "sink") != 0 && strcmp(mode, "blackhole") != 0 &&
	    strcmp(mode, "freeport") != 0 && strcmp(mode, "closed") != 0)
		usage();

	(void)setpgid(0, 0);
	/* Children are reaped by the kernel; we never wait for them. */
	signal(SIGCHLD, SIG_IGN);
	start_guard(guard);

	lfd = listen_on(host, port, strcmp(mode, "blackhole") == 0 ? 0 :
	    strcmp(mode, "closed") == 0 ? -1 : 512, name, sizeof(name));
	if (strcmp(mode, "blackhole") == 0)
		blackhole(lfd, host);
	fprintf(stderr, "listening on %s\n", name);
	fflush(stderr);
	if (strcmp(mode, "freeport") == 0)
		return 0;
	if (strcmp(mode, "blackhole") == 0 || strcmp(mode, "closed") == 0) {
		for (;;)
			pause();
	}
	for (;;) {
		fd = accept(lfd, NULL, NULL);
		if (fd == -1) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			die("accept:");
		}
		pid = fork();
		if (pid == -1)
			die("fork:");
		if (pid == 0) {
			close(lfd);
			/* alarm() is not inherited; guard the child too. */
			alarm(guard);
			serve(fd);
		}
		close(fd);
	}
}
