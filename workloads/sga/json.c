/* Just enough JSON writing for the result document and progress lines. */
#include "sga.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void grow(struct jbuf *b, size_t more)
{
    if (b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s) {
        perror("mshare-sga: realloc");
        _exit(1);
    }
    b->s = s;
    b->cap = cap;
}

void jb_raw(struct jbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    grow(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void comma(struct jbuf *b)
{
    if (b->need_comma)
        jb_raw(b, ",");
    b->need_comma = 0;
}

static void quoted(struct jbuf *b, const char *s)
{
    jb_raw(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            jb_raw(b, "\\%c", c);
        else if (c < 0x20)
            jb_raw(b, "\\u%04x", c);
        else
            jb_raw(b, "%c", c);
    }
    jb_raw(b, "\"");
}

void jb_key(struct jbuf *b, const char *key)
{
    comma(b);
    if (key) {
        quoted(b, key);
        jb_raw(b, ":");
    }
}

void jb_obj_begin(struct jbuf *b) { jb_raw(b, "{"); b->need_comma = 0; }
void jb_obj_end(struct jbuf *b) { jb_raw(b, "}"); b->need_comma = 1; }
void jb_arr_begin(struct jbuf *b) { jb_raw(b, "["); b->need_comma = 0; }
void jb_arr_end(struct jbuf *b) { jb_raw(b, "]"); b->need_comma = 1; }

void jb_str(struct jbuf *b, const char *key, const char *val)
{
    jb_key(b, key);
    if (val)
        quoted(b, val);
    else
        jb_raw(b, "null");
    b->need_comma = 1;
}

void jb_int(struct jbuf *b, const char *key, int64_t val)
{
    jb_key(b, key);
    jb_raw(b, "%lld", (long long)val);
    b->need_comma = 1;
}

void jb_num(struct jbuf *b, const char *key, double val)
{
    jb_key(b, key);
    if (isnan(val) || isinf(val))
        jb_raw(b, "null");
    else
        jb_raw(b, "%.6g", val);
    b->need_comma = 1;
}

void jb_bool(struct jbuf *b, const char *key, int val)
{
    jb_key(b, key);
    jb_raw(b, val < 0 ? "null" : val ? "true" : "false");
    b->need_comma = 1;
}

void jb_null(struct jbuf *b, const char *key)
{
    jb_key(b, key);
    jb_raw(b, "null");
    b->need_comma = 1;
}

void jb_elem_int(struct jbuf *b, int64_t val) { jb_int(b, NULL, val); }
void jb_elem_num(struct jbuf *b, double val) { jb_num(b, NULL, val); }
void jb_elem_str(struct jbuf *b, const char *val) { jb_str(b, NULL, val); }

void jb_free(struct jbuf *b)
{
    free(b->s);
    memset(b, 0, sizeof *b);
}
