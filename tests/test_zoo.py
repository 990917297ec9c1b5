"""The zoo's mmdetection entries and OpenMMLab's checksum-prefix convention."""

from __future__ import annotations

from pathlib import Path

import pytest

from dyhead_serve import zoo
from dyhead_serve.checkpoint import DownloadError, download, sha256_of
from dyhead_serve.config import load_config
from dyhead_serve.config.mmdet import MMDET_CONFIGS


def test_mmdetection_models_are_named_by_their_configs_with_the_metafile_urls_and_ap():
    expected = {
        "atss_r50-caffe_fpn_dyhead_1x_coco": (42.5, "162888e6"),
        "atss_r50_fpn_dyhead_1x_coco": (43.3, "eaa620c6"),
        "atss_swin-l-p4-w12_fpn_dyhead_ms-2x_coco": (56.2, "bc5b6516"),
    }
    for name in MMDET_CONFIGS:
        entry = zoo.get_model(name)
        assert (entry.coco_ap, entry.sha256_prefix) == expected[name]
        assert entry.url.startswith("https://download.openmmlab.com/mmdetection/v2.0/dyhead/")
        assert entry.url.endswith(f"-{entry.sha256_prefix}.pth")
        assert load_config(entry.config_path).MODEL.LAYOUT == "mmdet"


def test_downloads_and_cached_files_are_checked_against_the_prefix(tmp_path: Path, monkeypatch):
    source = tmp_path / "src.pth"
    source.write_bytes(b"weights")
    digest = sha256_of(source)
    target = tmp_path / "cache" / "w.pth"
    with pytest.raises(DownloadError, match="expected a sha256 starting with 00000000"):
        download(source.as_uri(), target, sha256_prefix="00000000", progress=False)
    assert not target.exists()
    download(source.as_uri(), target, sha256_prefix=digest[:8], progress=False)
    assert target.read_bytes() == b"weights"

    monkeypatch.setenv("DYHEAD_SERVE_CACHE", str(tmp_path / "zoo"))
    url = "https://example.org/x-00000000.pth"
    entry = zoo.ZooModel("m", "atss_r50_fpn_dyhead_1x_coco", url, "", "d", 1.0, sha256_prefix="00000000")
    cached = tmp_path / "zoo" / "weights" / "x-00000000.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not these weights")
    with pytest.raises(zoo.ZooError, match="delete it and download again"):
        zoo.weights_path(entry)
