/* Per-pixel passes of the fusions over (C, H, W) float32 CPU logits, one read of every logit.
 *
 * Why native: torch has no first-argmax over the channel dimension that is vectorised on the CPU, so the
 * torch path builds it from several passes (amax, a 0/1 mask per channel, a matrix-vector product) plus a
 * sum for the finiteness check and a dozen elementwise passes for UPSNet's decision.  Here each row is
 * reduced over the channels in L1-sized row buffers and decided at once; the caller runs row ranges on
 * several threads (the GIL is released).  Results are identical to the torch path (first maximum on
 * ties, strict ">"), which the tests check against the dense reference.
 *
 * Finiteness: for every logit read, v - v is 0 for a finite v and NaN for NaN or +-inf; "(v - v) != 0" is
 * OR-ed into an integer flag (an integer reduction, so the loops still vectorise).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Inlining the row loops into their callers lets the compiler keep the running maxima's addresses and
 * flags in registers across channels: without it the pass is ~1.7x slower. */
#if defined(_MSC_VER)
#define HOT static __forceinline
#else
#define HOT static inline __attribute__((always_inline))
#endif

/* x86-64 Linux with GCC/Clang: an AVX2 clone of each pass, picked at load time (ifunc); ~1.4x faster than
 * the SSE2 baseline every x86-64 CPU has. Elsewhere the baseline build. */
#if defined(__x86_64__) && defined(__linux__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 6))
#define TARGETS __attribute__((target_clones("avx2", "default")))
#else
#define TARGETS
#endif

/* The loops below are written branch-free (0 / -1 integer masks, restrict pointers) so that the compiler
 * vectorises them; "d != d" with d = v - v is the finiteness test (see above). */
HOT int32_t copy_first(const float *restrict p, float *restrict m, Py_ssize_t W) {
    int32_t bad = 0;
    for (Py_ssize_t x = 0; x < W; x++) {
        float v = p[x], d = v - v;
        m[x] = v;
        bad |= -(int32_t)(d != d);
    }
    return bad;
}

HOT int32_t argmax_step(const float *restrict p, float *restrict m, int32_t *restrict idx, int32_t c,
                                  Py_ssize_t W) {
    int32_t bad = 0;
    for (Py_ssize_t x = 0; x < W; x++) {
        float v = p[x], mv = m[x], d = v - v;
        int32_t g = -(int32_t)(v > mv); /* strict: the first maximum keeps its index */
        m[x] = v > mv ? v : mv;
        idx[x] = (idx[x] & ~g) | (c & g);
        bad |= -(int32_t)(d != d);
    }
    return bad;
}

HOT int32_t max_step(const float *restrict p, float *restrict m, Py_ssize_t W) {
    int32_t bad = 0;
    for (Py_ssize_t x = 0; x < W; x++) {
        float v = p[x], mv = m[x], d = v - v;
        m[x] = v > mv ? v : mv;
        bad |= -(int32_t)(d != d);
    }
    return bad;
}

/* o = o where m1 >= m2 (the first maximum is among the first k channels), else k. */
HOT void select_first(const float *restrict m1, const float *restrict m2, int32_t *restrict o, int32_t k,
                                Py_ssize_t n) {
    for (Py_ssize_t x = 0; x < n; x++) {
        int32_t first = -(int32_t)(m1[x] >= m2[x]);
        o[x] = (o[x] & first) | (k & ~first);
    }
}

/* Row r of logits (C, H, W): over channels [0, k) the maximum (m1) and first argmax (i1), over [k, C)
 * the maximum (m2, left untouched if k == C).  Returns nonzero if a logit of the row is not finite. */
HOT int32_t reduce_row(const float *logits, Py_ssize_t C, Py_ssize_t plane, Py_ssize_t off, Py_ssize_t W,
                          Py_ssize_t k, float *m1, int32_t *i1, float *m2) {
    int32_t bad = 0;
    Py_ssize_t c;
    if (k > 0) {
        bad |= copy_first(logits + off, m1, W);
        memset(i1, 0, sizeof(int32_t) * (size_t)W);
        for (c = 1; c < k; c++) bad |= argmax_step(logits + c * plane + off, m1, i1, (int32_t)c, W);
    }
    if (k < C) {
        bad |= copy_first(logits + k * plane + off, m2, W);
        for (c = k + 1; c < C; c++) bad |= max_step(logits + c * plane + off, m2, W);
    }
    return bad;
}

/* Pixels per block of whole rows (at least one row): the block's running maxima and indices stay in L2
 * while each channel is streamed through once, in long contiguous runs the prefetcher follows. */
#define BLOCK 8192
/* Floats between work rows: rows a multiple of 4 KiB apart alias in the L1 cache and the store buffer. */
#define PAD 48

typedef struct {
    Py_buffer logits, out;
    Py_ssize_t C, H, W;
} Common;

static int parse_common(Common *cm, Py_ssize_t row0, Py_ssize_t row1) {
    if (cm->logits.itemsize != 4 || cm->logits.len != cm->C * cm->H * cm->W * 4) {
        PyErr_SetString(PyExc_ValueError, "logits must be a contiguous (C, H, W) float32 buffer");
        return -1;
    }
    if (cm->out.itemsize != 4 || cm->out.len != cm->H * cm->W * 4) {
        PyErr_SetString(PyExc_ValueError, "out must be a contiguous (H, W) int32 buffer");
        return -1;
    }
    if (row0 < 0 || row1 > cm->H || row0 > row1) {
        PyErr_SetString(PyExc_ValueError, "rows out of range");
        return -1;
    }
    return 0;
}

/* The optional samples buffer: NULL if obj is None; -1 (error set) if it does not fit. */
static int get_samples(PyObject *obj, Py_buffer *buf, const Common *cm, Py_ssize_t stride, float **out) {
    *out = NULL;
    if (obj == Py_None) return 0;
    if (stride < 1) {
        PyErr_SetString(PyExc_ValueError, "stride must be >= 1");
        return -1;
    }
    if (PyObject_GetBuffer(obj, buf, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) return -1;
    Py_ssize_t need = cm->C * ((cm->H + stride - 1) / stride) * ((cm->W + stride - 1) / stride) * 4;
    if (buf->len != need) {
        PyErr_SetString(PyExc_ValueError, "samples must be a contiguous (C, ceil(H/stride), ceil(W/stride)) float32");
        return -1;
    }
    *out = (float *)buf->buf;
    return 0;
}

static void release(Py_buffer *bufs[], int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i]->obj != NULL) PyBuffer_Release(bufs[i]);
}

/* Copy the score samples logits[:, r, ::stride] of the rows r of [r0, r1) on the sampling grid into samples
 * (C, ceil(H / stride), ceil(W / stride)), while those rows are still in cache. */
static void sample_block(const float *lg, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t r0, Py_ssize_t r1,
                         float *samples, Py_ssize_t stride) {
    if (samples == NULL) return;
    const Py_ssize_t hs = (H + stride - 1) / stride, ws = (W + stride - 1) / stride;
    for (Py_ssize_t r = (r0 + stride - 1) / stride * stride; r < r1; r += stride)
        for (Py_ssize_t c = 0; c < C; c++) {
            const float *src = lg + (c * H + r) * W;
            float *dst = samples + (c * hs + r / stride) * ws;
            for (Py_ssize_t j = 0; j < ws; j++) dst[j] = src[j * stride];
        }
}

/* Rows row0..row1-1 of first_argmax_keys, in blocks of whole rows; m1, m2: max(W, BLOCK) floats each. */
TARGETS static int32_t first_argmax_rows(const float *lg, int32_t *out, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                         Py_ssize_t k, Py_ssize_t row0, Py_ssize_t row1, float *m1, float *m2,
                                         float *samples, Py_ssize_t stride) {
    int32_t bad = 0;
    const Py_ssize_t plane = H * W, step = BLOCK / W > 0 ? BLOCK / W : 1;
    for (Py_ssize_t r = row0; r < row1; r += step) {
        Py_ssize_t n = (r + step <= row1 ? step : row1 - r) * W; /* pixels in this block of rows */
        int32_t *o = out + r * W;
        bad |= reduce_row(lg, C, plane, r * W, n, k, m1, o, m2);
        sample_block(lg, C, H, W, r, r + n / W, samples, stride);
        if (k == 0)
            memset(o, 0, sizeof(int32_t) * (size_t)n);
        else if (k < C)
            select_first(m1, m2, o, (int32_t)k, n);
    }
    return bad;
}

PyDoc_STRVAR(first_argmax_keys_doc,
"first_argmax_keys(logits, out, C, H, W, k, row0, row1, samples=None, stride=1) -> bool\n\n"
"For rows row0..row1-1: out = first argmax over all channels if it is one of the first k, else k.\n"
"logits: contiguous (C, H, W) float32; out: contiguous (H, W) int32. Returns False if a logit read is NaN\n"
"or infinite (out is then unspecified). samples: optional contiguous float32 (C, ceil(H / stride),\n"
"ceil(W / stride)) buffer that receives logits[:, ::stride, ::stride] of these rows.");

static PyObject *first_argmax_keys(PyObject *self, PyObject *args) {
    Common cm;
    Py_buffer sb;
    PyObject *sobj = Py_None;
    Py_ssize_t k, row0, row1, stride = 1;
    float *samples = NULL;
    (void)self;
    memset(&cm, 0, sizeof cm);
    memset(&sb, 0, sizeof sb);
    if (!PyArg_ParseTuple(args, "y*w*nnnnnn|On", &cm.logits, &cm.out, &cm.C, &cm.H, &cm.W, &k, &row0, &row1, &sobj,
                          &stride))
        return NULL;
    Py_buffer *bufs[] = {&cm.logits, &cm.out, &sb};
    PyObject *result = NULL;
    float *fbuf = NULL;
    if (parse_common(&cm, row0, row1) < 0 || get_samples(sobj, &sb, &cm, stride, &samples) < 0) goto done;
    if (k < 0 || k > cm.C) {
        PyErr_SetString(PyExc_ValueError, "k must be in 0..C");
        goto done;
    }
    fbuf = (float *)PyMem_RawMalloc(sizeof(float) * (2 * (size_t)(cm.W > BLOCK ? cm.W : BLOCK) + PAD));
    if (fbuf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int32_t bad = 0;
    Py_BEGIN_ALLOW_THREADS
    bad = first_argmax_rows((const float *)cm.logits.buf, (int32_t *)cm.out.buf, cm.C, cm.H, cm.W, k, row0, row1,
                            fbuf, fbuf + (cm.W > BLOCK ? cm.W : BLOCK) + PAD, samples, stride);
    Py_END_ALLOW_THREADS
    result = PyBool_FromLong(!bad);
done:
    PyMem_RawFree(fbuf);
    release(bufs, 3);
    return result;
}

/* UPSNet's decision for one row with instances (UPSNetFusion._decide): stuff wins where
 * smax >= max(ival, U), an instance where ival >= U, else unknown (U = tmax - ymax; without the unknown
 * channel, stuff wins where smax >= ival).  An instance's key is its base (vmap) plus, with pairs, the
 * pixel's stuff class or NST for "a thing class". */
HOT void decide_row(const float *restrict iv, const float *restrict vm, const float *restrict ym,
                              const float *restrict smax, const int32_t *restrict sidx,
                              const float *restrict tmax, int32_t *restrict o, Py_ssize_t W, int32_t U,
                              int32_t NST, int32_t ADD, int32_t PN, int32_t UNK, int32_t HS) {
    for (Py_ssize_t x = 0; x < W; x++) {
        int32_t thing = -(int32_t)(tmax[x] > smax[x]);
        int32_t code = (NST & thing) | (sidx[x] & ~thing);
        int32_t ikey = (int32_t)vm[x] + ((code & PN) | (ADD & ~PN));
        float u = tmax[x] - ym[x];
        int32_t lost = -(int32_t)(iv[x] < u) & UNK; /* the unknown channel beats the instances */
        ikey = (U & lost) | (ikey & ~lost);
        float best = iv[x] > u ? iv[x] : u;
        int32_t sw = ((-(int32_t)(smax[x] >= best) & UNK) | (-(int32_t)(smax[x] >= iv[x]) & ~UNK)) & HS;
        o[x] = (sidx[x] & sw) | (ikey & ~sw);
    }
}

/* Rows row0..row1-1 of upsnet_keys, in blocks of whole rows; smax, tmax, sidx: max(W, BLOCK) each. */
TARGETS static int32_t upsnet_rows(const float *lg, int32_t *out, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                   Py_ssize_t nst, Py_ssize_t row0, Py_ssize_t row1, const float *ival,
                                   const float *vmap, const float *ymax, int32_t U, int pairs, int unknown,
                                   float *smax, float *tmax, int32_t *sidx, float *samples, Py_ssize_t stride) {
    int32_t bad = 0;
    const Py_ssize_t plane = H * W, step = BLOCK / W > 0 ? BLOCK / W : 1;
    const int has_things = nst < C;
    const int32_t NST = (int32_t)nst, ADD = pairs ? (int32_t)nst : 0;
    /* 0 / -1 masks of the loop-invariant choices */
    const int32_t PN = (pairs && nst) ? -1 : 0, UNK = unknown ? -1 : 0, HS = nst ? -1 : 0;
    for (Py_ssize_t r = row0; r < row1; r += step) {
        const Py_ssize_t n = (r + step <= row1 ? step : row1 - r) * W, off = r * W;
        int32_t *o = out + off;
        Py_ssize_t x;
        bad |= reduce_row(lg, C, plane, off, n, nst, smax, sidx, tmax);
        sample_block(lg, C, H, W, r, r + n / W, samples, stride);
        if (ival != NULL)
            decide_row(ival + off, vmap + off, ymax + off, smax, sidx, tmax, o, n, U, NST, ADD, PN, UNK, HS);
        else if (nst == 0)
            for (x = 0; x < n; x++) o[x] = U; /* no channel can win but unknown (or none at all) */
        else if (unknown && has_things)
            select_first(smax, tmax, memcpy(o, sidx, sizeof(int32_t) * (size_t)n), U, n); /* U = max thing - 0 */
        else
            memcpy(o, sidx, sizeof(int32_t) * (size_t)n);
    }
    return bad;
}

PyDoc_STRVAR(upsnet_keys_doc,
"upsnet_keys(logits, out, C, H, W, nst, row0, row1, ival, vmap, ymax, unk, pairs, unknown) -> bool\n\n"
"UPSNet's per-pixel decision (see UPSNetFusion._decide) for rows row0..row1-1. Stuff channels are the first\n"
"nst; ival, vmap, ymax are contiguous (H, W) float32 instance maps (all three None without instances);\n"
"vmap holds float keys below 2**24. Writes int32 keys to out. Returns False if a logit read is not finite.\n"
"samples, stride: optional score samples, as in first_argmax_keys.");

static PyObject *upsnet_keys(PyObject *self, PyObject *args) {
    Common cm;
    Py_buffer ib, vb, yb, sb;
    PyObject *iobj, *vobj, *yobj, *sobj = Py_None;
    Py_ssize_t nst, row0, row1, unk, stride = 1;
    int pairs, unknown;
    float *samples = NULL;
    (void)self;
    memset(&cm, 0, sizeof cm);
    memset(&sb, 0, sizeof sb);
    memset(&ib, 0, sizeof ib);
    memset(&vb, 0, sizeof vb);
    memset(&yb, 0, sizeof yb);
    if (!PyArg_ParseTuple(args, "y*w*nnnnnnOOOnpp|On", &cm.logits, &cm.out, &cm.C, &cm.H, &cm.W, &nst, &row0,
                          &row1, &iobj, &vobj, &yobj, &unk, &pairs, &unknown, &sobj, &stride))
        return NULL;
    Py_buffer *bufs[] = {&cm.logits, &cm.out, &ib, &vb, &yb, &sb};
    PyObject *result = NULL;
    float *fbuf = NULL;
    int32_t *ibuf = NULL;
    int has_inst = iobj != Py_None;
    if (parse_common(&cm, row0, row1) < 0 || get_samples(sobj, &sb, &cm, stride, &samples) < 0) goto done;
    if (nst < 0 || nst > cm.C) {
        PyErr_SetString(PyExc_ValueError, "nst must be in 0..C");
        goto done;
    }
    if (has_inst) {
        if (vobj == Py_None || yobj == Py_None || PyObject_GetBuffer(iobj, &ib, PyBUF_C_CONTIGUOUS) < 0 ||
            PyObject_GetBuffer(vobj, &vb, PyBUF_C_CONTIGUOUS) < 0 ||
            PyObject_GetBuffer(yobj, &yb, PyBUF_C_CONTIGUOUS) < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "ival, vmap and ymax go together");
            goto done;
        }
        Py_ssize_t need = cm.H * cm.W * 4;
        if (ib.len != need || vb.len != need || yb.len != need) {
            PyErr_SetString(PyExc_ValueError, "ival, vmap and ymax must be contiguous (H, W) float32 buffers");
            goto done;
        }
    }
    Py_ssize_t cap = cm.W > BLOCK ? cm.W : BLOCK;
    fbuf = (float *)PyMem_RawMalloc(sizeof(float) * (2 * (size_t)cap + PAD));
    ibuf = (int32_t *)PyMem_RawCalloc((size_t)cap, sizeof(int32_t)); /* sidx stays 0 without stuff */
    if (fbuf == NULL || ibuf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int32_t bad = 0;
    Py_BEGIN_ALLOW_THREADS
    bad = upsnet_rows((const float *)cm.logits.buf, (int32_t *)cm.out.buf, cm.C, cm.H, cm.W, nst, row0, row1,
                      has_inst ? (const float *)ib.buf : NULL, has_inst ? (const float *)vb.buf : NULL,
                      has_inst ? (const float *)yb.buf : NULL, (int32_t)unk, pairs, unknown, fbuf,
                      fbuf + cap + PAD, ibuf, samples, stride);
    Py_END_ALLOW_THREADS
    result = PyBool_FromLong(!bad);
done:
    PyMem_RawFree(fbuf);
    PyMem_RawFree(ibuf);
    release(bufs, 6);
    return result;
}

static PyMethodDef methods[] = {
    {"first_argmax_keys", first_argmax_keys, METH_VARARGS, first_argmax_keys_doc},
    {"upsnet_keys", upsnet_keys, METH_VARARGS, upsnet_keys_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "panoptic.fusion._kernels",
    "Per-pixel passes of the fusions over float32 CPU logits (optional; the torch path is the fallback).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
