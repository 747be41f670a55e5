"""Every setting, declared once: its environment variable, default, allowed values and meaning.

The environment names, the parsing, the error messages, `to_env` (what a launcher hands its
children) and the README's configuration table are all derived from the fields below. A
component reads its settings with `load`, which checks every value before anything starts and
names each bad one in a line of its own.

    python -m swarm_rl.settings            # the settings as a Markdown table (the README's)
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import sys
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from swarm_rl.kinds import (Kind, SettingsError, choice, existing_file, folder, number, optional, secret_text, setting,
                            switch, text, whole)

__all__ = ["Kind", "RuntimeSettings", "SettingsError", "SwarmSettings", "choice", "existing_file", "folder",
           "load_settings", "number", "optional", "secret_text", "setting", "switch", "text", "whole"]


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`; any other name may resolve to an address beyond this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


S = TypeVar("S", bound="RuntimeSettings")
VOTES = ("probabilities", "majority", "log-probabilities")  # SWARM_VOTE: 03_aggregation.decide's rules

# SWARM_PRESET: the defaults a preset gives; a variable that is set wins over its preset.
PRESETS: dict[str, dict[str, Any]] = {
    "swarm": {},  # the field defaults below
    "tutorial": dict(envs=1, episodes=20, learning_rate=7e-4, adam_eps=1e-5, training_actions="summed",
                     correction="none", fitness="contribution", operators="genetic", evolved="learning-rate"),
}


# The training budget (steps, seconds) of the environments the swarm is measured on (docs/learning.md).
BUDGETS: dict[str, tuple[int, float]] = {"CartPole-v1": (100_000, 1200.0), "Acrobot-v1": (500_000, 3600.0),
                                         "LunarLander-v3": (1_000_000, 7200.0)}


def budgets_shown(which: int) -> str:
    """The budgets beyond the default environment's, for a setting's meaning: `Acrobot-v1: 500000, ...`."""
    return ", ".join(f"{env_id}: {budget[which]:.0f}" for env_id, budget in BUDGETS.items() if env_id != "CartPole-v1")


@dataclass(frozen=True)
class RuntimeSettings:
    """What every swergio component of this project needs: where the server is, where logs go."""

    host: str = setting("SWERGIO_HOST", "127.0.0.1", text(),
                        "server address (beyond loopback only with SWARM_TOKEN: docs/hosts.md)")
    port: int = setting("SWERGIO_PORT", 8080, whole(1, 65535), "server port")
    log_dir: Path = setting("SWARM_LOG_DIR", Path("logs"), folder(),
                            "every component's log file, and the control's plot and results")
    log_level: str = setting("SWARM_LOG_LEVEL", "INFO", choice("DEBUG", "INFO", "WARNING", "ERROR"),
                             "log level of the components (DEBUG: the server logs every message)")
    seed: int | None = setting("SWARM_SEED", None, optional(whole(0)),
                               "seeds every component (empty: fresh randomness every run)")
    start_timeout: float = setting("SWARM_START_TIMEOUT", 180.0, number(0, above=True),
                                   "seconds from launch until every component must answer")
    reply_timeout: float = setting("SWARM_REPLY_TIMEOUT", 120.0, number(0, above=True),
                                   "longest silence, in seconds, while the control waits for a reply")
    token: str = setting("SWARM_TOKEN", "", secret_text(),
                         "a shared secret every client presents to the server (empty: none; needed beyond loopback)")

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def from_env(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
        """The settings from `environ` (default: os.environ); a SettingsError lists every bad value."""
        environ = os.environ if environ is None else environ
        values, problems = cls.defaults(environ), []
        for f in cls.fields():
            env, kind = f.metadata["env"], f.metadata["kind"]
            raw = environ.get(env, "")
            if raw == "":
                continue  # unset: the default
            try:
                values[f.name] = kind.parse(raw.strip())
            except ValueError:
                shown = "(not shown)" if kind.secret else repr(raw)
                problems.append(f"{env}={shown} is not allowed: {kind.allowed}")
        if problems:
            raise SettingsError(problems)
        return cls(**values)

    @classmethod
    def defaults(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """Defaults that differ from the fields' own, before the variables that are set."""
        return {}

    def to_env(self, secrets: bool = True) -> dict[str, str]:
        """The environment variables that reproduce these settings in a child process; without
        `secrets` (SWARM_TOKEN), what may be kept in a file."""
        return {f.metadata["env"]: f.metadata["kind"].show(getattr(self, f.name)) for f in self.fields()
                if secrets or not f.metadata["kind"].secret}

    def problems(self) -> list[str]:
        """What the values allow but cannot work together: a server beyond loopback (or clients of
        one) without the secret that keeps strangers out."""
        if self.token or is_loopback(self.host):
            return []
        return [f"SWERGIO_HOST={self.host!r} is not allowed without SWARM_TOKEN: beyond loopback (127.0.0.0/8, ::1) "
                "the server admits only clients that present a shared secret (docs/hosts.md)"]

    def replace(self: S, **changes: Any) -> S:
        return dataclasses.replace(self, **changes)

    def component_seed(self, name: str) -> int | None:
        """A seed of its own for each component (model3, environment, ...), all from SWARM_SEED;
        None (fresh randomness) when SWARM_SEED is unset."""
        if self.seed is None:
            return None
        return (self.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**32

    @classmethod
    def markdown_table(cls) -> str:
        rows = ["| variable | default | allowed | meaning |", "| --- | --- | --- | --- |"]
        for f in cls.fields():
            default = f.metadata["kind"].show(f.default)
            tutorial = PRESETS["tutorial"].get(f.name)
            shown = f"`{default}`" if default else "(empty)"
            if tutorial is not None:
                shown += f" (tutorial: `{f.metadata['kind'].show(tutorial)}`)"
            rows.append(f"| `{f.metadata['env']}` | {shown} | {f.metadata['kind'].allowed} | {f.metadata['meaning']} |")
        return "\n".join(rows)


@dataclass(frozen=True)
class SwarmSettings(RuntimeSettings):
    """The RL swarm's settings: its size, its rounds and budget, and the learning options."""

    env_id: str = setting("SWARM_ENV_ID", "CartPole-v1", text(),
                          "the gymnasium environment; it needs a Box observation and Discrete actions")
    preset: str = setting("SWARM_PRESET", "swarm", choice(*PRESETS),
                          "the defaults of the settings below: this project's measured best, or the tutorial's")
    models: int = setting("SWARM_MODELS", 20, whole(1),
                          "models (policies) in the swarm; the aggregation and evolution wait for this many")
    models_per_process: int = setting("SWARM_MODELS_PER_PROCESS", 1, whole(1),
                                      "models each model process hosts and computes together (1: the tutorial's "
                                      "one process per model)")
    launcher: str = setting("SWARM_LAUNCHER", "swarm", choice("swarm", "fork"),
                            "how the control starts the model processes: swergio-toolbox's Swarm, one interpreter "
                            "each (the tutorial's), or forked from one interpreter that imported the libraries once")
    launch: bool = setting("SWARM_LAUNCH", True, switch(),
                           "the control starts the server, the components and the models (off: it joins a swarm "
                           "started by hand, e.g. across hosts)")
    rounds: int = setting("SWARM_ROUNDS", 0, whole(0), "most rounds of the control loop (0: until solved or out of budget)")
    episodes: int = setting("SWARM_EPISODES", 10, whole(1), "training episodes per round")
    envs: int = setting("SWARM_ENVS", 4, whole(1), "environment copies stepped together")
    eval_episodes: int = setting("SWARM_EVAL_EPISODES", 10, whole(1),
                                 "deterministic episodes per evaluation, rounded up to a whole number per copy")
    max_steps: int = setting("SWARM_MAX_STEPS", 100_000, whole(0),
                             "training budget in environment steps, checked after each round (0: none; "
                             f"{budgets_shown(0)})")
    max_seconds: float = setting("SWARM_MAX_SECONDS", 1200.0, number(0),
                                 "training budget in wall-clock seconds from the first round (0: none; "
                                 f"{budgets_shown(1)})")
    evolution: bool = setting("SWARM_EVOLUTION", True, switch(), "evolve the population after every round")
    training_actions: str = setting("SWARM_TRAINING_ACTIONS", "leader",
                                    choice("summed", "leader", "greedy-leader", "tournament-leader"),
                                    "how training actions are chosen: sampled from the members' summed probabilities "
                                    "(the tutorial's), or each episode of each copy led by one member in turn, "
                                    "whose own sampled actions it takes (greedy-leader: in every other copy its "
                                    "most probable ones, and only those episodes earn fitness; tournament-leader: "
                                    "the fitter of two members drawn at random leads)")
    correction: str = setting("SWARM_CORRECTION", "vtrace", choice("none", "vtrace"),
                              "how a member learns from actions it did not choose: as if it had (the tutorial's), "
                              "or weighted by its truncated probability ratio to the behaviour (V-trace)")
    fitness: str = setting("SWARM_FITNESS", "lead", choice("lead", "contribution", "return", "advantage"),
                           "the evolution's fitness: the returns of the episodes a member led (needs "
                           "SWARM_TRAINING_ACTIONS=leader), the tutorial's contribution, credit for returns, or "
                           "each member's importance-weighted advantage over the swarm on the round's steps")
    operators: str = setting("SWARM_OPERATORS", "pbt", choice("pbt", "genetic"),
                             "the evolution: the worst quarter copy the best quarter and perturb its "
                             "hyperparameters (population-based training), or the tutorial's genetic algorithm")
    evolved: str = setting("SWARM_EVOLVED", "all", choice("learning-rate", "all"),
                           "the hyperparameters population-based training spreads and perturbs: the learning rate, "
                           "or all (learning rate, entropy coefficient, discount)")
    vote: str = setting("SWARM_VOTE", "probabilities", choice(*VOTES),
                        "how the members' deterministic action is chosen: summed probabilities (the tutorial's), "
                        "a majority of their own choices, or summed log-probabilities")
    learning_rate: float = setting("SWARM_LEARNING_RATE", 0.002, number(0, above=True),
                                   "the models' Adam learning rate (with SWARM_OPERATORS=pbt: the middle of their range)")
    adam_eps: float = setting("SWARM_ADAM_EPS", 1e-8, number(0, above=True),
                              "the models' Adam epsilon (ActorCriticPolicy's own is 1e-5; the defaults were tuned "
                              "with torch's 1e-8: docs/learning.md)")
    normalize_advantage: bool = setting("SWARM_NORMALIZE_ADVANTAGE", False, switch(),
                                        "normalise the advantages of each A2C update")
    model_timeout: float = setting("SWARM_MODEL_TIMEOUT", 5.0, number(0, above=True),
                                   "seconds the aggregation and evolution wait for the last model's answer")
    restarts: int = setting("SWARM_RESTARTS", 5, whole(0),
                            "processes the control starts again in a run when they die or fall silent, "
                            "each time playing the round again from the last checkpoint (0: a fault stops the run)")
    resume: Path | None = setting("SWARM_RESUME", None, optional(existing_file()),
                                  "a checkpoint (swarm.pt) to start from: its models, and its history goes on")

    @classmethod
    def defaults(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """SWARM_PRESET's values (an unknown preset is reported with the other bad values), and
        SWARM_ENV_ID's budget."""
        values = dict(PRESETS.get(environ.get("SWARM_PRESET", "").strip(), {}))
        if (budget := BUDGETS.get(environ.get("SWARM_ENV_ID", "").strip())) is not None:
            values["max_steps"], values["max_seconds"] = budget
        return values

    def problems(self) -> list[str]:
        """What the values allow but the swarm cannot do: the runtime's problems, an environment it
        cannot play, and a fitness its training actions cannot give."""
        from swarm_rl.environments import environment_problem  # gymnasium: only when a swarm is set up

        problems = super().problems()
        if (problem := environment_problem(self.env_id)) is not None:
            problems.append(f"SWARM_ENV_ID={self.env_id!r} is not allowed: {problem}")
        if self.fitness == "lead" and self.training_actions == "summed":
            problems.append(f"SWARM_FITNESS=lead is not allowed with SWARM_TRAINING_ACTIONS={self.training_actions}: "
                            "it ranks members on the episodes they led (SWARM_TRAINING_ACTIONS=leader)")
        if self.training_actions == "tournament-leader" and self.fitness == "lead":
            problems.append("SWARM_TRAINING_ACTIONS=tournament-leader is not allowed with SWARM_FITNESS=lead: a "
                            "member that loses its tournaments would never lead, and so never earn a fitness")
        if self.training_actions == "greedy-leader" and self.envs < 2:
            problems.append(f"SWARM_TRAINING_ACTIONS=greedy-leader is not allowed with SWARM_ENVS={self.envs}: "
                            "every other copy is led greedily, so it needs at least 2")
        return problems


def option_name(field: dataclasses.Field) -> str:
    """SWARM_MAX_STEPS -> --max-steps, SWERGIO_PORT -> --port."""
    return "--" + field.metadata["env"].split("_", 1)[1].lower().replace("_", "-")


class OptionParser(argparse.ArgumentParser):
    """An error is one line naming the option as typed, and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (--help lists the options)\n")


def option_value(kind: Kind) -> Callable[[str], str]:
    """The option's text, once its kind accepts it; the text goes on as the environment's would."""
    def check(text: str) -> str:
        try:
            kind.parse(text)
        except ValueError:
            shown = "(not shown)" if kind.secret else repr(text)
            raise argparse.ArgumentTypeError(f"{shown} is not allowed: {kind.allowed}") from None
        return text
    return check


def command_line(cls: type[RuntimeSettings], argv: list[str], description: str | None = None) -> dict[str, str]:
    """The settings given as options (`--models 4`, `--no-evolution`), as the environment
    variables they stand for; `--help` lists every setting with its variable, its default (per
    preset, where a preset changes it) and what it may be."""
    parser = OptionParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="Every option can also be set by its environment variable; an option wins.")
    for f in cls.fields():
        kind: Kind = f.metadata["kind"]
        def shown(value: Any, kind: Kind = kind) -> str:
            return ("on" if value else "off") if kind.is_switch else kind.show(value) or "empty"
        default = shown(f.default)
        presets = "".join(f", {preset} preset: {shown(values[f.name])}"
                          for preset, values in PRESETS.items() if f.name in values)
        meaning = f"{f.metadata['meaning']} ({f.metadata['env']}; default {default}{presets})".replace("%", "%%")
        name, env = option_name(f), f.metadata["env"]
        if kind.is_switch:
            parser.add_argument(name, dest=env, action=argparse.BooleanOptionalAction, help=meaning)
        elif kind.options:
            parser.add_argument(name, dest=env, choices=kind.options, help=meaning)
        else:
            parser.add_argument(name, dest=env, metavar="VALUE", type=option_value(kind),
                                help=f"{meaning[:-1]}; {kind.allowed})")
    values = vars(parser.parse_args(argv))
    return {env: (str(int(value)) if isinstance(value, bool) else value) for env, value in values.items()
            if value is not None}


def load_settings(cls: type[S] = SwarmSettings, environ: Mapping[str, str] | None = None,  # type: ignore[assignment]
                  argv: list[str] | None = None, description: str | None = None,
                  problems: list[str] | None = None, log_dir_needed: bool = True) -> S:
    """The settings, checked, with the log folder created: what every script calls first.

    `argv` (a script's command line; never a notebook's) overrides the environment variables.
    From a shell every bad setting (and each of the caller's `problems`) is printed in a line of
    its own and the script exits with status 2; in a notebook one SettingsError with the same
    lines is raised. The log folder is created here, unless it is not `log_dir_needed` and
    SWARM_LOG_DIR is not set (the control then makes a folder for its run).
    """
    environ = os.environ if environ is None else environ
    if argv is not None and not in_notebook():
        environ = {**environ, **command_line(cls, argv, description)}
    problems, settings = list(problems or []), None
    try:
        settings = cls.from_env(environ)
        problems += settings.problems()
    except SettingsError as error:
        problems += error.problems
    log_dir = settings.log_dir if settings else Path(environ.get("SWARM_LOG_DIR") or "logs")
    if (log_dir_needed or environ.get("SWARM_LOG_DIR")) and (problem := folder_problem(log_dir)) is not None:
        problems.append(f"SWARM_LOG_DIR={str(log_dir)!r} is not allowed: {problem}")
    if problems:
        refuse(problems)
    return settings


def given_settings(cls: type[RuntimeSettings], argv: list[str]) -> set[str]:
    """The variables a command sets: in its environment, or as options (never in a notebook)."""
    options = set() if in_notebook() else set(command_line(cls, argv))
    return {f.metadata["env"] for f in cls.fields() if os.environ.get(f.metadata["env"], "") != ""} | options


def refuse(problems: list[str]) -> NoReturn:
    """Stop before anything starts: in a shell, one line per problem and exit status 2; in a
    notebook, a SettingsError with the same lines."""
    if in_notebook():
        raise SettingsError(problems)
    if len(problems) == 1:
        print(f"bad setting: {problems[0]}", file=sys.stderr)
    else:
        print("bad settings:\n" + "\n".join(problems), file=sys.stderr)
    raise SystemExit(2)


def folder_problem(path: Path) -> str | None:
    """None once `path` is a folder we can write in (created if need be); else what is wrong."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot create the folder ({error.strerror or error})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "the folder is not writable"
    return None


def in_notebook() -> bool:
    return "ipykernel" in sys.modules


README_START, README_END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def readme_with_table(readme: str, settings_class: type[RuntimeSettings] | None = None) -> str:
    """The README with the generated settings table (of SwarmSettings by default) between its two markers."""
    head, rest = readme.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_START}\n{(settings_class or SwarmSettings).markdown_table()}\n{README_END}{tail}"


if __name__ == "__main__":
    # --markdown (default): print the table; --readme: write it into README.md
    if "--readme" in sys.argv:
        readme = Path(__file__).resolve().parent.parent / "README.md"
        readme.write_text(readme_with_table(readme.read_text()))
        print(f"settings table written to {readme}")
    else:
        print(SwarmSettings.markdown_table())
