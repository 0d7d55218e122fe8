/*
 * t9: small static helper run inside the test VM for the checks busybox
 * cannot do (locks, xattrs, concurrent pwrite, unlink-while-open, sockets).
 *
 * Every subcommand prints one line and exits 0 on success; on failure it
 * prints "FAIL <what>: <ERRNO_NAME> (<strerror>)" and exits 1, so the battery
 * can match the errno name when a dialect is expected to refuse an operation.
 *
 * Built on the host with: gcc -static -O2 -o t9 t9.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/sysmacros.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static const char *ename(int e)
{
	const char *n = strerrorname_np(e);
	return n ? n : "E?";
}

static void die(const char *what)
{
	int e = errno;
	printf("FAIL %s: %s (%s)\n", what, ename(e), strerror(e));
	fflush(stdout);
	exit(1);
}

static void bad(const char *msg)
{
	printf("FAIL %s\n", msg);
	fflush(stdout);
	exit(1);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Locking: the parent takes the lock, a child first fails a non-blocking
 * attempt, then blocks; the parent releases after HOLD seconds; the child
 * must get the lock, and only after about HOLD seconds. */
#define HOLD 0.6

static int lk(int fd, int cmd, short type)
{
	struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
	return fcntl(fd, cmd, &fl);
}

static int do_lock(const char *kind, const char *path)
{
	int use_flock = strcmp(kind, "flock") == 0;
	int fd = open(path, O_RDWR | O_CREAT, 0644);
	int pfd[2];
	if (fd < 0)
		die("open");
	if (use_flock ? flock(fd, LOCK_EX) : lk(fd, F_SETLK, F_WRLCK))
		die(use_flock ? "flock LOCK_EX" : "fcntl F_SETLK");
	if (pipe(pfd))
		die("pipe");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		char msg[200];
		int cfd = open(path, O_RDWR);
		if (cfd < 0)
			die("child open");
		int r = use_flock ? flock(cfd, LOCK_EX | LOCK_NB) : lk(cfd, F_SETLK, F_WRLCK);
		if (r == 0) {
			snprintf(msg, sizeof msg, "second non-blocking lock was granted while held");
			write(pfd[1], msg, strlen(msg));
			_exit(1);
		}
		if (errno != EAGAIN && errno != EACCES && errno != EWOULDBLOCK) {
			snprintf(msg, sizeof msg, "non-blocking attempt: %s", ename(errno));
			write(pfd[1], msg, strlen(msg));
			_exit(1);
		}
		double t0 = now();
		write(pfd[1], "W", 1); /* tell the parent we are about to block */
		r = use_flock ? flock(cfd, LOCK_EX) : lk(cfd, F_SETLKW, F_WRLCK);
		double waited = now() - t0;
		if (r) {
			snprintf(msg, sizeof msg, "blocking lock: %s", ename(errno));
			write(pfd[1], msg, strlen(msg));
			_exit(1);
		}
		if (waited < HOLD / 2) {
			snprintf(msg, sizeof msg, "blocking lock returned after %.2fs, before release", waited);
			write(pfd[1], msg, strlen(msg));
			_exit(1);
		}
		snprintf(msg, sizeof msg, "OK waited %.2fs", waited);
		write(pfd[1], msg, strlen(msg));
		_exit(0);
	}
	close(pfd[1]);
	char c;
	if (read(pfd[0], &c, 1) != 1)
		bad("child died before blocking");
	if (c != 'W') {
		char buf[256] = {c};
		read(pfd[0], buf + 1, sizeof buf - 2);
		waitpid(pid, NULL, 0);
		printf("FAIL %s\n", buf);
		return 1;
	}
	usleep((useconds_t)(HOLD * 1e6));
	if (use_flock ? flock(fd, LOCK_UN) : lk(fd, F_SETLK, F_UNLCK))
		die("unlock");
	char buf[256] = {0};
	int n = 0, r;
	while ((r = read(pfd[0], buf + n, sizeof buf - 1 - n)) > 0)
		n += r;
	int st;
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st)) {
		printf("FAIL %s\n", buf);
		return 1;
	}
	printf("%s lock: %s\n", kind, buf);
	return 0;
}

/* Fcntl lock query: F_GETLK from a child sees the parent's lock. */
static int do_getlk(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT, 0644);
	if (fd < 0)
		die("open");
	if (lk(fd, F_SETLK, F_RDLCK))
		die("F_SETLK F_RDLCK");
	pid_t pid = fork();
	if (pid == 0) {
		int cfd = open(path, O_RDWR);
		struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
		if (fcntl(cfd, F_GETLK, &fl))
			die("F_GETLK");
		if (fl.l_type != F_RDLCK || fl.l_pid != getppid()) {
			printf("FAIL F_GETLK type=%d pid=%d\n", fl.l_type, fl.l_pid);
			_exit(1);
		}
		_exit(0);
	}
	int st;
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		return 1;
	printf("getlk OK\n");
	return 0;
}

/* Concurrent writers: N processes write disjoint chunks of one file with
 * pwrite in small pieces, interleaved; the parent checks every byte. */
static int do_pwrite(const char *path, int nw, int chunk)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open");
	close(fd);
	for (int i = 0; i < nw; i++) {
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0) {
			int wfd = open(path, O_WRONLY);
			if (wfd < 0)
				die("child open");
			char piece[4096];
			memset(piece, 'A' + i, sizeof piece);
			for (int off = 0; off < chunk; off += sizeof piece) {
				int len = chunk - off < (int)sizeof piece ? chunk - off : (int)sizeof piece;
				if (pwrite(wfd, piece, len, (off_t)i * chunk + off) != len)
					die("pwrite");
				if ((off / 4096) % 4 == 0)
					sched_yield();
			}
			if (close(wfd))
				die("close");
			_exit(0);
		}
	}
	int st, failed = 0;
	while (wait(&st) > 0)
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			failed++;
	if (failed)
		bad("a writer failed");
	fd = open(path, O_RDONLY);
	if (fd < 0)
		die("reopen");
	struct stat sb;
	if (fstat(fd, &sb))
		die("fstat");
	if (sb.st_size != (off_t)nw * chunk) {
		printf("FAIL size %lld, want %lld\n", (long long)sb.st_size, (long long)nw * chunk);
		return 1;
	}
	char *buf = malloc(chunk);
	for (int i = 0; i < nw; i++) {
		if (pread(fd, buf, chunk, (off_t)i * chunk) != chunk)
			die("pread");
		for (int j = 0; j < chunk; j++)
			if (buf[j] != 'A' + i) {
				printf("FAIL byte %lld is %d, want %d\n", (long long)i * chunk + j, buf[j], 'A' + i);
				return 1;
			}
	}
	printf("pwrite OK %d writers x %d bytes\n", nw, chunk);
	return 0;
}

/* A file unlinked while open stays usable through its descriptor. */
static int do_unlinkopen(const char *path, int fstat_optional)
{
	const char *data = "still here after unlink\n";
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open");
	if (write(fd, data, strlen(data)) != (ssize_t)strlen(data))
		die("write");
	if (unlink(path))
		die("unlink");
	struct stat sb;
	if (stat(path, &sb) == 0 || errno != ENOENT)
		bad("path still visible after unlink");
	char buf[128] = {0};
	if (pread(fd, buf, sizeof buf - 1, 0) != (ssize_t)strlen(data))
		die("pread after unlink");
	if (strcmp(buf, data))
		bad("content changed after unlink");
	if (pwrite(fd, "more", 4, strlen(data)) != 4)
		die("pwrite after unlink");
	if (fstat(fd, &sb)) {
		if (!fstat_optional)
			die("fstat after unlink");
		printf("note: fstat after unlink: %s (tolerated)\n", ename(errno));
	} else if (sb.st_size != (off_t)strlen(data) + 4) {
		printf("FAIL fstat size %lld\n", (long long)sb.st_size);
		return 1;
	}
	if (ftruncate(fd, 5))
		die("ftruncate after unlink");
	memset(buf, 0, sizeof buf);
	if (pread(fd, buf, sizeof buf - 1, 0) != 5)
		die("pread after ftruncate");
	if (close(fd))
		die("close");
	printf("unlinkopen OK\n");
	return 0;
}

/* user.* xattrs: set, get, list, replace, remove. Leaves user.keep = "kept"
 * for the host to verify. */
static int do_xattr(const char *path)
{
	char buf[1024];
	ssize_t n;
	if (setxattr(path, "user.nine", "value1", 6, 0))
		die("setxattr");
	n = getxattr(path, "user.nine", buf, sizeof buf);
	if (n < 0)
		die("getxattr");
	if (n != 6 || memcmp(buf, "value1", 6))
		bad("getxattr returned the wrong value");
	n = getxattr(path, "user.nine", NULL, 0);
	if (n != 6)
		bad("getxattr size query wrong");
	if (setxattr(path, "user.nine", "v2", 2, XATTR_CREATE) == 0 || errno != EEXIST)
		bad("XATTR_CREATE on existing name did not give EEXIST");
	if (setxattr(path, "user.nine", "value-two", 9, XATTR_REPLACE))
		die("setxattr XATTR_REPLACE");
	if (setxattr(path, "user.keep", "kept", 4, 0))
		die("setxattr user.keep");
	n = listxattr(path, buf, sizeof buf);
	if (n < 0)
		die("listxattr");
	int seen = 0;
	for (char *p = buf; p < buf + n; p += strlen(p) + 1)
		seen |= (strcmp(p, "user.nine") == 0) | (strcmp(p, "user.keep") == 0) << 1;
	if (seen != 3)
		bad("listxattr misses a name");
	if (removexattr(path, "user.nine"))
		die("removexattr");
	if (getxattr(path, "user.nine", buf, sizeof buf) >= 0 || errno != ENODATA) {
		printf("FAIL getxattr after remove: %s\n", ename(errno));
		return 1;
	}
	if (removexattr(path, "user.nine") == 0 || errno != ENODATA)
		bad("removexattr of a missing name did not give ENODATA");
	printf("xattr OK\n");
	return 0;
}

static int do_mksock(const char *path)
{
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (s < 0)
		die("socket");
	strncpy(sa.sun_path, path, sizeof sa.sun_path - 1);
	if (bind(s, (struct sockaddr *)&sa, sizeof sa))
		die("bind");
	printf("mksock OK\n");
	return 0;
}

/* stat a path and print "type mode nlink uid gid size rdev_major rdev_minor". */
static int do_stat(const char *path)
{
	struct stat sb;
	if (lstat(path, &sb))
		die("lstat");
	const char *t = S_ISREG(sb.st_mode) ? "reg" : S_ISDIR(sb.st_mode) ? "dir" : S_ISLNK(sb.st_mode) ? "lnk"
		: S_ISFIFO(sb.st_mode) ? "fifo" : S_ISSOCK(sb.st_mode) ? "sock" : S_ISCHR(sb.st_mode) ? "chr"
		: S_ISBLK(sb.st_mode) ? "blk" : "unknown";
	printf("%s %o %lu %u %u %lld %u %u\n", t, sb.st_mode & 07777, (unsigned long)sb.st_nlink, sb.st_uid,
	       sb.st_gid, (long long)sb.st_size, major(sb.st_rdev), minor(sb.st_rdev));
	return 0;
}

/* Run a command-like single syscall and report its errno name: used to
 * check that a dialect refuses an operation with the expected error. */
static int do_try(int argc, char **argv)
{
	int r = -1;
	if (!strcmp(argv[0], "symlink") && argc == 3)
		r = symlink(argv[1], argv[2]);
	else if (!strcmp(argv[0], "rename") && argc == 3)
		r = rename(argv[1], argv[2]);
	else if (!strcmp(argv[0], "link") && argc == 3)
		r = link(argv[1], argv[2]);
	else if (!strcmp(argv[0], "mkfifo") && argc == 2)
		r = mkfifo(argv[1], 0644);
	else if (!strcmp(argv[0], "mknod-c") && argc == 2)
		r = mknod(argv[1], S_IFCHR | 0644, makedev(1, 3));
	else if (!strcmp(argv[0], "setxattr") && argc == 2)
		r = setxattr(argv[1], "user.nine", "v", 1, 0);
	else if (!strcmp(argv[0], "chown") && argc == 2)
		r = chown(argv[1], 1234, 5678);
	else
		bad("usage: try symlink|rename|link|mkfifo|mknod-c|setxattr|chown ARGS");
	printf("%s\n", r == 0 ? "OK" : ename(errno));
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 3 && (!strcmp(argv[1], "flock") || !strcmp(argv[1], "fcntl")))
		return do_lock(argv[1], argv[2]);
	if (argc == 3 && !strcmp(argv[1], "getlk"))
		return do_getlk(argv[2]);
	if (argc == 5 && !strcmp(argv[1], "pwrite"))
		return do_pwrite(argv[2], atoi(argv[3]), atoi(argv[4]));
	if ((argc == 3 || argc == 4) && !strcmp(argv[1], "unlinkopen"))
		return do_unlinkopen(argv[2], argc == 4 && !strcmp(argv[3], "fstat-optional"));
	if (argc == 3 && !strcmp(argv[1], "xattr"))
		return do_xattr(argv[2]);
	if (argc == 3 && !strcmp(argv[1], "mksock"))
		return do_mksock(argv[2]);
	if (argc == 3 && !strcmp(argv[1], "stat"))
		return do_stat(argv[2]);
	if (argc >= 3 && !strcmp(argv[1], "try"))
		return do_try(argc - 2, argv + 2);
	fprintf(stderr, "usage: t9 flock|fcntl|getlk|pwrite FILE N SIZE|unlinkopen FILE [fstat-optional]|"
			"xattr|mksock|stat|try OP ARGS\n");
	return 2;
}
