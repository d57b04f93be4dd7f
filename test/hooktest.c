/*
 * hooktest.c - tests of tcpproxy's hook API (on_accept, on_data,
 * on_close).
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * Built with tcpproxy.c and -DTCPPROXY_NO_MAIN.  One process, one thread:
 * the test owns a listening "backend" socket and every client and server
 * socket, and drives the proxy with tcpproxy_step() between its own
 * nonblocking reads, so no check depends on another process's timing.
 * Prints one "ok - ..." or "not ok - ..." line per check and a TAP plan;
 * exits 0 only if every check passed.  An alarm() guard ends a hung run.
 */
/* common.h brings the system headers and tcpproxy.h. */
#define PROG "hooktest"
#define COMMON_WANT_HARNESS
#define COMMON_WANT_SEND
#include "common.h"

#define NPEER		4
#define CHECK(cond, what)	check((cond) != 0, (what), __LINE__)
/* Steps the proxy and reads every peer until cond holds, or fails. */
#define UNTIL(c, cond)	WAIT_UNTIL(10000, pump(c), cond, #cond)

/* What on_data does with a chunk. */
enum mode {
	M_PASS,		/* nothing */
	M_EDIT,		/* upper-case the chunk in place */
	M_GROW,		/* write every byte twice */
	M_SHORTEN,	/* take out every 'x' */
	M_DROP,		/* DROP "drop" chunks, *len = 0 for "zero" ones */
	M_CLOSE		/* CLOSE on the first downstream chunk */
};

/* One end of a TCP connection the test holds. */
struct peer {
	int fd;
	char buf[4096];		/* the first bytes received */
	size_t len;
	unsigned long long got;	/* all bytes received */
	unsigned long long bad;	/* bytes off the pattern (M_CLOSE) */
	int eof;
};

/* What the hooks saw of one admitted bridge, by id. */
struct slot {
	int accepts, closes, wrong_data;
	unsigned long long bytes[2];
	enum tcpproxy_reason reason;
};

/* The hooks' user pointer and the state of one test. */
struct ctx {
	struct tcpproxy *p;
	int lfd;			/* the backend's listener */
	struct peer cli[NPEER], srv[NPEER];
	int nsrv;
	enum mode mode;
	int refuse;
	int accepts, data_calls, closes, cap_small;
	unsigned long long passed[2];	/* bytes on_data let through */
	int hook_closed;		/* on_data said CLOSE */
	int closed_with_buffered;	/* CLOSE came while bytes queued */
	int refuse_logged;
	struct slot slots[16];
	struct tcpproxy_hooks hooks;	/* must outlive the proxy */
};

static void peer_init(struct peer *);
static void peer_read(struct peer *, int);
static void pump(struct ctx *);
static void on_log(void *, int, const char *);
static enum tcpproxy_verdict on_accept(void *,
    const struct tcpproxy_bridge_info *, void **);
static enum tcpproxy_verdict on_data(void *, void *,
    const struct tcpproxy_bridge_info *, enum tcpproxy_dir, char *,
    size_t *, size_t);
static void on_close(void *, void *, const struct tcpproxy_bridge_info *);
static void ctx_start(struct ctx *, enum mode, int, double);
static void ctx_end(struct ctx *);
static int open_bridge(struct ctx *, int);

static const struct tcpproxy_hooks hooks = {
	NULL, on_accept, on_data, on_close, NULL
};

static void
peer_init(struct peer *pe)
{
	memset(pe, 0, sizeof(*pe));
	pe->fd = -1;
}

/* The byte at offset i of the M_CLOSE upload. */
static unsigned char
pattern(unsigned long long i)
{
	return (unsigned char)(i % 251);
}

/*
 * Reads whatever is readable now; notes EOF or a reset in eof.  With
 * check_pattern, counts bytes that differ from pattern().
 */
static void
peer_read(struct peer *pe, int check_pattern)
{
	char tmp[65536];
	ssize_t n, i;

	while (pe->fd != -1 && !pe->eof) {
		n = read(pe->fd, tmp, sizeof(tmp));
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
			pe->eof = 1;
			return;
		}
		if (n < 0)
			return;
		for (i = 0; check_pattern && i < n; i++)
			if ((unsigned char)tmp[i] != pattern(pe->got + i))
				pe->bad++;
		if (pe->len < sizeof(pe->buf)) {
			size_t k = sizeof(pe->buf) - pe->len;

			if (k > (size_t)n)
				k = (size_t)n;
			memcpy(pe->buf + pe->len, tmp, k);
			pe->len += k;
		}
		pe->got += (unsigned long long)n;
	}
}

/* Runs one proxy round, accepts pending backend connections, reads. */
static void
pump(struct ctx *c)
{
	int fd, i;

	(void)tcpproxy_step(c->p, 10);
	while (c->lfd != -1 && c->nsrv < NPEER &&
	    (fd = accept_nonblock(c->lfd)) != -1)
		c->srv[c->nsrv++].fd = fd;
	for (i = 0; i < NPEER; i++) {
		peer_read(&c->cli[i], 0);
		/* In M_CLOSE the server reads only once the hook closed. */
		if (c->mode != M_CLOSE || c->hook_closed)
			peer_read(&c->srv[i], c->mode == M_CLOSE);
	}
}

static void
on_log(void *user, int level, const char *line)
{
	struct ctx *c = user;

	(void)level;
	if (strncmp(line, "refuse id=", 10) == 0)
		c->refuse_logged++;
}

static enum tcpproxy_verdict
on_accept(void *user, const struct tcpproxy_bridge_info *info,
    void **bridge_data)
{
	struct ctx *c = user;

	c->accepts++;
	if (c->refuse || info->id >= sizeof(c->slots) / sizeof(c->slots[0]))
		return TCPPROXY_CLOSE;
	c->slots[info->id].accepts++;
	*bridge_data = &c->slots[info->id];
	return TCPPROXY_PASS;
}

static enum tcpproxy_verdict
on_data(void *user, void *bridge_data, const struct tcpproxy_bridge_info *info,
    enum tcpproxy_dir dir, char *data, size_t *len, size_t cap)
{
	struct ctx *c = user;
	struct slot *sl = bridge_data;
	size_t i, j;

	c->data_calls++;
	if (sl != &c->slots[info->id])
		c->slots[info->id].wrong_data++;
	if (cap < 2 * *len)
		c->cap_small++;
	switch (c->mode) {
	case M_PASS:
		break;
	case M_EDIT:
		edit_upper(data, *len);
		break;
	case M_GROW:
		if (2 * *len > cap)
			return TCPPROXY_CLOSE;
		edit_double(data, len);
		break;
	case M_SHORTEN:
		for (i = j = 0; i < *len; i++)
			if (data[i] != 'x')
				data[j++] = data[i];
		*len = j;
		break;
	case M_DROP:
		if (*len >= 4 && memcmp(data, "drop", 4) == 0)
			return TCPPROXY_DROP;
		if (*len >= 4 && memcmp(data, "zero", 4) == 0)
			*len = 0;
		break;
	case M_CLOSE:
		if (dir == TCPPROXY_DOWNSTREAM) {
			if (info->bytes[TCPPROXY_UPSTREAM] <
			    c->passed[TCPPROXY_UPSTREAM])
				c->closed_with_buffered = 1;
			c->hook_closed = 1;
			return TCPPROXY_CLOSE;
		}
		break;
	}
	c->passed[dir] += *len;
	return TCPPROXY_PASS;
}

static void
on_close(void *user, void *bridge_data, const struct tcpproxy_bridge_info *info)
{
	struct ctx *c = user;
	struct slot *sl = &c->slots[info->id];

	c->closes++;
	if (bridge_data != sl)
		sl->wrong_data++;
	sl->closes++;
	sl->reason = info->reason;
	sl->bytes[0] = info->bytes[0];
	sl->bytes[1] = info->bytes[1];
}

/* Starts a proxy with the hooks in front of a fresh backend listener;
 * port is the server port to use instead (-1: the listener's). */
static void
ctx_start(struct ctx *c, enum mode mode, int port, double idle)
{
	struct tcpproxy_config cfg;
	char err[256] = "", pbuf[16];
	int i, bport = 0;

	memset(c, 0, sizeof(*c));
	for (i = 0; i < NPEER; i++) {
		peer_init(&c->cli[i]);
		peer_init(&c->srv[i]);
	}
	c->mode = mode;
	c->lfd = loopback_listen(16, &bport);
	if (port != -1)
		bport = port;
	/* The hooks' user pointer is this test's context. */
	c->hooks = hooks;
	c->hooks.user = c;
	loopback_config(&cfg, pbuf, sizeof(pbuf), bport);
	cfg.idle_timeout = idle;
	cfg.connect_timeout = 5;
	cfg.log = on_log;
	cfg.log_user = c;
	cfg.hooks = &c->hooks;
	c->p = tcpproxy_create(&cfg, err, sizeof(err));
	if (c->p == NULL || c->lfd == -1)
		die("cannot start: %s", err);
}

/* Frees the proxy (on_close runs for what is left) and every socket. */
static void
ctx_end(struct ctx *c)
{
	int i;

	if (c->p != NULL) {
		tcpproxy_free(c->p);
		c->p = NULL;
	}
	for (i = 0; i < NPEER; i++) {
		if (c->cli[i].fd != -1)
			close(c->cli[i].fd);
		if (c->srv[i].fd != -1)
			close(c->srv[i].fd);
		c->cli[i].fd = c->srv[i].fd = -1;
	}
	if (c->lfd != -1)
		close(c->lfd);
	c->lfd = -1;
}

/* Connects client i and waits for the server side; returns 0 or -1. */
static int
open_bridge(struct ctx *c, int i)
{
	int want = c->nsrv + 1;

	c->cli[i].fd = loopback_dial(tcpproxy_bound_port(c->p));
	if (c->cli[i].fd == -1)
		return -1;
	UNTIL(c, c->nsrv >= want);
	return c->nsrv >= want ? 0 : -1;
}

/*
 * Sends up from the client and down from the server in mode, checks
 * what arrives and the counts on_close reports once the client leaves.
 */
static void
transform(enum mode mode, const char *name, const char *up,
    const char *want_up, const char *down, const char *want_down)
{
	struct ctx c;
	char what[160];
	size_t nu = strlen(want_up), nd = strlen(want_down);

	ctx_start(&c, mode, -1, 0);
	if (open_bridge(&c, 0) == -1) {
		check(0, name, __LINE__);
		ctx_end(&c);
		return;
	}
	send_all(c.cli[0].fd, up, strlen(up));
	UNTIL(&c, c.srv[0].len >= nu);
	snprintf(what, sizeof(what), "%s: the server gets the bytes as "
	    "changed upstream", name);
	CHECK(c.srv[0].len == nu && memcmp(c.srv[0].buf, want_up, nu) == 0,
	    what);
	send_all(c.srv[0].fd, down, strlen(down));
	UNTIL(&c, c.cli[0].len >= nd);
	snprintf(what, sizeof(what), "%s: the client gets the bytes as "
	    "changed downstream", name);
	CHECK(c.cli[0].len == nd && memcmp(c.cli[0].buf, want_down, nd) == 0,
	    what);
	close(c.cli[0].fd);
	c.cli[0].fd = -1;
	UNTIL(&c, c.closes == 1 && c.srv[0].eof);
	snprintf(what, sizeof(what), "%s: on_close reports the bytes "
	    "delivered each way", name);
	CHECK(c.slots[1].bytes[TCPPROXY_UPSTREAM] == nu &&
	    c.slots[1].bytes[TCPPROXY_DOWNSTREAM] == nd, what);
	snprintf(what, sizeof(what), "%s: cap was at least twice the chunk "
	    "in every on_data call", name);
	CHECK(c.data_calls >= 2 && c.cap_small == 0, what);
	snprintf(what, sizeof(what), "%s: on_data and on_close got the "
	    "bridge_data set by on_accept", name);
	CHECK(c.slots[1].accepts == 1 && c.slots[1].wrong_data == 0, what);
	ctx_end(&c);
	snprintf(what, sizeof(what), "%s: on_close ran exactly once, "
	    "reason client-closed", name);
	CHECK(c.closes == 1 && c.slots[1].closes == 1 &&
	    c.slots[1].reason == TCPPROXY_REASON_CLIENT_CLOSED, what);
}

/* A refused client is closed at once; no server, no on_data/on_close. */
static void
test_refuse(void)
{
	struct ctx c;
	int i;

	ctx_start(&c, M_PASS, -1, 0);
	c.refuse = 1;
	c.cli[0].fd = loopback_dial(tcpproxy_bound_port(c.p));
	send_all(c.cli[0].fd, "hi", 2);
	UNTIL(&c, c.cli[0].eof);
	CHECK(c.cli[0].eof && c.cli[0].got == 0,
	    "refuse: the client is closed at once");
	for (i = 0; i < 20; i++)
		pump(&c);
	CHECK(c.accepts == 1 && c.refuse_logged == 1,
	    "refuse: on_accept ran once and the refusal is logged");
	CHECK(c.nsrv == 0, "refuse: the server never sees a connection");
	CHECK(c.data_calls == 0 && c.closes == 0 &&
	    tcpproxy_bridges(c.p) == 0,
	    "refuse: neither on_data nor on_close is called");
	/* A second client is admitted as soon as the hook says so. */
	c.refuse = 0;
	if (open_bridge(&c, 1) == 0) {
		send_all(c.cli[1].fd, "ok", 2);
		UNTIL(&c, c.srv[0].len >= 2);
	}
	CHECK(c.srv[0].len == 2 && memcmp(c.srv[0].buf, "ok", 2) == 0,
	    "refuse: the next client, admitted, is relayed");
	ctx_end(&c);
	CHECK(c.closes == 1 && c.slots[2].closes == 1 &&
	    c.slots[1].closes == 0,
	    "refuse: on_close ran only for the admitted bridge");
}

/* Two bridges at once: each hook call gets its own bridge's data. */
static void
test_bridge_data(void)
{
	struct ctx c;

	ctx_start(&c, M_PASS, -1, 0);
	if (open_bridge(&c, 0) == 0 && open_bridge(&c, 1) == 0) {
		send_all(c.cli[0].fd, "one", 3);
		send_all(c.cli[1].fd, "two", 3);
		send_all(c.srv[0].fd, "1", 1);
		send_all(c.srv[1].fd, "2", 1);
		UNTIL(&c, c.srv[0].len == 3 && c.srv[1].len == 3 &&
		    c.cli[0].len == 1 && c.cli[1].len == 1);
	}
	CHECK(c.data_calls >= 4 && c.slots[1].wrong_data == 0 &&
	    c.slots[2].wrong_data == 0,
	    "bridge_data: two bridges each see their own pointer");
	close(c.cli[1].fd);
	c.cli[1].fd = -1;
	UNTIL(&c, c.closes == 1);
	CHECK(c.slots[2].closes == 1 && c.slots[1].closes == 0 &&
	    c.slots[2].bytes[0] == 3 && c.slots[2].bytes[1] == 1,
	    "bridge_data: on_close gets the closing bridge's pointer");
	ctx_end(&c);
	CHECK(c.slots[1].closes == 1 && c.slots[2].closes == 1 &&
	    c.slots[1].wrong_data == 0 && c.slots[2].wrong_data == 0,
	    "bridge_data: each bridge closed exactly once");
}

/* DROP and *len = 0 each discard a chunk; the bridge goes on. */
static void
test_drop(void)
{
	static const char *const chunks[] = {
		"keep1", "drop this", "zero that", "keep2"
	};
	struct ctx c;
	int i, calls;

	ctx_start(&c, M_DROP, -1, 0);
	if (open_bridge(&c, 0) == 0) {
		for (i = 0; i < 4; i++) {
			/* One chunk per read: wait for the hook to see it. */
			calls = c.data_calls;
			send_all(c.cli[0].fd, chunks[i], strlen(chunks[i]));
			UNTIL(&c, c.data_calls > calls);
		}
		UNTIL(&c, c.srv[0].len >= 10);
	}
	CHECK(c.srv[0].len == 10 && memcmp(c.srv[0].buf, "keep1keep2",
	    10) == 0, "drop: DROP and *len = 0 discard just their chunks");
	CHECK(c.data_calls == 4, "drop: on_data saw each chunk once");
	close(c.cli[0].fd);
	c.cli[0].fd = -1;
	UNTIL(&c, c.closes == 1);
	CHECK(c.slots[1].bytes[TCPPROXY_UPSTREAM] == 10,
	    "drop: on_close counts only the bytes delivered");
	ctx_end(&c);
}

/*
 * CLOSE from on_data: with the server not reading, the upload fills the
 * proxy's buffer; then a downstream chunk makes the hook say CLOSE.  The
 * bytes already passed must still reach the server, and nothing more.
 */
static void
test_close(void)
{
	static char chunk[65536];
	struct ctx c;
	unsigned long long sent = 0;
	long deadline;
	int idle = 0;

	ctx_start(&c, M_CLOSE, -1, 0);
	if (open_bridge(&c, 0) == -1) {
		check(0, "close: bridge opens", __LINE__);
		ctx_end(&c);
		return;
	}
	deadline = now_ms() + 30000;
	/* Upload until the proxy stops reading: its buffer is full. */
	while (idle < 50 && now_ms() < deadline) {
		ssize_t n;
		size_t i;

		for (i = 0; i < sizeof(chunk); i++)
			chunk[i] = (char)pattern(sent + i);
		n = write(c.cli[0].fd, chunk, sizeof(chunk));
		if (n > 0) {
			sent += (unsigned long long)n;
			idle = 0;
		} else {
			idle++;
		}
		pump(&c);
	}
	CHECK(idle >= 50, "close: the upload stalls with the server "
	    "not reading");
	send_all(c.srv[0].fd, "X", 1);
	UNTIL(&c, c.closes == 1 && c.srv[0].eof && c.cli[0].eof);
	CHECK(c.closed_with_buffered, "close: CLOSE came while passed bytes "
	    "were still queued");
	CHECK(c.passed[TCPPROXY_UPSTREAM] > 0 &&
	    c.srv[0].got == c.passed[TCPPROXY_UPSTREAM] && c.srv[0].bad == 0,
	    "close: every byte passed before CLOSE reached the server intact");
	CHECK(c.srv[0].got <= sent, "close: nothing read after CLOSE "
	    "went through");
	CHECK(c.cli[0].got == 0 && c.cli[0].eof,
	    "close: the closing chunk is discarded and the client closed");
	CHECK(c.slots[1].reason == TCPPROXY_REASON_HOOK &&
	    strcmp(tcpproxy_reason_name(c.slots[1].reason), "hook-closed")
	    == 0, "close: the reason is hook-closed");
	CHECK(c.slots[1].bytes[TCPPROXY_UPSTREAM] == c.srv[0].got &&
	    c.slots[1].bytes[TCPPROXY_DOWNSTREAM] == 0,
	    "close: on_close counts the bytes delivered");
	ctx_end(&c);
	CHECK(c.closes == 1, "close: on_close ran exactly once");
}

/* A server port nothing listens on: on_close once, connect-refused. */
static void
test_connect_refused(void)
{
	struct ctx c;
	int i, held, port = 0;

	/*
	 * A port held but not listening: connects to it are refused, and
	 * the proxy's own port 0 cannot turn out to be that port (it would
	 * then connect to itself).
	 */
	held = loopback_listen(-1, &port);
	ctx_start(&c, M_PASS, port, 0);
	c.cli[0].fd = loopback_dial(tcpproxy_bound_port(c.p));
	UNTIL(&c, c.closes == 1 && c.cli[0].eof);
	for (i = 0; i < 10; i++)
		pump(&c);
	CHECK(c.accepts == 1 && c.closes == 1 && c.slots[1].closes == 1 &&
	    c.slots[1].reason == TCPPROXY_REASON_CONNECT_REFUSED,
	    "connect refused: on_close once, reason connect-refused");
	CHECK(c.cli[0].eof, "connect refused: the client is closed");
	ctx_end(&c);
	CHECK(c.closes == 1, "connect refused: tcpproxy_free adds no "
	    "second on_close");
	close(held);
}

/* A client that resets: on_close once, client-reset. */
static void
test_client_reset(void)
{
	struct ctx c;
	struct linger lg;
	int i;

	ctx_start(&c, M_PASS, -1, 0);
	if (open_bridge(&c, 0) == 0) {
		send_all(c.cli[0].fd, "hi", 2);
		UNTIL(&c, c.srv[0].len == 2);
		lg.l_onoff = 1;
		lg.l_linger = 0;
		(void)setsockopt(c.cli[0].fd, SOL_SOCKET, SO_LINGER, &lg,
		    sizeof(lg));
		close(c.cli[0].fd);
		c.cli[0].fd = -1;
		UNTIL(&c, c.closes == 1 && c.srv[0].eof);
		for (i = 0; i < 10; i++)
			pump(&c);
	}
	CHECK(c.closes == 1 && c.slots[1].closes == 1 &&
	    c.slots[1].reason == TCPPROXY_REASON_CLIENT_RESET &&
	    c.slots[1].bytes[TCPPROXY_UPSTREAM] == 2,
	    "client reset: on_close once, reason client-reset, bytes counted");
	ctx_end(&c);
	CHECK(c.closes == 1, "client reset: no second on_close");
}

/* An idle bridge times out: on_close once, idle-timeout. */
static void
test_idle(void)
{
	struct ctx c;

	ctx_start(&c, M_PASS, -1, 0.3);
	if (open_bridge(&c, 0) == 0) {
		send_all(c.cli[0].fd, "hi", 2);
		UNTIL(&c, c.closes == 1);
	}
	CHECK(c.closes == 1 && c.slots[1].reason ==
	    TCPPROXY_REASON_IDLE_TIMEOUT && c.slots[1].bytes[0] == 2,
	    "idle timeout: on_close once, reason idle-timeout");
	ctx_end(&c);
	CHECK(c.closes == 1, "idle timeout: no second on_close");
}

/* tcpproxy_free with bridges open calls on_close for each, once. */
static void
test_free(void)
{
	struct ctx c;
	int i, ok = 1;

	ctx_start(&c, M_PASS, -1, 0);
	for (i = 0; i < 3; i++)
		if (open_bridge(&c, i) == -1)
			ok = 0;
	UNTIL(&c, tcpproxy_bridges(c.p) == 3);
	CHECK(ok && c.closes == 0, "free: three bridges open, none closed");
	tcpproxy_free(c.p);
	c.p = NULL;
	for (i = 1; i <= 3; i++)
		if (c.slots[i].closes != 1 ||
		    c.slots[i].reason != TCPPROXY_REASON_SHUTDOWN)
			ok = 0;
	CHECK(ok && c.closes == 3,
	    "free: on_close ran once per open bridge, reason shutdown");
	for (i = 0; i < 3; i++) {
		struct pollfd pfd;

		pfd.fd = c.cli[i].fd;
		pfd.events = POLLIN;
		if (poll(&pfd, 1, 5000) == 1)
			peer_read(&c.cli[i], 0);
		if (!c.cli[i].eof)
			ok = 0;
	}
	CHECK(ok, "free: every client sees its connection closed");
	ctx_end(&c);
}

int
main(void)
{
	start_guard(300);
	transform(M_PASS, "pass", "hello", "hello", "world", "world");
	transform(M_EDIT, "edit in place", "hello", "HELLO", "world",
	    "WORLD");
	transform(M_GROW, "grow to twice", "abc", "aabbcc", "xyz", "xxyyzz");
	transform(M_SHORTEN, "shorten", "axbxcx", "abc", "xxdxx", "d");
	test_refuse();
	test_bridge_data();
	test_drop();
	test_close();
	test_connect_refused();
	test_client_reset();
	test_idle();
	test_free();
	return check_done();
}
