"""Checkpoints: a whole swarm in one file (`swarm.pt` in SWARM_LOG_DIR), written after every
round, read to resume or to watch: every model's answer to STATE, the settings and the history."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from swarm.checks import BadMessage, as_vector, get_float, get_str, require
from swarm.protocol import (CMD, COMPONENT_ID, EXP_AVG, EXP_AVG_SQ, HYPERPARAMETERS, LEARNING_RATE, OPTIMIZER, SET,
                            STEP, WEIGHTS, read_hyperparameters)
from swarm.settings import SettingsError, SwarmSettings, refuse

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
    """A checkpoint, or a SettingsError that says why `path` is not one."""
    try:
        content = torch.load(path, weights_only=True)
    except Exception as error:  # torch raises several kinds for a file that is not a checkpoint
        raise SettingsError([f"{path} is not a swarm checkpoint: {error}"]) from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise SettingsError([f"{path} is not a swarm checkpoint (format {FORMAT})"])
    return content


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


def resume(settings: SwarmSettings) -> dict[str, Any] | None:
    """SWARM_RESUME's checkpoint, checked against these settings before anything starts (refused
    as a bad setting is)."""
    if settings.resume is None:
        return None
    try:
        saved = load(settings.resume)
        check_fits(saved, settings, settings.resume)
    except SettingsError as error:
        refuse([f"SWARM_RESUME: {problem}" for problem in error.problems])
    return saved
