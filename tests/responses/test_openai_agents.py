"""The OpenAI Agents SDK with its default model (``OpenAIResponsesModel``: the Responses
API) and a function tool, pointed at the gateway as its docs say (a client with the
gateway's base URL and key), against the fake upstream: the model asks for the tool,
the SDK runs it and sends its output back in the whole context, the model answers."""
from __future__ import annotations

import asyncio

import pytest

agents = pytest.importorskip("agents", reason="the test extra installs openai-agents")

CALL = [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]


def test_agent_with_a_function_tool(gw, up):
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)          # no trace export to a third party
    ran = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        up.set(tool_calls=[])                  # the next model turn answers in text
        return f"18C and sunny in {city}"

    client = AsyncOpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0)
    model = agents.OpenAIResponsesModel(model="gpt-relay", openai_client=client)
    agent = agents.Agent(name="weather", instructions="Use the tools.", tools=[get_weather],
                         model=model)
    up.set(tool_calls=CALL)
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Paris?"))
    assert ran == ["Paris"]
    assert result.final_output == "xxxx" * 6
    sent = up.last()["messages"]
    assert sent[0] == {"role": "system", "content": "Use the tools."}
    assert sent[-2]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                     "arguments": '{"city": "Paris"}'}
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_0",
                        "content": "18C and sunny in Paris"}


def test_default_client_and_default_api(gw, up):
    """``set_default_openai_client`` (or OPENAI_BASE_URL/OPENAI_API_KEY) and no model
    class named: the SDK's default, the Responses API."""
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)
    agents.set_default_openai_client(
        AsyncOpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0),
        use_for_tracing=False)
    agents.set_default_openai_api("responses")
    agent = agents.Agent(name="plain", instructions="Be brief.", model="gpt-relay")
    result = asyncio.run(agents.Runner.run(agent, "hi"))
    assert result.final_output == "xxxx" * 6
    assert up.last()["messages"][-1] == {"role": "user", "content": "hi"}
