"""FUSAR-GPT around both reference backbones: identity, batching, gradients, generation, pipeline, PEFT."""

import copy
import functools
import inspect

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import pipeline

from conftest import BACKBONES, PROMPT, build, model_inputs, random_anchors, random_image
from modeling_fusar import FusarConfig, FusarForConditionalGeneration
from processing import FusarProcessor

pytestmark = pytest.mark.parametrize("family", list(BACKBONES))


def test_a_fresh_model_gives_exactly_the_base_models_logits(tokenizers, family):
    torch.manual_seed(0)
    base, base_processor = BACKBONES[family](tokenizers[family])
    untouched = copy.deepcopy(base).eval()
    model = FusarForConditionalGeneration.from_base(base).eval()
    processor = FusarProcessor.from_base(base_processor)
    inputs = model_inputs(processor, [random_image(0), random_image(1)], anchors=[random_anchors(0, 9), None])
    with torch.no_grad():
        ours = model(**inputs).logits
        expected = untouched(**{k: v for k, v in inputs.items() if not k.startswith("anchor_")}).logits
    assert torch.equal(ours, expected)


def test_the_anchors_change_the_logits_once_the_module_is_trained(tokenizers, family):
    model, processor = build(tokenizers, family, modulate=True)
    image = random_image(0)
    with torch.no_grad():
        plain = model(**model_inputs(processor, [image])).logits
        anchored = model(**model_inputs(processor, [image], anchors=[random_anchors(0, 9)])).logits
        masked_out = model(**model_inputs(processor, [image], anchors=[{**random_anchors(0, 9), "mask": np.zeros(9, bool)}])).logits
    assert not torch.allclose(plain, anchored)
    assert torch.equal(plain, masked_out)


def test_anchor_dropout_leaves_out_whole_images_in_training_only(tokenizers, family):
    model, processor = build(tokenizers, family, modulate=True)
    model.config.anchor_dropout = 0.5
    images, anchors = [random_image(i) for i in range(8)], [random_anchors(i, 3) for i in range(8)]
    inputs = model_inputs(processor, images, anchors=anchors)
    image_inputs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask") and not k.startswith("anchor_")}
    anchor_inputs = {k: v for k, v in inputs.items() if k.startswith("anchor_")}
    with torch.no_grad():
        plain = model.get_image_features(**image_inputs).pooler_output
        anchored = model.get_image_features(**image_inputs, **anchor_inputs).pooler_output  # eval: every image's anchors
        torch.manual_seed(1)
        dropped = model.train().get_image_features(**image_inputs, **anchor_inputs).pooler_output
    left_out = [torch.allclose(d, p) for d, p in zip(dropped, plain)]
    assert all(left_out[i] or torch.allclose(d, a) for i, (d, a) in enumerate(zip(dropped, anchored)))
    assert 0 < sum(left_out) < 8  # whole images, some of each
    assert not any(torch.allclose(a, p) for a, p in zip(anchored, plain))


def test_a_batch_equals_its_images_one_by_one(tokenizers, family):
    """Different image sizes (Qwen: different grids), different anchor counts, and an image without anchors."""
    model, processor = build(tokenizers, family, modulate=True)
    images = [random_image(0, 112, 112), random_image(1, 84, 140), random_image(2, 140, 84)]
    anchor_sets = [random_anchors(0, 3), random_anchors(1, 11), None]
    processor.tokenizer.padding_side = "left"  # the last position is then every row's last token
    batch = model_inputs(processor, images, anchors=anchor_sets)
    with torch.no_grad():
        batched = model(**batch).logits[:, -1]
        for i, (image, anchors) in enumerate(zip(images, anchor_sets)):
            alone = model(**model_inputs(processor, [image], anchors=[anchors])).logits[0, -1]
            torch.testing.assert_close(batched[i], alone, atol=1e-4, rtol=1e-4)


def test_nan_in_masked_anchors_never_reaches_the_logits(tokenizers, family):
    model, processor = build(tokenizers, family, modulate=True)
    anchors = random_anchors(0, 6)
    inputs = model_inputs(processor, [random_image(0)], anchors=[anchors])
    clean = inputs["anchor_values"].clone()
    inputs["anchor_values"][0, 4:] = float("nan")
    inputs["anchor_mask"][0, 4:] = False
    with torch.no_grad():
        logits = model(**inputs).logits
        inputs["anchor_values"] = clean[:, :4]
        inputs["anchor_positions"] = inputs["anchor_positions"][:, :4]
        inputs["anchor_mask"] = inputs["anchor_mask"][:, :4]
        expected = model(**inputs).logits
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_every_trainable_parameter_gets_a_gradient(tokenizers, family):
    """Every anchor-module parameter, and every base parameter that the base model alone trains."""
    model, processor = build(tokenizers, family, modulate=True)
    model.train()
    inputs = model_inputs(processor, [random_image(0), random_image(1)], anchors=[random_anchors(0, 5, years=3), random_anchors(1, 4, years=3)])
    inputs["anchor_year_offsets"] = torch.tensor([[-1, 0, 2], [0, 1, 3]])
    inputs["labels"] = inputs["input_ids"].clone()

    def without_gradient():
        return {n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()}

    model.vlm(**{k: v for k, v in inputs.items() if not k.startswith("anchor_")}).loss.backward()
    unused_by_the_base = without_gradient()  # e.g. LLaVA's vision post-layernorm, which its features skip
    model.zero_grad(set_to_none=True)
    model(**inputs).loss.backward()
    assert without_gradient() == {n for n in unused_by_the_base if n.startswith("vlm.")}


def test_training_steps_move_the_anchor_module_from_zero(tokenizers, family):
    """From the identity start, a few steps train every anchor-module parameter (the zero layer first)."""
    model, processor = build(tokenizers, family)
    model.train()
    model.vlm.requires_grad_(False)
    before = {n: p.clone() for n, p in model.anchor_module.named_parameters()}
    optimizer = torch.optim.AdamW(model.anchor_module.parameters(), lr=1e-2)
    inputs = model_inputs(processor, [random_image(0)], anchors=[random_anchors(0, 5, years=2)])
    inputs["anchor_year_offsets"] = torch.tensor([[0, 1]])
    inputs["labels"] = inputs["input_ids"].clone()
    for _ in range(3):
        optimizer.zero_grad()
        model(**inputs).loss.backward()
        optimizer.step()
    unchanged = [n for n, p in model.anchor_module.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged


def greedy_by_forward(model, inputs, steps):
    """Greedy decoding by re-running the full forward pass at every step: what generation must equal."""
    inputs = dict(inputs)
    ids, growing = inputs.pop("input_ids"), [k for k in ("attention_mask", "mm_token_type_ids") if k in inputs]
    for _ in range(steps):
        with torch.no_grad():
            next_token = model(input_ids=ids, **inputs).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_token], 1)
        for key in growing:
            fill = torch.ones_like(next_token) if key == "attention_mask" else torch.zeros_like(next_token)
            inputs[key] = torch.cat([inputs[key], fill.to(inputs[key].dtype)], 1)
    return ids[:, -steps:]


def test_greedy_generation_is_the_same_with_and_without_cache(tokenizers, family):
    model, processor = build(tokenizers, family, modulate=True)
    model.double()  # ties between random logits would otherwise decide the comparison
    inputs = model_inputs(processor, [random_image(3)], anchors=[random_anchors(3, 7)])
    inputs["anchor_values"] = inputs["anchor_values"].double()
    # A random model may emit the image placeholder, which a no-cache pass would take for an image.
    options = dict(max_new_tokens=8, do_sample=False, suppress_tokens=[model.config.base_config.image_token_id])
    cached = model.generate(**inputs, **options)[:, -8:]
    uncached = model.generate(**inputs, use_cache=False, **options)[:, -8:]
    assert torch.equal(cached, uncached)
    if family == "llava":  # Qwen's no-cache generation rebuilds 3-D positions the forward pass is not given here
        assert torch.equal(cached, greedy_by_forward(model, inputs, 8))


def test_generate_encodes_the_images_once(tokenizers, family, monkeypatch):
    model, processor = build(tokenizers, family, modulate=True)
    calls, encode = [], model.vlm.get_image_features

    @functools.wraps(encode)
    def counting_encode(*args, **kwargs):
        calls.append(1)
        return encode(*args, **kwargs)

    monkeypatch.setattr(model.vlm, "get_image_features", counting_encode)
    model.generate(**model_inputs(processor, [random_image(0)], anchors=[random_anchors(0, 4)]), max_new_tokens=5)
    assert len(calls) == 1


def test_batched_generation_matches_single(tokenizers, family):
    model, processor = build(tokenizers, family, modulate=True)
    processor.tokenizer.padding_side = "left"
    images, anchor_sets = [random_image(0), random_image(1, 84, 140)], [random_anchors(0, 5), None]
    options = dict(max_new_tokens=5, do_sample=False)
    batched = model.generate(**model_inputs(processor, images, anchors=anchor_sets), **options)[:, -5:]
    for i in range(2):
        alone = model.generate(**model_inputs(processor, [images[i]], anchors=[anchor_sets[i]]), **options)[:, -5:]
        assert torch.equal(batched[i], alone[0])


def test_pipeline_passes_anchors_through_generate_kwargs(tokenizers, family):
    model, processor = build(tokenizers, family, modulate=True)
    image, anchors = random_image(0), random_anchors(0, 6)
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    prompt = processor.apply_chat_template(PROMPT, add_generation_prompt=True)
    tensors = {k: v for k, v in model_inputs(processor, [image], anchors=[anchors]).items() if k.startswith("anchor_")}
    options = dict(max_new_tokens=6, do_sample=False)
    with_anchors = pipe(images=image, text=prompt, generate_kwargs={**options, **tensors}, return_full_text=False)
    direct = model.generate(**model_inputs(processor, [image], anchors=[anchors]), **options)[:, -6:]
    assert with_anchors[0]["generated_text"] == processor.batch_decode(direct, skip_special_tokens=True)[0]


def test_peft_lora_targets_the_language_model_and_saves_the_anchor_module(tokenizers, family, tmp_path):
    model, processor = build(tokenizers, family, modulate=True)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=model.lora_target_modules, modules_to_save=["anchor_module"],
                        init_lora_weights=False)  # non-zero, so that the reload below must restore it
    peft_model = get_peft_model(model, config)
    lora = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    assert lora and all(".language_model." in n for n in lora)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == set(lora) | {n for n in trainable if "anchor_module.modules_to_save" in n}
    assert any("anchor_module.modules_to_save" in n for n in trainable)
    inputs = model_inputs(processor, [random_image(0)], anchors=[random_anchors(0, 5)])
    inputs["labels"] = inputs["input_ids"].clone()
    peft_model(**inputs).loss.backward()
    peft_model.generate(**model_inputs(processor, [random_image(0)], anchors=[random_anchors(0, 5)]), max_new_tokens=3)
    peft_model.save_pretrained(tmp_path / "adapter")
    fresh, _ = build(tokenizers, family)  # the same base weights, an untrained anchor module
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    peft_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, peft_model(**inputs).logits, atol=1e-5, rtol=1e-5)


def test_image_tokens_and_features_must_agree(tokenizers, family):
    model, processor = build(tokenizers, family)
    inputs = model_inputs(processor, [random_image(0)])
    image_token = model.config.base_config.image_token_id
    position = (inputs["input_ids"][0] == image_token).nonzero()[0, 0]
    inputs["input_ids"][0, position] = processor.tokenizer.pad_token_id
    # transformers' message (its test_mismatching_num_image_tokens and callers match it), then ours
    with pytest.raises(ValueError, match="^Image features and image tokens do not match, .*image tokens but the images give"):
        model(**inputs)


def test_qwen_images_need_their_grid(tokenizers, family):
    model, processor = build(tokenizers, family)
    inputs = model_inputs(processor, [random_image(0)])
    if "image_grid_thw" not in inputs:
        pytest.skip("only Qwen-VL backbones take image_grid_thw")
    del inputs["image_grid_thw"]
    with pytest.raises(ValueError, match="need `image_grid_thw`"):
        model(**inputs)


def test_anchor_batch_must_match_the_images(tokenizers, family):
    model, processor = build(tokenizers, family)
    inputs = model_inputs(processor, [random_image(0), random_image(1)], anchors=[random_anchors(0, 3), None])
    inputs["anchor_values"] = inputs["anchor_values"][:1]
    with pytest.raises(ValueError, match="anchors for 1 images but the batch has 2"):
        model(**inputs)


@pytest.mark.parametrize("tied", [False, True])
def test_new_special_tokens_resize_the_model_and_generation_still_works(tokenizers, family, tied):
    """Adding tokens is an everyday fine-tuning step: embeddings, head and config follow, tied or not."""
    model, processor = build(tokenizers, family, modulate=True)
    model.vlm.config.tie_word_embeddings = tied  # the base model's own switch (LLaVA and Qwen2.5-VL: the top level)
    model.tie_weights()
    tokenizer = copy.deepcopy(processor.tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<ship>", "<aircraft>"]})
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    model.resize_token_embeddings(len(tokenizer))
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    assert model.config.get_text_config().vocab_size == model.vlm.config.get_text_config().vocab_size == len(tokenizer)
    inputs = model_inputs(processor, [random_image(0)], anchors=[random_anchors(0, 4)])
    logits = model(**inputs).logits
    assert logits.shape[-1] == len(tokenizer)
    assert model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 3


def test_the_forward_signature_names_the_base_models_inputs(tokenizers, family):
    """Code that reads the signature (TRL's column filter, the generation utilities) must find these."""
    model, _ = build(tokenizers, family)
    parameters = inspect.signature(model.forward).parameters
    for name in ("input_ids", "attention_mask", "position_ids", "cache", "inputs_embeds", "labels", "pixel_values",
                 "logits_to_keep", "anchor_values", "anchor_positions", "anchor_mask"):
        assert name in parameters
    assert model.base_model is model.vlm
    assert model.config.get_text_config() is model.vlm.config.get_text_config()


def test_a_base_model_folder_loads_as_a_fresh_fusar_model(tokenizers, family, tmp_path):
    """`from_pretrained` on the base's own folder: FUSAR-GPT around it, only the anchor module new."""
    model, processor = build(tokenizers, family)
    model.vlm.save_pretrained(tmp_path)
    loaded, info = FusarForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] and all(key.startswith("anchor_module.") for key in info["missing_keys"])
    inputs = model_inputs(processor, [random_image(0)], anchors=[random_anchors(0, 4)])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**inputs).logits, model(**inputs).logits)


def test_the_base_models_sub_configs_are_settable_saved_and_loaded(tokenizers, family, tmp_path):
    """`FusarConfig` as transformers' composite configs: its text and vision parts set by keyword, by attribute or by
    `from_pretrained`'s override land in the base's config, which is what is saved and loaded."""
    config = build(tokenizers, family)[0].config
    kwargs = FusarConfig(base_config=config.base_config.to_dict(), text_config={"vocab_size": 301})
    assert kwargs.text_config.vocab_size == kwargs.base_config.text_config.vocab_size == 301
    assert type(kwargs.text_config) is type(config.text_config)
    config.vision_config = type(config.vision_config)(**{**config.vision_config.to_dict(), "hidden_act": "gelu"})
    config.save_pretrained(tmp_path)
    loaded = FusarConfig.from_pretrained(tmp_path, text_config={"vocab_size": 20})
    assert loaded.vision_config.hidden_act == "gelu"
    assert loaded.text_config.vocab_size == 20
    assert loaded.text_config.hidden_size == config.text_config.hidden_size  # only the field asked for changed
    with pytest.raises(ValueError, match="FusarConfig.text_config must be a config or a dict"):
        config.text_config = 5
