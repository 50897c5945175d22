"""load_image: PNG/JPEG bit depths and colour, DICOM display pipeline (rescale, windowing, VOI LUT,
MONOCHROME1), and a clear ImageReadError for every kind of unreadable file."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import RAMP, write_dicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from lanic_nb.images import ImageReadError, is_dicom, load_image, window


def test_png_8bit_exact(tmp_path):
    arr = np.array([[0, 51, 255], [102, 204, 1]], dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.dtype == np.float32 and img.shape == (2, 3)
    np.testing.assert_allclose(img, arr / 255.0, atol=1e-7)


def test_png_16bit_scaled_by_full_range(tmp_path):
    arr = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "b.png")
    np.testing.assert_allclose(load_image(tmp_path / "b.png"), arr / 65535.0, atol=1e-6)


def test_rgb_jpeg_becomes_luminance(tmp_path):
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:, :8] = (200, 40, 40)  # left half red-ish, right half black
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    img = load_image(tmp_path / "c.jpg")
    assert img.shape == (16, 16)
    luma = (0.299 * 200 + 0.587 * 40 + 0.114 * 40) / 255.0
    assert abs(float(img[4, 2]) - luma) < 0.03 and float(img[4, 13]) < 0.03


def test_dicom_monochrome2_stretched_and_monochrome1_inverted(tmp_path):
    m2 = load_image(write_dicom(tmp_path / "m2.dcm", RAMP))
    np.testing.assert_allclose(m2, RAMP / 3750.0, atol=1e-6)
    m1 = load_image(write_dicom(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1"))
    np.testing.assert_allclose(m1, 1.0 - RAMP / 3750.0, atol=1e-6)
    assert m1[0, 0] == pytest.approx(1.0) and m1[-1, -1] == pytest.approx(0.0)


def test_dicom_rescale_then_window(tmp_path):
    # HU = 2 * stored - 1000; window 40 / 400 shows HU -160 .. 240 (stored 420 .. 620).
    px = np.array([[0, 420, 520], [620, 700, 3000]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "w.dcm", px, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=40, WindowWidth=400
    )
    img = load_image(path)
    hu = 2.0 * px - 1000.0
    expected = np.clip((hu - 39.5) / 399.0 + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1, by hand
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert img[0, 0] == 0.0 and img[1, 2] == 1.0 and abs(img[0, 2] - 0.5) < 0.01


def test_dicom_window_multivalued_and_monochrome1(tmp_path):
    px = np.array([[100, 200], [300, 400]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "w1.dcm", px, photometric="MONOCHROME1", WindowCenter=[250, 1000], WindowWidth=[201, 50]
    )
    img = load_image(path)
    expected = 1.0 - np.clip((px - 249.5) / 200.0 + 0.5, 0, 1)  # first preset, then inverted
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_dicom_voi_lut_sequence(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]  # 4 entries, first input value 0, 8-bit output
    item.LUTData = np.array([0, 10, 100, 255], dtype="<u2").tobytes()  # OW: one 16-bit word per entry
    px = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    path = write_dicom(tmp_path / "lut.dcm", px, VOILUTSequence=Sequence([item]))
    np.testing.assert_allclose(load_image(path), np.array([[0, 10], [100, 255]]) / 255.0, atol=1e-6)


def test_dicom_without_suffix_detected(tmp_path):
    p = write_dicom(tmp_path / "IM0001", RAMP)
    assert is_dicom(p)
    assert load_image(p).shape == (4, 4)


def test_window_functions():
    x = np.array([0.0, 50.0, 100.0])
    np.testing.assert_allclose(window(x, 50, 100, "LINEAR_EXACT"), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(window(x, 50, 100, "SIGMOID")[1], 0.5)
    with pytest.raises(ValueError, match="width"):
        window(x, 50, 0)


@pytest.mark.parametrize(
    "name, payload, reason",
    [
        ("missing.png", None, "not found"),
        ("empty.png", b"", "empty"),
        ("noise.png", b"\x00\x01not an image" * 10, "not a recognised"),
        ("noise.dcm", b"\x00" * 10 + b"garbage" * 5, "DICOM"),
    ],
)
def test_unreadable_files_raise_with_reason(tmp_path, name, payload, reason):
    p = tmp_path / name
    if payload is not None:
        p.write_bytes(payload)
    with pytest.raises(ImageReadError, match=reason) as exc:
        load_image(p)
    assert exc.value.path == str(p) and exc.value.reason


def test_truncated_png_and_dicom_raise(tmp_path):
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(
        tmp_path / "t.png"
    )
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="corrupt or truncated"):
        load_image(tmp_path / "t.png")
    d = write_dicom(tmp_path / "t.dcm", RAMP)
    data = d.read_bytes()
    d.write_bytes(data[:-20])  # pixel data shorter than Rows x Columns
    with pytest.raises(ImageReadError, match="DICOM"):
        load_image(d)
