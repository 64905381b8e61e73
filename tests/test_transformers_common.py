"""transformers' own common model tests (`ModelTesterMixin`) on FUSAR-GPT, beside the stock Qwen2.5-VL.

The model tester follows transformers' `Qwen2_5_VLVisionText2TextModelTester`: a 4-layer, 32-wide Qwen2.5-VL with a
2-layer vision tower, one 14-px image (one visual token) per row. FUSAR-GPT gets the same config as its base and
anchors for every image, so the anchor path runs in every test. Every test the stock model passes, FUSAR-GPT must
pass too; the skips below are the stock model's own (transformers' Qwen2.5-VL test case) or say why they do not
apply.
"""

from __future__ import annotations

import re
import unittest
from unittest.mock import patch

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from modeling_fusar import FusarConfig, FusarForConditionalGeneration
from transformers_common import import_configuration_common, import_modeling_common

try:
    common = import_modeling_common()
    configuration_common = import_configuration_common()
except Exception as error:  # no network to PyPI, no pip, a version without the file: say so, run the rest
    pytest.skip(f"transformers' common model tests are not available: {error}", allow_module_level=True)

# Some common tests record deprecation warnings, which the project's pytest settings otherwise silence.
pytestmark = pytest.mark.filterwarnings("default::DeprecationWarning")


class QwenVLTester:
    """Config and inputs as transformers' Qwen2.5-VL test builds them (bos 0, eos 1, pad 2, image token 4)."""

    batch_size, seq_length, num_image_tokens, image_size = 3, 7 + 32, 32, 14
    vocab_size, hidden_size, num_hidden_layers, num_attention_heads = 99, 32, 2, 4
    pad_token_id, image_token_id, video_token_id, vision_start_token_id = 2, 4, 5, 3
    is_training = True
    # What the common tests read to count the vision tower's layers (Qwen calls it `depth`).
    vision_config = {"num_hidden_layers": 2}

    def __init__(self, parent, with_anchors: bool):
        self.parent = parent
        self.with_anchors = with_anchors

    def get_base_config(self) -> Qwen2_5_VLConfig:
        return Qwen2_5_VLConfig(
            hidden_size=self.hidden_size, intermediate_size=37, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=2, hidden_act="silu",
            max_position_embeddings=512, max_window_layers=3, tie_word_embeddings=True,
            rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}, bos_token_id=0, eos_token_id=1,
            pad_token_id=self.pad_token_id, vision_start_token_id=self.vision_start_token_id,
            image_token_id=self.image_token_id, video_token_id=self.video_token_id, vocab_size=self.vocab_size,
            vision_config={"depth": 2, "in_chans": 3, "hidden_act": "silu", "intermediate_size": 32,
                           "out_hidden_size": 32, "hidden_size": 32, "num_heads": 4, "patch_size": 14,
                           "spatial_patch_size": 14, "spatial_merge_size": 1, "temporal_patch_size": 2},
        )

    def get_config(self):
        base = self.get_base_config()
        return FusarConfig(base_config=base) if self.with_anchors else base

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        patches = self.batch_size * self.image_size**2 // 14**2
        pixel_values = common.floats_tensor([patches, 3 * 14**2 * 2])
        input_ids = common.ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_ids[:, -1] = self.pad_token_id
        for token in (self.video_token_id, self.image_token_id, self.vision_start_token_id):
            input_ids[input_ids == token] = self.pad_token_id
        input_ids[:, self.num_image_tokens] = self.image_token_id
        input_ids[:, self.num_image_tokens - 1] = self.vision_start_token_id
        inputs = {
            "pixel_values": pixel_values,
            "image_grid_thw": torch.tensor([[1, 1, 1]] * self.batch_size),
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
        }
        if self.with_anchors:
            anchors = 5
            inputs["anchor_values"] = torch.nn.functional.normalize(torch.randn(self.batch_size, anchors, 1, 64), dim=-1)
            inputs["anchor_positions"] = torch.rand(self.batch_size, anchors, 2)
            inputs["anchor_mask"] = torch.ones(self.batch_size, anchors, 1, dtype=torch.bool)
        return config, inputs


class CommonTests(common.ModelTesterMixin):
    """The skips that transformers' own Qwen2.5-VL test case makes, for both models alike."""

    with_anchors = False
    test_pruning = False
    test_head_masking = False

    def setUp(self):
        self.model_tester = QwenVLTester(self, self.with_anchors)
        # As transformers' Qwen2.5-VL test builds its ConfigTester (no text modality of its own: its parts have one);
        # FUSAR-GPT's with fields of its own, which the tester checks are saved.
        config_class, fields = (FusarConfig, {"anchor_dim": 128, "anchor_sigma": 1.5}) if self.with_anchors else (
            Qwen2_5_VLConfig, {})
        self.config_tester = configuration_common.ConfigTester(self, config_class=config_class, has_text_modality=False,
                                                               **fields)

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip("Qwen2.5-VL: feed-forward chunking is not supported (transformers' own skip)")
    def test_feed_forward_chunking(self):
        pass

    @unittest.skip("Qwen2.5-VL: CPU offload is not supported (transformers' own skip)")
    def test_cpu_offload(self):
        pass

    @unittest.skip("Qwen2.5-VL: undefined behaviour with its test versions (transformers' own skip)")
    def test_disk_offload_bin(self):
        pass

    @unittest.skip("Qwen2.5-VL: undefined behaviour with its test versions (transformers' own skip)")
    def test_disk_offload_safetensors(self):
        pass

    @unittest.skip("Qwen2.5-VL: undefined behaviour with its test versions (transformers' own skip)")
    def test_model_parallelism(self):
        pass

    @unittest.skip("Qwen2.5-VL: compile not supported (transformers' own skip)")
    def test_sdpa_can_dispatch_on_flash(self):
        pass

    @unittest.skip("Qwen2.5-VL: the tester cannot make a smaller model (transformers' own skip)")
    def test_model_is_small(self):
        pass

    @unittest.skip("GenerationTesterMixin is not in transformers' sdist, so no test class here can inherit it")
    def test_generation_tester_mixin_inheritance(self):
        pass


class StockQwen2_5_VLTest(CommonTests, unittest.TestCase):
    all_model_classes = (Qwen2_5_VLForConditionalGeneration,)


class FusarQwen2_5_VLTest(CommonTests, unittest.TestCase):
    all_model_classes = (FusarForConditionalGeneration,)
    with_anchors = True

    def setUp(self):
        super().setUp()
        # The common tests find a model's head type by class name in transformers' static tables (labels for
        # training, the shifted-labels check); a model registered at run time with AutoModelForImageTextToText is
        # not in them, so it is added for the duration of each test.
        names = patch.dict(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, {FusarConfig.model_type: "FusarForConditionalGeneration"})
        names.start()
        self.addCleanup(names.stop)

    @unittest.skip("FUSAR-GPT has no headless AutoModel class (it wraps a whole image-text-to-text model), which this "
                   "test looks up in MODEL_MAPPING; saving and loading are covered by test_save_load and others")
    def test_torch_save_load(self):
        pass

    @unittest.skip("The TP plan is the base model's, declared by base_config.text_config, a level below where this test "
                   "looks; test_the_tensor_parallel_plan_is_the_base_models checks it")
    def test_tp_plan_matches_params(self):
        pass


def test_the_tensor_parallel_plan_is_the_base_models():
    """Each entry of the stock model's plan, under `vlm.`, and every entry names a module or parameter of FUSAR-GPT."""
    tester = QwenVLTester(None, with_anchors=True)
    stock = Qwen2_5_VLForConditionalGeneration(tester.get_base_config())
    model = FusarForConditionalGeneration(tester.get_config())
    assert model.tp_plan == {f"vlm.{pattern}": plan for pattern, plan in stock.tp_plan.items()}
    names = [name for name, _ in [*model.named_parameters(), *model.named_modules()]]
    for pattern in model.tp_plan:
        regex = re.compile(re.escape(pattern).replace(r"\*", r"\d+") + r"(\.|$)")
        assert any(regex.match(name) for name in names), pattern
