"""Readers for the fine-grained datasets in their released on-disk formats.

Each reader returns ``(samples, classes)`` for a split: ``samples`` a list of (image path, label)
and ``classes`` the class names (label i <-> classes[i]). Format problems are UserErrors that name
the file (and line). Images are decoded lazily by ``ImageList``.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import UserError
from .transforms import load_image

IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


def _need_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise UserError(f"{what} folder not found: {path}")
    return path


def _read_lines(path: str) -> list[tuple[int, str]]:
    if not os.path.isfile(path):
        raise UserError(f"dataset file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [(i + 1, ln.strip()) for i, ln in enumerate(f) if ln.strip()]


def _bad(path: str, lineno: int, msg: str):
    raise UserError(f"{path}:{lineno}: {msg}")


def _split(split: str) -> bool:
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    return split == "train"


def cub(root: str, split: str):
    """CUB-200-2011: images.txt, image_class_labels.txt, train_test_split.txt, images/ (val == test)."""
    train = _split(split)
    _need_dir(root, "CUB-200-2011")
    if not os.path.isfile(os.path.join(root, "images.txt")) and os.path.isdir(os.path.join(root, "CUB_200_2011")):
        root = os.path.join(root, "CUB_200_2011")
    files = {n: os.path.join(root, n) for n in ("images.txt", "image_class_labels.txt", "train_test_split.txt")}
    tables = {}
    for n, p in files.items():
        t = {}
        for ln, text in _read_lines(p):
            parts = text.split(maxsplit=1)
            if len(parts) != 2:
                _bad(p, ln, "expected '<image id> <value>'")
            t[parts[0]] = parts[1]
        tables[n] = t
    classes_path = os.path.join(root, "classes.txt")
    samples, labels = [], set()
    for img_id, rel in tables["images.txt"].items():
        if img_id not in tables["image_class_labels.txt"] or img_id not in tables["train_test_split.txt"]:
            raise UserError(f"{files['images.txt']}: image id {img_id} missing from the label or split file")
        if (tables["train_test_split.txt"][img_id].strip() == "1") != train:
            continue
        try:
            label = int(tables["image_class_labels.txt"][img_id]) - 1
        except ValueError:
            raise UserError(f"{files['image_class_labels.txt']}: label of image {img_id} is not an integer") from None
        samples.append((os.path.join(root, "images", rel), label))
        labels.add(label)
    if os.path.isfile(classes_path):
        classes = [t.split(maxsplit=1)[1] for _, t in _read_lines(classes_path)]
    else:
        classes = [str(i) for i in range(max(labels) + 1)] if labels else []
    return samples, classes


def aircraft(root: str, split: str, level: str = "variant"):
    """FGVC-Aircraft: data/images_<level>_{trainval,test}.txt ('<id> <name with spaces>'), data/images/."""
    train = _split(split)
    data = os.path.join(_need_dir(root, "FGVC-Aircraft"), "data")
    if not os.path.isdir(data) and os.path.isfile(os.path.join(root, f"images_{level}_trainval.txt")):
        data = root
    path = os.path.join(data, f"images_{level}_{'trainval' if train else 'test'}.txt")
    rows = []
    for ln, text in _read_lines(path):
        parts = text.split(maxsplit=1)
        if len(parts) != 2:
            _bad(path, ln, "expected '<image id> <class name>'")
        rows.append(parts)
    classes_file = os.path.join(data, {"variant": "variants.txt", "family": "families.txt",
                                       "manufacturer": "manufacturers.txt"}[level])
    if os.path.isfile(classes_file):
        classes = [t for _, t in _read_lines(classes_file)]
    else:
        classes = sorted({name for _, name in rows})
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for img_id, name in rows:
        if name not in index:
            raise UserError(f"{path}: class '{name}' is not in {classes_file}")
        samples.append((os.path.join(data, "images", img_id + ".jpg"), index[name]))
    return samples, classes


def pets(root: str, split: str):
    """Oxford-IIIT Pets: annotations/{trainval,test}.txt ('<name> <class id 1..37> ...'), images/."""
    train = _split(split)
    path = os.path.join(_need_dir(root, "Oxford-IIIT Pets"), "annotations", "trainval.txt" if train else "test.txt")
    samples, classes = [], {}
    for ln, text in _read_lines(path):
        if text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) < 2 or not parts[1].isdigit():
            _bad(path, ln, "expected '<image name> <class id> <species> <breed id>'")
        label = int(parts[1]) - 1
        classes[label] = parts[0].rsplit("_", 1)[0]
        samples.append((os.path.join(root, "images", parts[0] + ".jpg"), label))
    names = [classes.get(i, str(i)) for i in range(max(classes) + 1)] if classes else []
    return samples, names


def indoor67(root: str, split: str):
    """MIT Indoor-67: TrainImages.txt / TestImages.txt ('<class>/<file>'), Images/<class>/<file>."""
    train = _split(split)
    _need_dir(root, "MIT Indoor-67")
    path = os.path.join(root, "TrainImages.txt" if train else "TestImages.txt")
    rows = []
    for ln, text in _read_lines(path):
        if "/" not in text:
            _bad(path, ln, "expected '<class>/<file name>'")
        rows.append(text)
    classes = sorted({r.split("/", 1)[0] for r in rows})
    if os.path.isdir(os.path.join(root, "Images")):
        classes = sorted(set(classes) | {d for d in os.listdir(os.path.join(root, "Images"))
                                        if os.path.isdir(os.path.join(root, "Images", d))})
    index = {c: i for i, c in enumerate(classes)}
    return [(os.path.join(root, "Images", r), index[r.split("/", 1)[0]]) for r in rows], classes


def stanford40(root: str, split: str):
    """Stanford-40 Actions: ImageSplits/actions.txt + ImageSplits/<action>_{train,test}.txt, JPEGImages/."""
    train = _split(split)
    splits = _need_dir(os.path.join(_need_dir(root, "Stanford-40"), "ImageSplits"), "Stanford-40 ImageSplits")
    actions_path = os.path.join(splits, "actions.txt")
    classes = [t.split()[0] for ln, t in _read_lines(actions_path) if not t.startswith("action_name")]
    samples = []
    for i, a in enumerate(classes):
        for _, name in _read_lines(os.path.join(splits, f"{a}_{'train' if train else 'test'}.txt")):
            samples.append((os.path.join(root, "JPEGImages", name), i))
    return samples, classes


def class_folder(root: str, split: str):
    """Generic layout: <root>/<split>/<class>/<image>; 'val' falls back to 'test' and vice versa."""
    _split(split)
    _need_dir(root, "dataset")
    d = os.path.join(root, split)
    if not os.path.isdir(d):
        alt = {"val": "test", "test": "val"}.get(split)
        if alt and os.path.isdir(os.path.join(root, alt)):
            d = os.path.join(root, alt)
        else:
            raise UserError(f"split folder not found: {d} (expected <root>/train, <root>/val with one folder per class)")
    classes = sorted(c for c in os.listdir(d) if os.path.isdir(os.path.join(d, c)))
    if not classes:
        raise UserError(f"no class folders in {d} (expected {d}/<class>/<image>)")
    samples = []
    for i, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(d, c))):
            if f.lower().endswith(IMG_EXT):
                samples.append((os.path.join(d, c, f), i))
    if not samples:
        raise UserError(f"no images ({', '.join(IMG_EXT)}) under {d}/<class>/")
    return samples, classes


def _mat(path: str) -> dict:
    from .matfile import loadmat
    if not os.path.isfile(path):
        raise UserError(f"dataset file not found: {path}")
    try:
        return loadmat(path)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def _need_var(mat: dict, name: str, path: str):
    if name not in mat:
        raise UserError(f"{path} has no variable '{name}' (found: {', '.join(mat) or 'none'})")
    return mat[name]


def flowers(root: str, split: str):
    """Oxford Flowers-102: imagelabels.mat ('labels'), setid.mat ('trnid', 'valid', 'tstid'),
    jpg/image_00001.jpg. Train = trnid + valid (the usual 2,040 images), val / test = tstid."""
    train = _split(split)
    _need_dir(root, "Oxford Flowers-102")
    lp, sp = os.path.join(root, "imagelabels.mat"), os.path.join(root, "setid.mat")
    labels = _need_var(_mat(lp), "labels", lp).ravel().astype(int)
    sets = _mat(sp)
    ids = [int(i) for k in (("trnid", "valid") if train else ("tstid",)) for i in _need_var(sets, k, sp).ravel()]
    if any(not 1 <= i <= len(labels) for i in ids):
        raise UserError(f"{sp}: image ids out of range 1..{len(labels)}")
    samples = [(os.path.join(root, "jpg", f"image_{i:05d}.jpg"), int(labels[i - 1]) - 1) for i in ids]
    return samples, [str(i + 1) for i in range(int(labels.max()))]


def cars(root: str, split: str):
    """Stanford Cars: devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat (struct
    'annotations' with 'class' and 'fname'), devkit/cars_meta.mat ('class_names'), cars_train/, cars_test/."""
    train = _split(split)
    _need_dir(root, "Stanford Cars")
    devkit = os.path.join(root, "devkit")
    if train:
        ann, folder = os.path.join(devkit, "cars_train_annos.mat"), "cars_train"
    else:
        ann = os.path.join(root, "cars_test_annos_withlabels.mat")
        if not os.path.isfile(ann):
            ann = os.path.join(devkit, "cars_test_annos_withlabels.mat")
        folder = "cars_test"
    rows = _need_var(_mat(ann), "annotations", ann)
    samples = []
    for i, r in enumerate(rows):
        if "class" not in r or "fname" not in r:
            raise UserError(f"{ann}: annotation {i + 1} lacks 'class' or 'fname'")
        samples.append((os.path.join(root, folder, r["fname"]), int(np.asarray(r["class"]).ravel()[0]) - 1))
    meta = os.path.join(devkit, "cars_meta.mat")
    classes = list(_need_var(_mat(meta), "class_names", meta)) if os.path.isfile(meta) else \
        [str(i + 1) for i in range(max(lab for _, lab in samples) + 1)]
    return samples, classes


def dogs(root: str, split: str):
    """Stanford Dogs: train_list.mat / test_list.mat ('file_list' cell, 'labels' 1..120), Images/."""
    train = _split(split)
    _need_dir(root, "Stanford Dogs")
    p = os.path.join(root, "train_list.mat" if train else "test_list.mat")
    mat = _mat(p)
    files, labels = _need_var(mat, "file_list", p), _need_var(mat, "labels", p).ravel().astype(int)
    if len(files) != len(labels):
        raise UserError(f"{p}: {len(files)} files but {len(labels)} labels")
    samples = [(os.path.join(root, "Images", f if isinstance(f, str) else str(f)), int(lab) - 1)
               for f, lab in zip(files, labels)]
    names = {}
    for f, lab in zip(files, labels):
        names[int(lab) - 1] = str(f).split("/", 1)[0].split("-", 1)[-1]
    return samples, [names.get(i, str(i)) for i in range(max(names) + 1)]


READERS: dict = {}  # data.dataset -> reader(root, split) -> ([(path, label)], class names)


def register_reader(name: str, reader=None):
    """Register an on-disk classification dataset under ``data.dataset: <name>``: ``reader(root,
    split)`` ("train" / "val") returns the split's [(image path, label)] and the class names.
    A decorator (``@register_reader("inat")``) or a call."""
    def add(fn):
        if name in READERS:
            raise ValueError(f"dataset {name!r} is already registered")
        READERS[name] = fn
        return fn
    return add(reader) if reader is not None else add


for _name, _reader in {"cub": cub, "cars": cars, "aircraft": aircraft, "dogs": dogs, "pets": pets,
                       "flowers": flowers, "indoor67": indoor67, "stanford40": stanford40,
                       "folder": class_folder}.items():
    register_reader(_name, _reader)


class ImageList:
    """Decoded-on-demand list of (path, label); ``get(i)`` -> ((3, H, W) float in [0, 1], label)."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], where: str = ""):
        if not samples:
            raise UserError(f"dataset {where} has no images for this split")
        self.samples, self.classes, self.where = samples, classes, where
        self.labels = [lab for _, lab in samples]
        self.num_classes = max(len(classes), max(self.labels) + 1)

    def file_groups(self) -> list[tuple[str, str]]:
        """(path, class name) of every image (data.check)."""
        return [(p, self.classes[lab] if lab < len(self.classes) else str(lab)) for p, lab in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def get(self, index: int):
        path, label = self.samples[index]
        return load_image(path), label
