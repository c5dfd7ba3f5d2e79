"""Argument normalization and checks shared by the GPU functions and the reference.

Pure Python (NumPy only for dtype objects): everything here runs, and is tested,
on a machine without a GPU. Every error names the argument, what was expected and
what was received.
"""

from __future__ import annotations

import dataclasses
import numbers
import operator

import numpy

__all__ = [
    "ConvParams",
    "conv_params",
    "backward_params",
    "check_dtypes",
    "output_size",
    "dtype_name",
]

# dtype names this library computes in; 16-bit types accumulate in float32.
SUPPORTED_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _describe(value):
    """Short description of a received value for error messages."""
    if isinstance(value, (bool, numbers.Number, str)) or value is None:
        return f"{value!r} ({type(value).__name__})"
    if isinstance(value, (tuple, list)):
        return f"{value!r}"
    return f"an object of type {type(value).__name__}"


def _int(value, name, minimum):
    """An exact integer >= minimum; bools, floats and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {_describe(value)}")
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def _pair(value, name, minimum):
    """int or (h, w) -> (int, int), each >= minimum."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(
                f"{name}: expected an int or a pair (h, w), got a sequence of length {len(value)}: {value!r}"
            )
        return (_int(value[0], f"{name}[0]", minimum), _int(value[1], f"{name}[1]", minimum))
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int or a pair (h, w) of ints, got {_describe(value)}")
    v = _int(value, name, minimum)
    return (v, v)


def _padding(padding, kernel, stride, dilation):
    """Normalize padding to ((top, bottom), (left, right)).

    Accepts an int, (ph, pw), ((top, bottom), (left, right)), 'valid' or 'same'.
    'same' needs stride 1 (as PyTorch); for an even effective kernel the extra
    row/column goes at the bottom/right.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding: 'same' needs stride 1, got stride={stride}")
            out = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                out.append((total // 2, total - total // 2))
            return tuple(out)
        raise ValueError(f"padding: expected an int, a pair, a pair of pairs, 'valid' or 'same', got {padding!r}")
    if isinstance(padding, (tuple, list)):
        if len(padding) != 2:
            raise ValueError(
                "padding: expected an int, (ph, pw) or ((top, bottom), (left, right)), "
                f"got a sequence of length {len(padding)}: {padding!r}"
            )
        sides = []
        for axis, item in zip(("h", "w"), padding):
            if isinstance(item, (tuple, list)):
                if len(item) != 2:
                    raise ValueError(
                        f"padding: expected ((top, bottom), (left, right)), got {padding!r}"
                    )
                lo = _int(item[0], f"padding[{axis}][0]", 0)
                hi = _int(item[1], f"padding[{axis}][1]", 0)
            else:
                lo = hi = _int(item, f"padding[{axis}]", 0)
            sides.append((lo, hi))
        return tuple(sides)
    if isinstance(padding, bool) or not isinstance(padding, numbers.Integral):
        raise TypeError(
            "padding: expected an int, a pair, a pair of pairs, 'valid' or 'same', "
            f"got {_describe(padding)}"
        )
    p = _int(padding, "padding", 0)
    return ((p, p), (p, p))


def output_size(size, kernel, stride, dilation, pad_lo, pad_hi):
    """Output length along one axis: floor((size + pads - dilation*(kernel-1) - 1) / stride) + 1."""
    return (size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1


@dataclasses.dataclass(frozen=True)
class ConvParams:
    """A fully normalized depthwise convolution problem.

    x: (N, C, H, W); weight: (C*M, 1, KH, KW); output: (N, C*M, OH, OW).
    Output channel o reads input channel o // M.
    """

    N: int
    C: int
    H: int
    W: int
    M: int
    KH: int
    KW: int
    SH: int
    SW: int
    DH: int
    DW: int
    PT: int  # padding top
    PB: int  # padding bottom
    PL: int  # padding left
    PR: int  # padding right
    OH: int
    OW: int

    @property
    def CM(self):
        return self.C * self.M

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self):
        return (self.CM, 1, self.KH, self.KW)

    @property
    def out_shape(self):
        return (self.N, self.CM, self.OH, self.OW)

    @property
    def padding(self):
        return ((self.PT, self.PB), (self.PL, self.PR))


def _shape(shape, name, ndim, what):
    shape = tuple(shape)
    if len(shape) != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions {what}, got shape {shape}")
    return shape


def _typed_key(value):
    """A hashable key that keeps leaf types: (1, True) and (1, 1) must not share a cache
    entry, or a cached result would skip the check that refuses bools."""
    if isinstance(value, (tuple, list)):
        return (tuple,) + tuple(_typed_key(v) for v in value)
    hash(value)  # TypeError for unhashable leaves
    return (type(value), value)


_CACHE = {}
_CACHE_MAX = 4096


def conv_params(x_shape, weight_shape, bias_shape, stride, padding, dilation):
    """Check shapes and hyper-parameters; return a ConvParams (memoized).

    The GPU functions call this on every launch, so valid argument sets are cached by
    a type-preserving key; invalid ones raise every time.
    """
    try:
        key = (tuple(x_shape), tuple(weight_shape), None if bias_shape is None else tuple(bias_shape),
               _typed_key(stride), _typed_key(padding), _typed_key(dilation))
    except TypeError:
        return _conv_params(x_shape, weight_shape, bias_shape, stride, padding, dilation)
    p = _CACHE.get(key)
    if p is None:
        p = _conv_params(x_shape, weight_shape, bias_shape, stride, padding, dilation)
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = p
    return p


def _conv_params(x_shape, weight_shape, bias_shape, stride, padding, dilation):
    N, C, H, W = _shape(x_shape, "x", 4, "(N, C, H, W)")
    CM, one, KH, KW = _shape(weight_shape, "weight", 4, "(C*M, 1, KH, KW)")
    if one != 1:
        raise ValueError(
            f"weight: expected shape (C*M, 1, KH, KW) with 1 in dimension 1 (depthwise), got shape {tuple(weight_shape)}"
        )
    if KH < 1 or KW < 1:
        raise ValueError(f"weight: expected a kernel of at least 1x1, got shape {tuple(weight_shape)}")
    if C == 0:
        if CM != 0:
            raise ValueError(f"weight: expected 0 output channels for x with C=0, got shape {tuple(weight_shape)}")
        M = 1
    else:
        if CM < 1 or CM % C:
            raise ValueError(
                f"weight: expected weight.shape[0] to be a positive multiple of C={C} (C*M), got {CM}"
            )
        M = CM // C
    if bias_shape is not None:
        bias_shape = tuple(bias_shape)
        if bias_shape != (CM,):
            raise ValueError(f"bias: expected shape ({CM},), got shape {bias_shape}")
    sh, sw = _pair(stride, "stride", 1)
    dh, dw = _pair(dilation, "dilation", 1)
    (pt, pb), (pl, pr) = _padding(padding, (KH, KW), (sh, sw), (dh, dw))
    oh = output_size(H, KH, sh, dh, pt, pb)
    ow = output_size(W, KW, sw, dw, pl, pr)
    if oh < 1 or ow < 1:
        raise ValueError(
            "weight: expected a kernel that fits in the padded input, got an effective kernel "
            f"{dh * (KH - 1) + 1}x{dw * (KW - 1) + 1} (dilation {dh}x{dw}) on a padded input "
            f"{H + pt + pb}x{W + pl + pr} (x {H}x{W}, padding {((pt, pb), (pl, pr))})"
        )
    return ConvParams(N, C, H, W, M, KH, KW, sh, sw, dh, dw, pt, pb, pl, pr, oh, ow)


def backward_params(grad_output_shape, x_shape, weight_shape, stride, padding, dilation):
    """ConvParams for a backward pass; grad_output must have the forward's output shape."""
    p = conv_params(x_shape, weight_shape, None, stride, padding, dilation)
    go = _shape(grad_output_shape, "grad_output", 4, "(N, C*M, OH, OW)")
    if go != p.out_shape:
        raise ValueError(f"grad_output: expected shape {p.out_shape} (the forward's output), got shape {go}")
    return p


_DTYPE_NAMES = {}


def dtype_name(dtype):
    """numpy dtype (or anything numpy.dtype accepts) -> its name, e.g. 'bfloat16'.
    Memoized: numpy builds the name string on every access."""
    try:
        return _DTYPE_NAMES[dtype]
    except (KeyError, TypeError):
        name = numpy.dtype(dtype).name
        try:
            _DTYPE_NAMES[dtype] = name
        except TypeError:
            pass
        return name


def check_dtypes(**arrays_dtypes):
    """All given dtypes must be one supported floating type; return its name.

    Called as check_dtypes(x=x.dtype, weight=w.dtype, bias=b.dtype); None values are skipped.
    """
    items = [(k, v) for k, v in arrays_dtypes.items() if v is not None]
    first_name, first = items[0]
    name = dtype_name(first)
    if name not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{first_name}: expected dtype float16, bfloat16, float32 or float64, got {name}"
        )
    for other_name, other in items[1:]:
        oname = dtype_name(other)
        if oname != name:
            raise TypeError(f"{other_name}: expected dtype {name} (the dtype of {first_name}), got {oname}")
    return name


def check_needs(needs):
    """`needs` of the backward: three bools (grad_x, grad_weight, grad_bias)."""
    if (
        not isinstance(needs, (tuple, list))
        or len(needs) != 3
        or not all(isinstance(n, (bool, numpy.bool_)) for n in needs)
    ):
        raise TypeError(
            f"needs: expected a tuple of three bools (grad_x, grad_weight, grad_bias), got {_describe(needs)}"
        )
    return tuple(bool(n) for n in needs)
