/* Lets a Cython class answer `await` through the am_send slot (CPython 3.10+).
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

/* Returns 0 on success, -1 if the type has no async slots to extend. */
static int spark_install_am_send(PyTypeObject *type, spark_step_fn step)
{
    if (type->tp_as_async == NULL) {
        return -1;
    }
    spark_step = step;
    type->tp_as_async->am_send = spark_am_send;
    return 0;
}

#endif
