"""Pre-training (issue 10 item 2): glip-nano, the pretrain command, its recipe, resuming and shipped weights."""

from __future__ import annotations

import json
import shutil

import pytest
import pytorch_lightning as pl
import torch

from odinw_bench.cli import main
from odinw_bench.data.corpus_reader import read_corpus
from odinw_bench.data.grounding_corpus import GENERATOR_NAME, write_corpus
from odinw_bench.errors import UserError
from odinw_bench.models.glip.backend import GLIPBackend, load_glip
from odinw_bench.models.glip.config import get_preset
from odinw_bench.results.records import iter_records
from odinw_bench.tasks.registry import load_suite
from odinw_bench.training.pretrain import PretrainModule, run_pretraining
from odinw_bench.training.pretrain_data import GroundingCaptions, GroundingCollate
from odinw_bench.training.pretrain_recipe import PretrainConfig, load_pretrain_config

QUICK = ["data.batch_size=2", "data.num_workers=0", "schedule.warmup_steps=0", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "c", n_images=6, seed=0, image_size=(64, 64))


def test_glip_nano_fits_the_size_budget():
    cfg = get_preset("glip-nano")
    n = sum(p.numel() for p in GLIPBackend(cfg).parameters())
    assert n * 2 <= 20e6  # fp16 weights within ~20 MB
    assert cfg.language.bert["vocab_size"] == 30522 and cfg.input.min_size_test == 128


def test_corpus_batches_ground_each_box_on_its_phrase_tokens(corpus):
    data = read_corpus(corpus)
    dataset = GroundingCaptions(data, max_query_len=256)
    grounding = next(i for i, c in enumerate(data.captions) if c.kind == "grounding")
    batch = GroundingCollate(get_preset("glip-nano").input, 256)([dataset[grounding]])
    from odinw_bench.data.tokenizer import get_tokenizer

    caption = data.captions[grounding]
    ids = batch.input_ids[0]
    assert len(batch.targets[0]["positive_map"]) == len(caption.boxes)
    for row, box in zip(batch.targets[0]["positive_map"], caption.boxes):
        start, end = box.spans[0]
        words = get_tokenizer().decode(ids[row.bool()]).replace(" ", "")
        assert words == caption.text[start:end].replace(" ", "")
    # 64x64 images are resized to the preset's 128 px; boxes scale with them (GLIP's x2 = x + w - 1).
    ann = next(a for a in data.annotations if a.id == caption.boxes[0].annotation_id)
    x, y, w, h = ann.bbox
    assert batch.image_sizes[0] == (128, 128)
    assert torch.allclose(batch.targets[0]["boxes"][0], torch.tensor([x, y, x + w - 1, y + h - 1], dtype=torch.float32) * 2)


def test_a_few_pretraining_steps_lower_the_loss_on_a_fixed_batch(corpus):
    pl.seed_everything(0, verbose=False)
    cfg = load_pretrain_config(overrides=QUICK)
    backend = GLIPBackend(get_preset("glip-nano"))
    module = PretrainModule(backend, cfg.to_dict()["optim"], cfg.to_dict()["schedule"])
    dataset = GroundingCaptions(read_corpus(corpus), 256)
    batch = GroundingCollate(backend.config.input, 256)([dataset[i] for i in range(2)])
    optimizer = module.configure_optimizers()["optimizer"]

    def loss() -> torch.Tensor:
        return sum(module.grounding_losses(batch).values())

    module.train()
    with torch.no_grad():
        before = float(loss())
    for _ in range(10):
        optimizer.zero_grad()
        loss().backward()
        torch.nn.utils.clip_grad_norm_(backend.parameters(), cfg.optim.grad_clip_norm)
        optimizer.step()
    with torch.no_grad():
        after = float(loss())
    assert after < 0.8 * before, (before, after)  # about 0.72x after 10 steps of the recipe on 2 captions


class _Crash(Exception):
    pass


class _Interrupt(pl.Callback):
    """Kills the fit after ``at_step`` steps, like a power cut (Lightning turns Ctrl-C itself into an exit)."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.at_step:
            raise _Crash


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_resumed_pretraining_gives_the_weights_of_an_uninterrupted_one(corpus, tmp_path):
    overrides = [*QUICK, "schedule.max_steps=4", "schedule.checkpoint_every=2"]
    whole = run_pretraining(corpus, tmp_path / "whole", overrides=overrides, progress=False)
    with pytest.raises(_Crash):  # after the checkpoint at step 2, before the end
        run_pretraining(corpus, tmp_path / "cut", overrides=overrides, progress=False, callbacks=[_Interrupt(3)])
    assert not (tmp_path / "cut" / "model_card.json").exists()
    with pytest.raises(UserError, match="--resume"):
        run_pretraining(corpus, tmp_path / "cut", overrides=overrides, progress=False)
    resumed = run_pretraining(corpus, tmp_path / "cut", overrides=overrides, progress=False, resume=True)
    a, b = _weights(whole.weights_path), _weights(resumed.weights_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.card["steps"] == 4 and resumed.card["weights"]["sha256"] == whole.card["weights"]["sha256"]


def test_pretrain_command_writes_weights_and_card_that_load_glip_verifies(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(out), "--no-progress", *QUICK,
                 "schedule.max_steps=2", "schedule.checkpoint_every=2"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    for key in ("recipe", "corpus", "seed", "steps", "wall_time_s", "hardware", "software"):
        assert card[key] is not None, key
    assert card["corpus"]["generator"]["name"] == GENERATOR_NAME and card["steps"] == 2
    assert (out / "MODEL_CARD.md").read_text().count(card["weights"]["sha256"]) == 1
    # The card reports the weights' zero-shot AP on the demo suite, from ordinary zero-shot runs under out/.
    figure = card["zero_shot"]
    assert figure["suite"] == "demo_suite" and set(figure["tasks"]) == {t.name for t in load_suite("demo_suite")}
    records = {record["task"]["name"]: record for _, record in iter_records([out / "zero_shot" / "runs"])}
    for task, entry in figure["tasks"].items():
        assert entry["ap"] == round(100 * records[task]["metrics"]["AP"], 2)
    assert figure["mean_ap"] == pytest.approx(sum(t["ap"] for t in figure["tasks"].values()) / 4, abs=0.01)
    assert "Zero-shot AP on `demo_suite`" in (out / "MODEL_CARD.md").read_text()

    models = tmp_path / "models"
    (models / "glip-nano").mkdir(parents=True)
    shutil.copy(out / "glip-nano.safetensors", models / "glip-nano")
    shutil.copy(out / "model_card.json", models / "glip-nano")
    monkeypatch.setenv("ODINW_BENCH_MODELS", str(models))
    loaded = load_glip("glip-nano")
    assert loaded.checkpoint.endswith("glip-nano.safetensors")
    saved = _weights(out / "glip-nano.safetensors")
    name = "backbone.body.patch_embed.proj.weight"
    assert torch.equal(loaded.model.state_dict()[name].half(), saved[name])

    with open(models / "glip-nano" / "glip-nano.safetensors", "r+b") as fh:  # one flipped byte at the end
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    with pytest.raises(UserError, match="does not match"):
        load_glip("glip-nano")
    capsys.readouterr()
    assert main(["run", "--task", "demo", "--shots", "0", "--model", "glip-nano", "--output",
                 str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match" in err[0]


def test_glip_nano_without_shipped_weights_starts_random_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ODINW_BENCH_MODELS", str(tmp_path / "none"))
    with caplog.at_level("WARNING"):
        backend = load_glip("glip-nano")
    assert backend.checkpoint is None and "random weights" in caplog.text
    from odinw_bench.runs.arguments import parse_run_args
    from odinw_bench.runs.identity import resolve_checkpoint
    from odinw_bench.runs.request import requests_from_args

    args = parse_run_args(["--task", "demo", "--shots", "0", "--model", "glip-nano"])
    assert resolve_checkpoint(requests_from_args(args, check_data=False)[0]) is None  # random init, as glip-micro


@pytest.mark.parametrize("breakage, field", [
    (lambda c: c.pop("format"), "format"),
    (lambda c: c["captions"][1]["boxes"][0].update(spans=[[3, 999]]), "captions[1].boxes[0].spans[0]"),
    (lambda c: c["annotations"][0].update(bbox=[1, 2, 0, 5]), "annotations[0].bbox"),
])
def test_a_corrupt_corpus_is_one_line_naming_file_and_field_and_writes_nothing(corpus, tmp_path, capsys,
                                                                              breakage, field):
    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    data = json.loads((broken / "corpus.json").read_text())
    breakage(data)
    (broken / "corpus.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["pretrain", "--corpus", str(broken), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corpus.json" in err[0] and f"'{field}'" in err[0]
    assert not out.exists()


def test_not_a_corpus_and_a_missing_image_are_refused(corpus, tmp_path, capsys):
    assert main(["pretrain", "--corpus", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "corpus.json is missing" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    (broken / "images" / "000002.png").unlink()
    assert main(["pretrain", "--corpus", str(broken), "--out", str(tmp_path / "out")]) == 2
    assert "000002.png" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_recipe_with_an_unknown_key_names_the_file_and_key(corpus, tmp_path, capsys):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("schedule:\n  max_stepz: 3\n")
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(tmp_path / "out"), "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(recipe) in err and "schedule.max_stepz" in err and "max_steps" in err
    assert not (tmp_path / "out").exists()


def test_the_recipe_file_and_the_schema_defaults_agree():
    assert load_pretrain_config().to_dict() == PretrainConfig().to_dict()


def test_corpus_command_writes_a_corpus_pretrain_reads_and_refuses_bad_values(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["corpus", "--out", str(out), "--images", "3", "--size", "64x48", "--no-progress"]) == 0
    assert "3 images" in capsys.readouterr().out
    corpus = read_corpus(out)
    assert len(corpus.images) == 3 and (corpus.images[0].width, corpus.images[0].height) == (64, 48)
    assert main(["corpus", "--out", str(out), "--images", "3"]) == 2  # exists: refused, nothing changed
    assert "already exists" in capsys.readouterr().err
    for bad in (["--images", "0"], ["--size", "64"], ["--size", "16x16"]):
        assert main(["corpus", "--out", str(tmp_path / "other"), *bad]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "other").exists()
