"""The docs are tested against the code: every setting is documented with its default and
its help, and a bad setting stops Berth with one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from berth.config import PROJECT_DIR, SETTINGS, Config, ConfigError


def test_every_setting_is_in_the_readme_with_its_default_and_help():
    readme = (PROJECT_DIR / "README.md").read_text()
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default else "(empty)"
        row = f"| `{setting.name}` | {default} | {setting.help} |"
        assert row in readme, f"README's configuration table lacks: {row}"
    rows = [line for line in readme.splitlines() if line.startswith("| `BERTH_")]
    assert len(rows) == len(SETTINGS), "README's configuration table has a setting berth/config.py lacks"


def test_defaults_parse():
    config = Config.from_env({})
    assert config.port == 5000 and config.host == "127.0.0.1"
    assert config.base_image == "ubuntu:latest"
    assert config.machine_memory == 1024**3 and config.session_ttl == 4 * 3600
    assert config.data_dir == PROJECT_DIR / "instance" and config.allowed_origins == ()


def test_values_are_read_as_an_operator_writes_them():
    config = Config.from_env({"BERTH_MACHINE_MEMORY": "512m", "BERTH_UPLOAD_LIMIT": "10G",
                              "BERTH_SESSION_TTL": "90s", "BERTH_SESSION_IDLE": "15m", "BERTH_SHELL_LINGER": "4h",
                              "BERTH_ALLOWED_NETWORKS": "192.168.7.0/24, 10.9.0.0/16,",
                              "BERTH_ALLOWED_ORIGINS": "https://lms.example.org", "BERTH_DATA_DIR": "data/here",
                              "BERTH_MACHINE_DISK": "", "BERTH_PORT": "8080"})
    assert config.machine_memory == 512 * 1024**2 and config.upload_limit == 10 * 1024**3
    assert (config.session_ttl, config.session_idle, config.shell_linger) == (90, 900, 4 * 3600)
    assert config.allowed_networks == ("192.168.7.0/24", "10.9.0.0/16")
    assert config.allowed_origins == ("https://lms.example.org",)
    assert config.data_dir == PROJECT_DIR / "data" / "here" and config.machine_disk == "" and config.port == 8080


def test_bad_settings_say_which_and_why():
    with pytest.raises(ConfigError, match="BERTH_MACHINE_MEMORY='lots': not a size"):
        Config.from_env({"BERTH_MACHINE_MEMORY": "lots"})
    with pytest.raises(ConfigError, match=r"BERTH_ALLOWED_ORIGINS=.*\*"):
        Config.from_env({"BERTH_ALLOWED_ORIGINS": "https://a.example, *"})
    with pytest.raises(ConfigError, match="BERTH_PORT='x': "):
        Config.from_env({"BERTH_PORT": "x"})
    with pytest.raises(ConfigError, match="BERTH_SESSION_TTL='4 weeks': not a duration"):
        Config.from_env({"BERTH_SESSION_TTL": "4 weeks"})
    with pytest.raises(ConfigError, match="BERTH_NETWORK_POOL='10.213.0.1/16': .*host bits"):
        Config.from_env({"BERTH_NETWORK_POOL": "10.213.0.1/16"})
    with pytest.raises(ConfigError, match="BERTH_ALLOWED_NETWORKS='10.9.0.0/16,nowhere': 'nowhere'"):
        Config.from_env({"BERTH_ALLOWED_NETWORKS": "10.9.0.0/16,nowhere"})
    with pytest.raises(ConfigError, match="BERTH_MACHINE_DISK='big': not a size"):
        Config.from_env({"BERTH_MACHINE_DISK": "big"})


def test_a_bad_setting_stops_the_server_with_one_line():
    result = subprocess.run([sys.executable, str(PROJECT_DIR / "app.py")], cwd=PROJECT_DIR, capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "BERTH_PORT": "x"})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("berth: BERTH_PORT='x': ") and "Traceback" not in result.stderr
