/* Chat templates: detection from the markers real GGUF templates carry, and
 * the exact prompt each family renders. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "chat.h"
#include "llorch/error.h"

#define MSG(r, c) {r, sizeof(r) - 1, c, sizeof(c) - 1}

static const struct chat_message conv[] = {
    MSG("system", "Be brief."),
    MSG("user", "Hi"),
    MSG("assistant", " Hello "),
    MSG("user", "Bye"),
};
#define N_CONV (sizeof(conv) / sizeof(conv[0]))

static void expect_render(enum chat_template t, bool add_ass, const char *want)
{
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(chat_render(t, conv, N_CONV, add_ass, 1 << 20, &out, &len), 0);
    assert_string_equal(out, want);
    assert_int_equal(len, strlen(want));
    free(out);
}

static enum chat_template detect(const char *s)
{
    return chat_template_detect(s, strlen(s));
}

static void chat_detects_families_from_template_markers(void **state)
{
    (void)state;
    assert_int_equal(detect("{% for m in messages %}<|im_start|>{{ m.role }}\n"), CHAT_TEMPLATE_CHATML);
    assert_int_equal(detect("<|im_start|>{{role}}<|im_sep|>"), CHAT_TEMPLATE_PHI4);
    assert_int_equal(detect("{{ bos_token }}{% if m.role == 'user' %}[INST] {{ c }} [/INST]"),
                     CHAT_TEMPLATE_LLAMA2);
    assert_int_equal(detect("[INST] <<SYS>>\n{{ s }}\n<</SYS>>"), CHAT_TEMPLATE_LLAMA2_SYS);
    assert_int_equal(detect("{{ bos_token + '[INST] ' + content.strip() }}"),
                     CHAT_TEMPLATE_LLAMA2_SYS_STRIP);
    assert_int_equal(detect("[SYSTEM_PROMPT]{{s}}[/SYSTEM_PROMPT][INST]"), CHAT_TEMPLATE_MISTRAL_V7);
    assert_int_equal(detect("<|start_header_id|>' + message['role'] + '<|end_header_id|>"),
                     CHAT_TEMPLATE_LLAMA3);
    assert_int_equal(detect("<|user|>\n{{c}}<|end|>\n<|assistant|>\n"), CHAT_TEMPLATE_PHI3);
    assert_int_equal(detect("<|user|>\n{{c}}<|endoftext|>"), CHAT_TEMPLATE_ZEPHYR);
    assert_int_equal(detect("<start_of_turn>{{ role }}\n"), CHAT_TEMPLATE_GEMMA);
    assert_int_equal(detect("USER: {{c}} ASSISTANT: "), CHAT_TEMPLATE_VICUNA);
    assert_int_equal(detect("gemma"), CHAT_TEMPLATE_GEMMA);
    assert_int_equal(detect("{{ something else entirely }}"), CHAT_TEMPLATE_UNKNOWN);
    assert_int_equal(detect(""), CHAT_TEMPLATE_UNKNOWN);
}

static void chat_detect_does_not_read_past_length(void **state)
{
    (void)state;
    /* The marker lies beyond the given length: it must not be found. */
    const char *s = "xxxx<|im_start|>";
    assert_int_equal(chat_template_detect(s, 4), CHAT_TEMPLATE_UNKNOWN);
}

static void chat_names_round_trip(void **state)
{
    (void)state;
    for (int t = 1; t < CHAT_TEMPLATE_COUNT_; t++)
        assert_int_equal(chat_template_from_name(chat_template_name((enum chat_template)t)), t);
    assert_int_equal(chat_template_from_name("jinja"), CHAT_TEMPLATE_UNKNOWN);
    assert_string_equal(chat_template_name(CHAT_TEMPLATE_UNKNOWN), "unknown");
}

static void chat_renders_chatml(void **state)
{
    (void)state;
    expect_render(CHAT_TEMPLATE_CHATML, true,
                  "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                  "<|im_start|>assistant\n Hello <|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
                  "<|im_start|>assistant\n");
}

static void chat_renders_llama2_with_system_block(void **state)
{
    (void)state;
    expect_render(CHAT_TEMPLATE_LLAMA2_SYS, true,
                  "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s>[INST] Bye [/INST]");
    expect_render(CHAT_TEMPLATE_LLAMA2, true,
                  "[INST] Be brief.\nHi [/INST] Hello </s>[INST] Bye [/INST]");
    expect_render(CHAT_TEMPLATE_LLAMA2_SYS_BOS, false,
                  "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST]");
}

static void chat_renders_llama3_with_trimmed_content(void **state)
{
    (void)state;
    expect_render(CHAT_TEMPLATE_LLAMA3, true,
                  "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void chat_renders_zephyr_and_phi3(void **state)
{
    (void)state;
    expect_render(CHAT_TEMPLATE_ZEPHYR, true,
                  "<|system|>\nBe brief.<|endoftext|>\n<|user|>\nHi<|endoftext|>\n"
                  "<|assistant|>\n Hello <|endoftext|>\n<|user|>\nBye<|endoftext|>\n<|assistant|>\n");
    expect_render(CHAT_TEMPLATE_PHI3, false,
                  "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n"
                  "<|assistant|>\n Hello <|end|>\n<|user|>\nBye<|end|>\n");
}

static void chat_renders_gemma_merging_system_into_user(void **state)
{
    (void)state;
    expect_render(CHAT_TEMPLATE_GEMMA, true,
                  "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                  "<start_of_turn>model\nHello<end_of_turn>\n"
                  "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
}

static void chat_render_rejects_unknown_template(void **state)
{
    (void)state;
    char *out = (char *)1;
    size_t len = 1;
    assert_int_equal(chat_render(CHAT_TEMPLATE_UNKNOWN, conv, N_CONV, true, 1000, &out, &len),
                     LLORCH_EUNSUPPORTED);
    assert_null(out);
    assert_int_equal(len, 0);
}

static void chat_render_stops_at_max_len(void **state)
{
    (void)state;
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(chat_render(CHAT_TEMPLATE_CHATML, conv, N_CONV, true, 20, &out, &len),
                     LLORCH_ETOOBIG);
    assert_null(out);
}

static void chat_render_of_no_messages_is_the_assistant_prefix(void **state)
{
    (void)state;
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(chat_render(CHAT_TEMPLATE_CHATML, NULL, 0, true, 100, &out, &len), 0);
    assert_string_equal(out, "<|im_start|>assistant\n");
    free(out);
    assert_int_equal(chat_render(CHAT_TEMPLATE_CHATML, NULL, 0, false, 100, &out, &len), 0);
    assert_string_equal(out, "");
    assert_int_equal(len, 0);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(chat_detects_families_from_template_markers),
        cmocka_unit_test(chat_detect_does_not_read_past_length),
        cmocka_unit_test(chat_names_round_trip),
        cmocka_unit_test(chat_renders_chatml),
        cmocka_unit_test(chat_renders_llama2_with_system_block),
        cmocka_unit_test(chat_renders_llama3_with_trimmed_content),
        cmocka_unit_test(chat_renders_zephyr_and_phi3),
        cmocka_unit_test(chat_renders_gemma_merging_system_into_user),
        cmocka_unit_test(chat_render_rejects_unknown_template),
        cmocka_unit_test(chat_render_stops_at_max_len),
        cmocka_unit_test(chat_render_of_no_messages_is_the_assistant_prefix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
