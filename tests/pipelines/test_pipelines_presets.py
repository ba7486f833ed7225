"""--preset paper / --preset cpu-demo: each preset expands to its documented values (the README's
tables are rendered from the same PRESETS and must match), explicit flags override a preset, and the
settings the run records carry the values."""

import pytest
from paths import ROOT

from rdpo_fast.pipelines import presets
from rdpo_fast.pipelines.cli import build_parser, crosslingual_settings, dice_settings, rdpo_settings

README = str(ROOT / "README.md")
COMMANDS = ("dice", "crosslingual", "rdpo")


def _subparser(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return parser, sub.choices[command]


def _parse(command, *extra):
    parser, _ = _subparser(command)
    return parser.parse_args([command, "--output-dir", "out", *extra])


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("preset", presets.PRESET_NAMES)
def test_presets_expand_to_their_values(command, preset):
    args = _parse(command, "--preset", preset)
    want = presets.values(command, preset)
    assert {k: getattr(args, k) for k in want} == want


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_tables_are_the_presets(command):
    _, sub = _subparser(command)
    table = presets.markdown_table(command, sub)
    with open(README, encoding="utf-8") as f:
        assert table in f.read(), f"README's {command} table is stale: paste presets.markdown_table({command!r}, ...)"
    # Every preset value shows in its row.
    for preset, col in (("paper", 1), ("cpu-demo", 3)):
        rows = {r.split(" | ")[-1].strip(" `|"): r.split(" | ") for r in table.splitlines()[2:]}
        for _label, dest, flag in presets.ROWS[command]:
            if dest in presets.PRESETS[command][preset]:
                assert rows[flag][col].startswith(presets._cell(presets.PRESETS[command][preset][dest]))


def test_explicit_flags_override_a_preset_and_defaults_come_back():
    args = _parse("dice", "--preset", "paper", "-k", "6", "--rounds", "1", "--no-keep-truncated")
    assert (args.k, args.rounds, args.min_valid, args.alpha_rule) == (6, 1, 8, "early-stop")
    # A flag given before --preset wins too.
    parser, _ = _subparser("dice")
    args = parser.parse_args(["dice", "--max-new-tokens", "77", "--preset", "paper", "--output-dir", "o"])
    assert args.max_new_tokens == 77 and args.temperature == 0.9
    # The parser's own defaults are untouched by an earlier preset parse.
    plain = parser.parse_args(["dice", "--output-dir", "o"])
    assert plain.k == 4 and plain.alpha_rule == "argmin" and plain.max_new_tokens == 1024
    with pytest.raises(SystemExit):
        parser.parse_args(["dice", "--preset", "huge", "--output-dir", "o"])


def test_preset_values_reach_the_settings():
    d = dice_settings(_parse("dice", "--preset", "paper"))
    assert (d.k, d.needed_valid, d.prompt_pool, d.prompts_per_round, d.alpha_rule, d.system) == \
        (16, 8, "same", 0, "early-stop", None)
    assert (d.generation.temperature, d.generation.top_p, d.generation.max_new_tokens) == (0.9, 1.0, 2048)
    assert (d.train.lr, d.train.scheduler, d.train.warmup_steps, d.train.max_steps) == (5e-7, "constant", 50, 300)
    assert d.train.batch_size * d.train.grad_accum == 32 and d.train.loss_type == "sigmoid"
    demo = dice_settings(_parse("dice", "--preset", "cpu-demo"))
    assert demo.system and demo.generation.max_new_tokens == 64 and demo.train.train_last_layers == 4
    x = crosslingual_settings(_parse("crosslingual", "--preset", "paper"))
    assert x.languages == ("en", "es", "ru", "de", "fr") and x.k == 10 and x.keep_truncated
    assert x.reward_pair == "previous-vs-initial" and x.generation.max_new_tokens == 2400
    r = rdpo_settings(_parse("rdpo", "--preset", "cpu-demo"))
    assert (r.scorer, r.num_prompts, r.scorer_train.max_steps, r.generation.max_new_tokens) == ("implicit", 8, 2, 48)
    # Plain defaults: long answers, no brief system prompt, upstream sampling.
    plain = dice_settings(_parse("dice"))
    assert plain.system is None and plain.generation.max_new_tokens >= 1024 and plain.generation.top_p == 1.0


def test_presets_only_name_real_flags():
    for command in COMMANDS:
        _, sub = _subparser(command)
        dests = {a.dest for a in sub._actions}
        for name in presets.PRESET_NAMES:
            assert set(presets.PRESETS[command][name]) <= dests
        assert {dest for _, dest, _ in presets.ROWS[command]} <= dests


def test_presets_apply_under_the_main_cli_too():
    from rdpo_fast.cli import build_parser as main_parser

    args = main_parser().parse_args(["crosslingual", "--preset", "cpu-demo", "--output-dir", "o", "-k", "5"])
    assert (args.languages, args.max_new_tokens, args.k) == ("en,es,fr,de", 64, 5)


def test_the_pipelines_cli_does_not_import_the_main_cli():
    # One-way dependency: rdpo_fast.cli registers the pipelines; the pipelines never import it back.
    import subprocess
    import sys

    code = ("import sys, rdpo_fast.pipelines.cli as c; c.build_parser(); "
            "sys.exit(1 if 'rdpo_fast.cli' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 0
