"""Options: every accepted form, every rejection names the problem and the fix."""

from __future__ import annotations

import pytest

from fxopt.config import (
    Budget,
    DeviceProfile,
    LowBit,
    Options,
    OptionsError,
    env_enabled,
    parse_budget,
)


@pytest.mark.parametrize("value, fraction, nbytes", [
    (0.5, 0.5, None), ("0.5", 0.5, None), ("50%", 0.5, None), (1, 1.0, None), ("1", 1.0, None),
    ("6GiB", None, 6 * 2**30), ("512MB", None, 512 * 10**6), (2_000_000, None, 2_000_000),
    ("2000000", None, 2_000_000), ("1.5 GiB", None, int(1.5 * 2**30)),
])
def test_budget_forms(value, fraction, nbytes):
    assert parse_budget(value) == Budget(fraction=fraction, nbytes=nbytes)


@pytest.mark.parametrize("value", ["abc", "1.5", "0", "-3", "150%", "6 parsecs", True, 0.0, [1]])
def test_bad_budget_says_accepted_forms(value):
    with pytest.raises(OptionsError, match="budget"):
        parse_budget(value)


def test_budget_resolve():
    assert Budget(fraction=0.5).resolve(1000) == 500
    assert Budget(nbytes=123).resolve(1000) == 123


def test_options_normalise_and_validate():
    opts = Options(budget="50%", lowbit="FP8", device="H100")
    assert opts.budget == Budget(fraction=0.5)
    assert opts.lowbit is LowBit.FP8 and opts.device is DeviceProfile.H100
    with pytest.raises(OptionsError, match="lowbit='fp4'.*'fp8', 'int8'"):
        Options(lowbit="fp4")
    with pytest.raises(OptionsError, match="time_limit_s"):
        Options(time_limit_s=0)
    with pytest.raises(OptionsError, match="work_limit"):
        Options(work_limit=-1)
    assert Options(work_limit=3).work_limit == 3.0 and Options().work_limit is None
    with pytest.raises(OptionsError, match="offload"):
        Options(offload="yes")
    with pytest.raises(TypeError):
        Options(bugdet=0.5)  # a misspelt option is an error, not ignored


def test_cache_key_changes_with_every_option():
    base = Options()
    variants = [Options(budget=0.5), Options(offload=True), Options(lowbit="int8"),
                Options(time_limit_s=3), Options(work_limit=2), Options(device="cpu"),
                Options(debug=True),
                Options(dump_dir="/tmp/x")]
    keys = {base.cache_key()} | {v.cache_key() for v in variants}
    assert len(keys) == len(variants) + 1


def test_from_env_reads_every_variable():
    env = {"FXOPT_BUDGET": "4GiB", "FXOPT_OFFLOAD": "on", "FXOPT_LOWBIT": "int8",
           "FXOPT_TIME_LIMIT": "2.5", "FXOPT_WORK_LIMIT": "4", "FXOPT_DEVICE": "a100",
           "FXOPT_DEBUG": "1",
           "FXOPT_DUMP_DIR": "/tmp/dump"}
    opts = Options.from_env(env)
    assert opts == Options(budget="4GiB", offload=True, lowbit="int8", time_limit_s=2.5,
                           work_limit=4, device="a100", debug=True, dump_dir="/tmp/dump")
    assert Options.from_env({"FXOPT_LOWBIT": "none", "FXOPT_OFFLOAD": "auto"}) == Options()
    assert Options.from_env(env, budget=0.3).budget == Budget(fraction=0.3)


@pytest.mark.parametrize("var, raw", [
    ("FXOPT_BUDGET", "abc"), ("FXOPT_OFFLOAD", "maybe"), ("FXOPT_LOWBIT", "fp4"),
    ("FXOPT_TIME_LIMIT", "soon"), ("FXOPT_WORK_LIMIT", "lots"), ("FXOPT_DEVICE", "tpu"),
    ("FXOPT_DEBUG", "2"),
])
def test_bad_environment_names_the_variable(var, raw):
    with pytest.raises(OptionsError) as info:
        Options.from_env({var: raw})
    message = str(info.value)
    assert var in message and repr(raw) in message and "use" in message


def test_env_enabled():
    assert env_enabled({"FXOPT": "1"}) and env_enabled({"FXOPT": "true"})
    assert not env_enabled({}) and not env_enabled({"FXOPT": "0"})
    with pytest.raises(OptionsError, match="FXOPT='please'"):
        env_enabled({"FXOPT": "please"})
