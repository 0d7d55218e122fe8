/*
 * nmount: the user-space half of `nine mount` (nine/cli/mount.py) in C, for the
 * test VM, whose guest has busybox and no Python.
 *
 * The kernel's 9P client cannot Tauth, so, as diod's mount.diod does, this
 * connects to the server, negotiates (Tversion), authenticates with nine's
 * shared key (Tauth, then the nine-key-v1 conversation on the auth fid:
 * nine/auth/key.py has the protocol), attaches, clunks the auth fid and the
 * root fid (the kernel must find no fid it does not know), and then execs
 *
 *     mount -t 9p -o trans=fd,rfdno=N,wfdno=N,version=V,msize=M[,OPTIONS] HOST DIR
 *
 * with the connected socket as fd N.  The server keeps the connection's
 * authentication across the kernel's own Tversion, and lets the kernel's
 * attaches (one per user with access=user) through without an auth fid,
 * since a key holder authenticated the connection (nine/auth/gate.py).
 *
 * Only the key method is spoken (no MUNGE here), and HOST is a numeric IPv4
 * or IPv6 address (as the kernel's trans=tcp takes).
 *
 *     nmount [-f] [-v] [-k KEYFILE] [-o OPTIONS] HOST DIR
 *         -o: mount(8)'s 9p options; port=N (default 564) is the server's
 *             port, version= (9p2000.L, 9p2000.u, 9p2000), msize=, aname=
 *             are used here too, and everything else goes to the kernel
 *         -k: the key file (default: $NINE_KEY when set, else
 *             ~/.config/nine/key, else /etc/nine/key; it must be a regular
 *             file owned by this user, mode 0600 or stricter, 64 hex digits)
 *         -f: everything but the mount: print the mount command instead
 *         -v: say what is done, on stderr
 *     nmount --hmac KEYHEX
 *         HMAC-SHA256 of stdin in hex (tests/test_kernel_auth.py checks the
 *         SHA-256 and HMAC below against Python's hmac module with it)
 *
 * Exit status: 1 when the user-space part fails (with a message naming the
 * step), 2 for a usage error, else mount's own.
 *
 * Built on the host with: gcc -static -O2 -o nmount nmount.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * SHA-256 (FIPS 180-4) and HMAC (RFC 2104)
 */

typedef struct {
	uint32_t h[8];
	uint64_t len;		/* bytes hashed so far */
	uint8_t buf[64];
	size_t n;		/* bytes waiting in buf */
} sha256_ctx;

static const uint32_t K256[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(sha256_ctx *c, const uint8_t *p)
{
	uint32_t w[64], s[8];
	int i;

	for (i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		       (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (i = 16; i < 64; i++) {
		uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	memcpy(s, c->h, sizeof s);
	for (i = 0; i < 64; i++) {
		uint32_t e = s[4], a = s[0];
		uint32_t t1 = s[7] + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) +
			      ((e & s[5]) ^ (~e & s[6])) + K256[i] + w[i];
		uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) +
			      ((a & s[1]) ^ (a & s[2]) ^ (s[1] & s[2]));
		memmove(s + 1, s, 7 * sizeof s[0]);
		s[4] += t1;
		s[0] = t1 + t2;
	}
	for (i = 0; i < 8; i++)
		c->h[i] += s[i];
}

static void sha256_init(sha256_ctx *c)
{
	static const uint32_t h0[8] = {
		0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
	};
	memcpy(c->h, h0, sizeof h0);
	c->len = 0;
	c->n = 0;
}

static void sha256_update(sha256_ctx *c, const void *data, size_t len)
{
	const uint8_t *p = data;

	c->len += len;
	while (len > 0) {
		size_t k = 64 - c->n < len ? 64 - c->n : len;
		memcpy(c->buf + c->n, p, k);
		c->n += k;
		p += k;
		len -= k;
		if (c->n == 64) {
			sha256_block(c, c->buf);
			c->n = 0;
		}
	}
}

static void sha256_final(sha256_ctx *c, uint8_t out[32])
{
	uint64_t bits = c->len * 8;
	uint8_t pad = 0x80, zero = 0, be[8];
	int i;

	sha256_update(c, &pad, 1);
	while (c->n != 56)
		sha256_update(c, &zero, 1);
	for (i = 0; i < 8; i++)
		be[i] = bits >> (56 - 8 * i);
	sha256_update(c, be, 8);
	for (i = 0; i < 8; i++) {
		out[4 * i] = c->h[i] >> 24;
		out[4 * i + 1] = c->h[i] >> 16;
		out[4 * i + 2] = c->h[i] >> 8;
		out[4 * i + 3] = c->h[i];
	}
}

typedef struct {
	sha256_ctx inner, outer;
} hmac_ctx;

static void hmac_init(hmac_ctx *m, const uint8_t *key, size_t keylen)
{
	uint8_t k[64] = {0}, ipad[64], opad[64];
	int i;

	if (keylen > 64) {		/* a long key is hashed first */
		sha256_init(&m->inner);
		sha256_update(&m->inner, key, keylen);
		sha256_final(&m->inner, k);
	} else {
		memcpy(k, key, keylen);
	}
	for (i = 0; i < 64; i++) {
		ipad[i] = k[i] ^ 0x36;
		opad[i] = k[i] ^ 0x5c;
	}
	sha256_init(&m->inner);
	sha256_update(&m->inner, ipad, 64);
	sha256_init(&m->outer);
	sha256_update(&m->outer, opad, 64);
}

static void hmac_final(hmac_ctx *m, uint8_t out[32])
{
	uint8_t ih[32];

	sha256_final(&m->inner, ih);
	sha256_update(&m->outer, ih, 32);
	sha256_final(&m->outer, out);
}

/* ------------------------------------------------------------------------
 * messages and errors
 */

static int verbose;

static void die(const char *fmt, ...)
{
	va_list ap;

	fputs("nmount: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void usage(const char *why)
{
	fprintf(stderr, "nmount: %s\nusage: nmount [-f] [-v] [-k KEYFILE] [-o OPTIONS] HOST DIR\n"
		"       nmount --hmac KEYHEX < DATA\n", why);
	exit(2);
}

static void say(const char *fmt, ...)
{
	va_list ap;

	if (!verbose)
		return;
	fputs("nmount: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int nibble(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* hex digits -> bytes; the count, or -1 for anything else (or more than max) */
static int unhex(const char *s, uint8_t *out, size_t max)
{
	size_t n = 0;

	for (; s[0]; s += 2) {
		int hi = nibble(s[0]), lo = s[1] ? nibble(s[1]) : -1;
		if (hi < 0 || lo < 0 || n == max)
			return -1;
		out[n++] = hi << 4 | lo;
	}
	return n;
}

/* ------------------------------------------------------------------------
 * the key file (the rules of nine.auth.key.load_key)
 */

#define KEY_BYTES 32

static void load_key(const char *path, uint8_t key[KEY_BYTES])
{
	char buf[4 * KEY_BYTES + 1];
	struct stat st;
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		die("key %s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0)
		die("key %s: %s", path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		die("key %s: the shared key must be a regular file", path);
	if (st.st_uid != geteuid())
		die("key %s: owned by uid %u, not by this user (uid %u): refusing a key "
		    "another user controls", path, st.st_uid, geteuid());
	if (st.st_mode & 077)
		die("key %s: mode %04o lets other users at the shared key: it must be 0600 "
		    "or stricter", path, st.st_mode & 07777);
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n < 0)
		die("key %s: %s", path, strerror(errno));
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' ||
			 buf[n - 1] == '\t'))
		n--;
	buf[n] = 0;
	if (unhex(buf, key, KEY_BYTES) != KEY_BYTES)
		die("key %s: not a nine shared key (want %d hex digits on one line)", path,
		    2 * KEY_BYTES);
}

static const char *find_key(void)
{
	static char home_key[4096];
	const char *env = getenv("NINE_KEY"), *home = getenv("HOME");

	if (env && *env)
		return env;
	if (home && *home) {
		snprintf(home_key, sizeof home_key, "%s/.config/nine/key", home);
		if (access(home_key, F_OK) == 0)
			return home_key;
	}
	return "/etc/nine/key";
}

/* ------------------------------------------------------------------------
 * 9P: one request at a time, on a blocking socket
 */

enum {
	Rlerror = 7, Tversion = 100, Tauth = 102, Tattach = 104, Rerror = 107,
	Tread = 116, Twrite = 118, Tclunk = 120,
};
#define NOTAG 0xFFFF
#define NOFID 0xFFFFFFFFu
#define NONUNAME 0xFFFFFFFFu
#define HDR 7
#define BUFSZ 8192

enum dialect { D9P2000, D9P2000u, D9P2000L };

typedef struct {
	uint8_t b[BUFSZ];
	size_t n;
} buf9;

static void put(buf9 *m, const void *p, size_t len)
{
	if (m->n + len > BUFSZ)
		die("a request too large (names too long?)");
	memcpy(m->b + m->n, p, len);
	m->n += len;
}

static void put_le(buf9 *m, uint64_t v, int bytes)
{
	uint8_t le[8];
	int i;

	for (i = 0; i < bytes; i++)
		le[i] = v >> (8 * i);
	put(m, le, bytes);
}

static void put_str(buf9 *m, const char *s)
{
	size_t len = strlen(s);

	if (len > 0xFFFF)
		die("a string longer than 9P allows");
	put_le(m, len, 2);
	put(m, s, len);
}

static uint64_t get_le(const uint8_t *p, int bytes)
{
	uint64_t v = 0;
	int i;

	for (i = bytes - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

typedef struct {
	int fd;
	enum dialect d;
	uint16_t tag;
	uint32_t msize;
} conn9;

static void begin(buf9 *m, int type, uint16_t tag)
{
	m->n = 4;
	put_le(m, type, 1);
	put_le(m, tag, 2);
}

static void write_all(int fd, const uint8_t *p, size_t len)
{
	while (len > 0) {
		ssize_t k = write(fd, p, len);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			die("send: %s", k < 0 ? strerror(errno) : "short write");
		p += k;
		len -= k;
	}
}

static void read_all(int fd, uint8_t *p, size_t len)
{
	while (len > 0) {
		ssize_t k = read(fd, p, len);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			die("receive: %s", strerror(errno));
		if (k == 0)
			die("the server closed the connection");
		p += k;
		len -= k;
	}
}

/*
 * Send m (begun with begin()) and read its reply into r; returns 0, or -1 with
 * errno set and the server's error text in err for an error reply.
 */
static int rpc(conn9 *c, buf9 *m, buf9 *r, const char *what, char *err, size_t errlen)
{
	uint32_t size;
	int type, want = m->b[4] + 1;

	m->b[0] = m->n;
	m->b[1] = m->n >> 8;
	m->b[2] = m->n >> 16;
	m->b[3] = m->n >> 24;
	write_all(c->fd, m->b, m->n);
	read_all(c->fd, r->b, 4);
	size = get_le(r->b, 4);
	if (size < HDR || size > BUFSZ)
		die("%s: a reply of %u bytes", what, size);
	read_all(c->fd, r->b + 4, size - 4);
	r->n = size;
	type = r->b[4];
	if (get_le(r->b + 5, 2) != get_le(m->b + 5, 2))
		die("%s: a reply with another tag", what);
	if (type == Rlerror && size >= HDR + 4) {
		errno = get_le(r->b + HDR, 4);
		snprintf(err, errlen, "%s", strerror(errno));
		return -1;
	}
	if (type == Rerror && size >= HDR + 2) {
		size_t len = get_le(r->b + HDR, 2);
		if (HDR + 2 + len > size)
			die("%s: a bad Rerror", what);
		errno = (c->d == D9P2000u && HDR + 2 + len + 4 <= size)
			? (int)get_le(r->b + HDR + 2 + len, 4) : EACCES;
		snprintf(err, errlen, "%.*s", (int)len, (const char *)r->b + HDR + 2);
		return -1;
	}
	if (type != want)
		die("%s: answered with message type %d", what, type);
	return 0;
}

static uint16_t next_tag(conn9 *c)
{
	return c->tag++;
}

/* rpc that must succeed */
static void must(conn9 *c, buf9 *m, buf9 *r, const char *what)
{
	char err[512];

	if (rpc(c, m, r, what, err, sizeof err) < 0)
		die("%s: %s", what, err);
}

static void version(conn9 *c, const char *v)
{
	buf9 m, r;
	size_t len;

	begin(&m, Tversion, NOTAG);
	put_le(&m, c->msize, 4);
	put_str(&m, v);
	must(c, &m, &r, "Tversion");
	if (r.n < HDR + 6)
		die("Tversion: a short Rversion");
	len = get_le(r.b + HDR + 4, 2);
	if (HDR + 6 + len > r.n || len != strlen(v) || memcmp(r.b + HDR + 6, v, len))
		die("the server does not speak %s (it answered %.*s)", v,
		    (int)(HDR + 6 + len <= r.n ? len : 0), (const char *)r.b + HDR + 6);
	if (get_le(r.b + HDR, 4) < c->msize)
		c->msize = get_le(r.b + HDR, 4);
}

/* the names of a Tauth or Tattach (n_uname only in .u and .L) */
static void put_names(conn9 *c, buf9 *m, const char *uname, const char *aname, uint32_t n_uname)
{
	put_str(m, uname);
	put_str(m, aname);
	if (c->d != D9P2000)
		put_le(m, n_uname, 4);
}

static size_t afid_read(conn9 *c, uint32_t afid, uint64_t off, uint8_t *out, size_t count)
{
	buf9 m, r;
	size_t got;

	begin(&m, Tread, next_tag(c));
	put_le(&m, afid, 4);
	put_le(&m, off, 8);
	put_le(&m, count, 4);
	must(c, &m, &r, "auth: Tread");
	got = r.n >= HDR + 4 ? get_le(r.b + HDR, 4) : (size_t)-1;
	if (got > count || HDR + 4 + got != r.n)
		die("auth: a bad Rread");
	memcpy(out, r.b + HDR + 4, got);
	return got;
}

static void clunk(conn9 *c, uint32_t fid, const char *what)
{
	buf9 m, r;

	begin(&m, Tclunk, next_tag(c));
	put_le(&m, fid, 4);
	must(c, &m, &r, what);
}

/* ------------------------------------------------------------------------
 * nine-key-v1 (nine/auth/key.py): challenge, response, the server's proof
 */

static const char TAG[] = "nine-key-v1\n";
#define TAG_LEN (sizeof TAG - 1)
#define NONCE 32

static void key_mac(const uint8_t key[KEY_BYTES], const char *label, const uint8_t *t,
		    size_t tlen, uint8_t out[32])
{
	hmac_ctx h;

	hmac_init(&h, key, KEY_BYTES);
	sha256_update(&h.inner, label, strlen(label));
	sha256_update(&h.inner, t, tlen);
	hmac_final(&h, out);
}

static void key_conversation(conn9 *c, uint32_t afid, const uint8_t key[KEY_BYTES],
			     const char *uname, const char *aname, uint32_t n_uname)
{
	uint8_t challenge[TAG_LEN + NONCE], proof[32], want[32];
	buf9 t, m, r;
	size_t got = 0;
	char err[512];
	int i, diff = 0;

	while (got < sizeof challenge) {
		size_t k = afid_read(c, afid, got, challenge + got, sizeof challenge - got);
		if (k == 0)
			break;
		got += k;
	}
	if (got != sizeof challenge || memcmp(challenge, TAG, TAG_LEN))
		die("auth: the server did not send a nine-key-v1 challenge (another method?)");
	/* T = Ns | Nc | s(uname) | n_uname[4] | s(aname) */
	t.n = 0;
	put(&t, challenge + TAG_LEN, NONCE);
	if (getrandom(t.b + NONCE, NONCE, 0) != NONCE)
		die("getrandom: %s", strerror(errno));
	t.n += NONCE;
	put_str(&t, uname);
	put_le(&t, c->d == D9P2000 ? NONUNAME : n_uname, 4);
	put_str(&t, aname);

	begin(&m, Twrite, next_tag(c));
	put_le(&m, afid, 4);
	put_le(&m, 0, 8);
	put_le(&m, NONCE + 32, 4);
	put(&m, t.b + NONCE, NONCE);
	m.n += 32;
	key_mac(key, "nine-key-v1 client", t.b, t.n, m.b + m.n - 32);
	if (rpc(c, &m, &r, "auth: Twrite", err, sizeof err) < 0)
		die("auth: the server refused our response: %s (is the key the server's?)", err);
	if (r.n < HDR + 4 || get_le(r.b + HDR, 4) != NONCE + 32)
		die("auth: the server took part of the response");

	got = 0;
	while (got < sizeof proof) {
		size_t k = afid_read(c, afid, sizeof challenge + got, proof + got,
				     sizeof proof - got);
		if (k == 0)
			break;
		got += k;
	}
	key_mac(key, "nine-key-v1 server", t.b, t.n, want);
	for (i = 0; i < 32; i++)
		diff |= proof[i] ^ want[i];
	if (got != sizeof proof || diff)
		die("auth: the server did not prove it holds the shared key (an impostor, or "
		    "another cluster's server)");
}

/* ------------------------------------------------------------------------
 * main
 */

static int hmac_main(const char *keyhex)
{
	uint8_t key[1024], out[32], chunk[4096];
	hmac_ctx h;
	ssize_t n;
	int keylen = unhex(keyhex, key, sizeof key), i;

	if (keylen < 0)
		usage("--hmac takes the key in hex");
	hmac_init(&h, key, keylen);
	while ((n = read(0, chunk, sizeof chunk)) > 0)
		sha256_update(&h.inner, chunk, n);
	if (n < 0)
		die("stdin: %s", strerror(errno));
	hmac_final(&h, out);
	for (i = 0; i < 32; i++)
		printf("%02x", out[i]);
	printf("\n");
	return 0;
}

static int connect_to(const char *host, unsigned port)
{
	struct sockaddr_in6 a6 = {0};
	struct sockaddr_in a4 = {0};
	int fd;

	if (inet_pton(AF_INET, host, &a4.sin_addr) == 1) {
		a4.sin_family = AF_INET;
		a4.sin_port = htons(port);
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&a4, sizeof a4) == 0)
			return fd;
	} else if (inet_pton(AF_INET6, host, &a6.sin6_addr) == 1) {
		a6.sin6_family = AF_INET6;
		a6.sin6_port = htons(port);
		fd = socket(AF_INET6, SOCK_STREAM, 0);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&a6, sizeof a6) == 0)
			return fd;
	} else {
		usage("HOST must be a numeric IPv4 or IPv6 address");
	}
	die("connect to %s port %u: %s", host, port, strerror(errno));
	return -1;
}

int main(int argc, char **argv)
{
	const char *keyfile = NULL, *opts = "", *host, *dir;
	const char *vopt = "9p2000.L", *wire = "9P2000.L", *aname = "";
	char kopts[8192] = "", mopts[8192], uname[32], *copy, *o, *save;
	unsigned long port = 564, msize = 131072;
	uint8_t key[KEY_BYTES];
	int fake = 0, opt, fd;
	uint32_t afid = 1, root = 0, n_uname = geteuid();
	conn9 c;
	buf9 m, r;
	char err[512];

	if (argc == 3 && !strcmp(argv[1], "--hmac"))
		return hmac_main(argv[2]);
	while ((opt = getopt(argc, argv, "fvk:o:")) != -1) {
		switch (opt) {
		case 'f': fake = 1; break;
		case 'v': verbose = 1; break;
		case 'k': keyfile = optarg; break;
		case 'o': opts = optarg; break;
		default: usage("unknown option");
		}
	}
	if (argc - optind != 2)
		usage("want HOST and DIR");
	host = argv[optind];
	dir = argv[optind + 1];

	/* the options: some are ours, some both ours and the kernel's, the rest the kernel's */
	copy = strdup(opts);
	for (o = strtok_r(copy, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
		char *end;
		if (!strncmp(o, "port=", 5)) {
			port = strtoul(o + 5, &end, 10);
			if (*end || port == 0 || port > 65535)
				usage("port= wants a port number");
			continue;
		}
		if (!strncmp(o, "trans=", 6) || !strncmp(o, "rfdno=", 6) || !strncmp(o, "wfdno=", 6))
			usage("nmount sets trans=fd,rfdno=,wfdno= itself");
		if (!strncmp(o, "version=", 8)) {
			vopt = o + 8;
			if (!strcmp(vopt, "9p2000.L"))
				wire = "9P2000.L";
			else if (!strcmp(vopt, "9p2000.u"))
				wire = "9P2000.u";
			else if (!strcmp(vopt, "9p2000"))
				wire = "9P2000";
			else
				usage("version= wants 9p2000.L, 9p2000.u or 9p2000");
			continue;
		}
		if (!strncmp(o, "msize=", 6)) {
			msize = strtoul(o + 6, &end, 10);
			if (*end || msize < 4096 || msize > 0x7fffffff)
				usage("msize= wants a number of bytes, 4096 or more");
			continue;
		}
		if (!strncmp(o, "aname=", 6))
			aname = o + 6;
		if (strlen(kopts) + strlen(o) + 2 > sizeof kopts)
			usage("options too long");
		strcat(kopts, ",");
		strcat(kopts, o);
	}

	if (!keyfile)
		keyfile = find_key();
	load_key(keyfile, key);
	snprintf(uname, sizeof uname, n_uname == 0 ? "root" : "%u", n_uname);

	fd = connect_to(host, port);
	say("connected to %s port %lu", host, port);
	c.fd = fd;
	c.d = !strcmp(wire, "9P2000.L") ? D9P2000L : !strcmp(wire, "9P2000.u") ? D9P2000u : D9P2000;
	c.tag = 0;
	c.msize = msize;
	version(&c, wire);
	say("%s, msize %u", wire, c.msize);

	begin(&m, Tauth, next_tag(&c));
	put_le(&m, afid, 4);
	put_names(&c, &m, uname, aname, n_uname);
	if (rpc(&c, &m, &r, "Tauth", err, sizeof err) < 0) {
		/* a server that wants no authentication refuses Tauth: attach without */
		say("Tauth refused (%s): attaching without an auth fid", err);
		afid = NOFID;
	} else {
		key_conversation(&c, afid, key, uname, aname, n_uname);
		say("authenticated as %s (uid %u) with the key %s", uname, n_uname, keyfile);
	}

	begin(&m, Tattach, next_tag(&c));
	put_le(&m, root, 4);
	put_le(&m, afid, 4);
	put_names(&c, &m, uname, aname, n_uname);
	if (rpc(&c, &m, &r, "Tattach", err, sizeof err) < 0)
		die("attach to aname '%s' as %s: %s", aname, uname, err);
	if (afid != NOFID)
		clunk(&c, afid, "Tclunk of the auth fid");
	clunk(&c, root, "Tclunk of the root fid");
	say("attached to aname '%s', auth and root fids clunked", aname);

	snprintf(mopts, sizeof mopts, "trans=fd,rfdno=%d,wfdno=%d,version=%s,msize=%u%s",
		 fd, fd, vopt, c.msize, kopts);
	if (fake) {
		printf("mount -t 9p -o %s %s %s\n", mopts, host, dir);
		return 0;
	}
	/* the kernel wants the descriptor non-blocking (mount.diod does the same) */
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
		die("fcntl: %s", strerror(errno));
	say("mount -t 9p -o %s %s %s", mopts, host, dir);
	execlp("mount", "mount", "-t", "9p", "-o", mopts, host, dir, (char *)NULL);
	die("exec mount: %s", strerror(errno));
	return 1;
}
