"""The twice-differentiable op: two autograd Functions chained over a backend's three passes.

    GNSiLU.forward           backend.forward                       saves x, weight, gain + the backend's state
    GNSiLU.backward          GNSiLUBackward.apply(dy, x, ...)      (recorded under create_graph=True)
    GNSiLUBackward.forward   backend.backward                      -> dx, dw, dgain (+ state for the next pass)
    GNSiLUBackward.backward  backend.double_backward               -> grads of dy, x, weight, gain

A backend is a module with these three functions (derivation.py: PyTorch ops; triton_impl.py:
Triton kernels); the wiring, the layout handling and the self-check (kernels/__init__.py) are the
same for both. Third derivatives raise (`once_differentiable`) rather than come out wrong.

Layouts. GNSiLU saves the tensors it was GIVEN, never a copy made inside forward: the first
backward receives them as inputs of GNSiLUBackward, and only through them does the double backward
reach x (and the conv weights before it). A `.contiguous()` copy saved instead is a tensor with
no history, and the second-order gradient silently loses every path through x (channels_last and
sliced inputs gave wrong parameter gradients that way). Backends copy to the layout they need inside
each pass; the copies never enter the graph.
"""
import torch
from torch.autograd.function import once_differentiable


def _cast(t, like):
    return None if t is None else t.to(like.dtype)


class GNSiLU(torch.autograd.Function):

    @staticmethod
    def forward(ctx, backend, x, weight, gain, groups, eps, preserve_scale):
        out, state = backend.forward(x, weight, gain, groups, eps, preserve_scale)
        ctx.save_for_backward(x, weight, gain, *state)
        ctx.args = (backend, len(state), groups, eps, preserve_scale)
        return out

    @staticmethod
    def backward(ctx, dy):
        backend, n_state, groups, eps, preserve_scale = ctx.args
        x, weight, gain, *state = ctx.saved_tensors
        dx, dw, dgain = GNSiLUBackward.apply(backend, dy, x, weight, gain, groups, eps, preserve_scale,
                                             n_state, *[t.detach() for t in state])   # state may hold out
        return None, dx, dw, dgain, None, None, None


class GNSiLUBackward(torch.autograd.Function):

    @staticmethod
    def forward(ctx, backend, dy, x, weight, gain, groups, eps, preserve_scale, n_state, *state):
        (dx, dw, dgain), state2 = backend.backward(dy, x, weight, gain, tuple(state), groups, eps, preserve_scale)
        ctx.save_for_backward(dy, x, weight, gain, *state, *state2)
        ctx.args = (backend, n_state, groups, eps, preserve_scale)
        ctx.set_materialize_grads(False)
        return _cast(dx, x), _cast(dw, weight), _cast(dgain, gain)

    @staticmethod
    @once_differentiable
    def backward(ctx, ux, uw, ugain):
        backend, n_state, groups, eps, preserve_scale = ctx.args
        nones = (None,) * (9 + n_state)
        if ux is None and uw is None and ugain is None:
            return nones
        dy, x, weight, gain, *rest = ctx.saved_tensors
        state, state2 = tuple(rest[:n_state]), tuple(rest[n_state:])
        g_dy, gx, gw, ggain = backend.double_backward(dy, x, weight, gain, state, state2, ux, uw, ugain,
                                                      groups, eps, preserve_scale)
        return (None, _cast(g_dy, dy), _cast(gx, x), _cast(gw, weight), _cast(ggain, gain)) + nones[5:]
