"""Graceful shutdown: workers finish in-flight work, then pass the shutdown on.

``ShutdownAwareWorker`` is the reference's "Graceful Shutdown" example. The
first run ends on its own: the shutdown sent after the inputs travels down
the pipeline. The second run is out of budget while a worker is busy: the
graph sends every node a shutdown and gives the work in hand a grace period.
Run it with ``python examples/graceful_shutdown.py``.
"""

import asyncio

from spark.graphs import Budget, Graph, NodeMessage, Task, TaskType
from spark.nodes import Node
from spark.nodes.channels import ChannelMessage
from spark.nodes.config import NodeConfig


class ShutdownAwareWorker(Node):
    """Worker with graceful shutdown handling."""

    def __init__(self, delay=0.0, **kwargs):
        config = NodeConfig(live=True)
        super().__init__(config=config, **kwargs)
        self.in_flight = 0
        self.delay = delay
        self.handled = []

    async def go(self):
        """Worker loop with graceful shutdown."""
        while True:
            message = await self.mailbox.receive()

            if message.is_shutdown:
                # Wait for in-flight work to complete
                while self.in_flight > 0:  # noqa: ASYNC110 - as in the reference
                    await asyncio.sleep(0.1)

                # Propagate shutdown to next nodes
                for next_node in self.get_next_nodes():
                    await next_node.mailbox.send(ChannelMessage(payload=None, is_shutdown=True))

                break

            # Track in-flight work
            self.in_flight += 1

            try:
                result = await self.process_payload(message.payload)

                for next_node in self.get_next_nodes():
                    await next_node.mailbox.send(ChannelMessage(payload=result))

            finally:
                self.in_flight -= 1

    async def process_payload(self, payload):
        await asyncio.sleep(self.delay)
        self.handled.append(payload)
        return f"{payload} > {self.name}"


def pipeline(delay=0.0):
    workers = [ShutdownAwareWorker(name=name, delay=delay) for name in ("parse", "check", "store")]
    workers[0] >> workers[1] >> workers[2]
    return Graph(start=workers[0]), workers


async def shutdown_travels_down_the_pipeline():
    graph, workers = pipeline()
    task = Task(
        inputs=[NodeMessage(content=f"order-{n}") for n in range(3)]
        + [ChannelMessage(payload=None, is_shutdown=True)],
        type=TaskType.LONG_RUNNING,
        budget=Budget(max_seconds=60),
    )
    result = await graph.run(task)
    print(f"status: {result.status}; stored: {workers[-1].handled}")
    return result, workers


async def budget_runs_out_mid_work():
    graph, workers = pipeline(delay=0.3)
    task = Task(
        inputs=[NodeMessage(content=f"order-{n}") for n in range(4)],
        type=TaskType.LONG_RUNNING,
        budget=Budget(max_seconds=0.5),
        grace_seconds=2.0,
    )
    result = await graph.run(task)
    print(
        f"status: {result.status}; handled per worker: "
        f"{[len(worker.handled) for worker in workers]}; "
        f"left in mailboxes: {sum(result.pending.values())}; cancelled: {len(result.cancelled)}"
    )
    return result, workers


async def main():
    completed = await shutdown_travels_down_the_pipeline()
    exhausted = await budget_runs_out_mid_work()
    return completed, exhausted


if __name__ == "__main__":
    asyncio.run(main())
