/*
 * fuzz_args.c - libFuzzer harness for tcpproxy's grammar: the command
 * line and config files, which are one and the same.
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * It includes tcpproxy.c with TCPPROXY_FUZZ, which keeps the command line
 * section but drops main(), so the static parsers are in reach.  fopen()
 * is renamed for tcpproxy.c: "-f PATH" reads the input's config text
 * from memory (a PATH starting with '!' is a file that does not exist),
 * so no input touches the file system.
 *
 * Input: byte 0 selects extras.  The rest is split at the first 0x01
 * byte: before it, words split at NUL or newline bytes (at most MAXARGS;
 * an empty last word is dropped) are the argv after "tcpproxy"; after it,
 * the text of a config file (NUL bytes and all).  Each run
 *   - calls tcpproxy_config_parse() on the words, tcpproxy_config_text()
 *     on the text ("fuzz.conf"), each into a fresh config, and both into
 *     one config; on success checks what they filled in (every service
 *     has a local host and port and at least one backend, every port is
 *     port_known(), every allow/deny entry acl_parse()s, every number is
 *     in its option's range, "where" names the file and line); on failure
 *     that err is one non-empty line, for a text "fuzz.conf:LINE: ..."
 *     with LINE inside the text; the combined config agrees with the two
 *     separate ones; tcpproxy_config_free() always (LeakSanitizer checks);
 *   - calls port_ok, parse_secs, parse_size and acl_parse on every word
 *     and checks them against simple reference rules; acl_match against a
 *     bit-by-bit reference for CIDR blocks, and glob_match on pairs of
 *     words against a recursive (memoized) reference;
 *   - runs acl_check() of every parsed service over a few client
 *     addresses made from the input (IPv4, IPv6, IPv4-mapped), named the
 *     way the engine names them, against the same references;
 *   - with bit 7 of byte 0, runs hexdump() over the input at a stream
 *     offset taken from it (the --hexdump output path).
 * FUZZ_ARGS_DEBUG=1 in the environment prints each parse's outcome.
 * Nothing resolves a name (tcpproxy_config_check() is not called);
 * getservbyname() reads /etc/services.  Every check failure calls
 * abort(), which libFuzzer reports as a crash.
 */
#define TCPPROXY_FUZZ
#define fopen fuzz_fopen
#include "tcpproxy.c"
#undef fopen

#include <stdint.h>

FILE *fopen(const char *, const char *);

#define MAXARGS 48
#define MAXGLOB 128		/* longest strings the glob reference takes */
#define CONF_NAME "fuzz.conf"

#define CHECK(x) do { if (!(x)) { \
	fprintf(stderr, "fuzz_args: check failed at line %d: %s\n", \
	    __LINE__, #x); abort(); } } while (0)

static FILE *devnull;
static int debug = -1;		/* FUZZ_ARGS_DEBUG=1: say what parsed */

/* The config text of the current input, for fuzz_fopen(). */
static const char *fuzz_text;
static size_t fuzz_textlen;

/* tcpproxy.c's fopen(): the config text, whatever the path. */
FILE *fuzz_fopen(const char *, const char *);

FILE *
fuzz_fopen(const char *path, const char *mode)
{
	if (strcmp(mode, "r") != 0 || fuzz_text == NULL) {
		errno = EACCES;
		return NULL;
	}
	if (path[0] == '!') {
		errno = ENOENT;
		return NULL;
	}
	if (fuzz_textlen == 0)
		return fopen("/dev/null", "r");
	return fmemopen((void *)(uintptr_t)fuzz_text, fuzz_textlen, "r");
}

/* ---- references ---- */

/* A bit-by-bit reference for acl_match on a CIDR block. */
static int
ref_match(const struct acl *a, const unsigned char key[KEY_LEN])
{
	unsigned int i;

	if (key[0] != a->key[0])
		return 0;
	for (i = 0; i < a->bits; i++) {
		unsigned int byte = 1 + i / 8, bit = 0x80u >> (i % 8);

		if ((key[byte] & bit) != (a->key[byte] & bit))
			return 0;
	}
	return 1;
}

/* The glob reference: the textbook recursion, memoized. */
static const char *gp, *gt;
static size_t gpl, gtl;
static unsigned char gmemo[(MAXGLOB + 1) * (MAXGLOB + 1)];

static int
ref_glob_at(size_t i, size_t j)
{
	unsigned char *m = &gmemo[i * (gtl + 1) + j];
	int r;

	if (*m != 0)
		return *m - 1;
	if (i == gpl)
		r = j == gtl;
	else if (gp[i] == '*')
		r = ref_glob_at(i + 1, j) || (j < gtl && ref_glob_at(i, j + 1));
	else
		r = j < gtl && (gp[i] == '?' || gp[i] == gt[j]) &&
		    ref_glob_at(i + 1, j + 1);
	*m = (unsigned char)(r + 1);
	return r;
}

/* Returns 0 or 1, or -1 if the strings are too long for the reference. */
static int
ref_glob(const char *pat, const char *text)
{
	gpl = strlen(pat);
	gtl = strlen(text);
	if (gpl > MAXGLOB || gtl > MAXGLOB)
		return -1;
	gp = pat;
	gt = text;
	memset(gmemo, 0, (gpl + 1) * (gtl + 1));
	return ref_glob_at(0, 0);
}

/* Whether acl_parse should take s: rinetd's pattern, or an address with
 * an optional /BITS of 1-3 digits up to the family's width. */
static int
ref_acl_ok(const char *s)
{
	char buf[256];
	unsigned char tmp[16];
	const char *slash;
	unsigned long bits, max;
	size_t n;

	if (strpbrk(s, "*?") != NULL)
		return s[strspn(s, "0123456789abcdefABCDEF.:*?")] == '\0' &&
		    strlen(s) <= INET6_ADDRSTRLEN;
	slash = strchr(s, '/');
	n = slash != NULL ? (size_t)(slash - s) : strlen(s);
	if (n >= sizeof(buf))
		return 0;
	memcpy(buf, s, n);
	buf[n] = '\0';
	if (inet_pton(AF_INET, buf, tmp) == 1)
		max = 32;
	else if (inet_pton(AF_INET6, buf, tmp) == 1)
		max = 128;
	else
		return 0;
	if (slash == NULL)
		return 1;
	slash++;
	n = strspn(slash, "0123456789");
	if (n < 1 || n > 3 || slash[n] != '\0')
		return 0;
	bits = strtoul(slash, NULL, 10);
	return bits <= max;
}

/* The reference verdict of one entry for key, shown as text. */
static int
ref_entry(const struct acl *a, const unsigned char key[KEY_LEN],
    const char *text)
{
	if (a->glob != NULL) {
		int r = ref_glob(a->glob, text);

		CHECK(r != -1);	/* patterns and addresses are short */
		return r;
	}
	return ref_match(a, key);
}

/* ---- the single-word parsers ---- */

/* Checks the single-word parsers on s; sel varies the size limit. */
static void
check_word(const char *s, unsigned char sel, const unsigned char *raw,
    size_t rawlen)
{
	static const unsigned long long maxes[] = {
		1024, 1000000000ULL, 1024ULL * 1024 * 1024, ULLONG_MAX / 2,
		9, 10, 1023, ULLONG_MAX
	};
	char err[ERRLEN];
	struct parse ps;
	unsigned long long v = 0, max = maxes[sel % 8];
	double d = -2;
	struct acl a;
	unsigned char key[KEY_LEN];
	size_t i, len = strlen(s);
	int suffix, z, rc;

	memset(&ps, 0, sizeof(ps));
	ps.err = err;
	ps.errlen = sizeof(err);

	/* port_ok: digits 0..65535 (1.. without zero_ok), or a name of
	 * letters, digits and '-' that starts with a letter, at most 32
	 * long; digits and '-' alone are neither. */
	for (z = 0; z <= 1; z++) {
		size_t digits = strspn(s, "0123456789");
		int ref;

		if (len == 0 || len > 32)
			ref = 0;
		else if (digits == len)
			ref = len <= 5 && strtol(s, NULL, 10) <= 65535 &&
			    (z || strtol(s, NULL, 10) > 0);
		else
			ref = s[strspn(s, "0123456789abcdefghijklmnopqrstuvwxyz"
			    "ABCDEFGHIJKLMNOPQRSTUVWXYZ-")] == '\0' &&
			    ((s[0] >= 'a' && s[0] <= 'z') ||
			    (s[0] >= 'A' && s[0] <= 'Z'));
		CHECK(port_ok(s, z) == ref);
	}

	memset(err, 0, sizeof(err));
	if (parse_secs(&ps, s, "secs", &d) == 0) {
		CHECK(d >= 0 && d <= 1e9);
		CHECK(s[0] == '.' || (s[0] >= '0' && s[0] <= '9'));
	} else {
		CHECK(err[0] != '\0' && memchr(err, '\0', sizeof(err)) != NULL);
	}

	for (suffix = 0; suffix <= 1; suffix++) {
		memset(err, 0, sizeof(err));
		if (parse_size(&ps, s, "size", max, suffix, &v) == 0) {
			unsigned long long n = 0;
			const char *q;

			CHECK(v >= 1 && v <= max);
			/* The digits times the suffix, recomputed. */
			for (q = s; *q >= '0' && *q <= '9'; q++)
				n = n * 10 + (unsigned)(*q - '0');
			if (suffix && (*q == 'k' || *q == 'K'))
				n *= 1024, q++;
			else if (suffix && (*q == 'm' || *q == 'M'))
				n *= 1024 * 1024, q++;
			else if (suffix && (*q == 'g' || *q == 'G'))
				n *= 1024 * 1024 * 1024, q++;
			CHECK(*q == '\0');
			CHECK(n == v);
		} else {
			CHECK(err[0] != '\0' &&
			    memchr(err, '\0', sizeof(err)) != NULL);
		}
	}

	rc = acl_parse(s, &a);
	CHECK((rc == 0) == ref_acl_ok(s));
	if (rc != 0) {
		CHECK(a.glob == NULL);
		return;
	}
	if (a.glob != NULL) {
		CHECK(strcmp(a.glob, s) == 0);
		free(a.glob);
		return;
	}
	CHECK(a.key[0] == 4 || a.key[0] == 6);
	CHECK(a.bits <= (a.key[0] == 4 ? 32u : 128u));
	/* Its own network address is inside it. */
	CHECK(acl_match(&a, a.key, ""));
	/* Host bits are cleared. */
	for (i = a.bits; i < 128; i++)
		CHECK((a.key[1 + i / 8] & (0x80u >> (i % 8))) == 0);
	/* Keys made from the input agree with the reference. */
	memcpy(key, a.key, KEY_LEN);
	for (i = 0; i < rawlen && i < 16; i++)
		key[1 + i] ^= raw[i];
	CHECK(acl_match(&a, key, "") == ref_match(&a, key));
	for (i = 0; i < 128 && i < rawlen; i += 8) {
		memcpy(key, a.key, KEY_LEN);
		/* One bit flipped: inside iff the bit is a host bit. */
		key[1 + (raw[i] % 128) / 8] ^= (unsigned char)(0x80u >>
		    (raw[i] % 8));
		CHECK(acl_match(&a, key, "") == ref_match(&a, key));
		CHECK(ref_match(&a, key) == (raw[i] % 128 >= a.bits));
	}
	key[0] = a.key[0] == 4 ? 6 : 4;
	CHECK(!acl_match(&a, key, ""));
}

/* ---- parsed configs ---- */

/* Whether s is "FILE:LINE" for file; the line in *line. */
static int
where_is(const char *s, const char *file, unsigned long *line)
{
	size_t n = strlen(file);
	char *end;

	if (strncmp(s, file, n) != 0 || s[n] != ':' || s[n + 1] < '1' ||
	    s[n + 1] > '9')
		return 0;
	*line = strtoul(s + n + 1, &end, 10);
	return *end == '\0';
}

/* Counts the lines of the text: what a message may name. */
static unsigned long
text_lines(const char *text, size_t len)
{
	unsigned long n = 1;
	size_t i;

	for (i = 0; i < len; i++)
		n += text[i] == '\n';
	return n;
}

/* Returns whether two strings, either maybe NULL, are the same. */
static int
same_str(const char *a, const char *b)
{
	return a == NULL || b == NULL ? a == b : strcmp(a, b) == 0;
}

static void
check_service(const struct tcpproxy_service *s, const char *file,
    unsigned long lines)
{
	size_t i;

	/* A port, or a Unix socket's path that fits, as the host. */
	CHECK(s->local_host != NULL);
	CHECK(s->local_port != NULL ? port_known(s->local_port, 1) :
	    unix_path_ok(s->local_host));
	CHECK(s->nbackends >= 1 && s->backends != NULL);
	for (i = 0; i < s->nbackends + s->nroutes; i++) {
		const struct tcpproxy_backend *be = i < s->nbackends ?
		    &s->backends[i] : &s->routes[i - s->nbackends].backend;

		CHECK(be->host != NULL);
		CHECK(be->port != NULL ? port_known(be->port, 0) :
		    unix_path_ok(be->host));
	}
	for (i = 0; i < s->nroutes; i++)
		CHECK(sni_pattern_ok(s->routes[i].pattern));
	for (i = 0; i < s->nfaults; i++) {
		struct fault f;
		char e[160];

		CHECK(fault_parse(s->faults[i], &f, e, sizeof(e)) == 0);
	}
	CHECK(s->nallow == 0 || s->allow != NULL);
	CHECK(s->ndeny == 0 || s->deny != NULL);
	for (i = 0; i < s->nallow + s->ndeny; i++) {
		const char *e = i < s->nallow ? s->allow[i] :
		    s->deny[i - s->nallow];
		struct acl a;

		CHECK(e != NULL && acl_parse(e, &a) == 0);
		free(a.glob);
	}
	CHECK(s->name == NULL || s->name[0] != '\0');
	CHECK(s->source == NULL || s->source[0] != '\0');
	/* A rule of a file says where it was; the command line's not. */
	if (file != NULL) {
		unsigned long line = 0;

		CHECK(s->where != NULL && where_is(s->where, file, &line));
		CHECK(line >= 1 && line <= lines);
	} else {
		CHECK(s->where == NULL);
	}
	CHECK(s->balance <= TCPPROXY_BALANCE_FIRST);
	CHECK(s->max_clients <= 1000000000UL);
	CHECK(s->max_per_source <= 1000000000UL);
	CHECK(s->fails >= 1 && s->fails <= 1000000UL);
	CHECK(s->connect_timeout >= 0 && s->connect_timeout <= 1e9);
	CHECK(s->idle_timeout >= 0 && s->idle_timeout <= 1e9);
	CHECK(s->down_time >= 0 && s->down_time <= 1e9);
	CHECK(s->health_check >= 0 && s->health_check <= 1e9);
	CHECK(s->buffer_size >= 1 && s->buffer_size <= 1024UL * 1024 * 1024);
	CHECK(s->half_close == 0 || s->half_close == 1);
	CHECK(s->max_bytes <= ULLONG_MAX / 2 && s->rate <= ULLONG_MAX / 2);
}

/*
 * Checks a config a parse filled in.  The rules of the file named file
 * carry "file:LINE" (lines: how many it has); the command line's carry
 * nothing.
 */
static void
check_config(const struct tcpproxy_config *cfg, const char *file,
    unsigned long lines, int any_where)
{
	const struct tcpproxy_program *pg = &cfg->program;
	size_t i;

	/* The parser fills services[], never the simple case. */
	CHECK(cfg->local_host == NULL && cfg->local_port == NULL &&
	    cfg->remote_host == NULL && cfg->remote_port == NULL);
	CHECK(cfg->nservices == 0 || cfg->services != NULL);
	for (i = 0; i < cfg->nservices; i++) {
		const struct tcpproxy_service *s = &cfg->services[i];

		/* With -f, a rule is the file's or the command line's. */
		check_service(s, any_where && s->where == NULL ? NULL : file,
		    lines);
	}
	CHECK(cfg->busy_poll <= TCPPROXY_BUSY_POLL_MAX);
	CHECK(cfg->verbosity >= TCPPROXY_LOG_ERROR &&
	    cfg->verbosity <= TCPPROXY_LOG_DEBUG);
	CHECK(cfg->grace >= 0 && cfg->grace <= 1e9);
	CHECK(pg->workers >= 1 && pg->workers <= 1024);
	CHECK(pg->hexdump == 0 || pg->hexdump == 1);
	CHECK(pg->user == NULL || pg->user[0] != '\0');
	CHECK(pg->pid_file == NULL || pg->pid_file[0] != '\0');
	CHECK(pg->log_file == NULL || pg->log_file[0] != '\0');
	CHECK(pg->dump_dir == NULL || pg->dump_dir[0] != '\0');
	CHECK(pg->dump_file == NULL || pg->dump_file[0] != '\0');
	CHECK(pg->dump_file == NULL || pg->hexdump);
	CHECK(pg->config_file == NULL || pg->config_file[0] != '\0');
}

/* Checks err after a failed parse: one non-empty line. */
static void
check_err(const char *err, size_t errlen)
{
	CHECK(memchr(err, '\0', errlen) != NULL);
	CHECK(err[0] != '\0' && strchr(err, '\n') == NULL);
}

/* Checks the message of a failed parse of text: "NAME:LINE: ...". */
static void
check_text_err(const char *err, const char *name, const char *text,
    size_t len)
{
	size_t n = strlen(name);
	unsigned long line;
	char *end;

	CHECK(strncmp(err, name, n) == 0 && err[n] == ':');
	if (err[n + 1] >= '0' && err[n + 1] <= '9') {
		line = strtoul(err + n + 1, &end, 10);
		CHECK(line >= 1 && line <= text_lines(text, len));
		CHECK(end[0] == ':' && end[1] == ' ' && end[2] != '\0');
	} else {
		/* Only the whole text is at fault: a NUL byte in it. */
		CHECK(memchr(text, '\0', len) != NULL);
	}
}

/*
 * Runs acl_check() of the access lists of s over a client address made
 * from raw (IPv4, IPv6 or IPv4-mapped by sel) and compares its verdict
 * with the references.
 */
static void
check_acl(const struct tcpproxy_service *s, const unsigned char *raw,
    size_t len, unsigned char sel)
{
	struct service svc;
	struct sockaddr_storage ss;
	socklen_t sslen;
	unsigned char key[KEY_LEN];
	char client[ADDR_NAME_MAX], text[INET6_ADDRSTRLEN];
	const char *why, *ref = NULL;
	size_t i, n = s->nallow + s->ndeny;
	int deny = 0, allow = 0, kind;

	if (n == 0 || len < 16)
		return;
	memset(&svc, 0, sizeof(svc));
	if ((svc.acl = calloc(n, sizeof(*svc.acl))) == NULL)
		return;
	for (i = 0; i < n; i++) {
		CHECK(acl_parse(i < s->nallow ? s->allow[i] :
		    s->deny[i - s->nallow], &svc.acl[i]) == 0);
		if (i < s->nallow)
			svc.nallow++;
		else
			svc.ndeny++;
	}
	memset(&ss, 0, sizeof(ss));
	kind = sel % 3;
	if (kind == 0) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

		sin->sin_family = AF_INET;
		sin->sin_port = htons(40000);
		memcpy(&sin->sin_addr, raw, 4);
		/* Often an address an entry names, or near one. */
		if (svc.acl[raw[4] % n].glob == NULL &&
		    svc.acl[raw[4] % n].key[0] == 4 && (raw[5] & 1))
			memcpy(&sin->sin_addr, svc.acl[raw[4] % n].key + 1, 4);
		sslen = sizeof(*sin);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(40000);
		memcpy(&sin6->sin6_addr, raw, 16);
		if (svc.acl[raw[4] % n].glob == NULL && (raw[5] & 1)) {
			const struct acl *a = &svc.acl[raw[4] % n];

			if (a->key[0] == 6)
				memcpy(&sin6->sin6_addr, a->key + 1, 16);
			else
				kind = 2, memcpy(sin6->sin6_addr.s6_addr + 12,
				    a->key + 1, 4);
		}
		if (kind == 2) {
			memset(sin6->sin6_addr.s6_addr, 0, 10);
			sin6->sin6_addr.s6_addr[10] = 0xff;
			sin6->sin6_addr.s6_addr[11] = 0xff;
		}
		sslen = sizeof(*sin6);
	}
	/* As bridge_open() names and keys a client. */
	CHECK(addr_key((struct sockaddr *)&ss, key) == 0);
	addr_name((struct sockaddr *)&ss, sslen, client, sizeof(client));
	CHECK(key[0] == (kind == 1 ? 6 : 4) ||
	    (kind == 1 && key[0] == 4));	/* raw may be mapped too */
	CHECK(inet_ntop(key[0] == 4 ? AF_INET : AF_INET6, key + 1, text,
	    sizeof(text)) != NULL);
	for (i = 0; i < n; i++) {
		int r = ref_entry(&svc.acl[i], key, text);

		CHECK(acl_match(&svc.acl[i], key, text) == r);
		if (i < svc.nallow)
			allow |= r;
		else
			deny |= r;
	}
	if (deny)
		ref = "denied";
	else if (svc.nallow > 0 && !allow)
		ref = "not-allowed";
	why = acl_check(&svc, key, client);
	CHECK(why == ref || (why != NULL && ref != NULL &&
	    strcmp(why, ref) == 0));
	for (i = 0; i < n; i++)
		free(svc.acl[i].glob);
	free(svc.acl);
}

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *argv[MAXARGS + 1], *copy;
	char err[ERRLEN], err2[ERRLEN];
	struct tcpproxy_config a, b, c;
	const unsigned char *sep;
	const char *text = "";
	unsigned char sel;
	size_t i, start, wlen, tlen = 0, na = 0, nb = 0;
	int argc = 0, ra, rb, rc;

	if (size < 1 || size > 4096)
		return 0;
	if (debug == -1)
		debug = getenv("FUZZ_ARGS_DEBUG") != NULL;
	sel = data[0];
	data++;
	size--;
	if ((copy = malloc(size + 1)) == NULL)
		return 0;
	memcpy(copy, data, size);
	copy[size] = '\0';
	/* Words before the first 0x01, the config text after it. */
	sep = memchr(data, 0x01, size);
	wlen = sep != NULL ? (size_t)(sep - data) : size;
	if (sep != NULL) {
		text = copy + wlen + 1;
		tlen = size - wlen - 1;
	}
	for (i = 0, start = 0; i <= wlen && argc < MAXARGS; i++) {
		if (i == wlen || copy[i] == '\0' || copy[i] == '\n') {
			if (i == wlen && i == start)
				break;		/* no empty last word */
			copy[i] = '\0';
			argv[argc++] = copy + start;
			start = i + 1;
		}
	}
	argv[argc] = NULL;
	fuzz_text = text;
	fuzz_textlen = tlen;

	for (i = 0; i < (size_t)argc; i++) {
		int r;

		check_word(argv[i], sel, data, size);
		/* A pattern and the next word. */
		if (i + 1 < (size_t)argc &&
		    (r = ref_glob(argv[i], argv[i + 1])) != -1)
			CHECK(glob_match(argv[i], argv[i + 1]) == r);
	}

	/* (a) The words alone. */
	tcpproxy_config_init(&a);
	memset(err, 0x55, sizeof(err));
	ra = tcpproxy_config_parse(&a, argc, argv, err, sizeof(err));
	CHECK(ra == 0 || ra == -1);
	if (ra == -1) {
		check_err(err, sizeof(err));
	} else {
		const char *f = a.program.config_file;

		check_config(&a, f != NULL ? f : "", f != NULL ?
		    text_lines(text, tlen) : 0, 1);
		CHECK(a.nservices >= 1 || a.program.help || a.program.version);
		if (f == NULL)
			for (i = 0; i < a.nservices; i++)
				CHECK(a.services[i].where == NULL);
		for (i = 0; i < a.nservices && i < 4; i++)
			check_acl(&a.services[i], data, size, sel >> 1);
		na = a.nservices;
	}

	if (debug)
		fprintf(stderr, "words (%d): %s\n", argc, ra == 0 ? "ok" : err);

	/* (b) The text alone. */
	tcpproxy_config_init(&b);
	memset(err2, 0x55, sizeof(err2));
	rb = tcpproxy_config_text(&b, CONF_NAME, text, tlen, err2,
	    sizeof(err2));
	CHECK(rb == 0 || rb == -1);
	if (rb == -1) {
		check_err(err2, sizeof(err2));
		check_text_err(err2, CONF_NAME, text, tlen);
	} else {
		check_config(&b, CONF_NAME, text_lines(text, tlen), 0);
		for (i = 0; i < b.nservices && i < 4; i++)
			check_acl(&b.services[i], data + size / 2,
			    size - size / 2, sel >> 3);
		nb = b.nservices;
	}

	if (debug)
		fprintf(stderr, "text (%zu bytes): %s\n", tlen, rb == 0 ? "ok" :
		    err2);

	/* (c) Both into one, as -f does: the words' options are the
	 * text's defaults, which change no rule's addresses, and the text
	 * parses or fails as on its own. */
	tcpproxy_config_init(&c);
	memset(err, 0x55, sizeof(err));
	if (tcpproxy_config_parse(&c, argc, argv, err, sizeof(err)) == 0) {
		CHECK(ra == 0 && c.nservices == na);
		memset(err, 0x55, sizeof(err));
		rc = tcpproxy_config_text(&c, CONF_NAME, text, tlen, err,
		    sizeof(err));
		/* Together they may give one --name twice, alone not. */
		CHECK(rc == rb || (rc == -1 && rb == 0 &&
		    strstr(err, "is used twice") != NULL));
		if (rc == -1 && rb == 0) {
			check_err(err, sizeof(err));
		} else if (rc == -1) {
			check_err(err, sizeof(err));
			CHECK(strcmp(err, err2) == 0);
		} else {
			CHECK(c.nservices == na + nb);
			for (i = 0; i < nb; i++) {
				const struct tcpproxy_service *x =
				    &c.services[na + i], *y = &b.services[i];
				size_t k;

				CHECK(strcmp(x->local_host, y->local_host) == 0);
				CHECK(same_str(x->local_port, y->local_port));
				CHECK(strcmp(x->where, y->where) == 0);
				CHECK(x->nbackends == y->nbackends);
				for (k = 0; k < x->nbackends; k++) {
					CHECK(strcmp(x->backends[k].host,
					    y->backends[k].host) == 0);
					CHECK(same_str(x->backends[k].port,
					    y->backends[k].port));
				}
				CHECK(x->ndeny >= y->ndeny &&
				    x->nallow >= y->nallow);
			}
		}
	} else {
		CHECK(ra == -1);
	}
	tcpproxy_config_free(&a);
	tcpproxy_config_free(&b);
	tcpproxy_config_free(&c);
	/* Freed means as after tcpproxy_config_init(). */
	CHECK(a.owned == NULL && a.services == NULL && a.nservices == 0);

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
	fuzz_text = NULL;
	free(copy);
	return 0;
}
