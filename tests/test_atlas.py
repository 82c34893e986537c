"""Discovery of the ATLAS BIDS tree on fake trees written to tmp_path."""

from pathlib import Path

import pytest

from raxnet.atlas import MASK_SUFFIX, T1_SUFFIX, discover, labelled_subjects
from raxnet.errors import InputError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _subject(root: Path, part: str, site: str, sub: str, *, mask: bool = True, ext: str = ".nii.gz") -> None:
    anat = root / part / site / sub / "ses-1" / "anat"
    _touch(anat / f"{sub}_ses-1{T1_SUFFIX}{ext}")
    if mask:
        _touch(anat / f"{sub}_ses-1{MASK_SUFFIX}{ext}")


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "ATLAS_2"
    _subject(root, "Training", "R002", "sub-r002s001")
    _subject(root, "Training", "R001", "sub-r001s002", ext=".nii")  # uncompressed
    _subject(root, "Training", "R001", "sub-r001s001")
    _subject(root, "Training", "R001", "sub-r001s003", mask=False)  # unlabelled
    _subject(root, "Testing", "R001", "sub-r001s900", mask=False)
    # noise the discovery must ignore
    _touch(root / "20220425_ATLAS_2.0_MetaData_Release_1.1.csv")
    _touch(root / "supplementary.xlsx")
    _touch(root / "Training" / "R001" / "sub-r001s001" / "ses-1" / "anat" / "notes.json")
    _touch(root / "Training" / "R001" / "sub-r001s004" / "ses-1" / "anat" / "something_else.nii.gz")
    _touch(root / "Training" / "derivatives" / "sub-x" / "ses-1" / "anat" / f"sub-x_ses-1{T1_SUFFIX}.nii.gz")
    return root


def test_discover_lists_every_subject_sorted(tree: Path) -> None:
    df = discover(tree)
    assert list(df.columns) == ["site", "subject", "session", "t1_path", "mask_path", "labelled", "part"]
    assert df["subject"].tolist() == ["sub-r001s001", "sub-r001s002", "sub-r001s003", "sub-r001s900", "sub-r002s001"]
    by = df.set_index("subject")
    assert by.loc["sub-r001s002", "t1_path"].endswith("_T1w.nii")
    assert by.loc["sub-r001s002", "mask_path"].endswith("_mask.nii")
    assert by.loc["sub-r002s001", "site"] == "R002"
    assert by.loc["sub-r001s001", "session"] == "ses-1"
    assert not by.loc["sub-r001s003", "labelled"] and by.loc["sub-r001s003", "mask_path"] is None
    assert by.loc["sub-r001s900", "part"] == "Testing"
    assert by["labelled"].sum() == 3


def test_labelled_subjects(tree: Path) -> None:
    df = labelled_subjects(tree)
    assert df["subject"].tolist() == ["sub-r001s001", "sub-r001s002", "sub-r002s001"]
    assert df["mask_path"].notna().all()


def test_gz_preferred_when_both_exist(tmp_path: Path) -> None:
    _subject(tmp_path, "Training", "R001", "sub-r001s001")
    _subject(tmp_path, "Training", "R001", "sub-r001s001", ext=".nii")
    df = discover(tmp_path)
    assert len(df) == 1 and df.loc[0, "t1_path"].endswith(".nii.gz")


@pytest.mark.parametrize("where", ["missing", "training_itself", "random", "empty"])
def test_wrong_root_is_one_clear_error(tree: Path, tmp_path: Path, where: str) -> None:
    root = {
        "missing": tmp_path / "nope",
        "training_itself": tree / "Training",
        "random": tree / "Training" / "R001" / "sub-r001s001",
        "empty": tmp_path / "empty",
    }[where]
    if where == "empty":
        root.mkdir()
    with pytest.raises(InputError, match=str(root.name)) as info:
        discover(root)
    assert "Training" in str(info.value) and "\n" not in str(info.value)


def test_only_unlabelled_subjects(tmp_path: Path) -> None:
    _subject(tmp_path, "Testing", "R001", "sub-r001s001", mask=False)
    assert len(discover(tmp_path)) == 1
    with pytest.raises(InputError, match="no labelled subject"):
        labelled_subjects(tmp_path)
