"""Configuration: TOML + environment overrides, validated with clear errors."""
import pytest

from gateway.config import ConfigError, from_dict, load


def test_defaults_give_the_embedded_db_and_default_model():
    cfg = from_dict({})
    assert cfg.database.uri == ""
    assert [(m.name, m.backend) for m in cfg.models] == [("smollm2-135m", "llamacpp")]
    assert cfg.server.port == 8888


def test_env_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 9000\n')
    cfg = load(str(path), env={"ALLYOUCANTOKEN_SERVER__PORT": "9100",
                               "ALLYOUCANTOKEN_DATABASE__URI": "mongodb://db:27017"})
    assert cfg.server.port == 9100
    assert cfg.database.uri == "mongodb://db:27017"


@pytest.mark.parametrize("data,needle", [
    ({"server": {"port": "eighty"}}, "server.port: expected int"),
    ({"server": {"prot": 1}}, "unknown key(s) prot"),
    ({"models": [{"name": "a", "backend": "x"}, {"name": "a", "backend": "y"}]}, "duplicate"),
    ({"models": [{"name": "a"}]}, "backend"),
    ({"limits": {"default_tier": "gold"}}, "not a defined tier"),
    ({"tiers": {"free": {"max_tokens_policy": "maybe"}}}, "max_tokens_policy"),
    ({"server": {"tls_cert": "c.pem"}}, "tls_cert and tls_key"),
])
def test_invalid_config_names_the_key(data, needle):
    with pytest.raises(ConfigError) as err:
        from_dict(data)
    assert needle in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(str(tmp_path / "nope.toml"), env={})


def test_a_section_no_plugin_reads_stops_the_gateway(mongo, tmp_path):
    import subprocess
    import sys

    from tests.helpers import env, write_config

    cfg = write_config(tmp_path / "c.toml", {
        "server": {"port": 1, "data_dir": str(tmp_path / "var")},
        "database": {"uri": mongo.uri, "name": "cfgtest"},
        "smpt": {"host": "mail.example.com"}})
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "-c", str(cfg), "serve"],
                            capture_output=True, text=True, env=env(), timeout=60)
    assert result.returncode != 0
    assert "configuration error: unknown config section(s) [smpt]" in result.stderr
    assert "[smtp]" in result.stderr and "Traceback" not in result.stderr


def test_a_mistyped_backend_option_stops_the_gateway_naming_the_key(mongo, tmp_path):
    """Built-in backends validate their options like the config file (typed sdk.Options)."""
    import subprocess
    import sys

    from tests.helpers import env, write_config

    cfg = write_config(tmp_path / "c.toml", {
        "server": {"port": 1, "data_dir": str(tmp_path / "var")},
        "database": {"uri": mongo.uri, "name": "cfgtest"},
        "models": [{"name": "up", "backend": "openai_compatible",
                    "options": {"base_url": "http://127.0.0.1:9/v1", "read_timout": 5}}]})
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "-c", str(cfg), "serve"],
                            capture_output=True, text=True, env=env(), timeout=60)
    assert result.returncode != 0
    assert "configuration error: models.up.options: unknown key(s) read_timout" in result.stderr
    assert "Traceback" not in result.stderr
