"""Role guessing for scene volumes: from DICOM header values (through BINDSLib's own rules) or
from node names; the DICOM database look-up; roles stored on real MRML nodes."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "BINDS"))

from BINDSLib.study import Modality, Role  # noqa: E402
from BINDSSlicerLib.roles import (  # noqa: E402
    DICOM_TAGS, VolumeDescription, guessRoles, headerFromDicomDatabase, roleChoices,
)

V2D = (1, 64, 48)
V3D = (40, 64, 64)


def guess(*items):
    descriptions = [VolumeDescription(str(n), name, header or {}, shape) for n, (name, header, shape) in enumerate(items)]
    roles = guessRoles(descriptions)
    return [roles[str(n)] for n in range(len(items))]


def test_role_keys_as_names():
    assert guess(("MG_L_CC", None, V2D), ("mr-dce2", None, V3D), ("US R 10h", None, V2D)) == \
        ["MG_L_CC", "MR_DCE2", "US_R_10h"]


def test_mammograms_from_names():
    assert guess(("L CC", None, V2D), ("RMLO", None, V2D), ("right mlo", None, V2D),
                 ("mammo left", None, V2D)) == ["MG_L_CC", "MG_R_MLO", "MG_R_MLO", "MG_L"]


def test_ultrasound_from_names():
    assert guess(("US left 10h", None, V2D), ("Breast ultrasound R", None, V2D), ("sono", None, V2D)) == \
        ["US_L_10h", "US_R", "US"]


def test_mr_sequences_and_phases_from_names():
    names = ["T1 pre", "DCE phase 2", "DCE phase 1", "T2 FS", "DWI b800", "ADC map", "dce post 3"]
    assert guess(*[(n, None, V3D) for n in names]) == \
        ["MR_T1_PRE", "MR_DCE2", "MR_DCE1", "MR_T2", "MR_DWI_b800", "MR_ADC", "MR_DCE3"]


def test_mr_words_on_a_2d_image_are_not_mr():
    # "T2" on a single-slice image without any modality word: not guessed as MR
    assert guess(("T2", None, V2D), ("unrelated", None, V3D)) == [None, None]


def test_dicom_headers_use_binds_rules():
    mg = {"Modality": "MG", "ViewPosition": "MLO", "ImageLaterality": "R", "SeriesDescription": "screening"}
    us = {"Modality": "US", "Laterality": "L", "SeriesDescription": "L breast 2 o'clock"}
    pre = {"Modality": "MR", "SeriesDescription": "Ax VIBRANT", "AcquisitionTime": "101500",
           "ContrastBolusStartTime": "101600"}
    post1 = dict(pre, AcquisitionTime="101700")
    post2 = dict(pre, AcquisitionTime="101900")
    dwi = {"Modality": "MR", "SeriesDescription": "ep2d_diff", "DiffusionBValue": "800"}
    t2 = {"Modality": "MR", "SeriesDescription": "scan 5", "RepetitionTime": "4000", "EchoTime": "90"}
    # node names are unhelpful: only the headers tell
    assert guess(("1: image", mg, V2D), ("2: image", us, V2D), ("4: x", post2, V3D), ("3: x", pre, V3D),
                 ("5: x", post1, V3D), ("6: x", dwi, V3D), ("7: x", t2, V3D)) == \
        ["MG_R_MLO", "US_L_2h", "MR_DCE2", "MR_T1_PRE", "MR_DCE1", "MR_DWI_b800", "MR_T2"]


def test_dicom_modality_wins_over_the_name():
    assert guess(("US left", {"Modality": "MG", "ViewPosition": "CC", "ImageLaterality": "L"}, V2D)) == ["MG_L_CC"]


def test_every_choice_is_a_valid_role():
    choices = roleChoices()
    assert [Role.parse(k).key for k in choices] == choices
    assert {"MG_L_CC", "MG_R_MLO", "US_L", "MR_T1_PRE", "MR_DCE1", "MR_ADC"} <= set(choices)


class FakeDicomDatabase:
    """ctkDICOMDatabase.instanceValue(sopInstanceUID, "gggg,eeee")."""

    def __init__(self, values):
        self.values = values
        self.asked = []

    def instanceValue(self, uid, tag):
        self.asked.append((uid, tag))
        return self.values.get(uid, {}).get(tag, "")


def test_header_from_the_dicom_database_reads_the_first_instance():
    db = FakeDicomDatabase({"1.2.3": {"0008,0060": "MG", "0018,5101": "CC ", "0020,0062": "L"}})
    header = headerFromDicomDatabase(db, "1.2.3 1.2.4")
    assert header == {"Modality": "MG", "ViewPosition": "CC", "ImageLaterality": "L"}
    assert {uid for uid, _ in db.asked} == {"1.2.3"}
    assert DICOM_TAGS["ViewPosition"] == "0018,5101"
    assert headerFromDicomDatabase(db, "") == {} and headerFromDicomDatabase(None, "1.2.3") == {}


def test_roles_are_guessed_and_stored_on_nodes():
    slicer = pytest.importorskip("slicer")
    from BINDSSlicerLib import scene as sc
    from BINDSSlicerLib.roles import guessVolumeRoles

    scene = slicer.vtkMRMLScene()
    from BINDSLib.study import Geometry

    g = Geometry()
    dicom_node = sc.addVolumeFromVoxels(scene, np.zeros(V2D, np.uint16), g, "2: Series")
    dicom_node.SetAttribute("DICOM.instanceUIDs", "9.9.9")
    named = sc.addVolumeFromVoxels(scene, np.zeros(V3D, np.int16), g, "T2 TSE")
    kept = sc.addVolumeFromVoxels(scene, np.zeros(V2D, np.uint8), g, "L CC")
    sc.setVolumeRole(kept, "US_L")  # the user's choice
    unknown = sc.addVolumeFromVoxels(scene, np.zeros(V2D, np.uint8), g, "photo")
    db = FakeDicomDatabase({"9.9.9": {"0008,0060": "MG", "0018,5101": "MLO", "0020,0062": "L"}})
    result = guessVolumeRoles([dicom_node, named, kept, unknown], db)
    assert result == {dicom_node.GetID(): "MG_L_MLO", named.GetID(): "MR_T2", kept.GetID(): "US_L",
                      unknown.GetID(): None}
    assert dicom_node.GetAttribute(sc.ROLE_ATTRIBUTE) == "MG_L_MLO"
    assert sc.volumeRole(unknown) == ""
    guessVolumeRoles([kept], db, overwrite=True)
    assert sc.volumeRole(kept) == "MG_L_CC"


def test_series_that_arrive_one_at_a_time_are_guessed_as_a_set():
    """Slicer's DICOM browser adds a DCE study's series one by one (the roles table refreshes
    between them): each new one is guessed again with the earlier guesses, so the phases come
    out in time order as when they are guessed together; a role set by hand stays."""
    slicer = pytest.importorskip("slicer")
    from BINDSLib.study import Geometry
    from BINDSSlicerLib import scene as sc
    from BINDSSlicerLib.roles import guessNewVolumeRoles

    scene = slicer.vtkMRMLScene()
    times = {"1.1": "101500", "1.2": "101700", "1.3": "101900"}
    db = FakeDicomDatabase({uid: {"0008,0060": "MR", "0008,103E": "Ax VIBRANT", "0008,0032": t,
                                  "0018,1042": "101600"} for uid, t in times.items()})
    nodes = []
    for uid in times:
        node = sc.addVolumeFromVoxels(scene, np.zeros(V3D, np.int16), Geometry(), f"{uid}: Ax VIBRANT")
        node.SetAttribute("DICOM.instanceUIDs", uid)
        nodes.append(node)
        assert guessNewVolumeRoles(nodes, db) == nodes  # the new one and the earlier guesses
    assert [sc.volumeRole(n) for n in nodes] == ["MR_T1_PRE", "MR_DCE1", "MR_DCE2"]
    assert guessNewVolumeRoles(nodes, db) == []  # nothing new: nothing guessed
    sc.setVolumeRole(nodes[2], "MR_DCE3")  # the user's choice is kept from now on
    late = sc.addVolumeFromVoxels(scene, np.zeros(V3D, np.int16), Geometry(), "T2 TSE")
    assert guessNewVolumeRoles(nodes + [late], db) == nodes[:2] + [late]
    assert [sc.volumeRole(n) for n in nodes + [late]] == ["MR_T1_PRE", "MR_DCE1", "MR_DCE3", "MR_T2"]
    # another patient's study, loaded later: guessed by itself, the first study's guesses stay
    study = sc.createStudyItem(scene, sc.createSubjectItem(scene, "patient 2"), "study 2")
    for node in nodes[:2]:
        node.SetAttribute(sc.ROLE_ATTRIBUTE, "MR_DCE4")  # (a guess no longer what it was: untouched below)
        node.SetAttribute(sc.ROLE_GUESSED_ATTRIBUTE, "1")
    other = sc.addVolumeFromVoxels(scene, np.zeros(V3D, np.int16), Geometry(), "1.9: Ax VIBRANT")
    other.SetAttribute("DICOM.instanceUIDs", "1.1")
    sc.placeUnder(scene, other, study)
    assert guessNewVolumeRoles(nodes + [late, other], db) == [other]
    assert [sc.volumeRole(n) for n in nodes[:2]] == ["MR_DCE4", "MR_DCE4"] and sc.volumeRole(other) == "MR_T1_PRE"


def test_an_ultrasound_cine_keeps_its_representative_frame_in_the_scene():
    """The frame the command line reads (role.frame, from RepresentativeFrameNumber) travels
    with the volume node: from a study added to the scene, and from a DICOM-browser volume."""
    slicer = pytest.importorskip("slicer")
    from BINDSLib.study import Geometry, Image, Study
    from BINDSSlicerLib import scene as sc
    from BINDSSlicerLib.roles import guessVolumeRoles

    scene = slicer.vtkMRMLScene()
    cine = Image(np.zeros((7, 8, 9), np.uint8), Geometry(), Role(Modality.US, laterality="R", frame=5))
    (node,) = sc.addStudyToScene(scene, Study("s", [cine])).values()
    assert node.GetAttribute(sc.FRAME_ATTRIBUTE) == "5"
    back = sc.imageFromVolumeNode(node)
    assert back.role.frame == 5 and back.role.key == "US_R"
    browsed = sc.addVolumeFromVoxels(scene, np.zeros((7, 8, 9), np.uint8), Geometry(), "cine")
    browsed.SetAttribute("DICOM.instanceUIDs", "7.7.7")
    db = FakeDicomDatabase({"7.7.7": {"0008,0060": "US", "0020,0062": "L", "0028,6010": "3"}})
    guessVolumeRoles([browsed], db)
    assert sc.volumeRole(browsed) == "US_L" and sc.imageFromVolumeNode(browsed).role.frame == 2
    plain = sc.addVolumeFromVoxels(scene, np.zeros((7, 8, 9), np.uint8), Geometry(), "US_L")
    assert sc.imageFromVolumeNode(plain, "US_L").role.frame is None  # (the central frame, as before)


def test_a_mammogram_stored_turned_in_the_scene_is_written_as_the_command_line_reads_it(tmp_path):
    """A mammogram from Slicer's DICOM module is in storage order: its PatientOrientation (from
    the DICOM database) travels with the node, and the study folder gets it re-indexed as
    `binds diagnose` reads the file (the chest wall - nipple axis along the rows), every pixel at
    its place in space, so the outputs still overlay the node."""
    slicer = pytest.importorskip("slicer")
    from BINDSLib.study import Geometry
    from BINDSLib.studyfolder import read_study_folder
    from BINDSSlicerLib import scene as sc
    from BINDSSlicerLib.roles import guessVolumeRoles

    scene = slicer.vtkMRMLScene()
    stored = np.arange(1 * 6 * 4, dtype=np.uint16).reshape(1, 6, 4)  # chest wall at the bottom edge
    geometry = Geometry((0.1, 0.08, 1.0), (3.0, -7.0, 1.0))
    node = sc.addVolumeFromVoxels(scene, stored, geometry, "GE left CC")
    node.SetAttribute("DICOM.instanceUIDs", "8.8.8")
    db = FakeDicomDatabase({"8.8.8": {"0008,0060": "MG", "0018,5101": "CC", "0020,0062": "L", "0020,0020": "R\\P"}})
    guessVolumeRoles([node], db)
    assert sc.volumeRole(node) == "MG_L_CC" and node.GetAttribute(sc.ORIENTATION_ATTRIBUTE) == "R\\P"
    path, by_label = sc.writeStudyFolder([(node, "MG_L_CC")], tmp_path / "study", "s1")
    image = read_study_folder(path).image("MG_L_CC")
    # R\\P turned to the standard A\\R: transposed (rows now to the back), then mirrored (to the front)
    np.testing.assert_array_equal(image.voxels, stored.transpose(0, 2, 1)[:, :, ::-1])
    ras = sc.ijkToRASArray(node)
    cols = image.shape[2]
    for r in range(image.shape[1]):
        for c in range(cols):  # the pixel (r, c) of the file is the node's (cols - 1 - c, r), in place
            lps = image.geometry.index_to_lps((c, r, 0))
            np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0]) @ lps, (ras @ [r, cols - 1 - c, 0, 1.0])[:3],
                                       atol=1e-9)
    # a PatientOrientation that contradicts the file's plane is not used (as the DICOM reader decides)
    contra = sc.addVolumeFromVoxels(scene, stored, geometry, "GE left CC again")
    contra.SetAttribute("DICOM.instanceUIDs", "8.8.9")
    guessVolumeRoles([contra], FakeDicomDatabase({"8.8.9": {"0008,0060": "MG", "0018,5101": "CC", "0020,0062": "L",
                                                            "0020,0020": "R\\P", "0020,0037": "1\\0\\0\\0\\1\\0"}}))
    assert contra.GetAttribute(sc.ORIENTATION_ATTRIBUTE) is None
    # a volume without the attribute (not from DICOM, or a CBIS-style "CC") is written as it is
    plain = sc.addVolumeFromVoxels(scene, stored, geometry, "MG_L_CC")
    np.testing.assert_array_equal(sc.imageFromVolumeNode(plain, "MG_L_CC").voxels, stored)
    plain.SetAttribute(sc.ORIENTATION_ATTRIBUTE, "CC")
    np.testing.assert_array_equal(sc.imageFromVolumeNode(plain, "MG_L_CC").voxels, stored)


class FakeDicomDatabaseWithFiles(FakeDicomDatabase):
    """... and ctkDICOMDatabase.fileForInstance(sopInstanceUID)."""

    def __init__(self, values, files):
        super().__init__(values)
        self.files = files

    def fileForInstance(self, uid):
        return self.files.get(uid, "")


def test_an_ultrasound_image_in_the_scene_is_cropped_as_the_command_line_crops_the_file(tmp_path):
    """Slicer's DICOM module loads an ultrasound file's whole frame (annotations, colour bars);
    `binds diagnose` reads its tissue region (SequenceOfUltrasoundRegions). The region, read from
    the file the DICOM database names, travels with the node, and the study folder gets the same
    pixels the command line reads, each at the node's own place in space."""
    slicer = pytest.importorskip("slicer")
    pydicom = pytest.importorskip("pydicom")
    from BINDSLib.io import dicom_us
    from BINDSLib.study import Geometry
    from BINDSLib.studyfolder import read_study_folder
    from BINDSSlicerLib import scene as sc
    from BINDSSlicerLib.roles import guessVolumeRoles

    path = Path(pydicom.__file__).parent / "data" / "test_files" / "examples_palette.dcm"
    ds = pydicom.dcmread(path)
    cli = dicom_us.read_us_image(path, ds)  # cropped to x 120-799, y 60-349
    whole = dicom_us.grayscale_frames(ds, path)  # the whole frame, as the DICOM module loads it
    assert whole.shape == (1, 350, 800)
    scene = slicer.vtkMRMLScene()
    geometry = Geometry((0.5, 0.5, 1.0), (10.0, 20.0, 0.0))
    node = sc.addVolumeFromVoxels(scene, whole, geometry, "Breast US")
    node.SetAttribute("DICOM.instanceUIDs", "9.9.9")
    db = FakeDicomDatabaseWithFiles({"9.9.9": {"0008,0060": "US", "0020,0062": "R"}}, {"9.9.9": str(path)})
    guessVolumeRoles([node], db)
    assert sc.volumeRole(node) == "US_R" and node.GetAttribute(sc.US_REGION_ATTRIBUTE) == "120 60 799 349"
    folder, _ = sc.writeStudyFolder([(node, "US_R")], tmp_path / "study", "s1")
    image = read_study_folder(folder).image("US_R")
    np.testing.assert_allclose(image.voxels, cli.voxels, atol=1e-3)  # the command line's pixels
    ras = sc.ijkToRASArray(node)
    for c, r in ((0, 0), (679, 289), (5, 7)):  # and each at its place in the node
        np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0]) @ image.geometry.index_to_lps((c, r, 0)),
                                   (ras @ [c + 120, r + 60, 0, 1.0])[:3], atol=1e-9)
    # a file without a region, or no file: no attribute, the whole frame
    other = sc.addVolumeFromVoxels(scene, whole, geometry, "US other")
    other.SetAttribute("DICOM.instanceUIDs", "9.9.8")
    guessVolumeRoles([other], FakeDicomDatabaseWithFiles({"9.9.8": {"0008,0060": "US"}}, {}))
    assert other.GetAttribute(sc.US_REGION_ATTRIBUTE) == ""  # (none: the file is not read again)
    assert sc.imageFromVolumeNode(other, "US").shape == whole.shape
    other.SetAttribute(sc.US_REGION_ATTRIBUTE, "120 60 900 349")  # not inside the image: no crop
    assert sc.imageFromVolumeNode(other, "US").shape == whole.shape


def test_mr_sequence_names_with_echo_are_mr_and_echography_is_ultrasound():
    names = ["T2 turbo spin echo", "T1 gradient echo pre", "DCE gradient echo phase 1", "Echo planar DWI b800"]
    assert guess(*[(n, None, V3D) for n in names]) == ["MR_T2", "MR_T1_PRE", "MR_DCE1", "MR_DWI_b800"]
    assert guess(("echo L 3h", None, V2D), ("Ecografia R", None, V2D)) == ["US_L_3h", "US_R"]


def test_derived_volumes_keep_the_role_their_name_gives():
    # Slicer's derived names (Resample, Crop Volume) and unique-name suffixes on role keys
    assert guess(("MR_DCE2_resampled", None, V3D), ("MR_DCE3-crop", None, V3D), ("US_R_10h_1", None, V2D),
                 ("MG_L_CC copy", None, V2D)) == ["MR_DCE2", "MR_DCE3", "US_R_10h", "MG_L_CC"]
    # a phase number in a name is that phase, whatever other volumes are guessed with it
    names = ["T1 pre", "DCE phase 1", "DCE phase 2", "DCE phase 3", "T2 FS", "DCE phase 1 cropped"]
    assert guess(*[(n, None, V3D) for n in names]) == \
        ["MR_T1_PRE", "MR_DCE1", "MR_DCE2", "MR_DCE3", "MR_T2", "MR_DCE1"]
    assert guess(("DCE phase 2 resampled", None, V3D), ("DCE phase 3", None, V3D)) == ["MR_DCE2", "MR_DCE3"]
    # a time after injection is no phase number: it orders the phases
    names = ["T1 pre", "T1 post 120s", "T1 post 60s", "T1 post 3 min"]
    assert guess(*[(n, None, V3D) for n in names]) == ["MR_T1_PRE", "MR_DCE2", "MR_DCE1", "MR_DCE3"]
    assert guess(("8: Ax T1 post 90", None, V3D), ("9: Ax T1 post 30", None, V3D)) == ["MR_DCE2", "MR_DCE1"]
    # a subtraction or a projection is no acquired phase: left to the user
    assert guess(("DCE phase 1", None, V3D), ("DCE phase 3 subtraction", None, V3D), ("MIP post 2", None, V3D)) == \
        ["MR_DCE1", None, None]
