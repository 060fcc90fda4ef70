"""One name per setting: every CLI option is `--x-y` = CHEXSTACK_X_Y, with one type and one default.

`problems()` walks the whole typer app (every group and command) and lists what breaks the rule; the
checker itself is tested on a small app that breaks it on purpose, so a clean result means something.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.core import TyperOption
from typer.main import get_command
from typer.testing import CliRunner

from chexstack.cli import app
from chexstack.settings import env_name, option, secret
from chexstack.training.config import TrainConfig

# Short spellings kept for scripts and roles (`chexstack hub serve --port 8600`, `chexstack kafka down
# --data-dir D`); the setting is named by the first flag (--hub-port = CHEXSTACK_HUB_PORT).
KEPT_ALIASES = {"--host", "--port", "--data-dir"}
# Commands whose options default to None = "from --config, else the model's default": the model's field
# default is the option's default.
DEFERRED = {"chexstack train": TrainConfig}
# Defaults decided at run time, said in the option's help; the value, when given, means the same thing.
DERIVED = {
    ("chexstack data prepare", "--workers"),  # the CPU count, at most 4
    ("chexstack train", "--image-size"),  # the shards' size (written by `data prepare --image-size`)
    ("chexstack models handoff", "--label"),  # none: the version is loaded and no label moves
}

# Inputs of one call, not settings: `option(..., env=False)`, no CHEXSTACK_ variable. Which patient,
# which image, where to write, what to print: a variable left in a shell must not apply to every call.
INPUTS = {
    "--patient-id", "--image-id", "--follow", "--json", "--out", "--count", "--version", "--label",
    "--force", "--skip-bad-rows", "--config", "--no-hub", "--kind", "--limit", "--reason", "--all",
    "--stable", "--canary", "--verbose",
}  # fmt: skip

REQUIRED = "<required>"


def _commands(command: Any, path: str) -> Any:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, f"{path} {name}")


def _options(root: typer.Typer) -> list[tuple[str, TyperOption]]:
    found = []
    for path, command in _commands(get_command(root), "chexstack"):
        for param in command.params:
            # Eager options are actions (--version, like --help), not settings.
            if isinstance(param, TyperOption) and not param.is_eager:
                found.append((path, param))
    return found


def _default(path: str, param: TyperOption) -> Any:
    if param.required:
        return REQUIRED
    model = DEFERRED.get(path)
    if model is not None and param.default is None and param.name in model.model_fields:
        return model.model_fields[param.name].default
    return param.default


def problems(root: typer.Typer) -> list[str]:
    """What breaks "one name per setting" in `root`; empty when nothing does."""
    found: list[str] = []
    options = _options(root)
    canonical = {param.opts[0] for _, param in options}
    by_flag: dict[str, list[tuple[str, TyperOption]]] = defaultdict(list)
    for path, param in options:
        flag = param.opts[0]
        by_flag[flag].append((path, param))
        if not flag.startswith("--"):
            found.append(f"{path}: {param.name}: the first flag {flag!r} is not a --long flag")
        if flag in INPUTS:
            if param.envvar is not None:
                found.append(f"{path} {flag}: an input of one call, but it reads {param.envvar!r}")
        elif not isinstance(param.envvar, str) or param.envvar != env_name(flag):
            found.append(f"{path} {flag}: envvar {param.envvar!r}, expected {env_name(flag)!r}")
        for alias in param.opts[1:]:
            if alias in canonical and alias not in KEPT_ALIASES:
                found.append(f"{path} {flag}: alias {alias} is another setting's flag")
    for flag, uses in sorted(by_flag.items()):
        types = {str(param.type_descriptor.annotation) for _, param in uses}
        if len(types) > 1:
            found.append(f"{flag}: types differ: " + ", ".join(sorted(types)))
        defaults = {
            (path, repr(_default(path, param)))
            for path, param in uses
            if not param.required and (path, flag) not in DERIVED
        }
        if len({d for _, d in defaults}) > 1:
            found.append(f"{flag}: defaults differ: " + ", ".join(f"{p}={d}" for p, d in sorted(defaults)))
    return found


def test_every_option_is_one_setting() -> None:
    assert problems(app) == []


def _readme_settings_table() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Settings: one name each")
    return readme[start : readme.index("\n## ", start + 1)]


def test_every_variable_is_in_the_readme_settings_table() -> None:
    table = _readme_settings_table()
    missing = sorted(
        {str(param.envvar) for _, param in _options(app) if param.envvar}
        - set(re.findall(r"`(CHEXSTACK_\w+)`", table))
    )
    assert missing == [], "add these to the README's settings table: " + ", ".join(missing)


def test_the_exceptions_are_all_still_needed() -> None:
    options = _options(app)
    used_aliases = {alias for _, param in options for alias in param.opts[1:]}
    assert used_aliases >= KEPT_ALIASES
    flags = {(path, param.opts[0]) for path, param in options}
    assert flags >= DERIVED
    assert {path for path, _ in options} >= DEFERRED.keys()
    assert {param.opts[0] for _, param in options} >= INPUTS


def _bad_app() -> typer.Typer:
    bad = typer.Typer(add_completion=False)
    sub = typer.Typer()

    @bad.command("one")
    def one(
        size: Annotated[int, option("--size", "S.")] = 1,
        hand_made: Annotated[str, typer.Option("--hand-made", envvar="CHEXSTACK_OTHER")] = "",
        plain: Annotated[str, typer.Option("--plain")] = "",
        port: Annotated[int, option("--x-port", "P.", alias="--size")] = 2,
        patient: Annotated[str, option("--patient-id", "An input that reads a variable.")] = "",
    ) -> None: ...

    @sub.command("two")
    def two(
        size: Annotated[str, option("--size", "S.")] = "1",
        count: Annotated[int, option("--batch", "C.")] = 3,
    ) -> None: ...

    @sub.command("three")
    def three(count: Annotated[int, option("--batch", "C.")] = 4) -> None: ...

    bad.add_typer(sub, name="sub")
    return bad


def test_the_checker_finds_each_kind_of_break() -> None:
    assert sorted(problems(_bad_app())) == [
        "--batch: defaults differ: chexstack sub three=4, chexstack sub two=3",
        "--size: defaults differ: chexstack one=1, chexstack sub two='1'",
        "--size: types differ: <class 'int'>, <class 'str'>",
        "chexstack one --hand-made: envvar 'CHEXSTACK_OTHER', expected 'CHEXSTACK_HAND_MADE'",
        "chexstack one --patient-id: an input of one call, but it reads 'CHEXSTACK_PATIENT_ID'",
        "chexstack one --plain: envvar None, expected 'CHEXSTACK_PLAIN'",
        "chexstack one --x-port: alias --size is another setting's flag",
    ]


def test_train_defaults_are_the_models() -> None:
    """A deferred default is compared as the model's: TrainConfig's seed must equal data synth's."""
    bad = typer.Typer(add_completion=False)

    @bad.command("synth")
    def synth(seed: Annotated[int, option("--seed", "S.")] = 7) -> None: ...

    @bad.command("train")
    def train(seed: Annotated[int | None, option("--seed", "S.")] = None) -> None: ...

    assert problems(bad) == ["--seed: defaults differ: chexstack synth=7, chexstack train=0"]


runner = CliRunner()


def test_a_flag_reads_its_variable_and_the_short_alias_still_works(tmp_path: Path) -> None:
    env = {"CHEXSTACK_HOME": str(tmp_path)}
    # Nothing listens on these ports: `kafka status` names the data dir and address it tried, exits 1.
    by_env = runner.invoke(app, ["kafka", "status"], env={**env, "CHEXSTACK_KAFKA": "127.0.0.1:9"})
    assert (by_env.exit_code, by_env.output) == (1, f"kafka not running in {tmp_path}/kafka (127.0.0.1:9)\n")
    data = tmp_path / "d"
    by_name = runner.invoke(app, ["kafka", "status", "--kafka", "127.0.0.1:5", "--kafka-data-dir", str(data)])
    assert (by_name.exit_code, by_name.output) == (1, f"kafka not running in {data} (127.0.0.1:5)\n")
    by_alias = runner.invoke(app, ["kafka", "status", "--kafka", "127.0.0.1:7", "--data-dir", str(data)])
    assert (by_alias.exit_code, by_alias.output) == (1, f"kafka not running in {data} (127.0.0.1:7)\n")


def test_an_input_of_one_call_reads_no_variable(tmp_path: Path) -> None:
    out = tmp_path / "xrays"
    env = {"CHEXSTACK_COUNT": "5", "CHEXSTACK_OUT": str(tmp_path / "elsewhere")}
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--count", "1", "--size", "64"], env=env)
    assert result.exit_code == 0, result.output
    assert len(list((out / "images").glob("*.png"))) == 1
    assert not (tmp_path / "elsewhere").exists()
    missing = runner.invoke(app, ["data", "synth", "--count", "1"], env=env)
    assert missing.exit_code == 2 and "--out" in missing.output


@pytest.mark.parametrize("args", [["model", "export", "--help"], ["model", "--help"]])
def test_model_export_is_now_models_export(args: list[str]) -> None:
    assert runner.invoke(app, args).exit_code == 2
    moved = runner.invoke(app, ["models", "export", "--help"])
    assert moved.exit_code == 0 and "SavedModel version" in moved.output


def test_a_secret_comes_from_its_variable_or_the_file_its_file_variable_names(tmp_path: Path) -> None:
    token_file = tmp_path / "hub-token"
    token_file.write_text("from-the-file\n")
    assert secret("CHEXSTACK_HUB_TOKEN", {}) is None
    assert secret("CHEXSTACK_HUB_TOKEN", {"CHEXSTACK_HUB_TOKEN_FILE": str(token_file)}) == "from-the-file"
    both = {"CHEXSTACK_HUB_TOKEN": "direct", "CHEXSTACK_HUB_TOKEN_FILE": str(token_file)}
    assert secret("CHEXSTACK_HUB_TOKEN", both) == "direct"


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_an_unreadable_or_empty_secret_file_is_an_error_naming_the_variable(
    tmp_path: Path, content: str | None
) -> None:
    token_file = tmp_path / "hub-token"
    if content is not None:
        token_file.write_text(content)
    with pytest.raises(
        ValueError, match=r"CHEXSTACK_HUB_TOKEN_FILE=.*hub-token: (cannot read|the file is empty)"
    ):
        secret("CHEXSTACK_HUB_TOKEN", {"CHEXSTACK_HUB_TOKEN_FILE": str(token_file)})


def test_hub_serve_refuses_a_token_file_it_cannot_read(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-token"
    result = CliRunner().invoke(
        app, ["hub", "serve", "--hub", str(tmp_path / "hub.sqlite"), "--port", "0"],
        env={"CHEXSTACK_HUB_TOKEN_FILE": str(missing)},
    )  # fmt: skip
    assert result.exit_code != 0
    assert f"CHEXSTACK_HUB_TOKEN_FILE={missing}: cannot read the secret" in result.output


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHEXSTACK_HUB_READ_TOKEN": "r" * 40}, "--hub-read-token: a read token needs an admin token"),
        (
            {"CHEXSTACK_HUB_TOKEN": "t" * 40, "CHEXSTACK_HUB_READ_TOKEN": "t" * 40},
            "--hub-read-token: the read token must differ from the admin token",
        ),
    ],
)
def test_hub_serve_refuses_a_read_token_that_would_not_protect_anything(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result = CliRunner().invoke(
        app, ["hub", "serve", "--hub", str(tmp_path / "hub.sqlite"), "--port", "0"], env=env
    )
    assert result.exit_code != 0
    assert message in result.output
