"""Every row of the README's OpenAI-API conformance table, driven by the official `openai`
client against the live server; and the README's table equals the rows (no drift)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from .conformance import ROWS, Row, render

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def client(server):  # noqa: ANN001, ANN201
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("row", ROWS, ids=[r.check.__name__ for r in ROWS])
def test_row(client, row: Row) -> None:  # noqa: ANN001
    row.check(client)


def test_readme_table_is_the_rows() -> None:
    text = README.read_text(encoding="utf-8")
    assert render() in text, "README's conformance table is stale: python scripts/conformance.py"
