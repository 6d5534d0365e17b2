"""Prompts, the offline tokenizer and positive maps: parity with the official GLIP outputs and GLIP's rules."""

from __future__ import annotations

import logging

import pytest
import torch

from odinw_bench.data.prompts import (
    Caption,
    TaskPrompt,
    build_caption,
    chunk_categories,
    clean_name,
    positive_map,
    positive_map_tensor,
)
from odinw_bench.data.tokenizer import (
    count_tokens,
    get_tokenizer,
    tokenize_prompts,
    vocab_path,
)
from odinw_bench.errors import UserError
from odinw_bench.tasks.spec import (
    CaptionPart,
    CategorySpec,
    PromptSpec,
    SplitSpec,
    TaskSpec,
)

FIXTURE_NAMES = ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish"]
PASCAL_VOC = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
# configs/odinw_35 Aquarium CAPTION_PROMPT (glip_protocol.md §1.4).
AQUARIUM_35 = [
    (" ", "fish", ""),
    ("", "jellyfish", ""),
    ("", "penguin", " , which is black and white"),
    ("", "puffin", " with orange beaks "),
    ("", "shark", ""),
    ("", "starfish", ""),
    ("", "stingray", " which is flat and round"),
]
AQUARIUM_35_TEXT = (
    " fish. jellyfish. penguin , which is black and white. puffin with orange beaks . shark. starfish. "
    "stingray which is flat and round"
)


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer()


def label_tokens(tokenizer, caption: Caption, label_map: dict[int, list[int]]) -> dict[int, list[str]]:
    """Word pieces of each label, read back from the tokenized caption."""
    ids = tokenizer(caption.text)["input_ids"]
    return {label: tokenizer.convert_ids_to_tokens([ids[i] for i in idx]) for label, idx in label_map.items()}


def aquarium_prompt() -> PromptSpec:
    return PromptSpec(caption=[CaptionPart(prefix=p, name=n, suffix=s) for p, n, s in AQUARIUM_35])


# --- tokenizer ---------------------------------------------------------------------------------------------


def test_tokenizer_is_offline_cached_and_reads_the_vocabulary(tokenizer):
    assert get_tokenizer() is tokenizer
    assert len(tokenizer) == 30522
    pieces = tokenizer.tokenize("fish. jellyfish. Cottontail-Rabbit. pottedplant")
    # The expected split is documented with the vocabulary (shared assets README), not taken from this code.
    assert pieces == "fish . jelly ##fish . cotton ##tail - rabbit . pot ##ted ##pl ##ant".split()
    assert [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id] == [101, 102, 0]


def test_guard_rejects_the_transformers5_all_unk_trap():
    from transformers import BertTokenizerFast

    from odinw_bench.data.tokenizer import _check_vocabulary

    trap = BertTokenizerFast(vocab_file=vocab_path(), do_lower_case=True)  # keyword silently ignored
    with pytest.raises(RuntimeError, match=r"\[UNK\]"):
        _check_vocabulary(trap, vocab_path())


def test_tokenize_prompts_pads_and_truncates(tokenizer):
    batch = tokenize_prompts(["fish", "word " * 400], max_length=256)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 256)
    assert batch["input_ids"].dtype == torch.int64
    assert batch["input_ids"][0, :3].tolist() == [101, tokenizer.convert_tokens_to_ids("fish"), 102]
    assert batch["input_ids"][0, 3:].eq(0).all() and batch["attention_mask"][0].sum() == 3
    assert batch["input_ids"][1, -1] == 102 and batch["attention_mask"][1].all()


# --- parity with the official GLIP fixture -----------------------------------------------------------------


def test_caption_and_spans_match_fixture(glip_reference):
    meta = glip_reference.meta
    caption = build_caption(FIXTURE_NAMES)
    assert caption.text == meta["caption"]
    assert {str(i + 1): list(span) for i, span in enumerate(caption.spans)} == meta["caption_char_spans"]


def test_positive_map_matches_fixture(glip_reference, tokenizer):
    label_map = positive_map(build_caption(FIXTURE_NAMES), tokenizer)
    assert {str(k): v for k, v in label_map.items()} == glip_reference.meta["positive_map_label_to_token"]
    dense = positive_map_tensor(label_map, num_labels=6)
    assert torch.equal(dense, glip_reference.inputs["text.positive_map_label_to_token"])


def test_tokenization_matches_fixture(glip_reference, tokenizer):
    inputs = glip_reference.inputs
    caption = glip_reference.meta["caption"]
    batch = tokenize_prompts([caption, caption])
    assert torch.equal(batch["input_ids"], inputs["text.input_ids"])
    assert torch.equal(batch["attention_mask"], inputs["text.attention_mask"])
    real = int(glip_reference.meta["num_real_tokens"])
    assert tokenizer.convert_ids_to_tokens(batch["input_ids"][0, :real].tolist()) == glip_reference.meta["tokens"]


def test_task_prompt_matches_fixture(glip_reference):
    prompt = TaskPrompt.from_names(FIXTURE_NAMES)
    assert prompt.captions == [glip_reference.meta["caption"]]
    chunk = prompt.chunks[0]
    assert chunk.labels == tuple(range(6))
    assert torch.equal(chunk.positive_map_tensor(), glip_reference.inputs["text.positive_map_label_to_token"])


# --- clean_name and plain captions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("cat (animal)", "cat "),  # greedy removal keeps the space before "("
        ("x (a) y (b)", "x "),  # greedy: from the first "(" to the last ")"
        ("traffic_light", "traffic light"),
        ("a__b", "a b"),
        ("a___b", "a  b"),  # one pass: three spaces become two
        ("Cottontail-Rabbit", "Cottontail-Rabbit"),
    ],
)
def test_clean_name(raw, clean):
    assert clean_name(raw) == clean


def test_pascal_voc_fits_one_chunk_every_name_mapped(tokenizer):
    prompt = TaskPrompt.from_names(PASCAL_VOC)
    assert len(prompt.chunks) == 1
    chunk = prompt.chunks[0]
    assert chunk.text == ". ".join(PASCAL_VOC)  # glip_protocol.md §1.3 table
    assert sorted(chunk.positive_map) == list(range(1, 21))
    pieces = label_tokens(tokenizer, chunk.caption, chunk.positive_map)
    for label, name in enumerate(PASCAL_VOC, start=1):
        assert "[UNK]" not in pieces[label]
        assert "".join(p.removeprefix("##") for p in pieces[label]) == name


def test_multi_word_hyphenated_and_parenthesised_names(tokenizer):
    names = ["Cottontail-Rabbit", "flat mushroom", "pottedplant", "cat (animal)", "dog"]
    caption = build_caption(names)
    assert caption.text == "Cottontail-Rabbit. flat mushroom. pottedplant. cat . dog"
    spans = [caption.text[s:e] for s, e in caption.spans]
    assert spans == ["Cottontail-Rabbit", "flat mushroom", "pottedplant", "cat ", "dog"]
    label_map = positive_map(caption, tokenizer)
    pieces = label_tokens(tokenizer, caption, label_map)
    assert pieces == {
        1: ["cotton", "##tail", "-", "rabbit"],
        2: ["flat", "mushroom"],
        3: ["pot", "##ted", "##pl", "##ant"],
        4: ["cat"],  # end-1 is the trailing space: GLIP's end-2 fallback lands on "cat"
        5: ["dog"],
    }
    # Every label's tokens are a contiguous run after [CLS].
    assert all(toks == list(range(toks[0], toks[-1] + 1)) and toks[0] >= 1 for toks in label_map.values())


def test_renames_and_separator():
    spec = PromptSpec(separator=" ", names=["rabbit_animal", "yellow (x) mushroom"])
    caption = build_caption(["Cottontail-Rabbit", "chanterelle"], spec)
    assert caption.text == "rabbit animal yellow mushroom"
    assert [caption.text[s:e] for s, e in caption.spans] == ["rabbit animal", "yellow mushroom"]


def test_prompt_lengths_must_match_categories():
    with pytest.raises(UserError, match="2 entries but the task has 3") as err:
        build_caption(["a", "b", "c"], PromptSpec(names=["x", "y"]))
    assert err.value.field == "prompt.names"
    with pytest.raises(UserError) as err:
        build_caption(["a", "b"], PromptSpec(caption=[CaptionPart(name="x")]))
    assert err.value.field == "prompt.caption"


# --- caption prompts (odinw_35) ----------------------------------------------------------------------------


def test_aquarium_caption_prompt_string_and_spans(tokenizer):
    names = [n for _, n, _ in AQUARIUM_35]
    caption = build_caption(names, aquarium_prompt())
    assert caption.text == AQUARIUM_35_TEXT
    assert [caption.text[s:e] for s, e in caption.spans] == names
    assert caption.spans[0] == (1, 5)  # the prefix " " is not part of the span
    pieces = label_tokens(tokenizer, caption, positive_map(caption, tokenizer))
    assert pieces[3] == ["penguin"] and pieces[4] == ["puff", "##in"]  # suffixes are context only
    assert "".join(p.removeprefix("##") for p in pieces[7]) == "stingray"


def test_caption_prompt_names_cleaned_only_for_training():
    parts = [CaptionPart(prefix="a ", name="sea_lion (animal)", suffix=" here"), CaptionPart(name="b")]
    spec = PromptSpec(caption=parts)
    evaluation = build_caption(["x", "y"], spec)
    training = build_caption(["x", "y"], spec, for_training=True)
    assert evaluation.text == "a sea_lion (animal) here. b"  # create_queries_and_maps uses the name verbatim
    assert training.text == "a sea lion  here. b"  # convert_od_to_grounding_simple applies clean_name
    assert training.text[slice(*training.spans[0])] == "sea lion "


def test_caption_prompt_from_task_yaml_style_mapping():
    spec = PromptSpec(caption=[{"prefix": "there is a ", "name": "package", "suffix": " on the porch"}])
    assert build_caption(["package"], spec).text == "there is a package on the porch"


# --- chunking ----------------------------------------------------------------------------------------------


def test_long_list_is_chunked_without_loss(tokenizer):
    names = [f"object_{i} kind" for i in range(300)]
    chunks = chunk_categories(names, None, tokenizer)
    assert len(chunks) > 1
    covered = [label for chunk in chunks for label in chunk.labels]
    assert covered == list(range(300))  # every label exactly once, in order
    for number, chunk in enumerate(chunks):
        assert count_tokens(chunk.text, tokenizer) <= 256
        assert chunk.text == ". ".join(clean_name(names[i]) for i in chunk.labels)
        assert sorted(chunk.positive_map) == list(range(1, len(chunk.labels) + 1))
        assert max(max(t) for t in chunk.positive_map.values()) < 256
        assert chunk.positive_map_tensor().shape == (len(chunk.labels), 256)
        if number < len(chunks) - 1:  # greedy: the next category would not have fitted
            grown = ". ".join(clean_name(names[i]) for i in (*chunk.labels, chunk.labels[-1] + 1))
            assert count_tokens(grown, tokenizer) > 256
    last = chunks[-1]
    pieces = label_tokens(tokenizer, last.caption, last.positive_map)
    assert pieces[len(last.labels)] == tokenizer.tokenize(clean_name(names[last.labels[-1]]))


def test_category_too_long_alone_is_a_user_error(tokenizer):
    names = ["cat", "very long name " * 10, "dog"]
    with pytest.raises(UserError, match="category 1") as err:
        chunk_categories(names, None, tokenizer, max_length=16)
    assert err.value.field == "categories[1].name"


def test_label_without_tokens_is_skipped_and_reported(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="odinw_bench.data.prompts"):
        chunk = chunk_categories(["fish", "(x)"], None, tokenizer)[0]
    assert chunk.text == "fish. "
    assert chunk.positive_map == {1: [1]}  # as GLIP: the empty span maps to nothing
    assert "maps to no token" in caplog.text
    assert chunk.positive_map_tensor()[1].sum() == 0


def test_positive_map_tensor_rejects_bad_indices():
    with pytest.raises(ValueError, match="label 3"):
        positive_map_tensor({3: [1]}, num_labels=2)
    with pytest.raises(ValueError, match="token indices"):
        positive_map_tensor({1: [256]}, num_labels=1)


# --- task integration --------------------------------------------------------------------------------------


def test_task_prompt_from_task_variants():
    task = TaskSpec(
        name="aquarium",
        display_name="Aquarium",
        root="Aquarium",
        categories=[CategorySpec(id=i + 1, name=n) for i, (_, n, _) in enumerate(AQUARIUM_35)],
        splits={"test": SplitSpec(ann_file="a.json", img_dir="img")},
        prompt_variants={"odinw_35": aquarium_prompt()},
    )
    assert TaskPrompt.from_task(task).captions == [". ".join(task.category_names)]
    engineered = TaskPrompt.from_task(task, "odinw_35")
    assert engineered.captions == [AQUARIUM_35_TEXT] and engineered.num_labels == 7
    with pytest.raises(UserError, match="unknown prompt variant 'nope'"):
        TaskPrompt.from_task(task, "nope")
