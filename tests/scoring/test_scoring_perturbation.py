import numpy as np
import pytest
from scipy import sparse, stats

from scstrata_scoring.baselines import log_normalise
from scstrata_scoring.perturbation import (
    cosine_similarity,
    embedding_similarity,
    group_means,
    null_z,
    permutation_null,
    permutation_p_value,
    perturbation_reference,
    rsa_bootstrap,
    rsa_score,
    shift_profiles,
    spearman_similarity,
    upper_triangle,
    welch_t,
)
from scstrata_scoring.simulate_perturbation import true_effect_embedding, true_similarity

CONTROL = "non-targeting"


def test_welch_t_agrees_with_scipy_on_dense_and_sparse_input():
    rng = np.random.default_rng(0)
    a = rng.poisson(2.0, (12, 6)).astype(float)
    b = rng.poisson(3.0, (20, 6)).astype(float)
    expected = stats.ttest_ind(a, b, equal_var=False).statistic
    np.testing.assert_allclose(welch_t(a, b), expected)
    np.testing.assert_allclose(welch_t(sparse.csr_matrix(a), sparse.csr_matrix(b)), expected)
    flat = np.ones((5, 1))
    assert welch_t(flat, flat)[0] == 0.0  # no variance, no difference


def test_shift_profiles_on_a_hand_made_case():
    # Genes g0..g2. Control ~ 0. Perturbation A shifts g0 strongly, B shifts g2, C too few cells.
    ctrl = np.array([[0.0, 1.0, 0.0], [0.1, 0.9, 0.1], [0.0, 1.1, 0.0], [0.1, 1.0, 0.1]])
    pa = np.array([[2.0, 1.0, 0.0], [2.2, 1.1, 0.1], [1.9, 0.9, 0.0]])
    pb = np.array([[0.0, 1.0, 3.0], [0.1, 1.0, 3.1], [0.0, 1.1, 2.9]])
    pc = np.array([[5.0, 5.0, 5.0]])
    x = np.vstack([ctrl, pa, pb, pc])
    labels = [CONTROL] * 4 + ["A"] * 3 + ["B"] * 3 + ["C"]
    names, profiles, union = shift_profiles(x, labels, CONTROL, min_cells=2, n_top_genes=1)
    assert names == ["A", "B"]
    np.testing.assert_array_equal(union, [0, 2])  # top gene of A is g0, of B is g2
    shift_a = pa.mean(0) - ctrl.mean(0)
    shift_b = pb.mean(0) - ctrl.mean(0)
    np.testing.assert_allclose(profiles, [[shift_a[0], 0.0], [0.0, shift_b[2]]])
    # Spearman similarity of the zero-filled profiles, computed directly.
    rho = stats.spearmanr(profiles[0], profiles[1]).statistic
    np.testing.assert_allclose(spearman_similarity(profiles)[0, 1], rho)


def test_cosine_similarity_and_group_means():
    v = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    sim = cosine_similarity(v)
    assert sim[0, 1] == pytest.approx(1 / np.sqrt(2)) and sim[0, 0] == pytest.approx(1.0)
    assert sim[2, 0] == 0.0 and sim[2, 2] == 0.0
    emb = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    np.testing.assert_allclose(group_means(emb, ["x", "x", "y"], ["y", "x"]), [[10, 0], [2, 3]])


def test_group_means_and_null_accept_sparse_embeddings():
    rng = np.random.default_rng(5)
    dense = rng.poisson(0.5, (24, 7)).astype(float)
    labels = np.repeat(["A", "B", "C", CONTROL], 6)
    groups = ["C", "A", "B"]
    np.testing.assert_allclose(
        group_means(sparse.csr_matrix(dense), labels, groups), group_means(dense, labels, groups)
    )
    ref = np.array([[1.0, 0.2, 0.5], [0.2, 1.0, 0.1], [0.5, 0.1, 1.0]])
    perms = np.array([rng.permutation(18) for _ in range(5)])
    np.testing.assert_allclose(
        permutation_null(sparse.csr_matrix(dense), labels, groups, ref, perms, CONTROL, "control"),
        permutation_null(dense, labels, groups, ref, perms, CONTROL, "control"),
    )
    with pytest.raises(ValueError, match="no cells"):
        group_means(dense, labels, ["A", "Z"])


def test_embedding_similarity_centres_on_control_when_asked():
    emb = np.array([[5.0, 5.0], [6.0, 5.0], [5.0, 6.0], [5.0, 5.0]])
    labels = np.array(["A", "B", CONTROL, CONTROL])
    raw = embedding_similarity(emb, labels, ["A", "B"])
    assert raw[0, 1] == pytest.approx(cosine_similarity(emb[:2])[0, 1])
    centred = embedding_similarity(emb, labels, ["A", "B"], CONTROL, centre="control")
    shifts = emb[:2] - emb[2:].mean(0)
    assert centred[0, 1] == pytest.approx(cosine_similarity(shifts)[0, 1])


def test_rsa_score_is_spearman_of_the_upper_triangles():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    a, b = a + a.T, b + b.T
    iu = np.triu_indices(5, k=1)
    assert rsa_score(a, b) == pytest.approx(stats.spearmanr(a[iu], b[iu]).statistic)
    np.testing.assert_array_equal(upper_triangle(a), a[iu])
    assert np.isnan(rsa_score(a[:2, :2], b[:2, :2]))  # one pair is no ranking


def test_permutation_p_value_and_z_by_hand():
    null = np.array([0.1, 0.2, 0.3, 0.4])
    assert permutation_p_value(0.35, null) == pytest.approx((1 + 1) / 5)
    assert permutation_p_value(1.0, null) == pytest.approx(1 / 5)
    assert null_z(0.25 + 2 * null.std(ddof=1), null) == pytest.approx(2.0)


def test_permutation_null_with_identity_permutation_reproduces_the_score():
    rng = np.random.default_rng(0)
    labels = np.repeat(["A", "B", "C", "D", CONTROL], 6)
    emb = rng.normal(size=(30, 4)) + np.repeat(rng.normal(0, 3, (5, 4)), 6, axis=0)
    ref = rng.normal(size=(4, 4))
    ref = ref + ref.T
    perts = ["A", "B", "C", "D"]
    score = rsa_score(embedding_similarity(emb, labels, perts), ref)
    null = permutation_null(emb, labels, perts, ref, np.arange(24)[None, :])
    assert null[0] == pytest.approx(score)


def test_rsa_bootstrap_skips_pairs_of_a_perturbation_with_itself():
    sim = np.array([[1, 0.9, 0.1, 0.2], [0.9, 1, 0.3, 0.4], [0.1, 0.3, 1, 0.8], [0.2, 0.4, 0.8, 1]])
    ident = rsa_bootstrap(sim, sim, np.arange(4)[None, :])
    assert ident[0] == pytest.approx(1.0)
    draws = rsa_bootstrap(sim, sim, np.array([[0, 0, 1, 2], [0, 0, 0, 1]]))
    assert draws[0] == pytest.approx(1.0)  # pairs (0,1), (0,2), (1,2) twice each
    assert np.isnan(draws[1])  # only pair (0,1): too few to rank


@pytest.fixture(scope="module")
def references(perturb_sim):
    lognorm = log_normalise(perturb_sim)
    labels = perturb_sim.obs["perturbation"].astype(str).to_numpy()
    states = perturb_sim.obs["state"].astype(str).to_numpy()
    out = {}
    for state in ("Rest", "Stim8hr", "Stim48hr"):
        mask = states == state
        out[state] = (mask, perturbation_reference(lognorm.X[mask], labels[mask], CONTROL))
    return out


@pytest.mark.parametrize("state", ["Stim8hr", "Stim48hr"])
def test_true_effects_score_near_one_and_a_shuffled_embedding_near_zero(
    perturb_sim, references, state
):
    mask, ref = references[state]
    labels = perturb_sim.obs["perturbation"].astype(str).to_numpy()[mask]
    assert len(ref.perturbations) == 10
    truth = true_similarity(perturb_sim, state).loc[ref.perturbations, ref.perturbations]
    # What the reference can recover of the truth: measured 0.907 (Stim8hr), 0.913 (Stim48hr).
    assert rsa_score(truth.to_numpy(), ref.similarity) > 0.85
    emb = true_effect_embedding(perturb_sim, noise=0.5, seed=1)[mask]
    rng = np.random.default_rng(0)
    perms = np.array([rng.permutation(int((labels != CONTROL).sum())) for _ in range(40)])

    score = rsa_score(embedding_similarity(emb, labels, ref.perturbations), ref.similarity)
    null = permutation_null(emb, labels, ref.perturbations, ref.similarity, perms)
    assert score > 0.85  # measured 0.917, 0.917
    assert null_z(score, null) > 3.0  # measured 4.97, 6.35
    assert permutation_p_value(score, null) == pytest.approx(1 / 41)

    shuffled = emb[rng.permutation(emb.shape[0])]
    s_score = rsa_score(embedding_similarity(shuffled, labels, ref.perturbations), ref.similarity)
    s_null = permutation_null(shuffled, labels, ref.perturbations, ref.similarity, perms)
    assert abs(s_score) < 0.3  # measured 0.061, 0.120
    assert abs(null_z(s_score, s_null)) < 2.5  # measured 0.35, 1.11


@pytest.mark.parametrize("state, other", [("Stim8hr", "Stim48hr"), ("Stim48hr", "Stim8hr")])
def test_true_similarity_structure_differs_by_state(perturb_sim, references, state, other):
    _, ref = references[state]
    names = ref.perturbations

    def truth(s):
        return true_similarity(perturb_sim, s).loc[names, names].to_numpy()

    own, foreign = rsa_score(truth(state), ref.similarity), rsa_score(truth(other), ref.similarity)
    assert own > foreign + 0.3  # measured 0.907 vs 0.268 (Stim8hr), 0.913 vs 0.132 (Stim48hr)


def test_silent_perturbations_have_only_their_knockdown_at_rest(perturb_sim):
    sim = perturb_sim.uns["simulation"]
    rest = np.asarray(sim["effects"]["Rest"])
    stim = np.asarray(sim["effects"]["Stim8hr"])
    silent = np.asarray(sim["modules"]) % 2 == 1
    assert silent.any() and (~silent).any()
    assert ((rest[silent] != 0).sum(axis=1) == 1).all()  # the target gene only
    assert ((stim[silent] != 0).sum(axis=1) > 100).all()
    assert ((rest[~silent] != 0).sum(axis=1) > 100).all()
