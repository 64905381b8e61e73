"""fusar-serve as a client meets it: the server started as a subprocess on 127.0.0.1 with a tiny checkpoint and a
local AlphaEarth release replica, called with the official openai client (and raw HTTP for what a client must
not be able to send). Every answer is compared with `generate` in this process on the same inputs."""

from __future__ import annotations

import base64
import io
import queue
import socket
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

from conftest import build, random_anchors, random_image
from dataset_scripts.alphaearth import sample_anchors
from dataset_scripts.alphaearth_cloud import open_source
from dataset_scripts.sar_reader import read_sar_scene
from range_server import serve
from test_alphaearth_cloud import LEFT, TOP, UTM, release  # noqa: F401  (the release replica fixture)
from test_readme import healthy

openai = pytest.importorskip("openai", reason="the openai client comes with the dev extra")
QUESTION = "How many ships are in this SAR image?"
TOKENS = 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, checkpoint: Path, *options: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "serving.cli", str(checkpoint), "--port", str(self.port),
                                         *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while not healthy(f"{self.url}/health"):
            if self.process.poll() is not None:
                raise RuntimeError(f"fusar-serve exited: {self.process.stderr.read()[-2000:]}")
            if time.time() > deadline:
                raise RuntimeError("fusar-serve did not answer /health within 300 s")
            time.sleep(0.3)
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=120)

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(timeout=30)
        return self.process.stderr.read()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def image_message(url: str, question: str = QUESTION, **part) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}, **part},
                                         {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def checkpoint(tokenizers, tmp_path_factory):
    model, processor = build(tokenizers, "qwen2_5_vl", modulate=True)  # anchors change the answers
    folder = tmp_path_factory.mktemp("serve") / "fusar-tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


@pytest.fixture(scope="module")
def scene(release, tmp_path_factory):  # noqa: F811
    """A float32 backscatter GeoTIFF (linear power, dated 2021) over the replica's first tile."""
    folder = tmp_path_factory.mktemp("images")
    path = folder / "s1_20210614.tif"
    power = np.random.default_rng(3).gamma(1.0, 0.05, (1, 96, 96)).astype(np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=96, height=96, count=1, dtype="float32", crs=UTM,
                       transform=from_origin(LEFT + 500, TOP - 500, 20, 20)) as dataset:
        dataset.write(power)
        dataset.update_tags(ACQUISITION_START_TIME="2021-06-14T06:00:00")
    return path


@pytest.fixture(scope="module")
def server(checkpoint, release, scene):  # noqa: F811
    # --allow-private-media: the tests' image server is on loopback (test_serve_fetch.py attacks the default)
    running = Server(checkpoint[0], "--alphaearth", str(release), "--image-root", str(scene.parent),
                     "--alphaearth-cache", str(scene.parent / "cache"), "--anchor-timeout", "60", "--allow-private-media")
    yield running
    running.stop()


def generated(model, processor, messages, images=(), anchors=None, years=None) -> str:
    """The reference: greedy `generate` in this process, one request alone."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    given = {"anchors": anchors, "acquisition_years": years} if anchors is not None else {}
    inputs = processor(images=list(images) or None, text=[text], return_tensors="pt", **given)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=TOKENS, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def template_messages(question: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def test_a_geotiff_gets_its_anchors_from_the_release_and_the_answer_of_generate_with_them(server, checkpoint, scene, release):  # noqa: F811
    _, model, processor = checkpoint
    reply = server.client.chat.completions.create(model="fusar-tiny", max_tokens=TOKENS,
                                                  messages=image_message(data_url(scene.read_bytes(), "image/tiff")))
    assert reply.model_extra["anchors"] == [{"image": 0, "source": "alphaearth", "count": 64, "years": [2021]}]
    sar = read_sar_scene(scene)
    anchors = sample_anchors(open_source(str(release), cache_dir=scene.parent / "test-cache"), sar.footprint, 2021)
    assert reply.choices[0].message.content == generated(model, processor, template_messages(), [sar.image], [anchors], [2021])
    assert reply.usage.completion_tokens == TOKENS and reply.choices[0].finish_reason == "length"
    # The same file named by path under the server's image root, or fetched over http, gives the same answer.
    with serve(scene.parent) as files:
        for url in (scene.name, f"file://{scene.name}", f"{files.url}/{scene.name}"):
            again = server.client.chat.completions.create(model="fusar-tiny", max_tokens=TOKENS, messages=image_message(url))
            assert again.choices[0].message.content == reply.choices[0].message.content, url


def test_explicit_anchors_as_an_npz_or_as_values_give_the_answer_of_generate_with_them(server, checkpoint):
    _, model, processor = checkpoint
    image, anchors = random_image(5), random_anchors(5, 9)
    buffer = io.BytesIO()
    np.savez(buffer, values=anchors["values"], positions=anchors["positions"])
    npz = {"npz": base64.b64encode(buffer.getvalue()).decode()}
    as_npz = server.client.chat.completions.create(model="fusar-tiny", max_tokens=TOKENS,
                                                   messages=image_message(data_url(png(image)), anchors=npz))
    values = {"values": anchors["values"].tolist(), "positions": anchors["positions"].tolist()}
    as_values = server.client.chat.completions.create(model="fusar-tiny", max_tokens=TOKENS, extra_body={"anchors": [values]},
                                                      messages=image_message(data_url(png(image))))
    expected = generated(model, processor, template_messages(), [image], [anchors])
    assert as_npz.choices[0].message.content == as_values.choices[0].message.content == expected
    assert as_npz.model_extra["anchors"] == [{"image": 0, "source": "request", "count": 9, "years": []}]


def test_no_anchors_is_exactly_the_base_model(server, checkpoint, scene):
    _, model, processor = checkpoint
    for part in ({"anchors": "none"}, {}):  # asked for none; a PNG without georeference has none to find
        image = random_image(6)
        reply = server.client.chat.completions.create(model="fusar-tiny", max_tokens=TOKENS,
                                                      messages=image_message(data_url(png(image)), **part))
        base = generated(model.vlm, processor.base_processor, template_messages(), [image])
        assert reply.choices[0].message.content == base
        assert reply.model_extra["anchors"][0]["source"] == "none" and reply.model_extra["anchors"][0]["note"]


def test_streaming_gives_the_same_text_in_pieces_then_the_reason_and_usage(server):
    messages = image_message(data_url(png(random_image(7))))
    whole = server.client.chat.completions.create(model="fusar-tiny", max_tokens=TOKENS, messages=messages)
    chunks = list(server.client.chat.completions.create(model="fusar-tiny", max_tokens=TOKENS, messages=messages,
                                                        stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].model_extra["anchors"][0]["source"] == "none"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == TOKENS and not chunks[-1].choices


def test_eight_concurrent_clients_get_the_answers_of_eight_sequential_ones_in_fewer_batches(server):
    requests = [dict(messages=image_message(data_url(png(random_image(10 + i))), f"Question {i}: ships?"),
                     max_tokens=TOKENS - i % 3) for i in range(8)]
    requests[3]["extra_body"] = {"anchors": [{key: value.tolist() for key, value in random_anchors(3, 4).items()}]}
    requests[5]["messages"] = [{"role": "user", "content": "no image, just text"}]

    def ask(request):
        return server.client.chat.completions.create(model="fusar-tiny", **request).choices[0].message.content

    sequential = [ask(request) for request in requests]
    before = httpx.get(f"{server.url}/health").json()
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(ask, requests))
    after = httpx.get(f"{server.url}/health").json()
    assert concurrent == sequential
    assert after["requests"] - before["requests"] == 8 and after["batches"] - before["batches"] < 8  # batched


def test_requests_read_one_after_another_join_one_batch_while_they_keep_arriving(checkpoint):
    """Twelve requests being read at once, finishing 0.1 s apart (1.1 s in all): one batch, with a `batch_wait` of
    0.5 s (margin for a loaded machine). A fixed wait cut the first batch short (32 requests sent at once formed
    batches of 10, 32 and 22 in bench_serve.py at 0.1 s). All twelve are being read before the first is submitted:
    on a loaded machine the last threads once started after the first request had gone (two batches, rightly)."""
    from serving.engine import Engine, Job, Sampling

    _, model, processor = checkpoint
    engine = Engine(model, processor, batch_wait=0.5)
    answers, reading = queue.Queue(), threading.Barrier(12)

    def request(i: int) -> None:
        with engine.preparation():
            reading.wait(timeout=60)
            time.sleep(0.1 * i)
            inputs = dict(processor(text=[f"question {i}"], return_tensors="pt"))
            engine.submit(Job(inputs, Sampling(), 2, lambda event: event[0] != "delta" and answers.put(event)))

    try:
        for i in range(12):
            threading.Thread(target=request, args=(i,)).start()
        assert [answers.get(timeout=120)[0] for _ in range(12)] == ["done"] * 12
        assert (engine.batches, engine.rows) == (1, 12)
    finally:
        engine.close()


def test_a_text_only_second_turn_after_a_batch_of_two_continues_from_its_cache(checkpoint):
    """Qwen-VL keeps the last batch's rope offsets (one per row) on the model: a conversation continued alone after
    a batch of two failed with a size mismatch until the continuation set its own."""
    from serving.engine import Engine, Job, Sampling

    _, model, processor = checkpoint
    engine, answers = Engine(model, processor), queue.Queue()

    def ask(conversation: list[dict]) -> Job:
        text = processor.apply_chat_template(conversation, add_generation_prompt=True)
        job = Job(dict(processor(text=[text], return_tensors="pt")), Sampling(), TOKENS,
                  lambda event: answers.put((job, event)))
        engine.submit(job)
        return job

    def answer() -> tuple[Job, str]:
        text = []
        while (event := answers.get(timeout=120))[1][0] == "delta":
            text.append(event[1][1])
        assert event[1][0] == "done", event
        return event[0], "".join(text)

    first = [[{"role": "user", "content": [{"type": "text", "text": f"Name {n} harbours."}]}] for n in ("two", "ten")]
    try:
        with engine.preparation():  # both are read before the batch starts
            jobs = [ask(conversation) for conversation in first]
        replies = {id(job): text for job, text in (answer() for _ in jobs)}
        assert (engine.batches, engine.rows) == (1, 2)
        conversation = first[0] + [{"role": "assistant", "content": [{"type": "text", "text": replies[id(jobs[0])]}]},
                                   {"role": "user", "content": [{"type": "text", "text": "And the largest?"}]}]
        job, text = ask(conversation), answer()[1]
        assert job.cached_tokens > 0 and text == generated(model.vlm, processor.base_processor, conversation)
    finally:
        engine.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="niceness per thread is Linux's")
def test_requests_are_read_on_threads_that_yield_the_cpu_to_the_model(server):
    """The reading threads run at niceness 10, the rest of the server (the model's threads) at 0. (Python 3.11
    names no OS thread, so the threads are told apart by their niceness alone.)"""
    server.client.chat.completions.create(model="fusar-tiny", max_tokens=2, messages=image_message(
        data_url(png(random_image(3)))))
    niceness = {int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
                for task in Path(f"/proc/{server.process.pid}/task").iterdir()}
    assert niceness == {0, 10}


def test_a_second_turn_continues_from_the_first_turns_cache(server, checkpoint):
    _, model, processor = checkpoint
    image = random_image(8)
    messages = image_message(data_url(png(image)))
    first = server.client.chat.completions.create(model="fusar-tiny", max_tokens=TOKENS, messages=messages)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    answer = first.choices[0].message.content
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And how many boats?"}]
    second = server.client.chat.completions.create(model="fusar-tiny", max_tokens=TOKENS, messages=messages)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    conversation = template_messages() + [{"role": "assistant", "content": [{"type": "text", "text": answer}]},
                                          {"role": "user", "content": [{"type": "text", "text": "And how many boats?"}]}]
    assert second.choices[0].message.content == generated(model.vlm, processor.base_processor, conversation, [image])


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    return response.status_code, body["error"]["message"]


def test_bad_requests_get_openai_errors_that_name_the_field_and_no_server_path(server, scene, tmp_path):
    post = lambda body: httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)  # noqa: E731
    cases = {
        "not base64": (image_message("data:image/png;base64,@@@"), 400, "content[0].image_url: the data: URL is not valid base64"),
        "not an image": (image_message(data_url(b"plain text")), 400, "not a readable image"),
        "outside the root": (image_message(str(scene.parent.parent / "x.png")), 400, "not a file under the server's image root"),
        "escaping the root": (image_message("../" * 8 + "etc/passwd"), 400, "not a file under the server's image root"),
        "bad anchors": (image_message(data_url(png(random_image(0))), anchors={"values": [[0.5] * 3], "positions": [[0.5, 0.5]]}),
                        400, "content[0].anchors: anchor vectors have 3 dimensions, expected anchor_dim=64"),
        "anchors of no form": (image_message(data_url(png(random_image(0))), anchors={"file": "/etc/passwd"}), 400, "expected \"none\""),
    }
    for name, (messages, status, message) in cases.items():
        got_status, got = error_of(post({"model": "fusar-tiny", "messages": messages}))
        assert (got_status, message in got) == (status, True), (name, got)
        assert str(scene.parent) not in got and "Traceback" not in got
    assert error_of(post({"model": "other", "messages": [{"role": "user", "content": "hi"}]}))[0] == 404
    assert error_of(post({"messages": [{"role": "user", "content": "hi"}], "n": 2}))[0] == 400
    assert error_of(post({"messages": [{"role": "user", "content": "hi"}], "frobnicate": 1})) == \
        (400, "unrecognized request argument: frobnicate")
    assert error_of(httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json", timeout=10))[0] == 400
    assert error_of(httpx.get(f"{server.url}/v1/nothing-here", timeout=10))[0] == 404
    with pytest.raises(openai.NotFoundError):
        server.client.models.retrieve("other")
    # Over the limits: a PNG whose header claims 200,000 x 200,000 pixels, and a body declared larger than allowed.
    bomb = png(Image.new("L", (1, 1)))
    header = b"IHDR" + (200_000).to_bytes(4, "big") * 2 + bomb[24:29]
    bomb = bomb[:12] + header + zlib.crc32(header).to_bytes(4, "big") + bomb[33:]
    assert error_of(post({"messages": image_message(data_url(bomb))}))[0] == 413
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 900000000\r\n\r\n{")
        assert raw.recv(4096).split(b"\r\n")[0].endswith(b"413 Request Entity Too Large")
    # The server is still there, answering.
    assert server.client.chat.completions.create(model="fusar-tiny", max_tokens=2, messages=[{"role": "user", "content": "hi"}])


def test_a_stalled_alphaearth_source_gives_an_answer_without_anchors_that_says_so(checkpoint, release, scene):  # noqa: F811
    _, model, processor = checkpoint
    with serve(release) as tiles:
        tiles.set(mode="stall")
        stalled = Server(checkpoint[0], "--alphaearth", tiles.url, "--alphaearth-index", str(release / "aef_index.parquet"),
                         "--alphaearth-cache", str(scene.parent / "stall-cache"), "--anchor-timeout", "2")
        try:
            start = time.time()
            reply = stalled.client.chat.completions.create(model="fusar-tiny", max_tokens=TOKENS,
                                                           messages=image_message(data_url(scene.read_bytes())))
            assert time.time() - start < 30
        finally:
            stalled.stop()
    assert reply.model_extra["anchors"] == [{"image": 0, "source": "none", "count": 0, "years": [],
                                             "note": "the AlphaEarth source did not answer within 2 s"}]
    sar = read_sar_scene(scene)
    assert reply.choices[0].message.content == generated(model.vlm, processor.base_processor, template_messages(), [sar.image])


def test_the_console_script_refuses_a_missing_checkpoint_or_image_root_in_one_line(checkpoint, tmp_path):
    for arguments, message in (([str(tmp_path / "nothing")], "no such file or folder"),
                               ([str(checkpoint[0]), "--image-root", str(tmp_path / "none")], "--image-root")):
        done = subprocess.run(["fusar-serve", *arguments], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_stop_strings_cut_the_answer_and_a_seed_repeats_a_sampled_one(server):
    messages = image_message(data_url(png(random_image(9))))
    whole = server.client.chat.completions.create(model="fusar-tiny", max_tokens=TOKENS, messages=messages)
    text = whole.choices[0].message.content
    stop = text.strip()[2:4]
    assert stop and stop in text
    cut = server.client.chat.completions.create(model="fusar-tiny", max_tokens=TOKENS, messages=messages, stop=[stop])
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == (text[: text.find(stop)], "stop")
    sampled = [server.client.chat.completions.create(model="fusar-tiny", max_tokens=TOKENS, messages=messages,
                                                     temperature=1.5, seed=7).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_a_client_leaving_mid_stream_does_not_disturb_the_others(server):
    stream = server.client.chat.completions.create(model="fusar-tiny", max_tokens=64, stream=True,
                                                   messages=image_message(data_url(png(random_image(11)))))
    next(iter(stream))
    stream.close()  # gone after the first chunk
    reply = server.client.chat.completions.create(model="fusar-tiny", max_tokens=TOKENS,
                                                  messages=image_message(data_url(png(random_image(12)))))
    assert reply.usage.completion_tokens == TOKENS and httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_a_stopped_worker_is_a_503_and_an_unhealthy_server_not_a_hung_request(checkpoint):
    from fastapi.testclient import TestClient

    from serving.anchors import AnchorFinder
    from serving.app import ServerSettings, build_app
    from serving.engine import Engine

    _, model, processor = checkpoint
    engine = Engine(model, processor)
    engine.close()  # the worker thread ends, as it would on a crash
    client = TestClient(build_app(engine, AnchorFinder(), ServerSettings("fusar-tiny")))
    reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "engine_stopped"
    assert client.get("/health").status_code == 503
    # A request that got past that check just as the worker stopped is answered with an error, not left waiting.
    from serving.engine import Job, Sampling

    events = []
    engine.submit(Job({}, Sampling(), 4, events.append))
    assert events == [("error", "the model's worker has stopped; restart the server")]


def test_mistyped_or_impossible_fields_are_4xx_naming_the_field_and_leave_nothing_in_the_log(checkpoint, tmp_path):
    """Each of these was a 500 or a silent misreading: a string for a boolean, a seed beyond int64, a NUL byte in a
    path, pixels of 1e12 m, a prompt past the model's context; and a refused 9000 x 9000 image left PIL's warning."""
    with rasterio.open(tmp_path / "huge.tif", "w", driver="GTiff", width=8, height=8, count=1, dtype="float32",
                       crs=UTM, transform=from_origin(LEFT, TOP, 1e12, 1e12)) as dataset:
        dataset.write(np.ones((1, 8, 8), np.float32))
    bomb = png(Image.new("L", (1, 1)))
    header = b"IHDR" + (9000).to_bytes(4, "big") * 2 + bomb[24:29]
    bomb = bomb[:12] + header + zlib.crc32(header).to_bytes(4, "big") + bomb[33:]
    hi = [{"role": "user", "content": "hi"}]
    cases = [
        ({"messages": hi, "stream_options": "x"}, 400, "stream_options", "expected an object"),
        ({"messages": hi, "stream": "false"}, 400, "stream", 'expected true or false, got "false"'),
        ({"messages": hi, "stream": True, "stream_options": {"include_usage": "yes"}}, 400,
         "stream_options.include_usage", "expected true or false"),
        ({"messages": hi, "temperature": 1, "seed": 2**70}, 400, "seed", "OpenAI's int64"),
        ({"messages": image_message("a\x00b.tif")}, 400, "messages[0].content[0].image_url", "NUL byte"),
        ({"messages": image_message(data_url((tmp_path / "huge.tif").read_bytes(), "image/tiff"))}, 400,
         "messages[0].content[0].image_url", "georeference does not map to longitude and latitude"),
        ({"messages": [{"role": "user", "content": "ship " * 5000}]}, 400, "messages",
         "This model's maximum context length is 4096 tokens"),
        ({"messages": image_message(data_url(bomb))}, 413, "messages[0].content[0].image_url", "pixels"),
        ({"messages": [{"role": "user", "content": [  # one good image, one bad: the good one's work is not orphaned
            {"type": "image_url", "image_url": {"url": data_url(png(random_image(0)))}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}, {"type": "text", "text": "hi"}]}]},
         400, "messages[0].content[1].image_url", "not valid base64"),
    ]
    server = Server(checkpoint[0], "--image-root", str(tmp_path))
    try:
        for body, status, param, message in cases:
            response = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=60)
            error = response.json()["error"]
            assert (response.status_code, error["param"]) == (status, param) and message in error["message"], error
        assert httpx.post(f"{server.url}/v1/chat/completions", json=cases[6][0], timeout=60).json()["error"][
            "code"] == "context_length_exceeded"
        assert server.client.chat.completions.create(model="fusar-tiny", max_tokens=2, messages=hi).choices
    finally:
        log = server.stop()
    assert "Traceback" not in log and "Warning" not in log and "deprecated" not in log, log[-3000:]


def peak_rss_mib(pid: int) -> float:
    """The process's high-water mark of resident memory (VmHWM): what it ever held, not only what it holds now."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def test_budgets_are_per_request_and_checked_before_the_memory_is_spent(checkpoint):  # noqa: F811
    """Eight PNGs whose headers claim 4000 x 4000 pixels each (in a body of a few kB), an .npz of 1 MB that would
    load to 1 GiB, and 5,000 anchors as JSON: each refused before anything is decoded, and the server's peak memory
    stays where it was."""
    claimed = png(Image.new("L", (1, 1)))
    header = b"IHDR" + (4000).to_bytes(4, "big") * 2 + claimed[24:29]
    claimed = claimed[:12] + header + zlib.crc32(header).to_bytes(4, "big") + claimed[33:]
    inflating = io.BytesIO()
    np.savez_compressed(inflating, features=np.zeros((2**22, 64), np.float32), positions=np.zeros((2**22, 2), np.float32))
    npz = {"npz": base64.b64encode(inflating.getvalue()).decode()}
    many = {"values": [[0.125] * 64] * 5000, "positions": [[0.5, 0.5]] * 5000}
    eight = [{"type": "image_url", "image_url": {"url": data_url(claimed)}}] * 8 + [{"type": "text", "text": "hi"}]
    server = Server(checkpoint[0])
    try:
        before = peak_rss_mib(server.process.pid)
        post = lambda body: httpx.post(f"{server.url}/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=60)  # noqa: E731
        status, message = error_of(post({"messages": [{"role": "user", "content": eight}]}))
        assert status == 413 and "128000000 pixels together" in message, message
        status, message = error_of(post({"messages": image_message(data_url(png(random_image(0))), anchors=npz)}))
        assert status == 400 and "more than the limit of 67108864 bytes" in message, message
        status, message = error_of(post({"messages": image_message(data_url(png(random_image(0))), anchors=many)}))
        assert status == 400 and "at most 4096 anchors per image" in message, message
        assert peak_rss_mib(server.process.pid) - before < 150
        assert server.client.chat.completions.create(model="fusar-tiny", max_tokens=2, messages=image_message(
            data_url(png(random_image(0))))).choices
    finally:
        server.stop()
