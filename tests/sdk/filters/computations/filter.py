"""A filter that computes much with CPython's C code and answers the repr.

`GET /floats`, `/integers` or `/library` answers the repr of a long list:
float formatting, parsing, rounding and libm; big-integer arithmetic; hashes,
struct, array, json, re, random, datetime, Unicode case mapping.  Its module
with every function interpreted must answer byte for byte what the compiled
one does (tests/sdk/test_sdk_interpreter.py).
"""

import array  # noqa: E401
import binascii
import bisect
import collections
import datetime
import decimal
import fractions
import hashlib
import heapq
import itertools  # noqa: E401
import json
import math
import operator
import random
import re
import statistics
import string
import struct
import textwrap

from meshext.sdk import HttpContext, RootContext


def outcome(function, *args, **keywords):
    """What `function(*args, **keywords)` returns, or the name of what it raised."""
    try:
        return function(*args, **keywords)
    except Exception as error:  # noqa: BLE001 - an error is an answer too
        return type(error).__name__


FLOATS = [0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.1, 1 / 3, 1e300, -1e-300, 5e-324, float("inf"),
          float("-inf"), float("nan"), 3.4028234663852886e38, 3.5e38, 1.17e-38, 1e-45, 2.0**53 + 2, 2.0**63,
          -(2.0**63), 2.0**64, 2.0**31, -(2.0**31) - 1, 4294967295.5, 123456789.987654321, 7.0, -7.9]


def floats():
    answer = []
    for v in FLOATS:
        answer.append([
            repr(v), str(v), v.hex(), float.fromhex(v.hex()), format(v, ".17g"), format(v, "e"), format(v, ".3%"),
            format(v, "f"), outcome(float, repr(v)), outcome(v.as_integer_ratio),
            outcome(struct.pack, "<f", v), struct.pack("<d", v), outcome(struct.pack, "<e", v),
            outcome(lambda single: struct.unpack("<f", struct.pack("<f", single)), v),
            outcome(math.floor, v), outcome(math.ceil, v), outcome(round, v),
            outcome(round, v, 3), outcome(math.trunc, v), outcome(int, v),
            outcome(math.sqrt, v), math.copysign(1, v), outcome(math.fmod, v, 0.7), math.frexp(v),
            outcome(math.ldexp, v, 3), math.modf(v), outcome(math.exp, v), outcome(math.log, v),
            outcome(math.log2, v), outcome(math.sin, v), outcome(math.atan2, v, 1.5),
            outcome(math.pow, v, 0.5), outcome(operator.pow, v, 2), outcome(operator.floordiv, v, 0.3),
            outcome(operator.mod, v, -0.3), outcome(divmod, v, 2), v == v, v < 1, v >= -1, max(v, 0.0),
            min(v, -0.0), math.isclose(v, 1.0), outcome(math.gamma, v), outcome(math.erf, v),
            outcome(math.hypot, v, 3), outcome(operator.pow, complex(v, 1), 2), abs(complex(v, -v)),
        ])
    answer.append([float(text) for text in ("1e23", "8.98846567431158e307", "2.2250738585072011e-308", "0.1e-5",
                                            "-nan", "+inf", "1_000.5", "  12.5  ", "4.35", "9007199254740993")])
    answer.append((math.fsum([0.1] * 10), sum([0.1] * 10), math.prod([1.1, 2.2, 3.3])))
    return answer


INTEGERS = [0, 1, -1, 7, -7, 2**31 - 1, -(2**31), 2**32, 2**63 - 1, -(2**63), 2**64 + 5, -(2**100) + 3,
            10**40 + 123, 3**200]


def integers():
    answer = []
    for a in INTEGERS:
        for b in (1, -1, 3, -3, 2**31, 2**64 - 1, -(10**20), 0):
            answer.append((
                outcome(operator.floordiv, a, b), outcome(operator.mod, a, b), outcome(divmod, a, b), a * b, a - b,
                a << (abs(b) % 70), a >> (abs(b) % 70), a & b, a | b, a ^ b, outcome(pow, a, 3, b),
                outcome(operator.truediv, a, b), a ** (abs(b) % 5), a > b, a == b,
            ))
        answer.append((
            a.bit_length(), outcome(a.to_bytes, 20, "little", signed=True),
            int.from_bytes(abs(a).to_bytes(40, "big"), "little"), hex(a), oct(a), bin(a), str(a), int(str(a)), ~a,
            -a, abs(a), float(a), a.bit_count(), format(a, ","), format(a, "_x"), round(a, -2),
        ))
    answer.append(int("123456789" * 50) % 1000000007)
    answer.append(pow(3, 10**5, 10**30 + 57))
    answer.append(str(2**10000)[:50] + str(2**10000)[-50:])
    answer.append((int("zzzz", 36), int("0x_ff", 0), int("-0b101", 0), outcome(int, "12a")))
    answer.append((math.factorial(100), math.comb(100, 37), math.gcd(2**100, 6**50), math.isqrt(10**50 + 7),
                   math.lcm(12, 18, 2**70)))
    return answer


class Point:
    __slots__ = ("x", "y")

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __repr__(self):
        return f"Point({self.x}, {self.y})"

    def __eq__(self, other):
        return (self.x, self.y) == (other.x, other.y)

    def __hash__(self):
        return hash((self.x, self.y))


def numbers_then_doubles():
    for i in range(5):
        sent = yield i
        if sent:
            yield sent * 2


def library():
    data = bytes(range(256)) * 40 + b"meshext"
    answer = [hashlib.new(name, data).hexdigest() for name in ("md5", "sha1", "sha224", "sha256", "sha384", "sha512",
                                                                "sha3_256", "sha3_512", "blake2b", "blake2s")]
    answer.append(hashlib.shake_128(data).hexdigest(40))
    answer.append((binascii.crc32(data), binascii.hexlify(data[:40]), binascii.b2a_base64(data[:100]),
                   binascii.crc_hqx(data, 7)))
    generator = random.Random(12345)
    answer.append([generator.random() for _ in range(5)] + [
        generator.getrandbits(200), generator.randrange(10**30), generator.gauss(0, 1), generator.choice("abcdef"),
        generator.sample(range(1000), 5), generator.uniform(-1, 1), generator.expovariate(2.5)])
    value = {"a": [1, 2.5, -3e-7, None, True, "é\u2603\U0001f600"], "b": {"x": 1e300, "y": -0.0}, "c": list(range(20))}
    text = json.dumps(value, sort_keys=True, indent=1)
    answer.append((text, json.loads(text) == value, json.dumps(value, ensure_ascii=False)))
    answer.append((
        re.findall(r"(\w+)@(\w+)\.com", "alice@example.com, bob@test.com"),
        re.sub(r"\d+", lambda match: str(int(match.group()) * 2), "a1b22c333"), re.split(r"[,;]\s*", "a, b;c,d"),
        bool(re.fullmatch(r"(?i)[a-z]+\d{2,3}", "Hello123")), re.match(r"(?P<x>a+)(b*)", "aaabbc").groupdict(),
        re.compile(r"\bfoo\b", re.M).search("x\nfoo bar").span(), re.findall(r"[α-ω]+", "abc αβγ δ"),
    ))
    singles = array.array("f", [1.1, -2.5, 3.4e38, 1e-40, float("nan")])
    answer.append((singles.tobytes(), array.array("d", singles).tolist()[:4], array.array("i", range(-5, 5)).tobytes(),
                   array.array("Q", [2**64 - 1]).tolist()))
    answer.append(struct.pack("<bBhHiIqQefd?", -1, 255, -300, 65000, -(2**31), 2**32 - 1, -(2**63), 2**64 - 1, 1.5,
                              -0.1, 1e-300, True))
    answer.append(struct.unpack(">qQdf", struct.pack(">qQdf", -5, 7, 2.5, 1.25)))
    counts = collections.Counter("abracadabra" * 3)
    answer.append((counts.most_common(3), list(collections.OrderedDict.fromkeys("hello")),
                   collections.deque(range(10), maxlen=4)))
    heap = [5, 3, 8, 1, 9, 2]
    heapq.heapify(heap)
    answer.append([heapq.heappop(heap) for _ in range(6)])
    answer.append((bisect.bisect([1, 3, 5, 7], 4), list(itertools.permutations("abc", 2)),
                   list(itertools.accumulate([1, 2, 3, 4], lambda x, y: x * y))))
    moment = datetime.datetime(2024, 2, 29, 13, 45, 30, 123456)
    answer.append((moment + datetime.timedelta(days=400, seconds=-1), moment.isoformat(),
                   moment.strftime("%A %d %B %Y %j"), (moment - datetime.datetime(1970, 1, 1)).total_seconds(),
                   moment.isocalendar(), datetime.date.fromordinal(700000)))
    context = decimal.Context(prec=40)
    answer.append((str(context.divide(decimal.Decimal(1), decimal.Decimal(7))), str(context.sqrt(decimal.Decimal(2))),
                   str(decimal.Decimal("1.1") * decimal.Decimal("3.3"))))
    answer.append((fractions.Fraction(3, 7) ** 5 + fractions.Fraction("1.25"), fractions.Fraction(0.1),
                   statistics.mean([1, 2, 3.5]), statistics.stdev([1.5, 2.5, 2.5, 2.75, 3.25, 4.75]),
                   statistics.median([3, 1, 2, 7])))
    answer.append((textwrap.fill("the quick brown fox jumps over the lazy dog " * 5, 30),
                   string.capwords("hello world foo")))
    unicode = "Straße ÉCOLE İstanbul ǅ ﬁ ß Σίσυφος \U0001f600 ﬀ"
    answer.append((unicode.upper(), unicode.lower(), unicode.casefold(), unicode.title(), unicode.swapcase(),
                   unicode.encode("utf-16"), unicode.encode("utf-32-be"), unicode.encode().decode("latin-1"),
                   [c.isalpha() for c in unicode], unicode.isidentifier(), unicode[::-1], unicode.center(60, "*")))
    answer.append(("%5.2f|%-8s|%x|%o|%e|%g|%c" % (3.14159, "ab", 255, 8, 12345.678, 0.00001234, 65),  # noqa: UP031
                   f"{1234567.891:,.2f}", "{:>10}".format("x"), ["a", "b", ",c"], "abc".replace("b", "β")))
    answer.append(sorted([(3, "c"), (1, "a"), (2, "b"), (1, "z")], key=lambda pair: (-pair[0], pair[1])))
    answer.append(sorted(set(range(50)) ^ set(range(25, 75))))
    answer.append((bytes.fromhex("deadbeef").hex(":"), bytearray(b"abc") * 3, memoryview(b"abcdef")[1:4].tobytes(),
                   b"a\x00b".split(b"\x00")))
    generated = numbers_then_doubles()
    answer.append((next(generated), generated.send(10), list(generated)))
    answer.append(({Point(1, 2): 3}[Point(1, 2)], [Point(i, -i) for i in range(3)]))
    try:
        raise KeyError("k") from ValueError("v")
    except KeyError as error:
        answer.append((repr(error), repr(error.__cause__)))
    return answer


PROBES = {"/floats": floats, "/integers": integers, "/library": library}


class Computation(HttpContext):
    def on_request_headers(self, end_of_stream):
        probe = PROBES[self.request.headers.get(":path")]
        return self.send_local_response(200, repr(probe()))


class Root(RootContext):
    http_context = Computation
