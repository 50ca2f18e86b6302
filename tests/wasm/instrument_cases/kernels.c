/* Functions exercising the instrumenter: loops, recursion, calls, call_indirect, br_table,
   memory, i64/f64 math, and a loop that never ends. Built with clang --target=wasm32 -O2. */
#define EXPORT(name) __attribute__((export_name(name)))
#define NOINLINE __attribute__((noinline))

typedef int (*binop)(int, int);

static NOINLINE int op_add(int a, int b) { return a + b; }
static NOINLINE int op_sub(int a, int b) { return a - b; }
static NOINLINE int op_mul(int a, int b) { return a * b; }
static NOINLINE int op_xor(int a, int b) { return a ^ b; }
/* Reached only through the function table. */
static NOINLINE int op_secret(int a, int b) { return a * 1000 + b; }

static binop volatile table[5] = {op_add, op_sub, op_mul, op_xor, op_secret};

EXPORT("apply") int apply(int which, int a, int b) { return table[which % 5](a, b); }

EXPORT("get_secret_ptr") int get_secret_ptr(void) { return (int)(long)table[4]; }

EXPORT("fib") int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

EXPORT("sum_to") long long sum_to(int n) {
    volatile long long s = 0;
    for (int i = 1; i <= n; i++) s += (long long)i * i;
    return s;
}

EXPORT("collatz") int collatz(long long n) {
    int steps = 0;
    while (n != 1) {
        n = (n & 1) ? 3 * n + 1 : n / 2;
        steps++;
    }
    return steps;
}

EXPORT("classify") int classify(int x) {
    switch (x) {
        case 0: return 11;
        case 1: return 22;
        case 2: return 33;
        case 3: return 44;
        case 4: return 55;
        case 5: return 66;
        case 6: return 77;
        default: return -1;
    }
}

static double buf[10000];

EXPORT("kernel") double kernel(int n, double k) {
    double acc = 0.0;
    for (int i = 0; i < n; i++) {
        buf[i] = buf[i] * k + (double)i;
        acc += buf[i];
    }
    return acc;
}

EXPORT("reset") void reset(void) {
    for (volatile int i = 0; i < 10000; i++) buf[i] = 0.0;
}

EXPORT("mix64") long long mix64(long long x) {
    for (int r = 0; r < 8; r++) {
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdLL;
        x ^= (long long)((unsigned long long)x >> 29);
    }
    return x;
}

EXPORT("hypot_sum") double hypot_sum(int n) {
    double s = 0;
    for (int i = 1; i <= n; i++) {
        double x = i * 0.5, y = i * 0.25;
        s += __builtin_sqrt(x * x + y * y);
    }
    return s;
}

static unsigned char mem[256];

EXPORT("mem_ops") int mem_ops(int n) {
    for (int i = 0; i < 256; i++) mem[i] = (unsigned char)(i * n);
    int s = 0;
    for (int i = 0; i < 256; i += 3) s += mem[i] + ((short *)mem)[i / 2];
    return s;
}

static volatile int counter;

EXPORT("spin") void spin(void) {
    while (1) { counter++; }
}

EXPORT("spin_count") int spin_count(void) { return counter; }
