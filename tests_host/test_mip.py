"""mip packaging (issue 20, Build 6): the committed package files are the ones the tree
generates (`make mip`), and together they install exactly the image `meterctl flash --source`
deploys, every file once, each URL pointing at a file that exists."""

from __future__ import annotations

import json

import pytest

from host_tools.flash import mip
from host_tools.flash.build import BOARDS_DIR, REPO, sources
from host_tools.sim import profiles
from host_tools.transport.serial import BoardInfo


def test_committed_package_files_are_the_generated_ones() -> None:
    for path, pkg in mip.packages().items():
        assert path.is_file(), f"{path.relative_to(REPO)} missing: run `make mip`"
        assert path.read_text() == mip.text(pkg), (
            f"{path.relative_to(REPO)} is stale: run `make mip`")
        assert json.loads(path.read_text()) == pkg


@pytest.mark.parametrize("board", mip.MIP_BOARDS)
def test_firmware_and_board_packages_install_the_flash_image(board: str) -> None:
    fw = json.loads((REPO / "package.json").read_text())
    bd = json.loads((BOARDS_DIR / board / "package.json").read_text())
    installed = {"/" + t: REPO / u for t, u in fw["urls"]}
    for t, u in bd["urls"]:
        assert "/" + t not in installed, t  # one package per file
        installed["/" + t] = BOARDS_DIR / board / u
    image = {dest: src for src, dest in sources(board)}
    assert installed == image
    assert all(p.is_file() and ".." not in p.relative_to(REPO).parts for p in installed.values())
    assert "/main.py" in installed and "/board/__init__.py" in installed
    assert not any(d.endswith("package.json") for d in image)  # never flashed itself


def test_every_mip_board_has_an_index_package() -> None:
    # a board without one (rp2_pico2 had none) has no compiled package its heap can take
    assert set(mip.INDEX_ARCH) == set(mip.MIP_BOARDS)


@pytest.mark.parametrize("name", [n for n in profiles.names() if profiles.get(n)["mpy"]])
def test_each_boards_index_package_is_compiled_for_the_arch_it_reports(name: str) -> None:
    # the arch the profile's official build reports (sys.implementation._mpy), read as
    # `meterctl flash` reads it, is the one the board's index package is compiled for
    prof = profiles.get(name)
    reported = BoardInfo("micropython", "1.28.0", prof["platform"], prof["machine"],
                         prof["mpy"])
    assert reported.arch is not None
    assert mip.INDEX_ARCH[prof["board_def"]] == reported.arch
