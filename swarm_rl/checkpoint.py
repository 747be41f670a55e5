"""Checkpoints: a whole swarm in one file (`swarm.pt` in SWARM_LOG_DIR), written after every
round, read to resume or to watch: every model's answer to STATE, the settings and the history."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from swarm_rl.checks import BadMessage, as_vector, get_float, get_str, require
from swarm_rl.protocol import (CMD, COMPONENT_ID, EXP_AVG, EXP_AVG_SQ, HYPERPARAMETERS, LEARNING_RATE, OPTIMIZER, SET,
                               STEP, WEIGHTS, read_hyperparameters)
from swarm_rl.settings import SettingsError, SwarmSettings, refuse

FILE_NAME = "swarm.pt"
FORMAT = 1


def member(answer: dict[str, Any]) -> dict[str, Any]:
    """One model's answer to STATE (or GET), as a checkpoint keeps it: tensors, not JSON lists."""
    adam = answer.get(OPTIMIZER)
    return {"model_id": get_str(answer, COMPONENT_ID),
            "weights": torch.as_tensor(as_vector(require(answer, WEIGHTS), WEIGHTS), dtype=torch.float32),
            "learning_rate": get_float(require(answer, HYPERPARAMETERS), LEARNING_RATE),
            "hyperparameters": read_hyperparameters(answer[HYPERPARAMETERS], HYPERPARAMETERS),
            "optimizer": None if adam is None else {
                "step": get_float(adam, STEP),
                "exp_avg": torch.as_tensor(as_vector(require(adam, EXP_AVG), EXP_AVG), dtype=torch.float32),
                "exp_avg_sq": torch.as_tensor(as_vector(require(adam, EXP_AVG_SQ), EXP_AVG_SQ), dtype=torch.float32)}}


def save(path: Path, answers: list[dict[str, Any]], settings: SwarmSettings, history: list[dict[str, Any]]) -> int:
    """Write the checkpoint atomically (a crash leaves the previous one whole); its size in bytes."""
    members = sorted((member(answer) for answer in answers), key=lambda m: m["model_id"])
    if len(members) != settings.models:
        raise BadMessage(f"a checkpoint needs all {settings.models} models, got {len(members)}")
    content = {"format": FORMAT, "env_id": settings.env_id, "models": settings.models, "members": members,
               "settings": settings.to_env(secrets=False), "history": history}  # a file gets copied around
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(content, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path.stat().st_size


def load(path: Path) -> dict[str, Any]:
    """A whole checkpoint, or a SettingsError that says in one line why `path` is not one. Only
    tensors and plain data are read (torch's weights_only)."""
    if not zipfile.is_zipfile(path):
        raise SettingsError([f"{path} is not a swarm checkpoint: not a file torch writes"])
    try:
        content = torch.load(path, weights_only=True)
    except Exception:  # torch raises several kinds, with advice that does not apply here
        raise SettingsError([f"{path} is not a swarm checkpoint: a torch file holding more than tensors and "
                             "plain data"]) from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise SettingsError([f"{path} is not a swarm checkpoint (format {FORMAT})"])
    if (problem := whole_problem(content)) is not None:
        raise SettingsError([f"{path} is not a whole swarm checkpoint: {problem}"])
    return content


def whole_problem(content: dict[str, Any]) -> str | None:
    """What a checkpoint lacks or holds wrongly, or None: each part there, of its type and size."""
    if not isinstance(content.get("env_id"), str) or not isinstance(content.get("models"), int):
        return "no env_id or models"
    settings = content.get("settings")
    if not isinstance(settings, dict) or not all(isinstance(v, str) for v in settings.values()):
        return "no settings"
    try:
        saved = SwarmSettings.from_env(settings)
    except SettingsError as error:
        return f"its settings: {'; '.join(error.problems)}"
    if (saved.env_id, saved.models) != (content["env_id"], content["models"]):
        return "its settings are of another swarm than its members"
    history = content.get("history")
    if not isinstance(history, list) or not all(isinstance(row, dict) and "steps" in row for row in history):
        return "no history of rounds"
    members = content.get("members")
    if not isinstance(members, list) or len(members) != content["models"]:
        return f"{content['models']} models, but {len(members) if isinstance(members, list) else 'no'} members"
    size = member_size(saved)
    for i, saved_member in enumerate(members):
        if (problem := member_problem(saved_member, size)) is not None:
            return f"member {i}: {problem}"
    return None


def member_problem(saved: Any, size: int) -> str | None:
    if not isinstance(saved, dict) or not isinstance(saved.get("model_id"), str):
        return "no model_id"
    weights = saved.get("weights")
    if not isinstance(weights, torch.Tensor) or weights.shape != (size,):
        return f"weights are not {size} numbers (the environment's policy)"
    if not isinstance(saved.get("hyperparameters", {}), dict) or not isinstance(saved.get("learning_rate"), float):
        return "no learning rate"
    adam = saved.get("optimizer")
    if adam is not None and not (isinstance(adam, dict) and all(
            isinstance(adam.get(key), torch.Tensor) and adam[key].shape == (size,) for key in ("exp_avg", "exp_avg_sq"))):
        return "Adam's state does not fit its weights"
    return None


def member_size(settings: SwarmSettings) -> int:
    """The length of a member's weight vector for `settings`' environment."""
    from swarm_rl.scripts import load_script  # the model script: its network is the members' shape

    with torch.random.fork_rng():  # building a model seeds torch: leave the caller's generator alone
        return load_script("02_model.py").new_state(settings.replace(seed=0), ["model0"]).size


def check_fits(checkpoint: dict[str, Any], settings: SwarmSettings, path: Path) -> None:
    """Refuse a checkpoint of another environment or another number of models, saying which."""
    problems = []
    if checkpoint["env_id"] != settings.env_id:
        problems.append(f"{path} is a swarm of {checkpoint['env_id']}, SWARM_ENV_ID is {settings.env_id}")
    if checkpoint["models"] != settings.models:
        problems.append(f"{path} holds {checkpoint['models']} models, SWARM_MODELS is {settings.models}")
    if problems:
        raise SettingsError(problems)


def restore_message(checkpoint: dict[str, Any], model_ids: list[str]) -> dict[str, Any]:
    """The SET that gives the running models the checkpoint's members, in the order of their ids."""
    pairs = list(zip(sorted(model_ids), checkpoint["members"], strict=True))
    return {CMD: SET,
            WEIGHTS: {model_id: saved["weights"].tolist() for model_id, saved in pairs},
            # a checkpoint from before the evolved hyperparameters holds the learning rate alone
            HYPERPARAMETERS: {model_id: saved.get("hyperparameters", {LEARNING_RATE: saved["learning_rate"]})
                              for model_id, saved in pairs},
            OPTIMIZER: {model_id: {STEP: saved["optimizer"]["step"], EXP_AVG: saved["optimizer"]["exp_avg"].tolist(),
                                   EXP_AVG_SQ: saved["optimizer"]["exp_avg_sq"].tolist()}
                        for model_id, saved in pairs if saved["optimizer"] is not None}}


# Where and how this command runs, not what the run is: a resumed run takes these from its command.
DEPLOYMENT = {"SWERGIO_HOST", "SWERGIO_PORT", "SWARM_LOG_DIR", "SWARM_LOG_LEVEL", "SWARM_START_TIMEOUT",
              "SWARM_REPLY_TIMEOUT", "SWARM_TOKEN", "SWARM_LAUNCH", "SWARM_LAUNCHER", "SWARM_MODELS_PER_PROCESS",
              "SWARM_MODEL_TIMEOUT", "SWARM_RESTARTS", "SWARM_RESUME"}


def resume(settings: SwarmSettings, given: set[str]) -> tuple[dict[str, Any] | None, SwarmSettings, list[str]]:
    """SWARM_RESUME's checkpoint and the run's settings: the checkpoint's, except those the command
    gives (`given`, by variable; an explicit SWARM_PRESET gives all but the size and game) and where it runs
    (DEPLOYMENT). Also the run settings the command changed. A checkpoint that is not whole, or
    of another size or game than the command asks for, is refused as a bad setting is."""
    if settings.resume is None:
        return None, settings, []
    try:
        saved = load(settings.resume)
        current = settings.to_env()
        own = {name for name in current if name not in DEPLOYMENT and name in given}
        if "SWARM_PRESET" in own:  # the preset's values, but the swarm's size and game stay the checkpoint's
            own |= {name for name in current if name not in DEPLOYMENT | {"SWARM_ENV_ID", "SWARM_MODELS"}}
        run = SwarmSettings.from_env({**saved["settings"], **{name: current[name] for name in current
                                                                if name in DEPLOYMENT or name in own}})
        check_fits(saved, run, settings.resume)
    except SettingsError as error:
        refuse([f"SWARM_RESUME: {problem}" for problem in error.problems])
    changed = sorted(name for name in own if current[name] != saved["settings"].get(name))
    return saved, run, changed
