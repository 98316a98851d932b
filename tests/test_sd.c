/* systemd integration: notifications arrive on a NOTIFY_SOCKET datagram
 * socket made here (READY=1 with STATUS and MAINPID, WATCHDOG=1 at half of
 * WATCHDOG_USEC, withheld when the engine is not alive, STOPPING=1,
 * EXTEND_TIMEOUT_USEC while loading), and socket activation hands back fd 3
 * only when it is one listening TCP socket. */
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "llorch/error.h"
#include "sd.h"

static char dir[64];
static char sock_path[90];
static int notify_fd = -1;

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/llorch-test-sd-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(sock_path, sizeof sock_path, "%s/notify", dir);
    notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", sock_path);
    if (bind(notify_fd, (struct sockaddr *)&a, sizeof a) != 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    close(notify_fd);
    unlink(sock_path);
    rmdir(dir);
    return 0;
}

/* Reads every pending datagram into msgs (NUL-separated count returned). */
static int drain(char msgs[][256], int max)
{
    int n = 0;
    for (;;) {
        char buf[256];
        ssize_t r = recv(notify_fd, buf, sizeof buf - 1, 0);
        if (r < 0)
            break;
        if (n < max) {
            memcpy(msgs[n], buf, (size_t)r);
            msgs[n][r] = 0;
            n++;
        }
    }
    return n;
}

static int count(char msgs[][256], int n, const char *want)
{
    int c = 0;
    for (int i = 0; i < n; i++)
        if (!strcmp(msgs[i], want))
            c++;
    return c;
}

static void on_timer(uv_timer_t *t)
{
    uv_stop(t->loop);
}

static void run_for(uv_loop_t *loop, uint64_t ms)
{
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, on_timer, ms, 0);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void on_closed(void *ctx)
{
    *(int *)ctx = 1;
}

static void close_sd(uv_loop_t *loop, struct llorch_sd *s)
{
    int closed = 0;
    llorch_sd_close(s, on_closed, &closed);
    while (!closed)
        uv_run(loop, UV_RUN_ONCE);
}

static void sd_notifications_reach_the_notify_socket(void **state)
{
    (void)state;
    setenv("NOTIFY_SOCKET", sock_path, 1);
    setenv("WATCHDOG_USEC", "100000", 1); /* 100 ms: ping every 50 ms */
    unsetenv("WATCHDOG_PID");
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct llorch_sd *s;
    assert_int_equal(llorch_sd_new(&s, &loop, NULL), 0);
    assert_true(llorch_sd_notify_enabled(s));
    assert_int_equal(llorch_sd_watchdog_period_ms(s), 50);
    llorch_sd_loading(s, 0.5, 30000);
    llorch_sd_ready(s, "serving tiny", NULL, NULL);
    llorch_sd_ready(s, "again", NULL, NULL); /* once only */
    run_for(&loop, 230);
    llorch_sd_status(s, "serving, %d streams\nsecond line", 3);
    llorch_sd_stopping(s, "draining");
    close_sd(&loop, s);
    assert_int_equal(uv_loop_close(&loop), 0);
    char msgs[64][256];
    int n = drain(msgs, 64);
    char ready[128];
    snprintf(ready, sizeof ready, "READY=1\nSTATUS=serving tiny\nMAINPID=%lu",
             (unsigned long)getpid());
    assert_string_equal(msgs[0], "STATUS=loading model 50%\nEXTEND_TIMEOUT_USEC=30000000");
    assert_string_equal(msgs[1], ready);
    assert_int_equal(count(msgs, n, ready), 1);
    int pings = count(msgs, n, "WATCHDOG=1");
    assert_true(pings >= 3 && pings <= 7); /* at 0, 50, 100, 150, 200 ms; fewer when loaded */
    assert_int_equal(count(msgs, n, "STATUS=serving, 3 streams second line"), 1);
    assert_string_equal(msgs[n - 1], "STOPPING=1\nSTATUS=draining");
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
}

static bool not_alive(void *ctx)
{
    (*(int *)ctx)++;
    return false;
}

static void sd_watchdog_is_withheld_while_the_engine_is_stuck(void **state)
{
    (void)state;
    setenv("NOTIFY_SOCKET", sock_path, 1);
    setenv("WATCHDOG_USEC", "40000", 1);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct llorch_sd *s;
    assert_int_equal(llorch_sd_new(&s, &loop, NULL), 0);
    int asked = 0;
    llorch_sd_ready(s, "serving", not_alive, &asked);
    run_for(&loop, 100);
    close_sd(&loop, s);
    assert_int_equal(uv_loop_close(&loop), 0);
    char msgs[64][256];
    int n = drain(msgs, 64);
    assert_int_equal(count(msgs, n, "WATCHDOG=1"), 0);
    assert_true(asked >= 3);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
}

static void sd_watchdog_for_another_pid_is_ignored(void **state)
{
    (void)state;
    setenv("WATCHDOG_USEC", "100000", 1);
    char pid[32];
    snprintf(pid, sizeof pid, "%lu", (unsigned long)getpid() + 1);
    setenv("WATCHDOG_PID", pid, 1);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct llorch_sd *s;
    assert_int_equal(llorch_sd_new(&s, &loop, NULL), 0);
    assert_int_equal(llorch_sd_watchdog_period_ms(s), 0);
    close_sd(&loop, s);
    assert_int_equal(uv_loop_close(&loop), 0);
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
}

static void sd_without_systemd_everything_is_a_no_op(void **state)
{
    (void)state;
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct llorch_sd *s;
    assert_int_equal(llorch_sd_new(&s, &loop, NULL), 0);
    assert_false(llorch_sd_notify_enabled(s));
    assert_int_equal(llorch_sd_watchdog_period_ms(s), 0);
    llorch_sd_loading(s, 0.1, 1000);
    llorch_sd_ready(s, "serving", NULL, NULL);
    llorch_sd_status(s, "x");
    llorch_sd_stopping(s, "y");
    run_for(&loop, 20);
    close_sd(&loop, s);
    assert_int_equal(uv_loop_close(&loop), 0);
    char msgs[4][256];
    assert_int_equal(drain(msgs, 4), 0);
    int closed = 0;
    llorch_sd_close(NULL, on_closed, &closed);
    assert_int_equal(closed, 1);
}

/* Puts sock at fd 3 with LISTEN_FDS=n for this pid; returns the old fd 3
 * (saved) or -1. */
static int activate(int sock, const char *n)
{
    int saved = fcntl(3, F_GETFD) >= 0 ? fcntl(3, F_DUPFD_CLOEXEC, 10) : -1;
    assert_int_equal(dup2(sock, 3), 3);
    char pid[32];
    snprintf(pid, sizeof pid, "%lu", (unsigned long)getpid());
    setenv("LISTEN_PID", pid, 1);
    setenv("LISTEN_FDS", n, 1);
    return saved;
}

static void deactivate(int saved)
{
    if (saved >= 0) {
        dup2(saved, 3);
        close(saved);
    } else {
        close(3);
    }
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
}

static int tcp_listener(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(s, 4), 0);
    return s;
}

static void sd_listen_fd_returns_the_passed_tcp_socket(void **state)
{
    (void)state;
    char err[256];
    int fd = 99;
    unsetenv("LISTEN_FDS");
    assert_int_equal(llorch_sd_listen_fd(&fd, err, sizeof err), 0);
    assert_int_equal(fd, -1);
    int s = tcp_listener();
    int saved = activate(s, "1");
    assert_int_equal(llorch_sd_listen_fd(&fd, err, sizeof err), 0);
    assert_int_equal(fd, 3);
    assert_null(getenv("LISTEN_FDS")); /* not inherited by children */
    deactivate(saved);
    close(s);
}

static void sd_listen_fd_rejects_wrong_sockets(void **state)
{
    (void)state;
    char err[256];
    int fd;
    int s = tcp_listener();
    int saved = activate(s, "2");
    /* fd 4 must exist for sd_listen_fds to accept LISTEN_FDS=2 */
    int had4 = fcntl(4, F_GETFD) >= 0;
    int saved4 = had4 ? fcntl(4, F_DUPFD_CLOEXEC, 10) : -1;
    dup2(s, 4);
    assert_int_equal(llorch_sd_listen_fd(&fd, err, sizeof err), LLORCH_EINVAL);
    assert_non_null(strstr(err, "2 sockets"));
    if (saved4 >= 0) {
        dup2(saved4, 4);
        close(saved4);
    } else {
        close(4);
    }
    deactivate(saved);
    close(s);

    int u = socket(AF_INET, SOCK_DGRAM, 0);
    saved = activate(u, "1");
    assert_int_equal(llorch_sd_listen_fd(&fd, err, sizeof err), LLORCH_EINVAL);
    assert_non_null(strstr(err, "not a listening stream socket"));
    deactivate(saved);
    close(u);

    int un = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s/stream", dir);
    assert_int_equal(bind(un, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(un, 1), 0);
    saved = activate(un, "1");
    assert_int_equal(llorch_sd_listen_fd(&fd, err, sizeof err), LLORCH_EINVAL);
    assert_non_null(strstr(err, "not a TCP socket"));
    deactivate(saved);
    close(un);
    unlink(a.sun_path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sd_notifications_reach_the_notify_socket),
        cmocka_unit_test(sd_watchdog_is_withheld_while_the_engine_is_stuck),
        cmocka_unit_test(sd_watchdog_for_another_pid_is_ignored),
        cmocka_unit_test(sd_without_systemd_everything_is_a_no_op),
        cmocka_unit_test(sd_listen_fd_returns_the_passed_tcp_socket),
        cmocka_unit_test(sd_listen_fd_rejects_wrong_sockets),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
