"""nine.group.gather: many members' reads and writes without a greenlet each.  A node
whose post answers at once (a dead connection calls the reply callback before post
returns) is done, never left pending: a write with no timeout once counted it late and
failed with TypeError, which failed every member under that mux (CI, test_pcp)."""

import errno

import gevent

from nine.group.gather import Gather


def instant_failure(offset, data_or_count, reply):
    reply(None, OSError(errno.EIO, "child gone"))
    return lambda: None


def later(result):
    def post(offset, data_or_count, reply):
        g = gevent.spawn_later(0.01, reply, result(data_or_count), None)
        return lambda: g.kill(block=False)
    return post


def test_write_answered_during_post_is_not_pending():
    g = Gather()
    g.add_write("dead", instant_failure, 0, b"abc")
    g.add_write("alive", later(len), 0, b"abc")
    assert g.wait(None) == []
    assert g.results["alive"] == 3
    assert isinstance(g.results["dead"], OSError)
    assert g.results["dead"].errno == errno.EIO
    assert g.pending == {}


def test_read_answered_during_post_is_not_pending():
    g = Gather()
    g.add("dead", instant_failure, 0, 10, 10)
    g.add("alive", later(lambda n: b"x" * n), 0, 10, 10)
    assert g.wait(None) == []
    assert g.results["alive"] == b"x" * 10
    assert isinstance(g.results["dead"], OSError)


def test_write_continued_synchronously_then_failing():
    """The first request answers short at once, the second fails at once: one result,
    the failure, and nothing pending."""
    calls = []

    def post(offset, data, reply):
        calls.append(offset)
        if len(calls) == 1:
            reply(1, None)
        else:
            reply(None, OSError(errno.ENOSPC, "full"))
        return lambda: None
    g = Gather()
    g.add_write("m", post, 100, b"abcd")
    assert g.wait(None) == []
    assert calls == [100, 101]
    assert g.results["m"].errno == errno.ENOSPC


def test_member_that_never_answers_is_late_and_flushed():
    flushed = []

    def never(offset, data, reply):
        return lambda: flushed.append(offset)
    g = Gather()
    g.add_write("hung", never, 7, b"x")
    assert g.wait(0.05) == ["hung"]
    assert flushed == [7]
