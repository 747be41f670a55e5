"""What the trebuchet example's scripts share: rooms, the DATA message format and its checks, and a
bounded memory for batches waiting for their gradient.

The protocol is swergio's own: DATA.FORWARD messages carry a batch forward (`DATA` is a list of
rows), DATA.GRADIENT messages carry d(loss)/d(that batch) back. A component that sent a FORWARD
with ID x recognises the GRADIENT for it by the same ID x.
"""
from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from typing import Any

import numpy as np
from swergio import MESSAGE_TYPE, MODEL_STATUS
from swergio.messageType import ModelStatusSetting

from swarm_rl.checks import BadMessage, as_vector, get_str, require
from swarm_rl.protocol import ROOT_ID

log = logging.getLogger("trebuchet")

# --------------------------------------------------------------------------- rooms and keys
ROOM_INPUT = "input"  # trainer/inference -> control model, and its input gradient back
ROOM_MODEL = "model"  # control model -> trebuchet, and the trebuchet's input gradient back
ROOM_OUTPUT = "output"  # trebuchet -> trainer/inference, and the loss gradient back

FORWARD = MESSAGE_TYPE.DATA.FORWARD
GRADIENT = MESSAGE_TYPE.DATA.GRADIENT
DATA = "DATA"
ID = "ID"
MODEL_STATUS_KEY = "MODEL_STATUS"

# The trainer reports in the `control` room (our addition; the tutorial's trainer only logs).
TRAIN_PROGRESS = "TRAIN_PROGRESS"
TRAIN_DONE = "TRAIN_DONE"
STEP = "STEP"
LOSS = "LOSS"
SUMMARY = "SUMMARY"

MEMORY_LIMIT = 1000  # batches a component remembers while their gradient is on its way


def data_message(room: str, data: list, status: ModelStatusSetting = MODEL_STATUS.TRAIN,
                 message_type=FORWARD, root_id: str | None = None) -> dict[str, Any]:
    """A DATA message as the tutorial's trainer builds it; ROOT_ID names the batch end to end."""
    return {ROOT_ID: root_id or uuid.uuid4().hex, ID: uuid.uuid4().hex, "TYPE": message_type.id,
            DATA: data, "TO_ROOM": room, MODEL_STATUS_KEY: status.id}


# --------------------------------------------------------------------------- message checks
def get_id(msg: dict[str, Any]) -> str:
    return get_str(msg, ID)


def get_status(msg: dict[str, Any]) -> ModelStatusSetting:
    """TRAIN or VALIDATE; a message without MODEL_STATUS trains, as in the tutorial."""
    if MODEL_STATUS_KEY not in msg:
        return MODEL_STATUS.TRAIN
    status = MODEL_STATUS.by_id(msg[MODEL_STATUS_KEY])
    if status is None or isinstance(msg[MODEL_STATUS_KEY], bool):
        raise BadMessage(f"unknown MODEL_STATUS {msg[MODEL_STATUS_KEY]!r}")
    return status


def get_matrix(msg: dict[str, Any], key: str, columns: int, rows: int | None = None) -> np.ndarray:
    """`msg[key]` as a finite (rows x columns) float array; a BadMessage otherwise."""
    value = require(msg, key)
    if not isinstance(value, list) or not value:
        raise BadMessage(f"{key} must be a non-empty list of rows")
    matrix = np.stack([as_vector(row, f"{key} row {i}", columns) for i, row in enumerate(value)])
    if rows is not None and len(matrix) != rows:
        raise BadMessage(f"{key} must have {rows} rows, got {len(matrix)}")
    return matrix


def get_vector(msg: dict[str, Any], key: str, length: int | None = None) -> np.ndarray:
    vector = as_vector(require(msg, key), key, length)
    if vector.size == 0:
        raise BadMessage(f"{key} is empty")
    return vector


# --------------------------------------------------------------------------- memory
class BoundedMemory(OrderedDict):
    """A dict that forgets its oldest entries beyond `limit`.

    A batch whose gradient never comes back (a lost message, an inference run, a trainer killed
    mid-step) must not stay in memory forever.
    """

    def __init__(self, limit: int = MEMORY_LIMIT) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self.limit:
            oldest, _ = self.popitem(last=False)
            log.debug("memory full: forgot %s", oldest)
