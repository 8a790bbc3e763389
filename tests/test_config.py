"""One home for configuration: pyproject's Flower run config is the source of defaults."""

import tomllib
from pathlib import Path

import pytest

from fedrisk.config import ConfigError, RunConfig

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


def test_pyproject_run_config_and_runconfig_defaults_agree():
    app_config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert app_config == RunConfig().to_run_config()


@pytest.mark.parametrize("key,value,needle", [
    ("target-epsilon", -1, "target-epsilon"),
    ("num-server-rounds", 0, "num-server-rounds"),
    ("model", "forest", "model"),
    ("batch-size", "many", "batch-size"),
    ("max-steps-per-epoch", -1, "max-steps-per-epoch"),
    ("no-such-key", 1, "unknown run-config key"),
])
def test_bad_values_are_one_line_errors_naming_the_key(key, value, needle):
    with pytest.raises(ConfigError, match=needle) as error:
        RunConfig.from_run_config({key: value})
    assert "\n" not in str(error.value)
