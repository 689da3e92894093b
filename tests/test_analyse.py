"""local.analyse: a folder of photos through the pipeline, one JSON line each."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import IMAGES, ROOT
from emotion.annotate import COLOURS, rgb
from emotion.config import Settings
from emotion.model import load_model
from emotion.pipeline import Pipeline
from local import analyse

ORDER = ["Shot.JPEG", "astronaut.jpg", "broken.jpg", "coffee.jpg", "empty.jpg", "group.jpg", "notes.png",
         "sub/astronaut.jpg"]


@pytest.fixture(scope="module")
def model():
    return load_model(ROOT / "layers" / "model")


@pytest.fixture(autouse=True)
def built(monkeypatch, model):
    """main() builds its Pipeline with the model loaded once for the module; the
    settings it was given are recorded."""
    settings = []

    def pipeline(s):
        settings.append(s)
        return Pipeline(s, model=model)
    monkeypatch.setattr(analyse, "Pipeline", pipeline)
    return settings


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / ".cache").mkdir()
    astronaut = (IMAGES / "astronaut.jpg").read_bytes()
    for name in ("astronaut.jpg", "group.jpg", "coffee.jpg"):
        (folder / name).write_bytes((IMAGES / name).read_bytes())
    (folder / "Shot.JPEG").write_bytes((IMAGES / "coffee.jpg").read_bytes())    # any case
    (folder / "sub" / "astronaut.jpg").write_bytes((IMAGES / "astronaut.jpg").read_bytes())
    (folder / "broken.jpg").write_bytes(astronaut[:300])                         # truncated JPEG
    (folder / "notes.png").write_text("not a picture\n")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / ".hidden.jpg").write_bytes(astronaut)                              # skipped
    (folder / ".cache" / "astronaut.jpg").write_bytes(astronaut)                 # skipped
    (folder / "readme.txt").write_text("skipped\n")                              # not an image
    (folder / "old.jpg.annotated.jpg").write_bytes(astronaut)                    # our own output: skipped
    return folder


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def decoded(path: Path) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert pixels is not None, f"{path} is not a readable image"
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def test_folder_one_line_per_photo_in_order_bad_ones_reported(photos, tmp_path, capsys, built):
    out = tmp_path / "out.jsonl"
    assert analyse.main([str(photos), "--out", str(out)]) == 0
    got = lines(out)
    assert [g["path"] for g in got] == [str(photos / name) for name in ORDER]
    by_name = dict(zip(ORDER, got))
    astronaut = by_name["astronaut.jpg"]
    assert astronaut["emotion"] == "HAPPY" and len(astronaut["faces"]) == 1
    assert astronaut["faces"][0]["emotion"] == "HAPPY" and astronaut["source"] == "local"
    assert astronaut["image"] == {"width": 512, "height": 512} and astronaut["model"]["name"] == "resnet9"
    assert by_name["sub/astronaut.jpg"]["faces"] == astronaut["faces"]
    assert len(by_name["group.jpg"]["faces"]) == 3
    for name in ("coffee.jpg", "Shot.JPEG"):
        assert by_name[name]["faces"] == [] and by_name[name]["source"] == "none" and by_name[name]["emotion"] is None
        assert "fallback_error" not in by_name[name]  # the default --fallback off never asks Rekognition
    assert by_name["broken.jpg"] == {"path": str(photos / "broken.jpg"), "error": {
        "code": "invalid_image", "message": "The data is not a readable JPEG, PNG, WebP or BMP image."}}
    assert by_name["notes.png"]["error"]["code"] == "invalid_image"
    assert by_name["empty.jpg"]["error"]["code"] == "empty_image"
    assert built[0].fallback_mode == "off" and built[0].model_dir == ROOT / "layers" / "model"
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines()[-1] == "5 photos analysed, 5 faces found, 3 errors"


def test_the_answer_is_the_pipelines(photos, capsys, model):
    """stdout by default; each answer exactly the API's 200 body."""
    assert analyse.main([str(photos / "group.jpg")]) == 0
    [line] = capsys.readouterr().out.splitlines()
    pipeline = Pipeline(dataclasses.replace(Settings.from_env(), fallback_mode="off"), model=model)
    expected = pipeline.analyse((photos / "group.jpg").read_bytes())
    assert json.loads(line) == {"path": str(photos / "group.jpg"), **expected}


def test_annotate_keeps_the_folders(photos, tmp_path):
    out, drawn = tmp_path / "out.jsonl", tmp_path / "drawn"
    assert analyse.main([str(photos), "--out", str(out), "--annotate", str(drawn)]) == 0
    written = sorted(str(p.relative_to(drawn)) for p in drawn.rglob("*") if p.is_file())
    assert written == sorted(f"{name}.annotated.jpg" for name in ORDER
                             if name.split("/")[-1] not in ("broken.jpg", "notes.png", "empty.jpg"))
    for answer in lines(out):
        if "error" in answer:
            continue
        name = str(Path(answer["path"]).relative_to(photos))
        pixels, original = decoded(drawn / f"{name}.annotated.jpg"), decoded(photos / name)
        assert pixels.shape == original.shape
        if not answer["faces"]:
            assert np.abs(pixels.astype(int) - original).mean() < 3   # only re-encoded
        for face in answer["faces"]:
            box, colour = face["box"], np.array(rgb(COLOURS[face["emotion"]]))
            x, y = box["x"], box["y"] + box["height"] // 2       # the middle of the box's left edge
            assert np.abs(pixels[y, x].astype(int) - colour).max() < 60, (name, face)
            assert np.abs(original[y, x].astype(int) - colour).max() >= 60, (name, face)


def test_explicit_files_any_extension_missing_paths_and_name_clashes(photos, tmp_path):
    (tmp_path / "other").mkdir()
    odd = tmp_path / "other" / "astronaut.data"
    odd.write_bytes((IMAGES / "astronaut.jpg").read_bytes())
    twin = tmp_path / "other" / "group.jpg"
    twin.write_bytes((IMAGES / "group.jpg").read_bytes())
    out, drawn = tmp_path / "out.jsonl", tmp_path / "drawn"
    args = [f"{odd.parent}/./{odd.name}", str(tmp_path / "missing.jpg"), str(photos / "group.jpg"), str(twin), str(photos / ".hidden.jpg"),
            "--out", str(out), "--annotate", str(drawn)]
    assert analyse.main(args) == 0
    got = lines(out)
    assert [g["path"] for g in got] == args[:5]           # as given
    assert got[0]["emotion"] == "HAPPY"                     # named on the command line: tried
    assert got[1]["error"]["code"] == "not_found"
    assert len(got[2]["faces"]) == len(got[3]["faces"]) == 3
    assert got[4]["emotion"] == "HAPPY"
    assert sorted(p.name for p in drawn.iterdir()) == [
        ".hidden.jpg.annotated.jpg", "astronaut.data.annotated.jpg", "group.jpg-2.annotated.jpg",
        "group.jpg.annotated.jpg"]


def test_annotate_never_overwrites_an_input(tmp_path, capsys):
    photo, clash = tmp_path / "x.jpg", tmp_path / "x.jpg.annotated.jpg"
    photo.write_bytes((IMAGES / "coffee.jpg").read_bytes())
    clash.write_bytes((IMAGES / "astronaut.jpg").read_bytes())
    assert analyse.main([str(photo), str(clash), "--annotate", str(tmp_path)]) == 0
    assert clash.read_bytes() == (IMAGES / "astronaut.jpg").read_bytes()
    assert (tmp_path / "x.jpg.annotated.jpg.annotated.jpg").is_file()
    err = capsys.readouterr().err
    assert "is an input photo" in err and "2 photos analysed, 1 faces found, 1 errors" in err


def test_fallback_option(photos, tmp_path, built):
    assert analyse.main([str(photos / "astronaut.jpg"), "--fallback", "low-confidence",
                         "--out", str(tmp_path / "o")]) == 0
    assert built[-1].fallback_mode == "low-confidence"
    with pytest.raises(SystemExit) as exc:
        analyse.main([str(photos), "--fallback", "always"])
    assert exc.value.code == 2


def test_nothing_to_analyse_is_a_usage_error(tmp_path, capsys, built):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no photos\n")
    assert analyse.main([str(tmp_path / "empty")]) == 2
    assert analyse.main([str(tmp_path / "missing")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "no image files" in captured.err and "missing" in captured.err
    with pytest.raises(SystemExit) as exc:
        analyse.main([])
    assert exc.value.code == 2
    assert built == []  # no model loaded for nothing


def test_module_entry_point(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "function"), str(ROOT)])}
    run = subprocess.run([sys.executable, "-m", "local.analyse", str(IMAGES / "astronaut.jpg")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    [line] = run.stdout.splitlines()
    answer = json.loads(line)
    assert answer["path"] == str(IMAGES / "astronaut.jpg") and answer["emotion"] == "HAPPY"
    assert "1 photos analysed, 1 faces found, 0 errors" in run.stderr
