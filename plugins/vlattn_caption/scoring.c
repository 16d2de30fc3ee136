/*
 * Native float32 kernels of Show-Attend-Tell's attention scores in a teacher-forced pass
 * (vlattn_caption.scoring loads them; vlattn.native_build builds them):
 *
 *   vl_word_scores           scores[i, l] = v . sigmoid(keys[i, l] + query[i])
 *   vl_word_scores_backward  the gradients of query, v and keys, in one sweep over keys
 *   vl_image_scores          the forward of a decoding step: row i reads the keys of its image
 *   vl_top_words             a decoding step's most likely words and their log-probabilities
 *
 * Shapes: query [rows, width] (row stride query_stride, in elements), keys [rows, locations, width]
 * contiguous, v [width], scores and grad_scores [rows, locations] contiguous. The forward can keep
 * the hidden sigmoid(keys + query) [rows, locations, width] for the backward (the backward reads it
 * where it is given, and computes it again from keys and query where it is not): writing it costs the
 * forward next to nothing and halves the backward's time, at the price of its memory.
 *
 * The sigmoid is 1 / (1 + exp(-x)) with a vectorisable exp: exp(x) = 2^n exp(r), n the integer
 * nearest x / ln 2 and r = x - n ln 2 (ln 2 in two parts, so r is exact) in [-ln 2 / 2, ln 2 / 2],
 * exp(r) by its Taylor series to degree 7 (truncation below 2e-9 relative). Its error against
 * torch.sigmoid is a few float ulps: below 3e-7 relative for x >= -87 and 1e-7 absolute everywhere
 * (tests/plugins/caption/test_caption_scoring_native.py measures it).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* 512-bit vectors where the processor has them: the sigmoid is compute-bound, not memory-bound */
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__)
#pragma GCC target("prefer-vector-width=512")
#endif

static inline float vl_exp_reduced(float x) {
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    const float n = __builtin_rintf(x * 1.44269504088896341f);
    const float r = __builtin_fmaf(-n, 1.42860682e-6f, __builtin_fmaf(-n, 0.693145752f, x)); /* x - n ln 2 */
    float p = 1.0f / 5040.0f;
    p = __builtin_fmaf(p, r, 1.0f / 720.0f);
    p = __builtin_fmaf(p, r, 1.0f / 120.0f);
    p = __builtin_fmaf(p, r, 1.0f / 24.0f);
    p = __builtin_fmaf(p, r, 1.0f / 6.0f);
    p = __builtin_fmaf(p, r, 0.5f);
    p = __builtin_fmaf(p, r, 1.0f);
    p = __builtin_fmaf(p, r, 1.0f);
    const int32_t bits = ((int32_t)n + 127) * (1 << 23); /* 2^n, n in [-126, 127] */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float vl_sigmoid(float x) { return 1.0f / (1.0f + vl_exp_reduced(-x)); }

/* scores[i, l] = sum_a v[a] sigmoid(keys[i, l, a] + query[i, a]); hidden (or NULL) receives the sigmoid */
void vl_word_scores(const float *restrict query, long query_stride, const float *restrict keys,
                    const float *restrict v, float *restrict scores, float *restrict hidden, long rows,
                    long locations, long width) {
    for (long i = 0; i < rows; ++i) {
        const float *restrict q = query + i * query_stride;
        for (long l = 0; l < locations; ++l) {
            const long at = i * locations + l;
            const float *restrict k = keys + at * width;
            float total = 0.0f;
            if (hidden == NULL) {
                for (long a = 0; a < width; ++a) total += v[a] * vl_sigmoid(k[a] + q[a]);
            } else {
                float *restrict h = hidden + at * width;
                for (long a = 0; a < width; ++a) {
                    h[a] = vl_sigmoid(k[a] + q[a]);
                    total += v[a] * h[a];
                }
            }
            scores[at] = total;
        }
    }
}

/* One (i, l) of the backward: s is the stored sigmoid (stored) or computed from k + q; keys_mode 0: no
 * keys' gradient, 1: added to gk, 2: written to gk. Inlined with constant modes, each loop vectorises. */
static inline __attribute__((always_inline)) void vl_location_backward(
    const float *restrict k, const float *restrict q, const float *restrict h, const float *restrict v, float g,
    float *restrict gq, float *restrict gv, float *restrict gk, long width, const int stored, const int keys_mode) {
    for (long a = 0; a < width; ++a) {
        const float s = stored ? h[a] : vl_sigmoid(k[a] + q[a]);
        const float d = g * v[a] * (s - s * s);
        gv[a] += g * s;
        gq[a] += d;
        if (keys_mode == 1) gk[a] += d;
        if (keys_mode == 2) gk[a] = d;
    }
}

/*
 * The backward of vl_word_scores for grad_scores [rows, locations]: with s = sigmoid(keys + query)
 * (read from hidden, or computed where hidden is NULL) and d[i, l, a] = grad_scores[i, l] v[a] s (1 - s),
 *   grad_query [rows, width] (contiguous)  = sum_l d          (written)
 *   grad_v [width]                         = sum_{i, l} grad_scores[i, l] s   (written)
 *   grad_keys [rows, locations, width]     += d on its first summed_rows rows, = d on the others
 * grad_keys may be NULL (the keys need no gradient).
 */
void vl_word_scores_backward(const float *restrict query, long query_stride, const float *restrict keys,
                             const float *restrict hidden, const float *restrict v,
                             const float *restrict grad_scores, float *restrict grad_query, float *restrict grad_v,
                             float *restrict grad_keys, long summed_rows, long rows, long locations, long width) {
    memset(grad_v, 0, (size_t)width * sizeof *grad_v);
    for (long i = 0; i < rows; ++i) {
        const float *restrict q = query + i * query_stride;
        float *restrict gq = grad_query + i * width;
        memset(gq, 0, (size_t)width * sizeof *gq);
        const int keys_mode = grad_keys == NULL ? 0 : i < summed_rows ? 1 : 2;
        for (long l = 0; l < locations; ++l) {
            const long at = i * locations + l;
            const float *restrict k = keys + at * width;
            const float *restrict h = hidden == NULL ? NULL : hidden + at * width;
            float *restrict gk = grad_keys == NULL ? NULL : grad_keys + at * width;
            const float g = grad_scores[at];
            if (h != NULL) {
                if (keys_mode == 0) vl_location_backward(k, q, h, v, g, gq, grad_v, gk, width, 1, 0);
                else if (keys_mode == 1) vl_location_backward(k, q, h, v, g, gq, grad_v, gk, width, 1, 1);
                else vl_location_backward(k, q, h, v, g, gq, grad_v, gk, width, 1, 2);
            } else {
                if (keys_mode == 0) vl_location_backward(k, q, h, v, g, gq, grad_v, gk, width, 0, 0);
                else if (keys_mode == 1) vl_location_backward(k, q, h, v, g, gq, grad_v, gk, width, 0, 1);
                else vl_location_backward(k, q, h, v, g, gq, grad_v, gk, width, 0, 2);
            }
        }
    }
}

/*
 * The scores of a decoding step (no hidden kept, no backward): query [rows, width] (row stride
 * query_stride), keys [images, locations, width] contiguous, images [rows] the image of each row
 * (ascending, so one image's rows are consecutive), scores [rows, locations] contiguous:
 *   scores[i, l] = sum_a v[a] sigmoid(keys[images[i], l, a] + query[i, a])
 * One image's rows are scored together, location by location, so each key vector is read from memory
 * once per image and then from the L1 cache for the image's other rows.
 */
void vl_image_scores(const float *restrict query, long query_stride, const float *restrict keys,
                     const int64_t *restrict images, const float *restrict v, float *restrict scores, long rows,
                     long locations, long width) {
    long start = 0;
    while (start < rows) {
        long end = start + 1;
        while (end < rows && images[end] == images[start]) ++end;
        const float *restrict image_keys = keys + images[start] * locations * width;
        for (long l = 0; l < locations; ++l) {
            const float *restrict k = image_keys + l * width;
            for (long i = start; i < end; ++i) {
                const float *restrict q = query + i * query_stride;
                float total = 0.0f;
                for (long a = 0; a < width; ++a) total += v[a] * vl_sigmoid(k[a] + q[a]);
                scores[i * locations + l] = total;
            }
        }
        start = end;
    }
}

/*
 * The count most likely words of each row of logits [rows, vocab] (contiguous), in descending order,
 * the words skip_a and skip_b never: values [rows, count] receive their log-probabilities
 * (x - max - log(sum exp(x - max)) over the whole row, as torch.log_softmax), words [rows, count] their
 * ids. Equal logits keep the lower id first. Needs vocab >= count + 2.
 */
void vl_top_words(const float *restrict logits, long rows, long vocab, long count, long skip_a, long skip_b,
                  float *restrict values, int64_t *restrict words) {
    for (long i = 0; i < rows; ++i) {
        const float *restrict x = logits + i * vocab;
        float *restrict best = values + i * count;
        int64_t *restrict ids = words + i * count;
        float top = x[0];
        for (long a = 1; a < vocab; ++a) top = x[a] > top ? x[a] : top;
        float total = 0.0f;
        for (long a = 0; a < vocab; ++a) total += vl_exp_reduced(x[a] - top);
        const float log_total = logf(total);
        long filled = 0;
        for (long a = 0; a < vocab; ++a) {
            if (a == skip_a || a == skip_b) continue;
            const float value = x[a];
            if (filled == count && !(value > best[count - 1])) continue;
            long at = filled < count ? filled++ : count - 1;
            while (at > 0 && value > best[at - 1]) {
                best[at] = best[at - 1];
                ids[at] = ids[at - 1];
                --at;
            }
            best[at] = value;
            ids[at] = a;
        }
        for (long j = 0; j < count; ++j) best[j] = (best[j] - top) - log_total;
    }
}
