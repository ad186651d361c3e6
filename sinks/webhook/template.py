"""The webhook body pattern: a Jinja2 template over the alert, rendered in a sandbox.

Why so many guards: the pattern is written by a tenant admin and runs inside the delivery
worker, next to every other tenant's alerts. Jinja2's `ImmutableSandboxedEnvironment`
stops attribute games (`''.__class__.__mro__`) and mutation of data; on top of it:

Compile time (`compile_template`, also what settings validation runs):
- at most `MAX_TEMPLATE_BYTES` of source;
- no `extends`, `include`, `import` or `block` (there is nothing to load or inherit);
- attribute names, subscripts and filter attribute arguments starting with "_" are
  refused up front, so an escape attempt fails at validation even in a branch that the
  sample alert does not take;
- no constant folding: Jinja's optimizer would run filters at compile time, outside
  every limit below.

Render time (`BodyTemplate.render` / `render_async`):
- a deadline (`RENDER_TIMEOUT`), enforced inside the render thread by a trace function,
  so a runaway loop stops on its own instead of burning a CPU after we gave up on it;
- `range()` yields at most `MAX_RANGE` items;
- everything that can make text grow (`+`, `*`, `%`, `**`, `~`, filters, method calls,
  macro / set / filter-block buffers, `{{ }}` output) is checked *before* it allocates:
  no single value exceeds `MAX_OUTPUT_BYTES`, and one render produces at most `MAX_WORK`
  characters in all;
- strings expose only read-only methods (`STR_METHODS`); `cycler`, `joiner`, `lipsum` and
  `namespace` are not available;
- the output is at most `MAX_OUTPUT_BYTES` of UTF-8.

Variables (`VARIABLES`): the alert fields (`alert_id`, `tenant_id`, `event_type`,
`risk_level`, `title`, `detected_at` (RFC 3339 text), `description`, `page_url`,
`script_url`, `domain`, `console_url`: absent ones are None and print as nothing;
`details`: a mapping in which a key the alert lacks reads as ""), `integration` (`id`,
`name`), `idempotency_key`, and `alert` (the default JSON body as a mapping). Filters:
Jinja's built-ins plus `tojson` (a JSON literal: `{{ title|tojson }}`). Any other name is
an error (StrictUndefined).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import string
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from functools import lru_cache, wraps
from types import FrameType, TracebackType
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.runtime import Context, Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from schemas.models import Alert

__all__ = [
    "MAX_OUTPUT_BYTES",
    "MAX_RANGE",
    "MAX_TEMPLATE_BYTES",
    "MAX_WORK",
    "RENDER_TIMEOUT",
    "STR_METHODS",
    "VARIABLES",
    "BodyTemplate",
    "BodyTemplateError",
    "compile_template",
    "sample_variables",
    "template_variables",
    "validate_template",
]

MAX_TEMPLATE_BYTES = 64 * 1024
MAX_OUTPUT_BYTES = 1024 * 1024
RENDER_TIMEOUT = 1.0
MAX_RANGE = 10_000
MAX_WORK = 16 * 1024 * 1024
"""Characters a render may produce in all (output, buffers, intermediate strings)."""
MAX_INT_ARG = MAX_OUTPUT_BYTES
"""Largest number a filter or method takes as an argument (widths, counts)."""
MAX_INT_BITS = 16_384
"""Largest integer arithmetic may make (Python prints at most 4300 digits anyway)."""
_GRACE = 0.5
"""How long past the deadline a waiter gives the render thread to stop by itself."""
_TEMPLATE_FILE = "<template>"

VARIABLES = (
    "alert_id",
    "tenant_id",
    "event_type",
    "risk_level",
    "title",
    "detected_at",
    "description",
    "page_url",
    "script_url",
    "domain",
    "console_url",
    "details",
    "integration",
    "idempotency_key",
    "alert",
)

STR_METHODS = frozenset(
    {
        "capitalize",
        "casefold",
        "center",
        "count",
        "endswith",
        "find",
        "format",
        "index",
        "isalnum",
        "isalpha",
        "isascii",
        "isdecimal",
        "isdigit",
        "isidentifier",
        "islower",
        "isnumeric",
        "isprintable",
        "isspace",
        "istitle",
        "isupper",
        "join",
        "ljust",
        "lower",
        "lstrip",
        "partition",
        "removeprefix",
        "removesuffix",
        "replace",
        "rfind",
        "rindex",
        "rjust",
        "rpartition",
        "rsplit",
        "rstrip",
        "split",
        "splitlines",
        "startswith",
        "strip",
        "swapcase",
        "title",
        "upper",
        "zfill",
    }
)
"""The str methods a pattern may call: none writes, none multiplies its input unchecked
(`expandtabs`, `translate`, `format_map` and `encode` are left out)."""


class BodyTemplateError(ValueError):
    """A body pattern that does not compile, breaks a limit or fails to render.

    A ValueError, so settings validators can let it through as the field's message.
    """


class _LimitExceeded(SecurityError):
    """A size limit: raised before the allocation it prevents."""


class _Deadline(BaseException):
    """The render ran out of time. A BaseException so no `except Exception` inside Jinja
    or a filter can swallow it and let the loop go on."""


# -- per-render state (the render runs in a thread of its own) ------------------------


class _State(threading.local):
    deadline: float | None = None
    work: int = 0


_STATE = _State()


def _spend(amount: int) -> None:
    """Count produced characters against MAX_WORK (only inside a guarded render)."""
    if _STATE.deadline is None:
        return
    _STATE.work += amount
    if _STATE.work > MAX_WORK:
        raise _LimitExceeded(
            f"the pattern produces more than {MAX_WORK // (1024 * 1024)} MiB of text in all"
        )


def _weight(value: object, budget: int = MAX_OUTPUT_BYTES) -> int:
    """About how many characters `value` becomes as text; stops counting past `budget`.

    Repeated references count every time: `[x, x, x]|join` costs three x.
    """
    total = 0
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes | bytearray):
            total += len(item)
        elif isinstance(item, Mapping):
            total += 2 + 2 * len(item)
            if total <= budget:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + len(item)
            if total <= budget:
                stack.extend(item)
        elif isinstance(item, range):
            total += 8 * len(item)
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        else:
            total += 8
        if total > budget:
            return total
    return total


def _too_big(what: str) -> _LimitExceeded:
    return _LimitExceeded(f"{what} would be larger than {MAX_OUTPUT_BYTES // 1024} KiB")


def _check_value(value: object, what: str) -> None:
    if _weight(value) > MAX_OUTPUT_BYTES:
        raise _too_big(what)


def _check_numbers(values: Iterable[object], what: str) -> None:
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT_ARG:
            raise _LimitExceeded(f"{what}: numbers given as arguments are limited to {MAX_INT_ARG}")


def _check_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise _LimitExceeded(f"numbers are limited to {MAX_INT_BITS} bits")


# -- estimates for the operations that multiply their input ---------------------------

_SIZED = (list, tuple, set, frozenset, Mapping, range, str)
_SEQUENCES = (str, list, tuple)
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[A-Za-z%]")
_DIGITS = re.compile(r"\d+")


def _percent_values(args: object) -> list[object]:
    if isinstance(args, tuple):
        return list(args)
    if isinstance(args, Mapping):
        return list(args.values())
    return [args]


def _check_percent(fmt: str, args: object) -> None:
    """`fmt % args`: each spec is at most its width plus the largest value."""
    specs = _PERCENT_SPEC.findall(fmt)
    values = _percent_values(args)
    _check_numbers(values, "%-formatting")
    widest = max((int(n) for spec in specs for n in spec if n.isdigit()), default=0)
    widest = max([widest, *(abs(v) for v in values if isinstance(v, int))])
    if widest > MAX_INT_ARG:
        raise _LimitExceeded(f"%-formatting: widths are limited to {MAX_INT_ARG}")
    largest = max((_weight(v) for v in values), default=0)
    if len(fmt) + len(specs) * (widest + largest) > MAX_OUTPUT_BYTES:
        raise _too_big("the formatted text")


def _check_str_format(fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """`fmt.format(...)`: each field is at most its widest width plus the largest value."""
    values = [*args, *kwargs.values()]
    _check_numbers(values, "format()")
    fields = 0
    widest = max((abs(v) for v in values if isinstance(v, int)), default=0)
    for _, field, spec, _ in string.Formatter().parse(fmt):
        if field is not None:
            fields += 1
            widest = max([widest, *(int(n) for n in _DIGITS.findall(spec or ""))])
    if widest > MAX_INT_ARG:
        raise _LimitExceeded(f"format(): widths are limited to {MAX_INT_ARG}")
    largest = max((_weight(v) for v in values), default=0)
    if len(fmt) + fields * (widest + largest) > MAX_OUTPUT_BYTES:
        raise _too_big("the formatted text")


def _check_replace(text: object, old: object, new: object, count: object = -1) -> None:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return
    hits = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    if len(text) + hits * max(0, len(new) - len(old)) > MAX_OUTPUT_BYTES:
        raise _too_big("the replaced text")


def _materialize(items: object, what: str) -> object:
    """A one-shot iterable as a list, counting its weight as it is read."""
    if isinstance(items, str | Mapping | list | tuple | set | frozenset | range):
        return items
    if not isinstance(items, Iterable):
        return items
    out: list[object] = []
    total = 0
    for item in items:
        total += _weight(item) + 1
        if total > MAX_OUTPUT_BYTES:
            raise _too_big(what)
        out.append(item)
    return out


def _check_join(separator: str, items: object) -> None:
    size = _weight(items)
    count = len(items) if isinstance(items, _SIZED) else 1
    if size + len(separator) * count > MAX_OUTPUT_BYTES:
        raise _too_big("the joined text")


# -- filters ----------------------------------------------------------------------------


def _tojson(value: Any, indent: int | None = None) -> str:
    """The value as a JSON literal (`"..."` for text, `null` for absent fields)."""
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises its "'x' is undefined" here
    if indent is not None and not (isinstance(indent, int) and 0 <= indent <= 8):
        raise _LimitExceeded("tojson: indent must be a number from 0 to 8")
    _check_value(value, "tojson")
    try:
        return json.dumps(value, ensure_ascii=False, indent=indent, default=_not_json)
    except ValueError as exc:  # circular reference: cannot be built, but be precise
        raise TypeError(f"tojson: {exc}") from None


def _not_json(value: object) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, range):
        return list(value)
    raise TypeError(f"tojson: a {type(value).__name__} cannot be written as JSON")


def _filter_replace(s: object, old: object, new: object, count: object = None) -> None:
    _check_replace(str(s), old, new, -1 if count is None else count)


def _filter_indent(s: object, width: object = 4, *_: object, **__: object) -> None:
    text = s if isinstance(s, str) else ""
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    if len(text) + (text.count("\n") + 1) * pad > MAX_OUTPUT_BYTES:
        raise _too_big("the indented text")


def _filter_wordwrap(
    s: object,
    width: object = 79,
    break_long_words: object = True,
    wrapstring: object = None,
    **_: object,
) -> None:
    text = s if isinstance(s, str) else ""
    step = width if isinstance(width, int) and width > 0 else 1
    lines = len(text) // step + text.count("\n") + 1
    joint = len(wrapstring) if isinstance(wrapstring, str) else 1
    if len(text) + lines * joint > MAX_OUTPUT_BYTES:
        raise _too_big("the wrapped text")


def _filter_format(value: object, *args: object, **kwargs: object) -> None:
    if isinstance(value, str):
        _check_percent(value, kwargs or args)


def _filter_join(value: object, d: object = "", attribute: object = None) -> None:
    _check_join(d if isinstance(d, str) else str(d), value)


def _filter_sum(iterable: object, attribute: object = None, start: object = 0) -> None:
    if not isinstance(start, int | float) or isinstance(start, bool):
        raise _LimitExceeded("sum: only numbers can be added up")


_SIZE_CHECKS: dict[str, Callable[..., None]] = {
    "replace": _filter_replace,
    "indent": _filter_indent,
    "wordwrap": _filter_wordwrap,
    "format": _filter_format,
    "join": _filter_join,
    "sum": _filter_sum,
}
"""Filters whose result can be far larger than their input: checked before they run."""


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Every filter: numbers and sizes checked before, the result counted after."""
    passes_context = hasattr(func, "jinja_pass_arg")
    specific = _SIZE_CHECKS.get(name)

    @wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        lead, rest = (args[:1], list(args[1:])) if passes_context else ((), list(args))
        if rest and name == "join":
            rest[0] = _materialize(rest[0], "the joined text")
        _check_numbers([*rest[1:], *kwargs.values()], f"filter {name}")
        _check_value([*rest, *kwargs.values()], f"the input of filter {name}")
        if specific is not None:
            with contextlib.suppress(TypeError):  # wrong arguments: the filter says so
                specific(*rest, **kwargs)
        result = func(*lead, *rest, **kwargs)
        if isinstance(result, str):
            _spend(len(result))
            if len(result) > MAX_OUTPUT_BYTES:
                raise _too_big(f"the result of filter {name}")
        return result

    return guarded


# -- globals ----------------------------------------------------------------------------


def _bounded_range(*args: int) -> range:
    """range() with at most MAX_RANGE items."""
    numbers = range(*args)
    try:
        size = len(numbers)
    except OverflowError:
        size = MAX_RANGE + 1
    if size > MAX_RANGE:
        raise _LimitExceeded(f"range() is limited to {MAX_RANGE} items")
    return numbers


class _Details(dict[str, str]):
    """Alert details: free-form, so a key this alert lacks reads as "" (not an error)."""

    def __missing__(self, key: str) -> str:
        return ""


def _finalize(value: Any) -> Any:
    """What `{{ }}` prints: nothing for an absent field, never a giant value."""
    if value is None:
        return ""
    _check_value(value, "an output value")
    return value


# -- the environment --------------------------------------------------------------------


class _GuardedBuffer(list[Any]):
    """Buffer of a macro, call, set or filter block: bounded like the output itself."""

    __slots__ = ("_size",)

    def __init__(self) -> None:
        super().__init__()
        self._size = 0

    def _add(self, item: object) -> None:
        size = _weight(item)
        self._size += size
        if self._size > MAX_OUTPUT_BYTES:
            raise _too_big("a block's text")
        _spend(size)

    def append(self, item: Any) -> None:
        self._add(item)
        super().append(item)

    def extend(self, items: Iterable[Any]) -> None:
        for item in items:
            self.append(item)


class _GuardedCodeGenerator(CodeGenerator):
    """Jinja's code generator with bounded buffers and a checked `~`."""

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.new_buffer()")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.guarded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _estimate_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        if isinstance(left, int) and isinstance(right, _SEQUENCES):
            left, right = right, left
        if isinstance(left, _SEQUENCES) and isinstance(right, int):
            if right > 0 and _weight(left) * right > MAX_OUTPUT_BYTES:
                raise _too_big("the repeated value")
        elif isinstance(left, int) and isinstance(right, int):
            _check_bits(left.bit_length() + right.bit_length())
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _check_bits(left.bit_length() * right)
    elif operator == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
        if _weight(left) + _weight(right) > MAX_OUTPUT_BYTES:
            raise _too_big("the sum")
    elif operator == "%" and isinstance(left, str):
        _check_percent(left, right)


class _BodySandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "%", "**"})

    def __init__(self) -> None:
        super().__init__(
            autoescape=False,
            undefined=StrictUndefined,
            finalize=_finalize,
            optimized=False,
            keep_trailing_newline=True,
            auto_reload=False,
        )
        self.globals.clear()
        self.globals.update({"range": _bounded_range, "dict": dict})
        self.filters["tojson"] = _tojson
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}

    @staticmethod
    def new_buffer() -> _GuardedBuffer:
        return _GuardedBuffer()

    @staticmethod
    def guarded_concat(values: tuple[Any, ...]) -> str:
        if _weight(values) > MAX_OUTPUT_BYTES:
            raise _too_big("the ~ concatenation")
        result = "".join(map(str, values))
        _spend(len(result))
        return result

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr not in STR_METHODS:
            return False
        if isinstance(obj, bytes | bytearray):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None or value.__name__ != "format":
            return None  # format_map falls through to is_safe_attribute: refused
        fmt: str = value.__self__

        @wraps(wrapped)
        def checked(*args: Any, **kwargs: Any) -> str:
            _check_str_format(fmt, args, kwargs)
            result = wrapped(*args, **kwargs)
            _spend(len(result))
            return result

        return checked

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _estimate_binop(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        if isinstance(result, str | list | tuple):
            _spend(_weight(result, MAX_WORK))
        return result

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        # Jinja passes a loop's or block's own variables as `_loop_vars` / `_block_vars`:
        # not arguments of the pattern's, and counting them would count them twice.
        named = [v for k, v in kwargs.items() if not k.startswith("_")]
        if obj is not _bounded_range and not isinstance(obj, Macro):
            _check_numbers([*args, *named], "a call")
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str):
            method = getattr(obj, "__name__", "")
            if method == "join" and args:
                args = (_materialize(args[0], "the joined text"), *args[1:])
                _check_join(owner, args[0])
            elif method == "replace":
                _check_replace(owner, *args[:3])
        _check_value([*args, *named], "the arguments of a call")
        result = super().call(context, obj, *args, **kwargs)
        if isinstance(result, str | list | tuple):
            size = _weight(result, MAX_WORK)
            if isinstance(result, str) and size > MAX_OUTPUT_BYTES:
                raise _too_big("the result of a call")
            _spend(size)
        return result


_ENV = _BodySandbox()


# -- compile-time checks ----------------------------------------------------------------

_FORBIDDEN: dict[type[nodes.Node], str] = {
    nodes.Extends: "{% extends %}",
    nodes.Include: "{% include %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% from ... import %}",
    nodes.Block: "{% block %}",
}
_PRIVATE_NAME = re.compile(r"(?:^|\.)_+[A-Za-z0-9]")


def _refuse_private(name: str, node: nodes.Node) -> None:
    raise BodyTemplateError(
        f"line {node.lineno}: {name!r} is not accessible (names starting with '_' are "
        "refused in a body pattern)"
    )


def _static_checks(tree: nodes.Template) -> None:
    for node in tree.find_all(nodes.Node):
        for kind, tag in _FORBIDDEN.items():
            if isinstance(node, kind):
                raise BodyTemplateError(
                    f"line {node.lineno}: {tag} is not available in a body pattern"
                )
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            _refuse_private(node.attr, node)
        if (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
            and node.arg.value.startswith("_")
        ):
            _refuse_private(node.arg.value, node)
        if isinstance(node, nodes.Filter | nodes.Test):
            for arg in [*node.args, *(kw.value for kw in node.kwargs)]:
                if (
                    isinstance(arg, nodes.Const)
                    and isinstance(arg.value, str)
                    and _PRIVATE_NAME.search(arg.value)
                    and re.fullmatch(r"[\w.]+", arg.value)
                ):
                    _refuse_private(arg.value, node)


@lru_cache(maxsize=256)
def compile_template(source: str) -> BodyTemplate:
    """The compiled pattern (cached by source); BodyTemplateError when it is refused."""
    if len(source.encode("utf-8", "surrogatepass")) > MAX_TEMPLATE_BYTES:
        raise BodyTemplateError(f"body pattern is larger than {MAX_TEMPLATE_BYTES // 1024} KiB")
    try:
        tree = _ENV.parse(source)
        _static_checks(tree)
        template = _ENV.from_string(tree)
    except TemplateSyntaxError as exc:
        raise BodyTemplateError(f"line {exc.lineno}: {_short(exc.message or str(exc))}") from None
    except TemplateError as exc:
        raise BodyTemplateError(_short(exc.message or str(exc))) from None
    except (RecursionError, MemoryError, SyntaxError):
        raise BodyTemplateError("body pattern is nested too deeply to compile") from None
    return BodyTemplate(source, template)


# -- rendering --------------------------------------------------------------------------


def _tracer(deadline: float) -> Callable[[FrameType, str, Any], Any]:
    """A trace function that ends the render at the deadline: on every call anywhere,
    and on every line (each loop turn) of the template's own code."""

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise _Deadline
        return local

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise _Deadline
        return local if frame.f_code.co_filename == _TEMPLATE_FILE else None

    return on_call


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _template_line(tb: TracebackType | None) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FILE:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _explain(exc: BaseException, timeout: float) -> BodyTemplateError:
    """One clear sentence for whatever stopped the render."""
    if isinstance(exc, BodyTemplateError):
        return exc
    if isinstance(exc, _Deadline):
        return BodyTemplateError(f"rendering took longer than {timeout:g} s")
    where = _template_line(exc.__traceback__)
    at = f"line {where}: " if where is not None else ""
    if isinstance(exc, UndefinedError):
        message = _short(exc.message or str(exc))
        if message.endswith("is undefined"):
            message += f" (the variables are: {', '.join(VARIABLES)})"
        return BodyTemplateError(at + message)
    if isinstance(exc, _LimitExceeded):
        return BodyTemplateError(at + _short(str(exc)))
    if isinstance(exc, SecurityError):
        return BodyTemplateError(at + f"not allowed in the sandbox: {_short(str(exc))}")
    if isinstance(exc, RecursionError):
        return BodyTemplateError(at + "macros call themselves too deeply")
    if isinstance(exc, MemoryError):
        return BodyTemplateError(at + "rendering ran out of memory")
    if isinstance(exc, TemplateError):
        return BodyTemplateError(at + _short(exc.message or str(exc)))
    return BodyTemplateError(at + _short(f"{type(exc).__name__}: {exc}"))


class BodyTemplate:
    """A compiled body pattern. Each render runs in a thread of its own, so a slow one
    never blocks the event loop, and stops itself at the deadline."""

    __slots__ = ("_template", "source")

    def __init__(self, source: str, template: Template) -> None:
        self.source = source
        self._template = template

    def __repr__(self) -> str:
        return f"BodyTemplate(<{len(self.source)} characters>)"

    def _produce(self, variables: Mapping[str, Any]) -> str:
        out: list[str] = []
        size = 0
        for chunk in self._template.generate(variables):
            size += len(chunk)
            if size > MAX_OUTPUT_BYTES:
                raise _too_big("the body")
            out.append(chunk)
        return "".join(out)

    def _run(
        self,
        variables: Mapping[str, Any],
        deadline: float,
        timeout: float,
        future: Future[str],
        notify: Callable[[], None] | None,
    ) -> None:
        _STATE.deadline, _STATE.work = deadline, 0
        previous = sys.gettrace()
        sys.settrace(_tracer(deadline))
        try:
            text = self._produce(variables)
        except BaseException as exc:  # everything a template can raise becomes one message
            sys.settrace(previous)
            _STATE.deadline = None
            future.set_exception(_explain(exc, timeout))
        else:
            sys.settrace(previous)
            _STATE.deadline = None
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError:
                future.set_exception(BodyTemplateError("the body is not valid UTF-8 text"))
            else:
                if size > MAX_OUTPUT_BYTES:
                    future.set_exception(_too_big("the body"))
                else:
                    future.set_result(text)
        if notify is not None:
            notify()

    def _start(
        self, variables: Mapping[str, Any], timeout: float, notify: Callable[[], None] | None
    ) -> Future[str]:
        future: Future[str] = Future()
        deadline = time.monotonic() + timeout
        thread = threading.Thread(
            target=self._run,
            args=(variables, deadline, timeout, future, notify),
            name="webhook-body-pattern",
            daemon=True,
        )
        thread.start()
        return future

    def render(self, variables: Mapping[str, Any], *, timeout: float = RENDER_TIMEOUT) -> str:
        """The body text; blocks the caller up to `timeout` (+ a short grace)."""
        future = self._start(variables, timeout, None)
        try:
            return future.result(timeout + _GRACE)
        except TimeoutError:
            raise BodyTemplateError(f"rendering took longer than {timeout:g} s") from None

    async def render_async(
        self,
        variables: Mapping[str, Any],
        *,
        timeout: float = RENDER_TIMEOUT,  # noqa: ASYNC109 - the render's own limit
    ) -> str:
        """The body text, awaited without blocking the event loop."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def notify() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(done.set)

        future = self._start(variables, timeout, notify)
        try:
            async with asyncio.timeout(timeout + _GRACE):
                await done.wait()
        except TimeoutError:
            raise BodyTemplateError(f"rendering took longer than {timeout:g} s") from None
        return future.result()


# -- variables --------------------------------------------------------------------------


def template_variables(
    alert: Alert, *, integration_id: str, integration_name: str, idempotency_key: str
) -> dict[str, Any]:
    """What a pattern sees for one delivery (see the module docstring)."""
    wire = alert.wire()
    variables: dict[str, Any] = {
        name: wire.get(name) for name in VARIABLES[:11]
    }  # the alert fields, None when absent
    variables["details"] = _Details(alert.details or {})
    variables["integration"] = {"id": integration_id, "name": integration_name}
    variables["idempotency_key"] = idempotency_key
    variables["alert"] = wire
    return variables


def sample_variables() -> dict[str, Any]:
    """A complete sample alert: what validation renders a pattern against."""
    alert = Alert(
        alert_id="sample-alert-0001",
        tenant_id="sample-tenant",
        event_type="client_side_risk",
        risk_level="high",
        title="New script reads the payment form",
        detected_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        description="cdn.example.net/x.js started reading card fields.",
        page_url="https://shop.example.com/checkout",
        script_url="https://cdn.example.net/x.js",
        domain="shop.example.com",
        console_url="https://console.example.com/alerts/sample-alert-0001",
        details={"pci_scope": "in"},
    )
    return template_variables(
        alert,
        integration_id="sample-integration",
        integration_name="Sample integration",
        idempotency_key="ar-" + "0" * 40,
    )


def validate_template(source: str) -> None:
    """Compile the pattern and render it against a sample alert; BodyTemplateError says
    why it cannot be used."""
    template = compile_template(source)
    try:
        template.render(sample_variables())
    except BodyTemplateError as exc:
        raise BodyTemplateError(f"fails on a sample alert: {exc}") from None
