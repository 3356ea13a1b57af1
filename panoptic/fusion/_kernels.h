/* Shared by the C passes of panoptic.fusion._kernels (_kernels.c, _bilinear.c): inlining and CPU-clone
 * attributes, and the row ranges a call works on when several threads run the same pass. */
#ifndef PANOPTIC_KERNELS_H
#define PANOPTIC_KERNELS_H

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
#define TARGETS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TARGETS
#endif

/* Row ranges a call works on: [row0, row1) at once, or, with a shared counter, chunks of `chunk` rows that
 * the threads running the same pass take in turn (an atomic add, no GIL: a thread descheduled while holding
 * the GIL would stall the others, e.g. while torch's OpenMP workers spin after a parallel operation). */
#if defined(_MSC_VER)
#include <intrin.h>
#define FETCH_ADD(p, v) _InterlockedExchangeAdd64((volatile long long *)(p), (long long)(v))
#else
#define FETCH_ADD(p, v) __atomic_fetch_add((p), (int64_t)(v), __ATOMIC_RELAXED)
#endif

typedef struct {
    int64_t *counter;
    Py_ssize_t chunk, row0, row1;
    int done;
} Rows;

static inline int next_rows(Rows *rs, Py_ssize_t *a, Py_ssize_t *b) {
    if (rs->counter == NULL) {
        if (rs->done) return 0;
        rs->done = 1;
        *a = rs->row0, *b = rs->row1;
        return *a < *b;
    }
    Py_ssize_t r = rs->row0 + (Py_ssize_t)FETCH_ADD(rs->counter, rs->chunk);
    if (r >= rs->row1) return 0;
    *a = r, *b = r + rs->chunk < rs->row1 ? r + rs->chunk : rs->row1;
    return 1;
}

/* The optional (counter, chunk) arguments: counter a writable int64 buffer of one element, chunk >= 1. */
static inline int get_rows(PyObject *obj, Py_buffer *buf, Py_ssize_t chunk, Py_ssize_t row0, Py_ssize_t row1, Rows *rs) {
    memset(rs, 0, sizeof *rs);
    rs->row0 = row0, rs->row1 = row1, rs->chunk = chunk;
    if (obj == Py_None) return 0;
    if (PyObject_GetBuffer(obj, buf, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) return -1;
    if (buf->len != 8 || chunk < 1) {
        PyErr_SetString(PyExc_ValueError, "counter must be a writable int64 buffer of one element, chunk >= 1");
        return -1;
    }
    rs->counter = (int64_t *)buf->buf;
    return 0;
}

static inline void release(Py_buffer *bufs[], int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i]->obj != NULL) PyBuffer_Release(bufs[i]);
}

/* The Python entry points of _bilinear.c (the method table lives in _kernels.c). */
PyObject *bilinear_resize(PyObject *self, PyObject *args);
PyObject *bilinear_resize_each(PyObject *self, PyObject *args);
PyObject *bilinear_assign(PyObject *self, PyObject *args);
PyObject *query_assign(PyObject *self, PyObject *args);
extern const char bilinear_resize_doc[], bilinear_resize_each_doc[], bilinear_assign_doc[], query_assign_doc[];

#endif
