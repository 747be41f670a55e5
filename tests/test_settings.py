"""Settings: declared once, every bad value named before anything starts (exit status 2 from a
shell, one exception in a notebook), and the README's table generated from the same list."""
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from swarm_rl.settings import (RuntimeSettings, SettingsError, SwarmSettings, command_line, load_settings, option_name,
                               readme_with_table)
from tests.helpers import ROOT, processes_with_log_dir

CONTROL = ROOT / "06_control.py"


def run_script(script: Path, env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    began = time.monotonic()
    result = subprocess.run([sys.executable, str(script)], cwd=cwd, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=120)
    return result, time.monotonic() - began


def children_of_this_test() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]


# One row per input a new user tried from a shell.
SHELL_CASES = [
    ({"SWARM_MODELS": "0"}, "SWARM_MODELS='0'", "a whole number >= 1"),
    ({"SWERGIO_PORT": "99999"}, "SWERGIO_PORT='99999'", "from 1 to 65535"),
    ({"SWARM_LEARNING_RATE": "fast"}, "SWARM_LEARNING_RATE='fast'", "a number > 0"),
    ({"SWARM_EVOLUTION": "maybe"}, "SWARM_EVOLUTION='maybe'", "on (1, true, on, yes) or off"),
    ({"SWARM_MAX_SECONDS": "-1"}, "SWARM_MAX_SECONDS='-1'", "a number >= 0"),
    ({"SWARM_MODEL_TIMEOUT": "0"}, "SWARM_MODEL_TIMEOUT='0'", "a number > 0"),
    ({"SWARM_LOG_DIR": "/proc/nope"}, "SWARM_LOG_DIR='/proc/nope'", "cannot create the folder"),
    ({"SWARM_ENV_ID": "Pendulum-v1"}, "SWARM_ENV_ID='Pendulum-v1'", "the aggregation needs Discrete actions"),
    ({"SWARM_ENV_ID": "FrozenLake-v1"}, "SWARM_ENV_ID='FrozenLake-v1'", "the models need a flat Box"),
    ({"SWARM_ENV_ID": "NoSuchGame-v0"}, "SWARM_ENV_ID='NoSuchGame-v0'", "gymnasium cannot make it"),
    ({"SWARM_FITNESS": "lead", "SWARM_TRAINING_ACTIONS": "summed"}, "SWARM_FITNESS=lead is not allowed",
     "SWARM_TRAINING_ACTIONS=leader"),
    ({"SWARM_TRAINING_ACTIONS": "tournament-leader", "SWARM_FITNESS": "lead"},
     "SWARM_TRAINING_ACTIONS=tournament-leader is not allowed",
     "never earn a fitness"),
]


@pytest.mark.parametrize("env, named, allowed", SHELL_CASES, ids=[next(iter(c[0])) for c in SHELL_CASES])
def test_a_bad_setting_is_named_in_one_line_and_exits_2_before_anything_starts(swarm_env, tmp_path, env, named,
                                                                              allowed):
    result, _ = run_script(CONTROL, env, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert any(named in line and allowed in line for line in lines), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not processes_with_log_dir(swarm_env.log_dir) and not children_of_this_test()
    assert not (swarm_env.log_dir / "server.log").exists(), "a component started"


def test_every_bad_setting_is_reported_not_just_the_first(tmp_path):
    env = {"SWARM_MODELS": "0", "SWERGIO_PORT": "http", "SWARM_FITNESS": "speed", "SWARM_LOG_DIR": "/proc/nope"}
    result, _ = run_script(CONTROL, env, tmp_path)
    assert result.returncode == 2
    for name in env:
        assert sum(line.startswith(f"{name}=") for line in result.stderr.splitlines()) == 1, result.stderr


def test_a_component_started_by_hand_checks_the_same_settings(swarm_env, tmp_path):
    for script in ("01_server.py", "02_model.py"):
        result, _ = run_script(ROOT / script, {"SWARM_LEARNING_RATE": "fast", "SWERGIO_PORT": "0"}, tmp_path)
        assert result.returncode == 2, f"{script}: {result.stderr}"
        assert "SWARM_LEARNING_RATE='fast' is not allowed" in result.stderr
        assert "SWERGIO_PORT='0' is not allowed" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_model_started_by_hand_without_a_name_refuses_to_start(swarm_env, tmp_path):
    result, _ = run_script(ROOT / "02_model.py", {}, tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("bad setting: SWARM_COMPONENT_NAME is not set: a model started by hand needs a name "
                                     "of its own (model0, model1, ...), which gives it its seed, its ids and its log file")


def test_in_a_notebook_a_bad_setting_raises_one_exception_with_the_same_lines(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ipykernel", sys.modules.get("ipykernel") or object())
    environ = {"SWARM_MODELS": "-3", "SWARM_EVOLUTION": "maybe", "SWARM_LOG_DIR": str(tmp_path)}
    with pytest.raises(SettingsError) as raised:
        load_settings(SwarmSettings, environ)
    assert raised.value.problems == [
        "SWARM_MODELS='-3' is not allowed: a whole number >= 1",
        "SWARM_EVOLUTION='maybe' is not allowed: on (1, true, on, yes) or off (0, false, off, no)",
    ]


# A control run from another folder: tests/test_swarm.py (run_control starts it from elsewhere).


# --------------------------------------------------------------------------- every setting
def bad_values(field) -> list[str]:
    """A value of the wrong type and one out of range, for the setting's kind."""
    allowed = field.metadata["kind"].allowed
    if field.metadata["kind"].secret:
        return ["   ", "seven77"]
    if "whole number" in allowed:
        return ["many", "2.5", "-1"] + (["65536"] if "65535" in allowed else [])
    if "a number >" in allowed:
        return ["fast", "nan", "-1"] + (["0"] if "> 0" in allowed else [])
    if allowed.startswith("on "):
        return ["maybe", "2"]
    if allowed.startswith("one of"):
        return ["something-else"]
    if "text" in allowed:
        return ["   "]
    if "existing file" in allowed:
        return ["/no/such/checkpoint.pt", "/tmp"]
    return []


FIELDS = SwarmSettings.fields()


@pytest.mark.parametrize("field", FIELDS, ids=[f.metadata["env"] for f in FIELDS])
def test_every_setting_rejects_a_wrong_type_and_an_out_of_range_value(field):
    env = field.metadata["env"]
    values = bad_values(field)
    assert values or env == "SWARM_LOG_DIR", f"no bad values known for {env}"  # the folder is checked on load
    shown = "(not shown)" if field.metadata["kind"].secret else None  # a secret is never echoed
    for value in values:
        with pytest.raises(SettingsError) as raised:
            SwarmSettings.from_env({env: value})
        assert raised.value.problems == [f"{env}={shown or repr(value)} is not allowed: {field.metadata['kind'].allowed}"]


@pytest.mark.parametrize("field", FIELDS, ids=[f.metadata["env"] for f in FIELDS])
def test_to_env_reproduces_every_setting_in_a_child(field):
    changed = {"host": "localhost", "port": 9001, "log_dir": Path("elsewhere"), "log_level": "DEBUG", "seed": 7,
               "start_timeout": 1.5, "reply_timeout": 2.5, "token": "a-shared-secret", "models": 3, "launch": False,
               "models_per_process": 2, "launcher": "fork", "rounds": 4, "episodes": 5, "envs": 6,
               "eval_episodes": 7, "max_steps": 8, "max_seconds": 9.5, "evolution": False, "fitness": "return",
               "training_actions": "summed", "correction": "vtrace", "evolved": "all",
               "preset": "tutorial", "operators": "genetic", "vote": "majority",
               "learning_rate": 0.002, "adam_eps": 3e-7, "normalize_advantage": True, "model_timeout": 0.5, "restarts": 2,
               "resume": Path(__file__),
               "env_id": "Acrobot-v1"}
    assert set(changed) == {f.name for f in FIELDS}
    settings = SwarmSettings(**changed)
    assert getattr(SwarmSettings.from_env(settings.to_env()), field.name) == changed[field.name]
    assert getattr(SwarmSettings.from_env({}), field.name) == field.default


def test_a_preset_gives_defaults_and_a_set_variable_wins():
    tutorial = SwarmSettings.from_env({"SWARM_PRESET": "tutorial"})
    assert (tutorial.envs, tutorial.episodes, tutorial.learning_rate, tutorial.training_actions, tutorial.fitness,
            tutorial.operators) == (1, 20, 7e-4, "summed", "contribution", "genetic")
    assert (SwarmSettings().training_actions, SwarmSettings().fitness) == ("leader", "lead")
    assert SwarmSettings.from_env({"SWARM_PRESET": "tutorial", "SWARM_ENVS": "4"}).envs == 4
    assert SwarmSettings.from_env({"SWARM_PRESET": "swarm"}) == SwarmSettings()
    with pytest.raises(SettingsError, match="SWARM_PRESET='best' is not allowed: one of swarm, tutorial"):
        SwarmSettings.from_env({"SWARM_PRESET": "best"})


def test_the_lead_fitness_needs_leader_actions_and_the_others_take_either():
    assert SwarmSettings(fitness="lead", training_actions="summed").problems() == [
        "SWARM_FITNESS=lead is not allowed with SWARM_TRAINING_ACTIONS=summed: it ranks members on the episodes "
        "they led (SWARM_TRAINING_ACTIONS=leader)"]
    for fitness in ("lead", "contribution", "return"):
        assert SwarmSettings(fitness=fitness, training_actions="leader").problems() == []
    for fitness in ("contribution", "return"):
        assert SwarmSettings(fitness=fitness, training_actions="summed").problems() == []


def test_on_off_settings_read_the_usual_words():
    for word, value in [("1", True), ("yes", True), ("ON", True), ("0", False), ("false", False), ("off", False)]:
        assert SwarmSettings.from_env({"SWARM_EVOLUTION": word}).evolution is value


def test_the_runtime_settings_know_nothing_of_the_rl_swarm():
    names = {f.metadata["env"] for f in RuntimeSettings.fields()}
    assert names == {"SWERGIO_HOST", "SWERGIO_PORT", "SWARM_LOG_DIR", "SWARM_LOG_LEVEL", "SWARM_SEED",
                     "SWARM_START_TIMEOUT", "SWARM_REPLY_TIMEOUT", "SWARM_TOKEN"}


def test_the_readme_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    assert readme_with_table(readme) == readme, "run: python -m swarm_rl.settings --readme"
    for f in FIELDS:
        assert f"`{f.metadata['env']}`" in readme


def test_the_control_lists_every_setting_as_an_option(tmp_path):
    result = subprocess.run([sys.executable, str(CONTROL), "--help"], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())  # argparse wraps lines
    for f in SwarmSettings.fields():
        assert f.metadata["env"] in help_text and option_name(f) in help_text
    assert "--max-steps VALUE" in help_text and "default 100000" in help_text
    assert not list(tmp_path.iterdir()), "--help started something"


def test_an_option_wins_over_its_environment_variable_and_a_bad_one_is_named_as_typed(tmp_path):
    result = subprocess.run([sys.executable, str(CONTROL), "--models", "3", "--envs", "x"], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path, env={**os.environ, "SWARM_MODELS": "0"})
    assert result.returncode == 2 and "SWARM_MODELS" not in result.stderr
    assert result.stderr.strip() == ("06_control.py: argument --envs: 'x' is not allowed: a whole number >= 1 "
                                     "(--help lists the options)")
    assert not list(tmp_path.iterdir())


NUMBERED_SCRIPTS = [ROOT / name for name in ("01_server.py", "02_model.py", "03_aggregation.py", "04_environment.py",
                                             "05_evolution.py", "06_control.py", "07_watch.py")]
NUMBERED_SCRIPTS += sorted((ROOT / "trebuchet").glob("0*.py"))


@pytest.mark.parametrize("script", NUMBERED_SCRIPTS, ids=lambda path: path.name)
def test_every_numbered_script_has_help_and_starts_nothing_for_it(script, tmp_path):
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, env={**os.environ, "SWARM_LOG_DIR": str(tmp_path / "logs")})
    assert result.returncode == 0 and result.stdout.startswith(f"usage: {script.name}"), result.stderr
    assert not list(tmp_path.iterdir()), "--help started something: it wrote logs"


@pytest.mark.parametrize("script", ["03_aggregation.py", "trebuchet/03_trebuchet.py"])
def test_a_component_names_a_bad_option_as_typed(script, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / script), "--log-level", "LOUD"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "argument --log-level: invalid choice: 'LOUD'" in result.stderr


def test_switches_are_options_on_and_off_and_choices_and_preset_defaults_are_listed():
    assert command_line(SwarmSettings, ["--no-evolution", "--launch"]) == {"SWARM_EVOLUTION": "0", "SWARM_LAUNCH": "1"}
    assert command_line(SwarmSettings, []) == {}
    help_text = " ".join(subprocess.run([sys.executable, str(CONTROL), "--help"], capture_output=True, text=True,
                                        timeout=60).stdout.split())
    assert "--evolution, --no-evolution" in help_text and "default on" in help_text
    assert "--vote {probabilities,majority,log-probabilities}" in help_text
    assert "(SWARM_LEARNING_RATE; default 0.002, tutorial preset: 0.0007;" in help_text


def test_each_measured_environment_has_its_own_budget_unless_one_is_set():
    assert SwarmSettings.from_env({}).max_steps == 100_000
    acrobot = SwarmSettings.from_env({"SWARM_ENV_ID": "Acrobot-v1"})
    assert (acrobot.max_steps, acrobot.max_seconds) == (500_000, 3600.0)
    assert SwarmSettings.from_env({"SWARM_ENV_ID": "LunarLander-v3"}).max_steps == 1_000_000
    assert SwarmSettings.from_env({"SWARM_ENV_ID": "LunarLander-v3", "SWARM_MAX_STEPS": "5000"}).max_steps == 5000
    assert SwarmSettings.from_env({"SWARM_ENV_ID": "MountainCar-v0"}).max_steps == 100_000
