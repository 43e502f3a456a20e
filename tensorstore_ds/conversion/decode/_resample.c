/* Fixed-point LANCZOS passes in C: the same sums as lanczos.py, bit for bit, several times faster.
 *
 * lanczos.py computes each pass as banded float32 matrix products; every product and partial sum is an
 * integer below 2**24, so the result is exact. This module computes the same integer sums in int32
 * (|sum| <= 255 * 1.3 * 2**14, far below 2**31) and rounds them the same way, floor((sum + 2**13) / 2**14)
 * clipped to 0..255, so both give identical bytes on every machine. A pass reads whole input rows and
 * loops over them contiguously, which compilers vectorise; it writes its output transposed, so that the
 * second pass (across) again reads whole rows. On x86-64 Linux with GCC or Clang, an AVX2 version is compiled
 * next to the baseline one and chosen at load time (target_clones).
 *
 * The Python side (lanczos.py) computes the weights; this module checks that they read only inside the
 * image and raises ValueError otherwise.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WEIGHT_BITS 14

/* target_clones needs the ELF loader's ifunc: Linux on x86-64, with GCC or Clang. Elsewhere the plain loop
 * (vectorised for the baseline instruction set) is the only version. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define VECTORISED __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef VECTORISED
#define VECTORISED
#endif

/* Round fixed-point sums to pixel values: floor((sum + 2**13) / 2**14), clipped to 0..255 (vectorised). */
static inline void round_row(const int32_t *restrict acc, uint8_t *restrict line, Py_ssize_t n) {
    for (Py_ssize_t j = 0; j < n; j++) {
        int32_t v = (acc[j] + (1 << (WEIGHT_BITS - 1))) >> WEIGHT_BITS;
        line[j] = (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
    }
}

/* Write a row of pixels as column i of dst: pixel p lands at dst[(p * out_rows + i) * channels]. */
static inline void scatter(const uint8_t *restrict line, uint8_t *restrict dst, Py_ssize_t pixels, int channels,
                           Py_ssize_t out_rows, Py_ssize_t i) {
    const Py_ssize_t step = out_rows * channels;
    uint8_t *out = dst + i * channels;
    if (channels == 3) {  /* constant channel counts let the compiler unroll the copy */
        for (Py_ssize_t p = 0; p < pixels; p++, out += step, line += 3) {
            out[0] = line[0], out[1] = line[1], out[2] = line[2];
        }
    } else if (channels == 1) {
        for (Py_ssize_t p = 0; p < pixels; p++, out += step) {
            out[0] = line[p];
        }
    } else {
        for (Py_ssize_t p = 0; p < pixels; p++, out += step, line += channels) {
            memcpy(out, line, (size_t)channels);
        }
    }
}

/* One pass: out_rows output rows, each the weighted sum of count[i] input rows from first[i] - offset.
 * An input row holds n = pixels * channels values; output row i goes to dst transposed (see scatter). */
VECTORISED static void pass_transposed(const uint8_t *src, Py_ssize_t src_stride, Py_ssize_t pixels, int channels,
                                       Py_ssize_t out_rows, const int32_t *first, Py_ssize_t offset,
                                       const int32_t *count, const int32_t *weights, Py_ssize_t taps,
                                       int32_t *restrict acc, uint8_t *restrict line, uint8_t *dst) {
    const Py_ssize_t n = pixels * channels;
    for (Py_ssize_t i = 0; i < out_rows; i++) {
        const int32_t *w = weights + i * taps;
        const uint8_t *row = src + ((Py_ssize_t)first[i] - offset) * src_stride;
        Py_ssize_t k = 0;
        memset(acc, 0, sizeof(int32_t) * (size_t)n);
        for (; k + 4 <= count[i]; k += 4, row += 4 * src_stride) {  /* four rows at a time: acc is read once */
            const int32_t w0 = w[k], w1 = w[k + 1], w2 = w[k + 2], w3 = w[k + 3];
            const uint8_t *r0 = row, *r1 = row + src_stride, *r2 = row + 2 * src_stride, *r3 = row + 3 * src_stride;
            for (Py_ssize_t j = 0; j < n; j++) {
                acc[j] += w0 * (int32_t)r0[j] + w1 * (int32_t)r1[j] + w2 * (int32_t)r2[j] + w3 * (int32_t)r3[j];
            }
        }
        for (; k < count[i]; k++, row += src_stride) {
            const int32_t wk = w[k];
            for (Py_ssize_t j = 0; j < n; j++) {
                acc[j] += wk * (int32_t)row[j];
            }
        }
        round_row(acc, line, n);
        scatter(line, dst, pixels, channels, out_rows, i);
    }
}

/* Whether a pass's tables have rows entries and read only input rows offset..offset + in_rows. */
static int weights_ok(Py_buffer *first, Py_buffer *count, Py_buffer *weights, Py_ssize_t rows, Py_ssize_t taps,
                      Py_ssize_t offset, Py_ssize_t in_rows) {
    if (first->len != rows * 4 || count->len != rows * 4 || weights->len != rows * taps * 4) {
        return 0;
    }
    const int32_t *f = first->buf, *c = count->buf;
    for (Py_ssize_t i = 0; i < rows; i++) {
        if (f[i] < offset || c[i] < 0 || c[i] > taps || f[i] - offset + c[i] > in_rows) {
            return 0;
        }
    }
    return 1;
}

/* resample(src, height, width, channels, vfirst, vcount, vweights, vtaps, hfirst, hcount, hweights, htaps,
 *          x0, x1, out) -> None
 * src: (height, width, channels) uint8, C-contiguous. The vertical weights give out_h rows; the horizontal
 * ones out_w columns, reading columns x0..x1 only (hfirst is absolute). out: (out_h, out_w, channels). */
static PyObject *resample(PyObject *self, PyObject *args) {
    Py_buffer src, vfirst, vcount, vweights, hfirst, hcount, hweights, out;
    Py_ssize_t height, width, channels, vtaps, htaps, x0, x1;
    if (!PyArg_ParseTuple(args, "y*nnny*y*y*ny*y*y*nnnw*", &src, &height, &width, &channels, &vfirst, &vcount,
                          &vweights, &vtaps, &hfirst, &hcount, &hweights, &htaps, &x0, &x1, &out)) {
        return NULL;
    }
    PyObject *result = NULL;
    const Py_ssize_t out_h = vfirst.len / 4, out_w = hfirst.len / 4, cols = x1 - x0;
    int32_t *acc = NULL;
    uint8_t *line = NULL, *mid = NULL;
    if (src.len != height * width * channels || out.len != out_h * out_w * channels || channels < 1 ||
        x0 < 0 || x1 > width || cols < 1 || !weights_ok(&vfirst, &vcount, &vweights, out_h, vtaps, 0, height) ||
        !weights_ok(&hfirst, &hcount, &hweights, out_w, htaps, x0, cols)) {
        PyErr_SetString(PyExc_ValueError, "resample: inconsistent buffer sizes");
        goto done;
    }
    const Py_ssize_t longest = (cols > out_h ? cols : out_h) * channels;
    acc = malloc(sizeof(int32_t) * (size_t)longest);
    line = malloc((size_t)longest);
    mid = malloc((size_t)(cols * out_h * channels));
    if (acc == NULL || line == NULL || mid == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    /* down: (cols, out_h, channels); across reads it by rows, one per input column */
    pass_transposed((const uint8_t *)src.buf + x0 * channels, width * channels, cols, (int)channels, out_h,
                    vfirst.buf, 0, vcount.buf, vweights.buf, vtaps, acc, line, mid);
    pass_transposed(mid, out_h * channels, out_h, (int)channels, out_w, hfirst.buf, x0, hcount.buf, hweights.buf,
                    htaps, acc, line, out.buf);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    free(acc);
    free(line);
    free(mid);
    PyBuffer_Release(&src);
    PyBuffer_Release(&vfirst);
    PyBuffer_Release(&vcount);
    PyBuffer_Release(&vweights);
    PyBuffer_Release(&hfirst);
    PyBuffer_Release(&hcount);
    PyBuffer_Release(&hweights);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"resample", resample, METH_VARARGS, "Both fixed-point LANCZOS passes (see lanczos.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_resample", NULL, 0, methods};

PyMODINIT_FUNC PyInit__resample(void) { return PyModule_Create(&module); }
