#ifndef CHIREDIS_SHIM_H
#define CHIREDIS_SHIM_H

#include <hiredis/hiredis.h>
#include <sys/prctl.h>
#include <sys/time.h>

/* Small helpers so Swift never touches hiredis struct layout or fixed-size C arrays directly. */

static inline struct timeval chiredis_timeval_ms(long long ms) {
    struct timeval tv;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
    return tv;
}

static inline const char *chiredis_errstr(const redisContext *c) { return c->errstr; }
static inline int chiredis_err(const redisContext *c) { return c->err; }
static inline int chiredis_fd(const redisContext *c) { return c->fd; }

/* redisGetReply with a typed out-parameter; returns NULL and leaves the error on the context on failure. */
static inline redisReply *chiredis_get_reply(redisContext *c) {
    void *reply = NULL;
    if (redisGetReply(c, &reply) != REDIS_OK) {
        return NULL;
    }
    return (redisReply *)reply;
}

/* Names the calling thread (15 bytes shown), as `top -H` and /proc/<pid>/task/<tid>/comm show it. */
static inline void chiredis_name_this_thread(const char *name) { (void)prctl(PR_SET_NAME, name, 0, 0, 0); }

#endif
