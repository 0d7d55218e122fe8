"""nine.netwait: free ports, waits for a condition or a listening port, deadlines
stretched by the machine's load."""

import os
import socket
import time

import pytest

from nine import netwait
from nine.netwait import ServerExited, free_port, load_factor, scaled, wait_for, wait_port


def test_load_factor_follows_the_load_or_the_environment(monkeypatch):
    monkeypatch.delenv(netwait.SCALE_ENV, raising=False)
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.2, 0.3))
    assert load_factor() == 1.0                       # never below an idle machine's
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0 * cpus, 1.0, 0.5))
    assert load_factor() == pytest.approx(3.0)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 2.0 * cpus, 0.5))
    assert load_factor() == pytest.approx(2.0)        # the five-minute average too
    monkeypatch.setenv(netwait.SCALE_ENV, "4")
    assert load_factor() == 4.0 and scaled(10) == 40.0
    monkeypatch.setenv(netwait.SCALE_ENV, "0")
    with pytest.raises(ValueError):
        load_factor()


def test_wait_for_returns_the_value_or_names_what_it_waited_for(monkeypatch):
    monkeypatch.setenv(netwait.SCALE_ENV, "1")
    calls = []

    def third_time():
        calls.append(1)
        return len(calls) >= 3 and "ready"
    assert wait_for(third_time, 5, "three calls", interval=0.001) == "ready"
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="the impossible"):
        wait_for(lambda: False, 0.1, "the impossible", interval=0.01)
    assert 0.1 <= time.monotonic() - t0 < 2


def test_wait_port_sees_a_listener_and_a_dead_server(monkeypatch):
    monkeypatch.setenv(netwait.SCALE_ENV, "1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        wait_port(port, 5)
        wait_port("127.0.0.1:%d" % port, 5)
        wait_port(("127.0.0.1", port), 5)

    class Dead:
        returncode = 3
        stderr = None

        def poll(self):
            return 3
    with pytest.raises(ServerExited, match="exited with 3"):
        wait_port(free_port(), 5, proc=Dead())
    with pytest.raises(TimeoutError):
        wait_port(free_port(), 0.2)
