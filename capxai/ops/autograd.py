"""What autograd does with the relevance ops: they are not differentiable, and say so.

A relevance op computes LRP's backward pass for one layer; nothing in capxai differentiates through it (LRP-inference
fine-tuning uses relevance as a constant weight), and a derivative of relevance would need each rule's own second
derivative. So rather than a result that claims ``requires_grad`` but has no backward (what an op without an
autograd kernel gives), every op gets an autograd kernel whose backward raises an error that names the op and the
fix. Forward calls on inputs that require grad work as before.
"""
import torch

from capxai._extension import op_names


def _not_differentiable(name: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"capxai::{name} is not differentiable: relevance is computed as a constant (LRP's own "
                           "backward pass), not differentiated through; detach its inputs (or the result) before "
                           "using it in a loss")

    return backward


def _setup_context(ctx, inputs, output):
    pass


# lrp_lstm_cell is a composite of lrp_lstm (CompositeImplicitAutograd): it inherits lrp_lstm's autograd kernel, and
# a kernel of its own would bypass the composite (and its error messages in the cell's argument names).
COMPOSITES = ("lrp_lstm_cell",)

for _name in [name for name in op_names() if name not in COMPOSITES]:
    torch.library.register_autograd(f"capxai::{_name}", _not_differentiable(_name), setup_context=_setup_context)
