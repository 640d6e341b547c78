"""A model summary: per layer, output shape, parameters and FLOPs at a given input size.

Each layer says these itself (nn.Module's ``layers`` and ``flops``; the counting rules are in
the docstrings of nn.py's layers): no forward pass runs. FLOPs count 2 per multiply-add, for a
forward pass in eval mode. Only the convolutions matter: over 99% of the total.
"""


def layer_table(model, size=224, batch=1):
    """[(name, kind, output shape, parameters, FLOPs)] in forward order, for an L input of
    (batch, 1, size, size)."""
    return [(name, type(layer).__name__, y_shape, layer.num_parameters(), layer.flops(x_shape))
            for name, layer, x_shape, y_shape in model.layers((batch, 1, size, size))]


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
