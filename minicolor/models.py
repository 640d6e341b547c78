"""ColorizationNet: the 8-group network of Zhang et al. 2016, scaled by a width multiplier.

Input: lightness L, (N, 1, H, W), scaled by color.normalize_l; H and W divisible by 8.
Output: a and b, (N, 2, H, W), scaled by color.normalize_ab.

Group by group (m = width; every conv is 3x3 with padding = dilation, then ReLU):

    group  convs                                  resolution   channels
    1      1->m, m->m stride 2                    H   -> H/2   m
    2      m->2m, 2m->2m stride 2                 H/2 -> H/4   2m
    3      2m->4m, 4m->4m, 4m->4m stride 2        H/4 -> H/8   4m
    4      4m->8m, 8m->8m, 8m->8m                 H/8          8m
    5      three 8m->8m, dilation 2               H/8          8m   (sees further, same size)
    6      three 8m->8m, dilation 2               H/8          8m
    7      three 8m->8m                           H/8          8m
    8      upsample x2 (nearest), 8m->4m, two 4m->4m   H/4     4m
    head   1x1 conv 4m->2, upsample x4 (bilinear)      H       2

Groups 1 to 7 end with batchnorm. Width 16 is the original student report (1,955,026
parameters); width 64 is the paper's network.

Two heads share groups 1-8 (see ``loss``):
    "regression"      the 1x1 conv predicts ab directly; trained with MSE
    "classification"  the 1x1 conv predicts Q logits per pixel (one per ab bin, see
                      quantize.py) at H/4; trained with class-rebalanced cross-entropy
                      against soft-encoded targets; decoded by the annealed mean, then
                      upsampled x4 like the regression output
"""
from collections import OrderedDict

import numpy as np

from . import color, quantize
from .backend import as_array, get_array_module, to_numpy
from .functional import annealed_mean, mse_loss, softmax_cross_entropy
from .nn import BatchNorm2d, Conv2d, Module, ReLU, Sequential, Upsample
from .tensor import Tensor, no_grad

HEADS = ("regression", "classification")
PARTS = tuple(f"group{i}" for i in range(1, 9)) + ("head", "upsample")  # in forward's order
TEMPERATURE = 0.38  # the paper's annealed-mean temperature


class ColorizationNet(Module):
    def __init__(self, width=16, seed=0, head="regression", init="he_uniform", dtype=np.float32):
        super().__init__()
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"ColorizationNet: width must be a positive int, got {width!r}")
        if head not in HEADS:
            raise ValueError(f"ColorizationNet: head must be one of {HEADS}, got {head!r}")
        self.width, self.seed, self.head_kind = width, seed, head
        self.flip = False  # predict_ab's default: average with the mirror image (inference only)
        rng = np.random.default_rng(seed)
        m = width

        def convs(channels, stride_last=1, dilation=1):
            """3x3 conv + ReLU for each step channels[i] -> channels[i+1]."""
            layers = []
            for i, (cin, cout) in enumerate(zip(channels, channels[1:])):
                stride = stride_last if i == len(channels) - 2 else 1
                layers += [Conv2d(cin, cout, 3, stride, dilation, dilation, init=init, rng=rng,
                                  dtype=dtype), ReLU()]
            return layers

        def norm(channels):
            return BatchNorm2d(channels, dtype=dtype)

        self.group1 = Sequential(*convs([1, m, m], stride_last=2), norm(m))
        self.group2 = Sequential(*convs([m, 2 * m, 2 * m], stride_last=2), norm(2 * m))
        self.group3 = Sequential(*convs([2 * m, 4 * m, 4 * m, 4 * m], stride_last=2), norm(4 * m))
        self.group4 = Sequential(*convs([4 * m, 8 * m, 8 * m, 8 * m]), norm(8 * m))
        self.group5 = Sequential(*convs([8 * m] * 4, dilation=2), norm(8 * m))
        self.group6 = Sequential(*convs([8 * m] * 4, dilation=2), norm(8 * m))
        self.group7 = Sequential(*convs([8 * m] * 4), norm(8 * m))
        self.group8 = Sequential(Upsample(2, "nearest"), *convs([8 * m, 4 * m, 4 * m, 4 * m]))
        if head == "regression":
            self.head = Conv2d(4 * m, 2, 1, init=init, rng=rng, dtype=dtype)
        else:
            centers = quantize.gamut_bins()
            self.head = Conv2d(4 * m, len(centers), 1, init=init, rng=rng, dtype=dtype)
            self.register_buffer("bin_centers", centers.astype(dtype))
            self.register_buffer("class_weights", np.ones(len(centers), dtype))  # see fit_class_weights
        self.upsample = Upsample(4, "bilinear")

    def config(self):
        """What it takes to build this network again (saved in checkpoints)."""
        return {"width": self.width, "seed": self.seed, "head": self.head_kind}

    def groups(self):
        return [getattr(self, name) for name in PARTS[:8]]

    @staticmethod
    def check_input(shape):
        """A ValueError unless ``shape`` is L's: (N, 1, H, W) with H and W divisible by 8."""
        if len(shape) != 4 or shape[1] != 1 or shape[2] % 8 or shape[3] % 8:
            raise ValueError(f"ColorizationNet expects L of shape (N, 1, H, W) with H and W "
                             f"divisible by 8, got {tuple(shape)}")

    def features(self, l):
        """The head's output at H/4: ab (regression) or bin logits (classification)."""
        self.check_input(l.shape)
        x = l
        for group in self.groups():
            x = group(x)
        return self.head(x)

    def decode(self, features):
        """Head output at H/4 -> ab (scaled by color.normalize_ab) at full size."""
        if self.head_kind == "classification":
            features = annealed_mean(features, self.bin_centers, TEMPERATURE) * (1 / color.AB_SCALE)
        return self.upsample(features)

    def forward(self, l):
        return self.decode(self.features(l))

    def loss(self, l, ab):
        """(loss to minimise, MSE of the predicted ab) for normalised L and ab tensors.

        The MSE (in normalised units) is what the trainer reports for either head.
        """
        features = self.features(l)
        if self.head_kind == "regression":
            mse = mse_loss(self.upsample(features), ab)
            return mse, mse
        target, weight = self.classification_targets(ab.data)
        loss = softmax_cross_entropy(features, target, weight)
        with no_grad():
            mse = mse_loss(self.decode(features.detach()), ab)
        return loss, mse

    def classification_targets(self, ab):
        """Soft-encoded targets (N, Q, H/4, W/4) and rebalancing weights (N, H/4, W/4)."""
        xp = get_array_module(ab)
        ab_lab = color.denormalize_ab(_quarter(ab))
        target = quantize.soft_encode(ab_lab, self.bin_centers)
        weight = xp.take(self.class_weights, target.argmax(axis=1))
        return target, weight.astype(ab.dtype)

    def fit_class_weights(self, ab_batches):
        """Set the rebalancing weights from the bin frequencies of training ab (Lab units)."""
        centers = np.asarray(to_numpy(self.bin_centers), np.float64)
        counts = sum(quantize.bin_counts(_quarter(ab), centers) for ab in ab_batches)
        weights = quantize.rebalancing_weights(counts, centers)
        self.class_weights[...] = as_array(weights, self.device, self.class_weights.dtype)
        return weights

    def extra_repr(self):
        return f"width={self.width}, head={self.head_kind!r}, parameters={self.num_parameters():,}"

    # --- describing itself (nn.Module): what summary, profile and bench ask -----------------------
    def layers(self, shape, prefix=""):
        """The layers of forward, in order: the groups, the head, the final upsampling. The
        classification head's annealed mean is a function, not a layer: it turns Q bin logits
        into 2 ab channels here, and its FLOPs are not counted."""
        self.check_input(shape)
        for name in PARTS:
            if name == "upsample" and self.head_kind == "classification":
                shape = (shape[0], 2) + tuple(shape[2:])  # decode: the annealed mean of the bins
            for row in getattr(self, name).layers(shape, f"{prefix}.{name}" if prefix else name):
                yield row
                shape = row[3]

    def describe(self):
        return f"ColorizationNet width {self.width}, {self.head_kind} head"

    def to_torch(self):
        """The regression network in PyTorch, as a Sequential of the groups, the head and the
        upsampling under the same names, with the same weights and buffers (nn.Module.to_torch)."""
        if self.head_kind != "regression":
            raise NotImplementedError("ColorizationNet's classification head has no PyTorch twin: "
                                      "its annealed mean is a function, not a layer")
        import torch

        twin = torch.nn.Sequential(OrderedDict((name, getattr(self, name).to_torch()) for name in PARTS))
        twin.training = self.training
        return twin

    def conv_layers(self, batch=1, size=224):
        """(name, conv, x_shape, y_shape) for every conv in forward order, at this input size."""
        return [row for row in self.layers((batch, 1, size, size)) if isinstance(row[1], Conv2d)]

    def predict_ab(self, l, batch_statistics=False, flip=None):
        """L in 0..100, (N, H, W) array -> predicted ab in Lab units, (N, 2, H, W) host array.

        Runs without a graph, on the model's device, in eval mode: batchnorm uses its running
        estimates. With ``batch_statistics=True`` batchnorm normalises with the batch's own
        statistics instead, as in training (the running estimates are left untouched): that
        is the prediction a training loss measured. Early in a fast-changing training run the
        two differ a lot, because the running estimates still remember the first steps.

        ``flip`` (default: the model's ``flip`` attribute, False unless set) averages the
        prediction of each photo with that of its mirror image, mirrored back: twice the work,
        and colors that do not depend on which way the photo faces (``minicolor colorize
        --flip``; docs/model-card.md says what it does to the scores).
        """
        if flip if flip is not None else self.flip:
            n, mirrored = len(l), np.asarray(l)[..., ::-1]
            both = self.predict_ab(np.concatenate([l, mirrored]), batch_statistics, flip=False)
            return (both[:n] + both[n:, ..., ::-1]) / 2
        was_training = self.training
        norms = [m for _, m in self.named_modules() if isinstance(m, BatchNorm2d)]
        momenta = [m.momentum for m in norms]
        self.train(batch_statistics)
        for m in norms:
            m.momentum = 0.0  # batch statistics, if used, do not move the running estimates
        try:
            x = as_array(color.normalize_l(np.asarray(l, np.float32))[:, None], self.device)
            with no_grad():
                ab = self(Tensor(x, device=self.device)).numpy()
        finally:
            self.train(was_training)
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
        return color.denormalize_ab(ab)


def _quarter(ab):
    """(N, 2, H, W) -> (N, 2, H/4, W/4): the mean of each 4x4 patch, the resolution the
    classification head predicts at."""
    n, _, h, w = ab.shape
    return ab.reshape(n, 2, h // 4, 4, w // 4, 4).mean(axis=(3, 5))
