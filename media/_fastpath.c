/*
 * The per-copy forwarding path in C: rewrite, history, pacer, transport-cc stamp, SRTP,
 * sendto. Optional: media/fastpath.py falls back to the same logic in Python when this
 * module is not built (no compiler) or HOINGHI_NATIVE=0.
 *
 * Why native: a forwarded copy costs ~10 us in Python, of which the sendto syscall is ~3.5;
 * the rest is interpreter work spread over a dozen attribute reads and calls (the rewrite,
 * the pacer's token bucket, the transport-wide sequence number, the cffi call into libsrtp,
 * uvloop's sendto). At 164 sites that work is most of a worker's CPU, and Janus, the C
 * reference, pays only the syscall and the cipher.
 *
 * Design:
 * - `ConsumerCore` is the base class of media.consumer.Consumer. It stores the fields the
 *   per-copy path reads (offsets, last-sent values, flags) as C members that Python code
 *   reads and writes as ordinary attributes, so the slow paths (switching at a keyframe,
 *   the temporal-layer filter, late packets) stay in Python, unchanged, and are called from
 *   here only when a packet needs them.
 * - `SendCore` is the base class of media.transport.WebRtcTransport: the pacer's token
 *   bucket state and the counters as C members; once DTLS is up `_direct_bind` gives it a
 *   dup of the ICE socket's descriptor (so a socket aioice closes can never be reused under
 *   us), the peer's address, libsrtp's context and srtp_protect (as addresses from
 *   pylibsrtp's cffi binding: no link-time dependency on libsrtp) and the transport-cc send
 *   history's arrays. Until then, or when not bound, it calls the Python implementation.
 * - `fanout` reads an RtpInfo's fields once and writes every sink: one C loop instead of a
 *   method call and a dozen attribute reads per subscriber.
 * The packet bytes are built once per copy (a bytearray: it is also the NACK history entry,
 * exactly as in Python) and protected into a buffer owned by the transport.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef int (*srtp_protect_fn)(void *ctx, void *rtp, int *len);

#define SRTP_BUF 2048
#define SRTP_TRAILER 144 /* SRTP_MAX_TRAILER_LEN */

static PyObject *s_popleft, *s_switch, *s_temporal, *s_late_offsets, *s_send_rtp, *s_send_now_py, *s_write, *s_append,
    *s_pace_schedule, *s_max_queue, *s_seq;
static PyObject *s_data, *s_seqf, *s_ts, *s_marker, *s_padding, *s_abs24, *s_audio_level, *s_vp8_pid_off,
    *s_vp8_pid_wide, *s_vp8_tl0_off, *s_payload_offset, *s_vp8_tid, *s_keyframe;

static inline double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ SendCore */

typedef struct {
    PyObject_HEAD
    double pace_rate;   /* bytes per second; 0: not paced */
    double pace_burst;  /* bytes: the most saved while idle */
    double pace_late;   /* bytes: the most a late drain tick may catch up */
    double pace_tokens;
    double pace_time;
    PyObject *pace_queue; /* deque of (packet, tcc_off, queued_at) */
    long long pace_queued_bytes;
    long long pace_dropped;
    long long packets_out;
    long long bytes_out;
    long long send_errors;
    double pace_wait_s;   /* total time sent packets waited in the pacer queue */
    PyObject *pace_waited; /* list: counts of those waits per LATENCY_BOUNDS_S bucket */
    /* direct sending, after _direct_bind */
    int fd;
    int wire_overhead; /* bytes on the wire beyond the SRTP payload (tag + UDP/IP) */
    struct sockaddr_storage sa;
    socklen_t salen;
    void *srtp_ctx;
    srtp_protect_fn protect;
    PyObject *srtp_keep;
    PyObject *history;
    Py_buffer hb_times, hb_sizes, hb_seqs, hb_probe;
    int have_hist;
    unsigned char buf[SRTP_BUF];
} SendCore;

static PyTypeObject SendCoreType;

static void sc_release_hist(SendCore *t) {
    if (t->have_hist) {
        PyBuffer_Release(&t->hb_times);
        PyBuffer_Release(&t->hb_sizes);
        PyBuffer_Release(&t->hb_seqs);
        PyBuffer_Release(&t->hb_probe);
        t->have_hist = 0;
    }
}

static void sc_unbind(SendCore *t) {
    if (t->fd >= 0) {
        close(t->fd);
        t->fd = -1;
    }
    t->srtp_ctx = NULL;
    t->protect = NULL;
    Py_CLEAR(t->srtp_keep);
    sc_release_hist(t);
    Py_CLEAR(t->history);
}

static PyObject *sc_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    SendCore *t = (SendCore *)type->tp_alloc(type, 0);
    if (t == NULL) return NULL;
    t->fd = -1;
    t->pace_burst = 300.0;
    t->pace_late = 300.0;
    t->wire_overhead = 38;
    return (PyObject *)t;
}

static int sc_traverse(SendCore *t, visitproc visit, void *arg) {
    Py_VISIT(t->pace_queue);
    Py_VISIT(t->pace_waited);
    Py_VISIT(t->srtp_keep);
    Py_VISIT(t->history);
    return 0;
}

static int sc_clear(SendCore *t) {
    Py_CLEAR(t->pace_queue);
    Py_CLEAR(t->pace_waited);
    sc_unbind(t);
    return 0;
}

static void sc_dealloc(SendCore *t) {
    PyObject_GC_UnTrack(t);
    sc_clear(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static int get_buffer(PyObject *owner, const char *name, Py_buffer *view, Py_ssize_t itemsize, Py_ssize_t count) {
    PyObject *arr = PyObject_GetAttrString(owner, name);
    if (arr == NULL) return -1;
    int r = PyObject_GetBuffer(arr, view, PyBUF_WRITABLE | PyBUF_FORMAT);
    Py_DECREF(arr);
    if (r < 0) return -1;
    if (view->itemsize != itemsize || view->len != itemsize * count) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "send history array %s has an unexpected layout", name);
        return -1;
    }
    return 0;
}

/* _direct_bind(fd, host, port, srtp_ctx_addr, protect_addr, srtp_keepalive, history, history_size) */
static PyObject *sc_direct_bind(SendCore *t, PyObject *args) {
    int fd, port;
    const char *host;
    unsigned long long ctx, fn;
    PyObject *keep, *history;
    Py_ssize_t hsize;
    if (!PyArg_ParseTuple(args, "isiKKOOn", &fd, &host, &port, &ctx, &fn, &keep, &history, &hsize))
        return NULL;
    if (hsize <= 0 || (hsize & (hsize - 1))) {
        PyErr_SetString(PyExc_ValueError, "history size must be a power of two");
        return NULL;
    }
    struct sockaddr_storage sa;
    socklen_t salen;
    memset(&sa, 0, sizeof(sa));
    struct sockaddr_in *s4 = (struct sockaddr_in *)&sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&sa;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((unsigned short)port);
        salen = sizeof(*s4);
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((unsigned short)port);
        salen = sizeof(*s6);
    } else {
        PyErr_Format(PyExc_ValueError, "not a numeric address: %s", host);
        return NULL;
    }
    int dfd = dup(fd);
    if (dfd < 0) return PyErr_SetFromErrno(PyExc_OSError);
    sc_unbind(t);
    t->fd = dfd;
    t->sa = sa;
    t->salen = salen;
    t->srtp_ctx = (void *)(uintptr_t)ctx;
    t->protect = (srtp_protect_fn)(uintptr_t)fn;
    Py_INCREF(keep);
    t->srtp_keep = keep;
    Py_INCREF(history);
    t->history = history;
    if (get_buffer(history, "times", &t->hb_times, sizeof(double), hsize) < 0) goto fail;
    if (get_buffer(history, "sizes", &t->hb_sizes, sizeof(int), hsize) < 0) goto fail_t;
    if (get_buffer(history, "seqs", &t->hb_seqs, sizeof(int), hsize) < 0) goto fail_s;
    if (get_buffer(history, "probe", &t->hb_probe, 1, hsize) < 0) goto fail_q;
    t->have_hist = 1;
    Py_RETURN_NONE;
fail_q:
    PyBuffer_Release(&t->hb_seqs);
fail_s:
    PyBuffer_Release(&t->hb_sizes);
fail_t:
    PyBuffer_Release(&t->hb_times);
fail:
    sc_unbind(t);
    return NULL;
}

static PyObject *sc_direct_unbind(SendCore *t, PyObject *unused) {
    sc_unbind(t);
    Py_RETURN_NONE;
}

static PyObject *sc_is_direct(SendCore *t, void *closure) { return PyBool_FromLong(t->fd >= 0); }

/* Send one packet now: transport-cc stamp + send history, SRTP, sendto. 0 ok, -1 error set. */
static int sc_send_now_impl(SendCore *t, PyObject *packet, long tcc_off, double now) {
    if (t->fd < 0 || !PyByteArray_CheckExact(packet)) {
        PyObject *nowobj = PyFloat_FromDouble(now);
        PyObject *off = PyLong_FromLong(tcc_off);
        PyObject *r = NULL;
        if (nowobj && off) r = PyObject_CallMethodObjArgs((PyObject *)t, s_send_now_py, packet, off, nowobj, NULL);
        Py_XDECREF(nowobj);
        Py_XDECREF(off);
        if (r == NULL) return -1;
        Py_DECREF(r);
        return 0;
    }
    unsigned char *pkt = (unsigned char *)PyByteArray_AS_STRING(packet);
    Py_ssize_t n = PyByteArray_GET_SIZE(packet);
    if (tcc_off) {
        if (tcc_off < 0 || tcc_off + 1 >= n) {
            PyErr_SetString(PyExc_IndexError, "transport-cc offset outside the packet");
            return -1;
        }
        if (now == 0.0) now = mono_now();
        PyObject *seqobj = PyObject_GetAttr(t->history, s_seq);
        if (seqobj == NULL) return -1;
        long seq = PyLong_AsLong(seqobj);
        Py_DECREF(seqobj);
        if (seq == -1 && PyErr_Occurred()) return -1;
        Py_ssize_t mask = t->hb_seqs.len / (Py_ssize_t)sizeof(int) - 1;
        Py_ssize_t i = seq & mask;
        ((double *)t->hb_times.buf)[i] = now;
        ((int *)t->hb_sizes.buf)[i] = (int)(n + t->wire_overhead);
        ((int *)t->hb_seqs.buf)[i] = (int)seq;
        ((signed char *)t->hb_probe.buf)[i] = 0;
        PyObject *next = PyLong_FromLong((seq + 1) & 0xFFFF);
        if (next == NULL) return -1;
        int r = PyObject_SetAttr(t->history, s_seq, next);
        Py_DECREF(next);
        if (r < 0) return -1;
        pkt[tcc_off] = (unsigned char)(seq >> 8);
        pkt[tcc_off + 1] = (unsigned char)(seq & 0xFF);
    }
    if (n > SRTP_BUF - SRTP_TRAILER) {
        t->send_errors++;
        return 0;
    }
    memcpy(t->buf, pkt, (size_t)n);
    int len = (int)n;
    if (t->protect(t->srtp_ctx, t->buf, &len) != 0) {
        t->send_errors++;
        return 0;
    }
    if (sendto(t->fd, t->buf, (size_t)len, 0, (struct sockaddr *)&t->sa, t->salen) < 0) {
        /* a full socket buffer or an ICMP error reported late: the packet is lost, like
         * any other loss on the path; NACK/RTX and the estimator deal with it */
        t->send_errors++;
        return 0;
    }
    t->packets_out++;
    t->bytes_out += len;
    return 0;
}

static int sc_enqueue(SendCore *t, PyObject *packet, long tcc_off, double now) {
    if (t->pace_queue == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pacer queue not set");
        return -1;
    }
    PyObject *item = Py_BuildValue("(Old)", packet, tcc_off, now);
    if (item == NULL) return -1;
    PyObject *r = PyObject_CallMethodOneArg(t->pace_queue, s_append, item);
    Py_DECREF(item);
    if (r == NULL) return -1;
    Py_DECREF(r);
    t->pace_queued_bytes += Py_SIZE(packet);
    return 0;
}

/* The pacer (token bucket in wire bytes); the Python twin is WebRtcTransport._send_rtp_py.
 * `urgent` (audio) is never queued: it goes at once and its bytes are owed, so the video
 * behind it waits a little longer and the rate holds. */
static int sc_send_rtp_impl(SendCore *t, PyObject *packet, long tcc_off, int urgent) {
    double rate = t->pace_rate;
    if (rate == 0.0) return sc_send_now_impl(t, packet, tcc_off, 0.0);
    if (urgent) {
        if (!PyByteArray_Check(packet)) {
            PyErr_SetString(PyExc_TypeError, "packet must be a bytearray");
            return -1;
        }
        double now = mono_now();
        double cap = t->pace_queued_bytes > 0 ? t->pace_late : t->pace_burst; /* video waiting: a drain's cap */
        double tokens = t->pace_tokens + (now - t->pace_time) * rate;
        if (tokens > cap) tokens = cap;
        t->pace_time = now;
        t->pace_tokens = tokens - (double)(PyByteArray_GET_SIZE(packet) + t->wire_overhead);
        return sc_send_now_impl(t, packet, tcc_off, now);
    }
    if (!PyByteArray_Check(packet)) {
        PyErr_SetString(PyExc_TypeError, "packet must be a bytearray");
        return -1;
    }
    Py_ssize_t qlen = t->pace_queue ? PyObject_Size(t->pace_queue) : 0;
    if (qlen < 0) return -1;
    if (qlen > 0) {
        PyObject *mq = PyObject_GetAttr((PyObject *)t, s_max_queue);
        if (mq == NULL) return -1;
        double max_queue = PyFloat_AsDouble(mq);
        Py_DECREF(mq);
        if (max_queue == -1.0 && PyErr_Occurred()) return -1;
        if ((double)t->pace_queued_bytes > rate * max_queue) {
            t->pace_dropped++;
            return 0;
        }
        return sc_enqueue(t, packet, tcc_off, mono_now());
    }
    double now = mono_now();
    double tokens = t->pace_tokens + (now - t->pace_time) * rate;
    if (tokens > t->pace_burst) tokens = t->pace_burst;
    t->pace_time = now;
    Py_ssize_t n = PyByteArray_GET_SIZE(packet);
    double w = (double)(n + t->wire_overhead);
    if (tokens >= 0.0) { /* out of debt: the packet goes, whatever its size, and its bytes are owed */
        t->pace_tokens = tokens - w;
        return sc_send_now_impl(t, packet, tcc_off, now);
    }
    t->pace_tokens = tokens;
    if (sc_enqueue(t, packet, tcc_off, now) < 0) return -1;
    PyObject *delay = PyFloat_FromDouble(-tokens / rate);
    if (delay == NULL) return -1;
    PyObject *r = PyObject_CallMethodOneArg((PyObject *)t, s_pace_schedule, delay);
    Py_DECREF(delay);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

#define MAX_BOUNDS 32
static double latency_bounds[MAX_BOUNDS];
static Py_ssize_t n_latency_bounds = 0;

static PyObject *fp_set_latency_bounds(PyObject *mod, PyObject *seq) {
    PyObject *fast = PySequence_Fast(seq, "bounds must be a sequence");
    if (fast == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > MAX_BOUNDS) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "too many latency bounds");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        double v = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1.0 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return NULL;
        }
        latency_bounds[i] = v;
    }
    n_latency_bounds = n;
    Py_DECREF(fast);
    Py_RETURN_NONE;
}

/* Count a wait in pace_waited, bisect_left over the bounds (the last bucket: longer). */
static void count_wait(SendCore *t, double wait) {
    t->pace_wait_s += wait;
    if (t->pace_waited == NULL || !PyList_Check(t->pace_waited)) return;
    Py_ssize_t b = 0;
    while (b < n_latency_bounds && latency_bounds[b] < wait) b++;
    if (b >= PyList_GET_SIZE(t->pace_waited)) return;
    PyObject *old = PyList_GET_ITEM(t->pace_waited, b);
    long long v = PyLong_AsLongLong(old);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return;
    }
    PyObject *nv = PyLong_FromLongLong(v + 1);
    if (nv == NULL) {
        PyErr_Clear();
        return;
    }
    PyList_SetItem(t->pace_waited, b, nv);
}

/* The pacer's timer: send what the tokens allow from the head of the queue, then wait for
 * the next packet's tokens. The Python twin is WebRtcTransport._pace_drain_py. */
static PyObject *sc_pace_drain(SendCore *t, PyObject *unused) {
    PyObject *queue = t->pace_queue;
    if (queue == NULL) Py_RETURN_NONE;
    Py_INCREF(queue);
    Py_ssize_t qlen = PyObject_Size(queue);
    PyObject *item = NULL, *r = NULL;
    if (qlen <= 0) goto done;
    double rate = t->pace_rate;
    double now = mono_now();
    double tokens = 0.0;
    if (rate != 0.0) {
        tokens = t->pace_tokens + (now - t->pace_time) * rate;
        if (tokens > t->pace_late) tokens = t->pace_late; /* the queue waited all along: a late tick catches up */
        t->pace_time = now;
    }
    while (qlen > 0) {
        PyObject *head = PySequence_GetItem(queue, 0);
        if (head == NULL) goto fail;
        if (!PyTuple_Check(head) || PyTuple_GET_SIZE(head) != 3) {
            Py_DECREF(head);
            PyErr_SetString(PyExc_TypeError, "pacer queue item must be (packet, tcc_off, queued_at)");
            goto fail;
        }
        PyObject *packet = PyTuple_GET_ITEM(head, 0);
        Py_ssize_t n = PyObject_Size(packet);
        double w = (double)(n + t->wire_overhead);
        if (rate != 0.0 && tokens < 0.0) {
            Py_DECREF(head);
            break;
        }
        Py_DECREF(head);
        item = PyObject_CallMethodNoArgs(queue, s_popleft);
        if (item == NULL) goto fail;
        packet = PyTuple_GET_ITEM(item, 0);
        long off = PyLong_AsLong(PyTuple_GET_ITEM(item, 1));
        double queued = PyFloat_AsDouble(PyTuple_GET_ITEM(item, 2));
        if (PyErr_Occurred()) goto fail;
        t->pace_queued_bytes -= n;
        if (rate != 0.0) {
            tokens -= w;
            if (sc_send_now_impl(t, packet, off, now) < 0) goto fail;
            count_wait(t, now - queued);
        } else if (sc_send_now_impl(t, packet, off, 0.0) < 0) {
            goto fail;
        }
        Py_CLEAR(item);
        qlen--;
    }
    if (rate == 0.0) {
        t->pace_queued_bytes = 0;
        goto done;
    }
    t->pace_tokens = tokens;
    if (qlen > 0) {
        PyObject *delay = PyFloat_FromDouble(-tokens / rate);
        if (delay == NULL) goto fail;
        r = PyObject_CallMethodOneArg((PyObject *)t, s_pace_schedule, delay);
        Py_DECREF(delay);
        if (r == NULL) goto fail;
        Py_DECREF(r);
    }
done:
    Py_DECREF(queue);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(item);
    Py_DECREF(queue);
    return NULL;
}

static PyObject *sc_send_rtp(SendCore *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "send_rtp(packet, tcc_off=0, urgent=False)");
        return NULL;
    }
    long tcc_off = 0;
    if (nargs >= 2) {
        tcc_off = PyLong_AsLong(args[1]);
        if (tcc_off == -1 && PyErr_Occurred()) return NULL;
    }
    int urgent = 0;
    if (nargs == 3) {
        urgent = PyObject_IsTrue(args[2]);
        if (urgent < 0) return NULL;
    }
    if (sc_send_rtp_impl(t, args[0], tcc_off, urgent) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *sc_send_now(SendCore *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "_send_now(packet, tcc_off, now=0.0)");
        return NULL;
    }
    long tcc_off = PyLong_AsLong(args[1]);
    if (tcc_off == -1 && PyErr_Occurred()) return NULL;
    double now = 0.0;
    if (nargs == 3) {
        now = PyFloat_AsDouble(args[2]);
        if (now == -1.0 && PyErr_Occurred()) return NULL;
    }
    if (sc_send_now_impl(t, args[0], tcc_off, now) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef sc_methods[] = {
    {"_direct_bind", (PyCFunction)sc_direct_bind, METH_VARARGS,
     "Send straight on a dup of this socket descriptor (fd, host, port, srtp ctx, srtp_protect, keepalive, "
     "send history, history size)."},
    {"_direct_unbind", (PyCFunction)sc_direct_unbind, METH_NOARGS, "Stop sending directly; close the dup."},
    {"send_rtp", (PyCFunction)(void (*)(void))sc_send_rtp, METH_FASTCALL, "Pace and send one RTP packet."},
    {"_send_now", (PyCFunction)(void (*)(void))sc_send_now, METH_FASTCALL, "Stamp, protect and send one RTP packet."},
    {"_pace_drain", (PyCFunction)sc_pace_drain, METH_NOARGS, "Send what the pacer's tokens allow from its queue."},
    {NULL},
};

static PyMemberDef sc_members[] = {
    {"_pace_rate", T_DOUBLE, offsetof(SendCore, pace_rate), 0, NULL},
    {"_pace_burst", T_DOUBLE, offsetof(SendCore, pace_burst), 0, NULL},
    {"_pace_late", T_DOUBLE, offsetof(SendCore, pace_late), 0, NULL},
    {"_pace_tokens", T_DOUBLE, offsetof(SendCore, pace_tokens), 0, NULL},
    {"_pace_time", T_DOUBLE, offsetof(SendCore, pace_time), 0, NULL},
    {"_pace_queue", T_OBJECT, offsetof(SendCore, pace_queue), 0, NULL},
    {"_pace_queued_bytes", T_LONGLONG, offsetof(SendCore, pace_queued_bytes), 0, NULL},
    {"pace_dropped", T_LONGLONG, offsetof(SendCore, pace_dropped), 0, NULL},
    {"packets_out", T_LONGLONG, offsetof(SendCore, packets_out), 0, NULL},
    {"bytes_out", T_LONGLONG, offsetof(SendCore, bytes_out), 0, NULL},
    {"send_errors", T_LONGLONG, offsetof(SendCore, send_errors), 0, NULL},
    {"_wire_overhead", T_INT, offsetof(SendCore, wire_overhead), 0, NULL},
    {"pace_wait_s", T_DOUBLE, offsetof(SendCore, pace_wait_s), 0, NULL},
    {"pace_waited", T_OBJECT, offsetof(SendCore, pace_waited), 0, NULL},
    {NULL},
};

static PyGetSetDef sc_getset[] = {
    {"direct", (getter)sc_is_direct, NULL, "True while packets go straight to the socket from C.", NULL},
    {NULL},
};

static PyTypeObject SendCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "media._fastpath.SendCore",
    .tp_basicsize = sizeof(SendCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Native send path of a WebRtcTransport (pacer, transport-cc stamp, SRTP, sendto).",
    .tp_new = sc_new,
    .tp_dealloc = (destructor)sc_dealloc,
    .tp_traverse = (traverseproc)sc_traverse,
    .tp_clear = (inquiry)sc_clear,
    .tp_methods = sc_methods,
    .tp_members = sc_members,
    .tp_getset = sc_getset,
};

/* ------------------------------------------------------------------ ConsumerCore */

typedef struct {
    PyObject_HEAD
    PyObject *source, *target, *transport, *history, *resent_n, *template_, *tl_ranges;
    long long payload_type, seq_off, ts_off, pid_off, tl0_off, last_seq, last_ts, last_pid, last_tl0, last_marker,
        last_src, tl_gate, guard, switch_seq, abs_off, level_off, header_len, tcc_off, packets, octets;
    double last_send;
    char is_video, paused, sent_any;
} ConsumerCore;

static PyTypeObject ConsumerCoreType;

static int cc_traverse(ConsumerCore *c, visitproc visit, void *arg) {
    Py_VISIT(c->source);
    Py_VISIT(c->target);
    Py_VISIT(c->transport);
    Py_VISIT(c->history);
    Py_VISIT(c->resent_n);
    Py_VISIT(c->template_);
    Py_VISIT(c->tl_ranges);
    return 0;
}

static int cc_clear(ConsumerCore *c) {
    Py_CLEAR(c->source);
    Py_CLEAR(c->target);
    Py_CLEAR(c->transport);
    Py_CLEAR(c->history);
    Py_CLEAR(c->resent_n);
    Py_CLEAR(c->template_);
    Py_CLEAR(c->tl_ranges);
    return 0;
}

static void cc_dealloc(ConsumerCore *c) {
    PyObject_GC_UnTrack(c);
    cc_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* What the per-copy path reads of an RtpInfo, read once per packet. */
typedef struct {
    PyObject *info;
    PyObject *data_obj;
    Py_buffer view;
    const unsigned char *data;
    Py_ssize_t len;
    long long seq, ts, marker, padding, abs24, audio_level, pid_off, tl0_off, payload_offset, tid;
    int pid_wide, keyframe;
} Pkt;

static int get_ll(PyObject *o, PyObject *name, long long *out) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    if (*out == -1 && PyErr_Occurred()) return -1;
    return 0;
}

/* an attribute that a packet not yet through RecvStream.on_rtp may lack (abs24): 0 then */
static int get_ll_or_zero(PyObject *o, PyObject *name, long long *out) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1;
        PyErr_Clear();
        *out = 0;
        return 0;
    }
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    if (*out == -1 && PyErr_Occurred()) return -1;
    return 0;
}

static int get_truth(PyObject *o, PyObject *name, int *out) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    *out = PyObject_IsTrue(v);
    Py_DECREF(v);
    return *out < 0 ? -1 : 0;
}

static void pkt_release(Pkt *p) {
    if (p->data_obj != NULL) {
        PyBuffer_Release(&p->view);
        Py_CLEAR(p->data_obj);
    }
}

static int pkt_read(Pkt *p, PyObject *info) {
    memset(p, 0, sizeof(*p));
    p->info = info;
    if (get_ll(info, s_seqf, &p->seq) || get_ll(info, s_ts, &p->ts) || get_ll(info, s_marker, &p->marker) ||
        get_ll(info, s_padding, &p->padding) || get_ll_or_zero(info, s_abs24, &p->abs24) ||
        get_ll(info, s_audio_level, &p->audio_level) || get_ll(info, s_vp8_pid_off, &p->pid_off) ||
        get_ll(info, s_vp8_tl0_off, &p->tl0_off) || get_ll(info, s_payload_offset, &p->payload_offset) ||
        get_ll(info, s_vp8_tid, &p->tid) || get_truth(info, s_vp8_pid_wide, &p->pid_wide) ||
        get_truth(info, s_keyframe, &p->keyframe))
        return -1;
    PyObject *data = PyObject_GetAttr(info, s_data);
    if (data == NULL) return -1;
    if (PyObject_GetBuffer(data, &p->view, PyBUF_SIMPLE) < 0) {
        Py_DECREF(data);
        return -1;
    }
    p->data_obj = data;
    p->data = (const unsigned char *)p->view.buf;
    p->len = p->view.len;
    if (p->payload_offset < 0 || p->payload_offset > p->len) {
        PyErr_SetString(PyExc_ValueError, "payload offset outside the packet");
        pkt_release(p);
        return -1;
    }
    return 0;
}

static PyObject *call3(PyObject *self, PyObject *name, PyObject *a, PyObject *b, double now) {
    PyObject *nowobj = PyFloat_FromDouble(now);
    if (nowobj == NULL) return NULL;
    PyObject *r = PyObject_CallMethodObjArgs(self, name, a, b, nowobj, NULL);
    Py_DECREF(nowobj);
    return r;
}

#define U16(x) ((long long)((unsigned long long)(x) & 0xFFFFULL))

/* Consumer.write for one packet; the Python twin is Consumer._write_py. 0 ok, -1 error set. */
static int cc_write_impl(ConsumerCore *c, Pkt *p, PyObject *stream, double now) {
    PyObject *r;
    if (stream != c->source) {
        if (stream != c->target || !(p->keyframe || !c->is_video)) return 0;
        r = call3((PyObject *)c, s_switch, p->info, stream, now);
        if (r == NULL) return -1;
        Py_DECREF(r);
    }
    if (c->paused) return 0;
    if (p->tid > c->tl_gate) {
        r = PyObject_CallMethodOneArg((PyObject *)c, s_temporal, p->info);
        if (r == NULL) return -1;
        int keep = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (keep <= 0) return keep;
    }
    long long seq = U16(p->seq + c->seq_off);
    long long pid_off = c->pid_off;
    int newest = 1;
    if (c->guard) {
        c->guard -= 1;
        if (U16(seq - c->switch_seq) >= 0x8000) return 0; /* straggler from before the switch */
    }
    if (c->sent_any && U16(p->seq - c->last_src) >= 0x8000) {
        newest = 0; /* reordered or recovered packet: forward, keep "last" as is */
        if (c->tl_ranges != NULL && PyObject_IsTrue(c->tl_ranges) == 1) {
            PyObject *src = PyLong_FromLongLong(p->seq);
            if (src == NULL) return -1;
            r = PyObject_CallMethodOneArg((PyObject *)c, s_late_offsets, src);
            Py_DECREF(src);
            if (r == NULL) return -1;
            if (r == Py_None) {
                Py_DECREF(r);
                return 0; /* it belongs to a dropped temporal-layer frame */
            }
            long long so, po;
            if (!PyArg_ParseTuple(r, "LL", &so, &po)) {
                Py_DECREF(r);
                return -1;
            }
            Py_DECREF(r);
            seq = U16(p->seq + so);
            pid_off = po;
        }
    }
    long long ts = (long long)((unsigned long long)(p->ts + c->ts_off) & 0xFFFFFFFFULL);
    if (c->template_ == NULL || !PyBytes_Check(c->template_)) {
        PyErr_SetString(PyExc_TypeError, "consumer header template missing");
        return -1;
    }
    Py_ssize_t tlen = PyBytes_GET_SIZE(c->template_);
    Py_ssize_t hl = (Py_ssize_t)c->header_len;
    Py_ssize_t plen = p->len - (Py_ssize_t)p->payload_offset;
    PyObject *out = PyByteArray_FromStringAndSize(NULL, tlen + plen);
    if (out == NULL) return -1;
    unsigned char *o = (unsigned char *)PyByteArray_AS_STRING(out);
    Py_ssize_t olen = tlen + plen;
    memcpy(o, PyBytes_AS_STRING(c->template_), (size_t)tlen);
    memcpy(o + tlen, p->data + p->payload_offset, (size_t)plen);
    if (olen < 12) goto bad_index;
    o[1] = (unsigned char)((c->payload_type | (p->marker << 7)) & 0xFF);
    o[2] = (unsigned char)(seq >> 8);
    o[3] = (unsigned char)(seq & 0xFF);
    o[4] = (unsigned char)(ts >> 24);
    o[5] = (unsigned char)((ts >> 16) & 0xFF);
    o[6] = (unsigned char)((ts >> 8) & 0xFF);
    o[7] = (unsigned char)(ts & 0xFF);
    if (p->padding) o[0] |= 0x20;
    if (c->abs_off) {
        Py_ssize_t a = (Py_ssize_t)c->abs_off;
        if (a < 0 || a + 2 >= olen) goto bad_index;
        long long v = p->abs24;
        o[a] = (unsigned char)((v >> 16) & 0xFF);
        o[a + 1] = (unsigned char)((v >> 8) & 0xFF);
        o[a + 2] = (unsigned char)(v & 0xFF);
    }
    if (c->level_off && p->audio_level >= 0) {
        Py_ssize_t a = (Py_ssize_t)c->level_off;
        if (a < 0 || a >= olen || p->audio_level > 255) goto bad_index;
        o[a] = (unsigned char)p->audio_level;
    }
    if (p->pid_off >= 0) {
        Py_ssize_t oi = hl + (Py_ssize_t)(p->pid_off - p->payload_offset);
        Py_ssize_t src = (Py_ssize_t)p->pid_off;
        long long pid;
        if (p->pid_wide) {
            if (src + 1 >= p->len || oi < 0 || oi + 1 >= olen) goto bad_index;
            pid = (((((long long)(p->data[src] & 0x7F)) << 8) | p->data[src + 1]) + pid_off) & 0x7FFF;
            o[oi] = (unsigned char)(0x80 | (pid >> 8));
            o[oi + 1] = (unsigned char)(pid & 0xFF);
        } else {
            if (src >= p->len || oi < 0 || oi >= olen) goto bad_index;
            pid = ((long long)(p->data[src] & 0x7F) + pid_off) & 0x7F;
            o[oi] = (unsigned char)pid;
        }
        if (newest) c->last_pid = pid;
        if (p->tl0_off >= 0) {
            Py_ssize_t ti = hl + (Py_ssize_t)(p->tl0_off - p->payload_offset);
            if (p->tl0_off >= p->len || ti < 0 || ti >= olen) goto bad_index;
            long long tl0 = ((long long)p->data[p->tl0_off] + c->tl0_off) & 0xFF;
            o[ti] = (unsigned char)tl0;
            if (newest) c->last_tl0 = tl0;
        }
    }
    if (newest) {
        c->last_seq = seq;
        c->last_src = p->seq;
        c->last_ts = ts;
        c->last_marker = p->marker;
        c->last_send = now;
        c->sent_any = 1;
    }
    if (c->history != NULL && c->history != Py_None) {
        if (!PyList_Check(c->history) || c->resent_n == NULL || !PyList_Check(c->resent_n)) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_TypeError, "consumer history must be a list");
            return -1;
        }
        Py_ssize_t hn = PyList_GET_SIZE(c->history);
        if (hn > 0 && PyList_GET_SIZE(c->resent_n) == hn) {
            Py_ssize_t i = (Py_ssize_t)(seq % hn);
            Py_INCREF(out);
            PyList_SetItem(c->history, i, out);
            PyList_SetItem(c->resent_n, i, PyLong_FromLong(0));
        }
    }
    c->packets += 1;
    c->octets += olen - hl;
    int rc;
    if (c->transport != NULL && PyObject_TypeCheck(c->transport, &SendCoreType)) {
        rc = sc_send_rtp_impl((SendCore *)c->transport, out, (long)c->tcc_off, !c->is_video);
    } else if (c->transport != NULL) {
        PyObject *off = PyLong_FromLongLong(c->tcc_off);
        r = off ? PyObject_CallMethodObjArgs(c->transport, s_send_rtp, out, off, c->is_video ? Py_False : Py_True, NULL) : NULL;
        Py_XDECREF(off);
        rc = r ? 0 : -1;
        Py_XDECREF(r);
    } else {
        rc = 0;
    }
    Py_DECREF(out);
    return rc;
bad_index:
    Py_DECREF(out);
    PyErr_SetString(PyExc_IndexError, "RTP offsets outside the packet");
    return -1;
}

static PyObject *cc_write(ConsumerCore *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "write(info, stream, now)");
        return NULL;
    }
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    Pkt p;
    if (pkt_read(&p, args[0]) < 0) return NULL;
    int rc = cc_write_impl(c, &p, args[1], now);
    pkt_release(&p);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef cc_methods[] = {
    {"write", (PyCFunction)(void (*)(void))cc_write, METH_FASTCALL, "Forward one packet to this slot."},
    {NULL},
};

static PyMemberDef cc_members[] = {
    {"source", T_OBJECT, offsetof(ConsumerCore, source), 0, NULL},
    {"target", T_OBJECT, offsetof(ConsumerCore, target), 0, NULL},
    {"transport", T_OBJECT, offsetof(ConsumerCore, transport), 0, NULL},
    {"history", T_OBJECT, offsetof(ConsumerCore, history), 0, NULL},
    {"_resent_n", T_OBJECT, offsetof(ConsumerCore, resent_n), 0, NULL},
    {"_template", T_OBJECT, offsetof(ConsumerCore, template_), 0, NULL},
    {"_tl_ranges", T_OBJECT, offsetof(ConsumerCore, tl_ranges), 0, NULL},
    {"payload_type", T_LONGLONG, offsetof(ConsumerCore, payload_type), 0, NULL},
    {"seq_off", T_LONGLONG, offsetof(ConsumerCore, seq_off), 0, NULL},
    {"ts_off", T_LONGLONG, offsetof(ConsumerCore, ts_off), 0, NULL},
    {"pid_off", T_LONGLONG, offsetof(ConsumerCore, pid_off), 0, NULL},
    {"tl0_off", T_LONGLONG, offsetof(ConsumerCore, tl0_off), 0, NULL},
    {"last_seq", T_LONGLONG, offsetof(ConsumerCore, last_seq), 0, NULL},
    {"last_ts", T_LONGLONG, offsetof(ConsumerCore, last_ts), 0, NULL},
    {"last_pid", T_LONGLONG, offsetof(ConsumerCore, last_pid), 0, NULL},
    {"last_tl0", T_LONGLONG, offsetof(ConsumerCore, last_tl0), 0, NULL},
    {"last_marker", T_LONGLONG, offsetof(ConsumerCore, last_marker), 0, NULL},
    {"last_src", T_LONGLONG, offsetof(ConsumerCore, last_src), 0, NULL},
    {"_tl_gate", T_LONGLONG, offsetof(ConsumerCore, tl_gate), 0, NULL},
    {"_guard", T_LONGLONG, offsetof(ConsumerCore, guard), 0, NULL},
    {"_switch_seq", T_LONGLONG, offsetof(ConsumerCore, switch_seq), 0, NULL},
    {"_abs_off", T_LONGLONG, offsetof(ConsumerCore, abs_off), 0, NULL},
    {"_level_off", T_LONGLONG, offsetof(ConsumerCore, level_off), 0, NULL},
    {"header_len", T_LONGLONG, offsetof(ConsumerCore, header_len), 0, NULL},
    {"tcc_off", T_LONGLONG, offsetof(ConsumerCore, tcc_off), 0, NULL},
    {"packets", T_LONGLONG, offsetof(ConsumerCore, packets), 0, NULL},
    {"octets", T_LONGLONG, offsetof(ConsumerCore, octets), 0, NULL},
    {"last_send", T_DOUBLE, offsetof(ConsumerCore, last_send), 0, NULL},
    {"is_video", T_BOOL, offsetof(ConsumerCore, is_video), 0, NULL},
    {"paused", T_BOOL, offsetof(ConsumerCore, paused), 0, NULL},
    {"sent_any", T_BOOL, offsetof(ConsumerCore, sent_any), 0, NULL},
    {NULL},
};

static PyObject *cc_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    ConsumerCore *c = (ConsumerCore *)type->tp_alloc(type, 0);
    if (c == NULL) return NULL;
    c->last_marker = 1;
    c->tl_gate = 3;
    return (PyObject *)c;
}

static PyTypeObject ConsumerCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "media._fastpath.ConsumerCore",
    .tp_basicsize = sizeof(ConsumerCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Native per-copy path of a Consumer (a subscriber's receive slot).",
    .tp_new = cc_new,
    .tp_dealloc = (destructor)cc_dealloc,
    .tp_traverse = (traverseproc)cc_traverse,
    .tp_clear = (inquiry)cc_clear,
    .tp_methods = cc_methods,
    .tp_members = cc_members,
};

/* ------------------------------------------------------------------ fanout */

static PyObject *cc_write_descr; /* ConsumerCore.write: a subclass that overrides it is called */

/* fanout(info, sinks, stream, now): every sink writes the packet; native consumers without a
 * method call or a re-read of the packet's fields. Stops at the first error (as the Python
 * loop does), which the caller logs and counts. */
static PyObject *fp_fanout(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "fanout(info, sinks, stream, now)");
        return NULL;
    }
    PyObject *info = args[0], *sinks = args[1], *stream = args[2];
    double now = PyFloat_AsDouble(args[3]);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    if (!PyList_Check(sinks)) {
        PyErr_SetString(PyExc_TypeError, "sinks must be a list");
        return NULL;
    }
    Pkt p;
    int have = 0;
    int rc = 0;
    /* the live list, its length re-read every step and each sink held while it writes, as
     * the Python loop does: a write never changes this list (a switch detaches the slot from
     * its old source, another stream), but a failure here must not read freed memory if
     * one ever did */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(sinks) && rc == 0; i++) {
        PyObject *sink = PyList_GET_ITEM(sinks, i);
        Py_INCREF(sink);
        if (PyObject_TypeCheck(sink, &ConsumerCoreType) && _PyType_Lookup(Py_TYPE(sink), s_write) == cc_write_descr) {
            if (!have) {
                if (pkt_read(&p, info) < 0) {
                    Py_DECREF(sink);
                    rc = -1;
                    break;
                }
                have = 1;
            }
            rc = cc_write_impl((ConsumerCore *)sink, &p, stream, now);
        } else {
            PyObject *nowobj = PyFloat_FromDouble(now);
            PyObject *r = nowobj ? PyObject_CallMethodObjArgs(sink, s_write, info, stream, nowobj, NULL) : NULL;
            Py_XDECREF(nowobj);
            if (r == NULL) rc = -1;
            Py_XDECREF(r);
        }
        Py_DECREF(sink);
    }
    if (have) pkt_release(&p);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef fp_methods[] = {
    {"fanout", (PyCFunction)(void (*)(void))fp_fanout, METH_FASTCALL, "Write one received packet to every sink."},
    {"set_latency_bounds", (PyCFunction)fp_set_latency_bounds, METH_O, "The pacer wait histogram's bucket bounds (s)."},
    {NULL},
};

static struct PyModuleDef fp_module = {
    PyModuleDef_HEAD_INIT, "media._fastpath", "Native per-copy forwarding path (see media/fastpath.py).", -1,
    fp_methods,
};

#define INTERN(var, text)                                   \
    do {                                                    \
        if ((var = PyUnicode_InternFromString(text)) == NULL) \
            return NULL;                                    \
    } while (0)

PyMODINIT_FUNC PyInit__fastpath(void) {
    INTERN(s_popleft, "popleft");
    INTERN(s_switch, "_switch");
    INTERN(s_temporal, "_temporal");
    INTERN(s_late_offsets, "_late_offsets");
    INTERN(s_send_rtp, "send_rtp");
    INTERN(s_send_now_py, "_send_now_py");
    INTERN(s_write, "write");
    INTERN(s_append, "append");
    INTERN(s_pace_schedule, "_pace_schedule");
    INTERN(s_max_queue, "PACE_MAX_QUEUE_S");
    INTERN(s_seq, "seq");
    INTERN(s_data, "data");
    INTERN(s_seqf, "seq");
    INTERN(s_ts, "ts");
    INTERN(s_marker, "marker");
    INTERN(s_padding, "padding");
    INTERN(s_abs24, "abs24");
    INTERN(s_audio_level, "audio_level");
    INTERN(s_vp8_pid_off, "vp8_pid_off");
    INTERN(s_vp8_pid_wide, "vp8_pid_wide");
    INTERN(s_vp8_tl0_off, "vp8_tl0_off");
    INTERN(s_payload_offset, "payload_offset");
    INTERN(s_vp8_tid, "vp8_tid");
    INTERN(s_keyframe, "keyframe");
    if (PyType_Ready(&SendCoreType) < 0 || PyType_Ready(&ConsumerCoreType) < 0) return NULL;
    cc_write_descr = PyDict_GetItemWithError(ConsumerCoreType.tp_dict, s_write);
    if (cc_write_descr == NULL) return NULL;
    Py_INCREF(cc_write_descr);
    PyObject *m = PyModule_Create(&fp_module);
    if (m == NULL) return NULL;
    Py_INCREF(&SendCoreType);
    if (PyModule_AddObject(m, "SendCore", (PyObject *)&SendCoreType) < 0) return NULL;
    Py_INCREF(&ConsumerCoreType);
    if (PyModule_AddObject(m, "ConsumerCore", (PyObject *)&ConsumerCoreType) < 0) return NULL;
    return m;
}
