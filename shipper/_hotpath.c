/* shipper._hotpath: the shipper's per-line hot path for lines that need no sanitising.
 *
 * encode_lines(joined, first_off, ts, max_chars, flagged) -> (events, offs, slow, controls)
 *
 * `joined` is a read's complete lines joined with b"\n" (no trailing newline). For each line it
 * gives the stream offset (`first_off` + where the line starts) and, when the line is "clean", its
 * event exactly as shipper.batch.encode_events writes it:
 *     {"off":OFF,"ts":TS,"line":"TEXT"}
 * where TS is the bytes given (orjson's form of the read's timestamp) and TEXT the line JSON-escaped
 * byte for byte as orjson escapes it.
 *
 * A line is clean when sanitising could not change it: valid UTF-8 (as Python's strict decoder
 * judges it), no control character but tab (C0, DEL, C1), at most `max_chars` characters, and no
 * position of `flagged` (sorted byte offsets into `joined`: control characters, secret keywords)
 * falls inside it or on its newline. Every other line gets None in `events` and its index in `slow`,
 * for the Python path (shipper/prepare.py), which also handles everything this module refuses;
 * `controls` lists those of them that hold a control character (to be rendered like a terminal).
 *
 * One pass per line over its bytes; no Python object per line but its event and its offset.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static const char PREFIX[] = "{\"off\":";
static const char MID_TS[] = ",\"ts\":";
static const char MID_LINE[] = ",\"line\":\"";
static const char SUFFIX[] = "\"}";
#define LEN(s) ((Py_ssize_t)(sizeof(s) - 1))

#define CLEAN 0
#define NEEDS_WORK 1   /* invalid UTF-8, or over the character cap */
#define CONTROL 2      /* a control character as shipper.sanitise.control_positions finds them */

#define ONES UINT64_C(0x0101010101010101)
#define HIGH UINT64_C(0x8080808080808080)
/* per byte of a 64-bit word: its high bit set where the byte is zero (or, for HASLESS, below n);
 * exact for words whose bytes are all below 0x80, which is all the loop below relies on */
#define HASZERO(v) (((v) - ONES) & ~(v))
#define HASLESS(v, n) (((v) - ONES * (n)) & ~(v))

/* Whether [p, end) holds a control character other than tab, judged byte by byte as
 * control_positions judges a read: any C0 byte but tab, DEL, or \xc2 followed by \x80-\x9f
 * (a C1 control), whatever the bytes around them. */
static int
has_control(const unsigned char *p, const unsigned char *end)
{
    for (; p < end; p++) {
        unsigned char c = *p;
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 1;
        if (c == 0xC2 && p + 1 < end && p[1] >= 0x80 && p[1] <= 0x9F)
            return 1;
    }
    return 0;
}

/* Classifies the line [p, end): CONTROL, else NEEDS_WORK (invalid UTF-8 as Python's strict decoder
 * judges it, or more than max_chars characters), else CLEAN with *extra_out the bytes escaping adds. */
static int
scan_line(const unsigned char *p, const unsigned char *end, Py_ssize_t max_chars,
          Py_ssize_t *extra_out)
{
    const unsigned char *start = p;
    Py_ssize_t chars = 0, extra = 0;
    while (p < end) {
        /* eight plain ASCII bytes at a time (no control, DEL, quote, backslash or non-ASCII byte) */
        while (end - p >= 8) {
            uint64_t v;
            memcpy(&v, p, 8);
            if (((v | HASZERO(v ^ ONES * '"') | HASZERO(v ^ ONES * '\\') | HASZERO(v ^ ONES * 0x7f)
                  | HASLESS(v, 0x20)) & HIGH) != 0)
                break;
            p += 8;
            chars += 8;
        }
        if (chars > max_chars)
            return has_control(p, end) ? CONTROL : NEEDS_WORK;
        if (p >= end)
            break;
        unsigned char c = *p;
        if (c < 0x80) {
            if (c < 0x20) {
                if (c != '\t')
                    return CONTROL;
                extra++;
            } else if (c == '"' || c == '\\') {
                extra++;
            } else if (c == 0x7f) {
                return CONTROL;
            }
            p++;
        } else if (c < 0xC2) {
            goto invalid;  /* a stray continuation byte, or an overlong two-byte lead */
        } else if (c < 0xE0) {
            if (end - p < 2 || (p[1] & 0xC0) != 0x80)
                goto invalid;
            if (c == 0xC2 && p[1] < 0xA0)
                return CONTROL;  /* C1 control, U+0080..U+009F */
            p += 2;
        } else if (c < 0xF0) {
            if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
                goto invalid;
            if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] > 0x9F))
                goto invalid;  /* overlong; surrogates */
            p += 3;
        } else if (c < 0xF5) {
            if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
                goto invalid;
            if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] > 0x8F))
                goto invalid;  /* overlong; above U+10FFFF */
            p += 4;
        } else {
            goto invalid;
        }
        if (++chars > max_chars)
            return has_control(p, end) ? CONTROL : NEEDS_WORK;
    }
    *extra_out = extra;
    return CLEAN;
invalid:
    return has_control(start, end) ? CONTROL : NEEDS_WORK;
}

/* `value` in decimal into `out` (at least 21 bytes); the number of bytes written */
static int
format_decimal(char *out, long long value)
{
    char tmp[24];
    int n = 0;
    unsigned long long v = value < 0 ? 0ULL - (unsigned long long)value : (unsigned long long)value;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    int len = 0;
    if (value < 0)
        out[len++] = '-';
    while (n > 0)
        out[len++] = tmp[--n];
    return len;
}

static PyObject *
encode_event(const unsigned char *p, Py_ssize_t n, Py_ssize_t extra, long long off,
             const char *ts, Py_ssize_t ts_len)
{
    char digits[24];
    int nd = format_decimal(digits, off);
    Py_ssize_t size = LEN(PREFIX) + nd + LEN(MID_TS) + ts_len + LEN(MID_LINE) + n + extra + LEN(SUFFIX);
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(out);
    memcpy(w, PREFIX, LEN(PREFIX)); w += LEN(PREFIX);
    memcpy(w, digits, nd); w += nd;
    memcpy(w, MID_TS, LEN(MID_TS)); w += LEN(MID_TS);
    memcpy(w, ts, ts_len); w += ts_len;
    memcpy(w, MID_LINE, LEN(MID_LINE)); w += LEN(MID_LINE);
    if (extra == 0) {
        memcpy(w, p, n); w += n;
    } else {
        const unsigned char *end = p + n;
        while (p < end) {
            unsigned char c = *p++;
            if (c == '"' || c == '\\') {
                *w++ = '\\'; *w++ = (char)c;
            } else if (c == '\t') {
                *w++ = '\\'; *w++ = 't';
            } else {
                *w++ = (char)c;
            }
        }
    }
    memcpy(w, SUFFIX, LEN(SUFFIX));
    return out;
}

static PyObject *
encode_lines(PyObject *self, PyObject *args)
{
    Py_buffer joined, ts;
    long long first_off;
    Py_ssize_t max_chars;
    PyObject *flagged;
    if (!PyArg_ParseTuple(args, "y*Ly*nO!:encode_lines", &joined, &first_off, &ts, &max_chars,
                          &PyList_Type, &flagged))
        return NULL;
    PyObject *events = NULL, *offs = NULL, *slow = NULL, *controls = NULL, *result = NULL;
    const unsigned char *data = joined.buf;
    const unsigned char *stop = data + joined.len;
    Py_ssize_t nflag = PyList_GET_SIZE(flagged), fi = 0, next_flag = PY_SSIZE_T_MAX;

    Py_ssize_t count = 1;  /* lines: one more than the newlines */
    for (const unsigned char *p = data; (p = memchr(p, '\n', (size_t)(stop - p))) != NULL; p++)
        count++;
    events = PyList_New(count);
    offs = PyList_New(count);
    slow = PyList_New(0);
    controls = PyList_New(0);
    if (events == NULL || offs == NULL || slow == NULL || controls == NULL)
        goto done;
    if (nflag > 0) {
        next_flag = PyLong_AsSsize_t(PyList_GET_ITEM(flagged, 0));
        if (next_flag == -1 && PyErr_Occurred())
            goto done;
    }
    const unsigned char *line = data;
    Py_ssize_t index = 0;
    for (;;) {
        const unsigned char *nl = memchr(line, '\n', (size_t)(stop - line));
        const unsigned char *end = nl != NULL ? nl : stop;
        Py_ssize_t start = line - data, stop_at = end - data;  /* the line's newline is at stop_at */
        int flagged_here = 0;
        while (next_flag <= stop_at) {
            if (next_flag >= start)
                flagged_here = 1;
            if (++fi < nflag) {
                next_flag = PyLong_AsSsize_t(PyList_GET_ITEM(flagged, fi));
                if (next_flag == -1 && PyErr_Occurred())
                    goto done;
            } else {
                next_flag = PY_SSIZE_T_MAX;
            }
        }
        long long off = first_off + (long long)start;
        PyObject *o = PyLong_FromLongLong(off);
        if (o == NULL)
            goto done;
        PyList_SET_ITEM(offs, index, o);  /* a list's unset items are NULL: safe to free on error */
        Py_ssize_t extra = 0;
        PyObject *event = NULL;
        int kind = scan_line(line, end, max_chars, &extra);
        if (kind == CLEAN && !flagged_here) {
            event = encode_event(line, end - line, extra, off, ts.buf, ts.len);
            if (event == NULL)
                goto done;
        } else {
            PyObject *i = PyLong_FromSsize_t(index);
            if (i == NULL || PyList_Append(slow, i) < 0 || (kind == CONTROL && PyList_Append(controls, i) < 0)) {
                Py_XDECREF(i);
                goto done;
            }
            Py_DECREF(i);
            event = Py_NewRef(Py_None);
        }
        PyList_SET_ITEM(events, index, event);
        index++;
        if (nl == NULL)
            break;
        line = nl + 1;
    }
    result = PyTuple_Pack(4, events, offs, slow, controls);
done:
    Py_XDECREF(events);
    Py_XDECREF(offs);
    Py_XDECREF(slow);
    Py_XDECREF(controls);
    PyBuffer_Release(&joined);
    PyBuffer_Release(&ts);
    return result;
}

static PyMethodDef methods[] = {
    {"encode_lines", encode_lines, METH_VARARGS,
     "encode_lines(joined, first_off, ts, max_chars, flagged) -> (events, offs, slow, controls)\n\n"
     "Events of the clean lines of `joined` (None for the others, whose indices are in `slow`),\n"
     "every line's stream offset, and the slow lines that hold control characters."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shipper._hotpath",
    "The shipper's per-line hot path for lines that need no sanitising (see _hotpath.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__hotpath(void)
{
    return PyModule_Create(&module);
}
