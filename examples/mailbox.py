"""Mailbox pattern: every node receives its messages in its own mailbox.

The classes are the reference's "Mailbox Pattern" examples; ``main`` plays
node A, sending work to node B's mailbox and then asking it to shut down.
Run it with ``python examples/mailbox.py``.
"""

import asyncio
from uuid import uuid4

from spark.nodes import Node
from spark.nodes.channels import ChannelMessage, InMemoryChannel


class WorkerNode(Node):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

        # Node automatically has mailbox
        # self.mailbox = InMemoryChannel(name=f'node:{self.id}')
        self.handled = []

    async def go(self):
        """Continuous worker loop."""
        while not self._stop_flag:
            # Receive from mailbox
            message = await self.mailbox.receive()

            if message.is_shutdown:
                break

            # Process message
            await self.process_message(message)

    async def process_message(self, message):
        """Handle incoming message."""
        payload = message.payload
        self.handled.append(payload)
        print(f"{self.name} handled {payload}")


class CustomMailboxNode(Node):
    def __init__(self, **kwargs):
        # Custom mailbox with size limit
        custom_mailbox = InMemoryChannel(name=f"custom-{uuid4().hex}", maxsize=50)

        super().__init__(mailbox=custom_mailbox, **kwargs)


async def main():
    node_b = WorkerNode(name="node-b")
    print(f"node B's mailbox is {node_b.mailbox.name!r}")
    worker = asyncio.create_task(node_b.go())

    for data in ("alpha", "beta", "gamma"):
        # Node A sends to Node B's mailbox
        await node_b.mailbox.send(ChannelMessage(payload={"task": "process", "data": data}))
    await node_b.mailbox.send(ChannelMessage(payload=None, is_shutdown=True))
    await worker
    print(f"node B stopped after {len(node_b.handled)} messages")

    bounded = CustomMailboxNode(name="bounded")
    for number in range(bounded.mailbox.maxsize):
        bounded.mailbox.send_nowait(ChannelMessage(payload=number))
    try:
        bounded.mailbox.send_nowait(ChannelMessage(payload="one too many"))
    except asyncio.QueueFull:
        print(f"{bounded.mailbox.name} is full at {bounded.mailbox.qsize()} messages")
    return node_b.handled


if __name__ == "__main__":
    asyncio.run(main())
