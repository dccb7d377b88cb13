"""Long-running mode: three continuous workers in a pipeline, run by a graph.

``ContinuousWorker`` and the graph set-up are the reference's "Long-Running
Mode Usage" examples. Its workers never stop on their own, so the task as
written would run for its whole 60-second budget; here the graph is stopped
from outside once the last worker has produced its result. The second part
shows the same pipeline built on the default ``go()``, which passes the
shutdown along by itself and returns what the last node produces.
Run it with ``python examples/long_running_pipeline.py``.
"""

import asyncio

from spark.graphs import Budget, Graph, NodeMessage, Task, TaskType
from spark.nodes import Node
from spark.nodes.channels import ChannelMessage
from spark.nodes.config import NodeConfig


class ContinuousWorker(Node):
    """Node that runs continuously processing messages."""

    def __init__(self, **kwargs):
        config = NodeConfig(live=True)  # Enable continuous mode
        super().__init__(config=config, **kwargs)
        self.results = []
        self.produced = asyncio.Event()

    async def go(self):
        """Main worker loop."""
        print(f"Worker {self.id} starting")

        while not self._stop_flag:
            try:
                # Wait for message from mailbox
                message = await self.mailbox.receive()

                # Check for shutdown signal
                if message.is_shutdown:
                    print(f"Worker {self.id} shutting down")
                    break

                # Process message
                result = await self.process_payload(message.payload)

                # Send to next node(s)
                next_nodes = self.get_next_nodes()
                for next_node in next_nodes:
                    await next_node.mailbox.send(ChannelMessage(payload=result))

                # Acknowledge processing
                if message.ack:
                    await message.ack()

            except Exception as e:
                print(f"Worker {self.id} error: {e}")

        print(f"Worker {self.id} stopped")

    async def process_payload(self, payload):
        """Process message payload."""
        result = {"processed": payload}
        self.results.append(result)
        self.produced.set()
        return result


async def stop_when_produced(graph, node):
    """Stop ``graph`` once ``node`` has produced a result."""
    await node.produced.wait()
    graph.stop()


async def reference_pipeline():
    # Create worker nodes
    worker1 = ContinuousWorker()
    worker2 = ContinuousWorker()
    worker3 = ContinuousWorker()

    # Connect into pipeline
    worker1 >> worker2 >> worker3

    # Create graph
    graph = Graph(start=worker1)

    # Run in long-running mode
    task = Task(
        inputs=NodeMessage(content={"data": "initial"}),
        type=TaskType.LONG_RUNNING,
        budget=Budget(max_seconds=60),
    )

    result, _ = await asyncio.gather(graph.run(task), stop_when_produced(graph, worker3))
    print(f"status: {result.status}, last result: {worker3.results[-1]}")
    return result, worker3.results[-1]


class Enrich(Node):
    def process(self, payload):
        return {"processed": payload}


async def default_go_pipeline():
    first, second, third = Enrich(name="first"), Enrich(name="second"), Enrich(name="third")
    first >> second >> third
    task = Task(
        inputs=[NodeMessage(content={"data": n}) for n in range(3)]
        + [ChannelMessage(payload=None, is_shutdown=True)],
        type=TaskType.LONG_RUNNING,
        budget=Budget(max_seconds=60),
    )
    result = await Graph(start=first).run(task)
    print(f"status: {result.status}, outputs: {result.outputs}")
    return result


async def main():
    reference = await reference_pipeline()
    default = await default_go_pipeline()
    return reference, default


if __name__ == "__main__":
    asyncio.run(main())
