/*
 * fuzz_args.c - libFuzzer harness for tcpproxy's command-line parsers.
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * It includes tcpproxy.c with TCPPROXY_FUZZ, which keeps the command line
 * section but drops main(), so the static parsers are in reach.
 *
 * Input: byte 0 selects extras, the rest is split at NUL or newline bytes
 * into argv[1..] (argv[0] is "tcpproxy", at most MAXARGS words).  Each run
 *   - calls options_parse() and checks what it returns and fills in;
 *   - calls parse_port, parse_secs, parse_size and cidr_parse on every
 *     word and checks their results against simple reference rules;
 *   - on a successful parse, feeds a few client addresses made from the
 *     input through the CLI's on_accept/on_close hooks (access lists and
 *     --max-per-source) and checks the verdicts and that the per-source
 *     table is empty afterwards;
 *   - with bit 7 of byte 0, runs hexdump() over the input at a stream
 *     offset taken from it (the --hexdump output path).
 * Every check failure calls abort(), which libFuzzer reports as a crash.
 */
#define TCPPROXY_FUZZ
#include "tcpproxy.c"

#include <stdint.h>

#define MAXARGS 48

#define CHECK(x) do { if (!(x)) { \
	fprintf(stderr, "fuzz_args: check failed at line %d: %s\n", \
	    __LINE__, #x); abort(); } } while (0)

static FILE *devnull;

/* A bit-by-bit reference for cidr_match. */
static int
ref_match(const struct cidr *c, const unsigned char key[17])
{
	unsigned int i;

	if (key[0] != c->key[0])
		return 0;
	for (i = 0; i < c->bits; i++) {
		unsigned int byte = 1 + i / 8, bit = 0x80u >> (i % 8);

		if ((key[byte] & bit) != (c->key[byte] & bit))
			return 0;
	}
	return 1;
}

/* Checks the single-word parsers on s; sel varies the size limit. */
static void
check_parsers(const char *s, unsigned char sel, const unsigned char *raw,
    size_t rawlen)
{
	static const unsigned long long maxes[] = {
		1024, 1000000000ULL, 1024ULL * 1024 * 1024, ULLONG_MAX / 2,
		9, 10, 1023, ULLONG_MAX
	};
	char err[ERRLEN];
	unsigned long long v = 0, max = maxes[sel % 8];
	double d = -2;
	struct cidr c;
	unsigned char key[17];
	size_t i;

	err[0] = '\0';
	if (parse_port(s, "port", err) == 0) {
		long n = strtol(s, NULL, 10);

		CHECK(n >= 0 && n <= 65535);
		CHECK(strlen(s) >= 1 && strlen(s) <= 5);
	} else {
		CHECK(memchr(err, '\0', ERRLEN) != NULL && err[0] != '\0');
	}
	err[0] = '\0';
	if (parse_secs(s, "secs", &d, err) == 0)
		CHECK(d >= 0 && d <= 1e9);
	else
		CHECK(memchr(err, '\0', ERRLEN) != NULL && err[0] != '\0');
	err[0] = '\0';
	if (parse_size(s, "size", max, &v, err) == 0) {
		unsigned long long n = 0;
		const char *q;

		CHECK(v >= 1 && v <= max);
		/* The digits times the suffix, recomputed. */
		for (q = s; *q >= '0' && *q <= '9'; q++)
			n = n * 10 + (unsigned)(*q - '0');
		if (*q == 'k' || *q == 'K')
			n *= 1024;
		else if (*q == 'm' || *q == 'M')
			n *= 1024 * 1024;
		else if (*q == 'g' || *q == 'G')
			n *= 1024 * 1024 * 1024;
		CHECK(n == v);
	} else {
		CHECK(memchr(err, '\0', ERRLEN) != NULL && err[0] != '\0');
	}
	if (cidr_parse(s, &c) == 0) {
		CHECK(c.key[0] == 4 || c.key[0] == 6);
		CHECK(c.bits <= (c.key[0] == 4 ? 32u : 128u));
		/* Its own network address is inside it. */
		CHECK(cidr_match(&c, c.key));
		/* Host bits are cleared. */
		for (i = c.bits; i < 128; i++)
			CHECK((c.key[1 + i / 8] & (0x80u >> (i % 8))) == 0);
		/* Any key from the input agrees with the reference. */
		memset(key, 0, sizeof(key));
		key[0] = c.key[0];
		memcpy(key + 1, c.key + 1, 16);
		for (i = 0; i < rawlen && i < 16; i++)
			key[1 + i] ^= raw[i];
		CHECK(cidr_match(&c, key) == ref_match(&c, key));
	}
}

/* Runs the CLI's accept and close hooks for addresses made from raw. */
static void
check_hooks(struct options *o, const unsigned char *raw, size_t len)
{
	struct tcpproxy_bridge_info info;
	struct sockaddr_storage ss;
	void *data[16];
	int verdict[16];
	size_t n = 0, i;

	while (len >= 5 && n < 16) {
		unsigned char key[17];

		memset(&ss, 0, sizeof(ss));
		memset(&info, 0, sizeof(info));
		if ((raw[0] & 1) == 0) {
			struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

			sin->sin_family = AF_INET;
			memcpy(&sin->sin_addr, raw + 1, 4);
			info.client_len = sizeof(*sin);
			raw += 5;
			len -= 5;
		} else {
			struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

			if (len < 17)
				break;
			sin6->sin6_family = AF_INET6;
			memcpy(&sin6->sin6_addr, raw + 1, 16);
			info.client_len = sizeof(*sin6);
			raw += 17;
			len -= 17;
		}
		info.client = (struct sockaddr *)&ss;
		info.id = n + 1;
		info.client_name = "127.0.0.1:1";
		info.server_name = "127.0.0.1:2";
		data[n] = NULL;
		verdict[n] = cli_accept(&o->cli, &info, &data[n]);
		CHECK(verdict[n] == TCPPROXY_PASS ||
		    verdict[n] == TCPPROXY_CLOSE);
		CHECK(addr_key(info.client, key) == 0);
		if (!acl_admits(&o->cli, key))
			CHECK(verdict[n] == TCPPROXY_CLOSE);
		else if (o->cli.max_per_source == 0)
			CHECK(verdict[n] == TCPPROXY_PASS);
		if (verdict[n] == TCPPROXY_PASS &&
		    o->cli.max_per_source > 0) {
			struct cli_bridge *cb = data[n];

			CHECK(cb != NULL && cb->source != NULL);
			CHECK(cb->source->count >= 1 &&
			    cb->source->count <= o->cli.max_per_source);
		}
		if (verdict[n] != TCPPROXY_PASS)
			CHECK(data[n] == NULL);
		n++;
	}
	for (i = 0; i < n; i++) {
		if (verdict[i] != TCPPROXY_PASS)
			continue;
		memset(&info, 0, sizeof(info));
		info.id = i + 1;
		info.client_name = "127.0.0.1:1";
		cli_close(&o->cli, data[i], &info);
	}
	/* Every --max-per-source record went away with its last bridge. */
	for (i = 0; i < SOURCE_BUCKETS; i++)
		CHECK(o->cli.sources[i] == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *argv[MAXARGS + 2], *copy;
	char err[ERRLEN];
	struct options o;
	unsigned char sel;
	size_t i, start;
	int argc = 1, rc;

	if (size < 1 || size > 4096)
		return 0;
	sel = data[0];
	data++;
	size--;
	if ((copy = malloc(size + 1)) == NULL)
		return 0;
	memcpy(copy, data, size);
	copy[size] = '\0';
	argv[0] = (char *)"tcpproxy";
	for (i = 0, start = 0; i <= size && argc <= MAXARGS; i++) {
		if (i == size || copy[i] == '\0' || copy[i] == '\n') {
			copy[i] = '\0';
			argv[argc++] = copy + start;
			start = i + 1;
		}
	}
	argv[argc] = NULL;

	for (i = 1; i < (size_t)argc; i++)
		check_parsers(argv[i], sel, data, size);

	/* glibc: optind = 0 reinitializes getopt, permutation state too. */
	optind = 0;
	memset(err, 0, sizeof(err));
	rc = options_parse(&o, argc, argv, err);
	CHECK(rc == -1 || rc == OPTIONS_RUN || rc == OPTIONS_HELP ||
	    rc == OPTIONS_VERSION);
	if (rc == -1) {
		CHECK(err[0] != '\0' && memchr(err, '\0', ERRLEN) != NULL);
	} else if (rc == OPTIONS_RUN) {
		const struct tcpproxy_config *cfg = &o.cfg;
		long lp, rp;

		CHECK(cfg->local_host && cfg->local_port && cfg->remote_host &&
		    cfg->remote_port);
		lp = strtol(cfg->local_port, NULL, 10);
		rp = strtol(cfg->remote_port, NULL, 10);
		CHECK(lp >= 0 && lp <= 65535 && rp >= 1 && rp <= 65535);
		CHECK(cfg->buffer_size >= 1 &&
		    cfg->buffer_size <= 1024UL * 1024 * 1024);
		CHECK(o.workers >= 1 && o.workers <= 1024);
		CHECK(cfg->connect_timeout >= 0 && cfg->connect_timeout <= 1e9);
		CHECK(cfg->idle_timeout >= 0 && cfg->idle_timeout <= 1e9);
		CHECK(cfg->grace >= 0 && cfg->grace <= 1e9);
		CHECK(cfg->max_clients <= 1000000000UL);
		CHECK(o.cli.max_per_source <= 1000000000UL);
		CHECK(cfg->busy_poll <= TCPPROXY_BUSY_POLL_MAX);
		CHECK(cfg->verbosity >= TCPPROXY_LOG_ERROR &&
		    cfg->verbosity <= TCPPROXY_LOG_DEBUG);
		check_hooks(&o, data, size);
	}
	options_free(&o);

	if ((sel & 0x80) && size >= 8) {
		struct tcpproxy_bridge_info info;
		unsigned long long off = 0;

		if (devnull == NULL && (devnull = fopen("/dev/null", "w")) ==
		    NULL)
			abort();
		for (i = 0; i < 8; i++)
			off = off << 8 | data[i];
		/* Real offsets grow by chunk sizes: keep the top bits sane. */
		if (sel & 0x40)
			off &= 0xffffffffULL;
		memset(&info, 0, sizeof(info));
		info.id = 1;
		hexdump(devnull, &info, sel & 1, off, data + 8, size - 8);
	}
	free(copy);
	return 0;
}
