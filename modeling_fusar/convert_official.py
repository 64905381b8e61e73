"""fusar-convert-official: the authors' released FUSAR-GPT artefacts -> a transformers checkpoint.

Their release is a PEFT LoRA adapter on Qwen2.5-VL-7B-Instruct plus a TLM folder holding
`vec64_film.pt` (`{"film_mlp": state_dict}` of Linear(64, h) -> SiLU -> Linear(h, 2C)) and
`tlm_config.json` (`{format, sigma, hidden_mult, image_size, vec_dim}`). The result loads with
`AutoModelForImageTextToText.from_pretrained(OUT)` and computes what their code computes.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

from .modeling_fusar import FusarForConditionalGeneration

# The `format` values of tlm_config.json this converter understands.
KNOWN_TLM_FORMATS = ("vec64_film",)
TLM_FIELDS = ("sigma", "hidden_mult", "vec_dim")
FILM_WEIGHTS = "vec64_film.pt"


def read_tlm_config(tlm_dir: Path) -> dict:
    path = tlm_dir / "tlm_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read it as JSON ({error})") from error
    if config.get("format") not in KNOWN_TLM_FORMATS:
        raise ValueError(f"{path}: unknown format {config.get('format')!r}; this converter reads {KNOWN_TLM_FORMATS}")
    missing = [name for name in TLM_FIELDS if name not in config]
    if missing:
        raise ValueError(f"{path}: missing fields {missing}; expected {{format, sigma, hidden_mult, image_size, vec_dim}}")
    return config


def read_film_mlp(tlm_dir: Path, anchor_dim: int, mlp_hidden: int, hidden_size: int) -> dict[str, torch.Tensor]:
    path = tlm_dir / FILM_WEIGHTS
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["film_mlp"]
    except (OSError, RuntimeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: expected a torch file holding {{'film_mlp': state_dict}} ({error})") from error
    expected = {"0.weight": (mlp_hidden, anchor_dim), "0.bias": (mlp_hidden,),
                "2.weight": (2 * hidden_size, mlp_hidden), "2.bias": (2 * hidden_size,)}
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    if shapes != expected:
        raise ValueError(f"{path}: film_mlp has shapes {shapes}; for this base model and tlm_config expected {expected}")
    return state


# Adapters trained before transformers 4.52 name Qwen2.5-VL's language model `model.layers` and its vision tower
# `visual`; today they are `model.language_model.layers` and `model.visual`. Keys already in today's layout pass.
LEGACY_QWEN_VL_KEYS = {r"^model\.(?!language_model\.|visual\.)": "model.language_model.", r"^visual\.": "model.visual."}


def merge_adapter(vlm, adapter: str):
    """The authors' LoRA adapter merged into `vlm`; every adapter weight must find its layer."""
    from peft import PeftConfig, get_peft_model
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    model = get_peft_model(vlm, PeftConfig.from_pretrained(adapter))
    prefix = "base_model.model."
    weights = {}
    for key, value in load_peft_weights(adapter).items():
        inner = key.removeprefix(prefix)
        for pattern, replacement in LEGACY_QWEN_VL_KEYS.items():
            inner = re.sub(pattern, replacement, inner)
        weights[prefix + inner] = value
    result = set_peft_model_state_dict(model, weights)
    missing = [key for key in result.missing_keys if "lora_" in key]
    if result.unexpected_keys or missing:
        raise ValueError(f"{adapter}: the adapter does not fit the base model: weights without a layer "
                         f"{result.unexpected_keys[:3]}, layers without weights {missing[:3]}")
    return model.merge_and_unload()


def convert(base: str, tlm_dir: str | Path, output: str | Path, adapter: str | None = None,
            dtype: torch.dtype | str = "auto") -> FusarForConditionalGeneration:
    tlm_dir = Path(tlm_dir)
    tlm = read_tlm_config(tlm_dir)
    vlm = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype)
    if adapter is not None:
        vlm = merge_adapter(vlm, adapter)
    hidden_size = vlm.config.get_text_config().hidden_size
    mlp_hidden = max(128, int(tlm["hidden_mult"]) * hidden_size)  # the authors' rule
    state = read_film_mlp(tlm_dir, int(tlm["vec_dim"]), mlp_hidden, hidden_size)
    model = FusarForConditionalGeneration.from_base(
        vlm, anchor_dim=int(tlm["vec_dim"]), anchor_sigma=float(tlm["sigma"]), anchor_hidden_size=mlp_hidden
    )
    model.anchor_module.film.load_state_dict({k: v.to(model.dtype) for k, v in state.items()})
    model.save_pretrained(output)
    _save_processor(base, output, int(tlm["vec_dim"]), tlm.get("image_size"))
    return model


def _save_processor(base: str, output, anchor_dim: int, image_size: int | None):
    """The base's processor wrapped as a FusarProcessor that resizes images as the authors did."""
    from processing import FusarProcessor
    from processing.base import load_base_processor

    if not (Path(base) / "processor_config.json").is_file():
        print(f"note: {base} has no processor_config.json here; save FusarProcessor.from_base(...) to {output} yourself")
        return
    processor = FusarProcessor.from_base(load_base_processor(base), anchor_dim=anchor_dim, image_size=image_size)
    processor.save_pretrained(output)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--base", required=True, help="base Qwen2.5-VL model: local folder or Hub id")
    parser.add_argument("--tlm", required=True, help="folder with vec64_film.pt and tlm_config.json")
    parser.add_argument("--adapter", help="the authors' PEFT LoRA adapter folder, merged into the base")
    parser.add_argument("--output", required=True, help="folder for the FUSAR-GPT checkpoint")
    parser.add_argument("--dtype", default="auto", help="weights dtype: auto, bfloat16, float16 or float32")
    args = parser.parse_args(argv)
    convert(args.base, args.tlm, args.output, adapter=args.adapter, dtype=args.dtype)
    print(f"FUSAR-GPT checkpoint written to {args.output}")


if __name__ == "__main__":
    main()
