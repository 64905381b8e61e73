"""The tasks and splits of the triplet dataset, apart from its schema: the command line needs them, not `datasets`."""

TASKS = ("caption", "counting", "localization", "classification", "detection", "vqa", "landcover")
SPLITS = ("train", "validation", "test")
