"""Column mapping, tokenising and the counting of every unusable row."""

import json

import numpy as np
import pytest

from ecomtl.config.load import config_from_dict
from ecomtl.data.collate import collate
from ecomtl.data.prepare import prepare_data
from ecomtl.data.sources import DataError
from ecomtl.model.build import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    from ecomtl.config.schema import ModelConfig

    return load_tokenizer(ModelConfig())


def write_split(root, split, rows):
    (root / "toy").mkdir(exist_ok=True)
    with open(root / "toy" / f"{split}.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def toy_cfg(root):
    return config_from_dict({
        "name": "toy", "data_root": str(root),
        "sources": {"toy": {"path": "{root}/toy/{split}.jsonl", "text": ["title", "body"], "max_length": 16}},
        "tasks": {"stars": {"source": "toy", "head": "classification", "label": "stars"},
                  "kind": {"source": "toy", "head": "classification", "label": "kind"}},
    })


def test_missing_text_and_labels_are_counted_not_dropped_silently(tmp_path, tokenizer):
    train = [
        {"title": "great shoes", "body": "fit well", "stars": 5, "kind": "shoe"},
        {"title": None, "body": "too small", "stars": 1, "kind": "shoe"},
        {"title": "", "body": "", "stars": 3, "kind": "hat"},  # no text at all
        {"title": "warm hat", "body": None, "stars": None, "kind": "hat"},  # one label missing
        {"title": "odd", "body": "thing", "stars": None, "kind": None},  # no label at all
    ]
    val = [
        {"title": "nice", "body": "", "stars": 4, "kind": "shoe"},  # 4 never seen in train
        {"title": "ok", "body": "fine", "stars": 5, "kind": "scarf"},  # scarf never seen
    ]
    write_split(tmp_path, "train", train)
    write_split(tmp_path, "validation", val)
    data = prepare_data(toy_cfg(tmp_path), tokenizer)
    tr = data.report()["train"]["toy"]
    assert tr["rows_read"] == 5 and tr["rows_used"] == 3
    assert tr["skipped"] == {"missing_text": 1, "no_label": 1}
    assert tr["tasks"]["stars"] == {"missing_label": 2}
    assert data.label_infos["stars"]["names"] == ["1", "3", "5"]  # 3 came from a textless row: still a label
    va = data.report()["validation"]["toy"]
    assert va["tasks"] == {"stars": {"unknown_label": 1}, "kind": {"unknown_label": 1}}
    assert va["rows_used"] == 2
    split = data.splits["train"]["toy"]
    assert split.labels["stars"][2] == -100  # 'warm hat' has no stars: ignored by that head only
    # "title. body" joined, empty parts skipped
    assert tokenizer.decode(split.input_ids[0], skip_special_tokens=True) == "great shoes. fit well"


def test_bad_column_names_source_and_column(tmp_path, tokenizer):
    write_split(tmp_path, "train", [{"title": "a", "body": "b", "stars": 1, "kind": "x"}])
    cfg = toy_cfg(tmp_path)
    cfg.sources["toy"].text = ["title", "headline"]
    with pytest.raises(DataError, match=r"sources\.toy.*headline"):
        prepare_data(cfg, tokenizer, splits=("train",))


def test_missing_split_file_is_named(tmp_path, tokenizer):
    write_split(tmp_path, "train", [{"title": "a", "body": "b", "stars": 1, "kind": "x"}, {"title": "c", "body": "d", "stars": 2, "kind": "y"}])
    with pytest.raises(DataError, match="split 'validation'"):
        prepare_data(toy_cfg(tmp_path), tokenizer)


def test_real_tagging_alignment_and_pairs(tiny_cfg, tokenizer):
    data = prepare_data(tiny_cfg, tokenizer, splits=("train",))
    q = data.splits["train"]["queries"]
    names = data.label_infos["attributes"]["names"]
    ids, labels = q.input_ids[0], q.labels["attributes"][0]
    assert len(ids) == len(labels) and labels[0] == -100 and labels[-1] == -100
    # first row of queryner train: teeth whitening sensitive teeth
    assert [names[x] for x in labels if x != -100] == ["B-core_product_type", "I-core_product_type", "B-modifier", "I-modifier"]
    offers = data.splits["train"]["offers"]
    assert offers.token_type_ids is not None and max(offers.token_type_ids[0]) == 1  # a real pair
    assert max(len(x) for x in offers.input_ids) <= 64
    batch = collate(q, np.arange(4), tokenizer.pad_token_id, {"attributes": __import__("torch").long})
    width = batch["input_ids"].shape[1]
    assert width == max(len(q.input_ids[i]) for i in range(4))  # padded to the batch, not max_length
    assert batch["labels"]["attributes"].shape == (4, width)
    assert (batch["attention_mask"].sum(1).numpy() == [len(q.input_ids[i]) for i in range(4)]).all()
