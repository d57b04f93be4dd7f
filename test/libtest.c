/*
 * libtest.c - tests of tcpproxy's library interface.
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * Built with tcpproxy.c and -DTCPPROXY_NO_MAIN.  Everything runs in one
 * process and one thread: the test owns a listening "backend" socket and
 * the client sockets, and drives the proxy with tcpproxy_step() between
 * its own nonblocking reads, so no step depends on another process's
 * timing.  Prints TAP; exits 0 only if every check passed.  An alarm()
 * guard ends a hung run.
 */
/* common.h brings the system headers and tcpproxy.h. */
#define PROG "libtest"
#define CHECK_NUMBERED	1
#define COMMON_WANT_HARNESS
#include "common.h"

#define CHECK(cond)	check((cond) != 0, #cond, __LINE__)
/* Steps the proxy and reads both peers until cond holds, or fails. */
#define UNTIL(p, c, cond) \
	WAIT_UNTIL(5000, pump((p), (c)), cond, #cond)

/* One end of a TCP connection the test holds. */
struct peer {
	int fd;
	char buf[4096];
	size_t len;
	int eof;
};

/* What the hooks saw of one admitted bridge. */
struct slot {
	unsigned long id;
	int closes;
	unsigned long long bytes[2];
	enum tcpproxy_reason reason;
};

/* The hooks' user pointer and the test's state. */
struct ctx {
	int lfd;			/* the backend's listener */
	struct peer cli, srv;		/* the bridge under test */
	int refuse_next;
	int accepts, refused, data_calls, cap_too_small;
	struct slot slots[16];
	int nslots;
	int step_rc;
	char ready[128];		/* the first "listening on" line */
};

static void peer_reset(struct peer *);
static void peer_close(struct peer *);
static void peer_read(struct peer *);
static void pump(struct tcpproxy *, struct ctx *);
static void send_str(int, const char *);
static void on_log(void *, int, const char *);
static enum tcpproxy_verdict on_accept(void *,
    const struct tcpproxy_bridge_info *, void **);
static enum tcpproxy_verdict on_data(void *, void *,
    const struct tcpproxy_bridge_info *, enum tcpproxy_dir, char *,
    size_t *, size_t);
static void on_close(void *, void *, const struct tcpproxy_bridge_info *);
static struct tcpproxy *proxy_new(struct ctx *, const struct tcpproxy_hooks *,
    int);
static void open_bridge(struct tcpproxy *, struct ctx *, int);

static void
peer_reset(struct peer *pe)
{
	pe->fd = -1;
	pe->len = 0;
	pe->eof = 0;
}

static void
peer_close(struct peer *pe)
{
	if (pe->fd != -1)
		close(pe->fd);
	peer_reset(pe);
}

/* Appends whatever is readable now; notes EOF (or a reset) in eof. */
static void
peer_read(struct peer *pe)
{
	ssize_t n;

	while (pe->fd != -1 && !pe->eof && pe->len < sizeof(pe->buf)) {
		n = read(pe->fd, pe->buf + pe->len, sizeof(pe->buf) - pe->len);
		if (n > 0)
			pe->len += (size_t)n;
		else if (n == 0 || (errno != EAGAIN && errno != EINTR))
			pe->eof = 1;
		else
			return;
	}
}

/* Runs one proxy round, accepts a pending backend connection, reads. */
static void
pump(struct tcpproxy *p, struct ctx *c)
{
	int fd;

	c->step_rc = tcpproxy_step(p, 10);
	if (c->srv.fd == -1 && c->lfd != -1 &&
	    (fd = accept_nonblock(c->lfd)) != -1) {
		peer_reset(&c->srv);
		c->srv.fd = fd;
	}
	peer_read(&c->cli);
	peer_read(&c->srv);
}

/* Writes a short string; loopback buffers take it in one go. */
static void
send_str(int fd, const char *s)
{
	CHECK(write(fd, s, strlen(s)) == (ssize_t)strlen(s));
}

static void
on_log(void *user, int level, const char *line)
{
	struct ctx *c = user;

	(void)level;
	if (c->ready[0] == '\0' && strstr(line, "listening on ") != NULL)
		snprintf(c->ready, sizeof(c->ready), "%s", line);
}

/* Refuses the client when asked to, else gives it a slot. */
static enum tcpproxy_verdict
on_accept(void *user, const struct tcpproxy_bridge_info *info,
    void **bridge_data)
{
	struct ctx *c = user;
	struct slot *s;

	c->accepts++;
	if (c->refuse_next || c->nslots == 16) {
		c->refuse_next = 0;
		c->refused++;
		return TCPPROXY_CLOSE;
	}
	s = &c->slots[c->nslots++];
	s->id = info->id;
	*bridge_data = s;
	return TCPPROXY_PASS;
}

/*
 * Upstream: "quit" ends the bridge, anything else is doubled byte by byte
 * (growing the chunk, which cap allows).  Downstream: "drop" is dropped,
 * anything else is upper-cased in place.
 */
static enum tcpproxy_verdict
on_data(void *user, void *bridge_data, const struct tcpproxy_bridge_info *info,
    enum tcpproxy_dir dir, char *data, size_t *len, size_t cap)
{
	struct ctx *c = user;
	struct slot *s = bridge_data;

	c->data_calls++;
	if (s == NULL || s->id != info->id)
		c->cap_too_small += 1000;
	if (cap < 2 * *len) {
		c->cap_too_small++;
		return TCPPROXY_PASS;
	}
	if (dir == TCPPROXY_UPSTREAM) {
		if (*len >= 4 && memcmp(data, "quit", 4) == 0)
			return TCPPROXY_CLOSE;
		edit_double(data, len);
		return TCPPROXY_PASS;
	}
	if (*len >= 4 && memcmp(data, "drop", 4) == 0)
		return TCPPROXY_DROP;
	edit_upper(data, *len);
	return TCPPROXY_PASS;
}

static void
on_close(void *user, void *bridge_data,
    const struct tcpproxy_bridge_info *info)
{
	struct slot *s = bridge_data;

	(void)user;
	if (s == NULL)
		return;
	s->closes++;
	s->bytes[0] = info->bytes[TCPPROXY_UPSTREAM];
	s->bytes[1] = info->bytes[TCPPROXY_DOWNSTREAM];
	s->reason = info->reason;
}

/* Returns a proxy on 127.0.0.1 port 0 in front of the backend. */
static struct tcpproxy *
proxy_new(struct ctx *c, const struct tcpproxy_hooks *hooks, int bport)
{
	struct tcpproxy_config cfg;
	struct tcpproxy *p;
	char port[16], err[256] = "";

	loopback_config(&cfg, port, sizeof(port), bport);
	cfg.grace = 0.3;
	cfg.log = on_log;
	cfg.log_user = c;
	cfg.hooks = hooks;
	p = tcpproxy_create(&cfg, err, sizeof(err));
	if (p == NULL) {
		printf("# tcpproxy_create: %s\n", err);
		check(0, "tcpproxy_create", __LINE__);
		printf("1..%d\n", checks);
		exit(1);
	}
	return p;
}

/* Connects a client and waits for the backend to get its connection. */
static void
open_bridge(struct tcpproxy *p, struct ctx *c, int port)
{
	peer_reset(&c->cli);
	peer_reset(&c->srv);
	c->cli.fd = loopback_dial(port);
	CHECK(c->cli.fd != -1);
	UNTIL(p, c, c->srv.fd != -1);
}

int
main(void)
{
	static const char *const names[] = {
		NULL, "client-closed", "server-closed", "client-reset",
		"server-reset", "client-error", "server-error",
		"connect-refused", "connect-timeout", "connect-failed",
		"idle-timeout", "hook-closed", "shutdown", "no-memory"
	};
	struct tcpproxy_config cfg;
	struct tcpproxy_hooks hooks;
	struct tcpproxy *p;
	struct ctx c;
	struct slot *s;
	struct pollfd pfd;
	char want[64], err[256];
	int bport, port, i, n, closed_once, names_ok;

	start_guard(60);
	memset(&c, 0, sizeof(c));
	peer_reset(&c.cli);
	peer_reset(&c.srv);
	memset(&hooks, 0, sizeof(hooks));
	hooks.user = &c;
	hooks.on_accept = on_accept;
	hooks.on_data = on_data;
	hooks.on_close = on_close;
	if ((c.lfd = loopback_listen(16, &bport)) == -1)
		die("backend:");

	/* Port "0" gives a real port, announced in the ready line. */
	p = proxy_new(&c, &hooks, bport);
	port = tcpproxy_bound_port(p);
	CHECK(port > 0 && port < 65536 && port != bport);
	snprintf(want, sizeof(want), "listening on 127.0.0.1:%d", port);
	CHECK(strstr(c.ready, want) != NULL);
	CHECK(tcpproxy_bridges(p) == 0);

	/* on_accept refusing: the client is closed, the server never dialled. */
	c.refuse_next = 1;
	c.cli.fd = loopback_dial(port);
	CHECK(c.cli.fd != -1);
	UNTIL(p, &c, c.cli.eof);
	CHECK(c.refused == 1 && c.accepts == 1);
	CHECK(c.cli.len == 0);
	for (i = 0; i < 10; i++)
		pump(p, &c);
	CHECK(c.srv.fd == -1);
	CHECK(c.nslots == 0);
	peer_close(&c.cli);

	/* A bridge with hooks: bytes both ways, edited, grown, dropped. */
	open_bridge(p, &c, port);
	CHECK(c.nslots == 1 && c.accepts == 2);
	s = &c.slots[0];
	CHECK(tcpproxy_bridges(p) == 1);
	send_str(c.cli.fd, "hello");
	UNTIL(p, &c, c.srv.len >= 10);
	CHECK(c.srv.len == 10 && memcmp(c.srv.buf, "hheelllloo", 10) == 0);
	send_str(c.srv.fd, "world");
	UNTIL(p, &c, c.cli.len >= 5);
	CHECK(c.cli.len == 5 && memcmp(c.cli.buf, "WORLD", 5) == 0);
	n = c.data_calls;
	send_str(c.srv.fd, "drop");
	UNTIL(p, &c, c.data_calls > n);
	send_str(c.srv.fd, "after");
	UNTIL(p, &c, c.cli.len >= 10);
	for (i = 0; i < 10; i++)
		pump(p, &c);
	CHECK(c.cli.len == 10 && memcmp(c.cli.buf, "WORLDAFTER", 10) == 0);
	CHECK(c.cap_too_small == 0);
	CHECK(s->closes == 0);

	/* The client leaves: on_close once, with the delivered byte counts. */
	peer_close(&c.cli);
	UNTIL(p, &c, s->closes > 0 && c.srv.eof);
	CHECK(s->closes == 1);
	CHECK(s->reason == TCPPROXY_REASON_CLIENT_CLOSED);
	CHECK(s->bytes[TCPPROXY_UPSTREAM] == 10);
	CHECK(s->bytes[TCPPROXY_DOWNSTREAM] == 10);
	CHECK(tcpproxy_bridges(p) == 0);
	peer_close(&c.srv);

	/* The server leaves: the client gets what was sent, then EOF. */
	open_bridge(p, &c, port);
	s = &c.slots[1];
	send_str(c.srv.fd, "bye");
	peer_close(&c.srv);
	UNTIL(p, &c, c.cli.eof);
	CHECK(c.cli.len == 3 && memcmp(c.cli.buf, "BYE", 3) == 0);
	UNTIL(p, &c, s->closes > 0);
	CHECK(s->closes == 1 && s->reason == TCPPROXY_REASON_SERVER_CLOSED);
	CHECK(s->bytes[TCPPROXY_DOWNSTREAM] == 3);
	peer_close(&c.cli);

	/* on_data saying CLOSE ends the bridge with "hook-closed". */
	open_bridge(p, &c, port);
	s = &c.slots[2];
	send_str(c.cli.fd, "quit");
	UNTIL(p, &c, c.cli.eof && c.srv.eof);
	CHECK(c.srv.len == 0);
	UNTIL(p, &c, s->closes > 0);
	CHECK(s->closes == 1 && s->reason == TCPPROXY_REASON_HOOK);
	CHECK(s->bytes[TCPPROXY_UPSTREAM] == 0);
	peer_close(&c.cli);
	peer_close(&c.srv);

	/*
	 * Stop with a bridge open: it still relays during the grace period,
	 * then is closed with "shutdown", and tcpproxy_step() returns 0.
	 */
	open_bridge(p, &c, port);
	s = &c.slots[3];
	tcpproxy_stop(p);
	pump(p, &c);
	send_str(c.cli.fd, "ab");
	UNTIL(p, &c, c.srv.len >= 4 || c.srv.eof);
	CHECK(c.srv.len == 4 && memcmp(c.srv.buf, "aabb", 4) == 0);
	UNTIL(p, &c, c.step_rc == 0);
	CHECK(c.step_rc == 0);
	CHECK(s->closes == 1 && s->reason == TCPPROXY_REASON_SHUTDOWN);
	UNTIL(p, &c, c.cli.eof && c.srv.eof);
	CHECK(tcpproxy_step(p, 0) == 0);
	CHECK(tcpproxy_bridges(p) == 0);
	i = loopback_dial(port);
	CHECK(i == -1);
	if (i != -1)
		close(i);
	peer_close(&c.cli);
	peer_close(&c.srv);
	tcpproxy_free(p);

	/* tcpproxy_free() with a bridge open calls on_close for it. */
	p = proxy_new(&c, &hooks, bport);
	port = tcpproxy_bound_port(p);
	open_bridge(p, &c, port);
	s = &c.slots[c.nslots - 1];
	CHECK(s->closes == 0);
	tcpproxy_free(p);
	CHECK(s->closes == 1);
	pfd.fd = c.cli.fd;
	pfd.events = POLLIN;
	(void)poll(&pfd, 1, 5000);
	peer_read(&c.cli);
	CHECK(c.cli.eof);
	peer_close(&c.cli);
	peer_close(&c.srv);

	/* Every admitted bridge was closed exactly once. */
	closed_once = 1;
	for (i = 0; i < c.nslots; i++)
		closed_once &= c.slots[i].closes == 1;
	CHECK(closed_once);
	CHECK(c.nslots == 5 && c.accepts == 6 && c.refused == 1);

	/* The log words. */
	names_ok = 1;
	for (i = 1; i < (int)(sizeof(names) / sizeof(names[0])); i++) {
		if (strcmp(tcpproxy_reason_name((enum tcpproxy_reason)i),
		    names[i]) != 0) {
			printf("# reason %d is '%s', not '%s'\n", i,
			    tcpproxy_reason_name((enum tcpproxy_reason)i),
			    names[i]);
			names_ok = 0;
		}
	}
	CHECK(names_ok);

	/* Failures are returned, with a reason, not exited on. */
	tcpproxy_config_init(&cfg);
	cfg.local_host = "127.0.0.1";
	cfg.local_port = "0";
	cfg.remote_host = "nonexistent.invalid";
	cfg.remote_port = "80";
	cfg.log = on_log;
	cfg.log_user = &c;
	err[0] = '\0';
	CHECK(tcpproxy_create(&cfg, err, sizeof(err)) == NULL);
	CHECK(err[0] != '\0');

	close(c.lfd);
	return check_done();
}
