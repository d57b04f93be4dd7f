/*
 * fuzz_preamble.c - libFuzzer harness for the parsers of what a client
 * sends before its bytes are relayed: PROXY protocol headers (v1 and v2)
 * and TLS ClientHellos (for --sni).  Both read bytes from the network.
 *
 * Distributed under the Boost Software License, Version 1.0.
 * (See accompanying file LICENSE or copy at
 * https://www.boost.org/LICENSE_1_0.txt)
 *
 * It includes tcpproxy.c with TCPPROXY_FUZZ, so the static parsers are
 * in reach.  Input: byte 0 picks the room the parser is given (the
 * buffer size, 16 to 65535 bytes, or the input's length), the rest is
 * what the client sent.  Each run, in a buffer of exactly the bytes at
 * hand (so AddressSanitizer sees any read past them):
 *   - proxy_parse(): a verdict of PRE_DONE has a length within the bytes
 *     and the room, addresses of one IP family unless local, and every
 *     shorter prefix of it is PRE_MORE; PRE_MORE never comes with all the
 *     room used; PRE_BAD names a reason of the documented list, and no
 *     longer input (the same prefix) can turn it into PRE_DONE;
 *   - the header proxy_header() writes for addresses taken from the input
 *     parses back (v1 and v2) to the same addresses, and a health check's
 *     header parses as local;
 *   - sni_parse(): a name found is lower case, of the letters a name may
 *     have, and every prefix of the record is PRE_MORE or the same
 *     verdict; a ClientHello built around a name from the input yields
 *     that name; sni_match() agrees with a plain reference.
 * Every check failure calls abort(), which libFuzzer reports as a crash.
 */
#define TCPPROXY_FUZZ
#include "tcpproxy.c"

#include <stdint.h>

#define CHECK(x) do { if (!(x)) { \
	fprintf(stderr, "fuzz_preamble: check failed at line %d: %s\n", \
	    __LINE__, #x); abort(); } } while (0)

static const char *const reasons[] = {
	"proxy-signature", "proxy-syntax", "proxy-too-long", "proxy-version",
	"proxy-command", "proxy-family", "proxy-length", "proxy-tlv",
	"proxy-crc"
};

/* Returns whether why is one of the documented refuse reasons. */
static int
known_reason(const char *why)
{
	size_t i;

	for (i = 0; why != NULL && i < sizeof(reasons) / sizeof(reasons[0]);
	    i++)
		if (strcmp(why, reasons[i]) == 0)
			return 1;
	return 0;
}

/* Runs proxy_parse on an exact copy of buf[0..n). */
static int
parse_exact(const unsigned char *buf, size_t n, size_t max,
    struct proxy_hdr *h)
{
	unsigned char *copy = malloc(n > 0 ? n : 1);
	int r;

	CHECK(copy != NULL);
	memcpy(copy, buf, n);
	r = proxy_parse(copy, n, max, h);
	free(copy);
	return r;
}

/* Checks proxy_parse's verdict on data and on its prefixes. */
static void
check_proxy(const unsigned char *data, size_t n, size_t max)
{
	struct proxy_hdr h, hp;
	int r = parse_exact(data, n, max, &h);
	size_t k;

	if (r == PRE_DONE) {
		CHECK(h.len > 0 && h.len <= n && h.len <= max);
		if (!h.local) {
			CHECK(h.src.ss_family == h.dst.ss_family);
			CHECK(h.src.ss_family == AF_INET ||
			    h.src.ss_family == AF_INET6);
		}
		/* The verdict needs the whole header, and nothing after it. */
		for (k = 0; k < h.len; k++)
			CHECK(parse_exact(data, k, max, &hp) == PRE_MORE);
		CHECK(parse_exact(data, h.len, max, &hp) == PRE_DONE &&
		    hp.len == h.len && hp.local == h.local &&
		    memcmp(&hp.src, &h.src, sizeof(h.src)) == 0);
	} else if (r == PRE_MORE) {
		CHECK(n < max);
	} else {
		CHECK(r == PRE_BAD && known_reason(h.why));
		/* Bytes that came later cannot undo a refusal. */
		for (k = n; k < n + 2 && k <= max; k++) {
			unsigned char *more = calloc(k + 1, 1);

			CHECK(more != NULL);
			memcpy(more, data, n);
			CHECK(proxy_parse(more, k, max, &hp) == PRE_BAD);
			free(more);
		}
	}
}

/* Builds addresses from the input and checks what proxy_header writes. */
static void
check_header(const unsigned char *data, size_t n)
{
	struct sockaddr_storage src, dst;
	struct proxy_hdr h;
	unsigned char hdr[PROXY_HDR_MAX], raw[36];
	int v, six = n > 0 && (data[0] & 1);

	memset(raw, 0, sizeof(raw));
	memcpy(raw, data, n < sizeof(raw) ? n : sizeof(raw));
	if (six) {
		(void)sockaddr_fill(&src, AF_INET6, raw, raw[32] << 8 | raw[33]);
		(void)sockaddr_fill(&dst, AF_INET6, raw + 16,
		    raw[34] << 8 | raw[35]);
	} else {
		(void)sockaddr_fill(&src, AF_INET, raw, raw[8] << 8 | raw[9]);
		(void)sockaddr_fill(&dst, AF_INET, raw + 4,
		    raw[10] << 8 | raw[11]);
	}
	for (v = TCPPROXY_PROXY_V1; v <= TCPPROXY_PROXY_V2; v++) {
		size_t len = proxy_header(v, &src, &dst, hdr);
		unsigned char ks[KEY_LEN], kd[KEY_LEN], kh[KEY_LEN];

		CHECK(len > 0 && len <= PROXY_HDR_MAX);
		CHECK(parse_exact(hdr, len, 65535, &h) == PRE_DONE);
		CHECK(h.len == len);
		(void)addr_key((struct sockaddr *)&src, ks);
		(void)addr_key((struct sockaddr *)&dst, kd);
		/* An IPv4-mapped address goes as IPv4; mixed: UNKNOWN. */
		CHECK(h.local == (ks[0] != kd[0]));
		if (h.local)
			continue;
		CHECK(h.src.ss_family == (ks[0] == 4 ? AF_INET : AF_INET6));
		(void)addr_key((struct sockaddr *)&h.src, kh);
		CHECK(memcmp(ks, kh, KEY_LEN) == 0);
		(void)addr_key((struct sockaddr *)&h.dst, kh);
		CHECK(memcmp(kd, kh, KEY_LEN) == 0);
		CHECK(sa_port((struct sockaddr *)&h.src) ==
		    sa_port((struct sockaddr *)&src));
		CHECK(sa_port((struct sockaddr *)&h.dst) ==
		    sa_port((struct sockaddr *)&dst));
		len = proxy_header(v, NULL, NULL, hdr);
		CHECK(parse_exact(hdr, len, 65535, &h) == PRE_DONE && h.local);
	}
}

/* Runs sni_parse on an exact copy of buf[0..n). */
static int
sni_exact(const unsigned char *buf, size_t n, size_t max, char *name)
{
	unsigned char *copy = malloc(n > 0 ? n : 1);
	int r;

	CHECK(copy != NULL);
	memcpy(copy, buf, n);
	r = sni_parse(copy, n, max, name, 256);
	free(copy);
	return r;
}

/* Checks sni_parse's verdict on data and on its prefixes. */
static void
check_sni(const unsigned char *data, size_t n, size_t max)
{
	char name[256], again[256];
	int r = sni_exact(data, n, max, name);
	size_t k, len = strlen(name);

	if (r == PRE_DONE) {
		CHECK(len < 256);
		for (k = 0; k < len; k++)
			CHECK(strchr("abcdefghijklmnopqrstuvwxyz0123456789-_.",
			    name[k]) != NULL);
		for (k = 0; k < n && k < 600; k++) {
			int rk = sni_exact(data, k, max, again);

			CHECK(rk == PRE_MORE || (rk == PRE_DONE &&
			    strcmp(again, name) == 0));
		}
	} else if (r == PRE_MORE) {
		CHECK(n < max);
		CHECK(len == 0);
	} else {
		CHECK(r == PRE_BAD && len == 0);
	}
}

/* Builds a ClientHello for a name from the input: sni_parse finds it. */
static void
check_sni_built(const unsigned char *data, size_t n)
{
	unsigned char hello[512];
	char want[64], got[256];
	size_t len = 0, i, at;

	for (i = 0; i < n && len < 40; i++)
		if (strchr("abcdefghijklmnopqrstuvwxyz0123456789-", data[i]) !=
		    NULL && data[i] != '\0')
			want[len++] = (char)data[i];
	want[len] = '\0';
	if (len == 0)
		return;
	memset(hello, 0, sizeof(hello));
	at = 9;
	hello[at] = 3;
	hello[at + 1] = 3;		/* TLS 1.2 */
	at += 2 + 32;			/* random */
	hello[at++] = 0;		/* no session id */
	hello[at++] = 0;
	hello[at++] = 2;
	hello[at++] = 0x13;
	hello[at++] = 0x01;		/* one cipher suite */
	hello[at++] = 1;
	hello[at++] = 0;		/* null compression */
	hello[at++] = 0;
	hello[at++] = (unsigned char)(len + 9);	/* extensions */
	hello[at++] = 0;
	hello[at++] = 0;		/* server_name */
	hello[at++] = 0;
	hello[at++] = (unsigned char)(len + 5);
	hello[at++] = 0;
	hello[at++] = (unsigned char)(len + 3);
	hello[at++] = 0;		/* host_name */
	hello[at++] = 0;
	hello[at++] = (unsigned char)len;
	memcpy(hello + at, want, len);
	at += len;
	hello[0] = 0x16;
	hello[1] = 3;
	hello[2] = 1;
	hello[3] = (unsigned char)((at - 5) >> 8);
	hello[4] = (unsigned char)(at - 5);
	hello[5] = 1;			/* ClientHello */
	hello[6] = 0;
	hello[7] = (unsigned char)((at - 9) >> 8);
	hello[8] = (unsigned char)(at - 9);
	CHECK(sni_exact(hello, at, 16384, got) == PRE_DONE);
	CHECK(strcmp(got, want) == 0);
	for (i = 0; i < at; i++)
		CHECK(sni_exact(hello, i, 16384, got) == PRE_MORE);
	/* "*.domain" matches names under domain, not domain itself. */
	{
		char pat[80], under[80];

		snprintf(pat, sizeof(pat), "*.%s", want);
		snprintf(under, sizeof(under), "x.%s", want);
		CHECK(sni_match(want, want));
		CHECK(sni_match(pat, under));
		CHECK(!sni_match(pat, want));
		CHECK(!sni_match(under, want));
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t max;

	if (size < 1)
		return 0;
	/* Byte 0: the room, from 16 bytes up to 64 KiB, or exactly size;
	 * the engine never has more bytes than room. */
	max = data[0] == 0 ? size - 1 : 16 + (size_t)data[0] * 257;
	if (max < 16)
		max = 16;
	data++;
	size--;
	check_proxy(data, size < max ? size : max, max);
	check_header(data, size);
	check_sni(data, size < max ? size : max, max);
	check_sni_built(data, size);
	return 0;
}
