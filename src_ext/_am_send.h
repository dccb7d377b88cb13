/* Lets a Cython class answer `await` through the am_send slot (CPython 3.10+),
 * and through a tp_iternext that raises its StopIteration cheaply (3.12+).
 *
 * The interpreter's SEND (3.10, 3.11) and asyncio's C Task call PyIter_Send,
 * which uses am_send when a type has it: the result of a finished operation
 * is handed back directly instead of through a raised StopIteration.
 * The step function is written in Cython; it returns 0 when the operation
 * finished (*result is its value), 1 when it suspends (*result is the
 * future to wait on), and -1 with an exception set on error.
 */
#ifndef SPARK_AM_SEND_H
#define SPARK_AM_SEND_H

#include <Python.h>

typedef int (*spark_step_fn)(PyObject *op, PyObject *arg, PyObject **result);

static spark_step_fn spark_step = NULL;

static PySendResult spark_am_send(PyObject *op, PyObject *arg, PyObject **result)
{
    int status = spark_step(op, arg, result);
    if (status < 0) {
        *result = NULL;
        return PYGEN_ERROR;
    }
    return status == 0 ? PYGEN_RETURN : PYGEN_NEXT;
}

/* Finish an iteration with `value` (a reference this steals) as the result.
 *
 * Since CPython 3.12 the interpreter's SEND calls tp_iternext, so a result
 * has to travel in a StopIteration. A None result needs no exception at all
 * (an iterator that stops without one returns None). Any other result goes
 * in one StopIteration kept for the purpose and reused while nobody else
 * holds it: SEND takes the value out at once, so building a new exception
 * per result (an allocation the garbage collector tracks, plus an args
 * tuple) would be pure overhead. The reused exception's reference to the
 * value is dropped when the next operation is made or stepped, or this one
 * freed (spark_forget_result): the core keeps at most the one result last
 * delivered, and only until the next send or receive on any channel. */
static PyObject *spark_stop = NULL;

#if PY_VERSION_HEX >= 0x030C0000
/* Whether the kept StopIteration still refers to anything: the last result,
 * or what it picked up if user code caught it on its way (a traceback,
 * chained exceptions, notes, attributes). */
static inline int spark_stop_holds(PyObject *stop)
{
    PyBaseExceptionObject *base = (PyBaseExceptionObject *)stop;
    PyObject *value = ((PyStopIterationObject *)stop)->value;
    return (value != NULL && value != Py_None) || base->traceback != NULL ||
           base->context != NULL || base->cause != NULL || base->notes != NULL ||
           base->dict != NULL;
}

/* Let go of all of that. Each field is emptied before what it held is
 * released, since releasing can run any code (a finalizer), and that code
 * may use the kept exception again. */
static void spark_stop_release(PyObject *stop)
{
    PyBaseExceptionObject *base = (PyBaseExceptionObject *)stop;
    Py_CLEAR(((PyStopIterationObject *)stop)->value);
    Py_CLEAR(base->traceback);
    Py_CLEAR(base->context);
    Py_CLEAR(base->cause);
    Py_CLEAR(base->notes);
    Py_CLEAR(base->dict);
    base->suppress_context = 0;
}
#endif

static inline void spark_forget_result(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *stop = spark_stop;
    if (stop != NULL && Py_REFCNT(stop) == 1 && spark_stop_holds(stop)) {
        spark_stop_release(stop);
    }
#endif
}

static PyObject *spark_stop_iteration(PyObject *value)
{
    if (value == Py_None) {
        Py_DECREF(value);
        return NULL;
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *stop;
    for (;;) {
        stop = spark_stop;
        if (stop == NULL || Py_REFCNT(stop) != 1) {
            /* Held elsewhere (someone caught it): leave it to them, make another. */
            stop = PyObject_CallNoArgs(PyExc_StopIteration);
            if (stop == NULL) {
                Py_DECREF(value);
                return NULL;
            }
            Py_XSETREF(spark_stop, stop); /* the old one lives on elsewhere: no code runs */
            break;
        }
        if (!spark_stop_holds(stop)) {
            break;
        }
        spark_stop_release(stop); /* may run code that uses the cache: look again */
    }
    /* The value field is empty (NULL, or None in a new exception). */
    Py_XSETREF(((PyStopIterationObject *)stop)->value, value);
    PyErr_SetRaisedException(Py_NewRef(stop));
    return NULL;
#else
    if (PyTuple_Check(value) || PyExceptionInstance_Check(value)) {
        /* PyErr_SetObject would unpack a tuple or use an exception as is. */
        PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, value);
        Py_DECREF(value);
        if (stop != NULL) {
            PyErr_SetObject(PyExc_StopIteration, stop);
            Py_DECREF(stop);
        }
        return NULL;
    }
    PyErr_SetObject(PyExc_StopIteration, value);
    Py_DECREF(value);
    return NULL;
#endif
}

static PyObject *spark_iternext(PyObject *op)
{
    PyObject *result = NULL;
    spark_forget_result();
    int status = spark_step(op, Py_None, &result);
    if (status < 0) {
        return NULL;
    }
    if (status == 1) {
        return result; /* the future to wait on */
    }
    return spark_stop_iteration(result);
}

/* Returns 0 on success, -1 if the type has no async slots to extend. */
static int spark_install_am_send(PyTypeObject *type, spark_step_fn step)
{
    if (type->tp_as_async == NULL) {
        return -1;
    }
    spark_step = step;
    type->tp_as_async->am_send = spark_am_send;
    type->tp_iternext = spark_iternext;
    return 0;
}

/* observer(message, channel, phase): a new reference, or NULL with the
 * observer's exception set. Called straight through vectorcall, so the
 * caller needs no try block (and no saved exception state) per call. */
static inline PyObject *spark_call_observer(PyObject *observer, PyObject *message,
                                            PyObject *channel, PyObject *phase)
{
    PyObject *args[4] = {NULL, message, channel, phase};
    vectorcallfunc call = PyVectorcall_Function(observer);
    if (call != NULL) { /* functions, bound methods, most builtins */
        return call(observer, args + 1, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    return PyObject_Vectorcall(observer, args + 1, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

#endif
