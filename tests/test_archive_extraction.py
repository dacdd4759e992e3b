"""Unpacking the corpus's npm tarball: regular files only, nothing outside the target, on any Python 3.11."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from compression.data.debian import extract_files
from compression.data.errors import DownloadError


def _tarball(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> Path:
    """A gzipped tarball of (name, file bytes or None, symlink target or None) members."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                archive.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("has_data_filter", [True, False], ids=["python>=3.11.4", "python-3.11.2"])
def test_regular_files_are_extracted_and_links_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has_data_filter: bool
) -> None:
    if not has_data_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    tarball = _tarball(
        tmp_path / "package.tgz",
        [
            ("package", None, None),
            ("package/data.json", b'{"a": 1}', None),
            ("package/link", None, "/etc/passwd"),
        ],
    )
    target = tmp_path / "out"
    target.mkdir()
    with tarfile.open(tarball, "r:gz") as archive:
        extract_files(archive, target)
    assert (target / "package" / "data.json").read_bytes() == b'{"a": 1}'
    assert not (target / "package" / "link").exists() and not (target / "package" / "link").is_symlink()


@pytest.mark.parametrize("name", ["../escape.txt", "/tmp/absolute.txt", "package/../../escape.txt"])
def test_a_member_outside_the_target_is_refused(tmp_path: Path, name: str) -> None:
    tarball = _tarball(tmp_path / "bad.tgz", [(name, b"x", None)])
    target = tmp_path / "out"
    target.mkdir()
    with tarfile.open(tarball, "r:gz") as archive, pytest.raises(DownloadError, match="outside"):
        extract_files(archive, target)
    assert list(target.iterdir()) == [] and not (tmp_path / "escape.txt").exists()
