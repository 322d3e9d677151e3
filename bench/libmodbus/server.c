/*
 * Reference Modbus TCP server built on libmodbus, for bench/modbus_reference_bench.py.
 *
 *   server PORT [REGISTERS] [LIFETIME_S]
 *
 * Listens on 127.0.0.1:PORT (0 picks a free port), prints "PORT <n>" on stdout once listening,
 * then serves any number of concurrent clients from one thread with select(), as libmodbus's own
 * bandwidth-server-many-up example does. The mapping holds REGISTERS (default 60100) holding and
 * input registers filled with their address, so reads of any address below REGISTERS succeed.
 * Exits on SIGTERM/SIGINT or after LIFETIME_S seconds (default 120), so it never outlives the bench.
 *
 * Build: gcc -O2 -o server server.c $(pkg-config --cflags --libs libmodbus)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <modbus.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stopping = 0;

static void on_signal(int sig) {
    (void)sig;
    stopping = 1;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int registers = argc > 2 ? atoi(argv[2]) : 60100;
    int lifetime = argc > 3 ? atoi(argv[3]) : 120;
    if (registers < 1 || registers > 65536) {
        fprintf(stderr, "REGISTERS must be 1..65536\n");
        return 2;
    }

    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = on_signal; /* no SA_RESTART: select() returns EINTR */
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGALRM, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
    alarm((unsigned)lifetime);

    modbus_t *ctx = modbus_new_tcp("127.0.0.1", port);
    if (ctx == NULL) {
        fprintf(stderr, "modbus_new_tcp: %s\n", modbus_strerror(errno));
        return 1;
    }
    modbus_mapping_t *mapping = modbus_mapping_new(0, 0, registers, registers);
    if (mapping == NULL) {
        fprintf(stderr, "modbus_mapping_new: %s\n", modbus_strerror(errno));
        modbus_free(ctx);
        return 1;
    }
    for (int i = 0; i < registers; i++) {
        mapping->tab_registers[i] = (uint16_t)i;
        mapping->tab_input_registers[i] = (uint16_t)i;
    }

    int listener = modbus_tcp_listen(ctx, 128);
    if (listener == -1) {
        fprintf(stderr, "modbus_tcp_listen: %s\n", modbus_strerror(errno));
        modbus_mapping_free(mapping);
        modbus_free(ctx);
        return 1;
    }
    struct sockaddr_in bound;
    socklen_t bound_len = sizeof(bound);
    getsockname(listener, (struct sockaddr *)&bound, &bound_len);
    printf("PORT %d\n", ntohs(bound.sin_port));
    fflush(stdout);

    uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
    fd_set clients;
    FD_ZERO(&clients);
    FD_SET(listener, &clients);
    int fdmax = listener;
    long served = 0;

    while (!stopping) {
        fd_set ready = clients;
        if (select(fdmax + 1, &ready, NULL, NULL, NULL) == -1) {
            if (errno == EINTR) {
                continue;
            }
            perror("select");
            break;
        }
        for (int fd = 0; fd <= fdmax; fd++) {
            if (!FD_ISSET(fd, &ready)) {
                continue;
            }
            if (fd == listener) {
                struct sockaddr_in peer;
                socklen_t peer_len = sizeof(peer);
                int client = accept(listener, (struct sockaddr *)&peer, &peer_len);
                if (client == -1) {
                    continue;
                }
                if (client >= FD_SETSIZE) {
                    close(client);
                    continue;
                }
                FD_SET(client, &clients);
                if (client > fdmax) {
                    fdmax = client;
                }
                continue;
            }
            modbus_set_socket(ctx, fd);
            int length = modbus_receive(ctx, query);
            if (length > 0) {
                modbus_reply(ctx, query, length, mapping);
                served++;
            } else if (length == -1) {
                /* connection closed by the client or a framing error: drop only this client */
                close(fd);
                FD_CLR(fd, &clients);
                if (fd == fdmax) {
                    while (fdmax > listener && !FD_ISSET(fdmax, &clients)) {
                        fdmax--;
                    }
                }
            }
        }
    }

    for (int fd = 0; fd <= fdmax; fd++) {
        if (FD_ISSET(fd, &clients)) {
            close(fd);
        }
    }
    fprintf(stderr, "served %ld requests\n", served);
    modbus_mapping_free(mapping);
    modbus_free(ctx);
    return 0;
}
