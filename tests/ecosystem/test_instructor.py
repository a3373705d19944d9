"""The ecosystem matrix: instructor in its default mode (a forced tool call) with a model
that nests another one, against a real `verre serve`. instructor pins an older `openai`
than the other clients, so this file runs in a venv of its own (requirements-instructor.txt).

Environment: VERRE_BIN (required), VERRE_TEST_MODEL (default smollm2-135m).
"""

import os
import sys

import pydantic
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "openai"))
from test_openai import MODEL, Server  # noqa: E402


class Address(pydantic.BaseModel):
    street: str
    city: str


class Customer(pydantic.BaseModel):
    name: str
    address: Address


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


def test_instructor_default_mode_with_a_nested_model(server):
    import instructor
    import openai

    client = instructor.from_openai(
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    )
    assert client.mode == instructor.Mode.TOOLS  # the default this test is about
    customer = client.chat.completions.create(
        model=MODEL,
        response_model=Customer,
        messages=[{"role": "user", "content": "Ada Lovelace lives at 12 St James Square, London."}],
        max_tokens=160,
        max_retries=0,
    )
    assert isinstance(customer, Customer) and isinstance(customer.address, Address)
