"""Unit: page cursors look the same over HTTP and in the CLI (cluster/store.page_cursor)."""

from __future__ import annotations

import argparse
import re

import pytest

from raylens.cli.commands import cmd_images
from raylens.cluster.settings import Settings
from raylens.cluster.store import (
    PAGE_CURSOR,
    decode_cursor,
    encode_cursor,
    page_cursor,
    store_cursor,
)
from raylens.errors import SettingsError


def test_a_page_cursor_goes_to_the_store_and_back_unchanged() -> None:
    inner = encode_cursor(1764770000.123456, "job_AbC-1")
    shown = page_cursor(inner)
    assert shown == "1764770000.123456_job_AbC-1"
    assert re.fullmatch(PAGE_CURSOR, shown)
    assert store_cursor(shown) == inner
    assert decode_cursor(store_cursor(shown) or "") == (1764770000.123456, "job_AbC-1")
    assert page_cursor(None) is None and store_cursor(None) is None


def test_a_cursor_of_another_form_is_refused_by_name() -> None:
    for bad in ("", "abc", encode_cursor(1.0, "j"), "1.5_", "1.5_a b", "x_j"):
        with pytest.raises(ValueError, match="not a page cursor"):
            store_cursor(bad)


def test_raylens_images_refuses_a_bad_cursor_before_it_joins_a_cluster() -> None:
    args = argparse.Namespace(limit=10, cursor="not-a-cursor", address=None, json=True)
    with pytest.raises(SettingsError, match="--cursor: not a page cursor"):
        cmd_images(Settings(), args)
