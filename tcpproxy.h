/*
 * tcpproxy.h - the public interface of tcpproxy, a small TCP proxy.
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * Compile tcpproxy.c with -DTCPPROXY_NO_MAIN and link it into a program to
 * embed the proxy.  A proxy is an opaque handle: create it from a config
 * (this resolves both addresses and starts listening), drive it with
 * tcpproxy_run() or tcpproxy_step(), stop it with tcpproxy_stop() and
 * release it with tcpproxy_free().  The library keeps no global state, so
 * a program may run several proxies, each from one thread at a time.
 *
 * The library never exits and never changes the process's signal
 * dispositions or resource limits.  Where the platform has neither
 * MSG_NOSIGNAL nor SO_NOSIGPIPE the program must ignore SIGPIPE itself.
 */
#ifndef TCPPROXY_H
#define TCPPROXY_H

#include <stddef.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TCPPROXY_VERSION "0.1.0"

/* Log levels, for tcpproxy_config.verbosity and the log callback. */
enum tcpproxy_log_level {
	TCPPROXY_LOG_ERROR = 0,	/* failures, warnings, the ready line */
	TCPPROXY_LOG_INFO = 1,	/* one line per bridge open and close */
	TCPPROXY_LOG_DEBUG = 2	/* connect attempts and other detail */
};

/* Directions of a bridge. */
enum tcpproxy_dir {
	TCPPROXY_UPSTREAM = 0,	/* client -> proxy -> server */
	TCPPROXY_DOWNSTREAM = 1	/* server -> proxy -> client */
};

/* What a hook wants done with a client or a chunk of data. */
enum tcpproxy_verdict {
	TCPPROXY_PASS = 0,	/* admit the client; relay the chunk */
	TCPPROXY_DROP = 1,	/* discard the chunk; the bridge goes on */
	TCPPROXY_CLOSE = 2,	/* refuse the client; end the bridge */
	TCPPROXY_MORE = 3	/* relay the chunk; call again when drained */
};

/* Why a bridge ended; tcpproxy_reason_name() gives the word in the log. */
enum tcpproxy_reason {
	TCPPROXY_REASON_NONE = 0,	/* still open */
	TCPPROXY_REASON_CLIENT_CLOSED,	/* "client-closed": EOF from client */
	TCPPROXY_REASON_SERVER_CLOSED,	/* "server-closed": EOF from server */
	TCPPROXY_REASON_CLIENT_RESET,	/* "client-reset" */
	TCPPROXY_REASON_SERVER_RESET,	/* "server-reset" */
	TCPPROXY_REASON_CLIENT_ERROR,	/* "client-error": other I/O error */
	TCPPROXY_REASON_SERVER_ERROR,	/* "server-error" */
	TCPPROXY_REASON_CONNECT_REFUSED, /* "connect-refused" */
	TCPPROXY_REASON_CONNECT_TIMEOUT, /* "connect-timeout" */
	TCPPROXY_REASON_CONNECT_FAILED,	/* "connect-failed": any other error */
	TCPPROXY_REASON_IDLE_TIMEOUT,	/* "idle-timeout" */
	TCPPROXY_REASON_HOOK,		/* "hook-closed": on_data said CLOSE */
	TCPPROXY_REASON_SHUTDOWN,	/* "shutdown": grace period ran out */
	TCPPROXY_REASON_NO_MEMORY,	/* "no-memory" */
	TCPPROXY_REASON_MAX_BYTES,	/* "max-bytes": upstream limit reached */
	TCPPROXY_REASON_QUEUE_TIMEOUT,	/* "queue-timeout": waited too long
					   for a place under max_clients */
	TCPPROXY_REASON_FAULT		/* "fault": a fault ended it */
};

/*
 * What a hook is told about a bridge.  The pointers are valid only during
 * the call.  bytes[] counts bytes delivered: bytes[TCPPROXY_UPSTREAM] were
 * written to the server, bytes[TCPPROXY_DOWNSTREAM] to the client.
 */
struct tcpproxy_bridge_info {
	unsigned long id;		/* 1, 2, 3... per proxy */
	const struct sockaddr *client;	/* the client's address */
	socklen_t client_len;
	const char *client_name;	/* "127.0.0.1:40000", "[::1]:40000" */
	const char *server_name;	/* the server address last tried */
	const char *service_name;	/* the service it was accepted by */
	const char *backend_name;	/* the backend tried, "HOST:PORT" */
	const char *local_name;		/* the address it connected to */
	unsigned long long bytes[2];
	double duration;		/* seconds since accept */
	enum tcpproxy_reason reason;	/* TCPPROXY_REASON_NONE until close */
	int error;			/* errno behind the reason, or 0 */
	int final;			/* on_data: the direction's last call */
};

/*
 * Per-bridge hooks.  Every hook is optional (NULL) and gets the user
 * pointer of this struct.  Rules for hook authors:
 *
 * - Hooks run on the thread that calls tcpproxy_run() or tcpproxy_step(),
 *   inside the poll loop.  They must not block: every other bridge waits
 *   while a hook runs.  They must not call tcpproxy_free() or
 *   tcpproxy_run(); tcpproxy_stop() is allowed.
 *
 * - on_accept is called once per accepted client, before the proxy
 *   connects to the server.  Returning TCPPROXY_CLOSE refuses the client:
 *   its connection is closed at once, the refusal is logged, and neither
 *   on_data nor on_close is called for it.  Returning TCPPROXY_PASS admits
 *   it; *bridge_data (NULL on entry) may be set to a pointer of the hook's
 *   own, passed back to on_data and on_close.
 *
 * - on_data is called once for every chunk read from either side, before
 *   the chunk is queued for the other side.  data[0..*len) is the chunk.
 *   The hook may edit those bytes in place, and may change *len to any
 *   value from 0 to cap; the bytes data[0..cap) are its to write.  The
 *   proxy reads at most half of the free buffer space while an on_data
 *   hook is set, so cap is always at least twice the chunk's length.
 *   Returning TCPPROXY_DROP discards the chunk (as does *len = 0).
 *   Returning TCPPROXY_CLOSE discards the chunk and ends the bridge: no
 *   more bytes are read from either side, bytes already passed and still
 *   buffered are delivered, then both connections are closed.
 *
 * - on_data is also called with *len == 0, and data[0..cap) to fill:
 *   (a) once when the proxy stops reading a direction for good (its
 *   sender's EOF, the other side's EOF in symmetric mode, --max-bytes),
 *   with info->final set, so a hook that holds bytes back (a match split
 *   across reads, say) can add them before the direction ends (if the
 *   buffer is full then, the call waits until it has drained); not after
 *   a reset or an error, when they could not be delivered anyway; and (b)
 *   after the hook
 *   returned TCPPROXY_MORE, as soon as everything queued in that
 *   direction has been written, with cap the whole buffer.  TCPPROXY_MORE
 *   relays the chunk like TCPPROXY_PASS and asks for call (b): for a hook
 *   that has more to add than cap allowed.  It is ignored when the chunk
 *   is empty, so a hook cannot make the proxy call it for nothing.
 *
 * - on_close is called exactly once for every bridge that on_accept
 *   admitted (or every accepted client when on_accept is NULL), whatever
 *   ended it: EOF, reset, failed connect, timeout, a hook, out of memory,
 *   shutdown or tcpproxy_free().  It is the place to free bridge_data.
 *   When it runs, both descriptors are still open; they are closed right
 *   after it returns.
 */
struct tcpproxy_hooks {
	void *user;
	enum tcpproxy_verdict (*on_accept)(void *user,
	    const struct tcpproxy_bridge_info *info, void **bridge_data);
	enum tcpproxy_verdict (*on_data)(void *user, void *bridge_data,
	    const struct tcpproxy_bridge_info *info, enum tcpproxy_dir dir,
	    char *data, size_t *len, size_t cap);
	void (*on_close)(void *user, void *bridge_data,
	    const struct tcpproxy_bridge_info *info);
	/* Called for every client refused, by an access list, a limit or
	 * on_accept, with the reason word of the log ("denied",
	 * "not-allowed", "max-per-source", "hook"...); its connection is
	 * closed right after. */
	void (*on_refuse)(void *user, const struct tcpproxy_bridge_info *info,
	    const char *reason);
};

/* How a service picks a backend for a new client (--balance). */
enum tcpproxy_balance {
	TCPPROXY_BALANCE_ROUNDROBIN = 0,	/* each in turn */
	TCPPROXY_BALANCE_LEASTCONN,	/* the one with fewest open bridges */
	TCPPROXY_BALANCE_SOURCE,	/* a hash of the client's address */
	TCPPROXY_BALANCE_FIRST		/* in the order given: failover */
};

/*
 * One server of a service, as written: a name or literal, and a port; or
 * a Unix socket's path in host with port NULL or "".
 */
struct tcpproxy_backend {
	const char *host;
	const char *port;		/* digits, or a service name; NULL
					 * or "": host is a socket path */
};

/* A route by TLS server name (--sni PATTERN=BACKEND). */
struct tcpproxy_route {
	const char *pattern;		/* "name.example" or "*.example" */
	struct tcpproxy_backend backend;
};

/* The PROXY protocol header a service sends to its backends. */
enum tcpproxy_send_proxy {
	TCPPROXY_PROXY_NONE = 0,
	TCPPROXY_PROXY_V1 = 1,		/* the text form */
	TCPPROXY_PROXY_V2 = 2		/* the binary form */
};

/*
 * One forwarding rule: where it listens, where it relays to, and every
 * setting a bridge of it reads.  tcpproxy_service_init() fills the
 * defaults.  Strings and arrays are copied by tcpproxy_create() and
 * tcpproxy_reload().
 */
struct tcpproxy_service {
	const char *name;		/* NULL: "LOCAL_HOST:LOCAL_PORT" */
	const char *local_host;		/* NULL, "" or "*": every address */
	const char *local_port;		/* "0" picks a free port; NULL or
					 * "": a Unix socket at local_host */
	unsigned int socket_mode;	/* a Unix listener's mode; 0: umask */
	const struct tcpproxy_backend *backends;
	size_t nbackends;		/* at least 1 */
	const char *source;		/* bind connections to it; NULL: any */
	enum tcpproxy_balance balance;
	unsigned long max_clients;	/* bridges at once; 0: no limit */
	unsigned long max_per_source;	/* bridges per client address; 0 */
	double connect_timeout;		/* seconds per address; 0: none */
	double idle_timeout;		/* seconds; 0: none */
	size_t buffer_size;		/* bytes per direction per bridge */
	int half_close;			/* pass an EOF on as shutdown(SHUT_WR) */
	/* Upstream bytes a bridge may carry; once that many are read from
	 * the client, the bridge ends like on EOF.  0: no limit. */
	unsigned long long max_bytes;
	/* Bytes per second each direction of a bridge may read (a token
	 * bucket of 1/20 s; reads wait, nothing is dropped).  0: no limit. */
	unsigned long long rate;
	/* Passive health: this many failed connects in a row mark a backend
	 * down for down_time seconds; then one client probes it. */
	unsigned long fails;
	double down_time;
	/* Active health: a TCP connect to each backend every this many
	 * seconds (with jitter); 0: none. */
	double health_check;
	/* Access lists: CIDR blocks ("10.0.0.0/8", "::1") or rinetd's
	 * patterns ("192.168.1.*", "10.?.0.1"); deny wins, and a non-empty
	 * allow list admits only what it matches. */
	const char *const *allow;
	size_t nallow;
	const char *const *deny;
	size_t ndeny;
	/* PROXY protocol: send a header to each backend; expect one from
	 * each client, only from these sources (CIDR blocks or patterns;
	 * none: anyone), within proxy_timeout seconds. */
	enum tcpproxy_send_proxy send_proxy;
	int accept_proxy;
	const char *const *proxy_from;
	size_t nproxy_from;
	double proxy_timeout;		/* also bounds the wait for SNI */
	/* Routes by the TLS server name of the client's ClientHello, tried
	 * in order; no match, no name or no TLS: the backends above. */
	const struct tcpproxy_route *routes;
	size_t nroutes;
	/* SO_KEEPALIVE on both sides, probes after keepalive_idle seconds
	 * idle (where the platform lets it be set). */
	int keepalive;
	double keepalive_idle;
	/* Faults to inject (--fault specs: "delay=100ms,dir=down", ...). */
	const char *const *faults;
	size_t nfaults;
	const char *where;		/* "FILE:LINE" for messages, or NULL */
	/* Seconds a client held by max_clients may wait for its turn before
	 * it is closed (reason queue-timeout); 0: no limit (it waits in the
	 * listen queue).  Less than 0, as tcpproxy_service_init() sets it:
	 * the connect timeout, as haproxy's timeout queue defaults to. */
	double queue_timeout;
};

/*
 * What the grammar reads for the program around the engine (the command
 * line acts on these; the engine ignores them but for workers: see
 * tcpproxy_after_fork()).
 */
struct tcpproxy_program {
	const char *user;		/* -u USER[:GROUP] */
	const char *pid_file;		/* --pid-file, rinetd's pidlogfile */
	const char *log_file;		/* rinetd's logfile */
	const char *dump_dir;		/* --dump-dir */
	const char *dump_file;		/* --dump-file */
	const char *config_file;	/* -f */
	unsigned long workers;		/* -w; 1 by default */
	int hexdump;			/* -x */
	int log_common;			/* rinetd's logcommon */
	int check_config;		/* --check-config */
	int help, version;		/* -h, -V */
	int log_time;			/* --log-time: RFC 3339 UTC prefix */
	int log_syslog;			/* --syslog: to syslog(), not stderr */
	const char *log_output;		/* --log-file: stderr appended there */
	const char *port_file;		/* --port-file: the ready lines */
	unsigned long ready_fd;		/* --ready-fd: the same; 0: none */
	double lifetime;		/* --lifetime: stop after; 0: never */
	int daemon;			/* -D: run in the background */
	int exit_with_parent;		/* --exit-with-parent */
};

/*
 * How to build a proxy.  Fill it with tcpproxy_config_init(), then either
 * set the four addresses of the simple case (one service, one backend)
 * and whatever else differs from the defaults, or point services at an
 * array of rules, or let tcpproxy_config_parse() fill it from words and
 * config files.  The proxy copies what it needs; the struct and its
 * strings may go away after tcpproxy_create() returns, except hooks,
 * which must outlive it.
 */
struct tcpproxy_config {
	/* The simple case: when local_port is set, these fields make one
	 * service (listed before services[]), with the fields of struct
	 * tcpproxy_service of the same names. */
	const char *local_host;
	const char *local_port;
	const char *remote_host;
	const char *remote_port;
	unsigned long max_clients;
	double connect_timeout;
	double idle_timeout;
	size_t buffer_size;
	int half_close;
	unsigned long long max_bytes;
	unsigned long long rate;
	/* More services. */
	const struct tcpproxy_service *services;
	size_t nservices;
	/* For the whole engine. */
	double grace;			/* seconds bridges may finish after stop */
	/* After a round with I/O, keep polling without waiting for this many
	 * microseconds (at most 1,000,000) before poll() may sleep: a round
	 * trip no longer waits for the process to be woken, for a core kept
	 * busy while traffic flows.  Only while at most 8 bridges are polled
	 * each round.  0: sleep at once (no CPU when idle). */
	unsigned long busy_poll;
	/* Where the platform has splice() (Linux), a bulk flow that no hook,
	 * dump, fault, --rate or --max-bytes needs to see goes through a
	 * kernel pipe instead of being copied, at most max_pipes pipes at
	 * once (tcpproxy_config_init: 64).  Only while SIGPIPE is ignored or
	 * handled: splice() cannot be told not to raise it.  no_splice:
	 * copy everything. */
	int no_splice;
	unsigned long max_pipes;
	int verbosity;			/* highest tcpproxy_log_level logged */
	/* Where log lines go; NULL writes "tcpproxy: LINE\n" to stderr. */
	void (*log)(void *log_user, int level, const char *line);
	void *log_user;
	const struct tcpproxy_hooks *hooks;	/* NULL: none */
	/* Every random choice of the faults comes from a generator of the
	 * proxy's own seeded with seed (seed_set), or at random (logged). */
	unsigned long long seed;
	int seed_set;
	/* A Unix socket (mode 0600) that takes commands (see README); NULL:
	 * none.  on_reload, if set, is how its "reload" reaches the program
	 * (0 or -1 with a message in err). */
	const char *control;
	int (*on_reload)(void *user, char *err, size_t errlen);
	void *reload_user;
	struct tcpproxy_program program;
	void *owned;			/* what tcpproxy_config_parse() made */
};

struct tcpproxy;

/* Fills *cfg with the defaults: 10 s connect timeout, 5 s grace, ... */
void tcpproxy_config_init(struct tcpproxy_config *cfg);

/* Fills *svc with the defaults of a service (those of the config). */
void tcpproxy_service_init(struct tcpproxy_service *svc);

/*
 * The grammar of the command line and of config files, one and the same.
 * tcpproxy_config_parse() reads words as typed after "tcpproxy" (argv
 * without argv[0]): options, then an optional rule LOCAL REMOTE... where
 * an endpoint is HOST PORT, HOST:PORT or [V6]:PORT.  A rule becomes one
 * more service; options before it, with no rule, are defaults for the
 * services of a config file (-f), which it then reads with
 * tcpproxy_config_file().  Neither resolves a name nor binds anything.
 * Each returns 0, or -1 with a one-line message naming the word at fault
 * (and "FILE:LINE: " for a file) in err.  The config points into argv,
 * which must outlive it.  tcpproxy_config_free() releases what they
 * made; cfg is then as after tcpproxy_config_init().
 */
int tcpproxy_config_parse(struct tcpproxy_config *cfg, int argc,
    char *const argv[], char *err, size_t errlen);
int tcpproxy_config_file(struct tcpproxy_config *cfg, const char *path,
    char *err, size_t errlen);
/* The same as tcpproxy_config_file() for text already in memory. */
int tcpproxy_config_text(struct tcpproxy_config *cfg, const char *name,
    const char *text, size_t len, char *err, size_t errlen);
void tcpproxy_config_free(struct tcpproxy_config *cfg);

/*
 * Checks a configuration completely without binding anything: every
 * setting, every name resolved, duplicate listen addresses.  Calls
 * report once per problem with a line "WHERE: what" (WHERE is "FILE:LINE"
 * or the service's name).  Returns the number of problems.
 */
unsigned long tcpproxy_config_check(const struct tcpproxy_config *cfg,
    void (*report)(void *user, const char *line), void *user);

/*
 * Resolves both addresses, binds and listens, and logs the ready line(s)
 * "listening on ADDR:PORT".  Returns the proxy, or NULL with errno set and
 * a one-line reason in err[0..errlen) (err may be NULL).
 */
struct tcpproxy *tcpproxy_create(const struct tcpproxy_config *cfg,
    char *err, size_t errlen);

/*
 * Runs the poll loop until the proxy is stopped and its bridges are done.
 * Returns 0, or -1 with errno set if poll() itself fails.
 */
int tcpproxy_run(struct tcpproxy *p);

/*
 * Runs one round of the poll loop, waiting at most timeout_ms (-1: until
 * something happens, or a timer or the proxy's own bookkeeping, such as
 * polling idle bridges or the end of a busy-poll spell, wants a round).
 * Returns 1 while the proxy runs, 0 once it has stopped and every bridge
 * is closed, -1 with errno set on failure.
 */
int tcpproxy_step(struct tcpproxy *p, int timeout_ms);

/*
 * Asks the proxy to stop: close its listeners, give open bridges the
 * grace period, then close the rest.  A second call ends the grace period
 * at once.  Safe to call from a signal handler or another thread.
 */
void tcpproxy_stop(struct tcpproxy *p);

/*
 * Like tcpproxy_stop(), but with no time limit: the listeners close and
 * open bridges may take as long as they need.  tcpproxy_stop() afterwards
 * starts the grace period.  Safe from a signal handler.
 */
void tcpproxy_drain(struct tcpproxy *p);

/* Makes a tcpproxy_step() waiting in poll() return soon; signal-safe. */
void tcpproxy_wake(struct tcpproxy *p);

/*
 * Switches a running proxy to a new configuration: re-resolves every
 * name, binds the new listeners and keeps those whose address is
 * unchanged (the same descriptor: no client is refused meanwhile), closes
 * the removed ones.  Open bridges keep the settings they were accepted
 * under; backend health and counters carry over where the service and
 * backend names are unchanged.  Returns 0 if it switched, or -1 with
 * errno set and the reason in err, with the running configuration left
 * exactly as it was.  Not from a signal handler or a hook.
 */
int tcpproxy_reload(struct tcpproxy *p, const struct tcpproxy_config *cfg,
    char *err, size_t errlen);

/* Counters of a service (backend NULL) or of one of its backends. */
struct tcpproxy_stats {
	const char *service;		/* its name */
	const char *backend;		/* "HOST:PORT" as written, or NULL */
	unsigned long open;		/* bridges open now */
	unsigned long long total;	/* bridges since start */
	unsigned long long refused;	/* clients refused (service) */
	unsigned long long failed;	/* failed connects */
	unsigned long long bytes[2];	/* delivered, per tcpproxy_dir */
	int down;			/* backend marked down */
	double down_for;		/* seconds it has been down */
	unsigned long long spliced;	/* of the bytes, through pipes (service) */
};

/*
 * Fills out[0..n) with the counters of every service, each followed by
 * its backends, and returns how many entries there are (more than n if
 * out was too short).  Counters run since start, across reloads.
 */
size_t tcpproxy_stats(const struct tcpproxy *p, struct tcpproxy_stats *out,
    size_t n);

/* Logs the same as "stats" lines, one per service and per backend. */
void tcpproxy_log_stats(struct tcpproxy *p);

/*
 * Prepares a proxy inherited across fork() to run in the child: gives it
 * a stop pipe of its own, and (worker > 0) tags its bridge log lines
 * "worker=N".  Several processes may then run copies of one proxy on the
 * shared listeners.  Where the kernel balances clients over sockets bound
 * to one port (SO_REUSEPORT on Linux), a proxy created with
 * program.workers = N > 1 binds N sockets for each TCP address, and
 * worker (from 1 to N) keeps the one that is its own and closes the
 * others.  Every worker from 1 to N must then run, and the parent keep
 * its copy of the proxy: the clients the kernel queues on a socket wait
 * for its worker (or one started in its place), and closing the last
 * copy of a socket resets them.  Call it in the child before
 * tcpproxy_run().  Returns 0, or -1 with errno set.
 */
int tcpproxy_after_fork(struct tcpproxy *p, int worker);

/* Returns the port the proxy's first listener has (after port "0"). */
int tcpproxy_bound_port(const struct tcpproxy *p);

/*
 * Returns the address listener i (from 0) is bound to, as its "listening
 * on" line names it: "127.0.0.1:8080", "[::1]:8080", or a Unix socket's
 * path; NULL past the last one.  Valid until the next reload or
 * tcpproxy_free().
 */
const char *tcpproxy_listener_name(const struct tcpproxy *p, size_t i);

/* Returns the number of open bridges. */
unsigned long tcpproxy_bridges(const struct tcpproxy *p);

/* Closes every bridge (calling on_close) and listener, and frees p. */
void tcpproxy_free(struct tcpproxy *p);

/* Returns the log word for a reason, e.g. "client-closed". */
const char *tcpproxy_reason_name(enum tcpproxy_reason reason);

#ifdef __cplusplus
}
#endif

#endif /* TCPPROXY_H */
