"""`fusar-data retext`: a harvested dataset's texts made again from its stored facts, with other templates.

Each row's id ends in the key of its text (`<scene>-<task>-<key>`, keys as `facts.texts` names them), so every
row gets the new wording of the same question and the same answer; images, anchors and facts are kept as they are.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from output_folders import DATASET_FILES, check_replaceable, replace_folder

from .facts import load_templates, texts
from .loading import load_triplet_dataset


def retext(dataset_name: str, output, templates_path, overwrite: bool = False) -> Path:
    output = Path(output)
    check_replaceable(output, overwrite=overwrite, owned=DATASET_FILES, tool="fusar-data")
    templates = load_templates(templates_path)
    dataset = load_triplet_dataset(dataset_name)
    missing = [split for split, part in dataset.items() if "facts" not in part.column_names]
    if missing:
        raise ValueError(f"{dataset_name}: split {missing[0]} has no `facts` column; only a harvested dataset "
                         "(fusar-data harvest) can be made again from its facts")

    def rewrite(row):
        key = row["id"].rsplit("-", 1)[1]
        made = {k: (question, answer) for k, _, question, answer in texts(json.loads(row["facts"]), templates)}
        if key not in made:
            raise ValueError(f"{dataset_name}: row {row['id']}: its facts give no text {key!r}")
        question, answer = made[key]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}

    work = Path(f"{output}.partial")
    shutil.rmtree(work, ignore_errors=True)
    for split, part in dataset.items():
        part.map(rewrite, desc=f"{split} texts").to_parquet(str(work / "data" / f"{split}-00000-of-00001.parquet"))
    card = card_of(dataset_name)
    (work / "README.md").write_text(card + f"\nTexts made again from the stored facts with the templates of "
                                    f"`{Path(templates_path).name}` (`fusar-data retext`).\n")
    replace_folder(work, output)
    return output


def card_of(dataset_name: str) -> str:
    local = Path(dataset_name) / "README.md"
    if local.is_file():
        return local.read_text()
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(dataset_name, "README.md", repo_type="dataset")).read_text()
