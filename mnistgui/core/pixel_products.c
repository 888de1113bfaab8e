/* mnistgui: the products of a layer that takes a batch of images as its input, with the batch's all-zero
 * pixel columns skipped (see pixel_products.py for why and for the measurements).
 *
 *   forward: y = (x * scale) @ w            x: (m, k) uint8 pixels, w: (k, n) float32
 *   update:  w += alpha * (x * scale).T @ d  d: (m, n) float32
 *
 * Each output is a sum from zero, in the order of k (forward) or of the batch (update), of one fused
 * multiply-add per term, whatever the number of threads: so a run is the same bits on 1 or 8 cores.
 * A pixel column that is zero in every image adds exactly zero to every sum it would enter, so leaving it
 * out changes nothing but the time. (0 * inf would be NaN: a weight row that is infinite or NaN where the
 * whole batch is zero does not reach the output, as it would through BLAS.)
 *
 * Register tiles of SZ_R rows by SZ_W columns, operands packed per tile as BLAS does. GCC's vector
 * extensions: AVX-512 registers where the compiler targets them, narrower ones elsewhere.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

typedef float sz_v16 __attribute__((vector_size(64)));
typedef float sz_v16u __attribute__((vector_size(64), aligned(4)));
#if defined(__AVX512F__)
#define SZ_R 8   /* rows of a register tile */
#define SZ_NV 2  /* 16-float vectors across it */
#else
#define SZ_R 6
#define SZ_NV 1
#endif
#define SZ_W (16 * SZ_NV)

static inline sz_v16 sz_ld(const float* p) { return *(const sz_v16u*)p; }
static inline void sz_st(float* p, sz_v16 v) { *(sz_v16u*)p = v; }
static inline sz_v16 sz_bc(const float* p) { float s = *p; sz_v16 v = {s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; return v; }
static inline sz_v16 sz_zero(void) { sz_v16 v = {0}; return v; }
static inline sz_v16 sz_splat(float s) { return sz_bc(&s); }

typedef int sz_i16 __attribute__((vector_size(64)));
/* where mask (all ones or all zeros per lane) then a else b */
static inline sz_v16 sz_select(sz_i16 mask, sz_v16 a, sz_v16 b) { return (sz_v16)(((sz_i16)a & mask) | ((sz_i16)b & ~mask)); }

/* 1 / (1 + exp(-x)) in float32, exp as Cephes' expf (a degree-6 polynomial on x - n ln 2, then 2^n):
   within a few units in the last place of the rounded exact value; NaN stays NaN. The exponent is held
   to [-87.3, 87.3], where 2^n and the sigmoid are normal floats: below it the sigmoid is 1, above it 0
   (NumPy's is 0 from 88.7, where its exp overflows, and a denormal between: a denormal would slow every
   product that reads it). */
static inline sz_v16 sz_sigmoid(sz_v16 x) {
    sz_v16 t = -x;
    const sz_i16 vanishing = t > sz_splat(87.3f);
    t = sz_select(vanishing, sz_splat(87.3f), t);
    t = sz_select(t < sz_splat(-87.3f), sz_splat(-87.3f), t);
    const sz_v16 magic = sz_splat(12582912.0f);  /* 1.5 * 2^23: adding it rounds to an integer */
    sz_v16 n = (t * sz_splat(1.44269504088896341f) + magic) - magic;
    sz_v16 r = t - n * sz_splat(0.693359375f) - n * sz_splat(-2.12194440e-4f);
    sz_v16 p = sz_splat(1.9875691500e-4f);
    p = p * r + sz_splat(1.3981999507e-3f);
    p = p * r + sz_splat(8.3334519073e-3f);
    p = p * r + sz_splat(4.1665795894e-2f);
    p = p * r + sz_splat(1.6666665459e-1f);
    p = p * r + sz_splat(5.0000001201e-1f);
    p = p * (r * r) + r + sz_splat(1.0f);
    sz_i16 exponent = (__builtin_convertvector(n, sz_i16) + 127) << 23;
    sz_v16 e = p * (sz_v16)exponent;
    return sz_select(vanishing, sz_zero(), sz_splat(1.0f) / (sz_splat(1.0f) + e));
}

/* The columns of x (m rows, strides in bytes) with any non-zero entry, in order; their count. */
static int sz_nonzero_columns(const unsigned char* x, int m, int k, int64_t sx0, int64_t sx1, int* idx, unsigned char* any) {
    memset(any, 0, k);
    for (int i = 0; i < m; i++) {
        const unsigned char* row = x + i * sx0;
        if (sx1 == 1) { for (int c = 0; c < k; c++) any[c] |= row[c]; }
        else { for (int c = 0; c < k; c++) any[c] |= row[c * sx1]; }
    }
    int kp = 0;
    for (int c = 0; c < k; c++) if (any[c]) idx[kp++] = c;
    return kp;
}

typedef struct {
    const unsigned char* x; const float *w, *d; float* y; float scale, alpha;
    int m, n, kp; int64_t sx0, sx1, sw0, sy0, sd0; const int* idx;
    int part, parts, kind;  /* kind: 1 the forward product, 2 the update */
    int sigmoid;            /* forward: the logistic sigmoid of each output, in the same pass */
    float* buffer;          /* the part's packed operands: sz_part_floats() floats */
} sz_job;

static void sz_part_blocks(const sz_job* job, int blocks, int* b0, int* b1) {
    *b0 = (int)((int64_t)blocks * job->part / job->parts);
    *b1 = (int)((int64_t)blocks * (job->part + 1) / job->parts);
}

/* The floats a part packs its operands into: all of x's rows and one panel of w (forward), or its own
   columns of x and one panel of d (update). */
static size_t sz_part_floats(const sz_job* job) {
    const size_t kq = job->kp ? (size_t)job->kp : 1, m = (size_t)job->m;
    if (job->kind == 1) return (size_t)((job->m + SZ_R - 1) / SZ_R) * SZ_R * kq + kq * SZ_W;
    int b0, b1;
    sz_part_blocks(job, (job->kp + SZ_R - 1) / SZ_R, &b0, &b1);
    return (size_t)(b1 > b0 ? b1 - b0 : 0) * SZ_R * m + m * SZ_W + 1;
}

/* acc[r] = sum over t < count of a[t][r] * b[t], a packed SZ_R floats a step and b SZ_W: one register
   tile, each sum from zero in the order of t, one fused multiply-add a term. */
static inline __attribute__((always_inline)) void sz_tile_sums(const float* a, const float* b, int count,
                                                               sz_v16 acc[SZ_R][SZ_NV]) {
    #pragma GCC unroll 16
    for (int r = 0; r < SZ_R; r++)
        #pragma GCC unroll 4
        for (int v = 0; v < SZ_NV; v++) acc[r][v] = sz_zero();
    for (int t = 0; t < count; t++, a += SZ_R, b += SZ_W) {
        sz_v16 bv[SZ_NV];
        #pragma GCC unroll 4
        for (int v = 0; v < SZ_NV; v++) bv[v] = sz_ld(b + 16 * v);
        #pragma GCC unroll 16
        for (int r = 0; r < SZ_R; r++) {
            sz_v16 x = sz_bc(a + r);
            #pragma GCC unroll 4
            for (int v = 0; v < SZ_NV; v++) acc[r][v] += x * bv[v];
        }
    }
}

/* y[:, this part's columns] = x @ w, each entry a sum from zero over the listed columns of x in order,
   one fused multiply-add each. Every part packs all of x's rows (a fifth of the bytes of w's it packs). */
static void sz_forward_cols(sz_job* job) {
    const int m = job->m, n = job->n, kp = job->kp;
    const int panels = (n + SZ_W - 1) / SZ_W, blocks = (m + SZ_R - 1) / SZ_R;
    int p0, p1;
    sz_part_blocks(job, panels, &p0, &p1);
    if (p0 >= p1 || m == 0) return;
    const size_t kq = kp ? kp : 1;
    float* xp = job->buffer;
    float* wp = xp + (size_t)blocks * SZ_R * kq;
    for (int b = 0; b < blocks; b++)  /* xp[b][kk][r] = x[b * R + r, idx[kk]], rows past m zero */
        for (int r = 0; r < SZ_R; r++) {
            const int i = b * SZ_R + r;
            float* out = xp + (size_t)b * SZ_R * kp + r;
            if (i < m) { const unsigned char* row = job->x + i * job->sx0; for (int kk = 0; kk < kp; kk++) out[(size_t)kk * SZ_R] = (float)row[job->idx[kk] * job->sx1] * job->scale; }
            else for (int kk = 0; kk < kp; kk++) out[(size_t)kk * SZ_R] = 0.0f;
        }
    for (int j = p0 * SZ_W; j < p1 * SZ_W && j < n; j += SZ_W) {
        const int width = n - j < SZ_W ? n - j : SZ_W;
        for (int kk = 0; kk < kp; kk++) {  /* wp[kk] = w[idx[kk], j:j+W], columns past n zero */
            const float* src = job->w + (int64_t)job->idx[kk] * job->sw0 + j;
            float* dst = wp + (size_t)kk * SZ_W;
            if (width == SZ_W) for (int v = 0; v < SZ_NV; v++) sz_st(dst + 16 * v, sz_ld(src + 16 * v));
            else { for (int c = 0; c < width; c++) dst[c] = src[c]; for (int c = width; c < SZ_W; c++) dst[c] = 0.0f; }
        }
        for (int b = 0; b < blocks; b++) {
            sz_v16 acc[SZ_R][SZ_NV];
            sz_tile_sums(xp + (size_t)b * SZ_R * kp, wp, kp, acc);
            if (job->sigmoid)
                for (int r = 0; r < SZ_R; r++)
                    for (int v = 0; v < SZ_NV; v++) acc[r][v] = sz_sigmoid(acc[r][v]);
            for (int r = 0; r < SZ_R && b * SZ_R + r < m; r++) {
                float* out = job->y + (b * SZ_R + r) * job->sy0 + j;
                if (width == SZ_W) { for (int v = 0; v < SZ_NV; v++) sz_st(out + 16 * v, acc[r][v]); }
                else { float tile[SZ_W]; for (int v = 0; v < SZ_NV; v++) sz_st(tile + 16 * v, acc[r][v]); for (int c = 0; c < width; c++) out[c] = tile[c]; }
            }
        }
    }
}

/* w[idx[kk], :] += alpha * sum_b x[b, idx[kk]] * d[b, :] for this part's listed columns of x; each sum
   from zero over the batch in order, one fused multiply-add each, then one more into w. */
static void sz_update_rows(sz_job* job) {
    const int m = job->m, n = job->n, kp = job->kp;
    const int blocks = (kp + SZ_R - 1) / SZ_R;
    int b0, b1;
    sz_part_blocks(job, blocks, &b0, &b1);
    if (b0 >= b1 || m == 0) return;
    float* xq = job->buffer;
    float* dp = xq + (size_t)(b1 - b0) * SZ_R * m;
    for (int i = 0; i < m; i++) {  /* xq[b][i][r] = x[i, idx[b * R + r]], columns past kp zero */
        const unsigned char* row = job->x + i * job->sx0;
        for (int b = b0; b < b1; b++) {
            float* out = xq + ((size_t)(b - b0) * m + i) * SZ_R;
            for (int r = 0; r < SZ_R; r++) { int kk = b * SZ_R + r; out[r] = kk < kp ? (float)row[job->idx[kk] * job->sx1] * job->scale : 0.0f; }
        }
    }
    const sz_v16 alpha = sz_bc(&job->alpha);
    for (int j = 0; j < n; j += SZ_W) {
        const int width = n - j < SZ_W ? n - j : SZ_W;
        for (int i = 0; i < m; i++) {
            const float* src = job->d + i * job->sd0 + j;
            float* dst = dp + (size_t)i * SZ_W;
            if (width == SZ_W) for (int v = 0; v < SZ_NV; v++) sz_st(dst + 16 * v, sz_ld(src + 16 * v));
            else { for (int c = 0; c < width; c++) dst[c] = src[c]; for (int c = width; c < SZ_W; c++) dst[c] = 0.0f; }
        }
        for (int b = b0; b < b1; b++) {
            sz_v16 acc[SZ_R][SZ_NV];
            sz_tile_sums(xq + (size_t)(b - b0) * m * SZ_R, dp, m, acc);
            for (int r = 0; r < SZ_R && b * SZ_R + r < kp; r++) {
                float* out = job->y + (int64_t)job->idx[b * SZ_R + r] * job->sy0 + j;
                if (width == SZ_W) { for (int v = 0; v < SZ_NV; v++) sz_st(out + 16 * v, sz_ld(out + 16 * v) + alpha * acc[r][v]); }
                else {  /* the same one fused multiply-add into w as a full tile's */
                    float tile[SZ_W];
                    for (int c = 0; c < SZ_W; c++) tile[c] = c < width ? out[c] : 0.0f;
                    for (int v = 0; v < SZ_NV; v++) sz_st(tile + 16 * v, sz_ld(tile + 16 * v) + alpha * acc[r][v]);
                    for (int c = 0; c < width; c++) out[c] = tile[c];
                }
            }
        }
    }
}

/* A pool of threads that spin a while between calls before they sleep: a thread started per call, or
   woken from sleep, starts its part 0.1-0.2 ms late on these machines (measured), half a product's time. */
#define SZ_MAX_PARTS 8
#define SZ_SPIN_NS 2000000L
typedef struct {
    pthread_mutex_t run;        /* one run at a time; a second caller computes alone */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long run_id;                /* generation << 8 | parts, published last */
    int done, started;
    sz_job jobs[SZ_MAX_PARTS];
} sz_pool_t;
static sz_pool_t* sz_pool = NULL;
static pthread_mutex_t sz_pool_init = PTHREAD_MUTEX_INITIALIZER;
static __thread int sz_last_parts = 0;

/* A forked child has none of the parent's threads, and the parent's locks as they were: it starts anew
   (the parent's pool, in the child's copy of memory, is left). */
static void sz_after_fork_in_child(void) {
    pthread_mutex_init(&sz_pool_init, NULL);
    sz_pool = NULL;
}
__attribute__((constructor)) static void sz_register_fork_handler(void) {
    pthread_atfork(NULL, NULL, sz_after_fork_in_child);
}

static long sz_clock_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000L + t.tv_nsec; }
/* A pause between polls, and every 1024th a yield: a thread waiting on a core it shares gives it up. */
static inline void sz_relax(int n) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if ((n & 1023) == 0) sched_yield();
}
static int sz_usable_cores(void) {
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
static void sz_run_part(sz_job* job) { if (job->kind == 1) sz_forward_cols(job); else sz_update_rows(job); }

static void* sz_worker(void* arg) {
    const long me = (long)(intptr_t)arg;
    sz_pool_t* pool = sz_pool;
    long seen = 0;  /* the last run this thread looked at; a run is (generation << 8 | parts) */
    long spin_start = sz_clock_ns();
    for (;;) {
        long run;
        for (int n = 1;; n++) {
            run = __atomic_load_n(&pool->run_id, __ATOMIC_ACQUIRE);
            if (run != seen && (run & 255) > me) break;
            seen = run;  /* a run without a part for this thread: it keeps waiting, its spin not restarted */
            if ((n & 255) == 0 && sz_clock_ns() - spin_start > SZ_SPIN_NS) {
                pthread_mutex_lock(&pool->mu);
                while ((run = __atomic_load_n(&pool->run_id, __ATOMIC_ACQUIRE)) == seen || (run & 255) <= me) {
                    seen = run;
                    pthread_cond_wait(&pool->cv, &pool->mu);
                }
                pthread_mutex_unlock(&pool->mu);
                break;
            }
            sz_relax(n);
        }
        seen = run;
        sz_run_part(&pool->jobs[me]);
        __atomic_add_fetch(&pool->done, 1, __ATOMIC_ACQ_REL);
        spin_start = sz_clock_ns();
    }
    return NULL;
}

/* The pool with `workers` threads besides the caller's (fewer if threads cannot be made), for this process. */
static sz_pool_t* sz_get_pool(int workers) {
    pthread_mutex_lock(&sz_pool_init);
    if (sz_pool == NULL) {
        sz_pool_t* pool = (sz_pool_t*)calloc(1, sizeof(sz_pool_t));
        if (pool) { pthread_mutex_init(&pool->run, NULL); pthread_mutex_init(&pool->mu, NULL); pthread_cond_init(&pool->cv, NULL); }
        sz_pool = pool;
    }
    sz_pool_t* pool = sz_pool;
    if (pool) {
        for (int w = pool->started + 1; w <= workers && w < SZ_MAX_PARTS; w++) {
            pthread_t thread;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            int ok = pthread_create(&thread, &attr, sz_worker, (void*)(intptr_t)w) == 0;
            pthread_attr_destroy(&attr);
            if (!ok) break;
            pool->started = w;
        }
    }
    pthread_mutex_unlock(&sz_pool_init);
    return pool;
}

static void sz_free_buffers(sz_job* jobs, int parts) { for (int p = 0; p < parts; p++) { free(jobs[p].buffer); jobs[p].buffer = NULL; } }

/* Every part's memory, before any part writes: where one cannot have its own, nothing is written. */
static int sz_alloc_buffers(sz_job* jobs, int parts) {
    for (int p = 0; p < parts; p++) {
        jobs[p].buffer = (float*)malloc(sizeof(float) * sz_part_floats(&jobs[p]));
        if (!jobs[p].buffer) { sz_free_buffers(jobs, p); return -1; }
    }
    return 0;
}

/* Runs the forward product (or the update) in `parts` parts; 0, or -1 if memory ran out (then the
   output is untouched). */
static int sz_run(const sz_job* proto, int parts, int forward) {
    const int cores = sz_usable_cores();
    if (parts > cores) parts = cores;  /* a thread spinning with no core of its own slows every part */
    if (parts > SZ_MAX_PARTS) parts = SZ_MAX_PARTS;
    if (parts < 1) parts = 1;
    sz_pool_t* pool = parts > 1 ? sz_get_pool(parts - 1) : NULL;
    if (pool && pool->started + 1 < parts) parts = pool->started + 1;
    if (parts == 1 || pool == NULL || pthread_mutex_trylock(&pool->run) != 0) {
        sz_job job = *proto; job.part = 0; job.parts = 1; job.kind = forward ? 1 : 2;
        if (sz_alloc_buffers(&job, 1)) return -1;
        sz_run_part(&job);
        sz_free_buffers(&job, 1);
        sz_last_parts = 1;
        return 0;
    }
    for (int p = 0; p < parts; p++) { pool->jobs[p] = *proto; pool->jobs[p].part = p; pool->jobs[p].parts = parts; pool->jobs[p].kind = forward ? 1 : 2; }
    if (sz_alloc_buffers(pool->jobs, parts)) { pthread_mutex_unlock(&pool->run); return -1; }
    __atomic_store_n(&pool->done, 0, __ATOMIC_RELEASE);
    pthread_mutex_lock(&pool->mu);
    __atomic_store_n(&pool->run_id, ((pool->run_id >> 8) + 1) << 8 | parts, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
    sz_run_part(&pool->jobs[0]);
    for (int n = 1; __atomic_load_n(&pool->done, __ATOMIC_ACQUIRE) < parts - 1; n++) sz_relax(n);
    sz_free_buffers(pool->jobs, parts);
    pthread_mutex_unlock(&pool->run);
    sz_last_parts = parts;
    return 0;
}

/* Exported: 0, -1 where memory ran out (then the output is untouched), -2 for bad sizes. Strides in
   elements of each array. */
static int sz_prepare(sz_job* job, const unsigned char* x, int64_t m, int64_t k, int64_t sx0, int64_t sx1, int64_t n, int** idx) {
    if (m < 0 || k < 0 || n < 0 || m > (1 << 30) || k > (1 << 30) || n > (1 << 30)) return -2;
    memset(job, 0, sizeof *job);
    *idx = (int*)malloc(sizeof(int) * (size_t)(k ? k : 1) + (size_t)(k ? k : 1));
    if (!*idx) return -1;
    job->kp = sz_nonzero_columns(x, (int)m, (int)k, sx0, sx1, *idx, (unsigned char*)(*idx + (k ? k : 1)));
    job->x = x; job->m = (int)m; job->n = (int)n; job->sx0 = sx0; job->sx1 = sx1; job->idx = *idx;
    return 0;
}

int mnistgui_pixel_product(const unsigned char* x, int64_t m, int64_t k, int64_t sx0, int64_t sx1, float scale,
                           const float* w, int64_t n, int64_t sw0, float* y, int64_t sy0, int sigmoid, int parts) {
    sz_job job; int* idx;
    int status = sz_prepare(&job, x, m, k, sx0, sx1, n, &idx);
    if (status) return status;
    job.scale = scale; job.w = w; job.sw0 = sw0; job.y = y; job.sy0 = sy0; job.sigmoid = sigmoid;
    status = sz_run(&job, parts, 1);
    free(idx);
    return status;
}

int mnistgui_pixel_gemm_update(const unsigned char* x, int64_t m, int64_t k, int64_t sx0, int64_t sx1, float scale,
                               const float* d, int64_t n, int64_t sd0, float alpha, float* w, int64_t sw0, int parts) {
    sz_job job; int* idx;
    int status = sz_prepare(&job, x, m, k, sx0, sx1, n, &idx);
    if (status) return status;
    job.scale = scale; job.d = d; job.sd0 = sd0; job.alpha = alpha; job.y = w; job.sy0 = sw0;
    status = sz_run(&job, parts, 0);
    free(idx);
    return status;
}

/* The parts the last product or update on the calling thread ran in: for tests. */
int mnistgui_pixel_last_parts(void) { return sz_last_parts; }

/* How many of x's columns hold a non-zero pixel: for tests. */
int mnistgui_pixel_nonzero_columns(const unsigned char* x, int64_t m, int64_t k, int64_t sx0, int64_t sx1) {
    sz_job job; int* idx;
    int status = sz_prepare(&job, x, m, k, sx0, sx1, 0, &idx);
    if (status) return status;
    free(idx);
    return job.kp;
}
