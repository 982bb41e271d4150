"""Plain image files through SimpleITK: geometry kept, roles required, bad files refused."""

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from BINDSLib.errors import InputError, UsageError
from BINDSLib.io.files import read_image_file, to_grayscale
from BINDSLib.io.loader import load, load_files, parse_role_assignments
from BINDSLib.study import Geometry, Role


def _write(path, arr, spacing=(0.7, 0.8, 2.0), origin=(1.0, 2.0, 3.0)):
    img = sitk.GetImageFromArray(arr)
    if img.GetDimension() == 3:
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_volume_formats_keep_geometry(tmp_path, suffix):
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    p = _write(tmp_path / f"MR_T2{suffix}", arr)
    im = read_image_file(p)
    assert im.role == Role.parse("MR_T2")  # role from the file name
    np.testing.assert_array_equal(im.voxels, arr)
    assert np.allclose(im.geometry.spacing_mm, (0.7, 0.8, 2.0))
    assert np.allclose(im.geometry.origin_mm, (1.0, 2.0, 3.0))


def test_png_grayscale_and_rgb(tmp_path):
    gray = (np.arange(12 * 10) % 256).astype(np.uint8).reshape(12, 10)
    p = _write(tmp_path / "lesion.png", gray)
    im = read_image_file(p, role=Role.parse("US_L"), spacing_mm=(0.1, 0.2))
    assert im.shape == (1, 12, 10) and im.geometry == Geometry((0.1, 0.2, 1.0))
    np.testing.assert_array_equal(im.voxels[0], gray)
    rgb = np.zeros((12, 10, 3), np.uint8)
    rgb[..., 1] = 200
    img = sitk.GetImageFromArray(rgb, isVector=True)
    sitk.WriteImage(img, str(tmp_path / "US_R.png"))
    im = read_image_file(tmp_path / "US_R.png")
    assert im.role == Role.parse("US_R")
    assert np.allclose(im.voxels, 0.587 * 200, atol=1e-3)
    assert np.allclose(to_grayscale(np.array([[255, 255, 255, 0]], np.uint8)), 255, atol=1e-3)


def test_png_needs_a_role(tmp_path):
    p = _write(tmp_path / "scan.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="role is unknown") as e:
        read_image_file(p)
    assert "scan.png" in str(e.value)


def test_role_names_with_an_image_index_and_b_values_written_without_b():
    from BINDSLib.io.files import role_from_name

    assert role_from_name("MR_DWI_b800_2.nii.gz") == Role.parse("MR_DWI_b800")
    assert role_from_name("US_L_2.png") == Role.parse("US_L")  # a study folder's second US_L image
    assert role_from_name("MR_DWI_2.nrrd") == Role.parse("MR_DWI")
    # a b-value without its "b" is not an 800th DWI image of no b-value
    assert role_from_name("MR_DWI_800.nii.gz") is None and role_from_name("MR_DWI_1000_2.nrrd") is None


def test_a_b_value_written_without_b_is_named_in_the_error(tmp_path):
    p = _write(tmp_path / "MR_DWI_800.nrrd", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(InputError, match="role is unknown.*MR_DWI_b800"):
        read_image_file(p)


def test_nan_voxels_refused(tmp_path):
    arr = np.ones((2, 3, 4), np.float32)
    arr[1, 1, 1] = np.nan
    p = _write(tmp_path / "MR_ADC.nrrd", arr)
    with pytest.raises(InputError, match="1 NaN or infinite voxel"):
        read_image_file(p)


def test_zero_length_and_corrupt_png(tmp_path):
    (tmp_path / "US.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_image_file(tmp_path / "US.png")
    good = _write(tmp_path / "US_L.png", np.zeros((64, 64), np.uint8)).read_bytes()
    (tmp_path / "US_R.png").write_bytes(good[:40])
    with pytest.raises(InputError) as e:
        read_image_file(tmp_path / "US_R.png")
    assert "US_R.png" in str(e.value)


def test_huge_declared_size_refused_before_reading(tmp_path, monkeypatch):
    # A NRRD header that declares 100000^3 voxels with a tiny body: refused from the header.
    p = tmp_path / "MR_T2.nrrd"
    p.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 100000 100000 100000\n"
                  b"encoding: raw\nendian: little\n\n" + b"\0" * 16)
    with pytest.raises(InputError, match="too large"):
        read_image_file(p)
    monkeypatch.setenv("BINDS_MAX_IMAGE_BYTES", "100")
    small = _write(tmp_path / "MR_T1_PRE.nrrd", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(InputError, match="BINDS_MAX_IMAGE_BYTES"):
        read_image_file(small)


def test_unsupported_suffix(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported file type"):
        read_image_file(tmp_path / "x.txt", role=Role.parse("US"))


def test_load_files_with_roles_and_role_assignments(tmp_path):
    a = _write(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    b = _write(tmp_path / "b.nrrd", np.zeros((3, 8, 8), np.float32))
    pairs = parse_role_assignments([f"US_L={a}", f"mr_dce1={b}"])
    res = load_files(pairs)
    (st,) = res.studies
    assert [im.label for im in st.images] == ["US_L", "MR_DCE1"]
    with pytest.raises(UsageError, match="ROLE=FILE"):
        parse_role_assignments(["US_L"])
    with pytest.raises(InputError, match="unknown role"):
        parse_role_assignments([f"XX={a}"])


def test_load_missing_path(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load(tmp_path / "nope")


def _png_gray_alpha(path, rows=4, cols=5):
    """A valid PNG of colour type 4 (gray + alpha, 8 bits), written by hand."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\0" + bytes([i * 10, 255] * cols) for i in range(rows))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", cols, rows, 8, 4, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_a_png_of_gray_and_alpha_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "US_L.png"
    _png_gray_alpha(path)
    with pytest.raises(InputError, match=r"US_L.png: not a readable image \(unsupported pixel layout .*save it "
                                         r"as grayscale or RGB\)"):
        read_image_file(path)


def test_a_jpeg_mask_is_thresholded_at_half_its_maximum(tmp_path):
    """JPEG compression leaves faint non-zero values around a mask's edges: they are not lesion."""
    from BINDSLib.io.files import read_mask_file

    rr, cc = np.ogrid[:64, :64]
    disc = ((rr - 32) ** 2 + (cc - 30) ** 2 <= 12 ** 2).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(disc * 255), str(tmp_path / "mask.jpg"))
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.jpg")))
    assert ((raw > 0) & (disc == 0)).sum() > 20  # the artefacts the rule is for
    got = read_mask_file(tmp_path / "mask.jpg", (1, 64, 64))[0]
    assert (got != disc).sum() <= 6
    sitk.WriteImage(sitk.GetImageFromArray(disc), str(tmp_path / "mask.png"))  # lossless: any non-zero
    np.testing.assert_array_equal(read_mask_file(tmp_path / "mask.png", (1, 64, 64))[0], disc)


def test_a_placed_mask_on_another_grid_is_resampled_onto_its_image(tmp_path, monkeypatch):
    """A labelmap drawn on a finer grid, or on an oblique 3D grid cropped to the lesion, is read
    where its grid places it; a mask without a grid (PNG) must have the image's shape."""
    from BINDSLib.io.files import read_mask_file

    direction = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # sagittal-like axes
    geometry = Geometry((0.8, 0.6, 2.0), (10.0, -20.0, 5.0), direction)
    want = np.zeros((6, 20, 30), np.uint8)
    want[2:4, 5:11, 8:20] = 1
    # the same lesion on a grid twice as fine in-plane: each image voxel is 2 x 2 mask voxels
    fine = np.repeat(np.repeat(want, 2, axis=1), 2, axis=2)
    fine_geometry = Geometry((0.4, 0.3, 2.0), tuple(np.asarray(geometry.index_to_lps((-0.25, -0.25, 0.0)))),
                             direction)
    img = sitk.GetImageFromArray(fine)
    fine_geometry.apply_to_sitk(img)
    sitk.WriteImage(img, str(tmp_path / "fine.nii.gz"))
    np.testing.assert_array_equal(read_mask_file(tmp_path / "fine.nii.gz", want.shape, geometry), want)
    # cropped to the lesion's box, in its place
    img = sitk.GetImageFromArray(want)
    geometry.apply_to_sitk(img)
    sitk.WriteImage(img[8:20, 5:11, 2:4], str(tmp_path / "crop.nrrd"))
    np.testing.assert_array_equal(read_mask_file(tmp_path / "crop.nrrd", want.shape, geometry), want)
    # a mask mostly off the image: the part on it is read, and the rest is said to be lost
    off = Geometry(geometry.spacing_mm, tuple(np.asarray(geometry.index_to_lps((20, 0, 0)))), direction)
    img = sitk.GetImageFromArray(want)
    off.apply_to_sitk(img)  # columns 8-19 of the mask are image columns 28-39: 10 of 12 are off it
    sitk.WriteImage(img, str(tmp_path / "off.nrrd"))
    import BINDSLib.io.files as files

    said = []  # (the CLI's logging set-up, run by other tests, keeps these records from caplog)
    monkeypatch.setattr(files.log, "warning", lambda msg, *args: said.append(msg % args))
    got = read_mask_file(tmp_path / "off.nrrd", want.shape, geometry)
    assert got.sum() == want[:, :, 8:10].sum() and got[:, :, 28:].all(axis=2).any()
    assert len(said) == 1 and "off.nrrd: only 17 % of the mask's lesion lands on its image" in said[0]
    # without the image's geometry (a dataset's pixel masks) the shape must match
    with pytest.raises(InputError, match=r"crop.nrrd: mask shape \(2, 6, 12\) differs from its image"):
        read_mask_file(tmp_path / "crop.nrrd", want.shape)
    sitk.WriteImage(sitk.GetImageFromArray(want[3]), str(tmp_path / "slice.png"))
    with pytest.raises(InputError, match=r"slice.png: mask shape \(1, 20, 30\) differs from its image"):
        read_mask_file(tmp_path / "slice.png", (1, 40, 60), Geometry((0.5, 0.5, 1.0)))


def test_several_values_per_voxel_are_grey_only_for_colour(tmp_path):
    """RGB(A) pictures and 8-bit RGB volumes (a Slicer export of a colour
    ultrasound), become grey; a vector of floats (b-values or phases in one file) is refused,
    not averaged as a colour."""
    vectors = sitk.GetImageFromArray(np.ones((2, 4, 5, 3), np.float32), isVector=True)
    sitk.WriteImage(vectors, str(tmp_path / "MR_T2.nrrd"))
    with pytest.raises(InputError, match="3 values per voxel .* give one grayscale image per file"):
        read_image_file(tmp_path / "MR_T2.nrrd")
    two = sitk.GetImageFromArray(np.ones((2, 4, 5, 2), np.float32), isVector=True)
    sitk.WriteImage(two, str(tmp_path / "MR_ADC.mha"))
    with pytest.raises(InputError, match="2 values per voxel"):  # was an "internal error"
        read_image_file(tmp_path / "MR_ADC.mha")
    rgb = np.zeros((1, 4, 5, 3), np.uint8)
    rgb[..., 0] = 200
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "US_L.nrrd"))
    assert read_image_file(tmp_path / "US_L.nrrd").voxels.max() == pytest.approx(0.299 * 200, rel=1e-5)
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 100, 255
    sitk.WriteImage(sitk.GetImageFromArray(rgba, isVector=True), str(tmp_path / "US_R.png"))
    np.testing.assert_allclose(read_image_file(tmp_path / "US_R.png").voxels, np.full((1, 4, 5), 58.7), rtol=1e-5)


def test_a_header_never_reads_a_file_outside_its_folder(tmp_path):
    """A detached NRRD or MetaImage header names its data file: one outside the header's folder
    (/etc/passwd), a device or a missing file is refused before SimpleITK reads it; one beside
    it is read."""
    from BINDSLib.studyfolder import read_volume

    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "MR_T2.raw").write_bytes(data.tobytes())
    header = ("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 3 2\nspacings: 1 1 2\n"
              "encoding: raw\ndata file: {}\n\n")
    good = tmp_path / "MR_T2.nhdr"
    good.write_text(header.format("MR_T2.raw"))
    np.testing.assert_array_equal(read_image_file(good).voxels, data)
    for name, target, message in (("etc", "/etc/passwd", "outside the header's folder"),
                                  ("up", "../MR_T2.raw", "outside the header's folder"),
                                  ("dev", "/dev/zero", "outside the header's folder"),
                                  ("gone", "nothere.raw", "missing or not a regular file"),
                                  ("list", "LIST", "a list or series of files")):
        sub = tmp_path / name
        sub.mkdir()
        (sub / "MR_T2.nhdr").write_text(header.format(target))
        for read in (read_image_file, read_volume):
            with pytest.raises(InputError, match=message) as e:
                read(sub / "MR_T2.nhdr")
            assert str(sub / "MR_T2.nhdr") in str(e.value)
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "MR_T2.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementType = MET_UCHAR\n"
                                    "ElementDataFile = /etc/passwd\n")
    with pytest.raises(InputError, match="outside the header's folder"):
        read_image_file(meta / "MR_T2.mhd")


def test_truncated_files_are_refused_not_zero_filled(tmp_path):
    """SimpleITK reads a raw NRRD or a NIfTI cut short with zeros for the missing voxels, and
    libjpeg a cut JPEG with grey; each is refused, naming the file."""
    data = (np.arange(4 * 8 * 8) % 200).astype(np.uint16).reshape(4, 8, 8) + 1
    for name in ("MR_T2.nii", "MR_ADC.nrrd"):
        img = sitk.GetImageFromArray(data)
        writer = sitk.ImageFileWriter()
        writer.SetFileName(str(tmp_path / name))
        writer.SetUseCompression(False)
        writer.Execute(img)
        np.testing.assert_array_equal(read_image_file(tmp_path / name).voxels, data)  # whole: read
        raw = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(raw[: len(raw) - 300])
        with pytest.raises(InputError, match=r"truncated: the header declares 512 bytes of voxels, the file holds 2\d\d") as e:
            read_image_file(tmp_path / name)
        assert name in str(e.value)
    picture = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(picture), str(tmp_path / "US_L.jpg"))
    assert read_image_file(tmp_path / "US_L.jpg").shape == (1, 64, 64)
    raw = (tmp_path / "US_L.jpg").read_bytes()
    (tmp_path / "US_L.jpg").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated JPEG"):
        read_image_file(tmp_path / "US_L.jpg")


def test_header_checks_keep_what_is_legitimate(tmp_path):
    """The review's cases: a scaled NIfTI (ITK reports float for it), data file names with spaces
    or starting with "list", a data file named by an absolute path inside the folder, ASCII
    MetaImage data, compressed MetaImage data whatever the order of its flags, a JPEG with bytes
    after its end (also marker-like ones), data files that are links (git-annex, DataLad); and
    what must still be refused: a header hiding its data file behind 64 KiB of comments, a FIFO
    or device, an empty data file field."""
    import struct

    data = (np.arange(4 * 5 * 6) % 100).astype(np.int16).reshape(4, 5, 6)
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, 6, 5, 4, 1, 1, 1, 1)  # dim
    struct.pack_into("<hh", hdr, 70, 4, 16)  # datatype int16, bitpix
    struct.pack_into("<8f", hdr, 76, 1, 1, 1, 1, 1, 1, 1, 1)  # pixdim
    struct.pack_into("<f", hdr, 108, 352.0)  # vox_offset
    struct.pack_into("<ff", hdr, 112, 0.5, 0.0)  # scl_slope, scl_inter
    hdr[344:348] = b"n+1\0"
    nii = tmp_path / "MR_T1_PRE.nii"
    nii.write_bytes(bytes(hdr) + b"\0" * 4 + data.tobytes())
    np.testing.assert_allclose(read_image_file(nii).voxels, data * 0.5)
    nii.write_bytes(nii.read_bytes()[:-10])
    with pytest.raises(InputError, match="truncated: the header declares 240 bytes"):
        read_image_file(nii)

    raw = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = ("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 3 2\nencoding: raw\n{}data file: {}\n\n")
    for n, name in enumerate(("my image.raw", "listing.raw", str(tmp_path / "abs.raw"))):
        (tmp_path / Path(name).name).write_bytes(raw.tobytes())
        (tmp_path / f"MR_T2_{n}.nhdr").write_text(header.format("", name))
        np.testing.assert_array_equal(read_image_file(tmp_path / f"MR_T2_{n}.nhdr", role=Role.parse("MR_T2")).voxels, raw)
    (tmp_path / "US_L.mha").write_text("ObjectType = Image\nNDims = 2\nDimSize = 3 2\nElementType = MET_FLOAT\n"
                                       "BinaryData = False\nElementDataFile = LOCAL\n1 2 3\n4 5 6\n")
    np.testing.assert_array_equal(read_image_file(tmp_path / "US_L.mha").voxels, [[[1, 2, 3], [4, 5, 6]]])
    compressed = tmp_path / "MR_ADC.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((10, 20, 30), np.float32)), str(compressed), True)
    text = compressed.read_bytes()
    at = text.index(b"CompressedData")
    line = text[at:text.index(b"\n", at) + 1]
    compressed.write_bytes(text.replace(line, line + b"BinaryData = True\n", 1))  # after it, not before
    assert read_image_file(compressed).shape == (10, 20, 30)
    picture = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(picture), str(tmp_path / "US_R.jpg"))
    whole = (tmp_path / "US_R.jpg").read_bytes()
    trailer = np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    (tmp_path / "US_R.jpg").write_bytes(whole + trailer + b"\xff\xda\x00\x08" + trailer[:100])  # a video after
    assert read_image_file(tmp_path / "US_R.jpg").shape == (1, 64, 64)
    (tmp_path / "US_R.jpg").write_bytes(whole[:-40] + b"\xff\xd8\xff\xda")  # cut, then marker-like bytes
    with pytest.raises(InputError, match="truncated JPEG"):
        read_image_file(tmp_path / "US_R.jpg")

    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "outside.raw").write_bytes(raw.tobytes())
    (inner / "MR_T2.nhdr").write_text(header.format("# padding\n" * 7000, "../outside.raw"))
    with pytest.raises(InputError, match="outside the header's folder"):
        read_image_file(inner / "MR_T2.nhdr")
    (inner / "link.raw").symlink_to(tmp_path / "outside.raw")  # an annexed file
    (inner / "MR_T2.nhdr").write_text(header.format("", "link.raw"))
    np.testing.assert_array_equal(read_image_file(inner / "MR_T2.nhdr").voxels, raw)
    os.mkfifo(inner / "fifo.raw")
    (inner / "zero.raw").symlink_to("/dev/zero")
    for name in ("fifo.raw", "zero.raw"):
        (inner / "MR_T2.nhdr").write_text(header.format("", name))
        with pytest.raises(InputError, match="missing or not a regular file"):
            read_image_file(inner / "MR_T2.nhdr")
    (inner / "MR_T2.nhdr").write_text(header.format("", ""))
    with pytest.raises(InputError, match="names no data file"):
        read_image_file(inner / "MR_T2.nhdr")


def test_a_nifti_voxel_size_of_zero_or_nan_is_said(tmp_path, caplog):
    """ITK reads pixdim 0 or NaN as 1 mm in silence."""
    import struct

    data = (np.arange(4 * 5 * 6) % 100 + 1).astype(np.int16).reshape(4, 5, 6)
    for name, pixdim, said in (("MR_T2.nii", (0.8, 0.8, 3.0), False), ("MR_ADC.nii", (0.0, 0.8, 3.0), True),
                               ("MR_DCE1.nii", (float("nan"), 0.8, 3.0), True)):
        hdr = bytearray(348)
        struct.pack_into("<i", hdr, 0, 348)
        struct.pack_into("<8h", hdr, 40, 3, 6, 5, 4, 1, 1, 1, 1)
        struct.pack_into("<hh", hdr, 70, 4, 16)
        struct.pack_into("<8f", hdr, 76, 1, *pixdim, 1, 1, 1, 1)
        struct.pack_into("<f", hdr, 108, 352.0)
        struct.pack_into("<ff", hdr, 112, 1.0, 0.0)
        hdr[344:348] = b"n+1\0"
        (tmp_path / name).write_bytes(bytes(hdr) + b"\0" * 4 + data.tobytes())
        caplog.clear()
        with caplog.at_level("WARNING", logger="BINDSLib.io.files"):
            read_image_file(tmp_path / name)
        assert ("pixdim) " in caplog.text and "is not usable: 1 mm assumed" in caplog.text) == said, name


def test_a_nrrd_in_a_space_that_is_not_a_patient_one_is_said(tmp_path, caplog):
    """ITK turns RAS into LPS, and reads scanner-xyz or 3D-right-handed as LPS in silence."""
    (tmp_path / "vox.raw").write_bytes(bytes(range(1, 9)))
    header = ("NRRD0004\ntype: uint8\ndimension: 3\nspace: {}\nsizes: 2 2 2\n"
              "space directions: (1,0,0) (0,1,0) (0,0,2)\nspace origin: (10,20,30)\n"
              "encoding: raw\ndata file: vox.raw\n")
    for space, said, origin in (("left-posterior-superior", False, (10, 20, 30)),
                                ("right-anterior-superior", False, (-10, -20, 30)),
                                ("scanner-xyz", True, (10, 20, 30)), ("3D-right-handed", True, (10, 20, 30))):
        (tmp_path / "MR_T2.nhdr").write_text(header.format(space))
        caplog.clear()
        with caplog.at_level("WARNING", logger="BINDSLib.io.files"):
            im = read_image_file(tmp_path / "MR_T2.nhdr")
        assert im.geometry.origin_mm == pytest.approx(origin)
        assert (f"in the NRRD space {space!r}, not a patient one" in caplog.text) == said, space


def test_one_image_file_is_a_study_of_its_own_name(tmp_path):
    """A file given on its own (binds diagnose --role US=images/benign_127.png) is a study named
    after it, so that two files of one folder are two studies, not two studies called 'images';
    several files given together are their folder's study."""
    from BINDSLib.io.loader import load_files
    from BINDSLib.study import Modality, Role

    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("benign_127.png", "malignant_001.png"):
        sitk.WriteImage(sitk.GetImageFromArray(np.full((16, 16), 9, np.uint8)), str(folder / name))
    sitk.WriteImage(sitk.GetImageFromArray(np.full((2, 16, 16), 9, np.int16)), str(folder / "vol.nii.gz"))
    us = Role(Modality.US)
    assert load_files([(folder / "benign_127.png", us)]).studies[0].study_id == "benign_127"
    assert load_files([(folder / "vol.nii.gz", Role(Modality.MR, sequence="T2"))]).studies[0].study_id == "vol"
    both = [(folder / "benign_127.png", Role(Modality.US, laterality="L")),
            (folder / "malignant_001.png", Role(Modality.US, laterality="R"))]
    assert load_files(both).studies[0].study_id == "images"
    assert load_files([(folder / "benign_127.png", us)], study_id="given").studies[0].study_id == "given"
    # a file named after its role is its folder's study (patient folders of US_L.png files)
    for patient in ("p1", "p2"):
        (tmp_path / patient).mkdir()
        sitk.WriteImage(sitk.GetImageFromArray(np.full((16, 16), 9, np.uint8)), str(tmp_path / patient / "US_L.png"))
    assert [load_files([(tmp_path / p / "US_L.png", None)]).studies[0].study_id for p in ("p1", "p2")] == ["p1", "p2"]
