"""A swarm across hosts: the secret (SWARM_TOKEN) that a server beyond loopback requires, and a
whole swarm spread over network namespaces.

Without root: the settings refuse a server beyond loopback without a secret, and never show the
secret; a server with a secret, on loopback, drops every connection whose first message does not
carry it (a plain swergio client, a wrong secret, a silent peer), before anything reaches the
connection or comes from it, and logs the peer's address but never the secret.

With root and `ip netns`: namespaces joined by veth pairs to a bridge stand for hosts, with
addresses in 10.213.7.0/24 that exist only inside them. The server and the components run in
one, two models in each of two others, the control (`06_control.py` with SWARM_LAUNCH=0) in a
fourth: a swarm plays two rounds, a stranger without the secret is refused and receives nothing,
and when the models of one namespace are killed mid-run the failure names models of that
namespace only.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import swergio.server
from swergio import Client

from swarm_rl import checkpoint
from swarm_rl.client import ConnectionClosed, SwarmClient
from swarm_rl.component import NAME_VARIABLE, PARENT_VARIABLE
from swarm_rl.launcher import free_port
from swarm_rl.protocol import COMPONENT_ID, HYPERPARAMETERS, LEARNING_RATE, WEIGHTS, custom_message
from swarm_rl.server import SwarmServer, log_server_line
from swarm_rl.settings import RuntimeSettings, SettingsError, SwarmSettings, load_settings
from swarm_rl.wire import FORMAT, HEADER_LENGTH, frame
from tests.helpers import ROOT, Output, ip, why_no_namespaces
from tests.peer import read_until_closed
from tests.test_server_input import server_process, wait_for_log

SECRET = "s3cret-" + uuid.uuid4().hex  # fresh every run: found in a log, it can only have come from here
ROOM = "room"


# --------------------------------------------------------------------------- settings
@pytest.mark.parametrize("host", ["10.213.0.1", "0.0.0.0", "192.0.2.7", "swarm.example"])
def test_beyond_loopback_the_settings_refuse_a_server_without_a_token(tmp_path, capsys, monkeypatch, host):
    monkeypatch.setattr("swarm_rl.settings.in_notebook", lambda: False)  # as in a shell, whatever ran in this process
    environ = {"SWERGIO_HOST": host, "SWARM_LOG_DIR": str(tmp_path)}
    with pytest.raises(SystemExit) as refused:
        load_settings(RuntimeSettings, environ)
    assert refused.value.code == 2
    assert capsys.readouterr().err.splitlines() == [  # one problem: one line
        f"bad setting: SWERGIO_HOST={host!r} is not allowed without SWARM_TOKEN: beyond loopback (127.0.0.0/8, ::1) "
        "the server admits only clients that present a shared secret (docs/hosts.md)"]
    assert load_settings(RuntimeSettings, {**environ, "SWARM_TOKEN": SECRET}).host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "localhost"])
def test_on_loopback_no_token_is_needed(tmp_path, host):
    assert load_settings(RuntimeSettings, {"SWERGIO_HOST": host, "SWARM_LOG_DIR": str(tmp_path)}).token == ""


def test_the_server_script_beyond_loopback_without_a_token_exits_2_in_one_line(tmp_path):
    """Refused by the settings check, before anything binds: no address beyond loopback is used."""
    env = {**os.environ, "SWERGIO_HOST": "10.213.0.1", "SWARM_LOG_DIR": str(tmp_path)}
    env.pop("SWARM_TOKEN", None)
    result = subprocess.run([sys.executable, str(ROOT / "01_server.py")], env=env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    problems = result.stderr.strip().splitlines()
    assert len(problems) == 1 and problems[0].startswith("bad setting: SWERGIO_HOST='10.213.0.1' is not allowed without "
                                                         "SWARM_TOKEN")
    assert "Traceback" not in result.stderr and not (tmp_path / "server.log").exists()


def test_the_secret_is_never_shown(tmp_path):
    too_short = SECRET[:7]
    with pytest.raises(SettingsError) as refused:
        SwarmSettings.from_env({"SWARM_TOKEN": too_short})
    assert refused.value.problems == ["SWARM_TOKEN=(not shown) is not allowed: empty or a text of at least 8 characters"]
    settings = SwarmSettings.from_env({"SWARM_TOKEN": SECRET})
    assert settings.token == SECRET and SECRET not in repr(settings)
    assert settings.to_env()["SWARM_TOKEN"] == SECRET  # what a launcher hands its children
    result = subprocess.run([sys.executable, str(ROOT / "06_control.py"), "--help"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env={**os.environ, "SWARM_TOKEN": SECRET})
    assert result.returncode == 0 and "--token VALUE" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_a_checkpoint_keeps_the_settings_but_not_the_secret(tmp_path):
    settings = SwarmSettings(models=1, token=SECRET)
    answer = {COMPONENT_ID: "model0-1", WEIGHTS: [0.5] * checkpoint.member_size(settings),
              HYPERPARAMETERS: {LEARNING_RATE: 0.002}}
    path = tmp_path / checkpoint.FILE_NAME
    checkpoint.save(path, [answer], settings, history=[])
    assert SECRET.encode() not in path.read_bytes()
    kept = checkpoint.load(path)["settings"]
    assert "SWARM_TOKEN" not in kept and kept["SWARM_MODELS"] == "1"


# --------------------------------------------------------------------------- a server with a secret, on loopback
def serving(caplog, token: str):
    """A SwarmServer with `token` on a free loopback port (in a thread), its handshake cut to 1 s,
    and client settings that present the secret; every message it passes on is logged (DEBUG),
    and at the end no log holds the secret."""
    swergio.server.print = log_server_line  # as the server script does (not undone: threads outlive the test)
    caplog.set_level(logging.DEBUG, logger="server")
    port = free_port()
    server = SwarmServer("127.0.0.1", port, FORMAT, HEADER_LENGTH, enable_logging=False, token=token)
    server.handshake_timeout = 1.0
    server.server.listen()  # listening before the thread starts: plain clients do not retry
    threading.Thread(target=server.start, daemon=True).start()
    yield SimpleNamespace(settings=SwarmSettings(port=port, token=SECRET), server=server, log=caplog)
    server.server.close()
    assert SECRET not in caplog.text


@pytest.fixture
def guarded_hub(caplog):
    yield from serving(caplog, SECRET)


@pytest.fixture(params=[SECRET, ""], ids=["server-with-the-secret", "server-without-one"])
def either_hub(caplog, request):
    yield from serving(caplog, request.param)


def joined(hub, name: str, room: str, timeout: float = 5.0) -> None:
    """Wait until the server has `name` in `room` (swergio does not acknowledge joins)."""
    deadline = time.monotonic() + timeout
    while name not in {hub.server.names.get(c) for c in list(hub.server.rooms.get(room, ()))}:
        assert time.monotonic() < deadline, f"{name} not in {room} after {timeout:g} s"
        time.sleep(0.01)


def received(client: SwarmClient, seconds: float) -> list[dict]:
    messages, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if (message := client.receive(timeout=left)) is not None:
            messages.append(message)
    return messages


def refusals(hub, port: int) -> list[str]:
    """The server's log lines refusing the connection from 127.0.0.1:`port`."""
    return [r.getMessage() for r in hub.log.records if f"refused the connection from 127.0.0.1:{port}:" in r.getMessage()]


def wait_for_refusal(hub, port: int, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while not (lines := refusals(hub, port)):
        assert time.monotonic() < deadline, f"no refusal of port {port} logged within {timeout:g} s:\n{hub.log.text}"
        time.sleep(0.02)
    return lines[0]


def test_clients_with_the_secret_talk_and_no_server_passes_it_on_or_logs_it(either_hub):
    listener = SwarmClient("listener", either_hub.settings)
    listener.join_room(ROOM)
    joined(either_hub, "listener", ROOM)  # and so in `_command`, which it joined first
    sender = SwarmClient("sender", either_hub.settings)  # its REGISTER reaches the listener in `_command`
    sender.send({"TO_ROOM": ROOM, "MARK": "no TYPE", "TOKEN": SECRET})  # malformed: logged and skipped
    sender.send({**custom_message(ROOM, {"MARK": 1}), "TOKEN": SECRET})
    messages = received(listener, 1.0)
    assert [m["MARK"] for m in messages if m.get("TO_ROOM") == ROOM] == [1]
    registers = [m for m in messages if m.get("TYPE") == "COMMAND/REGISTER" and m.get("NAME") == "sender"]
    assert registers and all("TOKEN" not in m and SECRET not in json.dumps(m) for m in messages), messages
    assert "skipped a message without a TYPE" in either_hub.log.text  # (and the fixture: without the secret)
    sender.close(), listener.close()


class Stranger(Client):
    """A plain swergio client that registers when the test says so, not while it is constructed."""
    def register(self) -> None:
        return None


class LateSocket(SwarmClient):
    """Our client, which hands its socket to the test as soon as it is connected."""
    def __init__(self, name, settings, sockets: list) -> None:
        self.sockets = sockets
        super().__init__(name, settings)

    def connect(self, server, port):
        sock = super().connect(server, port)
        self.sockets.append(sock)
        return sock


def test_a_plain_swergio_client_is_dropped_and_nothing_reaches_it_or_comes_from_it(guarded_hub):
    listener = SwarmClient("listener", guarded_hub.settings)
    listener.join_room(ROOM)
    joined(guarded_hub, "listener", ROOM)
    stranger = Stranger("stranger", "127.0.0.1", guarded_hub.settings.port)
    port = stranger.client.getsockname()[1]
    try:
        Client.register(stranger)  # REGISTER without a secret: the server may drop us before the JOINROOM that follows
        stranger.join_room(ROOM)
        stranger.send(custom_message(ROOM, {"MARK": "from the stranger"}))
    except OSError:
        pass  # already dropped
    listener.send(custom_message(ROOM, {"MARK": "to the room"}))  # the stranger asked to be in it
    assert "no TOKEN in its first message" in wait_for_refusal(guarded_hub, port)
    assert read_until_closed(stranger.client, 3.0) == (b"", True)
    assert not [m for m in received(listener, 1.0) if m.get("TO_ROOM") == ROOM], "the stranger's message was delivered"
    listener.close()


def test_a_wrong_secret_is_dropped_and_the_client_says_why(guarded_hub):
    listener = SwarmClient("listener", guarded_hub.settings)
    listener.join_room(ROOM)
    joined(guarded_hub, "listener", ROOM)
    # Whichever comes first, a send to the closed connection (its registration included) or the
    # wait for an answer, says why.
    sockets = []
    with pytest.raises(ConnectionClosed, match=r"before sending anything \(a server with SWARM_TOKEN"):
        wrong = LateSocket("wrong", guarded_hub.settings.replace(token="not-the-" + SECRET), sockets)
        wrong.send(custom_message(ROOM, {"MARK": "from the wrong one"}))
        received(wrong, 3.0)
    port = sockets[0].getsockname()[1]
    assert "a wrong TOKEN" in wait_for_refusal(guarded_hub, port)
    assert not [m for m in received(listener, 1.0) if m.get("TO_ROOM") == ROOM]
    listener.close()


@pytest.mark.parametrize("first", [b"", b"42        ", frame(b'{"TYPE": "COMMAND/REGISTER", "NAME": "x"}')[:20]],
                         ids=["nothing", "a header only", "half a message"])
def test_a_connection_that_does_not_complete_its_first_message_is_closed_after_the_handshake_timeout(guarded_hub,
                                                                                                    first):
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", guarded_hub.settings.port), timeout=5) as silent:
        silent.sendall(first)
        assert read_until_closed(silent, 5.0) == (b"", True)
        took = time.monotonic() - began
        assert "no first message within 1 s" in wait_for_refusal(guarded_hub, silent.getsockname()[1])
    assert 0.9 < took < 4.0, f"closed after {took:.1f} s"


def encode(message: dict) -> bytes:
    return frame(json.dumps(message).encode(FORMAT))


ABSENT = object()


@pytest.mark.parametrize("token, refusal", [(SECRET, None), (SECRET.upper(), "a wrong TOKEN"), (7, "a wrong TOKEN"),
                                            (None, "no TOKEN"), (ABSENT, "no TOKEN")],
                         ids=["right", "wrong-case", "a-number", "null", "absent"])
def test_a_raw_peer_receives_only_once_its_register_carried_the_secret(guarded_hub, token, refusal):
    """A peer speaking swergio's wire format (swarm_rl/wire.py) by hand sends only its REGISTER, then
    a message is sent to its name: admitted, it receives it; refused, the server closes the
    connection (in order: nothing sent to it could be lost in a reset) without a byte."""
    name = f"raw-{uuid.uuid4().hex[:6]}"
    sender = SwarmClient("sender", guarded_hub.settings)
    with socket.create_connection(("127.0.0.1", guarded_hub.settings.port), timeout=5) as raw:
        register = {"TYPE": "COMMAND/REGISTER", "NAME": name, **({} if token is ABSENT else {"TOKEN": token})}
        raw.sendall(encode(register))
        if refusal is None:
            deadline = time.monotonic() + 5
            while name not in guarded_hub.server.names.values():
                assert time.monotonic() < deadline, f"{name} not registered within 5 s"
                time.sleep(0.01)
        else:
            assert refusal in wait_for_refusal(guarded_hub, raw.getsockname()[1])
        sender.send({**custom_message(ROOM, {"MARK": "direct"}), "TO": name})
        data, closed = read_until_closed(raw, 1.0 if refusal is None else 3.0)
    if refusal is None:
        assert b'"MARK": "direct"' in data and not closed
    else:
        assert (data, closed) == (b"", True)
    sender.close()


def test_the_secret_may_come_with_any_first_message_and_is_not_passed_on(guarded_hub):
    listener = SwarmClient("listener", guarded_hub.settings)
    listener.join_room(ROOM)
    joined(guarded_hub, "listener", ROOM)
    with socket.create_connection(("127.0.0.1", guarded_hub.settings.port), timeout=5) as raw:
        raw.sendall(encode({**custom_message(ROOM, {"MARK": "raw"}), "TOKEN": SECRET}))
        delivered = [m for m in received(listener, 1.0) if m.get("TO_ROOM") == ROOM]
    assert [m["MARK"] for m in delivered] == ["raw"] and "TOKEN" not in delivered[0]
    listener.close()


def test_the_server_script_with_a_token_refuses_strangers_and_logs_no_secret(swarm_env):
    """01_server.py as a process, as every launched swarm runs it: SWARM_TOKEN reaches it from the
    launcher's settings, and its log names the refused peer but never the secret."""
    config = swarm_env.replace(token=SECRET, log_level="DEBUG")
    with server_process(config) as hub:  # its readiness probe is a SwarmClient, so it presents the secret
        listener = SwarmClient("listener", config)
        listener.join_room(ROOM)
        wait_for_log(hub, f"[CLIENT ADDED] listener to {ROOM}")
        with socket.create_connection((config.host, config.port), timeout=5) as stranger:
            stranger.sendall(encode({"TYPE": "COMMAND/REGISTER", "NAME": "stranger"}))
            port = stranger.getsockname()[1]
            wait_for_log(hub, f"refused the connection from 127.0.0.1:{port}: no TOKEN in its first message")
            listener.send({**custom_message(ROOM, {"MARK": 1}), "TO": "stranger"})
            assert read_until_closed(stranger, 5.0) == (b"", True)
        sender = SwarmClient("sender", config)
        sender.send(custom_message(ROOM, {"MARK": 2}))
        assert [m["MARK"] for m in received(listener, 1.0) if m.get("TO_ROOM") == ROOM] == [2]
        sender.close(), listener.close()
        log = wait_for_log(hub, "sender -> room")  # DEBUG: the message the server passed on
        assert "every connection must present SWARM_TOKEN" in log and "[REGISTER] stranger" not in log
        assert SECRET not in log


# --------------------------------------------------------------------------- network namespaces
NETWORK = "10.213.7"  # a /24 that exists only inside the test's namespaces
HOSTS = ["hub", "a", "b", "ctl"]  # the server and components; two models; two models; the control


class Namespaces:
    """Network namespaces as hosts, each joined by a veth pair to a bridge in a namespace of its
    own; and the processes started in them, each a python run by `ip netns exec` (which execs:
    the process's pid is the python's)."""

    def __init__(self, log_dir: Path) -> None:
        prefix = f"swt{os.getpid()}"
        self.names = {host: f"{prefix}-{host}" for host in HOSTS}
        self.bridge = f"{prefix}-br"
        self.addresses = {host: f"{NETWORK}.{i}" for i, host in enumerate(HOSTS, start=1)}
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen] = {}

    def create(self) -> None:
        ip("netns", "add", self.bridge)
        ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge, "link", "set", "br0", "up")
        for i, host in enumerate(HOSTS, start=1):
            ns = self.names[host]
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"port{i}", "netns", self.bridge)
            ip("-n", self.bridge, "link", "set", f"port{i}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.addresses[host]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")

    def remove(self) -> None:
        for ns in [*self.names.values(), self.bridge]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)

    def start(self, host: str, name: str, args: list[str], env: dict[str, str], **popen) -> subprocess.Popen:
        """`args` run by this interpreter in `host`'s namespace, its output in <log_dir>/<name>.out
        unless `popen` says otherwise."""
        with contextlib.ExitStack() as files:  # the child keeps its own copy of the file
            if "stdout" not in popen:
                popen.update(stdout=files.enter_context(open(self.log_dir / f"{name}.out", "wb")),
                             stderr=subprocess.STDOUT)
            process = subprocess.Popen(["ip", "netns", "exec", self.names[host], sys.executable, *args], cwd=ROOT,
                                       env={**env, NAME_VARIABLE: name}, stdin=subprocess.DEVNULL, **popen)
        self.processes[name] = process
        return process

    def host_of(self, name: str) -> str:
        """The namespace a process runs in, from its network namespace's inode."""
        inode = os.stat(f"/proc/{self.processes[name].pid}/ns/net").st_ino
        return next(h for h, ns in self.names.items() if os.stat(f"/run/netns/{ns}").st_ino == inode)

    def kill(self, *names: str) -> None:
        """SIGKILL every named process (all by default) by its pid, then wait for each."""
        chosen = [self.processes[name] for name in names or self.processes]
        for process in chosen:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in chosen:
            process.wait(timeout=10)


@pytest.fixture
def hosts(swarm_env):
    """Four namespaces as hosts; at the end every process started in them is killed and waited
    for, and the namespaces are removed, whatever happened."""
    if (reason := why_no_namespaces()) is not None:
        pytest.skip(reason)
    namespaces = Namespaces(swarm_env.log_dir)
    try:
        ip("netns", "add", namespaces.bridge)
    except RuntimeError as error:
        pytest.skip(f"cannot create a network namespace: {error}")
    ip("netns", "del", namespaces.bridge)
    try:
        namespaces.create()
        yield namespaces
    finally:
        namespaces.kill()
        namespaces.remove()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert not [ns for ns in [*namespaces.names.values(), namespaces.bridge] if ns in left.split()], left


def finish(process: subprocess.Popen, output: Output, timeout: float, what: str) -> str:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} still running after {timeout:g} s:\n{output.text()}")
    output.thread.join(timeout=10)
    return output.text()


def run_in(hosts: Namespaces, host: str, name: str, args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, Output]:
    process = hosts.start(host, name, args, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return process, Output(process)


def wait_for_file_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"{text!r} not in {path} within {timeout:g} s"
        time.sleep(0.1)


def swarm_environment(settings: SwarmSettings, hosts: Namespaces) -> dict[str, str]:
    """What every process of the swarm is started with: the server's address in the hub
    namespace, the secret, a small seeded swarm (a fresh one can solve in its first round, and the
    test counts two); and the test's pid, so that each exits if we die."""
    return {**os.environ, "SWERGIO_HOST": hosts.addresses["hub"], "SWERGIO_PORT": str(settings.port),
            "SWARM_TOKEN": SECRET, "SWARM_LOG_DIR": str(settings.log_dir), "SWARM_PRESET": "swarm",
            "SWARM_MODELS": "4", "SWARM_ENVS": "2", "SWARM_EPISODES": "2", "SWARM_EVAL_EPISODES": "2",
            "SWARM_ROUNDS": "2", "SWARM_MODEL_TIMEOUT": "10", "SWARM_START_TIMEOUT": "240",
            "SWARM_REPLY_TIMEOUT": "120", "SWARM_SEED": "0", PARENT_VARIABLE: str(os.getpid()), "PYTHONUNBUFFERED": "1"}


def test_in_a_namespace_the_server_refuses_its_address_without_a_token(swarm_env, hosts):
    env = {**swarm_environment(swarm_env, hosts), "SWARM_TOKEN": ""}
    server, output = run_in(hosts, "hub", "server", ["01_server.py"], env)
    text = finish(server, output, 120, "the server without a token")
    assert server.returncode == 2, text
    assert f"SWERGIO_HOST='{hosts.addresses['hub']}' is not allowed without SWARM_TOKEN" in text
    assert not (swarm_env.log_dir / "server.log").exists()


def test_a_swarm_across_four_namespaces(swarm_env, hosts):
    env = swarm_environment(swarm_env, hosts)
    log_dir = swarm_env.log_dir
    hosts.start("hub", "server", ["01_server.py"], env)
    wait_for_file_text(log_dir / "server.log", "every connection must present SWARM_TOKEN", 60)
    for script in ("03_aggregation.py", "04_environment.py", "05_evolution.py"):
        hosts.start("hub", script[3:-3], [script], env)
    models = {"model0": "a", "model1": "a", "model2": "b", "model3": "b"}
    for name, host in models.items():
        hosts.start(host, name, ["02_model.py"], env)

    # Two rounds, the first with an evolution step, driven by a control in a fourth namespace.
    control, output = run_in(hosts, "ctl", "control", ["06_control.py"], {**env, "SWARM_LAUNCH": "0"})
    text = finish(control, output, 600, "the control")
    assert control.returncode == 0, text
    assert "swarm ready: 4 models" in text and "ROUND 2/2" in text and "evolved (fitness spread" in text, text
    assert "solved after 2 rounds" in text and "done; the processes started by hand go on" in text
    assert {name: hosts.host_of(name) for name in models} == models
    for name in models:  # `ip netns exec` has become the model itself: its pid is what a kill must hit
        assert "02_model.py" in Path(f"/proc/{hosts.processes[name].pid}/cmdline").read_text(), name
    server_log = (log_dir / "server.log").read_text()
    for host in HOSTS:  # each namespace's processes reached the server from its own address
        assert f"connection from {hosts.addresses[host]}:" in server_log, host

    # A long run: meanwhile a stranger without the secret gets nothing, a friend with it does.
    control, output = run_in(hosts, "ctl", "control", ["06_control.py"],
                             {**env, "SWARM_LAUNCH": "0", "SWARM_EPISODES": "100000", "SWARM_ROUNDS": "1",
                              "SWARM_RESTARTS": "0"})  # no waiting for models to be started again by hand
    output.wait_for("ROUND 1", timeout=300)
    rooms = "observation,logits,action,control,ping,_command"
    peers = {"stranger": run_in(hosts, "ctl", "stranger", ["-m", "tests.peer", "plain", rooms, "4"],
                                {**env, "SWARM_TOKEN": ""}),
             "friend": run_in(hosts, "a", "friend", ["-m", "tests.peer", "swarm", "observation", "4"], env)}
    got = {name: json.loads(finish(*peer, 60, name).strip().splitlines()[-1]) for name, peer in peers.items()}
    assert got["stranger"] == {"bytes": 0, "closed": True}, got
    assert got["friend"]["messages"] > 0 and not got["friend"]["closed"], got
    assert f"refused the connection from {hosts.addresses['ctl']}:" in (log_dir / "server.log").read_text()

    # The models of namespace b die mid-run: the run fails, naming the models that did not answer
    # the step it gave up (both, or one if the other had answered that step before it died), and
    # only those; the server's log says from which address they went.
    killed_at = time.monotonic()
    hosts.kill("model2", "model3")
    text = finish(control, output, 120, "the control after models died")
    took = time.monotonic() - killed_at
    assert control.returncode != 0, text
    error = next((line for line in text.splitlines() if "aggregation: no LOGITS within 10 s from " in line), None)
    assert error is not None, text
    missing = re.findall(r"\b(model\d+)-[0-9a-f]+", error)
    assert missing and {models[name] for name in missing} == {"b"}, error
    gone = re.findall(r" model \(([\d.]+):\d+\) disconnected$", (log_dir / "server.log").read_text(), re.MULTILINE)
    assert gone == [hosts.addresses["b"]] * 2, gone
    print(f"reported {took:.1f} s after the kill: {', '.join(missing)} of namespace {hosts.names['b']}: {error}")

    for path in log_dir.rglob("*"):  # the logs, the outputs, the checkpoint, the results, the records
        assert path.is_dir() or SECRET.encode() not in path.read_bytes(), path
