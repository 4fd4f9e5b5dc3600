"""The session plugin reads ``[dashboard] session_idle`` itself (public core config
builder, no import of the dashboard): it must see the value the dashboard sees, from
the file, from an environment override, or the default, and refuse a wrong type alike."""
import pytest

from dashboard.config import DashboardConfig
from gateway.config import ConfigError, load
from plugins.auth.session import SessionSettings


@pytest.mark.parametrize("text, env", [
    ("", {}),
    ("[dashboard]\nsession_idle = 120\nsite_name = \"X\"\n", {}),
    ("[dashboard]\nsession_idle = 120.5\n", {"ALLYOUCANTOKEN_DASHBOARD__SESSION_IDLE": "90"}),
    ("", {"ALLYOUCANTOKEN_DASHBOARD__SESSION_IDLE": "75"}),
])
def test_session_idle_is_the_dashboards(tmp_path, text, env):
    path = tmp_path / "c.toml"
    path.write_text(text)
    cfg = load(str(path), env=env)
    assert SessionSettings.from_config(cfg).session_idle == \
        DashboardConfig.from_config(cfg).session_idle


def test_a_wrong_session_idle_is_refused_with_the_same_message(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[dashboard]\nsession_idle = \"soon\"\n")
    cfg = load(str(path), env={})
    with pytest.raises(ConfigError) as mine:
        SessionSettings.from_config(cfg)
    with pytest.raises(ConfigError) as theirs:
        DashboardConfig.from_config(cfg)
    assert str(mine.value) == str(theirs.value)
    assert "dashboard.session_idle" in str(mine.value)
