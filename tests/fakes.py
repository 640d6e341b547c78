"""Stand-ins that let the tests run GPU-side code on a machine without a GPU."""


class DeviceArray:
    """What the kernel launcher sees of a CuPy array: a class with __cuda_array_interface__, the
    host array's dtype, shape and strides, and a device pointer in .data.ptr."""

    __cuda_array_interface__ = None

    def __init__(self, host, ptr=0x7000_0000):
        self.host = host
        self.dtype, self.ndim, self.shape, self.strides = host.dtype, host.ndim, host.shape, host.strides
        self.size, self.itemsize = host.size, host.itemsize
        self.data = type("Memory", (), {"ptr": ptr})()
