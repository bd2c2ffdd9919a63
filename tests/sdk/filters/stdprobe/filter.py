"""A filter that imports much of the stdlib and answers what works inside the module.

`x-probe: json` decodes the request body with json.loads and answers the
value or the exception; `x-probe: query` takes a JSON body
{"walk": DIR, "import": [module, ...], "lookup": [codec, ...]} and answers
the files under DIR and, for each name, "ok" or the exception it raised.
(tests/sdk/test_sdk_stdlib_reach.py)
"""
# ruff: noqa: E401, F401, I001
# (importing these modules, many to a line, is the probe)

import abc, argparse, array, base64, binascii, bisect, calendar, codecs, collections, colorsys
import contextlib, contextvars, copy, csv, dataclasses, datetime, decimal, difflib, email, enum
import fnmatch, fractions, functools, getopt, gettext, glob, graphlib, hashlib, heapq, hmac, html
import html.parser, http, importlib, importlib.util, inspect, io, ipaddress, itertools, json, keyword
import locale, logging, math, mimetypes, numbers, operator, optparse, os, pathlib, pickle, pprint
import queue, quopri, random, re, sched, secrets, shlex, shutil, statistics, string, struct, sys
import sysconfig, tarfile, tempfile, textwrap, time, tomllib, types, typing, urllib.parse, uuid
import warnings, weakref, xml.dom.minidom, xml.etree.ElementTree, xml.sax, zipfile, zoneinfo

from meshext.sdk import Action, HttpContext, RootContext


def outcome(action, name):
    try:
        action(name)
    except BaseException as error:  # noqa: BLE001 - the test wants every failure
        return f"{type(error).__name__}: {error}"
    return "ok"


def files_under(top):
    return sorted(os.path.join(folder, file) for folder, _, files in os.walk(top) for file in files)


def decoded(body):
    try:
        return {"value": json.loads(body)}
    except BaseException as error:  # noqa: BLE001
        return {"error": type(error).__name__, "value_error": isinstance(error, ValueError)}


class Probe(HttpContext):
    def on_request_headers(self, end_of_stream):
        self.kind = self.request.headers.get("x-probe")  # headers are not readable in body callbacks
        return Action.CONTINUE

    def on_request_body(self, body_size, end_of_stream):
        if not end_of_stream:
            return Action.PAUSE
        body = self.request.body.read()
        if self.kind == "json":
            return self.send_local_response(200, json.dumps(decoded(body)))
        asked = json.loads(body)
        answer = {
            "files": files_under(asked["walk"]) if "walk" in asked else [],
            "imports": {name: outcome(importlib.import_module, name) for name in asked.get("import", [])},
            "lookups": {name: outcome(codecs.lookup, name) for name in asked.get("lookup", [])},
        }
        return self.send_local_response(200, json.dumps(answer))


class Root(RootContext):
    http_context = Probe
