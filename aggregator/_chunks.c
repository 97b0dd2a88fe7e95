/* aggregator._chunks: a finalize's chunk events straight from a compacted object's bytes.
 *
 * encode_events(block, middle) -> (events, text_bytes) or None
 *
 * `block` is the events of a compacted object in its one-event-per-line layout (aggregator/staging.py,
 * SPLIT_EVENTS): lines `[OFF,TS,SEQ,"TEXT"]` joined with ",\n". For each line it gives the chunk event
 *     {"ts":TS<middle>"TEXT"}
 * with TS and "TEXT" copied as they are (orjson wrote both: TS is its form of the float, "TEXT" its
 * escaping of the line, so the event is what orjson.dumps writes for the decoded values), `middle`
 * being `,"pod":"P","container":"C","line":`. `text_bytes` is the UTF-8 size of every TEXT decoded
 * (for the stream's `last_output` block). None when any line is not exactly that shape: strict JSON
 * numbers and strings, valid UTF-8, no lone surrogate escape. The caller then decodes the object the
 * ordinary way (aggregator/finalize/streams.py), which judges it the same way orjson does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static const char PREFIX[] = "{\"ts\":";
#define LEN(s) ((Py_ssize_t)(sizeof(s) - 1))

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* digits at p (at least one); the position after them, or NULL */
static const unsigned char *digits(const unsigned char *p, const unsigned char *end) {
    const unsigned char *s = p;
    while (p < end && is_digit(*p)) p++;
    return p > s ? p : NULL;
}

/* a JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static const unsigned char *number(const unsigned char *p, const unsigned char *end) {
    if (p < end && *p == '-') p++;
    if (p >= end) return NULL;
    if (*p == '0') p++;
    else if (is_digit(*p)) p = digits(p, end);
    else return NULL;
    if (p < end && *p == '.') {
        p = digits(p + 1, end);
        if (!p) return NULL;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        p = digits(p, end);
    }
    return p;
}

static int hex4(const unsigned char *p, const unsigned char *end, unsigned *out) {
    unsigned v = 0;
    if (end - p < 4) return 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

/* the length of a valid UTF-8 sequence starting at p (2-4), or 0 (as Python's strict decoder judges) */
static int utf8_seq(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    if (c >= 0xC2 && c <= 0xDF) {
        return (end - p >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && p[1] < 0xA0) return 0;   /* overlong */
        if (c == 0xED && p[1] >= 0xA0) return 0;  /* surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
        if (c == 0xF0 && p[1] < 0x90) return 0;   /* overlong */
        if (c == 0xF4 && p[1] >= 0x90) return 0;  /* above U+10FFFF */
        return 4;
    }
    return 0;
}

/* a JSON string at p (its opening quote); the position after its closing quote, or NULL; adds its
 * decoded UTF-8 size to *size */
static const unsigned char *string(const unsigned char *p, const unsigned char *end, Py_ssize_t *size) {
    if (p >= end || *p != '"') return NULL;
    p++;
    Py_ssize_t n = 0;
    while (p < end) {
        unsigned char c = *p;
        if (c == '"') {
            *size += n;
            return p + 1;
        }
        if (c < 0x20) return NULL;
        if (c == '\\') {
            if (end - p < 2) return NULL;
            unsigned char e = p[1];
            if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
                n += 1;
                p += 2;
                continue;
            }
            if (e != 'u') return NULL;
            unsigned cp;
            if (!hex4(p + 2, end, &cp)) return NULL;
            p += 6;
            if (cp >= 0xD800 && cp <= 0xDBFF) {  /* a high surrogate: a low one must follow */
                unsigned lo;
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || !hex4(p + 2, end, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                    return NULL;
                p += 6;
                n += 4;
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return NULL;
            } else {
                n += cp < 0x80 ? 1 : cp < 0x800 ? 2 : 3;
            }
            continue;
        }
        if (c < 0x80) {
            n += 1;
            p += 1;
            continue;
        }
        int k = utf8_seq(p, end);
        if (!k) return NULL;
        n += k;
        p += k;
    }
    return NULL;
}

static PyObject *encode_events(PyObject *self, PyObject *args) {
    Py_buffer block, middle;
    if (!PyArg_ParseTuple(args, "y*y*", &block, &middle)) return NULL;
    PyObject *events = PyList_New(0);
    PyObject *result = NULL;
    Py_ssize_t text_bytes = 0;
    if (!events) goto done;
    const unsigned char *p = block.buf, *end = p + block.len;
    const char *mid = middle.buf;
    Py_ssize_t mid_len = middle.len;
    while (p < end) {
        const unsigned char *ts, *ts_end, *text, *text_end;
        if (*p != '[') goto refuse;
        p = digits(p + 1, end);  /* off */
        if (!p || p >= end || *p != ',') goto refuse;
        ts = p + 1;
        ts_end = number(ts, end);
        if (!ts_end || ts_end >= end || *ts_end != ',') goto refuse;
        p = digits(ts_end + 1, end);  /* seq */
        if (!p || p >= end || *p != ',') goto refuse;
        text = p + 1;
        text_end = string(text, end, &text_bytes);
        if (!text_end || text_end >= end || *text_end != ']') goto refuse;
        p = text_end + 1;
        if (p < end) {  /* the next line: ",\n" between events, nothing after the last */
            if (end - p < 3 || p[0] != ',' || p[1] != '\n') goto refuse;
            p += 2;
        }
        Py_ssize_t ts_len = ts_end - ts, text_len = text_end - text;
        PyObject *ev = PyBytes_FromStringAndSize(NULL, LEN(PREFIX) + ts_len + mid_len + text_len + 1);
        if (!ev) goto done;
        char *o = PyBytes_AS_STRING(ev);
        memcpy(o, PREFIX, LEN(PREFIX));
        o += LEN(PREFIX);
        memcpy(o, ts, ts_len);
        o += ts_len;
        memcpy(o, mid, mid_len);
        o += mid_len;
        memcpy(o, text, text_len);
        o[text_len] = '}';
        int failed = PyList_Append(events, ev);
        Py_DECREF(ev);
        if (failed) goto done;
    }
    result = Py_BuildValue("(On)", events, text_bytes);
    goto done;
refuse:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(events);
    PyBuffer_Release(&block);
    PyBuffer_Release(&middle);
    return result;
}

static PyMethodDef methods[] = {
    {"encode_events", encode_events, METH_VARARGS,
     "encode_events(block, middle) -> (events, text_bytes) or None: chunk events from a compacted object's lines."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "aggregator._chunks", NULL, -1, methods};

PyMODINIT_FUNC PyInit__chunks(void) { return PyModule_Create(&module); }
