"""The one metrics module against scikit-learn, the reference a user would check it with."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from lanic_nb.metrics import auroc, roc_points


@pytest.mark.parametrize("ties", [False, True])
def test_roc_points_match_sklearn_and_integrate_to_the_auroc(ties):
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.3
    s = y * 0.8 + rng.normal(size=300)
    if ties:
        s = np.round(s, 1)
    fpr, tpr = roc_points(y, s)
    ref_fpr, ref_tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(y, s), abs=1e-12)


def test_roc_points_need_both_classes():
    with pytest.raises(ValueError, match="both"):
        roc_points(np.ones(5, bool), np.arange(5.0))
