"""Local-mode counting in Envoy's shared data, shared by every worker VM of the plugin, never over-admitting.

Shared data offers get -> (value, cas) and set(value, cas): a set with the
cas of an earlier get fails (CasMismatch) when another VM wrote the key in
between.  Every decision here is one read, then, when the request is
admitted, one conditional write of the new state; a lost race retries from
a fresh read, so no admission is ever based on a stale count.  A denial
writes nothing (the state it read stays true).

The one write the host cannot make conditional is creating a key: a set on
an absent key succeeds whatever cas it carries, so two VMs that both saw a
bucket absent could overwrite each other's first admission.  Buckets are
therefore created only while holding the plugin's creation lock, itself a
key made when the plugin is configured (:func:`ensure_lock`) and taken with
a conditional write.  A lock whose holder vanished (a VM torn down inside
the few host calls it is held for) is taken over after ``LOCK_LEASE_NS``.

Values are short text: fixed window ``"<window number>:<count>"``; token
bucket ``"<tokens × window_ns>:<last refill ns>"`` (integers: the refill
rate, requests_per_unit per window_ns, stays exact).
"""

from __future__ import annotations

import random

from meshext.sdk import CasMismatch, SharedData

MAX_ATTEMPTS = 1000  # retries of one decision; each retry means another VM made progress
LOCK_LEASE_NS = 5_000_000_000
FREE = "free"


class ContentionError(RuntimeError):
    """No decision after MAX_ATTEMPTS reads (the caller denies: never over-admit)."""


class Decision:
    """What a bucket said: admitted or not, and what the x-ratelimit-* headers report."""

    __slots__ = ("allowed", "limit", "remaining", "reset_seconds")

    def __init__(self, allowed: bool, limit: int, remaining: int, reset_seconds: int) -> None:
        self.allowed = allowed
        self.limit = limit
        self.remaining = remaining
        self.reset_seconds = reset_seconds


def ensure_lock(lock_key: str) -> None:
    """Create the creation lock (at configure time, before this VM serves a request)."""
    if SharedData.get(lock_key) is None:
        SharedData.set(lock_key, FREE)


def _create(lock_key: str, key: str, initial: str, now_ns: int) -> None:
    """Write ``initial`` into ``key`` if it is still absent, holding the creation lock."""
    token = f"{random.getrandbits(48):x}"
    for _ in range(MAX_ATTEMPTS):
        lock = SharedData.get(lock_key)
        if lock is None:
            raise ContentionError(f"creation lock {lock_key!r} is missing (the plugin was not configured)")
        value, cas = lock
        state = value.decode()
        if state != FREE and int(state.split(":")[1]) > now_ns:
            continue  # held: another VM is creating a key, for a few host calls
        try:
            SharedData.set(lock_key, f"held:{now_ns + LOCK_LEASE_NS}:{token}", cas)
        except CasMismatch:
            continue
        try:
            if SharedData.get(key) is None:
                SharedData.set(key, initial)  # unconditional, safe: only the lock holder creates keys
        finally:
            held = SharedData.get(lock_key)
            if held is not None and held[0].decode().endswith(":" + token):
                SharedData.set(lock_key, FREE, held[1])
        return
    raise ContentionError(f"creation lock {lock_key!r} stayed held for {MAX_ATTEMPTS} attempts")


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def fixed_window(lock_key: str, key: str, limit: int, window_ns: int, now_ns: int) -> Decision:
    """Admit when fewer than ``limit`` requests were admitted in the current window (aligned to the epoch)."""
    window = now_ns // window_ns
    reset = _ceil_div((window + 1) * window_ns - now_ns, 1_000_000_000)
    for _ in range(MAX_ATTEMPTS):
        current = SharedData.get(key)
        if current is None:
            _create(lock_key, key, f"{window}:0", now_ns)
            continue
        value, cas = current
        started, _, count_text = value.decode().partition(":")
        count = int(count_text) if int(started) == window else 0
        if count >= limit:
            return Decision(False, limit, 0, reset)
        try:
            SharedData.set(key, f"{window}:{count + 1}", cas)
        except CasMismatch:
            continue
        return Decision(True, limit, limit - count - 1, reset)
    raise ContentionError(f"bucket {key!r}: no decision after {MAX_ATTEMPTS} attempts")


def token_bucket(lock_key: str, key: str, rate: int, capacity: int, window_ns: int, now_ns: int) -> Decision:
    """Admit when the bucket holds a token: ``rate`` tokens per window, at most ``capacity``, starts full."""
    full = capacity * window_ns
    for _ in range(MAX_ATTEMPTS):
        current = SharedData.get(key)
        if current is None:
            _create(lock_key, key, f"{full}:{now_ns}", now_ns)
            continue
        value, cas = current
        tokens_text, _, last_text = value.decode().partition(":")
        last = int(last_text)
        tokens = min(full, int(tokens_text) + max(0, now_ns - last) * rate)
        if tokens < window_ns:  # less than one token
            wait_ns = _ceil_div(window_ns - tokens, rate)
            return Decision(False, capacity, 0, _ceil_div(wait_ns, 1_000_000_000))
        tokens -= window_ns
        try:
            SharedData.set(key, f"{tokens}:{max(now_ns, last)}", cas)
        except CasMismatch:
            continue
        until_full = _ceil_div(_ceil_div(full - tokens, rate), 1_000_000_000)
        return Decision(True, capacity, tokens // window_ns, until_full)
    raise ContentionError(f"bucket {key!r}: no decision after {MAX_ATTEMPTS} attempts")
