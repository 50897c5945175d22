"""Image loading: PNG/JPEG (PIL) and DICOM (pydicom) into one grayscale float32 array in [0, 1].

Every reader of every dataset ends here, so the display conventions live in one place:
- 8-bit images are divided by 255, 16-bit ones by 65535 (no per-image stretching, so a dark image
  stays dark), colour images are converted to luminance.
- DICOM follows the standard's display pipeline (PS3.3 C.11): Modality LUT / Rescale Slope+Intercept,
  then the first VOI transform (VOI LUT Sequence, else Window Center/Width with its VOI LUT Function),
  else a min-max stretch of the stored values; MONOCHROME1 (bright = low values) is inverted so that
  bone is always bright.
A file that cannot be decoded raises ImageReadError with the reason, which the embedding store records;
compressed transfer syntaxes are decoded by pydicom's plugins (pylibjpeg with its libjpeg, openjpeg and rle
decoders are dependencies), and a missing decoder is named in the reason with the package to install.
``dicom_info`` reads a header without the pixels and ``chest_radiograph_problems`` says why a file may not be
a chest radiograph (Modality not CR/DX, BodyPartExamined not the chest).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom")


class ImageReadError(Exception):
    """An image that cannot be read; ``reason`` is a short, human-readable cause."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def is_dicom(path: str | Path) -> bool:
    """True for a .dcm/.dicom suffix or the DICM magic at byte 128 (DICOM files often have no suffix)."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def can_read(path: str | Path) -> bool:
    """Whether ``load_image`` reads ``path`` (a missing, empty or corrupt file: False)."""
    try:
        load_image(path)
    except ImageReadError:
        return False
    return True


def load_image(path: str | Path) -> np.ndarray:
    """Read ``path`` as a float32 (H, W) array in [0, 1]; raise ImageReadError if that is impossible."""
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(p, "file not found")
    if p.stat().st_size == 0:
        raise ImageReadError(p, "empty file")
    img = _load_dicom(p) if is_dicom(p) else _load_pil(p)
    if img.ndim != 2 or img.size == 0:
        raise ImageReadError(p, f"expected a 2-D image, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise ImageReadError(p, "image holds non-finite values")
    return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)


_MODE_BITS = {"1": 1, "L": 8, "P": 8, "LA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8, "I;16": 16, "I;16B": 16,
              "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def image_properties(path: str | Path, gray: np.ndarray | None = None) -> dict:
    """What a file is, for the sanity checks of an explained image: width, height, channels, bits per sample,
    colourfulness (mean difference between colour channels, 0 for grey) and, from the grey array as
    ``load_image`` reads it (read here unless given), its standard deviation, contrast (1st to 99th percentile)
    and number of distinct grey levels (on a sample of pixels)."""
    p = Path(path)
    if is_dicom(p):
        import pydicom

        ds = pydicom.dcmread(p, stop_before_pixels=True)
        colour = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().startswith(("RGB", "YBR"))
        props = {"width": int(ds.get("Columns", 0)), "height": int(ds.get("Rows", 0)),
                 "channels": int(ds.get("SamplesPerPixel", 1)), "bits": int(ds.get("BitsStored", 16)),
                 "colour": 1.0 if colour else 0.0}
    else:
        from PIL import Image

        with Image.open(p) as im:
            props = {"width": im.width, "height": im.height, "channels": len(im.getbands()),
                     "bits": _MODE_BITS.get(im.mode), "colour": 0.0}
            if len(im.getbands()) >= 3:
                rgb = np.asarray(im.convert("RGB").reduce(max(1, min(im.size) // 256)), dtype=np.float64) / 255
                props["colour"] = float(np.mean([np.abs(rgb[..., i] - rgb[..., j]).mean()
                                                 for i, j in ((0, 1), (1, 2), (0, 2))]))
    g = load_image(p) if gray is None else gray
    sample = g.ravel()[:: max(1, g.size // 200_000)]
    lo, hi = np.percentile(sample, [1, 99])
    step = max(1, max(g.shape) // 256)  # about 256 px a side, so the figure does not depend on the resolution
    small = g[::step, ::step]
    roughness = float(np.abs(np.diff(small, axis=1)).mean() / (small.std() + 1e-6))
    return {**props, "std": float(sample.std()), "contrast": float(hi - lo),
            "distinct": int(len(np.unique(np.round(sample * 4095)))), "roughness": roughness}


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    p = Path(path)
    if is_dicom(p):
        import pydicom

        ds = pydicom.dcmread(p, stop_before_pixels=True)
        return int(ds.get("Columns", 0)), int(ds.get("Rows", 0))
    from PIL import Image

    with Image.open(p) as im:
        return im.size


NOISE_ROUGHNESS = 0.8
"""Neighbouring pixels differing by this many of the image's standard deviations mark noise: independent pixels
give about 1.1 (uniform) to 1.13 (Gaussian), radiographs at 256 px a side far less."""
SHAPE_SLACK = 1.5
"""A film whose side or aspect ratio lies outside the run's films' range by more than this factor is unlike them
(a convention: what the encoder sees changes with the scale it resizes from)."""


def sanity_problems(props: dict, films: dict | None = None) -> list[str]:
    """Why an image may not be a radiograph like the run's films (empty: none found). ``films``: the run's own
    films' ``min_side``, ``max_side`` and ``aspect`` range (from the OOD reference)."""
    out = []
    if props.get("bits") is not None and props["bits"] < 8:
        out.append(f"a {props['bits']}-bit image (radiographs have 8 or more bits per pixel)")
    if props.get("colour", 0) > 0.03:
        out.append(f"a colour image (channels differ by {props['colour']:.2f} on average): radiographs are grey")
    if props["std"] < 0.01 or props["distinct"] <= 2:
        out.append("a blank or constant image")
    elif props["contrast"] < 0.05:
        out.append(f"almost no contrast (1st to 99th percentile span {props['contrast']:.3f} of the range)")
    if props.get("roughness", 0) > NOISE_ROUGHNESS:
        out.append(f"noise-like (neighbouring pixels differ by {props['roughness']:.2f} standard deviations; a "
                   "radiograph's differ far less)")
    w, h = props["width"], props["height"]
    aspect = w / h if h else float("inf")
    lo, hi = (films or {}).get("aspect", (0.8, 1.25))
    if not lo / SHAPE_SLACK <= aspect <= hi * SHAPE_SLACK:
        span = f"{lo:.2f}" if round(lo, 2) == round(hi, 2) else f"{lo:.2f}-{hi:.2f}"
        out.append(f"aspect ratio {aspect:.2f}, unlike the run's films ({span})")
    small, large = (films or {}).get("min_side"), (films or {}).get("max_side")
    if small and large and not (small / SHAPE_SLACK <= min(w, h) and max(w, h) <= large * SHAPE_SLACK):
        span = f"{small}" if small == large else f"{small}-{large}"
        out.append(f"{w} x {h} px, unlike the run's films ({span} px a side)")
    return out


def _load_pil(p: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im.load()  # decode now, so truncated files fail here and not later
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                # 16-bit grayscale PNGs open as "I;16" or "I" depending on Pillow's version.
                arr = np.asarray(im, dtype=np.float64) / 65535.0
            elif mode == "F":
                arr = _stretch(np.asarray(im, dtype=np.float64))
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    except UnidentifiedImageError:
        raise ImageReadError(p, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports truncation/corruption as OSError
        raise ImageReadError(p, f"corrupt or truncated image ({e})") from None
    return arr


def _load_dicom(p: Path) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(p)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise ImageReadError(p, f"not a readable DICOM file ({e})") from None
    if "PixelData" not in ds:
        raise ImageReadError(p, "DICOM file has no pixel data")
    missing = missing_decoder(ds)
    if missing:
        raise ImageReadError(p, missing)
    try:
        raw = ds.pixel_array
    except Exception as e:  # pydicom raises many types (missing codec, bad length, ...)
        hint = _install_hint(_transfer_syntax(ds))
        raise ImageReadError(p, f"cannot decode DICOM pixel data ({type(e).__name__}: {e})"
                             + (f"; if a decoder is missing: {hint}" if hint else "")) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if raw.ndim == 3 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        raw = raw[0]  # multi-frame: the first frame
    elif raw.ndim == 3:  # colour (RGB, YBR): luminance, after pydicom's conversion to RGB
        raw = raw[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return _stretch(raw)
    values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    out = _apply_voi(values, ds)
    if out is None:
        out = _stretch(values)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out


# Transfer syntax UID prefix -> what to install so pydicom can decode it (through its pylibjpeg plugin).
_DECODERS = (
    ("1.2.840.10008.1.2.4.5", "pylibjpeg and pylibjpeg-libjpeg"),  # JPEG baseline / extended (.50, .51)
    ("1.2.840.10008.1.2.4.57", "pylibjpeg and pylibjpeg-libjpeg"),  # JPEG lossless
    ("1.2.840.10008.1.2.4.70", "pylibjpeg and pylibjpeg-libjpeg"),  # JPEG lossless, first-order prediction
    ("1.2.840.10008.1.2.4.8", "pylibjpeg and pylibjpeg-libjpeg"),  # JPEG-LS (.80, .81)
    ("1.2.840.10008.1.2.4.9", "pylibjpeg and pylibjpeg-openjpeg"),  # JPEG 2000 (.90, .91, .92, .93)
    ("1.2.840.10008.1.2.4.20", "pylibjpeg and pylibjpeg-openjpeg"),  # HTJ2K (.201, .202, .203)
    ("1.2.840.10008.1.2.5", "pylibjpeg and pylibjpeg-rle"),  # RLE lossless
)


def _transfer_syntax(ds) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def _install_hint(uid: str) -> str:
    """``pip install ...`` for the decoder of transfer syntax ``uid`` ("" when none is known)."""
    for prefix, packages in _DECODERS:
        if uid.startswith(prefix):
            return f"pip install {packages.replace(' and ', ' ')} (or python-gdcm)"
    return ""


def missing_decoder(ds) -> str:
    """Why pydicom cannot decode ``ds``'s pixel data here, naming what to install; "" when it can."""
    from pydicom.uid import UID

    uid = _transfer_syntax(ds)
    if not uid:
        return ""
    try:
        from pydicom.pixels import get_decoder

        decoder = get_decoder(UID(uid))
    except NotImplementedError:
        return (f"pydicom has no decoder for transfer syntax {UID(uid).name} ({uid}); convert the file to an "
                "uncompressed syntax first (e.g. `gdcmconv --raw` or dcmtk's `dcmdjpeg`)")
    except (ImportError, ValueError):  # pydicom < 3, or a malformed UID: let pixel_array decide
        return ""
    if decoder.is_available:
        return ""
    hint = _install_hint(uid) or "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle"
    return f"no decoder for {UID(uid).name} is installed: {hint}"


@dataclass(frozen=True)
class DicomInfo:
    """What a DICOM header says about the image (read without decoding the pixels)."""

    modality: str
    """Modality (CR, DX, MR, CT, ...), "" when absent."""
    body_part: str
    """BodyPartExamined, "" when absent."""
    view_position: str
    """ViewPosition (PA, AP, LL, ...), "" when absent."""
    transfer_syntax: str
    """The transfer syntax's name (e.g. "JPEG 2000 Image Compression")."""
    photometric: str
    """PhotometricInterpretation (MONOCHROME1 is inverted on reading)."""
    n_frames: int
    """Number of frames (only the first is read)."""


RADIOGRAPH_MODALITIES = ("CR", "DX")
"""Modalities of a projection radiograph (computed and digital radiography)."""
_CHEST_WORDS = ("CHEST", "THORA", "TORAX", "TORACE", "LUNG", "PULMO", "THX")


def dicom_info(path: str | Path) -> DicomInfo:
    """The header of a DICOM file (raises ImageReadError when it is not one)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise ImageReadError(path, f"not a readable DICOM file ({e})") from None
    uid = _transfer_syntax(ds)

    def text(key: str) -> str:
        return str(ds.get(key, "") or "").strip()

    return DicomInfo(modality=text("Modality").upper(), body_part=text("BodyPartExamined").upper(),
                     view_position=text("ViewPosition").upper(), transfer_syntax=UID(uid).name if uid else "",
                     photometric=text("PhotometricInterpretation").upper(),
                     n_frames=int(ds.get("NumberOfFrames", 1) or 1))


def chest_radiograph_problems(info: DicomInfo) -> list[str]:
    """Why a DICOM image may not be a chest radiograph (empty when nothing says so).

    The Modality must be CR or DX; a BodyPartExamined that is present must name the chest (an absent one is
    common on real chest films and not held against the image).
    """
    problems = []
    if not info.modality:
        problems.append("the DICOM header has no Modality: it may not be a radiograph")
    elif info.modality not in RADIOGRAPH_MODALITIES:
        problems.append(f"Modality {info.modality} is not a radiograph (CR or DX): a chest X-ray classifier's "
                        "output on it means nothing")
    if info.body_part and not any(w in info.body_part for w in _CHEST_WORDS):
        problems.append(f"BodyPartExamined {info.body_part} is not the chest")
    return problems


def _apply_voi(values: np.ndarray, ds) -> np.ndarray | None:
    """The first VOI transform of ``ds`` mapped to [0, 1], or None when the file defines none."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        from pydicom.pixels import apply_voi

        item = ds.VOILUTSequence[0]
        # LUT inputs are integers by definition (PS3.3 C.11.2.1.1); pydicom warns on float input.
        out = np.asarray(apply_voi(np.rint(values).astype(np.int64), ds, index=0), dtype=np.float64)
        bits = int(item.LUTDescriptor[2]) if "LUTDescriptor" in item else 16
        return out / float(2**bits - 1)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center = _first(ds.WindowCenter)
    width = _first(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    return window(values, center, width, function)


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI windowing (PS3.3 C.11.2.1.2) with output range [0, 1].

    LINEAR is the standard's default (its -0.5 / (w - 1) offsets reproduce legacy 12-bit displays);
    LINEAR_EXACT is the plain ramp; SIGMOID the logistic curve.
    """
    x = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"width must be > 0 for SIGMOID windowing, got {width}")
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"width must be > 0 for LINEAR_EXACT windowing, got {width}")
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        raise ValueError(f"width must be >= 1 for LINEAR windowing, got {width}")
    if width == 1:  # a threshold at the centre
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _first(v) -> float:
    """Window Center/Width may be multi-valued (several presets); the first is the default view."""
    try:
        return float(v[0])
    except TypeError:
        return float(v)


def _stretch(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float64)
    return (x - lo) / (hi - lo)
