import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from fer_train.metrics import classification_metrics, metrics_table


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    classes = ["angry", "disgust", "fear", "happy"]
    y_true = rng.integers(0, 4, 500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, 4, 500))
    y_pred[y_pred == 1] = 2  # a class never predicted: precision must be 0, not NaN
    m = classification_metrics(y_true, y_pred, classes)
    assert m["accuracy"] == accuracy_score(y_true, y_pred)
    assert np.isclose(m["macro_f1"], f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=0)
    for i, c in enumerate(classes):
        assert np.isclose(m["per_class"][c]["precision"], p[i])
        assert np.isclose(m["per_class"][c]["recall"], r[i])
        assert np.isclose(m["per_class"][c]["f1"], f[i])
        assert m["per_class"][c]["support"] == s[i]


def test_per_class_rows_follow_class_order():
    classes = ["b_second", "a_first"]  # deliberately not sorted
    y_true = np.array([0, 0, 0, 1])
    y_pred = np.array([0, 0, 0, 0])
    m = classification_metrics(y_true, y_pred, classes)
    table = metrics_table(m).splitlines()
    assert table[2].startswith("| b_second") and "1.000 |" in table[2]  # recall of class 0
    assert table[3].startswith("| a_first") and "| 0.000 | 0.000 | 0.000 | 1 |" in table[3]


def test_macro_f1_counts_the_classes_a_split_has_or_a_model_predicted():
    """A fold without a class (a small user's set) is not marked down for it; a class predicted but absent is."""
    classes = ["a", "b", "c"]
    for y_pred in ([0, 0, 1, 1], [0, 0, 1, 2]):  # "c" absent; then predicted once although absent
        m = classification_metrics(np.array([0, 0, 1, 1]), np.array(y_pred), classes)
        assert np.isclose(m["macro_f1"], f1_score([0, 0, 1, 1], y_pred, average="macro", zero_division=0))
    assert classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), classes)["macro_f1"] == 1.0
