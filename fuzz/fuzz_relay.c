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
 * refuses.  Bits 6-7 also pick the splice mode (shared with what they
 * mean for the buffer size and max-clients): 0 the default pool, 1
 * max_pipes 2, 2 no_splice, 3 max_pipes 1.  SIGPIPE is ignored, as the
 * command line does, so splice() is used; a small buffer makes bulk
 * flows (a read that fills the buffer) easy to come by.
 *
 * A connect op with bit 5 set makes a small pair: its ends get small
 * receive buffers (32 KB) and the proxy's sockets for it small send
 * buffers (4 KB), so that what the proxy sends them backs up and its
 * buffers and pipes stay full across steps, as with a slow reader
 * (loopback's buffers would otherwise take more than a stream carries).
 *
 * Op 0xef reloads the same config with the splice mode of the next
 * byte (its low two bits, as above): pipes in use drain, a lowered cap
 * holds once they have.
 *
 * Op 0xf7 reloads: tcpproxy_reload() with a config made from the one
 * running and the next byte (see reload()): the same (as the simple case
 * or as services[]), half-close flipped, a second service on 127.0.0.1
 * port 0 to the same server added or removed (listed first or last), the
 * first service renamed (its record retires while its bridges go on), the
 * other buffer size; or one that must fail (a name used twice, a backend
 * that is the proxy's own listener, an invalid port, a listen address in
 * use), after which everything must be as it was.  A connect op picks
 * one of the listeners; bridges keep the half-close of the service that
 * accepted them, which the harness reads from the bridge table.
 *
 * Checked, all with abort() so libFuzzer reports a crash:
 *  - every byte an end receives is the next byte of what the other end
 *    sent (or, with on_data, of what the hook passed): no loss, no
 *    reordering, no duplication; the hook sees each direction's bytes in
 *    order and is given cap >= 2 * len as tcpproxy.h promises;
 *  - at the end, a pair nobody closed, reset or limited got everything;
 *    a half-close (-H) passed the EOF on and the other way kept working;
 *  - a reload that succeeds keeps the listeners whose written address is
 *    unchanged (same descriptor, same port), binds and closes exactly the
 *    others (the descriptor count moves by the difference), leaves the new
 *    services live and the old ones retired; one that fails (or comes
 *    after the stop was seen) changes nothing, descriptors included;
 *  - on_close runs exactly once per admitted bridge, never for a refused
 *    one, and tcpproxy_bridges() matches admitted minus closed;
 *  - after each step, the state is consistent: slots, pollfd projection
 *    (events == want(), fd -1 without interest), no empty buffer held,
 *    timer lists well linked, a bridge's service holds a reference for
 *    it, live services before retired ones, listeners on live services;
 *  - and the splice pool is: a flow holds a buffer or a pipe, never
 *    both; a held pipe holds bytes (len > 0), exactly as many as the
 *    kernel says (FIONREAD), within its capacity (64 KB at least), and
 *    belongs to one flow of an open bridge that no stage needs to see
 *    (no hook, no --max-bytes for the client's flow); every entry is held or on the
 *    free list, once; a free pipe is empty (one that held bytes when its
 *    receiver died was closed, not put back); pipes_made counts the made
 *    entries, descriptors open and close-on-exec; no pipe is made while
 *    no bridge is open, nor beyond max_pipes unless all made are held
 *    (a reload lowered the cap), nor ever with hooks or with splicing off
 *    all along; p->splice follows no_splice;
 *  - after closing everything and tcpproxy_free(), the number of open
 *    descriptors (/proc/self/fd) is what it was before the input;
 *  - no ASan/UBSan report.
 * FUZZ_RELAY_DEBUG=1 in the environment prints what each reload did and,
 * per input, how many bytes went through pipes (st->spliced, summed over
 * the services at each step, the most seen).
 * Time cannot be faked, so --rate stays off, the idle timeout is off or
 * 2 ms (when any bridge may go) and the connect timeout never fires (the
 * server always listens).  The tier
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

#include <sys/ioctl.h>

#include <dirent.h>
#include <stdint.h>

#define MAXPAIRS	6
#define MAXIDS		64
#define MAXOPS		256
#define CHUNK		4096
#define MAXLOG		(1024 * 1024)

/* The port of an address of the engine's. */
static int
addr_port(const struct addr *a)
{
	return sa_port((const struct sockaddr *)&a->ss);
}

#define CHECK(x) do { if (!(x)) { \
	fprintf(stderr, "fuzz_relay: check failed at line %d: %s\n", \
	    __LINE__, #x); abort(); } } while (0)

/* Hook modes, from bits 1-2 of the config byte. */
enum { HOOKS_NONE, HOOKS_CLOSE_ONLY, HOOKS_ACCEPT, HOOKS_ALL };

/* Splice modes, from bits 6-7 of the config byte or op 0xef's byte. */
enum { SPLICE_DEFAULT, SPLICE_TWO, SPLICE_OFF, SPLICE_ONE };

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
	int small;			/* small socket buffers all along */
	int shrunk[2];			/* the proxy's fd[s] given a small one */
	int half_close;			/* of the service that took it */
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
	int splice_mode;		/* SPLICE_*, now */
	int spliceable;			/* splicing was on at some point */
	unsigned long long spliced;	/* most st->spliced seen, summed */
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
	unsigned char noted_id[MAXIDS + 1];	/* its pair got its service */
	unsigned long admitted, closes;
	/* Reloads: the config the proxy was made from, and what runs now. */
	struct tcpproxy_config base;
	char port[16];			/* the server's port, as written */
	int lport;			/* the harness's listener's port */
	size_t altbuf;			/* the other buffer size */
	struct reload_state {
		int half_close;		/* of the first service */
		int gen;		/* its name: 0 is the default */
		int second;		/* a second service */
		int second_half_close;
		int second_first;	/* listed before the first */
		int altbuf;		/* the other buffer size */
		int splice;		/* SPLICE_* */
	} cur;
	struct tcpproxy_service svcs[2];
	struct tcpproxy_backend backends[2];
	char name[32], badport[16];
};

static struct run R;
static int debug = -1;		/* FUZZ_RELAY_DEBUG=1: say what reloads did */

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

/* Returns the bytes in pipe descriptor fd, as the kernel counts them. */
static size_t
pipe_bytes(int fd)
{
	int n = -1;

	CHECK(ioctl(fd, FIONREAD, &n) == 0 && n >= 0);
	return (size_t)n;
}

/* Applies splice mode m to cfg. */
static void
splice_config(struct tcpproxy_config *cfg, int m)
{
	cfg->no_splice = m == SPLICE_OFF;
	cfg->max_pipes = m == SPLICE_ONE ? 1 : m == SPLICE_TWO ? 2 :
	    TCPPROXY_MAX_PIPES;
}

/* Checks the splice pool against the flows that hold its pipes. */
static void
check_pipes(void)
{
	struct tcpproxy *p = R.p;
	static unsigned char held[TCPPROXY_MAX_PIPES];
	static unsigned char onfree[TCPPROXY_MAX_PIPES];
	const struct state *sts[16];
	struct service *svc;
	size_t k, made = 0, nheld = 0, nfree = 0, freemade = 0, nst = 0, j;
	unsigned long long spliced = 0;
	unsigned int e;

	CHECK(p->splice == (R.splice_mode != SPLICE_OFF));
	CHECK(p->npipes <= TCPPROXY_MAX_PIPES);
	CHECK((p->npipes == 0) == (p->pipes == NULL));
	memset(held, 0, sizeof(held));
	memset(onfree, 0, sizeof(onfree));
	for (k = 0; k < p->npipes; k++) {
		const struct pipebuf *pb = &p->pipes[k];

		CHECK((pb->fd[0] == -1) == (pb->fd[1] == -1));
		if (pb->fd[0] == -1)
			continue;
		made++;
		CHECK(fcntl(pb->fd[0], F_GETFD) & FD_CLOEXEC);
		CHECK(fcntl(pb->fd[1], F_GETFD) & FD_CLOEXEC);
		CHECK(fcntl(pb->fd[0], F_GETFL) & O_NONBLOCK);
	}
	CHECK(made == p->pipes_made);
	for (e = p->pipe_free; e != 0; e = p->pipes[e - 1].next) {
		const struct pipebuf *pb;

		CHECK(e <= p->npipes && !onfree[e - 1]);
		onfree[e - 1] = 1;
		nfree++;
		pb = &p->pipes[e - 1];
		CHECK(pb->len == 0);
		if (pb->fd[0] != -1) {
			freemade++;
			/* No bytes of a bridge that is gone. */
			CHECK(pipe_bytes(pb->fd[0]) == 0);
		}
	}
	for (k = 0; k < p->nbridges; k++) {
		const struct bridge *b = p->tab[k];
		int s;

		for (s = CLIENT; s <= SERVER; s++) {
			const struct flow *f = &b->flow[s];
			const struct pipebuf *pb;

			if (f->pipe == 0)
				continue;
			CHECK(f->pipe <= p->npipes);
			CHECK(!onfree[f->pipe - 1] && !held[f->pipe - 1]);
			held[f->pipe - 1] = 1;
			nheld++;
			pb = &p->pipes[f->pipe - 1];
			/* A buffer or a pipe, never both; never an empty
			 * pipe, and the kernel agrees on what it holds. */
			CHECK(f->buf == NULL && f->off == 0 && f->len == 0);
			CHECK(pb->fd[0] != -1 && pb->len > 0);
			CHECK(pb->len <= pb->cap && pb->cap >= 65536);
			CHECK(pipe_bytes(pb->fd[0]) == pb->len);
			/* Only a flow no stage needs to see has one. */
			CHECK(b->state == BRIDGE_OPEN && !hooked(p) &&
			    b->fx == NULL && b->svc->rate == 0 &&
			    (s == SERVER || b->svc->max_bytes == 0));
			CHECK(R.spliceable);
		}
	}
	CHECK(nheld + nfree == p->npipes);
	/* Free pipes are closed when the last bridge goes, and are kept
	 * above the cap only while every made one is held. */
	CHECK(p->nbridges > 0 || p->pipes_made == 0);
	CHECK(p->pipes_made <= p->cfg.max_pipes || freemade == 0);
	if (!R.spliceable || hooked(p))
		CHECK(p->npipes == 0);
	/* How much went through pipes, as the stats count it. */
	for (svc = p->services; svc != NULL; svc = svc->next) {
		for (j = 0; j < nst && sts[j] != svc->st; j++)
			;
		if (j < nst || nst == sizeof(sts) / sizeof(sts[0]))
			continue;
		sts[nst++] = svc->st;
		spliced += svc->st->spliced;
	}
	if (spliced > R.spliced)
		R.spliced = spliced;
}

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
		CHECK(b->state <= BRIDGE_PREAMBLE);
		CHECK((b->state == BRIDGE_WAIT_FD) == (b->timer == TIMER_FDWAIT));
		CHECK((b->state == BRIDGE_QUEUED) == (b->timer == TIMER_QUEUE));
		/* A server socket exactly while connecting or open. */
		CHECK((b->state == BRIDGE_CONNECTING ||
		    b->state == BRIDGE_OPEN) == (b->fd[SERVER] >= 0));
		/* A bridge points at a service holding a reference for it,
		 * and, once it has a place, at one of its backends. */
		CHECK(b->svc != NULL && b->svc->refs >= 1);
		if (b->state == BRIDGE_QUEUED || b->state == BRIDGE_PREAMBLE) {
			CHECK(b->be == NULL);
		} else {
			CHECK(b->be != NULL && b->be->open >= 1);
			CHECK(b->addr <= b->be->naddrs);
		}
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
		for (t = TIMER_CONNECT; t < TIMER_FDWAIT; t++) {
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
	check_pipes();
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

/*
 * Shrinks fd's receive (opt SO_RCVBUF) or send buffer.  Loopback's send
 * buffers grow to a megabyte at once, more than a stream carries here,
 * so a small pair's ends and the proxy's sockets for it are all shrunk:
 * what the proxy sends them backs up, and its buffers and pipes stay
 * full across steps, as with a slow reader.  (A receive buffer of a few
 * KB would stall loopback's 64 KB segments for the persist timer's
 * hundreds of ms: 32 KB does not.)
 */
static void
small_buf(int fd, int opt)
{
	int n = opt == SO_RCVBUF ? 32768 : 4096;

	CHECK(setsockopt(fd, SOL_SOCKET, opt, &n, sizeof(n)) == 0);
}

/* Shrinks the send buffers of the proxy's sockets of small pairs. */
static void
bridges_shrink(void)
{
	size_t k;
	int s, port;

	for (k = 0; k < R.p->nbridges; k++) {
		struct bridge *b = R.p->tab[k];
		struct pair *pr;

		if ((port = port_of(b->fd[CLIENT], 1)) == -1 ||
		    (pr = pair_by_port(port)) == NULL || !pr->small)
			continue;
		for (s = CLIENT; s <= SERVER; s++)
			if (b->fd[s] >= 0 && b->fd[s] != pr->shrunk[s]) {
				small_buf(b->fd[s], SO_SNDBUF);
				pr->shrunk[s] = b->fd[s];
			}
	}
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
			if (pr->small)
				small_buf(fd, SO_RCVBUF);
			pr->end[SERVER].fd = fd;
		} else if (R.norphans < (int)(sizeof(R.orphans) /
		    sizeof(R.orphans[0]))) {
			R.orphans[R.norphans++] = fd;
		} else {
			close(fd);
		}
	}
}

/*
 * Gives each pair the half-close of the service that accepted it: a
 * reload may have changed it between the connect and the accept.
 */
static void
bridges_note(void)
{
	size_t k;

	for (k = 0; k < R.p->nbridges; k++) {
		struct bridge *b = R.p->tab[k];
		struct pair *pr;
		int port;

		if (b->id > MAXIDS || R.noted_id[b->id])
			continue;
		if ((port = port_of(b->fd[CLIENT], 1)) == -1) {
			R.noted_id[b->id] = 1;	/* reset: nothing pending */
			continue;
		}
		if ((pr = pair_by_port(port)) != NULL) {
			pr->half_close = b->svc->half_close;
			R.noted_id[b->id] = 1;
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
	bridges_note();
	server_accept();
	bridges_shrink();
}

/* Connects a new pair's client to listener k (modulo their number);
 * bit 1 of k gives the pair's ends small receive buffers. */
static void
client_connect(unsigned int k)
{
	struct sockaddr_in sin;
	struct listener *l;
	struct pair *pr;
	int fd, fl;

	if (R.npairs >= MAXPAIRS || R.stopped)
		return;
	CHECK(R.p->nlisten >= 1);
	l = &R.p->lis[k % R.p->nlisten];
	CHECK(l->fd >= 0 && addr_port(&l->a) > 0);
	pr = &R.pair[R.npairs];
	memset(pr, 0, sizeof(*pr));
	pr->end[CLIENT].fd = pr->end[SERVER].fd = -1;
	if ((fd = socket(AF_INET, SOCK_STREAM, 0)) == -1)
		abort();
	pr->small = (k >> 1) & 1;
	pr->shrunk[CLIENT] = pr->shrunk[SERVER] = -1;
	if (pr->small)
		small_buf(fd, SO_RCVBUF);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = htons((unsigned short)addr_port(&l->a));
	/* Blocking: on loopback the kernel completes the handshake. */
	if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1) {
		int e = errno;

		/* A signal (libFuzzer's timer): the connect goes on. */
		if (e == EINTR) {
			struct pollfd w;
			socklen_t elen = sizeof(e);

			w.fd = fd;
			w.events = POLLOUT;
			while (poll(&w, 1, -1) == -1)
				CHECK(errno == EINTR);
			CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &e,
			    &elen) == 0);
		}
		/* Out of ephemeral ports (a busy machine): not our bug. */
		if (e == EADDRNOTAVAIL || e == EAGAIN) {
			close(fd);
			return;
		}
		if (e != 0) {
			fprintf(stderr, "connect: %s\n", strerror(e));
			abort();
		}
	}
	fl = fcntl(fd, F_GETFL);
	CHECK(fl != -1 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) != -1);
	pr->end[CLIENT].fd = fd;
	pr->port = port_of(fd, 0);
	pr->used = 1;
	/* Until the bridge shows which service took it. */
	pr->half_close = l->svc->half_close;
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
	if (!pr->half_close && pr->end[CLIENT].shut && pr->end[SERVER].shut)
		return 0;
	for (s = CLIENT; s <= SERVER; s++) {
		const struct end *from = &pr->end[s], *to = &pr->end[!s];

		/* Symmetric mode: an EOF either way ends the bridge. */
		if (!pr->half_close && (pr->end[CLIENT].shut ||
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

/* ---- reloads ---- */

/* Fills service k of the reload config: 127.0.0.1 port 0 to the server. */
static struct tcpproxy_service *
reload_service(int k, const char *name, int half_close, int altbuf)
{
	struct tcpproxy_service *svc = &R.svcs[k];

	tcpproxy_service_init(svc);
	svc->name = name;
	svc->local_host = "127.0.0.1";
	svc->local_port = "0";
	R.backends[k].host = "127.0.0.1";
	R.backends[k].port = R.port;
	svc->backends = &R.backends[k];
	svc->nbackends = 1;
	svc->half_close = half_close;
	svc->connect_timeout = R.base.connect_timeout;
	svc->idle_timeout = R.base.idle_timeout;
	svc->buffer_size = altbuf ? R.altbuf : R.base.buffer_size;
	svc->max_bytes = R.base.max_bytes;
	svc->max_clients = R.base.max_clients;
	return svc;
}

/* What the proxy holds, to compare across a reload that must fail. */
struct snapshot {
	size_t nlisten, base, nlive;
	int fd[4], port[4];
	struct service *lsvc[4], *svc[16];
	size_t nsvc;
	int fds;
	size_t made;			/* pipes made */
	int freemade;			/* free ones: a reload closes them */
};

static void
snapshot_take(struct snapshot *sn)
{
	struct service *svc;
	size_t k;

	memset(sn, 0, sizeof(*sn));
	sn->nlisten = R.p->nlisten;
	sn->base = R.p->base;
	sn->nlive = R.p->nlive;
	CHECK(sn->nlisten <= 4);
	for (k = 0; k < sn->nlisten; k++) {
		sn->fd[k] = R.p->lis[k].fd;
		sn->port[k] = addr_port(&R.p->lis[k].a);
		sn->lsvc[k] = R.p->lis[k].svc;
	}
	for (svc = R.p->services; svc != NULL; svc = svc->next) {
		CHECK(sn->nsvc < 16);
		sn->svc[sn->nsvc++] = svc;
	}
	sn->fds = fd_count();
	sn->made = R.p->pipes_made;
	for (k = R.p->pipe_free; k != 0; k = R.p->pipes[k - 1].next)
		sn->freemade += R.p->pipes[k - 1].fd[0] != -1;
}

/* Checks that the proxy is exactly as in sn. */
static void
snapshot_same(const struct snapshot *sn)
{
	struct snapshot now;
	size_t k;

	snapshot_take(&now);
	CHECK(now.nlisten == sn->nlisten && now.base == sn->base &&
	    now.nlive == sn->nlive && now.nsvc == sn->nsvc &&
	    now.fds == sn->fds);
	for (k = 0; k < sn->nlisten; k++) {
		CHECK(now.fd[k] == sn->fd[k] && now.port[k] == sn->port[k] &&
		    now.lsvc[k] == sn->lsvc[k]);
		CHECK(!R.p->lis[k].kept);
		CHECK(sn->fd[k] == -1 || fcntl(sn->fd[k], F_GETFD) != -1);
	}
	for (k = 0; k < sn->nsvc; k++)
		CHECK(now.svc[k] == sn->svc[k]);
}

/*
 * Reloads the running proxy, in splice mode splice (SPLICE_*), with a
 * config the bits of arg make from the one running:
 *   bit 0  flip the half-close of the first service;
 *   bit 1  add or remove a second service (127.0.0.1 port 0, same server);
 *   bit 2  rename the first service (its record retires);
 *   bit 3  flip the half-close of the second service;
 *   bit 4  list the second service before the first;
 *   bit 5  switch the buffer size to the other one;
 *   bit 6  make the reload fail, the way bits 0-1 say: 0 a service name
 *          used twice, 1 a backend that is the proxy's first listener
 *          (a loop), 2 an invalid backend port, 3 a second service on
 *          the harness's own listening port (in use);
 *   bit 7  give it as the simple case (cfg.local_port...) when it is
 *          one service with its default name.
 * A reload that must fail, or comes after the proxy has seen the stop,
 * must leave everything as it was.
 */
static void
reload(unsigned char arg, int splice)
{
	struct reload_state ns = R.cur;
	struct tcpproxy_config cfg = R.base;
	struct tcpproxy_service *first, *second = NULL;
	struct snapshot before;
	char err[256];
	int fail = arg & 0x40, kind = arg & 3, rc, stopping = R.p->stopping;
	size_t k, j, kept = 0, n;

	if (arg & 1)
		ns.half_close = !ns.half_close;
	if (arg & 2)
		ns.second = !ns.second;
	if (arg & 4)
		ns.gen++;
	if (arg & 8)
		ns.second_half_close = !ns.second_half_close;
	if (arg & 0x10)
		ns.second_first = !ns.second_first;
	if (arg & 0x20)
		ns.altbuf = !ns.altbuf;
	ns.splice = splice;
	splice_config(&cfg, splice);
	snprintf(R.name, sizeof(R.name), "first-%d", ns.gen);
	first = reload_service(0, ns.gen > 0 ? R.name : NULL,
	    ns.half_close, ns.altbuf);
	if (ns.second || (fail && kind != 2))
		second = reload_service(1, "second", ns.second_half_close,
		    ns.altbuf);
	if (fail) {
		switch (kind) {
		case 0:		/* the first's name, written by both (a
				 * default name would yield: "#2") */
			if (ns.gen == 0)
				first->name = "127.0.0.1:0";
			second->name = first->name;
			break;
		case 1:		/* relays to the proxy itself */
			snprintf(R.badport, sizeof(R.badport), "%d",
			    addr_port(&R.p->lis[0].a));
			R.backends[1].port = R.badport;
			break;
		case 2:
			R.backends[0].port = "0";
			break;
		case 3:		/* the harness's listener has it */
			snprintf(R.badport, sizeof(R.badport), "%d", R.lport);
			second->local_port = R.badport;
			break;
		}
	}
	cfg.local_host = cfg.local_port = NULL;
	cfg.remote_host = cfg.remote_port = NULL;
	cfg.services = R.svcs;
	cfg.nservices = second != NULL ? 2 : 1;
	if (second != NULL && ns.second_first) {
		struct tcpproxy_service t = R.svcs[0];

		R.svcs[0] = R.svcs[1];
		R.svcs[1] = t;
	}
	if ((arg & 0x80) && second == NULL && first->name == NULL) {
		/* The simple case: the fields the proxy was made from. */
		cfg.services = NULL;
		cfg.nservices = 0;
		cfg.local_host = first->local_host;
		cfg.local_port = first->local_port;
		cfg.remote_host = first->backends[0].host;
		cfg.remote_port = first->backends[0].port;
		cfg.half_close = first->half_close;
		cfg.buffer_size = first->buffer_size;
	}
	snapshot_take(&before);
	errno = 0;
	err[0] = '\0';
	rc = tcpproxy_reload(R.p, &cfg, err, sizeof(err));
	CHECK(rc == 0 || rc == -1);
	if (debug)
		fprintf(stderr, "reload 0x%02x: %s (%zu listeners, %zu bridges, "
		    "pipes made %zu, %d free, then %zu)\n", arg,
		    rc == 0 ? "ok" : err, R.p->nlisten, R.p->nbridges,
		    before.made, before.freemade, R.p->pipes_made);
	if (rc == -1) {
		CHECK(err[0] != '\0' && memchr(err, '\0', sizeof(err)));
		if (!fail && !stopping) {
			/* No port to bind on a busy machine: not our bug. */
			if (errno != EADDRINUSE && errno != EADDRNOTAVAIL) {
				fprintf(stderr, "tcpproxy_reload: %s\n", err);
				abort();
			}
		}
		if (stopping)
			CHECK(errno == ECANCELED);
		snapshot_same(&before);
		check_state();
		return;
	}
	CHECK(!fail && !stopping);
	R.cur = ns;
	R.splice_mode = ns.splice;
	R.spliceable |= ns.splice != SPLICE_OFF;
	/* One listener a service (127.0.0.1 is one address); those with
	 * the same written address kept, with their ports; the others
	 * bound or closed, and nothing else. */
	n = 1 + (size_t)ns.second;
	CHECK(R.p->nlisten == n && R.p->nlive == n);
	for (k = 0; k < n; k++) {
		CHECK(R.p->lis[k].fd >= 0 && !R.p->lis[k].kept);
		CHECK(!R.p->lis[k].svc->retired);
		CHECK(R.p->lis[k].svc->half_close == (R.p->lis[k].svc->name[0]
		    == 's' ? ns.second_half_close : ns.half_close));
		for (j = 0; j < before.nlisten; j++)
			if (before.fd[j] == R.p->lis[k].fd) {
				CHECK(before.port[j] ==
				    addr_port(&R.p->lis[k].a));
				kept++;
			}
	}
	if (before.fd[0] >= 0)
		CHECK(kept == (n < before.nlisten ? n : before.nlisten));
	CHECK(fd_count() == before.fds + (int)n - (int)before.nlisten -
	    2 * before.freemade);
	/* The services in order, live ones first. */
	{
		struct service *svc = R.p->services;

		for (k = 0; k < n; k++, svc = svc->next) {
			CHECK(svc != NULL && !svc->retired);
			CHECK(strcmp(svc->name, second != NULL &&
			    (k == 0) == (ns.second_first != 0) ? "second" :
			    ns.gen > 0 ? R.name : "127.0.0.1:0") == 0);
		}
		for (; svc != NULL; svc = svc->next)
			CHECK(svc->retired && svc->refs > 0);
	}
	check_state();
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
	if (debug == -1)
		debug = getenv("FUZZ_RELAY_DEBUG") != NULL;
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
	R.lport = ntohs(sin.sin_port);

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
	R.splice_mode = conf >> 6;
	R.spliceable = R.splice_mode != SPLICE_OFF;
	splice_config(&cfg, R.splice_mode);
	memset(&R.hooks, 0, sizeof(R.hooks));
	if (R.hookmode != HOOKS_NONE) {
		R.hooks.on_close = h_close;
		if (R.hookmode >= HOOKS_ACCEPT)
			R.hooks.on_accept = h_accept;
		if (R.hookmode == HOOKS_ALL)
			R.hooks.on_data = h_data;
		cfg.hooks = &R.hooks;
	}
	/* Reloads start from this config. */
	R.base = cfg;
	snprintf(R.port, sizeof(R.port), "%s", port);
	R.altbuf = cfg.buffer_size != 0 && cfg.buffer_size < 4096 ? 4096 : 1000;
	R.cur.half_close = R.half_close;
	R.cur.splice = R.splice_mode;
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
				client_connect(op >> 4);
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
			} else if ((op >> 3) == 0x1d) {
				pos++;
				reload(0, arg & 3);
			} else if ((op >> 3) == 0x1e) {
				pos++;
				reload(arg, R.cur.splice);
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
	if (debug)
		fprintf(stderr, "spliced %llu bytes\n", R.spliced);
	if (!R.spliceable || R.hookmode == HOOKS_ALL)
		CHECK(R.spliced == 0);
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
