"""Write a variant of an ONNX model whose `scores` output is multiplied by FACTOR (a second, different
version of a model for the hot-swap and shadow tests: same inputs, same labels, other scores).

usage: scale_scores.py IN.onnx OUT.onnx FACTOR
"""

import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper


def main():
    src, dst, factor = sys.argv[1], sys.argv[2], float(sys.argv[3])
    model = onnx.load(src)
    graph = model.graph
    producers = [n for n in graph.node if "scores" in n.output]
    if len(producers) != 1:
        sys.exit(f"{src}: expected one node producing 'scores', found {len(producers)}")
    node = producers[0]
    node.output[list(node.output).index("scores")] = "scores_unscaled"
    graph.initializer.append(numpy_helper.from_array(np.array(factor, dtype=np.float32), "score_factor"))
    graph.node.append(helper.make_node("Mul", ["scores_unscaled", "score_factor"], ["scores"],
                                       name="scale_scores"))
    onnx.checker.check_model(model)
    onnx.save_model(model, dst)


if __name__ == "__main__":
    main()
