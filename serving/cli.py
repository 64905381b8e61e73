"""fusar-serve: a FUSAR-GPT checkpoint (or any image-text-to-text model) behind an OpenAI-compatible API."""

from __future__ import annotations

import shared_machine  # noqa: F401  (before torch: its OpenMP threads then sleep when they wait)
import hub_kernels  # noqa: F401  (before peft: bitsandbytes then looks up no Hub kernel unasked)

import argparse
import ipaddress
import os
import signal
import socket
import sys
import warnings
from pathlib import Path

from command_line import command, local_or_hub_id, non_negative_int, positive_int


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the model loads: a port in use is one line at once, not after loading."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: expected a port from 0 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error})") from None
    return sock


def check_hub_model(checkpoint: str) -> None:
    """A Hub id the Hub cannot be reached for and that is not in the cache: one line at once. (huggingface_hub would
    retry each file's connection five times first, ~50 s.) A cached copy loads as usual."""
    if Path(checkpoint).exists():
        return
    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(checkpoint, "config.json"), str):
        return
    try:
        HfApi().model_info(checkpoint, timeout=10)
    except Exception as error:
        # No answer at all (httpx's or httpx2's TransportError, by release); an answer (401, 404) is the load's to say.
        if isinstance(error, OSError) or "TransportError" in {cls.__name__ for cls in type(error).__mro__}:
            raise ValueError(f"{checkpoint}: cannot reach the Hub at {constants.ENDPOINT} ({type(error).__name__}) "
                             "and the model is not in the cache; check the network or HF_ENDPOINT") from None


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusar-serve", description=__doc__)
    parser.add_argument("checkpoint", help="a checkpoint folder or Hub id (FUSAR-GPT, or a base model: no anchors)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=non_negative_int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("FUSAR_API_KEY"),
                        help="require `Authorization: Bearer KEY` on /v1 (default: $FUSAR_API_KEY; none: open)")
    parser.add_argument("--served-model-name", help="the model's name in the API (default: the checkpoint as given)")
    parser.add_argument("--image-root", help="a folder whose files requests may name by path (default: none; "
                                             "images come as data: or http(s) URLs)")
    parser.add_argument("--allowed-media-domains", nargs="+", metavar="HOST",
                        help="fetch http(s) images from these host names only (default: any public host)")
    parser.add_argument("--allow-private-media", action="store_true",
                        help="fetch http(s) images from loopback and private addresses too (a trusted network only)")
    parser.add_argument("--media-deadline", type=positive_float, default=20.0,
                        help="seconds one http(s) image may take to arrive, redirects included (default 20)")
    parser.add_argument("--alphaearth", help="the AlphaEarth release (URL or folder, as fusar-data anchors --source) "
                                             "to find the anchors of georeferenced images that come without them")
    parser.add_argument("--alphaearth-index", help="the release's index (GeoParquet), if not aef_index.parquet under it")
    parser.add_argument("--alphaearth-cache", help="folder for the blocks read from the release (default: "
                                                   "~/.cache/fusar-gpt/alphaearth; shared by all requests)")
    parser.add_argument("--anchor-timeout", type=positive_float, default=10.0,
                        help="seconds to wait for an image's anchors before answering without them (default 10)")
    parser.add_argument("--max-batch-size", type=positive_int, default=32, help="requests generated together")
    parser.add_argument("--batch-wait", type=positive_float, default=0.1,
                        help="seconds a batch waits for the next of the requests being read (their images already "
                             "fetched), 10x this in all (default 0.1)")
    parser.add_argument("--max-tokens", type=positive_int, default=512,
                        help="tokens a request generates by default, and the most it may ask for")
    parser.add_argument("--kv-cache-entries", type=non_negative_int, default=16,
                        help="finished conversations whose KV cache a next turn may continue (0: none)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if there is one)")
    return parser


@command("fusar-serve")
def main(argv=None):
    args = parser().parse_args(argv)
    local_or_hub_id(args.checkpoint, "checkpoint")
    image_root = Path(args.image_root) if args.image_root else None
    if image_root is not None and not image_root.is_dir():
        raise ValueError(f"--image-root {image_root}: no such folder")
    sock = listening_socket(args.host, args.port)
    check_hub_model(args.checkpoint)
    if not args.api_key and not is_loopback(args.host):
        print(f"fusar-serve: WARNING: listening on {args.host} without --api-key: anyone who can reach this port can "
              "use the model", file=sys.stderr, flush=True)
    import torch
    import uvicorn
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import modeling_fusar  # registers the Auto classes

    from processing.base import load_base_processor

    from .anchors import AnchorFinder
    from .app import ServerSettings, build_app
    from .engine import Engine
    from .fetch import MediaPolicy
    from .images import ImageLimits

    source = None
    if args.alphaearth:  # opened (its index read) before the model loads: a wrong source fails in seconds
        from dataset_scripts.alphaearth_cloud import open_source

        source = open_source(args.alphaearth, args.alphaearth_index, args.alphaearth_cache)
    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype if args.dtype != "auto" else "auto"
    model = AutoModelForImageTextToText.from_pretrained(args.checkpoint, dtype=dtype).to(device).eval()
    fusar = isinstance(model.config, modeling_fusar.FusarConfig)
    processor = AutoProcessor.from_pretrained(args.checkpoint) if fusar else load_base_processor(args.checkpoint)
    limits = ImageLimits()
    Image.MAX_IMAGE_PIXELS = limits.pixels  # PIL's own bomb check, at the server's limit
    # Between 1x and 2x that limit PIL only warns; the header check refuses those images (413) before any decoding.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    engine = Engine(model, processor, max_batch_size=args.max_batch_size, cache_entries=args.kv_cache_entries,
                    batch_wait=args.batch_wait)
    finder = AnchorFinder(source, timeout=args.anchor_timeout)
    # A local checkpoint is named by its folder: the API shows no server path.
    name = args.served_model_name or (Path(args.checkpoint).name if Path(args.checkpoint).exists() else args.checkpoint)
    domains = frozenset(host.lower() for host in args.allowed_media_domains) if args.allowed_media_domains else None
    media = MediaPolicy(domains, args.allow_private_media, args.media_deadline)
    settings = ServerSettings(name, image_root, limits, media, max_tokens=args.max_tokens, api_key=args.api_key)
    app = build_app(engine, finder, settings)
    print(f"fusar-serve: {settings.model_name} on http://{args.host}:{sock.getsockname()[1]}/v1 (anchors: "
          f"{'found through ' + args.alphaearth if source else 'from requests only'})", flush=True)
    class SignalledServer(uvicorn.Server):
        """uvicorn's server, remembering the signal that stopped it. uvicorn raises a SIGINT again once it has shut
        down, but asyncio's runner, whose handler it restores, may turn it into nothing: exit status 0, not 130
        (seen under load)."""
        signalled = None

        def handle_exit(self, sig, frame):
            self.signalled = sig
            super().handle_exit(sig, frame)

    server = SignalledServer(uvicorn.Config(app, log_level="warning"))
    try:
        server.run(sockets=[sock])
        if server.signalled == signal.SIGINT:
            raise KeyboardInterrupt  # exit status 130, whatever became of the signal uvicorn raises again on its way out
    finally:
        finder.close()
        engine.close()


if __name__ == "__main__":
    raise SystemExit(main())
