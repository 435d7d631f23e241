"""``subtomo --help`` and every sub-command's help tell the truth (issue 19, "Help that tells the truth").

Every option says what its absence means, ``(default: ...)`` or ``(required)``; no help text is one
of RELION's GUI questions; negative flags read as what giving them does; ``--j`` says what it
starts; the HEALPix orders show their angular steps; ``subtomo --version`` exists.
"""

from __future__ import annotations

import argparse
import re

import pytest

from subtomo_nb.cli.main import build_parser, main
from subtomo_nb.jobs import build_argparser, values_from_args
from subtomo_nb.jobs.registry import REGISTRY


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        yield action


def _help_of(parser: argparse.ArgumentParser, option: str) -> str:
    """The option's help as printed (argparse's %-expansion applied, whitespace joined)."""
    for action in parser._actions:
        if option in action.option_strings:
            return " ".join(parser._get_formatter()._expand_help(action).split())
    raise KeyError(option)


SUBCOMMANDS = sorted(_subparsers())


def test_every_subcommand_is_checked():
    assert {"simulate", "tutorial", *(jt.cli_name for jt in REGISTRY.values())} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_option_shows_its_default(name):
    parser = _subparsers()[name]
    missing = []
    for action in _options(parser):
        text = _help_of(parser, action.option_strings[0])
        if action.required:
            shown = text.endswith("(required)")
        else:
            shown = re.search(r"\(default: [^()]+(\([^()]*\)[^()]*)*\)$", text) is not None
        if not shown:
            missing.append(f"{action.option_strings[0]}: {text!r}")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_no_help_is_a_gui_question(name):
    parser = _subparsers()[name]
    questions = [f"{a.option_strings[0]}: {a.help!r}" for a in _options(parser) if "?" in (a.help or "")]
    assert not questions, "\n".join(questions)
    assert "?" not in (parser.description or "")


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_a_description(name):
    assert (_subparsers()[name].description or "").strip()


def test_required_options_say_so():
    parser = _subparsers()["extract"]
    assert _help_of(parser, "--o").endswith("(required)")
    assert _help_of(parser, "--i").endswith("(required)")


@pytest.mark.parametrize("name", [jt.name for jt in REGISTRY.values()])
def test_shown_default_is_what_the_job_uses(name):
    """A value option's shown default parses to the value the job gets when the option is absent."""
    parser = build_argparser(name, require_output=False)
    absent = values_from_args(name, parser.parse_args([]))
    for p in REGISTRY[name].params:
        if not p.cli or p.cli_kind != "value" or p.type not in ("int", "float", "str"):
            continue
        m = re.search(r"\(default: ([^)]*)\)$", _help_of(parser, p.cli[0]))
        assert m, p.cli[0]
        shown = m.group(1)
        if shown == "none":
            assert absent[p.key] in ("", None), p.cli[0]
        else:
            given = values_from_args(name, parser.parse_args([p.cli[0], shown]))
            assert given[p.key] == absent[p.key], (p.cli[0], shown)


def test_negative_flags_say_what_they_do():
    refine = _subparsers()["refine"]
    firstiter = _help_of(refine, "--firstiter_cc")
    assert "not on the absolute greyscale" in firstiter and "cross-correlation" in firstiter
    assert firstiter.endswith("(default: off)")
    assert "Do not impose the helical" in _help_of(refine, "--ignore_helical_symmetry")
    assert _help_of(refine, "--no_parallel_disc_io").startswith("RELION: one process reads")
    assert "over the network instead of through files" in _help_of(refine, "--dont_combine_weights_via_disc")
    for option in ("--firstiter_cc", "--ignore_helical_symmetry", "--no_parallel_disc_io",
                   "--dont_combine_weights_via_disc"):
        # not the GUI question of the form field it negates
        assert not re.match(r"(Ref\. map|Apply helical|Use parallel|Combine iterations)", _help_of(refine, option))


def test_paired_flags_show_which_is_the_default():
    inimodel = _subparsers()["initial-model"]
    assert _help_of(inimodel, "--run_C1").endswith("(default: on)")
    assert _help_of(inimodel, "--no_run_C1").endswith("(default: off; --run_C1 is the default)")
    assert "from the start" in _help_of(inimodel, "--no_run_C1")
    extract = _subparsers()["extract"]
    assert _help_of(extract, "--stack2d").endswith("(default: on)")
    assert _help_of(extract, "--no_stack2d").endswith("(default: off; --stack2d is the default)")
    assert _help_of(extract, "--float32").endswith("(default: off; --float16 is the default)")


def test_j_says_what_it_starts():
    subs = _subparsers()
    for name in ("refine", "initial-model"):
        text = _help_of(subs[name], "--j")
        assert "dask worker processes" in text and "local dask cluster" in text and "Threads per process" not in text
        assert text.endswith("(default: 1)")
    assert "threads" in _help_of(subs["extract"], "--j") and _help_of(subs["extract"], "--j").endswith("(default: 1)")
    assert "threads" in _help_of(subs["reconstruct"], "--j")
    tutorial = _help_of(subs["tutorial"], "--j")
    assert "local dask cluster" in tutorial and tutorial.endswith("(default: 2)")
    assert subs["tutorial"].get_default("j") == 2


def test_healpix_options_list_the_angular_steps():
    from subtomo_nb.geometry.healpix import angular_step

    refine = _subparsers()["refine"]
    healpix = [p.cli[0] for jt in REGISTRY.values() for p in jt.params if p.cli_kind == "healpix"]
    assert {"--healpix_order", "--auto_local_healpix_order"} <= set(healpix)
    for option in healpix:
        text = _help_of(refine, option)
        for n, expected in enumerate(("60", "30", "15", "7.5", "3.7", "1.8")):
            assert f"{n}: {expected}°" in text, (option, n)
            assert 0 <= angular_step(n) - float(expected) < 0.1   # 60/2**n, cut to one decimal as RELION's form
    assert _help_of(refine, "--healpix_order").endswith("(default: 2 = 15°, oversampled to 7.5°)")
    assert _help_of(refine, "--auto_local_healpix_order").endswith("(default: 4 = 3.7°, oversampled to 1.8°)")


def test_simulate_snr_default_is_the_simulators():
    from subtomo_nb.simulate.project import DEFAULT_SNR

    assert _help_of(_subparsers()["simulate"], "--snr").endswith(f"(default: {DEFAULT_SNR:g})")


def test_simulate_particles_are_the_simulators():
    from subtomo_nb.cli.main import _SIMULATE_PARTICLES
    from subtomo_nb.simulate.phantom import PHANTOMS

    assert _SIMULATE_PARTICLES == {name: p.symmetry for name, p in PHANTOMS.items()}
    simulate = _subparsers()["simulate"]
    text = _help_of(simulate, "--particle")
    assert text.endswith("(default: hexamer)") and simulate.get_default("particle") == "hexamer"
    for name, symmetry in _SIMULATE_PARTICLES.items():
        assert f"{name} (" in text and f"symmetry {symmetry}" in text
    assert "C6 hexamer" in simulate.description and "D2" in simulate.description


def test_top_level_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and "::" not in out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_prints(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out


def test_version(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"subtomo_nb {metadata.version('subtomo_nb')}"
