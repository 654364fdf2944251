import math

import numpy as np
import pytest
from sklearn import metrics as skm

from bloodlib.errors import UnknownClassError
from bloodlib.metrics.classification import classification_report

CLASSES = ["basophil", "eosinophil", "lymphocyte"]
Y_TRUE = [0, 0, 1, 1, 1, 2]
Y_PRED = [0, 1, 1, 1, 2, 2]
PROB = np.array([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.1, 0.7, 0.2],
                 [0.2, 0.6, 0.2], [0.1, 0.3, 0.6], [0.1, 0.2, 0.7]])


def test_against_sklearn_and_by_hand():
    r = classification_report(Y_TRUE, Y_PRED, classes=CLASSES)
    assert r.accuracy == pytest.approx(4 / 6) and r.error_rate == pytest.approx(2 / 6)
    p, rec, f, s = skm.precision_recall_fscore_support(Y_TRUE, Y_PRED)
    assert list(r.precision.values()) == pytest.approx(p)
    assert list(r.recall.values()) == pytest.approx(rec)
    assert list(r.f1.values()) == pytest.approx(f)
    assert list(r.support.values()) == list(s)
    # specificity TN / (TN + FP) by hand: basophil 4/4, eosinophil 2/3, lymphocyte 4/5
    assert list(r.specificity.values()) == pytest.approx([1, 2 / 3, 4 / 5])
    assert r.macro["f1"] == pytest.approx(skm.f1_score(Y_TRUE, Y_PRED, average="macro"))
    assert r.weighted["recall"] == pytest.approx(skm.recall_score(Y_TRUE, Y_PRED, average="weighted"))
    assert r.macro["specificity"] == pytest.approx((1 + 2 / 3 + 4 / 5) / 3)
    np.testing.assert_array_equal(r.confusion, [[1, 1, 0], [0, 2, 1], [0, 0, 1]])
    assert math.isnan(r.roc_auc_macro) and r.roc_auc == {}


def test_names_probabilities_and_outputs():
    names = [CLASSES[i] for i in Y_TRUE]
    r = classification_report(names, y_prob=PROB, classes=CLASSES)  # y_pred = argmax
    assert r.accuracy == pytest.approx(4 / 6)
    for i, c in enumerate(CLASSES):
        assert r.roc_auc[c] == pytest.approx(skm.roc_auc_score(np.array(Y_TRUE) == i, PROB[:, i]))
    assert r.roc_auc_macro == pytest.approx(
        skm.roc_auc_score(Y_TRUE, PROB, multi_class="ovr", average="macro"))
    fpr, tpr, _ = r.roc_curves["eosinophil"]
    assert fpr[0] == 0 and tpr[-1] == 1
    d = r.as_dict()
    assert d["accuracy"] == pytest.approx(4 / 6) and "roc_auc/lymphocyte" in d
    assert all(isinstance(v, float) for v in d.values())
    frame = r.per_class_frame()
    assert list(frame.index) == CLASSES and frame.loc["eosinophil", "support"] == 3
    assert frame.loc["basophil", "roc_auc"] == pytest.approx(r.roc_auc["basophil"])


def test_missing_class_auc_is_nan():
    y_true = [0, 0, 1, 1]  # no lymphocyte
    r = classification_report(y_true, y_prob=PROB[:4], classes=CLASSES)
    assert math.isnan(r.roc_auc["lymphocyte"])
    assert r.roc_auc_macro == pytest.approx(np.mean([r.roc_auc["basophil"], r.roc_auc["eosinophil"]]))
    assert r.support["lymphocyte"] == 0 and "lymphocyte" not in r.roc_curves


def test_bad_inputs():
    with pytest.raises(UnknownClassError, match="monocyte"):
        classification_report(["monocyte"], ["basophil"], classes=CLASSES)
    with pytest.raises(UnknownClassError):
        classification_report([5], [0], classes=CLASSES)
    with pytest.raises(ValueError, match="shape"):
        classification_report(Y_TRUE, y_prob=PROB[:, :2], classes=CLASSES)
    with pytest.raises(ValueError):
        classification_report(Y_TRUE, classes=CLASSES)
