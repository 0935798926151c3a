"""The docs are tested against the code: every setting is documented with its default."""

from __future__ import annotations

from berth.config import PROJECT_DIR, SETTINGS, Config


def test_every_setting_is_in_the_readme_with_its_default():
    readme = (PROJECT_DIR / "README.md").read_text()
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default else "(empty)"
        row = f"| `{setting.name}` | {default} |"
        assert row in readme, f"README's configuration table lacks: {row}"


def test_defaults_parse():
    config = Config.from_env({})
    assert config.port == 5000 and config.host == "127.0.0.1"
    assert config.base_image == "ubuntu:latest"
    assert config.machine_memory == 1024**3 and config.session_ttl == 4 * 3600


def test_bad_settings_say_which_and_why():
    import pytest

    from berth.config import ConfigError

    with pytest.raises(ConfigError, match="BERTH_MACHINE_MEMORY"):
        Config.from_env({"BERTH_MACHINE_MEMORY": "lots"})
    with pytest.raises(ConfigError, match=r"\*"):
        Config.from_env({"BERTH_ALLOWED_ORIGINS": "*"})
