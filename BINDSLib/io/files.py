"""Plain image files: NRRD / NIfTI / MHA (with geometry) and PNG / JPEG / PGM / BMP / TIFF
(2D, with the role given by the user or by a role-named file such as ``MG_L_CC.png``).

All go through SimpleITK. Colour images become grayscale (ITU-R BT.601 luma). Every read is
checked: declared size against a memory limit *before* the pixels are read, and non-finite
voxels are refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fsutil import sitk_path
from ..study import Geometry, Image, MRSequence, Role, SourceInfo

log = logging.getLogger(__name__)

#: File endings read through SimpleITK, with geometry.
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
#: 2D picture formats: no geometry beyond an optional pixel spacing.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".bmp", ".tif", ".tiff")
#: every plain image file BINDS reads
IMAGE_SUFFIXES = VOLUME_SUFFIXES + PICTURE_SUFFIXES

#: Largest image (bytes of decoded voxels) BINDS will read; override with BINDS_MAX_IMAGE_BYTES.
DEFAULT_MAX_IMAGE_BYTES = 4 * 1024**3


def max_image_bytes() -> int:
    v = os.environ.get("BINDS_MAX_IMAGE_BYTES")
    try:
        return int(v) if v else DEFAULT_MAX_IMAGE_BYTES
    except ValueError:
        return DEFAULT_MAX_IMAGE_BYTES


def check_declared_size(n_voxels: int, bytes_per_voxel: int, path) -> None:
    """Refuse an image whose declared size exceeds the memory limit, before allocating it."""
    need = int(n_voxels) * int(bytes_per_voxel)
    limit = max_image_bytes()
    if n_voxels <= 0:
        raise InputError("image declares no voxels (a dimension is 0)", path)
    if need > limit:
        raise InputError(
            f"image too large: it declares {need / 1024**3:.1f} GiB of voxels, more than the "
            f"{limit / 1024**3:.1f} GiB limit (set BINDS_MAX_IMAGE_BYTES to raise it)", path)


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def same_grid(a: Geometry, b: Geometry) -> bool:
    """Whether two geometries place a grid alike: spacing within 0.1 %, origin within a
    hundredth of a voxel, direction within 1e-4."""
    sa, sb = np.asarray(a.spacing_mm), np.asarray(b.spacing_mm)
    return bool(np.allclose(sa, sb, rtol=1e-3, atol=0)
                and np.all(np.abs(np.subtract(a.origin_mm, b.origin_mm)) <= 0.01 * np.minimum(sa, sb))
                and np.allclose(a.direction, b.direction, atol=1e-4))


def _mm(values, sep: str) -> str:
    return sep.join(f"{float(v):g}" for v in values)


#: the largest magnitude a voxel may have: the model computes in float32
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_finite(voxels: np.ndarray, path) -> None:
    """NaN, infinite and (float64) voxels beyond float32's range are refused: the model reads
    float32, where the last become infinite."""
    if not np.issubdtype(voxels.dtype, np.floating):
        return
    if not np.isfinite(voxels).all():
        n = int((~np.isfinite(voxels)).sum())
        raise InputError(f"holds {n} NaN or infinite voxel(s)", path)
    if voxels.dtype.itemsize > 4 and voxels.size:  # (two reductions: no copy of a large image)
        largest = max(-float(voxels.min()), float(voxels.max()))
        if largest > FLOAT32_MAX:
            raise InputError(f"holds voxel values beyond the float32 range (up to {largest:.3g})", path)


#: the header field naming the data file, of the formats whose voxels may lie in another file
_DATA_FILE_FIELD = {".nhdr": ("data file", "datafile"), ".nrrd": ("data file", "datafile"),
                    ".mhd": ("elementdatafile",), ".mha": ("elementdatafile",)}


#: the longest image header read for its data file (ITK reads any; a longer one is refused)
MAX_HEADER_BYTES = 16 * 2**20


def _header_lines(path: Path):
    """``(line, bytes up to and including it)`` of an image header, read line by line; a header
    whose field is not found within :data:`MAX_HEADER_BYTES` is refused (a long header must not
    hide its data file from the check)."""
    size = 0
    with open(path, "rb") as f:
        while raw := f.readline(MAX_HEADER_BYTES + 1 - size):
            size += len(raw)
            if size > MAX_HEADER_BYTES:
                raise InputError(f"the image header is longer than {MAX_HEADER_BYTES // 2**20} MiB", path)
            yield raw.decode("latin-1").strip(), size


def check_data_files(path: str | os.PathLike) -> tuple[Path, int] | None:
    """Refuse a NRRD / MetaImage header whose voxels are in a file named outside its own folder
    (an absolute path elsewhere, ``..``), in something that is not a regular file (a device, a
    pipe, a folder; also at the end of a link), or in a list or numbered series of files: a
    header must not make BINDS read, and copy into its outputs, any other file of the computer.

    Returns where uncompressed voxels start, ``(file, byte offset)``, for :func:`check_not_truncated`
    (None for other formats, compressed or text data, and NIfTI, which that reads itself)."""
    path = Path(path)
    suffix = suffix_of(path)
    fields = _DATA_FILE_FIELD.get(suffix)
    if fields is None:
        return None
    nrrd = suffix in (".nhdr", ".nrrd")
    folder = Path(os.path.abspath(path)).parent  # as ITK resolves the data file: from the header as named
    flags, data, offset = {}, None, 0
    for line, offset in _header_lines(path):
        if not line and nrrd:
            break  # the end of a NRRD header: attached voxels follow
        key, sep, value = line.partition(":" if nrrd else "=")
        key, value = key.strip().lower(), value.strip()
        if nrrd and value.startswith("="):
            continue  # "key:=value" is a key/value pair, not a field
        if key in ("encoding", "compresseddata", "binarydata"):
            flags[key] = value.lower()
        if not sep or key not in fields:
            continue
        if value.upper() == "LOCAL":
            break  # (MetaImage: the voxels follow this line, the header's last)
        parts = value.split()
        if not parts:
            raise InputError("the header names no data file", path)
        if parts[0].upper() == "LIST" or ("%" in parts[0] and len(parts) >= 4):
            raise InputError(f"the header names its voxels as a list or series of files ({value!r}); "
                             "give the image as one file (e.g. a .nrrd)", path)
        # the whole value (a name may hold spaces); a link in the folder is followed (git-annex and
        # DataLad datasets are links), but it must end at a regular file: not a device or a pipe
        data = Path(os.path.abspath(folder / value))
        if folder not in data.parents:
            raise InputError(f"the header's voxels are in {value!r}, outside the header's folder: "
                             "keep the data file in the header's folder", path)
        if not data.is_file():
            raise InputError(f"the header's data file {value!r} is missing or not a regular file", path)
        if not nrrd:
            break
    raw_data = flags.get("encoding", "raw") == "raw" if nrrd else \
        flags.get("compresseddata", "false") == "false" and flags.get("binarydata", "true") == "true"
    if not raw_data:
        return None
    return (data, 0) if data is not None else (path, offset)


def check_not_truncated(path: Path, reader, where: tuple[Path, int] | None) -> None:
    """Refuse an uncompressed image whose file holds fewer bytes than its header declares
    (SimpleITK fills the missing voxels with zeros without a word)."""
    import re

    import SimpleITK as sitk

    if suffix_of(path) == ".nii":  # its own header: ITK reports a scaled image's type (float)
        try:
            dims = [int(reader.GetMetaData(f"dim[{k}]")) for k in range(1, int(reader.GetMetaData("dim[0]")) + 1)]
            need = int(np.prod(dims, dtype=np.int64)) * int(reader.GetMetaData("bitpix")) // 8
            where = (path, int(float(reader.GetMetaData("vox_offset"))))
        except (RuntimeError, ValueError):
            return
    elif where is None:
        return
    else:
        bits = re.search(r"(\d+)-bit", sitk.GetPixelIDValueAsString(reader.GetPixelID()))
        if bits is None:
            return
        need = int(np.prod(reader.GetSize(), dtype=np.int64)) * reader.GetNumberOfComponents() * int(bits[1]) // 8
    data, offset = where
    have = data.stat().st_size - offset
    if have < need:
        raise InputError(f"truncated: the header declares {need} bytes of voxels, the file holds "
                         f"{max(have, 0)}", path)


def to_grayscale(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3 or 4)`` RGB(A) to float32 luma (ITU-R BT.601); alpha is ignored."""
    rgb = rgb[..., :3].astype(np.float32)
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def sitk_to_voxels(img, path) -> tuple[np.ndarray, Geometry]:
    """Voxels ``(depth, rows, cols)`` and geometry of a SimpleITK image, grayscale and finite."""
    import SimpleITK as sitk

    if img.GetDimension() not in (2, 3):
        raise InputError(f"{img.GetDimension()}D images are not supported (2D or 3D only)", path)
    try:
        geom = Geometry.from_sitk(img)
    except ValueError as e:
        raise InputError(f"invalid geometry: {e}", path) from None
    components = img.GetNumberOfComponentsPerPixel()
    if components > 1:
        # colour pictures (RGB, RGBA) become grey. Several values per voxel in any other form
        # are several images (b-values, phases, a vector field): averaging them as colours
        # would be a silent wrong image
        colour = components in (3, 4) and (suffix_of(Path(path)) in PICTURE_SUFFIXES
                                            or img.GetPixelID() in (sitk.sitkVectorUInt8, sitk.sitkVectorInt8))
        if not colour:
            raise InputError(f"{components} values per voxel ({img.GetPixelIDTypeAsString()}): a vector "
                             "image or several images in one file; give one grayscale image per file "
                             "(8-bit RGB is read as grey)", path)
    arr = sitk.GetArrayFromImage(img)
    if components > 1:
        arr = to_grayscale(arr)
    if arr.ndim == 2:
        arr = arr[None]
    check_finite(arr, path)
    return arr, geom


def _jpeg_complete(path: Path) -> bool:
    """Whether a JPEG's first image reaches its end-of-image marker: its segments are walked
    from the start (each skipped by its length; a scan's coded data up to the next marker), so
    bytes after the image (a motion photo's video) do not count. A file that is not a JPEG is
    left to the reader (True)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\xff\xd8":
        return True
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            return True  # not a marker where one must be: damaged, the reader will say so
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0xD9:
            return True
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
        elif i + 3 >= n:
            return False
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
            if marker == 0xDA:  # start of scan: coded data up to the next marker (FF 00, RSTn are data)
                while True:
                    i = data.find(b"\xff", i)
                    if i < 0 or i + 1 >= n:
                        return False
                    if data[i + 1] == 0x00 or 0xD0 <= data[i + 1] <= 0xD7:
                        i += 2
                    elif data[i + 1] == 0xFF:
                        i += 1
                    else:
                        break
    return False


def read_image_info(path: Path):
    """Header only: SimpleITK's ImageFileReader after ReadImageInformation (size checked)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    if path.stat().st_size == 0:
        raise InputError("file is empty (0 bytes)", path)
    where = check_data_files(path)
    if suffix_of(path) in (".jpg", ".jpeg") and not _jpeg_complete(path):
        # libjpeg would fill what is missing with grey, and say so on stdout
        raise InputError("truncated JPEG: the image ends before its end-of-image marker", path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(sitk_path(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"not a readable image ({itk_reason(e)})", path) from None
    n = int(np.prod(reader.GetSize(), dtype=np.int64))
    ncomp = reader.GetNumberOfComponents()
    check_declared_size(n * ncomp, 8, path)  # worst case: decoded to float64
    check_not_truncated(path, reader, where)
    _warn_non_anatomical_space(path, reader)
    return reader


def _warn_non_anatomical_space(path: Path, reader) -> None:
    """ITK turns a NRRD in RAS or LAS coordinates into LPS, but reads the other spaces of the
    format (``scanner-xyz``, ``3D-right-handed``, ...) as LPS without a word: say so."""
    if reader.HasMetaDataKey("NRRD_space"):
        space = reader.GetMetaData("NRRD_space")
        if space not in ("left-posterior-superior", "left-posterior-superior-time"):
            log.warning("%s: its coordinates are in the NRRD space %r, not a patient one (RAS, LAS "
                        "or LPS); read as LPS (DICOM patient coordinates): check that results overlay "
                        "the image", path, space)


def read_image(path: str | os.PathLike, what: str = "image"):
    """The ``SimpleITK.Image`` of an image file, its header checked first
    (:func:`read_image_info`); a file ITK cannot decode is an :class:`InputError` saying what
    it was (``what``: image, mask, segmentation)."""
    path = Path(path)
    reader = read_image_info(path)
    try:
        return reader.Execute()
    except RuntimeError as e:
        raise InputError(f"cannot decode {what} ({itk_reason(e)})", path) from None


def write_image(img, path: str | os.PathLike, compress: bool = False) -> None:
    """``SimpleITK.WriteImage``; a write that fails (a full disk, a read-only folder: ITK says so
    in a RuntimeError) is an :class:`~BINDSLib.errors.OutputError` naming the file."""
    import SimpleITK as sitk

    from ..errors import OutputError

    try:
        sitk.WriteImage(img, sitk_path(path, output=True), useCompression=compress)
    except RuntimeError as e:
        raise OutputError(f"cannot be written ({itk_reason(e)})", path) from None


def itk_reason(e: Exception) -> str:
    """The useful line of a SimpleITK exception, in words a user can act on."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    line = next((ln for ln in lines if "ERROR" in ln), lines[-1] if lines else "unknown error")
    line = line.split("ERROR:", 1)[-1].strip()
    if "Unable to determine ImageIO reader" in line:
        return "unknown or damaged image format"
    if "Unknown PixelType" in line:  # e.g. a PNG of gray + alpha, which ITK cannot read
        return f"unsupported pixel layout ({line}; a PNG of gray + alpha is one): save it as grayscale or RGB"
    return line[:200]


def role_from_name(path: str | os.PathLike) -> Role | None:
    """The role a file's name gives (``MG_L_CC.png``, ``MR_DCE1.nii.gz``; ``US_L_2.nrrd``, the
    label of a second ``US_L`` image in a study folder, is ``US_L``), or None."""
    import re

    stem = file_stem(path)
    try:
        return Role.parse(stem)
    except ValueError:
        pass
    indexed = re.fullmatch(r"(.+)_(\d+)", stem)
    if indexed is None:
        return None
    try:
        role = Role.parse(indexed.group(1))
    except ValueError:
        return None
    if role.sequence is MRSequence.DWI and role.b_value is None and int(indexed.group(2)) >= 10:
        return None  # MR_DWI_800: a b-value written without its "b" (MR_DWI_b800), not a 800th image
    return role


def file_stem(path: str | os.PathLike) -> str:
    """A file's name without its image suffix (``.nii.gz`` whole)."""
    path = Path(path)
    suffix = suffix_of(path)
    return path.name[: -len(suffix)] if suffix else path.name


def role_name_hint(path: str | os.PathLike) -> str:
    """A hint for a file name that is almost a role (``MR_DWI_800``), or ""."""
    import re

    found = re.fullmatch(r"(MR_DWI)_(\d+)(_\d+)?", file_stem(path), re.IGNORECASE)
    return f" (a b-value is written with its b: {found.group(1)}_b{found.group(2)})" if found else ""


def _warn_unusable_nifti_spacing(path: Path) -> None:
    """ITK reads a NIfTI voxel size (pixdim) of 0 or NaN as 1 mm without a word: say so."""
    import gzip
    import struct

    try:
        with (gzip.open if suffix_of(path) == ".nii.gz" else open)(path, "rb") as f:
            head = f.read(108)
        order = "<" if struct.unpack("<i", head[:4])[0] == 348 else ">"
        ndim = max(1, min(3, struct.unpack(order + "h", head[40:42])[0]))
        pixdim = struct.unpack(order + "8f", head[76:108])[1:1 + ndim]
    except (OSError, EOFError, struct.error):
        return  # (a NIfTI-2 or damaged header: the reader has said what it could)
    bad = [v for v in pixdim if not (np.isfinite(v) and v > 0)]
    if bad:
        log.warning("%s: voxel size (pixdim) %s is not usable: 1 mm assumed", path,
                    " x ".join(f"{v:g}" for v in pixdim))


def read_image_file(path: str | os.PathLike, role: Role | None = None,
                    spacing_mm: tuple[float, float] | None = None, **image_kwargs) -> Image:
    """Read one plain image file as an :class:`Image`.

    The role comes from ``role`` or, failing that, from a file name that is a role key
    (``MG_L_CC.png``, ``MR_DCE1.nii.gz``). PNG/JPEG carry no geometry: ``spacing_mm``
    (column, row) sets it when known, otherwise 1 mm is assumed.
    """
    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"unsupported file type {suffix!r} (supported: "
                         f"{', '.join(IMAGE_SUFFIXES)}, or DICOM)", path)
    if role is None:
        role = role_from_name(path)
        if role is None:
            raise InputError("the image's role is unknown: give it (e.g. --role US_L=file.png or "
                             "--role MG_L_CC=file.png) or name the file after its role"
                             + role_name_hint(path), path)
    img = read_image(path)
    voxels, geom = sitk_to_voxels(img, path)
    if suffix in (".nii", ".nii.gz") and spacing_mm is None:
        _warn_unusable_nifti_spacing(path)
    if suffix in PICTURE_SUFFIXES:
        sx, sy = spacing_mm if spacing_mm is not None else (1.0, 1.0)
        geom = Geometry((sx, sy, 1.0))
        if voxels.shape[0] != 1:
            raise InputError(f"a picture must be 2D, got {voxels.shape[0]} slices", path)
    elif spacing_mm is not None:
        geom = geom.with_spacing((spacing_mm[0], spacing_mm[1], geom.spacing_mm[2]))
    image_kwargs.setdefault("source", SourceInfo(files=(str(path),)))
    try:
        return Image(voxels, geom, role, **image_kwargs)
    except ValueError as e:
        raise InputError(str(e), path) from None


#: file formats that record where their grid lies (spacing, origin, direction)
PLACED_FORMATS = VOLUME_SUFFIXES


def read_mask_file(path: str | os.PathLike, shape: tuple[int, int, int],
                   geometry: Geometry | None = None, needs_grid: str | None = None) -> np.ndarray:
    """A binary mask on an image of ``shape``: any non-zero voxel is lesion, except in a JPEG
    file, whose lossy compression leaves faint values around the edges: there a voxel above
    half the mask's maximum is lesion.

    A mask in a format that records its grid (:data:`PLACED_FORMATS`) is placed by that grid
    when the image's ``geometry`` is given: on another grid (a labelmap cropped to the lesion,
    another spacing) it is resampled onto the image's, nearest neighbour, as an edited
    ``.seg.nrrd`` is; one none of whose lesion voxels lands on the image is refused. A mask of
    a format without a grid, or whose grid was left unset (1 mm, origin 0, no rotation), is
    taken as drawn on the image's pixels and must have its ``shape``; with ``needs_grid`` (the
    reason) such a mask is refused."""
    path = Path(path)
    img = read_image(path, "mask")
    voxels, grid = sitk_to_voxels(img, path)
    placed = geometry is not None and suffix_of(path) in PLACED_FORMATS and not same_grid(grid, Geometry())
    if needs_grid and not placed:
        raise InputError(needs_grid, path)
    if voxels.shape != tuple(shape) and not placed:
        raise InputError(f"mask shape {voxels.shape} differs from its image {tuple(shape)}", path)
    grey = _grey_share(voxels)
    if grey is not None:
        raise InputError(f"this looks like an image, not a lesion mask: {grey:.0%} of its voxels are shades "
                         "between its darkest and brightest (a mask is 0 outside the lesion and one value, "
                         "or a few labels, inside; threshold a soft mask first)", path)
    lossy = suffix_of(path) in (".jpg", ".jpeg")
    mask = (voxels > 0.5 * float(voxels.max()) if lossy else voxels != 0).astype(np.uint8)
    if placed and (voxels.shape != tuple(shape) or not same_grid(grid, geometry)):
        mask = _mask_onto(mask, grid, shape, geometry, path)
    return mask


def _mask_onto(mask: np.ndarray, grid: Geometry, shape: tuple[int, int, int], geometry: Geometry,
               path: Path) -> np.ndarray:
    """``mask`` on ``grid`` resampled (nearest neighbour) onto an image of ``shape`` on
    ``geometry``; refused when it has lesion voxels and none land on the image."""
    import SimpleITK as sitk

    src = sitk.GetImageFromArray(mask)
    grid.apply_to_sitk(src)
    ref = sitk.Image([int(shape[2]), int(shape[1]), int(shape[0])], sitk.sitkUInt8)
    geometry.apply_to_sitk(ref)
    out = sitk.GetArrayFromImage(sitk.Resample(src, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                               sitk.sitkUInt8)).astype(np.uint8).reshape(shape)
    given, kept = float(mask.sum() * np.prod(grid.spacing_mm)), float(out.sum() * np.prod(geometry.spacing_mm))
    if mask.any() and not out.any():
        raise InputError(f"none of the mask's lesion voxels lands on its image: the mask (shape {mask.shape}, "
                         f"spacing {_mm(grid.spacing_mm, ' x ')} mm, origin ({_mm(grid.origin_mm, ', ')}) mm) lies "
                         f"outside the image (shape {tuple(shape)}, spacing {_mm(geometry.spacing_mm, ' x ')} mm, "
                         f"origin ({_mm(geometry.origin_mm, ', ')}) mm) or is finer than its voxels: is it "
                         "another image's?", path)
    log.info("%s: mask resampled from its grid (shape %s, spacing %s mm) onto its image's (shape %s, "
             "spacing %s mm)", path, mask.shape, _mm(grid.spacing_mm, " x "), tuple(shape),
             _mm(geometry.spacing_mm, " x "))
    if kept < 0.5 * given:
        log.warning("%s: only %.0f %% of the mask's lesion lands on its image (the rest lies outside it)",
                    path, 100 * kept / given)
    return out


#: a mask with more distinct values than this may be an image given by mistake (a labelmap has
#: a few dozen at most, an 8-bit image up to 256)
MASK_MAX_LABELS = 64
#: ... and is one when more than this share of its voxels are shades of grey
MASK_MAX_GREY_SHARE = 0.05


def _grey_share(voxels: np.ndarray) -> float | None:
    """The share of ``voxels`` strictly between 10 % and 90 % of their range when it marks them as
    an image rather than a mask: more than :data:`MASK_MAX_LABELS` values (a labelmap has a few,
    a lossy or anti-aliased mask many only along its edges) and more than
    :data:`MASK_MAX_GREY_SHARE` of the voxels in shades of grey; ``None`` for a mask."""
    flat = voxels.reshape(-1)
    sample = flat[:: max(1, flat.size // 1_000_000)]  # a million voxels decide it
    if np.unique(sample).size <= MASK_MAX_LABELS:
        return None
    lo, hi = float(sample.min()), float(sample.max())
    grey = float(((sample > lo + 0.1 * (hi - lo)) & (sample < lo + 0.9 * (hi - lo))).mean())
    return grey if grey > MASK_MAX_GREY_SHARE else None
