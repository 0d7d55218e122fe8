"""Fuzzing nine: the 9P decoder and a live server, in 9P2000, 9P2000.u and 9P2000.L.

    python3 -m fuzz --frames N --seed S --mode decoder|live|both [--dialect D ...]

fuzz.frames makes valid frames of every message and damages them; fuzz.decoder runs
them through the codec (round trips, the construct reference in tests/reference.py,
and the only outcomes allowed: a message or ProtocolError); fuzz.live sends plausible
but damaged request streams (fuzz.requests) to a server (fuzz.target) over several
connections and watches it for death, hangs, stalls, tracebacks, malformed replies,
memory growth and files made outside its export; fuzz.findings keeps what they find
and saves reproductions (`python3 -m fuzz --replay FILE`).  tests/test_fuzz.py runs a
fixed-seed slice of both.
"""
