"""configurator.py: typed overrides, one-line errors, --help (the CLIs' own checks are in test_cli.py)."""
import typing

import pytest

from configurator import config_block, configure, parse_value

DEFAULTS = dict(lr=5e-4, steps=10, name="x", flag=False, data_var=None, kind="energy", sigmas=(1.0, 4.0), preset="")
TYPES = dict(data_var=float | None, kind=typing.Literal["energy", "denoiser"])
PRESETS = {"small": dict(steps=3, lr=1e-2)}


def run(argv):
    return configure(DEFAULTS, argv, annotations=TYPES, presets=PRESETS, source_file=__file__)


def test_defaults_are_returned_unchanged_and_not_mutated():
    assert run([]) == DEFAULTS
    cfg = run(["--lr=1"])
    assert cfg["lr"] == 1.0 and DEFAULTS["lr"] == 5e-4


def test_every_type_is_parsed():
    cfg = run(["--lr=1e-3", "--steps", "1e3", "--flag", "--data_var=0.04", "--kind=denoiser", "--sigmas=1,2,4",
               "--name=a=b"])
    assert cfg == dict(DEFAULTS, lr=1e-3, steps=1000, flag=True, data_var=0.04, kind="denoiser",
                       sigmas=(1.0, 2.0, 4.0), name="a=b")
    assert run(["--data_var=None"])["data_var"] is None
    assert run(["--flag=false"])["flag"] is False


def test_preset_applies_first_and_explicit_keys_win():
    assert run(["--steps=7", "--preset=small"]) == dict(DEFAULTS, preset="small", steps=7, lr=1e-2)


@pytest.mark.parametrize("argv, words", [
    (["--no_such_key=1"], "unknown key --no_such_key"),
    (["--steps=1.5"], "--steps=1.5: expected int"),
    (["--lr=fast"], "--lr=fast: expected float"),
    (["--flag=maybe"], "expected bool"),
    (["--kind=other"], "expected 'energy' | 'denoiser'"),
    (["--data_var=x"], "expected float | None"),
    (["--lr"], "--lr needs a value"),
    (["lr=1"], "not of the form --key=value"),
    (["--preset=huge"], "unknown preset"),
])
def test_bad_arguments_stop_with_one_line_naming_the_key(argv, words):
    with pytest.raises(SystemExit) as e:
        run(argv)
    message = str(e.value.code)
    assert words in message and "\n" not in message


def test_help_lists_every_key_with_type_default_and_comment(capsys):
    with pytest.raises(SystemExit) as e:
        configure(dict(lr=5e-4, kind="energy"), ["--help"], doc="the doc", source_file=__file__)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("the doc")
    assert "--lr=0.0005" in out and "float" in out and "--kind=energy" in out
    assert "a learning rate for the help test" in out      # the comment on the line below


lr = 5e-4  # a learning rate for the help test


def test_config_block_takes_lower_case_primitives_and_annotated_globals():
    scope = {"lr": 1.0, "name": "a", "MAX": 3, "_private": 1, "torch": typing, "none_key": None,
             "__annotations__": {"none_key": float | None}, "items": (1, 2)}
    assert config_block(scope) == {"lr": 1.0, "name": "a", "none_key": None, "items": (1, 2)}


def test_int_rejects_fractions_and_accepts_scientific_notation():
    assert parse_value("n", "2e3", int) == 2000
    with pytest.raises(SystemExit):
        parse_value("n", "2.5", int)
