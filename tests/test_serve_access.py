"""fusar-serve's start and its door: a bad or busy port is one line before the model loads, an API key is checked as
OpenAI's bearer token, a server open to the network without one says so, and Ctrl-C exits 130."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from test_serve import Server, checkpoint, openai  # noqa: F401

FUSAR_SERVE = str(Path(sys.executable).with_name("fusar-serve"))


def test_a_port_out_of_range_or_in_use_is_one_line_before_the_model_loads(checkpoint):  # noqa: F811
    with socket.create_server(("127.0.0.1", 0)) as busy:
        for port, message in (("70000", "--port 70000: expected a port from 0 to 65535"),
                              (str(busy.getsockname()[1]), "cannot listen there (Address already in use)")):
            result = subprocess.run([FUSAR_SERVE, str(checkpoint[0]), "--port", port], capture_output=True, text=True,
                                    timeout=120)
            assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
            assert result.stdout == ""  # no "serving on ..." line, no weights loaded


def test_an_api_key_is_required_as_a_bearer_token_on_the_api_only(checkpoint):  # noqa: F811
    server = Server(checkpoint[0], "--api-key", "s3cret")
    try:
        wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="guess", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="Incorrect API key provided"):
            wrong.chat.completions.create(model="fusar-tiny", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        assert httpx.get(f"{server.url}/v1/models").status_code == 401  # no key at all
        right = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret", max_retries=0)
        assert right.chat.completions.create(model="fusar-tiny", max_tokens=2,
                                             messages=[{"role": "user", "content": "hi"}]).choices
        assert httpx.get(f"{server.url}/health").status_code == 200  # for load balancers
    finally:
        log = server.stop()
    assert "WARNING" not in log


def test_listening_beyond_loopback_without_a_key_is_said_loudly_and_ctrl_c_exits_130(checkpoint):  # noqa: F811
    server = Server(checkpoint[0], "--host", "0.0.0.0")
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=60) == 130
    assert "WARNING: listening on 0.0.0.0 without --api-key" in server.process.stderr.read()


def test_the_soak_benchmark_runs_its_quick_mode():
    """bench_serve_soak.py fills the README's soak table; `--quick` runs the same phases for 3 s each."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    result = subprocess.run([sys.executable, "bench_serve_soak.py", "--quick"], cwd=folder, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| alone") or line.startswith("| beside")]
    assert len(rows) == 2 and all(row.split(" | ")[2] == "0" for row in rows), result.stdout  # no polite errors
    assert "413" in rows[1] and "400" in rows[1] and "500" not in rows[1], rows[1]
    assert "p99 beside hostile clients / alone:" in result.stdout


def test_a_hub_id_the_hub_cannot_be_reached_for_is_one_line_at_once(tmp_path):
    """Offline, huggingface_hub retries each file five times (~50 s) before its error; fusar-serve asks once."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed on leaving: nobody listens there, the Hub is unreachable
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_CACHE": str(tmp_path),
           "HF_HUB_OFFLINE": "0"}
    start = time.monotonic()
    result = subprocess.run([FUSAR_SERVE, "someone/model", "--port", "0"], capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "someone/model: cannot reach the Hub" in result.stderr and time.monotonic() - start < 20


def test_an_api_fuzzer_reading_the_servers_own_schema_finds_no_server_error(checkpoint, tmp_path):  # noqa: F811
    """schemathesis (valid and invalid bodies from GET /openapi.json, a fixed seed, a few hundred cases): no 5xx, and
    the server answers an ordinary request after. Media URLs stay offline: only a host that cannot exist is allowed."""
    server = Server(checkpoint[0], "--max-tokens", "4", "--allowed-media-domains", "images.invalid",
                    "--api-key", "fuzz")
    try:
        schema = httpx.get(f"{server.url}/openapi.json").json()
        body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == ["messages"] and body["properties"]["max_tokens"]["maximum"] == 4
        fuzz = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "run", f"{server.url}/openapi.json", "--no-color",
             "--checks", "not_a_server_error", "--max-examples", "25", "--seed", "0", "--generation-database", "none",
             "--header", "Authorization: Bearer fuzz", "--report-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert fuzz.returncode == 0 and " passed" in fuzz.stdout and "failed" not in fuzz.stdout, fuzz.stdout[-3000:]
        assert server.client.with_options(api_key="fuzz").chat.completions.create(
            model="fusar-tiny", max_tokens=2, messages=[{"role": "user", "content": "hi"}]).choices
    finally:
        log = server.stop()
    assert "Traceback" not in log and "request failed" not in log, log[-3000:]
