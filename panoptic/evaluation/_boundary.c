/* Boundary bands of every segment of an id map at once, for Boundary PQ (Cheng et al., CVPR 2021).
 *
 * A pixel is in its segment's boundary band iff the (2d+1) x (2d+1) window centred on it is not all of
 * its own id, pixels outside the image counting as another id. This equals boundary-iou-api's
 * mask_to_boundary on each segment's binary mask (pad by one zero pixel, erode d times with a 3x3
 * square, subtract). The plain numpy specification is panoptic.evaluation.boundary.boundary_mask_numpy.
 *
 * Why native: the numpy version makes ~10 full-image passes (~120 ms at 1024x2048); here each row is
 * checked with prefix counts of horizontal changes, then a sliding window over rows keeps, per column,
 * how many rows are not constant and how many vertical changes the window holds: O(H W), one pass.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* interior[r * w + c] = 1 iff the window around (r, c) is constant and inside the image. */
static int interior_map(const uint32_t *ids, uint8_t *interior, Py_ssize_t h, Py_ssize_t w, Py_ssize_t d) {
    memset(interior, 0, (size_t)(h * w));
    if (2 * d >= h || 2 * d >= w) return 0;
    uint8_t *rowok = (uint8_t *)malloc((size_t)(h * w));
    int32_t *pc = (int32_t *)malloc(sizeof(int32_t) * (size_t)w);
    int32_t *bad = (int32_t *)calloc((size_t)w, sizeof(int32_t));
    int32_t *vch = (int32_t *)calloc((size_t)w, sizeof(int32_t));
    if (!rowok || !pc || !bad || !vch) {
        free(rowok); free(pc); free(bad); free(vch);
        return -1;
    }
    /* rowok[r][c]: row r is constant over columns c-d..c+d (inside the image). */
    for (Py_ssize_t r = 0; r < h; r++) {
        const uint32_t *row = ids + r * w;
        uint8_t *ok = rowok + r * w;
        int32_t n = 0;
        pc[0] = 0;
        for (Py_ssize_t c = 1; c < w; c++) {
            n += row[c] != row[c - 1];
            pc[c] = n;
        }
        memset(ok, 0, (size_t)w);
        for (Py_ssize_t c = d; c < w - d; c++) ok[c] = pc[c + d] == pc[c - d];
    }
    /* Window rows r-d..r+d: bad[c] counts rows not constant at c, vch[c] vertical changes inside the window. */
    for (Py_ssize_t k = 0; k <= 2 * d; k++) {
        const uint8_t *ok = rowok + k * w;
        for (Py_ssize_t c = 0; c < w; c++) bad[c] += !ok[c];
        if (k > 0) {
            const uint32_t *a = ids + (k - 1) * w, *b = ids + k * w;
            for (Py_ssize_t c = 0; c < w; c++) vch[c] += a[c] != b[c];
        }
    }
    for (Py_ssize_t r = d; r < h - d; r++) {
        if (r > d) {
            const uint8_t *in = rowok + (r + d) * w, *out = rowok + (r - d - 1) * w;
            const uint32_t *a = ids + (r + d - 1) * w, *b = ids + (r + d) * w;
            const uint32_t *a0 = ids + (r - d - 1) * w, *b0 = ids + (r - d) * w;
            for (Py_ssize_t c = 0; c < w; c++) {
                bad[c] += (int32_t)!in[c] - (int32_t)!out[c];
                vch[c] += (int32_t)(a[c] != b[c]) - (int32_t)(a0[c] != b0[c]);
            }
        }
        uint8_t *dst = interior + r * w;
        for (Py_ssize_t c = d; c < w - d; c++) dst[c] = (bad[c] | vch[c]) == 0;
    }
    free(rowok); free(pc); free(bad); free(vch);
    return 0;
}

PyDoc_STRVAR(boundary_add_doc,
"boundary_add(ids, key, itemsize, height, width, d, value, void_too) -> None\n\n"
"``ids``: ``height * width`` uint32 id map (native byte order). For every pixel in its segment's boundary\n"
"band of width ``d`` (and, with ``void_too``, every pixel of id 0) add ``value`` to ``key``, a writable\n"
"buffer of ``height * width`` signed integers of ``itemsize`` bytes (2, 4 or 8).");

static PyObject *boundary_add(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    Py_ssize_t h, w, d;
    int itemsize, void_too;
    long long value;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*innnLp", &src, &dst, &itemsize, &h, &w, &d, &value, &void_too)) return NULL;
    PyObject *result = NULL;
    uint8_t *interior = NULL;
    if (h < 0 || w < 0 || d < 1 || (w > 0 && h > PY_SSIZE_T_MAX / 8 / w)) {
        PyErr_SetString(PyExc_ValueError, "invalid image size or band width");
        goto done;
    }
    if (itemsize != 2 && itemsize != 4 && itemsize != 8) {
        PyErr_SetString(PyExc_ValueError, "itemsize must be 2, 4 or 8");
        goto done;
    }
    if (src.len != h * w * 4 || dst.len != h * w * itemsize) {
        PyErr_SetString(PyExc_ValueError, "ids must hold height * width uint32 and key height * width items");
        goto done;
    }
    interior = (uint8_t *)malloc((size_t)(h * w) + 1);
    if (interior == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int err;
    Py_BEGIN_ALLOW_THREADS
    const uint32_t *ids = (const uint32_t *)src.buf;
    err = interior_map(ids, interior, h, w, d);
    if (err == 0) {
        Py_ssize_t n = h * w;
#define ADD_LOOP(T)                                                            \
        {                                                                      \
            T *k = (T *)dst.buf;                                               \
            T v = (T)value;                                                    \
            for (Py_ssize_t i = 0; i < n; i++)                                 \
                if (!interior[i] || (void_too && ids[i] == 0)) k[i] += v;      \
        }
        if (itemsize == 2) ADD_LOOP(int16_t)
        else if (itemsize == 4) ADD_LOOP(int32_t)
        else ADD_LOOP(int64_t)
#undef ADD_LOOP
    }
    Py_END_ALLOW_THREADS
    if (err != 0) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    free(interior);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"boundary_add", boundary_add, METH_VARARGS, boundary_add_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "panoptic.evaluation._boundary", "Native boundary bands of id maps (Boundary PQ).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__boundary(void) { return PyModule_Create(&module); }
