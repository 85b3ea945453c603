"""The namespace lab of the shaped-link tests (tchat.perf.netlab) never collides with a
lab a killed run left behind: its names and its 10.N.0.0/16 are taken as in use (a CI run
failed two Chromium tests when a new lab got the subnet of an old one)."""

from __future__ import annotations

import subprocess

import pytest

from tchat.perf.netlab import NetLab, can_create_namespaces


def test_a_lab_left_behind_keeps_its_names_and_subnet_to_itself() -> None:
    reason = can_create_namespaces()
    if reason is not None:
        pytest.fail(f"the shaped-link tests need network namespaces and {reason}")
    old = NetLab()
    old.add(0)  # left behind: still there when the next lab starts
    new = NetLab(prefix=old.prefix, subnet=old.subnet)
    try:
        link = new.add(0)
        assert new.prefix != old.prefix and new.subnet != old.subnet
        routes = subprocess.run(
            ["ip", "route", "get", link.ns_ip], capture_output=True, text=True, check=True
        ).stdout
        assert f"dev {link.host_if}" in routes  # this lab's packets go to this lab
    finally:
        new.close()
        old.close()
