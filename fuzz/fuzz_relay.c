/*
 * fuzz_relay.c - libFuzzer harness for tcpproxy's relay (library mode).
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * Each input builds a proxy from 127.0.0.1 port 0 to a listener the
 * harness owns on 127.0.0.1 port 0, then plays its bytes as events on up
 * to MAXPAIRS client/server socket pairs: connect, write (a deterministic
 * pattern per stream), read, shutdown(SHUT_WR), close, reset (SO_LINGER
 * 0), step the proxy, stop it.  Byte 0 is the configuration: half-close,
 * which hooks are set (none; on_close only; on_accept + on_close, which
 * refuses some clients; all three, with an on_data that edits, grows,
 * shrinks, drops, closes, asks for more and adds at the final call), a
 * small buffer, max-bytes, max-clients, busy polling; with max-bytes,
 * byte 1 may also turn on a 2 ms idle timeout or a server port that
 * refuses.
 *
 * Checked, all with abort() so libFuzzer reports a crash:
 *  - every byte an end receives is the next byte of what the other end
 *    sent (or, with on_data, of what the hook passed): no loss, no
 *    reordering, no duplication; the hook sees each direction's bytes in
 *    order and is given cap >= 2 * len as tcpproxy.h promises;
 *  - at the end, a pair nobody closed, reset or limited got everything;
 *    a half-close (-H) passed the EOF on and the other way kept working;
 *  - on_close runs exactly once per admitted bridge, never for a refused
 *    one, and tcpproxy_bridges() matches admitted minus closed;
 *  - after each step, the state is consistent: slots, pollfd projection
 *    (events == want(), fd -1 without interest), no empty buffer held,
 *    timer lists well linked;
 *  - after closing everything and tcpproxy_free(), the number of open
 *    descriptors (/proc/self/fd) is what it was before the input;
 *  - no ASan/UBSan report.
 * Time cannot be faked, so the idle timeout and --rate stay off and the
 * connect timeout never fires (the server always listens).  The tier
 * tunables are lowered (below) so that hot/cold polling runs too.  Nothing
 * sleeps; the final drain polls with a 1 ms timeout only while a pair
 * still waits for bytes.
 */
#define TCPPROXY_NO_MAIN
/* Hot/cold polling from 2 bridges on, cold after 3 ms: the tiers get
 * exercised with the handful of bridges an input makes. */
#define TCPPROXY_TIER_MIN 2
#define TCPPROXY_HOT_TTL 3
#include "tcpproxy.c"

#include <dirent.h>
#include <stdint.h>

#define MAXPAIRS	6
#define MAXIDS		64
#define MAXOPS		256
#define CHUNK		4096
#define MAXLOG		(1024 * 1024)

#define CHECK(x) do { if (!(x)) { \
	fprintf(stderr, "fuzz_relay: check failed at line %d: %s\n", \
	    __LINE__, #x); abort(); } } while (0)

/* Hook modes, from bits 1-2 of the config byte. */
enum { HOOKS_NONE, HOOKS_CLOSE_ONLY, HOOKS_ACCEPT, HOOKS_ALL };

/* One end of a pair, as the harness sees it. */
struct end {
	int fd;				/* -1: not there (yet) or closed */
	unsigned long long sent;	/* pattern bytes written */
	unsigned long long got;		/* bytes read and checked */
	int eof;			/* read returned 0 */
	int err;			/* read/write error seen */
	int shut;			/* we did shutdown(SHUT_WR) */
	int closed;			/* we closed or reset it */
};

/* A client, its server-side twin, and what the hook saw between them. */
struct pair {
	struct end end[2];		/* CLIENT, SERVER */
	int port;			/* the client's local port */
	int used;
	int refused;			/* on_accept said CLOSE */
	int admitted;			/* a bridge exists or existed */
	int mapped;			/* server end found */
	int hook_closed;		/* on_data said CLOSE */
	int limited;			/* max-bytes may have cut it */
	unsigned long id;		/* bridge id */
	/* on_data: bytes seen per direction and what it passed on. */
	unsigned long long seen[2];
	unsigned char *log[2];
	size_t loglen[2], logcap[2];
	unsigned long chunks;
	int final[2];			/* the final call came */
	int more[2];			/* returned MORE, call (b) due */
};

struct run {
	struct tcpproxy *p;
	struct tcpproxy_hooks hooks;
	int lfd;			/* the harness's server listener */
	int half_close, hookmode, stopped;
	int idle;			/* idle timeout on: any bridge may go */
	int dead;			/* the refusing port's socket, or -1 */
	unsigned long long max_bytes;
	unsigned long long maxstream;	/* bytes a stream may carry */
	struct pair pair[MAXPAIRS];
	int npairs;
	int orphans[64];		/* server ends of closed bridges */
	int norphans;
	unsigned char closed_id[MAXIDS + 1];
	unsigned char admitted_id[MAXIDS + 1];
	unsigned long admitted, closes;
};

static struct run R;

/* The pattern byte k of the stream that side s of pair i writes. */
static unsigned char
pat(int i, int s, unsigned long long k)
{
	unsigned long long x = k * 2654435761ULL + (unsigned)(i * 2 + s) *
	    40503ULL;

	return (unsigned char)(x ^ (x >> 13) ^ (k >> 8));
}

/* Counts this process's open descriptors. */
static int
fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (d == NULL)
		abort();
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;	/* the DIR's own descriptor */
}

static int
port_of(int fd, int peer)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if ((peer ? getpeername(fd, (struct sockaddr *)&ss, &len) :
	    getsockname(fd, (struct sockaddr *)&ss, &len)) == -1)
		return -1;
	if (ss.ss_family != AF_INET)
		return -1;
	return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static struct pair *
pair_by_port(int port)
{
	int i;

	/* Newest first: a reset client's port may be reused by a new one. */
	for (i = R.npairs - 1; i >= 0; i--)
		if (R.pair[i].used && R.pair[i].port == port)
			return &R.pair[i];
	return NULL;
}

static void
log_add(struct pair *pr, int dir, const char *data, size_t len)
{
	size_t need = pr->loglen[dir] + len;

	if (len == 0)
		return;
	CHECK(need <= MAXLOG);
	if (need > pr->logcap[dir]) {
		size_t cap = pr->logcap[dir] ? pr->logcap[dir] : 4096;
		unsigned char *nl;

		while (cap < need)
			cap *= 2;
		if ((nl = realloc(pr->log[dir], cap)) == NULL)
			abort();
		pr->log[dir] = nl;
		pr->logcap[dir] = cap;
	}
	memcpy(pr->log[dir] + pr->loglen[dir], data, len);
	pr->loglen[dir] += len;
}

/* ---- hooks ---- */

static enum tcpproxy_verdict
h_accept(void *user, const struct tcpproxy_bridge_info *info,
    void **bridge_data)
{
	struct pair *pr;
	int port;

	(void)user;
	CHECK(*bridge_data == NULL);
	CHECK(info->client != NULL && info->client->sa_family == AF_INET);
	CHECK(info->id >= 1 && info->id <= MAXIDS);
	CHECK(info->reason == TCPPROXY_REASON_NONE);
	port = ntohs(((const struct sockaddr_in *)(const void *)
	    info->client)->sin_port);
	pr = pair_by_port(port);
	/* Refuse some, by pair number: runs must be reproducible. */
	if (pr != NULL && (R.hookmode == HOOKS_ACCEPT ? (pr - R.pair) % 3 == 1 :
	    pr - R.pair == 5)) {
		pr->refused = 1;
		return TCPPROXY_CLOSE;
	}
	if (pr != NULL) {
		pr->admitted = 1;
		pr->id = info->id;
	}
	R.admitted_id[info->id] = 1;
	R.admitted++;
	*bridge_data = pr;
	return TCPPROXY_PASS;
}

static enum tcpproxy_verdict
h_data(void *user, void *bridge_data, const struct tcpproxy_bridge_info *info,
    enum tcpproxy_dir dir, char *data, size_t *len, size_t cap)
{
	struct pair *pr = bridge_data;
	int s = dir == TCPPROXY_UPSTREAM ? CLIENT : SERVER;
	int i = pr != NULL ? (int)(pr - R.pair) : 0;
	size_t k, n = *len;
	unsigned long c;

	(void)user;
	/* tcpproxy.h: "cap is always at least twice the chunk's length". */
	CHECK(cap >= 2 * n);
	if (pr == NULL)
		return TCPPROXY_PASS;
	c = ++pr->chunks;
	/* No read after the direction's final call. */
	CHECK(!pr->final[s] || n == 0);
	if (n == 0) {
		size_t add;

		if (info->final) {
			/* (a) once per direction: add held-back bytes. */
			CHECK(!pr->final[s]);
			pr->final[s] = 1;
			add = 1 + c % 5;
		} else {
			/* (b) only after MORE, once the queue drained. */
			CHECK(pr->more[s]);
			pr->more[s] = 0;
			add = 1 + c % 9;
		}
		if (add > cap)
			add = cap;
		for (k = 0; k < add; k++)
			data[k] = (char)(0xe0 + (c + k) % 16);
		*len = add;
		log_add(pr, s, data, add);
		return TCPPROXY_PASS;
	}
	CHECK(!info->final);
	/* The proxy read this direction in order. */
	for (k = 0; k < n; k++)
		CHECK((unsigned char)data[k] == pat(i, s, pr->seen[s] + k));
	pr->seen[s] += n;
	switch ((c + (unsigned long)i) % 8) {
	case 1:		/* edit in place */
		for (k = 0; k < n; k++)
			data[k] ^= 0x5a;
		break;
	case 2:		/* grow: every byte twice */
		if (2 * n <= cap) {
			for (k = n; k-- > 0; ) {
				data[2 * k + 1] = data[k];
				data[2 * k] = data[k];
			}
			*len = 2 * n;
		}
		break;
	case 3:		/* shrink */
		*len = n / 2;
		break;
	case 4:		/* drop */
		return TCPPROXY_DROP;
	case 5:
		if (c > 6 && (i & 1)) {
			pr->hook_closed = 1;
			return TCPPROXY_CLOSE;
		}
		break;
	case 6:		/* relay, and call again once drained */
		log_add(pr, s, data, *len);
		if (*len > 0)
			pr->more[s] = 1;
		return TCPPROXY_MORE;
	default:
		break;
	}
	log_add(pr, s, data, *len);
	return TCPPROXY_PASS;
}

static void
h_close(void *user, void *bridge_data,
    const struct tcpproxy_bridge_info *info)
{
	struct pair *pr = bridge_data;

	(void)user;
	CHECK(info->id >= 1 && info->id <= MAXIDS);
	CHECK(info->reason != TCPPROXY_REASON_NONE);
	CHECK(R.closed_id[info->id] == 0);
	R.closed_id[info->id] = 1;
	R.closes++;
	if (R.hooks.on_accept != NULL) {
		CHECK(R.admitted_id[info->id]);
		if (pr != NULL)
			CHECK(pr->id == info->id);
	} else {
		R.admitted_id[info->id] = 1;
		R.admitted++;
	}
}

static void
h_log(void *user, int level, const char *line)
{
	(void)user;
	CHECK(level >= TCPPROXY_LOG_ERROR && level <= TCPPROXY_LOG_DEBUG);
	CHECK(strlen(line) < 512 && strchr(line, '\n') == NULL);
}

/* ---- checks ---- */

/* Checks the proxy's internal state after a step. */
static void
check_state(void)
{
	struct tcpproxy *p = R.p;
	struct service *svc;
	size_t k;
	int t;

	CHECK(p->nbridges <= p->cap);
	CHECK(p->base == 1 + p->nlisten + p->nchecks);
	for (k = 0; k < p->nbridges; k++) {
		struct bridge *b = p->tab[k];
		int s;

		CHECK(b->slot == k);
		CHECK(b->fd[CLIENT] >= 0);
		CHECK(fcntl(b->fd[CLIENT], F_GETFD) != -1);
		CHECK(b->fd[SERVER] == -1 ||
		    fcntl(b->fd[SERVER], F_GETFD) != -1);
		/* The explicit state and what it implies. */
		CHECK(b->state <= BRIDGE_OPEN);
		CHECK((b->state == BRIDGE_WAIT_FD) == (b->timer == TIMER_FDWAIT));
		CHECK(b->state != BRIDGE_WAIT_FD || b->fd[SERVER] == -1);
		CHECK(b->state == BRIDGE_WAIT_FD || b->fd[SERVER] >= 0);
		/* A bridge points at a service holding a reference for it,
		 * and at one of that service's backends. */
		CHECK(b->svc != NULL && b->svc->refs >= 1);
		CHECK(b->be != NULL && b->be->open >= 1);
		CHECK(b->addr <= b->be->naddrs);
		for (s = CLIENT; s <= SERVER; s++) {
			struct pollfd *pfd = slot_pfd(p, k, s);
			const struct flow *f = &b->flow[s];

			CHECK(pfd->events == want(p, b, s));
			CHECK(pfd->fd == (pfd->events ? b->fd[s] : -1));
			CHECK(f->off <= f->len && f->len <= b->svc->bufsize);
			/* An attached buffer holds bytes. */
			CHECK(f->buf == NULL || f->off < f->len);
			CHECK(f->buf != NULL || (f->off == 0 && f->len == 0));
		}
		CHECK(!(flow_done(b, CLIENT) && flow_done(b, SERVER)));
	}
	for (svc = p->services; svc != NULL; svc = svc->next) {
		unsigned long open = 0;

		CHECK(svc->nspare <= TCPPROXY_SPARE_BUFFERS);
		/* Live services come first; a retired one has bridges. */
		CHECK(!svc->retired || svc->refs > 0);
		if (svc->next != NULL && svc->retired)
			CHECK(svc->next->retired);
		for (k = 0; k < p->nbridges; k++)
			open += p->tab[k]->svc == svc;
		CHECK(svc->refs == open + !svc->retired);
		for (t = TIMER_CONNECT; t <= TIMER_IDLE; t++) {
			struct bridge *b, *prev = NULL;

			for (b = svc->timers[t].head; b != NULL; b = b->next) {
				CHECK(b->timer == t && b->prev == prev &&
				    b->svc == svc);
				prev = b;
			}
			CHECK(svc->timers[t].tail == prev);
		}
	}
	for (k = 0; k < p->nlisten; k++)
		CHECK(p->lis[k].svc != NULL && !p->lis[k].svc->retired);
	CHECK(R.closes <= R.admitted);
	if (R.hooks.on_accept != NULL)
		CHECK(p->nbridges == R.admitted - R.closes);
}

/* Reads what end s of pair i has, checking every byte; returns bytes. */
static size_t
end_read(int i, int s, size_t max)
{
	struct pair *pr = &R.pair[i];
	struct end *e = &pr->end[s];
	unsigned char buf[CHUNK];
	size_t total = 0;

	while (e->fd >= 0 && !e->eof && !e->err && total < max) {
		size_t want = max - total < sizeof(buf) ? max - total :
		    sizeof(buf);
		ssize_t n = recv(e->fd, buf, want, 0);
		size_t k;

		if (n == 0) {
			e->eof = 1;
			break;
		}
		if (n < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK &&
			    errno != EINTR)
				e->err = 1;
			break;
		}
		/* Bytes at s come from !s; through the hook, from its log. */
		for (k = 0; k < (size_t)n; k++) {
			unsigned long long at = e->got + k;

			if (R.hookmode == HOOKS_ALL) {
				CHECK(at < pr->loglen[!s]);
				CHECK(buf[k] == pr->log[!s][at]);
			} else {
				CHECK(at < pr->end[!s].sent);
				CHECK(buf[k] == pat(i, !s, at));
			}
		}
		e->got += (size_t)n;
		total += (size_t)n;
	}
	return total;
}

/* Writes up to n pattern bytes from end s of pair i. */
static size_t
end_write(int i, int s, size_t n)
{
	struct end *e = &R.pair[i].end[s];
	unsigned char buf[CHUNK];
	size_t total = 0;

	if (e->sent + n > R.maxstream)
		n = e->sent < R.maxstream ? (size_t)(R.maxstream - e->sent) : 0;
	while (e->fd >= 0 && !e->shut && !e->err && total < n) {
		size_t want = n - total < sizeof(buf) ? n - total :
		    sizeof(buf), k;
		ssize_t w;

		for (k = 0; k < want; k++)
			buf[k] = pat(i, s, e->sent + k);
		w = send(e->fd, buf, want, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK &&
			    errno != EINTR)
				e->err = 1;
			break;
		}
		e->sent += (size_t)w;
		total += (size_t)w;
	}
	return total;
}

static void
end_close(int i, int s, int reset)
{
	struct end *e = &R.pair[i].end[s];

	if (e->fd < 0)
		return;
	if (reset) {
		struct linger lg;

		lg.l_onoff = 1;
		lg.l_linger = 0;
		(void)setsockopt(e->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	close(e->fd);
	e->fd = -1;
	e->closed = 1 + reset;
}

/* Accepts the proxy's pending server connections; maps them to pairs. */
static void
server_accept(void)
{
	for (;;) {
		int fd = accept(R.lfd, NULL, NULL), port, fl;
		struct pair *pr = NULL;
		size_t k;

		if (fd < 0)
			return;
		fl = fcntl(fd, F_GETFL);
		CHECK(fl != -1 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) != -1);
		port = port_of(fd, 1);
		for (k = 0; k < R.p->nbridges; k++) {
			struct bridge *b = R.p->tab[k];

			if (b->fd[SERVER] >= 0 &&
			    port_of(b->fd[SERVER], 0) == port) {
				pr = pair_by_port(port_of(b->fd[CLIENT], 1));
				break;
			}
		}
		if (pr != NULL && !pr->mapped) {
			pr->mapped = 1;
			pr->end[SERVER].fd = fd;
		} else if (R.norphans < (int)(sizeof(R.orphans) /
		    sizeof(R.orphans[0]))) {
			R.orphans[R.norphans++] = fd;
		} else {
			close(fd);
		}
	}
}

static void
step(int timeout)
{
	int rc = tcpproxy_step(R.p, timeout);

	CHECK(rc == 0 || rc == 1);
	if (rc == 0)
		CHECK(R.stopped && R.p->nbridges == 0);
	check_state();
	server_accept();
}

static void
client_connect(void)
{
	struct sockaddr_in sin;
	struct pair *pr;
	int fd, fl;

	if (R.npairs >= MAXPAIRS || R.stopped)
		return;
	pr = &R.pair[R.npairs];
	memset(pr, 0, sizeof(*pr));
	pr->end[CLIENT].fd = pr->end[SERVER].fd = -1;
	if ((fd = socket(AF_INET, SOCK_STREAM, 0)) == -1)
		abort();
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = htons((unsigned short)tcpproxy_bound_port(R.p));
	/* Blocking: on loopback the kernel completes the handshake. */
	if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1) {
		/* Out of ephemeral ports (a busy machine): not our bug. */
		if (errno == EADDRNOTAVAIL || errno == EAGAIN) {
			close(fd);
			return;
		}
		fprintf(stderr, "connect: %s\n", strerror(errno));
		abort();
	}
	fl = fcntl(fd, F_GETFL);
	CHECK(fl != -1 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) != -1);
	pr->end[CLIENT].fd = fd;
	pr->port = port_of(fd, 0);
	pr->used = 1;
	R.npairs++;
}

/* Reads everything there is on every open end; returns bytes read. */
static size_t
read_all(void)
{
	size_t n = 0;
	int i, s;

	for (i = 0; i < R.npairs; i++)
		for (s = CLIENT; s <= SERVER; s++)
			n += end_read(i, s, (size_t)-1);
	return n;
}

/* Returns whether a pair still waits for bytes it must get. */
static int
pair_pending(const struct pair *pr)
{
	int s;

	if (!pr->mapped || !pr->admitted || pr->refused || pr->hook_closed ||
	    pr->limited || R.stopped || R.idle)
		return 0;
	for (s = CLIENT; s <= SERVER; s++) {
		const struct end *e = &pr->end[s];

		if (e->closed || e->err || pr->end[!s].closed ||
		    pr->end[!s].err)
			return 0;
	}
	/* Symmetric mode, both EOFs: the first one wins, the other side's
	 * unread bytes are never read. */
	if (!R.half_close && pr->end[CLIENT].shut && pr->end[SERVER].shut)
		return 0;
	for (s = CLIENT; s <= SERVER; s++) {
		const struct end *from = &pr->end[s], *to = &pr->end[!s];

		/* Symmetric mode: an EOF either way ends the bridge. */
		if (!R.half_close && (pr->end[CLIENT].shut ||
		    pr->end[SERVER].shut) && !from->shut)
			continue;
		if (R.hookmode == HOOKS_ALL) {
			if (pr->seen[s] < from->sent ||
			    to->got < pr->loglen[s] || pr->more[s])
				return 1;
			/* The sender's EOF brings the final call. */
			if (from->shut && !pr->final[s])
				return 1;
		} else if (to->got < from->sent) {
			return 1;
		}
		if (from->shut && !to->eof)
			return 1;
	}
	return 0;
}

/* Returns a number that grows whenever a byte moves anywhere. */
static unsigned long long
progress(void)
{
	unsigned long long n = 0;
	size_t k;
	int i;

	for (i = 0; i < R.npairs; i++)
		n += R.pair[i].end[0].got + R.pair[i].end[1].got +
		    R.pair[i].end[0].eof + R.pair[i].end[1].eof;
	for (k = 0; k < R.p->nbridges; k++)
		n += R.p->tab[k]->flow[0].taken + R.p->tab[k]->flow[0].bytes +
		    R.p->tab[k]->flow[1].taken + R.p->tab[k]->flow[1].bytes;
	return n + R.p->nbridges;
}

/*
 * Polls until no pair waits for bytes; checks none was lost, i.e. that
 * nothing stalls: 50 rounds and 1 s in a row without a byte moving is a
 * stall.  (Wall time too: a cold bridge is polled only every few ms, and
 * more rarely on a loaded machine; see poll_bridges.)
 */
static void
drain(void)
{
	unsigned long long last = ~0ULL, now;
	long long moved = now_ms();
	int rounds, idle = 0, i, pending = 0;

	for (rounds = 0; rounds < 1000000; rounds++) {
		(void)read_all();
		pending = 0;
		for (i = 0; i < R.npairs; i++)
			pending |= pair_pending(&R.pair[i]);
		if (!pending)
			break;
		now = progress();
		if (now != last) {
			idle = 0;
			moved = now_ms();
		} else if (++idle >= 50 && now_ms() - moved >= 1000) {
			break;
		}
		last = now;
		step(idle > 2 ? 1 : 0);
	}
	if (pending) {
		for (i = 0; i < R.npairs; i++) {
			struct pair *pr = &R.pair[i];

			if (!pair_pending(pr))
				continue;
			fprintf(stderr, "pair %d: c sent %llu got %llu eof %d "
			    "shut %d; s sent %llu got %llu eof %d shut %d; "
			    "seen %llu/%llu log %zu/%zu\n", i,
			    pr->end[0].sent, pr->end[0].got, pr->end[0].eof,
			    pr->end[0].shut, pr->end[1].sent, pr->end[1].got,
			    pr->end[1].eof, pr->end[1].shut, pr->seen[0],
			    pr->seen[1], pr->loglen[0], pr->loglen[1]);
		}
	}
	CHECK(!pending);
}

/* ---- the fuzz target ---- */

int LLVMFuzzerInitialize(int *, char ***);
int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	signal(SIGPIPE, SIG_IGN);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const size_t bufsizes[] = { 1, 2, 3, 7, 16, 100, 4096, 0 };
	struct tcpproxy_config cfg;
	struct sockaddr_in sin;
	socklen_t slen = sizeof(sin);
	char port[16], err[256];
	unsigned char conf;
	int fds, one = 1, i, s, rounds, ops = 0;
	unsigned long nids;
	size_t pos;

	if (size < 1)
		return 0;
	fds = fd_count();
	memset(&R, 0, sizeof(R));
	R.dead = -1;
	conf = data[0];
	R.half_close = conf & 1;
	R.hookmode = (conf >> 1) & 3;

	/* The server listener. */
	R.lfd = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(R.lfd >= 0);
	(void)setsockopt(R.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(R.lfd, (struct sockaddr *)&sin, sizeof(sin)) == -1) {
		/* No free port on a busy machine: skip the input. */
		CHECK(errno == EADDRINUSE || errno == EADDRNOTAVAIL);
		close(R.lfd);
		return 0;
	}
	CHECK(listen(R.lfd, 64) == 0);
	CHECK(getsockname(R.lfd, (struct sockaddr *)&sin, &slen) == 0);
	CHECK(fcntl(R.lfd, F_SETFL, O_NONBLOCK) != -1);
	snprintf(port, sizeof(port), "%d", ntohs(sin.sin_port));

	tcpproxy_config_init(&cfg);
	cfg.local_host = "127.0.0.1";
	cfg.local_port = "0";
	cfg.remote_host = "127.0.0.1";
	cfg.remote_port = port;
	cfg.half_close = R.half_close;
	cfg.connect_timeout = 30;
	cfg.idle_timeout = 0;
	cfg.grace = 0;
	cfg.verbosity = TCPPROXY_LOG_DEBUG;
	cfg.log = h_log;
	R.maxstream = 256 * 1024;
	if (conf & 8) {
		cfg.buffer_size = bufsizes[(conf >> 5) & 7];
		/* Tiny buffers move a byte or two per step: keep runs fast. */
		if (cfg.buffer_size != 0 && cfg.buffer_size < 4096)
			R.maxstream = 8 * cfg.buffer_size + 512;
	}
	if ((conf & 0x10) && size > 1) {
		R.max_bytes = 1 + data[1] * 37ULL;
		cfg.max_bytes = R.max_bytes;
		/* Byte 1, bit 7: a 2 ms idle timeout; bit 6: the server
		 * refuses (a bound port nobody listens on). */
		if (data[1] & 0x80) {
			cfg.idle_timeout = 0.002;
			R.idle = 1;
		}
		if (data[1] & 0x40) {
			slen = sizeof(sin);
			R.dead = socket(AF_INET, SOCK_STREAM, 0);
			CHECK(R.dead >= 0);
			sin.sin_port = 0;
			if (bind(R.dead, (struct sockaddr *)&sin,
			    sizeof(sin)) == -1 || getsockname(R.dead,
			    (struct sockaddr *)&sin, &slen) == -1) {
				close(R.dead);
				close(R.lfd);
				return 0;
			}
			snprintf(port, sizeof(port), "%d",
			    ntohs(sin.sin_port));
		}
	}
	if ((conf & 0x18) == 0x18)
		cfg.max_clients = 1 + (conf >> 6);
	/* Without bit 3, bit 5 turns on --busy-poll. */
	if ((conf & 0x28) == 0x20)
		cfg.busy_poll = 100;
	memset(&R.hooks, 0, sizeof(R.hooks));
	if (R.hookmode != HOOKS_NONE) {
		R.hooks.on_close = h_close;
		if (R.hookmode >= HOOKS_ACCEPT)
			R.hooks.on_accept = h_accept;
		if (R.hookmode == HOOKS_ALL)
			R.hooks.on_data = h_data;
		cfg.hooks = &R.hooks;
	}
	R.p = tcpproxy_create(&cfg, err, sizeof(err));
	if (R.p == NULL) {
		if (errno == EADDRINUSE || errno == EADDRNOTAVAIL) {
			close(R.lfd);
			if (R.dead >= 0)
				close(R.dead);
			return 0;
		}
		fprintf(stderr, "tcpproxy_create: %s\n", err);
		abort();
	}

	for (pos = 1; pos < size && ops < MAXOPS; ops++) {
		unsigned char op = data[pos++], arg = pos < size ? data[pos] : 0;
		struct pair *pr;

		i = R.npairs > 0 ? (op >> 4) % R.npairs : 0;
		s = (op >> 3) & 1;
		pr = &R.pair[i];
		switch (op & 7) {
		case 0:
			if ((op >> 3) & 1) {
				client_connect();
			} else {
				pos++;
				step(0);
				if (arg & 1)
					step(0);
			}
			break;
		case 1:		/* write */
			pos++;
			if (R.npairs > 0)
				end_write(i, s, arg & 0x80 ? (size_t)(arg &
				    0x7f) * 1024 + 1 : (size_t)arg + 1);
			break;
		case 2:		/* read */
			pos++;
			if (R.npairs > 0)
				end_read(i, s, (size_t)arg * 64 + 1);
			break;
		case 3:		/* shutdown(SHUT_WR) */
			if (R.npairs > 0 && pr->end[s].fd >= 0 &&
			    !pr->end[s].shut) {
				(void)shutdown(pr->end[s].fd, SHUT_WR);
				pr->end[s].shut = 1;
			}
			break;
		case 4:		/* close */
		case 5:		/* reset */
			if (R.npairs > 0)
				end_close(i, s, (op & 7) == 5);
			break;
		case 6:		/* a few steps */
			step(0);
			step(0);
			step(0);
			break;
		case 7:
			if ((op >> 3) == 0x1f && !R.stopped) {
				tcpproxy_stop(R.p);
				R.stopped = 1;
			} else {
				step(0);
			}
			break;
		}
	}
	if (R.max_bytes)
		for (i = 0; i < R.npairs; i++)
			if (R.pair[i].end[CLIENT].sent >= R.max_bytes)
				R.pair[i].limited = 1;
	drain();

	/* Close everything and let the proxy notice. */
	for (i = 0; i < R.npairs; i++)
		for (s = CLIENT; s <= SERVER; s++)
			end_close(i, s, 0);
	for (i = 0; i < R.norphans; i++)
		close(R.orphans[i]);
	R.norphans = 0;
	for (rounds = 0; rounds < 2000 && R.p->nbridges > 0; rounds++) {
		step(rounds < 50 ? 0 : 1);
		/* Server ends accepted just now, of late clients too. */
		for (i = 0; i < R.npairs; i++)
			end_close(i, SERVER, 0);
		for (i = 0; i < R.norphans; i++)
			close(R.orphans[i]);
		R.norphans = 0;
	}
	if (R.p->nbridges > 0) {
		size_t k;

		for (k = 0; k < R.p->nbridges; k++) {
			struct bridge *b = R.p->tab[k];

			fprintf(stderr, "stuck bridge id=%lu state=%d "
			    "rd=%d,%d wr=%d,%d q=%zu,%zu\n", b->id,
			    b->state, b->rd[0], b->rd[1], b->wr[0],
			    b->wr[1], b->flow[0].len - b->flow[0].off,
			    b->flow[1].len - b->flow[1].off);
		}
	}
	CHECK(R.p->nbridges == 0);
	nids = R.p->next_id;
	tcpproxy_free(R.p);
	/* Every admitted bridge was closed exactly once. */
	if (R.hookmode != HOOKS_NONE) {
		CHECK(R.closes == R.admitted);
		for (i = 1; i <= MAXIDS; i++)
			CHECK(R.closed_id[i] == R.admitted_id[i]);
		/* Without on_accept every accepted client is admitted. */
		if (R.hookmode == HOOKS_CLOSE_ONLY)
			CHECK(R.closes == nids);
	}
	close(R.lfd);
	if (R.dead >= 0)
		close(R.dead);
	for (i = 0; i < MAXPAIRS; i++) {
		free(R.pair[i].log[0]);
		free(R.pair[i].log[1]);
	}
	if (fd_count() != fds) {
		char cmd[64];

		snprintf(cmd, sizeof(cmd), "ls -l /proc/%ld/fd >&2",
		    (long)getpid());
		fprintf(stderr, "descriptors: %d before, %d after\n", fds,
		    fd_count());
		(void)system(cmd);
		abort();
	}
	return 0;
}
