import pickle

import numpy as np
import pytest

from fedsim.crypto import Packer, check_range, flatten_tree, unflatten_tree
from fedsim.errors import CryptoError


class ArrayLike:
    def __init__(self, values):
        self.values = values

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.values, dtype=dtype)


def sample_tree():
    rng = np.random.default_rng(0)
    return {
        "dense": {"kernel": rng.normal(size=(3, 5)).astype(np.float32), "bias": rng.normal(size=7)},
        "codes": [np.arange(4, dtype=np.int32).reshape(2, 2), np.float64(2.5), 3.5, 7],
        "scale": (np.array(-1.25, dtype=np.float32),),
        "empty": {},
    }


def test_flatten_unflatten_round_trip_keeps_structure_shapes_dtypes():
    tree = sample_tree()
    vector, spec = flatten_tree(tree)
    assert vector.dtype == np.float64 and vector.shape == (15 + 7 + 4 + 1 + 1 + 1 + 1,)
    assert spec.num_values == vector.size
    back = unflatten_tree(vector, spec)
    assert list(back) == ["codes", "dense", "empty", "scale"]  # sorted keys
    assert back["dense"]["kernel"].dtype == np.float32 and back["dense"]["kernel"].shape == (3, 5)
    np.testing.assert_array_equal(back["dense"]["kernel"], tree["dense"]["kernel"])
    np.testing.assert_array_equal(back["dense"]["bias"], tree["dense"]["bias"])
    assert isinstance(back["codes"], list) and back["codes"][0].dtype == np.int32
    np.testing.assert_array_equal(back["codes"][0], tree["codes"][0])
    assert back["codes"][1].dtype == np.float64 and back["codes"][1].shape == ()
    assert back["codes"][2] == 3.5 and type(back["codes"][2]) is float
    assert back["codes"][3] == 7 and type(back["codes"][3]) is int
    assert isinstance(back["scale"], tuple) and back["scale"][0].dtype == np.float32
    assert back["empty"] == {}
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_flatten_order_is_deterministic_and_integers_round():
    a = {"x": np.ones(2), "y": np.zeros(3, dtype=np.int32)}
    b = {"y": np.zeros(3, dtype=np.int32), "x": np.ones(2)}
    va, spec = flatten_tree(a)
    vb, _ = flatten_tree(b)
    np.testing.assert_array_equal(va, vb)
    noisy = unflatten_tree(vb + 1e-3, spec)  # decrypted sums are approximate
    np.testing.assert_array_equal(noisy["y"], np.zeros(3, dtype=np.int32))


def test_flatten_accepts_array_likes_and_refuses_other_leaves():
    vector, spec = flatten_tree({"w": ArrayLike([1.0, 2.0])})
    np.testing.assert_array_equal(unflatten_tree(vector, spec)["w"], [1.0, 2.0])
    with pytest.raises(CryptoError, match="/w is a str"):
        flatten_tree({"w": "abc"})
    with pytest.raises(CryptoError, match="does not match the tree"):
        unflatten_tree(np.zeros(3), spec)


@pytest.mark.parametrize("vpc", [8, 5])
def test_pack_unpack_round_trip_odd_sizes(vpc):
    rng = np.random.default_rng(1)
    for n in (1, vpc - 1, vpc, vpc + 1, 3 * vpc + 7):
        packer = Packer(n, vpc)
        assert packer.num_ciphertexts == -(-(n + 1) // vpc)
        vector = rng.normal(size=n)
        packed = packer.pack(vector, 12.5)
        assert packed.shape == (packer.num_ciphertexts, vpc)
        assert packed[-1, -1] == 12.5
        np.testing.assert_array_equal(packed.reshape(-1)[n:-1], 0.0)
        back, weight = packer.unpack(packed)
        np.testing.assert_array_equal(back, vector)
        assert weight == 12.5
    with pytest.raises(CryptoError, match="expected a vector of"):
        Packer(4, vpc).pack(np.zeros(5), 1.0)


def test_check_range_refuses_sums_that_would_wrap():
    packed = np.array([[0.1, -0.25], [0.05, 0.2]])
    check_range(packed, contributors=2, bound=0.5)  # 2 * 0.25 == 0.5: allowed
    with pytest.raises(CryptoError) as info:
        check_range(packed, contributors=3, bound=0.5)
    message = str(info.value)
    # The message names the bound, never the peak (a client's value, which would reach
    # the coordinator in a drop reason).
    assert "the sum of 3 contributions could exceed the bound 0.5" in message
    assert "0.75" not in message and "scale updates down" in message
    with pytest.raises(CryptoError, match="NaN"):
        check_range(np.array([[np.nan]]), contributors=1, bound=1.0)
    with pytest.raises(CryptoError, match="at least 1"):
        Packer.check_range(packed, contributors=0, bound=1.0)
