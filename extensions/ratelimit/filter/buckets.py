"""Local-mode counting in Envoy's shared data, shared by every worker VM of the plugin, never over-admitting.

Shared data offers get -> (value, cas) and set(value, cas): a set with the
cas of an earlier get fails (CasMismatch) when another VM wrote the key in
between.  Every visit to a bucket is one read, then, when it admits, one
conditional write of the new state; a lost race retries from a fresh read,
so no admission is ever based on a stale count.  A denial writes nothing
(the state it read stays true).

**Leases.**  A visit that finds plenty left takes more than the one token
its request needs: up to ``MAX_LEASE`` tokens, never more than a
``LEASE_SHARE``-th of what is left, with the same conditional write.  The
worker spends the rest of its lease on its next requests without touching
shared data (no host call, nothing to decode).  A lease is only good within
the epoch it was taken in (fixed window: the window; token bucket:
``LEASE_EPOCH_NS``), so it never outlives the state it was taken from:

- fixed window: leased tokens are counted in the window's count when taken,
  so the window never admits more than its limit;
- token bucket: the state also records the tokens leased in the current
  epoch, and refills stop at capacity minus those, so tokens in the bucket
  plus tokens held in leases never exceed the capacity: no interval admits
  more than a strict bucket would (capacity + rate × its length).

What a lease can cost is the other way round: tokens a worker still holds
when its epoch ends, or while another worker is denied, are not admitted
(at most one lease per bucket and worker, each ≤ 1/``LEASE_SHARE`` of what
was left).  The x-ratelimit-remaining a worker reports from its lease is
what was left when it took the lease, less what it spent since.

The one write the host cannot make conditional is creating a key: a set on
an absent key succeeds whatever cas it carries, so two VMs that both saw a
bucket absent could overwrite each other's first admission.  Buckets are
therefore created only while holding the plugin's creation lock, itself a
key made when the plugin is configured (:func:`ensure_lock`) and taken with
a conditional write.  A lock whose holder vanished (a VM torn down inside
the few host calls it is held for) is taken over after ``LOCK_LEASE_NS``.

Values are short text: fixed window ``"<window number>:<count>"``; token
bucket ``"<tokens × window_ns>:<last refill ns>:<epoch>:<tokens leased in
it>"`` (integers: the refill rate, requests_per_unit per window_ns, stays
exact).
"""

from __future__ import annotations

import random

from meshext.sdk import CasMismatch, SharedData

MAX_ATTEMPTS = 1000  # retries of one decision; each retry means another VM made progress
LOCK_LEASE_NS = 5_000_000_000
FREE = "free"
MAX_LEASE = 32  # tokens one visit to shared data may take: 1 visit per 32 requests at most
LEASE_SHARE = 64  # a lease takes at most 1/64 of what is left (so small limits are never leased)
LEASE_EPOCH_NS = 1_000_000_000  # token bucket: a lease is good until the end of the second it was taken in


class ContentionError(RuntimeError):
    """No decision after MAX_ATTEMPTS reads (the caller denies: never over-admit)."""


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


def _lease_size(left: int) -> int:
    """Tokens to take when ``left`` (≥ 1) are available: 1 (no lease) unless plenty are."""
    return max(1, min(MAX_LEASE, left // LEASE_SHARE))


class Bucket:
    """One descriptor's count in shared data, and this VM's lease on it.

    ``take`` answers (admitted, remaining, reset seconds) for one request:
    from the lease while it holds tokens of the current epoch (no host call),
    else from a visit to shared data."""

    __slots__ = ("key", "limit", "capacity", "window_ns", "epoch_ns", "lease_epoch", "leased", "remaining",
                 "reset_at_ns")

    def __init__(self, key: str, limit: int, capacity: int, window_seconds: int, epoch_ns: int) -> None:
        self.key = key
        self.limit = limit
        self.capacity = capacity  # what x-ratelimit-limit reports
        self.window_ns = window_seconds * 1_000_000_000
        self.epoch_ns = epoch_ns  # how long a lease is good: from a multiple of it to the next
        self.lease_epoch = -1
        self.leased = 0  # tokens of the lease not spent yet
        self.remaining = 0  # what the bucket had left after this VM's last admission, as the lease knows it
        self.reset_at_ns = 0  # when the window resets (the bucket is full), as of the lease

    def take(self, lock_key: str, now_ns: int) -> tuple[bool, int, int]:
        """Admit one request or not: (admitted, remaining, reset seconds)."""
        if self.leased and now_ns // self.epoch_ns == self.lease_epoch:
            self.leased -= 1
            # remaining ≥ leased > 0: it counts the lease's tokens too
            remaining = self.remaining = self.remaining - 1
            return True, remaining, -((now_ns - self.reset_at_ns) // 1_000_000_000)
        return self.visit(lock_key, now_ns)

    def visit(self, lock_key: str, now_ns: int) -> tuple[bool, int, int]:
        """Decide from shared data, taking a lease when plenty is left."""
        raise NotImplementedError

    def hold(self, epoch: int, tokens: int, remaining: int, reset: int, now_ns: int) -> tuple[bool, int, int]:
        """Keep ``tokens`` leased in ``epoch`` for the next requests; the answer for this one (admitted)."""
        self.lease_epoch = epoch
        self.leased = tokens
        self.remaining = remaining
        self.reset_at_ns = now_ns + reset * 1_000_000_000
        return True, remaining, reset


class FixedWindow(Bucket):
    """At most ``limit`` admissions per window (aligned to the Unix epoch); a lease lasts its window."""

    __slots__ = ()

    def __init__(self, key: str, limit: int, window_seconds: int) -> None:
        super().__init__(key, limit, limit, window_seconds, window_seconds * 1_000_000_000)

    def visit(self, lock_key: str, now_ns: int) -> tuple[bool, int, int]:
        """Admit when fewer than ``limit`` requests were admitted in the current window."""
        window_ns = self.window_ns
        window = now_ns // window_ns
        reset = _ceil_div((window + 1) * window_ns - now_ns, 1_000_000_000)
        key, limit = self.key, self.limit
        for _ in range(MAX_ATTEMPTS):
            current = SharedData.get(key)
            if current is None:
                _create(lock_key, key, f"{window}:0", now_ns)
                continue
            value, cas = current
            started, _, count_text = value.decode().partition(":")
            count = int(count_text) if int(started) == window else 0
            if count >= limit:
                return False, 0, reset
            taken = _lease_size(limit - count)
            try:
                SharedData.set(key, f"{window}:{count + taken}", cas)
            except CasMismatch:
                continue
            return self.hold(window, taken - 1, limit - count - 1, reset, now_ns)
        raise ContentionError(f"bucket {key!r}: no decision after {MAX_ATTEMPTS} attempts")


class TokenBucket(Bucket):
    """``limit`` tokens per window, at most ``limit + burst`` held, starts full; a lease lasts LEASE_EPOCH_NS."""

    __slots__ = ()

    def __init__(self, key: str, limit: int, burst: int, window_seconds: int) -> None:
        super().__init__(key, limit, limit + burst, window_seconds, LEASE_EPOCH_NS)

    def visit(self, lock_key: str, now_ns: int) -> tuple[bool, int, int]:
        """Admit when the bucket holds a token.  The reset is the seconds until full (admitted) or until the
        next token (denied)."""
        window_ns, rate, key = self.window_ns, self.limit, self.key
        full = self.capacity * window_ns
        epoch = now_ns // LEASE_EPOCH_NS
        for _ in range(MAX_ATTEMPTS):
            current = SharedData.get(key)
            if current is None:
                _create(lock_key, key, f"{full}:{now_ns}:{epoch}:0", now_ns)
                continue
            value, cas = current
            tokens_text, last_text, epoch_text, leased_text = value.decode().split(":")
            last = int(last_text)
            # Leases of an earlier epoch are over: their unspent tokens are gone, not owed.
            leased = int(leased_text) if int(epoch_text) == epoch else 0
            tokens = min(full - leased * window_ns, int(tokens_text) + max(0, now_ns - last) * rate)
            if tokens < window_ns:  # less than one token
                wait_ns = _ceil_div(window_ns - tokens, rate)
                return False, 0, _ceil_div(wait_ns, 1_000_000_000)
            taken = _lease_size(tokens // window_ns)
            tokens -= taken * window_ns
            try:
                SharedData.set(key, f"{tokens}:{max(now_ns, last)}:{epoch}:{leased + taken - 1}", cas)
            except CasMismatch:
                continue
            held = (taken - 1) * window_ns
            until_full = _ceil_div(_ceil_div(full - tokens - held, rate), 1_000_000_000)
            return self.hold(epoch, taken - 1, (tokens + held) // window_ns, until_full, now_ns)
        raise ContentionError(f"bucket {key!r}: no decision after {MAX_ATTEMPTS} attempts")
