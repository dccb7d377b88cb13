# Fan-out and fan-in, compiled: BroadcastChannel and its subscriptions,
# select() and merge(). Included by _channels_c.pyx; the pure modules
# spark/nodes/_broadcast_py.py and spark/nodes/_select_py.py are the
# specification, and this file takes the same steps over the compiled
# channels' internals.

from spark.nodes import _select_py
from spark.nodes._select_py import MergedChannel, check_channels
from spark.nodes._broadcast_py import check_on_full

cdef object _take_other = _select_py._take_other
cdef object _start_receives = _select_py._start_receives
cdef object _settle = _select_py._settle
cdef object _hold = _select_py._hold
cdef object _ensure_future = asyncio.ensure_future
from collections import deque as _deque
from dataclasses import replace as _replace


# -- broadcast -------------------------------------------------------------

cdef class BroadcastChannel(_ObservedChannel)


cdef class BroadcastSubscription(InMemoryChannel):
    """The receive side of a ``BroadcastChannel``, made by ``subscribe()``.

    It receives every message sent to the broadcast after it subscribed, in
    send order, with all of ``InMemoryChannel``'s receive guarantees.
    ``close()`` unsubscribes it: nothing more arrives, what is queued can
    still be received, then ``ChannelClosed``. Sending to it directly raises
    ``NotImplementedError``; ``stats().dropped`` counts the messages it lost
    by lagging behind a ``"drop_oldest"`` broadcast.
    """

    cdef BroadcastChannel _broadcast
    cdef Py_ssize_t _dropped

    def __init__(self, BroadcastChannel broadcast, name=None, observers=None):
        InMemoryChannel.__init__(self, name, broadcast._maxsize, observers)
        self._broadcast = broadcast

    @property
    def broadcast(self):
        """The broadcast it listens to; None once unsubscribed."""
        return self._broadcast

    def send(self, message):
        raise NotImplementedError(self._receive_only())

    def send_nowait(self, message):
        raise NotImplementedError(self._receive_only())

    def blocking_send(self, message, timeout=None):
        raise NotImplementedError(self._receive_only())

    def _receive_only(self):
        return (
            f"subscription {self._name!r} is the receive side of a broadcast; "
            "send to the BroadcastChannel itself"
        )

    def close(self):
        """Unsubscribe: receive what is queued, then ``ChannelClosed``."""
        broadcast, self._broadcast = self._broadcast, None
        if broadcast is not None:
            broadcast._unsubscribe(self)
        InMemoryChannel.close(self)

    def stats(self):
        """The subscription's counters; ``dropped`` counts messages lost to lag."""
        stats = InMemoryChannel.stats(self)  # counts a dropped message as received: it left the buffer
        return _replace(stats, received=stats.received - self._dropped, dropped=self._dropped)

    cdef int _drop_oldest(self) except -1:
        """Discard the oldest queued message (not one promised to a woken receiver)."""
        self._note_size()
        self._buffer.remove_at(self._receivers_woken)
        self._dropped += 1
        return 0

    def __reduce__(self):
        raise TypeError("a broadcast subscription cannot be copied or pickled; subscribe again")

    def __reduce_ex__(self, protocol):
        raise TypeError("a broadcast subscription cannot be copied or pickled; subscribe again")


cdef class BroadcastChannel(_ObservedChannel):
    """A channel whose every message reaches every subscriber.

    ``subscribe()`` makes a receive side that gets each message sent after
    it subscribed, in send order. ``maxsize`` bounds each subscriber's
    backlog (0: unbounded); ``on_full`` says what a send does when a
    subscriber has ``maxsize`` messages waiting:

    * ``"block"``: the send waits until every subscriber has room, so the
      slowest sets the pace. A cancelled send has delivered to nobody.
    * ``"drop_oldest"``: the send never waits; the lagging subscriber loses
      its oldest queued message, counted in its ``stats().dropped``.

    A message sent while nobody is subscribed reaches nobody (it is counted
    in ``stats().sent``). ``close()`` refuses further sends and closes every
    subscription: each drains what it has, then gets ``ChannelClosed``.
    Observers see each ``"send"`` here and each ``"receive"`` of every
    subscription (the subscription is the channel they are given).
    """

    cdef list _subscribers
    # Sends blocked by a full subscriber, oldest first; each future is set
    # (True) when its send's turn comes, or (False) by close().
    cdef object _blocked
    cdef Py_ssize_t _maxsize
    cdef Py_ssize_t _sent
    cdef Py_ssize_t _subscribed
    cdef bint _drops

    _is_broadcast = True

    def __init__(self, name=None, maxsize=0, *, on_full="block", observers=None):
        self._name = check_name(name)
        self._observers = tuple(check_observers(observers))
        self._maxsize = check_maxsize(maxsize)
        self._drops = check_on_full(on_full)
        self._subscribers = []
        self._blocked = _deque()

    @property
    def maxsize(self):
        """The bound on each subscriber's backlog; 0 means unbounded."""
        return self._maxsize

    @property
    def on_full(self):
        """What a send does about a full subscriber: ``"block"`` or ``"drop_oldest"``."""
        return "drop_oldest" if self._drops else "block"

    @property
    def subscribers(self):
        """The current subscriptions, oldest first."""
        return tuple(self._subscribers)

    def subscribe(self, name=None):
        """A new receive side that gets every message sent from now on."""
        if self._closed:
            raise self._closed_error()
        self._subscribed += 1
        if name is None:
            name = f"{self._name}:subscriber-{self._subscribed}"
        subscription = BroadcastSubscription(self, name, self._observers)
        self._subscribers = self._subscribers + [subscription]
        return subscription

    def _unsubscribe(self, subscription):
        self._subscribers = [s for s in self._subscribers if s is not subscription]

    def add_observer(self, observer):
        """Call ``observer`` for every later send here and receive on any subscription."""
        _ObservedChannel.add_observer(self, observer)
        for subscription in self._subscribers:
            subscription.add_observer(observer)

    def remove_observer(self, observer):
        """Stop calling ``observer``; raises ``ValueError`` if it is not registered."""
        _ObservedChannel.remove_observer(self, observer)
        for subscription in self._subscribers:
            if observer in subscription.observers:
                subscription.remove_observer(observer)

    # -- sending --

    def send(self, message):
        """Deliver ``message`` to every subscriber.

        With ``on_full="block"``, waits until every subscriber has room;
        raises ``ChannelClosed`` if the broadcast closes first. Cancelled
        while waiting, it has delivered to nobody.
        """
        return self._send(message)

    async def _send(self, message):
        self._check(message)
        if self._maxsize and not self._drops and (self._blocked or self._first_full() is not None):
            await self._wait_for_room()
        self._deliver(message)
        if self._observers:
            await _notify_async(self._observers, 0, self, message, "send")

    async def _wait_for_room(self):
        """Wait, behind the sends blocked before, until every subscriber has room.

        Only the oldest blocked send waits on the subscribers; the others
        wait for their turn, so sends finish in the order they blocked.
        """
        cdef BroadcastSubscription full
        turn = _get_running_loop().create_future()
        blocked = self._blocked
        blocked.append(turn)
        try:
            if blocked[0] is not turn:
                await turn
            while True:
                if self._closed:  # before our turn came, or while we waited for room
                    raise self._closed_error()
                full = self._first_full()
                if full is None:
                    break
                try:
                    await full._room()
                except ChannelClosed:  # that subscriber left, or we are closed
                    if self._closed:
                        raise self._closed_error() from None
        finally:
            blocked.remove(turn)
            if blocked and not blocked[0].done():
                blocked[0].set_result(True)  # the next blocked send's turn

    def send_nowait(self, message):
        """Deliver ``message`` to every subscriber now, or raise ``asyncio.QueueFull``.

        ``QueueFull`` (with ``on_full="block"`` only) means a subscriber is
        full; the message then reached nobody.
        """
        self._check(message)
        if self._maxsize and not self._drops and (self._blocked or self._first_full() is not None):
            raise _QueueFull
        self._deliver(message)
        if self._observers:
            _notify_nowait(self._observers, self, message, "send")

    cdef int _check(self, object message) except -1:
        if not _is_message(message):
            raise not_a_message(message)
        if self._closed:
            raise self._closed_error()
        return 0

    cdef BroadcastSubscription _first_full(self):
        cdef BroadcastSubscription subscription
        for subscription in self._subscribers:
            if subscription._room_taken() >= self._maxsize:
                return subscription
        return None

    cdef int _deliver(self, object message) except -1:
        """Append ``message`` to every subscription; nothing awaits in between."""
        cdef BroadcastSubscription subscription
        cdef Py_ssize_t maxsize = self._maxsize
        cdef int how
        self._sent += 1
        for subscription in self._subscribers:
            how = _enter(subscription)  # threads may be receiving from it
            try:
                while maxsize and subscription._room_taken() >= maxsize:
                    subscription._drop_oldest()  # only "drop_oldest" gets here
                subscription._enqueue(message)
            finally:
                _leave(subscription, how)
        return 0

    # -- the receive side is the subscriptions --

    def receive(self):
        raise NotImplementedError(self._send_only())

    def receive_nowait(self):
        raise NotImplementedError(self._send_only())

    async def receive_many(self, max_items):
        raise NotImplementedError(self._send_only())

    def __anext__(self):
        raise NotImplementedError(self._send_only())

    def _send_only(self):
        return f"broadcast {self._name!r} is received through subscriptions: call subscribe()"

    # -- state --

    def close(self):
        """Refuse further sends; every subscriber drains, then gets ``ChannelClosed``."""
        cdef BroadcastSubscription subscription
        if self._closed:
            return
        self._closed = True
        for turn in self._blocked:
            if not turn.done():
                turn.set_result(False)
        subscribers, self._subscribers = self._subscribers, []
        for subscription in subscribers:
            subscription._broadcast = None
            InMemoryChannel.close(subscription)

    cdef object _closed_error(self):
        return ChannelClosed(f"broadcast channel {self._name!r} is closed")

    def full(self):
        """Whether a ``"block"`` send would wait (a subscriber is full)."""
        return bool(self._maxsize and not self._drops and (self._blocked or self._first_full() is not None))

    def empty(self):
        """Whether no subscriber has a message waiting."""
        return all([subscription.empty() for subscription in self._subscribers])

    def qsize(self):
        """The largest backlog among the subscribers."""
        return max([subscription.qsize() for subscription in self._subscribers], default=0)

    def stats(self):
        """Sends counted here; size is the largest backlog, dropped the total over subscribers."""
        each = [subscription.stats() for subscription in self._subscribers]
        return ChannelStats(
            sent=self._sent,
            received=sum([stats.received for stats in each]),
            size=max([stats.size for stats in each], default=0),
            peak_size=max([stats.peak_size for stats in each], default=0),
            maxsize=self._maxsize,
            senders_waiting=len(self._blocked),
            receivers_waiting=sum([stats.receivers_waiting for stats in each]),
            closed=self._closed,
            dropped=sum([stats.dropped for stats in each]),
        )

    def __reduce__(self):
        raise TypeError("a BroadcastChannel cannot be copied or pickled")

    def __reduce_ex__(self, protocol):
        raise TypeError("a BroadcastChannel cannot be copied or pickled")


BaseChannel.register(BroadcastChannel)


# -- select and merge --------------------------------------------------------

cdef unsigned long long _rng = 0x9E3779B97F4A7C15


cdef inline Py_ssize_t _random_below(Py_ssize_t n) noexcept:
    """A pseudo-random index below ``n`` (xorshift64): where a select starts its scan."""
    global _rng
    cdef unsigned long long x = _rng
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    _rng = x
    return <Py_ssize_t>((x >> 11) % <unsigned long long>n)


cdef InMemoryChannel _native(object channel):
    """The compiled in-memory channel to wait on for ``channel``, or None (another kind)."""
    cdef type kind = type(channel)
    if kind is ForwardingChannel:
        if (<ForwardingChannel>channel)._patched:
            return None
        channel = (<ForwardingChannel>channel)._downstream
        kind = type(channel)
    if (kind is InMemoryChannel or kind is BroadcastSubscription) and not (<InMemoryChannel>channel)._patched:
        return <InMemoryChannel>channel
    return None


def select(*channels):
    """Wait for the first channel with a message; return ``(channel, message)``.

    Guarantees for ``InMemoryChannel``, ``ForwardingChannel`` (into one) and
    broadcast subscriptions, of both builds:

    * exactly one message is taken, from the returned channel, the oldest it
      had; the others are untouched;
    * fair: when several are ready, the scan starts at a random channel, so
      each ready one is picked with a probability of at least 1/n;
    * a select that is cancelled (or times out) has taken nothing (as with
      ``receive``, except while it awaits an async receive observer: the
      message is taken by then);
    * the channels' receive observers run, as for ``receive``;
    * once every channel is closed and drained, ``ChannelClosed`` is raised.

    Other ``BaseChannel`` implementations are read with ``receive_nowait``
    when they have it, and waited on with one ``receive()`` task each,
    cancelled when another channel wins. A message taken by such a task
    anyway (it finished in the same loop iteration as the winner) is not
    lost: the next ``select`` or ``merge`` over that channel returns it
    first. Exactness then rests on their ``receive`` taking nothing when
    cancelled, as the built-in channels' does.
    """
    for channel in channels:
        if _native(channel) is None:
            return _checked_select(channels)
    if not channels:
        return _checked_select(channels)
    return _select_from(channels, _random_below(len(channels)), None)


async def _checked_select(channels):
    """select() over channels that are not all compiled in-memory ones: checked when awaited."""
    check_channels(channels, "select()")
    return await _select_from(channels, _random_below(len(channels)), None)


def merge(*channels, name=None):
    """A receive-only channel yielding the messages of all ``channels`` as they arrive.

    See ``MergedChannel``; it closes when every source is closed and drained.
    """
    return MergedChannel(channels, name, select_from=_select_from)


async def _select_from(channels, Py_ssize_t start, merged):
    """Select from ``channels``, scanning from index ``start``; ``merged`` ends it when closed."""
    cdef Py_ssize_t count = len(channels)
    cdef Py_ssize_t step, index, closed
    cdef InMemoryChannel inner
    cdef list inners = [_native(channel) for channel in channels]
    gone = None  # indices of other kinds of channels known to be closed and drained
    while True:
        if merged is not None and merged._closed:
            raise merged._closed_error()
        closed = 0
        for step in range(count):
            index = start + step
            if index >= count:
                index -= count
            channel = channels[index]
            inner = <InMemoryChannel>inners[index]
            if inner is not None:
                message = _take_queued(inner)
                if message is not None:
                    if inner._observers or (channel is not inner and (<_ObservedChannel>channel)._observers):
                        await _observe_taken(channel, inner, message)
                    return channel, message
                closed += inner._closed
            elif gone is not None and index in gone:
                closed += 1
            else:
                try:
                    return channel, _take_other(channel)
                except (_QueueEmpty, NotImplementedError):
                    pass
                except ChannelClosed:
                    if gone is None:
                        gone = set()
                    gone.add(index)
                    closed += 1
        if closed == count:
            raise ChannelClosed(
                "every channel given to select() is closed and drained: "
                + ", ".join([repr(channel.name) for channel in channels])
            )
        if gone is None:
            gone = set()
        won = await _wait_for_any(channels, inners, gone, merged)
        if won is not None:
            return won


cdef object _take_queued(InMemoryChannel inner):
    """The oldest queued message of ``inner``, taken; None if none is queued."""
    cdef int how = _enter(inner)
    try:
        return inner._take_free()
    finally:
        _leave(inner, how)


async def _observe_taken(channel, InMemoryChannel inner, message):
    """The receive observers of ``inner``, then of ``channel`` (a forwarder into it)."""
    if inner._observers:
        await _notify_async(inner._observers, 0, inner, message, "receive")
    if channel is not inner and (<_ObservedChannel>channel)._observers:
        await _notify_async((<_ObservedChannel>channel)._observers, 0, channel, message, "receive")


async def _wait_for_any(channels, list inners, set gone, merged):
    """Wait until a channel has a message: it, taken; None to scan again (a close woke us).

    One loop future is shared by a blocked op in each in-memory channel's
    receiver queue: the first channel to wake it promises its message, the
    others find it done and pass over their op.
    """
    cdef Py_ssize_t index, count = len(channels)
    cdef InMemoryChannel inner
    cdef _Op op
    cdef _Op promised = None
    cdef list ops = []
    cdef int how
    cdef Py_ssize_t closed = len(gone)
    future = _get_running_loop().create_future()
    tasks = _start_receives(channels, inners, gone, future)
    for index in range(count):
        inner = <InMemoryChannel>inners[index]
        if inner is None:
            continue
        how = _enter(inner)
        try:
            if inner._buffer.count > inner._receivers_woken:
                if not future.done():  # sent since the scan (by another thread): scan again
                    future.set_result(None)
            elif inner._closed:
                closed += 1
            else:
                op = _Op.__new__(_Op)
                op.channel = inner
                op.kind = OP_RECEIVE
                op.future = future
                op.woken = WOKEN_NOT
                op.state = ST_WAITING
                if inner._loop is not future.get_loop():  # tasks of this loop wait here
                    inner._loop = future.get_loop()
                    inner._loop_thread = spark_thread_id()
                    inner._create_future = inner._loop.create_future
                inner._receivers.push(op)
                ops.append(op)
        finally:
            _leave(inner, how)
    if closed == count and not future.done():  # all closed since the scan
        future.set_result(None)
    if merged is not None:
        merged._waiting.add(future)
    try:
        await future
    except BaseException:  # cancelled: take nothing
        if merged is not None:
            merged._waiting.discard(future)
        for op in ops:
            op._abandon()  # withdraws it, or hands its promise on to the next receiver
            op._release()
        if tasks:
            won = _settle(channels, tasks, gone)
            if won is not None:
                _hold(*won)
        raise
    if merged is not None:
        merged._waiting.discard(future)
    for op in ops:
        if op.woken == WOKEN_PROMISED and promised is None:
            promised = op
        else:  # (another thread's promise may come after the future was resolved)
            op._abandon()  # still queued somewhere: withdraw it
            op._release()
    try:
        won = _settle(channels, tasks, gone) if tasks else None
    except BaseException:  # another kind of channel failed: take nothing
        if promised is not None:
            promised._abandon()  # hands the promise on
            promised._release()
        raise
    if promised is None:
        return won
    if won is not None:  # another kind finished too: keep its message for later
        _hold(*won)
    inner = promised.channel
    promised._release()
    index = inners.index(inner)
    how = _enter(inner)
    try:
        inner._receivers_woken -= 1  # the promised message is at the front
        message = inner._buffer.pop()
        if inner._senders.count:
            inner._wake_senders()
    finally:
        _leave(inner, how)
    channel = channels[index]
    if inner._observers or (channel is not inner and (<_ObservedChannel>channel)._observers):
        await _observe_taken(channel, inner, message)
    return channel, message
