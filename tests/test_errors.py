"""Domain errors (errors.py): one tree under `TaskstreamError`, as its docstring draws it,
carrying a message and no HTTP (web/responses.py maps each class to a status)."""

from __future__ import annotations

import ast
import inspect

import pytest

from app import errors
from app.errors import (
    BadRequest,
    Conflict,
    Invalid,
    NotFound,
    PayloadTooLarge,
    TaskstreamError,
    Unauthorized,
    Unavailable,
    WritesRefused,
)
from tests.conftest import parse_python

TREE = {
    Invalid: TaskstreamError,
    BadRequest: Invalid,
    NotFound: TaskstreamError,
    Conflict: TaskstreamError,
    PayloadTooLarge: TaskstreamError,
    Unauthorized: TaskstreamError,
    Unavailable: TaskstreamError,
    WritesRefused: Unavailable,
}


def classes() -> list[type[TaskstreamError]]:
    found: list[type[TaskstreamError]] = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, TaskstreamError) and cls.__module__ == errors.__name__
    ]
    return found


def test_every_error_has_the_parent_the_tree_gives_it() -> None:
    assert set(classes()) == {TaskstreamError, *TREE}
    for cls, parent in TREE.items():
        assert cls.__bases__ == (parent,), cls


def test_the_module_docstring_draws_every_class() -> None:
    drawn = errors.__doc__ or ""
    for cls in classes():
        assert cls.__name__ in drawn, cls


@pytest.mark.parametrize("cls", list(TREE), ids=lambda cls: cls.__name__)
def test_an_error_is_its_message_and_caught_as_a_taskstream_error(cls: type[Exception]) -> None:
    with pytest.raises(TaskstreamError) as caught:
        raise cls("no such task: a1")
    assert str(caught.value) == "no such task: a1"


def test_errors_carry_no_http() -> None:
    """No status codes and no imports at all: the web wing maps classes to statuses."""
    tree = parse_python(inspect.getsource(errors))
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert not [
        n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, int)
    ]
