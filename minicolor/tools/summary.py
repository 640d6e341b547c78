"""A model summary: per layer, output shape, parameters and FLOPs at a given input size.

FLOPs count 2 per multiply-add. conv: 2 * C*kh*kw per output value, plus 1 for the bias;
batchnorm: 2 per value (scale and shift, in eval mode); ReLU: 1 per value; upsample: 0 for
nearest (a copy) and 7 per output value for bilinear (4 multiplications, 3 additions).
Only the convolutions matter: over 99% of the total.
"""
from ..nn import BatchNorm2d, Conv2d, ReLU, Upsample
from ..tensor import Tensor, no_grad


def layer_table(model, size=224, batch=1):
    """[(name, kind, output shape, parameters, FLOPs)] in forward order, from a real forward pass."""
    import numpy as np

    rows, removers = [], []
    for name, module in model.named_modules():
        if isinstance(module, (Conv2d, BatchNorm2d, ReLU, Upsample)):
            def hook(mod, inputs, output, name=name):
                rows.append((name, type(mod).__name__, tuple(output.shape),
                             sum(p.size for p in mod.parameters()), _flops(mod, output)))
            removers.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            model(Tensor(np.zeros((batch, 1, size, size), np.float32)).to(model.device))
    finally:
        for remove in removers:
            remove()
        model.train(was_training)
    return rows


def _flops(module, output):
    n = output.size
    if isinstance(module, Conv2d):
        kh, kw = module.kernel_size
        return n * (2 * module.in_channels * kh * kw + (module.bias is not None))
    if isinstance(module, BatchNorm2d):
        return 2 * n
    if isinstance(module, ReLU):
        return n
    if isinstance(module, Upsample):
        return 7 * n if module.mode == "bilinear" else 0
    return 0


def summary(model, size=224, batch=1):
    """The table as text, with totals."""
    rows = layer_table(model, size, batch)
    lines = [f"{type(model).__name__} at input ({batch}, 1, {size}, {size})",
             f"{'layer':<12}{'kind':<12}{'output shape':>22}{'parameters':>12}{'MFLOPs':>11}"]
    lines.append("-" * len(lines[1]))
    for name, kind, shape, params, flops in rows:
        lines.append(f"{name:<12}{kind:<12}{str(shape):>22}{params:>12,}{flops / 1e6:>11.1f}")
    lines.append("-" * len(lines[1]))
    total_flops = sum(r[4] for r in rows)
    conv_flops = sum(r[4] for r in rows if r[1] == "Conv2d")
    lines.append(f"{'total':<24}{'':>22}{model.num_parameters():>12,}{total_flops / 1e6:>11.1f}")
    lines.append(f"convolutions: {conv_flops / total_flops:.1%} of the FLOPs of a forward pass; "
                 f"a training step costs about 3x a forward pass")
    return "\n".join(lines)
