"""``ChannelMetrics``: a channel observer that reports traffic as OpenTelemetry metrics."""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from spark.nodes import _channels_py
from spark.nodes.channels import BaseChannel, ForwardingChannel, InMemoryChannel

__all__ = ["CHANNEL_NAME", "ChannelMetrics"]

CHANNEL_NAME = "channel.name"
"""The attribute that tells channels apart in every metric: the channel's ``name``."""

_SCOPE = "spark.observability"
_REDIS_STREAM_ID = "redis_stream_id"  # spark.backends._stream_py.METADATA_STREAM_ID
# The in-process channels: a receive hands on the envelope that was sent, and
# qsize() is the size stats() reports, read without entering the channel (a
# collection from another thread must not make the channel shared).
_IN_PROCESS = (
    InMemoryChannel,
    ForwardingChannel,
    _channels_py.InMemoryChannel,
    _channels_py.ForwardingChannel,
)


class ChannelMetrics:
    """An observer recording, per channel (attribute ``channel.name``):

    * ``spark.channel.messages.sent`` and ``spark.channel.messages.received``
      (counters, ``{message}``): the ``send`` and ``receive`` phases it sees;
    * ``spark.channel.depth`` (observable gauge, ``{message}``): the size
      ``stats()`` reports, read at each collection;
    * ``spark.channel.time_in_channel`` (histogram, seconds): from the send
      to the receive of the same message. Timed are the messages this
      observer saw sent into an in-memory or forwarding channel and then
      received from it (at most ``max_timed`` in flight, the oldest
      forgotten first), and the messages read from a Redis stream, timed
      from the entry's id (the server's clock at ``XADD``, in
      milliseconds), which works across processes.

    Add it to channels with ``attach(channel)`` (which also makes the depth
    reported before the first message) or pass it among a channel's
    ``observers``. One instance serves any number of channels, from any
    thread.
    """

    def __init__(self, meter_provider: MeterProvider | None = None, *, max_timed: int = 100_000):
        if isinstance(max_timed, bool) or not isinstance(max_timed, int) or max_timed < 0:
            raise ValueError(f"max_timed must be an int >= 0, got {max_timed!r}")
        instruments = _Instruments.of(meter_provider)
        instruments.users.add(self)
        self._time_in_channel = instruments.time_in_channel
        self._max_timed = max_timed
        self._lock = threading.Lock()
        self._channels: weakref.WeakSet[BaseChannel[Any]] = weakref.WeakSet()
        # Per channel name: its attributes, then how many sends and receives were seen.
        # They are kept here, a few ns a message, and handed to the SDK at each
        # collection (observable counters: cumulative, monotonic).
        self._counts: dict[str, list[Any]] = {}
        # (id(channel), id(message)) -> (message, perf_counter() at its send), oldest first.
        self._in_flight: OrderedDict[tuple[int, int], tuple[Any, float]] = OrderedDict()

    def attach(self, channel: BaseChannel[Any]) -> BaseChannel[Any]:
        """Observe ``channel`` (once, however often called) and report its depth; return it."""
        if not isinstance(channel, BaseChannel):
            raise TypeError(f"attach() takes a channel, got {type(channel).__name__}")
        if self not in channel.observers:
            channel.add_observer(self)
        self._channels.add(channel)
        return channel

    def detach(self, channel: BaseChannel[Any]) -> None:
        """Stop observing ``channel``; its depth is no longer reported."""
        if self in channel.observers:
            channel.remove_observer(self)
        self._channels.discard(channel)
        with self._lock:
            for key in [key for key in self._in_flight if key[0] == id(channel)]:
                del self._in_flight[key]

    def __call__(self, message: Any, channel: BaseChannel[Any], phase: str) -> None:
        """Record one ``send`` or ``receive`` of ``message`` on ``channel``."""
        name = channel.name
        with self._lock:
            counts = self._counts.get(name)
            if counts is None:
                counts = self._counts[name] = [{CHANNEL_NAME: name}, 0, 0]
                self._channels.add(channel)
            if phase == "send":
                counts[1] += 1
                if self._max_timed and isinstance(channel, _IN_PROCESS):
                    in_flight = self._in_flight
                    in_flight[id(channel), id(message)] = (message, time.perf_counter())
                    if len(in_flight) > self._max_timed:
                        in_flight.popitem(last=False)
                return
            if phase != "receive":
                return
            counts[2] += 1
            sent = (
                self._in_flight.pop((id(channel), id(message)), None) if self._in_flight else None
            )
        waited = self._waited(message, sent)
        if waited is not None:
            self._time_in_channel.record(waited, counts[0])

    def _waited(self, message: Any, sent: tuple[Any, float] | None) -> float | None:
        """Seconds since ``message`` was sent (``sent``: when this observer saw it), if known."""
        if sent is not None and sent[0] is message:
            return time.perf_counter() - sent[1]
        metadata = getattr(message, "metadata", None)
        entry_id = metadata.get(_REDIS_STREAM_ID) if isinstance(metadata, dict) else None
        if isinstance(entry_id, str):
            milliseconds, _, _ = entry_id.partition("-")
            if milliseconds.isdigit():
                return max(0.0, time.time() - int(milliseconds) / 1000)
        return None

    def _totals(self, into: dict[str, list[int]]) -> None:
        """Add this observer's sent and received counts, per channel name, to ``into``."""
        with self._lock:
            for name, (_, sent, received) in self._counts.items():
                totals = into.setdefault(name, [0, 0])
                totals[0] += sent
                totals[1] += received

    def _depths(self, into: dict[str, int]) -> None:
        """Add the depth of each channel observed, per channel name, to ``into``."""
        for channel in list(self._channels):
            try:
                if isinstance(channel, _IN_PROCESS):
                    size = channel.qsize()
                else:
                    size = channel.stats().size
            except NotImplementedError:
                continue
            into[channel.name] = into.get(channel.name, 0) + size

    def __repr__(self) -> str:
        return f"<ChannelMetrics channels={len(self._channels)}>"


class _Instruments:
    """The instruments of one meter provider, shared by every ``ChannelMetrics`` made with it.

    The SDK keeps the first instrument registered under a name (with its
    callbacks) and hands it back for later ones; so the observable
    instruments are made once per provider, and their callbacks ask every
    live ``ChannelMetrics`` of that provider, adding up per channel name.
    """

    @classmethod
    def of(cls, meter_provider: MeterProvider | None) -> _Instruments:
        provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
        with _INSTRUMENTS_LOCK:
            instruments = _INSTRUMENTS.get(provider)
            if instruments is None:
                instruments = _INSTRUMENTS[provider] = cls(provider)
            return instruments

    def __init__(self, provider: MeterProvider) -> None:
        meter = provider.get_meter(_SCOPE)
        self.users: weakref.WeakSet[ChannelMetrics] = weakref.WeakSet()
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

    def _totals(self) -> dict[str, list[int]]:
        totals: dict[str, list[int]] = {}
        for user in list(self.users):
            user._totals(totals)
        return totals

    def _observe_sent(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(t[0], {CHANNEL_NAME: name}) for name, t in self._totals().items()]

    def _observe_received(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(t[1], {CHANNEL_NAME: name}) for name, t in self._totals().items()]

    def _observe_depths(self, options: CallbackOptions) -> Iterable[Observation]:
        depths: dict[str, int] = {}
        for user in list(self.users):
            user._depths(depths)
        return [Observation(size, {CHANNEL_NAME: name}) for name, size in depths.items()]


_INSTRUMENTS: weakref.WeakKeyDictionary[MeterProvider, _Instruments] = weakref.WeakKeyDictionary()
_INSTRUMENTS_LOCK = threading.Lock()
