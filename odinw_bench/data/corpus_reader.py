"""Reading and validating a grounding corpus (format ``odinw_bench-grounding-corpus``, version 1).

:func:`read_corpus` checks ``corpus.json`` field by field and every image file, and raises one
:class:`~odinw_bench.errors.UserError` naming ``corpus.json`` and the dotted field
(``captions[3].boxes[0].spans[1]``), or the image file, for the first problem found. The layout is described in
:mod:`odinw_bench.data.grounding_corpus`, which writes corpora.

Example::

    corpus = read_corpus("corpus")
    image = corpus.images[0]
    corpus.image_path(image), corpus.annotations_of(image.id), corpus.captions_of(image.id)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from odinw_bench.errors import UserError
from odinw_bench.jsonio import read_json_file

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FORMAT_NAME = "odinw_bench-grounding-corpus"
FORMAT_VERSION = 1
CORPUS_FILE = "corpus.json"
IMAGES_DIR = "images"
CAPTION_KINDS = ("detection", "grounding")


@dataclass(frozen=True)
class CorpusImage:
    """An image record: ``file_name`` is relative to the corpus's ``images/`` folder."""

    id: int
    file_name: str
    width: int
    height: int


@dataclass(frozen=True)
class CorpusAnnotation:
    """A box: ``bbox = (x, y, w, h)`` in pixels."""

    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True)
class GroundedBox:
    """An annotation a caption grounds, and the character spans ``(start, end)`` (end exclusive) naming it."""

    annotation_id: int
    spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class CorpusCaption:
    """A detection prompt or grounding phrase of one image."""

    id: int
    image_id: int
    kind: str
    text: str
    boxes: tuple[GroundedBox, ...]


@dataclass(frozen=True)
class Corpus:
    """A validated corpus.

    Attributes:
        root: The corpus folder.
        generator: The ``generator`` record (name, version, seed, settings).
        categories: ``{category id: name}`` in file order.
        images: Image records in file order.
        annotations: Annotation records in file order.
        captions: Caption records in file order.
    """

    root: Path
    generator: dict
    categories: dict[int, str]
    images: tuple[CorpusImage, ...]
    annotations: tuple[CorpusAnnotation, ...]
    captions: tuple[CorpusCaption, ...]
    _by_image: dict = field(default_factory=dict, repr=False, compare=False)

    def image_path(self, image: CorpusImage) -> Path:
        """The file of ``image``."""
        return self.root / IMAGES_DIR / image.file_name

    def annotations_of(self, image_id: int) -> list[CorpusAnnotation]:
        """The annotations of one image, in file order."""
        return list(self._index()[0].get(image_id, ()))

    def captions_of(self, image_id: int) -> list[CorpusCaption]:
        """The captions of one image, in file order."""
        return list(self._index()[1].get(image_id, ()))

    def _index(self):
        if not self._by_image:
            annotations, captions = defaultdict(list), defaultdict(list)
            for annotation in self.annotations:
                annotations[annotation.image_id].append(annotation)
            for caption in self.captions:
                captions[caption.image_id].append(caption)
            self._by_image.update(annotations=annotations, captions=captions)
        return self._by_image["annotations"], self._by_image["captions"]


def caption_token_map(caption: CorpusCaption, tokenizer: PreTrainedTokenizerBase | None = None,
                      max_length: int | None = None) -> dict[int, list[int]]:
    """``{annotation id: sorted token indices}`` of a caption, with GLIP's span-to-token rules.

    Uses :func:`odinw_bench.data.prompts.positive_map` (``[CLS]`` is token 0); a box whose spans map to no token
    (a caption truncated at ``max_length``) is absent.
    """
    from odinw_bench.data.prompts import Caption, positive_map
    from odinw_bench.data.tokenizer import MAX_QUERY_LEN

    flat = [(box.annotation_id, span) for box in caption.boxes for span in box.spans]
    label_map = positive_map(Caption(caption.text, tuple(span for _, span in flat)), tokenizer,
                             max_length or MAX_QUERY_LEN)
    result: dict[int, set[int]] = defaultdict(set)
    for label, tokens in label_map.items():
        result[flat[label - 1][0]].update(tokens)
    return {ann_id: sorted(tokens) for ann_id, tokens in result.items()}


def read_corpus(path: str | Path, *, check_images: bool = True) -> Corpus:
    """Read and validate a corpus folder.

    Args:
        path: The corpus folder (holding ``corpus.json`` and ``images/``).
        check_images: Also open every image's header: it must exist, be a PNG in RGB and have the recorded size.

    Raises:
        UserError: For the first problem: naming ``corpus.json`` and the field, or the image file.
    """
    root = Path(path).expanduser()
    file = root / CORPUS_FILE
    if not root.is_dir():
        raise UserError("corpus folder not found", path=root)
    if not file.is_file():
        raise UserError(f"not a grounding corpus: {CORPUS_FILE} is missing", path=root)
    data = read_json_file(file, what="corpus file")
    check = _Checker(file)
    record = check.record(data, "", {"format", "version", "generator", "categories", "images", "annotations",
                                     "captions"})
    if record["format"] != FORMAT_NAME:
        check.fail("format", f"expected {FORMAT_NAME!r}, got {record['format']!r}")
    if check.integer(record["version"], "version") != FORMAT_VERSION:
        check.fail("version", f"unsupported version {record['version']} (this reader knows {FORMAT_VERSION})")
    generator = check.record(record["generator"], "generator", {"name", "version", "seed"}, free=True)
    check.text(generator["name"], "generator.name")
    check.integer(generator["version"], "generator.version")
    check.integer(generator["seed"], "generator.seed")
    categories = _categories(check, record["categories"])
    images = _images(check, record["images"])
    annotations = _annotations(check, record["annotations"], images, categories)
    captions = _captions(check, record["captions"], images, annotations, categories)
    _check_grounded(check, annotations, captions)
    if check_images:
        for image in images.values():
            _check_image_file(root / IMAGES_DIR / image.file_name, image)
    return Corpus(root, dict(generator), categories, tuple(images.values()), tuple(annotations.values()),
                  tuple(captions))


class _Checker:
    """Type checks that raise one UserError naming the corpus file and the dotted field."""

    def __init__(self, file: Path):
        self.file = file

    def fail(self, where: str, message: str):
        raise UserError(message, path=self.file, field=where or None)

    def record(self, value: Any, where: str, keys: set[str], *, free: bool = False) -> Mapping:
        if not isinstance(value, Mapping):
            self.fail(where, f"must be an object, got {type(value).__name__}")
        missing = sorted(keys - set(value))
        if missing:
            self.fail(_join(where, missing[0]), "missing")
        unknown = sorted(set(value) - keys)
        if unknown and not free:
            self.fail(_join(where, unknown[0]), f"unknown field (expected only {', '.join(sorted(keys))})")
        return value

    def items(self, value: Any, where: str) -> list:
        if not isinstance(value, list):
            self.fail(where, f"must be a list, got {type(value).__name__}")
        return value

    def integer(self, value: Any, where: str, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            self.fail(where, f"must be >= {minimum}, got {value}")
        return value

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(where, f"must be a number, got {value!r}")
        return float(value)

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(where, f"must be a non-empty string, got {value!r}")
        return value

    def unique_id(self, value: Any, where: str, seen: Mapping) -> int:
        ident = self.integer(value, where, minimum=1)
        if ident in seen:
            self.fail(where, f"duplicate id {ident}")
        return ident


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _categories(check: _Checker, value: Any) -> dict[int, str]:
    categories: dict[int, str] = {}
    for i, item in enumerate(check.items(value, "categories")):
        where = f"categories[{i}]"
        item = check.record(item, where, {"id", "name"})
        ident = check.unique_id(item["id"], f"{where}.id", categories)
        name = check.text(item["name"], f"{where}.name")
        if name in categories.values():
            check.fail(f"{where}.name", f"duplicate category name {name!r}")
        categories[ident] = name
    if not categories:
        check.fail("categories", "is empty")
    return categories


def _images(check: _Checker, value: Any) -> dict[int, CorpusImage]:
    images: dict[int, CorpusImage] = {}
    names: set[str] = set()
    for i, item in enumerate(check.items(value, "images")):
        where = f"images[{i}]"
        item = check.record(item, where, {"id", "file_name", "width", "height"})
        ident = check.unique_id(item["id"], f"{where}.id", images)
        file_name = check.text(item["file_name"], f"{where}.file_name")
        if Path(file_name).is_absolute() or ".." in Path(file_name).parts or "\\" in file_name:
            check.fail(f"{where}.file_name", f"must be a plain path inside {IMAGES_DIR}/, got {file_name!r}")
        if file_name in names:
            check.fail(f"{where}.file_name", f"duplicate file name {file_name!r}")
        names.add(file_name)
        width = check.integer(item["width"], f"{where}.width", minimum=1)
        height = check.integer(item["height"], f"{where}.height", minimum=1)
        images[ident] = CorpusImage(ident, file_name, width, height)
    return images


def _annotations(check: _Checker, value: Any, images: Mapping, categories: Mapping) -> dict[int, CorpusAnnotation]:
    annotations: dict[int, CorpusAnnotation] = {}
    for i, item in enumerate(check.items(value, "annotations")):
        where = f"annotations[{i}]"
        item = check.record(item, where, {"id", "image_id", "category_id", "bbox"})
        ident = check.unique_id(item["id"], f"{where}.id", annotations)
        image_id = check.integer(item["image_id"], f"{where}.image_id")
        if image_id not in images:
            check.fail(f"{where}.image_id", f"no image has id {image_id}")
        category_id = check.integer(item["category_id"], f"{where}.category_id")
        if category_id not in categories:
            check.fail(f"{where}.category_id", f"unknown category id {category_id}")
        bbox = check.items(item["bbox"], f"{where}.bbox")
        if len(bbox) != 4:
            check.fail(f"{where}.bbox", f"must be [x, y, w, h], got {len(bbox)} values")
        x, y, w, h = (check.number(v, f"{where}.bbox[{k}]") for k, v in enumerate(bbox))
        image = images[image_id]
        if w <= 0 or h <= 0:
            check.fail(f"{where}.bbox", f"width and height must be > 0, got {bbox}")
        if x < 0 or y < 0 or x + w > image.width or y + h > image.height:
            check.fail(f"{where}.bbox", f"{bbox} is outside the {image.width} x {image.height} image")
        annotations[ident] = CorpusAnnotation(ident, image_id, category_id, (x, y, w, h))
    return annotations


def _captions(check: _Checker, value: Any, images, annotations, categories) -> list[CorpusCaption]:
    captions: list[CorpusCaption] = []
    seen: dict[int, None] = {}
    for i, item in enumerate(check.items(value, "captions")):
        where = f"captions[{i}]"
        item = check.record(item, where, {"id", "image_id", "kind", "text", "boxes"})
        ident = check.unique_id(item["id"], f"{where}.id", seen)
        seen[ident] = None
        image_id = check.integer(item["image_id"], f"{where}.image_id")
        if image_id not in images:
            check.fail(f"{where}.image_id", f"no image has id {image_id}")
        if item["kind"] not in CAPTION_KINDS:
            check.fail(f"{where}.kind", f"must be one of {', '.join(CAPTION_KINDS)}, got {item['kind']!r}")
        text = check.text(item["text"], f"{where}.text")
        boxes = []
        for j, box in enumerate(check.items(item["boxes"], f"{where}.boxes")):
            boxes.append(_grounded_box(check, f"{where}.boxes[{j}]", box, text, image_id, annotations,
                                       categories if item["kind"] == "detection" else None))
            if boxes[-1].annotation_id in [b.annotation_id for b in boxes[:-1]]:
                check.fail(f"{where}.boxes[{j}].annotation_id", f"annotation {boxes[-1].annotation_id} listed twice")
        captions.append(CorpusCaption(ident, image_id, item["kind"], text, tuple(boxes)))
    return captions


def _grounded_box(check: _Checker, where: str, box: Any, text: str, image_id: int, annotations,
                  categories) -> GroundedBox:
    """One ``boxes[j]`` entry; for a detection caption (``categories`` given) each span must be the name."""
    box = check.record(box, where, {"annotation_id", "spans"})
    ann_id = check.integer(box["annotation_id"], f"{where}.annotation_id")
    if ann_id not in annotations:
        check.fail(f"{where}.annotation_id", f"no annotation has id {ann_id}")
    if annotations[ann_id].image_id != image_id:
        check.fail(f"{where}.annotation_id", f"annotation {ann_id} belongs to image "
                   f"{annotations[ann_id].image_id}, not to this caption's image {image_id}")
    spans = []
    for k, span in enumerate(check.items(box["spans"], f"{where}.spans")):
        span_where = f"{where}.spans[{k}]"
        if not isinstance(span, list) or len(span) != 2:
            check.fail(span_where, f"must be [start, end], got {span!r}")
        start, end = (check.integer(v, span_where) for v in span)
        if not 0 <= start < end <= len(text):
            check.fail(span_where, f"[{start}, {end}] is not a non-empty range inside the {len(text)}-character text")
        name = None if categories is None else categories[annotations[ann_id].category_id]
        if name is not None and text[start:end] != name:
            check.fail(span_where, f"covers {text[start:end]!r}, not the category name {name!r}")
        spans.append((start, end))
    if not spans:
        check.fail(f"{where}.spans", "is empty: every grounded box needs the span of the words naming it")
    return GroundedBox(ann_id, tuple(spans))


def _check_grounded(check: _Checker, annotations: Mapping, captions: list[CorpusCaption]) -> None:
    grounded = {box.annotation_id for caption in captions for box in caption.boxes}
    for i, ann_id in enumerate(annotations):
        if ann_id not in grounded:
            check.fail(f"annotations[{i}]", f"annotation {ann_id} is grounded by no caption of its image")


def _check_image_file(path: Path, image: CorpusImage) -> None:
    """The file exists and its header says PNG, RGB and the recorded size (pixels are decoded when loaded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            found = (opened.format, opened.mode, opened.size)
    except FileNotFoundError:
        raise UserError(f"image file of image {image.id} not found", path=path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"cannot read the image of image {image.id} ({err})", path=path) from None
    if found != ("PNG", "RGB", (image.width, image.height)):
        raise UserError(f"is {found[0]} {found[1]} {found[2][0]} x {found[2][1]}; the corpus says PNG RGB "
                        f"{image.width} x {image.height} (image {image.id})", path=path)
