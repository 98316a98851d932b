/* The worker contract's request validation (POST /execute, /v1/inference):
 * any body gives 200 with consistent parameters, or 400/413/415/422 with a
 * JSON error body. The first input byte picks the Content-Type. */
#include <stdint.h>
#include <string.h>

#include <jansson.h>

#include "api_worker.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    static const char *const cts[] = {"application/json", "application/json; charset=utf-8",
                                      "text/plain", "Application/JSON;charset=\"utf-8\""};
    const char *ct = cts[data[0] & 3];
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    struct api_worker_params p;
    void *root = NULL;
    char *err = NULL;
    int status = api_worker_validate(ct, strlen(ct), body, len, &p, &root, &err);
    if (status == 200) {
        FUZZ_CHECK(root != NULL && err == NULL);
        FUZZ_CHECK(p.job_id_len > 0 && p.prompt_len > 0);
        FUZZ_CHECK(p.sp.max_tokens >= 1 && p.sp.max_tokens <= 2048);
        FUZZ_CHECK(p.sp.temperature >= 0.0f && p.sp.temperature <= 2.0f);
        json_decref(root);
    } else {
        FUZZ_CHECK(status == 400 || status == 413 || status == 415 || status == 422);
        FUZZ_CHECK(root == NULL);
        FUZZ_CHECK(err != NULL);
        json_t *e = json_loads(err, 0, NULL);
        FUZZ_CHECK(json_is_object(e));
        json_decref(e);
        free(err);
    }
    return 0;
}
