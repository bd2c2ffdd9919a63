"""The stack operations of credential sources, with the module's semantics (quirks included).

Each case resolves a ``user_key`` from header ``x-value`` through ``ops``, then ``join: "|"``, so the
credential the filter sends is the whole resulting stack (bottom first); None: the source did not resolve.
"""

# mypy: disable-error-code="import-not-found"
# (conftest is this folder's, which pytest puts on sys.path)

from __future__ import annotations

import base64
from typing import Any

import pytest
from conftest import authrep_params, recording_backend, reply, user_key_config
from google.protobuf import json_format, struct_pb2


def struct_base64(value: dict[str, Any]) -> str:
    """``value`` as a serialized ``google.protobuf.Struct``, base64 encoded: how a header carries one."""
    return base64.b64encode(json_format.ParseDict(value, struct_pb2.Struct()).SerializeToString()).decode()


# The module's stack holds UTF-8 strings, so ``protobuf`` reads a Struct whose encoding is valid UTF-8 (decoded
# from base64 first); one holding a number whose 8 bytes are not UTF-8 fails already at base64_standard.
PROTOBUF = ["base64_standard"]

CASES = [
    # string
    ([{"strlen": {"min": 3}}], "ab", None),
    ([{"strlen": {"min": 3, "max": 3}}], "abc", "abc"),
    ([{"strlen": {"max": 2, "mode": "utf8"}}], "é", "é"),          # 2 bytes
    ([{"strlen": {"max": 2, "mode": "utf8"}}], "éa", None),         # 3 bytes: utf8 mode counts bytes too
    (["strrev"], "abc", "cba"),
    ([{"split": {}}], "a:b:c", "a|b|c"),
    ([{"split": {"max": 2}}], "a:b:c", "a|b:c"),                     # max = pieces
    ([{"split": {"separator": "-", "max": 1}}], "a-b", "a-b"),
    ([{"rsplit": {}}], "a:b:c", "c|b|a"),
    ([{"rsplit": {"max": 2}}], "a:b:c", "c|a:b"),
    ([{"replace": {"pattern": "a", "with": "x", "max": 1}}], "aaa", "xaa"),
    ([{"replace": {"pattern": "a", "with": "x"}}], "aaa", "xxx"),
    ([{"prefix": "Bearer "}], "Bearer t", "Bearer t"),
    ([{"prefix": "Bearer "}], "Basic t", None),
    ([{"suffix": ".x"}], "a.x", "a.x"),
    ([{"substr": "mid"}], "amidb", "amidb"),
    ([{"glob": ["*.example", "a?c"]}], "x.example", "x.example"),
    ([{"glob": ["*.example", "a?c"]}], "ac", "ac"),                  # ? is at most one character
    ([{"glob": ["a+c"]}], "ac", None),                               # + is at least one
    ([{"glob": ["a\\*"]}], "a*", "a*"),
    ([{"glob": ["a\\*"]}], "ab", None),
    # decode
    (["base64_standard"], "bXk=", "my"),
    (["base64_standard"], "bXk", None),                              # padding required
    (["base64_urlsafe"], "Pz8_", "??" + "?"),
    (["base64_standard"], "Pz8_", None),
    (["base64_standard"], "/w==", None),                             # not UTF-8
    # format
    ([{"json": {"path": ["a"], "keys": ["missing", "b"]}}], '{"a": {"b": "v"}}', "v"),
    ([{"json": {"keys": ["0"]}}], '{"only": "v"}', "v"),
    ([{"json": {"path": ["a", "1"], "keys": ["x"]}}], '{"a": [{}, {"x": "second"}]}', "second"),
    ([{"json": {"keys": ["n"]}}], '{"n": 1}', None),                 # the result must be a string
    ([{"json": {"keys": ["a"]}}], "not json", None),
    ([*PROTOBUF, {"protobuf": {"keys": ["client"]}}], struct_base64({"client": "my-app"}), "my-app"),
    ([*PROTOBUF, {"protobuf": {"keys": ["0"]}}], struct_base64({"client": "my-app"}), "my-app"),
    ([*PROTOBUF, {"protobuf": {"path": ["jwt"], "keys": ["missing", "azp"]}}],
     struct_base64({"jwt": {"azp": "x", "aud": ["a", "b"]}}), "x"),
    ([*PROTOBUF, {"protobuf": {"path": ["jwt", "aud"], "keys": ["1"]}}],
     struct_base64({"jwt": {"azp": "x", "aud": ["a", "b"]}}), "b"),
    ([*PROTOBUF, {"protobuf": {"keys": ["n"]}}], struct_base64({"n": 0}), None),   # the result must be a string
    ([*PROTOBUF, {"protobuf": {"keys": ["n"]}}], struct_base64({"n": 1.5}), None),  # not UTF-8: base64 fails
    ([*PROTOBUF, {"protobuf": {"keys": ["a"]}}], base64.b64encode(b"\n\x05ab").decode(), None),  # truncated
    ([{"protobuf": {"keys": ["a"]}}], '{"a": "b"}', None),            # JSON is not the protobuf encoding
    # stack
    ([{"split": {}}, {"length": {"min": 3}}], "a:b", None),
    ([{"split": {}}, {"length": {"max": 2}}], "a:b", "a|b"),
    ([{"push": "x"}], "a", "a|x"),
    ([{"split": {}}, {"pop": None}], "a:b:c", "a|b"),
    ([{"split": {}}, {"pop": 2}], "a:b:c", "a"),
    ([{"split": {}}, {"pop": 3}], "a:b:c", None),                    # an empty stack fails
    ([{"dup": None}], "a", "a|a"),                                   # -1 % 1 == 0: index 0
    ([{"split": {}}, {"dup": None}], "a:b", None),                   # -1 % 2 == -1: out of bounds
    ([{"split": {}}, {"dup": 0}], "a:b", "a|b|a"),
    ([{"split": {}}, {"xchg": "z"}], "a:b", "a|z"),
    ([{"split": {}}, {"take": {"tail": 1}}], "a:b:c", "c"),
    ([{"split": {}}, {"take": {"head": 1, "tail": 1}}], "a:b:c", "a|c"),
    ([{"split": {}}, {"drop": {"head": 1, "tail": 1}}], "a:b:c", "b"),
    ([{"split": {}}, {"swap": {"from": 0, "to": 2}}], "a:b:c", "c|b|a"),
    ([{"split": {}}, {"swap": {"from": -1, "to": 0}}], "a:b:c", None),
    ([{"split": {}}, {"indexes": [2, 0]}], "a:b:c", "c|a"),
    ([{"split": {}}, "reverse"], "a:b:c", "c|b|a"),
    ([{"split": {}}, {"contains": "b"}], "a:b", "a|b"),
    ([{"split": {}}, {"contains": "z"}], "a:b", None),
    ([{"split": {}}, {"flat_map": ["strrev"]}], "ab:cd", "ba|dc"),
    ([{"split": {}}, {"flat_map": [{"prefix": "a"}]}], "ab:cd", None),
    ([{"split": {}}, {"select": [{"prefix": "a"}]}], "ab:cd:ae", "ab|ae"),
    ([{"values": {"level": "debug", "id": "here"}}], "a", "a"),
    # check
    ([{"any": [{"prefix": "x"}, {"prefix": "a"}]}], "ab", "ab"),
    ([{"one_of": [{"prefix": "a"}, {"suffix": "b"}]}], "ab", None),
    ([{"all": [{"prefix": "a"}, {"suffix": "b"}]}], "ab", "ab"),
    ([{"none": [{"prefix": "x"}]}], "ab", "ab"),
    ([{"assert": ["strrev", {"prefix": "b"}]}], "ab", "ab"),         # no side effects
    ([{"refute": [{"prefix": "a"}]}], "ab", None),
    (["ok"], "a", "a"),
    (["fail"], "a", None),
    # control
    ([{"test": {"if": {"prefix": "a"}, "then": ["strrev"], "else": [{"push": "no"}]}}], "ab", "ba"),
    ([{"test": {"if": {"prefix": "x"}, "then": ["strrev"], "else": [{"push": "no"}]}}], "ab", "ab|no"),
    ([{"test": {"if": {"prefix": "x"}, "then": ["strrev"]}}], "ab", "ab"),
    ([{"or": ["fail", "strrev", {"push": "x"}]}], "ab", "ba"),
    ([{"xor": ["ok", "ok"]}], "ab", None),
    ([{"xor": ["fail", {"push": "x"}]}], "ab", "ab|x"),
    ([{"and": ["strrev", {"push": "x"}]}], "ab", "ba|x"),
    ([{"cloned": {"ops": ["strrev"]}}], "ab", "ab|ba"),
    ([{"cloned": {"result": "prepend", "ops": ["strrev"]}}], "ab", "ba|ab"),
    ([{"split": {}}, {"partial": {"ops": ["strrev"]}}], "ab:cd", "ab|dc"),
    ([{"split": {}}, {"partial": {"ops": ["strrev"], "max": 5}}], "ab:cd", "ab|dc"),   # capped at 1
    ([{"split": {}}, {"partial": {"ops": ["strrev"], "max": 0}}], "ab:cd", None),
    ([{"split": {}}, {"top": [{"split": {"separator": "b"}}]}], "ab:cbd", "ab|c|d"),
    ([{"log": {"level": "warn", "msg": "seen"}}], "a", "a"),
]


@pytest.mark.parametrize(("ops", "value", "expected"), CASES,
                         ids=[f"{index}-{case[1]}" for index, case in enumerate(CASES)])
def test_operation(filter_module, proxy_host, ops, value, expected):
    calls = recording_backend(proxy_host)
    config = user_key_config()
    config["services"][0]["credentials"] = {"user_key": [{"header": {"keys": ["x-value"],
                                                                     "ops": [*ops, {"join": "|"}]}}]}
    with filter_module(config=config) as plugin:
        result = reply(plugin.exchange("GET", "/", headers={"x-value": value}))
        if expected is None:
            assert result == (403, "Authentication parameters missing\n")
            return
        assert result is None
    (user_key,) = [value for name, value in authrep_params(calls[0]) if name == "user_key"]
    from urllib.parse import unquote
    assert unquote(user_key) == expected


def test_log_and_values_write_to_envoys_log(filter_module, proxy_host):
    recording_backend(proxy_host)
    config = user_key_config()
    config["services"][0]["credentials"] = {"user_key": [{"header": {"keys": ["x-value"], "ops": [
        {"log": {"level": "warn", "msg": "looking"}}, {"split": {}}, {"values": {"id": "split"}}]}}]}
    with filter_module(config=config) as plugin:
        plugin.exchange("GET", "/", headers={"x-value": "a:b"})
        messages = plugin.log_messages()
    assert "[3scale-auth/config] looking" in messages
    assert '[3scale-auth/stack] values at split: "a", "b"' in messages


def test_logging_operations_log_on_every_request(filter_module, proxy_host):
    """A source whose ops log is resolved afresh each time (not memoised), so each request logs."""
    recording_backend(proxy_host)
    config = user_key_config()
    config["services"][0]["credentials"] = {"user_key": [{"header": {"keys": ["x-value"], "ops": [
        {"test": {"if": {"log": {"msg": "looking"}}, "then": []}}]}}]}
    with filter_module(config=config) as plugin:
        for _ in range(3):
            plugin.exchange("GET", "/", headers={"x-value": "a"})
        messages = plugin.log_messages()
    assert messages.count("[3scale-auth/config] looking") == 3
