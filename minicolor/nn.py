"""Layers as objects that own their parameters: Module, Parameter and the layers.

A ``Module`` keeps track of what is assigned to it: a ``Parameter`` (a tensor the optimizer
trains), another ``Module`` (a child), or a buffer (a plain array that is state but not
trained, like batchnorm's running statistics). From that it can list its parameters,
switch train/eval mode, move to a device, and save or load a ``state_dict``: a flat dict
from dotted names ("groups.0.conv.weight") to NumPy arrays.

Every module also describes itself, for the tools that measure the library (minicolor/tools/):
for an input shape, which layers its forward runs (``layers``), its output shape and its FLOPs;
a one-line ``describe``; and its PyTorch twin (``to_torch``, with the same weights and buffers:
the oracle of the tests and the yardstick of the benchmark). A layer answers for itself; a
container (Sequential, ColorizationNet) composes its children's answers. A module that cannot
answer raises NotImplementedError, never a guess.
"""
from collections import OrderedDict

import numpy as np

from . import backend
from . import functional as F
from .reference.conv2d import output_size
from .tensor import Tensor

# nn.Sequential runs a ReLU followed by a BatchNorm2d as one fused op (F.relu_batch_norm), unless
# the ReLU has forward hooks (they need its output, which the fused op never makes). Set False
# to run every layer on its own (the same numbers, to rounding; more launches on a GPU).
FUSE = True


def fuses(module, after):
    """The fusion rule, in one place: whether nn.Sequential runs ``module`` and the module
    ``after`` it as one op. (Sequential.forward also runs a ReLU with forward hooks on its own.)"""
    return FUSE and type(module) is ReLU and isinstance(after, BatchNorm2d)


def fused_layers(model):
    """Dotted names of the layers of ``model`` that run fused into the layer after them. They
    make no output of their own, and a forward hook on one would turn its fusion off."""
    return {_join(prefix, name) for prefix, module in model.named_modules()
            for name in module.fused_children()}


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _size(shape):
    return int(np.prod(shape, dtype=np.int64))


def _check_nchw(module, shape, channels):
    """``shape`` as a tuple, if it is (N, ``channels``, H, W); else a ValueError."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or shape[1] != channels:
        raise ValueError(f"{type(module).__name__}: expected an input of shape (N, {channels}, H, W), "
                         f"got {shape}")
    return shape


def _torch_copy(array):
    """A PyTorch tensor holding a host copy of ``array`` (NumPy or CuPy), of the same dtype."""
    import torch

    return torch.from_numpy(np.array(backend.to_numpy(array)))


class Parameter(Tensor):
    """A tensor that a Module trains: requires_grad is always True."""

    def __init__(self, data, device=None):
        super().__init__(data, requires_grad=True, device=device)

    def __repr__(self):
        return "Parameter" + super().__repr__()[len("Tensor"):]


class Module:
    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_forward_hooks", [])
        self.training = True

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        for registry in (self._parameters, self._modules, self._buffers):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, array):
        """Keep ``array`` as state saved in the state_dict, moved by ``to``, but not trained."""
        self._buffers[name] = array

    def __getattr__(self, name):  # called only when normal lookup fails: buffers live here
        buffers = self.__dict__.get("_buffers", {})
        if name in buffers:
            return buffers[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # --- running -----------------------------------------------------------------------
    def forward(self, *args):
        raise NotImplementedError

    def __call__(self, *args):
        out = self.forward(*args)
        for hook in self._forward_hooks:
            hook(self, args, out)
        return out

    def register_forward_hook(self, hook):
        """Call ``hook(module, inputs, output)`` after every forward; returns a remover."""
        self._forward_hooks.append(hook)
        return lambda: self._forward_hooks.remove(hook)

    # --- walking the tree -----------------------------------------------------------------
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(_join(prefix, name))

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self):
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                yield _join(prefix, name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        for prefix, module in self.named_modules():
            for name, b in module._buffers.items():
                yield _join(prefix, name), b

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # --- modes and devices ----------------------------------------------------------------
    def train(self, mode=True):
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    @property
    def device(self):
        params = self.parameters()
        return params[0].device if params else "cpu"

    def to(self, device):
        """Move every parameter and buffer to ``device`` in place; returns self."""
        backend.check_device(device)
        for _, module in self.named_modules():
            for p in module._parameters.values():
                p.data = backend.as_array(p.data, device)
                p.device = device
                p.grad = None if p.grad is None else backend.as_array(p.grad, device)
            for name, b in list(module._buffers.items()):
                module._buffers[name] = backend.as_array(b, device)
        return self

    # --- saving and loading -------------------------------------------------------------
    def state_dict(self):
        """Every parameter and buffer by dotted name, as host (NumPy) copies."""
        state = OrderedDict((name, p.numpy()) for name, p in self.named_parameters())
        state.update((name, np.array(backend.to_numpy(b))) for name, b in self.named_buffers())
        return state

    def load_state_dict(self, state, strict=True):
        """Copy arrays from ``state`` into the parameters and buffers, checking names and shapes."""
        own = dict(self.named_parameters())
        buffers = {name: b for name, b in self.named_buffers()}
        missing = sorted((set(own) | set(buffers)) - set(state))
        unexpected = sorted(set(state) - set(own) - set(buffers))
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, value in state.items():
            target = own[name].data if name in own else buffers.get(name)
            if target is None:
                continue
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"load_state_dict: {name} has shape {tuple(value.shape)} in the "
                                 f"state, {tuple(target.shape)} in the model")
            target[...] = backend.as_array(value, self.device, target.dtype)
        return self

    # --- describing itself: what the tools ask (see the module docstring) ----------------------
    def layers(self, shape, prefix=""):
        """(name, layer, input shape, output shape) for each layer that forward runs on an input
        of ``shape``, in order. A layer yields itself; a container overrides this to yield its
        children's layers in the order its forward runs them."""
        if self._modules:
            raise NotImplementedError(f"{type(self).__name__} ({prefix or 'the model'}) does not say "
                                      f"in which order its forward runs its children: define layers")
        yield prefix, self, tuple(shape), tuple(self.output_shape(shape))

    def output_shape(self, shape):
        """The shape that forward returns for an input of ``shape``."""
        if not self._modules:
            raise NotImplementedError(f"{type(self).__name__} does not say its output shape: "
                                      f"define output_shape")
        for *_, shape in self.layers(shape):
            pass
        return tuple(shape)

    def flops(self, shape):
        """Floating-point operations of forward on an input of ``shape``, in eval mode: 2 per
        multiply-add. A container adds up its layers'."""
        if not self._modules:
            raise NotImplementedError(f"{type(self).__name__} does not count its FLOPs: define flops")
        return sum(layer.flops(x_shape) for _, layer, x_shape, _ in self.layers(shape))

    def describe(self):
        """A one-line description, such as 'conv 3x3 s2 d1' or 'batchnorm'."""
        return type(self).__name__.lower()

    def fused_children(self):
        """Names of the children that forward runs fused into the child after them (Sequential)."""
        return []

    def to_torch(self):
        """The same module in PyTorch, with the same weights, buffers and train/eval mode.

        Imports torch only when called: PyTorch is a test oracle and a benchmark yardstick,
        never something minicolor needs to run."""
        raise NotImplementedError(f"{type(self).__name__} has no PyTorch twin: define to_torch")

    # --- printing -------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            child_lines = repr(child).split("\n")
            lines.append(f"  ({name}): " + "\n  ".join(child_lines))
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


class Conv2d(Module):
    """2-D convolution with weight (F, C, kh, kw) and bias (F,).

    Initialisation (He et al. 2015, "He-uniform", suited to ReLU networks): weights drawn
    from U(-sqrt(6 / fan_in), +sqrt(6 / fan_in)) with fan_in = C*kh*kw, which keeps the
    variance of activations steady from layer to layer; biases start at zero.
    ``init="he_normal"`` draws N(0, 2 / fan_in) instead.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=0,
                 dilation=1, bias=True, init="he_uniform", rng=None, dtype=np.float32):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        rng = np.random.default_rng() if rng is None else rng
        fan_in = in_channels * kh * kw
        shape = (out_channels, in_channels, kh, kw)
        if init == "he_uniform":
            bound = np.sqrt(6.0 / fan_in)
            w = rng.uniform(-bound, bound, shape)
        elif init == "he_normal":
            w = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        else:
            raise ValueError(f"Conv2d: init must be 'he_uniform' or 'he_normal', got {init!r}")
        self.weight = Parameter(w.astype(dtype))
        self.bias = Parameter(np.zeros(out_channels, dtype)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def geometry(self):
        """(stride, padding, dilation), each a (rows, columns) pair."""
        return _pair(self.stride), _pair(self.padding), _pair(self.dilation)

    def output_shape(self, shape):
        n, _, h, w = _check_nchw(self, shape, self.in_channels)
        (kh, kw), ((sh, sw), (ph, pw), (dh, dw)) = self.kernel_size, self.geometry()
        out_h, out_w = output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"Conv2d: a {kh}x{kw} kernel with dilation {dh}x{dw} spans more than "
                             f"the input {(h, w)} padded by {(ph, pw)}")
        return n, self.out_channels, out_h, out_w

    def flops(self, shape):
        """C*kh*kw multiply-adds per output value, plus 1 for the bias."""
        kh, kw = self.kernel_size
        per_output = 2 * self.in_channels * kh * kw + (self.bias is not None)
        return _size(self.output_shape(shape)) * per_output

    def describe(self):
        (kh, kw), (stride, _, dilation) = self.kernel_size, self.geometry()
        text = lambda pair: str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"  # noqa: E731
        return f"conv {kh}x{kw} s{text(stride)} d{text(dilation)}"

    def to_torch(self):
        import torch

        stride, padding, dilation = self.geometry()
        twin = torch.nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride, padding,
                               dilation, bias=self.bias is not None)
        twin.weight = torch.nn.Parameter(_torch_copy(self.weight.data))
        if self.bias is not None:
            twin.bias = torch.nn.Parameter(_torch_copy(self.bias.data))
        return twin.train(self.training)

    def extra_repr(self):
        kh, kw = self.kernel_size
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={kh}x{kw}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}")


class BatchNorm2d(Module):
    """Batch normalisation per channel: batch statistics in train mode, running ones in eval."""

    def __init__(self, num_features, momentum=0.1, eps=1e-5, dtype=np.float32):
        super().__init__()
        self.num_features, self.momentum, self.eps = num_features, momentum, eps
        self.weight = Parameter(np.ones(num_features, dtype))
        self.bias = Parameter(np.zeros(num_features, dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype))

    def forward(self, x):
        return F.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                            self.training, self.momentum, self.eps)

    def after_relu(self, x):
        """This batchnorm applied to relu(x), as one fused op (what nn.Sequential calls for a
        ReLU followed by this module). Its forward hooks see x, the ReLU's input, as input."""
        out = F.relu_batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                                self.training, self.momentum, self.eps)
        for hook in self._forward_hooks:
            hook(self, (x,), out)
        return out

    def output_shape(self, shape):
        return _check_nchw(self, shape, self.num_features)

    def flops(self, shape):
        """2 per value: a scale and a shift (eval mode, the statistics folded in)."""
        return 2 * _size(self.output_shape(shape))

    def describe(self):
        return "batchnorm"

    def to_torch(self):
        import torch

        twin = torch.nn.BatchNorm2d(self.num_features, self.eps, self.momentum)
        twin.weight = torch.nn.Parameter(_torch_copy(self.weight.data))
        twin.bias = torch.nn.Parameter(_torch_copy(self.bias.data))
        twin.running_mean = _torch_copy(self.running_mean)
        twin.running_var = _torch_copy(self.running_var)
        return twin.train(self.training)

    def extra_repr(self):
        return f"{self.num_features}, momentum={self.momentum}, eps={self.eps}"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)

    def output_shape(self, shape):
        return tuple(shape)

    def flops(self, shape):
        """1 per value (a comparison)."""
        return _size(shape)

    def describe(self):
        return "relu"

    def to_torch(self):
        import torch

        return torch.nn.ReLU().train(self.training)


class LeakyReLU(Module):
    """x where x > 0, else negative_slope * x (F.leaky_relu), PyTorch's default slope 0.01."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def output_shape(self, shape):
        return tuple(shape)

    def flops(self, shape):
        """2 per value (a comparison, and a multiplication where it is negative)."""
        return 2 * _size(shape)

    def describe(self):
        return f"leaky_relu {self.negative_slope:g}"

    def to_torch(self):
        import torch

        return torch.nn.LeakyReLU(self.negative_slope).train(self.training)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Upsample(Module):
    def __init__(self, scale_factor, mode="nearest"):
        super().__init__()
        self.scale_factor, self.mode = scale_factor, mode

    def forward(self, x):
        return F.upsample(x, self.scale_factor, self.mode)

    def output_shape(self, shape):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 4:
            raise ValueError(f"Upsample: expected an input of shape (N, C, H, W), got {shape}")
        n, c, h, w = shape
        return n, c, h * self.scale_factor, w * self.scale_factor

    def flops(self, shape):
        """nearest: 0 (a copy); bilinear: 7 per output value (4 multiplications, 3 additions)."""
        return 7 * _size(self.output_shape(shape)) if self.mode == "bilinear" else 0

    def describe(self):
        return f"upsample x{self.scale_factor} {self.mode}"

    def to_torch(self):
        import torch

        corners = {"align_corners": False} if self.mode == "bilinear" else {}
        twin = torch.nn.Upsample(scale_factor=self.scale_factor, mode=self.mode, **corners)
        return twin.train(self.training)

    def extra_repr(self):
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"


class Sequential(Module):
    """Modules applied one after another; children are named "0", "1", ...

    A ReLU followed by a BatchNorm2d runs as one fused op (see FUSE and ``fuses`` above); the
    modules, their names and the state_dict stay those of the two layers.
    """

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        modules = list(self._modules.values())
        i = 0
        while i < len(modules):
            m, after = modules[i], modules[i + 1] if i + 1 < len(modules) else None
            if fuses(m, after) and not m._forward_hooks:
                x = after.after_relu(x)
                i += 2
            else:
                x = m(x)
                i += 1
        return x

    def layers(self, shape, prefix=""):
        for name, child in self._modules.items():
            for row in child.layers(shape, _join(prefix, name)):
                yield row
                shape = row[3]  # the next child's input

    def fused_children(self):
        names = list(self._modules)
        return [name for name, after in zip(names, names[1:])
                if fuses(self._modules[name], self._modules[after])]

    def to_torch(self):
        import torch

        twin = torch.nn.Sequential(OrderedDict((name, child.to_torch())
                                               for name, child in self._modules.items()))
        twin.training = self.training
        return twin
