"""raxnet.report: the run report is valid HTML, links only existing files, orders the QC gallery worst first."""

import json
import shutil

import pandas as pd
import pytest
from html_checks import check_html

from raxnet.report import REPORT_NAME, build_report, main, qc_table, write_report

PNG = bytes.fromhex(  # a valid 1x1 PNG
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360f8cf"
    "c0f01f0005000201a5f6c2d70000000049454e44ae426082"
)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture()
def work(tmp_path):
    """A small work directory with every stage's outputs as the stages write them."""
    w = tmp_path / "my run"  # a space: links must be percent-encoded
    _write(w / "01_dataset" / "summary.json", json.dumps({
        "found": 5, "labelled": 5, "unlabelled": 0, "errors": 0, "sites": 2, "n_lesions_median": 2.0,
        "lesion_volume_mm3": {"q00": 100.0, "q50": 2000.0, "q100": 90000.0, "mean": 20000.0},
        "location_counts": {"cortical": 3, "subcortical": 2}, "hemisphere_counts": {"left": 4, "right": 1}}))
    (w / "01_dataset" / "lesion_volume_distribution.png").write_bytes(PNG)
    _write(w / "01_dataset" / "errors.csv", "subject,file,error\n")
    _write(w / "02_data_splitting" / "split.csv",
           "subject,site,lesion_voxels,volume_bin,set\n" + "".join(
               f"s{i},R1,{100 * i},\"(0, 5000]\",{'holdout' if i > 2 else 'train'}\n" for i in range(1, 6)))
    _write(w / "02_data_splitting" / "split_stats.csv",
           "row,name,statistic,p_value,train_count,holdout_count,train_fraction,holdout_fraction,holdout_share\n"
           "test,kolmogorov_smirnov,0.5,0.8,,,,,\ntest,mann_whitney_u,3,0.7,,,,,\n"
           "bin,\"(0, 5000]\",,,2,3,1,1,0.6\nbin,all,,,2,3,1,1,0.6\n")
    _write(w / "04_cross_validation" / "fold_stats.csv",
           "plane,fold,bin,count,subjects,lesion_slices,normal_slices,lesion_slice_share,max_bin_deviation,"
           "ks_p,mwu_p\naxial,all,all,,2,10,10,1.0,,,\naxial,1,all,,1,6,6,0.6,0.1,0.9,0.8\n"
           "axial,2,all,,1,4,4,0.4,0.1,0.9,0.8\n")
    _write(w / "06_model" / "models.csv", "model,plane,params,flops_per_slice,input_shape\n"
                                          "raxnet,axial,3219,17091750,100x120x1\n")
    run = w / "07_train" / "raxnet" / "axial" / "fold_1"
    _write(run / "history.csv", "epoch,loss,val_loss,dice,val_dice,lr,time\n1,1.2,1.1,0.1,0.05,0.001,3\n"
                                "2,1.0,0.9,0.2,0.10,0.001,3\n3,0.9,0.95,0.3,0.12,0.0005,3\n")
    _write(run / "run.json", json.dumps({"best_epoch": 2, "best_val_loss": 0.9, "train_time_s": 9.0,
                                         "stopped_early": False, "metrics": {"lesion_slice_dice": 0.3}}))
    run2 = w / "07_train" / "raxnet" / "coronal" / "fold_1"
    _write(run2 / "history.csv", "epoch,loss,val_loss,dice,val_dice,lr,time\n1,1.2,1.1,0.1,0.05,0.001,3\n")
    (run2 / "curves.png").write_bytes(PNG)
    fusion = w / "08_fusion"
    _write(fusion / "summary.csv", "set,method,n,n_failed,dice_mean,dice_sd,dice_median,hd95_mm_mean,hd95_mm_sd\n"
                                   "holdout,axial,3,1,0.4,0.1,0.4,10,2\nholdout,mean,3,1,0.5,0.2,0.5,8,1\n")
    _write(fusion / "subject_metrics.csv",
           "subject,set,method,dice,hd95_mm,lesion_f1,lesion_voxels,pred_voxels,volume_bin,error\n"
           "s3,holdout,axial,0.2,12,0.5,300,280,\"(0, 5000]\",\n"
           "s3,holdout,mean,0.7,5,1,300,310,\"(0, 5000]\",\n"
           "s4,holdout,mean,0.3,11,0.5,400,200,\"(0, 5000]\",\n"
           "s5,holdout,mean,,,,500,,\"(0, 5000]\",s5_T1w.nii.gz: NaN voxels\n"
           "s1,train,mean,0.1,20,0,100,50,\"(0, 5000]\",\n")
    _write(fusion / "fusion.json", json.dumps({"holdout_folds": {"axial": [1]}, "threshold": 0.5, "tta": False}))
    _write(fusion / "postprocessing.json", json.dumps({"chosen": {
        "fusion": "vote", "threshold": 0.4, "min_lesion_mm3": 40.0, "min_peak": 0.7, "metric": "dice", "score": 0.61,
        "n_subjects": 7}}))
    _write(fusion / "skipped.csv", "subject,set,reason\ns2,oof,fold_2 not trained (axial)\n")
    for s in ("s3", "s4", "s1"):
        (fusion / "qc").mkdir(exist_ok=True)
        (fusion / "qc" / f"{s}_qc.png").write_bytes(PNG)
    (fusion / "dice_boxplot.png").write_bytes(PNG)
    _write(fusion / "log.txt", "2026-01-01 00:00:00 INFO raxnet: === 08_fusion started\n")
    return w


def test_report_is_valid_html_and_links_exist(work):
    path = write_report(work)
    assert path == work / REPORT_NAME
    page = check_html(path)
    text = " ".join(page.text)
    for anchor in ("dataset", "split", "folds", "models", "training", "fusion", "qc", "logs"):
        assert anchor in page.ids
    # relative, percent-encoded links to the stages' files (nothing copied)
    assert "01_dataset/lesion_volume_distribution.png" in page.refs
    assert "07_train/raxnet/coronal/fold_1/curves.png" in page.refs
    assert "08_fusion/log.txt" in page.refs
    # the run without curves.png has its curves drawn into the page
    assert sum(r.startswith("data:image/png;base64,") for r in page.refs) == 1
    assert "s5_T1w.nii.gz: NaN voxels" in text  # the failed subject is shown with its error
    assert "qc-s1" not in page.ids  # the train (out-of-fold) row of subject_metrics is not in the hold-out gallery
    assert "Kolmogorov–Smirnov D = 0.500, p = 0.800" in text
    assert "out-of-fold predictions of 7 train subject(s)" in text and "fold_2 not trained (axial) (1)" in text
    assert "lesions ≥ 40 mm³ with a peak probability ≥ 0.70" in text
    shutil.move(str(work), str(work.parent / "moved"))  # the folder is self-contained: links survive a move
    check_html(work.parent / "moved" / REPORT_NAME)


def test_gallery_worst_first(work):
    table, method = qc_table(work)
    assert method == "mean"  # the default QC fusion when fusion.json names none
    assert table["subject"].tolist() == ["s5", "s4", "s3"]  # failed, then Dice 0.3, 0.7
    html = build_report(work)
    assert html.index('id="qc-s5"') < html.index('id="qc-s4"') < html.index('id="qc-s3"')
    assert '<span class="badge mid">0.300</span>' in html and '<span class="badge good">0.700</span>' in html


def test_empty_work_dir_says_what_has_not_run(tmp_path):
    (tmp_path / "w").mkdir()
    page = check_html(write_report(tmp_path / "w"))
    text = " ".join(page.text)
    assert "Stage 01 has not run" in text and "Stage 08 has not run" in text
    assert "img" not in page.tags


def test_cli(work, tmp_path, capsys):
    assert main(["--work-dir", str(work)]) == 0
    assert capsys.readouterr().out.strip().endswith(REPORT_NAME)
    from raxnet.errors import StageInputError

    with pytest.raises(StageInputError, match="not found"):
        main(["--work-dir", str(tmp_path / "nowhere")])
    assert not (tmp_path / "nowhere").exists()


def test_predict_batch_report(tmp_path):
    from raxnet.report import build_predict_report, check_first, write_predict_report

    out = tmp_path / "out"
    out.mkdir()
    _write(out / "summary.csv", "input,name,status,error,n_lesions,lesion_volume_mm3,lesion_voxels,seconds\n"
                                "/x/a_T1w.nii.gz,a,ok,,2,1500.0,1500,1.5\n"
                                "/x/b_T1w.nii.gz,b,failed,b_T1w.nii.gz: 4D image,,,,\n"
                                "/x/c_T1w.nii.gz,c,ok,,0,0.0,0,1.2\n")
    for name in ("a", "c"):
        (out / f"{name}_qc.png").write_bytes(PNG)
    (out / "a_uncertainty.png").write_bytes(PNG)
    _write(out / "a_lesions.csv", "label,voxels,volume_mm3,hemisphere,location,mean_probability,plane_agreement,"
                                  "planes_detecting\n1,1400,1400,left,cortical,0.9,0.95,3\n2,100,100,right,"
                                  "subcortical,0.55,0.10,1\n")
    page = check_html(write_predict_report(out))
    text = " ".join(page.text)
    assert {"scan-a", "scan-b", "scan-c"} <= set(page.ids)
    assert "b_T1w.nii.gz: 4D image" in text and "a_uncertainty.png" in page.refs
    html = build_predict_report(out)
    assert html.index('id="scan-b"') < html.index('id="scan-a"')  # failed scans first in the gallery
    assert html.index(">subcortical<") < html.index(">cortical<")  # the doubtful lesion first
    lesions = pd.read_csv(out / "a_lesions.csv")
    assert check_first(lesions)["label"].tolist() == [2, 1]
    assert "No summary.csv" in build_predict_report(tmp_path / "empty")
