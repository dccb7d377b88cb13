"""``ChannelMetrics``: a channel observer that reports traffic as OpenTelemetry metrics."""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from spark.nodes import _channels_py
from spark.nodes.channels import BaseChannel, ForwardingChannel, InMemoryChannel

from ._local import ProcessLocal

__all__ = ["CHANNEL_NAME", "SCOPE", "ChannelMetrics"]

CHANNEL_NAME = "channel.name"
"""The attribute that tells channels apart in every metric: the channel's ``name``."""

SCOPE = "spark.observability"
"""The instrumentation scope of every tracer and meter here."""
_REDIS_STREAM_ID = "redis_stream_id"  # spark.backends._stream_py.METADATA_STREAM_ID
# A receive hands on the very envelope that was sent: sends can be timed.
_TIMED = (InMemoryChannel, _channels_py.InMemoryChannel)
# qsize() is the size stats() reports, and is read without entering the
# channel: a collection from another thread must not make the channel shared.
# The depth of other channels is read (from stats()) at each send and receive.
_READ_AT_COLLECTION = (*_TIMED, ForwardingChannel, _channels_py.ForwardingChannel)


class _Record:
    """What is known of one channel, shared by the ``ChannelMetrics`` of one meter provider."""

    __slots__ = (
        "attributes",
        "channel",
        "depth",
        "in_flight",
        "observer",
        "received",
        "received_first",
        "sent",
    )

    def __init__(self, channel: weakref.ref[BaseChannel[Any]], name: str) -> None:
        self.channel = channel
        self.attributes = {CHANNEL_NAME: name}
        self.sent = 0
        self.received = 0
        self.depth: int | None = None
        """The last size read on the channel's side; None when read at collection or unknown."""
        self.observer: weakref.ref[ChannelMetrics] | None = None
        """The ``ChannelMetrics`` that counts this channel (one, however many observe it)."""
        # id(message) -> (message, perf_counter() at its send), oldest first.
        self.in_flight: OrderedDict[int, tuple[Any, float]] = OrderedDict()
        # id(message) -> message, of messages whose receive was seen before their
        # send (a thread's send, observed after the loop took the message).
        self.received_first: OrderedDict[int, Any] = OrderedDict()


class ChannelMetrics(ProcessLocal):
    """An observer recording, per channel (attribute ``channel.name``):

    * ``spark.channel.messages.sent`` and ``spark.channel.messages.received``
      (counters, ``{message}``): the ``send`` and ``receive`` phases it sees,
      shutdown messages included (as ``stats()`` counts them);
    * ``spark.channel.depth`` (gauge, ``{message}``): the size ``stats()``
      reports; read at each collection for in-memory and forwarding
      channels, as of the last send or receive for the others;
    * ``spark.channel.time_in_channel`` (histogram, seconds): from the send
      to the receive of the same message, for the messages it saw sent into
      an ``InMemoryChannel`` and then received from it (at most
      ``max_timed`` in flight per channel, the oldest forgotten first), and
      for the messages read from a Redis stream, timed from the entry's id
      (the server's clock at ``XADD``, in milliseconds), which works across
      processes.

    Add it to channels with ``attach(channel)`` (which also reports the
    depth before the first message) or among a channel's ``observers``. One
    instance serves any number of channels, from any thread. The counts
    belong to the channel, not to the observer: every ``ChannelMetrics`` of
    a meter provider adds to the same series, a channel is counted once
    however many observe it, and its counters never go back while it lives
    (its series end when it is garbage collected).
    """

    NOT_PICKLED = (
        "a ChannelMetrics cannot be pickled (it reports to this process's meter provider); "
        "detach it first, and attach a new one in the other process"
    )

    def __init__(self, meter_provider: MeterProvider | None = None, *, max_timed: int = 100_000):
        if isinstance(max_timed, bool) or not isinstance(max_timed, int) or max_timed < 0:
            raise ValueError(f"max_timed must be an int >= 0, got {max_timed!r}")
        self._instruments = _Instruments.of(meter_provider)
        self._time_in_channel = self._instruments.time_in_channel
        self._max_timed = max_timed

    def attach(self, channel: BaseChannel[Any]) -> BaseChannel[Any]:
        """Observe ``channel`` (once, however often called) and report its depth; return it."""
        if not isinstance(channel, BaseChannel):
            raise TypeError(f"attach() takes a channel, got {type(channel).__name__}")
        if self not in channel.observers:
            channel.add_observer(self)
        self._instruments.claim(channel, self)
        return channel

    def detach(self, channel: BaseChannel[Any]) -> None:
        """Stop observing ``channel``; its counters keep their values, its depth is dropped."""
        if self in channel.observers:
            channel.remove_observer(self)
        self._instruments.release(channel, self)

    def __call__(self, message: Any, channel: BaseChannel[Any], phase: str) -> None:
        """Record one ``send`` or ``receive`` of ``message`` on ``channel``."""
        record = self._instruments.records.get(id(channel))
        if (
            record is None
            or record.channel() is not channel  # (a dead channel's, whose id was reused)
            or record.observer is None
            or record.observer() is not self
        ):
            claimed = self._instruments.claim(channel, self)
            if claimed is None:
                return  # another ChannelMetrics counts this channel, or this one left it
            record = claimed
        sent = None
        with self._instruments.lock:
            if phase == "send":
                record.sent += 1
                if self._max_timed and isinstance(channel, _TIMED):
                    key = id(message)
                    if record.received_first and record.received_first.pop(key, None) is message:
                        pass  # received already: not timed
                    else:
                        in_flight = record.in_flight
                        in_flight[key] = (message, time.perf_counter())
                        if len(in_flight) > self._max_timed:
                            in_flight.popitem(last=False)
            elif phase == "receive":
                record.received += 1
                if self._max_timed and isinstance(channel, _TIMED):
                    sent = record.in_flight.pop(id(message), None) if record.in_flight else None
                    if sent is None or sent[0] is not message:
                        received_first = record.received_first
                        received_first[id(message)] = message
                        if len(received_first) > self._max_timed:
                            received_first.popitem(last=False)
            else:
                return
        if record.depth is not None:
            record.depth = _size(channel)
        if phase == "receive":
            waited = _waited(message, sent)
            if waited is not None:
                self._time_in_channel.record(waited, record.attributes)

    def __repr__(self) -> str:
        return f"<ChannelMetrics max_timed={self._max_timed}>"


def _size(channel: BaseChannel[Any]) -> int | None:
    try:
        return channel.stats().size
    except NotImplementedError:
        return None


def _waited(message: Any, sent: tuple[Any, float] | None) -> float | None:
    """Seconds since ``message`` was sent (``sent``: when it was seen sent), if known."""
    if sent is not None and sent[0] is message:
        return time.perf_counter() - sent[1]
    metadata = getattr(message, "metadata", None)
    entry_id = metadata.get(_REDIS_STREAM_ID) if isinstance(metadata, dict) else None
    if isinstance(entry_id, str):
        milliseconds, _, _ = entry_id.partition("-")
        if milliseconds.isdigit():
            return max(0.0, time.time() - int(milliseconds) / 1000)
    return None


class _Instruments:
    """The instruments of one meter provider and the records of the channels they report.

    The SDK keeps the first instrument registered under a name (with its
    callbacks) and hands it back for later ones; so the instruments are made
    once per provider, shared by every ``ChannelMetrics`` made with it.
    """

    @classmethod
    def of(cls, meter_provider: MeterProvider | None) -> _Instruments:
        with _INSTRUMENTS_LOCK:
            global_provider = metrics.get_meter_provider()
            provider = global_provider if meter_provider is None else meter_provider
            instruments = _BY_PROVIDER.get(provider)
            if instruments is None:
                if provider is global_provider and _BEFORE_GLOBAL:
                    # Made through the API's stand-in before the global provider
                    # was set; they report to it now.
                    instruments = _BEFORE_GLOBAL[0]
                else:
                    instruments = cls(provider)
                    if type(provider).__name__ == "_ProxyMeterProvider":
                        _BEFORE_GLOBAL.append(instruments)
                _BY_PROVIDER[provider] = instruments
            return instruments

    def __init__(self, meter_provider: MeterProvider) -> None:
        meter = meter_provider.get_meter(SCOPE)
        self.lock = threading.Lock()
        self.records: dict[int, _Record] = {}
        """Per ``id(channel)``, while the channel lives."""
        self._dead: deque[int] = deque()
        """Keys of records whose channel was garbage collected."""
        self._live_names: dict[str, int] = {}
        """How many channels with a record have each name."""
        self._retired: dict[str, list[int]] = {}
        """Per name, the sent and received counts of its dead channels, while one lives."""
        self.time_in_channel = meter.create_histogram(
            "spark.channel.time_in_channel",
            unit="s",
            description="Time from a message's send to its receive",
        )
        meter.create_observable_counter(
            "spark.channel.messages.sent",
            callbacks=[self._observe_sent],
            unit="{message}",
            description="Messages sent",
        )
        meter.create_observable_counter(
            "spark.channel.messages.received",
            callbacks=[self._observe_received],
            unit="{message}",
            description="Messages received",
        )
        meter.create_observable_gauge(
            "spark.channel.depth",
            callbacks=[self._observe_depths],
            unit="{message}",
            description="Messages buffered in the channel",
        )

    def claim(self, channel: BaseChannel[Any], observer: ChannelMetrics) -> _Record | None:
        """``channel``'s record if ``observer`` counts it, else None.

        ``observer`` counts it when it is among the channel's observers and
        no other live observer of the channel does (a call made after it
        was removed, from a copy of the observers taken before, counts
        nothing).
        """
        key = id(channel)
        with self.lock:
            self._forget_dead()
            record = self.records.get(key)
            if record is None or record.channel() is not channel:
                # The callback may run in any thread, inside any allocation (a
                # garbage collection), even one made under the lock: it only notes.
                dead = self._dead

                def forget(_: object, key: int = key) -> None:
                    dead.append(key)

                name = channel.name
                record = self.records[key] = _Record(weakref.ref(channel, forget), name)
                self._live_names[name] = self._live_names.get(name, 0) + 1
            owner = None if record.observer is None else record.observer()
            if owner is not observer:
                observers = channel.observers
                if observer not in observers or (owner is not None and owner in observers):
                    return None
                record.observer = weakref.ref(observer)
        if not isinstance(channel, _READ_AT_COLLECTION):
            record.depth = _size(channel)
        return record

    def release(self, channel: BaseChannel[Any], observer: ChannelMetrics) -> None:
        """``observer`` stops counting ``channel``: its depth goes, its counts stay."""
        with self.lock:
            record = self.records.get(id(channel))
            if record is not None and record.observer is not None:
                if record.observer() is observer:
                    record.observer = None
                    record.in_flight.clear()
                    record.received_first.clear()
                    record.depth = None

    def _forget_dead(self) -> None:
        """Drop the records of the channels garbage collected since (under the lock)."""
        while self._dead:
            key = self._dead.popleft()
            stale = self.records.get(key)
            if stale is None or stale.channel() is not None:
                continue
            del self.records[key]
            # What it counted stays in its name's series while another channel
            # of that name lives (a counter never goes back); then the series ends.
            name = stale.attributes[CHANNEL_NAME]
            left = self._live_names[name] - 1
            if left:
                self._live_names[name] = left
                retired = self._retired.setdefault(name, [0, 0])
                retired[0] += stale.sent
                retired[1] += stale.received
            else:
                del self._live_names[name]
                self._retired.pop(name, None)

    def _live(self) -> list[tuple[_Record, BaseChannel[Any]]]:
        with self.lock:
            self._forget_dead()
            records = list(self.records.values())
        return [(r, c) for r in records if (c := r.channel()) is not None]

    def _totals(self, which: int) -> list[Observation]:
        """Per channel name: sent (``which`` 0) or received (1) messages."""
        records = self._live()
        with self.lock:
            totals = {name: counts[which] for name, counts in self._retired.items()}
        for record, _ in records:
            name = record.attributes[CHANNEL_NAME]
            totals[name] = totals.get(name, 0) + (record.received if which else record.sent)
        return [Observation(total, {CHANNEL_NAME: name}) for name, total in totals.items()]

    def _observe_sent(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._totals(0)

    def _observe_received(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._totals(1)

    def _observe_depths(self, options: CallbackOptions) -> Iterable[Observation]:
        depths: dict[str, int] = {}
        for record, channel in self._live():
            if record.observer is None or record.observer() is None:
                continue  # detached: no depth
            if isinstance(channel, _READ_AT_COLLECTION):
                size: int | None = channel.qsize()
            else:
                size = record.depth
            if size is not None:
                name = record.attributes[CHANNEL_NAME]
                depths[name] = depths.get(name, 0) + size
        return [Observation(size, {CHANNEL_NAME: name}) for name, size in depths.items()]


_BEFORE_GLOBAL: list[_Instruments] = []
_BY_PROVIDER: weakref.WeakKeyDictionary[MeterProvider, _Instruments] = weakref.WeakKeyDictionary()
_INSTRUMENTS_LOCK = threading.Lock()
