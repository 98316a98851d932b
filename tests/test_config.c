/* Configuration: every option as flag, env and file key; precedence flag >
 * env > file > default; errors name the option (and file:line) and the
 * accepted range; --help lists everything; the API key file is checked. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "llorch/config.h"
#include "llorch/error.h"

#define MAXARGS 32

static char tmpdir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/llorch-test-config-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes text to tmpdir/name with mode and returns the path (static). */
static const char *write_file(const char *name, const char *text, mode_t mode)
{
    static char path[2][512];
    static int which;
    char *p = path[which++ & 1];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(chmod(p, mode), 0);
    return p;
}

/* args and env are NULL-terminated lists of strings. */
static int parse(struct config *c, const char *const *args, const char *const *env, char *err,
                 size_t errlen)
{
    char *argv[MAXARGS + 1] = {"llorch-cpud"};
    int argc = 1;
    for (; args && args[argc - 1]; argc++)
        argv[argc] = (char *)args[argc - 1];
    argv[argc] = NULL;
    char *envp[MAXARGS + 1] = {0};
    for (int i = 0; env && env[i]; i++)
        envp[i] = (char *)env[i];
    bool exit_now = true;
    int r = config_parse(c, argc, argv, envp, &exit_now, err, errlen);
    assert_false(exit_now);
    return r;
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static void config_defaults_apply_when_nothing_is_given(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, NULL, NULL, err, sizeof err), 0);
    char host[128] = "";
    gethostname(host, sizeof host - 1);
    assert_string_equal(c.worker_id, host);
    assert_string_equal(c.host, "127.0.0.1");
    assert_int_equal(c.port, 8080);
    assert_int_equal(c.max_batch, 32);
    assert_int_equal(c.max_queue, 256);
    assert_int_equal(c.step_tokens, 512);
    assert_int_equal(c.kv_cache_mb, 1024);
    assert_int_equal(c.max_body_bytes, 2 * 1024 * 1024);
    assert_int_equal(c.sse_outbox_bytes, 1024 * 1024);
    assert_int_equal(c.sse_sndbuf_bytes, 0);
    assert_int_equal(c.ping_interval_ms, 15000);
    assert_int_equal(c.heartbeat_interval_s, 30);
    assert_int_equal(c.callback_max_retries, 8);
    assert_int_equal(c.callback_backoff_ms, 500);
    assert_int_equal(c.dtype, LLORCH_DTYPE_AUTO);
    assert_int_equal(c.kv_type, LLORCH_KV_AUTO);
    assert_int_equal(c.log_format, LOG_FORMAT_JSON);
    assert_int_equal(c.log_level, LOG_LEVEL_INFO);
    assert_false(c.cpu_pinning);
    assert_string_equal(c.model, "");
    assert_string_equal(c.api_key, "");
    assert_true(config_callback_is_test_mode(&c));
}

static void config_flag_accepts_space_and_equals_forms(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c,
                           ARGS("--max-batch", "7", "--max-queue=9", "--model", "/m/x.gguf",
                                "--dtype=f32", "--kv", "bf16", "--port=0"),
                           NULL, err, sizeof err),
                     0);
    assert_int_equal(c.max_batch, 7);
    assert_int_equal(c.max_queue, 9);
    assert_string_equal(c.model, "/m/x.gguf");
    assert_int_equal(c.dtype, LLORCH_DTYPE_F32);
    assert_int_equal(c.kv_type, LLORCH_KV_BF16);
    assert_int_equal(c.port, 0);
}

static void config_model_ref_defaults_to_file_name(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, ARGS("--model", "/models/tiny.gguf"), NULL, err, sizeof err), 0);
    assert_string_equal(c.model_ref, "tiny.gguf");
    assert_int_equal(
        parse(&c, ARGS("--model", "tiny.gguf", "--model-ref", "hf:a/b"), NULL, err, sizeof err), 0);
    assert_string_equal(c.model_ref, "hf:a/b");
}

static void config_env_sets_every_kind_of_field(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, NULL,
                           ARGS("LLORCH_MAX_BATCH=5", "LLORCH_WORKER_ID=w9", "LLORCH_CPU_PINNING=1",
                                "LLORCH_LOG_FORMAT=text", "LLORCH_MAX_BODY_BYTES=4096",
                                "LLORCH_SHARED=/ignored", "PATH=/bin"),
                           err, sizeof err),
                     0);
    assert_int_equal(c.max_batch, 5);
    assert_string_equal(c.worker_id, "w9");
    assert_true(c.cpu_pinning);
    assert_int_equal(c.log_format, LOG_FORMAT_TEXT);
    assert_int_equal(c.max_body_bytes, 4096);
}

static void config_itl_target_from_flag_env_and_file_with_default_zero(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, NULL, NULL, err, sizeof err), 0);
    assert_int_equal(c.itl_target_ms, 0); /* 0: twice the measured decode step */
    assert_int_equal(parse(&c, ARGS("--itl-target-ms", "250"), NULL, err, sizeof err), 0);
    assert_int_equal(c.itl_target_ms, 250);
    assert_int_equal(parse(&c, NULL, ARGS("LLORCH_ITL_TARGET_MS=300"), err, sizeof err), 0);
    assert_int_equal(c.itl_target_ms, 300);
    const char *path = write_file("itl.conf", "itl_target_ms = 400\n", 0644);
    assert_int_equal(parse(&c, ARGS("--config", path), NULL, err, sizeof err), 0);
    assert_int_equal(c.itl_target_ms, 400);
    assert_int_not_equal(parse(&c, ARGS("--itl-target-ms", "600001"), NULL, err, sizeof err), 0);
    assert_non_null(strstr(err, "itl-target-ms"));
}

static void config_itl_target_pct_from_flag_env_and_file_with_default_200(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, NULL, NULL, err, sizeof err), 0);
    assert_int_equal(c.itl_target_pct, 200);
    assert_int_equal(parse(&c, ARGS("--itl-target-pct", "125"), NULL, err, sizeof err), 0);
    assert_int_equal(c.itl_target_pct, 125);
    assert_int_equal(parse(&c, NULL, ARGS("LLORCH_ITL_TARGET_PCT=300"), err, sizeof err), 0);
    assert_int_equal(c.itl_target_pct, 300);
    const char *path = write_file("itlpct.conf", "itl_target_pct = 150\n", 0644);
    assert_int_equal(parse(&c, ARGS("--config", path), NULL, err, sizeof err), 0);
    assert_int_equal(c.itl_target_pct, 150);
    /* below 100 % a step with a prompt chunk could never fit */
    assert_int_not_equal(parse(&c, ARGS("--itl-target-pct", "99"), NULL, err, sizeof err), 0);
    assert_non_null(strstr(err, "itl-target-pct"));
}

static void config_pipeline_groups_from_flag_env_and_file_with_default_auto(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, NULL, NULL, err, sizeof err), 0);
    assert_int_equal(c.pipeline_groups, 0); /* 0: one group per stage */
    assert_int_equal(parse(&c, ARGS("--pipeline-groups", "1"), NULL, err, sizeof err), 0);
    assert_int_equal(c.pipeline_groups, 1);
    assert_int_equal(parse(&c, NULL, ARGS("LLORCH_PIPELINE_GROUPS=3"), err, sizeof err), 0);
    assert_int_equal(c.pipeline_groups, 3);
    const char *path = write_file("groups.conf", "pipeline_groups = 64\n", 0644);
    assert_int_equal(parse(&c, ARGS("--config", path), NULL, err, sizeof err), 0);
    assert_int_equal(c.pipeline_groups, 64);
    /* the pipeline's slot ring holds at most PIPELINE_MAX_STAGES groups */
    assert_int_not_equal(parse(&c, ARGS("--pipeline-groups", "65"), NULL, err, sizeof err), 0);
    assert_non_null(strstr(err, "pipeline-groups"));
    assert_non_null(strstr(err, "0..64"));
}

static void config_stage_timeout_defaults_to_10_s_and_0_turns_it_off(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, NULL, NULL, err, sizeof err), 0);
    assert_int_equal(c.stage_timeout_ms, 10000);
    assert_int_equal(parse(&c, ARGS("--stage-timeout-ms", "0"), NULL, err, sizeof err), 0);
    assert_int_equal(c.stage_timeout_ms, 0);
    assert_int_equal(parse(&c, NULL, ARGS("LLORCH_STAGE_TIMEOUT_MS=2000"), err, sizeof err), 0);
    assert_int_equal(c.stage_timeout_ms, 2000);
    assert_int_not_equal(parse(&c, ARGS("--stage-timeout-ms", "3600001"), NULL, err, sizeof err),
                         0);
    assert_non_null(strstr(err, "stage-timeout-ms"));
}

static void config_file_sets_fields_skipping_comments_and_blanks(void **state)
{
    (void)state;
    const char *path = write_file("a.conf",
                                  "# a comment\n"
                                  "\n"
                                  "   \t\n"
                                  "max_batch = 12\n"
                                  "  worker_id=\"w x\"  # trailing\n"
                                  "callback_url = http://pm:9200/ready#frag\n"
                                  "advertise_url = http://w1:8080\n"
                                  "cpu_pinning = yes\n"
                                  "log_level = debug   # lower\n"
                                  "kv_cache_mb = 64",
                                  0644);
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, ARGS("--config", path), NULL, err, sizeof err), 0);
    assert_int_equal(c.max_batch, 12);
    assert_string_equal(c.worker_id, "w x");
    assert_string_equal(c.callback_url, "http://pm:9200/ready#frag");
    assert_string_equal(c.advertise_url, "http://w1:8080");
    assert_true(c.cpu_pinning);
    assert_int_equal(c.log_level, LOG_LEVEL_DEBUG);
    assert_int_equal(c.kv_cache_mb, 64);
    assert_string_equal(c.config_file, path);
}

static void config_precedence_is_flag_then_env_then_file(void **state)
{
    (void)state;
    const char *path =
        write_file("p.conf", "max_batch = 1\nmax_queue = 1\nstep_tokens = 1\n", 0644);
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, ARGS("--max-batch", "3"),
                           ARGS("LLORCH_CONFIG=", "LLORCH_MAX_BATCH=2", "LLORCH_MAX_QUEUE=2"), err,
                           sizeof err),
                     0);
    assert_int_equal(c.max_batch, 3);
    assert_int_equal(c.max_queue, 2);
    char envc[600];
    snprintf(envc, sizeof envc, "LLORCH_CONFIG=%s", path);
    assert_int_equal(parse(&c, ARGS("--max-batch", "3"),
                           ARGS(envc, "LLORCH_MAX_BATCH=2", "LLORCH_MAX_QUEUE=2"), err, sizeof err),
                     0);
    assert_int_equal(c.max_batch, 3);      /* flag */
    assert_int_equal(c.max_queue, 2);      /* env */
    assert_int_equal(c.step_tokens, 1);    /* file */
    assert_int_equal(c.kv_cache_mb, 1024); /* default */
}

static void config_file_unknown_key_names_file_and_line(void **state)
{
    (void)state;
    const char *path = write_file("u.conf", "max_batch = 2\n# c\nmax_bach = 3\n", 0644);
    struct config c;
    char err[512], want[600];
    assert_int_equal(parse(&c, ARGS("--config", path), NULL, err, sizeof err), LLORCH_EINVAL);
    snprintf(want, sizeof want, "%s:3:", path);
    assert_non_null(strstr(err, want));
    assert_non_null(strstr(err, "max_bach"));
}

static void config_file_bad_value_names_file_line_option_and_range(void **state)
{
    (void)state;
    const char *path = write_file("b.conf", "\nmax_batch = 5000\n", 0644);
    struct config c;
    char err[512], want[600];
    assert_int_equal(parse(&c, ARGS("--config", path), NULL, err, sizeof err), LLORCH_ERANGE);
    snprintf(want, sizeof want, "%s:2: --max-batch", path);
    assert_non_null(strstr(err, want));
    assert_non_null(strstr(err, "1..1024"));
}

static void config_file_line_without_equals_is_an_error(void **state)
{
    (void)state;
    const char *path = write_file("e.conf", "max_batch 5\n", 0644);
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, ARGS("--config", path), NULL, err, sizeof err), LLORCH_EFORMAT);
    assert_non_null(strstr(err, ":1:"));
}

static void config_file_cannot_name_another_config(void **state)
{
    (void)state;
    const char *path = write_file("n.conf", "config = /etc/x\n", 0644);
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, ARGS("--config", path), NULL, err, sizeof err), LLORCH_EINVAL);
    assert_non_null(strstr(err, ":1:"));
}

static void config_missing_file_is_an_error_naming_it(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, ARGS("--config", "/nonexistent/llorch.conf"), NULL, err, sizeof err),
                     LLORCH_ENOTFOUND);
    assert_non_null(strstr(err, "/nonexistent/llorch.conf"));
}

static void config_bad_flag_value_names_option_and_range(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    static const char *const bad[][2] = {
        {"--max-batch", "0"},  {"--max-batch", "-1"}, {"--max-batch", "12x"},
        {"--max-batch", ""},   {"--port", "65536"},   {"--max-batch", "99999999999999999999999"},
        {"--max-batch", " 3"}, {"--max-batch", "+3"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char arg[128];
        snprintf(arg, sizeof arg, "%s=%s", bad[i][0], bad[i][1]);
        assert_int_equal(parse(&c, ARGS(arg), NULL, err, sizeof err), LLORCH_ERANGE);
        assert_non_null(strstr(err, bad[i][0]));
        assert_non_null(strstr(err, strcmp(bad[i][0], "--port") ? "1..1024" : "0..65535"));
    }
}

static void config_bad_env_value_names_option_and_variable(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, NULL, ARGS("LLORCH_KV_CACHE_MB=0"), err, sizeof err), LLORCH_ERANGE);
    assert_non_null(strstr(err, "--kv-cache-mb"));
    assert_non_null(strstr(err, "LLORCH_KV_CACHE_MB"));
    assert_non_null(strstr(err, "MiB"));
}

static void config_bad_enum_lists_the_choices(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, ARGS("--dtype", "q4"), NULL, err, sizeof err), LLORCH_EINVAL);
    assert_non_null(strstr(err, "--dtype"));
    assert_non_null(strstr(err, "auto|f32|bf16|int8"));
    assert_int_equal(parse(&c, ARGS("--log-level=verbose"), NULL, err, sizeof err), LLORCH_EINVAL);
    assert_non_null(strstr(err, "debug|info|warn|error"));
}

static void config_bool_flag_forms(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, ARGS("--cpu-pinning"), NULL, err, sizeof err), 0);
    assert_true(c.cpu_pinning);
    assert_int_equal(
        parse(&c, ARGS("--cpu-pinning=off"), ARGS("LLORCH_CPU_PINNING=1"), err, sizeof err), 0);
    assert_false(c.cpu_pinning);
    assert_int_equal(
        parse(&c, ARGS("--no-cpu-pinning"), ARGS("LLORCH_CPU_PINNING=true"), err, sizeof err), 0);
    assert_false(c.cpu_pinning);
    assert_int_equal(parse(&c, ARGS("--cpu-pinning=maybe"), NULL, err, sizeof err), LLORCH_EINVAL);
    assert_non_null(strstr(err, "--cpu-pinning"));
    assert_int_equal(parse(&c, ARGS("--no-max-batch"), NULL, err, sizeof err), LLORCH_EINVAL);
}

static void config_unknown_flag_and_stray_argument_are_errors(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, ARGS("--max-bach", "3"), NULL, err, sizeof err), LLORCH_EINVAL);
    assert_non_null(strstr(err, "--max-bach"));
    assert_int_equal(parse(&c, ARGS("model.gguf"), NULL, err, sizeof err), LLORCH_EINVAL);
    assert_non_null(strstr(err, "model.gguf"));
    assert_int_equal(parse(&c, ARGS("-p", "3"), NULL, err, sizeof err), LLORCH_EINVAL);
}

static void config_flag_without_value_is_an_error(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, ARGS("--model"), NULL, err, sizeof err), LLORCH_EINVAL);
    assert_non_null(strstr(err, "--model needs a value"));
    assert_int_equal(parse(&c, ARGS("--model", "--port", "1"), NULL, err, sizeof err),
                     LLORCH_EINVAL);
    assert_non_null(strstr(err, "--model needs a value"));
}

static void config_too_long_string_is_an_error(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    char arg[300];
    memset(arg, 'a', sizeof arg - 1);
    arg[sizeof arg - 1] = 0;
    memcpy(arg, "--worker-id=", 12);
    assert_int_equal(parse(&c, ARGS(arg), NULL, err, sizeof err), LLORCH_ETOOBIG);
    assert_non_null(strstr(err, "--worker-id"));
    assert_non_null(strstr(err, "at most 127"));
    /* exactly the maximum fits */
    arg[12 + 127] = 0;
    assert_int_equal(parse(&c, ARGS(arg), NULL, err, sizeof err), 0);
    assert_int_equal(strlen(c.worker_id), 127);
}

static void config_callback_url_must_be_http_and_test_mode_is_detected(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, ARGS("--callback-url", "ftp://x/"), NULL, err, sizeof err),
                     LLORCH_EINVAL);
    assert_non_null(strstr(err, "--callback-url"));
    assert_int_equal(
        parse(&c, ARGS("--callback-url", "http://localhost:9999/ready"), NULL, err, sizeof err), 0);
    assert_true(config_callback_is_test_mode(&c));
    assert_int_equal(
        parse(&c, ARGS("--callback-url", "http://127.0.0.1:9200/ready"), NULL, err, sizeof err), 0);
    assert_false(config_callback_is_test_mode(&c));
}

static void config_remote_pool_manager_needs_a_reachable_advertised_url(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    /* default --host 127.0.0.1 and a pool manager elsewhere: refused, clearly */
    assert_int_equal(parse(&c, ARGS("--callback-url", "http://pm.example:9200/ready"), NULL, err,
                           sizeof err),
                     LLORCH_EINVAL);
    assert_non_null(strstr(err, "pm.example"));
    assert_non_null(strstr(err, "http://127.0.0.1"));
    assert_non_null(strstr(err, "--advertise-url"));
    /* an advertised loopback URL is no better */
    assert_int_equal(parse(&c, ARGS("--callback-url", "http://10.0.0.5/ready", "--advertise-url",
                                    "http://localhost:8080"),
                           NULL, err, sizeof err),
                     LLORCH_EINVAL);
    /* fixed by --advertise-url or by listening on a reachable address */
    assert_int_equal(parse(&c, ARGS("--callback-url", "http://pm.example:9200/ready",
                                    "--advertise-url", "http://worker-7.example:8080"),
                           NULL, err, sizeof err),
                     0);
    assert_string_equal(c.advertise_url, "http://worker-7.example:8080");
    assert_int_equal(parse(&c, ARGS("--callback-url", "http://[fd00::1]:9200/ready", "--host",
                                    "0.0.0.0"),
                           NULL, err, sizeof err),
                     0);
    /* a pool manager on this host, and test mode, may be called back on loopback */
    assert_int_equal(parse(&c, ARGS("--callback-url", "http://127.0.0.1:9200/ready"), NULL, err,
                           sizeof err),
                     0);
    assert_int_equal(parse(&c, ARGS("--callback-url", "http://user@localhost:9200/ready"), NULL,
                           err, sizeof err),
                     0);
    assert_int_equal(parse(&c, ARGS("--callback-url", "http://[::1]:9200/ready"), NULL, err,
                           sizeof err),
                     0);
    assert_int_equal(parse(&c, ARGS("--advertise-url", "ftp://w/"), NULL, err, sizeof err),
                     LLORCH_EINVAL);
    assert_non_null(strstr(err, "--advertise-url"));
    assert_true(config_host_is_loopback("[::1]", 5));
    assert_true(config_host_is_loopback("127.0.1.1", 9));
    assert_true(config_host_is_loopback("LOCALHOST", 9));
    assert_false(config_host_is_loopback("localhost.example", 17));
    assert_false(config_host_is_loopback("10.1.2.3", 8));
}

static void config_backoff_cap_below_first_delay_is_an_error(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, ARGS("--callback-backoff-ms=1000", "--callback-backoff-max-ms=500"),
                           NULL, err, sizeof err),
                     LLORCH_ERANGE);
    assert_non_null(strstr(err, "--callback-backoff-max-ms"));
}

static void config_sse_sndbuf_is_zero_or_at_least_4096(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, ARGS("--sse-sndbuf-bytes=4095"), NULL, err, sizeof err),
                     LLORCH_ERANGE);
    assert_non_null(strstr(err, "--sse-sndbuf-bytes"));
    assert_non_null(strstr(err, "4096"));
    assert_int_equal(parse(&c, ARGS("--sse-sndbuf-bytes=67108865"), NULL, err, sizeof err),
                     LLORCH_ERANGE);
    assert_int_equal(parse(&c, ARGS("--sse-sndbuf-bytes=0"), NULL, err, sizeof err), 0);
    assert_int_equal(c.sse_sndbuf_bytes, 0);
    assert_int_equal(parse(&c, NULL, ARGS("LLORCH_SSE_SNDBUF_BYTES=4096"), err, sizeof err), 0);
    assert_int_equal(c.sse_sndbuf_bytes, 4096);
    const char *path = write_file("sndbuf.conf", "sse_sndbuf_bytes = 65536\n", 0600);
    assert_int_equal(parse(&c, ARGS("--config", path), NULL, err, sizeof err), 0);
    assert_int_equal(c.sse_sndbuf_bytes, 65536);
}

static void config_api_key_file_is_read_and_trimmed(void **state)
{
    (void)state;
    const char *path = write_file("key", "  s3cret-key \n\n", 0600);
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, ARGS("--api-key-file", path), NULL, err, sizeof err), 0);
    assert_string_equal(c.api_key, "s3cret-key");
    path = write_file("key640", "k2\n", 0640);
    assert_int_equal(parse(&c, ARGS("--api-key-file", path), NULL, err, sizeof err), 0);
    assert_string_equal(c.api_key, "k2");
}

static void config_api_key_file_errors(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    const char *path = write_file("empty", " \n\t\n", 0600);
    assert_int_equal(parse(&c, ARGS("--api-key-file", path), NULL, err, sizeof err), LLORCH_EINVAL);
    assert_non_null(strstr(err, "empty"));
    path = write_file("world", "k\n", 0644);
    assert_int_equal(parse(&c, ARGS("--api-key-file", path), NULL, err, sizeof err), LLORCH_EINVAL);
    assert_non_null(strstr(err, "0644"));
    path = write_file("twolines", "a\nb\n", 0600);
    assert_int_equal(parse(&c, ARGS("--api-key-file", path), NULL, err, sizeof err), LLORCH_EINVAL);
    assert_int_equal(parse(&c, ARGS("--api-key-file", "/nonexistent/key"), NULL, err, sizeof err),
                     LLORCH_ENOTFOUND);
    assert_non_null(strstr(err, "--api-key-file"));
    assert_int_equal(parse(&c, ARGS("--api-key-file", tmpdir), NULL, err, sizeof err),
                     LLORCH_EINVAL);
    assert_non_null(strstr(err, "not a regular file"));
    char big[400];
    memset(big, 'k', sizeof big - 1);
    big[sizeof big - 1] = 0;
    path = write_file("big", big, 0600);
    assert_int_equal(parse(&c, ARGS("--api-key-file", path), NULL, err, sizeof err),
                     LLORCH_ETOOBIG);
    assert_string_equal(c.api_key, "");
}

/* systemd/example.conf is an EnvironmentFile: every line must be an option. */
static void config_systemd_example_env_file_parses(void **state)
{
    (void)state;
    const char *src = getenv("LLORCH_SOURCE");
    char path[1024];
    snprintf(path, sizeof path, "%s/systemd/example.conf", src ? src : ".");
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("cannot open %s", path);
    static char lines[64][512];
    char *envp[65] = {0};
    int n = 0;
    while (n < 64 && fgets(lines[n], sizeof lines[n], f)) {
        char *l = lines[n];
        l[strcspn(l, "\n")] = 0;
        if (!l[0] || l[0] == '#')
            continue;
        /* EnvironmentFile= keeps everything after '=' (no inline comments) */
        assert_null(strchr(l, '#'));
        assert_non_null(strchr(l, '='));
        assert_true(!strncmp(l, "LLORCH_", 7));
        envp[n] = l;
        n++;
    }
    fclose(f);
    assert_true(n >= 5);
    struct config c;
    char err[512];
    bool exit_now;
    char *argv[] = {"llorch-cpud", NULL};
    int r = config_parse(&c, 1, argv, envp, &exit_now, err, sizeof err);
    if (r)
        fail_msg("example.conf: %s", err);
    assert_string_equal(c.model, "/var/lib/llorch-cpud/models/model.gguf");
    assert_int_equal(c.port, 8080);
    assert_int_equal(c.kv_cache_mb, 4096);
}

/* Runs config_parse with stdout captured into buf. */
static void capture(const char *flag, char *buf, size_t n)
{
    char path[300];
    snprintf(path, sizeof path, "%s/stdout", tmpdir);
    fflush(stdout);
    int saved = dup(1);
    FILE *f = fopen(path, "w+");
    assert_non_null(f);
    dup2(fileno(f), 1);
    struct config c;
    char err[256];
    bool exit_now = false;
    char *argv[] = {"llorch-cpud", "--max-batch=0", (char *)flag, NULL};
    int r = config_parse(&c, 3, argv, NULL, &exit_now, err, sizeof err);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    assert_int_equal(r, 0);
    assert_true(exit_now);
    rewind(f);
    size_t got = fread(buf, 1, n - 1, f);
    buf[got] = 0;
    fclose(f);
}

static void config_help_lists_every_option_with_default_and_unit(void **state)
{
    (void)state;
    static char out[32768];
    capture("--help", out, sizeof out);
    static const char *const flags[] = {"worker-id",
                                        "model",
                                        "model-ref",
                                        "callback-url",
                                        "api-key-file",
                                        "chat-template",
                                        "host",
                                        "port",
                                        "advertise-url",
                                        "max-connections",
                                        "max-header-bytes",
                                        "max-body-bytes",
                                        "header-timeout-ms",
                                        "idle-timeout-ms",
                                        "sse-outbox-bytes",
                                        "sse-sndbuf-bytes",
                                        "ping-interval-ms",
                                        "resume-grace-ms",
                                        "resume-job-bytes",
                                        "resume-total-bytes",
                                        "drain-timeout-ms",
                                        "threads",
                                        "cpu-pinning",
                                        "max-batch",
                                        "max-queue",
                                        "step-tokens",
                                        "itl-target-ms",
                                        "itl-target-pct",
                                        "kv-cache-mb",
                                        "ctx",
                                        "batch-window-ms",
                                        "pipeline",
                                        "layers",
                                        "pipeline-groups",
                                        "stage-timeout-ms",
                                        "dtype",
                                        "kv",
                                        "isa",
                                        "heartbeat-interval",
                                        "callback-max-retries",
                                        "callback-backoff-ms",
                                        "callback-backoff-max-ms",
                                        "log-format",
                                        "log-level",
                                        "config",
                                        "version",
                                        "help"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        char want[64];
        snprintf(want, sizeof want, "\n  --%s", flags[i]);
        const char *p = out;
        bool found = false;
        while (!found && (p = strstr(p, want))) {
            p += strlen(want);
            found = *p == ' ' || *p == '[' || *p == ',' || *p == '\n';
        }
        if (!found)
            fail_msg("--help does not list --%s", flags[i]);
    }
    /* every option line is followed by its default line */
    size_t opts = 0, defaults = 0;
    for (const char *p = out; (p = strstr(p, "\n  --")); p++)
        opts++;
    for (const char *p = out; (p = strstr(p, "(default: ")); p++)
        defaults++;
    assert_int_equal(defaults, 45);
    assert_true(opts >= defaults);
    assert_non_null(strstr(out, "(default: 32 sequences, range 1..1024; env LLORCH_MAX_BATCH; "
                                "ChatLoop key max_batch_size)"));
    assert_non_null(strstr(out, "(default: 2097152 bytes, range 1024..1073741824"));
    assert_non_null(strstr(out, "(default: 1024 MiB"));
    assert_non_null(strstr(out, "(default: 15000 ms"));
    assert_non_null(strstr(out, "(default: 0 = twice a decode step, range 0..600000; env "
                                "LLORCH_ITL_TARGET_MS)"));
    assert_non_null(strstr(out, "(default: 30 s"));
    assert_non_null(strstr(out, "(default: auto, one of auto|f32|bf16|int8|native"));
}

static void config_file_accepts_chatloop_knob_names(void **state)
{
    (void)state;
    const char *path = write_file("cl.conf",
                                  "worker_threads = 3\nenable_cpu_pinning = true\n"
                                  "max_batch_size = 7\nbatching_window_ms = 25\n"
                                  "max_queue_size = 99\nkv_cache_mb = 512\nenable_simd = false\n",
                                  0644);
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, ARGS("--config", path), NULL, err, sizeof err), 0);
    assert_int_equal(c.threads, 3);
    assert_true(c.cpu_pinning);
    assert_int_equal(c.max_batch, 7);
    assert_int_equal(c.batch_window_ms, 25);
    assert_int_equal(c.max_queue, 99);
    assert_int_equal(c.kv_cache_mb, 512);
    assert_int_equal(c.isa, LLORCH_ISA_SCALAR);
    path = write_file("cl2.conf", "enable_simd = true\n", 0644);
    assert_int_equal(parse(&c, ARGS("--config", path, "--isa", "avx2"), NULL, err, sizeof err), 0);
    assert_int_equal(c.isa, LLORCH_ISA_AVX2); /* flag over file */
    assert_int_equal(parse(&c, ARGS("--config", path), NULL, err, sizeof err), 0);
    assert_int_equal(c.isa, LLORCH_ISA_AUTO);
}

static void config_env_accepts_chatloop_knob_names_and_ours_win(void **state)
{
    (void)state;
    struct config c;
    char err[512];
    assert_int_equal(parse(&c, NULL,
                           ARGS("LLORCH_WORKER_THREADS=2", "LLORCH_MAX_BATCH_SIZE=5",
                                "LLORCH_BATCHING_WINDOW_MS=10", "LLORCH_MAX_QUEUE_SIZE=8",
                                "LLORCH_ENABLE_CPU_PINNING=1", "LLORCH_ENABLE_SIMD=off"),
                           err, sizeof err),
                     0);
    assert_int_equal(c.threads, 2);
    assert_int_equal(c.max_batch, 5);
    assert_int_equal(c.batch_window_ms, 10);
    assert_int_equal(c.max_queue, 8);
    assert_true(c.cpu_pinning);
    assert_int_equal(c.isa, LLORCH_ISA_SCALAR);
    assert_int_equal(parse(&c, NULL, ARGS("LLORCH_MAX_BATCH=4", "LLORCH_MAX_BATCH_SIZE=5"), err,
                           sizeof err),
                     0);
    assert_int_equal(c.max_batch, 4);
}

static void config_chatloop_alias_errors_name_the_alias_and_range(void **state)
{
    (void)state;
    const char *path = write_file("cle.conf", "\nmax_batch_size = 0\n", 0644);
    struct config c;
    char err[512], want[600];
    assert_int_equal(parse(&c, ARGS("--config", path), NULL, err, sizeof err), LLORCH_ERANGE);
    snprintf(want, sizeof want, "%s:2: max_batch_size (--max-batch)", path);
    assert_non_null(strstr(err, want));
    assert_non_null(strstr(err, "1..1024"));
    path = write_file("cle2.conf", "enable_simd = avx\n", 0644);
    assert_int_equal(parse(&c, ARGS("--config", path), NULL, err, sizeof err), LLORCH_EINVAL);
    assert_non_null(strstr(err, "enable_simd"));
    assert_int_equal(parse(&c, ARGS("--isa", "sse9"), NULL, err, sizeof err), LLORCH_EINVAL);
    assert_non_null(strstr(err, "auto|scalar|avx2|avxvnni|avx512"));
}

static void config_version_prints_the_version(void **state)
{
    (void)state;
    char out[256];
    capture("--version", out, sizeof out);
    char want[64];
    snprintf(want, sizeof want, "llorch-cpud %s\n", LLORCH_VERSION);
    assert_string_equal(out, want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(config_defaults_apply_when_nothing_is_given),
        cmocka_unit_test(config_flag_accepts_space_and_equals_forms),
        cmocka_unit_test(config_model_ref_defaults_to_file_name),
        cmocka_unit_test(config_env_sets_every_kind_of_field),
        cmocka_unit_test(config_itl_target_from_flag_env_and_file_with_default_zero),
        cmocka_unit_test(config_itl_target_pct_from_flag_env_and_file_with_default_200),
        cmocka_unit_test(config_pipeline_groups_from_flag_env_and_file_with_default_auto),
        cmocka_unit_test(config_stage_timeout_defaults_to_10_s_and_0_turns_it_off),
        cmocka_unit_test(config_file_sets_fields_skipping_comments_and_blanks),
        cmocka_unit_test(config_file_accepts_chatloop_knob_names),
        cmocka_unit_test(config_env_accepts_chatloop_knob_names_and_ours_win),
        cmocka_unit_test(config_chatloop_alias_errors_name_the_alias_and_range),
        cmocka_unit_test(config_precedence_is_flag_then_env_then_file),
        cmocka_unit_test(config_file_unknown_key_names_file_and_line),
        cmocka_unit_test(config_file_bad_value_names_file_line_option_and_range),
        cmocka_unit_test(config_file_line_without_equals_is_an_error),
        cmocka_unit_test(config_file_cannot_name_another_config),
        cmocka_unit_test(config_missing_file_is_an_error_naming_it),
        cmocka_unit_test(config_bad_flag_value_names_option_and_range),
        cmocka_unit_test(config_bad_env_value_names_option_and_variable),
        cmocka_unit_test(config_bad_enum_lists_the_choices),
        cmocka_unit_test(config_bool_flag_forms),
        cmocka_unit_test(config_unknown_flag_and_stray_argument_are_errors),
        cmocka_unit_test(config_flag_without_value_is_an_error),
        cmocka_unit_test(config_too_long_string_is_an_error),
        cmocka_unit_test(config_callback_url_must_be_http_and_test_mode_is_detected),
        cmocka_unit_test(config_remote_pool_manager_needs_a_reachable_advertised_url),
        cmocka_unit_test(config_backoff_cap_below_first_delay_is_an_error),
        cmocka_unit_test(config_sse_sndbuf_is_zero_or_at_least_4096),
        cmocka_unit_test(config_api_key_file_is_read_and_trimmed),
        cmocka_unit_test(config_api_key_file_errors),
        cmocka_unit_test(config_systemd_example_env_file_parses),
        cmocka_unit_test(config_help_lists_every_option_with_default_and_unit),
        cmocka_unit_test(config_version_prints_the_version),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
