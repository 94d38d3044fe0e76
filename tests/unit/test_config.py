"""mbc_jax/config.py: an unknown key names the closest one, YAML errors name the file, bad values."""

from __future__ import annotations

import pytest

from mbc_jax import UserError
from mbc_jax import config as config_lib


def test_unknown_key_names_closest():
    with pytest.raises(UserError, match=r"unknown config key 'learning_rat'; did you mean learning_rate"):
        config_lib.load(None, ["learning_rat=1e-5"])
    with pytest.raises(UserError, match=r"unknown config key 'mbc.pwer'; did you mean mbc.power"):
        config_lib.load(None, ["mbc.pwer=2"])


def test_yaml_file_errors_name_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 1e-5\nbatch_sise: 4\n")
    with pytest.raises(UserError, match=rf"{f}:2: unknown config key 'batch_sise'; did you mean batch_size"):
        config_lib.load(str(f), [])
    f.write_text("learning_rate: [1\n")
    with pytest.raises(UserError, match=rf"{f}:\d+: invalid YAML"):
        config_lib.load(str(f), [])


@pytest.mark.parametrize("override,msg", [
    ("learning_rate=0", "learning_rate: must be positive"),
    ("learning_rate=-1e-5", "learning_rate: must be positive"),
    ("batch_size=abc", "batch_size: expected int"),
    ("sampler=random", "sampler: 'random' is not one of mbc, uniform"),
    ("mbc.floor=2", "mbc.floor: must be at most 1"),
    ("dropout=1", r"dropout: must be in \[0, 1\)"),
])
def test_bad_values(override, msg):
    with pytest.raises(UserError, match=msg):
        config_lib.load(None, [override])
