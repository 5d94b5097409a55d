"""One contract suite for the job queue, run against every backend: a local SQLite file and real
emulators of SQS (moto), Pub/Sub (Google's emulator, where installed) and Azure Queues (Azurite)."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from lepton_infra.data.queue import Message, MessageLost, Queue, open_queue
from lepton_infra.errors import ConfigError


def _hidden_for(queue: Queue) -> int:
    # Pub/Sub's shortest ack deadline is 10 s; the others take 2.
    return 10 if queue.url.startswith("projects/") else 2


def _receive_until(queue: Queue, count: int, timeout: float = 40.0, visibility: int = 60) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += queue.receive(max_messages=count - len(got), visibility_timeout_s=visibility, wait_s=1)
    return got


def test_send_receive_ack_delivers_each_message_once(queue_url: str) -> None:
    queue = open_queue(queue_url)
    queue.check()
    bodies = {json.dumps({"job": i}) for i in range(3)}
    for body in bodies:
        queue.send(body)
    got = _receive_until(queue, 3)
    assert {m.body for m in got} == bodies
    assert all(m.receive_count == 1 for m in got)
    for message in got:
        queue.ack(message)
    assert queue.receive(max_messages=10, visibility_timeout_s=1, wait_s=2) == []


def test_unacked_message_reappears_after_its_visibility_timeout(queue_url: str) -> None:
    queue = open_queue(queue_url)
    queue.send("job-a")
    hidden = _hidden_for(queue)
    [first] = _receive_until(queue, 1, visibility=hidden)
    assert queue.receive(visibility_timeout_s=hidden) == []  # hidden from everyone else meanwhile
    [again] = _receive_until(queue, 1, timeout=hidden + 30, visibility=hidden)
    assert (again.id, again.body, again.receive_count) == (first.id, "job-a", 2)
    queue.ack(again)


def test_extended_message_stays_hidden_past_its_first_timeout(queue_url: str) -> None:
    queue = open_queue(queue_url)
    queue.send("long-job")
    hidden = _hidden_for(queue)
    [message] = _receive_until(queue, 1, visibility=hidden)
    queue.extend(message, hidden * 4)
    time.sleep(hidden + 1)
    assert queue.receive(max_messages=1, visibility_timeout_s=hidden, wait_s=1) == []
    queue.extend(message, hidden * 4)  # still ours (Azure hands out a new receipt each time)
    queue.ack(message)


def test_message_received_max_receive_count_times_is_dead_lettered(queue_url: str) -> None:
    queue = open_queue(queue_url)
    queue.send("poison")
    receives = 0
    for _ in range(queue.max_receive_count + 3):
        got = queue.receive(visibility_timeout_s=_hidden_for(queue), wait_s=2)
        if not got:
            continue
        receives += 1
        assert got[0].receive_count == receives
        queue.release(got[0])
        time.sleep(0.2)
    assert receives == queue.max_receive_count
    dead = queue.dead_letters()
    assert [d.body for d in dead] == ["poison"]
    assert "max_receive_count" in dead[0].reason
    assert queue.receive(visibility_timeout_s=1, wait_s=1) == []


def test_dead_letter_now_keeps_the_reason(queue_url: str) -> None:
    queue = open_queue(queue_url)
    queue.send("not json {")
    [message] = _receive_until(queue, 1)
    queue.dead_letter(message, "body is not JSON: Expecting value at 0")
    dead = queue.dead_letters()
    assert [(d.body, d.reason) for d in dead] == [("not json {", "body is not JSON: Expecting value at 0")]
    assert queue.receive(visibility_timeout_s=1, wait_s=1) == []
    assert queue.purge_dead_letters() == 1


def test_missing_queue_is_a_config_error_naming_the_url(queue_url: str) -> None:
    missing = queue_url.replace("lepton-jobs-", "lepton-gone-").replace("queue.db", "gone.db")
    with pytest.raises(ConfigError) as err:
        open_queue(missing).check()
    assert missing in str(err.value)


@pytest.mark.parametrize(
    "url", ["ftp://example/queue", "queue-name", "sqlite://relative.db", "http://example.com/q"]
)
def test_unknown_queue_url_is_a_config_error_naming_it(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        open_queue(url).check()
    assert url in str(err.value)


def _take_all(url: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue = open_queue(url)
    while got := queue.receive(max_messages=2, visibility_timeout_s=60):
        for message in got:
            out.put(message.body)
            queue.ack(message)


def test_local_queue_is_safe_across_processes(tmp_path: Path) -> None:
    from lepton_infra.data.queue_local import create_local_queue

    url = create_local_queue(tmp_path / "q.db")
    queue = open_queue(url)
    for i in range(60):
        queue.send(str(i))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    workers = [ctx.Process(target=_take_all, args=(url, out)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    taken = [out.get(timeout=5) for _ in range(60)]
    assert sorted(taken, key=int) == [str(i) for i in range(60)]  # each exactly once
    assert out.empty()


def test_local_queue_refuses_a_stale_receipt(tmp_path: Path) -> None:
    from lepton_infra.data.queue_local import create_local_queue

    queue = open_queue(create_local_queue(tmp_path / "q.db"))
    queue.send("x")
    [first] = queue.receive(visibility_timeout_s=60)
    queue.release(first)
    [second] = queue.receive(visibility_timeout_s=60)
    with pytest.raises(MessageLost):
        queue.extend(first, 60)
    queue.ack(first)  # a stale ack deletes nothing
    queue.extend(second, 60)
    queue.ack(second)
    assert queue.receive(wait_s=0) == []


def test_draining_dead_letters_takes_each_once_and_empties_the_dead_letter_queue(queue_url: str) -> None:
    queue = open_queue(queue_url)
    for i in range(3):
        queue.send(f"dead-{i}")
    for message in _receive_until(queue, 3):
        queue.dead_letter(message, f"reason of {message.body}")
    batches: list[list[str]] = []
    assert queue.drain_dead_letters(lambda letters: batches.append([d.reason for d in letters])) == 3
    assert sorted(r for batch in batches for r in batch) == [f"reason of dead-{i}" for i in range(3)]
    assert queue.dead_letters() == []
    assert queue.drain_dead_letters(lambda letters: batches.append([])) == 0
