/* A target for the group debugger (examples/debugger.py, tests/test_group.py).
 *
 * dbg SEED: calls step() about every millisecond; step() sets `value` to
 * SEED * 1000 + 7.  Prints one line at start: "PID &value step" (hex).
 * A breakpoint at step() stops the process with `value` holding its class.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

volatile long value;
volatile long iterations;
static long seed;

__attribute__((noinline, used)) void step(void)
{
	iterations++;
	value = seed * 1000 + 7;
	__asm__ volatile("" ::: "memory");
}

int main(int argc, char **argv)
{
	seed = argc > 1 ? atol(argv[1]) : 0;
	value = -1;
	printf("%d %p %p\n", (int)getpid(), (void *)&value, (void *)step);
	fflush(stdout);
	for (;;) {
		step();
		usleep(1000);
	}
	return 0;
}
