"""Anthropic conformance: the official `anthropic` Python SDK against `/v1/messages` of a real
`verre serve` (started as in test_openai.py, with the same environment)."""

import asyncio
import json

import anthropic
import pytest

from test_openai import MODEL, Server, http

ASK = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    # The SDK appends /v1/messages to the base URL.
    return anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)


# The SDK has no sampling parameters (2.x dropped them); the server takes `temperature`
# as before, and greedy answers can be compared.
GREEDY = {"temperature": 0}


def create(client, **kw):
    args = dict(model=MODEL, max_tokens=24, system="You answer briefly.", messages=ASK, extra_body=GREEDY)
    args.update(kw)
    return client.messages.create(**args)


def test_create(client):
    m = create(client)
    assert m.type == "message" and m.role == "assistant" and m.model == MODEL
    assert m.id.startswith("msg_")
    assert m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens") and m.stop_sequence is None
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 24


def test_stream_matches_the_whole_message(client):
    whole = create(client)
    with client.messages.stream(
        model=MODEL, max_tokens=24, system="You answer briefly.", messages=ASK, extra_body=GREEDY
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text
    assert final.content[0].text == text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens


def test_raw_stream_events_in_order(client):
    events = list(create(client, stream=True))
    types = [e.type for e in events]
    assert types[0] == "message_start"
    assert types[1] == "content_block_start" and events[1].content_block.type == "text"
    assert set(types[2:-3]) == {"content_block_delta"}
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[-2].delta.stop_reason in ("end_turn", "max_tokens")
    assert events[-2].usage.output_tokens > 0


def test_max_tokens_and_stop_sequences(client):
    m = create(client, max_tokens=3)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 3
    text = create(client).content[0].text
    word = text.split()[1]
    m = create(client, stop_sequences=["NEVER SAID", word])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == word
    assert m.content[0].text == text[: text.index(word)]


def test_tool_use_and_tool_result_round_trip(client):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    m = create(client, max_tokens=64, messages=ask, tools=[WEATHER], tool_choice={"type": "any"})
    assert m.stop_reason == "tool_use"
    call = next(b for b in m.content if b.type == "tool_use")
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    assert isinstance(call.input["city"], str)
    answer = create(
        client,
        max_tokens=16,
        tools=[WEATHER],
        messages=ask + [
            {"role": "assistant", "content": m.content},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees, sunny"}
            ]},
        ],
    )
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert answer.usage.input_tokens > m.usage.input_tokens
    # Streamed, the input arrives as JSON deltas the SDK puts together.
    with client.messages.stream(
        model=MODEL, max_tokens=64, system="You answer briefly.", extra_body=GREEDY,
        messages=ask, tools=[WEATHER], tool_choice={"type": "any"},
    ) as stream:
        final = stream.get_final_message()
    streamed = next(b for b in final.content if b.type == "tool_use")
    assert streamed.input == call.input and final.stop_reason == "tool_use"


def test_output_config_format_is_enforced(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    m = create(client, max_tokens=64, output_config={"format": {"type": "json_schema", "schema": schema}})
    answer = json.loads(m.content[0].text)
    assert set(answer) == {"city", "population"} and isinstance(answer["population"], int)


def test_count_tokens(client):
    m = create(client)
    count = client.messages.count_tokens(model=MODEL, system="You answer briefly.", messages=ASK)
    assert count.input_tokens == m.usage.input_tokens


def test_errors_in_anthropic_shape(server, client):
    with pytest.raises(anthropic.BadRequestError) as e:
        create(client, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}
        ]}])
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "image" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as e:
        create(client, model="no-such-model")
    assert e.value.body["error"]["type"] == "not_found_error"
    # max_tokens is required (the SDK insists too; a plain request shows the server does).
    r = http("POST", f"{server.url}/v1/messages",
             b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}]}' % MODEL.encode())
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error" and "max_tokens" in r.text


def test_async_client(server):
    async def run():
        async with anthropic.AsyncAnthropic(base_url=server.url, api_key="none", max_retries=0) as c:
            m = await c.messages.create(model=MODEL, max_tokens=8, messages=ASK, extra_body=GREEDY)
            stream = await c.messages.create(model=MODEL, max_tokens=8, messages=ASK, stream=True)
            types = [e.type async for e in stream]
            return m, types
    m, types = asyncio.run(run())
    assert m.content[0].text
    assert types[0] == "message_start" and types[-1] == "message_stop"
