"""Every command's help: each option explained, with its true default said once, and ``--help`` instant."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import pytest

from medsynth.cli import COMMANDS

DEFAULT = re.compile(r"\bdefault\b", re.IGNORECASE)


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, found from ``COMMANDS`` (a command added later is walked too)."""
    found = {}
    for name, main in COMMANDS.items():
        module = sys.modules[main.__module__]
        assert hasattr(module, "build_parser"), f"{name}: its module {module.__name__} has no build_parser"
        found[name] = module.build_parser()
    return found


def rendered(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text of one option as ``--help`` prints it (defaults expanded), on one line."""
    formatter = parser._get_formatter()
    return " ".join(formatter._expand_help(action).split())


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS]


def name_of(action: argparse.Action) -> str:
    return "/".join(action.option_strings) or action.dest


PARSERS = parsers()


def test_the_walk_sees_every_command():
    assert {"train", "convert", "eval", "enhance", "serve", "demo", "worker"} <= set(PARSERS)
    assert sum(len(options(p)) for p in PARSERS.values()) > 100


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_option_has_help(command):
    missing = [name_of(a) for a in options(PARSERS[command]) if not (a.help or "").strip()]
    assert not missing, f"{command}: options without help: {', '.join(missing)}"


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_switches_say_what_they_do_not_their_boolean_default(command):
    parser = PARSERS[command]
    noisy = [name_of(a) for a in options(parser)
             if a.nargs == 0 and re.search(r"\(default: (True|False|None)\)", rendered(parser, a))]
    assert not noisy, f"{command}: switches that print a boolean default: {', '.join(noisy)}"
    for action in options(parser):
        if any(o.startswith("--no-") for o in action.option_strings):
            assert "(default: True)" not in rendered(parser, action)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_no_default_is_said_twice(command):
    parser = PARSERS[command]
    twice = {name_of(a): rendered(parser, a) for a in options(parser) if len(DEFAULT.findall(rendered(parser, a))) > 1}
    assert not twice, f"{command}: defaults printed twice: {twice}"


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_a_shown_default_is_the_real_one(command):
    """Where an option has a value by default, its help shows that value (a hand-written "default 8" beside a
    real default of 4 fails)."""
    parser = PARSERS[command]
    wrong = {}
    for action in options(parser):
        default = action.default
        if action.nargs == 0 or default in (None, argparse.SUPPRESS, "", []) or isinstance(default, bool):
            continue
        text = rendered(parser, action)
        shown = default if isinstance(default, str) else str(default)
        if shown not in text:
            wrong[name_of(action)] = (default, text)
    assert not wrong, f"{command}: help that does not show the real default: {wrong}"


def test_batch_size_help_says_the_cpu_batch_inference_uses():
    from medsynth.inference import CPU_BATCH

    for command in ("convert", "serve"):
        parser = PARSERS[command]
        action = next(a for a in options(parser) if "--batch-size" in a.option_strings)
        assert action.default is None  # the Translator picks by device
        assert f"{CPU_BATCH} on a CPU" in rendered(parser, action), (command, rendered(parser, action))


def test_train_help_gives_the_cpu_recipe_value_beside_the_reference_default():
    from medsynth.config import recipe_values

    parser = PARSERS["train"]
    by_dest = {a.dest: a for a in options(parser)}
    for paired in (False, True):
        for key, value in recipe_values("cpu", paired).items():
            text = rendered(parser, by_dest[key])
            default = by_dest[key].default
            if isinstance(value, bool):  # switches say on/off
                default, value = ("on" if default else "off"), ("on" if value else "off")
            assert f"default: {default}" in text and f"CPU recipe{' with --paired' if paired and key not in recipe_values('cpu', False) else ''}: {value}" in text, text


def test_help_of_every_command_exits_0_quickly_without_torch():
    """One fresh interpreter runs every command's ``--help``: status 0 each, and neither torch nor MONAI is
    imported for it (their import alone takes seconds)."""
    code = (
        "import contextlib, io, json, sys, time\n"
        "from medsynth.cli import COMMANDS\n"
        "out = {}\n"
        "for name, main in COMMANDS.items():\n"
        "    start = time.perf_counter()\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as text:\n"
        "        try:\n"
        "            status = main(['--help'])\n"
        "        except SystemExit as stop:\n"
        "            status = stop.code\n"
        "    out[name] = [status, time.perf_counter() - start, len(text.getvalue())]\n"
        "out['heavy'] = sorted(m for m in ('torch', 'monai', 'nibabel', 'SimpleITK') if m in sys.modules)\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report.pop("heavy") == []
    assert set(report) == set(COMMANDS)
    for name, (status, seconds, length) in report.items():
        assert status == 0 and length > 200, (name, status, length)
        assert seconds < 2.0, (name, seconds)


def test_python_m_medsynth_convert_help_runs_as_a_program():
    result = subprocess.run([sys.executable, "-m", "medsynth", "convert", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "--luminance" in result.stdout and "(default: True)" not in result.stdout
