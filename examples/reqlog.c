/*
 * reqlog.c - a tcpproxy that logs every HTTP/1.1 request line it relays.
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * For each request a client sends, one line goes to stdout:
 * "id=3 GET /path HTTP/1.1", id being the bridge's.  Requests may follow
 * one another on a connection (keep-alive, pipelining); the headers are
 * skipped, and so is a body announced by Content-Length.  A line may be
 * split across reads, so each bridge keeps a line buffer of LINE_MAX
 * bytes; a longer line is logged cut short, marked " [truncated]".  Bytes
 * outside printable ASCII are logged as '.', so that a client cannot
 * forge log lines.  Chunked request bodies are not parsed: after one, the
 * log is not to be trusted for that connection.  The data itself is
 * never changed.
 */
#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "tcpproxy.h"

#define LINE_MAX_	1024

enum state { REQUEST_LINE, HEADERS, BODY };

/* What one bridge's parser knows. */
struct req {
	enum state state;
	unsigned long long body;	/* body bytes still to skip */
	size_t n;			/* bytes in line */
	int truncated;
	char line[LINE_MAX_ + 1];
};

/* Acts on one complete line, without its "\r\n". */
static void
line_done(struct req *r, unsigned long id)
{
	static const char cl[] = "content-length:";
	size_t i;

	if (r->n > 0 && r->line[r->n - 1] == '\r' && !r->truncated)
		r->n--;
	r->line[r->n] = '\0';
	if (r->state == REQUEST_LINE) {
		/* Blank lines before a request are allowed (RFC 9112 2.2). */
		if (r->n == 0)
			return;
		for (i = 0; i < r->n; i++)
			if (!isprint((unsigned char)r->line[i]))
				r->line[i] = '.';
		printf("id=%lu %s%s\n", id, r->line,
		    r->truncated ? " [truncated]" : "");
		fflush(stdout);
		r->state = HEADERS;
		r->body = 0;
	} else if (r->n == 0) {
		r->state = r->body > 0 ? BODY : REQUEST_LINE;
	} else if (!r->truncated && strncasecmp(r->line, cl,
	    sizeof(cl) - 1) == 0) {
		r->body = strtoull(r->line + sizeof(cl) - 1, NULL, 10);
	}
	r->n = 0;
	r->truncated = 0;
}

static enum tcpproxy_verdict
on_accept(void *user, const struct tcpproxy_bridge_info *info, void **data)
{
	(void)user;
	(void)info;
	/* Without a parser the log would miss requests: refuse instead. */
	if ((*data = calloc(1, sizeof(struct req))) == NULL)
		return TCPPROXY_CLOSE;
	return TCPPROXY_PASS;
}

/* Feeds the client's bytes to the parser; passes them on unchanged. */
static enum tcpproxy_verdict
on_data(void *user, void *bridge_data, const struct tcpproxy_bridge_info *info,
    enum tcpproxy_dir dir, char *data, size_t *len, size_t cap)
{
	struct req *r = bridge_data;
	size_t i = 0;

	(void)user;
	(void)cap;
	if (dir != TCPPROXY_UPSTREAM)
		return TCPPROXY_PASS;
	while (i < *len) {
		if (r->state == BODY) {
			size_t skip = *len - i;

			if (skip > r->body)
				skip = (size_t)r->body;
			i += skip;
			if ((r->body -= skip) == 0)
				r->state = REQUEST_LINE;
			continue;
		}
		if (data[i] == '\n')
			line_done(r, info->id);
		else if (r->n < LINE_MAX_)
			r->line[r->n++] = data[i];
		else
			r->truncated = 1;
		i++;
	}
	return TCPPROXY_PASS;
}

static void
on_close(void *user, void *bridge_data, const struct tcpproxy_bridge_info *info)
{
	(void)user;
	(void)info;
	free(bridge_data);
}

int
main(int argc, char *argv[])
{
	struct tcpproxy_hooks hooks = { NULL, on_accept, on_data, on_close, NULL };
	struct tcpproxy_config cfg;
	struct tcpproxy *p;
	char err[256];

	if (argc != 5) {
		fprintf(stderr, "usage: reqlog local_host local_port "
		    "remote_host remote_port\n");
		return 2;
	}
	/* Where send() has no MSG_NOSIGNAL, a closed peer must not kill us. */
	signal(SIGPIPE, SIG_IGN);
	tcpproxy_config_init(&cfg);
	cfg.local_host = argv[1];
	cfg.local_port = argv[2];
	cfg.remote_host = argv[3];
	cfg.remote_port = argv[4];
	cfg.hooks = &hooks;
	if ((p = tcpproxy_create(&cfg, err, sizeof(err))) == NULL) {
		fprintf(stderr, "reqlog: %s\n", err);
		return 1;
	}
	if (tcpproxy_run(p) == -1)
		perror("reqlog: poll");
	tcpproxy_free(p);
	return 0;
}
