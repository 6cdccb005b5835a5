"""One-dimensional two-component Gaussian mixtures, as LfOSA and EAOA fit them to a score: the
posterior of each candidate under the lower- and the higher-mean component."""
from __future__ import annotations

import numpy as np

# scikit-learn's GaussianMixture with the settings of LfOSA's and EAOA's published code (the papers
# leave them open): 10 EM iterations at most, tolerance 1e-2, 5e-4 added to the variances,
# k-means initialization; seeded here (the published code leaves it unseeded).
GMM = dict(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4)


def two_component_posteriors(values, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(posterior of the lower-mean component, of the higher-mean one), each (n,), of the 1-D
    `values` under a 2-component Gaussian mixture fitted to them with `seed`. Fewer than 2 distinct
    values: zeros for both (no mixture to fit, no component higher than the other)."""
    x = np.asarray(values, np.float64).reshape(-1, 1)
    if len(x) < 2 or x.min() == x.max():
        return np.zeros(len(x)), np.zeros(len(x))
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(random_state=int(seed) % 2**32, **GMM).fit(x)
    posterior = gmm.predict_proba(x)
    order = np.argsort(gmm.means_.ravel(), kind="stable")
    return posterior[:, order[0]], posterior[:, order[1]]
