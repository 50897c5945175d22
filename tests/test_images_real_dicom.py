"""Real DICOM files (PyPI's pydicom-data, a test dependency; never copied here): syntaxes, decoders, header checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import write_dicom

from lanic_nb.images import (
    ImageReadError,
    chest_radiograph_problems,
    dicom_info,
    load_image,
    missing_decoder,
)


def real(name: str) -> Path:
    """A file of pydicom-data, found through pydicom (never downloaded)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed: pip install pydicom-data (the dev extra has it)")
    return Path(path)


def test_the_rg1_chest_cr_reads_the_same_in_every_transfer_syntax():
    """RG1: a real chest CR, 1955 x 1841, MONOCHROME1, uncompressed and JPEG 2000 (lossless and lossy)."""
    x = load_image(real("RG1_UNCR.dcm"))
    assert x.shape == (1955, 1841) and x.dtype == np.float32
    h, w = x.shape
    lung = x[int(0.4 * h):int(0.5 * h), int(0.2 * w):int(0.3 * w)].mean()
    mediastinum = x[int(0.4 * h):int(0.5 * h), int(0.47 * w):int(0.53 * w)].mean()
    assert lung < mediastinum - 0.15, "MONOCHROME1 inverted: lungs dark, mediastinum and spine bright"
    assert np.array_equal(load_image(real("RG1_J2KR.dcm")), x)  # JPEG 2000 lossless: identical pixels
    lossy, lossy_source = load_image(real("RG1_J2KI.dcm")), load_image(real("RG1_UNCI.dcm"))
    assert np.array_equal(lossy, lossy_source) and np.abs(lossy - x).mean() < 0.01
    info = dicom_info(real("RG1_J2KR.dcm"))
    assert (info.modality, info.body_part, info.photometric) == ("CR", "CHEST", "MONOCHROME1")
    assert info.transfer_syntax == "JPEG 2000 Image Compression (Lossless Only)"
    assert chest_radiograph_problems(info) == []


def test_jpeg_lossless_jpeg_ls_and_rle_decode():
    assert load_image(real("JPEG-LL.dcm")).shape == (1024, 256)  # JPEG lossless, first-order prediction
    assert dicom_info(real("JPEG-LL.dcm")).transfer_syntax.startswith("JPEG Lossless")
    plain = load_image(real("emri_small.dcm"))  # 10 frames: the first is read
    for twin in ("emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_2k_lossless.dcm"):
        assert np.array_equal(load_image(real(twin)), plain), twin


def test_the_mr_file_is_flagged_and_other_body_parts_too():
    mr = chest_radiograph_problems(dicom_info(real("MR2_UNCR.dcm")))
    assert len(mr) == 1 and mr[0].startswith("Modality MR is not a radiograph (CR or DX)")
    assert load_image(real("MR2_UNCR.dcm")).shape == (1024, 1024)  # readable: the check is the caller's to act on
    abdomen = chest_radiograph_problems(dicom_info(real("MR-SIEMENS-DICOM-WithOverlays.dcm")))
    assert any("ABDOMEN is not the chest" in p for p in abdomen)
    assert (chest_radiograph_problems(dicom_info(real("RG3_UNCR.dcm")))
            == ["BodyPartExamined EXTREMITY is not the chest"])


def test_header_checks_on_written_files(tmp_path):
    px = np.ones((4, 4), np.uint16)
    assert chest_radiograph_problems(dicom_info(write_dicom(tmp_path / "a.dcm", px, Modality="DX"))) == []
    thorax = write_dicom(tmp_path / "b.dcm", px, Modality="CR", BodyPartExamined="THORAX")
    assert chest_radiograph_problems(dicom_info(thorax)) == []
    ct = write_dicom(tmp_path / "c.dcm", px, Modality="CT", BodyPartExamined="CHEST")
    assert chest_radiograph_problems(dicom_info(ct)) == [
        "Modality CT is not a radiograph (CR or DX): a chest X-ray classifier's output on it means nothing"]
    with pytest.raises(ImageReadError, match="not a readable DICOM"):
        dicom_info(tmp_path / "missing.dcm")


def test_a_missing_decoder_is_named_with_the_package_to_install(monkeypatch):
    """With every plugin of a syntax gone (as on a machine without pylibjpeg), the reason says what to install."""
    import pydicom
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1

    for uid in (JPEGLosslessSV1, JPEG2000Lossless):
        monkeypatch.setattr(get_decoder(uid), "_available", {})
    with pytest.raises(ImageReadError, match=r"no decoder for JPEG Lossless.*pip install pylibjpeg pylibjpeg-libjpeg"):
        load_image(real("JPEG-LL.dcm"))
    with pytest.raises(ImageReadError, match=r"pip install pylibjpeg pylibjpeg-openjpeg"):
        load_image(real("RG1_J2KR.dcm"))
    assert missing_decoder(pydicom.dcmread(real("RG1_UNCR.dcm"), stop_before_pixels=True)) == ""
    monkeypatch.undo()
    assert missing_decoder(pydicom.dcmread(real("JPEG-LL.dcm"), stop_before_pixels=True)) == ""
