"""The ecosystem matrix, Python side: the clients people build on, each against a real
`verre serve` started on 127.0.0.1 (see tests/openai/test_openai.py's `Server`).

Each test drives the library the way its documentation's first example does, pointed at
verre by its base URL only, and checks what the library hands back to the application (a
parsed object, a tool that ran, a streamed text), not verre's wire format: that is what
tests/openai checks. Versions are pinned in requirements.txt; instructor, which pins an
older openai, runs in a venv of its own (test_instructor.py).

Environment: VERRE_BIN (required), VERRE_TEST_MODEL (default smollm2-135m).
"""

import asyncio
import json
import os
import sys

import pydantic
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "openai"))
from test_openai import MODEL, Server  # noqa: E402  (the conformance suite's server)

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch from the internet


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def base_url(server):
    return f"{server.url}/v1"


class Address(pydantic.BaseModel):
    street: str
    city: str


class Customer(pydantic.BaseModel):
    """A model that nests another one: its JSON schema uses `$defs` and `$ref`."""

    name: str
    address: Address


WEATHER_CALLS = []


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    WEATHER_CALLS.append(city)
    return f"It is sunny in {city}."


# --- openai (official Python client) -------------------------------------------------------


def test_openai_chat_stream_tools_parse(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8,
        temperature=0,
    )
    assert chat.choices[0].message.content

    parts = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count to three."}],
            max_tokens=8,
            temperature=0,
            stream=True,
        )
        if c.choices
    ]
    assert "".join(parts)

    tool = openai.pydantic_function_tool(Customer, name="save_customer")
    called = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Save Ada Lovelace, 12 St James Square, London."}],
        tools=[tool],
        tool_choice="required",
        max_tokens=120,
    )
    calls = called.choices[0].message.tool_calls
    assert called.choices[0].finish_reason == "tool_calls"
    assert len(calls) == 1 and calls[0].function.name == "save_customer"
    Customer.model_validate_json(calls[0].function.arguments)

    parsed = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Ada Lovelace lives at 12 St James Square, London."}],
        response_format=Customer,
        max_tokens=120,
    )
    assert isinstance(parsed.choices[0].message.parsed, Customer)


def test_openai_responses_create_and_stream(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    r = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=16, temperature=0)
    assert r.status in ("completed", "incomplete") and r.output_text

    kinds = []
    text = []
    final = None
    with client.responses.stream(
        model=MODEL, input="Count to three.", max_output_tokens=16, temperature=0
    ) as s:
        for event in s:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text.append(event.delta)
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
        if kinds[-1] == "response.completed":
            # The helper's own final object (it raises when the answer was cut, as it does
            # against OpenAI: `max_output_tokens` ends a response as `incomplete`).
            final = s.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    assert final is not None and final.status == kinds[-1].split(".")[1]
    assert "".join(text) == final.output_text != ""


# --- openai-agents (default: the Responses API) ---------------------------------------------


def test_openai_agents_default_agent_with_one_tool(base_url):
    import agents
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)
    agents.set_default_openai_client(
        AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0), use_for_tracing=False
    )
    WEATHER_CALLS.clear()
    agent = agents.Agent(
        name="weather",
        instructions="Answer with the weather tool.",
        model=MODEL,
        tools=[agents.function_tool(get_weather)],
        # A 135M model does not reliably choose a tool on its own: require the first call;
        # the SDK resets the choice after it, so the agent then answers in text.
        model_settings=agents.ModelSettings(tool_choice="required", max_tokens=64, temperature=0),
    )
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?", max_turns=4)
    assert WEATHER_CALLS, "the tool never ran"
    assert isinstance(result.final_output, str) and result.final_output


# --- langchain-openai ---------------------------------------------------------------------


def test_langchain_structured_output_tools_and_responses(base_url):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=MODEL, base_url=base_url, api_key="none", max_tokens=120, max_retries=0, temperature=0
    )
    customer = llm.with_structured_output(Customer).invoke(
        "Ada Lovelace lives at 12 St James Square, London."
    )
    assert isinstance(customer, Customer)

    @tool
    def weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"sunny in {city}"

    msg = llm.bind_tools([weather], tool_choice="weather").invoke("Weather in Rome?")
    assert len(msg.tool_calls) == 1 and msg.tool_calls[0]["name"] == "weather"
    assert isinstance(msg.tool_calls[0]["args"].get("city"), str)

    responses = ChatOpenAI(
        model=MODEL, base_url=base_url, api_key="none", max_tokens=16, max_retries=0,
        temperature=0, use_responses_api=True,
    )
    assert responses.invoke("Say hello.").text


# --- pydantic-ai --------------------------------------------------------------------------


def test_pydantic_ai_default_output_type_and_responses_model(base_url):
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(base_url=base_url, api_key="none")
    agent = Agent(OpenAIChatModel(MODEL, provider=provider), output_type=Customer)
    out = agent.run_sync(
        "Ada Lovelace lives at 12 St James Square, London.",
        model_settings={"max_tokens": 160, "temperature": 0},
    ).output
    assert isinstance(out, Customer)

    responses = Agent(OpenAIResponsesModel(MODEL, provider=provider))
    text = responses.run_sync("Say hello.", model_settings={"max_tokens": 16, "temperature": 0}).output
    assert isinstance(text, str) and text


# --- litellm ------------------------------------------------------------------------------


def test_litellm_completion_stream_and_async(base_url):
    import litellm

    kw = dict(model=f"openai/{MODEL}", api_base=base_url, api_key="none", max_tokens=8, temperature=0)
    r = litellm.completion(messages=[{"role": "user", "content": "Say hello."}], **kw)
    assert r.choices[0].message.content

    chunks = litellm.completion(messages=[{"role": "user", "content": "Count."}], stream=True, **kw)
    assert "".join(c.choices[0].delta.content or "" for c in chunks)

    async def call():
        return await litellm.acompletion(messages=[{"role": "user", "content": "Hi."}], **kw)

    assert asyncio.run(call()).choices[0].message.content

    schema = {"type": "json_schema", "json_schema": {"name": "customer", "schema": Customer.model_json_schema(), "strict": True}}
    structured = litellm.completion(
        messages=[{"role": "user", "content": "Ada Lovelace, 12 St James Square, London."}],
        response_format=schema,
        **{**kw, "max_tokens": 120},
    )
    Customer.model_validate(json.loads(structured.choices[0].message.content))
