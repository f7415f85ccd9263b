"""The loader's queues: small messages written by the thread that puts them, large ones fed."""

from __future__ import annotations

import multiprocessing
import pickle
import threading

import pytest

from radiobject.ml._queues import DIRECT_BYTES, DirectQueue, with_direct
from radiobject.ml._start_method import mp_context


@pytest.fixture
def q():
    queue = DirectQueue(ctx=multiprocessing.get_context("spawn"))
    yield queue
    queue.close()
    queue.join_thread()


def test_small_messages_start_no_feeder_thread(q):
    for i in range(50):
        q.put(("batch", i, b"x" * 500))
    assert [q.get(timeout=10)[1] for _ in range(50)] == list(range(50))
    assert q.direct_puts == 50
    assert not q.feeder_started()


def test_a_large_message_goes_through_the_feeder_and_the_order_is_kept(q):
    q.put("first")
    q.put(b"L" * (4 * DIRECT_BYTES))  # larger than a direct write may be
    q.put("after")  # small, but a large one is queued before it: the feeder keeps the order
    assert q.get(timeout=10) == "first"
    assert q.get(timeout=10) == b"L" * (4 * DIRECT_BYTES)  # pickled once, delivered as it was
    assert q.get(timeout=10) == "after"
    assert q.direct_puts == 1
    assert q.feeder_started()


def test_an_unpicklable_message_fails_in_the_caller(q):
    lock = threading.Lock()
    with pytest.raises((TypeError, pickle.PicklingError)):
        q.put({"lock": lock})  # a feeder thread would only print it, and the reader would wait
    q.put("next")  # the queue is fine: nothing half-written
    assert q.get(timeout=10) == "next"


def test_a_closed_queue_refuses_a_message(q):
    q.close()
    with pytest.raises(ValueError, match="is closed"):
        q.put("late")


def test_radiobjects_contexts_make_direct_queues_and_a_users_context_is_kept():
    for method in ("forkserver", "spawn", "fork"):
        ctx = mp_context(method)
        assert ctx.get_start_method() == method
        made = ctx.Queue()
        assert isinstance(made, DirectQueue)
        made.close()
    users = multiprocessing.get_context("spawn")
    assert mp_context(users) is users  # a context given is used as it is
    assert not isinstance(users.Queue(), DirectQueue)
    assert isinstance(with_direct(users).Queue(), DirectQueue)
