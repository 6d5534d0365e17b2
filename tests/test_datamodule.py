"""The k-shot ODinW data module on the synthetic demo task (glip-micro preprocessing, CPU)."""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch

from odinw_bench.data.images import CorruptImageError
from odinw_bench.data.sampling import ShortfallWarning, sample_kshot
from odinw_bench.data.task_files import load_task_split, prepare_data_root
from odinw_bench.errors import UserError
from odinw_bench.models.glip.backend import GLIPBackend
from odinw_bench.tasks.registry import load_task
from odinw_bench.training.datamodule import (
    BackendBatchBuilder,
    GLIPBatchBuilder,
    ODinWDataModule,
    glip_train_target,
    make_batch_builder,
)
from odinw_bench.training.run_config import glip_dataset_copies

TASK = load_task("demo")


@pytest.fixture(autouse=True)
def _quiet_shortfalls():
    # Small synthetic val samples lack some categories; the warning is expected and not under test here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShortfallWarning)
        yield


@pytest.fixture(scope="module")
def backend():
    return GLIPBackend.from_preset("glip-micro")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return prepare_data_root(TASK, tmp_path_factory.mktemp("data"))


@pytest.fixture()
def private_root(tmp_path):
    """A data root this test may damage."""
    return prepare_data_root(TASK, tmp_path / "data")


def make(backend, root, **kwargs) -> ODinWDataModule:
    kwargs.setdefault("shots", 3)
    kwargs.setdefault("seed", 30)
    dm = ODinWDataModule(task=TASK, data_root=root, backend=backend, **kwargs)
    dm.setup()
    return dm


def file_boxes(root, folder: str) -> dict[int, list[list[float]]]:
    """Image id -> the file's [x, y, w, h] boxes, read straight from the JSON."""
    data = json.loads((root / "demo" / folder / "annotations_without_background.json").read_text())
    boxes = {im["id"]: [] for im in data["images"]}
    for ann in data["annotations"]:
        boxes[ann["image_id"]].append(ann["bbox"])
    return boxes


def epoch_batches(loader, epoch: int = 0) -> list:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def assert_same_batches(a, b) -> None:
    assert [x.image_ids for x in a] == [y.image_ids for y in b]
    for x, y in zip(a, b):
        assert torch.equal(x.images, y.images)
        assert x.image_sizes == y.image_sizes
        for tx, ty in zip(x.targets, y.targets):
            assert torch.equal(tx["boxes"], ty["boxes"]) and torch.equal(tx["labels"], ty["labels"])


# ----------------------------------------------------------------------------------------------- samples
def test_auto_uses_the_prepared_file_when_the_task_has_it(backend, root):
    dm = make(backend, root, shots=3, seed=30)
    split = load_task_split(TASK, "train", root)
    expected = sample_kshot(split, 3, 30, "prepared", task=TASK, data_root=root)
    assert dm.sampler_used == "prepared"
    assert dm.train_sample.image_ids == expected.image_ids
    assert dm.train_sample.source_file.endswith("fewshot_train_shot3_seed30.json")
    assert [im.id for im in dm.train_split.images] == expected.image_ids


def test_auto_falls_back_to_glips_rule_without_a_file(backend, root):
    split = load_task_split(TASK, "train", root)
    dm = make(backend, root, shots=2, seed=30)  # GLIP ships no 2-shot files
    assert dm.sampler_used == "glip"
    assert dm.train_sample.image_ids == sample_kshot(split, 2, 30, "glip").image_ids
    explicit = make(backend, root, shots=3, seed=3, sampler="glip")
    assert explicit.train_sample.image_ids == sample_kshot(split, 3, 3, "glip").image_ids
    with pytest.raises(UserError, match="not found"):
        make(backend, root, shots=2, seed=30, sampler="prepared")


@pytest.mark.parametrize(("shots", "copies"), [(1, 8), (3, 4), (5, 2), (10, 1), (2, 1), ("all", 1)])
def test_glips_copy_rule(shots, copies):
    assert glip_dataset_copies(shots) == copies


def test_one_epoch_is_one_pass_over_the_repeated_images(backend, root):
    dm = make(backend, root, shots=1, seed=3)
    assert dm.dataset_copies == 8
    loader = dm.train_dataloader()
    n = len(dm.train_records)
    assert len(loader.dataset) == 8 * n
    ids = [i for batch in epoch_batches(loader) for i in batch.image_ids]
    assert sorted(ids) == sorted([r.image.id for r in dm.train_records] * 8)
    assert len(make(backend, root, shots=1, seed=3, dataset_copies=3).train_dataloader().dataset) == 3 * n


def test_all_shots_train_on_every_image_with_a_valid_box(backend, root):
    dm = make(backend, root, shots="all")
    valid = [i for i, boxes in file_boxes(root, "train").items() if any(w > 1 and h > 1 for _, _, w, h in boxes)]
    assert [r.image.id for r in dm.train_records] == sorted(valid)
    assert 3 not in valid  # the demo's image without boxes
    assert dm.val_sample is None and len(dm.val_split_data.images) == len(file_boxes(root, "valid"))


def test_sampled_images_without_a_valid_box_are_not_trained_on(backend, private_root):
    path = private_root / "demo" / "train" / "fewshot_train_shot1_seed3.json"
    data = json.loads(path.read_text())
    data["images"].append({"id": 3, "file_name": "train_003.jpg", "width": 160, "height": 128})
    path.write_text(json.dumps(data))
    dm = make(backend, private_root, shots=1, seed=3)
    assert 3 in dm.train_sample.image_ids
    assert 3 not in [r.image.id for r in dm.train_records]
    assert len(dm.train_records) == len(dm.train_sample.image_ids) - 1


# ----------------------------------------------------------------------------------------------- targets
def test_targets_follow_glips_box_rule_and_index_task_categories(backend, root):
    records = {r.image.id: r for r in make(backend, root, shots="all").train_records}
    # Image 5: [151, 36, 18, 54] overflows the 160-wide image; x2 = 151 + 17 = 168 is clipped to 159.
    assert records[5].boxes == [[151, 36, 159, 89], [66, 99, 88, 121]]
    assert records[5].labels == [TASK.category_ids.index(2), TASK.category_ids.index(1)]  # banana, apple
    # Image 6: [9, 108, 1, 10] has x2 = x1 and is removed; [35, 76, 26, 13] -> (35, 76, 60, 88), a cherry.
    assert records[6].boxes == [[35, 76, 60, 88]]
    assert records[6].labels == [2]


def test_glip_train_target_edge_cases():
    anns = [
        {"bbox": [-3, 2, 10, 5], "category_id": 7, "iscrowd": 0},  # left overflow: x1 0, x2 -3 + 9 = 6
        {"bbox": [10, 10, 1.5, 4], "category_id": 5, "iscrowd": 0},  # thin but not empty: x2 = 10.5
        {"bbox": [10, 10, 0.5, 4], "category_id": 5, "iscrowd": 0},  # w - 1 < 0 clamps to 0: empty
        {"bbox": [1, 1, 5, 5], "category_id": 5, "iscrowd": 1},  # crowd: GLIP drops it
        {"bbox": [19.5, 0, 5, 5], "category_id": 7, "iscrowd": 0},  # x1 clamped to 19 = x2: empty
    ]
    boxes, labels = glip_train_target(anns, 20, 15, [5, 7])
    assert boxes == [[0, 2, 6, 6], [10, 10, 10.5, 13]]
    assert labels == [1, 0]
    assert glip_train_target([], 20, 15, [5]) == ([], [])


# ----------------------------------------------------------------------------------------------- determinism
def test_same_seed_same_batches_and_other_seed_other_order(backend, root):
    first = epoch_batches(make(backend, root, shots="all", seed=3).train_dataloader())
    assert_same_batches(first, epoch_batches(make(backend, root, shots="all", seed=3).train_dataloader()))
    other = epoch_batches(make(backend, root, shots="all", seed=30).train_dataloader())
    assert [b.image_ids for b in other] != [b.image_ids for b in first]  # same images, another order


def test_each_epoch_has_its_own_reproducible_order(backend, root):
    loader = make(backend, root, shots="all", seed=3).train_dataloader()
    epoch0, epoch1 = epoch_batches(loader, 0), epoch_batches(loader, 1)
    assert [b.image_ids for b in epoch1] != [b.image_ids for b in epoch0]
    fresh = make(backend, root, shots="all", seed=3).train_dataloader()
    assert_same_batches(epoch1, epoch_batches(fresh, 1))  # epoch 1 without ever running epoch 0
    assert_same_batches(epoch0, epoch_batches(loader, 0))


def test_two_workers_give_the_same_batches(backend, root):
    single = epoch_batches(make(backend, root, shots=1, seed=300).train_dataloader(), 2)
    loader = make(backend, root, shots=1, seed=300, num_workers=2).train_dataloader()
    assert_same_batches(single, epoch_batches(loader, 2))


def test_glip_builder_equals_the_backends_preprocess(backend, root):
    dm = make(backend, root, shots="all")
    assert isinstance(dm.batch_builder, GLIPBatchBuilder)
    loader = dm.train_dataloader()
    items = [loader.dataset[(0, i)] for i in (0, 4)]
    images, targets, _, seeds = zip(*items)
    built = dm.batch_builder(images, targets, seeds)
    for i in range(2):  # per image: the backend with the same per-image generator
        ref = backend.preprocess([images[i]], [targets[i]], train=True, rng=random.Random(seeds[i]))
        h, w = ref.image_sizes[0]
        assert built.image_sizes[i] == (h, w)
        assert torch.equal(built.images[i, :, :h, :w], ref.images[0, :, :h, :w])
        assert torch.equal(built.targets[i]["boxes"], ref.targets[0]["boxes"])
    ref = backend.preprocess(list(images))
    test = dm.batch_builder(images)
    assert torch.equal(test.images, ref.images) and test.image_sizes == ref.image_sizes and test.targets is None


def test_backend_builder_path_calls_the_backend(backend, root):
    class Subclass(GLIPBackend):
        def preprocess(self, images, targets=None, train=False, rng=None):
            self.calls = getattr(self, "calls", 0) + 1
            return super().preprocess(images, targets, train, rng)

    custom = Subclass(backend.config)
    dm = make(custom, root, shots=1, seed=3)
    assert isinstance(make_batch_builder(custom), BackendBatchBuilder)
    batches = epoch_batches(dm.train_dataloader())
    assert custom.calls == len(batches) and all(b.targets is not None for b in batches)


# ----------------------------------------------------------------------------------------------- evaluation
def test_val_is_subsampled_from_the_prepared_file(backend, root):
    dm = make(backend, root, shots=3, seed=30)
    fewshot = json.loads((root / "demo" / "valid" / "fewshot_val_shot3_seed30.json").read_text())
    expected = sorted({im["id"] for im in fewshot["images"]})
    assert dm.val_sample.image_ids == expected
    assert [im.id for im in dm.val_split_data.images] == expected
    assert len(expected) < len(file_boxes(root, "valid"))
    full = make(backend, root, shots=3, seed=30, subsample_val=False)
    assert full.val_sample is None and len(full.val_split_data.images) == len(file_boxes(root, "valid"))


def test_eval_loaders_cover_every_image_once_in_id_order(backend, root):
    dm = make(backend, root, shots="all", eval_batch_size=3)
    for loader, folder in ((dm.val_dataloader(), "valid"), (dm.test_dataloader(), "test")):
        batches = list(loader)
        assert [i for b in batches for i in b.image_ids] == sorted(file_boxes(root, folder))
        assert [len(b.image_ids) for b in batches] == [3, 3, 2]
        assert all(b.targets is None and b.original_sizes == [(128, 160)] * len(b.image_ids) for b in batches)


def test_each_eval_image_is_decoded_once_for_every_pass(backend, root):
    from odinw_bench.training.eval_images import EvalImages

    dm = make(backend, root, shots="all", eval_batch_size=3)
    loader = dm.val_dataloader()
    first, second = list(loader), list(loader)  # two epochs' validations
    assert loader.dataset.decoded == len(loader.dataset) == 8
    for a, b in zip(first, second):
        assert a.image_ids == b.image_ids and torch.equal(a.images, b.images)
    nothing_kept = EvalImages(loader.dataset.images, max_bytes=0)  # over the bound: decoded at every pass
    for _ in range(2):
        for index in range(len(nothing_kept)):
            nothing_kept[index]
    assert nothing_kept.decoded == 16


# ----------------------------------------------------------------------------------------------- failures
def test_corrupt_training_image_is_skipped_and_counted(backend, private_root):
    (private_root / "demo" / "train" / "train_001.png").write_bytes(b"not a png")
    dm = make(backend, private_root, shots="all")
    assert dm.skipped_images == 1 and dm.skipped_paths[0].endswith("train_001.png")
    assert 1 not in [r.image.id for r in dm.train_records]
    assert 1 not in {i for b in epoch_batches(dm.train_dataloader()) for i in b.image_ids}
    assert dm.describe()["skipped_images"] == 1


def test_corrupt_test_image_is_an_error_naming_it(backend, private_root):
    (private_root / "demo" / "test" / "test_002.jpg").write_bytes(b"\xff\xd8 truncated")
    dm = make(backend, private_root, shots=0)
    with pytest.raises(CorruptImageError, match="test_002.jpg"):
        list(dm.test_dataloader())


def test_zero_shot_has_no_training_data(backend, root):
    dm = make(backend, root, shots=0)
    assert dm.train_sample.image_ids == [] and dm.train_records == []
    with pytest.raises(UserError, match="zero-shot"):
        dm.train_dataloader()
    assert len(list(dm.test_dataloader())) == len(file_boxes(root, "test"))  # evaluation still works


def test_zero_shot_reads_only_the_scored_split(backend, private_root):
    """A zero-shot run needs only the split it scores: train and val files may be absent."""
    for folder in ("train", "valid"):
        for ann in (private_root / "demo" / folder).glob("*.json"):
            ann.unlink()
    dm = make(backend, private_root, shots=0, test_split="test")
    assert dm.train_sample.image_ids == [] and dm.train_sample.shots == 0
    assert len(list(dm.test_dataloader())) == len(file_boxes(private_root, "test"))
    with pytest.raises(UserError, match="annotation file of split .train. of task .demo. not found"):
        make(backend, private_root, shots=1)  # a fitting run does need train


@pytest.mark.parametrize(("kwargs", "field"), [({"sampler": "random"}, "sampler"), ({"batch_size": 0}, "batch_size"),
                                               ({"dataset_copies": 0}, "dataset_copies"), ({"shots": -1}, "shots")])
def test_bad_arguments_name_the_field(backend, root, kwargs, field):
    with pytest.raises(UserError) as err:
        ODinWDataModule(task=TASK, data_root=root, backend=backend, **{"shots": 1, "seed": 3, **kwargs})
    assert err.value.field == field


def test_resuming_on_other_data_is_refused(backend, root):
    state = make(backend, root, shots=3, seed=30).state_dict()
    make(backend, root, shots=3, seed=30).load_state_dict(state)
    with pytest.raises(UserError, match="train_ids_hash"):
        make(backend, root, shots=3, seed=3).load_state_dict(state)


# ----------------------------------------------------------------------------------------------- Lightning
def _fit(dm, max_epochs: int, tmp_path, *, ckpt_path=None, save_to=None) -> dict[int, list[int]]:
    """Run Lightning over ``dm``'s train loader and return the image ids it saw per epoch."""
    import pytorch_lightning as pl

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.seen: dict[int, list[int]] = {}

        def training_step(self, batch, batch_idx):
            self.seen.setdefault(self.current_epoch, []).extend(batch.image_ids)
            return (self.weight * batch.images.mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    module = Recorder()
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    if save_to is not None:
        trainer.save_checkpoint(save_to)
    return module.seen


def test_lightning_epochs_and_a_resumed_run_see_the_same_order(backend, root, tmp_path):
    kwargs = {"shots": 1, "seed": 3, "dataset_copies": 2}
    straight = _fit(make(backend, root, **kwargs), 2, tmp_path)
    assert straight[0] != straight[1] and sorted(straight[0]) == sorted(straight[1])
    ckpt = tmp_path / "epoch1.ckpt"
    first = _fit(make(backend, root, **kwargs), 1, tmp_path, save_to=ckpt)
    resumed = _fit(make(backend, root, **kwargs), 2, tmp_path, ckpt_path=ckpt)
    assert first[0] == straight[0]
    assert resumed == {1: straight[1]}
