"""Generation continued from a KV cache, and the base model's helpers where transformers' code looks for them: what a
server's second turn and transformers' own generation tests (test_generate_continue_from_past_key_values,
test_*_padding_matches_padding_free_with_position_ids) ask of FUSAR-GPT."""

import pytest
import torch

from conftest import build, model_inputs, random_anchors, random_image

GREEDY = dict(do_sample=False, eos_token_id=-1, pad_token_id=-1, return_dict_in_generate=True, output_scores=True)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_generation_continued_from_the_cache_equals_one_call_with_the_anchors_given_again(tokenizers, family):
    model, processor = build(tokenizers, family, modulate=True)
    inputs = model_inputs(processor, [random_image(0), random_image(1)], anchors=[random_anchors(0, 9), random_anchors(1, 4)])
    whole = model.generate(**inputs, max_new_tokens=4, **GREEDY)
    first = model.generate(**inputs, max_new_tokens=3, **GREEDY)
    anchors = {name: value for name, value in inputs.items() if name.startswith("anchor_")}
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(first.sequences[:, inputs["input_ids"].shape[1]:])], 1)
    extra = {"image_grid_thw": inputs["image_grid_thw"]} if "image_grid_thw" in inputs else {}
    # The images are in the cache, encoded with their anchors: the anchors come again (as a caller keeping its inputs
    # sends them), no pixel_values do, and nothing is encoded twice.
    continued = model.generate(input_ids=first.sequences, attention_mask=mask, cache=first.past_key_values,
                               max_new_tokens=1, **anchors, **extra, **GREEDY)
    assert torch.equal(continued.sequences, whole.sequences)
    torch.testing.assert_close(torch.stack([*first.scores, *continued.scores]), torch.stack(whole.scores))
    # transformers' deprecated name still works, and its warning points at the caller's line, not at FUSAR-GPT's.
    first = model.generate(**inputs, max_new_tokens=3, **GREEDY)
    with pytest.warns(FutureWarning, match="past_key_values") as caught:
        again = model.generate(input_ids=first.sequences, attention_mask=mask, past_key_values=first.past_key_values,
                               max_new_tokens=1, **anchors, **extra, **GREEDY)
    assert [warning.filename for warning in caught] == [__file__]
    assert torch.equal(again.sequences, whole.sequences)


def test_anchors_without_images_or_a_cache_are_still_refused(tokenizers):
    model, processor = build(tokenizers, "qwen2_5_vl")
    anchors = model_inputs(processor, [random_image(0)], anchors=[random_anchors(0, 4)])
    text = processor.tokenizer(["no image here"], return_tensors="pt")
    extra = {name: value for name, value in anchors.items() if name.startswith("anchor_")}
    with pytest.raises(ValueError, match="anchor_values need pixel_values"):
        model.generate(**text, **extra, max_new_tokens=2)
    with pytest.raises(ValueError, match="anchor_values need pixel_values"):
        model(**text, **extra)


def test_model_model_is_the_base_models_inner_model_and_holds_no_weights_of_its_own(tokenizers):
    model, _ = build(tokenizers, "qwen2_5_vl")
    assert model.model is model.vlm.model
    assert not any(name.startswith("model.") for name in model.state_dict())


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_padding_free_rows_with_position_ids_give_the_padded_batchs_logits(tokenizers, attention, tmp_path):
    """Two left-padded rows against one packed row whose 3-D positions come from `model.model.get_rope_index`."""
    model, processor = build(tokenizers, "qwen2_5_vl", modulate=True)
    model.save_pretrained(tmp_path)
    model = type(model).from_pretrained(tmp_path, attn_implementation=attention).eval()
    prompts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                             add_generation_prompt=True) for q in ("Ships?", "How many ships are there in all?")]
    processor.tokenizer.padding_side = "left"
    inputs = processor(images=[random_image(0), random_image(1)], text=prompts, anchors=[random_anchors(0, 9), random_anchors(1, 4)],
                       padding=True, return_tensors="pt")
    mask = inputs["attention_mask"].bool()
    assert not mask.all()  # the rows differ in length: padding is there to remove
    rope = model.model.get_rope_index(inputs["input_ids"], image_grid_thw=inputs["image_grid_thw"],
                                      attention_mask=inputs["attention_mask"], mm_token_type_ids=inputs["mm_token_type_ids"])[0]
    text_positions = torch.cat([torch.arange(int(row.sum())) for row in mask])
    position_ids = torch.cat([text_positions[None], rope[:, mask]])[:, None, :]  # (4, 1, tokens): text, then t/h/w
    packed = {name: value for name, value in inputs.items() if name not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    with torch.no_grad():
        padded = model(**inputs).logits
        padding_free = model(input_ids=inputs["input_ids"][mask][None], position_ids=position_ids,
                             use_cache=False, **packed).logits  # no cache: position resets mark the rows
    torch.testing.assert_close(padding_free[0], padded[mask], atol=1e-4, rtol=1e-4)


def test_too_few_images_for_the_image_tokens_is_reported_in_transformers_words_before_the_anchors_are_matched(tokenizers):
    """transformers' test_mismatching_num_image_tokens drops images and keeps every other input, anchors included."""
    model, processor = build(tokenizers, "qwen2_5_vl")
    inputs = model_inputs(processor, [random_image(0), random_image(1)], anchors=[random_anchors(0, 4), random_anchors(1, 4)])
    patches = int(inputs["image_grid_thw"][0].prod())
    inputs["pixel_values"], inputs["image_grid_thw"] = inputs["pixel_values"][:patches], inputs["image_grid_thw"][:1]
    with pytest.raises(ValueError, match="^Image features and image tokens do not match"):
        model(**inputs)
