"""CURVE between hosts: keys on disk, who gets in, and what an eavesdropper on the wire sees.

The end-to-end tests run `receive` and `send` as separate processes with key files made by
`keygen`; the eavesdropper is a TCP forwarder between them that records every byte.
"""
from __future__ import annotations

import filecmp
import socket
import stat
import threading
from pathlib import Path

import pytest
import zmq

from engine import AuthenticationFailed, Receiver, Sender, TransferSettings, UsageError
from workers.config import WorkerConfig
from engine.tools.samples import write_sample
from engine.security import (ClientKeys, connect_checked, ephemeral_keys, load_client_keys,
                             load_server_keys, write_key_pair)
from tcp_proxy import free_port_run, receiver_behind_proxy
from test_cli import assert_usage_error, last_json, multifd, start_receiver

MiB = 1 << 20
MARKER = b"MULTIFD-PLAINTEXT-MARKER-7f3a"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Key files as keygen makes them: a server pair, an allowed and a stranger's client
    pair, and the allow folder holding the allowed client's public key."""
    folder = tmp_path / "keys"
    for name in ("server", "client", "stranger"):
        write_key_pair(folder / name, name)
    allow = folder / "allow"
    allow.mkdir()
    (allow / "client.key").write_bytes((folder / "client" / "client.key").read_bytes())
    paths = {"allow": allow}
    for name in ("server", "client", "stranger"):
        paths[name] = folder / name / f"{name}.key"
        paths[f"{name}_secret"] = folder / name / f"{name}.key_secret"
    return paths


def key_strings(keys: dict[str, Path]) -> list[str]:
    """Every key in the fixture's files, as the 40-character text they hold."""
    out = []
    for name in ("server", "client", "stranger"):
        public, secret = zmq.auth.load_certificate(keys[f"{name}_secret"])
        out += [public.decode(), secret.decode()]
    return out


def receiver_args(keys: dict[str, Path]) -> list[str]:
    return ["--key", str(keys["server_secret"]), "--allow", str(keys["allow"])]


def sender_args(keys: dict[str, Path], client: str = "client",
                server: str = "server") -> list[str]:
    return ["--server-key", str(keys[server]), "--key", str(keys[f"{client}_secret"])]


# -- key files --------------------------------------------------------------------------------

def test_keygen_writes_a_public_certificate_and_an_owner_only_secret(tmp_path):
    public, secret = write_key_pair(tmp_path / "new" / "folder", "host-a")
    assert public.name == "host-a.key" and secret.name == "host-a.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert not list(public.parent.glob(".*")), "temporary files left behind"
    loaded_public, loaded_secret = zmq.auth.load_certificate(secret)
    assert zmq.auth.load_certificate(public) == (loaded_public, None)
    assert zmq.curve_public(loaded_secret) == loaded_public


def test_keygen_command_names_the_files_and_shows_no_key(tmp_path):
    run = multifd("keygen", str(tmp_path / "k"), "--name", "alice")
    assert run.returncode == 0, run.stderr
    public, secret = tmp_path / "k" / "alice.key", tmp_path / "k" / "alice.key_secret"
    assert str(public) in run.stderr and str(secret) in run.stderr
    keys = zmq.auth.load_certificate(secret)
    assert not any(key.decode() in run.stdout + run.stderr for key in keys)


def test_keygen_never_overwrites_a_key(tmp_path):
    write_key_pair(tmp_path, "a")
    before = (tmp_path / "a.key_secret").read_bytes()
    with pytest.raises(UsageError, match="exists"):
        write_key_pair(tmp_path, "a")
    assert (tmp_path / "a.key_secret").read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_secret_key_open_to_other_users_is_refused(keys, mode):
    keys["server_secret"].chmod(mode)
    with pytest.raises(UsageError, match=f"open to other users \\(mode 0{mode:o}\\)"):
        load_server_keys(keys["server_secret"], keys["allow"])


def test_loaded_keys_are_the_ones_keygen_wrote(keys):
    server = load_server_keys(keys["server_secret"], keys["allow"])
    client = load_client_keys(keys["client_secret"], keys["server"])
    assert client.server == server.public
    assert server.allowed == {client.public}


@pytest.mark.parametrize("secret, public, message", [
    ("server", "server", "holds no secret key"),  # a public file given as the secret
    ("client_secret", "server_secret", "holds a secret key"),  # a secret given as --server-key
    ("missing", "server", "no such file"),
    ("garbage", "server", "not a ZeroMQ certificate"),
    ("client_secret", "garbage", "not a ZeroMQ certificate"),
    ("swapped", "server", "does not belong to the secret key"),
])
def test_wrong_key_files_are_refused_with_a_reason(keys, tmp_path, secret, public, message):
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"public-key\nsecret-key = not a key at all\n")
    garbage.chmod(0o600)
    swapped = tmp_path / "swapped"  # the client's secret under the server's public key
    text = keys["client_secret"].read_text()
    other = zmq.auth.load_certificate(keys["server"])[0].decode()
    mine = zmq.auth.load_certificate(keys["client"])[0].decode()
    swapped.write_text(text.replace(mine, other))
    swapped.chmod(0o600)
    files = {**keys, "garbage": garbage, "swapped": swapped, "missing": tmp_path / "none"}
    with pytest.raises(UsageError, match=message) as caught:
        load_client_keys(files[secret], files[public])
    assert not any(k in str(caught.value) for k in key_strings(keys)), "a key was shown"


def test_an_allow_folder_without_public_keys_is_refused(keys, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no public key files"):
        load_server_keys(keys["server_secret"], tmp_path / "empty")
    with pytest.raises(UsageError, match="not a folder"):
        load_server_keys(keys["server_secret"], tmp_path / "nothing")


def test_secret_keys_never_show_in_a_repr():
    server, client = ephemeral_keys()
    config = WorkerConfig(side="source", channel=0, control="", coordinator_pid=1,
                          session=b"", settings=TransferSettings(), image_path="",
                          image_size=0, handlers=(), keys=client)
    for text in (repr(server), repr(client), repr(config)):
        assert server.secret.decode() not in text and client.secret.decode() not in text
    assert client.public.decode() in repr(client)


# -- the command line -------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["receive", "{dst}", "--listen", "tcp://0.0.0.0:0"], "refusing to listen on"),
    (["receive", "{dst}", "--listen", "tcp://example.com:7000"], "refusing to listen on"),
    (["receive", "{dst}", "--listen", "tcp://127.0.0.1:0", "--key", "{server_secret}"],
     "--key and --allow go together"),
    (["receive", "{dst}", "--listen", "tcp://127.0.0.1:0", "--key", "{server_secret}",
      "--allow", "{allow}", "--insecure"], "--insecure contradicts"),
    (["receive", "{dst}", "--listen", "tcp://127.0.0.1:0", "--data-ports", "70000"],
     "the first data port must be from 1 to 65472"),
    (["send", "{src}", "--to", "tcp://127.0.0.1:9", "--key", "{client_secret}"],
     "--server-key and --key go together"),
    (["send", "{src}", "--to", "tcp://127.0.0.1:9", "--key", "{client_open}",
      "--server-key", "{server}"], "open to other users"),
])
def test_unsafe_or_incomplete_security_options_are_usage_errors(keys, image, tmp_path, args,
                                                                 message):
    open_secret = tmp_path / "open.key_secret"
    open_secret.write_bytes(keys["client_secret"].read_bytes())
    open_secret.chmod(0o644)
    names = {**keys, "src": image(8192), "dst": tmp_path / "dst", "client_open": open_secret}
    assert_usage_error(multifd(*[a.format(**names) for a in args]), message)
    assert not (tmp_path / "dst").exists()


def test_insecure_lets_a_receiver_past_the_loopback_check(tmp_path):
    # 192.0.2.1 (TEST-NET-1) is no address of ours: it gets past the check, then cannot bind.
    run = multifd("receive", str(tmp_path / "dst"), "--listen", "tcp://192.0.2.1:0",
                  "--insecure")
    assert_usage_error(run, "cannot listen on tcp://192.0.2.1:0")


def test_an_allowed_sender_gets_in_after_a_stranger_was_refused(keys, image, tmp_path):
    src, dst = image(6 * MiB), tmp_path / "dst"
    receiver, endpoint = start_receiver(dst, *receiver_args(keys))
    try:
        stranger = multifd("send", str(src), "--to", endpoint, *sender_args(keys, "stranger"))
        assert stranger.returncode == 1
        assert "refused our key" in stranger.stderr and "Traceback" not in stranger.stderr
        assert receiver.poll() is None, "the receiver gave up after a refused sender"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["keys", "src"], "wrote something"
        allowed = multifd("send", str(src), "--to", endpoint, *sender_args(keys), "--json",
                          "--compress", "zstd:1", "--channels", "3")
        out, err = receiver.communicate(timeout=60)
    finally:
        receiver.kill()
    assert allowed.returncode == 0, allowed.stderr
    assert receiver.returncode == 0, err
    assert sum("refused a sender whose key is not allowed" in line
               for line in err.splitlines()) == 1, err
    assert last_json(allowed.stdout)["digest"] == last_json(out)["digest"]
    assert filecmp.cmp(src, dst, shallow=False)
    everything = stranger.stdout + stranger.stderr + allowed.stdout + allowed.stderr + out + err
    assert not any(key in everything for key in key_strings(keys)), "a key was logged"


def test_a_sender_with_the_wrong_server_key_fails_clearly(keys, image, tmp_path):
    receiver, endpoint = start_receiver(tmp_path / "dst", *receiver_args(keys))
    try:
        wrong = multifd("send", str(image(MiB)), "--to", endpoint,
                        *sender_args(keys, server="stranger"))
        plain = multifd("send", str(image(MiB)), "--to", endpoint)
        assert receiver.poll() is None
    finally:
        receiver.kill()
        receiver.communicate()
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines() == [
        f"multifd: connecting to {endpoint}",
        f"multifd: error: encrypted handshake with {endpoint} failed: the receiver's key is "
        "not the one given as --server-key (or the receiver runs without keys)"]
    assert plain.returncode == 1
    assert "requires encryption: give --server-key and --key" in plain.stderr
    assert not (tmp_path / "dst").exists() and not (tmp_path / "dst.partial").exists()


def test_migrate_with_curve_copies_the_image_exactly(image, tmp_path):
    src = image(3 * MiB)
    run = multifd("migrate", str(src), str(tmp_path / "dst"), "--curve", "--json")
    assert run.returncode == 0, run.stderr
    assert last_json(run.stdout)["ok"] is True
    assert filecmp.cmp(src, tmp_path / "dst", shallow=False)


def test_data_ports_admit_only_allowed_keys(image, tmp_path):
    """A stranger who dials a data port directly is refused there too (ZAP in each worker)."""
    server, client = ephemeral_keys()
    stranger = ClientKeys(*zmq.curve_keypair(), server=server.public)
    base = free_port_run(2, ("127.0.0.1",))
    outcome: dict = {}
    with Receiver(str(tmp_path / "dst"), keys=server, data_ports=base) as receiver:
        thread = threading.Thread(target=lambda: outcome.update(r=receiver.run(timeout_s=60)),
                                  daemon=True)
        thread.start()
        with Sender(str(image(MiB)), str(receiver.endpoint), TransferSettings(channels=2),
                    keys=client) as sender:
            context = zmq.Context()
            try:
                for port in (base, base + 1):
                    for probe_keys, error in ((stranger, "refused our key"),
                                              (None, "requires encryption")):
                        probe = context.socket(zmq.DEALER)
                        if probe_keys:
                            probe_keys.configure(probe)
                        with pytest.raises(AuthenticationFailed, match=error):
                            connect_checked(probe, f"tcp://127.0.0.1:{port}", probe_keys, 10)
                        probe.close(linger=0)
            finally:
                context.destroy(linger=0)
            sender.send_range()
            result = sender.finish()
        thread.join(30)
    assert result.ok and outcome["r"].ok
    assert filecmp.cmp(tmp_path / "src", tmp_path / "dst", shallow=False)


def test_a_pinned_data_port_in_use_stops_both_ends_with_its_name(image, tmp_path):
    base = free_port_run(2, ("127.0.0.1",))
    squatter = socket.create_server(("127.0.0.1", base + 1))
    try:
        receiver, endpoint = start_receiver(tmp_path / "dst", "--data-ports", str(base))
        sent = multifd("send", str(image(MiB)), "--to", endpoint, "--channels", "2")
        out, err = receiver.communicate(timeout=60)
    finally:
        squatter.close()
    message = f"channel 1 cannot listen on tcp://127.0.0.1:{base + 1}"
    assert receiver.returncode == 2 and message in err and "Traceback" not in err
    assert sent.returncode == 1 and message in sent.stderr
    assert not (tmp_path / "dst").exists()


# -- what an eavesdropper sees ----------------------------------------------------------------

@pytest.mark.parametrize("curve", [True, False], ids=["curve", "plain"])
def test_an_eavesdropper_between_the_hosts_sees_no_plaintext(keys, tmp_path, curve,
                                                              second_loopback_address):
    src = tmp_path / "src"
    write_sample(src, 4 * MiB, kind="mixed", seed=3)
    with open(src, "r+b") as f:
        for offset in range(0, 4 * MiB, 64 << 10):
            f.seek(offset + 100)
            f.write(MARKER * 3)
    channels = 2
    with receiver_behind_proxy(tmp_path / "dst", second_loopback_address, channels,
                               *(receiver_args(keys) if curve else [])) as (
            receiver, proxy, endpoint, data_ports):
        sent = multifd("send", str(src), "--to", endpoint, "--channels", str(channels),
                       "--json", *(sender_args(keys) if curve else []))
        out, err = receiver.communicate(timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert receiver.returncode == 0, err
    assert filecmp.cmp(src, tmp_path / "dst", shallow=False)
    payload = last_json(sent.stdout)["normal_pages"] * 4096
    data_seen = sum(len(proxy.recorded[port]) for port in data_ports)
    assert data_seen >= payload, "the data channels did not go through the proxy"
    control = int(endpoint.rsplit(":", 1)[1])
    assert len(proxy.recorded[control]) > 0
    seen = b"".join(proxy.recorded.values())
    assert (MARKER in seen) is (not curve)
