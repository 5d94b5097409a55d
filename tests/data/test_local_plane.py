"""`local up` gives the pool a file:// store and a SQLite queue in its state dir, in the inventory."""

from __future__ import annotations

from lepton_infra.data import open_queue, open_store
from lepton_infra.inventory import Inventory
from lepton_infra.local import LocalPool


def test_local_up_puts_a_working_store_and_queue_in_the_inventory(local_pool: LocalPool) -> None:
    inventory = Inventory.load(local_pool.inventory_path)
    assert inventory.store == f"file://{(local_pool.state_dir / 'store').resolve()}"
    assert inventory.queue == f"sqlite://{(local_pool.state_dir / 'queue.db').resolve()}"

    store = open_store(inventory.store)
    store.check()
    store.put("hello/world.txt", b"hi")
    assert store.get("hello/world.txt") == b"hi"
    store.delete("hello/world.txt")

    queue = open_queue(inventory.queue)
    queue.check()
    queue.send("ping")
    [message] = queue.receive(visibility_timeout_s=30)
    assert message.body == "ping"
    queue.ack(message)
    assert queue.max_receive_count == 5
