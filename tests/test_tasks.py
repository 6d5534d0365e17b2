"""The task registry: shipped task YAMLs against GLIP's configs, schema errors, suites, data roots, validation.

Expected ODinW facts come from ../shared/docs/glip_protocol.md §1 (read from microsoft/GLIP's configs), not from
the YAMLs under test.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import yaml
from PIL import Image

from odinw_bench import paths
from odinw_bench.data.task_files import prepare_data_root
from odinw_bench.data.validation import diff_categories, validate_task
from odinw_bench.errors import UserError
from odinw_bench.tasks import registry
from odinw_bench.tasks.registry import (
    list_task_names,
    load_suite,
    load_task,
    resolve_data_root,
    resolve_tasks,
    task_sha256,
    tasks_dir,
)

REPO_TASKS = Path(__file__).resolve().parents[1] / "tasks"

# glip_protocol.md §1.1: task -> (dataset folder, supercategory, names in id order 1..n, DATASETS.TEST).
ODINW13 = {
    "aerial_maritime_drone": ("AerialMaritimeDrone/large", "movable-objects", "boat car dock jetski lift", "val"),
    "aquarium": (
        "Aquarium/Aquarium Combined.v2-raw-1024.coco",
        "creatures",
        "fish jellyfish penguin puffin shark starfish stingray",
        "val",
    ),
    "cottontail_rabbits": ("CottontailRabbits", "Cottontail-Rabbit", "Cottontail-Rabbit", "val"),
    "egohands": ("EgoHands/generic", "hands", "hand", "minival"),
    "north_america_mushrooms": (
        "NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco",
        "mushroom",
        "CoW chanterelle",
        "val",
    ),
    "packages": ("Packages/Raw", "packages", "package", "val"),
    "pascal_voc": (
        "PascalVOC",
        "VOC",
        "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person "
        "pottedplant sheep sofa train tvmonitor",
        "val",
    ),
    "pistols": ("pistols/export", "Guns", "pistol", "val"),
    "pothole": ("pothole", "potholes", "pothole", "val"),
    "raccoon": ("Raccoon/Raccoon.v2-raw.coco", "raccoons", "raccoon", "val"),
    "shellfish": ("ShellfishOpenImages/raw", "shellfish", "Crab Lobster Shrimp", "val"),
    "thermal_dogs_and_people": ("thermalDogsAndPeople", "dogs-person", "dog person", "val"),
    "vehicles": ("VehiclesOpenImages/416x416", "vehicles", "Ambulance Bus Car Motorcycle Truck", "minival"),
}

# glip_protocol.md §1.3: the odinw_13 prompt strings.
PROMPTS13 = {
    "aerial_maritime_drone": "boat. car. dock. jetski. lift",
    "cottontail_rabbits": "Cottontail-Rabbit",
    "north_america_mushrooms": "CoW. chanterelle",
    "thermal_dogs_and_people": "dog. person",
    "vehicles": "Ambulance. Bus. Car. Motorcycle. Truck",
}

# glip_protocol.md §1.4: the odinw_35 eval prompt of the six tasks whose odinw_35 config differs.
PROMPTS35 = {
    "aquarium": " fish. jellyfish. penguin , which is black and white. puffin with orange beaks . shark. starfish."
    " stingray which is flat and round",
    "cottontail_rabbits": "rabbit",
    "egohands": " hand of a person",
    "north_america_mushrooms": "flat mushroom. yellow mushroom",
    "packages": "there is a package on the porch",
    "pothole": "there are some holes on the road",
}

# glip_protocol.md §1.5: zip names in odinw/download.py, and the ODinW-13 download list.
ALL_ZIPS = set(
    "AerialMaritimeDrone AmericanSignLanguageLetters Aquarium BCCD ChessPieces CottontailRabbits DroneControl EgoHands "
    "HardHatWorkers MaskWearing MountainDewCommercial NorthAmericaMushrooms OxfordPets PKLot Packages PascalVOC Raccoon "
    "ShellfishOpenImages ThermalCheetah UnoCards VehiclesOpenImages WildfireSmoke boggleBoards brackishUnderwater dice "
    "openPoetryVision pistols plantdoc pothole selfdrivingCar thermalDogsAndPeople vector websiteScreenshots".split()
)
ODINW13_ZIPS = set(
    "AerialMaritimeDrone Aquarium CottontailRabbits EgoHands NorthAmericaMushrooms Packages PascalVOC pistols pothole "
    "Raccoon ShellfishOpenImages thermalDogsAndPeople VehiclesOpenImages".split()
)
# peers.md §5.1: the datasets ODinW-35 adds to ODinW-13 (by zip).
ODINW35_EXTRA_ZIPS = set(
    "AmericanSignLanguageLetters BCCD boggleBoards brackishUnderwater ChessPieces dice DroneControl EgoHands "
    "HardHatWorkers MaskWearing MountainDewCommercial OxfordPets PKLot plantdoc selfdrivingCar ThermalCheetah UnoCards "
    "WildfireSmoke websiteScreenshots AerialMaritimeDrone openPoetryVision".split()
)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    for name in (registry.TASKS_DIR_ENV, registry.DATA_ROOT_ENV):
        monkeypatch.delenv(name, raising=False)


# ----------------------------------------------------------------------------------------------- helpers


def write_odinw_folder(data_root: Path, root: str = "Fruit/v1", json_categories=None) -> Path:
    """A tiny Roboflow/ODinW-style export: train/valid/test with 2 PNGs and 3 boxes each, one few-shot file."""
    json_categories = json_categories or [(1, "apple"), (2, "banana")]
    cats = [{"id": i, "name": n, "supercategory": "fruit"} for i, n in json_categories]
    for split_dir in ("train", "valid", "test"):
        folder = data_root / root / split_dir
        folder.mkdir(parents=True)
        images, annotations = [], []
        for index in range(2):
            Image.new("RGB", (8, 6), (40 * index, 90, 20)).save(folder / f"img{index}.png")
            images.append({"id": index + 1, "file_name": f"img{index}.png", "width": 8, "height": 6})
        for ann_id, (image_id, cat) in enumerate([(1, 1), (1, 2), (2, 2)], start=1):
            annotations.append(
                {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": [1, 1, 3, 2], "area": 6, "iscrowd": 0}
            )
        coco = {"images": images, "annotations": annotations, "categories": cats}
        # The test split keeps Roboflow's id-0 placeholder, which validation must ignore.
        if split_dir == "test":
            coco["categories"] = [{"id": 0, "name": "fruits", "supercategory": "none"}, *cats]
        (folder / "annotations_without_background.json").write_text(json.dumps(coco))
    (data_root / root / "train" / "fewshot_train_shot1_seed3.json").write_text("{}")
    return data_root / root


def task_dict(name: str = "fruit", **overrides) -> dict:
    """A valid custom task as a plain dict."""
    data = {
        "name": name,
        "display_name": "Fruit",
        "root": "Fruit/v1",
        "categories": [
            {"id": 1, "name": "apple", "supercategory": "fruit"},
            {"id": 2, "name": "banana", "supercategory": "fruit"},
        ],
        "splits": {
            "train": {"ann_file": "train/annotations_without_background.json", "img_dir": "train"},
            "val": {"ann_file": "valid/annotations_without_background.json", "img_dir": "valid"},
            "test": {"ann_file": "test/annotations_without_background.json", "img_dir": "test"},
        },
        "fewshot": {"train": "train/fewshot_train_shot{shots}_seed{seed}.json"},
    }
    data.update(overrides)
    return data


def write_task(folder: Path, data: dict, stem: str | None = None) -> Path:
    path = folder / f"{stem or data.get('name', 'fruit')}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------------- shipped tasks


@pytest.mark.parametrize("path", sorted(p for p in REPO_TASKS.glob("*.yaml") if p.name != "suites.yaml"), ids=str)
def test_every_task_yaml_parses_and_its_name_is_its_stem(path):
    task = load_task(path)
    assert task.name == path.stem == yaml.safe_load(path.read_text())["name"]
    assert task.download in ALL_ZIPS or task.synthetic


def test_registry_reads_repo_tasks_by_default():
    assert tasks_dir() == REPO_TASKS
    names = list_task_names()
    assert "suites" not in names and "demo" in names and set(ODINW13) <= set(names)


def test_odinw13_has_the_13_glip_tasks_with_their_categories_and_splits():
    pairs = resolve_tasks("odinw13")
    assert [t.name for t, _ in pairs] == list(ODINW13)
    assert all(variant is None for _, variant in pairs)  # odinw_13 configs have no prompt engineering
    assert {t.download for t, _ in pairs} == ODINW13_ZIPS
    for task, _ in pairs:
        root, supercategory, names, val_split = ODINW13[task.name]
        assert task.root == root
        assert task.category_names == names.split(" ") or task.category_names == [names]
        assert task.category_ids == list(range(1, len(task.categories) + 1))
        assert {c.supercategory for c in task.categories} == {supercategory}
        assert task.val_split == task.zero_shot_split == val_split
        assert task.test_split == "test"
        assert task.source.startswith("configs/odinw_13/")


@pytest.mark.parametrize("name", [n for n in ODINW13 if n not in ("pistols", "pascal_voc")])
def test_roboflow_layout_splits(name):
    task = load_task(name)
    expected = {"train": "train", "val": "valid", "test": "test"}
    if name in ("egohands", "vehicles"):
        expected["minival"] = "mini_val"
    assert {s: (v.ann_file, v.img_dir) for s, v in task.splits.items()} == {
        s: (f"{d}/annotations_without_background.json", d) for s, d in expected.items()
    }
    fewshot_names = {"train": "train", "val": "val", "minival": "minival"}
    assert task.fewshot == {
        s: f"{expected[s]}/fewshot_{fewshot_names[s]}_shot{{shots}}_seed{{seed}}.json" for s in expected if s != "test"
    }


@pytest.mark.parametrize(
    "name, split, ann_file, img_dir",
    [
        ("pascal_voc", "test", "valid/annotations_without_background.json", "valid"),  # test = valid (§1.2)
        ("pascal_voc", "val", "valid/annotations_without_background.json", "valid"),
        ("pistols", "train", "train_annotations_without_background.json", "."),  # flat layout
        ("pistols", "val", "val_annotations_without_background.json", "."),
        ("pistols", "test", "test_annotations_without_background.json", "."),
        ("egohands", "minival", "mini_val/annotations_without_background.json", "mini_val"),
        ("vehicles", "minival", "mini_val/annotations_without_background.json", "mini_val"),
    ],
)
def test_split_exceptions(name, split, ann_file, img_dir, tmp_path):
    task = load_task(name)
    assert (task.splits[split].ann_file, task.splits[split].img_dir) == (ann_file, img_dir)
    folder = tmp_path / ODINW13[name][0]
    assert task.split_files(split, tmp_path) == (folder / ann_file, folder / img_dir)


def test_pistols_fewshot_files_are_flat(tmp_path):
    task = load_task("pistols")
    assert task.fewshot_file("train", 5, 30, tmp_path) == tmp_path / "pistols/export/fewshot_train_shot5_seed30.json"
    assert task.fewshot_file("val", 1, 300, tmp_path) == tmp_path / "pistols/export/fewshot_val_shot1_seed300.json"


@pytest.mark.parametrize("name, prompt", PROMPTS13.items())
def test_default_prompt_is_the_odinw13_prompt(name, prompt):
    from odinw_bench.data.prompts import build_caption

    task = load_task(name)
    assert build_caption(task.category_names, task.prompt).text == prompt


@pytest.mark.parametrize("name, prompt", PROMPTS35.items())
def test_odinw35_variant_gives_the_odinw35_prompt(name, prompt):
    from odinw_bench.data.prompts import build_caption

    task = load_task(name)
    assert build_caption(task.category_names, task.prompt_for("odinw_35")).text == prompt


def test_odinw35_variant_raw_fields():
    aquarium = load_task("aquarium").prompt_for("odinw_35")
    assert aquarium.names is None and [c.name for c in aquarium.caption] == ODINW13["aquarium"][2].split()
    assert aquarium.caption[3].suffix == " with orange beaks "
    mushrooms = load_task("north_america_mushrooms")
    assert mushrooms.prompt_for("odinw_35").names == ["flat mushroom", "yellow mushroom"]
    assert mushrooms.category_names == ["CoW", "chanterelle"]  # evaluation names stay the odinw_13 ones
    assert load_task("pothole").prompt_for("odinw_35").caption[0].name == "holes"


def test_odinw35_suite():
    pairs = resolve_tasks("odinw35")
    names = [t.name for t, _ in pairs]
    assert len(names) == len(set(names)) == 35
    assert set(ODINW13) <= set(names)
    assert {t.name for t, v in pairs if v == "odinw_35"} == set(PROMPTS35)
    assert all(v is None for t, v in pairs if t.name not in PROMPTS35)
    extra = [t for t, _ in pairs if t.name not in ODINW13]
    assert {t.download for t in extra} == ODINW35_EXTRA_ZIPS
    assert all(t.source.startswith("configs/odinw_35/") for t in extra)
    assert [t.name for t in load_suite("odinw35")] == names


def test_odinw35_quirks_are_kept():
    chess = load_task("chess_pieces")
    assert chess.categories[0].name.strip() == "" and chess.categories[1].name == "black bishop"
    boggle = load_task("boggle_boards")
    assert "o " in boggle.category_names and "t\\" in boggle.category_names and len(boggle.categories) == 36
    brackish = load_task("brackish_underwater")
    assert set(brackish.splits) == {"train", "val", "minival", "test"} and brackish.val_split == "minival"


# ----------------------------------------------------------------------------------------------- schema errors


def _without(key):
    def edit(data):
        del data[key]

    return edit


def _set(value, *keys):
    def edit(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


MALFORMED = {
    "unknown key": (_set("red", "colour"), "colour"),
    "unknown category key": (_set("red", "categories", 0, "colour"), "categories[0].colour"),
    "unknown split key": (_set("x", "splits", "val", "root"), "splits.val.root"),
    "missing field": (_without("display_name"), "display_name"),
    "missing category name": (lambda d: d["categories"][1].pop("name"), "categories[1].name"),
    "duplicate ids": (_set(1, "categories", 1, "id"), "categories"),
    "duplicate names": (_set("apple", "categories", 1, "name"), "categories"),
    "wrong type version": (_set("one", "version"), "version"),
    "wrong type id": (_set("x", "categories", 0, "id"), "categories[0].id"),
    "wrong type splits": (_set("train", "splits"), "splits"),
    "wrong type synthetic": (_set("maybe", "synthetic"), "synthetic"),
    "bad val_split": (_set("valid", "val_split"), "val_split"),
    "bad zero_shot_split": (_set("minival", "zero_shot_split"), "zero_shot_split"),
    "bad fewshot split": (_set("mini_val/x_{shots}_{seed}.json", "fewshot", "minival"), "fewshot.minival"),
    "fewshot without seed": (_set("train/x_{shots}.json", "fewshot", "train"), "fewshot.train"),
    "variant names length": (_set({"odinw_35": {"names": ["apple"]}}, "prompt_variants"), "prompt_variants.odinw_35.names"),
    "caption length": (_set({"caption": [{"name": "a"}]}, "prompt"), "prompt.caption"),
    "caption missing name": (
        _set({"v": {"caption": [{"prefix": "a "}, {"name": "b"}]}}, "prompt_variants"),
        "prompt_variants.v.caption[0].name",
    ),
    "name differs from stem": (_set("other", "name"), "name"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_task_names_file_and_field(case, tmp_path):
    edit, field = MALFORMED[case]
    data = task_dict()
    edit(data)
    path = write_task(tmp_path, data, stem="fruit")
    with pytest.raises(UserError) as info:
        load_task(str(path))
    assert info.value.path == str(path)
    assert info.value.field == field
    assert str(path) in str(info.value) and f"field '{field}'" in str(info.value)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("name: fruit\ncategories: [1\n", "line 3, column 1"),  # unclosed flow list
        ("name: fruit\nname: again\n", "duplicate key"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_unparsable_yaml_names_the_file(text, needle, tmp_path):
    path = tmp_path / "fruit.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=needle) as info:
        load_task(path)
    assert info.value.path == str(path)


def test_unknown_task_suggests_close_names():
    with pytest.raises(UserError, match="did you mean: aquarium"):
        load_task("aquarim")
    with pytest.raises(UserError, match="odinw13"):
        resolve_tasks("odinw31")
    with pytest.raises(UserError, match="task file not found"):
        load_task("no/such/task.yaml")


# ----------------------------------------------------------------------------------------------- custom tasks, suites


def test_custom_task_yaml_path_works_everywhere(tmp_path):
    path = write_task(tmp_path, task_dict())
    task = load_task(str(path))
    assert task.category_names == ["apple", "banana"] and task.prompt.separator == ". "
    assert resolve_tasks(str(path)) == [(task, None)]
    pairs = resolve_tasks(f"aquarium, {path},aquarium")  # comma list, repeats dropped, order kept
    assert [t.name for t, _ in pairs] == ["aquarium", "fruit"]


def test_suite_and_task_lists_combine_without_repeats():
    pairs = resolve_tasks("aquarium,odinw13")
    assert [t.name for t, _ in pairs][:2] == ["aquarium", "aerial_maritime_drone"] and len(pairs) == 13
    first = dict((t.name, v) for t, v in resolve_tasks("odinw35,aquarium"))
    assert first["aquarium"] == "odinw_35"


def test_tasks_dir_from_env_with_own_suites(tmp_path, monkeypatch):
    write_task(tmp_path, task_dict())
    write_task(tmp_path, task_dict("kiwi", prompt_variants={"fancy": {"names": ["red apple", "yellow banana"]}}))
    (tmp_path / "suites.yaml").write_text(yaml.safe_dump({"fruits": {"prompt": "fancy", "tasks": ["fruit", "kiwi"]}}))
    monkeypatch.setenv(registry.TASKS_DIR_ENV, str(tmp_path))
    assert list_task_names() == ["fruit", "kiwi"]
    assert [(t.name, v) for t, v in resolve_tasks("fruits")] == [("fruit", None), ("kiwi", "fancy")]
    with pytest.raises(UserError, match="unknown task"):
        load_task("aquarium")


@pytest.mark.parametrize(
    "suites, field",
    [
        ({"s": {"tasks": ["fruit", "nope"]}}, "s.tasks[1]"),
        ({"s": {"tasks": ["fruit"], "colour": 1}}, "s.colour"),
        ({"s": {"tasks": ["fruit"], "prompt": "fancy"}}, "s.prompt"),
        ({"fruit": {"tasks": ["fruit"]}}, "fruit"),
    ],
)
def test_bad_suites_name_file_and_field(suites, field, tmp_path, monkeypatch):
    write_task(tmp_path, task_dict())
    (tmp_path / "suites.yaml").write_text(yaml.safe_dump(suites))
    monkeypatch.setenv(registry.TASKS_DIR_ENV, str(tmp_path))
    with pytest.raises(UserError) as info:
        resolve_tasks("s,fruit")
    assert info.value.path == str(tmp_path / "suites.yaml") and info.value.field == field


def test_task_sha256_follows_content_not_formatting(tmp_path):
    aquarium = load_task("aquarium")
    assert len(task_sha256(aquarium)) == 64 and task_sha256(aquarium) == task_sha256(load_task("aquarium"))
    data = yaml.safe_load((REPO_TASKS / "aquarium.yaml").read_text())
    reformatted = write_task(tmp_path, data)  # block style, no comments, other quoting
    assert task_sha256(load_task(reformatted)) == task_sha256(aquarium)
    data["categories"][0]["name"] = "fishes"
    changed = write_task(tmp_path, data)  # same path, new content
    assert task_sha256(load_task(changed)) != task_sha256(aquarium)


def test_loaded_tasks_are_independent_copies():
    first = load_task("aquarium")
    first.categories[0].name = "changed"
    assert load_task("aquarium").categories[0].name == "fish"


# ----------------------------------------------------------------------------------------------- data roots


def test_data_root_precedence(tmp_path, monkeypatch):
    task = load_task("aquarium")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root(task, None) == Path("DATASET/odinw")
    monkeypatch.setenv(registry.DATA_ROOT_ENV, str(tmp_path / "env"))
    assert resolve_data_root(task, None) == tmp_path / "env"
    assert resolve_data_root(task, str(tmp_path / "flag")) == tmp_path / "flag"


def test_synthetic_task_uses_cache_and_generates(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("odinw_bench.data.synthetic")
    fake.ensure_demo_data = lambda root: calls.append(Path(root)) or Path(root) / "demo"
    monkeypatch.setitem(sys.modules, "odinw_bench.data.synthetic", fake)
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(registry.DATA_ROOT_ENV, str(tmp_path / "real"))  # real-data setting, not for synthetic
    demo = load_task("demo")
    assert demo.synthetic and demo.root == "demo"
    assert resolve_data_root(demo, None) == tmp_path / "cache" / "data"
    assert resolve_data_root(demo, str(tmp_path / "mine")) == tmp_path / "mine"
    assert calls == []  # resolving is only a path
    assert prepare_data_root(demo, None) == tmp_path / "cache" / "data"
    assert prepare_data_root(demo, str(tmp_path / "mine")) == tmp_path / "mine"
    assert calls == [tmp_path / "cache" / "data", tmp_path / "mine"]


# ----------------------------------------------------------------------------------------------- validation


def test_validate_passes_on_a_good_folder(tmp_path):
    write_odinw_folder(tmp_path / "data")
    task = load_task(write_task(tmp_path, task_dict()))
    report = validate_task(task, tmp_path / "data")
    assert report.ok, [c for c in report.checks if not c.ok]
    checks = {c.name: c for c in report.checks}
    assert checks["train: annotation JSON"].detail == "2 images, 3 boxes"
    assert checks["test: categories"].ok  # the id-0 placeholder is ignored
    assert checks["prompt (default)"].detail == repr("apple. banana")
    fewshot = checks["train: few-shot files"]
    assert fewshot.warning and not fewshot.ok and fewshot.detail.startswith("1/12 present; missing ")
    missing = fewshot.detail.split("missing ")[1].split(", ")
    assert len(missing) == 11 and "shot1_seed3" not in missing and "shot10_seed300" in missing


def test_validate_accepts_a_raw_roboflow_export(tmp_path):
    folder = write_odinw_folder(tmp_path / "data")
    clean = folder / "valid" / "annotations_without_background.json"
    coco = json.loads(clean.read_text())
    coco["categories"].insert(0, {"id": 0, "name": "fruits", "supercategory": "none"})
    (folder / "valid" / "_annotations.coco.json").write_text(json.dumps(coco))
    clean.unlink()
    report = validate_task(load_task(write_task(tmp_path, task_dict())), tmp_path / "data")
    assert report.ok, report.failures
    check = next(c for c in report.checks if c.name == "val: annotation file")
    assert check.detail.startswith(str(folder / "valid" / "_annotations.coco.json")) and "raw Roboflow" in check.detail


def test_validate_lists_category_differences(tmp_path):
    write_odinw_folder(tmp_path / "data", json_categories=[(1, "apple tree"), (3, "cherry")])
    report = validate_task(load_task(write_task(tmp_path, task_dict())), tmp_path / "data")
    assert not report.ok
    check = next(c for c in report.failures if c.name == "train: categories")
    assert check.detail == "missing 2 'banana'; extra 3 'cherry'; renamed 1 'apple tree' -> 'apple'"


def test_category_rename_alone_is_a_warning():
    task = load_task("north_america_mushrooms")
    diff = diff_categories(task, [{"id": 0, "name": "mushrooms"}, {"id": 1, "name": "CoW"}, {"id": 2, "name": "chant"}])
    assert diff.ok and diff.renamed == [(2, "chant", "chanterelle")] and not diff.missing and not diff.extra


@pytest.mark.parametrize("damage", ["malformed json", "missing image", "missing image dir", "unknown box category"])
def test_validate_catches_damage(damage, tmp_path):
    folder = write_odinw_folder(tmp_path / "data")
    ann = folder / "valid" / "annotations_without_background.json"
    if damage == "malformed json":
        ann.write_text('{"images": [\n  {"id": 1,,}\n]}')
        needle = "malformed JSON at line 2, column 12"
    elif damage == "missing image":
        (folder / "valid" / "img1.png").unlink()
        needle = "1/2 sampled images decoded; missing ['img1.png']"
    elif damage == "missing image dir":
        task_yaml = task_dict()
        task_yaml["splits"]["val"]["img_dir"] = "valid_images"
        needle = "valid_images"
    else:
        coco = json.loads(ann.read_text())
        coco["annotations"][0]["category_id"] = 7
        ann.write_text(json.dumps(coco))
        needle = "unknown category ids [7]"
    task = load_task(write_task(tmp_path, task_yaml if damage == "missing image dir" else task_dict()))
    report = validate_task(task, tmp_path / "data")
    assert [c.name.split(":")[0] for c in report.failures] == ["val"]
    assert needle in report.failures[0].detail


def test_missing_data_names_the_download_command(tmp_path):
    report = validate_task(load_task("aquarium"), tmp_path / "nowhere")
    assert not report.ok and len(report.checks) == 1
    assert f"python -m odinw_bench download --task aquarium --data-root {tmp_path / 'nowhere'}" in report.checks[0].detail
    report = validate_task(load_task("aquarium"), tmp_path)  # data root exists, task folder does not
    assert report.checks[-1].name == "task folder" and "download --task aquarium" in report.checks[-1].detail
