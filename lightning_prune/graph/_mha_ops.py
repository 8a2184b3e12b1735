"""Channel-analysis handler of ``nn.MultiheadAttention``: one call, three layers inside.

Its forward is a single functional call, so the analysis models what happens inside: the
packed input projection (``in_proj_weight``: query, key and value rows, one block of
``head_dim`` rows per head) reads the embedding channels; a head is one unit across its
query, key and value rows and the matching input columns of ``out_proj``; ``out_proj``
produces the output channels. Self-attention with packed projections and no masks, extra
key / value biases or zero attention is analysed; anything else keeps its channels.

Other modules of the same shape (torchvision's Swin window attention) name their output
projection (``attrs["out_proj"]``), their token count (``attrs["tokens"]``, windows padded) and
a parameter with one column per head (``attrs["table"]``: a relative position bias table),
which collapse slices with the heads.
"""

from __future__ import annotations

import math

from lightning_prune.graph import _layout as layout
from lightning_prune.graph._analyser_base import _AnalyserBase
from lightning_prune.graph.channels import _EXCLUDED, _Val
from lightning_prune.graph.ir import OpNode


class _MhaOps(_AnalyserBase):
    """``_op_mha``: ``nn.MultiheadAttention`` as input projection, heads, output projection."""

    def _op_mha(self, node: OpNode) -> None:
        a = node.attrs
        names = node.inputs[:3]
        vals = [self._val(i) for i in names]
        shapes = node.shape if isinstance(node.shape, list) else [node.shape]
        out = shapes[0]
        path = node.module or node.name
        e, h = int(a["embed_dim"]), int(a["num_heads"])
        if (
            not isinstance(out, tuple)
            or not a["packed"]
            or a["extra"]
            or a["masked"]
            or len(set(names)) != 1  # self-attention: one input for query, key and value
            or any(v is None or v.axes != (len(out) - 1,) or len(v.elems) != e for v in vals)
        ):
            return self._unknown(node)
        v = vals[0]
        assert v is not None
        d = e // h
        proj = self._register(path, "conv", node.where.split(" ")[0])
        proj.inputs = self._merge(proj.inputs, v.elems)
        if proj.outputs is None:
            proj.outputs = self.uf.new(3 * e)
            for head in range(h):  # query, key and value rows of a head: one unit
                rows = [proj.outputs[s * e + head * d + j] for s in range(3) for j in range(d)]
                layout.tie_all(self.uf, rows)
        out_proj = self._register(f"{path}.{a.get('out_proj', 'out_proj')}", "conv", "Linear")
        out_proj.inputs = self._merge(out_proj.inputs, proj.outputs[2 * e :])
        if out_proj.outputs is None:
            out_proj.outputs = self.uf.new(e)
        tokens = int(a.get("tokens") or math.prod(out[:-1]))
        proj.attrs["flops"] = int(proj.attrs.get("flops", 0)) + 2 * tokens * e * 3 * e
        out_proj.attrs["flops"] = int(out_proj.attrs.get("flops", 0)) + 2 * tokens * e * e
        proj.feeds_norm_only = out_proj.feeds_norm_only = False  # gated inside its forward
        proj.attrs["opaque"] = 1  # attention inside: never a constant layer
        if self._excluded(path):
            for m in (proj, out_proj):
                self.uf.pin([*(m.inputs or []), *(m.outputs or [])], _EXCLUDED)
        bad = [x for x, t in zip(v.elems, v.taint) if t]
        if bad:
            self.uf.pin(bad, f"{node.where} reads channels that are not zero when closed")
        attention = self._register(f"{path}:attention", "op", node.where.split(" ")[0])
        attention.outputs = list(proj.outputs[2 * e :])
        attention.attrs.update({"node": node.name, "mha": path, "out_proj": out_proj.path})
        if a.get("table"):  # one column per head: sliced with the heads
            table = self._register(f"{path}.{a['table']}", "param", "Parameter")
            table.outputs = [proj.outputs[head * d] for head in range(h)]
            table.attrs["axis"] = 1
        result = _Val(out_proj.outputs, [None] * e, (len(out) - 1,))
        if isinstance(node.shape, list):  # (output, weights)
            self.vals[node.name] = [result, *([None] * (len(shapes) - 1))]
        else:
            self.vals[node.name] = result
        return None
