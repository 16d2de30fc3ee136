/*
 * Native float32 kernels of DRAW's training pass (vlattn_draw.kernels loads them; see
 * vlattn.native_build for how they are built). Each kernel does in one sweep over memory what the
 * PyTorch code of vlattn_draw.fused does in several operations:
 *
 *   vl_lstm_forward / vl_lstm_backward   the pointwise part of an LSTM update (gates i, f, o, g)
 *   vl_canvas_step                      x_hat = x - sigmoid(c) and sigmoid's slope
 *   vl_open_window / vl_window_grad     one attention window's filterbanks and their backward
 *   vl_read / vl_read_backward          the read glimpse of [x, x_hat], and its backward
 *   vl_write / vl_write_backward        the write to the canvas, and its backward
 *
 * Matrices are row-major with an explicit row stride (in elements); "batch" rows are independent.
 * exp is a polynomial the compiler vectorises (relative error about 2e-7, like expf).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The raw parameters of an attention window, in order (vlattn_draw.filterbank.WINDOW_PARAMS of them),
 * and the floor on its variance (vlattn_draw.filterbank.VARIANCE_FLOOR); both are exported below so
 * that the Python side can check that it agrees. */
enum { VL_CENTER_X, VL_CENTER_Y, VL_LOG_VARIANCE, VL_LOG_STRIDE, VL_LOG_GAMMA, VL_WINDOW_PARAMS };
#define VL_VARIANCE_FLOOR 1e-12f

const long vl_window_params = VL_WINDOW_PARAMS;
const float vl_variance_floor = VL_VARIANCE_FLOOR;

static inline float vl_exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
    /* r = x - n ln 2 with ln 2 in two parts; fused multiply-adds, which the compiler may not reassociate */
    const float r = fmaf(n, 2.12194440e-4f, fmaf(-n, 0.693359375f, x));
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23; /* 2^n */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float vl_sigmoid(float x) { return 1.0f / (1.0f + vl_exp(-x)); }

static inline float vl_tanh(float x) { return 2.0f / (1.0f + vl_exp(-2.0f * x)) - 1.0f; }

static void vl_cell_update(const float *restrict gates, long size, const float *restrict cell,
                           float *restrict new_cell, float *restrict tanh_cell, float *restrict hidden) {
    const float *restrict i = gates, *restrict f = gates + size, *restrict o = gates + 2 * size;
    const float *restrict g = gates + 3 * size;
    for (long j = 0; j < size; ++j) {
        const float value = f[j] * cell[j] + i[j] * g[j];
        const float squashed = vl_tanh(value);
        new_cell[j] = value;
        tanh_cell[j] = squashed;
        hidden[j] = o[j] * squashed;
    }
}

/*
 * gates [batch, 4*size] (row stride gates_stride) holds pre-activations; extra (NULL or same shape,
 * row stride extra_stride) is added first. The gates receive [sigmoid(i, f, o), tanh(g)];
 * new_cell = f * cell + i * g, tanh_cell = tanh(new_cell), hidden = o * tanh_cell
 * (cell, new_cell, tanh_cell, hidden: contiguous [batch, size]).
 */
void vl_lstm_forward(float *gates, long gates_stride, const float *extra, long extra_stride, const float *cell,
                     float *new_cell, float *tanh_cell, float *hidden, long batch, long size) {
    for (long b = 0; b < batch; ++b) {
        float *restrict g = gates + b * gates_stride;
        if (extra != NULL) {
            const float *restrict e = extra + b * extra_stride;
            for (long j = 0; j < 4 * size; ++j) g[j] += e[j];
        }
        for (long j = 0; j < 3 * size; ++j) g[j] = vl_sigmoid(g[j]);
        for (long j = 3 * size; j < 4 * size; ++j) g[j] = vl_tanh(g[j]);
        vl_cell_update(g, size, cell + b * size, new_cell + b * size, tanh_cell + b * size, hidden + b * size);
    }
}

/*
 * Backward of vl_lstm_forward. acts: the activated gates (row stride acts_stride); grad_cell
 * [batch, size] holds the gradient of the new cell and receives that of the old one; grad_gates
 * (row stride grad_stride) receives the gradients of the pre-activations.
 */
void vl_lstm_backward(const float *grad_hidden, float *grad_cell, const float *acts, long acts_stride,
                      const float *old_cell, const float *tanh_cell, float *grad_gates, long grad_stride, long batch,
                      long size) {
    for (long b = 0; b < batch; ++b) {
        const float *restrict a = acts + b * acts_stride;
        const float *restrict dh = grad_hidden + b * size, *restrict c = old_cell + b * size;
        const float *restrict tc = tanh_cell + b * size;
        float *restrict dc = grad_cell + b * size, *restrict dg = grad_gates + b * grad_stride;
        for (long j = 0; j < size; ++j) {
            const float i = a[j], f = a[size + j], o = a[2 * size + j], g = a[3 * size + j];
            const float cell_grad = dc[j] + dh[j] * o * (1.0f - tc[j] * tc[j]);
            dg[j] = cell_grad * g * i * (1.0f - i);
            dg[size + j] = cell_grad * c[j] * f * (1.0f - f);
            dg[2 * size + j] = dh[j] * tc[j] * o * (1.0f - o);
            dg[3 * size + j] = cell_grad * i * (1.0f - g * g);
            dc[j] = cell_grad * f;
        }
    }
}

/* x_hat = x - sigmoid(canvas), slope = sigmoid'(canvas); canvas, x, slope contiguous [batch, n]. */
void vl_canvas_step(const float *canvas, const float *x, float *x_hat, long x_hat_stride, float *slope, long batch,
                    long n) {
    for (long b = 0; b < batch; ++b) {
        const float *restrict c = canvas + b * n, *restrict xb = x + b * n;
        float *restrict xh = x_hat + b * x_hat_stride, *restrict s = slope + b * n;
        for (long j = 0; j < n; ++j) {
            const float sig = vl_sigmoid(c[j]);
            xh[j] = xb[j] - sig;
            s[j] = sig - sig * sig;
        }
    }
}

/* Row i of a grid of n Gaussians over pixels 1..size: softmax_a(-(a - mean)^2 / (2 variance)). */
static void vl_filter_row(float *restrict row, long size, float mean, float half_precision) {
    for (long a = 0; a < size; ++a) {
        const float diff = (float)(a + 1) - mean;
        row[a] = -diff * diff * half_precision;
    }
    float largest = row[0];
    for (long a = 1; a < size; ++a) largest = row[a] > largest ? row[a] : largest;
    float total = 0.0f;
    for (long a = 0; a < size; ++a) {
        row[a] = vl_exp(row[a] - largest);
        total += row[a];
    }
    const float inverse = 1.0f / total;
    for (long a = 0; a < size; ++a) row[a] *= inverse;
}

typedef struct {
    float gx, gy, variance, precision, stride, gamma;
} vl_window;

/* The window of raw parameters (g~x, g~y, log sigma^2, log delta~, log gamma), as in vlattn_draw.filterbank. */
static vl_window vl_window_of(const float *p, long n, long width, long height) {
    vl_window w;
    const long extent = (width > height ? width : height) - 1;
    w.gx = 0.5f * (float)(width + 1) * (p[VL_CENTER_X] + 1.0f);
    w.gy = 0.5f * (float)(height + 1) * (p[VL_CENTER_Y] + 1.0f);
    w.variance = expf(p[VL_LOG_VARIANCE]);
    w.precision = 1.0f / (w.variance > VL_VARIANCE_FLOOR ? w.variance : VL_VARIANCE_FLOOR);
    w.stride = (float)extent / (float)(n > 1 ? n - 1 : 1) * expf(p[VL_LOG_STRIDE]);
    w.gamma = expf(p[VL_LOG_GAMMA]);
    return w;
}

static inline float vl_offset(long i, long n) { return (float)(i + 1) - 0.5f * (float)n - 0.5f; }

/*
 * Filterbanks of a window per batch row: params row b at params + b * params_stride (VL_WINDOW_PARAMS values);
 * fx [n, width] at fx + b * fx_stride, fy [n, height] at fy + b * fy_stride, gamma at
 * gamma + b * gamma_stride.
 */
void vl_open_window(const float *params, long params_stride, long batch, long n, long width, long height, float *fx,
                    long fx_stride, float *fy, long fy_stride, float *gamma, long gamma_stride) {
    for (long b = 0; b < batch; ++b) {
        const vl_window w = vl_window_of(params + b * params_stride, n, width, height);
        for (long i = 0; i < n; ++i) {
            const float offset = vl_offset(i, n) * w.stride;
            vl_filter_row(fx + b * fx_stride + i * width, width, w.gx + offset, 0.5f * w.precision);
            vl_filter_row(fy + b * fy_stride + i * height, height, w.gy + offset, 0.5f * w.precision);
        }
        gamma[b * gamma_stride] = w.gamma;
    }
}

/* For one filter row: sum_a dlogit_a (a - mean) and sum_a dlogit_a (a - mean)^2, where dlogit is the
 * softmax backward of the row's gradient. */
static void vl_filter_row_grad(const float *restrict row, const float *restrict grad, long size, float mean,
                               float *first, float *second) {
    float dot = 0.0f;
    for (long a = 0; a < size; ++a) dot += grad[a] * row[a];
    float s1 = 0.0f, s2 = 0.0f;
    for (long a = 0; a < size; ++a) {
        const float diff = (float)(a + 1) - mean;
        const float dlogit = row[a] * (grad[a] - dot);
        s1 += dlogit * diff;
        s2 += dlogit * diff * diff;
    }
    *first = s1;
    *second = s2;
}

/*
 * Backward of vl_open_window: from the gradients of fx, fy (same layouts, own strides) and of
 * log gamma (grad_log_gamma[b], or NULL for none), write the gradients of the VL_WINDOW_PARAMS raw parameters to
 * out + b * out_stride.
 */
void vl_window_grad(const float *params, long params_stride, long batch, long n, long width, long height,
                    const float *fx, long fx_stride, const float *fy, long fy_stride, const float *grad_fx,
                    long grad_fx_stride, const float *grad_fy, long grad_fy_stride, const float *grad_log_gamma,
                    float *out, long out_stride) {
    for (long b = 0; b < batch; ++b) {
        const vl_window w = vl_window_of(params + b * params_stride, n, width, height);
        float mean_x_grad = 0.0f, mean_y_grad = 0.0f, stride_grad = 0.0f, spread = 0.0f;
        for (long i = 0; i < n; ++i) {
            const float offset = vl_offset(i, n);
            float first_x, second_x, first_y, second_y;
            vl_filter_row_grad(fx + b * fx_stride + i * width, grad_fx + b * grad_fx_stride + i * width, width,
                               w.gx + offset * w.stride, &first_x, &second_x);
            vl_filter_row_grad(fy + b * fy_stride + i * height, grad_fy + b * grad_fy_stride + i * height, height,
                               w.gy + offset * w.stride, &first_y, &second_y);
            mean_x_grad += first_x;
            mean_y_grad += first_y;
            stride_grad += offset * (first_x + first_y);
            spread += second_x + second_y;
        }
        float *o = out + b * out_stride;
        o[VL_CENTER_X] = 0.5f * (float)(width + 1) * w.precision * mean_x_grad;
        o[VL_CENTER_Y] = 0.5f * (float)(height + 1) * w.precision * mean_y_grad;
        o[VL_LOG_VARIANCE] =
            w.variance >= VL_VARIANCE_FLOOR ? 0.5f * w.precision * w.precision * spread * w.variance : 0.0f;
        o[VL_LOG_STRIDE] = w.precision * stride_grad * w.stride;
        o[VL_LOG_GAMMA] = grad_log_gamma != NULL ? grad_log_gamma[b] : 0.0f;
    }
}

/*
 * Read attention: glimpse[c, i, j] = gamma * sum_{h, w} fy[i, h] image[c, h, w] fx[j, w] for the
 * `images` images of a batch row (image [images, height, width] at image + b * image_stride;
 * glimpse [images, n, n] at glimpse + b * glimpse_stride). columns [batch, images, n, height]
 * (contiguous) receives fx . image^T, which the backward needs.
 */
void vl_read(const float *image, long image_stride, long images, long height, long width, long n, const float *fx,
             long fx_stride, const float *fy, long fy_stride, const float *gamma, long gamma_stride, float *glimpse,
             long glimpse_stride, float *columns, long batch) {
    for (long b = 0; b < batch; ++b) {
        const float *img = image + b * image_stride, *gx = fx + b * fx_stride, *gy = fy + b * fy_stride;
        float *col = columns + b * images * n * height, *out = glimpse + b * glimpse_stride;
        for (long c = 0; c < images; ++c)
            for (long h = 0; h < height; ++h) {
                const float *restrict pixels = img + (c * height + h) * width;
                for (long j = 0; j < n; ++j) {
                    const float *restrict filter = gx + j * width;
                    float total = 0.0f;
                    for (long w = 0; w < width; ++w) total += pixels[w] * filter[w];
                    col[(c * n + j) * height + h] = total;
                }
            }
        const float scale = gamma[b * gamma_stride];
        for (long c = 0; c < images; ++c)
            for (long i = 0; i < n; ++i)
                for (long j = 0; j < n; ++j) {
                    const float *restrict filter = gy + i * height, *restrict values = col + (c * n + j) * height;
                    float total = 0.0f;
                    for (long h = 0; h < height; ++h) total += filter[h] * values[h];
                    out[(c * n + i) * n + j] = scale * total;
                }
    }
}

/*
 * Backward of vl_read for the images [x (channels of them), x_hat (as many)]. From grad_read (the
 * glimpse's gradient, [images, n, n] per row) and the glimpse itself (reads): grad_fx [batch, n,
 * width], grad_fy [batch, n, height], grad_log_gamma [batch]; and, as x_hat = x - sigmoid(canvas),
 * grad_canvas [batch, channels, height, width] -= slope * (gradient of x_hat). scratch holds
 * 2 * channels * n * height floats.
 */
void vl_read_backward(const float *grad_read, long grad_read_stride, const float *reads, long reads_stride,
                      const float *image, long image_stride, long channels, long height, long width, long n,
                      const float *fx, long fx_stride, const float *fy, long fy_stride, const float *gamma,
                      long gamma_stride, const float *columns, const float *slope, float *grad_canvas, float *grad_fx,
                      float *grad_fy, float *grad_log_gamma, float *scratch, long batch) {
    const long images = 2 * channels, plane = height * width;
    for (long b = 0; b < batch; ++b) {
        const float *grad = grad_read + b * grad_read_stride, *glimpse = reads + b * reads_stride;
        const float *img = image + b * image_stride, *gx = fx + b * fx_stride, *gy = fy + b * fy_stride;
        const float *col = columns + b * images * n * height;
        const float scale = gamma[b * gamma_stride];
        float log_gamma_grad = 0.0f;
        for (long k = 0; k < images * n * n; ++k) log_gamma_grad += grad[k] * glimpse[k];
        grad_log_gamma[b] = log_gamma_grad;
        float *restrict gfy = grad_fy + b * n * height, *restrict gfx = grad_fx + b * n * width;
        float *restrict grad_columns = scratch; /* [images, n, height], like columns */
        memset(gfy, 0, sizeof(float) * n * height);
        memset(grad_columns, 0, sizeof(float) * images * n * height);
        for (long c = 0; c < images; ++c)
            for (long i = 0; i < n; ++i)
                for (long j = 0; j < n; ++j) {
                    const float coefficient = scale * grad[(c * n + i) * n + j];
                    const float *restrict values = col + (c * n + j) * height, *restrict filter = gy + i * height;
                    float *restrict target = gfy + i * height, *restrict spread = grad_columns + (c * n + j) * height;
                    for (long h = 0; h < height; ++h) {
                        target[h] += coefficient * values[h];
                        spread[h] += coefficient * filter[h];
                    }
                }
        memset(gfx, 0, sizeof(float) * n * width);
        for (long c = 0; c < images; ++c)
            for (long h = 0; h < height; ++h) {
                const float *restrict pixels = img + (c * height + h) * width;
                for (long j = 0; j < n; ++j) {
                    const float coefficient = grad_columns[(c * n + j) * height + h];
                    float *restrict target = gfx + j * width;
                    for (long w = 0; w < width; ++w) target[w] += coefficient * pixels[w];
                }
            }
        const float *sl = slope + b * channels * plane;
        float *gc = grad_canvas + b * channels * plane;
        for (long c = 0; c < channels; ++c)
            for (long h = 0; h < height; ++h) {
                float *restrict target = gc + (c * height + h) * width;
                const float *restrict slopes = sl + (c * height + h) * width;
                for (long j = 0; j < n; ++j) {
                    const float coefficient = grad_columns[((channels + c) * n + j) * height + h]; /* x_hat's */
                    const float *restrict filter = gx + j * width;
                    for (long w = 0; w < width; ++w) target[w] -= slopes[w] * coefficient * filter[w];
                }
            }
    }
}

/*
 * Write attention: canvas[c] += fy^T . (patch[c] . fx) / gamma, patch [channels, n, n] at
 * patch + b * patch_stride, canvas contiguous [batch, channels, height, width]; scaled
 * [batch, channels, n, width] (contiguous) receives patch . fx / gamma, which the backward needs.
 */
void vl_write(const float *patch, long patch_stride, long channels, long height, long width, long n, const float *fx,
              long fx_stride, const float *fy, long fy_stride, const float *gamma, long gamma_stride, float *canvas,
              float *scaled, long batch) {
    for (long b = 0; b < batch; ++b) {
        const float *p = patch + b * patch_stride, *gx = fx + b * fx_stride, *gy = fy + b * fy_stride;
        float *sc = scaled + b * channels * n * width, *cv = canvas + b * channels * height * width;
        const float inverse = 1.0f / gamma[b * gamma_stride];
        for (long row = 0; row < channels * n; ++row) {
            float *restrict target = sc + row * width;
            for (long w = 0; w < width; ++w) target[w] = 0.0f;
            for (long j = 0; j < n; ++j) {
                const float coefficient = inverse * p[row * n + j];
                const float *restrict filter = gx + j * width;
                for (long w = 0; w < width; ++w) target[w] += coefficient * filter[w];
            }
        }
        for (long c = 0; c < channels; ++c)
            for (long h = 0; h < height; ++h) {
                float *restrict target = cv + (c * height + h) * width;
                for (long i = 0; i < n; ++i) {
                    const float coefficient = gy[i * height + h];
                    const float *restrict source = sc + (c * n + i) * width;
                    for (long w = 0; w < width; ++w) target[w] += coefficient * source[w];
                }
            }
    }
}

/*
 * Backward of vl_write from grad_canvas (contiguous, like canvas): grad_patch (rows at
 * grad_patch + b * grad_patch_stride), grad_fx [batch, n, width], grad_fy [batch, n, height],
 * grad_log_gamma [batch]. scratch holds channels * n * width floats.
 */
void vl_write_backward(const float *grad_canvas, const float *patch, long patch_stride, long channels, long height,
                       long width, long n, const float *fx, long fx_stride, const float *fy, long fy_stride,
                       const float *gamma, long gamma_stride, const float *scaled, float *grad_patch,
                       long grad_patch_stride, float *grad_fx, float *grad_fy, float *grad_log_gamma, float *scratch,
                       long batch) {
    for (long b = 0; b < batch; ++b) {
        const float *gc = grad_canvas + b * channels * height * width, *p = patch + b * patch_stride;
        const float *gx = fx + b * fx_stride, *gy = fy + b * fy_stride, *sc = scaled + b * channels * n * width;
        float *gp = grad_patch + b * grad_patch_stride, *gfx = grad_fx + b * n * width, *gfy = grad_fy + b * n * height;
        float *grad_scaled = scratch; /* [channels, n, width]: fy . grad_canvas */
        for (long c = 0; c < channels; ++c)
            for (long i = 0; i < n; ++i) {
                float *restrict target = grad_scaled + (c * n + i) * width;
                for (long w = 0; w < width; ++w) target[w] = 0.0f;
                for (long h = 0; h < height; ++h) {
                    const float coefficient = gy[i * height + h];
                    const float *restrict source = gc + (c * height + h) * width;
                    for (long w = 0; w < width; ++w) target[w] += coefficient * source[w];
                }
            }
        for (long i = 0; i < n; ++i)
            for (long h = 0; h < height; ++h) {
                float total = 0.0f;
                for (long c = 0; c < channels; ++c) {
                    const float *restrict s = sc + (c * n + i) * width, *restrict g = gc + (c * height + h) * width;
                    for (long w = 0; w < width; ++w) total += s[w] * g[w];
                }
                gfy[i * height + h] = total;
            }
        float log_gamma_grad = 0.0f;
        for (long k = 0; k < channels * n * width; ++k) log_gamma_grad -= grad_scaled[k] * sc[k];
        grad_log_gamma[b] = log_gamma_grad;
        const float inverse = 1.0f / gamma[b * gamma_stride];
        for (long k = 0; k < channels * n * width; ++k) grad_scaled[k] *= inverse; /* now of patch . fx */
        memset(gfx, 0, sizeof(float) * n * width);
        for (long row = 0; row < channels * n; ++row) {
            const float *restrict source = grad_scaled + row * width;
            for (long j = 0; j < n; ++j) {
                const float *restrict filter = gx + j * width;
                float total = 0.0f;
                for (long w = 0; w < width; ++w) total += source[w] * filter[w];
                gp[row * n + j] = total;
                const float coefficient = p[row * n + j];
                float *restrict target = gfx + j * width;
                for (long w = 0; w < width; ++w) target[w] += coefficient * source[w];
            }
        }
    }
}
