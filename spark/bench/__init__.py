"""Benchmarks of the channels against asyncio.Queue: ``python -m spark.bench``."""
