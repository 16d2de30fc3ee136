/*
 * Native float32 kernels of DRAW's training pass (vlattn_draw.native loads them; see
 * vlattn.native for how they are built). Each kernel does in one sweep over memory what the
 * PyTorch code of vlattn_draw.fused does in several operations:
 *
 *   vl_lstm_forward / vl_lstm_backward   the pointwise part of an LSTM update (gates i, f, o, g)
 *   vl_canvas_step                      x_hat = x - sigmoid(c) and sigmoid's slope
 *   vl_open_window / vl_window_grad     one attention window's filterbanks and their backward
 *
 * Matrices are row-major with an explicit row stride (in elements); "batch" rows are independent.
 * exp is a polynomial the compiler vectorises (relative error about 2e-7, like expf).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float vl_exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f; /* x - n ln 2, in two parts */
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

/*
 * gates [batch, 4*size] (row stride gates_stride) holds pre-activations; extra (NULL or same shape,
 * row stride extra_stride) is added first. The gates receive [sigmoid(i, f, o), tanh(g)];
 * new_cell = f * cell + i * g, tanh_cell = tanh(new_cell), hidden = o * tanh_cell
 * (cell, new_cell, tanh_cell, hidden: contiguous [batch, size]).
 */
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
    w.gx = 0.5f * (float)(width + 1) * (p[0] + 1.0f);
    w.gy = 0.5f * (float)(height + 1) * (p[1] + 1.0f);
    w.variance = expf(p[2]);
    w.precision = 1.0f / (w.variance > 1e-12f ? w.variance : 1e-12f);
    w.stride = (float)extent / (float)(n > 1 ? n - 1 : 1) * expf(p[3]);
    w.gamma = expf(p[4]);
    return w;
}

static inline float vl_offset(long i, long n) { return (float)(i + 1) - 0.5f * (float)n - 0.5f; }

/*
 * Filterbanks of a window per batch row: params row b at params + b * params_stride (5 values);
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
 * log gamma (grad_log_gamma[b], or NULL for none), write the gradients of the 5 raw parameters to
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
        o[0] = 0.5f * (float)(width + 1) * w.precision * mean_x_grad;
        o[1] = 0.5f * (float)(height + 1) * w.precision * mean_y_grad;
        o[2] = w.variance >= 1e-12f ? 0.5f * w.precision * w.precision * spread * w.variance : 0.0f;
        o[3] = w.precision * stride_grad * w.stride;
        o[4] = grad_log_gamma != NULL ? grad_log_gamma[b] : 0.0f;
    }
}
