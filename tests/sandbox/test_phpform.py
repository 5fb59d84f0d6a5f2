"""PHP form semantics: the table is what PHP 8 puts in $_POST for each body."""

from __future__ import annotations

import pytest
import requests

from sandbox.whmcs.phpform import as_list, parse, parse_multipart, split_name, truthy


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # brackets make arrays; indices keep their keys, [] appends
        ("pid[0]=7&pid[1]=9", {"pid": {0: "7", 1: "9"}}),
        ("pid[]=7&pid[]=9", {"pid": {0: "7", 1: "9"}}),
        ("pid%5B0%5D=7&pid%5B1%5D=9", {"pid": {0: "7", 1: "9"}}),
        ("pid[5]=7&pid[]=9", {"pid": {5: "7", 6: "9"}}),
        ("pid[-3]=7&pid[]=9", {"pid": {-3: "7", 0: "9"}}),
        ("pid[1]=9&pid[0]=7", {"pid": {1: "9", 0: "7"}}),
        # a repeated key without brackets is not an array: the last value wins
        ("pid=7&pid=9", {"pid": "9"}),
        ("pid[0]=7&pid=9", {"pid": "9"}),
        ("pid=7&pid[0]=9", {"pid": {0: "9"}}),
        # string keys, nesting, numeric-looking keys
        ("domainrenewals[example.com]=2", {"domainrenewals": {"example.com": "2"}}),
        ("a[b][c]=1&a[b][d]=2", {"a": {"b": {"c": "1", "d": "2"}}}),
        ("a[x][]=1&a[x][]=2", {"a": {"x": {0: "1", 1: "2"}}}),
        ("a[][x]=1&a[][x]=2", {"a": {0: {"x": "1"}, 1: {"x": "2"}}}),
        ("a[01]=1&a[1]=2", {"a": {"01": "1", 1: "2"}}),
        ("a[ ]=1", {"a": {0: "1"}}),
        ("a[ x]=1", {"a": {" x": "1"}}),
        # PHP's name mangling and malformed brackets
        ("a.b=1&c d=2", {"a_b": "1", "c_d": "2"}),
        ("  lead=1", {"lead": "1"}),
        ("a[b=1", {"a_b": "1"}),
        ("a[b.c=1", {"a_b_c": "1"}),
        ("a[b]c=1", {"a": {"b": "1"}}),
        ("a[b][c=1", {"a": {"b": "1"}}),
        ("a[b[c]=1", {"a": {"b[c": "1"}}),
        ("[x]=1&=2", {}),
        # decoding and empty values
        ("notes=SF-ORDER%3A801+x", {"notes": "SF-ORDER:801 x"}),
        ("flag&x=&&y", {"flag": "", "x": "", "y": ""}),
        ("k=a%ZZb", {"k": "a%ZZb"}),
        ("k=caf%C3%A9", {"k": "café"}),
    ],
)
def test_parse_like_php(body, expected):
    assert parse(body) == expected


def test_keys_compare_as_php_does():
    parsed = parse("pid[0]=7&billingcycle[0]=annually")
    assert list(parsed["pid"]) == [0]
    assert parsed["billingcycle"][0] == "annually"


def test_too_deep_names_are_dropped():
    assert parse("a" + "[x]" * 64 + "=1") != {}
    assert parse("a" + "[x]" * 65 + "=1") == {}


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("pid", ["pid"]),
        ("pid[]", ["pid", None]),
        ("pid[0][x]", ["pid", 0, "x"]),
        ("0", [0]),
        ("", None),
    ],
)
def test_split_name(name, path):
    assert split_name(name) == path


def test_bytes_are_decoded():
    assert parse(b"a=%E2%82%AC") == {"a": "€"}


def test_what_requests_encodes_is_read_as_whmcs_reads_it():
    """The reference's pitfalls, through the real encoder."""
    indexed = requests.Request("POST", "http://x/", data=[("pid[0]", 7), ("pid[1]", 9)]).prepare()
    repeated = requests.Request("POST", "http://x/", data={"pid": [7, 9]}).prepare()
    boolean = requests.Request("POST", "http://x/", data={"noemail": False}).prepare()
    assert parse(indexed.body) == {"pid": {0: "7", 1: "9"}}
    assert parse(repeated.body) == {"pid": "9"}
    assert truthy(parse(boolean.body)["noemail"])  # "False" is truthy in PHP


def test_multipart_fields_follow_the_same_rules():
    prepared = requests.Request(
        "POST",
        "http://x/",
        data=[("pid[0]", "7"), ("pid[1]", "9"), ("action", "AddOrder")],
        files={"upload": ("a.txt", b"data")},
    ).prepare()
    fields = parse_multipart(prepared.body, prepared.headers["Content-Type"])
    assert fields == {"pid": {0: "7", 1: "9"}, "action": "AddOrder"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", False), ("0", False), (None, False), ({}, False), ("false", True), ("1", True),
     ("0.0", True), ({0: "x"}, True)],
)  # fmt: skip
def test_truthy_is_php_truthiness(value, expected):
    assert truthy(value) is expected


def test_as_list():
    assert as_list({0: "a", 1: "b"}) == ["a", "b"]
    assert as_list("a") == ["a"]
    assert as_list(None) == []
