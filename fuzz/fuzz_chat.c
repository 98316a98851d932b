/* Chat templates: template recognition over any text, and rendering of any
 * conversation (roles and contents from the input, split at 0xFF bytes:
 * role, content, role, content...) with every family. A rendering is
 * NUL-terminated at its length and within the cap; a failure leaves no
 * output. The first
 * input byte picks the family, add_assistant and a small length cap. */
#include <stdint.h>
#include <string.h>

#include "chat.h"
#include "fuzz_common.h"
#include "llorch/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MSGS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *s = (const char *)data + 1;
    size_t len = size - 1;
    enum chat_template d = chat_template_detect(s, len);
    FUZZ_CHECK(d >= CHAT_TEMPLATE_UNKNOWN && d < CHAT_TEMPLATE_COUNT_);
    FUZZ_CHECK(chat_template_name(d) != NULL);

    enum chat_template t = (enum chat_template)(1 + data[0] % (CHAT_TEMPLATE_COUNT_ - 1));
    bool add_ass = data[0] & 0x80;
    size_t cap = (data[0] & 0x40) ? 64 : (size_t)1 << 20;
    struct chat_message m[MAX_MSGS];
    size_t n = 0;
    const char *field = s;
    bool role = true;
    for (size_t i = 0; i <= len && n < MAX_MSGS; i++) {
        if (i < len && (uint8_t)s[i] != 0xff)
            continue;
        size_t fl = (size_t)(s + i - field);
        if (role) {
            m[n].role = field, m[n].role_len = fl;
        } else {
            m[n].content = field, m[n].content_len = fl;
            n++;
        }
        role = !role;
        field = s + i + 1;
    }
    char *out = NULL;
    size_t out_len = 0;
    int rc = chat_render(t, m, n, add_ass, cap, &out, &out_len);
    if (rc == 0) {
        FUZZ_CHECK(out != NULL && out[out_len] == 0 && out_len <= cap);
        free(out);
    } else {
        FUZZ_CHECK(rc == LLORCH_ETOOBIG || rc == LLORCH_ENOMEM);
        FUZZ_CHECK(out == NULL);
    }
    return 0;
}
