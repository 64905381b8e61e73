"""fusar-convert-official: the authors' released FUSAR-GPT artefacts -> a transformers checkpoint.

Their release is a PEFT LoRA adapter on Qwen2.5-VL-7B-Instruct plus a TLM folder holding
`vec64_film.pt` (`{"film_mlp": state_dict}` of Linear(64, h) -> SiLU -> Linear(h, 2C)) and
`tlm_config.json` (`{format, sigma, hidden_mult, image_size, vec_dim}`), or a legacy TLM folder without the config
(its sigma given with `--legacy-sigma`). The result loads with
`AutoModelForImageTextToText.from_pretrained(OUT)` and computes what their code computes.
"""

from __future__ import annotations

import hub_kernels  # noqa: F401  (before peft: bitsandbytes then looks up no Hub kernel unasked)

import argparse
import json
import math
import pickle
import re
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

from command_line import command
from output_folders import RUN_FILES, check_replaceable, replace_folder

from .modeling_fusar import FusarForConditionalGeneration

# What the authors' code writes and accepts: one format string, 64-d vectors, square images a multiple of 28 px.
TLM_FORMAT = "tlm_original_train_patch_resize_v1"
TLM_FIELDS = ("sigma", "hidden_mult", "image_size", "vec_dim")
FILM_WEIGHTS = "vec64_film.pt"
# A legacy TLM folder (no tlm_config.json): their loader assumes these and needs the training sigma given.
LEGACY_TLM = {"format": TLM_FORMAT, "hidden_mult": 4, "image_size": 504, "vec_dim": 64}


def is_number(value, kind=(int, float)) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def read_tlm_config(tlm_dir: Path, legacy_sigma: float | None = None) -> dict:
    """The TLM settings of a release folder, checked as the authors' loader checks them."""
    path = tlm_dir / "tlm_config.json"
    if not path.exists():
        if not (tlm_dir / FILM_WEIGHTS).is_file():
            raise ValueError(f"{tlm_dir}: no {FILM_WEIGHTS} here; expected the authors' TLM folder")
        if legacy_sigma is None:
            raise ValueError(f"{tlm_dir} has no tlm_config.json (a legacy TLM folder): give the sigma it was trained "
                             "with, --legacy-sigma (the authors' original training used 2)")
        config = {**LEGACY_TLM, "sigma": legacy_sigma}
    else:
        if legacy_sigma is not None:
            raise ValueError(f"{path} exists and sets sigma; --legacy-sigma is only for folders without it")
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: cannot read it as JSON ({error})") from error
        if not isinstance(config, dict) or config.get("format") != TLM_FORMAT:
            found = config.get("format") if isinstance(config, dict) else config
            raise ValueError(f"{path}: unknown format {found!r}; the authors' release writes {TLM_FORMAT!r}")
        missing = [name for name in TLM_FIELDS if name not in config]
        if missing:
            raise ValueError(f"{path}: missing fields {missing}; expected {{format, {', '.join(TLM_FIELDS)}}}")
    checks = {
        "vec_dim": (config["vec_dim"] == 64, "64 (AlphaEarth vectors)"),
        "sigma": (is_number(config["sigma"]) and math.isfinite(config["sigma"]) and config["sigma"] > 0,
                  "a positive number"),
        "hidden_mult": (is_number(config["hidden_mult"], int) and config["hidden_mult"] > 0, "a positive integer"),
        "image_size": (is_number(config["image_size"], int) and config["image_size"] > 0
                       and config["image_size"] % 28 == 0, "a positive multiple of 28 (504 in the release)"),
    }
    for name, (ok, expected) in checks.items():
        if not ok:
            raise ValueError(f"{path if path.exists() else tlm_dir}: {name} is {config[name]!r}, expected {expected}")
    return config


def read_film_mlp(tlm_dir: Path, anchor_dim: int, mlp_hidden: int, hidden_size: int) -> dict[str, torch.Tensor]:
    path = tlm_dir / FILM_WEIGHTS
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["film_mlp"]
        shapes = {key: tuple(value.shape) for key, value in state.items()}
    except (OSError, RuntimeError, KeyError, TypeError, IndexError, AttributeError, pickle.UnpicklingError) as error:
        # (weights_only: never unpickles code)
        raise ValueError(f"{path}: expected a torch file holding {{'film_mlp': state_dict}} ({error!r})") from error
    expected = {"0.weight": (mlp_hidden, anchor_dim), "0.bias": (mlp_hidden,),
                "2.weight": (2 * hidden_size, mlp_hidden), "2.bias": (2 * hidden_size,)}
    if shapes != expected:
        raise ValueError(f"{path}: film_mlp has shapes {shapes}; for this base model and tlm_config expected {expected}")
    return state


# Adapters trained before transformers 4.52 name Qwen2.5-VL's language model `model.layers` and its vision tower
# `visual`; today they are `model.language_model.layers` and `model.visual`. Keys already in today's layout pass.
LEGACY_QWEN_VL_KEYS = {r"^model\.(?!language_model\.|visual\.)": "model.language_model.", r"^visual\.": "model.visual."}
PEFT_PREFIX = "base_model.model."


def merge_adapter(vlm, adapter: str):
    """The authors' LoRA adapter merged into `vlm`; every adapter weight must find its layer.

    The layers come from the adapter's weights, not its `target_modules`: those were written for the module names
    of the transformers the authors trained with (and their stage-1 adapters hold LoRA on the vision tower as well).
    """
    from peft import PeftConfig, get_peft_model
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    weights = {}
    for key, value in load_peft_weights(adapter).items():
        inner = key.removeprefix(PEFT_PREFIX)
        for pattern, replacement in LEGACY_QWEN_VL_KEYS.items():
            inner = re.sub(pattern, replacement, inner)
        weights[PEFT_PREFIX + inner] = value
    lora = re.compile(r"\.lora_[AB](\.\w+)?\.weight$")
    other = sorted(key for key in weights if not lora.search(key))
    if other:
        raise ValueError(f"{adapter}: the adapter holds weights besides LoRA A/B matrices (modules_to_save, DoRA "
                         f"magnitudes, LoRA biases...), which this converter does not merge: e.g. {other[:3]}")
    config = PeftConfig.from_pretrained(adapter)
    if getattr(config, "rank_pattern", None) or getattr(config, "alpha_pattern", None):
        raise ValueError(f"{adapter}: adapter_config.json sets rank_pattern / alpha_pattern by module name, which this "
                         "converter does not map to today's names; merge it with PEFT on the base it was trained on")
    layers = {lora.sub("", key.removeprefix(PEFT_PREFIX)) for key in weights}
    modules = dict(vlm.named_modules())
    unknown = sorted(layer for layer in layers if layer not in modules)
    if unknown:
        raise ValueError(f"{adapter}: the adapter does not fit the base model: weights for layers it does not have, "
                         f"e.g. {unknown[:3]}")
    config.target_modules = layers  # full names: exactly these layers
    config.exclude_modules = config.layers_to_transform = config.layers_pattern = None
    model = get_peft_model(vlm, config)
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as error:  # shapes: another rank, or another base model
        raise ValueError(f"{adapter}: the adapter does not fit the base model ({error})") from error
    missing = [key for key in result.missing_keys if "lora_" in key]
    if result.unexpected_keys or missing:
        raise ValueError(f"{adapter}: the adapter does not fit the base model: weights without a layer "
                         f"{result.unexpected_keys[:3]}, layers without weights {missing[:3]}")
    return model.merge_and_unload()


def convert(base: str, tlm_dir: str | Path, output: str | Path, adapter: str | None = None,
            dtype: torch.dtype | str = "auto", legacy_sigma: float | None = None,
            overwrite: bool = False) -> FusarForConditionalGeneration:
    tlm_dir, output = Path(tlm_dir), Path(output)
    check_replaceable(output, overwrite=overwrite, owned=RUN_FILES, tool="fusar-convert-official")
    tlm = read_tlm_config(tlm_dir, legacy_sigma)
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
    processor = _processor(base, int(tlm["vec_dim"]), int(tlm["image_size"]))  # read before anything is written
    work = output.with_name(output.name + ".partial")  # written whole, then put in place
    if work.exists():
        shutil.rmtree(work)
    model.save_pretrained(work)
    if processor is None:
        print(f"note: {base} holds no saved processor (processor_config.json); save FusarProcessor.from_base(..., "
              f"image_size={tlm['image_size']}) to {output} yourself")
    else:
        processor.save_pretrained(work)
    replace_folder(work, output)
    return model


def _processor(base: str, anchor_dim: int, image_size: int):
    """The base's processor wrapped as a FusarProcessor that resizes images as the authors did, if it has one."""
    from processing import FusarProcessor
    from processing.base import load_base_processor

    if not (Path(base) / "processor_config.json").is_file():
        return None
    return FusarProcessor.from_base(load_base_processor(base), anchor_dim=anchor_dim, image_size=image_size)


@command("fusar-convert-official")
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--base", required=True, help="base Qwen2.5-VL model: local folder or Hub id")
    parser.add_argument("--tlm", required=True, help="folder with vec64_film.pt and tlm_config.json")
    parser.add_argument("--legacy-sigma", type=float,
                        help="for a legacy TLM folder without tlm_config.json: the sigma it was trained with (2 in the "
                             "authors' original training)")
    parser.add_argument("--adapter", help="the authors' PEFT LoRA adapter folder, merged into the base")
    parser.add_argument("--output", required=True, help="folder for the FUSAR-GPT checkpoint")
    parser.add_argument("--dtype", default="auto", help="weights dtype: auto, bfloat16, float16 or float32")
    parser.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --output")
    args = parser.parse_args(argv)
    convert(args.base, args.tlm, args.output, adapter=args.adapter, dtype=args.dtype, legacy_sigma=args.legacy_sigma,
            overwrite=args.overwrite)
    print(f"FUSAR-GPT checkpoint written to {args.output}")


if __name__ == "__main__":
    raise SystemExit(main())
