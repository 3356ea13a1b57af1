/* PNG scanline reconstruction ("unfiltering") fused with COCO-panoptic id packing.
 *
 * Why native: after a fast inflate (libdeflate, ~0.3 ms for a 1024x2048 panoptic PNG) the PNG filters
 * are most of the decode time; Paeth and Sub rows are sequential along the row, so numpy cannot do them.
 * One pass here reconstructs each row and writes id = R + 256 G + 65536 B straight into a uint32
 * buffer (alpha, if any, is dropped as panopticapi's rgb2id does).
 *
 * Only 8-bit RGB / RGBA non-interlaced images take this path; the Python caller checks IHDR and falls
 * back to Pillow for anything else.  Filter rules: PNG specification (ISO/IEC 15948), section 9.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Paeth predictor, branch-free (compiles to conditional moves): the left byte a is on the row's dependency
 * chain, so a mispredicted branch per byte would cost more than the arithmetic. */
static inline int paeth(int a, int b, int c) {
    int pa = abs(b - c);         /* |p - a| with p = a + b - c */
    int pb = abs(a - c);         /* |p - b| */
    int pc = abs(a + b - 2 * c); /* |p - c| */
    int r = pb <= pc ? b : c;
    return (pa <= pb && pa <= pc) ? a : r;
}

#define PACK(p) ((uint32_t)(p)[0] | ((uint32_t)(p)[1] << 8) | ((uint32_t)(p)[2] << 16))
#define RUN 8 /* pixels checked at once by the constant-run shortcuts */

static inline int all_zero(const uint8_t *p, size_t n) {
    uint64_t acc = 0, v;
    for (size_t i = 0; i < n; i += 8) {
        memcpy(&v, p + i, 8);
        acc |= v;
    }
    return acc == 0;
}

static inline void fill_pixels(uint8_t *dst, const int *px, int count, const int BPP) {
    for (int i = 0; i < count; i++)
        for (int k = 0; k < BPP; k++) dst[i * BPP + k] = (uint8_t)px[k];
}

/* Reconstruct one row of w pixels (BPP bytes each) from its filtered bytes f and the previous
 * reconstructed row prev (all zeros above the first row) into cur, and write the packed ids to o.
 * The left pixel is carried in registers: reading it back from cur would put a store-to-load
 * forwarding delay on every step of the row's sequential chain.  Returns 0, or -1 on an unknown
 * filter type.  Force-inlined with a constant BPP so that the channel loops unroll. */
static inline __attribute__((always_inline)) int unfilter_row(int type, const uint8_t *f, const uint8_t *prev,
                                                              uint8_t *cur, uint32_t *o, Py_ssize_t w,
                                                              const int BPP) {
    Py_ssize_t x, n = w * BPP;
    int k;
    int left[4] = {0, 0, 0, 0}, upleft[4] = {0, 0, 0, 0};
    switch (type) {
    case 0:
        memcpy(cur, f, (size_t)n);
        break;
    case 2:
        for (x = 0; x < n; x++) cur[x] = (uint8_t)(f[x] + prev[x]);
        break;
    case 1:
        for (x = 0; x < n;) {
            if (x + RUN * BPP <= n && all_zero(f + x, RUN * BPP)) { /* run of unchanged pixels */
                fill_pixels(cur + x, left, RUN, BPP);
                x += RUN * BPP;
                continue;
            }
            for (k = 0; k < BPP; k++) cur[x + k] = (uint8_t)(left[k] = (uint8_t)(f[x + k] + left[k]));
            x += BPP;
        }
        break;
    case 3:
        for (x = 0; x < n; x += BPP)
            for (k = 0; k < BPP; k++)
                cur[x + k] = (uint8_t)(left[k] = (uint8_t)(f[x + k] + ((left[k] + prev[x + k]) >> 1)));
        break;
    case 4:
        for (x = 0; x < n;) {
            /* Where the row above is constant (b == c) Paeth predicts the left pixel, so a run of zero
             * filtered bytes there repeats the left pixel: panoptic maps are mostly such runs. */
            if (x >= BPP && x + RUN * BPP <= n && all_zero(f + x, RUN * BPP) &&
                memcmp(prev + x, prev + x - BPP, RUN * BPP) == 0) {
                fill_pixels(cur + x, left, RUN, BPP);
                x += RUN * BPP;
                for (k = 0; k < BPP; k++) upleft[k] = prev[x - BPP + k];
                continue;
            }
            for (k = 0; k < BPP; k++) {
                int b = prev[x + k];
                cur[x + k] = (uint8_t)(left[k] = (uint8_t)(f[x + k] + paeth(left[k], b, upleft[k])));
                upleft[k] = b;
            }
            x += BPP;
        }
        break;
    default:
        return -1;
    }
    for (x = 0; x < w; x++) o[x] = PACK(cur + x * BPP);
    return 0;
}

PyDoc_STRVAR(unfilter_ids_doc,
"unfilter_ids(raw, out, height, width, bpp) -> None\n\n"
"Reconstruct the inflated, filtered scanlines ``raw`` (``height * (1 + bpp * width)`` bytes, 8-bit RGB\n"
"for bpp 3 or RGBA for bpp 4) and write ``R + 256 G + 65536 B`` of every pixel into ``out``, a writable\n"
"buffer of at least ``height * width`` uint32 (native byte order). Raises ValueError on a size mismatch\n"
"or an invalid filter type.");

static PyObject *unfilter_ids(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    Py_ssize_t h, w;
    int bpp;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*nni", &src, &dst, &h, &w, &bpp)) return NULL;
    PyObject *result = NULL;
    uint8_t *rows = NULL;
    if (bpp != 3 && bpp != 4) {
        PyErr_SetString(PyExc_ValueError, "bpp must be 3 (RGB) or 4 (RGBA)");
        goto done;
    }
    if (h < 0 || w < 0 || (w > 0 && h > PY_SSIZE_T_MAX / 4 / w)) {
        PyErr_SetString(PyExc_ValueError, "invalid image size");
        goto done;
    }
    Py_ssize_t stride = 1 + (Py_ssize_t)bpp * w;
    if (src.len != h * stride) {
        PyErr_Format(PyExc_ValueError, "inflated PNG data has %zd bytes, expected %zd for %zdx%zd", src.len,
                     h * stride, w, h);
        goto done;
    }
    if (dst.len < h * w * 4) {
        PyErr_SetString(PyExc_ValueError, "output buffer too small: need height * width uint32");
        goto done;
    }
    Py_ssize_t n = stride - 1;
    rows = (uint8_t *)PyMem_RawCalloc(2 * (size_t)n + 1, 1);
    if (rows == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int bad_row = -1;
    Py_BEGIN_ALLOW_THREADS
    uint8_t *prev = rows, *cur = rows + n;
    const uint8_t *in = (const uint8_t *)src.buf;
    uint32_t *out = (uint32_t *)dst.buf;
    for (Py_ssize_t y = 0; y < h; y++) {
        const uint8_t *line = in + y * stride;
        int err = bpp == 3 ? unfilter_row(line[0], line + 1, prev, cur, out + y * w, w, 3)
                           : unfilter_row(line[0], line + 1, prev, cur, out + y * w, w, 4);
        if (err != 0) {
            bad_row = (int)y;
            break;
        }
        uint8_t *t = prev;
        prev = cur;
        cur = t;
    }
    Py_END_ALLOW_THREADS
    if (bad_row >= 0) {
        PyErr_Format(PyExc_ValueError, "invalid PNG filter type in row %d", bad_row);
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_RawFree(rows);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"unfilter_ids", unfilter_ids, METH_VARARGS, unfilter_ids_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "panoptic._png", "Native PNG scanline reconstruction for COCO-panoptic id maps.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__png(void) { return PyModule_Create(&module); }
