import pytest

from dreampose.fsutil import replace_dir


def test_replace_dir_swaps_in_the_new_tree_and_removes_the_old(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    new = tmp_path / ".out.tmp"
    new.mkdir()
    (new / "new.txt").write_text("new")
    replace_dir(new, out)
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old dirs left


def test_replace_dir_creates_when_absent(tmp_path):
    new = tmp_path / ".x.tmp"
    new.mkdir()
    (new / "a").write_text("1")
    replace_dir(new, tmp_path / "x")
    assert (tmp_path / "x" / "a").read_text() == "1" and not new.exists()


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    import hashlib

    data = bytes(range(256)) * 5000  # > 1 MiB, so more than one chunk
    p = tmp_path / "blob"
    p.write_bytes(data)
    from dreampose.fsutil import sha256_file

    assert sha256_file(p) == hashlib.sha256(data).hexdigest()


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    from dreampose.fsutil import atomic_write

    path = tmp_path / "sub" / "a.json"
    atomic_write(path, lambda tmp: tmp.write_text("old"))
    with pytest.raises(RuntimeError):
        atomic_write(path, lambda tmp: (tmp.write_text("half"), (_ for _ in ()).throw(RuntimeError("disk full"))))
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temporary file left


def test_staging_dir_is_a_fresh_hidden_sibling(tmp_path):
    from dreampose.fsutil import staging_dir

    out = tmp_path / "deep" / "out"
    a, b = staging_dir(out), staging_dir(out)
    assert a != b and a.parent == out.parent and a.name.startswith(".out.tmp-") and out.parent.is_dir()
