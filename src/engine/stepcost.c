/* The step cost model (decayed least squares over the recent steps) and the
 * prefill budget and split it gives; see stepcost.h. */
#include "stepcost.h"

#include <math.h>
#include <string.h>

#include "util.h"

/* Damping of the solve towards the previous fit, relative to each feature's
 * own weight: a feature the recent steps did not vary (a constant batch, no
 * prompt chunks) keeps its previous coefficient instead of drifting. */
#define STEPCOST_DAMP_REL 1e-3
#define STEPCOST_DAMP_ABS 1e-9

LLORCH_API void stepcost_init(struct stepcost *c)
{
    memset(c, 0, sizeof(*c));
    c->ratio = STEPCOST_RATIO_DEFAULT;
}

static void stepcost_features(uint32_t n_prefill, uint32_t n_decode, double x[STEPCOST_NX])
{
    x[0] = 1.0;
    x[1] = n_prefill > 0 ? 1.0 : 0.0;
    x[2] = (double)n_prefill;
    x[3] = (double)n_decode;
}

/* Solves a x = b (n x n, a and b destroyed) by Gaussian elimination with
 * partial pivoting. Returns false when a is singular. */
static bool stepcost_solve(double a[STEPCOST_NX][STEPCOST_NX], double b[STEPCOST_NX],
                           double x[STEPCOST_NX])
{
    const int n = STEPCOST_NX;
    for (int k = 0; k < n; k++) {
        int p = k;
        for (int i = k + 1; i < n; i++)
            if (fabs(a[i][k]) > fabs(a[p][k]))
                p = i;
        if (!(fabs(a[p][k]) > 0.0))
            return false;
        if (p != k) {
            for (int j = 0; j < n; j++) {
                double t = a[k][j];
                a[k][j] = a[p][j];
                a[p][j] = t;
            }
            double t = b[k];
            b[k] = b[p];
            b[p] = t;
        }
        for (int i = k + 1; i < n; i++) {
            double f = a[i][k] / a[k][k];
            for (int j = k; j < n; j++)
                a[i][j] -= f * a[k][j];
            b[i] -= f * b[k];
        }
    }
    for (int i = n - 1; i >= 0; i--) {
        double v = b[i];
        for (int j = i + 1; j < n; j++)
            v -= a[i][j] * x[j];
        x[i] = v / a[i][i];
    }
    for (int i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return false;
    return true;
}

LLORCH_API void stepcost_observe(struct stepcost *c, uint32_t n_prefill, uint32_t n_decode,
                                 double seconds)
{
    if (!(seconds >= 0.0) || !isfinite(seconds) || (n_prefill == 0 && n_decode == 0))
        return;
    if (n_prefill > 0 && n_decode > 0 && c->n_steps > 0) {
        /* measured against the fit before this step enters it */
        double inc = (seconds - stepcost_decode_step(c, n_decode)) / n_prefill;
        c->inc = c->inc * STEPCOST_INC_DECAY + (inc > 0.0 ? inc : 0.0);
        c->w_inc = c->w_inc * STEPCOST_INC_DECAY + 1.0;
    }
    double x[STEPCOST_NX];
    stepcost_features(n_prefill, n_decode, x);
    for (int i = 0; i < STEPCOST_NX; i++) {
        c->r[i] = c->r[i] * STEPCOST_DECAY + x[i] * seconds;
        for (int j = 0; j < STEPCOST_NX; j++)
            c->s[i][j] = c->s[i][j] * STEPCOST_DECAY + x[i] * x[j];
    }
    c->w_total = c->w_total * STEPCOST_DECAY + 1.0;
    c->w_prefill = c->w_prefill * STEPCOST_DECAY + (n_prefill > 0);
    c->w_decode = c->w_decode * STEPCOST_DECAY + (n_decode > 0);
    c->n_steps++;
    if (n_prefill == 0) {
        /* the mean so far, moved to this batch size, then this step */
        c->dec += c->w_dec * c->theta[3] * ((double)n_decode - (double)c->dec_n);
        c->dec = c->dec * STEPCOST_INC_DECAY + seconds;
        c->w_dec = c->w_dec * STEPCOST_INC_DECAY + 1.0;
        c->dec_n = n_decode;
    }

    /* (S + D) theta = r + D theta_prev */
    double a[STEPCOST_NX][STEPCOST_NX], b[STEPCOST_NX], th[STEPCOST_NX];
    for (int i = 0; i < STEPCOST_NX; i++) {
        double d = STEPCOST_DAMP_REL * c->s[i][i] + STEPCOST_DAMP_ABS;
        for (int j = 0; j < STEPCOST_NX; j++)
            a[i][j] = c->s[i][j];
        a[i][i] += d;
        b[i] = c->r[i] + d * c->theta[i];
    }
    if (!stepcost_solve(a, b, th))
        return;
    /* Costs are not negative; a clamped coefficient is refitted by the next
     * steps through the damping anchor. */
    for (int i = 0; i < STEPCOST_NX; i++)
        c->theta[i] = th[i] > 0.0 ? th[i] : 0.0;
}

LLORCH_API void stepcost_get(const struct stepcost *c, struct stepcost_fit *out)
{
    out->fixed = c->theta[0];
    out->prefill_step = c->theta[1];
    out->prefill_token = c->theta[2];
    out->decode_seq = c->theta[3];
    out->prefill_known = c->w_prefill > 0.0;
}

LLORCH_API double stepcost_predict(const struct stepcost *c, uint32_t n_prefill, uint32_t n_decode)
{
    if (c->n_steps == 0)
        return 0.0;
    double x[STEPCOST_NX], t = 0.0;
    stepcost_features(n_prefill, n_decode, x);
    for (int i = 0; i < STEPCOST_NX; i++)
        t += c->theta[i] * x[i];
    return t;
}

LLORCH_API double stepcost_target(const struct stepcost *c, uint32_t n_decode, double target_s)
{
    if (target_s > 0.0)
        return target_s;
    if (n_decode == 0 || c->n_steps == 0)
        return 0.0;
    return (c->ratio >= 1.0 ? c->ratio : 1.0) * stepcost_decode_step(c, n_decode);
}

LLORCH_API double stepcost_decode_step(const struct stepcost *c, uint32_t n_decode)
{
    if (c->w_dec <= 0.0)
        return stepcost_predict(c, 0, n_decode);
    double t = c->dec / c->w_dec + c->theta[3] * ((double)n_decode - (double)c->dec_n);
    return t > 0.0 ? t : 0.0;
}

LLORCH_API uint32_t stepcost_budget(const struct stepcost *c, uint32_t n_decode, double target_s,
                                    uint32_t cap)
{
    if (n_decode == 0)
        return cap; /* nothing to stall: the largest chunk prefills fastest */
    if (c->n_steps == 0 || c->w_prefill <= 0.0)
        return LLORCH_MIN(STEPCOST_PROBE_TOKENS, cap);
    double target = stepcost_target(c, n_decode, target_s);
    uint32_t floor_tokens = LLORCH_MIN(STEPCOST_MIN_CHUNK, cap);
    /* by the fit: fixed + prefill step + decodes + n * per token */
    double slack = target - stepcost_predict(c, 1, n_decode) + c->theta[2];
    double n = slack > 0.0 ? floor(slack / (c->theta[2] > 1e-9 ? c->theta[2] : 1e-9)) : 0.0;
    /* by what a prompt token measured at the recent chunk size */
    if (c->w_inc > 0.0) {
        double inc = c->inc / c->w_inc;
        double room = target - stepcost_decode_step(c, n_decode);
        double m = room > 0.0 ? floor(room / (inc > 1e-9 ? inc : 1e-9)) : 0.0;
        n = m < n ? m : n;
    } else if (n > STEPCOST_PROBE_TOKENS) {
        /* prompt chunks were measured, but never next to decodes: what the
         * fit extrapolates from prompt-only steps is probed first */
        n = STEPCOST_PROBE_TOKENS;
    }
    if (!(n < (double)cap))
        return cap;
    return n < (double)floor_tokens ? floor_tokens : (uint32_t)n;
}

LLORCH_API void stepcost_split(const uint32_t *pending, uint32_t n, uint32_t budget, uint32_t *out)
{
    for (uint32_t i = 0; i < n; i++)
        out[i] = 0;
    uint32_t left = budget, n_open = 0;
    for (uint32_t i = 0; i < n; i++)
        n_open += pending[i] > 0;
    /* Water-filling: whoever needs no more than an equal share of what is
     * left is served in full, until the shares stop changing. */
    bool changed = true;
    while (changed && n_open > 0 && left > 0) {
        changed = false;
        uint32_t share = left / n_open;
        for (uint32_t i = 0; i < n; i++) {
            if (out[i] == pending[i] || pending[i] > share)
                continue;
            out[i] = pending[i];
            left -= pending[i];
            n_open--;
            changed = true;
        }
    }
    if (n_open == 0 || left == 0)
        return;
    uint32_t share = left / n_open, extra = left - share * n_open;
    for (uint32_t i = 0; i < n; i++) {
        if (out[i] == pending[i])
            continue;
        out[i] = share + (extra > 0);
        if (extra > 0)
            extra--;
    }
}
