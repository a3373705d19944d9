"""OpenAI conformance: the official `openai` Python package against a real `verre serve`.

Each server is started by the test on 127.0.0.1 with `--port 0` (the address is read from
its stderr) and stopped at the end. It serves a chat model and an embedding model.
Environment:
  VERRE_BIN                   the verre binary (required)
  VERRE_TEST_MODEL            the chat model (default smollm2-135m; VERRE_HOME must hold it)
  VERRE_TEST_EMBEDDING_MODEL  the embedding model (default minilm-l6; VERRE_HOME must hold it)
"""

import json
import math
import os
import re
import signal
import subprocess
import tempfile
import threading
import time

import urllib.error
import urllib.request

import typing

import openai
import pydantic
import pytest

MODEL = os.environ.get("VERRE_TEST_MODEL", "smollm2-135m")
EMBEDDING_MODEL = os.environ.get("VERRE_TEST_EMBEDDING_MODEL", "minilm-l6")
# Vectors from sentence-transformers' own pipeline for all-MiniLM-L6-v2.
EMBEDDING_FIXTURE = os.path.join(
    os.path.dirname(__file__), "..", "..", "crates", "engine", "tests", "fixtures", "minilm-l6.json"
)
HI = [{"role": "user", "content": "What is 2+2?"}]


class Reply:
    def __init__(self, status, headers, body):
        self.status_code, self.headers, self.text = status, headers, body

    def json(self):
        return json.loads(self.text)


def http(method, url, body=None):
    """A plain HTTP request, errors included (the openai client hides some of them)."""
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return Reply(r.status, r.headers, r.read().decode())
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.headers, e.read().decode())


class Server:
    """A `verre serve` child process on a free loopback port."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [os.environ["VERRE_BIN"], "serve", "-m", f"{MODEL},{EMBEDDING_MODEL}", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        self.url = None
        while self.url is None:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"verre serve exited with {self.proc.wait()} before listening")
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
            assert time.monotonic() < deadline, "verre serve did not start in 60 s"
        self.first_health = http("GET", f"{self.url}/health")
        # Keep reading stderr so that the server never blocks on a full pipe.
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        self.wait_ready()

    def wait_ready(self):
        deadline = time.monotonic() + 60
        while http("GET", f"{self.url}/health").status_code != 200:
            assert time.monotonic() < deadline, "the model did not load in 60 s"
            time.sleep(0.05)

    def client(self, api_key="none", **kw):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kw)

    def metric(self, name, model=MODEL):
        text = http("GET", f"{self.url}/metrics").text
        m = re.search(rf'^{re.escape(name)}{{model_name="{re.escape(model)}"}} (\S+)$', text, re.M)
        assert m, f"{name} missing from /metrics:\n{text}"
        return float(m.group(1))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server):
    return server.client()


@pytest.fixture(scope="session")
def keyed():
    """A server with API keys and room for one running and one waiting request."""
    with tempfile.TemporaryDirectory() as d:
        keys = os.path.join(d, "keys")
        out = subprocess.run(
            [os.environ["VERRE_BIN"], "keys", "add", "pytest", "--file", keys],
            check=True, capture_output=True, text=True,
        )
        key = out.stdout.strip()
        assert key.startswith("vk-") and key not in open(keys).read()
        s = Server("--api-key-file", keys, "--max-running", "1", "--max-waiting", "1")
        s.key = key
        yield s
        s.stop()


def error_of(exc):
    body = exc.response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}, body
    return body["error"]


# --- chat ---------------------------------------------------------------------------

def test_chat(client):
    r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=24, temperature=0)
    assert r.object == "chat.completion" and r.model == MODEL
    c = r.choices[0]
    assert c.message.role == "assistant" and "4" in c.message.content
    assert c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= 24
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_chat_content_parts_and_system_role(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
        ],
        max_completion_tokens=8,
        temperature=0,
    )
    assert r.choices[0].message.content


def test_stream_with_usage_matches_the_whole_answer(client):
    whole = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=24, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=24, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert text == whole.choices[0].message.content
    assert finish == [whole.choices[0].finish_reason]
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens


def test_n_choices(client):
    r = client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=12, temperature=1.0, seed=7, n=2, logprobs=True,
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content != r.choices[1].message.content
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)


def test_n_choices_stream(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=8, temperature=1.0, seed=3, n=2, stream=True,
    )
    finished = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_stop_string(client):
    free = client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=24, temperature=0
    ).choices[0].message.content
    words = free.split()
    assert len(words) >= 3, free
    stop = " " + words[2]
    r = client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=24, temperature=0, stop=[stop, "never-there"],
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == free[: free.index(stop)]


def test_seed_reproduces(client):
    def sample(seed):
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=16, temperature=1.0, top_p=0.95, seed=seed,
        ).choices[0].message.content

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(s) != first for s in (1, 2, 3))


def test_penalties_are_accepted(client):
    r = client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=16, temperature=0,
        presence_penalty=1.5, frequency_penalty=1.5, user="pytest",
    )
    assert r.choices[0].message.content


def test_logprobs(client):
    r = client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=10, temperature=0, logprobs=True, top_logprobs=3,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].token == entry.token
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    assert "".join(e.token for e in content).startswith(r.choices[0].message.content)


# --- completions --------------------------------------------------------------------

def test_completions(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 5


def test_completions_prompt_array_echo_logprobs(client):
    prompts = ["One, two, three,", "The sky is"]
    r = client.completions.create(
        model=MODEL, prompt=prompts, max_tokens=4, temperature=0, echo=True, logprobs=2,
    )
    assert [c.index for c in r.choices] == [0, 1]
    for c, p in zip(r.choices, prompts):
        assert c.text.startswith(p)
        lp = c.logprobs
        assert lp.token_logprobs[0] is None
        assert all(x <= 0 for x in lp.token_logprobs[1:])
        assert len(lp.tokens) == len(lp.text_offset) == len(lp.top_logprobs)
        assert lp.text_offset == sorted(lp.text_offset)
    assert r.usage.completion_tokens == 8


def test_completions_token_prompt(client):
    r = client.completions.create(model=MODEL, prompt=[[504, 3158, 314], [28, 29]], max_tokens=3, echo=True)
    assert len(r.choices) == 2 and all(c.text for c in r.choices)
    assert r.usage.prompt_tokens == 5
    scored = client.completions.create(
        model=MODEL, prompt="Hello, my name is", max_tokens=0, echo=True, logprobs=0,
    ).choices[0]
    assert scored.text == "Hello, my name is" and scored.logprobs.tokens


def test_completions_stream(client):
    whole = client.completions.create(model=MODEL, prompt="Hello, my name is", max_tokens=6, temperature=0)
    stream = client.completions.create(
        model=MODEL, prompt="Hello, my name is", max_tokens=6, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


# --- embeddings ---------------------------------------------------------------------

def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_match_sentence_transformers(server, client):
    cases = json.load(open(EMBEDDING_FIXTURE))["cases"]
    before = server.metric("verre:prompt_tokens_total", EMBEDDING_MODEL)
    # One case is longer than the model's 256 tokens: sentence-transformers cuts it, and
    # verre does too when asked (`truncate`); unasked, it refuses rather than cut silently.
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=EMBEDDING_MODEL, input=[c["text"] for c in cases])
    assert "truncate" in error_of(e.value)["message"]
    # The SDK asks for base64 unless told otherwise, and decodes it to floats.
    r = client.embeddings.create(model=EMBEDDING_MODEL, input=[c["text"] for c in cases],
                                 extra_body={"truncate": True})
    assert r.object == "list" and r.model == EMBEDDING_MODEL and len(r.data) == len(cases)
    for i, (d, case) in enumerate(zip(r.data, cases)):
        assert d.object == "embedding" and d.index == i
        assert len(d.embedding) == len(case["embedding"]) == 384
        assert cosine(d.embedding, case["embedding"]) >= 0.9999, case["text"]
    tokens = sum(c["n_tokens"] for c in cases)
    assert r.usage.prompt_tokens == r.usage.total_tokens == tokens
    assert server.metric("verre:prompt_tokens_total", EMBEDDING_MODEL) == before + tokens
    floats = client.embeddings.create(model=EMBEDDING_MODEL, input=cases[0]["text"],
                                      encoding_format="float", dimensions=384)
    assert floats.data[0].embedding == pytest.approx(r.data[0].embedding, abs=1e-6)


def test_embeddings_of_token_ids_and_similarity(client):
    texts = ["The quick brown fox jumps over the lazy dog.",
             "A fast auburn fox leapt over a sleepy hound.",
             "Invoice 2024-117: amount due EUR 1,250.00 by 30 June."]
    a, b, c = (d.embedding for d in client.embeddings.create(model=EMBEDDING_MODEL, input=texts).data)
    assert cosine(a, b) > cosine(a, c) + 0.2
    # Ids are this model's (BERT WordPiece, [CLS]=101 ... [SEP]=102), taken as given.
    r = client.embeddings.create(model=EMBEDDING_MODEL, input=[[101, 7592, 2088, 102], [101, 7592, 102]])
    assert len(r.data) == 2 and r.usage.prompt_tokens == 7


# --- models -------------------------------------------------------------------------

def test_models(client):
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids and EMBEDDING_MODEL in ids
    m = client.models.retrieve(MODEL)
    assert m.id == MODEL and m.object == "model"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert error_of(e.value)["code"] == "model_not_found"


# --- errors -------------------------------------------------------------------------

def test_bad_json_is_400(server):
    r = http("POST", f"{server.url}/v1/chat/completions", b'{"model": ')
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_bad_field_is_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=HI, temperature=5)
    assert error_of(e.value)["param"] == "temperature"


def test_unsupported_field_is_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=HI, logit_bias={"1": 5})
    err = error_of(e.value)
    assert err["param"] == "logit_bias" and err["code"] == "unsupported_parameter"
    # Unknown fields are ignored, as OpenAI ignores them.
    r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2, extra_body={"frobnicate": 1})
    assert r.choices


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30)
    country: typing.Literal["France", "Germany", "Italy", "Spain"]
    population: int = pydantic.Field(ge=0)
    landmarks: typing.List[str] = pydantic.Field(max_length=3)


def test_parse_with_a_pydantic_model(client):
    r = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me about Paris."}],
        response_format=City,
        max_tokens=300,
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    city = choice.message.parsed
    assert isinstance(city, City), choice.message.content
    assert city.country in ("France", "Germany", "Italy", "Spain")
    assert len(city.landmarks) <= 3 and city.population >= 0


def test_json_object_and_seeded_sampling(client):
    for seed in (1, 2):
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Give me a recipe as JSON."}],
            response_format={"type": "json_object"}, max_tokens=400, temperature=1.0, seed=seed,
        )
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(r.choices[0].message.content), dict)
        else:
            # Cut by max_tokens: a prefix of a JSON object, never free text.
            assert r.choices[0].message.content.startswith("{")


def test_regex_grammar_extension_on_completions(client):
    r = client.completions.create(
        model=MODEL, prompt="The year the Eiffel Tower opened:", max_tokens=10, temperature=0,
        extra_body={"response_format": {"type": "grammar", "syntax": "regex", "grammar": " [0-9]{4}"}},
    )
    assert re.fullmatch(r" [0-9]{4}", r.choices[0].text), r.choices[0].text


def test_unenforceable_schema_is_400_not_free_text(client):
    schema = {"type": "object", "properties": {"a": {"type": "string"}},
              "if": {"required": ["a"]}, "then": {"required": ["b"]}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=HI, max_tokens=20,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    err = error_of(e.value)
    assert err["param"] == "response_format" and err["code"] == "unsupported_schema"
    assert "if" in err["message"], err["message"]


WEATHER = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40},
                           "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}, {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}},
}]
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Lyon?"}]


def test_streamed_tool_call_reassembles(client):
    calls = {}
    finish = None
    for chunk in client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=WEATHER, tool_choice="required",
        parallel_tool_calls=False, max_tokens=120, temperature=0, stream=True,
    ):
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"name": "", "arguments": "", "id": None})
                if tc.id:
                    entry["id"] = tc.id
                if tc.function and tc.function.name:
                    entry["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    entry["arguments"] += tc.function.arguments
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert len(calls) == 1
    call = calls[0]
    assert call["id"].startswith("call_") and call["name"] in ("get_weather", "get_time")
    args = json.loads(call["arguments"])
    if call["name"] == "get_weather":
        assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit")


def test_named_tool_choice_and_result_fed_back(client):
    r = client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=WEATHER, max_tokens=120, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert len(msg.tool_calls) == 1 and msg.tool_calls[0].function.name == "get_weather"
    args = json.loads(msg.tool_calls[0].function.arguments)
    assert isinstance(args["city"], str)
    follow = ASK_WEATHER + [
        {"role": "assistant", "content": None, "tool_calls": [tc.model_dump() for tc in msg.tool_calls]},
        {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": json.dumps({"temp_c": 21})},
    ]
    r = client.chat.completions.create(model=MODEL, messages=follow, tools=WEATHER, tool_choice="none",
                                       max_tokens=30, temperature=0)
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content


def test_context_too_long_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi " * 10000}])
    assert error_of(e.value)["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=10**6)
    assert error_of(e.value)["code"] == "context_length_exceeded"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=HI)
    assert error_of(e.value)["param"] == "model"


def test_unknown_embedding_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert error_of(e.value)["code"] == "model_not_found"


def test_each_kind_of_model_is_refused_by_the_other_endpoint(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL, input="hello")
    err = error_of(e.value)
    assert err["param"] == "model" and f"{MODEL} is a chat model" in err["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=EMBEDDING_MODEL, messages=HI)
    err = error_of(e.value)
    assert err["param"] == "model" and f"{EMBEDDING_MODEL} is an embedding model" in err["message"]


def test_bad_embedding_requests_are_400(client):
    for kwargs, param in [
        (dict(input=""), "input"),
        (dict(input=["a", ""]), "input"),
        (dict(input="a", dimensions=128), "dimensions"),
        (dict(input=[[101, 10**6, 102]]), "input"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.embeddings.create(model=EMBEDDING_MODEL, **kwargs)
        assert error_of(e.value)["param"] == param, kwargs


def test_missing_or_wrong_key_is_401(keyed):
    for key in ("none", "vk-" + "0" * 48):
        with pytest.raises(openai.AuthenticationError) as e:
            keyed.client(api_key=key).models.list()
        assert error_of(e.value)["code"] == "invalid_api_key"
    assert http("GET", f"{keyed.url}/v1/models").status_code == 401
    assert MODEL in [m.id for m in keyed.client(api_key=keyed.key).models.list()]
    assert http("GET", f"{keyed.url}/health").status_code == 200


def test_full_queue_is_429_with_retry_after(keyed):
    c = keyed.client(api_key=keyed.key)
    long = dict(model=MODEL, messages=HI, max_tokens=2000, stream=True, extra_body={"ignore_eos": True})
    running = c.chat.completions.create(**long)
    next(iter(running))  # the role chunk: sent at once, admitted or not
    # Admitted and decoding: the one running slot is taken.
    wait_for(lambda: keyed.metric("verre:num_requests_running") == 1)
    waiting = c.chat.completions.create(**long)  # answered with headers: queued
    wait_for(lambda: keyed.metric("verre:num_requests_waiting") == 1)
    try:
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
        assert int(e.value.response.headers["retry-after"]) >= 1
        assert error_of(e.value)["code"] == "rate_limit_exceeded"
    finally:
        running.close()
        waiting.close()
    wait_for(lambda: keyed.metric("verre:num_requests_running") == 0
             and keyed.metric("verre:num_requests_waiting") == 0)


def test_64_concurrent_clients_get_answers_or_429():
    """64 streaming clients at once against room for 8 running and 24 waiting: every client
    gets a whole answer or a clean 429, nothing else; the engine drains to idle."""
    s = Server("--max-running", "8", "--max-waiting", "24")
    try:
        c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="none", max_retries=0, timeout=300)
        outcomes = []
        lock = threading.Lock()

        def one(i):
            try:
                text, finish = "", None
                for chunk in c.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"Count to {i % 7 + 3}."}],
                    max_tokens=12, temperature=0, stream=True,
                ):
                    for ch in chunk.choices:
                        text += ch.delta.content or ""
                        finish = ch.finish_reason or finish
                result = ("ok", finish)
            except openai.RateLimitError:
                result = ("429", None)
            except Exception as e:  # anything else is a failure of the server
                result = ("error", repr(e))
            with lock:
                outcomes.append(result)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert len(outcomes) == 64
        errors = [o for o in outcomes if o[0] == "error"]
        assert not errors, errors
        ok = [o for o in outcomes if o[0] == "ok"]
        assert len(ok) >= 8 and all(f in ("stop", "length") for _, f in ok), outcomes
        wait_for(lambda: s.metric("verre:num_requests_running") == 0
                 and s.metric("verre:num_requests_waiting") == 0)
        assert s.metric("verre:kv_cache_usage_perc") == 0
    finally:
        s.stop()


def test_503_while_loading():
    """A fresh server answers 503 until its model is loaded. Loading the small model takes a
    fraction of a second, so the first probe may already find it ready; when it does not,
    the answer must be a proper 503."""
    s = Server()
    try:
        r = s.first_health
        assert r.status_code in (200, 503)
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "model_loading"
    finally:
        s.stop()


# --- responses ----------------------------------------------------------------------

# The weather tool in the Responses API's flat shape.
RESPONSES_WEATHER = [{"type": "function", "name": "get_weather", "strict": True,
                      "description": WEATHER[0]["function"]["description"],
                      "parameters": WEATHER[0]["function"]["parameters"]}]


def test_responses_create_retrieve_continue_delete(client):
    r = client.responses.create(model=MODEL, instructions="Answer in one short sentence.",
                                input="What is 2+2?", max_output_tokens=24, temperature=0,
                                metadata={"suite": "openai"})
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status in ("completed", "incomplete"), r
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    assert r.output_text, r
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.metadata == {"suite": "openai"} and r.store is True

    again = client.responses.retrieve(r.id)
    assert again.id == r.id and again.output_text == r.output_text
    items = client.responses.input_items.list(r.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].role == "user"

    follow = client.responses.create(model=MODEL, previous_response_id=r.id,
                                     input="And 3+3?", max_output_tokens=16)
    assert follow.previous_response_id == r.id
    history = client.responses.input_items.list(follow.id, order="asc")
    assert [i.type for i in history.data] == ["message", "message", "message"]
    client.responses.delete(follow.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(follow.id)


def test_responses_store_false_cannot_be_continued(client):
    r = client.responses.create(model=MODEL, input="Hi", store=False, max_output_tokens=4)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model=MODEL, input="Hi", previous_response_id=r.id)
    assert error_of(e.value)["param"] == "previous_response_id"


def test_responses_stream_helper_parses_every_event(client):
    # Room to finish: the helper's final response is the `response.completed` event's.
    with client.responses.stream(model=MODEL, input="Say hello.", max_output_tokens=200,
                                 temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"], kinds
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done",
                            "response.output_item.done"], kinds
    assert kinds[-1] == "response.completed", kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed and streamed == final.output_text


def test_responses_stream_true_yields_typed_events(client):
    events = list(client.responses.create(model=MODEL, input="Say hello.",
                                          max_output_tokens=8, stream=True))
    assert isinstance(events[0], openai.types.responses.ResponseCreatedEvent)
    assert isinstance(events[-1], (openai.types.responses.ResponseCompletedEvent,
                                   openai.types.responses.ResponseIncompleteEvent))
    assert events[-1].response.usage.output_tokens > 0


def test_responses_parse_with_a_pydantic_model(client):
    r = client.responses.parse(model=MODEL, input="Tell me about Paris.", text_format=City,
                               max_output_tokens=300, temperature=0)
    assert r.status == "completed", r.output_text
    city = r.output_parsed
    assert isinstance(city, City), r.output_text
    assert city.country in ("France", "Germany", "Italy", "Spain")


def test_responses_function_call_and_its_output(client):
    r = client.responses.create(model=MODEL, input=ASK_WEATHER, tools=RESPONSES_WEATHER,
                                tool_choice={"type": "function", "name": "get_weather"},
                                max_output_tokens=120, temperature=0)
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather", r.output
    args = json.loads(calls[0].arguments)
    assert isinstance(args["city"], str)
    follow = client.responses.create(
        model=MODEL, previous_response_id=r.id, tools=RESPONSES_WEATHER, max_output_tokens=30,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                "output": json.dumps({"temp_c": 21})}],
    )
    assert follow.status in ("completed", "incomplete"), follow


def test_responses_background_and_cancel(client):
    r = client.responses.create(model=MODEL, input="Tell a very long story.", background=True,
                                max_output_tokens=4000)
    assert r.status == "queued" and r.background is True
    cancelled = client.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(r.id).status == "cancelled"


def test_responses_hosted_tools_are_400_naming_them(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
    assert error_of(e.value)["param"] == "tools[0].type"


# --- cancellation and metrics -------------------------------------------------------

def wait_for(cond, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_disconnect_cancels_generation(server, client):
    stream = client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=3000, stream=True, extra_body={"ignore_eos": True},
    )
    it = iter(stream)
    for _ in range(4):
        next(it)
    assert server.metric("verre:num_requests_running") == 1
    stream.close()
    wait_for(lambda: server.metric("verre:num_requests_running") == 0)
    tokens = server.metric("verre:generation_tokens_total")
    time.sleep(0.5)
    assert server.metric("verre:generation_tokens_total") == tokens, "still generating"


def test_metrics_have_vllm_shapes(server, client):
    client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4)
    text = http("GET", f"{server.url}/metrics").text
    for name, kind in [
        ("verre:time_to_first_token_seconds", "histogram"),
        ("verre:inter_token_latency_seconds", "histogram"),
        ("verre:e2e_request_latency_seconds", "histogram"),
        ("verre:num_requests_running", "gauge"),
        ("verre:num_requests_waiting", "gauge"),
        ("verre:prompt_tokens_total", "counter"),
        ("verre:generation_tokens_total", "counter"),
        ("verre:kv_cache_usage_perc", "gauge"),
        ("verre:prefix_cache_queries_total", "counter"),
        ("verre:prefix_cache_hits_total", "counter"),
        ("verre:num_preemptions_total", "counter"),
        ("verre:request_queue_time_seconds", "histogram"),
    ]:
        assert f"# TYPE {name} {kind}" in text, name
    assert server.metric("verre:e2e_request_latency_seconds_count") >= 1
    assert server.metric("verre:request_queue_time_seconds_count") >= 1
    assert server.metric("verre:prompt_tokens_total") > 0
    # The same prompt again: its system-prompt blocks come from the prefix cache.
    hits = server.metric("verre:prefix_cache_hits_total")
    long = [{"role": "user", "content": "Repeat after me: " + "red green blue " * 30}]
    client.chat.completions.create(model=MODEL, messages=long, max_tokens=2)
    client.chat.completions.create(model=MODEL, messages=long, max_tokens=2)
    assert server.metric("verre:prefix_cache_hits_total") - hits >= 64
    assert 0 <= server.metric("verre:kv_cache_usage_perc") <= 1
