/* shipper._hotpath: the shipper's per-line hot path for lines that need no sanitising.
 *
 * encode_chunk(scratch, joined, first_off, ts, max_chars, flagged) -> (length, bounds, offs, slow, controls, rendered)
 *
 * `joined` is a read's complete lines joined with b"\n" (no trailing newline). It writes the events of
 * the lines into the bytearray `scratch` (grown as needed, never shrunk: it is reused from read to
 * read, so that its pages are not faulted in anew for every read), joined with ",", its first `length`
 * bytes; each "clean" line's event exactly as
 * shipper.batch.encode_events writes it:
 *     {"off":OFF,"ts":TS,"line":"TEXT"}
 * where TS is the bytes given (orjson's form of the read's timestamp) and TEXT the line JSON-escaped
 * byte for byte as orjson escapes it; `bounds`, int64 in native order, where each event starts and,
 * last, length + 1 (event k is scratch[bounds[k]:bounds[k + 1] - 1]); `offs`, int64, each line's stream
 * offset (`first_off` + where the line starts) and, last, the offset just past the last line.
 *
 * A line is clean when sanitising could not change it: valid UTF-8 (as Python's strict decoder
 * judges it), no control character but tab (C0, DEL, C1), at most `max_chars` characters, and no
 * position of `flagged` (sorted byte offsets into `joined`: control characters, secret keywords)
 * falls inside it or on its newline. Every other line gets an empty event and its index in `slow`,
 * for the Python path (shipper/prepare.py), which also handles everything this module refuses, and
 * whose events `splice` puts in their places as it copies the events out of `scratch`.
 * A line whose only fault is a control character (C0 but tab, DEL, C1), with no flag, is rendered
 * here when render_line models it (below) and the result is within `max_chars`: its event holds the
 * rendered text and `rendered` maps its index to that text (UTF-8), for the redaction pre-check the
 * Python side runs on rendered lines. `controls` lists every line holding a control character,
 * rendered here or in `slow`, in order.
 *
 * One pass per line over its bytes (two for a rendered one); no Python object per line (but a rendered
 * line's text and index).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>  /* baseline on x86_64 */
#endif

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

/* The newlines in [p, end): with SSE2 sixteen bytes at a time (a compare per block, the matches
 * summed per byte lane and added up every 255 blocks), else one memchr per line. */
static Py_ssize_t
count_newlines(const unsigned char *p, const unsigned char *end)
{
    Py_ssize_t count = 0;
#ifdef __SSE2__
    const __m128i nl = _mm_set1_epi8('\n'), zero = _mm_setzero_si128();
    while (end - p >= 16) {
        __m128i lanes = zero;  /* minus the newlines per byte lane: at most 255 blocks */
        for (int k = 0; k < 255 && end - p >= 16; k++, p += 16)
            lanes = _mm_sub_epi8(lanes, _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)p), nl));
        __m128i sums = _mm_sad_epu8(lanes, zero);
        count += _mm_cvtsi128_si32(sums) + _mm_cvtsi128_si32(_mm_unpackhi_epi64(sums, sums));
    }
#endif
    while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        count++;
        p++;
    }
    return count;
}

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
 * judges it, or more than max_chars characters), else CLEAN with *extra_out the bytes escaping adds.
 * Bytes up to `limit` (>= end: the end of the buffer the line is in) may be read, not judged. */
static int
scan_line(const unsigned char *p, const unsigned char *end, const unsigned char *limit, Py_ssize_t max_chars,
          Py_ssize_t *extra_out)
{
    const unsigned char *start = p;
    Py_ssize_t chars = 0, extra = 0;
    while (p < end) {
        /* plain ASCII bytes (no control, DEL, quote, backslash or non-ASCII byte) skipped in bulk */
#ifdef __SSE2__
        /* sixteen at a time, where sixteen bytes are there to read: a signed compare with 0x20 finds
         * the controls and the non-ASCII bytes at once; the line's end counts as a byte to stop at */
        while (limit - p >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            __m128i stop = _mm_or_si128(
                _mm_or_si128(_mm_cmplt_epi8(v, _mm_set1_epi8(0x20)), _mm_cmpeq_epi8(v, _mm_set1_epi8('"'))),
                _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('\\')), _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f))));
            unsigned mask = (unsigned)_mm_movemask_epi8(stop);
            if (end - p < 16)
                mask |= 1u << (end - p);
            if (mask != 0) {
                unsigned k = (unsigned)__builtin_ctz(mask);
                p += k;
                chars += k;
                goto judge;
            }
            p += 16;
            chars += 16;
        }
#endif
        /* eight at a time */
        while (end - p >= 8) {
            uint64_t v;
            memcpy(&v, p, 8);
            if (((v | HASZERO(v ^ ONES * '"') | HASZERO(v ^ ONES * '\\') | HASZERO(v ^ ONES * 0x7f)
                  | HASLESS(v, 0x20)) & HIGH) != 0)
                break;
            p += 8;
            chars += 8;
        }
#ifdef __SSE2__
    judge:
#endif
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

/* The size of an event of a line of n bytes with `extra` bytes of escapes, its offset `nd` digits. */
static Py_ssize_t
event_size(int nd, Py_ssize_t ts_len, Py_ssize_t n, Py_ssize_t extra)
{
    return LEN(PREFIX) + nd + LEN(MID_TS) + ts_len + LEN(MID_LINE) + n + extra + LEN(SUFFIX);
}

/* Writes the event of the line [p, p + n) (escaping adds `extra` bytes) at w (room for event_size);
 * the bytes written. */
static Py_ssize_t
write_event(char *w, const unsigned char *p, Py_ssize_t n, Py_ssize_t extra, const char *digits, int nd,
            const char *ts, Py_ssize_t ts_len)
{
    char *start = w;
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
    memcpy(w, SUFFIX, LEN(SUFFIX)); w += LEN(SUFFIX);
    return w - start;
}

/* ---- rendering a line with control characters (shipper.sanitise.render), for the common shapes ----
 *
 * render_line gives the bytes of render(line.decode()) encoded, or -1 where it does not model the line
 * (then the Python path renders it): invalid UTF-8, a C1 control (U+0080..U+009F: its 8-bit escape
 * forms), a line that moves the cursor (carriage return, backspace, ESC[...K/G/C/D) holding a
 * non-ASCII byte, a cursor move's argument over 4 digits, a row over RENDER_MAX_COL cells.
 * Escapes as sanitise's _CSI, _STRING_SEQ, _OTHER_ESC, tried in that order, else the control alone. */

#define RENDER_MAX_COL 65536
#define BLANK 0  /* an erased cell (a NUL cannot be text) */

/* Valid UTF-8 (Python's strict decoder) without a C1 control: 1 and *ascii set; else 0. */
static int
valid_no_c1(const unsigned char *p, const unsigned char *end, int *ascii)
{
    int all_ascii = 1;
    while (p < end) {
        unsigned char c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        all_ascii = 0;
        if (c < 0xC2) {
            return 0;
        } else if (c < 0xE0) {
            if (end - p < 2 || (p[1] & 0xC0) != 0x80 || (c == 0xC2 && p[1] < 0xA0))
                return 0;
            p += 2;
        } else if (c < 0xF0) {
            if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80
                    || (c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] > 0x9F))
                return 0;
            p += 3;
        } else if (c < 0xF5) {
            if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80
                    || (c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] > 0x8F))
                return 0;
            p += 4;
        } else {
            return 0;
        }
    }
    *ascii = all_ascii;
    return 1;
}

/* The length of the escape or control that starts at p[0] (a C0 control, DEL, or ESC), as
 * sanitise's _STRIP_RE matches it there (valid UTF-8 without C1 controls assumed). */
static Py_ssize_t
escape_len(const unsigned char *p, const unsigned char *end)
{
    if (*p != 0x1b)
        return 1;
    const unsigned char *q = p + 1;
    if (q < end && *q == '[') {  /* CSI: ESC [ [0-?]* [ -/]* [@-~] */
        const unsigned char *r = q + 1;
        while (r < end && *r >= 0x30 && *r <= 0x3f)
            r++;
        while (r < end && *r >= 0x20 && *r <= 0x2f)
            r++;
        if (r < end && *r >= 0x40 && *r <= 0x7e)
            return r + 1 - p;
    } else if (q < end && (*q == ']' || *q == 'P' || *q == '^' || *q == '_' || *q == 'X')) {
        /* a string: ESC [\]P^_X] [^BEL ESC ST \n]* (BEL | ESC \ | ST)? (no C1 here: ST cannot occur) */
        const unsigned char *r = q + 1;
        while (r < end && *r != 0x07 && *r != 0x1b && *r != '\n')
            r++;
        if (r < end && *r == 0x07)
            r++;
        else if (r + 1 < end && *r == 0x1b && r[1] == '\\')
            r += 2;
        return r - p;
    }
    /* other: ESC [ -/]* [0-~] */
    while (q < end && *q >= 0x20 && *q <= 0x2f)
        q++;
    if (q < end && *q >= 0x30 && *q <= 0x7e)
        return q + 1 - p;
    return 1;
}

static int
is_control(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

/* Whether the line moves the cursor as sanitise's _CURSOR_RE finds it (no C1 here). */
static int
moves_cursor(const unsigned char *p, const unsigned char *end)
{
    for (; p < end; p++) {
        if (*p == '\r' || *p == 0x08)
            return 1;
        if (*p == 0x1b && p + 1 < end && p[1] == '[') {
            const unsigned char *q = p + 2;
            while (q < end && ((*q >= '0' && *q <= '9') || *q == ';'))
                q++;
            if (q < end && (*q == 'K' || *q == 'G' || *q == 'C' || *q == 'D'))
                return 1;
        }
    }
    return 0;
}

/* render() of [p, end) into out (room for end - p bytes, or RENDER_MAX_COL for a cursor-moving
 * line); the length, or -1 where not modelled. */
static Py_ssize_t
render_line(const unsigned char *p, const unsigned char *end, unsigned char *out, Py_ssize_t room)
{
    int ascii = 0;
    if (!valid_no_c1(p, end, &ascii))
        return -1;
    if (!moves_cursor(p, end)) {  /* strip_controls */
        Py_ssize_t n = 0;
        while (p < end) {
            if (is_control(*p)) {
                p += escape_len(p, end);
            } else {
                out[n++] = *p++;
            }
        }
        return n;
    }
    if (!ascii)
        return -1;
    /* apply_carriage_returns: one terminal row */
    Py_ssize_t len = 0, col = 0;
    while (p < end) {
        unsigned char c = *p;
        if (!is_control(c)) {  /* a text run (tab included) */
            const unsigned char *t = p;
            while (t < end && !is_control(*t))
                t++;
            Py_ssize_t k = t - p;
            if (col + k > room)
                return -1;
            if (col > len)
                memset(out + len, BLANK, (size_t)(col - len));
            memcpy(out + col, p, (size_t)k);
            col += k;
            if (col > len)
                len = col;
            p = t;
            continue;
        }
        if (c == '\r') {
            col = 0;
            p++;
            continue;
        }
        if (c == 0x08) {
            if (col > 0)
                col--;
            p++;
            continue;
        }
        if (c == 0x1b && p + 1 < end && p[1] == '[') {  /* ESC [ digits* [KGCD]: a move */
            const unsigned char *d = p + 2, *q = d;
            while (q < end && *q >= '0' && *q <= '9')
                q++;
            if (q < end && (*q == 'K' || *q == 'G' || *q == 'C' || *q == 'D')) {
                Py_ssize_t nd = q - d, arg = 0;
                if (nd > 4)
                    return -1;
                for (const unsigned char *r = d; r < q; r++)
                    arg = arg * 10 + (*r - '0');
                if (*q == 'K') {
                    if (nd == 0 || (nd == 1 && *d == '0')) {
                        if (col < len)
                            len = col;
                    } else if (nd == 1 && *d == '1') {
                        memset(out, BLANK, (size_t)(col + 1 < len ? col + 1 : len));
                    } else if (nd == 1 && *d == '2') {
                        len = 0;
                    }
                } else if (*q == 'G') {
                    col = (nd == 0 ? 1 : arg) - 1;
                    if (col < 0)
                        col = 0;
                } else if (*q == 'C') {
                    col += nd == 0 || arg < 1 ? 1 : arg;
                } else {
                    col -= nd == 0 || arg < 1 ? 1 : arg;
                    if (col < 0)
                        col = 0;
                }
                if (col > room)
                    return -1;
                p = q + 1;
                continue;
            }
        }
        p += escape_len(p, end);
    }
    while (len > 0 && out[len - 1] == BLANK)
        len--;
    for (Py_ssize_t i = 0; i < len; i++)
        if (out[i] == BLANK)
            out[i] = ' ';
    return len;
}

static PyObject *
render(PyObject *self, PyObject *arg)
{
    Py_buffer line;
    if (!PyArg_Parse(arg, "y*:render", &line))
        return NULL;
    const unsigned char *p = line.buf;
    Py_ssize_t room = line.len > RENDER_MAX_COL ? line.len : RENDER_MAX_COL;
    unsigned char *out = PyMem_Malloc((size_t)room + 1);
    PyObject *result = NULL;
    if (out == NULL) {
        PyErr_NoMemory();
    } else {
        Py_ssize_t n = render_line(p, p + line.len, out, room);
        result = n < 0 ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize((const char *)out, n);
        PyMem_Free(out);
    }
    PyBuffer_Release(&line);
    return result;
}

/* Whether a rendered line (valid UTF-8, no control but tab) has at most max_chars characters; the
 * bytes escaping adds in *extra. */
static int
rendered_fits(const unsigned char *p, Py_ssize_t n, Py_ssize_t max_chars, Py_ssize_t *extra)
{
    Py_ssize_t chars = 0, more = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        chars += (c & 0xC0) != 0x80;
        more += c == '"' || c == '\\' || c == '\t';
    }
    *extra = more;
    return chars <= max_chars;
}

/* Room for `more` bytes past `len` in the bytearray `out` (its size is its capacity here), growing it
 * by at least half; -1 when out of memory. The bytes before `len` are kept; its buffer may move. */
static int
reserve(PyObject *out, Py_ssize_t len, Py_ssize_t more)
{
    Py_ssize_t cap = PyByteArray_GET_SIZE(out);
    if (len + more <= cap)
        return 0;
    Py_ssize_t grown = cap + cap / 2;
    if (grown < len + more)
        grown = len + more;
    return PyByteArray_Resize(out, grown);
}

static void
put_int64(PyObject *array, Py_ssize_t index, long long value)
{
    int64_t v = (int64_t)value;
    memcpy(PyBytes_AS_STRING(array) + 8 * index, &v, 8);
}

static PyObject *
encode_chunk(PyObject *self, PyObject *args)
{
    Py_buffer joined, ts;
    long long first_off;
    Py_ssize_t max_chars;
    PyObject *out, *flagged;
    if (!PyArg_ParseTuple(args, "O!y*Ly*nO!:encode_chunk", &PyByteArray_Type, &out, &joined, &first_off, &ts,
                          &max_chars, &PyList_Type, &flagged))
        return NULL;
    PyObject *length = NULL, *bounds = NULL, *offs = NULL, *slow = NULL, *controls = NULL, *rendered = NULL;
    PyObject *result = NULL;
    unsigned char *buf = NULL;  /* a rendered line */
    Py_ssize_t room = 0;
    const unsigned char *data = joined.buf;
    const unsigned char *stop = data + joined.len;
    Py_ssize_t nflag = PyList_GET_SIZE(flagged), fi = 0, next_flag = PY_SSIZE_T_MAX;

    Py_ssize_t count = 1 + count_newlines(data, stop);  /* lines: one more than the newlines */
    Py_ssize_t len = 0;
    /* every event's fixed part with a 20-digit offset, and the line unescaped: grown if short */
    if (reserve(out, 0, joined.len + count * (event_size(20, ts.len, 0, 0) + 1)) < 0)
        goto done;
    bounds = PyBytes_FromStringAndSize(NULL, 8 * (count + 1));
    offs = PyBytes_FromStringAndSize(NULL, 8 * (count + 1));
    slow = PyList_New(0);
    controls = PyList_New(0);
    rendered = PyDict_New();
    if (bounds == NULL || offs == NULL || slow == NULL || controls == NULL || rendered == NULL)
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
        put_int64(offs, index, off);
        put_int64(bounds, index, len);
        Py_ssize_t extra = 0;
        int kind = scan_line(line, end, stop, max_chars, &extra);
        Py_ssize_t n = -1;
        if (kind == CONTROL && !flagged_here) {
            Py_ssize_t need = end - line > RENDER_MAX_COL ? end - line : RENDER_MAX_COL;
            if (need > room) {
                PyMem_Free(buf);
                buf = PyMem_Malloc((size_t)need);
                room = buf != NULL ? need : 0;
                if (buf == NULL) {
                    PyErr_NoMemory();
                    goto done;
                }
            }
            n = render_line(line, end, buf, room);
            if (n >= 0 && !rendered_fits(buf, n, max_chars, &extra))
                n = -1;
        }
        const unsigned char *text = NULL;
        if (kind == CLEAN && !flagged_here) {
            text = line;
            n = end - line;
        } else if (n >= 0) {
            text = buf;
            PyObject *i = PyLong_FromSsize_t(index);
            PyObject *t = PyBytes_FromStringAndSize((const char *)buf, n);
            int failed = i == NULL || t == NULL || PyDict_SetItem(rendered, i, t) < 0
                         || PyList_Append(controls, i) < 0;
            Py_XDECREF(i);
            Py_XDECREF(t);
            if (failed)
                goto done;
        } else {  /* an empty event here: shipper.prepare splices the Python path's one in */
            PyObject *i = PyLong_FromSsize_t(index);
            int failed = i == NULL || PyList_Append(slow, i) < 0
                         || (kind == CONTROL && PyList_Append(controls, i) < 0);
            Py_XDECREF(i);
            if (failed)
                goto done;
        }
        if (text != NULL) {
            char digits[24];
            int nd = format_decimal(digits, off);
            if (reserve(out, len, event_size(nd, ts.len, n, extra)) < 0)
                goto done;
            len += write_event(PyByteArray_AS_STRING(out) + len, text, n, extra, digits, nd, ts.buf, ts.len);
        }
        index++;
        if (nl == NULL)
            break;
        if (reserve(out, len, 1) < 0)
            goto done;
        PyByteArray_AS_STRING(out)[len++] = ',';
        line = nl + 1;
    }
    put_int64(offs, count, first_off + (long long)joined.len + 1);
    put_int64(bounds, count, len + 1);
    length = PyLong_FromSsize_t(len);
    if (length != NULL)
        result = PyTuple_Pack(6, length, bounds, offs, slow, controls, rendered);
done:
    PyMem_Free(buf);
    Py_XDECREF(length);
    Py_XDECREF(bounds);
    Py_XDECREF(offs);
    Py_XDECREF(slow);
    Py_XDECREF(controls);
    Py_XDECREF(rendered);
    PyBuffer_Release(&joined);
    PyBuffer_Release(&ts);
    return result;
}

/* splice(buf, length, bounds, indices, events) -> (bytes, bounds): the chunk's events (the first
 * `length` bytes of `buf`, joined with ","; `bounds`: int64, where each starts and, last, length + 1)
 * as bytes of their own, with the events at `indices` (ascending) replaced by `events`: one copy of
 * the chunk, the later bounds moved by what the earlier changed. */
static PyObject *
splice(PyObject *self, PyObject *args)
{
    Py_buffer data, bounds;
    Py_ssize_t length;
    PyObject *indices, *events;
    if (!PyArg_ParseTuple(args, "y*ny*O!O!:splice", &data, &length, &bounds, &PyList_Type, &indices,
                          &PyList_Type, &events))
        return NULL;
    PyObject *out = NULL, *new_bounds = NULL, *result = NULL;
    Py_ssize_t nb = bounds.len / 8, m = PyList_GET_SIZE(indices);
    const char *src = data.buf;
    int64_t *b = PyMem_Malloc((size_t)(nb > 0 ? nb : 1) * 8);
    if (b == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(b, bounds.buf, (size_t)nb * 8);
    if (length < 0 || length > data.len) {
        PyErr_SetString(PyExc_ValueError, "splice: length beyond the buffer");
        goto done;
    }
    data.len = length;
    if (nb < 1 || bounds.len % 8 != 0 || m != PyList_GET_SIZE(events) || b[nb - 1] != length + 1) {
        PyErr_SetString(PyExc_ValueError, "splice: inconsistent arguments");
        goto done;
    }
    Py_ssize_t size = data.len, prev = -1;
    for (Py_ssize_t k = 0; k < m; k++) {
        Py_ssize_t i = PyLong_AsSsize_t(PyList_GET_ITEM(indices, k));
        PyObject *e = PyList_GET_ITEM(events, k);
        if ((i == -1 && PyErr_Occurred()) || i <= prev || i >= nb - 1 || !PyBytes_Check(e)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "splice: ascending indices of events, and bytes");
            goto done;
        }
        if (b[i] < (prev < 0 ? 0 : b[prev + 1]) || b[i + 1] - 1 < b[i] || b[i + 1] - 1 > length) {
            PyErr_SetString(PyExc_ValueError, "splice: bounds out of order");
            goto done;
        }
        prev = i;
        size += PyBytes_GET_SIZE(e) - (Py_ssize_t)(b[i + 1] - 1 - b[i]);
    }
    out = PyBytes_FromStringAndSize(NULL, size);
    new_bounds = PyBytes_FromStringAndSize(NULL, nb * 8);
    if (out == NULL || new_bounds == NULL)
        goto done;
    char *w = PyBytes_AS_STRING(out);
    Py_ssize_t done_to = 0, shift = 0, next_bound = 0;  /* source bytes copied; bounds moved */
    int64_t *nbp = (int64_t *)PyMem_Malloc((size_t)nb * 8);
    if (nbp == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < m; k++) {
        Py_ssize_t i = PyLong_AsSsize_t(PyList_GET_ITEM(indices, k));
        PyObject *e = PyList_GET_ITEM(events, k);
        Py_ssize_t from = (Py_ssize_t)b[i], to = (Py_ssize_t)b[i + 1] - 1, n = PyBytes_GET_SIZE(e);
        memcpy(w, src + done_to, (size_t)(from - done_to)); w += from - done_to;
        memcpy(w, PyBytes_AS_STRING(e), (size_t)n); w += n;
        done_to = to;
        for (; next_bound <= i; next_bound++)
            nbp[next_bound] = b[next_bound] + shift;
        shift += n - (to - from);
    }
    memcpy(w, src + done_to, (size_t)(data.len - done_to));
    for (; next_bound < nb; next_bound++)
        nbp[next_bound] = b[next_bound] + shift;
    memcpy(PyBytes_AS_STRING(new_bounds), nbp, (size_t)nb * 8);
    PyMem_Free(nbp);
    result = PyTuple_Pack(2, out, new_bounds);
done:
    PyMem_Free(b);
    Py_XDECREF(out);
    Py_XDECREF(new_bounds);
    PyBuffer_Release(&data);
    PyBuffer_Release(&bounds);
    return result;
}

/* ---- marks: what shipper.redact._hits looks for besides its needles ----
 *
 * marks(data) -> (api, tokens): the offsets of every b"API" in data (found left to right, each
 * search going on after the previous find), and of every job token's shape as redact's
 * _JOB_TOKEN_SHAPE finds them: a "." then exactly 43 of [A-Za-z0-9_-], not followed by one of
 * [A-Za-z0-9_=-]. */

static unsigned char B64URL[256];  /* 1: [A-Za-z0-9_-]; 2: "=" */

static int
append_offset(PyObject *list, Py_ssize_t value)
{
    PyObject *o = PyLong_FromSsize_t(value);
    if (o == NULL)
        return -1;
    int rc = PyList_Append(list, o);
    Py_DECREF(o);
    return rc;
}

static PyObject *
marks(PyObject *self, PyObject *arg)
{
    Py_buffer data;
    if (!PyArg_Parse(arg, "y*:marks", &data))
        return NULL;
    const unsigned char *base = data.buf, *stop = base + data.len;
    PyObject *api = PyList_New(0), *tokens = PyList_New(0), *result = NULL;
    if (api == NULL || tokens == NULL)
        goto done;
    /* "API" cannot overlap itself: every occurrence, found by its rarest byte (DNA is full of A) */
    for (const unsigned char *p = base + 1; stop - p >= 2; p++) {
        p = memchr(p, 'P', (size_t)(stop - p - 1));
        if (p == NULL)
            break;
        if (p[-1] == 'A' && p[1] == 'I' && append_offset(api, p - 1 - base) < 0)
            goto done;
    }
    for (const unsigned char *p = base; p < stop; p++) {
        p = memchr(p, '.', (size_t)(stop - p));
        if (p == NULL)
            break;
        /* most dots (decimals, names) fail on the run's last byte or the one after it */
        if (stop - p < 44 || B64URL[p[43]] != 1 || (stop - p > 44 && B64URL[p[44]] != 0))
            continue;
        const unsigned char *q = p + 1;
        while (q < stop && q - p <= 43 && B64URL[*q] == 1)
            q++;
        if (q - p == 44 && (q == stop || B64URL[*q] == 0)) {
            if (append_offset(tokens, p - base) < 0)
                goto done;
            p = q - 1;
        }
    }
    result = PyTuple_Pack(2, api, tokens);
done:
    Py_XDECREF(api);
    Py_XDECREF(tokens);
    PyBuffer_Release(&data);
    return result;
}

/* ---- needles: the redaction pre-check's multi-needle scan, ASCII case folded, without the GIL ----
 *
 * needles(list of bytes) -> automaton (a capsule): a trie of the needles (lowercase ASCII, non-empty,
 * distinct), with a bit table of the byte triples a needle may start with.
 * find(automaton, data) -> [(needle index, start, end), ...]: the matches of the needles in
 * data.lower() (bytes.lower: ASCII only), leftmost-longest and not overlapping, found left to right,
 * each search going on at the end of the previous match: the list ahocorasick_rs'
 * BytesAhoCorasick(needles, matchkind=LeftmostLongest).find_matches_as_indexes(data.lower()) gives.
 * The trie is walked only at the positions whose three bytes (a byte past the end counting as one in
 * no needle) pass the triple table: in BLAST output 2 % of positions, so the tight loop that skips
 * the others is left (and its branch mispredicted) that rarely; a byte-pair table as the first
 * filter passed 16 %. The table is by filter class: one class per folded byte of the needles, but
 * past 62 classes the rest (by a fixed order: letters and digits first, then the common punctuation)
 * share one, so the table stays 2^18 bits (32 KiB); a needle of one or two bytes sets every triple
 * it begins. The table may pass a position no needle starts at, never miss one; the longest needle
 * ending on the walk is the match at that position, and the first position with one is the
 * leftmost. The scan holds no Python object: it runs with the GIL released, so another thread (the
 * event loop) runs beside it. */

#define FILTER_BITS 6                      /* bits of a filter class */
#define FILTER_CLASSES (1 << FILTER_BITS)  /* the last one shared by the rarest bytes */
#define FILTER_WORDS ((1 << (3 * FILTER_BITS)) / 64)

typedef struct {
    unsigned char cls[256];      /* folded byte -> class (0: in no needle) */
    int nclass;
    Py_ssize_t nnodes;
    uint16_t *child;             /* nnodes * nclass: child node, 0 = none (the root is node 0) */
    int32_t *term;               /* nnodes: index of the needle ending at the node, or -1 */
    unsigned char fcls[256];     /* raw byte -> filter class (0: in no needle) */
    uint64_t filter[FILTER_WORDS];  /* bit f0 << 12 | f1 << 6 | f2: a needle may start with bytes of
                                       filter classes f0, f1, f2 */
} Needles;

/* The order in which bytes of the needles get filter classes of their own (any other byte after). */
static const char FILTER_ORDER[] = "abcdefghijklmnopqrstuvwxyz0123456789_-=.:/ ,;\"'()[]{}<>@+*&%?#!$|\\^`~\t";

static unsigned char FOLD[256];

static void
needles_free(PyObject *capsule)
{
    Needles *n = PyCapsule_GetPointer(capsule, "shipper._hotpath.needles");
    if (n != NULL) {
        PyMem_Free(n->child);
        PyMem_Free(n->term);
        PyMem_Free(n);
    }
}

static void
filter_set(Needles *n, unsigned f0, int f1, int f2)  /* f1, f2: -1 for any class */
{
    for (unsigned a = f1 < 0 ? 0 : (unsigned)f1; a < (f1 < 0 ? FILTER_CLASSES : (unsigned)f1 + 1); a++)
        for (unsigned b = f2 < 0 ? 0 : (unsigned)f2; b < (f2 < 0 ? FILTER_CLASSES : (unsigned)f2 + 1); b++) {
            unsigned h = f0 << (2 * FILTER_BITS) | a << FILTER_BITS | b;
            n->filter[h >> 6] |= UINT64_C(1) << (h & 63);
        }
}

static PyObject *
needles(PyObject *self, PyObject *list)
{
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "needles: a list of bytes");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(list), total = 1;
    Needles *n = PyMem_Calloc(1, sizeof(Needles));
    if (n == NULL)
        return PyErr_NoMemory();
    int used[256] = {0};
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *o = PyList_GET_ITEM(list, k);
        if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) == 0) {
            PyMem_Free(n);
            PyErr_SetString(PyExc_ValueError, "needles: non-empty bytes");
            return NULL;
        }
        const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(o);
        for (Py_ssize_t i = 0; i < PyBytes_GET_SIZE(o); i++) {
            if (FOLD[b[i]] != b[i]) {
                PyMem_Free(n);
                PyErr_SetString(PyExc_ValueError, "needles: lowercase");
                return NULL;
            }
            used[b[i]] = 1;
        }
        total += PyBytes_GET_SIZE(o);
    }
    if (total > 65535) {  /* node numbers are 16 bits */
        PyMem_Free(n);
        PyErr_SetString(PyExc_ValueError, "needles: at most 65,534 bytes in all");
        return NULL;
    }
    n->nclass = 1;
    for (int c = 0; c < 256; c++)
        if (used[c])
            n->cls[c] = (unsigned char)n->nclass++;
    for (int c = 0; c < 256; c++)  /* an upper-case byte folds to its class */
        n->cls[c] = n->cls[FOLD[c]];
    int next = 1;
    for (const char *p = FILTER_ORDER; *p; p++)
        if (used[(unsigned char)*p] && !n->fcls[(unsigned char)*p]) {
            n->fcls[(unsigned char)*p] = (unsigned char)(next < FILTER_CLASSES - 1 ? next++ : FILTER_CLASSES - 1);
        }
    for (int c = 0; c < 256; c++)
        if (used[c] && !n->fcls[c])
            n->fcls[c] = (unsigned char)(next < FILTER_CLASSES - 1 ? next++ : FILTER_CLASSES - 1);
    for (int c = 0; c < 256; c++)
        n->fcls[c] = n->fcls[FOLD[c]];
    n->child = PyMem_Calloc((size_t)(total * n->nclass), sizeof(uint16_t));
    n->term = PyMem_Malloc((size_t)total * sizeof(int32_t));
    if (n->child == NULL || n->term == NULL) {
        PyMem_Free(n->child);
        PyMem_Free(n->term);
        PyMem_Free(n);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < total; i++)
        n->term[i] = -1;
    n->nnodes = 1;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *o = PyList_GET_ITEM(list, k);
        const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(o);
        Py_ssize_t len = PyBytes_GET_SIZE(o);
        uint32_t node = 0;
        for (Py_ssize_t i = 0; i < len; i++) {
            uint16_t *slot = &n->child[(Py_ssize_t)node * n->nclass + n->cls[b[i]]];
            if (*slot == 0)
                *slot = (uint16_t)n->nnodes++;
            node = *slot;
        }
        if (n->term[node] >= 0) {
            PyMem_Free(n->child);
            PyMem_Free(n->term);
            PyMem_Free(n);
            PyErr_SetString(PyExc_ValueError, "needles: distinct");
            return NULL;
        }
        n->term[node] = (int32_t)k;
        filter_set(n, n->fcls[b[0]], len > 1 ? n->fcls[b[1]] : -1, len > 2 ? n->fcls[b[2]] : -1);
    }
    PyObject *capsule = PyCapsule_New(n, "shipper._hotpath.needles", needles_free);
    if (capsule == NULL) {
        PyMem_Free(n->child);
        PyMem_Free(n->term);
        PyMem_Free(n);
    }
    return capsule;
}

typedef struct {
    Py_ssize_t k, start, end;
} Match;

static PyObject *
find(PyObject *self, PyObject *args)
{
    PyObject *capsule;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "Oy*:find", &capsule, &data))
        return NULL;
    Needles *n = PyCapsule_GetPointer(capsule, "shipper._hotpath.needles");
    if (n == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    const unsigned char *d = data.buf;
    Py_ssize_t len = data.len, cap = 256, nm = 0;
    Match *found = PyMem_RawMalloc((size_t)cap * sizeof(Match));
    if (found == NULL) {
        PyBuffer_Release(&data);
        return PyErr_NoMemory();
    }
    int oom = 0;
    Py_BEGIN_ALLOW_THREADS
    const unsigned char *cls = n->cls, *fc = n->fcls;
    const uint64_t *filter = n->filter;
    const uint16_t *child = n->child;
    const int32_t *term = n->term;
    Py_ssize_t nclass = n->nclass;
#define PASSES(h) (filter[(h) >> 6] >> ((h) & 63) & 1)
    Py_ssize_t i = 0;
    while (i < len) {
        /* skip the positions where no needle can begin: one table look per position, the classes
         * of the bytes kept in registers as the scan moves on, one branch per two positions */
        if (i + 2 < len) {
            uint32_t c0 = fc[d[i]], c1 = fc[d[i + 1]];
            for (Py_ssize_t last = len - 3; i < last; i += 2) {  /* two positions per branch */
                uint32_t c2 = fc[d[i + 2]], c3 = fc[d[i + 3]];
                uint64_t first = PASSES(c0 << 12 | c1 << 6 | c2);
                if (first | PASSES(c1 << 12 | c2 << 6 | c3)) {
                    i += !first;
                    goto walk;
                }
                c0 = c2;
                c1 = c3;
            }
            for (Py_ssize_t last = len - 2; i < last; i++) {
                uint32_t c2 = fc[d[i + 2]];
                if (PASSES(c0 << 12 | c1 << 6 | c2))
                    break;
                c0 = c1;
                c1 = c2;
            }
        }
        if (i + 2 >= len) {  /* the last positions: a byte past the end is in no needle */
            uint32_t h = (uint32_t)fc[d[i]] << 12 | (i + 1 < len ? (uint32_t)fc[d[i + 1]] << 6 : 0);
            if (!PASSES(h)) {
                i++;
                continue;
            }
        }
    walk:;
        Py_ssize_t node = 0;
        Py_ssize_t best = -1, best_end = 0;
        for (Py_ssize_t j = i; j < len; j++) {
            node = child[node * nclass + cls[d[j]]];
            if (node == 0)
                break;
            if (term[node] >= 0) {
                best = term[node];
                best_end = j + 1;
            }
        }
        if (best < 0) {
            i++;
            continue;
        }
        if (nm == cap) {
            Match *more = NULL;
            if (cap <= PY_SSIZE_T_MAX / 2 / (Py_ssize_t)sizeof(Match))
                more = PyMem_RawRealloc(found, (size_t)cap * 2 * sizeof(Match));
            if (more == NULL) {
                oom = 1;
                break;
            }
            found = more;
            cap *= 2;
        }
        found[nm].k = best;
        found[nm].start = i;
        found[nm].end = best_end;
        nm++;
        i = best_end;
    }
#undef PASSES
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    PyObject *result = NULL;
    if (oom) {
        PyErr_NoMemory();
    } else if ((result = PyList_New(nm)) != NULL) {
        for (Py_ssize_t m = 0; m < nm; m++) {
            PyObject *t = Py_BuildValue("(nnn)", found[m].k, found[m].start, found[m].end);
            if (t == NULL) {
                Py_CLEAR(result);
                break;
            }
            PyList_SET_ITEM(result, m, t);
        }
    }
    PyMem_RawFree(found);
    return result;
}

/* newlines(data) -> data.count(b"\n"), sixteen bytes at a time (bytes.count looks at every byte). */
static PyObject *
newlines(PyObject *self, PyObject *arg)
{
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *p = data.buf;
    Py_ssize_t count = count_newlines(p, p + data.len);
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(count);
}

static PyMethodDef methods[] = {
    {"newlines", newlines, METH_O,
     "newlines(data) -> int\n\n"
     "data.count(b\"\\n\")."},
    {"needles", needles, METH_O,
     "needles(needles) -> automaton\n\n"
     "A trie of lowercase ASCII needles, for find."},
    {"find", find, METH_VARARGS,
     "find(automaton, data) -> [(needle, start, end), ...]\n\n"
     "Leftmost-longest, non-overlapping matches of the needles in data.lower(), without the GIL."},
    {"marks", marks, METH_O,
     "marks(data) -> (api, tokens)\n\n"
     "Offsets of every b\"API\" in data, and of every job token's shape (see _hotpath.c)."},
    {"render", render, METH_O,
     "render(line) -> bytes | None\n\n"
     "shipper.sanitise.render of the line (UTF-8, no newline), encoded; None where not modelled."},
    {"encode_chunk", encode_chunk, METH_VARARGS,
     "encode_chunk(scratch, joined, first_off, ts, max_chars, flagged) -> (length, bounds, offs, slow, controls, rendered)\n\n"
     "The events of the lines of `joined` into the bytearray `scratch` (grown as needed; its first `length`\n"
     "bytes), joined with \",\" (the lines in `slow` left empty), where each\n"
     "starts (int64), every line's stream offset (int64), the lines holding control characters, and the\n"
     "rendered texts."},
    {"splice", splice, METH_VARARGS,
     "splice(buf, length, bounds, indices, events) -> (bytes, bounds)\n\n"
     "The chunk's events (the first `length` bytes of `buf`) with those at `indices` replaced, in one copy."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shipper._hotpath",
    "The shipper's per-line hot path for lines that need no sanitising (see _hotpath.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__hotpath(void)
{
    for (int c = 0; c < 256; c++)
        FOLD[c] = (unsigned char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    for (int c = 0; c < 256; c++)
        B64URL[c] = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'
                    ? 1 : c == '=' ? 2 : 0;
    return PyModule_Create(&module);
}
