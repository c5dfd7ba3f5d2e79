"""Argument normalization (cupy_dwconv._params): output sizes, every accepted form of
stride / padding / dilation, and every error, which must name the argument and show
the value received."""

from __future__ import annotations

import re

import numpy
import pytest

from cupy_dwconv import _params
from cupy_dwconv._params import ConvParams, backward_params, check_dtypes, check_needs, conv_params, output_size

X = (2, 3, 10, 12)
WT = (3, 1, 3, 3)


def _brute_output_size(size, kernel, stride, dilation, lo, hi):
    """Count the window start positions (multiples of stride) whose taps all lie in the padded input."""
    padded = size + lo + hi
    return sum(1 for start in range(0, padded, stride) if start + dilation * (kernel - 1) < padded)


# ---------------------------------------------------------------------------------------
# Output size


@pytest.mark.parametrize("size", [1, 2, 5, 7, 8, 16, 17])
@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_output_size_matches_brute_force(size, kernel, stride, dilation):
    for lo, hi in [(0, 0), (1, 0), (0, 2), (3, 1), (2, 2)]:
        expected = _brute_output_size(size, kernel, stride, dilation, lo, hi)
        if expected < 1:
            # No window fits: conv_params must refuse it; output_size reports <= 0.
            assert output_size(size, kernel, stride, dilation, lo, hi) < 1
            with pytest.raises(ValueError, match="weight: expected a kernel that fits in the padded input"):
                conv_params((1, 1, size, 20), (1, 1, kernel, 1), None, (stride, 1), ((lo, hi), (0, 0)), (dilation, 1))
            continue
        assert output_size(size, kernel, stride, dilation, lo, hi) == expected
        # Through conv_params, on each axis separately.
        p = conv_params((1, 1, size, 20), (1, 1, kernel, 1), None, (stride, 1), ((lo, hi), (0, 0)), (dilation, 1))
        assert p.OH == expected and p.OW == 20
        p = conv_params((1, 1, 20, size), (1, 1, 1, kernel), None, (1, stride), ((0, 0), (lo, hi)), (1, dilation))
        assert p.OW == expected and p.OH == 20


def test_conv_params_fields_and_properties():
    p = conv_params((2, 3, 11, 13), (6, 1, 3, 5), (6,), (2, 1), ((1, 2), (0, 3)), (1, 2))
    assert isinstance(p, ConvParams)
    assert (p.N, p.C, p.H, p.W, p.M, p.KH, p.KW) == (2, 3, 11, 13, 2, 3, 5)
    assert (p.SH, p.SW, p.DH, p.DW) == (2, 1, 1, 2)
    assert (p.PT, p.PB, p.PL, p.PR) == (1, 2, 0, 3)
    assert p.OH == _brute_output_size(11, 3, 2, 1, 1, 2) == 6
    assert p.OW == _brute_output_size(13, 5, 1, 2, 0, 3) == 8
    assert p.CM == 6
    assert p.x_shape == (2, 3, 11, 13)
    assert p.weight_shape == (6, 1, 3, 5)
    assert p.out_shape == (2, 6, 6, 8)
    assert p.padding == ((1, 2), (0, 3))


# ---------------------------------------------------------------------------------------
# Accepted forms


@pytest.mark.parametrize(
    "stride, expected",
    [(1, (1, 1)), (3, (3, 3)), ((2, 3), (2, 3)), ([3, 1], (3, 1)), (numpy.int64(2), (2, 2)),
     ((numpy.int32(1), 2), (1, 2))],
)
def test_stride_forms(stride, expected):
    p = conv_params(X, WT, None, stride, 0, 1)
    assert (p.SH, p.SW) == expected
    assert type(p.SH) is int and type(p.SW) is int


@pytest.mark.parametrize(
    "dilation, expected",
    [(1, (1, 1)), (2, (2, 2)), ((1, 3), (1, 3)), ([2, 1], (2, 1)), (numpy.int64(2), (2, 2))],
)
def test_dilation_forms(dilation, expected):
    p = conv_params(X, WT, None, 1, 0, dilation)
    assert (p.DH, p.DW) == expected


@pytest.mark.parametrize(
    "padding, expected",
    [
        (0, ((0, 0), (0, 0))),
        (2, ((2, 2), (2, 2))),
        ((1, 2), ((1, 1), (2, 2))),
        ([2, 0], ((2, 2), (0, 0))),
        (((1, 2), (3, 0)), ((1, 2), (3, 0))),
        ([[0, 1], [2, 3]], ((0, 1), (2, 3))),
        ((numpy.int64(1), 2), ((1, 1), (2, 2))),
        ("valid", ((0, 0), (0, 0))),
    ],
)
def test_padding_forms(padding, expected):
    p = conv_params(X, WT, None, 1, padding, 1)
    assert p.padding == expected
    assert all(type(v) is int for side in p.padding for v in side)


@pytest.mark.parametrize(
    "kernel, dilation, expected",
    [
        # odd effective kernels: symmetric
        ((3, 3), (1, 1), ((1, 1), (1, 1))),
        ((1, 7), (1, 1), ((0, 0), (3, 3))),
        ((3, 5), (2, 3), ((2, 2), (6, 6))),
        # even effective kernels: the extra row / column at the bottom / right (as PyTorch)
        ((2, 2), (1, 1), ((0, 1), (0, 1))),
        ((4, 1), (1, 1), ((1, 2), (0, 0))),
        ((2, 6), (3, 1), ((1, 2), (2, 3))),
        # dilation makes an even kernel's effective size odd: symmetric again
        ((2, 4), (2, 2), ((1, 1), (3, 3))),
    ],
)
def test_padding_same(kernel, dilation, expected):
    kh, kw = kernel
    p = conv_params((2, 3, 9, 16), (3, 1, kh, kw), None, 1, "same", dilation)
    assert p.padding == expected
    assert (p.OH, p.OW) == (9, 16)
    # total padding is dilation * (kernel - 1) on each axis
    assert p.PT + p.PB == dilation[0] * (kh - 1) and p.PL + p.PR == dilation[1] * (kw - 1)


def test_padding_valid_allows_any_stride():
    p = conv_params(X, WT, None, 3, "valid", 1)
    assert p.padding == ((0, 0), (0, 0))
    assert (p.OH, p.OW) == (_brute_output_size(10, 3, 3, 1, 0, 0), _brute_output_size(12, 3, 3, 1, 0, 0))


@pytest.mark.parametrize("m", [1, 2, 5])
def test_channel_multiplier(m):
    p = conv_params((1, 4, 6, 6), (4 * m, 1, 3, 3), (4 * m,), 1, 1, 1)
    assert p.M == m and p.CM == 4 * m and p.out_shape == (1, 4 * m, 6, 6)


def test_empty_batch_and_empty_channels():
    p = conv_params((0, 3, 8, 9), (6, 1, 3, 3), (6,), 1, 1, 1)
    assert (p.N, p.C, p.M) == (0, 3, 2)
    assert p.out_shape == (0, 6, 8, 9)
    p = conv_params((2, 0, 8, 9), (0, 1, 3, 2), (0,), 2, 0, 1)
    assert (p.N, p.C, p.M, p.CM) == (2, 0, 1, 0)
    assert p.out_shape == (2, 0, 3, 4)
    assert p.weight_shape == (0, 1, 3, 2)


def test_shapes_may_be_lists():
    p = conv_params([2, 3, 10, 12], [3, 1, 3, 3], [3], 1, 0, 1)
    assert p == conv_params(X, WT, (3,), 1, 0, 1)


def test_valid_calls_are_memoized():
    a = conv_params((3, 5, 17, 19), (10, 1, 3, 2), None, (1, 2), ((1, 0), (0, 1)), 1)
    b = conv_params((3, 5, 17, 19), (10, 1, 3, 2), None, (1, 2), ((1, 0), (0, 1)), 1)
    assert a is b


def test_backward_params():
    p = backward_params((2, 6, 10, 12), (2, 3, 10, 12), (6, 1, 3, 3), 1, "same", 1)
    assert p == conv_params((2, 3, 10, 12), (6, 1, 3, 3), None, 1, "same", 1)
    assert p.out_shape == (2, 6, 10, 12)


# ---------------------------------------------------------------------------------------
# Errors: every message names the argument and shows what was received.


def _raises(exc, *fragments):
    """pytest.raises whose message must contain every fragment (literally)."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments))


@pytest.mark.parametrize("shape", [(2, 3, 10), (1, 2, 3, 10, 12), ()])
def test_x_wrong_ndim(shape):
    with _raises(ValueError, "x:", "4 dimensions", f"got shape {shape}"):
        conv_params(shape, WT, None, 1, 0, 1)


@pytest.mark.parametrize("shape", [(3, 3, 3), (3, 1, 1, 3, 3)])
def test_weight_wrong_ndim(shape):
    with _raises(ValueError, "weight:", "4 dimensions", f"got shape {shape}"):
        conv_params(X, shape, None, 1, 0, 1)


def test_weight_dimension_1_must_be_1():
    with _raises(ValueError, "weight:", "1 in dimension 1", "got shape (3, 3, 3, 3)"):
        conv_params(X, (3, 3, 3, 3), None, 1, 0, 1)


@pytest.mark.parametrize("shape", [(3, 1, 0, 3), (3, 1, 3, 0)])
def test_weight_empty_kernel(shape):
    with _raises(ValueError, "weight:", "at least 1x1", f"got shape {shape}"):
        conv_params(X, shape, None, 1, 0, 1)


@pytest.mark.parametrize("cm", [0, 2, 4, 5, 7])
def test_weight_channels_not_a_multiple_of_c(cm):
    with _raises(ValueError, "weight:", "positive multiple of C=3", f"got {cm}"):
        conv_params(X, (cm, 1, 3, 3), None, 1, 0, 1)


def test_weight_channels_for_zero_input_channels():
    with _raises(ValueError, "weight:", "C=0", "got shape (3, 1, 3, 3)"):
        conv_params((2, 0, 10, 12), (3, 1, 3, 3), None, 1, 0, 1)


@pytest.mark.parametrize("bias_shape", [(2,), (6,), (3, 1), (1, 3), ()])
def test_bias_wrong_shape(bias_shape):
    with _raises(ValueError, "bias:", "expected shape (3,)", f"got shape {bias_shape}"):
        conv_params(X, WT, bias_shape, 1, 0, 1)


@pytest.mark.parametrize("name", ["stride", "dilation"])
@pytest.mark.parametrize(
    "value, label, received",
    [(0, "", "got 0"), (-1, "", "got -1"), ((1, 0), "[1]", "got 0"), ((0, 2), "[0]", "got 0"), ((2, -3), "[1]", "got -3")],
)
def test_stride_dilation_below_one(name, value, label, received):
    kwargs = dict(stride=1, padding=0, dilation=1)
    kwargs[name] = value
    with _raises(ValueError, f"{name}{label}: expected an int >= 1", received):
        conv_params(X, WT, None, **kwargs)


@pytest.mark.parametrize("name", ["stride", "dilation"])
@pytest.mark.parametrize(
    "value, label, received",
    [
        (True, "", "True (bool)"),
        (False, "", "False (bool)"),
        (2.0, "", "2.0 (float)"),
        ("2", "", "'2' (str)"),
        (None, "", "None (NoneType)"),
        (numpy.float64(1.0), "", "(float64)"),
        ((1, True), "[1]", "True (bool)"),
        ((False, 1), "[0]", "False (bool)"),
        ((1, 2.0), "[1]", "2.0 (float)"),
        (("1", 1), "[0]", "'1' (str)"),
        (((1, 1), 1), "[0]", "(1, 1)"),
        ({"h": 1}, "", "dict"),  # unhashable: bypasses the cache, same check
        (numpy.array([1, 1]), "", "ndarray"),
    ],
)
def test_stride_dilation_wrong_type(name, value, label, received):
    kwargs = dict(stride=1, padding=0, dilation=1)
    kwargs[name] = value
    with _raises(TypeError, f"{name}{label}: expected an int", received):
        conv_params(X, WT, None, **kwargs)


@pytest.mark.parametrize("name", ["stride", "dilation"])
@pytest.mark.parametrize("value", [(), (1,), (1, 1, 1), [2, 2, 2, 2]])
def test_stride_dilation_wrong_length(name, value):
    kwargs = dict(stride=1, padding=0, dilation=1)
    kwargs[name] = value
    with _raises(ValueError, f"{name}: expected an int or a pair (h, w)", f"length {len(value)}", repr(value)):
        conv_params(X, WT, None, **kwargs)


@pytest.mark.parametrize(
    "padding, label, received",
    [
        (-1, "padding", "got -1"),
        ((1, -2), "padding[w]", "got -2"),
        ((-1, 0), "padding[h]", "got -1"),
        (((0, 1), (-1, 0)), "padding[w][0]", "got -1"),
        (((0, -3), (1, 0)), "padding[h][1]", "got -3"),
    ],
)
def test_negative_padding(padding, label, received):
    with _raises(ValueError, f"{label}: expected an int >= 0", received):
        conv_params(X, WT, None, 1, padding, 1)


@pytest.mark.parametrize(
    "padding, label, received",
    [
        (True, "padding", "True (bool)"),
        (1.0, "padding", "1.0 (float)"),
        (None, "padding", "None (NoneType)"),
        ({1: 1}, "padding", "dict"),
        ((1, True), "padding[w]", "True (bool)"),
        ((False, 1), "padding[h]", "False (bool)"),
        ((1, 0.5), "padding[w]", "0.5 (float)"),
        (((1, 2), (0, 1.0)), "padding[w][1]", "1.0 (float)"),
        (((True, 2), (0, 1)), "padding[h][0]", "True (bool)"),
        (((1, 2), ("0", 1)), "padding[w][0]", "'0' (str)"),
        (((1, None), (0, 1)), "padding[h][1]", "None (NoneType)"),
    ],
)
def test_padding_wrong_type(padding, label, received):
    with _raises(TypeError, f"{label}: expected an int", received):
        conv_params(X, WT, None, 1, padding, 1)


@pytest.mark.parametrize("padding", [(), (1,), (1, 2, 3), ((1, 1), (1, 1), (1, 1))])
def test_padding_wrong_length(padding):
    with _raises(ValueError, "padding: expected an int, (ph, pw) or ((top, bottom), (left, right))",
                 f"length {len(padding)}", repr(padding)):
        conv_params(X, WT, None, 1, padding, 1)


@pytest.mark.parametrize("padding", [((1, 2, 3), (0, 0)), ((1, 2), (0,)), ((1,), 2)])
def test_padding_wrong_inner_length(padding):
    with _raises(ValueError, "padding: expected ((top, bottom), (left, right))", repr(padding)):
        conv_params(X, WT, None, 1, padding, 1)


@pytest.mark.parametrize("padding", ["SAME", "full", "", "same "])
def test_padding_unknown_string(padding):
    with _raises(ValueError, "padding:", "'valid' or 'same'", f"got {padding!r}"):
        conv_params(X, WT, None, 1, padding, 1)


@pytest.mark.parametrize("stride, shown", [(2, "(2, 2)"), ((1, 2), "(1, 2)"), ((3, 1), "(3, 1)")])
def test_padding_same_needs_stride_1(stride, shown):
    with _raises(ValueError, "padding: 'same' needs stride 1", f"stride={shown}"):
        conv_params(X, WT, None, stride, "same", 1)


@pytest.mark.parametrize(
    "x_shape, weight_shape, stride, padding, dilation, effective, padded",
    [
        ((1, 1, 4, 10), (1, 1, 5, 3), 1, 0, 1, "5x3", "4x10"),
        ((1, 1, 10, 4), (1, 1, 3, 5), 1, 0, 1, "3x5", "10x4"),
        ((1, 1, 6, 6), (1, 1, 3, 3), 1, 0, 3, "7x7", "6x6"),
        ((1, 1, 3, 3), (1, 1, 5, 5), 1, ((1, 0), (0, 0)), 1, "5x5", "4x3"),
    ],
)
def test_kernel_larger_than_padded_input(x_shape, weight_shape, stride, padding, dilation, effective, padded):
    with _raises(ValueError, "weight: expected a kernel that fits in the padded input",
                 f"effective kernel {effective}", f"padded input {padded}"):
        conv_params(x_shape, weight_shape, None, stride, padding, dilation)


def test_padding_can_make_a_kernel_fit():
    p = conv_params((1, 1, 3, 3), (1, 1, 5, 5), None, 1, 1, 1)
    assert (p.OH, p.OW) == (1, 1)


@pytest.mark.parametrize("arg", ["stride", "padding", "dilation"])
def test_cache_keeps_types(arg):
    """A cached valid call with (1, 1) must not let (1, True) through: the cache key keeps
    leaf types (True == 1 and hash(True) == hash(1))."""
    valid = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    first = conv_params((1, 2, 7, 7), (2, 1, 3, 3), None, **valid)
    assert conv_params((1, 2, 7, 7), (2, 1, 3, 3), None, **valid) is first
    bad = dict(valid)
    bad[arg] = (1, True)
    with _raises(TypeError, "expected an int", "True (bool)"):
        conv_params((1, 2, 7, 7), (2, 1, 3, 3), None, **bad)
    bad[arg] = [1.0, 1]
    with _raises(TypeError, "expected an int", "1.0 (float)"):
        conv_params((1, 2, 7, 7), (2, 1, 3, 3), None, **bad)


def test_cache_keeps_types_for_scalars():
    conv_params(X, WT, None, 1, 1, 1)
    with _raises(TypeError, "stride: expected an int", "True (bool)"):
        conv_params(X, WT, None, True, 1, 1)
    with _raises(TypeError, "padding: expected an int", "1.0 (float)"):
        conv_params(X, WT, None, 1, 1.0, 1)


def test_invalid_calls_raise_every_time():
    for _ in range(3):
        with _raises(ValueError, "stride: expected an int >= 1", "got 0"):
            conv_params(X, WT, None, 0, 0, 1)


@pytest.mark.parametrize("shape", [(2, 3, 10), (2, 3, 8, 10, 1)])
def test_grad_output_wrong_ndim(shape):
    with _raises(ValueError, "grad_output:", "4 dimensions", f"got shape {shape}"):
        backward_params(shape, X, WT, 1, 0, 1)


@pytest.mark.parametrize("shape", [(2, 3, 8, 9), (2, 6, 8, 10), (1, 3, 8, 10), (2, 3, 10, 12)])
def test_grad_output_wrong_shape(shape):
    with _raises(ValueError, "grad_output:", "expected shape (2, 3, 8, 10)", f"got shape {shape}"):
        backward_params(shape, X, WT, 1, 0, 1)


def test_backward_params_checks_the_forward_arguments():
    with _raises(TypeError, "padding[w]: expected an int", "True (bool)"):
        backward_params((2, 3, 8, 10), X, WT, 1, (0, True), 1)


# ---------------------------------------------------------------------------------------
# dtypes and `needs`


def test_check_dtypes_returns_the_name():
    assert check_dtypes(x=numpy.float32, weight=numpy.dtype("float32"), bias=None) == "float32"
    assert check_dtypes(x=numpy.float16, weight=numpy.float16) == "float16"
    assert check_dtypes(x=numpy.float64, weight=numpy.float64, grad_output=numpy.float64) == "float64"
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
    assert check_dtypes(x=ml_dtypes.bfloat16, weight=ml_dtypes.bfloat16) == "bfloat16"


@pytest.mark.parametrize("dtype", ["int32", "int64", "complex64", "bool", "uint8", "float128" if hasattr(numpy, "float128") else "longdouble"])
def test_check_dtypes_unsupported(dtype):
    name = numpy.dtype(dtype).name
    with _raises(TypeError, "x: expected dtype float16, bfloat16, float32 or float64", f"got {name}"):
        check_dtypes(x=numpy.dtype(dtype), weight=numpy.dtype(dtype))


@pytest.mark.parametrize(
    "kwargs, label, expected, got",
    [
        (dict(x=numpy.float32, weight=numpy.float64), "weight", "float32", "float64"),
        (dict(x=numpy.float16, weight=numpy.float16, bias=numpy.float32), "bias", "float16", "float32"),
        (dict(x=numpy.float64, weight=numpy.float64, grad_output=numpy.float16), "grad_output", "float64", "float16"),
        (dict(x=numpy.float32, weight=numpy.int32), "weight", "float32", "int32"),
    ],
)
def test_check_dtypes_mixed(kwargs, label, expected, got):
    with _raises(TypeError, f"{label}: expected dtype {expected} (the dtype of x)", f"got {got}"):
        check_dtypes(**kwargs)


def test_check_dtypes_mixed_bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
    with _raises(TypeError, "weight: expected dtype bfloat16 (the dtype of x)", "got float16"):
        check_dtypes(x=ml_dtypes.bfloat16, weight=numpy.float16)


@pytest.mark.parametrize(
    "needs, expected",
    [((True, True, True), (True, True, True)), ([False, True, False], (False, True, False)),
     ((numpy.bool_(True), False, numpy.bool_(False)), (True, False, False))],
)
def test_check_needs_valid(needs, expected):
    out = check_needs(needs)
    assert out == expected and all(type(v) is bool for v in out)


@pytest.mark.parametrize(
    "needs, received",
    [
        (True, "True (bool)"),
        (None, "None (NoneType)"),
        ("yyy", "'yyy' (str)"),
        ((True, True), "(True, True)"),
        ((True, True, True, True), "(True, True, True, True)"),
        ((1, 1, 1), "(1, 1, 1)"),
        ((True, 0, True), "(True, 0, True)"),
        ([True, None, False], "[True, None, False]"),
        ({True, False}, "set"),
    ],
)
def test_check_needs_malformed(needs, received):
    with _raises(TypeError, "needs: expected a tuple of three bools (grad_x, grad_weight, grad_bias)", received):
        check_needs(needs)


def test_dtype_name():
    assert _params.dtype_name(numpy.float32) == "float32"
    assert _params.dtype_name("float16") == "float16"
