/* Bilinear resizing (align_corners=False) bit-identical to torch's CPU kernel, and the query fusions' per-pixel
 * pass fused with it.
 *
 * Why: the query fusions upsample every kept mask to the image (n x 1M floats) and then make a handful of
 * passes over the result; torch's kernel gathers four inputs per output pixel through index tensors and is
 * most of the call.  Here the resize is separable: each source row needed is interpolated horizontally once
 * (kept in a two-row cache per mask), and each output row is one vectorised blend of two such rows.
 *
 * Bit-identity: torch computes per output pixel (x00 w0 + x01 w1) h0 + (x10 w0 + x11 w1) h1, and its source
 * coordinate scale * (j + 0.5) - 0.5, in float32; the AVX2 build of torch contracts both "a * b + c * d" into
 * fma(a, b, c * d) and the source coordinate into fma(scale, j + 0.5, -0.5), its baseline build contracts
 * nothing.  `contract` selects one of the two; the Python side (panoptic/_ops/resize.py) checks at first use
 * which one reproduces F.interpolate on this machine, and uses torch when neither does.  This file is compiled
 * with -ffp-contract=off so that the only contractions are the explicit fmaf calls.
 */
#include "_kernels.h"
#include <math.h>

/* x86-64 with GCC/Clang: the row loops below are compiled twice, for the baseline and for AVX2 + FMA (a CPU
 * feature check picks one at run time; target_clones cannot ask for both features). */
#if defined(__x86_64__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 6))
#define FMA_BUILD 1
#define FMA_TARGET __attribute__((target("avx2,fma")))
#else
#define FMA_BUILD 0
#endif

/* Source rows (or columns) and weights of the output rows (or columns) of one dimension. */
typedef struct {
    int32_t *i0, *i1; /* int32: the compiler vectorises the column gathers */
    float *w0, *w1;
} Axis;

static void axis_weights(Py_ssize_t in, Py_ssize_t out, int contract, Axis *ax) {
    const float scale = (float)in / (float)out;
    for (Py_ssize_t j = 0; j < out; j++) {
        if (in == out) { /* torch: the identity, weights (1, 0) */
            ax->i0[j] = ax->i1[j] = (int32_t)j, ax->w0[j] = 1.0f, ax->w1[j] = 0.0f;
            continue;
        }
        const float d = (float)j + 0.5f;
        float src = contract ? fmaf(scale, d, -0.5f) : scale * d - 0.5f;
        if (src < 0.0f) src = 0.0f;
        int64_t i = (int64_t)floorf(src);
        if (i > in - 1) i = in - 1;
        float l1 = src - (float)i;
        l1 = l1 < 0.0f ? 0.0f : (l1 > 1.0f ? 1.0f : l1);
        ax->i0[j] = (int32_t)i, ax->i1[j] = (int32_t)(i + (i < in - 1 ? 1 : 0)), ax->w1[j] = l1, ax->w0[j] = 1.0f - l1;
    }
}

/* One source row interpolated along x: out[x] = s[i0[x]] w0[x] + s[i1[x]] w1[x]. */
HOT void blend_columns(const float *restrict s, const Axis *ax, Py_ssize_t W, int contract, float *restrict out) {
    const int32_t *i0 = ax->i0, *i1 = ax->i1;
    const float *w0 = ax->w0, *w1 = ax->w1;
    if (contract)
        for (Py_ssize_t x = 0; x < W; x++) out[x] = fmaf(s[i0[x]], w0[x], s[i1[x]] * w1[x]);
    else
        for (Py_ssize_t x = 0; x < W; x++) out[x] = s[i0[x]] * w0[x] + s[i1[x]] * w1[x];
}

/* Two horizontally interpolated source rows of one mask, reused by the output rows that read them. */
typedef struct {
    float *buf[2];
    int64_t row[2];
    int victim;
} RowCache;

HOT const float *cached_row(RowCache *rc, const float *plane, Py_ssize_t w, int32_t r, const Axis *ax, Py_ssize_t W,
                           int contract) {
    for (int s = 0; s < 2; s++)
        if (rc->row[s] == r) {
            rc->victim = 1 - s;
            return rc->buf[s];
        }
    int v = rc->victim;
    blend_columns(plane + r * w, ax, W, contract, rc->buf[v]);
    rc->row[v] = r, rc->victim = 1 - v;
    return rc->buf[v];
}

/* One output row of one mask: v[x] = a[x] h0 + b[x] h1. */
HOT void blend_rows(const float *restrict a, const float *restrict b, float h0, float h1, Py_ssize_t W,
                    int contract, float *restrict v) {
    if (contract)
        for (Py_ssize_t x = 0; x < W; x++) v[x] = fmaf(a[x], h0, b[x] * h1);
    else
        for (Py_ssize_t x = 0; x < W; x++) v[x] = a[x] * h0 + b[x] * h1;
}

/* The arguments both entry points share: src (n, h, w) float32, the output size and the contraction. */
typedef struct {
    Py_buffer src;
    Py_ssize_t n, h, w, H, W;
    int contract;
    Axis ay, ax;
    void *mem;
} Resize;

static int resize_setup(Resize *rz) {
    if (rz->n < 1 || rz->h < 1 || rz->w < 1 || rz->H < 1 || rz->W < 1) {
        PyErr_SetString(PyExc_ValueError, "sizes must be >= 1");
        return -1;
    }
    if (rz->src.itemsize != 4 || rz->src.len != rz->n * rz->h * rz->w * 4) {
        PyErr_SetString(PyExc_ValueError, "src must be a contiguous (n, h, w) float32 buffer");
        return -1;
    }
    if (rz->h > INT32_MAX || rz->w > INT32_MAX || rz->H > INT32_MAX || rz->W > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "sizes must be < 2**31");
        return -1;
    }
    size_t cells = (size_t)(rz->H + rz->W);
    rz->mem = PyMem_RawMalloc(cells * (2 * sizeof(int32_t) + 2 * sizeof(float)));
    if (rz->mem == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int32_t *ib = (int32_t *)rz->mem;
    float *fb = (float *)(ib + 2 * cells);
    rz->ay = (Axis){ib, ib + rz->H, fb, fb + rz->H};
    rz->ax = (Axis){ib + 2 * rz->H, ib + 2 * rz->H + rz->W, fb + 2 * rz->H, fb + 2 * rz->H + rz->W};
    axis_weights(rz->h, rz->H, rz->contract, &rz->ay);
    axis_weights(rz->w, rz->W, rz->contract, &rz->ax);
    return 0;
}

/* One output row of the fused query pass: mask k's weighted value p = v * score_k; the running first maximum
 * (m, idx) over k, strict ">" so the first maximum keeps it; fg: p >= t (or v >= t) for the owner; returns the
 * row's foreground count of mask k.  Branch-free with 32-bit lanes throughout (fg as int32 0 / -1), so that it
 * vectorises. */
HOT int32_t assign_loop(const float *restrict v, float score, float t, int weighted, int first, int32_t k,
                        float *restrict m, int32_t *restrict idx, int32_t *restrict fg, Py_ssize_t W) {
    int32_t count = 0;
    if (first)
        for (Py_ssize_t x = 0; x < W; x++) {
            float p = v[x] * score;
            int32_t f = -(int32_t)((weighted ? p : v[x]) >= t);
            count -= f;
            m[x] = p, idx[x] = k, fg[x] = f;
        }
    else
        for (Py_ssize_t x = 0; x < W; x++) {
            float p = v[x] * score, mv = m[x];
            int32_t f = -(int32_t)((weighted ? p : v[x]) >= t);
            int32_t g = -(int32_t)(p > mv);
            count -= f;
            m[x] = p > mv ? p : mv;
            idx[x] = (idx[x] & ~g) | (k & g);
            fg[x] = (fg[x] & ~g) | (f & g);
        }
    return count;
}

HOT int64_t assign_step(const float *restrict v, float score, float t, int weighted, int32_t k,
                        float *restrict m, int32_t *restrict idx, int32_t *restrict fg, Py_ssize_t W) {
    /* four specialisations: the flags are loop-invariant */
    if (k == 0) return weighted ? assign_loop(v, score, t, 1, 1, k, m, idx, fg, W)
                                : assign_loop(v, score, t, 0, 1, k, m, idx, fg, W);
    return weighted ? assign_loop(v, score, t, 1, 0, k, m, idx, fg, W)
                    : assign_loop(v, score, t, 0, 0, k, m, idx, fg, W);
}

/* The owner of each pixel of a finished row, its foreground flag, and the owners' pixel counts. */
HOT void finish_row(const int32_t *restrict idx, const int32_t *restrict fg, int64_t *restrict owner,
                    uint8_t *restrict owner_fg, int64_t *restrict own_count, Py_ssize_t W) {
    for (Py_ssize_t x = 0; x < W; x++) owner[x] = idx[x], owner_fg[x] = (uint8_t)(fg[x] & 1);
    for (Py_ssize_t x = 0; x < W; x++) own_count[idx[x]]++;
}

/* Output rows [a, b) of every mask into dst, which holds output rows [d0, d0 + R) of each mask ((n, R, W));
 * rows: two rows of W floats. */
HOT void resize_rows(const Resize *rz, float *dst, Py_ssize_t d0, Py_ssize_t R, Py_ssize_t a, Py_ssize_t b,
                     float *rows) {
    const float *src = (const float *)rz->src.buf;
    for (Py_ssize_t k = 0; k < rz->n; k++) {
        RowCache rc = {{rows, rows + rz->W}, {-1, -1}, 0};
        const float *plane = src + k * rz->h * rz->w;
        for (Py_ssize_t y = a; y < b; y++) {
            const float *r0 = cached_row(&rc, plane, rz->w, rz->ay.i0[y], &rz->ax, rz->W, rz->contract);
            const float *r1 = cached_row(&rc, plane, rz->w, rz->ay.i1[y], &rz->ax, rz->W, rz->contract);
            blend_rows(r0, r1, rz->ay.w0[y], rz->ay.w1[y], rz->W, rz->contract, dst + (k * R + y - d0) * rz->W);
        }
    }
}

/* The fused query pass's outputs and its per-call work buffers. */
typedef struct {
    const float *score;
    float threshold; /* torch compares a float32 tensor with a Python float in float32 */
    int weighted;
    int64_t *owner;
    uint8_t *owner_fg;
    int64_t *fg_count, *own_count; /* this call's counts, added to the outputs at the end */
    RowCache *rc;                  /* per mask */
    float *v, *m;
    int32_t *idx;
    int32_t *fgo;
} Assign;

/* This call's counts added to the outputs, which other threads add theirs to at the same time. */
static void add_counts(const Assign *as, int64_t *fg_area, int64_t *region, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++) {
        FETCH_ADD(fg_area + k, as->fg_count[k]);
        FETCH_ADD(region + k, as->own_count[k]);
    }
}

/* Output rows [a, b) of the fused query pass. */
HOT void assign_rows(const Resize *rz, const Assign *as, Py_ssize_t a, Py_ssize_t b) {
    const float *src = (const float *)rz->src.buf;
    const Py_ssize_t n = rz->n, W = rz->W;
    for (Py_ssize_t y = a; y < b; y++) {
        for (Py_ssize_t k = 0; k < n; k++) {
            const float *plane = src + k * rz->h * rz->w;
            const float *r0 = cached_row(as->rc + k, plane, rz->w, rz->ay.i0[y], &rz->ax, W, rz->contract);
            const float *r1 = cached_row(as->rc + k, plane, rz->w, rz->ay.i1[y], &rz->ax, W, rz->contract);
            blend_rows(r0, r1, rz->ay.w0[y], rz->ay.w1[y], W, rz->contract, as->v);
            as->fg_count[k] += assign_step(as->v, as->score[k], as->threshold, as->weighted, (int32_t)k, as->m,
                                           as->idx, as->fgo, W);
        }
        finish_row(as->idx, as->fgo, as->owner + y * W, as->owner_fg + y * W, as->own_count, W);
    }
}

/* The two builds of the row passes (see FMA_BUILD). */
static void resize_rows_base(const Resize *rz, float *dst, Py_ssize_t d0, Py_ssize_t R, Py_ssize_t a, Py_ssize_t b,
                             float *rows) {
    resize_rows(rz, dst, d0, R, a, b, rows);
}
static void assign_rows_base(const Resize *rz, const Assign *as, Py_ssize_t a, Py_ssize_t b) {
    assign_rows(rz, as, a, b);
}
#if FMA_BUILD
FMA_TARGET static void resize_rows_fma(const Resize *rz, float *dst, Py_ssize_t d0, Py_ssize_t R, Py_ssize_t a,
                                       Py_ssize_t b, float *rows) {
    resize_rows(rz, dst, d0, R, a, b, rows);
}
FMA_TARGET static void assign_rows_fma(const Resize *rz, const Assign *as, Py_ssize_t a, Py_ssize_t b) {
    assign_rows(rz, as, a, b);
}
static int has_fma(void) {
    static int known = -1; /* a benign race: every thread computes the same value */
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return known;
}
#endif

/* resize_rows in the build this CPU runs. */
static void resize_rows_any(const Resize *rz, float *dst, Py_ssize_t d0, Py_ssize_t R, Py_ssize_t a, Py_ssize_t b,
                            float *rows) {
#if FMA_BUILD
    if (has_fma()) {
        resize_rows_fma(rz, dst, d0, R, a, b, rows);
        return;
    }
#endif
    resize_rows_base(rz, dst, d0, R, a, b, rows);
}

const char bilinear_resize_doc[] =
    "bilinear_resize(src, dst, n, h, w, H, W, contract, row0, row1, dst_row0[, counter, chunk]) -> bool\n\n"
    "Rows [row0, row1) of F.interpolate(src[None], (H, W), mode='bilinear', align_corners=False)[0] into dst.\n"
    "src: contiguous float32 (n, h, w); dst: writable contiguous float32 (n, R, W) holding the output rows\n"
    "[dst_row0, dst_row0 + R) (R = H, dst_row0 = 0 for the whole output); contract: 1 for torch's FMA build, 0\n"
    "for its baseline build. counter, chunk: rows taken in chunks from a shared counter.";

PyObject *bilinear_resize(PyObject *self, PyObject *args) {
    Resize rz = {0};
    Py_buffer db = {0}, kb = {0};
    PyObject *kobj = Py_None;
    Py_ssize_t row0, row1, d0, chunk = 0;
    Rows rs;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*nnnnnpnnn|On", &rz.src, &db, &rz.n, &rz.h, &rz.w, &rz.H, &rz.W, &rz.contract,
                          &row0, &row1, &d0, &kobj, &chunk))
        return NULL;
    Py_buffer *bufs[] = {&rz.src, &db, &kb};
    PyObject *result = NULL;
    float *rows = NULL;
    if (resize_setup(&rz) < 0 || get_rows(kobj, &kb, chunk, row0, row1, &rs) < 0) goto done;
    const Py_ssize_t R = db.len / (4 * rz.n * rz.W);
    if (db.itemsize != 4 || db.len != rz.n * R * rz.W * 4 || row0 < d0 || row1 > d0 + R || row1 > rz.H ||
        row0 > row1) {
        PyErr_SetString(PyExc_ValueError, "dst must be a contiguous (n, R, W) float32 buffer of the output rows "
                                          "[dst_row0, dst_row0 + R), dst_row0 <= row0 <= row1 <= min(H, dst_row0 + R)");
        goto done;
    }
    rows = (float *)PyMem_RawMalloc(2 * sizeof(float) * (size_t)rz.W);
    if (rows == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t a, b;
    while (next_rows(&rs, &a, &b)) resize_rows_any(&rz, (float *)db.buf, d0, R, a, b, rows);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_True);
done:
    PyMem_RawFree(rows);
    PyMem_RawFree(rz.mem);
    release(bufs, 3);
    return result;
}

const char bilinear_resize_each_doc[] =
    "bilinear_resize_each(src, dsts, n, h, w, contract) -> bool\n\n"
    "Each of n maps on its own, as F.interpolate(src[i][None, None], (H_i, W_i), mode='bilinear',\n"
    "align_corners=False) (one map a call: the ROI masks pasted into their boxes). src: contiguous float32\n"
    "(n, h, w); dsts: n entries, each None (map skipped) or a writable contiguous float32 (H_i, W_i) buffer, which\n"
    "gives the size; contract as in bilinear_resize.";

PyObject *bilinear_resize_each(PyObject *self, PyObject *args) {
    Resize rz = {0};
    PyObject *dobj, *dseq = NULL, *result = NULL;
    Py_buffer *dbufs = NULL;
    void *mem = NULL;
    Py_ssize_t i, n = 0, most_h = 1, most_w = 1;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*Onnnp", &rz.src, &dobj, &rz.n, &rz.h, &rz.w, &rz.contract)) return NULL;
    Py_buffer *bufs[] = {&rz.src};
    dseq = PySequence_Fast(dobj, "dsts must be a sequence of buffers or None");
    if (dseq == NULL) goto done;
    n = PySequence_Fast_GET_SIZE(dseq);
    dbufs = (Py_buffer *)PyMem_RawCalloc((size_t)(n > 0 ? n : 1), sizeof(Py_buffer));
    if (dbufs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (n != rz.n || rz.n < 0 || rz.h < 1 || rz.w < 1 || rz.src.itemsize != 4 ||
        rz.src.len != rz.n * rz.h * rz.w * 4) {
        PyErr_SetString(PyExc_ValueError, "src must be a contiguous (n, h, w) float32 buffer and dsts hold n entries");
        goto done;
    }
    for (i = 0; i < n; i++) {
        PyObject *d = PySequence_Fast_GET_ITEM(dseq, i);
        if (d == Py_None) continue;
        if (PyObject_GetBuffer(d, dbufs + i, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_ND) < 0) goto done;
        const Py_buffer *b = dbufs + i;
        if (b->itemsize != 4 || b->ndim != 2 || b->shape[0] < 1 || b->shape[1] < 1 || b->shape[0] >= INT32_MAX ||
            b->shape[1] >= INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "dsts[%zd] must be a writable contiguous (H, W) float32 buffer", i);
            goto done;
        }
        most_h = b->shape[0] > most_h ? b->shape[0] : most_h, most_w = b->shape[1] > most_w ? b->shape[1] : most_w;
    }
    /* one set of axis tables and row buffers, sized for the largest map */
    const size_t cells = (size_t)(most_h + most_w);
    mem = PyMem_RawMalloc(cells * (2 * sizeof(int32_t) + 2 * sizeof(float)) + 2 * sizeof(float) * (size_t)most_w);
    if (mem == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    int32_t *ib = (int32_t *)mem;
    float *fb = (float *)(ib + 2 * cells), *rows = fb + 2 * cells;
    const Py_buffer whole = rz.src;
    for (i = 0; i < n; i++) {
        if (dbufs[i].obj == NULL) continue;
        const Py_ssize_t H = dbufs[i].shape[0], W = dbufs[i].shape[1];
        Resize one = rz; /* map i alone: a batch of one */
        one.src.buf = (char *)whole.buf + (size_t)(i * rz.h * rz.w) * sizeof(float);
        one.n = 1, one.H = H, one.W = W;
        one.ay = (Axis){ib, ib + H, fb, fb + H};
        one.ax = (Axis){ib + 2 * H, ib + 2 * H + W, fb + 2 * H, fb + 2 * H + W};
        axis_weights(rz.h, H, rz.contract, &one.ay);
        axis_weights(rz.w, W, rz.contract, &one.ax);
        resize_rows_any(&one, (float *)dbufs[i].buf, 0, H, 0, H, rows);
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_True);
done:
    if (dbufs != NULL)
        for (i = 0; i < n; i++)
            if (dbufs[i].obj != NULL) PyBuffer_Release(dbufs + i);
    PyMem_RawFree(dbufs);
    PyMem_RawFree(mem);
    Py_XDECREF(dseq);
    release(bufs, 1);
    return result;
}

const char bilinear_assign_doc[] =
    "bilinear_assign(src, scores, n, h, w, H, W, contract, threshold, weighted, owner, owner_fg, fg_area, region,\n"
    "                row0, row1[, counter, chunk]) -> bool\n\n"
    "The query fusions' per-pixel pass on the bilinear resize of src (as bilinear_resize) to (H, W), rows\n"
    "[row0, row1): p_k = resized mask k * scores[k]; owner (int64 (H, W)) = first k maximising p_k; owner_fg\n"
    "(uint8 (H, W)) = the owner's value >= threshold (p if weighted, else the resized mask); fg_area (int64\n"
    "(n,)) += per mask the pixels whose value is >= threshold; region (int64 (n,)) += per mask the pixels it\n"
    "owns. threshold is compared in float32.";

PyObject *bilinear_assign(PyObject *self, PyObject *args) {
    Resize rz = {0};
    Py_buffer sb = {0}, ob = {0}, fb = {0}, ab = {0}, gb = {0}, kb = {0};
    PyObject *kobj = Py_None;
    Py_ssize_t row0, row1, chunk = 0;
    double threshold;
    int weighted;
    Rows rs;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*nnnnnpdpw*w*w*w*nn|On", &rz.src, &sb, &rz.n, &rz.h, &rz.w, &rz.H, &rz.W,
                          &rz.contract, &threshold, &weighted, &ob, &fb, &ab, &gb, &row0, &row1, &kobj, &chunk))
        return NULL;
    Py_buffer *bufs[] = {&rz.src, &sb, &ob, &fb, &ab, &gb, &kb};
    PyObject *result = NULL;
    void *work = NULL;
    if (resize_setup(&rz) < 0 || get_rows(kobj, &kb, chunk, row0, row1, &rs) < 0) goto done;
    const Py_ssize_t n = rz.n, W = rz.W;
    if (sb.itemsize != 4 || sb.len != n * 4 || ob.itemsize != 8 || ob.len != rz.H * W * 8 || fb.len != rz.H * W ||
        ab.itemsize != 8 || ab.len != n * 8 || gb.itemsize != 8 || gb.len != n * 8 || n > INT32_MAX || row0 < 0 ||
        row1 > rz.H || row0 > row1) {
        PyErr_SetString(PyExc_ValueError, "scores float32 (n,), owner int64 (H, W), owner_fg uint8 (H, W), fg_area "
                                          "and region int64 (n,), 0 <= row0 <= row1 <= H expected");
        goto done;
    }
    /* counts, per mask a row cache, per mask a two-row buffer, one value row, the running maximum and index, the
     * owner's flag (in that order: each part aligned for the next) */
    size_t counts = 2 * (size_t)n, floats = (2 * (size_t)n + 2) * (size_t)W;
    work = PyMem_RawMalloc(counts * sizeof(int64_t) + (size_t)n * sizeof(RowCache) + floats * sizeof(float) +
                           2 * (size_t)W * sizeof(int32_t));
    if (work == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t *fg_count = (int64_t *)work, *own_count = fg_count + n;
    RowCache *rc = (RowCache *)(own_count + n);
    float *cache = (float *)(rc + n), *v = cache + 2 * n * W, *m = v + W;
    int32_t *idx = (int32_t *)(m + W);
    int32_t *fgo = idx + W;
    memset(fg_count, 0, counts * sizeof(int64_t));
    Py_BEGIN_ALLOW_THREADS
    const Assign as = {(const float *)sb.buf, (float)threshold, weighted, (int64_t *)ob.buf, (uint8_t *)fb.buf,
                       fg_count, own_count, rc, v, m, idx, fgo};
    for (Py_ssize_t k = 0; k < n; k++) rc[k] = (RowCache){{cache + 2 * k * W, cache + (2 * k + 1) * W}, {-1, -1}, 0};
    Py_ssize_t a, b;
    while (next_rows(&rs, &a, &b)) {
#if FMA_BUILD
        if (has_fma()) {
            assign_rows_fma(&rz, &as, a, b);
            continue;
        }
#endif
        assign_rows_base(&rz, &as, a, b);
    }
    add_counts(&as, (int64_t *)ab.buf, (int64_t *)gb.buf, n);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_True);
done:
    PyMem_RawFree(work);
    PyMem_RawFree(rz.mem);
    release(bufs, 7);
    return result;
}

/* Rows [a, b) of the query pass on values already at the output size ((n, R, W)), into owner / owner_fg rows. */
TARGETS static void assign_value_rows(const float *values, Py_ssize_t n, Py_ssize_t R, Py_ssize_t W,
                                      const Assign *as, Py_ssize_t a, Py_ssize_t b) {
    for (Py_ssize_t y = a; y < b; y++) {
        for (Py_ssize_t k = 0; k < n; k++)
            as->fg_count[k] += assign_step(values + (k * R + y) * W, as->score[k], as->threshold, as->weighted,
                                           (int32_t)k, as->m, as->idx, as->fgo, W);
        finish_row(as->idx, as->fgo, as->owner + y * W, as->owner_fg + y * W, as->own_count, W);
    }
}

const char query_assign_doc[] =
    "query_assign(values, scores, n, R, W, threshold, weighted, owner, owner_fg, fg_area, region, row0, row1\n"
    "             [, counter, chunk]) -> bool\n\n"
    "bilinear_assign's pass on values already at the output size: values contiguous float32 (n, R, W); rows\n"
    "[row0, row1) of owner (int64 (R, W)) and owner_fg (uint8 (R, W)); fg_area and region (int64 (n,)) += the\n"
    "rows' counts.";

PyObject *query_assign(PyObject *self, PyObject *args) {
    Py_buffer vb = {0}, sb = {0}, ob = {0}, fb = {0}, ab = {0}, gb = {0}, kb = {0};
    PyObject *kobj = Py_None;
    Py_ssize_t n, R, W, row0, row1, chunk = 0;
    double threshold;
    int weighted;
    Rows rs;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*nnndpw*w*w*w*nn|On", &vb, &sb, &n, &R, &W, &threshold, &weighted, &ob, &fb, &ab,
                          &gb, &row0, &row1, &kobj, &chunk))
        return NULL;
    Py_buffer *bufs[] = {&vb, &sb, &ob, &fb, &ab, &gb, &kb};
    PyObject *result = NULL;
    void *work = NULL;
    if (get_rows(kobj, &kb, chunk, row0, row1, &rs) < 0) goto done;
    if (n < 1 || n > INT32_MAX || R < 0 || W < 1 || vb.itemsize != 4 || vb.len != n * R * W * 4 || sb.len != n * 4 ||
        ob.itemsize != 8 || ob.len != R * W * 8 || fb.len != R * W || ab.len != n * 8 || gb.len != n * 8 ||
        row0 < 0 || row1 > R || row0 > row1) {
        PyErr_SetString(PyExc_ValueError, "values float32 (n, R, W), scores float32 (n,), owner int64 (R, W), "
                                          "owner_fg uint8 (R, W), fg_area and region int64 (n,), 0 <= row0 <= row1 <= R");
        goto done;
    }
    work = PyMem_RawMalloc(2 * (size_t)n * sizeof(int64_t) + (size_t)W * (sizeof(float) + 2 * sizeof(int32_t)));
    if (work == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t *fg_count = (int64_t *)work, *own_count = fg_count + n;
    float *m = (float *)(own_count + n);
    int32_t *idx = (int32_t *)(m + W);
    int32_t *fgo = idx + W;
    memset(fg_count, 0, 2 * (size_t)n * sizeof(int64_t));
    Py_BEGIN_ALLOW_THREADS
    const Assign as = {(const float *)sb.buf, (float)threshold, weighted, (int64_t *)ob.buf, (uint8_t *)fb.buf,
                       fg_count, own_count, NULL, NULL, m, idx, fgo};
    Py_ssize_t a, b;
    while (next_rows(&rs, &a, &b)) assign_value_rows((const float *)vb.buf, n, R, W, &as, a, b);
    add_counts(&as, (int64_t *)ab.buf, (int64_t *)gb.buf, n);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_True);
done:
    PyMem_RawFree(work);
    release(bufs, 7);
    return result;
}
