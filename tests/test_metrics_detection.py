import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from bloodlib.errors import AnnotationError
from bloodlib.metrics.detection import (
    coco_evaluate,
    detection_confusion_matrix,
    detection_roc,
    greedy_matches,
    precision_recall_f1,
    torchvision_to_coco_results,
)

H, W = 64, 80
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def make_gt(boxes_per_image, size=(H, W)):
    """COCO dict with extra keys (info, path); boxes_per_image: list of [(cat, [x,y,w,h])]."""
    gt = {"info": {"dataset": "toy", "split": "test"}, "images": [], "annotations": [],
          "categories": [{"id": 1, "name": "rbc"}, {"id": 2, "name": "wbc"},
                         {"id": 3, "name": "platelet"}]}
    for i, boxes in enumerate(boxes_per_image, start=1):
        gt["images"].append({"id": i, "file_name": f"{i}.png", "path": f"/x/{i}.png",
                             "height": size[0], "width": size[1]})
        for cat, box in boxes:
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i,
                                      "category_id": cat, "bbox": list(box)})
    return gt


def perfect(gt, score=0.9):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": score} for a in gt["annotations"]]


TWO = [[(1, [2, 2, 20, 20]), (1, [30, 5, 20, 20]), (2, [5, 30, 30, 25])],
       [(1, [10, 10, 15, 15])]]


def test_perfect_predictions_no_output(capsys):
    gt = make_gt(TWO)
    rep = coco_evaluate(gt, perfect(gt))
    assert capsys.readouterr().out == ""
    assert rep.AP == pytest.approx(1) and rep.AP50 == pytest.approx(1) and rep.AR == pytest.approx(1)
    assert rep.per_class_AP["rbc"] == pytest.approx(1) and math.isnan(rep.per_class_AP["platelet"])
    assert "Average Precision" in rep.summary_text
    d = rep.as_dict()
    assert d["AP50/wbc"] == pytest.approx(1) and all(isinstance(v, float) for v in d.values())
    rec, prec = rep.pr_curves["rbc"]
    assert rec.shape == prec.shape == (101,) and np.allclose(prec, 1)
    assert np.isnan(rep.pr_curves["platelet"][1]).all()
    assert gt == make_gt(TWO)  # inputs untouched


def test_shifted_box_iou_about_0_8():
    # 90-wide box shifted by 9 px: IoU = 81/99 = 0.818 -> matches at IoU 0.50..0.80
    gt = make_gt([[(1, [0, 0, 90, 40])]], size=(50, 120))
    pred = [{"image_id": 1, "category_id": 1, "bbox": [9, 0, 90, 40], "score": 0.9}]
    rep = coco_evaluate(gt, pred)
    assert (rep.AP50, rep.AP70, rep.AP75, rep.AP90) == pytest.approx((1, 1, 1, 0))
    assert rep.AP == pytest.approx(0.7)
    # agrees with pycocotools' own summarize()
    assert rep.stats[0] == pytest.approx(rep.AP)
    assert rep.stats[1] == pytest.approx(rep.AP50)
    assert rep.stats[2] == pytest.approx(rep.AP75)
    assert rep.stats[8] == pytest.approx(rep.AR)


def test_empty_predictions_give_zero():
    rep = coco_evaluate(make_gt(TWO), [])
    assert rep.AP == 0 and rep.AP50 == 0 and rep.AR == 0
    assert rep.per_class_AP["wbc"] == 0 and math.isnan(rep.per_class_AP["platelet"])


def test_per_class_ap():
    gt = make_gt(TWO)
    preds = [p for p in perfect(gt) if p["category_id"] == 1]
    rep = coco_evaluate(gt, preds)
    assert rep.per_class_AP == pytest.approx({"rbc": 1.0, "wbc": 0.0, "platelet": math.nan},
                                             nan_ok=True)
    assert rep.AP == pytest.approx(0.5) and rep.stats[0] == pytest.approx(0.5)


def test_max_dets_configurable():
    boxes = [(1, [x * 8, y * 8, 6, 6]) for x in range(15) for y in range(10)]  # 150 cells
    gt = make_gt([boxes], size=(100, 130))
    assert coco_evaluate(gt, perfect(gt)).AR == pytest.approx(100 / 150)
    rep = coco_evaluate(gt, perfect(gt), max_dets=200)
    assert rep.AP == pytest.approx(1) and rep.stats[0] == pytest.approx(1)
    assert "maxDets=200" in rep.summary_text


def test_unknown_ids_raise():
    gt = make_gt(TWO)
    with pytest.raises(AnnotationError, match="image id 99"):
        coco_evaluate(gt, [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}])
    with pytest.raises(AnnotationError, match="category id 7"):
        coco_evaluate(gt, [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1], "score": 1}])
    with pytest.raises(ValueError):
        coco_evaluate(gt, [], iou_type="keypoints")


def three_box_case():
    gt = make_gt([[(1, [0, 0, 20, 20]), (1, [30, 0, 20, 20]), (2, [0, 30, 20, 20])]])
    preds = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.9},   # TP on A
        {"image_id": 1, "category_id": 1, "bbox": [1, 0, 20, 20], "score": 0.8},   # duplicate: FP
        {"image_id": 1, "category_id": 2, "bbox": [30, 0, 20, 20], "score": 0.7},  # wrong class
        {"image_id": 1, "category_id": 2, "bbox": [0, 30, 20, 20], "score": 0.3},  # below thr
    ]
    return gt, preds


def test_precision_recall_f1_by_hand():
    gt, preds = three_box_case()
    r = precision_recall_f1(gt, preds)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 2)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(1 / 3)
    rbc, wbc = r["per_class"]["rbc"], r["per_class"]["wbc"]
    assert (rbc["tp"], rbc["fp"], rbc["fn"], rbc["support"]) == (1, 1, 1, 2)
    assert rbc["precision"] == rbc["recall"] == rbc["f1"] == pytest.approx(0.5)
    assert (wbc["tp"], wbc["fp"], wbc["fn"]) == (0, 1, 1) and wbc["f1"] == 0
    assert r["macro_precision"] == pytest.approx(0.25)  # over rbc, wbc (platelet has no gt)
    # lower threshold: the wbc box at 0.3 becomes a TP
    assert precision_recall_f1(gt, preds, score_threshold=0.2)["per_class"]["wbc"]["tp"] == 1


def test_greedy_matches_take_the_best_score_first_and_match_each_box_once():
    gt, preds = three_box_case()
    [(gts, kept, hit, used)] = list(greedy_matches(gt, preds, score_threshold=0.5))
    assert [p["score"] for p in kept] == [0.9, 0.8, 0.7]   # 0.3 is below the threshold
    assert hit.tolist() == [True, False, False]           # duplicate and wrong class miss
    assert used.tolist() == [True, False, False]


def test_detection_roc_uses_every_score_and_the_same_matching():
    gt, preds = three_box_case()
    curves = detection_roc(gt, preds)
    # rbc: a TP at 0.9 and a duplicate FP at 0.8 -> perfectly ranked; wbc: a FP at 0.7 and,
    # with no score threshold, a TP at 0.3 -> ranked the wrong way round
    assert curves["rbc"][2] == pytest.approx(1.0) and curves["wbc"][2] == pytest.approx(0.0)
    assert "platelet" not in curves


def test_detection_confusion_matrix_by_hand():
    gt, preds = three_box_case()
    m, labels = detection_confusion_matrix(gt, preds)
    assert labels == ["rbc", "wbc", "platelet", "background"]
    expected = np.zeros((4, 4), int)
    expected[0, 0] = 1  # rbc predicted on rbc
    expected[1, 0] = 1  # wbc predicted on an rbc (class-agnostic match)
    expected[0, 3] = 1  # duplicate rbc prediction: background truth
    expected[3, 1] = 1  # missed wbc (its prediction is below threshold)
    np.testing.assert_array_equal(m, expected)


def _disk(cy, cx, r, size=(H, W)):
    yy, xx = np.mgrid[: size[0], : size[1]]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _rle(m):
    r = mask_utils.encode(np.asfortranarray(m))
    return {"size": r["size"], "counts": r["counts"].decode()}


def test_segm_with_rle_and_polygon_gt():
    gt = make_gt([[(1, [0, 0, 1, 1]), (2, [0, 0, 1, 1])]])
    m1 = _disk(20, 20, 10)
    poly = [[40.0, 30.0, 70.0, 30.0, 70.0, 60.0, 40.0, 60.0]]
    gt["annotations"][0].update(segmentation=_rle(m1), bbox=mask_utils.toBbox(_rle(m1)).tolist())
    gt["annotations"][1].update(segmentation=poly, bbox=[40, 30, 30, 30])
    m2 = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, H, W)))
    preds = [{"image_id": 1, "category_id": c, "segmentation": _rle(m), "score": 0.9}
             for c, m in ((1, m1), (2, m2))]
    assert coco_evaluate(gt, preds, iou_type="segm").AP == pytest.approx(1)
    # a predicted mask covering half the disk fails at IoU 0.5+
    half = m1.copy()
    half[:22] = 0  # keeps under half of the disk
    preds[0]["segmentation"] = _rle(half)
    assert coco_evaluate(gt, preds, iou_type="segm").per_class_AP50["rbc"] == 0
    with pytest.raises(AnnotationError, match="segmentation"):
        coco_evaluate(make_gt(TWO), perfect(make_gt(TWO)), iou_type="segm")


def test_torchvision_round_trip():
    masks = [_disk(20, 20, 10), _disk(40, 55, 12)]
    gt = make_gt([[(1, [0, 0, 1, 1]), (2, [0, 0, 1, 1])], []])
    for a, m in zip(gt["annotations"], masks):
        a["segmentation"] = _rle(m)
        a["bbox"] = mask_utils.toBbox(a["segmentation"]).tolist()
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in
                          (a["bbox"] for a in gt["annotations"])], dtype=torch.float32)
    outputs = [{"boxes": boxes, "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.8]),
                "masks": torch.from_numpy(np.stack(masks)[:, None].astype(np.float32) * 0.9)},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
                "scores": torch.zeros(0), "masks": torch.zeros((0, 1, H, W))}]
    res = torchvision_to_coco_results(outputs, [1, 2], with_masks=True)
    assert len(res) == 2 and res[0]["bbox"] == pytest.approx(gt["annotations"][0]["bbox"])
    assert isinstance(res[0]["segmentation"]["counts"], str)
    np.testing.assert_array_equal(mask_utils.decode(res[1]["segmentation"]), masks[1])
    assert coco_evaluate(gt, res, iou_type="bbox").AP == pytest.approx(1)
    assert coco_evaluate(gt, res, iou_type="segm").AP == pytest.approx(1)
    assert "segmentation" not in torchvision_to_coco_results(outputs, [1, 2])[0]
