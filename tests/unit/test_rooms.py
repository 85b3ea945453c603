"""The one room-name rule (issue 14 item 12), and the entries that apply it without a server."""

from __future__ import annotations

import re

import pytest

from tchat.auth import issue_token
from tchat.rooms import ROOM_PATTERN, check_room, valid_room

GOOD = ["a", "demo", "Room_1.b-c", "9", "x" * 64]
BAD = ["", "a\nb", "a\n", "\na", "a b", "../x", ".hidden", "-x", "_x", "x" * 65, "é", "a/b", "*",
       "a\r\nLocation: x", "a\x00"]  # fmt: skip


@pytest.mark.parametrize("name", GOOD)
def test_room_names_accepted(name: str) -> None:
    assert valid_room(name) and check_room(name) == name
    assert re.search(ROOM_PATTERN, name)


@pytest.mark.parametrize("name", BAD)
def test_room_names_refused_with_the_rule(name: str) -> None:
    assert not valid_room(name)
    with pytest.raises(ValueError, match="invalid room name"):
        check_room(name)


def test_a_trailing_newline_is_not_a_room() -> None:
    """Python's `$` matches before a final newline: the rule must not."""
    assert re.match(ROOM_PATTERN, "a\n")  # the anchored pattern alone would let it in
    assert not valid_room("a\n")


def test_tokens_name_a_room_or_the_wildcard() -> None:
    issue_token("s" * 32, "*", "viewer")
    issue_token("s" * 32, "demo", "viewer")
    for name in ("a\nb", "", "a b"):
        with pytest.raises(ValueError, match="invalid room name"):
            issue_token("s" * 32, name, "viewer")
