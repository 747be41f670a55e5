"""The trebuchet example as real processes on a free loopback port: the run-and-inference script
from a shell, its notebook, a missing component, and malformed messages."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from swergio import MODEL_STATUS

from swarm_rl.control import ControlClient
from swarm_rl.launcher import ManagedSwarm
from swarm_rl.protocol import ROOT_ID
from tests.helpers import ROOT, assert_all_gone, assert_paired, execute_notebook
from trebuchet import protocol as tp
from trebuchet.settings import TrebuchetSettings

HERE = ROOT / "trebuchet"
SCRIPT = HERE / "05_run_and_inference.py"


def check_results(config, train_steps):
    results = json.loads((config.log_dir / "trebuchet_results.json").read_text())
    training = results["training"]
    assert training["steps"] == train_steps and training["steps_per_second"] > 0
    assert training["loss_last"] < 0.8 * training["loss_first"], "a short training run must lower the loss"
    assert results["train_steps"] == train_steps  # TRAIN_STEPS, as the script read it
    assert results["pairs"] == 100 and np.isfinite(results["mean_abs_error"])
    assert set(results["pids"]) == {"server", "controlmodel", "trebuchet", "trainer"}
    assert (config.log_dir / "trebuchet_inference.png").exists()
    assert_all_gone(results["pids"].values())
    return results


def test_run_and_inference_from_a_shell_trains_and_stops_everything(swarm_env, monkeypatch):
    monkeypatch.setenv("TRAIN_STEPS", "40")
    process = subprocess.Popen([sys.executable, str(SCRIPT)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=240)
    finally:  # on a timeout, the script and (as they watch it) its components go
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output
    assert "mean absolute error on 100 fresh pairs" in output and "swarm stopped" in output
    check_results(swarm_env, 40)


def test_notebook_cells_match_the_script():
    assert_paired(SCRIPT, min_code_cells=5)


def test_notebook_executes_top_to_bottom(swarm_env, monkeypatch):
    monkeypatch.setenv("TRAIN_STEPS", "60")  # 30 steps (3 per tenth) compared the loss by chance now and then
    text, images = execute_notebook(SCRIPT.with_suffix(".ipynb"), HERE, timeout=240)
    assert "trained 60 steps" in text and "swarm stopped" in text
    assert images, "the targets-against-distances plot is not shown inline"
    check_results(swarm_env, 60)


def test_trainer_names_the_components_that_do_not_answer(swarm_env):
    """Without a control model and a trebuchet the trainer gives up after SWARM_START_TIMEOUT,
    saying whom it waited for, instead of sending its first batch into the void."""
    swarm = ManagedSwarm(HERE / "swarm.yaml", TrebuchetSettings.from_env().replace(start_timeout=2.0))
    try:
        swarm.start(["server", "trainer"])
        trainer = swarm.components["trainer"]
        trainer.process.wait(timeout=60)
        assert trainer.exit_code() != 0
        log = trainer.log_file.read_text()
        assert "trainer: not ready after 2 s; no answer from: controlmodel, trebuchet" in log
    finally:
        pids = list(swarm.pids().values())
        swarm.stop()
    assert_all_gone(pids)


def test_components_skip_malformed_messages_and_keep_serving(swarm_env):
    swarm = ManagedSwarm(HERE / "swarm.yaml", TrebuchetSettings.from_env())
    try:
        swarm.start(["server", "controlmodel", "trebuchet"])
        client = ControlClient(swarm, name="probe")
        client.join_room(tp.ROOM_OUTPUT)
        swarm.wait_ready(client, ["controlmodel", "trebuchet"], models=0)
        for bad in ([[1.0]], [["wind", 50.0]], "rows", [[float("inf"), 50.0]]):
            client.send(tp.data_message(tp.ROOM_INPUT, bad))
        client.send(tp.data_message(tp.ROOM_MODEL, [[0.0, 0.0]]))  # the trebuchet needs three columns
        for room in (tp.ROOM_MODEL, tp.ROOM_OUTPUT):  # gradients for batches nobody sent
            client.send(tp.data_message(room, [[0.0, 0.0, 0.0]], message_type=tp.GRADIENT))
        client.send({ROOT_ID: "x", "TYPE": tp.FORWARD.id, "TO_ROOM": tp.ROOM_INPUT})  # no ID, no DATA

        good = tp.data_message(tp.ROOM_INPUT, [[0.0, 50.0], [3.0, 80.0]], MODEL_STATUS.VALIDATE)
        client.send(good)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = client.receive(timeout=1)
            if message and message.get(ROOT_ID) == good[ROOT_ID] and message.get("TO_ROOM") == tp.ROOM_OUTPUT:
                assert len(message[tp.DATA]) == 2 and all(np.isfinite(message[tp.DATA]))
                break
        else:
            raise AssertionError("no distances after the malformed messages: a component stopped serving")
        swarm.raise_if_dead()  # the trainer never started; the others must all be up
        for name in ("controlmodel", "trebuchet"):
            assert "skipped" in swarm.components[name].log_file.read_text()
    finally:
        pids = list(swarm.pids().values())
        swarm.stop()
    assert_all_gone(pids)
