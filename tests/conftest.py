"""Every test session has a netlist cache of its own (gateware/netlist_cache.py), so that a
test that runs Yosys runs it, whatever an earlier session or the user's builds left."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_netlist_cache(tmp_path_factory):
    saved = os.environ.get("QUWEIT_NETLIST_CACHE")
    os.environ["QUWEIT_NETLIST_CACHE"] = str(tmp_path_factory.mktemp("netlist-cache"))
    yield
    if saved is None:
        os.environ.pop("QUWEIT_NETLIST_CACHE", None)
    else:
        os.environ["QUWEIT_NETLIST_CACHE"] = saved
