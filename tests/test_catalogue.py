"""Tests of bloodlib.data.catalogue: catalogue entries, locations, manifests, fetch.

Everything runs offline on tiny temporary datasets; only the `realdata` test reads the
real datasets under BLOODLIB_DATA.
"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import pytest

from bloodlib.data import catalogue as cat
from bloodlib.errors import DatasetIntegrityError, DatasetNotFoundError

LOCAL = ("bccd", "bccd_wbc_masks", "txl_pbc", "wbc_seg_zheng", "pbc", "segpc2021")
MANUAL_ONLY = ("sn_am", "mimm_sbilab", "c_nmc_2019")
TINY_FILES = {"imgs/a.jpg": b"aaa", "imgs/b.jpg": b"bbbb", "labels.csv": b"a,1\nb,2\n"}


# ----------------------------------------------------------------------------- catalogue

def test_catalogue_fields_complete():
    assert set(LOCAL + MANUAL_ONLY) <= set(cat.CATALOGUE)
    for name, info in cat.CATALOGUE.items():
        assert info.name == name
        for attr in ("title", "description", "licence", "citation", "homepage"):
            assert getattr(info, attr).strip(), f"{name}.{attr} is empty"
        assert info.tasks and set(info.tasks) <= set(cat.TASKS)
        assert info.classes and all(c == c.lower() for c in info.classes)
        assert info.sources or info.manual_download, f"{name}: no way to get it"
        assert all(u.startswith("https://") for u in info.urls)
    for name in LOCAL:
        info = cat.CATALOGUE[name]
        assert info.expected_layout and info.manifest == name
        assert cat.load_manifest(name)["files"], f"no manifest shipped for {name}"
    for name in MANUAL_ONLY:
        assert not cat.CATALOGUE[name].downloadable
    pbc = cat.CATALOGUE["pbc"]
    assert pbc.subset_ok and "10.17632/snkd93bnjr.1" in pbc.citation
    assert "NC" in cat.CATALOGUE["segpc2021"].licence
    assert cat.CATALOGUE["wbc_seg_zheng"].licence == "GPL-3.0"


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(KeyError) as err:
        cat.dataset_path("nope")
    assert "bccd" in str(err.value) and "nope" in str(err.value)
    with pytest.raises(ValueError):
        cat.get_info("nope")


def test_describe_table(tmp_path):
    df = cat.describe(root=tmp_path)
    assert list(df["name"]) == list(cat.CATALOGUE)
    assert {"title", "tasks", "classes", "licence", "available"} <= set(df.columns)
    assert not df["available"].any()


# ----------------------------------------------------------------------------- locations

def test_data_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BLOODLIB_DATA", str(tmp_path))
    assert cat.data_dir() == tmp_path.resolve()
    monkeypatch.delenv("BLOODLIB_DATA")
    default = cat.data_dir()
    assert default.name == "data"
    assert (default.parent / "pyproject.toml").is_file()  # the source checkout's data/


def test_dataset_path_missing_names_folder_and_source(monkeypatch, tmp_path):
    monkeypatch.setenv("BLOODLIB_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as err:
        cat.dataset_path("bccd")
    msg = str(err.value)
    assert str(tmp_path / "bccd") in msg
    assert "BCCD/JPEGImages" in msg
    assert "github.com/Shenggan/BCCD_Dataset" in msg
    assert "python -m bloodlib fetch bccd" in msg and "BLOODLIB_DATA" in msg


def test_dataset_path_manual_dataset_gives_instructions(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        cat.dataset_path("pbc", root=tmp_path)
    msg = str(err.value)
    assert "10.17632/snkd93bnjr.1" in msg and str(tmp_path / "pbc") in msg


# ----------------------------------------------------------------------------- verify

def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """A catalogue entry 'tiny' with its manifest built from TINY_FILES; returns a
    function making zip archives of it (GitHub-style top folder)."""
    src = tmp_path / "src"
    _write_tree(src, TINY_FILES)
    manifests = tmp_path / "manifests"
    cat.write_manifest("tiny", src, out_dir=manifests)
    monkeypatch.setattr(cat, "MANIFEST_DIR", manifests)

    def register(**kw) -> cat.DatasetInfo:
        fields = dict(name="tiny", title="Tiny", description="test set", tasks=("classification",),
                      classes=("a", "b"), licence="MIT", citation="none", homepage="https://x",
                      expected_layout=("imgs", "labels.csv"), manifest="tiny")
        fields.update(kw)
        info = cat.DatasetInfo(**fields)
        monkeypatch.setitem(cat.CATALOGUE, "tiny", info)
        return info

    register()
    return register


def test_build_manifest_skips_docs_and_hidden(tmp_path):
    _write_tree(tmp_path, {**TINY_FILES, "README.md": b"x", "LICENSE": b"y", ".DS_Store": b"z"})
    m = cat.build_manifest(tmp_path)
    assert set(m) == set(TINY_FILES)
    assert m["imgs/a.jpg"] == "9834876dcfb05cb167a5c24953eba58c4ac89b1adf57f28f2f9d09af107ee8f0"


def test_verify_detects_tampered_missing_and_unexpected(tiny, tmp_path):
    data = tmp_path / "data"
    _write_tree(data / "tiny", TINY_FILES)
    report = cat.verify("tiny", root=data)
    assert report.ok and report.checked == 3 and not report.cached

    (data / "tiny/imgs/a.jpg").write_bytes(b"aab")  # same size, other content
    (data / "tiny/imgs/b.jpg").unlink()
    (data / "tiny/imgs/c.jpg").write_bytes(b"new")
    report = cat.verify("tiny", root=data)
    assert not report.ok
    assert report.mismatched == ["imgs/a.jpg"]
    assert report.missing == ["imgs/b.jpg"]
    assert report.unexpected == ["imgs/c.jpg"]
    with pytest.raises(DatasetIntegrityError, match="imgs/a.jpg"):
        report.raise_for_errors()
    assert cat.verify("tiny", root=data, quick=True).mismatched == []  # sizes only


def test_verify_subset_ok_allows_missing_but_not_altered(tiny, tmp_path):
    tiny(subset_ok=True)
    data = tmp_path / "data"
    _write_tree(data / "tiny", {"imgs/a.jpg": b"aaa", "labels.csv": TINY_FILES["labels.csv"]})
    report = cat.verify("tiny", root=data)
    assert report.ok and report.missing == ["imgs/b.jpg"]
    (data / "tiny/imgs/a.jpg").write_bytes(b"xyz")
    assert not cat.verify("tiny", root=data).ok


def test_verify_caches_success_and_notices_changes(tiny, tmp_path, monkeypatch):
    data = tmp_path / "data"
    _write_tree(data / "tiny", TINY_FILES)
    hashed: list[Path] = []
    real_sha256 = cat.sha256_file
    monkeypatch.setattr(cat, "sha256_file", lambda p: hashed.append(p) or real_sha256(p))
    assert cat.verify("tiny", root=data).ok and len(hashed) == 3
    assert (data / "tiny" / cat.STAMP_NAME).is_file()
    assert cat.verify("tiny", root=data).cached and len(hashed) == 3  # not re-hashed
    (data / "tiny/imgs/a.jpg").write_bytes(b"zzz")
    os.utime(data / "tiny/imgs/a.jpg", ns=(time.time_ns(), time.time_ns() + 10**9))
    report = cat.verify("tiny", root=data)
    assert not report.cached and report.mismatched == ["imgs/a.jpg"]


def test_verify_read_only_folder_does_not_fail(tiny, tmp_path, monkeypatch):
    data = tmp_path / "data"
    _write_tree(data / "tiny", TINY_FILES)

    def refuse(self, *a, **k):
        raise PermissionError("read-only")

    monkeypatch.setattr(Path, "write_text", refuse)
    assert cat.verify("tiny", root=data).ok


# ----------------------------------------------------------------------------- fetch

def _zip(path: Path, files: dict[str, bytes], top: str = "tiny-main/") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(top + rel, data)
    return path


def test_fetch_file_url_extracts_verifies_and_reuses(tiny, tmp_path, monkeypatch):
    archive = _zip(tmp_path / "tiny.zip", {**TINY_FILES, "docs/extra.txt": b"ignored",
                                           "README.md": b"# tiny"})
    tiny(sources=(cat.Source(archive.as_uri(), members=(("imgs/", "imgs/"),
                                                        ("labels.csv", "labels.csv"),
                                                        ("README.md", "README.md"))),))
    data = tmp_path / "data"
    folder = cat.fetch("tiny", root=data, progress=False)
    assert folder == data / "tiny"
    assert (folder / "imgs/a.jpg").read_bytes() == b"aaa"
    assert (folder / "README.md").is_file() and not (folder / "docs").exists()
    assert not (data / ".tiny.partial").exists()
    assert not list((data / ".downloads").iterdir())

    archive.unlink()  # a second fetch must not download again
    monkeypatch.setattr(cat, "_download", lambda *a, **k: pytest.fail("downloaded again"))
    assert cat.fetch("tiny", root=data, progress=False) == folder


def test_fetch_checks_archive_sha256(tiny, tmp_path):
    archive = _zip(tmp_path / "tiny.zip", TINY_FILES)
    tiny(sources=(cat.Source(archive.as_uri(), sha256="0" * 64),))
    with pytest.raises(DatasetIntegrityError, match="SHA-256"):
        cat.fetch("tiny", root=tmp_path / "data", progress=False)


def test_fetch_result_not_matching_manifest_raises(tiny, tmp_path):
    archive = _zip(tmp_path / "tiny.zip", {**TINY_FILES, "imgs/a.jpg": b"bad"})
    tiny(sources=(cat.Source(archive.as_uri()),))
    with pytest.raises(DatasetIntegrityError, match="imgs/a.jpg"):
        cat.fetch("tiny", root=tmp_path / "data", progress=False)


def test_fetch_manual_only_raises_with_instructions(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        cat.fetch("sn_am", root=tmp_path, progress=False)
    msg = str(err.value)
    assert "cancerimagingarchive.net" in msg and str(tmp_path / "sn_am") in msg
    assert "BLOODLIB_DATA" in msg


def test_fetch_unreachable_url_raises_quickly(tiny, tmp_path, monkeypatch):
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # connect to 127.0.0.1:9 itself
    tiny(sources=(cat.Source("http://127.0.0.1:9/x.zip"),))
    start = time.monotonic()
    with pytest.raises(DatasetNotFoundError) as err:
        cat.fetch("tiny", root=tmp_path / "data", progress=False)
    assert time.monotonic() - start < 15
    assert "http://127.0.0.1:9/x.zip" in str(err.value)
    assert not (tmp_path / "data" / "tiny").exists()


def test_extract_rejects_path_traversal(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../evil.txt", b"x")
    with pytest.raises(DatasetIntegrityError, match="Unsafe"):
        cat._extract(archive, tmp_path / "out", ())


# ----------------------------------------------------------------------------- real data

@pytest.mark.realdata
def test_real_bccd_verifies(data_root):
    if not cat.is_available("bccd", root=data_root):
        pytest.skip(f"bccd is not under {data_root}")
    report = cat.verify("bccd", root=data_root, use_cache=False)  # --full
    assert report.ok, report.summary()
    assert report.checked == len(cat.load_manifest("bccd")["files"])


def test_verify_leaves_read_only_folder_untouched(tiny, tmp_path):
    data = tmp_path / "data"
    _write_tree(data / "tiny", TINY_FILES)
    (data / "tiny").chmod(0o555)  # even root must not write into a folder marked read-only
    try:
        assert cat.verify("tiny", root=data).ok
        assert not (data / "tiny" / cat.STAMP_NAME).exists()
    finally:
        (data / "tiny").chmod(0o755)


# ----------------------------------------------------------------------------- reliability (issue 24)

def test_verify_fails_on_files_not_in_the_manifest(tiny, tmp_path):
    """Item 9: an injected image is a failure of verify, not silently accepted."""
    data = tmp_path / "data"
    _write_tree(data / "tiny", {**TINY_FILES, "imgs/injected.jpg": b"evil"})
    report = cat.verify("tiny", root=data, use_cache=False)
    assert not report.ok and report.unexpected == ["imgs/injected.jpg"]
    assert "FAILED" in report.summary() and "imgs/injected.jpg" in report.summary()
    with pytest.raises(DatasetIntegrityError, match="not in the manifest"):
        report.raise_for_errors()


def test_verify_accepts_the_paths_the_catalogue_allows(tiny, tmp_path):
    tiny(extra_ok=("test/",))
    data = tmp_path / "data"
    _write_tree(data / "tiny", {**TINY_FILES, "test/x.jpg": b"t"})
    assert cat.verify("tiny", root=data, use_cache=False).ok


def test_verify_cache_notices_content_change_with_restored_mtime(tiny, tmp_path):
    """Item 10: same size, mtime restored: the cache must not vouch for it, and --full
    (use_cache=False) re-hashes every file."""
    data = tmp_path / "data"
    _write_tree(data / "tiny", TINY_FILES)
    target = data / "tiny/imgs/a.jpg"
    assert cat.verify("tiny", root=data).ok
    st = target.stat()
    target.write_bytes(b"zzz")  # same size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_mtime_ns == st.st_mtime_ns
    report = cat.verify("tiny", root=data)
    assert not report.cached and report.mismatched == ["imgs/a.jpg"]
    full = cat.verify("tiny", root=data, use_cache=False)
    assert not full.cached and not full.ok


def test_cli_verify_full_flag(tiny, tmp_path, monkeypatch, capsys):
    from bloodlib.cli import main
    data = tmp_path / "data"
    _write_tree(data / "tiny", TINY_FILES)
    monkeypatch.setenv("BLOODLIB_DATA", str(data))
    assert main(["verify", "tiny"]) == 0
    assert main(["verify", "tiny"]) == 0 and "cached" in capsys.readouterr().out
    assert main(["verify", "tiny", "--full"]) == 0 and "sha256, full" in capsys.readouterr().out


def test_failed_force_fetch_leaves_the_good_copy_untouched(tiny, tmp_path):
    """Item 11: a bad download is staged, fails verification and never reaches the folder."""
    data = tmp_path / "data"
    _write_tree(data / "tiny", TINY_FILES)
    bad = _zip(tmp_path / "bad.zip", {**TINY_FILES, "imgs/a.jpg": b"bad"})
    tiny(sources=(cat.Source(bad.as_uri()),))
    with pytest.raises(DatasetIntegrityError, match="imgs/a.jpg"):
        cat.fetch("tiny", root=data, force=True, progress=False)
    assert (data / "tiny/imgs/a.jpg").read_bytes() == b"aaa"
    assert cat.verify("tiny", root=data, use_cache=False).ok
    assert not (data / ".tiny.partial").exists()


def test_force_fetch_replaces_the_copy_only_when_verified(tiny, tmp_path):
    data = tmp_path / "data"
    _write_tree(data / "tiny", {**TINY_FILES, "imgs/a.jpg": b"old"})
    good = _zip(tmp_path / "good.zip", TINY_FILES)
    tiny(sources=(cat.Source(good.as_uri()),))
    cat.fetch("tiny", root=data, force=True, progress=False)
    assert (data / "tiny/imgs/a.jpg").read_bytes() == b"aaa"
    assert not list(data.glob(".tiny*"))


def test_every_download_is_pinned_to_a_commit():
    """Item 12: each archive is one commit (a hash of its files), never a moving branch."""
    import re
    for name, info in cat.CATALOGUE.items():
        for src in info.sources:
            assert src.commit and re.fullmatch(r"[0-9a-f]{40}", src.commit), name
            assert src.commit in src.url and "HEAD" not in src.url, src.url


def test_extract_refuses_a_zip_bomb(tmp_path):
    """Item 13: a 300 KB zip that would write 300 MiB is refused by ratio, and the total
    size cap holds whatever the headers say."""
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("top/zeros.bin", b"\0" * (300 << 20))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(DatasetIntegrityError, match="zip bomb"):
        cat._extract(bomb, tmp_path / "out", ())
    assert not any((tmp_path / "out").rglob("*.bin"))
    plain = _zip(tmp_path / "plain.zip", {"a.bin": os.urandom(4096), "b.bin": os.urandom(4096)})
    with pytest.raises(DatasetIntegrityError, match="size limit"):
        cat._extract(plain, tmp_path / "out2", (), max_bytes=6000)
    assert cat._extract(plain, tmp_path / "out3", (), max_bytes=10000) == 2


@pytest.mark.realdata
def test_real_datasets_verify_without_extra_files(data_root):
    for name in LOCAL:
        if cat.is_available(name, root=data_root):
            report = cat.verify(name, root=data_root, use_cache=False)  # --full
            assert report.ok and not report.unexpected, report.summary()
