/*
 * tcpproxy - a small, fast, portable TCP proxy.
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * Design.
 *
 * One poll() loop serves every connection.  Each accepted client is paired
 * with one connection to the server in a bridge record.  A bridge has two
 * sides, fd[CLIENT] and fd[SERVER], and two flows: flow[s] holds the bytes
 * read from side s that still wait to be written to side !s.  All relay
 * code is written once for a side s and its peer !s.
 *
 * Per side, rd[s] says whether we still read from s and wr[s] whether we
 * may still write to it.  Events only ever clear them:
 *   EOF read from s      rd[s] = 0 (symmetric mode: rd[!s] = 0 too)
 *   error on s           rd[s] = wr[s] = 0, flow[!s] is dropped (it has
 *                        nowhere to go) and rd[!s] = 0
 *   flow[s] done         (half-close mode) shutdown(fd[!s], SHUT_WR),
 *                        wr[!s] = 0
 * where a flow is done when its reader is finished (!rd[s]) and its queue
 * is empty.  The bridge ends when, for both sides, the reader is finished
 * and its queue is empty or undeliverable.  This is the only place a
 * bridge is closed on purpose (bridge_settle), and bridge_close is the
 * only function that closes its descriptors: bytes the proxy has read are
 * delivered unless their receiver is gone or a timeout fires.
 *
 * Poll interest is derived, never toggled: want() computes the events of
 * one side from the bridge state, and the pollfd array is a projection of
 * the bridge table kept up to date by bridge_settle.  The array is compact
 * (slot 0 the wake pipe, then the listeners, then two slots per bridge in
 * table order), and a closed bridge's slots are filled by the last bridge,
 * so per-round work is proportional to the descriptors and nothing more.
 * A side with no interest is polled as fd -1, so a hung-up socket we
 * cannot act on yet never makes poll() spin.
 *
 * poll() costs time for every descriptor it is given, idle or not: with
 * thousands of idle bridges, each round would cost milliseconds.  So the
 * table is split: hot bridges (I/O in the last TCPPROXY_HOT_TTL ms) come
 * first and are polled every round; cold ones are swept a slice at a time,
 * a slice polled without waiting at the start of a round when one is due,
 * each slice followed by a pause eight times what it cost, so sweeping
 * takes at most a ninth of the time and no round stalls the hot bridges
 * for more than a slice or so (a sweep of all of them at once would hold
 * up a round trip by milliseconds).  A cold bridge waits at most one
 * sweep, about TCPPROXY_SCAN_MAX ms with thousands, to be noticed; below
 * TCPPROXY_TIER_MIN bridges, or with none hot, every round polls
 * everything.  The sweep's cursor survives the moves of bridges between
 * slots: see bridge_close.
 *
 * With --busy-poll, a round after one with events polls without waiting
 * for a while, instead of sleeping (see poll_busy).
 *
 * Buffers are fixed-size (buffer_size per direction) but attached to a
 * flow only while it holds bytes: a flow takes one from a small free list
 * when it reads and gives it back when it drains, so an idle bridge costs
 * only its record, and the hot path never calls malloc.
 *
 * Timeouts are uniform per kind, so intrusive lists ordered by last
 * activity give the next deadline in O(1): connecting bridges (connect
 * timeout, per address tried), established ones (idle timeout), and
 * bridges whose client was accepted but whose server socket could not be
 * made for want of a descriptor: they wait, first come first served, for
 * a bridge to close (at most the connect timeout), rather than have their
 * client dropped.  Flows paused by --rate sit on a fourth, unordered
 * list, walked only while some flow is paused.
 *
 * A data hook sees each chunk between recv() and its queue.  It may hold
 * bytes back or have more to add than its room: when a flow stops being
 * read (flow_stop) the hook gets a last call with no bytes, and a hook
 * that answered TCPPROXY_MORE is called again once its flow has drained,
 * so nothing a hook took is lost while its receiver can still take it.
 */

/* ---- feature-test macro and includes ---- */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <sys/types.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tcpproxy.h"

/* ---- tunables ---- */
#ifndef TCPPROXY_BUFFER_SIZE
#define TCPPROXY_BUFFER_SIZE (64 * 1024)	/* per direction, bytes */
#endif
#ifndef TCPPROXY_BACKLOG
#define TCPPROXY_BACKLOG 1024
#endif
#ifndef TCPPROXY_CONNECT_TIMEOUT
#define TCPPROXY_CONNECT_TIMEOUT 10.0	/* seconds */
#endif
#ifndef TCPPROXY_GRACE
#define TCPPROXY_GRACE 5.0		/* seconds */
#endif
#ifndef TCPPROXY_SPARE_BUFFERS
#define TCPPROXY_SPARE_BUFFERS 32	/* free list length */
#endif
#ifndef TCPPROXY_ACCEPT_RETRY
#define TCPPROXY_ACCEPT_RETRY 1000	/* ms between accepts at fd limit */
#endif
#ifndef TCPPROXY_READS_PER_ROUND
#define TCPPROXY_READS_PER_ROUND 4	/* per side, while they come full */
#endif
#ifndef TCPPROXY_TIER_MIN
#define TCPPROXY_TIER_MIN 64		/* bridges before hot/cold polling */
#endif
#ifndef TCPPROXY_HOT_TTL
#define TCPPROXY_HOT_TTL 250		/* ms without I/O before cold */
#endif
#ifndef TCPPROXY_SCAN_SHARE
#define TCPPROXY_SCAN_SHARE 8		/* cold scans get 1/(1+this) */
#endif
#ifndef TCPPROXY_SCAN_MAX
#define TCPPROXY_SCAN_MAX 50		/* ms, at most for a cold sweep */
#endif
#ifndef TCPPROXY_SLICE_MIN
#define TCPPROXY_SLICE_MIN 64		/* bridges per cold slice, at least */
#endif
#ifndef TCPPROXY_SLICES
#define TCPPROXY_SLICES 128		/* cold slices per sweep, at most */
#endif
#ifndef TCPPROXY_LATE
#define TCPPROXY_LATE 8			/* slices a late round may poll */
#endif
#ifndef TCPPROXY_BUSY_POLL_MAX
#define TCPPROXY_BUSY_POLL_MAX 1000000	/* us, the most --busy-poll takes */
#endif
#ifndef TCPPROXY_BUSY_BRIDGES
#define TCPPROXY_BUSY_BRIDGES 8		/* busy-poll at most this many */
#endif
#ifndef TCPPROXY_NOTE_INTERVAL
#define TCPPROXY_NOTE_INTERVAL 60000	/* ms between repeated warnings */
#endif

/* ---- portability ---- */

/*
 * A send() to a closed peer must not raise SIGPIPE: per call where
 * MSG_NOSIGNAL exists, per socket where SO_NOSIGPIPE does.  With neither,
 * the program must ignore SIGPIPE (the command line does).
 */
#ifdef MSG_NOSIGNAL
#define SEND_FLAGS MSG_NOSIGNAL
#define NOSIGPIPE 0
#elif defined(SO_NOSIGPIPE)
#define SEND_FLAGS 0
#define NOSIGPIPE SO_NOSIGPIPE
#else
#define SEND_FLAGS 0
#define NOSIGPIPE 0
#endif

/*
 * Where accept4() and SOCK_NONBLOCK | SOCK_CLOEXEC exist (Linux, the
 * BSDs, POSIX.1-2024), a socket is made ready by the call that creates
 * it, which saves three fcntl() calls per descriptor, six per bridge.
 * Strict POSIX.1-2008 headers may hide accept4(), so it is declared here.
 */
#if defined(SOCK_NONBLOCK) && defined(SOCK_CLOEXEC)
#define SOCK_FLAGS (SOCK_NONBLOCK | SOCK_CLOEXEC)
int accept4(int, struct sockaddr *, socklen_t *, int);
#define accept_ready(fd, sa, len) accept4((fd), (sa), (len), SOCK_FLAGS)
#else
#define SOCK_FLAGS 0
#define accept_ready(fd, sa, len) accept((fd), (sa), (len))
#endif

#if defined(__GNUC__) || defined(__clang__)
#define NORETURN __attribute__((noreturn))
#else
#define NORETURN
#endif

#if EAGAIN == EWOULDBLOCK
#define WOULD_BLOCK(e) ((e) == EAGAIN)
#else
#define WOULD_BLOCK(e) ((e) == EAGAIN || (e) == EWOULDBLOCK)
#endif

/* ---- types ---- */
enum { CLIENT = 0, SERVER = 1 };
enum { TIMER_CONNECT = 0, TIMER_IDLE, TIMER_FDWAIT, TIMER_NONE };
enum { ACCEPT_ON = 0, ACCEPT_FULL, ACCEPT_NOFD, ACCEPT_OFF };
enum { MORE_NONE = 0, MORE_DRAINED, MORE_FINAL };

#define ADDR_NAME_MAX (INET6_ADDRSTRLEN + 10)	/* "[addr]:65535" */

struct flow {
	char *buf;			/* NULL while empty */
	size_t off, len;		/* queued bytes are buf[off..len) */
	unsigned long long bytes;	/* delivered to the other side */
	unsigned long long taken;	/* read from this side */
	double tokens;			/* --rate: bytes it may read now */
	long long stamp;		/* --rate: when tokens was computed */
	long long resume;		/* --rate: paused until then; 0: not */
	int more;			/* MORE_*: a hook call due once drained */
};

struct bridge {
	struct bridge *prev, *next;	/* timer list, ordered by last */
	struct bridge *tprev, *tnext;	/* throttled list (--rate) */
	size_t slot;			/* index in the bridge table */
	short rev[2];			/* what poll() reported this round */
	long long active;		/* ms of the last I/O, for hot/cold */
	int fd[2];
	unsigned char rd[2], wr[2];
	unsigned char connecting;
	unsigned char timer;		/* TIMER_*: which list holds it */
	unsigned char throttled;	/* on the throttled list */
	enum tcpproxy_reason reason;	/* first cause of the end */
	int error;
	size_t target;			/* index of the server address */
	long long start, last;		/* ms, monotonic */
	struct flow flow[2];
	unsigned long id;
	void *hook_data;
	char client[ADDR_NAME_MAX];
};

struct timer_list {
	struct bridge *head, *tail;
	long long timeout;		/* ms; 0: list unused */
};

struct target {
	struct sockaddr_storage addr;
	socklen_t len;
	char name[ADDR_NAME_MAX];
};

struct tcpproxy {
	struct tcpproxy_config cfg;
	struct target *targets;		/* resolved server addresses */
	size_t ntargets;
	int *lfd;			/* listeners */
	size_t nlisten;
	int port;
	int wake[2];			/* self-pipe for tcpproxy_stop */
	struct pollfd *pfd;		/* wake, listeners, 2 per bridge */
	struct bridge **tab;		/* bridges; tab[k]->slot == k */
	size_t nbridges, cap;
	size_t nhot;			/* tab[0..nhot) are hot */
	struct bridge **ready;		/* bridges with events this round */
	size_t cursor;			/* next cold slot to poll */
	long long busy_until;		/* us; poll without waiting till then */
	long long next_scan;		/* us; next poll of a cold slice */
	long long slice_period;		/* us; a slice and its pause, > 0 */
	struct timer_list timers[TIMER_NONE];
	int fd_freed;			/* a descriptor may be free for FDWAIT */
	struct bridge *throttled;	/* bridges with a paused flow */
	double burst;			/* --rate: token bucket size */
	char **spare;			/* free buffers */
	size_t nspare;
	size_t bufsize;
	long long now;			/* ms, updated after each poll */
	unsigned long next_id;
	int accepting;			/* ACCEPT_* */
	long long accept_retry;		/* ms; when ACCEPT_NOFD */
	long long noted_full, noted_nofd;	/* last warnings, ms */
	int stopping;			/* stop requests seen */
	char worker[24];		/* " worker=N" in logs, or "" */
	long long grace_end;		/* ms */
};

/* ---- prototypes ---- */
static void bridge_close(struct tcpproxy *, struct bridge *);
static int bridge_settle(struct tcpproxy *, struct bridge *);
static void flow_drain(struct tcpproxy *, struct bridge *, int);
static void listeners_update(struct tcpproxy *);
static void accept_pause(struct tcpproxy *, int);

/* ---- helpers ---- */
static const char *const reason_names[] = {
	"open", "client-closed", "server-closed", "client-reset",
	"server-reset", "client-error", "server-error", "connect-refused",
	"connect-timeout", "connect-failed", "idle-timeout", "hook-closed",
	"shutdown", "no-memory", "max-bytes"
};

const char *
tcpproxy_reason_name(enum tcpproxy_reason reason)
{
	if ((size_t)reason >= sizeof(reason_names) / sizeof(reason_names[0]))
		return "unknown";
	return reason_names[reason];
}

/* Returns the monotonic time in milliseconds. */
static long long
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Returns seconds as milliseconds, rounded up so 0.0001 is not "none". */
static long long
secs_to_ms(double secs)
{
	long long ms;

	if (!(secs > 0))
		return 0;

	if (secs > 1e9)
		secs = 1e9;
	ms = (long long)(secs * 1000);
	return (double)ms < secs * 1000 ? ms + 1 : ms;
}

/* Formats one log line and hands it to the configured sink. */
static void
say(const struct tcpproxy *p, int level, const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int n;

	if (level > p->cfg.verbosity)
		return;
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (p->cfg.log != NULL) {
		p->cfg.log(p->cfg.log_user, level, line);
	} else {
		char out[sizeof(line) + 16];

		n = snprintf(out, sizeof(out), "tcpproxy: %s\n", line);
		if (n >= (int)sizeof(out))
			n = sizeof(out) - 1;
		/* One write per line keeps lines whole across processes. */
		if (n > 0 && write(STDERR_FILENO, out, (size_t)n) < 0)
			return;	/* best effort: nowhere to report it */
	}
}

/* Writes "addr:port" or "[addr]:port" into buf; returns buf. */
static char *
addr_name(const struct sockaddr *sa, socklen_t len, char *buf, size_t size)
{
	char host[INET6_ADDRSTRLEN], serv[8];

	if (getnameinfo(sa, len, host, sizeof(host), serv, sizeof(serv),
	    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
		snprintf(buf, size, "?");
		return buf;
	}
	if (sa->sa_family == AF_INET6)
		snprintf(buf, size, "[%s]:%s", host, serv);
	else
		snprintf(buf, size, "%s:%s", host, serv);
	return buf;
}

/* Copies msg into err (if any) and sets errno; returns NULL. */
static void *
fail(char *err, size_t errlen, int errnum, const char *fmt, ...)
{
	va_list ap;

	if (err != NULL && errlen > 0) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	errno = errnum;
	return NULL;
}

/* ---- sockets ---- */

/*
 * Makes a new descriptor nonblocking and close-on-exec with fcntl(), for
 * descriptors that SOCK_FLAGS did not make so.  Returns 0 or -1 with
 * errno set.
 */
static int
fd_prepare(int fd)
{
	int fl;

	if ((fl = fcntl(fd, F_GETFL)) == -1 ||
	    fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1 ||
	    fcntl(fd, F_SETFD, FD_CLOEXEC) == -1)
		return -1;
	return 0;
}

/*
 * Sets the options every relayed socket gets, made by socket() or
 * accept_ready() with SOCK_FLAGS; returns 0 or -1.
 */
static int
sock_prepare(int fd)
{
	int one = 1;

	if (SOCK_FLAGS == 0 && fd_prepare(fd) == -1)
		return -1;
	/* The endpoints already coalesce; the proxy must not add delay. */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (NOSIGPIPE != 0)
		(void)setsockopt(fd, SOL_SOCKET, NOSIGPIPE, &one, sizeof(one));
	return 0;
}

/* Closes fd, keeping errno; a failing close leaves nothing to retry. */
static void
fd_close(int fd)
{
	int saved = errno;

	if (fd >= 0)
		(void)close(fd);
	errno = saved;
}

/*
 * Binds and listens on one address; returns the descriptor, or -1 with
 * errno set.
 */
static int
listen_on(const struct sockaddr *sa, socklen_t len)
{
	int fd, one = 1;

	if ((fd = socket(sa->sa_family, SOCK_STREAM | SOCK_FLAGS, 0)) == -1)
		return -1;
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
#ifdef IPV6_V6ONLY
	/* Explicit, so binding both :: and 0.0.0.0 works everywhere. */
	if (sa->sa_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one,
		    sizeof(one));
#endif
	if ((SOCK_FLAGS == 0 && fd_prepare(fd) == -1) ||
	    bind(fd, sa, len) == -1 ||
	    listen(fd, TCPPROXY_BACKLOG) == -1) {
		fd_close(fd);
		return -1;
	}
	return fd;
}

/* Sets the port of an IPv4 or IPv6 socket address. */
static void
addr_set_port(struct sockaddr *sa, int port)
{
	if (sa->sa_family == AF_INET)
		((struct sockaddr_in *)(void *)sa)->sin_port =
		    htons((unsigned short)port);
	else if (sa->sa_family == AF_INET6)
		((struct sockaddr_in6 *)(void *)sa)->sin6_port =
		    htons((unsigned short)port);
}

/* Returns the port of a bound socket, or -1. */
static int
fd_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) == -1)
		return -1;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)(void *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)(void *)&ss)->sin6_port);
	return -1;
}

/*
 * Resolves host:port into *res and counts its addresses into *n.
 * Returns 0, or -1 with errno set and the reason in err.
 */
static int
resolve(const char *host, const char *port, int passive,
    struct addrinfo **res, size_t *n, char *err, size_t errlen)
{
	struct addrinfo hints, *ai;
	int rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
	if ((rc = getaddrinfo(host, port, &hints, res)) != 0) {
		fail(err, errlen, EADDRNOTAVAIL, "cannot resolve '%s': %s",
		    host != NULL ? host : "*", gai_strerror(rc));
		return -1;
	}
	for (*n = 0, ai = *res; ai != NULL; ai = ai->ai_next)
		(*n)++;
	if (*n == 0) {
		freeaddrinfo(*res);
		fail(err, errlen, EADDRNOTAVAIL, "cannot resolve '%s': "
		    "no address", host != NULL ? host : "*");
		return -1;
	}
	return 0;
}

/* Returns whether ai repeats an address seen earlier in its list. */
static int
addr_seen(const struct addrinfo *list, const struct addrinfo *ai)
{
	for (; list != ai; list = list->ai_next)
		if (list->ai_addrlen == ai->ai_addrlen &&
		    memcmp(list->ai_addr, ai->ai_addr, ai->ai_addrlen) == 0)
			return 1;
	return 0;
}

/* ---- buffers ---- */

/* Attaches a buffer to an empty flow; returns 0, or -1 if out of memory. */
static int
buf_take(struct tcpproxy *p, struct flow *f)
{
	if (f->buf != NULL)
		return 0;
	if (p->nspare > 0)
		f->buf = p->spare[--p->nspare];
	else if ((f->buf = malloc(p->bufsize)) == NULL)
		return -1;
	f->off = f->len = 0;
	return 0;
}

/* Detaches the buffer of a flow and forgets its bytes. */
static void
buf_give(struct tcpproxy *p, struct flow *f)
{
	if (f->buf == NULL)
		return;
	if (p->nspare < TCPPROXY_SPARE_BUFFERS)
		p->spare[p->nspare++] = f->buf;
	else
		free(f->buf);
	f->buf = NULL;
	f->off = f->len = 0;
}

/* ---- timers ---- */

static void
timer_unlink(struct tcpproxy *p, struct bridge *b)
{
	struct timer_list *l;

	if (b->timer == TIMER_NONE)
		return;
	l = &p->timers[b->timer];
	if (b->prev != NULL)
		b->prev->next = b->next;
	else
		l->head = b->next;
	if (b->next != NULL)
		b->next->prev = b->prev;
	else
		l->tail = b->prev;
	b->prev = b->next = NULL;
	b->timer = TIMER_NONE;
}

/*
 * Puts b at the tail of list t, as of now.  Lists without a timeout are
 * not kept, but for TIMER_FDWAIT, which is also the queue of waiters.
 */
static void
timer_set(struct tcpproxy *p, struct bridge *b, int t)
{
	struct timer_list *l = &p->timers[t];

	timer_unlink(p, b);
	b->last = p->now;
	if (l->timeout == 0 && t != TIMER_FDWAIT)
		return;
	b->timer = (unsigned char)t;
	b->prev = l->tail;
	b->next = NULL;
	if (l->tail != NULL)
		l->tail->next = b;
	else
		l->head = b;
	l->tail = b;
}

/* Notes progress on an established bridge: O(1), done on every I/O. */
static void
bridge_touch(struct tcpproxy *p, struct bridge *b)
{
	/* A connect's deadline stays put, whatever the client sends. */
	if (b->timer != TIMER_IDLE)
		return;
	b->last = p->now;
	if (b != p->timers[TIMER_IDLE].tail)
		timer_set(p, b, TIMER_IDLE);
}

/* Takes b off the throttled list. */
static void
throttle_unlink(struct tcpproxy *p, struct bridge *b)
{
	if (!b->throttled)
		return;
	if (b->tprev != NULL)
		b->tprev->tnext = b->tnext;
	else
		p->throttled = b->tnext;
	if (b->tnext != NULL)
		b->tnext->tprev = b->tprev;
	b->tprev = b->tnext = NULL;
	b->throttled = 0;
}

/*
 * Returns how many bytes flow[s] may read now under --rate, at most room.
 * When too few tokens are left to be worth a read, pauses the flow until
 * enough have come in, and returns 0.
 */
static size_t
flow_allowance(struct tcpproxy *p, struct bridge *b, int s, size_t room)
{
	struct flow *f = &b->flow[s];
	double rate = (double)p->cfg.rate, low = p->burst / 4;

	if (p->cfg.rate == 0)
		return room;
	f->tokens += (double)(p->now - f->stamp) * rate / 1000.0;
	f->stamp = p->now;
	if (f->tokens > p->burst)
		f->tokens = p->burst;
	if (low < 1)
		low = 1;
	if (f->tokens >= low)
		return f->tokens < (double)room ? (size_t)f->tokens : room;
	f->resume = p->now + 1 + (long long)((low - f->tokens) * 1000 / rate);
	if (!b->throttled) {
		b->throttled = 1;
		b->tprev = NULL;
		b->tnext = p->throttled;
		if (p->throttled != NULL)
			p->throttled->tprev = b;
		p->throttled = b;
	}
	return 0;
}

/* ---- bridge I/O ---- */

/*
 * Returns the free bytes a read needs: 2 with a data hook, whose cap must
 * be at least twice the chunk, else 1.
 */
static size_t
room_min(const struct tcpproxy *p)
{
	return p->cfg.hooks != NULL && p->cfg.hooks->on_data != NULL ? 2 : 1;
}

/* Records the first reason a bridge has to end. */
static void
bridge_end(struct bridge *b, enum tcpproxy_reason reason, int error)
{
	if (b->reason == TCPPROXY_REASON_NONE) {
		b->reason = reason;
		b->error = error;
	}
}

/* Fills the info a hook sees about a bridge. */
static void
bridge_info(const struct tcpproxy *p, const struct bridge *b,
    struct tcpproxy_bridge_info *info)
{
	memset(info, 0, sizeof(*info));
	info->id = b->id;
	info->client_name = b->client;
	info->server_name = p->targets[b->target].name;
	info->bytes[TCPPROXY_UPSTREAM] = b->flow[CLIENT].bytes;
	info->bytes[TCPPROXY_DOWNSTREAM] = b->flow[SERVER].bytes;
	info->duration = (double)(p->now - b->start) / 1000.0;
	info->reason = b->reason;
	info->error = b->error;
}

/* Side s is dead: nothing more goes in or out of it. */
static void
side_fail(struct tcpproxy *p, struct bridge *b, int s, int err)
{
	int reset = err == ECONNRESET || err == EPIPE;

	if (s == CLIENT)
		bridge_end(b, reset ? TCPPROXY_REASON_CLIENT_RESET :
		    TCPPROXY_REASON_CLIENT_ERROR, err);
	else
		bridge_end(b, reset ? TCPPROXY_REASON_SERVER_RESET :
		    TCPPROXY_REASON_SERVER_ERROR, err);
	b->rd[s] = b->wr[s] = 0;
	/* Bytes bound for s have nowhere to go, so stop taking them. */
	buf_give(p, &b->flow[!s]);
	b->rd[!s] = 0;
}

/* Returns whether a data hook is set. */
static int
hooked(const struct tcpproxy *p)
{
	return p->cfg.hooks != NULL && p->cfg.hooks->on_data != NULL;
}

/*
 * Runs the data hook on the len bytes just queued at flow[s].buf[start]
 * (none for a last or a drained call) and applies its verdict.  Returns
 * how many bytes to queue.
 */
static size_t
flow_hook(struct tcpproxy *p, struct bridge *b, int s, size_t start,
    size_t len, int final)
{
	const struct tcpproxy_hooks *h = p->cfg.hooks;
	struct flow *f = &b->flow[s];
	struct tcpproxy_bridge_info info;
	enum tcpproxy_verdict v;
	size_t cap = p->bufsize - start;

	bridge_info(p, b, &info);
	info.final = final;
	v = h->on_data(h->user, b->hook_data, &info, s == CLIENT ?
	    TCPPROXY_UPSTREAM : TCPPROXY_DOWNSTREAM, f->buf + start, &len,
	    cap);
	if (len > cap)
		len = cap;
	/* MORE with nothing added would only call again for nothing. */
	f->more = v == TCPPROXY_MORE && len > 0 ? MORE_DRAINED : MORE_NONE;
	if (v == TCPPROXY_DROP || v == TCPPROXY_CLOSE)
		len = 0;
	if (v == TCPPROXY_CLOSE) {
		bridge_end(b, TCPPROXY_REASON_HOOK, 0);
		b->rd[CLIENT] = b->rd[SERVER] = 0;
	}
	return len;
}

/*
 * Stops reading side s for good.  A data hook gets one last call, with no
 * bytes, to add what it may still hold.
 */
static void
flow_stop(struct tcpproxy *p, struct bridge *b, int s)
{
	struct flow *f = &b->flow[s];

	if (!b->rd[s])
		return;
	b->rd[s] = 0;
	if (!hooked(p) || !b->wr[!s] || buf_take(p, f) == -1)
		return;
	if (f->len < p->bufsize)
		f->len += flow_hook(p, b, s, f->len, 0, 1);
	else
		f->more = MORE_FINAL;	/* no room: once drained */
	if (f->off == f->len)
		buf_give(p, f);
}

/* Side s sent EOF (or, for --max-bytes, is taken to have). */
static void
side_eof(struct tcpproxy *p, struct bridge *b, int s)
{
	bridge_end(b, s == CLIENT ? TCPPROXY_REASON_CLIENT_CLOSED :
	    TCPPROXY_REASON_SERVER_CLOSED, 0);
	flow_stop(p, b, s);
	if (!p->cfg.half_close)
		flow_stop(p, b, !s);
}

/*
 * Reads once from side s into flow[s], runs the data hook, and tries to
 * write the bytes to !s at once rather than a poll round later.  Returns
 * 1 if the read filled all the room it had and the bytes all went out,
 * so that another read is likely to find more.
 */
static int
flow_read(struct tcpproxy *p, struct bridge *b, int s)
{
	struct flow *f = &b->flow[s];
	size_t room, start;
	ssize_t n;

	if (buf_take(p, f) == -1) {
		bridge_end(b, TCPPROXY_REASON_NO_MEMORY, ENOMEM);
		b->rd[CLIENT] = b->rd[SERVER] = 0;
		return 0;
	}
	if (f->off > 0 && p->bufsize - f->len < room_min(p)) {
		/* Full at the end but not at the start: slide down. */
		memmove(f->buf, f->buf + f->off, f->len - f->off);
		f->len -= f->off;
		f->off = 0;
	}
	room = p->bufsize - f->len;
	if (room_min(p) == 2)
		room /= 2;	/* the hook may grow the chunk to cap */
	if (s == CLIENT && p->cfg.max_bytes > 0 &&
	    room > p->cfg.max_bytes - f->taken)
		room = (size_t)(p->cfg.max_bytes - f->taken);
	room = flow_allowance(p, b, s, room);
	if (room == 0) {
		/* Paused by --rate, or woken by POLLHUP with a full buffer. */
		if (f->off == f->len)
			buf_give(p, f);
		return 0;
	}
	start = f->len;
	n = recv(b->fd[s], f->buf + start, room, 0);
	if (n == 0) {
		side_eof(p, b, s);
	} else if (n < 0) {
		if (errno != EINTR && !WOULD_BLOCK(errno))
			side_fail(p, b, s, errno);
	} else {
		size_t len = (size_t)n;

		bridge_touch(p, b);
		f->taken += len;
		f->tokens -= (double)len;
		if (hooked(p))
			len = flow_hook(p, b, s, start, len, 0);
		f->len += len;
		/* After the hook saw the chunk: its last call comes last. */
		if (s == CLIENT && f->taken == p->cfg.max_bytes) {
			/* As if the client had sent EOF right there. */
			bridge_end(b, TCPPROXY_REASON_MAX_BYTES, 0);
			side_eof(p, b, CLIENT);
		}
	}
	if (f->off == f->len)
		buf_give(p, f);
	else
		flow_drain(p, b, s);
	return n > 0 && (size_t)n == room && f->buf == NULL && b->rd[s];
}

/*
 * Reads from side s and relays what it can.  While reads come back full
 * and leave at once, a few more are cheaper than poll() rounds.
 */
static void
flow_fill(struct tcpproxy *p, struct bridge *b, int s)
{
	int i;

	for (i = 0; i < TCPPROXY_READS_PER_ROUND && flow_read(p, b, s); i++)
		;
}

/* Writes what flow[s] holds to side !s, as much as it takes. */
static void
flow_drain(struct tcpproxy *p, struct bridge *b, int s)
{
	struct flow *f = &b->flow[s];
	int d = !s, final;
	ssize_t n;

	if (f->buf == NULL || !b->wr[d] || b->connecting)
		return;
	for (;;) {
		n = send(b->fd[d], f->buf + f->off, f->len - f->off,
		    SEND_FLAGS);
		if (n < 0) {
			if (errno != EINTR && !WOULD_BLOCK(errno))
				side_fail(p, b, d, errno);
			return;
		}
		bridge_touch(p, b);
		f->off += (size_t)n;
		f->bytes += (unsigned long long)n;
		if (f->off < f->len)
			return;
		buf_give(p, f);
		/* The hook had more to add than cap allowed: room again. */
		if (f->more == MORE_NONE || buf_take(p, f) == -1)
			return;
		final = f->more == MORE_FINAL;
		f->more = MORE_NONE;
		if ((f->len = flow_hook(p, b, s, 0, 0, final)) == 0) {
			buf_give(p, f);
			return;
		}
	}
}

/* Returns the poll events side s of b wants, derived from its state. */
static short
want(const struct tcpproxy *p, const struct bridge *b, int s)
{
	const struct flow *f = &b->flow[s];
	/* Room for a read, once the queue is slid down (see flow_read). */
	int room = f->len - f->off + room_min(p) <= p->bufsize;
	short ev = 0;

	if (b->connecting) {
		if (s == SERVER)
			ev = POLLOUT;
		else if (b->rd[s] && !f->resume && room)
			ev = POLLIN;
		return ev;
	}
	if (b->rd[s] && !f->resume && room)
		ev |= POLLIN;
	if (b->wr[s] && b->flow[!s].buf != NULL)
		ev |= POLLOUT;
	return ev;
}

/* ---- bridge lifecycle ---- */

/* Returns the pollfd of side s of the bridge in slot k. */
static struct pollfd *
slot_pfd(struct tcpproxy *p, size_t k, int s)
{
	return &p->pfd[1 + p->nlisten + 2 * k + (size_t)s];
}

/* Swaps the bridges in slots i and j, with their pollfds. */
static void
slot_swap(struct tcpproxy *p, size_t i, size_t j)
{
	struct bridge *b = p->tab[i];
	struct pollfd t;
	int s;

	if (i == j)
		return;
	p->tab[i] = p->tab[j];
	p->tab[j] = b;
	p->tab[i]->slot = i;
	b->slot = j;
	for (s = CLIENT; s <= SERVER; s++) {
		t = *slot_pfd(p, i, s);
		*slot_pfd(p, i, s) = *slot_pfd(p, j, s);
		*slot_pfd(p, j, s) = t;
	}
}

/* Moves a cold bridge to the hot end of the table. */
static void
bridge_heat(struct tcpproxy *p, struct bridge *b)
{
	if (b->slot >= p->nhot)
		slot_swap(p, b->slot, p->nhot++);
	if (p->cursor < p->nhot)
		p->cursor = p->nhot;
}

/* Moves a hot bridge to the cold part of the table. */
static void
bridge_cool(struct tcpproxy *p, struct bridge *b)
{
	if (b->slot < p->nhot)
		slot_swap(p, b->slot, --p->nhot);
}

/*
 * Starts a nonblocking connect to the current target or, failing that,
 * to the next ones.  Returns 0 if a connect is under way or done, or the
 * bridge waits for a descriptor (on TIMER_FDWAIT, server fd -1); -1 when
 * no address is left (the reason is recorded).
 */
static int
server_connect(struct tcpproxy *p, struct bridge *b)
{
	int err = 0;

	for (; b->target < p->ntargets; b->target++) {
		const struct target *t = &p->targets[b->target];
		int fd;

		say(p, TCPPROXY_LOG_DEBUG, "connect id=%lu server=%s",
		    b->id, t->name);
		fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_FLAGS, 0);
		if (fd == -1 && (errno == EMFILE || errno == ENFILE)) {
			/* Wait for a bridge to close; in line, if already. */
			if (b->timer != TIMER_FDWAIT)
				timer_set(p, b, TIMER_FDWAIT);
			b->connecting = 1;
			accept_pause(p, errno);
			return 0;
		}
		if (fd == -1) {
			err = errno;
			break;
		}
		if (sock_prepare(fd) == -1) {
			err = errno;
			fd_close(fd);
			break;
		}
		if (connect(fd, (const struct sockaddr *)&t->addr, t->len) ==
		    0 || errno == EINPROGRESS || errno == EINTR) {
			b->fd[SERVER] = fd;
			b->connecting = 1;
			timer_set(p, b, TIMER_CONNECT);
			return 0;
		}
		err = errno;
		say(p, TCPPROXY_LOG_DEBUG, "connect id=%lu server=%s: %s",
		    b->id, t->name, strerror(err));
		fd_close(fd);
	}
	if (b->target >= p->ntargets)
		b->target = p->ntargets - 1;
	bridge_end(b, err == ECONNREFUSED ? TCPPROXY_REASON_CONNECT_REFUSED :
	    TCPPROXY_REASON_CONNECT_FAILED, err);
	return -1;
}

/* Gives up on the server address being tried and moves to the next. */
static void
server_retry(struct tcpproxy *p, struct bridge *b, int err)
{
	say(p, TCPPROXY_LOG_DEBUG, "connect id=%lu server=%s: %s", b->id,
	    p->targets[b->target].name, strerror(err));
	fd_close(b->fd[SERVER]);
	b->fd[SERVER] = -1;
	b->connecting = 0;
	b->target++;
	if (b->target < p->ntargets && server_connect(p, b) == 0)
		return;
	if (b->target >= p->ntargets)
		b->target = p->ntargets - 1;
	if (err == ETIMEDOUT)
		bridge_end(b, TCPPROXY_REASON_CONNECT_TIMEOUT, 0);
	else if (err == ECONNREFUSED)
		bridge_end(b, TCPPROXY_REASON_CONNECT_REFUSED, err);
	else
		bridge_end(b, TCPPROXY_REASON_CONNECT_FAILED, err);
	b->rd[CLIENT] = b->wr[CLIENT] = b->rd[SERVER] = b->wr[SERVER] = 0;
}

/* The server socket polled writable while connecting: did it connect? */
static void
server_connected(struct tcpproxy *p, struct bridge *b)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(b->fd[SERVER], SOL_SOCKET, SO_ERROR, &err, &len) == -1)
		err = errno;
	if (err == EINPROGRESS || err == EINTR)
		return;
	if (err != 0) {
		server_retry(p, b, err);
		return;
	}
	b->connecting = 0;
	timer_set(p, b, TIMER_IDLE);
	say(p, TCPPROXY_LOG_DEBUG, "connected id=%lu server=%s", b->id,
	    p->targets[b->target].name);
	flow_drain(p, b, CLIENT);
}

/* Grows the bridge table and pollfd array to hold one more bridge. */
static int
table_grow(struct tcpproxy *p)
{
	size_t cap = p->cap ? p->cap * 2 : 64;
	struct bridge **tab;
	struct pollfd *pfd;

	if (p->nbridges < p->cap)
		return 0;
	if ((tab = realloc(p->tab, cap * sizeof(struct bridge *))) == NULL)
		return -1;
	p->tab = tab;
	if ((tab = realloc(p->ready, cap * sizeof(struct bridge *))) ==
	    NULL)
		return -1;
	p->ready = tab;
	pfd = realloc(p->pfd, (1 + p->nlisten + 2 * cap) * sizeof(*pfd));
	if (pfd == NULL)
		return -1;
	p->pfd = pfd;
	p->cap = cap;
	return 0;
}

/* Logs the end of a bridge in the documented key=value form. */
static void
bridge_log_close(struct tcpproxy *p, const struct bridge *b)
{
	char err[128] = "";

	if (b->error != 0)
		snprintf(err, sizeof(err), " error=\"%s\"", strerror(b->error));
	say(p, TCPPROXY_LOG_INFO, "close id=%lu%s client=%s server=%s up=%llu "
	    "down=%llu duration=%.3f reason=%s%s", b->id, p->worker, b->client,
	    p->targets[b->target].name, b->flow[CLIENT].bytes,
	    b->flow[SERVER].bytes, (double)(p->now - b->start) / 1000.0,
	    tcpproxy_reason_name(b->reason), err);
}

/*
 * Closes both descriptors of b exactly once, tells the hook, and frees b;
 * the last bridge moves into its slot.
 */
static void
bridge_close(struct tcpproxy *p, struct bridge *b)
{
	const struct tcpproxy_hooks *h = p->cfg.hooks;

	bridge_end(b, TCPPROXY_REASON_SHUTDOWN, 0);
	bridge_log_close(p, b);
	if (h != NULL && h->on_close != NULL) {
		struct tcpproxy_bridge_info info;

		bridge_info(p, b, &info);
		h->on_close(h->user, b->hook_data, &info);
	}
	fd_close(b->fd[CLIENT]);
	fd_close(b->fd[SERVER]);
	buf_give(p, &b->flow[CLIENT]);
	buf_give(p, &b->flow[SERVER]);
	timer_unlink(p, b);
	throttle_unlink(p, b);
	/*
	 * The last bridge fills the slot.  The cold sweep has polled the
	 * slots before the cursor: a slot there is filled by the last polled
	 * bridge instead, so that the last bridge, not polled yet, lands
	 * after the cursor and no cold bridge is skipped.
	 */
	bridge_cool(p, b);
	if (b->slot < p->cursor)
		slot_swap(p, b->slot, --p->cursor);
	slot_swap(p, b->slot, p->nbridges - 1);
	p->nbridges--;
	free(b);
	/* Descriptors and a slot are free: waiters, then accepting. */
	if (p->timers[TIMER_FDWAIT].head != NULL)
		p->fd_freed = 1;
	if (p->accepting == ACCEPT_FULL || p->accepting == ACCEPT_NOFD) {
		p->accepting = ACCEPT_ON;
		listeners_update(p);
	}
}

/* Returns whether flow[s] has nothing more to deliver. */
static int
flow_done(const struct bridge *b, int s)
{
	return !b->rd[s] && (b->flow[s].buf == NULL || !b->wr[!s]);
}

/*
 * Applies the close rules after anything happened to b, then projects
 * its state onto its pollfds.  Returns 1 if b was closed.
 */
static int
bridge_settle(struct tcpproxy *p, struct bridge *b)
{
	int s;

	if (!b->connecting) {
		for (s = CLIENT; s <= SERVER; s++) {
			if (!p->cfg.half_close || !flow_done(b, s) ||
			    !b->wr[!s])
				continue;
			/* Pass the EOF on; best effort, as for close. */
			(void)shutdown(b->fd[!s], SHUT_WR);
			b->wr[!s] = 0;
		}
	}
	if (flow_done(b, CLIENT) && flow_done(b, SERVER)) {
		bridge_close(p, b);
		return 1;
	}
	for (s = CLIENT; s <= SERVER; s++) {
		struct pollfd *pfd = slot_pfd(p, b->slot, s);

		pfd->events = want(p, b, s);
		pfd->fd = pfd->events ? b->fd[s] : -1;
	}
	return 0;
}

/*
 * Opens a bridge for a freshly accepted client; on any failure the
 * client's connection is closed.
 */
static void
bridge_open(struct tcpproxy *p, int cfd, const struct sockaddr *sa,
    socklen_t salen)
{
	const struct tcpproxy_hooks *h = p->cfg.hooks;
	struct bridge *b;

	if (sock_prepare(cfd) == -1 || table_grow(p) == -1 ||
	    (b = calloc(1, sizeof(*b))) == NULL) {
		say(p, TCPPROXY_LOG_ERROR, "accept: %s", strerror(errno));
		fd_close(cfd);
		return;
	}
	b->fd[CLIENT] = cfd;
	b->fd[SERVER] = -1;
	b->rd[CLIENT] = b->rd[SERVER] = b->wr[CLIENT] = b->wr[SERVER] = 1;
	b->timer = TIMER_NONE;
	b->start = b->last = p->now;
	b->flow[CLIENT].tokens = b->flow[SERVER].tokens = p->burst;
	b->flow[CLIENT].stamp = b->flow[SERVER].stamp = p->now;
	b->id = ++p->next_id;
	addr_name(sa, salen, b->client, sizeof(b->client));
	if (h != NULL && h->on_accept != NULL) {
		struct tcpproxy_bridge_info info;

		bridge_info(p, b, &info);
		info.client = sa;
		info.client_len = salen;
		if (h->on_accept(h->user, &info, &b->hook_data) !=
		    TCPPROXY_PASS) {
			say(p, TCPPROXY_LOG_INFO, "refuse id=%lu client=%s",
			    b->id, b->client);
			fd_close(cfd);
			free(b);
			return;
		}
	}
	b->slot = p->nbridges++;
	p->tab[b->slot] = b;
	b->active = p->now;
	bridge_heat(p, b);
	say(p, TCPPROXY_LOG_INFO, "open id=%lu%s client=%s server=%s", b->id,
	    p->worker, b->client, p->targets[0].name);
	if (server_connect(p, b) == -1) {
		int err = b->error;

		bridge_close(p, b);
		if (err == EMFILE || err == ENFILE)
			accept_pause(p, err);
		return;
	}
	(void)bridge_settle(p, b);
}

/* ---- the loop ---- */

/* Projects the accepting state onto the listeners' pollfds. */
static void
listeners_update(struct tcpproxy *p)
{
	size_t i;

	for (i = 0; i < p->nlisten; i++) {
		p->pfd[1 + i].fd = p->accepting == ACCEPT_ON ? p->lfd[i] : -1;
		p->pfd[1 + i].events = POLLIN;
	}
}

/* Logs a warning at most once per TCPPROXY_NOTE_INTERVAL. */
static void
note_once(struct tcpproxy *p, long long *last, const char *what)
{
	if (*last != 0 && p->now - *last < TCPPROXY_NOTE_INTERVAL)
		return;
	*last = p->now;
	say(p, TCPPROXY_LOG_ERROR, "%s", what);
}

/*
 * Stops accepting until a bridge closes or TCPPROXY_ACCEPT_RETRY passes:
 * at the descriptor limit, accepting again at once would only spin.
 */
static void
accept_pause(struct tcpproxy *p, int err)
{
	char msg[128];

	/* The same words on every libc: scripts grep for them. */
	snprintf(msg, sizeof(msg), "out of file descriptors (%s); new "
	    "clients wait until some are free", strerror(err));
	note_once(p, &p->noted_nofd, msg);
	p->accepting = ACCEPT_NOFD;
	p->accept_retry = p->now + TCPPROXY_ACCEPT_RETRY;
	listeners_update(p);
}

/* Accepts every pending client of listener i, until EAGAIN or a limit. */
static void
listener_accept(struct tcpproxy *p, size_t i)
{
	char msg[128];

	while (p->accepting == ACCEPT_ON) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int fd;

		if (p->cfg.max_clients > 0 &&
		    p->nbridges >= p->cfg.max_clients) {
			snprintf(msg, sizeof(msg), "reached max-clients limit "
			    "(%lu), new clients wait", p->cfg.max_clients);
			note_once(p, &p->noted_full, msg);
			p->accepting = ACCEPT_FULL;
			break;
		}
		fd = accept_ready(p->lfd[i], (struct sockaddr *)&ss, &len);
		if (fd >= 0) {
			bridge_open(p, fd, (struct sockaddr *)&ss, len);
			continue;
		}
		if (WOULD_BLOCK(errno))
			return;
		if (errno == EINTR || errno == ECONNABORTED ||
		    errno == EPROTO)
			continue;
		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
		    errno == ENOMEM) {
			accept_pause(p, errno);
			break;
		}
		say(p, TCPPROXY_LOG_ERROR, "accept: %s", strerror(errno));
		return;
	}
	listeners_update(p);
}

/* Closes the listeners: after a stop, new clients are refused. */
static void
listeners_close(struct tcpproxy *p)
{
	size_t i;

	for (i = 0; i < p->nlisten; i++) {
		fd_close(p->lfd[i]);
		p->lfd[i] = -1;
	}
	p->accepting = ACCEPT_OFF;
	listeners_update(p);
}

/* Empties the wake pipe and acts on the stop requests it carried. */
static void
wake_read(struct tcpproxy *p)
{
	char buf[64];
	ssize_t n;

	/* One byte per tcpproxy_stop() call: the second ends the grace. */
	while ((n = read(p->wake[0], buf, sizeof(buf))) > 0) {
		if (p->stopping == 0) {
			listeners_close(p);
			p->grace_end = p->now + secs_to_ms(p->cfg.grace);
			say(p, TCPPROXY_LOG_DEBUG, "stopping, %lu bridges open",
			    (unsigned long)p->nbridges);
		}
		p->stopping += (int)n;
		if (p->stopping > 1)
			p->grace_end = p->now;
	}
}

/* Closes the bridges whose timers ran out. */
static void
timers_expire(struct tcpproxy *p)
{
	struct timer_list *l;
	struct bridge *b, *next;

	l = &p->timers[TIMER_CONNECT];
	while ((b = l->head) != NULL && b->last + l->timeout <= p->now) {
		server_retry(p, b, ETIMEDOUT);
		(void)bridge_settle(p, b);
	}
	l = &p->timers[TIMER_IDLE];
	while ((b = l->head) != NULL && b->last + l->timeout <= p->now) {
		bridge_end(b, TCPPROXY_REASON_IDLE_TIMEOUT, 0);
		bridge_close(p, b);
	}
	l = &p->timers[TIMER_FDWAIT];
	while (l->timeout > 0 && (b = l->head) != NULL &&
	    b->last + l->timeout <= p->now) {
		bridge_end(b, TCPPROXY_REASON_CONNECT_FAILED, EMFILE);
		bridge_close(p, b);
	}
	for (b = p->throttled; b != NULL; b = next) {
		int s, paused = 0;

		next = b->tnext;
		for (s = CLIENT; s <= SERVER; s++) {
			if (b->flow[s].resume != 0 &&
			    b->flow[s].resume <= p->now)
				b->flow[s].resume = 0;
			paused |= b->flow[s].resume != 0;
		}
		if (!paused) {
			throttle_unlink(p, b);
			(void)bridge_settle(p, b);
		}
	}
	if (p->stopping && p->now >= p->grace_end)
		while (p->nbridges > 0)
			bridge_close(p, p->tab[p->nbridges - 1]);
	if (p->accepting == ACCEPT_NOFD && p->now >= p->accept_retry) {
		/* Descriptors may have been freed elsewhere (ENFILE). */
		if (p->timers[TIMER_FDWAIT].head != NULL)
			p->fd_freed = 1;
		p->accepting = ACCEPT_ON;
		listeners_update(p);
	}
}

/*
 * Gives the bridges waiting for a descriptor their server connections,
 * first come first served, until descriptors run out again.
 */
static void
fdwait_connect(struct tcpproxy *p)
{
	struct bridge *b;

	p->fd_freed = 0;
	while ((b = p->timers[TIMER_FDWAIT].head) != NULL) {
		b->connecting = 0;
		if (server_connect(p, b) == 0 && b->timer == TIMER_FDWAIT)
			break;		/* out of descriptors again */
		if (b->timer == TIMER_FDWAIT) {
			/* No address left: nothing read can be delivered. */
			timer_unlink(p, b);
			b->rd[CLIENT] = b->wr[CLIENT] = 0;
			b->rd[SERVER] = b->wr[SERVER] = 0;
		}
		(void)bridge_settle(p, b);
	}
}

/* Returns ms until the next deadline, capped by limit (-1: no limit). */
static int
next_timeout(const struct tcpproxy *p, int limit)
{
	const struct bridge *b;
	long long when = -1, wait;
	int t;

	if (p->fd_freed)
		return 0;	/* waiters to serve first */
	for (t = TIMER_CONNECT; t < TIMER_NONE; t++) {
		b = p->timers[t].head;

		if (p->timers[t].timeout == 0)
			continue;
		if (b != NULL && (when < 0 || b->last + p->timers[t].timeout <
		    when))
			when = b->last + p->timers[t].timeout;
	}
	for (b = p->throttled; b != NULL; b = b->tnext) {
		int s;

		for (s = CLIENT; s <= SERVER; s++)
			if (b->flow[s].resume != 0 &&
			    (when < 0 || b->flow[s].resume < when))
				when = b->flow[s].resume;
	}
	if (p->stopping && (when < 0 || p->grace_end < when))
		when = p->grace_end;
	if (p->accepting == ACCEPT_NOFD && (when < 0 || p->accept_retry < when))
		when = p->accept_retry;
	if (when < 0)
		return limit;
	wait = when - now_ms();
	if (wait < 0)
		wait = 0;
	if (wait > INT_MAX)
		wait = INT_MAX;
	if (limit >= 0 && wait > limit)
		wait = limit;
	return (int)wait;
}

/* Handles what poll() reported for bridge b; returns 1 if b was closed. */
static int
bridge_handle(struct tcpproxy *p, struct bridge *b)
{
	short *rev = b->rev;
	int s;

	b->active = p->now;
	bridge_heat(p, b);
	if (b->connecting && rev[SERVER] != 0) {
		server_connected(p, b);
		rev[SERVER] = 0;
	}
	/* POLLHUP and POLLERR count as readable and writable: the next
	 * recv() or send() tells what happened. */
	for (s = CLIENT; s <= SERVER; s++) {
		if ((rev[s] & (POLLIN | POLLHUP | POLLERR)) && b->rd[s] &&
		    !(b->connecting && s == SERVER))
			flow_fill(p, b, s);
		if ((rev[s] & (POLLOUT | POLLHUP | POLLERR)) && b->wr[s])
			flow_drain(p, b, !s);
	}
	return bridge_settle(p, b);
}

/* Returns the monotonic time in microseconds. */
static long long
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Cools the hot bridges that saw no I/O for TCPPROXY_HOT_TTL. */
static void
bridges_cool(struct tcpproxy *p)
{
	size_t k;

	/* Downwards: a bridge swapped into slot k was looked at already. */
	for (k = p->nhot; k-- > 0; )
		if (p->now - p->tab[k]->active >= TCPPROXY_HOT_TTL)
			bridge_cool(p, p->tab[k]);
}

/*
 * Polls the next slice of cold bridges without waiting, and sets [*lo,
 * *hi) to its slots; t0 is now, in microseconds.  A sweep of the cold
 * part goes slice by slice, so no round stalls the hot bridges for more
 * than a slice or so; the pause after a slice is a multiple of what it
 * cost, so sweeping takes a bounded share of the time, and a whole sweep
 * about TCPPROXY_SCAN_MAX ms at most.  poll() sleeps in whole
 * milliseconds, longer than a pause: a round that comes late (the hot
 * bridges were quiet) polls the slices due since, up to TCPPROXY_LATE.
 */
static int
poll_cold_slice(struct tcpproxy *p, long long t0, size_t *lo, size_t *hi)
{
	size_t ncold = p->nbridges - p->nhot, len, nslices, due;
	long long t1, pause, most;
	int n;

	if (p->cursor < p->nhot || p->cursor >= p->nbridges)
		p->cursor = p->nhot;
	*lo = *hi = p->cursor;
	if (ncold == 0) {
		/* All hot: no poll, but a sweep's end, when they may cool. */
		p->next_scan = t0 + TCPPROXY_SCAN_MAX * 1000LL;
		return 0;
	}
	len = ncold / TCPPROXY_SLICES + 1;
	if (len < TCPPROXY_SLICE_MIN)
		len = TCPPROXY_SLICE_MIN;
	nslices = (ncold + len - 1) / len;
	most = TCPPROXY_SCAN_MAX * 1000LL / (long long)(nslices + 1);
	due = 1 + (size_t)((t0 - p->next_scan) / p->slice_period);
	if (due > TCPPROXY_LATE)
		due = TCPPROXY_LATE;
	len *= due;
	if (len > p->nbridges - p->cursor)
		len = p->nbridges - p->cursor;
	*hi = p->cursor + len;
	n = poll(slot_pfd(p, *lo, CLIENT), (nfds_t)(2 * len), 0);
	t1 = now_us();
	p->cursor = *hi;
	pause = (t1 - t0) * TCPPROXY_SCAN_SHARE;
	if (pause > most * (long long)due)	/* preempted, or many slices */
		pause = most * (long long)due;
	p->slice_period = (t1 - t0 + pause) / (long long)due + 1;
	p->next_scan = t1 + pause;
	return n;
}

/*
 * Polls the first nfds descriptors like poll().  With --busy-poll, while
 * the busy window lasts, it polls without waiting instead of sleeping,
 * until something happens, the window closes or timeout_ms passes: a
 * process asleep in poll() takes tens of microseconds to be woken, more
 * than the rest of a round trip through it.  Only with a few bridges to
 * poll: each empty poll() then costs next to nothing, while with many
 * it costs more than the wake-up, and the events that gather while the
 * process sleeps come back in one batch instead of one by one (64
 * connections' round trips lost a quarter of their rate when spinning).
 */
static int
poll_busy(struct tcpproxy *p, size_t nfds, int timeout_ms)
{
	long long t, end;
	int n;

	if (p->cfg.busy_poll == 0 || timeout_ms == 0 ||
	    nfds > 1 + p->nlisten + 2 * TCPPROXY_BUSY_BRIDGES ||
	    (t = now_us()) >= p->busy_until)
		return poll(p->pfd, (nfds_t)nfds, timeout_ms);
	end = p->busy_until;
	if (timeout_ms > 0 && t + timeout_ms * 1000LL < end)
		end = t + timeout_ms * 1000LL;
	do {
		if ((n = poll(p->pfd, (nfds_t)nfds, 0)) != 0)
			return n;
	} while (now_us() < end);
	return 0;
}

/*
 * Polls the hot bridges, after the next cold slice when one is due; or
 * every descriptor when there are few bridges or none is hot.  Returns
 * how many descriptors have events.  Sets *npolled to the number of
 * bridges polled from slot 0 (with the wake pipe and listeners), [*lo,
 * *hi) to the cold slots polled besides, and *swept when the last cold
 * slot was among them.
 */
static int
poll_bridges(struct tcpproxy *p, int timeout_ms, size_t *npolled,
    size_t *lo, size_t *hi, int *swept)
{
	size_t base = 1 + p->nlisten;
	long long t, wait;
	int n, cold = 0;

	*lo = *hi = 0;
	*swept = 0;
	timeout_ms = next_timeout(p, timeout_ms);
	if (p->nbridges < TCPPROXY_TIER_MIN || p->nhot == 0) {
		*npolled = p->nbridges;
		p->cursor = p->nhot;
		return poll_busy(p, base + 2 * p->nbridges, timeout_ms);
	}
	t = now_us();
	if (t >= p->next_scan) {
		cold = poll_cold_slice(p, t, lo, hi);
		if (cold == -1)
			return -1;
		*swept = *hi == p->nbridges;
	}
	*npolled = p->nhot;
	/* Milliseconds, rounded up: the next slice is never early. */
	wait = (p->next_scan - t + 999) / 1000;
	if (cold > 0)
		timeout_ms = 0;
	else if (timeout_ms < 0 || timeout_ms > wait)
		timeout_ms = (int)wait;
	n = poll_busy(p, base + 2 * p->nhot, timeout_ms);
	return n == -1 ? -1 : n + cold;
}

/* Copies the events of the bridges in slots [lo, hi) to them, and
 * queues those with any on p->ready; returns the new queue length. */
static size_t
bridges_collect(struct tcpproxy *p, size_t lo, size_t hi, size_t nready)
{
	size_t k;

	for (k = lo; k < hi; k++) {
		struct bridge *b = p->tab[k];

		b->rev[CLIENT] = slot_pfd(p, k, CLIENT)->revents;
		b->rev[SERVER] = slot_pfd(p, k, SERVER)->revents;
		if ((b->rev[CLIENT] | b->rev[SERVER]) != 0)
			p->ready[nready++] = b;
	}
	return nready;
}

int
tcpproxy_step(struct tcpproxy *p, int timeout_ms)
{
	size_t k, i, nready = 0, npolled, lo, hi;
	int n, swept;

	if (p->stopping && p->nbridges == 0)
		return 0;
	n = poll_bridges(p, timeout_ms, &npolled, &lo, &hi, &swept);
	if (n == -1)
		return errno == EINTR ? 1 : -1;
	if (n > 0 && p->cfg.busy_poll > 0)
		p->busy_until = now_us() + (long long)p->cfg.busy_poll;
	p->now = now_ms();
	if (p->pfd[0].revents != 0)
		wake_read(p);
	/*
	 * Collect first, then handle: handling closes and moves bridges
	 * around the table, but never frees another bridge than its own.
	 */
	if (n > 0) {
		nready = bridges_collect(p, 0, npolled, nready);
		nready = bridges_collect(p, lo, hi, nready);
	}
	for (k = 0; k < nready; k++)
		(void)bridge_handle(p, p->ready[k]);
	if (swept)
		bridges_cool(p);
	timers_expire(p);
	/* Bridges waiting for a descriptor go before new clients. */
	if (p->fd_freed)
		fdwait_connect(p);
	for (i = 0; i < p->nlisten; i++)
		if (p->pfd[1 + i].fd >= 0 && p->pfd[1 + i].revents != 0)
			listener_accept(p, i);
	return p->stopping && p->nbridges == 0 ? 0 : 1;
}

/* ---- public API ---- */

void
tcpproxy_config_init(struct tcpproxy_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->connect_timeout = TCPPROXY_CONNECT_TIMEOUT;
	cfg->grace = TCPPROXY_GRACE;
	cfg->buffer_size = TCPPROXY_BUFFER_SIZE;
	cfg->verbosity = TCPPROXY_LOG_INFO;
}

/* Returns whether s is a port number 0..65535 (1.. if !zero_ok). */
static int
port_ok(const char *s, int zero_ok)
{
	size_t i;
	long v;

	for (i = 0; s[i] >= '0' && s[i] <= '9'; i++)
		;
	if (i == 0 || i > 5 || s[i] != '\0')
		return 0;
	v = strtol(s, NULL, 10);
	return v <= 65535 && (zero_ok || v > 0);
}

/* Resolves the remote address into p->targets; returns 0 or -1. */
static int
targets_resolve(struct tcpproxy *p, const struct tcpproxy_config *cfg,
    char *err, size_t errlen)
{
	struct addrinfo *res, *ai;
	size_t n;

	if (resolve(cfg->remote_host, cfg->remote_port, 0, &res, &n, err,
	    errlen) == -1)
		return -1;
	if ((p->targets = calloc(n, sizeof(*p->targets))) == NULL) {
		freeaddrinfo(res);
		fail(err, errlen, ENOMEM, "out of memory");
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		struct target *t = &p->targets[p->ntargets];

		if (addr_seen(res, ai) || ai->ai_addrlen > sizeof(t->addr))
			continue;
		memcpy(&t->addr, ai->ai_addr, ai->ai_addrlen);
		t->len = ai->ai_addrlen;
		addr_name(ai->ai_addr, ai->ai_addrlen, t->name, sizeof(t->name));
		p->ntargets++;
	}
	freeaddrinfo(res);
	if (p->ntargets == 0) {
		fail(err, errlen, EADDRNOTAVAIL, "cannot resolve '%s': "
		    "no usable address", cfg->remote_host);
		return -1;
	}
	return 0;
}

/*
 * Binds every address the local host resolves to.  With port 0 the first
 * bind picks the port and the others reuse it.  An address family the
 * host lacks (no IPv6, say) is skipped if another one works.
 */
static int
listeners_open(struct tcpproxy *p, const struct tcpproxy_config *cfg,
    char *err, size_t errlen)
{
	struct addrinfo *res, *ai;
	char name[ADDR_NAME_MAX];
	size_t n;
	int port = (int)strtol(cfg->local_port, NULL, 10), saved = 0;

	if (resolve(cfg->local_host, cfg->local_port, 1, &res, &n, err,
	    errlen) == -1)
		return -1;
	if ((p->lfd = calloc(n, sizeof(*p->lfd))) == NULL) {
		freeaddrinfo(res);
		fail(err, errlen, ENOMEM, "out of memory");
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		int fd;

		if (addr_seen(res, ai))
			continue;
		if (port != 0)
			addr_set_port(ai->ai_addr, port);
		addr_name(ai->ai_addr, ai->ai_addrlen, name, sizeof(name));
		if ((fd = listen_on(ai->ai_addr, ai->ai_addrlen)) == -1) {
			saved = errno;
			if ((saved == EADDRNOTAVAIL || saved == EAFNOSUPPORT) &&
			    (ai->ai_next != NULL || p->nlisten > 0)) {
				say(p, TCPPROXY_LOG_ERROR, "skipping %s: %s",
				    name, strerror(saved));
				continue;
			}
			freeaddrinfo(res);
			fail(err, errlen, saved, "cannot listen on %s: %s",
			    name, strerror(saved));
			return -1;
		}
		p->lfd[p->nlisten++] = fd;
		if (port == 0)
			port = fd_port(fd);
	}
	freeaddrinfo(res);
	if (p->nlisten == 0) {
		fail(err, errlen, saved ? saved : EADDRNOTAVAIL,
		    "cannot listen on '%s'", cfg->local_host);
		return -1;
	}
	p->port = port;
	return 0;
}

/*
 * Returns whether connecting to target t could reach listener fd: same
 * family and port, and the same address, or a wildcard listener and a
 * loopback target.  A proxy relaying to itself would eat every
 * descriptor in a loop.
 */
static int
target_is_self(const struct target *t, int fd)
{
	static const unsigned char any6[16], lo6[16] = { [15] = 1 };
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) == -1 ||
	    ss.ss_family != t->addr.ss_family)
		return 0;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *l = (const void *)&ss;
		const struct sockaddr_in *r = (const void *)&t->addr;
		unsigned long a = ntohl(r->sin_addr.s_addr);

		return l->sin_port == r->sin_port &&
		    (l->sin_addr.s_addr == r->sin_addr.s_addr ||
		    (l->sin_addr.s_addr == htonl(INADDR_ANY) &&
		    (a >> 24) == 127));
	}
	if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *l = (const void *)&ss;
		const struct sockaddr_in6 *r = (const void *)&t->addr;

		return l->sin6_port == r->sin6_port &&
		    (memcmp(&l->sin6_addr, &r->sin6_addr, 16) == 0 ||
		    (memcmp(&l->sin6_addr, any6, 16) == 0 &&
		    memcmp(&r->sin6_addr, lo6, 16) == 0));
	}
	return 0;
}

/* Creates the wake pipe; returns 0 or -1. */
static int
wake_open(struct tcpproxy *p)
{
	if (pipe(p->wake) == -1) {
		p->wake[0] = p->wake[1] = -1;
		return -1;
	}
	if (fd_prepare(p->wake[0]) == -1 || fd_prepare(p->wake[1]) == -1)
		return -1;
	return 0;
}

struct tcpproxy *
tcpproxy_create(const struct tcpproxy_config *cfg, char *err, size_t errlen)
{
	struct tcpproxy *p;
	char name[ADDR_NAME_MAX];
	size_t i;
	int saved;

	/* getaddrinfo() takes "99999" on some systems: check ourselves. */
	if (cfg == NULL || cfg->local_port == NULL ||
	    cfg->remote_host == NULL || cfg->remote_port == NULL ||
	    !port_ok(cfg->local_port, 1) || !port_ok(cfg->remote_port, 0) ||
	    !(cfg->connect_timeout >= 0) || !(cfg->idle_timeout >= 0) ||
	    !(cfg->grace >= 0) || cfg->busy_poll > TCPPROXY_BUSY_POLL_MAX)
		return fail(err, errlen, EINVAL, "invalid configuration");
	if ((p = calloc(1, sizeof(*p))) == NULL)
		return fail(err, errlen, ENOMEM, "out of memory");
	p->cfg = *cfg;
	p->cfg.local_host = p->cfg.local_port = NULL;
	p->cfg.remote_host = p->cfg.remote_port = NULL;
	p->slice_period = 1;
	p->bufsize = cfg->buffer_size ? cfg->buffer_size :
	    TCPPROXY_BUFFER_SIZE;
	if (p->bufsize < room_min(p))
		p->bufsize = room_min(p);
	p->timers[TIMER_CONNECT].timeout = secs_to_ms(cfg->connect_timeout);
	p->timers[TIMER_IDLE].timeout = secs_to_ms(cfg->idle_timeout);
	p->timers[TIMER_FDWAIT].timeout = p->timers[TIMER_CONNECT].timeout;
	/* A bucket of 1/20 s: smooth, yet reads stay worth a system call. */
	p->burst = (double)cfg->rate / 20;
	if (p->burst > (double)p->bufsize)
		p->burst = (double)p->bufsize;
	if (p->burst < 1)
		p->burst = 1;
	p->now = now_ms();
	p->wake[0] = p->wake[1] = -1;
	if (targets_resolve(p, cfg, err, errlen) == -1 ||
	    listeners_open(p, cfg, err, errlen) == -1)
		goto bad;
	for (i = 0; i < p->ntargets * p->nlisten; i++) {
		if (target_is_self(&p->targets[i / p->nlisten],
		    p->lfd[i % p->nlisten])) {
			fail(err, errlen, ELOOP, "remote address %s is the "
			    "proxy's own listening address",
			    p->targets[i / p->nlisten].name);
			goto bad;
		}
	}
	if (wake_open(p) == -1 ||
	    (p->spare = calloc(TCPPROXY_SPARE_BUFFERS, sizeof(char *))) ==
	    NULL || table_grow(p) == -1) {
		fail(err, errlen, errno, "cannot start: %s", strerror(errno));
		goto bad;
	}
	p->pfd[0].fd = p->wake[0];
	p->pfd[0].events = POLLIN;
	p->accepting = ACCEPT_ON;
	listeners_update(p);
	for (i = 0; i < p->nlisten; i++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);

		if (getsockname(p->lfd[i], (struct sockaddr *)&ss, &len) == 0)
			say(p, TCPPROXY_LOG_ERROR, "listening on %s",
			    addr_name((struct sockaddr *)&ss, len, name,
			    sizeof(name)));
	}
	return p;
bad:
	saved = errno;
	tcpproxy_free(p);
	errno = saved;
	return NULL;
}

int
tcpproxy_run(struct tcpproxy *p)
{
	int rc;

	while ((rc = tcpproxy_step(p, -1)) == 1)
		;
	return rc;
}

void
tcpproxy_stop(struct tcpproxy *p)
{
	int saved = errno;

	/* A full pipe already holds a wake-up: nothing is lost. */
	if (write(p->wake[1], "", 1) < 0)
		errno = saved;
	errno = saved;
}

int
tcpproxy_after_fork(struct tcpproxy *p, int worker)
{
	fd_close(p->wake[0]);
	fd_close(p->wake[1]);
	if (wake_open(p) == -1)
		return -1;
	p->pfd[0].fd = p->wake[0];
	p->worker[0] = '\0';
	if (worker > 0)
		snprintf(p->worker, sizeof(p->worker), " worker=%d", worker);
	return 0;
}

int
tcpproxy_bound_port(const struct tcpproxy *p)
{
	return p->port;
}

unsigned long
tcpproxy_bridges(const struct tcpproxy *p)
{
	return (unsigned long)p->nbridges;
}

void
tcpproxy_free(struct tcpproxy *p)
{
	size_t i;

	if (p == NULL)
		return;
	p->now = now_ms();
	while (p->nbridges > 0)
		bridge_close(p, p->tab[p->nbridges - 1]);
	for (i = 0; i < p->nlisten; i++)
		fd_close(p->lfd[i]);
	fd_close(p->wake[0]);
	fd_close(p->wake[1]);
	for (i = 0; i < p->nspare; i++)
		free(p->spare[i]);
	free(p->spare);
	free(p->tab);
	free(p->ready);
	free(p->pfd);
	free(p->lfd);
	free(p->targets);
	free(p);
}

/* ---- the command line ---- */
#ifndef TCPPROXY_NO_MAIN

#include <sys/stat.h>
#include <sys/wait.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>

/*
 * setgroups() is not in POSIX, so strict headers hide it, yet dropping
 * root without clearing supplementary groups would keep root's groups.
 * Its prototype differs in the type of its count.
 */
#ifdef __linux__
int setgroups(size_t, const gid_t *);
#else
int setgroups(int, const gid_t *);
#endif

#define SOURCE_BUCKETS 256
#define ERRLEN 256

static const char usage_line[] =
    "usage: tcpproxy [-HhqVvx] [-a cidr] [-b bytes] [-c max-clients] "
    "[-d cidr]\n"
    "                [-i idle-secs] [-t connect-secs] [-u user[:group]] "
    "[-w workers]\n"
    "                [--busy-poll usecs] [--dump-dir dir] "
    "[--dump-file file]\n"
    "                [--grace secs] [--max-bytes bytes] "
    "[--max-per-source n]\n"
    "                [--rate bytes] "
    "local_host local_port remote_host remote_port\n";

/* An address block of -a/--allow or -d/--deny. */
struct cidr {
	unsigned char key[17];		/* family (4 or 6), then address */
	unsigned int bits;
};

/* Bridges open per client address, for --max-per-source. */
struct source {
	struct source *next;
	unsigned char key[17];
	unsigned long count;
};

/* What the command line's hooks need; one per process. */
struct cli {
	struct cidr *allow, *deny;
	size_t nallow, ndeny;
	FILE *hex;			/* --hexdump output, or NULL */
	const char *dump_dir;		/* --dump-dir, or NULL */
	unsigned long max_per_source;	/* 0: no limit */
	struct source *sources[SOURCE_BUCKETS];
};

/* What the hooks keep per bridge. */
struct cli_bridge {
	FILE *dump[2];			/* --dump-dir files, opened lazily */
	int dump_failed;
	unsigned long long off[2];	/* stream offset per direction */
	struct source *source;		/* counted in --max-per-source */
};

/* Everything the command line says. */
struct options {
	struct tcpproxy_config cfg;
	struct cli cli;
	const char *user;		/* -u */
	const char *dump_file;		/* --dump-file */
	int hex;			/* -x */
	int workers;			/* -w */
};

enum { OPTIONS_RUN = 0, OPTIONS_HELP = 1, OPTIONS_VERSION = 2 };

static struct tcpproxy *the_proxy;	/* for the signal handler only */
static volatile sig_atomic_t got_signals;	/* for the worker parent */

/* Prints a usage error naming the bad word, then the usage; exits 2. */
static NORETURN void
usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("tcpproxy: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fputs(usage_line, stderr);
	exit(2);
}

/* Prints a runtime error and exits 1. */
static NORETURN void
die(const char *fmt, ...)
{
	va_list ap;

	fputs("tcpproxy: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void
help(void)
{
	printf("%s\n"
	    "Relay TCP connections from local_host:local_port to "
	    "remote_host:remote_port.\n\n"
	    "  -a, --allow CIDR            admit only clients in CIDR "
	    "(repeatable)\n"
	    "  -d, --deny CIDR             refuse clients in CIDR "
	    "(repeatable; wins)\n"
	    "  -b, --buffer-size BYTES     buffer per direction per bridge "
	    "(default 64k)\n"
	    "  -c, --max-clients N         at most N bridges at once; "
	    "others wait\n"
	    "      --max-per-source N      at most N bridges per client "
	    "address\n"
	    "  -t, --connect-timeout SECS  per server address (default 10, "
	    "0: none)\n"
	    "  -i, --idle-timeout SECS     close bridges idle that long "
	    "(default: never)\n"
	    "  -H, --half-close            pass an EOF on as a half-close\n"
	    "      --max-bytes BYTES       end a bridge after BYTES "
	    "upstream\n"
	    "      --rate BYTES            bytes per second per direction "
	    "per bridge\n"
	    "      --busy-poll USECS       after I/O, poll that long without "
	    "sleeping\n"
	    "  -x, --hexdump               dump all data as hex (stderr)\n"
	    "      --dump-file FILE        write the hex dump to FILE\n"
	    "      --dump-dir DIR          save each bridge's raw bytes in "
	    "DIR\n"
	    "  -w, --workers N             N processes share the listener\n"
	    "  -u, --user USER[:GROUP]     drop privileges after binding\n"
	    "      --grace SECS            time bridges may finish after "
	    "SIGTERM (default 5)\n"
	    "  -q, --quiet                 no per-bridge log lines\n"
	    "  -v, --verbose               more detail in the log\n"
	    "  -h, --help                  this help\n"
	    "  -V, --version               the version\n"
	    "Sizes take a suffix k, m or g; durations may have fractions.\n",
	    usage_line);
}

/* ---- argument parsing ---- */

/* Formats a usage error into err (ERRLEN bytes); returns -1. */
static int
bad(char *err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, ERRLEN, fmt, ap);
	va_end(ap);
	return -1;
}

/* Checks a port number 0..65535, digits only; returns 0 or -1. */
static int
parse_port(const char *s, const char *what, char *err)
{
	size_t i, n = strlen(s);

	for (i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			break;
	if (n == 0 || i < n || n > 5 || strtol(s, NULL, 10) > 65535)
		return bad(err, "invalid %s '%s': not a number in 0..65535",
		    what, s);
	return 0;
}

/* Parses seconds >= 0, fractions allowed, into *v; returns 0 or -1. */
static int
parse_secs(const char *s, const char *opt, double *v, char *err)
{
	char *end = NULL;
	int ok = 0;

	/* Digits first: strtod() would also take "inf", "nan", " 1". */
	errno = 0;
	if (*s == '.' || (*s >= '0' && *s <= '9')) {
		*v = strtod(s, &end);
		ok = end != s && *end == '\0' && errno == 0 && *v >= 0 &&
		    *v <= 1e9;
	}
	if (!ok)
		return bad(err, "invalid %s '%s': not a number of seconds >= 0",
		    opt, s);
	return 0;
}

/*
 * Parses a count 1..max, digits and an optional k/m/g suffix, into *v;
 * returns 0 or -1.
 */
static int
parse_size(const char *s, const char *opt, unsigned long long max,
    unsigned long long *v, char *err)
{
	unsigned long long n = 0, mult = 1;
	const char *q = s;

	if (*q < '0' || *q > '9')
		return bad(err, "invalid %s '%s': not a positive number", opt,
		    s);
	for (; *q >= '0' && *q <= '9'; q++) {
		if (n > (max - (unsigned)(*q - '0')) / 10)
			return bad(err, "invalid %s '%s': too large", opt, s);
		n = n * 10 + (unsigned)(*q - '0');
	}
	switch (*q) {
	case 'k': case 'K': mult = 1024; q++; break;
	case 'm': case 'M': mult = 1024 * 1024; q++; break;
	case 'g': case 'G': mult = 1024 * 1024 * 1024; q++; break;
	default: break;
	}
	if (*q != '\0')
		return bad(err, "invalid %s '%s': not a positive number", opt,
		    s);
	if (n == 0)
		return bad(err, "invalid %s '%s': must be at least 1", opt, s);
	if (n > max / mult)
		return bad(err, "invalid %s '%s': too large", opt, s);
	*v = n * mult;
	return 0;
}

/*
 * Reduces a socket address to a key: family 4 or 6, then 16 address
 * bytes.  An IPv4-mapped IPv6 address counts as the IPv4 one.  Returns 0,
 * or -1 for another family.
 */
static int
addr_key(const struct sockaddr *sa, unsigned char key[17])
{
	static const unsigned char mapped[12] = {
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
	};

	memset(key, 0, 17);
	if (sa->sa_family == AF_INET) {
		key[0] = 4;
		memcpy(key + 1, &((const struct sockaddr_in *)(const void *)
		    sa)->sin_addr, 4);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		const unsigned char *a = ((const struct sockaddr_in6 *)
		    (const void *)sa)->sin6_addr.s6_addr;

		if (memcmp(a, mapped, 12) == 0) {
			key[0] = 4;
			memcpy(key + 1, a + 12, 4);
		} else {
			key[0] = 6;
			memcpy(key + 1, a, 16);
		}
		return 0;
	}
	return -1;
}

/*
 * Parses "ADDR/BITS" or a bare "ADDR" (one host), IPv4 or IPv6, into *c;
 * host bits past the prefix are cleared.  Returns 0, or -1 if malformed.
 */
static int
cidr_parse(const char *s, struct cidr *c)
{
	char buf[INET6_ADDRSTRLEN + 8], *slash, *end;
	unsigned int max;
	unsigned long bits;
	size_t i;

	if (strlen(s) >= sizeof(buf))
		return -1;
	strcpy(buf, s);
	memset(c, 0, sizeof(*c));
	if ((slash = strchr(buf, '/')) != NULL)
		*slash++ = '\0';
	if (inet_pton(AF_INET, buf, c->key + 1) == 1) {
		c->key[0] = 4;
		max = 32;
	} else if (inet_pton(AF_INET6, buf, c->key + 1) == 1) {
		c->key[0] = 6;
		max = 128;
	} else {
		return -1;
	}
	c->bits = max;
	if (slash != NULL) {
		if (*slash < '0' || *slash > '9' || strlen(slash) > 3)
			return -1;
		bits = strtoul(slash, &end, 10);
		if (*end != '\0' || bits > max)
			return -1;
		c->bits = (unsigned int)bits;
	}
	for (i = 0; i < 16; i++) {
		unsigned int keep = c->bits > 8 * i ? c->bits - 8 * (unsigned)i :
		    0;

		if (keep < 8)
			c->key[1 + i] &= (unsigned char)(0xff00 >> keep);
	}
	return 0;
}

/* Returns whether the address key lies in the block c. */
static int
cidr_match(const struct cidr *c, const unsigned char key[17])
{
	unsigned int full = c->bits / 8, rest = c->bits % 8;

	if (key[0] != c->key[0] || memcmp(key + 1, c->key + 1, full) != 0)
		return 0;
	return rest == 0 || ((key[1 + full] ^ c->key[1 + full]) &
	    (0xff00 >> rest)) == 0;
}

/* Adds one -a or -d argument to a list; returns 0 or -1. */
static int
cidr_add(struct cidr **list, size_t *n, const char *arg, const char *opt,
    char *err)
{
	struct cidr c, *grown;

	if (cidr_parse(arg, &c) == -1)
		return bad(err, "invalid %s '%s': not an address or CIDR "
		    "block", opt, arg);
	if ((grown = realloc(*list, (*n + 1) * sizeof(**list))) == NULL)
		return bad(err, "out of memory");
	grown[(*n)++] = c;
	*list = grown;
	return 0;
}

/* Returns whether the allow and deny lists admit the address key. */
static int
acl_admits(const struct cli *c, const unsigned char key[17])
{
	size_t i;

	for (i = 0; i < c->ndeny; i++)
		if (cidr_match(&c->deny[i], key))
			return 0;
	if (c->nallow == 0)
		return 1;
	for (i = 0; i < c->nallow; i++)
		if (cidr_match(&c->allow[i], key))
			return 1;
	return 0;
}

/* ---- the command line's hooks ---- */

/* Returns the --max-per-source record of key, creating it; NULL if OOM. */
static struct source *
source_get(struct cli *c, const unsigned char key[17])
{
	unsigned int h = 2166136261u;
	struct source *s;
	size_t i;

	for (i = 0; i < 17; i++)
		h = (h ^ key[i]) * 16777619u;
	h %= SOURCE_BUCKETS;
	for (s = c->sources[h]; s != NULL; s = s->next)
		if (memcmp(s->key, key, 17) == 0)
			return s;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return NULL;
	memcpy(s->key, key, 17);
	s->next = c->sources[h];
	c->sources[h] = s;
	return s;
}

/* Drops one bridge from a source's count, freeing the record at zero. */
static void
source_put(struct cli *c, struct source *src)
{
	struct source **pp;
	unsigned int h = 2166136261u;
	size_t i;

	if (--src->count > 0)
		return;
	for (i = 0; i < 17; i++)
		h = (h ^ src->key[i]) * 16777619u;
	for (pp = &c->sources[h % SOURCE_BUCKETS]; *pp != src;
	    pp = &(*pp)->next)
		;
	*pp = src->next;
	free(src);
}

/* Admits or refuses a client: access lists, then --max-per-source. */
static enum tcpproxy_verdict
cli_accept(void *user, const struct tcpproxy_bridge_info *info,
    void **bridge_data)
{
	struct cli *c = user;
	struct cli_bridge *cb;
	struct source *src = NULL;
	unsigned char key[17];

	if (addr_key(info->client, key) == -1 || !acl_admits(c, key))
		return TCPPROXY_CLOSE;
	if (c->max_per_source > 0) {
		/* A new record starts at 0, so it is never over the limit. */
		if ((src = source_get(c, key)) == NULL ||
		    src->count >= c->max_per_source)
			return TCPPROXY_CLOSE;
		src->count++;
	}
	if (src == NULL && c->hex == NULL && c->dump_dir == NULL)
		return TCPPROXY_PASS;
	if ((cb = calloc(1, sizeof(*cb))) == NULL) {
		if (src != NULL)
			source_put(c, src);
		return TCPPROXY_CLOSE;
	}
	cb->source = src;
	*bridge_data = cb;
	return TCPPROXY_PASS;
}

/* Writes one chunk as offset / hex / text lines, like hexdump -C. */
static void
hexdump(FILE *f, const struct tcpproxy_bridge_info *info, int dir,
    unsigned long long off, const unsigned char *data, size_t len)
{
	size_t i, j;

	fprintf(f, "id=%lu %c offset=%llu length=%lu\n", info->id,
	    dir == TCPPROXY_UPSTREAM ? '>' : '<', off, (unsigned long)len);
	for (i = 0; i < len; i += 16) {
		/* 17 + 49 + 3 + 16 + 2 + 1: offsets past 4 GiB too. */
		char line[96], *q = line;

		q += sprintf(q, "%08llx ", off + i);
		for (j = 0; j < 16; j++) {
			if (j == 8)
				*q++ = ' ';
			if (i + j < len)
				q += sprintf(q, " %02x", data[i + j]);
			else
				q += sprintf(q, "   ");
		}
		q += sprintf(q, "  |");
		for (j = 0; j < 16 && i + j < len; j++)
			*q++ = (char)(data[i + j] >= 0x20 &&
			    data[i + j] < 0x7f ? data[i + j] : '.');
		sprintf(q, "|\n");
		fputs(line, f);
	}
	fflush(f);
}

/* Opens the --dump-dir file of one direction of a bridge; NULL on error. */
static FILE *
dump_open(const struct cli *c, const struct tcpproxy_bridge_info *info,
    int dir)
{
	char path[PATH_MAX], name[ADDR_NAME_MAX], *q = name;
	const char *s, *colon = strrchr(info->client_name, ':');

	/* "[::1]:40000" becomes "::1_40000": no brackets in file names. */
	for (s = info->client_name; *s != '\0'; s++)
		if (s == colon)
			*q++ = '_';
		else if (*s != '[' && *s != ']')
			*q++ = *s;
	*q = '\0';
	if (snprintf(path, sizeof(path), "%s/%lu_%s.%s", c->dump_dir,
	    info->id, name, dir == TCPPROXY_UPSTREAM ? "up" : "down") >=
	    (int)sizeof(path))
		return NULL;
	return fopen(path, "wb");
}

/* Records a chunk: --hexdump and --dump-dir.  Never changes the data. */
static enum tcpproxy_verdict
cli_data(void *user, void *bridge_data,
    const struct tcpproxy_bridge_info *info, enum tcpproxy_dir dir,
    char *data, size_t *len, size_t cap)
{
	struct cli *c = user;
	struct cli_bridge *cb = bridge_data;

	(void)cap;
	if (cb == NULL || *len == 0)	/* a last call: nothing held back */
		return TCPPROXY_PASS;
	if (c->hex != NULL)
		hexdump(c->hex, info, dir, cb->off[dir],
		    (const unsigned char *)data, *len);
	if (c->dump_dir != NULL && !cb->dump_failed) {
		if ((cb->dump[dir] == NULL &&
		    (cb->dump[dir] = dump_open(c, info, dir)) == NULL) ||
		    fwrite(data, 1, *len, cb->dump[dir]) != *len) {
			fprintf(stderr, "tcpproxy: dump id=%lu: %s\n", info->id,
			    strerror(errno));
			cb->dump_failed = 1;
		}
	}
	cb->off[dir] += *len;
	return TCPPROXY_PASS;
}

/* Releases what the hooks kept for a bridge. */
static void
cli_close(void *user, void *bridge_data,
    const struct tcpproxy_bridge_info *info)
{
	struct cli *c = user;
	struct cli_bridge *cb = bridge_data;
	int d;

	(void)info;
	if (cb == NULL)
		return;
	for (d = 0; d < 2; d++)
		if (cb->dump[d] != NULL && fclose(cb->dump[d]) != 0)
			fprintf(stderr, "tcpproxy: dump id=%lu: %s\n", info->id,
			    strerror(errno));
	if (cb->source != NULL)
		source_put(c, cb->source);
	free(cb);
}

/* ---- process setup ---- */

static void
on_signal(int sig)
{
	(void)sig;
	got_signals++;
	if (the_proxy != NULL)
		tcpproxy_stop(the_proxy);
}

/* Raises the soft descriptor limit to the hard one: best effort. */
static void
raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == -1 || rl.rlim_cur == rl.rlim_max)
		return;
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) == -1) {
#ifdef OPEN_MAX
		/* Some systems refuse an unlimited hard limit here. */
		rl.rlim_cur = OPEN_MAX;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
#endif
	}
}

/* Installs the handlers for SIGINT and SIGTERM; returns 0 or -1. */
static int
signals_catch(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_signal;	/* no SA_RESTART: waitpid sees EINTR */
	if (sigaction(SIGINT, &sa, NULL) == -1 ||
	    sigaction(SIGTERM, &sa, NULL) == -1)
		return -1;
	return 0;
}

/* Who to become after binding, for -u. */
struct identity {
	uid_t uid;
	gid_t gid;
};

/*
 * Looks up USER[:GROUP] before anything is bound, so that a typo fails
 * at once.  Exits 1 if either is unknown.
 */
static void
identity_lookup(const char *spec, struct identity *id)
{
	char user[256], *colon;
	struct passwd *pw;
	struct group *gr;

	if (strlen(spec) >= sizeof(user))
		die("cannot drop privileges: user name too long");
	strcpy(user, spec);
	if ((colon = strchr(user, ':')) != NULL)
		*colon++ = '\0';
	if ((pw = getpwnam(user)) == NULL)
		die("cannot drop privileges: unknown user '%s'", user);
	id->uid = pw->pw_uid;
	id->gid = pw->pw_gid;
	if (colon != NULL) {
		if ((gr = getgrnam(colon)) == NULL)
			die("cannot drop privileges: unknown group '%s'",
			    colon);
		id->gid = gr->gr_gid;
	}
}

/*
 * Drops root for id, after binding: groups first, then the gid, then the
 * uid, and checks that root cannot be regained.  Exits 1 on any failure:
 * better not to run than to run as root by mistake.
 */
static void
identity_assume(const struct identity *id, const char *spec)
{
	if (setgroups(1, &id->gid) == -1 || setgid(id->gid) == -1 ||
	    setuid(id->uid) == -1)
		die("cannot drop privileges to '%s': %s", spec,
		    strerror(errno));
	if (id->uid != 0 && (setuid(0) == 0 || seteuid(0) == 0))
		die("cannot drop privileges to '%s': root regained", spec);
}

static void
on_child(int sig)
{
	(void)sig;	/* only to wake sigsuspend() */
}

/* Reaps the workers that ended; returns how many, or -1 on error. */
static int
workers_reap(pid_t *pids, int n, int *rc)
{
	pid_t pid;
	int i, status, reaped = 0;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (i = 0; i < n; i++)
			if (pids[i] == pid)
				pids[i] = 0;
		reaped++;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "tcpproxy: worker %ld ended with "
			    "status %d\n", (long)pid, WIFEXITED(status) ?
			    WEXITSTATUS(status) : 128 + WTERMSIG(status));
			*rc = 1;
		}
	}
	return pid == -1 && errno != ECHILD ? -1 : reaped;
}

/*
 * Runs n workers, each a process with its own poll loop on the shared
 * listeners, and waits for them; every SIGINT/SIGTERM is passed on, so a
 * second one ends their grace period.  Returns main's exit status.
 */
static int
run_workers(struct tcpproxy *p, int n)
{
	struct sigaction sa;
	sigset_t block, old;
	pid_t *pids;
	int i, r, rc = 0, alive = 0;
	sig_atomic_t forwarded = 0;

	if ((pids = calloc((size_t)n, sizeof(*pids))) == NULL)
		die("out of memory");
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_child;
	(void)sigaction(SIGCHLD, &sa, NULL);
	/*
	 * Blocked until sigsuspend(): a signal between fork and
	 * tcpproxy_after_fork, or just before the parent waits, would be lost.
	 */
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGCHLD);
	(void)sigprocmask(SIG_BLOCK, &block, &old);
	for (i = 0; i < n; i++) {
		if ((pids[i] = fork()) == -1) {
			fprintf(stderr, "tcpproxy: fork: %s\n",
			    strerror(errno));
			got_signals++;
			rc = 1;
			break;
		}
		if (pids[i] == 0) {
			free(pids);
			sa.sa_handler = SIG_DFL;
			(void)sigaction(SIGCHLD, &sa, NULL);
			if (tcpproxy_after_fork(p, i + 1) == -1)
				die("worker %d: %s", i + 1, strerror(errno));
			(void)sigprocmask(SIG_SETMASK, &old, NULL);
			r = tcpproxy_run(p);
			if (r == -1)
				fprintf(stderr, "tcpproxy: poll: %s\n",
				    strerror(errno));
			tcpproxy_free(p);
			_exit(r == -1 ? 1 : 0);
		}
		alive++;
	}
	/* The parent only supervises: it serves nothing. */
	the_proxy = NULL;
	tcpproxy_free(p);
	while (alive > 0) {
		while (forwarded < got_signals) {
			for (i = 0; i < n; i++)
				if (pids[i] > 0)
					(void)kill(pids[i], SIGTERM);
			forwarded++;
		}
		if ((r = workers_reap(pids, n, &rc)) == -1)
			break;
		if ((alive -= r) > 0 && forwarded == got_signals)
			(void)sigsuspend(&old);
	}
	free(pids);
	return rc;
}

enum {
	OPT_GRACE = 256, OPT_DUMP_FILE, OPT_DUMP_DIR, OPT_MAX_BYTES, OPT_RATE,
	OPT_MAX_PER_SOURCE, OPT_BUSY_POLL
};

/*
 * Parses the command line into *o, which it initializes.  Returns
 * OPTIONS_RUN, OPTIONS_HELP or OPTIONS_VERSION, or -1 with a one-line
 * message naming the bad word in err (ERRLEN bytes).  It neither prints
 * nor exits, so a fuzzer can drive it; options_free() releases *o.
 */
static int
options_parse(struct options *o, int argc, char *argv[], char *err)
{
	static const struct option longopts[] = {
		{ "allow", required_argument, NULL, 'a' },
		{ "buffer-size", required_argument, NULL, 'b' },
		{ "max-clients", required_argument, NULL, 'c' },
		{ "deny", required_argument, NULL, 'd' },
		{ "half-close", no_argument, NULL, 'H' },
		{ "help", no_argument, NULL, 'h' },
		{ "idle-timeout", required_argument, NULL, 'i' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "connect-timeout", required_argument, NULL, 't' },
		{ "user", required_argument, NULL, 'u' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "version", no_argument, NULL, 'V' },
		{ "workers", required_argument, NULL, 'w' },
		{ "hexdump", no_argument, NULL, 'x' },
		{ "busy-poll", required_argument, NULL, OPT_BUSY_POLL },
		{ "dump-dir", required_argument, NULL, OPT_DUMP_DIR },
		{ "dump-file", required_argument, NULL, OPT_DUMP_FILE },
		{ "grace", required_argument, NULL, OPT_GRACE },
		{ "max-bytes", required_argument, NULL, OPT_MAX_BYTES },
		{ "max-per-source", required_argument, NULL,
		    OPT_MAX_PER_SOURCE },
		{ "rate", required_argument, NULL, OPT_RATE },
		{ NULL, 0, NULL, 0 }
	};
	struct tcpproxy_config *cfg = &o->cfg;
	struct cli *cli = &o->cli;
	unsigned long long n = 0;
	int c, rc = 0;

	memset(o, 0, sizeof(*o));
	tcpproxy_config_init(cfg);
	o->workers = 1;
	opterr = 0;
	while (rc == 0 && (c = getopt_long(argc, argv,
	    ":a:b:c:d:Hhi:qt:u:vVw:x", longopts, NULL)) != -1) {
		switch (c) {
		case 'a':
			rc = cidr_add(&cli->allow, &cli->nallow, optarg,
			    "allow", err);
			break;
		case 'b':
			rc = parse_size(optarg, "buffer size",
			    1024ULL * 1024 * 1024, &n, err);
			cfg->buffer_size = (size_t)n;
			break;
		case 'c':
			rc = parse_size(optarg, "max-clients", 1000000000ULL,
			    &n, err);
			cfg->max_clients = (unsigned long)n;
			break;
		case 'd':
			rc = cidr_add(&cli->deny, &cli->ndeny, optarg, "deny",
			    err);
			break;
		case 'H':
			cfg->half_close = 1;
			break;
		case 'h':
			return OPTIONS_HELP;
		case 'i':
			rc = parse_secs(optarg, "idle timeout",
			    &cfg->idle_timeout, err);
			break;
		case 'q':
			cfg->verbosity = TCPPROXY_LOG_ERROR;
			break;
		case 't':
			rc = parse_secs(optarg, "connect timeout",
			    &cfg->connect_timeout, err);
			break;
		case 'u':
			o->user = optarg;
			break;
		case 'v':
			cfg->verbosity = TCPPROXY_LOG_DEBUG;
			break;
		case 'V':
			return OPTIONS_VERSION;
		case 'w':
			rc = parse_size(optarg, "workers", 1024, &n, err);
			o->workers = (int)n;
			break;
		case 'x':
			o->hex = 1;
			break;
		case OPT_BUSY_POLL:
			/* Microseconds: no k, m or g. */
			if (optarg[strspn(optarg, "0123456789")] != '\0')
				rc = bad(err, "invalid busy-poll '%s': not a "
				    "number of microseconds", optarg);
			else
				rc = parse_size(optarg, "busy-poll",
				    TCPPROXY_BUSY_POLL_MAX, &n, err);
			cfg->busy_poll = (unsigned long)n;
			break;
		case OPT_DUMP_DIR:
			cli->dump_dir = optarg;
			break;
		case OPT_DUMP_FILE:
			o->dump_file = optarg;
			o->hex = 1;
			break;
		case OPT_GRACE:
			rc = parse_secs(optarg, "grace", &cfg->grace, err);
			break;
		case OPT_MAX_BYTES:
			rc = parse_size(optarg, "max-bytes", ULLONG_MAX / 2,
			    &cfg->max_bytes, err);
			break;
		case OPT_MAX_PER_SOURCE:
			rc = parse_size(optarg, "max-per-source",
			    1000000000ULL, &n, err);
			cli->max_per_source = (unsigned long)n;
			break;
		case OPT_RATE:
			rc = parse_size(optarg, "rate", ULLONG_MAX / 2,
			    &cfg->rate, err);
			break;
		case ':':
			rc = bad(err, "option '%s' needs a value",
			    argv[optind - 1]);
			break;
		default:
			if (optopt > 0 && optopt < 256)
				rc = bad(err, "unknown option '-%c'", optopt);
			else
				rc = bad(err, "unknown option '%s'",
				    argv[optind - 1]);
			break;
		}
	}
	if (rc != 0)
		return -1;
	argc -= optind;
	argv += optind;
	if (argc < 4)
		return bad(err, "missing arguments: need local_host local_port "
		    "remote_host remote_port");
	if (argc > 4)
		return bad(err, "extra argument '%s'", argv[4]);
	cfg->local_host = argv[0];
	cfg->local_port = argv[1];
	cfg->remote_host = argv[2];
	cfg->remote_port = argv[3];
	if (parse_port(argv[1], "local port", err) == -1 ||
	    parse_port(argv[3], "remote port", err) == -1)
		return -1;
	if (strtol(argv[3], NULL, 10) == 0)
		return bad(err, "invalid remote port '%s': cannot connect to "
		    "port 0", argv[3]);
	return OPTIONS_RUN;
}

/* Releases what options_parse() allocated. */
static void
options_free(struct options *o)
{
	free(o->cli.allow);
	free(o->cli.deny);
	o->cli.allow = o->cli.deny = NULL;
}

/* Opens the dump outputs the options ask for; exits 1 on failure. */
static void
dumps_open(struct options *o)
{
	struct cli *cli = &o->cli;
	struct stat st;

	if (o->dump_file != NULL &&
	    (cli->hex = fopen(o->dump_file, "w")) == NULL)
		die("cannot open dump file '%s': %s", o->dump_file,
		    strerror(errno));
	if (o->hex && cli->hex == NULL) {
		int fd = dup(STDERR_FILENO);

		/* A stream of its own, fully buffered, flushed per chunk. */
		if (fd == -1 || (cli->hex = fdopen(fd, "w")) == NULL)
			die("cannot dump to stderr: %s", strerror(errno));
	}
	if (cli->dump_dir == NULL)
		return;
	if (mkdir(cli->dump_dir, 0777) == -1 && errno != EEXIST)
		die("cannot create dump directory '%s': %s", cli->dump_dir,
		    strerror(errno));
	if (stat(cli->dump_dir, &st) == -1)
		die("cannot use dump directory '%s': %s", cli->dump_dir,
		    strerror(errno));
	if (!S_ISDIR(st.st_mode))
		die("cannot use dump directory '%s': not a directory",
		    cli->dump_dir);
	if (access(cli->dump_dir, W_OK | X_OK) == -1)
		die("cannot write to dump directory '%s': %s", cli->dump_dir,
		    strerror(errno));
}

#ifndef TCPPROXY_FUZZ
int
main(int argc, char *argv[])
{
	static struct options o;
	static struct tcpproxy_hooks hooks;	/* o.cfg.hooks points here */
	struct tcpproxy *p;
	struct sigaction ign;
	struct cli *cli = &o.cli;
	/* Set by identity_lookup; -1 fails setgid() should it ever not be. */
	struct identity id = { (uid_t)-1, (gid_t)-1 };
	char err[ERRLEN];
	int rc;

	switch (options_parse(&o, argc, argv, err)) {
	case OPTIONS_HELP:
		help();
		return 0;
	case OPTIONS_VERSION:
		printf("tcpproxy %s\n", TCPPROXY_VERSION);
		return 0;
	case OPTIONS_RUN:
		break;
	default:
		usage_error("%s", err);
	}
	dumps_open(&o);
	memset(&hooks, 0, sizeof(hooks));
	hooks.user = cli;
	if (cli->nallow || cli->ndeny || cli->max_per_source ||
	    cli->hex != NULL || cli->dump_dir != NULL) {
		hooks.on_accept = cli_accept;
		hooks.on_close = cli_close;
		o.cfg.hooks = &hooks;
	}
	/* Only a dump needs to see the data: the relay pays nothing else. */
	if (cli->hex != NULL || cli->dump_dir != NULL)
		hooks.on_data = cli_data;

	memset(&ign, 0, sizeof(ign));
	sigemptyset(&ign.sa_mask);
	ign.sa_handler = SIG_IGN;
	(void)sigaction(SIGPIPE, &ign, NULL);
	raise_fd_limit();
	if (o.user != NULL)
		identity_lookup(o.user, &id);
	if ((p = tcpproxy_create(&o.cfg, err, sizeof(err))) == NULL)
		die("%s", err);
	if (o.user != NULL)
		identity_assume(&id, o.user);
	else if (geteuid() == 0)
		fprintf(stderr, "tcpproxy: warning: running as root; "
		    "consider --user\n");
	the_proxy = p;
	if (signals_catch() == -1)
		die("sigaction: %s", strerror(errno));
	if (o.workers > 1)
		return run_workers(p, o.workers);
	rc = tcpproxy_run(p);
	if (rc == -1)
		fprintf(stderr, "tcpproxy: poll: %s\n", strerror(errno));
	the_proxy = NULL;
	tcpproxy_free(p);
	options_free(&o);
	return rc == -1 ? 1 : 0;
}
#endif /* TCPPROXY_FUZZ */

#endif /* TCPPROXY_NO_MAIN */
