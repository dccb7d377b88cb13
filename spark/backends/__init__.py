"""Channels over external engines, for pipelines that span processes or machines.

Each backend lives in its own module and needs its own extra, so importing
this package costs nothing:

* ``spark.backends.redis``: ``RedisStreamChannel`` over Redis Streams with
  consumer groups (``pip install 'spark-channels[redis]'``).
"""

__all__: list[str] = []
