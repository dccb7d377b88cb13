/* C helpers of the compiled worker loop (_worker.pxi): what Node.go does per
 * message that is cheaper without a Python-level call. */
#ifndef SPARK_WORKER_H
#define SPARK_WORKER_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

/* self.<name>(arg), without building a bound method. */
static inline PyObject *spark_call_method1(PyObject *self, PyObject *name, PyObject *arg)
{
    PyObject *args[2] = {self, arg};
    return PyObject_VectorcallMethod(name, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* time.monotonic(), as a float. */
static inline PyObject *spark_monotonic(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t now;
    if (PyTime_Monotonic(&now) < 0) {
        return NULL;
    }
    return PyFloat_FromDouble(PyTime_AsSecondsDouble(now));
#else
    return PyFloat_FromDouble(_PyTime_AsSecondsDouble(_PyTime_GetMonotonicClock()));
#endif
}

/* An empty dict with room for `size` items without resizing. */
static inline PyObject *spark_dict_presized(Py_ssize_t size)
{
#if PY_VERSION_HEX < 0x030E0000
    return _PyDict_NewPresized(size);
#else
    (void)size;
    return PyDict_New();
#endif
}

/* Trace ids: 128 bits from xoshiro256** as 32 lowercase hex digits, like
 * uuid4().hex. The generator is seeded from os.urandom at import and again
 * in every forked child (spark_seed_trace_ids), so ids are unique across
 * worker processes; they are not meant to be unguessable. */
static uint64_t spark_trace_state[4] = {1, 2, 3, 4};

static inline uint64_t spark_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static inline uint64_t spark_next_random(void)
{
    uint64_t *s = spark_trace_state;
    uint64_t result = spark_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = spark_rotl(s[3], 45);
    return result;
}

static void spark_seed_trace_ids(const char *seed, Py_ssize_t length)
{
    uint64_t state[4] = {0, 0, 0, 0};
    memcpy(state, seed, length < 32 ? (size_t)length : 32);
    if ((state[0] | state[1] | state[2] | state[3]) == 0) {
        state[0] = 1; /* the one state the generator cannot leave */
    }
    memcpy(spark_trace_state, state, sizeof state);
}

static PyObject *spark_new_trace_id(void)
{
    static const char digits[] = "0123456789abcdef";
    PyObject *text = PyUnicode_New(32, 127);
    if (text == NULL) {
        return NULL;
    }
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    for (int half = 0; half < 2; half++) {
        uint64_t bits = spark_next_random();
        for (int i = 15; i >= 0; i--) {
            out[half * 16 + i] = (Py_UCS1)digits[bits & 15];
            bits >>= 4;
        }
    }
    return text;
}

#endif
