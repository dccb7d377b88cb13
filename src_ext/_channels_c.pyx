# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled build of the channels; same behaviour as ``_channels_py``.

The pure module is the specification: this one keeps the same state
(buffer, two waiter queues, the counts of promised wake-ups) and takes the
same steps, in C. What differs is only how it is fast:

* the buffer and the waiter queues are power-of-two ring buffers over a list;
* ``send``/``receive`` return an ``_Op``, a small awaitable from a freelist
  that finishes inside its first step when it need not wait, answering the
  ``await`` through the ``am_send`` slot, so no coroutine is built and, on
  CPython 3.10 and 3.11, no ``StopIteration`` is raised;
* a blocked operation parks itself in the waiter queue and yields a loop
  future; the waker records why it woke it (a promise, or close) on the op.
"""

cimport cython
from cpython.dict cimport PyDict_Copy, PyDict_Update
from cpython.object cimport PyObject, PyObject_GenericSetAttr, PyTypeObject
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New
from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
    PyThread_type_lock,
)
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.ref cimport Py_DECREF, Py_INCREF, _Py_REFCNT

import asyncio
import copyreg as _copyreg
import inspect
from collections.abc import Mapping as _Mapping
import types
from types import GenericAlias

from spark.nodes import _channel_base
from spark.nodes import _copying
from spark.nodes import _channels_py
from spark.nodes._threads import (
    SHARING as _SHARING,
    ThreadWaiter as _ThreadWaiter,
    check_timeout as _check_timeout,
    blocks_a_loop as _blocks_a_loop,
)
from spark.nodes._channel_base import (
    BaseChannel,
    ChannelClosed,
    ChannelStats,
    check_ack,
    check_is_shutdown,
    check_max_items,
    check_maxsize,
    check_metadata,
    check_name,
    check_observer,
    check_observers,
    not_a_message,
    register_message_type,
    report_observer_error,
    schedule_observer_awaitable,
)

cdef extern from *:
    """
    /* An instance Cython makes gets an empty __dict__ at once. The
       interpreter does not specialize method lookups on an instance that has
       one (so every channel.send(...) would build a bound method); drop it:
       the interpreter makes it again when an attribute is first set. */
    static inline void spark_drop_empty_dict(PyObject *self)
    {
        Py_ssize_t offset = Py_TYPE(self)->tp_dictoffset;
        if (offset > 0) {
            PyObject **dict = (PyObject **)((char *)self + offset);
            if (*dict != NULL && PyDict_GET_SIZE(*dict) == 0) {
                Py_CLEAR(*dict);
            }
        }
    }
    """
    void spark_drop_empty_dict(object self)

cdef extern from *:
    """
    /* The calling thread's id, as PyThread_get_thread_ident() gives it,
       without the call into libpython: a few instructions on the hot path. */
    #ifdef _WIN32
    static inline unsigned long spark_thread_id(void) { return (unsigned long)GetCurrentThreadId(); }
    #else
    #include <pthread.h>
    static inline unsigned long spark_thread_id(void) { return (unsigned long)pthread_self(); }
    #endif
    """
    unsigned long spark_thread_id() nogil

cdef extern from "Python.h":
    int _generic_delattr "PyObject_GenericSetAttr" (object o, object name, PyObject* value) except -1
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    PySendResult PyIter_Send(PyObject* iter, PyObject* arg, PyObject** result)


cdef inline int raise_current() except -1:
    """Propagate the exception already set (by a C API call that failed)."""
    return -1


cdef extern from "_am_send.h":
    ctypedef int (*spark_step_fn)(PyObject* op, PyObject* arg, PyObject** result) except -1
    int spark_install_am_send(PyTypeObject* type, spark_step_fn step)
    void spark_forget_result()
    PyObject* spark_call_observer(PyObject* observer, PyObject* message, PyObject* channel, PyObject* phase)

cdef object _QueueFull = asyncio.QueueFull
cdef object _QueueEmpty = asyncio.QueueEmpty
cdef object _get_running_loop = asyncio.get_running_loop
cdef object _get_running_loop_or_none = asyncio._get_running_loop
cdef object _InvalidStateError = asyncio.InvalidStateError
cdef object _Future = asyncio.Future
cdef object _future_set_result = asyncio.Future.set_result
cdef object _inspect_isawaitable = inspect.isawaitable
cdef object _sleep = __import__("time").sleep
cdef object _CoroutineType = types.CoroutineType
cdef object _GeneratorType = types.GeneratorType


cdef inline bint _isawaitable(object value) except -1:
    return type(value) is _CoroutineType or _inspect_isawaitable(value)
cdef object _MISSING = _channels_py._MISSING
cdef object _SUSPEND = object()   # _Op._resume's answer when the op must wait
cdef str _SEND = "send"
cdef str _RECEIVE = "receive"

__all__ = ["ChannelMessage", "ForwardingChannel", "InMemoryChannel"]


# -- the envelope -----------------------------------------------------------

@cython.freelist(256)
cdef class ChannelMessage:
    """The envelope every channel carries.

    ``payload`` is the application's data; ``metadata`` carries tracing and
    routing information; ``ack``, when set, is awaited by the receiver once
    the message is handled; ``is_shutdown`` asks the receiver to stop.
    A message without ``ack`` can be pickled.
    """

    cdef public object payload
    cdef public object metadata
    cdef public object ack
    # A C int, not an object: an object field here made batch 20% slower on
    # CPython 3.14. The constructors take only a bool; assigning anything
    # else later stores its truth value (the pure build stores it as given).
    cdef public bint is_shutdown

    __slots__ = ("payload", "metadata", "ack", "is_shutdown")
    __match_args__ = ("payload", "metadata", "ack", "is_shutdown")
    # The fields as the pure build's dataclass declares them, so that
    # dataclasses.fields(), replace() and asdict() work on this class too.
    __dataclass_fields__ = _channels_py.ChannelMessage.__dataclass_fields__
    __dataclass_params__ = _channels_py.ChannelMessage.__dataclass_params__

    def __init__(self, payload, metadata=None, ack=None, is_shutdown=False):
        self.payload = payload
        if type(metadata) is dict:
            self.metadata = metadata
        else:
            self.metadata = {} if metadata is None else check_metadata(metadata)
        if ack is not None and not callable(ack):
            check_ack(ack)  # raises
        if is_shutdown is not False:
            check_is_shutdown(is_shutdown)
        self.ack = ack
        self.is_shutdown = is_shutdown

    def __class_getitem__(cls, item):
        return GenericAlias(cls, item)

    def clone(self, *, payload=_MISSING, metadata=None, ack=_MISSING, is_shutdown=_MISSING):
        """A new message with the given fields replaced.

        ``metadata`` is merged: the clone has this message's keys plus the
        given ones, the given ones winning. Neither this message nor its
        metadata dict is changed.
        """
        cdef ChannelMessage clone = ChannelMessage.__new__(ChannelMessage)
        own = self.metadata
        merged = PyDict_Copy(own) if type(own) is dict else dict(own)
        if metadata is not None:
            PyDict_Update(merged, metadata if type(metadata) is dict else check_metadata(metadata))
        if ack is _MISSING:
            ack = self.ack
        if ack is not None and not callable(ack):
            check_ack(ack)
        if is_shutdown is _MISSING:
            clone.is_shutdown = self.is_shutdown  # a bool already: a C int
        else:
            if is_shutdown is not False and is_shutdown is not True:
                check_is_shutdown(is_shutdown)
            clone.is_shutdown = is_shutdown
        clone.payload = self.payload if payload is _MISSING else payload
        clone.metadata = merged
        clone.ack = ack
        return clone

    def __post_init__(self):
        """The checks of ``__init__``, for a dataclass subclass's generated one."""
        if type(self.metadata) is not dict:
            self.metadata = check_metadata(self.metadata)
        check_ack(self.ack)
        check_is_shutdown(self.is_shutdown)

    def __reduce__(self):
        return _copying.reduce_message(self)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        cdef ChannelMessage that = <ChannelMessage>other
        return (self.payload, self.metadata, self.ack, self.is_shutdown) == (
            that.payload, that.metadata, that.ack, that.is_shutdown
        )

    __hash__ = None

    def __repr__(self):
        return (
            f"{type(self).__qualname__}(payload={self.payload!r}, metadata={self.metadata!r}, "
            f"ack={self.ack!r}, is_shutdown={self.is_shutdown!r})"
        )


register_message_type(ChannelMessage)


cdef inline bint _is_message(object message):
    return type(message) is ChannelMessage or isinstance(message, _channel_base.message_types)


cdef ChannelMessage _with_metadata(object message, object metadata):
    """A compiled copy of a message of another class, carrying ``metadata``."""
    cdef ChannelMessage copy = ChannelMessage.__new__(ChannelMessage)
    copy.payload = message.payload
    copy.ack = message.ack
    copy.is_shutdown = message.is_shutdown
    copy.metadata = metadata
    return copy


# -- ring buffer ----------------------------------------------------------

cdef extern from "Python.h":
    # PyList_SET_ITEM with a raw pointer: stores without touching reference
    # counts, so the ring can move references and leave empty slots NULL.
    void _list_store "PyList_SET_ITEM" (object items, Py_ssize_t i, PyObject* item)


@cython.final
cdef class _Ring:
    """A FIFO over a power-of-two list used as a circular array; grows by doubling.

    Empty slots hold NULL (the list is private: only the ring reads it), so
    pushing and popping move one reference each and nothing else.
    """

    cdef list items
    cdef Py_ssize_t head
    cdef Py_ssize_t count
    cdef Py_ssize_t mask

    def __cinit__(self, Py_ssize_t capacity):
        cdef Py_ssize_t size = 8
        while size < capacity:
            size <<= 1
        self.items = PyList_New(size)
        self.mask = size - 1

    cdef inline int push(self, object item) except -1:
        if self.count > self.mask:
            self._grow()
        Py_INCREF(item)
        _list_store(self.items, (self.head + self.count) & self.mask, <PyObject*>item)
        self.count += 1
        return 0

    cdef inline object pop(self):
        """Remove and return the oldest item; the ring must not be empty."""
        cdef Py_ssize_t head = self.head
        cdef PyObject* slot = PyList_GET_ITEM(self.items, head)
        _list_store(self.items, head, NULL)
        self.head = (head + 1) & self.mask
        self.count -= 1
        item = <object>slot  # a new reference...
        Py_DECREF(item)  # ...replacing the one the ring held
        return item

    cdef inline PyObject* take(self):
        """Remove the oldest item and return the ring's reference to it; the ring must not be empty."""
        cdef Py_ssize_t head = self.head
        cdef PyObject* slot = PyList_GET_ITEM(self.items, head)
        _list_store(self.items, head, NULL)
        self.head = (head + 1) & self.mask
        self.count -= 1
        return slot

    cdef int _grow(self) except -1:
        cdef Py_ssize_t size = self.mask + 1
        cdef Py_ssize_t i, j
        cdef list old = self.items
        cdef list items = PyList_New(2 * size)
        for i in range(self.count):
            j = (self.head + i) & self.mask
            _list_store(items, i, PyList_GET_ITEM(old, j))
            _list_store(old, j, NULL)
        self.items = items
        self.head = 0
        self.mask = 2 * size - 1
        return 0

    cdef bint remove(self, object item) except -1:
        """Remove ``item`` (by identity) keeping the others in order."""
        cdef Py_ssize_t i
        for i in range(self.count):
            if PyList_GET_ITEM(self.items, (self.head + i) & self.mask) == <PyObject*>item:
                self.remove_at(i)
                return True
        return False

    cdef int remove_at(self, Py_ssize_t i) except -1:
        """Remove the item ``i`` places from the oldest, keeping the others in order."""
        cdef Py_ssize_t j, n = self.count
        cdef list items = self.items
        cdef PyObject* removed = PyList_GET_ITEM(items, (self.head + i) & self.mask)
        for j in range(i, n - 1):
            _list_store(
                items,
                (self.head + j) & self.mask,
                PyList_GET_ITEM(items, (self.head + j + 1) & self.mask),
            )
        _list_store(items, (self.head + n - 1) & self.mask, NULL)
        self.count -= 1
        Py_DECREF(<object>removed)
        return 0

    cdef int clear_to(self, list out) except -1:
        while self.count:
            out.append(self.pop())
        return 0


# -- operations (the awaitables) ----------------------------------------

cdef class InMemoryChannel
cdef class ForwardingChannel

cdef enum:
    OP_SEND = 0
    OP_RECEIVE = 1
    OP_RECEIVE_MANY = 2
    OP_ANEXT = 3
    OP_ROOM = 4  # wait until a send would not wait, sending nothing (a broadcast's)

cdef enum:
    ST_INIT = 0
    ST_RUNNING = 1
    ST_WAITING = 2
    ST_DELEGATING = 3
    ST_DONE = 4

cdef enum:
    WOKEN_NOT = 0
    WOKEN_PROMISED = 1
    WOKEN_CLOSED = 2


@cython.final
@cython.freelist(64)
cdef class _Op:
    """One ``send``/``receive``/``receive_many``/``__anext__`` in progress.

    Awaitable once. Runs nothing until first stepped, like a coroutine, so
    creating one and never awaiting it changes nothing.
    """

    cdef InMemoryChannel channel
    cdef ForwardingChannel forwarder   # set for a send through a forwarder
    cdef object message                # to send
    cdef object future                 # waited on while blocked
    cdef object delegate               # what is awaited: an observer's awaitable, or the rest
    cdef object _delegate_yield        # what the delegate yielded last
    # While an observer's awaitable is the delegate (``observers`` is set):
    # the observers of the notification, the one awaited and the index of the
    # next, the message they are told about, and the op's result once done.
    cdef tuple observers
    cdef object observer
    cdef Py_ssize_t next_observer
    cdef object notified
    cdef object result
    cdef Py_ssize_t max_items
    cdef int kind
    cdef int state
    cdef int woken
    # The section of the channel's state this step is in (see _enter):
    # 0 none, else what _enter returned, for sectioned.
    cdef int section
    cdef InMemoryChannel sectioned

    def __dealloc__(self):
        if self.state == ST_WAITING and self.channel is not None:
            self._abandon()  # woken, then dropped before it ran: hand its promise on
        spark_forget_result()

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        result = self._resume(None)
        if result is _SUSPEND:
            return self.future if self.delegate is None else self._delegate_yield
        raise StopIteration(result)

    def send(self, value):
        """Advance the operation (the coroutine protocol)."""
        result = self._resume(value)
        if result is _SUSPEND:
            return self.future if self.delegate is None else self._delegate_yield
        raise StopIteration(result)

    def throw(self, typ, val=None, tb=None):
        """Raise an exception inside the operation, e.g. cancellation."""
        if val is None:
            val = typ if isinstance(typ, BaseException) else typ()
        if tb is not None:
            val = val.with_traceback(tb)
        if self.state == ST_DELEGATING:
            if self.observers is not None:
                return self._throw_into_observer(val)
            try:
                yielded = self.delegate.throw(val)
            except BaseException:
                self._release()
                raise
            self._delegate_yield = yielded
            return yielded
        if self.state == ST_WAITING:
            self._abandon()
        self._release()
        raise val

    def close(self):
        """Abandon the operation; a blocked one leaves the channel as if never started."""
        if self.state == ST_DELEGATING:
            close = getattr(self.delegate, "close", None)
            if close is not None:
                close()
        elif self.state == ST_WAITING:
            self._abandon()
        self._release()

    cdef object _resume(self, object value):
        cdef int state = self.state
        if state == ST_INIT or state == ST_WAITING:
            _op_enter(self)  # left before the observers run, at the latest on return
            try:
                if state == ST_WAITING:
                    return self._wake_up()
                self.state = ST_RUNNING
                if self.kind == OP_SEND:
                    return self._start_send()
                if self.kind == OP_ROOM:
                    return self._start_room()
                return self._start_receive()
            finally:
                _op_leave(self)
        if state == ST_DELEGATING:
            return self._step_delegate(value)
        raise RuntimeError("cannot reuse an already awaited channel operation")

    cdef object _step_delegate(self, object value):
        cdef PyObject* answer = NULL
        cdef PySendResult status = PyIter_Send(<PyObject*>self.delegate, <PyObject*>value, &answer)
        if status == PYGEN_NEXT:
            yielded = <object>answer  # a new reference...
            Py_DECREF(yielded)  # ...replacing the one PyIter_Send gave us
            self._delegate_yield = yielded
            return _SUSPEND
        if self.observers is None:  # the delegate is the rest of the operation
            if status == PYGEN_ERROR:
                self._release()
                raise_current()
            returned = <object>answer
            Py_DECREF(returned)
            self._release()
            return returned
        if status == PYGEN_RETURN:
            Py_DECREF(<object>answer)  # what an observer's awaitable returns is ignored
        else:
            self._observer_raised()
        try:
            return self._notify_rest()
        except BaseException:  # a later observer raised one, sync: the op ends here
            self._release()
            raise

    cdef int _observer_raised(self) except -1:
        """The awaited observer raised (it is the current exception): log an Exception, else propagate."""
        try:
            raise_current()
        except Exception:
            report_observer_error(self.channel, _SEND if self.kind == OP_SEND else _RECEIVE, self.observer)
        except BaseException:
            self._release()
            raise
        return 0

    cdef object _notify_rest(self):
        """Call the observers after the one just awaited; await the next awaitable, or finish."""
        phase = _SEND if self.kind == OP_SEND else _RECEIVE
        hit = _call_observers(self.observers, self.next_observer, self.channel, self.notified, phase)
        if hit is None:
            result = self.result
            self._release()
            return result
        return self._await_observer(hit)

    cdef object _await_observer(self, tuple hit):
        """Await the awaitable an observer returned, as the op's own next step."""
        awaitable, observer, following = hit
        self.observer = observer
        self.next_observer = following
        try:
            self.delegate = _awaiting(awaitable)
        except Exception:  # not really awaitable: the await would have raised
            report_observer_error(self.channel, _SEND if self.kind == OP_SEND else _RECEIVE, observer)
            return self._notify_rest()
        self.state = ST_DELEGATING
        return self._step_delegate(None)

    cdef object _throw_into_observer(self, object error):
        """Throw ``error`` (a cancellation, say) into the awaited observer; what ``throw`` returns."""
        throw = getattr(self.delegate, "throw", None)
        try:
            if throw is None:
                raise error
            yielded = throw(error)
        except StopIteration:
            pass  # the observer returned
        except Exception:
            report_observer_error(self.channel, _SEND if self.kind == OP_SEND else _RECEIVE, self.observer)
        except BaseException:
            self._release()
            raise
        else:
            self._delegate_yield = yielded
            return yielded
        try:
            result = self._notify_rest()
        except BaseException:  # a later observer raised one, sync: the op ends here
            self._release()
            raise
        if result is _SUSPEND:
            return self._delegate_yield
        raise StopIteration(result)

    cdef object _start_send(self):
        cdef InMemoryChannel channel = self.channel
        if self.forwarder is not None:
            try:
                self.message = self.forwarder._enrich(self.message)
            except BaseException:
                self._release()
                raise
        elif not _is_message(self.message):
            error = not_a_message(self.message)  # before the op lets go of the message
            self._release()
            raise error
        if channel._closed:
            self._release()
            raise channel._closed_error()
        if channel._is_full():
            return self._suspend(channel._senders)
        channel._enqueue(self.message)
        return self._observe(None)

    cdef object _start_room(self):
        cdef InMemoryChannel channel = self.channel
        if channel._closed:
            self._release()
            raise channel._closed_error()
        if channel._is_full():
            return self._suspend(channel._senders)
        self._release()
        return None

    cdef object _start_receive(self):
        cdef InMemoryChannel channel = self.channel
        cdef _Ring buffer = channel._buffer
        if self.kind == OP_RECEIVE_MANY:
            self.max_items = check_max_items(self.message)
            self.message = None
        if buffer.count > channel._receivers_woken:
            message = channel._dequeue()
        else:
            if channel._closed:
                self._release()
                if self.kind == OP_ANEXT:
                    raise StopAsyncIteration
                raise channel._closed_error()
            return self._suspend(channel._receivers)
        return self._received(message)

    cdef object _received(self, object message):
        cdef InMemoryChannel channel = self.channel
        if self.kind == OP_RECEIVE_MANY:
            message = channel._dequeue_more([message], self.max_items)
        if channel._senders.count:
            channel._wake_senders()
        return self._observe(message)

    cdef object _suspend(self, _Ring waiters):
        cdef InMemoryChannel channel = self.channel
        loop = _get_running_loop()
        if loop is not channel._loop:
            channel._loop = loop
            channel._loop_thread = spark_thread_id()
            channel._create_future = loop.create_future
        future = channel._create_future()
        future._asyncio_future_blocking = True
        self.future = future
        self.woken = WOKEN_NOT
        waiters.push(self)
        self.state = ST_WAITING
        return _SUSPEND

    cdef object _wake_up(self):
        cdef InMemoryChannel channel = self.channel
        cdef int woken = self.woken
        if woken == WOKEN_NOT:
            raise RuntimeError("a channel operation was resumed before it was woken")
        self.future = None
        self.state = ST_RUNNING
        if self.kind == OP_SEND or self.kind == OP_ROOM:
            if woken == WOKEN_PROMISED:
                channel._senders_woken -= 1
            if woken == WOKEN_CLOSED or channel._closed:
                self._release()
                raise channel._closed_error()
            if self.kind == OP_ROOM:
                self._release()
                return None
            channel._enqueue(self.message)
            return self._observe(None)
        if woken == WOKEN_CLOSED:
            self._release()
            if self.kind == OP_ANEXT:
                raise StopAsyncIteration
            raise channel._closed_error()
        channel._receivers_woken -= 1  # the promised message is at the front
        return self._received(channel._buffer.pop())

    cdef int _abandon(self) except -1:
        """Leave the channel as if this blocked op had never started."""
        cdef InMemoryChannel channel = self.channel
        cdef bint sending = self.kind == OP_SEND or self.kind == OP_ROOM
        cdef int how = _enter(channel)
        try:
            if self.woken == WOKEN_PROMISED:
                if sending:
                    channel._senders_woken -= 1
                    channel._wake_senders()
                else:
                    channel._receivers_woken -= 1  # the message is queued again...
                    channel._note_size()
                    channel._wake_receivers()  # ...for the next blocked receiver
            elif self.woken == WOKEN_NOT:
                (channel._senders if sending else channel._receivers).remove(self)
        finally:
            _leave(channel, how)
        return 0

    cdef inline object _observe(self, object result):
        """Run the observers; the op's result when done, or _SUSPEND to await one."""
        cdef ForwardingChannel forwarder = self.forwarder
        if self.section:
            _op_leave(self)  # the state is done with: observers run outside the section
        if not self.channel._observers and (forwarder is None or not forwarder._observers):
            self.state = ST_DONE
            self.channel = None
            self.message = None
            if forwarder is not None:
                self.forwarder = None
            return result
        if forwarder is None and self.kind != OP_RECEIVE_MANY:
            return self._observe_one(result)
        return self._observe_slowly(result)

    cdef object _observe_one(self, object result):
        """The common case, kept lean: one message, the channel's observers."""
        cdef InMemoryChannel channel = self.channel
        if self.section:
            _op_leave(self)
        cdef bint sending = self.kind == OP_SEND
        cdef tuple observers = channel._observers
        message = self.message if sending else result
        phase = _SEND if sending else _RECEIVE
        if PyTuple_GET_SIZE(observers) == 1:  # the usual single observer, called in place
            awaitable = _call_observer(PyTuple_GET_ITEM(observers, 0), channel, message, phase)
            hit = None if awaitable is None else (awaitable, observers[0], 1)
        else:
            hit = _call_observers(observers, 0, channel, message, phase)
        if hit is not None:
            return self._await_observers(observers, hit, message, result)
        self.state = ST_DONE  # nothing else was set: no forwarder, future or delegate
        self.channel = None
        self.message = None
        return result

    cdef object _await_observers(self, tuple observers, tuple hit, object message, object result):
        """Finish ``_observe_one`` after one of ``observers`` returned an awaitable.

        The op itself awaits it, then calls the observers after it, in order,
        awaiting each awaitable they return: no coroutine is built for that.
        """
        self.observers = observers
        self.notified = message
        self.result = result
        return self._await_observer(hit)

    cdef object _observe_slowly(self, object result):
        """A forwarder's observers too (after the channel's), or a batch of messages."""
        cdef InMemoryChannel channel = self.channel
        cdef ForwardingChannel forwarder = self.forwarder
        phase = _SEND if self.kind == OP_SEND else _RECEIVE
        channels = [channel] if forwarder is None else [channel, forwarder]
        messages = result if self.kind == OP_RECEIVE_MANY else [self.message if self.kind == OP_SEND else result]
        delegate = _notify_all(channels, messages, phase, result)
        if delegate is None:
            self._release()
            return result
        return self._delegate_to(delegate)

    cdef object _delegate_to(self, object delegate):
        self.delegate = delegate
        self.state = ST_DELEGATING
        return self._resume(None)

    cdef inline void _release(self):
        self.state = ST_DONE
        self.channel = None
        self.forwarder = None
        self.message = None
        self.future = None
        self.delegate = None
        self._delegate_yield = None
        if self.observers is not None:
            self.observers = None
            self.observer = None
            self.notified = None
            self.result = None


cdef int _op_step(PyObject* raw, PyObject* arg, PyObject** result) except -1:
    cdef int done = _op_first_step(<_Op>raw, result) if (<_Op>raw).state == ST_INIT else NOT_DONE
    if done != NOT_DONE:
        return done
    return _op_answer(<_Op>raw, (<_Op>raw)._resume(<object>arg), result)


cdef enum:
    NOT_DONE = 2  # _op_first_step's answer when the general path must take over


cdef inline int _op_first_step(_Op op, PyObject** result) except -1:
    """The common first steps in a few lines (``op`` is borrowed: no reference is counted).

    A receive with a queued message and no blocked sender; a send, not
    through a forwarder, with room. Returns what ``_op_answer`` does, or
    NOT_DONE for the general path.
    """
    cdef int kind = op.kind
    if op.channel._shared or spark_thread_id() != op.channel._owner:
        return NOT_DONE  # used by threads (or another thread's loop): the general path locks
    if kind == OP_RECEIVE or kind == OP_ANEXT:
        # Nothing below calls Python before the message is taken: no other
        # thread runs in between (see spark/nodes/_threads.py).
        if op.channel._buffer.count <= op.channel._receivers_woken or op.channel._senders.count:
            return NOT_DONE
        op.channel._note_size()
        if not op.channel._observers and (op.forwarder is None or not op.forwarder._observers):
            result[0] = op.channel._buffer.take()
            op.state = ST_DONE
            op.channel = None
            if op.forwarder is not None:
                op.forwarder = None
            return 0
        op.state = ST_RUNNING
        return _op_answer(op, op._observe(op.channel._buffer.pop()), result)
    if kind != OP_SEND or op.forwarder is not None:
        return NOT_DONE
    if (
        not _is_message(op.message)
        or op.channel._closed
        or op.channel._is_full()
    ):
        return NOT_DONE  # the send raises, or waits
    op.channel._busy += 1  # waking a receiver calls Python: an owner's section
    try:
        op.channel._enqueue(op.message)
    finally:
        op.channel._busy -= 1
    if op.channel._observers:
        op.state = ST_RUNNING
        return _op_answer(op, op._observe_one(None), result)
    op.state = ST_DONE
    op.channel = None
    op.message = None
    Py_INCREF(None)
    result[0] = <PyObject*>None
    return 0


cdef inline int _op_answer(_Op op, object value, PyObject** result):
    """Hand ``value`` (the op's result, or _SUSPEND) to the caller of a step: 0 done, 1 suspended."""
    if value is _SUSPEND:
        value = op.future if op.delegate is None else op._delegate_yield
        Py_INCREF(value)
        result[0] = <PyObject*>value
        return 1
    Py_INCREF(value)
    result[0] = <PyObject*>value
    return 0


if spark_install_am_send(<PyTypeObject*>_Op, _op_step) != 0:
    raise ImportError("spark.nodes._channels_c: _Op has no async slots")


cdef inline bint _dropped(PyObject* op, PyObject* spare, Py_ssize_t held) noexcept:
    """Whether a blocked op is referred to only by the channel: its waiter was
    dropped without being closed (a coroutine dropped that way is closed, and
    withdraws, in the pure build). ``held`` counts the references the caller
    knows of; the channel's spare op holds one more."""
    return _Py_REFCNT(op) <= held + (op == spare)


cdef bint _wake(_Op op, int reason) except -1:
    """Wake a blocked op just taken from its waiter queue.

    False, promising nothing, if its task was cancelled meanwhile (it will
    abandon the op), or if nobody but the queue held the op (it is dropped).
    """
    cdef InMemoryChannel channel = op.channel
    if channel is not None and _dropped(<PyObject*>op, <PyObject*>channel._spare_op, 1):
        op._release()
        return False
    future = op.future
    if (
        channel is not None
        and channel._shared
        and spark_thread_id() != channel._loop_thread
        and type(future) is not _ThreadWaiter
    ):
        # A task's future, from another thread: the promise counts now, the
        # loop resolves the future (see _deliver_wakes).
        if future.done():  # cancelled: its task will abandon the op
            return False
        op.woken = reason
        channel._wakes.append((op, future))
        return True
    try:
        if type(future) is _Future:
            _future_set_result(future, None)  # no bound method built per wake-up
        else:
            future.set_result(None)
    except _InvalidStateError:  # cancelled: its task will abandon the op
        return False
    op.woken = reason
    return True


cdef int _wait_in_thread(_Op op, object deadline) except -1:
    """Block a thread on its parked op; if that raises (KeyboardInterrupt), withdraw the op."""
    try:
        op.future.wait(deadline)
    except BaseException:
        op._abandon()  # hands a promise it got on
        op._release()
        raise
    return 0


# -- sections (see spark/nodes/_threads.py) -------------------------------

cdef enum:
    SECTION_COUNTED = 1  # the owner's, without the lock, counted in _busy
    SECTION_LOCKED = 2


cdef inline int _enter(InMemoryChannel channel) except -1:
    """Begin a section on ``channel``'s state; what to hand to ``_leave``.

    The owner's sections are counted and take no lock while the channel is
    not shared; a section of another thread shares it first. Once shared,
    sections hold the lock, except one nested in a counted section of the
    owner (which goes on as it began).
    """
    if not channel._shared:
        if spark_thread_id() == channel._owner:
            channel._busy += 1
            return SECTION_COUNTED
        channel._share()
    elif channel._busy and spark_thread_id() == channel._owner:
        channel._busy += 1
        return SECTION_COUNTED
    _lock(channel)
    return SECTION_LOCKED


cdef inline int _lock(InMemoryChannel channel) except -1:
    """Take the channel's lock (again, if this thread holds it already)."""
    cdef unsigned long me = spark_thread_id()
    if channel._mutex_owner == me:  # (read under the GIL, as every write of it)
        channel._mutex_depth += 1
        return 0
    if not PyThread_acquire_lock(channel._mutex, NOWAIT_LOCK):
        with nogil:  # its holder may be waiting for the GIL
            PyThread_acquire_lock(channel._mutex, WAIT_LOCK)
    channel._mutex_owner = me
    channel._mutex_depth = 1
    return 0


cdef inline void _release_lock(InMemoryChannel channel) noexcept:
    channel._mutex_depth -= 1
    if channel._mutex_depth == 0:
        channel._mutex_owner = 0
        PyThread_release_lock(channel._mutex)


cdef inline int _leave(InMemoryChannel channel, int how) except -1:
    """End a section; ask the loop to resolve the wake-ups this thread recorded."""
    if how == SECTION_COUNTED:
        channel._busy -= 1
        return 0
    return _unlock(channel)


cdef int _unlock(InMemoryChannel channel) except -1:
    """End a section that holds the lock (see _leave)."""
    cdef bint post = False, dropped = False
    loop = channel._loop
    if PyList_GET_SIZE(channel._wakes):
        if not channel._posted:
            channel._posted = True
            post = loop is not None  # else its loop was closed (see _drop_wakes)
            dropped = not post
        elif loop is not None and loop.is_closed():  # closed before it delivered them
            dropped = True
    _release_lock(channel)
    if post:
        try:
            loop.call_soon_threadsafe(channel._deliver_wakes)
        except RuntimeError:  # the loop is closed: its tasks will never run again
            dropped = True
    if dropped:
        channel._drop_wakes()
    return 0


cdef inline int _op_enter(_Op op) except -1:
    if op.channel is not None:
        op.section = _enter(op.channel)
        op.sectioned = op.channel
    return 0


cdef inline int _op_leave(_Op op) except -1:
    cdef int how = op.section
    if how:
        channel = op.sectioned
        op.section = 0
        op.sectioned = None
        _leave(channel, how)
    return 0


cdef inline _Op _new_op(InMemoryChannel channel, int kind):
    """An op for ``channel``: its spare one when nobody else holds it, else a new one."""
    # The last result was delivered: stop holding it (see _am_send.h). First,
    # since releasing it can run code (a finalizer) that makes ops too.
    spark_forget_result()
    cdef PyObject* spare = <PyObject*>channel._spare_op  # borrowed: counts no reference
    cdef _Op op
    if spare == <PyObject*>None or _Py_REFCNT(spare) != 1:
        op = _Op.__new__(_Op)
        channel._spare_op = op
    else:
        op = <_Op>spare
        if op.state != ST_DONE:  # dropped unawaited, woken then dropped, or ended half-way
            if op.state == ST_WAITING:
                op._abandon()
            op._release()
        op.state = ST_INIT
    op.channel = channel
    op.kind = kind
    return op


cdef inline object _call_observers(tuple observers, Py_ssize_t start, object channel, object message, str phase):
    """Call observers[start:]; stop at the first that returns an awaitable: (awaitable, observer, next index)."""
    cdef Py_ssize_t i
    for i in range(start, PyTuple_GET_SIZE(observers)):
        awaitable = _call_observer(PyTuple_GET_ITEM(observers, i), channel, message, phase)
        if awaitable is not None:
            return (awaitable, observers[i], i + 1)
    return None


cdef inline object _call_observer(PyObject* observer, object channel, object message, str phase):
    """Call one observer (borrowed: its tuple is held); the awaitable it returned, or None.

    An ``Exception`` it raises is logged; anything else propagates.
    """
    cdef PyObject* answer = spark_call_observer(observer, <PyObject*>message, <PyObject*>channel, <PyObject*>phase)
    if answer == <PyObject*>None:
        Py_DECREF(None)  # the reference the call returned
        return None
    if answer == NULL:
        _observer_failed(channel, phase, <object>observer)
        return None
    returned = <object>answer  # a new reference...
    Py_DECREF(returned)  # ...replacing the one the call returned
    return returned if _isawaitable(returned) else None


cdef int _observer_failed(object channel, str phase, object observer) except -1:
    """The observer's exception is set: log it if it is an Exception, else propagate it."""
    try:
        raise_current()
    except Exception:
        report_observer_error(channel, phase, observer)
    return 0


cdef object _notify_all(list channels, list messages, str phase, object result):
    """Notify the observers of each of ``channels`` of every message, in order.

    A channel's observers are read when its turn comes, as the pure build
    reads them. Returns None when all were synchronous; otherwise a
    coroutine that awaits the first awaitable and finishes the rest,
    returning ``result``.
    """
    cdef Py_ssize_t m, t
    cdef tuple observers
    for m in range(len(messages)):
        message = messages[m]
        for t in range(len(channels)):
            channel = channels[t]
            observers = (<_ObservedChannel>channel)._observers
            if not observers:
                continue
            hit = _call_observers(observers, 0, channel, message, phase)
            if hit is not None:
                awaitable, observer, following = hit
                plan = [(observers, following, channel, message)]
                plan += [(None, 0, later, message) for later in channels[t + 1:]]
                for later in messages[m + 1:]:
                    plan += [(None, 0, chan, later) for chan in channels]
                return _finish_notify(awaitable, observer, channel, phase, plan, result)
    return None


cdef object _awaiting(object awaitable):
    """What ``await awaitable`` drives: a coroutine itself, else what ``__await__`` returns."""
    if type(awaitable) is _CoroutineType or type(awaitable) is _GeneratorType:
        return awaitable
    return awaitable.__await__()


async def _finish_notify(awaitable, observer, channel, str phase, list plan, result):
    try:
        await awaitable
    except Exception:
        report_observer_error(channel, phase, observer)
    for observers, start, chan, message in plan:
        if observers is None:  # not started yet: the channel's observers as they are now
            observers = chan.observers
        if start < len(observers):
            await _notify_async(observers, start, chan, message, phase)
    return result


async def _notify_async(tuple observers, Py_ssize_t start, channel, message, str phase):
    cdef Py_ssize_t i
    for i in range(start, len(observers)):
        observer = observers[i]
        try:
            returned = observer(message, channel, phase)
            if returned is not None and _isawaitable(returned):
                await returned
        except Exception:
            report_observer_error(channel, phase, observer)


cdef int _notify_nowait(tuple observers, object channel, object message, str phase, object loop=None) except -1:
    """Call every observer; schedule the awaitables they return on the running loop (or ``loop``)."""
    cdef Py_ssize_t start = 0
    while True:
        hit = _call_observers(observers, start, channel, message, phase)
        if hit is None:
            return 0
        awaitable, observer, start = hit
        schedule_observer_awaitable(channel, phase, observer, awaitable, loop)


# -- channels ---------------------------------------------------------------

cdef class _ObservedChannel:
    """Name, observers and closed flag: what every compiled channel has.

    Instances take attributes of their own, and their methods can be
    replaced on the instance (``mock.patch.object``): a channel with one of
    its class's attributes hidden that way is ``_patched``, and every
    shortcut (a forwarder's, a node loop's) then goes through its attributes.
    """

    cdef str _name
    cdef tuple _observers
    cdef bint _closed
    cdef readonly bint _patched
    cdef dict __dict__
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        spark_drop_empty_dict(self)

    def __class_getitem__(cls, item):
        return GenericAlias(cls, item)

    @property
    def __orig_class__(self):
        # InMemoryChannel[Order]() would store the alias in the instance's
        # dict, and a channel with a dict is slower to call methods on; a
        # generic alias skips that when it cannot be set.
        raise AttributeError("__orig_class__")

    def __setattr__(self, name, value):
        if getattr(value, "__self__", None) is self and _is_own_method(self, name, value):
            # Putting back the class's own method (as pytest's monkeypatch
            # undoes a patch): the instance has nothing of its own there.
            if name in (_copying.instance_attributes(self) or ()):
                self.__delattr__(name)
            return
        PyObject_GenericSetAttr(self, name, value)
        if not self._patched and hasattr(type(self), name):
            self._patched = True

    def __delattr__(self, name):
        _generic_delattr(self, name, NULL)
        kind = type(self)
        attributes = _copying.instance_attributes(self) or ()
        self._patched = any([hasattr(kind, attribute) for attribute in attributes])

    @property
    def name(self):
        """The channel's name, used in logs and by observers."""
        return self._name

    @property
    def observers(self):
        """The registered observers, in the order they are called."""
        return self._observers

    def add_observer(self, observer):
        """Call ``observer`` for every later send and receive, after those already registered."""
        check_observer(observer)
        self._observers = self._observers + (observer,)

    def remove_observer(self, observer):
        """Stop calling ``observer``; raises ``ValueError`` if it is not registered."""
        observers = list(self._observers)
        try:
            observers.remove(observer)
        except ValueError:
            raise ValueError(f"{observer!r} is not an observer of channel {self._name!r}") from None
        self._observers = tuple(observers)

    @property
    def closed(self):
        """Whether ``close()`` has been called."""
        return self._closed

    async def send_many(self, messages):
        """Send each message in order, waiting for room as needed.

        If the channel closes part-way, the messages before the failing one
        stay sent and ``ChannelClosed`` is raised.
        """
        for message in messages:
            await self.send(message)

    def __aiter__(self):
        return self

    def __repr__(self):
        return f"<{type(self).__name__} {self._name!r} {'closed' if self._closed else 'open'}>"


cdef class InMemoryChannel(_ObservedChannel):
    """A channel inside one event loop, unbounded or bounded by ``maxsize``.

    Guarantees:

    * Messages leave in the order they were sent. Blocked senders are
      served in the order they blocked, and so are blocked receivers; a
      message promised to a blocked receiver takes no room.
    * A cancelled ``send`` has not enqueued its message; a cancelled
      ``receive`` has not taken one (its promise goes to the next blocked
      receiver). Nothing is lost, duplicated or reordered.
    * ``close()`` wakes every blocked sender with ``ChannelClosed`` (their
      messages are not enqueued); receivers drain what is buffered, then get
      ``ChannelClosed``.
    * Observers run after each enqueue (``"send"``) and each dequeue
      (``"receive"``), in registration order; their errors are logged on the
      ``spark.channels`` logger and never reach the caller.
    """

    cdef _Ring _buffer
    cdef _Ring _receivers
    cdef _Ring _senders
    cdef Py_ssize_t _maxsize
    cdef Py_ssize_t _receivers_woken
    cdef Py_ssize_t _senders_woken
    cdef Py_ssize_t _sent
    cdef Py_ssize_t _peak_size
    # The last op handed out; reused when only this reference is left, which
    # means it finished (or was dropped unawaited): no allocation per await.
    cdef _Op _spare_op
    # The loop of the last blocking op, its thread and its create_future,
    # looked up once.
    cdef object _loop
    cdef unsigned long _loop_thread
    cdef object _create_future
    # Threads (see spark/nodes/_threads.py): the owner, its sections under
    # way, whether another thread has used the channel (then sections hold
    # its lock, re-entrant), and the futures of tasks woken by other threads, for the
    # loop to resolve (``_posted`` once it was asked to).
    cdef unsigned long _owner
    cdef Py_ssize_t _busy
    cdef bint _shared
    cdef PyThread_type_lock _mutex
    cdef unsigned long _mutex_owner
    cdef int _mutex_depth
    cdef list _wakes
    cdef bint _posted

    def __cinit__(self, *args, **kwargs):
        self._owner = spark_thread_id()
        self._wakes = []
        loop = _get_running_loop_or_none()
        if loop is not None:  # the loop whose tasks will wait here, most likely
            self._loop = loop
            self._loop_thread = self._owner
            self._create_future = loop.create_future

    def __init__(self, name=None, maxsize=0, observers=None):
        self._name = check_name(name)
        self._observers = tuple(check_observers(observers))
        self._maxsize = check_maxsize(maxsize)
        # Bounded channels get their whole ring at once (up to a sane size).
        self._buffer = _Ring(min(self._maxsize, 65536))
        self._receivers = _Ring(0)
        self._senders = _Ring(0)

    # -- threads --

    cdef int _share(self) except -1:
        """Let threads other than the owner use the channel (once; see _threads.py)."""
        cdef PyThread_type_lock mutex
        with _SHARING:
            if self._mutex != NULL:
                return 0
            mutex = PyThread_allocate_lock()
            if mutex == NULL:
                raise MemoryError("cannot allocate a lock for a channel used by threads")
            self._mutex = mutex
            _lock(self)  # sections that see _shared wait until the owner's are done
            self._shared = True
        try:
            while self._busy:
                _sleep(0)  # the owner's sections are short and never block
        finally:
            _release_lock(self)
        return 0

    def __dealloc__(self):
        if self._mutex != NULL:
            PyThread_free_lock(self._mutex)

    def _deliver_wakes(self):
        """On the loop: resolve the futures of tasks woken by other threads."""
        cdef int how = _enter(self)
        try:
            wakes = self._wakes
            self._wakes = []
            self._posted = False
            for op, future in wakes:
                if not future.done():  # done: cancelled, its op abandoned; or a select's, won elsewhere
                    future.set_result(None)
        finally:
            _leave(self, how)

    cdef int _drop_wakes(self) except -1:
        """The loop of the recorded wake-ups is closed: hand on what was promised to its tasks."""
        cdef _Op op
        cdef int how = _enter(self)
        try:
            self._loop = None  # it will never run again: nothing to post to
            self._loop_thread = 0
            self._create_future = None
            self._posted = True  # (sections nested below leave the recorded wake-ups to us)
            while self._wakes:  # a promise handed on may go to another of its tasks: again
                wakes = self._wakes
                self._wakes = []
                for op, future in wakes:
                    if op.state == ST_WAITING and op.future is future:  # still parked, promised
                        op._abandon()
                        op._release()
            self._posted = False
        finally:
            _leave(self, how)
        return 0

    cdef object _take_free(self):
        """The oldest queued message, taken and its room promised on; None if none is queued.

        (Inside a section.)
        """
        if self._buffer.count <= self._receivers_woken:
            return None
        message = self._dequeue()
        if self._senders.count:
            self._wake_senders()
        return message

    cdef _Op _park_thread(self, _Ring waiters, int kind):
        """A blocked thread's op, queued last in ``waiters`` (inside a section)."""
        cdef _Op op = _Op.__new__(_Op)
        op.channel = self
        op.kind = kind
        op.future = _ThreadWaiter()
        op.woken = WOKEN_NOT
        op.state = ST_WAITING
        waiters.push(op)
        return op

    cdef int _end_thread_wait(self, _Op op, object timeout) except -1:
        """A blocked thread's turn, inside a section: its promise taken, or TimeoutError/ChannelClosed."""
        cdef int woken = op.woken
        cdef bint sending = op.kind == OP_SEND
        if woken == WOKEN_NOT:
            (self._senders if sending else self._receivers).remove(op)
        op._release()
        if woken == WOKEN_NOT:
            if sending:
                raise TimeoutError(f"channel {self._name!r} stayed full for {timeout} s; the message was not sent")
            raise TimeoutError(f"channel {self._name!r} stayed empty for {timeout} s; nothing was received")
        if sending:
            if woken == WOKEN_PROMISED:
                self._senders_woken -= 1
            if woken == WOKEN_CLOSED or self._closed:
                raise self._closed_error()
        else:
            if woken == WOKEN_CLOSED:
                raise self._closed_error()
            self._receivers_woken -= 1  # the promised message is at the front
        return 0

    def blocking_send(self, message, timeout=None):
        """Enqueue ``message`` from a thread that runs no event loop, blocking while full.

        Raises ``ChannelClosed`` if the channel is closed before the message
        is enqueued, and ``TimeoutError`` if no room came within ``timeout``
        seconds (the message is then not enqueued). Raises ``RuntimeError``
        at once if this thread runs an event loop: use ``await send()``.
        """
        cdef _Op op = None
        cdef int how
        if _get_running_loop_or_none() is not None:
            raise _blocks_a_loop("blocking_send", "send")
        deadline = None if timeout is None else _check_timeout(timeout)
        if not _is_message(message):
            raise not_a_message(message)
        how = _enter(self)
        try:
            if self._closed:
                raise self._closed_error()
            if self._is_full():
                op = self._park_thread(self._senders, OP_SEND)
            else:
                self._enqueue(message)
        finally:
            _leave(self, how)
        if op is not None:
            _wait_in_thread(op, deadline)
            how = _enter(self)
            try:
                self._end_thread_wait(op, timeout)
                self._enqueue(message)
            finally:
                _leave(self, how)
        if self._observers:
            _notify_nowait(self._observers, self, message, _SEND, self._loop)

    def blocking_receive(self, timeout=None):
        """Return the next message to a thread that runs no event loop, blocking while empty.

        Raises ``ChannelClosed`` once the channel is closed and drained, and
        ``TimeoutError`` if no message came within ``timeout`` seconds (none
        was taken). Raises ``RuntimeError`` at once if this thread runs an
        event loop: use ``await receive()``.
        """
        cdef _Op op = None
        cdef int how
        if _get_running_loop_or_none() is not None:
            raise _blocks_a_loop("blocking_receive", "receive")
        deadline = None if timeout is None else _check_timeout(timeout)
        message = None
        how = _enter(self)
        try:
            message = self._take_free()
            if message is None:
                if self._closed:
                    raise self._closed_error()
                op = self._park_thread(self._receivers, OP_RECEIVE)
        finally:
            _leave(self, how)
        if op is not None:
            _wait_in_thread(op, deadline)
            how = _enter(self)
            try:
                self._end_thread_wait(op, timeout)
                message = self._buffer.pop()
                if self._senders.count:
                    self._wake_senders()
            finally:
                _leave(self, how)
        if self._observers:
            _notify_nowait(self._observers, self, message, _RECEIVE, self._loop)
        return message

    # -- internals (the pure build's steps) --

    cdef inline int _enqueue(self, object message) except -1:
        self._buffer.push(message)
        self._sent += 1
        if self._receivers.count:
            self._wake_receivers()
        return 0

    cdef inline object _dequeue(self):
        """Take the oldest message; more must be buffered than promised."""
        self._note_size()
        return self._buffer.pop()

    cdef inline void _note_size(self):
        cdef Py_ssize_t size = self._buffer.count - self._receivers_woken
        if size > self._peak_size:
            self._peak_size = size

    cdef inline Py_ssize_t _room_taken(self) noexcept:
        """Queued messages plus the slots promised to woken senders."""
        return self._buffer.count - self._receivers_woken + self._senders_woken

    cdef inline bint _is_full(self) noexcept:
        """Whether a send must wait for room (``full()``)."""
        return self._maxsize and self._room_taken() >= self._maxsize

    cdef list _dequeue_more(self, list batch, Py_ssize_t max_items):
        cdef _Ring buffer = self._buffer
        cdef Py_ssize_t n = min(max_items - len(batch), buffer.count - self._receivers_woken)
        if n > 0:
            self._note_size()
        for _ in range(n):
            batch.append(buffer.pop())
        return batch

    cdef int _wake_receivers(self) except -1:
        """Promise each queued message to the oldest blocked receive."""
        cdef _Ring receivers = self._receivers
        cdef bint promised = False
        while receivers.count and self._buffer.count > self._receivers_woken:
            if _wake(<_Op>receivers.pop(), WOKEN_PROMISED):
                self._receivers_woken += 1
                promised = True
        if promised and self._senders.count:  # a promised message no longer takes room
            self._wake_senders()
        return 0

    cdef int _wake_senders(self) except -1:
        cdef _Ring senders = self._senders
        while senders.count and self._room_taken() < self._maxsize:
            if _wake(<_Op>senders.pop(), WOKEN_PROMISED):
                self._senders_woken += 1
        return 0

    cdef object _closed_error(self):
        return ChannelClosed(f"channel {self._name!r} is closed")

    cdef int _send_nowait(self, object message) except -1:
        if not _is_message(message):
            raise not_a_message(message)
        cdef int how = _enter(self)
        try:
            if self._closed:
                raise self._closed_error()
            if self._is_full():
                raise _QueueFull
            self._enqueue(message)
        finally:
            _leave(self, how)
        if self._observers:
            _notify_nowait(self._observers, self, message, _SEND, self._loop)
        return 0

    cdef object _receive_nowait(self):
        cdef int how = _enter(self)
        try:
            if self._buffer.count <= self._receivers_woken:
                if self._closed:
                    raise self._closed_error()
                raise _QueueEmpty
            message = self._dequeue()
            if self._senders.count:
                self._wake_senders()
        finally:
            _leave(self, how)
        if self._observers:
            _notify_nowait(self._observers, self, message, _RECEIVE, self._loop)
        return message

    # -- sending --

    @cython.binding(False)
    def send(self, message):
        """Enqueue ``message``, waiting while the channel is full.

        Raises ``ChannelClosed`` if the channel is closed before the message
        is enqueued. If cancelled while waiting, the message is not enqueued.
        """
        cdef _Op op = _new_op(self, OP_SEND)
        op.message = message
        return op

    @cython.binding(False)
    def send_nowait(self, message):
        """Enqueue ``message`` now, or raise ``asyncio.QueueFull``.

        Works from synchronous code; an awaitable returned by an observer is
        scheduled on the running loop (see the README).
        """
        self._send_nowait(message)

    # -- receiving --

    @cython.binding(False)
    def receive(self):
        """Return the next message, waiting while the channel is empty.

        Raises ``ChannelClosed`` once the channel is closed and drained. If
        cancelled, no message was taken.
        """
        return _new_op(self, OP_RECEIVE)

    @cython.binding(False)
    def receive_nowait(self):
        """Return the next message now, or raise ``asyncio.QueueEmpty``.

        Raises ``ChannelClosed`` instead once the channel is closed and drained.
        """
        return self._receive_nowait()

    @cython.binding(False)
    def receive_many(self, max_items):
        """Wait for at least one message, then return up to ``max_items``, in order."""
        cdef _Op op = _new_op(self, OP_RECEIVE_MANY)
        op.message = max_items  # checked when awaited, as the pure build does
        return op

    def __anext__(self):
        if self._patched or type(self) is not InMemoryChannel:
            if _receives_its_own_way(self, InMemoryChannel):
                return _anext_through_receive(self)
        return _new_op(self, OP_ANEXT)

    # -- state --

    def close(self):
        """Refuse further sends and wake every blocked task.

        Blocked senders get ``ChannelClosed``; blocked receivers get
        ``ChannelClosed`` (nothing is buffered for them). Buffered messages
        can still be received. Calling it again does nothing.
        """
        cdef list waiting = []
        cdef int how = _enter(self)
        try:
            if self._closed:
                return
            self._closed = True
            self._receivers.clear_to(waiting)
            self._senders.clear_to(waiting)
            for op in waiting:
                _wake(<_Op>op, WOKEN_CLOSED)
        finally:
            _leave(self, how)

    cdef _Op _room(self):
        """An awaitable that waits until a send would not wait, sending nothing."""
        cdef _Op op = _Op.__new__(_Op)
        op.channel = self
        op.kind = OP_ROOM
        return op

    @property
    def maxsize(self):
        """The bound on buffered messages; 0 means unbounded."""
        return self._maxsize

    def qsize(self):
        """How many messages are queued (not yet promised to a woken receiver)."""
        return self._buffer.count - self._receivers_woken

    def empty(self):
        """Whether a new ``receive`` would have to wait."""
        return self._buffer.count <= self._receivers_woken

    def full(self):
        """Whether a new ``send`` would have to wait."""
        return self._is_full()

    # -- copying --

    def __reduce__(self):
        return (_copyreg.__newobj__, (type(self),), self.__getstate__())

    def _queued(self):
        """The queued messages, oldest first (not those promised to woken receivers)."""
        cdef _Ring buffer = self._buffer
        cdef int how = _enter(self)
        try:
            return [
                <object>PyList_GET_ITEM(buffer.items, (buffer.head + i) & buffer.mask)
                for i in range(self._receivers_woken, buffer.count)
            ]
        finally:
            _leave(self, how)

    def __getstate__(self):
        """What ``copy.deepcopy`` and ``pickle`` keep (see spark/nodes/_copying.py)."""
        return _copying.in_memory_state(self, self._queued())

    def __setstate__(self, state):
        InMemoryChannel.__init__(self, state["name"], state["maxsize"], state["observers"])
        for message in state["messages"]:
            self._enqueue(message)
        self._closed = state["closed"]
        _copying.restore_attributes(self, state)

    def stats(self):
        """A snapshot of the channel's counters."""
        cdef int how = _enter(self)
        try:
            return ChannelStats(
                sent=self._sent,
                received=self._sent - self._buffer.count,
                size=self._buffer.count - self._receivers_woken,
                peak_size=max(self._peak_size, self._buffer.count - self._receivers_woken),
                maxsize=self._maxsize,
                senders_waiting=_count_pending(self, self._senders),
                receivers_waiting=_count_pending(self, self._receivers),
                closed=self._closed,
            )
        finally:
            _leave(self, how)


cdef Py_ssize_t _count_pending(InMemoryChannel channel, _Ring waiters):
    """Blocked ops still waiting: not woken, not cancelled, not dropped."""
    cdef Py_ssize_t i, pending = 0
    cdef PyObject* item
    for i in range(waiters.count):
        item = PyList_GET_ITEM(waiters.items, (waiters.head + i) & waiters.mask)
        if _dropped(item, <PyObject*>channel._spare_op, 1):
            continue
        if not (<_Op>item).future.done():
            pending += 1
    return pending


cdef class ForwardingChannel(_ObservedChannel):
    """A named entry into another channel that adds default metadata.

    Each message sent through it reaches ``downstream`` as a copy whose
    metadata is ``metadata_defaults`` overlaid with the message's own
    metadata (the message's keys win); ``ack`` and ``is_shutdown`` are kept.
    Without defaults the message passes unchanged. Receiving, ``empty()``
    and the size queries are those of ``downstream``.

    Closing a forwarder stops sends through it only; ``downstream`` stays
    open, since other senders (other edges) may share it.
    """

    cdef object _downstream
    cdef InMemoryChannel _fast_downstream   # downstream when it is exactly our InMemoryChannel
    cdef dict _defaults

    def __init__(self, downstream, name=None, metadata_defaults=None, observers=None):
        if not isinstance(downstream, BaseChannel):
            raise TypeError(
                f"downstream must be a channel (a BaseChannel), got {type(downstream).__name__}"
            )
        if metadata_defaults is not None and not isinstance(metadata_defaults, _Mapping):
            raise TypeError(
                f"metadata_defaults must be a mapping, got {type(metadata_defaults).__name__}"
            )
        self._name = check_name(f"forward:{downstream.name}" if name is None else name)
        self._observers = tuple(check_observers(observers))
        self._downstream = downstream
        if type(downstream) is InMemoryChannel:
            self._fast_downstream = <InMemoryChannel>downstream
        self._defaults = dict(metadata_defaults) if metadata_defaults else None

    cdef inline bint _goes_direct(self) noexcept:
        """Whether to use downstream's own ops: it is our InMemoryChannel, not patched."""
        return self._fast_downstream is not None and not self._fast_downstream._patched

    @property
    def downstream(self):
        """The channel that receives what is sent here."""
        return self._downstream

    @property
    def metadata_defaults(self):
        """A copy of the metadata added to each message."""
        return dict(self._defaults or {})

    cdef object _enrich(self, object message):
        if not _is_message(message):
            raise not_a_message(message)
        if self._closed:
            raise ChannelClosed(f"forwarding channel {self._name!r} is closed")
        cdef dict defaults = self._defaults
        if defaults is None:
            return message
        cdef bint exact = type(message) is ChannelMessage
        metadata = (<ChannelMessage>message).metadata if exact else message.metadata
        merged = PyDict_Copy(defaults)
        if metadata:
            if type(metadata) is dict:
                PyDict_Update(merged, metadata)
            else:
                merged.update(metadata)
        if not exact:
            return _with_metadata(message, merged)
        cdef ChannelMessage copy = ChannelMessage.__new__(ChannelMessage)
        copy.payload = (<ChannelMessage>message).payload
        copy.metadata = merged
        copy.ack = (<ChannelMessage>message).ack
        copy.is_shutdown = (<ChannelMessage>message).is_shutdown
        return copy

    def send(self, message):
        """Send the enriched message to ``downstream``, waiting while it is full."""
        cdef _Op op
        if self._goes_direct():
            op = _new_op(self._fast_downstream, OP_SEND)
            op.forwarder = self
            op.message = message
            return op
        return self._send_slowly(message)

    async def _send_slowly(self, message):
        enriched = self._enrich(message)
        await self._downstream.send(enriched)
        if self._observers:
            await _notify_async(self._observers, 0, self, enriched, "send")

    def send_nowait(self, message):
        """Send the enriched message to ``downstream`` now, or raise ``asyncio.QueueFull``."""
        enriched = self._enrich(message)
        if self._goes_direct():
            self._fast_downstream._send_nowait(enriched)
        else:
            self._downstream.send_nowait(enriched)
        if self._observers:
            _notify_nowait(self._observers, self, enriched, "send")

    def receive(self):
        """Receive from ``downstream``."""
        cdef _Op op
        if self._goes_direct():
            # downstream's own op, which also tells this forwarder's observers,
            # those it has once the message is taken
            op = _new_op(self._fast_downstream, OP_RECEIVE)
            op.forwarder = self
            return op
        return self._receive_observed()

    async def _receive_observed(self):
        message = await self._downstream.receive()
        await _notify_async(self._observers, 0, self, message, "receive")
        return message

    def receive_nowait(self):
        """Receive from ``downstream`` now, or raise ``asyncio.QueueEmpty``."""
        message = self._downstream.receive_nowait()
        if self._observers:
            _notify_nowait(self._observers, self, message, "receive")
        return message

    async def receive_many(self, max_items):
        """Receive up to ``max_items`` from ``downstream``, waiting for at least one."""
        batch = await self._downstream.receive_many(max_items)
        if self._observers:
            for message in batch:
                await _notify_async(self._observers, 0, self, message, "receive")
        return batch

    def __anext__(self):
        cdef _Op op
        if self._patched or type(self) is not ForwardingChannel:
            if _receives_its_own_way(self, ForwardingChannel):
                return _anext_through_receive(self)
        if self._goes_direct():  # as receive(), ending the iteration on close
            op = _new_op(self._fast_downstream, OP_ANEXT)
            op.forwarder = self
            return op
        return self._anext_slowly()

    async def _anext_slowly(self):
        try:
            return await self.receive()
        except ChannelClosed:
            raise StopAsyncIteration from None

    def close(self):
        """Refuse further sends through this forwarder; ``downstream`` stays open."""
        self._closed = True

    @property
    def maxsize(self):
        return self._downstream.maxsize

    def qsize(self):
        return self._downstream.qsize()

    def empty(self):
        return self._downstream.empty()

    def full(self):
        return self._downstream.full()

    def stats(self):
        """The statistics of ``downstream``."""
        return self._downstream.stats()

    # -- copying --

    def __reduce__(self):
        return (_copyreg.__newobj__, (type(self),), self.__getstate__())

    def __getstate__(self):
        """What ``copy.deepcopy`` and ``pickle`` keep (see spark/nodes/_copying.py)."""
        return _copying.forwarding_state(self, self._defaults)

    def __setstate__(self, state):
        ForwardingChannel.__init__(
            self, state["downstream"], state["name"], state["metadata_defaults"], state["observers"]
        )
        self._closed = state["closed"]
        _copying.restore_attributes(self, state)


BaseChannel.register(InMemoryChannel)
BaseChannel.register(ForwardingChannel)
_channel_base.register_flagged_type(_ObservedChannel)


cdef bint _is_own_method(object channel, str name, object value) except -1:
    """Whether ``value`` is ``channel.<name>`` as its class defines it, bound to it."""
    defined = getattr(type(channel), name, None)
    getter = getattr(type(defined), "__get__", None)
    return getter is not None and value == getter(defined, channel, type(channel))


cdef bint _receives_its_own_way(object channel, type base) except -1:
    """Whether ``channel.receive`` is not ``base``'s: replaced on the instance, or overridden."""
    own = getattr(channel, "receive")
    return getattr(own, "__self__", None) is not channel or getattr(type(channel), "receive") is not getattr(base, "receive")


async def _anext_through_receive(channel):
    """``async for`` over a channel whose ``receive`` is not the class's own."""
    try:
        return await channel.receive()
    except ChannelClosed:
        raise StopAsyncIteration from None


include "_worker.pxi"
include "_fanout.pxi"
