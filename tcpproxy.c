/*
 * tcpproxy - a small, fast, portable TCP proxy.
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * Design.
 *
 * One poll() loop serves every connection of every service.  The records:
 *
 *   service   one forwarding rule: its name, backends and balancing
 *             policy, and every setting its bridges read (timeouts,
 *             limits, half-close, rate, access lists); its own timer
 *             lists and buffer free list.  A reload builds new service
 *             records and retires the old ones: a retired service accepts
 *             nothing and is freed when its last bridge closes, so an open
 *             bridge keeps the settings it was accepted under.
 *   state     what the records of one service name share across reloads:
 *             counters, the round-robin cursor, the per-source table.
 *   backend   one server of a service, as written, with its resolved
 *             addresses and its health (down until, failures in a row) and
 *             counters; shared by the records of a service across reloads
 *             while its name is kept, so health carries over.
 *   listener  a bound socket and the service it feeds.  A reload hands a
 *             listener whose address is unchanged to the new service of
 *             that address, descriptor and all: no client is refused.
 *             With -w where the kernel balances, a TCP listener is one
 *             socket per worker (see below).
 *   bridge    an accepted client paired with one connection to a backend.
 *             Its state is explicit: QUEUED (held by max_clients, no
 *             server socket yet), PREAMBLE (reading a PROXY header or a
 *             TLS ClientHello), WAIT_FD (no descriptor for the server
 *             socket yet), CONNECTING, OPEN.
 *
 * A service may want to read something of the client's before it picks
 * a backend: a PROXY protocol header (--accept-proxy), whose addresses
 * then stand for the client's in the admit stage and the logs, or a TLS
 * ClientHello (--sni), whose server name picks a route.  In PREAMBLE the
 * client's bytes go into its own buffer (never MSG_PEEK, which would spin
 * under level-triggered poll on a partial header), bounded by the buffer
 * and by the preamble timeout; the parsers check every length against the
 * bytes at hand and are fuzzed (fuzz_preamble).  What follows a header is
 * payload, and the ClientHello itself is relayed unchanged.  A header to
 * send (--send-proxy) is put in front of the client's bytes when a
 * connect succeeds, so a retry sends a fresh one; the client's buffer
 * keeps room for it until then, and its bytes are not counted as the
 * client's.
 *
 * A bridge has two sides, fd[CLIENT] and fd[SERVER], and two flows:
 * flow[s] holds the bytes read from side s that still wait to be written
 * to side !s.  All relay code is written once for a side s and its peer
 * !s.
 *
 * Connecting is planned per bridge: the policy picks where its order of
 * backends starts (the next in turn, a hash of the client's address, the
 * first, or the one with fewest bridges), then each backend of the order
 * is tried once, its addresses in turn, usable (up) ones first and then
 * those marked down, since a down mark is a hint, not a refusal.  A
 * failed connect moves on before any byte reached a server, so what the
 * client sent meanwhile goes to the one that answers.  Failures in a row
 * mark a backend down for a while; then one client probes it.  Active
 * checks, when asked for, are nonblocking connects with pollfds of their
 * own after the listeners'.
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
 * one side from the bridge's state, and the pollfd array is a projection
 * of the bridge table kept up to date by bridge_settle.  The array is
 * compact (slot 0 the wake pipe, then the listeners, then the health
 * checks, then two slots per bridge in table order), and a closed
 * bridge's slots are filled by the last bridge, so per-round work is
 * proportional to the descriptors and nothing more.  A side with no
 * interest is polled as fd -1, so a hung-up socket we cannot act on yet
 * never makes poll() spin.
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
 * Buffers are fixed-size (the service's buffer_size per direction) but
 * attached to a flow only while it holds bytes: a flow takes one from its
 * service's small free list when it reads and gives it back when it
 * drains, so an idle bridge costs only its record, and the hot path never
 * calls malloc.
 *
 * Where splice() exists (Linux), a bulk flow (a read filled its buffer)
 * whose bytes no stage needs to see (no data hook, fault, rate, byte
 * cap) is moved through a kernel pipe instead: its pages go from socket
 * to socket uncopied.  A flow holds a pipe in place of a buffer, never
 * both, and only while bytes are in it, so the close rules see a pipe's
 * bytes as queued bytes like any others; pipes come from an engine-wide
 * pool (--max-pipes), made on demand while descriptors are plentiful and
 * closed when the last bridge ends.  A flow that gets none is copied.
 * A pipe holds 256 KB (or the buffer size, if bigger): fewer, larger
 * splices cost less per byte, and it is as bounded as a buffer.
 *
 * Timeouts are uniform per kind within a service, so intrusive lists
 * ordered by last activity give each service's next deadline in O(1):
 * connecting bridges (connect timeout, per address tried), established
 * ones (idle timeout), and clients held by max_clients in the order they
 * came (queue timeout).  A held client is accepted, so that its wait can
 * be timed and its early bytes read, at most TCPPROXY_QUEUE_MAX per
 * service (the rest wait in the listen queue, untimed), and the first
 * one takes the place a bridge of its service leaves; without a queue
 * timeout they all wait in the listen queue.  Bridges whose client was
 * accepted but whose server socket could not be made for want of a
 * descriptor wait on one engine-wide list, first come first served, for
 * a bridge to close (at most their connect timeout), rather than have
 * their client dropped.
 * Flows paused by --rate sit on an unordered list, walked only while some
 * flow is paused, and health checks keep their next time on their
 * backend.  The next of these deadlines is found by a walk over the
 * services, cheap next to a poll() of their listeners.  Faults' deadlines
 * (a delayed chunk, a slice's gap, a held EOF, a reset's time) are many
 * and not uniform, so each bridge with faults has one entry, its
 * earliest, in a binary min-heap, whose top poll() waits for.  Times are
 * monotonic milliseconds, but for the busy-poll and cold-sweep pacing,
 * in microseconds.
 *
 * Faults (--fault, and the control socket's add) are stages a bridge of
 * a faulty service passes through at four points of the relay: room (how
 * much may be read: stall, rate, close=N's cap), chunk (what was read
 * becomes: drop, corrupt, and when it may go: delay), release (how much
 * may be written now: held chunks, slices) and end (slowclose, and the
 * one-shot faults checked as a bridge settles).  Each point is one test
 * of b->fx, so a service without faults pays that test and nothing more.
 * Which faults act on a bridge is decided once, when it meets them, from
 * a generator of our own seeded by --seed: the same seed and traffic give
 * the same faults on any libc.  The control socket is served by the same
 * poll loop, with pollfds after the health checks'; a "wait" is answered
 * at the end of the first round in which its condition holds.
 *
 * Every input speaks one grammar: the command line, a config file line
 * (exactly the words one would type after tcpproxy) and the library's
 * parser share one table of options (opts[]) and one rule parser.
 * Validation happens in the library, once; the program around it acts
 * on signals (SIGHUP re-parses and calls tcpproxy_reload; with -w the
 * parent reloads, forks a new generation of workers on its listeners and
 * lets the old ones drain, since a worker alone could not bind what is
 * new), and writes the pid file, the dumps and rinetd's log.
 *
 * With -w N where the kernel spreads the clients of a port over the
 * sockets bound to it (REUSEPORT, Linux), the parent binds N sockets for
 * each TCP address and keeps them all, and worker w accepts on the w-th
 * only (tcpproxy_after_fork): who gets a client is the kernel's hash of
 * its address, not whichever worker wakes first, as with one shared
 * socket.  Closing a listening socket resets the clients queued on it,
 * so none is closed while its address is served: worker w of a new
 * generation, or one started again after worker w ended, takes socket w
 * again.  The price: a worker at its -c limit or out of descriptors
 * leaves the clients hashed to its socket waiting in its queue, which
 * the others would have taken from a shared one.  Unix sockets, and
 * systems where the option does not balance, keep one socket that the
 * workers share; so do workers beyond the sockets a descriptor limit let
 * the parent bind.
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
#include <sys/stat.h>
#include <sys/un.h>
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
#include <strings.h>
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
#ifndef TCPPROXY_DOWN_TIME
#define TCPPROXY_DOWN_TIME 10.0		/* seconds a failed backend rests */
#endif
#ifndef TCPPROXY_PROXY_TIMEOUT
#define TCPPROXY_PROXY_TIMEOUT 5.0	/* seconds for a PROXY header */
#endif
#ifndef TCPPROXY_KEEPALIVE_IDLE
#define TCPPROXY_KEEPALIVE_IDLE 60.0	/* seconds idle before a probe */
#endif
#ifndef TCPPROXY_PREAMBLE_BUFFER
#define TCPPROXY_PREAMBLE_BUFFER 1024	/* bytes, at least, with PROXY/SNI */
#endif
#ifndef TCPPROXY_QUEUE_MAX
#define TCPPROXY_QUEUE_MAX 1024		/* clients held by max-clients */
#endif
#ifndef TCPPROXY_CTL_MAX
#define TCPPROXY_CTL_MAX 8		/* control clients at once */
#endif
#ifndef TCPPROXY_CTL_LINE
#define TCPPROXY_CTL_LINE 1024		/* bytes of a control line */
#endif
#ifndef TCPPROXY_CTL_BATCH
#define TCPPROXY_CTL_BATCH 64		/* lines of a control batch */
#endif
#ifndef TCPPROXY_CTL_OUT_MAX
#define TCPPROXY_CTL_OUT_MAX (4 * 1024 * 1024)	/* bytes of a reply */
#endif
#ifndef TCPPROXY_WAIT_TIMEOUT
#define TCPPROXY_WAIT_TIMEOUT 30000	/* ms a control wait lasts */
#endif
#ifndef TCPPROXY_MAX_PIPES
#define TCPPROXY_MAX_PIPES 64		/* pipes for splice(), per process */
#endif
#ifndef TCPPROXY_PIPE_SIZE
#define TCPPROXY_PIPE_SIZE (256 * 1024)	/* bytes a pipe holds, at least */
#endif
#ifndef TCPPROXY_NOTE_INTERVAL
#define TCPPROXY_NOTE_INTERVAL 60000	/* ms between repeated warnings */
#endif
#ifndef TCPPROXY_RESPAWN
#define TCPPROXY_RESPAWN 1000		/* ms between starts of a worker */
#endif

/* ---- portability ---- */

/*
 * Every platform difference is decided in this block, by a feature test.
 * Building with -DTCPPROXY_PORTABLE forces the portable fallback of each
 * (CI runs the whole suite so), so that the code the BSDs and macOS run
 * is compiled and tested on Linux too.
 */

/*
 * A send() to a closed peer must not raise SIGPIPE: per call where
 * MSG_NOSIGNAL exists, per socket where SO_NOSIGPIPE does.  With neither,
 * the program must ignore SIGPIPE (the command line does).
 */
#if defined(MSG_NOSIGNAL) && !defined(TCPPROXY_PORTABLE)
#define SEND_FLAGS MSG_NOSIGNAL
#define NOSIGPIPE 0
#define FEATURE_NOSIGNAL " msg-nosignal"
#elif defined(SO_NOSIGPIPE) && !defined(TCPPROXY_PORTABLE)
#define SEND_FLAGS 0
#define NOSIGPIPE SO_NOSIGPIPE
#define FEATURE_NOSIGNAL " so-nosigpipe"
#else
#define SEND_FLAGS 0
#define NOSIGPIPE 0
#define FEATURE_NOSIGNAL ""
#endif

/*
 * Where accept4() and SOCK_NONBLOCK | SOCK_CLOEXEC exist (Linux, the
 * BSDs, POSIX.1-2024), a socket is made ready by the call that creates
 * it, which saves three fcntl() calls per descriptor, six per bridge.
 * Strict POSIX.1-2008 headers may hide accept4(), so it is declared here.
 */
#if defined(SOCK_NONBLOCK) && defined(SOCK_CLOEXEC) && \
    !defined(TCPPROXY_PORTABLE)
#define SOCK_FLAGS (SOCK_NONBLOCK | SOCK_CLOEXEC)
int accept4(int, struct sockaddr *, socklen_t *, int);
#define accept_ready(fd, sa, len) accept4((fd), (sa), (len), SOCK_FLAGS)
#define FEATURE_ACCEPT4 " accept4"
#else
#define SOCK_FLAGS 0
#define accept_ready(fd, sa, len) accept((fd), (sa), (len))
#define FEATURE_ACCEPT4 ""
#endif

/*
 * TCP keepalive's knobs: the idle time before the first probe is
 * TCP_KEEPIDLE (Linux, the BSDs) or TCP_KEEPALIVE (macOS); the probe
 * interval and count are TCP_KEEPINTVL and TCP_KEEPCNT where they exist.
 * Without them, SO_KEEPALIVE alone uses the system's times.
 */
#ifndef TCPPROXY_PORTABLE
#if defined(TCP_KEEPIDLE)
#define KEEPALIVE_IDLE TCP_KEEPIDLE
#elif defined(TCP_KEEPALIVE)
#define KEEPALIVE_IDLE TCP_KEEPALIVE
#endif
#ifdef TCP_KEEPINTVL
#define KEEPALIVE_INTVL TCP_KEEPINTVL
#endif
#ifdef TCP_KEEPCNT
#define KEEPALIVE_CNT TCP_KEEPCNT
#endif
#endif
#ifdef KEEPALIVE_IDLE
#define FEATURE_KEEPALIVE " keepalive-idle"
#else
#define FEATURE_KEEPALIVE ""
#endif

/*
 * Linux gives an accepted socket its listener's TCP_NODELAY, and its
 * poll() reports a failed connect with POLLERR or POLLHUP, so POLLOUT
 * alone says a connect succeeded: each saves a system call per
 * connection.  Elsewhere, a setsockopt() per accepted socket and a
 * getsockopt(SO_ERROR) per connect.
 */
#if defined(__linux__) && !defined(TCPPROXY_PORTABLE)
#define NODELAY_INHERITED 1
#define CONNECT_POLL_TELLS 1
#define FEATURE_LINUX_TCP " nodelay-inherited connect-poll"
#else
#define NODELAY_INHERITED 0
#define CONNECT_POLL_TELLS 0
#define FEATURE_LINUX_TCP ""
#endif

/*
 * Linux's splice() moves socket pages into a pipe and from the pipe to
 * another socket without copying them through user space.  Strict
 * POSIX.1-2008 headers hide it, pipe2() and its flags (_GNU_SOURCE), so
 * they are declared here; elsewhere the copying relay is all there is.
 */
#if defined(__linux__) && !defined(TCPPROXY_PORTABLE)
#define HAVE_SPLICE 1
#define FEATURE_SPLICE " splice"
ssize_t splice(int, off_t *, int, off_t *, size_t, unsigned int);
int pipe2(int[2], int);
#ifndef SPLICE_F_MOVE
#define SPLICE_F_MOVE 1
#endif
#ifndef SPLICE_F_NONBLOCK
#define SPLICE_F_NONBLOCK 2
#endif
#ifndef F_SETPIPE_SZ
#define F_SETPIPE_SZ 1031
#endif
#ifndef F_GETPIPE_SZ
#define F_GETPIPE_SZ 1032
#endif
#else
#define HAVE_SPLICE 0
#define FEATURE_SPLICE ""
/* Never called: without HAVE_SPLICE, no flow takes a pipe. */
#define splice(in, ino, out, outo, len, fl) (errno = ENOSYS, (ssize_t)-1)
#define pipe2(fds, fl) (errno = ENOSYS, -1)
#define SPLICE_F_MOVE 0
#define SPLICE_F_NONBLOCK 0
#define F_SETPIPE_SZ 0
#define F_GETPIPE_SZ 0
#endif

/*
 * Sockets bound to one port with SO_REUSEPORT share its clients on Linux
 * (3.9 on): the kernel spreads them by a hash of their addresses, so -w
 * gives each worker a listening socket of its own (see listener_twin)
 * and no worker's wake-ups decide who gets the next client.  On the BSDs
 * and macOS the option lets sockets share a port but one of them gets
 * every client, so there, and with TCPPROXY_PORTABLE, the workers share
 * one socket.  REUSEPORT is the option, or 0 where none balances.
 */
#if defined(__linux__) && !defined(TCPPROXY_PORTABLE) && \
    !defined(SO_REUSEPORT) && (defined(__x86_64__) || defined(__i386__) || \
    defined(__aarch64__) || defined(__arm__) || defined(__riscv) || \
    defined(__powerpc__) || defined(__s390__))
/* glibc shows it only beyond POSIX; 15 where asm-generic's values hold. */
#define SO_REUSEPORT 15
#endif
#if defined(__linux__) && !defined(TCPPROXY_PORTABLE) && defined(SO_REUSEPORT)
#define REUSEPORT SO_REUSEPORT
#define FEATURE_REUSEPORT " reuseport"
#else
#define REUSEPORT 0
#define FEATURE_REUSEPORT ""
#endif

/* What this build takes of the platform, for -V. */
#define FEATURES FEATURE_NOSIGNAL FEATURE_ACCEPT4 FEATURE_KEEPALIVE \
    FEATURE_LINUX_TCP FEATURE_SPLICE FEATURE_REUSEPORT

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
enum { TIMER_CONNECT = 0, TIMER_IDLE, TIMER_QUEUE, TIMER_PREAMBLE,
    TIMER_FDWAIT, TIMER_NONE };
enum { ACCEPT_ON = 0, ACCEPT_NOFD, ACCEPT_OFF };
enum { MORE_NONE = 0, MORE_DRAINED, MORE_FINAL };

/*
 * The state of a bridge.  QUEUED: accepted while its service had
 * max_clients bridges; it waits on its service's TIMER_QUEUE list, not
 * counted in st->open.  PREAMBLE: reading the client's PROXY header or
 * TLS ClientHello before any backend is chosen.  WAIT_FD: no descriptor
 * was left for its server socket; it waits on p->fdwait.  CONNECTING: a
 * connect to an address of a backend is under way.  OPEN: both sides
 * relay.
 */
enum { BRIDGE_QUEUED = 0, BRIDGE_WAIT_FD, BRIDGE_CONNECTING, BRIDGE_OPEN,
    BRIDGE_PREAMBLE };

/*
 * Flags of a bridge: what PREAMBLE still waits for (a PROXY header, a
 * ClientHello), whether the admit stage let it in (on_close is due) and
 * whether its open line was logged (its close line is due).
 */
enum { B_PROXY = 1, B_SNI = 2, B_ADMITTED = 4, B_OPENED = 8, B_HANG = 16 };

#define ADDR_NAME_MAX (INET6_ADDRSTRLEN + 10)	/* "[addr]:65535" */
#define KEY_LEN 17			/* family (4 or 6), 16 address bytes */
#define SOURCE_BUCKETS 256

struct flow {
	char *buf;			/* NULL while empty */
	size_t off, len;		/* queued bytes are buf[off..len) */
	unsigned long long bytes;	/* delivered to the other side */
	unsigned long long taken;	/* read from this side */
	double tokens;			/* --rate: bytes it may read now */
	long long stamp;		/* --rate: when tokens was computed */
	long long resume;		/* --rate: paused until then; 0: not */
	unsigned char more;		/* MORE_*: a hook call due once drained */
	unsigned char bulk;		/* BULK_*: may it go through a pipe */
	unsigned int pipe;		/* p->pipes index + 1 of the pipe that
					 * holds its bytes; 0: none */
};

/*
 * Whether a flow has shown it is a bulk flow (a read filled its whole
 * buffer), so that splice() is worth a pipe, or splice() failed on its
 * descriptors.
 */
enum { BULK_NO = 0, BULK_YES, BULK_NEVER };

/*
 * A pipe of the splice pool.  A flow holds one only while bytes are in
 * it: bytes the proxy accepted, like a buffer's.  An unused pipe waits on
 * the free list, made or not (fd -1).
 */
struct pipebuf {
	int fd[2];			/* read end, write end; -1: not made */
	size_t len;			/* bytes in it */
	size_t cap;			/* what it holds, as far as we know */
	int full;			/* a splice into it found no room */
	unsigned int next;		/* free list: index + 1; 0: the end */
};

/* A resolved socket address and its name for logs. */
struct addr {
	struct sockaddr_storage ss;
	socklen_t len;
	char name[ADDR_NAME_MAX];
};

/* An address block of an access list, or one of rinetd's patterns. */
struct acl {
	unsigned char key[KEY_LEN];	/* CIDR: family, then address */
	unsigned int bits;
	char *glob;			/* a pattern ("10.0.*"), or NULL */
};

/* Bridges open per client address, for max_per_source. */
struct source {
	struct source *next;
	unsigned char key[KEY_LEN];
	unsigned long count;
};

/*
 * One server of a service.  A backend record is shared by the records of
 * a service across reloads while its name and the service's are kept, so
 * its health and counters carry over; refs counts the services using it.
 */
struct backend {
	unsigned long refs;
	char *host, *port;		/* as written */
	char *name;			/* "HOST:PORT" as written */
	struct addr *addrs;		/* resolved, each tried in turn */
	size_t naddrs;
	int down;			/* marked down until down_until */
	int probing;			/* a client is probing it */
	unsigned long fails;		/* failed connects in a row */
	long long down_until, down_since;	/* ms */
	unsigned long open;		/* bridges assigned to it */
	unsigned long long total, failed, bytes[2];
	int check_fd;			/* active health check, or -1 */
	size_t check_addr;		/* the address it checks */
	long long check_at;		/* ms: next check, or its deadline */
	size_t check_slot;		/* its pollfd, when checked */
};

/*
 * What the records of one service share across reloads (by name): its
 * counters, the round-robin cursor and the per-source table, so a reload
 * neither resets stats nor lets a client past --max-per-source.
 */
struct state {
	unsigned long refs;
	char *name;
	unsigned long open;
	unsigned long queued;		/* clients held by max_clients */
	unsigned long long total, refused, failed, bytes[2];
	unsigned long long spliced;	/* bytes delivered through pipes */
	size_t rr;
	int full;			/* stopped accepting at max_clients */
	struct source **sources;	/* SOURCE_BUCKETS, or NULL */
};

struct timer_list {
	struct bridge *head, *tail;
	long long timeout;		/* ms; 0: list unused */
};

/*
 * One forwarding rule and every setting its bridges read.  A service
 * replaced by a reload is retired: it accepts no more and is freed when
 * the last of its bridges closes (refs counts them, plus one while live).
 */
struct service {
	struct service *next;		/* every service, retired ones too */
	unsigned long refs;
	int retired;
	struct state *st;
	char *name, *where;
	char *local_host, *local_port;	/* as written */
	char tag[96];			/* " service=NAME", or "" */
	struct backend **backends;
	size_t nbackends;
	struct addr source;		/* --source; len 0: none */
	struct acl *acl;		/* allow, then deny */
	size_t nallow, ndeny;
	enum tcpproxy_balance balance;
	unsigned long max_clients, max_per_source, fails;
	long long down_time, health_check;	/* ms */
	int half_close;
	unsigned long long max_bytes, rate;
	double burst;			/* --rate: token bucket size */
	size_t bufsize;
	int send_proxy;			/* TCPPROXY_PROXY_* */
	int accept_proxy;
	struct acl *trusted;		/* --proxy-from */
	size_t ntrusted;
	size_t nown;			/* backends[0..nown): its own */
	char **routes;			/* --sni patterns; route i goes to
					 * backends[nown + i] */
	size_t nroutes;
	int keepalive;			/* seconds idle before probes; 0 */
	unsigned int socket_mode;
	struct fault *faults;		/* --fault and the control socket's */
	int down;			/* DOWN_* */
	struct timer_list timers[TIMER_FDWAIT];	/* connect, idle, queue,
						 * preamble */
	char **spare;			/* free buffers of bufsize */
	size_t nspare;
};

/*
 * The addresses a client's PROXY header gave: the client's, the one it
 * connected to, and the peer that sent the header (via=).
 */
struct origin {
	struct sockaddr_storage src, dst;
	socklen_t srclen;
	char via[ADDR_NAME_MAX];
};

/* The actions of faults (--fault), in the order of fault_actions[]. */
enum {
	F_DELAY, F_TTFB, F_RATE, F_SLICE, F_CLOSE, F_HALFCLOSE, F_RESET,
	F_TIMEOUT, F_STALL, F_DROP, F_CORRUPT, F_SLOWCLOSE, F_CONNECT_DELAY,
	F_NACTIONS
};

#define FAULT_MARKS 16			/* delayed chunks held per flow */
#define FAULT_MAX 16			/* faults acting on one bridge */
#define NO_SLOT ((size_t)-1)

/*
 * One fault of a service, as parsed from its spec.  Bridges that it
 * applies to hold a reference; a deleted fault is dead (it acts no more)
 * and freed with the last bridge.
 */
struct fault {
	struct fault *next;
	unsigned long refs;
	int dead;
	int action;			/* F_* */
	unsigned char dirs;		/* bit 1 << s: it acts on flow[s] */
	double p;			/* per bridge, decided once */
	unsigned long conn_lo, conn_hi;	/* which bridges, by number */
	int after_time;			/* after= is ms, not bytes */
	unsigned long long after;
	long long for_ms;		/* then it is lifted; 0: never */
	long long t_ms, jitter_ms, gap_ms;	/* the action's times */
	unsigned long long n;		/* the action's bytes or offset */
	double prob;			/* corrupt=p=P */
	unsigned long fired;		/* times it acted (lines logged) */
	unsigned long long key;		/* hash of its name: random choices */
	int named;			/* name= given, not made up */
	char name[40];
	char spec[256];			/* as given, for list */
};

/* What one fault does to one bridge. */
struct bfault {
	struct fault *f;
	unsigned char on;		/* p and conn= chose this bridge */
	unsigned char done;		/* a one-shot fault has acted */
	unsigned char acted;		/* bit 1 << s: its first act logged */
	long long started[2];		/* ms it began on flow[s]; 0: not */
	double tokens[2];		/* rate= */
	long long stamp[2];
	long long next_at[2];		/* slice gap= */
};

/* A delayed chunk of a flow: the bytes up to end go at ms at. */
struct mark {
	/* cppcheck-suppress unusedStructMember ; read as marks[s][k].end */
	unsigned long long end;
	/* cppcheck-suppress unusedStructMember ; read as marks[s][k].at */
	long long at;
};

/* The fault state of a bridge of a service with faults. */
struct faults {
	unsigned long nth;		/* its number in its service, from 1 */
	size_t n;			/* f[0..n) */
	long long due;			/* its next deadline; LLONG_MAX: none */
	size_t hidx;			/* its heap slot, or NO_SLOT */
	unsigned long long queued[2];	/* bytes ever queued in flow[s] */
	unsigned long long released[2];	/* of those, free to go */
	unsigned long long chunks[2];
	struct mark marks[2][FAULT_MARKS];
	size_t mhead[2], mlen[2];
	long long eof_at[2];		/* slowclose: EOF from s held till */
	long long connect_at;		/* connect-delay: connect then */
	size_t cap;			/* room in f[] */
	struct bfault f[];		/* grown as faults are added */
};

/* How a service is down (the control socket's down command). */
enum { DOWN_NONE, DOWN_REFUSE, DOWN_HANG, DOWN_RESET, DOWN_TIMEOUT,
    DOWN_NMODES };

/* A client of the control socket. */
struct ctl {
	int fd;				/* -1: a free slot */
	char in[TCPPROXY_CTL_LINE + 1];
	size_t inlen;
	int eof;			/* it sent all it will */
	char *out;			/* the reply not yet written */
	size_t outlen, outoff, outcap;
	int batch;			/* lines since "begin", or -1 */
	char *lines[TCPPROXY_CTL_BATCH];
	char batchbuf[16 * 1024];
	size_t nbatch;
	/* While a batch is checked: the names its earlier lines add and
	 * delete (a name "*" deletes all), per service. */
	struct {
		const struct service *svc;
		char name[40];
		int added;
	} pend[TCPPROXY_CTL_BATCH];
	int npend;
	char wait[128];			/* a wait's condition, or "" */
	long long wait_until;		/* ms */
	int reload;			/* a reload to do, then answer */
};

/*
 * A bound socket and the service it feeds.  With -w where REUSEPORT
 * balances, a TCP listener is one socket per worker, fd and its twins,
 * until tcpproxy_after_fork() leaves a worker its own (listener_pick).
 */
struct listener {
	int fd;
	struct service *svc;
	struct addr a;
	int *twins;			/* more sockets bound to a, or NULL */
	size_t ntwins;
	int kept;			/* reload: claimed by a new service */
	int fresh;			/* bound by the last switch */
	pid_t owner;			/* a Unix socket's creator removes it */
	int burst;			/* clients come faster than rounds */
	unsigned long served;		/* the round it last accepted in */
};

struct bridge {
	struct bridge *prev, *next;	/* timer list, ordered by last */
	struct bridge *tprev, *tnext;	/* throttled list (--rate) */
	size_t slot;			/* index in the bridge table */
	short rev[2];			/* what poll() reported this round */
	long long active;		/* ms of the last I/O, for hot/cold */
	int fd[2];
	unsigned char rd[2], wr[2];
	unsigned char state;		/* BRIDGE_* */
	unsigned char timer;		/* TIMER_*: which list holds it */
	unsigned char throttled;	/* on the throttled list */
	unsigned char probe;		/* it probes a down backend */
	unsigned char flags;		/* B_* */
	unsigned short hdr;		/* PROXY header bytes queued upstream */
	unsigned short route;		/* its --sni route + 1, or 0 */
	struct origin *origin;		/* a PROXY header's addresses, or NULL */
	struct faults *fx;		/* its faults, or NULL: none */
	enum tcpproxy_reason reason;	/* first cause of the end */
	int error;
	struct service *svc;		/* the service it was accepted by */
	struct backend *be;		/* the backend it is on, or NULL */
	size_t start;			/* where its policy order begins */
	size_t addr;			/* the address of be it is on */
	struct source *src;		/* counted in max_per_source */
	long long start_ms, last;	/* ms, monotonic */
	struct flow flow[2];
	unsigned long id;
	unsigned long nth;		/* its number in its service, from 1 */
	void *hook_data;
	unsigned char key[KEY_LEN];	/* the client's address */
	char client[ADDR_NAME_MAX];
	char server[ADDR_NAME_MAX];	/* the address last tried */
	unsigned char tried[];		/* a bit per backend of svc */
};

struct tcpproxy {
	struct tcpproxy_config cfg;	/* engine-wide settings only */
	struct service *services;	/* live first, as configured */
	struct listener *lis;
	size_t nlisten;
	size_t nchecks;			/* backends with health checks */
	size_t base;			/* pollfds before the bridges' */
	int wake[2];			/* self-pipe for stop, drain, wake */
	struct pollfd *pfd;		/* wake, listeners, checks, bridges */
	struct bridge **tab;		/* bridges; tab[k]->slot == k */
	size_t nbridges, cap;
	size_t nhot;			/* tab[0..nhot) are hot */
	struct bridge **ready;		/* bridges with events this round */
	size_t cursor;			/* next cold slot to poll */
	long long busy_until;		/* us; poll without waiting till then */
	long long next_scan;		/* us; next poll of a cold slice */
	long long slice_period;		/* us; a slice and its pause, > 0 */
	struct timer_list fdwait;	/* bridges waiting for a descriptor */
	int fd_freed;			/* a descriptor may be free for them */
	int queue_due;			/* a held client may have a place */
	int hinted;			/* the -H hint was logged */
	struct bridge *throttled;	/* bridges with a paused flow */
	long long now;			/* ms, updated after each poll */
	unsigned long rounds;		/* poll rounds so far */
	unsigned long next_id;
	unsigned long nlive;		/* services not retired */
	int accepting;			/* ACCEPT_* */
	long long accept_retry;		/* ms; when ACCEPT_NOFD */
	long long noted_full, noted_nofd;	/* last warnings, ms */
	int stopping;			/* stop requests seen */
	int draining;			/* tcpproxy_drain: no grace limit */
	char worker[24];		/* " worker=N" in logs, or "" */
	long long grace_end;		/* ms */
	unsigned int seed;		/* jitter for health checks */
	unsigned long long fault_seed;	/* --seed */
	struct bridge **heap;		/* fault deadlines, a min-heap */
	size_t nheap, heapcap;
	int ctl_fd;			/* the control socket, or -1 */
	size_t ctl_slot;		/* its pollfd; its clients' follow */
	struct addr ctl_addr;
	pid_t ctl_owner;
	struct ctl ctls[TCPPROXY_CTL_MAX];
	int splice;			/* splice() may be used (--no-splice) */
	struct pipebuf *pipes;		/* the splice pool, of npipes */
	size_t npipes;			/* its size; grows to cfg.max_pipes */
	size_t pipes_made;		/* pipes whose descriptors are open */
	unsigned int pipe_free;		/* free list: index + 1; 0: empty */
	long fd_max;			/* RLIMIT_NOFILE at start; 0: none */
};

/* ---- prototypes ---- */
static void bridge_close(struct tcpproxy *, struct bridge *);
static int bridge_settle(struct tcpproxy *, struct bridge *);
static void flow_drain(struct tcpproxy *, struct bridge *, int);
static void listeners_update(struct tcpproxy *);
static void accept_pause(struct tcpproxy *, int);
static void service_put(struct tcpproxy *, struct service *);
/* The fault stages, which the relay calls only for a bridge with faults. */
static size_t fault_room(struct tcpproxy *, struct bridge *, int, size_t);
static int fault_readable(struct tcpproxy *, struct bridge *, int);
static size_t fault_chunk(struct tcpproxy *, struct bridge *, int, char *,
    size_t);
static size_t fault_writable(struct tcpproxy *, struct bridge *, int,
    size_t);
static void fault_sent(struct tcpproxy *, struct bridge *, int, size_t);
static int fault_eof(struct tcpproxy *, struct bridge *, int);
static long long fault_connect_delay(struct tcpproxy *, struct bridge *);
static void fault_settle(struct tcpproxy *, struct bridge *);
static void fault_arm(struct tcpproxy *, struct bridge *);
static void faults_admit(struct tcpproxy *, struct bridge *);
static void fault_detach(struct tcpproxy *, struct bridge *);
static int service_up(struct tcpproxy *, struct service *, char *, size_t);
static void ctl_lines(struct tcpproxy *, struct ctl *);
static void ctl_project(struct tcpproxy *);
static void ctl_stats(struct tcpproxy *, struct ctl *);
static int line_split(char *, char *[], int);
static void listener_close(struct listener *);
static struct addr *addrs_resolve(const char *, const char *, int, size_t *,
    char *, size_t);
static void stats_line(const struct tcpproxy *, const struct tcpproxy_stats *,
    char *, size_t);
static void bridge_begin(struct tcpproxy *, struct bridge *);

/* ---- helpers ---- */
static const char *const reason_names[] = {
	"open", "client-closed", "server-closed", "client-reset",
	"server-reset", "client-error", "server-error", "connect-refused",
	"connect-timeout", "connect-failed", "idle-timeout", "hook-closed",
	"shutdown", "no-memory", "max-bytes", "queue-timeout", "fault"
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

	if (sa->sa_family == AF_UNIX) {
		const struct sockaddr_un *sun = (const void *)sa;
		size_t n = len > offsetof(struct sockaddr_un, sun_path) ?
		    len - offsetof(struct sockaddr_un, sun_path) : 0;

		/* A client of a Unix socket has no name of its own. */
		if (n == 0 || sun->sun_path[0] == '\0')
			snprintf(buf, size, "unix");
		else
			snprintf(buf, size, "%.*s", (int)strnlen(sun->sun_path,
			    n), sun->sun_path);
		return buf;
	}
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

/* Formats a message into err (if any). */
static void
err_vformat(char *err, size_t errlen, const char *fmt, va_list ap)
{
	if (err != NULL && errlen > 0)
		vsnprintf(err, errlen, fmt, ap);
}

/* Copies msg into err (if any) and sets errno; returns NULL. */
static void *
fail(char *err, size_t errlen, int errnum, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	err_vformat(err, errlen, fmt, ap);
	va_end(ap);
	errno = errnum;
	return NULL;
}

/* Like fail(), for functions that return an int: returns -1. */
static int
failed(char *err, size_t errlen, int errnum, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	err_vformat(err, errlen, fmt, ap);
	va_end(ap);
	errno = errnum;
	/* The analyzer loses track of cfg->owned across the parse calls that
	 * end here; tcpproxy_config_free() releases it. */
	return -1;	/* analyzer-ok(-Wanalyzer-malloc-leak) */
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
 * Turns TCP keepalive on for fd: the first probe after idle seconds
 * without traffic, then one every idle/4 (at least 1), and the peer is
 * given up after 4 unanswered, so a dead peer is found within about
 * twice idle.  Best effort, like the other options.
 */
static void
keepalive_set(int fd, int idle)
{
	int one = 1, intvl = idle / 4 > 0 ? idle / 4 : 1, cnt = 4;

	(void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
#ifdef KEEPALIVE_IDLE
	(void)setsockopt(fd, IPPROTO_TCP, KEEPALIVE_IDLE, &idle, sizeof(idle));
#endif
#ifdef KEEPALIVE_INTVL
	(void)setsockopt(fd, IPPROTO_TCP, KEEPALIVE_INTVL, &intvl,
	    sizeof(intvl));
#endif
#ifdef KEEPALIVE_CNT
	(void)setsockopt(fd, IPPROTO_TCP, KEEPALIVE_CNT, &cnt, sizeof(cnt));
#endif
	(void)idle;
	(void)intvl;
	(void)cnt;
}

/*
 * Sets the options every relayed socket of svc gets, made by socket() or
 * accept_ready() with SOCK_FLAGS; accepted says it came from a listener,
 * whose TCP_NODELAY it may have.  Returns 0 or -1.
 */
static int
sock_prepare(int keepalive, int fd, int accepted)
{
	int one = 1;

	if (SOCK_FLAGS == 0 && fd_prepare(fd) == -1)
		return -1;
	/* The endpoints already coalesce; the proxy must not add delay. */
	if (!accepted || !NODELAY_INHERITED)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
		    sizeof(one));
	if (NOSIGPIPE != 0)
		(void)setsockopt(fd, SOL_SOCKET, NOSIGPIPE, &one, sizeof(one));
	if (keepalive > 0)
		keepalive_set(fd, keepalive);
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
 * Returns whether the socket file at path is stale: a socket that
 * nothing listens on (left by a crash).  Anything else, a live socket or
 * a file that is not a socket, is never removed: errno then says which
 * (EADDRINUSE, EEXIST).
 */
static int
unix_stale(const struct sockaddr_un *sun, socklen_t len)
{
	struct stat st;
	int fd, stale;

	if (lstat(sun->sun_path, &st) == -1 || !S_ISSOCK(st.st_mode)) {
		errno = EEXIST;
		return 0;
	}
	if ((fd = socket(AF_UNIX, SOCK_STREAM, 0)) == -1)
		return 0;
	/* A Unix connect answers at once: refused means no listener. */
	stale = connect(fd, (const struct sockaddr *)sun, len) == -1 &&
	    errno == ECONNREFUSED;
	fd_close(fd);
	errno = EADDRINUSE;
	return stale;
}

/*
 * Binds and listens on a Unix socket, replacing a stale socket file,
 * and gives it mode (0: as the umask leaves it) before anyone can
 * connect.  Returns the descriptor, or -1 with errno set.
 */
static int
listen_unix(const struct sockaddr_un *sun, socklen_t len, unsigned int mode)
{
	int fd, tries;

	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_FLAGS, 0)) == -1)
		return -1;
	if (SOCK_FLAGS == 0 && fd_prepare(fd) == -1)
		goto bad;
	for (tries = 0; bind(fd, (const struct sockaddr *)sun, len) == -1;
	    tries++) {
		if (errno != EADDRINUSE || tries > 0 || !unix_stale(sun, len))
			goto bad;
		if (unlink(sun->sun_path) == -1 && errno != ENOENT)
			goto bad;
	}
	if ((mode != 0 && chmod(sun->sun_path, (mode_t)mode) == -1) ||
	    listen(fd, TCPPROXY_BACKLOG) == -1) {
		int saved = errno;

		(void)unlink(sun->sun_path);
		errno = saved;
		goto bad;
	}
	return fd;
bad:
	fd_close(fd);
	return -1;
}

/*
 * Binds a TCP socket to sa, with SO_REUSEADDR and, if share is set,
 * REUSEPORT (before bind(), as the kernel wants it on every socket of a
 * port it spreads).  Returns the descriptor, or -1 with errno set.
 */
static int
tcp_bind(const struct sockaddr *sa, socklen_t len, int share)
{
	int fd, one = 1;

	if ((fd = socket(sa->sa_family, SOCK_STREAM | SOCK_FLAGS, 0)) == -1)
		return -1;
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* For the accepted sockets that inherit it (NODELAY_INHERITED). */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
#ifdef IPV6_V6ONLY
	/* Explicit, so binding both :: and 0.0.0.0 works everywhere. */
	if (sa->sa_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one,
		    sizeof(one));
#endif
	/* Best effort: without it, binding a twin fails (listener_twin). */
	if (share && REUSEPORT != 0)
		(void)setsockopt(fd, SOL_SOCKET, REUSEPORT, &one, sizeof(one));
	if ((SOCK_FLAGS == 0 && fd_prepare(fd) == -1) ||
	    bind(fd, sa, len) == -1) {
		fd_close(fd);
		return -1;
	}
	return fd;
}

/*
 * Binds and listens on one address, TCP sockets with REUSEPORT if share
 * is set; returns the descriptor, or -1 with errno set.
 */
static int
listen_on(const struct sockaddr *sa, socklen_t len, unsigned int mode,
    int share)
{
	int fd;

	if (sa->sa_family == AF_UNIX)
		return listen_unix((const struct sockaddr_un *)(const void *)sa,
		    len, mode);
	if ((fd = tcp_bind(sa, len, share)) == -1)
		return -1;
	if (listen(fd, TCPPROXY_BACKLOG) == -1) {
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

/* Returns the port of an IPv4 or IPv6 socket address, or -1. */
static int
sa_port(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)(const void *)sa)->
		    sin_port);
	if (sa->sa_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)(const void *)sa)->
		    sin6_port);
	return -1;
}

/* Returns the port of a bound socket, or -1. */
static int
fd_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) == -1)
		return -1;
	return sa_port((struct sockaddr *)&ss);
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

	/* "*" and "" mean every address, IPv4 and IPv6, on every libc. */
	if (host != NULL && (*host == '\0' || strcmp(host, "*") == 0))
		host = NULL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = passive ? AI_PASSIVE : 0;
	/* A port in digits and an address literal never reach a resolver. */
	if (port[strspn(port, "0123456789")] == '\0')
		hints.ai_flags |= AI_NUMERICSERV;
	hints.ai_flags |= AI_NUMERICHOST;
	rc = getaddrinfo(host, port, &hints, res);
	if (rc == EAI_NONAME && host != NULL) {
		hints.ai_flags &= ~AI_NUMERICHOST;
		rc = getaddrinfo(host, port, &hints, res);
	}
	if (rc != 0) {
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


/*
 * Reduces a socket address to a key: family 4 or 6, then 16 address
 * bytes.  An IPv4-mapped IPv6 address counts as the IPv4 one.  Returns 0,
 * or -1 for another family (the key is then all zeros).
 */
static int
addr_key(const struct sockaddr *sa, unsigned char key[KEY_LEN])
{
	static const unsigned char mapped[12] = {
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
	};

	memset(key, 0, KEY_LEN);
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
 * Returns whether text matches a pattern of rinetd's: '*' any run of
 * characters, '?' any one, anything else itself.
 */
static int
glob_match(const char *pat, const char *text)
{
	const char *star = NULL, *resume = NULL;

	while (*text != '\0') {
		if (*pat == '*') {
			star = pat++;
			resume = text;
		} else if (*pat == '?' || *pat == *text) {
			pat++;
			text++;
		} else if (star != NULL) {
			pat = star + 1;
			text = ++resume;
		} else {
			return 0;
		}
	}
	while (*pat == '*')
		pat++;
	return *pat == '\0';
}
/* ---- preambles: the PROXY protocol and TLS server names ---- */

/*
 * Both parsers read bytes from the network: every length is checked
 * against the bytes at hand before it is used, and a result says whether
 * more bytes could change the verdict (PRE_MORE).
 */
enum { PRE_BAD = -1, PRE_MORE = 0, PRE_DONE = 1 };

#define PROXY_V1_MAX 107		/* the longest v1 line, CRLF included */
#define PROXY_HDR_MAX 108		/* the longest header we send */

static const unsigned char proxy_sig[12] = {
	0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a
};

/* What a PROXY header said. */
struct proxy_hdr {
	size_t len;			/* bytes of the header */
	int local;			/* LOCAL, UNKNOWN: the real addresses */
	struct sockaddr_storage src, dst;
	socklen_t srclen, dstlen;
	const char *why;		/* the refuse reason, for PRE_BAD */
};

/* Returns CRC32C (Castagnoli) of n bytes, bit by bit: headers are rare. */
static unsigned long
crc32c(const unsigned char *p, size_t n, size_t skip_at)
{
	unsigned long crc = 0xffffffffUL;
	size_t i;
	int k;

	for (i = 0; i < n; i++) {
		/* The checksum field itself counts as zeros. */
		crc ^= i >= skip_at && i < skip_at + 4 ? 0 : p[i];
		for (k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82f63b78UL & (0UL - (crc & 1)));
	}
	return crc ^ 0xffffffffUL;
}

/* Fills an IPv4 or IPv6 socket address; returns its length. */
static socklen_t
sockaddr_fill(struct sockaddr_storage *ss, int family, const void *addr,
    unsigned int port)
{
	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)(void *)ss;

		sin->sin_family = AF_INET;
		memcpy(&sin->sin_addr, addr, 4);
		sin->sin_port = htons((unsigned short)port);
		return sizeof(*sin);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)(void *)ss;

		sin6->sin6_family = AF_INET6;
		memcpy(&sin6->sin6_addr, addr, 16);
		sin6->sin6_port = htons((unsigned short)port);
		return sizeof(*sin6);
	}
}

/* Parses a v1 port: digits, no leading zero, at most 65535; -1 if not. */
static long
proxy_v1_port(const char *s)
{
	long v = 0;
	size_t i;

	if (s[0] == '\0' || (s[0] == '0' && s[1] != '\0') || strlen(s) > 5)
		return -1;
	for (i = 0; s[i] != '\0'; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v <= 65535 ? v : -1;
}

/* Parses the v1 line buf[0..n), CRLF included. */
static int
proxy_v1_line(const unsigned char *buf, size_t n, struct proxy_hdr *h)
{
	char line[PROXY_V1_MAX + 1], *f[7], *s;
	unsigned char a[16];
	int nf = 0, family;
	long sport, dport;

	memcpy(line, buf, n - 2);
	line[n - 2] = '\0';
	h->len = n;
	/* Single spaces between exactly six words. */
	for (s = line; nf < 7; s++) {
		f[nf++] = s;
		if ((s = strchr(s, ' ')) == NULL)
			break;
		*s = '\0';
	}
	if (nf >= 2 && strcmp(f[1], "UNKNOWN") == 0) {
		h->local = 1;	/* the rest of the line does not matter */
		return PRE_DONE;
	}
	h->why = "proxy-syntax";
	if (nf != 6 || strcmp(f[0], "PROXY") != 0)
		return PRE_BAD;
	if (strcmp(f[1], "TCP4") == 0)
		family = AF_INET;
	else if (strcmp(f[1], "TCP6") == 0)
		family = AF_INET6;
	else
		return PRE_BAD;
	if ((sport = proxy_v1_port(f[4])) < 0 ||
	    (dport = proxy_v1_port(f[5])) < 0 ||
	    inet_pton(family, f[2], a) != 1)
		return PRE_BAD;
	h->srclen = sockaddr_fill(&h->src, family, a, (unsigned int)sport);
	if (inet_pton(family, f[3], a) != 1)
		return PRE_BAD;
	h->dstlen = sockaddr_fill(&h->dst, family, a, (unsigned int)dport);
	h->why = NULL;
	return PRE_DONE;
}

/* Checks the TLVs of a v2 header, buf[at..end); 0 or -1 (h->why). */
static int
proxy_v2_tlvs(const unsigned char *buf, size_t at, size_t end,
    struct proxy_hdr *h)
{
	while (at < end) {
		size_t len;

		if (end - at < 3)
			return (h->why = "proxy-tlv"), -1;
		len = (size_t)buf[at + 1] << 8 | buf[at + 2];
		if (len > end - at - 3)
			return (h->why = "proxy-tlv"), -1;
		if (buf[at] == 0x03) {		/* CRC32C */
			unsigned long sum;

			if (len != 4)
				return (h->why = "proxy-tlv"), -1;
			sum = (unsigned long)buf[at + 3] << 24 |
			    (unsigned long)buf[at + 4] << 16 |
			    (unsigned long)buf[at + 5] << 8 | buf[at + 6];
			if (crc32c(buf, end, at + 3) != sum)
				return (h->why = "proxy-crc"), -1;
		} else if (buf[at] == 0x05 && len > 128) {	/* UNIQUE_ID */
			return (h->why = "proxy-tlv"), -1;
		}
		at += 3 + len;
	}
	return 0;
}

/* Parses a v2 header from buf[0..n), which starts with the signature. */
static int
proxy_v2(const unsigned char *buf, size_t n, size_t max, struct proxy_hdr *h)
{
	size_t len, block;
	unsigned int cmd;

	if (n < 16)
		return PRE_MORE;
	if (buf[12] >> 4 != 2)
		return (h->why = "proxy-version"), PRE_BAD;
	if ((cmd = buf[12] & 0x0f) > 1)
		return (h->why = "proxy-command"), PRE_BAD;
	switch (buf[13]) {
	case 0x00: block = 0; break;
	case 0x11: case 0x12: block = 12; break;
	case 0x21: case 0x22: block = 36; break;
	case 0x31: case 0x32: block = 216; break;
	default: return (h->why = "proxy-family"), PRE_BAD;
	}
	len = (size_t)buf[14] << 8 | buf[15];
	if (16 + len > max)
		return (h->why = "proxy-too-long"), PRE_BAD;
	if (n < 16 + len)
		return PRE_MORE;
	h->len = 16 + len;
	/* LOCAL (a check): skip what follows, whatever the family says. */
	if (cmd == 0) {
		h->local = 1;
		return PRE_DONE;
	}
	if (len < block)
		return (h->why = "proxy-length"), PRE_BAD;
	if (proxy_v2_tlvs(buf, 16 + block, 16 + len, h) == -1)
		return PRE_BAD;
	if (block == 12) {
		h->srclen = sockaddr_fill(&h->src, AF_INET, buf + 16,
		    (unsigned int)buf[24] << 8 | buf[25]);
		h->dstlen = sockaddr_fill(&h->dst, AF_INET, buf + 20,
		    (unsigned int)buf[26] << 8 | buf[27]);
	} else if (block == 36) {
		h->srclen = sockaddr_fill(&h->src, AF_INET6, buf + 16,
		    (unsigned int)buf[48] << 8 | buf[49]);
		h->dstlen = sockaddr_fill(&h->dst, AF_INET6, buf + 32,
		    (unsigned int)buf[50] << 8 | buf[51]);
	} else {
		h->local = 1;	/* UNSPEC, UNIX: no address a client has */
	}
	return PRE_DONE;
}

/*
 * Parses a PROXY protocol header, v1 or v2 (told apart by the first
 * bytes), at the start of buf[0..n); max is the most the header may take
 * (the buffer's size).  Returns PRE_DONE (h filled), PRE_MORE, or PRE_BAD
 * with the reason in h->why.
 */
static int
proxy_parse(const unsigned char *buf, size_t n, size_t max,
    struct proxy_hdr *h)
{
	static const char v1[] = "PROXY ";
	size_t i;

	memset(h, 0, sizeof(*h));
	h->why = "proxy-signature";
	if (n == 0)
		return PRE_MORE;
	if (buf[0] == proxy_sig[0]) {
		for (i = 0; i < n && i < sizeof(proxy_sig); i++)
			if (buf[i] != proxy_sig[i])
				return PRE_BAD;
		if (i < sizeof(proxy_sig))
			return PRE_MORE;
		return proxy_v2(buf, n, max, h);
	}
	for (i = 0; i < n && i < 6; i++)
		if (buf[i] != (unsigned char)v1[i])
			return PRE_BAD;
	h->why = "proxy-syntax";
	/* The CRLF must end within PROXY_V1_MAX bytes. */
	for (i = 0; i < n && i + 1 < PROXY_V1_MAX; i++) {
		if (buf[i] == '\n')
			return PRE_BAD;		/* an LF with no CR */
		if (buf[i] != '\r')
			continue;
		if (i + 1 == n)
			break;			/* its LF may follow */
		if (buf[i + 1] != '\n')
			return PRE_BAD;		/* a CR with no LF */
		return proxy_v1_line(buf, i + 2, h);
	}
	if (n < PROXY_V1_MAX && n < max)
		return PRE_MORE;
	h->why = "proxy-too-long";
	return PRE_BAD;
}

/*
 * Writes the PROXY header for a connection from src to dst into out (at
 * least PROXY_HDR_MAX bytes): version 1 or 2, or with src NULL what a
 * health check sends (v2 LOCAL, v1 UNKNOWN).  Addresses that are not
 * both IPv4 or both IPv6 are sent as UNKNOWN (v2: PROXY over UNSPEC, so
 * the receiver uses the real ones).  Returns its length.
 */
static size_t
proxy_header(int version, const struct sockaddr_storage *src,
    const struct sockaddr_storage *dst, unsigned char *out)
{
	unsigned char ks[KEY_LEN] = { 0 }, kd[KEY_LEN] = { 0 };
	int ip = src != NULL && addr_key((const struct sockaddr *)src, ks) ==
	    0 && addr_key((const struct sockaddr *)dst, kd) == 0 &&
	    ks[0] == kd[0];
	unsigned int sport = ip ? (unsigned int)sa_port((const struct
	    sockaddr *)src) : 0;
	unsigned int dport = ip ? (unsigned int)sa_port((const struct
	    sockaddr *)dst) : 0;
	size_t alen = ip ? (ks[0] == 4 ? 4 : 16) : 0;

	if (version == TCPPROXY_PROXY_V1) {
		char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
		int af = ks[0] == 4 ? AF_INET : AF_INET6;

		if (!ip || inet_ntop(af, ks + 1, a, sizeof(a)) == NULL ||
		    inet_ntop(af, kd + 1, b, sizeof(b)) == NULL)
			return (size_t)snprintf((char *)out, PROXY_HDR_MAX,
			    "PROXY UNKNOWN\r\n");
		return (size_t)snprintf((char *)out, PROXY_HDR_MAX,
		    "PROXY TCP%c %s %s %u %u\r\n", ks[0] == 4 ? '4' : '6', a, b,
		    sport, dport);
	}
	memcpy(out, proxy_sig, sizeof(proxy_sig));
	out[12] = src == NULL ? 0x20 : 0x21;
	out[13] = !ip ? 0x00 : ks[0] == 4 ? 0x11 : 0x21;
	out[14] = 0;
	out[15] = (unsigned char)(ip ? 2 * alen + 4 : 0);
	if (!ip)
		return 16;
	memcpy(out + 16, ks + 1, alen);
	memcpy(out + 16 + alen, kd + 1, alen);
	out[16 + 2 * alen] = (unsigned char)(sport >> 8);
	out[17 + 2 * alen] = (unsigned char)sport;
	out[18 + 2 * alen] = (unsigned char)(dport >> 8);
	out[19 + 2 * alen] = (unsigned char)dport;
	return 20 + 2 * alen;
}

/* Reads a big-endian 16-bit length at p. */
static size_t
be16(const unsigned char *p)
{
	return (size_t)p[0] << 8 | p[1];
}

/*
 * Finds the server_name of a TLS ClientHello at the start of buf[0..n),
 * looking into the first record only.  Returns PRE_MORE while the record
 * is incomplete (and could still fit in max bytes), PRE_DONE with the
 * name, lower-cased, in name[0..size) (empty when there is none), or
 * PRE_BAD when the bytes are not a ClientHello one can read: not TLS,
 * malformed, or split over records.
 */
static int
sni_parse(const unsigned char *buf, size_t n, size_t max, char *name,
    size_t size)
{
	size_t rec, at, end, len, ext_end;

	name[0] = '\0';
	if (n >= 1 && buf[0] != 0x16)		/* a handshake record */
		return PRE_BAD;
	if (n >= 2 && buf[1] != 0x03)
		return PRE_BAD;
	if (n < 5)
		return PRE_MORE;
	rec = be16(buf + 3);
	if (rec < 4 || rec > 16384)
		return PRE_BAD;
	if (n < 5 + rec)
		return 5 + rec <= max ? PRE_MORE : PRE_BAD;
	/* A ClientHello, wholly inside this record. */
	if (buf[5] != 0x01)
		return PRE_BAD;
	len = (size_t)buf[6] << 16 | be16(buf + 7);
	if (len > rec - 4)
		return PRE_BAD;
	end = 9 + len;
	at = 9 + 2 + 32;			/* version, random */
	if (at + 1 > end)
		return PRE_BAD;
	at += 1 + buf[at];			/* session id */
	if (at + 2 > end)
		return PRE_BAD;
	at += 2 + be16(buf + at);		/* cipher suites */
	if (at + 1 > end)
		return PRE_BAD;
	at += 1 + buf[at];			/* compression methods */
	if (at == end)
		return PRE_DONE;		/* no extensions */
	if (at + 2 > end || at + 2 + be16(buf + at) > end)
		return PRE_BAD;
	ext_end = at + 2 + be16(buf + at);
	for (at += 2; at + 4 <= ext_end; at += 4 + len) {
		size_t list, i;

		len = be16(buf + at + 2);
		if (at + 4 + len > ext_end)
			return PRE_BAD;
		if (be16(buf + at) != 0)	/* server_name */
			continue;
		if (len < 2 || (list = be16(buf + at + 4)) != len - 2 ||
		    list < 3 || buf[at + 6] != 0)	/* host_name */
			return PRE_BAD;
		if ((len = be16(buf + at + 7)) == 0 || len > list - 3 ||
		    len >= size)
			return PRE_BAD;
		for (i = 0; i < len; i++) {
			unsigned char c = buf[at + 9 + i];

			if (c >= 'A' && c <= 'Z')
				c = (unsigned char)(c - 'A' + 'a');
			else if (!((c >= 'a' && c <= 'z') ||
			    (c >= '0' && c <= '9') || c == '-' || c == '.' ||
			    c == '_')) {
				name[0] = '\0';
				return PRE_BAD;
			}
			name[i] = (char)c;
		}
		name[len] = '\0';
		if (name[len - 1] == '.')
			name[len - 1] = '\0';	/* an absolute name */
		return PRE_DONE;
	}
	return at == ext_end ? PRE_DONE : PRE_BAD;
}

/*
 * Returns whether a server name matches a route's pattern: the name
 * itself, or "*.domain" for any name under domain.
 */
static int
sni_match(const char *pattern, const char *name)
{
	size_t pl = strlen(pattern), nl = strlen(name);

	if (pattern[0] == '*' && pattern[1] == '.')
		return nl > pl - 1 && strcasecmp(name + nl - (pl - 1),
		    pattern + 1) == 0;
	return strcasecmp(pattern, name) == 0;
}

/* ---- buffers ---- */

/*
 * Attaches a buffer to an empty flow of a bridge of svc; returns 0, or -1
 * if out of memory.  Each service keeps its own free list, since each
 * has its own buffer size.
 */
static int
buf_take(struct service *svc, struct flow *f)
{
	if (f->buf != NULL)
		return 0;
	if (svc->nspare > 0)
		f->buf = svc->spare[--svc->nspare];
	else if ((f->buf = malloc(svc->bufsize)) == NULL)
		return -1;
	f->off = f->len = 0;
	return 0;
}

/* Detaches the buffer of a flow and forgets its bytes. */
static void
buf_give(struct service *svc, struct flow *f)
{
	if (f->buf == NULL)
		return;
	if (svc->nspare < TCPPROXY_SPARE_BUFFERS)
		svc->spare[svc->nspare++] = f->buf;
	else
		free(f->buf);
	f->buf = NULL;
	f->off = f->len = 0;
}

/* ---- the splice pool ---- */

/*
 * Returns whether one more pipe may be made: bridges need descriptors
 * more than pipes do, so pipes are made only while a quarter of the
 * limit is left for them.
 */
static int
pipe_affordable(const struct tcpproxy *p)
{
	size_t used = p->base + 2 * p->nbridges + 2 * p->pipes_made + 2;

	return p->fd_max <= 0 || (long)used <= p->fd_max - p->fd_max / 4;
}

/*
 * Grows the pool by up to its size again (at least 8), within
 * cfg.max_pipes; the new entries go on the free list, not yet made.
 * Indices, not pointers, name a pipe, so moving the array is safe.
 * Returns 0, or -1 at the cap or out of memory.
 */
static int
pipes_grow(struct tcpproxy *p)
{
	size_t n = p->npipes < 8 ? 8 : 2 * p->npipes, k;
	struct pipebuf *a;

	if (n > p->cfg.max_pipes)
		n = p->cfg.max_pipes;
	if (n <= p->npipes ||
	    (a = realloc(p->pipes, n * sizeof(*a))) == NULL)
		return -1;
	for (k = p->npipes; k < n; k++) {
		a[k].fd[0] = a[k].fd[1] = -1;
		a[k].len = a[k].cap = 0;
		a[k].full = 0;
		a[k].next = p->pipe_free;
		p->pipe_free = (unsigned int)k + 1;
	}
	p->pipes = a;
	p->npipes = n;
	return 0;
}

/* Closes the descriptors of a pipe, if it was made. */
static void
pipe_unmake(struct tcpproxy *p, struct pipebuf *pb)
{
	if (pb->fd[0] == -1)
		return;
	fd_close(pb->fd[0]);
	fd_close(pb->fd[1]);
	pb->fd[0] = pb->fd[1] = -1;
	p->pipes_made--;
}

/*
 * Makes pipe pb, to hold size bytes: a pipe holds 64 KB at first, and
 * each splice() moves at most what it holds, so a bigger one takes
 * fewer calls and poll rounds per byte (a quarter of the CPU per GB at
 * 256 KB).  Beyond /proc/sys/fs/pipe-max-size, or past the user's pipe
 * quota, it cannot grow; one the quota left smaller than 64 KB is not
 * worth a pipe.  Returns 0, or -1 with errno set.
 */
static int
pipe_make(struct tcpproxy *p, struct pipebuf *pb, size_t size)
{
	int got;

	if (p->pipes_made >= p->cfg.max_pipes || !pipe_affordable(p)) {
		errno = EMFILE;
		return -1;
	}
	if (pipe2(pb->fd, O_NONBLOCK | O_CLOEXEC) == -1) {
		pb->fd[0] = pb->fd[1] = -1;
		return -1;
	}
	p->pipes_made++;
	if (size > INT_MAX)
		size = INT_MAX;
	if ((got = fcntl(pb->fd[0], F_SETPIPE_SZ, (int)size)) == -1)
		got = fcntl(pb->fd[0], F_GETPIPE_SZ);
	if (got < 65536) {
		pipe_unmake(p, pb);
		errno = ENOBUFS;
		return -1;
	}
	pb->cap = (size_t)got;
	return 0;
}

/*
 * Gives the empty flow f, of buffer size size, a pipe from the pool that
 * holds at least TCPPROXY_PIPE_SIZE bytes, or size if it is bigger,
 * making it if need be.  Returns 0, or -1 when none can be had (the cap,
 * the descriptor limit), and the flow is copied as before.  The pool may
 * be bigger than a cap a reload lowered, so the pipes made are held to
 * the cap too (pipe_make).
 */
static int
pipe_take(struct tcpproxy *p, struct flow *f, size_t size)
{
	struct pipebuf *pb;

	if (p->pipe_free == 0 && pipes_grow(p) == -1)
		return -1;
	if (size < TCPPROXY_PIPE_SIZE)
		size = TCPPROXY_PIPE_SIZE;
	pb = &p->pipes[p->pipe_free - 1];
	if (pb->fd[0] == -1 && pipe_make(p, pb, size) == -1)
		return -1;
	if (pb->cap < size && size <= INT_MAX &&
	    fcntl(pb->fd[0], F_SETPIPE_SZ, (int)size) != -1)
		pb->cap = size;
	f->pipe = p->pipe_free;
	p->pipe_free = pb->next;
	pb->len = 0;
	pb->full = 0;
	return 0;
}

/*
 * Gives flow f's pipe back to the pool.  One that still holds bytes (the
 * flow's receiver is gone) cannot be emptied cheaply, and one above a cap
 * a reload lowered is not kept: either is closed.
 */
static void
pipe_give(struct tcpproxy *p, struct flow *f)
{
	struct pipebuf *pb;

	if (f->pipe == 0)
		return;
	pb = &p->pipes[f->pipe - 1];
	if (pb->len > 0 || p->pipes_made > p->cfg.max_pipes)
		pipe_unmake(p, pb);
	pb->len = 0;
	pb->next = p->pipe_free;
	p->pipe_free = f->pipe;
	f->pipe = 0;
}

/*
 * Closes the free pipes: when no bridge is left, so that an idle proxy
 * holds only its own descriptors, and when descriptors run out.
 */
static void
pipes_trim(struct tcpproxy *p)
{
	unsigned int k;

	for (k = p->pipe_free; k != 0; k = p->pipes[k - 1].next)
		pipe_unmake(p, &p->pipes[k - 1]);
}

/* Forgets what flow f holds, in its buffer or its pipe. */
static void
flow_drop(struct tcpproxy *p, struct service *svc, struct flow *f)
{
	buf_give(svc, f);
	pipe_give(p, f);
}

/* ---- timers ---- */

/* Returns the timer list t of bridge b: its service's, or the engine's. */
static struct timer_list *
timer_list(struct tcpproxy *p, const struct bridge *b, int t)
{
	return t == TIMER_FDWAIT ? &p->fdwait : &b->svc->timers[t];
}

static void
timer_unlink(struct tcpproxy *p, struct bridge *b)
{
	struct timer_list *l;

	if (b->timer == TIMER_NONE)
		return;
	l = timer_list(p, b, b->timer);
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
 * Timeouts are uniform within a list, so it stays ordered by deadline.
 */
static void
timer_set(struct tcpproxy *p, struct bridge *b, int t)
{
	struct timer_list *l = timer_list(p, b, t);

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
	if (b != b->svc->timers[TIMER_IDLE].tail)
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
 * A token bucket of rate bytes per second and burst bytes for flow[s] of
 * b: returns how many bytes it may read now, at most room.  When too few
 * tokens are left to be worth a read, pauses the flow until enough have
 * come in, and returns 0.
 */
static size_t
bucket_allow(struct tcpproxy *p, struct bridge *b, int s, double *tokens,
    long long *stamp, double rate, double burst, size_t room)
{
	struct flow *f = &b->flow[s];
	double low = burst / 4;

	*tokens += (double)(p->now - *stamp) * rate / 1000.0;
	*stamp = p->now;
	if (*tokens > burst)
		*tokens = burst;
	if (low < 1)
		low = 1;
	if (*tokens >= low)
		return *tokens < (double)room ? (size_t)*tokens : room;
	f->resume = p->now + 1 + (long long)((low - *tokens) * 1000 / rate);
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

/* Returns how many bytes flow[s] may read now under --rate, at most room. */
static size_t
flow_allowance(struct tcpproxy *p, struct bridge *b, int s, size_t room)
{
	struct flow *f = &b->flow[s];

	if (b->svc->rate == 0)
		return room;
	return bucket_allow(p, b, s, &f->tokens, &f->stamp,
	    (double)b->svc->rate, b->svc->burst, room);
}

/* ---- bridge I/O ---- */

/* Returns whether a data hook is set. */
static int
hooked(const struct tcpproxy *p)
{
	return p->cfg.hooks != NULL && p->cfg.hooks->on_data != NULL;
}

/*
 * Returns the free bytes a read needs: 2 with a data hook, whose cap must
 * be at least twice the chunk, else 1.
 */
static size_t
room_min(const struct tcpproxy *p)
{
	return hooked(p) ? 2 : 1;
}

/*
 * Returns the bytes flow[s] keeps free: room for the PROXY header that
 * goes before the client's first bytes, until it is queued.
 */
static size_t
flow_reserve(const struct bridge *b, int s)
{
	return s == CLIENT && b->svc->send_proxy && b->state != BRIDGE_OPEN ?
	    PROXY_HDR_MAX : 0;
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

/*
 * Returns the name of the address b is on: for a Unix socket its path as
 * written, whole (an address's name is cut to ADDR_NAME_MAX).
 */
static const char *
bridge_server(const struct bridge *b)
{
	return b->be != NULL && (b->be->port == NULL || *b->be->port == '\0') ?
	    b->be->name : b->server;
}

/* Fills the info a hook sees about a bridge. */
static void
bridge_info(const struct tcpproxy *p, const struct bridge *b,
    struct tcpproxy_bridge_info *info)
{
	memset(info, 0, sizeof(*info));
	info->id = b->id;
	info->client_name = b->client;
	info->server_name = bridge_server(b);
	info->service_name = b->svc->name;
	info->backend_name = b->be != NULL ? b->be->name : "-";
	info->bytes[TCPPROXY_UPSTREAM] = b->flow[CLIENT].bytes;
	info->bytes[TCPPROXY_DOWNSTREAM] = b->flow[SERVER].bytes;
	info->duration = (double)(p->now - b->start_ms) / 1000.0;
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
	flow_drop(p, b->svc, &b->flow[!s]);
	b->rd[!s] = 0;
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
	size_t cap = b->svc->bufsize - start;

	bridge_info(p, b, &info);
	info.final = final;
	v = h->on_data(h->user, b->hook_data, &info, s == CLIENT ?
	    TCPPROXY_UPSTREAM : TCPPROXY_DOWNSTREAM, f->buf + start, &len,
	    cap);
	if (len > cap)
		len = cap;
	/* MORE with nothing added would only call again for nothing; a call
	 * that an earlier MORE asked for stays due when a chunk read before
	 * the drain gets another verdict. */
	if (v == TCPPROXY_MORE && len > 0)
		f->more = MORE_DRAINED;
	if (v == TCPPROXY_DROP || v == TCPPROXY_CLOSE)
		len = 0;
	if (v == TCPPROXY_CLOSE) {
		f->more = MORE_NONE;	/* nothing more after a close */
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
	if (!hooked(p) || !b->wr[!s] || buf_take(b->svc, f) == -1)
		return;
	if (f->len < b->svc->bufsize)
		f->len += flow_hook(p, b, s, f->len, 0, 1);
	else
		f->more = MORE_FINAL;	/* no room: once drained */
	if (f->off == f->len)
		buf_give(b->svc, f);
}

/* Side s sent EOF (or, for --max-bytes, is taken to have). */
static void
side_eof(struct tcpproxy *p, struct bridge *b, int s)
{
	bridge_end(b, s == CLIENT ? TCPPROXY_REASON_CLIENT_CLOSED :
	    TCPPROXY_REASON_SERVER_CLOSED, 0);
	flow_stop(p, b, s);
	if (!b->svc->half_close)
		flow_stop(p, b, !s);
}

/*
 * Returns whether flow[s] of b may go through a pipe: it is a bulk flow,
 * splice() is on, the bridge is open, and no stage needs to see its
 * bytes: no data hook (dumps are one), no fault, no --rate, no
 * --max-bytes for the client's flow.  (A PROXY header to send sits in
 * the client's buffer, and a pipe is only taken by an empty flow.)
 */
static int
flow_spliceable(const struct tcpproxy *p, const struct bridge *b, int s)
{
	const struct service *svc = b->svc;

	return b->flow[s].bulk == BULK_YES && p->splice &&
	    b->state == BRIDGE_OPEN && b->fx == NULL && !hooked(p) &&
	    svc->rate == 0 && (s == SERVER || svc->max_bytes == 0);
}

/*
 * Returns the read size that shows a bulk flow: a whole buffer, or
 * 64 KB of a bigger one.  Less than that is not worth a pipe.
 */
static size_t
bulk_read(const struct service *svc)
{
	return svc->bufsize < 65536 ? svc->bufsize : 65536;
}

/*
 * Moves what flow[s]'s pipe holds on to side !s, as much as it takes.
 * The pipe goes back to the pool once empty.
 */
static void
pipe_drain(struct tcpproxy *p, struct bridge *b, int s)
{
	struct flow *f = &b->flow[s];
	struct pipebuf *pb = &p->pipes[f->pipe - 1];
	ssize_t n;

	if (!b->wr[!s])
		return;
	n = splice(pb->fd[0], NULL, b->fd[!s], NULL, pb->len,
	    SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
	/* cppcheck-suppress knownConditionTrueFalse ; splice()'s stub: -1 */
	if (n <= 0) {
		/* cppcheck-suppress knownConditionTrueFalse ; splice()'s stub: -1 */
		if (n < 0 && errno != EINTR && !WOULD_BLOCK(errno))
			side_fail(p, b, !s, errno);
		return;
	}
	bridge_touch(p, b);
	pb->len -= (size_t)n;
	pb->full = 0;
	f->bytes += (unsigned long long)n;
	b->svc->st->spliced += (unsigned long long)n;
	if (pb->len == 0)
		pipe_give(p, f);
}

/*
 * Reads from side s into flow[s]'s pipe with splice(), and moves it on
 * to !s at once.  Returns like flow_read.  A splice that would block
 * with bytes in the pipe found the pipe full (its slots, not only its
 * bytes, are few), so it is not read again until some drain; with the
 * pipe empty, the socket had nothing, and the pipe goes back.
 */
static int
pipe_read(struct tcpproxy *p, struct bridge *b, int s)
{
	struct flow *f = &b->flow[s];
	struct pipebuf *pb = &p->pipes[f->pipe - 1];
	size_t room = pb->cap - pb->len;
	ssize_t n = 0;

	if (flow_spliceable(p, b, s) && !pb->full && room > 0) {
		n = splice(b->fd[s], NULL, pb->fd[1], NULL, room,
		    SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		/* cppcheck-suppress knownConditionTrueFalse ; splice()'s stub: -1 */
		if (n == 0) {
			side_eof(p, b, s);
		/* cppcheck-suppress knownConditionTrueFalse ; splice()'s stub: -1 */
		} else if (n > 0) {
			bridge_touch(p, b);
			f->taken += (size_t)n;
			pb->len += (size_t)n;
		} else if (WOULD_BLOCK(errno)) {
			pb->full = pb->len > 0;
		} else if ((errno == EINVAL || errno == ENOSYS) &&
		    pb->len == 0) {
			/* Not for these descriptors: copy this flow. */
			f->bulk = BULK_NEVER;
			pipe_give(p, f);
			return 0;
		} else if (errno != EINTR) {
			side_fail(p, b, s, errno);
		}
	}
	if (f->pipe != 0 && pb->len > 0)
		pipe_drain(p, b, s);
	if (f->pipe != 0 && pb->len == 0)
		pipe_give(p, f);
	return n > 0 && (size_t)n == room && f->pipe == 0 && b->rd[s];
}

/*
 * Reads once from side s into flow[s], runs the data hook, and tries to
 * write the bytes to !s at once rather than a poll round later.  Returns
 * 1 if the read filled all the room it had and the bytes all went out,
 * so that another read is likely to find more.  A bulk flow that no
 * stage needs to see goes through a pipe instead, while one is free.
 */
static int
flow_read(struct tcpproxy *p, struct bridge *b, int s)
{
	struct service *svc = b->svc;
	struct flow *f = &b->flow[s];
	size_t room, start;
	ssize_t n;

	if (f->pipe != 0)
		return pipe_read(p, b, s);
	if (f->buf == NULL && flow_spliceable(p, b, s)) {
		if (pipe_take(p, f, svc->bufsize) == 0)
			return pipe_read(p, b, s);
		f->bulk = BULK_NO;	/* none now: show it again later */
	}
	if (buf_take(svc, f) == -1) {
		bridge_end(b, TCPPROXY_REASON_NO_MEMORY, ENOMEM);
		b->rd[CLIENT] = b->rd[SERVER] = 0;
		return 0;
	}
	if (f->off > 0 && svc->bufsize - f->len < room_min(p) +
	    flow_reserve(b, s)) {
		/* Full at the end but not at the start: slide down. */
		memmove(f->buf, f->buf + f->off, f->len - f->off);
		f->len -= f->off;
		f->off = 0;
	}
	room = svc->bufsize - f->len;
	room = room > flow_reserve(b, s) ? room - flow_reserve(b, s) : 0;
	if (room_min(p) == 2)
		room /= 2;	/* the hook may grow the chunk to cap */
	if (s == CLIENT && svc->max_bytes > 0 &&
	    room > svc->max_bytes - f->taken)
		room = (size_t)(svc->max_bytes - f->taken);
	room = flow_allowance(p, b, s, room);
	if (b->fx != NULL && room > 0)
		room = fault_room(p, b, s, room);
	if (room == 0) {
		/* Paused by --rate, or woken by POLLHUP with a full buffer. */
		if (f->off == f->len)
			buf_give(svc, f);
		return 0;
	}
	start = f->len;
	n = recv(b->fd[s], f->buf + start, room, 0);
	if (n == 0) {
		if (b->fx == NULL || !fault_eof(p, b, s))
			side_eof(p, b, s);
	} else if (n < 0) {
		if (errno != EINTR && !WOULD_BLOCK(errno))
			side_fail(p, b, s, errno);
	} else {
		size_t len = (size_t)n;

		bridge_touch(p, b);
		f->taken += len;
		f->tokens -= (double)len;
		if (len >= bulk_read(svc) && f->bulk == BULK_NO)
			f->bulk = BULK_YES;
		if (hooked(p))
			len = flow_hook(p, b, s, start, len, 0);
		if (b->fx != NULL)
			len = fault_chunk(p, b, s, f->buf + start, len);
		f->len += len;
		/* After the hook saw the chunk: its last call comes last. */
		if (s == CLIENT && f->taken == svc->max_bytes) {
			/* As if the client had sent EOF right there. */
			bridge_end(b, TCPPROXY_REASON_MAX_BYTES, 0);
			side_eof(p, b, CLIENT);
		}
	}
	if (f->off == f->len)
		buf_give(svc, f);
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

	if (f->pipe != 0) {
		pipe_drain(p, b, s);
		return;
	}
	if (f->buf == NULL || !b->wr[d] || b->state != BRIDGE_OPEN)
		return;
	for (;;) {
		size_t len = f->len - f->off;

		/* A fault may hold bytes back (delay) or cut them (slice). */
		if (b->fx != NULL && (len = fault_writable(p, b, s, len)) == 0)
			return;
		n = send(b->fd[d], f->buf + f->off, len, SEND_FLAGS);
		if (n < 0) {
			if (errno != EINTR && !WOULD_BLOCK(errno))
				side_fail(p, b, d, errno);
			return;
		}
		bridge_touch(p, b);
		f->off += (size_t)n;
		if (b->hdr > 0 && s == CLIENT) {
			/* A PROXY header is not the client's bytes. */
			size_t h = (size_t)n < b->hdr ? (size_t)n : b->hdr;

			b->hdr = (unsigned short)(b->hdr - h);
			n -= (ssize_t)h;
		}
		f->bytes += (unsigned long long)n;
		if (b->fx != NULL)
			fault_sent(p, b, s, (size_t)n);
		if (f->off < f->len) {
			if (b->fx == NULL || (size_t)n < len)
				return;
			continue;	/* a fault held some back: more now? */
		}
		buf_give(b->svc, f);
		/* The hook had more to add than cap allowed: room again. */
		if (f->more == MORE_NONE || buf_take(b->svc, f) == -1)
			return;
		final = f->more == MORE_FINAL;
		f->more = MORE_NONE;
		if ((f->len = flow_hook(p, b, s, 0, 0, final)) == 0) {
			buf_give(b->svc, f);
			return;
		}
	}
}

/* Returns the poll events side s of b wants, derived from its state. */
static short
want(struct tcpproxy *p, struct bridge *b, int s)
{
	const struct flow *f = &b->flow[s];
	/* Room for a read, once the queue is slid down (see flow_read). */
	int room = f->len - f->off + room_min(p) + flow_reserve(b, s) <=
	    b->svc->bufsize;
	short ev = 0;

	switch (b->state) {
	case BRIDGE_PREAMBLE:
		if (s == SERVER)
			return 0;
		break;
	case BRIDGE_QUEUED:
		/* A preamble is read once it is served: its bytes are not
		 * yet the client's. */
		if (b->flags & (B_PROXY | B_SNI))
			return 0;
		/* FALLTHROUGH */
	case BRIDGE_WAIT_FD:
	case BRIDGE_CONNECTING:
		/* The client's early bytes wait for whichever backend answers. */
		if (s == SERVER)
			return b->state == BRIDGE_CONNECTING ? POLLOUT : 0;
		break;
	default:
		/* Bytes a fault holds back are not worth a POLLOUT: they
		 * go at their deadline. */
		if (b->wr[s] && (b->flow[!s].pipe != 0 ||
		    (b->flow[!s].buf != NULL && (b->fx == NULL ||
		    fault_writable(p, b, !s, b->flow[!s].len -
		    b->flow[!s].off) > 0))))
			ev |= POLLOUT;
		break;
	}
	if (f->pipe != 0) {
		const struct pipebuf *pb = &p->pipes[f->pipe - 1];

		room = !pb->full && pb->len < pb->cap &&
		    flow_spliceable(p, b, s);
	}
	if (b->fx != NULL && b->rd[s] && !f->resume && room &&
	    !fault_readable(p, b, s))
		room = 0;
	if (b->rd[s] && !f->resume && room)
		ev |= POLLIN;
	return ev;
}

/* ---- bridge lifecycle ---- */

/* Returns the pollfd of side s of the bridge in slot k. */
static struct pollfd *
slot_pfd(struct tcpproxy *p, size_t k, int s)
{
	return &p->pfd[p->base + 2 * k + (size_t)s];
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

/* ---- backends: health and the connect planner ---- */

/* Returns a small hash of an address key (FNV-1a). */
static unsigned int
key_hash(const unsigned char key[KEY_LEN])
{
	unsigned int h = 2166136261u;
	size_t i;

	for (i = 0; i < KEY_LEN; i++)
		h = (h ^ key[i]) * 16777619u;
	return h;
}

/*
 * Returns whether backend be may take a new client: it is up, or its
 * down time is over and no other client is probing it yet.
 */
static int
backend_usable(const struct tcpproxy *p, const struct backend *be)
{
	return !be->down || (!be->probing && p->now >= be->down_until);
}

/* A connect to be failed (every address of it): count, maybe mark down. */
static void
backend_failed(struct tcpproxy *p, const struct service *svc,
    struct backend *be, int err)
{
	be->failed++;
	be->fails++;
	svc->st->failed++;
	if (be->down) {
		/* A failed probe: down again, without another line. */
		be->down_until = p->now + svc->down_time;
		return;
	}
	if (be->fails < svc->fails)
		return;
	be->down = 1;
	be->down_since = p->now;
	be->down_until = p->now + svc->down_time;
	say(p, TCPPROXY_LOG_ERROR, "backend down backend=%s fails=%lu "
	    "error=\"%s\"%s", be->name, be->fails, strerror(err), svc->tag);
}

/* A connect to be succeeded: it is up. */
static void
backend_ok(struct tcpproxy *p, const struct service *svc,
    struct backend *be)
{
	be->fails = 0;
	if (!be->down)
		return;
	be->down = 0;
	say(p, TCPPROXY_LOG_ERROR, "backend up backend=%s down_for=%.3f%s",
	    be->name, (double)(p->now - be->down_since) / 1000.0, svc->tag);
}

/* Ends b's probe of a down backend, if it was one. */
static void
bridge_unprobe(struct bridge *b)
{
	if (b->probe && b->be != NULL)
		b->be->probing = 0;
	b->probe = 0;
}

/* Puts b on backend i of its service, off the one it was on. */
static void
bridge_assign(struct tcpproxy *p, struct bridge *b, size_t i)
{
	struct backend *be = b->svc->backends[i];

	bridge_unprobe(b);
	if (b->be != NULL)
		b->be->open--;
	b->tried[i / 8] |= (unsigned char)(1u << (i % 8));
	b->be = be;
	b->addr = 0;
	be->open++;
	if (be->down && backend_usable(p, be)) {
		/* Its down time is over: this client finds out. */
		be->probing = 1;
		b->probe = 1;
	}
}

/*
 * Returns how many backends b may use, from *lo on: its route's one, or
 * its service's own.
 */
static size_t
plan_range(const struct bridge *b, size_t *lo)
{
	if (b->route > 0) {
		*lo = b->svc->nown + b->route - 1U;
		return 1;
	}
	*lo = 0;
	return b->svc->nown;
}

/*
 * Returns the backend where b's policy order starts: for roundrobin the
 * next in turn, for source a hash of the client's address, for first the
 * first, for leastconn the usable one with the fewest open bridges (ties
 * taken in turn).  The order then runs on from there.
 */
static size_t
plan_start(const struct tcpproxy *p, struct service *svc,
    const struct bridge *b)
{
	size_t lo, n = plan_range(b, &lo), k, i, best = n;
	struct backend **be = svc->backends + lo;

	if (n <= 1)
		return 0;	/* a route, or cannot be: spec_check wants one */
	switch (svc->balance) {
	case TCPPROXY_BALANCE_FIRST:
		return 0;
	case TCPPROXY_BALANCE_SOURCE:
		return key_hash(b->key) % n;
	case TCPPROXY_BALANCE_LEASTCONN:
		for (k = 0; k < n; k++) {
			i = (svc->st->rr + k) % n;
			if (backend_usable(p, be[i]) && (best == n ||
			    be[i]->open < be[best]->open))
				best = i;
		}
		svc->st->rr++;
		return best < n ? best : svc->st->rr % n;
	default:
		return svc->st->rr++ % n;
	}
}

/*
 * Moves b on to the next backend of its policy order that it has not
 * tried: usable ones first, then, when all of those failed, the ones
 * marked down (a down mark is a hint, not a refusal).  Each backend is
 * tried once.  Returns 0, or -1 when none is left.
 */
static int
plan_next(struct tcpproxy *p, struct bridge *b)
{
	struct service *svc = b->svc;
	size_t lo, n = plan_range(b, &lo), k, i;
	int pass;

	for (pass = 0; pass < 2; pass++) {
		for (k = 0; k < n; k++) {
			i = lo + (b->start + k) % n;
			if (b->tried[i / 8] & (1u << (i % 8)))
				continue;
			if (pass == 0 && !backend_usable(p, svc->backends[i]))
				continue;
			bridge_assign(p, b, i);
			return 0;
		}
	}
	return -1;
}

/* Returns the reason a connect failed with err. */
static enum tcpproxy_reason
connect_reason(int err)
{
	if (err == ETIMEDOUT)
		return TCPPROXY_REASON_CONNECT_TIMEOUT;
	if (err == ECONNREFUSED)
		return TCPPROXY_REASON_CONNECT_REFUSED;
	return TCPPROXY_REASON_CONNECT_FAILED;
}

/*
 * Opens a nonblocking socket for address a of service svc, bound to its
 * source address if it has one, and starts connecting.  Returns the
 * descriptor, or -1 with errno set (EINPROGRESS is success).
 */
static int
socket_connect(const struct service *svc, const struct addr *a)
{
	/* A Unix socket has no source address to choose. */
	int fd, bound = svc->source.len > 0 && a->ss.ss_family != AF_UNIX;

	if (bound && svc->source.ss.ss_family != a->ss.ss_family) {
		errno = EAFNOSUPPORT;
		return -1;
	}
	if ((fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_FLAGS, 0)) == -1)
		return -1;
	if (sock_prepare(svc->keepalive, fd, 0) == -1 ||
	    (bound && bind(fd, (const struct sockaddr *)
	    &svc->source.ss, svc->source.len) == -1) ||
	    (connect(fd, (const struct sockaddr *)&a->ss, a->len) == -1 &&
	    errno != EINPROGRESS && errno != EINTR)) {
		fd_close(fd);
		return -1;
	}
	return fd;
}

/*
 * Starts a nonblocking connect to b's address, or failing that its next
 * addresses, then the next backends of its policy; err is why the last
 * attempt failed, if one did.  Returns 0 if a connect is under way, or
 * the bridge waits for a descriptor (BRIDGE_WAIT_FD on p->fdwait); -1
 * when nothing is left (the reason is recorded).
 */
static int
server_connect(struct tcpproxy *p, struct bridge *b, int err)
{
	for (;;) {
		struct backend *be = b->be;

		for (; b->addr < be->naddrs; b->addr++) {
			const struct addr *a = &be->addrs[b->addr];
			int fd;

			memcpy(b->server, a->name, sizeof(b->server));
			say(p, TCPPROXY_LOG_DEBUG, "connect id=%lu server=%s "
			    "backend=%s", b->id, a->name, be->name);
			if ((fd = socket_connect(b->svc, a)) >= 0) {
				b->fd[SERVER] = fd;
				b->state = BRIDGE_CONNECTING;
				timer_set(p, b, TIMER_CONNECT);
				return 0;
			}
			if (errno == EMFILE || errno == ENFILE) {
				/* Wait for a bridge to close; in line, if so. */
				if (b->timer != TIMER_FDWAIT)
					timer_set(p, b, TIMER_FDWAIT);
				b->state = BRIDGE_WAIT_FD;
				accept_pause(p, errno);
				return 0;
			}
			err = errno;
			say(p, TCPPROXY_LOG_DEBUG, "connect id=%lu server=%s: "
			    "%s", b->id, a->name, strerror(err));
		}
		backend_failed(p, b->svc, be, err);
		if (plan_next(p, b) == -1)
			break;
	}
	timer_unlink(p, b);
	/* No backend took the client: that, not its EOF, is why it ends. */
	b->reason = TCPPROXY_REASON_NONE;
	bridge_end(b, connect_reason(err), err == ETIMEDOUT ? 0 : err);
	b->rd[CLIENT] = b->wr[CLIENT] = b->rd[SERVER] = b->wr[SERVER] = 0;
	return -1;
}

/* Gives up on the address being tried and moves on. */
static void
server_retry(struct tcpproxy *p, struct bridge *b, int err)
{
	say(p, TCPPROXY_LOG_DEBUG, "connect id=%lu server=%s: %s", b->id,
	    b->server, strerror(err));
	fd_close(b->fd[SERVER]);
	b->fd[SERVER] = -1;
	b->addr++;
	(void)server_connect(p, b, err);
}

/*
 * Queues a PROXY header before the client's first bytes as a connect to
 * a backend succeeds, so that a retry sends a fresh one.  It carries the
 * addresses of the client's own header, or else of its socket.  The
 * flow kept room for it (flow_reserve).  Returns 0, or -1 out of memory.
 */
static int
proxy_queue(struct bridge *b)
{
	struct flow *f = &b->flow[CLIENT];
	struct sockaddr_storage peer, local;
	const struct sockaddr_storage *src = &peer, *dst = &local;
	unsigned char hdr[PROXY_HDR_MAX];
	socklen_t len;
	size_t n;

	if (b->origin != NULL) {
		src = &b->origin->src;
		dst = &b->origin->dst;
	} else {
		/* A failure leaves family 0: the header says UNKNOWN. */
		memset(&peer, 0, sizeof(peer));
		memset(&local, 0, sizeof(local));
		len = sizeof(peer);
		(void)getpeername(b->fd[CLIENT], (struct sockaddr *)&peer, &len);
		len = sizeof(local);
		(void)getsockname(b->fd[CLIENT], (struct sockaddr *)&local,
		    &len);
	}
	n = proxy_header(b->svc->send_proxy, src, dst, hdr);
	if (buf_take(b->svc, f) == -1)
		return -1;
	if (f->off < n) {
		memmove(f->buf + n, f->buf + f->off, f->len - f->off);
		f->len = f->len - f->off + n;
		f->off = n;
	}
	f->off -= n;
	memcpy(f->buf + f->off, hdr, n);
	b->hdr = (unsigned short)n;
	return 0;
}

/*
 * The server socket polled with events rev while connecting: did it
 * connect?  Where poll() tells (CONNECT_POLL_TELLS), only a POLLERR or
 * POLLHUP needs SO_ERROR read.
 */
static void
server_connected(struct tcpproxy *p, struct bridge *b, short rev)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if ((!CONNECT_POLL_TELLS || (rev & (POLLERR | POLLHUP))) &&
	    getsockopt(b->fd[SERVER], SOL_SOCKET, SO_ERROR, &err, &len) == -1)
		err = errno;
	if (err == EINPROGRESS)
		return;
	if (err != 0) {
		server_retry(p, b, err);
		return;
	}
	if (b->svc->send_proxy && proxy_queue(b) == -1) {
		bridge_end(b, TCPPROXY_REASON_NO_MEMORY, ENOMEM);
		b->rd[CLIENT] = b->rd[SERVER] = 0;
	}
	b->state = BRIDGE_OPEN;
	bridge_unprobe(b);
	backend_ok(p, b->svc, b->be);
	b->be->total++;
	timer_set(p, b, TIMER_IDLE);
	say(p, TCPPROXY_LOG_DEBUG, "connected id=%lu server=%s", b->id,
	    b->server);
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
	pfd = realloc(p->pfd, (p->base + 2 * cap) * sizeof(*pfd));
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
	/* Refused or empty: no open line, so no close line; but a client
	 * held by max_clients is closed for all to see. */
	if (!(b->flags & B_OPENED) && b->state != BRIDGE_QUEUED)
		return;
	say(p, TCPPROXY_LOG_INFO, "close id=%lu%s client=%s%s%s server=%s "
	    "up=%llu down=%llu duration=%.3f reason=%s%s backend=%s%s", b->id,
	    p->worker, b->client, b->origin != NULL ? " via=" : "",
	    b->origin != NULL ? b->origin->via : "", bridge_server(b),
	    b->flow[CLIENT].bytes,
	    b->flow[SERVER].bytes, (double)(p->now - b->start_ms) / 1000.0,
	    tcpproxy_reason_name(b->reason), err,
	    b->be != NULL ? b->be->name : "-", b->svc->tag);
	/* The first "echo hi | nc" gets nothing back: say why, once. */
	if (!p->hinted && b->reason == TCPPROXY_REASON_CLIENT_CLOSED &&
	    b->flow[SERVER].bytes == 0 && b->flow[CLIENT].bytes > 0 &&
	    !b->svc->half_close && p->cfg.verbosity >= TCPPROXY_LOG_DEBUG) {
		p->hinted = 1;
		say(p, TCPPROXY_LOG_DEBUG, "hint: id=%lu: the client's EOF "
		    "closed both sides before any reply; -H (--half-close) "
		    "passes it on and lets the reply through", b->id);
	}
}

/* Drops one bridge from a source's count, freeing the record at zero. */
static void
source_put(struct state *st, struct source *src)
{
	struct source **pp;

	if (--src->count > 0)
		return;
	for (pp = &st->sources[key_hash(src->key) % SOURCE_BUCKETS];
	    *pp != src; pp = &(*pp)->next)
		;
	*pp = src->next;
	free(src);
}

/* Returns the per-source record of key, creating it; NULL if OOM. */
static struct source *
source_get(struct state *st, const unsigned char key[KEY_LEN])
{
	unsigned int h = key_hash(key) % SOURCE_BUCKETS;
	struct source *s;

	if (st->sources == NULL &&
	    (st->sources = calloc(SOURCE_BUCKETS, sizeof(struct source *)))
	    == NULL)
		return NULL;
	for (s = st->sources[h]; s != NULL; s = s->next)
		if (memcmp(s->key, key, KEY_LEN) == 0)
			return s;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return NULL;
	memcpy(s->key, key, KEY_LEN);
	s->next = st->sources[h];
	st->sources[h] = s;
	return s;
}

/*
 * Closes both descriptors of b exactly once, tells the hook, and frees b;
 * the last bridge moves into its slot.
 */
static void
bridge_close(struct tcpproxy *p, struct bridge *b)
{
	const struct tcpproxy_hooks *h = p->cfg.hooks;
	struct service *svc = b->svc;
	struct state *st = svc->st;
	int s;

	bridge_end(b, TCPPROXY_REASON_SHUTDOWN, 0);
	bridge_log_close(p, b);
	if (h != NULL && h->on_close != NULL && (b->flags & B_ADMITTED)) {
		struct tcpproxy_bridge_info info;

		bridge_info(p, b, &info);
		h->on_close(h->user, b->hook_data, &info);
	}
	fd_close(b->fd[CLIENT]);
	fd_close(b->fd[SERVER]);
	for (s = CLIENT; s <= SERVER; s++) {
		flow_drop(p, svc, &b->flow[s]);
		st->bytes[s] += b->flow[s].bytes;
		if (b->be != NULL)
			b->be->bytes[s] += b->flow[s].bytes;
	}
	bridge_unprobe(b);
	if (b->be != NULL)
		b->be->open--;
	if (b->src != NULL)
		source_put(st, b->src);
	if (b->state == BRIDGE_QUEUED) {
		st->queued--;
	} else {
		st->open--;
		/* Its place goes to a held client, at a safe point. */
		if (st->queued > 0)
			p->queue_due = 1;
	}
	timer_unlink(p, b);
	throttle_unlink(p, b);
	fault_detach(p, b);
	free(b->origin);
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
	if (p->nbridges == 0)
		pipes_trim(p);
	/* Descriptors and a slot are free: waiters, then accepting. */
	if (p->fdwait.head != NULL)
		p->fd_freed = 1;
	if (p->accepting == ACCEPT_NOFD || st->full) {
		if (p->accepting == ACCEPT_NOFD)
			p->accepting = ACCEPT_ON;
		st->full = 0;
		listeners_update(p);
	}
	service_put(p, svc);
}

/* Returns whether flow[s] has nothing more to deliver. */
static int
flow_done(const struct bridge *b, int s)
{
	return !b->rd[s] && ((b->flow[s].buf == NULL &&
	    b->flow[s].pipe == 0) || !b->wr[!s]);
}

/*
 * Applies the close rules after anything happened to b, then projects
 * its state onto its pollfds.  Returns 1 if b was closed.
 */
static int
bridge_settle(struct tcpproxy *p, struct bridge *b)
{
	int s;

	if (b->fx != NULL)
		fault_settle(p, b);
	if (b->state == BRIDGE_OPEN && b->svc->half_close) {
		for (s = CLIENT; s <= SERVER; s++) {
			if (!flow_done(b, s) || !b->wr[!s])
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
	if (b->fx != NULL)
		fault_arm(p, b);
	return 0;
}

/* Returns whether an address key matches one access list entry. */
static int
acl_match(const struct acl *a, const unsigned char key[KEY_LEN],
    const char *text)
{
	unsigned int full = a->bits / 8, rest = a->bits % 8;

	if (a->glob != NULL)
		return glob_match(a->glob, text);
	if (key[0] != a->key[0] || memcmp(key + 1, a->key + 1, full) != 0)
		return 0;
	return rest == 0 || ((key[1 + full] ^ a->key[1 + full]) &
	    (0xff00 >> rest)) == 0;
}

/* Formats the bare address of a client name for patterns: "10.0.0.1". */
static void
acl_text(const char *client, const unsigned char key[KEY_LEN], char *text,
    size_t size)
{
	char *colon;

	snprintf(text, size, "%s", client[0] == '[' ? client + 1 : client);
	if ((colon = strrchr(text, client[0] == '[' ? ']' : ':')) != NULL)
		*colon = '\0';
	if (key[0] == 4 && strncmp(text, "::ffff:", 7) == 0)
		memmove(text, text + 7, strlen(text + 7) + 1);
}

/* Returns whether any of the n entries of an access list matches. */
static int
acl_any(const struct acl *list, size_t n, const unsigned char key[KEY_LEN],
    const char *text)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (acl_match(&list[i], key, text))
			return 1;
	return 0;
}

/*
 * Returns NULL if svc's access lists admit the client, else the reason:
 * "denied" (a deny entry matched) or "not-allowed" (no allow entry did),
 * rinetd's words.
 */
static const char *
acl_check(const struct service *svc, const unsigned char key[KEY_LEN],
    const char *client)
{
	char text[ADDR_NAME_MAX];

	if (svc->nallow + svc->ndeny == 0)
		return NULL;
	acl_text(client, key, text, sizeof(text));
	if (acl_any(svc->acl + svc->nallow, svc->ndeny, key, text))
		return "denied";
	if (svc->nallow == 0 || acl_any(svc->acl, svc->nallow, key, text))
		return NULL;
	return "not-allowed";
}

/* Returns whether the peer of b may send a PROXY header (--proxy-from). */
static int
proxy_trusted(const struct bridge *b)
{
	char text[ADDR_NAME_MAX];

	if (b->svc->ntrusted == 0)
		return 1;
	acl_text(b->client, b->key, text, sizeof(text));
	return b->key[0] != 0 && acl_any(b->svc->trusted, b->svc->ntrusted,
	    b->key, text);
}

/*
 * The admit stage: access lists, then max_per_source, then the on_accept
 * hook.  Returns NULL to admit b, or the reason for refusing it.
 */
static const char *
bridge_admit(struct tcpproxy *p, struct bridge *b, const struct sockaddr *sa,
    socklen_t salen)
{
	const struct tcpproxy_hooks *h = p->cfg.hooks;
	struct service *svc = b->svc;
	const char *why;

	if ((why = acl_check(svc, b->key, b->client)) != NULL)
		return why;
	if (svc->max_per_source > 0) {
		struct source *src = source_get(svc->st, b->key);

		if (src == NULL)
			return "no-memory";
		if (src->count >= svc->max_per_source) {
			if (src->count == 0)
				source_put(svc->st, src);
			return "max-per-source";
		}
		src->count++;
		b->src = src;
	}
	if (h != NULL && h->on_accept != NULL) {
		struct tcpproxy_bridge_info info;

		bridge_info(p, b, &info);
		info.client = sa;
		info.client_len = salen;
		if (h->on_accept(h->user, &info, &b->hook_data) !=
		    TCPPROXY_PASS)
			return "hook";
	}
	b->flags |= B_ADMITTED;
	return NULL;
}

/* Logs that b is refused and why, and tells the on_refuse hook. */
static void
refuse_log(struct tcpproxy *p, struct bridge *b, const char *why,
    const struct sockaddr *sa, socklen_t salen)
{
	const struct tcpproxy_hooks *h = p->cfg.hooks;

	say(p, TCPPROXY_LOG_INFO, "refuse id=%lu client=%s%s%s reason=%s%s",
	    b->id, b->client, b->origin != NULL ? " via=" : "",
	    b->origin != NULL ? b->origin->via : "", why, b->svc->tag);
	b->svc->st->refused++;
	if (h != NULL && h->on_refuse != NULL) {
		struct tcpproxy_bridge_info info;

		bridge_info(p, b, &info);
		info.client = sa;
		info.client_len = salen;
		h->on_refuse(h->user, &info, why);
	}
}

/*
 * Chooses b's backend and starts connecting: the end of the admit and
 * preamble stages.  sni is the server name the client asked for, or
 * NULL.  Returns 1 if b was closed.
 */
static int
bridge_start(struct tcpproxy *p, struct bridge *b, const char *sni)
{
	struct service *svc = b->svc;
	long long delay;

	b->nth = ++svc->st->total;
	b->state = BRIDGE_CONNECTING;	/* server_connect says what it is */
	timer_unlink(p, b);
	if (svc->faults != NULL)
		faults_admit(p, b);
	/* The policy's choice, or if it is down the next usable one. */
	b->start = plan_start(p, svc, b);
	(void)plan_next(p, b);
	memcpy(b->server, b->be->addrs[0].name, sizeof(b->server));
	b->flags |= B_OPENED;
	say(p, TCPPROXY_LOG_INFO, "open id=%lu%s client=%s%s%s server=%s%s%s%s",
	    b->id, p->worker, b->client, b->origin != NULL ? " via=" : "",
	    b->origin != NULL ? b->origin->via : "", bridge_server(b),
	    sni != NULL ? " sni=" : "", sni != NULL ? sni : "", svc->tag);
	if (b->fx != NULL && (delay = fault_connect_delay(p, b)) > 0) {
		/* The client waits, its bytes kept, until fault_tick. */
		b->fx->connect_at = p->now + delay;
		return bridge_settle(p, b);
	}
	/* Out of descriptors, it waits; it fails only with no backend. */
	if (server_connect(p, b, 0) == -1) {
		bridge_close(p, b);
		return 1;
	}
	return bridge_settle(p, b);
}

/*
 * Refuses b, a bridge still in PREAMBLE, for the reason why (logged
 * unless NULL: an empty connection, a load balancer's plain check, is
 * not worth a line), and closes it.
 */
static void
bridge_refuse(struct tcpproxy *p, struct bridge *b, const char *why)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (why != NULL) {
		if (getpeername(b->fd[CLIENT], (struct sockaddr *)&ss, &len) ==
		    -1)
			len = 0;
		refuse_log(p, b, why, len > 0 ? (struct sockaddr *)&ss : NULL,
		    len);
	} else {
		say(p, TCPPROXY_LOG_DEBUG, "empty id=%lu client=%s%s", b->id,
		    b->client, b->svc->tag);
	}
	bridge_end(b, TCPPROXY_REASON_CLIENT_CLOSED, 0);
	bridge_close(p, b);
}

/* Returns the most bytes a preamble may take in b's client buffer. */
static size_t
preamble_limit(const struct tcpproxy *p, const struct bridge *b)
{
	/* With a data hook, what follows the preamble is its first chunk,
	 * which may be at most half the buffer. */
	size_t size = hooked(p) ? b->svc->bufsize / 2 : b->svc->bufsize;

	return size - flow_reserve(b, CLIENT);
}

/*
 * The client's PROXY header is complete: takes its addresses as the
 * client's (the peer becomes via=) and drops it from the buffer.
 * Returns 0, or -1 out of memory.
 */
static int
preamble_proxy(struct bridge *b, const struct proxy_hdr *h)
{
	struct flow *f = &b->flow[CLIENT];

	f->off += h->len;
	f->taken -= h->len;
	memmove(f->buf, f->buf + f->off, f->len - f->off);
	f->len -= f->off;
	f->off = 0;
	if (h->local)
		return 0;
	if ((b->origin = calloc(1, sizeof(*b->origin))) == NULL)
		return -1;
	b->origin->src = h->src;
	b->origin->srclen = h->srclen;
	b->origin->dst = h->dst;
	memcpy(b->origin->via, b->client, sizeof(b->origin->via));
	(void)addr_key((const struct sockaddr *)&h->src, b->key);
	addr_name((const struct sockaddr *)&h->src, h->srclen, b->client,
	    sizeof(b->client));
	return 0;
}

/*
 * The preamble is over: what the client sent after it is its first
 * chunk, which the data hook sees and --max-bytes counts like any other.
 */
static void
preamble_payload(struct tcpproxy *p, struct bridge *b)
{
	struct service *svc = b->svc;
	struct flow *f = &b->flow[CLIENT];
	size_t len = f->len;

	if (len == 0) {
		buf_give(svc, f);
		return;
	}
	if (svc->max_bytes > 0 && f->taken >= svc->max_bytes) {
		len -= (size_t)(f->taken - svc->max_bytes);
		f->taken = svc->max_bytes;
	}
	if (hooked(p))
		len = flow_hook(p, b, CLIENT, 0, len, 0);
	f->len = len;
	if (svc->max_bytes > 0 && f->taken == svc->max_bytes) {
		bridge_end(b, TCPPROXY_REASON_MAX_BYTES, 0);
		side_eof(p, b, CLIENT);
	}
	if (f->len == 0)
		buf_give(svc, f);
}

/*
 * Parses what b's client sent so far: its PROXY header, then its TLS
 * ClientHello.  With final, no more bytes will come (EOF, the preamble
 * timeout).  Returns 1 if b was closed.
 */
static int
preamble_parse(struct tcpproxy *p, struct bridge *b, int final)
{
	struct service *svc = b->svc;
	struct flow *f = &b->flow[CLIENT];
	const unsigned char *buf = (const unsigned char *)f->buf;
	char name[256] = "";
	const char *why;

	if (b->flags & B_PROXY) {
		struct proxy_hdr h;
		int r = proxy_parse(buf, f->len, preamble_limit(p, b), &h);

		if (r == PRE_MORE && !final)
			return bridge_settle(p, b);
		if (r != PRE_DONE) {
			bridge_refuse(p, b, f->len == 0 ? NULL : r == PRE_MORE ?
			    "proxy-truncated" : h.why);
			return 1;
		}
		b->flags &= (unsigned char)~B_PROXY;
		if (preamble_proxy(b, &h) == -1) {
			bridge_refuse(p, b, "no-memory");
			return 1;
		}
		if ((why = bridge_admit(p, b, b->origin != NULL ?
		    (const struct sockaddr *)&b->origin->src : NULL,
		    b->origin != NULL ? b->origin->srclen : 0)) != NULL) {
			bridge_refuse(p, b, why);
			return 1;
		}
	}
	if (b->flags & B_SNI) {
		size_t i;
		int r = sni_parse(buf, f->len, preamble_limit(p, b), name,
		    sizeof(name));

		if (r == PRE_MORE && !final)
			return bridge_settle(p, b);
		if (r != PRE_DONE)
			name[0] = '\0';	/* not TLS, or not readable: no name */
		for (i = 0; name[0] != '\0' && i < svc->nroutes; i++)
			if (sni_match(svc->routes[i], name)) {
				b->route = (unsigned short)(i + 1);
				break;
			}
		b->flags &= (unsigned char)~B_SNI;
	}
	if (f->buf != NULL)
		preamble_payload(p, b);
	return bridge_start(p, b, name[0] != '\0' ? name : NULL);
}

/*
 * Reads what b's client sent while b is in PREAMBLE, into its buffer,
 * and parses it.  Returns 1 if b was closed.
 */
static int
preamble_read(struct tcpproxy *p, struct bridge *b)
{
	struct flow *f = &b->flow[CLIENT];
	size_t limit = preamble_limit(p, b);
	ssize_t n;

	if (b->flags & B_HANG) {
		char sink[4096];

		n = recv(b->fd[CLIENT], sink, sizeof(sink), 0);
		if (n > 0 || (n < 0 && (errno == EINTR || WOULD_BLOCK(errno))))
			return bridge_settle(p, b);
		bridge_refuse(p, b, NULL);
		return 1;
	}
	if (buf_take(b->svc, f) == -1) {
		bridge_refuse(p, b, "no-memory");
		return 1;
	}
	/* A parser that wanted more had fewer than limit bytes. */
	n = recv(b->fd[CLIENT], f->buf + f->len, limit - f->len, 0);
	if (n < 0) {
		if (errno == EINTR || WOULD_BLOCK(errno)) {
			if (f->len == 0)
				buf_give(b->svc, f);
			return bridge_settle(p, b);
		}
		say(p, TCPPROXY_LOG_DEBUG, "preamble id=%lu client=%s: %s",
		    b->id, b->client, strerror(errno));
		bridge_refuse(p, b, NULL);
		return 1;
	}
	if (n == 0) {
		if (f->len == 0) {
			bridge_refuse(p, b, NULL);
			return 1;
		}
		side_eof(p, b, CLIENT);
		return preamble_parse(p, b, 1);
	}
	f->len += (size_t)n;
	f->taken += (unsigned long long)n;
	return preamble_parse(p, b, 0);
}

/*
 * Begins an admitted bridge that has a place under max_clients: counts
 * it open, then reads its preamble if its service wants one, or starts
 * connecting at once.
 */
static void
bridge_begin(struct tcpproxy *p, struct bridge *b)
{
	b->svc->st->open++;
	if (b->flags & (B_PROXY | B_SNI)) {
		b->state = BRIDGE_PREAMBLE;
		timer_set(p, b, TIMER_PREAMBLE);
		/* A held client may have sent it already. */
		if (b->flow[CLIENT].buf != NULL)
			(void)preamble_parse(p, b, 0);
		else
			(void)bridge_settle(p, b);
		return;
	}
	(void)bridge_start(p, b, NULL);
}

/*
 * Opens a bridge for a client freshly accepted by listener l, to be held
 * (queued) or begun at once; on any failure the client's connection is
 * closed.  A service that reads a preamble admits the client once it has
 * read the PROXY header (whose address is then the client's), and
 * connects once it knows the route.
 */
static void
bridge_open(struct tcpproxy *p, struct listener *l, int cfd,
    const struct sockaddr *sa, socklen_t salen, int queued)
{
	struct service *svc = l->svc;
	struct bridge *b;
	const char *why = NULL;

	if (sock_prepare(svc->keepalive, cfd, 1) == -1 || table_grow(p) == -1 ||
	    (b = calloc(1, sizeof(*b) + (svc->nbackends + 7) / 8)) == NULL) {
		say(p, TCPPROXY_LOG_ERROR, "accept: %s", strerror(errno));
		fd_close(cfd);
		return;
	}
	b->fd[CLIENT] = cfd;
	b->fd[SERVER] = -1;
	b->rd[CLIENT] = b->rd[SERVER] = b->wr[CLIENT] = b->wr[SERVER] = 1;
	b->timer = TIMER_NONE;
	b->start_ms = b->last = p->now;
	b->flow[CLIENT].tokens = b->flow[SERVER].tokens = svc->burst;
	b->flow[CLIENT].stamp = b->flow[SERVER].stamp = p->now;
	b->id = ++p->next_id;
	b->svc = svc;
	(void)addr_key(sa, b->key);
	addr_name(sa, salen, b->client, sizeof(b->client));
	if (svc->down == DOWN_RESET) {
		struct linger lg;

		/* Down as reset: accepted, then reset at once. */
		lg.l_onoff = 1;
		lg.l_linger = 0;
		(void)setsockopt(cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		why = "down-reset";
	} else if (svc->down == DOWN_HANG) {
		b->flags |= B_HANG;
	} else if (svc->accept_proxy) {
		b->flags |= B_PROXY;
		if (!proxy_trusted(b))
			why = "proxy-untrusted";
	} else {
		why = bridge_admit(p, b, sa, salen);
	}
	if (why != NULL) {
		refuse_log(p, b, why, sa, salen);
		if (b->src != NULL)
			source_put(svc->st, b->src);
		fd_close(cfd);
		free(b);
		return;
	}
	if (svc->nroutes > 0 && !(b->flags & B_HANG))
		b->flags |= B_SNI;
	svc->refs++;
	b->slot = p->nbridges++;
	p->tab[b->slot] = b;
	b->active = p->now;
	bridge_heat(p, b);
	if (b->flags & B_HANG) {
		/* Down as hang: a black hole that reads and drops. */
		svc->st->open++;
		b->nth = ++svc->st->total;
		say(p, TCPPROXY_LOG_INFO, "hang id=%lu%s client=%s%s", b->id,
		    p->worker, b->client, svc->tag);
		b->state = BRIDGE_PREAMBLE;
		snprintf(b->server, sizeof(b->server), "-");
		(void)bridge_settle(p, b);
		return;
	}
	if (queued) {
		/* Its turn comes with a place (queue_serve) or its timeout. */
		b->state = BRIDGE_QUEUED;
		snprintf(b->server, sizeof(b->server), "-");
		svc->st->queued++;
		timer_set(p, b, TIMER_QUEUE);
		say(p, TCPPROXY_LOG_DEBUG, "queue id=%lu%s client=%s%s", b->id,
		    p->worker, b->client, svc->tag);
		(void)bridge_settle(p, b);
		return;
	}
	bridge_begin(p, b);
}

/* ---- faults: the grammar ---- */

/*
 * A fault is one shell word, the same on the command line, in a config
 * file and over the control socket: ACTION[=ARG][,KEY=VALUE]...  Parsed
 * here, once, into a record its service keeps; bridges point at the
 * records that apply to them.
 */
static const char *const down_modes[DOWN_NMODES] = {
	"up", "refuse", "hang", "reset", "timeout"
};

static const char *const fault_actions[F_NACTIONS] = {
	"delay", "ttfb", "rate", "slice", "close", "halfclose", "reset",
	"timeout", "stall", "drop", "corrupt", "slowclose", "connect-delay"
};

/* Parses a time: seconds, or a number with us, ms or s; ms into *ms. */
static int
fault_time(const char *s, long long *ms)
{
	char *end;
	double v, scale = 1000;

	if (*s < '0' || *s > '9')
		return -1;
	v = strtod(s, &end);
	if (strcmp(end, "us") == 0)
		scale = 0.001;
	else if (strcmp(end, "ms") == 0)
		scale = 1;
	else if (strcmp(end, "s") != 0 && *end != '\0')
		return -1;
	if (!(v >= 0) || v * scale > 1e12)
		return -1;
	/* Rounded up: a delay is never shorter than asked. */
	*ms = (long long)(v * scale);
	if ((double)*ms < v * scale)
		(*ms)++;
	return 0;
}

/* Parses a byte count in digits with an optional k, m or g; 0 or -1. */
static int
fault_size(const char *s, unsigned long long *n)
{
	char *end;
	unsigned long long v, mul = 1;

	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0)
		return -1;
	if (*end == 'k' || *end == 'K')
		mul = 1024;
	else if (*end == 'm' || *end == 'M')
		mul = 1024 * 1024;
	else if (*end == 'g' || *end == 'G')
		mul = 1024 * 1024 * 1024;
	if (mul > 1)
		end++;
	if (*end != '\0' || v > (1ULL << 50) / mul)
		return -1;
	*n = v * mul;
	return 0;
}

/* Parses a probability, 0..1; 0 or -1. */
static int
fault_prob(const char *s, double *p)
{
	char *end;

	if ((*s < '0' || *s > '9') && *s != '.')
		return -1;
	*p = strtod(s, &end);
	return *end == '\0' && *p >= 0 && *p <= 1 ? 0 : -1;
}

/* Parses conn=N, N-M or N+ into [*lo, *hi]; 0 or -1. */
static int
fault_conns(const char *s, unsigned long *lo, unsigned long *hi)
{
	char *end;

	if (*s < '1' || *s > '9')
		return -1;
	*lo = *hi = strtoul(s, &end, 10);
	if (*end == '+' && end[1] == '\0') {
		*hi = ULONG_MAX;
		return 0;
	}
	if (*end == '-') {
		if (end[1] < '1' || end[1] > '9')
			return -1;
		*hi = strtoul(end + 1, &end, 10);
	}
	return *end == '\0' && *hi >= *lo ? 0 : -1;
}

/* Returns a 64-bit hash of a string (FNV-1a), for random choices. */
static unsigned long long
str_hash(const char *s)
{
	unsigned long long h = 14695981039346656037ULL;

	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

/*
 * Parses the value of one key of a fault; a key the action does not take
 * is an error.  Returns 0, or -1 with the reason in err.
 */
static int
fault_key(struct fault *f, const char *key, const char *val, char *err,
    size_t errlen)
{
	int a = f->action;

	if (strcmp(key, "dir") == 0) {
		if (strcmp(val, "up") == 0)
			f->dirs = 1u << CLIENT;
		else if (strcmp(val, "down") == 0)
			f->dirs = 1u << SERVER;
		else if (strcmp(val, "both") == 0)
			f->dirs = 3;
		else
			goto bad;
	} else if (strcmp(key, "p") == 0) {
		if (fault_prob(val, &f->p) == -1)
			goto bad;
	} else if (strcmp(key, "conn") == 0) {
		if (fault_conns(val, &f->conn_lo, &f->conn_hi) == -1)
			goto bad;
	} else if (strcmp(key, "after") == 0) {
		long long ms;

		if (fault_size(val, &f->after) == 0) {
			f->after_time = 0;
		} else if (fault_time(val, &ms) == 0 && *val != '\0' &&
		    val[strlen(val) - 1] == 's') {
			f->after_time = 1;
			f->after = (unsigned long long)ms;
		} else {
			return failed(err, errlen, EINVAL, "invalid after '%s' "
			    "in fault '%s': bytes (100, 4k), or a time with its "
			    "unit (500ms, 2s)", val, fault_actions[a]);
		}
	} else if (strcmp(key, "for") == 0) {
		if (fault_time(val, &f->for_ms) == -1 || f->for_ms == 0)
			goto bad;
	} else if (strcmp(key, "name") == 0) {
		if (*val == '\0' || strlen(val) >= sizeof(f->name) ||
		    val[strspn(val, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"
		    "OPQRSTUVWXYZ0123456789-_.")] != '\0')
			goto bad;
		snprintf(f->name, sizeof(f->name), "%s", val);
		f->named = 1;
	} else if (strcmp(key, "jitter") == 0 && a == F_DELAY) {
		if (fault_time(val, &f->jitter_ms) == -1)
			goto bad;
	} else if (strcmp(key, "gap") == 0 && a == F_SLICE) {
		if (fault_time(val, &f->gap_ms) == -1)
			goto bad;
	} else {
		return failed(err, errlen, EINVAL, "unknown key '%s' for "
		    "fault '%s'", key, fault_actions[a]);
	}
	return 0;
bad:
	return failed(err, errlen, EINVAL, "invalid %s '%s' in fault '%s'",
	    key, val, fault_actions[a]);
}

/* Parses the ARG of ACTION=ARG into f; 0 or -1 with the reason in err. */
static int
fault_arg(struct fault *f, const char *arg, char *err, size_t errlen)
{
	int ok = 0;

	switch (f->action) {
	case F_DELAY: case F_TTFB: case F_TIMEOUT: case F_SLOWCLOSE:
	case F_CONNECT_DELAY:
		ok = arg != NULL && fault_time(arg, &f->t_ms) == 0;
		break;
	case F_RESET:
		ok = arg == NULL || fault_time(arg, &f->t_ms) == 0;
		break;
	case F_RATE: case F_SLICE:
		ok = arg != NULL && fault_size(arg, &f->n) == 0 && f->n > 0;
		break;
	case F_CLOSE: case F_HALFCLOSE:
		ok = arg != NULL && fault_size(arg, &f->n) == 0;
		break;
	case F_CORRUPT:
		if (arg != NULL && strncmp(arg, "p=", 2) == 0)
			ok = fault_prob(arg + 2, &f->prob) == 0 && f->prob > 0;
		else
			ok = arg != NULL && fault_size(arg, &f->n) == 0;
		break;
	default:	/* stall, drop */
		ok = arg == NULL;
		break;
	}
	if (ok)
		return 0;
	if (arg == NULL)
		return failed(err, errlen, EINVAL, "fault '%s' needs a value",
		    fault_actions[f->action]);
	return failed(err, errlen, EINVAL, "invalid value '%s' for fault "
	    "'%s'", arg, fault_actions[f->action]);
}

/*
 * Parses a fault spec into f.  Returns 0, or -1 with a message naming
 * the word at fault in err.
 */
static int
fault_parse(const char *spec, struct fault *f, char *err, size_t errlen)
{
	char buf[256], *item, *next, *eq;
	int first = 1;

	memset(f, 0, sizeof(*f));
	f->dirs = 3;
	f->p = 1;
	f->prob = -1;
	f->conn_lo = 1;
	f->conn_hi = ULONG_MAX;
	if (strlen(spec) >= sizeof(buf))
		return failed(err, errlen, EINVAL, "fault '%.40s...' is too "
		    "long", spec);
	snprintf(buf, sizeof(buf), "%s", spec);
	snprintf(f->spec, sizeof(f->spec), "%s", spec);
	for (item = buf; item != NULL; item = next, first = 0) {
		if ((next = strchr(item, ',')) != NULL)
			*next++ = '\0';
		if ((eq = strchr(item, '=')) != NULL)
			*eq++ = '\0';
		if (first) {
			for (f->action = 0; f->action < F_NACTIONS; f->action++)
				if (strcmp(item, fault_actions[f->action]) == 0)
					break;
			if (f->action == F_NACTIONS)
				return failed(err, errlen, EINVAL, "unknown "
				    "fault '%s'", item);
			/* corrupt=p=0.1: the value has an '=' of its own. */
			if (fault_arg(f, eq, err, errlen) == -1)
				return -1;
			continue;
		}
		if (eq == NULL)
			return failed(err, errlen, EINVAL, "'%s' in fault '%s' "
			    "is not KEY=VALUE", item, fault_actions[f->action]);
		if (fault_key(f, item, eq, err, errlen) == -1)
			return -1;
	}
	if (f->name[0] == '\0')
		snprintf(f->name, sizeof(f->name), "%s",
		    fault_actions[f->action]);
	if (f->prob < 0)
		f->prob = 0;
	f->key = str_hash(f->name);
	return 0;
}

/* Returns the fault called name in the list at head (up to stop). */
static struct fault *
fault_find(struct fault *head, const struct fault *stop, const char *name)
{
	for (; head != NULL && head != stop; head = head->next)
		if (!head->dead && strcmp(head->name, name) == 0)
			return head;
	return NULL;
}

/*
 * Gives f a name no fault before it in the list at head has (all of the
 * list if f is not in it): a name made up from
 * its action gets "#2", "#3"...  Returns 0, or -1 for a name= taken.
 */
static int
fault_name_unique(struct fault *head, struct fault *f)
{
	char base[sizeof(f->name)];
	unsigned long k;

	if (fault_find(head, f, f->name) == NULL)
		return 0;
	if (f->named)
		return -1;
	snprintf(base, sizeof(base), "%s", f->name);
	for (k = 2; fault_find(head, f, f->name) != NULL; k++)
		snprintf(f->name, sizeof(f->name), "%.30s#%lu", base, k);
	f->key = str_hash(f->name);
	return 0;
}

/*
 * Names the faults of a list uniquely, in order.  Returns NULL, or the
 * first whose name= an earlier one has.
 */
static struct fault *
faults_name(struct fault *head)
{
	struct fault *f;

	for (f = head; f != NULL; f = f->next)
		if (fault_name_unique(head, f) == -1)
			return f;
	return NULL;
}

/* ---- faults: the stages ---- */

/*
 * A bridge of a service with faults gets a fault state (b->fx): which of
 * its service's faults apply to it (decided once, when it is admitted or
 * when the fault is added), and what they hold: the release times of
 * delayed chunks, slices' next times, an EOF held back.  The relay asks
 * it at four points (how much may be read, what a chunk becomes, how
 * much may be written, what happens at the end), each behind one test of
 * b->fx, so a service with no fault pays nothing else.  Every deadline
 * of a bridge's faults is one entry of the engine's min-heap.
 */

/* splitmix64: the generator of every random choice, the same anywhere. */
static unsigned long long
mix64(unsigned long long x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/*
 * Returns a number in [0, 1) drawn from (seed, fault, bridge, direction,
 * count): the same traffic and seed give the same choices, whatever the
 * order events interleave in.
 */
static double
fault_draw(const struct tcpproxy *p, const struct fault *f,
    unsigned long nth, int s, unsigned long long count)
{
	unsigned long long x = mix64(p->fault_seed ^ mix64(f->key ^
	    mix64(nth ^ mix64(((unsigned long long)s << 60) ^ count))));

	return (double)(x >> 11) / 9007199254740992.0;
}

/* Returns the heap slot's bridge deadline. */
static long long
heap_due(const struct tcpproxy *p, size_t i)
{
	return p->heap[i]->fx->due;
}

/* Swaps two heap slots. */
static void
heap_swap(struct tcpproxy *p, size_t i, size_t j)
{
	struct bridge *t = p->heap[i];

	p->heap[i] = p->heap[j];
	p->heap[j] = t;
	p->heap[i]->fx->hidx = i;
	p->heap[j]->fx->hidx = j;
}

/* Restores the heap order around slot i. */
static void
heap_fix(struct tcpproxy *p, size_t i)
{
	while (i > 0 && heap_due(p, (i - 1) / 2) > heap_due(p, i)) {
		heap_swap(p, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
	for (;;) {
		size_t l = 2 * i + 1, m = i;

		if (l < p->nheap && heap_due(p, l) < heap_due(p, m))
			m = l;
		if (l + 1 < p->nheap && heap_due(p, l + 1) < heap_due(p, m))
			m = l + 1;
		if (m == i)
			return;
		heap_swap(p, i, m);
		i = m;
	}
}

/* Takes b's deadline off the heap. */
static void
heap_del(struct tcpproxy *p, struct bridge *b)
{
	size_t i = b->fx->hidx;

	if (i == NO_SLOT)
		return;
	b->fx->hidx = NO_SLOT;
	if (--p->nheap == i)
		return;
	p->heap[i] = p->heap[p->nheap];
	p->heap[i]->fx->hidx = i;
	heap_fix(p, i);
}

/* Puts b on the heap at deadline when (LLONG_MAX: none); 0 or -1. */
static int
heap_set(struct tcpproxy *p, struct bridge *b, long long when)
{
	struct faults *fx = b->fx;

	if (when == LLONG_MAX) {
		heap_del(p, b);
		fx->due = when;
		return 0;
	}
	fx->due = when;
	if (fx->hidx != NO_SLOT) {
		heap_fix(p, fx->hidx);
		return 0;
	}
	if (p->nheap == p->heapcap) {
		size_t cap = p->heapcap ? 2 * p->heapcap : 64;
		struct bridge **h = realloc(p->heap,
		    cap * sizeof(struct bridge *));

		if (h == NULL)
			return -1;
		p->heap = h;
		p->heapcap = cap;
	}
	p->heap[p->nheap] = b;
	fx->hidx = p->nheap++;
	heap_fix(p, fx->hidx);
	return 0;
}

/* Drops a reference to a fault record, freeing it with the last. */
static void
fault_put(struct fault *f)
{
	if (f != NULL && --f->refs == 0)
		free(f);
}

/* The word for a direction of flow[s] in logs. */
static const char *
dir_name(int s)
{
	return s == CLIENT ? "up" : "down";
}

/* Logs that fault k of b acts on flow[s] at that byte offset. */
static void
fault_log(struct tcpproxy *p, struct bridge *b, struct bfault *bf, int s,
    unsigned long long offset)
{
	bf->f->fired++;
	say(p, TCPPROXY_LOG_INFO, "fault id=%lu name=%s action=%s dir=%s "
	    "offset=%llu%s", b->id, bf->f->name, fault_actions[bf->f->action],
	    s < 0 ? "both" : dir_name(s), offset, b->svc->tag);
}

/* Logs fault bf's first act on flow[s] of b: a per-chunk fault's line. */
static void
fault_first(struct tcpproxy *p, struct bridge *b, struct bfault *bf, int s,
    unsigned long long offset)
{
	if (bf->acted & (1u << s))
		return;
	bf->acted |= (unsigned char)(1u << s);
	fault_log(p, b, bf, s, offset);
}

/*
 * Returns when fault bf of b starts acting on flow[s] (LLONG_MAX: not
 * yet, since it waits for bytes), or LLONG_MIN when it never will (off,
 * deleted, or its for= time is over).
 */
static long long
fault_start(const struct tcpproxy *p, const struct bridge *b,
    const struct bfault *bf, int s)
{
	const struct fault *f = bf->f;
	long long t;

	if (!bf->on || f->dead || (s >= 0 && !(f->dirs & (1u << s))))
		return LLONG_MIN;
	if (f->after_time)
		t = b->start_ms + (long long)f->after;
	else if (f->after == 0)
		t = b->start_ms;
	else if (s >= 0 && b->fx->queued[s] >= f->after)
		t = bf->started[s] != 0 ? bf->started[s] : p->now;
	else
		return LLONG_MAX;
	if (f->for_ms > 0 && p->now >= t + f->for_ms)
		return LLONG_MIN;
	return t;
}

/* Returns whether fault bf acts on flow[s] of b now. */
static int
fault_on(struct tcpproxy *p, struct bridge *b, struct bfault *bf, int s)
{
	long long t = fault_start(p, b, bf, s);

	if (t == LLONG_MIN || t == LLONG_MAX || t > p->now)
		return 0;
	if (s >= 0 && bf->started[s] == 0)
		bf->started[s] = t;
	return 1;
}

/*
 * Gives b a fault state with the faults of its service that apply to it:
 * p and conn= are decided here, once.  Returns 0, or -1 out of memory.
 */
static int
fault_attach(struct tcpproxy *p, struct bridge *b, struct fault *f)
{
	struct faults *fx = b->fx;
	struct bfault *bf;
	int s;

	if (fx != NULL && fx->n == fx->cap && fx->cap < FAULT_MAX) {
		/* The heap holds the bridge, not its fault state: it may move. */
		size_t cap = 2 * fx->cap < FAULT_MAX ? 2 * fx->cap : FAULT_MAX;

		if ((fx = realloc(fx, sizeof(*fx) + cap * sizeof(fx->f[0]))) ==
		    NULL)
			return -1;
		fx->cap = cap;
		b->fx = fx;
	}
	if (fx == NULL) {
		struct fault *g;
		size_t cap = 0;

		/* Room for the faults of its service, as they are now. */
		for (g = b->svc->faults; g != NULL; g = g->next)
			cap++;
		if (cap < 2)
			cap = 2;
		if (cap > FAULT_MAX)
			cap = FAULT_MAX;
		if ((fx = calloc(1, sizeof(*fx) + cap * sizeof(fx->f[0]))) ==
		    NULL)
			return -1;
		fx->cap = cap;
		fx->nth = b->nth;
		fx->hidx = NO_SLOT;
		fx->due = LLONG_MAX;
		/* What it holds was accepted before: free to go. */
		for (s = CLIENT; s <= SERVER; s++) {
			fx->queued[s] = b->flow[s].bytes + (b->flow[s].len -
			    b->flow[s].off);
			if (b->flow[s].pipe != 0)
				fx->queued[s] += p->pipes[b->flow[s].pipe -
				    1].len;
			fx->released[s] = fx->queued[s];
		}
		b->fx = fx;
	}
	if (fx->n == FAULT_MAX)
		return 0;	/* documented: the first FAULT_MAX apply */
	bf = &fx->f[fx->n++];
	memset(bf, 0, sizeof(*bf));
	bf->f = f;
	f->refs++;
	bf->on = fx->nth >= f->conn_lo && fx->nth <= f->conn_hi &&
	    (f->p >= 1 || fault_draw(p, f, fx->nth, 0, 0) < f->p);
	return 0;
}

/* Frees b's fault state. */
static void
fault_detach(struct tcpproxy *p, struct bridge *b)
{
	size_t k;

	if (b->fx == NULL)
		return;
	heap_del(p, b);
	for (k = 0; k < b->fx->n; k++)
		fault_put(b->fx->f[k].f);
	free(b->fx);
	b->fx = NULL;
}

/* Gives a freshly admitted bridge the faults of its service. */
static void
faults_admit(struct tcpproxy *p, struct bridge *b)
{
	struct fault *f;

	for (f = b->svc->faults; f != NULL; f = f->next)
		if (fault_attach(p, b, f) == -1) {
			say(p, TCPPROXY_LOG_ERROR, "fault id=%lu: out of memory",
			    b->id);
			return;
		}
}

/*
 * The room stage: how much flow[s] may read now, at most room.  A stall
 * reads nothing, close= and halfclose= read no more than they deliver, a
 * rate fault meters reads, held chunks fill the marks.
 */
static size_t
fault_room(struct tcpproxy *p, struct bridge *b, int s, size_t room)
{
	struct faults *fx = b->fx;
	size_t k;

	if (fx->mlen[s] == FAULT_MARKS || fx->eof_at[s] != 0)
		return 0;
	for (k = 0; k < fx->n && room > 0; k++) {
		struct bfault *bf = &fx->f[k];
		const struct fault *f = bf->f;

		if (f->action == F_CLOSE || f->action == F_HALFCLOSE) {
			/* The cap counts from the start, whenever it began. */
			if (fault_start(p, b, bf, s) == LLONG_MIN)
				continue;
			if (fx->queued[s] >= f->n)
				room = 0;
			else if (room > f->n - fx->queued[s])
				room = (size_t)(f->n - fx->queued[s]);
			continue;
		}
		if (!fault_on(p, b, bf, s))
			continue;
		if (f->action == F_STALL) {
			fault_first(p, b, bf, s, fx->queued[s]);
			room = 0;
		} else if (f->action == F_RATE) {
			double burst = (double)f->n / 20;

			if (burst > (double)b->svc->bufsize)
				burst = (double)b->svc->bufsize;
			if (bf->stamp[s] == 0) {
				bf->stamp[s] = p->now;
				bf->tokens[s] = burst < 1 ? 1 : burst;
			}
			fault_first(p, b, bf, s, fx->queued[s]);
			room = bucket_allow(p, b, s, &bf->tokens[s],
			    &bf->stamp[s], (double)f->n, burst < 1 ? 1 : burst,
			    room);
		}
	}
	return room;
}

/* Returns whether flow[s] of b may be read at all now (for want()). */
static int
fault_readable(struct tcpproxy *p, struct bridge *b, int s)
{
	return fault_room(p, b, s, 1) > 0 || b->flow[s].resume != 0;
}

/* Flips bits of a chunk as corrupt faults say; at is its stream offset. */
static void
fault_corrupt(struct tcpproxy *p, struct bridge *b, struct bfault *bf,
    int s, char *data, size_t len, unsigned long long at)
{
	const struct fault *f = bf->f;
	unsigned char *u = (unsigned char *)data;
	size_t i;

	if (f->prob <= 0) {
		if (f->n < at || f->n >= at + len || (bf->acted & (1u << s)))
			return;
		u[f->n - at] ^= 0x01;
		bf->acted |= (unsigned char)(1u << s);
		fault_log(p, b, bf, s, f->n);
		return;
	}
	for (i = 0; i < len; i++)
		if (fault_draw(p, bf->f, b->fx->nth, s, at + i) < f->prob) {
			u[i] ^= (unsigned char)(1u << (unsigned)(fault_draw(p,
			    bf->f, b->fx->nth, s + 2, at + i) * 8));
			fault_log(p, b, bf, s, at + i);
		}
}

/*
 * The chunk stage: what the len bytes just read from s at data become
 * (dropped, corrupted), and when they may go (delayed).  Returns their
 * new length.
 */
static size_t
fault_chunk(struct tcpproxy *p, struct bridge *b, int s, char *data,
    size_t len)
{
	struct faults *fx = b->fx;
	unsigned long long at = fx->queued[s];
	/* Not the round's clock: a delay is never shorter than asked. */
	long long release = 0, now = now_ms();
	size_t k;

	for (k = 0; k < fx->n && len > 0; k++) {
		struct bfault *bf = &fx->f[k];
		const struct fault *f = bf->f;
		long long d;

		if (f->action == F_RATE && bf->stamp[s] != 0)
			bf->tokens[s] -= (double)len;
		if (!fault_on(p, b, bf, s))
			continue;
		switch (f->action) {
		case F_DROP:
			fault_first(p, b, bf, s, at);
			len = 0;
			break;
		case F_CORRUPT:
			fault_corrupt(p, b, bf, s, data, len, at);
			break;
		case F_TTFB:
			if (fx->chunks[s] > 0)
				break;
			/* FALLTHROUGH */
		case F_DELAY:
			d = f->t_ms;
			if (f->jitter_ms > 0)
				d += (long long)(fault_draw(p, bf->f, fx->nth, s,
				    fx->chunks[s]) * (double)(2 * f->jitter_ms +
				    1)) - f->jitter_ms;
			if (d < 0)
				d = 0;
			if (now + d > release)
				release = now + d;
			fault_first(p, b, bf, s, at);
			break;
		default:
			break;
		}
	}
	fx->chunks[s]++;
	fx->queued[s] += len;
	if (release == 0 && fx->mlen[s] == 0) {
		fx->released[s] = fx->queued[s];
	} else if (len > 0) {
		/* Order kept: a chunk never goes before an earlier one. */
		size_t m = (fx->mhead[s] + fx->mlen[s]) % FAULT_MARKS;

		if (fx->mlen[s] > 0) {
			size_t last = (m + FAULT_MARKS - 1) % FAULT_MARKS;

			if (fx->marks[s][last].at > release)
				release = fx->marks[s][last].at;
		}
		fx->marks[s][m].end = fx->queued[s];
		fx->marks[s][m].at = release;
		fx->mlen[s]++;
	}
	return len;
}

/*
 * The release stage: how many of the n queued bytes of flow[s] may be
 * written now: none of a chunk still held by a delay, at most a slice,
 * none before a slice's gap is over.
 */
static size_t
fault_writable(struct tcpproxy *p, struct bridge *b, int s, size_t n)
{
	struct faults *fx = b->fx;
	unsigned long long held;
	size_t k;

	while (fx->mlen[s] > 0 && fx->marks[s][fx->mhead[s]].at <= p->now) {
		fx->released[s] = fx->marks[s][fx->mhead[s]].end;
		fx->mhead[s] = (fx->mhead[s] + 1) % FAULT_MARKS;
		fx->mlen[s]--;
	}
	/* What came after the last chunk that is due is held. */
	held = fx->queued[s] - fx->released[s];
	n = held >= n ? 0 : n - (size_t)held;
	for (k = 0; k < fx->n && n > 0; k++) {
		struct bfault *bf = &fx->f[k];

		if (bf->f->action != F_SLICE || !fault_on(p, b, bf, s))
			continue;
		if (bf->next_at[s] > p->now)
			return 0;
		if (n > bf->f->n)
			n = (size_t)bf->f->n;
		fault_first(p, b, bf, s, b->flow[s].bytes);
	}
	return n;
}

/* Notes that n bytes of flow[s] were written: a slice's gap begins. */
static void
fault_sent(struct tcpproxy *p, struct bridge *b, int s, size_t n)
{
	struct faults *fx = b->fx;
	size_t k;

	for (k = 0; k < fx->n && n > 0; k++) {
		struct bfault *bf = &fx->f[k];

		if (bf->f->action == F_SLICE && bf->f->gap_ms > 0 &&
		    fault_on(p, b, bf, s))
			bf->next_at[s] = p->now + bf->f->gap_ms;
	}
}

/*
 * The end stage, for an EOF read from s: a slowclose fault holds it back
 * for its time.  Returns 1 if it did (the EOF is acted on later).
 */
static int
fault_eof(struct tcpproxy *p, struct bridge *b, int s)
{
	struct faults *fx = b->fx;
	size_t k;

	for (k = 0; k < fx->n; k++) {
		struct bfault *bf = &fx->f[k];

		if (bf->f->action != F_SLOWCLOSE || !fault_on(p, b, bf, s))
			continue;
		fx->eof_at[s] = p->now + bf->f->t_ms;
		if (fx->eof_at[s] == 0)
			fx->eof_at[s] = 1;
		fault_log(p, b, bf, s, fx->queued[s]);
		return 1;
	}
	return 0;
}

/* Returns how long b waits before it connects (connect-delay), in ms. */
static long long
fault_connect_delay(struct tcpproxy *p, struct bridge *b)
{
	struct faults *fx = b->fx;
	size_t k;

	for (k = 0; k < fx->n; k++) {
		struct bfault *bf = &fx->f[k];

		if (bf->f->action == F_CONNECT_DELAY && bf->f->t_ms > 0 &&
		    fault_start(p, b, bf, -1) != LLONG_MIN) {
			fault_log(p, b, bf, -1, 0);
			return bf->f->t_ms;
		}
	}
	return 0;
}

/*
 * Returns when a one-shot fault bf (reset, timeout) of b acts: its time
 * after its start, which is accept, after= later, or when after= bytes
 * went one way of its directions.  LLONG_MAX: not (yet) known.
 */
static long long
fault_when(const struct tcpproxy *p, const struct bridge *b,
    const struct bfault *bf)
{
	long long t, best = LLONG_MAX;
	int s;

	for (s = CLIENT; s <= SERVER; s++) {
		t = fault_start(p, b, bf, s);
		if (t != LLONG_MIN && t != LLONG_MAX && t < best)
			best = t;
	}
	return best == LLONG_MAX ? best : best + bf->f->t_ms;
}

/* Ends b at once, for a fault; with reset, its peers read ECONNRESET. */
static void
fault_abort(struct bridge *b, int reset)
{
	int s;

	bridge_end(b, TCPPROXY_REASON_FAULT, 0);
	for (s = CLIENT; s <= SERVER; s++) {
		if (reset && b->fd[s] >= 0) {
			struct linger lg;

			lg.l_onoff = 1;
			lg.l_linger = 0;
			(void)setsockopt(b->fd[s], SOL_SOCKET, SO_LINGER, &lg,
			    sizeof(lg));
		}
		b->rd[s] = b->wr[s] = 0;
	}
}

/*
 * Acts on b's faults whose moment has come: close= and halfclose= once
 * their bytes are delivered, reset and timeout at their time.  Called
 * from bridge_settle before the close rules.
 */
static void
fault_settle(struct tcpproxy *p, struct bridge *b)
{
	struct faults *fx = b->fx;
	size_t k;
	int s;

	for (k = 0; k < fx->n; k++) {
		struct bfault *bf = &fx->f[k];
		const struct fault *f = bf->f;

		if (bf->done || !bf->on || f->dead)
			continue;
		switch (f->action) {
		case F_CLOSE:
		case F_HALFCLOSE:
			for (s = CLIENT; s <= SERVER && !bf->done; s++) {
				if (fault_start(p, b, bf, s) == LLONG_MIN ||
				    b->flow[s].bytes < f->n ||
				    (fx->queued[s] < f->n && b->rd[s]))
					continue;
				/* Exactly n went (or all there was). */
				bf->done = 1;
				fault_log(p, b, bf, s, b->flow[s].bytes);
				if (f->action == F_CLOSE) {
					fault_abort(b, 0);
					continue;
				}
				if (b->wr[!s] && b->fd[!s] >= 0)
					(void)shutdown(b->fd[!s], SHUT_WR);
				b->wr[!s] = 0;
				b->rd[s] = 0;
				buf_give(b->svc, &b->flow[s]);
			}
			break;
		case F_RESET:
		case F_TIMEOUT:
			if (fault_when(p, b, bf) > p->now)
				break;
			bf->done = 1;
			fault_log(p, b, bf, -1, b->flow[CLIENT].bytes +
			    b->flow[SERVER].bytes);
			fault_abort(b, f->action == F_RESET);
			break;
		default:
			break;
		}
	}
}

/* Puts b's next fault deadline on the heap. */
static void
fault_arm(struct tcpproxy *p, struct bridge *b)
{
	struct faults *fx = b->fx;
	long long when = LLONG_MAX, t;
	size_t k;
	int s;

	if (fx->connect_at != 0)
		when = fx->connect_at;
	for (s = CLIENT; s <= SERVER; s++) {
		if (fx->mlen[s] > 0 && fx->marks[s][fx->mhead[s]].at < when)
			when = fx->marks[s][fx->mhead[s]].at;
		if (fx->eof_at[s] != 0 && fx->eof_at[s] < when)
			when = fx->eof_at[s];
	}
	for (k = 0; k < fx->n; k++) {
		struct bfault *bf = &fx->f[k];
		const struct fault *f = bf->f;

		if (!bf->on || f->dead || bf->done)
			continue;
		if (f->action == F_RESET || f->action == F_TIMEOUT) {
			if ((t = fault_when(p, b, bf)) < when)
				when = t;
			continue;
		}
		for (s = CLIENT; s <= SERVER; s++) {
			t = fault_start(p, b, bf, s);
			if (t == LLONG_MIN || t == LLONG_MAX)
				continue;
			/* When it begins, and when for= lifts it, the
			 * interest of the bridge changes. */
			if (t > p->now && t < when)
				when = t;
			if (f->for_ms > 0 && t + f->for_ms < when)
				when = t + f->for_ms;
			if (f->action == F_SLICE && bf->next_at[s] > p->now &&
			    bf->next_at[s] < when)
				when = bf->next_at[s];
		}
	}
	if (heap_set(p, b, when) == -1)
		say(p, TCPPROXY_LOG_ERROR, "fault id=%lu: out of memory", b->id);
}

/* A deadline of b's faults came: release, connect, pass the EOF on. */
static void
fault_tick(struct tcpproxy *p, struct bridge *b)
{
	struct faults *fx = b->fx;
	int s;

	if (fx->connect_at != 0 && fx->connect_at <= p->now) {
		fx->connect_at = 0;
		if (server_connect(p, b, 0) == -1) {
			bridge_close(p, b);
			return;
		}
	}
	for (s = CLIENT; s <= SERVER; s++) {
		if (fx->eof_at[s] != 0 && fx->eof_at[s] <= p->now) {
			fx->eof_at[s] = 0;
			side_eof(p, b, s);
		}
		flow_drain(p, b, s);
	}
	(void)bridge_settle(p, b);
}

/* Runs the fault deadlines that are due, earliest first. */
static void
faults_expire(struct tcpproxy *p)
{
	while (p->nheap > 0 && p->heap[0]->fx->due <= p->now) {
		struct bridge *b = p->heap[0];

		heap_del(p, b);
		b->fx->due = LLONG_MAX;
		fault_tick(p, b);
	}
}

/* ---- down and up ---- */

/*
 * Takes the listeners of svc down in mode: REFUSE keeps the port bound
 * but not listening (connects are refused, nobody else can bind it),
 * TIMEOUT leaves a backlog of 0 unaccepted (handshakes go unanswered),
 * HANG and RESET keep accepting (bridge_open acts on them).  Returns 0,
 * or -1 with the reason in err.
 */
static int
service_down(struct tcpproxy *p, struct service *svc, int mode, char *err,
    size_t errlen)
{
	size_t i;

	if (svc->down != DOWN_NONE && service_up(p, svc, err, errlen) == -1)
		return -1;
	for (i = 0; i < p->nlisten; i++) {
		struct listener *l = &p->lis[i];
		const struct sockaddr *sa = (const struct sockaddr *)&l->a.ss;
		int fd, one = 1;

		if (l->svc != svc || l->fd < 0)
			continue;
		if (mode == DOWN_TIMEOUT) {
			(void)listen(l->fd, 0);
			continue;
		}
		if (mode != DOWN_REFUSE)
			continue;
		/* A bound socket that never listens holds the port. */
		if ((fd = socket(sa->sa_family, SOCK_STREAM | SOCK_FLAGS, 0)) ==
		    -1)
			return failed(err, errlen, errno, "down: %s",
			    strerror(errno));
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
		    sizeof(one));
#ifdef IPV6_V6ONLY
		if (sa->sa_family == AF_INET6)
			(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one,
			    sizeof(one));
#endif
		listener_close(l);
		if ((SOCK_FLAGS == 0 && fd_prepare(fd) == -1) ||
		    bind(fd, sa, l->a.len) == -1) {
			int saved = errno;

			fd_close(fd);
			return failed(err, errlen, saved, "down: cannot bind "
			    "%s again: %s", l->a.name, strerror(saved));
		}
		/* Nobody else may take it: not even with SO_REUSEADDR. */
		one = 0;
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
		    sizeof(one));
		l->fd = fd;
		l->owner = getpid();
	}
	svc->down = mode;
	listeners_update(p);
	say(p, TCPPROXY_LOG_ERROR, "down %s%s", down_modes[mode], svc->tag);
	return 0;
}

/* Brings the listeners of svc up again; 0, or -1 with err. */
static int
service_up(struct tcpproxy *p, struct service *svc, char *err,
    size_t errlen)
{
	size_t i;

	for (i = 0; i < p->nlisten; i++) {
		struct listener *l = &p->lis[i];

		int one = 1;

		if (l->svc != svc || l->fd < 0 ||
		    (svc->down != DOWN_REFUSE && svc->down != DOWN_TIMEOUT))
			continue;
		(void)setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one,
		    sizeof(one));
		if (listen(l->fd, TCPPROXY_BACKLOG) == -1)
			return failed(err, errlen, errno, "up: cannot listen on "
			    "%s: %s", l->a.name, strerror(errno));
	}
	if (svc->down != DOWN_NONE)
		say(p, TCPPROXY_LOG_ERROR, "up%s", svc->tag);
	svc->down = DOWN_NONE;
	listeners_update(p);
	return 0;
}

/* Ends the open bridges of svc (all with svc NULL): 0 keep, 1 close,
 * 2 reset; returns how many. */
static unsigned long
bridges_end(struct tcpproxy *p, const struct service *svc, int how,
    unsigned long id)
{
	unsigned long n = 0;
	size_t k;

	/* From the last: a closed bridge's slot gets one already done. */
	for (k = p->nbridges; k-- > 0 && how > 0;) {
		struct bridge *b = p->tab[k];

		if ((svc != NULL && b->svc->st != svc->st) ||
		    (id != 0 && b->id != id))
			continue;
		fault_abort(b, how == 2);
		n++;
		(void)bridge_settle(p, b);
	}
	return n;
}

/* ---- the control socket ---- */

/*
 * A client of the control socket sends lines; each request is one line,
 * or a batch of lines between "begin" and "end" applied in one loop
 * round, all or none.  Each gets zero or more data lines, then exactly
 * one status line, "ok[ TEXT]" or "error: MESSAGE"; data lines never
 * start with either.  A "wait" answers only once its condition holds or
 * its time is up.
 */

/* Appends formatted text to the reply of c; out of memory drops it. */
static void
ctl_printf(struct ctl *c, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (c->out == NULL) {
		if ((c->out = malloc(256)) == NULL)
			return;
		c->outcap = 256;
	}
	for (;;) {
		size_t room = c->outcap - c->outlen;

		va_start(ap, fmt);
		n = vsnprintf(c->out + c->outlen, room, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if ((size_t)n < room) {
			c->outlen += (size_t)n;
			return;
		}
		{
			size_t cap = c->outcap * 2 + (size_t)n + 256;
			char *o;

			if (cap > TCPPROXY_CTL_OUT_MAX ||
			    (o = realloc(c->out, cap)) == NULL)
				return;
			c->out = o;
			c->outcap = cap;
		}
	}
}

/* Splits a control line into words, in place: blanks, "..." quotes. */
static int
ctl_split(char *s, char *words[], int max)
{
	return line_split(s, words, max);
}

/*
 * Resolves the optional SERVICE word at words[*i]: a live service of
 * that name (the word is used up), or the only live service.  Returns
 * it, or NULL with the reason in err.
 */
static struct service *
ctl_service(struct tcpproxy *p, char *words[], int n, int *i, char *err,
    size_t errlen)
{
	struct service *svc;

	if (*i < n)
		for (svc = p->services; svc != NULL && !svc->retired;
		    svc = svc->next)
			if (strcmp(svc->name, words[*i]) == 0) {
				(*i)++;
				return svc;
			}
	if (p->nlive == 1)
		return p->services;
	(void)fail(err, errlen, EINVAL, "several services: name one first");
	return NULL;
}

/* The counters a wait condition can read, of svc or (NULL) of all. */
static int
ctl_counter(const struct tcpproxy *p, const struct service *one,
    const char *name, unsigned long long *v)
{
	const struct service *svc;
	const struct fault *f;
	int known = 0;

	*v = 0;
	for (svc = p->services; svc != NULL && !svc->retired;
	    svc = svc->next) {
		if (one != NULL && svc != one)
			continue;
		if (strncmp(name, "fired:", 6) == 0) {
			for (f = svc->faults; f != NULL; f = f->next)
				if (strcmp(f->name, name + 6) == 0) {
					*v += f->fired;
					known = 1;
				}
			continue;
		}
		known = 1;
		if (strcmp(name, "open") == 0)
			*v += svc->st->open;
		else if (strcmp(name, "accepted") == 0)
			*v += svc->st->total;
		else if (strcmp(name, "refused") == 0)
			*v += svc->st->refused;
		else if (strcmp(name, "failed") == 0)
			*v += svc->st->failed;
		else if (strcmp(name, "queued") == 0)
			*v += svc->st->queued;
		else if (strcmp(name, "closed") == 0)
			*v += svc->st->total - svc->st->open;
		else
			return -1;
	}
	return known ? 0 : -1;
}

/*
 * Evaluates a wait condition, [SERVICE:]COUNTER OP NUMBER.  Returns 1 if
 * it holds, 0 if not, -1 if it cannot be read (err says why); *now gets
 * the counter's value.
 */
static int
ctl_cond(struct tcpproxy *p, const char *expr, unsigned long long *now,
    char *err, size_t errlen)
{
	static const char *const ops[] = { ">=", "<=", "!=", "==", ">", "<",
	    "=" };
	char name[128];
	const char *op = NULL, *colon;
	const struct service *svc = NULL;
	unsigned long long goal;
	size_t i, k, len;
	char *end;

	for (i = 0; expr[i] != '\0' && op == NULL; i++)
		for (k = 0; k < sizeof(ops) / sizeof(ops[0]); k++)
			if (strncmp(expr + i, ops[k], strlen(ops[k])) == 0) {
				op = ops[k];
				break;
			}
	if (op == NULL || i == 1 || i - 1 >= sizeof(name))
		return failed(err, errlen, EINVAL, "invalid condition '%s': "
		    "not COUNTER OP NUMBER", expr);
	len = i - 1;
	memcpy(name, expr, len);
	name[len] = '\0';
	if ((colon = strchr(name, ':')) != NULL &&
	    strncmp(name, "fired:", 6) != 0) {
		const struct service *s2;

		for (s2 = p->services; s2 != NULL && !s2->retired;
		    s2 = s2->next)
			if (strncmp(s2->name, name, (size_t)(colon - name)) ==
			    0 && s2->name[colon - name] == '\0')
				svc = s2;
		if (svc == NULL)
			return failed(err, errlen, EINVAL, "unknown service "
			    "in '%s'", expr);
		memmove(name, colon + 1, strlen(colon + 1) + 1);
	}
	errno = 0;
	goal = strtoull(expr + len + strlen(op), &end, 10);
	if (*end != '\0' || errno != 0 || end == expr + len + strlen(op))
		return failed(err, errlen, EINVAL, "invalid number in '%s'",
		    expr);
	if (ctl_counter(p, svc, name, now) == -1)
		return failed(err, errlen, EINVAL, "unknown counter '%s' (open, "
		    "accepted, closed, refused, failed, queued, fired:FAULT)",
		    name);
	switch (op[0]) {
	case '>': return op[1] == '=' ? *now >= goal : *now > goal;
	case '<': return op[1] == '=' ? *now <= goal : *now < goal;
	case '!': return *now != goal;
	default: return *now == goal;
	}
}

/* Lists the faults of every live service, one data line each. */
static void
ctl_list(struct tcpproxy *p, struct ctl *c)
{
	const struct service *svc;
	const struct fault *f;

	for (svc = p->services; svc != NULL && !svc->retired; svc = svc->next)
		for (f = svc->faults; f != NULL; f = f->next)
			ctl_printf(c, "fault service=%s name=%s fired=%lu spec=%s"
			    "\n", svc->name, f->name, f->fired, f->spec);
}

/* One data line per open bridge. */
static void
ctl_conns(struct tcpproxy *p, struct ctl *c)
{
	size_t k;

	for (k = 0; k < p->nbridges; k++) {
		const struct bridge *b = p->tab[k];

		ctl_printf(c, "conn id=%lu service=%s client=%s backend=%s "
		    "up=%llu down=%llu age=%.3f\n", b->id, b->svc->name,
		    b->client, b->be != NULL ? b->be->name : "-",
		    b->flow[CLIENT].bytes, b->flow[SERVER].bytes,
		    (double)(p->now - b->start_ms) / 1000.0);
	}
}

/*
 * Returns whether svc has a fault called name, as the batch being
 * checked (c->pend) would leave it.
 */
static int
ctl_has(const struct ctl *c, const struct service *svc, const char *name)
{
	int k, has = fault_find(svc->faults, NULL, name) != NULL;

	for (k = 0; k < c->npend; k++)
		if (c->pend[k].svc == svc && (strcmp(c->pend[k].name, name) ==
		    0 || (!c->pend[k].added && strcmp(c->pend[k].name, "*") ==
		    0)))
			has = c->pend[k].added;
	return has;
}

/* Notes a name a checked line of a batch adds or deletes. */
static void
ctl_pend(struct ctl *c, const struct service *svc, const char *name,
    int added)
{
	if (c->npend == TCPPROXY_CTL_BATCH)
		return;
	c->pend[c->npend].svc = svc;
	snprintf(c->pend[c->npend].name, sizeof(c->pend[0].name), "%s", name);
	c->pend[c->npend++].added = added;
}

/* Adds a fault to svc, and to its open bridges.  0, or -1 with err. */
static int
ctl_add(struct tcpproxy *p, struct ctl *c, struct service *svc,
    const char *spec, int apply, char *err, size_t errlen)
{
	struct fault *f, **pp;
	char msg[160];
	size_t k;

	if ((f = calloc(1, sizeof(*f))) == NULL)
		return failed(err, errlen, ENOMEM, "out of memory");
	if (fault_parse(spec, f, msg, sizeof(msg)) == -1) {
		free(f);
		return failed(err, errlen, EINVAL, "%s", msg);
	}
	if (!apply) {
		/* As the batch's earlier lines leave the names. */
		char base[sizeof(f->name)];
		unsigned long nth;

		snprintf(base, sizeof(base), "%s", f->name);
		for (nth = 2; ctl_has(c, svc, f->name) && !f->named; nth++)
			snprintf(f->name, sizeof(f->name), "%.30s#%lu", base,
			    nth);
		if (ctl_has(c, svc, f->name)) {
			failed(err, errlen, EEXIST, "fault name '%s' is in use",
			    f->name);
			free(f);
			return -1;
		}
		ctl_pend(c, svc, f->name, 1);
		free(f);
		return 0;
	}
	if (fault_name_unique(svc->faults, f) == -1) {
		failed(err, errlen, EEXIST, "fault name '%s' is in use",
		    f->name);
		free(f);
		return -1;
	}
	f->refs = 1;
	for (pp = &svc->faults; *pp != NULL; pp = &(*pp)->next)
		;
	*pp = f;
	snprintf(err, errlen, "%s", f->name);
	/* The bridges already open meet it too, from now on. */
	for (k = p->nbridges; k-- > 0;) {
		struct bridge *b = p->tab[k];

		if (b->svc != svc || b->state == BRIDGE_QUEUED ||
		    b->state == BRIDGE_PREAMBLE)
			continue;
		if (fault_attach(p, b, f) == 0)
			(void)bridge_settle(p, b);
	}
	return 0;
}

/* Lets the bridges of svc go on without what dead faults held. */
static void
faults_lift(struct tcpproxy *p, const struct service *svc)
{
	size_t k;
	int s;

	for (k = p->nbridges; k-- > 0;) {
		struct bridge *b = p->tab[k];
		struct faults *fx = b->fx;

		if (b->svc != svc || fx == NULL)
			continue;
		for (s = CLIENT; s <= SERVER; s++) {
			fx->mlen[s] = 0;
			fx->released[s] = fx->queued[s];
			if (fx->eof_at[s] != 0)
				fx->eof_at[s] = p->now;
		}
		if (fx->connect_at != 0)
			fx->connect_at = p->now;
		(void)heap_set(p, b, p->now);
	}
}

/* Deletes the faults of svc called name ("*": all); 0 or -1 with err. */
static int
ctl_del(struct tcpproxy *p, struct ctl *c, struct service *svc,
    const char *name, int apply, char *err, size_t errlen)
{
	struct fault **pp = &svc->faults, *f;
	int found = 0;

	if (!apply) {
		if (strcmp(name, "*") != 0 && !ctl_has(c, svc, name))
			return failed(err, errlen, ENOENT, "no fault '%s'",
			    name);
		ctl_pend(c, svc, name, 0);
		return 0;
	}

	while ((f = *pp) != NULL) {
		if (strcmp(name, "*") != 0 && strcmp(f->name, name) != 0) {
			pp = &f->next;
			continue;
		}
		found = 1;
		*pp = f->next;
		f->dead = 1;
		fault_put(f);
	}
	if (!found && strcmp(name, "*") != 0)
		return failed(err, errlen, ENOENT, "no fault '%s'", name);
	if (apply)
		faults_lift(p, svc);
	return 0;
}

/* Parses "existing=keep|close|reset"; returns 0, 1, 2, or -1. */
static int
ctl_existing(const char *w)
{
	if (strcmp(w, "existing=keep") == 0)
		return 0;
	if (strcmp(w, "existing=close") == 0)
		return 1;
	if (strcmp(w, "existing=reset") == 0)
		return 2;
	return -1;
}

/*
 * Runs one command, words[0..n): checks it only (apply 0: it must then
 * change nothing) or does it.  Data lines go to c; returns 0 with an
 * optional text for the ok line in err, or -1 with the reason in err.
 * A wait that does not hold yet returns 1.
 */
static int
ctl_run(struct tcpproxy *p, struct ctl *c, char *words[], int n, int apply,
    char *err, size_t errlen)
{
	struct service *svc = NULL, *s2;
	const char *cmd = n > 0 ? words[0] : "";
	int i = 1, m, how;

	err[0] = '\0';
	if (strcmp(cmd, "add") == 0 || strcmp(cmd, "del") == 0 ||
	    strcmp(cmd, "down") == 0 || strcmp(cmd, "up") == 0)
		svc = ctl_service(p, words, n, &i, err, errlen);
	if (svc == NULL && err[0] != '\0')
		return -1;
	if (strcmp(cmd, "add") == 0 && svc != NULL) {
		if (i + 1 != n)
			return failed(err, errlen, EINVAL, "usage: add [SERVICE] "
			    "SPEC");
		return ctl_add(p, c, svc, words[i], apply, err, errlen);
	}
	if (strcmp(cmd, "del") == 0 && svc != NULL) {
		if (i + 1 != n)
			return failed(err, errlen, EINVAL, "usage: del [SERVICE] "
			    "NAME|*");
		return ctl_del(p, c, svc, words[i], apply, err, errlen);
	}
	if (strcmp(cmd, "down") == 0 && svc != NULL) {
		for (m = 1; m < DOWN_NMODES; m++)
			if (i < n && strcmp(words[i], down_modes[m]) == 0)
				break;
		if (m == DOWN_NMODES)
			return failed(err, errlen, EINVAL, i < n ? "unknown down "
			    "mode '%s' (refuse, hang, reset, timeout)" : "down "
			    "needs a mode%s: refuse, hang, reset or timeout",
			    i < n ? words[i] : "");
		how = i + 1 < n ? ctl_existing(words[i + 1]) : 0;
		if (how == -1)
			return failed(err, errlen, EINVAL, "invalid '%s': not "
			    "existing=keep|close|reset", words[i + 1]);
		if (i + 2 < n)
			return failed(err, errlen, EINVAL, "extra word '%s'",
			    words[i + 2]);
		if (!apply)
			return 0;
		if (service_down(p, svc, m, err, errlen) == -1)
			return -1;
		(void)bridges_end(p, svc, how, 0);
		return 0;
	}
	if (strcmp(cmd, "up") == 0 && svc != NULL) {
		if (i != n)
			return failed(err, errlen, EINVAL, "extra word '%s'",
			    words[i]);
		return apply ? service_up(p, svc, err, errlen) : 0;
	}
	if (strcmp(cmd, "reset") == 0 && n == 1) {
		if (!apply)
			return 0;
		for (s2 = p->services; s2 != NULL && !s2->retired;
		    s2 = s2->next) {
			(void)ctl_del(p, c, s2, "*", 1, err, errlen);
			if (service_up(p, s2, err, errlen) == -1)
				return -1;
		}
		err[0] = '\0';
		return 0;
	}
	if ((strcmp(cmd, "list") == 0 || strcmp(cmd, "stats") == 0 ||
	    strcmp(cmd, "conns") == 0) && n == 1) {
		if (!apply)
			return 0;
		if (cmd[0] == 'l')
			ctl_list(p, c);
		else if (cmd[0] == 'c')
			ctl_conns(p, c);
		else
			ctl_stats(p, c);
		return 0;
	}
	if (strcmp(cmd, "kill") == 0 && (n == 2 || (n == 3 &&
	    strcmp(words[2], "reset") == 0))) {
		unsigned long id = 0;
		char *end;

		if (strcmp(words[1], "all") != 0 && (words[1][0] < '0' ||
		    words[1][0] > '9' || (id = strtoul(words[1], &end, 10)) ==
		    0 || *end != '\0'))
			return failed(err, errlen, EINVAL, "invalid bridge id "
			    "'%s'", words[1]);
		if (!apply)
			return 0;
		snprintf(err, errlen, "%lu", bridges_end(p, NULL, n == 3 ? 2 : 1,
		    id));
		return 0;
	}
	if (strcmp(cmd, "seed") == 0 && n == 2) {
		char *end;
		unsigned long long v;

		errno = 0;
		v = strtoull(words[1], &end, 10);
		if (*end != '\0' || errno != 0 || words[1][0] < '0' ||
		    words[1][0] > '9')
			return failed(err, errlen, EINVAL, "invalid seed '%s'",
			    words[1]);
		if (apply)
			p->fault_seed = v;
		return 0;
	}
	if (strcmp(cmd, "wait") == 0 && (n == 2 || n == 3)) {
		unsigned long long v;
		long long ms = TCPPROXY_WAIT_TIMEOUT;
		int r;

		if (n == 3 && (strncmp(words[2], "timeout=", 8) != 0 ||
		    fault_time(words[2] + 8, &ms) == -1))
			return failed(err, errlen, EINVAL, "invalid '%s': not "
			    "timeout=SECS", words[2]);
		if ((r = ctl_cond(p, words[1], &v, err, errlen)) == -1)
			return -1;
		if (!apply)
			return 0;
		if (r == 1) {
			snprintf(err, errlen, "%llu", v);
			return 0;
		}
		snprintf(c->wait, sizeof(c->wait), "%s", words[1]);
		c->wait_until = p->now + ms;
		return 1;
	}
	if ((strcmp(cmd, "reload") == 0 || strcmp(cmd, "stop") == 0) &&
	    n == 1) {
		if (cmd[2] == 'l' && p->cfg.on_reload == NULL)
			return failed(err, errlen, ENOTSUP, "reload: nothing to "
			    "reload from");
		if (!apply)
			return 0;
		if (cmd[2] == 'o') {
			tcpproxy_stop(p);
			return 0;
		}
		c->reload = 1;	/* at the end of the round: see ctl_round */
		return 1;
	}
	return failed(err, errlen, EINVAL, "unknown command '%s' (add, del, "
	    "list, down, up, reset, stats, conns, kill, wait, seed, reload, "
	    "stop)", cmd);
}

/* The stats lines of the services and backends, then the faults'. */
static void
ctl_stats(struct tcpproxy *p, struct ctl *c)
{
	struct tcpproxy_stats *st;
	char line[512];
	size_t n, i;

	n = tcpproxy_stats(p, NULL, 0);
	if ((st = calloc(n + 1, sizeof(*st))) == NULL)
		return;
	n = tcpproxy_stats(p, st, n);
	for (i = 0; i < n; i++) {
		stats_line(p, &st[i], line, sizeof(line));
		ctl_printf(c, "%s\n", line);
	}
	free(st);
	ctl_list(p, c);
}

/* Closes control connection c. */
static void
ctl_close(struct tcpproxy *p, struct ctl *c)
{
	fd_close(c->fd);
	free(c->out);
	memset(c, 0, sizeof(*c));
	c->fd = -1;
	(void)p;
}

/* Ends the reply to c with its status line. */
static void
ctl_status(struct ctl *c, int rc, const char *text)
{
	if (rc == -1)
		ctl_printf(c, "error: %s\n", text);
	else if (text[0] != '\0')
		ctl_printf(c, "ok %s\n", text);
	else
		ctl_printf(c, "ok\n");
}

/*
 * Runs the batch of lines[0..n): every command is checked first, and
 * only if all are good are they all done, in this one round.
 */
static void
ctl_batch(struct tcpproxy *p, struct ctl *c, char *lines[], int n)
{
	char err[256], *words[64], copy[TCPPROXY_CTL_LINE];
	int k, nw, pass;

	c->npend = 0;
	for (pass = 0; pass < 2; pass++)
		for (k = 0; k < n; k++) {
			snprintf(copy, sizeof(copy), "%s", lines[k]);
			nw = ctl_split(copy, words, 64);
			if (nw > 0 && (strcmp(words[0], "wait") == 0 ||
			    strcmp(words[0], "reload") == 0)) {
				ctl_status(c, -1, "wait and reload cannot be "
				    "in a batch");
				return;
			}
			if (nw < 0 || ctl_run(p, c, words, nw, pass, err,
			    sizeof(err)) == -1) {
				char msg[300];

				snprintf(msg, sizeof(msg), "line %d: %s", k + 1,
				    nw < 0 ? "unterminated quote" : err);
				ctl_status(c, -1, msg);
				return;
			}
		}
	ctl_status(c, 0, "");
}

/* Handles one complete line from c. */
static void
ctl_line(struct tcpproxy *p, struct ctl *c, char *line)
{
	char err[256], *words[64];
	int n, rc;

	if (c->batch >= 0) {
		if (strcmp(line, "end") == 0) {
			ctl_batch(p, c, c->lines, c->batch);
			c->batch = -1;
			c->nbatch = 0;
			return;
		}
		if (line[0] == '\0')
			return;
		if (c->batch == TCPPROXY_CTL_BATCH ||
		    c->nbatch + strlen(line) + 1 > sizeof(c->batchbuf)) {
			c->batch = -1;
			c->nbatch = 0;
			ctl_status(c, -1, "batch too long");
			return;
		}
		c->lines[c->batch++] = memcpy(c->batchbuf + c->nbatch, line,
		    strlen(line) + 1);
		c->nbatch += strlen(line) + 1;
		return;
	}
	if ((n = ctl_split(line, words, 64)) < 0) {
		ctl_status(c, -1, "unterminated quote");
		return;
	}
	if (n == 0)
		return;
	if (n == 1 && strcmp(words[0], "begin") == 0) {
		c->batch = 0;
		return;
	}
	rc = ctl_run(p, c, words, n, 1, err, sizeof(err));
	if (rc != 1)
		ctl_status(c, rc, err);
}

/* Reads what c sent and runs the complete lines; 0, or -1 to close. */
static int
ctl_read(struct tcpproxy *p, struct ctl *c)
{
	ssize_t n;

	n = recv(c->fd, c->in + c->inlen, sizeof(c->in) - 1 - c->inlen, 0);
	if (n < 0)
		return errno == EINTR || WOULD_BLOCK(errno) ? 0 : -1;
	if (n == 0) {
		/* Its EOF: it has said all; it may still read the reply. */
		c->eof = 1;
		return 0;
	}
	c->inlen += (size_t)n;
	c->in[c->inlen] = '\0';
	ctl_lines(p, c);
	if (c->inlen == sizeof(c->in) - 1) {
		ctl_status(c, -1, "line too long");
		c->inlen = 0;
	}
	return 0;
}

/* Runs the complete lines c sent, until one makes it wait. */
static void
ctl_lines(struct tcpproxy *p, struct ctl *c)
{
	char *nl;

	while (c->wait[0] == '\0' && !c->reload &&
	    (nl = memchr(c->in, '\n', c->inlen)) != NULL) {
		size_t len = (size_t)(nl - c->in) + 1;

		*nl = '\0';
		if (nl > c->in && nl[-1] == '\r')
			nl[-1] = '\0';
		ctl_line(p, c, c->in);
		memmove(c->in, c->in + len, c->inlen - len);
		c->inlen -= len;
		c->in[c->inlen] = '\0';
	}
}

/* Writes what c's reply holds; 0, or -1 to close. */
static int
ctl_write(struct ctl *c)
{
	while (c->outoff < c->outlen) {
		ssize_t n = send(c->fd, c->out + c->outoff,
		    c->outlen - c->outoff, SEND_FLAGS);

		if (n < 0)
			return errno == EINTR || WOULD_BLOCK(errno) ? 0 : -1;
		c->outoff += (size_t)n;
	}
	c->outoff = c->outlen = 0;
	return 0;
}

/* Answers the waits whose condition holds or whose time is up. */
static void
ctl_waits(struct tcpproxy *p)
{
	size_t k;

	for (k = 0; k < TCPPROXY_CTL_MAX; k++) {
		struct ctl *c = &p->ctls[k];
		unsigned long long v = 0;
		char err[256], msg[320];
		int r;

		if (c->fd < 0 || c->wait[0] == '\0')
			continue;
		r = ctl_cond(p, c->wait, &v, err, sizeof(err));
		if (r == 0 && p->now < c->wait_until)
			continue;
		if (r == 1) {
			snprintf(msg, sizeof(msg), "%llu", v);
			ctl_status(c, 0, msg);
		} else {
			snprintf(msg, sizeof(msg), "timeout: %s is %llu",
			    c->wait, v);
			ctl_status(c, -1, r == -1 ? err : msg);
		}
		c->wait[0] = '\0';
	}
}

/*
 * The control socket's part of a round: accepts clients, reads and runs
 * their commands, answers waits, does a reload asked for, and projects
 * their interest onto their pollfds.
 */
static void
ctl_round(struct tcpproxy *p)
{
	struct pollfd *pfd = &p->pfd[p->ctl_slot];
	size_t k;

	if (p->ctl_fd < 0)
		return;
	if (pfd[0].revents != 0) {
		int fd;

		for (k = 0; k < TCPPROXY_CTL_MAX && p->ctls[k].fd >= 0; k++)
			;
		if (k < TCPPROXY_CTL_MAX &&
		    (fd = accept_ready(p->ctl_fd, NULL, NULL)) >= 0) {
			if (SOCK_FLAGS == 0 && fd_prepare(fd) == -1) {
				fd_close(fd);
			} else {
				memset(&p->ctls[k], 0, sizeof(p->ctls[k]));
				p->ctls[k].fd = fd;
				p->ctls[k].batch = -1;
			}
		}
	}
	for (k = 0; k < TCPPROXY_CTL_MAX; k++) {
		struct ctl *c = &p->ctls[k];
		short rev = pfd[1 + k].revents;

		if (c->fd < 0)
			continue;
		if ((rev & (POLLIN | POLLHUP | POLLERR)) && !c->eof &&
		    ctl_read(p, c) == -1) {
			ctl_close(p, c);
			continue;
		}
		if (c->reload) {
			char err[256] = "";
			int rc = p->cfg.on_reload(p->cfg.reload_user, err,
			    sizeof(err));

			/* A reload moves the pollfds. */
			pfd = &p->pfd[p->ctl_slot];
			c->reload = 0;
			ctl_status(c, rc == 0 ? 0 : -1, err);
			ctl_lines(p, c);
		}
	}
	ctl_waits(p);
	for (k = 0; k < TCPPROXY_CTL_MAX; k++) {
		struct ctl *c = &p->ctls[k];

		if (c->fd >= 0 && c->wait[0] == '\0')
			ctl_lines(p, c);
		if (c->fd >= 0 && ctl_write(c) == -1)
			ctl_close(p, c);
		/* Done: it said all and has every answer. */
		if (c->fd >= 0 && c->eof && c->outlen == 0 &&
		    c->wait[0] == '\0')
			ctl_close(p, c);
	}
	ctl_project(p);
}

/* Projects the control clients' interest onto their pollfds. */
static void
ctl_project(struct tcpproxy *p)
{
	struct pollfd *pfd = &p->pfd[p->ctl_slot];
	size_t k, n = 0;

	if (p->ctl_fd < 0)
		return;
	for (k = 0; k < TCPPROXY_CTL_MAX; k++)
		n += p->ctls[k].fd >= 0;
	pfd[0].fd = n < TCPPROXY_CTL_MAX ? p->ctl_fd : -1;
	pfd[0].events = POLLIN;
	for (k = 0; k < TCPPROXY_CTL_MAX; k++) {
		struct ctl *c = &p->ctls[k];

		pfd[1 + k].events = (short)((c->eof || c->wait[0] != '\0' ?
		    0 : POLLIN) | (c->outlen > 0 ? POLLOUT : 0));
		pfd[1 + k].fd = c->fd >= 0 && pfd[1 + k].events ? c->fd : -1;
		pfd[1 + k].revents = 0;
	}
	pfd[0].revents = 0;
}

/* Opens the control socket at path (mode 0600); 0, or -1 with err. */
static int
ctl_open(struct tcpproxy *p, const char *path, char *err, size_t errlen)
{
	struct addr *a;
	size_t n;

	if ((a = addrs_resolve(path, NULL, 1, &n, err, errlen)) == NULL)
		return -1;
	p->ctl_addr = a[0];
	free(a);
	if ((p->ctl_fd = listen_on((struct sockaddr *)&p->ctl_addr.ss,
	    p->ctl_addr.len, 0600, 0)) == -1)
		return failed(err, errlen, errno, "cannot listen on control "
		    "socket %s: %s", path, strerror(errno));
	p->ctl_owner = getpid();
	return 0;
}

/* Closes the control socket and its clients, removing its file. */
static void
ctl_free(struct tcpproxy *p)
{
	size_t k;

	for (k = 0; k < TCPPROXY_CTL_MAX; k++)
		if (p->ctls[k].fd >= 0)
			ctl_close(p, &p->ctls[k]);
	if (p->ctl_fd >= 0 && p->ctl_owner == getpid())
		(void)unlink(((struct sockaddr_un *)(void *)&p->ctl_addr.ss)->
		    sun_path);
	fd_close(p->ctl_fd);
	p->ctl_fd = -1;
}

/* Returns the deadline of the earliest wait, or -1. */
static long long
ctl_deadline(const struct tcpproxy *p)
{
	long long when = -1;
	size_t k;

	for (k = 0; k < TCPPROXY_CTL_MAX && p->ctl_fd >= 0; k++)
		if (p->ctls[k].fd >= 0 && p->ctls[k].wait[0] != '\0' &&
		    (when < 0 || p->ctls[k].wait_until < when))
			when = p->ctls[k].wait_until;
	return when;
}

/* ---- the loop ---- */

/* Projects the accepting state onto the listeners' pollfds. */
static void
listeners_update(struct tcpproxy *p)
{
	size_t i;

	for (i = 0; i < p->nlisten; i++) {
		const struct listener *l = &p->lis[i];

		/* Down as refuse or timeout: the kernel answers, or not. */
		p->pfd[1 + i].fd = p->accepting == ACCEPT_ON &&
		    !l->svc->st->full && l->svc->down != DOWN_REFUSE &&
		    l->svc->down != DOWN_TIMEOUT ? l->fd : -1;
		p->pfd[1 + i].events = POLLIN;
		p->pfd[1 + i].revents = 0;
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
	if (p->accepting == ACCEPT_OFF)
		return;
	p->accepting = ACCEPT_NOFD;
	p->accept_retry = p->now + TCPPROXY_ACCEPT_RETRY;
	pipes_trim(p);	/* bridges need descriptors more */
	listeners_update(p);
}

/*
 * Accepts the pending clients of listener i, until EAGAIN or a limit.
 * The accept() that finds none costs a call per round, a sixteenth of
 * what a connection costs: a listener that had one client last time
 * takes one and lets poll() tell if more wait; readable again the next
 * round, it takes all there are until a round finds only one.
 */
static void
listener_accept(struct tcpproxy *p, size_t i)
{
	char msg[192];
	int taken = 0;

	if (p->lis[i].served + 1 == p->rounds)
		p->lis[i].burst = 1;
	p->lis[i].served = p->rounds;
	while (p->accepting == ACCEPT_ON) {
		struct listener *l = &p->lis[i];
		struct service *svc = l->svc;
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int fd, held = 0;

		/* Behind those held already, if any: first come first served. */
		if (svc->max_clients > 0 && (svc->st->open >= svc->max_clients ||
		    svc->st->queued > 0)) {
			snprintf(msg, sizeof(msg), "reached max-clients limit "
			    "(%lu), new clients wait%s", svc->max_clients,
			    svc->tag);
			note_once(p, &p->noted_full, msg);
			/* Without a queue timeout, they wait in the backlog. */
			held = svc->timers[TIMER_QUEUE].timeout > 0 &&
			    svc->st->queued < TCPPROXY_QUEUE_MAX;
			if (!held) {
				svc->st->full = 1;
				break;
			}
		}
		if (taken == 1 && !l->burst)
			return;
		fd = accept_ready(l->fd, (struct sockaddr *)&ss, &len);
		if (fd >= 0) {
			taken++;
			bridge_open(p, l, fd, (struct sockaddr *)&ss, len, held);
			continue;
		}
		if (WOULD_BLOCK(errno)) {
			if (taken <= 1)
				l->burst = 0;
			return;
		}
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

/* Closes the twins of l (see listener_twin). */
static void
twins_close(struct listener *l)
{
	while (l->ntwins > 0)
		fd_close(l->twins[--l->ntwins]);
	free(l->twins);
	l->twins = NULL;
}

/*
 * Closes a listener and its twins; a Unix socket's file goes with it, if
 * this process made it (a worker leaves it to its parent).
 */
static void
listener_close(struct listener *l)
{
	if (l->fd >= 0 && l->a.ss.ss_family == AF_UNIX && l->owner == getpid())
		(void)unlink(((struct sockaddr_un *)(void *)&l->a.ss)->sun_path);
	fd_close(l->fd);
	l->fd = -1;
	twins_close(l);
}

/*
 * Leaves worker w (from 1) the socket of l that is its own, socket
 * (w - 1) % (1 + l->ntwins) where fd is socket 0, and closes the others:
 * they are the other workers'.  The parent keeps them all, so closing
 * them here resets no client queued on them.
 */
static void
listener_pick(struct listener *l, int w)
{
	size_t k = (size_t)(w - 1) % (1 + l->ntwins);
	int fd;

	if (k > 0) {
		fd = l->fd;
		l->fd = l->twins[k - 1];
		l->twins[k - 1] = fd;
	}
	twins_close(l);
}

/* Closes the listeners: after a stop, new clients are refused. */
static void
listeners_close(struct tcpproxy *p)
{
	size_t i;

	for (i = 0; i < p->nlisten; i++)
		listener_close(&p->lis[i]);
	p->accepting = ACCEPT_OFF;
	listeners_update(p);
}

/* ---- active health checks ---- */

/* Returns the backend whose check has pollfd slot j, and its service. */
static struct backend *
check_at(struct tcpproxy *p, size_t j, struct service **svcp)
{
	struct service *svc;
	size_t k;

	for (svc = p->services; svc != NULL && !svc->retired; svc = svc->next)
		for (k = 0; k < svc->nbackends; k++)
			if (svc->health_check > 0 &&
			    svc->backends[k]->check_slot == j) {
				*svcp = svc;
				return svc->backends[k];
			}
	return NULL;
}

/* Returns a delay of about ms, give or take a tenth: checks spread out. */
static long long
jitter(struct tcpproxy *p, long long ms)
{
	long long span = ms / 5 + 1;

	p->seed = p->seed * 1103515245u + 12345u;
	return ms - span / 2 + (long long)((p->seed >> 8) % (unsigned)span);
}

/* Ends the check of be: err 0 is a success.  Schedules the next. */
static void
check_done(struct tcpproxy *p, struct service *svc, struct backend *be,
    int err)
{
	struct pollfd *pfd = &p->pfd[be->check_slot];

	fd_close(be->check_fd);
	be->check_fd = -1;
	pfd->fd = -1;
	pfd->revents = 0;
	if (err == 0) {
		backend_ok(p, svc, be);
		be->check_addr = 0;
	} else {
		say(p, TCPPROXY_LOG_DEBUG, "check backend=%s server=%s: %s%s",
		    be->name, be->addrs[be->check_addr].name, strerror(err),
		    svc->tag);
		if (be->check_addr + 1 < be->naddrs) {
			/* The next address is checked at once. */
			be->check_addr++;
			be->check_at = p->now;
			return;
		}
		be->check_addr = 0;
		backend_failed(p, svc, be, err);
	}
	be->check_at = p->now + jitter(p, svc->health_check);
}

/* Starts the check of be: a nonblocking connect, nothing sent. */
static void
check_start(struct tcpproxy *p, struct service *svc, struct backend *be)
{
	long long limit = svc->timers[TIMER_CONNECT].timeout;

	if (be->check_addr >= be->naddrs)
		be->check_addr = 0;
	if ((be->check_fd = socket_connect(svc, &be->addrs[be->check_addr]))
	    == -1) {
		if (errno == EMFILE || errno == ENFILE) {
			be->check_at = p->now + svc->health_check;
			return;	/* no verdict without a descriptor */
		}
		check_done(p, svc, be, errno);
		return;
	}
	p->pfd[be->check_slot].fd = be->check_fd;
	p->pfd[be->check_slot].events = POLLOUT;
	if (limit == 0 || limit > svc->health_check)
		limit = svc->health_check;
	be->check_at = p->now + limit;
}

/* Finishes the checks whose sockets polled writable. */
static void
checks_handle(struct tcpproxy *p)
{
	size_t j;

	for (j = 1 + p->nlisten; j < p->base; j++) {
		struct service *svc;
		struct backend *be;
		int err = 0;
		socklen_t len = sizeof(err);

		if (p->pfd[j].fd < 0 || p->pfd[j].revents == 0 ||
		    (be = check_at(p, j, &svc)) == NULL)
			continue;
		if (getsockopt(be->check_fd, SOL_SOCKET, SO_ERROR, &err,
		    &len) == -1)
			err = errno;
		if (err == 0 && svc->send_proxy) {
			/* What the spec prescribes for a check: v2 LOCAL, v1
			 * UNKNOWN; best effort, the connect is the verdict. */
			unsigned char hdr[PROXY_HDR_MAX];
			size_t n = proxy_header(svc->send_proxy, NULL, NULL, hdr);

			(void)send(be->check_fd, hdr, n, SEND_FLAGS);
		}
		if (err != EINPROGRESS)
			check_done(p, svc, be, err);
	}
}

/* Starts the checks that are due and fails those that took too long. */
static void
checks_expire(struct tcpproxy *p)
{
	struct service *svc;
	size_t k;

	for (svc = p->services; svc != NULL && !svc->retired; svc = svc->next) {
		if (svc->health_check == 0)
			continue;
		for (k = 0; k < svc->nbackends; k++) {
			struct backend *be = svc->backends[k];

			if (be->check_at > p->now)
				continue;
			if (be->check_fd >= 0)
				check_done(p, svc, be, ETIMEDOUT);
			else
				check_start(p, svc, be);
		}
	}
}

/* Closes every check in flight (the proxy stops). */
static void
checks_close(struct tcpproxy *p)
{
	struct service *svc;
	size_t k;

	for (svc = p->services; svc != NULL; svc = svc->next)
		for (k = 0; k < svc->nbackends; k++) {
			struct backend *be = svc->backends[k];

			if (be->check_fd >= 0 && svc->health_check > 0 &&
			    !svc->retired) {
				fd_close(be->check_fd);
				be->check_fd = -1;
				p->pfd[be->check_slot].fd = -1;
			}
		}
}

/* ---- stopping and timers ---- */

/* Empties the wake pipe and acts on the requests it carried. */
static void
wake_read(struct tcpproxy *p)
{
	char buf[64];
	ssize_t n, i;

	/* A byte per request: 's' stop (the second ends the grace), 'd'
	 * drain, anything else only wakes. */
	while ((n = read(p->wake[0], buf, sizeof(buf))) > 0) {
		for (i = 0; i < n; i++) {
			if (buf[i] != 's' && buf[i] != 'd')
				continue;
			if (p->stopping == 0) {
				listeners_close(p);
				checks_close(p);
				p->queue_due = 1;	/* held: closed or served */
				say(p, TCPPROXY_LOG_DEBUG, "stopping, %lu "
				    "bridges open", (unsigned long)p->nbridges);
			}
			if (buf[i] == 'd') {
				if (p->stopping == 0) {
					p->draining = 1;
					p->grace_end = LLONG_MAX;
					p->stopping = 1;
				}
				continue;
			}
			if (p->stopping == 0 || p->draining) {
				p->draining = 0;
				p->stopping = 1;
				p->grace_end = p->now +
				    secs_to_ms(p->cfg.grace);
			} else {
				p->stopping++;
				p->grace_end = p->now;
			}
		}
	}
}

/*
 * Closes the bridges of svc whose timers ran out.  Closing the last
 * bridge of a retired service frees it, so it holds a reference of its
 * own meanwhile.
 */
static void
service_expire(struct tcpproxy *p, struct service *svc)
{
	struct timer_list *l;
	struct bridge *b;

	svc->refs++;
	l = &svc->timers[TIMER_CONNECT];
	while ((b = l->head) != NULL && b->last + l->timeout <= p->now) {
		server_retry(p, b, ETIMEDOUT);
		(void)bridge_settle(p, b);
	}
	l = &svc->timers[TIMER_IDLE];
	while ((b = l->head) != NULL && b->last + l->timeout <= p->now) {
		bridge_end(b, TCPPROXY_REASON_IDLE_TIMEOUT, 0);
		bridge_close(p, b);
	}
	l = &svc->timers[TIMER_QUEUE];
	while ((b = l->head) != NULL && b->last + l->timeout <= p->now) {
		bridge_end(b, TCPPROXY_REASON_QUEUE_TIMEOUT, 0);
		bridge_close(p, b);
	}
	/* A PROXY header is due; a ClientHello only decides the route. */
	l = &svc->timers[TIMER_PREAMBLE];
	while ((b = l->head) != NULL && b->last + l->timeout <= p->now) {
		timer_unlink(p, b);
		if (b->flags & B_PROXY)
			bridge_refuse(p, b, "proxy-timeout");
		else
			(void)preamble_parse(p, b, 1);
	}
	service_put(p, svc);
}

/* Closes the bridges whose timers ran out, and lifts --rate pauses. */
static void
timers_expire(struct tcpproxy *p)
{
	struct service *svc, *next_svc;
	struct bridge *b, *next;

	for (svc = p->services; svc != NULL; svc = next_svc) {
		/* Closing a retired service's last bridge frees it. */
		next_svc = svc->next;
		if (svc->refs > (svc->retired ? 0u : 1u))
			service_expire(p, svc);
	}
	for (b = p->fdwait.head; b != NULL; b = next) {
		next = b->next;
		if (b->svc->timers[TIMER_CONNECT].timeout > 0 &&
		    b->last + b->svc->timers[TIMER_CONNECT].timeout <= p->now) {
			bridge_end(b, TCPPROXY_REASON_CONNECT_FAILED, EMFILE);
			bridge_close(p, b);
		}
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
	if (!p->stopping && p->nchecks > 0)
		checks_expire(p);
	if (p->accepting == ACCEPT_NOFD && p->now >= p->accept_retry) {
		/* Descriptors may have been freed elsewhere (ENFILE). */
		if (p->fdwait.head != NULL)
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
	while ((b = p->fdwait.head) != NULL) {
		if (server_connect(p, b, 0) == 0 && b->state == BRIDGE_WAIT_FD)
			break;		/* out of descriptors again */
		(void)bridge_settle(p, b);
	}
}

/*
 * Gives the places bridges left to the clients held by max_clients, in
 * the order they came; after a stop (not a drain) closes them instead,
 * since they were never served.
 */
static void
queue_serve(struct tcpproxy *p)
{
	struct service *svc, *next_svc;
	struct bridge *b;

	p->queue_due = 0;
	for (svc = p->services; svc != NULL; svc = next_svc) {
		next_svc = svc->next;
		svc->refs++;	/* closing its last bridge must not free it */
		while ((b = svc->timers[TIMER_QUEUE].head) != NULL) {
			if (p->stopping && !p->draining) {
				bridge_close(p, b);
				continue;
			}
			/* A reload may have lifted the limit (0). */
			if (svc->max_clients > 0 &&
			    svc->st->open >= svc->max_clients)
				break;
			timer_unlink(p, b);
			svc->st->queued--;
			bridge_begin(p, b);
		}
		service_put(p, svc);
	}
}

/* Returns the earlier of two deadlines, -1 meaning none. */
static long long
earlier(long long when, long long t)
{
	return when < 0 || t < when ? t : when;
}

/* Returns ms until the next deadline, capped by limit (-1: no limit). */
static int
next_timeout(const struct tcpproxy *p, int limit)
{
	const struct service *svc;
	const struct bridge *b;
	long long when = -1, wait;
	size_t k;
	int t;

	if (p->fd_freed || p->queue_due)
		return 0;	/* waiters to serve first */
	for (svc = p->services; svc != NULL; svc = svc->next) {
		for (t = TIMER_CONNECT; t < TIMER_FDWAIT; t++)
			if ((b = svc->timers[t].head) != NULL)
				when = earlier(when, b->last +
				    svc->timers[t].timeout);
		if (svc->health_check > 0 && !svc->retired && !p->stopping)
			for (k = 0; k < svc->nbackends; k++)
				when = earlier(when,
				    svc->backends[k]->check_at);
	}
	for (b = p->fdwait.head; b != NULL; b = b->next)
		if (b->svc->timers[TIMER_CONNECT].timeout > 0)
			when = earlier(when, b->last +
			    b->svc->timers[TIMER_CONNECT].timeout);
	for (b = p->throttled; b != NULL; b = b->tnext) {
		int s;

		for (s = CLIENT; s <= SERVER; s++)
			if (b->flow[s].resume != 0)
				when = earlier(when, b->flow[s].resume);
	}
	if (p->nheap > 0)
		when = earlier(when, p->heap[0]->fx->due);
	if (p->ctl_fd >= 0 && ctl_deadline(p) >= 0)
		when = earlier(when, ctl_deadline(p));
	if (p->stopping && !p->draining)
		when = earlier(when, p->grace_end);
	if (p->accepting == ACCEPT_NOFD)
		when = earlier(when, p->accept_retry);
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
	if (b->state == BRIDGE_PREAMBLE)
		return rev[CLIENT] != 0 && b->rd[CLIENT] ?
		    preamble_read(p, b) : bridge_settle(p, b);
	if (b->state == BRIDGE_CONNECTING && rev[SERVER] != 0) {
		server_connected(p, b, rev[SERVER]);
		rev[SERVER] = 0;
	}
	/* POLLHUP and POLLERR count as readable and writable: the next
	 * recv() or send() tells what happened. */
	for (s = CLIENT; s <= SERVER; s++) {
		if ((rev[s] & (POLLIN | POLLHUP | POLLERR)) && b->rd[s] &&
		    (s == CLIENT || b->state == BRIDGE_OPEN))
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
	    nfds > p->base + 2 * TCPPROXY_BUSY_BRIDGES ||
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
	size_t base = p->base;
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
	p->rounds++;
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
	if (n > 0)
		checks_handle(p);
	timers_expire(p);
	faults_expire(p);
	/* Bridges waiting for a descriptor go before new clients. */
	if (p->fd_freed)
		fdwait_connect(p);
	if (p->queue_due)
		queue_serve(p);
	for (i = 0; i < p->nlisten; i++)
		if (p->pfd[1 + i].fd >= 0 && p->pfd[1 + i].revents != 0)
			listener_accept(p, i);
	/* Last: a wait sees the counters of this round. */
	ctl_round(p);
	return p->stopping && p->nbridges == 0 ? 0 : 1;
}

/* ---- services: building, switching, freeing ---- */

/*
 * Returns whether s is a port: 0..65535 in digits (0 only if zero_ok), or
 * a service name such as "http" (letters, digits, '-'), which the
 * resolver then looks up.  The one place a port is validated.
 */
static int
port_ok(const char *s, int zero_ok)
{
	size_t i, alpha = 0;

	for (i = 0; s[i] != '\0'; i++) {
		if ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z'))
			alpha++;
		else if (s[i] != '-' && (s[i] < '0' || s[i] > '9'))
			return 0;
	}
	if (i == 0 || i > 32)
		return 0;
	if (alpha > 0)	/* a name starts with a letter */
		return (s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z');
	if (strchr(s, '-') != NULL)
		return 0;
	return i <= 5 && strtol(s, NULL, 10) <= 65535 &&
	    (zero_ok || strtol(s, NULL, 10) > 0);
}

/* Returns a copy of s (NULL stays NULL); sets *bad if out of memory. */
static char *
dup_str(const char *s, int *bad)
{
	char *d;
	size_t n;

	if (s == NULL)
		return NULL;
	n = strlen(s) + 1;
	if ((d = malloc(n)) == NULL) {
		*bad = 1;
		return NULL;
	}
	memcpy(d, s, n);
	return d;
}

/*
 * Returns the path of a Unix socket endpoint written as host with no
 * port ("unix:" in front is optional).
 */
static const char *
unix_path(const char *host)
{
	return strncmp(host, "unix:", 5) == 0 ? host + 5 : host;
}

/* Returns whether host (with no port) is a Unix socket path that fits. */
static int
unix_path_ok(const char *host)
{
	struct sockaddr_un sun;

	return host != NULL && unix_path(host)[0] != '\0' &&
	    strlen(unix_path(host)) < sizeof(sun.sun_path);
}

/* Formats an endpoint as written: "HOST:PORT", "[V6]:PORT" or a path. */
static void
endpoint_name(const char *host, const char *port, char *buf, size_t size)
{
	if (port == NULL || *port == '\0')
		snprintf(buf, size, "%s", unix_path(host));
	else
		snprintf(buf, size, strchr(host, ':') != NULL ? "[%s]:%s" :
		    "%s:%s", host, port);
}

/*
 * Resolves host:port into a fresh array of addresses, without repeats;
 * returns it with its length in *n, or NULL with the reason in err.  A
 * port NULL or "" makes host a Unix socket's path.
 */
static struct addr *
addrs_resolve(const char *host, const char *port, int passive, size_t *n,
    char *err, size_t errlen)
{
	struct addrinfo *res, *ai;
	struct addr *a;
	size_t count;

	*n = 0;
	if (port == NULL || *port == '\0') {
		struct sockaddr_un *sun;

		if (!unix_path_ok(host))
			return fail(err, errlen, ENAMETOOLONG, "socket path "
			    "'%s' is too long (at most %lu bytes)", host != NULL ?
			    host : "", (unsigned long)sizeof(sun->sun_path) - 1);
		if ((a = calloc(1, sizeof(*a))) == NULL)
			return fail(err, errlen, ENOMEM, "out of memory");
		sun = (struct sockaddr_un *)(void *)&a->ss;
		sun->sun_family = AF_UNIX;
		strcpy(sun->sun_path, unix_path(host));
		a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
		    strlen(sun->sun_path) + 1);
		/* Cut to fit: logs name a Unix backend by its path. */
		snprintf(a->name, sizeof(a->name), "%.*s",
		    (int)sizeof(a->name) - 1, sun->sun_path);
		*n = 1;
		(void)passive;
		return a;
	}
	if (resolve(host, port, passive, &res, &count, err, errlen) == -1)
		return NULL;
	if ((a = calloc(count, sizeof(*a))) == NULL) {
		freeaddrinfo(res);
		return fail(err, errlen, ENOMEM, "out of memory");
	}
	*n = 0;
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		if (addr_seen(res, ai) || ai->ai_addrlen > sizeof(a->ss) ||
		    (ai->ai_family != AF_INET && ai->ai_family != AF_INET6))
			continue;
		memcpy(&a[*n].ss, ai->ai_addr, ai->ai_addrlen);
		a[*n].len = ai->ai_addrlen;
		addr_name(ai->ai_addr, ai->ai_addrlen, a[*n].name,
		    sizeof(a[*n].name));
		(*n)++;
	}
	freeaddrinfo(res);
	if (*n == 0) {
		free(a);
		return fail(err, errlen, EADDRNOTAVAIL, "cannot resolve '%s': "
		    "no usable address", host != NULL ? host : "*");
	}
	return a;
}

/* Drops a reference to a backend, freeing it with the last. */
static void
backend_put(struct backend *be)
{
	if (be == NULL || --be->refs > 0)
		return;
	fd_close(be->check_fd);
	free(be->host);
	free(be->port);
	free(be->name);
	free(be->addrs);
	free(be);
}

/* Drops a reference to a service's shared state, freeing it last. */
static void
state_put(struct state *st)
{
	size_t i;

	if (st == NULL || --st->refs > 0)
		return;
	if (st->sources != NULL) {
		for (i = 0; i < SOURCE_BUCKETS; i++)
			while (st->sources[i] != NULL) {
				struct source *s = st->sources[i];

				st->sources[i] = s->next;
				free(s);
			}
		free(st->sources);
	}
	free(st->name);
	free(st);
}

/* Frees a service record that no bridge points at. */
static void
service_free(struct service *svc)
{
	size_t i;

	if (svc == NULL)
		return;
	for (i = 0; i < svc->nbackends; i++)
		backend_put(svc->backends[i]);
	free(svc->backends);
	for (i = 0; i < svc->nallow + svc->ndeny; i++)
		free(svc->acl[i].glob);
	free(svc->acl);
	for (i = 0; i < svc->ntrusted; i++)
		free(svc->trusted[i].glob);
	free(svc->trusted);
	for (i = 0; i < svc->nroutes; i++)
		free(svc->routes[i]);
	free(svc->routes);
	while (svc->faults != NULL) {
		struct fault *f = svc->faults;

		svc->faults = f->next;
		f->dead = 1;
		fault_put(f);
	}
	for (i = 0; i < svc->nspare; i++)
		free(svc->spare[i]);
	free(svc->spare);
	state_put(svc->st);
	free(svc->name);
	free(svc->where);
	free(svc->local_host);
	free(svc->local_port);
	free(svc);
}

/* Drops a reference to a service; a retired one goes with its last. */
static void
service_put(struct tcpproxy *p, struct service *svc)
{
	struct service **pp;

	if (--svc->refs > 0)
		return;
	for (pp = &p->services; *pp != NULL; pp = &(*pp)->next)
		if (*pp == svc) {
			*pp = svc->next;
			break;
		}
	service_free(svc);
}

/*
 * Parses one access list entry: a CIDR block or bare address, or one of
 * rinetd's patterns (digits, '.', ':', hex letters, '*' and '?').
 * Returns 0, or -1 if it is neither.
 */
static int
acl_parse(const char *s, struct acl *a)
{
	char buf[INET6_ADDRSTRLEN + 8], *slash, *end;
	unsigned int max;
	unsigned long bits;
	size_t i;

	memset(a, 0, sizeof(*a));
	if (strpbrk(s, "*?") != NULL) {
		int bad = 0;

		if (s[strspn(s, "0123456789abcdefABCDEF.:*?")] != '\0' ||
		    strlen(s) > INET6_ADDRSTRLEN)
			return -1;
		a->glob = dup_str(s, &bad);
		return bad ? -1 : 0;
	}
	if (strlen(s) >= sizeof(buf))
		return -1;
	strcpy(buf, s);
	if ((slash = strchr(buf, '/')) != NULL)
		*slash++ = '\0';
	if (inet_pton(AF_INET, buf, a->key + 1) == 1) {
		a->key[0] = 4;
		max = 32;
	} else if (inet_pton(AF_INET6, buf, a->key + 1) == 1) {
		a->key[0] = 6;
		max = 128;
	} else {
		return -1;
	}
	a->bits = max;
	if (slash != NULL) {
		if (*slash < '0' || *slash > '9' || strlen(slash) > 3)
			return -1;
		bits = strtoul(slash, &end, 10);
		if (*end != '\0' || bits > max)
			return -1;
		a->bits = (unsigned int)bits;
	}
	for (i = 0; i < 16; i++) {
		unsigned int keep = a->bits > 8 * i ? a->bits - 8 * (unsigned)i :
		    0;

		if (keep < 8)
			a->key[1 + i] &= (unsigned char)(0xff00 >> keep);
	}
	return 0;
}

/* Formats "WHERE: " for messages about spec into buf; returns buf. */
static const char *
spec_where(const struct tcpproxy_service *spec, char *buf, size_t size)
{
	if (spec->where != NULL)
		snprintf(buf, size, "%s: ", spec->where);
	else if (spec->name != NULL)
		snprintf(buf, size, "service %s: ", spec->name);
	else
		buf[0] = '\0';
	return buf;
}

/*
 * Returns whether a --sni pattern is a host name, or "*." and one: the
 * letters, digits, '-', '_' and '.' a server name may have.
 */
static int
sni_pattern_ok(const char *s)
{
	if (s == NULL)
		return 0;
	if (s[0] == '*' && s[1] == '.')
		s += 2;
	return s[0] != '\0' && strlen(s) < 256 && s[strspn(s,
	    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")]
	    == '\0';
}

/* Checks the settings of a service that need no resolver; 0 or -1. */
static int
spec_check(const struct tcpproxy_service *spec, char *err, size_t errlen)
{
	char w[1024];
	size_t i;

	spec_where(spec, w, sizeof(w));
	if (spec->local_port == NULL || *spec->local_port == '\0' ?
	    !unix_path_ok(spec->local_host) : !port_ok(spec->local_port, 1))
		return failed(err, errlen, EINVAL, "%sinvalid local port '%s'",
		    w, spec->local_port ? spec->local_port : "");
	if (spec->nbackends == 0 || spec->backends == NULL)
		return failed(err, errlen, EINVAL, "%sno backend", w);
	for (i = 0; i < spec->nbackends + spec->nroutes; i++) {
		const struct tcpproxy_backend *be = i < spec->nbackends ?
		    &spec->backends[i] :
		    &spec->routes[i - spec->nbackends].backend;

		if (be->host == NULL || (be->port == NULL || *be->port == '\0' ?
		    !unix_path_ok(be->host) : !port_ok(be->port, 0)))
			return failed(err, errlen, EINVAL, "%sinvalid backend "
			    "port '%s'", w, be->port ? be->port : "");
	}
	for (i = 0; i < spec->nroutes; i++)
		if (!sni_pattern_ok(spec->routes[i].pattern))
			return failed(err, errlen, EINVAL, "%sinvalid --sni "
			    "pattern '%s'", w, spec->routes[i].pattern != NULL ?
			    spec->routes[i].pattern : "");
	if (!(spec->connect_timeout >= 0) || !(spec->idle_timeout >= 0) ||
	    !(spec->down_time >= 0) || !(spec->health_check >= 0) ||
	    !(spec->proxy_timeout >= 0) || !(spec->keepalive_idle >= 0) ||
	    spec->balance > TCPPROXY_BALANCE_FIRST ||
	    spec->send_proxy > TCPPROXY_PROXY_V2 || spec->nroutes > 65535 ||
	    spec->socket_mode > 07777)
		return failed(err, errlen, EINVAL, "%sinvalid configuration",
		    w);
	return 0;
}

/*
 * Builds a service record from spec: copies every setting, resolves its
 * backends and source address.  Binds nothing.  Returns it (refs 1, with
 * a state and backends of its own), or NULL with the reason in err.
 */
static struct service *
service_build(const struct tcpproxy *p, const struct tcpproxy_service *spec,
    char *err, size_t errlen)
{
	struct service *svc;
	struct fault *f0;
	char w[1024], name[256], msg[256];
	size_t i, n;
	int bad = 0;

	if (spec_check(spec, err, errlen) == -1)
		return NULL;
	spec_where(spec, w, sizeof(w));
	if ((svc = calloc(1, sizeof(*svc))) == NULL ||
	    (svc->st = calloc(1, sizeof(*svc->st))) == NULL ||
	    /* One more than needed: never calloc(0), whatever spec says. */
	    (svc->backends = calloc(spec->nbackends + spec->nroutes + 1,
	    sizeof(struct backend *))) == NULL ||
	    (svc->routes = calloc(spec->nroutes + 1, sizeof(char *))) ==
	    NULL ||
	    (svc->spare = calloc(TCPPROXY_SPARE_BUFFERS,
	    sizeof(*svc->spare))) == NULL)
		goto nomem;
	svc->refs = 1;
	svc->st->refs = 1;
	if (spec->name != NULL)
		snprintf(name, sizeof(name), "%s", spec->name);
	else
		endpoint_name(spec->local_host != NULL ? spec->local_host : "*",
		    spec->local_port, name, sizeof(name));
	svc->name = dup_str(name, &bad);
	svc->st->name = dup_str(name, &bad);
	svc->where = dup_str(w, &bad);
	svc->local_host = dup_str(spec->local_host != NULL ?
	    spec->local_host : "", &bad);
	svc->local_port = dup_str(spec->local_port != NULL ?
	    spec->local_port : "", &bad);
	if (bad)
		goto nomem;
	svc->balance = spec->balance;
	svc->max_clients = spec->max_clients;
	svc->max_per_source = spec->max_per_source;
	svc->fails = spec->fails > 0 ? spec->fails : 1;
	svc->down_time = secs_to_ms(spec->down_time);
	svc->health_check = secs_to_ms(spec->health_check);
	svc->half_close = spec->half_close;
	svc->max_bytes = spec->max_bytes;
	svc->rate = spec->rate;
	svc->bufsize = spec->buffer_size ? spec->buffer_size :
	    TCPPROXY_BUFFER_SIZE;
	if (svc->bufsize < room_min(p))
		svc->bufsize = room_min(p);
	svc->timers[TIMER_CONNECT].timeout =
	    secs_to_ms(spec->connect_timeout);
	svc->timers[TIMER_IDLE].timeout = secs_to_ms(spec->idle_timeout);
	svc->send_proxy = (int)spec->send_proxy;
	svc->accept_proxy = spec->accept_proxy;
	if (spec->accept_proxy || spec->nroutes > 0)
		svc->timers[TIMER_PREAMBLE].timeout =
		    secs_to_ms(spec->proxy_timeout);
	/* A preamble and a header to send need room beside the bytes. */
	if ((spec->accept_proxy || spec->nroutes > 0 || spec->send_proxy) &&
	    svc->bufsize < TCPPROXY_PREAMBLE_BUFFER)
		svc->bufsize = TCPPROXY_PREAMBLE_BUFFER;
	if (spec->keepalive)
		/* Linux takes at most 32767 s, and ignores more. */
		svc->keepalive = spec->keepalive_idle >= 1 ?
		    (spec->keepalive_idle < 32767 ?
		    (int)spec->keepalive_idle : 32767) : 1;
	svc->socket_mode = spec->socket_mode;
	svc->timers[TIMER_QUEUE].timeout = secs_to_ms(spec->queue_timeout < 0 ?
	    spec->connect_timeout : spec->queue_timeout);
	/* A bucket of 1/20 s: smooth, yet reads stay worth a system call. */
	svc->burst = (double)spec->rate / 20;
	if (svc->burst > (double)svc->bufsize)
		svc->burst = (double)svc->bufsize;
	if (svc->burst < 1)
		svc->burst = 1;
	if ((svc->acl = calloc(spec->nallow + spec->ndeny + 1,
	    sizeof(*svc->acl))) == NULL ||
	    (svc->trusted = calloc(spec->nproxy_from + 1,
	    sizeof(*svc->trusted))) == NULL)
		goto nomem;
	n = spec->nallow + spec->ndeny;
	for (i = 0; i < n + spec->nproxy_from; i++) {
		const char *s = i < spec->nallow ? spec->allow[i] :
		    i < n ? spec->deny[i - spec->nallow] :
		    spec->proxy_from[i - n];
		struct acl *a = i < n ? &svc->acl[i] : &svc->trusted[i - n];

		if (acl_parse(s, a) == -1) {
			fail(err, errlen, EINVAL, "%sinvalid %s '%s': not an "
			    "address, CIDR block or pattern", w,
			    i < spec->nallow ? "allow" : i < n ? "deny" :
			    "--proxy-from", s);
			service_free(svc);
			return NULL;
		}
		if (i < spec->nallow)
			svc->nallow++;
		else if (i < n)
			svc->ndeny++;
		else
			svc->ntrusted++;
	}
	if (spec->source != NULL) {
		struct addr *a = addrs_resolve(spec->source, "0", 1, &n, msg,
		    sizeof(msg));

		if (a == NULL) {
			fail(err, errlen, errno, "%ssource: %s", w, msg);
			service_free(svc);
			return NULL;
		}
		svc->source = a[0];
		free(a);
	}
	for (i = spec->nfaults; i-- > 0;) {
		struct fault *f = calloc(1, sizeof(*f));

		if (f == NULL)
			goto nomem;
		if (fault_parse(spec->faults[i], f, msg, sizeof(msg)) == -1) {
			free(f);
			fail(err, errlen, EINVAL, "%s%s", w, msg);
			service_free(svc);
			return NULL;
		}
		f->refs = 1;
		f->next = svc->faults;
		svc->faults = f;
	}
	if ((f0 = faults_name(svc->faults)) != NULL) {
		fail(err, errlen, EINVAL, "%sfault name '%s' is used twice", w,
		    f0->name);
		service_free(svc);
		return NULL;
	}
	/* Its own backends, then one per route. */
	svc->nown = spec->nbackends;
	for (i = 0; i < spec->nbackends + spec->nroutes; i++) {
		const struct tcpproxy_backend *sb = i < spec->nbackends ?
		    &spec->backends[i] :
		    &spec->routes[i - spec->nbackends].backend;
		struct backend *be;

		if (i >= spec->nbackends) {
			svc->routes[svc->nroutes] = dup_str(
			    spec->routes[i - spec->nbackends].pattern, &bad);
			svc->nroutes++;
		}
		if ((be = calloc(1, sizeof(*be))) == NULL)
			goto nomem;
		svc->backends[svc->nbackends++] = be;
		be->refs = 1;
		be->check_fd = -1;
		be->host = dup_str(sb->host, &bad);
		be->port = dup_str(sb->port, &bad);
		endpoint_name(sb->host, sb->port, name, sizeof(name));
		be->name = dup_str(name, &bad);
		if (bad)
			goto nomem;
		if ((be->addrs = addrs_resolve(sb->host, sb->port, 0,
		    &be->naddrs, msg, sizeof(msg))) == NULL) {
			fail(err, errlen, errno, "%s%s", w, msg);
			service_free(svc);
			return NULL;
		}
	}
	return svc;
nomem:
	service_free(svc);
	return fail(err, errlen, ENOMEM, "%sout of memory", w);
}

/*
 * Checks that svc, the last of the list at head, has a name of its own.
 * A name given by default ("LOCAL_HOST:LOCAL_PORT", which two rules on
 * port 0 share) is made unique with "#2", "#3"...  Returns 0, or -1 for a
 * name given twice on purpose.
 */
static int
service_name_unique(const struct service *head, struct service *svc,
    int by_default)
{
	const struct service *o;
	unsigned long k;
	char name[300];

	for (k = 1; k < 1000000; k++) {
		if (k > 1)
			snprintf(name, sizeof(name), "%s#%lu", svc->st->name, k);
		for (o = head; o != svc; o = o->next)
			if (strcmp(o->name, k > 1 ? name : svc->name) == 0)
				break;
		if (o == svc)
			break;
		if (!by_default)
			return -1;
	}
	if (k > 1) {
		int bad = 0;
		char *n1 = dup_str(name, &bad), *n2 = dup_str(name, &bad);

		if (bad) {
			free(n1);
			free(n2);
			return -1;
		}
		free(svc->name);
		free(svc->st->name);
		svc->name = n1;
		svc->st->name = n2;
	}
	return 0;
}

/* Fills the service of the simple case from the config's own fields. */
static void
service_from_config(struct tcpproxy_service *svc,
    struct tcpproxy_backend *be, const struct tcpproxy_config *cfg)
{
	tcpproxy_service_init(svc);
	svc->local_host = cfg->local_host;
	svc->local_port = cfg->local_port;
	be->host = cfg->remote_host;
	be->port = cfg->remote_port;
	svc->backends = be;
	svc->nbackends = be->host != NULL ? 1 : 0;
	svc->max_clients = cfg->max_clients;
	svc->connect_timeout = cfg->connect_timeout;
	svc->idle_timeout = cfg->idle_timeout;
	svc->buffer_size = cfg->buffer_size;
	svc->half_close = cfg->half_close;
	svc->max_bytes = cfg->max_bytes;
	svc->rate = cfg->rate;
}

/*
 * Builds the records of every service cfg describes into a list, in
 * order.  Returns the list, or NULL with the reason in err.  *count gets
 * the number of services.
 */
static struct service *
services_build(const struct tcpproxy *p, const struct tcpproxy_config *cfg,
    size_t *count, char *err, size_t errlen)
{
	struct tcpproxy_service simple;
	struct tcpproxy_backend simple_be;
	struct service *head = NULL, **tail = &head, *svc;
	size_t i, n = cfg->nservices;
	int with_simple = cfg->local_port != NULL;

	if (with_simple)
		service_from_config(&simple, &simple_be, cfg);
	*count = 0;
	if (n + (size_t)with_simple == 0) {
		fail(err, errlen, EINVAL, "no service configured");
		return NULL;
	}
	for (i = 0; i < n + (size_t)with_simple; i++) {
		const struct tcpproxy_service *spec = with_simple ?
		    (i == 0 ? &simple : &cfg->services[i - 1]) :
		    &cfg->services[i];

		if ((svc = service_build(p, spec, err, errlen)) == NULL)
			goto bad;
		*tail = svc;
		tail = &svc->next;
		(*count)++;
		if (service_name_unique(head, svc, spec->name == NULL) == -1) {
			fail(err, errlen, EINVAL, "%sservice name '%s' is used "
			    "twice", svc->where, svc->name);
			goto bad;
		}
	}
	for (svc = head; svc != NULL; svc = svc->next)
		if (*count > 1)
			snprintf(svc->tag, sizeof(svc->tag), " service=%s",
			    svc->name);
	return head;
bad:
	while (head != NULL) {
		svc = head->next;
		service_free(head);
		head = svc;
	}
	return NULL;
}


/* Returns whether two socket addresses are equal (port too, if ports). */
static int
addr_equal(const struct addr *a, const struct addr *b, int ports)
{
	struct sockaddr_storage x = a->ss, y = b->ss;

	if (a->len != b->len || a->ss.ss_family != b->ss.ss_family)
		return 0;
	if (!ports) {
		addr_set_port((struct sockaddr *)&x, 0);
		addr_set_port((struct sockaddr *)&y, 0);
	}
	return memcmp(&x, &y, a->len) == 0;
}

/*
 * Returns whether connecting to address t could reach listener address
 * l: same family and port, and the same address, or a wildcard listener
 * and a loopback target.  A proxy relaying to itself would eat every
 * descriptor in a loop.
 */
static int
addr_is_self(const struct addr *t, const struct addr *l)
{
	static const unsigned char any6[16], lo6[16] = { [15] = 1 };

	if (l->ss.ss_family != t->ss.ss_family)
		return 0;
	if (l->ss.ss_family == AF_UNIX)
		return addr_equal(t, l, 1);
	if (l->ss.ss_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)&l->ss;
		const struct sockaddr_in *r = (const void *)&t->ss;
		unsigned long h = ntohl(r->sin_addr.s_addr);

		return a->sin_port == r->sin_port &&
		    (a->sin_addr.s_addr == r->sin_addr.s_addr ||
		    (a->sin_addr.s_addr == htonl(INADDR_ANY) && (h >> 24) == 127));
	}
	if (l->ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)&l->ss;
		const struct sockaddr_in6 *r = (const void *)&t->ss;

		return a->sin6_port == r->sin6_port &&
		    (memcmp(&a->sin6_addr, &r->sin6_addr, 16) == 0 ||
		    (memcmp(&a->sin6_addr, any6, 16) == 0 &&
		    memcmp(&r->sin6_addr, lo6, 16) == 0));
	}
	return 0;
}

/* Returns the live listener of p that an address of svc can keep. */
static struct listener *
listener_find(struct tcpproxy *p, const struct service *svc,
    const struct addr *a)
{
	int any_port = strcmp(svc->local_port, "0") == 0;
	size_t i;

	for (i = 0; i < p->nlisten; i++) {
		struct listener *l = &p->lis[i];

		/* Port 0 as written: the port it got is the one it keeps. */
		if (!l->kept && l->fd >= 0 &&
		    strcmp(l->svc->local_host, svc->local_host) == 0 &&
		    strcmp(l->svc->local_port, svc->local_port) == 0 &&
		    addr_equal(&l->a, a, !any_port))
			return l;
	}
	return NULL;
}

/* Closes the listeners of a plan that were bound for it; frees it. */
static void
plan_abandon(struct tcpproxy *p, struct listener *lis, size_t n)
{
	size_t i, j;

	for (i = 0; i < n; i++) {
		int kept = 0;

		for (j = 0; j < p->nlisten; j++)
			if (p->lis[j].fd == lis[i].fd && p->lis[j].kept) {
				p->lis[j].kept = 0;
				kept = 1;
			}
		if (!kept)
			listener_close(&lis[i]);
	}
	free(lis);
}

/*
 * Binds n more sockets to the address of l for the other workers, with
 * REUSEPORT as l->fd has it, at the port l->fd got (port 0 as written is
 * picked once).  Fewer is no failure (out of descriptors, a kernel
 * without the option): the workers then share them, worker w taking
 * socket (w - 1) % (1 + ntwins) (listener_pick), so every socket still
 * has a worker to accept the clients the kernel queues on it.
 */
static void
listener_twin(struct tcpproxy *p, struct listener *l, size_t n)
{
	const struct sockaddr *sa = (const struct sockaddr *)&l->a.ss;
	int fd;

	if (n == 0)
		return;
	if ((l->twins = calloc(n, sizeof(*l->twins))) == NULL)
		errno = ENOMEM;
	else
		while (l->ntwins < n && (fd = listen_on(sa, l->a.len, 0, 1)) !=
		    -1)
			l->twins[l->ntwins++] = fd;
	if (l->ntwins < n)
		say(p, TCPPROXY_LOG_ERROR, "%lu workers share %lu sockets on "
		    "%s: %s", (unsigned long)n + 1,
		    (unsigned long)l->ntwins + 1, l->a.name, strerror(errno));
}

/*
 * Binds l, fresh in a plan, to its address: a TCP listener gets a socket
 * per worker where REUSEPORT balances (listener_twin), a Unix one is
 * shared.  Returns 0, or -1 with errno set.
 */
static int
listener_bind(struct tcpproxy *p, struct listener *l)
{
	const struct sockaddr *sa = (const struct sockaddr *)&l->a.ss;
	unsigned long w = p->cfg.program.workers;
	size_t more = REUSEPORT != 0 && sa->sa_family != AF_UNIX && w > 1 ?
	    (size_t)w - 1 : 0;
	socklen_t len = sizeof(l->a.ss);
	int fd;

	/*
	 * With REUSEPORT a bind to a port that a program of the same user
	 * listens on with it too would not fail but take part of its
	 * clients: a plain bind (no listen(), so no client queues on it)
	 * checks first that the port is free.  A port 0 needs no check: the
	 * kernel picks one that nobody listens on.
	 */
	/* cppcheck-suppress knownConditionTrueFalse ; 0 without REUSEPORT */
	if (more > 0 && sa_port(sa) != 0) {
		if ((fd = tcp_bind(sa, l->a.len, 0)) == -1)
			return -1;
		fd_close(fd);
	}
	if ((l->fd = listen_on(sa, l->a.len, l->svc->socket_mode, more > 0)) ==
	    -1)
		return -1;
	l->fresh = 1;
	l->owner = getpid();
	(void)getsockname(l->fd, (struct sockaddr *)&l->a.ss, &len);
	l->a.len = len;
	addr_name((struct sockaddr *)&l->a.ss, len, l->a.name,
	    sizeof(l->a.name));
	listener_twin(p, l, more);
	return 0;
}

/*
 * Binds every address the local host of each new service resolves to,
 * keeping the listeners of p whose address is unchanged.  With port 0
 * the first bind picks the port and the others reuse it.  An address
 * family the host lacks (no IPv6, say) is skipped if another one works.
 * Returns the new listener array (its length in *n), or NULL.
 */
static struct listener *
listeners_plan(struct tcpproxy *p, struct service *head, size_t *n,
    char *err, size_t errlen)
{
	struct listener *lis = NULL, *l, *grown;
	struct service *svc;
	struct addr *a;
	size_t i, j, k, na, first;
	int saved;

	*n = 0;
	for (svc = head; svc != NULL; svc = svc->next) {
		char msg[256];
		int port;

		if ((a = addrs_resolve(svc->local_host, svc->local_port, 1, &na,
		    msg, sizeof(msg))) == NULL) {
			fail(err, errlen, errno, "%s%s", svc->where, msg);
			goto bad;
		}
		/* na >= 1: addrs_resolve() fails rather than find nothing. */
		/* NOLINTNEXTLINE(clang-analyzer-optin.portability.UnixAPI) */
		if ((grown = realloc(lis, (*n + na) * sizeof(*lis))) == NULL) {
			free(a);
			fail(err, errlen, ENOMEM, "out of memory");
			goto bad;
		}
		lis = grown;
		first = *n;
		port = 0;
		for (i = 0; i < na; i++) {
			l = &lis[*n];
			memset(l, 0, sizeof(*l));
			l->svc = svc;
			l->a = a[i];
			if (port != 0)
				addr_set_port((struct sockaddr *)&l->a.ss, port);
			if ((grown = listener_find(p, svc, &l->a)) != NULL) {
				grown->kept = 1;
				l->fd = grown->fd;
				l->twins = grown->twins;
				l->ntwins = grown->ntwins;
				l->a = grown->a;
				l->owner = grown->owner;
			} else if (listener_bind(p, l) == -1) {
				saved = errno;
				addr_name((struct sockaddr *)&l->a.ss, l->a.len,
				    msg, sizeof(msg));
				if ((saved == EADDRNOTAVAIL ||
				    saved == EAFNOSUPPORT) &&
				    (i + 1 < na || *n > first)) {
					say(p, TCPPROXY_LOG_ERROR, "skipping "
					    "%s: %s", msg, strerror(saved));
					continue;
				}
				free(a);
				fail(err, errlen, saved, "%scannot listen on "
				    "%s: %s", svc->where, msg,
				    strerror(saved));
				goto bad;
			}
			if (port == 0)
				port = fd_port(l->fd);
			(*n)++;
		}
		free(a);
	}
	/* A service relaying to a listener of the proxy would loop. */
	for (svc = head; svc != NULL; svc = svc->next)
		for (k = 0; k < svc->nbackends; k++)
			for (j = 0; j < svc->backends[k]->naddrs; j++)
				for (i = 0; i < *n; i++)
					if (addr_is_self(
					    &svc->backends[k]->addrs[j],
					    &lis[i].a)) {
						fail(err, errlen, ELOOP, "%s"
						    "remote address %s is "
						    "the proxy's own listening"
						    " address", svc->where,
						    svc->backends[k]->
						    addrs[j].name);
						goto bad;
					}
	return lis;
bad:
	saved = errno;
	plan_abandon(p, lis, *n);
	errno = saved;
	return NULL;
}

/*
 * Finds, among p's live services, the record of the same name as svc,
 * and gives svc its state and the backends whose names are unchanged, so
 * health and counters carry over.  The fresh addresses svc resolved
 * replace the old ones.
 */
static void
service_inherit(struct tcpproxy *p, struct service *svc)
{
	struct service *old;
	size_t i, j;

	for (old = p->services; old != NULL && !old->retired; old = old->next)
		if (strcmp(old->name, svc->name) == 0)
			break;
	if (old == NULL || old->retired)
		return;
	state_put(svc->st);
	svc->st = old->st;
	svc->st->refs++;
	for (i = 0; i < svc->nbackends; i++) {
		struct backend *nb = svc->backends[i];

		for (j = 0; j < old->nbackends; j++) {
			struct backend *ob = old->backends[j];
			size_t k;

			/* A name written twice keeps two records. */
			for (k = 0; k < i && svc->backends[k] != ob; k++)
				;
			if (strcmp(ob->name, nb->name) != 0 || k < i)
				continue;
			free(ob->addrs);
			ob->addrs = nb->addrs;
			ob->naddrs = nb->naddrs;
			nb->addrs = NULL;
			ob->check_addr = 0;
			backend_put(nb);
			ob->refs++;
			svc->backends[i] = ob;
			break;
		}
	}
}

/*
 * Gives the health-checked backends of the live services their pollfd
 * slots after the listeners, spreads their first checks over one period,
 * and sets p->base.  Every check in flight was closed before.
 */
static void
checks_plan(struct tcpproxy *p)
{
	struct service *svc;
	size_t k, n = 0, i = 0;

	for (svc = p->services; svc != NULL && !svc->retired; svc = svc->next)
		if (svc->health_check > 0)
			n += svc->nbackends;
	for (svc = p->services; svc != NULL && !svc->retired; svc = svc->next)
		for (k = 0; k < svc->nbackends && svc->health_check > 0; k++) {
			struct backend *be = svc->backends[k];

			be->check_slot = 1 + p->nlisten + i++;
			be->check_at = p->now + svc->health_check *
			    (long long)i / (long long)(n + 1);
		}
	p->nchecks = n;
	p->ctl_slot = 1 + p->nlisten + n;
	p->base = p->ctl_slot + (p->ctl_fd >= 0 ? 1 + TCPPROXY_CTL_MAX : 0);
}

/*
 * Switches p to the services cfg describes.  Everything that can fail
 * (names, binds) is done first; the running configuration is touched
 * only once nothing can.  Returns 0, or -1 with errno and err set.
 */
static int
engine_switch(struct tcpproxy *p, const struct tcpproxy_config *cfg,
    char *err, size_t errlen)
{
	struct service *head, *svc, *next, *retired;
	struct listener *lis;
	struct pollfd *pfd;
	size_t count, nlis, i, oldbase = p->base;
	int saved;

	p->now = now_ms();
	if ((head = services_build(p, cfg, &count, err, errlen)) == NULL)
		return -1;
	if ((lis = listeners_plan(p, head, &nlis, err, errlen)) == NULL)
		goto bad;
	for (svc = head, i = 0; svc != NULL; svc = svc->next)
		if (svc->health_check > 0)
			i += svc->nbackends;
	if ((pfd = calloc(1 + nlis + i + 1 + TCPPROXY_CTL_MAX + 2 * p->cap,
	    sizeof(*pfd))) == NULL) {
		plan_abandon(p, lis, nlis);
		fail(err, errlen, ENOMEM, "out of memory");
		goto bad;
	}
	/* Nothing can fail from here on. */
	checks_close(p);
	for (svc = head; svc != NULL; svc = svc->next)
		service_inherit(p, svc);
	for (i = 0; i < p->nlisten; i++) {
		struct listener *l = &p->lis[i];

		if (!l->kept) {
			listener_close(l);
			continue;
		}
		/* A reload brings a service that was down up again. */
		if ((l->svc->down == DOWN_REFUSE ||
		    l->svc->down == DOWN_TIMEOUT) &&
		    listen(l->fd, TCPPROXY_BACKLOG) == -1)
			say(p, TCPPROXY_LOG_ERROR, "reload: cannot listen on %s "
			    "again: %s", l->a.name, strerror(errno));
	}
	free(p->lis);
	p->lis = lis;
	p->nlisten = nlis;
	/* The old records follow the new ones; each goes with its last
	 * bridge, or now. */
	retired = p->services;
	p->services = head;
	for (svc = head; svc->next != NULL; svc = svc->next)
		;
	svc->next = retired;
	for (svc = retired; svc != NULL; svc = next) {
		next = svc->next;
		if (!svc->retired) {
			svc->retired = 1;
			service_put(p, svc);
		}
	}
	p->nlive = count;
	pfd[0].fd = p->wake[0];
	pfd[0].events = POLLIN;
	checks_plan(p);
	for (i = p->nlisten + 1; i < p->base; i++)
		pfd[i].fd = -1;
	if (p->pfd != NULL)
		memcpy(pfd + p->base, p->pfd + oldbase,
		    2 * p->nbridges * sizeof(*pfd));
	free(p->pfd);
	p->pfd = pfd;
	ctl_project(p);
	for (i = 0; i < p->nlisten; i++)
		p->lis[i].kept = 0;
	if (p->accepting != ACCEPT_OFF)
		listeners_update(p);
	return 0;
bad:
	saved = errno;
	while (head != NULL) {
		svc = head->next;
		service_free(head);
		head = svc;
	}
	errno = saved;
	return -1;
}

/* ---- public API ---- */

void
tcpproxy_service_init(struct tcpproxy_service *svc)
{
	memset(svc, 0, sizeof(*svc));
	svc->connect_timeout = TCPPROXY_CONNECT_TIMEOUT;
	svc->buffer_size = TCPPROXY_BUFFER_SIZE;
	svc->fails = 1;
	svc->down_time = TCPPROXY_DOWN_TIME;
	svc->proxy_timeout = TCPPROXY_PROXY_TIMEOUT;
	svc->keepalive_idle = TCPPROXY_KEEPALIVE_IDLE;
	svc->queue_timeout = -1;	/* the connect timeout */
}

void
tcpproxy_config_init(struct tcpproxy_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->connect_timeout = TCPPROXY_CONNECT_TIMEOUT;
	cfg->grace = TCPPROXY_GRACE;
	cfg->buffer_size = TCPPROXY_BUFFER_SIZE;
	cfg->verbosity = TCPPROXY_LOG_INFO;
	cfg->max_pipes = TCPPROXY_MAX_PIPES;
	cfg->program.workers = 1;
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

/* Logs the ready line of every listener the last switch bound. */
static void
listeners_announce(struct tcpproxy *p)
{
	size_t i;

	for (i = 0; i < p->nlisten; i++)
		if (p->lis[i].fresh) {
			say(p, TCPPROXY_LOG_ERROR, "listening on %s%s",
			    p->lis[i].a.ss.ss_family == AF_UNIX ?
			    unix_path(p->lis[i].svc->local_host) :
			    p->lis[i].a.name, p->lis[i].svc->tag);
			p->lis[i].fresh = 0;
		}
}

/* Returns whether a live service of p has a fault. */
static int
engine_faulty(const struct tcpproxy *p)
{
	const struct service *svc;

	for (svc = p->services; svc != NULL && !svc->retired; svc = svc->next)
		if (svc->faults != NULL)
			return 1;
	return 0;
}

/*
 * Returns whether splice() may be used: the platform has it, it is not
 * turned off, and the SIGPIPE it raises on a closed peer (it takes no
 * MSG_NOSIGNAL) is ignored or handled, not deadly.
 */
static int
splice_usable(const struct tcpproxy_config *cfg)
{
	struct sigaction sa;

	if (!HAVE_SPLICE || cfg->no_splice || cfg->max_pipes == 0)
		return 0;
	return sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL;
}

/* Checks the engine-wide settings of cfg; returns 0 or -1. */
static int
engine_check(const struct tcpproxy_config *cfg, char *err, size_t errlen)
{
	if (cfg == NULL || !(cfg->grace >= 0) ||
	    cfg->busy_poll > TCPPROXY_BUSY_POLL_MAX)
		return failed(err, errlen, EINVAL, "invalid configuration");
	return 0;
}

struct tcpproxy *
tcpproxy_create(const struct tcpproxy_config *cfg, char *err, size_t errlen)
{
	struct rlimit rl;
	struct tcpproxy *p;
	int saved;
	size_t i;

	if (engine_check(cfg, err, errlen) == -1)
		return NULL;
	if ((p = calloc(1, sizeof(*p))) == NULL)
		return fail(err, errlen, ENOMEM, "out of memory");
	p->cfg = *cfg;
	p->cfg.services = NULL;
	p->cfg.nservices = 0;
	p->cfg.local_host = p->cfg.local_port = NULL;
	p->cfg.remote_host = p->cfg.remote_port = NULL;
	p->slice_period = 1;
	p->now = now_ms();
	p->seed = (unsigned int)getpid() ^ (unsigned int)p->now;
	p->fault_seed = cfg->seed_set ? cfg->seed :
	    mix64((unsigned long long)getpid() << 32 ^ (unsigned long long)
	    now_us()) >> 16;
	p->wake[0] = p->wake[1] = -1;
	p->ctl_fd = -1;
	p->splice = splice_usable(cfg);
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    rl.rlim_cur < LONG_MAX)
		p->fd_max = (long)rl.rlim_cur;
	for (i = 0; i < TCPPROXY_CTL_MAX; i++)
		p->ctls[i].fd = -1;
	if (wake_open(p) == -1 || table_grow(p) == -1) {
		fail(err, errlen, errno, "cannot start: %s", strerror(errno));
		goto bad;
	}
	if (cfg->control != NULL && ctl_open(p, cfg->control, err, errlen) ==
	    -1)
		goto bad;
	p->accepting = ACCEPT_ON;
	if (engine_switch(p, cfg, err, errlen) == -1)
		goto bad;
	listeners_announce(p);
	if (cfg->control != NULL || engine_faulty(p))
		say(p, TCPPROXY_LOG_ERROR, "seed %llu%s", p->fault_seed,
		    cfg->seed_set ? "" : " (chosen at random: --seed repeats "
		    "it)");
	return p;
bad:
	saved = errno;
	tcpproxy_free(p);
	errno = saved;
	return NULL;
}

int
tcpproxy_reload(struct tcpproxy *p, const struct tcpproxy_config *cfg,
    char *err, size_t errlen)
{
	if (engine_check(cfg, err, errlen) == -1)
		return -1;
	if (p->stopping)
		return failed(err, errlen, ECANCELED, "stopping");
	if (engine_switch(p, cfg, err, errlen) == -1)
		return -1;
	p->cfg.grace = cfg->grace;
	p->cfg.busy_poll = cfg->busy_poll;
	p->cfg.verbosity = cfg->verbosity;
	/* Pipes in use drain as they are, then a smaller cap holds; the
	 * free ones are closed, to be made again as the new settings allow. */
	p->cfg.no_splice = cfg->no_splice;
	p->cfg.max_pipes = cfg->max_pipes;
	if (p->splice != splice_usable(cfg)) {
		size_t k;

		/* A flow with a pipe reads or not as p->splice says. */
		p->splice = !p->splice;
		for (k = p->nbridges; k-- > 0;)
			if (p->tab[k]->flow[CLIENT].pipe != 0 ||
			    p->tab[k]->flow[SERVER].pipe != 0)
				(void)bridge_settle(p, p->tab[k]);
	}
	pipes_trim(p);
	/* The listeners bound by this reload say so, like at start. */
	listeners_announce(p);
	say(p, TCPPROXY_LOG_ERROR, "reloaded: %lu services, %lu listeners",
	    p->nlive, (unsigned long)p->nlisten);
	return 0;
}

unsigned long
tcpproxy_config_check(const struct tcpproxy_config *cfg,
    void (*report)(void *user, const char *line), void *user)
{
	struct tcpproxy_service simple;
	struct tcpproxy_backend simple_be;
	struct tcpproxy p0;
	struct service **built;
	struct addr *a;
	char err[512];
	size_t n, i, j, k, l, na;
	unsigned long problems = 0;
	struct {
		struct addr a;
		size_t svc;
	} *seen = NULL, *grown;
	size_t nseen = 0;

	memset(&p0, 0, sizeof(p0));
	if (cfg == NULL)
		return 1;
	p0.cfg = *cfg;
	if (engine_check(cfg, err, sizeof(err)) == -1) {
		report(user, err);
		problems++;
	}
	n = cfg->nservices + (cfg->local_port != NULL);
	if (n == 0) {
		report(user, "no service configured");
		return problems + 1;
	}
	if ((built = calloc(n, sizeof(struct service *))) == NULL) {
		report(user, "out of memory");
		return problems + 1;
	}
	if (cfg->local_port != NULL)
		service_from_config(&simple, &simple_be, cfg);
	for (i = 0; i < n; i++) {
		const struct tcpproxy_service *spec = cfg->local_port != NULL ?
		    (i == 0 ? &simple : &cfg->services[i - 1]) :
		    &cfg->services[i];

		if ((built[i] = service_build(&p0, spec, err, sizeof(err))) ==
		    NULL) {
			report(user, err);
			problems++;
			continue;
		}
		for (j = 0; j < i; j++)
			if (built[j] != NULL &&
			    strcmp(built[j]->name, built[i]->name) == 0) {
				snprintf(err, sizeof(err), "%sservice name "
				    "'%s' is used twice", built[i]->where,
				    built[i]->name);
				report(user, err);
				problems++;
			}
		if ((a = addrs_resolve(built[i]->local_host,
		    built[i]->local_port, 1, &na, err, sizeof(err))) == NULL) {
			char msg[600];

			snprintf(msg, sizeof(msg), "%s%s", built[i]->where, err);
			report(user, msg);
			problems++;
			continue;
		}
		/* The same address and port twice would fail at bind. */
		for (k = 0; k < na && sa_port((const struct sockaddr *)
		    &a[k].ss) != 0; k++) {
			for (l = 0; l < nseen; l++)
				if (addr_equal(&seen[l].a, &a[k], 1)) {
					snprintf(err, sizeof(err), "%slisten "
					    "address %s is service '%s''s too",
					    built[i]->where, a[k].name,
					    built[seen[l].svc]->name);
					report(user, err);
					problems++;
					break;
				}
			if ((grown = realloc(seen, (nseen + 1) *
			    sizeof(*seen))) != NULL) {
				seen = grown;
				seen[nseen].a = a[k];
				seen[nseen++].svc = i;
			}
		}
		free(a);
	}
	for (i = 0; i < n; i++)
		service_free(built[i]);
	free(built);
	free(seen);
	return problems;
}

int
tcpproxy_run(struct tcpproxy *p)
{
	int rc;

	while ((rc = tcpproxy_step(p, -1)) == 1)
		;
	return rc;
}

/* Writes one request byte to the wake pipe, keeping errno. */
static void
wake_send(struct tcpproxy *p, char what)
{
	int saved = errno;

	/* A full pipe already holds a wake-up: nothing is lost. */
	if (write(p->wake[1], &what, 1) < 0)
		errno = saved;
	errno = saved;
}

void
tcpproxy_stop(struct tcpproxy *p)
{
	wake_send(p, 's');
}

void
tcpproxy_drain(struct tcpproxy *p)
{
	wake_send(p, 'd');
}

void
tcpproxy_wake(struct tcpproxy *p)
{
	wake_send(p, 'w');
}

int
tcpproxy_after_fork(struct tcpproxy *p, int worker)
{
	size_t i;

	fd_close(p->wake[0]);
	fd_close(p->wake[1]);
	if (wake_open(p) == -1)
		return -1;
	p->pfd[0].fd = p->wake[0];
	p->worker[0] = '\0';
	if (worker > 0) {
		snprintf(p->worker, sizeof(p->worker), " worker=%d", worker);
		for (i = 0; i < p->nlisten; i++)
			listener_pick(&p->lis[i], worker);
		if (p->accepting != ACCEPT_OFF)
			listeners_update(p);
	}
	return 0;
}

int
tcpproxy_bound_port(const struct tcpproxy *p)
{
	return p->nlisten > 0 ? sa_port((const struct sockaddr *)
	    &p->lis[0].a.ss) : -1;
}

const char *
tcpproxy_listener_name(const struct tcpproxy *p, size_t i)
{
	if (i >= p->nlisten)
		return NULL;
	return p->lis[i].a.ss.ss_family == AF_UNIX ?
	    unix_path(p->lis[i].svc->local_host) : p->lis[i].a.name;
}

unsigned long
tcpproxy_bridges(const struct tcpproxy *p)
{
	return (unsigned long)p->nbridges;
}

size_t
tcpproxy_stats(const struct tcpproxy *p, struct tcpproxy_stats *out,
    size_t n)
{
	const struct service *svc;
	size_t count = 0, k, i;
	int s;

	for (svc = p->services; svc != NULL && !svc->retired;
	    svc = svc->next) {
		for (k = 0; k <= svc->nbackends; k++, count++) {
			struct tcpproxy_stats *o;
			const struct backend *be = k > 0 ?
			    svc->backends[k - 1] : NULL;

			if (count >= n)
				continue;
			o = &out[count];
			memset(o, 0, sizeof(*o));
			o->service = svc->name;
			if (be == NULL) {
				o->open = svc->st->open;
				o->total = svc->st->total;
				o->refused = svc->st->refused;
				o->failed = svc->st->failed;
				o->bytes[0] = svc->st->bytes[0];
				o->bytes[1] = svc->st->bytes[1];
				o->spliced = svc->st->spliced;
				continue;
			}
			o->backend = be->name;
			o->open = be->open;
			o->total = be->total;
			o->failed = be->failed;
			o->bytes[0] = be->bytes[0];
			o->bytes[1] = be->bytes[1];
			o->down = be->down;
			if (be->down)
				o->down_for = (double)(now_ms() -
				    be->down_since) / 1000.0;
		}
	}
	/* Bytes the open bridges delivered so far count too. */
	for (i = 0; i < p->nbridges; i++) {
		const struct bridge *b = p->tab[i];
		size_t j;

		for (j = 0; j < count && j < n; j++)
			if (strcmp(out[j].service, b->svc->name) == 0 &&
			    (out[j].backend == NULL || (b->be != NULL &&
			    strcmp(out[j].backend, b->be->name) == 0)))
				for (s = CLIENT; s <= SERVER; s++)
					out[j].bytes[s] += b->flow[s].bytes;
	}
	return count;
}

void
tcpproxy_log_stats(struct tcpproxy *p)
{
	struct tcpproxy_stats *st;
	size_t n, i;

	n = tcpproxy_stats(p, NULL, 0);
	if ((st = calloc(n + 1, sizeof(*st))) == NULL) {
		say(p, TCPPROXY_LOG_ERROR, "stats: out of memory");
		return;
	}
	n = tcpproxy_stats(p, st, n);
	for (i = 0; i < n; i++) {
		char line[512];

		stats_line(p, &st[i], line, sizeof(line));
		say(p, TCPPROXY_LOG_ERROR, "%s", line);
	}
	free(st);
}

/* Formats the stats line of one entry of tcpproxy_stats(). */
static void
stats_line(const struct tcpproxy *p, const struct tcpproxy_stats *st,
    char *line, size_t size)
{
	if (st->backend == NULL)
		snprintf(line, size, "stats service=%s%s open=%lu total=%llu "
		    "refused=%llu failed=%llu up=%llu down=%llu spliced=%llu",
		    st->service, p->worker, st->open, st->total, st->refused,
		    st->failed, st->bytes[0], st->bytes[1], st->spliced);
	else
		snprintf(line, size, "stats service=%s%s backend=%s state=%s "
		    "down_for=%.3f open=%lu total=%llu failed=%llu up=%llu "
		    "down=%llu", st->service, p->worker, st->backend,
		    st->down ? "down" : "up", st->down_for, st->open,
		    st->total, st->failed, st->bytes[0], st->bytes[1]);
}

void
tcpproxy_free(struct tcpproxy *p)
{
	struct service *svc;
	size_t i;

	if (p == NULL)
		return;
	p->now = now_ms();
	while (p->nbridges > 0)
		bridge_close(p, p->tab[p->nbridges - 1]);
	for (i = 0; i < p->nlisten; i++)
		listener_close(&p->lis[i]);
	ctl_free(p);
	pipes_trim(p);
	free(p->pipes);
	free(p->heap);
	while ((svc = p->services) != NULL) {
		p->services = svc->next;
		service_free(svc);
	}
	fd_close(p->wake[0]);
	fd_close(p->wake[1]);
	free(p->tab);
	free(p->ready);
	free(p->pfd);
	free(p->lis);
	free(p);
}

/* ---- the grammar: options, rules, config files ---- */

/*
 * One table describes every option of the command line, of config files
 * and of the library's parser.  A row says what kind of value it takes,
 * where it may appear and where the value goes: a field of struct
 * tcpproxy_service (a rule's setting) or of struct tcpproxy_config (the
 * whole process).
 */
enum {
	K_FLAG,			/* int set to 1 */
	K_SECS,			/* double, seconds >= 0 */
	K_SIZE,			/* size_t, 1.. with k/m/g */
	K_ULL,			/* unsigned long long, 1.. with k/m/g */
	K_COUNT,		/* unsigned long, 1.. with k/m/g */
	K_USECS,		/* unsigned long, 1.. in digits */
	K_STR,			/* const char * */
	K_ALLOW, K_DENY,	/* appended to a rule's access list */
	K_BALANCE,		/* enum tcpproxy_balance */
	K_QUIET, K_VERBOSE,	/* verbosity */
	K_PROXYVER,		/* enum tcpproxy_send_proxy: v1, v2 */
	K_TRUST,		/* appended to a rule's proxy_from */
	K_ROUTE,		/* PATTERN=ENDPOINT, appended to routes */
	K_MODE,			/* unsigned int, in octal */
	K_KEEPALIVE,		/* a flag with an optional value: [=SECS] */
	K_FAULT,		/* a fault spec, appended to faults */
	K_SEED			/* unsigned long long in digits, and seed_set */
};
enum { S_RULE, S_PROC, S_CMD };	/* per rule, per process, command line */

struct opt {
	const char *name;
	char letter;
	unsigned char kind, scope;
	size_t off;
	unsigned long long max;
};

#define SVC(f) offsetof(struct tcpproxy_service, f)
#define CFG(f) offsetof(struct tcpproxy_config, f)
#define GIG (1024ULL * 1024 * 1024)

static const struct opt opts[] = {
	{ "accept-proxy", 0, K_FLAG, S_RULE, SVC(accept_proxy), 0 },
	{ "allow", 'a', K_ALLOW, S_RULE, 0, 0 },
	{ "balance", 0, K_BALANCE, S_RULE, SVC(balance), 0 },
	{ "buffer-size", 'b', K_SIZE, S_RULE, SVC(buffer_size), GIG },
	{ "busy-poll", 0, K_USECS, S_PROC, CFG(busy_poll),
	    TCPPROXY_BUSY_POLL_MAX },
	{ "check-config", 0, K_FLAG, S_CMD, CFG(program.check_config), 0 },
	{ "config", 'f', K_STR, S_CMD, CFG(program.config_file), 0 },
	{ "connect-timeout", 't', K_SECS, S_RULE, SVC(connect_timeout), 0 },
	{ "control", 0, K_STR, S_PROC, CFG(control), 0 },
	{ "daemon", 'D', K_FLAG, S_CMD, CFG(program.daemon), 0 },
	{ "deny", 'd', K_DENY, S_RULE, 0, 0 },
	{ "down-time", 0, K_SECS, S_RULE, SVC(down_time), 0 },
	{ "dump-dir", 0, K_STR, S_PROC, CFG(program.dump_dir), 0 },
	{ "dump-file", 0, K_STR, S_PROC, CFG(program.dump_file), 0 },
	{ "exit-with-parent", 0, K_FLAG, S_CMD, CFG(program.exit_with_parent),
	    0 },
	{ "fails", 0, K_COUNT, S_RULE, SVC(fails), 1000000 },
	{ "fault", 0, K_FAULT, S_RULE, 0, 0 },
	{ "grace", 0, K_SECS, S_PROC, CFG(grace), 0 },
	{ "half-close", 'H', K_FLAG, S_RULE, SVC(half_close), 0 },
	{ "health-check", 0, K_SECS, S_RULE, SVC(health_check), 0 },
	{ "help", 'h', K_FLAG, S_CMD, CFG(program.help), 0 },
	{ "hexdump", 'x', K_FLAG, S_PROC, CFG(program.hexdump), 0 },
	{ "idle-timeout", 'i', K_SECS, S_RULE, SVC(idle_timeout), 0 },
	{ "keepalive", 0, K_KEEPALIVE, S_RULE, SVC(keepalive_idle), 0 },
	{ "lifetime", 0, K_SECS, S_CMD, CFG(program.lifetime), 0 },
	{ "log-file", 0, K_STR, S_CMD, CFG(program.log_output), 0 },
	{ "log-time", 0, K_FLAG, S_PROC, CFG(program.log_time), 0 },
	{ "max-bytes", 0, K_ULL, S_RULE, SVC(max_bytes), ULLONG_MAX / 2 },
	{ "max-clients", 'c', K_COUNT, S_RULE, SVC(max_clients), 1000000000 },
	{ "max-per-source", 0, K_COUNT, S_RULE, SVC(max_per_source),
	    1000000000 },
	{ "max-pipes", 0, K_COUNT, S_PROC, CFG(max_pipes), 1000000 },
	{ "name", 0, K_STR, S_RULE, SVC(name), 0 },
	{ "no-splice", 0, K_FLAG, S_PROC, CFG(no_splice), 0 },
	{ "pid-file", 0, K_STR, S_PROC, CFG(program.pid_file), 0 },
	{ "port-file", 0, K_STR, S_CMD, CFG(program.port_file), 0 },
	{ "proxy-from", 0, K_TRUST, S_RULE, 0, 0 },
	{ "proxy-timeout", 0, K_SECS, S_RULE, SVC(proxy_timeout), 0 },
	{ "queue-timeout", 0, K_SECS, S_RULE, SVC(queue_timeout), 0 },
	{ "quiet", 'q', K_QUIET, S_PROC, CFG(verbosity), 0 },
	{ "ready-fd", 0, K_COUNT, S_CMD, CFG(program.ready_fd), 1000000 },
	{ "rate", 0, K_ULL, S_RULE, SVC(rate), ULLONG_MAX / 2 },
	{ "seed", 0, K_SEED, S_PROC, CFG(seed), 0 },
	{ "send-proxy", 0, K_PROXYVER, S_RULE, SVC(send_proxy), 0 },
	{ "sni", 0, K_ROUTE, S_RULE, 0, 0 },
	{ "socket-mode", 0, K_MODE, S_RULE, SVC(socket_mode), 07777 },
	{ "source", 's', K_STR, S_RULE, SVC(source), 0 },
	{ "syslog", 0, K_FLAG, S_PROC, CFG(program.log_syslog), 0 },
	{ "user", 'u', K_STR, S_PROC, CFG(program.user), 0 },
	{ "verbose", 'v', K_VERBOSE, S_PROC, CFG(verbosity), 0 },
	{ "version", 'V', K_FLAG, S_CMD, CFG(program.version), 0 },
	{ "workers", 'w', K_COUNT, S_PROC, CFG(program.workers), 1024 }
};
#define NOPTS (sizeof(opts) / sizeof(opts[0]))

/* An allocation of a parse, freed with all the others. */
struct block {
	struct block *next;
	/* Only for its alignment: what follows suits any type. */
	/* cppcheck-suppress unusedStructMember */
	union { long double ld; long long ll; void *p; } align[1];
};

/* What tcpproxy_config_parse() made: cfg->owned. */
struct owned {
	struct block *blocks;
	struct tcpproxy_service *services;
	size_t nservices, cap;
	struct tcpproxy_service defaults;	/* the command line's */
};

/* The state of one parse: where the words come from, what they fill. */
struct parse {
	struct tcpproxy_config *cfg;
	struct owned *own;
	struct tcpproxy_service *defaults;	/* what a new rule starts as */
	const char *file;		/* NULL: the command line */
	unsigned long line;
	int process_only;		/* apply only S_PROC options */
	char proc_opt[64];		/* a process option of this line */
	char *err;
	size_t errlen;
};

/* Formats an error naming the place ("FILE:LINE: "); returns -1. */
static int
parse_error(const struct parse *ps, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (ps->file != NULL)
		return failed(ps->err, ps->errlen, EINVAL, "%s:%lu: %s",
		    ps->file, ps->line, msg);
	return failed(ps->err, ps->errlen, EINVAL, "%s", msg);
}

/* Returns n zeroed bytes that live as long as the parse; NULL if OOM. */
static void *
parse_alloc(struct parse *ps, size_t n)
{
	struct block *b = calloc(1, sizeof(*b) + n);

	if (b == NULL)
		return NULL;
	b->next = ps->own->blocks;
	ps->own->blocks = b;
	/* On the list of blocks, freed by tcpproxy_config_free(). */
	return b->align;	/* analyzer-ok(-Wanalyzer-malloc-leak) */
}

/* Returns a copy of n bytes of s as a string; NULL if OOM. */
static char *
parse_strndup(struct parse *ps, const char *s, size_t n)
{
	char *d = parse_alloc(ps, n + 1);

	if (d != NULL)
		memcpy(d, s, n);
	return d;
}

/*
 * Appends one item of size bytes to the array *arr of *n items, by
 * copying it into a new block: arrays of a parse are short.  Returns 0,
 * or -1 if out of memory.
 */
static int
parse_append(struct parse *ps, const void *arr_in, size_t *n, size_t size,
    const void *item, const void **arr_out)
{
	char *grown = parse_alloc(ps, (*n + 1) * size);

	if (grown == NULL)
		return parse_error(ps, "out of memory");
	if (*n > 0)
		memcpy(grown, arr_in, *n * size);
	memcpy(grown + *n * size, item, size);
	(*n)++;
	*arr_out = grown;
	return 0;
}

/* Parses seconds >= 0, fractions allowed, into *v; returns 0 or -1. */
static int
parse_secs(struct parse *ps, const char *s, const char *opt, double *v)
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
		return parse_error(ps, "invalid %s '%s': not a number of "
		    "seconds >= 0", opt, s);
	return 0;
}

/*
 * Parses a count 1..max, digits and (if suffix) an optional k/m/g, into
 * *v; returns 0 or -1.
 */
static int
parse_size(struct parse *ps, const char *s, const char *opt,
    unsigned long long max, int suffix, unsigned long long *v)
{
	unsigned long long n = 0, mult = 1;
	const char *q = s;

	if (*q < '0' || *q > '9')
		return parse_error(ps, "invalid %s '%s': not a positive number",
		    opt, s);
	for (; *q >= '0' && *q <= '9'; q++) {
		if (n > (max - (unsigned)(*q - '0')) / 10)
			return parse_error(ps, "invalid %s '%s': too large",
			    opt, s);
		n = n * 10 + (unsigned)(*q - '0');
	}
	switch (suffix ? *q : '\0') {
	case 'k': case 'K': mult = 1024; q++; break;
	case 'm': case 'M': mult = 1024 * 1024; q++; break;
	case 'g': case 'G': mult = GIG; q++; break;
	default: break;
	}
	if (*q != '\0')
		return parse_error(ps, "invalid %s '%s': not a positive "
		    "number%s", opt, s, suffix ? "" : " (digits only)");
	if (n == 0)
		return parse_error(ps, "invalid %s '%s': must be at least 1",
		    opt, s);
	if (n > max / mult)
		return parse_error(ps, "invalid %s '%s': too large", opt, s);
	*v = n * mult;
	return 0;
}

/*
 * Looks up an option: a letter, or a long name or a unique prefix of
 * one.  Returns the row, or NULL after an error naming the word.
 */
static const struct opt *
opt_find(struct parse *ps, const char *word, const char *name, size_t len,
    char letter)
{
	const struct opt *hit = NULL;
	char list[256] = "";
	size_t i, nhits = 0;

	for (i = 0; i < NOPTS; i++) {
		if (letter != 0) {
			if (opts[i].letter == letter)
				return &opts[i];
			continue;
		}
		if (strncmp(opts[i].name, name, len) != 0)
			continue;
		if (opts[i].name[len] == '\0')
			return &opts[i];	/* exact beats prefix */
		hit = &opts[i];
		nhits++;
		if (strlen(list) + strlen(opts[i].name) + 5 < sizeof(list)) {
			strcat(list, nhits > 1 ? ", --" : "--");
			strcat(list, opts[i].name);
		}
	}
	if (nhits == 1)
		return hit;
	if (nhits > 1)
		(void)parse_error(ps, "ambiguous option '%s': %s", word, list);
	else if (letter != 0)
		(void)parse_error(ps, "unknown option '-%c'", letter);
	else
		(void)parse_error(ps, "unknown option '%.*s'", (int)len + 2,
		    word);
	return NULL;
}

static int route_parse(struct parse *, const char *,
    struct tcpproxy_service *);

/* Stores the value of option o into svc or the config; 0 or -1. */
static int
opt_apply(struct parse *ps, const struct opt *o, const char *val,
    struct tcpproxy_service *svc)
{
	char *base = o->scope == S_RULE ? (char *)svc : (char *)ps->cfg;
	void *field = base + o->off;
	unsigned long long n = 0;
	char what[40];

	snprintf(what, sizeof(what), "--%s", o->name);
	/* The command line's process options wait for the second pass,
	 * after a config file, so that they win over the file's. */
	if (ps->process_only ? o->scope != S_PROC :
	    o->scope == S_PROC && ps->file == NULL)
		return 0;
	switch (o->kind) {
	case K_FLAG:
		*(int *)field = 1;
		if (o->off == CFG(program.dump_file))
			ps->cfg->program.hexdump = 1;
		return 0;
	case K_QUIET:
		ps->cfg->verbosity = TCPPROXY_LOG_ERROR;
		return 0;
	case K_VERBOSE:
		ps->cfg->verbosity = TCPPROXY_LOG_DEBUG;
		return 0;
	case K_SECS:
		return parse_secs(ps, val, what, field);
	case K_SIZE:
	case K_ULL:
	case K_COUNT:
	case K_USECS:
		if (parse_size(ps, val, what, o->max, o->kind != K_USECS, &n)
		    == -1)
			return -1;
		if (o->kind == K_SIZE)
			*(size_t *)field = (size_t)n;
		else if (o->kind == K_ULL)
			*(unsigned long long *)field = n;
		else
			*(unsigned long *)field = (unsigned long)n;
		return 0;
	case K_STR:
		if (*val == '\0')
			return parse_error(ps, "invalid %s '': empty", what);
		*(const char **)field = val;
		if (o->off == CFG(program.dump_file))
			ps->cfg->program.hexdump = 1;
		return 0;
	case K_ALLOW:
	case K_DENY:
	case K_TRUST: {
		struct acl a;

		if (acl_parse(val, &a) == -1)
			return parse_error(ps, "invalid %s '%s': not an address, "
			    "CIDR block or pattern", o->kind == K_ALLOW ?
			    "allow" : o->kind == K_DENY ? "deny" : what, val);
		free(a.glob);
		if (o->kind == K_ALLOW)
			return parse_append(ps, svc->allow, &svc->nallow,
			    sizeof(char *), &val,
			    (const void **)(void *)&svc->allow);
		if (o->kind == K_TRUST)
			return parse_append(ps, svc->proxy_from,
			    &svc->nproxy_from, sizeof(char *), &val,
			    (const void **)(void *)&svc->proxy_from);
		return parse_append(ps, svc->deny, &svc->ndeny,
		    sizeof(char *), &val, (const void **)(void *)&svc->deny);
	}
	case K_PROXYVER:
		if (strcmp(val, "v1") == 0 || strcmp(val, "1") == 0)
			svc->send_proxy = TCPPROXY_PROXY_V1;
		else if (strcmp(val, "v2") == 0 || strcmp(val, "2") == 0)
			svc->send_proxy = TCPPROXY_PROXY_V2;
		else
			return parse_error(ps, "invalid %s '%s': not v1 or v2",
			    what, val);
		return 0;
	case K_ROUTE:
		return route_parse(ps, val, svc);
	case K_FAULT: {
		struct fault f;
		char msg[160];

		if (fault_parse(val, &f, msg, sizeof(msg)) == -1)
			return parse_error(ps, "invalid --fault '%s': %s", val,
			    msg);
		return parse_append(ps, svc->faults, &svc->nfaults,
		    sizeof(char *), &val, (const void **)(void *)&svc->faults);
	}
	case K_SEED: {
		char *end;

		errno = 0;
		if (*val < '0' || *val > '9' ||
		    (ps->cfg->seed = strtoull(val, &end, 10), *end != '\0') ||
		    errno != 0)
			return parse_error(ps, "invalid --seed '%s': not a "
			    "number", val);
		ps->cfg->seed_set = 1;
		return 0;
	}
	case K_MODE: {
		char *end;
		unsigned long mode;

		if (val[0] < '0' || val[0] > '7' ||
		    (mode = strtoul(val, &end, 8), *end != '\0') ||
		    mode == 0 || mode > o->max)
			return parse_error(ps, "invalid %s '%s': not an octal "
			    "mode such as 0660", what, val);
		*(unsigned int *)field = (unsigned int)mode;
		return 0;
	}
	case K_KEEPALIVE:
		svc->keepalive = 1;
		if (*val == '\0')
			return 0;	/* --keepalive alone: the default */
		if (parse_secs(ps, val, what, field) == -1)
			return -1;
		if (*(double *)field < 1)
			return parse_error(ps, "invalid %s '%s': at least 1 "
			    "second", what, val);
		return 0;
	case K_BALANCE: {
		static const char *const names[] = {
			"roundrobin", "leastconn", "source", "first"
		};
		size_t i;

		for (i = 0; i < 4; i++)
			if (strcmp(val, names[i]) == 0) {
				svc->balance = (enum tcpproxy_balance)i;
				return 0;
			}
		return parse_error(ps, "invalid --balance '%s': not "
		    "roundrobin, leastconn, source or first", val);
	}
	default:
		return parse_error(ps, "internal error");
	}
}

/* Returns whether an option of kind k takes a value. */
static int
opt_has_value(int k)
{
	return k != K_FLAG && k != K_QUIET && k != K_VERBOSE;
}

/*
 * Parses the option at words[*i] (and its value), moving *i past what
 * it used.  Rule options go to svc.  Returns 0 or -1.
 */
static int
opt_parse(struct parse *ps, char *const words[], int n, int *i,
    struct tcpproxy_service *svc)
{
	const char *w = words[*i];
	const struct opt *o;

	if (w[1] == '-') {
		const char *name = w + 2, *eq = strchr(name, '=');
		size_t len = eq != NULL ? (size_t)(eq - name) : strlen(name);
		char shown[64];

		if ((o = opt_find(ps, w, name, len, 0)) == NULL)
			return -1;
		snprintf(shown, sizeof(shown), "--%s", o->name);
		if (o->scope == S_PROC && ps->proc_opt[0] == '\0')
			snprintf(ps->proc_opt, sizeof(ps->proc_opt), "--%.*s",
			    (int)len, name);
		if (ps->file != NULL && o->scope == S_CMD)
			return parse_error(ps, "option '%s' is for the command "
			    "line only", shown);
		if (o->kind == K_KEEPALIVE)	/* its value only after '=' */
			return opt_apply(ps, o, eq != NULL ? eq + 1 : "", svc);
		if (!opt_has_value(o->kind)) {
			if (eq != NULL)
				return parse_error(ps, "option '%s' takes no "
				    "value", shown);
			return opt_apply(ps, o, "", svc);
		}
		if (eq != NULL)
			return opt_apply(ps, o, eq + 1, svc);
		if (*i + 1 >= n)
			return parse_error(ps, "option '%s' needs a value",
			    shown);
		return opt_apply(ps, o, words[++*i], svc);
	}
	/* A cluster of letters: -Hq, -c10, -c 10. */
	for (w++; *w != '\0'; w++) {
		if ((o = opt_find(ps, words[*i], "", 0, *w)) == NULL)
			return -1;
		if (o->scope == S_PROC && ps->proc_opt[0] == '\0')
			snprintf(ps->proc_opt, sizeof(ps->proc_opt), "-%c", *w);
		if (ps->file != NULL && o->scope == S_CMD)
			return parse_error(ps, "option '-%c' is for the command "
			    "line only", *w);
		if (!opt_has_value(o->kind)) {
			if (opt_apply(ps, o, "", svc) == -1)
				return -1;
			continue;
		}
		if (w[1] != '\0')
			return opt_apply(ps, o, w + 1, svc);
		if (*i + 1 >= n)
			return parse_error(ps, "option '-%c' needs a value",
			    *w);
		return opt_apply(ps, o, words[++*i], svc);
	}
	return 0;
}

/* Returns whether word is an option (not "-" alone). */
static int
is_option(const char *word)
{
	return word[0] == '-' && word[1] != '\0';
}

/* Returns whether port is valid and known: digits, or a service name
 * the services database has (no resolver involved). */
static int
port_known(const char *port, int zero_ok)
{
	if (!port_ok(port, zero_ok))
		return 0;
	return port[strspn(port, "0123456789")] == '\0' ||
	    getservbyname(port, "tcp") != NULL;
}

/*
 * Reads one endpoint from words[*i]: "HOST PORT", "HOST:PORT" or
 * "[V6]:PORT" (a word with two colons or more and no brackets is a
 * host), moving *i past it.  Returns 0 or -1.
 */
static int
endpoint_parse(struct parse *ps, char *const words[], int n, int *i,
    const char **host, const char **port, const char *what)
{
	const char *w = words[*i], *colon = strchr(w, ':'), *close;
	char *slash;

	if (strchr(w, '/') != NULL || strncmp(w, "unix:", 5) == 0) {
		struct sockaddr_un sun;

		/* A Unix socket: one word stands for HOST PORT. */
		*host = unix_path(w);
		*port = NULL;
		(*i)++;
		if ((*host)[0] == '\0')
			return parse_error(ps, "invalid %s socket path '%s': "
			    "empty", what, w);
		if (strlen(*host) >= sizeof(sun.sun_path))
			return parse_error(ps, "invalid %s socket path '%s': "
			    "longer than %lu bytes", what, w,
			    (unsigned long)sizeof(sun.sun_path) - 1);
		return 0;
	}
	if (w[0] == '[' && (close = strstr(w, "]:")) != NULL &&
	    close[2] != '\0') {
		*host = parse_strndup(ps, w + 1, (size_t)(close - w - 1));
		*port = close + 2;
		(*i)++;
	} else if (colon != NULL && strchr(colon + 1, ':') == NULL &&
	    colon[1] != '\0') {
		*host = parse_strndup(ps, w, (size_t)(colon - w));
		*port = colon + 1;
		(*i)++;
	} else {
		if (*i + 1 >= n)
			return parse_error(ps, "missing %s port after '%s'",
			    what, w);
		*host = w;
		*port = words[*i + 1];
		*i += 2;
	}
	if (*host == NULL)
		return parse_error(ps, "out of memory");
	/* rinetd's "80/tcp", and "80/udp", which TCP cannot honour. */
	if ((slash = strchr(*port, '/')) != NULL) {
		if (strcmp(slash, "/tcp") != 0)
			return parse_error(ps, "invalid %s port '%s': only TCP "
			    "is relayed", what, *port);
		*port = parse_strndup(ps, *port, (size_t)(slash - *port));
		if (*port == NULL)
			return parse_error(ps, "out of memory");
	}
	if (!port_known(*port, strcmp(what, "local") == 0))
		return parse_error(ps, "invalid %s port '%s': not a number in "
		    "%s..65535 or a known service name", what, *port,
		    strcmp(what, "local") == 0 ? "0" : "1");
	return 0;
}

/*
 * Parses the value of --sni, PATTERN=ENDPOINT (HOST:PORT, [V6]:PORT or a
 * socket path), and appends the route to svc.  Returns 0 or -1.
 */
static int
route_parse(struct parse *ps, const char *val, struct tcpproxy_service *svc)
{
	struct tcpproxy_route r;
	const char *eq = strchr(val, '=');
	char *words[1];
	int i = 0;

	if (eq == NULL || eq[1] == '\0')
		return parse_error(ps, "invalid --sni '%s': not "
		    "PATTERN=HOST:PORT", val);
	if ((r.pattern = parse_strndup(ps, val, (size_t)(eq - val))) == NULL)
		return parse_error(ps, "out of memory");
	if (!sni_pattern_ok(r.pattern)) {
		/* On the parse's blocks: analyzer-ok(-Wanalyzer-malloc-leak) */
		return parse_error(ps, "invalid --sni pattern '%s': not a "
		    "name or *.domain", r.pattern);
	}
	if ((words[0] = parse_strndup(ps, eq + 1, strlen(eq + 1))) == NULL)
		return parse_error(ps, "out of memory");
	if (endpoint_parse(ps, words, 1, &i, &r.backend.host,
	    &r.backend.port, "--sni") == -1)
		return -1;
	return parse_append(ps, svc->routes, &svc->nroutes, sizeof(r), &r,
	    (const void **)(void *)&svc->routes);
}

/*
 * Parses rinetd's bracketed options of a rule, "[src=ADDR,timeout=SECS]":
 * src binds the connections to backends to ADDR, timeout is the idle
 * timeout.  Returns 0 or -1.
 */
static int
bracket_parse(struct parse *ps, const char *w, struct tcpproxy_service *svc)
{
	size_t len = strlen(w);
	char *list, *opt, *next;

	if (w[0] != '[' || len < 3 || w[len - 1] != ']')
		return parse_error(ps, "extra argument '%s'", w);
	if ((list = parse_strndup(ps, w + 1, len - 2)) == NULL)
		return parse_error(ps, "out of memory");
	for (opt = list; opt != NULL; opt = next) {
		if ((next = strchr(opt, ',')) != NULL)
			*next++ = '\0';
		if (strncmp(opt, "src=", 4) == 0 && opt[4] != '\0')
			svc->source = opt + 4;
		else if (strncmp(opt, "timeout=", 8) == 0) {
			if (parse_secs(ps, opt + 8, "timeout",
			    &svc->idle_timeout) == -1)
				return -1;
		} else
			return parse_error(ps, "unknown option '%s' in '%s'",
			    opt, w);
	}
	return 0;
}

/*
 * Parses a rule, words[i..n): LOCAL, then one or more backends, then
 * rinetd's bracketed options ("[src=ADDR]").  svc holds the options
 * seen; the rule becomes the next service.  Returns 0 or -1.
 */
static int
rule_parse(struct parse *ps, char *const words[], int n, int i,
    struct tcpproxy_service *svc)
{
	struct tcpproxy_backend be;
	struct owned *own = ps->own;

	if (i >= n)
		return parse_error(ps, "missing arguments: need local_host "
		    "local_port remote_host remote_port");
	if (endpoint_parse(ps, words, n, &i, &svc->local_host,
	    &svc->local_port, "local") == -1)
		return -1;
	if (i >= n)
		return parse_error(ps, "missing arguments: need local_host "
		    "local_port remote_host remote_port");
	svc->nbackends = 0;
	svc->backends = NULL;
	while (i < n && !(words[i][0] == '[' && strchr(words[i], '='))) {
		if (is_option(words[i]))
			return parse_error(ps, "option '%s' after the "
			    "addresses", words[i]);
		if (endpoint_parse(ps, words, n, &i, &be.host, &be.port,
		    "remote") == -1 ||
		    parse_append(ps, svc->backends, &svc->nbackends,
		    sizeof(be), &be, (const void **)(void *)&svc->backends)
		    == -1)
			return -1;
	}
	for (; i < n; i++)
		if (bracket_parse(ps, words[i], svc) == -1)
			return -1;
	if (svc->nbackends == 0)
		return parse_error(ps, "missing arguments: need local_host "
		    "local_port remote_host remote_port");
	if (ps->file != NULL) {
		size_t len = strlen(ps->file) + 24;
		char *where = parse_alloc(ps, len);

		if (where == NULL)
			return parse_error(ps, "out of memory");
		snprintf(where, len, "%s:%lu", ps->file, ps->line);
		svc->where = where;
	}
	if (svc->name != NULL) {
		size_t k;

		for (k = 0; k < own->nservices; k++)
			if (own->services[k].name != NULL &&
			    strcmp(own->services[k].name, svc->name) == 0)
				return parse_error(ps, "service name '%s' is "
				    "used twice (also %s)", svc->name,
				    own->services[k].where != NULL ?
				    own->services[k].where : "on the command "
				    "line");
	}
	if (own->nservices == own->cap) {
		size_t cap = own->cap ? own->cap * 2 : 8;
		struct tcpproxy_service *grown = realloc(own->services,
		    cap * sizeof(*grown));

		if (grown == NULL)
			return parse_error(ps, "out of memory");
		own->services = grown;
		own->cap = cap;
	}
	own->services[own->nservices++] = *svc;
	ps->cfg->services = own->services;
	ps->cfg->nservices = own->nservices;
	return 0;
}

/*
 * Parses one line of words: options (anywhere before "--"), then an
 * optional rule.  Rule options go to a new service started from the
 * defaults; on an options-only line, to the defaults themselves.
 * Returns 1 if the line was a rule, 0 if not, -1 on error.
 */
static int
words_parse(struct parse *ps, char *const words[], int n, int allow_proc)
{
	struct tcpproxy_service svc = *ps->defaults;
	char *pos[256] = { NULL };
	int i, npos = 0, opts_done = 0;

	ps->proc_opt[0] = '\0';
	for (i = 0; i < n; i++) {
		if (!opts_done && strcmp(words[i], "--") == 0) {
			opts_done = 1;
			continue;
		}
		if (!opts_done && is_option(words[i])) {
			if (opt_parse(ps, words, n, &i, &svc) == -1)
				return -1;
			continue;
		}
		if (npos == (int)(sizeof(pos) / sizeof(pos[0])))
			return parse_error(ps, "too many words");
		pos[npos++] = words[i];
	}
	if (npos == 0) {
		*ps->defaults = svc;
		return 0;
	}
	if (!allow_proc && ps->proc_opt[0] != '\0')
		return parse_error(ps, "option '%s' applies to the whole "
		    "process: give it on a line of its own before the first "
		    "rule", ps->proc_opt);
	if (ps->process_only)
		return 1;
	return rule_parse(ps, pos, npos, 0, &svc) == -1 ? -1 : 1;
}

/*
 * Splits one logical line of a config file (continuations joined) into
 * words in place: blanks separate, '#' at the start of a word begins a
 * comment, "..." quotes (with \" and \\ inside).  Returns the number of
 * words, or -1 on an unterminated quote.
 */
static int
line_split(char *s, char *words[], int max)
{
	int n = 0;
	char *out;

	for (;;) {
		while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
			s++;
		if (*s == '\0' || *s == '#')
			return n;
		if (n == max)
			return -2;
		words[n++] = out = s;
		while (*s != '\0' && *s != ' ' && *s != '\t' && *s != '\r' &&
		    *s != '\n') {
			if (*s != '"') {
				*out++ = *s++;
				continue;
			}
			for (s++; *s != '"'; s++) {
				if (*s == '\0')
					return -1;
				if (*s == '\\' && (s[1] == '"' || s[1] == '\\'))
					s++;
				*out++ = *s;
			}
			s++;
		}
		if (*s != '\0')
			s++;
		*out = '\0';
	}
}

/*
 * Handles a line of rinetd's own words: allow and deny (before the first
 * rule, for every rule; after it, for the rule before them), logfile,
 * pidlogfile, logcommon.  Returns 1 if it was one, 0 if not, -1 on error.
 */
static int
rinetd_line(struct parse *ps, char *words[], int n, size_t first_rule)
{
	struct owned *own = ps->own;
	const char *w = words[0];
	int acl = strcmp(w, "allow") == 0 ? K_ALLOW :
	    strcmp(w, "deny") == 0 ? K_DENY : -1;

	if (acl != -1) {
		struct tcpproxy_service *svc = own->nservices > first_rule ?
		    &own->services[own->nservices - 1] : ps->defaults;
		const struct opt o = { w, 0, (unsigned char)acl, S_RULE, 0, 0 };
		int i, saved = ps->process_only;

		if (n < 2)
			return parse_error(ps, "'%s' needs a pattern", w);
		ps->process_only = 0;
		for (i = 1; i < n; i++)
			if (opt_apply(ps, &o, words[i], svc) == -1) {
				ps->process_only = saved;
				return -1;
			}
		ps->process_only = saved;
		return 1;
	}
	if (strcmp(w, "logfile") == 0 || strcmp(w, "pidlogfile") == 0) {
		if (n != 2)
			return parse_error(ps, "'%s' needs one path", w);
		/* Anywhere, as in rinetd, whose sample has it last. */
		if (ps->process_only)
			return 1;
		if (w[0] == 'l')
			ps->cfg->program.log_file = words[1];
		else
			ps->cfg->program.pid_file = words[1];
		return 1;
	}
	if (strcmp(w, "logcommon") == 0) {
		if (n != 1)
			return parse_error(ps, "extra argument '%s'", words[1]);
		ps->cfg->program.log_common = 1;
		return 1;
	}
	return 0;
}

int
tcpproxy_config_text(struct tcpproxy_config *cfg, const char *name,
    const char *text, size_t len, char *err, size_t errlen)
{
	struct parse ps;
	struct tcpproxy_service defaults;
	char *buf, *line, *words[256];
	size_t i, first_rule;
	int n, rc = 0;

	memset(&ps, 0, sizeof(ps));
	ps.cfg = cfg;
	ps.err = err;
	ps.errlen = errlen;
	ps.file = name;
	if (cfg->owned == NULL &&
	    (cfg->owned = calloc(1, sizeof(struct owned))) != NULL)
		tcpproxy_service_init(&((struct owned *)cfg->owned)->defaults);
	if ((ps.own = cfg->owned) == NULL)
		return failed(err, errlen, ENOMEM, "out of memory");
	/* A file's own defaults start from the command line's. */
	defaults = ps.own->defaults;
	ps.defaults = &defaults;
	first_rule = ps.own->nservices;
	if ((buf = parse_alloc(&ps, len + 1)) == NULL)
		return failed(err, errlen, ENOMEM, "out of memory");
	memcpy(buf, text, len);
	for (i = 0; i < len; i++)
		if (buf[i] == '\0')
			return failed(err, errlen, EINVAL, "%s: a NUL byte in "
			    "the text", name);
	for (line = buf; rc != -1 && line < buf + len; ) {
		char *end = line, *out = line;
		unsigned long start = ++ps.line;

		/* Join the lines continued by a final backslash. */
		for (;;) {
			while (*end != '\0' && *end != '\n')
				*out++ = *end++;
			if (out > line && out[-1] == '\\') {
				out--;
				if (*end == '\n')
					end++;
				ps.line++;
				continue;
			}
			break;
		}
		/* Past the newline first: writing the NUL may overwrite it. */
		if (*end == '\n')
			end++;
		*out = '\0';
		n = line_split(line, words, 256);
		line = end;
		if (n == 0)
			continue;
		{
			unsigned long last = ps.line;

			ps.line = start;
			if (n == -1)
				rc = parse_error(&ps, "unterminated quote");
			else if (n == -2)
				rc = parse_error(&ps, "too many words");
			else if ((rc = rinetd_line(&ps, words, n, first_rule))
			    == 0) {
				rc = words_parse(&ps, words, n, 0);
				if (rc == 0 && ps.own->nservices > first_rule)
					rc = parse_error(&ps, "options without "
					    "a rule after the first rule");
			}
			ps.line = last;
		}
	}
	return rc == -1 ? -1 : 0;
}

int
tcpproxy_config_file(struct tcpproxy_config *cfg, const char *path,
    char *err, size_t errlen)
{
	FILE *f;
	char *text = NULL, *grown;
	size_t len = 0, cap = 0, n;
	int rc;

	if ((f = fopen(path, "r")) == NULL)
		return failed(err, errlen, errno, "cannot read config file "
		    "'%s': %s", path, strerror(errno));
	for (;;) {
		if (len == cap) {
			cap = cap ? cap * 2 : 8192;
			if (cap > 64 * 1024 * 1024 ||
			    (grown = realloc(text, cap)) == NULL) {
				free(text);
				fclose(f);
				return failed(err, errlen, ENOMEM, "config file "
				    "'%s': too large", path);
			}
			text = grown;
		}
		if ((n = fread(text + len, 1, cap - len, f)) == 0)
			break;
		len += n;
	}
	if (ferror(f)) {
		int saved = errno;

		free(text);
		fclose(f);
		return failed(err, errlen, saved, "cannot read config file "
		    "'%s': %s", path, strerror(saved));
	}
	fclose(f);
	rc = tcpproxy_config_text(cfg, path, text != NULL ? text : "", len,
	    err, errlen);
	free(text);
	return rc;
}

int
tcpproxy_config_parse(struct tcpproxy_config *cfg, int argc,
    char *const argv[], char *err, size_t errlen)
{
	struct parse ps;
	int rule;

	memset(&ps, 0, sizeof(ps));
	ps.cfg = cfg;
	ps.err = err;
	ps.errlen = errlen;
	if (cfg->owned == NULL &&
	    (cfg->owned = calloc(1, sizeof(struct owned))) != NULL)
		tcpproxy_service_init(&((struct owned *)cfg->owned)->defaults);
	if ((ps.own = cfg->owned) == NULL)
		return failed(err, errlen, ENOMEM, "out of memory");
	ps.defaults = &ps.own->defaults;
	/* First the rule's options and the rule, held back while a file is
	 * read: the command line's rule comes last, its process options win
	 * over the file's. */
	ps.process_only = 0;
	{
		/* Defaults for the file: the options, without the rule. */
		struct tcpproxy_service saved = *ps.defaults;
		size_t before = ps.own->nservices;

		if ((rule = words_parse(&ps, argv, argc, 1)) == -1)
			return -1;
		if (rule == 1) {
			/* Its options were the rule's, not defaults: take them
			 * as defaults for the file too. */
			*ps.defaults = ps.own->services[before];
			ps.defaults->local_host = ps.defaults->local_port =
			    NULL;
			ps.defaults->backends = NULL;
			ps.defaults->nbackends = 0;
			ps.defaults->source = saved.source;
			ps.defaults->name = saved.name;
		}
		if (cfg->program.config_file != NULL) {
			struct tcpproxy_service held;

			if (rule == 1)
				held = ps.own->services[--ps.own->nservices];
			if (tcpproxy_config_file(cfg, cfg->program.config_file,
			    err, errlen) == -1)
				return -1;
			if (rule == 1)
				ps.own->services[ps.own->nservices++] = held;
			cfg->services = ps.own->services;
			cfg->nservices = ps.own->nservices;
		}
	}
	ps.process_only = 1;
	if (words_parse(&ps, argv, argc, 1) == -1)
		return -1;
	if (cfg->nservices == 0 && !cfg->program.help &&
	    !cfg->program.version)
		return parse_error(&ps, cfg->program.config_file != NULL ?
		    "%s: no rule in the config file" : "missing arguments: "
		    "need local_host local_port remote_host remote_port",
		    cfg->program.config_file);
	return 0;
}

void
tcpproxy_config_free(struct tcpproxy_config *cfg)
{
	struct owned *own = cfg->owned;

	if (own != NULL) {
		while (own->blocks != NULL) {
			struct block *b = own->blocks;

			own->blocks = b->next;
			free(b);
		}
		free(own->services);
		free(own);
	}
	tcpproxy_config_init(cfg);
}

/* ---- the command line ---- */
#ifndef TCPPROXY_NO_MAIN

#include <sys/stat.h>
#include <sys/wait.h>
#include <grp.h>
#include <pwd.h>
#include <syslog.h>

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

#define ERRLEN 512

/*
 * How often, in ms, --exit-with-parent looks for its parent.  Linux's
 * PR_SET_PDEATHSIG would be quicker, but it fires when the parent
 * *thread* ends, which a threaded test runner's does while the runner
 * lives on; and with -D the parent to outlive is not ours.
 */
#define WATCH_MS 200

static const char usage_line[] =
    "usage: tcpproxy [-DHhqVvx] [-a cidr] [-b bytes] [-c max-clients] "
    "[-d cidr]\n"
    "                [-f config] [-i idle-secs] [-s source] "
    "[-t connect-secs]\n"
    "                [-u user[:group]] [-w workers] [--accept-proxy]\n"
    "                [--balance policy] [--busy-poll usecs] "
    "[--check-config]\n"
    "                [--control path] [--down-time secs] "
    "[--dump-dir dir]\n"
    "                [--dump-file file] [--exit-with-parent] [--fails n]\n"
    "                [--fault spec] [--grace secs] [--health-check secs]\n"
    "                [--keepalive[=secs]] [--lifetime secs] "
    "[--log-file file]\n"
    "                [--log-time] [--max-bytes bytes] "
    "[--max-per-source n]\n"
    "                [--max-pipes n] [--name name] [--no-splice]\n"
    "                [--pid-file file] [--port-file file]\n"
    "                [--proxy-from cidr] [--proxy-timeout secs]\n"
    "                [--queue-timeout secs] [--rate bytes] "
    "[--ready-fd fd]\n"
    "                [--seed n] [--send-proxy v1|v2] "
    "[--sni pattern=host:port]\n"
    "                [--socket-mode mode] [--syslog]\n"
    "                [local_host local_port remote_host remote_port ...]\n"
    "       tcpproxy ctl path command [arg ...]\n"
    "       tcpproxy ctl path -\n";

/* What the command line's hooks need; one per process. */
struct cli {
	FILE *hex;			/* --hexdump output, or NULL */
	const char *dump_dir;		/* --dump-dir (a copy), or NULL */
	FILE *log;			/* rinetd's logfile, or NULL */
	int log_common;			/* rinetd's logcommon */
	const struct tcpproxy_config *cfg;	/* the running one */
};

/* What the hooks keep per bridge. */
struct cli_bridge {
	FILE *dump[2];			/* --dump-dir files, opened lazily */
	int dump_failed;
	unsigned long long off[2];	/* stream offset per direction */
};

static struct tcpproxy *the_proxy;	/* for the signal handlers only */
static volatile sig_atomic_t got_stop;	/* SIGINT, SIGTERM seen */
static volatile sig_atomic_t got_hup;	/* SIGHUP: reload */
static volatile sig_atomic_t got_usr1;	/* SIGUSR1: stats */
static volatile sig_atomic_t got_usr2;	/* SIGUSR2: drain (a worker) */
static int log_time;			/* --log-time */
static int log_syslog;			/* --syslog, once openlog() ran */
static int startup_fd = -1;		/* -D: die() tells the parent too */

/*
 * Writes one log line where the options say: to syslog (facility daemon,
 * set by openlog in main), or to stderr as "tcpproxy: LINE", after an
 * RFC 3339 UTC time with --log-time, in one write() so lines stay whole.
 */
static void
log_out(int level, const char *line)
{
	char stamp[40] = "", out[1024];
	struct timespec ts;
	struct tm tm;
	int n;

	if (log_syslog) {
		/* Level 0 holds the ready line and warnings, not only errors. */
		syslog(level == TCPPROXY_LOG_ERROR ? LOG_NOTICE :
		    level == TCPPROXY_LOG_INFO ? LOG_INFO : LOG_DEBUG, "%s",
		    line);
		return;
	}
	if (log_time && clock_gettime(CLOCK_REALTIME, &ts) == 0 &&
	    gmtime_r(&ts.tv_sec, &tm) != NULL &&
	    (n = (int)strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S",
	    &tm)) > 0)
		snprintf(stamp + n, sizeof(stamp) - (size_t)n, ".%03ldZ ",
		    ts.tv_nsec / 1000000);
	n = snprintf(out, sizeof(out), "%stcpproxy: %s\n", stamp, line);
	if (n >= (int)sizeof(out))
		n = sizeof(out) - 1;
	if (n > 0 && write(STDERR_FILENO, out, (size_t)n) < 0)
		return;	/* best effort: nowhere to report it */
}

/* The engine's log callback: its lines go out as the CLI's own. */
static void
cli_log(void *user, int level, const char *line)
{
	(void)user;
	log_out(level, line);
}

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

/* Logs a runtime error and exits 1. */
static NORETURN void
die(const char *fmt, ...)
{
	char line[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	log_out(TCPPROXY_LOG_ERROR, line);
	/* Acting as -u's user for a moment (identity_borrow): exit as
	 * ourselves, whose process may still be inspected (core, LSan). */
	if (geteuid() != getuid())
		(void)seteuid(getuid());
	if (startup_fd >= 0) {
		char out[sizeof(line) + 16];
		int n = snprintf(out, sizeof(out), "tcpproxy: %s\n", line);

		/* Best effort: the parent says something anyway at EOF. */
		if (n > 0 && write(startup_fd, out, strlen(out)) < 0)
			exit(1);
	}
	exit(1);
}


static void
help(void)
{
	printf("%s\n"
	    "Relay TCP connections from local_host:local_port to "
	    "remote_host:remote_port\n"
	    "(each further pair is one more backend).  An endpoint is HOST "
	    "PORT, HOST:PORT,\n"
	    "[V6]:PORT, or a Unix socket path (a word with '/', or "
	    "unix:PATH).\n\n"
	    "  -f, --config FILE           read rules from FILE, one per line "
	    "(SIGHUP: again)\n"
	    "      --check-config          check everything, bind nothing, "
	    "exit 0 or 2\n"
	    "      --name NAME             name the rule's service\n"
	    "      --balance POLICY        roundrobin, leastconn, source or "
	    "first\n"
	    "      --fails N               failed connects that mark a "
	    "backend down (1)\n"
	    "      --down-time SECS        how long it stays down (default "
	    "10)\n"
	    "      --health-check SECS     connect to each backend every SECS\n"
	    "  -s, --source ADDR           connect to backends (and check "
	    "them) from ADDR\n"
	    "      --send-proxy v1|v2      start each backend connection with "
	    "a PROXY header\n"
	    "      --accept-proxy          clients start with a PROXY header "
	    "(v1 or v2)\n"
	    "      --proxy-from CIDR       accept a header only from CIDR "
	    "(repeatable)\n"
	    "      --proxy-timeout SECS    wait that long for a header or "
	    "ClientHello (5)\n"
	    "      --sni PATTERN=HOST:PORT send TLS clients asking for "
	    "PATTERN there\n"
	    "      --socket-mode MODE      a listening Unix socket's mode, "
	    "e.g. 0660\n"
	    "      --keepalive[=SECS]      TCP keepalive both sides, probes "
	    "after SECS (60)\n"
	    "  -a, --allow CIDR            admit only clients in CIDR "
	    "(repeatable)\n"
	    "  -d, --deny CIDR             refuse clients in CIDR "
	    "(repeatable; wins)\n"
	    "  -b, --buffer-size BYTES     buffer per direction per bridge "
	    "(default 64k)\n"
	    "  -c, --max-clients N         at most N bridges at once; "
	    "others wait\n"
	    "      --queue-timeout SECS    close a client -c held that long "
	    "(default: -t)\n"
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
	    "      --no-splice             copy bulk flows; never splice() them\n"
	    "      --max-pipes N           pipes for splice() at once (default "
	    "64)\n"
	    "  -x, --hexdump               dump all data as hex (stderr)\n"
	    "      --dump-file FILE        write the hex dump to FILE\n"
	    "      --dump-dir DIR          save each bridge's raw bytes in "
	    "DIR\n"
	    "  -w, --workers N             N worker processes serve clients\n"
	    "  -u, --user USER[:GROUP]     drop privileges after binding\n"
	    "      --pid-file FILE         write the process id to FILE\n"
	    "      --fault SPEC            inject a fault, ACTION[=ARG][,KEY=VAL]... "
	    "(repeatable)\n"
	    "      --seed N                seed the faults' random choices\n"
	    "      --control PATH          take commands on the Unix socket PATH\n"
	    "  -D, --daemon                run in the background once up; print "
	    "ADDR:PORT\n"
	    "      --ready-fd FD           once up, write ADDR:PORT lines to "
	    "FD, close it\n"
	    "      --port-file FILE        once up, write the ADDR:PORT lines "
	    "to FILE\n"
	    "      --exit-with-parent      stop when the parent process "
	    "exits\n"
	    "      --lifetime SECS         stop by itself after SECS\n"
	    "      --grace SECS            time bridges may finish after "
	    "SIGTERM (default 5)\n"
	    "  -q, --quiet                 no per-bridge log lines\n"
	    "      --log-time              start each log line with the UTC "
	    "time\n"
	    "      --log-file FILE         append the log to FILE, not "
	    "stderr\n"
	    "      --syslog                log to syslog (daemon), not "
	    "stderr\n"
	    "  -v, --verbose               more detail in the log\n"
	    "  -h, --help                  this help\n"
	    "  -V, --version               the version\n"
	    "Sizes take a suffix k, m or g; durations may have fractions.\n"
	    "tcpproxy ctl PATH COMMAND... sends a command to the control "
	    "socket PATH; with -\n"
	    "the lines of stdin, as one batch.  It exits 0 (ok), 1 (error) or "
	    "2 (no reply).\n",
	    usage_line);
}

/* ---- the command line's hooks ---- */

/* Starts a bridge's record for the dumps. */
static enum tcpproxy_verdict
cli_accept(void *user, const struct tcpproxy_bridge_info *info,
    void **bridge_data)
{
	struct cli *c = user;
	struct cli_bridge *cb;

	(void)info;
	if (c->hex == NULL && c->dump_dir == NULL)
		return TCPPROXY_PASS;
	if ((cb = calloc(1, sizeof(*cb))) == NULL)
		return TCPPROXY_CLOSE;
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

/*
 * Opens the --dump-dir file of one direction of a bridge.  Returns it, or
 * NULL after logging the error with the file's path.
 */
static FILE *
dump_open(const struct cli *c, const struct tcpproxy_bridge_info *info,
    int dir)
{
	char path[PATH_MAX], name[ADDR_NAME_MAX], *q = name;
	const char *s, *colon = strrchr(info->client_name, ':');
	FILE *f;

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
		errno = ENAMETOOLONG;
	else if ((f = fopen(path, "wb")) != NULL)
		return f;
	/* The path, for the run-time error: which file, as whom. */
	fprintf(stderr, "tcpproxy: dump id=%lu: cannot create '%s': %s\n",
	    info->id, path, strerror(errno));
	return NULL;
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
		if (cb->dump[dir] == NULL &&
		    (cb->dump[dir] = dump_open(c, info, dir)) == NULL)
			cb->dump_failed = 1;
		else if (fwrite(data, 1, *len, cb->dump[dir]) != *len) {
			fprintf(stderr, "tcpproxy: dump id=%lu: cannot write to "
			    "'%s': %s\n", info->id, c->dump_dir,
			    strerror(errno));
			cb->dump_failed = 1;
		}
	}
	cb->off[dir] += *len;
	return TCPPROXY_PASS;
}

/* Returns rinetd's word for how a bridge ended. */
static const char *
rinetd_result(enum tcpproxy_reason r)
{
	/* rinetd's "local" is its socket to the server, "remote" the
	 * client's. */
	switch (r) {
	case TCPPROXY_REASON_SERVER_CLOSED:
	case TCPPROXY_REASON_SERVER_RESET:
	case TCPPROXY_REASON_SERVER_ERROR:
		return "done-local-closed";
	case TCPPROXY_REASON_CONNECT_REFUSED:
	case TCPPROXY_REASON_CONNECT_TIMEOUT:
	case TCPPROXY_REASON_CONNECT_FAILED:
		return "local-connect-failed";
	default:
		return "done-remote-closed";
	}
}

/* Splits "HOST:PORT" or "[V6]:PORT" into host and port buffers. */
static void
name_split(const char *name, char *host, size_t hsize, char *port,
    size_t psize)
{
	const char *colon = strrchr(name, ':');
	size_t n = colon != NULL ? (size_t)(colon - name) : strlen(name);

	if (name[0] == '[' && n >= 2 && name[n - 1] == ']') {
		name++;
		n -= 2;
	}
	snprintf(host, hsize, "%.*s", (int)n, name);
	snprintf(port, psize, "%s", colon != NULL ? colon + 1 : "0");
}

/*
 * Writes the line rinetd would write for a bridge into its logfile: its
 * tab-separated form, or with logcommon a web server's common log line,
 * so that the parsers written for rinetd's logs keep working.
 */
static void
rinetd_log(const struct cli *c, const struct tcpproxy_bridge_info *info,
    const char *result)
{
	const struct tcpproxy_config *cfg = c->cfg;
	const struct tcpproxy_service *found = NULL;
	const char *lhost = "?", *lport = "?";
	char client[ADDR_NAME_MAX], cport[8], rhost[256], rport[40];
	char stamp[64];
	time_t t = time(NULL);
	struct tm tm;
	size_t i;

	for (i = 0; i < cfg->nservices; i++) {
		const struct tcpproxy_service *s = &cfg->services[i];
		const char *sname = s->name;
		char name[300];

		if (sname == NULL) {
			snprintf(name, sizeof(name), "%s:%s", s->local_host ?
			    s->local_host : "*", s->local_port);
			sname = name;
		}
		if (strcmp(sname, info->service_name) == 0) {
			lhost = s->local_host != NULL ? s->local_host : "*";
			lport = s->local_port;
			found = s;
			break;
		}
	}
	name_split(info->client_name, client, sizeof(client), cport,
	    sizeof(cport));
	name_split(info->backend_name, rhost, sizeof(rhost), rport,
	    sizeof(rport));
	/* A refused client never had a backend: rinetd names the rule's. */
	if (strcmp(info->backend_name, "-") == 0 && found != NULL) {
		snprintf(rhost, sizeof(rhost), "%s", found->backends[0].host);
		snprintf(rport, sizeof(rport), "%s", found->backends[0].port);
	}
	/* UTC, in rinetd's two forms: "... +0000" in the common log,
	 * "...+00:00" in its own. */
	if (gmtime_r(&t, &tm) == NULL || strftime(stamp, sizeof(stamp),
	    c->log_common ? "%d/%b/%Y:%H:%M:%S +0000" :
	    "%d/%b/%Y:%H:%M:%S+00:00", &tm) == 0)
		snprintf(stamp, sizeof(stamp), "-");
	if (c->log_common)
		fprintf(c->log, "%s - - [%s] \"GET /rinetd-services/%s/%s/%s/"
		    "%s/%s HTTP/1.0\" 200 %llu - - - %llu\n", client, stamp,
		    lhost, lport, rhost, rport, result,
		    info->bytes[TCPPROXY_DOWNSTREAM],
		    info->bytes[TCPPROXY_UPSTREAM]);
	else
		fprintf(c->log, "%s\t%s\t%s\t%s\t%s\t%s\t%llu\t%llu\t%s\n",
		    stamp, client, lhost, lport, rhost, rport,
		    info->bytes[TCPPROXY_UPSTREAM],
		    info->bytes[TCPPROXY_DOWNSTREAM], result);
	fflush(c->log);
}

/* A refused client: rinetd logs it as "denied" or "not-allowed". */
static void
cli_refuse(void *user, const struct tcpproxy_bridge_info *info,
    const char *reason)
{
	struct cli *c = user;

	if (c->log != NULL)
		rinetd_log(c, info, strcmp(reason, "not-allowed") == 0 ?
		    "not-allowed" : "denied");
}

/* Releases what the hooks kept for a bridge; writes rinetd's log. */
static void
cli_close(void *user, void *bridge_data,
    const struct tcpproxy_bridge_info *info)
{
	struct cli *c = user;
	struct cli_bridge *cb = bridge_data;
	int d;

	if (c->log != NULL)
		rinetd_log(c, info, rinetd_result(info->reason));
	if (cb == NULL)
		return;
	for (d = 0; d < 2; d++)
		if (cb->dump[d] != NULL && fclose(cb->dump[d]) != 0)
			fprintf(stderr, "tcpproxy: dump id=%lu: %s\n", info->id,
			    strerror(errno));
	free(cb);
}

/* ---- process setup ---- */

static void
on_signal(int sig)
{
	if (sig == SIGHUP)
		got_hup = 1;
	else if (sig == SIGUSR1)
		got_usr1 = 1;
	else if (sig == SIGUSR2)
		got_usr2 = 1;
	else
		got_stop++;
	if (the_proxy == NULL)
		return;
	if (sig == SIGINT || sig == SIGTERM)
		tcpproxy_stop(the_proxy);
	else
		tcpproxy_wake(the_proxy);
}

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


/*
 * Installs the handlers: SIGINT and SIGTERM stop, SIGHUP reloads, SIGUSR1
 * logs stats, SIGUSR2 drains; SIGPIPE is ignored.  No signal the proxy
 * does not use may kill it unannounced: the others keep their defaults
 * (SIGQUIT, SIGALRM...), as a supervisor expects.  Returns 0 or -1.
 */
static int
signals_catch(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = SIG_IGN;
	if (sigaction(SIGPIPE, &sa, NULL) == -1)
		return -1;
	sa.sa_handler = on_signal;	/* no SA_RESTART: waitpid sees EINTR */
	if (sigaction(SIGINT, &sa, NULL) == -1 ||
	    sigaction(SIGTERM, &sa, NULL) == -1 ||
	    sigaction(SIGHUP, &sa, NULL) == -1 ||
	    sigaction(SIGUSR1, &sa, NULL) == -1 ||
	    sigaction(SIGUSR2, &sa, NULL) == -1)
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

/*
 * Takes on id's groups and user as the effective ids only, so that what
 * is opened now is checked with its rights and owned by it; root stays
 * the saved id, for binding.  Exits 1 on failure.
 */
static void
identity_borrow(const struct identity *id, const char *spec)
{
	if (setgroups(1, &id->gid) == -1 || setegid(id->gid) == -1 ||
	    seteuid(id->uid) == -1)
		die("cannot act as '%s': %s", spec, strerror(errno));
}

/* Takes root back after identity_borrow.  Exits 1 on failure. */
static void
identity_return(const char *spec)
{
	if (seteuid(0) == -1 || setegid(getgid()) == -1)
		die("cannot act as root again after '%s': %s", spec,
		    strerror(errno));
}

/* Everything a run of the command line keeps. */
struct run {
	int argc;
	char **argv;			/* without argv[0], for reloads */
	struct tcpproxy_config cfg;	/* the running configuration */
	struct tcpproxy_hooks hooks;
	struct cli cli;
	struct tcpproxy *p;
	char *pid_file;			/* written by us, removed at exit */
	char *port_file;		/* the same */
	int daemon_fd;			/* -D: the ready lines to the parent */
	pid_t parent;			/* --exit-with-parent: whom; or 0 */
	int parent_far;			/* -D: not our parent: ask kill() */
	long long end_ms;		/* --lifetime: when (now_ms); or 0 */
	int watched;			/* one of them has stopped the proxy */
};

/*
 * Parses the command line (and the config file it names) into cfg, with
 * the run's hooks; returns 0, or -1 with the reason in err.
 */
static int control_reload(void *, char *, size_t);
static int run_reload_err(struct run *, char *, size_t);

static int
run_parse(struct run *r, struct tcpproxy_config *cfg, char *err)
{
	tcpproxy_config_init(cfg);
	if (tcpproxy_config_parse(cfg, r->argc, r->argv, err, ERRLEN) == -1)
		return -1;
	cfg->hooks = &r->hooks;
	cfg->log = cli_log;
	cfg->on_reload = control_reload;
	cfg->reload_user = r;
	return 0;
}

/* SIGHUP: re-reads everything and switches, or says why not; 0 or -1. */
static int
run_reload(struct run *r)
{
	char err[ERRLEN];

	return run_reload_err(r, err, sizeof(err));
}

/* The control socket's reload: as SIGHUP's, with the reason in err. */
static int
control_reload(void *user, char *err, size_t errlen)
{
	return run_reload_err(user, err, errlen);
}

/* Reloads as run_reload() does; the reason of a failure goes to err. */
static int
run_reload_err(struct run *r, char *out, size_t outlen)
{
	struct tcpproxy_config cfg;
	char err[ERRLEN];

	if (run_parse(r, &cfg, err) == -1 ||
	    tcpproxy_reload(r->p, &cfg, err, sizeof(err)) == -1) {
		char line[ERRLEN + 64];

		snprintf(line, sizeof(line), "reload failed, the running "
		    "configuration stays: %s", err);
		log_out(TCPPROXY_LOG_ERROR, line);
		snprintf(out, outlen, "%s", line);
		tcpproxy_config_free(&cfg);
		return -1;
	}
	tcpproxy_config_free(&r->cfg);
	r->cfg = cfg;
	r->cli.cfg = &r->cfg;
	return 0;
}

/*
 * Replaces the file at path with text, via a temporary name and a rename,
 * so that a reader sees the old file or the whole new one; what names the
 * file in the message.  Exits 1 on failure.
 */
static void
file_replace(const char *path, const char *what, const char *text)
{
	char tmp[PATH_MAX];
	FILE *f;

	if (snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long)getpid()) >=
	    (int)sizeof(tmp))
		die("cannot write %s '%s': name too long", what, path);
	if ((f = fopen(tmp, "w")) == NULL)
		die("cannot write %s '%s': %s", what, path, strerror(errno));
	if (fputs(text, f) == EOF || fclose(f) != 0 ||
	    rename(tmp, path) == -1) {
		int saved = errno;

		(void)unlink(tmp);
		die("cannot write %s '%s': %s", what, path, strerror(saved));
	}
}

/* Writes the pid file; exits 1 on failure. */
static void
pid_file_write(const char *path)
{
	char text[32];

	snprintf(text, sizeof(text), "%ld\n", (long)getpid());
	file_replace(path, "pid file", text);
}

/*
 * Returns the ready lines, one "ADDR:PORT" (or socket path) per listener
 * as its "listening on" line names it, in a string to free; exits 1 when
 * out of memory.
 */
static char *
ready_text(const struct tcpproxy *p)
{
	const char *name;
	char *text;
	size_t i, len = 1, at = 0;

	for (i = 0; (name = tcpproxy_listener_name(p, i)) != NULL; i++)
		len += strlen(name) + 1;
	if ((text = malloc(len)) == NULL)
		die("out of memory");
	for (i = 0; (name = tcpproxy_listener_name(p, i)) != NULL; i++)
		at += (size_t)sprintf(text + at, "%s\n", name);
	text[at] = '\0';
	return text;
}

/* Writes all of text to fd, across short writes; returns 0 or -1. */
static int
write_all(int fd, const char *text, size_t len)
{
	ssize_t n;

	while (len > 0) {
		if ((n = write(fd, text, len)) == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		text += n;
		len -= (size_t)n;
	}
	return 0;
}

/*
 * Tells whoever waits that the proxy is up: the ready lines go to
 * --ready-fd (then closed, so a reader sees EOF), to --port-file and to
 * the -D parent.  Exits 1 if one of them cannot be written.
 */
static void
ready_announce(struct run *r)
{
	const struct tcpproxy_program *o = &r->cfg.program;
	char *text = ready_text(r->p);
	int fd = (int)o->ready_fd;

	if (o->ready_fd != 0 && (write_all(fd, text, strlen(text)) == -1 ||
	    close(fd) == -1))
		die("cannot write to --ready-fd %d: %s", fd, strerror(errno));
	if (r->port_file != NULL)
		file_replace(r->port_file, "port file", text);
	if (r->daemon_fd >= 0) {
		if (write_all(r->daemon_fd, text, strlen(text)) == -1)
			die("cannot tell the -D parent: %s", strerror(errno));
		(void)close(r->daemon_fd);
		r->daemon_fd = -1;
		(void)close(startup_fd);
		startup_fd = -1;
	}
	free(text);
}

/*
 * Reads fd to its end into a string to free, with its length in *len.
 * Returns NULL if out of memory (what was read is lost: the caller
 * fails anyway).
 */
static char *
read_all(int fd, size_t *len)
{
	char *text = NULL, *grown;
	size_t cap = 0;
	ssize_t n;

	*len = 0;
	for (;;) {
		if (cap - *len < 512) {
			if ((grown = realloc(text, cap + 4096)) == NULL) {
				free(text);
				return NULL;
			}
			text = grown;
			cap += 4096;
		}
		if ((n = read(fd, text + *len, cap - *len - 1)) == -1 &&
		    errno == EINTR)
			continue;
		if (n <= 0)
			break;
		*len += (size_t)n;
	}
	text[*len] = '\0';
	return text;
}

/*
 * The -D parent: waits for the daemon's ready lines and prints them on
 * stdout, or for its error and prints that on stderr.  Returns the
 * parent's exit status: 0 if the daemon is up, 1 if it is not.
 */
static int
daemon_wait(pid_t pid, int ready, int errors)
{
	char *text;
	size_t len;
	int status;

	/* EOF comes when the daemon is ready, or when it is gone. */
	if ((text = read_all(ready, &len)) != NULL && len > 0) {
		int rc = 0;

		if (write_all(STDOUT_FILENO, text, len) == -1) {
			fprintf(stderr, "tcpproxy: cannot print the ready "
			    "lines: %s\n", strerror(errno));
			rc = 1;
		}
		free(text);
		return rc;
	}
	free(text);
	/* Not ready: it died, and wrote why (no listener cannot be). */
	if ((text = read_all(errors, &len)) != NULL && len > 0)
		(void)write_all(STDERR_FILENO, text, len);
	free(text);
	if (waitpid(pid, &status, 0) == pid && len == 0)
		fprintf(stderr, "tcpproxy: the daemon ended before it was "
		    "ready, with status %d\n", WIFEXITED(status) ?
		    WEXITSTATUS(status) : 128 + WTERMSIG(status));
	return 1;
}

/*
 * -D: forks; the parent stays in daemon_wait() and exits with its status,
 * the child returns to start the proxy in a session of its own, with
 * stdin, stdout and stderr on /dev/null so that nothing of the caller's
 * (a $(...) pipe, a terminal) is held.  Its working directory stays, as
 * relative paths (-f, pid file) are read again on a reload.  Exits 1 on
 * failure.
 */
static void
daemon_start(struct run *r)
{
	int ready[2], errors[2], null;
	pid_t pid;

	if (pipe(ready) == -1 || pipe(errors) == -1)
		die("cannot start the daemon: %s", strerror(errno));
	if ((pid = fork()) == -1)
		die("cannot start the daemon: fork: %s", strerror(errno));
	if (pid > 0) {
		(void)close(ready[1]);
		(void)close(errors[1]);
		exit(daemon_wait(pid, ready[0], errors[0]));
	}
	(void)close(ready[0]);
	(void)close(errors[0]);
	r->daemon_fd = ready[1];
	startup_fd = errors[1];
	(void)setsid();		/* cannot fail: a child leads no group */
	if ((null = open("/dev/null", O_RDWR)) == -1 ||
	    dup2(null, STDIN_FILENO) == -1 ||
	    dup2(null, STDOUT_FILENO) == -1 ||
	    dup2(null, STDERR_FILENO) == -1)
		die("cannot start the daemon: /dev/null: %s", strerror(errno));
	if (null > STDERR_FILENO)
		(void)close(null);
}

/* Removes the pid file at a clean exit, if it is still ours. */
static void
pid_file_remove(const char *path)
{
	char buf[32];
	FILE *f;

	if (path == NULL || (f = fopen(path, "r")) == NULL)
		return;
	if (fgets(buf, sizeof(buf), f) != NULL &&
	    strtol(buf, NULL, 10) == (long)getpid() && unlink(path) == -1)
		fprintf(stderr, "tcpproxy: cannot remove pid file '%s': %s\n",
		    path, strerror(errno));
	fclose(f);
}

/*
 * Returns why the proxy should stop by itself now (--exit-with-parent,
 * --lifetime), or NULL.
 */
static const char *
watch_reason(const struct run *r)
{
	if (r->parent > 0 && (r->parent_far ? kill(r->parent, 0) == -1 &&
	    errno == ESRCH : getppid() != r->parent))
		return "the parent process exited";
	if (r->end_ms > 0 && now_ms() >= r->end_ms)
		return "the --lifetime is over";
	return NULL;
}

/*
 * Returns how long, in ms, the loop may wait before watch_check() must
 * look again, or -1 for as long as it likes.
 */
static int
watch_timeout(const struct run *r)
{
	long long t = r->parent > 0 ? WATCH_MS : -1, left;

	if (r->watched)
		return -1;
	if (r->end_ms > 0) {
		left = r->end_ms - now_ms();
		left = left < 0 ? 0 : left > WATCH_MS * 1000 ?
		    WATCH_MS * 1000 : left;
		if (t == -1 || left < t)
			t = left;
	}
	return (int)t;
}

/* Returns 1, once, when the watch says stop, after logging why; or 0. */
static int
watch_check(struct run *r)
{
	const char *why;
	char line[128];

	if (r->watched || (why = watch_reason(r)) == NULL)
		return 0;
	r->watched = 1;
	snprintf(line, sizeof(line), "stopping: %s", why);
	log_out(TCPPROXY_LOG_ERROR, line);
	return 1;
}

/*
 * Runs the poll loop in this process, acting on the signals between
 * rounds; a worker leaves the watch to its parent.  Returns main's exit
 * status.
 */
static int
run_loop(struct run *r, int worker)
{
	int rc;

	for (;;) {
		rc = tcpproxy_step(r->p, worker ? -1 : watch_timeout(r));
		if (rc != 1)
			break;
		if (!worker && watch_check(r))
			tcpproxy_stop(r->p);	/* as SIGTERM would */
		if (got_hup) {
			got_hup = 0;
			if (worker)
				fprintf(stderr, "tcpproxy: worker %d: SIGHUP "
				    "is for the parent\n", worker);
			else
				(void)run_reload(r);
		}
		if (got_usr1) {
			got_usr1 = 0;
			tcpproxy_log_stats(r->p);
		}
		if (got_usr2) {
			got_usr2 = 0;
			tcpproxy_drain(r->p);
		}
	}
	if (rc == -1)
		fprintf(stderr, "tcpproxy: poll: %s\n", strerror(errno));
	return rc == -1 ? 1 : 0;
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
 * Forks worker w (from 1) of a generation, which runs its own poll loop
 * on the listeners it inherits (its own socket of each, where there is
 * one per worker) and never returns.  Returns its pid, or 0 when fork()
 * failed (said).
 */
static pid_t
worker_start(struct run *r, int w, const sigset_t *old)
{
	struct sigaction sa;
	pid_t pid;
	int rc;

	if ((pid = fork()) == -1) {
		fprintf(stderr, "tcpproxy: fork: %s\n", strerror(errno));
		return 0;
	}
	if (pid > 0)
		return pid;
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = SIG_DFL;
	(void)sigaction(SIGCHLD, &sa, NULL);
	if (tcpproxy_after_fork(r->p, w) == -1)
		die("worker %d: %s", w, strerror(errno));
	got_stop = got_hup = got_usr1 = got_usr2 = 0;
	the_proxy = r->p;
	(void)sigprocmask(SIG_SETMASK, old, NULL);
	rc = run_loop(r, w);
	tcpproxy_free(r->p);
	_exit(rc);
	/* NOTREACHED: tcc does not know _exit() does not return. */
	return 0;
}

/*
 * Forks the workers of one generation into pids[0..n), and when into
 * born[0..n).  Returns how many started.
 */
static int
workers_fork(struct run *r, pid_t *pids, long long *born, int n,
    const sigset_t *old, int *rc)
{
	int i;

	for (i = 0; i < n; i++) {
		born[i] = now_ms();
		if ((pids[i] = worker_start(r, i + 1, old)) == 0) {
			*rc = 1;
			break;
		}
	}
	return i;
}

/*
 * Starts again each worker of the serving generation, pids[0..n), that
 * ended while the proxy was not stopping: where each worker has a socket
 * of its own (listener_twin), the clients the kernel queues on a dead
 * worker's socket would wait for nobody; the new worker w takes socket w
 * again.  One that lived less than TCPPROXY_RESPAWN ms waits out the
 * rest, so that a worker that cannot live is not forked in a loop.
 * Returns how many it started; *due says whether some still wait.
 */
static int
workers_respawn(struct run *r, pid_t *pids, long long *born, int n,
    const sigset_t *old, int *due)
{
	long long now = now_ms();
	char line[64];
	int i, started = 0;

	*due = 0;
	for (i = 0; i < n; i++) {
		if (pids[i] != 0)
			continue;
		if (now - born[i] < TCPPROXY_RESPAWN) {
			*due = 1;
			continue;
		}
		snprintf(line, sizeof(line), "starting worker %d again", i + 1);
		log_out(TCPPROXY_LOG_ERROR, line);
		born[i] = now;
		if ((pids[i] = worker_start(r, i + 1, old)) != 0)
			started++;
		else
			*due = 1;	/* tried again in a while */
	}
	return started;
}

/* Sends sig to every worker in pids[0..n). */
static void
workers_signal(const pid_t *pids, int n, int sig)
{
	int i;

	for (i = 0; i < n; i++)
		if (pids[i] > 0)
			(void)kill(pids[i], sig);
}

/*
 * Runs n workers and supervises them.  Every SIGINT/SIGTERM is passed on,
 * so a second one ends their grace period; SIGUSR1 too.  On SIGHUP the
 * parent reloads (binding what is new), starts a new generation of
 * workers and lets the old ones drain: they close their listeners and
 * finish their bridges however long they take.  A worker of the new
 * generation that ends unasked is started again (workers_respawn).
 * Returns main's status.
 */
static int
run_workers(struct run *r, int n)
{
	struct sigaction sa;
	sigset_t block, old;
	pid_t *pids = NULL, *grown;
	long long *born;
	int npids = 0, alive = 0, rc = 0, k, due;
	sig_atomic_t forwarded = 0;

	if ((born = calloc((size_t)n, sizeof(*born))) == NULL) {
		fprintf(stderr, "tcpproxy: out of memory\n");
		return 1;
	}
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_child;
	(void)sigaction(SIGCHLD, &sa, NULL);
	(void)sigaction(SIGALRM, &sa, NULL);	/* wakes it for the watch */
	/*
	 * Blocked until sigsuspend(): a signal between fork and
	 * tcpproxy_after_fork, or just before the parent waits, would be lost.
	 */
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGHUP);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGUSR2);
	sigaddset(&block, SIGCHLD);
	sigaddset(&block, SIGALRM);
	(void)sigprocmask(SIG_BLOCK, &block, &old);
	/* The parent only supervises: its proxy holds the listeners. */
	the_proxy = NULL;
	got_hup = 1;
	for (;;) {
		if (got_hup && !got_stop) {
			int first = npids == 0;

			got_hup = 0;
			if (!first && run_reload(r) == -1)
				goto wait;	/* it failed: keep them */
			if ((grown = realloc(pids, (size_t)(npids + n) *
			    sizeof(*pids))) == NULL) {
				fprintf(stderr, "tcpproxy: out of memory\n");
				got_stop++;
				rc = 1;
			} else {
				pids = grown;
				memset(pids + npids, 0, (size_t)n * sizeof(*pids));
				k = workers_fork(r, pids + npids, born, n, &old,
				    &rc);
				/* The new ones serve: the old ones may go. */
				workers_signal(pids, npids, SIGUSR2);
				npids += n;
				alive += k;
				if (k < n)
					got_stop++;
			}
		}
wait:
		if (watch_check(r))
			got_stop++;
		while (forwarded < got_stop) {
			workers_signal(pids, npids, SIGTERM);
			forwarded++;
		}
		if (got_usr1) {
			got_usr1 = 0;
			workers_signal(pids, npids, SIGUSR1);
		}
		if ((k = workers_reap(pids, npids, &rc)) == -1)
			break;
		alive -= k;
		due = 0;
		if (!got_stop && npids > 0)
			alive += workers_respawn(r, pids + npids - n, born, n,
			    &old, &due);
		if (alive == 0 && !due)
			break;
		if (forwarded == got_stop && !got_hup && !got_usr1) {
			/* A second at most, then the watch looks again. */
			if (due || watch_timeout(r) >= 0)
				(void)alarm(1);
			(void)sigsuspend(&old);
		}
	}
	(void)alarm(0);
	free(pids);
	free(born);
	return rc;
}

/*
 * --log-file: appends stderr, and so every log line and message, to path.
 * Exits 1 on failure.
 */
static void
stderr_open(const char *path, const char *as)
{
	int fd;

	if ((fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0666)) == -1)
		die("cannot open --log-file '%s'%s: %s", path, as,
		    strerror(errno));
	if (fd != STDERR_FILENO) {
		if (dup2(fd, STDERR_FILENO) == -1)
			die("cannot log to '%s': %s", path, strerror(errno));
		(void)close(fd);
	}
}

/*
 * Opens the dump and log outputs the options ask for, and makes the dump
 * directory; cli->dump_dir is set already.  Exits 1 naming the path that
 * fails, and the user (-u) it fails for.
 */
static void
outputs_open(const struct tcpproxy_config *cfg, struct cli *cli)
{
	const struct tcpproxy_program *o = &cfg->program;
	struct stat st;
	char as[300] = "";

	if (o->user != NULL)
		snprintf(as, sizeof(as), " as user '%s'", o->user);
	if (o->log_output != NULL)
		stderr_open(o->log_output, as);
	if (o->dump_file != NULL && (cli->hex = fopen(o->dump_file, "w")) ==
	    NULL)
		die("cannot open dump file '%s'%s: %s", o->dump_file, as,
		    strerror(errno));
	if (o->hexdump && cli->hex == NULL) {
		int fd = dup(STDERR_FILENO);

		/* A stream of its own, fully buffered, flushed per chunk. */
		if (fd == -1 || (cli->hex = fdopen(fd, "w")) == NULL)
			die("cannot dump to stderr: %s", strerror(errno));
	}
	if (o->log_file != NULL && (cli->log = fopen(o->log_file, "a")) ==
	    NULL)
		die("cannot open log file '%s'%s: %s", o->log_file, as,
		    strerror(errno));
	cli->log_common = o->log_common;
	if (cli->dump_dir == NULL)
		return;
	if (mkdir(cli->dump_dir, 0777) == -1 && errno != EEXIST)
		die("cannot create dump directory '%s'%s: %s", cli->dump_dir,
		    as, strerror(errno));
	if (stat(cli->dump_dir, &st) == -1)
		die("cannot use dump directory '%s'%s: %s", cli->dump_dir, as,
		    strerror(errno));
	if (!S_ISDIR(st.st_mode))
		die("cannot use dump directory '%s': not a directory",
		    cli->dump_dir);
	/* The effective ids: those of -u, borrowed (identity_borrow). */
	if (faccessat(AT_FDCWD, cli->dump_dir, W_OK | X_OK, AT_EACCESS) ==
	    -1)
		die("cannot write to dump directory '%s'%s: %s", cli->dump_dir,
		    as, strerror(errno));
}

/* Prints one --check-config problem. */
static void
check_report(void *user, const char *line)
{
	(void)user;
	fprintf(stderr, "tcpproxy: %s\n", line);
}

/* ---- tcpproxy ctl: the control socket's client ---- */

/*
 * The control protocol, plain text so that socat and nc -U serve too.  A
 * request is one line ending in "\n", its words split on blanks; a word
 * holding a blank or '"' (or none at all) is sent in double quotes, with
 * '"' and '\\' escaped by a '\\'.  Or a batch: "begin\n", request lines,
 * "end\n", applied in one round of the loop.  The reply to either is zero
 * or more data lines, then exactly one status line, "ok" or "ok TEXT" or
 * "error: MESSAGE"; a data line never starts with "ok" or "error:".  The
 * client then closes.  It has no timeout of its own: the server bounds a
 * "wait" with its timeout=.
 */

#define CTL_USAGE "usage: tcpproxy ctl path command [arg ...]\n" \
	"       tcpproxy ctl path -\n"

/* Prints a ctl usage error and exits 2. */
static NORETURN void
ctl_usage(const char *why)
{
	fprintf(stderr, "tcpproxy: ctl: %s\n%s", why, CTL_USAGE);
	exit(2);
}

/*
 * Prints "tcpproxy: ctl: WHAT 'PATH': strerror" (no PATH if NULL) and
 * exits 2.
 */
static NORETURN void
ctl_fail(const char *path, const char *what, int err)
{
	if (path != NULL)
		fprintf(stderr, "tcpproxy: ctl: %s '%s': %s\n", what, path,
		    strerror(err));
	else
		fprintf(stderr, "tcpproxy: ctl: %s: %s\n", what,
		    strerror(err));
	exit(2);
}

/*
 * Returns the request line for words[0..n), each quoted as it needs, in
 * a string to free.  Exits 2 if a word holds a line break, which no line
 * can carry.
 */
static char *
ctl_request_line(char *const words[], int n)
{
	char *line, *q;
	size_t len = 2;
	int i;

	for (i = 0; i < n; i++)
		len += 2 * strlen(words[i]) + 3;
	if ((line = malloc(len)) == NULL)
		ctl_fail(NULL, "out of memory", ENOMEM);
	q = line;
	for (i = 0; i < n; i++) {
		const char *w = words[i];
		int quote = *w == '\0' || strpbrk(w, " \t\"") != NULL;

		if (strpbrk(w, "\n\r") != NULL)
			ctl_usage("a word holds a line break");
		if (i > 0)
			*q++ = ' ';
		if (quote)
			*q++ = '"';
		for (; *w != '\0'; w++) {
			if (quote && (*w == '"' || *w == '\\'))
				*q++ = '\\';
			*q++ = *w;
		}
		if (quote)
			*q++ = '"';
	}
	*q++ = '\n';
	*q = '\0';
	return line;
}

/*
 * Returns a batch made of the lines of f, "begin\n" and "end\n" around
 * those that are not blank, in a string to free; exits 2 on failure.
 */
static char *
ctl_request_batch(FILE *f)
{
	char *batch, *line = NULL, *grown;
	size_t len, cap = 0, at;
	ssize_t n;

	if ((batch = strdup("begin\n")) == NULL)
		ctl_fail(NULL, "out of memory", ENOMEM);
	at = strlen(batch);
	while ((n = getline(&line, &cap, f)) != -1) {
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (strspn(line, " \t") == (size_t)n)
			continue;
		len = at + (size_t)n + sizeof("\nend\n");
		if ((grown = realloc(batch, len)) == NULL)
			ctl_fail(NULL, "out of memory", ENOMEM);
		batch = grown;
		at += (size_t)sprintf(batch + at, "%s\n", line);
	}
	if (ferror(f))
		ctl_fail(NULL, "cannot read the batch", errno);
	free(line);
	if ((grown = realloc(batch, at + sizeof("end\n"))) == NULL)
		ctl_fail(NULL, "out of memory", ENOMEM);
	strcpy(grown + at, "end\n");
	return grown;
}

/* Returns a stream connected to the Unix socket path; exits 2 if not. */
static FILE *
ctl_connect(const char *path)
{
	struct sockaddr_un sun;
	FILE *f;
	int fd;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path))
		ctl_fail(path, "cannot connect to", ENAMETOOLONG);
	strcpy(sun.sun_path, path);
	if ((fd = socket(AF_UNIX, SOCK_STREAM, 0)) == -1)
		ctl_fail(path, "cannot connect to", errno);
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1 ||
	    (f = fdopen(fd, "r")) == NULL)
		ctl_fail(path, "cannot connect to", errno);
	return f;
}

/*
 * tcpproxy ctl PATH COMMAND... | -: sends one request (or a batch from
 * stdin) to the control socket PATH, prints the reply's data lines, and
 * the TEXT of "ok TEXT", on stdout.  Returns 0 for "ok", 1 for "error"
 * (the line goes to stderr); exits 2 when the proxy cannot be reached or
 * hangs up before its status line.
 */
static int
ctl_main(int argc, char *argv[])
{
	const char *path = argc > 0 ? argv[0] : NULL;
	struct sigaction sa;
	char *req, *line = NULL;
	size_t cap = 0;
	ssize_t n;
	FILE *f;
	int rc = -1;

	if (argc < 2 || *path == '\0')
		ctl_usage(argc < 1 || *path == '\0' ? "needs the control "
		    "socket's path" : "needs a command, or - for a batch");
	req = argc == 2 && strcmp(argv[1], "-") == 0 ? ctl_request_batch(stdin) :
	    ctl_request_line(argv + 1, argc - 1);
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = SIG_IGN;	/* a socket closed on us: EPIPE */
	(void)sigaction(SIGPIPE, &sa, NULL);
	f = ctl_connect(path);
	if (write_all(fileno(f), req, strlen(req)) == -1)
		ctl_fail(path, "cannot send to", errno);
	free(req);
	while (rc == -1 && (n = getline(&line, &cap, f)) != -1) {
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (strcmp(line, "ok") == 0)
			rc = 0;
		else if (strncmp(line, "ok ", 3) == 0)
			rc = printf("%s\n", line + 3) < 0;
		else if (strncmp(line, "error", 5) == 0 &&
		    (line[5] == '\0' || line[5] == ':' || line[5] == ' ')) {
			fprintf(stderr, "%s\n", line);
			rc = 1;
		} else
			printf("%s\n", line);
	}
	if (rc == -1 && ferror(f))
		ctl_fail(path, "cannot read the reply from", errno);
	if (rc == -1) {
		fprintf(stderr, "tcpproxy: ctl: '%s' hung up before the "
		    "status line\n", path);
		exit(2);
	}
	free(line);
	fclose(f);
	if (fflush(stdout) == EOF)
		return 1;
	return rc;
}

#ifndef TCPPROXY_FUZZ
int
main(int argc, char *argv[])
{
	static struct run r;
	struct cli *cli = &r.cli;
	const struct tcpproxy_program *o = &r.cfg.program;
	/* Set by identity_lookup; -1 fails setgid() should it ever not be. */
	struct identity id = { (uid_t)-1, (gid_t)-1 };
	char err[ERRLEN];
	int rc;

	/* A local host named ctl would be written ctl:PORT. */
	if (argc > 1 && strcmp(argv[1], "ctl") == 0)
		return ctl_main(argc - 2, argv + 2);
	r.argc = argc - 1;
	r.argv = argv + 1;
	r.daemon_fd = -1;
	if (run_parse(&r, &r.cfg, err) == -1) {
		const char *f = r.cfg.program.config_file;

		/* A config file's error names its line: no usage after it. */
		if (f != NULL && strncmp(err, f, strlen(f)) == 0 &&
		    err[strlen(f)] == ':') {
			fprintf(stderr, "tcpproxy: %s\n", err);
			return 2;
		}
		usage_error("%s", err);
	}
	if (o->help) {
		help();
		return 0;
	}
	/* One proxy, one state: N workers would each keep their own faults
	 * and counters, and answer for one N-th of the clients. */
	if (r.cfg.control != NULL && o->workers > 1)
		usage_error("--control needs -w 1: each worker would have "
		    "faults and counters of its own");
	if (o->version) {
		/* The platform paths it was built with: none is -DTCPPROXY_
		 * PORTABLE, and what the BSDs and macOS may get. */
		printf("tcpproxy %s\nplatform:%s\n", TCPPROXY_VERSION,
		    FEATURES[0] != '\0' ? FEATURES : " portable");
		return 0;
	}
	if (o->check_config) {
		unsigned long n = tcpproxy_config_check(&r.cfg, check_report,
		    NULL);

		if (n == 0)
			printf("tcpproxy: configuration ok: %lu services\n",
			    (unsigned long)r.cfg.nservices);
		return n == 0 ? 0 : 2;
	}
	/* A reload frees the config's strings; these are the process's. */
	if ((o->dump_dir != NULL && (cli->dump_dir = strdup(o->dump_dir))
	    == NULL) || (o->pid_file != NULL &&
	    (r.pid_file = strdup(o->pid_file)) == NULL) ||
	    (o->port_file != NULL && (r.port_file = strdup(o->port_file)) ==
	    NULL))
		die("out of memory");
	cli->cfg = &r.cfg;
	r.hooks.user = cli;
	r.hooks.on_accept = cli_accept;
	/* Only a dump needs to see the data: the relay pays nothing else. */
	if (o->hexdump || o->dump_dir != NULL)
		r.hooks.on_data = cli_data;
	if (o->hexdump || o->dump_dir != NULL || o->log_file != NULL)
		r.hooks.on_close = cli_close;
	else
		r.hooks.on_accept = NULL;
	if (o->log_file != NULL)
		r.hooks.on_refuse = cli_refuse;
	/* Before -D: its parent to outlive is the one that ran it. */
	if (o->exit_with_parent)
		r.parent = getppid();
	r.parent_far = o->daemon;
	if (o->lifetime > 0)
		r.end_ms = now_ms() + secs_to_ms(o->lifetime);
	if (o->daemon)
		daemon_start(&r);

	if (signals_catch() == -1)
		die("sigaction: %s", strerror(errno));
	raise_fd_limit();
	if (o->user != NULL) {
		identity_lookup(o->user, &id);
		identity_borrow(&id, o->user);
	}
	/*
	 * As the user who will write them (-u): a path that user cannot use
	 * fails the start, naming it, instead of every capture later.  The
	 * pid file alone is written by root, as root may need (/run).
	 */
	/* From here on every line is timed or goes to syslog, as asked. */
	log_time = o->log_time;
	if (o->log_syslog) {
		openlog("tcpproxy", LOG_PID, LOG_DAEMON);
		log_syslog = 1;
	}
	outputs_open(&r.cfg, cli);
	if (o->user != NULL)
		identity_return(o->user);
	if ((r.p = tcpproxy_create(&r.cfg, err, sizeof(err))) == NULL)
		die("%s", err);
	if (r.pid_file != NULL)
		pid_file_write(r.pid_file);
	if (o->user != NULL)
		identity_assume(&id, o->user);
	else if (geteuid() == 0)
		log_out(TCPPROXY_LOG_ERROR, "warning: running as root; "
		    "consider --user");
	/* Last: once a waiter hears of it, it all holds, the pid file too. */
	ready_announce(&r);
	if (o->workers > 1) {
		rc = run_workers(&r, (int)o->workers);
	} else {
		the_proxy = r.p;
		rc = run_loop(&r, 0);
		the_proxy = NULL;
	}
	tcpproxy_free(r.p);
	pid_file_remove(r.pid_file);
	if (r.port_file != NULL)
		(void)unlink(r.port_file);	/* best effort, as a stale one
						 * is only misleading */
	tcpproxy_config_free(&r.cfg);
	free(r.pid_file);
	free(r.port_file);
	free((char *)cli->dump_dir);
	return rc;
}
#endif /* TCPPROXY_FUZZ */

#endif /* TCPPROXY_NO_MAIN */
