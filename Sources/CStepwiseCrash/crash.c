#include "stepwise_crash.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Written before the handlers are installed and only read by them afterwards; the handler uses
 * write(2) and sigaction(2)/raise(3) only, all async-signal-safe. */
static char marker_command[1024];
static size_t marker_len;
static volatile sig_atomic_t marker_fd = -1;
static volatile sig_atomic_t marker_written;

static const int crash_signals[] = {SIGILL, SIGTRAP, SIGABRT, SIGSEGV, SIGBUS, SIGFPE};
#define CRASH_SIGNAL_COUNT (sizeof(crash_signals) / sizeof(crash_signals[0]))
static struct sigaction previous[CRASH_SIGNAL_COUNT];

static void crash_handler(int sig, siginfo_t *info, void *uctx) {
    int saved = errno;
    if (!marker_written && marker_fd >= 0) {
        marker_written = 1;
        size_t off = 0;
        while (off < marker_len) {
            ssize_t n = write(marker_fd, marker_command + off, marker_len - off);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            off += (size_t)n;
        }
    }
    for (size_t i = 0; i < CRASH_SIGNAL_COUNT; i++) {
        if (crash_signals[i] != sig) continue;
        struct sigaction *old = &previous[i];
        if ((old->sa_flags & SA_SIGINFO) && old->sa_sigaction != NULL) {
            errno = saved;
            old->sa_sigaction(sig, info, uctx);
            return;
        }
        if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN && old->sa_handler != NULL) {
            errno = saved;
            old->sa_handler(sig);
            return;
        }
    }
    /* Default action: die by this signal, as without the marker. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    raise(sig);
}

int stepwise_crash_marker_arm(int fd, const char *command, size_t len) {
    if (len > sizeof marker_command) return -1;
    marker_fd = -1;
    memcpy(marker_command, command, len);
    marker_len = len;
    marker_written = 0;
    marker_fd = fd;
    static int installed;
    if (!installed) {
        installed = 1;
        for (size_t i = 0; i < CRASH_SIGNAL_COUNT; i++) {
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_sigaction = crash_handler;
            sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
            sigemptyset(&sa.sa_mask);
            sigaction(crash_signals[i], &sa, &previous[i]);
        }
    }
    return 0;
}

int stepwise_crash_marker_healthy(void) {
    int fd = marker_fd;
    if (fd < 0) return 0;
    char byte;
    ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) return 1;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 1;
    return 0;
}

void stepwise_crash_marker_disarm(void) { marker_fd = -1; }

void stepwise_crash_now(void) { raise(SIGILL); }
