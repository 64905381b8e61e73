"""lmms-eval's `lmms_eval.models` entry point for `fusar_gpt`. Kept apart from the model class: lmms-eval calls this
while it builds its registry, and importing the class (which imports lmms-eval) from here would be circular."""

import hub_kernels  # noqa: F401  (before peft: bitsandbytes then looks up no Hub kernel unasked)


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest("fusar_gpt", simple_class_path="evaluation.lmms_model.FusarGPT", aliases=("fusar-gpt",))]
