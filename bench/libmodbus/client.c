/*
 * Modbus TCP load client built on libmodbus, for bench/modbus_reference_bench.py.
 *
 *   client PORT SECONDS CONNECTIONS [START] [SPAN] [COUNT] [UNIT]
 *
 * Opens CONNECTIONS connections to 127.0.0.1:PORT, one thread each, and on each sends FC04 (read
 * input registers) requests of COUNT registers (default 125) back to back, one in flight per
 * connection, for SECONDS. Request n of a connection reads address START + (n * COUNT) % SPAN
 * (defaults 100 and 59875), so every server sees the same request stream. Every thread connects
 * first; the clock starts when all are connected. Prints one JSON object on stdout:
 * requests, errors, elapsed_s, p50/p99/max latency in microseconds, and the fewest/most requests
 * served on one connection (starvation shows as a small minimum).
 *
 * Build: gcc -O2 -pthread -o client client.c $(pkg-config --cflags --libs libmodbus)
 */
#include <errno.h>
#include <modbus.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    int port;
    int index;
    int start;
    int span;
    int count;
    int unit;
    double seconds;
    pthread_barrier_t *barrier;
    int connected;
    long requests;
    long errors;
    char first_error[128];
    double *latencies_us;
    size_t latency_len;
    size_t latency_cap;
} worker_t;

static double deadline;
static double started;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void record(worker_t *w, double latency_us) {
    if (w->latency_len == w->latency_cap) {
        w->latency_cap = w->latency_cap ? w->latency_cap * 2 : 65536;
        double *grown = realloc(w->latencies_us, w->latency_cap * sizeof(double));
        if (grown == NULL) {
            return;
        }
        w->latencies_us = grown;
    }
    w->latencies_us[w->latency_len++] = latency_us;
}

static void *run(void *arg) {
    worker_t *w = arg;
    uint16_t registers[MODBUS_MAX_READ_REGISTERS];
    modbus_t *ctx = modbus_new_tcp("127.0.0.1", w->port);
    if (ctx != NULL) {
        modbus_set_slave(ctx, w->unit);
        modbus_set_response_timeout(ctx, 5, 0);
        w->connected = modbus_connect(ctx) == 0;
        if (!w->connected) {
            snprintf(w->first_error, sizeof(w->first_error), "connect: %s", modbus_strerror(errno));
        }
    }
    pthread_barrier_wait(w->barrier); /* the main thread sets the deadline while we wait */
    pthread_barrier_wait(w->barrier);
    if (ctx == NULL || !w->connected) {
        if (ctx != NULL) {
            modbus_free(ctx);
        }
        return NULL;
    }
    long n = w->index; /* stagger the connections over the address space */
    while (now() < deadline) {
        int address = w->start + (int)((n * w->count) % w->span);
        n++;
        double t0 = now();
        int got = modbus_read_input_registers(ctx, address, w->count, registers);
        double t1 = now();
        if (got == w->count) {
            w->requests++;
            record(w, (t1 - t0) * 1e6);
        } else {
            if (w->errors == 0) {
                snprintf(w->first_error, sizeof(w->first_error), "read %d at %d: %s", got, address,
                         modbus_strerror(errno));
            }
            w->errors++;
            if (errno == EBADF || errno == ECONNRESET || errno == EPIPE) {
                modbus_close(ctx);
                if (modbus_connect(ctx) != 0) {
                    break;
                }
            }
        }
    }
    modbus_close(ctx);
    modbus_free(ctx);
    return NULL;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s PORT SECONDS CONNECTIONS [START] [SPAN] [COUNT] [UNIT]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    double seconds = atof(argv[2]);
    int connections = atoi(argv[3]);
    int start = argc > 4 ? atoi(argv[4]) : 100;
    int span = argc > 5 ? atoi(argv[5]) : 59875;
    int count = argc > 6 ? atoi(argv[6]) : 125;
    int unit = argc > 7 ? atoi(argv[7]) : 1;
    if (connections < 1 || span < 1 || count < 1 || count > MODBUS_MAX_READ_REGISTERS) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }

    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, (unsigned)connections + 1);
    worker_t *workers = calloc((size_t)connections, sizeof(worker_t));
    pthread_t *threads = calloc((size_t)connections, sizeof(pthread_t));
    for (int i = 0; i < connections; i++) {
        workers[i] = (worker_t){.port = port, .index = i, .start = start, .span = span, .count = count,
                                .unit = unit, .seconds = seconds, .barrier = &barrier};
        pthread_create(&threads[i], NULL, run, &workers[i]);
    }
    pthread_barrier_wait(&barrier); /* all connected (or failed) */
    started = now();
    deadline = started + seconds;
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < connections; i++) {
        pthread_join(threads[i], NULL);
    }
    double elapsed = now() - started;

    long requests = 0, errors = 0, min_per = -1, max_per = 0;
    int connected = 0;
    size_t total = 0;
    const char *first_error = "";
    for (int i = 0; i < connections; i++) {
        requests += workers[i].requests;
        errors += workers[i].errors;
        connected += workers[i].connected;
        total += workers[i].latency_len;
        if (min_per < 0 || workers[i].requests < min_per) {
            min_per = workers[i].requests;
        }
        if (workers[i].requests > max_per) {
            max_per = workers[i].requests;
        }
        if (!*first_error && workers[i].first_error[0]) {
            first_error = workers[i].first_error;
        }
    }
    double *all = malloc((total ? total : 1) * sizeof(double));
    size_t at = 0;
    for (int i = 0; i < connections; i++) {
        memcpy(all + at, workers[i].latencies_us, workers[i].latency_len * sizeof(double));
        at += workers[i].latency_len;
        free(workers[i].latencies_us);
    }
    qsort(all, total, sizeof(double), compare);
    double p50 = total ? all[total / 2] : 0.0;
    double p99 = total ? all[(size_t)((double)total * 0.99)] : 0.0;
    double worst = total ? all[total - 1] : 0.0;

    printf("{\"connections\": %d, \"connected\": %d, \"elapsed_s\": %.3f, \"requests\": %ld, \"errors\": %ld, "
           "\"registers_per_request\": %d, \"p50_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f, "
           "\"min_per_connection\": %ld, \"max_per_connection\": %ld, \"first_error\": \"%s\"}\n",
           connections, connected, elapsed, requests, errors, count, p50, p99, worst, min_per, max_per,
           first_error);
    free(all);
    free(workers);
    free(threads);
    pthread_barrier_destroy(&barrier);
    return 0;
}
