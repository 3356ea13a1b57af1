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
#include "_kernels.h"


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

/* W pixels of logits (C, H, W) from offset off: over channels [0, k) the maximum (m1) and first argmax (i1),
 * over [k, C) the maximum (m2, left untouched if k == C).  Returns nonzero if a logit read is not finite. */
HOT int32_t reduce_span(const float *logits, Py_ssize_t C, Py_ssize_t plane, Py_ssize_t off, Py_ssize_t W,
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

/* Pixels a channel is read for before the next channel: the span's running maxima and indices (3 KiB) stay in
 * L1 across all C channels, while C read streams of 1 KiB runs still keep the prefetcher busy.  Spans of a
 * whole block (32 KiB per array) spill to L2 on every channel: 1.3-1.4x slower at 1024x2048 on an Intel Xeon
 * (128-512 pixels: within 3%). */
#define SPAN 256

/* reduce_span over n pixels from offset off, SPAN pixels at a time. */
HOT int32_t reduce_row(const float *logits, Py_ssize_t C, Py_ssize_t plane, Py_ssize_t off, Py_ssize_t n,
                       Py_ssize_t k, float *m1, int32_t *i1, float *m2) {
    int32_t bad = 0;
    for (Py_ssize_t a = 0; a < n; a += SPAN) {
        const Py_ssize_t len = n - a < SPAN ? n - a : SPAN;
        bad |= reduce_span(logits, C, plane, off + a, len, k, m1 + a, i1 + a, m2 + a);
    }
    return bad;
}

/* Pixels per block of whole rows (at least one row): the block's logits, maxima and instance maps stay in L2
 * while the reduction (in spans, see SPAN), the instance maps and the decision work through it. */
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
"first_argmax_keys(logits, out, C, H, W, k, row0, row1, samples=None, stride=1, counter=None, chunk=0) -> bool\n\n"
"For rows row0..row1-1: out = first argmax over all channels if it is one of the first k, else k.\n"
"logits: contiguous (C, H, W) float32; out: contiguous (H, W) int32. Returns False if a logit read is NaN\n"
"or infinite (out is then unspecified). samples: optional contiguous float32 (C, ceil(H / stride),\n"
"ceil(W / stride)) buffer that receives logits[:, ::stride, ::stride] of these rows. counter, chunk: work on\n"
"chunks of rows taken from a shared int64 counter (see run_rows) instead of the whole range.");

static PyObject *first_argmax_keys(PyObject *self, PyObject *args) {
    Common cm;
    Py_buffer sb, kb;
    PyObject *sobj = Py_None, *kobj = Py_None;
    Py_ssize_t k, row0, row1, stride = 1, chunk = 0;
    float *samples = NULL;
    Rows rs;
    (void)self;
    memset(&cm, 0, sizeof cm);
    memset(&sb, 0, sizeof sb);
    memset(&kb, 0, sizeof kb);
    if (!PyArg_ParseTuple(args, "y*w*nnnnnn|OnOn", &cm.logits, &cm.out, &cm.C, &cm.H, &cm.W, &k, &row0, &row1, &sobj,
                          &stride, &kobj, &chunk))
        return NULL;
    Py_buffer *bufs[] = {&cm.logits, &cm.out, &sb, &kb};
    PyObject *result = NULL;
    float *fbuf = NULL;
    if (parse_common(&cm, row0, row1) < 0 || get_samples(sobj, &sb, &cm, stride, &samples) < 0 ||
        get_rows(kobj, &kb, chunk, row0, row1, &rs) < 0)
        goto done;
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
    Py_ssize_t a, b;
    while (next_rows(&rs, &a, &b))
        bad |= first_argmax_rows((const float *)cm.logits.buf, (int32_t *)cm.out.buf, cm.C, cm.H, cm.W, k, a, b, fbuf,
                                 fbuf + (cm.W > BLOCK ? cm.W : BLOCK) + PAD, samples, stride);
    Py_END_ALLOW_THREADS
    result = PyBool_FromLong(!bad);
done:
    PyMem_RawFree(fbuf);
    release(bufs, 4);
    return result;
}

/* ------------------------------------------------------------------------------------------------ UPSNet */

/* Box-local geometry of one kept instance, in the order of the panoptic channels (see
 * UPSNetFusion._instance_max): crop box [cy0, cy1) x [cx0, cx1) where its class logit Y counts, mask logits
 * (ph, pw) added at the crop box's top-left, up to 4 "zero" rectangles where its zero first enters the
 * running maximum (pixels inside every earlier crop box but outside its own), its semantic channel. */
typedef struct {
    Py_ssize_t cy0, cy1, cx0, cx1, ph, pw;
    Py_ssize_t zero[4][4]; /* y0, y1, x0, x1; empty if y1 <= y0 */
    Py_ssize_t channel;
    const float *mask; /* (ph, pw) row-major */
} Inst;

/* The instance maps of rows [r0, r1) (n = (r1 - r0) * W pixels): ival = max over the instance channels,
 * vmap = key base of its first argmax, ymax = max over the instances' Y (each 0 outside its crop box). */
HOT void instance_maps(const float *lg, Py_ssize_t H, Py_ssize_t W, Py_ssize_t r0, Py_ssize_t r1,
                       const Inst *inst, Py_ssize_t n, int32_t nst, int32_t step, float *restrict ival,
                       int32_t *restrict vmap, float *restrict ymax) {
    const Py_ssize_t npx = (r1 - r0) * W;
    for (Py_ssize_t x = 0; x < npx; x++) {
        ival[x] = 0.0f;
        ymax[x] = 0.0f;
        vmap[x] = nst;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const Inst *t = inst + i;
        const int32_t base = nst + (int32_t)i * step;
        if (i > 0)
            for (int q = 0; q < 4; q++) {
                const Py_ssize_t *z = t->zero[q];
                Py_ssize_t y0 = z[0] > r0 ? z[0] : r0, y1 = z[1] < r1 ? z[1] : r1;
                for (Py_ssize_t y = y0; y < y1; y++) {
                    float *iv = ival + (y - r0) * W, *ym = ymax + (y - r0) * W;
                    int32_t *vm = vmap + (y - r0) * W;
                    for (Py_ssize_t x = z[2]; x < z[3]; x++) {
                        int32_t neg = -(int32_t)(iv[x] < 0.0f);
                        vm[x] = (base & neg) | (vm[x] & ~neg);
                        iv[x] = iv[x] < 0.0f ? 0.0f : iv[x];
                        ym[x] = ym[x] < 0.0f ? 0.0f : ym[x];
                    }
                }
            }
        Py_ssize_t y0 = t->cy0 > r0 ? t->cy0 : r0, y1 = t->cy1 < r1 ? t->cy1 : r1;
        const float *plane = lg + t->channel * H * W;
        for (Py_ssize_t y = y0; y < y1; y++) {
            const float *yl = plane + y * W;
            float *iv = ival + (y - r0) * W, *ym = ymax + (y - r0) * W;
            int32_t *vm = vmap + (y - r0) * W;
            const Py_ssize_t my = y - t->cy0;
            /* columns [cx0, mx) get the mask logit, [mx, cx1) only Y (a crop box one column wider) */
            const Py_ssize_t mx = my < t->ph ? t->cx0 + t->pw : t->cx0;
            const float *m = t->mask + (my < t->ph ? my * t->pw : 0); /* m[x - cx0]: this row's mask logits */
            Py_ssize_t x;
            if (i == 0) {
                for (x = t->cx0; x < mx; x++) {
                    iv[x] = yl[x] + m[x - t->cx0];
                    ym[x] = yl[x];
                }
                for (; x < t->cx1; x++) iv[x] = ym[x] = yl[x];
                continue;
            }
            for (x = t->cx0; x < t->cx1; x++) {
                float z = x < mx ? yl[x] + m[x - t->cx0] : yl[x];
                int32_t better = -(int32_t)(z > iv[x]); /* strict: the first maximum keeps its key */
                vm[x] = (base & better) | (vm[x] & ~better);
                iv[x] = z > iv[x] ? z : iv[x];
                ym[x] = yl[x] > ym[x] ? yl[x] : ym[x];
            }
        }
    }
}

/* UPSNet's decision for a block with instances (UPSNetFusion._decide): stuff wins where
 * smax >= max(ival, U), an instance where ival >= U, else unknown (U = tmax - ymax; without the unknown
 * channel, stuff wins where smax >= ival).  An instance's key is its base (vmap) plus, with pairs, the
 * pixel's stuff class or NST for "a thing class". */
HOT void decide_row(const float *restrict iv, const int32_t *restrict vm, const float *restrict ym,
                    const float *restrict smax, const int32_t *restrict sidx, const float *restrict tmax,
                    int32_t *restrict o, Py_ssize_t W, int32_t U, int32_t NST, int32_t ADD, int32_t PN,
                    int32_t UNK, int32_t HS) {
    for (Py_ssize_t x = 0; x < W; x++) {
        int32_t thing = -(int32_t)(tmax[x] > smax[x]);
        int32_t code = (NST & thing) | (sidx[x] & ~thing);
        int32_t ikey = vm[x] + ((code & PN) | (ADD & ~PN));
        float u = tmax[x] - ym[x];
        int32_t lost = -(int32_t)(iv[x] < u) & UNK; /* the unknown channel beats the instances */
        ikey = (U & lost) | (ikey & ~lost);
        float best = iv[x] > u ? iv[x] : u;
        int32_t sw = ((-(int32_t)(smax[x] >= best) & UNK) | (-(int32_t)(smax[x] >= iv[x]) & ~UNK)) & HS;
        o[x] = (sidx[x] & sw) | (ikey & ~sw);
    }
}

typedef struct {
    float *smax, *tmax, *ival, *ymax;
    int32_t *sidx, *vmap;
    int64_t *hist; /* 4 interleaved (Q,) histograms of the keys written, or NULL */
    uint32_t q;
} Work;

/* Add the n keys k to the 4 interleaved (q,) histograms hist: neighbouring pixels mostly share a key, and one
 * histogram would make every increment wait for the previous store to the same counter (~3x slower).  Returns
 * nonzero, having stopped, at the first key outside 0..q-1 (the histograms are then incomplete). */
HOT uint32_t count_block(const int32_t *restrict k, Py_ssize_t n, int64_t *restrict hist, uint32_t q) {
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint32_t a = (uint32_t)k[i], b = (uint32_t)k[i + 1], c = (uint32_t)k[i + 2], d = (uint32_t)k[i + 3];
        if ((a >= q) | (b >= q) | (c >= q) | (d >= q)) return 1; /* predictable: never taken on valid keys */
        hist[a]++;
        hist[q + b]++;
        hist[2 * (size_t)q + c]++;
        hist[3 * (size_t)q + d]++;
    }
    for (; i < n; i++) {
        uint32_t a = (uint32_t)k[i];
        if (a >= q) return 1;
        hist[a]++;
    }
    return 0;
}

/* counts[j] += the 4 interleaved histograms' entries for key j (atomically: threads running one call share
 * counts). */
static void add_histograms(const int64_t *hist, size_t q, int64_t *counts) {
    for (size_t j = 0; j < q; j++) {
        int64_t v = hist[j] + hist[q + j] + hist[2 * q + j] + hist[3 * q + j];
        if (v) FETCH_ADD(counts + j, v);
    }
}

/* Rows row0..row1-1 of upsnet_keys, in blocks of whole rows; every Work array holds max(W, BLOCK). */
TARGETS static int32_t upsnet_rows(const float *lg, int32_t *out, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                   Py_ssize_t nst, Py_ssize_t row0, Py_ssize_t row1, const Inst *inst, Py_ssize_t n,
                                   int32_t step, int32_t U, int pairs, int unknown, const Work *wk,
                                   float *samples, Py_ssize_t stride) {
    int32_t bad = 0;
    const Py_ssize_t plane = H * W, rows = BLOCK / W > 0 ? BLOCK / W : 1;
    const int has_things = nst < C;
    const int32_t NST = (int32_t)nst, ADD = pairs ? (int32_t)nst : 0;
    /* 0 / -1 masks of the loop-invariant choices */
    const int32_t PN = (pairs && nst) ? -1 : 0, UNK = unknown ? -1 : 0, HS = nst ? -1 : 0;
    for (Py_ssize_t r = row0; r < row1; r += rows) {
        const Py_ssize_t r1 = r + rows <= row1 ? r + rows : row1, np = (r1 - r) * W, off = r * W;
        int32_t *o = out + off;
        Py_ssize_t x;
        bad |= reduce_row(lg, C, plane, off, np, nst, wk->smax, wk->sidx, wk->tmax);
        /* after the reduction: the boxes' short runs of class logits are then read from L2, not memory */
        if (n > 0) instance_maps(lg, H, W, r, r1, inst, n, NST, step, wk->ival, wk->vmap, wk->ymax);
        sample_block(lg, C, H, W, r, r1, samples, stride);
        if (n > 0)
            decide_row(wk->ival, wk->vmap, wk->ymax, wk->smax, wk->sidx, wk->tmax, o, np, U, NST, ADD, PN, UNK, HS);
        else if (nst == 0)
            for (x = 0; x < np; x++) o[x] = U; /* no channel can win but unknown (or none at all) */
        else if (unknown && has_things)
            select_first(wk->smax, wk->tmax, memcpy(o, wk->sidx, sizeof(int32_t) * (size_t)np), U, np);
        else
            memcpy(o, wk->sidx, sizeof(int32_t) * (size_t)np);
        if (wk->hist != NULL) /* while the block's keys are in L1: no second read of the map */
            (void)count_block(o, np, wk->hist, wk->q); /* the pass's keys lie in 0..q-1 by construction */
    }
    return bad;
}

PyDoc_STRVAR(upsnet_keys_doc,
"upsnet_keys(logits, out, C, H, W, nst, row0, row1, geometry, masks, step, unk, pairs, unknown,\n"
"            samples=None, stride=1, counter=None, chunk=0, counts=None) -> bool\n\n"
"UPSNet's key of every pixel of rows row0..row1-1 (see UPSNetFusion._keys), instance maps included.\n"
"geometry: contiguous int64 (N, 23) rows [cy0, cy1, cx0, cx1, ph, pw, 4 x (y0, y1, x0, x1) zero rectangles,\n"
"channel] (None for N = 0); masks: N contiguous float32 (ph, pw) buffers; step: key stride of an instance.\n"
"Writes int32 keys to out. Returns False if a logit read is not finite. samples, stride: optional score\n"
"samples and chunks of rows from a shared counter, as in first_argmax_keys. counts: optional writable contiguous\n"
"int64 (unk + 1,) buffer; the number of pixels of every key written is added to it (atomically: threads\n"
"running the same call share it).");

#define GEOMETRY 23

static PyObject *upsnet_keys(PyObject *self, PyObject *args) {
    Common cm;
    Py_buffer gb, sb, kb, cb;
    PyObject *gobj, *mobj, *sobj = Py_None, *kobj = Py_None, *cobj = Py_None, *mseq = NULL;
    Py_ssize_t nst, row0, row1, unk, step, stride = 1, chunk = 0, n = 0, i;
    Rows rs;
    int pairs, unknown;
    float *samples = NULL, *fbuf = NULL;
    int32_t *ibuf = NULL;
    int64_t *hist = NULL;
    Inst *inst = NULL;
    Py_buffer *mbufs = NULL;
    (void)self;
    memset(&cm, 0, sizeof cm);
    memset(&gb, 0, sizeof gb);
    memset(&sb, 0, sizeof sb);
    memset(&kb, 0, sizeof kb);
    memset(&cb, 0, sizeof cb);
    if (!PyArg_ParseTuple(args, "y*w*nnnnnnOOnnpp|OnOnO", &cm.logits, &cm.out, &cm.C, &cm.H, &cm.W, &nst, &row0,
                          &row1, &gobj, &mobj, &step, &unk, &pairs, &unknown, &sobj, &stride, &kobj, &chunk, &cobj))
        return NULL;
    Py_buffer *bufs[] = {&cm.logits, &cm.out, &gb, &sb, &kb, &cb};
    PyObject *result = NULL;
    if (parse_common(&cm, row0, row1) < 0 || get_samples(sobj, &sb, &cm, stride, &samples) < 0 ||
        get_rows(kobj, &kb, chunk, row0, row1, &rs) < 0)
        goto done;
    if (nst < 0 || nst > cm.C) {
        PyErr_SetString(PyExc_ValueError, "nst must be in 0..C");
        goto done;
    }
    if (cobj != Py_None) {
        if (PyObject_GetBuffer(cobj, &cb, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) goto done;
        if (unk < 0 || unk >= INT32_MAX || cb.itemsize != 8 || cb.len != (unk + 1) * 8) {
            PyErr_SetString(PyExc_ValueError, "counts must be a writable contiguous (unk + 1,) int64 buffer");
            goto done;
        }
        hist = (int64_t *)PyMem_RawCalloc(4 * (size_t)(unk + 1), sizeof(int64_t));
        if (hist == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    if (gobj != Py_None) {
        if (PyObject_GetBuffer(gobj, &gb, PyBUF_C_CONTIGUOUS) < 0) goto done;
        if (gb.itemsize != 8 || gb.len % (8 * GEOMETRY) != 0) {
            PyErr_SetString(PyExc_ValueError, "geometry must be a contiguous (N, 23) int64 buffer");
            goto done;
        }
        n = gb.len / (8 * GEOMETRY);
        mseq = PySequence_Fast(mobj, "masks must be a sequence of buffers");
        if (mseq == NULL) goto done;
        if (PySequence_Fast_GET_SIZE(mseq) != n) {
            PyErr_SetString(PyExc_ValueError, "one mask buffer per geometry row");
            goto done;
        }
    }
    inst = (Inst *)PyMem_RawCalloc((size_t)(n > 0 ? n : 1), sizeof(Inst));
    mbufs = (Py_buffer *)PyMem_RawCalloc((size_t)(n > 0 ? n : 1), sizeof(Py_buffer));
    if (inst == NULL || mbufs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n; i++) {
        const int64_t *g = (const int64_t *)gb.buf + i * GEOMETRY;
        Inst *t = inst + i;
        t->cy0 = g[0], t->cy1 = g[1], t->cx0 = g[2], t->cx1 = g[3], t->ph = g[4], t->pw = g[5];
        for (int q = 0; q < 16; q++) t->zero[q / 4][q % 4] = g[6 + q];
        t->channel = g[22];
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(mseq, i), mbufs + i, PyBUF_C_CONTIGUOUS) < 0) goto done;
        int ok = t->channel >= 0 && t->channel < cm.C && t->cy0 >= 0 && t->cy1 <= cm.H && t->cx0 >= 0 &&
                 t->cx1 <= cm.W && t->ph >= 0 && t->pw >= 0 && (t->cy1 <= t->cy0 || t->ph <= t->cy1 - t->cy0) &&
                 (t->cx1 <= t->cx0 || t->pw <= t->cx1 - t->cx0) && mbufs[i].itemsize == 4 &&
                 mbufs[i].len == t->ph * t->pw * 4;
        for (int q = 0; q < 4 && ok; q++)
            ok = t->zero[q][1] <= t->zero[q][0] ||
                 (t->zero[q][0] >= 0 && t->zero[q][1] <= cm.H && t->zero[q][2] >= 0 && t->zero[q][3] <= cm.W);
        if (!ok) {
            PyErr_Format(PyExc_ValueError, "instance %zd: geometry or mask buffer out of range", i);
            goto done;
        }
        if (t->cy1 <= t->cy0 || t->cx1 <= t->cx0) t->cy1 = t->cy0; /* empty crop box: nothing to do */
        if (t->ph == 0 || t->pw == 0) t->ph = 0;                   /* no mask logit anywhere */
        t->mask = (const float *)mbufs[i].buf;
    }
    Py_ssize_t cap = cm.W > BLOCK ? cm.W : BLOCK;
    fbuf = (float *)PyMem_RawMalloc(sizeof(float) * (4 * (size_t)cap + 4 * PAD));
    ibuf = (int32_t *)PyMem_RawCalloc(2 * (size_t)cap + PAD, sizeof(int32_t)); /* sidx stays 0 without stuff */
    if (fbuf == NULL || ibuf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Work wk = {fbuf, fbuf + cap + PAD, fbuf + 2 * (cap + PAD), fbuf + 3 * (cap + PAD), ibuf, ibuf + cap + PAD,
               hist, (uint32_t)(unk + 1)};
    int32_t bad = 0;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t a, b;
    while (next_rows(&rs, &a, &b))
        bad |= upsnet_rows((const float *)cm.logits.buf, (int32_t *)cm.out.buf, cm.C, cm.H, cm.W, nst, a, b, inst, n,
                           (int32_t)step, (int32_t)unk, pairs, unknown, &wk, samples, stride);
    if (hist != NULL) add_histograms(hist, (size_t)unk + 1, (int64_t *)cb.buf); /* this thread's share */
    Py_END_ALLOW_THREADS
    result = PyBool_FromLong(!bad);
done:
    if (mbufs != NULL)
        for (i = 0; i < n; i++)
            if (mbufs[i].obj != NULL) PyBuffer_Release(mbufs + i);
    PyMem_RawFree(mbufs);
    PyMem_RawFree(inst);
    Py_XDECREF(mseq);
    PyMem_RawFree(fbuf);
    PyMem_RawFree(ibuf);
    PyMem_RawFree(hist);
    release(bufs, 6);
    return result;
}

/* ------------------------------------------------------------------------------------------ mask pruning */

/* Foreground pixels (logit > 0) of a (bh, bw) mask, and how many of them are set on the canvas window cv (row
 * stride W).  Per row in 32-bit lanes, so that the loop vectorises. */
TARGETS static void overlap_count(const float *m, const uint8_t *cv, Py_ssize_t bh, Py_ssize_t bw, Py_ssize_t W,
                                  Py_ssize_t *area, Py_ssize_t *inter) {
    Py_ssize_t a = 0, b = 0;
    for (Py_ssize_t y = 0; y < bh; y++) {
        const float *restrict mr = m + y * bw;
        const uint8_t *restrict cr = cv + y * W;
        int32_t ra = 0, rb = 0;
        for (Py_ssize_t x = 0; x < bw; x++) {
            int32_t on = mr[x] > 0.0f;
            ra += on;
            rb += on & (int32_t)cr[x];
        }
        a += ra, b += rb;
    }
    *area = a, *inter = b;
}

/* Paint the mask's foreground onto the canvas window. */
TARGETS static void overlap_paint(const float *m, uint8_t *cv, Py_ssize_t bh, Py_ssize_t bw, Py_ssize_t W) {
    for (Py_ssize_t y = 0; y < bh; y++) {
        const float *restrict mr = m + y * bw;
        uint8_t *restrict cr = cv + y * W;
        for (Py_ssize_t x = 0; x < bw; x++) cr[x] |= (uint8_t)(mr[x] > 0.0f);
    }
}

PyDoc_STRVAR(overlap_flags_doc,
"overlap_flags(masks, boxes, labels, canvas, H, W, threshold) -> list[bool]\n\n"
"UPSNet's same-class overlap test (panoptic.fusion.pruning), instances in descending score order: instance\n"
"i (binary mask = logit > 0, masks[i] a contiguous float32 (y1 - y0, x1 - x0) buffer at boxes[i] = (y0, y1,\n"
"x0, x1), contiguous int64 (N, 4)) is kept iff its area is > 0 and |mask & kept masks of its class| / area\n"
"<= threshold (float64). canvas: writable contiguous uint8 (num_labels, H, W), all zero; it is all zero\n"
"again on return.");

static PyObject *overlap_flags(PyObject *self, PyObject *args) {
    PyObject *mobj, *mseq = NULL, *result = NULL;
    Py_buffer bb, lb, cb, mb;
    Py_ssize_t H, W, n = 0, i, kept_painted = 0;
    double threshold;
    Py_ssize_t *painted = NULL; /* indices of the painted instances, to clear the canvas */
    (void)self;
    memset(&bb, 0, sizeof bb);
    memset(&lb, 0, sizeof lb);
    memset(&cb, 0, sizeof cb);
    if (!PyArg_ParseTuple(args, "Oy*y*w*nnd", &mobj, &bb, &lb, &cb, &H, &W, &threshold)) return NULL;
    Py_buffer *bufs[] = {&bb, &lb, &cb};
    mseq = PySequence_Fast(mobj, "masks must be a sequence of buffers");
    if (mseq == NULL) goto done;
    n = PySequence_Fast_GET_SIZE(mseq);
    if (bb.len != n * 32 || lb.len != n * 8 || H < 0 || W < 0 || cb.len % (H * W > 0 ? H * W : 1) != 0) {
        PyErr_SetString(PyExc_ValueError, "boxes (N, 4) int64, labels (N,) int64, canvas (L, H, W) uint8 expected");
        goto done;
    }
    const int64_t *boxes = (const int64_t *)bb.buf, *labels = (const int64_t *)lb.buf;
    const Py_ssize_t nlab = H * W > 0 ? cb.len / (H * W) : 0;
    uint8_t *canvas = (uint8_t *)cb.buf;
    painted = (Py_ssize_t *)PyMem_RawMalloc(sizeof(Py_ssize_t) * (size_t)(n > 0 ? n : 1));
    result = PyList_New(n);
    if (painted == NULL || result == NULL) {
        Py_CLEAR(result);
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n; i++) {
        const int64_t *b = boxes + 4 * i;
        Py_ssize_t y0 = b[0], y1 = b[1], x0 = b[2], x1 = b[3], bh = y1 - y0, bw = x1 - x0;
        int keep = 0;
        memset(&mb, 0, sizeof mb);
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(mseq, i), &mb, PyBUF_C_CONTIGUOUS) < 0) {
            Py_CLEAR(result);
            goto done;
        }
        if (bh > 0 && bw > 0) {
            if (y0 < 0 || y1 > H || x0 < 0 || x1 > W || labels[i] < 0 || labels[i] >= nlab || mb.itemsize != 4 ||
                mb.len != bh * bw * 4) {
                PyBuffer_Release(&mb);
                PyErr_Format(PyExc_ValueError, "instance %zd: box, label or mask out of range", i);
                Py_CLEAR(result);
                goto done;
            }
            const float *m = (const float *)mb.buf;
            uint8_t *cv = canvas + labels[i] * H * W + y0 * W + x0;
            Py_ssize_t area = 0, inter = 0;
            overlap_count(m, cv, bh, bw, W, &area, &inter);
            keep = area > 0 && (double)inter / (double)area <= threshold;
            if (keep) {
                overlap_paint(m, cv, bh, bw, W);
                painted[kept_painted++] = i;
            }
        }
        PyBuffer_Release(&mb);
        PyList_SET_ITEM(result, i, PyBool_FromLong(keep));
    }
done:
    if (painted != NULL && cb.buf != NULL)
        for (Py_ssize_t k = 0; k < kept_painted; k++) { /* leave the canvas all zero */
            const int64_t *b = (const int64_t *)bb.buf + 4 * painted[k];
            uint8_t *cv = (uint8_t *)cb.buf + ((const int64_t *)lb.buf)[painted[k]] * H * W;
            for (Py_ssize_t y = b[0]; y < b[1]; y++) memset(cv + y * W + b[2], 0, (size_t)(b[3] - b[2]));
        }
    PyMem_RawFree(painted);
    Py_XDECREF(mseq);
    release(bufs, 3);
    return result;
}

/* ------------------------------------------------------------------------------------ keys: count, relabel */

PyDoc_STRVAR(count_keys_doc,
"count_keys(keys, counts) -> bool\n\n"
"counts[q] += number of q in keys (a bincount). keys: contiguous int32 buffer; counts: writable contiguous int64\n"
"(Q,) buffer, all zero. Returns False (counts then unspecified) if a key is outside 0..Q-1.");

static PyObject *count_keys(PyObject *self, PyObject *args) {
    Py_buffer kb, cb;
    (void)self;
    memset(&kb, 0, sizeof kb);
    memset(&cb, 0, sizeof cb);
    if (!PyArg_ParseTuple(args, "y*w*", &kb, &cb)) return NULL;
    Py_buffer *bufs[] = {&kb, &cb};
    PyObject *result = NULL;
    const Py_ssize_t n = kb.len / 4, q = cb.len / 8;
    if (kb.len % 4 != 0 || cb.len % 8 != 0 || q == 0 || q > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "keys int32, counts (Q,) int64 with 1 <= Q < 2**32 expected");
        goto done;
    }
    int64_t *hist = (int64_t *)PyMem_RawCalloc(4 * (size_t)q, sizeof(int64_t));
    if (hist == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    uint32_t bad = 0;
    Py_BEGIN_ALLOW_THREADS
    bad = count_block((const int32_t *)kb.buf, n, hist, (uint32_t)q);
    add_histograms(hist, (size_t)q, (int64_t *)cb.buf);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(hist);
    result = PyBool_FromLong(!bad);
done:
    release(bufs, 2);
    return result;
}

PyDoc_STRVAR(relabel_keys_doc,
"relabel_keys(lut, keys, out) -> bool\n\n"
"out[i] = lut[keys[i]]. lut: contiguous int32 (Q,); keys: contiguous int32; out: writable contiguous int32 of\n"
"keys' length. Returns False (out then unspecified) if a key is outside 0..Q-1.");

static PyObject *relabel_keys(PyObject *self, PyObject *args) {
    Py_buffer lb, kb, ob;
    (void)self;
    memset(&lb, 0, sizeof lb);
    memset(&kb, 0, sizeof kb);
    memset(&ob, 0, sizeof ob);
    if (!PyArg_ParseTuple(args, "y*y*w*", &lb, &kb, &ob)) return NULL;
    Py_buffer *bufs[] = {&lb, &kb, &ob};
    PyObject *result = NULL;
    const Py_ssize_t n = kb.len / 4, q = lb.len / 4;
    if (lb.len % 4 != 0 || kb.len % 4 != 0 || ob.len != kb.len || q == 0) {
        PyErr_SetString(PyExc_ValueError, "lut (Q,) int32 with Q >= 1, keys int32, out int32 of keys' size expected");
        goto done;
    }
    const int32_t *lut = (const int32_t *)lb.buf, *k = (const int32_t *)kb.buf;
    int32_t *out = (int32_t *)ob.buf;
    uint32_t bad = 0;
    Py_BEGIN_ALLOW_THREADS
    const uint32_t uq = (uint32_t)q;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t a = (uint32_t)k[i];
        uint32_t ok = (uint32_t)(a < uq);
        bad |= ok ^ 1u;
        out[i] = lut[ok ? a : 0]; /* never reads outside the table */
    }
    Py_END_ALLOW_THREADS
    result = PyBool_FromLong(!bad);
done:
    release(bufs, 3);
    return result;
}

static PyMethodDef methods[] = {
    {"first_argmax_keys", first_argmax_keys, METH_VARARGS, first_argmax_keys_doc},
    {"upsnet_keys", upsnet_keys, METH_VARARGS, upsnet_keys_doc},
    {"overlap_flags", overlap_flags, METH_VARARGS, overlap_flags_doc},
    {"count_keys", count_keys, METH_VARARGS, count_keys_doc},
    {"relabel_keys", relabel_keys, METH_VARARGS, relabel_keys_doc},
    {"bilinear_resize", bilinear_resize, METH_VARARGS, bilinear_resize_doc},
    {"bilinear_resize_each", bilinear_resize_each, METH_VARARGS, bilinear_resize_each_doc},
    {"bilinear_assign", bilinear_assign, METH_VARARGS, bilinear_assign_doc},
    {"query_assign", query_assign, METH_VARARGS, query_assign_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "panoptic.fusion._kernels",
    "Per-pixel passes of the fusions over float32 CPU logits (optional; the torch path is the fallback).", -1,
    methods, NULL, NULL, NULL, NULL,
};

/* Raised whenever an entry point is added or its arguments change: panoptic._ops.switch refuses a build from
 * other sources (an editable install whose sources moved on) instead of calling it with the wrong arguments. */
#define API_VERSION 3

PyMODINIT_FUNC PyInit__kernels(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "API_VERSION", API_VERSION) < 0) Py_CLEAR(m);
    return m;
}
