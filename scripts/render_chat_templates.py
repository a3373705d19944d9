#!/usr/bin/env python3
"""Render every chat template of llama.cpp's `models/templates/` with Python jinja2, the
way Hugging Face transformers renders them, into the fixture that verre's chat-template
test compares against (crates/engine/tests/chat_templates.rs).

Usage:
    python3 scripts/render_chat_templates.py TEMPLATES_DIR OUT.json

TEMPLATES_DIR is `vendor/llama.cpp/models/templates/` of the llama-cpp-python 0.3.36 sdist
(scripts/test.sh extracts it into target/llama-templates). Needs jinja2 (3.1.6 was used).

The environment is transformers' `_compile_jinja_template`: an ImmutableSandboxedEnvironment
with trim_blocks, lstrip_blocks and the loop-controls extension, its own `tojson`
(json.dumps, no HTML escaping, keys in insertion order), `raise_exception` and
`strftime_now`. The `{% generation %}` block (transformers' assistant-mask extension)
renders its body. Differences from transformers, on purpose:
- `strftime_now` reads a fixed clock (2025-03-04 05:06:07), so the fixture is stable;
  the Rust test sets the same instant.
- Only `bos_token` and `eos_token` are passed (what verre passes), as "<s>" and "</s>".

The messages are exactly what verre's API layer hands the template (role, content as a
string, `tool_calls` with `arguments` as an object, `tool_call_id`), so both sides render
the same input; the fixture carries them and the Rust test reads them from it.

Output: {"scenarios": [{name, messages, tools, add_generation_prompt}],
         "templates": {sha256 of the file: {"file", "renders": {scenario: {"text"} | {"error"}}}}}
"""

import datetime
import hashlib
import json
import sys
from pathlib import Path

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

NOW = datetime.datetime(2025, 3, 4, 5, 6, 7)
BOS = "<s>"
EOS = "</s>"


class GenerationBlock(Extension):
    """transformers' AssistantTracker without the mask: `{% generation %}` renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt):
        return NOW.strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city. Say \"Paris\", not 'paris' <FR> & co.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup_invoice",
        "description": "Find an invoice by number.",
        "parameters": {
            "type": "object",
            "properties": {
                "number": {"type": "integer", "description": "Invoice number"},
                "year": {"type": "integer"},
                "paid": {"type": "boolean"},
            },
            "required": ["number"],
        },
    },
}


def msg(role, content, **extra):
    return {"role": role, "content": content, **extra}


def call(call_id, name, arguments):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def scenarios():
    system = msg("system", "You are a careful assistant. Answer in one line.")
    user = msg("user", "Quel temps fait-il à Zürich ? Use <b>bold</b> & 'quotes'.")
    calls = [call("a1B2c3D4e", "get_weather", {"city": "Zürich", "unit": "celsius"})]
    two_calls = [
        call("Xy7Zq01Ab", "get_weather", {"city": "Paris"}),
        call("k9L8m7N6p", "lookup_invoice", {"number": 1042, "year": 2024, "paid": False}),
    ]
    return [
        {
            "name": "chat",
            "messages": [
                system,
                msg("user", "Hello! Who are you?"),
                msg("assistant", "I am an assistant. How can I help?"),
                msg("user", "Tell me a joke about \"templates\" in 日本語."),
            ],
            "tools": None,
            "add_generation_prompt": True,
        },
        {
            "name": "no_system_finished",
            "messages": [msg("user", "2+2?"), msg("assistant", "4")],
            "tools": None,
            "add_generation_prompt": False,
        },
        {
            "name": "tools_offered",
            "messages": [system, user],
            "tools": [WEATHER, LOOKUP],
            "add_generation_prompt": True,
        },
        {
            "name": "tool_call_and_result",
            "messages": [
                system,
                user,
                msg("assistant", "", tool_calls=calls),
                msg("tool", "{\"temperature\": 21.5, \"sky\": \"clear\"}", tool_call_id="a1B2c3D4e"),
            ],
            "tools": [WEATHER, LOOKUP],
            "add_generation_prompt": True,
        },
        {
            "name": "parallel_calls_then_answer",
            "messages": [
                user,
                msg("assistant", "", tool_calls=two_calls),
                msg("tool", "18°C, rain", tool_call_id="Xy7Zq01Ab"),
                msg("tool", "{\"total\": \"1 200,00 €\", \"due\": \"2024-05-01\"}", tool_call_id="k9L8m7N6p"),
                msg("assistant", "Il pleut à Paris (18 °C) et la facture 1042 est due."),
                msg("user", "Merci !"),
            ],
            "tools": [WEATHER, LOOKUP],
            "add_generation_prompt": True,
        },
        {
            # OpenAI-style ids: Mistral's templates refuse them (9 characters expected).
            "name": "openai_call_ids",
            "messages": [
                user,
                msg("assistant", "", tool_calls=[call("call_0123456789abcdef", "get_weather", {"city": "Paris"})]),
                msg("tool", "sunny", tool_call_id="call_0123456789abcdef"),
            ],
            "tools": [WEATHER],
            "add_generation_prompt": True,
        },
    ]


def render(env, source, scenario):
    try:
        template = env.from_string(source)
        text = template.render(
            messages=scenario["messages"],
            tools=scenario["tools"],
            documents=None,
            add_generation_prompt=scenario["add_generation_prompt"],
            bos_token=BOS,
            eos_token=EOS,
        )
        return {"text": text}
    except Exception as e:  # a template error, as transformers would raise it
        return {"error": f"{type(e).__name__}: {e}"}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    env = environment()
    cases = scenarios()
    templates = {}
    for path in sorted(src_dir.glob("*.jinja")):
        data = path.read_bytes()
        source = data.decode("utf-8")
        renders = {c["name"]: render(env, source, c) for c in cases}
        templates[hashlib.sha256(data).hexdigest()] = {"file": path.name, "renders": renders}
    fixture = {
        "generator": "scripts/render_chat_templates.py",
        "jinja2": jinja2.__version__,
        "source": "llama-cpp-python 0.3.36 sdist, vendor/llama.cpp/models/templates/",
        "now": NOW.isoformat(),
        "bos_token": BOS,
        "eos_token": EOS,
        "scenarios": cases,
        "templates": templates,
    }
    out.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    errors = sum("error" in r for t in templates.values() for r in t["renders"].values())
    print(f"{len(templates)} templates x {len(cases)} scenarios, {errors} errors -> {out}")


if __name__ == "__main__":
    main()
