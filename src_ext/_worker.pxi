# The compiled default worker loop of ``Node`` (included by _channels_c.pyx).
#
# ``Node.go`` in spark/nodes/_node.py is the specification: this loop takes
# the same steps in the same order. What it saves is the Python-level work
# around them: a queued message is taken without an await, the result goes
# straight into each successor's mailbox when a send would not wait (one
# metadata dict and one envelope per outgoing message, nothing in between),
# and the node's counters are C fields. It awaits only where ``Node.go``
# would wait: an empty mailbox, a full successor, an awaitable result, an
# ack, an observer, or a channel of another kind. Shutdowns, failures and
# acks are rare and go through the node's own (Python) methods.

import os as _os

cdef extern from "_worker.h":
    object spark_call_method1(object self, object name, object arg)
    object spark_monotonic()
    dict spark_dict_presized(Py_ssize_t size)
    void spark_seed_trace_ids(const char* seed, Py_ssize_t length)
    object spark_new_trace_id()

from cpython.dict cimport PyDict_Next, PyDict_SetItem
from cpython.list cimport PyList_GET_SIZE

cdef str _PROCESS = "process"
cdef str _SOURCE_NODE = "source_node"
cdef str _TRACE_ID = "trace_id"
cdef str _TIMESTAMP = "timestamp"
# What process() commonly returns; none of these can be awaited.
cdef frozenset _PLAIN_RESULTS = frozenset({int, float, str, bytes, bool, dict, list, tuple, set})


def _seed_trace_ids():
    """Seed the trace id generator from the OS (again in every forked child)."""
    seed = _os.urandom(32)
    spark_seed_trace_ids(seed, len(seed))


_seed_trace_ids()
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_seed_trace_ids)


def new_trace_id():
    """A new trace id: 128 random bits as 32 lowercase hex digits."""
    return spark_new_trace_id()


@cython.final
cdef class WorkerState:
    """A node worker's flags and counters, shared by the node, its loop and its graph run."""

    cdef public bint stop_requested
    cdef public bint receiving
    cdef public Py_ssize_t processed
    cdef public Py_ssize_t failed
    cdef public object binding

    def __reduce__(self):
        """A copy keeps the counters; it is in no run, not stopped, not receiving."""
        return (WorkerState, (), (self.processed, self.failed))

    def __setstate__(self, state):
        self.processed, self.failed = state


cdef inline bint _result_is_awaitable(object value) except -1:
    """Whether ``Node.go`` would await what ``process`` returned (``_is_awaitable`` there)."""
    kind = type(value)
    if kind is _CoroutineType:
        return True
    if kind in _PLAIN_RESULTS:
        return False
    return _inspect_isawaitable(value)


cdef inline ChannelMessage _envelope(object payload, dict metadata):
    cdef ChannelMessage message = ChannelMessage.__new__(ChannelMessage)
    message.payload = payload
    message.metadata = metadata
    return message


cdef dict _tracing(dict defaults, str source, object trace_id, object timestamp):
    """``defaults`` (an edge's, or None) overlaid with a node's tracing keys, in a new dict."""
    cdef dict metadata
    cdef Py_ssize_t position = 0
    cdef PyObject* key
    cdef PyObject* value
    if defaults is None:
        metadata = spark_dict_presized(3)
    else:
        metadata = spark_dict_presized(len(defaults) + 3)
        while PyDict_Next(defaults, &position, &key, &value):
            PyDict_SetItem(metadata, <object>key, <object>value)
    PyDict_SetItem(metadata, _SOURCE_NODE, source)
    PyDict_SetItem(metadata, _TRACE_ID, trace_id)
    PyDict_SetItem(metadata, _TIMESTAMP, timestamp)
    return metadata


cdef object _trace_id_of(object message):
    """The ``trace_id`` in a message's metadata, or None."""
    metadata = (<ChannelMessage>message).metadata if type(message) is ChannelMessage else message.metadata
    if not metadata:
        return None
    if type(metadata) is dict:
        return (<dict>metadata).get(_TRACE_ID)
    return metadata.get(_TRACE_ID)


cdef bint _deliver_now(object channel, object payload, str source, object trace_id, object timestamp) except -1:
    """Enqueue ``payload`` into the compiled mailbox behind ``channel`` if a send would not wait.

    What ``deliver_now`` in spark/nodes/_worker.py does for the pure build:
    True when done; False, doing nothing, when the send could wait, fail, or
    involve observers or a channel of another kind.
    """
    cdef ForwardingChannel forwarder
    cdef InMemoryChannel target
    cdef dict defaults = None
    if type(channel) is ForwardingChannel:
        forwarder = <ForwardingChannel>channel
        target = forwarder._fast_downstream
        if target is None or forwarder._closed or forwarder._observers or forwarder._patched:
            return False
        defaults = forwarder._defaults
    elif type(channel) is InMemoryChannel:
        target = <InMemoryChannel>channel
    else:
        return False
    if target._observers or target._closed or target._patched or target._shared or target._is_full():
        return False  # (shared: used by threads, the general path takes the lock)
    message = _envelope(payload, _tracing(defaults, source, trace_id, timestamp))
    cdef int how = _enter(target)
    try:
        if target._shared or target._closed or target._is_full():  # changed while the envelope was made
            return False
        target._enqueue(message)
    finally:
        _leave(target, how)
    return True


cdef object _receiving(InMemoryChannel mailbox):
    """What the loop awaits for its next message: the mailbox's own op, or its patched receive()."""
    if mailbox._patched:
        return mailbox.receive()
    return _new_op(mailbox, OP_RECEIVE)


async def run_worker(node, WorkerState state, InMemoryChannel mailbox, shutdowns, bint custom_emit):
    """``Node.go`` for a node whose mailbox is a compiled ``InMemoryChannel``."""
    cdef list edges = node._edges
    cdef list unsettled_acks = node._unsettled_acks  # emptied in place by node._settle_acks()
    cdef str source = node._id  # as Node.go: the id it was made with
    cdef object binding = None
    cdef tuple outgoing = ()
    cdef object on_output = None
    cdef tuple channels
    cdef Py_ssize_t i
    cdef int how
    while not state.stop_requested:
        if mailbox._buffer.count > mailbox._receivers_woken and not (
            mailbox._observers or mailbox._patched or mailbox._shared
        ):
            message = mailbox._dequeue()  # no Python runs in between: no other thread either
            if mailbox._senders.count:
                how = _enter(mailbox)
                try:
                    mailbox._wake_senders()
                finally:
                    _leave(mailbox, how)
        else:
            message = payload = result = None  # hold nothing of the last message while waiting
            if PyList_GET_SIZE(unsettled_acks):  # acks under way: settled before waiting
                await node._settle_acks()
            state.receiving = True
            try:
                message = await _receiving(mailbox)
            except ChannelClosed:
                state.receiving = False
                if not state.stop_requested:
                    await node._send_shutdown(None)
                return
            finally:
                state.receiving = False
        exact = type(message) is ChannelMessage
        if (<ChannelMessage>message).is_shutdown if exact else message.is_shutdown:
            if await node._on_shutdown(message, shutdowns):
                return
            continue
        try:
            payload = (<ChannelMessage>message).payload if exact else message.payload
            result = spark_call_method1(node, _PROCESS, payload)
            if result is not None and _result_is_awaitable(result):
                result = await result
            if result is not None:
                if custom_emit:
                    await node.emit(result, parent=message)
                else:
                    if state.binding is not binding:  # a run began or ended: look its routes up once
                        binding = state.binding
                        outgoing = () if binding is None else tuple(binding.outgoing)
                        on_output = None if binding is None else binding.on_output
                    if binding is not None and len(outgoing) == PyList_GET_SIZE(edges):
                        channels = outgoing
                    else:
                        channels = tuple(node._outgoing_channels())
                    if not channels:
                        if on_output is not None:
                            on_output(result)
                    else:
                        trace_id = _trace_id_of(message)
                        if trace_id is None:
                            trace_id = spark_new_trace_id()
                        timestamp = spark_monotonic()
                        for i in range(len(channels)):
                            channel = channels[i]
                            if not _deliver_now(channel, result, source, trace_id, timestamp):
                                await channel.send(
                                    _envelope(result, _tracing(None, source, trace_id, timestamp))
                                )
        except Exception as error:
            state.failed += 1
            await node._report_failure(message, error)
            continue
        state.processed += 1
        if ((<ChannelMessage>message).ack if exact else message.ack) is not None:
            pending = node._start_ack(message)
            if pending is not None:
                await pending
