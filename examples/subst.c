/*
 * subst.c - a tcpproxy that rewrites FROM to TO in what the server sends.
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * Only the downstream stream (server to client) is rewritten; what the
 * client sends passes untouched.  A match may be split across two reads,
 * so a chunk that ends with a proper prefix of FROM keeps that prefix back
 * and puts it in front of the next chunk; the last call of the stream
 * (info->final) lets it go.  When TO is longer than FROM a chunk may
 * outgrow the room the hook is given (cap): the excess is kept, and
 * TCPPROXY_MORE asks the proxy to call again once the stream has drained,
 * so nothing waits for the server's next chunk and nothing is lost.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tcpproxy.h"

#define CARRY_MAX	(1024 * 1024)

/* Bytes of one bridge waiting for the next downstream chunk. */
struct carry {
	char *out;		/* rewritten, did not fit in the last chunk */
	size_t nout;
	char *held;		/* a proper prefix of FROM, not yet matched */
	size_t nheld;
};

/* A growable byte string. */
struct bytes {
	char *p;
	size_t len, size;
};

static const char *from, *to;
static size_t nfrom, nto;

/* Appends n bytes to b; returns 0, or -1 if out of memory. */
static int
bytes_add(struct bytes *b, const char *s, size_t n)
{
	char *grown;
	size_t size = b->size ? b->size : 256;

	if (n == 0)
		return 0;
	while (size - b->len < n)
		size *= 2;
	if (size != b->size) {
		if ((grown = realloc(b->p, size)) == NULL)
			return -1;
		b->p = grown;
		b->size = size;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	return 0;
}

/* Returns the length of the longest proper prefix of FROM ending s[0..n). */
static size_t
tail_prefix(const char *s, size_t n)
{
	size_t k = nfrom - 1 < n ? nfrom - 1 : n;

	for (; k > 0; k--)
		if (memcmp(s + n - k, from, k) == 0)
			break;
	return k;
}

static enum tcpproxy_verdict
on_accept(void *user, const struct tcpproxy_bridge_info *info, void **data)
{
	(void)user;
	(void)info;
	/* Refusing a client we cannot serve correctly beats losing bytes. */
	if ((*data = calloc(1, sizeof(struct carry))) == NULL)
		return TCPPROXY_CLOSE;
	return TCPPROXY_PASS;
}

/*
 * Rewrites one downstream chunk: the carried bytes, then the chunk with
 * every FROM replaced, minus a trailing prefix of FROM kept for later
 * unless this is the stream's last call.
 */
static enum tcpproxy_verdict
on_data(void *user, void *bridge_data, const struct tcpproxy_bridge_info *info,
    enum tcpproxy_dir dir, char *data, size_t *len, size_t cap)
{
	struct carry *c = bridge_data;
	struct bytes in = { NULL, 0, 0 }, out = { NULL, 0, 0 };
	size_t i, keep, start = 0;
	int bad;

	(void)user;
	if (dir != TCPPROXY_DOWNSTREAM)
		return TCPPROXY_PASS;
	bad = bytes_add(&out, c->out, c->nout) == -1 ||
	    bytes_add(&in, c->held, c->nheld) == -1 ||
	    bytes_add(&in, data, *len) == -1;
	for (i = 0; !bad && i + nfrom <= in.len; ) {
		if (memcmp(in.p + i, from, nfrom) == 0) {
			bad = bytes_add(&out, in.p + start, i - start) == -1 ||
			    bytes_add(&out, to, nto) == -1;
			i += nfrom;
			start = i;
		} else {
			i++;
		}
	}
	/* Only bytes past the last match may start a match yet to come. */
	keep = bad || info->final || in.len == 0 ? 0 :
	    tail_prefix(in.p + start, in.len - start);
	if (!bad && start < in.len - keep)
		bad = bytes_add(&out, in.p + start, in.len - keep - start) == -1;
	free(c->out);
	free(c->held);
	memset(c, 0, sizeof(*c));
	if (!bad && keep > 0) {
		bad = (c->held = malloc(keep)) == NULL;
		if (!bad)
			memcpy(c->held, in.p + in.len - keep, c->nheld = keep);
	}
	*len = out.len < cap ? out.len : cap;
	if (!bad && out.len > cap) {
		c->nout = out.len - cap;
		bad = c->nout > CARRY_MAX || (c->out = malloc(c->nout)) == NULL;
		if (!bad)
			memcpy(c->out, out.p + cap, c->nout);
	}
	if (!bad && *len > 0)
		memcpy(data, out.p, *len);
	free(in.p);
	free(out.p);
	if (bad) {
		fprintf(stderr, "subst: id=%lu: out of room, closing\n",
		    info->id);
		return TCPPROXY_CLOSE;
	}
	/* What did not fit goes out as soon as the stream has drained. */
	return c->nout > 0 ? TCPPROXY_MORE : TCPPROXY_PASS;
}

static void
on_close(void *user, void *bridge_data, const struct tcpproxy_bridge_info *info)
{
	struct carry *c = bridge_data;

	(void)user;
	if (c->nout + c->nheld > 0)
		fprintf(stderr, "subst: id=%lu: %lu bytes held at the end "
		    "were not delivered\n", info->id,
		    (unsigned long)(c->nout + c->nheld));
	free(c->out);
	free(c->held);
	free(c);
}

int
main(int argc, char *argv[])
{
	struct tcpproxy_hooks hooks = { NULL, on_accept, on_data, on_close, NULL };
	struct tcpproxy_config cfg;
	struct tcpproxy *p;
	char err[256];

	if (argc != 7 || argv[1][0] == '\0') {
		fprintf(stderr, "usage: subst FROM TO local_host local_port "
		    "remote_host remote_port\n");
		return 2;
	}
	from = argv[1];
	nfrom = strlen(from);
	to = argv[2];
	nto = strlen(to);
	/* Where send() has no MSG_NOSIGNAL, a closed peer must not kill us. */
	signal(SIGPIPE, SIG_IGN);
	tcpproxy_config_init(&cfg);
	cfg.local_host = argv[3];
	cfg.local_port = argv[4];
	cfg.remote_host = argv[5];
	cfg.remote_port = argv[6];
	cfg.hooks = &hooks;
	if ((p = tcpproxy_create(&cfg, err, sizeof(err))) == NULL) {
		fprintf(stderr, "subst: %s\n", err);
		return 1;
	}
	if (tcpproxy_run(p) == -1)
		perror("subst: poll");
	tcpproxy_free(p);
	return 0;
}
