/* A bounded reset storm: connect to a closed port on loopback as fast as
 * possible, for at most `seconds` and `max` attempts. Every attempt is
 * answered by a no-socket reset. Prints "attempts refused elapsed_s".
 *
 * With a fifth argument "churn", healthy connections instead: a listener on
 * the port, and each attempt connects, accepts, sends a byte, reads it and
 * closes both ends (no reset; the server's end closes first, so time-wait
 * stays on the fixed port). Prints "attempts completed elapsed_s". */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int churn(const struct sockaddr_in *sa, double seconds, long max)
{
	int one = 1, lfd = socket(AF_INET, SOCK_STREAM, 0);
	long n = 0, done = 0;
	double t0 = now(), t = t0;
	char b = 'x';

	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (const struct sockaddr *)sa, sizeof(*sa)) || listen(lfd, 128))
		return 1;
	while (n < max && (n % 256 || (t = now()) - t0 < seconds)) {
		int c = socket(AF_INET, SOCK_STREAM, 0), s;
		n++;
		if (c < 0 || connect(c, (const struct sockaddr *)sa, sizeof(*sa)) < 0) {
			close(c);
			continue;
		}
		s = accept(lfd, NULL, NULL);
		if (s >= 0 && write(c, &b, 1) == 1 && read(s, &b, 1) == 1)
			done++;
		close(s);
		close(c);
	}
	printf("%ld %ld %.6f\n", n, done, now() - t0);
	return 0;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 3.0;
	long max = argc > 2 ? atol(argv[2]) : 10000000;
	int port = argc > 3 ? atoi(argv[3]) : 9;
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	long n = 0, refused = 0;
	double t0 = now(), t = t0;

	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	if (argc > 4 && !strcmp(argv[4], "churn"))
		return churn(&sa, seconds, max);
	while (n < max && (n % 256 || (t = now()) - t0 < seconds)) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0)
			return 1;
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno == ECONNREFUSED)
			refused++;
		close(fd);
		n++;
	}
	printf("%ld %ld %.6f\n", n, refused, now() - t0);
	return 0;
}
