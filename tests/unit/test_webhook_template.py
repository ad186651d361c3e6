"""The body-pattern sandbox: what a pattern sees, what it may not do, and its limits."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
from typing import Any

import pytest

from schemas.models import Alert
from sinks.webhook.template import (
    MAX_OUTPUT_BYTES,
    MAX_TEMPLATE_BYTES,
    VARIABLES,
    BodyTemplateError,
    compile_template,
    sample_variables,
    template_variables,
    validate_template,
)


def alert(**overrides: Any) -> Alert:
    fields: dict[str, Any] = {
        "alert_id": "alert-7",
        "tenant_id": "tenant-a",
        "event_type": "pci_scope_change",
        "risk_level": "critical",
        "title": 'Page "checkout" entered PCI scope\n</script> \\ ünï',
        "detected_at": dt.datetime(2024, 5, 1, 12, 0, 1, tzinfo=dt.UTC),
        "page_url": "https://shop.example.com/pay",
        "details": {"reason": "payment form", "script_hash": "abc123"},
    }
    fields.update(overrides)
    return Alert.model_validate(fields)


def variables(**overrides: Any) -> dict[str, Any]:
    return template_variables(
        alert(**overrides),
        integration_id="wh-1",
        integration_name="SOC hook",
        idempotency_key="ar-key",
    )


def render(source: str, values: dict[str, Any] | None = None) -> str:
    return compile_template(source).render(variables() if values is None else values)


def refusal(source: str) -> str:
    """The message with which validation refuses `source`."""
    with pytest.raises(BodyTemplateError) as info:
        validate_template(source)
    return str(info.value)


def pattern_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "webhook-body-pattern"]


def wait_for_no_pattern_threads(timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while pattern_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pattern_threads() == [], "a render thread kept running after its deadline"


# -- what a pattern sees ---------------------------------------------------------------


def test_every_documented_variable_is_defined() -> None:
    values = variables()
    assert set(values) == set(VARIABLES)
    assert set(sample_variables()) == set(VARIABLES)


def test_alert_fields_integration_and_key() -> None:
    out = render(
        "{{ alert_id }}|{{ tenant_id }}|{{ event_type }}|{{ risk_level }}|{{ detected_at }}"
        "|{{ page_url }}|{{ integration.id }}|{{ integration.name }}|{{ idempotency_key }}"
    )
    assert out == (
        "alert-7|tenant-a|pci_scope_change|critical|2024-05-01T12:00:01Z"
        "|https://shop.example.com/pay|wh-1|SOC hook|ar-key"
    )


def test_absent_fields_print_as_nothing_and_tojson_as_null() -> None:
    out = render("[{{ description }}][{{ script_url }}] {{ domain|tojson }}")
    assert out == "[][] null"


def test_details_key_the_alert_lacks_reads_empty() -> None:
    assert render("{{ details.reason }}/{{ details.nope }}/{{ details.get('x', 'd') }}") == (
        "payment form//d"
    )
    assert render("{{ details|tojson }}", variables(details=None)) == "{}"


def test_tojson_makes_a_valid_json_document_from_hostile_text() -> None:
    source = '{"text": {{ title|tojson }}, "all": {{ alert|tojson }}, "d": {{ details|tojson }}}'
    document = json.loads(render(source))
    assert document["text"] == alert().title
    assert document["all"] == alert().wire()
    assert document["d"] == {"reason": "payment form", "script_hash": "abc123"}


def test_tojson_indent_is_bounded() -> None:
    assert json.loads(render("{{ details|tojson(indent=2) }}"))["reason"] == "payment form"
    assert "indent" in refusal("{{ details|tojson(indent=100) }}")


def test_a_realistic_pattern_with_loops_macros_and_filters() -> None:
    source = (
        "{% macro field(name, value) %}{{ name|tojson }}: {{ value|tojson }}{% endmacro %}"
        '{"summary": {{ ("[" ~ risk_level|upper ~ "] " ~ title|truncate(20))|tojson }},'
        " {{ field('id', alert_id) }},"
        ' "details": [{% for k, v in details|dictsort %}'
        '{"k": {{ k|tojson }}, "v": {{ v|tojson }}}{{ "," if not loop.last }}'
        "{% endfor %}],"
        ' "words": {{ title.split()|length }}}'
    )
    document = json.loads(render(source))
    assert document["summary"].startswith("[CRITICAL] Page")
    assert document["id"] == "alert-7"
    assert document["details"] == [
        {"k": "reason", "v": "payment form"},
        {"k": "script_hash", "v": "abc123"},
    ]
    assert document["words"] == 8


def test_trailing_newline_is_kept() -> None:
    assert render("{{ alert_id }}\n") == "alert-7\n"


def test_compiled_patterns_are_cached_by_source() -> None:
    assert compile_template("{{ title }}") is compile_template("{{ title }}")


# -- errors say what and where ---------------------------------------------------------


def test_unknown_variable_fails_validation_with_the_variable_list() -> None:
    message = refusal("line one\n{{ titel }}")
    assert "'titel' is undefined" in message
    assert "line 2" in message
    assert "alert_id" in message and "idempotency_key" in message


def test_syntax_error_names_the_line() -> None:
    message = refusal("ok\n{% for %}")
    assert message.startswith("line 2:")


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{% extends 'base' %}", "{% extends %} is not available"),
        ("{% include 'x' %}", "{% include %} is not available"),
        ("{% import 'x' as y %}", "{% import %} is not available"),
        ("{% block b %}{% endblock %}", "{% block %} is not available"),
    ],
)
def test_loading_and_inheritance_are_not_available(source: str, reason: str) -> None:
    assert reason in refusal(source)


# -- sandbox escapes fail at validation ------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner.__init__.__globals__.os }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ range.__self__ }}",
        "{{ ''['__class__'] }}",
        "{{ ''|attr('__class__') }}",
        "{{ [details]|map(attribute='__class__')|list }}",
        "{{ [details]|selectattr('__class__')|list }}",
        "{{ details|attr('__class__') }}",
        "{{ alert.__class__ }}",
        "{{ self.__init__.__globals__ }}",
        "{{ (''|attr('__cla' ~ 'ss__')) }}",
        "{{ ''.format_map({}) }}",
        "{{ ''.encode() }}",
        "{{ 'a\tb'.expandtabs(8) }}",
        "{{ '{0.__class__}'.format('') }}",
        "{{ details.update({'a': 'b'}) }}",
        "{{ [1].append(2) }}",
        "{% set ns = namespace(a=1) %}",
        "{{ config }}",
        "{{ request }}",
        "{{ __builtins__ }}",
        # an escape in a branch the sample alert never takes is still refused
        "{% if risk_level == 'never' %}{{ ''.__class__.__mro__ }}{% endif %}",
    ],
)
def test_escape_attempts_fail_at_validation(source: str) -> None:
    message = refusal(source)
    assert any(
        text in message
        for text in ("not accessible", "unsafe", "is undefined", "not allowed", "no attribute")
    ), message


def test_refused_private_names_are_named() -> None:
    assert "'__mro__' is not accessible" in refusal("{{ ''.__class__.__mro__ }}")


def test_underscore_text_that_is_not_a_name_is_fine() -> None:
    assert render("{{ ['a', 'b']|join('__') }}{{ '_' }}") == "a__b_"


# -- limits ----------------------------------------------------------------------------


def test_source_over_64_kib_is_refused() -> None:
    source = "x" * (MAX_TEMPLATE_BYTES + 1)
    assert "larger than 64 KiB" in refusal(source)
    validate_template("x" * MAX_TEMPLATE_BYTES)  # the limit itself is fine


def test_output_over_1_mib_is_refused() -> None:
    message = refusal("{% for i in range(2000) %}{{ 'x'|center(1000) }}{% endfor %}")
    assert "the body would be larger than 1024 KiB" in message
    assert len(render("{% for i in range(1000) %}{{ 'x'|center(1000) }}{% endfor %}")) == (
        1_000_000
    )
    assert MAX_OUTPUT_BYTES == 1024 * 1024


def test_range_is_bounded() -> None:
    assert "range() is limited to 10000 items" in refusal("{% for i in range(10**9) %}{% endfor %}")
    assert render("{{ range(10000)|length }}") == "10000"


def test_a_huge_loop_stops_at_the_time_limit_and_its_thread_ends() -> None:
    source = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    assert "rendering took longer than 1 s" in refusal(source)
    assert time.monotonic() - started < 2.0
    wait_for_no_pattern_threads()


def test_the_time_limit_also_stops_output_loops() -> None:
    template = compile_template(
        "{% for i in range(10000) %}{% for j in range(10000) %}{{ '' }}{% endfor %}{% endfor %}"
    )
    with pytest.raises(BodyTemplateError, match=r"took longer than 0\.2 s"):
        template.render(variables(), timeout=0.2)
    wait_for_no_pattern_threads()


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ 'x' * 10**9 }}", "the repeated value would be larger"),
        ("{{ ((range(10000)|list) * 1000)|length }}", "the repeated value would be larger"),
        ("{{ 10 ** (10 ** 8) }}", "numbers are limited to"),
        ("{{ (2 ** 10000) * (2 ** 10000) }}", "numbers are limited to"),
        ("{{ '%0999999999d' % 1 }}", "widths are limited"),
        ("{{ '%*d' % (10 ** 7, 1) }}", "numbers given as arguments are limited"),
        ("{{ '%0999999999d'|format(1) }}", "widths are limited"),
        ("{{ '{:>999999999}'.format(1) }}", "widths are limited"),
        ("{{ 'x'|center(10 ** 9) }}", "numbers given as arguments are limited"),
        ("{{ 'x'.zfill(10 ** 9) }}", "numbers given as arguments are limited"),
        ("{{ description.replace('', 'x'|center(100000)) }}", "replaced text would be larger"),
        ("{{ title|replace('', 'x'|center(100000)) }}", "replaced text would be larger"),
        ("{{ range(10000)|join('y'|center(1000)) }}", "joined text would be larger"),
        ("{{ 'y'.join(range(10000)|map('string')|map('center', 1000)) }}", "larger than"),
        ("{{ range(10000)|map('center', 1000)|join }}", "joined text would be larger"),
        ("{% set x = 'a'|center(600000) %}{{ x ~ x }}", "~ concatenation would be larger"),
        ("{% set x = 'a'|center(600000) %}{{ x + x }}", "the sum would be larger"),
        ("{% set x = 'a'|center(600000) %}{{ [x, x]|join }}", "would be larger"),
        ("{% set x = 'a'|center(600000) %}{{ '%s%s' % (x, x) }}", "formatted text"),
        ("{{ ('a\\n' * 1000)|indent(width='x'|center(10000)) }}", "indented text"),
        ("{{ title|wordwrap(1, wrapstring='x'|center(100000)) }}", "wrapped text"),
        ("{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('ab') }}", "would be larger"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "too deeply"),
        (
            "{% set x = 'a'|center(1000000) %}{% set y %}{% for i in range(3) %}{{ x }}"
            "{% endfor %}{% endset %}{{ y|length }}",
            "a block's text would be larger",
        ),
        (
            "{% filter upper %}{% for i in range(2000) %}{{ 'x'|center(1000) }}{% endfor %}"
            "{% endfilter %}",
            "a block's text would be larger",
        ),
        (
            "{% for i in range(10000) %}{% set y = 'a'|center(2000) %}{% endfor %}",
            "more than 16 MiB of text in all",
        ),
        ("{{ [[1] * 10] * 10|sum(start=[]) }}", "only numbers can be added up"),
        ("{{ '\\ud800' }}", "not valid UTF-8"),
    ],
)
def test_growth_is_checked_before_it_allocates(source: str, reason: str) -> None:
    assert reason in refusal(source)


def test_bounded_operations_within_limits_still_work() -> None:
    assert render("{{ 'ab' * 3 }}|{{ 2 ** 10 }}|{{ '%05d' % 42 }}|{{ '{:>4}'.format(7) }}") == (
        "ababab|1024|00042|   7"
    )
    assert render("{{ title.replace('Page', 'Site')|truncate(13, true, '') }}") == 'Site "checkou'
    assert render("{{ [1, 2, 3]|sum }}|{{ 'a b'.split()|join('-') }}") == "6|a-b"


# -- rendering off the event loop ------------------------------------------------------


async def test_render_async_does_not_block_the_event_loop() -> None:
    template = compile_template(
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        with pytest.raises(BodyTemplateError, match=r"took longer than 0\.3 s"):
            await template.render_async(variables(), timeout=0.3)
    finally:
        task.cancel()
    assert ticks >= 10  # the loop kept running while the pattern spun
    wait_for_no_pattern_threads()


async def test_concurrent_renders_keep_their_own_state() -> None:
    template = compile_template(
        "{{ alert_id }}:{% for i in range(200) %}{{ 'x'|center(1000) }}{% endfor %}"
    )
    outs = await asyncio.gather(
        *(template.render_async(variables(alert_id=f"a-{n}")) for n in range(20))
    )
    for n, out in enumerate(outs):
        assert out.startswith(f"a-{n}:")
        assert len(out) == len(f"a-{n}:") + 200_000


def test_default_and_defined_work_with_strict_undefined() -> None:
    assert render("{{ nope|default('x') }}|{{ nope is defined }}|{{ details.x is defined }}") == (
        "x|False|True"
    )


def test_loop_variables_are_not_counted_as_macro_arguments() -> None:
    """Jinja hands a macro called in a loop the loop's variables as `_loop_vars`."""
    source = (
        "{% macro m(v) %}{{ v|length }}{% endmacro %}{% for i in range(3) %}"
        "{% set x = 'a'|center(400000) %}{% set y = x %}{{ m(x) }},{% endfor %}"
    )
    assert render(source) == "400000,400000,400000,"
