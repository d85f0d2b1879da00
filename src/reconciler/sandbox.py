"""Jinja's sandbox with bounds: no template can take the memory or the time of the process that renders it.

Jinja's `SandboxedEnvironment` keeps templates away from Python's internals, but `{{ 'a' * 10**9 }}` still builds a
gigabyte, and two nested loops still run for hours. `BoundedEnvironment` refuses, before the work is done:

- a value longer than MAX_VALUE characters or items made by `*`, `%`, a padding or joining filter or string method,
  and `**` with a result of more than MAX_POWER_BITS bits;
- more than MAX_LOOP items from `range` in one render (the sandbox allows 100,000 per call, nested or not);

and `bounded` stops a render that has produced more than MAX_OUTPUT characters or run longer than MAX_SECONDS,
checked as the chunks are produced. `validate` renders with the same limits as sending, so a template that passes
review cannot blow them with the sample contact; at send time only one contact's data can (their message fails).
"""

from __future__ import annotations

import contextvars
import re
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sized
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

MAX_VALUE = 1_000_000
"""Characters (or list items) of one value a template builds."""
MAX_OUTPUT = 1_000_000
"""Characters of one render (a subject, a message's HTML or its text part)."""
MAX_SECONDS = 2.0
"""Wall time of one render; a normal one takes milliseconds."""
MAX_LOOP = 100_000
"""Items `range` may produce in one render, in all its loops together."""
MAX_POWER_BITS = 10_000
_WIDE = re.compile(r"\d{6,}")
"""A width or precision of 100,000 or more in a format string."""


class RenderLimit(SecurityError):
    """A render that would go past one of the bounds."""


@dataclass
class _Budget:
    deadline: float
    loop: int = MAX_LOOP
    output: int = MAX_OUTPUT


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("render_budget", default=None)


def _too_long(size: int) -> RenderLimit:
    return RenderLimit(f"the template would build a value of {size:,} characters (at most {MAX_VALUE:,})")


def _check_size(size: int) -> None:
    if size > MAX_VALUE:
        raise _too_long(size)


def _length(value: Any) -> int:
    return len(value) if isinstance(value, Sized) else len(str(value))


def _repeat(left: Any, right: Any) -> None:
    """`*` on a sequence and a count, in either order."""
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, str | list | tuple) and isinstance(count, int) and not isinstance(count, bool):
            _check_size(len(sequence) * max(count, 0))


def _power(left: Any, right: Any) -> None:
    small = not (isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1)
    if not small and abs(left).bit_length() * right > MAX_POWER_BITS:
        raise RenderLimit(f"the number {left} ** {right} is too large for a template (at most {MAX_POWER_BITS:,} bits)")


def _format_string(text: Any) -> None:
    wide = _WIDE.search(text) if isinstance(text, str) else None
    if wide is not None:
        raise RenderLimit(f"a width or precision of {wide.group(0)} would build a value of that many characters")


def _checked_range(*args: int) -> range:
    numbers = range(*args)
    budget = _BUDGET.get()
    if budget is not None:
        budget.loop -= len(numbers)
        if budget.loop < 0:
            raise RenderLimit(f"the template's loops would run more than {MAX_LOOP:,} times (range)")
    elif len(numbers) > MAX_LOOP:
        raise RenderLimit(f"the template's loops would run more than {MAX_LOOP:,} times (range)")
    return numbers


def _estimate(name: str, value: Any, args: tuple[Any, ...]) -> int:
    """The length of what a padding, joining or replacing filter or string method would return, before it runs."""
    first = args[0] if args else None
    if name in ("center", "ljust", "rjust", "zfill") and isinstance(first, int):
        return first
    if name == "indent" and isinstance(first, int):
        return _length(value) * (1 + first)
    if name == "expandtabs" and isinstance(value, str):
        return len(value) + value.count("\t") * (first if isinstance(first, int) else 8)
    if name == "join" and isinstance(value, Sized):
        separator = first if isinstance(first, str) else ""
        items = value if isinstance(value, Iterable) else []
        return len(value) * len(separator) + sum(_length(item) for item in items)
    if name == "join" and isinstance(value, str) and isinstance(first, list | tuple):  # str.join(items)
        return len(first) * len(value) + sum(_length(item) for item in first)
    if name == "replace" and isinstance(value, str) and len(args) >= 2 and isinstance(args[0], str):
        new = args[1] if isinstance(args[1], str) else str(args[1])
        hits = value.count(args[0]) if args[0] else len(value) + 1
        return len(value) + hits * len(new)
    return 0


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def filter_(*args: Any, **kwargs: Any) -> Any:
        # filters take the environment or context first when marked so; the value follows
        rest = [a for a in args if not isinstance(a, BoundedEnvironment | Context | EvalContext)]
        if rest:
            _check_size(_estimate(name, rest[0], (*rest[1:], *kwargs.values())))
            if name == "format":
                _format_string(rest[0])
        return function(*args, **kwargs)

    for attribute in ("jinja_pass_arg", "__name__", "__doc__"):
        if hasattr(function, attribute):
            setattr(filter_, attribute, getattr(function, attribute))
    return filter_


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """A sandbox whose operators, filters, string methods and `range` refuse unbounded work; lists and dicts cannot
    be changed (`append` in a loop would grow without bound), and a `namespace` holds no value past MAX_OUTPUT."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for name in ("center", "indent", "join", "replace", "format"):
            self.filters[name] = _bounded_filter(name, self.filters[name])
        self.globals["range"] = _checked_range
        self.globals["namespace"] = BoundedNamespace

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Every `{% for %}` iterates through `bounded_iter`, which watches the clock: a loop that writes nothing
        (over a long string, a list, nested) was never stopped, as the time was looked at only when output came."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(
                nodes.EnvironmentAttribute("bounded_iter"), [loop.iter], [], None, None, lineno=loop.iter.lineno
            )
        return tree

    def bounded_iter(self, iterable: Any) -> Iterator[Any]:
        budget = _BUDGET.get()
        if budget is None:  # outside `bounded` (a template compiled, not rendered)
            yield from iterable
            return
        for count, item in enumerate(iterable):
            if not count & 255 and time.monotonic() > budget.deadline:
                raise RenderLimit(f"the template takes longer than {MAX_SECONDS:g} s to render (a loop)")
            yield item

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _repeat(left, right)
        elif operator == "**":
            _power(left, right)
        elif operator == "%":
            _format_string(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            if name in ("format", "format_map"):
                _format_string(owner)
            _check_size(_estimate(name, owner, args))
        return super().call(__context, __obj, *args, **kwargs)


class BoundedNamespace(Namespace):
    """`namespace()` for `{% set ns.total = ... %}` across loop iterations, refusing values that grow without bound."""

    def __setitem__(self, name: str, value: Any) -> None:
        if isinstance(value, str | list | tuple | dict) and len(value) > MAX_OUTPUT:
            raise RenderLimit(f"the template would keep a value of {len(value):,} characters in a namespace")
        super().__setitem__(name, value)


def bounded(chunks: Iterable[str]) -> Iterator[str]:
    """The chunks of a render (`template.generate(...)`), stopped past MAX_OUTPUT characters or MAX_SECONDS, with a
    fresh loop budget for this render. The limit is raised inside the template, where it stands, so the error
    carries the template's own line."""
    budget = _Budget(time.monotonic() + MAX_SECONDS)
    token = _BUDGET.set(budget)
    generator = iter(chunks)
    try:
        for chunk in generator:
            budget.output -= len(chunk)
            if budget.output < 0:
                _stop(generator, f"the template renders more than {MAX_OUTPUT:,} characters")
            if time.monotonic() > budget.deadline:
                _stop(generator, f"the template takes longer than {MAX_SECONDS:g} s to render")
            yield chunk
    finally:
        _BUDGET.reset(token)


def _stop(generator: Iterator[str], message: str) -> None:
    if isinstance(generator, Generator):
        generator.throw(RenderLimit(message))
    raise RenderLimit(message)


def render(template: Any, context: Any) -> str:
    """`template.render(context)` within the bounds."""
    return "".join(bounded(template.generate(context)))


_TEXT_PARSER = BoundedEnvironment()


@lru_cache(maxsize=4096)
def parsed_text(source: str) -> nodes.Template:
    """A subject's or preheader's syntax tree, parsed once for both who reads it: the compile that renders it and
    the check of the fields it reads (parsing each of 1,000 subjects twice was a tenth of `validate`). Compiling
    a tree leaves it as it was. Raises TemplateSyntaxError."""
    return _TEXT_PARSER.parse(source)
