"""Graph passes applied to an exported ONNX model before its parity check.

Each pass rewrites a :class:`onnx.ModelProto` in place, returns how many places it changed, and
leaves any place that does not match its pattern exactly as it was (so a pass is safe on any model).
:func:`~medtransfer.shared.export.onnx_export.export_onnx` runs them (``graph_passes=``) and then
checks the rewritten graph against PyTorch, so a pass can never change what a bundle computes
beyond the export tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: a pass: rewrites the model in place, returns the number of rewrites
GraphPass = Callable[[Any], int]


def _attr(node: Any, name: str) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def split_packed_qkv(model: Any) -> int:
    """Give each ``Attention`` (opset 23) its own query/key/value projections and 3-D inputs.

    The exporter writes the ``qkv = Linear(x).reshape(B, S, 3, H, C)`` then ``unbind(2)`` and
    ``transpose(1, 2)`` of SAM2's Hiera (and similar ViTs) as one MatMul, a Slice + Squeeze per
    chunk, a Transpose to ``(B, H, S, C)`` per input and another on the output.  On CPU the three
    strided Slice copies and four Transposes per block cost ~12 % of the Hiera-tiny int8 encoder at
    512 px.  This pass splits the packed weight into three MatMuls (int8 quantisation then shares the
    input's quantisation between them), feeds ``Attention`` the ``(B, S, H*C)`` tensors with
    ``q_num_heads``/``kv_num_heads`` set, and hands its 3-D output straight to the following
    Reshape.  A query that is pooled first (Hiera's stage transitions: ``Reshape(pooled, [-1, S, H,
    C])``) is reshaped to 3-D instead.

    Returns:
        The number of ``Attention`` nodes rewritten.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    cons: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}

    arrays: dict[str, np.ndarray] = {}  # each initializer decoded once (packed() runs per input)

    def const(name: str) -> np.ndarray | None:
        if name not in inits:
            return None
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name])
        return arrays[name]

    def ints(name: str) -> list[int] | None:
        a = const(name)
        return None if a is None or a.dtype.kind not in "iu" else [int(v) for v in np.ravel(a)]

    def packed(sq: Any) -> tuple[Any, int] | None:
        """(qkv Reshape node, chunk index) when ``sq`` is Squeeze(Slice(Reshape(x@W+b, [n,S,3,H,C]))) on axis 2."""
        if sq.op_type != "Squeeze" or len(sq.input) != 2 or ints(sq.input[1]) != [2]:
            return None
        sl = prod.get(sq.input[0])
        if sl is None or sl.op_type != "Slice" or len(sl.input) not in (4, 5):
            return None
        st, en, ax = ints(sl.input[1]), ints(sl.input[2]), ints(sl.input[3])
        steps = ints(sl.input[4]) if len(sl.input) == 5 else [1]
        if ax != [2] or steps != [1] or not st or not en or en[0] != st[0] + 1 or not 0 <= st[0] < 3:
            return None
        rs = prod.get(sl.input[0])
        if rs is None or rs.op_type != "Reshape":
            return None
        shape = ints(rs.input[1])
        if shape is None or len(shape) != 5 or shape[2] != 3 or min(shape[1:]) < 1:
            return None
        add = prod.get(rs.input[0])
        if add is None or add.op_type != "Add" or const(add.input[1]) is None:
            return None
        mm = prod.get(add.input[0])
        if mm is None or mm.op_type != "MatMul" or const(mm.input[1]) is None:
            return None
        w, b = const(mm.input[1]), const(add.input[1])
        d = shape[3] * shape[4]
        if w is None or b is None or w.ndim != 2 or w.shape[1] != 3 * d or b.shape != (3 * d,):
            return None
        return rs, st[0]

    new_inits: list[Any] = []
    after: dict[str, list[Any]] = {}  # qkv Reshape output -> nodes to insert after it
    before: dict[str, list[Any]] = {}  # Attention output -> nodes to insert before that Attention
    chunks: dict[tuple[str, int], tuple[str, str]] = {}  # (qkv, k) -> (3-D chunk, 4-D chunk)
    renamed: dict[str, str] = {}

    def add_const(base: str, value: np.ndarray) -> str:
        name = f"{base}__qkv_split_{len(new_inits)}"
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def chunk(rs: Any, k: int) -> tuple[str, str]:
        key = (rs.output[0], k)
        if key not in chunks:
            add = prod[rs.input[0]]
            mm = prod[add.input[0]]
            shape = ints(rs.input[1]) or []
            s, h, c = shape[1], shape[3], shape[4]
            d = h * c
            w = add_const(mm.input[1], const(mm.input[1])[:, k * d : (k + 1) * d])  # type: ignore[index]
            b = add_const(add.input[1], const(add.input[1])[k * d : (k + 1) * d])  # type: ignore[index]
            base = f"{rs.output[0]}__qkv{k}"
            s3 = add_const(rs.input[1], np.array([shape[0], s, d], np.int64))
            s4 = add_const(rs.input[1], np.array([shape[0], s, h, c], np.int64))
            after.setdefault(rs.output[0], []).extend(
                [
                    helper.make_node("MatMul", [mm.input[0], w], [f"{base}_mm"], name=f"{base}_mm"),
                    helper.make_node("Add", [f"{base}_mm", b], [f"{base}_lin"], name=f"{base}_lin"),
                    helper.make_node("Reshape", [f"{base}_lin", s3], [f"{base}_3d"], name=f"{base}_3d"),
                    helper.make_node("Reshape", [f"{base}_lin", s4], [f"{base}_4d"], name=f"{base}_4d"),
                ]
            )
            chunks[key] = (f"{base}_3d", f"{base}_4d")
        return chunks[key]

    rewritten = 0
    for att in [n for n in g.node if n.op_type == "Attention"]:
        if len(att.input) != 3 or _attr(att, "q_num_heads") is not None or len(att.output) != 1:
            continue
        plan: list[tuple[str, Any]] = []
        heads: set[int] = set()
        for t in att.input:
            tr = prod.get(t)
            if tr is None or tr.op_type != "Transpose" or list(_attr(tr, "perm") or []) != [0, 2, 1, 3]:
                break
            if len(cons.get(t, [])) != 1 or t in graph_outputs:
                break
            x = prod.get(tr.input[0])
            hit = packed(x) if x is not None else None
            if hit is not None:
                heads.add((ints(hit[0].input[1]) or [0] * 5)[3])
                plan.append(("packed", hit))
                continue
            shape4 = ints(x.input[1]) if x is not None and x.op_type == "Reshape" else None
            if shape4 is None or len(shape4) != 4 or min(shape4[1:]) < 1:
                break
            heads.add(shape4[2])
            plan.append(("reshape", (x, shape4)))
        else:
            out = att.output[0]
            users = cons.get(out, [])
            tr_out = users[0] if len(users) == 1 else None
            ok_out = (
                tr_out is not None
                and out not in graph_outputs
                and tr_out.op_type == "Transpose"
                and list(_attr(tr_out, "perm") or []) == [0, 2, 1, 3]
                and tr_out.output[0] not in graph_outputs
                and all(u.op_type == "Reshape" for u in cons.get(tr_out.output[0], []))
                and cons.get(tr_out.output[0])
            )
            if len(heads) != 1 or not ok_out:
                continue
            (h,) = heads
            new_in = []
            for kind, info in plan:
                if kind == "packed":
                    new_in.append(chunk(*info)[0])
                else:
                    x, shape = info
                    name = f"{x.output[0]}__3d"
                    s3 = add_const(x.input[1], np.array([shape[0], shape[1], shape[2] * shape[3]], np.int64))
                    before.setdefault(att.output[0], []).append(
                        helper.make_node("Reshape", [x.input[0], s3], [name], name=name)
                    )
                    new_in.append(name)
            att.input[:] = new_in
            att.attribute.extend([helper.make_attribute("q_num_heads", h), helper.make_attribute("kv_num_heads", h)])
            for u in cons[tr_out.output[0]]:  # type: ignore[union-attr]
                u.input[0] = out
            rewritten += 1

    if not rewritten:
        return 0
    # any other use of a split chunk (a pooled query reaches its pooling through the Squeeze)
    for sq in list(g.node):
        hit = packed(sq) if sq.op_type == "Squeeze" else None
        if hit is not None and hit[0].output[0] in after:
            renamed[sq.output[0]] = chunk(*hit)[1]
    nodes = []
    for n in g.node:
        nodes.extend(before.get(n.output[0], []) if n.op_type == "Attention" else [])
        nodes.append(n)
        for o in n.output:
            nodes.extend(after.get(o, []))
    for n in nodes:
        for j, i in enumerate(n.input):
            if i in renamed:
                n.input[j] = renamed[i]
    # drop what no longer feeds anything (the packed MatMuls, Slices, Squeezes and Transposes)
    while True:
        used = {i for n in nodes for i in n.input} | graph_outputs
        live = [n for n in nodes if any(o in used for o in n.output)]
        if len(live) == len(nodes):
            break
        nodes = live
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    kept = [i for i in list(g.initializer) + new_inits if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    produced = {o for n in nodes for o in n.output}
    changed = {n.output[0] for n in nodes if n.op_type == "Attention"}
    vi = [v for v in g.value_info if v.name in produced and v.name not in changed]
    del g.value_info[:]
    g.value_info.extend(vi)
    return rewritten
