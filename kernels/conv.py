"""A bias-free 2D convolution (or transposed convolution) whose double backward is two convolutions.

PyTorch differentiates its own convolution backward generically (`_convolution_double_backward`),
slower on CPU than the two convolution calls it amounts to, and a dual score matching step takes it
once per layer (kernels/README.md, "CPU profile", has the timings). Two Functions wired like
function.py's compute it directly:

    Conv.forward             y  = conv(x, W)
    Conv.backward            ConvBackward.apply(gy, x, W)         (recorded under create_graph=True)
    ConvBackward.forward     gx = conv_input_grad(gy, W),  gW = conv_weight_grad(gy, x)
    ConvBackward.backward    with incoming (ggx, ggW), since <ggx, gx> + <ggW, gW> = <gy, conv(ggx, W) + conv(x, ggW)>:
                             d/dgy = conv(ggx, W) + conv(x, ggW),  d/dW = conv_weight_grad(gy, ggx),
                             d/dx = conv_input_grad(gy, ggW)

each a single aten convolution or convolution_backward call (oneDNN / cuDNN kernels, any memory
format). Only the gradients the running backward will use are computed (the scores need gx, not
gW). Third derivatives raise (`once_differentiable`). tests/test_kernels.py checks it against
autograd of F.conv2d / F.conv_transpose2d with gradcheck and gradgradcheck in float64.
"""
import torch
from torch.autograd.function import once_differentiable

aten = torch.ops.aten


def _wanted(ctx, i):
    """Whether the running backward uses the gradient of input i. The engine answers for graph nodes,
    not for leaves under autograd.grad (then: yes), which is why conv() passes the weight through a view."""
    if not ctx.needs_input_grad[i]:
        return False
    node = ctx.next_functions[i][0]
    try:
        return node is None or torch._C._will_engine_execute_node(node)
    except (RuntimeError, AttributeError):                         # a leaf under autograd.grad; an older torch
        return True


def _conv(x, weight, p):
    stride, padding, transposed, output_padding = p
    return aten.convolution(x, weight, None, stride, padding, [1, 1], transposed, output_padding, 1)


def _conv_grads(gy, x, weight, p, mask):
    stride, padding, transposed, output_padding = p
    gx, gw, _ = aten.convolution_backward(gy, x, weight, None, stride, padding, [1, 1], transposed,
                                          output_padding, 1, [mask[0], mask[1], False])
    return gx, gw


class Conv(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, p):
        ctx.save_for_backward(x, weight)
        ctx.p = p
        return _conv(x, weight, p)

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        mask = (_wanted(ctx, 0), _wanted(ctx, 1))
        if not any(mask):
            return None, None, None
        gx, gw = ConvBackward.apply(gy, x, weight, ctx.p, mask)
        return gx, gw, None


class ConvBackward(torch.autograd.Function):

    @staticmethod
    def forward(ctx, gy, x, weight, p, mask):
        ctx.save_for_backward(gy, x, weight)
        ctx.p = p
        ctx.set_materialize_grads(False)
        return _conv_grads(gy, x, weight, p, mask)

    @staticmethod
    @once_differentiable
    def backward(ctx, ggx, ggw):
        gy, x, weight = ctx.saved_tensors
        p = ctx.p
        g_gy = g_x = g_w = None
        if ctx.needs_input_grad[0]:
            if ggx is not None:
                g_gy = _conv(ggx, weight, p)
            if ggw is not None:
                g_gy = _conv(x, ggw, p) if g_gy is None else g_gy + _conv(x, ggw, p)
        if ggw is not None and ctx.needs_input_grad[1]:
            g_x = _conv_grads(gy, x, ggw, p, (True, False))[0]
        if ggx is not None and ctx.needs_input_grad[2]:
            g_w = _conv_grads(gy, ggx, weight, p, (False, True))[1]
        return g_gy, g_x, g_w, None, None


def conv(x, module):
    """module (a bias-free nn.Conv2d or nn.ConvTranspose2d, dilation 1, groups 1) applied to x, with
    the double backward above."""
    transposed = isinstance(module, torch.nn.ConvTranspose2d)
    if module.bias is not None or module.groups != 1 or tuple(module.dilation) != (1, 1) or module.padding_mode != "zeros":
        raise ValueError(f"kernels.conv: needs a bias-free, ungrouped, undilated, zero-padded convolution, got {module}")
    p = (list(module.stride), list(module.padding), transposed,
         list(module.output_padding) if transposed else [0, 0])
    return Conv.apply(x, module.weight.view_as(module.weight), p)   # a view: see _wanted
