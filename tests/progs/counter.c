/* A traceable test program for tests/test_proc.py.
 *
 * counter [NTHREADS]: calls tick() (which increments `counter`) about every
 * millisecond until `quit` becomes non-zero, then exits with status `quit`.
 * NTHREADS extra threads do the same with ttick()/tcounter.
 * Prints one line at start: "PID &counter tick &quit ttick" (hex addresses).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

volatile long counter;
volatile long tcounter;
volatile int quit;

__attribute__((noinline, used)) void tick(void)
{
	counter++;
	__asm__ volatile("" ::: "memory");
}

__attribute__((noinline, used)) void ttick(void)
{
	tcounter++;
	__asm__ volatile("" ::: "memory");
}

static void *worker(void *arg)
{
	(void)arg;
	while (!quit) {
		ttick();
		usleep(1000);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 0;
	pthread_t th;

	for (int i = 0; i < n; i++)
		pthread_create(&th, NULL, worker, NULL);
	printf("%d %p %p %p %p\n", (int)getpid(), (void *)&counter, (void *)tick,
	       (void *)&quit, (void *)ttick);
	fflush(stdout);
	while (!quit) {
		tick();
		usleep(1000);
	}
	return quit;
}
