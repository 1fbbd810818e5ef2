"""Fault probes of the files data_prep's options name (issue 24): a Latin-1 captions CSV,
class map or class-names CSV, a directory given for a file, a demo directory that is a file.

$ python -m pytest -q tests/test_faults_prep_files.py

Each stops before any model loads with one stderr line that names the option, the file and
the fix, exit 2, and nothing written (no store directory, no demo images).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from data_prep.class_names import readable_names
from data_prep.sources import InputLayoutError, read_captions_csv, read_class_map
from tests.fixtures_extraction import draw_kaggle_tree, prep_argv

REPO = Path(__file__).resolve().parents[1]
NO_MODELS = {"dinov2": "x", "blip2": "x", "bert": "x"}  # never loaded: the input is refused first


def _cli(argv: list[str], monkeypatch) -> int:
    from data_prep.__main__ import _cli as cli

    monkeypatch.setattr("sys.argv", ["python -m data_prep", *argv])
    try:
        return cli()
    except SystemExit as stop:  # an option error, from the parser
        return stop.code


def _one_line(err: str, prog: str = "data_prep") -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


@pytest.fixture
def tree(tmp_path) -> tuple[Path, list[str]]:
    root = draw_kaggle_tree(tmp_path / "data", bad_images=False)
    ids = sorted(p.stem for p in root.rglob("*") if p.suffix in (".png", ".jpg"))
    return root, ids


def _latin1(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("latin-1"))
    return path


def _as_utf8(path: Path) -> Path:
    """What the message's ``iconv -f latin1 -t utf-8`` writes."""
    fixed = path.with_suffix(".utf8.csv")
    fixed.write_text(path.read_bytes().decode("latin-1"), encoding="utf-8")
    return fixed


def test_latin1_captions_csv_is_one_line_with_the_fix(tree, tmp_path, monkeypatch, capsys):
    root, ids = tree
    text = "id,caption\n" + "".join(f"{i},un café\n" for i in ids)
    captions = _latin1(tmp_path / "captions.csv", text)
    out = tmp_path / "store"
    argv = prep_argv(root, NO_MODELS, out, "--input.captions_csv", str(captions))
    assert _cli(argv, monkeypatch) == 2
    line = _one_line(capsys.readouterr().err)
    first = text.index("é")  # line 2, after "<id>,un caf"
    assert f"--input.captions_csv {captions} is not UTF-8 text: byte 0xe9 at line 2" in line
    assert f"(byte {first} of the file)" in line and "iconv -f latin1 -t utf-8" in line
    assert not out.exists()
    fixed = read_captions_csv(_as_utf8(captions), expected_ids={"all": ids})
    assert set(fixed.values()) == {"un café"}


def test_latin1_class_map_is_one_line_with_the_fix(tree, tmp_path, monkeypatch, capsys):
    root, _ = tree
    text = "class_name,label\ncat,0\ndog,1\nfish,2\nélan,3\n"
    class_map = _latin1(tmp_path / "classes.csv", text)
    out = tmp_path / "store"
    assert _cli(prep_argv(root, NO_MODELS, out, "--input.class_map", str(class_map)),
                monkeypatch) == 2  # fmt: skip
    line = _one_line(capsys.readouterr().err)
    assert f"--input.class_map {class_map} is not UTF-8 text: byte 0xe9 at line 5, column 1" in line
    assert "iconv -f latin1 -t utf-8" in line and not out.exists()
    assert read_class_map(_as_utf8(class_map)) == ["cat", "dog", "fish", "élan"]


def test_latin1_class_names_csv_names_its_option(tmp_path):
    names = _latin1(
        tmp_path / "names.csv", "folder,name\nn01440764,tanche\nn01443537,poisson doré\n"
    )
    with pytest.raises(ValueError, match=r"--input\.class_names .* byte 0xe9 at line 3"):
        readable_names(["n01440764", "n01443537"], str(names))
    got, _ = readable_names(["n01440764", "n01443537"], str(_as_utf8(names)))
    assert got == ["tanche", "poisson doré"]


def test_utf8_with_a_bom_still_reads(tmp_path):
    path = tmp_path / "map.csv"
    path.write_bytes(b"\xef\xbb\xbfclass_name,label\nchat,0\n\xc3\xa9lan,1\n")
    assert read_class_map(path) == ["chat", "élan"]


@pytest.mark.parametrize(
    "option, expected",
    [("--input.captions_csv", "an id,caption CSV file"),
     ("--input.class_map", "a class_name,label CSV file")],
)  # fmt: skip
def test_a_directory_for_a_csv_says_so(tree, tmp_path, monkeypatch, capsys, option, expected):
    root, _ = tree
    folder = tmp_path / "captions"
    folder.mkdir()
    out = tmp_path / "store"
    assert _cli(prep_argv(root, NO_MODELS, out, option, str(folder)), monkeypatch) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{option} {folder} is a directory; give {expected}" in line
    assert "does not exist" not in line and not out.exists()
    with pytest.raises(InputLayoutError, match=r"nope\.csv does not exist; give an id,caption"):
        read_captions_csv(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    "option, target, expected",
    [("--demo.models", "file", r"--demo\.models \S+ is a file, not a directory"),
     ("--demo.models", "file/sub", r"--demo\.models \S+ lies inside the file"),
     ("--demo.images", "file", r"--demo\.images \S+ is a file, not a directory"),
     ("--run.out", "file", r"--run\.out \S+ is a file, not a directory")],
)  # fmt: skip
def test_a_demo_directory_that_is_a_file_names_its_option(tmp_path, monkeypatch, capsys,
                                                          option, target, expected):  # fmt: skip
    (tmp_path / "file").write_text("not a directory")
    paths = {"--demo.models": tmp_path / "models", "--demo.images": tmp_path / "images",
             "--run.out": tmp_path / "store"}  # fmt: skip
    paths[option] = tmp_path / target
    argv = ["-c", str(REPO / "configs" / "prep" / "demo.yaml"), "--run.progress", "false"]
    for name, path in paths.items():
        argv += [name, str(path)]
    assert _cli(argv, monkeypatch) == 2
    line = _one_line(capsys.readouterr().err)
    assert re.search(expected, line), line
    if option != "--run.out":
        assert "--run.out" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing drawn or built


def test_demo_images_in_a_folder_of_other_files_is_not_deleted(tmp_path, monkeypatch, capsys):
    mine = draw_kaggle_tree(tmp_path / "mine", bad_images=False)  # the user's own images
    before = sorted(p for p in mine.rglob("*"))
    argv = ["-c", str(REPO / "configs" / "prep" / "demo.yaml"), "--run.progress", "false",
            "--demo.images", str(mine), "--run.out", str(tmp_path / "store")]  # fmt: skip
    assert _cli(argv, monkeypatch) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"--demo.images {mine} holds files but no test_labels.csv" in line
    assert "choose an empty or new --demo.images" in line
    assert sorted(p for p in mine.rglob("*")) == before and not (tmp_path / "store").exists()


@pytest.mark.parametrize("entry", ["data_prep", "analysis", "predict"])
def test_a_latin1_config_yaml_is_one_line(tmp_path, monkeypatch, capsys, entry):
    config = _latin1(tmp_path / "c.yaml", "run:\n  out: stores/x  # café\n")
    argv = ["-c", str(config)]
    if entry == "data_prep":
        rc = _cli(argv, monkeypatch)
    elif entry == "analysis":
        from analysis.__main__ import main

        with pytest.raises(SystemExit) as stop:
            main([*argv, "--store", "s", "--out", str(tmp_path / "o")])
        rc = stop.value.code
    else:
        import predict

        with pytest.raises(SystemExit) as stop:
            predict.main([f"--config={config}"])
        rc = stop.value.code
    assert rc == 2
    line = _one_line(capsys.readouterr().err, {"predict": "predict.py"}.get(entry, entry))
    assert f"--config {config} is not UTF-8 text: byte 0xe9 at line 2" in line
    assert "iconv -f latin1 -t utf-8" in line


def test_caption_ids_written_as_file_names_say_how_to_fix(tree, tmp_path, monkeypatch, capsys):
    root, _ = tree
    names = sorted(p.name for p in root.rglob("*") if p.suffix in (".png", ".jpg"))
    captions = tmp_path / "captions.csv"
    captions.write_text("id,caption\n" + "".join(f"{n},a sketch\n" for n in names))
    out = tmp_path / "store"
    assert _cli(prep_argv(root, NO_MODELS, out, "--input.captions_csv", str(captions)),
                monkeypatch) == 2  # fmt: skip
    line = _one_line(capsys.readouterr().err)
    assert "ids as file names (cat_t00.png" in line and "without extension" in line
    assert not out.exists()


def test_a_one_based_class_map_says_labels_count_from_0(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("class_name,label\ncat,1\ndog,2\nfish,3\n")
    with pytest.raises(InputLayoutError, match=r"labels must be 0\.\.2, each once; it has 1\.\.3"):
        read_class_map(path)


def test_a_binary_file_for_a_csv_says_so(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(InputLayoutError, match=r"--input\.captions_csv .* is a binary file, not"):
        read_captions_csv(path)
