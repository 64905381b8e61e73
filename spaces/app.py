"""FUSAR-GPT Space: ask a SAR image a question, with AlphaEarth anchors as world knowledge.

Run locally: python spaces/app.py [--checkpoint PATH_OR_HUB_ID] [--port 7860]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fusar_demo beside this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the packages, when run from a checkout

import gradio as gr  # noqa: E402

from fusar_demo import DEFAULT_CHECKPOINT, MAX_UPLOAD_BYTES, TASKS, checkpoint_note, run  # noqa: E402


def build(checkpoint: str = DEFAULT_CHECKPOINT) -> gr.Blocks:
    with gr.Blocks(title="FUSAR-GPT") as demo:
        gr.Markdown("# FUSAR-GPT\nA SAR vision-language model that reads AlphaEarth embeddings as world knowledge.")
        note = checkpoint_note(checkpoint)
        gr.Markdown(f"Checkpoint: `{checkpoint}`" + (f". **{note}**" if note else ""), elem_id="checkpoint")
        model = gr.State(checkpoint)  # chosen by whoever starts the server, not by visitors
        with gr.Row():
            with gr.Column():
                image = gr.File(label="SAR image (PNG, JPEG or GeoTIFF)", file_types=[".png", ".jpg", ".jpeg", ".tif", ".tiff"],
                                elem_id="image")
                npz = gr.File(label="Anchors (the authors' .npz or .npy), optional", file_types=[".npz", ".npy"])
                tiles = gr.Textbox(label="or, for a georeferenced GeoTIFF, a folder of AlphaEarth tiles under the "
                                         "server's FUSAR_TILES_ROOT, or 'release' for the server's AlphaEarth release",
                                   value="")
                task = gr.Dropdown(list(TASKS), value=list(TASKS)[0], label="Task")
                question = gr.Textbox(label="or your own question", elem_id="question")
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                answer = gr.Textbox(label="Answer", elem_id="answer")
                message = gr.Markdown(elem_id="message")
                boxes = gr.Image(label="Detections", elem_id="boxes")
                heat = gr.Image(label="Anchor modulation", elem_id="heat")
                gr.Markdown("How strongly the AlphaEarth anchors change each visual token (FiLM: x (1 + γ) + β), "
                            "on a fixed scale: dark = unchanged. Empty without anchors.")
        ask.click(run, [model, image, npz, tiles, task, question], [answer, boxes, heat, message])
    return demo


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    build(args.checkpoint).launch(server_name="127.0.0.1", server_port=args.port, max_file_size=MAX_UPLOAD_BYTES,
                                  show_error=False)
