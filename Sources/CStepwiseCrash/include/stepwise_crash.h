#ifndef STEPWISE_CRASH_H
#define STEPWISE_CRASH_H

#include <stddef.h>

/* Arms the crash marker: on SIGILL, SIGTRAP, SIGABRT, SIGSEGV, SIGBUS or SIGFPE the handler
 * writes `len` bytes of `command` (a complete RESP command, copied here) to socket `fd`, an
 * authenticated Redis connection kept for this purpose alone, then lets the previous handler (or
 * the default action) run. Returns 0, or -1 when the command is too long (max 1024 bytes).
 * Calling it again replaces the command and descriptor. */
int stepwise_crash_marker_arm(int fd, const char *command, size_t len);

/* Whether the armed connection is still open (a non-blocking peek: the server never sends on it,
 * so end-of-file or an error means it was closed, e.g. by CLIENT KILL or a Redis restart).
 * Returns 1 when open, 0 when closed or not armed. */
int stepwise_crash_marker_healthy(void);

/* Disarms the marker (before its descriptor is closed). */
void stepwise_crash_marker_disarm(void);

/* Raises SIGILL as a Swift precondition failure would: for tests of the marker. */
void stepwise_crash_now(void);

#endif
