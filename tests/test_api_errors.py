"""Request validation and error bodies of the OpenAI-compatible API (echo plugin backend),
against an in-process gateway (tests.inprocess)."""
import pytest

ECHO = {"plugins": {"modules": ["tests.plugins.echo_backend"]},
        "models": [{"name": "echo", "backend": "echo"}],
        "server": {"max_body_bytes": 2048}}


@pytest.fixture(scope="module")
def echo_gw(mongo, tmp_path_factory):
    from tests.inprocess import keyed_inprocess
    with keyed_inprocess(tmp_path_factory, mongo.uri, ECHO, "errors") as gw:
        yield gw


def post(gw, body, key="default", path="/v1/chat/completions", raw=None):
    headers = {} if key is None else {"Authorization": f"Bearer {gw.key if key == 'default' else key}"}
    return gw.fetch(path, "POST", raw if raw is not None else body, headers, timeout=30)


def assert_error(resp, status, param=None, code=None):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code
    assert "Traceback" not in resp.text
    return body["error"]


OK = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def test_missing_key_is_401(echo_gw):
    assert_error(post(echo_gw, OK, key=None), 401, code="missing_api_key")


def test_bad_key_is_401_and_does_not_echo_the_key(echo_gw):
    err = assert_error(post(echo_gw, OK, key="ayct_" + "A" * 43), 401, code="invalid_api_key")
    assert "A" * 10 not in err["message"]
    assert_error(post(echo_gw, OK, key="not-a-key"), 401)


def test_malformed_json_is_400(echo_gw):
    assert_error(post(echo_gw, None, raw='{"model": "echo",'), 400, code="invalid_json")
    assert_error(post(echo_gw, None, raw='[1, 2]'), 400, code="invalid_json")
    assert_error(post(echo_gw, None, raw=''), 400, code="invalid_json")


@pytest.mark.parametrize("body,param", [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "echo"}, "messages"),
    ({"model": "echo", "messages": []}, "messages"),
    ({"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({**OK, "temperature": 7}, "temperature"),
    ({**OK, "max_tokens": 0}, "max_tokens"),
    ({**OK, "stream": "yes"}, "stream"),
    ({**OK, "n": 3}, "n"),
    ({**OK, "frobnicate": True}, "frobnicate"),
])
def test_invalid_fields_are_400_naming_the_param(echo_gw, body, param):
    assert_error(post(echo_gw, body), 400, param=param)


def test_unknown_model_is_404(echo_gw):
    assert_error(post(echo_gw, {**OK, "model": "gpt-17"}), 404, param="model",
                 code="model_not_found")
    assert_error(echo_gw.fetch("/v1/models/gpt-17",
                               headers={"Authorization": f"Bearer {echo_gw.key}"}), 404)


def test_body_over_the_limit_is_413(echo_gw):
    big = {**OK, "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_error(post(echo_gw, big), 413, code="request_too_large")


def test_unknown_route_is_json_404(echo_gw):
    assert_error(echo_gw.fetch("/v1/nothing-here"), 404)


def test_completions_validation(echo_gw):
    assert_error(post(echo_gw, {"model": "echo"}, path="/v1/completions"), 400, param="prompt")
    ok = post(echo_gw, {"model": "echo", "prompt": "one two"}, path="/v1/completions")
    assert ok.status_code == 200
    assert ok.json()["choices"][0]["text"] == "one two "
