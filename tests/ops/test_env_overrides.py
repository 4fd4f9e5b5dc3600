"""Typed environment overrides: converted to the schema's type, nested tables, plugin
sections, and errors that never print a secret."""
import subprocess
import sys

import pytest

from dashboard.config import DashboardConfig
from gateway.config import ConfigError, EnvValue, load
from plugins.mail.mailer import SmtpConfig
from tests.helpers import env as process_env
from tests.helpers import write_config


def test_core_values_get_the_schema_type():
    cfg = load(None, env={
        "ALLYOUCANTOKEN_SERVER__PORT": "9100",
        "ALLYOUCANTOKEN_SERVER__METRICS_PUBLIC": "yes",
        "ALLYOUCANTOKEN_SERVER__DRAIN_TIMEOUT": "12",
        "ALLYOUCANTOKEN_SERVER__TRUSTED_PROXIES": "10.0.0.0/8, 192.168.0.0/16",
        "ALLYOUCANTOKEN_SERVER__METRICS_TOKEN": "123456",
        "ALLYOUCANTOKEN_WEBSOCKET__ALLOWED_ORIGINS": '["https://a.example", "https://b.example"]',
        "ALLYOUCANTOKEN_LIMITS__ENABLED": "False",
        "ALLYOUCANTOKEN_DATABASE__URI": "mongodb://db:27017/?replicaSet=rs0"})
    assert cfg.server.port == 9100
    assert cfg.server.metrics_public is True
    assert cfg.server.drain_timeout == 12.0 and isinstance(cfg.server.drain_timeout, float)
    assert cfg.server.trusted_proxies == ["10.0.0.0/8", "192.168.0.0/16"]
    assert cfg.server.metrics_token == "123456"                 # a str field: verbatim
    assert cfg.websocket.allowed_origins == ["https://a.example", "https://b.example"]
    assert cfg.limits.enabled is False
    assert cfg.database.uri == "mongodb://db:27017/?replicaSet=rs0"


def test_nested_tier_overrides_merge_with_the_file(tmp_path):
    path = write_config(tmp_path / "c.toml", {"tiers": {"free": {"tokens_per_day": 5},
                                                        "Pro": {"requests_per_minute": 100}}})
    cfg = load(str(path), env={"ALLYOUCANTOKEN_TIERS__FREE__REQUESTS_PER_MINUTE": "30",
                               "ALLYOUCANTOKEN_TIERS__PRO__TOKENS_PER_DAY": "1_000_000",
                               "ALLYOUCANTOKEN_TIERS__TEAM__CONCURRENT_STREAMS": "8"})
    assert cfg.tiers["free"].requests_per_minute == 30
    assert cfg.tiers["free"].tokens_per_day == 5                # the file's other keys stay
    # Matched case-insensitively to the file's own "Pro".
    assert cfg.tiers["Pro"].requests_per_minute == 100
    assert cfg.tiers["Pro"].tokens_per_day == 1_000_000
    assert cfg.tiers["team"].concurrent_streams == 8          # a new tier from the environment


def test_a_model_entry_is_addressed_by_index(tmp_path):
    path = write_config(tmp_path / "c.toml", {"models": [
        {"name": "a", "backend": "openai_compatible",
         "options": {"base_url": "http://gpu:8000/v1", "max_retries": 1}}]})
    cfg = load(str(path), env={"ALLYOUCANTOKEN_MODELS__0__OPTIONS__API_KEY": "0123",
                               "ALLYOUCANTOKEN_MODELS__0__OPTIONS__MAX_RETRIES": "3"})
    options = cfg.models[0].options
    assert options["api_key"] == "0123"           # untyped, not in the file: a string
    assert options["max_retries"] == 3            # the file says it is an integer
    with pytest.raises(ConfigError, match="models has no entry 5"):
        load(str(path), env={"ALLYOUCANTOKEN_MODELS__5__NAME": "x"})
    with pytest.raises(ConfigError, match="models has no entry 0"):
        load(None, env={"ALLYOUCANTOKEN_MODELS__0__NAME": "x"})


def test_plugin_sections_stay_strings_until_their_schema_types_them():
    cfg = load(None, env={"ALLYOUCANTOKEN_SMTP__PASSWORD": "20240611",
                          "ALLYOUCANTOKEN_SMTP__USERNAME": "relay-user",
                          "ALLYOUCANTOKEN_SMTP__PORT": "2525",
                          "ALLYOUCANTOKEN_SMTP__STARTTLS": "off",
                          "ALLYOUCANTOKEN_DASHBOARD__ADMIN_PASSWORD": "31415926535",
                          "ALLYOUCANTOKEN_MYPLUGIN__RETRIES": "3"})
    assert cfg.extra["myplugin"] == {"retries": "3"}            # nobody typed it: a string
    assert isinstance(cfg.extra["myplugin"]["retries"], str)
    smtp = SmtpConfig.from_config(cfg)
    assert smtp.password == "20240611" and type(smtp.password) is str
    assert smtp.port == 2525 and smtp.starttls is False
    assert DashboardConfig.from_config(cfg).admin_password == "31415926535"


def test_plugin_values_take_the_type_the_file_gives(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[myplugin]\nretries = 1\nratio = 0.5\nverbose = false\nhosts = ["a"]\n'
                    'name = "x"\n')
    cfg = load(str(path), env={"ALLYOUCANTOKEN_MYPLUGIN__RETRIES": "3",
                               "ALLYOUCANTOKEN_MYPLUGIN__RATIO": "2",
                               "ALLYOUCANTOKEN_MYPLUGIN__VERBOSE": "true",
                               "ALLYOUCANTOKEN_MYPLUGIN__HOSTS": "b,c",
                               "ALLYOUCANTOKEN_MYPLUGIN__NAME": "42"})
    assert cfg.extra["myplugin"] == {"retries": 3, "ratio": 2.0, "verbose": True,
                                     "hosts": ["b", "c"], "name": "42"}
    with pytest.raises(ConfigError, match=r"myplugin.retries \(from ALLYOUCANTOKEN_MYPLUGIN"
                                          r"__RETRIES\): expected an integer, got 'many'"):
        load(str(path), env={"ALLYOUCANTOKEN_MYPLUGIN__RETRIES": "many"})


@pytest.mark.parametrize("var,value,needle", [
    ("ALLYOUCANTOKEN_SERVER__PORT", "80x", "server.port (from ALLYOUCANTOKEN_SERVER__PORT): "
                                           "expected an integer, got '80x'"),
    ("ALLYOUCANTOKEN_SERVER__METRICS_PUBLIC", "maybe", "expected a boolean"),
    ("ALLYOUCANTOKEN_USAGE__FLUSH_INTERVAL", "nan", "expected a number"),
    ("ALLYOUCANTOKEN_SERVER__PROT", "1", "server: unknown key(s) prot"),
    ("ALLYOUCANTOKEN_SERVER__PORT__X", "1", "server.port is a single value, not a table"),
    ("ALLYOUCANTOKEN_TIERS__FREE", "30", "expected a table"),
    ("ALLYOUCANTOKEN_SERVER____PORT", "1", "empty name"),
])
def test_a_bad_override_names_the_variable_and_the_key(var, value, needle):
    with pytest.raises(ConfigError) as err:
        load(None, env={var: value})
    assert needle in str(err.value)


def test_errors_never_print_a_secret():
    """The value of a secret field is hidden; credentials in a URI are masked."""
    secret = "hunter2-20240611"
    cases = [
        ({"ALLYOUCANTOKEN_SERVER__METRICS_TOKEN__X": secret}, None),
        ({"ALLYOUCANTOKEN_DASHBOARD__ADMIN_PASSWORD__X": secret}, DashboardConfig),
        ({"ALLYOUCANTOKEN_SMTP__PASSWORD": '{a = "' + secret + '"}'}, None),
    ]
    for env, plugin in cases:
        with pytest.raises(ConfigError) as err:
            cfg = load(None, env=env)
            (plugin or SmtpConfig).from_config(cfg)
        assert secret not in str(err.value), err.value
    from gateway.config import from_dict
    with pytest.raises(ConfigError) as err:
        from_dict({"database": {"uri": ["mongodb://admin:" + secret + "@db/x"]}})
    assert secret not in str(err.value) and "mongodb://admin:****@db/x" in str(err.value)
    with pytest.raises(ConfigError) as err:
        SmtpConfig.from_config(from_dict({"smtp": {"password": 20240611}}))
    assert "smtp.password: expected str" in str(err.value) and "20240611" not in str(err.value)
    assert isinstance(EnvValue("x", "V"), str)


def test_serve_reports_a_bad_secret_without_printing_it(mongo, tmp_path):
    """What the issue saw: a numeric SMTP password, now from the file (a TOML integer);
    and the same number from the environment starts fine."""
    cfg = write_config(tmp_path / "c.toml", {
        "server": {"port": 1, "data_dir": str(tmp_path / "var")},
        "database": {"uri": mongo.uri, "name": "envsecret"},
        "smtp": {"username": "relay", "password": 20240611}})
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "-c", str(cfg), "serve"],
                            capture_output=True, text=True, env=process_env(), timeout=60)
    assert result.returncode != 0
    assert "configuration error: smtp.password: expected str" in result.stderr
    assert "20240611" not in result.stderr + result.stdout
