/*
 * fuzz_ctl.c - libFuzzer harness for the control socket's protocol and
 * the fault grammar, both of which read bytes from outside.
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * It includes tcpproxy.c with TCPPROXY_NO_MAIN and makes one proxy, once:
 * two services on 127.0.0.1 port 0 to a listener of the harness's, and
 * no control socket (the harness plays a control client directly).  Each
 * input is split into lines that go to ctl_line() as one client would
 * send them (the text of a wait's condition included), in order, with a
 * round of the engine between inputs.  Checked, with abort():
 *   - every request (a line, or a begin..end batch) gets exactly one
 *     status line, "ok..." or "error: ...", after its data lines, and no
 *     data line looks like one; a wait that does not hold gets none yet;
 *   - a command that is refused changes nothing: the faults of every
 *     service and the down states are as before (a batch: all or none);
 *   - fault names are unique within a service; every fault's numbers are
 *     in range (probability 0..1, conn lo <= hi, a direction set);
 *   - fault_parse() on every word agrees with itself on a second parse;
 *   - after "reset", no fault is left and every service is up.
 * "stop" and "reload" are not sent (they end the harness's proxy or need
 * a program around it).
 */
#define TCPPROXY_NO_MAIN
#include "tcpproxy.c"

#include <stdint.h>

#define CHECK(x) do { if (!(x)) { \
	fprintf(stderr, "fuzz_ctl: check failed at line %d: %s\n", \
	    __LINE__, #x); abort(); } } while (0)

static struct tcpproxy *proxy;
static int server_fd = -1;

/* A log sink that drops the lines. */
static void
quiet(void *user, int level, const char *line)
{
	(void)user;
	(void)level;
	(void)line;
}

/* Makes the proxy once: two services to the harness's listener. */
static void
setup(void)
{
	static struct tcpproxy_service svc[2];
	static struct tcpproxy_backend be;
	static char port[16];
	struct tcpproxy_config cfg;
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	char err[256];
	int i;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	server_fd = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(server_fd >= 0);
	CHECK(bind(server_fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	CHECK(listen(server_fd, 16) == 0);
	CHECK(getsockname(server_fd, (struct sockaddr *)&sin, &len) == 0);
	snprintf(port, sizeof(port), "%d", ntohs(sin.sin_port));
	be.host = "127.0.0.1";
	be.port = port;
	for (i = 0; i < 2; i++) {
		tcpproxy_service_init(&svc[i]);
		svc[i].name = i == 0 ? "a" : "b";
		svc[i].local_host = "127.0.0.1";
		svc[i].local_port = "0";
		svc[i].backends = &be;
		svc[i].nbackends = 1;
	}
	tcpproxy_config_init(&cfg);
	cfg.services = svc;
	cfg.nservices = 2;
	cfg.log = quiet;
	cfg.seed_set = 1;
	proxy = tcpproxy_create(&cfg, err, sizeof(err));
	CHECK(proxy != NULL);
}

/* A snapshot of what a refused command must not change. */
struct snap {
	char text[8192];
};

/* Describes every service's faults and down state into s. */
static void
snap_take(struct snap *s)
{
	const struct service *svc;
	const struct fault *f;
	size_t n = 0;

	s->text[0] = '\0';
	for (svc = proxy->services; svc != NULL && !svc->retired;
	    svc = svc->next) {
		n += (size_t)snprintf(s->text + n, sizeof(s->text) - n,
		    "%s down=%d:", svc->name, svc->down);
		for (f = svc->faults; f != NULL && n < sizeof(s->text);
		    f = f->next) {
			const struct fault *g;

			CHECK(!f->dead);
			CHECK(f->p >= 0 && f->p <= 1);
			CHECK(f->conn_lo <= f->conn_hi && f->conn_lo >= 1);
			CHECK(f->dirs >= 1 && f->dirs <= 3);
			CHECK(f->action >= 0 && f->action < F_NACTIONS);
			for (g = f->next; g != NULL; g = g->next)
				CHECK(strcmp(f->name, g->name) != 0);
			n += (size_t)snprintf(s->text + n, sizeof(s->text) - n,
			    " %s=%s", f->name, f->spec);
		}
		if (n >= sizeof(s->text))
			n = sizeof(s->text) - 1;
	}
}

/* Counts status lines in c's reply from off on; checks data lines. */
static int
statuses(const struct ctl *c, size_t off, int *errors)
{
	int n = 0;
	size_t i = off;

	*errors = 0;
	while (i < c->outlen) {
		const char *line = c->out + i;
		const char *nl = memchr(line, '\n', c->outlen - i);

		CHECK(nl != NULL);	/* every reply line is whole */
		if (strncmp(line, "ok", 2) == 0 && (line[2] == '\n' ||
		    line[2] == ' '))
			n++;
		else if (strncmp(line, "error: ", 7) == 0) {
			n++;
			(*errors)++;
		}
		i = (size_t)(nl - c->out) + 1;
	}
	return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ctl c;
	struct snap before, after;
	char line[TCPPROXY_CTL_LINE + 1], *words[64];
	size_t i = 0, k;
	int in_batch = 0;

	if (proxy == NULL)
		setup();
	memset(&c, 0, sizeof(c));
	c.fd = -1;
	c.batch = -1;
	while (i < size) {
		size_t len = 0, off = c.outlen;
		int n, errors, got, w, lone;

		while (i < size && data[i] != '\n' && len < sizeof(line) - 1) {
			line[len++] = data[i] == '\0' ? ' ' : (char)data[i];
			i++;
		}
		i++;
		line[len] = '\0';
		/* Not these: they end the proxy or need a program. */
		if (strstr(line, "stop") != NULL ||
		    strstr(line, "reload") != NULL)
			continue;
		{
			char copy[sizeof(line)];

			snprintf(copy, sizeof(copy), "%s", line);
			w = line_split(copy, words, 64);
			for (k = 0; w > 0 && k < (size_t)w; k++) {
				struct fault f1, f2;
				char e1[160], e2[160];
				int r1 = fault_parse(words[k], &f1, e1,
				    sizeof(e1));
				int r2 = fault_parse(words[k], &f2, e2,
				    sizeof(e2));

				CHECK(r1 == r2);
				if (r1 == 0)
					CHECK(memcmp(&f1, &f2, sizeof(f1)) == 0);
			}
			lone = w == 1 && strcmp(words[0], "begin") == 0;
		}
		snap_take(&before);
		ctl_line(proxy, &c, line);
		n = statuses(&c, off, &errors);
		snap_take(&after);
		if (in_batch) {
			/* Lines of a batch wait for its end. */
			if (strcmp(line, "end") == 0) {
				CHECK(n == 1);
				in_batch = 0;
				if (errors)
					CHECK(strcmp(before.text, after.text) ==
					    0);
			} else if (n == 1 && errors == 1) {
				in_batch = 0;	/* too long: dropped */
			} else {
				CHECK(n == 0);
			}
			continue;
		}
		if (lone) {
			CHECK(n == 0);
			in_batch = 1;
			continue;
		}
		got = c.wait[0] != '\0';
		if (w <= 0 && n == 0)
			continue;	/* an empty line */
		CHECK(got ? n == 0 : n == 1);
		if (errors)
			CHECK(strcmp(before.text, after.text) == 0);
		if (got) {
			/* The harness does not wait: it gives up at once. */
			c.wait_until = 0;
			proxy->ctls[0] = c;
			proxy->ctls[0].fd = 0;
			ctl_waits(proxy);
			c = proxy->ctls[0];
			proxy->ctls[0].fd = -1;
			proxy->ctls[0].out = NULL;
			c.fd = -1;
			CHECK(c.wait[0] == '\0');
		}
	}
	/* Back to a clean state for the next input. */
	{
		char reset[] = "reset", seed[] = "seed 1";
		size_t off = c.outlen;
		int errors;

		c.batch = -1;
		ctl_line(proxy, &c, reset);
		ctl_line(proxy, &c, seed);
		CHECK(statuses(&c, off, &errors) == 2 && errors == 0);
	}
	snap_take(&after);
	CHECK(strcmp(after.text, "a down=0:b down=0:") == 0);
	(void)tcpproxy_step(proxy, 0);
	free(c.out);
	return 0;
}
