"""Property-based tests (hypothesis): the study.json parser and the DICOM indexer never crash.

Whatever a study.json or a folder of would-be DICOM files contains, BINDS either reads it or
raises :class:`~BINDSLib.errors.InputError` (or lists the file as skipped) — never another
exception, never a hang.
"""

import io
import json
import string

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from BINDSLib.errors import InputError
from BINDSLib.io.dicom import index_dicom_folder, load_dicom_folder
from BINDSLib.study import Geometry, Image, Role, Study
from BINDSLib.studyfolder import study_from_json, study_to_json, write_study_folder

# derandomized: the same examples on every run (CI must not fail on a lucky draw); the fuzzer
# in benchmarks/ explores new inputs (docs/RELIABILITY.md)
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                         st.floats(allow_nan=False, width=32), st.text(string.printable, max_size=12))
json_values = st.recursive(json_scalars, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.text(string.ascii_letters + "_", max_size=10), c, max_size=5)),
    max_leaves=20)


@pytest.fixture(scope="module")
def valid_doc(tmp_path_factory):
    root = tmp_path_factory.mktemp("s")
    st_ = Study("p", [Image(np.zeros((1, 4, 4), np.float32), Geometry(), Role.parse("US_L")),
                      Image(np.zeros((2, 4, 4), np.float32), Geometry((1, 1, 2)), Role.parse("MR_DCE1"))])
    write_study_folder(st_, root / "s")
    return root / "s", json.loads((root / "s" / "study.json").read_text())


@SETTINGS
@given(doc=json_values)
def test_arbitrary_json_is_read_or_refused_clearly(tmp_path, doc):
    try:
        study_from_json(doc, tmp_path, load_voxels=False)
    except InputError as e:
        assert str(tmp_path) in str(e)


@SETTINGS
@given(data=st.data())
def test_mutated_valid_study_json(valid_doc, data):
    root, doc = valid_doc
    doc = json.loads(json.dumps(doc))
    # replace one field somewhere in the document with an arbitrary value
    target = doc if data.draw(st.booleans()) else data.draw(st.sampled_from(doc["images"]))
    key = data.draw(st.sampled_from(sorted(target)))
    target[key] = data.draw(json_values)
    try:
        study = study_from_json(doc, root, load_voxels=True)
    except InputError as e:
        assert "study.json" in str(e) or str(root) in str(e)
    else:  # what parses must serialise again
        study_to_json(study)


def _dataset(fields: dict) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = fields.pop("SOPClassUID", "1.2.840.10008.5.1.4.1.1.1.2")
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    pixels = fields.pop("PixelData", None)
    for k, v in fields.items():
        setattr(ds, k, v)
    if pixels is not None:
        ds.add_new(0x7FE00010, "OB", pixels)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


header_fields = st.fixed_dictionaries({}, optional={
    "Modality": st.sampled_from(["MG", "US", "MR", "CT", "SR", "", "mg"]),
    "StudyInstanceUID": st.sampled_from(["1.2.3", "1.2.4", ""]),
    "SeriesInstanceUID": st.sampled_from(["1.2.3.1", "1.2.3.2", ""]),
    "Rows": st.integers(0, 65535), "Columns": st.integers(0, 65535),
    "NumberOfFrames": st.integers(0, 10**6),
    "BitsAllocated": st.sampled_from([1, 8, 16, 32, 12]), "BitsStored": st.integers(0, 32),
    "SamplesPerPixel": st.integers(0, 4), "PixelRepresentation": st.integers(0, 1),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "XYZ"]),
    "ViewPosition": st.sampled_from(["CC", "MLO", "XX", ""]),
    "ImageLaterality": st.sampled_from(["L", "R", "B", "?", ""]),
    "PixelSpacing": st.lists(st.floats(-5, 100, allow_nan=False), min_size=0, max_size=3),
    "ImagePositionPatient": st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=0, max_size=3),
    "ImageOrientationPatient": st.lists(st.floats(-1, 1, allow_nan=False), min_size=0, max_size=6),
    "PixelData": st.binary(max_size=64),
})


@SETTINGS
@given(files=st.lists(st.one_of(header_fields.map(_dataset), st.binary(max_size=300)), min_size=1, max_size=4),
       cut=st.integers(0, 400))
def test_dicom_indexer_and_loader_never_crash(tmp_path_factory, files, cut):
    root = tmp_path_factory.mktemp("dcm")
    for n, data in enumerate(files):
        if n == 0 and cut < len(data):
            data = data[:cut]  # one truncated file
        (root / f"f{n}").write_bytes(data)
    index = index_dicom_folder(root)
    assert index.files_seen == len(files)
    for sk in index.skipped:
        assert sk.reason and str(root) in sk.path
    try:
        studies, skipped = load_dicom_folder(root)
    except InputError as e:
        assert str(root) in str(e)
    else:
        for s in studies:
            for im in s.images:
                assert np.isfinite(im.voxels).all()


def test_damaged_element_value_is_a_skip_not_a_crash(tmp_path, pydicom_test_files):
    """Found by fuzzing: an unknown VR inside a header raised only when the element was used."""
    data = bytearray((pydicom_test_files / "MR_small.dcm").read_bytes())
    ds = pydicom.dcmread(io.BytesIO(bytes(data)), stop_before_pixels=True)
    # corrupt the VR of PatientID (explicit VR little endian: tag, then 2-byte VR)
    tag = b"\x10\x00\x20\x00" + ds["PatientID"].VR.encode()
    at = bytes(data).index(tag)
    data[at + 4:at + 6] = b"LG"
    (tmp_path / "x.dcm").write_bytes(bytes(data))
    with pytest.raises(InputError, match="damaged DICOM header") as e:
        load_dicom_folder(tmp_path)
    assert "Traceback" not in str(e.value)


def test_huge_declared_element_length_is_refused_without_allocating(tmp_path, pydicom_test_files):
    """Found by fuzzing: a trailing element declaring ~4 GB made GDCM allocate it all."""
    import resource
    import subprocess
    import sys

    data = (pydicom_test_files / "MR_small.dcm").read_bytes()
    # append a private element (explicit VR little endian, OB) claiming 0xFFFFFFF0 bytes
    data += b"\x09\x00\x10\x00OB\x00\x00" + (0xFFFFFFF0).to_bytes(4, "little") + b"\0" * 64
    (tmp_path / "x.dcm").write_bytes(data)

    def limit():  # in the child only: a 4 GB allocation would fail
        resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, resource.RLIM_INFINITY))

    code = ("import sys; from BINDSLib.io.dicom import load_dicom_folder; from BINDSLib.errors import InputError\n"
            "try:\n    load_dicom_folder(sys.argv[1])\nexcept InputError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         preexec_fn=limit, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert "declares 4294967280 bytes" in out.stdout
