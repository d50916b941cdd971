"""Image I/O: a real DICOM series, independent readers (SimpleITK, MONAI) and round trips of every format."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from mstnet.data.dicom import write_dicom_series
from mstnet.data.io import read_mask, read_volume, read_volume_info, write_nifti, write_npy

REAL_SERIES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dicom" / "siemens-ct-abdomen-20"
needs_real_series = pytest.mark.skipif(not REAL_SERIES.is_dir(), reason=f"real DICOM fixture {REAL_SERIES} is absent")


@needs_real_series
def test_real_siemens_series_loads_with_its_documented_shape_spacing_and_air_value():
    volume = read_volume(REAL_SERIES)
    assert volume.shape == (20, 512, 512)
    assert volume.spacing == pytest.approx((2.0, 0.9765625, 0.9765625), abs=1e-3)
    # -1024 (stored 0) marks pixels outside the reconstruction circle; air inside it reads about -1000
    values = volume.array[(volume.array > -1020) & (volume.array < -900)]
    histogram, edges = np.histogram(values, bins=60, range=(-1020, -900))
    air_peak = edges[np.argmax(histogram)] + 1.0
    assert abs(air_peak - (-1000)) < 15
    assert read_volume_info(REAL_SERIES).shape == volume.shape


@needs_real_series
def test_real_series_matches_simpleitk_reader_up_to_the_in_plane_flip_to_ras():
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(REAL_SERIES)))
    reference = reader.Execute()
    expected = sitk.GetArrayFromImage(reference).astype(np.float32)  # (z, y, x), LPS pixel order
    volume = read_volume(REAL_SERIES)
    np.testing.assert_array_equal(volume.array, expected[:, ::-1, ::-1])
    assert volume.spacing == pytest.approx(reference.GetSpacing()[::-1], abs=1e-4)


def test_nifti_round_trip_keeps_values_spacing_and_origin(tmp_path):
    array = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    write_nifti(tmp_path / "a.nii.gz", array, (2.5, 0.6, 0.7), origin=(10.0, -20.0, 30.0))
    volume = read_volume(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(volume.array, array)
    assert volume.spacing == pytest.approx((2.5, 0.6, 0.7), abs=1e-6)
    assert volume.origin == pytest.approx((10.0, -20.0, 30.0))
    assert read_volume_info(tmp_path / "a.nii.gz").shape == (5, 6, 7)


def test_nifti_in_lps_orientation_is_reoriented_like_monai_orientation_ras(tmp_path):
    from monai.transforms import LoadImage, Orientation

    array_xyz = np.random.default_rng(1).normal(size=(7, 6, 5)).astype(np.float32)
    affine = np.array([[-0.7, 0, 0, 0], [0, 0, 2.5, 0], [0, -0.6, 0, 0], [0, 0, 0, 1.0]])  # voxel x -> L, y -> I, z -> A
    nib.save(nib.Nifti1Image(array_xyz, affine), str(tmp_path / "lps.nii"))
    loaded = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(str(tmp_path / "lps.nii"))
    expected = Orientation(axcodes="RAS")(loaded)[0].numpy().transpose(2, 1, 0)
    volume = read_volume(tmp_path / "lps.nii")
    np.testing.assert_array_equal(volume.array, expected)
    assert volume.spacing == pytest.approx((0.6, 2.5, 0.7), abs=1e-6)  # (S, A, R) after reorientation
    assert read_volume_info(tmp_path / "lps.nii").shape == volume.shape


def test_dicom_series_round_trip_within_integer_rounding(tmp_path):
    array = np.random.default_rng(2).uniform(-1000, 400, size=(4, 8, 9)).astype(np.float32)
    write_dicom_series(tmp_path / "series", array, (1.25, 0.7, 0.8), origin=(5.0, 6.0, -100.0))
    volume = read_volume(tmp_path / "series")
    assert np.abs(volume.array - array).max() <= 0.5
    assert volume.spacing == pytest.approx((1.25, 0.7, 0.8))
    assert volume.origin == pytest.approx((5.0, 6.0, -100.0))
    assert read_volume_info(tmp_path / "series").shape == (4, 8, 9)


def test_written_dicom_files_are_valid_ct_image_storage_of_one_series(tmp_path):
    write_dicom_series(tmp_path / "series", np.zeros((3, 4, 4)), (2.0, 0.5, 0.5), patient_id="X1")
    files = sorted((tmp_path / "series").iterdir())
    datasets = [pydicom.dcmread(f) for f in files]
    assert {ds.SOPClassUID for ds in datasets} == {pydicom.uid.CTImageStorage}
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert sorted(float(ds.ImagePositionPatient[2]) for ds in datasets) == [0.0, 2.0, 4.0]
    for ds in datasets:
        assert [float(v) for v in ds.PixelSpacing] == [0.5, 0.5]
        assert float(ds.SliceThickness) == 2.0
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == -1024.0
        assert ds.PatientID == "X1"
        np.testing.assert_array_equal(ds.pixel_array * ds.RescaleSlope + ds.RescaleIntercept, 0)


def test_npy_spacing_comes_from_argument_then_sidecar_then_one_mm(tmp_path):
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_npy(tmp_path / "plain.npy", array)
    write_npy(tmp_path / "with_sidecar.npy", array, spacing=(3.0, 0.5, 0.25))
    assert read_volume(tmp_path / "plain.npy").spacing == (1.0, 1.0, 1.0)
    assert read_volume(tmp_path / "with_sidecar.npy").spacing == (3.0, 0.5, 0.25)
    assert read_volume(tmp_path / "with_sidecar.npy", spacing=(9.0, 9.0, 9.0)).spacing == (9.0, 9.0, 9.0)
    np.testing.assert_array_equal(read_volume(tmp_path / "plain.npy").array, array)


def test_mask_stored_slice_axis_last_is_transposed_on_read_and_file_kept(tmp_path):
    mask = np.zeros((3, 5, 6), np.uint8)
    mask[1, 2, 4] = 1
    write_npy(tmp_path / "m.npy", np.moveaxis(mask, 0, -1))
    loaded = read_mask(tmp_path / "m.npy", image_shape=(3, 5, 6))
    np.testing.assert_array_equal(loaded.array, mask)
    assert np.load(tmp_path / "m.npy").shape == (5, 6, 3)
    assert read_mask(tmp_path / "m.npy").shape == (5, 6, 3)


def test_tiny_cohort_round_trips_through_nifti_dicom_and_npy(tiny_cohort, tmp_path):
    for patient in tiny_cohort:
        for scan in patient.scans:
            original = read_volume(scan.image)
            write_dicom_series(tmp_path / "dcm" / patient.patient_id / scan.timepoint, original.array, original.spacing)
            write_npy(tmp_path / "npy" / f"{patient.patient_id}_{scan.timepoint}.npy", original.array, original.spacing)
            from_dicom = read_volume(tmp_path / "dcm" / patient.patient_id / scan.timepoint)
            from_npy = read_volume(tmp_path / "npy" / f"{patient.patient_id}_{scan.timepoint}.npy")
            assert np.abs(from_dicom.array - original.array).max() <= 0.5
            np.testing.assert_array_equal(from_npy.array, original.array)
            for loaded in (from_dicom, from_npy):
                assert loaded.spacing == pytest.approx(original.spacing, abs=1e-5)
