from medtransfer.shared.utils.sniff import is_dicom


def test_is_dicom_reads_the_marker_not_the_name(tmp_path):
    (tmp_path / "cine.avi").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00" * 8)
    (tmp_path / "x.dcm").write_bytes(b"\x00" * 200)
    (tmp_path / "short.dcm").write_bytes(b"DICM")
    assert is_dicom(tmp_path / "cine.avi")
    assert not is_dicom(tmp_path / "x.dcm") and not is_dicom(tmp_path / "short.dcm")
    assert not is_dicom(tmp_path / "missing.dcm")
