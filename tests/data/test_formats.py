"""Each dataset reader on a tiny fake tree in its real on-disk format, plus the LR protocol."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vimd_models.data import (EpochSampler, ImageList, SRPairs, SyntheticFineGrained, build_classification,
                              build_sr)
from vimd_models.data import folders
from vimd_models.data.transforms import LowResProtocol, load_image, resize
from vimd_models.engine.config import load_config
from vimd_models.errors import UserError


def _img(path, seed, size=(20, 24)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def test_cub(tmp_path):
    root = tmp_path / "CUB_200_2011"
    rel = ["001.Black_footed_Albatross/a.jpg", "001.Black_footed_Albatross/b.jpg", "002.Laysan_Albatross/c.jpg"]
    for i, r in enumerate(rel):
        _img(str(root / "images" / r), i)
    _write(root / "images.txt", [f"{i + 1} {r}" for i, r in enumerate(rel)])
    _write(root / "image_class_labels.txt", ["1 1", "2 1", "3 2"])
    _write(root / "train_test_split.txt", ["1 1", "2 0", "3 1"])
    _write(root / "classes.txt", ["1 001.Black_footed_Albatross", "2 002.Laysan_Albatross"])
    train, classes = folders.cub(str(tmp_path), "train")  # the parent folder works too
    test, _ = folders.cub(str(root), "test")
    assert [lab for _, lab in train] == [0, 1] and [lab for _, lab in test] == [0]
    assert classes == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    img, lab = ImageList(train, classes).get(1)
    assert img.shape == (3, 20, 24) and lab == 1 and 0 <= img.min() and img.max() <= 1


def test_cub_bad_line(tmp_path):
    _write(tmp_path / "images.txt", ["1"])
    _write(tmp_path / "image_class_labels.txt", ["1 1"])
    _write(tmp_path / "train_test_split.txt", ["1 1"])
    with pytest.raises(UserError, match=r"images.txt:1"):
        folders.cub(str(tmp_path), "train")


def test_aircraft(tmp_path):
    data = tmp_path / "data"
    for i, n in enumerate(["1025794", "1340192", "0056978"]):
        _img(str(data / "images" / f"{n}.jpg"), i)
    _write(data / "variants.txt", ["707-320", "A300B4", "Cessna 172"])
    _write(data / "images_variant_trainval.txt", ["1025794 707-320", "1340192 Cessna 172"])
    _write(data / "images_variant_test.txt", ["0056978 A300B4"])
    train, classes = folders.aircraft(str(tmp_path), "train")
    test, _ = folders.aircraft(str(tmp_path), "test")
    assert [lab for _, lab in train] == [0, 2] and [lab for _, lab in test] == [1]
    assert classes[2] == "Cessna 172"
    _write(data / "images_variant_test.txt", ["0056978 B747"])
    with pytest.raises(UserError, match="B747"):
        folders.aircraft(str(tmp_path), "test")


def test_pets(tmp_path):
    for i, n in enumerate(["Abyssinian_100", "great_pyrenees_3", "Abyssinian_2"]):
        _img(str(tmp_path / "images" / f"{n}.jpg"), i)
    _write(tmp_path / "annotations" / "trainval.txt", ["#header", "Abyssinian_100 1 1 1", "great_pyrenees_3 22 2 12"])
    _write(tmp_path / "annotations" / "test.txt", ["Abyssinian_2 1 1 1"])
    train, classes = folders.pets(str(tmp_path), "train")
    assert [lab for _, lab in train] == [0, 21] and classes[0] == "Abyssinian" and classes[21] == "great_pyrenees"
    assert len(folders.pets(str(tmp_path), "val")[0]) == 1


def test_indoor67_and_stanford40(tmp_path):
    ind = tmp_path / "indoor"
    for i, r in enumerate(["kitchen/a.jpg", "bar/b.jpg", "kitchen/c.jpg"]):
        _img(str(ind / "Images" / r), i)
    _write(ind / "TrainImages.txt", ["kitchen/a.jpg", "bar/b.jpg"])
    _write(ind / "TestImages.txt", ["kitchen/c.jpg"])
    tr, cl = folders.indoor67(str(ind), "train")
    assert cl == ["bar", "kitchen"] and [lab for _, lab in tr] == [1, 0]
    s40 = tmp_path / "s40"
    _write(s40 / "ImageSplits" / "actions.txt", ["action_name\tnumber_of_images", "applauding\t2", "jumping\t1"])
    _write(s40 / "ImageSplits" / "applauding_train.txt", ["applauding_001.jpg"])
    _write(s40 / "ImageSplits" / "applauding_test.txt", ["applauding_002.jpg"])
    _write(s40 / "ImageSplits" / "jumping_train.txt", ["jumping_001.jpg"])
    _write(s40 / "ImageSplits" / "jumping_test.txt", [""])
    tr, cl = folders.stanford40(str(s40), "train")
    assert cl == ["applauding", "jumping"] and [os.path.basename(p) for p, _ in tr] == ["applauding_001.jpg", "jumping_001.jpg"]


def test_class_folder_and_config_errors(tmp_path):
    for i, r in enumerate(["train/cat/1.png", "train/dog/2.jpg", "val/cat/3.png", "val/dog/4.png"]):
        _img(str(tmp_path / r), i)
    cfg = load_config(None, ["data.dataset=folder", f"data.root={tmp_path}", "data.img_size=16", "data.lr_size=4"])
    ds = build_classification(cfg, "train", "hr_lr")
    hr, lr, y = ds[(1, 5)]
    assert hr.shape == (3, 16, 16) and lr.shape == (3, 4, 4) and y == 1 and ds.num_classes == 2
    with pytest.raises(UserError, match="folder not found"):
        build_classification(load_config(None, ["data.dataset=folder", f"data.root={tmp_path}/nope"]), "train")
    with pytest.raises(UserError, match="unknown classification dataset"):
        build_classification(load_config(None, ["data.dataset=imagenet21k", "data.root=x"]), "train")


def test_corrupt_image_is_a_user_error(tmp_path):
    p = tmp_path / "bad.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(UserError, match="bad.jpg"):
        load_image(str(p))


def test_sr_pairs_made_and_read(tmp_path):
    for i in range(2):
        _img(str(tmp_path / "HR" / f"000{i}.png"), i, size=(34, 41))
    made = SRPairs(str(tmp_path / "HR"), 4)
    hr, lr = made.get(0)
    assert hr.shape == (3, 32, 40) and lr.shape == (3, 8, 10)
    for i in range(2):  # DIV2K naming: 0000x4.png
        _img(str(tmp_path / "LR" / f"000{i}x4.png"), 10 + i, size=(8, 10))
    read = SRPairs(str(tmp_path / "HR"), 4, str(tmp_path / "LR"))
    assert torch.equal(read.get(1)[1], load_image(str(tmp_path / "LR" / "0001x4.png")))
    _img(str(tmp_path / "LR" / "0001x4.png"), 3, size=(9, 10))
    with pytest.raises(UserError, match="expected"):
        read.get(1)
    cfg = load_config(None, ["task=sr", "data.dataset=sr_folder", f"data.root={tmp_path / 'HR'}", "data.patch_size=16",
                             f"data.test_sets=[{tmp_path / 'HR'}]"])
    (train,) = build_sr(cfg, "train")
    lr_p, hr_p = train[(0, 1)]
    assert lr_p.shape == (3, 4, 4) and hr_p.shape == (3, 16, 16)
    (test,) = build_sr(cfg, "val")
    assert test.name == "HR" and test[(1, 0)][1].shape == (3, 32, 40)


def test_low_res_protocol_views_share_the_crop():
    img = torch.rand(3, 50, 70)
    proto = LowResProtocol(32, 8, train=True, scale_min=0.3)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    hr, lr = proto(img, g1)
    hr2, lr2 = proto(img, g2)
    assert torch.equal(hr, hr2) and torch.equal(lr, lr2)  # deterministic per generator
    assert hr.shape == (3, 32, 32) and lr.shape == (3, 8, 8)
    torch.testing.assert_close(lr, resize(hr, (8, 8)))  # LR is the bicubic of the same crop
    hr_t, lr_t = LowResProtocol(32, 8, train=False)(img, g1)
    assert hr_t.shape == (3, 32, 32)
    torch.testing.assert_close(hr_t, resize(img, (32, 45))[:, :, 6:38])


def test_synthetic_deterministic_and_balanced():
    a = SyntheticFineGrained(10, 30, "train", seed=1, render_size=40)
    b = SyntheticFineGrained(10, 30, "train", seed=1, render_size=40)
    c = SyntheticFineGrained(10, 30, "val", seed=1, render_size=40)
    assert torch.equal(a.get(7)[0], b.get(7)[0]) and not torch.equal(a.get(7)[0], c.get(7)[0])
    assert sorted(set(a.labels)) == list(range(10)) and a.labels.count(0) == 3
    # classes of one group share the body colour and differ only in the small details
    assert a.class_attributes(0)[0] == a.class_attributes(a.n_groups)[0]
    assert a.class_attributes(0)[1:] != a.class_attributes(a.n_groups)[1:]


def test_epoch_sampler_shards_and_resumes():
    full = EpochSampler(20, seed=0, epoch=3, shuffle=True, drop_last=True, batch_size=4).keys
    assert len(full) == 20 and sorted(k[0] for k in full) == list(range(20))
    r0 = EpochSampler(20, 0, 3, True, rank=0, world=2, drop_last=True, batch_size=4).keys
    r1 = EpochSampler(20, 0, 3, True, rank=1, world=2, drop_last=True, batch_size=4).keys
    assert not {k[0] for k in r0} & {k[0] for k in r1} and len(r0) == len(r1) == 8
    assert EpochSampler(20, 0, 3, True, start=8).keys == EpochSampler(20, 0, 3, True).keys[8:]
    assert EpochSampler(20, 0, 4, True).keys != EpochSampler(20, 0, 3, True).keys


def test_matfile_reader(tmp_path):
    from tests.data.matwriter import savemat
    from vimd_models.data.matfile import loadmat
    for compress in (False, True):
        p = str(tmp_path / f"m{compress}.mat")
        savemat(p, {"labels": [[1, 2, 3]], "name": "abc", "cell": ["x/y.jpg", "z.jpg"],
                    "s": [{"class": 3.0, "fname": "00001.jpg"}, {"class": 1.0, "fname": "00002.jpg"}]}, compress)
        m = loadmat(p)
        assert m["labels"].shape == (1, 3) and m["labels"].tolist() == [[1, 2, 3]]
        assert m["name"] == "abc" and m["cell"] == ["x/y.jpg", "z.jpg"]
        assert m["s"][1]["fname"] == "00002.jpg" and float(m["s"][0]["class"].ravel()[0]) == 3.0
    (tmp_path / "bad.mat").write_bytes(b"not a mat file" * 20)
    with pytest.raises(ValueError, match="not a MATLAB"):
        loadmat(str(tmp_path / "bad.mat"))


def test_flowers_cars_dogs(tmp_path):
    from tests.data.matwriter import savemat
    fl = tmp_path / "flowers"
    for i in range(1, 5):
        _img(str(fl / "jpg" / f"image_{i:05d}.jpg"), i)
    savemat(str(fl / "imagelabels.mat"), {"labels": [[1, 2, 2, 1]]})
    savemat(str(fl / "setid.mat"), {"trnid": [[1]], "valid": [[2]], "tstid": [[3, 4]]}, compress=True)
    tr, cl = folders.flowers(str(fl), "train")
    te, _ = folders.flowers(str(fl), "test")
    assert [lab for _, lab in tr] == [0, 1] and [lab for _, lab in te] == [1, 0] and len(cl) == 2
    assert os.path.basename(te[0][0]) == "image_00003.jpg"

    ca = tmp_path / "cars"
    _img(str(ca / "cars_train" / "00001.jpg"), 1)
    _img(str(ca / "cars_test" / "00001.jpg"), 2)
    os.makedirs(ca / "devkit")
    savemat(str(ca / "devkit" / "cars_train_annos.mat"), {"annotations": [{"bbox_x1": 1.0, "class": 2.0, "fname": "00001.jpg"}]})
    savemat(str(ca / "cars_test_annos_withlabels.mat"), {"annotations": [{"class": 1.0, "fname": "00001.jpg"}]}, compress=True)
    savemat(str(ca / "devkit" / "cars_meta.mat"), {"class_names": ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]})
    tr, cl = folders.cars(str(ca), "train")
    assert tr[0][1] == 1 and cl[1] == "Acura RL Sedan 2012" and tr[0][0].endswith("cars_train/00001.jpg")
    assert folders.cars(str(ca), "test")[0][0][1] == 0

    dg = tmp_path / "dogs"
    rel = ["n02085620-Chihuahua/n02085620_1.jpg", "n02085782-Japanese_spaniel/n02085782_2.jpg"]
    for i, r in enumerate(rel):
        _img(str(dg / "Images" / r), i)
    savemat(str(dg / "train_list.mat"), {"file_list": rel, "labels": [[1], [2]]})
    tr, cl = folders.dogs(str(dg), "train")
    assert [lab for _, lab in tr] == [0, 1] and cl == ["Chihuahua", "Japanese_spaniel"]
    with pytest.raises(UserError, match="test_list.mat"):
        folders.dogs(str(dg), "test")
    img, _ = ImageList(tr, cl).get(1)
    assert img.shape[0] == 3
